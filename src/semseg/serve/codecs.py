"""Reading requests and images, writing PNG answers: every refusal is an :class:`ApiError`.

An image's header is read (and its size checked) before any pixel is decoded.
"""

from __future__ import annotations

import io
import re
import warnings
from typing import Any

import numpy as np
from PIL import Image
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request

from semseg.io import first_line, to_rgb_array
from semseg.serve.schemas import ApiError

# Content types of images PIL decodes here (a raw body or a multipart part).
IMAGE_TYPES = {
    "image/png": "PNG",
    "image/jpeg": "JPEG",
    "image/jpg": "JPEG",
    "image/pjpeg": "JPEG",
    "image/bmp": "BMP",
    "image/x-bmp": "BMP",
    "image/x-ms-bmp": "BMP",
    "image/x-portable-pixmap": "PPM",
    "image/x-portable-anymap": "PPM",
    "image/x-portable-graymap": "PPM",
    "image/tiff": "TIFF",
    "image/webp": "WEBP",
}
# Sent by clients that do not know the type (browsers, for unknown extensions; curl -T).
UNTYPED = {"", "application/octet-stream"}
DECODERS = tuple(sorted(set(IMAGE_TYPES.values())))


DEFAULT_MAX_PIXELS = 4_000_000
"""Largest image in pixels: a Cityscapes frame (2048 x 1024) or a KITTI one (1242 x 375) fits;
read from the header, so a small file that would decode to gigabytes is refused unread."""
HEAP_ADDRESS = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>|0x[0-9a-fA-F]{6,}")


def client_message(error: BaseException) -> str:
    """The first line of a decoder's error, without the object addresses it may quote."""
    return HEAP_ADDRESS.sub("the upload", first_line(error))


def is_out_of_memory(error: BaseException) -> bool:
    """A MemoryError, or torch's CPU allocator failing (a RuntimeError)."""
    return isinstance(error, MemoryError) or (
        isinstance(error, RuntimeError) and "can't allocate memory" in str(error)
    )


def out_of_memory(what: str) -> ApiError:
    """The answer when the server runs out of memory: its fault, worth retrying (503)."""
    return ApiError(503, f"out of memory while {what}; retry later", headers={"Retry-After": "5"})


def open_checked(data: bytes, max_side: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """The image's header read and its size checked (ApiError 400/413); pixels not decoded."""
    if not data:
        raise ApiError(400, "empty image: the request carried no image bytes")
    try:
        image = Image.open(io.BytesIO(data), formats=DECODERS)
    except MemoryError:
        raise out_of_memory("reading the image header") from None
    except Image.DecompressionBombError as error:
        raise ApiError(413, f"image has too many pixels: {client_message(error)}") from error
    except Exception as error:  # PIL raises many types on corrupt input; all are the client's
        raise ApiError(
            400, f"cannot decode the image (send {', '.join(DECODERS)}): {client_message(error)}"
        ) from error
    width, height = image.size
    if width > max_side or height > max_side:
        raise ApiError(413, f"image is {width}x{height} pixels; the limit is {max_side} per side")
    if width * height > max_pixels:
        raise ApiError(
            413,
            f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}",
        )
    if width < 1 or height < 1:
        raise ApiError(400, f"image has no pixels ({width}x{height})")
    return image


def probe_image(data: bytes, max_side: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> int:
    """Pixel count from the header alone: bad or oversized images are refused before queueing."""
    width, height = open_checked(data, max_side, max_pixels).size
    return width * height


def decode_image(data: bytes, max_side: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """RGB uint8 ``(H, W, 3)`` from encoded bytes; ApiError 400/413 for anything unusable,
    503 when the server runs out of memory decoding it."""
    image = open_checked(data, max_side, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()
            return to_rgb_array(image)
    except MemoryError:
        del image
        raise out_of_memory("decoding the image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ApiError(413, "image has too many pixels") from error
    except Exception as error:  # truncated or corrupt pixel data
        raise ApiError(
            400, f"cannot decode the image (send {', '.join(DECODERS)}): {client_message(error)}"
        ) from error


def png_bytes(array: np.ndarray) -> bytes:
    """A uint8 (or uint16) array as PNG; fast compression, as answers go over a local network."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The body, refused with 413 as soon as it (or its declared length) passes ``max_bytes``."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            raise ApiError(400, f"bad Content-Length header: {declared!r}") from None
        if length > max_bytes:
            raise ApiError(413, f"request body is {length} bytes; the limit is {max_bytes}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise ApiError(413, f"request body is over the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def media_type(value: str | None) -> str:
    return (value or "").split(";", 1)[0].strip().lower()


def check_image_type(kind: str, where: str) -> None:
    if kind in IMAGE_TYPES or kind in UNTYPED:
        return
    accepted = "multipart/form-data with a 'file' part, or a raw image body (image/png, ...)"
    if where == "part":
        raise ApiError(415, f"the 'file' part is {kind}, not an image; send {', '.join(DECODERS)}")
    raise ApiError(415, f"unsupported content type {kind}; send {accepted}")


def check_multipart_complete(body: bytes, content_type: str) -> None:
    """A multipart body must end with its closing boundary; one cut short is a 400."""
    match = re.search(r'boundary="?([^";]+)"?', content_type, flags=re.IGNORECASE)
    if match is None:
        raise ApiError(400, "bad multipart upload: the Content-Type names no boundary")
    closing = b"--" + match.group(1).strip().encode("latin-1") + b"--"
    if not body.rstrip(b"\r\n \t").endswith(closing):
        raise ApiError(400, "bad multipart upload: the body is truncated (no closing boundary)")


async def read_upload(request: Request, max_bytes: int) -> bytes:
    """The image bytes of a multipart (field ``file``) or raw-body request."""
    content_type = request.headers.get("content-type")
    kind = media_type(content_type)
    if not kind:
        raise ApiError(
            415,
            "no Content-Type: send multipart/form-data with a 'file' part, or the image as the "
            "body with its image/* type",
        )
    if kind != "multipart/form-data":
        check_image_type(kind, "body")
        return await read_body(request, max_bytes)
    body = await read_body(request, max_bytes)
    if not body:
        raise ApiError(400, "empty request body: the multipart upload carried nothing")
    check_multipart_complete(body, content_type or "")
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=1, max_fields=16)
    except StarletteHTTPException as error:
        raise ApiError(400, f"bad multipart upload: {error.detail}") from error
    except Exception as error:
        raise ApiError(400, f"bad multipart upload: {client_message(error)}") from error
    try:
        upload = form.get("file")
        if upload is None:
            raise ApiError(422, "the multipart upload has no 'file' part")
        if not isinstance(upload, UploadFile):
            raise ApiError(422, "'file' must be a file part, not a text field")
        check_image_type(media_type(upload.content_type), "part")
        return await upload.read()
    finally:
        await form.close()

"""``semseg serve``: an HTTP inference service for a checkpoint, with a page to try it.

Endpoints (``create_app`` builds them; the model loads once, when the app is created):

* ``POST /v1/segment?format=overlay|prob|label|json`` -- an image as a multipart upload (field
  ``file``) or as the raw body with an image content type. ``overlay`` (default): PNG of the image
  with the road tinted green (``alpha`` query parameter, default 0.5); ``prob``: 8-bit road
  probability PNG (mode L); ``label``: class-index PNG; ``json``: size, road fraction, per-class
  pixel areas, model name and latency. PNG answers carry the road fraction and the latency in the
  ``X-Road-Fraction`` and ``X-Latency-Ms`` headers.
* ``GET /v1/model`` -- model name, classes, input size, backend, checkpoint SHA-256, limits.
* ``GET /healthz`` -- liveness and queue occupancy.
* ``GET /`` -- a self-contained page (no external assets) to drop an image and see the result.
* ``GET /openapi.json``, ``GET /docs`` -- the OpenAPI description (FastAPI's docs page loads its
  scripts from a CDN; the page at ``/`` does not).

Every error is a 4xx (or 503 when busy) with a JSON body ``{"error": "..."}``: 413 for a body
over ``max_bytes`` or an image side over ``max_side``, 415 for a content type that is not an
image, 400 for an empty body or an image that cannot be decoded, 422 for a multipart upload
without a ``file`` part or a bad query parameter, 503 (with ``Retry-After``) when ``max_queue``
requests are already in flight. A fault of the server's own (out of memory, a bug) is a JSON 500.

Requests are admitted up to ``max_queue`` at a time (each body at most ``max_bytes``); a request
whose image header passes the checks waits, still encoded, in one queue that a single inference
worker (one thread) drains in micro-batches of at most ``batch_size`` images and ``batch_pixels``
pixels, decoding them as it goes; at most two answers are encoded at once. Memory therefore stays
bounded however many clients connect.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import inspect
import io
import logging
import socket
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from PIL import Image

from semseg.errors import SemsegError
from semseg.inference.checkpoint import LoadedModel, load_model
from semseg.inference.predictor import Predictor, confidence_levels
from semseg.inference.visualize import overlay
from semseg.io import first_line, to_rgb_array

try:
    from fastapi import FastAPI, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from pydantic import BaseModel
    from starlette.concurrency import run_in_threadpool
    from starlette.datastructures import UploadFile
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as _error:  # pragma: no cover - depends on the installed extras
    raise SemsegError(
        f"semseg serve needs the serve extra ({_error.name} is missing): "
        "pip install 'semseg[serve]'"
    ) from _error
if importlib.util.find_spec("python_multipart") is None and (
    importlib.util.find_spec("multipart") is None
):  # pragma: no cover - depends on the installed extras
    raise SemsegError(
        "semseg serve needs the serve extra (python-multipart is missing): "
        "pip install 'semseg[serve]'"
    )

LOG = logging.getLogger("semseg.serve")
DEFAULT_MAX_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_SIDE = 8192
DEFAULT_MAX_QUEUE = 16
DEFAULT_BATCH_SIZE = 4
DEFAULT_BATCH_PIXELS = 8_000_000  # a micro-batch stops growing past this many pixels
BACKEND_CHOICES = ("auto", "torch", "onnxruntime")

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


class OutputFormat(StrEnum):
    overlay = "overlay"
    prob = "prob"
    label = "label"
    json = "json"


class ApiError(Exception):
    """An answer to a bad request: an HTTP status and a one-line message."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


# ---------------------------------------------------------------------------------------------
# Response schemas (for the OpenAPI description)


class ErrorBody(BaseModel):
    error: str


class ClassArea(BaseModel):
    pixels: int
    fraction: float


class SegmentResult(BaseModel):
    width: int
    height: int
    road_fraction: float
    road_pixels: int
    positive_class: str
    classes: dict[str, ClassArea]
    model: str
    backend: str
    latency_ms: float
    inference_ms: float


class InputSize(BaseModel):
    height: int
    width: int


class CheckpointInfo(BaseModel):
    file: str
    bytes: int
    sha256: str


class Limits(BaseModel):
    max_bytes: int
    max_side: int
    max_queue: int
    batch_size: int


class ModelInfo(BaseModel):
    name: str
    num_classes: int
    classes: list[str]
    positive_class: int
    positive_class_name: str
    input_size: InputSize
    backend: str
    backend_detail: str
    checkpoint: CheckpointInfo
    formats: list[str]
    limits: Limits


class Health(BaseModel):
    status: str
    model: str
    in_flight: int
    capacity: int
    images: int
    batches: int


# ---------------------------------------------------------------------------------------------
# Backends


def predictor_takes_backend() -> bool:
    return "backend" in inspect.signature(Predictor.__init__).parameters


def offered_backends() -> tuple[str, ...]:
    """The backends ``semseg.inference`` offers now: torch, plus any its Predictor can select
    (named by ``BACKEND_NAMES`` / ``BACKENDS`` / ``available_backends()`` where it says)."""
    if not predictor_takes_backend():
        return ("torch",)
    for module_name in ("semseg.inference.predictor", "semseg.inference.backends"):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        for attribute in ("available_backends", "BACKEND_NAMES", "BACKENDS"):
            offered = getattr(module, attribute, None)
            if callable(offered):
                offered = offered()
            if offered:
                return tuple(dict.fromkeys(["torch", *(str(name) for name in offered)]))
    return ("torch", "onnxruntime")


def resolve_backend(name: str) -> str:
    """``auto`` -> the predictor's own choice where it makes one (semseg.inference times the
    candidates once per machine and checkpoint), else torch; the others if offered."""
    name = name.strip().lower()
    if name not in BACKEND_CHOICES:
        raise SemsegError(f"--backend must be one of {', '.join(BACKEND_CHOICES)}, got {name!r}")
    offered = offered_backends()
    if name == "auto":
        return "auto" if "auto" in offered else "torch"
    if name not in offered:
        raise SemsegError(
            f"--backend {name} is not available: semseg.inference offers "
            f"{', '.join(offered)} here (use --backend torch or auto)"
        )
    return name


def make_predictor(
    loaded: LoadedModel, backend: str, batch_size: int
) -> tuple[Predictor, str, str]:
    """The predictor for ``backend`` (already resolved), the backend family it actually runs
    (torch, onnxruntime) and its description (precision, layout, threads)."""
    try:
        if predictor_takes_backend():
            predictor = Predictor(loaded, batch_size=batch_size, backend=backend)  # type: ignore[call-arg]
        else:
            predictor = Predictor(loaded, batch_size=batch_size)
    except SemsegError:
        raise
    except Exception as error:
        raise SemsegError(f"cannot start the {backend} backend: {first_line(error)}") from error
    actual = getattr(predictor, "backend", None)
    family = actual if isinstance(actual, str) and actual != "auto" else backend
    engine = getattr(predictor, "engine", None)
    detail = engine.describe() if hasattr(engine, "describe") else family
    return predictor, family, str(detail)


# ---------------------------------------------------------------------------------------------
# Decoding and encoding


def open_checked(data: bytes, max_side: int) -> Image.Image:
    """The image's header read and its size checked (ApiError 400/413); pixels not decoded."""
    if not data:
        raise ApiError(400, "empty image: the request carried no image bytes")
    try:
        image = Image.open(io.BytesIO(data), formats=DECODERS)
    except Image.DecompressionBombError as error:
        raise ApiError(413, f"image has too many pixels: {first_line(error)}") from error
    except Exception as error:  # PIL raises many types on corrupt input; all are the client's
        raise ApiError(
            400, f"cannot decode the image (send {', '.join(DECODERS)}): {first_line(error)}"
        ) from error
    width, height = image.size
    if width > max_side or height > max_side:
        raise ApiError(413, f"image is {width}x{height} pixels; the limit is {max_side} per side")
    if width < 1 or height < 1:
        raise ApiError(400, f"image has no pixels ({width}x{height})")
    return image


def probe_image(data: bytes, max_side: int) -> int:
    """Pixel count from the header alone: bad or oversized images are refused before queueing."""
    width, height = open_checked(data, max_side).size
    return width * height


def decode_image(data: bytes, max_side: int) -> np.ndarray:
    """RGB uint8 ``(H, W, 3)`` from encoded bytes; ApiError 400/413 for anything unusable."""
    image = open_checked(data, max_side)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()
            return to_rgb_array(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ApiError(413, "image has too many pixels") from error
    except Exception as error:  # truncated or corrupt pixel data
        raise ApiError(
            400, f"cannot decode the image (send {', '.join(DECODERS)}): {first_line(error)}"
        ) from error


def png_bytes(array: np.ndarray) -> bytes:
    """A uint8 (or uint16) array as PNG; fast compression, as answers go over a local network."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def unique_names(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    result = []
    for index, name in enumerate(names):
        result.append(name if name not in seen else f"{name}_{index}")
        seen[name] = index
    return result


def file_sha256(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


# ---------------------------------------------------------------------------------------------
# The single inference worker


@dataclass
class Prediction:
    image: np.ndarray  # (H, W, 3) the decoded input
    labels: np.ndarray  # (H, W) class indices
    road_levels: np.ndarray | None  # (H, W) uint8 road probability, when asked for
    inference_ms: float


@dataclass
class Job:
    data: bytes  # the encoded image: queued requests hold no decoded pixels
    pixels: int
    want_prob: bool
    future: asyncio.Future


class InferenceWorker:
    """Admission control plus one worker that decodes and runs micro-batches on one thread.

    ``admit()`` refuses (False) when ``capacity`` requests are already in flight, so at most
    ``capacity`` request bodies (each at most ``max_bytes``) wait, however many clients connect.
    Queued requests hold encoded bytes only: images are decoded by the worker, a batch at a time,
    and at most ``ANSWER_SLOTS`` answers are encoded at once.
    """

    ANSWER_SLOTS = 2

    def __init__(
        self,
        predictor: Predictor,
        positive_class: int,
        num_classes: int,
        capacity: int,
        batch_size: int,
        batch_pixels: int,
        max_side: int,
    ) -> None:
        self.predictor = predictor
        self.max_side = max_side
        self.positive_class = positive_class
        self.label_dtype = np.uint8 if num_classes <= 256 else np.uint16
        self.capacity = capacity
        self.batch_size = batch_size
        self.batch_pixels = batch_pixels
        self.in_flight = 0
        self.images = 0
        self.batches = 0
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="semseg-inference")
        self._queue: asyncio.Queue[Job] | None = None
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._carry: Job | None = None
        self.answer_slots: asyncio.Semaphore | None = None

    def admit(self) -> bool:
        if self.in_flight >= self.capacity:
            return False
        self.in_flight += 1
        return True

    def release(self) -> None:
        self.in_flight -= 1

    def start(self) -> None:
        """Start (or restart, on a new event loop) the worker task; idempotent."""
        loop = asyncio.get_running_loop()
        if self._task is not None and not self._task.done() and self._loop is loop:
            return
        self._loop = loop
        self._queue = asyncio.Queue(maxsize=self.capacity)
        self._carry = None
        self.answer_slots = asyncio.Semaphore(self.ANSWER_SLOTS)
        self._task = loop.create_task(self._run(), name="semseg-inference")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def predict(self, data: bytes, pixels: int, want_prob: bool) -> Prediction:
        """Decode, segment and post-process one image (its header already checked)."""
        self.start()
        assert self._queue is not None
        job = Job(data, pixels, want_prob, asyncio.get_running_loop().create_future())
        self._queue.put_nowait(job)  # never full: at most `capacity` requests are admitted
        return await job.future

    async def _next_batch(self) -> list[Job]:
        assert self._queue is not None
        first = self._carry or await self._queue.get()
        self._carry = None
        jobs, pixels = [first], first.pixels
        while len(jobs) < self.batch_size and not self._queue.empty():
            job = self._queue.get_nowait()
            if pixels + job.pixels > self.batch_pixels:
                self._carry = job
                break
            jobs.append(job)
            pixels += job.pixels
        return [job for job in jobs if not job.future.done()]

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._next_batch()
            if not jobs:
                continue
            try:
                results = await loop.run_in_executor(self.executor, self._infer, jobs)
            except Exception as error:
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(error)
                continue
            decoded = sum(isinstance(result, Prediction) for result in results)
            if decoded:
                self.batches += 1
                self.images += decoded
            for job, result in zip(jobs, results, strict=True):
                if job.future.done():
                    continue
                if isinstance(result, Prediction):
                    job.future.set_result(result)
                else:
                    job.future.set_exception(result)

    def _infer(self, jobs: list[Job]) -> list[Prediction | ApiError]:
        """On the worker thread: decode each job (a bad one fails alone), one batch, labels."""
        started = time.perf_counter()
        outcomes: list[Prediction | ApiError | None] = []
        images = []
        for job in jobs:
            try:
                images.append(decode_image(job.data, self.max_side))
                outcomes.append(None)
            except ApiError as error:
                outcomes.append(error)
            job.data = b""
        probabilities = iter(self.predictor.predict_batch(images) if images else [])
        pictures = iter(images)
        results: list[Prediction | ApiError] = []
        for job, outcome in zip(jobs, outcomes, strict=True):
            if outcome is not None:
                results.append(outcome)
                continue
            probability = next(probabilities)
            labels = probability.argmax(axis=0).astype(self.label_dtype)
            levels = confidence_levels(probability[self.positive_class]) if job.want_prob else None
            results.append(Prediction(next(pictures), labels, levels, 0.0))
        del probabilities, images
        elapsed = (time.perf_counter() - started) * 1000.0
        for result in results:
            if isinstance(result, Prediction):
                result.inference_ms = elapsed
        return results


# ---------------------------------------------------------------------------------------------
# Reading the request


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
        raise ApiError(400, f"bad multipart upload: {first_line(error)}") from error
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


# ---------------------------------------------------------------------------------------------
# The application


@dataclass
class Service:
    loaded: LoadedModel
    worker: InferenceWorker
    backend: str
    info: ModelInfo
    class_names: list[str]
    max_bytes: int
    max_side: int


def create_app(
    model: LoadedModel | str | Path,
    *,
    backend: str = "auto",
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_side: int = DEFAULT_MAX_SIDE,
    max_queue: int = DEFAULT_MAX_QUEUE,
    batch_size: int = DEFAULT_BATCH_SIZE,
    batch_pixels: int = DEFAULT_BATCH_PIXELS,
    warmup: bool = True,
    announce: Callable[[str], None] | None = None,
) -> FastAPI:
    """The service for a checkpoint (path) or an already loaded model; loads the model now."""
    for name, value in (("max_bytes", max_bytes), ("max_side", max_side),
                        ("max_queue", max_queue), ("batch_size", batch_size),
                        ("batch_pixels", batch_pixels)):
        if int(value) < 1:
            raise SemsegError(f"{name} must be at least 1, got {value}")
    resolved = resolve_backend(backend)  # before loading: a bad flag fails fast
    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    if resolved == "auto" and announce is not None:
        announce("--backend auto: timing the inference backends on this model (once per "
                 "machine and checkpoint; then cached)")
    predictor, backend_name, backend_detail = make_predictor(loaded, resolved, batch_size)
    if warmup:
        height, width = loaded.input_size
        predictor.predict_batch([np.zeros((height, width, 3), dtype=np.uint8)])
    sha256, size = file_sha256(loaded.path) if loaded.path.is_file() else ("", 0)
    class_names = unique_names([str(name) for name in loaded.class_names])
    positive = loaded.positive_class
    info = ModelInfo(
        name=loaded.model_name,
        num_classes=loaded.num_classes,
        classes=class_names,
        positive_class=positive,
        positive_class_name=class_names[positive] if positive < len(class_names) else "",
        input_size=InputSize(height=loaded.input_size[0], width=loaded.input_size[1]),
        backend=backend_name,
        backend_detail=backend_detail,
        checkpoint=CheckpointInfo(file=loaded.path.name, bytes=size, sha256=sha256),
        formats=[f.value for f in OutputFormat],
        limits=Limits(max_bytes=max_bytes, max_side=max_side, max_queue=max_queue,
                      batch_size=batch_size),
    )
    worker = InferenceWorker(predictor, positive, loaded.num_classes, max_queue, batch_size,
                             batch_pixels, max_side)
    service = Service(loaded, worker, backend_name, info, class_names, max_bytes, max_side)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        worker.start()
        try:
            yield
        finally:
            await worker.stop()

    app = FastAPI(
        title="semseg",
        summary=f"Road segmentation with {loaded.model_name} ({loaded.path.name})",
        version=_version(),
        lifespan=lifespan,
    )
    app.state.service = service
    install_error_handlers(app)
    add_routes(app, service)
    return app


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("semseg")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0"


def error_response(status: int, message: str, headers: dict[str, str] | None = None):
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_request: Request, error: ApiError):
        return error_response(error.status, error.message, error.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, error: StarletteHTTPException):
        return error_response(error.status_code, str(error.detail), dict(error.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, error: RequestValidationError):
        problems = []
        for item in error.errors():
            where = ".".join(str(part) for part in item.get("loc", ()) if part != "query")
            problems.append(f"{where}: {item.get('msg', 'invalid')}" if where else item["msg"])
        return error_response(422, "; ".join(problems) or "invalid request")


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in (
        (400, "Empty body, undecodable image or malformed multipart upload"),
        (413, "Request body over max_bytes, or an image side over max_side"),
        (415, "Content type that is not an image (or multipart)"),
        (422, "Multipart upload without a 'file' part, or a bad query parameter"),
        (503, "Too many requests in flight; retry after the Retry-After seconds"),
    )
}

FORMAT_HELP = (
    "overlay (PNG), prob (8-bit road probability PNG), label (class-index PNG) or json (areas "
    "and road fraction)"
)
BINARY = {"schema": {"type": "string", "format": "binary"}}
SEGMENT_BODY = {
    "requestBody": {
        "required": True,
        "description": "A multipart upload with the image in the 'file' part, or the image "
        "itself as the body with its content type.",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            },
            **{kind: BINARY for kind in ("image/png", "image/jpeg", "image/bmp", "image/tiff",
                                         "image/webp", "image/x-portable-pixmap",
                                         "application/octet-stream")},
        },
    }
}


def add_routes(app: FastAPI, service: Service) -> None:
    from semseg.serve_page import PAGE, PAGE_HEADERS

    worker = service.worker
    loaded = service.loaded

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE, headers=PAGE_HEADERS)

    @app.get("/healthz", response_model=Health, tags=["service"])
    async def healthz() -> Health:
        """Liveness, requests in flight and images served so far."""
        return Health(status="ok", model=loaded.model_name, in_flight=worker.in_flight,
                      capacity=worker.capacity, images=worker.images, batches=worker.batches)

    @app.get("/v1/model", response_model=ModelInfo, tags=["model"])
    async def model_info() -> ModelInfo:
        """The served model: name, classes, input size, backend, checkpoint SHA-256, limits."""
        return service.info

    @app.post(
        "/v1/segment",
        tags=["model"],
        openapi_extra=SEGMENT_BODY,
        responses={
            200: {
                "model": SegmentResult,
                "description": "PNG (overlay, prob, label) or JSON (json)",
                "content": {"image/png": {}},
            },
            **ERROR_RESPONSES,
        },
    )
    async def segment(
        request: Request,
        output: Annotated[OutputFormat, Query(alias="format", description=FORMAT_HELP)] = (
            OutputFormat.overlay
        ),
        alpha: Annotated[float, Query(ge=0.0, le=1.0, description="Road overlay opacity.")] = 0.5,
    ) -> Response:
        """Segment one image (multipart field ``file``, or the raw body with an image type)."""
        started = time.perf_counter()
        if not worker.admit():
            raise ApiError(
                503,
                f"busy: {worker.capacity} requests are in flight; retry shortly",
                headers={"Retry-After": "1"},
            )
        try:
            data = await read_upload(request, service.max_bytes)
            pixels = await run_in_threadpool(probe_image, data, service.max_side)
            result = await worker.predict(data, pixels, want_prob=output is OutputFormat.prob)
            del data
            assert worker.answer_slots is not None
            async with worker.answer_slots:
                return await run_in_threadpool(
                    build_answer, service, result, output, alpha, started
                )
        except ApiError:
            raise
        except Exception as error:  # the server's fault (out of memory, a bug): still JSON
            LOG.exception("segmentation failed")
            raise ApiError(500, f"segmentation failed: {first_line(error)}") from error
        finally:
            worker.release()


def build_answer(
    service: Service,
    result: Prediction,
    output: OutputFormat,
    alpha: float,
    started: float,
) -> Response:
    labels = result.labels
    positive = service.loaded.positive_class
    road = labels == positive
    road_pixels = int(road.sum())
    total = int(labels.size)
    fraction = road_pixels / total
    if output is OutputFormat.json:
        counts = np.bincount(labels.ravel(), minlength=service.loaded.num_classes)
        latency = (time.perf_counter() - started) * 1000.0
        body = SegmentResult(
            width=int(labels.shape[1]),
            height=int(labels.shape[0]),
            road_fraction=fraction,
            road_pixels=road_pixels,
            positive_class=service.info.positive_class_name,
            classes={
                name: ClassArea(pixels=int(counts[i]), fraction=int(counts[i]) / total)
                for i, name in enumerate(service.class_names)
            },
            model=service.loaded.model_name,
            backend=service.backend,
            latency_ms=round(latency, 3),
            inference_ms=round(result.inference_ms, 3),
        )
        return JSONResponse(body.model_dump(), headers={"Cache-Control": "no-store"})
    if output is OutputFormat.overlay:
        content = png_bytes(overlay(result.image, road, alpha=alpha))
    elif output is OutputFormat.prob:
        assert result.road_levels is not None
        content = png_bytes(result.road_levels)
    else:
        content = png_bytes(labels)
    latency = (time.perf_counter() - started) * 1000.0
    headers = {
        "Cache-Control": "no-store",
        "X-Road-Fraction": f"{fraction:.6f}",
        "X-Latency-Ms": f"{latency:.1f}",
        "X-Inference-Ms": f"{result.inference_ms:.1f}",
        "X-Image-Size": f"{labels.shape[1]}x{labels.shape[0]}",
    }
    return Response(content, media_type="image/png", headers=headers)


# ---------------------------------------------------------------------------------------------
# Running it


def listen_socket(host: str, port: int) -> socket.socket:
    """A bound, listening TCP socket, or a one-line error (address in use, bad host)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as error:
        raise SemsegError(f"cannot listen on {host}:{port}: {first_line(error)}") from error
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as error:
        sock.close()
        raise SemsegError(f"cannot listen on {host}:{port}: {error.strerror or error}") from error
    return sock


def run_server(
    checkpoint: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    backend: str = "auto",
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_side: int = DEFAULT_MAX_SIDE,
    max_queue: int = DEFAULT_MAX_QUEUE,
    batch_size: int = DEFAULT_BATCH_SIZE,
    log_level: str = "info",
    announce: Callable[[str], None] = print,
) -> None:
    """Bind the socket, load the checkpoint, serve until interrupted."""
    import uvicorn

    resolve_backend(backend)
    sock = listen_socket(host, port)  # an address in use fails before the model loads
    try:
        app = create_app(checkpoint, backend=backend, max_bytes=max_bytes, max_side=max_side,
                         max_queue=max_queue, batch_size=batch_size, announce=announce)
    except BaseException:
        sock.close()
        raise
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    info: ModelInfo = app.state.service.info
    announce(f"serving {info.name} ({info.checkpoint.file}, {info.backend_detail}) on "
             f"http://{shown}:{bound_port}/ (API docs at /docs)")
    config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()

"""Reading images safely and writing every output atomically (temp file + rename)."""

from __future__ import annotations

import errno
import io
import json
import os
import secrets
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from semseg.errors import SemsegError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff", ".webp")
MAX_IMAGE_PIXELS = 20_000 * 20_000  # larger images are refused rather than exhausting memory


TEMP_PREFIX = ".semseg-"  # temp files of atomic writes: TEMP_PREFIX + 12 hex digits + ".tmp"
FILE_MODE = 0o666  # before the umask, as open() and the shell create files
DISK_FULL_BYTES = 1 << 20  # a failed write with less than this free is reported as a full disk


def create_temp_beside(path: Path) -> tuple[int, Path]:
    """A new, empty temp file in ``path``'s folder, opened for writing: ``(fd, temp path)``.

    Its name is short whatever ``path``'s is (a name near the 255-byte limit still works), and it
    is created with mode 0o666 less the umask, so the renamed file has the permissions any
    other new file would have (``mkstemp`` would make every output 0600).
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        temp = path.parent / f"{TEMP_PREFIX}{secrets.token_hex(6)}.tmp"
        try:
            return os.open(temp, flags, FILE_MODE), temp
        except FileExistsError:
            continue


@contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temp file beside ``path``; rename it over ``path`` only when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = create_temp_beside(path)
    try:
        with os.fdopen(handle, mode) as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp, path)
    except BaseException as error:
        disk_full = is_disk_full(error, path.parent)
        temp.unlink(missing_ok=True)
        if disk_full:
            raise SemsegError(
                f"cannot write {path}: no space left on the disk "
                f"({free_megabytes(path.parent):.0f} MB free after removing the partial file)"
            ) from error
        raise


def is_disk_full(error: BaseException, folder: Path) -> bool:
    """A write that failed because the file system is full: ``ENOSPC`` from Python, or a
    library's own short-write error (torch's zip writer reports "unexpected pos") with almost
    nothing left on the disk."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if not isinstance(error, (OSError, RuntimeError)):
        return False
    try:
        return shutil.disk_usage(folder).free < DISK_FULL_BYTES
    except OSError:
        return False


def free_megabytes(folder: Path) -> float:
    try:
        return shutil.disk_usage(folder).free / 2**20
    except OSError:
        return float("nan")


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as stream:
        stream.write(data)


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, payload: Any) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=False) + "\n")


def write_png_atomic(path: str | Path, array: np.ndarray) -> None:
    """Write a uint8 HxW or HxWx3 array as PNG, atomically.

    zlib level 1: a KITTI overlay (375 x 1242 RGB) encodes 3x faster than at PIL's default 6
    for a file about 15% larger; masks and probability maps barely change size."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG", compress_level=1)
    write_bytes_atomic(path, buffer.getvalue())


def open_image(path: str | Path) -> Image.Image:
    """Open and fully decode an image, turning every decoding failure into a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise SemsegError(f"image not found: {path}")
    if path.stat().st_size == 0:
        raise SemsegError(f"empty file: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise SemsegError(f"image too large ({width}x{height}): {path}")
            image.load()
    except SemsegError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise SemsegError(f"cannot read image {path}: {first_line(error)}") from error
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise SemsegError(f"image too large: {path}") from error
    return image


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """RGB uint8 ``(H, W, 3)`` from any PIL mode (grey, palette, RGBA, 16-bit grey)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grey: scale to 8 bits rather than letting PIL clip at 255.
        values = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if values.max() > 255 else 255.0
        grey = np.clip(np.round(values / peak * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if image.mode == "F":
        grey = np.clip(np.asarray(image, dtype=np.float64), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def read_rgb(path: str | Path) -> np.ndarray:
    """An image file as RGB uint8 ``(H, W, 3)``; a clear error for anything unreadable."""
    return to_rgb_array(open_image(path))


def list_images(folder: str | Path) -> list[Path]:
    """Image files in ``folder`` (not recursive), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SemsegError(f"folder not found: {folder}")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def check_output_file(path: str | Path, flag: str) -> None:
    """Refuse an output file that cannot be written, before the work that fills it starts."""
    path = Path(path)
    if path.is_dir():
        raise SemsegError(f"{flag} {path} is a folder; give a file name")
    if path.exists() and not path.is_file():
        raise SemsegError(f"{flag} {path} exists and is not a regular file")
    check_writable_parent(path, flag)


def check_output_dir(path: str | Path, flag: str) -> None:
    """Refuse an output folder that is a file or cannot be created or written, up front."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise SemsegError(f"{flag} {path} exists and is not a folder")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise SemsegError(f"{flag} {path} is not writable")
        return
    check_writable_parent(path, flag)


def check_writable_parent(path: Path, flag: str) -> None:
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise SemsegError(f"{flag} {path}: {ancestor} is not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise SemsegError(f"{flag} {path}: {ancestor} is not writable")

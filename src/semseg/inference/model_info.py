"""What inference needs to know about a model, without torch: :class:`LoadedModel`, the
bounds a checkpoint's or ONNX file's description must keep, and file hashes (the checkpoint's
remembered in the cache folder). Imported by the torch-free start of ``semseg predict``
(:mod:`semseg.inference.fast_start`) as by the checkpoint loader."""

from __future__ import annotations

import contextlib
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from semseg.errors import SemsegError
from semseg.inference.palette import default_colours

if TYPE_CHECKING:
    from torch import nn

REQUIRED_HPARAMS = ("model_name", "num_classes", "input_size")
MAX_INPUT_SIDE = 8192
MAX_INPUT_PIXELS = 16_000_000
"""Largest input size (per side, and height x width) a model description may ask for."""
MAX_CLASSES = 1024


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, hex (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


STABLE_FOR_S = 2.0
"""A file's hash is remembered only once its last change is this many seconds old: a write within
the file system's timestamp granularity could otherwise leave size and times unchanged."""


def hash_memo(path: str | Path) -> tuple[Path, Path, list[int]]:
    """The resolved file, its memo file in the cache folder and its signature (size, inode,
    device, change times): any change of the file changes the signature."""
    from semseg.inference.machine import cache_dir

    resolved = Path(path).resolve()
    info = resolved.stat()
    signature = [info.st_size, info.st_ino, info.st_dev, info.st_mtime_ns, info.st_ctime_ns]
    name = hashlib.sha256(str(resolved).encode()).hexdigest()[:32]
    return resolved, cache_dir() / "hashes" / f"{name}.json", signature


def remembered_sha256(path: str | Path) -> str | None:
    """The SHA-256 the memo holds for the file as it is now, or None (never hashed, changed)."""
    import json

    try:
        resolved, memo, signature = hash_memo(path)
        entry = json.loads(memo.read_text())
        if entry.get("path") == str(resolved) and entry.get("stat") == signature:
            return str(entry["sha256"])
    except (OSError, ValueError, KeyError, AttributeError):
        pass
    return None


def checkpoint_sha256(path: str | Path) -> str:
    """:func:`file_sha256` of a checkpoint, remembered in the cache folder (``hashes/``) under the
    file's path, size, inode and change times, so that a new process need not read a 1.6 GB
    checkpoint again to find its cached artefacts. Any change of the file misses the memo."""
    from semseg.io import write_json_atomic

    remembered = remembered_sha256(path)
    if remembered is not None:
        return remembered
    resolved, memo, signature = hash_memo(path)
    sha = file_sha256(resolved)
    info = resolved.stat()
    if time.time() - max(info.st_mtime, info.st_ctime) > STABLE_FOR_S:
        with contextlib.suppress(OSError):
            write_json_atomic(memo, {"path": str(resolved), "stat": signature, "sha256": sha})
    return sha


def check_model_description(
    path: str | Path, num_classes: object, input_size: object
) -> tuple[int, tuple[int, int]]:
    """The class count and ``(height, width)`` of a checkpoint or ONNX file, within bounds."""
    try:
        classes = int(num_classes)  # type: ignore[call-overload]
        height, width = (int(v) for v in input_size)  # type: ignore[attr-defined]
    except (TypeError, ValueError, OverflowError):
        raise SemsegError(
            f"{path}: num_classes / input_size are not numbers (input_size: [height, width])"
        ) from None
    if not 1 <= classes <= MAX_CLASSES:
        raise SemsegError(f"{path}: num_classes {classes} is outside 1..{MAX_CLASSES}")
    if not (1 <= height <= MAX_INPUT_SIDE and 1 <= width <= MAX_INPUT_SIDE) or (
        height * width > MAX_INPUT_PIXELS
    ):
        raise SemsegError(
            f"{path}: input_size {height}x{width} is outside the bounds (1..{MAX_INPUT_SIDE} "
            f"per side, at most {MAX_INPUT_PIXELS} pixels)"
        )
    return classes, (height, width)


def check_positive_class(path: str | Path, positive: object, num_classes: int) -> int:
    """The index of the road (positive) class, which must be one of the model's classes."""
    try:
        index = int(positive)  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError):
        raise SemsegError(f"{path}: positive_class {positive!r} is not a class index") from None
    if not 0 <= index < num_classes:
        raise SemsegError(f"{path}: positive_class {index} is outside 0..{num_classes - 1}")
    return index


@dataclass
class LoadedModel:
    """A model rebuilt from a checkpoint, with what inference needs to know about it."""

    model: nn.Module
    model_name: str
    num_classes: int
    input_size: tuple[int, int]  # (height, width) the model was trained at
    positive_class: int
    class_names: list[str]
    path: Path
    class_colours: np.ndarray | None = None  # (K, 3) uint8; the default palette when None
    # A model trained from image-level tags by MIL (semseg.weak.tag_task): the r of its
    # Log-Sum-Exp pooling, for the image-level prior at inference; None for other models
    lse_r: float | None = None
    # ... and the tiles (rows, columns) of its tags' extent, over which that prior is pooled
    prior_tiles: tuple[int, int] = (1, 1)

    def __post_init__(self) -> None:
        if self.class_colours is None:
            self.class_colours = default_colours(self.num_classes)

    @property
    def is_multiclass(self) -> bool:
        """Scored by mIoU (more than two classes); two classes are scored as road by MaxF."""
        return self.num_classes > 2


def checked_colours(path: str | Path, colours: object, num_classes: int) -> np.ndarray | None:
    """The checkpoint's ``class_colours`` as ``(K, 3)`` uint8, or None when it has none."""
    if colours is None:
        return None
    try:
        array = np.asarray(colours, dtype=np.int64)
    except (TypeError, ValueError):
        array = np.zeros(0)
    if array.shape != (num_classes, 3) or array.min() < 0 or array.max() > 255:
        raise SemsegError(f"{path}: class_colours must be {num_classes} RGB triples 0..255")
    return array.astype(np.uint8)


def checked_names(path: str | Path, names: object, num_classes: int) -> list[str]:
    """The class names (``class0``, ``class1``, ... when there are none), one per class."""
    if not names:
        return [f"class{i}" for i in range(num_classes)]
    if isinstance(names, str | bytes) or not isinstance(names, list | tuple):
        raise SemsegError(f"{path}: class_names must be a list of {num_classes} names")
    if len(names) != num_classes:
        raise SemsegError(f"{path}: {len(names)} class_names for {num_classes} classes")
    return [str(name) for name in names]

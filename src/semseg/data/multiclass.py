"""One entry point for the multi-class dataset kinds: ``folder`` (flat or train/val/test),
``voc`` (Pascal VOC 2012) and ``cityscapes``: which kind a folder is, the samples of a split,
the reader of a sample and the class table.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np

from semseg.data.classes import ClassTable, find_class_table, load_class_table
from semseg.data.folder import (
    folder_splits,
    index_folder_split,
    is_split_layout,
    read_folder_sample,
)
from semseg.data.layout import detect_kind as detect_data_kind
from semseg.data.sample import Sample
from semseg.data.torchvision_sets import (
    cityscapes_class_table,
    cityscapes_samples,
    read_cityscapes_sample,
    read_voc_sample,
    voc_class_table,
    voc_samples,
)
from semseg.errors import SemsegError

KINDS = ("folder", "voc", "cityscapes")
SampleReader = Callable[[Sample], tuple[np.ndarray, np.ndarray]]


def detect_kind(root: str | Path) -> str | None:
    """``"voc"``, ``"cityscapes"``, ``"folder"`` (``images/`` or ``train/images/`` inside) or
    ``None`` when ``root`` is none of these (e.g. KITTI). Folders by the one rule of
    :func:`semseg.data.layout.detect_kind`."""
    try:
        kind = detect_data_kind(root)
    except SemsegError:
        return None
    return kind if kind in KINDS else None


def class_table_for(
    kind: str, root: str | Path, explicit: str | Path | None = None
) -> ClassTable | None:
    """The class table of a dataset: ``explicit`` (``--class-table``), else the fixed table of
    VOC / Cityscapes, else ``ROOT/classes.yaml``; ``None`` for a folder without one."""
    if explicit:
        return load_class_table(explicit)
    if kind == "voc":
        return voc_class_table()
    if kind == "cityscapes":
        return cityscapes_class_table()
    found = find_class_table(root)
    return load_class_table(found) if found else None


def split_samples(
    kind: str, root: str | Path, split: str, skip_missing: bool = False
) -> list[Sample]:
    """The samples of ``split`` (``train``, ``val``, ``test``; VOC also ``trainval``)."""
    if kind == "voc":
        return voc_samples(root, split, skip_missing)
    if kind == "cityscapes":
        return cityscapes_samples(root, split, skip_missing)
    if kind == "folder":
        if not is_split_layout(root):
            raise SemsegError(f"--split {split}: {root} has no train/, val/ or test/ folders")
        return index_folder_split(root, split, skip_missing)
    raise SemsegError(f"unknown multi-class data kind {kind!r} ({', '.join(KINDS)})")


def train_val_samples(
    kind: str, root: str | Path, skip_missing: bool = False
) -> dict[str, list[Sample]] | None:
    """``{"train": ..., "val": ...}`` when the dataset comes with a validation split (VOC,
    Cityscapes, a folder with ``train/`` and ``val/``); ``None`` when it must be split at random."""
    if kind in ("voc", "cityscapes"):
        return {s: split_samples(kind, root, s, skip_missing) for s in ("train", "val")}
    splits = folder_splits(root, skip_missing)
    if "train" in splits and "val" in splits:
        return {"train": splits["train"], "val": splits["val"]}
    if "all" in splits:
        return None
    raise SemsegError(
        f"{root} needs both train/ and val/ folders for training (has {list(splits)})"
    )


def sample_reader(kind: str, num_classes: int, table: ClassTable | None) -> SampleReader:
    """The function that loads ``(image, mask of training ids)`` for a sample of ``kind``."""
    if kind in ("voc", "cityscapes"):
        expected = 21 if kind == "voc" else 19
        if num_classes != expected:
            raise SemsegError(f"{kind} has {expected} classes, but model.num_classes={num_classes}")
        return read_voc_sample if kind == "voc" else read_cityscapes_sample
    if kind == "folder":
        return functools.partial(read_folder_sample, num_classes=num_classes, class_table=table)
    raise SemsegError(f"unknown multi-class data kind {kind!r} ({', '.join(KINDS)})")


__all__ = [
    "KINDS",
    "class_table_for",
    "detect_kind",
    "sample_reader",
    "split_samples",
    "train_val_samples",
]

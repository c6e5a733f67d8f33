"""A generic folder dataset: ``ROOT/images/NAME.ext`` with ``ROOT/masks/NAME.png``.

Two layouts are recognised:

* flat: ``ROOT/images`` and ``ROOT/masks`` (the validation images are split off at random);
* split: ``ROOT/train``, ``ROOT/val`` and/or ``ROOT/test``, each with ``images/`` and ``masks/``
  (CamVid's layout); the given ``val/`` is the validation split.

Masks are index PNGs (single-channel: pixel value = class index, 255 = ignore) or colour PNGs.
With a class table (:mod:`semseg.data.classes`; ``ROOT/classes.yaml`` when the folder carries
one) index masks are read through the table (values are table positions, ignored entries and 255
become 255) and colour masks are decoded by the table's colours. Without a table, index masks
must hold class indices below the model's class count or 255.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from semseg.config import IGNORE_INDEX
from semseg.data.classes import ClassTable, find_class_table, load_class_table
from semseg.data.kitti import check_same_size
from semseg.data.sample import Sample
from semseg.errors import SemsegError
from semseg.io import list_images, open_image, read_rgb, to_rgb_array

SPLITS = ("train", "val", "test")  # the subfolders of the split layout
INDEX_MODES = ("L", "P", "I", "I;16")  # PIL modes of single-channel (index) masks

__all__ = [
    "SPLITS",
    "ClassTable",
    "find_class_table",
    "folder_splits",
    "index_folder",
    "index_folder_split",
    "is_split_layout",
    "load_class_table",
    "read_folder_sample",
    "read_index_mask",
    "read_mask",
    "split_names",
]


def index_folder(
    root: str | Path, require_masks: bool = True, skip_missing: bool = False
) -> list[Sample]:
    """Every image in ``ROOT/images`` with its mask ``ROOT/masks/<stem>.png``."""
    root = Path(root)
    if not root.is_dir():
        raise SemsegError(f"data folder not found: {root}")
    images = list_images(root / "images")
    samples, missing = [], []
    for image_path in images:
        mask_path = root / "masks" / f"{image_path.stem}.png"
        if not mask_path.is_file():
            missing.append(image_path.name)
            if require_masks:
                continue
        samples.append(
            Sample(
                name=image_path.stem,
                category=None,
                image_path=image_path,
                target_path=mask_path if mask_path.is_file() else None,
            )
        )
    if require_masks and missing and not skip_missing:
        raise SemsegError(
            f"{len(missing)} image(s) in {root / 'images'} have no mask in {root / 'masks'}, "
            f"first: {missing[0]} (use --skip-bad to skip them)"
        )
    if not samples:
        raise SemsegError(f"no labelled images found in {root / 'images'}")
    return samples


def is_split_layout(root: str | Path) -> bool:
    """Whether ``root`` holds ``train/``, ``val/`` or ``test/`` folders with ``images/`` inside."""
    return any((Path(root) / split / "images").is_dir() for split in SPLITS)


def folder_splits(root: str | Path, skip_missing: bool = False) -> dict[str, list[Sample]]:
    """The samples of each split a dataset folder holds.

    Split layout: ``{"train": [...], "val": [...], "test": [...]}`` for the subfolders present
    (in that order); flat layout: ``{"all": [...]}``, to be split at random by the caller.
    """
    root = Path(root)
    if not root.is_dir():
        raise SemsegError(f"data folder not found: {root}")
    if not is_split_layout(root):
        return {"all": index_folder(root, skip_missing=skip_missing)}
    return {
        split: index_folder(root / split, skip_missing=skip_missing)
        for split in SPLITS
        if (root / split / "images").is_dir()
    }


def index_folder_split(
    root: str | Path, split: str, skip_missing: bool = False, require_masks: bool = True
) -> list[Sample]:
    """The samples of one split (``--split train|val|test``) of a split-layout folder."""
    root = Path(root)
    if split not in SPLITS:
        raise SemsegError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    present = [name for name in SPLITS if (root / name / "images").is_dir()]
    if split not in present:
        where = f"it has {', '.join(present)}" if present else "it has no split folders"
        raise SemsegError(f"--split {split}: no {root / split / 'images'} ({where})")
    return index_folder(root / split, require_masks=require_masks, skip_missing=skip_missing)


def split_names(splits: Mapping[str, Sequence[Sample]]) -> dict[str, list[str]]:
    """``{"train": names, "val": names}`` of a split-layout folder, in the form of ``split.json``.

    Names must be unique across ``train/`` and ``val/`` since a run's split lists names only.
    """
    if "train" not in splits or "val" not in splits:
        raise SemsegError(f"the data folder needs train/ and val/ folders, found: {list(splits)}")
    train = [sample.name for sample in splits["train"]]
    val = [sample.name for sample in splits["val"]]
    shared = sorted(set(train) & set(val))
    if shared:
        raise SemsegError(
            f"{len(shared)} image name(s) occur in both train/ and val/, first: {shared[0]}"
        )
    return {"train": train, "val": val}


def read_index_mask(path: Path, num_classes: int) -> np.ndarray:
    """An index PNG; values must be class indices below ``num_classes`` or the ignore index."""
    image = open_image(path)
    if image.mode not in INDEX_MODES:
        raise SemsegError(f"{path}: an index mask must be a single-channel PNG (got {image.mode})")
    mask = np.asarray(image, dtype=np.int64)
    bad = (mask >= num_classes) & (mask != IGNORE_INDEX)
    if bad.any():
        raise SemsegError(
            f"{path}: class index {int(mask[bad][0])} but the model has {num_classes} classes"
        )
    return mask.astype(np.uint8)


def read_folder_sample(
    sample: Sample, num_classes: int, class_table: ClassTable | None
) -> tuple[np.ndarray, np.ndarray]:
    """Image ``(H, W, 3)`` and class-index mask ``(H, W)`` of a folder sample."""
    image = read_rgb(sample.image_path)
    if sample.target_path is None:
        raise SemsegError(f"no mask for {sample.image_path}")
    mask = read_mask(sample.target_path, num_classes, class_table)
    check_same_size(image, mask, sample.target_path)
    return image, mask


def read_mask(path: Path, num_classes: int, class_table: ClassTable | None) -> np.ndarray:
    """Training ids ``(H, W)`` uint8 of an index or colour mask (see module docstring)."""
    if class_table is None:
        return read_index_mask(path, num_classes)
    if class_table.num_classes != num_classes:
        raise SemsegError(
            f"class table {class_table.source} has {class_table.num_classes} classes but "
            f"model.num_classes={num_classes}"
        )
    image = open_image(path)
    if image.mode in INDEX_MODES:
        return class_table.decode_index(np.asarray(image), path)
    return class_table.decode(to_rgb_array(image), path)

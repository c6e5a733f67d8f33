"""KITTI Road (``data_road``) reader: file index, ground-truth decoding, train/val split.

Fritsch, Kuehnl & Geiger, "A New Performance Measure and Evaluation Benchmark for Road Detection
Algorithms", ITSC 2013. Layout::

    ROOT/training/image_2/{um,umm,uu}_NNNNNN.png
    ROOT/training/gt_image_2/{um,umm,uu}_road_NNNNNN.png   (+ um_lane_NNNNNN.png)
    ROOT/training/calib/{um,umm,uu}_NNNNNN.txt
    ROOT/testing/image_2/...

Ground-truth colours (devkit): red > 0 is the valid evaluation area, blue > 0 is road; pixels
outside the valid area get the ignore index.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import numpy as np

from semseg.config import CATEGORIES, IGNORE_INDEX
from semseg.data.sample import Sample
from semseg.errors import SemsegError
from semseg.io import list_images, read_rgb, write_json_atomic

NAME_PATTERN = re.compile(r"^(um|umm|uu)_(\d{6})$")
# Colours the devkit's ground truth uses: road, not road, outside, road outside the valid area.
KNOWN_GT_COLOURS = np.array([[255, 0, 255], [255, 0, 0], [0, 0, 0], [0, 0, 255]], dtype=np.uint8)


def kitti_gt_name(image_name: str, task: str = "road") -> str:
    """``um_000000`` -> ``um_road_000000`` (non-KITTI names get ``_road`` appended)."""
    match = NAME_PATTERN.match(image_name)
    if match is None:
        return f"{image_name}_{task}"
    return f"{match.group(1)}_{task}_{match.group(2)}"


def find_training_root(root: str | Path) -> Path:
    """The ``data_road`` folder: ``root`` itself or ``root/data_road``, holding ``training/``."""
    root = Path(root)
    if not root.exists():
        raise SemsegError(f"data folder not found: {root}")
    for candidate in (root, root / "data_road"):
        if (candidate / "training" / "image_2").is_dir():
            return candidate
    raise SemsegError(f"{root} is not a KITTI data_road folder (no training/image_2 inside)")


def index_split(
    root: str | Path,
    split: str = "training",
    categories: list[str] | tuple[str, ...] = CATEGORIES,
    task: str = "road",
    require_gt: bool = True,
    skip_missing: bool = False,
) -> list[Sample]:
    """Every image of ``split`` in the chosen categories, with ground truth when required.

    An image without its ground truth is an error, or skipped when ``skip_missing``. For the
    lane task only images that have a lane ground truth are kept (few images have one).
    """
    base = find_training_root(root) / split
    image_dir = base / "image_2"
    if not image_dir.is_dir():
        raise SemsegError(f"folder not found: {image_dir}")
    samples = []
    missing = []
    for image_path in list_images(image_dir):
        match = NAME_PATTERN.match(image_path.stem)
        if match is None or match.group(1) not in categories:
            continue
        category = match.group(1)
        sample_gt = base / "gt_image_2" / f"{kitti_gt_name(image_path.stem, task)}.png"
        calib = base / "calib" / f"{image_path.stem}.txt"
        if require_gt and not sample_gt.is_file():
            if task == "road":
                missing.append(image_path.name)
            continue
        samples.append(
            Sample(
                name=image_path.stem,
                category=category,
                image_path=image_path,
                target_path=sample_gt if sample_gt.is_file() else None,
                calib_path=calib if calib.is_file() else None,
            )
        )
    if missing and not skip_missing:
        raise SemsegError(
            f"{len(missing)} image(s) have no ground truth in {base / 'gt_image_2'}, "
            f"first: {missing[0]} (use --skip-bad to skip them)"
        )
    if not samples:
        raise SemsegError(
            f"no {task} images of categories {', '.join(categories)} found in {image_dir}"
        )
    return samples


def decode_gt(rgb: np.ndarray, path: Path | str = "ground truth") -> np.ndarray:
    """Class indices from a devkit colour ground truth: 1 road, 0 not road, 255 ignore.

    Colours other than the devkit's four are refused: they mean a wrong file.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise SemsegError(f"{path}: ground truth must be an RGB image")
    unknown = unknown_colours(rgb, KNOWN_GT_COLOURS)
    if unknown:
        raise SemsegError(
            f"{path}: unknown ground-truth colour {unknown[0]} "
            "(expected the KITTI devkit colours: red = valid area, blue = road)"
        )
    valid = rgb[:, :, 0] > 0
    road = rgb[:, :, 2] > 0
    mask = np.full(rgb.shape[:2], IGNORE_INDEX, dtype=np.uint8)
    mask[valid] = road[valid].astype(np.uint8)
    return mask


def pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """Colours as one integer each (``0xRRGGBB``): a 1-D ``np.unique`` is far faster."""
    rgb = rgb.reshape(-1, 3).astype(np.uint32)
    return (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]


def unknown_colours(rgb: np.ndarray, known: np.ndarray) -> list[tuple[int, int, int]]:
    """Colours of ``rgb`` that are not rows of ``known``, as RGB tuples."""
    present = np.unique(pack_rgb(rgb))
    missing = np.setdiff1d(present, pack_rgb(known))
    return [(int(v >> 16) & 255, int(v >> 8) & 255, int(v) & 255) for v in missing]


def read_gt_mask(path: str | Path) -> np.ndarray:
    """A ground-truth file as a class-index mask (0, 1, or 255 for ignore)."""
    return decode_gt(read_rgb(path), path)


def read_sample(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    """Image ``(H, W, 3)`` uint8 and mask ``(H, W)`` uint8 of one sample, sizes checked."""
    image = read_rgb(sample.image_path)
    if sample.target_path is None:
        raise SemsegError(f"no ground truth for {sample.image_path}")
    mask = read_gt_mask(sample.target_path)
    check_same_size(image, mask, sample.target_path)
    return image, mask


def check_same_size(image: np.ndarray, mask: np.ndarray, mask_path: Path) -> None:
    """Refuse a mask whose size differs from its image's."""
    if mask.shape != image.shape[:2]:
        raise SemsegError(
            f"{mask_path}: size {mask.shape[1]}x{mask.shape[0]} differs from its image "
            f"{image.shape[1]}x{image.shape[0]}"
        )


def split_train_val(
    names_by_category: dict[str, list[str]], val_fraction: float, seed: int
) -> dict[str, list[str]]:
    """A deterministic split, stratified by category: same names + seed -> same split."""
    train: list[str] = []
    val: list[str] = []
    for category in sorted(names_by_category):
        names = sorted(names_by_category[category])
        random.Random(f"{seed}-{category}").shuffle(names)
        count = max(1, round(len(names) * val_fraction)) if len(names) > 1 else 0
        val.extend(sorted(names[:count]))
        train.extend(sorted(names[count:]))
    if not train or not val:
        raise SemsegError("too few labelled images to split into training and validation")
    return {"train": sorted(train), "val": sorted(val)}


def write_split(path: Path, split: dict[str, list[str]]) -> None:
    write_json_atomic(path, split)


def read_split(path: Path) -> dict[str, list[str]]:
    try:
        split = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise SemsegError(f"cannot read split file {path}") from error
    if not isinstance(split, dict) or not {"train", "val"} <= set(split):
        raise SemsegError(f"{path} is not a split file (needs train and val lists)")
    return split

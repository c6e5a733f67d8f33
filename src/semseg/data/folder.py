"""A generic folder dataset: ``ROOT/images/NAME.ext`` with ``ROOT/masks/NAME.png``.

Masks are either index PNGs (pixel value = class index, 255 = ignore) or colour PNGs decoded
through a class table in YAML::

    classes:
      - {name: background, color: [255, 0, 0]}
      - {name: road, color: [255, 0, 255]}
      - {name: void, color: [0, 0, 0], ignore: true}
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from semseg.config import IGNORE_INDEX
from semseg.data.kitti import check_same_size, pack_rgb
from semseg.data.sample import Sample
from semseg.errors import SemsegError
from semseg.io import list_images, open_image, read_rgb


@dataclass(frozen=True)
class ClassTable:
    """Class names and mask colours; ignored colours map to the ignore index."""

    names: list[str]
    colours: np.ndarray  # (K, 3) uint8, one row per non-ignored class, in class order
    ignore_colours: np.ndarray  # (M, 3) uint8

    def decode(self, rgb: np.ndarray, path: Path | str = "mask") -> np.ndarray:
        """Class indices ``(H, W)`` uint8 from a colour mask; unknown colours are an error."""
        codes, inverse = np.unique(pack_rgb(rgb), return_inverse=True)
        class_codes = pack_rgb(self.colours)
        ignore_codes = pack_rgb(self.ignore_colours)
        lookup = np.empty(len(codes), dtype=np.uint8)
        for index, code in enumerate(codes):
            class_match = np.flatnonzero(class_codes == code)
            if class_match.size:
                lookup[index] = class_match[0]
            elif np.any(ignore_codes == code):
                lookup[index] = IGNORE_INDEX
            else:
                colour = (int(code >> 16) & 255, int(code >> 8) & 255, int(code) & 255)
                raise SemsegError(f"{path}: colour {colour} is not in the class table")
        return lookup[inverse.reshape(-1)].reshape(rgb.shape[:2])


def load_class_table(path: str | Path) -> ClassTable:
    """Read a class table YAML (see module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise SemsegError(f"class table not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise SemsegError(f"class table {path} is not valid YAML") from error
    entries = raw.get("classes") if isinstance(raw, dict) else None
    if not isinstance(entries, list) or not entries:
        raise SemsegError(f"class table {path} needs a non-empty 'classes' list")
    names, colours, ignore = [], [], []
    for entry in entries:
        try:
            colour = [int(v) for v in entry["color"]]
            if len(colour) != 3 or not all(0 <= v <= 255 for v in colour):
                raise ValueError(colour)
        except (KeyError, TypeError, ValueError) as error:
            raise SemsegError(f"class table {path}: bad entry {entry!r}") from error
        if entry.get("ignore", False):
            ignore.append(colour)
        else:
            names.append(str(entry.get("name", f"class{len(names)}")))
            colours.append(colour)
    return ClassTable(
        names=names,
        colours=np.array(colours, dtype=np.uint8).reshape(-1, 3),
        ignore_colours=np.array(ignore, dtype=np.uint8).reshape(-1, 3),
    )


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


def read_index_mask(path: Path, num_classes: int) -> np.ndarray:
    """An index PNG; values must be class indices below ``num_classes`` or the ignore index."""
    image = open_image(path)
    if image.mode not in ("L", "P", "I", "I;16"):
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
    if class_table is None:
        mask = read_index_mask(sample.target_path, num_classes)
    else:
        mask = class_table.decode(read_rgb(sample.target_path), sample.target_path)
    check_same_size(image, mask, sample.target_path)
    return image, mask

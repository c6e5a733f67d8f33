"""Image-level tags: which classes an image (or a crop of it) contains.

Tags are the labels of weak supervision from image-level labels (Pinheiro & Collobert, CVPR
2015; Zhou et al., CVPR 2016). They come from a user's file or are derived from full masks: a
class is present when it covers at least ``min_frac`` of the valid (not ignored) pixels, by
default 1%. Whole road-scene frames contain nearly every large class, so tags can also be derived
per fixed crop (``HxW``): the image is tiled by crops of that size (the last row and column are
moved back to end at the border, so they may overlap the previous ones) and each crop gets its
own tags and its offset.

File formats (class names are those of the dataset's class table):

* CSV, one image or crop a row: ``image,class1;class2`` or, for a crop,
  ``image,class1;class2,top,left,height,width``. An optional header row starts with ``image``;
  blank rows and rows starting with ``#`` are skipped. An empty class list means "none of the
  classes".
* JSON: either a mapping ``{"image": ["class1", "class2"], ...}`` or
  ``{"classes": [...], "tags": [{"image": ..., "classes": [...], "crop": [top, left, height,
  width]}, ...]}`` (what :func:`write_tags` writes; ``crop`` is optional).

``image`` is the image's name (file stem, e.g. ``0001TP_006690``) or its file name.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from semseg.config import IGNORE_INDEX
from semseg.data.sample import Sample
from semseg.errors import SemsegError
from semseg.io import IMAGE_SUFFIXES, write_json_atomic, write_text_atomic

DEFAULT_MIN_FRAC = 0.01
TAG_SUFFIXES = (".csv", ".json")
HEADER = ("image", "classes", "top", "left", "height", "width")


@dataclass(frozen=True)
class Crop:
    """A crop of an image: its top-left offset and its size, in pixels."""

    top: int
    left: int
    height: int
    width: int

    def as_list(self) -> list[int]:
        return [self.top, self.left, self.height, self.width]

    def slices(self) -> tuple[slice, slice]:
        return slice(self.top, self.top + self.height), slice(self.left, self.left + self.width)


@dataclass(frozen=True)
class TagRecord:
    """The tags of one image or of one crop of it (``crop`` None: the whole image)."""

    image: str
    classes: tuple[str, ...]
    crop: Crop | None = None

    @property
    def name(self) -> str:
        """The image's name (file stem) whether ``image`` is a stem or a file name."""
        return image_key(self.image)


def image_key(image: str) -> str:
    """The name an image is matched by: its stem when given as a file name."""
    path = Path(image)
    return path.stem if path.suffix.lower() in IMAGE_SUFFIXES else path.name


# --- deriving tags from masks ------------------------------------------------------------------


def check_min_frac(min_frac: float) -> float:
    if not 0.0 <= min_frac <= 1.0:
        raise SemsegError(f"--min-frac must be between 0 and 1, got {min_frac}")
    return float(min_frac)


def present_classes(
    mask: np.ndarray, num_classes: int, min_frac: float = DEFAULT_MIN_FRAC
) -> list[int]:
    """The training ids covering at least ``min_frac`` of the valid pixels of ``mask``.

    ``mask`` holds training ids ``0..num_classes-1`` and ``255`` (ignored, not counted). A class
    needs at least one pixel whatever ``min_frac``; a mask without valid pixels has no tags.
    """
    check_min_frac(min_frac)
    values = np.asarray(mask).reshape(-1)
    valid = values[values != IGNORE_INDEX].astype(np.int64)
    if valid.size and valid.max() >= num_classes:
        raise SemsegError(f"mask value {int(valid.max())} is not a class (0-{num_classes - 1})")
    counts = np.bincount(valid, minlength=num_classes)
    present = (counts > 0) & (counts >= min_frac * valid.size)
    return [int(k) for k in np.flatnonzero(present)]


def parse_crop(text: str) -> tuple[int, int]:
    """``"HxW"`` (``--crop``) as ``(height, width)``."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", str(text))
    if not match or int(match.group(1)) < 1 or int(match.group(2)) < 1:
        raise SemsegError(f"--crop must be HxW with positive integers, e.g. 240x320, got {text!r}")
    return int(match.group(1)), int(match.group(2))


def _starts(length: int, size: int) -> list[int]:
    starts = list(range(0, length - size + 1, size))
    if starts[-1] + size < length:
        starts.append(length - size)
    return starts


def crop_grid(height: int, width: int, crop_height: int, crop_width: int) -> list[Crop]:
    """Crops of ``crop_height x crop_width`` tiling a ``height x width`` image, row by row.

    The crops are placed every ``crop`` pixels; when the size is not a multiple, one more row
    (column) ends at the border, overlapping the one before.
    """
    if crop_height > height or crop_width > width:
        raise SemsegError(
            f"--crop {crop_height}x{crop_width} is larger than the image ({height}x{width})"
        )
    return [
        Crop(top, left, crop_height, crop_width)
        for top in _starts(height, crop_height)
        for left in _starts(width, crop_width)
    ]


def tags_of_mask(
    name: str,
    mask: np.ndarray,
    class_names: Sequence[str],
    min_frac: float = DEFAULT_MIN_FRAC,
    crop: tuple[int, int] | None = None,
) -> list[TagRecord]:
    """The tag records of one mask: one for the whole image, or one per crop of the grid."""
    num_classes = len(class_names)
    if crop is None:
        present = present_classes(mask, num_classes, min_frac)
        return [TagRecord(name, tuple(class_names[k] for k in present))]
    records = []
    for box in crop_grid(mask.shape[0], mask.shape[1], *crop):
        present = present_classes(mask[box.slices()], num_classes, min_frac)
        records.append(TagRecord(name, tuple(class_names[k] for k in present), box))
    return records


def derive_tags(
    samples: Iterable[Sample],
    read_mask: Callable[[Sample], np.ndarray],
    class_names: Sequence[str],
    min_frac: float = DEFAULT_MIN_FRAC,
    crop: tuple[int, int] | None = None,
) -> list[TagRecord]:
    """Tags of every sample from its full mask (``read_mask`` returns its training ids)."""
    check_min_frac(min_frac)
    records: list[TagRecord] = []
    for sample in samples:
        records.extend(tags_of_mask(sample.name, read_mask(sample), class_names, min_frac, crop))
    return records


# --- reading a user's tags ---------------------------------------------------------------------


def read_tags(path: str | Path, class_names: Sequence[str]) -> list[TagRecord]:
    """The tag records of a CSV or JSON file (see module docstring), checked against
    ``class_names``: unknown classes, bad rows and repeated images are one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise SemsegError(f"tags file not found: {path}")
    if path.suffix.lower() not in TAG_SUFFIXES:
        raise SemsegError(f"{path}: tags must be a .csv or .json file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise SemsegError(f"{path}: tags file is not UTF-8 text") from error
    if path.suffix.lower() == ".csv":
        records = _parse_csv(text, path, class_names)
    else:
        records = _parse_json(text, path, class_names)
    if not records:
        raise SemsegError(f"{path}: no tags in the file")
    _check_unique(records, path)
    return records


def _check_classes(names: Iterable[str], class_names: Sequence[str], where: str) -> tuple[str, ...]:
    """The given class names in class-table order; an unknown one is an error."""
    wanted = {str(name).strip() for name in names if str(name).strip()}
    unknown = sorted(wanted - set(class_names))
    if unknown:
        raise SemsegError(
            f"{where}: unknown class {unknown[0]!r} (classes: {', '.join(class_names)})"
        )
    return tuple(name for name in class_names if name in wanted)


def _parse_crop_fields(fields: Sequence[Any], where: str) -> Crop:
    try:
        top, left, height, width = (int(str(v).strip()) for v in fields)
    except (TypeError, ValueError) as error:
        raise SemsegError(f"{where}: crop must be four integers top,left,height,width") from error
    if top < 0 or left < 0 or height < 1 or width < 1:
        raise SemsegError(f"{where}: bad crop {top},{left},{height},{width}")
    return Crop(top, left, height, width)


def _parse_csv(text: str, path: Path, class_names: Sequence[str]) -> list[TagRecord]:
    records = []
    for number, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        if not records and [cell.strip().lower() for cell in row[:2]] == list(HEADER[:2]):
            continue  # header
        where = f"{path}:{number}"
        if len(row) not in (2, 6) or not row[0].strip():
            raise SemsegError(
                f"{where}: expected 'image,class1;class2' or "
                f"'image,class1;class2,top,left,height,width', got {','.join(row)!r}"
            )
        classes = _check_classes(row[1].split(";"), class_names, where)
        crop = _parse_crop_fields(row[2:], where) if len(row) == 6 else None
        records.append(TagRecord(row[0].strip(), classes, crop))
    return records


def _parse_json(text: str, path: Path, class_names: Sequence[str]) -> list[TagRecord]:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as error:
        raise SemsegError(f"{path}: not valid JSON ({error.msg}, line {error.lineno})") from error
    if isinstance(raw, dict) and "tags" in raw:
        entries = raw["tags"]
        if not isinstance(entries, list):
            raise SemsegError(f"{path}: 'tags' must be a list of records")
    elif isinstance(raw, dict):
        entries = [{"image": image, "classes": classes} for image, classes in raw.items()]
    elif isinstance(raw, list):
        entries = raw
    else:
        raise SemsegError(f"{path}: expected a JSON object or list of tag records")
    return [
        _json_record(entry, f"{path}: entry {i + 1}", class_names)
        for i, entry in enumerate(entries)
    ]


def _json_record(entry: Any, where: str, class_names: Sequence[str]) -> TagRecord:
    if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
        raise SemsegError(f"{where}: a record needs an 'image' name, got {entry!r}")
    classes = entry.get("classes", [])
    if isinstance(classes, str):
        classes = classes.split(";")
    if not isinstance(classes, list):
        raise SemsegError(f"{where}: 'classes' must be a list of class names")
    crop = entry.get("crop")
    if crop is not None and (not isinstance(crop, list) or len(crop) != 4):
        raise SemsegError(f"{where}: 'crop' must be [top, left, height, width]")
    return TagRecord(
        entry["image"].strip(),
        _check_classes(classes, class_names, f"{where} ({entry['image']})"),
        _parse_crop_fields(crop, where) if crop is not None else None,
    )


def _check_unique(records: Sequence[TagRecord], path: Path) -> None:
    seen: set[tuple[str, Crop | None]] = set()
    for record in records:
        key = (record.name, record.crop)
        if key in seen:
            what = f"crop {record.crop.as_list()} of " if record.crop else ""
            raise SemsegError(f"{path}: {what}image {record.image!r} is tagged twice")
        seen.add(key)


def match_samples(
    records: Sequence[TagRecord], samples: Sequence[Sample], source: str | Path = "tags"
) -> list[tuple[TagRecord, Sample]]:
    """Each record with the sample of its image; a record naming no sample is an error.

    Samples without tags are left out (a tags file may cover part of a dataset).
    """
    by_name = {sample.name: sample for sample in samples}
    pairs = []
    for record in records:
        sample = by_name.get(record.name)
        if sample is None:
            raise SemsegError(
                f"{source}: image {record.image!r} is not among the {len(by_name)} images of "
                "the data"
            )
        pairs.append((record, sample))
    return pairs


def tag_matrix(records: Sequence[TagRecord], class_names: Sequence[str]) -> np.ndarray:
    """``(N, K)`` float32 multi-hot targets, one row per record, columns in class order."""
    index = {name: k for k, name in enumerate(class_names)}
    targets = np.zeros((len(records), len(class_names)), dtype=np.float32)
    for row, record in enumerate(records):
        for name in record.classes:
            if name not in index:
                raise SemsegError(f"tags of {record.image!r}: unknown class {name!r}")
            targets[row, index[name]] = 1.0
    return targets


# --- writing -------------------------------------------------------------------------------------


def write_tags(
    path: str | Path,
    records: Sequence[TagRecord],
    class_names: Sequence[str],
    meta: dict[str, Any] | None = None,
) -> None:
    """Write tags atomically as CSV or JSON (by the file's suffix); ``meta`` (e.g. how they
    were derived) goes into the JSON only."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        write_text_atomic(path, tags_csv(records))
    elif suffix == ".json":
        payload: dict[str, Any] = {"classes": list(class_names), **(meta or {})}
        payload["tags"] = [
            {"image": r.image, "classes": list(r.classes)}
            | ({"crop": r.crop.as_list()} if r.crop else {})
            for r in records
        ]
        write_json_atomic(path, payload)
    else:
        raise SemsegError(f"--out {path}: tags are written as .csv or .json")


def tags_csv(records: Sequence[TagRecord]) -> str:
    """The CSV text of ``records`` (with a header; crop columns when any record has a crop)."""
    with_crops = any(record.crop for record in records)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(HEADER if with_crops else HEADER[:2])
    for record in records:
        row: list[Any] = [record.image, ";".join(record.classes)]
        if with_crops:
            if record.crop is None:
                raise SemsegError(f"image {record.image!r} has no crop while others have")
            row.extend(record.crop.as_list())
        writer.writerow(row)
    return buffer.getvalue()


def image_tags(records: Sequence[TagRecord], class_names: Sequence[str]) -> dict[str, np.ndarray]:
    """``{image name: (K,) multi-hot}``: the tags of each image, the union over its crops."""
    targets = tag_matrix(records, class_names)
    union: dict[str, np.ndarray] = {}
    for record, row in zip(records, targets, strict=True):
        union[record.name] = np.maximum(union.get(record.name, row), row)
    return union


def tag_counts(records: Sequence[TagRecord], class_names: Sequence[str]) -> dict[str, int]:
    """How many records carry each class (a summary for ``semseg derive --to tags``)."""
    totals = tag_matrix(records, class_names).sum(axis=0)
    return {name: int(total) for name, total in zip(class_names, totals, strict=True)}


__all__ = [
    "DEFAULT_MIN_FRAC",
    "Crop",
    "TagRecord",
    "crop_grid",
    "derive_tags",
    "image_key",
    "image_tags",
    "match_samples",
    "parse_crop",
    "present_classes",
    "read_tags",
    "tag_counts",
    "tag_matrix",
    "tags_csv",
    "tags_of_mask",
    "write_tags",
]

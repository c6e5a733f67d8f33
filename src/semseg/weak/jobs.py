"""The box-supervision jobs end to end, for the command line to call.

* :func:`derive_boxes` (``semseg derive --to boxes``): boxes from a dataset's full masks, as COCO
  JSON;
* :func:`write_pseudo_labels` (``semseg pseudo-labels``): one label PNG per annotated image
  (255 = ignore) and the pseudo-labels' quality against ground truth where masks exist.

Datasets: KITTI Road (``data_road``; classes "not road" = background and "road"), a folder
dataset with a class table (flat or ``train/``/``val/``/``test/``, e.g. CamVid; all splits are
used), Pascal VOC 2012 (``trainval``; class 0 "background" is the background class) and
Cityscapes (``train`` and ``val``; no background class). Images are named by their file stem,
which must be unique across the splits.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from semseg.data.classes import ClassTable, class_table_from_entries
from semseg.data.folder import index_folder, is_split_layout, read_mask
from semseg.data.kitti import find_training_root, index_split, read_gt_mask
from semseg.data.labels import read_label_png
from semseg.data.multiclass import class_table_for, detect_kind, sample_reader, split_samples
from semseg.data.sample import Sample
from semseg.errors import SemsegError
from semseg.inference.crf import CRFParams, require_backend
from semseg.io import read_rgb, write_json_atomic, write_png_atomic
from semseg.weak.boxes import ImageBoxes, read_boxes, write_coco
from semseg.weak.derive import DEFAULT_MIN_AREA, boxes_from_mask
from semseg.weak.pseudolabels import PseudoLabelParams, check_method, pseudo_label, refine_labels
from semseg.weak.quality import QualityMeter

KITTI_TABLE = [
    {"name": "not road", "color": [255, 0, 0], "background": True},
    {"name": "road", "color": [255, 0, 255]},
]
QUALITY_FILE = "quality.json"
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class BoxData:
    """A dataset as the box jobs see it: every image, its class table and how to read it."""

    root: Path
    kind: str  # "kitti", "folder", "voc" or "cityscapes"
    table: ClassTable
    samples: list[Sample]
    road_class: int | None = None  # KITTI: the road class (scored with MaxF too)

    @property
    def names(self) -> list[str]:
        return self.table.names

    @property
    def background(self) -> int | None:
        return self.table.background

    def image(self, sample: Sample) -> np.ndarray:
        return read_rgb(sample.image_path)

    def truth(self, sample: Sample) -> np.ndarray | None:
        """Ground-truth training ids of ``sample``, or None for an image without a mask."""
        if sample.target_path is None:
            return None
        if self.kind == "kitti":
            return read_gt_mask(sample.target_path)
        if self.kind == "folder":
            return read_mask(sample.target_path, self.table.num_classes, self.table)
        return sample_reader(self.kind, self.table.num_classes, self.table)(sample)[1]


def open_box_data(root: str | Path, class_table: str | Path | None = None) -> BoxData:
    """The :class:`BoxData` of a dataset folder (see module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise SemsegError(f"data folder not found: {root}")
    kind = detect_kind(root)
    if kind is None:
        find_training_root(root)  # a clear error when this is not KITTI either
        table = class_table_from_entries(KITTI_TABLE, source="KITTI Road")
        samples = index_split(root, "training", require_gt=False)
        return BoxData(root, "kitti", table, samples, road_class=1)
    table = class_table_for(kind, root, class_table)
    if table is None:
        raise SemsegError(
            f"{root} has no class table ({root / 'classes.yaml'}); box classes are named by it"
        )
    if kind == "voc" and table.background is None:
        table = dataclasses.replace(table, background=0)
    if kind == "voc":
        samples = split_samples(kind, root, "trainval")
    elif kind == "cityscapes":
        samples = split_samples(kind, root, "train") + split_samples(kind, root, "val")
    elif is_split_layout(root):
        samples = [
            sample
            for split in ("train", "val", "test")
            if (root / split / "images").is_dir()
            for sample in index_folder(root / split, require_masks=False)
        ]
    else:
        samples = index_folder(root, require_masks=False)
    _check_unique(samples, root)
    return BoxData(root, kind, table, samples)


def _check_unique(samples: list[Sample], root: Path) -> None:
    seen: set[str] = set()
    for sample in samples:
        if sample.name in seen:
            raise SemsegError(f"{root}: image name {sample.name!r} occurs twice (in two splits)")
        seen.add(sample.name)


def derive_boxes(
    data_root: str | Path,
    out_json: str | Path,
    min_area: int = DEFAULT_MIN_AREA,
    class_table: str | Path | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Boxes of every labelled image's mask components, written as COCO JSON.

    Returns ``{"images", "unlabelled", "boxes", "per_class": {name: count}, "out"}``.
    """
    data = open_box_data(data_root, class_table)
    labelled = [s for s in data.samples if s.target_path is not None]
    if not labelled:
        raise SemsegError(f"{data_root}: no image has a mask to derive boxes from")
    images = []
    for index, sample in enumerate(labelled):
        truth = data.truth(sample)
        assert truth is not None
        boxes = boxes_from_mask(truth, data.table.num_classes, data.background, min_area)
        file_name = sample.image_path.relative_to(data.root).as_posix()
        images.append(
            ImageBoxes(sample.name, truth.shape[1], truth.shape[0], tuple(boxes), file_name)
        )
        if progress:
            progress(index + 1, len(labelled))
    write_coco(out_json, images, data.names, data.background)
    per_class = {name: 0 for i, name in enumerate(data.names) if i != data.background}
    for image in images:
        for box in image.boxes:
            per_class[data.names[box.label]] += 1
    return {
        "images": len(images),
        "unlabelled": len(data.samples) - len(labelled),
        "boxes": sum(per_class.values()),
        "per_class": per_class,
        "out": str(out_json),
    }


def write_pseudo_labels(
    boxes_file: str | Path,
    data_root: str | Path,
    method: str,
    out_dir: str | Path,
    crf: bool = False,
    *,
    class_table: str | Path | None = None,
    skip_bad: bool = False,
    params: PseudoLabelParams | None = None,
    crf_params: CRFParams | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Write ``OUT/NAME.png`` (training ids, 255 = ignore) for every annotated image.

    Returns (and writes to ``OUT/quality.json``) ``{"method", "crf", "images", "skipped",
    "skipped_reasons", "quality"}``; ``quality`` is :meth:`QualityMeter.result` over the images
    that have ground truth (None when none has).
    """
    check_method(method)
    if crf:
        require_backend()
    params = params or PseudoLabelParams()
    data = open_box_data(data_root, class_table)
    by_name = {s.name: s for s in data.samples}
    box_set = read_boxes(boxes_file, data.names, data.background, list(by_name), skip_bad)
    if not box_set.images:
        raise SemsegError(f"{boxes_file}: no image to write pseudo-labels for")
    out_dir = Path(out_dir)
    meter = QualityMeter(data.names, data.road_class)
    names = sorted(box_set.images)
    for index, name in enumerate(names):
        sample, annotation = by_name[name], box_set.images[name]
        image = data.image(sample)
        _check_size(image, annotation, sample)
        image_params = dataclasses.replace(params, seed=params.seed + index)
        labels = pseudo_label(image, annotation.boxes, method, data.background, image_params)
        if crf:
            labels = refine_labels(
                image,
                labels,
                annotation.boxes,
                data.table.num_classes,
                data.background,
                crf_params,
                params.crf_confidence,
            )
        write_png_atomic(out_dir / f"{name}.png", labels)
        truth = data.truth(sample)
        if truth is not None:
            meter.update(labels, truth)
        if progress:
            progress(index + 1, len(names))
    result = {
        "method": method,
        "crf": crf,
        "images": len(names),
        "skipped": len(box_set.skipped),
        "skipped_reasons": dict(sorted(box_set.skipped.items())[:20]),
        "quality": meter.result() if meter.images else None,
    }
    write_json_atomic(out_dir / QUALITY_FILE, result)
    return result


def _check_size(image: np.ndarray, annotation: ImageBoxes, sample: Sample) -> None:
    height, width = image.shape[:2]
    if (annotation.width, annotation.height) != (width, height):
        raise SemsegError(
            f"{sample.image_path}: the boxes are for a {annotation.width}x{annotation.height} "
            f"image but it is {width}x{height}"
        )


__all__ = [
    "BoxData",
    "derive_boxes",
    "open_box_data",
    "read_label_png",
    "write_pseudo_labels",
]

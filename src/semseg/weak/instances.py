"""Instances derived from full masks (``semseg derive --to instances``), as COCO JSON.

Every 8-connected component of a countable class (:data:`semseg.weak.derive.COUNTABLE_CLASSES`:
CamVid's car, pedestrian, bicyclist, sign_symbol and pole) with at least ``min_area`` pixels is
one instance (:func:`semseg.weak.derive.instances_from_mask`, the same rule Mask R-CNN's
training targets follow). Each becomes a COCO annotation with its tight ``bbox``, its ``area``
(pixels) and its mask as uncompressed RLE (``{"counts": [...], "size": [h, w]}``, runs of 0s and
1s in column-major order, starting with 0s), which pycocotools reads without any conversion; the
file needs no extra to be written. Category ids are training ids + 1, as ``derive --to boxes``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from semseg.errors import SemsegError
from semseg.io import write_json_atomic
from semseg.weak.boxes import coco_image_entry
from semseg.weak.derive import Instance, instances_from_mask, thing_ids

INSTANCES_FILE = "instances.json"


@dataclass(frozen=True)
class ImageInstances:
    """The instances of one image, with its size and its path relative to the data root."""

    name: str
    width: int
    height: int
    instances: tuple[Instance, ...]
    file_name: str = ""


def rle_encode(mask: np.ndarray) -> dict[str, Any]:
    """COCO's uncompressed RLE of a boolean ``(H, W)`` mask (column-major runs, 0s first)."""
    flat = np.asarray(mask, dtype=bool).reshape(-1, order="F")
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], changes, [flat.size]))
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    return {"counts": [int(c) for c in counts], "size": [int(mask.shape[0]), int(mask.shape[1])]}


def rle_decode(rle: dict[str, Any]) -> np.ndarray:
    """The boolean ``(H, W)`` mask of an uncompressed RLE (:func:`rle_encode`'s inverse)."""
    height, width = (int(v) for v in rle["size"])
    counts = np.asarray(rle["counts"], dtype=np.int64)
    if counts.sum() != height * width:
        raise SemsegError(f"RLE counts sum to {counts.sum()}, not {height}x{width}")
    values = np.arange(len(counts)) % 2 == 1
    flat = np.repeat(values, counts)
    return flat.reshape((height, width), order="F")


def coco_instances(
    images: Sequence[ImageInstances], names: Sequence[str], things: Sequence[int]
) -> dict[str, Any]:
    """The COCO instance-segmentation payload of ``images`` (categories: the ``things``)."""
    categories = [{"id": t + 1, "name": names[t]} for t in things]
    image_entries, annotations = [], []
    for image_id, image in enumerate(images, start=1):
        image_entries.append(coco_image_entry(image_id, image))
        for instance in image.instances:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": instance.label + 1,
                    "bbox": instance.box.coco_bbox(),
                    "area": instance.area,
                    "segmentation": rle_encode(instance.mask),
                    "iscrowd": 0,
                }
            )
    return {"images": image_entries, "annotations": annotations, "categories": categories}


def derive_instances(
    data_root: str | Path,
    out_json: str | Path,
    min_area: int,
    class_table: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Instances of every labelled image's countable classes, written as COCO JSON.

    Returns ``{"images", "unlabelled", "instances", "per_class": {name: count}, "out"}``.
    """
    from semseg.weak.jobs import open_box_data

    data = open_box_data(data_root, class_table)
    things = thing_ids(data.names)
    if not things:
        raise SemsegError(
            f"{data_root}: no countable class (car, pedestrian, bicyclist, sign_symbol, pole, "
            f"person, ...) among its classes {', '.join(data.names)}"
        )
    labelled = [s for s in data.samples if s.target_path is not None]
    if not labelled:
        raise SemsegError(f"{data_root}: no image has a mask to derive instances from")
    images = []
    for index, sample in enumerate(labelled):
        truth = data.truth(sample)
        assert truth is not None
        found = instances_from_mask(truth, things, min_area)
        file_name = sample.image_path.relative_to(data.root).as_posix()
        images.append(
            ImageInstances(sample.name, truth.shape[1], truth.shape[0], tuple(found), file_name)
        )
        if progress:
            progress(index + 1, len(labelled))
    write_json_atomic(out_json, coco_instances(images, data.names, things))
    per_class = {data.names[t]: 0 for t in things}
    for image in images:
        for instance in image.instances:
            per_class[data.names[instance.label]] += 1
    return {
        "images": len(images),
        "unlabelled": len(data.samples) - len(labelled),
        "instances": sum(per_class.values()),
        "per_class": per_class,
        "out": str(out_json),
    }


__all__ = [
    "INSTANCES_FILE",
    "ImageInstances",
    "coco_instances",
    "derive_instances",
    "rle_decode",
    "rle_encode",
]

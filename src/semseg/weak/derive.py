"""Boxes derived from full masks: one box per connected component of each class.

So that box supervision can be measured against full supervision on the same images, every
8-connected component of a class with at least ``min_area`` pixels becomes the tight box around
it. The background class (a class table's ``background: true``, KITTI's "not road") gets no boxes;
ignored pixels (255) belong to no component.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from semseg.config import IGNORE_INDEX
from semseg.errors import SemsegError
from semseg.weak.boxes import Box
from semseg.weak.extras import load_cv2

DEFAULT_MIN_AREA = 100  # pixels of a component; smaller specks get no box


def boxes_from_mask(
    mask: np.ndarray, num_classes: int, background: int | None = None, min_area: int = 1
) -> list[Box]:
    """The box of every 8-connected component of each non-background class in ``mask``.

    Args:
        mask: ``(H, W)`` training ids, 255 for ignored pixels.
        num_classes: classes ``0 .. num_classes - 1`` are looked for.
        background: the background class's id (gets no boxes), or None.
        min_area: the fewest pixels a component needs to get a box.

    Returns:
        Boxes ordered by class, then by component (OpenCV's raster order of first pixels).
    """
    if mask.ndim != 2:
        raise SemsegError(f"derive boxes: expected an (H, W) mask, got shape {mask.shape}")
    if min_area < 1:
        raise SemsegError(f"--min-area must be at least 1, got {min_area}")
    cv2 = load_cv2()
    boxes = []
    for label in np.unique(mask):
        label = int(label)
        if label in (IGNORE_INDEX, background) or label >= num_classes:
            continue
        binary = (mask == label).astype(np.uint8)
        count, _, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
        for component in range(1, count):  # 0 is everything else
            x, y, w, h, area = (int(v) for v in stats[component])
            if area >= min_area:
                boxes.append(Box(x, y, x + w, y + h, label))
    return boxes


# --- instances (Mask R-CNN's targets and the ground truth of its mask AP) --------------------

COUNTABLE_CLASSES = frozenset(
    {
        # CamVid's countable ("thing") classes
        "car",
        "pedestrian",
        "bicyclist",
        "sign_symbol",
        "pole",
        # Cityscapes' and VOC's
        "person",
        "rider",
        "truck",
        "bus",
        "train",
        "motorcycle",
        "motorbike",
        "bicycle",
    }
)
"""Class names (lower case) whose connected components are instances."""
DEFAULT_INSTANCE_MIN_AREA = 20  # pixels of a component at the training resolution


@dataclass(frozen=True)
class Instance:
    """One instance: its training id, its ``(H, W)`` boolean mask and its tight box."""

    label: int
    mask: np.ndarray
    box: Box

    @property
    def area(self) -> int:
        return int(self.mask.sum())


def thing_ids(names: Sequence[str]) -> list[int]:
    """Training ids of the countable classes among ``names`` (:data:`COUNTABLE_CLASSES`)."""
    return [index for index, name in enumerate(names) if name.lower() in COUNTABLE_CLASSES]


def instances_from_mask(
    mask: np.ndarray, things: Sequence[int], min_area: int = 1
) -> list[Instance]:
    """Every 8-connected component of each class in ``things`` with at least ``min_area``
    pixels, as an instance (classes in the order of ``things``, components in OpenCV's raster
    order of their first pixels). Ignored pixels (255) belong to no component; touching
    instances of one class (a group of pedestrians) become one."""
    if mask.ndim != 2:
        raise SemsegError(f"derive instances: expected an (H, W) mask, got shape {mask.shape}")
    if min_area < 1:
        raise SemsegError(f"--min-area must be at least 1, got {min_area}")
    cv2 = load_cv2()
    instances = []
    for label in things:
        binary = (mask == label).astype(np.uint8)
        if not binary.any():
            continue
        count, components, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
        for component in range(1, count):
            x, y, w, h, area = (int(v) for v in stats[component])
            if area >= min_area:
                box = Box(x, y, x + w, y + h, int(label))
                instances.append(Instance(int(label), components == component, box))
    return instances


__all__ = [
    "COUNTABLE_CLASSES",
    "DEFAULT_MIN_AREA",
    "Instance",
    "boxes_from_mask",
    "instances_from_mask",
    "thing_ids",
]

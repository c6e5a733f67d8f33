"""Label resets between recursive training rounds (Simple Does It, Khoreva et al., CVPR 2017).

After a round the network's predictions on the training images become the next round's labels,
corrected with the boxes (Sec. 3.1 of the paper):

1. box enforcing: a pixel outside every box is background (ignored where the class table has no
   background class); likewise a pixel predicted as a class none of whose boxes contains it;
2. outlier reset: when the segment a box gets (its pixels predicted as its class) has an IoU
   with the box below 50%, i.e. covers less than half of it, the box is reset to its initial
   labels (the round-0 pseudo-labels: the filled box for ``box``, the inner box for ``box-i``).

Boxes are handled largest first, so a smaller box's reset lies on top. The dense CRF step of the
paper is :func:`semseg.weak.pseudolabels.refine_labels`, applied by the caller when asked.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from semseg.config import IGNORE_INDEX
from semseg.weak.boxes import Box

MIN_IOU = 0.5


def enforce_boxes(
    prediction: np.ndarray, boxes: Sequence[Box], background: int | None
) -> np.ndarray:
    """Rule 1: a class only stands inside one of its boxes; elsewhere background (or 255)."""
    fill = IGNORE_INDEX if background is None else background
    allowed = np.zeros(prediction.shape, dtype=bool)
    for box in boxes:
        region = allowed[box.slices]
        region |= prediction[box.slices] == box.label
    if background is not None:
        allowed |= prediction == background
    labels = np.where(allowed, prediction, fill)
    return labels.astype(np.uint8)


def segment_iou(labels: np.ndarray, box: Box) -> float:
    """IoU of ``box`` and its segment (its class's pixels inside it): their share of the box."""
    return float((labels[box.slices] == box.label).sum()) / box.area


def reset_outliers(
    labels: np.ndarray,
    boxes: Sequence[Box],
    initial: np.ndarray,
    min_iou: float = MIN_IOU,
) -> np.ndarray:
    """Rule 2: each box whose segment has IoU < ``min_iou`` gets its initial labels back.

    Largest box first, each box's outcome drawn over its rectangle: a kept smaller box inside a
    reset larger one keeps its predicted labels.
    """
    result = labels.copy()
    for box in sorted(boxes, key=lambda b: -b.area):
        source = initial if segment_iou(labels, box) < min_iou else labels
        result[box.slices] = source[box.slices]
    return result


def reset_round_labels(
    prediction: np.ndarray,
    boxes: Sequence[Box],
    initial: np.ndarray,
    background: int | None,
    min_iou: float = MIN_IOU,
) -> np.ndarray:
    """The next round's labels from a round's ``prediction`` (rules 1 and 2 in order)."""
    if prediction.shape != initial.shape:
        raise ValueError(f"prediction {prediction.shape} and labels {initial.shape} differ")
    return reset_outliers(enforce_boxes(prediction, boxes, background), boxes, initial, min_iou)


__all__ = ["MIN_IOU", "enforce_boxes", "reset_outliers", "reset_round_labels", "segment_iou"]

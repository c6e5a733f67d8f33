"""Pseudo-label quality against ground truth, the table Simple Does It explains its results by.

Pseudo-labels are scored like predictions on the pixels both they and the ground truth label
(ignored pseudo-label pixels are left out, as training leaves them out); ``coverage`` is the share
of the ground truth's labelled pixels that carry a pseudo-label, so methods that ignore much are
seen to. Multi-class: mIoU and the other scores of :mod:`semseg.metrics.multiclass`. Binary road
(KITTI): also the KITTI benchmark's MaxF and IoU of the road class (:mod:`semseg.metrics.kitti`;
a pseudo-label is a hard 0/1 confidence, so MaxF is its F-measure).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from semseg.config import IGNORE_INDEX
from semseg.errors import SemsegError
from semseg.metrics.kitti import RoadCounts, image_counts, road_scores
from semseg.metrics.multiclass import ConfusionMatrix


class QualityMeter:
    """Accumulates pseudo-labels against ground truth over images."""

    def __init__(self, names: Sequence[str], road_class: int | None = None) -> None:
        self.names = list(names)
        self.road_class = road_class
        self.confusion = ConfusionMatrix(len(self.names))
        self.road = RoadCounts.zeros()
        self.labelled = 0
        self.covered = 0
        self.images = 0

    def update(self, pseudo: np.ndarray, truth: np.ndarray) -> None:
        """One image: pseudo-labels and ground truth, ``(H, W)`` training ids, 255 ignored."""
        if pseudo.shape != truth.shape:
            raise SemsegError(
                f"pseudo-label {pseudo.shape} and ground truth {truth.shape} differ in size"
            )
        known = truth != IGNORE_INDEX
        both = known & (pseudo != IGNORE_INDEX)
        self.labelled += int(known.sum())
        self.covered += int(both.sum())
        self.images += 1
        self.confusion.update_arrays(np.where(both, pseudo, 0), np.where(both, truth, IGNORE_INDEX))
        if self.road_class is not None:
            confidence = (pseudo == self.road_class).astype(np.float64)
            self.road = self.road + image_counts(confidence, truth == self.road_class, both)

    def result(self) -> dict[str, Any]:
        """``{"images", "coverage", "miou", ..., "per_class"}`` in percent; road: ``max_f``,
        ``road_iou`` too (None when the ground truth has no road pixel)."""
        scores = self.confusion.scores().as_dict(self.names)
        coverage = 100.0 * self.covered / self.labelled if self.labelled else float("nan")
        result: dict[str, Any] = {"images": self.images, "coverage": round(coverage, 4)}
        result.update(scores)
        if self.road_class is not None:
            if self.road.num_pos:
                road = road_scores(self.road)
                result["max_f"], result["road_iou"] = round(road.max_f, 4), round(road.iou, 4)
            else:
                result["max_f"] = result["road_iou"] = None
        return result


def pseudo_label_quality(
    pairs: Sequence[tuple[np.ndarray, np.ndarray]],
    names: Sequence[str],
    road_class: int | None = None,
) -> dict[str, Any]:
    """:meth:`QualityMeter.result` of ``(pseudo, truth)`` pairs."""
    meter = QualityMeter(names, road_class)
    for pseudo, truth in pairs:
        meter.update(pseudo, truth)
    return meter.result()


__all__ = ["QualityMeter", "pseudo_label_quality"]

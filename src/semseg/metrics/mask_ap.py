"""Mask AP of an instance model (``maskrcnn-semantic``) with pycocotools, as COCO scores it.

The ground truth and the detections are given image by image as boolean masks at the ground
truth's resolution (:func:`semseg.evaluation.instance_scores` derives the ground truth from the
semantic masks as ``semseg derive --to instances`` does and resizes the detections). Scores:
COCOeval's ``segm`` AP (IoU 0.50:0.95), AP50, AP75, and AP per class. pycocotools is the
optional ``coco`` extra; without it the scores are None and the reason says so.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any

import numpy as np

INSTALL_HINT = 'pip install -e ".[coco]"'


def has_pycocotools() -> bool:
    try:
        import pycocotools.cocoeval  # noqa: F401
    except ImportError:
        return False
    return True


class MaskAP:
    """Accumulates ground-truth instances and detections image by image; :meth:`compute` runs
    COCOeval (``iouType="segm"``)."""

    def __init__(self, names: Sequence[str], things: Sequence[int]) -> None:
        self.names = list(names)
        self.things = list(things)
        self.images: list[dict[str, Any]] = []
        self.truth: list[dict[str, Any]] = []
        self.detections: list[dict[str, Any]] = []

    def update(
        self,
        size: tuple[int, int],
        truth: Sequence[tuple[int, np.ndarray]],
        masks: np.ndarray,
        scores: np.ndarray,
        labels: np.ndarray,
    ) -> None:
        """One image of ``size`` ``(H, W)``: its ground-truth instances as ``(training id,
        boolean (H, W) mask)`` pairs and the detections' boolean ``(D, H, W)`` masks, ``(D,)``
        scores and ``(D,)`` training ids."""
        from pycocotools import mask as mask_utils

        image_id = len(self.images) + 1
        height, width = size
        self.images.append({"id": image_id, "width": width, "height": height})
        for label, mask in truth:
            rle = _rle(mask_utils, mask)
            self.truth.append(
                {
                    "id": len(self.truth) + 1,
                    "image_id": image_id,
                    "category_id": int(label) + 1,
                    "segmentation": rle,
                    "area": int(mask.sum()),
                    "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                    "iscrowd": 0,
                }
            )
        for mask, score, label in zip(masks, scores, labels, strict=True):
            rle = _rle(mask_utils, mask)
            self.detections.append(
                {
                    "image_id": image_id,
                    "category_id": int(label) + 1,
                    "segmentation": rle,
                    "score": float(score),
                    "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                }
            )

    def compute(self) -> dict[str, Any]:
        """``{"ap", "ap50", "ap75", "per_class": {name: ap}, "instances", "detections"}`` in
        percent (None where COCOeval has nothing to score)."""
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        summary: dict[str, Any] = {
            "instances": len(self.truth),
            "detections": len(self.detections),
        }
        if not self.truth:
            return {**summary, "ap": None, "ap50": None, "ap75": None, "per_class": {}}
        ground = COCO()
        ground.dataset = {
            "images": self.images,
            "annotations": self.truth,
            "categories": [{"id": t + 1, "name": self.names[t]} for t in self.things],
        }
        with contextlib.redirect_stdout(io.StringIO()):
            ground.createIndex()
            if not self.detections:
                return {**summary, "ap": 0.0, "ap50": 0.0, "ap75": 0.0, "per_class": {}}
            results = ground.loadRes(self.detections)
            evaluator = COCOeval(ground, results, iouType="segm")
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        stats = evaluator.stats
        precision = evaluator.eval["precision"]  # (T, R, K, A, M): all areas, 100 detections
        per_class = {}
        for k, thing in enumerate(self.things):
            values = precision[:, :, k, 0, -1]
            values = values[values > -1]
            per_class[self.names[thing]] = _percent(float(values.mean())) if values.size else None
        return {
            **summary,
            "ap": _percent(stats[0]),
            "ap50": _percent(stats[1]),
            "ap75": _percent(stats[2]),
            "per_class": per_class,
        }


def _rle(mask_utils: Any, mask: np.ndarray) -> dict[str, Any]:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _percent(value: float) -> float | None:
    return None if value < 0 else round(100.0 * float(value), 4)


__all__ = ["INSTALL_HINT", "MaskAP", "has_pycocotools"]

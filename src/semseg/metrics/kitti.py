"""Pixel-level metrics of the KITTI road benchmark, reimplemented from their specification.

Reference: J. Fritsch, T. Kuehnl, A. Geiger, "A New Performance Measure and Evaluation
Benchmark for Road Detection Algorithms", ITSC 2013 (devkit function ``evaluateRoad``).
This is an independent implementation of the published procedure, not a copy of the devkit.

Procedure
---------
* Ground truth per image: ``valid`` (red channel > 0) and ``road`` (blue channel > 0).
  Only pixels inside ``valid`` are counted.
* Prediction per image: road confidence as 8-bit levels ``0..255`` (the benchmark reads PNGs and
  divides by 255). Float confidences in ``[0, 1]`` are quantised with ``np.round(p * 255)``
  (numpy rounds half to even, e.g. ``0.5 -> round(127.5) = 128``).
* 256 thresholds ``t_k = k / 255``; at threshold ``k`` a pixel is road iff ``level >= k``.
* ``FN[k] = #(road & valid & level < k)``, ``FP[k] = #(~road & valid & level >= k)``, pooled
  (summed) over all images of a group; ``TP = posNum - FN``, ``TN = negNum - FP``.
* ``recall = TP / posNum``, ``precision = TP / (TP + FP + 1e-10)``,
  ``F = 2 P R / (P + R + 1e-10)``; thresholds with ``recall == precision == 0`` are dropped.
  MaxF is the maximum F (first maximum gives the best threshold), AP the Pascal-VOC 11-point
  average precision over ``np.arange(0, 1.1, 0.1)``.

Per-image work is a pair of 256-bin histograms (``np.bincount``); the counts at all thresholds
follow from cumulative sums, so evaluation is O(pixels + 256).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "NUM_LEVELS",
    "KittiRoadEvaluator",
    "RoadCounts",
    "RoadScores",
    "decode_kitti_gt",
    "image_counts",
    "quantize_confidence",
    "road_scores",
]

NUM_LEVELS = 256
"""Number of confidence levels / thresholds (8-bit PNG predictions)."""

_EPS = 1e-10
"""The regulariser of the devkit's precision and F-measure denominators."""

ALL_KEY = "all"
"""Key under which :meth:`KittiRoadEvaluator.compute` reports the score pooled over everything."""


def _to_numpy(array: Any) -> np.ndarray:
    """Return ``array`` as a numpy array; torch tensors are detached and moved to the CPU."""
    if hasattr(array, "detach") and hasattr(array, "cpu"):
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def quantize_confidence(confidence: Any) -> np.ndarray:
    """Convert a road confidence map to integer levels ``0..255`` (dtype ``int64``).

    * unsigned/signed integer arrays (typically ``uint8`` read from a KITTI result PNG) are taken
      as levels and must lie in ``0..255``;
    * floating arrays must lie in ``[0, 1]`` and are quantised with ``np.round(p * 255)``, i.e.
      exactly as if written to an 8-bit PNG with rounding (half to even: ``0.5 -> 128``).

    Boolean arrays are rejected (convert a binary mask explicitly, e.g. ``mask * 255``) because
    whether ``True`` means level 1 or level 255 is ambiguous.

    Raises:
        ValueError: for a boolean/non-numeric dtype, non-finite floats or out-of-range values.
    """
    conf = _to_numpy(confidence)
    if conf.dtype == np.bool_:
        raise ValueError(
            "confidence must be uint8 levels 0..255 or floats in [0, 1], got a boolean array; "
            "convert a binary mask explicitly (e.g. mask.astype(np.uint8) * 255)"
        )
    if np.issubdtype(conf.dtype, np.integer):
        if conf.dtype != np.uint8 and conf.size and (conf.min() < 0 or conf.max() > 255):
            raise ValueError(
                f"integer confidence levels must lie in 0..255, got range "
                f"[{conf.min()}, {conf.max()}]"
            )
        return conf.astype(np.int64)
    if np.issubdtype(conf.dtype, np.floating):
        if conf.size:
            if not np.all(np.isfinite(conf)):
                raise ValueError("float confidence contains NaN or infinite values")
            lo, hi = float(conf.min()), float(conf.max())
            if lo < 0.0 or hi > 1.0:
                raise ValueError(f"float confidence must lie in [0, 1], got range [{lo}, {hi}]")
        return np.round(conf.astype(np.float64) * 255.0).astype(np.int64)
    raise ValueError(
        f"confidence must be uint8 levels 0..255 or floats in [0, 1], got dtype {conf.dtype}"
    )


def _as_mask(mask: Any, name: str) -> np.ndarray:
    """Return ``mask`` as a boolean array (non-zero = True)."""
    arr = _to_numpy(mask)
    if arr.dtype == np.bool_:
        return arr
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"{name} must be a boolean (or 0/1) mask, got dtype {arr.dtype}")
    return arr != 0


def decode_kitti_gt(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Decode a KITTI road ground-truth image into ``(valid, road)`` boolean HxW masks.

    Following the devkit (Fritsch et al. 2013): ``valid = red > 0`` and ``road = blue > 0``.
    Magenta ``(255, 0, 255)`` is road, red ``(255, 0, 0)`` non-road, black ``(0, 0, 0)`` is
    ignored; a blue pixel outside ``valid`` is ignored by the metrics (only ``road & valid``
    counts), although ``road`` itself is returned exactly as decoded.

    Args:
        rgb: HxWx3 array in RGB channel order (as loaded by Pillow; OpenCV loads BGR).

    Raises:
        ValueError: if ``rgb`` is not an HxWx3 array.
    """
    arr = _to_numpy(rgb)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"KITTI ground truth must be an HxWx3 RGB image, got shape {arr.shape}")
    valid = arr[..., 0] > 0
    road = arr[..., 2] > 0
    return valid, road


def _check_hist(hist: np.ndarray, name: str) -> np.ndarray:
    hist = np.asarray(hist)
    if hist.shape != (NUM_LEVELS,):
        raise ValueError(f"{name} must have shape ({NUM_LEVELS},), got {hist.shape}")
    if hist.size and hist.min() < 0:
        raise ValueError(f"{name} must be non-negative counts")
    return hist.astype(np.int64, copy=False)


@dataclass
class RoadCounts:
    """Pooled sufficient statistics of the KITTI road metrics (addable across images).

    Attributes:
        pos_hist: int64 ``(256,)`` histogram of confidence levels over ``road & valid`` pixels.
        neg_hist: int64 ``(256,)`` histogram of confidence levels over ``~road & valid`` pixels.
    """

    pos_hist: np.ndarray = field(default_factory=lambda: np.zeros(NUM_LEVELS, np.int64))
    neg_hist: np.ndarray = field(default_factory=lambda: np.zeros(NUM_LEVELS, np.int64))

    def __post_init__(self) -> None:
        self.pos_hist = _check_hist(self.pos_hist, "pos_hist")
        self.neg_hist = _check_hist(self.neg_hist, "neg_hist")

    @classmethod
    def zeros(cls) -> RoadCounts:
        """Empty statistics (the neutral element of ``+``)."""
        return cls(np.zeros(NUM_LEVELS, np.int64), np.zeros(NUM_LEVELS, np.int64))

    def __add__(self, other: RoadCounts) -> RoadCounts:
        if not isinstance(other, RoadCounts):
            return NotImplemented
        return RoadCounts(self.pos_hist + other.pos_hist, self.neg_hist + other.neg_hist)

    def __radd__(self, other: Any) -> RoadCounts:
        # Lets ``sum(list_of_counts)`` work (it starts from the integer 0).
        if isinstance(other, int) and other == 0:
            return RoadCounts(self.pos_hist.copy(), self.neg_hist.copy())
        return NotImplemented

    @property
    def num_pos(self) -> int:
        """posNum: number of valid road pixels."""
        return int(self.pos_hist.sum())

    @property
    def num_neg(self) -> int:
        """negNum: number of valid non-road pixels."""
        return int(self.neg_hist.sum())

    def fn_fp(self) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(FN, FP)``, int64 arrays of length 256 indexed by threshold level ``k``.

        ``FN[k] = #(road pixels with level < k)`` (exclusive prefix sum of ``pos_hist``) and
        ``FP[k] = #(non-road pixels with level >= k)`` (suffix sum of ``neg_hist``).
        """
        fn = np.concatenate(([0], np.cumsum(self.pos_hist)[:-1])).astype(np.int64)
        fp = np.cumsum(self.neg_hist[::-1])[::-1].astype(np.int64)
        return fn, fp


def image_counts(confidence: Any, road: Any, valid: Any) -> RoadCounts:
    """Histogram one image's confidence levels over valid road / valid non-road pixels.

    Args:
        confidence: HxW road confidence, ``uint8`` levels or floats in ``[0, 1]``
            (see :func:`quantize_confidence`).
        road: HxW boolean road mask (ground-truth blue channel > 0).
        valid: HxW boolean evaluation mask (ground-truth red channel > 0).

    Raises:
        ValueError: if the three arrays are not 2-D with the same HxW shape, or on invalid
            confidence values.
    """
    conf = _to_numpy(confidence)
    road_m = _as_mask(road, "road")
    valid_m = _as_mask(valid, "valid")
    shapes = {"confidence": conf.shape, "road": road_m.shape, "valid": valid_m.shape}
    if any(len(s) != 2 for s in shapes.values()) or len(set(shapes.values())) != 1:
        raise ValueError(
            "confidence, road and valid must be 2-D arrays of the same HxW shape, got "
            + ", ".join(f"{k}={v}" for k, v in shapes.items())
        )
    levels = quantize_confidence(conf)
    pos = valid_m & road_m
    neg = valid_m & ~road_m
    return RoadCounts(
        np.bincount(levels[pos], minlength=NUM_LEVELS).astype(np.int64),
        np.bincount(levels[neg], minlength=NUM_LEVELS).astype(np.int64),
    )


@dataclass(frozen=True)
class RoadScores:
    """KITTI road scores of one group of images (Fritsch et al. 2013).

    ``max_f``, ``ap``, ``precision``, ``recall``, ``fpr``, ``fnr``, ``iou`` and ``accuracy`` are
    in percent; ``best_threshold`` is the threshold ``k / 255`` in ``[0, 1]`` maximising F; the
    precision/recall/FPR/FNR/IoU/accuracy are taken at that threshold. ``num_pos``/``num_neg``
    are the pooled numbers of valid road / non-road pixels.
    """

    max_f: float
    ap: float
    precision: float
    recall: float
    fpr: float
    fnr: float
    best_threshold: float
    iou: float
    accuracy: float
    num_pos: int
    num_neg: int

    def as_dict(self) -> dict[str, float]:
        """The scores as a flat ``{field name: value}`` dict (e.g. for logging)."""
        return {
            "max_f": self.max_f,
            "ap": self.ap,
            "precision": self.precision,
            "recall": self.recall,
            "fpr": self.fpr,
            "fnr": self.fnr,
            "best_threshold": self.best_threshold,
            "iou": self.iou,
            "accuracy": self.accuracy,
            "num_pos": float(self.num_pos),
            "num_neg": float(self.num_neg),
        }


def _voc11_average_precision(precision: np.ndarray, recall: np.ndarray) -> float:
    """Pascal-VOC 11-point AP: mean over r in ``np.arange(0, 1.1, 0.1)`` of max P(recall >= r).

    Recall levels that no threshold reaches are skipped from the average (as in the devkit).
    """
    total = 0.0
    count = 0
    for r in np.arange(0, 1.1, 0.1):  # exactly the devkit's float sequence (0.30000000000000004)
        reached = recall >= r
        if np.any(reached):
            total += float(precision[reached].max())
            count += 1
    return total / count if count else 0.0


def road_scores(counts: RoadCounts) -> RoadScores:
    """Compute MaxF, AP and the operating-point measures from pooled counts.

    Implements ``evaluateRoad`` of the KITTI road devkit (Fritsch et al., ITSC 2013): see the
    module docstring for the exact definitions.

    Raises:
        ValueError: if the group contains no valid road pixel (posNum == 0), for which recall
            and hence every score is undefined.
    """
    num_pos, num_neg = counts.num_pos, counts.num_neg
    if num_pos == 0:
        raise ValueError(
            "KITTI road metrics are undefined without road pixels: the ground truth has no "
            f"valid road pixel (posNum == 0, negNum == {num_neg}) in this group of images"
        )
    fn, fp = counts.fn_fp()
    tp = num_pos - fn
    tn = num_neg - fp
    recall = tp / float(num_pos)
    precision = tp / (tp + fp + _EPS)

    # Drop thresholds with recall == precision == 0 (i.e. TP == 0) before anything else.
    keep = ~((recall == 0) & (precision == 0))
    levels = np.flatnonzero(keep)  # threshold k of each kept entry
    recall, precision = recall[keep], precision[keep]

    ap = _voc11_average_precision(precision, recall)
    f_measure = 2.0 * precision * recall / (precision + recall + _EPS)
    best = int(np.argmax(f_measure))  # first maximum
    k = int(levels[best])
    tp_k, fp_k, fn_k, tn_k = int(tp[k]), int(fp[k]), int(fn[k]), int(tn[k])
    return RoadScores(
        max_f=100.0 * float(f_measure[best]),
        ap=100.0 * ap,
        precision=100.0 * float(precision[best]),
        recall=100.0 * float(recall[best]),
        fpr=100.0 * fp_k / num_neg if num_neg else 0.0,
        fnr=100.0 * fn_k / num_pos,
        best_threshold=k / (NUM_LEVELS - 1),
        iou=100.0 * tp_k / (tp_k + fp_k + fn_k),
        accuracy=100.0 * (tp_k + tn_k) / (num_pos + num_neg),
        num_pos=num_pos,
        num_neg=num_neg,
    )


class KittiRoadEvaluator:
    """Accumulate KITTI road statistics per category (``"um"``, ``"umm"``, ``"uu"``, ...).

    Counts are pooled (summed) over the images of a category, and over all images for the
    overall ``"all"`` score, as in the benchmark; per-image F-measures are never averaged.
    Images of datasets without categories (category ``None``) count in ``"all"`` only.
    """

    def __init__(self) -> None:
        self._counts: dict[str, RoadCounts] = {}
        self._uncategorised: RoadCounts | None = None

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self._counts.clear()
        self._uncategorised = None

    @property
    def counts(self) -> dict[str, RoadCounts]:
        """Pooled counts per category (a copy; does not include ``"all"``)."""
        return dict(self._counts)

    def update_counts(self, category: str | None, counts: RoadCounts) -> None:
        """Add precomputed per-image counts to ``category`` (``None``: to ``"all"`` only)."""
        if category == ALL_KEY:
            raise ValueError(f"category name {ALL_KEY!r} is reserved for the pooled score")
        if category is None:
            self._uncategorised = (self._uncategorised or RoadCounts.zeros()) + counts
            return
        self._counts[category] = self._counts.get(category, RoadCounts.zeros()) + counts

    def update(self, category: str | None, confidence: Any, road: Any, valid: Any) -> None:
        """Add one image: HxW confidence (uint8 levels or floats in [0, 1]) and GT masks."""
        self.update_counts(category, image_counts(confidence, road, valid))

    def compute(self) -> dict[str, RoadScores]:
        """Scores for every category seen plus ``"all"`` (pooled over every image).

        Raises:
            ValueError: if nothing was accumulated, or a category (or everything) has no valid
                road pixel; the message names the category.
        """
        if not self._counts and self._uncategorised is None:
            raise ValueError("KittiRoadEvaluator.compute() called before any update()")
        groups = dict(self._counts)
        pooled = list(self._counts.values())
        if self._uncategorised is not None:
            pooled.append(self._uncategorised)
        groups[ALL_KEY] = sum(pooled, RoadCounts.zeros())
        results: dict[str, RoadScores] = {}
        for name, counts in groups.items():
            try:
                results[name] = road_scores(counts)
            except ValueError as err:
                raise ValueError(f"category {name!r}: {err}") from err
        return results

"""Unsupervised segment proposals for a box: multi-scale Felzenszwalb segments, grouped.

Simple Does It and BoxSup draw their candidate segments from MCG (Pont-Tuset et al., TPAMI
2017), which has no Python package. The stand-in here is scikit-image's graph-based segmentation
(Felzenszwalb & Huttenlocher, IJCV 2004) at several scales: for each scale, a box's candidates are
the unions of the segments that lie inside the box by at least a given share of their area, and
the single segments that cover a good part of the box. (OpenCV's selective search returns boxes,
not masks, so it cannot stand in.)

A :class:`Candidate` keeps its mask inside the box only (labels are written inside boxes) and the
tight box of the whole segment, which is what the overlap with the box is measured on (BoxSup,
Eq. 1: IoU of the box and the segment's tight box).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from semseg.weak.boxes import Box
from semseg.weak.extras import load_skimage_segmentation

DEFAULT_SCALES = (100.0, 300.0, 1000.0)  # Felzenszwalb's k: larger, fewer and bigger segments
INSIDE_SHARES = (0.25, 0.5, 0.75)  # a segment joins a union when this share of it is in the box
SINGLE_MIN_COVER = 0.1  # a single segment is a candidate when it covers this share of the box


@dataclass(frozen=True)
class Candidate:
    """A segment proposal for one box: its pixels inside the box and its tight box."""

    mask: np.ndarray  # (box.height, box.width) bool
    tight: Box  # tight box of the whole segment (label unused)


@dataclass(frozen=True)
class Segmentation:
    """One over-segmentation of an image with each segment's size and tight box."""

    labels: np.ndarray  # (H, W) int segment ids 0 .. n-1
    sizes: np.ndarray  # (n,) pixels
    bounds: np.ndarray  # (n, 4) y0, x0, y1, x1 (exclusive ends)


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes' areas."""
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    inter = max(w, 0) * max(h, 0)
    union = a.area + b.area - inter
    return inter / union if union > 0 else 0.0


def segmentation_of(labels: np.ndarray) -> Segmentation:
    """Sizes and tight boxes of every segment of a label image (ids ``0 .. n-1``)."""
    labels = np.asarray(labels, dtype=np.int64)
    count = int(labels.max()) + 1
    rows, cols = np.indices(labels.shape)
    flat = labels.ravel()
    bounds = np.empty((count, 4), dtype=np.int64)
    bounds[:, 0] = labels.shape[0]
    bounds[:, 1] = labels.shape[1]
    bounds[:, 2:] = 0
    np.minimum.at(bounds[:, 0], flat, rows.ravel())
    np.minimum.at(bounds[:, 1], flat, cols.ravel())
    np.maximum.at(bounds[:, 2], flat, rows.ravel() + 1)
    np.maximum.at(bounds[:, 3], flat, cols.ravel() + 1)
    return Segmentation(labels, np.bincount(flat, minlength=count), bounds)


def felzenszwalb_segmentations(
    image: np.ndarray,
    scales: Sequence[float] = DEFAULT_SCALES,
    sigma: float = 0.8,
    min_size: int = 20,
) -> list[Segmentation]:
    """scikit-image's Felzenszwalb segmentation of an RGB image at each scale."""
    segmentation = load_skimage_segmentation()
    return [
        segmentation_of(
            segmentation.felzenszwalb(image, scale=float(s), sigma=sigma, min_size=min_size)
        )
        for s in scales
    ]


def box_candidates(
    segmentations: Sequence[Segmentation],
    box: Box,
    inside_shares: Sequence[float] = INSIDE_SHARES,
    single_min_cover: float = SINGLE_MIN_COVER,
) -> list[Candidate]:
    """The candidate segments of ``box`` from each over-segmentation (see module docstring)."""
    candidates = []
    for seg in segmentations:
        crop = seg.labels[box.slices]
        inside = np.bincount(crop.ravel(), minlength=len(seg.sizes))
        present = np.flatnonzero(inside)
        share = inside[present] / seg.sizes[present]
        for threshold in inside_shares:
            chosen = present[share >= threshold]
            if chosen.size:
                candidates.append(_candidate(seg, crop, chosen))
        for segment in present[inside[present] >= single_min_cover * box.area]:
            candidates.append(_candidate(seg, crop, np.array([segment])))
    return candidates


def _candidate(seg: Segmentation, crop: np.ndarray, segments: np.ndarray) -> Candidate:
    bounds = seg.bounds[segments]
    tight = Box(
        int(bounds[:, 1].min()),
        int(bounds[:, 0].min()),
        int(bounds[:, 3].max()),
        int(bounds[:, 2].max()),
        -1,
    )
    return Candidate(np.isin(crop, segments), tight)


def candidates_for_boxes(
    image: np.ndarray, boxes: Sequence[Box], scales: Sequence[float] = DEFAULT_SCALES
) -> list[list[Candidate]]:
    """The candidates of every box of an image (BoxSup's pool; computed once per image)."""
    if not boxes:
        return []
    segmentations = felzenszwalb_segmentations(image, scales)
    return [box_candidates(segmentations, box) for box in boxes]


def best_candidate(candidates: Sequence[Candidate], box: Box) -> Candidate | None:
    """The candidate whose tight box overlaps ``box`` most (IoU); the first of equals."""
    if not candidates:
        return None
    scores = [box_iou(box, c.tight) for c in candidates]
    return candidates[int(np.argmax(scores))]


__all__ = [
    "Candidate",
    "Segmentation",
    "best_candidate",
    "box_candidates",
    "box_iou",
    "candidates_for_boxes",
    "felzenszwalb_segmentations",
    "segmentation_of",
]

"""BoxSup's candidate choice (Dai, He & Sun, ICCV 2015, Sec. 3).

With the network fixed, each box picks one of its candidate segments by the cost

    cost(S) = (1 - IoU(B, S)) + lambda * CE(S),

where ``IoU(B, S)`` is the overlap of the box and the segment's tight box (the paper's Eq. 1) and
``CE(S)`` the network's mean cross-entropy over the segment's pixels for the box's class,
``-mean log p(class)`` (the paper's regression term, Eq. 2, per pixel so that lambda weighs the
two terms as in the paper, lambda = 3). Not the cheapest candidate is taken but one drawn
uniformly among the 5 cheapest, which keeps the labels from locking in early. The chosen
segments are the class, everything else background; smaller boxes lie on top.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from semseg.errors import SemsegError
from semseg.weak.boxes import Box
from semseg.weak.pseudolabels import BACKGROUND, CLASS, compose
from semseg.weak.segments import Candidate, box_iou

LAMBDA = 3.0
TOP_K = 5
MIN_PROBABILITY = 1e-8


def candidate_cost(
    box: Box, candidate: Candidate, probabilities: np.ndarray, lam: float = LAMBDA
) -> float:
    """``(1 - IoU(box, tight box)) + lam * mean(-log p[box class])`` over the segment's pixels.

    ``probabilities``: ``(C, H, W)`` softmax output of the network at the image's size. An empty
    segment has no cross-entropy term to measure and costs ``inf``.
    """
    pixels = probabilities[box.label][box.slices][candidate.mask]
    if pixels.size == 0:
        return float("inf")
    cross_entropy = float(-np.log(np.clip(pixels, MIN_PROBABILITY, 1.0)).mean())
    return (1.0 - box_iou(box, candidate.tight)) + lam * cross_entropy


def choose_candidate(
    box: Box,
    candidates: Sequence[Candidate],
    probabilities: np.ndarray,
    rng: np.random.Generator,
    lam: float = LAMBDA,
    top_k: int = TOP_K,
) -> int:
    """Index of the candidate drawn uniformly among the ``top_k`` cheapest (ties: lower index)."""
    if not candidates:
        raise SemsegError(f"BoxSup: box {box.coco_bbox()} has no candidate segment")
    costs = np.array([candidate_cost(box, c, probabilities, lam) for c in candidates])
    cheapest = np.argsort(costs, kind="stable")[: max(1, top_k)]
    return int(cheapest[rng.integers(len(cheapest))])


def boxsup_labels(
    probabilities: np.ndarray,
    boxes: Sequence[Box],
    candidates: Sequence[Sequence[Candidate]],
    background: int | None,
    rng: np.random.Generator,
    lam: float = LAMBDA,
    top_k: int = TOP_K,
) -> tuple[np.ndarray, list[int]]:
    """One image's labels for the next epoch and the chosen candidate of each box.

    ``candidates[i]`` are the candidates of ``boxes[i]``; a box without candidates keeps its
    filled rectangle.
    """
    if len(candidates) != len(boxes):
        raise ValueError("one candidate list per box is needed")
    maps, chosen = [], []
    for box, options in zip(boxes, candidates, strict=True):
        if not options:
            maps.append(np.full((box.height, box.width), CLASS, dtype=np.int8))
            chosen.append(-1)
            continue
        index = choose_candidate(box, options, probabilities, rng, lam, top_k)
        chosen.append(index)
        maps.append(np.where(options[index].mask, CLASS, BACKGROUND).astype(np.int8))
    return compose(probabilities.shape[1:], boxes, maps, background), chosen


__all__ = ["LAMBDA", "TOP_K", "boxsup_labels", "candidate_cost", "choose_candidate"]

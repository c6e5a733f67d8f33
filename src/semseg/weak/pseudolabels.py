"""Training labels from boxes, as Simple Does It defines them (Khoreva et al., CVPR 2017).

Each method turns one box into a map over the box: the box's class, background, or ignored.

* ``box``: the filled rectangle is the class;
* ``box-i``: the centred rectangle with 20% of the box's area is the class, the rest of the box
  is ignored;
* ``grabcut``: OpenCV's GrabCut (Rother et al., SIGGRAPH 2004) initialised from the box: its
  foreground is the class, the rest of the box background;
* ``grabcut-i``: GrabCut on several jittered copies of the box; pixels that at least 70% of the
  runs call foreground are the class, those under 20% background, the rest ignored;
* ``candidates``: the unsupervised segment proposal that overlaps the box best
  (:mod:`semseg.weak.segments`) is the class, the rest of the box background;
* ``m-and-g`` (the paper's M∩G+): the class where the candidate and GrabCut agree, the rest of
  the box ignored.

Boxes are drawn largest first, smaller boxes on top: a box's class and ignored pixels overwrite
what larger boxes drew, its background pixels do not. Pixels outside every box are the class
table's background class where it has one (KITTI's "not road") and ignored (255) where it has none
(CamVid). GrabCut sees the box with a margin of context around it (half the box's size on each
side, within the image) at full resolution unless ``grabcut_max_side`` shrinks it; a box with no
context (the whole image) or an empty GrabCut result falls back to the filled box. ``refine_labels``
optionally refines the result with the dense CRF of :mod:`semseg.inference.crf`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from semseg.config import IGNORE_INDEX
from semseg.errors import SemsegError
from semseg.inference.crf import CRFParams, refine
from semseg.weak.boxes import Box
from semseg.weak.extras import load_cv2
from semseg.weak.segments import (
    DEFAULT_SCALES,
    Segmentation,
    best_candidate,
    box_candidates,
    felzenszwalb_segmentations,
)

METHODS = ("box", "box-i", "grabcut", "grabcut-i", "candidates", "m-and-g")
CLASS, BACKGROUND, UNSURE = 1, 0, -1  # the values of a box map


@dataclass(frozen=True)
class PseudoLabelParams:
    """Settings of the methods (the paper's where it gives them)."""

    inner_fraction: float = 0.2  # box-i: share of the box's area that is the class
    grabcut_iterations: int = 5
    grabcut_margin: float = 0.5  # context around the box for GrabCut, in box sizes per side
    grabcut_max_side: int | None = None  # GrabCut on the context shrunk to this size (speed)
    jitter_runs: int = 10  # grabcut-i: GrabCut runs (the first on the box itself)
    jitter: float = 0.05  # grabcut-i: each edge moves by up to this share of the box's size
    agree_class: float = 0.7  # grabcut-i: share of runs at or above which a pixel is the class
    agree_background: float = 0.2  # grabcut-i: share of runs below which a pixel is background
    scales: tuple[float, ...] = DEFAULT_SCALES  # candidates: Felzenszwalb scales
    crf_confidence: float = 0.8  # CRF: probability given to a pixel's pseudo-label
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.inner_fraction <= 1:
            raise SemsegError(f"inner fraction must be in (0, 1], got {self.inner_fraction}")
        if self.jitter_runs < 1 or self.grabcut_iterations < 1:
            raise SemsegError("GrabCut needs at least one run and one iteration")
        if not 0 <= self.agree_background <= self.agree_class <= 1:
            raise SemsegError("grabcut-i needs 0 <= background share <= class share <= 1")


def check_method(method: str) -> str:
    if method not in METHODS:
        raise SemsegError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    return method


# --- one box ------------------------------------------------------------------------------------


def box_map(box: Box) -> np.ndarray:
    """``box``: the whole box is the class."""
    return np.full((box.height, box.width), CLASS, dtype=np.int8)


def inner_box(box: Box, fraction: float = 0.2) -> Box:
    """The centred box with ``fraction`` of ``box``'s area (each side scaled by its root)."""
    scale = math.sqrt(fraction)
    width = min(box.width, max(1, round(box.width * scale)))
    height = min(box.height, max(1, round(box.height * scale)))
    x0 = box.x0 + (box.width - width) // 2
    y0 = box.y0 + (box.height - height) // 2
    return Box(x0, y0, x0 + width, y0 + height, box.label)


def box_i_map(box: Box, fraction: float = 0.2) -> np.ndarray:
    """``box-i``: the inner ``fraction`` of the area is the class, the rest ignored."""
    result = np.full((box.height, box.width), UNSURE, dtype=np.int8)
    inner = inner_box(box, fraction)
    result[inner.y0 - box.y0 : inner.y1 - box.y0, inner.x0 - box.x0 : inner.x1 - box.x0] = CLASS
    return result


def grabcut_foreground(
    image: np.ndarray,
    rect: Box,
    iterations: int = 5,
    margin: float = 0.5,
    max_side: int | None = None,
) -> np.ndarray | None:
    """GrabCut's foreground ``(H, W)`` bool from ``rect``, or None when it cannot run.

    GrabCut works on ``rect`` plus ``margin`` box sizes of context per side, optionally shrunk
    so that its longer side is at most ``max_side`` pixels (GrabCut's time grows with the
    pixels; the mask is scaled back with nearest-neighbour; on KITTI's road boxes shrinking to
    400 pixels made GrabCut fail on some images). It cannot run when the context leaves no
    pixel outside the rectangle (the background model needs some).
    """
    cv2 = load_cv2()
    height, width = image.shape[:2]
    mx, my = math.ceil(rect.width * margin), math.ceil(rect.height * margin)
    cx0, cy0 = max(rect.x0 - mx, 0), max(rect.y0 - my, 0)
    cx1, cy1 = min(rect.x1 + mx, width), min(rect.y1 + my, height)
    if (cx0, cy0, cx1, cy1) == (rect.x0, rect.y0, rect.x1, rect.y1):
        return None
    context = np.ascontiguousarray(image[cy0:cy1, cx0:cx1, ::-1])  # OpenCV wants BGR
    size = (cx1 - cx0, cy1 - cy0)
    scale = 1.0 if max_side is None else min(1.0, max_side / max(size))
    x0, y0 = (rect.x0 - cx0) * scale, (rect.y0 - cy0) * scale
    x1, y1 = (rect.x1 - cx0) * scale, (rect.y1 - cy0) * scale
    if scale < 1.0:
        small = (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
        context = cv2.resize(context, small, interpolation=cv2.INTER_AREA)
    target = (int(x0), int(y0), max(1, round(x1 - int(x0))), max(1, round(y1 - int(y0))))
    mask = np.zeros(context.shape[:2], dtype=np.uint8)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    try:
        cv2.grabCut(context, mask, target, bgd, fgd, iterations, cv2.GC_INIT_WITH_RECT)
    except cv2.error:
        return None
    foreground = ((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)).astype(np.uint8)
    if scale < 1.0:
        foreground = cv2.resize(foreground, size, interpolation=cv2.INTER_NEAREST)
    result = np.zeros((height, width), dtype=bool)
    result[cy0:cy1, cx0:cx1] = foreground > 0
    result[: rect.y0] = result[rect.y1 :] = False  # GrabCut's foreground lies in the rectangle
    result[:, : rect.x0] = result[:, rect.x1 :] = False
    return result


def grabcut_map(image: np.ndarray, box: Box, params: PseudoLabelParams) -> np.ndarray:
    """``grabcut``: GrabCut's foreground in the box is the class, the rest background."""
    foreground = grabcut_foreground(
        image, box, params.grabcut_iterations, params.grabcut_margin, params.grabcut_max_side
    )
    inside = None if foreground is None else foreground[box.slices]
    if inside is None or not inside.any():
        return box_map(box)
    return np.where(inside, CLASS, BACKGROUND).astype(np.int8)


def jittered(box: Box, jitter: float, rng: np.random.Generator, width: int, height: int) -> Box:
    """``box`` with each edge moved by up to ``jitter`` of its size, kept inside the image."""
    dx, dy = jitter * box.width, jitter * box.height
    x0, x1 = box.x0 + rng.uniform(-dx, dx), box.x1 + rng.uniform(-dx, dx)
    y0, y1 = box.y0 + rng.uniform(-dy, dy), box.y1 + rng.uniform(-dy, dy)
    x0, y0 = min(max(round(x0), 0), width - 1), min(max(round(y0), 0), height - 1)
    x1, y1 = min(max(round(x1), x0 + 1), width), min(max(round(y1), y0 + 1), height)
    return Box(x0, y0, x1, y1, box.label)


def grabcut_votes(
    image: np.ndarray, box: Box, params: PseudoLabelParams, rng: np.random.Generator
) -> np.ndarray:
    """Share of jittered GrabCut runs that call each pixel of ``box`` foreground."""
    height, width = image.shape[:2]
    votes = np.zeros((box.height, box.width), dtype=np.float64)
    for run in range(params.jitter_runs):
        rect = box if run == 0 else jittered(box, params.jitter, rng, width, height)
        foreground = grabcut_foreground(
            image, rect, params.grabcut_iterations, params.grabcut_margin, params.grabcut_max_side
        )
        if foreground is None:  # no context: the rectangle itself
            foreground = np.zeros((height, width), dtype=bool)
            foreground[rect.slices] = True
        votes += foreground[box.slices]
    return votes / params.jitter_runs


def grabcut_i_map(
    image: np.ndarray, box: Box, params: PseudoLabelParams, rng: np.random.Generator
) -> np.ndarray:
    """``grabcut-i``: class at >= 70% agreement, background below 20%, the rest ignored."""
    votes = grabcut_votes(image, box, params, rng)
    result = np.full(votes.shape, UNSURE, dtype=np.int8)
    result[votes >= params.agree_class] = CLASS
    result[votes < params.agree_background] = BACKGROUND
    if not (result == CLASS).any():
        return box_map(box)
    return result


def candidate_mask(segmentations: Sequence[Segmentation], box: Box) -> np.ndarray:
    """The best-overlapping candidate's pixels in the box (the whole box when there is none)."""
    best = best_candidate(box_candidates(segmentations, box), box)
    if best is None or not best.mask.any():
        return np.ones((box.height, box.width), dtype=bool)
    return best.mask


def candidates_map(segmentations: Sequence[Segmentation], box: Box) -> np.ndarray:
    """``candidates``: the best candidate is the class, the rest of the box background."""
    return np.where(candidate_mask(segmentations, box), CLASS, BACKGROUND).astype(np.int8)


def m_and_g_map(
    image: np.ndarray, segmentations: Sequence[Segmentation], box: Box, params: PseudoLabelParams
) -> np.ndarray:
    """``m-and-g``: the class where candidate and GrabCut agree, the rest of the box ignored
    (GrabCut's class alone where they share no pixel)."""
    grabcut = grabcut_map(image, box, params) == CLASS
    agree = grabcut & candidate_mask(segmentations, box)
    if not agree.any():
        agree = grabcut
    return np.where(agree, CLASS, UNSURE).astype(np.int8)


# --- a whole image ------------------------------------------------------------------------------


def compose(
    shape: tuple[int, int],
    boxes: Sequence[Box],
    maps: Sequence[np.ndarray],
    background: int | None,
) -> np.ndarray:
    """Labels ``(H, W)`` uint8 from per-box maps, largest box first (see module docstring)."""
    fill = IGNORE_INDEX if background is None else background
    labels = np.full(shape, fill, dtype=np.uint8)
    for index in sorted(range(len(boxes)), key=lambda i: -boxes[i].area):
        box, box_labels = boxes[index], maps[index]
        if box_labels.shape != (box.height, box.width):
            raise ValueError(f"map of shape {box_labels.shape} for a {box.width}x{box.height} box")
        region = labels[box.slices]
        region[box_labels == CLASS] = box.label
        region[box_labels == UNSURE] = IGNORE_INDEX
    return labels


def pseudo_label(
    image: np.ndarray,
    boxes: Sequence[Box],
    method: str,
    background: int | None,
    params: PseudoLabelParams | None = None,
) -> np.ndarray:
    """The ``(H, W)`` uint8 pseudo-label of one image (255 = ignore) by ``method``."""
    check_method(method)
    params = params or PseudoLabelParams()
    rng = np.random.default_rng(params.seed)
    if method in ("grabcut", "grabcut-i", "m-and-g"):
        load_cv2().setRNGSeed(params.seed)
    segmentations: list[Segmentation] = []
    if method in ("candidates", "m-and-g") and boxes:
        segmentations = felzenszwalb_segmentations(image, params.scales)
    maps = []
    for box in boxes:
        if method == "box":
            maps.append(box_map(box))
        elif method == "box-i":
            maps.append(box_i_map(box, params.inner_fraction))
        elif method == "grabcut":
            maps.append(grabcut_map(image, box, params))
        elif method == "grabcut-i":
            maps.append(grabcut_i_map(image, box, params, rng))
        elif method == "candidates":
            maps.append(candidates_map(segmentations, box))
        else:
            maps.append(m_and_g_map(image, segmentations, box, params))
    return compose(image.shape[:2], boxes, maps, background)


def allowed_classes(
    shape: tuple[int, int], boxes: Sequence[Box], num_classes: int, background: int | None
) -> np.ndarray:
    """``(C, H, W)`` bool: class ``c`` may label a pixel inside one of its boxes; the
    background class may label every pixel."""
    allowed = np.zeros((num_classes, *shape), dtype=bool)
    for box in boxes:
        allowed[box.label][box.slices] = True
    if background is not None:
        allowed[background] = True
    return allowed


def refine_labels(
    image: np.ndarray,
    labels: np.ndarray,
    boxes: Sequence[Box],
    num_classes: int,
    background: int | None,
    crf: CRFParams | None = None,
    confidence: float = 0.8,
) -> np.ndarray:
    """Pseudo-labels refined by the dense CRF (DeepLab's settings unless ``crf`` is given).

    Each labelled pixel gets probability ``confidence`` for its label (the rest spread evenly),
    each ignored pixel a uniform distribution. After the CRF a labelled pixel takes the most
    probable class that may stand there (a box's class inside the box, background anywhere) and
    keeps its label otherwise; pixels outside every box and ignored pixels keep their labels.
    """
    if num_classes < 2:
        return labels.copy()
    labelled = labels != IGNORE_INDEX
    probabilities = np.full((num_classes, *labels.shape), 1.0 / num_classes, dtype=np.float32)
    rest = (1.0 - confidence) / (num_classes - 1)
    ids = np.where(labelled, labels, 0).astype(np.int64)
    one_hot = np.eye(num_classes, dtype=np.float32)[ids].transpose(2, 0, 1)
    probabilities = np.where(
        labelled[None], one_hot * (confidence - rest) + rest, probabilities
    ).astype(np.float32)
    refined = refine(image, probabilities, crf)
    allowed = allowed_classes(labels.shape, boxes, num_classes, background)
    refined = np.where(allowed, refined, -1.0)
    best = refined.argmax(axis=0)
    in_box = np.zeros(labels.shape, dtype=bool)
    for box in boxes:
        in_box[box.slices] = True
    keep = ~(labelled & in_box) | (refined.max(axis=0) < 0)
    return np.where(keep, labels, best).astype(np.uint8)


__all__ = [
    "METHODS",
    "PseudoLabelParams",
    "allowed_classes",
    "box_i_map",
    "box_map",
    "check_method",
    "compose",
    "grabcut_foreground",
    "grabcut_i_map",
    "grabcut_map",
    "grabcut_votes",
    "inner_box",
    "jittered",
    "m_and_g_map",
    "pseudo_label",
    "refine_labels",
]

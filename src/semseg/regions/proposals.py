"""Region proposals for the region-based models, computed once per image and cached.

Three methods, from the ``weak`` extra:

* ``felzenszwalb``: scikit-image's graph-based segmentation (Felzenszwalb & Huttenlocher, IJCV
  2004; :mod:`semseg.weak.segments`) at several scales, one partition of the image per scale —
  overlapping regions across scales, as selective search diversifies its grouping.
* ``slic``: scikit-image's SLIC superpixels (Achanta et al., TPAMI 2012), one partition.
* ``selective-search``: OpenCV contrib's selective search (Uijlings et al., IJCV 2013, "fast"
  mode), the proposals of R-CNN. It returns boxes, not masks: each such region is its box.

MCG (the proposals of SDS) has no Python package. Felzenszwalb's ``scale`` and ``min_size`` are
given per image area (``scale`` per 100,000 pixels, ``min_size`` as a fraction of the pixels, at
least :data:`MIN_REGION_PIXELS`) so
the same parameters give about the same regions at the native size, where ``semseg proposals``
and training compute them, and at the model's input size, where inference does.

A :class:`Regions` holds ``label_maps`` ``(L, H, W)`` int32 (one partition per level, region ids
``0 .. M-1`` over all levels, -1 where a level has no region) and ``boxes`` ``(R, 4)`` float32
``x0, y0, x1, y1`` (exclusive ends) of all ``R`` regions; regions ``M .. R-1`` exist as boxes
only. Pixels that no region covers form one more region (the *complement*, in a level of its
own), so every pixel belongs to some region and is labelled by the models; with the partitions
of Felzenszwalb and SLIC it is empty and not added.

The cache holds one compressed ``.npz`` per image and method, named after the image, holding
the key it was computed for (the image file's path, size and modification time, and the method
parameters); a file whose key differs is recomputed and replaced (atomically).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from semseg.errors import SemsegError
from semseg.io import atomic_open
from semseg.metrics.multiclass import ConfusionMatrix, MulticlassScores
from semseg.models.regions import RegionTensors, set_proposer
from semseg.regions.extras import require_method
from semseg.weak.extras import load_cv2, load_skimage_segmentation

METHODS = ("felzenszwalb", "slic", "selective-search")
AREA_UNIT = 100_000  # Felzenszwalb's scale is given per this many pixels
MIN_REGION_PIXELS = 16  # Felzenszwalb's smallest region, whatever the image size
CACHE_VERSION = 1


@dataclass(frozen=True)
class ProposalParams:
    """A method and its parameters (only those of the method enter the cache key)."""

    method: str = "felzenszwalb"
    scales: tuple[float, ...] = (25.0, 100.0)  # felzenszwalb: k per 100,000 pixels, per level
    sigma: float = 0.8  # felzenszwalb: Gaussian smoothing before segmenting
    min_size: float = 0.0005  # felzenszwalb: smallest region, as a fraction of the pixels
    n_segments: int = 300  # slic: about this many superpixels
    compactness: float = 10.0  # slic: colour vs. space trade-off
    max_boxes: int = 200  # selective-search: the first (best-ranked) boxes kept

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise SemsegError(f"unknown proposal method {self.method!r} ({', '.join(METHODS)})")
        if not self.scales or min(self.scales) <= 0:
            raise SemsegError("felzenszwalb scales must be positive")
        if self.n_segments < 1 or self.max_boxes < 1:
            raise SemsegError("n_segments and max_boxes must be at least 1")

    def key(self) -> dict[str, object]:
        """The parameters of this method (what the cache is keyed by)."""
        names = {
            "felzenszwalb": ("scales", "sigma", "min_size"),
            "slic": ("n_segments", "compactness"),
            "selective-search": ("max_boxes",),
        }[self.method]
        values = asdict(self)
        return {"method": self.method, **{name: _plain(values[name]) for name in names}}


def _plain(value: object) -> object:
    return list(value) if isinstance(value, tuple) else value


@dataclass(frozen=True)
class Regions:
    """The regions of one image (see the module docstring)."""

    label_maps: np.ndarray  # (L, H, W) int32
    boxes: np.ndarray  # (R, 4) float32 x0, y0, x1, y1
    num_mapped: int  # regions 0 .. num_mapped-1 are in label_maps, the rest are boxes only

    @property
    def count(self) -> int:
        return int(self.boxes.shape[0])

    def masks(self) -> np.ndarray:
        """``(R, H, W)`` bool masks of every region (for tests and small images)."""
        height, width = self.label_maps.shape[1:]
        out = np.zeros((self.count, height, width), dtype=bool)
        for level in self.label_maps:
            inside = level >= 0
            out[level[inside], np.nonzero(inside)[0], np.nonzero(inside)[1]] = True
        for index in range(self.num_mapped, self.count):
            x0, y0, x1, y1 = (int(round(v)) for v in self.boxes[index])
            out[index, y0:y1, x0:x1] = True
        return out


def map_bounds(label_maps: np.ndarray, count: int) -> np.ndarray:
    """Tight boxes ``(count, 4)`` x0, y0, x1, y1 (exclusive) of the regions of ``label_maps``."""
    bounds = np.zeros((count, 4), dtype=np.float32)
    if count == 0:
        return bounds
    height, width = label_maps.shape[1:]
    lo_x = np.full(count, width, np.int64)
    lo_y = np.full(count, height, np.int64)
    hi_x = np.zeros(count, np.int64)
    hi_y = np.zeros(count, np.int64)
    rows, cols = np.indices((height, width))
    for level in label_maps:
        inside = level >= 0
        ids, ys, xs = level[inside], rows[inside], cols[inside]
        np.minimum.at(lo_x, ids, xs)
        np.minimum.at(lo_y, ids, ys)
        np.maximum.at(hi_x, ids, xs + 1)
        np.maximum.at(hi_y, ids, ys + 1)
    bounds[:, 0], bounds[:, 1], bounds[:, 2], bounds[:, 3] = lo_x, lo_y, hi_x, hi_y
    return bounds


def make_regions(levels: list[np.ndarray], boxes: np.ndarray, shape: tuple[int, int]) -> Regions:
    """Regions from partitions (each ``(H, W)`` ids ``0 .. n-1``) and box-only regions
    ``(B, 4)``, with the complement of what they cover added as one more region."""
    height, width = shape
    relabelled, offset = [], 0
    for level in levels:
        _, ids = np.unique(level, return_inverse=True)
        ids = ids.reshape(shape).astype(np.int32)
        relabelled.append(ids + offset)
        offset += int(ids.max()) + 1
    covered = np.zeros(shape, dtype=bool)
    for level in relabelled:
        covered |= level >= 0
    for x0, y0, x1, y1 in np.asarray(boxes, dtype=np.int64).reshape(-1, 4):
        covered[y0:y1, x0:x1] = True
    if not covered.all():
        relabelled.append(np.where(covered, -1, offset).astype(np.int32))
        offset += 1
    label_maps = (
        np.stack(relabelled) if relabelled else np.zeros((0, height, width), dtype=np.int32)
    )
    all_boxes = np.concatenate(
        [map_bounds(label_maps, offset), np.asarray(boxes, np.float32).reshape(-1, 4)]
    )
    return Regions(label_maps, all_boxes, offset)


def compute_regions(image: np.ndarray, params: ProposalParams) -> Regions:
    """The regions of an ``(H, W, 3)`` uint8 RGB image by ``params.method``."""
    shape = image.shape[:2]
    area = shape[0] * shape[1]
    if params.method == "felzenszwalb":
        segmentation = load_skimage_segmentation()
        min_size = max(MIN_REGION_PIXELS, round(params.min_size * area))
        levels = [
            segmentation.felzenszwalb(
                image, scale=s * area / AREA_UNIT, sigma=params.sigma, min_size=min_size
            )
            for s in params.scales
        ]
        return make_regions(levels, np.zeros((0, 4)), shape)
    if params.method == "slic":
        segmentation = load_skimage_segmentation()
        level = segmentation.slic(
            image, n_segments=params.n_segments, compactness=params.compactness, start_label=0
        )
        return make_regions([level], np.zeros((0, 4)), shape)
    return make_regions([], selective_search_boxes(image, params.max_boxes), shape)


def selective_search_boxes(image: np.ndarray, max_boxes: int) -> np.ndarray:
    """OpenCV's fast selective search: the first ``max_boxes`` boxes ``(B, 4)`` x0, y0, x1, y1."""
    require_method("selective-search")
    cv2 = load_cv2()
    search = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    search.setBaseImage(np.ascontiguousarray(image[..., ::-1]))
    search.switchToSelectiveSearchFast()
    rects = np.asarray(search.process(), dtype=np.float32).reshape(-1, 4)[:max_boxes]
    rects[:, 2:] += rects[:, :2]
    return rects


# --- the cache ---------------------------------------------------------------------------------


def cache_key(image_path: Path, params: ProposalParams) -> str:
    """What a cached file must have been computed for: the image file and the parameters."""
    stat = image_path.stat()
    payload = {
        "version": CACHE_VERSION,
        "image": str(image_path.resolve()),
        "bytes": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "params": params.key(),
    }
    return json.dumps(payload, sort_keys=True)


def cache_path(cache_dir: Path, image_path: Path, method: str) -> Path:
    """``CACHE/STEM.HASH.METHOD.npz``; HASH (of the image's full path) keeps same-named images of
    different folders apart."""
    digest = hashlib.sha1(str(image_path.resolve()).encode()).hexdigest()[:8]
    return cache_dir / f"{image_path.stem}.{digest}.{method}.npz"


def read_cached(path: Path, key: str) -> Regions | None:
    """The regions cached at ``path`` when they were computed for ``key``; else None."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["key"]) != key:
                return None
            return Regions(data["label_maps"], data["boxes"], int(data["num_mapped"]))
    except (OSError, ValueError, KeyError):
        return None  # unreadable or of another layout: recomputed


def write_cached(path: Path, key: str, regions: Regions) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as stream:
        np.savez_compressed(
            stream,
            key=np.array(key),
            label_maps=regions.label_maps,
            boxes=regions.boxes,
            num_mapped=np.array(regions.num_mapped),
        )


def cached_regions(
    image_path: Path, image: np.ndarray, params: ProposalParams, cache_dir: Path
) -> tuple[Regions, bool]:
    """The regions of the image at ``image_path`` (pixels ``image``), from the cache when it
    holds them for these parameters, else computed and cached. Returns ``(regions, computed)``."""
    image_path = Path(image_path)
    key = cache_key(image_path, params)
    path = cache_path(Path(cache_dir), image_path, params.method)
    regions = read_cached(path, key)
    if regions is not None and regions.label_maps.shape[1:] == image.shape[:2]:
        return regions, False
    regions = compute_regions(image, params)
    write_cached(path, key, regions)
    return regions, True


def default_cache_dir() -> Path:
    """Where training looks for proposals when ``data.proposals_dir`` is not set."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "semseg" / "proposals"


# --- scores ------------------------------------------------------------------------------------


def region_class_counts(regions: Regions, mask: np.ndarray, num_classes: int) -> np.ndarray:
    """``(R, num_classes + 1)`` pixel counts of each ground-truth class per region; the last
    column counts void (any label outside ``0 .. num_classes-1``)."""
    labels = np.where(mask < num_classes, mask, num_classes).astype(np.int64)
    width = num_classes + 1
    counts = np.zeros((regions.count, width), dtype=np.int64)
    for level in regions.label_maps:
        inside = level >= 0
        flat = level[inside].astype(np.int64) * width + labels[inside]
        counts += np.bincount(flat, minlength=regions.count * width).reshape(-1, width)
    for index in range(regions.num_mapped, regions.count):
        x0, y0, x1, y1 = (int(round(v)) for v in regions.boxes[index])
        counts[index] = np.bincount(labels[y0:y1, x0:x1].ravel(), minlength=width)
    return counts


def majority_labels(
    counts: np.ndarray, ignore_index: int, max_void: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Per region: the majority class among its labelled pixels (``ignore_index`` where more
    than ``max_void`` of it is void, or it is empty) and its purity (majority share of all)."""
    labelled = counts[:, :-1]
    total = counts.sum(axis=1)
    majority = labelled.argmax(axis=1)
    top = labelled.max(axis=1) if labelled.shape[1] else np.zeros(len(counts))
    void_share = counts[:, -1] / np.maximum(total, 1)
    labels = np.where((total == 0) | (void_share > max_void), ignore_index, majority)
    return labels.astype(np.int64), top / np.maximum(total, 1)


def paste_labels(regions: Regions, labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Per pixel, the label of the covering region of highest score (later regions win ties):
    ``(H, W)`` int64; ``-1`` where no region covers a pixel or its winner's label is negative."""
    height, width = regions.label_maps.shape[1:]
    best = np.full((height, width), -np.inf)
    out = np.full((height, width), -1, dtype=np.int64)
    for level in regions.label_maps:
        inside = level >= 0
        level_scores = np.where(inside, scores[np.maximum(level, 0)], -np.inf)
        wins = level_scores >= best
        wins &= inside
        best[wins] = level_scores[wins]
        out[wins] = labels[level[wins]]
    for index in range(regions.num_mapped, regions.count):
        x0, y0, x1, y1 = (int(round(v)) for v in regions.boxes[index])
        window = best[y0:y1, x0:x1]
        wins = scores[index] >= window
        window[wins] = scores[index]
        out[y0:y1, x0:x1][wins] = labels[index]
    return out


def oracle_labels(regions: Regions, mask: np.ndarray, num_classes: int) -> np.ndarray:
    """The best labelling the regions allow: each region its majority class (void-dominated
    regions take their labelled majority all the same), pasted by purity."""
    counts = region_class_counts(regions, mask, num_classes)
    labelled = counts[:, :-1]
    purity = labelled.max(axis=1) / np.maximum(counts.sum(axis=1), 1)
    return paste_labels(regions, labelled.argmax(axis=1), purity)


def proposal_recall(
    pairs: Iterable[tuple[Regions, np.ndarray]], num_classes: int, ignore_index: int = 255
) -> MulticlassScores:
    """Proposal recall: the scores (mIoU, per-class IoU, ...) of :func:`oracle_labels` over
    ``(regions, ground-truth mask)`` pairs — the best any region classifier could reach."""
    confusion = ConfusionMatrix(num_classes, ignore_index=ignore_index)
    for regions, mask in pairs:
        labels = oracle_labels(regions, mask, num_classes)
        confusion.update_arrays(np.where(labels < 0, 0, labels), mask)
    return confusion.scores()


# --- the proposer of the region models ------------------------------------------------------


def regions_to_tensors(regions: Regions) -> RegionTensors:
    """A :class:`Regions` as the region models' torch tensors."""
    return RegionTensors(
        torch.from_numpy(regions.label_maps.astype(np.int64)),
        torch.from_numpy(regions.boxes.astype(np.float32)),
        regions.num_mapped,
    )


def propose_tensors(images: torch.Tensor, method: str) -> list[RegionTensors]:
    """The regions of each image of a ``(N, 3, H, W)`` batch in [0, 1] by ``method`` (default
    parameters), computed on the CPU."""
    params = ProposalParams(method)
    pixels = (images.detach().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu()
    return [regions_to_tensors(compute_regions(p.numpy(), params)) for p in pixels]


set_proposer(propose_tensors)


__all__ = [
    "propose_tensors",
    "regions_to_tensors",
    "proposal_recall",
    "METHODS",
    "ProposalParams",
    "Regions",
    "cached_regions",
    "compute_regions",
    "default_cache_dir",
    "majority_labels",
    "make_regions",
    "oracle_labels",
    "paste_labels",
    "region_class_counts",
]

"""Median-frequency class balancing for the cross-entropy loss.

Eigen & Fergus, "Predicting Depth, Surface Normals and Semantic Labels with a Common
Multi-Scale Convolutional Architecture", ICCV 2015, and SegNet (Badrinarayanan et al., TPAMI
2017) weight the loss of class ``c`` by ``median(freq) / freq_c``, where ``freq_c`` is the number
of pixels of class ``c`` divided by the total number of pixels of the training images in which
``c`` is present (void pixels of those images included in the total). Rare classes get weights
above 1, frequent ones below 1; the class at the median gets 1. A class that never occurs in the
training masks gets weight 0 (there is nothing to learn for it) and is left out of the median.

The weights are computed once from the training masks and saved with the run
(:func:`save_class_weights`) so that a resumed run and the run's report use the same numbers.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from semseg.config import IGNORE_INDEX
from semseg.errors import SemsegError
from semseg.io import write_json_atomic

METHOD = "median_frequency"
WEIGHTS_FILE = "class_weights.json"


class MedianFrequency:
    """Accumulates per-class pixel counts over masks; :meth:`weights` gives the weights."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_pixels = np.zeros(num_classes, dtype=np.int64)
        self.image_pixels = np.zeros(num_classes, dtype=np.int64)  # of images holding the class

    def update(self, mask: np.ndarray) -> None:
        """Count one mask of training ids (``ignore_index`` for void)."""
        counts = np.bincount(np.asarray(mask, dtype=np.int64).reshape(-1), minlength=256)
        per_class = counts[: self.num_classes]
        self.class_pixels += per_class
        self.image_pixels += np.where(per_class > 0, mask.size, 0)

    def frequencies(self) -> np.ndarray:
        """``freq_c``; ``nan`` for classes that occur in no mask."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.image_pixels > 0, self.class_pixels / self.image_pixels, np.nan)

    def weights(self) -> np.ndarray:
        """``median(freq) / freq_c`` as float32; 0 for classes that occur in no mask."""
        freq = self.frequencies()
        present = ~np.isnan(freq)
        if not present.any():
            raise SemsegError("median-frequency balancing: the training masks hold no labels")
        median = np.median(freq[present])
        weights = np.zeros(self.num_classes, dtype=np.float64)
        weights[present] = median / freq[present]
        return weights.astype(np.float32)


def median_frequency_weights(
    masks: Iterable[np.ndarray], num_classes: int, ignore_index: int = IGNORE_INDEX
) -> np.ndarray:
    """Median-frequency weights ``(num_classes,)`` float32 of the training ``masks``."""
    counter = MedianFrequency(num_classes, ignore_index)
    for mask in masks:
        counter.update(mask)
    return counter.weights()


def save_class_weights(path: str | Path, weights: np.ndarray, names: Sequence[str]) -> None:
    """Write ``{"method", "classes": [{"name", "weight"}]}`` atomically (the run's copy)."""
    if len(weights) != len(names):
        raise ValueError(f"{len(weights)} weights for {len(names)} class names")
    classes = [{"name": n, "weight": float(w)} for n, w in zip(names, weights, strict=True)]
    write_json_atomic(path, {"method": METHOD, "classes": classes})


def load_class_weights(path: str | Path, names: Sequence[str] | None = None) -> np.ndarray:
    """Weights saved by :func:`save_class_weights`; with ``names``, the class names must match."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text())
        classes = payload["classes"]
        found = [str(entry["name"]) for entry in classes]
        weights = np.array([float(entry["weight"]) for entry in classes], dtype=np.float32)
    except FileNotFoundError as error:
        raise SemsegError(f"class weights not found: {path}") from error
    except (ValueError, KeyError, TypeError) as error:
        raise SemsegError(f"{path}: not a class weights file") from error
    if names is not None and found != list(names):
        raise SemsegError(f"{path}: class weights are for classes {found}, not {list(names)}")
    return weights


__all__ = [
    "METHOD",
    "WEIGHTS_FILE",
    "MedianFrequency",
    "load_class_weights",
    "median_frequency_weights",
    "save_class_weights",
]

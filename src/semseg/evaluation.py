"""``semseg evaluate``: the KITTI devkit's perspective metrics at full ground-truth resolution.

Per category (um, umm, uu) and over all images: MaxF, AP (11-point), PRE, REC, FPR, FNR at the
best of 256 thresholds, the best threshold, with counts pooled over the images of the group; plus
IoU of the positive class, mean IoU and pixel accuracy of the argmax labels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from semseg.config import IGNORE_INDEX, DataConfig
from semseg.data.folder import index_folder
from semseg.data.kitti import index_split, read_split
from semseg.data.sample import Sample
from semseg.errors import SemsegError
from semseg.inference.checkpoint import LoadedModel
from semseg.inference.predictor import Predictor
from semseg.metrics.kitti import KittiRoadEvaluator

SCORE_COLUMNS = ("max_f", "ap", "precision", "recall", "fpr", "fnr", "best_threshold")


@dataclass
class ConfusionCounts:
    """Pixel confusion matrix (rows: truth, columns: prediction) over valid pixels."""

    num_classes: int
    matrix: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, truth: np.ndarray, prediction: np.ndarray) -> None:
        valid = truth != IGNORE_INDEX
        index = truth[valid].astype(np.int64) * self.num_classes + prediction[valid]
        self.matrix += np.bincount(index, minlength=self.num_classes**2).reshape(self.matrix.shape)

    def iou(self) -> np.ndarray:
        """Per-class intersection over union, in percent (NaN for a class never seen)."""
        intersection = np.diag(self.matrix).astype(np.float64)
        union = self.matrix.sum(0) + self.matrix.sum(1) - intersection
        with np.errstate(invalid="ignore", divide="ignore"):
            return 100.0 * intersection / union

    def accuracy(self) -> float:
        total = self.matrix.sum()
        return float(100.0 * np.trace(self.matrix) / total) if total else float("nan")


def is_kitti_layout(root: Path) -> bool:
    return (root / "training" / "image_2").is_dir() or (root / "data_road" / "training").is_dir()


def labelled_samples(data_root: Path, skip_bad: bool = False) -> list[Sample]:
    """Every labelled image under ``data_root`` (KITTI ``data_road`` or images/ + masks/)."""
    if is_kitti_layout(data_root):
        return index_split(data_root, "training", skip_missing=skip_bad)
    if (data_root / "images").is_dir():
        return index_folder(data_root, skip_missing=skip_bad)
    raise SemsegError(
        f"{data_root} holds neither a KITTI training/ folder nor images/ and masks/ folders"
    )


def val_split_names(checkpoint: Path) -> list[str]:
    """The validation names of the run a checkpoint belongs to (``RUN/split.json``)."""
    for folder in (checkpoint.parent, checkpoint.parent.parent):
        if (folder / "split.json").is_file():
            return read_split(folder / "split.json")["val"]
    raise SemsegError(f"--split val: no split.json in the run of {checkpoint}")


def evaluate_samples(
    loaded: LoadedModel,
    samples: Sequence[Sample],
    reader: Callable[[Sample], tuple[np.ndarray, np.ndarray]],
    batch_size: int = 4,
    on_progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Score ``samples`` (read by ``reader``) and return the results as plain data."""
    predictor = Predictor(loaded, batch_size=batch_size)
    road = KittiRoadEvaluator()
    confusion: dict[str, ConfusionCounts] = {}
    image_counts: dict[str, int] = {}
    positive = loaded.positive_class
    for start in range(0, len(samples), predictor.batch_size):
        chunk = samples[start : start + predictor.batch_size]
        pairs = [reader(sample) for sample in chunk]
        probabilities = predictor.predict_batch([image for image, _ in pairs])
        for sample, (_, mask), probability in zip(chunk, pairs, probabilities, strict=True):
            valid = mask != IGNORE_INDEX
            road.update(sample.category, probability[positive], mask == positive, valid)
            labels = probability.argmax(axis=0)
            for group in (sample.category, "all"):
                confusion.setdefault(group, ConfusionCounts(loaded.num_classes))
                confusion[group].update(mask, labels)
                image_counts[group] = image_counts.get(group, 0) + 1
        if on_progress is not None:
            on_progress(len(chunk))
    try:
        scores = road.compute()
    except ValueError as error:
        raise SemsegError(f"cannot score: {error}") from error
    groups = {}
    for group, group_scores in scores.items():
        iou = confusion[group].iou()
        values = {key: getattr(group_scores, key) for key in SCORE_COLUMNS}
        values["iou"] = float(iou[positive])
        values["miou"] = float(np.nanmean(iou))
        values["pixel_accuracy"] = confusion[group].accuracy()
        values["num_images"] = image_counts[group]
        groups[group] = values
    ordered = {key: groups[key] for key in sorted(groups, key=lambda k: (k == "all", k))}
    return {
        "checkpoint": str(loaded.path),
        "model": loaded.model_name,
        "space": "perspective",
        "num_images": len(samples),
        "groups": ordered,
    }


def data_config_for(data_root: Path, class_table: str | None) -> DataConfig:
    kind = "kitti" if is_kitti_layout(data_root) else "folder"
    return DataConfig(kind=kind, root=str(data_root), class_table=class_table)

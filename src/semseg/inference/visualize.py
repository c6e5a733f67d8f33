"""Pictures of predictions and training curves."""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from pathlib import Path

import numpy as np

from semseg.io import write_bytes_atomic

ROAD_GREEN = np.array([0, 255, 0], dtype=np.float32)


def confidence_levels(probability: np.ndarray) -> np.ndarray:
    """A [0, 1] map as 8-bit levels, rounded as the devkit's metrics quantise it."""
    return np.round(np.clip(probability, 0.0, 1.0) * 255.0).astype(np.uint8)


def overlay(image: np.ndarray, road: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The image with ``road`` pixels (bool ``(H, W)``) tinted translucent green."""
    blended = image.astype(np.float32)
    blended[road] = (1 - alpha) * blended[road] + alpha * ROAD_GREEN
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def read_metrics_csv(path: Path) -> dict[str, list[tuple[int, float]]]:
    """Per-epoch values of each column of a run's ``metrics.csv``: name -> [(epoch, value)]."""
    series: dict[str, dict[int, float]] = defaultdict(dict)
    if not path.is_file():
        return {}
    with path.open(newline="") as stream:
        for row in csv.DictReader(stream):
            if not row.get("epoch"):
                continue
            epoch = int(float(row["epoch"]))
            for key, value in row.items():
                if key not in ("epoch", "seconds") and value not in ("", None):
                    series[key][epoch] = float(value)
    return {key: sorted(values.items()) for key, values in series.items()}


def plot_curves(metrics_csv: Path, out_png: Path, title: str = "") -> None:
    """Training/validation loss and validation MaxF/IoU (multi-class: mIoU / global accuracy)
    against epoch, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = read_metrics_csv(metrics_csv)
    figure, (loss_axis, score_axis) = plt.subplots(1, 2, figsize=(10, 3.6))
    for key in ("train_loss", "val_loss"):
        if key in series:
            epochs, values = zip(*series[key], strict=True)
            loss_axis.plot(epochs, values, marker="o", label=key)
    loss_axis.set_xlabel("epoch")
    loss_axis.set_ylabel("cross-entropy")
    loss_axis.legend()
    road = "val_maxf" in series  # binary road runs; multi-class runs log mIoU and accuracy
    for key in ("val_maxf", "val_iou") if road else ("val_miou", "val_acc"):
        if key in series:
            epochs, values = zip(*series[key], strict=True)
            score_axis.plot(epochs, values, marker="o", label=key)
    score_axis.set_xlabel("epoch")
    score_axis.set_ylabel("percent")
    score_axis.legend()
    figure.suptitle(title)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    write_bytes_atomic(out_png, buffer.getvalue())

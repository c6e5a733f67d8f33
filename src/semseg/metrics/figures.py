"""Figures of a multi-class evaluation: the confusion matrix and the per-class IoU bars.

Both are drawn with matplotlib's Agg backend into memory and written atomically as PNG.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from semseg.io import write_bytes_atomic

DPI = 100


def row_normalised(matrix: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (the share of a true class given to each prediction);
    rows of classes absent from the ground truth stay 0."""
    m = np.asarray(matrix, dtype=np.float64)
    totals = m.sum(axis=1, keepdims=True)
    return np.divide(m, totals, out=np.zeros_like(m), where=totals > 0)


def _pyplot():  # noqa: ANN202 - matplotlib's module
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure: object, out_png: Path | str) -> None:
    plt = _pyplot()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)  # type: ignore[attr-defined]
    plt.close(figure)
    write_bytes_atomic(out_png, buffer.getvalue())


def confusion_figure_size(num_classes: int) -> tuple[float, float]:
    """Figure size in inches: grows with the class count so names stay readable."""
    side = max(4.0, 0.5 * num_classes + 2.5)
    return side + 1.0, side


def plot_confusion_matrix(
    matrix: np.ndarray, names: Sequence[str], out_png: Path | str, title: str = ""
) -> None:
    """The row-normalised confusion matrix (rows: ground truth, columns: prediction) with the
    class names on both axes and the percentages in the cells."""
    plt = _pyplot()
    shares = row_normalised(matrix)
    k = len(names)
    if shares.shape != (k, k):
        raise ValueError(f"confusion matrix {shares.shape} does not fit {k} class names")
    figure, axis = plt.subplots(figsize=confusion_figure_size(k))
    shown = axis.imshow(shares * 100.0, cmap="Blues", vmin=0.0, vmax=100.0)
    figure.colorbar(shown, ax=axis, label="percent of the true class")
    axis.set_xticks(range(k), labels=list(names), rotation=60, ha="right")
    axis.set_yticks(range(k), labels=list(names))
    axis.set_xlabel("predicted class")
    axis.set_ylabel("true class")
    if k <= 25:
        for row in range(k):
            for col in range(k):
                value = shares[row, col] * 100.0
                colour = "white" if value > 50 else "black"
                axis.text(
                    col, row, f"{value:.0f}", ha="center", va="center", fontsize=7, color=colour
                )
    axis.set_title(title or "confusion matrix (row-normalised)")
    figure.tight_layout()
    _save(figure, out_png)


def plot_class_iou(
    iou: Sequence[float],
    names: Sequence[str],
    out_png: Path | str,
    colours: np.ndarray | None = None,
    title: str = "",
) -> None:
    """Horizontal bars of each class's IoU (percent), filled with the class colours when
    given; a class without an IoU (absent everywhere) is marked "n/a"."""
    plt = _pyplot()
    k = len(names)
    if len(iou) != k:
        raise ValueError(f"{len(iou)} IoU values for {k} class names")
    values = [0.0 if math.isnan(v) else float(v) for v in iou]
    fill = (
        [tuple(int(c) / 255 for c in colour) for colour in np.asarray(colours)]
        if colours is not None
        else ["tab:blue"] * k
    )
    figure, axis = plt.subplots(figsize=(7.0, max(2.5, 0.35 * k + 1.2)))
    positions = np.arange(k)[::-1]  # first class on top
    axis.barh(positions, values, color=fill, edgecolor="black", linewidth=0.5)
    for position, value, raw in zip(positions, values, iou, strict=True):
        label = "n/a" if math.isnan(raw) else f"{value:.1f}"
        axis.text(min(value, 100.0) + 1.0, position, label, va="center", fontsize=8)
    axis.set_yticks(positions, labels=list(names))
    axis.set_xlim(0.0, 110.0)
    axis.set_xlabel("IoU (percent)")
    present = [v for v in iou if not math.isnan(v)]
    mean = sum(present) / len(present) if present else math.nan
    axis.set_title(title or f"per-class IoU (mIoU {mean:.1f})")
    figure.tight_layout()
    _save(figure, out_png)


__all__ = ["confusion_figure_size", "plot_class_iou", "plot_confusion_matrix", "row_normalised"]

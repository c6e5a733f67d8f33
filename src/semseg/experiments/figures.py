"""The figures of a sweep or comparison: loss and validation MaxF (mIoU for multi-class runs)
curves, one line per run, and the grid of the same validation images predicted by each run's
best checkpoint."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from semseg.errors import SemsegError
from semseg.io import write_bytes_atomic
from semseg.runs import RunDir

if TYPE_CHECKING:
    from semseg.experiments.results import RunResult


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Path, dpi: int = 100) -> None:
    plt = _pyplot()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    plt.close(figure)
    write_bytes_atomic(path, buffer.getvalue())


def score_curve(results: Sequence[RunResult]) -> tuple[str, str]:
    """The ``metrics.csv`` column and name of the per-epoch validation score the runs are
    chosen by: ``val_maxf`` (MaxF) for binary runs, ``val_miou`` (mIoU) for multi-class ones."""
    if results and results[0].is_multiclass:
        return "val_miou", "mIoU"
    return "val_maxf", "MaxF"


def plot_sweep_curves(results: Sequence[RunResult], path: Path, title: str = "") -> None:
    """Training loss and validation MaxF (mIoU) per epoch, one line per run, legend = setting."""
    from semseg.inference.visualize import read_metrics_csv

    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    score_key, score_name = score_curve(results)
    figure, (loss_axis, score_axis) = plt.subplots(1, 2, figsize=(12, 4.2))
    for r in results:
        series = read_metrics_csv(RunDir(r.run_dir).metrics)
        label = f"{r.label} (best)" if r.best else r.label
        width = 2.6 if r.best else 1.4
        for axis, key in ((loss_axis, "train_loss"), (score_axis, score_key)):
            values = [value for _, value in series.get(key, [])]
            if values:
                epochs = range(1, len(values) + 1)
                axis.plot(epochs, values, marker="o", markersize=3, linewidth=width, label=label)
    loss_axis.set(xlabel="epoch", ylabel="cross-entropy", title="training loss")
    score_axis.set(xlabel="epoch", ylabel="percent", title=f"validation {score_name} (per epoch)")
    for axis in (loss_axis, score_axis):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    _save(figure, path)


@dataclass
class RunData:
    """What the prediction grid needs from one run: its validation names and a sample reader."""

    val_names: list[str]
    samples: dict[str, Any]
    reader: Callable[[Any], tuple[np.ndarray, np.ndarray]] | None


def run_data(run_dir: Path) -> RunData:
    """A run's validation names and labelled samples, from its config.yaml and split.json."""
    from semseg.data.datamodule import index_samples, make_reader

    run = RunDir(run_dir)
    config = run.read_config()
    val_names = list(run.read_split()["val"])
    root = Path(config.data.root or "")
    if not root.is_dir() and run.data.is_dir():  # generated data, run moved
        root = run.data
    config.data.root = str(root)
    if config.data.kind == "synthetic":
        config.data.kind = "kitti"
    try:
        samples = {s.name: s for s in index_samples(config.data)}
        reader = make_reader(config.data, config.model.num_classes)
    except SemsegError:
        return RunData(val_names, {}, None)
    return RunData(val_names, samples, reader)


def grid_names(runs: Sequence[RunData], count: int) -> list[str]:
    """The first ``count`` validation names of the first run that every run validates on."""
    first = runs[0].val_names
    common = [name for name in first if all(name in r.val_names for r in runs[1:])]
    return (common or first)[:count]


def predict_overlays(
    run_dir: Path, pairs: Sequence[tuple[np.ndarray, np.ndarray]]
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The run's best-checkpoint predictions (full resolution) of the ``(image, mask)`` pairs and
    their ground truths, as overlays: the road in green for a binary run, every class in the
    checkpoint's palette for a multi-class run."""
    from semseg.inference.checkpoint import load_model
    from semseg.inference.palette import blend
    from semseg.inference.predictor import Predictor
    from semseg.inference.visualize import overlay

    loaded = load_model(RunDir(run_dir).best_checkpoint())
    images, masks = [image for image, _ in pairs], [mask for _, mask in pairs]
    predicted = [p.argmax(axis=0) for p in Predictor(loaded).predict(images)]

    def paint(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
        if loaded.is_multiclass:
            return blend(image, labels, loaded.class_colours)
        return overlay(image, labels == loaded.positive_class)

    return (
        [paint(image, labels) for image, labels in zip(images, predicted, strict=True)],
        [paint(image, mask) for image, mask in zip(images, masks, strict=True)],
    )


def grid_caption(result: RunResult) -> str:
    """A grid column's header: the setting (``*`` for the best) and its MaxF or mIoU."""
    name, value = ("mIoU", result.miou) if result.is_multiclass else ("MaxF", result.max_f)
    score = f"{name} {value:.1f}" if value is not None else f"{name} n/a"
    return f"{'* ' if result.best else ''}{result.label}\n{score}"


def plot_prediction_grid(results: Sequence[RunResult], path: Path, count: int) -> list[str]:
    """Rows: the same validation images; columns: ground truth, then each run's prediction.

    Each cell is the overlay of the run's best-checkpoint prediction; column headers name the
    setting and its MaxF (mIoU for multi-class runs). Returns warnings (runs whose data could
    not be read are blank).
    """
    warnings: list[str] = []
    runs = [run_data(r.run_dir) for r in results]
    names = grid_names(runs, count)
    columns: list[tuple[str, list[np.ndarray | None]]] = []
    truth: list[np.ndarray | None] = [None] * len(names)
    for r, data in zip(results, runs, strict=True):
        cells: list[np.ndarray | None] = [None] * len(names)
        present = [i for i, name in enumerate(names) if name in data.samples]
        if data.reader is None or len(present) < len(names):
            warnings.append(f"grid: images of {r.run_dir} not found; its cells are blank")
        if data.reader is not None and present:
            pairs = [data.reader(data.samples[names[i]]) for i in present]
            predictions, truths = predict_overlays(r.run_dir, pairs)
            for i, prediction, true in zip(present, predictions, truths, strict=True):
                cells[i] = prediction
                if truth[i] is None:
                    truth[i] = true
        columns.append((grid_caption(r), cells))
    columns.insert(0, ("ground truth", truth))
    _draw_grid(columns, names, path)
    return warnings


def _draw_grid(
    columns: Sequence[tuple[str, Sequence[np.ndarray | None]]], names: Sequence[str], path: Path
) -> None:
    plt = _pyplot()
    rows = max(1, len(names))
    shapes = [cell.shape for _, cells in columns for cell in cells if cell is not None]
    aspect = shapes[0][0] / shapes[0][1] if shapes else 0.3
    cell_width = 3.2
    figure, axes = plt.subplots(
        rows,
        len(columns),
        figsize=(cell_width * len(columns), cell_width * aspect * rows + 0.9),
        squeeze=False,
    )
    for col, (header, cells) in enumerate(columns):
        for row in range(rows):
            axis = axes[row][col]
            axis.set_xticks([])
            axis.set_yticks([])
            cell = cells[row] if row < len(cells) else None
            if cell is not None:
                axis.imshow(cell)
            else:
                axis.text(0.5, 0.5, "n/a", ha="center", va="center", transform=axis.transAxes)
            if row == 0:
                axis.set_title(header, fontsize=9)
            if col == 0 and row < len(names):
                axis.set_ylabel(names[row], fontsize=8)
    figure.tight_layout()
    _save(figure, path)

"""The results table of a sweep or comparison: one row per finished run, ranked, as CSV and
Markdown, plus the figures (:mod:`semseg.experiments.figures`).

Binary road runs are scored by the devkit's MaxF, AP and road IoU; multi-class runs (more than
two classes) by mIoU, class-average accuracy and global (pixel) accuracy. One table holds runs of
one kind, ranked by default by MaxF or mIoU."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from semseg.errors import SemsegError
from semseg.experiments.figures import plot_prediction_grid, plot_sweep_curves
from semseg.io import write_text_atomic
from semseg.runs import RunDir, run_groups

GRID_IMAGES = 4
RESULTS_CSV, RESULTS_MD = "results.csv", "results.md"
CURVES_PNG, GRID_PNG = "curves.png", "grid.png"

BINARY, MULTICLASS = "binary", "multiclass"
TASK_NAMES = {BINARY: "binary (road)", MULTICLASS: "multi-class"}

RANK_KEYS: dict[str, tuple[bool, str]] = {
    "max_f": (True, "MaxF"),
    "ap": (True, "AP"),
    "iou": (True, "IoU"),
    "miou": (True, "mIoU"),
    "mean_acc": (True, "mean acc"),
    "global_acc": (True, "global acc"),
    "train_loss": (False, "train loss"),
    "val_loss": (False, "val loss"),
}

SCORE_KEYS = {BINARY: ("max_f", "ap", "iou"), MULTICLASS: ("miou", "mean_acc", "global_acc")}
LOSS_KEYS = ("train_loss", "val_loss")
DEFAULT_RANK = {BINARY: "max_f", MULTICLASS: "miou"}

RANK_ALIASES = {
    "maxf": "max_f",
    "val_maxf": "max_f",
    "val_ap": "ap",
    "val_iou": "iou",
    "val_miou": "miou",
    "mean_accuracy": "mean_acc",
    "global_accuracy": "global_acc",
    "val_acc": "global_acc",
    "loss": "train_loss",
}


RESULT_COLUMNS = ("train_loss", "val_loss", "max_f", "ap", "iou", "epochs", "wall_s")


def result_columns(task: str = BINARY) -> tuple[str, ...]:
    """The score columns of a table of ``task`` runs: losses, the task's scores, epochs, time."""
    return (*LOSS_KEYS, *SCORE_KEYS[task], "epochs", "wall_s")


def task_of_classes(num_classes: int) -> str:
    """``multiclass`` for more than two classes; two classes are scored as road (binary)."""
    return MULTICLASS if num_classes > 2 else BINARY


def normalize_rank_key(text: str | None) -> str | None:
    """``val_maxf`` -> ``max_f`` etc.; a SemsegError for a key that is not a results column.
    ``None`` (no key given) stays ``None``: the runs' task decides (:func:`resolve_rank_key`)."""
    if text is None:
        return None
    key = RANK_ALIASES.get(text.strip().lower(), text.strip().lower())
    if key not in RANK_KEYS:
        choices = ", ".join([*RANK_KEYS, *RANK_ALIASES])
        raise SemsegError(f"--rank-by must be one of {choices}; got {text!r}")
    return key


def rank_keys(task: str) -> tuple[str, ...]:
    """The keys runs of ``task`` can be ranked by."""
    return (*SCORE_KEYS[task], *LOSS_KEYS)


def resolve_rank_key(key: str | None, task: str) -> str:
    """``key`` checked against what ``task`` runs have, or the task's default (MaxF or mIoU)."""
    if key is None:
        return DEFAULT_RANK[task]
    if key not in rank_keys(task):
        raise SemsegError(
            f"--rank-by {key}: {TASK_NAMES[task]} runs have no {key}; "
            f"available: {', '.join(rank_keys(task))}"
        )
    return key


@dataclass
class RunResult:
    """One row of the results table."""

    label: str
    values: dict[str, Any]
    run_dir: Path
    train_loss: float | None = None
    val_loss: float | None = None
    max_f: float | None = None
    ap: float | None = None
    iou: float | None = None
    miou: float | None = None
    mean_acc: float | None = None
    global_acc: float | None = None
    epochs: int | None = None
    wall_s: float | None = None
    best: bool = False
    task: str = BINARY

    @property
    def is_multiclass(self) -> bool:
        return self.task == MULTICLASS

    def score(self, key: str) -> float | int | None:
        """The value of results column ``key`` (a score, a loss, ``epochs`` or ``wall_s``)."""
        return getattr(self, key)


def evaluation_task(evaluation: dict[str, Any]) -> str:
    """Whether an ``eval_val.json`` holds multi-class scores (``"task": "multiclass"``, or an
    ``all`` group with mIoU but no MaxF) or binary road scores."""
    if evaluation.get("task") == MULTICLASS:
        return MULTICLASS
    scores = run_groups(evaluation).get("all", {})
    if evaluation.get("task") is None and "max_f" not in scores and "miou" in scores:
        return MULTICLASS
    return BINARY


def collect_result(run_dir: Path, label: str, values: dict[str, Any]) -> RunResult:
    """Scores of a finished run: ``eval_val.json`` (full resolution) and its epoch logs."""
    from semseg.inference.visualize import read_metrics_csv

    run = RunDir(run_dir)
    evaluation = run.read_eval()
    task = evaluation_task(evaluation)
    scores = run_groups(evaluation)["all"]
    series = read_metrics_csv(run.metrics)
    train_losses = [value for _, value in series.get("train_loss", [])]
    val_losses = [value for _, value in series.get("val_loss", [])]
    return RunResult(
        label=label,
        values=dict(values),
        run_dir=run.path,
        train_loss=train_losses[-1] if train_losses else None,
        val_loss=val_losses[-1] if val_losses else None,
        epochs=len(train_losses) or None,
        wall_s=epoch_seconds(run.log),
        task=task,
        **{key: _number(scores.get(key)) for key in SCORE_KEYS[task]},
    )


def results_task(results: Sequence[RunResult]) -> str:
    """The one task of the rows; a SemsegError naming a run of each kind if they are mixed."""
    first = {r.task: r for r in results}
    if len(first) > 1:
        binary, multiclass = first[BINARY], first[MULTICLASS]
        raise SemsegError(
            f"cannot rank binary (road) and multi-class runs together: {binary.run_dir.name} is "
            f"binary, {multiclass.run_dir.name} is multi-class; compare runs of one kind"
        )
    return next(iter(first), BINARY)


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def epoch_seconds(train_log: Path) -> float | None:
    """Wall time of training (the epochs' training + validation) from ``train.log``'s lines."""
    if not train_log.is_file():
        return None
    total, found = 0.0, False
    for line in train_log.read_text().splitlines():
        words = line.split()
        if words and words[-1].endswith("s"):
            try:
                total += float(words[-1][:-1])
                found = True
            except ValueError:
                continue
    return total if found else None


def choose_best(results: Sequence[RunResult], rank_by: str) -> int | None:
    """Index of the best row by ``rank_by`` (first one on ties; rows without a value skipped)."""
    higher, _ = RANK_KEYS[rank_by]
    scored = [(i, r.score(rank_by)) for i, r in enumerate(results)]
    scored = [(i, value) for i, value in scored if value is not None]
    if not scored:
        return None
    pick = max if higher else min
    return pick(scored, key=lambda pair: (pair[1], -pair[0]) if higher else (pair[1], pair[0]))[0]


def best_line(result: RunResult, rank_by: str) -> str:
    """``best: keep_prob=0.75 (MaxF 93.1)``; ``(mIoU 55.1)`` for multi-class runs."""
    _, label = RANK_KEYS[rank_by]
    value = result.score(rank_by)
    shown = f"{label} {value:.4f}" if rank_by.endswith("loss") else f"{label} {value:.1f}"
    primary = DEFAULT_RANK[result.task]
    if rank_by != primary and result.score(primary) is not None:
        shown += f", {RANK_KEYS[primary][1]} {result.score(primary):.1f}"
    return f"best: {result.label} ({shown})"


def _cell(value: Any, digits: int) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _value_text(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ",".join(_value_text(item) for item in value) + "]"
    return str(value)


def results_csv(results: Sequence[RunResult], fields_: Sequence[str], task: str = BINARY) -> str:
    """The table as CSV: best mark, setting, one column per varied field, the scores, folder."""
    columns = result_columns(task)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["best", "setting", *fields_, *columns, "run_dir"])
    for r in results:
        scores = [r.score(key) for key in columns[:-2]]
        writer.writerow(
            ["*" if r.best else "", r.label]
            + [_value_text(r.values.get(dotted, "")) for dotted in fields_]
            + ["" if v is None else f"{v:.6g}" for v in scores]
            + ["" if r.epochs is None else r.epochs, "" if r.wall_s is None else f"{r.wall_s:.1f}"]
            + [str(r.run_dir)]
        )
    return buffer.getvalue()


SCORES_NOTE = {
    BINARY: "MaxF, AP and IoU are the devkit's scores",
    MULTICLASS: "mIoU, mean acc (class-average accuracy) and global acc (pixel accuracy) are "
    "the scores",
}


def table_cells(r: RunResult, task: str) -> list[str]:
    """One row of the printed tables (Markdown, terminal): best mark, setting, the columns."""
    digits = {"train_loss": 4, "val_loss": 4, "epochs": 0, "wall_s": 1}
    return ["*" if r.best else "", r.label] + [
        _cell(r.score(key), digits.get(key, 2)) for key in result_columns(task)
    ]


def table_headers(task: str) -> list[str]:
    return ["best", "setting"] + [
        RANK_KEYS[key][1] if key in RANK_KEYS else key.replace("_", " ")
        for key in result_columns(task)
    ]


def results_markdown(
    results: Sequence[RunResult],
    rank_by: str,
    title: str,
    missing: dict[str, str] | None = None,
    task: str = BINARY,
) -> str:
    """The table as Markdown, the ``best:`` line and the two figures."""
    higher, label = RANK_KEYS[rank_by]
    headers = table_headers(task)
    lines = [
        f"# {title}",
        "",
        f"Ranked by {label} ({'higher' if higher else 'lower'} is better). {SCORES_NOTE[task]} "
        "of each run's best checkpoint on its validation split at full resolution "
        "(eval_val.json); losses are the last epoch's means.",
        "",
        "| " + " | ".join(headers) + " |",
        "|:---:|---|" + "---:|" * (len(headers) - 2),
    ]
    for r in results:
        cells = table_cells(r, task)
        cells[1] = cells[1].replace("|", "\\|")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    best = next((r for r in results if r.best), None)
    lines.append(best_line(best, rank_by) if best else f"best: none (no run has {label})")
    for name, error in (missing or {}).items():
        lines.append(f"\nnot finished: {name} ({error})")
    lines += ["", "![curves](curves.png)", "", "![predictions](grid.png)", ""]
    return "\n".join(lines)


@dataclass
class Report:
    """The rows (best marked) and the files a sweep or comparison wrote."""

    results: list[RunResult]
    rank_by: str
    out_dir: Path
    best: RunResult | None
    warnings: list[str] = field(default_factory=list)
    task: str = BINARY

    @property
    def files(self) -> list[Path]:
        names = (RESULTS_CSV, RESULTS_MD, CURVES_PNG, GRID_PNG)
        return [self.out_dir / name for name in names]


def write_report(
    results: list[RunResult],
    out_dir: Path,
    rank_by: str | None,
    title: str,
    grid_images: int = GRID_IMAGES,
    fields_: Sequence[str] | None = None,
    missing: dict[str, str] | None = None,
) -> Report:
    """Rank the rows, then write results.csv, results.md, curves.png and grid.png atomically.

    ``rank_by`` ``None``: MaxF for binary runs, mIoU for multi-class ones. Mixed runs, or a key
    the runs do not have, are a SemsegError before anything is written.
    """
    task = results_task(results)
    rank_by = resolve_rank_key(normalize_rank_key(rank_by), task)
    out_dir.mkdir(parents=True, exist_ok=True)
    for r in results:
        r.best = False
    index = choose_best(results, rank_by)
    if index is not None:
        results[index].best = True
    if fields_ is None:
        fields_ = list(dict.fromkeys(dotted for r in results for dotted in r.values))
    write_text_atomic(out_dir / RESULTS_CSV, results_csv(results, fields_, task))
    markdown = results_markdown(results, rank_by, title, missing, task)
    write_text_atomic(out_dir / RESULTS_MD, markdown)
    best = results[index] if index is not None else None
    report = Report(results, rank_by, out_dir, best, task=task)
    plot_sweep_curves(results, out_dir / CURVES_PNG, title=title)
    report.warnings += plot_prediction_grid(results, out_dir / GRID_PNG, grid_images)
    return report

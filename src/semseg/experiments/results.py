"""The results table of a sweep or comparison: one row per finished run, ranked, as CSV and
Markdown, plus the figures (:mod:`semseg.experiments.figures`)."""

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

RANK_KEYS: dict[str, tuple[bool, str]] = {
    "max_f": (True, "MaxF"),
    "ap": (True, "AP"),
    "iou": (True, "IoU"),
    "train_loss": (False, "train loss"),
    "val_loss": (False, "val loss"),
}


RANK_ALIASES = {
    "maxf": "max_f",
    "val_maxf": "max_f",
    "val_ap": "ap",
    "val_iou": "iou",
    "loss": "train_loss",
}


RESULT_COLUMNS = ("train_loss", "val_loss", "max_f", "ap", "iou", "epochs", "wall_s")


def normalize_rank_key(text: str) -> str:
    """``val_maxf`` -> ``max_f`` etc.; a SemsegError for a key that is not a results column."""
    key = RANK_ALIASES.get(text.strip().lower(), text.strip().lower())
    if key not in RANK_KEYS:
        choices = ", ".join([*RANK_KEYS, *RANK_ALIASES])
        raise SemsegError(f"--rank-by must be one of {choices}; got {text!r}")
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
    epochs: int | None = None
    wall_s: float | None = None
    best: bool = False


def collect_result(run_dir: Path, label: str, values: dict[str, Any]) -> RunResult:
    """Scores of a finished run: ``eval_val.json`` (full resolution) and its epoch logs."""
    from semseg.inference.visualize import read_metrics_csv

    run = RunDir(run_dir)
    scores = run_groups(run.read_eval())["all"]
    series = read_metrics_csv(run.metrics)
    train_losses = [value for _, value in series.get("train_loss", [])]
    val_losses = [value for _, value in series.get("val_loss", [])]
    return RunResult(
        label=label,
        values=dict(values),
        run_dir=run.path,
        train_loss=train_losses[-1] if train_losses else None,
        val_loss=val_losses[-1] if val_losses else None,
        max_f=_number(scores.get("max_f")),
        ap=_number(scores.get("ap")),
        iou=_number(scores.get("iou")),
        epochs=len(train_losses) or None,
        wall_s=epoch_seconds(run.log),
    )


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
    scored = [(i, getattr(r, rank_by)) for i, r in enumerate(results)]
    scored = [(i, value) for i, value in scored if value is not None]
    if not scored:
        return None
    pick = max if higher else min
    return pick(scored, key=lambda pair: (pair[1], -pair[0]) if higher else (pair[1], pair[0]))[0]


def best_line(result: RunResult, rank_by: str) -> str:
    """``best: keep_prob=0.75 (MaxF 93.1)``."""
    _, label = RANK_KEYS[rank_by]
    value = getattr(result, rank_by)
    shown = f"{label} {value:.4f}" if rank_by.endswith("loss") else f"{label} {value:.1f}"
    if rank_by != "max_f" and result.max_f is not None:
        shown += f", MaxF {result.max_f:.1f}"
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


def results_csv(results: Sequence[RunResult], fields_: Sequence[str]) -> str:
    """The table as CSV: best mark, setting, one column per varied field, the scores, folder."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["best", "setting", *fields_, *RESULT_COLUMNS, "run_dir"])
    for r in results:
        scores = [r.train_loss, r.val_loss, r.max_f, r.ap, r.iou]
        writer.writerow(
            ["*" if r.best else "", r.label]
            + [_value_text(r.values.get(dotted, "")) for dotted in fields_]
            + ["" if v is None else f"{v:.6g}" for v in scores]
            + ["" if r.epochs is None else r.epochs, "" if r.wall_s is None else f"{r.wall_s:.1f}"]
            + [str(r.run_dir)]
        )
    return buffer.getvalue()


def results_markdown(
    results: Sequence[RunResult],
    rank_by: str,
    title: str,
    missing: dict[str, str] | None = None,
) -> str:
    """The table as Markdown, the ``best:`` line and the two figures."""
    higher, label = RANK_KEYS[rank_by]
    lines = [
        f"# {title}",
        "",
        f"Ranked by {label} ({'higher' if higher else 'lower'} is better). MaxF, AP and IoU are "
        "the devkit's scores of each run's best checkpoint on its validation split at full "
        "resolution (eval_val.json); losses are the last epoch's means.",
        "",
        "| best | setting | train loss | val loss | MaxF | AP | IoU | epochs | wall s |",
        "|:---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        cells = [
            "*" if r.best else "",
            r.label.replace("|", "\\|"),
            _cell(r.train_loss, 4),
            _cell(r.val_loss, 4),
            _cell(r.max_f, 2),
            _cell(r.ap, 2),
            _cell(r.iou, 2),
            _cell(r.epochs, 0),
            _cell(r.wall_s, 1),
        ]
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

    @property
    def files(self) -> list[Path]:
        names = (RESULTS_CSV, RESULTS_MD, CURVES_PNG, GRID_PNG)
        return [self.out_dir / name for name in names]


def write_report(
    results: list[RunResult],
    out_dir: Path,
    rank_by: str,
    title: str,
    grid_images: int = GRID_IMAGES,
    fields_: Sequence[str] | None = None,
    missing: dict[str, str] | None = None,
) -> Report:
    """Rank the rows, then write results.csv, results.md, curves.png and grid.png atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for r in results:
        r.best = False
    index = choose_best(results, rank_by)
    if index is not None:
        results[index].best = True
    if fields_ is None:
        fields_ = list(dict.fromkeys(dotted for r in results for dotted in r.values))
    write_text_atomic(out_dir / RESULTS_CSV, results_csv(results, fields_))
    write_text_atomic(out_dir / RESULTS_MD, results_markdown(results, rank_by, title, missing))
    report = Report(results, rank_by, out_dir, results[index] if index is not None else None)
    plot_sweep_curves(results, out_dir / CURVES_PNG, title=title)
    report.warnings += plot_prediction_grid(results, out_dir / GRID_PNG, grid_images)
    return report

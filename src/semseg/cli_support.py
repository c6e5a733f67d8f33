"""Shared pieces of the ``semseg`` command: the consoles, progress bars, score tables and the
inference options that ``evaluate`` and ``predict`` share (one options object, choices as enums).
"""

from __future__ import annotations

import functools
import inspect
import sys
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from semseg.inference.options import Backend, BackendOptions, Precision

# Outside a terminal rich would wrap tables at 80 columns; logs and CI read better wider.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True)


def progress_bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=False,
        disable=not err_console.is_terminal,
    )


def print_scores(results: dict, title: str) -> None:
    if results.get("task") == "multiclass":
        print_multiclass_scores(results, title)
        return
    table = Table(title=title)
    columns = (
        "max_f",
        "ap",
        "precision",
        "recall",
        "fpr",
        "fnr",
        "best_threshold",
        "iou",
        "miou",
        "pixel_accuracy",
        "num_images",
    )
    headers = ("MaxF", "AP", "PRE", "REC", "FPR", "FNR", "thresh", "IoU", "mIoU", "acc", "images")
    table.add_column("group")
    for header in headers:
        table.add_column(header, justify="right")
    for space, groups in results_by_space(results):
        for group, values in groups.items():
            label = group if space == "perspective" else f"{group} ({space})"
            cells = []
            for column in columns:
                value = values.get(column)
                if value is None:
                    cells.append("")
                elif column == "num_images":
                    cells.append(str(int(value)))
                elif column == "best_threshold":
                    cells.append(f"{value:.3f}")
                else:
                    cells.append(f"{value:.2f}")
            table.add_row(label, *cells)
    console.print(table)


def print_multiclass_scores(results: dict, title: str) -> None:
    """Per class IoU and accuracy, then mIoU, class-average and global accuracy (percent)."""
    table = Table(title=title)
    for header in ("class", "IoU", "accuracy"):
        table.add_column(header, justify="left" if header == "class" else "right")
    for name, values in results["per_class"].items():
        table.add_row(name, *(_percent(values.get(key)) for key in ("iou", "accuracy")))
    overall = results["groups"]["all"]
    table.add_section()
    table.add_row("mIoU", _percent(overall.get("miou")), "")
    table.add_row("class-average accuracy", "", _percent(overall.get("mean_acc")))
    table.add_row("global accuracy", "", _percent(overall.get("global_acc")))
    table.add_row("frequency-weighted IoU", _percent(overall.get("fwiou")), "")
    console.print(table)
    console.print(f"{overall.get('num_images', 0)} images, void pixels ignored")
    if "mask_ap_note" in results:
        print_mask_ap(results)


def print_mask_ap(results: dict) -> None:
    """An instance model's mask AP (maskrcnn-semantic), or why there is none."""
    scores = results.get("mask_ap")
    if scores is None:
        console.print(results["mask_ap_note"], markup=False)
        return
    per_class = ", ".join(f"{name} {_percent(ap)}" for name, ap in scores["per_class"].items())
    console.print(
        f"mask AP {_percent(scores['ap'])}  AP50 {_percent(scores['ap50'])}  "
        f"AP75 {_percent(scores['ap75'])}  ({per_class}; {scores['instances']} instances, "
        f"{scores['detections']} detections)",
        markup=False,
    )
    console.print(results["mask_ap_note"], markup=False)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def results_by_space(results: dict) -> list[tuple[str, dict]]:
    if "spaces" in results:
        return [(space, r["groups"]) for space, r in results["spaces"].items()]
    return [(results.get("space", "perspective"), results["groups"])]


# Inference options shared by `semseg evaluate` and `semseg predict`: the fully connected CRF
# (defaults are DeepLab v1's) and the backend (semseg.inference.autotune). Declared once here and
# added to each command by @inference_options, which hands the command one InferenceOptions.
def _inference_parameters(default_backend: str) -> list[inspect.Parameter]:
    def option(name: str, kind, default, *flags: str, **extra) -> inspect.Parameter:
        annotation = Annotated[kind, typer.Option(*flags, **extra)]
        return inspect.Parameter(
            name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
        )

    crf_help = 'Refine with a fully connected CRF (meant for DeepLab; pip install -e ".\\[crf]").'
    return [
        option("crf", bool, False, "--crf", help=crf_help),
        option("crf_iters", int | None, None, min=1, help="CRF mean-field iterations [10]."),
        option("crf_pos_sxy", float | None, None, help="CRF positional kernel sxy, pixels [3]."),
        option("crf_pos_w", float | None, None, help="CRF positional kernel weight [3]."),
        option("crf_bi_sxy", float | None, None, help="CRF bilateral kernel sxy, pixels [121]."),
        option("crf_bi_srgb", float | None, None, help="CRF bilateral kernel srgb [5]."),
        option("crf_bi_w", float | None, None, help="CRF bilateral kernel weight [4]."),
        option(
            "backend",
            Backend,
            Backend(default_backend),
            case_sensitive=False,
            help="auto: the fastest path that holds parity with fp32 eager (calibrated once per "
            "machine and checkpoint); torch; onnxruntime (a .onnx file, or a checkpoint exported "
            "once to the cache).",
        ),
        option(
            "precision",
            Precision | None,
            None,
            help="32, bf16 (torch) or int8 (quantized once on images of your data, cached; "
            "onnxruntime, or torch's PT2E int8 with --backend torch: faster per image, seconds "
            "longer to start). auto tries each where the CPU has the instructions; torch: 32.",
        ),
        option(
            "channels_last",
            bool | None,
            None,
            "--channels-last/--no-channels-last",
            help="NHWC layout (torch).",
        ),
        option(
            "compile_",
            bool,
            False,
            "--compile",
            help="torch.compile (inductor; tens of seconds per input shape).",
        ),
        option("threads", int | None, None, min=1, help="onnxruntime threads \\[torch's]."),
        option(
            "recalibrate",
            bool,
            False,
            "--recalibrate",
            help="auto: calibrate again, ignore the cached choice.",
        ),
    ]


@dataclass(frozen=True)
class InferenceOptions:
    """The CRF settings (a ``CRFParams``, None without --crf) and the backend options."""

    crf: Any
    backend: BackendOptions


def inference_options(default_backend: str):
    """Add the shared CRF and backend options to a command; it receives ``inference``."""

    def decorate(command):
        parameters = _inference_parameters(default_backend)
        names = [p.name for p in parameters]
        signature = inspect.signature(command, eval_str=True)
        kept = [p for p in signature.parameters.values() if p.name != "inference"]

        @functools.wraps(command)
        def wrapper(*args, **kwargs):
            from semseg.inference.crf import crf_params

            values = {name: kwargs.pop(name, None) for name in names}
            crf = crf_params(
                bool(values["crf"]),
                iterations=values["crf_iters"],
                pos_sxy=values["crf_pos_sxy"],
                pos_w=values["crf_pos_w"],
                bi_sxy=values["crf_bi_sxy"],
                bi_srgb=values["crf_bi_srgb"],
                bi_w=values["crf_bi_w"],
            )
            backend = BackendOptions(
                str(values["backend"] or default_backend),  # str of the enum: its value
                None if values["precision"] is None else str(values["precision"]),
                values["channels_last"],
                bool(values["compile_"]),
                values["threads"],
                bool(values["recalibrate"]),
            )
            return command(*args, inference=InferenceOptions(crf, backend), **kwargs)

        wrapper.__signature__ = signature.replace(parameters=[*kept, *parameters])
        return wrapper

    return decorate


def load_any_model(path: Path):
    """A checkpoint, a semseg ONNX export (.onnx: runs with onnxruntime) or an AOTInductor
    package (.pt2: runs as compiled)."""
    if path.suffix.lower() == ".pt2":
        from semseg.inference.aot import load_pt2_model

        return load_pt2_model(path)[0]
    if path.suffix.lower() == ".onnx":
        from semseg.inference.onnx_export import load_onnx_model

        return load_onnx_model(path)
    from semseg.inference.checkpoint import load_model

    return load_model(path)


def choose_backend(loaded, options, image=None, batch_size=1, images=None, lines=None):
    """The backend the options ask for; says which on one stderr line. ``images``: calibration
    images for an int8 model (a list, or a function that reads them when needed); ``lines``: a
    list that also receives every line printed."""
    from semseg.inference.autotune import choose_backend as choose

    def announce(line: str) -> None:
        print(line, file=sys.stderr, flush=True)
        if lines is not None:
            lines.append(line)

    engine, choice = choose(
        loaded, options, image=image, images=images, announce=announce, batch_size=batch_size
    )
    announce(choice.line(engine))
    return engine


class Split(StrEnum):
    all = "all"
    train = "train"
    val = "val"
    test = "test"


class Space(StrEnum):
    perspective = "perspective"
    bev = "bev"
    both = "both"


RANK_HELP = (
    "Default max_f (binary road runs) or miou (multi-class runs); also ap, iou (binary), "
    "mean_acc, global_acc (multi-class), train_loss or val_loss."
)


def print_report(report) -> None:
    """The results table of a sweep or comparison, the best line and where the files are."""
    from semseg.experiments import best_line, table_cells, table_headers

    table = Table(title=f"ranked by {report.rank_by}")
    for header in table_headers(report.task):
        table.add_column(header, justify="left" if header == "setting" else "right")
    for r in report.results:
        table.add_row(*table_cells(r, report.task))
    console.print(table)
    for warning in report.warnings:
        err_console.print(warning)
    if report.best is not None:
        console.print(best_line(report.best, report.rank_by))
    for path in report.files:
        console.print(f"{path.name}: {path}")


def quantize_table(result, data: Path) -> Table:
    """``semseg quantize``'s report: each calibration method tried, int8 against fp32."""
    table = Table(
        title=f"int8 vs fp32 on {len(result.eval_images)} image(s) of {data}"
        + ("" if result.held_out else " (the calibration images)")
    )
    for column in (
        "calibration",
        "metric",
        "int8",
        "fp32",
        "diff",
        "labels agree %",
        "max |dp|",
        "mean |dp|",
        "s",
    ):
        table.add_column(column, justify="left" if column in ("calibration", "metric") else "right")
    for trial in result.trials:
        c = trial.comparison
        name = trial.method + (" (chosen)" if trial is result.chosen else "")
        if c is None:
            table.add_row(name, trial.note, *[""] * 7)
            continue
        scores = (
            [f"{c.int8_score:.2f}", f"{c.fp32_score:.2f}", f"{c.score_diff:+.2f}"]
            if c.metric
            else ["", "", ""]
        )
        table.add_row(
            name,
            c.metric or "-",
            *scores,
            f"{100 * c.label_agreement:.3f}",
            f"{c.max_abs_prob_diff:.3g}",
            f"{c.mean_abs_prob_diff:.2g}",
            f"{trial.seconds:.0f}",
        )
    return table

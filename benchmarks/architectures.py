"""The FCN-family architectures side by side: same data, same CPU budget, same settings.

Trains each model with :func:`semseg.training.train` (configuration ``kitti_fcn8s`` at a reduced
size, the same seed and so the same train/validation split, Adam at the same learning rate, the
same number of seconds of CPU), then reports the run's full-resolution validation MaxF and road IoU
(``eval_val.json``, group ``all``), the epochs that fitted in the budget, the parameters (of
the real architecture at width 1, and of the trained one), and inference seconds per image of
the width-1 architecture (batch 1, 160 x 576, median of ``--repeats`` after one warm-up; the
weights do not matter for timing, so these are untrained models).

The budget is CPU time of this process by default (``--budget-s`` seconds of ``--threads``
threads, validation included, checked after every training step), not wall-clock time: on a
shared machine other processes would otherwise decide how many steps each model gets. ``--wall``
uses ``train.max_time_s`` (wall clock, as ``semseg train --max-time``) instead. Inference is
timed the same way: CPU seconds of one forward pass with ``--threads`` threads.

    python3 benchmarks/architectures.py --budget-s 120            # KITTI, ~15 min unloaded
    python3 benchmarks/architectures.py --quick                   # smoke test on synthetic data
    python3 benchmarks/architectures.py --models segnet fcn8s --budget-s 60 --out table.md

Everything trains from scratch (no network here for ImageNet weights): with a CPU budget of a
couple of minutes this ranks how fast each architecture learns from nothing, not how well it can
segment roads once trained properly.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import torch
from _common import KITTI_DATA, ROOT, machine_summary, number
from lightning.pytorch.callbacks import Callback

DEFAULT_DATA = KITTI_DATA
MODELS = ("fcn8s", "segnet", "deeplab-largefov", "dilation8-frontend", "dilation8-context")


@dataclass
class Result:
    """One architecture's line of the table."""

    model: str
    max_f: float | None
    iou: float | None
    epochs: int | None
    train_seconds: float | None
    params_full: int
    params_trained: int
    infer_seconds: float | None
    load: float | None = None  # mean 1-minute load average while it trained (shared machine)
    run_dir: str | None = None


def count_parameters(name: str, num_classes: int, width_mult: float) -> int:
    from semseg.models import build_model

    with torch.device("meta"):  # no memory, no initialisation
        model = build_model(name, num_classes, width_mult=width_mult)
    return sum(p.numel() for p in model.parameters())


def inference_seconds(
    name: str, height: int, width: int, repeats: int, width_mult: float = 1.0, clock=None
) -> float:
    """Median seconds of one forward pass (batch 1, eval mode, no grad) after a warm-up, by
    ``clock`` (default: this process's CPU time divided by the torch thread count)."""
    from semseg.models import build_model

    clock = clock or cpu_clock
    model = build_model(name, 2, width_mult=width_mult).eval()
    image = torch.rand(1, 3, height, width)
    times = []
    with torch.inference_mode():
        model(image)
        for _ in range(repeats):
            start = clock()
            model(image)
            times.append(clock() - start)
    return statistics.median(times)


def cpu_clock() -> float:
    """CPU seconds of this process per torch thread: wall seconds on an idle machine, and
    unaffected by other processes competing for the cores."""
    return time.process_time() / torch.get_num_threads()


class CpuBudget(Callback):
    """Stops training once the process has used ``seconds`` of :func:`cpu_clock` since the
    start of fit (validation included; checked after each training step, as Lightning's Timer)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.start = 0.0

    def on_fit_start(self, trainer, pl_module) -> None:
        self.start = cpu_clock()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if cpu_clock() - self.start >= self.seconds:
            trainer.should_stop = True


def train_with_cpu_budget(config, seconds: float) -> Path:
    """:func:`semseg.training.train` with a :class:`CpuBudget` added to its trainer."""
    from semseg import training

    original = training.build_trainer

    def build_trainer(*args, **kwargs):
        trainer = original(*args, **kwargs)
        trainer.callbacks.append(CpuBudget(seconds))
        return trainer

    training.build_trainer = build_trainer
    try:
        return training.train(config)
    finally:
        training.build_trainer = original


def train_one(name: str, args: argparse.Namespace) -> Result:
    """Train ``name`` for ``args.budget_s`` seconds; its validation scores from eval_val.json."""
    from semseg.config import load_config
    from semseg.runs import RunDir
    from semseg.training import train

    config = load_config("demo" if args.quick else "kitti_fcn8s")
    if args.quick:
        config.data.synthetic_train = 16
        config.data.synthetic_size = [60, 200]
        config.data.val_fraction = 0.25
    else:
        config.data.kind = "kitti"
        config.data.root = str(args.data)
    config.data.height, config.data.width = args.height, args.width
    config.data.color_jitter = 0.0
    config.model.name = name
    config.model.width_mult = args.width_mult
    config.model.keep_prob = args.keep_prob
    config.train.lr = args.lr
    config.train.batch_size = args.batch_size
    config.train.epochs = args.max_epochs
    config.train.max_time_s = args.budget_s if args.wall else None
    config.train.seed = args.seed
    config.train.out_dir = str(args.runs)
    config.train.name = f"arch-{name}"
    config.train.progress = False
    config.train.overlay_samples = 2
    start, load_before = time.perf_counter(), load_average()
    run = RunDir(train(config) if args.wall else train_with_cpu_budget(config, args.budget_s))
    seconds = time.perf_counter() - start
    load_after = load_average()
    scores = run.read_eval()["groups"]["all"]
    return Result(
        model=name,
        max_f=scores.get("max_f"),
        iou=scores.get("iou"),
        epochs=completed_epochs(run.metrics),
        train_seconds=seconds,
        params_full=count_parameters(name, 2, 1.0),
        params_trained=count_parameters(name, 2, args.width_mult),
        infer_seconds=None,
        load=None if load_before is None else (load_before + load_after) / 2,
        run_dir=str(run.path),
    )


def load_average() -> float | None:
    """The 1-minute load average (other processes on a shared CPU skew wall-clock budgets)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def completed_epochs(metrics_csv: Path) -> int | None:
    if not metrics_csv.is_file():
        return None
    rows = [line for line in metrics_csv.read_text().splitlines()[1:] if line.strip()]
    return len(rows)


def params_m(count: int) -> str:
    return f"{count / 1e6:.1f}M" if count >= 1e6 else f"{count / 1e3:.0f}k"


def format_table(
    results: Sequence[Result], infer_size: tuple[int, int], infer_width: float = 1.0
) -> str:
    """The results as a markdown table, in the given order."""
    height, width = infer_size
    header = (
        "| model | val MaxF % | val IoU % | epochs | params (width 1) | params (trained) "
        f"| s / image ({height}x{width}, width {infer_width:g}) | load |"
    )
    lines = [header, "|" + "---|" * 8]
    for r in results:
        lines.append(
            f"| {r.model} | {number(r.max_f, 2)} | {number(r.iou, 2)} | {number(r.epochs, 0)} "
            f"| {params_m(r.params_full)} | {params_m(r.params_trained)} "
            f"| {number(r.infer_seconds, 2)} | {number(r.load, 1)} |"
        )
    return "\n".join(lines) + "\n"


def describe_machine() -> str:
    return machine_summary(f"{torch.get_num_threads()} torch threads")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="KITTI data_road folder")
    parser.add_argument("--models", nargs="+", default=list(MODELS), help="registered names")
    parser.add_argument(
        "--budget-s", type=float, default=120.0, help="training seconds each (CPU, see --wall)"
    )
    parser.add_argument(
        "--wall", action="store_true", help="budget in wall-clock seconds (train.max_time_s)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--height", type=int, default=96)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--width-mult", type=float, default=0.25, help="channel multiplier")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--keep-prob", type=float, default=1.0, help="dropout keep probability")
    parser.add_argument("--max-epochs", type=int, default=1000, help="the budget decides")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="timed inference passes")
    parser.add_argument("--infer-size", type=int, nargs=2, default=[160, 576])
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "architectures")
    parser.add_argument("--out", type=Path, help="also write the table (markdown) here")
    parser.add_argument(
        "--quick", action="store_true", help="smoke mode: tiny synthetic data, seconds per model"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.budget_s = min(args.budget_s, 5.0)
        args.height, args.width = 32, 96
        args.width_mult = min(args.width_mult, 0.0625)
        args.max_epochs = min(args.max_epochs, 2)
        args.repeats = 1
        args.infer_size = [32, 96]
    elif not (args.data / "training" / "image_2").is_dir():
        parser.error(f"--data {args.data}: no training/image_2 (KITTI data_road layout)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    infer_size = (args.infer_size[0], args.infer_size[1])
    command = "python3 benchmarks/architectures.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    infer_width = args.width_mult if args.quick else 1.0
    results = []
    for name in args.models:
        print(f"== {name}: training for {args.budget_s:.0f} s", flush=True)
        result = train_one(name, args)
        clock = time.perf_counter if args.wall else cpu_clock
        result.infer_seconds = inference_seconds(
            name, *infer_size, args.repeats, infer_width, clock=clock
        )
        print(
            f"   MaxF {number(result.max_f, 2)}  IoU {number(result.iou, 2)}"
            f"  epochs {result.epochs}"
            f"  infer {result.infer_seconds:.2f} s  ({result.run_dir})",
            flush=True,
        )
        results.append(result)
    table = format_table(results, infer_size, infer_width)
    footer = (
        f"\n`{command.strip()}` on {date.today().isoformat()}; {describe_machine()}. "
        f"Training: {args.height}x{args.width}, width {args.width_mult}, batch {args.batch_size}, "
        f"Adam lr {args.lr}, keep prob {args.keep_prob}, seed {args.seed}, from scratch, "
        f"{args.budget_s:.0f} s per model "
        + ("(wall clock). " if args.wall else f"(CPU time of {args.threads} thread(s)). ")
        + "Inference: "
        + ("wall" if args.wall else "CPU")
        + " seconds per image at batch 1, median. load: mean 1-minute load average while the "
        "model trained.\n"
    )
    print()
    print(table + footer)
    if args.out is not None:
        args.out.write_text(table + footer)
    return 0


if __name__ == "__main__":
    sys.exit(main())

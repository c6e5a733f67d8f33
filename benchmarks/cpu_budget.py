"""Quality on a CPU budget: FCN variants x encoders (and a Unet peer) trained from scratch for the
same number of seconds on KITTI Road, scored by the devkit's full-resolution MaxF.

Each entry trains with :func:`semseg.training.train` on the development images (the run's own
train/val split, seed 0, so every entry sees the same split), stops after ``--budget-s`` seconds
of training (``train.max_time_s``) and reports ``eval_val.json`` (full-resolution devkit
perspective MaxF / AP / IoU of best.ckpt on the validation images), the epochs and optimiser steps
that fitted in the budget, and the parameters. An entry is ``MODEL[:BACKBONE][@RECIPE]``:

* ``MODEL``: a registered model (``fcn8s``, ``fcn16s``, ``fcn32s``, ...) or ``smp-unet-resnet18``
  (segmentation-models-pytorch's Unet on ResNet-18, ``encoder_weights=None``; the ``bench``
  extra: ``pip install -e ".[bench]"``), registered by this script only.
* ``BACKBONE``: the FCN encoder (``vgg16``, ``vgg16_bn``, ``resnet18``, ...).
* ``RECIPE``: ``fast`` (``configs/kitti_fast_cpu.yaml``, the default), ``reference``
  (``configs/kitti_fcn8s.yaml`` at batch 8: Adam 1e-4, constant lr, CE, flips only) or ``peer``
  (the reference at Adam 1e-3: the recipe the smp Unet was measured with).

``--ablation`` instead trains the recipe ladder: the reference, then one ingredient added at a
time (cumulative), each with the same budget.

    python3 benchmarks/cpu_budget.py --quick                                 # smoke test, ~1 min
    python3 benchmarks/cpu_budget.py --budget-s 600 --models fcn8s:resnet18 smp-unet-resnet18@peer
    python3 benchmarks/cpu_budget.py --budget-s 150 --models fcn8s:vgg16 fcn8s:resnet18 ...
    python3 benchmarks/cpu_budget.py --budget-s 150 --ablation

Everything trains from scratch (no ImageNet weights). The machine's CPU may be shared: a busy
neighbour takes steps away from a run, so the epochs and steps columns say what each run got.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "kitti_road"
SMP_UNET = "smp-unet-resnet18"
DEFAULT_MODELS = (
    "fcn8s:vgg16@reference",
    *(f"fcn8s:{encoder}" for encoder in ("vgg16", "vgg16_bn", "resnet18", "resnet34")),
    *(f"fcn8s:{encoder}" for encoder in ("resnet50", "mobilenet_v3_large")),
    "fcn16s:resnet18",
    "fcn32s:resnet18",
    f"{SMP_UNET}@peer",
)

# The ablation ladder: (label, overrides added to the previous step's), from the reference.
ABLATION: tuple[tuple[str, dict[str, object]], ...] = (
    ("reference: FCN-8s/VGG16, Adam 1e-4, constant lr, CE, flips", {}),
    (
        "+ encoder resnet18 (BN), keep_prob 1",
        {"model.backbone": "resnet18", "model.keep_prob": 1.0},
    ),
    ("+ lr 1e-3", {"train.lr": 1e-3}),
    (
        "+ AdamW (wd 1e-2), 1-epoch warm-up, cosine to the budget",
        {
            "train.optimizer": "adamw",
            "train.weight_decay": 1e-2,
            "train.warmup_epochs": 1.0,
            "train.schedule": "cosine",
        },
    ),
    ("+ CE + Dice", {"train.loss": "ce_dice"}),
    (
        "+ augmentation (scale_crop 0.5, color_jitter 0.2)",
        {"data.scale_crop": 0.5, "data.color_jitter": 0.2},
    ),
    ("+ gradient clipping (norm 1)", {"train.grad_clip": 1.0}),
)


def register_smp_unet() -> None:
    """Register ``smp-unet-resnet18`` (once); a clear error when smp is not installed."""
    from semseg.errors import SemsegError
    from semseg.models import list_models, register_model
    from semseg.models.base import SegmentationModel

    if SMP_UNET in list_models():
        return

    class SmpUnet(SegmentationModel):
        """segmentation-models-pytorch's Unet on ResNet-18, from scratch, behind semseg's
        normalisation and padding (inputs of any size; logits of the input's size)."""

        def __init__(self, num_classes: int, **_: object) -> None:
            super().__init__(num_classes)
            try:
                import segmentation_models_pytorch as smp
            except ImportError as error:
                raise SemsegError(
                    f"{SMP_UNET} needs segmentation-models-pytorch: pip install -e '.[bench]'"
                ) from error
            self.net = smp.Unet("resnet18", encoder_weights=None, classes=num_classes)

        def forward_normalized(self, x):
            return self.net(x)

    register_model(SMP_UNET)(SmpUnet)


@dataclass
class Result:
    entry: str
    max_f: float | None
    ap: float | None
    iou: float | None
    best_epoch: int | None
    epochs: int | None
    steps: int | None
    train_seconds: float  # wall seconds of the whole run (training, validation, final scoring)
    cpu_seconds: float  # CPU seconds of the same
    params: int
    run_dir: str


def parse_entry(entry: str, default_recipe: str) -> tuple[str, str | None, str]:
    body, _, recipe = entry.partition("@")
    model, _, backbone = body.partition(":")
    return model, backbone or None, recipe or default_recipe


def base_config(recipe: str, args: argparse.Namespace):
    from semseg.config import load_config

    if recipe == "fast":
        config = load_config("kitti_fast_cpu")
    elif recipe in ("reference", "peer"):
        config = load_config("kitti_fcn8s")
        config.train.batch_size = 8
        if recipe == "peer":
            config.train.lr = 1e-3
    else:
        raise SystemExit(f"unknown recipe {recipe!r}: fast, reference or peer")
    if args.quick:
        config.data.kind = "synthetic"
        config.data.synthetic_train = 16
        config.data.synthetic_size = [60, 200]
        config.data.val_fraction = 0.25
        config.data.height, config.data.width = 64, 96
        config.train.batch_size = 4
        config.train.epochs = 2
    else:
        config.data.kind = "kitti"
        config.data.root = str(args.data)
        config.train.epochs = args.max_epochs
    config.train.max_time_s = args.budget_s
    config.train.clock = args.clock
    config.train.seed = args.seed
    config.train.progress = False
    config.train.overlay_samples = 2
    config.train.out_dir = str(args.runs)
    return config


def train_entry(label: str, config, params_of: tuple[str, str | None], name: str) -> Result:
    from semseg.training import train

    config.train.name = name
    start, cpu_start = time.perf_counter(), time.process_time()
    run_dir = train(config)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    scores = json.loads((run_dir / "eval_val.json").read_text())["groups"]["all"]
    epochs, best_epoch = epoch_counts(run_dir / "metrics.csv")
    n_train = len(json.loads((run_dir / "split.json").read_text())["train"])
    steps = epochs * math.ceil(n_train / config.train.batch_size) if epochs else None
    return Result(
        entry=label,
        max_f=scores.get("max_f"),
        ap=scores.get("ap"),
        iou=scores.get("iou"),
        best_epoch=best_epoch,
        epochs=epochs,
        steps=steps,
        train_seconds=seconds,
        cpu_seconds=cpu_seconds,
        params=count_parameters(*params_of),
        run_dir=str(run_dir),
    )


def epoch_counts(metrics_csv: Path) -> tuple[int | None, int | None]:
    """Completed epochs and the epoch of the best validation MaxF (metrics.csv)."""
    if not metrics_csv.is_file():
        return None, None
    lines = metrics_csv.read_text().splitlines()
    header, rows = lines[0].split(","), [line.split(",") for line in lines[1:] if line.strip()]
    if not rows:
        return 0, None
    column = header.index("val_maxf")
    scored = [(float(row[column]), int(row[0])) for row in rows if row[column]]
    return len(rows), (max(scored)[1] if scored else None)


def count_parameters(model: str, backbone: str | None) -> int:
    from semseg.models import build_model

    options = {} if backbone is None else {"backbone": backbone, "keep_prob": 1.0}
    with torch.device("meta"):
        net = build_model(model, 2, **options)
    return sum(p.numel() for p in net.parameters())


def run_models(args: argparse.Namespace) -> list[Result]:
    from semseg.config import set_field

    results = []
    for entry in args.models:
        model, backbone, recipe = parse_entry(entry, args.recipe)
        if model == SMP_UNET and args.quick and not smp_available():
            print(f"== {entry}: skipped (segmentation-models-pytorch not installed)", flush=True)
            continue
        config = base_config(recipe, args)
        set_field(config, "model.name", model)
        if backbone is not None:
            set_field(config, "model.backbone", backbone)
        label = f"{model}:{backbone or '-'}@{recipe}" if model != SMP_UNET else f"{model}@{recipe}"
        name = label.replace(":", "-").replace("@", "-")
        results.append(announce(label, config, (model, backbone), args, name))
    return results


def run_ablation(args: argparse.Namespace) -> list[Result]:
    from semseg.config import set_field

    results, overrides = [], {}
    steps = ABLATION[: 2 if args.quick else None]
    for index, (label, added) in enumerate(steps):
        overrides.update(added)
        config = base_config("reference", args)
        for dotted, value in overrides.items():
            set_field(config, dotted, value)
        params_of = ("fcn8s", config.model.backbone)
        results.append(announce(label, config, params_of, args, f"ablation{index}"))
    return results


def announce(label: str, config, params_of, args, name: str) -> Result:
    print(f"== {label}: training for {args.budget_s:.0f} s", flush=True)
    result = train_entry(label, config, params_of, name)
    print(
        f"   MaxF {fmt(result.max_f)}  AP {fmt(result.ap)}  epochs {result.epochs}  "
        f"steps {result.steps}  ({result.run_dir})",
        flush=True,
    )
    return result


def smp_available() -> bool:
    try:
        import segmentation_models_pytorch  # noqa: F401
    except ImportError:
        return False
    return True


def fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def format_table(results: Sequence[Result]) -> str:
    lines = [
        "| entry | val MaxF % | val AP % | val IoU % | epochs (best) | steps | run wall s "
        "| run CPU s | params |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        params = f"{r.params / 1e6:.1f}M"
        lines.append(
            f"| {r.entry} | {fmt(r.max_f)} | {fmt(r.ap)} | {fmt(r.iou)} "
            f"| {r.epochs} ({r.best_epoch}) | {r.steps} | {r.train_seconds:.0f} "
            f"| {r.cpu_seconds:.0f} | {params} |"
        )
    return "\n".join(lines) + "\n"


def describe_machine() -> str:
    import os

    cpu = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{cpu}, {os.cpu_count()} cores ({torch.get_num_threads()} torch threads, load "
        f"{load:.1f} at the end), torch {torch.__version__}"
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="KITTI data_road folder")
    parser.add_argument(
        "--models", nargs="+", default=list(DEFAULT_MODELS), help="MODEL[:BACKBONE][@RECIPE]"
    )
    parser.add_argument("--recipe", default="fast", help="default recipe: fast|reference|peer")
    parser.add_argument("--ablation", action="store_true", help="train the recipe ladder")
    parser.add_argument("--budget-s", type=float, default=600.0, help="training seconds each")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="budget in wall seconds, or CPU seconds / threads (fair on a shared CPU)",
    )
    parser.add_argument("--max-epochs", type=int, default=1000, help="the budget decides")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "cpu_budget")
    parser.add_argument("--out", type=Path, help="also write the table (markdown) and JSON here")
    parser.add_argument(
        "--quick", action="store_true", help="smoke mode: tiny synthetic data, seconds per entry"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.budget_s = min(args.budget_s, 4.0)
        if args.models == list(DEFAULT_MODELS):
            args.models = ["fcn8s:resnet18", "fcn32s:mobilenet_v3_large", f"{SMP_UNET}@peer"]
    elif not (args.data / "training" / "image_2").is_dir():
        parser.error(f"--data {args.data}: no training/image_2 (KITTI data_road layout)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    register_smp_unet()
    command = "python3 benchmarks/cpu_budget.py " + " ".join(sys.argv[1:] if argv is None else argv)
    results = run_ablation(args) if args.ablation else run_models(args)
    table = format_table(results)
    clock = (
        "wall clock, train.max_time_s"
        if args.clock == "wall"
        else f"CPU clock: process CPU seconds / {torch.get_num_threads()} threads"
    )
    footer = (
        f"\n`{command.strip()}` on {date.today().isoformat()}; {describe_machine()}. "
        f"{args.budget_s:.0f} s of training per entry ({clock}), seed {args.seed}, "
        "from scratch; MaxF/AP/IoU: devkit perspective scores of best.ckpt on the run's "
        "validation images at full resolution.\n"
    )
    print()
    print(table + footer)
    if args.out is not None:
        args.out.write_text(table + footer)
        args.out.with_suffix(".json").write_text(
            json.dumps([r.__dict__ for r in results], indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

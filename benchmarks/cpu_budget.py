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
time (cumulative), each with the same budget. ``--leave-one-out`` trains ``kitti_fast_cpu`` and
the config with one ingredient taken out at a time (the encoder and the learning rate are
measured by the grid's reference and ``fcn8s:vgg16`` rows).

    python3 benchmarks/cpu_budget.py --quick                                 # smoke test, ~1 min
    python3 benchmarks/cpu_budget.py --budget-s 600 --models fcn8s:resnet18 smp-unet-resnet18@peer
    python3 benchmarks/cpu_budget.py --budget-s 150 --models fcn8s:vgg16 fcn8s:resnet18 ...
    python3 benchmarks/cpu_budget.py --budget-s 150 --ablation
    python3 benchmarks/cpu_budget.py --clock cpu --jobs 2 --leave-one-out
    python3 benchmarks/cpu_budget.py --clock cpu --jobs 2     # the grid, two entries side by side

``--jobs N`` trains N entries at a time, each in its own process with ``cores // N`` torch
threads (its log in ``RUNS/results-*/NAME.log``). Every finished entry's result is kept in
``RUNS/results-<clock><budget>s-seed<seed>/NAME.json``: a killed grid, run again with the same
arguments, reuses those and trains only the rest (``--fresh`` retrains everything).

Everything trains from scratch (no ImageNet weights). The machine's CPU may be shared: a busy
neighbour takes steps away from a run, so the epochs and steps columns say what each run got.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import torch
from _common import CAMVID_DATA, KITTI_DATA, ROOT, load_record, machine_summary, number, save_record

DEFAULT_DATA = {"kitti": KITTI_DATA, "camvid": CAMVID_DATA}
SMP_UNET = "smp-unet-resnet18"
LRASPP = "tv-lraspp-mobilenetv3"
# The same with PyTorch's default BatchNorm momentum (0.1) instead of torchvision MobileNetV3's
# 0.01: at a few hundred steps from scratch the 0.01 running statistics still lag the weights.
LRASPP_BN = "tv-lraspp-mobilenetv3-bn01"
PEERS = (SMP_UNET, LRASPP, LRASPP_BN)
FAST_CONFIG = {"kitti": "kitti_fast_cpu", "camvid": "camvid_fast_cpu"}
# CamVid: every architecture of the registry with the CamVid fast recipe, and the two peers a
# user would pick instead, with the same recipe (models without a ResNet encoder keep VGG16).
CAMVID_RECIPES: dict[str, dict[str, object]] = {
    "fast": {},  # configs/camvid_fast_cpu.yaml as it is
    "mfb": {"train.class_weights": "median_frequency"},  # + SegNet's class balancing
    "full": {"data.height": 360, "data.width": 480},  # at CamVid's full 360x480
}
CAMVID_MODELS = (
    "fcn8s:resnet18",
    LRASPP,
    SMP_UNET,
    LRASPP_BN,
    "fcn8s:resnet18@mfb",
    "fcn8s:mobilenet_v3_large",
    "fcn8s:resnet18@full",
    "fcn16s:resnet18",
    "fcn32s:resnet18",
    "fcn8s:vgg16",
    "segnet:vgg16_bn",
    "deeplab-largefov",
    "dilation8-frontend",
    "dilation8-context",
    "fcn8s-seed:resnet18",
)
ENCODERS = ("vgg16", "vgg16_bn", "resnet18", "resnet34", "resnet50", "mobilenet_v3_large")
# The grid: the reference recipe's baseline, every FCN variant x encoder on the fast recipe, and
# the peer (FCN-8s and the peer first: a grid stopped early still answers the main question).
DEFAULT_MODELS = (
    "fcn8s:vgg16@reference",
    *(f"fcn8s:{encoder}" for encoder in ENCODERS),
    f"{SMP_UNET}@peer",
    *(f"{variant}:{encoder}" for variant in ("fcn16s", "fcn32s") for encoder in ENCODERS),
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

# Leave-one-out from kitti_fast_cpu: (label, result name, overrides).
LEAVE_ONE_OUT: tuple[tuple[str, str, dict[str, object]], ...] = (
    ("kitti_fast_cpu (FCN-8s / ResNet-18, full recipe)", "fcn8s-resnet18-fast", {}),
    ("- augmentation (no scale_crop, no color_jitter)", "loo-augmentation", {
        "data.scale_crop": 0.0, "data.color_jitter": 0.0}),
    ("- Dice (plain CE)", "loo-dice", {"train.loss": "ce"}),
    ("- gradient clipping", "loo-grad-clip", {"train.grad_clip": None}),
    ("- AdamW / warm-up / cosine (Adam, constant lr, no weight decay)", "loo-schedule", {
        "train.optimizer": "adam", "train.weight_decay": 0.0, "train.warmup_epochs": 0.0,
        "train.schedule": "constant"}),
)  # fmt: skip


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


def register_lraspp() -> None:
    """Register ``tv-lraspp-mobilenetv3``: torchvision's LR-ASPP on MobileNetV3-Large
    (Howard et al., ICCV 2019), ``weights=None`` and ``weights_backbone=None`` (from scratch),
    and ``tv-lraspp-mobilenetv3-bn01``, the same with BatchNorm momentum 0.1."""
    from semseg.models import list_models, register_model
    from semseg.models.base import SegmentationModel

    if LRASPP in list_models():
        return

    class TorchvisionLRASPP(SegmentationModel):
        bn_momentum: float | None = None  # None: torchvision's own (0.01)

        def __init__(self, num_classes: int, **_: object) -> None:
            super().__init__(num_classes)
            from torchvision.models.segmentation import lraspp_mobilenet_v3_large

            self.net = lraspp_mobilenet_v3_large(
                weights=None, weights_backbone=None, num_classes=num_classes
            )
            if self.bn_momentum is not None:
                for module in self.net.modules():
                    if isinstance(module, torch.nn.BatchNorm2d):
                        module.momentum = self.bn_momentum

        def forward_normalized(self, x):
            return self.net(x)["out"]

    class TorchvisionLRASPPDefaultMomentum(TorchvisionLRASPP):
        bn_momentum = 0.1

    register_model(LRASPP)(TorchvisionLRASPP)
    register_model(LRASPP_BN)(TorchvisionLRASPPDefaultMomentum)


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
    miou: float | None = None  # multi-class (CamVid) scores of best.ckpt, percent
    mean_acc: float | None = None
    global_acc: float | None = None
    class_iou: dict[str, float | None] | None = None
    seconds_per_image: float | None = None  # batch-1 inference at the training size


def parse_entry(entry: str, default_recipe: str) -> tuple[str, str | None, str]:
    body, _, recipe = entry.partition("@")
    model, _, backbone = body.partition(":")
    return model, backbone or None, recipe or default_recipe


def base_config(recipe: str, args: argparse.Namespace):
    from semseg.config import load_config, set_field

    if args.dataset == "camvid":
        if recipe not in CAMVID_RECIPES:
            raise SystemExit(f"CamVid recipes: {', '.join(CAMVID_RECIPES)}; got {recipe!r}")
        config = load_config(FAST_CONFIG["camvid"])
        for dotted, value in CAMVID_RECIPES[recipe].items():
            set_field(config, dotted, value)
    elif recipe == "fast":
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
        config.data.kind = "kitti" if args.dataset == "kitti" else "folder"
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
    from semseg.runs import RunDir
    from semseg.training import train

    config.train.name = name
    start, cpu_start = time.perf_counter(), time.process_time()
    run = RunDir(train(config))
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    results = run.read_eval()
    scores = results["groups"]["all"]
    epochs, best_epoch = epoch_counts(run.metrics)
    n_train = len(run.read_split()["train"])
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
        run_dir=str(run.path),
        miou=scores.get("miou") if "per_class" in results else None,
        mean_acc=scores.get("mean_acc"),
        global_acc=scores.get("global_acc"),
        class_iou=(
            {name: v["iou"] for name, v in results["per_class"].items()}
            if "per_class" in results
            else None
        ),
        seconds_per_image=inference_seconds(run, images=10),
    )


def inference_seconds(run, images: int) -> float:
    """Median seconds per image of best.ckpt at batch 1 (fp32 torch, this process's threads),
    on validation-sized images: resize, forward pass and full-resolution softmax."""
    import statistics

    from semseg.inference.checkpoint import load_model
    from semseg.inference.predictor import Predictor

    config = run.read_config()
    predictor = Predictor(load_model(run.best_checkpoint()), batch_size=1)
    image = torch.randint(0, 255, (config.data.height * 3 // 2, config.data.width * 3 // 2, 3))
    frame = image.to(torch.uint8).numpy()
    predictor.predict_batch([frame])  # warm-up
    times = []
    for _ in range(images):
        start = time.perf_counter()
        predictor.predict_batch([frame])
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def epoch_counts(metrics_csv: Path) -> tuple[int | None, int | None]:
    """Completed epochs and the epoch of the best validation MaxF (metrics.csv)."""
    if not metrics_csv.is_file():
        return None, None
    lines = metrics_csv.read_text().splitlines()
    header, rows = lines[0].split(","), [line.split(",") for line in lines[1:] if line.strip()]
    if not rows:
        return 0, None
    column = header.index("val_maxf")
    if not any(row[column] for row in rows):
        column = header.index("val_miou")  # multi-class runs are selected by mIoU
    scored = [(float(row[column]), int(row[0])) for row in rows if row[column]]
    return len(rows), (max(scored)[1] if scored else None)


def count_parameters(model: str, backbone: str | None) -> int:
    from semseg.models import build_model, model_options

    takes = () if model in PEERS else model_options(model)
    options = {"backbone": backbone} if backbone is not None and "backbone" in takes else {}
    with torch.device("meta"):
        net = build_model(model, 2, **options)
    return sum(p.numel() for p in net.parameters())


@dataclass
class Planned:
    label: str
    name: str  # run-folder and result-file name
    config: object
    params_of: tuple[str, str | None]


def plan_models(args: argparse.Namespace) -> list[Planned]:
    from semseg.config import set_field

    planned = []
    for entry in args.models:
        model, backbone, recipe = parse_entry(entry, args.recipe)
        if model == SMP_UNET and args.quick and not smp_available():
            print(f"== {entry}: skipped (segmentation-models-pytorch not installed)", flush=True)
            continue
        config = base_config(recipe, args)
        set_field(config, "model.name", model)
        fit_options(config, model, backbone)
        label = f"{model}:{backbone or '-'}@{recipe}" if model not in PEERS else f"{model}@{recipe}"
        name = label.replace(":", "-").replace("@", "-")
        planned.append(Planned(label, name, config, (model, config.model.backbone)))
    return planned


def fit_options(config, model: str, backbone: str | None) -> None:
    """The recipe's model options, minus those ``model`` does not take: a model without an
    encoder choice keeps the default VGG16, one without dropout the default keep_prob."""
    from semseg.config import ModelConfig
    from semseg.models import model_options

    takes = () if model in PEERS else model_options(model)
    defaults = ModelConfig()
    if backbone is not None:
        config.model.backbone = backbone
    elif "backbone" not in takes:
        config.model.backbone = defaults.backbone
    if "keep_prob" not in takes:
        config.model.keep_prob = defaults.keep_prob


def plan_ablation(args: argparse.Namespace) -> list[Planned]:
    from semseg.config import set_field

    planned, overrides = [], {}
    steps = ABLATION[: 2 if args.quick else None]
    for index, (label, added) in enumerate(steps):
        overrides.update(added)
        config = base_config("reference", args)
        for dotted, value in overrides.items():
            set_field(config, dotted, value)
        planned.append(Planned(label, f"ablation{index}", config, ("fcn8s", config.model.backbone)))
    return planned


def plan_leave_one_out(args: argparse.Namespace) -> list[Planned]:
    from semseg.config import set_field

    planned = []
    for label, name, overrides in LEAVE_ONE_OUT:
        config = base_config("fast", args)
        for dotted, value in overrides.items():
            set_field(config, dotted, value)
        planned.append(Planned(label, name, config, ("fcn8s", config.model.backbone)))
    return planned


def results_dir(args: argparse.Namespace) -> Path:
    quick = "-quick" if args.quick else ""
    return args.runs / f"results-{args.clock}{args.budget_s:g}s-seed{args.seed}{quick}"


def threads_per_job(jobs: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, jobs))


def run_planned(planned: Sequence[Planned], args: argparse.Namespace) -> list[Result]:
    """Train every planned entry not already finished (``--jobs`` at a time) and return all
    results in plan order."""
    folder = results_dir(args)
    finished = {
        item.name
        for item in planned
        if load_record(folder / f"{item.name}.json", Result) is not None
    }
    todo = [item for item in planned if args.fresh or item.name not in finished]
    for item in planned:
        if item.name in finished and not args.fresh:
            print(f"== {item.label}: finished earlier ({folder / item.name}.json)", flush=True)
    if args.jobs <= 1:
        for item in todo:
            save_record(folder / f"{item.name}.json", announce(item, args))
    else:
        run_in_children(todo, args, folder)
    results = [load_record(folder / f"{item.name}.json", Result) for item in planned]
    for item, result in zip(planned, results, strict=True):
        if result is not None:
            result.entry = item.label  # a result shared by two plans takes this plan's label
    missing = [item.label for item, result in zip(planned, results, strict=True) if result is None]
    if missing:
        raise SystemExit(f"no result for {', '.join(missing)}: see the logs in {folder}")
    return results


def run_in_children(todo: Sequence[Planned], args: argparse.Namespace, folder: Path) -> None:
    """``--jobs N``: each entry in a child process of this script (``--only NAME``)."""
    folder.mkdir(parents=True, exist_ok=True)
    threads = args.threads  # parse_args: --threads, or cores // jobs
    waiting, running = list(todo), []
    while waiting or running:
        while waiting and len(running) < args.jobs:
            item = waiting.pop(0)
            command = [
                sys.executable, str(Path(__file__).resolve()), *args.argv,
                "--jobs", "1", "--threads", str(threads), "--only", item.name,
            ]  # fmt: skip
            log = (folder / f"{item.name}.log").open("w")
            print(f"== {item.label}: training for {args.budget_s:.0f} s "
                  f"({threads} threads, log {log.name})", flush=True)  # fmt: skip
            running.append((item, subprocess.Popen(command, stdout=log, stderr=log), log))
        time.sleep(0.2)
        for entry in [entry for entry in running if entry[1].poll() is not None]:
            item, process, log = entry
            log.close()
            running.remove(entry)
            result = load_record(folder / f"{item.name}.json", Result)
            score = f"mIoU {number(result.miou, 1)}" if result and result.miou else None
            state = "failed" if result is None else score or f"MaxF {number(result.max_f, 1)}"
            print(f"   {item.label}: {state} (exit {process.returncode})", flush=True)


def announce(item: Planned, args: argparse.Namespace) -> Result:
    print(f"== {item.label}: training for {args.budget_s:.0f} s", flush=True)
    result = train_entry(item.label, item.config, item.params_of, item.name)
    print(
        f"   MaxF {number(result.max_f, 1)}  AP {number(result.ap, 1)}  epochs {result.epochs}  "
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


def format_table(results: Sequence[Result]) -> str:
    lines = [
        "| entry | val MaxF % | val AP % | val IoU % | epochs (best) | steps | run wall s "
        "| run CPU s | params |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        params = f"{r.params / 1e6:.1f}M"
        lines.append(
            f"| {r.entry} | {number(r.max_f, 1)} | {number(r.ap, 1)} | {number(r.iou, 1)} "
            f"| {r.epochs} ({r.best_epoch}) | {r.steps} | {r.train_seconds:.0f} "
            f"| {r.cpu_seconds:.0f} | {params} |"
        )
    return "\n".join(lines) + "\n"


def format_camvid_table(results: Sequence[Result]) -> str:
    """mIoU, class-average and global accuracy, per-class IoU, epochs, s/img, parameters."""
    classes = next((list(r.class_iou) for r in results if r.class_iou), [])
    lines = [
        "| entry | mIoU % | class avg % | global % | "
        + " | ".join(classes)
        + " | epochs (best) | s/img | params |",
        "|---|" + "---|" * (len(classes) + 6),
    ]
    for r in results:
        per_class = [number((r.class_iou or {}).get(name), 1) for name in classes]
        lines.append(
            f"| {r.entry} | {number(r.miou, 1)} | {number(r.mean_acc, 1)} "
            f"| {number(r.global_acc, 1)} | " + " | ".join(per_class) + " | "
            f"{r.epochs} ({r.best_epoch}) | {number(r.seconds_per_image, 3)} "
            f"| {r.params / 1e6:.1f}M |"
        )
    return "\n".join(lines) + "\n"


def describe_machine(threads: int) -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return machine_summary(f"{threads} torch threads per entry, load {load:.1f} at the end")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--dataset", choices=("kitti", "camvid"), default="kitti", help="KITTI Road or CamVid"
    )
    parser.add_argument("--data", type=Path, help="the dataset's folder (default: ../shared)")
    parser.add_argument("--models", nargs="+", help="MODEL[:BACKBONE][@RECIPE]")
    parser.add_argument("--recipe", default="fast", help="default recipe: fast|reference|peer")
    parser.add_argument("--ablation", action="store_true", help="train the recipe ladder")
    parser.add_argument(
        "--leave-one-out", action="store_true", help="kitti_fast_cpu minus one ingredient each"
    )
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
    parser.add_argument("--jobs", type=int, default=1, help="entries trained side by side")
    parser.add_argument("--threads", type=int, help="torch threads per entry (cores // jobs)")
    parser.add_argument("--fresh", action="store_true", help="retrain finished entries too")
    parser.add_argument("--only", help=argparse.SUPPRESS)  # one entry, in a --jobs child
    parser.add_argument(
        "--quick", action="store_true", help="smoke mode: tiny synthetic data, seconds per entry"
    )
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.data = args.data or DEFAULT_DATA[args.dataset]
    camvid = args.dataset == "camvid"
    args.models = args.models or list(CAMVID_MODELS if camvid else DEFAULT_MODELS)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    if args.threads is None:
        args.threads = threads_per_job(args.jobs) if args.jobs > 1 else torch.get_num_threads()
    elif args.threads < 1:
        parser.error("--threads must be at least 1")
    if args.quick and camvid:
        parser.error("--quick trains on synthetic road scenes; use a short --budget-s for CamVid")
    if args.quick:
        args.budget_s = min(args.budget_s, 4.0)
        if args.models == list(DEFAULT_MODELS):
            args.models = ["fcn8s:resnet18", "fcn32s:mobilenet_v3_large", f"{SMP_UNET}@peer"]
    elif camvid and not (args.data / "classes.yaml").is_file():
        parser.error(f"--data {args.data}: no classes.yaml (CamVid: train/, val/, classes.yaml)")
    elif not camvid and not (args.data / "training" / "image_2").is_dir():
        parser.error(f"--data {args.data}: no training/image_2 (KITTI data_road layout)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    register_smp_unet()
    register_lraspp()
    if args.ablation:
        planned = plan_ablation(args)
    elif args.leave_one_out:
        planned = plan_leave_one_out(args)
    else:
        planned = plan_models(args)
    if args.only is not None:
        planned = [item for item in planned if item.name == args.only]
        args.fresh = True
        if not planned:
            raise SystemExit(f"--only {args.only}: no such entry")
        run_planned(planned, args)
        return 0
    results = run_planned(planned, args)
    camvid = args.dataset == "camvid"
    table = format_camvid_table(results) if camvid else format_table(results)
    command = "python3 benchmarks/cpu_budget.py " + " ".join(args.argv)
    clock = (
        "wall clock, train.max_time_s"
        if args.clock == "wall"
        else f"CPU clock: process CPU seconds / {args.threads} threads"
    )
    side_by_side = f", {args.jobs} entries side by side" if args.jobs > 1 else ""
    footer = (
        f"\n`{command.strip()}` on {date.today().isoformat()}; {describe_machine(args.threads)}. "
        f"{args.budget_s:.0f} s of training per entry ({clock}{side_by_side}), seed {args.seed}, "
        + (
            "from scratch; mIoU, class-average and global accuracy and per-class IoU of "
            "best.ckpt on CamVid's 101 validation images at 360x480; s/img: median batch-1 "
            "fp32 inference of a 360x480 image beside the other entry.\n"
            if camvid
            else "from scratch; MaxF/AP/IoU: devkit perspective scores of best.ckpt on the "
            "run's validation images at full resolution.\n"
        )
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

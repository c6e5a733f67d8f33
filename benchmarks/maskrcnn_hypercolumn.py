"""Region-based vs FCN on a CPU budget: hypercolumns and Mask R-CNN against the FCN recipe.

Every entry trains from scratch with :func:`semseg.training.train` for ``--budget-s`` seconds of
CPU clock (``train.clock: cpu``: process CPU seconds / torch threads, as benchmarks/cpu_budget.py
measures, so a busy neighbour does not shorten a run), seed 0, and is scored by the run's
``eval_val.json`` (best.ckpt on the validation images at full resolution: CamVid's mIoU and
per-class IoU over its 11 classes, KITTI Road's devkit MaxF and road IoU). An entry is
``DATASET/MODEL[@grid=K]``:

* ``camvid/...``: ``configs/camvid_fast_cpu.yaml`` with only ``model.name`` changed (FCN-8s on
  MobileNetV3-Large is that config's own model; ``hypercolumn`` uses its encoder too) — except
  ``camvid/maskrcnn-semantic``, which needs its own schedule, ``configs/camvid_maskrcnn.yaml``
  (the same AdamW lr after half an epoch of warm-up, batch 4, weight decay 1e-4: Mask R-CNN from
  scratch is known to diverge without a warm-up); same data, input size, augmentation, seed and
  budget.
* ``kitti/...``: ``configs/kitti_fast_cpu.yaml`` with only ``model.name`` changed.
* ``@grid=K``: hypercolumn's K x K location-specific classifiers (default 2).

Columns: mIoU (CamVid) or MaxF (KITTI), the share of the config's own model's score (FCN-8s), the
per-class IoU, seconds per image (batch 1, fp32 torch, this process's threads, on a 1.5x
training-size image: resize, forward and full-resolution softmax; for Mask R-CNN detection and
pasting included), parameters, and mask AP (COCO segm AP on the instances derived from the
validation masks, ``semseg derive --to instances``' rule; pycocotools, the ``coco`` extra).

Each finished entry is kept in ``RUNS/results-cpu<budget>s-seed<seed>/NAME.json`` and reused by
a later call with the same arguments (``--fresh`` retrains). ``--subset N`` trains and scores on
the first N training and N validation images only (a smoke test; the numbers mean nothing).

    python3 benchmarks/maskrcnn_hypercolumn.py --budget-s 600          # every default entry
    python3 benchmarks/maskrcnn_hypercolumn.py --budget-s 10 --subset 4 \\
        --entries camvid/hypercolumn camvid/maskrcnn-semantic          # smoke test, ~1 min
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import torch
from _common import CAMVID_DATA, KITTI_DATA, ROOT, load_record, machine_summary, number, save_record

CONFIGS = {"camvid": "camvid_fast_cpu", "kitti": "kitti_fast_cpu"}
OWN_SCHEDULE = {("camvid", "maskrcnn-semantic"): "camvid_maskrcnn"}
DATA = {"camvid": CAMVID_DATA, "kitti": KITTI_DATA}
REFERENCE_MODEL = "fcn8s"  # the model of camvid_fast_cpu and kitti_fast_cpu
DEFAULT_ENTRIES = (
    "camvid/fcn8s",
    "camvid/hypercolumn",
    "camvid/hypercolumn@grid=1",
    "camvid/maskrcnn-semantic",
    "kitti/fcn8s",
    "kitti/hypercolumn",
)
SPEED_IMAGES = 10


@dataclass
class Result:
    entry: str
    config: str
    score_name: str  # "mIoU" or "MaxF"
    score: float | None
    class_iou: dict[str, float | None]
    seconds_per_image: float | None
    params: int
    mask_ap: float | None
    mask_ap50: float | None
    epochs: int
    run_dir: str


@dataclass(frozen=True)
class Entry:
    dataset: str
    model: str
    grid: int | None

    @property
    def name(self) -> str:
        grid = f"-grid{self.grid}" if self.grid is not None else ""
        return f"{self.dataset}-{self.model}{grid}"

    @property
    def config_name(self) -> str:
        return OWN_SCHEDULE.get((self.dataset, self.model), CONFIGS[self.dataset])


def parse_entry(text: str) -> Entry:
    body, _, option = text.partition("@")
    dataset, _, model = body.partition("/")
    if dataset not in CONFIGS or not model:
        raise SystemExit(f"entry {text!r}: expected DATASET/MODEL[@grid=K], DATASET camvid|kitti")
    grid = None
    if option:
        key, _, value = option.partition("=")
        if key != "grid" or not value.isdigit():
            raise SystemExit(f"entry {text!r}: the only option is @grid=K")
        grid = int(value)
    return Entry(dataset, model, grid)


def subset_folder(entry: Entry, source: Path, count: int, out: Path) -> Path:
    """A folder of symbolic links to the first ``count`` images of each split (CamVid: train/
    and val/; KITTI: each category of training/), for a smoke test."""
    target = out / f"{entry.dataset}-subset{count}"
    if target.is_dir():
        return target
    if entry.dataset == "camvid":
        for split in ("train", "val"):
            names = sorted((source / split / "images").iterdir())[:count]
            for folder in ("images", "masks"):
                (target / split / folder).mkdir(parents=True, exist_ok=True)
                for image in names:
                    (target / split / folder / image.name).symlink_to(
                        source / split / folder / image.name
                    )
        (target / "classes.yaml").symlink_to(source / "classes.yaml")
        return target
    training = source / "training"
    for folder in ("image_2", "gt_image_2", "calib"):
        (target / "training" / folder).mkdir(parents=True, exist_ok=True)
    for category in ("um", "umm", "uu"):
        for image in sorted((training / "image_2").glob(f"{category}_0*.png"))[:count]:
            frame = image.stem.split("_")[1]
            links = [("image_2", image.name), ("gt_image_2", f"{category}_road_{frame}.png")]
            links.append(("calib", f"{image.stem}.txt"))
            for folder, name in links:
                if (training / folder / name).exists():
                    (target / "training" / folder / name).symlink_to(training / folder / name)
    return target


def entry_config(entry: Entry, args: argparse.Namespace):
    from semseg.config import load_config

    config = load_config(entry.config_name)
    config.model.name = entry.model
    if entry.grid is not None:
        config.model.grid = entry.grid
    data = args.camvid if entry.dataset == "camvid" else args.kitti
    if args.subset:
        data = subset_folder(entry, data, args.subset, args.runs)
    config.data.root = str(data)
    config.train.max_time_s = args.budget_s
    config.train.clock = "cpu"
    config.train.seed = args.seed
    config.train.epochs = args.max_epochs
    config.train.progress = False
    config.train.overlay_samples = 2
    config.train.out_dir = str(args.runs)
    config.train.name = entry.name
    return config


def train_entry(entry: Entry, args: argparse.Namespace) -> Result:
    from semseg.inference.checkpoint import load_model
    from semseg.runs import RunDir
    from semseg.training import train

    config = entry_config(entry, args)
    run = RunDir(train(config))
    results = run.read_eval()
    scores = results["groups"]["all"]
    loaded = load_model(run.best_checkpoint())
    multiclass = "per_class" in results
    if multiclass:
        class_iou = {name: v["iou"] for name, v in results["per_class"].items()}
    else:
        class_iou = {"road": scores.get("iou")}
    mask_ap = results.get("mask_ap") or {}
    rows = [line for line in run.metrics.read_text().splitlines()[1:] if line.strip()]
    return Result(
        entry=entry.name,
        config=entry.config_name,
        score_name="mIoU" if multiclass else "MaxF",
        score=scores.get("miou") if multiclass else scores.get("max_f"),
        class_iou=class_iou,
        seconds_per_image=inference_seconds(loaded, config.data.height, config.data.width),
        params=sum(p.numel() for p in loaded.model.parameters()),
        mask_ap=mask_ap.get("ap"),
        mask_ap50=mask_ap.get("ap50"),
        epochs=len(rows),
        run_dir=str(run.path),
    )


def inference_seconds(loaded, height: int, width: int) -> float:
    """Median seconds per image at batch 1 on a 1.5x training-size image (see the docstring)."""
    from semseg.inference.predictor import Predictor

    predictor = Predictor(loaded, batch_size=1)
    generator = torch.Generator().manual_seed(0)
    image = torch.randint(0, 255, (height * 3 // 2, width * 3 // 2, 3), generator=generator)
    frame = image.to(torch.uint8).numpy()
    predictor.predict_batch([frame])  # warm-up
    times = []
    for _ in range(SPEED_IMAGES):
        start = time.perf_counter()
        predictor.predict_batch([frame])
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def results_dir(args: argparse.Namespace) -> Path:
    subset = f"-subset{args.subset}" if args.subset else ""
    return args.runs / f"results-cpu{args.budget_s:g}s-seed{args.seed}{subset}"


def reference_score(results: Sequence[Result], dataset: str) -> float | None:
    for result in results:
        if result.entry == f"{dataset}-{REFERENCE_MODEL}":
            return result.score
    return None


def format_table(results: Sequence[Result]) -> str:
    lines = [
        "| entry | config | score | % of FCN-8s | per-class IoU | s/img | params | mask AP "
        "(AP50) | epochs |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for result in results:
        dataset = result.entry.split("-")[0]
        reference = reference_score(results, dataset)
        share = 100.0 * result.score / reference if result.score is not None and reference else None
        per_class = ", ".join(f"{name} {number(iou, 1)}" for name, iou in result.class_iou.items())
        mask_ap = (
            f"{number(result.mask_ap, 1)} ({number(result.mask_ap50, 1)})"
            if result.mask_ap is not None
            else "–"
        )
        lines.append(
            f"| {result.entry} | {result.config} | {result.score_name} "
            f"{number(result.score, 2)} | {number(share, 0)} | {per_class} | "
            f"{number(result.seconds_per_image, 3)} | {number(result.params, 0)} | {mask_ap} | "
            f"{result.epochs} |"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", nargs="+", default=list(DEFAULT_ENTRIES))
    parser.add_argument("--budget-s", type=float, default=600.0, help="CPU-clock training seconds")
    parser.add_argument("--camvid", type=Path, default=CAMVID_DATA)
    parser.add_argument("--kitti", type=Path, default=KITTI_DATA)
    parser.add_argument("--max-epochs", type=int, default=1000, help="the budget decides")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--subset", type=int, default=0, help="first N images per split (smoke)")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "maskrcnn_hypercolumn")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--fresh", action="store_true", help="retrain finished entries too")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    entries = [parse_entry(text) for text in args.entries]
    folder = results_dir(args)
    results = []
    for entry in entries:
        path = folder / f"{entry.name}.json"
        result = None if args.fresh else load_record(path, Result)
        if result is not None:
            print(f"== {entry.name}: finished earlier ({path})", flush=True)
        else:
            print(f"== {entry.name}: {entry.config_name}, {args.budget_s:g} s", flush=True)
            result = train_entry(entry, args)
            save_record(path, result)
        results.append(result)
    threads = f"{torch.get_num_threads()} torch threads"
    table = format_table(results)
    header = (
        f"Region-based vs FCN, {date.today()}, {args.budget_s:g} CPU-clock seconds each, seed "
        f"{args.seed}{f', subset {args.subset}' if args.subset else ''}; "
        f"{machine_summary(threads)}"
    )
    (folder / "table.md").write_text(f"{header}\n\n{table}\n")
    print(f"\n{header}\n\n{table}\n\n(also in {folder / 'table.md'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

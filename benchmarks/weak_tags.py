"""Weak supervision from image-level tags on CamVid: how much of full supervision's mIoU tags
recover, and which classes they can and cannot teach (BENCHMARKS.md, "Weak supervision").

Same images, model (``configs/camvid_fast_cpu.yaml``: FCN-8s on ResNet-18 from scratch at
240x320), seed and CPU budget for every entry; scored on CamVid's validation images at 360x480.
Tags are derived from the training masks per 180x240 crop (``semseg derive --to tags --crop
180x240``: a class is present when it covers at least 1% of the crop's valid pixels), because a
whole CamVid frame contains nearly every large class and would teach little.

Entries (each cached as ``RUNS/results-cpu<budget>s-seed<seed>/NAME.json``; run again with the
same arguments to resume, ``--fresh`` to recompute):

* ``full``: ``semseg train`` on the full masks (the reference);
* ``mil``: ``semseg train --supervision tags`` (multiple-instance learning with LSE pooling,
  ``train.lse_r``; Pinheiro & Collobert, CVPR 2015), scored by its raw argmax;
* ``mil-prior``, ``mil-prior-superpixels``, ``mil-prior-segments``: the same checkpoint with the
  paper's inference (``semseg evaluate --image-prior [--smooth superpixels|segments]``);
* ``mil-segments``: the smoothing prior alone (``--smooth segments``, no image prior), which
  tells the two priors' effects apart;
* ``cam``: a CAM classifier (Zhou et al., CVPR 2016) trained from the training tags for the
  budget; the pseudo-labels of the validation images, made from their own tags, are scored on
  the pixels they label (``coverage``: the share of valid pixels labelled) — they use the
  image's tags, which a segmenter at test time does not have;
* ``cam-crf``: the same with the dense CRF (only when ``pydensecrf2`` is installed);
* ``cam-segmenter``: ``semseg train`` on the CAM pseudo-labels of the training images (255 =
  ignore), scored like ``full``.

    python3 benchmarks/weak_tags.py --out weak_tags.md                 # the measurement
    python3 benchmarks/weak_tags.py --budget-s 10 --subset 8           # smoke run, minutes

The budget is CPU seconds divided by the torch threads (as ``benchmarks/cpu_budget.py --clock
cpu``), fair on a shared CPU; validation counts for the trained entries, as it does there.
``--subset N`` uses the first N training and N validation images only (smoke runs).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from datetime import date
from pathlib import Path
from typing import Any

import torch
from _common import CAMVID_DATA, ROOT, machine_summary, number

CONFIG = "camvid_fast_cpu"
CROP = "180x240"
DEFAULT_LSE_R = 2.0  # the results folder of any other r is named after it
ENTRIES = (
    "full",
    "mil",
    "mil-prior",
    "mil-prior-superpixels",
    "mil-prior-segments",
    "mil-segments",
    "cam",
    "cam-crf",
    "cam-segmenter",
)
PRIOR_VARIANTS = {
    "mil-prior": (True, "none"),
    "mil-prior-superpixels": (True, "superpixels"),
    "mil-prior-segments": (True, "segments"),
    "mil-segments": (False, "segments"),
}
WHAT = {
    "full": "full masks",
    "mil": "MIL-LSE, raw argmax",
    "mil-prior": "MIL-LSE + image prior",
    "mil-prior-superpixels": "MIL-LSE + prior + SLIC superpixels",
    "mil-prior-segments": "MIL-LSE + prior + Felzenszwalb segments",
    "mil-segments": "MIL-LSE + Felzenszwalb segments, no prior",
    "cam": "CAM pseudo-labels (labelled pixels)",
    "cam-crf": "CAM pseudo-labels + CRF (labelled pixels)",
    "cam-segmenter": "FCN-8s trained on CAM pseudo-labels",
}


# --- data ----------------------------------------------------------------------------------------


def subset_view(data: Path, folder: Path, count: int) -> Path:
    """A CamVid folder of the first ``count`` training and validation images (symlinks)."""
    for split in ("train", "val"):
        names = sorted((data / split / "images").iterdir())[:count]
        for kind in ("images", "masks"):
            (folder / split / kind).mkdir(parents=True, exist_ok=True)
            for image in names:
                link = folder / split / kind / image.name
                if not link.exists():
                    link.symlink_to((data / split / kind / image.name).resolve())
    shutil.copy(data / "classes.yaml", folder / "classes.yaml")
    return folder


def pseudo_label_view(data: Path, labels: Path, folder: Path) -> Path:
    """A folder dataset whose training masks are the pseudo-labels (255 = ignore) and whose
    validation split is the real one: ``semseg train`` on it is ``train --labels DIR``."""
    (folder / "train" / "images").mkdir(parents=True, exist_ok=True)
    (folder / "train" / "masks").mkdir(parents=True, exist_ok=True)
    for image in sorted((data / "train" / "images").iterdir()):
        label = labels / f"{image.stem}.png"
        if not label.is_file():
            raise SystemExit(f"no pseudo-label for training image {image.stem} in {labels}")
        for link, target in (
            (folder / "train" / "images" / image.name, image.resolve()),
            (folder / "train" / "masks" / f"{image.stem}.png", label.resolve()),
        ):
            if not link.exists():
                link.symlink_to(target)
    if not (folder / "val").exists():
        (folder / "val").symlink_to((data / "val").resolve())
    shutil.copy(data / "classes.yaml", folder / "classes.yaml")
    return folder


def split_names(data: Path, split: str) -> set[str]:
    return {path.stem for path in (data / split / "images").iterdir()}


# --- entries -------------------------------------------------------------------------------------


def base_config(args: argparse.Namespace, data: Path, name: str):
    from semseg.config import load_config

    config = load_config(CONFIG)
    config.data.root = str(data)
    config.train.max_time_s = args.budget_s
    config.train.clock = "cpu"
    config.train.seed = args.seed
    config.train.epochs = 1000  # the budget decides
    config.train.progress = False
    config.train.overlay_samples = 2
    config.train.name = name
    config.train.run_dir = str(args.folder / "runs" / name)
    return config


def train_run(config, fresh: bool) -> Path:
    """Train ``config`` into its run folder; a finished run there is reused unless ``fresh``
    (a benchmark killed between a run's end and its cache file)."""
    from semseg.training import train

    run_dir = Path(str(config.train.run_dir))
    if (run_dir / "eval_val.json").is_file() and not fresh:
        return run_dir
    return train(config, overwrite=True)


def scores_of(results: dict[str, Any]) -> dict[str, Any]:
    """mIoU, accuracies and per-class IoU of an evaluation or a pseudo-label quality result."""
    overall = results["groups"]["all"] if "groups" in results else results
    return {
        "miou": overall["miou"],
        "mean_acc": overall["mean_acc"],
        "global_acc": overall["global_acc"],
        "coverage": results.get("coverage"),
        "class_iou": {name: v["iou"] for name, v in results["per_class"].items()},
    }


def run_full(args: argparse.Namespace, data: Path, done: dict[str, dict]) -> dict[str, Any]:
    run = train_run(base_config(args, data, "full"), args.fresh)
    return {"run_dir": str(run), **scores_of(json.loads((run / "eval_val.json").read_text()))}


def run_mil(args: argparse.Namespace, data: Path, done: dict[str, dict]) -> dict[str, Any]:
    config = base_config(args, data, "mil")
    config.train.supervision = "tags"
    config.train.tags = str(args.tags)
    config.train.lse_r = args.lse_r
    run = train_run(config, args.fresh)
    return {"run_dir": str(run), **scores_of(json.loads((run / "eval_val.json").read_text()))}


def run_mil_variant(name: str) -> Callable[[argparse.Namespace, Path, dict], dict[str, Any]]:
    image_prior, smooth = PRIOR_VARIANTS[name]

    def run(args: argparse.Namespace, data: Path, done: dict[str, dict]) -> dict[str, Any]:
        from semseg.evaluation import evaluate_checkpoint

        run_dir = Path(done["mil"]["run_dir"])
        if not run_dir.is_dir():  # the results folder was moved since: its own runs/mil
            run_dir = args.folder / "runs" / run_dir.name
        checkpoint = run_dir / "checkpoints" / "best.ckpt"
        results = evaluate_checkpoint(
            checkpoint, data, split="val", image_prior=image_prior, smooth=smooth
        )
        return {"checkpoint": str(checkpoint), **scores_of(results)}

    return run


def load_cam_task(path: Path):
    """The CAM classifier the ``cam`` entry trained (``OUT/cam.pt`` of its labels folder)."""
    from semseg.weak.tag_task import TagTask

    saved = torch.load(path, map_location="cpu", weights_only=True)
    task = TagTask(**saved["hyper_parameters"])
    task.model.load_state_dict(saved["state_dict"])
    return task.eval()


def run_cam(crf: bool) -> Callable[[argparse.Namespace, Path, dict], dict[str, Any]]:
    """``cam``: train the classifier for the budget, label the validation images (scored) and
    the training images (for ``cam-segmenter``); ``cam-crf``: the same classifier's labels of
    the validation images through the dense CRF."""

    def run(args: argparse.Namespace, data: Path, done: dict[str, dict]) -> dict[str, Any]:
        from semseg.inference.crf import CRFParams
        from semseg.runs import save_checkpoint_atomic
        from semseg.weak.jobs import open_box_data
        from semseg.weak.tag_jobs import CAMSchedule, label_images, train_cam
        from semseg.weak.tags import match_samples, read_tags

        box_data = open_box_data(data)
        records = read_tags(args.tags, box_data.names)
        train_names, val_names = split_names(data, "train"), split_names(data, "val")
        folder = args.folder / ("cam-crf" if crf else "cam")
        if crf:
            task = load_cam_task(Path(done["cam"]["classifier"]))
            training = done["cam"]["training"]
            splits = (("val", val_names),)
        else:
            pairs = match_samples([r for r in records if r.name in train_names],
                                  box_data.samples, args.tags)  # fmt: skip
            schedule = CAMSchedule(
                epochs=1000, max_time_s=args.budget_s, clock="cpu", seed=args.seed
            )
            task, training = train_cam(pairs, box_data.names, schedule)
            state = {"state_dict": task.model.state_dict(), "hyper_parameters": dict(task.hparams)}
            save_checkpoint_atomic(state, folder / "cam.pt")
            splits = (("val", val_names), ("train", train_names))
        scores: dict[str, Any] = {}
        for split, names in splits:
            meter, count = label_images(
                task, box_data, [r for r in records if r.name in names], folder / split, crf,
                None, CRFParams() if crf else None, None,
            )  # fmt: skip
            scores[split] = {"images": count, **scores_of(meter.result())}
        return {
            **scores["val"],
            "labels": str(folder / "train"),
            "classifier": str(folder / "cam.pt"),
            "train_labels": scores.get("train"),
            "training": training,
        }

    return run


def run_cam_segmenter(args: argparse.Namespace, data: Path, done: dict[str, dict]) -> dict:
    from semseg.config import TrainConfig

    labels = Path(done["cam"]["labels"])
    config = base_config(args, data, "cam-segmenter")
    if "labels" in TrainConfig.__dataclass_fields__:  # semseg train --labels DIR
        config.train.labels = str(labels)
    else:
        view = pseudo_label_view(data, labels, args.folder / "cam-label-data")
        config.data.root = str(view)
    run = train_run(config, args.fresh)
    return {"run_dir": str(run), **scores_of(json.loads((run / "eval_val.json").read_text()))}


RUNNERS: dict[str, Callable[[argparse.Namespace, Path, dict], dict[str, Any]]] = {
    "full": run_full,
    "mil": run_mil,
    **{name: run_mil_variant(name) for name in PRIOR_VARIANTS},
    "cam": run_cam(crf=False),
    "cam-crf": run_cam(crf=True),
    "cam-segmenter": run_cam_segmenter,
}
NEEDS = {"cam-segmenter": "cam", "cam-crf": "cam", **{name: "mil" for name in PRIOR_VARIANTS}}
PSEUDO_LABELS = ("cam", "cam-crf")  # scored on the pixels they label, with the image's tags
DENSE_TAG_ENTRIES = ("mil", *PRIOR_VARIANTS, "cam-segmenter")  # predictions without tags


def crf_available() -> bool:
    from semseg.inference.crf import backend_available

    return backend_available()


def run_entries(args: argparse.Namespace, data: Path) -> dict[str, dict[str, Any]]:
    """Every entry asked for, from its cache or computed now (and cached)."""
    done: dict[str, dict[str, Any]] = {}
    for name in args.entries:
        cache = args.folder / f"{name}.json"
        if cache.is_file() and not args.fresh:
            done[name] = json.loads(cache.read_text())
            print(f"{name}: cached ({cache})", flush=True)
            continue
        if name == "cam-crf" and not crf_available():
            print("cam-crf: skipped (pydensecrf2 is not installed)", flush=True)
            continue
        needed = NEEDS.get(name)
        if needed is not None and needed not in done:
            raise SystemExit(f"{name} needs the {needed} entry; add it to --entries")
        print(f"{name}: running ...", flush=True)
        start, cpu_start = time.perf_counter(), time.process_time()
        result = RUNNERS[name](args, data, done)
        result["wall_s"] = round(time.perf_counter() - start, 1)
        result["cpu_s"] = round(time.process_time() - cpu_start, 1)
        save_json(cache, result)
        done[name] = result
        print(f"{name}: mIoU {result['miou']:.2f}", flush=True)
    return done


def save_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(payload, indent=2))
    os.replace(partial, path)


# --- report --------------------------------------------------------------------------------------


def format_tables(done: dict[str, dict[str, Any]]) -> str:
    """The overall table (with the share of full supervision's mIoU) and per-class IoU."""
    full = done.get("full", {}).get("miou")
    lines = [
        "| entry | supervision / inference | mIoU | % of full | class acc | global acc | "
        "coverage % |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, result in done.items():
        share = 100.0 * result["miou"] / full if full and name not in PSEUDO_LABELS else None
        lines.append(
            f"| {name} | {WHAT[name]} | {number(result['miou'], 2)} | {number(share, 1)} | "
            f"{number(result['mean_acc'], 2)} | {number(result['global_acc'], 2)} | "
            f"{number(result.get('coverage'), 1)} |"
        )
    classes = list(next(iter(done.values()))["class_iou"]) if done else []
    lines += ["", "| class | " + " | ".join(done) + " |", "|---|" + "---:|" * len(done)]
    for name in classes:
        cells = [number(result["class_iou"].get(name), 1) for result in done.values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def footer(args: argparse.Namespace, done: dict[str, dict[str, Any]]) -> str:
    command = "python3 benchmarks/weak_tags.py " + " ".join(args.argv)
    cam = done.get("cam", {}).get("training")
    cam_line = (
        f" The CAM classifier (ResNet-18 GAP, stride 16) took {cam['steps']} steps "
        f"({cam['epochs']} epochs) in the budget."
        if cam
        else ""
    )
    crf_skipped = "cam-crf" in args.entries and "cam-crf" not in done
    skipped = " cam-crf: not run (pydensecrf2 not installed)." if crf_skipped else ""
    full = done.get("full", {}).get("miou")
    dense = {name: done[name]["miou"] for name in DENSE_TAG_ENTRIES if name in done}
    best = max(dense, key=dense.__getitem__) if dense else None
    best_line = (
        f" Best tag method without tags at test time: {best}, {dense[best]:.2f} mIoU = "
        f"{100 * dense[best] / full:.1f}% of full supervision (target: at least 50%)."
        if best and full
        else ""
    )
    subset = f" Smoke run on the first {args.subset} images of each split." if args.subset else ""
    return (
        f"\n`{command.strip()}` on {date.today().isoformat()}; "
        f"{machine_summary(f'{torch.get_num_threads()} torch threads')}. "
        f"{args.budget_s:.0f} CPU seconds (process CPU / threads) of training per trained entry, "
        f"seed {args.seed}, {CONFIG}, from scratch; tags per {CROP} crop (min 1%), LSE r = "
        f"{args.lse_r:g}. Scores in percent on CamVid val at 360x480; best.ckpt of every run is "
        "chosen on the validation masks (mIoU). CAM rows score the pseudo-labels of the "
        "validation images, made with their tags, on the pixels they label (coverage: "
        "the labelled share of the valid pixels; no share of full: not a dense prediction)."
        f"{best_line}{cam_line}{skipped}{subset} Context, not "
        "comparable: Pinheiro & Collobert report 40.6 mIoU on VOC12 test from ImageNet tags; "
        "CAM pipelines 48-64 on VOC12 val with ImageNet weights.\n"
    )


# --- main ----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=CAMVID_DATA, help="CamVid: train/, val/")
    parser.add_argument("--budget-s", type=float, default=600.0, help="CPU seconds per entry")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lse-r", type=float, default=DEFAULT_LSE_R, help="LSE pooling r of MIL")
    parser.add_argument("--entries", nargs="+", default=list(ENTRIES), choices=ENTRIES)
    parser.add_argument("--subset", type=int, help="first N train and N val images (smoke)")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "weak_tags")
    parser.add_argument("--threads", type=int, help="torch threads [torch's default]")
    parser.add_argument("--fresh", action="store_true", help="recompute cached entries")
    parser.add_argument("--out", type=Path, help="write the markdown tables here (and .json)")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if not (args.data / "classes.yaml").is_file():
        parser.error(f"--data {args.data}: no classes.yaml (CamVid: train/, val/, classes.yaml)")
    if args.subset is not None and args.subset < 1:
        parser.error("--subset must be at least 1")
    subset = f"-subset{args.subset}" if args.subset else ""
    lse = "" if args.lse_r == DEFAULT_LSE_R else f"-r{args.lse_r:g}"  # MIL's entries depend on r
    args.folder = args.runs / f"results-cpu{args.budget_s:g}s-seed{args.seed}{subset}{lse}"
    return args


def main(argv: Sequence[str] | None = None) -> int:
    from semseg.weak.tag_jobs import derive_tags_file

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.folder.mkdir(parents=True, exist_ok=True)
    data = args.data
    if args.subset:
        data = subset_view(args.data, args.folder / "data", args.subset)
    args.tags = args.folder / "tags.csv"
    if not args.tags.is_file():
        summary = derive_tags_file(data, args.tags, min_frac=0.01, crop=CROP)
        print(f"tags: {summary['records']} crops of {summary['images']} images", flush=True)
    done = run_entries(args, data)
    report = format_tables(done) + footer(args, done)
    print()
    print(report)
    if args.out is not None:
        args.out.write_text(report)
        args.out.with_suffix(".json").write_text(json.dumps(done, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

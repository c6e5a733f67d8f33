"""Weak supervision from boxes: how much of the fully supervised score box supervision recovers.

On the same images, model, recipe (``configs/kitti_fast_cpu.yaml``,
``configs/camvid_fast_cpu.yaml``), seed and CPU budget, each entry trains from scratch and is
scored on the validation images with full masks (``eval_val.json``: KITTI Road devkit MaxF /
IoU, CamVid mIoU at 360x480):

* ``full``: the ground-truth masks (the reference);
* ``box``, ``box-i``, ``grabcut``, ``grabcut-i``, ``candidates``, ``m-and-g``: Simple Does It's
  pseudo-labels (``semseg pseudo-labels``) from the boxes, ``train --labels``;
* ``rounds-box``, ``rounds-box-i``: recursive training from those labels, ``--rounds N``
  (``--rounds``, default 3; the budget is shared by the rounds);
* ``boxsup``: BoxSup's alternation, ``--supervision boxsup``.

The boxes are derived from the training images' full masks (``semseg derive --to boxes``, one box
per connected component of at least 100 pixels) and kept in ``RUNS/DATASET/boxes/``; the pseudo-
labels of each method in ``RUNS/DATASET/labels/METHOD/`` with their quality against the ground
truth (``quality.json``), which the second table shows beside the recursive rounds' and BoxSup's
label quality. Making labels (GrabCut, segment candidates, the predictions between rounds) is not
part of the training budget; its CPU seconds are reported.

    python3 benchmarks/weak_boxes.py --out weak_boxes.md                  # everything, 600 s each
    python3 benchmarks/weak_boxes.py --datasets kitti --entries full,box,m-and-g --budget-s 300
    python3 benchmarks/weak_boxes.py --jobs 2 --out weak_boxes.md         # two entries at a time

The budget is on the CPU clock (``train.clock: cpu``: process CPU seconds / torch threads), fair
on a shared machine. Each finished entry's result is kept in
``RUNS/results-cpu<budget>s-seed<seed>/DATASET-ENTRY.json`` (its run folder in
``DATASET/ENTRY/`` beside it); a killed benchmark, run again with the same arguments, reuses
those and resumes the entry that was training (``--fresh`` retrains).
``--jobs N`` trains N entries side by side, each in its own process with ``cores // N`` threads
(its log beside its result).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from _common import CAMVID_DATA, KITTI_DATA, ROOT, load_record, machine_summary, number, save_record

DATASETS = ("kitti", "camvid")
DEFAULT_DATA = {"kitti": KITTI_DATA, "camvid": CAMVID_DATA}
FAST_CONFIG = {"kitti": "kitti_fast_cpu", "camvid": "camvid_fast_cpu"}
METHODS = ("box", "box-i", "grabcut", "grabcut-i", "candidates", "m-and-g")
ENTRIES = ("full", *METHODS, "rounds-box", "rounds-box-i", "boxsup")
MIN_AREA = 100  # pixels a mask component needs to get a box (semseg derive's default)
# The papers' own numbers (PASCAL VOC 2012 val mIoU, %): (what, weak, full).
PAPERS: dict[str, tuple[str, float, float]] = {
    "m-and-g": ("Simple Does It, M∩G+ (VOC12 val)", 65.7, 69.1),
    "boxsup": ("BoxSup (VOC12 val)", 62.0, 63.8),
}


@dataclass
class Result:
    dataset: str
    entry: str
    max_f: float | None  # KITTI Road: devkit perspective MaxF / IoU of best.ckpt, %
    iou: float | None
    miou: float | None  # CamVid: mIoU of best.ckpt, %
    epochs: int | None
    train_cpu_s: float  # CPU seconds of the whole entry's training process
    label_cpu_s: float  # CPU seconds spent making its labels (pseudo-labels), outside the budget
    run_dir: str
    label_quality: list[dict[str, Any]] = field(default_factory=list)  # [{"labels", quality}]

    @property
    def score(self) -> float | None:
        return self.max_f if self.dataset == "kitti" else self.miou


# --- data, boxes and pseudo-labels ---------------------------------------------------------------


def base_config(dataset: str, args: argparse.Namespace):
    from semseg.config import load_config

    config = load_config(FAST_CONFIG[dataset])
    config.data.kind = "kitti" if dataset == "kitti" else "folder"
    config.data.root = str(args.data[dataset])
    config.train.epochs = args.max_epochs
    config.train.max_time_s = args.budget_s
    config.train.clock = "cpu"
    config.train.seed = args.seed
    config.train.progress = False
    config.train.overlay_samples = 0
    return config


def dataset_dir(args: argparse.Namespace, dataset: str) -> Path:
    return args.runs / dataset


def training_boxes(args: argparse.Namespace, dataset: str) -> Path:
    """COCO boxes of the run split's training images (derived from their masks once)."""
    from semseg.data.datamodule import data_split, index_samples
    from semseg.weak.jobs import derive_boxes

    folder = dataset_dir(args, dataset) / "boxes"
    train_json = folder / "boxes_train.json"
    if train_json.is_file():
        return train_json
    config = base_config(dataset, args)
    split = data_split(config.data, index_samples(config.data), config.train.seed)
    derive_boxes(args.data[dataset], folder / "boxes.json", min_area=MIN_AREA)
    raw = json.loads((folder / "boxes.json").read_text())
    train = set(split["train"])
    images = [i for i in raw["images"] if Path(i["file_name"]).stem in train]
    ids = {i["id"] for i in images}
    raw["images"] = images
    raw["annotations"] = [a for a in raw["annotations"] if a["image_id"] in ids]
    partial = train_json.with_suffix(".json.partial")
    partial.write_text(json.dumps(raw))
    os.replace(partial, train_json)
    return train_json


def pseudo_labels(args: argparse.Namespace, dataset: str, method: str) -> tuple[Path, float]:
    """The training images' pseudo-labels of ``method`` and the CPU seconds they took (kept in
    the folder's ``quality.json``, which is written last)."""
    from semseg.io import write_json_atomic
    from semseg.weak.jobs import write_pseudo_labels
    from semseg.weak.pseudolabels import PseudoLabelParams

    folder = labels_dir(args, dataset, method)
    quality = folder / "quality.json"
    if quality.is_file():
        return folder, float(json.loads(quality.read_text()).get("cpu_seconds", 0.0))
    boxes = training_boxes(args, dataset)
    print(f"== {dataset}: {method} pseudo-labels -> {folder}", flush=True)
    start = time.process_time()
    params = PseudoLabelParams(grabcut_max_side=args.grabcut_max_side, seed=args.seed)
    result = write_pseudo_labels(
        boxes, args.data[dataset], method, folder, skip_bad=True, params=params
    )
    result["cpu_seconds"] = time.process_time() - start
    write_json_atomic(quality, result)
    return folder, result["cpu_seconds"]


def labels_dir(args: argparse.Namespace, dataset: str, method: str) -> Path:
    """Where ``method``'s pseudo-labels go (GrabCut on shrunk images gets its own folder)."""
    uses_grabcut = method in ("grabcut", "grabcut-i", "m-and-g")
    side = f"-side{args.grabcut_max_side}" if uses_grabcut and args.grabcut_max_side else ""
    return dataset_dir(args, dataset) / "labels" / f"{method}{side}"


def prepare_labels(args: argparse.Namespace, todo: Sequence[tuple[str, str]]) -> None:
    """Boxes and pseudo-labels of every planned entry, before any training starts (``--jobs``
    methods at a time, each in its own process)."""
    for dataset in dict.fromkeys(dataset for dataset, entry in todo if entry != "full"):
        training_boxes(args, dataset)
    methods = [(dataset, entry) for dataset, entry in todo if entry in METHODS]
    if args.jobs <= 1 or len(methods) <= 1:
        for dataset, method in methods:
            pseudo_labels(args, dataset, method)
        return
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(pseudo_labels, args, d, m) for d, m in methods]
        for future in futures:
            future.result()


# --- one entry -----------------------------------------------------------------------------------


def entry_config(args: argparse.Namespace, dataset: str, entry: str):
    """The configuration of one entry: the base recipe plus its kind of supervision."""
    config = base_config(dataset, args)
    config.train.name = entry
    config.train.run_dir = str(results_dir(args) / dataset / entry)
    if entry in METHODS:
        config.data.labels = str(pseudo_labels(args, dataset, entry)[0])
    elif entry.startswith("rounds-"):
        config.data.boxes = str(training_boxes(args, dataset))
        config.train.rounds = args.rounds
        config.train.round_method = entry.removeprefix("rounds-")
    elif entry == "boxsup":
        config.data.boxes = str(training_boxes(args, dataset))
        config.train.supervision = "boxsup"
    elif entry != "full":
        raise SystemExit(f"unknown entry {entry!r}: {', '.join(ENTRIES)}")
    return config


def train_entry(args: argparse.Namespace, dataset: str, entry: str) -> Result:
    """Train (or resume) one entry and read its scores."""
    from semseg.runs import RunDir
    from semseg.training import train

    config = entry_config(args, dataset, entry)
    run = RunDir(Path(config.train.run_dir))
    start = time.process_time()
    if run.config.is_file() and not args.fresh and not run.is_finished():
        print(f"== {dataset} {entry}: resuming {run.path}", flush=True)
        train(run.read_config(), resume=run.path)
    elif args.fresh or not run.is_finished():
        train(config, overwrite=True)
    cpu = time.process_time() - start
    results = run.read_eval()
    scores = results["groups"]["all"]
    label_cpu = pseudo_labels(args, dataset, entry)[1] if entry in METHODS else 0.0
    return Result(
        dataset=dataset,
        entry=entry,
        max_f=scores.get("max_f") if dataset == "kitti" else None,
        iou=scores.get("iou") if dataset == "kitti" else None,
        miou=scores.get("miou") if "per_class" in results else None,
        epochs=count_epochs(run.metrics),
        train_cpu_s=cpu,
        label_cpu_s=label_cpu,
        run_dir=str(run.path),
        label_quality=label_quality(args, dataset, entry, run.path),
    )


def count_epochs(metrics_csv: Path) -> int | None:
    if not metrics_csv.is_file():
        return None
    return sum(1 for line in metrics_csv.read_text().splitlines()[1:] if line.strip())


def label_quality(
    args: argparse.Namespace, dataset: str, entry: str, run_dir: Path
) -> list[dict[str, Any]]:
    """The quality of the labels the entry trained on: the pseudo-labels, every round's labels,
    or BoxSup's first and last epoch's choice."""
    if entry in METHODS:
        found = [(entry, labels_dir(args, dataset, entry) / "quality.json")]
    elif entry.startswith("rounds-"):
        rounds = sorted((run_dir / "rounds").glob("round_*/quality.json"))
        found = [(f"{entry} round {p.parent.name.split('_')[1]}", p) for p in rounds]
    elif entry == "boxsup":
        epochs = sorted((run_dir / "boxsup").glob("epoch_*.json"))
        chosen = epochs[:1] + epochs[-1:] if len(epochs) > 1 else epochs
        found = [(f"boxsup epoch {int(p.stem.split('_')[1])}", p) for p in chosen]
    else:
        return []
    rows = []
    for label, path in found:
        quality = json.loads(path.read_text()).get("quality")
        if quality is not None:
            keep = ("images", "coverage", "miou", "max_f", "road_iou")
            rows.append({"labels": label, **{k: quality.get(k) for k in keep}})
    return rows


# --- the plan, children, results -----------------------------------------------------------------


def results_dir(args: argparse.Namespace) -> Path:
    return args.runs / f"results-cpu{args.budget_s:g}s-seed{args.seed}"


def result_path(args: argparse.Namespace, dataset: str, entry: str) -> Path:
    return results_dir(args) / f"{dataset}-{entry}.json"


def run_plan(args: argparse.Namespace, plan: Sequence[tuple[str, str]]) -> list[Result]:
    todo = [
        item for item in plan if args.fresh or load_record(result_path(args, *item), Result) is None
    ]
    for item in plan:
        if item not in todo:
            print(f"== {item[0]} {item[1]}: finished earlier", flush=True)
    prepare_labels(args, todo)
    if args.jobs <= 1:
        for dataset, entry in todo:
            print(f"== {dataset} {entry}: training for {args.budget_s:.0f} CPU s", flush=True)
            save_record(result_path(args, dataset, entry), train_entry(args, dataset, entry))
    else:
        run_in_children(args, todo)
    results = [load_record(result_path(args, *item), Result) for item in plan]
    missing = [f"{d} {e}" for (d, e), r in zip(plan, results, strict=True) if r is None]
    if missing:
        raise SystemExit(f"no result for {', '.join(missing)}: see the logs in {results_dir(args)}")
    return [r for r in results if r is not None]


def run_in_children(args: argparse.Namespace, todo: Sequence[tuple[str, str]]) -> None:
    """``--jobs N``: each entry in a child process of this script (``--only DATASET:ENTRY``)."""
    folder = results_dir(args)
    folder.mkdir(parents=True, exist_ok=True)
    waiting, running = list(todo), []
    while waiting or running:
        while waiting and len(running) < args.jobs:
            dataset, entry = waiting.pop(0)
            command = [
                sys.executable, str(Path(__file__).resolve()), *args.argv,
                "--jobs", "1", "--threads", str(args.threads), "--only", f"{dataset}:{entry}",
            ]  # fmt: skip
            log = (folder / f"{dataset}-{entry}.log").open("w")
            print(f"== {dataset} {entry}: training ({args.threads} threads, log {log.name})",
                  flush=True)  # fmt: skip
            process = subprocess.Popen(command, stdout=log, stderr=log)
            running.append(((dataset, entry), process, log))
        time.sleep(0.5)
        for item in [item for item in running if item[1].poll() is not None]:
            (dataset, entry), process, log = item
            log.close()
            running.remove(item)
            result = load_record(result_path(args, dataset, entry), Result)
            state = "failed" if result is None else f"score {number(result.score, 1)}"
            print(f"   {dataset} {entry}: {state} (exit {process.returncode})", flush=True)


# --- tables --------------------------------------------------------------------------------------


def fraction(value: float | None, full: float | None) -> float | None:
    if value is None or not full:
        return None
    return 100.0 * value / full


def paper_cell(entry: str) -> str:
    if entry not in PAPERS:
        return "–"
    what, weak, full = PAPERS[entry]
    return f"{100 * weak / full:.0f}% ({weak} / {full}, {what})"


def score_table(dataset: str, results: Sequence[Result]) -> str:
    """Scores, fraction of the fully supervised score recovered, the papers' fractions."""
    full = next((r for r in results if r.entry == "full"), None)
    kitti = dataset == "kitti"
    header = "| entry | val MaxF % | val IoU % " if kitti else "| entry | val mIoU % "
    lines = [
        header + "| recovered of full % | paper: recovered | epochs | label CPU s |",
        "|---|" + "---:|" * (2 if kitti else 1) + "---:|---|---:|---:|",
    ]
    for r in results:
        scores = (
            f"| {number(r.max_f, 1)} | {number(r.iou, 1)} " if kitti else f"| {number(r.miou, 1)} "
        )
        recovered = fraction(r.score, full.score if full else None)
        lines.append(
            f"| {r.entry} {scores}| {number(recovered, 1)} | {paper_cell(r.entry)} "
            f"| {r.epochs} | {r.label_cpu_s:.0f} |"
        )
    return "\n".join(lines) + "\n"


def quality_table(dataset: str, results: Sequence[Result]) -> str:
    """Pseudo-label quality against the ground truth (training images)."""
    kitti = dataset == "kitti"
    lines = [
        "| labels | images | coverage % | mIoU %"
        + (" | MaxF % | road IoU %" if kitti else "")
        + " |",
        "|---|---:|---:|---:|" + ("---:|---:|" if kitti else ""),
    ]
    for r in results:
        for row in r.label_quality:
            cells = [row["labels"], str(row["images"]), number(row["coverage"], 1),
                     number(row["miou"], 1)]  # fmt: skip
            if kitti:
                cells += [number(row.get("max_f"), 1), number(row.get("road_iou"), 1)]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def report(args: argparse.Namespace, results: Sequence[Result]) -> str:
    parts = []
    for dataset in args.datasets:
        rows = [r for r in results if r.dataset == dataset]
        if not rows:
            continue
        name = "KITTI Road" if dataset == "kitti" else "CamVid"
        parts += [f"### {name}: scores", "", score_table(dataset, rows)]
        parts += [f"### {name}: training-label quality", "", quality_table(dataset, rows)]
    command = "python3 benchmarks/weak_boxes.py " + " ".join(args.argv)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    machine = machine_summary(f"{args.threads} torch threads per entry, load {load:.1f} at the end")
    parts.append(
        f"`{command.strip()}` on {date.today().isoformat()}; {machine}. {args.budget_s:.0f} CPU s "
        f"of training per entry (process CPU seconds / threads; recursive rounds share it), seed "
        f"{args.seed}, from scratch, {', '.join(FAST_CONFIG[d] for d in args.datasets)}. Scores "
        "of best.ckpt on the validation images at full resolution; recovered = the entry's "
        "score / full supervision's (KITTI: MaxF, CamVid: mIoU). Boxes: one per mask component "
        f"of at least {MIN_AREA} pixels of the training images. Label CPU s: making a "
        "method's pseudo-labels, outside the budget (BoxSup's candidates and the predictions "
        "between rounds are outside it too; BoxSup's choice before each epoch is inside it). "
        "Epochs: of the last round for the rounds. Label quality: on the training images, "
        "pixels both label (coverage: share of labelled ground-truth pixels that carry a "
        "label)."
        + (
            f" GrabCut on images shrunk to {args.grabcut_max_side} pixels."
            if args.grabcut_max_side
            else ""
        )
        + "\n"
    )
    return "\n".join(parts)


# --- command line --------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default="kitti,camvid", help="kitti,camvid")
    parser.add_argument("--entries", default=",".join(ENTRIES), help=", ".join(ENTRIES))
    parser.add_argument("--budget-s", type=float, default=600.0, help="CPU training s per entry")
    parser.add_argument("--rounds", type=int, default=3, help="recursive training rounds")
    parser.add_argument("--max-epochs", type=int, default=1000, help="the budget decides")
    parser.add_argument(
        "--grabcut-max-side", type=int, help="GrabCut on images shrunk to this side (speed)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kitti-data", type=Path, default=KITTI_DATA, help="KITTI data_road")
    parser.add_argument("--camvid-data", type=Path, default=CAMVID_DATA, help="CamVid folder")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "weak_boxes")
    parser.add_argument("--out", type=Path, help="write the markdown tables (and JSON) here")
    parser.add_argument("--jobs", type=int, default=1, help="entries trained side by side")
    parser.add_argument("--threads", type=int, help="torch threads per entry (cores // jobs)")
    parser.add_argument("--fresh", action="store_true", help="retrain finished entries too")
    parser.add_argument("--only", help=argparse.SUPPRESS)  # DATASET:ENTRY, in a --jobs child
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    args.entries = [e.strip() for e in args.entries.split(",") if e.strip()]
    for dataset in args.datasets:
        if dataset not in DATASETS:
            parser.error(f"--datasets: unknown {dataset!r} ({', '.join(DATASETS)})")
    for entry in args.entries:
        if entry not in ENTRIES:
            parser.error(f"--entries: unknown {entry!r} ({', '.join(ENTRIES)})")
    if args.jobs < 1 or args.rounds < 1:
        parser.error("--jobs and --rounds must be at least 1")
    args.data = {"kitti": args.kitti_data, "camvid": args.camvid_data}
    if args.threads is None:
        args.threads = max(1, (os.cpu_count() or 1) // args.jobs)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    plan = [(d, e) for d in args.datasets for e in args.entries]
    if args.only is not None:
        dataset, _, entry = args.only.partition(":")
        save_record(result_path(args, dataset, entry), train_entry(args, dataset, entry))
        return 0
    results = run_plan(args, plan)
    text = report(args, results)
    print()
    print(text)
    if args.out is not None:
        args.out.write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps([asdict(r) for r in results], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

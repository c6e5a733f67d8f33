"""Region-based vs FCN at the same CPU budget: rcnn-regions, sds and hypercolumn-regions against the
recipe's own FCN on CamVid and KITTI Road (BENCHMARKS.md, "Region-based vs FCN").

Every entry trains with :func:`semseg.training.train` from the dataset's fast CPU recipe
(``configs/camvid_fast_cpu.yaml``, ``configs/kitti_fast_cpu.yaml``), only ``model.name`` (and,
for region models, ``model.proposals``) changed, for ``--budget-s`` seconds of training
(``--clock cpu``: process CPU seconds per thread, fair on a shared machine, as
``benchmarks/cpu_budget.py``), seed 0, and reports from ``eval_val.json`` (full resolution, the
validation images): mIoU (CamVid) or MaxF and road IoU (KITTI), per-class IoU, seconds per image
at batch 1 on real validation images (resize, proposals, network, paste, full-resolution
softmax), parameters, epochs. Before training, the proposals of every image are computed once
into ``RUNS/proposals`` (as ``semseg proposals`` does, reused by every later run) and the
proposal recall of the validation images is reported: the mIoU if every region got its majority
label, the best a region classifier could reach.

    python3 benchmarks/regions.py --quick --budget-s 10          # smoke test on synthetic scenes
    python3 benchmarks/regions.py                                # both datasets, 600 s each entry
    python3 benchmarks/regions.py --datasets camvid --models fcn8s rcnn-regions sds

Each finished entry is kept in ``RUNS/results-regions-<clock><budget>s-seed<seed>/NAME.json``; a
run stopped part-way and started again with the same arguments trains only the rest
(``--fresh``: everything again).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path

import torch
from _common import CAMVID_DATA, KITTI_DATA, ROOT, load_record, machine_summary, number, save_record

FAST_CONFIG = {"kitti": "kitti_fast_cpu", "camvid": "camvid_fast_cpu"}
DEFAULT_DATA = {"kitti": KITTI_DATA, "camvid": CAMVID_DATA}
DEFAULT_MODELS = ("fcn8s", "rcnn-regions", "sds", "hypercolumn-regions")
REGION_MODELS = ("rcnn-regions", "sds", "hypercolumn-regions")
TIMED_IMAGES = 5


@dataclass
class Result:
    dataset: str
    model: str
    proposals: str | None
    miou: float | None
    max_f: float | None
    road_iou: float | None
    class_iou: dict[str, float | None]
    seconds_per_image: float
    params: int
    epochs: int | None
    recall_miou: float | None  # proposal recall on the validation images
    regions_per_image: float | None
    proposal_seconds: float | None  # per image, when computed in this run (else cached)
    run_dir: str


def base_config(dataset: str, model: str, args: argparse.Namespace):
    """The dataset's fast CPU recipe with only the model changed."""
    from semseg.config import load_config

    config = load_config(FAST_CONFIG[dataset])
    config.data.kind = "kitti" if dataset == "kitti" or args.quick else "folder"
    config.data.root = str(data_root(dataset, args))
    config.data.proposals_dir = str(args.runs / "proposals")
    config.model.name = model
    config.model.proposals = args.proposals
    if args.quick:
        config.data.height, config.data.width = 64, 96
        config.model.num_classes = 2
        config.train.batch_size = 4
    config.train.epochs = args.max_epochs
    config.train.max_time_s = args.budget_s
    config.train.clock = args.clock
    config.train.seed = args.seed
    config.train.progress = False
    config.train.overlay_samples = 2
    config.train.out_dir = str(args.runs)
    config.train.name = f"{dataset}-{model}"
    return config


def data_root(dataset: str, args: argparse.Namespace) -> Path:
    if not args.quick:
        return Path(args.data.get(dataset, DEFAULT_DATA[dataset]))
    root = args.runs / "quick-data"
    if not (root / "training" / "image_2").is_dir():
        from semseg.data.synthetic import write_kitti_layout

        write_kitti_layout(root, num_train=12, seed=args.seed, height=60, width=200)
    return root


def prepare_proposals(dataset: str, args: argparse.Namespace) -> dict:
    """The proposals of every image of the dataset, computed once into ``RUNS/proposals``."""
    from semseg.regions.jobs import write_proposals
    from semseg.regions.proposals import ProposalParams

    print(f"== {dataset}: {args.proposals} proposals into {args.runs / 'proposals'}", flush=True)
    summary = write_proposals(
        data_root(dataset, args), ProposalParams(args.proposals), args.runs / "proposals"
    )
    print(
        f"   {summary['computed']} computed, {summary['reused']} reused, "
        f"{summary['regions_per_image']:.0f} regions per image",
        flush=True,
    )
    return summary


def validation_recall(run_dir: Path, config) -> float | None:
    """Proposal recall (mIoU) over the run's validation images, from the proposal cache."""
    from semseg.data.datamodule import index_samples, make_reader
    from semseg.regions.proposals import ProposalParams, cached_regions, proposal_recall
    from semseg.runs import RunDir

    run = RunDir(run_dir)
    names = set(run.read_split()["val"])
    reader = make_reader(config.data, config.model.num_classes)
    params = ProposalParams(config.model.proposals)
    pairs = []
    for sample in index_samples(config.data):
        if sample.name in names:
            image, mask = reader(sample)
            regions, _ = cached_regions(
                sample.image_path, image, params, Path(config.data.proposals_dir)
            )
            pairs.append((regions, mask))
    if not pairs:
        return None
    return proposal_recall(pairs, config.model.num_classes).miou


def seconds_per_image(run_dir: Path, config) -> float:
    """Median seconds of batch-1 prediction on real validation images (proposals included)."""
    from semseg.data.datamodule import index_samples, make_reader
    from semseg.inference.checkpoint import load_model
    from semseg.inference.predictor import Predictor
    from semseg.runs import RunDir

    run = RunDir(run_dir)
    names = run.read_split()["val"][:TIMED_IMAGES]
    reader = make_reader(config.data, config.model.num_classes)
    images = [reader(s)[0] for s in index_samples(config.data) if s.name in set(names)]
    predictor = Predictor(load_model(run.best_checkpoint()), batch_size=1)
    predictor.predict_batch(images[:1])  # warm-up
    times = []
    for image in images:
        start = time.perf_counter()
        predictor.predict_batch([image])
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def epochs_of(metrics_csv: Path) -> int | None:
    if not metrics_csv.is_file():
        return None
    return sum(1 for line in metrics_csv.read_text().splitlines()[1:] if line.strip())


def train_entry(dataset: str, model: str, args: argparse.Namespace, proposals: dict) -> Result:
    from semseg.inference.checkpoint import load_model
    from semseg.runs import RunDir
    from semseg.training import train

    config = base_config(dataset, model, args)
    run = RunDir(train(config))
    results = run.read_eval()
    scores = results["groups"]["all"]
    per_class = results.get("per_class") or {}
    region = model in REGION_MODELS
    params = sum(p.numel() for p in load_model(run.best_checkpoint()).model.parameters())
    return Result(
        dataset=dataset,
        model=model,
        proposals=args.proposals if region else None,
        miou=scores.get("miou"),
        max_f=scores.get("max_f"),
        road_iou=scores.get("iou"),
        class_iou={name: value.get("iou") for name, value in per_class.items()},
        seconds_per_image=seconds_per_image(run.path, config),
        params=params,
        epochs=epochs_of(run.metrics),
        recall_miou=validation_recall(run.path, config) if region else None,
        regions_per_image=proposals["regions_per_image"] if region else None,
        proposal_seconds=proposals["seconds_per_computed_image"] if region else None,
        run_dir=str(run.path),
    )


def results_dir(args: argparse.Namespace) -> Path:
    quick = "-quick" if args.quick else ""
    return args.runs / f"results-regions-{args.clock}{args.budget_s:g}s-seed{args.seed}{quick}"


def result_name(dataset: str, model: str, args: argparse.Namespace) -> str:
    suffix = f"-{args.proposals}" if model in REGION_MODELS else ""
    return f"{dataset}-{model}{suffix}"


def run_all(args: argparse.Namespace) -> list[Result]:
    results = []
    for dataset in args.datasets:
        proposals: dict | None = None
        for model in args.models:
            path = results_dir(args) / f"{result_name(dataset, model, args)}.json"
            cached = None if args.fresh else load_record(path, Result)
            if cached is not None:
                print(f"== {dataset} {model}: kept from {path}", flush=True)
                results.append(cached)
                continue
            if model in REGION_MODELS and proposals is None:
                proposals = prepare_proposals(dataset, args)
            print(f"== {dataset} {model}: training for {args.budget_s:g} s", flush=True)
            result = train_entry(dataset, model, args, proposals or {})
            save_record(path, result)
            results.append(result)
    return results


def score(result: Result) -> float | None:
    """The dataset's headline score: mIoU on CamVid, MaxF on KITTI Road."""
    return result.miou if result.dataset == "camvid" else result.max_f


def format_tables(results: Sequence[Result], baseline: str) -> str:
    lines = [
        f"| dataset | model | proposals | mIoU | MaxF | road IoU | % of {baseline} | "
        "proposal recall (val mIoU) | regions / img | s/img | params | epochs |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        reference = next(
            (r for r in results if r.dataset == result.dataset and r.model == baseline), None
        )
        ratio = None
        if reference is not None and score(reference) and score(result) is not None:
            ratio = 100.0 * score(result) / score(reference)  # type: ignore[operator]
        lines.append(
            f"| {result.dataset} | {result.model} | {result.proposals or '–'} "
            f"| {number(result.miou, 1)} | {number(result.max_f, 1)} "
            f"| {number(result.road_iou, 1)} | {number(ratio, 0)} "
            f"| {number(result.recall_miou, 1)} | {number(result.regions_per_image, 0)} "
            f"| {number(result.seconds_per_image, 3)} | {number(result.params, 0)} "
            f"| {number(result.epochs, 0)} |"
        )
    for dataset in dict.fromkeys(r.dataset for r in results):
        rows = [r for r in results if r.dataset == dataset]
        names = list(rows[0].class_iou)
        if not names:  # KITTI Road: MaxF and road IoU above
            continue
        lines += [
            "",
            f"Per-class IoU, {dataset}:",
            "",
            "| model | " + " | ".join(names) + " |",
            "|---|" + "---:|" * len(names),
        ]
        for r in rows:
            cells = " | ".join(number(r.class_iou.get(name), 1) for name in names)
            lines.append(f"| {r.model} | {cells} |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", choices=("camvid", "kitti"), default=None)
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument(
        "--proposals", choices=("felzenszwalb", "slic", "selective-search"), default="felzenszwalb"
    )
    parser.add_argument("--camvid", type=Path, help="CamVid folder (default: ../shared)")
    parser.add_argument("--kitti", type=Path, help="KITTI data_road folder (default: ../shared)")
    parser.add_argument("--budget-s", type=float, default=600.0, help="training seconds each")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="cpu",
        help="budget in CPU seconds / threads (fair on a shared CPU), or wall seconds",
    )
    parser.add_argument("--max-epochs", type=int, default=1000, help="the budget decides")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "regions")
    parser.add_argument("--out", type=Path, help="also write the tables (markdown) and JSON here")
    parser.add_argument("--fresh", action="store_true", help="retrain finished entries too")
    parser.add_argument(
        "--quick", action="store_true", help="smoke mode: tiny synthetic road scenes"
    )
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.datasets = args.datasets or (["kitti"] if args.quick else ["camvid", "kitti"])
    args.data = {
        name: path for name, path in (("camvid", args.camvid), ("kitti", args.kitti)) if path
    }
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    results = run_all(args)
    table = format_tables(results, args.models[0])
    header = (
        f"Region-based vs FCN, {args.budget_s:g} s ({args.clock} clock) of training each, seed "
        f"{args.seed}, {date.today()}; {machine_summary(f'{torch.get_num_threads()} threads')}"
    )
    print(f"\n{header}\n\n{table}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(f"{header}\n\n{table}\n")
        payload = {"argv": args.argv, "results": [asdict(r) for r in results]}
        args.out.with_suffix(".json").write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

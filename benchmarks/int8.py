"""int8 inference side by side: ONNX Runtime static int8 (semseg quantize) against fp32.

For each model (FCN-8s on VGG16, and FCN-8s on ResNet-18: the ``kitti_fast_cpu`` model) at
160 x 576, in one process and interleaved round-robin (one call of each path in turn, so a burst
of load from other jobs hits all alike), medians of ``--repeats`` timed calls after one warm-up.
Each timed call follows one untimed call of the same path: on 2 cores the first call after
another runtime (onnxruntime's spinning thread pool, torch's OpenMP threads) ran up to 2x slower
than the next one, which would charge each path for its neighbour in the round. The paths:

* torch fp32 eager (the reference of ``semseg predict --backend torch``),
* onnxruntime fp32 (the checkpoint's ONNX export),
* onnxruntime int8 (:func:`semseg.inference.quantize.quantize_onnx`, MinMax calibration on
  ``--calibration-images`` images of ``--data``, resized as ``semseg predict`` does),
* onnxruntime int8 with the classifier head in fp32 (score layers and upsampling: ``--keep-head``),
* onnxruntime int8 as ``--precision int8`` caches it: each method of
  :data:`semseg.inference.int8_cache.CALIBRATIONS`, the one its parity guard rates closest to
  fp32 on the calibration images kept (:func:`semseg.inference.int8_cache.parity_rank`),
* torch int8 through PyTorch's PT2E flow as ``--backend torch --precision int8`` builds it
  (:mod:`semseg.inference.pt2e`: torchao's ``X86InductorQuantizer``, HistogramObserver
  calibration on the same images, lowered to oneDNN int8 kernels; one image per call; named and
  skipped where torchao is not installed: ``pip install -e ".[int8]"``),
* torch bf16 channels-last compiled, run from its AOTInductor package (``semseg export --format
  pt2``: compiled once, timed warm after loading the package; the compile and load seconds are
  reported beside it).

``--e2e`` then times ``semseg predict`` end to end in fresh processes on ``--e2e-images`` images
(import, load, backend choice, inference, PNGs): ``--backend auto`` and ``--precision int8`` with
an empty cache folder (first run: quantization, compilation, calibration) and again with the
cache that run left (cached run), and ``--backend torch``; for each the wall time and the time to
the first PNG written (with ``--e2e-batch 1``: the time before the first image plus that image).

Weights are untrained (seeded) unless ``--checkpoint MODEL=PATH`` names a checkpoint, so the
parity columns (int8 against onnxruntime fp32 on the timed images) describe the arithmetic, not
a trained model's quality; with a checkpoint, ``--quality`` also runs ``semseg quantize``'s
whole procedure (each calibration method, MaxF of int8 and fp32 on held-out images).

    python3 benchmarks/int8.py --out int8.md --json int8.json --batches 1,8 --repeats 5 \\
        --checkpoint resnet18=runs/RUN/checkpoints/best.ckpt --quality --e2e
    python3 benchmarks/int8.py --quick --out /tmp/int8.md   # smoke test: tiny sizes, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import KITTI_DATA

from semseg.data.synthetic import generate_scene
from semseg.data.transforms import image_to_tensor
from semseg.inference.aot import AotBackend, aot_unsupported, export_pt2
from semseg.inference.checkpoint import LoadedModel, load_model
from semseg.inference.int8_cache import CALIBRATIONS as CACHED_CALIBRATIONS
from semseg.inference.int8_cache import quantize_closest
from semseg.inference.machine import cpu_flags, cpu_model
from semseg.inference.onnx_export import export_onnx
from semseg.inference.quantize import (
    count_qdq,
    head_nodes,
    preprocess,
    quantize_checkpoint,
    quantize_onnx,
)
from semseg.inference.runtimes import OnnxRuntimeBackend, TorchBackend
from semseg.io import list_images, read_rgb

DEFAULT_DATA = KITTI_DATA
CACHED_PATH = "onnxruntime int8, as --precision int8 caches it"
HEIGHT, WIDTH = 160, 576
MODELS = {
    "vgg16": ("FCN-8s / VGG16", {}),
    "resnet18": ("FCN-8s / ResNet-18 (kitti_fast_cpu)", {"backbone": "resnet18"}),
}


def untrained(key: str, work: Path, width_mult: float = 1.0) -> LoadedModel:
    """The model with seeded weights, saved as a checkpoint (the artefact cache and ``--e2e``
    key by its file); its zero-initialised score layers get seeded weights too, so that its
    output varies over the image."""
    from semseg.tasks.segmentation import SegmentationTask

    torch.manual_seed(0)
    options = {**MODELS[key][1], **({"width_mult": width_mult} if width_mult != 1.0 else {})}
    task = SegmentationTask(
        model_name="fcn8s",
        num_classes=2,
        model_options=options,
        class_names=["not road", "road"],
        input_size=[HEIGHT, WIDTH],
    )
    for layer in task.model.modules():
        if isinstance(layer, torch.nn.Conv2d) and layer.out_channels == 2:
            torch.nn.init.normal_(layer.weight, std=0.01)
    path = work / f"{key}-untrained.ckpt"
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams)}, path)
    return load_model(path)


def kitti_images(data: Path, count: int) -> tuple[list[np.ndarray], str]:
    """``count`` KITTI training images spread over the set, or synthetic scenes without data."""
    folder = data / "training" / "image_2"
    if folder.is_dir():
        paths = list_images(folder)
        picks = sorted({int(round(v)) for v in np.linspace(0, len(paths) - 1, count)})
        return [read_rgb(paths[i]) for i in picks], f"{len(picks)} KITTI training images"
    scenes = [generate_scene(seed, 375, 1242).image for seed in range(count)]
    return scenes, f"{count} synthetic scenes ({data} absent)"


def batch_of(images: Sequence[np.ndarray], size: int) -> torch.Tensor:
    chosen = [images[i % len(images)] for i in range(size)]
    return torch.stack([image_to_tensor(image, HEIGHT, WIDTH) for image in chosen])


def timed(run: Callable[[], Any]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def bench_model(
    key: str, args: argparse.Namespace, work: Path, log: Callable[[str], None]
) -> dict[str, Any]:
    checkpoint = dict(args.checkpoint).get(key)
    loaded = load_model(checkpoint) if checkpoint else untrained(key, work, args.width_mult)
    record: dict[str, Any] = {
        "model": MODELS[key][0],
        "checkpoint": checkpoint or "untrained",
        "skipped": {},
    }
    fp32 = work / f"{key}.onnx"
    record["export_s"] = timed(lambda: export_onnx(loaded, fp32, verify=False))
    calibration, source = kitti_images(args.data, args.calibration_images)
    record["calibration"] = f"MinMax on {source}"
    pre = work / f"{key}.pre.onnx"
    record["preprocess_s"] = timed(lambda: preprocess(fp32, pre))
    int8 = work / f"{key}.int8.onnx"
    record["quantize_s"] = timed(
        lambda: quantize_onnx(fp32, int8, calibration, "minmax", preprocessed=pre)
    )
    head = head_nodes(pre, loaded.num_classes)
    int8_head = work / f"{key}.int8-head.onnx"
    quantize_onnx(fp32, int8_head, calibration, "minmax", exclude=head, preprocessed=pre)
    started = time.perf_counter()
    cached_work = work / f"{key}-cached"
    cached_work.mkdir(exist_ok=True)
    chosen, trials = quantize_closest(fp32, calibration, cached_work, args.threads)
    record["cached_calibration"], int8_cached = chosen, trials[chosen][0]
    record["quantize_cached_s"] = time.perf_counter() - started
    record["head_nodes"] = head
    record["qdq_nodes"] = sum(
        count_qdq(int8).get(op, 0) for op in ("QuantizeLinear", "DequantizeLinear")
    )
    log(f"{key}: exported {record['export_s']:.1f} s, quantized {record['quantize_s']:.1f} s")
    paths: dict[str, Any] = {
        "torch fp32 eager": TorchBackend(loaded.model),
        "onnxruntime fp32": OnnxRuntimeBackend(fp32, args.threads),
        "onnxruntime int8": OnnxRuntimeBackend(int8, args.threads),
        "onnxruntime int8, head fp32": OnnxRuntimeBackend(int8_head, args.threads),
        CACHED_PATH: OnnxRuntimeBackend(int8_cached, args.threads),
    }
    record["size_mb"] = {
        "onnxruntime fp32": fp32.stat().st_size / 1e6,
        "onnxruntime int8": int8.stat().st_size / 1e6,
        "onnxruntime int8, head fp32": int8_head.stat().st_size / 1e6,
        CACHED_PATH: int8_cached.stat().st_size / 1e6,
    }
    if not args.no_pt2e:
        add_pt2e(paths, record, loaded, calibration, log)
    if not args.no_aot:
        add_aot(paths, record, loaded, work, log)
    images, _ = kitti_images(args.data, 8)
    record["rows"] = []
    for batch_size in args.batches:
        batch = batch_of(images, batch_size)
        reference = paths["onnxruntime fp32"].logits(batch).softmax(dim=1)
        parity, first = {}, {}
        for name, backend in paths.items():
            first[name] = timed(lambda b=backend, x=batch: b.logits(x))
            p = backend.logits(batch).softmax(dim=1)
            parity[name] = (
                float((p - reference).abs().max()),
                float((p.argmax(1) == reference.argmax(1)).float().mean()),
            )
        times: dict[str, list[float]] = {name: [] for name in paths}
        repeats = args.repeats if batch_size == 1 else max(1, args.repeats // 2)
        for _ in range(repeats):
            for name, backend in paths.items():
                backend.logits(batch)  # settle: see the module docstring
                times[name].append(timed(lambda b=backend, x=batch: b.logits(x)) / batch_size)
        base = statistics.median(times["torch fp32 eager"])
        ort = statistics.median(times["onnxruntime fp32"])
        for name in paths:
            seconds = statistics.median(times[name])
            record["rows"].append(
                {
                    "path": name,
                    "batch": batch_size,
                    "seconds": seconds,
                    "vs_eager": base / seconds,
                    "vs_ort_fp32": ort / seconds,
                    "first_call_s": first[name],
                    "max_abs_prob_diff": parity[name][0],
                    "label_agreement": parity[name][1],
                    "repeats": repeats,
                }
            )
        log(
            f"{key} batch {batch_size}: "
            + ", ".join(f"{name} {statistics.median(times[name]):.3f}" for name in paths)
        )
    del paths
    if args.quality and checkpoint:
        record["quality"] = quality(loaded, args, work, log)
    if args.e2e:
        record["e2e"] = bench_e2e(key, loaded, args, work, log)
    return record


PT2E = "torch int8 PT2E on oneDNN, as --backend torch --precision int8 caches it"
AOT = "torch bf16 channels-last compiled (AOTInductor package)"


def add_aot(
    paths: dict[str, Any],
    record: dict[str, Any],
    loaded: LoadedModel,
    work: Path,
    log: Callable[[str], None],
) -> None:
    """The bf16 AOTInductor package: compiled once (timed), loaded (timed), then run warm."""
    if why := aot_unsupported("bf16"):
        record["skipped"][AOT] = why
        return
    package = work / f"{loaded.path.stem}.bf16.pt2"
    try:
        record["aot_compile_s"] = timed(lambda: export_pt2(loaded, package, "bf16"))
        start = time.perf_counter()
        paths[AOT] = AotBackend(package, loaded.num_classes, loaded.input_size)
        record["aot_load_s"] = time.perf_counter() - start
        record["size_mb"][AOT] = package.stat().st_size / 1e6
        log(f"AOTInductor bf16: compiled {record['aot_compile_s']:.1f} s, "
            f"loaded {record['aot_load_s']:.2f} s")  # fmt: skip
    except Exception as error:  # a path that fails here is named, not fatal
        record["skipped"][AOT] = f"{type(error).__name__}: {str(error).splitlines()[0]}"


def add_pt2e(
    paths: dict[str, Any],
    record: dict[str, Any],
    loaded: LoadedModel,
    calibration: Sequence[np.ndarray],
    log: Callable[[str], None],
) -> None:
    """torch's int8 as ``--backend torch --precision int8`` builds it
    (:mod:`semseg.inference.pt2e`): quantized once (timed), lowered in each process (timed)."""
    from semseg.inference import pt2e

    if why := pt2e.pt2e_unsupported():
        record["skipped"][PT2E] = why
        return
    try:
        start = time.perf_counter()
        program = pt2e.quantize_program(loaded, list(calibration))
        record["pt2e_quantize_s"] = time.perf_counter() - start
        start = time.perf_counter()
        paths[PT2E] = pt2e.TorchInt8Backend(pt2e.lower(program, loaded.input_size), (HEIGHT, WIDTH))
        record["pt2e_lower_s"] = time.perf_counter() - start
        log(f"PT2E: quantized in {record['pt2e_quantize_s']:.1f} s, "
            f"lowered in {record['pt2e_lower_s']:.1f} s")  # fmt: skip
    except Exception as error:  # a path that fails here is named, not fatal
        record["skipped"][PT2E] = f"{type(error).__name__}: {str(error).splitlines()[0]}"


# ---------------------------------------------------------------------------------------------
# `semseg predict` end to end, in fresh processes


E2E_CASES = (
    ("--backend auto", []),
    ("--precision int8", ["--precision", "int8"]),
    ("--backend torch --precision int8", ["--backend", "torch", "--precision", "int8"]),
    ("--backend torch", ["--backend", "torch"]),
)


def e2e_images(data: Path, count: int, folder: Path) -> str:
    """``count`` KITTI training images (copied), or synthetic scenes without data."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    source = data / "training" / "image_2"
    if source.is_dir():
        paths = list_images(source)
        picks = sorted({int(round(v)) for v in np.linspace(0, len(paths) - 1, count)})
        for index in picks:
            shutil.copy(paths[index], folder / paths[index].name)
        return f"{len(picks)} KITTI training images"
    for seed in range(count):
        image = generate_scene(seed, 375, 1242).image
        Image.fromarray(image).save(folder / f"um_{seed:06d}.png")
    return f"{count} synthetic scenes ({data} absent)"


def predict_once(
    checkpoint: Path, images: Path, out: Path, cache: Path, flags: list[str], args
) -> dict[str, Any]:
    """One ``semseg predict`` process: wall seconds, seconds to the first PNG, backend line."""
    env = {
        **os.environ,
        "SEMSEG_CACHE_DIR": str(cache),
        "SEMSEG_AUTO_BUILD": "1",
        "PYTHONWARNINGS": "ignore",
    }
    command = [sys.executable, "-m", "semseg.cli", "predict", str(checkpoint), str(images),
               "--out", str(out), "--batch-size", str(args.e2e_batch), *flags]  # fmt: skip
    start = time.time()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.time() - start
    pngs = [p.stat().st_mtime for p in out.rglob("*.png")] if out.is_dir() else []
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    backend = next((line for line in lines if line.startswith("backend: ")), "")
    return {
        "wall_s": wall,
        "first_png_s": (min(pngs) - start) if pngs else None,
        "pngs": len(pngs),
        "backend": backend,
        "notes": [line for line in lines if not line.startswith("backend: ")][-12:],
        "returncode": done.returncode,
    }


def bench_e2e(
    key: str, loaded: LoadedModel, args: argparse.Namespace, work: Path, log
) -> list[dict[str, Any]]:
    images = work / "e2e-images"
    if not images.is_dir():
        args.e2e_source = e2e_images(args.data, args.e2e_images, images)
    rows = []
    for name, flags in E2E_CASES:
        cache = work / f"e2e-cache-{key}-{len(rows)}"
        runs = ("first run", "cached run") if name != "--backend torch" else ("run",)
        for run in runs:
            out = work / f"e2e-out-{key}-{len(rows)}"
            result = predict_once(loaded.path, images, out, cache, flags, args)
            shutil.rmtree(out, ignore_errors=True)
            rows.append({"model": MODELS[key][0], "case": name, "run": run, **result})
            log(f"e2e {key} {name} {run}: {result['wall_s']:.1f} s, first PNG "
                f"{result['first_png_s']}, {result['backend']}")  # fmt: skip
    return rows


def quality(
    loaded: LoadedModel, args: argparse.Namespace, work: Path, log: Callable[[str], None]
) -> dict[str, Any]:
    """``semseg quantize``'s procedure: each calibration method, scored on held-out images."""
    result = quantize_checkpoint(
        loaded,
        args.data,
        work / "quality.int8.onnx",
        images=args.calibration_images,
        eval_images=args.eval_images,
        threads=args.threads,
        announce=log,
    )
    return {
        "pt2e": pt2e_quality(loaded, args, work),
        "chosen": result.chosen.method,
        "calibration_images": result.calibration_images,
        "eval_images": result.eval_images,
        "trials": [
            {
                "method": t.method,
                "seconds": t.seconds,
                **(vars(t.comparison) if t.comparison else {"note": t.note}),
            }
            for t in result.trials
        ],
    }


def pt2e_quality(loaded: LoadedModel, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """torch's int8 (PT2E) scored as ``semseg quantize`` scores the onnxruntime models: the same
    calibration and held-out images, fp32 from the ONNX export."""
    from semseg.inference import pt2e
    from semseg.inference.calibration_data import index_data, read_image_set, split_calibration
    from semseg.inference.predictor import Predictor
    from semseg.inference.quantize import compare_predictor, fp32_probabilities

    if why := pt2e.pt2e_unsupported():
        return {"note": why}
    items, reader = index_data(args.data, loaded, None)
    calibration_ids, eval_ids = split_calibration(
        len(items), args.calibration_images, args.eval_images
    )
    calibration = read_image_set(items, reader, calibration_ids)
    held_out = read_image_set(items, reader, eval_ids)
    fp32 = work / "quality.fp32.onnx"
    export_onnx(loaded, fp32, verify=False)
    program = pt2e.quantize_program(loaded, calibration.images)
    backend = pt2e.TorchInt8Backend(pt2e.lower(program, loaded.input_size), loaded.input_size)
    predictor = Predictor(loaded, batch_size=1, backend=backend)
    comparison = compare_predictor(predictor, held_out, fp32_probabilities(fp32, held_out))
    return {"method": "torch int8 PT2E (histogram)", **vars(comparison)}


def machine() -> str:
    import onnxruntime

    isa = " ".join(
        f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8") if f in cpu_flags()
    )
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    return (
        f"{cpu_model()}, {os.cpu_count()} CPUs, ISA {isa}; torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), onnxruntime {onnxruntime.__version__}, "
        f"Python {platform.python_version()}; load average {load}"
    )


def render(results: dict[str, Any]) -> str:
    lines = [
        f"Command: `{results['command']}` ({results['when']}, {results['minutes']:.1f} min in all)",
        "",
        f"Machine: {results['machine']}",
        "",
    ]
    lines += [
        "| model | path | batch | s/img | vs torch fp32 | vs onnxruntime fp32 | "
        "first call s | max \\|dp\\| vs ORT fp32 | labels agree % | file MB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for record in results["models"]:
        for row in record["rows"]:
            size = record["size_mb"].get(row["path"])
            lines.append(
                f"| {record['model']} | {row['path']} | {row['batch']} | {row['seconds']:.3f} | "
                f"{row['vs_eager']:.2f}x | {row['vs_ort_fp32']:.2f}x | {row['first_call_s']:.2f} |"
                f" {row['max_abs_prob_diff']:.2g} | {100 * row['label_agreement']:.2f} | "
                f"{'' if size is None else f'{size:.0f}'} |"
            )
    lines.append("")
    for record in results["models"]:
        lines.append(
            f"{record['model']} ({record['checkpoint']}): export {record['export_s']:.1f} s, "
            f"quant_pre_process {record['preprocess_s']:.1f} s, quantization "
            f"{record['quantize_s']:.1f} s ({record['calibration']}; as cached: "
            f"{record.get('cached_calibration', '?')} kept of {', '.join(CACHED_CALIBRATIONS)}, "
            f"{record.get('quantize_cached_s', 0):.1f} s with the parity checks); "
            f"{record['qdq_nodes']} Q/DQ nodes; head kept in fp32 in the head path: "
            f"{', '.join(record['head_nodes'])}."
        )
        if "aot_compile_s" in record:
            lines.append(
                f"AOTInductor bf16 package: compiled once in {record['aot_compile_s']:.1f} s, "
                f"loaded by the timing process in {record['aot_load_s']:.2f} s."
            )
        if "pt2e_quantize_s" in record:
            lines.append(
                f"torch int8 (PT2E): export, prepare, calibration, convert and re-export "
                f"{record['pt2e_quantize_s']:.1f} s once; lowering to oneDNN "
                f"{record['pt2e_lower_s']:.1f} s in every process that runs it."
            )
        for path, why in record.get("skipped", {}).items():
            lines.append(f"Skipped: {path}: {why}.")
        if record.get("e2e"):
            lines += ["", *render_e2e(record["e2e"], results)]
        if "quality" in record:
            q = record["quality"]
            lines += [
                "",
                f"Quality, {record['model']}: calibration on "
                f"{len(q['calibration_images'])} images, scored on "
                f"{len(q['eval_images'])} other images (full resolution):",
                "",
                "| calibration | MaxF int8 | MaxF fp32 | diff | labels agree % | max \\|dp\\| "
                "| mean \\|dp\\| |",
                "|---|---:|---:|---:|---:|---:|---:|",
            ]
            trials = list(q["trials"])
            if q.get("pt2e") and "note" not in q["pt2e"]:
                trials.append(q["pt2e"])
            for t in trials:
                if "note" in t:
                    lines.append(f"| {t['method']} | {t['note']} | | | | | |")
                    continue
                chosen = " (chosen)" if t["method"] == q["chosen"] else ""
                lines.append(
                    f"| {t['method']}{chosen} | {t['int8_score']:.2f} | {t['fp32_score']:.2f} | "
                    f"{t['int8_score'] - t['fp32_score']:+.2f} | "
                    f"{100 * t['label_agreement']:.3f} | {t['max_abs_prob_diff']:.3g} | "
                    f"{t['mean_abs_prob_diff']:.2g} |"
                )
        lines.append("")
    return "\n".join(lines)


def render_e2e(rows: list[dict[str, Any]], results: dict[str, Any]) -> list[str]:
    lines = [
        f"`semseg predict` end to end, fresh processes, {results.get('e2e_source', '')}, "
        f"--batch-size {results.get('e2e_batch')}:",
        "",
        "| model | flags | run | wall s | first PNG s | s/img after the first | backend | notes |",
        "|---|---|---|---:|---:|---:|---|---|",
    ]
    for row in rows:
        first, wall, count = row["first_png_s"], row["wall_s"], max(row["pngs"], 1)
        # the devkit writes three PNGs per image (overlay, label, prob)
        images = max(count // 3, 1)
        rest = (wall - first) / max(images - 1, 1) if first is not None and images > 1 else None
        status = row["backend"] or f"exit {row['returncode']}: {' / '.join(row['notes'][-2:])}"
        lines.append(
            f"| {row['model']} | {row['case']} | {row['run']} | {wall:.1f} | "
            f"{'' if first is None else f'{first:.1f}'} | "
            f"{'' if rest is None else f'{rest:.3f}'} | {status.replace('|', '/')} | "
            f"{notes_cell(row['notes'])} |"
        )
    return lines


def notes_cell(notes: list[str]) -> str:
    """What the run said about building, falling back or skipping paths (one cell)."""
    keep = ("warning:", "quantizing", "compiling", "exporting", "not used")
    picked = [n for n in notes if any(word in n for word in keep)]
    return "; ".join(picked).replace("|", "/")


def parse_checkpoint(text: str) -> tuple[str, str]:
    key, _, path = text.partition("=")
    if key not in MODELS or not path:
        raise argparse.ArgumentTypeError(f"--checkpoint MODEL=PATH with MODEL in {list(MODELS)}")
    return key, path


def main(argv: Sequence[str] | None = None) -> int:
    global HEIGHT, WIDTH
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vgg16,resnet18")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calibration-images", type=int, default=16)
    parser.add_argument("--eval-images", type=int, default=32)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--checkpoint", type=parse_checkpoint, action="append", default=[])
    parser.add_argument("--quality", action="store_true", help="semseg quantize's comparison")
    parser.add_argument("--size", default=f"{HEIGHT}x{WIDTH}", help="input size HxW")
    parser.add_argument("--width-mult", type=float, default=1.0, help="untrained models' width")
    parser.add_argument("--no-aot", action="store_true", help="skip the AOTInductor package")
    parser.add_argument("--no-pt2e", action="store_true", help="skip PT2E (torchao) int8")
    parser.add_argument("--e2e", action="store_true", help="time semseg predict processes")
    parser.add_argument("--e2e-images", type=int, default=12)
    parser.add_argument("--e2e-batch", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny sizes")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.batches, args.repeats, args.size = "vgg16", "1,2", 1, "32x96"
        args.calibration_images, args.eval_images, args.width_mult = 2, 2, 0.125
        args.e2e_images = min(args.e2e_images, 3)
    HEIGHT, WIDTH = (int(v) for v in args.size.lower().split("x"))
    args.batches = [int(b) for b in args.batches.split(",")]
    args.e2e_source = ""
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    def log(line: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)

    results: dict[str, Any] = {
        "command": "python3 benchmarks/int8.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": machine(),
        "models": [],
    }
    with tempfile.TemporaryDirectory(prefix="semseg-int8-") as work:
        for key in args.models.split(","):
            results["models"].append(bench_model(key, args, Path(work), log))
        results["e2e_source"], results["e2e_batch"] = args.e2e_source, args.e2e_batch
    results["minutes"] = (time.perf_counter() - started) / 60
    results["machine_end"] = machine()
    text = render(results)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

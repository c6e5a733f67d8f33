"""int8 inference side by side: ONNX Runtime static int8 (semseg quantize) against fp32.

For each model (FCN-8s on VGG16, and FCN-8s on ResNet-18: the ``kitti_fast_cpu`` model) at
160 x 576, in one process and interleaved round-robin (one call of each path in turn, so a burst
of load from other jobs hits all alike), medians of ``--repeats`` timed calls after one warm-up:

* torch fp32 eager (the reference of ``semseg predict --backend torch``),
* onnxruntime fp32 (the checkpoint's ONNX export),
* onnxruntime int8 (:func:`semseg.inference.quantize.quantize_onnx`, MinMax calibration on
  ``--calibration-images`` images of ``--data``, resized as ``semseg predict`` does),
* onnxruntime int8 with the classifier head in fp32 (score layers and upsampling: ``--keep-head``).

Weights are untrained (seeded) unless ``--checkpoint MODEL=PATH`` names a checkpoint, so the
parity columns (int8 against onnxruntime fp32 on the timed images) describe the arithmetic, not
a trained model's quality; with a checkpoint, ``--quality`` also runs ``semseg quantize``'s
whole procedure (each calibration method, MaxF of int8 and fp32 on held-out images).

    python3 benchmarks/int8.py --out int8.md --json int8.json --batches 1,8 --repeats 5 \\
        --checkpoint resnet18=runs/RUN/checkpoints/best.ckpt --quality
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
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
from semseg.inference.checkpoint import LoadedModel, load_model
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
from semseg.models import build_model

DEFAULT_DATA = KITTI_DATA
HEIGHT, WIDTH = 160, 576
MODELS = {
    "vgg16": ("FCN-8s / VGG16", {}),
    "resnet18": ("FCN-8s / ResNet-18 (kitti_fast_cpu)", {"backbone": "resnet18"}),
}


def untrained(key: str, work: Path) -> LoadedModel:
    """The model with seeded weights; its zero-initialised score layers get seeded weights too,
    so that its output varies over the image."""
    torch.manual_seed(0)
    model = build_model("fcn8s", 2, **MODELS[key][1]).eval()
    for layer in model.modules():
        if isinstance(layer, torch.nn.Conv2d) and layer.out_channels == 2:
            torch.nn.init.normal_(layer.weight, std=0.01)
    return LoadedModel(
        model, "fcn8s", 2, (HEIGHT, WIDTH), 1, ["not road", "road"], work / f"{key}-untrained.ckpt"
    )


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
    loaded = load_model(checkpoint) if checkpoint else untrained(key, work)
    record: dict[str, Any] = {"model": MODELS[key][0], "checkpoint": checkpoint or "untrained"}
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
    record["head_nodes"] = head
    record["qdq_nodes"] = sum(
        count_qdq(int8).get(op, 0) for op in ("QuantizeLinear", "DequantizeLinear")
    )
    log(f"{key}: exported {record['export_s']:.1f} s, quantized {record['quantize_s']:.1f} s")
    paths = {
        "torch fp32 eager": TorchBackend(loaded.model),
        "onnxruntime fp32": OnnxRuntimeBackend(fp32, args.threads),
        "onnxruntime int8": OnnxRuntimeBackend(int8, args.threads),
        "onnxruntime int8, head fp32": OnnxRuntimeBackend(int8_head, args.threads),
    }
    record["size_mb"] = {
        "onnxruntime fp32": fp32.stat().st_size / 1e6,
        "onnxruntime int8": int8.stat().st_size / 1e6,
        "onnxruntime int8, head fp32": int8_head.stat().st_size / 1e6,
    }
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
    return record


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
            f"{record['quantize_s']:.1f} s ({record['calibration']}); "
            f"{record['qdq_nodes']} Q/DQ nodes; head kept in fp32 in the last path: "
            f"{', '.join(record['head_nodes'])}."
        )
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
            for t in q["trials"]:
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


def parse_checkpoint(text: str) -> tuple[str, str]:
    key, _, path = text.partition("=")
    if key not in MODELS or not path:
        raise argparse.ArgumentTypeError(f"--checkpoint MODEL=PATH with MODEL in {list(MODELS)}")
    return key, path


def main(argv: Sequence[str] | None = None) -> int:
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
    parser.add_argument("--out", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    args.batches = [int(b) for b in args.batches.split(",")]
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

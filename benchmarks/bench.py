"""Speed of the FCN family and its peers on this CPU, fast paths included, side by side.

    python3 benchmarks/bench.py                       # speed + training parity (~10 min, 2 cores)
    python3 benchmarks/bench.py --parity --checkpoint runs/RUN/checkpoints/best.ckpt
    python3 benchmarks/bench.py --quick --out /tmp/speed.md   # smoke test (tiny models, sizes)

What one run measures (``--modes`` picks; default ``speed,train-parity``):

* ``speed``: for fcn32s / fcn16s / fcn8s / fcn8s-seed on VGG16 and the peers a user would pick
  instead (torchvision ``fcn_resnet50`` and ``lraspp_mobilenet_v3_large``, both with
  ``weights=None, weights_backbone=None``; segmentation-models-pytorch ``Unet`` on resnet18 with
  ``encoder_weights=None``: the ``bench`` extra; a peer that is not installed is named and
  skipped) at 160 x 576: inference seconds per image at batch 1 and batch 8, training seconds
  per image (batch 4, Adam, cross-entropy), peak resident memory, FLOPs per image
  (``torch.utils.flop_counter.FlopCounterMode`` on the meta device) and the achieved GFLOP/s as a
  fraction of this CPU's matmul peak (fp32 and bf16 4096^3 ``torch.matmul``, timed inside every
  group as one more configuration, so the peak is measured under the same load as the models).
* ``train-parity``: FCN-8s trained by Lightning (``SegmentationTask``, ``precision="32"`` and
  ``"bf16-mixed"``) for ``--parity-steps`` steps on the same seed and batches (KITTI images when
  ``--data`` holds them, synthetic scenes otherwise) at a reduced size: loss curves and the final
  loss difference (target: within 2%).
* ``parity``: every inference fast path against fp32 eager on the KITTI development split (or
  synthetic scenes): max |probability difference|, fraction of pixels whose label changes, and
  the devkit MaxF difference (``--checkpoint``; without one, a deterministic untrained FCN-8s).

How: every configuration (model x path x mode) runs in its own forked child of a parent that has
imported the libraries but run no torch operation (so no OpenMP pool is forked). Its peak
resident memory is the child's own ``getrusage(RUSAGE_SELF).ru_maxrss``: batch 1 is read before
batch 8 runs, so each reading is that phase's peak, and every reading includes the ~``base``
MB of imported libraries (printed). The children of a group are alive together and the parent
times them round-robin (one iteration each, in turn), so a burst of load from other programs
hits every configuration alike; each group holds its own FCN-8s fp32 eager baseline, and ratios
are against the baseline of the same group. Medians over ``--repeats`` after one warm-up call
(whose time is reported: for torch.compile it is the compilation for that input shape).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from _common import KITTI_DATA, ROOT
from torch import nn

DEFAULT_DATA = KITTI_DATA


def display_path(path: Path) -> str:
    """A path as written in BENCHMARKS.md: relative to the project where possible."""
    try:
        return os.path.relpath(Path(path).resolve(), ROOT)
    except ValueError:
        return str(path)


FCNS = ("fcn32s", "fcn16s", "fcn8s", "fcn8s-seed")
PEERS = {
    "fcn_resnet50": "torchvision",
    "lraspp_mobilenet_v3_large": "torchvision",
    "unet_resnet18": "segmentation_models_pytorch",
}
BASELINE_MODEL = "fcn8s"
MATMUL = "matmul"  # the peak, timed inside every group as a pseudo-configuration
INFER_PATHS = {
    "fp32": "torch fp32 eager",
    "fp32-cl": "torch fp32 channels-last eager",
    "bf16-cl": "torch bf16 channels-last eager",
    "onnxruntime": "onnxruntime fp32",
    "compile-fp32-cl": "torch fp32 channels-last compiled",
    "compile-bf16-cl": "torch bf16 channels-last compiled",
}
TRAIN_PATHS = {
    "fp32": "fp32",
    "bf16-mixed": "bf16-mixed NCHW (Lightning autocast)",
    "bf16-mixed-cl": "bf16-mixed channels-last (semseg train on CPU)",
}
NUM_CLASSES = 2
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


@dataclass
class Settings:
    height: int = 160
    width: int = 576
    width_mult: float = 1.0
    infer_batches: tuple[int, ...] = (1, 8)
    train_batch: int = 4
    repeats: int = 5
    repeats_large: int = 2  # batch 8 and training (each iteration is several images)
    matmul_n: int = 4096
    peers: bool = True
    compile: bool = True
    threads: int = 0
    parity_steps: int = 30
    parity_size: tuple[int, int] = (64, 224)
    parity_images: int = 0  # 0: all
    quick: bool = False


@dataclass(frozen=True)
class Config:
    model: str
    path: str
    mode: str  # infer | train

    @property
    def label(self) -> str:
        if self.model == MATMUL:
            return f"{MATMUL} {self.path}"
        paths = INFER_PATHS if self.mode == "infer" else TRAIN_PATHS
        return f"{self.model} {paths[self.path]}"


@dataclass
class Row:
    """One configuration's figures in one phase (a batch size)."""

    group: str
    model: str
    path: str
    mode: str
    batch: int
    seconds: list[float] = field(default_factory=list)  # per iteration (whole batch)
    first_call_s: float | None = None
    setup_s: float | None = None
    rss_mb: float | None = None
    gflop: float | None = None  # per image
    error: str = ""

    @property
    def per_image(self) -> float | None:
        if not self.seconds:
            return None
        return statistics.median(self.seconds) / (1 if self.model == MATMUL else self.batch)


# ---------------------------------------------------------------------------------------------
# Models


class Normalized(nn.Module):
    """A peer on [0, 1] RGB (ImageNet normalisation inside, as semseg models do); tensor out."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        out = self.net((image - self.mean) / self.std)
        return out["out"] if isinstance(out, dict) else out


def peer_available(name: str) -> bool:
    return importlib.util.find_spec(PEERS[name]) is not None


def build(name: str, settings: Settings) -> nn.Module:
    if name in FCNS:
        from semseg.models import build_model

        return build_model(name, NUM_CLASSES, width_mult=settings.width_mult)
    if name == "fcn_resnet50":
        from torchvision.models.segmentation import fcn_resnet50

        net = fcn_resnet50(
            weights=None, weights_backbone=None, num_classes=NUM_CLASSES, aux_loss=False
        )
    elif name == "lraspp_mobilenet_v3_large":
        from torchvision.models.segmentation import lraspp_mobilenet_v3_large

        net = lraspp_mobilenet_v3_large(
            weights=None, weights_backbone=None, num_classes=NUM_CLASSES
        )
    elif name == "unet_resnet18":
        import segmentation_models_pytorch as smp

        net = smp.Unet("resnet18", encoder_weights=None, classes=NUM_CLASSES)
    else:
        raise ValueError(f"unknown model {name}")
    return Normalized(net)


def count_flops(name: str, settings: Settings, train: bool) -> float:
    """FLOPs per image (forward, or forward + backward) counted on the meta device.

    FlopCounterMode over-counts the backward pass of grouped (depthwise) convolutions, so for a
    model that has any, training FLOPs are taken as 3x the forward count instead.
    """
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = build(name, settings)
    grouped = any(isinstance(m, nn.Conv2d) and m.groups > 1 for m in model.modules())
    model.train(train and not grouped)
    x = torch.empty(1, 3, settings.height, settings.width, device="meta")
    with FlopCounterMode(display=False) as counter:
        out = model(x)
        if train and not grouped:
            out.float().mean().backward()
    flops = float(counter.get_total_flops())
    return 3.0 * flops if train and grouped else flops


# ---------------------------------------------------------------------------------------------
# Workers (forked children)


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


class MatmulRunner:
    """The peak: one ``n^3`` matmul per call, timed in the group like any configuration."""

    def __init__(self, config: Config, settings: Settings) -> None:
        generator = torch.Generator().manual_seed(0)
        n = settings.matmul_n
        dtype = torch.bfloat16 if config.path == "bf16" else torch.float32
        self.a = torch.randn(n, n, generator=generator).to(dtype)
        self.b = torch.randn(n, n, generator=generator).to(dtype)

    def run(self, batch: int) -> float:
        start = time.perf_counter()
        torch.matmul(self.a, self.b)
        return time.perf_counter() - start


class InferRunner:
    def __init__(self, config: Config, settings: Settings, onnx_path: str | None) -> None:
        from semseg.inference.runtimes import OnnxRuntimeBackend, TorchBackend

        self.settings = settings
        if config.path == "onnxruntime":
            if onnx_path is None:
                raise RuntimeError("no ONNX export")
            self.backend = OnnxRuntimeBackend(onnx_path, settings.threads or None)
            return
        model = build(config.model, settings).eval()
        precision = "bf16" if "bf16" in config.path else "32"
        self.backend = TorchBackend(
            model,
            precision=precision,
            channels_last=config.path.endswith("-cl"),
            compile=config.path.startswith("compile"),
            inplace=True,
        )
        del model
        gc.collect()
        self.inputs: dict[int, torch.Tensor] = {}

    def run(self, batch: int) -> float:
        if batch not in getattr(self, "inputs", {}):
            self.inputs = {
                batch: torch.rand(
                    batch,
                    3,
                    self.settings.height,
                    self.settings.width,
                    generator=torch.Generator().manual_seed(batch),
                )
            }
        x = self.inputs[batch]
        start = time.perf_counter()
        self.backend.logits(x)
        return time.perf_counter() - start


class TrainRunner:
    """A training step as Lightning runs it: autocast from its precision plugin, Adam, CE."""

    def __init__(self, config: Config, settings: Settings) -> None:
        self.settings = settings
        torch.manual_seed(0)
        self.model = build(config.model, settings).train()
        self.channels_last = config.path.endswith("-cl")
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.Adam(
            [p for p in self.model.parameters() if p.requires_grad], lr=1e-4
        )
        if config.path.startswith("bf16"):
            from lightning.pytorch.plugins.precision import MixedPrecision

            self.context: Callable[[], Any] = MixedPrecision("bf16-mixed", "cpu").forward_context
        else:
            self.context = contextlib.nullcontext
        generator = torch.Generator().manual_seed(0)
        batch, height, width = settings.train_batch, settings.height, settings.width
        # NCHW input as the data loader gives it; NHWC weights make the activations NHWC
        # (what semseg train's ChannelsLast callback does)
        self.images = torch.rand(batch, 3, height, width, generator=generator)
        self.masks = torch.randint(0, NUM_CLASSES, (batch, height, width), generator=generator)

    def run(self, batch: int) -> float:
        start = time.perf_counter()
        with self.context():
            logits = self.model(self.images)
        loss = F.cross_entropy(logits.float(), self.masks)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return time.perf_counter() - start


def worker_main(conn, config: Config, settings: Settings, onnx_path: str | None) -> None:
    """A forked child: build the configuration, then answer the parent's commands."""
    try:
        if settings.threads:
            torch.set_num_threads(settings.threads)
        start = time.perf_counter()
        if config.model == MATMUL:
            runner: Any = MatmulRunner(config, settings)
        elif config.mode == "infer":
            runner = InferRunner(config, settings, onnx_path)
        else:
            runner = TrainRunner(config, settings)
        setup_s = time.perf_counter() - start
        gflop = None
        with contextlib.suppress(Exception):
            gflop = (
                2.0 * settings.matmul_n**3 / 1e9
                if config.model == MATMUL
                else count_flops(config.model, settings, config.mode == "train") / 1e9
            )
        conn.send(("ok", {"setup_s": setup_s, "gflop": gflop}))
        while True:
            command, argument = conn.recv()
            if command == "run":
                conn.send(("ok", runner.run(argument)))
            elif command == "rss":
                conn.send(("ok", maxrss_mb()))
            else:
                break
    except Exception as error:
        with contextlib.suppress(Exception):
            conn.send(("error", first_line(error)))
            traceback.print_exc(file=sys.stderr)
    finally:
        conn.close()


class Worker:
    def __init__(self, target: Callable[..., None], *args: Any) -> None:
        context = mp.get_context("fork")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=target, args=(child, *args), daemon=True)
        self.process.start()
        child.close()

    def ask(self, command: str | None = None, argument: Any = None, timeout: float = 1800) -> Any:
        if command is not None:
            self.conn.send((command, argument))
        if not self.conn.poll(timeout):
            raise RuntimeError(f"no answer to {command} in {timeout:.0f} s")
        status, value = self.conn.recv()
        if status != "ok":
            raise RuntimeError(value)
        return value

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.send(("quit", None))
        self.process.join(timeout=60)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


def forked(target: Callable[..., None], *args: Any, timeout: float = 3600) -> Any:
    worker = Worker(target, *args)
    try:
        return worker.ask(timeout=timeout)
    finally:
        worker.process.join(timeout=60)


def export_main(conn, model: str, settings: Settings, path: str) -> None:
    """A child that writes the model's ONNX export (so the ORT child holds only ORT)."""
    try:
        from semseg.inference.checkpoint import LoadedModel
        from semseg.inference.onnx_export import export_onnx

        start = time.perf_counter()
        loaded = LoadedModel(
            build(model, settings).eval(),
            model,
            NUM_CLASSES,
            (settings.height, settings.width),
            1,
            ["not road", "road"],
            Path(path),
        )
        verification = export_onnx(loaded, path)
        conn.send(
            (
                "ok",
                {
                    "seconds": time.perf_counter() - start,
                    "verified": verification.summary() if verification else "",
                },
            )
        )
    except Exception as error:
        conn.send(("error", first_line(error)))
    finally:
        conn.close()


def run_group(
    name: str,
    configs: Sequence[Config],
    settings: Settings,
    onnx_path: str | None,
    log: Callable[[str], None],
) -> list[Row]:
    """Children alive together, timed round-robin, phase by phase (batch sizes)."""
    batches = settings.infer_batches if configs[0].mode == "infer" else (settings.train_batch,)
    rows: dict[tuple[Config, int], Row] = {}
    workers: dict[Config, Worker] = {}
    info: dict[Config, dict] = {}
    errors: dict[Config, str] = {}
    log(f"[{name}] {len(configs)} configurations: " + ", ".join(c.label for c in configs))
    try:
        for config in configs:  # one at a time: setup (and export/compile) runs undisturbed
            worker = Worker(worker_main, config, settings, onnx_path)
            try:
                info[config] = worker.ask()
                workers[config] = worker
            except Exception as error:
                errors[config] = str(error)
                worker.close()
                log(f"  {config.label}: failed: {error}")
        for batch in batches:
            for config in configs:
                rows[config, batch] = Row(
                    name,
                    config.model,
                    config.path,
                    config.mode,
                    batch,
                    error=errors.get(config, ""),
                )
                rows[config, batch].setup_s = info.get(config, {}).get("setup_s")
                rows[config, batch].gflop = info.get(config, {}).get("gflop")
            live = [c for c in configs if c in workers]
            for config in live:  # warm-up: the first call at this shape (compiles)
                try:
                    rows[config, batch].first_call_s = workers[config].ask("run", batch)
                except Exception as error:
                    rows[config, batch].error = str(error)
                    workers.pop(config).close()
            repeats = settings.repeats if batch == 1 else settings.repeats_large
            for _ in range(repeats):
                for config in [c for c in live if c in workers]:
                    time.sleep(0.05)  # let the previous child's threads go idle
                    try:
                        rows[config, batch].seconds.append(workers[config].ask("run", batch))
                    except Exception as error:
                        rows[config, batch].error = str(error)
                        workers.pop(config).close()
            for config in [c for c in live if c in workers]:
                rows[config, batch].rss_mb = workers[config].ask("rss")
                row = rows[config, batch]
                log(
                    f"  {config.label} batch {batch}: {row.per_image:.3f} s/img "
                    f"(first call {row.first_call_s:.1f} s, peak RSS {row.rss_mb:.0f} MB)"
                )
    finally:
        for worker in workers.values():
            worker.close()
    return list(rows.values())


# ---------------------------------------------------------------------------------------------
# Training parity (Lightning) and inference parity


def parity_batches(settings: Settings, data: Path, count: int) -> tuple[list, str]:
    """``count`` (image, mask) pairs at the parity size: KITTI when present, else synthetic."""
    from semseg.config import IGNORE_INDEX
    from semseg.data.transforms import image_to_tensor

    height, width = settings.parity_size
    pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
    source = ""
    if (data / "training" / "image_2").is_dir():
        from semseg.data.datamodule import make_reader
        from semseg.evaluation import data_config_for, labelled_samples

        samples = labelled_samples(data)[:count]
        reader = make_reader(data_config_for(data, None), NUM_CLASSES)
        for sample in samples:
            image, mask = reader(sample)
            pairs.append((image_to_tensor(image, height, width), resize_mask(mask, height, width)))
        source = f"KITTI {display_path(data)} (first {len(pairs)} training images)"
    if not pairs:
        from semseg.data.synthetic import generate_scene

        for index in range(count):
            scene = generate_scene(index, height=height * 2, width=width * 2)
            mask = np.where(scene.valid, scene.road.astype(np.int64), IGNORE_INDEX)
            pairs.append(
                (image_to_tensor(scene.image, height, width), resize_mask(mask, height, width))
            )
        source = f"{count} synthetic scenes"
    return pairs, source


def resize_mask(mask: np.ndarray, height: int, width: int) -> torch.Tensor:
    tensor = torch.from_numpy(np.asarray(mask, dtype=np.int64))[None, None].float()
    return F.interpolate(tensor, size=(height, width), mode="nearest")[0, 0].long()


def train_parity_main(conn, precision: str, settings: Settings, data: str) -> None:
    """Train FCN-8s with Lightning at ``precision`` for ``parity_steps``; per-step losses."""
    try:
        import lightning as L
        from torch.utils.data import DataLoader

        from semseg.tasks.segmentation import SegmentationTask
        from semseg.training import ChannelsLast

        if settings.threads:
            torch.set_num_threads(settings.threads)
        steps = settings.parity_steps
        pairs, source = parity_batches(settings, Path(data), count=min(steps * 4, 32))
        losses: list[float] = []
        stamps: list[float] = []

        class Record(L.Callback):
            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
                losses.append(float(outputs["loss"]))
                stamps.append(time.perf_counter())

        L.seed_everything(0, workers=True, verbose=False)
        task = SegmentationTask(
            model_name=BASELINE_MODEL,
            num_classes=NUM_CLASSES,
            model_options={"width_mult": settings.width_mult},
            input_size=list(settings.parity_size),
            lr=1e-4,
        )
        loader = DataLoader(pairs, batch_size=4, shuffle=False, num_workers=0)
        trainer = L.Trainer(
            max_steps=steps,
            precision=precision,
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            limit_val_batches=0,
            callbacks=[Record(), ChannelsLast(None)],
        )
        start = time.perf_counter()
        trainer.fit(task, train_dataloaders=loader)
        per_step = np.diff([start, *stamps])
        conn.send(
            (
                "ok",
                {
                    "losses": losses,
                    "source": source,
                    "step_s_median": float(np.median(per_step[1:])) if steps > 1 else None,
                    "rss_mb": maxrss_mb(),
                },
            )
        )
    except Exception as error:
        traceback.print_exc(file=sys.stderr)
        conn.send(("error", first_line(error)))
    finally:
        conn.close()


def parity_main(
    conn, settings: Settings, data: str, checkpoint: str | None, paths: Sequence[str], onnx_dir: str
) -> None:
    """Every path against fp32 eager over the images: max |dp|, label changes, MaxF."""
    try:
        from semseg.evaluation import SpaceScores
        from semseg.inference.autotune import Candidate, build_backend
        from semseg.inference.checkpoint import LoadedModel, load_model
        from semseg.inference.predictor import Predictor

        if settings.threads:
            torch.set_num_threads(settings.threads)
        if checkpoint:
            loaded = load_model(checkpoint)
            what = f"checkpoint {checkpoint}"
        else:
            torch.manual_seed(0)
            model = build(BASELINE_MODEL, settings).eval()
            for layer in model.modules():  # the zero-initialised score layers would give 0.5
                if isinstance(layer, nn.Conv2d) and layer.kernel_size == (1, 1):
                    nn.init.normal_(layer.weight, std=0.01)
            loaded = LoadedModel(
                model,
                BASELINE_MODEL,
                NUM_CLASSES,
                (settings.height, settings.width),
                1,
                ["not road", "road"],
                Path(onnx_dir) / "untrained.ckpt",
            )
            what = "untrained FCN-8s (seed 0, 1x1 score layers N(0, 0.01))"
        images, source = parity_images(settings, Path(data))
        candidates = {
            "fp32": Candidate(),
            "fp32-cl": Candidate("torch", "32", True),
            "bf16-cl": Candidate("torch", "bf16", True),
            "onnxruntime": Candidate("onnxruntime"),
            "compile-fp32-cl": Candidate("torch", "32", True, True),
            "compile-bf16-cl": Candidate("torch", "bf16", True, True),
        }
        os.environ["SEMSEG_CACHE_DIR"] = onnx_dir
        predictors = {}
        for path in ["fp32", *paths]:
            try:
                predictors[path] = Predictor(
                    loaded,
                    batch_size=4,
                    backend=build_backend(
                        loaded, candidates[path], sha256="bench" if not checkpoint else None
                    ),
                )
            except Exception as error:
                predictors[path] = first_line(error)
        scores = {
            p: SpaceScores(NUM_CLASSES, loaded.positive_class)
            for p, v in predictors.items()
            if not isinstance(v, str)
        }
        worst = dict.fromkeys(scores, 0.0)
        changed = dict.fromkeys(scores, 0)
        pixels = 0
        for start in range(0, len(images), 4):
            chunk = images[start : start + 4]
            outputs = {p: predictors[p].predict_batch([i for i, _, _ in chunk]) for p in scores}
            for index, (_, mask, category) in enumerate(chunk):
                reference = outputs["fp32"][index]
                labels_ref = reference.argmax(axis=0)
                pixels += labels_ref.size
                for path in scores:
                    probability = outputs[path][index]
                    labels = probability.argmax(axis=0)
                    worst[path] = max(worst[path], float(np.abs(probability - reference).max()))
                    changed[path] += int((labels != labels_ref).sum())
                    if mask is not None:
                        scores[path].update(
                            category, probability[loaded.positive_class], labels, mask
                        )
        results = {}
        for path, value in predictors.items():
            if isinstance(value, str):
                results[path] = {"error": value}
                continue
            entry = {"max_abs_prob_diff": worst[path], "label_change": changed[path] / pixels}
            with contextlib.suppress(Exception):
                groups = scores[path].groups("perspective")
                entry["max_f"] = groups["all"]["max_f"]
                entry["iou"] = groups["all"]["iou"]
            results[path] = entry
        conn.send(
            ("ok", {"model": what, "source": source, "images": len(images), "results": results})
        )
    except Exception as error:
        traceback.print_exc(file=sys.stderr)
        conn.send(("error", first_line(error)))
    finally:
        conn.close()


PROFILED = (
    Config(BASELINE_MODEL, "fp32", "infer"),
    Config(BASELINE_MODEL, "bf16-cl", "infer"),
    Config(BASELINE_MODEL, "fp32", "train"),
    Config(BASELINE_MODEL, "bf16-mixed-cl", "train"),
)


def profile_main(conn, config: Config, settings: Settings, top: int) -> None:
    """torch.profiler over one iteration (after a warm-up): where the time goes, by operator."""
    try:
        from torch.profiler import ProfilerActivity, profile

        if settings.threads:
            torch.set_num_threads(settings.threads)
        runner = (
            InferRunner(config, settings, None)
            if config.mode == "infer"
            else TrainRunner(config, settings)
        )
        batch = 1 if config.mode == "infer" else settings.train_batch
        runner.run(batch)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            seconds = runner.run(batch)
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events) or 1.0
        rows = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
        conn.send(
            (
                "ok",
                {
                    "seconds": seconds,
                    "rows": [
                        {
                            "op": e.key,
                            "calls": e.count,
                            "self_ms": e.self_cpu_time_total / 1e3,
                            "share": e.self_cpu_time_total / total,
                        }
                        for e in rows
                    ],
                },
            )
        )
    except Exception as error:
        traceback.print_exc(file=sys.stderr)
        conn.send(("error", first_line(error)))
    finally:
        conn.close()


def parity_images(settings: Settings, data: Path) -> tuple[list, str]:
    """(image, mask, category) at full resolution: the KITTI split, else synthetic scenes."""
    if (data / "training" / "image_2").is_dir():
        from semseg.data.datamodule import make_reader
        from semseg.evaluation import data_config_for, labelled_samples

        samples = labelled_samples(data)
        if settings.parity_images:
            samples = samples[: settings.parity_images]
        reader = make_reader(data_config_for(data, None), NUM_CLASSES)
        out = []
        for sample in samples:
            image, mask = reader(sample)
            out.append((image, mask, sample.category))
        return out, f"KITTI development split {display_path(data)} ({len(out)} images)"
    from semseg.config import IGNORE_INDEX
    from semseg.data.synthetic import generate_scene

    count = settings.parity_images or 24
    out = []
    for index in range(count):
        scene = generate_scene(index, height=375, width=1242)
        mask = np.where(scene.valid, scene.road.astype(np.int64), IGNORE_INDEX)
        out.append((scene.image, mask, scene.category))
    return out, f"{count} synthetic scenes (375 x 1242)"


# ---------------------------------------------------------------------------------------------
# The machine


def machine() -> dict[str, Any]:
    from semseg.inference.machine import bf16_supported, cpu_flags, cpu_model

    info: dict[str, Any] = {"cpu": cpu_model(), "cpus": os.cpu_count()}
    with contextlib.suppress(Exception):
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in lscpu.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in (
                "Model name",
                "Core(s) per socket",
                "Socket(s)",
                "Thread(s) per core",
                "L3 cache",
            ):
                info[key.strip()] = value.strip()
    flags = cpu_flags()
    info["isa"] = " ".join(
        f
        for f in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")
        if f in flags
    )
    info["bf16"] = bf16_supported()
    info["torch"] = torch.__version__
    info["threads"] = torch.get_num_threads()
    info["python"] = platform.python_version()
    for module in ("onnxruntime", "torchvision", "segmentation_models_pytorch", "lightning"):
        with contextlib.suppress(Exception):
            info[module] = __import__(module).__version__
    info["loadavg_start"] = os.getloadavg()
    return info


# ---------------------------------------------------------------------------------------------
# The run


def speed(
    settings: Settings, log: Callable[[str], None], work: Path, models: Sequence[str]
) -> dict[str, Any]:
    infer_paths = ["fp32", "fp32-cl", "bf16-cl", "onnxruntime"]
    if settings.compile:
        infer_paths += ["compile-fp32-cl", "compile-bf16-cl"]
    if not models_bf16():
        infer_paths = [p for p in infer_paths if "bf16" not in p]
    onnx_path = str(work / f"{BASELINE_MODEL}.onnx")
    export = None
    try:
        export = forked(export_main, BASELINE_MODEL, settings, onnx_path)
        log(f"ONNX export of {BASELINE_MODEL}: {export['seconds']:.1f} s; {export['verified']}")
    except Exception as error:
        log(f"ONNX export failed: {error}")
        onnx_path = None  # type: ignore[assignment]
    base = Config(BASELINE_MODEL, "fp32", "infer")
    groups: list[tuple[str, list[Config]]] = [
        ("fcn8s paths", [Config(BASELINE_MODEL, p, "infer") for p in infer_paths]),
        ("models fp32", [Config(m, "fp32", "infer") for m in models]),
    ]
    if models_bf16() and not settings.quick:  # --quick: one group per kind of code path
        groups.append(("models bf16-cl", [base, *[Config(m, "bf16-cl", "infer") for m in models]]))
    train_base = Config(BASELINE_MODEL, "fp32", "train")
    train_paths = ["fp32", *(["bf16-mixed", "bf16-mixed-cl"] if models_bf16() else [])]
    groups.append(("fcn8s training", [Config(BASELINE_MODEL, p, "train") for p in train_paths]))
    others = [m for m in models if m != BASELINE_MODEL]
    fcn_others = [m for m in others if m in FCNS]
    peers = [m for m in others if m not in FCNS]
    if fcn_others and not settings.quick:
        groups.append(
            ("FCN training", [train_base, *[Config(m, "fp32", "train") for m in fcn_others]])
        )
    if peers:
        peer_configs = [Config(m, "fp32", "train") for m in peers]
        if models_bf16():
            peer_configs += [Config(m, "bf16-mixed-cl", "train") for m in peers]
        groups.append(("peers training", [train_base, *peer_configs]))
    peaks = [Config(MATMUL, p, "infer") for p in ("fp32", *(["bf16"] if models_bf16() else []))]
    rows: list[Row] = []
    for name, configs in groups:
        start = time.perf_counter()
        rows += run_group(name, [*configs, *peaks], settings, onnx_path, log)
        log(f"[{name}] {time.perf_counter() - start:.0f} s")
    return {"rows": [asdict(r) for r in rows], "export": export}


def models_bf16() -> bool:
    from semseg.inference.machine import bf16_supported

    return bf16_supported()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: width 0.125 models, 64 x 96, 1 repeat, no peers",
    )
    parser.add_argument("--out", type=Path, help="write the markdown section here")
    parser.add_argument("--json", type=Path, help="write the raw results here")
    parser.add_argument(
        "--modes",
        default="speed,train-parity",
        help="comma list of speed, train-parity, parity, profile",
    )
    parser.add_argument("--parity", action="store_true", help="add the inference parity mode")
    parser.add_argument("--repeats", type=int, help="timed iterations at batch 1 [5]")
    parser.add_argument(
        "--repeats-large", type=int, help="timed iterations at batch 8 and in training [2]"
    )
    parser.add_argument("--models", nargs="+", help="subset of models (FCNs and peers)")
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile paths")
    parser.add_argument(
        "--warm-compile-cache",
        action="store_true",
        help="use torch inductor's usual cache (default: a fresh one, so the "
        "first call of a compiled path is a cold compilation)",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads [torch's default]")
    parser.add_argument("--matmul-n", type=int, help="matmul size for the peak [4096]")
    parser.add_argument("--parity-steps", type=int, help="training-parity steps [30]")
    parser.add_argument("--parity-images", type=int, help="images for --parity [all]")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="KITTI data_road folder")
    parser.add_argument("--checkpoint", help="FCN-8s checkpoint for --parity")
    args = parser.parse_args(argv)

    settings = Settings(threads=args.threads)
    if args.quick:  # one thread: tiny models on a busy machine suffer most from OpenMP waits
        settings = Settings(
            height=64,
            width=96,
            width_mult=0.125,
            repeats=1,
            repeats_large=1,
            matmul_n=512,
            peers=False,
            compile=False,
            threads=args.threads or 1,
            parity_steps=3,
            parity_size=(32, 64),
            parity_images=4,
            quick=True,
        )
    for attr, value in (
        ("repeats", args.repeats),
        ("repeats_large", args.repeats_large),
        ("matmul_n", args.matmul_n),
        ("parity_steps", args.parity_steps),
        ("parity_images", args.parity_images),
    ):
        if value is not None:
            setattr(settings, attr, value)
    if args.no_peers:
        settings.peers = False
    if args.no_compile:
        settings.compile = False
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if args.parity and "parity" not in modes:
        modes.append("parity")
    unknown = set(modes) - {"speed", "train-parity", "parity", "profile"}
    if unknown:
        parser.error(f"unknown mode(s): {', '.join(sorted(unknown))}")

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    command = "python3 benchmarks/bench.py " + " ".join(sys.argv[1:] if argv is None else argv)
    results: dict[str, Any] = {
        "command": command.strip(),
        "settings": asdict(settings),
        "started": datetime.now().isoformat(timespec="seconds"),
    }
    wall = time.perf_counter()
    results["machine"] = machine()
    results["base_rss_mb"] = maxrss_mb()
    log(f"machine: {json.dumps(results['machine'])}")
    models = list(args.models or (("fcn32s", BASELINE_MODEL) if settings.quick else FCNS))
    skipped = []
    if args.models is None and settings.peers:
        for peer in PEERS:
            if peer_available(peer):
                models.append(peer)
            else:
                skipped.append(f'{peer} ({PEERS[peer]} not installed: pip install -e ".[bench]")')
    elif args.models is None:
        skipped.append("peers (--quick or --no-peers)")
    results["skipped"] = skipped
    for line in skipped:
        log(f"skipped: {line}")
    with tempfile.TemporaryDirectory(prefix="semseg-bench-") as work_dir:
        work = Path(work_dir)
        if not args.warm_compile_cache:  # first calls of compiled paths = cold compilation
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(work / "inductor")
        if "speed" in modes:
            results["speed"] = speed(settings, log, work, models)
        if "train-parity" in modes:
            runs: dict[str, Any] = {}
            for precision in ("32", *(["bf16-mixed"] if models_bf16() else [])):
                start = time.perf_counter()
                runs[precision] = forked(train_parity_main, precision, settings, str(args.data))
                runs[precision]["wall_s"] = time.perf_counter() - start
                log(f"train parity {precision}: final loss {runs[precision]['losses'][-1]:.4f}")
            results["train_parity"] = runs
        if "parity" in modes:
            paths = ["fp32-cl", "bf16-cl", "onnxruntime"]
            if settings.compile:
                paths += ["compile-fp32-cl", "compile-bf16-cl"]
            if not models_bf16():
                paths = [p for p in paths if "bf16" not in p]
            results["parity"] = forked(
                parity_main, settings, str(args.data), args.checkpoint, paths, str(work)
            )
            log(f"parity: {json.dumps(results['parity']['results'])}")
        if "profile" in modes:
            profiles = {}
            for config in PROFILED:
                if "bf16" in config.path and not models_bf16():
                    continue
                try:
                    profiles[config.label] = forked(profile_main, config, settings, 8)
                    log(f"profiled {config.label}")
                except Exception as error:
                    profiles[config.label] = {"error": str(error)}
            results["profile"] = profiles
    results["wall_s"] = time.perf_counter() - wall
    results["machine"]["loadavg_end"] = os.getloadavg()
    markdown = render(results)
    print(markdown)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(markdown)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return 0


# ---------------------------------------------------------------------------------------------
# Markdown


def fmt(value: float | None, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}g}" if value < 1000 else f"{value:.0f}"


def render(results: dict[str, Any]) -> str:
    s = results["settings"]
    m = results["machine"]
    lines = [
        f"Command: `{results['command']}` ({results['started']}, {results['wall_s'] / 60:.1f} "
        "min in all)",
        "",
        f"Machine: {m.get('Model name', m['cpu'])}, {m['cpus']} CPUs "
        f"({m.get('Core(s) per socket', '?')} cores per socket, "
        f"{m.get('Thread(s) per core', '?')} thread per core), ISA {m['isa']}, L3 "
        f"{m.get('L3 cache', '?')}; torch {m['torch']} ({s['threads'] or m['threads']} threads), "
        f"onnxruntime "
        f"{m.get('onnxruntime', '-')}, torchvision {m.get('torchvision', '-')}, "
        f"segmentation-models-pytorch {m.get('segmentation_models_pytorch', '-')}, lightning "
        f"{m.get('lightning', '-')}, Python {m['python']}. Load average (1/5/15 min) at the "
        f"start {', '.join(f'{v:.1f}' for v in m['loadavg_start'])}, at the end "
        f"{', '.join(f'{v:.1f}' for v in m['loadavg_end'])}.",
        "",
        f"Input {s['height']} x {s['width']}, width multiplier {s['width_mult']}; medians of "
        f"{s['repeats']} (batch 1) / {s['repeats_large']} (batch 8, training) timed iterations "
        "after one warm-up; peak RSS includes the "
        f"{results['base_rss_mb']:.0f} MB of the imported libraries.",
    ]
    if results["skipped"]:
        lines += ["", "Skipped: " + "; ".join(results["skipped"]) + "."]
    if "speed" in results:
        lines += ["", *render_speed(results)]
    if "train_parity" in results:
        lines += ["", *render_train_parity(results)]
    if "parity" in results:
        lines += ["", *render_parity(results)]
    if "profile" in results:
        lines += ["", *render_profile(results)]
    return "\n".join(lines) + "\n"


def render_profile(results: dict[str, Any]) -> list[str]:
    s = results["settings"]
    lines = [
        f"Profiles (torch.profiler, one iteration after a warm-up; inference batch 1, "
        f"training batch {s['train_batch']}; operators by self CPU time):"
    ]
    for label, profile in results["profile"].items():
        if "error" in profile:
            lines += ["", f"{label}: failed: {profile['error']}"]
            continue
        lines += [
            "",
            f"{label} ({profile['seconds']:.2f} s for the iteration):",
            "",
            "| operator | calls | self ms | share |",
            "|---|---:|---:|---:|",
        ]
        for row in profile["rows"]:
            lines.append(
                f"| `{row['op']}` | {row['calls']} | {row['self_ms']:.0f} | "
                f"{100 * row['share']:.1f}% |"
            )
    return lines


def render_speed(results: dict[str, Any]) -> list[str]:
    n = results["settings"]["matmul_n"]
    all_rows = [Row(**r) for r in results["speed"]["rows"]]
    rows = [r for r in all_rows if r.model != MATMUL]
    peaks: dict[tuple[str, int], dict[str, float]] = {}
    for row in all_rows:
        if row.model == MATMUL and row.per_image and row.gflop:
            peaks.setdefault((row.group, row.batch), {})[row.path] = row.gflop / row.per_image
    lines = [
        f"Matmul peak: one {n}^3 `torch.matmul` (fp32 and bf16) timed in every group and phase "
        "like a configuration (median GFLOP/s):",
        "",
        "| group | batch | fp32 GFLOP/s | bf16 GFLOP/s |",
        "|---|---:|---:|---:|",
        *(
            f"| {group} | {batch} | {fmt(p.get('fp32'))} | {fmt(p.get('bf16'))} |"
            for (group, batch), p in peaks.items()
        ),
    ]
    export = results["speed"].get("export")
    if export:
        lines += ["", f"ONNX export of FCN-8s: {export['seconds']:.1f} s ({export['verified']})."]
    baselines = {}
    for row in rows:
        if row.model == BASELINE_MODEL and row.path == "fp32" and row.per_image:
            baselines[row.group, row.batch] = row.per_image
    lines += [
        "",
        "| group | model | path | batch | s/img | vs fp32 FCN-8s | first call s | GFLOP/img "
        "| GFLOP/s | % of peak | peak RSS MB |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        paths = INFER_PATHS if row.mode == "infer" else TRAIN_PATHS
        path = ("train " if row.mode == "train" else "") + paths[row.path]
        if row.error or not row.per_image:
            lines.append(
                f"| {row.group} | {row.model} | {path} | {row.batch} | failed: "
                f"{row.error or 'no timing'} | | | | | | |"
            )
            continue
        base = baselines.get((row.group, row.batch))
        ratio = f"{base / row.per_image:.2f}x" if base else ""
        rate = row.gflop / row.per_image if row.gflop else None
        kind = "bf16" if "bf16" in row.path else "fp32"
        peak = peaks.get((row.group, row.batch), {}).get(kind)
        share = 100 * rate / peak if rate and peak else None
        lines.append(
            f"| {row.group} | {row.model} | {path} | {row.batch} | {row.per_image:.3f} | "
            f"{ratio} | {fmt(row.first_call_s)} | {fmt(row.gflop)} | {fmt(rate)} | "
            f"{fmt(share, 2)} | {fmt(row.rss_mb)} |"
        )
    lines += [
        "",
        "Ratios: the FCN-8s fp32 eager baseline of the same group and batch size "
        "(> 1: faster). % of peak: fp32 paths against the fp32 matmul peak, bf16 paths "
        "against the bf16 peak of the same group and phase. Training GFLOP: forward + "
        "backward (3x the forward count for models with grouped convolutions, whose backward "
        "FlopCounterMode over-counts). First call: the warm-up; for compiled paths the "
        "compilation for that input shape.",
    ]
    return lines


def render_train_parity(results: dict[str, Any]) -> list[str]:
    runs = results["train_parity"]
    s = results["settings"]
    first = next(iter(runs.values()))
    lines = [
        f"Training parity: FCN-8s (width {s['width_mult']}), Lightning `Trainer(precision=...)`, "
        f"{s['parity_steps']} steps of batch 4 at {s['parity_size'][0]} x {s['parity_size'][1]}, "
        f"seed 0, Adam 1e-4, same batches ({first['source']}).",
        "",
        "| precision | final loss | mean of last 5 | median s/step (sequential runs) | wall s "
        "| peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for precision, run in runs.items():
        losses = run["losses"]
        lines.append(
            f"| {precision} | {losses[-1]:.4f} | {np.mean(losses[-5:]):.4f} | "
            f"{fmt(run['step_s_median'])} | {run['wall_s']:.0f} | {run['rss_mb']:.0f} |"
        )
    if "bf16-mixed" in runs and "32" in runs:
        a, b = runs["32"]["losses"], runs["bf16-mixed"]["losses"]
        final = abs(b[-1] - a[-1]) / abs(a[-1]) * 100
        tail = abs(np.mean(b[-5:]) - np.mean(a[-5:])) / abs(np.mean(a[-5:])) * 100
        worst = max(abs(x - y) / abs(x) for x, y in zip(a, b, strict=False)) * 100
        lines += [
            "",
            f"bf16-mixed vs 32: final loss differs by {final:.2f}% (mean of the last 5 "
            f"steps: {tail:.2f}%; largest step-wise difference {worst:.2f}%).",
            "",
            "Loss curves (every step): ",
            "",
            "    32:         " + " ".join(f"{v:.3f}" for v in a),
            "    bf16-mixed: " + " ".join(f"{v:.3f}" for v in b),
        ]
    return lines


def render_parity(results: dict[str, Any]) -> list[str]:
    parity = results["parity"]
    lines = [
        f"Inference parity against fp32 eager: {parity['model']}, {parity['source']}, full "
        "resolution (Predictor: resize to the input size, bilinear upsampling of the logits).",
        "",
        "| path | max abs prob diff | labels changed | MaxF | MaxF diff | IoU |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    reference = parity["results"].get("fp32", {}).get("max_f")
    for path, entry in parity["results"].items():
        if "error" in entry:
            lines.append(f"| {INFER_PATHS[path]} | failed: {entry['error']} | | | | |")
            continue
        max_f = entry.get("max_f")
        diff = f"{max_f - reference:+.3f}" if max_f is not None and reference is not None else ""
        lines.append(
            f"| {INFER_PATHS[path]} | {entry['max_abs_prob_diff']:.2g} | "
            f"{100 * entry['label_change']:.4f}% | {fmt(max_f, 5)} | {diff} | "
            f"{fmt(entry.get('iou'), 5)} |"
        )
    return lines


if __name__ == "__main__":
    sys.exit(main())

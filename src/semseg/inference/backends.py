"""Inference backends: the same logits from plain torch, its fast paths, or ONNX Runtime.

Every backend maps a batch ``(N, 3, H, W)`` float32 RGB in [0, 1] to ``(N, C, H, W)`` float32
logits (:meth:`InferenceBackend.logits`):

* :class:`TorchBackend` ``(model, precision="32"|"bf16", channels_last, compile)``: plain fp32
  eager by default (the reference). ``bf16`` casts a copy of the weights to bfloat16 once and
  runs under CPU autocast (needs a CPU with bf16 instructions: :func:`bf16_supported`);
  ``channels_last`` converts the weights and each input to NHWC, the layout oneDNN's
  convolutions prefer; ``compile`` wraps the model in ``torch.compile`` (inductor, with weight
  freezing: constants folded and weights pre-packed once) and pads every batch to the largest
  batch seen so far so that a short last batch does not trigger a recompilation.
* :class:`OnnxRuntimeBackend` ``(path, threads)``: an ONNX export (:mod:`.onnx_export`) run by
  ONNX Runtime's CPU execution provider, fp32.

:func:`select_backend` resolves the ``--backend/--precision/--channels-last/--compile`` flags of
``semseg predict`` and ``semseg evaluate``; ``auto`` calibrates (:func:`calibrate`): it times
every candidate on the model at its input size against fp32 eager, drops those whose
probabilities differ by more than :data:`PARITY_TOLERANCE`, keeps the fastest, and remembers the
choice per (machine, checkpoint) in :func:`cache_dir` ``/backend-choices.json``.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from semseg.errors import SemsegError
from semseg.inference.checkpoint import LoadedModel
from semseg.io import first_line, write_json_atomic

PRECISIONS = ("32", "bf16")
BACKEND_NAMES = ("auto", "torch", "onnxruntime")
PARITY_TOLERANCE = {"32": 1e-3, "bf16": 0.02}
"""Largest max |p - p_fp32_eager| (softmax probability, any class, any pixel) that ``auto``
accepts for a candidate of that precision; ONNX Runtime runs fp32."""
CALIBRATION_ITERATIONS = 3
CALIBRATION_MAX_BATCH = 4
"""Timed runs per candidate (after one warm-up), interleaved between candidates; median kept."""


# ---------------------------------------------------------------------------------------------
# The machine


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@lru_cache(maxsize=1)
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def bf16_supported() -> bool:
    """Whether this CPU runs bf16 convolutions natively (AVX512-BF16 or AMX) through oneDNN."""
    if not torch.backends.mkldnn.is_available():
        return False
    flags = cpu_flags()
    if flags:
        return bool({"avx512_bf16", "amx_bf16"} & flags)
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(check()) if check is not None else False
    except Exception:
        return False


def machine_key() -> str:
    """What a cached backend choice depends on besides the checkpoint."""
    try:
        import onnxruntime

        ort_version = onnxruntime.__version__
    except ImportError:  # pragma: no cover - a dependency
        ort_version = "none"
    return (
        f"{platform.node()}|{cpu_model()}|{os.cpu_count()} cpus|{torch.get_num_threads()} threads"
        f"|torch {torch.__version__}|onnxruntime {ort_version}"
    )


def cache_dir() -> Path:
    """``$SEMSEG_CACHE_DIR``, else ``$XDG_CACHE_HOME/semseg``, else ``~/.cache/semseg``."""
    if os.environ.get("SEMSEG_CACHE_DIR"):
        return Path(os.environ["SEMSEG_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "semseg"


# ---------------------------------------------------------------------------------------------
# Backends


class InferenceBackend:
    """``logits(batch)``: ``(N, 3, H, W)`` float32 in [0, 1] -> ``(N, C, H, W)`` float32."""

    name: str = "backend"  # the family: "torch" or "onnxruntime"
    precision: str = "32"

    def logits(self, batch: Tensor) -> Tensor:
        raise NotImplementedError

    def describe(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"


class TorchBackend(InferenceBackend):
    """The model in torch: fp32 eager, or with any of bf16 autocast, channels-last, compile.

    The caller's model is left as it was (bf16 and channels-last convert a copy) unless
    ``inplace`` (saves the copy's memory where the caller has no further use for the model).
    """

    name = "torch"

    def __init__(
        self,
        model: nn.Module,
        precision: str = "32",
        channels_last: bool = False,
        compile: bool = False,
        device: str | torch.device = "cpu",
        inplace: bool = False,
    ) -> None:
        if precision not in PRECISIONS:
            raise SemsegError(
                f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}"
            )
        self.device = torch.device(device)
        if precision == "bf16" and self.device.type == "cpu" and not bf16_supported():
            raise SemsegError(
                "--precision bf16 needs a CPU with AVX512-BF16 or AMX (not found in "
                "/proc/cpuinfo); use --precision 32"
            )
        self.precision = precision
        self.channels_last = channels_last
        self.compiled = compile
        model = model.to(self.device).eval()
        if (precision == "bf16" or channels_last) and not inplace:
            model = copy.deepcopy(model)  # the caller's model stays as it was
        if precision == "bf16":
            model = model.to(torch.bfloat16)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self._module: Callable[[Tensor], Tensor] = model
        self._padded_batch = 0
        if compile:
            if not hasattr(torch, "compile"):  # pragma: no cover - torch >= 2.4 has it
                raise SemsegError("torch.compile is not available in this torch")
            self._module = torch.compile(model, dynamic=False)

    def describe(self) -> str:
        parts = ["torch", "bf16" if self.precision == "bf16" else "fp32"]
        if self.channels_last:
            parts.append("channels-last")
        parts.append("compiled" if self.compiled else "eager")
        return " ".join(parts)

    def _context(self) -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        if self.precision == "bf16":
            stack.enter_context(torch.autocast(self.device.type, dtype=torch.bfloat16))
        if self.compiled:
            import torch._inductor.config as inductor_config

            # Freezing folds the (now constant) weights and lets oneDNN pre-pack them once.
            stack.enter_context(inductor_config.patch(freezing=True))
        return stack

    def logits(self, batch: Tensor) -> Tensor:
        x = batch.to(self.device, torch.float32)
        count = x.shape[0]
        if self.compiled:
            self._padded_batch = max(self._padded_batch, count)
            if count < self._padded_batch:  # same shape as before: no recompilation
                filler = x[-1:].expand(self._padded_batch - count, *x.shape[1:])
                x = torch.cat([x, filler])
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self._context():
            try:
                out = self._module(x)
            except SemsegError:
                raise
            except Exception as error:
                if not self.compiled:
                    raise
                raise SemsegError(f"torch.compile failed: {first_line(error)}") from error
        return out[:count].float().contiguous()


class OnnxRuntimeBackend(InferenceBackend):
    """An ONNX export run by ONNX Runtime's CPU execution provider (fp32)."""

    name = "onnxruntime"

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise SemsegError(f"ONNX model not found: {self.path}")
        self.threads = threads or torch.get_num_threads()
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(
                str(self.path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as error:
            raise SemsegError(
                f"onnxruntime cannot load {self.path}: {first_line(error)}"
            ) from error
        self.input_name = self.session.get_inputs()[0].name
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)

    def describe(self) -> str:
        precision = self.metadata.get("precision", "fp32")  # "int8": semseg quantize
        return f"onnxruntime {precision} ({self.threads} threads)"

    def logits(self, batch: Tensor) -> Tensor:
        array = np.ascontiguousarray(batch.detach().to("cpu", torch.float32).numpy())
        (out,) = self.session.run(None, {self.input_name: array})
        return torch.from_numpy(out)


# ---------------------------------------------------------------------------------------------
# ONNX exports of checkpoints, cached


def onnx_cache_path(checkpoint: str | Path, opset: int, sha256: str | None = None) -> Path:
    from semseg.inference.onnx_export import file_sha256

    sha = sha256 or file_sha256(checkpoint)
    return cache_dir() / "onnx" / f"{sha[:20]}-opset{opset}.onnx"


def cached_onnx(
    loaded: LoadedModel,
    opset: int | None = None,
    announce: Callable[[str], None] | None = None,
    sha256: str | None = None,
) -> Path:
    """The checkpoint's ONNX export in the cache, exported (and verified) on first use."""
    from semseg.inference.onnx_export import DEFAULT_OPSET, export_onnx

    opset = opset or DEFAULT_OPSET
    path = onnx_cache_path(loaded.path, opset, sha256)
    if not path.is_file():
        if announce is not None:
            announce(f"exporting {loaded.path.name} to ONNX (opset {opset}) once: {path}")
        export_onnx(loaded, path, opset=opset, verify=True)
    return path


def onnx_backend_for(
    loaded: LoadedModel,
    threads: int | None = None,
    announce: Callable[[str], None] | None = None,
    sha256: str | None = None,
) -> OnnxRuntimeBackend:
    """ONNX Runtime on the loaded model: the file itself for an .onnx, else the cached export."""
    if loaded.model is None or loaded.path.suffix.lower() == ".onnx":
        return OnnxRuntimeBackend(loaded.path, threads)
    return OnnxRuntimeBackend(cached_onnx(loaded, announce=announce, sha256=sha256), threads)


# ---------------------------------------------------------------------------------------------
# Choosing a backend


@dataclass(frozen=True)
class Candidate:
    """One way to run the model: backend family plus the torch knobs."""

    backend: str = "torch"
    precision: str = "32"
    channels_last: bool = False
    compile: bool = False

    def label(self) -> str:
        if self.backend == "onnxruntime":
            return "onnxruntime fp32"
        parts = ["torch", "bf16" if self.precision == "bf16" else "fp32"]
        if self.channels_last:
            parts.append("channels-last")
        parts.append("compiled" if self.compile else "eager")
        return " ".join(parts)


BASELINE = Candidate()


def build_backend(
    loaded: LoadedModel,
    candidate: Candidate,
    threads: int | None = None,
    device: str = "cpu",
    announce: Callable[[str], None] | None = None,
    sha256: str | None = None,
) -> InferenceBackend:
    if candidate.backend == "onnxruntime":
        return onnx_backend_for(loaded, threads, announce, sha256)
    if loaded.model is None:
        raise SemsegError(f"{loaded.path} is an ONNX model: it runs with --backend onnxruntime")
    return TorchBackend(
        loaded.model, candidate.precision, candidate.channels_last, candidate.compile, device
    )


def auto_candidates(
    precision: str | None, channels_last: bool | None, compile: bool
) -> list[Candidate]:
    """What ``--backend auto`` tries: fp32 eager (the reference) first, then the fast paths.

    torch.compile is tried only with ``--compile`` (it costs tens of seconds per input shape);
    bf16 only on a CPU with bf16 instructions; ``--precision`` / ``--channels-last`` restrict.
    """
    precisions = [precision] if precision else ["32", *(["bf16"] if bf16_supported() else [])]
    layouts = [channels_last] if channels_last is not None else [False, True]
    compiles = [False, True] if compile else [False]
    candidates = [BASELINE] if precision in (None, "32") and channels_last in (None, False) else []
    for p in precisions:
        for cl in layouts:
            for c in compiles:
                candidate = Candidate("torch", p, cl, c)
                if candidate not in candidates:
                    candidates.append(candidate)
    if precision in (None, "32") and not compile:
        candidates.append(Candidate("onnxruntime"))
    return candidates


@dataclass
class Trial:
    """One candidate's calibration: median seconds per image and parity with fp32 eager."""

    label: str
    seconds: float | None = None
    max_abs_prob_diff: float | None = None
    accepted: bool = False
    note: str = ""


@dataclass
class Choice:
    """The backend ``auto`` picked and why; ``line()`` is what ``semseg predict`` prints."""

    candidate: Candidate
    seconds: float | None = None
    baseline_seconds: float | None = None
    max_abs_prob_diff: float | None = None
    trials: list[Trial] = field(default_factory=list)
    cached: bool = False
    forced: str = ""

    def line(self, backend: InferenceBackend | None = None) -> str:
        name = backend.describe() if backend is not None else self.candidate.label()
        if self.forced:
            return f"backend: {name} ({self.forced})"
        details = []
        if self.seconds is not None:
            timing = f"{self.seconds:.3g} s/img"
            if self.baseline_seconds and self.candidate != BASELINE:
                timing += f", {self.baseline_seconds / self.seconds:.2f}x fp32 eager"
            details.append(timing)
        if self.max_abs_prob_diff is not None and self.candidate != BASELINE:
            details.append(f"parity max |dp| {self.max_abs_prob_diff:.2g}")
        if self.cached:
            details.append("cached choice")
        return f"backend: {name} ({'; '.join(details)})" if details else f"backend: {name}"


def calibration_batch(
    loaded: LoadedModel, image: np.ndarray | None = None, batch_size: int = 1
) -> Tensor:
    """The first image (or a synthetic road scene) at the model's input size, ``batch_size``
    copies (which path is fastest depends on the batch: weights are re-read once per batch)."""
    from semseg.data.transforms import image_to_tensor

    height, width = loaded.input_size
    if image is None:
        from semseg.data.synthetic import generate_scene

        scene = generate_scene(0, height=max(height, 16), width=max(width, 16)).image
        image = np.asarray(scene)
        if image.dtype != np.uint8:
            image = np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)
    return image_to_tensor(image, height, width).unsqueeze(0).repeat(batch_size, 1, 1, 1)


def calibrate(
    loaded: LoadedModel,
    candidates: Sequence[Candidate],
    batch: Tensor,
    iterations: int = CALIBRATION_ITERATIONS,
    threads: int | None = None,
    announce: Callable[[str], None] | None = None,
    sha256: str | None = None,
) -> tuple[Choice, dict[Candidate, InferenceBackend]]:
    """Time each candidate on ``batch`` (interleaved) and check it against fp32 eager."""
    reference_backend = build_backend(loaded, BASELINE)
    reference = reference_backend.logits(batch).softmax(dim=1)
    backends: dict[Candidate, InferenceBackend] = {BASELINE: reference_backend}
    trials: dict[Candidate, Trial] = {}
    for candidate in candidates:
        trial = Trial(candidate.label())
        trials[candidate] = trial
        tolerance = PARITY_TOLERANCE[candidate.precision]
        try:
            backend = backends.get(candidate) or build_backend(
                loaded, candidate, threads, announce=announce, sha256=sha256
            )
            probabilities = backend.logits(batch).softmax(dim=1)  # warm-up (and compilation)
        except SemsegError as error:
            trial.note = str(error)
            continue
        except Exception as error:  # a fast path that does not work here is skipped, not fatal
            trial.note = f"{type(error).__name__}: {first_line(error)}"
            continue
        trial.max_abs_prob_diff = float((probabilities - reference).abs().max())
        trial.accepted = trial.max_abs_prob_diff <= tolerance
        if not trial.accepted:
            trial.note = f"parity {trial.max_abs_prob_diff:.2g} > {tolerance:g}"
            continue
        backends[candidate] = backend
    timed = [c for c in candidates if trials[c].accepted]
    times: dict[Candidate, list[float]] = {c: [] for c in timed}
    for _ in range(max(1, iterations)):
        for candidate in timed:
            start = time.perf_counter()
            backends[candidate].logits(batch)
            times[candidate].append((time.perf_counter() - start) / batch.shape[0])
    for candidate in timed:
        trials[candidate].seconds = statistics.median(times[candidate])
    if not timed:
        raise SemsegError("no backend ran the model: " + "; ".join(
            f"{t.label}: {t.note}" for t in trials.values()))
    best = min(timed, key=lambda c: trials[c].seconds or float("inf"))
    baseline_seconds = trials[BASELINE].seconds if BASELINE in trials else None
    choice = Choice(
        candidate=best,
        seconds=trials[best].seconds,
        baseline_seconds=baseline_seconds,
        max_abs_prob_diff=trials[best].max_abs_prob_diff,
        trials=list(trials.values()),
    )
    return choice, backends


def choice_key(
    sha256: str, loaded: LoadedModel, candidates: Sequence[Candidate], batch_size: int = 1
) -> str:
    text = "|".join(
        [machine_key(), sha256, "x".join(map(str, loaded.input_size)), f"batch {batch_size}",
         ",".join(c.label() for c in candidates)]
    )
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def read_choices(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def select_backend(
    loaded: LoadedModel,
    backend: str = "auto",
    precision: str | None = None,
    channels_last: bool | None = None,
    compile: bool = False,
    threads: int | None = None,
    image: np.ndarray | None = None,
    use_cache: bool = True,
    device: str = "cpu",
    announce: Callable[[str], None] | None = None,
    recalibrate: bool = False,
    batch_size: int = 1,
) -> tuple[InferenceBackend, Choice]:
    """The backend the flags ask for; ``auto`` calibrates on ``image`` (or a synthetic scene).

    ``use_cache``: read and write the choice in :func:`cache_dir`; ``recalibrate``: calibrate
    even when a choice is cached (and store the new one); ``batch_size``: the batch the run will
    use (calibrated at up to :data:`CALIBRATION_MAX_BATCH` copies of the image)."""
    batch_size = max(1, min(batch_size, CALIBRATION_MAX_BATCH))
    backend = backend.strip().lower()
    if backend not in BACKEND_NAMES:
        raise SemsegError(f"--backend must be one of {', '.join(BACKEND_NAMES)}, got {backend!r}")
    if precision is not None and precision not in PRECISIONS:
        raise SemsegError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    is_onnx = loaded.model is None
    if backend == "torch" and is_onnx:
        raise SemsegError(f"{loaded.path} is an ONNX model: use --backend onnxruntime or auto")
    if backend == "onnxruntime" or (backend == "auto" and is_onnx):
        if precision == "bf16" or channels_last or compile:
            raise SemsegError(
                "--backend onnxruntime runs fp32 only: drop --precision bf16, --channels-last "
                "and --compile"
            )
        chosen = onnx_backend_for(loaded, threads, announce)
        reason = "the input is an ONNX model" if backend == "auto" else "forced by --backend"
        return chosen, Choice(Candidate("onnxruntime"), forced=reason)
    if backend == "torch" or device != "cpu":
        candidate = Candidate("torch", precision or "32", bool(channels_last), compile)
        chosen = build_backend(loaded, candidate, device=device)
        return chosen, Choice(candidate, forced="forced by --backend torch")
    candidates = auto_candidates(precision, channels_last, compile)
    if not loaded.path.is_file():  # a model built in memory: nothing to key a cache by
        candidates = [c for c in candidates if c.backend != "onnxruntime"]
        use_cache = False
    if len(candidates) == 1:
        return build_backend(loaded, candidates[0], threads, announce=announce), Choice(
            candidates[0], forced="the only candidate"
        )
    from semseg.inference.onnx_export import file_sha256

    sha = file_sha256(loaded.path) if loaded.path.is_file() else "in-memory"
    key = choice_key(sha, loaded, candidates, batch_size)
    store = cache_dir() / "backend-choices.json"
    if use_cache and not recalibrate:
        entry = read_choices(store).get(key)
        if isinstance(entry, dict):
            try:
                candidate = Candidate(**entry["candidate"])
                chosen = build_backend(loaded, candidate, threads, announce=announce, sha256=sha)
                return chosen, Choice(
                    candidate,
                    seconds=entry.get("seconds"),
                    baseline_seconds=entry.get("baseline_seconds"),
                    max_abs_prob_diff=entry.get("max_abs_prob_diff"),
                    cached=True,
                )
            except (TypeError, KeyError, SemsegError):
                pass  # a stale or broken entry: calibrate again
    batch = calibration_batch(loaded, image, batch_size)
    iterations = CALIBRATION_ITERATIONS if batch_size == 1 else 2
    choice, backends = calibrate(loaded, candidates, batch, iterations=iterations,
                                 threads=threads, announce=announce,
                                 sha256=sha if loaded.path.is_file() else None)
    if use_cache:
        choices = read_choices(store)
        choices[key] = {
            "candidate": asdict(choice.candidate),
            "seconds": choice.seconds,
            "baseline_seconds": choice.baseline_seconds,
            "max_abs_prob_diff": choice.max_abs_prob_diff,
            "checkpoint": str(loaded.path),
            "machine": machine_key(),
            "trials": [asdict(t) for t in choice.trials],
            "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        with contextlib.suppress(OSError):
            write_json_atomic(store, choices)
    return backends[choice.candidate], choice


def make_backend(
    loaded: LoadedModel, backend: str | InferenceBackend | None, device: str = "cpu"
) -> InferenceBackend:
    """What :class:`Predictor` runs: an instance as given, or one named by ``backend``."""
    if isinstance(backend, InferenceBackend):
        return backend
    if backend is None or backend == "torch":
        if loaded.model is None:
            return onnx_backend_for(loaded)
        return TorchBackend(loaded.model, device=device)
    chosen, _ = select_backend(loaded, backend, device=device)
    return chosen

"""Choosing how a model runs: the one backend chooser of predict, evaluate and serve.

:class:`BackendOptions` holds the ``--backend/--precision/--channels-last/--compile/--threads/
--recalibrate`` settings (checked when built) and :func:`choose_backend` turns them into a
runtime (:mod:`semseg.inference.runtimes`). ``auto`` calibrates (:func:`calibrate`): it times
every candidate on the model at its input size against fp32 eager, drops those whose
probabilities differ by more than :data:`PARITY_TOLERANCE`, keeps the fastest, and remembers the
choice per (machine, checkpoint) in :func:`semseg.inference.machine.cache_dir`
``/backend-choices.json``. A checkpoint's ONNX export is cached there too (``onnx/``), with the
SHA-256 of the export beside it: an entry that was replaced or truncated is exported again.

Two candidates are built once and kept in the artefact cache (:mod:`semseg.inference.artefacts`,
keyed by checkpoint, input size, precision, library versions and CPU flags): the compiled bf16
AOTInductor package (:mod:`semseg.inference.aot`) and the int8 model quantized on images of the
user's data (:mod:`semseg.inference.int8_cache`), accepted only if it passed its parity guard on
those images and keeps parity on the calibration batch. One that cannot run here (no C++
compiler, no bf16 or VNNI instructions, no calibration images, parity failed) is skipped with a
one-line reason. ``--precision int8`` runs the int8 model directly, falling back to onnxruntime
fp32 (then fp32 eager) with a message where it cannot.

Imports the runtimes, the machine probes, checkpoints and :mod:`semseg.inference.onnx_export`
(which does not import this module).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from semseg.errors import SemsegError
from semseg.inference.checkpoint import LoadedModel, checkpoint_sha256, file_sha256
from semseg.inference.int8_cache import ImageSource
from semseg.inference.machine import bf16_supported, cache_dir, machine_key
from semseg.inference.onnx_export import DEFAULT_OPSET, export_onnx
from semseg.inference.options import CALIBRATION_MAX_BATCH, BackendOptions
from semseg.inference.runtimes import InferenceBackend, OnnxRuntimeBackend, TorchBackend
from semseg.io import first_line, write_json_atomic, write_text_atomic

PARITY_TOLERANCE = {"32": 1e-3, "bf16": 0.02}
"""Largest max |p - p_fp32_eager| (softmax probability, any class, any pixel) that ``auto``
accepts for a candidate of that precision on its calibration batch. int8 passes the parity
guard of every int8 path there (:func:`semseg.inference.quantize.guard_failure`), besides the
one it passed on the calibration images when it was built (:mod:`semseg.inference.int8_cache`)."""
CALIBRATION_ITERATIONS = 3
"""Timed runs per candidate (after one warm-up), interleaved between candidates; median kept."""


# ---------------------------------------------------------------------------------------------
# ONNX exports of checkpoints, cached and verified


def onnx_cache_path(checkpoint: str | Path, opset: int, sha256: str | None = None) -> Path:
    sha = sha256 or checkpoint_sha256(checkpoint)
    return cache_dir() / "onnx" / f"{sha[:20]}-opset{opset}.onnx"


def cache_entry_intact(path: Path) -> bool:
    """Whether the cached export is the one written: its SHA-256 matches the recorded one."""
    record = path.with_name(path.name + ".sha256")
    try:
        expected = record.read_text().strip()
        return path.is_file() and bool(expected) and file_sha256(path) == expected
    except OSError:
        return False


def cached_onnx(
    loaded: LoadedModel,
    opset: int | None = None,
    announce: Callable[[str], None] | None = None,
    sha256: str | None = None,
) -> Path:
    """The checkpoint's ONNX export in the cache, exported (and verified) on first use, and
    exported again when the cached file no longer has the SHA-256 recorded beside it."""
    opset = opset or DEFAULT_OPSET
    path = onnx_cache_path(loaded.path, opset, sha256)
    if cache_entry_intact(path):
        return path
    if announce is not None:
        again = " again (the cached file was changed)" if path.exists() else " once"
        announce(f"exporting {loaded.path.name} to ONNX (opset {opset}){again}: {path}")
    export_onnx(loaded, path, opset=opset, verify=True)
    write_text_atomic(path.with_name(path.name + ".sha256"), file_sha256(path) + "\n")
    return path


def onnx_backend_for(
    loaded: LoadedModel,
    threads: int | None = None,
    announce: Callable[[str], None] | None = None,
    sha256: str | None = None,
) -> OnnxRuntimeBackend:
    """ONNX Runtime on the loaded model: the file itself for an .onnx, else the cached export;
    its output channels are checked against the model's class count."""
    if loaded.model is None or loaded.path.suffix.lower() == ".onnx":
        path = loaded.path
    else:
        path = cached_onnx(loaded, announce=announce, sha256=sha256)
    return OnnxRuntimeBackend(path, threads, num_classes=loaded.num_classes)


# ---------------------------------------------------------------------------------------------
# Choosing a backend


@dataclass(frozen=True)
class Candidate:
    """One way to run the model: backend family plus the torch knobs.

    Families: ``torch`` (eager or ``torch.compile``; with ``precision="int8"`` the cached PT2E
    int8 program of :mod:`semseg.inference.pt2e`), ``onnxruntime`` (fp32 export, or the cached
    int8 model with ``precision="int8"``) and ``aot`` (the cached AOTInductor package)."""

    backend: str = "torch"
    precision: str = "32"
    channels_last: bool = False
    compile: bool = False

    def label(self) -> str:
        if self.backend == "onnxruntime":
            return "onnxruntime int8" if self.precision == "int8" else "onnxruntime fp32"
        if self.precision == "int8":
            return "torch int8 (PT2E, oneDNN)"
        parts = ["torch", "bf16" if self.precision == "bf16" else "fp32"]
        if self.channels_last:
            parts.append("channels-last")
        parts.append("compiled" if self.compile else "eager")
        if self.backend == "aot":
            parts.append("(AOTInductor package)")
        return " ".join(parts)

    @property
    def builds_artefact(self) -> bool:
        """Built once into the artefact cache (int8 quantization, AOT compilation)."""
        return self.backend == "aot" or self.precision == "int8"


BASELINE = Candidate()
INT8 = Candidate("onnxruntime", "int8")
TORCH_INT8 = Candidate("torch", "int8")
AOT_BF16 = Candidate("aot", "bf16", channels_last=True, compile=True)
AUTO_BUILD_ENV = "SEMSEG_AUTO_BUILD"
"""Set to 0: ``auto`` uses int8 models and compiled packages only where already cached (it builds
none); explicit ``--precision int8`` still builds."""


NOT_BUILT = f"not cached, and {AUTO_BUILD_ENV}=0 builds none"


def auto_builds() -> bool:
    return os.environ.get(AUTO_BUILD_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def build_backend(
    loaded: LoadedModel,
    candidate: Candidate,
    threads: int | None = None,
    device: str = "cpu",
    announce: Callable[[str], None] | None = None,
    sha256: str | None = None,
    images: ImageSource = None,
    rebuild: bool = False,
    cached_only: bool = False,
) -> InferenceBackend:
    """The runtime of ``candidate``. ``images``: calibration images for an int8 model that has
    to be built; ``cached_only``: refuse to build int8 models and compiled packages."""
    if candidate.builds_artefact and cached_only and not artefact_cached(loaded, candidate, sha256):
        raise SemsegError(NOT_BUILT)
    if candidate == TORCH_INT8:
        from semseg.inference.pt2e import torch_int8_backend

        return torch_int8_backend(loaded, images, sha256=sha256, rebuild=rebuild, announce=announce)
    if candidate == INT8:
        from semseg.inference.int8_cache import int8_backend

        return int8_backend(
            loaded, images, sha256=sha256, threads=threads, rebuild=rebuild, announce=announce
        )
    if candidate.backend == "onnxruntime":
        return onnx_backend_for(loaded, threads, announce, sha256)
    if loaded.model is None:
        raise SemsegError(f"{loaded.path} is an ONNX model: it runs with --backend onnxruntime")
    if candidate.backend == "aot":
        from semseg.inference.aot import cached_pt2

        return cached_pt2(loaded, candidate.precision, sha256, announce)
    return TorchBackend(
        loaded.model, candidate.precision, candidate.channels_last, candidate.compile, device
    )


def artefact_cached(loaded: LoadedModel, candidate: Candidate, sha256: str | None) -> bool:
    from semseg.inference import artefacts

    if loaded.model is None or not loaded.path.is_file():
        return False
    sha = sha256 or checkpoint_sha256(loaded.path)
    if candidate == INT8:
        from semseg.inference.int8_cache import int8_key

        return artefacts.lookup(int8_key(loaded, sha)).ok
    if candidate == TORCH_INT8:
        from semseg.inference.pt2e import program_key

        return artefacts.lookup(program_key(loaded, sha)).ok
    from semseg.inference.aot import MAX_BATCH

    key = artefacts.key_for(loaded, sha, "pt2", candidate.precision, f"batch 1..{MAX_BATCH}")
    return artefacts.lookup(key).ok


def auto_candidates(
    precision: str | None, channels_last: bool | None, compile: bool
) -> list[Candidate]:
    """What ``--backend auto`` tries: fp32 eager (the reference) first, then the fast paths.

    torch.compile in the process is tried only with ``--compile`` (it costs tens of seconds per
    input shape and process); the compiled bf16 package (AOTInductor, compiled once and cached)
    and the int8 model (quantized once and cached) are tried by default; bf16 only on a CPU with
    bf16 instructions; ``--precision`` / ``--channels-last`` restrict.
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
    if "bf16" in precisions and channels_last in (None, True):
        candidates.append(AOT_BF16)
    if precision is None and channels_last is None and not compile:
        candidates.append(INT8)
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
    images: ImageSource = None,
    rebuild: bool = False,
    cached_only: bool = False,
) -> tuple[Choice, dict[Candidate, InferenceBackend]]:
    """Time each candidate on ``batch`` (interleaved) and check it against fp32 eager.

    ``images``, ``rebuild``, ``cached_only``: for the candidates built once (int8, AOT), as in
    :func:`build_backend`."""
    reference_backend = build_backend(loaded, BASELINE)
    reference = reference_backend.logits(batch).softmax(dim=1)
    backends: dict[Candidate, InferenceBackend] = {BASELINE: reference_backend}
    trials: dict[Candidate, Trial] = {}
    for candidate in candidates:
        trial = Trial(candidate.label())
        trials[candidate] = trial
        try:
            backend = backends.get(candidate) or build_backend(
                loaded,
                candidate,
                threads,
                announce=announce,
                sha256=sha256,
                images=images,
                rebuild=rebuild,
                cached_only=cached_only,
            )
            probabilities = backend.logits(batch).softmax(dim=1)  # warm-up (and compilation)
        except SemsegError as error:
            trial.note = str(error)
            continue
        except Exception as error:  # a fast path that does not work here is skipped, not fatal
            trial.note = f"{type(error).__name__}: {first_line(error)}"
            continue
        trial.max_abs_prob_diff = float((probabilities - reference).abs().max())
        trial.note = parity_problem(candidate, probabilities, reference)
        trial.accepted = not trial.note
        if trial.accepted:
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
        raise SemsegError(
            "no backend ran the model: "
            + "; ".join(f"{t.label}: {t.note}" for t in trials.values())
        )
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


def parity_problem(candidate: Candidate, probabilities: Tensor, reference: Tensor) -> str:
    """Why ``candidate``'s probabilities are not close enough to fp32 eager's ("" if they are):
    fp32 and bf16 by the largest change; int8 by the parity guard of every int8 path
    (:func:`semseg.inference.quantize.guard_failure`)."""
    if candidate.precision == "int8":
        from semseg.inference.quantize import ParityCounts

        counts = ParityCounts()
        counts.add(probabilities.detach().cpu().numpy(), reference.cpu().numpy(), class_axis=1)
        return counts.failure()
    tolerance = PARITY_TOLERANCE[candidate.precision]
    worst = float((probabilities - reference).abs().max())
    if not worst <= tolerance:
        return f"parity {worst:.2g} > {tolerance:g}"
    return ""


def choice_key(
    sha256: str, loaded: LoadedModel, candidates: Sequence[Candidate], batch_size: int = 1
) -> str:
    text = "|".join(
        [
            machine_key(),
            sha256,
            "x".join(map(str, loaded.input_size)),
            f"batch {batch_size}",
            ",".join(c.label() for c in candidates),
            f"auto-build {auto_builds()}",
        ]
    )
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def read_choices(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def choose_backend(
    loaded: LoadedModel,
    options: BackendOptions | None = None,
    *,
    image: np.ndarray | None = None,
    images: ImageSource = None,
    batch_size: int = 1,
    use_cache: bool = True,
    device: str = "cpu",
    announce: Callable[[str], None] | None = None,
) -> tuple[InferenceBackend, Choice]:
    """The backend ``options`` ask for; ``auto`` calibrates on ``image`` (or a synthetic scene).

    ``images``: images of the user's data (a list, or a function that reads them, called only
    when an int8 model has to be quantized) for int8 calibration and its parity guard; without
    them int8 is used only where a model is cached. ``use_cache``: read and write the choice in
    the cache folder; ``options.recalibrate``: calibrate even when a choice is cached (and store
    the new one; an int8 model is quantized again); ``batch_size``: the batch the run will use
    (calibrated at up to :data:`CALIBRATION_MAX_BATCH` copies of the image)."""
    options = options or BackendOptions()
    batch_size = max(1, min(batch_size, CALIBRATION_MAX_BATCH))
    backend, precision, threads = options.backend, options.precision, options.threads
    channels_last, compile = options.channels_last, options.compile
    is_onnx = loaded.model is None
    if is_onnx and loaded.path.suffix.lower() == ".pt2":
        return package_backend(loaded, options)
    if precision == "int8" and not is_onnx and device == "cpu":
        return int8_or_fallback(loaded, options, images, announce)
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
        candidates = [c for c in candidates if c.backend == "torch"]
        use_cache = False
    if len(candidates) == 1:
        return build_backend(loaded, candidates[0], threads, announce=announce), Choice(
            candidates[0], forced="the only candidate"
        )
    sha = checkpoint_sha256(loaded.path) if loaded.path.is_file() else "in-memory"
    key = choice_key(sha, loaded, candidates, batch_size)
    store = cache_dir() / "backend-choices.json"
    if use_cache and not options.recalibrate:
        cached = cached_choice(store, key, loaded, threads, announce, sha, images)
        if cached is not None:
            return cached
    batch = calibration_batch(loaded, image, batch_size)
    iterations = CALIBRATION_ITERATIONS if batch_size == 1 else 2
    choice, backends = calibrate(
        loaded,
        candidates,
        batch,
        iterations=iterations,
        threads=threads,
        announce=announce,
        sha256=sha if loaded.path.is_file() else None,
        images=images,
        rebuild=options.recalibrate,
        cached_only=not auto_builds(),
    )
    if announce is not None:
        built_once = (INT8.label(), AOT_BF16.label())
        for trial in choice.trials:
            if trial.note not in ("", NOT_BUILT) and trial.label in built_once:
                announce(f"{trial.label}: not used ({trial.note})")
        if precision is None and auto_builds() and not bf16_supported():
            announce("bf16 paths: not used (this CPU has no AVX512-BF16 or AMX instructions)")
    if use_cache:
        store_choice(store, key, loaded, choice)
    return backends[choice.candidate], choice


def package_backend(
    loaded: LoadedModel, options: BackendOptions
) -> tuple[InferenceBackend, Choice]:
    """A .pt2 file runs as it was compiled: ``--backend auto`` only, no other knobs."""
    from semseg.inference.aot import AotBackend

    if options.backend != "auto" or options.precision or options.channels_last or options.compile:
        raise SemsegError(
            f"{loaded.path.name} is a compiled AOTInductor package: it runs as compiled "
            "(--backend auto; no --precision, --channels-last or --compile)"
        )
    backend = AotBackend(loaded.path, loaded.num_classes, loaded.input_size)
    candidate = Candidate("aot", backend.precision, backend.precision == "bf16", True)
    return backend, Choice(candidate, forced="the input is an AOTInductor package")


def int8_or_fallback(
    loaded: LoadedModel,
    options: BackendOptions,
    images: ImageSource,
    announce: Callable[[str], None] | None,
) -> tuple[InferenceBackend, Choice]:
    """``--precision int8``: the cached int8 model (quantized on ``images`` the first time):
    onnxruntime's, or torch's own (PT2E) with ``--backend torch``. Where there is none, it fails
    its parity guard or cannot run here, one line says why and the next path runs: onnxruntime
    int8 (after torch int8), onnxruntime fp32, else fp32 eager torch."""
    int8_paths = [TORCH_INT8, INT8] if options.backend == "torch" else [INT8]
    failures: list[tuple[Candidate, str]] = []
    for candidate in int8_paths:
        try:
            chosen = build_backend(
                loaded,
                candidate,
                options.threads,
                announce=announce,
                images=images,
                rebuild=options.recalibrate,
            )
        except SemsegError as error:
            failures.append((candidate, str(error)))
            continue
        forced = "--precision int8; cached, parity checked"
        if failures:
            forced = f"fallback from {int8_paths[0].label()}; cached, parity checked"
            if announce is not None:
                why = "; ".join(f"{c.label()}: {e}" for c, e in failures)
                announce(f"warning: {why}; running {candidate.label()} instead")
        return chosen, Choice(candidate, forced=forced)
    if len(failures) == 1:
        reason = failures[0][1]
    else:
        reason = "; ".join(f"{c.label()}: {e}" for c, e in failures)
    fallbacks = [Candidate("onnxruntime")] if loaded.path.is_file() else []
    for fallback in (*fallbacks, BASELINE):
        try:
            chosen = build_backend(loaded, fallback, options.threads, announce=announce)
        except SemsegError as error:
            reason += f"; {fallback.label()} failed too ({error})"
            continue
        if announce is not None:
            announce(f"warning: int8 not used: {reason}; running {fallback.label()} instead")
        return chosen, Choice(fallback, forced="fallback from --precision int8")
    raise SemsegError(f"no backend ran the model: {reason}")


def cached_choice(
    store: Path,
    key: str,
    loaded: LoadedModel,
    threads: int | None,
    announce: Callable[[str], None] | None,
    sha: str,
    images: ImageSource = None,
) -> tuple[InferenceBackend, Choice] | None:
    """The backend of a cached choice, or None (no entry, or a stale or broken one: an int8
    model or compiled package whose cache entry went stale or corrupt is built again)."""
    entry = read_choices(store).get(key)
    if not isinstance(entry, dict):
        return None
    try:
        candidate = Candidate(**entry["candidate"])
        chosen = build_backend(
            loaded, candidate, threads, announce=announce, sha256=sha, images=images
        )
    except (TypeError, KeyError, SemsegError):
        return None  # calibrate again
    return chosen, Choice(
        candidate,
        seconds=entry.get("seconds"),
        baseline_seconds=entry.get("baseline_seconds"),
        max_abs_prob_diff=entry.get("max_abs_prob_diff"),
        cached=True,
    )


def store_choice(store: Path, key: str, loaded: LoadedModel, choice: Choice) -> None:
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


def make_backend(
    loaded: LoadedModel, backend: str | InferenceBackend | None, device: str = "cpu"
) -> InferenceBackend:
    """What :class:`~semseg.inference.predictor.Predictor` runs: an instance as given, plain
    fp32 torch for None, or the one :func:`choose_backend` picks for the name."""
    if isinstance(backend, InferenceBackend):
        return backend
    if backend is None or backend == "torch":
        if loaded.model is None and loaded.path.suffix.lower() == ".pt2":
            return package_backend(loaded, BackendOptions())[0]
        if loaded.model is None:
            return onnx_backend_for(loaded)
        return TorchBackend(loaded.model, device=device)
    chosen, _ = choose_backend(loaded, BackendOptions(backend), device=device)
    return chosen

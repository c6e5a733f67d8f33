"""``--precision int8`` and ``--backend auto``'s int8 path: the checkpoint quantized once and
cached.

On first use :func:`cached_int8` exports the checkpoint to ONNX (the cached export of
:mod:`semseg.inference.autotune`), quantizes it with onnxruntime's static quantizer
(:func:`semseg.inference.quantize.quantize_onnx`) once per method of :data:`CALIBRATIONS` on up
to :data:`CALIBRATION_IMAGES` images of the data given, runs the parity guard
(:func:`semseg.inference.quantize.int8_parity_ok`: label agreement and probability error against
fp32 on those calibration images) on each, keeps the model the guard rates best
(:func:`parity_rank`) and stores it with the guard's verdict in the artefact
cache (:mod:`semseg.inference.artefacts`: keyed by checkpoint, input size, precision, library
versions and CPU flags; rebuilt when any changes or the file is corrupt). Later runs open the
cached file (about 0.7 s for FCN-8s/VGG16) and trust the recorded verdict.

A model that failed its guard stays cached with its verdict, so it is not quantized again on
every run; ``--recalibrate`` quantizes it again (on the data given then).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from semseg.errors import SemsegError
from semseg.inference.checkpoint import LoadedModel, checkpoint_sha256
from semseg.inference.runtimes import OnnxRuntimeBackend

CALIBRATIONS = ("percentile", "entropy")
"""The calibration methods tried for the cached int8 model; the one whose model keeps closest to
fp32 on the calibration images is kept, per model (BENCHMARKS.md, int8: Entropy was closest on
the trained VGG16, -0.22 MaxF against -0.58 for Percentile, while a tiny untrained model
passes the guard only with Percentile). MinMax was never the closest and is not tried. Part of
the cache key: a change rebuilds."""
CALIBRATION_IMAGES = 16

ImageSource = Callable[[], Sequence[np.ndarray]] | Sequence[np.ndarray] | None


@dataclass
class Int8Model:
    """The cached int8 model and its parity verdict (``ok``: it may stand in for fp32)."""

    path: Path
    ok: bool
    reason: str
    built: bool  # quantized in this call (False: found in the cache)


def images_of(source: ImageSource) -> list[np.ndarray]:
    images = source() if callable(source) else source
    return list(images or [])[:CALIBRATION_IMAGES]


def int8_key(loaded: LoadedModel, sha256: str):
    from semseg.inference.artefacts import key_for
    from semseg.inference.quantize import GUARD

    tried = ",".join(CALIBRATIONS)
    extra = f"calibration best of {tried}; guard {GUARD}"
    return key_for(loaded, sha256, "onnx", "int8", extra=extra)


def fits_model(path: Path, loaded: LoadedModel, sha256: str) -> str | None:
    """Why the int8 file does not belong to the model (None where it does)."""
    import json

    from semseg.inference.quantize import mismatch, read_metadata

    expected = {
        "num_classes": str(loaded.num_classes),
        "class_names": json.dumps(loaded.class_names),
        "input_size": json.dumps(list(loaded.input_size)),
        "checkpoint_sha256": sha256,
    }
    try:
        return mismatch(read_metadata(path), expected)
    except SemsegError as error:
        return str(error)


def cached_int8(
    loaded: LoadedModel,
    images: ImageSource = None,
    *,
    sha256: str | None = None,
    threads: int | None = None,
    rebuild: bool = False,
    announce: Callable[[str], None] | None = None,
) -> Int8Model:
    """The checkpoint's int8 model from the cache, quantized on ``images`` (a list, or a function
    that reads them: called only when a model has to be built) when absent, stale or corrupt.

    Raises :class:`SemsegError` where none can be built (no images, an ONNX file, the quantizer
    fails); a model that fails the parity guard is returned with ``ok`` False."""
    from semseg.inference import artefacts

    if loaded.model is None or not Path(loaded.path).is_file():
        raise SemsegError("int8 models are cached for checkpoint files only")
    sha = sha256 or checkpoint_sha256(loaded.path)
    key = int8_key(loaded, sha)
    found = artefacts.lookup(key)
    cached = None
    if found.ok:
        why = fits_model(found.path, loaded, sha)
        if why is None:
            manifest = found.manifest or {}
            verdict = bool(manifest.get("parity_ok")), str(manifest.get("parity", ""))
            cached = Int8Model(found.path, *verdict, False)
        else:
            found.reason = f"the cached file does not fit the model ({why})"
    if cached is not None and not rebuild:
        return cached
    calibration = images_of(images)
    if not calibration:
        if cached is not None:  # --recalibrate without images: the cached model stays
            return cached
        raise SemsegError(
            "int8 needs calibration images of your data the first time (none were given)"
        )
    say = announce or (lambda line: None)
    if cached is not None:
        found.reason = "--recalibrate"
    again = "" if found.reason == "none cached" else f" again ({found.reason})"
    return build_int8(loaded, key, calibration, sha, threads, say, again)


def parity_rank(parity) -> tuple[bool, float, float]:
    """Which of several int8 models is closest to fp32: a passing verdict first, then the label
    agreement, then the smaller largest probability change."""
    comparison = parity.comparison
    if comparison is None:
        return (parity.ok, -1.0, float("-inf"))
    return (parity.ok, comparison.label_agreement, -comparison.max_abs_prob_diff)


def quantize_closest(
    fp32: Path, calibration: list[np.ndarray], work: Path, threads: int | None = None
) -> tuple[str, dict[str, tuple[Path, Any]]]:
    """Quantize ``fp32`` into ``work`` once per method of :data:`CALIBRATIONS` and check each
    with the parity guard on ``calibration``: the method :func:`parity_rank` rates closest to
    fp32, and every method's file and verdict."""
    from semseg.inference import quantize

    pre = work / "pre.onnx"
    preprocessed = pre if quantize.preprocess(fp32, pre) else None
    trials = {}
    for method in CALIBRATIONS:
        built = work / f"model.{method}.int8.onnx"
        quantize.quantize_onnx(fp32, built, calibration, method, preprocessed=preprocessed)
        trials[method] = (
            built,
            quantize.int8_parity_ok(
                built,
                fp32,
                calibration,
                min_agreement=quantize.MIN_LABEL_AGREEMENT,
                max_moved_share=quantize.MAX_MOVED_SHARE,
                threads=threads,
            ),
        )
    return max(CALIBRATIONS, key=lambda name: parity_rank(trials[name][1])), trials


def build_int8(
    loaded: LoadedModel,
    key,
    calibration: list[np.ndarray],
    sha: str,
    threads: int | None,
    say: Callable[[str], None],
    again: str = "",
) -> Int8Model:
    from semseg.inference import artefacts
    from semseg.inference.autotune import cached_onnx

    started = time.perf_counter()
    fp32 = cached_onnx(loaded, announce=say, sha256=sha)
    say(
        f"quantizing {loaded.path.name} to int8 once{again}: {' and '.join(CALIBRATIONS)} "
        f"calibration on {len(calibration)} image(s) of the data given, the closer to fp32 "
        f"kept, {key.path()}"
    )
    with tempfile.TemporaryDirectory(dir=artefacts.work_dir(), prefix=".int8-") as work:
        method, trials = quantize_closest(fp32, calibration, Path(work), threads)
        built, parity = trials[method]
        path, _ = artefacts.store(
            key,
            built,
            {
                "checkpoint": str(loaded.path),
                "calibration": method,
                "calibration_images": len(calibration),
                "parity_ok": parity.ok,
                "parity": parity.reason,
                "comparison": asdict(parity.comparison) if parity.comparison else None,
                "trials": {name: trial.reason for name, (_, trial) in trials.items()},
                "seconds": round(time.perf_counter() - started, 2),
            },
        )
    return Int8Model(path, parity.ok, parity.reason, True)


def int8_backend(
    loaded: LoadedModel,
    images: ImageSource = None,
    *,
    sha256: str | None = None,
    threads: int | None = None,
    rebuild: bool = False,
    announce: Callable[[str], None] | None = None,
) -> OnnxRuntimeBackend:
    """onnxruntime on the cached int8 model; a :class:`SemsegError` saying why where there is
    none, it fails its parity guard, or this CPU lacks 8-bit dot-product instructions."""
    from semseg.inference.quantize import vnni_warning

    if warning := vnni_warning():
        raise SemsegError(warning.replace(": the int8 model runs, but", ", so int8"))
    model = cached_int8(
        loaded, images, sha256=sha256, threads=threads, rebuild=rebuild, announce=announce
    )
    if not model.ok:
        raise SemsegError(f"the int8 model fails its parity check ({model.reason})")
    return OnnxRuntimeBackend(model.path, threads, num_classes=loaded.num_classes)

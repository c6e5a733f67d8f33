"""``semseg predict`` without importing torch, where an earlier run has found the way.

A fresh process spends most of its start importing torch and torchvision (about 4 s of a 2-core
machine) before it reads its first image, even when the model then runs in onnxruntime: the
cached int8 model (``--precision int8``), the cached ONNX export that ``--backend auto`` chose,
or an ONNX file given directly. When such a run succeeds, ``semseg predict`` records a *route*
in the cache folder (``routes/KEY.json``): the ONNX file it ran and its size, inode and mtime, the
thread count, the model's description (classes, colours, input size) and the lines the choice
printed (warnings, the backend). A later ``semseg predict`` with the same request finds the
route before anything imports torch and runs the same file with onnxruntime, numpy and Pillow
alone.

The route also keeps onnxruntime's optimized graph of that file (``routes/KEY.onnx``, saved
through ``SessionOptions.optimized_model_filepath`` at ``ORT_ENABLE_ALL`` for this CPU and
onnxruntime version, both part of the key), which a session opens with the optimizations off:
the optimizing is what takes most of a large model's session start (VGG16 fp32: seconds).

The key (:func:`route_key`) is the model file's SHA-256, only where the hash memo
(:func:`semseg.inference.model_info.remembered_sha256`) holds it for the file as it is now; the
request (backend, precision, threads, the batch the choice was calibrated at); the library
versions and the CPU. A route is used only when its files are the ones recorded (size, inode
and mtime, as the hash memo checks a checkpoint: every cache write renames a new file into
place) and neither the backend choices nor the artefact folder changed since it was recorded (a
recalibration or a rebuilt int8 model); anything else, or any request the route cannot serve
(``--crf``, a MIL model's prior or smoothing, ``--recalibrate``, torch-only flags), takes the
full path, which records the route again.

Both paths feed the model the same input (:func:`semseg.inference.preprocess.model_input`); the
logits are upsampled by numpy's copy of torch's bilinear interpolation and written by the same
writers (:mod:`semseg.prediction`), so the outputs agree with the full path's to the last
rounding of a probability.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from semseg.errors import SemsegError
from semseg.inference import machine
from semseg.inference.model_info import (
    LoadedModel,
    checkpoint_sha256,
    remembered_sha256,
)
from semseg.inference.options import CALIBRATION_MAX_BATCH, BackendOptions
from semseg.io import first_line, write_json_atomic

ROUTE_VERSION = 1
LIBRARIES = ("semseg", "torch", "torchvision", "onnxruntime", "numpy", "pillow")


@dataclass(frozen=True)
class Request:
    """What a ``semseg predict`` asks for, as far as the backend choice depends on it."""

    model_file: Path
    backend: str
    precision: str | None
    threads: int | None
    batch_size: int  # the batch the choice is calibrated at: min(--batch-size, images, 4)


def request_for(
    model_file: Path,
    options: BackendOptions,
    batch_size: int,
    image_count: int,
    *,
    crf: object = None,
    mil_flags: bool = False,
) -> Request | None:
    """The request a route can serve, or None where only the full path can."""
    torch_only = options.channels_last or options.compile or options.precision == "bf16"
    if crf is not None or mil_flags or options.recalibrate or torch_only:
        return None
    if options.backend == "torch":  # fp32/bf16 eager, or torch's own int8
        return None
    if model_file.suffix.lower() not in (".ckpt", ".onnx"):
        return None
    batch = max(1, min(batch_size, image_count, CALIBRATION_MAX_BATCH))
    return Request(model_file, options.backend, options.precision, options.threads, batch)


def may_have_route(model_file: Path) -> bool:
    """Whether a route can exist: the model file's hash is remembered for the file as it is now
    (only a model that loaded and ran has been hashed)."""
    return remembered_sha256(model_file) is not None


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "none"
    return versions


def route_key(request: Request, sha: str) -> str:
    """The route's name: the model file's SHA-256, the request, the libraries, the CPU."""
    fields = {
        "version": ROUTE_VERSION,
        "model_sha256": sha,
        "backend": request.backend,
        "precision": request.precision,
        "threads": request.threads,
        "batch_size": request.batch_size,
        "libraries": library_versions(),
        "cpu": [machine.cpu_model(), sorted(machine.cpu_flags()), os.cpu_count(), platform.node()],
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:32]


def route_file(key: str) -> Path:
    return machine.cache_dir() / "routes" / f"{key}.json"


def stat_signature(path: Path) -> list[int] | None:
    """What changes when a cache file or folder is rewritten (all cache writes rename a temp
    file into place, which also changes the folder's mtime)."""
    try:
        info = path.stat()
    except OSError:
        return None
    return [info.st_size, info.st_ino, info.st_mtime_ns]


def cache_signatures() -> dict[str, list[int] | None]:
    """The cache entries a route was derived from: the backend choices and the artefacts."""
    root = machine.cache_dir()
    return {
        "backend-choices": stat_signature(root / "backend-choices.json"),
        "artefacts": stat_signature(root / "artefacts"),
    }


@dataclass(frozen=True)
class Route:
    onnx: Path  # what the session opens: the optimized graph, else the file the full path ran
    optimized: bool
    threads: int
    lines: list[str]  # what the full path printed about its choice: warnings, then "backend: ..."
    loaded: LoadedModel


def record_route(
    request: Request | None,
    engine: Any,
    loaded: LoadedModel,
    lines: Sequence[str],
    say: Callable[[str], None] | None = None,
) -> None:
    """After a full-path run: remember the route where the model ran in onnxruntime (a plain,
    unchanged model), forget it where it did not. The outputs are written by then, so a cache
    that cannot be written (a full disk, no permission) costs only the next run's fast start:
    ``say`` gets a warning, and the command still succeeds; it also hears when onnxruntime's
    optimized graph is saved (seconds, once, for a large model)."""
    if request is None or loaded.lse_r is not None:
        return
    try:
        write_route(request, engine, loaded, lines, say or (lambda _line: None))
    except (OSError, SemsegError) as error:
        if say is not None:
            say(f"warning: the route of this run was not recorded: {first_line(error)}")


def write_route(
    request: Request,
    engine: Any,
    loaded: LoadedModel,
    lines: Sequence[str],
    say: Callable[[str], None],
) -> None:
    path = route_file(route_key(request, checkpoint_sha256(request.model_file)))
    onnx = getattr(engine, "path", None)
    optimized = path.with_suffix(".onnx")
    if getattr(engine, "name", "") != "onnxruntime" or onnx is None:
        path.unlink(missing_ok=True)
        optimized.unlink(missing_ok=True)
        return
    source = Path(onnx).resolve()
    say(f"recording the route of this run for a fast start (onnxruntime's graph: {optimized})")
    opened = save_optimized_graph(source, optimized)
    colours = None if loaded.class_colours is None else np.asarray(loaded.class_colours).tolist()
    write_json_atomic(
        path,
        {
            "onnx": str(opened),
            "optimized": opened == optimized,
            "source": str(source),
            "files": {str(p): stat_signature(p) for p in (source, opened)},
            "threads": int(engine.threads),
            "lines": [line for line in lines if line.startswith(("warning:", "backend:"))],
            "cache": cache_signatures(),
            "model": {
                "model_name": loaded.model_name,
                "num_classes": loaded.num_classes,
                "input_size": list(loaded.input_size),
                "positive_class": loaded.positive_class,
                "class_names": list(loaded.class_names),
                "class_colours": colours,
            },
        },
    )


def find_route(request: Request | None) -> Route | None:
    """The recorded route of this request, if it is still valid; else None (full path)."""
    # Only a remembered hash: hashing a 1.6 GB checkpoint would cost more than the route saves.
    sha = None if request is None else remembered_sha256(request.model_file)
    if request is None or sha is None:
        return None
    try:
        entry = json.loads(route_file(route_key(request, sha)).read_text())
        if entry["cache"] != cache_signatures():
            return None
        files = entry["files"]
        if not files or any(stat_signature(Path(p)) != files[p] for p in files):
            return None
        return Route(
            onnx=Path(entry["onnx"]),
            optimized=bool(entry["optimized"]),
            threads=int(entry["threads"]),
            lines=[str(line) for line in entry["lines"]],
            loaded=described_model(request.model_file, entry["model"]),
        )
    except (OSError, ValueError, KeyError, TypeError, SemsegError):
        return None


def described_model(path: Path, model: dict[str, Any]) -> LoadedModel:
    """A :class:`LoadedModel` (no torch model) from a route's description, checked as an
    export's metadata is."""
    from semseg.inference.onnx_metadata import loaded_from_metadata

    meta = {
        "model_name": model["model_name"],
        "num_classes": str(model["num_classes"]),
        "input_size": json.dumps(model["input_size"]),
        "positive_class": str(model["positive_class"]),
        "class_names": json.dumps(model["class_names"]),
    }
    if model.get("class_colours") is not None:
        meta["class_colours"] = json.dumps(model["class_colours"])
    return loaded_from_metadata(path, meta, "a recorded route")


def save_optimized_graph(source: Path, target: Path) -> Path:
    """onnxruntime's ``ORT_ENABLE_ALL`` graph of ``source`` saved at ``target`` (atomically);
    ``source`` itself where onnxruntime cannot save it (a model over protobuf's 2 GB)."""
    from semseg.inference.ort_session import save_optimized
    from semseg.io import create_temp_beside

    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = create_temp_beside(target)
    os.close(handle)
    try:
        save_optimized(source, temp)
        os.replace(temp, target)
        return target
    except (SemsegError, OSError):
        temp.unlink(missing_ok=True)
        target.unlink(missing_ok=True)
        return source


class RouteRunner:
    """The route's ONNX file in an onnxruntime session: images in, full-size probabilities out."""

    def __init__(self, route: Route) -> None:
        from semseg.inference.ort_session import open_session

        self.session = open_session(route.onnx, route.threads, optimized=route.optimized)
        self.input_name = self.session.get_inputs()[0].name
        self.loaded = route.loaded

    def probabilities(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        from semseg.inference.preprocess import model_input, softmax, upsample_bilinear

        height, width = self.loaded.input_size
        batch = np.stack([model_input(image, height, width) for image in images])
        logits = self.session.run(None, {self.input_name: batch})[0]
        expected = (len(images), self.loaded.num_classes, height, width)
        if tuple(logits.shape) != expected:
            raise SemsegError(
                f"{self.loaded.path}: the recorded model answered {tuple(logits.shape)}, "
                f"expected {expected}"
            )
        return [
            softmax(upsample_bilinear(logits[index].astype(np.float32), *image.shape[:2]))
            for index, image in enumerate(images)
        ]


def predict_on_route(
    route: Route,
    paths: Sequence[Path],
    out_dir: Path,
    batch_size: int,
    on_progress: Callable[[int], None] | None = None,
) -> int:
    """:func:`semseg.prediction.predict_files` on the route: the same outputs, no torch."""
    from semseg.prediction import write_predictions

    runner = RouteRunner(route)
    return write_predictions(
        route.loaded, paths, out_dir, max(1, batch_size), runner.probabilities, on_progress
    )

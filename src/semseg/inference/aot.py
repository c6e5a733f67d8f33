"""Compiled once: AOTInductor packages (``.pt2``) of a checkpoint, loaded by a new process
without compiling.

:func:`export_pt2` traces the model with ``torch.export`` at its input size (batch dynamic, 1 to
:data:`MAX_BATCH`), compiles it ahead of time with inductor (weight freezing: constants folded,
oneDNN weights pre-packed) and writes a package (``torch._inductor.aoti_compile_and_package``)
whose metadata describe the model (classes, input size, precision, checkpoint SHA-256). The
bf16 package runs the network under bf16 autocast on bf16 weights in channels-last layout (the
fastest path measured on FCN-8s/VGG16, BENCHMARKS.md "Speed"); input and output stay float32.
Each package is verified against fp32 eager before it is reported.

:class:`AotBackend` runs a package (``torch._inductor.aoti_load_package``: opens in well under a
second, against 8-17 s for ``torch.compile`` of FCN-8s in every new process). It takes images at
the compiled input size only (what :class:`~semseg.inference.predictor.Predictor` feeds it).

:func:`cached_pt2` keeps one package per checkpoint, input size, precision, library versions and
CPU in the artefact cache (:mod:`semseg.inference.artefacts`). Compiling needs a C++ compiler:
:func:`aot_unsupported` says why it cannot work here, and the backend chooser skips the path.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from semseg.errors import SemsegError
from semseg.inference.checkpoint import LoadedModel, checkpoint_sha256
from semseg.inference.machine import bf16_supported
from semseg.inference.runtimes import InferenceBackend
from semseg.io import first_line

MAX_BATCH = 64
PT2_PRECISIONS = ("bf16", "32")
VERIFY_TOLERANCE = {"32": 1e-4, "bf16": 0.02}
"""Largest max |p_package - p_fp32_eager| (softmax probabilities) :func:`export_pt2` accepts."""


def aot_unsupported(precision: str = "bf16") -> str:
    """Why an AOTInductor package cannot be built or run here ("" where it can)."""
    if sys.platform == "win32":
        return "AOTInductor does not support Windows"
    import torch._inductor as inductor

    if not hasattr(inductor, "aoti_compile_and_package"):  # pragma: no cover - torch >= 2.6
        return f"this torch ({torch.__version__}) has no AOTInductor packaging"
    compilers = (os.environ.get("CXX", ""), "g++", "c++", "clang++")
    if not any(shutil.which(name) for name in compilers if name):
        return "AOTInductor needs a C++ compiler (no g++, c++ or clang++ on PATH)"
    if precision == "bf16" and not bf16_supported():
        return "bf16 needs a CPU with AVX512-BF16 or AMX (not found in /proc/cpuinfo)"
    return ""


class CompiledForward(nn.Module):
    """What the package holds: the export's forward (normalisation, padding, crop), in bf16
    autocast on bf16 channels-last weights for ``precision="bf16"``; float32 in and out."""

    def __init__(self, model: nn.Module, precision: str) -> None:
        super().__init__()
        from semseg.inference.onnx_export import ExportWrapper

        model = copy.deepcopy(model).eval()
        if precision == "bf16":
            model = model.to(torch.bfloat16).to(memory_format=torch.channels_last)
        self.inner = ExportWrapper(model)
        self.precision = precision

    def forward(self, image: Tensor) -> Tensor:
        if self.precision != "bf16":
            return self.inner(image)
        x = image.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = self.inner(x)
        return out.float()


def package_metadata(loaded: LoadedModel, precision: str, sha256: str) -> dict[str, str]:
    from semseg.inference.onnx_export import export_metadata

    meta = export_metadata(loaded, 0, sha256)
    meta.pop("opset", None)
    meta.update(
        precision=precision,
        max_batch=str(MAX_BATCH),
        input="image: float32 (N, 3, H, W) RGB in [0, 1]; N dynamic, H x W the input size",
        compiled_with=f"torch {torch.__version__} AOTInductor (freezing)",
    )
    return meta


def export_pt2(
    loaded: LoadedModel,
    out: str | Path,
    precision: str = "bf16",
    announce: Callable[[str], None] | None = None,
) -> float:
    """Compile ``loaded`` into an AOTInductor package at ``out`` (atomically) and verify it
    against fp32 eager; returns the largest probability difference."""
    import torch._inductor
    import torch._inductor.config as inductor_config

    if precision not in PT2_PRECISIONS:
        raise SemsegError(f"--precision must be one of {', '.join(PT2_PRECISIONS)} for pt2")
    if loaded.model is None:
        raise SemsegError(f"{loaded.path} has no torch model to compile")
    if why := aot_unsupported(precision):
        raise SemsegError(why)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sha = checkpoint_sha256(loaded.path) if Path(loaded.path).is_file() else ""
    height, width = loaded.input_size
    module = CompiledForward(loaded.model, precision).eval()
    example = torch.rand(2, 3, height, width, generator=torch.Generator().manual_seed(0))
    metadata = package_metadata(loaded, precision, sha)
    if announce is not None:
        announce(f"compiling {loaded.path.name} ({precision}) with AOTInductor once: {out}")
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as work:
        temp = Path(work) / "model.pt2"
        try:
            batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
            with torch.inference_mode():
                program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
            with inductor_config.patch(freezing=True):
                torch._inductor.aoti_compile_and_package(
                    program,
                    package_path=str(temp),
                    inductor_configs={"aot_inductor.metadata": metadata},
                )
        except SemsegError:
            raise
        except Exception as error:
            raise SemsegError(
                f"AOTInductor cannot compile {loaded.model_name}: {first_line(error)}"
            ) from error
        worst = verify_pt2(temp, loaded, precision)
        os.replace(temp, out)
    return worst


def verify_pt2(path: Path, loaded: LoadedModel, precision: str) -> float:
    """The package against fp32 eager on seeded inputs at batch 1 and 3."""
    backend = AotBackend(path, loaded.num_classes, loaded.input_size)
    height, width = loaded.input_size
    generator = torch.Generator().manual_seed(1)
    worst = 0.0
    for count in (1, 3):
        image = torch.rand(count, 3, height, width, generator=generator)
        with torch.inference_mode():
            expected = loaded.model.eval()(image).float().softmax(dim=1)
        got = backend.logits(image).softmax(dim=1)
        worst = max(worst, float((got - expected).abs().max()))
    tolerance = VERIFY_TOLERANCE[precision]
    if not worst <= tolerance:
        raise SemsegError(
            f"the compiled package disagrees with torch: max |dp| {worst:.2e} > {tolerance:g}"
        )
    return worst


class AotBackend(InferenceBackend):
    """An AOTInductor package: float32 ``(N, 3, H, W)`` at its input size -> logits."""

    name = "aotinductor"

    def __init__(
        self,
        path: str | Path,
        num_classes: int | None = None,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        import torch._inductor

        self.path = Path(path)
        if not self.path.is_file():
            raise SemsegError(f"compiled package not found: {self.path}")
        try:
            with warnings_silenced():
                self.runner = torch._inductor.aoti_load_package(str(self.path))
            self.metadata = dict(self.runner.get_metadata())
        except Exception as error:
            raise SemsegError(
                f"cannot load the compiled package {self.path.name}: {first_line(error)}"
            ) from error
        self.precision = self.metadata.get("precision", "32")
        try:
            self.input_size = tuple(json.loads(self.metadata["input_size"]))
            self.num_classes = int(self.metadata["num_classes"])
            self.max_batch = int(self.metadata.get("max_batch", MAX_BATCH))
        except (KeyError, ValueError, TypeError) as error:
            raise SemsegError(f"{self.path.name} is not a semseg package: {error}") from error
        if num_classes is not None and num_classes != self.num_classes:
            raise SemsegError(
                f"{self.path.name} gives {self.num_classes} classes; the model has {num_classes}"
            )
        if input_size is not None and tuple(input_size) != self.input_size:
            raise SemsegError(
                f"{self.path.name} was compiled for {self.input_size[0]}x{self.input_size[1]} "
                f"images; the model takes {input_size[0]}x{input_size[1]}"
            )

    def describe(self) -> str:
        kind = "bf16 channels-last" if self.precision == "bf16" else "fp32"
        return f"torch {kind} compiled (AOTInductor package)"

    def logits(self, batch: Tensor) -> Tensor:
        x = batch.detach().to("cpu", torch.float32).contiguous()
        if tuple(x.shape[2:]) != self.input_size:
            raise SemsegError(
                f"{self.path.name} takes {self.input_size[0]}x{self.input_size[1]} images, "
                f"got {x.shape[2]}x{x.shape[3]}"
            )
        outputs = []
        with torch.inference_mode():
            for start in range(0, x.shape[0], self.max_batch):
                outputs.append(self.runner(x[start : start + self.max_batch]))
        out = torch.cat(outputs) if len(outputs) > 1 else outputs[0]
        return out.float().contiguous()


def load_pt2_model(path: str | Path) -> tuple[LoadedModel, AotBackend]:
    """A package written by ``semseg export --format pt2``: its description (``model`` None)
    and the backend that runs it."""
    from semseg.inference.onnx_export import loaded_from_metadata

    backend = AotBackend(path)
    loaded = loaded_from_metadata(path, backend.metadata, "a semseg AOTInductor package")
    return loaded, backend


@contextlib.contextmanager
def warnings_silenced():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def cached_pt2(
    loaded: LoadedModel,
    precision: str = "bf16",
    sha256: str | None = None,
    announce: Callable[[str], None] | None = None,
) -> AotBackend:
    """The checkpoint's package from the artefact cache, compiled (and verified) when absent,
    stale (another torch, CPU, ...) or corrupt; a package that will not load is rebuilt once."""
    from semseg.inference import artefacts

    if why := aot_unsupported(precision):
        raise SemsegError(why)
    if loaded.model is None or not Path(loaded.path).is_file():
        raise SemsegError("a compiled package is cached for checkpoint files only")
    sha = sha256 or checkpoint_sha256(loaded.path)
    key = artefacts.key_for(loaded, sha, "pt2", precision, extra=f"batch 1..{MAX_BATCH}")
    found = artefacts.lookup(key)
    if found.ok:
        try:
            return AotBackend(found.path, loaded.num_classes, loaded.input_size)
        except SemsegError as error:
            found.reason = f"the cached package does not load ({error})"
    say = announce or (lambda line: None)
    again = "" if found.reason == "none cached" else f" again ({found.reason})"
    say(f"compiling {loaded.path.name} ({precision}) with AOTInductor once{again}: {key.path()}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=artefacts.work_dir(), prefix=".pt2-") as work:
        built = Path(work) / "model.pt2"
        worst = export_pt2(loaded, built, precision)
        path, _ = artefacts.store(
            key,
            built,
            {
                "checkpoint": str(loaded.path),
                "max_abs_prob_diff": worst,
                "seconds": round(time.perf_counter() - started, 2),
            },
        )
    return AotBackend(path, loaded.num_classes, loaded.input_size)

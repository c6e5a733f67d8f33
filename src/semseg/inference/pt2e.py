"""torch int8: PyTorch's own post-training static quantization (PT2E), quantized once and cached.

The flow is torchao's PT2E for x86 CPUs (``torchao.quantization.pt2e``): ``torch.export``
captures the model at batch 1 and its input size (normalisation, padding and crop included,
as :class:`~semseg.inference.onnx_export.ExportWrapper` exports it), ``X86InductorQuantizer``
annotates it (unsigned 8-bit activations with one scale per tensor, signed 8-bit weights with one
scale per output channel, conv + ReLU fused), ``prepare_pt2e`` inserts observers, the calibration
images of the user's data are run through it, and ``convert_pt2e`` turns the observed ranges into
quantize / dequantize pairs. That converted program holds int8 weights as plain tensors; it is
saved with ``torch.export.save`` in the artefact cache (:mod:`semseg.inference.artefacts`, keyed
by checkpoint, input size, library versions including torchao, and CPU flags).

Each process then lowers the program to oneDNN's int8 kernels
(``lower_pt2e_quantized_to_x86``: inductor's freezing passes fuse each dequantize - conv -
quantize chain into one ``onednn.qconv_pointwise`` call on pre-packed weights). Lowering takes
seconds (the pre-packed weights are opaque oneDNN tensors that cannot be saved), so this path
pays off on runs of many images; the onnxruntime int8 model (:mod:`semseg.inference.int8_cache`)
opens faster. AOTInductor cannot package the int8 program with these kernels in this torch
release (it compiles dequantize + fp32 convolution instead, slower than fp32 eager), so no
compiled package is offered.

The lowered module runs one image at a time (it is specialised to batch 1; int8 convolutions at
batch 1 are where the time per image is lowest). Before it is cached, the quantized program
passes the same parity guard as the onnxruntime int8 model: on the calibration images its
argmax labels agree with fp32 eager's on at least
:data:`~semseg.inference.quantize.MIN_LABEL_AGREEMENT` of the pixels and at most
:data:`~semseg.inference.quantize.MAX_MOVED_SHARE` of the pixels have a softmax probability
moved by more than :data:`~semseg.inference.quantize.MAX_PROB_ERROR`. A program that fails stays
cached with its verdict and is not used.

torchao is an optional dependency (the ``int8`` extra); :func:`pt2e_unsupported`
says why the path cannot run here.
"""

from __future__ import annotations

import copy
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from semseg.errors import SemsegError
from semseg.inference.checkpoint import LoadedModel, checkpoint_sha256
from semseg.inference.runtimes import InferenceBackend
from semseg.io import first_line

INSTALL_HINT = 'pip install -e ".[int8]"'


def torchao_version() -> str | None:
    try:
        return metadata.version("torchao")
    except metadata.PackageNotFoundError:
        return None


def pt2e_unsupported(flags: frozenset[str] | None = None) -> str:
    """Why torch int8 cannot run here ("" where it can)."""
    from semseg.inference.quantize import vnni_supported

    if torchao_version() is None:
        return f"torch int8 needs torchao ({INSTALL_HINT})"
    if not vnni_supported(flags):
        return "torch int8 needs a CPU with 8-bit dot products (AVX512-VNNI, AVX-VNNI or AMX)"
    return ""


def example_input(loaded: LoadedModel, image: np.ndarray | None = None) -> Tensor:
    from semseg.data.transforms import image_to_tensor

    height, width = loaded.input_size
    if image is None:
        return torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0))
    return image_to_tensor(image, height, width).unsqueeze(0)


ACTIVATIONS = ("ReLU", "ReLU6", "Hardtanh", "Hardswish", "SiLU", "GELU")
"""Activation modules a model may call more than once (torchvision's ResNet blocks reuse one
ReLU); each of their calls produces one graph node."""


def split_reused_activations(graph: torch.fx.Graph) -> int:
    """Give each call of a reused activation module its own module path in the node metadata.

    The quantizer groups nodes into patterns (conv + ReLU) by the module that produced them; two
    calls of one ReLU module form one group with two outputs, which it refuses ("Input
    partition has more than one output node"). Returns how many nodes were renamed."""
    renamed = 0
    for node in graph.nodes:
        stack = node.meta.get("nn_module_stack") if node.op == "call_function" else None
        if not stack:
            continue
        key, (path, cls) = list(stack.items())[-1]
        name = cls if isinstance(cls, str) else getattr(cls, "__qualname__", "")
        if name.rsplit(".", 1)[-1] in ACTIVATIONS:
            stack[key] = (f"{path}@{node.name}", cls)
            renamed += 1
    return renamed


def quantize_program(
    loaded: LoadedModel, images: Sequence[np.ndarray]
) -> torch.export.ExportedProgram:
    """The PT2E-quantized program of ``loaded``, calibrated on ``images`` (model input size,
    batch 1)."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    from semseg.inference.onnx_export import ExportWrapper

    if loaded.model is None:
        raise SemsegError(f"{loaded.path} has no torch model to quantize")
    if not images:
        raise SemsegError("torch int8 needs calibration images of the data (none given)")
    example = (example_input(loaded, images[0]),)
    model = ExportWrapper(copy.deepcopy(loaded.model)).eval()
    try:
        captured = torch.export.export(model, example).module()
        split_reused_activations(captured.graph)
        quantizer = X86InductorQuantizer()
        quantizer.set_global(get_default_x86_inductor_quantization_config())
        prepared = prepare_pt2e(captured, quantizer)
        with torch.no_grad():
            for image in images:
                prepared(example_input(loaded, image))
        converted = convert_pt2e(prepared)
        return torch.export.export(converted, example)
    except Exception as error:  # the quantizer's own errors name no flag; say which model
        raise SemsegError(
            f"PT2E cannot quantize {loaded.model_name}: {type(error).__name__}: {first_line(error)}"
        ) from error


def lower(program: torch.export.ExportedProgram, input_size: tuple[int, int]) -> torch.nn.Module:
    """``program`` on oneDNN int8 kernels (batch 1 at ``input_size``)."""
    # Importing the quantizer module registers the inductor passes that fuse dequantize - conv -
    # quantize into oneDNN calls; without them the lowering silently keeps fp32 convolutions.
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer  # noqa: F401
    from torchao.quantization.pt2e.lowering import lower_pt2e_quantized_to_x86

    height, width = input_size
    example = (torch.zeros(1, 3, height, width),)
    try:
        with torch.no_grad():
            lowered = lower_pt2e_quantized_to_x86(program.module(), example)
    except Exception as error:
        raise SemsegError(
            f"cannot lower the int8 program to oneDNN: {type(error).__name__}: {first_line(error)}"
        ) from error
    if not onednn_calls(lowered):
        raise SemsegError("the int8 program did not lower to oneDNN int8 kernels")
    return lowered


def onednn_calls(module: torch.nn.Module) -> int:
    """How many oneDNN int8 operators (convolutions, linears) a lowered module calls."""
    graph = getattr(module, "graph", None)
    nodes = list(graph.nodes) if graph is not None else []
    return sum(n.op == "call_function" and str(n.target).startswith("onednn.q") for n in nodes)


class TorchInt8Backend(InferenceBackend):
    """A lowered PT2E int8 module: float32 ``(N, 3, H, W)`` at its input size -> logits, one
    image at a time."""

    name = "torch"
    precision = "int8"

    def __init__(self, module: torch.nn.Module, input_size: tuple[int, int]) -> None:
        self.module = module
        self.input_size = tuple(input_size)

    def describe(self) -> str:
        return "torch int8 (PT2E, oneDNN)"

    def logits(self, batch: Tensor) -> Tensor:
        x = batch.detach().to("cpu", torch.float32).contiguous()
        if tuple(x.shape[2:]) != self.input_size:
            raise SemsegError(
                f"the torch int8 model takes {self.input_size[0]}x{self.input_size[1]} images, "
                f"got {x.shape[2]}x{x.shape[3]}"
            )
        with torch.no_grad():
            outputs = [self.module(x[i : i + 1]) for i in range(x.shape[0])]
        return torch.cat(outputs).float().contiguous()


@dataclass
class Parity:
    """How the int8 model compares with fp32 eager on the calibration images."""

    ok: bool
    reason: str
    label_agreement: float
    max_abs_prob_diff: float
    moved_share: float = 0.0


def parity(backend: InferenceBackend, loaded: LoadedModel, images: Sequence[np.ndarray]) -> Parity:
    """The parity guard of :mod:`semseg.inference.quantize` at the model's input size."""
    from semseg.inference.quantize import MAX_PROB_ERROR, ParityCounts

    counts = ParityCounts()
    model = loaded.model.eval()
    for image in images:
        x = example_input(loaded, image)
        with torch.no_grad():
            expected = model(x).float().softmax(dim=1)
        got = backend.logits(x).softmax(dim=1)
        counts.add(got.detach().numpy(), expected.numpy(), class_axis=1)
    failed = counts.failure()
    summary = (
        f"labels agree {100 * counts.agreement:.3f}%, max |dp| {counts.worst:.3g}, "
        f"> {MAX_PROB_ERROR:g} on {100 * counts.moved_share:.3f}% of the pixels"
    )
    verdict = failed or summary
    return Parity(not failed, verdict, counts.agreement, counts.worst, counts.moved_share)


def program_key(loaded: LoadedModel, sha256: str):
    from semseg.inference import artefacts
    from semseg.inference.quantize import GUARD

    extra = f"torchao {torchao_version()}; guard {GUARD}"
    return artefacts.key_for(loaded, sha256, "pt2e", "int8", extra=extra)


def load_lowered(path: Path, input_size: tuple[int, int]) -> TorchInt8Backend:
    import torchao.quantization.pt2e.quantize_pt2e  # noqa: F401  registers the q/dq operators

    try:
        program = torch.export.load(str(path))
    except Exception as error:
        raise SemsegError(
            f"cannot load the int8 program {path.name}: {first_line(error)}"
        ) from error
    return TorchInt8Backend(lower(program, input_size), input_size)


def build_program(
    loaded: LoadedModel,
    key,
    images: Sequence[np.ndarray],
    say: Callable[[str], None],
    again: str = "",
) -> tuple[TorchInt8Backend, Parity]:
    """Quantize, lower, check parity and cache the program with its verdict."""
    from semseg.inference import artefacts

    started = time.perf_counter()
    say(
        f"quantizing {loaded.path.name} to torch int8 (PT2E) once{again} on {len(images)} "
        f"image(s) of the data given: {key.path()}"
    )
    program = quantize_program(loaded, images)
    backend = TorchInt8Backend(lower(program, loaded.input_size), loaded.input_size)
    verdict = parity(backend, loaded, images)
    with tempfile.TemporaryDirectory(dir=artefacts.work_dir(), prefix=".pt2e-") as work:
        built = Path(work) / "program.pt2"
        torch.export.save(program, str(built))
        artefacts.store(
            key,
            built,
            {
                "checkpoint": str(loaded.path),
                "calibration_images": len(images),
                "parity_ok": verdict.ok,
                "parity": verdict.reason,
                "label_agreement": verdict.label_agreement,
                "max_abs_prob_diff": verdict.max_abs_prob_diff,
                "moved_share": verdict.moved_share,
                "seconds": round(time.perf_counter() - started, 2),
            },
        )
    return backend, verdict


def torch_int8_backend(
    loaded: LoadedModel,
    images: Callable[[], Sequence[np.ndarray]] | Sequence[np.ndarray] | None = None,
    *,
    sha256: str | None = None,
    rebuild: bool = False,
    announce: Callable[[str], None] | None = None,
) -> TorchInt8Backend:
    """The cached torch int8 program of ``loaded``, lowered; quantized on ``images`` (up to
    :data:`~semseg.inference.int8_cache.CALIBRATION_IMAGES`) when none is cached, it is stale
    or corrupt, or ``rebuild``. A :class:`SemsegError` says why where it cannot run or fails
    its parity guard."""
    from semseg.inference import artefacts
    from semseg.inference.int8_cache import images_of

    if why := pt2e_unsupported():
        raise SemsegError(why)
    if loaded.model is None or not Path(loaded.path).is_file():
        raise SemsegError("torch int8 is cached for checkpoint files only")
    say = announce or (lambda line: None)
    key = program_key(loaded, sha256 or checkpoint_sha256(loaded.path))
    found = artefacts.lookup(key)
    if found.ok and not rebuild:
        manifest: dict[str, Any] = found.manifest or {}
        if not manifest.get("parity_ok"):
            raise SemsegError(
                f"the torch int8 model fails its parity check ({manifest.get('parity')})"
            )
        say("torch int8: lowering the cached program to oneDNN kernels (once per process)")
        try:
            return load_lowered(found.path, loaded.input_size)
        except SemsegError as error:
            found.reason = f"the cached program does not load ({error})"
    elif found.ok:
        found.reason = "--recalibrate"
    calibration = images_of(images)
    if not calibration:
        raise SemsegError(
            f"no torch int8 model cached ({found.reason}) and no images to calibrate on"
        )
    again = "" if found.reason == "none cached" else f" again ({found.reason})"
    backend, verdict = build_program(loaded, key, calibration, say, again)
    if not verdict.ok:
        raise SemsegError(f"the torch int8 model fails its parity check ({verdict.reason})")
    return backend

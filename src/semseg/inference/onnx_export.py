"""``semseg export --format onnx``: a checkpoint as an ONNX model, verified before it is reported.

The exported graph takes ``image``: float32 ``(N, 3, H, W)`` RGB in [0, 1] and returns
``logits``: float32 ``(N, C, H, W)``, with N, H and W dynamic (any batch, any image size: the
ImageNet normalisation, the padding to the model's size multiple and the final crop are part of
the graph). The model's description travels in the file's ``metadata_props``: ``model_name``,
``num_classes``, ``class_names`` (JSON), ``class_colours`` (JSON ``[[r, g, b], ...]``, one per
class: the palette of multi-class pictures), ``input_size`` (JSON ``[height, width]``: the size the
model was trained at and that :class:`semseg.inference.predictor.Predictor` resizes to),
``positive_class``, ``opset``, ``semseg_version`` and ``checkpoint_sha256``.

Export uses torch's TorchScript-based exporter (``dynamo=False``): the dynamo exporter needs
``onnxscript`` (not a dependency) and would specialise the padding branch on the export size.
Before a file is reported, :func:`verify_onnx` checks it with ``onnx.checker`` and runs it in
ONNX Runtime against torch on two small inputs of sizes other than the export size (max absolute
probability difference below :data:`VERIFY_TOLERANCE`).
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from semseg.errors import SemsegError
from semseg.inference.checkpoint import (
    LoadedModel,
    checkpoint_sha256,
)
from semseg.inference.onnx_metadata import (  # noqa: F401 (re-exported: their old home)
    load_onnx_model,
    loaded_from_metadata,
    read_onnx_metadata,
)
from semseg.inference.runtimes import OnnxRuntimeBackend
from semseg.io import first_line
from semseg.models.base import SegmentationModel

FORMATS = ("onnx", "onnx-optimized", "pt2")  # semseg.inference.onnx_optimized, .aot
DEFAULT_OPSET = 17
MIN_OPSET = 11  # dynamic Pad / Slice inputs
VERIFY_TOLERANCE = 1e-4
"""Largest max |p_onnxruntime - p_torch| (softmax probabilities) accepted by :func:`verify_onnx`."""
VERIFY_SHAPES = ((2, 3, 70, 100), (1, 3, 64, 96))
"""Inputs of the verification run: two batch sizes, one size off the model's size multiple."""


@dataclass
class OnnxVerification:
    """What :func:`verify_onnx` checked and found."""

    checker: str
    max_abs_prob_diff: float
    shapes: tuple[tuple[int, int, int, int], ...]

    def summary(self) -> str:
        sizes = " and ".join("x".join(str(v) for v in shape) for shape in self.shapes)
        return (
            f"onnx.checker {self.checker}; onnxruntime vs torch max |dp| "
            f"{self.max_abs_prob_diff:.1e} at {sizes}"
        )


class ExportWrapper(nn.Module):
    """The model's forward pass with the size handling written for a dynamic-shape export.

    :meth:`SegmentationModel.forward` pads only when the input is not a multiple of the model's
    size multiple; traced at such a size, that branch would vanish from the graph. Here the pad
    (possibly of zero) is always part of the graph, so the exported model takes any H and W.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> Tensor:
        model = self.model
        if not isinstance(model, SegmentationModel):
            return model(image)
        height, width = image.shape[-2], image.shape[-1]
        multiple = model.size_multiple
        x = (image - model.mean) / model.std
        x = F.pad(
            x,
            (
                0,
                (multiple - width % multiple) % multiple,
                0,
                (multiple - height % multiple) % multiple,
            ),
        )
        return model.forward_normalized(x)[:, :, :height, :width]


def check_format(name: str) -> str:
    """``--format``: one of :data:`FORMATS`."""
    if name not in FORMATS:
        raise SemsegError(f"--format must be one of {', '.join(FORMATS)}, got {name!r}")
    return name


def check_opset(opset: int) -> int:
    from torch.onnx._constants import ONNX_MAX_OPSET

    if not MIN_OPSET <= opset <= ONNX_MAX_OPSET:
        raise SemsegError(
            f"--opset must be between {MIN_OPSET} and {ONNX_MAX_OPSET} for this torch, got {opset}"
        )
    return opset


def export_metadata(loaded: LoadedModel, opset: int, checkpoint_sha256: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        semseg_version = version("semseg")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        semseg_version = "unknown"
    return {
        "model_name": loaded.model_name,
        "num_classes": str(loaded.num_classes),
        "class_names": json.dumps(loaded.class_names),
        "class_colours": json.dumps(np.asarray(loaded.class_colours).tolist()),
        "input_size": json.dumps(list(loaded.input_size)),
        "positive_class": str(loaded.positive_class),
        "opset": str(opset),
        "semseg_version": semseg_version,
        "checkpoint_sha256": checkpoint_sha256,
        "input": "image: float32 (N, 3, H, W) RGB in [0, 1]; N, H, W dynamic",
        "output": "logits: float32 (N, num_classes, H, W)",
    }


def export_onnx(
    loaded: LoadedModel,
    out: str | Path,
    opset: int = DEFAULT_OPSET,
    verify: bool = True,
) -> OnnxVerification | None:
    """Write ``loaded``'s model to ``out`` as ONNX (atomically); verify it unless told not to.

    Returns the verification (None with ``verify=False``). A model that fails the checker or
    disagrees with torch is a :class:`SemsegError`, and nothing is left at ``out``.
    """
    import onnx

    if loaded.model is None:
        raise SemsegError(f"{loaded.path} has no torch model to export")
    if not getattr(loaded.model, "onnx_exportable", True):
        raise SemsegError(
            f"model {loaded.model_name!r} does not export to ONNX (its proposals, detections or "
            "pasting are data-dependent); evaluate and predict it with torch"
        )
    check_opset(opset)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = ExportWrapper(loaded.model).eval()
    height, width = loaded.input_size
    example = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0))
    handle, temp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(handle)
    temp = Path(temp_name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings of shape checks; deprecation notes
            try:
                torch.onnx.export(
                    model,
                    (example,),
                    str(temp),
                    input_names=["image"],
                    output_names=["logits"],
                    dynamic_axes={
                        "image": {0: "batch", 2: "height", 3: "width"},
                        "logits": {0: "batch", 2: "height", 3: "width"},
                    },
                    opset_version=opset,
                    do_constant_folding=True,
                    dynamo=False,
                )
            except Exception as error:
                raise SemsegError(
                    f"cannot export {loaded.model_name} to ONNX opset {opset}: {first_line(error)}"
                ) from error
        proto = onnx.load(str(temp))
        sha = checkpoint_sha256(loaded.path) if Path(loaded.path).is_file() else ""
        for key, value in export_metadata(loaded, opset, sha).items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        proto.producer_name = "semseg"
        onnx.save(proto, str(temp))
        del proto
        verification = verify_onnx(temp, loaded.model) if verify else None
        os.replace(temp, out)
    finally:
        temp.unlink(missing_ok=True)
    return verification


def verify_onnx(
    path: str | Path,
    model: nn.Module,
    shapes: tuple[tuple[int, int, int, int], ...] = VERIFY_SHAPES,
    tolerance: float = VERIFY_TOLERANCE,
) -> OnnxVerification:
    """``onnx.checker`` on the file, then ONNX Runtime against torch on ``shapes``."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as error:
        raise SemsegError(f"the exported model fails onnx.checker: {first_line(error)}") from error
    backend = OnnxRuntimeBackend(path, num_classes=None)
    worst = check_parity(backend, model, shapes, tolerance, "the exported model")
    return OnnxVerification(checker="ok", max_abs_prob_diff=worst, shapes=shapes)


def check_parity(
    backend: OnnxRuntimeBackend,
    model: nn.Module,
    shapes: tuple[tuple[int, int, int, int], ...],
    tolerance: float,
    what: str,
) -> float:
    """ONNX Runtime's softmax probabilities against torch's on seeded random inputs of
    ``shapes``; the largest absolute difference, refused above ``tolerance``."""
    worst = 0.0
    generator = torch.Generator().manual_seed(1)
    for shape in shapes:
        image = torch.rand(*shape, generator=generator)
        with torch.inference_mode():
            expected = model.eval()(image).float().softmax(dim=1)
        got = backend.logits(image).softmax(dim=1)
        if got.shape != expected.shape:
            raise SemsegError(
                f"{what} answers {tuple(got.shape)} for {shape}, torch {tuple(expected.shape)}"
            )
        worst = max(worst, float((got - expected).abs().max()))
    if not worst <= tolerance:
        raise SemsegError(f"{what} disagrees with torch: max |dp| {worst:.2e} > {tolerance:.0e}")
    return worst

"""Every registered model exports to ONNX and ONNX Runtime agrees with torch (issue 19).

Parametrised over :func:`semseg.models.list_models`, so a new model is covered as soon as it is
registered. Tiny models (width 1/16) keep it fast on a CPU; their untrained weights are made
informative first (the zero-initialised FCN score layers would give p = 1/C everywhere, which
any graph reproduces), and the export goes through :func:`export_onnx`, as ``semseg export``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from semseg.inference.checkpoint import LoadedModel
from semseg.inference.onnx_export import export_onnx
from semseg.models import build_model, list_models
from semseg.models.regions import REGION_MODELS
from semseg.models.segnet import unpool_by_mask

TOLERANCE = 1e-4  # max |p_onnxruntime - p_torch|, softmax probabilities
EXPORT_SIZE = (32, 48)
CHECK_SHAPES = ((2, 3, 40, 56), (1, 3, 64, 96), (1, 3, 33, 71))  # none of them the export size


pytestmark = pytest.mark.usefixtures("single_thread")


def informative(model: nn.Module) -> nn.Module:
    """He-normal weights everywhere (a fresh model's class layers start at zero or near it) and
    random BN statistics, so that the probabilities vary from pixel to pixel and class to class."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim > 1:
                nn.init.kaiming_normal_(parameter, nonlinearity="relu", generator=generator)
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1, generator=generator)
                module.running_var.uniform_(0.5, 1.5, generator=generator)
    return model.eval()


# Data-dependent detections (Mask R-CNN) and proposals computed outside the network (the region
# models): export refuses them.
NOT_EXPORTABLE = ("maskrcnn-semantic", *REGION_MODELS)


@pytest.mark.parametrize("name", [n for n in list_models() if n not in NOT_EXPORTABLE])
def test_every_registered_model_exports_with_onnxruntime_parity(name: str, tmp_path: Path) -> None:
    import onnxruntime

    torch.manual_seed(0)
    model = informative(build_model(name, 3, width_mult=1 / 16))
    loaded = LoadedModel(
        model=model,
        model_name=name,
        num_classes=3,
        input_size=EXPORT_SIZE,
        positive_class=1,
        class_names=["a", "b", "c"],
        path=tmp_path / "none.ckpt",
    )
    path = tmp_path / f"{name}.onnx"
    export_onnx(loaded, path, verify=False)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(1)
    for shape in CHECK_SHAPES:
        image = torch.rand(*shape, generator=generator)
        with torch.no_grad():
            expected = model(image).numpy()
        (got,) = session.run(None, {"image": image.numpy()})
        assert got.shape == expected.shape == (shape[0], 3, *shape[2:])
        assert max_prob_diff(got, expected) < TOLERANCE, shape
        # Logits agree relative to their scale too, and they vary (not two constant maps).
        scale = np.abs(expected).max()
        assert np.abs(got - expected).max() <= TOLERANCE * scale, shape
        assert expected.std(axis=(2, 3)).min() > 1e-3 * scale, shape


@pytest.mark.parametrize("name", NOT_EXPORTABLE)
def test_a_model_that_cannot_export_is_refused_in_one_line(name: str, tmp_path: Path) -> None:
    from semseg.errors import SemsegError

    loaded = LoadedModel(
        model=build_model(name, 3, width_mult=1 / 16).eval(),
        model_name=name,
        num_classes=3,
        input_size=EXPORT_SIZE,
        positive_class=1,
        class_names=["a", "b", "c"],
        path=tmp_path / "none.ckpt",
    )
    with pytest.raises(SemsegError, match="does not export to ONNX"):
        export_onnx(loaded, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


def max_prob_diff(logits_a: np.ndarray, logits_b: np.ndarray) -> float:
    probabilities = [torch.from_numpy(z).softmax(dim=1) for z in (logits_a, logits_b)]
    return float((probabilities[0] - probabilities[1]).abs().max())


def test_unpooling_for_export_equals_max_unpool() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 10)
    x[0, 0, :2, :2] = 1.0  # a tie: the pool keeps the first maximum, and so does the unpooling
    pooled, indices = nn.MaxPool2d(2, 2, return_indices=True)(x)
    expected = nn.MaxUnpool2d(2, 2)(pooled, indices)
    assert torch.equal(unpool_by_mask(pooled, indices), expected)
    assert torch.count_nonzero(expected) == pooled.numel()

"""Every registered model builds for CamVid's 11 classes and keeps the input size."""

from __future__ import annotations

import pytest
import torch

import semseg.regions  # noqa: F401  (installs the proposals the region models compute)
from semseg.models import build_model, list_models
from semseg.models.encoders import list_encoders

CAMVID_CLASSES = 11
SMALL = 0.125  # width multiplier: the shapes are what is tested, not the capacity


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("name", list_models())
def test_every_model_outputs_eleven_classes_at_camvid_size(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, CAMVID_CLASSES, width_mult=SMALL).eval()
    with torch.no_grad():
        for batch, height, width in ((1, 360, 480), (2, 90, 122)):
            out = model(torch.rand(batch, 3, height, width))
            assert out.shape == (batch, CAMVID_CLASSES, height, width), (name, height, width)
            assert torch.isfinite(out).all()


@pytest.mark.parametrize("encoder", [e for e in list_encoders() if not e.startswith("vgg")])
def test_fcn8s_encoders_output_eleven_classes(encoder: str) -> None:
    torch.manual_seed(0)
    model = build_model("fcn8s", CAMVID_CLASSES, backbone=encoder).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 120, 160))
    assert out.shape == (1, CAMVID_CLASSES, 120, 160)
    assert torch.isfinite(out).all()

"""Class-score layers on VGG16's 4096 fc7 channels run in float32 under CPU bf16 autocast."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import torch
from torch import nn

from semseg.models import build_model
from semseg.models.base import scores_in_float32


def test_scores_run_in_float32_under_cpu_autocast():
    torch.manual_seed(0)
    layer = nn.Conv2d(64, 3, 1)
    features = torch.randn(2, 64, 5, 7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = scores_in_float32(layer, features.bfloat16())
        plain = layer(features)  # what autocast alone would do
    assert inside.dtype == torch.float32 and plain.dtype == torch.bfloat16
    torch.testing.assert_close(inside, layer(features.bfloat16().float()))


def test_scores_keep_the_layers_dtype_without_autocast():
    layer = nn.Conv2d(8, 2, 1).bfloat16()
    assert scores_in_float32(layer, torch.randn(1, 8, 3, 3).bfloat16()).dtype == torch.bfloat16


def test_bf16_weights_under_autocast_run_as_autocast_has_them():
    """The compiled bf16 inference paths convert the weights and run under autocast too."""
    layer = nn.Conv2d(8, 2, 1).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = scores_in_float32(layer, torch.randn(1, 8, 3, 3))
    assert out.dtype == torch.bfloat16
    model = build_model("fcn8s", 2, width_mult=0.125).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(torch.rand(1, 3, 64, 96)).shape == (1, 2, 64, 96)


def test_fcn_vgg16_scores_fc7_in_float32_under_autocast():
    model = build_model("fcn8s", 2, width_mult=0.125)
    seen: list[torch.dtype] = []
    model.score_fr.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(torch.rand(1, 3, 64, 96))
    assert seen == [torch.float32] and logits.shape == (1, 2, 64, 96)


def test_bf16_weight_gradient_of_the_4096_channel_score_layer_completes():
    """The shape that aborted bf16-mixed VGG16 training on AMX CPUs (batch 8, a 160x576 input's
    stride-32 map), in a fresh process so that heap corruption cannot hit the test run."""
    script = textwrap.dedent(
        """
        import torch
        from torch import nn
        from semseg.models.base import scores_in_float32
        torch.manual_seed(0)
        layer = nn.Conv2d(4096, 2, 1)
        features = torch.rand(8, 4096, 5, 18, requires_grad=True)
        for _ in range(3):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                scores = scores_in_float32(layer, features)
            scores.square().mean().backward()
        print("done", float(layer.weight.grad.abs().sum()) > 0)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-500:]
    assert result.stdout.strip() == "done True"

"""``train.fused_optimizer``: Adam/AdamW's fused step gives the for-loop step's parameters."""

from __future__ import annotations

import pytest
import torch

from semseg.config import load_config
from semseg.models import build_model
from semseg.tasks.recipe import build_optimizer
from semseg.tasks.segmentation import SegmentationTask


def stepped(name: str, fused: bool, steps: int = 3) -> list[torch.Tensor]:
    """Parameters of a small FCN-8s after ``steps`` optimizer steps on fixed seeded gradients."""
    torch.manual_seed(0)
    model = build_model("fcn8s", 2, width_mult=0.125).to(memory_format=torch.channels_last)
    generator = torch.Generator().manual_seed(1)
    optimizer = build_optimizer(name, model.named_parameters(), 1e-3, 1e-2, fused=fused)
    for _ in range(steps):
        for parameter in model.parameters():
            parameter.grad = torch.randn(parameter.shape, generator=generator).to(
                memory_format=torch.channels_last if parameter.ndim == 4 else torch.preserve_format
            )
        optimizer.step()
    assert all(group.get("fused") == (True if fused else None) for group in optimizer.param_groups)
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_fused_step_matches_the_for_loop(name: str):
    reference, fused = stepped(name, False), stepped(name, True)
    moved = max(
        float((a - b).abs().max()) for a, b in zip(reference, stepped(name, False, 0), strict=True)
    )
    assert moved > 1e-3  # the steps did move the weights
    for a, b in zip(reference, fused, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_task_fuses_by_default_on_the_cpu_unless_told_not_to():
    options = {"width_mult": 0.125}
    default = SegmentationTask(model_options=options, optimizer="adamw")
    assert default.configure_optimizers().param_groups[0]["fused"] is True
    plain = SegmentationTask(model_options=options, optimizer="adamw", fused_optimizer=False)
    assert not plain.configure_optimizers().param_groups[0]["fused"]
    sgd = SegmentationTask(model_options=options, optimizer="sgd")
    assert isinstance(sgd.configure_optimizers(), torch.optim.SGD)


def test_config_option_reaches_the_task():
    from semseg.training import build_task

    config = load_config("demo")
    config.model.width_mult = 0.125
    assert config.train.fused_optimizer is None
    config.train.fused_optimizer = False
    assert build_task(config).hparams["fused_optimizer"] is False

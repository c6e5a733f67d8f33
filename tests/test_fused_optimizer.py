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


def task_under(precision: str, grad_clip: float | None, fused: bool | None = None):
    """A task whose trainer says ``precision`` and ``gradient_clip_val`` (as Lightning's does)."""
    from types import SimpleNamespace

    task = SegmentationTask(
        model_options={"width_mult": 0.125}, optimizer="adamw", fused_optimizer=fused
    )
    task._trainer = SimpleNamespace(precision=precision, gradient_clip_val=grad_clip)
    return task


@pytest.mark.parametrize(
    ("precision", "grad_clip", "fused"),
    [
        ("32-true", 1.0, True),
        ("bf16-mixed", None, True),
        ("bf16-mixed", 1.0, False),  # Lightning refuses to clip a fused step under mixed precision
        ("16-mixed", None, False),
    ],
)
def test_default_fusing_follows_precision_and_clipping(precision, grad_clip, fused):
    assert task_under(precision, grad_clip).fused_optimizer() is fused


def test_asking_for_a_fused_step_that_cannot_be_clipped_is_refused():
    from semseg.errors import SemsegError

    with pytest.raises(SemsegError, match="fused_optimizer=true cannot be combined"):
        task_under("bf16-mixed", 1.0, fused=True).fused_optimizer()


def test_bf16_mixed_training_with_gradient_clipping_runs(tmp_path):
    """`kitti_fast_cpu` clips gradients; under --precision bf16-mixed the fused default made
    Lightning stop the run before its first step."""
    from conftest import tiny_config

    from semseg.training import train

    config = tiny_config(tmp_path, epochs=1, grad_clip=1.0, optimizer="adamw")
    config.train.precision = "bf16-mixed"
    run_dir = train(config)
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()

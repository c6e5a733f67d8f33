"""Encoders for the FCN decoders and the from-scratch training recipe (fast: small inputs)."""

from __future__ import annotations

import math
from itertools import permutations
from types import SimpleNamespace

import pytest
import torch
import torchvision
from lightning.pytorch.callbacks import Timer

from semseg.config import load_config, validate
from semseg.errors import SemsegError
from semseg.models import build_model
from semseg.models.encoders import build_encoder, list_encoders
from semseg.tasks.recipe import (
    build_optimizer,
    dice_loss,
    lovasz_softmax,
    lr_factor,
    segmentation_loss,
)
from semseg.tasks.segmentation import SegmentationTask

ENCODERS = ("vgg16", "vgg16_bn", "resnet18", "resnet34", "resnet50", "mobilenet_v3_large")
TAPS = {  # channels of the stride 8 / 16 / 32 taps at width 1
    "vgg16": (256, 512, 4096),
    "vgg16_bn": (256, 512, 4096),
    "resnet18": (128, 256, 512),
    "resnet34": (128, 256, 512),
    "resnet50": (512, 1024, 2048),
    "mobilenet_v3_large": (40, 112, 960),
}


def small(name: str) -> dict[str, object]:
    """Options that keep a model cheap: the VGGs scale down, the others exist at width 1."""
    return {"backbone": name, "keep_prob": 1.0, "width_mult": 0.125 if "vgg" in name else 1.0}


def test_every_encoder_is_registered():
    assert set(ENCODERS) <= set(list_encoders())
    with pytest.raises(SemsegError, match="unknown backbone"):
        build_encoder("resnet1000")


@pytest.mark.parametrize("name", ENCODERS)
@pytest.mark.parametrize("variant", ["fcn32s", "fcn16s", "fcn8s"])
def test_fcn_output_size_equals_input_size(name: str, variant: str):
    torch.manual_seed(0)
    model = build_model(variant, 2, **small(name)).eval()
    with torch.no_grad():
        for height, width in ((45, 67), (33, 97)):
            out = model(torch.rand(1, 3, height, width))
            assert out.shape == (1, 2, height, width)
            assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ENCODERS)
def test_feature_info_strides_and_channels_match_the_tensors(name: str):
    options = small(name)
    encoder = build_encoder(name, keep_prob=1.0, width_mult=options["width_mult"]).eval()
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        stages = encoder.forward_stages(x)
        features = encoder(x)
    info = encoder.feature_info
    assert len(stages) == len(info)
    for stage, tensor in zip(info, stages, strict=True):
        assert tensor.shape[1] == stage.channels, stage
        assert tensor.shape[-2:] == (64 // stage.stride, 96 // stage.stride), stage
    assert sorted({stage.stride for stage in info})[-3:] == [8, 16, 32]
    taps = (features.pool3, features.pool4, features.fc7)
    channels = (encoder.pool3_channels, encoder.pool4_channels, encoder.fc7_channels)
    for tensor, stride, count in zip(taps, (8, 16, 32), channels, strict=True):
        assert tensor.shape == (1, count, 64 // stride, 96 // stride)
    if options["width_mult"] == 1.0:
        assert channels == TAPS[name]


def test_vgg_channels_at_width_one_without_building():
    for name in ("vgg16", "vgg16_bn"):
        with torch.device("meta"):
            encoder = build_encoder(name, keep_prob=1.0)
        taps = (encoder.pool3_channels, encoder.pool4_channels, encoder.fc7_channels)
        assert taps == TAPS[name]


def test_reference_fcn8s_keeps_its_parameter_names():
    keys = set(build_model("fcn8s", 2, width_mult=0.125).state_dict())
    assert {"encoder.features.0.weight", "encoder.fc6.weight", "encoder.fc7.weight"} <= keys
    assert {"score_fr.weight", "score_pool4.weight", "score_pool3.weight"} <= keys


@pytest.mark.parametrize(
    "name, factory",
    [
        ("resnet18", torchvision.models.resnet18),
        ("mobilenet_v3_large", torchvision.models.mobilenet_v3_large),
    ],
)
def test_local_torchvision_state_dict_loads(tmp_path, name, factory):
    torch.manual_seed(1)
    reference = factory(weights=None)
    with torch.no_grad():  # make BN statistics non-default so that they are checked too
        for module in reference.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_()
                module.running_var.uniform_(0.5, 1.5)
    state = reference.state_dict()
    path = tmp_path / f"{name}.pth"
    torch.save(state, path)
    encoder = build_encoder(name, keep_prob=1.0, backbone_weights=path)
    loaded = encoder.state_dict()
    assert loaded  # every key of the encoder comes from the torchvision state dict
    for key, value in loaded.items():
        assert torch.equal(value, state[key]), key
    model = build_model("fcn8s", 2, backbone=name, backbone_weights=str(path))
    assert torch.equal(model.encoder.state_dict()[next(iter(loaded))], state[next(iter(loaded))])


def test_wrong_state_dict_is_a_clear_error(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(SemsegError, match="ResNet-34"):
        build_encoder("resnet34", keep_prob=1.0, backbone_weights=path)
    with pytest.raises(SemsegError, match="not found"):
        build_encoder("resnet18", backbone_weights=tmp_path / "missing.pth")
    with pytest.raises(SemsegError, match="not both"):
        build_encoder("resnet18", pretrained=True, backbone_weights=path)
    with pytest.raises(SemsegError, match="width_mult 1.0"):
        build_encoder("resnet18", width_mult=0.5)


@pytest.mark.parametrize("name", ENCODERS)
def test_pretrained_without_network_is_a_semseg_error(monkeypatch, name):
    from torchvision.models._api import WeightsEnum

    def offline(self, *args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)
    with pytest.raises(SemsegError, match="no network.*--backbone-weights"):
        build_encoder(name, keep_prob=1.0, pretrained=True)


# --- the recipe ---------------------------------------------------------------------------------


def test_warmup_cosine_values_match_a_hand_calculation():
    # 4 warm-up steps, 100 steps in all; progress = step / 100.
    expected = {
        0: 0.25 * 0.5 * (1 + math.cos(math.pi * 0.00)),
        1: 0.50 * 0.5 * (1 + math.cos(math.pi * 0.01)),
        3: 1.00 * 0.5 * (1 + math.cos(math.pi * 0.03)),
        50: 0.5,
        75: 0.5 * (1 + math.cos(math.pi * 0.75)),
        100: 0.0,
    }
    for step, value in expected.items():
        assert lr_factor(step, 4, step / 100, "cosine") == pytest.approx(value, abs=1e-12)
    assert lr_factor(50, 0, 0.5, "cosine", min_factor=0.1) == pytest.approx(0.55)
    assert lr_factor(50, 0, 0.5, "poly") == pytest.approx(0.5**0.9)
    assert lr_factor(7, 4, 0.9, "constant") == 1.0
    assert lr_factor(1, 4, 0.9, "constant") == 0.5


def fake_trainer(total_steps: int, epochs: int, elapsed: float | None = None):
    callbacks = []
    if elapsed is not None:
        timer = Timer(duration={"seconds": 600})
        timer.time_elapsed = lambda stage="train": elapsed  # type: ignore[method-assign]
        callbacks.append(timer)
    return SimpleNamespace(
        estimated_stepping_batches=total_steps, max_epochs=epochs, callbacks=callbacks
    )


def test_task_schedule_by_steps_and_by_time_budget():
    options = {"width_mult": 0.0625, "keep_prob": 1.0}
    task = SegmentationTask(
        model_options=options, lr=1e-3, optimizer="adamw", schedule="cosine", warmup_epochs=1.0
    )
    task._trainer = fake_trainer(total_steps=100, epochs=10)  # 10 steps per epoch
    config = task.configure_optimizers()
    scheduler = config["lr_scheduler"]["scheduler"]
    assert config["lr_scheduler"]["interval"] == "step"
    assert isinstance(config["optimizer"], torch.optim.AdamW)
    assert scheduler.lr_lambdas[0](0) == pytest.approx(0.1)
    assert scheduler.lr_lambdas[0](50) == pytest.approx(0.5)
    # Under a time budget, the decay follows the elapsed time when that is further along.
    task = SegmentationTask(model_options=options, schedule="cosine", max_time_s=600)
    task._trainer = fake_trainer(total_steps=10_000, epochs=1000, elapsed=450.0)
    scheduler = task.configure_optimizers()["lr_scheduler"]["scheduler"]
    assert scheduler.lr_lambdas[0](10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.75)))
    # The reference: Adam at a constant rate, no scheduler.
    reference = SegmentationTask(model_options=options, lr=1e-4)
    reference._trainer = fake_trainer(total_steps=100, epochs=10)
    assert isinstance(reference.configure_optimizers(), torch.optim.Adam)


def test_adamw_does_not_decay_biases_and_norms():
    model = build_model("fcn8s", 2, backbone="resnet18", keep_prob=1.0)
    optimizer = build_optimizer("adamw", model.named_parameters(), lr=1e-3, weight_decay=0.01)
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.01 and plain["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decayed["params"]) and all(p.ndim < 2 for p in plain["params"])
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == trainable


def hand_case() -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes, 2 x 2 pixels; the bottom-right pixel is ignored."""
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, 1] = torch.tensor([[2.0, -1.0], [0.0, 3.0]])  # class-0 logits stay 0
    target = torch.tensor([[[1, 0], [1, 255]]])
    return logits, target


def test_dice_matches_a_hand_calculation_and_ignores_pixels():
    logits, target = hand_case()
    p1 = [1 / (1 + math.exp(-z)) for z in (2.0, -1.0, 0.0)]  # road probability, valid pixels
    g1 = [1, 0, 1]
    p0, g0 = [1 - p for p in p1], [1 - g for g in g1]

    def dice(p, g):
        inter = sum(a * b for a, b in zip(p, g, strict=True))
        return 1 - (2 * inter + 1) / (sum(p) + sum(g) + 1)

    expected = (dice(p0, g0) + dice(p1, g1)) / 2
    assert dice_loss(logits, target, ignore_index=255).item() == pytest.approx(expected, rel=1e-6)
    changed = logits.clone()
    changed[0, :, 1, 1] = torch.tensor([-50.0, 50.0])  # the ignored pixel does not count
    assert dice_loss(changed, target).item() == pytest.approx(expected, rel=1e-6)
    ce = -(math.log(p1[0]) + math.log(p0[1]) + math.log(p1[2])) / 3
    combined = segmentation_loss(logits, target, "ce_dice", 255, weight=0.5).item()
    assert combined == pytest.approx(ce + 0.5 * expected, rel=1e-6)
    assert segmentation_loss(logits, target, "ce", 255).item() == pytest.approx(ce, rel=1e-6)


def lovasz_by_definition(errors: list[float], truth: list[int]) -> float:
    """The Lovasz extension of the Jaccard loss, from its definition with explicit sets."""

    def jaccard_loss(wrong: set[int]) -> float:
        positives = {i for i, t in enumerate(truth) if t}
        predicted = (positives - wrong) | {i for i in wrong if not truth[i]}
        union = positives | predicted
        return 1 - len(positives & predicted) / len(union) if union else 0.0

    order = sorted(range(len(errors)), key=lambda i: -errors[i])
    total, chosen = 0.0, set()
    for i in order:
        before = jaccard_loss(chosen)
        chosen.add(i)
        total += errors[i] * (jaccard_loss(chosen) - before)
    return total


def test_lovasz_matches_its_definition_and_ignores_pixels():
    logits, target = hand_case()
    p1 = [1 / (1 + math.exp(-z)) for z in (2.0, -1.0, 0.0)]
    g1 = [1, 0, 1]
    per_class = []
    for probabilities, truth in ((p1, g1), ([1 - p for p in p1], [1 - g for g in g1])):
        errors = [abs(t - p) for p, t in zip(probabilities, truth, strict=True)]
        per_class.append(lovasz_by_definition(errors, truth))
    expected = sum(per_class) / 2
    assert lovasz_softmax(logits, target, 255).item() == pytest.approx(expected, rel=1e-6)
    changed = logits.clone()
    changed[0, :, 1, 1] = torch.tensor([50.0, -50.0])
    assert lovasz_softmax(changed, target, 255).item() == pytest.approx(expected, rel=1e-6)
    # The definition does not depend on ties or order: permuting pixels changes nothing.
    for perm in permutations(range(3)):
        errors = [abs(g1[i] - p1[i]) for i in perm]
        assert lovasz_by_definition(errors, [g1[i] for i in perm]) == pytest.approx(per_class[0])


def test_losses_have_gradients():
    logits, target = hand_case()
    logits.requires_grad_(True)
    for loss in ("ce_dice", "ce_lovasz"):
        value = segmentation_loss(logits, target, loss, 255)
        (grad,) = torch.autograd.grad(value, logits)
        assert torch.isfinite(grad).all() and grad[0, :, 1, 1].abs().sum() == 0


# --- configurations -----------------------------------------------------------------------------


@pytest.fixture
def restore_determinism():
    """Building a trainer (``deterministic="warn"``) switches torch's deterministic mode on for
    the whole process; later tests in the session should not inherit it."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def test_reference_config_is_unchanged():
    config = load_config("kitti_fcn8s")
    assert (config.model.name, config.model.backbone, config.model.keep_prob) == (
        "fcn8s",
        "vgg16",
        0.5,
    )
    train = config.train
    assert (train.epochs, train.batch_size, train.lr, train.weight_decay) == (40, 16, 1e-4, 0.0)
    assert (train.optimizer, train.schedule, train.warmup_epochs) == ("adam", "constant", 0.0)
    assert (train.loss, train.grad_clip, train.max_time_s) == ("ce", None, None)
    assert (config.data.height, config.data.width) == (160, 576)
    assert (config.data.scale_crop, config.data.color_jitter) == (0.0, 0.0)


def test_fast_cpu_config_loads_and_validates():
    config = load_config("kitti_fast_cpu")
    config.data.root = "../shared/data/kitti_road"
    validate(config)
    assert config.model.backbone in ENCODERS
    assert config.train.max_time_s is not None and config.train.max_time_s <= 600
    assert not config.model.pretrained and config.model.backbone_weights is None


def test_bad_recipe_values_are_rejected():
    for dotted, value in (
        ("optimizer", "lamb"),
        ("schedule", "step"),
        ("loss", "focal"),
        ("grad_clip", -1.0),
    ):
        config = load_config("kitti_fast_cpu")
        config.data.root = "x"
        setattr(config.train, dotted, value)
        with pytest.raises(SemsegError, match=dotted):
            validate(config)


def test_cli_backbone_flag_and_trainer_clipping(tmp_path, restore_determinism):
    from semseg.cli_train import build_train_config
    from semseg.training import build_trainer

    (tmp_path / "training" / "image_2").mkdir(parents=True)  # --data must look like KITTI
    config = build_train_config(
        "kitti_fast_cpu", None, [], {"data.root": tmp_path, "model.backbone": "resnet34"}
    )
    assert config.model.backbone == "resnet34"
    config.train.grad_clip = 2.5
    trainer = build_trainer(config, tmp_path, progress=False)
    assert trainer.gradient_clip_val == 2.5


def test_cpu_clock_budget_counts_cpu_seconds_per_thread(tmp_path, monkeypatch, restore_determinism):
    """The CPU clock's arithmetic on a fake process clock (no timing): CPU seconds since the
    start of training divided by the threads, plus the offset a resumed run carries, frozen once
    training ends."""
    import time

    from semseg.training import CpuTimer, build_trainer

    clock = [100.0]
    monkeypatch.setattr(time, "process_time", lambda: clock[0])
    timer = CpuTimer(seconds=100.0, threads=2)
    assert timer.time_elapsed() == 0.0
    timer.on_train_start(None, None)  # type: ignore[arg-type]
    assert timer.time_elapsed() == 0.0
    clock[0] = 100.6
    assert timer.time_elapsed() == pytest.approx(0.3)
    clock[0] = 103.0
    assert timer.time_elapsed() == pytest.approx(1.5)
    timer.on_train_end(None, None)  # type: ignore[arg-type]
    clock[0] = 250.0
    assert timer.time_elapsed() == pytest.approx(1.5)  # frozen once training ends
    # A resumed run starts from the elapsed time of its checkpoint; no threads count as one.
    resumed = CpuTimer(seconds=100.0, threads=0)
    resumed.load_state_dict({"time_elapsed": {"train": 40.0}})
    assert resumed.time_elapsed() == pytest.approx(40.0)
    resumed.on_train_start(None, None)  # type: ignore[arg-type]
    clock[0] = 260.0
    assert resumed.time_elapsed() == pytest.approx(50.0)
    config = load_config("kitti_fast_cpu")
    config.train.clock = "cpu"
    trainer = build_trainer(config, tmp_path, progress=False)
    assert any(isinstance(c, CpuTimer) for c in trainer.callbacks)
    config.train.clock = "sundial"
    config.data.root = "x"
    with pytest.raises(SemsegError, match="clock"):
        validate(config)

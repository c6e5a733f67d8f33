"""Tests of the FCN family (semseg.models): shapes, parameter counts, bilinear upsampling,
torchvision VGG16 weight loading, dropout (keep_prob), the registry and Long et al.'s init.

Full-size (width_mult 1.0) models are only built where real weights are needed; parameter
counts are taken on the ``meta`` device (no memory, no initialisation cost).
"""

from __future__ import annotations

import hashlib
import socket
import urllib.error
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from semseg.errors import SemsegError
from semseg.models import build_model, list_models, model_options
from semseg.models.base import bilinear_kernel, bilinear_upsampler, crop_like
from semseg.models.encoders import VGGEncoder
from semseg.models.fcn import FCN, count_parameters
from semseg.models.registry import NOT_ASKED, SHARED_OPTIONS, declared_options
from semseg.models.weights import imagenet_state_dict

MODEL_NAMES = ("fcn32s", "fcn16s", "fcn8s", "fcn8s-seed")
SMALL = 0.125  # width multiplier of the fast models


pytestmark = pytest.mark.usefixtures("single_thread")
# The package's own models, listed at collection: benchmark scripts that tests load register
# peers of their own (smp-unet-resnet18 needs the bench extra).
PACKAGE_MODELS = list_models()


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ------------------------------------------------------------------------------------ shapes


@pytest.mark.parametrize("num_classes", [2, 5])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_output_shape_matches_input_for_any_size(name: str, num_classes: int) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes, width_mult=SMALL).eval()
    with torch.no_grad():
        for height, width in [(33, 47), (64, 64), (97, 161), (32, 32)]:
            for batch in (1, 2) if (height, width) == (33, 47) else (1,):
                out = model(torch.rand(batch, 3, height, width))
                assert out.shape == (batch, num_classes, height, width), (height, width)
                assert torch.isfinite(out).all()


# -------------------------------------------------------------------------- parameter counts


def conv_params(cin: int, cout: int, k: int, bias: bool = True) -> int:
    return cin * cout * k * k + (cout if bias else 0)


def vgg16_encoder_params_by_hand() -> int:
    """13 3x3 convs of configuration D, fc6 as a 7x7 conv on 512 channels, fc7 as 1x1."""
    channels = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    total, cin = 0, 3
    for cout in channels:
        total += conv_params(cin, cout, 3)
        cin = cout
    return total + conv_params(512, 4096, 7) + conv_params(4096, 4096, 1)


def test_encoder_param_count_equals_torchvision_vgg16_trunk() -> None:
    with torch.device("meta"):
        tv = torchvision.models.vgg16(weights=None)
        model = build_model("fcn8s", 2)
    tv_count = n_params(tv.features) + n_params(tv.classifier[0]) + n_params(tv.classifier[3])
    # torchvision's VGG16 has 138,357,544 parameters, 4,097,000 of which are in fc8 (1000 classes)
    assert n_params(tv) == 138_357_544
    assert n_params(tv.classifier[6]) == 4096 * 1000 + 1000
    assert tv_count == 138_357_544 - 4_097_000
    assert count_parameters(model.encoder) == tv_count
    assert vgg16_encoder_params_by_hand() == tv_count


@pytest.mark.parametrize("num_classes", [2, 5])
def test_total_param_counts_by_hand(num_classes: int) -> None:
    c = num_classes
    encoder = vgg16_encoder_params_by_hand()
    score_fr = conv_params(4096, c, 1)
    score_pool4 = conv_params(512, c, 1)
    score_pool3 = conv_params(256, c, 1)

    def upsampler(stride: int) -> int:  # ConvTranspose2d(c, c, 2*stride), no bias
        return c * c * (2 * stride) ** 2

    expected = {
        "fcn32s": encoder + score_fr + upsampler(32),
        "fcn16s": encoder + score_fr + score_pool4 + upsampler(2) + upsampler(16),
        "fcn8s": encoder + score_fr + score_pool4 + score_pool3 + 2 * upsampler(2) + upsampler(8),
        # layer7 1x1 conv; ConvTranspose2d(c, 512, 4), (512, 256, 4), (256, c, 16), all biased
        "fcn8s-seed": encoder
        + conv_params(4096, c, 1)
        + (c * 512 * 16 + 512)
        + (512 * 256 * 16 + 256)
        + (256 * c * 256 + c),
    }
    with torch.device("meta"):
        for name, count in expected.items():
            assert count_parameters(build_model(name, c)) == count, name


# ------------------------------------------------------------------------ bilinear upsampling


def test_bilinear_kernel_values_and_channel_diagonal() -> None:
    weight = bilinear_kernel(3, 2, 4)
    assert weight.shape == (3, 2, 4, 4)
    taps = torch.tensor([0.25, 0.75, 0.75, 0.25])
    torch.testing.assert_close(weight[0, 0], taps[:, None] * taps[None, :])
    torch.testing.assert_close(weight[1, 1], taps[:, None] * taps[None, :])
    assert weight[0, 1].abs().sum() == 0 and weight[1, 0].abs().sum() == 0
    assert weight[2].abs().sum() == 0  # channel 2 has no output partner
    # odd kernel: centre tap 1, linear fall-off
    odd = bilinear_kernel(1, 1, 3)[0, 0]
    torch.testing.assert_close(odd[1], torch.tensor([0.5, 1.0, 0.5]))


@pytest.mark.parametrize("stride", [2, 8])
def test_bilinear_upsampler_matches_interpolate_on_interior(stride: int) -> None:
    torch.manual_seed(stride)
    channels, height, width = 3, 7, 9
    x = torch.randn(2, channels, height, width)
    layer = bilinear_upsampler(channels, stride, learnable=False)
    assert layer.weight.requires_grad is False
    reference_grid = torch.empty(2, channels, height * stride, width * stride)
    with torch.no_grad():
        up = crop_like(layer(x), reference_grid, offset=stride // 2)
    expected = F.interpolate(x, scale_factor=stride, mode="bilinear", align_corners=False)
    assert up.shape == expected.shape
    inner = (..., slice(stride, -stride), slice(stride, -stride))
    torch.testing.assert_close(up[inner], expected[inner], rtol=0, atol=1e-5)
    # and not everywhere: the transposed convolution has no clamping at the border
    assert not torch.allclose(up, expected, atol=1e-3)


def test_crop_like_refuses_too_small_input() -> None:
    with pytest.raises(ValueError):
        crop_like(torch.zeros(1, 1, 5, 5), torch.zeros(1, 1, 5, 5), offset=1)


# --------------------------------------------------------------- torchvision VGG16 weights


@pytest.fixture(scope="module")
def torchvision_vgg16(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    """A randomly initialised torchvision VGG16 and its state dict saved to a file."""
    torch.manual_seed(0)
    tv = torchvision.models.vgg16(weights=None).eval()
    path = tmp_path_factory.mktemp("weights") / "vgg16.pth"
    torch.save(tv.state_dict(), path)
    return tv, path


@pytest.fixture(scope="module")
def fcn8s_from_torchvision(torchvision_vgg16) -> nn.Module:
    _, path = torchvision_vgg16
    return build_model("fcn8s", 2, backbone_weights=str(path)).eval()


def test_backbone_weights_load_torchvision_layout(torchvision_vgg16, fcn8s_from_torchvision):
    tv, _ = torchvision_vgg16
    encoder = fcn8s_from_torchvision.encoder
    tv_features = tv.features.state_dict()
    ours = encoder.features.state_dict()
    assert ours.keys() == tv_features.keys()
    for key, value in tv_features.items():
        assert torch.equal(ours[key], value), key

    torch.manual_seed(1)
    with torch.no_grad():
        # fc6: the 7x7 conv (padding 3) at the centre of a 7x7 input sees the whole input with no
        # padding, i.e. exactly what classifier[0] sees after flattening (C, H, W order).
        assert encoder.fc6.kernel_size == (7, 7) and encoder.fc6.padding == (3, 3)
        x = torch.randn(1, 512, 7, 7)
        centre = F.conv2d(x, encoder.fc6.weight, encoder.fc6.bias)  # 1x1 = padded output [3, 3]
        linear = tv.classifier[0](x.flatten(1))
        torch.testing.assert_close(centre.flatten(1), linear, rtol=1e-4, atol=1e-4)
        # the centre claim itself, on a cheap sub-problem: 8 output channels with padding 3
        sub = F.conv2d(x, encoder.fc6.weight[:8], encoder.fc6.bias[:8], padding=3)
        torch.testing.assert_close(sub[0, :, 3, 3], centre[0, :8, 0, 0], rtol=1e-4, atol=1e-4)
        # fc7: 1x1 conv == classifier[3]
        h = torch.randn(1, 4096)
        conv7 = encoder.fc7(h[:, :, None, None]).flatten(1)
        torch.testing.assert_close(conv7, tv.classifier[3](h), rtol=1e-4, atol=1e-4)


def test_backbone_weights_missing_keys_is_semseg_error(
    torchvision_vgg16, fcn8s_from_torchvision, tmp_path: Path
) -> None:
    tv, _ = torchvision_vgg16
    features_only = {k: v for k, v in tv.state_dict().items() if k.startswith("features.")}
    partial = tmp_path / "features_only.pth"
    torch.save(features_only, partial)
    with pytest.raises(SemsegError, match="not a torchvision VGG16 state dict"):
        build_model("fcn8s", 2, backbone_weights=str(partial))
    # a missing convolution: the encoder's strict load refuses it (the other tensors are the
    # ones already loaded, so the shared fixture is left unchanged)
    state = {k: v for k, v in tv.state_dict().items() if k != "features.0.weight"}
    with pytest.raises(SemsegError, match="not a torchvision VGG16 state dict"):
        fcn8s_from_torchvision.encoder.load_torchvision_state_dict(state)
    # wrong shapes are refused too
    state = dict(tv.state_dict())
    state["classifier.3.weight"] = state["classifier.3.weight"][:100]
    with pytest.raises(SemsegError, match="not a torchvision VGG16 state dict"):
        fcn8s_from_torchvision.encoder.load_torchvision_state_dict(state)


def test_backbone_weights_bad_files(tmp_path: Path) -> None:
    # Width 1 (the only one weights load at): the file is read before any layer is built.
    with pytest.raises(SemsegError, match="not found"):
        build_model("fcn8s", 2, backbone_weights=str(tmp_path / "nope.pth"))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(SemsegError, match="not a torch state dict"):
        build_model("fcn8s", 2, backbone_weights=str(junk))
    with pytest.raises(SemsegError, match="width_mult 1.0"):
        build_model("fcn8s", 2, width_mult=SMALL, backbone_weights=str(junk))
    with pytest.raises(SemsegError, match="width_mult 1.0"):
        VGGEncoder(width_mult=SMALL).load_torchvision_state_dict({})
    with pytest.raises(SemsegError, match="not both"):
        build_model("fcn8s", 2, pretrained=True, backbone_weights=str(junk))


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Make any socket connection fail loudly; returns the list of attempted addresses."""
    attempts: list[object] = []

    def refuse(self, address, *args, **kwargs):
        attempts.append(address)
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts


def test_pretrained_without_network_asks_for_backbone_weights(
    monkeypatch: pytest.MonkeyPatch, no_network: list[object]
) -> None:
    calls = []

    def offline(self, *args, **kwargs):
        calls.append(self)
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.models.VGG16_Weights, "get_state_dict", offline)
    with pytest.raises(SemsegError, match="--backbone-weights"):
        build_model("fcn8s", 2, pretrained=True)
    assert calls == [torchvision.models.VGG16_Weights.IMAGENET1K_V1]
    assert no_network == []


def test_weights_api_download_failure_is_semseg_error(
    monkeypatch: pytest.MonkeyPatch, no_network: list[object]
) -> None:
    """One level deeper: torchvision's own get_state_dict runs, its downloader fails."""
    urls = []

    def offline(url, *args, **kwargs):
        urls.append(url)
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(SemsegError, match="--backbone-weights"):
        imagenet_state_dict("VGG16_Weights", "VGG16")
    assert len(urls) == 1 and "vgg16" in urls[0]
    assert no_network == []


# --------------------------------------------------------------------------------- keep_prob


@pytest.mark.parametrize("keep_prob", [0.5, 0.75, 1.0])
def test_dropout_probability_is_one_minus_keep_prob(keep_prob: float) -> None:
    model = build_model("fcn8s", 2, width_mult=SMALL, keep_prob=keep_prob)
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert len(dropouts) == 2
    for dropout in dropouts:
        assert dropout.p == pytest.approx(1.0 - keep_prob)


def test_keep_prob_one_makes_training_mode_deterministic() -> None:
    torch.manual_seed(0)
    x = torch.rand(1, 3, 32, 64)
    outputs = {}
    for keep_prob in (1.0, 0.5):
        torch.manual_seed(0)
        model = build_model("fcn8s-seed", 2, width_mult=SMALL, keep_prob=keep_prob).train()
        with torch.no_grad():
            outputs[keep_prob] = (model(x), model(x))
    first, second = outputs[1.0]
    assert first.abs().max() > 0
    assert torch.equal(first, second)
    first, second = outputs[0.5]
    assert not torch.equal(first, second)  # the check above could fail: dropout is random


@pytest.mark.parametrize("keep_prob", [0.0, 1.5, -0.1])
def test_invalid_keep_prob_is_semseg_error(keep_prob: float) -> None:
    with pytest.raises(SemsegError, match="keep_prob"):
        build_model("fcn8s", 2, width_mult=SMALL, keep_prob=keep_prob)


# ---------------------------------------------------------------------------------- registry


def test_registry_lists_models_and_refuses_unknown_names() -> None:
    names = list_models()
    assert set(MODEL_NAMES) <= set(names)
    assert names == sorted(names)
    with pytest.raises(SemsegError) as error:
        build_model("unet", 2)
    message = str(error.value)
    assert "unet" in message
    for name in MODEL_NAMES:
        assert name in message
    with pytest.raises(SemsegError, match="num_classes"):
        build_model("fcn8s", 0, width_mult=SMALL)


SHARED = {"backbone", "backbone_weights", "keep_prob", "pretrained", "width_mult"}


def test_models_declare_only_the_options_they_use() -> None:
    for name in ("fcn32s", "fcn16s", "fcn8s", "fcn8s-seed"):
        assert set(model_options(name)) == SHARED, name
    assert set(model_options("segnet")) == SHARED - {"keep_prob"}  # SegNet has no dropout
    for name in ("deeplab-largefov", "dilation8-frontend", "dilation8-context"):
        assert set(model_options(name)) == SHARED - {"backbone"}, name  # VGG16 only
    # what a factory fixes at registration is not an option; **kwargs takes any option
    assert declared_options(lambda num_classes, variant, width_mult: None, {"variant": 1}) == {
        "width_mult"
    }
    assert declared_options(lambda num_classes, **options: None, {}) is None


@pytest.mark.parametrize(
    ("name", "options", "named"),
    [
        ("segnet", {"keep_prob": 0.75}, "keep_prob=0.75"),
        ("deeplab-largefov", {"backbone": "resnet18"}, "backbone='resnet18'"),
        ("dilation8-frontend", {"backbone": "vgg16_bn"}, "backbone='vgg16_bn'"),
        ("dilation8-frontend", {"context": True}, "context=True"),  # fixed by the registration
        ("fcn8s", {"dropout": 0.1}, "dropout=0.1"),
    ],
)
def test_an_option_a_model_cannot_honour_is_refused(
    name: str, options: dict[str, object], named: str
) -> None:
    with pytest.raises(SemsegError) as error:
        build_model(name, 2, width_mult=SMALL, **options)
    message = str(error.value)
    assert f"model {name!r} does not take option {named}" in message
    assert "\n" not in message


def test_none_options_are_dropped_and_the_model_default_applies() -> None:
    nothing = dict.fromkeys(SHARED)
    nothing["width_mult"] = SMALL
    for name in PACKAGE_MODELS:
        build_model(name, 2, **nothing)
    dropouts = [
        m for m in build_model("fcn8s", 2, **nothing).modules() if isinstance(m, nn.Dropout)
    ]
    assert [d.p for d in dropouts] == [0.5, 0.5]  # the model's default keep_prob


def test_values_that_ask_for_nothing_are_ignored_by_models_without_the_option() -> None:
    """keep_prob 0.5 (the configuration's default) or 1.0 (no dropout) for SegNet, backbone vgg16
    for DeepLab: what every configuration and checkpoint written so far passes."""
    for keep_prob in (0.5, 1.0):
        model = build_model("segnet", 2, width_mult=SMALL, keep_prob=keep_prob)
        assert not any(isinstance(m, nn.Dropout) for m in model.modules())
    build_model("deeplab-largefov", 2, width_mult=SMALL, backbone="vgg16")


def test_shared_option_values_are_checked_for_every_model() -> None:
    for name in ("segnet", "deeplab-largefov", "fcn8s"):
        with pytest.raises(SemsegError, match="keep_prob must be in"):
            build_model(name, 2, width_mult=SMALL, keep_prob=0.0)
        with pytest.raises(SemsegError, match="width_mult must be positive"):
            build_model(name, 2, width_mult=0.0)
        with pytest.raises(SemsegError, match="not both"):
            build_model(name, 2, pretrained=True, backbone_weights="weights.pth")


def test_not_asked_values_include_the_training_configuration_defaults() -> None:
    """The registry's rule depends on them: the defaults of ModelConfig build every model."""
    from semseg.config import ModelConfig

    defaults = {option: getattr(ModelConfig(), option) for option in SHARED_OPTIONS}
    assert set(SHARED_OPTIONS) == SHARED
    for option, value in defaults.items():
        assert value in NOT_ASKED[option], option
    with torch.device("meta"):
        for name in PACKAGE_MODELS:
            build_model(name, 2, **defaults)


# ------------------------------------------------------------ checkpoints written before

LAYOUT_DIGESTS = {  # sha256 of the state dict's "key:shape" lines, by the code before issue 13
    ("deeplab-largefov", None): "0b58205917ee7413",
    ("dilation8-context", None): "27417f71df91ca0d",
    ("dilation8-frontend", None): "79005668ffb6e6b8",
    ("fcn16s", None): "6b1bd449abbae12d",
    ("fcn32s", None): "3e567d95343995a2",
    ("fcn8s", None): "317b00ee0f8fb7d2",
    ("fcn8s-seed", None): "9cf5fbdd1263b2cd",
    ("segnet", None): "c0e288dee2f8f48b",
    ("fcn8s", "vgg16_bn"): "d5257ceefbc43260",
    ("fcn8s", "resnet18"): "66d62f14ad8353fa",
    ("fcn8s", "resnet34"): "370008ee997a0c14",
    ("fcn8s", "resnet50"): "286cbfc156783131",
    ("fcn8s", "mobilenet_v3_large"): "1da0fe8d61bfe838",
}


def layout_digest(model: nn.Module) -> str:
    lines = [f"{key}:{tuple(value.shape)}" for key, value in model.state_dict().items()]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def test_state_dict_layout_is_the_one_checkpoints_were_written_with() -> None:
    """Parameter names and shapes at width 1 (on the meta device) as before the refactoring, so
    every checkpoint written before still fits its model."""
    with torch.device("meta"):
        for (name, backbone), digest in LAYOUT_DIGESTS.items():
            options = {} if backbone is None else {"backbone": backbone}
            assert layout_digest(build_model(name, 2, **options)) == digest, (name, backbone)


@pytest.mark.parametrize("name", list_models())
def test_checkpoint_with_every_shared_option_loads(name: str, tmp_path: Path) -> None:
    """Checkpoints so far hold all five shared options for every model (keep_prob 0.5 and
    backbone vgg16 for SegNet and DeepLab too): they rebuild and give the same output."""
    from semseg.inference.checkpoint import load_model

    options = {
        "keep_prob": 0.5,
        "width_mult": 1 / 16,
        "backbone": "vgg16",
        "pretrained": False,
        "backbone_weights": None,
    }
    torch.manual_seed(0)
    model = build_model(name, 2, **options).eval()
    hparams = {"model_name": name, "num_classes": 2, "input_size": [32, 48]}
    state = {f"model.{key}": value for key, value in model.state_dict().items()}
    path = tmp_path / "old.ckpt"
    torch.save(
        {"hyper_parameters": {**hparams, "model_options": options}, "state_dict": state}, path
    )
    loaded = load_model(path)
    x = torch.rand(1, 3, 40, 56)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))


def test_unknown_variant_and_backbone() -> None:
    with pytest.raises(SemsegError, match="variant"):
        FCN(2, variant="4s", width_mult=SMALL)
    with pytest.raises(SemsegError, match="backbone"):
        build_model("fcn8s", 2, width_mult=SMALL, backbone="alexnet")  # resnet50 is one now


# ------------------------------------------------------------------------ Long et al.'s init


@pytest.mark.parametrize("name", ["fcn32s", "fcn16s", "fcn8s"])
def test_fresh_fcn_outputs_zero_logits(name: str) -> None:
    """Long et al. (CVPR 2015) zero-initialise the class-score layers: random scores would
    only add noise on top of the (pre-trained) features, and zero scores give a uniform softmax
    and well-behaved first gradients. Every path to the logits runs through a zero 1x1 score
    convolution followed by (bias-free) linear upsampling, so a fresh FCN outputs exactly 0."""
    torch.manual_seed(0)
    model = build_model(name, 2, width_mult=SMALL).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 45, 70))
    assert out.shape == (2, 2, 45, 70)
    assert torch.count_nonzero(out) == 0
    scores = [m for n, m in model.named_modules() if n.startswith("score_")]
    assert scores and all(torch.count_nonzero(m.weight) == 0 for m in scores)


def test_final_upsampler_frozen_intermediate_learnable() -> None:
    model = build_model("fcn8s", 2, width_mult=SMALL)
    assert model.upscore_final.weight.requires_grad is False
    assert model.upscore2.weight.requires_grad is True
    assert model.upscore_pool4.weight.requires_grad is True
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert "upscore_final.weight" not in trainable
    assert {"upscore2.weight", "upscore_pool4.weight", "score_fr.weight"} <= trainable
    # the frozen one is exact bilinear interpolation by 8
    torch.testing.assert_close(model.upscore_final.weight, bilinear_kernel(2, 2, 16))
    model32 = build_model("fcn32s", 2, width_mult=SMALL)
    assert model32.upscore_final.weight.requires_grad is False
    assert not hasattr(model32, "upscore2")


# ------------------------------------------------------------------------ the package's rule


def test_models_import_only_torch_torchvision_errors_and_themselves() -> None:
    """semseg.models may import the standard library, torch, torchvision, semseg.errors and its
    own modules: nothing about data, training, inference or the command line."""
    import ast
    import sys

    import semseg.models

    package = Path(semseg.models.__file__).parent
    allowed = {"torch", "torchvision"} | set(sys.stdlib_module_names)
    for path in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                ok = name.split(".")[0] in allowed or name == "semseg.errors"
                ok = ok or name == "semseg.models" or name.startswith("semseg.models.")
                assert ok, f"{path.name} imports {name}"

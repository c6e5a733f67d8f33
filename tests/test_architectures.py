"""Tests of the other FCN-family architectures: SegNet, DeepLab-LargeFOV (+ dense CRF), Dilation8.

Shapes on odd inputs, parameter counts from the papers' layer tables (by hand, on the ``meta``
device), receptive fields (by hand, from the model's own layers, and measured by perturbing the
input of an all-ones network), the context module's identity initialisation, max unpooling,
torchvision weight loading, CRF refinement, and the benchmark script's table.
"""

from __future__ import annotations

import inspect
import re
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from conftest import PROJECT_ROOT, load_benchmark
from torch import nn

from semseg.errors import SemsegError
from semseg.models import build_model, list_models
from semseg.models.deeplab import DeepLabLargeFOV, decimate_fc6, upsample_aligned
from semseg.models.dilation import ContextModule, Dilation8
from semseg.models.receptive_field import (
    conv,
    input_interval,
    output_stride,
    pool,
    receptive_field,
    receptive_field_range,
    transposed,
    upsample,
)
from semseg.models.segnet import SegNet

ARCHITECTURES = ("segnet", "deeplab-largefov", "dilation8-frontend", "dilation8-context")
SMALL = 0.125


pytestmark = pytest.mark.usefixtures("single_thread")


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def conv_params(cin: int, cout: int, k: int) -> int:
    return cin * cout * k * k + cout


# ------------------------------------------------------------------------------------ shapes


def test_registered() -> None:
    assert set(ARCHITECTURES) <= set(list_models())


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_output_size_equals_input_size_for_odd_inputs(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, 3, width_mult=SMALL).eval()
    with torch.no_grad():
        for (height, width), batch in (((33, 47), 2), ((65, 97), 1), ((8, 8), 1)):
            out = model(torch.rand(batch, 3, height, width))
            assert out.shape == (batch, 3, height, width)
            assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_accepts_the_training_options_and_learns(name: str) -> None:
    """The options semseg.training passes; one Adam step lowers the loss on a fixed batch."""
    torch.manual_seed(0)
    model = build_model(
        name,
        2,
        keep_prob=1.0,
        width_mult=SMALL,
        backbone="vgg16",
        pretrained=False,
        backbone_weights=None,
    )
    images, masks = torch.rand(2, 3, 32, 48), (torch.rand(2, 32, 48) > 0.5).long()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(3):
        loss = F.cross_entropy(model(images), masks)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]


def test_option_errors() -> None:
    with pytest.raises(SemsegError, match="backbone"):
        build_model("segnet", 2, backbone="resnet50")
    for name in ("deeplab-largefov", "dilation8-frontend"):
        with pytest.raises(SemsegError, match="backbone"):
            build_model(name, 2, backbone="vgg16_bn")
        with pytest.raises(SemsegError, match="keep_prob"):
            build_model(name, 2, keep_prob=0.0)
        with pytest.raises(SemsegError, match="width_mult 1.0"):
            build_model(name, 2, width_mult=SMALL, backbone_weights="weights.pth")
        with pytest.raises(SemsegError, match="not both"):
            build_model(name, 2, pretrained=True, backbone_weights="weights.pth")


def test_output_strides_and_size_multiples() -> None:
    for name, stride in (
        ("segnet", 1),
        ("deeplab-largefov", 8),
        ("dilation8-frontend", 8),
        ("dilation8-context", 8),
    ):
        model = build_model(name, 2, width_mult=SMALL)
        assert model.output_stride == stride
        assert output_stride(model.spatial_layers()) == stride
    assert build_model("segnet", 2, width_mult=SMALL).size_multiple == 32
    x = torch.rand(1, 3, 64, 96)
    for name in ("deeplab-largefov", "dilation8-frontend", "dilation8-context"):
        model = build_model(name, 2, width_mult=SMALL).eval()
        assert model.size_multiple == 8
        with torch.no_grad():
            assert model.forward_logits(x).shape == (1, 2, 8, 12)


def test_deeplab_upsampling_is_aligned_with_the_stride_8_grid() -> None:
    """Cell i sits on pixel 8i: those pixels hold the logits exactly, between them it is linear."""
    logits = torch.arange(12.0).reshape(1, 1, 3, 4)
    up = upsample_aligned(logits, 8, (24, 32))
    assert up.shape == (1, 1, 24, 32)
    assert torch.equal(up[..., ::8, ::8], logits)
    assert up[0, 0, 0, 4] == pytest.approx(0.5)  # halfway between cells 0 and 1
    assert torch.equal(up[..., 16:, :], up[..., 16:17, :].expand(-1, -1, 8, -1))  # edge rows


# -------------------------------------------------------------------------- parameter counts

VGG16_CONVS = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)


def vgg16_convs_by_hand(batch_norm: bool = False) -> int:
    """VGG16 configuration D's 13 3x3 convolutions (+ BN scale and shift per channel)."""
    total, cin = 0, 3
    for cout in VGG16_CONVS:
        total += conv_params(cin, cout, 3) + (2 * cout if batch_norm else 0)
        cin = cout
    return total


def test_vgg_trunks_by_hand_equal_torchvision() -> None:
    with torch.device("meta"):
        assert n_params(torchvision.models.vgg16().features) == vgg16_convs_by_hand() == 14_714_688
        assert n_params(torchvision.models.vgg16_bn().features) == vgg16_convs_by_hand(True)
    assert vgg16_convs_by_hand(True) == 14_723_136


@pytest.mark.parametrize("c", [2, 21])
def test_param_counts_at_width_1_from_the_papers_layer_tables(c: int) -> None:
    # SegNet: VGG16-BN encoder, mirrored decoder (conv-BN-ReLU each), 3x3 classifier.
    decoder = [
        (512, 512), (512, 512), (512, 512),
        (512, 512), (512, 512), (512, 256),
        (256, 256), (256, 256), (256, 128),
        (128, 128), (128, 64),
        (64, 64),
    ]  # fmt: skip
    segnet = vgg16_convs_by_hand(True) + sum(conv_params(i, o, 3) + 2 * o for i, o in decoder)
    segnet += conv_params(64, c, 3)
    # DeepLab-LargeFOV: fc6 3x3x512 -> 1024 (dilation 12), fc7 1x1 1024, fc8 1x1 to classes.
    deeplab = vgg16_convs_by_hand() + (512 * 1024 * 9 + 1024) + (1024 * 1024 + 1024)
    deeplab += 1024 * c + c
    # Dilation8 front end: fc6 7x7x512 -> 4096 (dilation 4), fc7 1x1 4096, final 1x1.
    frontend = vgg16_convs_by_hand() + (512 * 4096 * 49 + 4096) + (4096 * 4096 + 4096)
    frontend += 4096 * c + c
    # Basic context module: seven 3x3 C -> C convolutions and one 1x1.
    context = 7 * (c * c * 9 + c) + (c * c + c)
    expected = {
        "segnet": segnet,
        "deeplab-largefov": deeplab,
        "dilation8-frontend": frontend,
        "dilation8-context": frontend + context,
    }
    with torch.device("meta"):
        for name, count in expected.items():
            assert n_params(build_model(name, c)) == count, name
        assert n_params(build_model("segnet", c).features) == vgg16_convs_by_hand(True)
    if c == 21:  # the papers' totals: DeepLab-LargeFOV 20.5M (Table 2), SegNet 29.5M
        assert round(deeplab / 1e5) == 205
        assert round(segnet / 1e6, 1) == 29.5
    if c == 2:  # the numbers stated in the docstrings
        assert (segnet, deeplab, frontend, context) == (29_444_162, 20_485_954, 134_268_738, 272)


# ---------------------------------------------------------------------------- receptive fields

VGG_BLOCKS = (2, 2, 3, 3, 3)


def vgg_by_hand(pools, dilations=(1, 1, 1, 1, 1)):
    layers = []
    for count, block_pool, dilation in zip(VGG_BLOCKS, pools, dilations, strict=True):
        layers += [conv(3, dilation)] * count
        layers += [block_pool] if block_pool is not None else []
    return layers


def layer_tables_by_hand() -> dict[str, list]:
    """Each architecture's layers as its paper describes them (up to the logits)."""
    segnet = vgg_by_hand([pool(2, 2)] * 5)
    for count in (3, 3, 3, 2, 1):
        segnet += [upsample(2)] + [conv(3)] * count
    segnet += [conv(3)]  # the classifier
    deeplab = vgg_by_hand([pool(3, 2, 1)] * 3 + [pool(3, 1, 1)] * 2, (1, 1, 1, 1, 2))
    deeplab += [conv(3, 12), conv(1), conv(1)]
    frontend = vgg_by_hand([pool(2, 2)] * 3 + [None, None], (1, 1, 1, 1, 2))
    frontend += [conv(7, 4), conv(1), conv(1)]
    context = [conv(3, d) for d in (1, 1, 2, 4, 8, 16, 1)] + [conv(1)]
    return {
        "segnet": segnet,
        "deeplab-largefov": deeplab,
        "dilation8-frontend": frontend,
        "dilation8-context": frontend + context,
    }


EXPECTED_RF = {
    "segnet": 404,
    "deeplab-largefov": 419,
    "dilation8-frontend": 380,
    "dilation8-context": 908,
}


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_receptive_field_by_hand_matches_model_and_docstring(name: str) -> None:
    model = build_model(name, 2, width_mult=SMALL)
    by_hand = layer_tables_by_hand()[name]
    assert receptive_field(by_hand) == EXPECTED_RF[name] == model.receptive_field
    assert model.spatial_layers() == by_hand
    doc = inspect.getdoc(type(model)) or ""
    assert f"{EXPECTED_RF[name]} x {EXPECTED_RF[name]}" in " ".join(doc.split())


def test_receptive_field_arithmetic_classics() -> None:
    assert receptive_field([conv(3)] * 2) == 5
    assert receptive_field([conv(3, d) for d in (1, 2, 4)]) == 15  # Yu & Koltun's Figure 1
    # VGG16 up to pool5: 212 pixels; the context module alone: 67 cells (the paper's Table 1).
    assert receptive_field(vgg_by_hand([pool(2, 2)] * 5)) == 212
    assert receptive_field(layer_tables_by_hand()["dilation8-context"][-8:]) == 67


class NearestUnpool(nn.Module):
    """Unpooling without indices: every cell of a window reads the pooled value (the widest
    dependency max unpooling can have, whatever the argmax positions)."""

    def forward(self, x, indices, output_size):
        return F.interpolate(x, size=tuple(output_size), mode="nearest")


def measured_extent(model: nn.Module, height: int, width: int, cell: int) -> tuple[int, int]:
    """Leftmost and rightmost input columns that change output cell ``(0, cell)``.

    All (transposed) convolution weights 1, biases 0, float64, zero input: every activation is a
    sum of non-negative terms, so the output cell is positive exactly when some perturbed input
    pixel (set to 1) lies in its receptive field. Two binary searches over the perturbed columns.
    """
    model = model.double().eval()
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.ones_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    if isinstance(model, SegNet):
        model.unpool = NearestUnpool()
    run = getattr(model, "forward_logits", model.forward_normalized)

    def affected(columns: slice) -> bool:
        x = torch.zeros(1, 3, height, width, dtype=torch.float64)
        x[..., columns] = 1.0
        with torch.no_grad():
            return bool(run(x)[0, :, 0, cell].sum() > 0)

    lo, hi = 0, width  # smallest t with affected([0, t)); leftmost column t - 1
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if affected(slice(0, mid)) else (mid + 1, hi)
    left = lo - 1
    lo, hi = 0, width - 1  # largest t with affected([t, width))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if affected(slice(mid, width)) else (lo, mid - 1)
    return left, lo


@pytest.mark.parametrize(
    ("name", "height", "width", "cells"),
    [
        ("segnet", 32, 512, (256, 266)),  # two positions in the pooling grid: 372 and 404
        ("deeplab-largefov", 8, 512, (32,)),
        ("dilation8-frontend", 8, 512, (32,)),
        ("dilation8-context", 8, 1024, (64,)),
    ],
)
def test_measured_receptive_field_equals_the_arithmetic(
    name: str, height: int, width: int, cells: tuple[int, ...]
) -> None:
    model = build_model(name, 2, width_mult=1 / 16)
    sizes = []
    for cell in cells:
        left, right = measured_extent(model, height, width, cell)
        assert left > 0 and right < width - 1, "the input must contain the whole field"
        assert (left, right) == input_interval(model.spatial_layers(), cell, cell)
        sizes.append(right - left + 1)
    assert max(sizes) == EXPECTED_RF[name]


FCN_RF = {"fcn32s": (404, 404), "fcn16s": (436, 436), "fcn8s": (436, 468)}
"""Receptive field of one FCN score cell before the final upsampling: (smallest, largest)."""


def fcn_layers_by_hand(name: str) -> list:
    """VGG16 to pool5, fc6 (7x7, padding 3), fc7 and the score layer (1x1), then per skip a
    learned 2x transposed convolution (kernel 4) cropped from offset 1 (Long et al.)."""
    layers = vgg_by_hand([pool(2, 2)] * 5) + [conv(7), conv(1), conv(1)]
    return layers + [transposed(4, 2, crop=1)] * {"fcn32s": 0, "fcn16s": 1, "fcn8s": 2}[name]


@pytest.mark.parametrize("name", list(FCN_RF))
def test_fcn_receptive_field_by_hand_matches_model_and_docstring(name: str) -> None:
    model = build_model(name, 2, width_mult=SMALL)
    by_hand = fcn_layers_by_hand(name)
    assert model.spatial_layers() == by_hand
    assert receptive_field_range(by_hand) == FCN_RF[name]
    assert model.receptive_field == FCN_RF[name][1]
    assert output_stride(by_hand) == model.output_stride == int(name[3:-1])
    doc = " ".join((inspect.getdoc(type(model)) or "").split())
    smallest, largest = FCN_RF[name]
    assert f"{largest} x {largest}" in doc and str(smallest) in doc


@pytest.mark.parametrize(
    ("name", "width", "cells"),
    [
        ("fcn32s", 512, (8,)),
        ("fcn16s", 512, (16, 17)),
        ("fcn8s", 1024, (64, 65, 66, 67)),  # the four places of a stride-8 cell in the 32-grid
    ],
)
def test_fcn_measured_receptive_field_equals_the_arithmetic(
    name: str, width: int, cells: tuple[int, ...]
) -> None:
    """Perturbation measurement of the scores before the final upsampling; through all paths
    (fc7 and the pool4/pool3 skips), so it also checks that the skips see inside fc7's field."""
    model = build_model(name, 2, width_mult=1 / 16)
    sizes = []
    for cell in cells:
        left, right = measured_extent(model, 32, width, cell)
        assert left > 0 and right < width - 1, "the input must contain the whole field"
        assert (left, right) == input_interval(model.spatial_layers(), cell, cell)
        sizes.append(right - left + 1)
    assert (min(sizes), max(sizes)) == FCN_RF[name]


def readme_receptive_fields() -> dict[str, str]:
    """Model name -> the receptive-field cell of the README's model table."""
    table = {}
    for line in (PROJECT_ROOT / "README.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[0].startswith("`") and cells[3] != "receptive field":
            names = re.findall(r"`([^`]+)`", cells[0])
            values = cells[3].split(" / ") if len(names) > 1 else [cells[3]]
            table.update(zip(names, values, strict=True))
    return table


def test_readme_receptive_fields_are_the_models() -> None:
    """The README's table (e.g. 404 for FCN-32s) states what the arithmetic gives, which the
    measurements above check: one value, or smallest-largest where it depends on position."""
    stated = readme_receptive_fields()
    assert set(stated) == set(EXPECTED_RF) | set(FCN_RF)
    for name, text in stated.items():
        smallest, largest = receptive_field_range(
            build_model(name, 2, width_mult=SMALL).spatial_layers()
        )
        expected = str(largest) if smallest == largest else f"{smallest}\u2013{largest}"
        assert text == expected, name


def test_measured_receptive_field_sees_a_changed_dilation() -> None:
    """The measurement is not circular: a model whose fc6 is less dilated measures smaller."""
    model = build_model("dilation8-frontend", 2, width_mult=1 / 16)
    model.fc6.dilation, model.fc6.padding = (2, 2), (6, 6)
    left, right = measured_extent(model, 8, 512, 32)
    assert right - left + 1 == EXPECTED_RF["dilation8-frontend"] - 6 * 2 * 8


# ------------------------------------------------------------------------ context, unpooling


def test_context_module_identity_initialisation() -> None:
    module = ContextModule(5)
    assert [m.dilation[0] for m in module if isinstance(m, nn.Conv2d)] == [1, 1, 2, 4, 8, 16, 1, 1]
    assert [m.kernel_size[0] for m in module if isinstance(m, nn.Conv2d)] == [3] * 7 + [1]
    x = torch.rand(2, 5, 17, 23) + 0.01
    with torch.no_grad():
        assert torch.allclose(module(x), x, atol=1e-6, rtol=0)
        signed = torch.randn(1, 5, 9, 9)
        assert torch.allclose(module(signed), signed.clamp(min=0), atol=1e-6, rtol=0)


def test_context_model_starts_as_the_front_end_on_positive_scores() -> None:
    torch.manual_seed(0)
    context = build_model("dilation8-context", 2, width_mult=SMALL).eval()
    frontend = build_model("dilation8-frontend", 2, width_mult=SMALL).eval()
    missing = frontend.load_state_dict(context.state_dict(), strict=False)
    assert all(key.startswith("context.") for key in missing.unexpected_keys)
    assert not missing.missing_keys
    x = torch.rand(1, 3, 40, 48)
    with torch.no_grad():
        scores = frontend.forward_logits(x)
        assert torch.allclose(context.forward_logits(x), scores.clamp(min=0), atol=1e-6)


def test_max_unpooling_puts_values_back_at_the_argmax_positions() -> None:
    x = torch.tensor(
        [
            [1.0, 5.0, 2.0, 0.0],
            [3.0, 4.0, 7.0, 6.0],
            [9.0, 0.0, 1.0, 1.5],
            [2.0, 8.0, 0.5, 3.0],
        ]
    ).reshape(1, 1, 4, 4)
    model = SegNet(2, width_mult=SMALL)
    pool1 = model.features[6]
    assert isinstance(pool1, nn.MaxPool2d) and pool1.return_indices
    pooled, indices = pool1(x)
    assert pooled.flatten().tolist() == [5.0, 7.0, 9.0, 3.0]
    unpooled = model.unpool(pooled, indices, output_size=(4, 4))
    expected = torch.zeros(4, 4)
    for (row, col), value in {(0, 1): 5.0, (1, 2): 7.0, (2, 0): 9.0, (3, 3): 3.0}.items():
        expected[row, col] = value
    assert torch.equal(unpooled[0, 0], expected)


def test_segnet_decoder_unpools_with_its_encoders_indices() -> None:
    model = SegNet(2, width_mult=SMALL).eval()
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        _, indices, sizes = model.encode(x)
    assert sizes == [(64, 96), (32, 48), (16, 24), (8, 12), (4, 6)]
    assert [tuple(i.shape[-2:]) for i in indices] == [(32, 48), (16, 24), (8, 12), (4, 6), (2, 3)]
    calls = []
    original = model.unpool.forward

    def spy(value, index, output_size=None):
        calls.append((index, tuple(output_size)))
        return original(value, index, output_size=output_size)

    model.unpool.forward = spy  # type: ignore[method-assign]
    with torch.no_grad():
        model.forward_normalized(x)
    assert [size for _, size in calls] == sizes[::-1]
    assert all(torch.equal(a, b) for (a, _), b in zip(calls, indices[::-1], strict=True))


# ---------------------------------------------------------------------------- weight loading


@pytest.fixture(scope="module")
def torchvision_weights(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, tuple[Path, dict[str, torch.Tensor]]]:
    """Locally created torchvision vgg16 and vgg16_bn state dicts (random values, including BN
    running statistics, so that those must load too), each saved to a file: name -> (path, dict).

    Built on the meta device and filled with uniform noise: much cheaper than torchvision's init.
    """
    folder = tmp_path_factory.mktemp("weights")
    generator = torch.Generator().manual_seed(0)
    weights = {}
    for name in ("vgg16", "vgg16_bn"):
        with torch.device("meta"):
            model = getattr(torchvision.models, name)(weights=None)
        state = model.to_empty(device="cpu").state_dict()
        for key, value in state.items():
            if key.endswith("num_batches_tracked"):
                value.fill_(7)
            elif key.endswith("running_var"):
                value.uniform_(0.5, 2.0, generator=generator)
            else:
                value.uniform_(-0.1, 0.1, generator=generator)
        path = folder / f"{name}.pth"
        torch.save(state, path)
        weights[name] = (path, state)
    return weights


def test_segnet_loads_torchvision_vgg16_bn(torchvision_weights) -> None:
    path, state = torchvision_weights["vgg16_bn"]
    model = SegNet(2, backbone_weights=str(path))
    for key, value in model.features.state_dict().items():
        assert torch.equal(value, state[f"features.{key}"]), key
    with pytest.raises(SemsegError, match="vgg16_bn"):
        SegNet(2, backbone_weights=str(torchvision_weights["vgg16"][0]))  # no BN entries


def test_deeplab_loads_torchvision_vgg16_with_decimated_fc(torchvision_weights) -> None:
    path, state = torchvision_weights["vgg16"]
    model = DeepLabLargeFOV(2, backbone_weights=str(path))
    for key, value in model.features.state_dict().items():
        assert torch.equal(value, state[f"features.{key}"]), key
    fc6 = state["classifier.0.weight"].reshape(4096, 512, 7, 7)
    assert torch.equal(model.fc6.weight, fc6[0::4][:, :, [0, 3, 6]][:, :, :, [0, 3, 6]])
    assert torch.equal(model.fc6.weight, decimate_fc6(state["classifier.0.weight"]))
    assert torch.equal(model.fc6.bias, state["classifier.0.bias"][0::4])
    assert torch.equal(model.fc7.weight[:, :, 0, 0], state["classifier.3.weight"][::4, ::4])
    assert torch.equal(model.fc7.bias, state["classifier.3.bias"][::4])
    with pytest.raises(SemsegError, match="VGG16"):
        DeepLabLargeFOV(2, backbone_weights=str(torchvision_weights["vgg16_bn"][0]))


def test_dilation_front_end_loads_torchvision_vgg16(torchvision_weights) -> None:
    path, state = torchvision_weights["vgg16"]
    model = Dilation8(2, context=True, backbone_weights=str(path))
    for key, value in model.features.state_dict().items():
        assert torch.equal(value, state[f"features.{key}"]), key
    assert torch.equal(model.fc6.weight.flatten(1), state["classifier.0.weight"])
    assert torch.equal(model.fc6.bias, state["classifier.0.bias"])
    assert torch.equal(model.fc7.weight.flatten(1), state["classifier.3.weight"])
    assert torch.equal(model.fc7.bias, state["classifier.3.bias"])


@pytest.mark.parametrize(
    ("name", "file"), [("segnet", "vgg16_bn-"), ("deeplab-largefov", "vgg16-")]
)
def test_pretrained_offline_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, name: str, file: str
) -> None:
    urls = []

    def offline(url, *args, **kwargs):
        urls.append(url)
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(SemsegError, match="--backbone-weights"):
        build_model(name, 2, pretrained=True)
    assert len(urls) == 1 and file in urls[0].rsplit("/", 1)[1]


# ----------------------------------------------------------------------------------- the CRF


def two_region_scene(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two flat colours with a sharp vertical boundary plus noise; the ground truth; and a
    blurred probability map whose boundary is 7 pixels off (as upsampled stride-8 scores are)."""
    rng = np.random.default_rng(seed)
    height, width, boundary = 48, 64, 37
    image = np.zeros((height, width, 3))
    image[:, :boundary] = (60, 120, 60)
    image[:, boundary:] = (200, 180, 170)
    image = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
    truth = np.zeros((height, width), dtype=bool)
    truth[:, boundary:] = True
    ramp = 1 / (1 + np.exp(-(np.arange(width) - (boundary - 7)) / 6.0))
    road = np.broadcast_to(ramp, (height, width)) + rng.normal(0, 0.05, truth.shape)
    road = np.clip(road, 0.01, 0.99)
    return image, truth, np.stack([1 - road, road]).astype(np.float32)


def iou(prediction: np.ndarray, truth: np.ndarray) -> float:
    return float((prediction & truth).sum() / (prediction | truth).sum())


def test_crf_refinement_snaps_a_blurred_map_to_the_colour_edge() -> None:
    pytest.importorskip("pydensecrf.densecrf", reason='CRF backend: pip install -e ".[crf]"')
    from semseg.inference.crf import CRFParams, refine

    image, truth, probabilities = two_region_scene()
    before = iou(probabilities.argmax(0) == 1, truth)
    refined = refine(image, probabilities)
    after = iou(refined.argmax(0) == 1, truth)
    assert before < 0.85 and after > 0.97 and after > before
    assert refined.shape == probabilities.shape and refined.dtype == np.float32
    assert np.allclose(refined.sum(0), 1.0, atol=1e-5)
    # No pairwise terms: the CRF keeps the network's own decisions.
    plain = refine(image, probabilities, CRFParams(pos_w=0.0, bi_w=0.0, iterations=1))
    assert np.array_equal(plain.argmax(0), probabilities.argmax(0))
    # ... and its marginals are the unaries' softmax: the input probabilities themselves (after
    # the clip that keeps log() finite), computed here without the CRF.
    from semseg.inference.crf import MIN_PROBABILITY

    clipped = np.clip(probabilities, MIN_PROBABILITY, 1.0)
    np.testing.assert_allclose(plain, clipped / clipped.sum(0), atol=1e-5)


def test_crf_in_the_predictor_for_any_model() -> None:
    pytest.importorskip("pydensecrf.densecrf")
    from semseg.inference.checkpoint import LoadedModel
    from semseg.inference.crf import CRFParams
    from semseg.inference.predictor import Predictor

    torch.manual_seed(0)
    loaded = LoadedModel(
        model=build_model("deeplab-largefov", 2, width_mult=SMALL),
        model_name="deeplab-largefov",
        num_classes=2,
        input_size=(32, 64),
        positive_class=1,
        class_names=["not road", "road"],
        path=Path("none.ckpt"),
    )
    image = two_region_scene()[0]
    plain = Predictor(loaded).predict_batch([image])[0]
    refined = Predictor(loaded, crf=CRFParams(iterations=3)).predict_batch([image])[0]
    assert refined.shape == plain.shape == (2, 48, 64)
    assert np.allclose(refined.sum(0), 1.0, atol=1e-5)
    assert not np.allclose(refined, plain)


def test_crf_settings_from_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    from semseg.inference.crf import CRFParams, crf_params

    assert crf_params(False) is None
    with pytest.raises(SemsegError, match="--crf-iters, --crf-pos-w only apply with --crf"):
        crf_params(False, iterations=3, pos_w=1.0)
    with pytest.raises(SemsegError, match="--crf-bi-sxy must be positive"):
        CRFParams(bi_sxy=0)
    with pytest.raises(SemsegError, match="--crf-iters"):
        CRFParams(iterations=0)
    defaults = CRFParams()
    assert (defaults.iterations, defaults.pos_sxy, defaults.pos_w) == (10, 3.0, 3.0)
    assert (defaults.bi_sxy, defaults.bi_srgb, defaults.bi_w) == (121.0, 5.0, 4.0)
    monkeypatch.setitem(sys.modules, "pydensecrf", None)
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    with pytest.raises(SemsegError, match=r'pip install -e "\.\[crf\]"'):
        crf_params(True, iterations=5)


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_crf_without_the_extra_is_a_one_line_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    from semseg import cli

    monkeypatch.setitem(sys.modules, "pydensecrf", None)
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    args = ["run.ckpt", "image.png"] if command == "predict" else ["run.ckpt", "--data", "d"]
    monkeypatch.setattr(sys, "argv", ["semseg", command, *args, "--crf", "--crf-iters", "5"])
    with pytest.raises(SystemExit) as stopped:
        cli.main()
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("semseg: error: --crf needs") and 'pip install -e ".[crf]"' in err[0]


def test_evaluation_records_the_crf_settings() -> None:
    pytest.importorskip("pydensecrf.densecrf")
    from semseg.data.sample import Sample
    from semseg.evaluation import evaluate_samples
    from semseg.inference.checkpoint import LoadedModel
    from semseg.inference.crf import CRFParams

    image, truth, _ = two_region_scene()
    loaded = LoadedModel(
        build_model("segnet", 2, width_mult=SMALL), "segnet", 2, (32, 64), 1, ["a", "b"], Path("x")
    )
    samples = [Sample("um_000000", "um", Path("um_000000.png"))]
    results = evaluate_samples(
        loaded, samples, lambda s: (image, truth.astype(np.uint8)), crf=CRFParams(iterations=2)
    )
    assert results["crf"]["iterations"] == 2 and results["crf"]["bi_sxy"] == 121.0
    assert "all" in results["groups"]


# ----------------------------------------------------------------------- benchmark script


def test_benchmark_table_formatting() -> None:
    bench = load_benchmark("architectures")
    rows = [
        bench.Result("segnet", 91.234, 80.5, 7, 120.0, 29_444_162, 1_840_000, 1.234, 2.04),
        bench.Result("dilation8-context", None, None, None, None, 134_269_010, 8_400, None),
    ]
    table = bench.format_table(rows, (160, 576))
    lines = table.strip().splitlines()
    assert lines[0].startswith("| model | val MaxF % | val IoU % | epochs |")
    assert "(160x576, width 1)" in lines[0]
    assert lines[1] == "|---|---|---|---|---|---|---|---|"
    assert lines[2] == "| segnet | 91.23 | 80.50 | 7 | 29.4M | 1.8M | 1.23 | 2.0 |"
    assert lines[3] == "| dilation8-context | – | – | – | 134.3M | 8k | – | – |"
    assert all(line.count("|") == 9 for line in lines)
    args = bench.parse_args(["--quick"])
    assert args.budget_s <= 5 and args.models == list(bench.MODELS)


def test_benchmark_cpu_budget_stops_training(monkeypatch: pytest.MonkeyPatch) -> None:
    bench = load_benchmark("architectures")
    now = [100.0]
    monkeypatch.setattr(bench, "cpu_clock", lambda: now[0])

    class Trainer:
        should_stop = False

    trainer, budget = Trainer(), bench.CpuBudget(5.0)
    budget.on_fit_start(trainer, None)
    now[0] = 104.9
    budget.on_train_batch_end(trainer, None, None, None, 0)
    assert not trainer.should_stop
    now[0] = 105.0
    budget.on_train_batch_end(trainer, None, None, None, 1)
    assert trainer.should_stop

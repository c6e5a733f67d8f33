"""VGG16 trunks for the FCN-family variants (SegNet, DeepLab, Dilation), in torchvision's layout.

Each variant changes only parameter-free pieces of VGG16 (which pooling layers exist and how they
pool) and the dilation of conv5, so the convolutional trunk keeps torchvision's ``features.N``
indices (a removed pooling layer becomes an ``nn.Identity`` at the same index) and
``torchvision.models.vgg16`` / ``vgg16_bn`` ImageNet weights load unchanged at ``width_mult=1``.

Also here: ImageNet weights through torchvision's weights API (``pretrained=True``) or a local state
dict (``backbone_weights=PATH``), with a clear :class:`SemsegError` when neither can be had.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from semseg.errors import SemsegError
from semseg.models.vgg import (
    VGG16_LAYOUT,
    imagenet_vgg16_state_dict,
    load_state_dict_file,
    scaled,
)

VGG16_BLOCKS = 5
"""Conv blocks of VGG16 (2, 2, 3, 3, 3 convolutions), each closed by a pooling layer."""


def check_common_options(keep_prob: float, width_mult: float) -> None:
    if not 0.0 < keep_prob <= 1.0:
        raise SemsegError(f"keep_prob must be in (0, 1], got {keep_prob}")
    if width_mult <= 0:
        raise SemsegError(f"width_mult must be positive, got {width_mult}")


def vgg16_trunk(
    width_mult: float = 1.0,
    batch_norm: bool = False,
    pools: Sequence[nn.Module] | None = None,
    dilations: Sequence[int] = (1, 1, 1, 1, 1),
) -> nn.Sequential:
    """VGG16's 13 3x3 convolutions with torchvision's module indices.

    ``pools``: the five modules placed where VGG16 has its 2x2 max pools (default: those pools);
    ``dilations``: per block, the dilation (and padding) of its convolutions. Convolutions are He
    initialised (fan-out) as in torchvision's VGG; BN layers start as the identity.
    """
    if pools is None:
        pools = [nn.MaxPool2d(kernel_size=2, stride=2) for _ in range(VGG16_BLOCKS)]
    if len(pools) != VGG16_BLOCKS or len(dilations) != VGG16_BLOCKS:
        raise ValueError("VGG16 has five blocks: give five pools and five dilations")
    layers: list[nn.Module] = []
    in_channels, block = 3, 0
    for item in VGG16_LAYOUT:
        if item == "M":
            layers.append(pools[block])
            block += 1
            continue
        out_channels = scaled(int(item), width_mult)
        dilation = dilations[block]
        conv = nn.Conv2d(in_channels, out_channels, 3, padding=dilation, dilation=dilation)
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(conv.bias)
        layers.append(conv)
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_channels))
        layers.append(nn.ReLU(inplace=True))
        in_channels = out_channels
    return nn.Sequential(*layers)


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else repr(error)


def load_trunk(features: nn.Sequential, state_dict: dict[str, Tensor], name: str) -> None:
    """Load the ``features.*`` entries of a torchvision VGG state dict into ``features``."""
    trunk = {
        key.removeprefix("features."): value
        for key, value in state_dict.items()
        if key.startswith("features.")
    }
    try:
        features.load_state_dict(trunk)
    except RuntimeError as error:
        raise SemsegError(f"not a torchvision {name} state dict: {first_line(error)}") from error


def imagenet_vgg16_bn_state_dict() -> dict[str, Tensor]:
    """torchvision's ImageNet VGG16-BN weights through its weights API (downloads once, cached)."""
    from torchvision.models import VGG16_BN_Weights

    try:
        return VGG16_BN_Weights.IMAGENET1K_V1.get_state_dict(progress=True)
    except Exception as error:  # network errors come in many types (URLError, OSError, ...)
        raise SemsegError(
            "could not fetch torchvision's ImageNet VGG16-BN weights (no network?); "
            "download them on a connected machine and pass --backbone-weights PATH"
        ) from error


def check_backbone_options(
    pretrained: bool,
    backbone_weights: str | Path | None,
    width_mult: float,
    batch_norm: bool = False,
    weights_name: str | None = None,
) -> bool:
    """Whether weights are to be loaded; a SemsegError for combinations that cannot work.

    Models call it before building their layers, so a bad combination fails at once.
    ``weights_name`` names the weights in that error (default: VGG16 or VGG16-BN).
    """
    if pretrained and backbone_weights:
        raise SemsegError("give either --pretrained or --backbone-weights, not both")
    if not (pretrained or backbone_weights):
        return False
    if width_mult != 1.0:
        name = weights_name or ("VGG16-BN" if batch_norm else "VGG16")
        raise SemsegError(f"ImageNet {name} weights need width_mult 1.0, got {width_mult}")
    return True


def check_model_options(
    model: str,
    backbone: str,
    available: Sequence[str],
    keep_prob: float,
    width_mult: float,
    pretrained: bool,
    backbone_weights: str | Path | None,
    batch_norm: bool = False,
    weights_name: str | None = None,
) -> bool:
    """The checks every model constructor runs before building a layer: a known ``backbone``
    for ``model``, a valid keep_prob and width, and weights that can load at that width.
    Returns whether weights are to be loaded."""
    if backbone not in available:
        raise SemsegError(
            f"unknown backbone {backbone!r} for {model}; available: {', '.join(available)}"
        )
    check_common_options(keep_prob, width_mult)
    return check_backbone_options(
        pretrained, backbone_weights, width_mult, batch_norm, weights_name
    )


def backbone_state_dict(
    pretrained: bool,
    backbone_weights: str | Path | None,
    width_mult: float,
    batch_norm: bool = False,
) -> dict[str, Tensor] | None:
    """The torchvision ``vgg16`` (or ``vgg16_bn``) state dict to start from, or None.

    ``pretrained``: ImageNet weights via torchvision's weights API; ``backbone_weights``: a local
    ``torch.save``-d state dict of the same layout. They exclude each other and need width 1.
    """
    if not check_backbone_options(pretrained, backbone_weights, width_mult, batch_norm):
        return None
    if pretrained:
        return imagenet_vgg16_bn_state_dict() if batch_norm else imagenet_vgg16_state_dict()
    return load_state_dict_file(backbone_weights)  # type: ignore[arg-type]


def fc_weight(state_dict: dict[str, Tensor], index: int, name: str) -> tuple[Tensor, Tensor]:
    """``classifier.{index}`` weight and bias of a torchvision VGG state dict."""
    try:
        return state_dict[f"classifier.{index}.weight"], state_dict[f"classifier.{index}.bias"]
    except KeyError as error:
        raise SemsegError(f"not a torchvision {name} state dict: no {error.args[0]}") from error


def copy_into(layer: nn.Conv2d, weight: Tensor, bias: Tensor, what: str) -> None:
    """Copy ``weight`` (reshaped to the layer's shape) and ``bias`` into a convolution."""
    if weight.numel() != layer.weight.numel() or bias.shape != layer.bias.shape:
        raise SemsegError(
            f"{what}: weights of shape {tuple(weight.shape)} do not fit {tuple(layer.weight.shape)}"
        )
    with torch.no_grad():
        layer.weight.copy_(weight.reshape(layer.weight.shape))
        layer.bias.copy_(bias)


def identity_conv_(layer: nn.Conv2d) -> nn.Conv2d:
    """Identity initialisation (Yu & Koltun): output channel c copies input channel c at the
    kernel centre, every other weight and the bias are zero."""
    out_channels, in_channels, kh, kw = layer.weight.shape
    with torch.no_grad():
        layer.weight.zero_()
        for channel in range(min(out_channels, in_channels)):
            layer.weight[channel, channel, kh // 2, kw // 2] = 1.0
        if layer.bias is not None:
            layer.bias.zero_()
    return layer


def gaussian_conv_(layer: nn.Conv2d, std: float) -> nn.Conv2d:
    nn.init.normal_(layer.weight, std=std)
    nn.init.zeros_(layer.bias)
    return layer

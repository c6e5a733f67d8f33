"""The VGG16 trunk every VGG-based model here is built on, in torchvision's parameter layout.

Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition",
ICLR 2015 (configuration D: 13 3x3 convolutions in five blocks of 2, 2, 3, 3, 3, each closed by a
2x2 max pool). :func:`vgg16_trunk` builds it with torchvision's ``features.N`` module indices, so
``torchvision.models.vgg16`` / ``vgg16_bn`` ImageNet weights load unchanged at ``width_mult=1``.
The FCN-family variants change only parameter-free pieces (which pooling layers exist and how
they pool: a removed pool is an ``nn.Identity`` at the same index) and the dilation of a block.
Shapes: ``(N, 3, H, W) -> (N, 512w, H/s, W/s)`` with ``w`` the width multiplier and ``s`` the
product of the pools' strides (32 with VGG16's own pools).

Also here: copying torchvision's VGG weights into such a trunk and into convolutional fc layers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from semseg.errors import SemsegError

# torchvision's configuration "D": channels per conv layer, "M" = 2x2 max pooling.
VGG16_LAYOUT: tuple[int | str, ...] = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    "M",
)
VGG16_BLOCKS = 5
"""Conv blocks of VGG16 (2, 2, 3, 3, 3 convolutions), each closed by a pooling layer."""
FC_CHANNELS = 4096
"""Width of VGG16's fc6 and fc7."""


def scaled(channels: int, width_mult: float) -> int:
    """Channel count scaled by ``width_mult``, at least 4."""
    return max(4, int(round(channels * width_mult)))


def vgg16_trunk(
    width_mult: float = 1.0,
    batch_norm: bool = False,
    pools: Sequence[nn.Module] | None = None,
    dilations: Sequence[int] = (1, 1, 1, 1, 1),
    he_init: bool = True,
) -> nn.Sequential:
    """VGG16's 13 3x3 convolutions (each with ReLU, and BN before it with ``batch_norm``) with
    torchvision's module indices.

    ``pools``: the five modules placed where VGG16 has its 2x2 max pools (default: those pools);
    ``dilations``: per block, the dilation (and padding) of its convolutions. With ``he_init``
    each convolution is He initialised (fan-out) as in torchvision's VGG as it is built (without:
    PyTorch's default init, for callers that initialise the whole network afterwards); BN layers
    start as the identity.
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
        if he_init:
            he_init_(conv)
        layers.append(conv)
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_channels))
        layers.append(nn.ReLU(inplace=True))
        in_channels = out_channels
    return nn.Sequential(*layers)


def he_init_(layer: nn.Conv2d) -> nn.Conv2d:
    """He initialisation (fan-out, zero bias), as torchvision's VGG: keeps activations from
    shrinking through many layers, which matters when training from scratch."""
    nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


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


def fc_weight(state_dict: dict[str, Tensor], index: int, name: str) -> tuple[Tensor, Tensor]:
    """``classifier.{index}`` weight and bias of a torchvision VGG state dict."""
    try:
        return state_dict[f"classifier.{index}.weight"], state_dict[f"classifier.{index}.bias"]
    except KeyError as error:
        raise SemsegError(f"not a torchvision {name} state dict: no {error.args[0]}") from error


def copy_into(layer: nn.Conv2d, weight: Tensor, bias: Tensor, what: str, name: str) -> None:
    """Copy ``weight`` (reshaped to the layer's shape) and ``bias`` into a convolution; ``what``
    names the layer and ``name`` the network in the error for weights that do not fit."""
    if weight.numel() != layer.weight.numel() or bias.shape != layer.bias.shape:
        raise SemsegError(
            f"not a torchvision {name} state dict: {what} weights of shape "
            f"{tuple(weight.shape)} do not fit {tuple(layer.weight.shape)}"
        )
    with torch.no_grad():
        layer.weight.copy_(weight.reshape(layer.weight.shape))
        layer.bias.copy_(bias)


__all__ = [
    "FC_CHANNELS",
    "VGG16_BLOCKS",
    "VGG16_LAYOUT",
    "copy_into",
    "fc_weight",
    "he_init_",
    "load_trunk",
    "scaled",
    "vgg16_trunk",
]

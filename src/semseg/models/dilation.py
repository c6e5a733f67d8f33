"""Dilation8: Yu & Koltun's VGG16 front end, alone or with the basic context module.

Yu & Koltun, "Multi-Scale Context Aggregation by Dilated Convolutions", ICLR 2016.

Shapes: ``(N, 3, H, W)`` RGB in [0, 1] to ``(N, num_classes, H, W)`` logits for any H, W; class
scores before the upsampling (``forward_logits``) ``(N, num_classes, H/8, W/8)``.
Registered as ``dilation8-frontend`` and ``dilation8-context``; options ``keep_prob``,
``width_mult``, ``pretrained`` and ``backbone_weights``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from semseg.models.base import SegmentationModel, gaussian_conv_, scores_in_float32
from semseg.models.encoders import backbone_state_dict
from semseg.models.receptive_field import Layer, layers_of
from semseg.models.registry import register_model
from semseg.models.vgg import (
    FC_CHANNELS,
    copy_into,
    fc_weight,
    he_init_,
    load_trunk,
    scaled,
    vgg16_trunk,
)

CONTEXT_DILATIONS = (1, 1, 2, 4, 8, 16, 1)
"""The basic context module's 3x3 layers (Table 1 of the paper; then a 1x1 layer)."""


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


class ContextModule(nn.Sequential):
    """The basic context module (Yu & Koltun, Table 1): ``C`` channels in, ``C`` out.

    Seven 3x3 convolutions with dilations 1, 1, 2, 4, 8, 16, 1 ('same' padding, so the
    resolution is kept), each followed by ReLU, then a 1x1 convolution without ReLU: eight layers,
    receptive field 3, 5, 9, 17, 33, 65, 67, 67 cells. Identity initialisation (each layer copies
    channel c to channel c, zero bias): on a non-negative input the untrained module is exactly
    the identity, so stacking it on a trained front end starts from the front end's output.
    """

    def __init__(self, channels: int) -> None:
        layers: list[nn.Module] = []
        for dilation in CONTEXT_DILATIONS:
            conv = nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation)
            layers += [identity_conv_(conv), nn.ReLU(inplace=True)]
        layers.append(identity_conv_(nn.Conv2d(channels, channels, 1)))
        super().__init__(*layers)


@register_model("dilation8-context", context=True)
@register_model("dilation8-frontend", context=False)
class Dilation8(SegmentationModel):
    """Dilation8 front end (Yu & Koltun, ICLR 2016) on VGG16, optionally with the context module.

    Front end: VGG16 with pool4 and pool5 removed (``nn.Identity`` at torchvision's indices, so
    ``vgg16`` weights load), conv5 dilated by 2, fc6 a 7x7 convolution with dilation 4 and 4096
    channels, fc7 1x1 with 4096, each followed by ReLU and dropout (``keep_prob``), and a 1x1
    ``final`` layer to ``num_classes`` (N(0, 0.001) init, as the authors' code). pool1-3 stay VGG's
    2x2/2 max pools. Unlike the paper's front end (unpadded convolutions on a reflection-padded
    input), convolutions are 'same'-padded, so any input a multiple of 8 gives a stride-8 grid.
    With ``context=True`` the basic :class:`ContextModule` follows ``final``. Class scores at
    output stride 8 are bilinearly upsampled to the input (cell ``i`` centred on pixel
    ``8i + 3.5``: plain ``align_corners=False`` interpolation).

    Output stride 8 (``size_multiple`` 8). Receptive field of one stride-8 score: front end
    380 x 380 input pixels (the paper's 186-pixel margin: 2 x 186 + 8); with the context module
    380 + 66 x 8 = 908 x 908. Parameters at width 1, 2 classes: front end 134,268,738, context
    module 272 more (7 x (2 x 2 x 9 + 2) + 2 x 2 + 2).

    Weights: ``pretrained`` (torchvision's ImageNet ``VGG16_Weights``) or ``backbone_weights`` (a
    local torchvision ``vgg16`` state dict) load conv1-5, and fc6/fc7 reshaped from the fully
    connected layers (the same shapes); ``final`` starts random, the context module as identity.
    A front-end state dict is the context model's without the ``context.*`` entries. The
    backbone is VGG16 only, so the model takes no ``backbone`` option.
    """

    output_stride = 8
    size_multiple = 8

    def __init__(
        self,
        num_classes: int,
        context: bool = False,
        keep_prob: float = 0.5,
        width_mult: float = 1.0,
        pretrained: bool = False,
        backbone_weights: str | Path | None = None,
    ) -> None:
        super().__init__(num_classes)
        state = backbone_state_dict("vgg16", pretrained, backbone_weights, width_mult)
        pools: list[nn.Module] = [nn.MaxPool2d(2, stride=2) for _ in range(3)]
        pools += [nn.Identity(), nn.Identity()]
        self.features = vgg16_trunk(width_mult, pools=pools, dilations=(1, 1, 1, 1, 2))
        conv5_channels = scaled(512, width_mult)
        fc_channels = scaled(FC_CHANNELS, width_mult)
        self.fc6 = nn.Conv2d(conv5_channels, fc_channels, 7, padding=12, dilation=4)
        self.fc7 = nn.Conv2d(fc_channels, fc_channels, 1)
        for layer in (self.fc6, self.fc7):
            he_init_(layer)
        self.relu = nn.ReLU(inplace=True)
        self.drop6 = nn.Dropout(p=1.0 - keep_prob)
        self.drop7 = nn.Dropout(p=1.0 - keep_prob)
        self.final = gaussian_conv_(nn.Conv2d(fc_channels, num_classes, 1), std=0.001)
        self.context = ContextModule(num_classes) if context else None
        self.receptive_field = 908 if context else 380
        if state is not None:
            self.load_torchvision_state_dict(state)

    def load_torchvision_state_dict(self, state_dict: dict[str, Tensor]) -> None:
        """conv1-5, fc6 and fc7 from a torchvision ``vgg16`` state dict."""
        load_trunk(self.features, state_dict, "VGG16")
        copy_into(self.fc6, *fc_weight(state_dict, 0, "VGG16"), "fc6", "VGG16")
        copy_into(self.fc7, *fc_weight(state_dict, 3, "VGG16"), "fc7", "VGG16")

    def forward_logits(self, x: Tensor) -> Tensor:
        """Class scores at output stride 8 (after the context module, if any)."""
        x = self.features(x)
        x = self.drop6(self.relu(self.fc6(x)))
        x = self.drop7(self.relu(self.fc7(x)))
        x = scores_in_float32(self.final, x)
        return x if self.context is None else self.context(x)

    def forward_normalized(self, x: Tensor) -> Tensor:
        size = (x.shape[-2], x.shape[-1])
        return F.interpolate(
            self.forward_logits(x), size=size, mode="bilinear", align_corners=False
        )

    def spatial_layers(self) -> list[Layer]:
        """The spatial layers up to the stride-8 scores, for receptive-field arithmetic."""
        modules: list[nn.Module] = [self.features, self.fc6, self.fc7, self.final]
        if self.context is not None:
            modules.append(self.context)
        return layers_of(modules)


__all__ = ["CONTEXT_DILATIONS", "ContextModule", "Dilation8"]

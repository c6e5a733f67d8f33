"""DeepLab-LargeFOV: VGG16 at output stride 8 with dilated ("atrous") convolutions.

Chen, Papandreou, Kokkinos, Murphy & Yuille, "Semantic Image Segmentation with Deep Convolutional
Nets and Fully Connected CRFs", ICLR 2015 (DeepLab v1). The fully connected CRF that the paper
applies to the upsampled scores is :mod:`semseg.inference.crf` (``--crf`` on ``semseg evaluate``
and ``semseg predict``).

Shapes: ``(N, 3, H, W)`` RGB in [0, 1] to ``(N, num_classes, H, W)`` logits for any H, W; class
scores before the upsampling (``forward_logits``) ``(N, num_classes, H/8, W/8)``.
Registered as ``deeplab-largefov``; options ``keep_prob``, ``width_mult``, ``pretrained`` and
``backbone_weights``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from semseg.errors import SemsegError
from semseg.models.base import SegmentationModel, gaussian_conv_
from semseg.models.encoders import backbone_state_dict
from semseg.models.receptive_field import Layer, layers_of
from semseg.models.registry import register_model
from semseg.models.vgg import copy_into, fc_weight, he_init_, load_trunk, scaled, vgg16_trunk

FC_CHANNELS = 1024
FC6_DILATION = 12
FILTER_STEP = 4  # 4096 -> 1024 filters: keep every 4th
TAP_STEP = 3  # 7x7 -> 3x3 spatial taps: keep every 3rd (rows and columns 0, 3, 6)


def upsample_aligned(logits: Tensor, stride: int, size: tuple[int, int]) -> Tensor:
    """Bilinear upsampling of logits whose cell ``i`` is centred on input pixel ``stride * i``.

    DeepLab's pools (3x3, stride 2, padding 1) keep cells centred on pixels ``0, 2, 4, ...``, so
    output pixel ``y`` reads logit coordinate ``y / stride`` exactly (align_corners on the span
    ``0 .. stride * (h - 1)``); the last ``stride - 1`` rows and columns repeat the edge.
    """
    h, w = logits.shape[-2:]
    span = (stride * (h - 1) + 1, stride * (w - 1) + 1)
    out = F.interpolate(logits, size=span, mode="bilinear", align_corners=True)
    out = F.pad(out, (0, size[1] - span[1], 0, size[0] - span[0]), mode="replicate")
    return out


def decimate_fc6(weight: Tensor) -> Tensor:
    """VGG16's fc6 (4096 x 25088) as DeepLab-LargeFOV's 1024 x 512 x 3 x 3 convolution.

    As DeepLab: every 4th filter, and of each filter's 7 x 7 taps every 3rd row and column
    (0, 3, 6), which is why the layer is dilated 3x more (12 at stride 8 = 4 x 3: the original
    7 x 7 fc6 read stride-32 cells, i.e. 4 cells apart at stride 8).
    """
    return weight.reshape(-1, 512, 7, 7)[::FILTER_STEP, :, ::TAP_STEP, ::TAP_STEP]


@register_model("deeplab-largefov")
class DeepLabLargeFOV(SegmentationModel):
    """DeepLab-LargeFOV (Chen et al., ICLR 2015) on VGG16 in torchvision's parameter layout.

    VGG16's 13 convolutions; pool1-3 are 3x3 max pools with stride 2 and padding 1 (DeepLab's
    prototxt; the stride-2 grid stays centred on the input pixels 0, 2, 4, ...), pool4 and pool5
    are 3x3 max pools with stride 1 and padding 1, conv5 is dilated by 2 so that it sees what it
    saw at stride 16; fc6 is a 3x3 convolution with 1024 channels and dilation 12 (the large field
    of view), fc7 a 1x1 convolution with 1024 channels, each followed by ReLU and dropout
    (``keep_prob``); fc8 is a 1x1 convolution to ``num_classes`` (N(0, 0.01) init). Logits at
    output stride 8 are bilinearly upsampled to the input (:func:`upsample_aligned`).

    Output stride 8 (``size_multiple`` 8). Receptive field of one stride-8 logit cell: 419 x 419
    input pixels (the paper's Table 2 gives 224, the nominal field of view of ImageNet VGG16's fc6
    that LargeFOV keeps, not the exact extent). Parameters at width 1: 20,485,954 for 2 classes,
    20,505,429 for 21 (the paper: 20.5M).

    Weights: ``pretrained`` (torchvision's ImageNet ``VGG16_Weights``) or ``backbone_weights`` (a
    local torchvision ``vgg16`` state dict) load conv1-conv5 unchanged, and fc6/fc7 by DeepLab's
    decimation of the 4096-d fully connected layers (:func:`decimate_fc6`; fc7 keeps every 4th row
    and column of VGG16's fc7); fc8 starts random. The backbone is VGG16 only, so the model takes
    no ``backbone`` option.
    """

    receptive_field = 419
    output_stride = 8
    size_multiple = 8

    def __init__(
        self,
        num_classes: int,
        keep_prob: float = 0.5,
        width_mult: float = 1.0,
        pretrained: bool = False,
        backbone_weights: str | Path | None = None,
    ) -> None:
        super().__init__(num_classes)
        state = backbone_state_dict("vgg16", pretrained, backbone_weights, width_mult)
        pools = [nn.MaxPool2d(3, stride=2, padding=1) for _ in range(3)]
        pools += [nn.MaxPool2d(3, stride=1, padding=1) for _ in range(2)]
        self.features = vgg16_trunk(width_mult, pools=pools, dilations=(1, 1, 1, 1, 2))
        conv5_channels = scaled(512, width_mult)
        fc_channels = scaled(FC_CHANNELS, width_mult)
        self.fc6 = nn.Conv2d(
            conv5_channels, fc_channels, 3, padding=FC6_DILATION, dilation=FC6_DILATION
        )
        self.fc7 = nn.Conv2d(fc_channels, fc_channels, 1)
        for layer in (self.fc6, self.fc7):
            he_init_(layer)
        self.relu = nn.ReLU(inplace=True)
        self.drop6 = nn.Dropout(p=1.0 - keep_prob)
        self.drop7 = nn.Dropout(p=1.0 - keep_prob)
        self.fc8 = gaussian_conv_(nn.Conv2d(fc_channels, num_classes, 1), std=0.01)
        if state is not None:
            self.load_torchvision_state_dict(state)

    def load_torchvision_state_dict(self, state_dict: dict[str, Tensor]) -> None:
        """conv1-5 from a torchvision ``vgg16`` state dict; fc6/fc7 decimated as DeepLab."""
        load_trunk(self.features, state_dict, "VGG16")
        fc6_weight, fc6_bias = fc_weight(state_dict, 0, "VGG16")
        fc7_weight, fc7_bias = fc_weight(state_dict, 3, "VGG16")
        if fc6_weight.shape != (4096, 512 * 7 * 7) or fc7_weight.shape != (4096, 4096):
            raise SemsegError("not a torchvision VGG16 state dict: fc6/fc7 are not 4096-d")
        with torch.no_grad():
            fc6 = decimate_fc6(fc6_weight)
            copy_into(self.fc6, fc6, fc6_bias[::FILTER_STEP], "fc6", "VGG16")
            fc7 = fc7_weight[::FILTER_STEP, ::FILTER_STEP]
            copy_into(self.fc7, fc7, fc7_bias[::FILTER_STEP], "fc7", "VGG16")

    def forward_logits(self, x: Tensor) -> Tensor:
        """Class scores at output stride 8."""
        x = self.features(x)
        x = self.drop6(self.relu(self.fc6(x)))
        x = self.drop7(self.relu(self.fc7(x)))
        return self.fc8(x)

    def forward_normalized(self, x: Tensor) -> Tensor:
        size = (x.shape[-2], x.shape[-1])
        return upsample_aligned(self.forward_logits(x), self.output_stride, size)

    def spatial_layers(self) -> list[Layer]:
        """The spatial layers up to the stride-8 logits, for receptive-field arithmetic."""
        return layers_of([self.features, self.fc6, self.fc7, self.fc8])


__all__ = ["DeepLabLargeFOV", "decimate_fc6", "upsample_aligned"]

"""Fully convolutional networks on VGG16: FCN-32s, FCN-16s, FCN-8s and the exercise's FCN-8.

Long, Shelhamer & Darrell, "Fully Convolutional Networks for Semantic Segmentation", CVPR 2015.

All models map ``(N, 3, H, W)`` RGB in [0, 1] to ``(N, num_classes, H, W)`` logits for any H, W.
Registered as ``fcn32s``, ``fcn16s``, ``fcn8s`` (:class:`FCN`) and ``fcn8s-seed``
(:class:`FCN8sSeed`); options ``backbone`` (:mod:`semseg.models.encoders`), ``keep_prob``,
``width_mult``, ``pretrained`` and ``backbone_weights``.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from semseg.errors import SemsegError
from semseg.models.base import (
    SegmentationModel,
    bilinear_upsampler,
    crop_like,
    scores_in_float32,
)
from semseg.models.encoders import VGGEncoder, build_encoder
from semseg.models.receptive_field import Layer, layers_of, transposed
from semseg.models.registry import register_model

FINAL_STRIDE = {"32s": 32, "16s": 16, "8s": 8}


def zero_conv1x1(in_channels: int, out_channels: int) -> nn.Conv2d:
    """A 1x1 class-score convolution initialised to zero, as in Long et al."""
    layer = nn.Conv2d(in_channels, out_channels, kernel_size=1)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


@register_model("fcn32s", variant="32s")
@register_model("fcn16s", variant="16s")
@register_model("fcn8s", variant="8s")
class FCN(SegmentationModel):
    """FCN-32s / FCN-16s / FCN-8s (Long et al., CVPR 2015) on a VGG16 (or another) encoder.

    Scores from fc7 (stride 32) are upsampled 2x by a learned transposed convolution
    (bilinear init), cropped and summed with 1x1 scores of pool4 (FCN-16s), again with pool3
    (FCN-8s), then upsampled to the input by a transposed convolution fixed to bilinear
    interpolation (kernel 2s, stride s; s = 32, 16 or 8), as the paper prescribes.
    ``backbone`` picks the encoder (:mod:`semseg.models.encoders`); its stride 8/16/32 maps play
    pool3, pool4 and fc7.

    Shapes: ``(N, 3, H, W) -> (N, num_classes, H, W)``; before the final upsampling
    (:meth:`forward_logits`) ``(N, num_classes, H/s, W/s)``.

    Receptive field of one score cell before the final upsampling, on VGG16: FCN-32s 404 x 404
    input pixels (VGG16 to pool5: 212, plus fc6's 7 taps 32 pixels apart); FCN-16s 436 x 436 (the
    learned 2x upsampling, kernel 4, mixes two neighbouring stride-32 cells); FCN-8s 436 to
    468 x 468 depending on the cell's place in the stride-32 grid (two such upsamplings). The
    skips from pool4 (100 pixels) and pool3 (44) see inside that field, so :meth:`spatial_layers`
    is the path through fc7.
    """

    receptive_field_by_variant = {"32s": 404, "16s": 436, "8s": 468}

    def __init__(
        self,
        num_classes: int,
        variant: str = "8s",
        keep_prob: float = 0.5,
        width_mult: float = 1.0,
        pretrained: bool = False,
        backbone_weights: str | Path | None = None,
        backbone: str = "vgg16",
    ) -> None:
        super().__init__(num_classes)
        if variant not in FINAL_STRIDE:
            raise SemsegError(f"unknown FCN variant {variant!r}")
        self.variant = variant
        self.encoder = build_encoder(backbone, keep_prob, width_mult, pretrained, backbone_weights)
        self.score_fr = zero_conv1x1(self.encoder.fc7_channels, num_classes)
        if variant in ("16s", "8s"):
            self.score_pool4 = zero_conv1x1(self.encoder.pool4_channels, num_classes)
            self.upscore2 = bilinear_upsampler(num_classes, 2)
        if variant == "8s":
            self.score_pool3 = zero_conv1x1(self.encoder.pool3_channels, num_classes)
            self.upscore_pool4 = bilinear_upsampler(num_classes, 2)
        self.final_stride = FINAL_STRIDE[variant]
        self.output_stride = self.final_stride
        self.receptive_field = self.receptive_field_by_variant[variant]
        self.upscore_final = bilinear_upsampler(num_classes, self.final_stride, learnable=False)

    def forward_logits(self, x: Tensor) -> Tensor:
        """Class scores at the output stride (32, 16 or 8), before the final upsampling."""
        features = self.encoder(x)
        score = scores_in_float32(self.score_fr, features.fc7)
        if self.variant in ("16s", "8s"):
            pool4_score = self.score_pool4(features.pool4)
            score = crop_like(self.upscore2(score), pool4_score, offset=1) + pool4_score
        if self.variant == "8s":
            pool3_score = self.score_pool3(features.pool3)
            score = crop_like(self.upscore_pool4(score), pool3_score, offset=1) + pool3_score
        return score

    def forward_normalized(self, x: Tensor) -> Tensor:
        score = self.forward_logits(x)
        return crop_like(self.upscore_final(score), x, offset=self.final_stride // 2)

    def spatial_layers(self) -> list[Layer]:
        """The path through fc7 to the scores of :meth:`forward_logits` (VGG encoders only), for
        receptive-field arithmetic: the skips' fields lie inside it."""
        encoder = self.encoder
        if not isinstance(encoder, VGGEncoder):
            raise ValueError(f"no layer table for the {encoder.arch} encoder")
        layers = layers_of([encoder.features, encoder.fc6, encoder.fc7, self.score_fr])
        for name in ("upscore2", "upscore_pool4"):
            upsampler = getattr(self, name, None)
            if upsampler is not None:  # each is cropped from offset 1 (see forward_logits)
                layers.append(transposed(upsampler.kernel_size[0], upsampler.stride[0], crop=1))
        return layers


@register_model("fcn8s-seed")
class FCN8sSeed(SegmentationModel):
    """The reference exercise's FCN-8 decoder on VGG16 (after Long et al., CVPR 2015).

    1x1 convolution of layer 7 to the class count; transposed conv (k4, s2) to pool4's channels,
    plus pool4; transposed conv (k4, s2) to pool3's channels, plus pool3; transposed conv
    (k16, s8) to the class count. The decoder is initialised with N(0, 0.01) weights, as in the
    exercise. Shapes: ``(N, 3, H, W) -> (N, num_classes, H, W)``.
    """

    def __init__(
        self,
        num_classes: int,
        keep_prob: float = 0.5,
        width_mult: float = 1.0,
        pretrained: bool = False,
        backbone_weights: str | Path | None = None,
        backbone: str = "vgg16",
    ) -> None:
        super().__init__(num_classes)
        self.encoder = build_encoder(backbone, keep_prob, width_mult, pretrained, backbone_weights)
        pool4_channels = self.encoder.pool4_channels
        pool3_channels = self.encoder.pool3_channels
        self.layer7_score = nn.Conv2d(self.encoder.fc7_channels, num_classes, kernel_size=1)
        self.up_to_pool4 = nn.ConvTranspose2d(num_classes, pool4_channels, 4, stride=2)
        self.up_to_pool3 = nn.ConvTranspose2d(pool4_channels, pool3_channels, 4, stride=2)
        self.up_to_input = nn.ConvTranspose2d(pool3_channels, num_classes, 16, stride=8)
        for layer in (self.layer7_score, self.up_to_pool4, self.up_to_pool3, self.up_to_input):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward_normalized(self, x: Tensor) -> Tensor:
        features = self.encoder(x)
        score = scores_in_float32(self.layer7_score, features.fc7)
        score = crop_like(self.up_to_pool4(score), features.pool4, offset=1) + features.pool4
        score = crop_like(self.up_to_pool3(score), features.pool3, offset=1) + features.pool3
        return crop_like(self.up_to_input(score), x, offset=4)


def count_parameters(model: nn.Module) -> int:
    """Number of parameters, trainable or not."""
    return sum(parameter.numel() for parameter in model.parameters())


__all__ = ["FCN", "FCN8sSeed", "count_parameters"]

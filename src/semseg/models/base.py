"""Shared pieces of the segmentation models: input normalisation, padding, bilinear kernels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SegmentationModel(nn.Module):
    """Base class: takes RGB images in [0, 1], returns per-class logits of the same size.

    Subclasses implement :meth:`forward_normalized` on ImageNet-normalised input whose height and
    width are multiples of ``size_multiple``; this class pads the input (bottom and right, with
    zeros after normalisation, i.e. the mean colour) and crops the logits back, so every model
    accepts any input size. Shapes: ``(N, 3, H, W) -> (N, num_classes, H, W)``.
    """

    size_multiple: int = 32

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward_normalized(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, image: Tensor) -> Tensor:
        height, width = image.shape[-2:]
        x = (image - self.mean) / self.std
        pad_bottom = -height % self.size_multiple
        pad_right = -width % self.size_multiple
        if pad_bottom or pad_right:
            x = F.pad(x, (0, pad_right, 0, pad_bottom))
        logits = self.forward_normalized(x)
        return logits[..., :height, :width]


def bilinear_kernel(in_channels: int, out_channels: int, kernel_size: int) -> Tensor:
    """Weights ``(in, out, k, k)`` making a transposed convolution exact bilinear upsampling.

    Channel ``c`` maps to channel ``c`` only (for ``c < min(in, out)``); other pairs are zero.
    """
    factor = (kernel_size + 1) // 2
    centre = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    taps = 1 - (torch.arange(kernel_size, dtype=torch.float64) - centre).abs() / factor
    kernel_2d = (taps[:, None] * taps[None, :]).float()
    weight = torch.zeros(in_channels, out_channels, kernel_size, kernel_size)
    for channel in range(min(in_channels, out_channels)):
        weight[channel, channel] = kernel_2d
    return weight


def bilinear_upsampler(channels: int, stride: int, learnable: bool = True) -> nn.ConvTranspose2d:
    """A ``stride``-times transposed convolution (kernel ``2*stride``) initialised as bilinear.

    Its output is ``(h - 1) * stride + 2 * stride`` long; :func:`crop_like` with offset
    ``stride // 2`` aligns it with the finer grid (pixel centres match exactly).
    """
    layer = nn.ConvTranspose2d(channels, channels, 2 * stride, stride=stride, bias=False)
    with torch.no_grad():
        layer.weight.copy_(bilinear_kernel(channels, channels, 2 * stride))
    layer.weight.requires_grad_(learnable)
    return layer


def gaussian_conv_(layer: nn.Conv2d, std: float) -> nn.Conv2d:
    """N(0, std^2) weights and zero bias (the class-score layers of DeepLab and Dilation)."""
    nn.init.normal_(layer.weight, std=std)
    nn.init.zeros_(layer.bias)
    return layer


def scores_in_float32(layer: nn.Module, x: Tensor) -> Tensor:
    """``layer(x)`` in float32 where CPU autocast would run it in bfloat16.

    For the class-score convolution on VGG16's 4096 fc7 channels: oneDNN's AMX bfloat16
    weight-gradient kernel corrupts the heap for a 1x1 convolution from 4096 channels to a
    handful of classes (batch 4 or more; the process aborts with "corrupted double-linked list"
    in ``--precision bf16-mixed`` training). The layer is a few thousand multiply-adds per pixel
    of the stride-32 map, so float32 costs next to nothing. A layer whose weights are already
    bfloat16 (the compiled bf16 inference paths) runs as autocast has it.
    """
    weight = getattr(layer, "weight", None)
    float32_weights = weight is None or weight.dtype == torch.float32
    if x.device.type == "cpu" and torch.is_autocast_enabled("cpu") and float32_weights:
        with torch.autocast("cpu", enabled=False):
            return layer(x.float())
    return layer(x)


def crop_like(x: Tensor, reference: Tensor, offset: int) -> Tensor:
    """Crop ``x`` spatially from ``offset`` to the height and width of ``reference``."""
    height, width = reference.shape[-2:]
    if x.shape[-2] < offset + height or x.shape[-1] < offset + width:
        raise ValueError(
            f"cannot crop {tuple(x.shape[-2:])} at offset {offset} to {(height, width)}"
        )
    return x[..., offset : offset + height, offset : offset + width]

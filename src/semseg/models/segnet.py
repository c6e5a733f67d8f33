"""SegNet: a VGG16-BN encoder and a decoder that upsamples with the encoder's max-pooling indices.

Badrinarayanan, Kendall & Cipolla, "SegNet: A Deep Convolutional Encoder-Decoder Architecture for
Image Segmentation", IEEE TPAMI 2017.

Shapes: ``(N, 3, H, W)`` RGB in [0, 1] to ``(N, num_classes, H, W)`` logits for any H, W (output
stride 1). Registered as ``segnet``; options ``backbone``, ``width_mult``, ``pretrained`` and
``backbone_weights`` (no ``keep_prob``: SegNet has no dropout). Exports to ONNX
(:class:`MaxUnpool2x2`).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from semseg.errors import SemsegError
from semseg.models.base import SegmentationModel
from semseg.models.encoders import backbone_state_dict
from semseg.models.receptive_field import Layer, layers_of, upsample
from semseg.models.registry import register_model
from semseg.models.vgg import VGG16_BLOCKS, he_init_, load_trunk, scaled, vgg16_trunk

# Decoder blocks, deepest first: output channels of each conv-BN-ReLU, mirroring the encoder
# (block 5: 512 512 512; block 4: 512 512 256; ...; block 1: 64, then the classifier).
DECODER_LAYOUT: tuple[tuple[int, ...], ...] = (
    (512, 512, 512),
    (512, 512, 256),
    (256, 256, 128),
    (128, 64),
    (64,),
)
BACKBONES = ("vgg16", "vgg16_bn")

# Under torch.use_deterministic_algorithms(warn_only=True) (semseg's trainer) max unpooling warns
# that it may be nondeterministic: only when two values share an index, which the indices of a
# non-overlapping 2x2/2 max pool never do.
warnings.filterwarnings(
    "ignore",
    message="max_unpooling2d_forward_out does not have a deterministic implementation",
    category=UserWarning,
)


def conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    conv = he_init_(nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1))
    return [conv, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]


def unpool_by_mask(x: Tensor, indices: Tensor) -> Tensor:
    """2x2/2 max unpooling written with shape-generic operations (no scatter), for export.

    Output cell ``(i, j)`` takes the value of pooled cell ``(i // 2, j // 2)`` when that cell's
    argmax index (a flat index into the ``2h x 2w`` plane, as ``nn.MaxPool2d`` returns it) is
    ``i * 2w + j``, and zero otherwise: exactly ``nn.MaxUnpool2d(2, 2)`` for non-overlapping
    windows, whose indices never collide. ``(N, C, h, w) -> (N, C, 2h, 2w)``.
    """
    n, c, h, w = x.shape
    up = x[:, :, :, None, :, None].expand(n, c, h, 2, w, 2).reshape(n, c, 2 * h, 2 * w)
    index = indices[:, :, :, None, :, None].expand(n, c, h, 2, w, 2).reshape(n, c, 2 * h, 2 * w)
    position = torch.arange(4 * h * w, device=x.device).reshape(2 * h, 2 * w)
    return torch.where(index == position, up, torch.zeros_like(up))


class MaxUnpool2x2(nn.MaxUnpool2d):
    """``nn.MaxUnpool2d(2, 2)`` that also exports to ONNX.

    torch's ONNX exporter has no rule for ``max_unpool2d``; while exporting, the same values come
    from :func:`unpool_by_mask` (standard Expand / Equal / Where operators). The output size is
    then always twice the input's, which is what SegNet's decoder asks for: its input is padded
    to a multiple of 32, so every pooled map halves an even size.
    """

    def __init__(self) -> None:
        super().__init__(kernel_size=2, stride=2)

    def forward(self, x: Tensor, indices: Tensor, output_size: list[int] | None = None) -> Tensor:
        if torch.onnx.is_in_onnx_export():
            return unpool_by_mask(x, indices)
        return super().forward(x, indices, output_size)


@register_model("segnet")
class SegNet(SegmentationModel):
    """SegNet (Badrinarayanan et al., TPAMI 2017) on torchvision's ``vgg16_bn`` feature layout.

    Encoder: VGG16's 13 conv-BN-ReLU layers in five blocks, each closed by a 2x2/2 max pool that
    also returns its argmax indices (``features.N`` indices as torchvision's ``vgg16_bn``, so its
    ImageNet weights load). Decoder, deepest block first: ``nn.MaxUnpool2d`` with the stored
    indices of the matching encoder pool (values go back to the positions their maxima came from,
    zeros elsewhere), then that block's mirrored 3x3 conv-BN-ReLU layers (512-512-512,
    512-512-256, 256-256-128, 128-64, 64), and a final 3x3 convolution to ``num_classes`` without
    BN or ReLU (the paper's softmax classifier). No skip connections, no learned upsampling.

    Output stride 1 (full-resolution logits); input padded to a multiple of 32 and cropped back by
    :class:`SegmentationModel`. Receptive field of one output pixel: up to 404 x 404 input pixels
    (372 for pixels near the edges of their 32-pixel cells: with unpooling, what a decoder
    convolution sees depends on where it sits in the pooling grid; an unpooled value can change
    with any pixel of its pooling window), from the 26 3x3 convolutions and five 2x2 pools of
    :meth:`spatial_layers`. Parameters at width 1, 2 classes: 29,444,162 (encoder 14,723,136 =
    torchvision ``vgg16_bn().features``; the paper reports 29.5M).

    ``backbone``: ``vgg16_bn`` (or ``vgg16``, naming the family: SegNet's encoder always has BN);
    ``pretrained`` loads torchvision's ImageNet ``VGG16_BN_Weights``, ``backbone_weights`` a local
    ``vgg16_bn`` state dict; the decoder starts from He initialisation. SegNet has no dropout
    (that is Bayesian SegNet), so it takes no ``keep_prob``.
    """

    receptive_field = 404
    output_stride = 1

    def __init__(
        self,
        num_classes: int,
        width_mult: float = 1.0,
        pretrained: bool = False,
        backbone_weights: str | Path | None = None,
        backbone: str = "vgg16_bn",
    ) -> None:
        super().__init__(num_classes)
        if backbone not in BACKBONES:
            raise SemsegError(
                f"unknown backbone {backbone!r} for segnet; available: {', '.join(BACKBONES)}"
            )
        state = backbone_state_dict("vgg16_bn", pretrained, backbone_weights, width_mult)
        pools = [
            nn.MaxPool2d(kernel_size=2, stride=2, return_indices=True) for _ in range(VGG16_BLOCKS)
        ]
        self.features = vgg16_trunk(width_mult, batch_norm=True, pools=pools)
        self.unpool = MaxUnpool2x2()
        blocks = []
        in_channels = scaled(512, width_mult)
        for layout in DECODER_LAYOUT:
            layers: list[nn.Module] = []
            for channels in layout:
                out_channels = scaled(channels, width_mult)
                layers.extend(conv_bn_relu(in_channels, out_channels))
                in_channels = out_channels
            blocks.append(nn.Sequential(*layers))
        self.decoder = nn.ModuleList(blocks)
        self.classifier = nn.Conv2d(in_channels, num_classes, kernel_size=3, padding=1)
        if state is not None:
            load_trunk(self.features, state, "vgg16_bn")

    def encode(self, x: Tensor) -> tuple[Tensor, list[Tensor], list[tuple[int, int]]]:
        """Encoder output, the five pools' indices and their input sizes (shallowest first)."""
        indices: list[Tensor] = []
        sizes: list[tuple[int, int]] = []
        for layer in self.features:
            if isinstance(layer, nn.MaxPool2d):
                sizes.append((x.shape[-2], x.shape[-1]))
                x, index = layer(x)
                indices.append(index)
            else:
                x = layer(x)
        return x, indices, sizes

    def forward_normalized(self, x: Tensor) -> Tensor:
        x, indices, sizes = self.encode(x)
        for block, index, size in zip(
            self.decoder, reversed(indices), reversed(sizes), strict=True
        ):
            x = block(self.unpool(x, index, output_size=size))
        return self.classifier(x)

    def spatial_layers(self) -> list[Layer]:
        """The network's spatial layers in order, for receptive-field arithmetic."""
        layers = layers_of(self.features)
        for block in self.decoder:
            layers.append(upsample(2))
            layers.extend(layers_of(block))
        return layers + layers_of([self.classifier])


__all__ = ["MaxUnpool2x2", "SegNet", "unpool_by_mask"]

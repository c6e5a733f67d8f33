"""Hypercolumns with location-specific classifiers (the whole-image form).

Hariharan, Arbelaez, Girshick & Malik, "Hypercolumns for Object Segmentation and Fine-grained
Localization", CVPR 2015. The hypercolumn of a pixel is the stack of the activations above it in
several layers of a CNN. The paper's efficient form (its Section 3.3 and Figure 2) is used: each
layer's map gets its own 1x1 convolution at its own resolution, is upsampled bilinearly and the
results are summed, which equals one linear map of the upsampled, concatenated hypercolumn
(bilinear upsampling and 1x1 convolutions are both linear). A non-linearity follows, then
``K x K`` location-specific classifiers: the image is divided into a ``K x K`` grid, each cell
has its own classifier, and the scores at a pixel are the bilinear interpolation of the
classifiers of the (up to four) cell centres around it, with the weights of bilinear
interpolation between the centres (a pixel outside the centres' span takes the nearest ones).
With ``K = 1`` this is one classifier for every pixel.

Shapes: ``(N, 3, H, W)`` RGB in [0, 1] to ``(N, num_classes, H, W)`` logits for any H, W.
Encoder stages: the last stage at strides 4, 8, 16 and 32 of a registry encoder
(:mod:`semseg.models.encoders`: ResNet-18 layer1..layer4; VGG16 pool2, pool3, pool4 and fc7, the
paper's pool2/conv4/fc7 family), each ``(N, C_s, H/s, W/s)``; each 1x1-projected to ``D``
channels (``D = 128 * width_mult``), upsampled to stride 4 and summed into the hypercolumn map
``(N, D, H/4, W/4)``, then BN and ReLU; one 1x1 convolution gives the ``K * K`` classifiers'
scores ``(N, K*K*num_classes, H/4, W/4)``, which are upsampled bilinearly to ``(H, W)`` and mixed
per pixel by the grid weights (:func:`grid_weights`) into ``(N, num_classes, H, W)``.

The ``K x K`` grid spans the network's input frame: the image padded at the bottom and right to a
multiple of 32 (less than 32 pixels; none at sizes that are multiples of 32, such as CamVid's
240 x 320 training size). Registered as ``hypercolumn``; options ``grid`` (K, default 2),
``backbone`` (default ``vgg16``, the paper's network; the CamVid recipe picks
``mobilenet_v3_large`` and the KITTI recipe ``resnet18``), ``keep_prob``, ``width_mult``,
``pretrained`` and ``backbone_weights``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from semseg.errors import SemsegError
from semseg.models.base import SegmentationModel
from semseg.models.encoders import build_encoder, tap
from semseg.models.registry import register_model

HYPERCOLUMN_STRIDES = (4, 8, 16, 32)
HIDDEN_CHANNELS = 128
DEFAULT_GRID = 2
MAX_GRID = 16


def grid_weights(grid: int, height: int, width: int, like: Tensor) -> Tensor:
    """Bilinear weights ``(1, K*K, H, W)`` of the ``K x K`` cell centres at every pixel.

    Cell ``(i, j)`` (index ``i * K + j``) is centred on ``((i + 1/2) H / K, (j + 1/2) W / K)``
    in pixel-centre coordinates; pixel ``y`` lies at grid coordinate
    ``u = (y + 1/2) K / H - 1/2``, clamped to ``[0, K - 1]``, and takes weight ``1 - |u - i|``
    from the two centres around it. That is bilinear upsampling (``align_corners=False``) of the
    ``K x K`` one-hot maps, which is how it is computed (so an ONNX export keeps H, W dynamic).
    """
    basis = torch.eye(grid * grid, dtype=like.dtype, device=like.device)
    basis = basis.reshape(1, grid * grid, grid, grid)
    return F.interpolate(basis, size=(height, width), mode="bilinear", align_corners=False)


def mix_grid(scores: Tensor, grid: int, num_classes: int) -> Tensor:
    """Per-pixel mix ``(N, C, H, W)`` of the classifiers' scores ``(N, K*K*C, H, W)`` (channel
    ``k * C + c``: classifier ``k``, class ``c``). With ``K = 1`` the scores are returned as
    they are (a plain per-pixel classifier, exactly)."""
    if grid == 1:
        return scores
    batch, _, height, width = scores.shape
    per_cell = scores.reshape(batch, grid * grid, num_classes, height, width)
    weights = grid_weights(grid, height, width, scores).unsqueeze(2)  # (1, K*K, 1, H, W)
    return (per_cell * weights).sum(dim=1)


@register_model("hypercolumn")
class Hypercolumn(SegmentationModel):
    """Hypercolumn features with ``K x K`` location-specific classifiers (Hariharan et al., CVPR
    2015); see the module docstring for the layers and shapes."""

    size_multiple = 32
    output_stride = 4

    def __init__(
        self,
        num_classes: int,
        grid: int = DEFAULT_GRID,
        backbone: str = "vgg16",
        keep_prob: float = 0.5,
        width_mult: float = 1.0,
        pretrained: bool = False,
        backbone_weights: str | Path | None = None,
    ) -> None:
        super().__init__(num_classes)
        if not 1 <= int(grid) <= MAX_GRID:
            raise SemsegError(f"hypercolumn grid must be in 1..{MAX_GRID}, got {grid}")
        self.grid = int(grid)
        self.encoder = build_encoder(backbone, keep_prob, width_mult, pretrained, backbone_weights)
        info = self.encoder.feature_info
        self._stage_index = tuple(
            max(i for i, stage in enumerate(info) if stage.stride == stride)
            for stride in HYPERCOLUMN_STRIDES
        )
        hidden = max(8, round(HIDDEN_CHANNELS * width_mult))
        self.project = nn.ModuleList(
            nn.Conv2d(tap(info, stride).channels, hidden, kernel_size=1)
            for stride in HYPERCOLUMN_STRIDES
        )
        self.norm = nn.BatchNorm2d(hidden)
        self.relu = nn.ReLU(inplace=True)
        self.classifier = nn.Conv2d(hidden, self.grid * self.grid * num_classes, kernel_size=1)
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    def hypercolumns(self, x: Tensor) -> Tensor:
        """The hypercolumn map ``(N, D, H/4, W/4)`` after BN and ReLU."""
        stages = self.encoder.forward_stages(x)
        finest = stages[self._stage_index[0]]
        size = (finest.shape[-2], finest.shape[-1])
        total = self.project[0](finest)
        for index, project in zip(self._stage_index[1:], self.project[1:], strict=True):
            projected = project(stages[index])
            total = total + F.interpolate(
                projected, size=size, mode="bilinear", align_corners=False
            )
        return self.relu(self.norm(total))

    def grid_scores(self, x: Tensor) -> Tensor:
        """Every classifier's scores at every pixel, ``(N, K*K*C, H, W)`` (normalised input)."""
        scores = self.classifier(self.hypercolumns(x))
        size = (x.shape[-2], x.shape[-1])
        return F.interpolate(scores, size=size, mode="bilinear", align_corners=False)

    def forward_normalized(self, x: Tensor) -> Tensor:
        return mix_grid(self.grid_scores(x), self.grid, self.num_classes)


__all__ = ["Hypercolumn", "grid_weights", "mix_grid"]

"""Class activation maps (CAM) and the pseudo-labels they give.

Zhou, Khosla, Lapedriza, Oliva & Torralba, "Learning Deep Features for Discriminative
Localization", CVPR 2016. A multi-label classifier ends in global average pooling (GAP) of the
last feature maps ``f_d(x, y)`` and one linear layer, so the class score is
``s_c = sum_d w_cd mean_xy f_d(x, y) + b_c``; the class activation map

    CAM_c(x, y) = ReLU( sum_d w_cd f_d(x, y) )

shows where the evidence for class ``c`` lies (the bias, a constant, is left out). Maps are
upsampled bilinearly to the image and normalised per image and class to a maximum of 1; classes
not among the image's tags are zeroed.

Pseudo-labels from the normalised maps, with ``low <= high``: a pixel whose strongest map is below
``low`` is confidently nothing (the ``background`` class when the dataset has one, else ignored),
one at ``high`` or above takes the argmax class, and the band in between is ignored (255) so the
segmenter trained on them does not learn from uncertain pixels. Optionally the labels come from
a dense CRF (:mod:`semseg.inference.crf`) run on the maps first, which snaps them to image edges:
the CRF's unaries are the normalised stack of the class maps and a "nothing" map ``1 - max_c
CAM_c``, and the thresholds then apply to its refined class marginals.

The classifier's encoders are the registry's (:mod:`semseg.models.encoders`); the map is the
encoder's last stage at ``stride`` 32 (or 16: the last stage at stride 16, a finer map as Zhou et
al. obtained by removing VGG's last layers).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from semseg.config import IGNORE_INDEX
from semseg.errors import SemsegError
from semseg.inference.crf import CRFParams, refine
from semseg.io import write_png_atomic
from semseg.metrics.multiclass import confusion_matrix
from semseg.models.base import IMAGENET_MEAN, IMAGENET_STD
from semseg.models.encoders import build_encoder, tap

PAD_MULTIPLE = 32  # every encoder of the registry needs sizes divisible by 32


class CAMClassifier(nn.Module):
    """Multi-label classifier: encoder -> GAP -> linear (Zhou et al., CVPR 2016).

    ``forward`` maps ``(N, 3, H, W)`` RGB in [0, 1] (any size) to ``(N, K)`` class logits;
    :meth:`cams` gives the raw class activation maps ``(N, K, h, w)`` at the feature stride and
    :meth:`image_cams` the normalised maps at the image size.
    """

    def __init__(
        self,
        num_classes: int,
        encoder: str = "resnet18",
        stride: int = 32,
        keep_prob: float = 1.0,
        width_mult: float = 1.0,
        pretrained: bool = False,
        backbone_weights: str | Path | None = None,
    ) -> None:
        super().__init__()
        if stride not in (16, 32):
            raise SemsegError(f"CAM stride must be 16 or 32, got {stride}")
        self.num_classes = num_classes
        self.stride = stride
        self.encoder = build_encoder(encoder, keep_prob, width_mult, pretrained, backbone_weights)
        info = self.encoder.feature_info
        stage = tap(info, stride)
        self._stage = max(i for i, s in enumerate(info) if s == stage)
        self.classifier = nn.Linear(stage.channels, num_classes)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def features(self, images: Tensor) -> Tensor:
        """The ``(N, D, ceil(H/s), ceil(W/s))`` feature maps the classifier pools."""
        height, width = images.shape[-2:]
        x = (images - self.mean) / self.std
        x = F.pad(x, (0, -width % PAD_MULTIPLE, 0, -height % PAD_MULTIPLE))
        features = self.encoder.forward_stages(x)[self._stage]
        return features[..., : -(-height // self.stride), : -(-width // self.stride)]

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier(self.features(images).mean(dim=(2, 3)))

    def cams(self, images: Tensor) -> Tensor:
        return class_activation_maps(self.features(images), self.classifier.weight)

    @torch.no_grad()
    def image_cams(self, images: Tensor, tags: Tensor | None = None) -> Tensor:
        """Normalised CAMs ``(N, K, H, W)`` at the image size; untagged classes are zero."""
        height, width = images.shape[-2:]
        maps = upsample_cams(self.cams(images), self.stride, (height, width))
        if tags is not None:
            maps = maps * (tags[..., None, None] > 0)
        return normalise_cams(maps)


def class_activation_maps(features: Tensor, weight: Tensor) -> Tensor:
    """``ReLU(sum_d w_cd f_d(x, y))``: ``(N, D, h, w)`` features and ``(K, D)`` weights to
    ``(N, K, h, w)`` maps."""
    if features.shape[1] != weight.shape[1]:
        raise ValueError(f"features have {features.shape[1]} channels, weights {weight.shape[1]}")
    return torch.einsum("ndhw,kd->nkhw", features, weight).relu()


def upsample_cams(maps: Tensor, stride: int, size: tuple[int, int]) -> Tensor:
    """Maps at a feature ``stride`` upsampled bilinearly by ``stride`` (cell centres land on
    the centres of the pixels they cover) and cropped to ``size``."""
    height, width = maps.shape[-2:]
    upsampled = F.interpolate(
        maps.float(), size=(height * stride, width * stride), mode="bilinear", align_corners=False
    )
    return upsampled[..., : size[0], : size[1]]


def normalise_cams(maps: Tensor) -> Tensor:
    """Each image's map of each class divided by its maximum (all-zero maps stay zero)."""
    peak = maps.flatten(start_dim=-2).amax(dim=-1)[..., None, None]
    return torch.where(peak > 0, maps / peak.clamp_min(torch.finfo(maps.dtype).tiny), 0.0)


# --- pseudo-labels -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CAMThresholds:
    """Confidence bands of normalised CAMs: below ``low`` nothing, from ``high`` the class.

    ``background`` is the training id of the dataset's background class (its own map is not
    used; pixels below ``low`` get it), or None when the dataset has none (such pixels are
    ignored).
    """

    low: float = 0.2
    high: float = 0.4
    background: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.low <= self.high <= 1.0:
            raise SemsegError(
                f"CAM thresholds need 0 <= low <= high <= 1, got low={self.low}, high={self.high}"
            )


def cam_pseudo_labels(maps: np.ndarray, thresholds: CAMThresholds | None = None) -> np.ndarray:
    """``(H, W)`` uint8 labels from ``(K, H, W)`` normalised CAMs (255 = ignore)."""
    thresholds = thresholds or CAMThresholds()
    maps = np.array(maps, dtype=np.float32)
    if maps.ndim != 3:
        raise ValueError(f"expected (K, H, W) maps, got {maps.shape}")
    background = thresholds.background
    if background is not None:
        if not 0 <= background < maps.shape[0]:
            raise SemsegError(f"background class {background} is not among {maps.shape[0]}")
        maps[background] = 0.0
    confidence = maps.max(axis=0)
    labels = np.full(confidence.shape, IGNORE_INDEX, dtype=np.uint8)
    confident = confidence >= thresholds.high
    labels[confident] = maps.argmax(axis=0)[confident]
    labels[confidence < thresholds.low] = IGNORE_INDEX if background is None else background
    return labels


def crf_class_maps(
    image: np.ndarray,
    maps: np.ndarray,
    background: int | None = None,
    params: CRFParams | None = None,
) -> np.ndarray:
    """CAMs refined by the dense CRF: the normalised stack of the class maps and a "nothing"
    map ``1 - max`` (the background channel when there is one) as probabilities; returns the
    refined ``(K, H, W)`` class marginals (the background channel, if any, holds "nothing")."""
    maps = np.array(maps, dtype=np.float32)
    if background is not None:
        maps[background] = 0.0
    nothing = 1.0 - maps.max(axis=0, keepdims=True)
    if background is None:
        stack = np.concatenate([maps, nothing])
    else:
        stack = maps.copy()
        stack[background] = nothing[0]
    stack = stack + 1e-5
    stack /= stack.sum(axis=0, keepdims=True)
    refined = refine(image, stack, params)
    return refined[: maps.shape[0]]


def cam_labels_for_image(
    model: CAMClassifier,
    image: np.ndarray,
    tags: np.ndarray | None,
    thresholds: CAMThresholds | None = None,
    crf: CRFParams | None = None,
) -> np.ndarray:
    """Pseudo-labels ``(H, W)`` of one RGB ``uint8`` image from its tags ``(K,)`` (None: use
    every class); ``crf``: dense-CRF settings, or None for no CRF."""
    thresholds = thresholds or CAMThresholds()
    device = next(model.parameters()).device
    batch = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)[None].float() / 255.0
    tag_tensor = None if tags is None else torch.as_tensor(tags, dtype=torch.float32)[None]
    was_training = model.training
    model.eval()
    try:
        maps = model.image_cams(
            batch.to(device), None if tag_tensor is None else tag_tensor.to(device)
        )
    finally:
        model.train(was_training)
    maps_np = maps[0].cpu().numpy()
    if crf is not None:
        maps_np = crf_class_maps(image, maps_np, thresholds.background, crf)
    return cam_pseudo_labels(maps_np, thresholds)


@dataclass
class PseudoLabelSummary:
    """What :func:`write_cam_pseudo_labels` wrote and, with ground truth, how good it is:
    the confusion matrix over pixels labelled in both, and the labelled / valid pixel counts
    (coverage = labelled / valid)."""

    images: int
    matrix: np.ndarray
    labelled: int = 0
    valid: int = 0

    @property
    def coverage(self) -> float:
        return self.labelled / self.valid if self.valid else float("nan")


def write_cam_pseudo_labels(
    model: CAMClassifier,
    items: Iterable[tuple[str, np.ndarray, np.ndarray, np.ndarray | None]],
    out_dir: str | Path,
    thresholds: CAMThresholds | None = None,
    crf: CRFParams | None = None,
) -> PseudoLabelSummary:
    """Write ``OUT_DIR/NAME.png`` for each ``(name, RGB image, tags (K,), ground truth or
    None)`` and score the labels against the ground truth given."""
    out_dir = Path(out_dir)
    num_classes = model.num_classes
    summary = PseudoLabelSummary(0, np.zeros((num_classes, num_classes), dtype=np.int64))
    for name, image, tags, target in items:
        labels = cam_labels_for_image(model, image, tags, thresholds, crf)
        write_label_png(out_dir / f"{name}.png", labels)
        summary.images += 1
        if target is not None:
            matrix, labelled, valid = pseudo_label_confusion(labels, target, num_classes)
            summary.matrix += matrix
            summary.labelled += labelled
            summary.valid += valid
    return summary


def write_label_png(path: str | Path, labels: np.ndarray) -> None:
    """Write ``(H, W)`` uint8 class ids (255 = ignore) as a single-channel PNG, atomically."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.dtype != np.uint8:
        raise ValueError(f"labels must be (H, W) uint8, got {labels.shape} {labels.dtype}")
    write_png_atomic(path, labels)


def pseudo_label_confusion(
    labels: np.ndarray, target: np.ndarray, num_classes: int
) -> tuple[np.ndarray, int, int]:
    """How pseudo-labels agree with ground truth: the ``(K, K)`` confusion matrix over pixels
    labelled in both (rows: ground truth), the number of those pixels and of valid ground-truth
    pixels (their ratio is the pseudo-labels' coverage)."""
    labels = np.asarray(labels)
    target = np.asarray(target)
    if labels.shape != target.shape:
        raise SemsegError(f"pseudo-labels {labels.shape} and ground truth {target.shape} differ")
    valid = target != IGNORE_INDEX
    both = valid & (labels != IGNORE_INDEX)
    predictions = np.where(both, labels, 0).astype(np.int64)
    truth = np.where(both, target, IGNORE_INDEX).astype(np.int64)
    matrix = confusion_matrix(predictions, truth, num_classes)
    return matrix, int(both.sum()), int(valid.sum())


__all__ = [
    "CAMClassifier",
    "CAMThresholds",
    "PseudoLabelSummary",
    "cam_labels_for_image",
    "cam_pseudo_labels",
    "class_activation_maps",
    "crf_class_maps",
    "normalise_cams",
    "pseudo_label_confusion",
    "upsample_cams",
    "write_cam_pseudo_labels",
    "write_label_png",
]

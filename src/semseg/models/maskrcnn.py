"""Mask R-CNN with a Panoptic-FPN semantic head: instances pasted by score into a semantic map.

He, Gkioxari, Dollar & Girshick, "Mask R-CNN", ICCV 2017 (torchvision's implementation), on a
MobileNetV3-Large FPN (Howard et al., ICCV 2019; the CPU-feasible backbone), with the semantic
head of Kirillov, Girshick, He & Dollar, "Panoptic Feature Pyramid Networks", CVPR 2019, for the
"stuff" classes. The "thing" (countable) classes are found as instances: Mask R-CNN detects them,
and their masks are pasted over the stuff map in ascending score order, so that where instances
overlap the best-scoring one wins (:func:`paste_instances`).

Layers. The MobileNetV3-Large ``features`` (``width_mult`` scales them) are tapped where
:class:`semseg.models.encoders.MobileNetV3Encoder` taps them, the last block at stride 8, 16 and
32; an FPN (Lin et al., CVPR 2017) makes ``D``-channel maps of them (``D = 128 * width_mult``,
levels "0", "1", "2" at stride 8, 16, 32, plus a max-pooled "pool" at 64). Mask R-CNN's RPN,
box head (two ``4D``-wide fully connected layers) and mask head (four 3x3 convolutions at 14x14)
run on levels 0-2. The semantic head, as Panoptic FPN's, has one 3x3 convolution (GroupNorm,
ReLU) per level, upsampled bilinearly to stride 8 and summed, and a 1x1 convolution to the
``S`` stuff classes plus one "thing" channel (every thing pixel is one class for it, as in the
paper), upsampled bilinearly to the input. Images are not resized by the detector (the data
pipeline sizes them) and are normalised with ImageNet's mean and standard deviation. BatchNorm
momentum is 0.1, as in :class:`semseg.models.encoders.MobileNetV3Encoder`: torchvision's 0.01
leaves the running statistics far behind the weights over a CPU budget's few hundred steps.

Shapes. ``forward(images)`` in eval mode: ``(N, 3, H, W)`` RGB in [0, 1] to ``(N, num_classes,
H, W)`` log-probabilities: where an instance was pasted, its class has probability 1; elsewhere
the stuff classes have the semantic head's softmax over the stuff channels (the "thing" channel
left out: no detected instance claims the pixel, so the best stuff class fills it) and the thing
classes 0 (clamped at 1e-6 before the log). :meth:`losses` (training) gives torchvision's five
detection losses plus ``loss_semantic`` (cross-entropy of the stuff head, void ignored), and
:meth:`detect` the instances as training ids with ``(D, H, W)`` mask probabilities.

Registered as ``maskrcnn-semantic``; options ``things`` (training ids of the countable classes;
the training command takes them from the class table: CamVid's car, pedestrian, bicyclist,
sign_symbol and pole; a bare build without it takes the last class), ``width_mult``,
``score_threshold`` (instances below it are not pasted) and ``mask_threshold``. Weights start
from scratch (``weights=None``, ``weights_backbone=None``): it does not export to ONNX.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from semseg.errors import SemsegError
from semseg.models.base import IMAGENET_MEAN, IMAGENET_STD
from semseg.models.encoders import MOBILENET_NORM
from semseg.models.registry import register_model

IGNORE_INDEX = 255  # void in the training masks (semseg.config.IGNORE_INDEX)
FPN_CHANNELS = 128
TAPS = (6, 12, 16)  # MobileNetV3-Large blocks: the last at stride 8, 16 and 32
ANCHOR_SIZES = ((16, 32), (48, 96), (128, 192), (256, 384))  # per level: stride 8, 16, 32, 64
ASPECT_RATIOS = (0.5, 1.0, 2.0, 4.0)  # height / width; poles and pedestrians are tall
CHANNELS_LAST = torch.channels_last
MIN_PROBABILITY = 1e-6  # log-probabilities are clamped here (finite logits)
DEFAULT_SCORE_THRESHOLD = 0.5
DEFAULT_MASK_THRESHOLD = 0.5


def paste_instances(
    stuff_labels: Tensor,
    masks: Tensor,
    scores: Tensor,
    labels: Tensor,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    mask_threshold: float = DEFAULT_MASK_THRESHOLD,
) -> tuple[Tensor, Tensor]:
    """Paste instances over a label map in ascending score order (the best-scoring one wins).

    Args:
        stuff_labels: ``(H, W)`` class ids of the stuff map (what shows where nothing is pasted).
        masks: ``(D, H, W)`` mask probabilities of ``D`` instances.
        scores: ``(D,)`` their scores; instances below ``score_threshold`` are not pasted.
        labels: ``(D,)`` their class ids.
        mask_threshold: an instance covers the pixels where its mask is at least this.

    Returns:
        ``(H, W)`` class ids and the ``(H, W)`` boolean map of the pixels an instance took.
    """
    out = stuff_labels.clone()
    pasted = torch.zeros_like(stuff_labels, dtype=torch.bool)
    order = torch.argsort(scores, stable=True)  # ascending: each paste covers the lower ones
    for index in order.tolist():
        if float(scores[index]) < score_threshold:
            continue
        cover = masks[index] >= mask_threshold
        out[cover] = labels[index].to(out.dtype)
        pasted |= cover
    return out, pasted


def semantic_log_probabilities(
    stuff_probabilities: Tensor,
    stuff_ids: Sequence[int],
    num_classes: int,
    labels: Tensor,
    pasted: Tensor,
) -> Tensor:
    """``(num_classes, H, W)`` log-probabilities: one-hot where an instance was pasted (its class
    in ``labels``), else the stuff probabilities ``(S, H, W)`` at ``stuff_ids``, 0 for things."""
    height, width = labels.shape
    probabilities = stuff_probabilities.new_zeros(num_classes, height, width)
    probabilities[list(stuff_ids)] = stuff_probabilities
    one_hot = F.one_hot(labels.long(), num_classes).permute(2, 0, 1).to(probabilities.dtype)
    probabilities = torch.where(pasted.unsqueeze(0), one_hot, probabilities)
    return probabilities.clamp_min(MIN_PROBABILITY).log()


class SemanticHead(nn.Module):
    """Panoptic FPN's semantic branch on FPN levels at strides ``8 * 2**i``: per level a 3x3
    convolution (GroupNorm, ReLU), bilinear upsampling to the finest level, the sum, and a 1x1
    convolution to ``out_channels``. ``(N, D, H/8, W/8), ... -> (N, out_channels, H/8, W/8)``."""

    def __init__(self, in_channels: int, out_channels: int, levels: int) -> None:
        super().__init__()
        groups = 8 if in_channels % 8 == 0 else 1
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(in_channels, in_channels, 3, padding=1, bias=False),
                nn.GroupNorm(groups, in_channels),
                nn.ReLU(inplace=True),
            )
            for _ in range(levels)
        )
        self.score = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, levels: Sequence[Tensor]) -> Tensor:
        size = levels[0].shape[-2:]
        total = self.blocks[0](levels[0])
        for block, level in zip(self.blocks[1:], levels[1:], strict=True):
            total = total + F.interpolate(
                block(level), size=size, mode="bilinear", align_corners=False
            )
        return self.score(total)


def build_detector(num_detection_classes: int, width_mult: float) -> nn.Module:
    """torchvision's Mask R-CNN on a from-scratch MobileNetV3-Large FPN (see the module
    docstring); ``num_detection_classes`` includes the background (0)."""
    import torchvision
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.ops import MultiScaleRoIAlign

    features = torchvision.models.mobilenet_v3_large(
        weights=None, width_mult=width_mult, norm_layer=MOBILENET_NORM
    ).features
    channels = max(16, round(FPN_CHANNELS * width_mult))
    backbone = BackboneWithFPN(
        features,
        return_layers={str(tap): str(level) for level, tap in enumerate(TAPS)},
        in_channels_list=[int(features[tap].out_channels) for tap in TAPS],
        out_channels=channels,
    )
    levels = [str(level) for level in range(len(TAPS))]
    anchors = AnchorGenerator(ANCHOR_SIZES, (ASPECT_RATIOS,) * len(ANCHOR_SIZES))
    representation = 4 * channels
    detector = MaskRCNN(
        backbone,
        num_classes=None,
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=1000,
        rpn_post_nms_top_n_train=500,
        rpn_pre_nms_top_n_test=500,
        rpn_post_nms_top_n_test=300,
        box_roi_pool=MultiScaleRoIAlign(levels, output_size=7, sampling_ratio=2),
        box_head=TwoMLPHead(channels * 7 * 7, representation),
        box_predictor=FastRCNNPredictor(representation, num_detection_classes),
        box_batch_size_per_image=256,
        box_detections_per_img=50,
        mask_roi_pool=MultiScaleRoIAlign(levels, output_size=14, sampling_ratio=2),
        mask_head=MaskRCNNHeads(channels, (channels,) * 4, 1),
        mask_predictor=MaskRCNNPredictor(channels, channels, num_detection_classes),
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
    )
    detector.transform.resize = _no_resize  # type: ignore[method-assign]
    return detector


def _no_resize(image: Tensor, target: dict | None = None) -> tuple[Tensor, dict | None]:
    """The detector's transform keeps each image's size (the data pipeline has sized it)."""
    return image, target


@register_model("maskrcnn-semantic")
class MaskRCNNSemantic(nn.Module):
    """Mask R-CNN for the thing classes plus a Panoptic-FPN stuff head (module docstring)."""

    onnx_exportable = False  # data-dependent detections; `semseg export` refuses it

    def __init__(
        self,
        num_classes: int,
        things: Sequence[int] | None = None,
        width_mult: float = 1.0,
        score_threshold: float = DEFAULT_SCORE_THRESHOLD,
        mask_threshold: float = DEFAULT_MASK_THRESHOLD,
    ) -> None:
        super().__init__()
        things = (num_classes - 1,) if things is None else tuple(int(t) for t in things)
        if not things or len(set(things)) != len(things):
            raise SemsegError(f"maskrcnn-semantic: things must be distinct class ids, got {things}")
        if any(not 0 <= t < num_classes for t in things) or len(things) >= num_classes:
            raise SemsegError(
                f"maskrcnn-semantic: things {list(things)} must be some, not all, of the "
                f"{num_classes} class ids"
            )
        self.num_classes = num_classes
        self.things = things
        self.stuff = tuple(c for c in range(num_classes) if c not in things)
        self.score_threshold = float(score_threshold)
        self.mask_threshold = float(mask_threshold)
        self.detector = build_detector(len(things) + 1, width_mult)
        self.detector.backbone.to(memory_format=CHANNELS_LAST)
        channels = self.detector.backbone.out_channels
        self.semantic_head = SemanticHead(channels, len(self.stuff) + 1, len(TAPS))
        # training id -> semantic head target: stuff index, S for any thing, void ignored
        lookup = torch.full((256,), IGNORE_INDEX, dtype=torch.long)
        lookup[list(self.stuff)] = torch.arange(len(self.stuff))
        lookup[list(things)] = len(self.stuff)
        self.register_buffer("semantic_lookup", lookup, persistent=False)
        # detector label (1..T) -> training id
        self.register_buffer("thing_ids", torch.tensor((-1, *things)), persistent=False)

    def _run(
        self, images: Tensor, targets: list[dict[str, Tensor]] | None = None
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor], Tensor]:
        """Detections (eval), detection losses (training) and stuff logits ``(N, S+1, H, W)``."""
        detector = self.detector
        height, width = images.shape[-2:]
        original = [(int(height), int(width))] * images.shape[0]
        image_list, targets = detector.transform(list(images), targets)
        # NHWC: oneDNN's depthwise convolutions (MobileNetV3) are many times faster in it
        features = detector.backbone(image_list.tensors.contiguous(memory_format=CHANNELS_LAST))
        proposals, rpn_losses = detector.rpn(image_list, features, targets)
        detections, roi_losses = detector.roi_heads(
            features, proposals, image_list.image_sizes, targets
        )
        detections = detector.transform.postprocess(detections, image_list.image_sizes, original)
        levels = [features[str(level)] for level in range(len(TAPS))]
        stuff = F.interpolate(
            self.semantic_head(levels),
            size=image_list.tensors.shape[-2:],
            mode="bilinear",
            align_corners=False,
        )[..., :height, :width]
        return detections, {**rpn_losses, **roi_losses}, stuff

    def losses(
        self, images: Tensor, targets: list[dict[str, Tensor]], masks: Tensor
    ) -> dict[str, Tensor]:
        """Training losses: torchvision's detection losses for ``targets`` (boxes, labels as
        1-based thing indices, masks) and ``loss_semantic`` of the stuff head on ``masks``
        ``(N, H, W)`` training ids."""
        _, losses, stuff = self._run(images, targets)
        semantic_target = self.semantic_lookup[masks.long()]
        losses["loss_semantic"] = F.cross_entropy(
            stuff.float(), semantic_target, ignore_index=IGNORE_INDEX
        )
        return losses

    @torch.no_grad()
    def detect(self, images: Tensor) -> tuple[list[dict[str, Tensor]], Tensor]:
        """Eval-mode instances (``boxes``, ``scores``, ``labels`` as training ids, ``masks``
        ``(D, H, W)`` probabilities) per image and the stuff logits ``(N, S+1, H, W)``."""
        detections, _, stuff = self._run(images)
        for detection in detections:
            detection["labels"] = self.thing_ids[detection["labels"]]
            detection["masks"] = detection["masks"][:, 0]
        return detections, stuff

    def forward(self, images: Tensor) -> Tensor:
        if self.training:
            raise RuntimeError("maskrcnn-semantic trains through losses(images, targets, masks)")
        detections, stuff = self.detect(images)
        stuff_probabilities = stuff[:, : len(self.stuff)].float().softmax(dim=1)
        stuff_ids = torch.tensor(self.stuff, device=images.device)
        out = []
        for probabilities, detection in zip(stuff_probabilities, detections, strict=True):
            stuff_labels = stuff_ids[probabilities.argmax(dim=0)]
            labels, pasted = paste_instances(
                stuff_labels,
                detection["masks"],
                detection["scores"],
                detection["labels"],
                self.score_threshold,
                self.mask_threshold,
            )
            out.append(
                semantic_log_probabilities(
                    probabilities, self.stuff, self.num_classes, labels, pasted
                )
            )
        return torch.stack(out)


__all__ = ["MaskRCNNSemantic", "SemanticHead", "paste_instances", "semantic_log_probabilities"]

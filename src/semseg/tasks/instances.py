"""The Mask R-CNN task (``--model maskrcnn-semantic``): detection losses plus the stuff head's.

The data are the semantic masks every segmentation task reads; the instance targets are derived
from each training batch after augmentation (flips, scaled crops), by the rule of ``semseg
derive --to instances`` (:func:`semseg.weak.derive.instances_from_mask`: 8-connected components
of the countable classes, at least :data:`INSTANCE_MIN_AREA` pixels), so that targets and images
always agree. The loss is the sum of torchvision's Mask R-CNN losses (RPN objectness and box
regression, box classification and regression, mask) and :data:`SEMANTIC_WEIGHT` times the
cross-entropy of the Panoptic-FPN stuff head (Kirillov et al., CVPR 2019). Validation, the
optimiser and the schedule are the segmentation task's: the model's eval-mode output is a
semantic map's log-probabilities, scored by mIoU.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from semseg.tasks.segmentation import SegmentationTask

INSTANCE_MIN_AREA = 20  # semseg.weak.derive.DEFAULT_INSTANCE_MIN_AREA
SEMANTIC_WEIGHT = 1.0


def instance_targets(masks: Tensor, things: tuple[int, ...]) -> list[dict[str, Tensor]]:
    """torchvision detection targets of a batch of masks ``(N, H, W)``: per image ``boxes``
    ``(D, 4)`` float ``x0, y0, x1, y1`` (end exclusive), ``labels`` ``(D,)`` (1-based index into
    ``things``) and ``masks`` ``(D, H, W)`` uint8; an image without instances gets ``D = 0``."""
    from semseg.weak.derive import instances_from_mask

    index_of = {thing: index + 1 for index, thing in enumerate(things)}
    targets = []
    height, width = masks.shape[-2:]
    for mask in masks.cpu().numpy().astype(np.uint8):
        found = instances_from_mask(mask, things, INSTANCE_MIN_AREA)
        boxes = [[i.box.x0, i.box.y0, i.box.x1, i.box.y1] for i in found]
        stacked = np.stack([i.mask for i in found]) if found else np.zeros((0, height, width))
        targets.append(
            {
                "boxes": torch.tensor(boxes, dtype=torch.float32, device=masks.device).reshape(
                    -1, 4
                ),
                "labels": torch.tensor(
                    [index_of[i.label] for i in found], dtype=torch.int64, device=masks.device
                ),
                "masks": torch.from_numpy(stacked.astype(np.uint8)).to(masks.device),
            }
        )
    return targets


class MaskRCNNSemanticTask(SegmentationTask):
    """:class:`SegmentationTask` whose training step is Mask R-CNN's (module docstring).

    Logged per epoch besides ``train_loss`` (the total): ``train_loss_semantic`` and
    ``train_loss_mask``.
    """

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, masks = batch
        model: Any = self.model
        targets = instance_targets(masks, model.things)
        losses = model.losses(images, targets, masks)
        losses["loss_semantic"] = SEMANTIC_WEIGHT * losses["loss_semantic"]
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            parts = ", ".join(f"{key} {float(value):.3g}" for key, value in losses.items())
            self.stop_unless_finite(
                loss, batch_idx, f" ({parts})", "Try a lower --lr or a longer warm-up"
            )
        size = images.shape[0]
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=size)
        for key in ("loss_semantic", "loss_mask"):
            self.log(f"train_{key}", losses[key], on_step=False, on_epoch=True, batch_size=size)
        return loss


__all__ = ["INSTANCE_MIN_AREA", "MaskRCNNSemanticTask", "instance_targets"]

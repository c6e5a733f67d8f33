"""Training-recipe pieces for training from scratch: optimiser, lr schedule, losses.

The reference exercise is Adam at a constant learning rate with plain cross-entropy; the recipe
fields of ``train`` (``optimizer``, ``schedule``, ``warmup_epochs``, ``min_lr_factor``, ``loss``,
``loss_weight``, ``grad_clip``) switch on the rest:

* ``adamw``: decoupled weight decay (Loshchilov & Hutter, ICLR 2019), not applied to biases and
  normalisation weights (parameters with fewer than two dimensions).
* Warm-up and decay, per optimiser step: ``lr * warm(step) * decay(progress)`` with
  ``warm(step) = min(1, (step + 1) / warmup_steps)`` and ``progress`` in [0, 1] the larger of
  ``step / total_steps`` and ``elapsed / max_time_s`` — under a time budget the decay ends when
  the time does, whatever the epoch count says. ``cosine``: ``m + (1 - m) (1 + cos(pi p)) / 2``;
  ``poly``: ``m + (1 - m) (1 - p) ** 0.9``; ``m`` is ``min_lr_factor``.
* ``ce_dice``: cross-entropy plus ``loss_weight`` times the soft Dice loss (Milletari et al.,
  3DV 2016) averaged over the classes, and ``ce_lovasz``: plus the Lovasz-softmax loss (Berman
  et al., CVPR 2018), a surrogate of the IoU. Both score the road class by its overlap rather
  than per pixel, so the minority class counts as much as the majority; both skip ignored pixels.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from semseg.errors import SemsegError

POLY_POWER = 0.9
DICE_SMOOTH = 1.0


def lr_factor(
    step: int,
    warmup_steps: int,
    progress: float,
    schedule: str = "constant",
    min_factor: float = 0.0,
) -> float:
    """The learning rate multiplier at optimiser step ``step`` (0-based) and ``progress``."""
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    p = min(max(progress, 0.0), 1.0)
    if schedule == "constant":
        decay = 1.0
    elif schedule == "cosine":
        decay = min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * p))
    elif schedule == "poly":
        decay = min_factor + (1.0 - min_factor) * (1.0 - p) ** POLY_POWER
    else:
        raise SemsegError(f"unknown lr schedule {schedule!r} (constant, cosine, poly)")
    return warm * decay


def build_optimizer(
    name: str,
    parameters: Iterable[tuple[str, nn.Parameter]],
    lr: float,
    weight_decay: float,
    fused: bool = False,
) -> torch.optim.Optimizer:
    """``adam`` (L2 decay as in the reference), ``adamw`` or ``sgd`` (momentum 0.9) over the
    trainable ``(name, parameter)`` pairs; AdamW and SGD do not decay biases and norm weights.

    ``fused``: Adam and AdamW update all parameters with torch's fused kernel instead of one
    chain of elementwise operations per parameter (the same values, to float rounding; on a
    2-core CPU the step over FCN-8s/VGG16's 134 M parameters is 5-19x faster, a whole training
    step 1.4-1.75x: benchmarks/adam_step.py)."""
    trainable = [(n, p) for n, p in parameters if p.requires_grad]
    implementation = {"fused": True} if fused else {}
    if name == "adam":
        return torch.optim.Adam(
            [p for _, p in trainable], lr=lr, weight_decay=weight_decay, **implementation
        )
    decay = [p for _, p in trainable if p.ndim >= 2]
    no_decay = [p for _, p in trainable if p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, **implementation)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9)
    raise SemsegError(f"unknown optimizer {name!r} (adam, adamw, sgd)")


def _valid_probabilities(
    logits: Tensor, target: Tensor, ignore_index: int
) -> tuple[Tensor, Tensor]:
    """Softmax probabilities ``(P, C)`` and labels ``(P,)`` of the pixels that are not ignored."""
    num_classes = logits.shape[1]
    probabilities = logits.float().softmax(dim=1).permute(0, 2, 3, 1).reshape(-1, num_classes)
    labels = target.reshape(-1)
    valid = labels != ignore_index
    return probabilities[valid], labels[valid]


def dice_loss(
    logits: Tensor, target: Tensor, ignore_index: int = 255, smooth: float = DICE_SMOOTH
) -> Tensor:
    """Soft Dice loss, ``1 - (2 sum(p g) + s) / (sum(p) + sum(g) + s)`` per class over the
    batch's valid pixels, averaged over the classes. ``logits (N, C, H, W)``, ``target (N, H, W)``.
    """
    probabilities, labels = _valid_probabilities(logits, target, ignore_index)
    one_hot = F.one_hot(labels, logits.shape[1]).to(probabilities.dtype)
    intersection = (probabilities * one_hot).sum(dim=0)
    total = probabilities.sum(dim=0) + one_hot.sum(dim=0)
    return (1.0 - (2.0 * intersection + smooth) / (total + smooth)).mean()


def lovasz_grad(sorted_truth: Tensor) -> Tensor:
    """Gradient of the Lovasz extension of the Jaccard loss w.r.t. errors sorted descending."""
    total = sorted_truth.sum()
    intersection = total - sorted_truth.cumsum(0)
    union = total + (1.0 - sorted_truth).cumsum(0)
    jaccard = 1.0 - intersection / union
    if sorted_truth.numel() > 1:
        jaccard[1:] = jaccard[1:] - jaccard[:-1]
    return jaccard


def lovasz_softmax(logits: Tensor, target: Tensor, ignore_index: int = 255) -> Tensor:
    """Lovasz-softmax loss over the batch's valid pixels, averaged over the classes present."""
    probabilities, labels = _valid_probabilities(logits, target, ignore_index)
    losses = []
    for cls in range(logits.shape[1]):
        truth = (labels == cls).to(probabilities.dtype)
        if truth.sum() == 0:
            continue
        errors = (truth - probabilities[:, cls]).abs()
        errors_sorted, order = torch.sort(errors, descending=True)
        losses.append(torch.dot(errors_sorted, lovasz_grad(truth[order])))
    if not losses:
        return logits.sum() * 0.0
    return torch.stack(losses).mean()


def segmentation_loss(
    logits: Tensor,
    target: Tensor,
    loss: str,
    ignore_index: int,
    weight: float = 1.0,
    class_weights: Tensor | None = None,
) -> Tensor:
    """``ce``, ``ce_dice`` or ``ce_lovasz`` of ``logits (N, C, H, W)`` against ``target``;
    ``class_weights`` ``(C,)`` (e.g. median-frequency) weight the cross-entropy term only."""
    ce = F.cross_entropy(logits.float(), target, weight=class_weights, ignore_index=ignore_index)
    if loss == "ce":
        return ce
    if (target != ignore_index).sum() == 0:
        return ce
    if loss == "ce_dice":
        return ce + weight * dice_loss(logits, target, ignore_index)
    if loss == "ce_lovasz":
        return ce + weight * lovasz_softmax(logits, target, ignore_index)
    raise SemsegError(f"unknown loss {loss!r} (ce, ce_dice, ce_lovasz)")


__all__ = [
    "build_optimizer",
    "dice_loss",
    "lovasz_softmax",
    "lr_factor",
    "segmentation_loss",
]

"""The devkit's road scores as a torchmetrics ``Metric`` (sums histograms across DDP ranks)."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from semseg.config import IGNORE_INDEX
from semseg.metrics.kitti import RoadCounts, road_scores

LEVELS = 256


class RoadMaxF(Metric):
    """Pooled 8-bit confidence histograms of positive and negative valid pixels.

    ``update(confidence, target)``: ``confidence`` ``(N, H, W)`` in [0, 1] for the positive
    class, ``target`` ``(N, H, W)`` class indices with ``ignore_index`` outside the valid area.
    ``compute()`` returns the devkit's scores (MaxF, AP, ... in percent) as a dict.
    """

    full_state_update = False

    def __init__(self, positive_class: int = 1, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.positive_class = positive_class
        self.ignore_index = ignore_index
        self.add_state("pos_hist", torch.zeros(LEVELS, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("neg_hist", torch.zeros(LEVELS, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, confidence: Tensor, target: Tensor) -> None:
        # float64, as the devkit's quantize_confidence: float32 products round ties differently
        levels = torch.round(confidence.detach().double().clamp(0, 1) * 255).long()
        valid = target != self.ignore_index
        positive = target == self.positive_class
        self.pos_hist += torch.bincount(levels[valid & positive], minlength=LEVELS)
        self.neg_hist += torch.bincount(levels[valid & ~positive], minlength=LEVELS)

    def counts(self) -> RoadCounts:
        return RoadCounts(self.pos_hist.cpu().numpy(), self.neg_hist.cpu().numpy())

    def compute(self) -> dict[str, float]:
        """The devkit's :class:`RoadScores` as a dict (torchmetrics cannot return dataclasses)."""
        return road_scores(self.counts()).as_dict()

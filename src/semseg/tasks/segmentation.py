"""The segmentation task: model, loss, metrics and optimiser as one LightningModule.

Hyperparameters (model name and options, class count, optimiser settings, input size) are saved
in every checkpoint, so ``semseg evaluate`` and ``semseg predict`` rebuild the model from the
checkpoint alone.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from semseg.config import IGNORE_INDEX
from semseg.errors import SemsegError
from semseg.metrics.road import RoadMaxF
from semseg.models import build_model

# Options that only matter when the model is first built (weights come from the checkpoint later).
INIT_ONLY_OPTIONS = ("pretrained", "backbone_weights")


class SegmentationTask(L.LightningModule):
    """Softmax cross-entropy (ignoring ``ignore_index``) trained with Adam.

    Logged per epoch: ``train_loss``; ``val_loss``, ``val_maxf``, ``val_ap`` (devkit scores of the
    positive class at the training resolution, in percent), ``val_iou`` (positive class IoU at
    argmax), ``val_miou`` and ``val_acc``.
    """

    def __init__(
        self,
        model_name: str = "fcn8s",
        num_classes: int = 2,
        model_options: dict[str, Any] | None = None,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        positive_class: int = 1,
        class_names: list[str] | None = None,
        input_size: list[int] | None = None,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = build_model(model_name, num_classes, **(model_options or {}))
        self.val_road = RoadMaxF(positive_class=positive_class, ignore_index=ignore_index)
        self.val_iou = MulticlassJaccardIndex(
            num_classes, average="none", ignore_index=ignore_index
        )
        self.val_acc = MulticlassAccuracy(num_classes, average="micro", ignore_index=ignore_index)

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)

    def loss(self, logits: Tensor, masks: Tensor) -> Tensor:
        return F.cross_entropy(logits.float(), masks, ignore_index=self.hparams.ignore_index)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, masks = batch
        loss = self.loss(self(images), masks)
        if not torch.isfinite(loss):
            raise SemsegError(
                f"training loss became {loss.item()} at epoch {self.current_epoch + 1}, step "
                f"{batch_idx + 1}; stopped (the last good checkpoint is kept: "
                "checkpoints/last.ckpt). Try a lower --lr"
            )
        self.log(
            "train_loss",
            loss,
            on_step=False,
            on_epoch=True,
            prog_bar=True,
            batch_size=images.shape[0],
            sync_dist=True,
        )
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images, masks = batch
        logits = self(images).float()
        loss = self.loss(logits, masks)
        probabilities = logits.softmax(dim=1)
        self.val_road.update(probabilities[:, self.hparams.positive_class], masks)
        predictions = probabilities.argmax(dim=1)
        self.val_iou.update(predictions, masks)
        self.val_acc.update(predictions, masks)
        self.log(
            "val_loss",
            loss,
            on_step=False,
            on_epoch=True,
            batch_size=images.shape[0],
            sync_dist=True,
        )

    def on_validation_epoch_end(self) -> None:
        try:
            scores = self.val_road.compute()  # syncs across DDP ranks before scoring
            max_f, ap = scores["max_f"], scores["ap"]
        except ValueError:  # no positive pixel at all, e.g. a sanity check on a road-free batch
            max_f = ap = 0.0
        iou = self.val_iou.compute()
        self.log("val_maxf", max_f, prog_bar=True)
        self.log("val_ap", ap)
        self.log("val_iou", float(iou[self.hparams.positive_class]) * 100, prog_bar=True)
        self.log("val_miou", float(iou.mean()) * 100)
        self.log("val_acc", float(self.val_acc.compute()) * 100)
        for metric in (self.val_road, self.val_iou, self.val_acc):
            metric.reset()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        trainable = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.Adam(
            trainable, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )

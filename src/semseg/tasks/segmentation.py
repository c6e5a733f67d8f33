"""The segmentation task: model, loss, metrics and optimiser as one LightningModule.

Hyperparameters (model name and options, class count, class names and colours, optimiser
settings, input size) are saved in every checkpoint, so ``semseg evaluate`` and
``semseg predict`` rebuild the model from the checkpoint alone.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Timer
from torch import Tensor

from semseg.config import IGNORE_INDEX, ModelConfig, TrainConfig
from semseg.errors import SemsegError
from semseg.metrics.multiclass import ConfusionMatrix
from semseg.metrics.road import RoadMaxF
from semseg.models import build_model
from semseg.tasks.recipe import build_optimizer, lr_factor, segmentation_loss

# The recipe's defaults live in the config dataclasses; the task takes them from there.
MODEL_DEFAULTS = ModelConfig()
TRAIN_DEFAULTS = TrainConfig()


class SegmentationTask(L.LightningModule):
    """Softmax cross-entropy (ignoring ``ignore_index``) trained with Adam — or the recipe that
    ``optimizer``, ``schedule``, ``warmup_epochs``, ``min_lr_factor``, ``loss`` and ``loss_weight``
    choose (:mod:`semseg.tasks.recipe`; ``max_time_s`` ends the schedule when the time budget does).

    Logged per epoch: ``train_loss``; ``val_loss``, ``val_miou`` and ``val_acc`` (mean IoU and
    global pixel accuracy at argmax, in percent, from one confusion matrix of the validation set
    at the training resolution); for two classes (road) also ``val_maxf``, ``val_ap`` (devkit
    scores of the positive class) and ``val_iou`` (positive class IoU).
    """

    def __init__(
        self,
        model_name: str = MODEL_DEFAULTS.name,
        num_classes: int = MODEL_DEFAULTS.num_classes,
        model_options: dict[str, Any] | None = None,
        lr: float = TRAIN_DEFAULTS.lr,
        weight_decay: float = TRAIN_DEFAULTS.weight_decay,
        positive_class: int = 1,
        class_names: list[str] | None = None,
        input_size: list[int] | None = None,
        ignore_index: int = IGNORE_INDEX,
        optimizer: str = TRAIN_DEFAULTS.optimizer,
        schedule: str = TRAIN_DEFAULTS.schedule,
        warmup_epochs: float = TRAIN_DEFAULTS.warmup_epochs,
        min_lr_factor: float = TRAIN_DEFAULTS.min_lr_factor,
        loss: str = TRAIN_DEFAULTS.loss,
        loss_weight: float = TRAIN_DEFAULTS.loss_weight,
        max_time_s: float | None = TRAIN_DEFAULTS.max_time_s,
        fused_optimizer: bool | None = TRAIN_DEFAULTS.fused_optimizer,
        class_weights: list[float] | None = None,
        class_colours: list[list[int]] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = build_model(model_name, num_classes, **(model_options or {}))
        # Cross-entropy class weights (e.g. median-frequency balancing); saved as a hyperparameter.
        weights = (
            None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
        )
        self.register_buffer("ce_weights", weights, persistent=False)
        self.val_road = RoadMaxF(positive_class=positive_class, ignore_index=ignore_index)
        self.val_confusion = ConfusionMatrix(num_classes, ignore_index=ignore_index)

    @property
    def is_multiclass(self) -> bool:
        """More than two classes: validated and selected by mIoU instead of road MaxF."""
        return self.hparams.num_classes > 2

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)

    def loss(self, logits: Tensor, masks: Tensor) -> Tensor:
        hparams = self.hparams
        return segmentation_loss(
            logits,
            masks,
            hparams.loss,
            hparams.ignore_index,
            hparams.loss_weight,
            class_weights=self.ce_weights,
        )

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, masks = batch
        loss = self.loss(self(images), masks)
        self.stop_unless_finite(loss, batch_idx)
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

    def stop_unless_finite(
        self, loss: Tensor, batch_idx: int, detail: str = "", hint: str = "Try a lower --lr"
    ) -> None:
        """A NaN or infinite training loss ends the run with a one-line error (``detail``: the
        loss terms, where there are several)."""
        if not torch.isfinite(loss):
            raise SemsegError(
                f"training loss became {loss.item()} at epoch {self.current_epoch + 1}, step "
                f"{batch_idx + 1}{detail}; stopped (the last good checkpoint is kept: "
                f"checkpoints/last.ckpt). {hint}"
            )

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images, masks = batch
        logits = self(images).float()
        loss = self.loss(logits, masks)
        probabilities = logits.softmax(dim=1)
        if not self.is_multiclass:
            self.val_road.update(probabilities[:, self.hparams.positive_class], masks)
        self.val_confusion.update(probabilities.argmax(dim=1), masks)
        self.log(
            "val_loss",
            loss,
            on_step=False,
            on_epoch=True,
            batch_size=images.shape[0],
            sync_dist=True,
        )

    def on_validation_epoch_end(self) -> None:
        scores = self.val_confusion.scores()  # syncs across DDP ranks before scoring
        self.log("val_miou", _finite(scores.miou), prog_bar=self.is_multiclass)
        self.log("val_acc", _finite(scores.global_accuracy))
        if not self.is_multiclass:
            try:
                road = self.val_road.compute()
                max_f, ap = road["max_f"], road["ap"]
            except ValueError:  # no positive pixel at all, e.g. a road-free batch
                max_f = ap = 0.0
            self.log("val_maxf", max_f, prog_bar=True)
            self.log("val_ap", ap)
            self.log("val_iou", _finite(scores.iou[self.hparams.positive_class]), prog_bar=True)
        self.val_road.reset()
        self.val_confusion.reset()

    def fused_optimizer(self) -> bool:
        """``fused_optimizer``; None: fused on the CPU and CUDA except under 16-mixed (whose
        gradient scaler cannot unscale for gradient clipping ahead of a fused step) and under
        bf16-mixed with gradient clipping (Lightning's mixed-precision plugin refuses to clip
        the gradients of an optimizer whose step could unscale them)."""
        trainer = self._trainer
        precision = str(getattr(trainer, "precision", "32"))
        clipping_mixed = precision.endswith("-mixed") and bool(
            getattr(trainer, "gradient_clip_val", None)
        )
        choice = self.hparams.get("fused_optimizer")
        if choice is not None:
            if choice and clipping_mixed:
                raise SemsegError(
                    f"train.fused_optimizer=true cannot be combined with train.grad_clip under "
                    f"--precision {precision}; set one of them to null"
                )
            return bool(choice)
        if any(p.device.type not in ("cpu", "cuda") for p in self.parameters()):
            return False
        return precision != "16-mixed" and not clipping_mixed

    def configure_optimizers(self) -> Any:
        hparams = self.hparams
        optimizer = build_optimizer(
            hparams.optimizer,
            self.named_parameters(),
            lr=hparams.lr,
            weight_decay=hparams.weight_decay,
            fused=self.fused_optimizer(),
        )
        schedule = hparams.schedule
        warmup_epochs = float(hparams.warmup_epochs)
        if schedule == "constant" and warmup_epochs == 0:
            return optimizer  # the reference: a constant learning rate
        total_steps = max(1, int(self.trainer.estimated_stepping_batches))
        steps_per_epoch = total_steps / max(1, self.trainer.max_epochs or 1)
        warmup_steps = round(warmup_epochs * steps_per_epoch)
        max_time_s = hparams.max_time_s
        min_factor = float(hparams.min_lr_factor)

        def factor(step: int) -> float:
            progress = step / total_steps
            if max_time_s:
                progress = max(progress, self._elapsed_training_seconds() / max_time_s)
            return lr_factor(step, warmup_steps, progress, schedule, min_factor)

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def _elapsed_training_seconds(self) -> float:
        """Seconds of training so far by Lightning's max_time timer (kept across --resume)."""
        trainer = self._trainer
        if trainer is None:
            return 0.0
        for callback in trainer.callbacks:
            if isinstance(callback, Timer):
                return float(callback.time_elapsed("train"))
        return 0.0

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self.trainer.optimizers:
            self.log(
                "lr",
                self.trainer.optimizers[0].param_groups[0]["lr"],
                on_step=False,
                on_epoch=True,
                batch_size=1,
            )


def _finite(value: float) -> float:
    """A score for the logs: 0 where a class never occurred (NaN would break best.ckpt)."""
    return 0.0 if math.isnan(value) else float(value)

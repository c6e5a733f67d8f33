"""The region task: trains the region-classification models (``rcnn-regions``, ``sds``).

Its training step differs from :class:`~semseg.tasks.segmentation.SegmentationTask`'s: a batch
holds each image's regions too (:mod:`semseg.regions.data`), the loss is the model's region loss
(cross-entropy of each region against the majority ground-truth class of its pixels, regions
that are mostly void ignored, weighted by the recipe's ``class_weights`` if any; SDS and
hypercolumn-regions add their figure-ground term) instead of a per-pixel loss, so the recipe's
``loss`` and ``loss_weight`` (the Dice or Lovasz term of the pixels) do not apply. Validation
pastes the regions to pixels and scores them as the segmentation task does (``val_miou``,
``val_maxf``, ...).
Optimiser, schedule and hyperparameters are the segmentation task's, so checkpoints load the
same way.
"""

from __future__ import annotations

from torch import Tensor

from semseg.models.regions import RegionTensors
from semseg.tasks.segmentation import SegmentationTask

RegionBatch = tuple[Tensor, Tensor, list[RegionTensors]]


class RegionTask(SegmentationTask):
    """:class:`SegmentationTask` with the region training and validation steps."""

    def region_loss(self, batch: RegionBatch) -> tuple[Tensor, object]:
        images, masks, regions = batch
        outputs = self.model.region_outputs(images, regions)
        loss = self.model.region_loss(
            outputs, regions, masks, self.hparams.ignore_index, class_weights=self.ce_weights
        )
        return loss, outputs

    def training_step(self, batch: RegionBatch, batch_idx: int) -> Tensor:
        loss, _ = self.region_loss(batch)
        self.stop_unless_finite(loss, batch_idx)
        self.log(
            "train_loss",
            loss,
            on_step=False,
            on_epoch=True,
            prog_bar=True,
            batch_size=batch[0].shape[0],
            sync_dist=True,
        )
        return loss

    def validation_step(self, batch: RegionBatch, batch_idx: int) -> None:
        images, masks, regions = batch
        loss, outputs = self.region_loss(batch)
        probabilities = self.model.paste(outputs, regions, images.shape[-2:]).float().exp()
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


__all__ = ["RegionTask"]

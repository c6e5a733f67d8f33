"""Training from image-level tags: the dataset of tagged images (or crops), the Lightning task
and a plain loop of a few steps.

``method="mil"``: a registry segmentation model trained through LSE pooling
(:mod:`semseg.weak.mil`, Pinheiro & Collobert, CVPR 2015); ``method="cam"``: a GAP classifier
whose class activation maps become pseudo-labels (:mod:`semseg.weak.cam`, Zhou et al., CVPR
2016). Both minimise the per-class sigmoid binary cross-entropy of their image scores against
the multi-hot tags. Validation batches may carry tags ``(N, K)`` (loss and tag mAP) or full
masks ``(N, H, W)`` (for MIL: mIoU of the raw argmax labels, the first measure of how well the
tags taught the pixels).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchmetrics.classification import MulticlassJaccardIndex, MultilabelAveragePrecision

from semseg.config import IGNORE_INDEX
from semseg.data.sample import Sample
from semseg.errors import SemsegError
from semseg.io import read_rgb
from semseg.tasks.recipe import build_optimizer
from semseg.weak.cam import CAMClassifier
from semseg.weak.mil import DEFAULT_LSE_R, MILSegmenter, mil_loss
from semseg.weak.tags import TagRecord, tag_matrix

METHODS = ("mil", "cam")


class TagDataset(Dataset):
    """``(image (3, H, W) float in [0, 1], tags (K,) float)`` per record: the record's crop of
    its image, resized to ``size`` (height, width) when given, flipped left-right at random
    when ``flip`` (tags do not change under a flip)."""

    def __init__(
        self,
        pairs: Sequence[tuple[TagRecord, Sample]],
        class_names: Sequence[str],
        size: tuple[int, int] | None = None,
        flip: bool = False,
    ) -> None:
        if not pairs:
            raise SemsegError("no tagged images to train on")
        self.pairs = list(pairs)
        self.targets = tag_matrix([record for record, _ in self.pairs], class_names)
        self.size = size
        self.flip = flip

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        record, sample = self.pairs[index]
        image = read_rgb(sample.image_path)
        if record.crop is not None:
            crop = record.crop
            if crop.top + crop.height > image.shape[0] or crop.left + crop.width > image.shape[1]:
                raise SemsegError(
                    f"tags of {record.image!r}: crop {crop.as_list()} (top, left, height, width) "
                    f"does not fit the {image.shape[0]}x{image.shape[1]} image"
                )
            image = image[crop.slices()]
        if self.size is not None and image.shape[:2] != tuple(self.size):
            resized = Image.fromarray(image).resize(self.size[::-1], Image.Resampling.BILINEAR)
            image = np.asarray(resized)
        if self.flip and torch.rand(()) < 0.5:
            image = image[:, ::-1]
        tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255.0  # a copy
        return tensor, torch.from_numpy(self.targets[index])


class TagTask(L.LightningModule):
    """Tag supervision as one LightningModule (``method`` ``mil`` or ``cam``, see module
    docstring); the optimiser is Adam at ``lr`` (or ``optimizer`` of :mod:`semseg.tasks.recipe`).
    ``class_names``, ``input_size``, ``class_colours`` and (MIL) ``prior_tiles``, the tiles of
    the tags' extent over which the image-level prior is pooled at inference, are kept in the
    checkpoint for ``semseg predict``/``evaluate`` (a MIL checkpoint loads like any
    segmentation checkpoint).
    Logged: ``train_loss``; ``val_loss`` and ``val_tag_map`` (tag batches), ``val_miou`` (mask
    batches, MIL only)."""

    def __init__(
        self,
        method: str = "mil",
        num_classes: int = 2,
        model_name: str = "fcn8s",
        model_options: dict[str, Any] | None = None,
        lse_r: float = DEFAULT_LSE_R,
        cam_options: dict[str, Any] | None = None,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        optimizer: str = "adam",
        class_names: list[str] | None = None,
        input_size: list[int] | None = None,
        class_colours: list[list[int]] | None = None,
        prior_tiles: list[int] | None = None,
    ) -> None:
        super().__init__()
        if method not in METHODS:
            raise SemsegError(f"unknown tag method {method!r}; choose one of {', '.join(METHODS)}")
        self.save_hyperparameters()
        if method == "mil":
            self.model: torch.nn.Module = MILSegmenter(
                model_name, num_classes, lse_r, model_options
            )
        else:
            self.model = CAMClassifier(num_classes, **(cam_options or {}))
        self.val_map = MultilabelAveragePrecision(num_labels=num_classes, average="macro")
        self.val_iou = MulticlassJaccardIndex(
            num_classes, average="none", ignore_index=IGNORE_INDEX
        )

    def forward(self, images: Tensor) -> Tensor:
        """MIL: pixel scores ``(N, K, H, W)``; CAM: class logits ``(N, K)``."""
        return self.model(images)

    def segmentation_model(self) -> torch.nn.Module:
        """MIL: the registry segmentation model inside (its state dict loads into
        ``build_model(model_name, num_classes, **model_options)``, for predict/evaluate)."""
        if self.hparams.method != "mil":
            raise SemsegError("a CAM classifier is not a segmentation model; use its pseudo-labels")
        return self.model.model

    def image_scores(self, images: Tensor) -> Tensor:
        """``(N, K)`` image-level logits (LSE-pooled for MIL, GAP + linear for CAM)."""
        if self.hparams.method == "mil":
            return self.model.scores(images)[1]
        return self.model(images)

    def tag_loss(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        images, tags = batch
        return mil_loss(self.image_scores(images), tags)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss = self.tag_loss(batch)
        if not torch.isfinite(loss):
            raise SemsegError(
                f"training loss became {loss.item()} at step {batch_idx + 1}; try a lower --lr"
            )
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True,
                 batch_size=batch[0].shape[0])  # fmt: skip
        return loss

    def validation_step(
        self, batch: tuple[Tensor, Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        images, targets = batch
        if targets.ndim == 2:  # tags
            scores = self.image_scores(images)
            loss = mil_loss(scores, targets)
            self.log("val_loss", loss, on_epoch=True, batch_size=images.shape[0],
                     add_dataloader_idx=False)  # fmt: skip
            self.val_map.update(scores.sigmoid(), targets.long())
        elif self.hparams.method == "mil":  # full masks
            self.val_iou.update(self(images).argmax(dim=1), targets.long())

    def on_validation_epoch_end(self) -> None:
        if self.val_map.update_count:
            self.log("val_tag_map", float(self.val_map.compute()) * 100)
        if self.val_iou.update_count:
            self.log("val_miou", float(self.val_iou.compute().mean()) * 100, prog_bar=True)
        self.val_map.reset()
        self.val_iou.reset()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        hparams = self.hparams
        return build_optimizer(
            hparams.optimizer, self.named_parameters(), lr=hparams.lr,
            weight_decay=hparams.weight_decay,
        )  # fmt: skip


def train_tag_steps(
    task: TagTask, batches: Iterable[tuple[Tensor, Tensor]], steps: int
) -> list[float]:
    """A plain loop of at most ``steps`` optimiser steps over ``batches`` (no Trainer: for
    quick checks and scripts); returns the loss of each step."""
    optimizer = task.configure_optimizers()
    task.train()
    losses: list[float] = []
    for images, tags in batches:
        if len(losses) >= steps:
            break
        optimizer.zero_grad()
        loss = task.tag_loss((images, tags))
        if not torch.isfinite(loss):
            raise SemsegError(f"training loss became {loss.item()} at step {len(losses) + 1}")
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


__all__ = ["METHODS", "TagDataset", "TagTask", "train_tag_steps"]

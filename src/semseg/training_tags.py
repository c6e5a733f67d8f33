"""Training from image-level tags (``semseg train --supervision tags --tags FILE``).

Multiple-instance learning as Pinheiro & Collobert (CVPR 2015) train it: the configured registry
segmentation model outputs per-pixel class scores, Log-Sum-Exp pooling (``train.lse_r``) turns
them into one score per class and image, and the loss is the multi-label per-class sigmoid
binary cross-entropy of the pooled scores against the tags (the paper's softmax assumes one
label per image; tags list several). See :mod:`semseg.weak.mil` and :mod:`semseg.weak.tag_task`.

Only the tags of training-split images (or of their crops) are trained on; tags of other images
of the data are left out, and a tag naming an image the data does not have is an error.
Validation is on the ground-truth masks of the validation images (mIoU of the raw argmax, which
chooses ``best.ckpt``), so the run folder, checkpoints and ``eval_val.json`` are the usual ones
and ``semseg evaluate`` / ``predict`` load the checkpoint like any other (with
``--image-prior`` / ``--smooth`` for the paper's inference). The optimiser is ``train.optimizer``
at a constant ``train.lr``.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader

from semseg.config import Config
from semseg.data.datamodule import SegmentationDataModule
from semseg.data.sample import Sample
from semseg.errors import SemsegError
from semseg.io import open_image
from semseg.runs import warn
from semseg.weak.jobs import open_box_data
from semseg.weak.mil import prior_tiles_for
from semseg.weak.tag_task import TagDataset, TagTask
from semseg.weak.tags import TagRecord, match_samples, read_tags

SIZE_MULTIPLE = 32  # every registry model takes sizes divisible by 32


def check_tags(config: Config, class_names: Sequence[str]) -> list[TagRecord]:
    """The tags file's records, checked against the class names and the data's images (every
    split): an unknown class, a bad row or an image the data lacks is a one-line error, raised
    before a run folder is made."""
    tags_file = str(config.train.tags)
    records = read_tags(tags_file, class_names)
    assert config.data.root is not None
    every_image = open_box_data(config.data.root, config.data.class_table).samples
    match_samples(records, every_image, tags_file)
    return records


def training_pairs(
    config: Config, class_names: Sequence[str], train_samples: Sequence[Sample]
) -> list[tuple[TagRecord, Sample]]:
    """The tag records of the training images, each with its sample (see module docstring)."""
    tags_file = str(config.train.tags)
    records = check_tags(config, class_names)
    pairs = match_samples(
        [r for r in records if r.name in {s.name for s in train_samples}], train_samples, tags_file
    )
    if not pairs:
        raise SemsegError(
            f"{tags_file}: none of its {len(records)} tagged image(s) is a training image"
        )
    if len(pairs) < len(records):
        left_out = len(records) - len(pairs)
        warn(f"{left_out} tag record(s) of images outside the training split left out")
    return pairs


def crop_input_size(config: Config, pairs: Sequence[tuple[TagRecord, Sample]]) -> tuple[int, int]:
    """The training input size of the tagged crops: a whole image is resized to ``data.height x
    data.width``; a crop is resized by the same factors (so objects keep the scale they have
    at inference), rounded to a multiple of 32."""
    height, width = config.data.height, config.data.width
    extent = tag_extent(pairs)
    if extent is None:
        return height, width
    return multiple_of_32(extent[0] * height), multiple_of_32(extent[1] * width)


def tag_extent(pairs: Sequence[tuple[TagRecord, Sample]]) -> tuple[float, float] | None:
    """The tags' extent as fractions of the image (crop height / image height, crop width /
    image width), from the first record's crop; None for tags of whole images."""
    record, sample = pairs[0]
    if record.crop is None:
        return None
    image_width, image_height = open_image(sample.image_path).size
    return record.crop.height / image_height, record.crop.width / image_width


def tag_prior_tiles(pairs: Sequence[tuple[TagRecord, Sample]]) -> list[int]:
    """Tiles of the frame (rows, columns) of the tags' extent, for the image-level prior at
    inference (:func:`semseg.weak.mil.prior_tiles_for`); ``[1, 1]`` for tags of whole
    images."""
    extent = tag_extent(pairs)
    return [1, 1] if extent is None else list(prior_tiles_for(extent))


def multiple_of_32(side: float) -> int:
    return max(SIZE_MULTIPLE, round(side / SIZE_MULTIPLE) * SIZE_MULTIPLE)


class TagDataModule(L.LightningDataModule):
    """Training batches of ``(images, tags)`` from the tagged images; validation batches of
    ``(images, masks)`` from the mask data module's validation images."""

    def __init__(
        self,
        config: Config,
        pairs: Sequence[tuple[TagRecord, Sample]],
        class_names: Sequence[str],
        masks: SegmentationDataModule,
    ) -> None:
        super().__init__()
        self.config = config
        self.masks = masks
        self.train_set = TagDataset(
            pairs, class_names, crop_input_size(config, pairs), flip=config.data.hflip
        )

    def train_dataloader(self) -> DataLoader:
        workers = self.config.data.num_workers
        return DataLoader(
            self.train_set,
            batch_size=self.config.train.batch_size,
            shuffle=True,
            num_workers=workers,
            persistent_workers=workers > 0,
            generator=torch.Generator().manual_seed(self.config.train.seed),
        )

    def val_dataloader(self) -> DataLoader:
        return self.masks.val_dataloader()


def build_tag_task(
    config: Config,
    class_names: list[str],
    class_colours: list[list[int]] | None,
    prior_tiles: list[int] | None = None,
) -> TagTask:
    """The MIL task of the configured model, at the configured optimiser and learning rate;
    ``prior_tiles`` (see :func:`tag_prior_tiles`) goes into the checkpoint."""
    model = config.model
    options = {
        "keep_prob": model.keep_prob,
        "width_mult": model.width_mult,
        "backbone": model.backbone,
        "pretrained": model.pretrained,
        "backbone_weights": model.backbone_weights,
    }
    return TagTask(
        method="mil",
        num_classes=model.num_classes,
        model_name=model.name,
        model_options=options,
        lse_r=config.train.lse_r,
        lr=config.train.lr,
        weight_decay=config.train.weight_decay,
        optimizer=config.train.optimizer,
        class_names=class_names,
        input_size=[config.data.height, config.data.width],
        class_colours=class_colours,
        prior_tiles=prior_tiles,
    )


def tag_training(
    config: Config,
    masks: SegmentationDataModule,
    class_names: list[str],
    class_colours: list[list[int]] | None,
) -> tuple[TagTask, TagDataModule]:
    """The task and data module ``trainer.fit`` takes for ``train.supervision: tags``."""
    pairs = training_pairs(config, class_names, masks.train_samples)
    task = build_tag_task(config, class_names, class_colours, tag_prior_tiles(pairs))
    return task, TagDataModule(config, pairs, class_names, masks)


__all__ = [
    "TagDataModule",
    "build_tag_task",
    "crop_input_size",
    "tag_extent",
    "tag_prior_tiles",
    "tag_training",
    "training_pairs",
]

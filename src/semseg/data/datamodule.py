"""Datasets and the Lightning data module: one code path for KITTI, folder and synthetic data."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from semseg.config import Config, DataConfig
from semseg.data.classes import ClassTable
from semseg.data.folder import index_folder, split_names
from semseg.data.kitti import index_split, read_sample, split_train_val
from semseg.data.multiclass import class_table_for, sample_reader, train_val_samples
from semseg.data.sample import Sample
from semseg.data.transforms import apply, build_transforms
from semseg.errors import SemsegError

SampleReader = Callable[[Sample], tuple[np.ndarray, np.ndarray]]


MULTICLASS_KINDS = ("folder", "voc", "cityscapes")


def data_class_table(data: DataConfig) -> ClassTable | None:
    """The class table of the configured data: ``data.class_table``, else the data's own
    (``ROOT/classes.yaml``, VOC's or Cityscapes' classes); None for KITTI and table-less folders."""
    if data.kind not in MULTICLASS_KINDS or data.root is None:
        return None
    return class_table_for(data.kind, data.root, data.class_table)


def given_train_val(data: DataConfig) -> dict[str, list[Sample]] | None:
    """The data's own train / validation samples (CamVid's ``train/`` and ``val/``, VOC,
    Cityscapes); None when the data has one pool of images to split at random."""
    if data.kind not in MULTICLASS_KINDS:
        return None
    return train_val_samples(data.kind, str(data.root), skip_missing=data.skip_bad)


def check_given_split(data: DataConfig) -> None:
    """Refuse, before a run folder exists, data whose own train/val split a run cannot keep
    (a missing train/ or val/, a name in both)."""
    given = given_train_val(data)
    if given is not None:
        split_names(given)


def index_samples(data: DataConfig) -> list[Sample]:
    """Every labelled sample of the configured dataset (``data.root`` must exist); for data with
    its own validation split, the training and the validation samples."""
    assert data.root is not None
    given = given_train_val(data)
    if given is not None:
        split_names(given)  # names must be unique across the splits
        return [*given["train"], *given["val"]]
    if data.kind == "folder":
        return index_folder(data.root, skip_missing=data.skip_bad)
    return index_split(
        data.root, "training", data.categories, data.task, skip_missing=data.skip_bad
    )


def data_split(data: DataConfig, samples: Sequence[Sample], seed: int) -> dict[str, list[str]]:
    """The run's train/val names: the data's own split when it has one (no random re-split of a
    given validation set), else a seeded random split of ``samples``."""
    given = given_train_val(data)
    if given is not None:
        return split_names(given)
    return make_split(samples, data.val_fraction, seed)


def make_reader(data: DataConfig, num_classes: int) -> SampleReader:
    """The function that loads ``(image, mask)`` arrays for one sample of this dataset kind."""
    if data.kind in MULTICLASS_KINDS:
        return sample_reader(data.kind, num_classes, data_class_table(data))
    return read_sample


def make_train_reader(config: Config) -> SampleReader:
    """How the training images are read: with their masks, or with the labels of
    ``data.labels`` (``train --labels``), or (BoxSup) with labels the trainer sets per epoch."""
    from semseg.data.labels import label_folder_reader, unlabelled_reader

    if config.train.supervision == "boxsup":
        return unlabelled_reader
    if config.data.labels is not None:
        return label_folder_reader(config.data.labels, config.model.num_classes)
    return make_reader(config.data, config.model.num_classes)


def make_split(samples: Sequence[Sample], val_fraction: float, seed: int) -> dict[str, list[str]]:
    """Deterministic train/val split of sample names, stratified by category (samples without
    one form one stratum, seeded as ``"all"`` so their split is the one earlier releases made)."""
    by_category: dict[str, list[str]] = {}
    for sample in samples:
        by_category.setdefault(sample.category or "all", []).append(sample.name)
    return split_train_val(by_category, val_fraction, seed)


class SegmentationDataset(Dataset):
    """Samples read by ``reader`` and transformed jointly; decoded arrays are cached in memory."""

    def __init__(
        self, samples: Sequence[Sample], reader: SampleReader, transform: Callable
    ) -> None:
        self.samples = list(samples)
        self.reader = reader
        self.transform = transform
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def preload(self, skip_bad: bool) -> list[str]:
        """Read every sample once (filling the cache) so a bad file fails before training starts.

        With ``skip_bad`` unreadable samples are dropped instead; returns their error messages.
        """
        kept, cache, skipped = [], {}, []
        for sample in self.samples:
            try:
                arrays = self.reader(sample)
            except SemsegError as error:
                if not skip_bad:
                    raise
                skipped.append(str(error))
                continue
            cache[len(kept)] = arrays
            kept.append(sample)
        self.samples, self._cache = kept, cache
        return skipped

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if index not in self._cache:
            self._cache[index] = self.reader(self.samples[index])
        return self._cache[index]

    def set_target(self, index: int, mask: np.ndarray) -> None:
        """Replace sample ``index``'s mask (labels chosen during training, e.g. BoxSup's)."""
        image, old = self.load(index)
        if mask.shape != old.shape:
            raise ValueError(f"mask {mask.shape} for an image of {old.shape}")
        self._cache[index] = (image, mask)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image, mask = self.load(index)
        return apply(self.transform, image, mask)


class SegmentationDataModule(L.LightningDataModule):
    """Train and validation loaders over the samples named by a split."""

    def __init__(self, config: Config, samples: Sequence[Sample], split: dict[str, list[str]]):
        super().__init__()
        self.config = config
        by_name = {sample.name: sample for sample in samples}
        self.train_samples = [by_name[name] for name in split["train"] if name in by_name]
        self.val_samples = [by_name[name] for name in split["val"] if name in by_name]
        reader = make_reader(config.data, config.model.num_classes)
        self.train_set = SegmentationDataset(
            self.train_samples, make_train_reader(config), build_transforms(config.data, train=True)
        )
        self.val_set = SegmentationDataset(
            self.val_samples, reader, build_transforms(config.data, train=False)
        )
        self.skipped = self.train_set.preload(config.data.skip_bad)
        self.skipped += self.val_set.preload(config.data.skip_bad)
        self.train_samples, self.val_samples = self.train_set.samples, self.val_set.samples
        if not self.train_samples or not self.val_samples:
            raise SemsegError("no readable images left for training or validation")

    def _loader(
        self, dataset: Dataset, shuffle: bool, collate_fn: Callable | None = None
    ) -> DataLoader:
        workers = self.config.data.num_workers
        return DataLoader(
            dataset,
            batch_size=self.config.train.batch_size,
            shuffle=shuffle,
            num_workers=workers,
            persistent_workers=workers > 0,
            drop_last=False,
            collate_fn=collate_fn,
            generator=torch.Generator().manual_seed(self.config.train.seed) if shuffle else None,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

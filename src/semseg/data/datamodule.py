"""Datasets and the Lightning data module: one code path for KITTI, folder and synthetic data."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from semseg.config import Config, DataConfig
from semseg.data.folder import index_folder, is_split_layout, load_class_table, read_folder_sample
from semseg.data.kitti import index_split, read_sample, split_train_val
from semseg.data.sample import Sample
from semseg.data.transforms import apply, build_transforms
from semseg.errors import SemsegError

SampleReader = Callable[[Sample], tuple[np.ndarray, np.ndarray]]


def check_supported_layout(data: DataConfig) -> None:
    """Refuse, before a run starts, a folder layout that training and scoring cannot read yet."""
    root = Path(str(data.root))
    if data.kind == "folder" and is_split_layout(root) and not (root / "images").is_dir():
        raise SemsegError(
            f"{root} is split into train/ and val/ folders (the CamVid layout): training "
            "and scoring on it is not supported yet; give a folder with images/ and masks/"
        )


def index_samples(data: DataConfig) -> list[Sample]:
    """Every labelled sample of the configured dataset (``data.root`` must exist)."""
    assert data.root is not None
    if data.kind == "folder":
        check_supported_layout(data)
        return index_folder(data.root, skip_missing=data.skip_bad)
    return index_split(
        data.root, "training", data.categories, data.task, skip_missing=data.skip_bad
    )


def make_reader(data: DataConfig, num_classes: int) -> SampleReader:
    """The function that loads ``(image, mask)`` arrays for one sample of this dataset kind."""
    if data.kind == "folder":
        table = load_class_table(data.class_table) if data.class_table else None
        return functools.partial(read_folder_sample, num_classes=num_classes, class_table=table)
    return read_sample


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
            self.train_samples, reader, build_transforms(config.data, train=True)
        )
        self.val_set = SegmentationDataset(
            self.val_samples, reader, build_transforms(config.data, train=False)
        )
        self.skipped = self.train_set.preload(config.data.skip_bad)
        self.skipped += self.val_set.preload(config.data.skip_bad)
        self.train_samples, self.val_samples = self.train_set.samples, self.val_set.samples
        if not self.train_samples or not self.val_samples:
            raise SemsegError("no readable images left for training or validation")

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        workers = self.config.data.num_workers
        return DataLoader(
            dataset,
            batch_size=self.config.train.batch_size,
            shuffle=shuffle,
            num_workers=workers,
            persistent_workers=workers > 0,
            drop_last=False,
            generator=torch.Generator().manual_seed(self.config.train.seed) if shuffle else None,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

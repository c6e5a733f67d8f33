"""Data for the region models: each image with its mask and its regions, transformed together.

The regions of an image come from the proposal cache (:func:`semseg.regions.proposals.
cached_regions`, computed at the image's native size, once) and go through the same random
crop, resize and flip as the image: label maps as masks (nearest), box-only regions as boxes.
Regions a crop removes are dropped and the rest renumbered; boxes of label-map regions are the
tight boxes of what remains.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from semseg.config import Config
from semseg.data.datamodule import SegmentationDataModule, SegmentationDataset
from semseg.data.transforms import to_tv_tensors
from semseg.models.regions import RegionTensors
from semseg.regions.proposals import (
    ProposalParams,
    Regions,
    cached_regions,
    default_cache_dir,
    regions_to_tensors,
)

RegionSample = tuple[Tensor, Tensor, RegionTensors]


def tight_boxes(label_maps: Tensor, count: int) -> Tensor:
    """``(count, 4)`` x0, y0, x1, y1 (exclusive) of the regions of ``label_maps`` ``(L, H, W)``."""
    height, width = label_maps.shape[-2:]
    lo = torch.full((count, 2), float(max(height, width)))
    hi = torch.zeros(count, 2)
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    points = torch.stack([cols, rows], dim=-1).float()
    for level in label_maps:
        inside = level >= 0
        ids = level[inside][:, None].expand(-1, 2)
        lo.scatter_reduce_(0, ids, points[inside], reduce="amin")
        hi.scatter_reduce_(0, ids, points[inside] + 1, reduce="amax")
    return torch.cat([lo, hi], dim=1)


def renumber(label_maps: Tensor, boxes: Tensor, num_mapped: int) -> RegionTensors:
    """Transformed regions with the vanished ones dropped: label-map ids made ``0 .. M-1``
    again, their boxes recomputed, box-only regions of no area removed."""
    present = torch.unique(label_maps[label_maps >= 0])
    lookup = torch.full((num_mapped + 1,), -1, dtype=torch.long)
    lookup[present] = torch.arange(present.numel())
    maps = lookup[label_maps.clamp(min=-1)]  # -1 indexes the spare last entry: stays -1
    mapped = int(present.numel())
    height, width = label_maps.shape[-2:]
    boxes = boxes.reshape(-1, 4).float().clone()
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    kept = boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]
    return RegionTensors(maps, torch.cat([tight_boxes(maps, mapped), kept]), mapped)


def transform_with_regions(
    transform: v2.Compose, image: np.ndarray, mask: np.ndarray, regions: Regions
) -> RegionSample:
    """Image, mask and regions through one draw of ``transform``."""
    image_tensor, mask_tensor = to_tv_tensors(image, mask)
    maps = tv_tensors.Mask(torch.from_numpy(regions.label_maps.astype(np.int32)))
    box_only = regions.boxes[regions.num_mapped :]
    boxes = tv_tensors.BoundingBoxes(
        torch.from_numpy(np.ascontiguousarray(box_only, dtype=np.float32)).reshape(-1, 4),
        format="XYXY",
        canvas_size=image.shape[:2],
    )
    out_image, out_mask, out_maps, out_boxes = transform(image_tensor, mask_tensor, maps, boxes)
    region_tensors = renumber(
        out_maps.as_subclass(Tensor).long(), out_boxes.as_subclass(Tensor), regions.num_mapped
    )
    return out_image.as_subclass(Tensor), out_mask.as_subclass(Tensor).long(), region_tensors


class RegionDataset(Dataset):
    """A :class:`SegmentationDataset` whose items also carry the image's regions (cached on disk
    in ``cache_dir``)."""

    def __init__(self, base: SegmentationDataset, params: ProposalParams, cache_dir: Path) -> None:
        self.base = base
        self.params = params
        self.cache_dir = Path(cache_dir)
        self.computed = 0  # regions computed (not found in the cache) by this dataset

    @property
    def samples(self) -> list:
        return self.base.samples

    def __len__(self) -> int:
        return len(self.base)

    def regions(self, index: int) -> Regions:
        """The regions of sample ``index``, read from the disk cache each time (CamVid's label
        maps alone would take most of a gigabyte of memory), computed once if absent."""
        image, _ = self.base.load(index)
        sample = self.base.samples[index]
        regions, computed = cached_regions(sample.image_path, image, self.params, self.cache_dir)
        self.computed += int(computed)
        return regions

    def __getitem__(self, index: int) -> RegionSample:
        image, mask = self.base.load(index)
        return transform_with_regions(self.base.transform, image, mask, self.regions(index))


def collate_regions(batch: Sequence[RegionSample]) -> tuple[Tensor, Tensor, list[RegionTensors]]:
    """Stack images and masks; regions stay a list (their counts differ)."""
    images, masks, regions = zip(*batch, strict=True)
    return torch.stack(images), torch.stack(masks), list(regions)


def proposal_params_of(config: Config) -> ProposalParams:
    return ProposalParams(config.model.proposals)


def proposals_dir_of(config: Config) -> Path:
    """``data.proposals_dir``, else the user's cache (``~/.cache/semseg/proposals``)."""
    given = config.data.proposals_dir
    return Path(given) if given else default_cache_dir()


class RegionDataModule(SegmentationDataModule):
    """The segmentation data module with regions added to every training and validation item."""

    def __init__(self, config: Config, samples: Sequence, split: dict[str, list[str]]) -> None:
        super().__init__(config, samples, split)
        params, cache_dir = proposal_params_of(config), proposals_dir_of(config)
        self.train_regions = RegionDataset(self.train_set, params, cache_dir)
        self.val_regions = RegionDataset(self.val_set, params, cache_dir)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_regions, shuffle=True, collate_fn=collate_regions)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_regions, shuffle=False, collate_fn=collate_regions)


__all__ = [
    "RegionDataModule",
    "RegionDataset",
    "collate_regions",
    "regions_to_tensors",
    "renumber",
    "transform_with_regions",
]

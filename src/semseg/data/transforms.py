"""Joint image/mask transforms on ``torchvision.transforms.v2``.

Images are ``tv_tensors.Image`` (uint8 until the last step), masks ``tv_tensors.Mask``. Masks are
resized with *exact* nearest-neighbour interpolation: v2's default for masks (legacy "nearest",
``src = floor(dst * scale)``) samples up to a source pixel up and left of where bilinear
resampling of the image looks, which shifts labels against pixels; nearest-exact samples at the
same pixel centres. Class indices and the ignore index survive every step.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2

from semseg.config import IGNORE_INDEX, DataConfig

MASK_INTERPOLATION = v2.InterpolationMode.NEAREST_EXACT


class Resize(v2.Resize):
    """``v2.Resize`` that resizes masks with centre-aligned nearest-neighbour sampling."""

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask):
            return v2.functional.resize(inpt, self.size, interpolation=MASK_INTERPOLATION)
        return super().transform(inpt, params)


class RandomResizedCrop(v2.RandomResizedCrop):
    """``v2.RandomResizedCrop`` that resizes masks with centre-aligned nearest sampling."""

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask):
            cropped = v2.functional.crop(
                inpt, params["top"], params["left"], params["height"], params["width"]
            )
            return v2.functional.resize(cropped, self.size, interpolation=MASK_INTERPOLATION)
        return super().transform(inpt, params)


def build_transforms(config: DataConfig, train: bool) -> v2.Compose:
    """Resize to the training size; for training also flip, scale-crop and colour jitter."""
    size = (config.height, config.width)
    steps: list[v2.Transform] = []
    if train and config.scale_crop > 0:
        aspect = config.width / config.height
        steps.append(
            RandomResizedCrop(
                size, scale=(config.scale_crop, 1.0), ratio=(aspect * 0.8, aspect * 1.25)
            )
        )
    else:
        steps.append(Resize(size))
    if train and config.hflip:
        steps.append(v2.RandomHorizontalFlip())
    if train and config.color_jitter > 0:
        strength = config.color_jitter
        steps.append(v2.ColorJitter(brightness=strength, contrast=strength, saturation=strength))
    steps.append(v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True))
    return v2.Compose(steps)


def to_tv_tensors(image: np.ndarray, mask: np.ndarray | None) -> tuple[Tensor, Tensor | None]:
    """``(H, W, 3)`` uint8 and ``(H, W)`` uint8 arrays as v2 Image and Mask tensors."""
    image_tensor = tv_tensors.Image(torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1))
    if mask is None:
        return image_tensor, None
    return image_tensor, tv_tensors.Mask(torch.from_numpy(np.array(mask, copy=True)))


def apply(transform: v2.Compose, image: np.ndarray, mask: np.ndarray) -> tuple[Tensor, Tensor]:
    """Transform an image and its mask together: float image ``(3, h, w)``, long mask ``(h, w)``."""
    image_tensor, mask_tensor = to_tv_tensors(image, mask)
    out_image, out_mask = transform(image_tensor, mask_tensor)
    return out_image.as_subclass(Tensor), out_mask.as_subclass(Tensor).long()


def image_to_tensor(image: np.ndarray, height: int, width: int) -> Tensor:
    """An inference input: ``(H, W, 3)`` uint8 -> float ``(3, height, width)`` in [0, 1]."""
    from semseg.inference.preprocess import model_input

    return torch.from_numpy(model_input(image, height, width))


__all__ = ["IGNORE_INDEX", "apply", "build_transforms", "image_to_tensor"]

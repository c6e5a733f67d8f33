"""The model input of an image and the full-size probabilities of its logits, in numpy.

Both inference paths use :func:`model_input`: the torch one (:func:`semseg.data.transforms.
image_to_tensor`) and the torch-free start of ``semseg predict`` (:mod:`semseg.inference.
fast_start`), so both feed the model the same numbers. :func:`upsample_bilinear` is torch's
``F.interpolate(mode="bilinear", align_corners=False)`` written in numpy (checked against torch in
the tests).
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def resize_rgb(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """``(H, W, 3)`` uint8 at ``height x width``: bilinear, antialiased when shrinking (Pillow's
    filter, the one torchvision's ``antialias=True`` uint8 kernel reproduces to within one
    level)."""
    if image.shape[:2] == (height, width):
        return np.ascontiguousarray(image)
    picture = Image.fromarray(np.ascontiguousarray(image))
    return np.asarray(picture.resize((width, height), Image.Resampling.BILINEAR))


def model_input(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """An inference input: ``(H, W, 3)`` uint8 -> float32 ``(3, height, width)`` in [0, 1]."""
    resized = resize_rgb(image, height, width).transpose(2, 0, 1)
    return resized.astype(np.float32) / np.float32(255.0)


def source_indices(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each output row (or column): the two input indices and the weight of the second,
    as torch computes them (half-pixel centres, the source clamped at 0). torch's
    ``scale * (i + 0.5) - 0.5`` compiles to a fused multiply-add (one rounding): computed here
    in float64 and rounded once to float32, which matches it where float32 steps would not
    (one ulp of the index at column 1000 moves a weight by 3e-5)."""
    scale = float(np.float32(in_size / out_size))
    exact = (np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5
    source = np.maximum(exact.astype(np.float32), np.float32(0.0))
    first = np.minimum(source.astype(np.int64), in_size - 1)
    second = np.minimum(first + 1, in_size - 1)
    return first, second, (source - first).astype(np.float32)


def upsample_bilinear(logits: np.ndarray, height: int, width: int) -> np.ndarray:
    """``(C, h, w)`` -> ``(C, height, width)`` float32, bilinear with ``align_corners=False``."""
    top, bottom, down = source_indices(height, logits.shape[1])
    left, right, across = source_indices(width, logits.shape[2])
    rows = logits[:, top, :] * (1 - down)[:, None] + logits[:, bottom, :] * down[:, None]
    return rows[:, :, left] * (1 - across) + rows[:, :, right] * across


def softmax(scores: np.ndarray, axis: int = 0) -> np.ndarray:
    shifted = np.exp(scores - scores.max(axis=axis, keepdims=True))
    return shifted / shifted.sum(axis=axis, keepdims=True)

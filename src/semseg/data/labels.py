"""Training labels that are not the data's own masks: a folder of label PNGs, one per training
image (``NAME.png``, matched by the image's file stem, training ids, 255 = ignore), as
``semseg pseudo-labels`` writes them (``train --labels DIR``, ``data.labels``), or labels that the
trainer fills in itself (BoxSup, ``train.supervision: boxsup``).

Only the training images read these; validation keeps the ground truth.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from semseg.config import IGNORE_INDEX
from semseg.data.sample import Sample
from semseg.errors import SemsegError
from semseg.io import open_image, read_rgb

SampleReader = Callable[[Sample], tuple[np.ndarray, np.ndarray]]


def read_label_png(path: str | Path, num_classes: int, shape: tuple[int, int]) -> np.ndarray:
    """A label PNG as training ids ``(H, W)`` uint8, checked against the class count and the
    size ``shape`` of its image."""
    image = open_image(path)
    if image.mode not in ("L", "P"):
        raise SemsegError(f"{path}: a pseudo-label must be a single-channel PNG (got {image.mode})")
    labels = np.asarray(image, dtype=np.uint8)
    bad = (labels >= num_classes) & (labels != IGNORE_INDEX)
    if bad.any():
        raise SemsegError(
            f"{path}: label {int(labels[bad][0])} but there are {num_classes} classes"
        )
    if labels.shape != tuple(shape):
        raise SemsegError(
            f"{path}: size {labels.shape[1]}x{labels.shape[0]} differs from its image "
            f"{shape[1]}x{shape[0]}"
        )
    return labels


def label_folder_reader(folder: str | Path, num_classes: int) -> SampleReader:
    """Reads a sample's image and its label PNG ``folder/NAME.png`` (errors name the file; a
    missing one is an error that ``--skip-bad`` turns into a skipped sample)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SemsegError(f"--labels {folder}: label folder not found")

    def read(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        path = folder / f"{sample.name}.png"
        if not path.is_file():
            raise SemsegError(
                f"training image {sample.name} has no label {path} (--skip-bad skips such images)"
            )
        image = read_rgb(sample.image_path)
        return image, read_label_png(path, num_classes, image.shape[:2])

    return read


def unlabelled_reader(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    """A sample's image with every pixel ignored: labels the trainer fills in later."""
    image = read_rgb(sample.image_path)
    return image, np.full(image.shape[:2], IGNORE_INDEX, dtype=np.uint8)


__all__ = ["label_folder_reader", "read_label_png", "unlabelled_reader"]

"""The images int8 calibration and its quality check read: indexed from the user's data,
split into calibration and held-out images, preprocessed as the Predictor does, and fed to
onnxruntime's calibrator one image at a time."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from semseg.errors import SemsegError
from semseg.inference.checkpoint import LoadedModel


@dataclass
class ImageSet:
    """Images (``(H, W, 3)`` uint8) with their class-index masks where the data has labels."""

    images: list[np.ndarray]
    names: list[str]
    categories: list[str]
    masks: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.images)


def spread(count: int, total: int) -> list[int]:
    """``count`` indices spread evenly over ``range(total)`` (all of them if fewer)."""
    if count >= total:
        return list(range(total))
    return sorted({int(round(v)) for v in np.linspace(0, total - 1, count)})


def split_calibration(total: int, images: int, eval_images: int) -> tuple[list[int], list[int]]:
    """Indices for calibration and, disjoint from them where the data allows, for evaluation.

    With no image left over, the evaluation uses the calibration images."""
    calibration = spread(images, total)
    rest = [i for i in range(total) if i not in set(calibration)]
    if not rest or eval_images <= 0:
        return calibration, calibration
    return calibration, [rest[i] for i in spread(eval_images, len(rest))]


def check_class_table(loaded: LoadedModel, class_table: str | None, is_kitti: bool) -> None:
    """Refuse data labelled with another class table than the model's."""
    if is_kitti and loaded.num_classes != 2:
        raise SemsegError(
            f"{loaded.path} predicts {loaded.num_classes} classes; KITTI road data has 2"
        )
    if class_table is None:
        return
    from semseg.data.folder import load_class_table

    names = load_class_table(class_table).names
    if list(names) != list(loaded.class_names):
        raise SemsegError(
            f"--class-table {class_table} names {names}, but {loaded.path.name} was trained on "
            f"{loaded.class_names}"
        )


def index_data(
    data: Path, loaded: LoadedModel, class_table: str | None = None
) -> tuple[list[Any], Callable[[Any], tuple[np.ndarray, np.ndarray | None]]]:
    """The items of ``data`` and a reader of one item: KITTI ``data_road`` or images/ + masks/
    (labelled), or a plain folder of images (no labels: agreement only, no MaxF / mIoU)."""
    from semseg.data.layout import is_kitti_layout
    from semseg.evaluation import data_config_for, labelled_samples
    from semseg.io import list_images, read_rgb

    if not data.is_dir():
        raise SemsegError(f"--data folder not found: {data}")
    kitti = is_kitti_layout(data)
    if kitti or (data / "images").is_dir():
        from semseg.data.datamodule import make_reader

        check_class_table(loaded, class_table, kitti)
        samples = labelled_samples(data)
        return samples, make_reader(data_config_for(data, class_table), loaded.num_classes)
    paths = list_images(data)
    if not paths:
        raise SemsegError(
            f"--data {data} holds no images (a KITTI data_road folder, images/ + masks/, or "
            "a folder of images)"
        )
    return paths, lambda path: (read_rgb(path), None)


def read_image_set(items: Sequence[Any], reader: Callable, indices: Sequence[int]) -> ImageSet:
    images, masks, names, categories = [], [], [], []
    for index in indices:
        item = items[index]
        image, mask = reader(item)
        images.append(image)
        masks.append(mask)
        names.append(getattr(item, "name", None) or Path(item).stem)
        categories.append(getattr(item, "category", "all"))
    labelled = all(m is not None for m in masks)
    return ImageSet(images, names, categories, masks if labelled else None)


def images_from_paths(paths: Sequence[Path], count: int) -> list[np.ndarray]:
    """Up to ``count`` readable images of ``paths``, spread evenly over them (``--precision
    int8``'s calibration images in ``semseg predict``: the images given)."""
    from semseg.io import read_rgb

    images = []
    for index in spread(count, len(paths)):
        try:
            images.append(read_rgb(paths[index]))
        except Exception:  # an unreadable image is reported where it is predicted
            continue
    return images


def images_from_data(
    data: Path, loaded: LoadedModel, count: int, class_table: str | None = None
) -> list[np.ndarray]:
    """Up to ``count`` images of a data folder (KITTI, images/ + masks/, or plain images),
    spread evenly over it: int8 calibration images for ``semseg serve --calibration-data``."""
    items, reader = index_data(Path(data), loaded, class_table)
    return read_image_set(items, reader, spread(count, len(items))).images


def check_input_size(input_size: Sequence[int]) -> tuple[int, int]:
    height, width = (int(v) for v in input_size)
    if height < 1 or width < 1:
        raise SemsegError(f"the model's input size {height}x{width} is not a size")
    return height, width


class ImageCalibrationReader:
    """Feeds images to ONNX Runtime's calibrator, one ``(1, 3, H, W)`` batch at a time, resized
    to the model's input size exactly as :class:`Predictor` does.

    An ``onnxruntime.quantization.CalibrationDataReader`` (``get_next``, ``rewind``; that abstract
    class counts any class with ``get_next`` as its subclass, so ONNX Runtime's quantization
    package is imported only by the quantizer), with the ``__len__`` / ``set_range`` pair through
    which the quantizer collects statistics a slice at a time (``CalibStridedMinMax``): only one
    image's activations are in memory at once.
    """

    def __init__(
        self, images: Sequence[np.ndarray], input_size: Sequence[int], input_name: str = "image"
    ) -> None:
        if not images:
            raise SemsegError("calibration needs at least one image")
        self.images = list(images)
        self.height, self.width = check_input_size(input_size)
        self.input_name = input_name
        self.start, self.end, self.position = 0, len(self.images), 0

    def __len__(self) -> int:
        return len(self.images)

    def __iter__(self) -> ImageCalibrationReader:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = self.get_next()
        if batch is None:
            raise StopIteration
        return batch

    def batch(self, index: int) -> np.ndarray:
        from semseg.data.transforms import image_to_tensor

        tensor = image_to_tensor(self.images[index], self.height, self.width)
        return np.ascontiguousarray(tensor.unsqueeze(0).numpy(), dtype=np.float32)

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position >= self.end:
            return None
        batch = self.batch(self.position)
        self.position += 1
        return {self.input_name: batch}

    def rewind(self) -> None:
        self.position = self.start

    def set_range(self, start_index: int, end_index: int) -> None:
        self.start = max(0, start_index)
        self.end = min(len(self.images), end_index)
        self.position = self.start


# ---------------------------------------------------------------------------------------------
# Quantizing one ONNX file

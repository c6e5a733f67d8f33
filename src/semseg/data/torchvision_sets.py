"""Pascal VOC 2012 and Cityscapes, indexed by torchvision's dataset classes (never downloaded).

* Pascal VOC 2012 (Everingham et al., IJCV 2010): ``VOCdevkit/VOC2012`` with ``JPEGImages``,
  ``SegmentationClass`` and ``ImageSets/Segmentation/{train,val,trainval}.txt``; 21 classes
  (background and 20 objects), 255 = void (object borders and difficult regions).
* Cityscapes (Cordts et al., CVPR 2016): ``leftImg8bit/SPLIT/CITY/*_leftImg8bit.png`` with
  ``gtFine/SPLIT/CITY/*_gtFine_labelIds.png``; the label ids are mapped to the 19 train ids of
  the benchmark (``torchvision.datasets.Cityscapes.classes``), everything else to 255.

``torchvision.datasets.VOCSegmentation`` and ``Cityscapes`` (``download=False``) find the files
of a split; semseg reads them with its own checked readers, so a damaged file is a one-line
error like everywhere else. Both readers return ``(image (H, W, 3) uint8, mask (H, W) uint8)``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torchvision.datasets import Cityscapes, VOCSegmentation

from semseg.config import IGNORE_INDEX
from semseg.data.classes import ClassTable, named_table
from semseg.data.kitti import check_same_size
from semseg.data.sample import Sample
from semseg.errors import SemsegError
from semseg.io import open_image, read_rgb

VOC_SPLITS = ("train", "val", "trainval")
CITYSCAPES_SPLITS = ("train", "val", "test")
VOC_NAMES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


def voc_colours(count: int = len(VOC_NAMES)) -> np.ndarray:
    """The VOC devkit's colour map (``VOClabelcolormap.m``): bits of the class id spread over
    the high bits of red, green and blue."""
    colours = np.zeros((count, 3), dtype=np.uint8)
    for class_id in range(count):
        value, r, g, b = class_id, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= (value & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        colours[class_id] = (r, g, b)
    return colours


def voc_class_table() -> ClassTable:
    """VOC 2012's 21 classes in the devkit's colours."""
    return named_table(VOC_NAMES, voc_colours().tolist(), source="Pascal VOC 2012")


def cityscapes_train_classes() -> list[Cityscapes.CityscapesClass]:
    """The 19 classes scored by the Cityscapes benchmark, in train-id order."""
    scored = [c for c in Cityscapes.classes if 0 <= c.train_id < IGNORE_INDEX]
    return sorted(scored, key=lambda c: c.train_id)


def cityscapes_class_table() -> ClassTable:
    """Cityscapes' 19 train ids with the benchmark's names and colours."""
    classes = cityscapes_train_classes()
    return named_table(
        [c.name for c in classes], [list(c.color) for c in classes], source="Cityscapes"
    )


def cityscapes_label_lut() -> np.ndarray:
    """``(256,)`` int16: label id -> train id, 255 for unscored ids, -1 for unknown values."""
    lut = np.full(256, -1, dtype=np.int16)
    lut[IGNORE_INDEX] = IGNORE_INDEX
    for cls in Cityscapes.classes:
        if 0 <= cls.id < 256:
            scored = 0 <= cls.train_id < IGNORE_INDEX
            lut[cls.id] = cls.train_id if scored else IGNORE_INDEX
    return lut


def voc_root(path: str | Path) -> Path:
    """The folder torchvision wants (the one holding ``VOCdevkit``), from that folder,
    ``VOCdevkit`` or ``VOCdevkit/VOC2012``."""
    path = Path(path)
    candidates = {"VOCdevkit": path.parent, "VOC2012": path.parent.parent}
    for candidate in (path, candidates.get(path.name)):
        if candidate is not None and (candidate / "VOCdevkit" / "VOC2012").is_dir():
            return candidate
    raise SemsegError(f"{path} holds no VOCdevkit/VOC2012 folder")


def is_voc_layout(path: str | Path) -> bool:
    try:
        voc_root(path)
    except SemsegError:
        return False
    return True


def is_cityscapes_layout(path: str | Path) -> bool:
    path = Path(path)
    return (path / "leftImg8bit").is_dir() and (path / "gtFine").is_dir()


def detect_layout(path: str | Path) -> str | None:
    """``"voc"``, ``"cityscapes"`` or ``None`` for a data folder."""
    if is_cityscapes_layout(path):
        return "cityscapes"
    if is_voc_layout(path):
        return "voc"
    return None


def voc_samples(path: str | Path, split: str = "train", skip_missing: bool = False) -> list[Sample]:
    """The images of a VOC 2012 segmentation split (``train``, ``val`` or ``trainval``)."""
    if split not in VOC_SPLITS:
        raise SemsegError(f"--split for VOC 2012 must be one of {', '.join(VOC_SPLITS)}: {split!r}")
    root = voc_root(path)
    try:
        dataset = VOCSegmentation(str(root), year="2012", image_set=split, download=False)
    except (RuntimeError, OSError) as error:
        list_file = root / "VOCdevkit/VOC2012/ImageSets/Segmentation" / f"{split}.txt"
        raise SemsegError(f"VOC 2012 split {split!r} not readable: {list_file}") from error
    return _samples(dataset.images, dataset.targets, skip_missing, f"VOC 2012 {split}")


def cityscapes_samples(
    path: str | Path, split: str = "train", skip_missing: bool = False
) -> list[Sample]:
    """The finely annotated images of a Cityscapes split (``train``, ``val`` or ``test``)."""
    if split not in CITYSCAPES_SPLITS:
        raise SemsegError(
            f"--split for Cityscapes must be one of {', '.join(CITYSCAPES_SPLITS)}: {split!r}"
        )
    root = Path(path)
    try:
        dataset = Cityscapes(str(root), split=split, mode="fine", target_type="semantic")
    except (RuntimeError, OSError) as error:
        raise SemsegError(
            f"Cityscapes split {split!r} not found: need {root / 'leftImg8bit' / split} and "
            f"{root / 'gtFine' / split}"
        ) from error
    targets = [target[0] for target in dataset.targets]
    pairs = sorted(zip(dataset.images, targets, strict=True))
    images, masks = [p[0] for p in pairs], [p[1] for p in pairs]
    return _samples(images, masks, skip_missing, f"Cityscapes {split}", "_leftImg8bit")


def _samples(
    images: list[str], masks: list[str], skip_missing: bool, what: str, suffix: str = ""
) -> list[Sample]:
    """Samples of existing image/mask pairs; a missing file is an error unless skipped."""
    samples = []
    for image, mask in zip(images, masks, strict=True):
        image_path, mask_path = Path(image), Path(mask)
        if not (image_path.is_file() and mask_path.is_file()):
            if skip_missing:
                continue
            missing = image_path if not image_path.is_file() else mask_path
            raise SemsegError(f"{what}: {missing} not found (use --skip-bad to skip it)")
        name = image_path.stem.removesuffix(suffix)
        samples.append(Sample(name, "all", image_path, mask_path))
    if not samples:
        raise SemsegError(f"{what}: no labelled images found")
    return samples


def _read_index_values(path: Path) -> np.ndarray:
    image = open_image(path)
    if image.mode not in ("L", "P"):
        raise SemsegError(f"{path}: expected a single-channel label PNG (got {image.mode})")
    return np.asarray(image)


def read_voc_sample(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    """Image and mask of a VOC sample: values 0..20 are classes, 255 is void."""
    image = read_rgb(sample.image_path)
    assert sample.target_path is not None
    mask = _read_index_values(sample.target_path)
    bad = (mask >= len(VOC_NAMES)) & (mask != IGNORE_INDEX)
    if bad.any():
        raise SemsegError(
            f"{sample.target_path}: value {int(mask[bad][0])} is not a VOC class (0-20) or 255"
        )
    check_same_size(image, mask, sample.target_path)
    return image, mask.astype(np.uint8)


def read_cityscapes_sample(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    """Image and train-id mask of a Cityscapes sample (label ids mapped, unscored -> 255)."""
    image = read_rgb(sample.image_path)
    assert sample.target_path is not None
    labels = _read_index_values(sample.target_path)
    mapped = cityscapes_label_lut()[labels]
    if (mapped < 0).any():
        raise SemsegError(
            f"{sample.target_path}: value {int(labels[mapped < 0][0])} is not a Cityscapes label id"
        )
    check_same_size(image, mapped, sample.target_path)
    return image, mapped.astype(np.uint8)


__all__ = [
    "CITYSCAPES_SPLITS",
    "VOC_NAMES",
    "VOC_SPLITS",
    "cityscapes_class_table",
    "cityscapes_label_lut",
    "cityscapes_samples",
    "detect_layout",
    "read_cityscapes_sample",
    "read_voc_sample",
    "voc_class_table",
    "voc_colours",
    "voc_root",
    "voc_samples",
]

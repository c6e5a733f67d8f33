"""Which kind of dataset a folder holds, decided by its layout (the one rule for every command).

* ``kitti``: the official KITTI ``data_road`` layout, ``ROOT/training/image_2`` (or the same
  under ``ROOT/data_road``).
* ``folder``: ``ROOT/images`` with ``ROOT/masks``, or the split layout ``ROOT/train/images``,
  ``ROOT/train/masks`` (and ``ROOT/val/...``), optionally with ``ROOT/classes.yaml`` beside them
  (CamVid as distributed with SegNet).
* ``voc``: Pascal VOC 2012 (``VOCdevkit/VOC2012``); ``cityscapes``: ``leftImg8bit`` + ``gtFine``
  (:mod:`semseg.data.torchvision_sets`).

Synthetic data is never guessed: it is generated only when ``data.kind`` asks for it.
"""

from __future__ import annotations

from pathlib import Path

from semseg.errors import SemsegError


def is_kitti_layout(root: Path) -> bool:
    """``root`` (or ``root/data_road``) holds KITTI's ``training/image_2``."""
    return any((base / "training" / "image_2").is_dir() for base in (root, root / "data_road"))


def is_folder_layout(root: Path) -> bool:
    """``root`` holds ``images/``, directly or in a ``train/`` split folder (a missing
    ``masks/`` is reported by the reader, naming the images without a mask)."""
    return any((base / "images").is_dir() for base in (root, root / "train"))


def detect_kind(root: str | Path) -> str:
    """``"kitti"``, ``"folder"``, ``"voc"`` or ``"cityscapes"`` for the dataset at ``root``;
    a one-line error otherwise."""
    from semseg.data.torchvision_sets import detect_layout

    root = Path(root)
    if not root.is_dir():
        raise SemsegError(f"data folder not found: {root}")
    if is_kitti_layout(root):
        return "kitti"
    known = detect_layout(root)
    if known is not None:
        return known
    if is_folder_layout(root):
        return "folder"
    raise SemsegError(
        f"{root} holds neither KITTI's training/image_2 nor images/ + masks/ "
        "(or train/images + train/masks), Pascal VOC 2012 or Cityscapes"
    )

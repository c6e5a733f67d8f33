"""Lazy imports of the ``weak`` extra (OpenCV contrib, scikit-image) with a one-line error."""

from __future__ import annotations

from types import ModuleType

from semseg.errors import SemsegError

INSTALL_HINT = 'pip install -e ".[weak]"'


def load_cv2() -> ModuleType:
    """``cv2`` (opencv-contrib-python-headless), or a SemsegError naming the install."""
    try:
        import cv2
    except ImportError as error:
        raise SemsegError(f"box supervision needs OpenCV: {INSTALL_HINT}") from error
    return cv2


def load_skimage_segmentation() -> ModuleType:
    """``skimage.segmentation`` (scikit-image), or a SemsegError naming the install."""
    try:
        import skimage.segmentation as segmentation
    except ImportError as error:
        raise SemsegError(f"box supervision needs scikit-image: {INSTALL_HINT}") from error
    return segmentation

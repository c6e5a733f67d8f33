"""The parts of the ``weak`` extra each proposal method needs, checked before any work."""

from __future__ import annotations

from semseg.errors import SemsegError
from semseg.weak.extras import INSTALL_HINT, load_cv2, load_skimage_segmentation


def require_method(method: str) -> None:
    """Fail early, naming the install, when ``method`` needs a missing library."""
    if method == "selective-search":
        cv2 = load_cv2()
        if not hasattr(cv2, "ximgproc"):
            raise SemsegError(
                "selective search needs OpenCV's contrib modules "
                f"(opencv-contrib-python-headless): {INSTALL_HINT}"
            )
    else:
        load_skimage_segmentation()

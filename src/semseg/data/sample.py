"""One labelled (or unlabelled) image of any dataset kind."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Sample:
    """An image, its target mask file (if labelled) and its calibration (KITTI, if any)."""

    name: str  # file stem, e.g. "um_000000"
    category: str | None  # KITTI category (um, umm, uu); None where a dataset has none
    image_path: Path
    target_path: Path | None = None
    calib_path: Path | None = None

"""``semseg kitti-submission``: the KITTI road benchmark's test-set results, ready to upload.

For every ``testing/image_2/{um,umm,uu}_NNNNNN.png`` the model's road probability is warped to
the benchmark's bird's-eye view (:mod:`semseg.bev`: the road devkit's own transform and pixel
convention, nearest sampling) with ``testing/calib/{cat}_NNNNNN.txt`` and written as an 8-bit
confidence PNG (0..255, 400 wide x 800 high, 0 where the cell is outside the camera's view)::

    OUT/bev/um_road_000000.png ...
    OUT/kitti_road_submission.zip      the same files at the top level of the archive

KITTI's upload wants the result files in the root of the zip, not in a folder. Every file is
written atomically. A test image without a readable calib file, with a degenerate one (no cell
of the bird's-eye view in the image) or with a name that is not ``{um,umm,uu}_NNNNNN`` is an
error naming it, found before any inference, or, with ``skip_bad``, skipped with one counted
warning.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from semseg.bev import KITTI_BEV_GRID, LookupCache
from semseg.data.calib import KittiCalib, read_calib
from semseg.data.kitti import NAME_PATTERN, kitti_gt_name
from semseg.errors import SemsegError
from semseg.inference.checkpoint import LoadedModel
from semseg.inference.predictor import Predictor, confidence_levels
from semseg.io import atomic_open, first_line, list_images, read_rgb, write_png_atomic

ZIP_NAME = "kitti_road_submission.zip"
ZIP_TIMESTAMP = (2013, 1, 1, 0, 0, 0)  # fixed, so the same results give the same archive


@dataclass(frozen=True)
class SubmissionInput:
    """One test image, its calibration and its result file name."""

    image_path: Path
    calib: KittiCalib
    result_name: str  # e.g. um_road_000000.png


@dataclass(frozen=True)
class Submission:
    files: list[Path]
    archive: Path
    skipped: int


def find_testing_root(root: str | Path) -> Path:
    """``root/testing`` or ``root/data_road/testing``, holding ``image_2``."""
    root = Path(root)
    if not root.exists():
        raise SemsegError(f"data folder not found: {root}")
    for candidate in (root, root / "data_road"):
        if (candidate / "testing" / "image_2").is_dir():
            return candidate / "testing"
    raise SemsegError(f"{root} is not a KITTI data_road folder (no testing/image_2 inside)")


def submission_inputs(
    data_root: str | Path, skip_bad: bool = False, warn: Callable[[str], None] | None = None
) -> list[SubmissionInput]:
    """Every KITTI-named test image with its parsed calibration, checked before any inference."""
    testing = find_testing_root(data_root)
    lookups = LookupCache(KITTI_BEV_GRID)
    items: list[SubmissionInput] = []
    problems: list[str] = []
    for path in list_images(testing / "image_2"):
        if NAME_PATTERN.match(path.stem) is None:
            problems.append(f"{path.name} is not named like a KITTI road image (um_000000.png)")
            continue
        try:
            calib = read_calib(testing / "calib" / f"{path.stem}.txt")
            if skip_bad:
                read_rgb(path)  # an unreadable image is skipped too, before any inference
            lookups.get(calib, image_size(path))  # refuses a calibration that shows no cell
        except SemsegError as error:
            problems.append(f"{path.name}: {error}")
            continue
        items.append(SubmissionInput(path, calib, f"{kitti_gt_name(path.stem)}.png"))
    if problems and not skip_bad:
        extra = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise SemsegError(f"test image {problems[0]}{extra}; use --skip-bad to skip")
    if problems and warn is not None:
        total = len(problems) + len(items)
        warn(f"skipped {len(problems)} of {total} test images (first: {problems[0]})")
    if not items:
        raise SemsegError(f"no test image with a calib file in {testing}")
    return items


def image_size(path: Path) -> tuple[int, int]:
    """``(height, width)`` of an image from its header (no decoding)."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise SemsegError(f"cannot read image {path}: {first_line(error)}") from error
    return height, width


def write_submission(
    loaded: LoadedModel,
    items: Sequence[SubmissionInput],
    out_dir: str | Path,
    batch_size: int = 4,
    on_progress: Callable[[int], None] | None = None,
    skipped: int = 0,
) -> Submission:
    """Predict, warp to BEV and write the PNGs and the zip; returns what was written."""
    out_dir = Path(out_dir)
    predictor = Predictor(loaded, batch_size=batch_size)
    lookups = LookupCache(KITTI_BEV_GRID)
    files: list[Path] = []
    for start in range(0, len(items), predictor.batch_size):
        chunk = items[start : start + predictor.batch_size]
        images = [read_rgb(item.image_path) for item in chunk]
        for item, image, probability in zip(
            chunk, images, predictor.predict_batch(images), strict=True
        ):
            table = lookups.get(item.calib, image.shape[:2])
            bev = table.nearest(probability[loaded.positive_class], fill=0.0)
            path = out_dir / "bev" / item.result_name
            write_png_atomic(path, confidence_levels(bev))
            files.append(path)
        if on_progress is not None:
            on_progress(len(chunk))
    archive = out_dir / ZIP_NAME
    write_zip(archive, files)
    return Submission(files, archive, skipped)


def write_zip(archive: Path, files: Sequence[Path]) -> None:
    """The files at the top level of a zip (sorted, fixed timestamps), written atomically."""
    with atomic_open(archive, "wb") as stream, zipfile.ZipFile(stream, "w") as bundle:
        for path in sorted(files, key=lambda p: p.name):
            info = zipfile.ZipInfo(path.name, date_time=ZIP_TIMESTAMP)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            bundle.writestr(info, path.read_bytes())

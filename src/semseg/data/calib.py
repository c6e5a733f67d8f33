"""KITTI calibration files (``data_road/{training,testing}/calib/NAME.txt``).

Format: one ``KEY: v v v ...`` line per matrix, numbers separated by blanks, row-major. The road
benchmark's files hold::

    P0 P1 P2 P3      3x4  projection matrices of the rectified cameras (P2: left colour camera)
    R0_rect          3x3  rectifying rotation of camera 0
    Tr_velo_to_cam   3x4  Velodyne -> camera 0
    Tr_imu_to_velo   3x4  IMU -> Velodyne
    Tr_cam_to_road   3x4  camera 0 -> road frame (``Y = 0`` is the road plane)

The bird's-eye view needs ``P2``, ``R0_rect`` and ``Tr_cam_to_road``; a file without one of them,
with a wrong count of numbers for a known key, a non-numeric or non-finite value, a repeated key
or a line without ``KEY:`` is refused with a :class:`~semseg.errors.SemsegError` naming the file,
and so is a degenerate one (:data:`BEV_KEYS` whose 3x3 part is singular, e.g. ``P2`` all zero).
Unknown keys are kept as flat arrays (other KITTI calib flavours add their own).

Results and ground truth are named ``um_road_000000`` (or ``um_lane_000000``); their image and
calibration are ``um_000000``: :func:`calib_stem` maps either name to the calibration's stem.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from semseg.errors import SemsegError

CALIB_SHAPES: dict[str, tuple[int, int]] = {
    "P0": (3, 4),
    "P1": (3, 4),
    "P2": (3, 4),
    "P3": (3, 4),
    "R0_rect": (3, 3),
    "Tr_velo_to_cam": (3, 4),
    "Tr_imu_to_velo": (3, 4),
    "Tr_cam_to_road": (3, 4),
}
"""Shape of every matrix the road benchmark's calibration files hold."""

BEV_KEYS = ("P2", "R0_rect", "Tr_cam_to_road")
"""The matrices the bird's-eye-view transform needs."""

_RESULT_NAME = re.compile(r"^(um|umm|uu)_(?:road|lane)_(\d{6})$")
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class KittiCalib:
    """Parsed calibration: ``matrices[key]`` shaped as in :data:`CALIB_SHAPES` (float64)."""

    matrices: dict[str, np.ndarray]
    source: str = "calib"

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self.matrices:
            raise SemsegError(f"{self.source}: no {key} in the calibration")
        return self.matrices[key]

    def __contains__(self, key: object) -> bool:
        return key in self.matrices

    @property
    def P2(self) -> np.ndarray:  # noqa: N802 - the KITTI name
        return self["P2"]

    @property
    def R0_rect(self) -> np.ndarray:  # noqa: N802 - the KITTI name
        return self["R0_rect"]

    @property
    def Tr_cam_to_road(self) -> np.ndarray:  # noqa: N802 - the KITTI name
        return self["Tr_cam_to_road"]

    def key(self) -> bytes:
        """Bytes identifying the BEV-relevant matrices (for caching look-up tables)."""
        return b"".join(np.ascontiguousarray(self[k], dtype=np.float64).tobytes() for k in BEV_KEYS)


def parse_calib(
    text: str, source: str = "calib", required: tuple[str, ...] = BEV_KEYS
) -> KittiCalib:
    """Parse KITTI calib text; ``source`` names the file in error messages."""
    matrices: dict[str, np.ndarray] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        key, colon, values = line.partition(":")
        key = key.strip()
        if not colon or not _KEY.match(key):
            raise SemsegError(f"{source}: line {number} is not 'KEY: numbers': {line[:60]!r}")
        if key in matrices:
            raise SemsegError(f"{source}: {key} appears twice")
        try:
            numbers = np.array([float(v) for v in values.split()], dtype=np.float64)
        except ValueError as error:
            raise SemsegError(f"{source}: {key} holds a non-numeric value ({error})") from None
        if not np.all(np.isfinite(numbers)):
            raise SemsegError(f"{source}: {key} holds a non-finite value")
        shape = CALIB_SHAPES.get(key)
        if shape is None:
            matrices[key] = numbers
            continue
        expected = shape[0] * shape[1]
        if numbers.size != expected:
            raise SemsegError(
                f"{source}: {key} must hold {expected} numbers ({shape[0]}x{shape[1]}), "
                f"found {numbers.size}"
            )
        matrices[key] = numbers.reshape(shape)
    missing = [key for key in required if key not in matrices]
    if missing:
        raise SemsegError(f"{source}: no {', '.join(missing)} in the calibration file")
    check_not_degenerate(matrices, source, [key for key in required if key in BEV_KEYS])
    return KittiCalib(matrices, source)


def check_not_degenerate(matrices: dict[str, np.ndarray], source: str, keys: list[str]) -> None:
    """Refuse a matrix of ``keys`` whose 3x3 part (camera, rotation) is singular, e.g. all zero."""
    for key in keys:
        rank = int(np.linalg.matrix_rank(matrices[key][:, :3]))
        if rank < 3:
            raise SemsegError(
                f"{source}: degenerate calibration: {key} is singular "
                f"(its 3x3 part has rank {rank})"
            )


def read_calib(path: str | Path, required: tuple[str, ...] = BEV_KEYS) -> KittiCalib:
    """Read and parse a calib file; a missing, unreadable or malformed file is a SemsegError."""
    path = Path(path)
    if not path.is_file():
        raise SemsegError(f"calibration file not found: {path}")
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as error:
        raise SemsegError(f"cannot read calibration file {path}: {error}") from None
    return parse_calib(text, str(path), required)


def calib_stem(name: str) -> str:
    """``um_road_000000`` / ``um_lane_000000`` / ``um_000000`` (or ``.png`` names) -> ``um_000000``.

    Other names are returned unchanged (without a suffix).
    """
    stem = Path(name).stem if name.lower().endswith((".png", ".txt")) else name
    match = _RESULT_NAME.match(stem)
    return f"{match.group(1)}_{match.group(2)}" if match else stem


def calib_path(calib_dir: str | Path, name: str) -> Path:
    """Where the calibration of image or result ``name`` lives in ``calib_dir`` (may not exist)."""
    return Path(calib_dir) / f"{calib_stem(name)}.txt"


def find_calib_dir(data_root: str | Path, split: str = "training") -> Path:
    """``data_root/split/calib`` or ``data_root/data_road/split/calib`` (may not exist)."""
    root = Path(data_root)
    for candidate in (root, root / "data_road"):
        if (candidate / split).is_dir():
            return candidate / split / "calib"
    return root / split / "calib"

"""The KITTI road benchmark's bird's-eye view (BEV), reimplemented from its specification.

Fritsch, Kuehnl & Geiger (ITSC 2013) rank road detectors in a metric top view of the road plane:

* **Grid.** 0.05 m cells; lateral ``x`` from -10 to 10 m (400 cells), forward ``z`` from 6 to
  46 m (800 cells). A BEV image is **400 wide x 800 high**, i.e. a numpy array of shape
  ``(800, 400)``: rows run along ``z`` with the *far* edge (``z = 46`` m) at row 0 and the near
  edge (``z = 6`` m) at the bottom row, columns run along ``x`` with ``x = -10`` m (left) at
  column 0. The centre of cell ``(row i, column j)`` is ``x = -10 + (j + 0.5) * 0.05`` and
  ``z = 46 - (i + 0.5) * 0.05`` (see :class:`BevGrid`).
* **Road plane.** The road frame has ``Y = 0`` on the road. A road point ``(x, 0, z, 1)`` goes to
  camera 0 by ``inv(Tr_cam_to_road)``, is rectified by ``R0_rect`` and projected by ``P2`` (all
  as 4x4 / 3x4 homogeneous matrices): ``(u w, v w, w) = P2 @ R0_rect @ inv(Tr_cam_to_road) @
  (x, 0, z, 1)``. Dropping the ``Y`` column leaves a 3x3 homography from ``(x, z, 1)`` to the
  image (:func:`road_homography`).
* **Sampling.** Each cell samples the perspective image at the projection of its centre. Pixel
  centres sit at integer coordinates (``u`` = column, ``v`` = row, 0-based), so the nearest pixel
  is ``(floor(v + 0.5), floor(u + 0.5))``. A cell whose centre projects behind the camera
  (``w <= 0``) or whose nearest pixel lies outside the image stays **empty**: ``inside`` is
  False, ground truth there is outside the valid area and predictions have confidence 0.
  Nearest-neighbour sampling is the default and the only choice for ground truth and labels (it
  never blends colours or classes); probability maps may use ``method="bilinear"`` (the four
  pixels around the projected point, clamped at the image border; still empty where the nearest
  pixel is outside). ``semseg evaluate --space bev`` and ``semseg kitti-submission`` use nearest
  sampling throughout, so a warped probability and the warped ground truth see the same pixels.

The transform only depends on the calibration and the image size, so a :class:`BevLookup` is
computed once and reused for every map of that camera (:class:`LookupCache`). The calibration is
for the full-resolution image: warp maps at the image's own size, never resized ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from semseg.config import IGNORE_INDEX
from semseg.data.calib import KittiCalib, read_calib
from semseg.errors import SemsegError

Sampling = Literal["nearest", "bilinear"]


@dataclass(frozen=True)
class BevGrid:
    """A metric grid on the road plane; :data:`KITTI_BEV_GRID` is the benchmark's."""

    resolution: float = 0.05
    x_range: tuple[float, float] = (-10.0, 10.0)
    z_range: tuple[float, float] = (6.0, 46.0)

    @property
    def width(self) -> int:
        """Number of columns (cells along ``x``)."""
        return int(round((self.x_range[1] - self.x_range[0]) / self.resolution))

    @property
    def height(self) -> int:
        """Number of rows (cells along ``z``)."""
        return int(round((self.z_range[1] - self.z_range[0]) / self.resolution))

    @property
    def shape(self) -> tuple[int, int]:
        """Numpy shape ``(rows, columns) = (height, width)``: ``(800, 400)`` for KITTI."""
        return self.height, self.width

    def x_centres(self) -> np.ndarray:
        """Lateral position (m) of each column's centre, left (negative x) to right."""
        return self.x_range[0] + (np.arange(self.width) + 0.5) * self.resolution

    def z_centres(self) -> np.ndarray:
        """Forward distance (m) of each row's centre, far (row 0) to near."""
        return self.z_range[1] - (np.arange(self.height) + 0.5) * self.resolution

    def cell_of(
        self, x: np.ndarray | float, z: np.ndarray | float
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(row, column)`` of the cell holding road point ``(x, z)`` (may lie off the grid)."""
        column = np.floor((np.asarray(x, dtype=np.float64) - self.x_range[0]) / self.resolution)
        row = np.floor((self.z_range[1] - np.asarray(z, dtype=np.float64)) / self.resolution)
        return row.astype(np.int64), column.astype(np.int64)

    def describe(self) -> dict[str, object]:
        """The grid as plain data (for result JSON)."""
        return {
            "resolution_m": self.resolution,
            "x_range_m": list(self.x_range),
            "z_range_m": list(self.z_range),
            "width": self.width,
            "height": self.height,
            "layout": "rows = z (far at row 0), columns = x (x_min at column 0)",
        }


KITTI_BEV_GRID = BevGrid()
"""The road benchmark's grid: 0.05 m, x in [-10, 10], z in [6, 46]; 400 wide x 800 high."""


def _homogeneous(matrix: np.ndarray) -> np.ndarray:
    """A 3x3 rotation or 3x4 transform as a 4x4 homogeneous matrix."""
    out = np.eye(4)
    out[: matrix.shape[0], : matrix.shape[1]] = matrix
    return out


def road_to_image_matrix(calib: KittiCalib) -> np.ndarray:
    """The 3x4 matrix ``P2 @ R0_rect @ inv(Tr_cam_to_road)`` from road ``(X, Y, Z, 1)`` to image."""
    cam_to_road = _homogeneous(calib.Tr_cam_to_road)
    try:
        road_to_cam = np.linalg.inv(cam_to_road)
    except np.linalg.LinAlgError:
        raise SemsegError(f"{calib.source}: Tr_cam_to_road is not invertible") from None
    return calib.P2 @ _homogeneous(calib.R0_rect) @ road_to_cam


def road_homography(calib: KittiCalib) -> np.ndarray:
    """3x3 homography from road-plane ``(x, z, 1)`` (``Y = 0``) to image ``(u w, v w, w)``."""
    return road_to_image_matrix(calib)[:, [0, 2, 3]]


def project_road_points(
    calib: KittiCalib, x: np.ndarray | float, z: np.ndarray | float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image ``(u, v)`` and projective depth ``w`` of road points ``(x, 0, z)``.

    ``u``/``v`` are NaN where ``w <= 0`` (the point is behind the camera).
    """
    x = np.asarray(x, dtype=np.float64)
    z = np.asarray(z, dtype=np.float64)
    h = road_homography(calib)
    uw = h[0, 0] * x + h[0, 1] * z + h[0, 2]
    vw = h[1, 0] * x + h[1, 1] * z + h[1, 2]
    w = h[2, 0] * x + h[2, 1] * z + h[2, 2]
    ahead = w > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        u = np.where(ahead, uw / np.where(ahead, w, 1.0), np.nan)
        v = np.where(ahead, vw / np.where(ahead, w, 1.0), np.nan)
    return u, v, w


@dataclass(frozen=True)
class BevLookup:
    """Where every BEV cell samples a perspective image of ``image_size = (height, width)``.

    ``u``/``v`` (float, NaN behind the camera) are the projected cell centres; ``inside`` marks
    cells whose nearest pixel lies in the image; ``pixel`` is that pixel's flat index
    ``row * width + column`` (0 where not inside).
    """

    grid: BevGrid
    image_size: tuple[int, int]
    u: np.ndarray
    v: np.ndarray
    inside: np.ndarray
    pixel: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return self.grid.shape

    def _check(self, image: np.ndarray) -> np.ndarray:
        image = np.asarray(image)
        if image.ndim not in (2, 3) or image.shape[:2] != self.image_size:
            raise SemsegError(
                f"cannot warp a map of shape {image.shape} to BEV: the calibration's look-up "
                f"table is for {self.image_size[1]}x{self.image_size[0]} images"
            )
        return image

    def nearest(self, image: np.ndarray, fill: float | int = 0) -> np.ndarray:
        """Nearest-neighbour BEV of an ``(H, W)`` or ``(H, W, C)`` map (dtype kept)."""
        image = self._check(image)
        flat = image.reshape((-1,) + image.shape[2:])
        out = flat[self.pixel]
        out[~self.inside] = fill
        return out

    def bilinear(self, image: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """Bilinear BEV (float32) of an ``(H, W)`` or ``(H, W, C)`` map; empty cells ``fill``."""
        image = self._check(image)
        height, width = self.image_size
        u = np.where(self.inside, self.u, 0.0)
        v = np.where(self.inside, self.v, 0.0)
        u = np.clip(u, 0.0, width - 1.0)
        v = np.clip(v, 0.0, height - 1.0)
        u0 = np.minimum(np.floor(u).astype(np.int64), width - 1)
        v0 = np.minimum(np.floor(v).astype(np.int64), height - 1)
        u1 = np.minimum(u0 + 1, width - 1)
        v1 = np.minimum(v0 + 1, height - 1)
        fu = (u - u0).astype(np.float32)
        fv = (v - v0).astype(np.float32)
        flat = image.reshape((-1,) + image.shape[2:]).astype(np.float32, copy=False)
        if image.ndim == 3:
            fu, fv = fu[..., None], fv[..., None]
        top = flat[v0 * width + u0] * (1 - fu) + flat[v0 * width + u1] * fu
        bottom = flat[v1 * width + u0] * (1 - fu) + flat[v1 * width + u1] * fu
        out = top * (1 - fv) + bottom * fv
        out[~self.inside] = fill
        return out

    def warp(self, image: np.ndarray, method: Sampling = "nearest", fill: float = 0) -> np.ndarray:
        """BEV of ``image`` by ``method``; bilinear on an integer map rounds back to its dtype."""
        if method == "nearest":
            return self.nearest(image, fill)
        if method != "bilinear":
            raise SemsegError(f"sampling must be nearest or bilinear, got {method!r}")
        image = np.asarray(image)
        out = self.bilinear(image, float(fill))
        if np.issubdtype(image.dtype, np.integer):
            info = np.iinfo(image.dtype)
            return np.clip(np.round(out), info.min, info.max).astype(image.dtype)
        return out

    def warp_mask(self, mask: np.ndarray) -> np.ndarray:
        """BEV of a class-index mask: nearest, ``IGNORE_INDEX`` where the cell is empty."""
        return self.nearest(np.asarray(mask), fill=IGNORE_INDEX)

    def warp_gt(self, valid: np.ndarray, road: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """BEV ``(valid, road)`` of devkit ground-truth masks; empty cells are not valid."""
        valid_bev = self.nearest(np.asarray(valid, dtype=bool), fill=False)
        road_bev = self.nearest(np.asarray(road, dtype=bool), fill=False) & valid_bev
        return valid_bev, road_bev


def bev_lookup(
    calib: KittiCalib, image_size: tuple[int, int], grid: BevGrid = KITTI_BEV_GRID
) -> BevLookup:
    """The look-up table of ``grid`` for images of ``image_size = (height, width)``."""
    height, width = (int(s) for s in image_size)
    if height <= 0 or width <= 0:
        raise SemsegError(f"image size must be positive, got {width}x{height}")
    x = grid.x_centres()[None, :]
    z = grid.z_centres()[:, None]
    x, z = np.broadcast_arrays(x, z)
    u, v, _ = project_road_points(calib, x, z)
    with np.errstate(invalid="ignore"):
        column = np.floor(u + 0.5)
        row = np.floor(v + 0.5)
        inside = (column >= 0) & (column < width) & (row >= 0) & (row < height)
    pixel = np.where(inside, row * width + column, 0).astype(np.int64)
    return BevLookup(grid, (height, width), u, v, inside, pixel)


class LookupCache:
    """Look-up tables by (calibration, image size): KITTI recording days share a calibration."""

    def __init__(self, grid: BevGrid = KITTI_BEV_GRID, max_entries: int = 32) -> None:
        self.grid = grid
        self.max_entries = max_entries
        self._tables: dict[tuple[bytes, tuple[int, int]], BevLookup] = {}

    def get(self, calib: KittiCalib, image_size: tuple[int, int]) -> BevLookup:
        key = (calib.key(), (int(image_size[0]), int(image_size[1])))
        table = self._tables.get(key)
        if table is None:
            if len(self._tables) >= self.max_entries:
                self._tables.pop(next(iter(self._tables)))
            table = self._tables[key] = bev_lookup(calib, key[1], self.grid)
        return table


def warp_to_bev(
    image: np.ndarray,
    calib: KittiCalib,
    method: Sampling = "nearest",
    fill: float = 0,
    grid: BevGrid = KITTI_BEV_GRID,
) -> np.ndarray:
    """One-off BEV of ``image`` (``(H, W)`` or ``(H, W, C)``) at its own size."""
    image = np.asarray(image)
    return bev_lookup(calib, image.shape[:2], grid).warp(image, method, fill)


GREY_MODES = ("1", "L", "LA", "I;16", "I;16B", "I;16L", "I", "F")


def warp_image_file(
    source: str | Path, calib_file: str | Path, out: str | Path, method: Sampling = "nearest"
) -> str:
    """Warp an image file to BEV and write it as PNG; returns what the input was taken to be.

    * a grey image (a probability PNG, 8 or 16 bit) -> grey BEV, empty cells 0;
    * an RGB image using only the devkit's ground-truth colours -> devkit-coloured BEV ground
      truth (always nearest sampling, empty cells black = outside the valid area);
    * any other image -> RGB BEV, empty cells black.
    """
    from semseg.data.kitti import KNOWN_GT_COLOURS
    from semseg.io import open_image, to_rgb_array, write_png_atomic

    calib = read_calib(calib_file)
    image = open_image(source)
    rgb = to_rgb_array(image)
    if image.mode in GREY_MODES:
        kind, array = "probability", rgb[:, :, 0]
    else:
        colours = np.unique(rgb.reshape(-1, 3), axis=0)
        known = all((c == KNOWN_GT_COLOURS).all(axis=1).any() for c in colours)
        kind, array = ("ground truth" if known else "image"), rgb
    table = bev_lookup(calib, array.shape[:2])
    bev = table.nearest(array, 0) if kind == "ground truth" else table.warp(array, method, 0)
    write_png_atomic(out, bev)
    return kind

"""The KITTI road benchmark's bird's-eye view (BEV), with the devkit's exact sampling convention.

Fritsch, Kuehnl & Geiger (ITSC 2013) rank road detectors in a metric top view of the road plane.
The benchmark warps its ground truth (and users warp their results) with the road devkit's
``BirdsEyeView`` transform; this module reproduces that transform cell for cell, including its
float32 grid and its 1-based pixel convention, so that a warped result lines up with the
benchmark's own BEV ground truth:

* **Grid.** 0.05 m cells; lateral ``x`` from -10 to 10 m (400 cells), forward ``z`` from 6 to
  46 m (800 cells). A BEV image is **400 wide x 800 high**, i.e. a numpy array of shape
  ``(800, 400)``: rows run along ``z`` with the *far* edge (``z = 46`` m) at row 0 and the near
  edge (``z = 6`` m) at the bottom row, columns run along ``x`` with ``x = -10`` m (left) at
  column 0. The centre of cell ``(row i, column j)`` is ``x = -10 + 0.025 + j * 0.05`` and
  ``z = 46 - 0.025 - i * 0.05``, rounded to float32 as the devkit does (see :class:`BevGrid`).
* **Road plane.** The road frame has ``Y = 0`` on the road. A road point ``(x, 0, z, 1)`` goes to
  camera 0 by ``inv(Tr_cam_to_road)``, is rectified by ``R0_rect`` and projected by ``P2`` (all
  as 4x4 / 3x4 homogeneous matrices): ``(u w, v w, w) = P2 @ R0_rect @ inv(Tr_cam_to_road) @
  (x, 0, z, 1)``. Dropping the ``Y`` column leaves a 3x3 homography from ``(x, z, 1)`` to the
  image (:func:`road_homography`), applied in float64 to the float32 cell centres.
* **Sampling (the devkit's convention).** A cell is **inside** when its projection satisfies
  ``1 <= u <= W`` and ``1 <= v <= H`` (``u`` = column, ``v`` = row, ``(H, W)`` the image size) and
  then takes the 0-based pixel ``(row, column) = (int(v) - 1, int(u) - 1)``, i.e. the devkit's
  1-based indexing of ``P2``'s 0-based coordinates. Every other cell stays **empty**:
  ``inside`` is False, ground truth there is outside the valid area and predictions have
  confidence 0. Cells behind the camera (``w <= 0``) are empty too; the benchmark's grid
  (``z >= 6`` m) never reaches behind a KITTI camera, so this only matters for other grids.
  Nearest sampling is the default and the only choice for ground truth and labels (it never
  blends colours or classes); probability maps may use ``method="bilinear"``, which
  interpolates around ``(u - 1.5, v - 1.5)`` (the centre of the pixel the devkit picks is at
  ``u = column + 1.5``), clamped at the image border, still empty where nearest is empty.
  ``semseg evaluate --space bev`` and ``semseg kitti-submission`` use nearest sampling
  throughout, so a warped probability and the warped ground truth see the same pixels.

A calibration whose road-to-image homography is singular (``P2`` all zero, a collapsed
rotation, a camera in the road plane) or that shows no cell of the grid in the image is refused
with a :class:`~semseg.errors.SemsegError` naming the calibration file.

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
        """Lateral position (m, float32) of each column's centre, left (negative x) to right.

        ``x_min + res / 2``, then steps of ``res``, rounded to float32 like the devkit's grid.
        """
        start, stop = self.x_range
        centres = np.arange(start + self.resolution / 2, stop, self.resolution)
        return centres[: self.width].astype(np.float32)

    def z_centres(self) -> np.ndarray:
        """Forward distance (m, float32) of each row's centre, far (row 0) to near.

        ``z_max - res / 2``, then steps of ``-res``, rounded to float32 like the devkit's grid.
        """
        stop, start = self.z_range
        centres = np.arange(start - self.resolution / 2, stop, -self.resolution)
        return centres[: self.height].astype(np.float32)

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
    """3x3 homography from road-plane ``(x, z, 1)`` (``Y = 0``) to image ``(u w, v w, w)``.

    A singular homography (the road plane collapses to a line or a point in the image: ``P2``
    all zero, a degenerate rotation, a camera in the road plane) is a SemsegError.
    """
    homography = road_to_image_matrix(calib)[:, [0, 2, 3]]
    if not np.all(np.isfinite(homography)) or np.linalg.matrix_rank(homography) < 3:
        raise SemsegError(
            f"{calib.source}: degenerate calibration: the road plane does not map onto the "
            "image (P2 @ R0_rect @ inv(Tr_cam_to_road) is singular)"
        )
    return homography


def project_road_points(
    calib: KittiCalib, x: np.ndarray | float, z: np.ndarray | float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image ``(u, v)`` and projective depth ``w`` of road points ``(x, 0, z)``.

    ``u``/``v`` are NaN where ``w <= 0`` (the point is behind the camera).
    """
    x, z = np.broadcast_arrays(np.asarray(x, dtype=np.float64), np.asarray(z, dtype=np.float64))
    points = np.stack([x.ravel(), z.ravel(), np.ones(x.size)])
    uw, vw, w = (row.reshape(x.shape) for row in road_homography(calib) @ points)
    ahead = w > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        u = np.where(ahead, uw / np.where(ahead, w, 1.0), np.nan)
        v = np.where(ahead, vw / np.where(ahead, w, 1.0), np.nan)
    return u, v, w


@dataclass(frozen=True)
class BevLookup:
    """Where every BEV cell samples a perspective image of ``image_size = (height, width)``.

    ``u``/``v`` (float64, NaN behind the camera) are the projected cell centres; ``inside``
    marks cells with ``1 <= u <= width`` and ``1 <= v <= height`` (the devkit's test); ``pixel``
    is the flat index ``row * width + column`` of the pixel they sample, ``row = int(v) - 1``,
    ``column = int(u) - 1`` (0 where not inside).
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
        """BEV of an ``(H, W)`` or ``(H, W, C)`` map by the devkit's sampling (dtype kept)."""
        image = self._check(image)
        flat = image.reshape((-1,) + image.shape[2:])
        out = flat[self.pixel]
        out[~self.inside] = fill
        return out

    def bilinear(self, image: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """Bilinear BEV (float32) of an ``(H, W)`` or ``(H, W, C)`` map; empty cells ``fill``."""
        image = self._check(image)
        height, width = self.image_size
        # the pixel the devkit picks, int(u) - 1, has its centre at u = column + 1.5
        u = np.where(self.inside, self.u - 1.5, 0.0)
        v = np.where(self.inside, self.v - 1.5, 0.0)
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
    """The look-up table of ``grid`` for images of ``image_size = (height, width)``.

    The devkit's convention (module docstring): float32 cell centres, inside where
    ``1 <= u <= width`` and ``1 <= v <= height``, pixel ``(int(v) - 1, int(u) - 1)``. A
    calibration that shows no cell of the grid in the image is a SemsegError naming it.
    """
    height, width = (int(s) for s in image_size)
    if height <= 0 or width <= 0:
        raise SemsegError(f"image size must be positive, got {width}x{height}")
    x, z = np.meshgrid(grid.x_centres(), grid.z_centres())
    u, v, _ = project_road_points(calib, x, z)
    with np.errstate(invalid="ignore"):
        inside = (u >= 1) & (u <= width) & (v >= 1) & (v <= height)
    if not inside.any():
        raise SemsegError(
            f"{calib.source}: degenerate calibration: no cell of the bird's-eye view falls "
            f"inside a {width}x{height} image"
        )
    column = np.where(inside, u, 1.0).astype(np.int64) - 1  # int() truncates; u >= 1 here
    row = np.where(inside, v, 1.0).astype(np.int64) - 1
    pixel = np.where(inside, row * width + column, 0)
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

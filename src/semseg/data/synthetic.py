"""Procedural synthetic road scenes in the style of KITTI Road, on a metric ground plane.

The generator is the project's embedded default data set: it needs no files and no network,
and every scene is a pure function of its seed (``numpy.random.default_rng(seed)``, no global
random state). Scenes are rendered by back-projecting every pixel below the horizon onto the
ground plane of a pinhole camera mounted :data:`CAMERA_HEIGHT` metres above a flat road, with
the same intrinsics that :func:`kitti_calib` writes. A road pixel ``(u, v)`` therefore lies at
depth ``Z = f * CAMERA_HEIGHT / (v - cy)`` and lateral offset ``X = (u - cx) * Z / f``, which
keeps bird's-eye-view evaluation of the synthetic data metric.

Scene content: a possibly curved road (lateral edges ``x(Z) = x0 + b*Z + c*Z**2``), lane marks
(categories ``um`` and ``umm``), verges (kerb, pavement, grass, gravel), a sky gradient with
a skyline of buildings and trees, vehicles that occlude the road, shadows that darken road
and verges (shadowed road is still road), distance haze, global lighting and pixel noise.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

CATEGORIES: tuple[str, ...] = ("um", "umm", "uu")
"""KITTI Road categories: urban marked, urban multiple marked lanes, urban unmarked."""

CAMERA_HEIGHT = 1.65
"""Height of the camera above the road plane, in metres."""

KITTI_FOCAL = 721.5377
"""Focal length in pixels of the KITTI colour camera at the reference width."""

KITTI_WIDTH = 1242
"""Reference image width for :data:`KITTI_FOCAL`."""

PRINCIPAL_ROW_FRACTION = 0.46
"""Principal-point row (and horizon) as a fraction of the image height."""

STEREO_BASELINE = 0.54
"""Baseline in metres between the left (P0, P2) and right (P1, P3) cameras in the calib."""

_F32 = np.float32
_PALETTE_VEHICLE = np.array(
    [
        [0.85, 0.86, 0.87],
        [0.62, 0.64, 0.66],
        [0.10, 0.10, 0.11],
        [0.55, 0.08, 0.07],
        [0.10, 0.20, 0.45],
        [0.30, 0.32, 0.34],
        [0.75, 0.72, 0.62],
        [0.20, 0.35, 0.22],
    ],
    dtype=_F32,
)
# Ground materials: 0 road, 1 kerb, 2 pavement, 3 grass, 4 gravel, 5 dirt.
_MAT_ROAD, _MAT_KERB, _MAT_PAVEMENT, _MAT_GRASS, _MAT_GRAVEL, _MAT_DIRT = range(6)
_MAT_TEXTURE = np.array([0.10, 0.08, 0.12, 0.35, 0.40, 0.30], dtype=_F32)


@dataclass(frozen=True)
class SyntheticScene:
    """One rendered scene with its labels.

    Attributes:
        image: ``uint8`` array ``(H, W, 3)``, RGB.
        road: ``bool`` array ``(H, W)``, True on road pixels (always a subset of ``valid``).
        valid: ``bool`` array ``(H, W)``, evaluation area; False marks ignored pixels (a band at
            the top of the image and, in some scenes, the ego vehicle's bonnet).
        boxes: vehicle boxes ``(x0, y0, x1, y1)`` in pixels, ``x1``/``y1`` exclusive, clipped to
            the image, in drawing order (far to near).
        category: one of :data:`CATEGORIES`.
    """

    image: np.ndarray
    road: np.ndarray
    valid: np.ndarray
    boxes: list[tuple[int, int, int, int]]
    category: str


@dataclass(frozen=True)
class PinholeCamera:
    """Intrinsics of the synthetic camera; the horizon is the row ``cy``.

    Attributes:
        f: focal length in pixels (square pixels).
        cx: principal point column.
        cy: principal point row (the horizon of the level camera).
        height: camera height above the road plane in metres.
    """

    f: float
    cx: float
    cy: float
    height: float = CAMERA_HEIGHT

    def ground_depth(self, v: np.ndarray | float) -> np.ndarray | float:
        """Depth ``Z`` in metres of the ground-plane point seen at image row ``v > cy``."""
        return self.f * self.height / (np.asarray(v, dtype=np.float64) - self.cy)

    def ground_row(self, z: np.ndarray | float) -> np.ndarray | float:
        """Image row of the ground-plane point at depth ``z`` metres."""
        return self.f * self.height / np.asarray(z, dtype=np.float64) + self.cy

    def column(self, x: np.ndarray | float, z: np.ndarray | float) -> np.ndarray | float:
        """Image column of the point at lateral offset ``x`` and depth ``z`` metres."""
        return self.f * np.asarray(x, dtype=np.float64) / np.asarray(z, dtype=np.float64) + self.cx


def camera_for_size(height: int, width: int) -> PinholeCamera:
    """Return the camera used for ``height x width`` scenes (KITTI focal scaled by width)."""
    return PinholeCamera(
        f=KITTI_FOCAL * width / KITTI_WIDTH, cx=width / 2.0, cy=height * PRINCIPAL_ROW_FRACTION
    )


@dataclass(frozen=True)
class _Road:
    """Metric road layout; ``s`` is the lateral coordinate measured from the left edge."""

    lane_width: float
    lanes: int
    shoulder_left: float
    shoulder_right: float
    left0: float
    heading: float
    curvature: float
    bend_end: float
    marked: bool
    dash_period: float
    dash_length: float
    dash_phase: float

    @property
    def width(self) -> float:
        """Total paved width in metres (shoulders + lanes)."""
        return self.shoulder_left + self.lanes * self.lane_width + self.shoulder_right

    def left(self, z: np.ndarray) -> np.ndarray:
        """Lateral position ``X`` of the left road edge at depth ``z``.

        ``x0 + b*z + c*z**2`` up to ``bend_end`` metres, then straight on along the tangent.
        """
        zc = np.minimum(z, self.bend_end)
        bend = self.curvature * zc * (2.0 * z - zc)
        return self.left0 + self.heading * z + bend

    def lane_centre(self, lane: int) -> float:
        """Lateral ``s`` coordinate of the centre of ``lane`` (0 = leftmost)."""
        return self.shoulder_left + (lane + 0.5) * self.lane_width


@dataclass(frozen=True)
class _Vehicle:
    x: float
    z: float
    width: float
    height: float
    van: bool
    colour: np.ndarray


@dataclass(frozen=True)
class _Ground:
    """Per-pixel ground-plane coordinates for rows ``v0..H-1``."""

    v0: int
    z: np.ndarray  # (rows,) depth in metres
    x: np.ndarray  # (rows, W) lateral metres
    s: np.ndarray  # (rows, W) lateral metres from the road's left edge


def derive_seed(seed: int, index: int, stream: int = 0) -> int:
    """Derive the seed of scene ``index`` of ``stream`` from a base ``seed`` (all >= 0)."""
    state = np.random.SeedSequence([seed, stream, index]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 32 | int(state[1])


def iter_scenes(num: int, seed: int, height: int, width: int) -> Iterator[SyntheticScene]:
    """Yield ``num`` scenes; scene ``i`` uses ``derive_seed(seed, i)`` and a seeded category."""
    for i in range(num):
        yield generate_scene(derive_seed(seed, i), height=height, width=width)


def generate_scene(
    seed: int, height: int = 375, width: int = 1242, category: str | None = None
) -> SyntheticScene:
    """Render one deterministic synthetic road scene.

    Args:
        seed: non-negative integer; the same seed (and size) gives a byte-identical scene.
        height: image height in pixels (>= 16).
        width: image width in pixels (>= 16).
        category: ``"um"``, ``"umm"`` or ``"uu"``; None picks one from the seed. Passing the
            category the seed would pick gives the same scene as passing None.

    Returns:
        The rendered :class:`SyntheticScene`.
    """
    _check_args(seed, height, width, category)
    rng = np.random.default_rng(seed)
    seeded_category = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
    category = seeded_category if category is None else category
    cam = camera_for_size(height, width)
    road = _sample_road(rng, category)
    vehicles = _sample_vehicles(rng, road, category)
    ground = _ground_grid(cam, road, height, width)
    road_mask = np.zeros((height, width), dtype=bool)
    road_mask[ground.v0 :] = (ground.s >= 0.0) & (ground.s < road.width)
    image = np.empty((height, width, 3), dtype=_F32)
    haze = _render_sky(rng, image, cam, width)
    _render_ground(rng, image, ground, road, category, haze)
    _render_shadows(rng, image, ground, road, vehicles)
    boxes = _render_vehicles(image, road_mask, cam, vehicles)
    valid = _render_invalid(rng, image, road_mask)
    image = _finish(rng, image)
    return SyntheticScene(image=image, road=road_mask, valid=valid, boxes=boxes, category=category)


def _check_args(seed: int, height: int, width: int, category: str | None) -> None:
    if int(seed) < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    if height < 16 or width < 16:
        raise ValueError(f"image size must be at least 16x16, got {height}x{width}")
    if category is not None and category not in CATEGORIES:
        raise ValueError(f"category must be one of {CATEGORIES}, got {category!r}")


# --------------------------------------------------------------------------- sampling


def _sample_road(rng: np.random.Generator, category: str) -> _Road:
    lane_width = float(rng.uniform(3.0, 3.75))
    if category == "um":
        lanes = 2
        shoulders = rng.uniform(0.6, 2.2, size=2)  # paved margins / parking strips
    elif category == "umm":
        lanes = int(rng.integers(3, 5))
        lane_width = min(lane_width, 3.4) if lanes == 4 else lane_width
        shoulders = rng.uniform(0.2, 1.0, size=2)
    else:
        lanes = int(rng.integers(1, 3))
        extra = rng.uniform(7.5, 10.0) - lanes * lane_width
        shoulders = extra * rng.dirichlet([3.0, 3.0])
    ego_lane = int(rng.integers(lanes))
    if category == "um" and rng.random() < 0.75:
        ego_lane = 1  # drive on the right-hand lane
    in_lane = ego_lane + 0.5 + rng.uniform(-0.15, 0.15)
    left0 = -(float(shoulders[0]) + in_lane * lane_width)
    return _Road(
        lane_width=lane_width,
        lanes=lanes,
        shoulder_left=float(shoulders[0]),
        shoulder_right=float(shoulders[1]),
        left0=left0,
        heading=float(rng.uniform(-0.04, 0.04)),
        curvature=float(rng.choice([0.0, 1.0], p=[0.3, 0.7]) * rng.uniform(-3e-3, 3e-3)),
        bend_end=float(rng.uniform(50.0, 90.0)),
        marked=category != "uu",
        dash_period=float(rng.uniform(8.0, 12.0)),
        dash_length=float(rng.uniform(2.5, 4.0)),
        dash_phase=float(rng.uniform(0.0, 12.0)),
    )


def _sample_vehicles(rng: np.random.Generator, road: _Road, category: str) -> list[_Vehicle]:
    max_count = {"um": 3, "umm": 5, "uu": 2}[category]
    count = int(rng.integers(0, max_count + 1))
    vehicles: list[_Vehicle] = []
    taken: list[tuple[int, float]] = []
    for _ in range(count):
        lane = int(rng.integers(road.lanes))
        z = float(np.exp(rng.uniform(np.log(10.0), np.log(70.0))))
        van = bool(rng.random() < 0.2)
        width = float(rng.uniform(1.85, 2.1) if van else rng.uniform(1.6, 1.9))
        height = float(rng.uniform(1.9, 2.5) if van else rng.uniform(1.35, 1.6))
        colour = _PALETTE_VEHICLE[int(rng.integers(len(_PALETTE_VEHICLE)))]
        jitter = float(rng.uniform(-0.3, 0.3))
        if any(t_lane == lane and abs(t_z - z) < 7.0 for t_lane, t_z in taken):
            continue
        taken.append((lane, z))
        x = float(road.left(np.array(z))) + road.lane_centre(lane) + jitter
        vehicles.append(_Vehicle(x=x, z=z, width=width, height=height, van=van, colour=colour))
    vehicles.sort(key=lambda veh: -veh.z)
    return vehicles


def _ground_grid(cam: PinholeCamera, road: _Road, height: int, width: int) -> _Ground:
    v0 = min(int(np.floor(cam.cy)) + 1, height)
    rows = np.arange(v0, height, dtype=np.float64)
    z = cam.f * cam.height / (rows - cam.cy)
    cols = np.arange(width, dtype=_F32) - _F32(cam.cx)
    x = cols[None, :] * (z / cam.f).astype(_F32)[:, None]
    s = x - road.left(z).astype(_F32)[:, None]
    return _Ground(v0=v0, z=z, x=x, s=s)


# --------------------------------------------------------------------------- noise helpers


def _cell_noise(a: np.ndarray, b: np.ndarray, salt: int) -> np.ndarray:
    """Hash integer lattice cells ``(a, b)`` to floats in [0, 1) (vectorised, stateless)."""
    h = a.astype(np.int32).view(np.uint32) * np.uint32(374761393)
    h = h + b.astype(np.int32).view(np.uint32) * np.uint32(668265263) + np.uint32(salt)
    h = (h ^ (h >> np.uint32(13))) * np.uint32(1274126177)
    h = h ^ (h >> np.uint32(16))
    return (h & np.uint32(0xFFFF)).astype(_F32) * _F32(1.0 / 65536.0)


def _smooth_noise(
    rng: np.random.Generator, shape: tuple[int, int], cells: tuple[int, int]
) -> np.ndarray:
    """Smooth value noise in [0, 1] of ``shape`` from a ``cells`` grid, bilinearly upsampled."""
    low = rng.random(cells, dtype=_F32)
    img = Image.fromarray(low).resize((shape[1], shape[0]), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=_F32)


# --------------------------------------------------------------------------- sky and skyline


def _render_sky(
    rng: np.random.Generator, image: np.ndarray, cam: PinholeCamera, width: int
) -> np.ndarray:
    """Fill ``image`` with sky and skyline; return the horizon (haze) colour."""
    height = image.shape[0]
    overcast = rng.random() < 0.3
    if overcast:
        zenith = rng.uniform(0.62, 0.78, size=3) * np.array([1.0, 1.0, 1.03])
        horizon = zenith * rng.uniform(1.02, 1.12)
    else:
        zenith = np.array([0.30, 0.50, 0.85]) * rng.uniform(0.85, 1.1, size=3)
        horizon = np.array([0.75, 0.83, 0.92]) * rng.uniform(0.92, 1.05, size=3)
    t = np.clip(np.arange(height) / max(cam.cy, 1.0), 0.0, 1.0)[:, None]
    gradient = (zenith[None, :] * (1.0 - t) + horizon[None, :] * t).astype(_F32)
    clouds = _smooth_noise(rng, (height, width), (4, 12))
    cloud_amount = _F32(rng.uniform(0.0, 0.25))
    image[:] = gradient[:, None, :] * (1.0 - cloud_amount * clouds[..., None])
    image += (cloud_amount * clouds)[..., None]
    _render_skyline(rng, image, cam, width, horizon.astype(_F32))
    return horizon.astype(_F32)


def _skyline_segments(rng: np.random.Generator) -> list[tuple[float, float, int, float]]:
    """Segments ``(x_start, x_end, kind, height)``, normalised; kind 0 gap, 1 house, 2 tree."""
    segments = []
    x = float(rng.uniform(-0.1, 0.0))
    while x < 1.0:
        w = float(rng.uniform(0.03, 0.16))
        kind = int(rng.choice(3, p=[0.15, 0.5, 0.35]))
        segments.append((x, x + w, kind, float(rng.uniform(0.08, 0.6))))
        x += w
    return segments


def _render_skyline(
    rng: np.random.Generator,
    image: np.ndarray,
    cam: PinholeCamera,
    width: int,
    haze: np.ndarray,
) -> None:
    top_rows = min(int(np.ceil(cam.cy)) + 1, image.shape[0])
    tops = np.full(width, np.inf, dtype=_F32)
    colours = np.zeros((width, 3), dtype=_F32)
    kinds = np.zeros(width, dtype=np.int8)
    cols = np.arange(width, dtype=_F32)
    for x0, x1, kind, h in _skyline_segments(rng):
        c0, c1 = max(int(x0 * width), 0), min(int(np.ceil(x1 * width)), width)
        if kind == 0 or c1 <= c0:
            continue
        if kind == 1:
            colour = rng.uniform(0.35, 0.8) * rng.uniform(0.85, 1.1, size=3)
            seg_h = np.full(c1 - c0, h, dtype=_F32)
        else:
            colour = np.array([0.16, 0.28, 0.12]) * rng.uniform(0.7, 1.3, size=3)
            phase, freq = rng.uniform(0, 6.3), rng.uniform(0.05, 0.2) * 1242.0 / width
            seg_h = h * (0.8 + 0.2 * np.abs(np.sin(cols[c0:c1] * freq + phase)))
        tops[c0:c1] = cam.cy * (1.0 - seg_h)
        colours[c0:c1] = colour
        kinds[c0:c1] = kind
    rows = np.arange(top_rows, dtype=_F32)[:, None]
    mask = rows >= tops[None, :]
    window_rows = (rows * (40.0 / max(cam.cy, 1.0))) % 1.0 < 0.45
    window_cols = (cols * (90.0 / width)) % 1.0 < 0.5
    windows = mask & window_rows & window_cols[None, :] & (kinds == 1)[None, :]
    windows &= rows >= tops[None, :] + 0.05 * cam.cy
    hazed = colours * 0.6 + haze * 0.4
    region = image[:top_rows]
    region[:] = np.where(mask[..., None], hazed[None, :, :], region)
    region[windows] *= _F32(0.55)


# --------------------------------------------------------------------------- ground


def _verge_layout(rng: np.random.Generator, category: str) -> list[tuple[float, int]]:
    """Bands outside one road edge: ``(outer_distance_m, material)``, nearest first."""
    urban = category != "uu" or rng.random() < 0.3
    bands: list[tuple[float, int]] = []
    edge = 0.0
    if urban and rng.random() < 0.85:
        edge += float(rng.uniform(0.15, 0.3))
        bands.append((edge, _MAT_KERB))
        edge += float(rng.uniform(1.5, 4.0))
        bands.append((edge, _MAT_PAVEMENT))
    else:
        edge += float(rng.uniform(0.3, 1.5))
        bands.append((edge, int(rng.choice([_MAT_GRAVEL, _MAT_DIRT]))))
    bands.append((np.inf, int(rng.choice([_MAT_GRASS, _MAT_GRASS, _MAT_DIRT]))))
    return bands


def _material_palette(rng: np.random.Generator) -> np.ndarray:
    asphalt = rng.uniform(0.27, 0.45) * rng.uniform(0.95, 1.05, size=3)
    kerb = rng.uniform(0.6, 0.75) * np.ones(3)
    pavement = rng.uniform(0.5, 0.68) * np.array([1.02, 1.0, 0.94]) * rng.uniform(0.95, 1.05)
    grass = np.array([0.25, 0.42, 0.15]) * rng.uniform(0.75, 1.2, size=3)
    gravel = np.array([0.52, 0.48, 0.42]) * rng.uniform(0.85, 1.1)
    dirt = np.array([0.45, 0.36, 0.25]) * rng.uniform(0.8, 1.15, size=3)
    return np.stack([asphalt, kerb, pavement, grass, gravel, dirt]).astype(_F32)


def _material_map(
    rng: np.random.Generator, ground: _Ground, road: _Road, category: str
) -> np.ndarray:
    """Ground material id per pixel: road, then kerb/verge bands on both sides."""
    materials = np.full(ground.s.shape, _MAT_ROAD, dtype=np.int8)
    for side in (0, 1):
        dist = -ground.s if side == 0 else ground.s - _F32(road.width)
        inner = 0.0
        for outer, material in _verge_layout(rng, category):
            materials[(dist > inner) & (dist <= outer)] = material
            inner = outer
    return materials


def _render_ground(
    rng: np.random.Generator,
    image: np.ndarray,
    ground: _Ground,
    road: _Road,
    category: str,
    haze: np.ndarray,
) -> None:
    """Textured road and verges with lane marks, fading into ``haze`` with distance."""
    if ground.s.shape[0] == 0:
        return
    palette = _material_palette(rng)
    materials = _material_map(rng, ground, road, category)
    salt = int(rng.integers(1 << 30))
    fine = _cell_noise(np.floor(ground.s * 10.0), np.floor(ground.z * 8.0)[:, None], salt) - 0.5
    blotch = _smooth_noise(rng, ground.s.shape, (6, 24)) - _F32(0.5)
    fade = np.exp(-ground.z / 40.0).astype(_F32)[:, None]
    shade = 1.0 + _MAT_TEXTURE[materials] * (fine * fade + blotch)
    shade *= _road_wear(ground, road, materials)
    shade *= _paving_grout(ground, materials)
    colour = palette[materials] * shade[..., None]
    if road.marked:
        _paint_marks(rng, colour, ground, road)
    haze_len = rng.uniform(120.0, 400.0)
    hz = (1.0 - np.exp(-ground.z / haze_len)).astype(_F32)[:, None, None]
    image[ground.v0 :] = colour * (1.0 - hz) + haze * hz


def _road_wear(ground: _Ground, road: _Road, materials: np.ndarray) -> np.ndarray:
    """Darker tyre tracks along each lane (road pixels only)."""
    t = (ground.s - _F32(road.shoulder_left)) % _F32(road.lane_width) - _F32(road.lane_width / 2)
    tracks = np.abs(np.abs(t) - _F32(0.8)) < _F32(0.3)
    return np.where(tracks & (materials == _MAT_ROAD), _F32(0.95), _F32(1.0))


def _paving_grout(ground: _Ground, materials: np.ndarray) -> np.ndarray:
    """Dark joints between 0.5 m paving slabs (pavement pixels only)."""
    grid_s = (ground.s * _F32(2.0)) % _F32(1.0) < _F32(0.08)
    grid_z = ((ground.z * 2.0) % 1.0 < 0.08)[:, None]
    return np.where((grid_s | grid_z) & (materials == _MAT_PAVEMENT), _F32(0.8), _F32(1.0))


def _mark_positions(road: _Road) -> list[tuple[float, float, bool]]:
    """Lane marks ``(s_centre, width, dashed)``: solid edge lines and dashed separators."""
    start = road.shoulder_left
    end = start + road.lanes * road.lane_width
    marks = [(start + 0.1, 0.15, False), (end - 0.1, 0.15, False)]
    for k in range(1, road.lanes):
        marks.append((start + k * road.lane_width, 0.13, True))
    return marks


def _paint_marks(
    rng: np.random.Generator, colour: np.ndarray, ground: _Ground, road: _Road
) -> None:
    """Blend antialiased lane marks (pixel coverage along the row) into ``colour``."""
    paint = np.array([0.93, 0.93, 0.9], dtype=_F32) * _F32(rng.uniform(0.9, 1.0))
    wear = _F32(rng.uniform(0.85, 1.0))
    px_per_m = (1.0 / (ground.x[:, 1:2] - ground.x[:, 0:1] + 1e-12)).astype(_F32)
    dash_on = ((ground.z + road.dash_phase) % road.dash_period < road.dash_length)[:, None]
    for centre, width, dashed in _mark_positions(road):
        offset = (ground.s - _F32(centre)) * px_per_m
        half = _F32(width / 2) * px_per_m
        cover = np.clip(np.minimum(offset + 0.5, half) - np.maximum(offset - 0.5, -half), 0, 1)
        if dashed:
            cover = cover * dash_on
        alpha = (cover * wear)[..., None]
        colour *= 1.0 - alpha
        colour += alpha * paint


# --------------------------------------------------------------------------- shadows


def _rows_for_depths(ground: _Ground, z_near: float, z_far: float) -> slice:
    """Slice of ground rows (relative to ``ground.v0``) with depth in ``[z_near, z_far]``."""
    lo = int(np.searchsorted(-ground.z, -z_far, side="left"))
    hi = int(np.searchsorted(-ground.z, -max(z_near, 1e-3), side="right"))
    return slice(lo, hi)


def _apply_shadow(
    image: np.ndarray, ground: _Ground, rows: slice, mask: np.ndarray, k: float
) -> None:
    """Darken (and slightly blue) the ground pixels of ``mask`` within ``rows`` by ``k``."""
    if not mask.any():
        return
    tint = np.array([k * 0.95, k, k * 1.08], dtype=_F32)
    region = image[ground.v0 + rows.start : ground.v0 + rows.stop]
    region[mask] *= tint


def _render_shadows(
    rng: np.random.Generator,
    image: np.ndarray,
    ground: _Ground,
    road: _Road,
    vehicles: list[_Vehicle],
) -> None:
    """Tree and pole/building shadows near the road plus contact shadows under vehicles."""
    strength = float(rng.uniform(0.45, 0.7))
    for _ in range(int(rng.integers(0, 5))):
        _tree_shadow(rng, image, ground, road, strength)
    for _ in range(int(rng.integers(0, 3))):
        _band_shadow(rng, image, ground, road, strength)
    for veh in vehicles:
        rows = _rows_for_depths(ground, veh.z - 0.6, veh.z + 0.5)
        x, z = ground.x[rows], ground.z[rows][:, None]
        mask = (np.abs(x - _F32(veh.x)) < _F32(veh.width / 2 + 0.1)) & (z > veh.z - 0.6)
        _apply_shadow(image, ground, rows, mask, 0.35)


def _tree_shadow(
    rng: np.random.Generator, image: np.ndarray, ground: _Ground, road: _Road, k: float
) -> None:
    """An irregular blob (union of ellipses on the ground) next to or across the road."""
    z0 = float(rng.uniform(5.0, 45.0))
    side_edge = 0.0 if rng.random() < 0.5 else road.width
    s0 = side_edge + float(rng.uniform(-3.0, 3.0))
    mask_rows = _rows_for_depths(ground, z0 - 6.0, z0 + 6.0)
    s, z = ground.s[mask_rows], ground.z[mask_rows][:, None]
    mask = np.zeros(s.shape, dtype=bool)
    for _ in range(3):
        a, b = rng.uniform(1.0, 3.5), rng.uniform(0.8, 2.5)
        ds, dz = s0 + rng.uniform(-2.0, 2.0), z0 + rng.uniform(-2.5, 2.5)
        mask |= ((s - _F32(ds)) / _F32(a)) ** 2 + ((z - dz) / b) ** 2 < 1.0
    _apply_shadow(image, ground, mask_rows, mask, k)


def _band_shadow(
    rng: np.random.Generator, image: np.ndarray, ground: _Ground, road: _Road, k: float
) -> None:
    """A long straight shadow (building edge or pole) slanting across the road."""
    z0 = float(rng.uniform(6.0, 50.0))
    depth = float(rng.choice([rng.uniform(0.2, 0.5), rng.uniform(2.0, 8.0)]))
    slope = float(rng.uniform(-0.3, 0.3))
    rows = _rows_for_depths(ground, z0 - 7.0, z0 + depth + 7.0)
    along = ground.z[rows][:, None] - slope * ground.x[rows]
    near_road = np.abs(ground.s[rows] - _F32(road.width / 2)) < _F32(road.width / 2 + 4.0)
    mask = (along > z0) & (along < z0 + depth) & near_road
    _apply_shadow(image, ground, rows, mask, k)


# --------------------------------------------------------------------------- vehicles


def _vehicle_box(cam: PinholeCamera, veh: _Vehicle) -> tuple[float, float, float, float]:
    u0 = float(cam.column(veh.x - veh.width / 2, veh.z))
    u1 = float(cam.column(veh.x + veh.width / 2, veh.z))
    v1 = float(cam.ground_row(veh.z))
    v0 = v1 - cam.f * veh.height / veh.z
    return u0, v0, u1, v1


def _render_vehicles(
    image: np.ndarray, road: np.ndarray, cam: PinholeCamera, vehicles: list[_Vehicle]
) -> list[tuple[int, int, int, int]]:
    height, width = road.shape
    boxes = []
    for veh in vehicles:
        u0, v0, u1, v1 = _vehicle_box(cam, veh)
        x0, y0 = max(int(np.floor(u0 + 0.5)), 0), max(int(np.floor(v0 + 0.5)), 0)
        x1, y1 = min(int(np.floor(u1 + 0.5)), width), min(int(np.floor(v1 + 0.5)), height)
        if x1 - x0 < 2 or y1 - y0 < 2:
            continue
        ty = ((np.arange(y0, y1, dtype=_F32) - v0) / (v1 - v0))[:, None]
        tx = ((np.arange(x0, x1, dtype=_F32) - u0) / (u1 - u0))[None, :]
        colour, body = _vehicle_pixels(veh, tx, ty)
        region = image[y0:y1, x0:x1]
        region[:] = np.where(body[..., None], colour, region)
        road[y0:y1, x0:x1] &= ~body
        boxes.append((x0, y0, x1, y1))
    return boxes


def _vehicle_pixels(veh: _Vehicle, tx: np.ndarray, ty: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rear view of a car or van in box-relative coordinates ``tx, ty`` in [0, 1]."""
    roof = 0.0 if veh.van else 0.4
    inset = 0.04 if veh.van else 0.12
    body = (ty >= roof) | ((tx >= inset) & (tx <= 1.0 - inset))
    body = body & (ty >= 0.0) & (ty < 1.0) & (tx >= 0.0) & (tx < 1.0)
    shading = (0.8 + 0.3 * (1.0 - ty)) * (0.93 + 0.07 * np.sin(np.pi * tx))
    colour = veh.colour * shading[..., None]
    win_lo, win_hi = (0.08, 0.32) if veh.van else (0.06, 0.36)
    window = (ty > win_lo) & (ty < win_hi) & (np.abs(tx - 0.5) < 0.5 - inset - 0.06)
    glass = np.array([0.12, 0.14, 0.18], dtype=_F32) * (1.0 + 0.6 * ty)[..., None]
    colour = np.where(window[..., None], glass, colour)
    lights = (ty > 0.45) & (ty < 0.58) & (np.abs(tx - 0.5) > 0.36)
    colour = np.where(lights[..., None], np.array([0.75, 0.08, 0.06], dtype=_F32), colour)
    plate = (ty > 0.62) & (ty < 0.72) & (np.abs(tx - 0.5) < 0.11)
    colour = np.where(plate[..., None], np.array([0.88, 0.88, 0.82], dtype=_F32), colour)
    bumper = (ty > 0.78) & (ty < 0.88)
    colour = np.where(bumper[..., None], colour * 0.55, colour)
    under = ty >= 0.88
    wheel = under & (np.abs(tx - 0.5) > 0.3)
    colour = np.where(under[..., None], np.array([0.1, 0.1, 0.1], dtype=_F32), colour)
    colour = np.where(wheel[..., None], np.array([0.04, 0.04, 0.04], dtype=_F32), colour)
    return colour.astype(_F32), body


# --------------------------------------------------------------------------- validity, finish


def _render_invalid(rng: np.random.Generator, image: np.ndarray, road: np.ndarray) -> np.ndarray:
    """Mark the ignored top band (and sometimes a bonnet strip); clears road there."""
    height, width = road.shape
    valid = np.ones((height, width), dtype=bool)
    valid[: int(round(height * rng.uniform(0.03, 0.1)))] = False
    if rng.random() < 0.1:
        depth = rng.uniform(0.025, 0.05) * height
        bulge = rng.uniform(0.2, 0.6) * depth
        t = (np.arange(width) - width / 2.0) / (width / 2.0)
        top = height - depth - bulge * (1.0 - t * t)
        bonnet = np.arange(height)[:, None] >= top[None, :]
        paint = rng.uniform(0.05, 0.6) * rng.uniform(0.9, 1.1, size=3)
        image[bonnet] = paint.astype(_F32)
        valid &= ~bonnet
    road &= valid
    return valid


def _finish(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Global lighting, colour cast, contrast and pixel noise; returns ``uint8`` RGB."""
    gain = rng.uniform(0.72, 1.25) * rng.uniform(0.94, 1.06, size=3)
    contrast = _F32(rng.uniform(0.85, 1.15))
    sigma = _F32(rng.uniform(0.008, 0.03))
    image *= gain.astype(_F32)
    image -= _F32(0.5)
    image *= contrast
    image += rng.standard_normal(image.shape, dtype=_F32) * sigma + _F32(0.5)
    image *= _F32(255.0)
    image += _F32(0.5)
    np.clip(image, 0.0, 255.0, out=image)
    return image.astype(np.uint8)


# --------------------------------------------------------------------------- KITTI layout


def encode_gt(road: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """KITTI devkit ground-truth colours: red = valid, blue = road, green = 0 (``uint8`` RGB)."""
    gt = np.zeros(road.shape + (3,), dtype=np.uint8)
    gt[..., 0] = np.where(valid, 255, 0)
    gt[..., 2] = np.where(road & valid, 255, 0)
    return gt


def kitti_calib(height: int, width: int) -> dict[str, np.ndarray]:
    """Calibration matrices consistent with :func:`camera_for_size` (KITTI key names).

    P0/P2 are the left camera ``K [I | 0]``; P1/P3 the right camera with a
    :data:`STEREO_BASELINE` offset. ``Tr_cam_to_road`` is ``[I | (0, -h, 0)]`` so a camera
    point at ``Y = +h`` (on the road, camera y pointing down) maps to road ``Y = 0``.
    """
    cam = camera_for_size(height, width)
    k = np.array([[cam.f, 0.0, cam.cx], [0.0, cam.f, cam.cy], [0.0, 0.0, 1.0]])
    left = k @ np.hstack([np.eye(3), np.zeros((3, 1))])
    right = left.copy()
    right[0, 3] = -cam.f * STEREO_BASELINE
    velo_to_cam = np.array([[0.0, -1.0, 0.0, 0.0], [0.0, 0.0, -1.0, -0.08], [1.0, 0.0, 0.0, -0.27]])
    imu_to_velo = np.array([[1.0, 0.0, 0.0, -0.81], [0.0, 1.0, 0.0, 0.32], [0.0, 0.0, 1.0, -0.8]])
    cam_to_road = np.hstack([np.eye(3), np.array([[0.0], [-cam.height], [0.0]])])
    return {
        "P0": left,
        "P1": right,
        "P2": left.copy(),
        "P3": right.copy(),
        "R0_rect": np.eye(3),
        "Tr_velo_to_cam": velo_to_cam,
        "Tr_imu_to_velo": imu_to_velo,
        "Tr_cam_to_road": cam_to_road,
    }


def format_calib(calib: dict[str, np.ndarray]) -> str:
    """Format calibration matrices as KITTI calib text (``key: %.12e ...`` per line)."""
    lines = [
        f"{key}: " + " ".join(f"{value:.12e}" for value in np.ravel(matrix))
        for key, matrix in calib.items()
    ]
    return "\n".join(lines) + "\n"


def _write_atomic(path: Path, write: Callable[[object], object]) -> None:
    """Call ``write(file_object)`` on a temp file next to ``path``, then rename over it."""
    from semseg.io import create_temp_beside

    fd, tmp = create_temp_beside(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_png_atomic(path: Path, array: np.ndarray) -> None:
    """Write a ``uint8`` RGB (or grey) array as PNG via a temp file and ``os.replace``."""
    image = Image.fromarray(array)
    _write_atomic(Path(path), lambda handle: image.save(handle, format="PNG"))


def _write_text_atomic(path: Path, text: str) -> None:
    _write_atomic(path, lambda handle: handle.write(text.encode("ascii")))


def kitti_layout_seed(seed: int, index: int, split: str) -> int:
    """Seed of the ``index``-th scene (global, across categories) of ``split`` in the layout."""
    return derive_seed(seed, index, stream={"training": 1, "testing": 2}[split])


def kitti_layout_name(index: int) -> tuple[str, int]:
    """Category and per-category index of the ``index``-th scene (categories cycle)."""
    return CATEGORIES[index % len(CATEGORIES)], index // len(CATEGORIES)


def write_kitti_layout(
    root: Path,
    num_train: int,
    num_test: int = 0,
    seed: int = 0,
    height: int = 375,
    width: int = 1242,
    with_calib: bool = True,
) -> Path:
    """Write synthetic scenes in the official KITTI ``data_road`` folder layout.

    Scene ``i`` of a split has category ``kitti_layout_name(i)[0]`` (cycling um, umm, uu),
    file index ``kitti_layout_name(i)[1]`` (counting from 0 per category) and is
    ``generate_scene(kitti_layout_seed(seed, i, split), height, width, category)``.

    Layout: ``training/image_2/{cat}_{idx:06d}.png``,
    ``training/gt_image_2/{cat}_road_{idx:06d}.png``, ``training/calib/{cat}_{idx:06d}.txt``,
    ``testing/image_2/...`` and ``testing/calib/...`` (calib only if ``with_calib``).

    Returns:
        ``root``.
    """
    root = Path(root)
    calib_text = format_calib(kitti_calib(height, width))
    for split, count in (("training", num_train), ("testing", num_test)):
        if count <= 0:
            continue
        folders = ["image_2"] + (["gt_image_2"] if split == "training" else [])
        folders += ["calib"] if with_calib else []
        for folder in folders:
            (root / split / folder).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            category, idx = kitti_layout_name(i)
            scene = generate_scene(kitti_layout_seed(seed, i, split), height, width, category)
            name = f"{category}_{idx:06d}"
            write_png_atomic(root / split / "image_2" / f"{name}.png", scene.image)
            if split == "training":
                gt_path = root / split / "gt_image_2" / f"{category}_road_{idx:06d}.png"
                write_png_atomic(gt_path, encode_gt(scene.road, scene.valid))
            if with_calib:
                _write_text_atomic(root / split / "calib" / f"{name}.txt", calib_text)
    return root

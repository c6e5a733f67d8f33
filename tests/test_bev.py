"""Bird's-eye view: calib reader, road-plane projection, warping, BEV metrics, submission, CLI.

Expected values come from independent calculations: step-by-step rigid transforms with the
inverse written as ``R^T (p - t)``, ray casting onto the road plane, the closed form of the
synthetic camera (``u = f x / z + cx``, ``v = f h / z + cy``), and the KITTI road devkit's
``BirdsEyeView`` look-up table rebuilt row by row and cell by cell from its definition
(:func:`devkit_lookup`), which ``bev_lookup`` must equal cell for cell.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import KITTI_ROOT, assert_one_line_error
from PIL import Image
from torch import nn

from semseg.bev import (
    KITTI_BEV_GRID,
    BevGrid,
    LookupCache,
    bev_lookup,
    project_road_points,
    road_homography,
    warp_to_bev,
)
from semseg.config import IGNORE_INDEX
from semseg.data.calib import (
    CALIB_SHAPES,
    KittiCalib,
    calib_path,
    calib_stem,
    parse_calib,
    read_calib,
)
from semseg.data.kitti import index_split
from semseg.data.synthetic import (
    CAMERA_HEIGHT,
    camera_for_size,
    format_calib,
    generate_scene,
    kitti_calib,
    write_kitti_layout,
)
from semseg.errors import SemsegError
from semseg.evaluation import SpaceScores
from semseg.io import read_rgb
from semseg.metrics.kitti import decode_kitti_gt

LAYOUT_SIZE = (94, 310)  # (height, width) of the tiny synthetic KITTI layout


# ------------------------------------------------------------------------------ helpers


def rotation(rx: float, ry: float, rz: float) -> np.ndarray:
    """Rotation about x, then y, then z (radians)."""
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    r_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    r_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    r_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return r_z @ r_y @ r_x


def hand_calib(
    f: float = 700.0,
    cx: float = 610.0,
    cy: float = 175.0,
    p2_offset: tuple[float, float, float] = (44.0, 0.2, 0.003),
    rect: tuple[float, float, float] = (0.004, -0.006, 0.003),
    road_rotation: tuple[float, float, float] = (0.012, 0.008, -0.005),
    road_translation: tuple[float, float, float] = (0.03, -CAMERA_HEIGHT, 0.28),
) -> KittiCalib:
    k = np.array([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]])
    p2 = np.hstack([k, np.array(p2_offset)[:, None]])
    cam_to_road = np.hstack([rotation(*road_rotation), np.array(road_translation)[:, None]])
    return KittiCalib({"P2": p2, "R0_rect": rotation(*rect), "Tr_cam_to_road": cam_to_road})


def to4(matrix: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    out[: matrix.shape[0], : matrix.shape[1]] = matrix
    return out


@dataclass
class DevkitTable:
    """The devkit's look-up table: which cells are inside, and the 0-based pixel they sample."""

    inside: np.ndarray  # (800, 400) bool
    row: np.ndarray  # (800, 400) int, -1 where not inside
    column: np.ndarray
    u: np.ndarray
    v: np.ndarray
    w: np.ndarray


def devkit_lookup(calib: KittiCalib, height: int, width: int) -> DevkitTable:
    """The road devkit's ``BirdsEyeView`` table, from its definition, one cell at a time.

    Cell centres: ``x = -10 + 0.025 + j * 0.05`` and ``z = 46 - 0.025 - i * 0.05``, rounded to
    float32. The road point ``(x, 0, z)`` goes to camera 0 by solving ``R p_cam = p - t``
    (``Tr_cam_to_road = [R | t]``), is rectified by ``R0_rect`` and projected by ``P2``
    (float64). Inside: ``1 <= u <= W`` and ``1 <= v <= H``; sampled pixel
    ``image[int(v) - 1, int(u) - 1]``.
    """
    rot, trans = calib.Tr_cam_to_road[:, :3], calib.Tr_cam_to_road[:, 3]
    xs = [float(np.float32(-10 + 0.025 + j * 0.05)) for j in range(400)]
    table = DevkitTable(
        inside=np.zeros((800, 400), bool),
        row=np.full((800, 400), -1),
        column=np.full((800, 400), -1),
        u=np.zeros((800, 400)),
        v=np.zeros((800, 400)),
        w=np.zeros((800, 400)),
    )
    for i in range(800):
        z = float(np.float32(46 - 0.025 - i * 0.05))
        road = np.array([xs, [0.0] * 400, [z] * 400])  # one grid row of road points, 3 x 400
        camera = np.linalg.solve(rot, road - trans[:, None])
        image = calib.P2 @ np.vstack([calib.R0_rect @ camera, np.ones(400)])
        table.w[i] = image[2]
        table.u[i] = image[0] / image[2]
        table.v[i] = image[1] / image[2]
        for j in range(400):
            u, v = table.u[i, j], table.v[i, j]
            if 1 <= u <= width and 1 <= v <= height:
                table.inside[i, j] = True
                table.row[i, j] = int(v) - 1
                table.column[i, j] = int(u) - 1
    return table


def assert_lookup_is_the_devkits(calib: KittiCalib, height: int, width: int) -> DevkitTable:
    reference = devkit_lookup(calib, height, width)
    assert (reference.w > 0).all()  # the grid is ahead of the camera: no behind-camera cells
    table = bev_lookup(calib, (height, width))
    assert np.array_equal(table.inside, reference.inside)
    expected = np.where(reference.inside, reference.row * width + reference.column, 0)
    assert np.array_equal(table.pixel, expected)
    assert table.u == pytest.approx(reference.u, abs=1e-7)
    assert table.v == pytest.approx(reference.v, abs=1e-7)
    return reference


def write_calib(path: Path, calib: KittiCalib) -> KittiCalib:
    """Write ``calib`` as a KITTI calib file and read it back (as the toolkit sees it)."""
    path.write_text(format_calib(calib.matrices))
    return read_calib(path)


class PositionModel(nn.Module):
    """A stub segmentation model: road logit ``logit[row, column]`` whatever the image."""

    def __init__(self, road_logit: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("road", torch.from_numpy(road_logit.astype(np.float32)))

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        road = self.road.expand(batch.shape[0], 1, *self.road.shape)
        return torch.cat([torch.zeros_like(road), road], dim=1)


def position_model(road_probability: np.ndarray, tmp_path: Path):
    """A LoadedModel whose full-resolution road probability is ``road_probability`` (H, W)."""
    from semseg.inference.checkpoint import LoadedModel

    p = road_probability.astype(np.float64)
    return LoadedModel(
        model=PositionModel(np.log(p / (1 - p))),
        model_name="position-stub",
        num_classes=2,
        input_size=road_probability.shape,  # the image's size: no resizing anywhere
        positive_class=1,
        class_names=["background", "road"],
        path=tmp_path / "stub.ckpt",
    )


def run_semseg(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """The ``semseg`` console script as a user runs it."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    script = Path(sys.executable).with_name("semseg")
    command = [str(script)] if script.is_file() else ["semseg"]
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, timeout=timeout, env=env
    )


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    height, width = LAYOUT_SIZE
    root = tmp_path_factory.mktemp("kitti") / "data_road"
    return write_kitti_layout(root, num_train=3, num_test=3, height=height, width=width)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from semseg.tasks.segmentation import SegmentationTask

    torch.manual_seed(0)
    task = SegmentationTask(
        model_name="fcn8s",
        num_classes=2,
        model_options={"width_mult": 0.125, "keep_prob": 1.0},
        input_size=[64, 192],
    )
    path = tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams)}, path)
    return path


# ------------------------------------------------------------------------------ grid


def test_grid_is_400_wide_800_high_far_at_top():
    grid = KITTI_BEV_GRID
    assert (grid.width, grid.height) == (400, 800)
    assert grid.shape == (800, 400)
    assert grid.x_centres()[0] == pytest.approx(-9.975)
    assert grid.x_centres()[-1] == pytest.approx(9.975)
    assert grid.z_centres()[0] == pytest.approx(45.975)  # far edge at row 0
    assert grid.z_centres()[-1] == pytest.approx(6.025)  # near edge at the bottom row
    row, column = grid.cell_of(np.array([-10.0, 0.01, 9.99]), np.array([45.99, 20.0, 6.01]))
    assert row.tolist() == [0, 520, 799]
    assert column.tolist() == [0, 200, 399]


# ------------------------------------------------------------------------------ projection


def test_projection_of_road_points_matches_step_by_step_transforms():
    calib = hand_calib()
    rot = calib.Tr_cam_to_road[:, :3]
    trans = calib.Tr_cam_to_road[:, 3]
    points = [(0.0, 8.0), (-3.5, 12.0), (4.2, 25.0), (-9.0, 40.0), (1.3, 6.5)]
    xs = np.array([p[0] for p in points])
    zs = np.array([p[1] for p in points])
    u, v, w = project_road_points(calib, xs, zs)
    for i, (x, z) in enumerate(points):
        road_point = np.array([x, 0.0, z])
        camera = rot.T @ (road_point - trans)  # inverse rigid transform, written out
        rectified = to4(calib.R0_rect) @ np.append(camera, 1.0)
        image = calib.P2 @ rectified
        assert w[i] == pytest.approx(image[2], rel=1e-12)
        assert u[i] == pytest.approx(image[0] / image[2], abs=1e-9)
        assert v[i] == pytest.approx(image[1] / image[2], abs=1e-9)
    # the homography agrees with the 3x4 chain on a point written in homogeneous form
    h = road_homography(calib)
    uvw = h @ np.array([4.2, 25.0, 1.0])
    assert uvw[:2] / uvw[2] == pytest.approx([u[2], v[2]], abs=1e-9)


def test_projection_of_the_synthetic_camera_is_the_pinhole_closed_form():
    height, width = 375, 1242
    cam = camera_for_size(height, width)
    calib = parse_calib(format_calib(kitti_calib(height, width)))
    x = np.array([-2.0, 0.0, 3.0, 7.5])
    z = np.array([6.0, 10.0, 20.0, 45.0])
    u, v, w = project_road_points(calib, x, z)
    assert u == pytest.approx(cam.f * x / z + cam.cx, abs=1e-6)
    assert v == pytest.approx(cam.f * CAMERA_HEIGHT / z + cam.cy, abs=1e-6)
    assert w == pytest.approx(z)


def test_points_behind_the_camera_are_empty():
    calib = hand_calib()
    u, v, w = project_road_points(calib, np.array([0.0]), np.array([-5.0]))
    assert w[0] < 0 and np.isnan(u[0]) and np.isnan(v[0])
    grid = BevGrid(resolution=1.0, x_range=(-2.0, 2.0), z_range=(-4.0, 12.0))
    table = bev_lookup(calib, (375, 1242), grid)
    z = grid.z_centres()
    assert not table.inside[z < 0].any() and table.inside[z > 7].all()
    bev = table.nearest(np.full((375, 1242), 200, np.uint8))
    assert (bev[z < 0] == 0).all()


# ------------------------------------------------------------------------------ warping


def test_rectangle_on_the_road_lands_on_its_bev_cells():
    # A long-focus camera (f = 3000 px) so that half a pixel is less than a 5 cm cell at 20 m.
    height, width, f, cx, cy = 620, 1242, 3000.0, 621.0, 40.0
    calib = hand_calib(
        f=f,
        cx=cx,
        cy=cy,
        p2_offset=(0.0, 0.0, 0.0),
        rect=(0.002, -0.001, 0.001),
        road_rotation=(0.01, 0.0, 0.0),
        road_translation=(0.0, -CAMERA_HEIGHT, 0.0),
    )
    # Ray casting: pixel centre -> ray in rectified camera -> camera -> road frame -> Y = 0.
    # The devkit reads pixel (r, c) for projections with c + 1 <= u < c + 2 and
    # r + 1 <= v < r + 2 (its 1-based convention), so that pixel stands for the ray through
    # (c + 1.5, r + 1.5).
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64) + 1.5
    rays = np.stack([(cols - cx) / f, (rows - cy) / f, np.ones_like(rows)], axis=-1)
    rays = rays @ calib.R0_rect  # R0_rect^T applied to every ray
    rot, trans = calib.Tr_cam_to_road[:, :3], calib.Tr_cam_to_road[:, 3]
    rays_road = rays @ rot.T
    with np.errstate(divide="ignore", invalid="ignore"):
        s = -trans[1] / rays_road[..., 1]
    hits = s > 0
    x = trans[0] + s * rays_road[..., 0]
    z = trans[2] + s * rays_road[..., 2]
    painted = hits & (x >= -1.5) & (x <= 1.5) & (z >= 10.0) & (z <= 20.0)
    assert painted.sum() > 1000
    probability = np.where(painted, 1.0, 0.0).astype(np.float32)

    bev = warp_to_bev(probability, calib)
    assert bev.shape == (800, 400)
    grid = KITTI_BEV_GRID
    xc, zc = np.meshgrid(grid.x_centres(), grid.z_centres())
    inner = (xc >= -1.5 + 0.05) & (xc <= 1.5 - 0.05) & (zc >= 10.0 + 0.05) & (zc <= 20.0 - 0.05)
    outer = (xc >= -1.5 - 0.05) & (xc <= 1.5 + 0.05) & (zc >= 10.0 - 0.05) & (zc <= 20.0 + 0.05)
    assert inner.sum() == 58 * 198
    assert (bev[inner] == 1.0).all()
    assert (bev[~outer] == 0.0).all()
    # the rectangle's cells: columns 170..229, rows 520..719
    rows_hit, cols_hit = np.nonzero(bev)
    assert 169 <= cols_hit.min() <= 171 and 228 <= cols_hit.max() <= 230
    assert 519 <= rows_hit.min() <= 521 and 718 <= rows_hit.max() <= 720
    # bilinear sampling keeps the interior and stays zero away from the rectangle; it blends
    # the next pixel, and a pixel row is 8 cm of road at 20 m, so both are taken 10 cm from it
    smooth = warp_to_bev(probability, calib, method="bilinear")
    deep = (np.abs(xc) <= 1.5 - 0.1) & (zc >= 10.0 + 0.1) & (zc <= 20.0 - 0.1)
    near = (np.abs(xc) <= 1.5 + 0.1) & (zc >= 10.0 - 0.1) & (zc <= 20.0 + 0.1)
    assert smooth[deep].min() > 0.99 and (smooth[~near] == 0.0).all()


def test_ground_truth_warp_marks_empty_cells_invalid():
    height, width = 375, 1242
    scene = generate_scene(3, height, width, category="um")
    calib = parse_calib(format_calib(kitti_calib(height, width)))
    table = bev_lookup(calib, (height, width))
    valid, road = table.warp_gt(scene.valid, scene.road)
    assert valid.shape == road.shape == (800, 400)
    assert not (valid & ~table.inside).any() and not (road & ~valid).any()
    assert road.sum() > 1000 and (valid & ~road).sum() > 1000
    mask = np.where(scene.valid, scene.road.astype(np.uint8), IGNORE_INDEX).astype(np.uint8)
    warped = table.warp_mask(mask)
    assert np.array_equal(warped != IGNORE_INDEX, valid)
    assert np.array_equal(warped == 1, road)
    # cells of the near corners project outside a 1242-wide image (|x| > 0.5 * W / f * z)
    cam = camera_for_size(height, width)
    assert not table.inside[-1, 0] and cam.column(-9.975, 6.025) < 0


def test_lookup_refuses_a_map_of_another_size():
    table = bev_lookup(hand_calib(), (375, 1242))
    with pytest.raises(SemsegError, match="1242x375"):
        table.nearest(np.zeros((160, 576), np.uint8))


def test_bev_metrics_of_a_perfect_prediction_are_100():
    height, width = 375, 1242
    calib = parse_calib(format_calib(kitti_calib(height, width)))
    table = bev_lookup(calib, (height, width))
    scores = SpaceScores(num_classes=2, positive=1)
    for seed, category in ((1, "um"), (2, "umm"), (4, "uu")):
        scene = generate_scene(seed, height, width, category=category)
        mask = np.where(scene.valid, scene.road.astype(np.uint8), IGNORE_INDEX).astype(np.uint8)
        probability = scene.road.astype(np.float32)
        labels = scene.road.astype(np.int64)
        scores.update(
            category, table.nearest(probability), table.nearest(labels), table.warp_mask(mask)
        )
    groups = scores.groups("bev")
    assert set(groups) == {"um", "umm", "uu", "all"}
    for values in groups.values():
        for key in ("max_f", "ap", "precision", "recall", "iou", "pixel_accuracy"):
            assert values[key] == pytest.approx(100.0), key
        assert values["fpr"] == 0.0 and values["fnr"] == 0.0


# ------------------------------------------------------------------------------ devkit golden


@pytest.mark.parametrize(
    ("name", "calib", "size"),
    [
        ("hand-made camera", hand_calib(), (375, 1242)),
        ("synthetic KITTI camera", parse_calib(format_calib(kitti_calib(375, 1242))), (375, 1242)),
        ("odd size", hand_calib(f=650.0, cx=580.3, cy=181.7), (370, 1224)),
    ],
)
def test_lookup_equals_the_devkits_on_synthetic_calibrations(name, calib, size):
    reference = assert_lookup_is_the_devkits(calib, *size)
    assert 50_000 < reference.inside.sum() < 320_000, name  # both inside and empty cells


@pytest.mark.kitti
@pytest.mark.skipif(
    not (KITTI_ROOT / "training" / "calib" / "um_000055.txt").is_file(),
    reason="../shared/data/kitti_road absent",
)
def test_lookup_equals_the_devkits_on_a_real_calibration():
    calib = read_calib(KITTI_ROOT / "training" / "calib" / "um_000055.txt")
    with Image.open(KITTI_ROOT / "training" / "image_2" / "um_000055.png") as image:
        width, height = image.size
    reference = assert_lookup_is_the_devkits(calib, height, width)
    assert reference.inside.sum() > 250_000


def down_looking_calib(cx: float, cy: float) -> KittiCalib:
    """A camera 1 m above the road looking straight down with f = 1: ``u = x + cx``, ``v = cy - z``.

    Camera axes in the road frame (``Y`` down): x along x, y along -z, the optical axis along +Y.
    """
    rotation_ = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
    cam_to_road = np.hstack([rotation_, np.array([[0.0], [-1.0], [0.0]])])
    p2 = np.array([[1.0, 0.0, cx, 0.0], [0.0, 1.0, cy, 0.0], [0.0, 0.0, 1.0, 0.0]])
    return KittiCalib({"P2": p2, "R0_rect": np.eye(3), "Tr_cam_to_road": cam_to_road})


@pytest.mark.parametrize(
    ("cx", "inside", "columns"),
    [
        (2.5, [True, True, True, True], [0, 1, 2, 3]),  # u = 1, 2, 3, 4 = W: both edges inside
        (2.4, [False, True, True, True], [0, 0, 1, 2]),  # u = 0.9 < 1 is outside
        (2.6, [True, True, True, False], [0, 1, 2, 0]),  # u = 4.1 > W is outside
        (3.49, [True, True, True, False], [0, 1, 2, 0]),  # u = 1.99 truncates to column 0
    ],
)
def test_devkit_inside_test_and_pixel_on_exact_edges(cx, inside, columns):
    # 4 x 4 cells of 1 m: x centres -1.5 .. 1.5, z centres 4.5 (row 0) .. 1.5; a 4 x 4 image
    grid = BevGrid(resolution=1.0, x_range=(-2.0, 2.0), z_range=(1.0, 5.0))
    assert grid.x_centres().tolist() == [-1.5, -0.5, 0.5, 1.5]
    table = bev_lookup(down_looking_calib(cx, cy=5.5), (4, 4), grid)
    assert table.v[:, 0].tolist() == pytest.approx([1.0, 2.0, 3.0, 4.0])  # v = 1 .. H
    assert table.inside[0].tolist() == inside
    assert (table.inside == table.inside[0]).all()  # every row, v = 1 and v = H included
    assert (table.pixel[0] % 4).tolist() == columns
    assert (table.pixel[:, 1] // 4).tolist() == [0, 1, 2, 3]  # row int(v) - 1
    image = np.arange(16, dtype=np.float32).reshape(4, 4)
    bev = table.nearest(image, fill=-1)
    expected = [image[0, c] if keep else -1 for c, keep in zip(columns, inside, strict=True)]
    assert bev[0].tolist() == expected


def test_bilinear_centres_on_the_pixel_nearest_sampling_takes():
    # u = x + 2.5 + 0.5 puts every cell centre on a pixel centre of the devkit's convention
    # (column + 1.5), so bilinear equals nearest exactly; half a pixel further it averages two.
    grid = BevGrid(resolution=1.0, x_range=(-2.0, 2.0), z_range=(1.0, 5.0))
    image = np.arange(16, dtype=np.float32).reshape(4, 4) * 10
    centred = bev_lookup(down_looking_calib(3.0, cy=6.0), (4, 4), grid)
    assert np.array_equal(centred.bilinear(image), centred.nearest(image))
    between = bev_lookup(down_looking_calib(3.5, cy=6.0), (4, 4), grid)
    bev = between.bilinear(image)
    # cell (row 0, column 0): u = 2.0, v = 1.5 -> between columns 0 and 1 of row 0
    assert bev[0, 0] == pytest.approx((image[0, 0] + image[0, 1]) / 2)


# ------------------------------------------------------------------------------ degenerate calib


@pytest.mark.parametrize(
    ("key", "values", "message"),
    [
        ("P2", [0.0] * 12, "P2 is singular"),
        ("R0_rect", [0.0] * 9, "R0_rect is singular"),
        ("Tr_cam_to_road", [1, 0, 0, 0, 0, 0, 0, -1.65, 0, 0, 1, 0], "Tr_cam_to_road is singular"),
    ],
)
def test_degenerate_calibration_is_refused_naming_the_file(tmp_path: Path, key, values, message):
    matrices = dict(kitti_calib(375, 1242))
    matrices[key] = np.array(values, dtype=np.float64)
    path = tmp_path / "um_000000.txt"
    path.write_text(format_calib(matrices))
    with pytest.raises(SemsegError, match=message) as info:
        read_calib(path)
    assert str(path) in str(info.value) and "degenerate calibration" in str(info.value)


def test_a_camera_in_the_road_plane_or_looking_away_is_refused():
    # camera at road height: every road point projects onto the horizon row (rank 2)
    flat = hand_calib(p2_offset=(0.0, 0.0, 0.0), road_translation=(0.0, 0.0, 0.0))
    with pytest.raises(SemsegError, match="singular"):
        bev_lookup(KittiCalib(flat.matrices, "flat.txt"), (375, 1242))
    # camera turned round (180 degrees about the vertical): the grid is behind it
    back = hand_calib(road_rotation=(0.0, np.pi, 0.0))
    with pytest.raises(SemsegError, match=r"back.txt.*no cell .* inside a 1242x375 image"):
        bev_lookup(KittiCalib(back.matrices, "back.txt"), (375, 1242))


def test_bev_command_refuses_a_degenerate_calibration(layout: Path, tmp_path: Path):
    image = layout / "training" / "image_2" / "um_000000.png"
    matrices = dict(kitti_calib(*LAYOUT_SIZE))
    matrices["P2"] = np.zeros(12)
    calib = tmp_path / "zero_p2.txt"
    calib.write_text(format_calib(matrices))
    out = tmp_path / "o.png"
    result = run_semseg("bev", str(image), "--calib", str(calib), "--out", str(out))
    assert_one_line_error(result, "zero_p2.txt", "degenerate calibration", "P2")
    assert not out.exists()


def test_kitti_submission_refuses_a_degenerate_calibration_before_writing(
    checkpoint: Path, tmp_path: Path
):
    height, width = LAYOUT_SIZE
    root = write_kitti_layout(tmp_path / "data_road", 0, 3, height=height, width=width)
    matrices = dict(kitti_calib(height, width))
    matrices["P2"] = np.zeros(12)
    (root / "testing" / "calib" / "umm_000000.txt").write_text(format_calib(matrices))
    out = tmp_path / "submission"
    result = run_semseg("kitti-submission", str(checkpoint), "--data", str(root), "--out", str(out))
    assert_one_line_error(result, "umm_000000", "degenerate calibration")
    assert not out.exists() or not any(out.rglob("*.png"))
    # a calibration looking away from the road: no cell in the image, refused up front too
    matrices = dict(kitti_calib(height, width))
    matrices["Tr_cam_to_road"] = np.array([-1.0, 0, 0, 0, 0, 1, 0, -1.65, 0, 0, -1, 0])
    (root / "testing" / "calib" / "umm_000000.txt").write_text(format_calib(matrices))
    result = run_semseg("kitti-submission", str(checkpoint), "--data", str(root), "--out", str(out))
    assert_one_line_error(result, "umm_000000", "no cell")
    assert not out.exists() or not any(out.rglob("*.png"))


# ------------------------------------------------------------------------------ calib reader


def test_calib_reader_parses_every_matrix(tmp_path: Path):
    path = tmp_path / "um_000000.txt"
    path.write_text(format_calib(kitti_calib(375, 1242)))
    calib = read_calib(path)
    for key, shape in CALIB_SHAPES.items():
        assert calib[key].shape == shape, key
    assert calib.P2[0, 0] == pytest.approx(721.5377)
    assert calib.Tr_cam_to_road[1, 3] == pytest.approx(-CAMERA_HEIGHT)
    assert np.array_equal(calib.R0_rect, np.eye(3))


def test_calib_lookup_by_result_and_image_name(layout: Path):
    calib_dir = layout / "training" / "calib"
    assert calib_stem("um_road_000000") == "um_000000"
    assert calib_stem("umm_lane_000012.png") == "umm_000012"
    assert calib_stem("uu_000007") == "uu_000007"
    assert calib_path(calib_dir, "um_road_000000") == calib_dir / "um_000000.txt"
    assert calib_path(calib_dir, "um_000000") == calib_dir / "um_000000.txt"
    assert read_calib(calib_path(calib_dir, "um_road_000000")).P2.shape == (3, 4)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda text: text.replace("R0_rect:", "R0_rectX:"), "no R0_rect"),
        (lambda text: "\n".join(ln for ln in text.splitlines() if not ln.startswith("P2")), "P2"),
        (lambda text: text.replace("Tr_cam_to_road:", "Tr_cam_to_roads:"), "Tr_cam_to_road"),
        (lambda text: text.replace("P2: ", "P2: 1.0 "), "13"),
        (lambda text: re.sub(r"R0_rect: \S+ ", "R0_rect: ", text), "must hold 9 numbers"),
        (lambda text: text.replace("P0: ", "P0: abc "), "non-numeric"),
        (lambda text: text + "P2: " + " ".join(["1"] * 12) + "\n", "twice"),
        (lambda text: text + "garbage line\n", "not 'KEY: numbers'"),
        (lambda text: text.replace("P3: ", "P3: nan "), "non-finite"),
        (lambda text: "", "no P2, R0_rect, Tr_cam_to_road"),
    ],
)
def test_calib_reader_refuses_bad_files(tmp_path: Path, edit, message: str):
    path = tmp_path / "bad.txt"
    path.write_text(edit(format_calib(kitti_calib(375, 1242))))
    with pytest.raises(SemsegError, match=message.replace("(", r"\(")) as info:
        read_calib(path)
    assert str(path) in str(info.value)


def test_calib_reader_refuses_a_missing_file(tmp_path: Path):
    with pytest.raises(SemsegError, match="calibration file not found"):
        read_calib(tmp_path / "nope.txt")


# ------------------------------------------------------------------------------ real KITTI


@pytest.mark.kitti
@pytest.mark.skipif(
    not (KITTI_ROOT / "training" / "calib").is_dir(), reason="../shared/data/kitti_road absent"
)
def test_kitti_bev_ground_truth_has_road_cells():
    samples = [s for s in index_split(KITTI_ROOT, "training") if s.calib_path is not None]
    assert len(samples) == len(list((KITTI_ROOT / "training" / "calib").glob("*.txt")))
    assert len(samples) == 47
    tables = LookupCache()
    for sample in samples:
        valid, road = decode_kitti_gt(read_rgb(sample.target_path))
        mask = np.where(valid, road.astype(np.uint8), IGNORE_INDEX).astype(np.uint8)
        bev = tables.get(read_calib(sample.calib_path), mask.shape).warp_mask(mask)
        assert bev.shape == (800, 400), sample.name  # 400 wide x 800 high
        road = int((bev == 1).sum())
        assert road > 5000, (sample.name, road)
        assert (bev == 0).sum() > 0, sample.name
        # the car drives on the road: the cells straight ahead (|x| < 1 m, 7 m < z < 10 m)
        # are valid and mostly road (a wrong orientation or a flipped axis fails here)
        top, left = KITTI_BEV_GRID.cell_of(-1.0, 10.0)
        bottom, right = KITTI_BEV_GRID.cell_of(1.0, 7.0)
        ahead = bev[top:bottom, left:right]
        assert (ahead != IGNORE_INDEX).all() and (ahead == 1).mean() > 0.9, sample.name


# ------------------------------------------------------------------------------ submission


def test_submission_inputs_need_a_calib_for_every_test_image(tmp_path: Path):
    from semseg.submission import submission_inputs

    root = write_kitti_layout(tmp_path / "data_road", num_train=0, num_test=3, height=40, width=130)
    (root / "testing" / "calib" / "umm_000000.txt").unlink()
    with pytest.raises(SemsegError, match="umm_000000.png.*calibration file not found"):
        submission_inputs(root)
    warnings: list[str] = []
    items = submission_inputs(root, skip_bad=True, warn=warnings.append)
    assert [item.result_name for item in items] == ["um_road_000000.png", "uu_road_000000.png"]
    assert len(warnings) == 1 and "skipped 1 of 3 test images" in warnings[0]
    (root / "testing" / "calib" / "um_000000.txt").write_text("P2: 1 2 3\n")
    with pytest.raises(SemsegError, match=r"um_000000.png.*P2 must hold 12 numbers.*1 more"):
        submission_inputs(root)


def test_submission_holds_the_devkit_warp_of_the_model_output(layout: Path, tmp_path: Path):
    # A stub model whose road probability is a known function of the pixel position, varying
    # by row and column and never 0.5: a submission holding 1 - p, an unwarped, transposed or
    # shifted map, or another pixel convention, fails here.
    from semseg.submission import submission_inputs, write_submission

    height, width = LAYOUT_SIZE
    rows, cols = np.mgrid[0:height, 0:width]
    levels = 1 + (7 * cols + 3 * rows) % 254  # 1..254: a confidence level per pixel
    loaded = position_model(levels / 255.0, tmp_path)
    items = submission_inputs(layout)
    written = write_submission(loaded, items, tmp_path / "out", batch_size=2)
    assert [path.name for path in written.files] == [item.result_name for item in items]
    for item, path in zip(items, written.files, strict=True):
        reference = devkit_lookup(item.calib, height, width)
        sampled = levels[reference.row, reference.column]
        expected = np.where(reference.inside, sampled, 0).astype(np.uint8)
        with Image.open(path) as image:
            assert image.size == (400, 800) and image.mode == "L"
            result = np.asarray(image)
        assert reference.inside.sum() > 20_000
        assert np.array_equal(result, expected), path.name
    with zipfile.ZipFile(written.archive) as bundle:
        assert sorted(bundle.namelist()) == sorted(item.result_name for item in items)


def test_evaluate_bev_scores_the_pixels_the_devkit_samples(tmp_path: Path):
    # The model is right exactly on the pixels the devkit's table samples and wrong on every
    # other pixel, so the BEV scores are 100 only if evaluation samples those same pixels.
    from semseg.data.sample import Sample
    from semseg.evaluation import evaluate_samples

    height, width = 375, 1242
    calib = write_calib(tmp_path / "um_000000.txt", hand_calib())
    reference = devkit_lookup(calib, height, width)
    rows, cols = np.mgrid[0:height, 0:width]
    truth = ((rows // 3 + cols // 3) % 2).astype(np.uint8)  # road / not road, all valid
    sampled = np.zeros((height, width), bool)
    sampled[reference.row[reference.inside], reference.column[reference.inside]] = True
    right = np.where(truth == 1, 0.9, 0.1)
    probability = np.where(sampled, right, 1.0 - right)
    assert 0.05 < sampled.mean() < 0.8
    loaded = position_model(probability, tmp_path)
    sample = Sample("um_000000", "um", tmp_path / "um_000000.png", calib_path=Path(calib.source))
    image = np.zeros((height, width, 3), np.uint8)
    results = evaluate_samples(loaded, [sample], reader=lambda _: (image, truth), space="both")
    bev = results["spaces"]["bev"]["groups"]["all"]
    for key in ("max_f", "precision", "recall", "iou", "pixel_accuracy"):
        assert bev[key] == pytest.approx(100.0), key
    perspective = results["spaces"]["perspective"]["groups"]["all"]
    assert perspective["pixel_accuracy"] < 80.0  # wrong off the sampled pixels


def test_kitti_submission_writes_named_bev_pngs_and_a_flat_zip(
    layout: Path, checkpoint: Path, tmp_path: Path
):
    out = tmp_path / "submission"
    result = run_semseg(
        "kitti-submission", str(checkpoint), "--data", str(layout.parent), "--out", str(out)
    )
    assert result.returncode == 0, result.stderr[-2000:]
    names = ["um_road_000000.png", "umm_road_000000.png", "uu_road_000000.png"]
    assert sorted(p.name for p in (out / "bev").glob("*.png")) == names
    for name in names:
        with Image.open(out / "bev" / name) as image:
            assert image.size == (400, 800) and image.mode == "L"
    archive = out / "kitti_road_submission.zip"
    with zipfile.ZipFile(archive) as bundle:
        assert sorted(bundle.namelist()) == names  # files at the top level
        for name in names:
            assert bundle.read(name) == (out / "bev" / name).read_bytes()
    assert not list(out.rglob("*.tmp"))
    assert str(archive) in result.stdout.replace("\n", "")


# ------------------------------------------------------------------------------ CLI


def test_evaluate_space_both_prints_and_writes_both(layout: Path, checkpoint: Path, tmp_path: Path):
    (layout / "training" / "calib" / "uu_000000.txt").unlink()
    out = tmp_path / "eval.json"
    result = run_semseg(
        "evaluate", str(checkpoint), "--data", str(layout), "--space", "both", "--out", str(out)
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "BEV: 1 of 3 images have no calib file and were skipped" in result.stderr
    assert "all (bev)" in result.stdout and "um (bev)" in result.stdout
    results = json.loads(out.read_text())
    spaces = results["spaces"]
    assert set(spaces) == {"perspective", "bev"}
    assert set(spaces["perspective"]["groups"]) == {"um", "umm", "uu", "all"}
    assert set(spaces["bev"]["groups"]) == {"um", "umm", "all"}  # uu had no calib
    assert spaces["bev"]["skipped_no_calib"] == 1 and spaces["bev"]["num_images"] == 2
    for group in spaces["bev"]["groups"].values():
        for key in ("max_f", "ap", "precision", "recall", "fpr", "fnr", "best_threshold", "iou"):
            assert np.isfinite(group[key]), key
    assert spaces["bev"]["grid"]["width"] == 400 and spaces["bev"]["grid"]["height"] == 800


def test_bev_command_warps_an_image_and_a_ground_truth(layout: Path, tmp_path: Path):
    calib = layout / "training" / "calib" / "umm_000000.txt"
    image = layout / "training" / "image_2" / "umm_000000.png"
    gt = layout / "training" / "gt_image_2" / "umm_road_000000.png"
    for source, out, kind in (
        (image, tmp_path / "image.png", "image"),
        (gt, tmp_path / "gt.png", "ground truth"),
    ):
        result = run_semseg("bev", str(source), "--calib", str(calib), "--out", str(out))
        assert result.returncode == 0, result.stderr
        assert f"({kind})" in result.stdout
        with Image.open(out) as written:
            assert written.size == (400, 800) and written.mode == "RGB"
            pixels = np.asarray(written)
        assert pixels.any()
    colours = {tuple(c) for c in np.unique(pixels.reshape(-1, 3), axis=0)}
    assert colours <= {(255, 0, 255), (255, 0, 0), (0, 0, 0), (0, 0, 255)}
    assert (255, 0, 255) in colours


def test_bev_command_bad_calib_is_a_one_line_error(layout: Path, tmp_path: Path):
    image = layout / "training" / "image_2" / "um_000000.png"
    missing = tmp_path / "missing.txt"
    out = str(tmp_path / "o.png")
    result = run_semseg("bev", str(image), "--calib", str(missing), "--out", out)
    assert_one_line_error(result, "calibration file not found", "missing.txt")
    broken = tmp_path / "broken.txt"
    broken.write_text("P2: 1 2 3\nR0_rect: 1 0 0 0 1 0 0 0 1\n")
    result = run_semseg("bev", str(image), "--calib", str(broken), "--out", out)
    assert_one_line_error(result, "broken.txt", "P2 must hold 12 numbers")
    assert not (tmp_path / "o.png").exists()

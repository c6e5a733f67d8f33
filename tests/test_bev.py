"""Bird's-eye view: calib reader, road-plane projection, warping, BEV metrics, submission, CLI.

Expected values come from independent calculations: step-by-step rigid transforms with the
inverse written as ``R^T (p - t)``, ray casting onto the road plane, and the closed form of the
synthetic camera (``u = f x / z + cx``, ``v = f h / z + cy``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

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

KITTI_ROOT = Path(__file__).resolve().parents[2] / "shared/data/kitti_road"
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


def run_semseg(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """The ``semseg`` console script as a user runs it."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    script = Path(sys.executable).with_name("semseg")
    command = [str(script)] if script.is_file() else ["semseg"]
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("semseg: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


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
    grid = BevGrid(resolution=1.0, x_range=(-2.0, 2.0), z_range=(-4.0, 4.0))
    table = bev_lookup(calib, (375, 1242), grid)
    z = grid.z_centres()
    assert not table.inside[z < 0].any()
    bev = table.nearest(np.full((375, 1242), 200, np.uint8))
    assert (bev[z < 0] == 0).all()


# ------------------------------------------------------------------------------ warping


def test_rectangle_on_the_road_lands_on_its_bev_cells():
    # A long-focus camera (f = 3000 px) so that half a pixel is less than a 5 cm cell at 20 m.
    height, width, f, cx, cy = 620, 1242, 3000.0, 621.0, 40.0
    calib = hand_calib(
        f=f, cx=cx, cy=cy, p2_offset=(0.0, 0.0, 0.0), rect=(0.002, -0.001, 0.001),
        road_rotation=(0.01, 0.0, 0.0), road_translation=(0.0, -CAMERA_HEIGHT, 0.0),
    )
    # Ray casting: pixel centre -> ray in rectified camera -> camera -> road frame -> Y = 0.
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
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
    # bilinear sampling keeps the interior and stays zero far from the rectangle
    smooth = warp_to_bev(probability, calib, method="bilinear")
    assert smooth[inner].min() > 0.99 and (smooth[~outer] == 0.0).all()


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


def test_warping_one_image_is_fast():
    height, width = 375, 1242
    calib = parse_calib(format_calib(kitti_calib(height, width)))
    probability = np.random.default_rng(0).random((height, width), dtype=np.float32)
    start = time.perf_counter()
    table = bev_lookup(calib, (height, width))
    table.nearest(probability)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, elapsed  # about 15 ms on one core; generous for shared CI


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


def test_kitti_submission_writes_named_bev_pngs_and_a_flat_zip(
    layout: Path, checkpoint: Path, tmp_path: Path
):
    out = tmp_path / "submission"
    result = run_semseg("kitti-submission", str(checkpoint), "--data", str(layout.parent),
                        "--out", str(out))
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
    result = run_semseg("evaluate", str(checkpoint), "--data", str(layout), "--space", "both",
                        "--out", str(out))
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
    for source, out, kind in ((image, tmp_path / "image.png", "image"),
                              (gt, tmp_path / "gt.png", "ground truth")):
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

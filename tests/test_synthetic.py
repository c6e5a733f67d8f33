"""Tests for the procedural synthetic road-scene generator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from semseg.data.synthetic import (
    CAMERA_HEIGHT,
    CATEGORIES,
    SyntheticScene,
    camera_for_size,
    derive_seed,
    generate_scene,
    iter_scenes,
    kitti_layout_seed,
    write_kitti_layout,
)

H, W = 96, 320
SEEDS = range(20)
CALIB_COUNTS = {
    "P0": 12,
    "P1": 12,
    "P2": 12,
    "P3": 12,
    "R0_rect": 9,
    "Tr_velo_to_cam": 12,
    "Tr_imu_to_velo": 12,
    "Tr_cam_to_road": 12,
}


@pytest.fixture(scope="module")
def scenes() -> list[SyntheticScene]:
    return [generate_scene(seed, H, W) for seed in SEEDS]


def _assert_same(a: SyntheticScene, b: SyntheticScene) -> None:
    assert a.image.tobytes() == b.image.tobytes()
    assert np.array_equal(a.road, b.road)
    assert np.array_equal(a.valid, b.valid)
    assert a.boxes == b.boxes
    assert a.category == b.category


def _parse_calib(path: Path) -> dict[str, np.ndarray]:
    calib = {}
    for line in path.read_text().splitlines():
        key, values = line.split(":", 1)
        assert values.startswith(" ") and "  " not in values
        calib[key] = np.array([float(v) for v in values.split()])
    return calib


def test_same_seed_is_byte_identical() -> None:
    _assert_same(generate_scene(7, H, W), generate_scene(7, H, W))


def test_different_seeds_differ(scenes: list[SyntheticScene]) -> None:
    images = {scene.image.tobytes() for scene in scenes}
    roads = {scene.road.tobytes() for scene in scenes}
    assert len(images) == len(scenes)
    assert len(roads) == len(scenes)


def test_explicit_category_matches_seeded_choice() -> None:
    seeded = generate_scene(11, H, W)
    _assert_same(seeded, generate_scene(11, H, W, category=seeded.category))
    for category in CATEGORIES:
        assert generate_scene(11, H, W, category=category).category == category


def test_shapes_and_dtypes(scenes: list[SyntheticScene]) -> None:
    for scene in scenes:
        assert scene.image.shape == (H, W, 3) and scene.image.dtype == np.uint8
        assert scene.road.shape == (H, W) and scene.road.dtype == np.bool_
        assert scene.valid.shape == (H, W) and scene.valid.dtype == np.bool_
        assert scene.category in CATEGORIES
        assert scene.image.std() > 10.0  # not a flat image


def test_full_size_scene() -> None:
    scene = generate_scene(3)
    assert scene.image.shape == (375, 1242, 3) and scene.image.dtype == np.uint8
    assert scene.road.shape == scene.valid.shape == (375, 1242)
    assert 0.15 <= scene.road.mean() <= 0.45
    small = generate_scene(3, H, W)  # same metric layout at another resolution
    assert small.category == scene.category
    assert abs(small.road.mean() - scene.road.mean()) < 0.02


def test_road_fraction_in_range(scenes: list[SyntheticScene]) -> None:
    fractions = np.array([scene.road.mean() for scene in scenes])
    assert fractions.min() >= 0.15, fractions
    assert fractions.max() <= 0.45, fractions


def test_road_only_below_horizon_and_inside_valid(scenes: list[SyntheticScene]) -> None:
    cy = camera_for_size(H, W).cy
    for scene in scenes:
        assert not (scene.road & ~scene.valid).any()
        assert not scene.road[: int(np.floor(cy)) + 1].any()
        assert scene.valid.mean() > 0.8
        assert not scene.valid[0].any()  # the top band is ignored
        assert scene.road[-H // 10 :].mean() > 0.3  # road under the car


def test_each_category_appears(scenes: list[SyntheticScene]) -> None:
    assert {scene.category for scene in scenes} == set(CATEGORIES)


def test_boxes_inside_image_and_occlude_road(scenes: list[SyntheticScene]) -> None:
    num_boxes = 0
    for scene in scenes:
        for x0, y0, x1, y1 in scene.boxes:
            assert 0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H
            assert all(isinstance(c, int) for c in (x0, y0, x1, y1))
            assert scene.road[y0:y1, x0:x1].mean() < 0.2
            num_boxes += 1
        bottoms = [box[3] for box in scene.boxes]
        assert bottoms == sorted(bottoms)  # drawn far to near: nearer vehicles sit lower
    assert num_boxes >= 10


def test_vehicles_sit_on_the_road(scenes: list[SyntheticScene]) -> None:
    cy = camera_for_size(H, W).cy
    for scene in scenes:
        for x0, _, x1, y1 in scene.boxes:
            assert y1 > cy  # the bottom edge touches the ground below the horizon
            below = scene.road[min(y1, H - 1), x0:x1]
            row_has_road = scene.road[min(y1, H - 1)].any()
            assert y1 >= H or not row_has_road or below.any() or scene.road[y1 - 1].any()


def _lane_mark_fraction(scene: SyntheticScene, gap: int = 4, contrast: float = 30.0) -> float:
    """Fraction of nearer road pixels on a thin bright ridge (brighter than both pixels
    ``gap`` columns away by ``contrast`` grey levels): painted marks, not shadow edges."""
    cy = camera_for_size(H, W).cy
    grey = scene.image.astype(np.float32).mean(axis=2)
    ridge = np.zeros_like(scene.road)
    sides = np.maximum(grey[:, : -2 * gap], grey[:, 2 * gap :])
    ridge[:, gap:-gap] = grey[:, gap:-gap] > sides + contrast
    road = scene.road.copy()
    road[: int(cy + 0.25 * (H - cy))] = False  # depth <= ~24 m
    road[:, :gap] = road[:, -gap:] = False
    return float((ridge & road).sum() / max(road.sum(), 1))


@pytest.mark.parametrize("seed", range(8))
def test_lane_marks_only_on_marked_roads(seed: int) -> None:
    marked = [_lane_mark_fraction(generate_scene(seed, H, W, c)) for c in ("um", "umm")]
    unmarked = _lane_mark_fraction(generate_scene(seed, H, W, "uu"))
    assert min(marked) > 0.008, marked
    assert unmarked < 0.004, unmarked


def test_iter_scenes_is_seeded_per_index() -> None:
    first = list(iter_scenes(3, seed=5, height=H, width=W))
    again = list(iter_scenes(3, seed=5, height=H, width=W))
    other = list(iter_scenes(3, seed=6, height=H, width=W))
    assert len(first) == 3
    for a, b in zip(first, again, strict=True):
        _assert_same(a, b)
    _assert_same(first[1], generate_scene(derive_seed(5, 1), H, W))
    assert all(a.image.tobytes() != b.image.tobytes() for a, b in zip(first, other, strict=True))
    assert len({scene.image.tobytes() for scene in first}) == 3


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        generate_scene(0, H, W, category="rural")
    with pytest.raises(ValueError):
        generate_scene(-1, H, W)
    with pytest.raises(ValueError):
        generate_scene(0, 8, W)


def test_write_kitti_layout(tmp_path: Path) -> None:
    root = write_kitti_layout(
        tmp_path / "data_road", num_train=4, num_test=2, seed=3, height=H, width=W
    )
    assert root == tmp_path / "data_road"
    names = ["um_000000", "umm_000000", "uu_000000", "um_000001"]
    train = root / "training"
    assert sorted(p.name for p in (train / "image_2").iterdir()) == sorted(
        f"{n}.png" for n in names
    )
    assert sorted(p.name for p in (train / "gt_image_2").iterdir()) == sorted(
        f"{n.split('_')[0]}_road_{n.split('_')[1]}.png" for n in names
    )
    assert sorted(p.name for p in (train / "calib").iterdir()) == sorted(f"{n}.txt" for n in names)
    test = root / "testing"
    assert sorted(p.name for p in (test / "image_2").iterdir()) == [
        "um_000000.png",
        "umm_000000.png",
    ]
    assert sorted(p.name for p in (test / "calib").iterdir()) == ["um_000000.txt", "umm_000000.txt"]
    assert not (test / "gt_image_2").exists()
    assert not [p for p in root.rglob("*") if p.name.startswith(".")]  # no temp files left

    for i, name in enumerate(names):
        category, idx = name.split("_")
        scene = generate_scene(kitti_layout_seed(3, i, "training"), H, W, category)
        image = np.asarray(Image.open(train / "image_2" / f"{name}.png"))
        assert np.array_equal(image, scene.image)
        gt = np.asarray(Image.open(train / "gt_image_2" / f"{category}_road_{idx}.png"))
        assert gt.shape == (H, W, 3) and gt.dtype == np.uint8
        assert np.array_equal(gt[..., 0] > 0, scene.valid)
        assert np.array_equal(gt[..., 2] > 0, scene.road)
        assert not gt[..., 1].any()
        colours = {tuple(c) for c in np.unique(gt.reshape(-1, 3), axis=0).tolist()}
        assert colours <= {(255, 0, 255), (255, 0, 0), (0, 0, 0)}


def test_write_kitti_layout_without_calib(tmp_path: Path) -> None:
    root = write_kitti_layout(tmp_path, num_train=1, height=H, width=W, with_calib=False)
    assert (root / "training" / "image_2" / "um_000000.png").is_file()
    assert not (root / "training" / "calib").exists()
    assert not (root / "testing").exists()


def test_calib_file_format(tmp_path: Path) -> None:
    root = write_kitti_layout(tmp_path, num_train=1, height=H, width=W)
    path = root / "training" / "calib" / "um_000000.txt"
    for line in path.read_text().splitlines():
        for token in line.split(": ", 1)[1].split(" "):
            mantissa, exponent = token.split("e")
            assert len(mantissa.lstrip("-").split(".")[1]) == 12 and exponent[0] in "+-"
    calib = _parse_calib(path)
    assert list(calib) == list(CALIB_COUNTS)
    assert {key: len(values) for key, values in calib.items()} == CALIB_COUNTS
    p2 = calib["P2"].reshape(3, 4)
    cam = camera_for_size(H, W)
    assert p2[0, 0] == pytest.approx(721.5377 * W / 1242)
    assert p2[1, 1] == pytest.approx(p2[0, 0])
    assert (p2[0, 2], p2[1, 2]) == pytest.approx((W / 2, H * 0.46))
    assert (cam.f, cam.cx, cam.cy) == pytest.approx((p2[0, 0], p2[0, 2], p2[1, 2]))
    assert np.allclose(calib["R0_rect"], np.eye(3).ravel())
    cam_to_road = calib["Tr_cam_to_road"].reshape(3, 4)
    road_point = cam_to_road @ np.array([2.0, CAMERA_HEIGHT, 10.0, 1.0])
    assert road_point == pytest.approx([2.0, 0.0, 10.0])
    p3 = calib["P3"].reshape(3, 4)
    assert -p3[0, 3] / p3[0, 0] == pytest.approx(0.54)  # stereo baseline in metres


def _row_extent(scene: SyntheticScene, v: int) -> tuple[int, int] | None:
    """First/last road column of row ``v`` if the road segment lies fully inside the image."""
    cols = np.flatnonzero(scene.road[v])
    if cols.size == 0 or cols[0] == 0 or cols[-1] == scene.road.shape[1] - 1:
        return None
    if any(y0 <= v < y1 for _, y0, _, y1 in scene.boxes):
        return None
    return int(cols[0]), int(cols[-1])


def _road_widths(scene: SyntheticScene, f: float, cx: float, cy: float) -> list[float]:
    """Road width in metres at rows of known depth, back-projected onto the ground plane."""
    widths = []
    for z in (7.0, 10.0, 14.0, 20.0, 28.0, 40.0):
        v = int(round(f * CAMERA_HEIGHT / z + cy))
        z_row = f * CAMERA_HEIGHT / (v - cy)
        extent = _row_extent(scene, v)
        if extent is None:
            continue
        x_left, x_right = ((np.array(extent) - cx) * z_row / f).tolist()
        assert abs((x_left + x_right) / 2) < 10.0
        widths.append(x_right - x_left + z_row / f)  # + one pixel: inclusive extent
    return widths


def test_road_is_metric_on_the_calibrated_ground_plane(tmp_path: Path) -> None:
    height, width = 120, 400
    root = write_kitti_layout(tmp_path, num_train=0, num_test=1, height=height, width=width)
    p2 = _parse_calib(root / "testing" / "calib" / "um_000000.txt")["P2"].reshape(3, 4)
    f, cx, cy = p2[0, 0], p2[0, 2], p2[1, 2]
    checked = 0
    for seed in range(10):
        widths = _road_widths(generate_scene(seed, height, width), f, cx, cy)
        if len(widths) < 2:
            continue
        checked += 1
        assert all(5.5 < w < 17.0 for w in widths), (seed, widths)
        assert max(widths) / min(widths) < 1.15, (seed, widths)
    assert checked >= 5, "too few scenes with the whole road in view at two rows"

"""Tests of the data layer: KITTI Road reader, train/val split, folder dataset, joint transforms,
the Lightning data module, and (when present) the real KITTI Road development split."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import KITTI_ROOT
from PIL import Image

from semseg.config import Config, DataConfig
from semseg.data.datamodule import SegmentationDataModule, index_samples, make_split
from semseg.data.folder import index_folder, load_class_table, read_folder_sample
from semseg.data.kitti import (
    decode_gt,
    find_training_root,
    index_split,
    kitti_gt_name,
    read_gt_mask,
    read_sample,
    split_train_val,
)
from semseg.data.synthetic import write_kitti_layout
from semseg.data.transforms import apply, build_transforms
from semseg.errors import SemsegError

ROAD, NOT_ROAD, OUTSIDE, ROAD_OUTSIDE = (255, 0, 255), (255, 0, 0), (0, 0, 0), (0, 0, 255)
REAL_KITTI = KITTI_ROOT


pytestmark = pytest.mark.usefixtures("single_thread")


def save_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(array)).save(path)
    return path


def independent_decode(rgb: np.ndarray) -> np.ndarray:
    """Devkit semantics written out colour by colour: road 1, not road 0, else ignore."""
    out = np.full(rgb.shape[:2], 255, dtype=np.uint8)
    out[(rgb == ROAD).all(axis=2)] = 1
    out[(rgb == NOT_ROAD).all(axis=2)] = 0
    return out


# ----------------------------------------------------------------------------- KITTI reader


@pytest.fixture(scope="module")
def kitti_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("kitti") / "data_road"
    return write_kitti_layout(root, num_train=6, height=60, width=200)


@pytest.fixture
def kitti_copy(kitti_layout: Path, tmp_path: Path) -> Path:
    """A private copy of the layout that a test may damage."""
    return Path(shutil.copytree(kitti_layout, tmp_path / "data_road"))


def test_index_split_finds_samples_with_gt_and_calib(kitti_layout: Path) -> None:
    samples = index_split(kitti_layout)
    assert len(samples) == 6
    assert sorted(s.name for s in samples) == sorted(
        f"{cat}_{i:06d}" for cat in ("um", "umm", "uu") for i in range(2)
    )
    for sample in samples:
        assert sample.category == sample.name.split("_")[0]
        assert sample.image_path == kitti_layout / "training" / "image_2" / f"{sample.name}.png"
        cat, idx = sample.name.split("_")
        assert sample.target_path == (
            kitti_layout / "training" / "gt_image_2" / f"{cat}_road_{idx}.png"
        )
        assert sample.target_path.is_file()
        assert sample.calib_path == kitti_layout / "training" / "calib" / f"{sample.name}.txt"
        assert sample.calib_path.is_file()
    # categories filter, and the folder above data_road is accepted too
    only_uu = index_split(kitti_layout.parent, categories=["uu"])
    assert [s.name for s in only_uu] == ["uu_000000", "uu_000001"]
    assert find_training_root(kitti_layout.parent) == kitti_layout


def test_read_sample_matches_gt_colours(kitti_layout: Path) -> None:
    seen = set()
    for sample in index_split(kitti_layout):
        image, mask = read_sample(sample)
        assert image.shape == (60, 200, 3) and image.dtype == np.uint8
        assert mask.shape == (60, 200) and mask.dtype == np.uint8
        np.testing.assert_array_equal(image, np.asarray(Image.open(sample.image_path)))
        gt = np.asarray(Image.open(sample.target_path).convert("RGB"))
        assert set(np.unique(mask)) <= {0, 1, 255}
        np.testing.assert_array_equal(mask, independent_decode(gt))
        seen |= set(np.unique(mask).tolist())
    assert seen == {0, 1, 255}  # the synthetic scenes have road, verge and an ignored band


def test_decode_gt_devkit_colours() -> None:
    rgb = np.array([[ROAD, NOT_ROAD], [OUTSIDE, ROAD_OUTSIDE]], dtype=np.uint8)
    np.testing.assert_array_equal(decode_gt(rgb), [[1, 0], [255, 255]])
    big = np.tile(rgb, (3, 5, 1))
    np.testing.assert_array_equal(decode_gt(big), np.tile([[1, 0], [255, 255]], (3, 5)))
    with pytest.raises(SemsegError, match="RGB"):
        decode_gt(np.zeros((4, 4), dtype=np.uint8))


def test_unknown_gt_colour_names_the_file(tmp_path: Path) -> None:
    rgb = np.zeros((6, 8, 3), dtype=np.uint8)
    rgb[:3] = ROAD
    rgb[4, 5] = (10, 20, 30)
    path = save_png(tmp_path / "um_road_000007.png", rgb)
    with pytest.raises(SemsegError, match=r"um_road_000007\.png.*\(10, 20, 30\)"):
        read_gt_mask(path)


def test_gt_size_mismatch_is_semseg_error(kitti_copy: Path) -> None:
    sample = next(s for s in index_split(kitti_copy) if s.name == "umm_000001")
    gt = np.asarray(Image.open(sample.target_path).convert("RGB"))
    save_png(sample.target_path, gt[:50, :190])
    with pytest.raises(SemsegError, match=r"umm_road_000001\.png.*190x50.*200x60"):
        read_sample(sample)


def test_missing_gt_needs_skip_bad(kitti_copy: Path) -> None:
    (kitti_copy / "training" / "gt_image_2" / "uu_road_000001.png").unlink()
    with pytest.raises(SemsegError, match="--skip-bad") as error:
        index_split(kitti_copy)
    assert "uu_000001.png" in str(error.value)
    samples = index_split(kitti_copy, skip_missing=True)
    assert len(samples) == 5
    assert "uu_000001" not in {s.name for s in samples}


def test_missing_root_is_semseg_error(tmp_path: Path) -> None:
    with pytest.raises(SemsegError, match="not found"):
        index_split(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SemsegError, match="training/image_2"):
        index_split(tmp_path / "empty")


def test_kitti_gt_name() -> None:
    assert kitti_gt_name("um_000012") == "um_road_000012"
    assert kitti_gt_name("umm_000003", task="lane") == "umm_lane_000003"
    assert kitti_gt_name("frame7") == "frame7_road"


# ------------------------------------------------------------------------------------ split


def names_by_category() -> dict[str, list[str]]:
    return {
        "um": [f"um_{i:06d}" for i in range(10)],
        "umm": [f"umm_{i:06d}" for i in range(10)],
        "uu": [f"uu_{i:06d}" for i in range(5)],
    }


def test_split_train_val_deterministic_stratified_partition() -> None:
    names = names_by_category()
    split = split_train_val(names, 0.2, seed=0)
    # same inputs (even in another order) -> same split
    shuffled = {cat: list(reversed(items)) for cat, items in reversed(list(names.items()))}
    assert split_train_val(shuffled, 0.2, seed=0) == split
    assert split_train_val(names, 0.2, seed=0) == split
    train, val = set(split["train"]), set(split["val"])
    everything = {n for items in names.values() for n in items}
    assert not train & val
    assert train | val == everything
    assert len(split["train"]) == len(train) and len(split["val"]) == len(val)
    # stratified: round(fraction * n) of every category
    for category, expected in (("um", 2), ("umm", 2), ("uu", 1)):
        assert sum(n.split("_")[0] == category for n in val) == expected
    other = split_train_val(names, 0.2, seed=1)
    assert other["val"] != split["val"]
    assert len(other["val"]) == len(val)


def test_split_train_val_too_few_images() -> None:
    with pytest.raises(SemsegError, match="too few"):
        split_train_val({"um": ["um_000000"], "uu": ["uu_000000"]}, 0.2, seed=0)


# --------------------------------------------------------------------------- folder dataset


def make_folder(root: Path, masks: dict[str, np.ndarray], extra_images: tuple[str, ...] = ()):
    rng = np.random.default_rng(0)
    for name, mask in masks.items():
        save_png(
            root / "images" / f"{name}.png",
            rng.integers(0, 256, mask.shape[:2] + (3,), dtype=np.uint8),
        )
        save_png(root / "masks" / f"{name}.png", mask)
    for name in extra_images:
        save_png(root / "images" / f"{name}.png", np.zeros((12, 16, 3), dtype=np.uint8))
    return root


def test_folder_index_masks(tmp_path: Path) -> None:
    mask = np.zeros((12, 16), dtype=np.uint8)
    mask[4:8] = 1
    mask[8:] = 2
    mask[0, :3] = 255
    root = make_folder(tmp_path / "ds", {"a": mask, "b": np.ones((12, 16), np.uint8)})
    samples = index_folder(root)
    assert [s.name for s in samples] == ["a", "b"]
    assert all(s.category is None for s in samples)  # scored in the pooled "all" group only
    image, decoded = read_folder_sample(samples[0], num_classes=3, class_table=None)
    assert image.shape == (12, 16, 3)
    np.testing.assert_array_equal(decoded, mask)
    # a class index the model does not have
    with pytest.raises(SemsegError, match="class index 2"):
        read_folder_sample(samples[0], num_classes=2, class_table=None)


def test_folder_split_is_the_one_earlier_releases_made(tmp_path: Path) -> None:
    """Folder samples have no category; their split is seeded as before (stratum "all")."""
    names = [f"f{i}" for i in range(10)]
    root = make_folder(tmp_path / "ds", {name: np.zeros((12, 16), np.uint8) for name in names})
    split = make_split(index_folder(root), 0.2, seed=3)
    assert split == split_train_val({"all": names}, 0.2, 3)
    assert len(split["val"]) == 2


def test_folder_colour_masks_with_class_table(tmp_path: Path) -> None:
    table_path = tmp_path / "classes.yaml"
    table_path.write_text(
        "classes:\n"
        "  - {name: background, color: [255, 0, 0]}\n"
        "  - {name: road, color: [255, 0, 255]}\n"
        "  - {name: void, color: [0, 0, 0], ignore: true}\n"
        "  - {name: car, color: [0, 0, 142]}\n"
    )
    table = load_class_table(table_path)
    assert table.names == ["background", "road", "car"]
    rgb = np.zeros((6, 9, 3), dtype=np.uint8)  # void
    rgb[2:4] = (255, 0, 0)
    rgb[4:] = (255, 0, 255)
    rgb[4:, :3] = (0, 0, 142)
    root = make_folder(tmp_path / "ds", {"x": rgb})
    (sample,) = index_folder(root)
    _, mask = read_folder_sample(sample, num_classes=3, class_table=table)
    expected = np.full((6, 9), 255, dtype=np.uint8)
    expected[2:4] = 0
    expected[4:] = 1
    expected[4:, :3] = 2
    np.testing.assert_array_equal(mask, expected)
    rgb[0, 0] = (10, 20, 30)
    save_png(root / "masks" / "x.png", rgb)
    with pytest.raises(SemsegError, match=r"\(10, 20, 30\) is not in the class table"):
        read_folder_sample(sample, num_classes=3, class_table=table)
    # a colour mask without a class table is refused
    with pytest.raises(SemsegError, match="single-channel"):
        read_folder_sample(sample, num_classes=3, class_table=None)


def test_folder_bad_class_tables(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("classes:\n  - {name: road, color: [255, 0]}\n")
    with pytest.raises(SemsegError, match="bad entry"):
        load_class_table(bad)
    with pytest.raises(SemsegError, match="not found"):
        load_class_table(tmp_path / "none.yaml")


def test_folder_missing_mask(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "ds", {"a": np.zeros((12, 16), np.uint8)}, ("orphan",))
    with pytest.raises(SemsegError, match="--skip-bad") as error:
        index_folder(root)
    assert "orphan.png" in str(error.value)
    assert [s.name for s in index_folder(root, skip_missing=True)] == ["a"]
    with pytest.raises(SemsegError, match="not found"):
        index_folder(tmp_path / "missing")


# ------------------------------------------------------------------------------- transforms


def asymmetric_scene(height: int = 60, width: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """An image whose red channel is 255 exactly on the road (mask 1); ignored top band."""
    rows, cols = np.mgrid[0:height, 0:width]
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[(rows > 25) & (cols < 40 + rows)] = 1  # a wedge on the left: not mirror symmetric
    mask[30:45, 150:170] = 1
    mask[:8] = 255
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[..., 0] = np.where(mask == 1, 255, 0)
    image[..., 1] = 90
    image[..., 2] = 40
    return image, mask


def interior(mask: torch.Tensor, radius: int = 1) -> torch.Tensor:
    """Pixels whose (2r+1)^2 neighbourhood has one label, not the ignore index."""
    values = mask[None, None].float()
    size = 2 * radius + 1
    high = F.max_pool2d(values, size, stride=1, padding=radius)
    low = -F.max_pool2d(-values, size, stride=1, padding=radius)
    return ((high == low) & (mask != 255))[0, 0]


def check_aligned(image: torch.Tensor, mask: torch.Tensor) -> None:
    inside = interior(mask)
    assert inside.float().mean() > 0.3
    road_in_image = image[0] > 0.5
    assert torch.equal(road_in_image[inside], (mask == 1)[inside])


def test_eval_transform_types_ranges_nearest_masks() -> None:
    image, mask = asymmetric_scene()
    mask[50:, 180:] = 3  # another class index must survive resizing unchanged
    config = DataConfig(height=32, width=96, hflip=True, color_jitter=0.5, scale_crop=0.5)
    out_image, out_mask = apply(build_transforms(config, train=False), image, mask)
    assert out_image.dtype == torch.float32 and out_image.shape == (3, 32, 96)
    assert out_mask.dtype == torch.int64 and out_mask.shape == (32, 96)
    assert type(out_image) is torch.Tensor and type(out_mask) is torch.Tensor
    assert out_image.min() >= 0.0 and out_image.max() <= 1.0
    assert set(out_mask.unique().tolist()) == {0, 1, 3, 255}
    # evaluation transform is deterministic (no flip, no jitter, no crop)
    again_image, again_mask = apply(build_transforms(config, train=False), image, mask)
    assert torch.equal(out_image, again_image) and torch.equal(out_mask, again_mask)
    check_aligned(out_image, out_mask)
    # green channel 90/255 untouched by a resize
    torch.testing.assert_close(out_image[1], torch.full((32, 96), 90 / 255))


def test_hflip_flips_image_and_mask_together() -> None:
    image, mask = asymmetric_scene()
    plain = DataConfig(height=32, width=96, hflip=False, color_jitter=0.0, scale_crop=0.0)
    _, reference = apply(build_transforms(plain, train=True), image, mask)
    flipping = build_transforms(
        DataConfig(height=32, width=96, hflip=True, color_jitter=0.0, scale_crop=0.0), train=True
    )
    outcomes = []
    for seed in range(12):
        torch.manual_seed(seed)
        out_image, out_mask = apply(flipping, image, mask)
        if torch.equal(out_mask, reference):
            outcomes.append("same")
        else:
            assert torch.equal(out_mask, reference.flip(-1))
            outcomes.append("flipped")
        check_aligned(out_image, out_mask)
    assert {"same", "flipped"} == set(outcomes)


def test_scale_crop_keeps_image_and_mask_aligned() -> None:
    image, mask = asymmetric_scene()
    config = DataConfig(height=32, width=96, hflip=True, color_jitter=0.0, scale_crop=0.5)
    _, reference = apply(build_transforms(config, train=False), image, mask)
    transform = build_transforms(config, train=True)
    changed = 0
    for seed in range(10):
        torch.manual_seed(seed)
        out_image, out_mask = apply(transform, image, mask)
        assert out_image.shape == (3, 32, 96) and out_mask.shape == (32, 96)
        assert set(out_mask.unique().tolist()) <= {0, 1, 255}
        check_aligned(out_image, out_mask)
        changed += not torch.equal(out_mask, reference) and not torch.equal(
            out_mask, reference.flip(-1)
        )
    assert changed >= 5  # random crops really happen


def test_colour_jitter_changes_image_not_mask() -> None:
    image, mask = asymmetric_scene()
    plain = DataConfig(height=32, width=96, hflip=False, color_jitter=0.0, scale_crop=0.0)
    jitter = DataConfig(height=32, width=96, hflip=False, color_jitter=0.5, scale_crop=0.0)
    ref_image, ref_mask = apply(build_transforms(plain, train=True), image, mask)
    changed = 0
    for seed in range(5):
        torch.manual_seed(seed)
        out_image, out_mask = apply(build_transforms(jitter, train=True), image, mask)
        assert torch.equal(out_mask, ref_mask)
        assert out_image.min() >= 0.0 and out_image.max() <= 1.0
        changed += not torch.allclose(out_image, ref_image, atol=1e-3)
    assert changed == 5


# ------------------------------------------------------------------------------ data module


def test_datamodule_batches(kitti_layout: Path) -> None:
    config = Config()
    config.data.root = str(kitti_layout)
    config.data.height, config.data.width = 32, 96
    config.train.batch_size = 2
    samples = index_samples(config.data)
    split = make_split(samples, 0.34, seed=0)
    assert len(split["val"]) == 3 and len(split["train"]) == 3  # one val image per category
    module = SegmentationDataModule(config, samples, split)
    assert [s.name for s in module.val_samples] == split["val"]
    train_batches = list(module.train_dataloader())
    val_batches = list(module.val_dataloader())
    assert [len(b[0]) for b in train_batches] == [2, 1]
    assert [len(b[0]) for b in val_batches] == [2, 1]
    for images, masks in train_batches + val_batches:
        assert images.dtype == torch.float32 and images.shape[1:] == (3, 32, 96)
        assert masks.dtype == torch.int64 and masks.shape[1:] == (32, 96)
        assert set(masks.unique().tolist()) <= {0, 1, 255}
        assert images.min() >= 0.0 and images.max() <= 1.0
    # the validation batches are the resized full images, in split order
    val_image, val_mask = read_sample(module.val_samples[0])
    expected_image, expected_mask = apply(
        build_transforms(config.data, train=False), val_image, val_mask
    )
    assert torch.equal(val_batches[0][0][0], expected_image)
    assert torch.equal(val_batches[0][1][0], expected_mask)


# ----------------------------------------------------------------- real KITTI Road (optional)

needs_kitti = pytest.mark.skipif(
    not (REAL_KITTI / "training" / "image_2").is_dir(),
    reason=f"KITTI Road development split not found at {REAL_KITTI}",
)


def packed_colours(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    packed = (rgb[..., 0].astype(np.uint32) << 16) | (rgb[..., 1].astype(np.uint32) << 8)
    return np.unique(packed | rgb[..., 2], return_counts=True)


def pack(colour: tuple[int, int, int]) -> int:
    return colour[0] << 16 | colour[1] << 8 | colour[2]


@pytest.mark.kitti
@needs_kitti
def test_real_kitti_index_and_ground_truth() -> None:
    samples = index_split(REAL_KITTI)
    assert len(samples) == 105
    for category in ("um", "umm", "uu"):
        assert sum(s.category == category for s in samples) == 35
    devkit = {pack(c) for c in (ROAD, NOT_ROAD, OUTSIDE, ROAD_OUTSIDE)}
    for sample in samples:
        assert sample.target_path is not None
        with Image.open(sample.image_path) as image, Image.open(sample.target_path) as gt:
            assert image.size == gt.size, sample.name
            rgb = np.asarray(gt.convert("RGB"))
        # decode_gt accepts exactly the devkit colours: check every file's colour set (fast,
        # packed), and both classes are present
        colours, counts = packed_colours(rgb)
        assert set(colours.tolist()) <= devkit, sample.name
        present = dict(zip(colours.tolist(), counts.tolist(), strict=True))
        assert present.get(pack(ROAD), 0) > 0 and present.get(pack(NOT_ROAD), 0) > 0, sample.name
    # decode_gt itself (about 0.3 s per full image) on one image per category
    for category in ("um", "umm", "uu"):
        sample = next(s for s in samples if s.category == category)
        image, mask = read_sample(sample)
        rgb = np.asarray(Image.open(sample.target_path).convert("RGB"))
        np.testing.assert_array_equal(mask, independent_decode(rgb))
        assert (mask == 1).any() and (mask == 0).any()


@pytest.mark.kitti
@needs_kitti
def test_real_kitti_lane_task_and_default_split() -> None:
    lane_files = sorted((REAL_KITTI / "training" / "gt_image_2").glob("um_lane_*.png"))
    assert lane_files
    lane = index_split(REAL_KITTI, task="lane")
    assert [s.target_path for s in lane] == lane_files
    assert all(s.category == "um" for s in lane)
    assert [s.name + ".png" for s in lane] == [p.name.replace("_lane", "") for p in lane_files]

    samples = index_split(REAL_KITTI)
    data = DataConfig()
    split = make_split(samples, data.val_fraction, seed=Config().train.seed)
    assert len(split["val"]) + len(split["train"]) == 105
    for category in ("um", "umm", "uu"):
        val = [n for n in split["val"] if n.split("_")[0] == category]
        assert len(val) == 7  # round(0.2 * 35)


# ------------------------------------------------------------------------------ detect_kind


def test_detect_kind_by_layout(tmp_path: Path) -> None:
    from semseg.data.layout import detect_kind

    for sub in ("kitti/training/image_2", "nested/data_road/training/image_2"):
        (tmp_path / sub).mkdir(parents=True)
    for sub in ("flat/images", "flat/masks", "split/train/images", "split/train/masks"):
        (tmp_path / sub).mkdir(parents=True)
    (tmp_path / "split" / "classes.yaml").write_text("classes: []\n")
    (tmp_path / "empty").mkdir()
    assert detect_kind(tmp_path / "kitti") == "kitti"
    assert detect_kind(tmp_path / "nested") == "kitti"
    assert detect_kind(tmp_path / "flat") == "folder"
    assert detect_kind(tmp_path / "split") == "folder"
    with pytest.raises(SemsegError, match="data folder not found"):
        detect_kind(tmp_path / "missing")
    with pytest.raises(SemsegError, match=r"empty holds neither") as error:
        detect_kind(tmp_path / "empty")  # never guessed to be synthetic
    assert "\n" not in str(error.value)


def test_every_command_uses_the_same_kind_rule(tmp_path: Path) -> None:
    """train (--data), sweep (--data) and evaluate pick the kind by one rule."""
    from semseg.cli_train import build_train_config
    from semseg.evaluation import data_config_for
    from semseg.experiments.plan import base_config

    root = make_folder(tmp_path / "split" / "train", {"a": np.zeros((12, 16), np.uint8)}).parent
    kinds = {
        build_train_config(None, None, [], {"data.root": root}).data.kind,
        base_config(None, [], root).data.kind,
        data_config_for(root, None).kind,
    }
    assert kinds == {"folder"}


def test_split_folder_with_a_name_in_train_and_val_is_refused_up_front(tmp_path: Path):
    """A CamVid-style train/ + val/ folder whose splits share an image name: one clear error,
    before any run folder exists (a run's split lists names only)."""
    from conftest import assert_one_line_error, run_cli

    for split in ("train", "val"):
        save_png(tmp_path / "data" / split / "images" / "a.png", np.zeros((8, 8, 3), np.uint8))
        save_png(tmp_path / "data" / split / "masks" / "a.png", np.zeros((8, 8), np.uint8))
    result = run_cli("train", "--data", str(tmp_path / "data"), "--run-dir", str(tmp_path / "run"))
    assert result.returncode == 2
    assert_one_line_error(result, "occur in both train/ and val/", "first: a")
    assert not (tmp_path / "run").exists()

"""Tests of the Pascal VOC 2012 and Cityscapes readers on tiny fixtures in their layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from semseg.data.multiclass import (
    class_table_for,
    detect_kind,
    sample_reader,
    split_samples,
    train_val_samples,
)
from semseg.data.torchvision_sets import (
    cityscapes_class_table,
    cityscapes_samples,
    detect_layout,
    read_cityscapes_sample,
    read_voc_sample,
    voc_class_table,
    voc_colours,
    voc_root,
    voc_samples,
)
from semseg.errors import SemsegError


def save(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    if mode == "P":  # the VOC way: palette PNG whose indices are the class ids
        image = image.convert("P")
        image.putpalette(voc_colours(256).reshape(-1).tolist())
    image.save(path)


def make_voc(root: Path) -> Path:
    voc = root / "VOCdevkit" / "VOC2012"
    rng = np.random.default_rng(0)
    masks = {
        "2007_000032": np.array([[0, 1, 255], [15, 20, 0]], np.uint8),
        "2007_000039": np.array([[19, 19, 0], [0, 255, 255]], np.uint8),
    }
    for name, mask in masks.items():
        save(voc / "JPEGImages" / f"{name}.jpg", rng.integers(0, 256, (2, 3, 3), dtype=np.uint8))
        save(voc / "SegmentationClass" / f"{name}.png", mask, mode="P")
    lists = voc / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("2007_000032\n")
    (lists / "val.txt").write_text("2007_000039\n")
    (lists / "trainval.txt").write_text("2007_000032\n2007_000039\n")
    return root


def test_voc_reader(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "voc")
    # the folder above VOCdevkit, VOCdevkit itself and VOC2012 all work
    for given in (root, root / "VOCdevkit", root / "VOCdevkit" / "VOC2012"):
        assert voc_root(given) == root
        assert detect_layout(given) == "voc"
    assert [s.name for s in voc_samples(root, "trainval")] == ["2007_000032", "2007_000039"]
    (sample,) = voc_samples(root / "VOCdevkit", "train")
    image, mask = read_voc_sample(sample)
    assert image.shape == (2, 3, 3) and mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, [[0, 1, 255], [15, 20, 0]])
    table = voc_class_table()
    assert table.num_classes == 21 and table.names[15] == "person"
    assert table.colours[1].tolist() == [128, 0, 0] and table.colours[15].tolist() == [
        192,
        128,
        128,
    ]
    # a value that is neither a class nor void
    save(sample.target_path, np.array([[0, 21, 0], [0, 0, 0]], np.uint8), mode="P")
    with pytest.raises(SemsegError, match=r"2007_000032\.png: value 21 is not a VOC class"):
        read_voc_sample(sample)


def test_voc_bad_layouts(tmp_path: Path) -> None:
    with pytest.raises(SemsegError, match="no VOCdevkit/VOC2012"):
        voc_samples(tmp_path, "train")
    root = make_voc(tmp_path / "voc")
    with pytest.raises(SemsegError, match="must be one of train, val, trainval"):
        voc_samples(root, "test")
    (root / "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt").unlink()
    with pytest.raises(SemsegError, match=r"split 'val' not readable: .*val\.txt"):
        voc_samples(root, "val")
    (root / "VOCdevkit/VOC2012/JPEGImages/2007_000032.jpg").unlink()
    with pytest.raises(SemsegError, match=r"2007_000032\.jpg not found \(use --skip-bad"):
        voc_samples(root, "trainval")
    assert [s.name for s in voc_samples(root, "trainval", skip_missing=True)] == ["2007_000039"]


def make_cityscapes(root: Path) -> Path:
    # label ids: 7 road -> 0, 26 car -> 13, 0 unlabeled -> 255, 33 bicycle -> 18, 1 ego -> 255
    labels = {
        ("train", "aachen", "aachen_000001_000019"): np.array([[7, 26], [0, 33]], np.uint8),
        ("train", "aachen", "aachen_000000_000019"): np.array([[1, 7], [7, 7]], np.uint8),
        ("val", "lindau", "lindau_000000_000019"): np.array([[24, 11], [8, 23]], np.uint8),
    }
    for (split, city, stem), label in labels.items():
        image = root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"
        save(image, np.zeros((2, 2, 3), np.uint8))
        save(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", label)
    return root


def test_cityscapes_reader(tmp_path: Path) -> None:
    root = make_cityscapes(tmp_path / "cs")
    assert detect_layout(root) == "cityscapes" and detect_layout(tmp_path) is None
    train = cityscapes_samples(root, "train")
    assert [s.name for s in train] == ["aachen_000000_000019", "aachen_000001_000019"]
    _, mask = read_cityscapes_sample(train[1])
    np.testing.assert_array_equal(mask, [[0, 13], [255, 18]])
    (val,) = cityscapes_samples(root, "val")
    _, mask = read_cityscapes_sample(val)
    # person 24 -> 11, building 11 -> 2, sidewalk 8 -> 1, sky 23 -> 10
    np.testing.assert_array_equal(mask, [[11, 2], [1, 10]])
    table = cityscapes_class_table()
    assert table.num_classes == 19
    assert table.names[:3] == ["road", "sidewalk", "building"] and table.names[-1] == "bicycle"
    assert table.colours[0].tolist() == [128, 64, 128]
    with pytest.raises(SemsegError, match="split 'test' not found"):
        cityscapes_samples(root, "test")
    save(train[0].target_path, np.array([[40, 7], [7, 7]], np.uint8))
    with pytest.raises(SemsegError, match="value 40 is not a Cityscapes label id"):
        read_cityscapes_sample(train[0])


def test_one_entry_point_for_the_multiclass_kinds(tmp_path: Path) -> None:
    voc = make_voc(tmp_path / "voc")
    cs = make_cityscapes(tmp_path / "cs")
    assert detect_kind(voc) == "voc" and detect_kind(cs) == "cityscapes"
    assert detect_kind(tmp_path) is None
    assert class_table_for("voc", voc).num_classes == 21
    assert class_table_for("cityscapes", cs).names[0] == "road"
    splits = train_val_samples("cityscapes", cs)
    assert [len(splits["train"]), len(splits["val"])] == [2, 1]
    assert [s.name for s in split_samples("voc", voc, "val")] == ["2007_000039"]
    read = sample_reader("voc", 21, None)
    _, mask = read(split_samples("voc", voc, "val")[0])
    np.testing.assert_array_equal(mask, [[19, 19, 0], [0, 255, 255]])
    with pytest.raises(SemsegError, match="cityscapes has 19 classes, but model.num_classes=11"):
        sample_reader("cityscapes", 11, None)
    # a flat folder has no given validation split; a split folder does
    flat = tmp_path / "flat"
    save(flat / "images" / "a.png", np.zeros((2, 2, 3), np.uint8))
    save(flat / "masks" / "a.png", np.zeros((2, 2), np.uint8))
    assert detect_kind(flat) == "folder" and train_val_samples("folder", flat) is None
    assert class_table_for("folder", flat) is None
    with pytest.raises(SemsegError, match="--split val: .* has no train/, val/ or test/"):
        split_samples("folder", flat, "val")
    table = tmp_path / "t.yaml"
    table.write_text("classes:\n  - {name: a, color: [1, 2, 3]}\n")
    assert class_table_for("folder", flat, table).names == ["a"]

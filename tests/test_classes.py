"""Tests of class tables and the multi-class folder layouts (CamVid's train/ + val/)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import CAMVID_ROOT
from PIL import Image

from semseg.data.classes import (
    check_class_names,
    find_class_table,
    load_class_table,
)
from semseg.data.folder import (
    folder_splits,
    index_folder_split,
    is_split_layout,
    read_folder_sample,
    split_names,
)
from semseg.data.multiclass import class_table_for, detect_kind, sample_reader, train_val_samples
from semseg.errors import SemsegError

CAMVID = CAMVID_ROOT
needs_camvid = pytest.mark.skipif(
    not (CAMVID / "train" / "masks").is_dir(), reason="../shared/data/camvid absent"
)

TABLE = """classes:
  - {name: sky, color: [128, 128, 128]}
  - {name: void, color: [0, 0, 0], ignore: true}
  - {name: road, color: [128, 64, 128]}
  - {name: car, color: [64, 0, 128]}
"""


def write_table(path: Path, text: str = TABLE) -> Path:
    path.write_text(text)
    return path


def save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_table_order_ids_and_ignore(tmp_path: Path) -> None:
    table = load_class_table(write_table(tmp_path / "classes.yaml"))
    assert table.names == ["sky", "road", "car"] and table.num_classes == 3
    assert table.colours.tolist() == [[128, 128, 128], [128, 64, 128], [64, 0, 128]]
    assert table.ignore_colours.tolist() == [[0, 0, 0]]
    # positions 0 1 2 3 -> ids 0, ignore, 1, 2; 255 is ignored too
    values = np.array([[0, 1, 2, 3, 255]], dtype=np.uint8)
    np.testing.assert_array_equal(table.decode_index(values), [[0, 255, 1, 2, 255]])
    assert table.ignored_values() == [1, 255]
    with pytest.raises(SemsegError, match=r"m\.png: mask value 4 is neither a class nor ignored"):
        table.decode_index(np.array([[0, 4]], dtype=np.uint8), "m.png")


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ("  - {name: a, color: [1, 2, 3]}\n  - {name: a, color: [4, 5, 6]}\n", "name 'a'"),
        ("  - {name: a, color: [1, 2, 3]}\n  - {name: b, color: [1, 2, 3]}\n", r"\(1, 2, 3\)"),
        ("  - {name: a, color: [1, 2, 3], ignore: true}\n", "every entry"),
        ("  - {name: a, color: [1, 2, 300]}\n", "bad entry"),
        ("  - {name: a, color: [1, 2, 3], ignore: maybe}\n", "bad entry"),
        ("  - just a string\n", "bad entry"),
    ],
)
def test_bad_tables_name_file_and_value(tmp_path: Path, entries: str, message: str) -> None:
    path = write_table(tmp_path / "bad.yaml", "classes:\n" + entries)
    with pytest.raises(SemsegError, match=message) as error:
        load_class_table(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_bad_table_files(tmp_path: Path) -> None:
    with pytest.raises(SemsegError, match="not valid YAML"):
        load_class_table(write_table(tmp_path / "a.yaml", "classes: [\n"))
    with pytest.raises(SemsegError, match="non-empty 'classes'"):
        load_class_table(write_table(tmp_path / "b.yaml", "names: [a]\n"))
    assert find_class_table(tmp_path) is None
    write_table(tmp_path / "classes.yaml")
    assert find_class_table(tmp_path) == tmp_path / "classes.yaml"


def test_ignored_entry_is_ignored_in_colour_and_index_masks(tmp_path: Path) -> None:
    table = load_class_table(write_table(tmp_path / "classes.yaml"))
    root = tmp_path / "ds"
    save(root / "images" / "c.png", np.zeros((2, 3, 3), np.uint8))
    save(root / "images" / "i.png", np.zeros((2, 3, 3), np.uint8))
    colour = np.array(
        [[[128, 128, 128], [0, 0, 0], [128, 64, 128]], [[64, 0, 128], [0, 0, 0], [0, 0, 0]]],
        dtype=np.uint8,
    )
    save(root / "masks" / "c.png", colour)
    save(root / "masks" / "i.png", np.array([[0, 1, 2], [3, 1, 255]], np.uint8))
    samples = folder_splits(root)["all"]
    expected = [[0, 255, 1], [2, 255, 255]]
    for sample in samples:
        _, mask = read_folder_sample(sample, num_classes=3, class_table=table)
        np.testing.assert_array_equal(mask, expected)
        assert mask.dtype == np.uint8
    with pytest.raises(SemsegError, match="has 3 classes but model.num_classes=2"):
        read_folder_sample(samples[0], num_classes=2, class_table=table)
    # a palette-mode index mask reads as indices, not as its palette's colours
    paletted = Image.fromarray(np.array([[0, 1, 2], [3, 1, 255]], np.uint8)).convert("P")
    paletted.save(root / "masks" / "i.png")
    _, mask = read_folder_sample(samples[1], num_classes=3, class_table=table)
    np.testing.assert_array_equal(mask, expected)


def make_split_folder(root: Path, splits: dict[str, list[str]]) -> Path:
    for split, names in splits.items():
        for name in names:
            save(root / split / "images" / f"{name}.png", np.zeros((4, 5, 3), np.uint8))
            save(root / split / "masks" / f"{name}.png", np.full((4, 5), 1, np.uint8))
    write_table(root / "classes.yaml")
    return root


def test_split_layout(tmp_path: Path) -> None:
    root = make_split_folder(tmp_path / "ds", {"train": ["a", "b"], "val": ["c"]})
    assert is_split_layout(root) and not is_split_layout(root / "train")
    splits = folder_splits(root)
    assert list(splits) == ["train", "val"]
    assert [s.name for s in splits["train"]] == ["a", "b"]
    assert splits["val"][0].image_path == root / "val" / "images" / "c.png"
    assert split_names(splits) == {"train": ["a", "b"], "val": ["c"]}
    assert [s.name for s in index_folder_split(root, "val")] == ["c"]
    with pytest.raises(SemsegError, match=r"--split test: no .*test.* \(it has train, val\)"):
        index_folder_split(root, "test")
    with pytest.raises(SemsegError, match="--split must be one of train, val, test"):
        index_folder_split(root, "holdout")
    given = train_val_samples("folder", root)
    assert [s.name for s in given["val"]] == ["c"] and detect_kind(root) == "folder"
    table = class_table_for("folder", root)
    _, mask = sample_reader("folder", 3, table)(splits["val"][0])
    assert (mask == 255).all()  # value 1 is the ignored entry


def test_split_layout_name_clash_and_missing_val(tmp_path: Path) -> None:
    root = make_split_folder(tmp_path / "ds", {"train": ["a", "b"], "val": ["b"]})
    with pytest.raises(SemsegError, match="both train/ and val/, first: b"):
        split_names(folder_splits(root))
    only_train = make_split_folder(tmp_path / "t", {"train": ["a"]})
    with pytest.raises(SemsegError, match="needs train/ and val/"):
        split_names(folder_splits(only_train))
    with pytest.raises(SemsegError, match="needs both train/ and val/ folders for training"):
        train_val_samples("folder", only_train)
    with pytest.raises(SemsegError, match="not found"):
        folder_splits(tmp_path / "missing")


def test_checkpoint_class_names_must_match() -> None:
    check_class_names(["a", "b"], ["a", "b"], "run/best.ckpt")
    with pytest.raises(SemsegError, match=r"best\.ckpt: class 1 is 'c' in the checkpoint"):
        check_class_names(["a", "b"], ["a", "c"], "run/best.ckpt")
    with pytest.raises(SemsegError, match="trained with 3 classes but the data's class"):
        check_class_names(["a", "b"], ["a", "b", "c"], "run/best.ckpt")


@needs_camvid
def test_camvid_folder_reads_as_eleven_classes() -> None:
    table = load_class_table(find_class_table(CAMVID))
    assert table.num_classes == 11 and table.names[0] == "sky" and table.names[-1] == "bicyclist"
    assert table.ignored_values() == [11, 255]
    splits = folder_splits(CAMVID)
    assert {k: len(v) for k, v in splits.items()} == {"train": 367, "val": 101}
    assert len(split_names(splits)["val"]) == 101
    image, mask = read_folder_sample(splits["train"][0], 11, table)
    assert image.shape == (360, 480, 3) and mask.shape == (360, 480)
    raw = np.asarray(Image.open(splits["train"][0].target_path))
    np.testing.assert_array_equal(mask[raw < 11], raw[raw < 11])
    assert (mask[raw == 11] == 255).all() and set(np.unique(mask)) <= set(range(11)) | {255}

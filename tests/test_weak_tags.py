"""Image-level tags: derived from hand-made masks (min_frac, crops), read from users' CSV/JSON
files (and refused with one-line errors when bad), written back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import CAMVID_ROOT

from semseg.data.sample import Sample
from semseg.errors import SemsegError
from semseg.weak.tags import (
    Crop,
    TagRecord,
    crop_grid,
    derive_tags,
    image_tags,
    match_samples,
    parse_crop,
    present_classes,
    read_tags,
    tag_counts,
    tag_matrix,
    tags_of_mask,
    write_tags,
)

NAMES = ["sky", "road", "car"]
CAMVID = CAMVID_ROOT


def hand_mask() -> np.ndarray:
    """10x10: 50 sky, 45 road, 4 car, 1 ignored pixel (99 valid)."""
    mask = np.zeros((10, 10), dtype=np.uint8)
    mask[5:, :] = 1
    mask[9, 0:4] = 2
    mask[9, 4] = 255
    return mask


def test_present_classes_respects_min_frac_of_valid_pixels():
    mask = hand_mask()
    assert np.bincount(mask[mask != 255]).tolist() == [50, 45, 4]
    # car covers 4/99 = 4.04% of the valid pixels (the ignored pixel does not count)
    assert present_classes(mask, 3, min_frac=0.05) == [0, 1]
    assert present_classes(mask, 3, min_frac=0.04) == [0, 1, 2]
    assert present_classes(mask, 3, min_frac=0.46) == [0]  # road 45/99 = 45.5%
    assert present_classes(mask, 3, min_frac=0.0) == [0, 1, 2]
    assert present_classes(mask, 3) == [0, 1, 2]  # default 1%
    assert present_classes(np.full((3, 3), 255, np.uint8), 3) == []
    # a class absent from the mask is never present, even at min_frac 0
    assert present_classes(np.zeros((2, 2), np.uint8), 3, min_frac=0.0) == [0]


def test_present_classes_refuses_bad_input():
    with pytest.raises(SemsegError, match="min-frac"):
        present_classes(hand_mask(), 3, min_frac=1.5)
    with pytest.raises(SemsegError, match="mask value 3"):
        present_classes(np.full((2, 2), 3, np.uint8), 3)


def test_crop_grid_tiles_and_ends_at_the_border():
    assert crop_grid(4, 6, 2, 4) == [Crop(0, 0, 2, 4), Crop(0, 2, 2, 4), Crop(2, 0, 2, 4),
                                     Crop(2, 2, 2, 4)]  # fmt: skip
    assert crop_grid(4, 4, 2, 2) == [Crop(t, l, 2, 2) for t in (0, 2) for l in (0, 2)]  # noqa: E741
    assert crop_grid(5, 3, 5, 3) == [Crop(0, 0, 5, 3)]
    with pytest.raises(SemsegError, match="larger than the image"):
        crop_grid(4, 6, 8, 2)


def test_parse_crop():
    assert parse_crop("240x320") == (240, 320)
    assert parse_crop(" 2X4 ") == (2, 4)
    for bad in ("240", "0x3", "ax3", "2x3x4"):
        with pytest.raises(SemsegError, match="--crop"):
            parse_crop(bad)


def test_tags_per_crop_on_a_hand_made_mask():
    mask = np.array(
        [
            [0, 0, 0, 1],
            [0, 0, 1, 1],
            [2, 2, 255, 255],
            [2, 2, 255, 255],
        ],
        dtype=np.uint8,
    )
    records = tags_of_mask("img", mask, NAMES, min_frac=0.3, crop=(2, 2))
    # top right: sky 1 of 4 pixels (25% < 30%), road 3; bottom right: only ignored pixels
    assert [(r.crop.as_list(), r.classes) for r in records] == [
        ([0, 0, 2, 2], ("sky",)),
        ([0, 2, 2, 2], ("road",)),
        ([2, 0, 2, 2], ("car",)),
        ([2, 2, 2, 2], ()),
    ]
    whole = tags_of_mask("img", mask, NAMES, min_frac=0.3)
    assert whole == [TagRecord("img", ("sky", "car"))]  # sky 5/12, road 3/12 = 25%, car 4/12
    assert tags_of_mask("img", mask, NAMES, min_frac=0.25) == [
        TagRecord("img", ("sky", "road", "car"))
    ]


def test_derive_tags_over_samples():
    masks = {"a": hand_mask(), "b": np.full((10, 10), 2, np.uint8)}
    samples = [Sample(name, "all", Path(f"{name}.png")) for name in masks]
    records = derive_tags(samples, lambda s: masks[s.name], NAMES, min_frac=0.05)
    assert records == [TagRecord("a", ("sky", "road")), TagRecord("b", ("car",))]
    assert tag_counts(records, NAMES) == {"sky": 1, "road": 1, "car": 1}
    np.testing.assert_array_equal(tag_matrix(records, NAMES), [[1, 1, 0], [0, 0, 1]])


def test_image_tags_are_the_union_over_crops():
    records = [
        TagRecord("a", ("sky",), Crop(0, 0, 2, 2)),
        TagRecord("a.png", ("car",), Crop(0, 2, 2, 2)),
        TagRecord("b", ()),
    ]
    union = image_tags(records, NAMES)
    assert sorted(union) == ["a", "b"]
    np.testing.assert_array_equal(union["a"], [1, 0, 1])
    np.testing.assert_array_equal(union["b"], [0, 0, 0])


# --- readers and writers -----------------------------------------------------------------------


def test_read_csv_with_header_crops_comments_and_empty_tags(tmp_path):
    path = tmp_path / "tags.csv"
    path.write_text(
        "image,classes,top,left,height,width\n"
        "# a comment\n"
        "f001.png,car;sky,0,0,2,4\n"
        "\n"
        "f001,,0,2,2,4\n"
        "f002, road ,2,0,2,4\n"
    )
    records = read_tags(path, NAMES)
    assert records == [
        TagRecord("f001.png", ("sky", "car"), Crop(0, 0, 2, 4)),  # class-table order
        TagRecord("f001", (), Crop(0, 2, 2, 4)),
        TagRecord("f002", ("road",), Crop(2, 0, 2, 4)),
    ]
    assert records[0].name == "f001"


def test_read_json_mapping_and_records(tmp_path):
    mapping = tmp_path / "a.json"
    mapping.write_text(json.dumps({"x.jpg": ["road", "sky"], "y": []}))
    assert read_tags(mapping, NAMES) == [TagRecord("x.jpg", ("sky", "road")), TagRecord("y", ())]
    records = tmp_path / "b.json"
    records.write_text(
        json.dumps({"tags": [{"image": "x", "classes": ["car"], "crop": [1, 2, 3, 4]}]})
    )
    assert read_tags(records, NAMES) == [TagRecord("x", ("car",), Crop(1, 2, 3, 4))]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("u.csv", "a,sky;boat\n", r"u.csv:1: unknown class 'boat'"),
        ("u.json", '{"a": ["sky", "boat"]}', r"unknown class 'boat'"),
        ("row.csv", "a,sky\nb,sky,3\n", r"row.csv:2: expected 'image,class1;class2'"),
        ("noimg.csv", ",sky\n", r"noimg.csv:1: expected"),
        ("crop.csv", "a,sky,0,0,x,4\n", r"crop.csv:1: crop must be four integers"),
        ("neg.csv", "a,sky,-1,0,2,4\n", r"neg.csv:1: bad crop"),
        ("dup.csv", "a.png,sky\na,road\n", r"image 'a' is tagged twice"),
        ("bad.json", '{"a": ["sky"', r"bad.json: not valid JSON"),
        ("rec.json", '{"tags": [{"classes": ["sky"]}]}', r"entry 1: a record needs an 'image'"),
        ("cls.json", '{"tags": [{"image": "a", "classes": 3}]}', r"'classes' must be a list"),
        ("empty.csv", "image,classes\n", r"no tags in the file"),
        ("tags.txt", "a,sky\n", r"must be a .csv or .json"),
    ],
)
def test_bad_tag_files_are_one_line_errors(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(SemsegError, match=message) as error:
        read_tags(path, NAMES)
    assert "\n" not in str(error.value)


def test_missing_tags_file(tmp_path):
    with pytest.raises(SemsegError, match="tags file not found"):
        read_tags(tmp_path / "none.csv", NAMES)


def test_match_samples_names_a_missing_image(tmp_path):
    samples = [Sample("a", "all", tmp_path / "a.png"), Sample("b", "all", tmp_path / "b.png")]
    pairs = match_samples([TagRecord("b.png", ("sky",))], samples, "tags.csv")
    assert pairs == [(TagRecord("b.png", ("sky",)), samples[1])]
    with pytest.raises(SemsegError, match=r"tags.csv: image 'zz.png' is not among the 2 images"):
        match_samples([TagRecord("a", ()), TagRecord("zz.png", ("sky",))], samples, "tags.csv")


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_write_then_read_round_trip(tmp_path, suffix):
    records = [
        TagRecord("a", ("sky", "car"), Crop(0, 0, 2, 4)),
        TagRecord("a", (), Crop(0, 2, 2, 4)),
        TagRecord("b", ("road",), Crop(2, 2, 2, 4)),
    ]
    path = tmp_path / f"out{suffix}"
    write_tags(path, records, NAMES, meta={"min_frac": 0.01})
    assert read_tags(path, NAMES) == records
    plain = [TagRecord("a", ("sky",)), TagRecord("b", ())]
    write_tags(path, plain, NAMES)
    assert read_tags(path, NAMES) == plain
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically, nothing left behind
    with pytest.raises(SemsegError, match=r"--out .*\.txt"):
        write_tags(tmp_path / "out.txt", plain, NAMES)


@pytest.mark.skipif(
    not (CAMVID / "train" / "masks").is_dir(), reason="../shared/data/camvid absent"
)
def test_derive_tags_on_camvid_crops(tmp_path):
    from semseg.data.folder import read_mask
    from semseg.data.multiclass import class_table_for, split_samples

    table = class_table_for("folder", CAMVID)
    samples = split_samples("folder", CAMVID, "train")[:3]

    def read(sample: Sample) -> np.ndarray:
        return read_mask(sample.target_path, table.num_classes, table)

    whole = derive_tags(samples, read, table.names)
    crops = derive_tags(samples, read, table.names, crop=(180, 240))
    assert len(whole) == 3 and len(crops) == 12  # 360x480 frames: 2x2 crops each
    for sample in samples:
        mask = read(sample)
        union = {c for r in crops if r.name == sample.name for c in r.classes}
        # every class tagged in a crop occurs in the frame
        assert union <= {table.names[k] for k in present_classes(mask, table.num_classes, 0.0)}
    path = tmp_path / "camvid_tags.csv"
    write_tags(path, crops, table.names)
    assert read_tags(path, table.names) == crops

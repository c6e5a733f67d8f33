"""Box annotations: COCO JSON and Pascal VOC XML readers/writers, bad input, derived boxes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from semseg.data.classes import class_table_from_entries
from semseg.errors import SemsegError
from semseg.weak.boxes import (
    Box,
    ImageBoxes,
    read_boxes,
    read_coco,
    read_voc,
    write_coco,
    write_voc,
)

NAMES = ["background", "car", "person"]


def coco_file(tmp_path: Path, annotations: list[dict], images: list[dict] | None = None) -> Path:
    payload = {
        "images": images
        or [
            {"id": 1, "file_name": "train/images/a.png", "width": 100, "height": 50},
            {"id": 2, "file_name": "train/images/b.png", "width": 100, "height": 50},
        ],
        "categories": [{"id": 7, "name": "car"}, {"id": 9, "name": "person"}],
        "annotations": annotations,
    }
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps(payload))
    return path


def test_coco_reads_boxes_by_class_name_and_whole_pixels(tmp_path):
    path = coco_file(
        tmp_path,
        [
            {"image_id": 1, "category_id": 9, "bbox": [10, 5, 20, 30]},
            {"image_id": 1, "category_id": 7, "bbox": [0.5, 0, 99.5, 49.2]},
        ],
    )
    boxes = read_coco(path, NAMES, background=0, image_names=["a", "b"])
    assert set(boxes.images) == {"a", "b"}
    a = boxes.images["a"]
    assert (a.width, a.height) == (100, 50)
    # person -> training id 2 (matched by name, not by the file's category id 9)
    assert a.boxes[0] == Box(10, 5, 30, 35, 2)
    # fractional boxes widen to whole pixels: x 0.5 -> 0, y1 49.2 -> 50
    assert a.boxes[1] == Box(0, 0, 100, 50, 1)
    assert boxes.images["b"].boxes == ()  # listed without annotations: no objects
    assert boxes.skipped == {}


@pytest.mark.parametrize(
    ("bbox", "message"),
    [
        ([90, 10, 20, 10], "outside the 100x50 image"),
        ([-1, 10, 20, 10], "outside the 100x50 image"),
        ([10, 45, 5, 6], "outside the 100x50 image"),
        ([10, 10, 0, 5], "empty box"),
    ],
)
def test_coco_box_outside_the_image_is_an_error(tmp_path, bbox, message):
    path = coco_file(tmp_path, [{"image_id": 2, "category_id": 7, "bbox": bbox}])
    with pytest.raises(SemsegError, match=message) as error:
        read_coco(path, NAMES, background=0)
    assert "b.png" in str(error.value)


def test_coco_unknown_class_name_and_background_class_are_errors(tmp_path):
    path = coco_file(tmp_path, [{"image_id": 1, "category_id": 7, "bbox": [1, 1, 5, 5]}])
    with pytest.raises(SemsegError, match="unknown class name 'car'"):
        read_coco(path, ["background", "road"], background=0)
    with pytest.raises(SemsegError, match="'car' is the background class"):
        read_coco(path, ["car", "person"], background=0)


def test_coco_image_without_annotation_is_an_error(tmp_path):
    path = coco_file(tmp_path, [])
    with pytest.raises(
        SemsegError, match=r"1 image\(s\) have no annotation .*first: c.*--skip-bad"
    ):
        read_coco(path, NAMES, background=0, image_names=["a", "b", "c"])


def test_coco_skip_bad_skips_and_counts(tmp_path):
    path = coco_file(
        tmp_path,
        [
            {"image_id": 1, "category_id": 7, "bbox": [1, 1, 5, 5]},
            {"image_id": 2, "category_id": 7, "bbox": [90, 1, 50, 5]},  # outside
        ],
    )
    boxes = read_coco(path, NAMES, 0, image_names=["a", "b", "c", "d"], skip_bad=True)
    assert list(boxes.images) == ["a"]
    assert sorted(boxes.skipped) == ["b", "c", "d"]
    assert "outside" in boxes.skipped["b"]
    assert "no annotation" in boxes.skipped["c"]


def test_coco_malformed_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SemsegError, match="bad.json is not a COCO JSON file"):
        read_coco(bad, NAMES)
    bad.write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(SemsegError, match="'categories' list"):
        read_coco(bad, NAMES)
    path = coco_file(tmp_path, [{"image_id": 5, "category_id": 7, "bbox": [1, 1, 2, 2]}])
    with pytest.raises(SemsegError, match="image id 5, which is not in images"):
        read_coco(path, NAMES)
    with pytest.raises(SemsegError, match="box file not found"):
        read_boxes(tmp_path / "missing.json", NAMES)


def test_coco_round_trip(tmp_path):
    images = [
        ImageBoxes("a", 100, 50, (Box(1, 2, 30, 40, 1), Box(5, 5, 6, 6, 2)), "a.png"),
        ImageBoxes("b", 100, 50, (), "b.png"),
    ]
    write_coco(tmp_path / "out.json", images, NAMES, background=0)
    raw = json.loads((tmp_path / "out.json").read_text())
    assert [c["name"] for c in raw["categories"]] == ["car", "person"]
    assert raw["annotations"][0]["bbox"] == [1, 2, 29, 38]
    back = read_coco(tmp_path / "out.json", NAMES, background=0)
    assert back.images == {image.name: image for image in images}


VOC_XML = """<annotation>
  <filename>{name}.jpg</filename>
  <size><width>100</width><height>50</height><depth>3</depth></size>
  {objects}
</annotation>
"""
VOC_OBJECT = (
    "<object><name>{cls}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
    "<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
)


def voc_file(folder: Path, name: str, *objects: tuple[str, int, int, int, int]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    body = "".join(
        VOC_OBJECT.format(cls=c, x0=x0, y0=y0, x1=x1, y1=y1) for c, x0, y0, x1, y1 in objects
    )
    (folder / f"{name}.xml").write_text(VOC_XML.format(name=name, objects=body))


def test_voc_reads_one_based_inclusive_boxes(tmp_path):
    voc_file(tmp_path / "ann", "a", ("car", 1, 1, 100, 50), ("person", 11, 6, 30, 35))
    boxes = read_voc(tmp_path / "ann", NAMES, background=0, image_names=["a"])
    # VOC's xmin=1..xmax=100 covers pixels 0..99
    assert boxes.images["a"].boxes == (Box(0, 0, 100, 50, 1), Box(10, 5, 30, 35, 2))
    assert boxes.images["a"].file_name == "a.jpg"
    assert read_boxes(tmp_path / "ann", NAMES, 0).images == boxes.images


def test_voc_bad_files_and_skip_bad(tmp_path):
    folder = tmp_path / "ann"
    voc_file(folder, "good", ("car", 1, 1, 10, 10))
    voc_file(folder, "outside", ("car", 1, 1, 101, 10))
    voc_file(folder, "unknown", ("bus", 1, 1, 10, 10))
    with pytest.raises(SemsegError, match=r"outside.xml: box .* is outside the 100x50 image"):
        read_voc(folder, NAMES, 0, image_names=["good", "outside"])
    with pytest.raises(SemsegError, match="unknown.xml: unknown class name 'bus'"):
        read_voc(folder, NAMES, 0, image_names=["unknown"])
    with pytest.raises(SemsegError, match="image missing has no annotation file"):
        read_voc(folder, NAMES, 0, image_names=["good", "missing"])
    names = ["good", "outside", "unknown", "missing"]
    boxes = read_voc(folder, NAMES, 0, image_names=names, skip_bad=True)
    assert list(boxes.images) == ["good"]
    assert sorted(boxes.skipped) == ["missing", "outside", "unknown"]


def test_voc_round_trip(tmp_path):
    images = [ImageBoxes("a", 100, 50, (Box(0, 0, 100, 50, 1), Box(3, 4, 5, 6, 2)), "a.png")]
    write_voc(tmp_path / "ann", images, NAMES)
    assert read_voc(tmp_path / "ann", NAMES, 0).images == {"a": images[0]}


def test_unknown_box_file_kind(tmp_path):
    path = tmp_path / "boxes.txt"
    path.write_text("x")
    with pytest.raises(SemsegError, match="COCO .json file or a folder of Pascal VOC"):
        read_boxes(path, NAMES)


def test_class_table_background_marker():
    table = class_table_from_entries(
        [
            {"name": "void", "color": [0, 0, 0], "ignore": True},
            {"name": "not road", "color": [255, 0, 0], "background": True},
            {"name": "road", "color": [255, 0, 255]},
        ]
    )
    assert table.background == 0  # training id, ignored entries not counted
    plain = class_table_from_entries([{"name": "a", "color": [1, 1, 1]}])
    assert plain.background is None
    with pytest.raises(SemsegError, match="cannot be the background class"):
        class_table_from_entries(
            [
                {"name": "a", "color": [1, 1, 1], "background": True},
                {"name": "b", "color": [2, 2, 2], "background": True},
            ]
        )
    with pytest.raises(SemsegError, match="background: true"):
        class_table_from_entries([{"name": "a", "color": [1, 1, 1], "background": "yes"}])


# --- boxes derived from masks ---------------------------------------------------------------------


def test_derive_one_box_per_component_min_area_and_no_background_boxes():
    pytest.importorskip("cv2")
    from semseg.weak.derive import boxes_from_mask

    mask = np.zeros((20, 30), dtype=np.uint8)
    mask[2:6, 3:9] = 1  # class 1, component 1: 24 px
    mask[10:18, 20:28] = 1  # class 1, component 2: 64 px
    mask[12:14, 2:4] = 2  # class 2: 4 px (below min area 5)
    mask[0, 29] = 255  # ignored
    mask[15, 0] = 2  # diagonal touch counts as connected? no: separate 1 px component
    boxes = boxes_from_mask(mask, num_classes=3, background=0, min_area=5)
    assert sorted(boxes, key=lambda b: b.x0) == [Box(3, 2, 9, 6, 1), Box(20, 10, 28, 18, 1)]
    # with min area 1 the class-2 components appear; background 0 never gets a box
    boxes = boxes_from_mask(mask, num_classes=3, background=0, min_area=1)
    assert {b for b in boxes if b.label == 2} == {Box(2, 12, 4, 14, 2), Box(0, 15, 1, 16, 2)}
    assert all(b.label != 0 for b in boxes)
    # without a background class, class 0's component (everything else) gets a box too
    assert any(b.label == 0 for b in boxes_from_mask(mask, 3, None, 5))


def test_derive_joins_diagonal_neighbours():
    pytest.importorskip("cv2")
    from semseg.weak.derive import boxes_from_mask

    mask = np.zeros((5, 5), dtype=np.uint8)
    mask[1, 1] = mask[2, 2] = mask[3, 3] = 1
    assert boxes_from_mask(mask, 2, background=0) == [Box(1, 1, 4, 4, 1)]
    with pytest.raises(SemsegError, match="--min-area"):
        boxes_from_mask(mask, 2, 0, min_area=0)

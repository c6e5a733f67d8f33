"""The box jobs end to end on tiny hand-made datasets, and pseudo-label quality by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from semseg.errors import SemsegError
from semseg.weak.boxes import read_coco
from semseg.weak.jobs import derive_boxes, open_box_data, read_label_png, write_pseudo_labels
from semseg.weak.quality import pseudo_label_quality

pytest.importorskip("cv2")

TABLE = """classes:
  - {name: ground, color: [0, 0, 0], background: true}
  - {name: car, color: [255, 0, 0]}
  - {name: tree, color: [0, 255, 0]}
  - {name: void, color: [9, 9, 9], ignore: true}
"""


def save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def folder_dataset(root: Path) -> dict[str, np.ndarray]:
    """train/ and val/ with one image each; masks are table positions (3 = void)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.yaml").write_text(TABLE)
    masks = {}
    for split, name in (("train", "a"), ("val", "b")):
        mask = np.zeros((30, 40), dtype=np.uint8)
        mask[5:15, 5:20] = 1  # a car
        mask[20:28, 25:38] = 2  # a tree
        mask[0, :] = 3  # void row
        if name == "b":
            mask[2:4, 30:32] = 1  # a 4-pixel speck of car
        image = np.zeros((30, 40, 3), dtype=np.uint8)
        image[mask == 1] = (200, 30, 30)
        image[mask == 2] = (30, 200, 30)
        save(root / split / "images" / f"{name}.png", image)
        save(root / split / "masks" / f"{name}.png", mask)
        masks[name] = mask
    return masks


def test_derive_then_box_pseudo_labels_on_a_folder_dataset(tmp_path):
    folder_dataset(tmp_path / "data")
    summary = derive_boxes(tmp_path / "data", tmp_path / "boxes.json", min_area=5)
    assert summary == {
        "images": 2,
        "unlabelled": 0,
        "boxes": 4,
        "per_class": {"car": 2, "tree": 2},
        "out": str(tmp_path / "boxes.json"),
    }
    raw = json.loads((tmp_path / "boxes.json").read_text())
    assert [i["file_name"] for i in raw["images"]] == ["train/images/a.png", "val/images/b.png"]
    boxes = read_coco(tmp_path / "boxes.json", ["ground", "car", "tree"], background=0)
    assert sorted(b.coco_bbox() for b in boxes.images["a"].boxes) == [
        [5, 5, 15, 10],
        [25, 20, 13, 8],
    ]
    with_speck = derive_boxes(tmp_path / "data", tmp_path / "all.json", min_area=1)
    assert with_speck["per_class"] == {"car": 3, "tree": 2}

    result = write_pseudo_labels(
        tmp_path / "boxes.json", tmp_path / "data", "box", tmp_path / "out"
    )
    # the boxes are tight around rectangles: the box labels are the masks, void aside
    for name in ("a", "b"):
        labels = np.asarray(Image.open(tmp_path / "out" / f"{name}.png"))
        truth = folder_truth(tmp_path / "data", name)
        if name == "b":
            truth[2:4, 30:32] = 0  # the speck got no box: background
        known = truth != 255
        np.testing.assert_array_equal(labels[known], truth[known])
    assert result["images"] == 2 and result["skipped"] == 0
    quality = result["quality"]
    # only the speck (4 car pixels labelled ground) is wrong: car IoU = 300 / 304
    assert quality["per_class"]["car"]["iou"] == pytest.approx(100 * 300 / 304, abs=1e-3)
    assert quality["per_class"]["tree"]["iou"] == pytest.approx(100.0)
    assert quality["coverage"] == pytest.approx(100.0)
    assert json.loads((tmp_path / "out" / "quality.json").read_text()) == result


def folder_truth(root: Path, name: str) -> np.ndarray:
    data = open_box_data(root)
    sample = next(s for s in data.samples if s.name == name)
    return data.truth(sample)


def test_pseudo_labels_refuse_missing_annotations_and_wrong_sizes(tmp_path):
    folder_dataset(tmp_path / "data")
    derive_boxes(tmp_path / "data", tmp_path / "boxes.json", min_area=5)
    raw = json.loads((tmp_path / "boxes.json").read_text())
    raw["images"] = raw["images"][:1]
    raw["annotations"] = [a for a in raw["annotations"] if a["image_id"] == 1]
    (tmp_path / "one.json").write_text(json.dumps(raw))
    with pytest.raises(SemsegError, match=r"1 image\(s\) have no annotation .*first: b"):
        write_pseudo_labels(tmp_path / "one.json", tmp_path / "data", "box", tmp_path / "out")
    result = write_pseudo_labels(
        tmp_path / "one.json", tmp_path / "data", "box-i", tmp_path / "out", skip_bad=True
    )
    assert (result["images"], result["skipped"]) == (1, 1)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "quality.json"]
    raw["images"][0]["width"] = 41
    (tmp_path / "wide.json").write_text(json.dumps(raw))
    with pytest.raises(
        SemsegError, match=r"a.png: the boxes are for a 41x30 image but it is 40x30"
    ):
        write_pseudo_labels(
            tmp_path / "wide.json", tmp_path / "data", "box", tmp_path / "o2", skip_bad=True
        )
    with pytest.raises(SemsegError, match="--method"):
        write_pseudo_labels(tmp_path / "boxes.json", tmp_path / "data", "nope", tmp_path / "o3")


def test_folder_without_class_table_is_refused(tmp_path):
    folder_dataset(tmp_path / "data")
    (tmp_path / "data" / "classes.yaml").unlink()
    with pytest.raises(SemsegError, match="no class table"):
        derive_boxes(tmp_path / "data", tmp_path / "boxes.json")


def kitti_dataset(root: Path) -> None:
    """One KITTI image: road (magenta) in the lower half, not road (red) above, a black strip."""
    gt = np.zeros((40, 60, 3), dtype=np.uint8)
    gt[:, :] = (255, 0, 0)
    gt[25:, 10:50] = (255, 0, 255)
    gt[:, :2] = (0, 0, 0)  # outside the valid area
    image = np.full((40, 60, 3), 90, dtype=np.uint8)
    image[25:, 10:50] = 160
    save(root / "training" / "image_2" / "um_000001.png", image)
    save(root / "training" / "gt_image_2" / "um_road_000001.png", gt)


def test_kitti_road_boxes_and_road_quality(tmp_path):
    kitti_dataset(tmp_path / "kitti")
    summary = derive_boxes(tmp_path / "kitti", tmp_path / "boxes.json", min_area=10)
    assert summary["per_class"] == {"road": 1}  # "not road" is the background class
    boxes = read_coco(tmp_path / "boxes.json", ["not road", "road"], background=0)
    assert [b.coco_bbox() for b in boxes.images["um_000001"].boxes] == [[10, 25, 40, 15]]
    result = write_pseudo_labels(tmp_path / "boxes.json", tmp_path / "kitti", "box", tmp_path / "o")
    quality = result["quality"]
    assert quality["max_f"] == pytest.approx(100.0) and quality["road_iou"] == pytest.approx(100.0)


def test_quality_against_a_hand_calculation():
    truth = np.array([[0, 0, 1, 1], [0, 1, 1, 1], [255, 0, 0, 1]], dtype=np.uint8)
    pseudo = np.array([[0, 1, 1, 1], [255, 1, 0, 1], [1, 0, 255, 1]], dtype=np.uint8)
    result = pseudo_label_quality([(pseudo, truth)], ["not road", "road"], road_class=1)
    # pixels both label: 9 of the 11 labelled truth pixels
    assert result["coverage"] == pytest.approx(100 * 9 / 11)
    # road: TP = (0,2),(0,3),(1,1),(1,3),(2,3) = 5, FP = (0,1) = 1, FN = (1,2) = 1
    assert result["per_class"]["road"]["iou"] == pytest.approx(100 * 5 / 7)
    # not road: TP = (0,0),(2,1) = 2, FP = (1,2) = 1, FN = (0,1) = 1
    assert result["per_class"]["not road"]["iou"] == pytest.approx(100 * 2 / 4)
    assert result["miou"] == pytest.approx((100 * 5 / 7 + 50) / 2)
    precision = recall = 5 / 6
    assert result["max_f"] == pytest.approx(100 * 2 * precision * recall / (precision + recall))
    assert result["road_iou"] == pytest.approx(100 * 5 / 7)


def test_read_label_png(tmp_path):
    save(tmp_path / "a.png", np.array([[0, 1], [255, 2]], dtype=np.uint8))
    np.testing.assert_array_equal(read_label_png(tmp_path / "a.png", 3, (2, 2)), [[0, 1], [255, 2]])
    with pytest.raises(SemsegError, match="label 2 but there are 2 classes"):
        read_label_png(tmp_path / "a.png", 2, (2, 2))
    with pytest.raises(SemsegError, match="differs from its image 3x2"):
        read_label_png(tmp_path / "a.png", 3, (2, 3))

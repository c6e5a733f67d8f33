"""``semseg derive`` and ``semseg pseudo-labels`` as a user runs them, on a tiny hand-made folder
dataset (and a few KITTI Road images): the label PNGs against boxes drawn with numpy from the COCO
file, the quality numbers against a confusion count by hand, one-line errors for bad input.

The end-to-end runs are separate processes (``run_cli``); the bad-input cases that get past the
option parsing run the same ``semseg.cli.main`` in this process (``semseg`` fixture), which
spares each a few seconds of loading torch.
"""

from __future__ import annotations

import inspect
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import KITTI_ROOT, assert_one_line_error, needs_kitti, run_cli
from PIL import Image

from semseg.cli_weak import DEFAULT_MIN_AREA, Method, derive
from semseg.weak import derive as derive_module
from semseg.weak.pseudolabels import METHODS

pytest.importorskip("cv2")

# No background class (as CamVid): pixels outside every box are ignored. "void" is ignored.
TABLE = """classes:
  - {name: road, color: [128, 64, 128]}
  - {name: car, color: [64, 0, 128]}
  - {name: tree, color: [128, 128, 0]}
  - {name: void, color: [0, 0, 0], ignore: true}
"""
NAMES = ["road", "car", "tree"]
VOID = 3  # mask value of "void" (training id 255)
H, W = 24, 32


def save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def scene_masks() -> dict[str, np.ndarray]:
    """Two masks (table positions) whose boxes overlap other classes, so box labels err."""
    rows, cols = np.mgrid[0:H, 0:W]
    a = np.full((H, W), VOID, dtype=np.uint8)
    a[14:, :] = 0  # road: box [0, 14, 32, 10]
    a[(rows - 17) ** 2 + (cols - 9) ** 2 <= 16] = 1  # a round car on the road
    a[3:9, 20:27] = 2  # a tree: box [20, 3, 7, 6]
    a[20:22, 28:30] = 2  # a 4-pixel speck of tree on the road: no box with --min-area 5
    b = np.full((H, W), VOID, dtype=np.uint8)
    b[18:, 2:30] = 0
    b[(rows - 8) ** 2 + (cols - 10) ** 2 <= 25] = 2  # a round tree ...
    b[6:13, 12:22] = 1  # ... partly behind a car
    return {"a": a, "b": b}


def folder_dataset(root: Path) -> dict[str, np.ndarray]:
    """images/ + masks/ + classes.yaml; returns the ground truth (training ids, 255 = void)."""
    (root / "images").mkdir(parents=True)
    (root / "classes.yaml").write_text(TABLE)
    truths = {}
    for name, mask in scene_masks().items():
        image = np.full((H, W, 3), 40, dtype=np.uint8)
        for label in range(3):
            image[mask == label] = (60 + 60 * label, 200 - 50 * label, 90)
        save(root / "images" / f"{name}.png", image)
        save(root / "masks" / f"{name}.png", mask)
        truths[name] = np.where(mask == VOID, 255, mask).astype(np.uint8)
    return truths


@pytest.fixture(scope="module")
def derived(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """The dataset, the folder `semseg derive --to boxes` wrote, and the ground truth."""
    root = tmp_path_factory.mktemp("weak")
    truths = folder_dataset(root / "data")
    result = run_cli(
        "derive", "--to", "boxes", "--data", str(root / "data"), "--out", str(root / "boxes"),
        "--min-area", "5",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"derived 6 box(es) from 2 image(s) (road: 2, car: 2, tree: 2) -> {root}" in (
        result.stdout
    )
    return root / "data", root / "boxes", truths


@pytest.fixture
def semseg(capsys, monkeypatch):
    """``semseg.cli.main`` in this process: exit code, stdout and stderr as ``run_cli`` gives."""
    from semseg.cli import main

    def run(*args: str) -> subprocess.CompletedProcess:
        monkeypatch.setattr(sys, "argv", ["semseg", *args])
        with pytest.raises(SystemExit) as exit_info:
            main()
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(args, exit_info.value.code, captured.out, captured.err)

    return run


def read_coco_by_hand(path: Path) -> dict[str, list[tuple[int, int, int, int, str]]]:
    """{stem: [(x, y, w, h, class name), ...]} straight from the JSON."""
    raw = json.loads(path.read_text())
    categories = {c["id"]: c["name"] for c in raw["categories"]}
    stems = {i["id"]: Path(i["file_name"]).stem for i in raw["images"]}
    boxes: dict[str, list[tuple[int, int, int, int, str]]] = {s: [] for s in stems.values()}
    for entry in raw["annotations"]:
        x, y, w, h = entry["bbox"]
        boxes[stems[entry["image_id"]]].append((x, y, w, h, categories[entry["category_id"]]))
    return boxes


def test_derive_writes_the_tight_box_of_each_component(derived):
    _, out, _ = derived
    boxes = read_coco_by_hand(out / "boxes.json")
    assert sorted(boxes["a"]) == [(0, 14, 32, 10, "road"), (5, 13, 9, 9, "car"),
                                  (20, 3, 7, 6, "tree")]  # fmt: skip
    # b: the car hides the tree's right side but for rows 3..5 and 13, where the disc reaches
    # column 14 at most (row 5: (5 - 8)^2 + (14 - 10)^2 = 25)
    assert sorted(boxes["b"]) == [(2, 18, 28, 6, "road"), (5, 3, 10, 11, "tree"),
                                  (12, 6, 10, 7, "car")]  # fmt: skip
    raw = json.loads((out / "boxes.json").read_text())
    assert {c["name"] for c in raw["categories"]} == set(NAMES)


def draw_boxes(boxes: list[tuple[int, int, int, int, str]], inner: float | None) -> np.ndarray:
    """Pseudo-labels by hand: 255 everywhere (no background class), boxes largest first; with
    ``inner`` the box is ignored but for its centred rectangle with ``inner`` of its area."""
    labels = np.full((H, W), 255, dtype=np.uint8)
    for x, y, w, h, name in sorted(boxes, key=lambda b: -b[2] * b[3]):
        if inner is None:
            labels[y : y + h, x : x + w] = NAMES.index(name)
            continue
        labels[y : y + h, x : x + w] = 255
        iw, ih = round(w * math.sqrt(inner)), round(h * math.sqrt(inner))
        ix, iy = x + (w - iw) // 2, y + (h - ih) // 2
        labels[iy : iy + ih, ix : ix + iw] = NAMES.index(name)
    return labels


def confusion_scores(pairs: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, object]:
    """mIoU, per-class IoU and coverage counted pixel by pixel where both label."""
    tp, fp, fn = np.zeros(3), np.zeros(3), np.zeros(3)
    labelled = both_count = 0
    for pseudo, truth in pairs:
        for p, t in zip(pseudo.ravel(), truth.ravel(), strict=True):
            if t == 255:
                continue
            labelled += 1
            if p == 255:
                continue
            both_count += 1
            if p == t:
                tp[t] += 1
            else:
                fp[p] += 1
                fn[t] += 1
    present = (tp + fp + fn) > 0
    iou = [100 * tp[c] / (tp[c] + fp[c] + fn[c]) if present[c] else None for c in range(3)]
    return {
        "iou": dict(zip(NAMES, iou, strict=True)),
        "miou": float(np.mean([v for v in iou if v is not None])),
        "coverage": 100 * both_count / labelled,
    }


@pytest.mark.parametrize("method", ["box", "box-i"])
def test_pseudo_labels_match_boxes_drawn_by_hand(derived, tmp_path, method):
    data, boxes_dir, truths = derived
    out = tmp_path / "labels"
    result = run_cli(
        "pseudo-labels", "--boxes", str(boxes_dir / "boxes.json"), "--data", str(data),
        "--method", method, "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png", "quality.json", "quality.md"]
    boxes = read_coco_by_hand(boxes_dir / "boxes.json")
    pairs = []
    for name, truth in truths.items():
        labels = np.asarray(Image.open(out / f"{name}.png"))
        expected = draw_boxes(boxes[name], inner=None if method == "box" else 0.2)
        np.testing.assert_array_equal(labels, expected)
        pairs.append((labels, truth))
    if method == "box-i":  # one inner box by hand: road of a, 32x10 -> 14x4 at (9, 17), its
        # columns 9..13 under the smaller car box [5, 13, 9, 9] (ignored but for its inner 4x4)
        labels_a = np.asarray(Image.open(out / "a.png"))
        assert (labels_a[17:21, 14:23] == 0).all() and (labels_a[14:24, :5] == 255).all()
        assert (labels_a[14:17, 14:] == 255).all() and (labels_a[21:, 14:] == 255).all()
        assert (labels_a[17:21, 23:] == 255).all() and (labels_a[15:19, 7:11] == 1).all()
    expected_scores = confusion_scores(pairs)
    quality = json.loads((out / "quality.json").read_text())
    assert (quality["method"], quality["images"], quality["skipped"]) == (method, 2, 0)
    scores = quality["quality"]
    assert scores["miou"] == pytest.approx(expected_scores["miou"], abs=1e-3)
    assert scores["coverage"] == pytest.approx(expected_scores["coverage"], abs=1e-3)
    for name, iou in expected_scores["iou"].items():
        assert scores["per_class"][name]["iou"] == pytest.approx(iou, abs=1e-3)
    if method == "box":  # the boxes overlap other classes: the labels are not the truth
        assert 50 < scores["miou"] < 100 and scores["coverage"] > 90
    assert f"{expected_scores['miou']:.2f}" in result.stdout  # the printed table
    assert "pseudo-label quality" in result.stdout and "per class" in result.stdout
    markdown = (out / "quality.md").read_text()
    assert f"| {expected_scores['miou']:.2f} |" in markdown and "| car |" in markdown
    assert f"wrote 2 pseudo-label(s) ({method}) to {out}" in result.stdout


def test_pascal_voc_boxes_give_the_same_labels(derived, tmp_path, semseg):
    from semseg.weak.boxes import read_coco, write_voc

    data, boxes_dir, _ = derived
    box_set = read_coco(boxes_dir / "boxes.json", NAMES)
    write_voc(tmp_path / "voc", list(box_set.images.values()), NAMES)
    out = tmp_path / "labels"
    result = semseg(
        "pseudo-labels", "--boxes", str(tmp_path / "voc"), "--data", str(data),
        "--method", "box", "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    boxes = read_coco_by_hand(boxes_dir / "boxes.json")
    for name in ("a", "b"):
        labels = np.asarray(Image.open(out / f"{name}.png"))
        np.testing.assert_array_equal(labels, draw_boxes(boxes[name], inner=None))


def edited_boxes(boxes_dir: Path, path: Path, edit) -> Path:
    raw = json.loads((boxes_dir / "boxes.json").read_text())
    edit(raw)
    path.write_text(json.dumps(raw))
    return path


def test_bad_box_files_give_one_line_errors(derived, tmp_path, semseg):
    data, boxes_dir, _ = derived

    def pseudo(boxes: Path, *extra: str):
        return semseg(
            "pseudo-labels", "--boxes", str(boxes), "--data", str(data), "--method", "box",
            "--out", str(tmp_path / "out"), *extra,
        )  # fmt: skip

    def rename_car(raw):
        next(c for c in raw["categories"] if c["name"] == "car")["name"] = "bus"

    unknown = edited_boxes(boxes_dir, tmp_path / "unknown.json", rename_car)
    assert_one_line_error(pseudo(unknown), "unknown class name 'bus'", "road, car, tree")

    def push_out(raw):
        raw["annotations"][0]["bbox"] = [28, 20, 10, 10]

    outside = edited_boxes(boxes_dir, tmp_path / "outside.json", push_out)
    assert_one_line_error(pseudo(outside), "[28, 20, 10, 10]", "outside the 32x24 image")
    assert not (tmp_path / "out").exists()


def test_an_image_without_annotation_is_an_error_or_skipped(derived, tmp_path, semseg):
    data, boxes_dir, _ = derived
    more = tmp_path / "data"
    shutil.copytree(data, more)
    save(more / "images" / "c.png", np.zeros((H, W, 3), dtype=np.uint8))  # no mask, no boxes
    args = ["pseudo-labels", "--boxes", str(boxes_dir / "boxes.json"), "--data", str(more),
            "--method", "box", "--out", str(tmp_path / "out")]  # fmt: skip
    assert_one_line_error(semseg(*args), "1 image(s) have no annotation", "first: c", "--skip-bad")
    result = semseg(*args, "--skip-bad")
    assert result.returncode == 0, result.stderr
    assert "warning: skipped 1 image(s) without a usable annotation" in result.stderr
    assert "c has no annotation" in result.stderr
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["a.png", "b.png"]
    quality = json.loads((tmp_path / "out" / "quality.json").read_text())
    assert (quality["images"], quality["skipped"]) == (2, 1)
    assert "2 image(s) labelled, 1 skipped" in (tmp_path / "out" / "quality.md").read_text()


def test_usage_errors_are_one_line_with_exit_2(derived, tmp_path, semseg):
    data, boxes_dir, _ = derived
    boxes = str(boxes_dir / "boxes.json")
    out = str(tmp_path / "out")
    missing = run_cli("pseudo-labels", "--boxes", boxes, "--method", "box", "--out", out)
    assert missing.returncode == 2
    assert_one_line_error(missing, "--data")
    method = run_cli(
        "pseudo-labels", "--boxes", boxes, "--data", str(data), "--method", "snake", "--out", out
    )
    assert method.returncode == 2
    assert_one_line_error(method, "--method", "snake", "box-i")
    target = run_cli("derive", "--to", "polygons", "--data", str(data), "--out", out)
    assert target.returncode == 2
    assert_one_line_error(target, "--to", "polygons")
    no_data = semseg("derive", "--to", "boxes", "--data", str(tmp_path / "nope"), "--out", out)
    assert no_data.returncode == 2
    assert_one_line_error(no_data, "data folder not found")
    assert not Path(out).exists()


def test_the_weak_extra_is_named_when_missing(derived, tmp_path, monkeypatch):
    """GrabCut and derive need OpenCV: without it, one line with the install command; the box
    methods do not need it."""
    data, boxes_dir, _ = derived
    fake = tmp_path / "no_cv2"
    (fake / "cv2").mkdir(parents=True)
    (fake / "cv2" / "__init__.py").write_text("raise ImportError('no cv2 here')\n")
    monkeypatch.setenv("PYTHONPATH", f"{fake}:{Path(__file__).parents[1] / 'src'}")
    args = ["--boxes", str(boxes_dir / "boxes.json"), "--data", str(data)]
    grabcut = run_cli("pseudo-labels", *args, "--method", "grabcut", "--out", str(tmp_path / "g"))
    assert_one_line_error(grabcut, "needs OpenCV", 'pip install -e ".[weak]"')
    assert not (tmp_path / "g").exists()
    derive_run = run_cli("derive", "--to", "boxes", "--data", str(data), "--out", str(tmp_path))
    assert_one_line_error(derive_run, 'pip install -e ".[weak]"')
    box = run_cli("pseudo-labels", *args, "--method", "box", "--out", str(tmp_path / "b"))
    assert box.returncode == 0, box.stderr


def test_choices_follow_the_library():
    assert tuple(str(m) for m in Method if m is not Method.cam) == METHODS
    default = inspect.signature(derive).parameters["min_area"].default
    assert default == derive_module.DEFAULT_MIN_AREA == DEFAULT_MIN_AREA


@needs_kitti
def test_kitti_road_box_pseudo_labels(tmp_path, semseg):
    """Three real KITTI Road images (symlinked): boxes from the road masks, box pseudo-labels
    (outside the boxes: "not road"), scored with MaxF and IoU of road."""
    source = KITTI_ROOT / "training"
    gts = sorted((source / "gt_image_2").glob("u*_road_*.png"))[:3]
    assert gts, source
    for gt in gts:
        stem = gt.stem.replace("_road_", "_")
        for folder, name in (("image_2", f"{stem}.png"), ("gt_image_2", gt.name)):
            (tmp_path / "kitti" / "training" / folder).mkdir(parents=True, exist_ok=True)
            (tmp_path / "kitti" / "training" / folder / name).symlink_to(source / folder / name)
    derived = semseg(
        "derive", "--to", "boxes", "--data", str(tmp_path / "kitti"), "--out", str(tmp_path / "b")
    )
    assert derived.returncode == 0, derived.stderr
    assert "from 3 image(s) (road: " in derived.stdout
    out = tmp_path / "labels"
    result = semseg(
        "pseudo-labels", "--boxes", str(tmp_path / "b" / "boxes.json"),
        "--data", str(tmp_path / "kitti"), "--method", "box", "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    boxes = read_coco_by_hand(tmp_path / "b" / "boxes.json")
    tp = fp = fn = 0
    for gt in gts:
        stem = gt.stem.replace("_road_", "_")
        labels = np.asarray(Image.open(out / f"{stem}.png"))
        expected = np.zeros_like(labels)  # "not road" is the background class
        for x, y, w, h, name in boxes[stem]:
            assert name == "road"
            expected[y : y + h, x : x + w] = 1
        np.testing.assert_array_equal(labels, expected)
        truth = np.asarray(Image.open(gt).convert("RGB"))
        valid, road = truth[..., 0] > 0, truth[..., 2] > 0  # the devkit's reading
        tp += int((valid & road & (labels == 1)).sum())
        fp += int((valid & ~road & (labels == 1)).sum())
        fn += int((valid & road & (labels == 0)).sum())
    scores = json.loads((out / "quality.json").read_text())["quality"]
    assert scores["road_iou"] == pytest.approx(100 * tp / (tp + fp + fn), abs=1e-3)
    assert scores["max_f"] == pytest.approx(100 * 2 * tp / (2 * tp + fp + fn), abs=1e-3)
    assert "MaxF" in result.stdout and f"{scores['max_f']:.2f}" in result.stdout

"""Training from boxes: ``train --labels`` (pseudo-labels instead of masks), recursive rounds
(``--rounds``) and BoxSup (``--supervision boxsup``) on tiny synthetic road scenes.

The labels the training sees are checked against the PNGs, the loss against a cross-entropy
counted by hand over the labelled pixels, a round's label reset against the rules written out
here with numpy, and the rounds' and BoxSup's run folders for what they must keep.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, tiny_checkpoint, tiny_config
from PIL import Image

from semseg.data.datamodule import SegmentationDataModule, data_split, index_samples
from semseg.data.kitti import read_gt_mask
from semseg.errors import SemsegError

pytest.importorskip("cv2")
pytest.importorskip("skimage")

SIZE = (60, 200)  # the synthetic scenes' H, W


@pytest.fixture(scope="module")
def road(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Synthetic KITTI Road scenes, their boxes (derived from the masks) and box pseudo-labels."""
    from semseg.data.synthetic import write_kitti_layout
    from semseg.weak.jobs import derive_boxes, write_pseudo_labels

    root = tmp_path_factory.mktemp("boxes")
    data = write_kitti_layout(root / "data", num_train=12, seed=0, height=SIZE[0], width=SIZE[1])
    derive_boxes(data, root / "boxes.json", min_area=20)
    write_pseudo_labels(root / "boxes.json", data, "box", root / "labels")
    return {"data": data, "boxes": root / "boxes.json", "labels": root / "labels", "root": root}


def road_config(out: Path, data: Path, **train: object):
    config = tiny_config(out, **train)
    config.data.kind, config.data.root = "kitti", str(data)
    config.data.synthetic_train = 12
    config.train.overlay_samples = 0
    return config


def sparse_labels(folder: Path, names: list[str]) -> dict[str, np.ndarray]:
    """Label PNGs that ignore every pixel but a few rows; returns them by name."""
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for index, name in enumerate(names):
        labels = np.full(SIZE, 255, dtype=np.uint8)
        labels[40 + index % 5, :] = 1
        labels[5, 10:30] = 0
        Image.fromarray(labels).save(folder / f"{name}.png")
        written[name] = labels
    return written


def test_labels_replace_the_training_masks_and_validation_keeps_the_truth(road, tmp_path):
    config = road_config(tmp_path, road["data"])
    samples = index_samples(config.data)
    split = data_split(config.data, samples, config.train.seed)
    written = sparse_labels(tmp_path / "labels", split["train"])
    config.data.labels = str(tmp_path / "labels")
    datamodule = SegmentationDataModule(config, samples, split)
    for index, sample in enumerate(datamodule.train_set.samples):
        np.testing.assert_array_equal(datamodule.train_set.load(index)[1], written[sample.name])
    for index, sample in enumerate(datamodule.val_set.samples):
        truth = read_gt_mask(sample.target_path)
        np.testing.assert_array_equal(datamodule.val_set.load(index)[1], truth)


def test_ignored_pixels_do_not_count_in_the_loss():
    from semseg.tasks.segmentation import SegmentationTask

    torch.manual_seed(0)
    task = SegmentationTask(num_classes=2, model_options={"width_mult": 0.125}, loss="ce")
    logits = torch.randn(2, 2, 4, 5)
    target = torch.full((2, 4, 5), 255, dtype=torch.long)
    target[0, 1, 2], target[1, 3, 0], target[1, 0, 4] = 1, 0, 1
    by_hand = []
    for n, y, x in ((0, 1, 2), (1, 3, 0), (1, 0, 4)):
        scores = logits[n, :, y, x].tolist()
        log_sum = float(np.log(np.exp(scores).sum()))
        by_hand.append(log_sum - scores[int(target[n, y, x])])
    assert float(task.loss(logits, target)) == pytest.approx(np.mean(by_hand), rel=1e-6)
    changed = logits.clone()  # new scores at the ignored pixels only: the same loss
    ignored = (target == 255).unsqueeze(1).expand_as(logits)
    changed[ignored] = torch.randn(int(ignored.sum())) * 5
    assert float(task.loss(changed, target)) == pytest.approx(float(task.loss(logits, target)))


def test_train_with_labels_records_them(road, tmp_path):
    from semseg.runs import RunDir
    from semseg.training import train

    config = road_config(tmp_path, road["data"], epochs=1)
    config.data.labels = str(road["labels"])
    run = RunDir(train(config))
    saved = run.read_config()
    assert saved.data.labels == str(road["labels"].resolve())
    assert run.best.is_file() and run.is_finished()


@pytest.fixture
def semseg(capsys, monkeypatch):
    """``semseg.cli.main`` in this process: exit code, stdout and stderr."""
    from semseg.cli import main

    def run(*args: str) -> subprocess.CompletedProcess:
        monkeypatch.setattr(sys, "argv", ["semseg", *args])
        with pytest.raises(SystemExit) as exit_info:
            main()
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(args, exit_info.value.code, captured.out, captured.err)

    return run


def first_training_image(data: Path) -> str:
    config = road_config(Path("."), data)
    return data_split(config.data, index_samples(config.data), config.train.seed)["train"][0]


def bad_labels(road: dict[str, Path], folder: Path, how: str) -> Path:
    """A copy of the box pseudo-labels with none there, or the first training image's label
    resized or out of range."""
    folder.mkdir()
    for png in sorted(road["labels"].glob("*.png")):
        (folder / png.name).write_bytes(png.read_bytes())
    first = folder / f"{first_training_image(road['data'])}.png"
    if how == "missing":
        for png in folder.glob("*.png"):
            png.unlink()
    elif how == "size":
        Image.fromarray(np.zeros((10, 10), np.uint8)).save(first)
    elif how == "value":
        Image.fromarray(np.full(SIZE, 7, np.uint8)).save(first)
    return folder


@pytest.mark.parametrize(
    ("how", "fragments"),
    [
        ("absent", ("--labels", "label folder not found")),
        ("missing", ("has no label", "--skip-bad")),
        ("size", ("size 10x10 differs from its image 200x60",)),
        ("value", ("label 7 but there are 2 classes",)),
    ],
)
def test_bad_label_folders_give_one_line_errors(road, tmp_path, semseg, how, fragments):
    labels = tmp_path / "nowhere" if how == "absent" else bad_labels(road, tmp_path / "l", how)
    result = semseg(
        "train", "--data", str(road["data"]), "--labels", str(labels), "--epochs", "1",
        "--run-dir", str(tmp_path / "run"), "--set", "model.width_mult=0.125",
        "--height", "32", "--width", "96",
    )  # fmt: skip
    assert_one_line_error(result, *fragments)


def test_skip_bad_skips_training_images_without_labels(road, tmp_path):
    config = road_config(tmp_path, road["data"])
    samples = index_samples(config.data)
    split = data_split(config.data, samples, config.train.seed)
    folder = bad_labels(road, tmp_path / "l", "size")  # the first training image's is resized
    for name in split["train"][1:3]:
        (folder / f"{name}.png").unlink()
    config.data.labels, config.data.skip_bad = str(folder), True
    datamodule = SegmentationDataModule(config, samples, split)
    assert [s.name for s in datamodule.train_set.samples] == split["train"][3:]
    assert len(datamodule.skipped) == 3 and "differs from its image" in datamodule.skipped[0]
    assert [s.name for s in datamodule.val_set.samples] == split["val"]
    config.data.skip_bad = False
    with pytest.raises(SemsegError, match="differs from its image"):
        SegmentationDataModule(config, samples, split)


def reset_by_hand(prediction, boxes, initial, background):
    """Simple Does It's reset, written out: outside every box (or in a box of another class)
    background; a box whose class covers < 50% of it gets its initial labels back."""
    labels = np.full(prediction.shape, background, dtype=np.uint8)
    for y in range(prediction.shape[0]):
        for x in range(prediction.shape[1]):
            value = prediction[y, x]
            inside = any(b.label == value and b.y0 <= y < b.y1 and b.x0 <= x < b.x1 for b in boxes)
            if value == background or inside:
                labels[y, x] = value
    result = labels.copy()
    for box in sorted(boxes, key=lambda b: -b.area):
        share = (labels[box.slices] == box.label).mean()
        source = initial if share < 0.5 else labels
        result[box.slices] = source[box.slices]
    return result


def test_a_round_resets_the_prediction_by_the_boxes(road, tmp_path):
    from semseg.box_training import BoxSupChooser, boxed_training_images, write_next_labels
    from semseg.inference.checkpoint import load_model
    from semseg.inference.predictor import Predictor

    assert BoxSupChooser  # imported: the module loads
    config = road_config(tmp_path, road["data"])
    config.data.boxes = str(road["boxes"])
    names = [p.stem for p in sorted((road["data"] / "training" / "image_2").glob("*.png"))][:3]
    images = boxed_training_images(config, names)
    first = tmp_path / "round_0"
    initial = {}
    for index, sample in enumerate(images.samples):  # round 0: a hand-made striped labelling
        labels = np.full(SIZE, 255, np.uint8)
        labels[:, index::3] = 1
        labels[:5] = 0
        (first / "labels").mkdir(parents=True, exist_ok=True)
        Image.fromarray(labels).save(first / "labels" / f"{sample.name}.png")
        initial[sample.name] = labels
    checkpoint = tiny_checkpoint(tmp_path / "net.ckpt")
    write_next_labels(config, images, checkpoint, first, tmp_path / "round_1")
    predictor = Predictor(load_model(checkpoint))
    resets = 0
    for sample in images.samples:
        image = np.asarray(Image.open(sample.image_path).convert("RGB"))
        prediction = next(iter(predictor.predict([image]))).argmax(axis=0).astype(np.uint8)
        boxes = images.boxes[sample.name].boxes
        expected = reset_by_hand(prediction, boxes, initial[sample.name], background=0)
        got = np.asarray(Image.open(tmp_path / "round_1" / "labels" / f"{sample.name}.png"))
        np.testing.assert_array_equal(got, expected)
        resets += int((got != prediction).any())
    assert resets  # the case exercises the reset
    quality = json.loads((tmp_path / "round_1" / "quality.json").read_text())
    assert quality["round"] == 1 and quality["images"] == 3 and "max_f" in quality["quality"]


def test_two_rounds_keep_both_rounds_labels_and_quality(road, tmp_path):
    from semseg.runs import RunDir
    from semseg.training import train

    config = road_config(tmp_path, road["data"], epochs=1, rounds=2, round_method="box-i")
    config.data.boxes = str(road["boxes"])
    run = RunDir(train(config))
    train_names = run.read_split()["train"]
    for index in (0, 1):
        folder = run / "rounds" / f"round_{index}"
        assert sorted(p.stem for p in (folder / "labels").glob("*.png")) == sorted(train_names)
        quality = json.loads((folder / "quality.json").read_text())
        assert quality["round"] == index and quality["images"] == len(train_names)
        assert 0 <= quality["quality"]["miou"] <= 100
    assert json.loads((run / "rounds/round_0/quality.json").read_text())["source"] == "box-i"
    assert RunDir(run / "rounds" / "round_0" / "run").is_finished()
    assert not (run / "rounds" / "round_1" / "run").exists()  # the last round is the run
    assert run.best.is_file() and run.is_finished()
    assert run.read_config().data.labels == str((run / "rounds/round_1/labels").resolve())
    assert run.read_config().train.rounds == 2
    summary = json.loads((run / "rounds" / "summary.json").read_text())
    assert [row["round"] for row in summary] == [0, 1]
    assert summary[1]["val"] == run.read_eval()["groups"]["all"]
    assert summary[0]["label_quality"]["miou"] == pytest.approx(
        json.loads((run / "rounds/round_0/quality.json").read_text())["quality"]["miou"]
    )

    # killed while writing round 1's labels: --resume keeps round 0 and redoes the rest
    first_run = RunDir(run / "rounds" / "round_0" / "run")
    stamp = first_run.best.stat().st_mtime_ns
    label = next((run / "rounds" / "round_1" / "labels").glob("*.png"))
    before = label.read_bytes()
    label.unlink()
    (run / "rounds" / "round_1" / "quality.json").unlink()
    shutil.rmtree(run.checkpoints)
    run.eval_val.unlink()
    assert RunDir(train(run.read_config(), resume=run.path)) == run
    assert first_run.best.stat().st_mtime_ns == stamp
    assert label.read_bytes() == before and run.is_finished()


def test_boxsup_logs_the_chosen_labels_quality_per_epoch(road, tmp_path):
    from semseg.runs import RunDir
    from semseg.training import train

    config = road_config(tmp_path, road["data"], epochs=2, supervision="boxsup")
    config.data.boxes = str(road["boxes"])
    run = RunDir(train(config))
    train_names = run.read_split()["train"]
    lines = [line for line in run.log.read_text().splitlines() if "boxsup labels" in line]
    assert [line.split("epoch ")[1].split()[0] for line in lines] == ["1/2", "2/2"]
    assert all("label MaxF" in line for line in lines)
    for epoch in (1, 2):
        summary = json.loads((run / "boxsup" / f"epoch_{epoch:03d}.json").read_text())
        assert summary["epoch"] == epoch and summary["images"] == len(train_names)
        assert summary["quality"]["images"] == len(train_names)
        assert f"{summary['quality']['miou']:.2f}" in lines[epoch - 1]
    assert sorted(p.stem for p in (run / "boxsup" / "candidates").glob("*.npz")) == sorted(
        train_names
    )
    assert run.best.is_file() and run.is_finished()


def test_candidates_cache_round_trip(tmp_path):
    from semseg.box_training import PackedCandidates, read_candidates, write_candidates
    from semseg.weak.boxes import Box
    from semseg.weak.segments import Candidate

    rng = np.random.default_rng(0)
    boxes = [Box(2, 3, 9, 8, 1), Box(0, 0, 3, 3, 1)]
    found = [
        [Candidate(rng.random((5, 7)) < 0.5, Box(1, 2, 9, 8, -1)) for _ in range(3)],
        [],
    ]
    packed = [PackedCandidates.pack(c, b) for c, b in zip(found, boxes, strict=True)]
    write_candidates(tmp_path / "a.npz", packed)
    read = read_candidates(tmp_path / "a.npz", boxes)
    assert read is not None and [len(p.unpack()) for p in read] == [3, 0]
    for original, again in zip(found[0], read[0].unpack(), strict=True):
        np.testing.assert_array_equal(again.mask, original.mask)
        assert again.tight == original.tight
    assert read_candidates(tmp_path / "a.npz", boxes[:1]) is None  # other boxes: recomputed


def test_labels_on_multiclass_data(tmp_path):
    from conftest import write_multiclass_folder

    root = write_multiclass_folder(tmp_path / "data")
    config = tiny_config(tmp_path)
    config.data.kind, config.data.root, config.model.num_classes = "folder", str(root), 3
    labels = tmp_path / "labels"
    labels.mkdir()
    expected = {}
    for index, image in enumerate(sorted((root / "train" / "images").glob("*.png"))):
        values = np.full((32, 48), 255, np.uint8)
        values[:, index % 4] = index % 3
        Image.fromarray(values).save(labels / image.name)
        expected[image.stem] = values
    config.data.labels = str(labels)
    samples = index_samples(config.data)
    datamodule = SegmentationDataModule(config, samples, data_split(config.data, samples, 0))
    assert sorted(s.name for s in datamodule.train_set.samples) == sorted(expected)
    for index, sample in enumerate(datamodule.train_set.samples):
        np.testing.assert_array_equal(datamodule.train_set.load(index)[1], expected[sample.name])
    assert (datamodule.val_set.load(0)[1] == 255).sum() == 2 * 48  # the truth's void rows
    Image.fromarray(np.full((32, 48), 3, np.uint8)).save(labels / "train_000.png")
    with pytest.raises(SemsegError, match="label 3 but there are 3 classes"):
        SegmentationDataModule(config, samples, data_split(config.data, samples, 0))


def test_rounds_and_boxsup_need_boxes(road, tmp_path, semseg):
    common = ("train", "--data", str(road["data"]), "--run-dir", str(tmp_path / "r"))
    assert_one_line_error(semseg(*common, "--rounds", "2"), "--rounds needs --boxes")
    assert_one_line_error(
        semseg(*common, "--supervision", "boxsup"), "--supervision boxsup needs --boxes"
    )
    boxes = ("--boxes", str(road["boxes"]), "--supervision", "boxsup")
    assert_one_line_error(
        semseg(*common, *boxes, "--set", "data.num_workers=2"), "set data.num_workers=0"
    )
    assert_one_line_error(semseg(*common, *boxes, "--rounds", "2"), "drop --rounds and --labels")
    assert not (tmp_path / "r").exists()

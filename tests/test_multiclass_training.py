"""Multi-class data end to end: a CamVid-style folder trains with its own validation split and
class table, is validated and selected by mIoU, and is scored by one confusion matrix at full
resolution (checked against an independent count)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    CAMVID_ROOT,
    assert_one_line_error,
    run_cli,
    tiny_config,
    write_multiclass_folder,
)
from PIL import Image

from semseg.config import IGNORE_INDEX
from semseg.evaluation import evaluate_checkpoint
from semseg.models import list_models
from semseg.training import train

pytestmark = pytest.mark.usefixtures("single_thread")
NAMES = ["sky", "road", "car"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_multiclass_folder(tmp_path_factory.mktemp("mc") / "data")


@pytest.fixture(scope="module")
def run(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = tiny_config(tmp_path_factory.mktemp("runs"), epochs=3, lr=3e-3)
    config.data.kind, config.data.root = "folder", str(data)
    config.data.height, config.data.width = 32, 48
    config.model.num_classes = 2  # the default: the class table decides
    config.train.overlay_samples = 2
    return train(config)


def test_the_class_table_and_the_given_split_shape_the_run(run: Path, data: Path):
    saved = json.loads((run / "split.json").read_text())
    assert saved["train"] == [f"train_{i:03d}" for i in range(8)]
    assert saved["val"] == [f"val_{i:03d}" for i in range(4)]  # the given val/, not re-split
    checkpoint = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    hparams = checkpoint["hyper_parameters"]
    assert hparams["num_classes"] == 3
    assert hparams["class_names"] == NAMES
    assert hparams["class_colours"] == [[70, 130, 180], [128, 64, 128], [0, 0, 142]]
    monitors = [
        state["monitor"]
        for key, state in checkpoint["callbacks"].items()
        if key.startswith("ModelCheckpoint") and state.get("monitor")
    ]
    assert monitors == ["val_miou"]


def test_validation_logs_miou_not_road_scores(run: Path):
    header, *rows = (run / "metrics.csv").read_text().splitlines()
    columns = header.split(",")
    last = dict(zip(columns, rows[-1].split(","), strict=True))
    assert last["val_maxf"] == "" and last["val_iou"] == ""
    assert 0.0 <= float(last["val_miou"]) <= 100.0
    assert "val_miou" in (run / "train.log").read_text()


def test_eval_val_is_the_multiclass_report_with_figures(run: Path):
    results = json.loads((run / "eval_val.json").read_text())
    assert results["task"] == "multiclass" and results["split"] == "val"
    assert results["classes"] == NAMES and results["num_images"] == 4
    overall = results["groups"]["all"]
    assert {"miou", "mean_acc", "global_acc", "fwiou"} <= set(overall)
    assert overall["global_acc"] > 50.0  # three colour-coded classes are easy
    for name in ("confusion.png", "class_iou.png", "multiclass.md"):
        assert (run / "eval_val" / name).is_file()
    overlays = sorted((run / "overlays").glob("*.png"))
    assert len(overlays) == 2
    width = np.asarray(Image.open(overlays[0])).shape[1]
    assert width > 48  # the legend is beside the image


def independent_confusion(checkpoint: Path, data: Path, split: str) -> np.ndarray:
    """Predictions through the public API and a plain bincount, void left out."""
    from semseg import Segmenter

    segmenter = Segmenter.from_checkpoint(checkpoint)
    matrix = np.zeros((3, 3), np.int64)
    for image_path in sorted((data / split / "images").glob("*.png")):
        image = np.asarray(Image.open(image_path).convert("RGB"))
        truth = np.asarray(Image.open(data / split / "masks" / image_path.name)).astype(np.int64)
        labels = segmenter.predict(image).labels
        keep = truth != 3
        matrix += np.bincount(truth[keep] * 3 + labels[keep], minlength=9).reshape(3, 3)
    return matrix


def test_evaluate_split_val_matches_an_independent_count(run: Path, data: Path, tmp_path: Path):
    checkpoint = run / "checkpoints" / "best.ckpt"
    out = tmp_path / "eval.json"
    result = run_cli("evaluate", str(checkpoint), "--data", str(data), "--split", "val",
                     "--out", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "mIoU" in result.stdout and "global accuracy" in result.stdout
    results = json.loads(out.read_text())
    matrix = independent_confusion(checkpoint, data, "val")
    np.testing.assert_array_equal(np.asarray(results["confusion"]), matrix)
    tp, truth, predicted = np.diag(matrix), matrix.sum(1), matrix.sum(0)
    union = truth + predicted - tp
    iou = np.array([tp[c] / union[c] * 100 for c in range(3) if union[c]])
    overall = results["groups"]["all"]
    assert overall["miou"] == pytest.approx(iou.mean(), abs=1e-3)
    assert overall["global_acc"] == pytest.approx(tp.sum() / truth.sum() * 100, abs=1e-3)
    assert overall["mean_acc"] == pytest.approx(np.mean(tp / truth) * 100, abs=1e-3)
    for name, c in zip(NAMES, range(3), strict=True):
        assert results["per_class"][name]["iou"] == pytest.approx(tp[c] / union[c] * 100, abs=1e-3)
    assert (tmp_path / "eval" / "confusion.png").is_file()
    assert (tmp_path / "eval" / "class_iou.png").is_file()


def test_evaluate_split_train_scores_the_train_folder(run: Path, data: Path, tmp_path: Path):
    out = tmp_path / "train.json"
    result = run_cli("evaluate", str(run / "checkpoints" / "best.ckpt"), "--data", str(data),
                     "--split", "train", "--out", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(out.read_text())["num_images"] == 8


def test_evaluate_a_missing_split_folder_is_one_line(run: Path, data: Path, tmp_path: Path):
    result = run_cli("evaluate", str(run / "checkpoints" / "best.ckpt"), "--data", str(data),
                     "--split", "test", "--out", str(tmp_path / "x.json"))  # fmt: skip
    assert_one_line_error(result, "--split test", "test/images")
    assert not (tmp_path / "x.json").exists()


def test_a_checkpoint_of_another_class_table_is_refused(run: Path, data: Path, tmp_path: Path):
    other = tmp_path / "other"
    other.mkdir()
    for entry in data.iterdir():
        if entry.name != "classes.yaml":
            (other / entry.name).symlink_to(entry)
    (other / "classes.yaml").write_text(
        (data / "classes.yaml").read_text().replace("name: car", "name: truck")
    )
    result = run_cli("evaluate", str(run / "checkpoints" / "best.ckpt"), "--data", str(other),
                     "--out", str(tmp_path / "x.json"))  # fmt: skip
    assert_one_line_error(result, "best.ckpt", "class 2 is 'car'", "'truck'")


def test_a_mask_value_outside_the_table_names_file_and_value(tmp_path: Path):
    data = write_multiclass_folder(tmp_path / "data", {"train": 2, "val": 2})
    bad = data / "val" / "masks" / "val_001.png"
    mask = np.asarray(Image.open(bad)).copy()
    mask[0, 0] = 7
    Image.fromarray(mask).save(bad)
    result = run_cli("train", "--config", "demo", "--data", str(data), "--epochs", "1",
                     "--run-dir", str(tmp_path / "run"))  # fmt: skip
    assert_one_line_error(result, "val_001.png", "7")


def test_a_class_count_against_the_table_is_refused_before_the_run(tmp_path: Path):
    data = write_multiclass_folder(tmp_path / "data", {"train": 2, "val": 2})
    result = run_cli("train", "--config", "demo", "--data", str(data), "--set",
                     "model.num_classes=5", "--run-dir", str(tmp_path / "run"))  # fmt: skip
    assert_one_line_error(result, "model.num_classes=5", "3 classes")
    assert not (tmp_path / "run").exists()


def test_void_is_ignored_in_training_masks(data: Path):
    from semseg.config import DataConfig
    from semseg.data.datamodule import index_samples, make_reader

    config = DataConfig(kind="folder", root=str(data))
    sample = index_samples(config)[0]
    _, mask = make_reader(config, 3)(sample)
    raw = np.asarray(Image.open(sample.target_path))
    assert set(np.unique(mask)) <= {0, 1, 2, IGNORE_INDEX}
    np.testing.assert_array_equal(mask == IGNORE_INDEX, raw == 3)


@pytest.mark.skipif(not (CAMVID_ROOT / "classes.yaml").is_file(), reason="no CamVid data")
def test_camvid_as_it_is_trains_and_scores_its_validation_images(tmp_path: Path):
    run_dir = tmp_path / "run"
    result = run_cli("train", "--config", "camvid_fast_cpu", "--data", str(CAMVID_ROOT),
                     "--epochs", "1", "--height", "48", "--width", "64", "--batch-size", "32",
                     "--run-dir", str(run_dir), timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads((run_dir / "eval_val.json").read_text())
    assert results["num_images"] == 101 and len(results["classes"]) == 11
    assert results["classes"][0] == "sky" and results["classes"][-1] == "bicyclist"
    split = json.loads((run_dir / "split.json").read_text())
    assert (len(split["train"]), len(split["val"])) == (367, 101)


@pytest.mark.parametrize("name", list_models())
def test_every_registry_model_trains_and_evaluates_on_multiclass_data(
    name: str, data: Path, tmp_path: Path
):
    config = tiny_config(tmp_path, epochs=1)
    config.data.kind, config.data.root = "folder", str(data)
    config.data.height, config.data.width = 32, 48
    config.model.name = name
    encoders = {"segnet": "vgg16_bn", "fcn8s": "resnet18", "fcn16s": "resnet18"}
    config.model.backbone = encoders.get(name, "vgg16")
    if config.model.backbone == "resnet18":
        config.model.width_mult = 1.0  # torchvision's ResNets have no width knob
    config.train.overlay_samples = 1
    run = train(config)
    assert json.loads((run / "eval_val.json").read_text())["task"] == "multiclass"
    results = evaluate_checkpoint(run / "checkpoints" / "best.ckpt", data, split="val")
    assert results["classes"] == NAMES
    confusion = np.asarray(results["confusion"])
    valid_pixels = sum(
        int((np.asarray(Image.open(mask)) != 3).sum())
        for mask in sorted((data / "val" / "masks").glob("*.png"))
    )
    assert confusion.shape == (3, 3) and confusion.sum() == valid_pixels
    assert 0.0 <= results["groups"]["all"]["miou"] <= 100.0

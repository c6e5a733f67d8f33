"""Image-level tags on the command line, on the tiny multi-class folder (sky, road, car, void):
``derive --to tags`` against tags counted by hand from the masks, ``train --supervision tags``
(MIL with LSE pooling) for one epoch, then ``predict`` / ``evaluate`` with the image-level prior
against the prior computed by hand, ``pseudo-labels --method cam`` end to end with its quality
against a confusion count by hand, and one-line errors for bad input.
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_one_line_error, run_cli, tiny_checkpoint, write_multiclass_folder
from PIL import Image

from semseg.config import load_config
from semseg.inference.checkpoint import load_model
from semseg.weak.jobs import read_label_png

NAMES = ["sky", "road", "car"]
VOID = 3  # mask value of "void" in the tiny folder's table
SIZE = (32, 48)  # the tiny folder's images


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_multiclass_folder(tmp_path_factory.mktemp("tags") / "data")


def masks_of(data: Path) -> dict[str, np.ndarray]:
    return {
        path.stem: np.asarray(Image.open(path))
        for split in ("train", "val")
        for path in sorted((data / split / "masks").glob("*.png"))
    }


def tags_by_hand(mask: np.ndarray, min_frac: float) -> list[str]:
    """The classes covering at least ``min_frac`` of the non-void pixels (and one pixel)."""
    valid = mask[mask != VOID]
    return [
        name
        for k, name in enumerate(NAMES)
        if (valid == k).sum() > 0 and (valid == k).sum() >= min_frac * valid.size
    ]


@pytest.fixture(scope="module")
def tags_csv(data: Path) -> Path:
    out = data.parent / "tags.csv"
    result = run_cli("derive", "--to", "tags", "--data", str(data), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "derived tags of 12 image(s)" in result.stdout
    return out


@pytest.fixture(scope="module")
def mil_run(data: Path, tags_csv: Path) -> Path:
    run_dir = data.parent / "mil_run"
    result = run_cli(
        "train", "--config", "demo", "--data", str(data), "--supervision", "tags",
        "--tags", str(tags_csv), "--set", "train.lse_r=5", "--epochs", "1", "--height", "32",
        "--width", "48", "--set", "model.width_mult=0.125", "--run-dir", str(run_dir),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return run_dir


def read_csv_tags(path: Path) -> dict[tuple[str, tuple[int, ...]], list[str]]:
    with path.open(newline="") as stream:
        rows = list(csv.reader(stream))
    header, body = rows[0], rows[1:]
    crop = len(header) == 6
    return {
        (row[0], tuple(int(v) for v in row[2:]) if crop else ()): [
            c for c in row[1].split(";") if c
        ]
        for row in body
    }


def test_derive_tags_matches_a_count_by_hand(data: Path, tags_csv: Path):
    derived = read_csv_tags(tags_csv)
    expected = {(name, ()): tags_by_hand(mask, 0.01) for name, mask in masks_of(data).items()}
    assert derived == expected


def test_derive_tags_per_crop_as_json_with_min_frac(data: Path, tmp_path: Path):
    out = tmp_path / "tags.json"
    result = run_cli(
        "derive", "--to", "tags", "--data", str(data), "--out", str(out), "--crop", "16x24",
        "--min-frac", "0.2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "48 crop(s) of 12 image(s)" in result.stdout
    raw = json.loads(out.read_text())
    assert raw["classes"] == NAMES and raw["min_frac"] == 0.2 and raw["crop"] == "16x24"
    masks = masks_of(data)
    assert len(raw["tags"]) == 4 * len(masks)
    for entry in raw["tags"]:
        top, left, height, width = entry["crop"]
        assert (height, width) == (16, 24) and top in (0, 16) and left in (0, 24)
        crop = masks[entry["image"]][top : top + height, left : left + width]
        assert entry["classes"] == tags_by_hand(crop, 0.2)


def test_train_from_tags_makes_the_usual_run(mil_run: Path):
    config = load_config(str(mil_run / "config.yaml"))
    assert config.train.supervision == "tags" and config.train.lse_r == 5.0
    assert (mil_run / "checkpoints" / "best.ckpt").is_file()
    header, row = (mil_run / "metrics.csv").read_text().splitlines()[:2]
    assert float(row.split(",")[header.split(",").index("val_miou")]) >= 0.0
    results = json.loads((mil_run / "eval_val.json").read_text())
    assert results["task"] == "multiclass" and results["num_images"] == 4
    loaded = load_model(mil_run / "checkpoints" / "best.ckpt")
    assert loaded.lse_r == 5.0 and loaded.class_names == NAMES
    assert loaded.class_colours.tolist()[1] == [128, 64, 128]  # the data's palette


def prior_labels_by_hand(
    checkpoint: Path, image: np.ndarray, r: float, tiles: tuple[int, int] = (1, 1)
) -> np.ndarray:
    """Scores at the image size, softmax, times sigmoid of the LSE-pooled scores, argmax; with
    ``tiles`` (rows, columns dividing the image evenly), each tile by its own pooled scores."""
    loaded = load_model(checkpoint)
    height, width = loaded.input_size
    batch = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255.0
    batch = F.interpolate(batch, size=(height, width), mode="bilinear", align_corners=False)
    with torch.no_grad():
        scores = loaded.model(batch)
    scores = F.interpolate(scores, size=image.shape[:2], mode="bilinear", align_corners=False)[0]
    scores = scores.double()
    labels = np.empty(image.shape[:2], dtype=np.uint8)
    tile_h, tile_w = image.shape[0] // tiles[0], image.shape[1] // tiles[1]
    for top in range(0, image.shape[0], tile_h):
        for left in range(0, image.shape[1], tile_w):
            tile = scores[:, top : top + tile_h, left : left + tile_w]
            flat = tile.reshape(tile.shape[0], -1)
            pooled = torch.tensor(
                [math.log(torch.exp(r * row).mean().item()) / r for row in flat],
                dtype=torch.float64,
            )
            prior = 1.0 / (1.0 + torch.exp(-pooled))
            weighted = tile.softmax(dim=0) * prior[:, None, None]
            labels[top : top + tile_h, left : left + tile_w] = weighted.argmax(dim=0).numpy()
    return labels


def test_predict_with_the_image_prior_matches_a_hand_calculation(
    data: Path, mil_run: Path, tmp_path: Path
):
    checkpoint = mil_run / "checkpoints" / "best.ckpt"
    images = data / "val" / "images"
    out = tmp_path / "pred"
    result = run_cli(
        "predict", str(checkpoint), str(images), "--out", str(out), "--image-prior",
        "--backend", "torch",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    from semseg.data.transforms import image_to_tensor

    for path in sorted(images.glob("*.png")):
        image = np.asarray(Image.open(path).convert("RGB"))
        assert image_to_tensor(image, *SIZE).shape == (3, *SIZE)  # resizing is the identity here
        expected = prior_labels_by_hand(checkpoint, image, 5.0)
        written = np.asarray(Image.open(out / "label" / path.name))
        assert (written == expected).mean() > 0.999


def test_crop_tags_pool_the_prior_per_crop_sized_tile(data: Path, tmp_path: Path):
    """Tags of 16x24 crops of the 32x48 images: the checkpoint records 2 x 2 tiles, and
    ``predict --image-prior`` weighs each quarter of the image by its own pooled scores."""
    tags = tmp_path / "crop_tags.csv"
    derived = run_cli("derive", "--to", "tags", "--data", str(data), "--out", str(tags),
                      "--crop", "16x24")  # fmt: skip
    assert derived.returncode == 0, derived.stderr
    run_dir = tmp_path / "mil_crops"
    trained = run_cli(
        "train", "--config", "demo", "--data", str(data), "--supervision", "tags",
        "--tags", str(tags), "--epochs", "1", "--height", "32", "--width", "48",
        "--set", "model.width_mult=0.125", "--run-dir", str(run_dir),
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    checkpoint = run_dir / "checkpoints" / "best.ckpt"
    loaded = load_model(checkpoint)
    assert loaded.prior_tiles == (2, 2) and loaded.lse_r == 2.0
    images, out = data / "val" / "images", tmp_path / "pred"
    result = run_cli("predict", str(checkpoint), str(images), "--out", str(out),
                     "--image-prior", "--backend", "torch")  # fmt: skip
    assert result.returncode == 0, result.stderr
    for path in sorted(images.glob("*.png")):
        image = np.asarray(Image.open(path).convert("RGB"))
        expected = prior_labels_by_hand(checkpoint, image, 2.0, (2, 2))
        written = np.asarray(Image.open(out / "label" / path.name))
        assert (written == expected).mean() > 0.999


def test_evaluate_with_prior_and_superpixels(data: Path, mil_run: Path, tmp_path: Path):
    pytest.importorskip("skimage")
    checkpoint = mil_run / "checkpoints" / "best.ckpt"
    out = tmp_path / "eval.json"
    result = run_cli(
        "evaluate", str(checkpoint), "--data", str(data), "--split", "val", "--image-prior",
        "--smooth", "superpixels", "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    results = json.loads(out.read_text())
    assert results["mil"]["image_prior"] is True and results["mil"]["smoothing"] == "slic"
    assert results["num_images"] == 4 and 0.0 <= results["groups"]["all"]["miou"] <= 100.0
    default = run_cli(
        "evaluate", str(checkpoint), "--data", str(data), "--split", "val", "--smooth", "segments"
    )
    assert default.returncode == 0, default.stderr
    assert (checkpoint.parent / "eval_val_segments.json").is_file()


def test_cam_pseudo_labels_end_to_end(data: Path, tags_csv: Path, tmp_path: Path):
    out = tmp_path / "cam"
    result = run_cli(
        "pseudo-labels", "--tags", str(tags_csv), "--method", "cam", "--data", str(data),
        "--out", str(out), "--epochs", "2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "CAM classifier:" in result.stdout and "pseudo-label quality" in result.stdout
    masks = masks_of(data)
    assert sorted(p.stem for p in out.glob("*.png")) == sorted(masks)
    confusion = np.zeros((3, 3), dtype=np.int64)
    labelled = valid = 0
    for name, mask in masks.items():
        labels = read_label_png(out / f"{name}.png", 3, SIZE)  # what train --labels reads
        assert set(np.unique(labels)) <= {0, 1, 2, 255}
        truth = np.where(mask == VOID, 255, mask)
        both = (truth != 255) & (labels != 255)
        labelled, valid = labelled + int(both.sum()), valid + int((truth != 255).sum())
        np.add.at(confusion, (truth[both].astype(int), labels[both].astype(int)), 1)
    ious = [
        confusion[k, k] / (confusion[k].sum() + confusion[:, k].sum() - confusion[k, k])
        for k in range(3)
        if confusion[k].sum() + confusion[:, k].sum()
    ]
    quality = json.loads((out / "quality.json").read_text())
    assert quality["method"] == "cam" and quality["images"] == 12
    assert quality["quality"]["miou"] == pytest.approx(100 * np.mean(ious), abs=1e-3)
    assert quality["quality"]["coverage"] == pytest.approx(100 * labelled / valid, abs=1e-3)
    assert quality["training"]["steps"] >= 1 and (out / "quality.md").is_file()
    refused = run_cli("evaluate", str(out / "cam.pt"), "--data", str(data))
    assert_one_line_error(refused, "CAM classifier", "pseudo-labels")


@pytest.fixture
def semseg(capsys, monkeypatch):
    """``semseg.cli.main`` in this process: exit code, stdout and stderr as ``run_cli``."""
    from semseg.cli import main

    def run(*args: str) -> subprocess.CompletedProcess:
        monkeypatch.setattr(sys, "argv", ["semseg", *args])
        with pytest.raises(SystemExit) as exit_info:
            main()
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(args, exit_info.value.code, captured.out, captured.err)

    return run


def test_bad_tags_are_one_line_errors(data: Path, tmp_path: Path, semseg):
    unknown = tmp_path / "unknown.csv"
    unknown.write_text("train_000,sky;tram\n")
    missing = tmp_path / "missing.csv"
    missing.write_text("train_000,sky\nnot_an_image,road\n")
    train = ["train", "--config", "demo", "--data", str(data), "--epochs", "1"]
    for tags, fragments in ((unknown, ("unknown class 'tram'",)), (missing, ("not_an_image",))):
        run_dir = tmp_path / f"run_{tags.stem}"
        result = semseg(*train, "--tags", str(tags), "--run-dir", str(run_dir))
        assert_one_line_error(result, str(tags), *fragments)
        assert not run_dir.exists()
        cam = semseg("pseudo-labels", "--tags", str(tags), "--method", "cam", "--data",
                     str(data), "--out", str(tmp_path / "cam"))  # fmt: skip
        assert_one_line_error(cam, str(tags), *fragments)
    no_tags = semseg("train", "--config", "demo", "--data", str(data), "--supervision", "tags")
    assert_one_line_error(no_tags, "--tags FILE")
    cam = semseg("pseudo-labels", "--method", "cam", "--data", str(data), "--out", str(tmp_path))
    assert_one_line_error(cam, "--method cam needs --tags")
    box = semseg("pseudo-labels", "--method", "box", "--tags", str(unknown), "--data", str(data),
                 "--out", str(tmp_path / "b"))  # fmt: skip
    assert_one_line_error(box, "--tags is for --method cam")
    crop = semseg("derive", "--to", "tags", "--data", str(data), "--out", str(tmp_path / "t.csv"),
                  "--crop", "64x24")  # fmt: skip
    assert_one_line_error(crop, "--crop 64x24 is larger than the image")
    suffix = semseg("derive", "--to", "tags", "--data", str(data), "--out", str(tmp_path / "t.txt"))
    assert_one_line_error(suffix, ".csv or .json")


def test_mil_flags_refuse_a_model_not_trained_from_tags(data: Path, tmp_path: Path, semseg):
    checkpoint = tiny_checkpoint(tmp_path / "full.ckpt", class_names=tuple(NAMES))
    image = next((data / "val" / "images").glob("*.png"))
    for args in (("--image-prior",), ("--smooth", "superpixels")):
        predicted = semseg("predict", str(checkpoint), str(image), "--out", str(tmp_path / "p"),
                           *args)  # fmt: skip
        assert_one_line_error(predicted, "not a MIL model", "--supervision tags")
        scored = semseg("evaluate", str(checkpoint), "--data", str(data), *args)
        assert_one_line_error(scored, "not a MIL model")
    assert not (tmp_path / "p").exists()


def test_smoothing_names_scikit_image_when_missing(data: Path, mil_run: Path, tmp_path: Path,
                                                    monkeypatch):  # fmt: skip
    fake = tmp_path / "no_skimage"
    (fake / "skimage").mkdir(parents=True)
    (fake / "skimage" / "__init__.py").write_text("raise ImportError('no skimage here')\n")
    monkeypatch.setenv("PYTHONPATH", f"{fake}:{Path(__file__).parents[1] / 'src'}")
    result = run_cli("evaluate", str(mil_run / "checkpoints" / "best.ckpt"), "--data", str(data),
                     "--smooth", "superpixels", "--out", str(tmp_path / "e.json"))  # fmt: skip
    assert_one_line_error(result, "scikit-image", 'pip install -e ".[weak]"')
    assert not (tmp_path / "e.json").exists()

"""The ``semseg`` commands end to end: train, evaluate, predict, models, and their errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import KITTI_ROOT, needs_kitti, run_cli
from conftest import assert_one_line_error as strict_one_line_error
from PIL import Image

from semseg.data.synthetic import write_kitti_layout
from semseg.tasks.segmentation import SegmentationTask

TINY_FLAGS = (
    "--config",
    "demo",
    "--set",
    "data.synthetic_train=12",
    "--set",
    "data.synthetic_size=[60,200]",
    "--set",
    "model.width_mult=0.125",
    "--set",
    "train.max_time_s=null",
    "--height",
    "32",
    "--width",
    "96",
    "--batch-size",
    "4",
)


def assert_one_line_error(result, *fragments: str) -> str:
    """As everywhere, but training may print warnings before the error line here."""
    return strict_one_line_error(result, *fragments, only_line=False)


def test_train_writes_the_whole_run(tmp_path: Path):
    result = run_cli(
        "train", *TINY_FLAGS, "--epochs", "2", "--out-dir", str(tmp_path), "--name", "cli"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (run_dir,) = tmp_path.glob("cli-*")
    for name in (
        "config.yaml",
        "split.json",
        "train.log",
        "metrics.csv",
        "curves.png",
        "eval_val.json",
        "checkpoints/best.ckpt",
        "checkpoints/last.ckpt",
    ):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert len(list((run_dir / "overlays").glob("*.png"))) >= 1
    log_lines = (run_dir / "train.log").read_text().splitlines()
    assert [line.split("epoch ")[1].split()[0] for line in log_lines] == ["1/2", "2/2"]
    assert all("loss " in line for line in log_lines)
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,train_loss,val_loss,val_maxf")
    assert [row.split(",")[0] for row in rows[1:]] == ["1", "2"]
    for row, line in zip(rows[1:], log_lines, strict=True):  # the same losses as train.log
        assert float(line.split("loss ")[1].split()[0]) == pytest.approx(
            float(row.split(",")[1]), abs=5e-5
        )
    with Image.open(run_dir / "curves.png") as curves:
        assert curves.size[0] >= 400 and curves.size[1] >= 200
    split = json.loads((run_dir / "split.json").read_text())
    assert set(split["train"]).isdisjoint(split["val"])
    assert "MaxF" in result.stdout and "all" in result.stdout


def test_flags_override_the_config(tmp_path: Path):
    result = run_cli(
        "train",
        *TINY_FLAGS,
        "--epochs",
        "1",
        "--keep-prob",
        "0.75",
        "--lr",
        "0.002",
        "--seed",
        "3",
        "--out-dir",
        str(tmp_path),
        "--name",
        "flags",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (run_dir,) = tmp_path.glob("flags-*")
    saved = (run_dir / "config.yaml").read_text()
    for fragment in ("keep_prob: 0.75", "lr: 0.002", "seed: 3", "epochs: 1", "height: 32"):
        assert fragment in saved, fragment


def test_evaluate_all_and_val(tiny_run: Path, tmp_path: Path):
    data = tiny_run / "data"
    ckpt = tiny_run / "checkpoints" / "best.ckpt"
    out = tmp_path / "all.json"
    result = run_cli("evaluate", str(ckpt), "--data", str(data), "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads(out.read_text())
    assert results["num_images"] == 12
    assert set(results["groups"]) == {"um", "umm", "uu", "all"}
    for values in results["groups"].values():
        assert 0 <= values["max_f"] <= 100 and 0 <= values["best_threshold"] <= 1
    result = run_cli(
        "evaluate",
        str(ckpt),
        "--data",
        str(data),
        "--split",
        "val",
        "--out",
        str(tmp_path / "val.json"),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    val = json.loads((tmp_path / "val.json").read_text())
    split = json.loads((tiny_run / "split.json").read_text())
    assert val["num_images"] == len(split["val"])
    # The run's own full-resolution validation scores are the same computation.
    own = json.loads((tiny_run / "eval_val.json").read_text())
    assert val["groups"]["all"]["max_f"] == pytest.approx(own["groups"]["all"]["max_f"])


def test_predict_writes_devkit_named_outputs(tiny_run: Path, tmp_path: Path):
    images = tiny_run / "data" / "training" / "image_2"
    out = tmp_path / "pred"
    result = run_cli(
        "predict",
        str(tiny_run / "checkpoints" / "best.ckpt"),
        str(images),
        "--out",
        str(out),
        "--batch-size",
        "5",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    names = sorted(p.stem for p in images.glob("*.png"))
    assert sorted(p.stem for p in (out / "overlay").glob("*.png")) == names
    assert sorted(p.stem for p in (out / "label").glob("*.png")) == names
    expected_prob = sorted(n.replace("_", "_road_", 1) for n in names)
    assert sorted(p.stem for p in (out / "prob").glob("*.png")) == expected_prob
    source = Image.open(images / f"{names[0]}.png")
    prob = Image.open(out / "prob" / f"{expected_prob[0]}.png")
    label = np.asarray(Image.open(out / "label" / f"{names[0]}.png"))
    assert prob.mode == "L" and prob.size == source.size
    assert label.shape == (source.size[1], source.size[0]) and set(np.unique(label)) <= {0, 1}
    # The label mask is the argmax, i.e. probability >= 0.5 for two classes (up to rounding).
    levels = np.asarray(prob)
    assert np.all(label[levels > 128] == 1) and np.all(label[levels < 127] == 0)


def test_models_lists_the_fcn_family():
    result = run_cli("models")
    assert result.returncode == 0
    assert {"fcn32s", "fcn16s", "fcn8s", "fcn8s-seed"} <= set(result.stdout.split())


def save_task_checkpoint(path: Path, num_classes: int) -> Path:
    task = SegmentationTask(
        model_name="fcn8s",
        num_classes=num_classes,
        model_options={"width_mult": 0.125, "keep_prob": 1.0},
        input_size=[32, 96],
    )
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams)}, path)
    return path


def test_bad_input_gives_one_line_errors(tiny_run: Path, tmp_path: Path):
    ckpt = str(tiny_run / "checkpoints" / "best.ckpt")
    data = tiny_run / "data"
    assert_one_line_error(run_cli("evaluate", ckpt, "--data", str(tmp_path / "nope")), "not found")
    assert_one_line_error(
        run_cli("evaluate", str(tmp_path / "x.ckpt"), "--data", str(data)), "checkpoint not found"
    )
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint at all")
    assert_one_line_error(run_cli("predict", str(junk), str(data)), "not a semseg checkpoint")
    plain = tmp_path / "plain.ckpt"
    torch.save({"weights": torch.zeros(3)}, plain)
    assert_one_line_error(run_cli("predict", str(plain), str(data)), "not a semseg checkpoint")
    three = save_task_checkpoint(tmp_path / "three.ckpt", num_classes=3)
    assert_one_line_error(run_cli("evaluate", str(three), "--data", str(data)), "3 classes")
    assert_one_line_error(
        run_cli("train", *TINY_FLAGS, "--model", "fcn9s", "--out-dir", str(tmp_path)),
        "unknown model",
    )
    assert_one_line_error(
        run_cli("train", *TINY_FLAGS, "--set", "model.nope=1", "--out-dir", str(tmp_path)),
        "unknown field",
    )
    assert_one_line_error(
        run_cli("train", "--data", str(tmp_path / "missing"), "--out-dir", str(tmp_path)),
        "not found",
    )
    assert_one_line_error(
        run_cli("train", "--config", str(tmp_path / "none.yaml")), "config not found"
    )


def test_bad_data_files_are_named(tmp_path: Path, tiny_run: Path):
    ckpt = str(tiny_run / "checkpoints" / "best.ckpt")
    root = write_kitti_layout(tmp_path / "kitti", num_train=3, height=40, width=120)
    gt_dir = root / "training" / "gt_image_2"
    first_gt = sorted(gt_dir.glob("*.png"))[0]
    wrong = np.asarray(Image.open(first_gt)).copy()
    wrong[0, 0] = (10, 200, 30)
    Image.fromarray(wrong).save(first_gt)
    assert_one_line_error(
        run_cli("evaluate", ckpt, "--data", str(root)), first_gt.name, "unknown ground-truth colour"
    )
    first_gt.unlink()
    assert_one_line_error(run_cli("evaluate", ckpt, "--data", str(root)), "no ground truth")
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    assert_one_line_error(
        run_cli("predict", ckpt, str(corrupt), "--out", str(tmp_path / "o")), "corrupt.png"
    )
    assert not (tmp_path / "o").exists()  # nothing partial was written


def test_ddp_on_two_cpu_processes(tmp_path: Path):
    result = run_cli(
        "train",
        *TINY_FLAGS,
        "--epochs",
        "1",
        "--accelerator",
        "cpu",
        "--devices",
        "2",
        "--strategy",
        "ddp",
        "--out-dir",
        str(tmp_path),
        "--name",
        "ddp",
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = list(tmp_path.glob("ddp-*"))
    assert len(runs) == 1, runs  # both ranks wrote into the same run folder
    log_lines = (runs[0] / "train.log").read_text().splitlines()
    assert len(log_lines) == 1 and "epoch 1/1" in log_lines[0]
    assert (runs[0] / "eval_val.json").is_file()


@needs_kitti
def test_train_and_evaluate_on_kitti_road(tmp_path: Path):
    result = run_cli(
        "train",
        "--data",
        str(KITTI_ROOT),
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--height",
        "64",
        "--width",
        "224",
        "--set",
        "model.width_mult=0.125",
        "--out-dir",
        str(tmp_path),
        "--name",
        "kitti",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = tmp_path.glob("kitti-*")
    split = json.loads((run_dir / "split.json").read_text())
    assert len(split["train"]) + len(split["val"]) == 105
    out = tmp_path / "eval.json"
    result = run_cli(
        "evaluate",
        str(run_dir / "checkpoints" / "best.ckpt"),
        "--data",
        str(KITTI_ROOT),
        "--split",
        "val",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["num_images"] == len(split["val"])
    assert set(results["groups"]) == {"um", "umm", "uu", "all"}
    assert results["groups"]["all"]["max_f"] > 0


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["train", "--config", "demo", "--epochs", "0"], "'--epochs'"),
        (["train", "--bogus"], "--bogus"),
        (["nosuch"], "'nosuch'"),
        (["evaluate", "x.ckpt"], "'--data'"),
        (["predict", "x.ckpt", "in", "--backend", "gpu"], "'--backend'"),
    ],
)
def test_usage_errors_name_the_option_and_exit_2(args: list[str], named: str):
    result = run_cli(*args)
    assert result.returncode == 2, result.stderr
    strict_one_line_error(result, named)

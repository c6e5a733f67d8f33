"""Output paths are checked before the work starts (a bad --out costs nothing)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import assert_one_line_error, run_cli

from semseg.errors import SemsegError
from semseg.io import check_output_dir, check_output_file


def test_output_file_checks(tmp_path: Path):
    check_output_file(tmp_path / "new" / "deeper" / "scores.json", "--out")  # creatable: fine
    with pytest.raises(SemsegError, match="is a folder"):
        check_output_file(tmp_path, "--out")
    (tmp_path / "file").write_text("x")
    with pytest.raises(SemsegError, match="is not a folder"):
        check_output_file(tmp_path / "file" / "scores.json", "--out")


def test_output_dir_checks(tmp_path: Path):
    check_output_dir(tmp_path / "new", "--out")
    (tmp_path / "file").write_text("x")
    with pytest.raises(SemsegError, match="not a folder"):
        check_output_dir(tmp_path / "file", "--out")


def test_evaluate_refuses_a_folder_as_out_before_scoring(tiny_run: Path, tmp_path: Path):
    checkpoint = tiny_run / "checkpoints" / "best.ckpt"
    data = tiny_run / "data"
    result = run_cli("evaluate", str(checkpoint), "--data", str(data), "--out", str(tmp_path))
    assert "is a folder" in assert_one_line_error(result)
    assert "evaluating" not in result.stdout  # refused before the first image
    assert list(tmp_path.iterdir()) == []


def test_predict_refuses_a_file_as_out_and_writes_nothing(tiny_run: Path, tmp_path: Path):
    checkpoint = tiny_run / "checkpoints" / "best.ckpt"
    images = tiny_run / "data" / "training" / "image_2"
    target = tmp_path / "predictions"
    target.write_text("not a folder")
    result = run_cli("predict", str(checkpoint), str(images), "--out", str(target))
    assert "not a folder" in assert_one_line_error(result)
    assert target.read_text() == "not a folder"


def test_evaluate_writes_its_default_json(tiny_run: Path, tmp_path: Path):
    out = tmp_path / "scores.json"
    checkpoint = tiny_run / "checkpoints" / "best.ckpt"
    result = run_cli(
        "evaluate", str(checkpoint), "--data", str(tiny_run / "data"), "--out", str(out)
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(out.read_text())["groups"]["all"]["num_images"] > 0

"""``semseg demo`` as a new user runs it: no data, no network, and it really learns."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import pytest
from conftest import run_cli

from semseg.config import load_config
from semseg.errors import SemsegError
from semseg.inference.checkpoint import read_checkpoint
from semseg.runs import RunDir


def test_demo_config_stops_by_epochs_only():
    config = load_config("demo")
    assert config.train.max_time_s is None  # a loaded machine takes longer, not learns less
    assert config.train.epochs == 16


def demo_run(tmp_path: Path) -> tuple[str, Path]:
    """A finished demo: its stdout and its ``--out-dir``. CI's first step has just run
    ``semseg demo`` from this checkout in a fresh venv and names that run here
    (``SEMSEG_DEMO_RUN``, ``SEMSEG_DEMO_STDOUT``), which saves running the same three minutes
    twice; anywhere else the test runs the demo itself."""
    given = os.environ.get("SEMSEG_DEMO_RUN")
    if given:
        return Path(os.environ["SEMSEG_DEMO_STDOUT"]).read_text(), Path(given)
    result = run_cli("demo", "--out-dir", str(tmp_path), timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout, tmp_path


def test_demo_learns_road_on_held_out_scenes(tmp_path: Path):
    stdout, out_dir = demo_run(tmp_path)
    match = re.search(r"held-out road IoU: ([0-9.]+)%", stdout)
    assert match, stdout
    (run_dir,) = out_dir.glob("demo-*")
    run = RunDir(run_dir)
    results = json.loads(run.eval_heldout.read_text())
    road_iou = results["groups"]["all"]["iou"]
    assert abs(float(match.group(1)) - road_iou) < 0.01
    assert road_iou >= 90.0, f"demo road IoU {road_iou:.2f} < 90"
    assert results["num_images"] == 30
    # The same work on any machine: every epoch, every step.
    config = run.read_config()
    lines = run.log.read_text().splitlines()
    assert [line.split("epoch ")[1].split()[0] for line in lines] == [
        f"{epoch}/{config.train.epochs}" for epoch in range(1, config.train.epochs + 1)
    ]
    steps = math.ceil(len(run.read_split()["train"]) / config.train.batch_size)
    assert read_checkpoint(run.last)["global_step"] == config.train.epochs * steps
    for path in (run.report, run.curves, run.log, run.best):
        assert path.is_file(), path
    assert len(list(run.heldout_overlays.glob("*.png"))) == 6
    assert "Road IoU" in run.report.read_text()


def test_demo_fails_when_it_did_not_learn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from typer.testing import CliRunner

    import semseg.demo
    from semseg.cli import app

    def unlearned(out_dir: str = "runs", seconds: float | None = None) -> semseg.demo.DemoReport:
        results = {"groups": {"all": {"max_f": 50.0, "iou": 12.5}}}
        return semseg.demo.DemoReport(run_dir=tmp_path, results=results, road_iou=12.5)

    monkeypatch.setattr(semseg.demo, "run_demo", unlearned)
    result = CliRunner().invoke(app, ["demo", "--out-dir", str(tmp_path)])
    assert result.exit_code != 0
    assert isinstance(result.exception, SemsegError)
    assert "did not learn" in str(result.exception) and "12.50%" in str(result.exception)

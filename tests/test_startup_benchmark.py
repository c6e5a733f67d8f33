"""benchmarks/startup.py on a tiny checkpoint and synthetic KITTI images: it runs fresh
``semseg predict`` processes, one of them from an earlier commit, and writes its table."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT, tiny_checkpoint

from semseg.data.synthetic import write_kitti_layout


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git for the earlier commit")
def test_startup_runs_now_and_an_earlier_commit_side_by_side(tmp_path: Path) -> None:
    if not (PROJECT_ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    checkpoint = tiny_checkpoint(tmp_path / "tiny.ckpt")
    write_kitti_layout(tmp_path / "kitti", num_train=2, height=60, width=200)
    out = tmp_path / "startup.md"
    done = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "benchmarks" / "startup.py"),
         "--checkpoint", f"tiny={checkpoint}", "--data", str(tmp_path / "kitti"),
         "--cases", "torch", "--repeats", "1", "--images", "2", "--before", "HEAD",
         "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    table = out.read_text()
    assert "| tiny | --backend torch | now |" in table
    assert "| tiny | --backend torch | before (HEAD) |" in table
    assert "ratio before / now" in table
    rows = json.loads(out.with_suffix(".json").read_text())
    (row,) = rows
    for version in ("now", "before (HEAD)"):
        (run,) = row["runs"][version]
        assert 0 < run["first_png_s"] <= run["wall_s"]
        assert run["backend"].startswith("backend: torch")
    worktrees = subprocess.run(["git", "-C", str(PROJECT_ROOT), "worktree", "list"],
                               capture_output=True, text=True).stdout  # fmt: skip
    assert str(tmp_path) not in worktrees and "semseg-startup-" not in worktrees


def test_startup_refuses_a_data_folder_without_images(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "benchmarks" / "startup.py"),
         "--checkpoint", "x=missing.ckpt", "--data", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode != 0
    assert "no KITTI images" in done.stderr

"""``semseg demo`` as a new user runs it: no data, no network, and it really learns."""

from __future__ import annotations

import json
import re
from pathlib import Path

from conftest import run_cli


def test_demo_learns_road_on_held_out_scenes(tmp_path: Path):
    result = run_cli("demo", "--out-dir", str(tmp_path), timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    match = re.search(r"held-out road IoU: ([0-9.]+)%", result.stdout)
    assert match, result.stdout
    (run_dir,) = tmp_path.glob("demo-*")
    results = json.loads((run_dir / "eval_heldout.json").read_text())
    road_iou = results["groups"]["all"]["iou"]
    assert abs(float(match.group(1)) - road_iou) < 0.01
    assert road_iou >= 90.0, f"demo road IoU {road_iou:.2f} < 90"
    assert results["num_images"] == 30
    for name in ("report.md", "curves.png", "train.log", "checkpoints/best.ckpt"):
        assert (run_dir / name).is_file(), name
    assert len(list((run_dir / "heldout_overlays").glob("*.png"))) == 6
    assert "Road IoU" in (run_dir / "report.md").read_text()

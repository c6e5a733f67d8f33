"""benchmarks/weak_boxes.py: every entry trains with the same recipe, seed and CPU budget and
differs from full supervision only in its labels; the tables' recovered fractions by hand."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from conftest import load_benchmark

SUPERVISION_FIELDS = {
    "data.labels",
    "data.boxes",
    "train.rounds",
    "train.round_method",
    "train.supervision",
    "train.name",
    "train.run_dir",
}


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("weak_boxes")


def flat(config) -> dict[str, object]:
    return {
        f"{section}.{key}": value
        for section in ("data", "model", "train")
        for key, value in dataclasses.asdict(getattr(config, section)).items()
    }


@pytest.mark.parametrize("dataset", ["kitti", "camvid"])
def test_entries_differ_from_full_supervision_only_in_their_labels(bench, monkeypatch, dataset):
    monkeypatch.setattr(bench, "pseudo_labels", lambda args, d, m: (Path(f"/labels/{m}"), 0.0))
    monkeypatch.setattr(bench, "training_boxes", lambda args, d: Path("/boxes.json"))
    args = bench.parse_args(["--datasets", dataset, "--runs", "/runs"])
    assert args.entries == list(bench.ENTRIES) and args.budget_s == 600.0
    full = flat(bench.entry_config(args, dataset, "full"))
    assert full["train.max_time_s"] == 600.0 and full["train.clock"] == "cpu"
    assert full["data.labels"] is None and full["train.supervision"] == "full"
    expected = {
        "box-i": {"data.labels": "/labels/box-i"},
        "m-and-g": {"data.labels": "/labels/m-and-g"},
        "rounds-box-i": {"data.boxes": "/boxes.json", "train.rounds": 3,
                         "train.round_method": "box-i"},
        "boxsup": {"data.boxes": "/boxes.json", "train.supervision": "boxsup"},
    }  # fmt: skip
    for entry in bench.ENTRIES:
        config = flat(bench.entry_config(args, dataset, entry))
        changed = {key for key in full if config[key] != full[key]}
        assert changed <= SUPERVISION_FIELDS, (entry, changed)
        assert config["train.run_dir"] == f"/runs/results-cpu600s-seed0/{dataset}/{entry}"
        for key, value in expected.get(entry, {}).items():
            assert config[key] == value


def result(bench, entry: str, max_f: float, quality: list | None = None):
    return bench.Result("kitti", entry, max_f, 50.0, None, 3, 100.0, 0.0, "run", quality or [])


def test_tables_give_the_share_of_the_full_score_and_the_papers(bench):
    rows = [
        result(bench, "full", 80.0),
        result(bench, "m-and-g", 72.0, [{"labels": "m-and-g", "images": 5, "coverage": 60.0,
                                         "miou": 70.0, "max_f": 81.0, "road_iou": 66.0}]),
        result(bench, "boxsup", 76.0),
    ]  # fmt: skip
    table = bench.score_table("kitti", rows).splitlines()
    assert table[2].startswith("| full | 80.0 | 50.0 | 100.0 | – |")
    assert table[3].startswith("| m-and-g | 72.0 | 50.0 | 90.0 | 95% (65.7 / 69.1")  # 72 / 80
    assert table[4].startswith("| boxsup | 76.0 | 50.0 | 95.0 | 97% (62.0 / 63.8")  # 76 / 80
    quality = bench.quality_table("kitti", rows).splitlines()
    assert quality[2] == "| m-and-g | 5 | 60.0 | 70.0 | 81.0 | 66.0 |"

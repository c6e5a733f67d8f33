"""benchmarks/cpu_budget.py: the grid it plans, its leave-one-out ablation, and a grid trained
side by side (``--jobs``) that resumes from the entries it finished."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from conftest import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("cpu_budget")


def test_default_grid_is_every_fcn_variant_by_every_encoder(bench) -> None:
    entries = [bench.parse_entry(entry, "fast") for entry in bench.DEFAULT_MODELS]
    fast = {(model, backbone) for model, backbone, recipe in entries if recipe == "fast"}
    encoders = ("vgg16", "vgg16_bn", "resnet18", "resnet34", "resnet50", "mobilenet_v3_large")
    assert fast == {(v, e) for v in ("fcn8s", "fcn16s", "fcn32s") for e in encoders}
    assert ("fcn8s", "vgg16", "reference") in entries
    assert (bench.SMP_UNET, None, "peer") in entries
    assert len(entries) == len(set(entries)) == 20


def flat(config) -> dict[str, object]:
    return {
        f"{section}.{key}": value
        for section in ("data", "model", "train")
        for key, value in dataclasses.asdict(getattr(config, section)).items()
    }


def test_leave_one_out_removes_exactly_one_ingredient_each(bench) -> None:
    args = bench.parse_args(["--quick", "--leave-one-out"])
    planned = bench.plan_leave_one_out(args)
    full = flat(planned[0].config)
    assert planned[0].name == "fcn8s-resnet18-fast"  # the grid's entry: trained once, shared
    assert full["train.loss"] == "ce_dice" and full["train.grad_clip"] == 1.0
    changed = {
        item.name: {key for key, value in flat(item.config).items() if full[key] != value}
        for item in planned[1:]
    }
    assert changed == {
        "loo-augmentation": {"data.scale_crop", "data.color_jitter"},
        "loo-dice": {"train.loss"},
        "loo-grad-clip": {"train.grad_clip"},
        "loo-schedule": {
            "train.optimizer",
            "train.weight_decay",
            "train.warmup_epochs",
            "train.schedule",
        },
    }


@pytest.mark.parametrize("flags", [["--jobs", "0"], ["--threads", "0"], ["--recipe", "nope"]])
def test_bad_flags_exit_with_a_message(bench, flags: list[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        bench.main(["--quick", "--models", "fcn8s:resnet18", *flags])
    assert stopped.value.code not in (0, None)


def test_side_by_side_grid_resumes_from_finished_entries(bench, tmp_path: Path) -> None:
    runs, table = tmp_path / "runs", tmp_path / "table.md"
    argv = ["--quick", "--jobs", "2", "--runs", str(runs), "--out", str(table)]
    argv += ["--models", "fcn8s:resnet18", "fcn32s:resnet18"]
    assert bench.main(argv) == 0

    rows = json.loads(table.with_suffix(".json").read_text())
    assert [row["entry"] for row in rows] == ["fcn8s:resnet18@fast", "fcn32s:resnet18@fast"]
    for row in rows:
        assert 0.0 <= row["max_f"] <= 100.0 and row["epochs"] >= 1
        assert (Path(row["run_dir"]) / "eval_val.json").is_file()
    lines = table.read_text().splitlines()
    assert lines[2].startswith("| fcn8s:resnet18@fast | ") and "2 entries side by side" in lines[-1]

    # A grid killed after its first entry: run again, only the missing one trains.
    results = bench.results_dir(bench.parse_args(argv))
    (results / "fcn32s-resnet18-fast.json").unlink()
    assert bench.main(argv) == 0
    again = json.loads(table.with_suffix(".json").read_text())
    assert again[0] == rows[0]
    assert again[1]["run_dir"] != rows[1]["run_dir"]
    assert len(list(runs.glob("fcn8s-resnet18-fast-*"))) == 1
    assert len(list(runs.glob("fcn32s-resnet18-fast-*"))) == 2

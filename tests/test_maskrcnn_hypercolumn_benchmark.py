"""benchmarks/maskrcnn_hypercolumn.py without training: entries, recipes, subsets and the table."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from conftest import load_benchmark, write_multiclass_folder

from semseg.config import load_config, validate

bench = load_benchmark("maskrcnn_hypercolumn")


def args_for(tmp_path: Path, **extra: object) -> argparse.Namespace:
    args = bench.parse_args(["--budget-s", "10", "--runs", str(tmp_path / "runs")])
    for key, value in extra.items():
        setattr(args, key, value)
    return args


def test_entries_parse_and_refuse() -> None:
    assert bench.parse_entry("camvid/hypercolumn@grid=3") == bench.Entry("camvid", "hypercolumn", 3)
    assert bench.parse_entry("kitti/fcn8s").name == "kitti-fcn8s"
    for bad in ("voc/fcn8s", "camvid", "camvid/hypercolumn@k=2"):
        with pytest.raises(SystemExit):
            bench.parse_entry(bad)


def test_only_the_model_changes_except_for_maskrcnn(tmp_path: Path) -> None:
    args = args_for(tmp_path)
    reference = load_config("camvid_fast_cpu").to_dict()
    config = bench.entry_config(bench.parse_entry("camvid/hypercolumn@grid=2"), args)
    validate(config)
    changed = {
        f"{section}.{key}"
        for section, values in config.to_dict().items()
        for key, value in values.items()
        if reference[section][key] != value
    }
    bookkeeping = {f"train.{key}" for key in ("clock", "epochs", "progress", "overlay_samples")}
    bookkeeping |= {"train.out_dir", "train.name", "train.max_time_s", "data.root"}
    assert changed - bookkeeping == {"model.name", "model.grid"}
    assert config.train.max_time_s == 10 and config.train.clock == "cpu"
    maskrcnn = bench.entry_config(bench.parse_entry("camvid/maskrcnn-semantic"), args)
    assert bench.parse_entry("camvid/maskrcnn-semantic").config_name == "camvid_maskrcnn"
    assert maskrcnn.train.lr == config.train.lr and maskrcnn.train.batch_size < 8
    # as many warm-up steps as the recipe's: epochs / batch size (steps per epoch) agree
    maskrcnn_warmup = maskrcnn.train.warmup_epochs / maskrcnn.train.batch_size
    assert maskrcnn_warmup == config.train.warmup_epochs / config.train.batch_size
    assert (maskrcnn.data.height, maskrcnn.data.width) == (config.data.height, config.data.width)


def test_subset_folder_links_the_first_images(tmp_path: Path) -> None:
    source = write_multiclass_folder(tmp_path / "camvid", splits={"train": 5, "val": 3})
    entry = bench.parse_entry("camvid/hypercolumn")
    subset = bench.subset_folder(entry, source, 2, tmp_path / "runs")
    assert sorted(p.name for p in (subset / "train" / "masks").iterdir()) == [
        "train_000.png",
        "train_001.png",
    ]
    assert len(list((subset / "val" / "images").iterdir())) == 2
    assert (subset / "classes.yaml").read_text() == (source / "classes.yaml").read_text()


def result(entry: str, score: float, mask_ap: float | None = None) -> object:
    return bench.Result(
        entry=entry,
        config="c",
        score_name="mIoU",
        score=score,
        class_iou={"sky": 50.0, "car": None},
        seconds_per_image=0.1234,
        params=1_234_567,
        mask_ap=mask_ap,
        mask_ap50=None if mask_ap is None else 2 * mask_ap,
        epochs=3,
        run_dir="r",
    )


def test_table_gives_the_share_of_the_configs_own_model() -> None:
    table = bench.format_table(
        [result("camvid-fcn8s", 50.0), result("camvid-hypercolumn", 45.0, mask_ap=None)]
        + [result("camvid-maskrcnn-semantic", 20.0, mask_ap=5.0)]
    )
    rows = table.splitlines()[2:]
    assert "| mIoU 45.00 | 90 |" in rows[1] and "sky 50.0, car –" in rows[1]
    assert "| 5.0 (10.0) |" in rows[2] and "| 40 |" in rows[2]
    assert "1,234,567" in rows[0] and "0.123" in rows[0]

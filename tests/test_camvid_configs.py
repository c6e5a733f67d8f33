"""The packaged CamVid configurations load, validate and say what the issue asks of them."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest

from semseg.config import load_config, packaged_config_names, set_field, validate
from semseg.errors import SemsegError

REPO = Path(__file__).resolve().parents[1]


def test_camvid_segnet_is_the_papers_setting() -> None:
    config = load_config("camvid_segnet")
    config.data.root = "camvid"
    validate(config)
    assert config.data.kind == "folder" and config.data.class_table is None
    assert (config.data.height, config.data.width) == (360, 480)
    assert config.model.name == "segnet" and config.model.num_classes == 11
    train = config.train
    assert (train.optimizer, train.lr, train.schedule, train.batch_size) == (
        "sgd",
        0.1,
        "constant",
        12,
    )
    assert train.class_weights == "median_frequency"


def test_camvid_fast_cpu_is_the_measured_recipe() -> None:
    config = load_config("camvid_fast_cpu")
    config.data.root = "camvid"
    validate(config)
    assert config.model.num_classes == 11 and config.train.max_time_s == 600
    assert (config.model.name, config.model.backbone) == ("fcn8s", "mobilenet_v3_large")
    assert config.train.class_weights is None
    text = (REPO / "configs" / "camvid_fast_cpu.yaml").read_text()
    assert "PROVISIONAL" not in text and "BENCHMARKS.md" in text


def test_camvid_configs_are_packaged() -> None:
    packaged = resources.files("semseg") / "configs"
    assert {"camvid_segnet", "camvid_fast_cpu"} <= set(packaged_config_names())
    for name in ("camvid_segnet", "camvid_fast_cpu"):
        assert (REPO / "configs" / f"{name}.yaml").read_bytes() == (
            packaged / f"{name}.yaml"
        ).read_bytes()


def test_class_weights_option_is_checked() -> None:
    config = load_config("camvid_segnet")
    config.data.root = "camvid"
    set_field(config, "train.class_weights", "inverse")
    with pytest.raises(SemsegError, match="train.class_weights: unknown value"):
        validate(config)

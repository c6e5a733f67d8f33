"""Tests of semseg.config: packaged configurations, --set overrides and validation."""

from __future__ import annotations

import sys
from dataclasses import fields
from importlib import resources
from pathlib import Path

import pytest
from conftest import assert_one_line_error

from semseg.config import (
    Config,
    apply_overrides,
    config_from_dict,
    load_config,
    packaged_config_names,
    resolve_config,
    resolve_config_path,
    validate,
)
from semseg.errors import SemsegError

REPO = Path(__file__).resolve().parents[1]


def test_reference_config_values() -> None:
    config = load_config("kitti_fcn8s")
    assert config.model.name == "fcn8s"
    assert (config.data.height, config.data.width) == (160, 576)
    assert config.model.num_classes == 2
    assert config.train.epochs == 40
    assert config.train.batch_size == 16
    assert config.train.lr == pytest.approx(1e-4) and isinstance(config.train.lr, float)
    assert config.model.keep_prob == 0.5
    assert config.data.kind == "kitti" and config.data.root is None
    assert config.data.categories == ["um", "umm", "uu"]
    assert config.model.pretrained is False
    assert config.train.precision == "32"
    # needs --data before it validates; with it, it does
    with pytest.raises(SemsegError, match="--data"):
        validate(config)
    config.data.root = "somewhere"
    assert validate(config) is config


def test_demo_config_loads_and_validates() -> None:
    config = load_config("demo")
    assert config.data.kind == "synthetic"
    assert config.data.synthetic_size == [188, 621]
    assert config.model.width_mult == 0.25 and config.model.keep_prob == 1.0
    assert config.train.epochs == 16 and config.train.max_time_s is None  # stops by epochs
    validate(config)
    assert {"demo", "kitti_fcn8s"} <= set(packaged_config_names())
    # the name with .yaml resolves to the packaged file too
    assert resolve_config_path("demo.yaml").name == "demo.yaml"


def test_repo_configs_are_the_packaged_files() -> None:
    packaged = resources.files("semseg") / "configs"
    for name in ("kitti_fcn8s", "demo"):
        repo_file = REPO / "configs" / f"{name}.yaml"
        assert repo_file.is_file()
        assert repo_file.read_bytes() == (packaged / f"{name}.yaml").read_bytes()
        assert load_config(str(repo_file)) == load_config(name)


def test_unknown_config_name_lists_packaged(tmp_path: Path) -> None:
    with pytest.raises(SemsegError, match="kitti_fcn8s"):
        load_config("no_such_config")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(SemsegError, match="not valid YAML"):
        load_config(str(bad))


def test_apply_overrides_typed_values() -> None:
    config = apply_overrides(
        Config(), ["model.keep_prob=0.75", "train.epochs=3", "data.categories=um,uu"]
    )
    assert config.model.keep_prob == 0.75 and type(config.model.keep_prob) is float
    assert config.train.epochs == 3 and type(config.train.epochs) is int
    assert config.data.categories == ["um", "uu"]
    apply_overrides(
        config,
        [
            "train.lr=1e-3",
            "data.hflip=false",
            "data.synthetic_size=100,300",
            "model.backbone_weights=null",
            "data.root=/some/dir",
            "train.precision=32",
            "train.max_time_s=5",
        ],
    )
    assert config.train.lr == 1e-3 and type(config.train.lr) is float
    assert config.data.hflip is False
    assert config.data.synthetic_size == [100, 300]
    assert config.model.backbone_weights is None
    assert config.data.root == "/some/dir"
    assert config.train.precision == "32" and type(config.train.precision) is str
    assert config.train.max_time_s == 5.0 and type(config.train.max_time_s) is float
    # untouched fields keep their defaults
    assert config.train.batch_size == Config().train.batch_size


@pytest.mark.parametrize(
    "override, message",
    [
        ("foo.bar=1", "not of the form"),
        ("model=fcn8s", "not of the form"),
        ("model.nope=1", "unknown field"),
        ("train.epochs=abc", "train.epochs"),
        ("train.epochs=2.5", "train.epochs"),
        ("data.hflip=maybe", "data.hflip"),
        ("train.lr=fast", "train.lr"),
        ("data.synthetic_size=a,b", "data.synthetic_size"),
        ("train.epochs=null", "cannot be empty"),
        ("train.epochs", "expected section.field=value"),
    ],
)
def test_bad_overrides(override: str, message: str) -> None:
    with pytest.raises(SemsegError, match=message):
        apply_overrides(Config(), [override])


def test_config_from_dict_refuses_unknown_keys() -> None:
    with pytest.raises(SemsegError, match="unknown section"):
        config_from_dict({"optim": {"lr": 1}})
    with pytest.raises(SemsegError, match="unknown field"):
        config_from_dict({"train": {"learning_rate": 1}})
    with pytest.raises(SemsegError, match="must be a mapping"):
        config_from_dict({"train": [1, 2]})


def valid_config() -> Config:
    config = Config()
    config.data.root = "data"
    return validate(config)


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.keep_prob=0", "keep_prob"),
        ("model.keep_prob=1.5", "keep_prob"),
        ("data.height=16", r"data.height must be in \[32, 8192\]"),
        ("data.width=31", r"data.width must be in \[32, 8192\]"),
        ("data.root=null", "--data"),
        ("model.num_classes=3", "2 classes"),
        ("data.kind=coco", "data.kind"),
        ("data.task=sidewalk", "data.task"),
        ("data.categories=um,xx", "data.categories"),
        ("data.val_fraction=1", "val_fraction"),
        ("train.epochs=0", "at least 1"),
        ("train.lr=0", "train.lr"),
        ("train.precision=8", "precision"),
    ],
)
def test_validate_rejects_bad_values(override: str, message: str) -> None:
    config = apply_overrides(valid_config(), [override])
    with pytest.raises(SemsegError, match=message):
        validate(config)


def test_validate_accepts_other_kinds() -> None:
    config = apply_overrides(Config(), ["data.kind=synthetic", "model.num_classes=3"])
    validate(config)  # synthetic data needs no root; class count is free outside KITTI
    config = apply_overrides(Config(), ["data.kind=folder", "data.root=x", "model.num_classes=5"])
    validate(config)
    config = apply_overrides(valid_config(), ["model.keep_prob=1.0"])
    validate(config)


def test_resolve_config_returns_a_resolved_copy(tmp_path: Path) -> None:
    config = apply_overrides(Config(), ["data.kind=synthetic"])
    resolved = resolve_config(config, tmp_path / "run")
    assert (resolved.data.kind, resolved.data.root) == ("kitti", str(tmp_path / "run" / "data"))
    assert (config.data.kind, config.data.root) == ("synthetic", None)  # the caller's is as it was
    kitti = apply_overrides(Config(), ["data.root=somewhere"])
    assert resolve_config(kitti, tmp_path) == kitti and resolve_config(kitti, tmp_path) is not kitti
    with pytest.raises(SemsegError, match="--data"):
        resolve_config(Config(), tmp_path)  # resolving validates


def test_task_defaults_are_the_config_defaults() -> None:
    import inspect

    from semseg.config import ModelConfig, TrainConfig
    from semseg.tasks.segmentation import SegmentationTask

    parameters = inspect.signature(SegmentationTask).parameters
    train, model = TrainConfig(), ModelConfig()
    assert parameters["model_name"].default == model.name
    assert parameters["num_classes"].default == model.num_classes
    shared = set(parameters) & {f.name for f in fields(TrainConfig)}
    assert shared >= {"lr", "weight_decay", "optimizer", "schedule", "loss", "loss_weight"}
    for name in shared:
        assert parameters[name].default == getattr(train, name), name


def alias_bomb(levels: int) -> str:
    """A config whose string field nests ``9 ** levels`` strings through aliases."""
    lines = ["train:", "  name:", "    - &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for level in range(1, levels + 1):
        refs = ", ".join([f"*a{level - 1}"] * 9)
        lines.append(f"    - &a{level} [{refs}]")
    return "\n".join(lines) + "\n"


def test_yaml_aliases_are_refused_before_expansion(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(alias_bomb(6))  # 9**6 strings if expanded
    assert len(bomb.read_bytes()) < 600
    with pytest.raises(SemsegError, match="anchors and aliases") as error:
        load_config(str(bomb))
    message = str(error.value)
    assert str(bomb) in message and "line 3" in message
    assert "\n" not in message and len(message) < 200 + len(str(bomb))
    with pytest.raises(SemsegError, match="anchors and aliases"):
        apply_overrides(Config(), ["train.name=[&a x, *a]"])
    # an anchor alone is refused too (it only exists to be aliased)
    (tmp_path / "anchor.yaml").write_text("train: &t\n  epochs: 2\n")
    with pytest.raises(SemsegError, match="anchors and aliases"):
        load_config(str(tmp_path / "anchor.yaml"))


@pytest.mark.parametrize(
    "text",
    [
        "train:\n  name: " + "[" * 50 + "x" + "]" * 50 + "\n",
        "train:\n  name: {" + ", ".join(f"k{i}: {'v' * 500}" for i in range(2000)) + "}\n",
        "data:\n  categories: [[" + ", ".join(["um"] * 5000) + "]]\n",
        "train:\n  " + "x" * 5000 + ": 1\n",
        "train:\n  name: " + "[" * 5000 + "]" * 5000 + "\n",
    ],
    ids=["nested-list", "huge-mapping", "nested-list-field", "long-key", "deep-nesting"],
)
def test_nested_or_huge_values_give_a_short_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "big.yaml"
    path.write_text(text)
    with pytest.raises(SemsegError) as error:
        load_config(str(path))
    message = str(error.value)
    assert "\n" not in message and len(message) < 400 + len(str(path)), message[:500]


# ------------------------------------------------------- every bad value refused up front


@pytest.mark.parametrize(
    "override, field",
    [
        ("train.lr=.nan", "train.lr"),
        ("train.lr=.inf", "train.lr"),
        ("train.grad_clip=.nan", "train.grad_clip"),
        ("train.weight_decay=-1", "train.weight_decay"),
        ("data.scale_crop=5", "data.scale_crop"),
        ("data.num_workers=-1", "data.num_workers"),
        ("train.devices=0", "train.devices"),
        ("train.max_time_s=-1", "train.max_time_s"),
        ("data.color_jitter=-3", "data.color_jitter"),
        ("train.loss_weight=.nan", "train.loss_weight"),
        ("train.val_every=2", "train.val_every"),
        ("train.accelerator=abacus", "train.accelerator"),
        ("train.strategy=telepathy", "train.strategy"),
        ("model.name=nonet", "model.name"),
        ("train.seed=-1", "train.seed"),
        ("train.name=a/b", "train.name"),
    ],
)
def test_train_refuses_bad_values_before_the_run_folder(
    tmp_path: Path,
    override: str,
    field: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``semseg train --set`` as the command runs it (its ``main``, in this process)."""
    from semseg.cli import main

    runs = tmp_path / "runs"
    argv = ["semseg", "train", "--config", "demo", "--out-dir", str(runs), "--set", override]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    assert_one_line_error(capsys.readouterr().err, field)
    assert not runs.exists()


def test_train_refuses_a_bad_value_in_a_fresh_process(tmp_path: Path) -> None:
    from conftest import run_cli

    runs = tmp_path / "runs"
    result = run_cli("train", "--config", "demo", "--out-dir", str(runs), "--set", "train.lr=.nan")
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "train.lr")
    assert not runs.exists()


@pytest.mark.parametrize(
    "override",
    [
        "train.lr=nan",
        "train.grad_clip=-0.5",
        "train.devices=1,1",
        "train.devices=x",
        "data.synthetic_size=100",
        "data.categories=",
        "model.num_classes=256",
        "model.width_mult=0",
        "train.warmup_epochs=-1",
        "train.min_lr_factor=2",
        "data.synthetic_train=1",
        "train.overlay_samples=-1",
        "train.num_nodes=0",
    ],
)
def test_validate_names_the_field(override: str) -> None:
    config = apply_overrides(Config(), ["data.kind=synthetic"])
    with pytest.raises(SemsegError) as error:
        validate(apply_overrides(config, [override]))
    message = str(error.value)
    assert message.startswith(override.partition("=")[0]) and "\n" not in message, message


@pytest.mark.parametrize(
    "override",
    [
        "train.devices=auto",
        "train.devices=2",
        "train.devices=0,1",
        "train.devices=-1",
        "train.grad_clip=1.5",
        "train.max_time_s=0.5",
        "data.scale_crop=0.5",
        "train.accelerator=cpu",
        "train.strategy=ddp",
        "data.color_jitter=0",
    ],
)
def test_validate_accepts_good_values(override: str) -> None:
    validate(apply_overrides(Config(), ["data.kind=synthetic", override]))


def test_packaged_configs_are_valid() -> None:
    for name in packaged_config_names():
        config = load_config(name)
        config.data.root = config.data.root or "somewhere"
        validate(config)


def test_removed_field_in_an_old_run_config_still_loads(tmp_path: Path) -> None:
    """A run written before train.val_every was removed resumes and evaluates as before."""
    old = tmp_path / "config.yaml"
    old.write_text("data:\n  root: data\ntrain:\n  epochs: 3\n  val_every: 1\n")
    config = load_config(str(old))
    assert config.train.epochs == 3 and not hasattr(config.train, "val_every")
    with pytest.raises(SemsegError, match="train.val_every was removed"):
        apply_overrides(config, ["train.val_every=1"])
    with pytest.raises(SemsegError, match="unknown field"):  # other unknown names stay errors
        config_from_dict({"train": {"val_evry": 1}})

"""Run configuration: three sections (``data``, ``model``, ``train``) read from YAML.

Any field can be overridden with ``section.field=value`` (``--set`` on the command line); the
common fields also have plain flags. The resolved configuration is written into every run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from semseg.errors import SemsegError

IGNORE_INDEX = 255
CATEGORIES = ("um", "umm", "uu")


@dataclass
class DataConfig:
    """Where the images come from and how they are prepared."""

    kind: str = "kitti"  # kitti | folder | synthetic
    root: str | None = None  # KITTI: the folder that holds training/; folder: holds images/, masks/
    categories: list[str] = field(default_factory=lambda: list(CATEGORIES))
    task: str = "road"  # road | lane (KITTI ground truth to use)
    class_table: str | None = None  # folder datasets with colour masks: YAML class table
    height: int = 160
    width: int = 576
    val_fraction: float = 0.2
    num_workers: int = 0
    hflip: bool = True
    color_jitter: float = 0.2  # brightness/contrast/saturation strength; 0 disables
    scale_crop: float = 0.0  # smallest area fraction of a random crop; 0 disables
    synthetic_train: int = 200  # kind=synthetic: scenes generated for training + validation
    synthetic_size: list[int] = field(default_factory=lambda: [375, 1242])  # generated H, W
    skip_bad: bool = False  # skip unreadable samples with a counted warning instead of failing


@dataclass
class ModelConfig:
    """Which network, and how it starts."""

    name: str = "fcn8s"
    num_classes: int = 2
    backbone: str = "vgg16"
    keep_prob: float = 0.5
    width_mult: float = 1.0
    pretrained: bool = False
    backbone_weights: str | None = None


@dataclass
class TrainConfig:
    """The optimisation and the run's bookkeeping."""

    epochs: int = 40
    batch_size: int = 16
    lr: float = 1e-4
    weight_decay: float = 0.0
    # The recipe (defaults: the reference exercise, Adam at a constant lr, plain CE, no clipping).
    optimizer: str = "adam"  # adam | adamw (decoupled decay, none on biases and norms) | sgd
    schedule: str = "constant"  # constant | cosine | poly (over epochs, or max_time_s if sooner)
    warmup_epochs: float = 0.0  # linear lr warm-up from lr/steps to lr over this many epochs
    min_lr_factor: float = 0.0  # cosine/poly decay to lr * this
    loss: str = "ce"  # ce | ce_dice | ce_lovasz (cross-entropy plus soft Dice or Lovasz-softmax)
    loss_weight: float = 1.0  # weight of the Dice / Lovasz term
    grad_clip: float | None = None  # clip the gradient norm to this (Trainer gradient_clip_val)
    fused_optimizer: bool | None = None  # Adam/AdamW's fused step; null: on, except 16-mixed
    seed: int = 0
    precision: str = "32"  # 32 | bf16-mixed | 16-mixed
    channels_last: bool | None = None  # NHWC weights; null: on for bf16-mixed on the CPU
    accelerator: str = "auto"
    devices: str = "auto"  # "auto", a count ("2") or a list ("0,1")
    num_nodes: int = 1
    strategy: str = "auto"
    max_time_s: float | None = None  # stop after this many seconds of training
    clock: str = "wall"  # max_time_s in wall seconds, or "cpu": process CPU seconds / threads
    val_every: int = 1  # validate every N epochs
    overlay_samples: int = 4
    name: str = "run"
    out_dir: str = "runs"
    run_dir: str | None = None  # an explicit run folder instead of out_dir/name-timestamp
    progress: bool = True


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}


def packaged_config_names() -> list[str]:
    """Names of the configurations shipped with semseg (``kitti_fcn8s``, ``demo``, ...)."""
    folder = resources.files("semseg") / "configs"
    return sorted(
        p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml")
    )


def resolve_config_path(name_or_path: str) -> Path:
    """A config file path, or the name of a packaged configuration."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    packaged = resources.files("semseg") / "configs" / f"{path.stem}.yaml"
    if path.suffix in ("", ".yaml") and packaged.is_file():
        return Path(str(packaged))
    raise SemsegError(
        f"config not found: {name_or_path} (packaged: {', '.join(packaged_config_names())})"
    )


def load_config(name_or_path: str | None = None) -> Config:
    """Read a YAML config (or return defaults) and check every key."""
    if name_or_path is None:
        return Config()
    path = resolve_config_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise SemsegError(f"config {path} is not valid YAML: {error}".splitlines()[0]) from error
    return config_from_dict(raw, source=str(path))


def config_from_dict(raw: dict[str, Any], source: str = "config") -> Config:
    """A :class:`Config` from nested dicts; unknown sections or fields are errors."""
    if not isinstance(raw, dict):
        raise SemsegError(f"{source}: expected a mapping with sections data, model, train")
    config = Config()
    for section_name, values in raw.items():
        if section_name not in SECTIONS:
            raise SemsegError(f"{source}: unknown section {section_name!r} (data, model, train)")
        if not isinstance(values, dict):
            raise SemsegError(f"{source}: section {section_name!r} must be a mapping")
        for key, value in values.items():
            set_field(config, f"{section_name}.{key}", value, source)
    return config


def set_field(config: Config, dotted: str, value: Any, source: str = "override") -> None:
    """Set ``section.field`` to ``value``, converted to the field's type."""
    section_name, _, key = dotted.partition(".")
    if section_name not in SECTIONS or not key:
        raise SemsegError(f"{source}: {dotted!r} is not of the form data|model|train.FIELD")
    section = getattr(config, section_name)
    known = {f.name: f for f in fields(section)}
    if key not in known:
        raise SemsegError(
            f"{source}: unknown field {dotted!r}; {section_name} has: {', '.join(known)}"
        )
    current = getattr(section, key)
    setattr(section, key, coerce(value, current, known[key], dotted))


def coerce(value: Any, current: Any, spec: dataclasses.Field, dotted: str) -> Any:
    """Convert a YAML or command-line value to the type of the field it sets."""
    kind = str(spec.type)
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
        if "None" in kind:
            return None
        raise SemsegError(f"{dotted} cannot be empty")
    try:
        if kind.startswith("list"):
            items = value if isinstance(value, list) else str(value).split(",")
            item_type = int if "int" in kind else str
            return [item_type(str(item).strip()) for item in items]
        if kind.startswith("bool"):
            return parse_bool(value)
        if kind.startswith("int"):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if kind.startswith("float"):
            return float(value)
        return str(value)
    except (TypeError, ValueError) as error:
        raise SemsegError(f"{dotted}: cannot use {value!r} (expected {kind})") from error


def parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(value)


def apply_overrides(config: Config, overrides: list[str]) -> Config:
    """Apply ``section.field=value`` strings (values parsed as YAML scalars)."""
    for item in overrides:
        dotted, sep, text = item.partition("=")
        if not sep:
            raise SemsegError(f"--set {item!r}: expected section.field=value")
        value = yaml.safe_load(text) if text else ""
        set_field(config, dotted.strip(), value, source="--set")
    return config


def validate(config: Config) -> Config:
    """Cross-field checks that a bad flag would otherwise turn into a crash later."""
    data, model, train = config.data, config.model, config.train
    if data.kind not in ("kitti", "folder", "synthetic"):
        raise SemsegError(f"data.kind must be kitti, folder or synthetic, got {data.kind!r}")
    if data.kind != "synthetic" and not data.root:
        raise SemsegError(f"data.kind={data.kind} needs --data DIR")
    if data.task not in ("road", "lane"):
        raise SemsegError(f"data.task must be road or lane, got {data.task!r}")
    unknown = sorted(set(data.categories) - set(CATEGORIES))
    if unknown or not data.categories:
        raise SemsegError(f"data.categories must be among {', '.join(CATEGORIES)}, got {unknown}")
    if data.height < 32 or data.width < 32:
        raise SemsegError(f"input size must be at least 32x32, got {data.height}x{data.width}")
    if not 0.0 < data.val_fraction < 1.0:
        raise SemsegError(f"data.val_fraction must be in (0, 1), got {data.val_fraction}")
    if data.kind == "kitti" and model.num_classes != 2:
        raise SemsegError(
            f"KITTI road/lane has 2 classes, but model.num_classes={model.num_classes}"
        )
    if not 0.0 < model.keep_prob <= 1.0:
        raise SemsegError(f"model.keep_prob must be in (0, 1], got {model.keep_prob}")
    if train.epochs < 1 or train.batch_size < 1:
        raise SemsegError("train.epochs and train.batch_size must be at least 1")
    if train.lr <= 0:
        raise SemsegError(f"train.lr must be positive, got {train.lr}")
    if train.optimizer not in ("adam", "adamw", "sgd"):
        raise SemsegError(f"train.optimizer must be adam, adamw or sgd, got {train.optimizer!r}")
    if train.schedule not in ("constant", "cosine", "poly"):
        raise SemsegError(f"train.schedule must be constant, cosine or poly: {train.schedule!r}")
    if train.warmup_epochs < 0 or not 0.0 <= train.min_lr_factor <= 1.0:
        raise SemsegError("train.warmup_epochs must be >= 0 and train.min_lr_factor in [0, 1]")
    if train.loss not in ("ce", "ce_dice", "ce_lovasz") or train.loss_weight < 0:
        raise SemsegError(f"train.loss must be ce, ce_dice or ce_lovasz, got {train.loss!r}")
    if train.clock not in ("wall", "cpu"):
        raise SemsegError(f"train.clock must be wall or cpu, got {train.clock!r}")
    if train.grad_clip is not None and train.grad_clip <= 0:
        raise SemsegError(f"train.grad_clip must be positive (or null), got {train.grad_clip}")
    if train.precision not in ("32", "bf16-mixed", "16-mixed", "64"):
        raise SemsegError(f"train.precision must be 32, bf16-mixed or 16-mixed: {train.precision}")
    return config


def save_config(config: Config, path: Path) -> None:
    from semseg.io import write_text_atomic

    write_text_atomic(path, yaml.safe_dump(config.to_dict(), sort_keys=False))

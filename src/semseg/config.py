"""Run configuration: three sections (``data``, ``model``, ``train``) read from YAML.

Any field can be overridden with ``section.field=value`` (``--set`` on the command line); the
common fields also have plain flags. The resolved configuration is written into every run.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import reprlib
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from semseg.errors import SemsegError
from semseg.io import first_line

IGNORE_INDEX = 255
CATEGORIES = ("um", "umm", "uu")
MESSAGE_VALUE_CHARS = 60  # a value quoted in an error message is cut to this many characters

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict = 2, 4, 4
_REPR.maxstring = _REPR.maxother = MESSAGE_VALUE_CHARS


def describe(value: Any) -> str:
    """A short, one-line ``repr`` of ``value`` for an error message (nested values bounded)."""
    text = " ".join(_REPR.repr(value).split())
    if len(text) > MESSAGE_VALUE_CHARS:
        text = text[: MESSAGE_VALUE_CHARS - 3] + "..."
    return text


class NoAliasSafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses anchors and aliases (``&a`` / ``*a``).

    A configuration has no use for them, and nested aliases let a few hundred bytes expand to
    gigabytes (the "billion laughs" attack); they are refused as they are met, before anything
    is expanded.
    """

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            mark = event.start_mark
            raise SemsegError(
                f"{mark.name}, line {mark.line + 1}: YAML anchors and aliases "
                "(&name, *name) are not allowed in a configuration"
            )
        return super().compose_node(parent, index)


def safe_load_yaml(text: str, source: str = "<text>") -> Any:
    """Parse YAML with :class:`NoAliasSafeLoader`; a one-line error names ``source``."""
    loader = NoAliasSafeLoader(text)
    loader.name = source
    try:
        return loader.get_single_data()
    except yaml.YAMLError as error:
        raise SemsegError(f"{source} is not valid YAML: {first_line(error)}") from error
    except RecursionError as error:
        raise SemsegError(f"{source}: YAML nested too deeply") from error
    finally:
        loader.dispose()


def setting(default: Any = dataclasses.MISSING, *, factory: Any = None, **rule: Any) -> Any:
    """A config field with its default and the range :func:`validate` holds it to.

    ``rule``: ``ge``/``gt``/``le``/``lt`` bounds (for a list: of every item), ``choices`` (a
    tuple, or a function returning one, for choices known only at run time; ``what`` names a
    choice in the error), and ``items`` (the required list length). Numbers must also be finite.
    """
    if factory is not None:
        return field(default_factory=factory, metadata=rule)
    return field(default=default, metadata=rule)


# semseg.weak.pseudolabels.METHODS (spelled out: that module loads numpy and OpenCV)
BOX_METHODS = ("box", "box-i", "grabcut", "grabcut-i", "candidates", "m-and-g")
KINDS = ("kitti", "folder", "voc", "cityscapes", "synthetic")
MAX_INPUT_SIDE = 8192  # pixels; larger training inputs are refused, not allocated


@dataclass
class DataConfig:
    """Where the images come from and how they are prepared."""

    kind: str = setting("kitti", choices=KINDS)
    root: str | None = None  # KITTI: the folder that holds training/; folder: holds images/, masks/
    categories: list[str] = setting(factory=lambda: list(CATEGORIES), choices=CATEGORIES)
    task: str = setting("road", choices=("road", "lane"))  # KITTI ground truth to use
    # multi-class data: YAML class table; None: the data's own (ROOT/classes.yaml, VOC, Cityscapes)
    class_table: str | None = None
    height: int = setting(160, ge=32, le=MAX_INPUT_SIDE)
    width: int = setting(576, ge=32, le=MAX_INPUT_SIDE)
    val_fraction: float = setting(0.2, gt=0.0, lt=1.0)
    num_workers: int = setting(0, ge=0)
    hflip: bool = True
    # brightness/contrast/saturation strength; 0 disables
    color_jitter: float = setting(0.2, ge=0.0)
    scale_crop: float = setting(0.0, ge=0.0, le=1.0)  # smallest area fraction of a random crop
    # kind=synthetic: scenes generated for training + validation, and their H, W
    synthetic_train: int = setting(200, ge=2)
    synthetic_size: list[int] = setting(factory=lambda: [375, 1242], items=2, ge=16, le=8192)
    skip_bad: bool = False  # skip unreadable samples with a counted warning instead of failing
    # Weak supervision: train on these label PNGs (NAME.png per training image, 255 = ignore)
    # instead of the ground-truth masks (validation keeps the ground truth); box annotations
    # (COCO JSON or a folder of VOC XML) for train.rounds > 1 and train.supervision=boxsup.
    labels: str | None = None
    boxes: str | None = None
    # region models: the proposal cache (semseg proposals --out); None: ~/.cache/semseg/proposals
    proposals_dir: str | None = None


def _model_names() -> tuple[str, ...]:
    from semseg.models import list_models

    return tuple(list_models())


@dataclass
class ModelConfig:
    """Which network, and how it starts."""

    name: str = setting("fcn8s", choices=_model_names, what="model")
    num_classes: int = setting(2, ge=2, le=IGNORE_INDEX)  # mask values are uint8; 255 = ignore
    backbone: str = "vgg16"
    keep_prob: float = setting(0.5, gt=0.0, le=1.0)
    width_mult: float = setting(1.0, gt=0.0, le=8.0)
    pretrained: bool = False
    backbone_weights: str | None = None
    # hypercolumn: K of the K x K location-specific classifiers; null: the model's default
    grid: int | None = setting(None, ge=1, le=16)
    # region models (rcnn-regions, sds): how an image's region proposals are made
    proposals: str = setting(
        "felzenszwalb", choices=("felzenszwalb", "slic", "selective-search"), what="proposals"
    )


def _accelerators() -> tuple[str, ...]:
    from lightning.pytorch.accelerators import AcceleratorRegistry

    return ("auto", "gpu", *sorted(AcceleratorRegistry.available_accelerators()))


def _strategies() -> tuple[str, ...]:
    from lightning.pytorch.strategies import StrategyRegistry

    return ("auto", *StrategyRegistry.available_strategies())


@dataclass
class TrainConfig:
    """The optimisation and the run's bookkeeping."""

    epochs: int = setting(40, ge=1)
    batch_size: int = setting(16, ge=1)
    lr: float = setting(1e-4, gt=0.0)
    weight_decay: float = setting(0.0, ge=0.0)
    # The recipe (defaults: the reference exercise, Adam at a constant lr, plain CE, no clipping).
    # adam | adamw (decoupled decay, none on biases and norms) | sgd
    optimizer: str = setting("adam", choices=("adam", "adamw", "sgd"))
    # constant | cosine | poly (over epochs, or max_time_s if sooner)
    schedule: str = setting("constant", choices=("constant", "cosine", "poly"))
    # linear lr warm-up from lr/steps to lr over this many epochs
    warmup_epochs: float = setting(0.0, ge=0.0)
    min_lr_factor: float = setting(0.0, ge=0.0, le=1.0)  # cosine/poly decay to lr * this
    # ce | ce_dice | ce_lovasz (cross-entropy plus soft Dice or Lovasz-softmax)
    loss: str = setting("ce", choices=("ce", "ce_dice", "ce_lovasz"))
    loss_weight: float = setting(1.0, ge=0.0)  # weight of the Dice / Lovasz term
    # null | median_frequency (cross-entropy class weights, SegNet's balancing)
    class_weights: str | None = setting(None, choices=("median_frequency",))
    # clip the gradient norm to this (Trainer gradient_clip_val); null: no clipping
    grad_clip: float | None = setting(None, gt=0.0)
    # Adam/AdamW's fused step; null: on, except under 16-mixed and clipped bf16-mixed
    fused_optimizer: bool | None = None
    seed: int = setting(0, ge=0, le=2**32 - 1)
    precision: str = setting("32", choices=("32", "bf16-mixed", "16-mixed", "64"))
    channels_last: bool | None = None  # NHWC weights; null: on for bf16-mixed on the CPU
    accelerator: str = setting("auto", choices=_accelerators)
    devices: str = "auto"  # "auto", a count ("2"), "-1" (all) or a list of ids ("0,1")
    num_nodes: int = setting(1, ge=1)
    strategy: str = setting("auto", choices=_strategies)
    max_time_s: float | None = setting(None, gt=0.0)  # stop after this many seconds of training
    # max_time_s in wall seconds, or "cpu": process CPU seconds / threads
    clock: str = setting("wall", choices=("wall", "cpu"))
    overlay_samples: int = setting(4, ge=0)
    name: str = "run"  # run folder prefix: a plain file name
    out_dir: str = "runs"
    run_dir: str | None = None  # an explicit run folder instead of out_dir/name-timestamp
    progress: bool = True
    # What the training labels are (semseg.box_training, semseg.training_tags): "full" trains
    # on the masks (or data.labels); "boxsup" chooses each box's candidate segment per epoch
    # (BoxSup); "tags" learns from image-level tags in train.tags (MIL with LSE pooling).
    supervision: str = setting("full", choices=("full", "boxsup", "tags"))
    rounds: int = setting(1, ge=1)  # recursive training rounds (Simple Does It); 1: plain
    round_method: str = setting("box", choices=BOX_METHODS)  # round 0's labels from the boxes
    round_crf: bool = False  # dense-CRF refinement of each later round's labels
    boxsup_lambda: float = setting(3.0, ge=0.0)  # BoxSup: weight of the network's cross-entropy
    # supervision=tags: the tags file (CSV or JSON, semseg derive --to tags) and the
    # sharpness r of the Log-Sum-Exp pooling (r -> 0: mean pooling, r -> inf: max pooling)
    tags: str | None = None
    lse_r: float = setting(2.0, gt=0.0, le=1000.0)


# Fields that older releases wrote into config.yaml but that no longer do anything: a run's
# config file that has them still loads (for --resume and evaluate); --set refuses them.
REMOVED_FIELDS = {"train.val_every": "validation runs after every epoch"}


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
    raw = safe_load_yaml(path.read_text(), source=f"config {path}") or {}
    return config_from_dict(raw, source=str(path))


def config_from_dict(raw: dict[str, Any], source: str = "config") -> Config:
    """A :class:`Config` from nested dicts; unknown sections or fields are errors."""
    if not isinstance(raw, dict):
        raise SemsegError(f"{source}: expected a mapping with sections data, model, train")
    config = Config()
    for section_name, values in raw.items():
        if section_name not in SECTIONS:
            raise SemsegError(
                f"{source}: unknown section {describe(section_name)} (data, model, train)"
            )
        if not isinstance(values, dict):
            raise SemsegError(f"{source}: section {section_name!r} must be a mapping")
        for key, value in values.items():
            if f"{section_name}.{key}" in REMOVED_FIELDS:
                continue  # written by an older release; it did nothing then either
            set_field(config, f"{section_name}.{key}", value, source)
    return config


def set_field(config: Config, dotted: str, value: Any, source: str = "override") -> None:
    """Set ``section.field`` to ``value``, converted to the field's type."""
    section_name, _, key = str(dotted).partition(".")
    if section_name not in SECTIONS or not key:
        raise SemsegError(f"{source}: {describe(dotted)} is not of the form data|model|train.FIELD")
    if dotted in REMOVED_FIELDS:
        raise SemsegError(f"{source}: {dotted} was removed ({REMOVED_FIELDS[dotted]})")
    section = getattr(config, section_name)
    known = {f.name: f for f in fields(section)}
    if key not in known:
        raise SemsegError(
            f"{source}: unknown field {describe(dotted)}; {section_name} has: {', '.join(known)}"
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
    scalar = (str, int, float, bool)
    try:
        if kind.startswith("list"):
            items = value if isinstance(value, list) else str(value).split(",")
            if not isinstance(value, (list, *scalar)) or not all(
                isinstance(item, scalar) for item in items
            ):
                raise TypeError(type(value).__name__)
            item_type = int if "int" in kind else str
            return [item_type(str(item).strip()) for item in items]
        if not isinstance(value, scalar):
            raise TypeError(type(value).__name__)
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
        raise SemsegError(f"{dotted}: cannot use {describe(value)} (expected {kind})") from error


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
        value = safe_load_yaml(text, source=f"--set {dotted.strip()}") if text else ""
        set_field(config, dotted.strip(), value, source="--set")
    return config


def validate(config: Config) -> Config:
    """Check every field against its range (:func:`setting`) and the fields against each other,
    before anything is created; a one-line error names the first field that is wrong."""
    for section_name, section_type in SECTIONS.items():
        section = getattr(config, section_name)
        for spec in fields(section_type):
            check_field(f"{section_name}.{spec.name}", getattr(section, spec.name), spec)
    check_cross_fields(config)
    return config


def check_field(dotted: str, value: Any, spec: dataclasses.Field) -> None:
    """``value`` fits the type and the rule of field ``spec`` (``dotted``: its name)."""
    if value is None:
        if "None" not in str(spec.type):
            raise SemsegError(f"{dotted} cannot be empty")
        return
    rule = dict(spec.metadata)
    items = value if isinstance(value, list) else [value]
    if "items" in rule and len(items) != rule["items"]:
        raise SemsegError(f"{dotted} needs {rule['items']} values, got {describe(value)}")
    if isinstance(value, list) and not value:
        raise SemsegError(f"{dotted} cannot be an empty list")
    for item in items:
        check_value(dotted, item, rule)
    if dotted == "train.devices":
        check_devices(value)
    if dotted == "train.name" and (not value or any(c in value for c in "/\\\0")):
        raise SemsegError(f"train.name must be a plain file name, got {describe(value)}")


def check_value(dotted: str, value: Any, rule: dict[str, Any]) -> None:
    """One number or choice against ``rule`` (see :func:`setting`)."""
    choices = rule.get("choices")
    if choices is not None:
        allowed = choices() if callable(choices) else choices
        if value not in allowed:
            raise SemsegError(
                f"{dotted}: unknown {rule.get('what', 'value')} {describe(value)}; "
                f"choose one of {', '.join(map(str, allowed))}"
            )
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if not math.isfinite(value):
        raise SemsegError(f"{dotted} must be a finite number, got {value}")
    low = ("gt", rule["gt"]) if "gt" in rule else ("ge", rule.get("ge"))
    high = ("lt", rule["lt"]) if "lt" in rule else ("le", rule.get("le"))
    fits = (low[1] is None or (value > low[1] if low[0] == "gt" else value >= low[1])) and (
        high[1] is None or (value < high[1] if high[0] == "lt" else value <= high[1])
    )
    if not fits:
        raise SemsegError(f"{dotted} must be {range_words(low, high)}, got {value}")


def range_words(low: tuple[str, Any], high: tuple[str, Any]) -> str:
    """``in (0, 1]``, ``at least 1``, ``greater than 0`` or ``at most 8``."""
    if low[1] is not None and high[1] is not None:
        opening, closing = "(" if low[0] == "gt" else "[", ")" if high[0] == "lt" else "]"
        return f"in {opening}{low[1]}, {high[1]}{closing}"
    if low[1] is not None:
        return f"{'greater than' if low[0] == 'gt' else 'at least'} {low[1]}"
    return f"{'less than' if high[0] == 'lt' else 'at most'} {high[1]}"


def check_devices(devices: str) -> None:
    """``auto``, a positive count, ``-1`` (every device) or a list of device ids ``0,1``."""
    text = str(devices).strip()
    ids = [item.strip() for item in text.split(",")] if "," in text else None
    if text in ("auto", "-1") or (text.isdigit() and int(text) > 0):
        return
    if ids and all(item.isdigit() for item in ids) and len(set(ids)) == len(ids):
        return
    raise SemsegError(
        f"train.devices must be auto, a positive count, -1 or device ids like 0,1; "
        f"got {describe(devices)}"
    )


def check_cross_fields(config: Config) -> None:
    """Checks that involve more than one field."""
    data, model = config.data, config.model
    if data.kind != "synthetic" and not data.root:
        raise SemsegError(f"data.kind={data.kind} needs --data DIR (data.root)")
    if data.kind == "kitti" and model.num_classes != 2:
        raise SemsegError(
            f"KITTI road/lane has 2 classes, but model.num_classes={model.num_classes}"
        )
    check_weak_fields(config)
    check_tag_supervision(config)


def check_weak_fields(config: Config) -> None:
    """The weak-supervision fields: folders and files that exist, and boxes where needed."""
    data, train = config.data, config.train
    if data.labels is not None and not Path(data.labels).is_dir():
        raise SemsegError(f"--labels {data.labels}: label folder not found")
    if data.boxes is not None and not Path(data.boxes).exists():
        raise SemsegError(f"--boxes {data.boxes}: box file not found")
    needs_boxes = train.rounds > 1 or train.supervision == "boxsup"
    if needs_boxes and data.boxes is None:
        what = "--rounds" if train.rounds > 1 else "--supervision boxsup"
        raise SemsegError(f"{what} needs --boxes FILE (COCO JSON or a folder of VOC XML)")
    if train.supervision == "boxsup" and (train.rounds > 1 or data.labels is not None):
        raise SemsegError(
            "--supervision boxsup chooses its own labels every epoch: drop --rounds and --labels"
        )


def check_tag_supervision(config: Config) -> None:
    """``train.supervision: tags`` needs its tags file (and only then is one used)."""
    train = config.train
    if train.supervision == "tags" and not train.tags:
        raise SemsegError("train.supervision=tags needs the tags file: --tags FILE (train.tags)")
    if train.tags and train.supervision != "tags":
        raise SemsegError(f"--tags (train.tags) is for --supervision tags, not {train.supervision}")


def resolve_config(config: Config, run_dir: Path) -> Config:
    """The validated configuration a run in ``run_dir`` uses, as a new object (``config`` is left
    as it is): synthetic scenes are generated once into ``run_dir/data`` and read as KITTI.

    Resolved before the run folder is made and never changed during the run; this is what the
    run's ``config.yaml`` holds, so a resumed run reads the same data.
    """
    resolved = copy.deepcopy(validate(config))
    for key in ("labels", "boxes"):  # the run records where its labels came from
        if getattr(resolved.data, key) is not None:
            setattr(resolved.data, key, str(Path(getattr(resolved.data, key)).resolve()))
    if resolved.data.kind == "synthetic":
        resolved.data.kind = "kitti"
        resolved.data.root = str(Path(run_dir) / "data")
    return resolved


def save_config(config: Config, path: Path) -> None:
    from semseg.io import write_text_atomic

    write_text_atomic(path, yaml.safe_dump(config.to_dict(), sort_keys=False))

"""Loading semseg checkpoints safely (``weights_only=True``) and rebuilding their model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from semseg.errors import SemsegError
from semseg.models import build_model
from semseg.tasks.segmentation import INIT_ONLY_OPTIONS

REQUIRED_HPARAMS = ("model_name", "num_classes", "input_size")


@dataclass
class LoadedModel:
    """A model rebuilt from a checkpoint, with what inference needs to know about it."""

    model: nn.Module
    model_name: str
    num_classes: int
    input_size: tuple[int, int]  # (height, width) the model was trained at
    positive_class: int
    class_names: list[str]
    path: Path


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint's contents, loaded without executing pickled code."""
    path = Path(path)
    if not path.is_file():
        raise SemsegError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise SemsegError(f"{path} is not a semseg checkpoint (cannot be loaded safely)") from error
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    if (
        not isinstance(hparams, dict)
        or not all(key in hparams for key in REQUIRED_HPARAMS)
        or "state_dict" not in checkpoint
    ):
        raise SemsegError(f"{path} is not a semseg checkpoint (no model hyperparameters)")
    return checkpoint


def load_model(
    path: str | Path,
    expected_classes: int | None = None,
    expected_model: str | None = None,
) -> LoadedModel:
    """Rebuild the checkpoint's model in eval mode; refuse a class count or name that differs."""
    checkpoint = read_checkpoint(path)
    hparams = checkpoint["hyper_parameters"]
    num_classes = int(hparams["num_classes"])
    if expected_classes is not None and expected_classes != num_classes:
        raise SemsegError(
            f"{path} predicts {num_classes} classes but {expected_classes} are expected here"
        )
    model_name = str(hparams["model_name"])
    if expected_model is not None and expected_model != model_name:
        raise SemsegError(f"{path} holds model {model_name!r}, not {expected_model!r}")
    options = {
        key: value
        for key, value in dict(hparams.get("model_options") or {}).items()
        if key not in INIT_ONLY_OPTIONS
    }
    model = build_model(model_name, num_classes, **options)
    state = {
        key.removeprefix("model."): value
        for key, value in checkpoint["state_dict"].items()
        if key.startswith("model.")
    }
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise SemsegError(f"{path}: weights do not fit model {model_name!r}") from error
    model.eval()
    height, width = (int(v) for v in hparams["input_size"])
    names = list(hparams.get("class_names") or [f"class{i}" for i in range(num_classes)])
    return LoadedModel(
        model=model,
        model_name=model_name,
        num_classes=num_classes,
        input_size=(height, width),
        positive_class=int(hparams.get("positive_class", 1)),
        class_names=names,
        path=Path(path),
    )

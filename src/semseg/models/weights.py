"""The one way a model gets starting weights for its backbone: torchvision's ImageNet weights
(``pretrained=True``, through torchvision's weights API, downloaded once and cached) or a local
``torch.save``-d state dict (``backbone_weights=PATH``, loaded with ``weights_only=True``).

:func:`starting_weights` checks the combination before any layer is built (not both; ImageNet
weights exist at ``width_mult`` 1.0 only), reads the file or fetches the weights, and turns every
failure (no network, no file, not a state dict) into a one-line :class:`SemsegError`. Which
torchvision weights belong to which backbone is the encoder registry's knowledge
(:func:`semseg.models.encoders.backbone_weights_for`).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
from torch import Tensor

from semseg.errors import SemsegError

StateDict = dict[str, Tensor]


def load_state_dict_file(path: str | Path) -> StateDict:
    """A state dict saved with ``torch.save``, loaded safely (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise SemsegError(f"backbone weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise SemsegError(f"cannot read backbone weights {path}: not a torch state dict") from error
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise SemsegError(f"backbone weights {path} do not hold a state dict")
    return state


def imagenet_state_dict(weights: str, label: str, module: str = "torchvision.models") -> StateDict:
    """torchvision's ``weights.IMAGENET1K_V1`` (an enum of ``module``, e.g. ``VGG16_Weights``)
    through its weights API; ``label`` names the network in the error shown without network."""
    try:
        enum = getattr(importlib.import_module(module), weights)
        return enum.IMAGENET1K_V1.get_state_dict(progress=True)
    except Exception as error:  # network errors come in many types (URLError, OSError, ...)
        raise SemsegError(
            f"could not fetch torchvision's ImageNet {label} weights ({weights}; no network?); "
            "download them on a connected machine and pass --backbone-weights PATH"
        ) from error


def check_weights_options(
    pretrained: bool, backbone_weights: str | Path | None, width_mult: float, label: str
) -> bool:
    """Whether weights are to be loaded; a SemsegError for a combination that cannot work."""
    if pretrained and backbone_weights:
        raise SemsegError("give either --pretrained or --backbone-weights, not both")
    if not (pretrained or backbone_weights):
        return False
    if width_mult != 1.0:
        raise SemsegError(f"ImageNet {label} weights need width_mult 1.0, got {width_mult}")
    return True


def starting_weights(
    pretrained: bool,
    backbone_weights: str | Path | None,
    width_mult: float,
    weights: str,
    label: str,
    module: str = "torchvision.models",
) -> StateDict | None:
    """The torchvision state dict to start from (ImageNet ``weights`` or a local file), or None
    when neither is asked for. ``label`` names the network in errors (e.g. ``VGG16-BN``)."""
    if not check_weights_options(pretrained, backbone_weights, width_mult, label):
        return None
    if pretrained:
        return imagenet_state_dict(weights, label, module)
    return load_state_dict_file(backbone_weights)  # type: ignore[arg-type]


__all__ = [
    "check_weights_options",
    "imagenet_state_dict",
    "load_state_dict_file",
    "starting_weights",
]

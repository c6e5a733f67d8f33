"""semseg: semantic segmentation of road scenes (FCN-8s on VGG16 for KITTI Road, and the classic
methods beside it), trained, evaluated, predicted and deployed.

The package's public Python API (:mod:`semseg.api`): :func:`build_model`, :func:`load_config`,
:func:`train`, :func:`load_checkpoint`, :class:`Segmenter`, :func:`evaluate` and
:class:`SemsegError`. They are imported on first use, so ``import semseg`` (and the ``semseg``
command) stays light. Subpackages own one job each and import only downwards: ``data``, ``models``,
``metrics`` at the bottom; ``tasks``, ``inference``, ``weak`` above them; ``training``,
``evaluation``, ``experiments``, ``serve`` and ``cli`` on top.
"""

from __future__ import annotations

import importlib
from typing import Any

from semseg.errors import SemsegError

__all__ = [
    "Segmentation",
    "Segmenter",
    "SemsegError",
    "build_model",
    "evaluate",
    "load_checkpoint",
    "load_config",
    "train",
]

_LAZY = {
    "build_model": "semseg.models",
    "Segmentation": "semseg.api",
    "Segmenter": "semseg.api",
    "evaluate": "semseg.api",
    "load_checkpoint": "semseg.api",
    "load_config": "semseg.api",
    "train": "semseg.api",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'semseg' has no attribute {name!r}")

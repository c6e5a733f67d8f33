"""Segmentation models and their registry: ``build_model(name, num_classes, **options)``."""

from semseg.models import (  # noqa: F401  (importing a module registers its models)
    deeplab,
    dilation,
    fcn,
    segnet,
)
from semseg.models.base import SegmentationModel
from semseg.models.registry import build_model, list_models, register_model

__all__ = ["SegmentationModel", "build_model", "list_models", "register_model"]

"""Segmentation models and their registry: ``build_model(name, num_classes, **options)``.

This package owns the networks (one module per architecture family, each citing its paper and
stating its shapes: ``(N, 3, H, W)`` RGB in [0, 1] to ``(N, num_classes, H, W)`` logits), the
model registry and its option rules (:mod:`~semseg.models.registry`: None is dropped, each model
takes only the options it declares, an option it cannot honour is refused), the one VGG16 trunk
(:mod:`~semseg.models.vgg`), the one backbone registry (:mod:`~semseg.models.encoders`), the one
way of getting ImageNet or local backbone weights (:mod:`~semseg.models.weights`), and
receptive-field arithmetic. Its modules may import only torch, torchvision, :mod:`semseg.errors`
and each other: nothing about data, training, inference or the command line (the region models'
proposals are installed into :mod:`~semseg.models.regions` by :mod:`semseg.regions`).
"""

from semseg.models import (  # noqa: F401  (importing a module registers its models)
    deeplab,
    dilation,
    fcn,
    hypercolumn,
    maskrcnn,
    regions,
    segnet,
)
from semseg.models.base import SegmentationModel
from semseg.models.registry import build_model, list_models, model_options, register_model

__all__ = ["SegmentationModel", "build_model", "list_models", "model_options", "register_model"]

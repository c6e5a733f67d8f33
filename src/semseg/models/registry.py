"""A small model registry: ``build_model(name, num_classes, **options)``."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from semseg.errors import SemsegError

ModelFactory = Callable[..., nn.Module]
_REGISTRY: dict[str, ModelFactory] = {}


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Class or function decorator that makes a model buildable by ``name``."""

    def decorator(factory: ModelFactory) -> ModelFactory:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = factory
        return factory

    return decorator


def list_models() -> list[str]:
    """Names of every registered model, sorted."""
    return sorted(_REGISTRY)


def build_model(name: str, num_classes: int, **options: object) -> nn.Module:
    """Build the model registered as ``name`` with ``num_classes`` output channels."""
    if name not in _REGISTRY:
        raise SemsegError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}")
    if num_classes < 1:
        raise SemsegError(f"num_classes must be at least 1, got {num_classes}")
    return _REGISTRY[name](num_classes=num_classes, **options)

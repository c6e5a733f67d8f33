"""The model registry: ``build_model(name, num_classes, **options)``.

A model declares the options it takes by the keyword parameters of its factory (a class's
``__init__`` or a function; ``register_model(name, **fixed)`` may fix some of them, such as the
FCN variant; a factory with ``**kwargs`` takes every option). :func:`build_model`

1. drops options whose value is None (timm's ``create_model`` rule: None means "the model's
   default");
2. checks the values of the options the models share (:data:`SHARED_OPTIONS`) in one place:
   ``keep_prob`` in (0, 1], ``width_mult`` positive, not both ``pretrained`` and
   ``backbone_weights``;
3. passes on the options the model declares;
4. drops an option the model does not declare only when its value asks for nothing the model
   fails to do (:data:`NOT_ASKED`: the value the training configuration writes when the user
   chose nothing, and for ``keep_prob`` also 1.0, no dropout); any other value is refused with a
   :class:`SemsegError` naming the model and the option, never silently ignored.

Rule 4 exists because the training configuration (``ModelConfig``) and the checkpoints and run
folders written with it hold every shared option for every model: SegNet has no dropout, yet a
configuration with the default ``keep_prob: 0.5`` must build it, and DeepLab is built on VGG16
only, yet receives the default ``backbone: vgg16``. ``keep_prob: 0.75`` for SegNet, or
``backbone: resnet18`` for DeepLab, is an error.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from semseg.errors import SemsegError

ModelFactory = Callable[..., nn.Module]

SHARED_OPTIONS = ("backbone", "keep_prob", "width_mult", "pretrained", "backbone_weights")
"""The options the training configuration passes to every model."""
INIT_ONLY_OPTIONS = ("pretrained", "backbone_weights")
"""Options that matter only when a model is first built (the weights come from the checkpoint
later): a checkpoint is rebuilt without them."""

NOT_ASKED: dict[str, tuple[object, ...]] = {
    "backbone": ("vgg16",),
    "keep_prob": (0.5, 1.0),
    "width_mult": (1.0,),
    "pretrained": (False,),
    "backbone_weights": (None, ""),
    "proposals": ("felzenszwalb",),
}
"""Per shared option, the values a model that does not take the option may ignore."""


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its factory, the options fixed at registration, the options it takes
    (None: any, the factory has ``**kwargs``)."""

    factory: ModelFactory
    fixed: dict[str, object]
    options: frozenset[str] | None


_REGISTRY: dict[str, ModelEntry] = {}


def declared_options(factory: ModelFactory, fixed: dict[str, object]) -> frozenset[str] | None:
    """Keyword parameters of ``factory`` other than ``num_classes`` and the ``fixed`` ones."""
    parameters = inspect.signature(factory).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return frozenset(
        p.name
        for p in parameters
        if p.kind in keyword and p.name != "num_classes" and p.name not in fixed
    )


def register_model(name: str, **fixed: object) -> Callable[[ModelFactory], ModelFactory]:
    """Class or function decorator that makes a model buildable by ``name``; ``fixed`` keyword
    arguments are passed on every build (e.g. ``register_model("fcn8s", variant="8s")``)."""

    def decorator(factory: ModelFactory) -> ModelFactory:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelEntry(factory, dict(fixed), declared_options(factory, fixed))
        return factory

    return decorator


def list_models() -> list[str]:
    """Names of every registered model, sorted."""
    return sorted(_REGISTRY)


def model_options(name: str) -> tuple[str, ...] | None:
    """The options model ``name`` takes, sorted (None: it takes any option)."""
    options = _entry(name).options
    return None if options is None else tuple(sorted(options))


def _entry(name: str) -> ModelEntry:
    if name not in _REGISTRY:
        raise SemsegError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}")
    return _REGISTRY[name]


def check_shared_options(options: dict[str, object]) -> None:
    """Value checks of the shared options (those present), whichever model takes them."""
    keep_prob = options.get("keep_prob")
    if keep_prob is not None and not 0.0 < float(keep_prob) <= 1.0:  # type: ignore[arg-type]
        raise SemsegError(f"keep_prob must be in (0, 1], got {keep_prob}")
    width_mult = options.get("width_mult")
    if width_mult is not None and not float(width_mult) > 0:  # type: ignore[arg-type]
        raise SemsegError(f"width_mult must be positive, got {width_mult}")
    if options.get("pretrained") and options.get("backbone_weights"):
        raise SemsegError("give either --pretrained or --backbone-weights, not both")


def select_options(name: str, entry: ModelEntry, options: dict[str, object]) -> dict[str, object]:
    """The options to pass to model ``name``; a SemsegError for one it cannot honour."""
    if entry.options is None:
        return dict(options)
    taken = {}
    for option, value in options.items():
        if option in entry.options:
            taken[option] = value
        elif value not in NOT_ASKED.get(option, ()):
            takes = ", ".join(sorted(entry.options)) or "none"
            raise SemsegError(
                f"model {name!r} does not take option {option}={value!r} (its options: {takes})"
            )
    return taken


def build_model(name: str, num_classes: int, **options: object) -> nn.Module:
    """Build the model registered as ``name`` with ``num_classes`` output channels.

    Options follow the rules of this module's docstring: None is dropped, shared options are
    checked, an option the model does not take is ignored only when it asks for nothing.
    """
    entry = _entry(name)
    if num_classes < 1:
        raise SemsegError(f"num_classes must be at least 1, got {num_classes}")
    given = {option: value for option, value in options.items() if value is not None}
    check_shared_options(given)
    taken = select_options(name, entry, given)
    return entry.factory(num_classes=num_classes, **entry.fixed, **taken)

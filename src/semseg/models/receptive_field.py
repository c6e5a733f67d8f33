"""Receptive fields from a layer list: which input pixels can change one output cell.

A network is described, input to output, by :class:`Layer` entries (convolution or pooling
windows, x``factor`` nearest/unpooling upsampling, and transposed convolutions followed by a crop,
as FCN's learned upsampling). :func:`receptive_field` walks them backwards
from one output cell on an unbounded grid, exactly (integer intervals, padding included), so
position-dependent cases such as unpooling followed by convolutions are counted without the usual
"jump" approximation. Sizes are along one axis; every model here has square kernels.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Layer:
    """One spatial operation along an axis.

    ``kind`` is ``"window"`` (convolution or pooling: ``kernel``, ``stride``, ``dilation``,
    ``padding``), ``"up"`` (``factor``-times upsampling where output cell ``i`` reads input cell
    ``i // factor``: nearest neighbour, or max unpooling with stored indices, whose output can be
    changed by anything that changes the pooled cell it reads) or ``"transposed"`` (a transposed
    convolution with ``kernel`` and stride ``factor`` whose output is cropped from ``padding``
    on: output cell ``o`` reads input cells ``i`` with ``0 <= o + padding - i * factor < kernel``).
    """

    kind: str = "window"
    kernel: int = 1
    stride: int = 1
    dilation: int = 1
    padding: int = 0
    factor: int = 1


def conv(kernel: int, dilation: int = 1, stride: int = 1, padding: int | None = None) -> Layer:
    """A convolution; ``padding`` defaults to 'same' (``dilation * (kernel - 1) // 2``)."""
    if padding is None:
        padding = dilation * (kernel - 1) // 2
    return Layer("window", kernel, stride, dilation, padding)


def pool(kernel: int, stride: int, padding: int = 0) -> Layer:
    return Layer("window", kernel, stride, 1, padding)


def upsample(factor: int) -> Layer:
    return Layer("up", factor=factor)


def transposed(kernel: int, stride: int, crop: int = 0) -> Layer:
    """A transposed convolution (``kernel``, ``stride``) whose output is cropped from ``crop``."""
    return Layer("transposed", kernel=kernel, padding=crop, factor=stride)


def input_interval(layers: Sequence[Layer], lo: int, hi: int) -> tuple[int, int]:
    """Input cells ``[lo', hi']`` that output cells ``[lo, hi]`` depend on (unbounded grid)."""
    for layer in reversed(layers):
        if layer.kind == "up":
            lo, hi = lo // layer.factor, hi // layer.factor
        elif layer.kind == "transposed":
            lo = -(-(lo + layer.padding - layer.kernel + 1) // layer.factor)  # ceiling division
            hi = (hi + layer.padding) // layer.factor
        elif layer.kind == "window":
            lo = lo * layer.stride - layer.padding
            hi = hi * layer.stride - layer.padding + layer.dilation * (layer.kernel - 1)
        else:
            raise ValueError(f"unknown layer kind {layer.kind!r}")
    return lo, hi


def output_stride(layers: Iterable[Layer]) -> int:
    """Input pixels per output cell (an integer for every model here)."""
    stride = 1.0
    for layer in layers:
        stride = stride * layer.stride if layer.kind == "window" else stride / layer.factor
    if stride != int(stride):
        raise ValueError(f"fractional output stride {stride}")
    return int(stride)


def receptive_field(layers: Sequence[Layer], position: int | None = None) -> int:
    """Width, in input pixels, of the receptive field of output cell ``position``.

    Without ``position``: the largest over one period of positions (with upsampling, cells that
    sit differently inside their pooling windows can see slightly different extents).
    """
    if position is not None:
        lo, hi = input_interval(layers, position, position)
        return hi - lo + 1
    return receptive_field_range(layers)[1]


def receptive_field_range(layers: Sequence[Layer]) -> tuple[int, int]:
    """Smallest and largest receptive field over one period of output positions."""
    period = 1
    for layer in layers:
        if layer.kind in ("up", "transposed"):
            period *= layer.factor
    base = 1000 * period  # away from the origin: the grid is unbounded, borders play no part
    sizes = [receptive_field(layers, base + offset) for offset in range(period)]
    return min(sizes), max(sizes)


def _first(value: int | tuple[int, ...]) -> int:
    return value if isinstance(value, int) else int(value[0])


def layer_of(module: nn.Module) -> Layer | None:
    """The :class:`Layer` of a spatial module; None for pointwise ones (ReLU, BN, dropout, ...).

    Raises for a spatial module it does not know, so a new layer type cannot slip past silently.
    """
    if isinstance(module, nn.Conv2d):
        if isinstance(module.padding, str):
            raise ValueError("string padding is not supported")
        return Layer(
            "window",
            _first(module.kernel_size),
            _first(module.stride),
            _first(module.dilation),
            _first(module.padding),
        )
    if isinstance(module, nn.MaxPool2d | nn.AvgPool2d):
        dilation = _first(getattr(module, "dilation", 1))
        stride = module.stride if module.stride is not None else module.kernel_size
        return Layer(
            "window", _first(module.kernel_size), _first(stride), dilation, _first(module.padding)
        )
    if isinstance(module, nn.MaxUnpool2d):
        return Layer("up", factor=_first(module.stride))
    if isinstance(module, nn.ConvTranspose2d | nn.Upsample | nn.MaxPool1d | nn.Conv1d):
        raise ValueError(f"no receptive-field rule for {type(module).__name__}")
    if len(list(module.children())) == 0:
        return None
    raise ValueError(f"layer_of takes leaf modules, got {type(module).__name__}")


def layers_of(modules: Iterable[nn.Module]) -> list[Layer]:
    """The spatial layers among ``modules`` (leaves, or containers walked in order)."""
    layers: list[Layer] = []
    for module in modules:
        children = list(module.children())
        if children:
            layers.extend(layers_of(children))
            continue
        layer = layer_of(module)
        if layer is not None:
            layers.append(layer)
    return layers


__all__ = [
    "Layer",
    "conv",
    "input_interval",
    "layer_of",
    "layers_of",
    "output_stride",
    "pool",
    "receptive_field",
    "receptive_field_range",
    "transposed",
    "upsample",
]

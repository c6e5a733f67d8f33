"""The grid of a sweep: ``--set section.field=v1,v2`` items, their values and settings."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import yaml

from semseg.config import SECTIONS, Config, set_field
from semseg.errors import SemsegError


@dataclass(frozen=True)
class Setting:
    """One point of the grid: its label, the values it sets and its run folder's name."""

    name: str
    values: dict[str, Any]
    folder: str


def split_values(text: str) -> list[str]:
    """Split ``text`` at commas outside brackets and quotes: ``[1,2],[3,4]`` -> two values."""
    parts, current, depth, quote = [], [], 0, ""
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    parts.append("".join(current).strip())
    return parts


def field_default(dotted: str) -> Any:
    """The default of ``section.field``; :func:`semseg.config.set_field`'s one-line error for a
    name that is not a known ``data|model|train.FIELD``."""
    section, _, key = dotted.partition(".")
    scratch = Config()
    if section in SECTIONS and key in {spec.name for spec in fields(SECTIONS[section])}:
        return getattr(getattr(scratch, section), key)
    set_field(scratch, dotted, None, source="--set")  # raises: unknown section or field
    raise SemsegError(f"--set: unknown field {dotted!r}")


def coerce_value(dotted: str, text: str) -> Any:
    """``text`` (a YAML scalar) converted to the type of field ``dotted`` by ``set_field``."""
    scratch = Config()
    set_field(scratch, dotted, yaml.safe_load(text) if text else "", source="--set")
    section, _, key = dotted.partition(".")
    return getattr(getattr(scratch, section), key)


def is_list_field(dotted: str) -> bool:
    """Whether ``section.field`` holds a list (``data.synthetic_size``, ``data.categories``)."""
    return isinstance(field_default(dotted), list)


def parse_sets(items: Sequence[str]) -> tuple[list[str], dict[str, list[tuple[str, Any]]]]:
    """``--set`` items as plain overrides (one value) and grid axes (several values).

    A value list is comma separated; for list-valued fields only bracketed items are split
    (``data.synthetic_size=[60,200],[90,300]``), so ``data.categories=um,umm`` stays one value.
    A repeated single value replaces the earlier one (as for ``train``); a field cannot be both
    a grid axis and set again. Returns ``(overrides, {field: [(text, value), ...]})``.
    """
    singles: dict[str, str] = {}
    grid: dict[str, list[tuple[str, Any]]] = {}
    for item in items:
        dotted, sep, text = item.partition("=")
        dotted = dotted.strip()
        if not sep or not dotted:
            raise SemsegError(f"--set {item!r}: expected section.field=value[,value...]")
        whole = is_list_field(dotted) and "[" not in text  # data.categories=um,umm: one list
        texts = [text.strip()] if whole else split_values(text)
        if dotted in grid or (len(texts) > 1 and dotted in singles):
            raise SemsegError(f"--set {dotted} given twice; list its values once: a,b,c")
        if len(texts) == 1:
            coerce_value(dotted, texts[0])
            singles[dotted] = texts[0]
            continue
        values: list[tuple[str, Any]] = []
        for token in texts:
            if token == "":
                raise SemsegError(f"--set {item!r}: empty value in the list")
            value = coerce_value(dotted, token)
            if any(value == known for _, known in values):
                raise SemsegError(f"--set {dotted}: value {token!r} is listed twice")
            values.append((token, value))
        grid[dotted] = values
    return [f"{dotted}={text}" for dotted, text in singles.items()], grid


def short_names(fields_: Sequence[str]) -> dict[str, str]:
    """``model.keep_prob`` -> ``keep_prob``, unless two fields share the short name."""
    tails = [dotted.partition(".")[2] for dotted in fields_]
    return {
        dotted: tail if tails.count(tail) == 1 else dotted
        for dotted, tail in zip(fields_, tails, strict=True)
    }


def folder_name(label: str) -> str:
    """A safe folder name for a setting label (no separators, not hidden, not too long)."""
    name = "".join("_" if char in "/\\" or char.isspace() else char for char in label)
    name = name.lstrip(".") or "setting"
    if len(name) > 120:
        name = f"{name[:100]}-{hashlib.sha1(label.encode()).hexdigest()[:8]}"
    return name


def expand_grid(grid: dict[str, list[tuple[str, Any]]]) -> list[Setting]:
    """The cartesian product of the grid's axes, in the order given (last axis fastest)."""
    if not grid:
        return [Setting(name="base", values={}, folder="base")]
    names = short_names(list(grid))
    settings = []
    for combination in itertools.product(*grid.values()):
        label = ",".join(
            f"{names[dotted]}={text}" for dotted, (text, _) in zip(grid, combination, strict=True)
        )
        values = {dotted: value for dotted, (_, value) in zip(grid, combination, strict=True)}
        settings.append(Setting(name=label, values=values, folder=folder_name(label)))
    if len({s.folder for s in settings}) != len(settings):
        raise SemsegError("two settings of the grid map to the same folder name")
    return settings

"""Class tables: the names, display colours and ignored entries of a multi-class dataset.

A class table is a YAML file (CamVid ships one as ``classes.yaml``)::

    classes:
      - {name: sky, color: [128, 128, 128]}
      - {name: building, color: [128, 0, 0]}
      - {name: void, color: [0, 0, 0], ignore: true}

The list order is the order of the mask values of index masks: the entry at position ``p`` is
what a mask pixel of value ``p`` means. Entries not marked ``ignore`` become the training classes
``0 .. K-1`` in list order (ignored entries are skipped when counting); entries marked ``ignore``
map to the ignore index 255, whether the masks hold indices or colours. A mask value of 255 is
always ignored. Names and colours must not repeat. One training class may be marked
``background: true`` (KITTI's "not road"): box supervision (:mod:`semseg.weak`) gives it no boxes
and gives it the pixels outside every box.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from semseg.config import IGNORE_INDEX
from semseg.data.kitti import pack_rgb
from semseg.errors import SemsegError

TABLE_FILE = "classes.yaml"  # the class table a dataset folder carries at its root


@dataclass(frozen=True)
class ClassTable:
    """Class names and colours of the training classes, and what the ignored entries look like.

    ``names``/``colours`` hold the ``K`` training classes in training-id order;
    ``ignore_colours`` the colours of the ignored entries; ``index_lut`` maps every possible
    index-mask value (0..255) to its training id, to 255 (ignored) or to -1 (not in the table).
    """

    names: list[str]
    colours: np.ndarray  # (K, 3) uint8, one row per training class
    ignore_colours: np.ndarray  # (M, 3) uint8
    index_lut: np.ndarray  # (256,) int16: mask value -> training id, 255 or -1
    source: str = "class table"
    background: int | None = None  # training id of the class marked ``background: true``

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def decode(self, rgb: np.ndarray, path: Path | str = "mask") -> np.ndarray:
        """Training ids ``(H, W)`` uint8 from a colour mask; unknown colours are an error."""
        codes, inverse = np.unique(pack_rgb(rgb), return_inverse=True)
        class_codes = pack_rgb(self.colours)
        ignore_codes = pack_rgb(self.ignore_colours)
        lookup = np.empty(len(codes), dtype=np.uint8)
        for index, code in enumerate(codes):
            class_match = np.flatnonzero(class_codes == code)
            if class_match.size:
                lookup[index] = class_match[0]
            elif np.any(ignore_codes == code):
                lookup[index] = IGNORE_INDEX
            else:
                colour = (int(code >> 16) & 255, int(code >> 8) & 255, int(code) & 255)
                raise SemsegError(f"{path}: colour {colour} is not in the class table")
        return lookup[inverse.reshape(-1)].reshape(rgb.shape[:2])

    def decode_index(self, values: np.ndarray, path: Path | str = "mask") -> np.ndarray:
        """Training ids ``(H, W)`` uint8 from an index mask's values (table positions)."""
        values = np.asarray(values)
        if values.size and (values.min() < 0 or values.max() > 255):
            bad = int(values.min() if values.min() < 0 else values.max())
            raise SemsegError(f"{path}: mask value {bad} is not in the class table {self.source}")
        mapped = self.index_lut[values.astype(np.int64)]
        if (mapped < 0).any():
            bad = int(values[mapped < 0].flat[0])
            raise SemsegError(
                f"{path}: mask value {bad} is neither a class nor ignored in {self.source} "
                f"(classes 0-{self.num_classes - 1}, ignored: {self.ignored_values()})"
            )
        return mapped.astype(np.uint8)

    def ignored_values(self) -> list[int]:
        """The index-mask values that mean "ignore" (always including 255)."""
        return [int(v) for v in np.flatnonzero(self.index_lut == IGNORE_INDEX)]


def class_table_from_entries(entries: object, source: str = "class table") -> ClassTable:
    """A :class:`ClassTable` from the ``classes`` list of a table (see module docstring)."""
    if not isinstance(entries, list) or not entries:
        raise SemsegError(f"class table {source} needs a non-empty 'classes' list")
    if len(entries) > 255:
        raise SemsegError(f"class table {source} has {len(entries)} entries; at most 255 fit")
    names: list[str] = []
    colours: list[list[int]] = []
    ignore: list[list[int]] = []
    lut = np.full(256, -1, dtype=np.int16)
    lut[IGNORE_INDEX] = IGNORE_INDEX
    seen_names: set[str] = set()
    seen_colours: set[tuple[int, ...]] = set()
    background: int | None = None
    for position, entry in enumerate(entries):
        name, colour, ignored = _parse_entry(entry, position, source)
        if _is_background(entry, source):
            if ignored or background is not None:
                raise SemsegError(
                    f"class table {source}: {name!r} cannot be the background class "
                    "(at most one, and not an ignored entry)"
                )
            background = len(names)
        if name in seen_names:
            raise SemsegError(f"class table {source}: class name {name!r} appears twice")
        if tuple(colour) in seen_colours:
            raise SemsegError(f"class table {source}: colour {tuple(colour)} appears twice")
        seen_names.add(name)
        seen_colours.add(tuple(colour))
        if ignored:
            ignore.append(colour)
            lut[position] = IGNORE_INDEX
        else:
            lut[position] = len(names)
            names.append(name)
            colours.append(colour)
    if not names:
        raise SemsegError(f"class table {source}: every entry is marked ignore")
    return ClassTable(
        names=names,
        colours=np.array(colours, dtype=np.uint8).reshape(-1, 3),
        ignore_colours=np.array(ignore, dtype=np.uint8).reshape(-1, 3),
        index_lut=lut,
        source=source,
        background=background,
    )


def _is_background(entry: object, source: str) -> bool:
    """Whether a table entry is marked ``background: true``."""
    value = entry.get("background", False) if isinstance(entry, dict) else False
    if not isinstance(value, bool):
        raise SemsegError(f"class table {source}: bad entry {entry!r} (background: true|false)")
    return value


def _parse_entry(entry: object, position: int, source: str) -> tuple[str, list[int], bool]:
    """``(name, colour, ignored)`` of one table entry; a one-line error for a bad one."""
    try:
        assert isinstance(entry, dict)
        colour = [int(v) for v in entry["color"]]
        if len(colour) != 3 or not all(0 <= v <= 255 for v in colour):
            raise ValueError(colour)
        ignored = entry.get("ignore", False)
        if not isinstance(ignored, bool):
            raise ValueError(ignored)
    except (AssertionError, KeyError, TypeError, ValueError) as error:
        raise SemsegError(f"class table {source}: bad entry {entry!r}") from error
    name = str(entry.get("name", f"class{position}"))
    return name, colour, ignored


def load_class_table(path: str | Path) -> ClassTable:
    """Read and check a class table YAML (see module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise SemsegError(f"class table not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise SemsegError(f"class table {path} is not valid YAML") from error
    entries = raw.get("classes") if isinstance(raw, dict) else None
    return class_table_from_entries(entries, source=str(path))


def find_class_table(root: str | Path) -> Path | None:
    """``ROOT/classes.yaml`` when a dataset folder carries one, else ``None``."""
    candidate = Path(root) / TABLE_FILE
    return candidate if candidate.is_file() else None


def check_class_names(
    expected: Sequence[str], found: Sequence[str], checkpoint: str | Path
) -> None:
    """Refuse a checkpoint whose class names differ from the data's class table."""
    expected, found = list(expected), list(found)
    if expected == found:
        return
    if len(expected) != len(found):
        raise SemsegError(
            f"{checkpoint}: trained with {len(found)} classes but the data's class table has "
            f"{len(expected)}"
        )
    position = next(i for i, (a, b) in enumerate(zip(expected, found, strict=True)) if a != b)
    raise SemsegError(
        f"{checkpoint}: class {position} is {found[position]!r} in the checkpoint but "
        f"{expected[position]!r} in the data's class table"
    )


def named_table(names: Sequence[str], colours: Sequence[Sequence[int]], source: str) -> ClassTable:
    """A table of training classes only (no ignored entries), e.g. for a known dataset."""
    entries = [{"name": n, "color": list(c)} for n, c in zip(names, colours, strict=True)]
    return class_table_from_entries(entries, source=source)

"""What the benchmark scripts share: where the project and the data (KITTI Road, CamVid) are,
how numbers are written in the tables, and the one-line description of the machine that goes
with every number."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]
KITTI_DATA = ROOT.parent / "shared" / "data" / "kitti_road"
CAMVID_DATA = ROOT.parent / "shared" / "data" / "camvid"
MISSING = "–"
Record = TypeVar("Record")


def number(value: float | int | None, digits: int) -> str:
    """A table cell: ``–`` for a missing value, integers with thousands separators."""
    if value is None:
        return MISSING
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}f}"


def machine_summary(threads: str) -> str:
    """CPU model, cores, ``threads`` (how the run used them), torch and Python versions."""
    import torch

    from semseg.inference.machine import cpu_model

    return (
        f"{cpu_model()}, {os.cpu_count()} cores ({threads}), torch {torch.__version__}, "
        f"Python {platform.python_version()}"
    )


def load_record(path: Path, record_type: type[Record]) -> Record | None:
    """A finished entry's result (a dataclass) from its JSON file; None when it is absent or
    unreadable, so the entry runs (again)."""
    try:
        return record_type(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def save_record(path: Path, record: Any) -> None:
    """Write a dataclass result atomically: a killed benchmark never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(dataclasses.asdict(record), indent=2))
    os.replace(partial, path)

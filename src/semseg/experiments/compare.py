"""``semseg compare``: the sweep table and figures for any finished runs; their settings are the
config fields that differ between them."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from semseg.config import Config
from semseg.errors import SemsegError
from semseg.experiments.grid import short_names
from semseg.experiments.results import (
    GRID_IMAGES,
    Report,
    _value_text,
    collect_result,
    normalize_rank_key,
    resolve_rank_key,
    results_task,
    write_report,
)
from semseg.runs import RunDir

BOOKKEEPING_FIELDS = {"train.name", "train.out_dir", "train.run_dir", "train.progress"}


def flat_config(config: Config, run_dir: Path) -> dict[str, Any]:
    """``section.field -> value``; data generated into the run folder counts as the same data."""
    flat = {
        f"{section}.{key}": value
        for section, values in config.to_dict().items()
        for key, value in values.items()
    }
    root = flat.get("data.root")
    if root and Path(root).parts[-2:] == (run_dir.name, RunDir(run_dir).data.name):
        flat["data.root"] = "<run>/data"
    return flat


def differing_fields(flats: Sequence[dict[str, Any]]) -> list[str]:
    """Config fields whose values differ between runs (bookkeeping fields left out)."""
    keys = list(dict.fromkeys(key for flat in flats for key in flat))
    return [
        key
        for key in keys
        if key not in BOOKKEEPING_FIELDS
        and len({yaml.safe_dump(flat.get(key)) for flat in flats}) > 1
    ]


def compare_runs(
    run_dirs: Sequence[Path],
    out: Path | None = None,
    rank_by: str | None = None,
    grid_images: int = GRID_IMAGES,
) -> Report:
    """The sweep table and figures for finished runs; settings = the config fields that differ.

    ``rank_by`` ``None``: MaxF for binary runs, mIoU for multi-class runs; the runs must be of
    one kind.
    """
    rank_by = normalize_rank_key(rank_by)
    if not run_dirs:
        raise SemsegError("compare: name at least one run folder")
    resolved = [Path(run_dir).resolve() for run_dir in run_dirs]
    if len(set(resolved)) != len(resolved):
        raise SemsegError("compare: a run folder is named twice")
    for run_dir, given in zip(resolved, run_dirs, strict=True):
        run = RunDir(run_dir)
        if not run.config.is_file():
            raise SemsegError(f"{given} is not a semseg run folder (no {run.config.name})")
        if not run.is_finished():
            raise SemsegError(f"{given} is not a finished run (no {run.eval_val.name})")
    flats = [flat_config(RunDir(d).read_config(), d) for d in resolved]
    fields_ = differing_fields(flats)
    names = short_names(fields_)
    labels = [
        ",".join(f"{names[key]}={_value_text(flat.get(key))}" for key in fields_) or d.name
        for flat, d in zip(flats, resolved, strict=True)
    ]
    if len(set(labels)) != len(labels):
        labels = [f"{label} ({d.name})" for label, d in zip(labels, resolved, strict=True)]
    results = [
        collect_result(d, label, {key: flat.get(key) for key in fields_})
        for d, label, flat in zip(resolved, labels, flats, strict=True)
    ]
    resolve_rank_key(rank_by, results_task(results))  # mixed runs, missing key: before writing
    if out is None:
        out = Path("runs") / f"compare-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    return write_report(
        results, Path(out), rank_by, title="Comparison", grid_images=grid_images, fields_=fields_
    )

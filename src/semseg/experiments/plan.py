"""The sweep plan: base configuration, settings and the sweep folder with its ``sweep.json``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from semseg.config import (
    Config,
    apply_overrides,
    config_from_dict,
    load_config,
    set_field,
    validate,
)
from semseg.data.layout import detect_kind
from semseg.errors import SemsegError
from semseg.experiments.grid import Setting, expand_grid, parse_sets
from semseg.experiments.results import normalize_rank_key, resolve_rank_key, task_of_classes
from semseg.io import first_line, write_json_atomic

MANIFEST = "sweep.json"


GRID_IMAGES = 4


@dataclass
class SweepPlan:
    """A sweep: its folder, base configuration (as a dict), grid and settings."""

    sweep_dir: Path
    base: dict[str, Any]
    grid: dict[str, list[Any]]
    overrides: list[str]
    settings: list[Setting]
    rank_by: str | None = None  # None: MaxF for binary runs, mIoU for multi-class runs
    grid_images: int = GRID_IMAGES

    def run_dir(self, setting: Setting) -> Path:
        return self.sweep_dir / setting.folder

    def config_for(self, setting: Setting) -> Config:
        """The full configuration of one setting's run."""
        config = config_from_dict(self.base, source=str(self.sweep_dir / MANIFEST))
        for dotted, value in setting.values.items():
            set_field(config, dotted, value, source=setting.name)
        config.train.out_dir = str(self.sweep_dir)
        config.train.run_dir = str(self.run_dir(setting))
        return config

    def tasks(self) -> set[str]:
        """The tasks (binary road, multi-class) of the settings' runs, by their num_classes."""
        return {task_of_classes(self.config_for(s).model.num_classes) for s in self.settings}

    def checked_rank_key(self, text: str | None) -> str | None:
        """``--rank-by`` normalised and checked against what the settings' runs will have."""
        key = normalize_rank_key(text)
        for task in self.tasks():
            resolve_rank_key(key, task)
        return key

    def manifest(self) -> dict[str, Any]:
        return {
            "version": 1,
            "created": datetime.now().isoformat(timespec="seconds"),
            "config": self.base,
            "overrides": self.overrides,
            "grid": self.grid,
            "rank_by": self.rank_by,
            "grid_images": self.grid_images,
            "settings": [
                {"name": s.name, "values": s.values, "run_dir": s.folder} for s in self.settings
            ],
        }


def base_config(config: str | None, overrides: Sequence[str], data: Path | None) -> Config:
    """The config file (or packaged name), its single-valued overrides and ``--data``."""
    cfg = load_config(config or "kitti_fcn8s")
    apply_overrides(cfg, list(overrides))
    if data is not None:
        cfg.data.root = str(data)
        cfg.data.kind = detect_kind(data)
    return cfg


def plan_sweep(
    config: str | None,
    sets: Sequence[str],
    data: Path | None = None,
    out: Path | None = None,
    rank_by: str | None = None,
    grid_images: int | None = None,
) -> SweepPlan:
    """Parse and check the whole grid before anything trains; create or reopen the folder.

    Every setting's configuration is validated up front. An ``out`` folder that already holds
    this very sweep is reopened (its finished runs are kept); one holding another sweep, or
    other files, is refused. ``rank_by`` ``None`` ranks by the runs' default (MaxF for binary
    road runs, mIoU for multi-class ones); a given key must be one the settings' runs will have.
    """
    overrides, grid = parse_sets(sets)
    base = base_config(config, overrides, data)
    settings = expand_grid(grid)
    plan = SweepPlan(
        sweep_dir=Path(),
        base=base.to_dict(),
        grid={dotted: [value for _, value in values] for dotted, values in grid.items()},
        overrides=overrides,
        settings=settings,
        rank_by=normalize_rank_key(rank_by),  # an unknown key: before the settings' checks
        grid_images=grid_images or GRID_IMAGES,
    )
    for setting in settings:
        validate(plan.config_for(setting))
    if len(plan.tasks()) > 1:
        raise SemsegError(
            "the grid mixes binary (road) and multi-class settings (model.num_classes); "
            "a sweep ranks runs of one kind"
        )
    plan.rank_by = plan.checked_rank_key(plan.rank_by)
    if out is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        out = Path(base.train.out_dir) / f"sweep-{base.train.name}-{stamp}"
    plan.sweep_dir = Path(out).resolve()
    manifest_path = plan.sweep_dir / MANIFEST
    if manifest_path.is_file():
        existing = load_sweep(plan.sweep_dir)
        if _identity(existing) != _identity(plan):
            raise SemsegError(
                f"{out} holds a different sweep (see its {MANIFEST}); "
                f"continue it with --resume {out} or choose another --out"
            )
    elif plan.sweep_dir.is_dir() and any(plan.sweep_dir.iterdir()):
        raise SemsegError(f"{out} exists and is not a sweep folder (no {MANIFEST})")
    else:
        plan.sweep_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(manifest_path, plan.manifest())
    return plan


def _identity(plan: SweepPlan) -> str:
    """What makes two sweeps the same: base configuration and settings (not ranking, dates)."""
    settings = [(s.name, s.values, s.folder) for s in plan.settings]
    payload = {"config": plan.base, "settings": settings}
    return json.dumps(payload, sort_keys=True, default=str)


def load_sweep(sweep_dir: Path) -> SweepPlan:
    """Reopen a sweep from its ``sweep.json``."""
    path = Path(sweep_dir) / MANIFEST
    if not path.is_file():
        raise SemsegError(f"{sweep_dir} is not a sweep folder (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text())
        settings = [
            Setting(name=str(s["name"]), values=dict(s["values"]), folder=str(s["run_dir"]))
            for s in manifest["settings"]
        ]
        plan = SweepPlan(
            sweep_dir=Path(sweep_dir).resolve(),
            base=dict(manifest["config"]),
            grid=dict(manifest.get("grid", {})),
            overrides=list(manifest.get("overrides", [])),
            settings=settings,
            rank_by=normalize_rank_key(manifest.get("rank_by")),
            grid_images=int(manifest.get("grid_images", GRID_IMAGES)),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise SemsegError(f"{path} is not a valid sweep manifest: {first_line(error)}") from error
    for setting in settings:
        if Path(setting.folder).name != setting.folder or setting.folder in ("", ".", ".."):
            raise SemsegError(f"{path}: run folder {setting.folder!r} is not a plain name")
    return plan

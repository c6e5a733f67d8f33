"""Hyperparameter sweeps and run comparisons, decided by measured validation quality.

A sweep is a grid of ordinary training runs under one folder::

    runs/sweep-<name>-<timestamp>/
        sweep.json                 the base configuration, the grid and every setting's folder
        keep_prob=0.5,lr=1e-4/     one run folder per setting (see semseg.training)
        logs/                      stdout/stderr of each setting when run with --jobs N > 1
        results.csv, results.md    one row per setting; the best one (by --rank-by) marked
        curves.png                 training loss and validation MaxF per epoch, one line each
        grid.png                   the same validation images (rows) predicted by each setting

A run is *finished* when it has ``eval_val.json`` (written last by ``training.finish_run``).
Re-running a sweep (``--resume DIR``, or the same ``--out``) skips finished settings, resumes
unfinished ones from their ``last.ckpt`` and restarts the others from scratch.

``compare`` produces the same table and figures for any finished runs; their settings are the
config fields that differ between them.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import io
import itertools
import json
import math
import os
import shutil
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from semseg.config import (
    SECTIONS,
    Config,
    apply_overrides,
    config_from_dict,
    load_config,
    set_field,
    validate,
)
from semseg.data.layout import detect_kind
from semseg.errors import SemsegError
from semseg.io import first_line, write_bytes_atomic, write_json_atomic, write_text_atomic

MANIFEST = "sweep.json"
FINISHED_MARKER = "eval_val.json"
GRID_IMAGES = 4

# --rank-by keys: (results column, higher is better, label in the "best:" line)
RANK_KEYS: dict[str, tuple[bool, str]] = {
    "max_f": (True, "MaxF"),
    "ap": (True, "AP"),
    "iou": (True, "IoU"),
    "train_loss": (False, "train loss"),
    "val_loss": (False, "val loss"),
}
RANK_ALIASES = {
    "maxf": "max_f",
    "val_maxf": "max_f",
    "val_ap": "ap",
    "val_iou": "iou",
    "loss": "train_loss",
}
# Config fields that are bookkeeping, not settings: never shown as a difference between runs.
BOOKKEEPING_FIELDS = {"train.name", "train.out_dir", "train.run_dir", "train.progress"}
RESULT_COLUMNS = ("train_loss", "val_loss", "max_f", "ap", "iou", "epochs", "wall_s")

Event = Callable[[str], None]


# --------------------------------------------------------------------------- the grid


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


def coerce_value(dotted: str, text: str) -> Any:
    """``text`` converted to the type of field ``dotted`` (a SemsegError if it does not fit)."""
    scratch = Config()
    apply_overrides(scratch, [f"{dotted}={text}"])
    section, _, key = dotted.partition(".")
    return getattr(getattr(scratch, section), key)


def is_list_field(dotted: str) -> bool:
    """Whether ``section.field`` holds a list (``data.synthetic_size``, ``data.categories``)."""
    section, _, key = dotted.partition(".")
    return isinstance(getattr(getattr(Config(), section), key), list)


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
        check_field(dotted)
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


def check_field(dotted: str) -> None:
    """A one-line error for a name that is not a known ``data|model|train.FIELD``."""
    section, _, key = dotted.partition(".")
    if section not in SECTIONS or not key:
        raise SemsegError(f"--set: {dotted!r} is not of the form data|model|train.FIELD")
    known = [spec.name for spec in fields(SECTIONS[section])]
    if key not in known:
        raise SemsegError(f"--set: unknown field {dotted!r}; {section} has: {', '.join(known)}")


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


# --------------------------------------------------------------------------- the sweep plan


@dataclass
class SweepPlan:
    """A sweep: its folder, base configuration (as a dict), grid and settings."""

    sweep_dir: Path
    base: dict[str, Any]
    grid: dict[str, list[Any]]
    overrides: list[str]
    settings: list[Setting]
    rank_by: str = "max_f"
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


def normalize_rank_key(text: str) -> str:
    """``val_maxf`` -> ``max_f`` etc.; a SemsegError for a key that is not a results column."""
    key = RANK_ALIASES.get(text.strip().lower(), text.strip().lower())
    if key not in RANK_KEYS:
        choices = ", ".join([*RANK_KEYS, *RANK_ALIASES])
        raise SemsegError(f"--rank-by must be one of {choices}; got {text!r}")
    return key


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
    other files, is refused.
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
        rank_by=normalize_rank_key(rank_by or "max_f"),
        grid_images=grid_images or GRID_IMAGES,
    )
    for setting in settings:
        validate(plan.config_for(setting))
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
            rank_by=normalize_rank_key(manifest.get("rank_by", "max_f")),
            grid_images=int(manifest.get("grid_images", GRID_IMAGES)),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise SemsegError(f"{path} is not a valid sweep manifest: {first_line(error)}") from error
    for setting in settings:
        if Path(setting.folder).name != setting.folder or setting.folder in ("", ".", ".."):
            raise SemsegError(f"{path}: run folder {setting.folder!r} is not a plain name")
    return plan


# --------------------------------------------------------------------------- running


def is_finished(run_dir: Path) -> bool:
    """A run is finished when its ``eval_val.json`` (written last) holds the overall scores."""
    try:
        return "all" in run_groups(json.loads((Path(run_dir) / FINISHED_MARKER).read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return False


def run_groups(results: dict[str, Any]) -> dict[str, Any]:
    """The perspective-space groups of an evaluation result (flat or per-space layout)."""
    if "groups" in results:
        return results["groups"]
    return results["spaces"]["perspective"]["groups"]


def usable_checkpoint(path: Path) -> bool:
    """A complete checkpoint file (torch checkpoints are zip archives; a torn write is not)."""
    return path.is_file() and zipfile.is_zipfile(path)


def train_setting(config: Config, run_dir: Path) -> str:
    """Bring one run to finished: skip, resume from ``last.ckpt``, or start afresh.

    Returns ``"skipped"``, ``"resumed"`` or ``"trained"``. A folder without a usable
    ``last.ckpt`` is removed first, so nothing half-written (data, logs) leaks into the restart.
    """
    from semseg import training

    if is_finished(run_dir):
        return "skipped"
    last = run_dir / "checkpoints" / "last.ckpt"
    if (run_dir / "config.yaml").is_file() and usable_checkpoint(last):
        training.train(config, resume=run_dir)
        return "resumed"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    training.train(config, overwrite=True, run_dir=run_dir)
    return "trained"


def _train_worker(config: dict[str, Any], run_dir: str, threads: int, log_path: str) -> str:
    """One setting in a worker process (``--jobs N``): own thread share, output to a log."""
    import torch

    torch.set_num_threads(max(1, threads))
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with (
        open(log_path, "a", buffering=1) as log,
        contextlib.redirect_stdout(log),
        contextlib.redirect_stderr(log),
    ):
        return train_setting(config_from_dict(config), Path(run_dir))


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def sweep_lock(sweep_dir: Path) -> Iterator[None]:
    """Hold ``.sweep.lock`` so that two processes never run the same sweep at once."""
    handle = open(sweep_dir / ".sweep.lock", "w")  # noqa: SIM115 (held for the block)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            raise SemsegError(f"another sweep process is running in {sweep_dir}") from error
        yield
    finally:
        handle.close()


@dataclass
class SweepOutcome:
    """What a sweep did, its results (finished settings, grid order) and the files written."""

    plan: SweepPlan
    status: dict[str, str] = field(default_factory=dict)  # setting -> skipped/resumed/trained
    failures: dict[str, str] = field(default_factory=dict)  # setting -> one-line error
    report: Report | None = None


def run_sweep(plan: SweepPlan, jobs: int = 1, on_event: Event | None = None) -> SweepOutcome:
    """Run every unfinished setting (``jobs`` at a time), then write the results and figures.

    A setting that fails is recorded and the others go on; the caller decides what a failure
    means. An interrupt (Ctrl-C, SIGKILL) leaves finished runs finished; run again to resume.
    """
    say = on_event or (lambda message: None)
    outcome = SweepOutcome(plan=plan)
    with sweep_lock(plan.sweep_dir):
        pending = []
        for setting in plan.settings:
            if is_finished(plan.run_dir(setting)):
                outcome.status[setting.name] = "skipped"
                say(f"{setting.name}: finished before, skipped")
            else:
                pending.append(setting)
        if jobs <= 1 or len(pending) <= 1:
            _run_sequential(plan, pending, outcome, say)
        else:
            _run_parallel(plan, pending, min(jobs, len(pending)), outcome, say)
        finished = [s for s in plan.settings if is_finished(plan.run_dir(s))]
        if finished:
            results = [collect_result(plan.run_dir(s), s.name, s.values) for s in finished]
            outcome.report = write_report(
                results,
                plan.sweep_dir,
                plan.rank_by,
                title=f"Sweep {plan.sweep_dir.name}",
                grid_images=plan.grid_images,
                missing={name: error for name, error in outcome.failures.items()},
            )
    return outcome


def _run_sequential(
    plan: SweepPlan, pending: list[Setting], outcome: SweepOutcome, say: Event
) -> None:
    for index, setting in enumerate(pending, start=1):
        say(f"[{index}/{len(pending)}] {setting.name} -> {plan.run_dir(setting)}")
        try:
            outcome.status[setting.name] = train_setting(
                plan.config_for(setting), plan.run_dir(setting)
            )
        except Exception as error:  # one failed setting does not stop the others
            outcome.failures[setting.name] = first_line(error)
            say(f"{setting.name}: failed: {first_line(error)}")


def _run_parallel(
    plan: SweepPlan, pending: list[Setting], jobs: int, outcome: SweepOutcome, say: Event
) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    threads = max(1, available_cores() // jobs)
    context = multiprocessing.get_context("spawn")
    say(f"{len(pending)} settings, {jobs} at a time, {threads} torch thread(s) each")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures = {}
        for setting in pending:
            log = plan.sweep_dir / "logs" / f"{setting.folder}.log"
            say(f"{setting.name} -> {plan.run_dir(setting)} (log: {log})")
            config = plan.config_for(setting).to_dict()
            future = pool.submit(
                _train_worker, config, str(plan.run_dir(setting)), threads, str(log)
            )
            futures[future] = setting
        try:
            for future in as_completed(futures):
                setting = futures[future]
                try:
                    outcome.status[setting.name] = future.result()
                    say(f"{setting.name}: done")
                except Exception as error:
                    outcome.failures[setting.name] = first_line(error)
                    say(f"{setting.name}: failed: {first_line(error)}")
        except KeyboardInterrupt:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


# --------------------------------------------------------------------------- results


@dataclass
class RunResult:
    """One row of the results table."""

    label: str
    values: dict[str, Any]
    run_dir: Path
    train_loss: float | None = None
    val_loss: float | None = None
    max_f: float | None = None
    ap: float | None = None
    iou: float | None = None
    epochs: int | None = None
    wall_s: float | None = None
    best: bool = False


def collect_result(run_dir: Path, label: str, values: dict[str, Any]) -> RunResult:
    """Scores of a finished run: ``eval_val.json`` (full resolution) and its epoch logs."""
    from semseg.inference.visualize import read_metrics_csv

    run_dir = Path(run_dir)
    scores = run_groups(json.loads((run_dir / FINISHED_MARKER).read_text()))["all"]
    series = read_metrics_csv(run_dir / "metrics.csv")
    train_losses = [value for _, value in series.get("train_loss", [])]
    val_losses = [value for _, value in series.get("val_loss", [])]
    return RunResult(
        label=label,
        values=dict(values),
        run_dir=run_dir,
        train_loss=train_losses[-1] if train_losses else None,
        val_loss=val_losses[-1] if val_losses else None,
        max_f=_number(scores.get("max_f")),
        ap=_number(scores.get("ap")),
        iou=_number(scores.get("iou")),
        epochs=len(train_losses) or None,
        wall_s=epoch_seconds(run_dir / "train.log"),
    )


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def epoch_seconds(train_log: Path) -> float | None:
    """Wall time of training (the epochs' training + validation) from ``train.log``'s lines."""
    if not train_log.is_file():
        return None
    total, found = 0.0, False
    for line in train_log.read_text().splitlines():
        words = line.split()
        if words and words[-1].endswith("s"):
            try:
                total += float(words[-1][:-1])
                found = True
            except ValueError:
                continue
    return total if found else None


def choose_best(results: Sequence[RunResult], rank_by: str) -> int | None:
    """Index of the best row by ``rank_by`` (first one on ties; rows without a value skipped)."""
    higher, _ = RANK_KEYS[rank_by]
    scored = [(i, getattr(r, rank_by)) for i, r in enumerate(results)]
    scored = [(i, value) for i, value in scored if value is not None]
    if not scored:
        return None
    pick = max if higher else min
    return pick(scored, key=lambda pair: (pair[1], -pair[0]) if higher else (pair[1], pair[0]))[0]


def best_line(result: RunResult, rank_by: str) -> str:
    """``best: keep_prob=0.75 (MaxF 93.1)``."""
    _, label = RANK_KEYS[rank_by]
    value = getattr(result, rank_by)
    shown = f"{label} {value:.4f}" if rank_by.endswith("loss") else f"{label} {value:.1f}"
    if rank_by != "max_f" and result.max_f is not None:
        shown += f", MaxF {result.max_f:.1f}"
    return f"best: {result.label} ({shown})"


def _cell(value: Any, digits: int) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _value_text(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ",".join(_value_text(item) for item in value) + "]"
    return str(value)


def results_csv(results: Sequence[RunResult], fields_: Sequence[str]) -> str:
    """The table as CSV: best mark, setting, one column per varied field, the scores, folder."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["best", "setting", *fields_, *RESULT_COLUMNS, "run_dir"])
    for r in results:
        scores = [r.train_loss, r.val_loss, r.max_f, r.ap, r.iou]
        writer.writerow(
            ["*" if r.best else "", r.label]
            + [_value_text(r.values.get(dotted, "")) for dotted in fields_]
            + ["" if v is None else f"{v:.6g}" for v in scores]
            + ["" if r.epochs is None else r.epochs, "" if r.wall_s is None else f"{r.wall_s:.1f}"]
            + [str(r.run_dir)]
        )
    return buffer.getvalue()


def results_markdown(
    results: Sequence[RunResult],
    rank_by: str,
    title: str,
    missing: dict[str, str] | None = None,
) -> str:
    """The table as Markdown, the ``best:`` line and the two figures."""
    higher, label = RANK_KEYS[rank_by]
    lines = [
        f"# {title}",
        "",
        f"Ranked by {label} ({'higher' if higher else 'lower'} is better). MaxF, AP and IoU are "
        "the devkit's scores of each run's best checkpoint on its validation split at full "
        "resolution (eval_val.json); losses are the last epoch's means.",
        "",
        "| best | setting | train loss | val loss | MaxF | AP | IoU | epochs | wall s |",
        "|:---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        cells = [
            "*" if r.best else "",
            r.label.replace("|", "\\|"),
            _cell(r.train_loss, 4),
            _cell(r.val_loss, 4),
            _cell(r.max_f, 2),
            _cell(r.ap, 2),
            _cell(r.iou, 2),
            _cell(r.epochs, 0),
            _cell(r.wall_s, 1),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    best = next((r for r in results if r.best), None)
    lines.append(best_line(best, rank_by) if best else f"best: none (no run has {label})")
    for name, error in (missing or {}).items():
        lines.append(f"\nnot finished: {name} ({error})")
    lines += ["", "![curves](curves.png)", "", "![predictions](grid.png)", ""]
    return "\n".join(lines)


@dataclass
class Report:
    """The rows (best marked) and the files a sweep or comparison wrote."""

    results: list[RunResult]
    rank_by: str
    out_dir: Path
    best: RunResult | None
    warnings: list[str] = field(default_factory=list)

    @property
    def files(self) -> list[Path]:
        names = ("results.csv", "results.md", "curves.png", "grid.png")
        return [self.out_dir / name for name in names]


def write_report(
    results: list[RunResult],
    out_dir: Path,
    rank_by: str,
    title: str,
    grid_images: int = GRID_IMAGES,
    fields_: Sequence[str] | None = None,
    missing: dict[str, str] | None = None,
) -> Report:
    """Rank the rows, then write results.csv, results.md, curves.png and grid.png atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for r in results:
        r.best = False
    index = choose_best(results, rank_by)
    if index is not None:
        results[index].best = True
    if fields_ is None:
        fields_ = list(dict.fromkeys(dotted for r in results for dotted in r.values))
    write_text_atomic(out_dir / "results.csv", results_csv(results, fields_))
    write_text_atomic(out_dir / "results.md", results_markdown(results, rank_by, title, missing))
    report = Report(results, rank_by, out_dir, results[index] if index is not None else None)
    plot_sweep_curves(results, out_dir / "curves.png", title=title)
    report.warnings += plot_prediction_grid(results, out_dir / "grid.png", grid_images)
    return report


# --------------------------------------------------------------------------- figures


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Path, dpi: int = 100) -> None:
    plt = _pyplot()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    plt.close(figure)
    write_bytes_atomic(path, buffer.getvalue())


def plot_sweep_curves(results: Sequence[RunResult], path: Path, title: str = "") -> None:
    """Training loss and validation MaxF per epoch, one line per run, legend = setting."""
    from semseg.inference.visualize import read_metrics_csv

    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    figure, (loss_axis, score_axis) = plt.subplots(1, 2, figsize=(12, 4.2))
    for r in results:
        series = read_metrics_csv(r.run_dir / "metrics.csv")
        label = f"{r.label} (best)" if r.best else r.label
        width = 2.6 if r.best else 1.4
        for axis, key in ((loss_axis, "train_loss"), (score_axis, "val_maxf")):
            values = [value for _, value in series.get(key, [])]
            if values:
                epochs = range(1, len(values) + 1)
                axis.plot(epochs, values, marker="o", markersize=3, linewidth=width, label=label)
    loss_axis.set(xlabel="epoch", ylabel="cross-entropy", title="training loss")
    score_axis.set(xlabel="epoch", ylabel="percent", title="validation MaxF (per epoch)")
    for axis in (loss_axis, score_axis):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    _save(figure, path)


@dataclass
class RunData:
    """What the prediction grid needs from one run: its validation names and a sample reader."""

    val_names: list[str]
    samples: dict[str, Any]
    reader: Callable[[Any], tuple[np.ndarray, np.ndarray]] | None


def run_data(run_dir: Path) -> RunData:
    """A run's validation names and labelled samples, from its config.yaml and split.json."""
    from semseg.data.datamodule import index_samples, make_reader
    from semseg.data.kitti import read_split

    config = load_config(str(run_dir / "config.yaml"))
    val_names = list(read_split(run_dir / "split.json")["val"])
    root = Path(config.data.root or "")
    if not root.is_dir() and (run_dir / "data").is_dir():  # generated data, run moved
        root = run_dir / "data"
    config.data.root = str(root)
    if config.data.kind == "synthetic":
        config.data.kind = "kitti"
    try:
        samples = {s.name: s for s in index_samples(config.data)}
        reader = make_reader(config.data, config.model.num_classes)
    except SemsegError:
        return RunData(val_names, {}, None)
    return RunData(val_names, samples, reader)


def grid_names(runs: Sequence[RunData], count: int) -> list[str]:
    """The first ``count`` validation names of the first run that every run validates on."""
    first = runs[0].val_names
    common = [name for name in first if all(name in r.val_names for r in runs[1:])]
    return (common or first)[:count]


def predict_road(run_dir: Path, images: Sequence[np.ndarray]) -> tuple[list[np.ndarray], int]:
    """Road masks predicted by the run's best checkpoint (full resolution), its road class."""
    from semseg.inference.checkpoint import load_model
    from semseg.inference.predictor import Predictor
    from semseg.training import best_checkpoint

    loaded = load_model(best_checkpoint(run_dir))
    predictor = Predictor(loaded)
    positive = loaded.positive_class
    return [p.argmax(axis=0) == positive for p in predictor.predict(list(images))], positive


def plot_prediction_grid(results: Sequence[RunResult], path: Path, count: int) -> list[str]:
    """Rows: the same validation images; columns: ground truth, then each run's prediction.

    Each cell is the overlay of the run's best-checkpoint prediction; column headers name the
    setting and its MaxF. Returns warnings (runs whose data could not be read are blank).
    """
    from semseg.inference.visualize import overlay

    warnings: list[str] = []
    runs = [run_data(r.run_dir) for r in results]
    names = grid_names(runs, count)
    columns: list[tuple[str, list[np.ndarray | None]]] = []
    truth: list[np.ndarray | None] = [None] * len(names)
    for r, data in zip(results, runs, strict=True):
        cells: list[np.ndarray | None] = [None] * len(names)
        present = [i for i, name in enumerate(names) if name in data.samples]
        if data.reader is None or len(present) < len(names):
            warnings.append(f"grid: images of {r.run_dir} not found; its cells are blank")
        if data.reader is not None and present:
            pairs = [data.reader(data.samples[names[i]]) for i in present]
            roads, positive = predict_road(r.run_dir, [image for image, _ in pairs])
            for i, (image, mask), road in zip(present, pairs, roads, strict=True):
                cells[i] = overlay(image, road)
                if truth[i] is None:
                    truth[i] = overlay(image, mask == positive)
        score = f"MaxF {r.max_f:.1f}" if r.max_f is not None else "MaxF n/a"
        header = f"{'* ' if r.best else ''}{r.label}\n{score}"
        columns.append((header, cells))
    columns.insert(0, ("ground truth", truth))
    _draw_grid(columns, names, path)
    return warnings


def _draw_grid(
    columns: Sequence[tuple[str, Sequence[np.ndarray | None]]], names: Sequence[str], path: Path
) -> None:
    plt = _pyplot()
    rows = max(1, len(names))
    shapes = [cell.shape for _, cells in columns for cell in cells if cell is not None]
    aspect = shapes[0][0] / shapes[0][1] if shapes else 0.3
    cell_width = 3.2
    figure, axes = plt.subplots(
        rows,
        len(columns),
        figsize=(cell_width * len(columns), cell_width * aspect * rows + 0.9),
        squeeze=False,
    )
    for col, (header, cells) in enumerate(columns):
        for row in range(rows):
            axis = axes[row][col]
            axis.set_xticks([])
            axis.set_yticks([])
            cell = cells[row] if row < len(cells) else None
            if cell is not None:
                axis.imshow(cell)
            else:
                axis.text(0.5, 0.5, "n/a", ha="center", va="center", transform=axis.transAxes)
            if row == 0:
                axis.set_title(header, fontsize=9)
            if col == 0 and row < len(names):
                axis.set_ylabel(names[row], fontsize=8)
    figure.tight_layout()
    _save(figure, path)


# --------------------------------------------------------------------------- compare


def flat_config(config: Config, run_dir: Path) -> dict[str, Any]:
    """``section.field -> value``; data generated into the run folder counts as the same data."""
    flat = {
        f"{section}.{key}": value
        for section, values in config.to_dict().items()
        for key, value in values.items()
    }
    root = flat.get("data.root")
    if root and Path(root).parts[-2:] == (run_dir.name, "data"):
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
    rank_by: str = "max_f",
    grid_images: int = GRID_IMAGES,
) -> Report:
    """The sweep table and figures for finished runs; settings = the config fields that differ."""
    rank_by = normalize_rank_key(rank_by)
    if not run_dirs:
        raise SemsegError("compare: name at least one run folder")
    resolved = [Path(run_dir).resolve() for run_dir in run_dirs]
    if len(set(resolved)) != len(resolved):
        raise SemsegError("compare: a run folder is named twice")
    for run_dir, given in zip(resolved, run_dirs, strict=True):
        if not (run_dir / "config.yaml").is_file():
            raise SemsegError(f"{given} is not a semseg run folder (no config.yaml)")
        if not is_finished(run_dir):
            raise SemsegError(f"{given} is not a finished run (no {FINISHED_MARKER})")
    flats = [flat_config(load_config(str(d / "config.yaml")), d) for d in resolved]
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
    if out is None:
        out = Path("runs") / f"compare-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    return write_report(
        results, Path(out), rank_by, title="Comparison", grid_images=grid_images, fields_=fields_
    )

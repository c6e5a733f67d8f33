"""The run folder: the one owner of its layout, creation, resume, locking and checkpoints.

Everything a training run produces lands in one folder (``runs/<name>-<timestamp>/`` or
``train.run_dir``)::

    config.yaml       the resolved configuration
    split.json        the train/val split (names), reused on --resume
    train.log         one line per epoch: time, epoch, mean training loss, validation scores
    metrics.csv       the same per epoch as CSV;  tensorboard/  TensorBoard events
    checkpoints/      last.ckpt and best.ckpt (best validation MaxF)
    curves.png        loss and validation scores per epoch
    overlays/         validation images with the predicted road in green
    eval_val.json     devkit metrics of best.ckpt on the validation split, full resolution
                      (multi-class: mIoU, class-average and global accuracy, per class)
    eval_val/         multi-class: confusion.png, class_iou.png, multiclass.md
    data/             synthetic scenes generated for the run (``data.kind: synthetic``)
    rounds/, boxsup/  training from boxes: each round's labels, BoxSup's candidates and labels
                      (:mod:`semseg.box_training`)
    .lock             held by the process writing the run (a second writer is refused)

``semseg demo`` adds ``heldout/``, ``eval_heldout.json``, ``heldout_overlays/`` and
``report.md``. A run is *finished* when ``eval_val.json`` (written last) holds the overall
scores. Every other module asks a :class:`RunDir` for these paths; this module imports only
the configuration, the data split helpers, errors and io.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from semseg.config import Config, load_config, save_config
from semseg.errors import SemsegError
from semseg.io import atomic_open

RUN_DIR_ENV = "SEMSEG_RUN_DIR"  # lets DDP worker processes find the run folder of rank 0
LOCK_NAME = ".lock"
TEMP_SUFFIX = ".tmp"

# Every entry a run (or the demo) writes at the top of its folder: --overwrite removes only these.
RUN_ENTRIES = frozenset(
    {
        "config.yaml",
        "split.json",
        "train.log",
        "metrics.csv",
        "checkpoints",
        "tensorboard",
        "curves.png",
        "overlays",
        "eval_val.json",
        "eval_val",
        "class_weights.json",
        "data",
        "heldout",
        "heldout_overlays",
        "eval_heldout.json",
        "report.md",
        "rounds",  # recursive training from boxes: each round's labels, quality and run
        "boxsup",  # BoxSup: candidate segments, the current labels, quality per epoch
        LOCK_NAME,
    }
)


def warn(message: str) -> None:
    print(f"semseg: warning: {message}", file=sys.stderr, flush=True)


def is_rank_zero() -> bool:
    """Whether this process is the one that owns the run folder (not a DDP worker rank)."""
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


@dataclass(frozen=True)
class RunDir:
    """One run folder: its paths and the rules for creating, resuming and finishing it."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    # ----------------------------------------------------------------------- paths

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def split(self) -> Path:
        return self.path / "split.json"

    @property
    def log(self) -> Path:
        return self.path / "train.log"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.ckpt"

    @property
    def best(self) -> Path:
        return self.checkpoints / "best.ckpt"

    @property
    def class_weights(self) -> Path:
        return self.path / "class_weights.json"

    @property
    def eval_val(self) -> Path:
        return self.path / "eval_val.json"

    @property
    def eval_val_figures(self) -> Path:
        """Multi-class runs: confusion matrix, per-class IoU bars and table of ``eval_val``."""
        return self.path / "eval_val"

    @property
    def data(self) -> Path:
        return self.path / "data"

    @property
    def overlays(self) -> Path:
        return self.path / "overlays"

    @property
    def curves(self) -> Path:
        return self.path / "curves.png"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    @property
    def heldout(self) -> Path:
        return self.path / "heldout"

    @property
    def eval_heldout(self) -> Path:
        return self.path / "eval_heldout.json"

    @property
    def heldout_overlays(self) -> Path:
        return self.path / "heldout_overlays"

    @property
    def report(self) -> Path:
        return self.path / "report.md"

    @property
    def lock_file(self) -> Path:
        return self.path / LOCK_NAME

    # ----------------------------------------------------------------------- finding one

    @classmethod
    def for_config(cls, config: Config) -> RunDir:
        """``train.run_dir``, or ``out_dir/name-timestamp`` (a DDP worker: rank 0's folder)."""
        if os.environ.get(RUN_DIR_ENV) and not is_rank_zero():
            return cls(Path(os.environ[RUN_DIR_ENV]))
        if config.train.run_dir:
            return cls(Path(config.train.run_dir))
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        return cls(Path(config.train.out_dir) / f"{config.train.name}-{stamp}")

    @classmethod
    def of_resume(cls, resume: str | Path) -> RunDir:
        """The run folder named by ``--resume`` (the folder itself or one of its checkpoints)."""
        path = Path(resume)
        run = cls(path.parent.parent if path.suffix == ".ckpt" else path)
        if not run.config.is_file():
            raise SemsegError(f"--resume {resume}: not a semseg run folder (no config.yaml)")
        return run

    @classmethod
    def of_checkpoint(cls, checkpoint: Path) -> RunDir | None:
        """The run a checkpoint belongs to (``RUN/checkpoints/x.ckpt`` or ``RUN/x.ckpt``)."""
        for folder in (checkpoint.parent, checkpoint.parent.parent):
            if (folder / "split.json").is_file():
                return cls(folder)
        return None

    # ----------------------------------------------------------------------- state

    def is_run(self) -> bool:
        """Recognisably a run folder: a config.yaml or a checkpoints/ folder, and nothing else
        than what a run writes (so --overwrite never removes a user's own files)."""
        if not self.path.is_dir():
            return False
        if not (self.config.is_file() or self.checkpoints.is_dir()):
            return False
        return not self.foreign_entries()

    def foreign_entries(self) -> list[str]:
        """Top-level entries a run does not write (temp files of atomic writes aside)."""
        return sorted(
            entry.name
            for entry in self.path.iterdir()
            if entry.name not in RUN_ENTRIES and not _is_temp(entry)
        )

    def is_empty(self) -> bool:
        return not self.path.exists() or not any(
            entry.name != LOCK_NAME for entry in self.path.iterdir()
        )

    def is_finished(self) -> bool:
        """A run is finished when its ``eval_val.json`` (written last) holds the overall scores."""
        try:
            return "all" in run_groups(self.read_eval())
        except (OSError, ValueError, KeyError, TypeError):
            return False

    def read_eval(self) -> dict[str, Any]:
        return json.loads(self.eval_val.read_text())

    def best_checkpoint(self) -> Path:
        """``best.ckpt``, or ``last.ckpt`` for a run without a validation score yet."""
        return self.best if self.best.is_file() else self.last

    def resume_checkpoint(self) -> Path | None:
        """The newest loadable checkpoint: ``last.ckpt``, else (with a warning) ``best.ckpt``,
        which then also replaces the unreadable ``last.ckpt``; ``None`` when none loads.
        """
        if is_loadable(self.last):
            return self.last
        if is_loadable(self.best):
            warn(f"{self.last} is missing or unreadable; resuming from {self.best}")
            with self.best.open("rb") as source, atomic_open(self.last, "wb") as target:
                shutil.copyfileobj(source, target)  # last.ckpt whole again, whatever follows
            return self.best
        if self.last.exists() or self.best.exists():
            warn(f"no loadable checkpoint in {self.checkpoints}; training from the start")
        return None

    def read_split(self) -> dict[str, list[str]]:
        from semseg.data.kitti import read_split

        return read_split(self.split)

    def write_split(self, split: dict[str, list[str]]) -> None:
        from semseg.data.kitti import write_split

        write_split(self.split, split)

    def read_config(self) -> Config:
        return load_config(str(self.config))

    def save_config(self, config: Config) -> None:
        save_config(config, self.config)

    # ----------------------------------------------------------------------- changing it

    def check_new(self, overwrite: bool = False) -> None:
        """Refuse, before anything is written, a folder a new run may not use: an existing
        non-empty one without ``overwrite``, or with it one that is not recognisably a run."""
        if self.is_empty():
            return
        if not overwrite:
            raise SemsegError(f"{self.path} exists; use --resume {self.path} or --overwrite")
        foreign = self.foreign_entries()
        if foreign:
            raise SemsegError(
                f"--overwrite: {self.path} is not a semseg run folder (it holds {foreign[0]!r});"
                " nothing was deleted"
            )
        if not (self.config.is_file() or self.checkpoints.is_dir()):
            raise SemsegError(
                f"--overwrite: {self.path} is not a semseg run folder (no config.yaml or "
                "checkpoints/); nothing was deleted"
            )

    def create(self, overwrite: bool = False) -> None:
        """Make the folder for a new run (see :meth:`check_new`); with ``overwrite`` only what
        a run writes is removed. Call it holding :meth:`lock`."""
        self.check_new(overwrite)
        self.clear()
        self.path.mkdir(parents=True, exist_ok=True)

    def clear(self) -> None:
        """Remove what a run wrote here; refuse (and remove nothing) for any other folder."""
        if not self.path.is_dir() or self.is_empty():
            return
        self.check_new(overwrite=True)
        for entry in self.path.iterdir():
            if entry.name == LOCK_NAME:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()

    def remove_temp_files(self) -> list[Path]:
        """Delete temp files that a killed atomic write left behind (the writer holds the lock)."""
        leaked = []
        for folder in (self.path, self.checkpoints, self.overlays):
            if folder.is_dir():
                leaked += [entry for entry in folder.iterdir() if _is_temp(entry)]
        for entry in leaked:
            entry.unlink(missing_ok=True)
        return leaked

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold ``.lock`` for as long as this process writes the run; a second writer (another
        ``train --resume``, a sweep started twice, an orphaned worker) is refused."""
        self.path.mkdir(parents=True, exist_ok=True)
        handle = open(self.lock_file, "a")  # noqa: SIM115 (held for the block)
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                raise SemsegError(
                    f"{self.path} is being written by another semseg process; wait for it or "
                    "stop it first"
                ) from error
            yield
        finally:
            handle.close()


def _is_temp(entry: Path) -> bool:
    """A temp file of :func:`semseg.io.atomic_open` (``.semseg-XXXX.tmp``; earlier releases:
    ``.NAME.XXXX.tmp``)."""
    return entry.is_file() and entry.name.startswith(".") and entry.name.endswith(TEMP_SUFFIX)


def is_loadable(checkpoint: Path) -> bool:
    """A complete checkpoint file: torch checkpoints are zip archives whose every member's CRC
    must check out (a file cut short by a kill, or damaged later, does not)."""
    if not checkpoint.is_file() or not zipfile.is_zipfile(checkpoint):
        return False
    try:
        with zipfile.ZipFile(checkpoint) as archive:
            return archive.testzip() is None
    except (OSError, zipfile.BadZipFile, EOFError):
        return False


def run_groups(results: dict[str, Any]) -> dict[str, Any]:
    """The perspective-space groups of an evaluation result (flat or per-space layout)."""
    if "groups" in results:
        return results["groups"]
    return results["spaces"]["perspective"]["groups"]


def save_checkpoint_atomic(checkpoint: dict[str, Any], path: Path) -> None:
    """``torch.save`` into a temp file beside ``path``, fsync, rename: a kill at any moment
    leaves either the previous checkpoint or the new one, never a torn file."""
    import torch

    with atomic_open(path, "wb") as stream:
        torch.save(checkpoint, stream)

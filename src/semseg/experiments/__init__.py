"""Hyperparameter sweeps and run comparisons, decided by measured validation quality.

A sweep is a grid of ordinary training runs under one folder::

    runs/sweep-<name>-<timestamp>/
        sweep.json                 the base configuration, the grid and every setting's folder
        keep_prob=0.5,lr=1e-4/     one run folder per setting (see semseg.runs)
        logs/                      stdout/stderr of each setting when run with --jobs N > 1
        results.csv, results.md    one row per setting; the best one (by --rank-by) marked
        curves.png                 training loss and validation MaxF per epoch, one line each
                                   (mIoU for multi-class runs)
        grid.png                   the same validation images (rows) predicted by each setting

Binary road runs are ranked by default by the devkit's MaxF and show MaxF, AP and IoU;
multi-class runs (``model.num_classes`` > 2) by mIoU and show mIoU, class-average and global
accuracy (:mod:`~.results`). One sweep or comparison holds runs of one kind.

A run is *finished* when it has ``eval_val.json`` (:meth:`semseg.runs.RunDir.is_finished`).
Re-running a sweep (``--resume DIR``, or the same ``--out``) skips finished settings, resumes
unfinished ones from their newest loadable checkpoint and restarts the others from scratch.

The package owns the sweep folder, by job: :mod:`~.grid` (``--set`` items to settings),
:mod:`~.plan` (the sweep folder and ``sweep.json``), :mod:`~.running` (training the settings),
:mod:`~.results` (the ranked table), :mod:`~.figures` (curves and prediction grid) and
:mod:`~.compare` (``semseg compare``). It may import the configuration, :mod:`semseg.runs`,
:mod:`semseg.training`, the data readers and the inference layer; nothing imports it but the
command line.
"""

from __future__ import annotations

from pathlib import Path

from semseg.experiments.compare import compare_runs, differing_fields, flat_config
from semseg.experiments.grid import Setting, expand_grid, folder_name, parse_sets, split_values
from semseg.experiments.plan import MANIFEST, SweepPlan, load_sweep, plan_sweep
from semseg.experiments.results import (
    GRID_IMAGES,
    RANK_KEYS,
    Report,
    RunResult,
    best_line,
    choose_best,
    collect_result,
    normalize_rank_key,
    resolve_rank_key,
    table_cells,
    table_headers,
    write_report,
)
from semseg.experiments.running import SweepOutcome, run_sweep, train_setting
from semseg.runs import RunDir

__all__ = [
    "GRID_IMAGES",
    "MANIFEST",
    "RANK_KEYS",
    "Report",
    "RunResult",
    "Setting",
    "SweepOutcome",
    "SweepPlan",
    "best_line",
    "choose_best",
    "collect_result",
    "compare_runs",
    "differing_fields",
    "expand_grid",
    "flat_config",
    "folder_name",
    "is_finished",
    "load_sweep",
    "normalize_rank_key",
    "parse_sets",
    "plan_sweep",
    "resolve_rank_key",
    "run_sweep",
    "split_values",
    "table_cells",
    "table_headers",
    "train_setting",
    "write_report",
]


def is_finished(run_dir: Path) -> bool:
    """Whether the run in ``run_dir`` is finished (its ``eval_val.json`` holds the scores)."""
    return RunDir(run_dir).is_finished()

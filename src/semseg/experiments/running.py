"""Running a sweep: each unfinished setting trained (one at a time or in worker processes),
then the results table and figures. Workers die with the sweep process; every run folder is
locked by the process training it."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from semseg.config import Config, config_from_dict
from semseg.errors import SemsegError
from semseg.experiments.grid import Setting
from semseg.experiments.plan import SweepPlan
from semseg.experiments.results import Report, collect_result, write_report
from semseg.io import first_line
from semseg.runs import RunDir, is_loadable

Event = Callable[[str], None]


def train_setting(config: Config, run_dir: Path) -> str:
    """Bring one run to finished: skip, resume from ``last.ckpt``, or start afresh.

    Returns ``"skipped"``, ``"resumed"`` or ``"trained"``. A folder without a loadable
    checkpoint is cleared first (only what a run writes), so nothing half-written (data, logs)
    leaks into the restart.
    """
    from semseg import training

    run = RunDir(run_dir)
    if run.is_finished():
        return "skipped"
    if run.config.is_file() and (is_loadable(run.last) or is_loadable(run.best)):
        training.train(config, resume=run.path)
        return "resumed"
    if not run.is_empty():
        with run.lock():
            run.clear()
    training.train(config, overwrite=True, run_dir=run.path)
    return "trained"


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent_pid: int) -> None:
    """Make this worker process end when the sweep process that started it ends, even by
    SIGKILL: the kernel's parent-death signal on Linux, and a thread that watches the parent
    everywhere (it also covers a parent that died before the signal was armed)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()


def _watch_parent(parent_pid: int, interval_s: float = 1.0) -> None:
    while os.getppid() == parent_pid:
        time.sleep(interval_s)
    os.kill(os.getpid(), signal.SIGKILL)


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
            if RunDir(plan.run_dir(setting)).is_finished():
                outcome.status[setting.name] = "skipped"
                say(f"{setting.name}: finished before, skipped")
            else:
                pending.append(setting)
        if jobs <= 1 or len(pending) <= 1:
            _run_sequential(plan, pending, outcome, say)
        else:
            _run_parallel(plan, pending, min(jobs, len(pending)), outcome, say)
        finished = [s for s in plan.settings if RunDir(plan.run_dir(s)).is_finished()]
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
    with ProcessPoolExecutor(
        max_workers=jobs,
        mp_context=context,
        initializer=die_with_parent,
        initargs=(os.getpid(),),
    ) as pool:
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

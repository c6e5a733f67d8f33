"""The run folder (semseg.runs): locking, atomic checkpoints, resume fallback, best checkpoint,
the per-epoch files' content, and sweep workers that die with their parent."""

from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from PIL import Image

from semseg.errors import SemsegError
from semseg.inference.checkpoint import read_checkpoint
from semseg.io import TEMP_PREFIX
from semseg.runs import RunDir, is_loadable
from semseg.training import AtomicCheckpointIO, build_trainer, train


def steps_per_epoch(run: RunDir, batch_size: int) -> int:
    return math.ceil(len(run.read_split()["train"]) / batch_size)


@pytest.fixture(scope="module")
def four_epochs(tmp_path_factory: pytest.TempPathFactory) -> RunDir:
    """A finished four-epoch tiny run."""
    out = tmp_path_factory.mktemp("four")
    return RunDir(train(tiny_config(out, epochs=4, run_dir=str(out / "run"))))


# ------------------------------------------------------------------- one writer per run


def test_a_second_writer_is_refused_and_deletes_nothing(four_epochs: RunDir, tmp_path: Path):
    config = tiny_config(tmp_path, epochs=5, run_dir=str(four_epochs.path))
    before = sorted(p.name for p in four_epochs.path.iterdir())
    stamp = four_epochs.last.stat().st_mtime_ns
    with four_epochs.lock():  # as if a training process (an orphaned worker) held the run
        with pytest.raises(SemsegError, match="being written by another semseg process"):
            train(config, resume=four_epochs.path)
        with pytest.raises(SemsegError, match="being written by another semseg process"):
            train(config, overwrite=True)
    assert sorted(p.name for p in four_epochs.path.iterdir()) == before
    assert four_epochs.last.stat().st_mtime_ns == stamp


def test_the_lock_is_held_across_processes(tmp_path: Path):
    run = RunDir(tmp_path / "run")
    script = textwrap.dedent(
        f"""
        import sys, time
        from semseg.runs import RunDir
        with RunDir({str(run.path)!r}).lock():
            print("locked", flush=True)
            time.sleep(60)
        """
    )
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(SemsegError, match="another semseg process"), run.lock():
            pass
    finally:
        holder.kill()
        holder.wait()
    with run.lock():  # released when its holder died
        pass


# ------------------------------------------------------------------- atomic checkpoints


def test_trainer_writes_checkpoints_through_the_atomic_writer(tmp_path: Path):
    trainer = build_trainer(tiny_config(tmp_path), RunDir(tmp_path / "run"), progress=False)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def test_a_kill_during_a_checkpoint_write_leaves_the_old_checkpoint(tmp_path: Path):
    """A SIGKILL in the middle of writing last.ckpt: the previous file stays whole, the temp
    file is in the checkpoint's own folder (no cross-filesystem move), and it is cleaned up."""
    run = RunDir(tmp_path / "run")
    run.checkpoints.mkdir(parents=True)
    torch.save({"epoch": 1, "payload": torch.arange(10)}, run.last)
    old = run.last.read_bytes()
    script = textwrap.dedent(
        f"""
        import sys, time, torch
        from pathlib import Path
        from semseg.runs import save_checkpoint_atomic

        def half_then_hang(obj, stream):
            stream.write(b"PK" + bytes(4096))
            stream.flush()
            print("writing", flush=True)
            time.sleep(60)

        torch.save = half_then_hang
        save_checkpoint_atomic({{"epoch": 2}}, Path({str(run.last)!r}))
        """
    )
    writer = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert writer.stdout is not None and writer.stdout.readline().strip() == "writing"
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert run.last.read_bytes() == old and is_loadable(run.last)
    leaked = [p for p in run.checkpoints.iterdir() if p.name.endswith(".tmp")]
    assert len(leaked) == 1 and leaked[0].name.startswith(TEMP_PREFIX)
    assert run.remove_temp_files() == leaked
    assert sorted(p.name for p in run.checkpoints.iterdir()) == ["last.ckpt"]


def test_resume_falls_back_to_the_newest_loadable_checkpoint(
    four_epochs: RunDir, tmp_path: Path, capsys: pytest.CaptureFixture
):
    import shutil

    run = RunDir(tmp_path / "copy")
    shutil.copytree(four_epochs.path, run.path)
    run.eval_val.unlink()
    best_epoch = read_checkpoint(run.best)["epoch"] + 1
    data = run.last.read_bytes()
    run.last.write_bytes(data[: len(data) // 2])  # torn by a kill (an older release)
    leaked = run.checkpoints / ".last.ckpt.x1y2.tmp"
    leaked.write_bytes(b"half a checkpoint")
    assert not is_loadable(run.last) and is_loadable(run.best)
    config = run.read_config()
    train(config, resume=run.path)
    captured = capsys.readouterr()
    assert "resuming from" in captured.err
    printed = [line for line in captured.out.splitlines() if "  epoch " in line]
    resumed_epochs = [line.split("  epoch ")[1].split("/")[0] for line in printed]
    assert resumed_epochs == [str(epoch) for epoch in range(best_epoch + 1, 5)]
    epochs = [int(row.split(",")[0]) for row in run.metrics.read_text().splitlines()[1:]]
    assert epochs == [1, 2, 3, 4]
    log_epochs = [
        line.split("epoch ")[1].split("/")[0] for line in run.log.read_text().splitlines()
    ]
    assert log_epochs == ["1", "2", "3", "4"]
    assert read_checkpoint(run.last)["global_step"] == 4 * steps_per_epoch(run, 4)
    assert not leaked.exists() and run.is_finished()


# ------------------------------------------------------------------- best.ckpt, log files


def read_metrics(run: RunDir) -> list[dict[str, str]]:
    with run.metrics.open(newline="") as stream:
        return list(csv.DictReader(stream))


def test_best_checkpoint_is_the_epoch_with_the_highest_validation_maxf(four_epochs: RunDir):
    rows = read_metrics(four_epochs)
    scores = [float(row["val_maxf"]) for row in rows]
    assert len(set(scores)) > 1, "the scores must differ for this test to mean something"
    best_epoch = int(rows[scores.index(max(scores))]["epoch"])
    best = read_checkpoint(four_epochs.best)
    assert best["epoch"] + 1 == best_epoch, (scores, best["epoch"])
    callback_states = [v for k, v in best["callbacks"].items() if "'val_maxf'" in k]
    (state,) = callback_states
    assert float(state["best_model_score"]) == pytest.approx(max(scores), abs=1e-5)
    assert read_checkpoint(four_epochs.last)["epoch"] == 3


def test_metrics_csv_has_one_row_per_epoch_equal_to_train_log(four_epochs: RunDir):
    rows = read_metrics(four_epochs)
    lines = four_epochs.log.read_text().splitlines()
    assert [row["epoch"] for row in rows] == ["1", "2", "3", "4"]
    assert len(lines) == 4
    for row, line in zip(rows, lines, strict=True):
        words = line.split()
        logged = {words[i]: words[i + 1] for i in range(len(words) - 1)}
        assert logged["epoch"] == f"{row['epoch']}/4"
        assert float(logged["loss"]) == pytest.approx(float(row["train_loss"]), abs=5e-5)
        assert float(logged["val_maxf"]) == pytest.approx(float(row["val_maxf"]), abs=5e-3)
        assert float(logged["val_iou"]) == pytest.approx(float(row["val_iou"]), abs=5e-3)
        assert float(words[-1].rstrip("s")) == pytest.approx(float(row["seconds"]), abs=0.051)
        for key in ("val_loss", "val_ap", "val_miou", "val_acc"):
            assert math.isfinite(float(row[key])), key
    step = read_checkpoint(four_epochs.last)["global_step"]
    assert step == 4 * steps_per_epoch(four_epochs, 4)


def test_run_curves_and_tensorboard_hold_every_epoch(four_epochs: RunDir):
    with Image.open(four_epochs.curves) as image:
        width, height = image.size
        assert width >= 400 and height >= 200
        assert len(image.convert("L").getcolors(maxcolors=1 << 16) or []) > 10  # not blank
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(four_epochs.tensorboard))
    events.Reload()
    maxf = events.Scalars("val_maxf")
    rows = read_metrics(four_epochs)
    assert len(maxf) == 4
    for event, row in zip(maxf, rows, strict=True):
        assert event.value == pytest.approx(float(row["val_maxf"]), abs=1e-4)


# ------------------------------------------------------------------- sweep workers


def children_of(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


SWEEP_SETS = [
    "data.synthetic_train=24",
    "data.synthetic_size=[60,200]",
    "data.height=64",
    "data.width=192",
    "model.width_mult=0.125",
    "train.epochs=8",
    "train.batch_size=2",
    "train.max_time_s=null",
    "train.progress=false",
    "model.keep_prob=0.5,1.0",
]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sweep_workers_die_with_a_killed_sweep_and_the_sweep_resumes(tmp_path: Path):
    out = tmp_path / "sweep"
    args = [sys.executable, "-m", "semseg.cli", "sweep", "--config", "demo", "--jobs", "2"]
    for item in SWEEP_SETS:
        args += ["--set", item]
    args += ["--out", str(out)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    sweep = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    runs = [RunDir(out / "keep_prob=0.5"), RunDir(out / "keep_prob=1.0")]
    deadline = time.monotonic() + 300
    while not all(run.last.is_file() for run in runs):  # both settings past epoch 1
        assert sweep.poll() is None, "the sweep ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    workers = [pid for pid in children_of(sweep.pid) if alive(pid)]
    assert len(workers) >= 2, workers
    sweep.send_signal(signal.SIGKILL)
    sweep.wait()
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(pid) for pid in workers), "workers outlived the killed sweep"
    first_lines = [run.log.read_text().splitlines()[0] for run in runs]

    resumed = subprocess.run(
        [sys.executable, "-m", "semseg.cli", "sweep", "--resume", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "epoch 1/8" not in resumed.stdout  # no setting ran its first epoch again
    assert resumed.stdout.count("epoch 8/8") == 2
    for run, first in zip(runs, first_lines, strict=True):
        lines = run.log.read_text().splitlines()
        assert lines[0] == first
        assert [line.split("epoch ")[1].split()[0] for line in lines] == [
            f"{epoch}/8" for epoch in range(1, 9)
        ]
        assert read_checkpoint(run.last)["global_step"] == 8 * steps_per_epoch(run, 2)
        assert run.is_finished()

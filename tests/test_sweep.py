"""Sweeps and comparisons: the grid, ranking by measured MaxF, figures, resuming, errors."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import assert_one_line_error
from PIL import Image

import semseg.training
from semseg.errors import SemsegError
from semseg.experiments import (
    collect_result,
    compare_runs,
    expand_grid,
    is_finished,
    load_sweep,
    parse_sets,
    plan_sweep,
    run_sweep,
    write_report,
)

TINY = [
    "data.synthetic_train=12",
    "data.synthetic_size=[60,200]",
    "data.height=32",
    "data.width=96",
    "model.width_mult=0.125",
    "train.epochs=2",
    "train.batch_size=4",
    "train.max_time_s=null",
    "train.progress=false",
]
GRID = "model.keep_prob=0.5,1.0"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def semseg_cli(*args: str) -> subprocess.CompletedProcess:
    """The installed ``semseg`` console script, as a user runs it."""
    executable = shutil.which("semseg")
    assert executable, "the semseg console script is installed with the package"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([executable, *args], capture_output=True, text=True, timeout=120, env=env)


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as stream:
        return list(csv.DictReader(stream))


def assert_png(path: Path, min_width: int = 300, min_height: int = 150) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC, path
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        width, height = image.size
    assert width >= min_width and height >= min_height, (path, image.size)
    assert width <= 8000 and height <= 8000, (path, image.size)


class TrainCalls:
    """Wraps ``semseg.training.train``: records each call; can interrupt the n-th one."""

    def __init__(self, interrupt_at: int | None = None) -> None:
        self.calls: list[dict] = []
        self.interrupt_at = interrupt_at
        self.real = semseg.training.train

    def __call__(self, config, resume=None, overwrite=False, run_dir=None):
        self.calls.append(
            {
                "resume": resume,
                "overwrite": overwrite,
                "run_dir": run_dir,
                "keep_prob": config.model.keep_prob,
            }
        )
        if len(self.calls) == self.interrupt_at:
            raise KeyboardInterrupt  # as if the sweep were killed while this run started
        return self.real(config, resume=resume, overwrite=overwrite, run_dir=run_dir)


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished two-setting sweep, run two settings at a time (worker processes)."""
    out = tmp_path_factory.mktemp("sweeps") / "kp"
    plan = plan_sweep("demo", [*TINY, GRID], out=out)
    outcome = run_sweep(plan, jobs=2)
    assert not outcome.failures, outcome.failures
    return out


# ------------------------------------------------------------------ parsing the grid


def test_grid_is_the_cartesian_product_of_value_lists():
    overrides, grid = parse_sets(
        [
            "model.keep_prob=0.1,0.5",
            "train.lr=1e-4,1e-5",
            "train.epochs=3",
            "data.synthetic_size=[60,200]",
            "data.categories=um,umm",
        ]
    )
    assert overrides == ["train.epochs=3", "data.synthetic_size=[60,200]", "data.categories=um,umm"]
    settings = expand_grid(grid)
    assert [s.name for s in settings] == [
        "keep_prob=0.1,lr=1e-4",
        "keep_prob=0.1,lr=1e-5",
        "keep_prob=0.5,lr=1e-4",
        "keep_prob=0.5,lr=1e-5",
    ]
    assert settings[1].values == {"model.keep_prob": 0.1, "train.lr": 1e-5}
    assert settings[1].folder == settings[1].name
    _, grid = parse_sets(["data.synthetic_size=[60,200],[90,300]"])
    assert [v for _, v in grid["data.synthetic_size"]] == [[60, 200], [90, 300]]


@pytest.mark.parametrize(
    ("item", "fragment"),
    [
        ("model.keep_prob=0.5,abc", "cannot use 'abc'"),
        ("model.no_such=1,2", "unknown field"),
        ("keep_prob=0.5,1.0", "data|model|train.FIELD"),
        ("model.keep_prob=0.5,0.50", "listed twice"),
        ("model.keep_prob=0.5,", "empty value"),
        ("model.keep_prob", "expected section.field=value"),
    ],
)
def test_bad_grid_values_are_semseg_errors(item: str, fragment: str):
    with pytest.raises(SemsegError, match=fragment):
        parse_sets([item])


def test_out_of_range_setting_is_refused_before_training(tmp_path: Path):
    with pytest.raises(SemsegError, match="keep_prob must be in"):
        plan_sweep("demo", [*TINY, "model.keep_prob=0.5,1.5"], out=tmp_path / "s")
    assert not (tmp_path / "s").exists()


# ------------------------------------------------------------------ a whole sweep


def test_sweep_ranks_settings_by_validation_maxf(sweep_dir: Path):
    manifest = json.loads((sweep_dir / "sweep.json").read_text())
    assert manifest["grid"] == {"model.keep_prob": [0.5, 1.0]}
    assert [s["run_dir"] for s in manifest["settings"]] == ["keep_prob=0.5", "keep_prob=1.0"]
    rows = read_rows(sweep_dir / "results.csv")
    assert [row["setting"] for row in rows] == ["keep_prob=0.5", "keep_prob=1.0"]
    measured = {}
    for row in rows:
        run_dir = sweep_dir / row["setting"]
        assert is_finished(run_dir)
        scores = json.loads((run_dir / "eval_val.json").read_text())["groups"]["all"]
        measured[row["setting"]] = scores["max_f"]
        assert float(row["max_f"]) == pytest.approx(scores["max_f"], rel=1e-5)
        assert float(row["ap"]) == pytest.approx(scores["ap"], rel=1e-5, abs=1e-6)
        assert float(row["iou"]) == pytest.approx(scores["iou"], rel=1e-5, abs=1e-6)
        assert row["epochs"] == "2"
        assert float(row["train_loss"]) > 0 and float(row["wall_s"]) > 0
        assert float(row["model.keep_prob"]) == float(row["setting"].split("=")[1])
    best = max(measured, key=measured.get)
    assert [row["setting"] for row in rows if row["best"] == "*"] == [best]
    markdown = (sweep_dir / "results.md").read_text()
    assert f"best: {best} (MaxF {measured[best]:.1f})" in markdown
    assert markdown.count("| keep_prob=") == 2
    assert_png(sweep_dir / "curves.png")
    assert_png(sweep_dir / "grid.png", min_width=300, min_height=150)
    with Image.open(sweep_dir / "grid.png") as grid, Image.open(sweep_dir / "curves.png") as c:
        assert grid.size != c.size
    assert sorted(p.name for p in (sweep_dir / "logs").iterdir()) == [
        "keep_prob=0.5.log",
        "keep_prob=1.0.log",
    ]


def test_rerun_of_a_finished_sweep_trains_nothing(sweep_dir: Path, monkeypatch):
    calls = TrainCalls()
    monkeypatch.setattr(semseg.training, "train", calls)
    outcome = run_sweep(load_sweep(sweep_dir), jobs=1)
    assert calls.calls == []
    assert outcome.status == {"keep_prob=0.5": "skipped", "keep_prob=1.0": "skipped"}


def test_interrupted_sweep_resumes_without_retraining(sweep_dir: Path, tmp_path: Path, monkeypatch):
    # What a sweep killed after its first run leaves behind: sweep.json and one finished run.
    out = tmp_path / "sweep"
    out.mkdir()
    shutil.copy(sweep_dir / "sweep.json", out / "sweep.json")
    shutil.copytree(sweep_dir / "keep_prob=0.5", out / "keep_prob=0.5")
    first, second = out / "keep_prob=0.5", out / "keep_prob=1.0"
    best_ckpt = first / "checkpoints" / "best.ckpt"
    stamp = best_ckpt.stat().st_mtime_ns

    killed = TrainCalls(interrupt_at=1)  # killed again as the second run starts
    monkeypatch.setattr(semseg.training, "train", killed)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(plan_sweep("demo", [*TINY, GRID], out=out))
    assert [call["keep_prob"] for call in killed.calls] == [1.0]
    assert not (out / "results.csv").exists()

    resumed = TrainCalls()
    monkeypatch.setattr(semseg.training, "train", resumed)
    outcome = run_sweep(plan_sweep("demo", [*TINY, GRID], out=out))  # same command, same --out
    assert [call["keep_prob"] for call in resumed.calls] == [1.0]
    assert outcome.status == {"keep_prob=0.5": "skipped", "keep_prob=1.0": "trained"}
    assert best_ckpt.stat().st_mtime_ns == stamp
    assert is_finished(second)
    rows = read_rows(out / "results.csv")
    assert [row["setting"] for row in rows] == ["keep_prob=0.5", "keep_prob=1.0"]
    with pytest.raises(SemsegError, match="different sweep"):
        plan_sweep("demo", [*TINY, GRID, "train.lr=1e-3,1e-4"], out=out)


def test_half_finished_runs_are_rerun(sweep_dir: Path, tmp_path: Path, monkeypatch):
    out = tmp_path / "copy"
    shutil.copytree(sweep_dir, out)
    resumable, broken = out / "keep_prob=0.5", out / "keep_prob=1.0"
    (resumable / "eval_val.json").unlink()  # killed during the final evaluation
    for path in broken.iterdir():  # killed before the first checkpoint: only config.yaml
        if path.name != "config.yaml":
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    (broken / "metrics.csv").write_text("epoch,train_loss\n1,0.")  # a torn write
    calls = TrainCalls()
    monkeypatch.setattr(semseg.training, "train", calls)
    outcome = run_sweep(load_sweep(out))
    assert outcome.status == {"keep_prob=0.5": "resumed", "keep_prob=1.0": "trained"}
    assert Path(calls.calls[0]["resume"]) == resumable
    assert Path(calls.calls[1]["run_dir"]) == broken and calls.calls[1]["resume"] is None
    assert is_finished(resumable) and is_finished(broken)
    assert "0.\n" not in (broken / "metrics.csv").read_text()
    rows = read_rows(out / "results.csv")
    assert [row["epochs"] for row in rows] == ["2", "2"]


# ------------------------------------------------------------------ compare and the CLI


def test_compare_two_finished_runs(sweep_dir: Path, tmp_path: Path):
    runs = [str(sweep_dir / "keep_prob=0.5"), str(sweep_dir / "keep_prob=1.0")]
    result = semseg_cli("compare", *runs, "--out", str(tmp_path / "cmp"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "best: keep_prob=" in result.stdout
    rows = read_rows(tmp_path / "cmp" / "results.csv")
    assert [row["setting"] for row in rows] == ["keep_prob=0.5", "keep_prob=1.0"]
    assert list(rows[0])[:3] == ["best", "setting", "model.keep_prob"]
    assert sum(row["best"] == "*" for row in rows) == 1
    sweep_rows = read_rows(sweep_dir / "results.csv")
    assert [r["best"] for r in rows] == [r["best"] for r in sweep_rows]
    assert_png(tmp_path / "cmp" / "grid.png")
    assert_png(tmp_path / "cmp" / "curves.png")


def test_compare_refuses_unfinished_runs(sweep_dir: Path, tmp_path: Path):
    half = tmp_path / "half"
    half.mkdir()
    shutil.copy(sweep_dir / "keep_prob=0.5" / "config.yaml", half / "config.yaml")
    with pytest.raises(SemsegError, match="not a finished run"):
        compare_runs([sweep_dir / "keep_prob=0.5", half], out=tmp_path / "cmp")
    with pytest.raises(SemsegError, match="not a semseg run folder"):
        compare_runs([tmp_path], out=tmp_path / "cmp")


def test_cli_bad_set_is_a_one_line_error(tmp_path: Path):
    out = str(tmp_path / "s")
    result = semseg_cli(
        "sweep", "--config", "demo", "--set", "model.keep_prob=0.5,abc", "--out", out
    )
    assert_one_line_error(result, "model.keep_prob", "abc")
    result = semseg_cli("sweep", "--config", "demo", "--set", "model.dropout=0.5,1", "--out", out)
    assert_one_line_error(result, "unknown field", "model.dropout")
    result = semseg_cli("sweep", "--set", GRID, "--rank-by", "speed", "--out", out)
    assert_one_line_error(result, "--rank-by")
    result = semseg_cli("compare", str(tmp_path))
    assert_one_line_error(result, "not a semseg run folder")
    assert not (tmp_path / "s").exists()


# ------------------------------------------------------------------ the figures' content


def test_figures_hold_one_curve_per_setting_and_one_column_per_run(
    sweep_dir: Path, tmp_path: Path, monkeypatch
):
    import semseg.experiments.figures as figures
    from semseg.runs import RunDir

    saved = {}
    real_save = figures._save

    def record(figure, path, dpi=100):
        saved[Path(path).name] = figure
        real_save(figure, path, dpi)

    monkeypatch.setattr(figures, "_save", record)
    plan = load_sweep(sweep_dir)
    results = [collect_result(plan.run_dir(s), s.name, s.values) for s in plan.settings]
    write_report(results, tmp_path / "report", "max_f", title="t", grid_images=3)

    loss_axis, score_axis = saved["curves.png"].axes[:2]
    for axis, column in ((loss_axis, "train_loss"), (score_axis, "val_maxf")):
        lines = axis.get_lines()
        assert len(lines) == len(plan.settings)  # one curve per setting
        for line, setting in zip(lines, plan.settings, strict=True):
            assert line.get_label().startswith(setting.name)
            rows = read_rows(RunDir(plan.run_dir(setting)).metrics)
            assert list(line.get_xdata()) == [1, 2]
            assert list(line.get_ydata()) == pytest.approx([float(r[column]) for r in rows])
    grid_axes = saved["grid.png"].axes
    assert len(grid_axes) == 3 * (1 + len(plan.settings))  # rows: images; columns: truth + runs
    headers = [axis.get_title() for axis in grid_axes[: 1 + len(plan.settings)]]
    assert headers[0] == "ground truth"
    assert [h.split("\n")[0].lstrip("* ") for h in headers[1:]] == [s.name for s in plan.settings]
    assert all(axis.get_images() for axis in grid_axes)  # every cell drawn, none blank
    with Image.open(tmp_path / "report" / "grid.png") as grid:
        width, height = grid.size
    figure_width, figure_height = saved["grid.png"].get_size_inches() * 100
    assert (width, height) == (round(figure_width), round(figure_height))

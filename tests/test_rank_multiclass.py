"""Sweeps and comparisons of multi-class runs: ranked by mIoU (or class-average / global
accuracy), their columns in the table, mIoU in the curves and grid, and the errors for a key the
runs do not have and for binary and multi-class runs mixed."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_one_line_error, run_cli, tiny_checkpoint
from PIL import Image

from semseg.config import load_config, save_config
from semseg.errors import SemsegError
from semseg.experiments import compare_runs, load_sweep, plan_sweep, run_sweep
from semseg.training import METRIC_COLUMNS

CLASSES = [f"class{k}" for k in range(11)]
HEIGHT, WIDTH = 32, 96
NAMES = ["a", "b", "c"]

# name -> (miou, mean_acc, global_acc, val_miou per epoch, train_loss per epoch)
MULTICLASS_RUNS = {
    "lr_high": (40.0, 70.0, 80.0, [30.0, 38.0], [1.5, 1.1]),
    "lr_mid": (55.5, 60.0, 85.0, [45.0, 54.0], [1.4, 0.9]),
    "lr_low": (50.0, 65.0, 90.0, [41.0, 49.0], [1.6, 1.2]),
}


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as stream:
        return list(csv.DictReader(stream))


def folder_data(root: Path, num_classes: int) -> Path:
    """``images/`` and index ``masks/`` of three small scenes: vertical bands of classes."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for index, name in enumerate(NAMES):
        image = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
        mask = ((np.arange(WIDTH) // 8 + index) % num_classes).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"{name}.png")
        Image.fromarray(np.tile(mask, (HEIGHT, 1))).save(root / "masks" / f"{name}.png")
    return root


def metrics_csv(val_scores: list[float], train_losses: list[float], column: str) -> str:
    """A ``metrics.csv`` as the EpochLog callback writes it (empty cells for unlogged columns)."""
    lines = [",".join(("epoch", "train_loss", *METRIC_COLUMNS, "seconds"))]
    for epoch, (score, loss) in enumerate(zip(val_scores, train_losses, strict=True), start=1):
        cells = {"val_loss": f"{loss + 0.1:.6f}", column: f"{score:.6f}"}
        row = [str(epoch), f"{loss:.6f}", *(cells.get(key, "") for key in METRIC_COLUMNS)]
        lines.append(",".join([*row, "12.50"]))
    return "\n".join(lines) + "\n"


def train_log(epochs: int) -> str:
    return "".join(
        f"2026-01-01T00:00:0{e}  epoch {e}/{epochs}  loss 1.0000  12.5s\n"
        for e in range(1, epochs + 1)
    )


def multiclass_eval(miou: float, mean_acc: float, global_acc: float) -> dict:
    """``eval_val.json`` of a multi-class run."""
    return {
        "checkpoint": "checkpoints/best.ckpt",
        "model": "fcn8s",
        "split": "val",
        "space": "perspective",
        "task": "multiclass",
        "num_images": len(NAMES),
        "classes": CLASSES,
        "groups": {
            "all": {
                "miou": miou,
                "mean_acc": mean_acc,
                "global_acc": global_acc,
                "fwiou": global_acc - 5.0,
                "pixels": HEIGHT * WIDTH * len(NAMES),
                "num_images": len(NAMES),
            }
        },
        "per_class": {name: {"iou": miou, "accuracy": mean_acc} for name in CLASSES},
        "confusion": np.eye(len(CLASSES), dtype=int).tolist(),
        "unreadable": [],
    }


def binary_eval(max_f: float) -> dict:
    """``eval_val.json`` of a binary road run (devkit groups)."""
    scores = {"max_f": max_f, "ap": max_f - 3, "iou": max_f - 10, "miou": 70.0, "num_images": 3}
    return {"checkpoint": "checkpoints/best.ckpt", "groups": {"all": scores}}


def fake_run(
    run_dir: Path,
    data: Path,
    evaluation: dict,
    val_scores: list[float],
    train_losses: list[float],
    num_classes: int,
    lr: float,
    checkpoint: Path | None = None,
) -> Path:
    """A finished run folder as training leaves it (config, split, logs, eval_val.json)."""
    config = load_config("camvid_fast_cpu" if num_classes > 2 else "demo")
    config.data.kind, config.data.root, config.data.class_table = "folder", str(data), None
    config.data.height, config.data.width = HEIGHT, WIDTH
    config.model.num_classes = num_classes
    config.train.lr, config.train.name = lr, run_dir.name
    run_dir.mkdir(parents=True)
    save_config(config, run_dir / "config.yaml")
    (run_dir / "split.json").write_text(json.dumps({"train": [], "val": NAMES}))
    column = "val_miou" if num_classes > 2 else "val_maxf"
    (run_dir / "metrics.csv").write_text(metrics_csv(val_scores, train_losses, column))
    (run_dir / "train.log").write_text(train_log(len(train_losses)))
    if checkpoint is not None:
        (run_dir / "checkpoints").mkdir()
        (run_dir / "checkpoints" / "best.ckpt").write_bytes(checkpoint.read_bytes())
    (run_dir / "eval_val.json").write_text(json.dumps(evaluation))
    return run_dir


@pytest.fixture(scope="module")
def multiclass_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return folder_data(tmp_path_factory.mktemp("data") / "camvid_small", len(CLASSES))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "best.ckpt", tuple(CLASSES))


def make_multiclass_runs(root: Path, data: Path, checkpoint: Path) -> list[Path]:
    return [
        fake_run(
            root / name,
            data,
            multiclass_eval(*scores[:3]),
            scores[3],
            scores[4],
            11,
            lr,
            checkpoint,
        )
        for (name, scores), lr in zip(MULTICLASS_RUNS.items(), (1e-2, 1e-3, 1e-4), strict=True)
    ]


@pytest.fixture(scope="module")
def multiclass_runs(tmp_path_factory, multiclass_data: Path, checkpoint: Path) -> list[Path]:
    return make_multiclass_runs(tmp_path_factory.mktemp("runs"), multiclass_data, checkpoint)


@pytest.fixture(scope="module")
def binary_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("binary")
    data = folder_data(root / "road", 2)
    return fake_run(root / "road_run", data, binary_eval(91.0), [88.0, 90.0], [0.5, 0.4], 2, 1e-3)


# ------------------------------------------------------------------ ranking and the table


def test_multiclass_runs_are_ranked_by_miou_by_default(multiclass_runs: list[Path], tmp_path):
    report = compare_runs(multiclass_runs, out=tmp_path / "cmp", grid_images=2)
    assert report.rank_by == "miou" and report.task == "multiclass"
    assert report.best is not None and report.best.run_dir.name == "lr_mid"
    rows = read_rows(tmp_path / "cmp" / "results.csv")
    assert list(rows[0]) == [
        "best",
        "setting",
        "train.lr",
        "train_loss",
        "val_loss",
        "miou",
        "mean_acc",
        "global_acc",
        "epochs",
        "wall_s",
        "run_dir",
    ]
    assert [row["best"] for row in rows] == ["", "*", ""]
    for row, (miou, mean_acc, global_acc, _, losses) in zip(
        rows, MULTICLASS_RUNS.values(), strict=True
    ):
        assert float(row["miou"]) == pytest.approx(miou)
        assert float(row["mean_acc"]) == pytest.approx(mean_acc)
        assert float(row["global_acc"]) == pytest.approx(global_acc)
        assert float(row["train_loss"]) == pytest.approx(losses[-1])  # the last epoch's
        assert float(row["val_loss"]) == pytest.approx(losses[-1] + 0.1)
        assert row["epochs"] == "2" and float(row["wall_s"]) == pytest.approx(25.0)
    markdown = (tmp_path / "cmp" / "results.md").read_text()
    assert "Ranked by mIoU (higher is better)" in markdown
    assert "| mIoU | mean acc | global acc |" in markdown and "MaxF" not in markdown
    assert "best: lr=0.001 (mIoU 55.5)" in markdown


@pytest.mark.parametrize(
    ("key", "best", "line"),
    [
        ("miou", "lr_mid", "(mIoU 55.5)"),
        ("val_miou", "lr_mid", "(mIoU 55.5)"),
        ("mean_acc", "lr_high", "(mean acc 70.0, mIoU 40.0)"),
        ("global_acc", "lr_low", "(global acc 90.0, mIoU 50.0)"),
        ("val_acc", "lr_low", "(global acc 90.0, mIoU 50.0)"),
        ("train_loss", "lr_mid", "(train loss 0.9000, mIoU 55.5)"),
    ],
)
def test_rank_by_multiclass_keys(
    multiclass_runs: list[Path], tmp_path: Path, monkeypatch, key: str, best: str, line: str
):
    import semseg.experiments.results as results

    monkeypatch.setattr(results, "plot_prediction_grid", lambda *args: [])  # the table only
    report = compare_runs(multiclass_runs, out=tmp_path / "cmp", rank_by=key)
    assert report.best is not None and report.best.run_dir.name == best
    rows = read_rows(tmp_path / "cmp" / "results.csv")
    assert [row["best"] == "*" for row in rows] == [r.name == best for r in multiclass_runs]
    assert line in (tmp_path / "cmp" / "results.md").read_text()


def test_a_key_the_runs_do_not_have_is_an_error(
    multiclass_runs: list[Path], binary_run: Path, tmp_path: Path
):
    with pytest.raises(SemsegError, match="--rank-by max_f: multi-class runs have no max_f") as e:
        compare_runs(multiclass_runs, out=tmp_path / "cmp", rank_by="val_maxf")
    assert "available: miou, mean_acc, global_acc, train_loss, val_loss" in str(e.value)
    with pytest.raises(SemsegError, match="binary .road. runs have no miou; available: max_f"):
        compare_runs([binary_run], out=tmp_path / "cmp", rank_by="miou")
    assert not (tmp_path / "cmp").exists()  # refused before anything is written
    out = str(tmp_path / "cmp")
    result = run_cli("compare", *map(str, multiclass_runs), "--rank-by", "ap", "--out", out)
    assert_one_line_error(result, "--rank-by ap", "available: miou, mean_acc, global_acc")


def test_binary_and_multiclass_runs_are_not_compared(
    multiclass_runs: list[Path], binary_run: Path, tmp_path: Path
):
    mixed = [multiclass_runs[0], binary_run]
    with pytest.raises(SemsegError, match="cannot rank binary .road. and multi-class runs"):
        compare_runs(mixed, out=tmp_path / "cmp")
    assert not (tmp_path / "cmp").exists()
    result = run_cli("compare", *map(str, mixed), "--out", str(tmp_path / "cmp"))
    assert_one_line_error(result, "road_run is binary", "lr_high is multi-class")


def test_binary_runs_keep_maxf(binary_run: Path, tmp_path: Path, monkeypatch):
    import semseg.experiments.results as results

    monkeypatch.setattr(results, "plot_prediction_grid", lambda *args: [])
    report = compare_runs([binary_run], out=tmp_path / "cmp")
    assert report.rank_by == "max_f" and report.task == "binary"
    rows = read_rows(tmp_path / "cmp" / "results.csv")
    assert [key for key in rows[0] if key in ("max_f", "ap", "iou", "miou")] == [
        "max_f",
        "ap",
        "iou",
    ]
    assert float(rows[0]["max_f"]) == 91.0 and rows[0]["best"] == "*"
    assert "best: road_run (MaxF 91.0)" in (tmp_path / "cmp" / "results.md").read_text()


# ------------------------------------------------------------------ sweeps


def test_sweep_of_multiclass_runs_ranks_by_miou(
    multiclass_data: Path, checkpoint: Path, tmp_path: Path, monkeypatch
):
    import semseg.training

    grid = ["train.lr=1e-2,1e-3,1e-4", f"data.height={HEIGHT}", f"data.width={WIDTH}"]
    with pytest.raises(SemsegError, match="--rank-by iou: multi-class runs have no iou"):
        plan_sweep("camvid_fast_cpu", grid, data=multiclass_data, out=tmp_path / "s", rank_by="iou")
    assert not (tmp_path / "s").exists()
    with pytest.raises(SemsegError, match="mixes binary .road. and multi-class settings"):
        plan_sweep("camvid_fast_cpu", ["model.num_classes=2,11"], data=multiclass_data)

    plan = plan_sweep("camvid_fast_cpu", grid, data=multiclass_data, out=tmp_path / "s")
    assert plan.rank_by is None
    assert json.loads((tmp_path / "s" / "sweep.json").read_text())["rank_by"] is None
    for setting, (name, scores) in zip(plan.settings, MULTICLASS_RUNS.items(), strict=True):
        run = fake_run(
            tmp_path / name,
            multiclass_data,
            multiclass_eval(*scores[:3]),
            *scores[3:],
            11,
            setting.values["train.lr"],
            checkpoint,
        )
        run.rename(plan.run_dir(setting))  # as if trained by the sweep
    monkeypatch.setattr(semseg.training, "train", lambda *a, **k: pytest.fail("trained again"))
    outcome = run_sweep(load_sweep(tmp_path / "s"))
    assert outcome.report is not None and outcome.report.rank_by == "miou"
    assert outcome.report.best is not None and outcome.report.best.label == "lr=1e-3"
    rows = read_rows(tmp_path / "s" / "results.csv")
    assert [row["best"] for row in rows] == ["", "*", ""]
    assert {"miou", "mean_acc", "global_acc"} <= set(rows[0])

    resumed = load_sweep(tmp_path / "s")
    resumed.rank_by = resumed.checked_rank_key("global_acc")
    assert run_sweep(resumed).report.best.label == "lr=1e-4"
    with pytest.raises(SemsegError, match="--rank-by max_f"):
        resumed.checked_rank_key("maxf")


# ------------------------------------------------------------------ figures


def test_multiclass_figures_show_miou(
    multiclass_runs: list[Path], multiclass_data: Path, tmp_path: Path, monkeypatch
):
    import semseg.experiments.figures as figures
    from semseg.inference.palette import default_colours

    saved = {}
    real_save = figures._save

    def record(figure, path, dpi=100):
        saved[Path(path).name] = figure
        real_save(figure, path, dpi)

    monkeypatch.setattr(figures, "_save", record)
    report = compare_runs(multiclass_runs, out=tmp_path / "cmp", grid_images=2)
    assert report.warnings == []

    score_axis = saved["curves.png"].axes[1]
    assert score_axis.get_title() == "validation mIoU (per epoch)"
    curves = [list(line.get_ydata()) for line in score_axis.get_lines()]
    assert curves == [scores[3] for scores in MULTICLASS_RUNS.values()]

    axes = saved["grid.png"].axes
    columns = 1 + len(multiclass_runs)
    assert len(axes) == 2 * columns
    assert [axis.get_title() for axis in axes[:columns]] == [
        "ground truth",
        "lr=0.01\nmIoU 40.0",
        "* lr=0.001\nmIoU 55.5",
        "lr=0.0001\nmIoU 50.0",
    ]
    # The ground truth in the class palette: each pixel half image, half its class's colour.
    image = np.asarray(Image.open(multiclass_data / "images" / "a.png"), dtype=np.float64)
    mask = np.asarray(Image.open(multiclass_data / "masks" / "a.png"))
    colours = default_colours(len(CLASSES)).astype(np.float64)
    expected = np.round(0.5 * image + 0.5 * colours[mask]).astype(np.uint8)
    np.testing.assert_array_equal(axes[0].get_images()[0].get_array(), expected)
    # A prediction: every pixel is the image blended with one of the classes' colours.
    predicted = np.asarray(axes[1].get_images()[0].get_array(), dtype=np.int64)
    blends = np.round(0.5 * image[None] + 0.5 * colours[:, None, None]).astype(np.int64)
    assert (predicted[None] == blends).all(axis=-1).any(axis=0).all()

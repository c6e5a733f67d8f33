"""Shared fixtures: tiny synthetic configurations and one tiny trained run per session."""

from __future__ import annotations

import functools
import importlib.util
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from semseg.config import Config, load_config

PROJECT_ROOT = Path(__file__).resolve().parents[1]
KITTI_ROOT = PROJECT_ROOT.parent / "shared" / "data" / "kitti_road"
CAMVID_ROOT = PROJECT_ROOT.parent / "shared" / "data" / "camvid"
# `--backend auto` builds an int8 model and an AOTInductor package once per checkpoint (seconds to
# a minute); the tests' many throw-away checkpoints and cache folders would pay that in every
# predict/serve test. Only tests/test_compiled_paths.py turns it on (SEMSEG_AUTO_BUILD=1).
os.environ.setdefault("SEMSEG_AUTO_BUILD", "0")
# Caches the tests fill (proposals of region models, backend choices) go to a throw-away folder,
# not the user's ~/.cache.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="semseg-tests-cache-")
needs_kitti = pytest.mark.skipif(
    not (KITTI_ROOT / "training" / "image_2").is_dir(), reason="../shared/data/kitti_road absent"
)


def tiny_config(out_dir: Path, **train: object) -> Config:
    """The demo configuration shrunk to a few seconds of training."""
    config = load_config("demo")
    config.data.synthetic_train = 12
    config.data.synthetic_size = [60, 200]
    config.data.height, config.data.width = 32, 96
    config.model.width_mult = 0.125
    config.train.epochs = 2
    config.train.batch_size = 4
    config.train.max_time_s = None
    config.train.out_dir = str(out_dir)
    config.train.name = "tiny"
    config.train.progress = False
    for key, value in train.items():
        setattr(config.train, key, value)
    return config


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished two-epoch run on synthetic scenes (run folder)."""
    from semseg.training import train

    return train(tiny_config(tmp_path_factory.mktemp("runs")))


def run_cli(
    *args: str, cwd: Path | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """The ``semseg`` command as a user runs it (a separate process)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "semseg.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@functools.cache
def load_benchmark(name: str) -> ModuleType:
    """``benchmarks/NAME.py`` as a module (the benchmark scripts are not part of the package)."""
    spec = importlib.util.spec_from_file_location(
        f"{name}_benchmark", PROJECT_ROOT / "benchmarks" / f"{name}.py"
    )
    assert spec is not None and spec.loader is not None
    benchmarks = str(PROJECT_ROOT / "benchmarks")
    if benchmarks not in sys.path:  # the scripts import their shared benchmarks/_common.py
        sys.path.insert(0, benchmarks)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op thread for a module's tests: on a small shared CPU, OpenMP threads contending
    with other processes make tiny forwards 10-100x slower than a single thread."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def assert_one_line_error(
    result: subprocess.CompletedProcess | str, *fragments: str, only_line: bool = True
) -> str:
    """A user error as the CLI reports it: exit non-zero (for a process), no traceback, one
    ``semseg: error:`` line holding every fragment (``only_line``: and nothing else on stderr;
    otherwise warnings may come before it). Returns the error line."""
    if isinstance(result, str):
        stderr = result
    else:
        assert result.returncode != 0, result.stdout
        stderr = result.stderr
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("semseg: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], stderr
    if only_line:
        assert len(lines) == 1, stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


TINY_INPUT_SIZE = (32, 96)


def tiny_checkpoint(
    path: Path,
    class_names: tuple[str, ...] = ("not road", "road"),
    model_name: str = "fcn8s",
    class_colours: list[list[int]] | None = None,
) -> Path:
    """A width-0.125 model saved as a checkpoint, its zero-initialised score layers given seeded
    weights so that its probabilities vary over the image (an untrained FCN answers 0.5
    everywhere, which would hide a wrong output); ``class_colours``: its palette, if given."""
    import torch

    from semseg.tasks.segmentation import SegmentationTask

    torch.manual_seed(0)
    task = SegmentationTask(
        model_name=model_name,
        num_classes=len(class_names),
        model_options={"width_mult": 0.125, "keep_prob": 1.0},
        class_names=list(class_names),
        input_size=list(TINY_INPUT_SIZE),
        class_colours=class_colours,
    )
    for layer in task.model.modules():
        if isinstance(layer, torch.nn.Conv2d) and layer.kernel_size == (1, 1):
            torch.nn.init.normal_(layer.weight, std=0.3)
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams)}, path)
    return path


MULTICLASS_TABLE = """classes:
  - {name: sky, color: [70, 130, 180]}
  - {name: road, color: [128, 64, 128]}
  - {name: car, color: [0, 0, 142]}
  - {name: void, color: [0, 0, 0], ignore: true}
"""
"""The class table of :func:`write_multiclass_folder`: three classes, mask value 3 is void."""


def write_multiclass_folder(
    root: Path,
    splits: dict[str, int] | None = None,
    size: tuple[int, int] = (32, 48),
    seed: int = 0,
) -> Path:
    """A tiny CamVid-style dataset: ``SPLIT/images`` + ``SPLIT/masks`` (index PNGs) and
    ``classes.yaml``. Sky above a horizon, road below, one car box, a void strip at the bottom;
    each class has its own noisy colour, so a few epochs learn it."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    height, width = size
    colours = np.array([[90, 140, 220], [110, 110, 110], [200, 30, 30]], dtype=np.int16)
    for split, count in (splits or {"train": 8, "val": 4}).items():
        for index in range(count):
            mask = np.zeros((height, width), np.uint8)
            horizon = int(rng.integers(height // 3, height // 2))
            mask[horizon:] = 1
            top, left = int(rng.integers(horizon, height - 8)), int(rng.integers(0, width - 12))
            mask[top : top + 6, left : left + 10] = 2
            mask[-2:] = 3
            image = colours[np.minimum(mask, 2)] + rng.integers(-20, 21, (height, width, 3))
            name = f"{split}_{index:03d}"
            for folder, array in (("images", image.clip(0, 255).astype(np.uint8)), ("masks", mask)):
                (root / split / folder).mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(root / split / folder / f"{name}.png")
    (root / "classes.yaml").write_text(MULTICLASS_TABLE)
    return root


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch):
    """``semseg ARGS`` through the console entry point, in this process (saves the start-up of a
    fresh interpreter per command; tests/test_cli.py covers the separate-process behaviour)."""
    from semseg import cli as cli_module

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", ["semseg", *args])
        try:
            cli_module.main()
            code = 0
        except SystemExit as exit_:
            code = int(exit_.code or 0)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


def read_labels(folder: Path) -> dict[str, np.ndarray]:
    """``predict``'s label PNGs in ``folder/label``, by file name."""
    from PIL import Image

    return {p.name: np.asarray(Image.open(p)) for p in sorted((folder / "label").glob("*.png"))}

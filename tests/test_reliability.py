"""Bad input never crashes or corrupts; killed runs resume; checkpoints load safely."""

from __future__ import annotations

import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli, tiny_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from semseg.config import IGNORE_INDEX, DataConfig
from semseg.data.kitti import KNOWN_GT_COLOURS, decode_gt
from semseg.data.transforms import apply, build_transforms
from semseg.errors import SemsegError
from semseg.inference.checkpoint import load_model, read_checkpoint
from semseg.io import read_rgb
from semseg.runs import RunDir
from semseg.tasks.segmentation import SegmentationTask
from semseg.training import train

# ---------------------------------------------------------------- property-based: readers


@settings(max_examples=40, deadline=None)
@given(
    height=st.integers(1, 40),
    width=st.integers(1, 40),
    seed=st.integers(0, 2**31 - 1),
)
def test_decode_gt_of_devkit_colours_never_fails(height: int, width: int, seed: int):
    rng = np.random.default_rng(seed)
    choice = rng.integers(0, len(KNOWN_GT_COLOURS), size=(height, width))
    rgb = KNOWN_GT_COLOURS[choice]
    mask = decode_gt(rgb)
    assert mask.shape == (height, width)
    expected = np.array([1, 0, IGNORE_INDEX, IGNORE_INDEX])[choice]
    assert np.array_equal(mask, expected)


@settings(max_examples=40, deadline=None)
@given(colour=st.tuples(st.integers(0, 255), st.integers(0, 255), st.integers(0, 255)))
def test_decode_gt_refuses_any_other_colour(colour: tuple[int, int, int]):
    rgb = np.zeros((3, 4, 3), dtype=np.uint8)
    rgb[1, 2] = colour
    if (np.array(colour) == KNOWN_GT_COLOURS).all(axis=1).any():
        decode_gt(rgb)
    else:
        with pytest.raises(SemsegError, match="unknown ground-truth colour"):
            decode_gt(rgb)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    mode=st.sampled_from(["L", "LA", "P", "RGB", "RGBA", "I;16", "I", "CMYK", "1"]),
    height=st.integers(1, 30),
    width=st.integers(1, 30),
    fmt=st.sampled_from(["PNG", "TIFF"]),
)
def test_any_image_mode_reads_as_rgb(tmp_path: Path, mode: str, height: int, width: int, fmt: str):
    if mode in ("CMYK", "I") and fmt == "PNG":
        fmt = "TIFF"  # PNG cannot hold CMYK or 32-bit integers
    rng = np.random.default_rng(height * 31 + width)
    if mode in ("I;16", "I"):
        image = Image.fromarray(rng.integers(0, 65535, (height, width)).astype(np.uint16))
        if mode == "I":
            image = image.convert("I")
    else:
        image = Image.fromarray(rng.integers(0, 255, (height, width, 3)).astype(np.uint8))
        image = image.convert(mode)
    path = tmp_path / f"im_{mode.replace(';', '')}_{height}_{width}.{fmt.lower()}"
    image.save(path, format=fmt)
    rgb = read_rgb(path)
    assert rgb.shape == (height, width, 3) and rgb.dtype == np.uint8


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path: Path):
    values = np.array([[0, 32768, 65535]], dtype=np.uint16)
    path = tmp_path / "grey16.png"
    Image.fromarray(values).save(path)
    rgb = read_rgb(path)
    assert list(rgb[0, :, 0]) == [0, 128, 255]


# ------------------------------------------------------------- property-based: transforms


@settings(max_examples=30, deadline=None)
@given(
    height=st.integers(8, 120),
    width=st.integers(8, 160),
    out_h=st.integers(8, 64),
    out_w=st.integers(8, 64),
    scale_crop=st.sampled_from([0.0, 0.3, 0.7]),
    seed=st.integers(0, 1000),
)
def test_transforms_keep_masks_aligned_and_the_ignore_index(
    height: int, width: int, out_h: int, out_w: int, scale_crop: float, seed: int
):
    rng = np.random.default_rng(seed)
    # Blocky masks (4x4 cells) so nearest-neighbour resampling has whole regions to keep.
    cells = rng.choice([0, 1, IGNORE_INDEX], size=(height // 4 + 1, width // 4 + 1))
    mask = np.kron(cells, np.ones((4, 4), dtype=np.int64))[:height, :width].astype(np.uint8)
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[..., 0] = np.where(mask == 1, 255, 0)  # the image says where the road is
    image[..., 2] = np.where(mask == IGNORE_INDEX, 255, 0)
    config = DataConfig(
        height=out_h, width=out_w, hflip=True, color_jitter=0.0, scale_crop=scale_crop
    )
    torch.manual_seed(seed)
    out_image, out_mask = apply(build_transforms(config, train=True), image, mask)
    assert out_image.shape == (3, out_h, out_w) and out_mask.shape == (out_h, out_w)
    assert out_image.dtype == torch.float32 and out_mask.dtype == torch.int64
    assert set(out_mask.unique().tolist()) <= set(np.unique(mask).tolist())
    # Where the (bilinearly resampled) image is unambiguous, the mask agrees with it.
    red, blue = out_image[0], out_image[2]
    sure_road = (red > 0.99) & (blue < 0.01)
    sure_ignore = (blue > 0.99) & (red < 0.01)
    sure_background = (red < 0.01) & (blue < 0.01)
    assert bool((out_mask[sure_road] == 1).all())
    assert bool((out_mask[sure_ignore] == IGNORE_INDEX).all())
    assert bool((out_mask[sure_background] == 0).all())


# ------------------------------------------------------------------------- bad input files


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG")
    return buffer.getvalue()


NOISE = np.random.default_rng(0).integers(0, 255, (40, 60, 3)).astype(np.uint8)
BAD_FILES = {
    "zero.png": b"",
    "truncated.png": png_bytes(NOISE)[: len(png_bytes(NOISE)) // 2],
    "truncated.jpg": jpeg_bytes(NOISE)[: len(jpeg_bytes(NOISE)) // 2],
    "text.png": b"this is not an image\n",
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_unreadable_images_are_one_line_errors(tmp_path: Path, name: str):
    path = tmp_path / name
    path.write_bytes(BAD_FILES[name])
    with pytest.raises(SemsegError) as error:
        read_rgb(path)
    assert name in str(error.value) and "\n" not in str(error.value)


def test_predict_handles_odd_but_valid_inputs_and_skips_bad_ones(tiny_run: Path, tmp_path: Path):
    folder = tmp_path / "mixed inputs ñ 道路"  # spaces and non-ASCII in the path
    folder.mkdir()
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (50, 90, 3)).astype(np.uint8)
    Image.fromarray(rgb).convert("L").save(folder / "grey.png")
    Image.fromarray(rgb).convert("RGBA").save(folder / "rgba.png")
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(folder / "deep16.png")
    Image.fromarray(rgb).save(folder / "photo é.jpg")
    Image.new("RGB", (8200, 40), (120, 120, 120)).save(folder / "huge.png")  # > 8000 px a side
    (folder / "notes.txt").write_text("not an image, ignored: wrong suffix")
    for name, data in BAD_FILES.items():
        stem, suffix = name.split(".")
        (folder / f"bad_{stem}_{suffix}.{suffix}").write_bytes(data)
    ckpt = str(tiny_run / "checkpoints" / "best.ckpt")
    out = tmp_path / "out dir"
    strict = run_cli("predict", ckpt, str(folder), "--out", str(out))
    assert strict.returncode != 0 and "Traceback" not in strict.stderr
    assert "bad_" in strict.stderr and not out.exists()
    result = run_cli("predict", ckpt, str(folder), "--out", str(out), "--skip-bad")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr.count("skipped") == len(BAD_FILES)
    written = sorted(p.name for p in (out / "overlay").iterdir())
    assert written == ["deep16.png", "grey.png", "huge.png", "photo é.png", "rgba.png"]
    assert Image.open(out / "prob" / "huge_road.png").size == (8200, 40)


def test_empty_folder_and_missing_ground_truth(tiny_run: Path, tmp_path: Path):
    ckpt = str(tiny_run / "checkpoints" / "best.ckpt")
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cli("predict", ckpt, str(empty))
    assert result.returncode != 0 and "no images" in result.stderr
    assert "Traceback" not in result.stderr
    result = run_cli("--debug", "predict", ckpt, str(empty))
    assert "Traceback" in result.stderr  # --debug shows it


def test_ground_truth_of_another_size_is_named(tmp_path: Path):
    from semseg.data.kitti import index_split, read_sample
    from semseg.data.synthetic import write_kitti_layout

    root = write_kitti_layout(tmp_path / "k", num_train=3, height=40, width=120)
    gt = sorted((root / "training" / "gt_image_2").glob("*.png"))[0]
    Image.open(gt).resize((100, 40), Image.NEAREST).save(gt)
    sample = next(s for s in index_split(root) if s.target_path == gt)
    with pytest.raises(SemsegError, match=f"{gt.name}.*differs from its image"):
        read_sample(sample)


def test_training_skips_unreadable_samples_only_when_asked(tmp_path: Path):
    from semseg.data.synthetic import write_kitti_layout

    root = write_kitti_layout(tmp_path / "k", num_train=9, height=60, width=200)
    first = sorted((root / "training" / "image_2").glob("*.png"))[0]
    first.write_bytes(b"\x89PNG broken")
    config = tiny_config(tmp_path / "runs", epochs=1)
    config.data.kind, config.data.root = "kitti", str(root)
    with pytest.raises(SemsegError, match=first.name):
        train(config)
    config.data.skip_bad = True
    config.train.run_dir = str(tmp_path / "skipping")
    run_dir = train(config)
    split = json.loads((run_dir / "split.json").read_text())
    assert first.stem in split["train"] + split["val"]  # split names every labelled image...
    results = json.loads((run_dir / "eval_val.json").read_text())
    assert results["num_images"] == len(split["val"]) - (first.stem in split["val"])  # ...not run


# ---------------------------------------------------------------------------- checkpoints


def test_checkpoints_are_plain_data_loadable_with_weights_only(tiny_run: Path):
    path = tiny_run / "checkpoints" / "best.ckpt"
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["hyper_parameters"]["model_name"] == "fcn8s"
    assert read_checkpoint(path)["hyper_parameters"]["num_classes"] == 2


def test_pickled_code_in_a_checkpoint_is_refused(tmp_path: Path):
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    path = tmp_path / "evil.ckpt"
    torch.save(
        {
            "hyper_parameters": {"model_name": "fcn8s", "num_classes": 2, "input_size": [32, 96]},
            "state_dict": {},
            "payload": Payload(),
        },
        path,
    )
    with pytest.raises(SemsegError, match="not a semseg checkpoint"):
        load_model(path)
    assert not (tmp_path / "pwned").exists()


def test_checkpoint_of_another_model_or_class_count_is_refused(tiny_run: Path):
    path = tiny_run / "checkpoints" / "best.ckpt"
    with pytest.raises(SemsegError, match="2 classes but 3"):
        load_model(path, expected_classes=3)
    with pytest.raises(SemsegError, match="not 'fcn16s'"):
        load_model(path, expected_model="fcn16s")


def test_resume_refuses_a_different_model(tmp_path: Path):
    config = tiny_config(tmp_path, epochs=1, run_dir=str(tmp_path / "run"))
    run_dir = train(config)
    config.model.name = "fcn16s"
    with pytest.raises(SemsegError, match="trained as 'fcn8s'"):
        train(config, resume=run_dir)


# ---------------------------------------------------------------------- runs and the disk


def test_existing_run_folder_is_refused_unless_overwrite(tmp_path: Path):
    run_dir = tmp_path / "fixed"
    config = tiny_config(tmp_path, epochs=2, run_dir=str(run_dir))
    train(config)
    with pytest.raises(SemsegError, match="exists; use --resume"):
        train(config)
    train(tiny_config(tmp_path, epochs=1, run_dir=str(run_dir)), overwrite=True)
    assert len(RunDir(run_dir).log.read_text().splitlines()) == 1  # nothing of the first run
    assert RunDir(run_dir).is_finished()


def test_overwrite_never_deletes_a_folder_that_is_not_a_run(tmp_path: Path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    config = tiny_config(tmp_path, epochs=1, run_dir=str(precious))
    with pytest.raises(SemsegError, match="not a semseg run folder.*nothing was deleted"):
        train(config, overwrite=True)
    (precious / "config.yaml").write_text("a config.yaml of the user's own\n")
    with pytest.raises(SemsegError, match="'thesis.tex'"):
        train(config, overwrite=True)
    assert sorted(p.name for p in precious.iterdir()) == ["config.yaml", "thesis.tex"]
    assert (precious / "thesis.tex").read_text() == "years of work"


def test_overwrite_of_the_current_folder_is_a_one_line_error(tmp_path: Path):
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "src").mkdir()
    result = run_cli("train", "--config", "demo", "--run-dir", ".", "--overwrite", cwd=tmp_path)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("semseg: error: --overwrite: ."), errors
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "src"]


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    original = SegmentationTask.loss

    def poisoned(self, logits, masks):
        loss = original(self, logits, masks)
        return loss * float("nan") if self.current_epoch == 1 else loss

    monkeypatch.setattr(SegmentationTask, "loss", poisoned)
    config = tiny_config(tmp_path, epochs=3, run_dir=str(tmp_path / "nan"))
    with pytest.raises(SemsegError, match="loss became nan at epoch 2"):
        train(config)
    last = tmp_path / "nan" / "checkpoints" / "last.ckpt"
    checkpoint = read_checkpoint(last)
    assert checkpoint["epoch"] == 0  # the end of epoch 1, the last good one
    assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values())


def test_same_seed_gives_identical_metrics(tmp_path: Path):
    runs = [
        train(tiny_config(tmp_path, epochs=2, run_dir=str(tmp_path / f"r{i}"))) for i in range(2)
    ]
    first, second = ((run / "metrics.csv").read_text().splitlines() for run in runs)
    strip_seconds = [
        [",".join(line.split(",")[:-1]) for line in lines] for lines in (first, second)
    ]
    assert strip_seconds[0] == strip_seconds[1]
    scores = [json.loads((run / "eval_val.json").read_text())["groups"] for run in runs]
    assert scores[0] == scores[1]


def wait_for(condition, process: subprocess.Popen, timeout_s: float = 300) -> None:
    """Poll until ``condition()`` holds (an observable event of the run), while it runs."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert process.poll() is None, "the run ended before the awaited event"
        assert time.monotonic() < deadline, "the awaited event did not happen"
        time.sleep(0.05)


def epochs_of(lines: list[str]) -> list[str]:
    return [line.split("epoch ")[1].split()[0] for line in lines if "epoch " in line]


def steps_per_epoch(run: RunDir, batch_size: int) -> int:
    return math.ceil(len(run.read_split()["train"]) / batch_size)


def test_a_run_killed_mid_epoch_resumes_to_a_complete_log(tmp_path: Path):
    run = RunDir(tmp_path / "killed")
    args = [
        sys.executable,
        "-m",
        "semseg.cli",
        "train",
        "--config",
        "demo",
        "--set",
        "data.synthetic_train=40",
        "--set",
        "data.synthetic_size=[60,200]",
        "--set",
        "model.width_mult=0.125",
        "--set",
        "train.max_time_s=null",
        "--height",
        "64",
        "--width",
        "192",
        "--batch-size",
        "2",
        "--epochs",
        "4",
        "--run-dir",
        str(run.path),
    ]
    process = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    # last.ckpt appears (renamed into place, so complete) at the end of epoch 1: kill in epoch 2.
    wait_for(run.last.is_file, process)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not run.eval_val.exists()
    first_line = run.log.read_text().splitlines()[0]
    assert epochs_of([first_line]) == ["1/4"]
    result = run_cli("train", "--resume", str(run.path))
    assert result.returncode == 0, result.stderr[-2000:]
    lines = run.log.read_text().splitlines()
    assert epochs_of(lines) == ["1/4", "2/4", "3/4", "4/4"]
    assert lines[0] == first_line  # the first epoch's line is kept, not rewritten
    assert "1/4" not in epochs_of(result.stdout.splitlines())  # epoch 1 never ran again
    rows = run.metrics.read_text().splitlines()
    assert [row.split(",")[0] for row in rows] == ["epoch", "1", "2", "3", "4"]
    last = read_checkpoint(run.last)
    assert last["epoch"] == 3, (last["epoch"], last["global_step"], lines, result.stdout[-3000:])
    assert last["global_step"] == 4 * steps_per_epoch(run, batch_size=2)
    assert run.is_finished()
    leftovers = [p for p in run.path.rglob("*.tmp")]
    assert leftovers == []


def test_evaluate_skips_unreadable_images_only_when_asked(tiny_run: Path, tmp_path: Path):
    from semseg.data.synthetic import write_kitti_layout

    root = write_kitti_layout(tmp_path / "k", num_train=4, height=40, width=120)
    broken = sorted((root / "training" / "image_2").glob("*.png"))[1]
    broken.write_bytes(b"")
    ckpt = str(tiny_run / "checkpoints" / "best.ckpt")
    strict = run_cli("evaluate", ckpt, "--data", str(root), "--out", str(tmp_path / "a.json"))
    assert strict.returncode != 0 and broken.name in strict.stderr
    assert "Traceback" not in strict.stderr and not (tmp_path / "a.json").exists()
    lenient = run_cli(
        "evaluate", ckpt, "--data", str(root), "--skip-bad", "--out", str(tmp_path / "b.json")
    )
    assert lenient.returncode == 0, lenient.stderr[-2000:]
    assert "skipped 1 unreadable" in lenient.stderr
    results = json.loads((tmp_path / "b.json").read_text())
    assert results["num_images"] == 3 and len(results["unreadable"]) == 1

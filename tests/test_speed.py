"""Fast paths and ONNX deployment: each path matches fp32 eager, export round-trips, CLI, bench.

Tolerances (softmax probabilities, max over every pixel and class, against fp32 eager torch):
channels-last 1e-5, onnxruntime 1e-4, torch.compile (fp32) 1e-4, bf16 2e-2; labels may differ at
a tiny fraction of boundary pixels under bf16 (at most 2% of the pixels of these tiny models).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import read_labels, run_cli, tiny_checkpoint
from PIL import Image

from semseg.data.synthetic import generate_scene
from semseg.inference.autotune import (
    BASELINE,
    BackendOptions,
    Candidate,
    auto_candidates,
    choose_backend,
)
from semseg.inference.checkpoint import load_model
from semseg.inference.machine import bf16_supported
from semseg.inference.onnx_export import export_onnx, load_onnx_model, read_onnx_metadata
from semseg.inference.predictor import Predictor
from semseg.inference.runtimes import OnnxRuntimeBackend, TorchBackend
from semseg.tasks.segmentation import SegmentationTask

ROOT = Path(__file__).resolve().parents[1]
needs_bf16 = pytest.mark.skipif(not bf16_supported(), reason="needs a CPU with AVX512-BF16 or AMX")
TOLERANCE = {"channels_last": 1e-5, "onnxruntime": 1e-4, "compile": 1e-4, "bf16": 2e-2}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("speed")


@pytest.fixture(scope="module")
def checkpoint(workdir: Path) -> Path:
    return tiny_checkpoint(workdir / "tiny.ckpt")


@pytest.fixture(scope="module")
def exported(workdir: Path, checkpoint: Path) -> Path:
    path = workdir / "tiny.onnx"
    verification = export_onnx(load_model(checkpoint), path)
    assert verification is not None and verification.max_abs_prob_diff < 1e-4
    return path


@pytest.fixture(scope="module")
def images(workdir: Path) -> Path:
    folder = workdir / "images"
    folder.mkdir()
    for index in range(3):
        scene = generate_scene(index, height=60, width=200)
        Image.fromarray(scene.image).save(folder / f"um_00000{index}.png")
    return folder


@pytest.fixture(autouse=True)
def private_cache(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEMSEG_CACHE_DIR", str(workdir / "cache"))


def probabilities(backend, batch: torch.Tensor) -> torch.Tensor:
    return backend.logits(batch).softmax(dim=1)


def batch_of(height: int, width: int, count: int = 2) -> torch.Tensor:
    return torch.rand(count, 3, height, width, generator=torch.Generator().manual_seed(3))


# --- ONNX export -----------------------------------------------------------------------------


def test_onnx_export_matches_torch_at_other_sizes(checkpoint: Path, exported: Path):
    loaded = load_model(checkpoint)
    ort = OnnxRuntimeBackend(exported, threads=1)
    reference = TorchBackend(loaded.model)
    # exported at the training size 32 x 96; run at sizes off the size multiple and batch 1 or 3
    for height, width, count in ((50, 77, 3), (32, 96, 1), (100, 40, 1)):
        batch = batch_of(height, width, count)
        expected = probabilities(reference, batch)
        got = probabilities(ort, batch)
        assert got.shape == expected.shape == (count, 2, height, width)
        assert float((got - expected).abs().max()) < TOLERANCE["onnxruntime"]
        assert float(expected.std()) > 1e-3  # the probabilities do vary over the image


def test_onnx_metadata_describes_the_model(checkpoint: Path, exported: Path):
    meta = read_onnx_metadata(exported)
    assert meta["model_name"] == "fcn8s" and meta["num_classes"] == "2"
    assert json.loads(meta["class_names"]) == ["not road", "road"]
    assert json.loads(meta["input_size"]) == [32, 96]
    assert meta["positive_class"] == "1" and meta["opset"] == "17"
    proto = onnx.load(str(exported))
    onnx.checker.check_model(proto)
    assert {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")} == {17}
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 3, "height", "width"]
    loaded = load_onnx_model(exported)
    assert loaded.model is None and loaded.input_size == (32, 96)
    assert loaded.class_names == ["not road", "road"] and loaded.positive_class == 1


# --- fast paths against fp32 eager -----------------------------------------------------------


def test_channels_last_matches_fp32(checkpoint: Path):
    loaded = load_model(checkpoint)
    batch = batch_of(40, 100)
    expected = probabilities(TorchBackend(loaded.model), batch)
    fast = TorchBackend(loaded.model, channels_last=True)
    assert float((probabilities(fast, batch) - expected).abs().max()) < TOLERANCE["channels_last"]
    # the caller's model is untouched (the backend converted a copy)
    assert next(loaded.model.parameters()).is_contiguous()


@needs_bf16
def test_bf16_matches_fp32_within_tolerance(checkpoint: Path):
    loaded = load_model(checkpoint)
    batch = batch_of(40, 100)
    expected = probabilities(TorchBackend(loaded.model), batch)
    for channels_last in (False, True):
        fast = TorchBackend(loaded.model, precision="bf16", channels_last=channels_last)
        got = probabilities(fast, batch)
        assert float((got - expected).abs().max()) < TOLERANCE["bf16"]
        assert float((got.argmax(1) != expected.argmax(1)).float().mean()) < 0.02
    assert next(loaded.model.parameters()).dtype == torch.float32


def compile_unsupported() -> str:
    """Why torch.compile cannot work on this platform ("" where it should): inductor's CPU
    backend needs a C++ compiler and is not supported on Windows. Any other failure is a bug."""
    if sys.platform == "win32":
        return "torch.compile's inductor does not support Windows"
    if not any(
        shutil.which(name) for name in (os.environ.get("CXX", ""), "g++", "c++", "clang++") if name
    ):
        return "torch.compile's inductor needs a C++ compiler (none on PATH)"
    return ""


@pytest.mark.skipif(bool(compile_unsupported()), reason=compile_unsupported() or "supported")
def test_torch_compile_matches_fp32(checkpoint: Path):
    loaded = load_model(checkpoint)
    batch = batch_of(32, 96, 2)
    expected = probabilities(TorchBackend(loaded.model), batch)
    compiled = TorchBackend(loaded.model, channels_last=True, compile=True)
    got = probabilities(compiled, batch)  # a compile error fails the test
    assert float((got - expected).abs().max()) < TOLERANCE["compile"]
    # a shorter batch is padded to the compiled batch size (no recompilation) and cut back
    single = probabilities(compiled, batch[:1])
    assert single.shape[0] == 1
    assert float((single - expected[:1]).abs().max()) < TOLERANCE["compile"]


def test_predictor_takes_a_backend_and_defaults_to_fp32_torch(checkpoint: Path, exported: Path):
    loaded = load_model(checkpoint)
    image = generate_scene(5, height=60, width=200).image
    plain = Predictor(loaded)
    assert plain.backend == "torch" and plain.engine.describe() == "torch fp32 eager"
    (expected,) = plain.predict_batch([image])
    via_onnx = Predictor(load_onnx_model(exported), backend="onnxruntime")
    assert via_onnx.backend == "onnxruntime"
    (got,) = via_onnx.predict_batch([image])
    assert np.abs(got - expected).max() < TOLERANCE["onnxruntime"]


def test_auto_calibrates_keeps_parity_and_caches(checkpoint: Path, workdir: Path):
    loaded = load_model(checkpoint)
    candidates = auto_candidates(None, None, compile=False)
    assert candidates[0] == BASELINE and Candidate("onnxruntime") in candidates
    assert any(c.precision == "bf16" for c in candidates) == bf16_supported()
    image = generate_scene(1, height=60, width=200).image
    backend, choice = choose_backend(loaded, BackendOptions("auto"), image=image)
    assert choice.candidate in candidates and not choice.cached
    assert choice.seconds is not None and choice.seconds > 0
    for trial in choice.trials:
        if trial.accepted:
            assert trial.max_abs_prob_diff <= (0.02 if "bf16" in trial.label else 1e-3)
    assert choice.line(backend).startswith(f"backend: {backend.describe()} (")
    again, cached = choose_backend(loaded, BackendOptions("auto"), image=image)
    assert cached.cached and cached.candidate == choice.candidate
    assert "cached choice" in cached.line(again)
    stored = json.loads((workdir / "cache" / "backend-choices.json").read_text())
    assert any(entry["checkpoint"] == str(checkpoint) for entry in stored.values())
    _, fresh = choose_backend(loaded, BackendOptions("auto", recalibrate=True), image=image)
    assert not fresh.cached and fresh.trials


# --- the CLI ---------------------------------------------------------------------------------


def test_cli_export_and_predict_backends_agree(checkpoint: Path, images: Path, workdir: Path, cli):
    onnx_file = workdir / "cli" / "model.onnx"
    result = cli("export", str(checkpoint), "--format", "onnx", "--out", str(onnx_file))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "verified: onnx.checker ok" in result.stdout and onnx_file.is_file()
    outputs = {}
    for name, args in {
        "torch": (str(checkpoint), "--backend", "torch", "--precision", "32"),
        "onnx": (str(onnx_file), "--backend", "onnxruntime"),
        "auto": (str(checkpoint), "--backend", "auto"),
    }.items():
        out = workdir / "cli" / name
        result = cli("predict", *args, str(images), "--out", str(out))
        assert result.returncode == 0, result.stderr[-2000:]
        lines = [line for line in result.stderr.splitlines() if line.startswith("backend: ")]
        assert len(lines) == 1, result.stderr
        outputs[name] = (read_labels(out), lines[0])
    assert outputs["torch"][1] == "backend: torch fp32 eager (forced by --backend torch)"
    assert outputs["onnx"][1].startswith("backend: onnxruntime fp32")
    assert "parity max |dp|" in outputs["auto"][1] or "fp32 eager (" in outputs["auto"][1]
    reference = outputs["torch"][0]
    assert len(reference) == 3
    for name in ("onnx", "auto"):
        labels = outputs[name][0]
        assert labels.keys() == reference.keys()
        for key, expected in reference.items():
            changed = float((labels[key] != expected).mean())
            # fp32 paths agree exactly; a bf16 choice may flip a few boundary pixels
            assert changed <= (0.02 if "bf16" in outputs[name][1] else 0.0), (name, changed)


def test_cli_export_errors_are_one_line(
    checkpoint: Path, exported: Path, images: Path, workdir: Path, cli
):
    cases = [
        (("export", str(workdir / "missing.ckpt")), "checkpoint not found"),
        (("export", str(checkpoint), "--format", "tflite"), "--format must be one of onnx"),
        (("export", str(checkpoint), "--opset", "7"), "--opset must be between"),
        (
            ("predict", str(checkpoint), str(images), "--backend", "tensorrt"),
            "Invalid value for '--backend'",
        ),
        (("predict", str(exported), str(images), "--backend", "torch"), "is an ONNX model"),
    ]
    for args, fragment in cases:
        result = cli(*args)
        assert result.returncode != 0
        lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("semseg: error:"), result.stderr
        assert fragment in lines[0], lines[0]
    # and as a user runs it, in a process of its own
    result = run_cli("export", str(checkpoint), "--format", "tflite", timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "semseg: error: --format must be one of onnx, onnx-optimized, pt2, got 'tflite'"
    ]


# --- the benchmark script --------------------------------------------------------------------


def test_bench_quick_runs_end_to_end(workdir: Path):
    out = workdir / "bench" / "speed.md"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench.py"),
            "--quick",
            "--out",
            str(out),
            "--json",
            str(workdir / "bench" / "speed.json"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    text = out.read_text()
    assert "| fcn8s paths | fcn8s | torch fp32 eager | 1 |" in text
    assert "onnxruntime fp32" in text and "Matmul peak" in text
    assert "Training parity" in text and "| 32 |" in text  # the fp32 run, on every CPU
    if bf16_supported():  # and the bf16-mixed run beside it where the CPU has bf16
        assert "| bf16-mixed |" in text and "bf16-mixed vs 32:" in text
    raw = json.loads((workdir / "bench" / "speed.json").read_text())
    rows = raw["speed"]["rows"]
    assert not [r for r in rows if r["error"]], [r for r in rows if r["error"]]
    assert all(r["seconds"] and r["rss_mb"] > 0 and r["gflop"] > 0 for r in rows)
    assert raw["skipped"]  # peers are skipped in --quick, and the markdown says so
    assert "Skipped: peers" in text


def test_bf16_training_runs_channels_last_on_the_cpu():
    from types import SimpleNamespace

    from semseg.training import ChannelsLast

    def conv_weight(precision: str, setting: bool | None) -> torch.Tensor:
        task = SegmentationTask(
            model_name="fcn8s",
            num_classes=2,
            model_options={"width_mult": 0.125},
            input_size=[32, 96],
        )
        ChannelsLast(setting).on_fit_start(SimpleNamespace(precision=precision), task)
        return next(m for m in task.model.modules() if isinstance(m, torch.nn.Conv2d)).weight

    channels_last = torch.channels_last
    assert conv_weight("bf16-mixed", None).is_contiguous(memory_format=channels_last)
    assert conv_weight("32", None).is_contiguous()  # fp32 stays NCHW (it is slower in NHWC here)
    assert conv_weight("32", True).is_contiguous(memory_format=channels_last)
    assert conv_weight("bf16-mixed", False).is_contiguous()


# --- metadata is not trusted (issue 20, item 13) ---------------------------------------------


def forged_checkpoint(source: Path, path: Path, **changes) -> Path:
    checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    for key, value in changes.items():
        if key == "nan_weight":
            name = next(k for k in checkpoint["state_dict"] if k.endswith("weight"))
            checkpoint["state_dict"][name][0].view(-1)[0] = float("nan")
        else:
            checkpoint["hyper_parameters"][key] = value
    torch.save(checkpoint, path)
    return path


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"input_size": [30000, 30000]}, "input_size 30000x30000 is outside the bounds"),
        ({"input_size": [0, 96]}, "input_size 0x96"),
        ({"num_classes": 10**6}, "num_classes 1000000 is outside"),
        ({"model_options": {"width_mult": 64.0, "keep_prob": 1.0}}, "ask for"),
        ({"nan_weight": True}, "NaN or infinite"),
        ({"positive_class": 7}, "positive_class 7 is outside 0..1"),
    ],
    ids=["huge input", "empty input", "classes", "width", "nan", "positive class"],
)
def test_checkpoint_metadata_is_bounded_before_allocation(
    checkpoint: Path, images: Path, workdir: Path, cli, changes, fragment
):
    """A forged input size or width multiplier asked for gigabytes; NaN weights gave garbage with
    exit 0 from predict (evaluate refused them): all are refused before anything is built."""
    from semseg.errors import SemsegError

    forged = forged_checkpoint(checkpoint, workdir / f"forged-{len(fragment)}.ckpt", **changes)
    with pytest.raises(SemsegError, match=fragment):
        load_model(forged)
    result = cli(
        "predict",
        str(forged),
        str(images),
        "--out",
        str(workdir / "forged-out"),
        "--backend",
        "torch",
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("semseg: error:") and fragment in lines[0]
    assert not (workdir / "forged-out").exists()


def with_metadata(source: Path, path: Path, **values: str) -> Path:
    proto = onnx.load(str(source))
    for entry in proto.metadata_props:
        if entry.key in values:
            entry.value = values[entry.key]
    onnx.save(proto, str(path))
    return path


def test_onnx_metadata_and_signature_are_checked(exported: Path, images: Path, workdir: Path, cli):
    """An ONNX file whose output channels differ from its classes wrote garbage with exit 0."""
    from semseg.errors import SemsegError

    dims = onnx.load(str(exported)).graph.output[0].type.tensor_type.shape.dim
    assert dims[1].dim_value == 2  # the export declares its class channels
    wrong = with_metadata(
        exported,
        workdir / "wrong-classes.onnx",
        num_classes="3",
        class_names='["a", "b", "c"]',
        class_colours="[[0, 0, 0], [1, 1, 1], [2, 2, 2]]",
    )
    with pytest.raises(SemsegError, match="2 output channels but the model has 3 classes"):
        Predictor(load_onnx_model(wrong), backend="onnxruntime")
    result = cli("predict", str(wrong), str(images), "--out", str(workdir / "wrong-out"))
    assert result.returncode == 2 and "output channels" in result.stderr
    assert not (workdir / "wrong-out").exists()
    huge = with_metadata(exported, workdir / "huge.onnx", input_size="[30000, 30000]")
    with pytest.raises(SemsegError, match="input_size 30000x30000"):
        load_onnx_model(huge)


def test_cached_onnx_export_is_verified_and_rebuilt(checkpoint: Path, exported: Path):
    """A replaced cache entry was used silently and a truncated one failed until deleted."""
    from semseg.inference.autotune import cached_onnx
    from semseg.inference.checkpoint import file_sha256

    loaded = load_model(checkpoint)
    path = cached_onnx(loaded)
    original = path.read_bytes()
    record = path.with_name(path.name + ".sha256")
    assert record.read_text().strip() == file_sha256(path)
    path.write_bytes(original[: len(original) // 3])  # truncated (a crash, a full disk)
    assert cached_onnx(loaded) == path and path.read_bytes() == original
    other = tiny_checkpoint(checkpoint.parent / "other.ckpt", model_name="fcn32s")
    export_onnx(load_model(other), path)  # replaced by a different, valid model
    assert path.read_bytes() != original
    cached_onnx(loaded)
    assert file_sha256(path) == record.read_text().strip()
    image = torch.rand(1, 3, 32, 96, generator=torch.Generator().manual_seed(0))
    expected = probabilities(TorchBackend(loaded.model), image)
    got = probabilities(OnnxRuntimeBackend(path), image)
    assert float((got - expected).abs().max()) < TOLERANCE["onnxruntime"]


def test_evaluate_and_predict_share_one_set_of_inference_options(cli):
    """The 13 CRF and backend options are declared once and given to both commands."""
    import typer

    from semseg import cli as cli_module

    commands = typer.main.get_command(cli_module.app).commands
    shared = (
        "--crf",
        "--backend",
        "--precision",
        "--channels-last",
        "--compile",
        "--threads",
        "--recalibrate",
    )
    flags = {
        name: {
            flag
            for param in commands[name].params
            for flag in getattr(param, "opts", [])
            if flag.startswith(shared)
        }
        for name in ("evaluate", "predict")
    }
    assert flags["evaluate"] == flags["predict"]
    assert len(flags["predict"]) == 13, sorted(flags["predict"])
    for command, args in (("evaluate", ("x.ckpt", "--data", "d")), ("predict", ("x.ckpt", "y"))):
        for bad, fragment in (
            (("--precision", "fp8"), "'--precision'"),
            (("--backend", "tensorrt"), "'--backend'"),
        ):
            result = cli(command, *args, *bad)
            lines = [line for line in result.stderr.splitlines() if line.strip()]
            assert result.returncode == 2 and len(lines) == 1 and fragment in lines[0], lines

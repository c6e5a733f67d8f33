"""Fast paths and ONNX deployment: each path matches fp32 eager, export round-trips, CLI, bench.

Tolerances (softmax probabilities, max over every pixel and class, against fp32 eager torch):
channels-last 1e-5, onnxruntime 1e-4, torch.compile (fp32) 1e-4, bf16 2e-2; labels may differ at
a tiny fraction of boundary pixels under bf16 (at most 2% of the pixels of these tiny models).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import run_cli
from PIL import Image

from semseg.data.synthetic import generate_scene
from semseg.inference.backends import (
    BASELINE,
    Candidate,
    OnnxRuntimeBackend,
    TorchBackend,
    auto_candidates,
    bf16_supported,
    select_backend,
)
from semseg.inference.checkpoint import load_model
from semseg.inference.onnx_export import export_onnx, load_onnx_model, read_onnx_metadata
from semseg.inference.predictor import Predictor
from semseg.tasks.segmentation import SegmentationTask

ROOT = Path(__file__).resolve().parents[1]
needs_bf16 = pytest.mark.skipif(not bf16_supported(), reason="no AVX512-BF16/AMX on this CPU")
TOLERANCE = {"channels_last": 1e-5, "onnxruntime": 1e-4, "compile": 1e-4, "bf16": 2e-2}


def tiny_checkpoint(path: Path, model_name: str = "fcn8s") -> Path:
    """A width-0.125 model whose zero-initialised score layers are given seeded weights, so that
    its probabilities vary over the image (an untrained FCN answers 0.5 everywhere)."""
    torch.manual_seed(0)
    task = SegmentationTask(
        model_name=model_name,
        num_classes=2,
        model_options={"width_mult": 0.125, "keep_prob": 1.0},
        class_names=["not road", "road"],
        input_size=[32, 96],
    )
    for layer in task.model.modules():
        if isinstance(layer, torch.nn.Conv2d) and layer.kernel_size == (1, 1):
            torch.nn.init.normal_(layer.weight, std=0.3)
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams)}, path)
    return path


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


def test_torch_compile_matches_fp32(checkpoint: Path):
    if not hasattr(torch, "compile"):
        pytest.skip("torch.compile is not available in this torch")
    loaded = load_model(checkpoint)
    batch = batch_of(32, 96, 2)
    expected = probabilities(TorchBackend(loaded.model), batch)
    compiled = TorchBackend(loaded.model, channels_last=True, compile=True)
    try:
        got = probabilities(compiled, batch)
    except Exception as error:  # no C++ compiler or the like: say why, do not hide it
        pytest.skip(f"torch.compile does not work here: {error}")
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
    backend, choice = select_backend(loaded, "auto", image=image)
    assert choice.candidate in candidates and not choice.cached
    assert choice.seconds is not None and choice.seconds > 0
    for trial in choice.trials:
        if trial.accepted:
            assert trial.max_abs_prob_diff <= (0.02 if "bf16" in trial.label else 1e-3)
    assert choice.line(backend).startswith(f"backend: {backend.describe()} (")
    again, cached = select_backend(loaded, "auto", image=image)
    assert cached.cached and cached.candidate == choice.candidate
    assert "cached choice" in cached.line(again)
    stored = json.loads((workdir / "cache" / "backend-choices.json").read_text())
    assert any(entry["checkpoint"] == str(checkpoint) for entry in stored.values())
    _, fresh = select_backend(loaded, "auto", image=image, recalibrate=True)
    assert not fresh.cached and fresh.trials


# --- the CLI ---------------------------------------------------------------------------------


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
    return {p.name: np.asarray(Image.open(p)) for p in sorted((folder / "label").glob("*.png"))}


def test_cli_export_and_predict_backends_agree(checkpoint: Path, images: Path, workdir: Path,
                                               cli):
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


def test_cli_export_errors_are_one_line(checkpoint: Path, exported: Path, images: Path,
                                       workdir: Path, cli):
    cases = [
        (("export", str(workdir / "missing.ckpt")), "checkpoint not found"),
        (("export", str(checkpoint), "--format", "tflite"), "--format must be one of onnx"),
        (("export", str(checkpoint), "--opset", "7"), "--opset must be between"),
        (("predict", str(checkpoint), str(images), "--backend", "tensorrt"),
         "--backend must be one of"),
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
        "semseg: error: --format must be one of onnx, onnx-optimized, got 'tflite'"
    ]


# --- the benchmark script --------------------------------------------------------------------


def test_bench_quick_runs_end_to_end(workdir: Path):
    out = workdir / "bench" / "speed.md"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--quick", "--out", str(out),
         "--json", str(workdir / "bench" / "speed.json")],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    text = out.read_text()
    assert "| fcn8s paths | fcn8s | torch fp32 eager | 1 |" in text
    assert "onnxruntime fp32" in text and "Matmul peak" in text
    assert "Training parity" in text and "bf16-mixed" in text or not bf16_supported()
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
        task = SegmentationTask(model_name="fcn8s", num_classes=2,
                                model_options={"width_mult": 0.125}, input_size=[32, 96])
        ChannelsLast(setting).on_fit_start(SimpleNamespace(precision=precision), task)
        return next(m for m in task.model.modules() if isinstance(m, torch.nn.Conv2d)).weight

    channels_last = torch.channels_last
    assert conv_weight("bf16-mixed", None).is_contiguous(memory_format=channels_last)
    assert conv_weight("32", None).is_contiguous()  # fp32 stays NCHW (it is slower in NHWC here)
    assert conv_weight("32", True).is_contiguous(memory_format=channels_last)
    assert conv_weight("bf16-mixed", False).is_contiguous()

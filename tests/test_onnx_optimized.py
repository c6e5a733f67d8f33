"""``semseg export --format onnx-optimized``: ONNX Runtime's optimized graph, saved once."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch
from conftest import run_cli, tiny_checkpoint

from semseg.inference.checkpoint import load_model
from semseg.inference.onnx_export import read_onnx_metadata
from semseg.inference.onnx_optimized import export_onnx_optimized
from semseg.inference.runtimes import OnnxRuntimeBackend, TorchBackend


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("optimized") / "tiny.ckpt")


def test_optimized_export_matches_torch_and_records_its_machine(checkpoint: Path):
    out = checkpoint.parent / "api" / "tiny.optimized.onnx"
    loaded = load_model(checkpoint)
    worst = export_onnx_optimized(loaded, out, opset=17)
    assert worst < 1e-4
    meta = read_onnx_metadata(out)
    assert meta["graph_optimization"] == "ORT_ENABLE_ALL"
    assert meta["optimized_for"] and meta["onnxruntime_version"]
    assert meta["input_size"] == "[32, 96]" and meta["num_classes"] == "2"
    domains = {node.domain for node in onnx.load(str(out)).graph.node}
    assert domains & {"com.microsoft", "com.microsoft.nchwc"}  # rewritten by onnxruntime
    batch = torch.rand(2, 3, 40, 100, generator=torch.Generator().manual_seed(5))
    expected = TorchBackend(loaded.model).logits(batch).softmax(dim=1)
    got = OnnxRuntimeBackend(out, threads=1).logits(batch).softmax(dim=1)
    assert float((got - expected).abs().max()) < 1e-4
    assert sorted(p.name for p in out.parent.iterdir()) == ["tiny.optimized.onnx"]


def test_cli_exports_optimized_and_refuses_unknown_formats(checkpoint: Path):
    result = run_cli("export", str(checkpoint), "--format", "onnx-optimized")
    assert result.returncode == 0, result.stderr
    assert (checkpoint.parent / "tiny.optimized.onnx").is_file()
    assert "onnxruntime-optimized" in result.stdout
    bad = run_cli("export", str(checkpoint), "--format", "tensorrt")
    assert bad.returncode != 0 and "semseg: error: --format must be one of" in bad.stderr

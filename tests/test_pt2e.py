"""torch's own int8 (issue 18): PT2E quantization with torchao's X86InductorQuantizer, lowered to
oneDNN, cached as an exported program (``--backend torch --precision int8``).

A width-0.125 FCN-8s at 32 x 96 (seeded score layers) on synthetic scenes. Covered: reused
activation modules split so the quantizer accepts them (the failure it gives otherwise is
reproduced); the program is quantized once, checked against fp32 eager by an independent
calculation here, reused by a later call without reading images, and rebuilt when its file is
truncated or a key input (torchao's version) changes; a failed parity verdict is cached and the
run falls back to onnxruntime int8; no torchao or no VNNI gives one line and the next path; the
CLI runs it and records no torch-free route for it. No timing: speed is in benchmarks/int8.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import read_labels, tiny_checkpoint
from PIL import Image

pytest.importorskip("torchao", reason="the int8 extra (torchao) is not installed")

from semseg.data.synthetic import generate_scene  # noqa: E402
from semseg.data.transforms import image_to_tensor  # noqa: E402
from semseg.errors import SemsegError  # noqa: E402
from semseg.inference import autotune, machine, pt2e, quantize  # noqa: E402
from semseg.inference.autotune import INT8, TORCH_INT8, BackendOptions, choose_backend  # noqa: E402
from semseg.inference.checkpoint import load_model  # noqa: E402

MIN_AGREEMENT = 0.97  # the untrained tiny model leaves pixels near p = 0.5
NO_VNNI = frozenset({"sse4_2", "avx2", "avx512f", "avx512_bf16"})


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pt2e")


@pytest.fixture(scope="module")
def checkpoint(work: Path) -> Path:
    return tiny_checkpoint(work / "tiny.ckpt")


@pytest.fixture(scope="module")
def scenes() -> list[np.ndarray]:
    return [generate_scene(seed, height=60, width=200).image for seed in range(4)]


@pytest.fixture(autouse=True)
def setting(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEMSEG_CACHE_DIR", str(work / "cache"))
    monkeypatch.setattr(quantize, "MIN_LABEL_AGREEMENT", MIN_AGREEMENT)
    if not quantize.vnni_supported():  # the quantizer runs anywhere; say the CPU has VNNI
        monkeypatch.setattr(machine, "cpu_flags", lambda: frozenset({"avx512_vnni"}))
    torch.set_num_threads(1)


class SharedRelu(torch.nn.Module):
    """Two convolutions and one ReLU module called after each (as torchvision's ResNet blocks)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(4, 4, 3, padding=1)
        self.relu = torch.nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv2(self.relu(self.conv1(x))))


def test_reused_activation_is_split_so_the_quantizer_accepts_it():
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    def quantizer():
        chosen = X86InductorQuantizer()
        chosen.set_global(get_default_x86_inductor_quantization_config())
        return chosen

    example = (torch.rand(1, 3, 8, 8),)
    captured = torch.export.export(SharedRelu().eval(), example).module()
    with pytest.raises(ValueError, match="more than one output node"):
        prepare_pt2e(captured, quantizer())
    captured = torch.export.export(SharedRelu().eval(), example).module()
    assert pt2e.split_reused_activations(captured.graph) == 2
    paths = [
        list(node.meta["nn_module_stack"].values())[-1][0]
        for node in captured.graph.nodes
        if node.op == "call_function" and "relu" in str(node.target)
    ]
    assert len(paths) == 2 and len(set(paths)) == 2 and all(p.startswith("relu@") for p in paths)
    prepare_pt2e(captured, quantizer())  # accepted now


def fp32_probabilities(checkpoint: Path, image: np.ndarray) -> torch.Tensor:
    """The reference: the checkpoint's model in plain torch, softmax at its input size."""
    model = load_model(checkpoint).model.eval()
    with torch.no_grad():
        return model(image_to_tensor(image, 32, 96).unsqueeze(0)).softmax(dim=1)


def test_program_is_quantized_once_matches_fp32_and_is_rebuilt_when_stale(
    checkpoint: Path, scenes: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
):
    loaded = load_model(checkpoint)
    lines: list[str] = []
    backend = pt2e.torch_int8_backend(loaded, scenes, announce=lines.append)
    assert any("quantizing tiny.ckpt to torch int8 (PT2E) once on 4 image(s)" in x for x in lines)
    assert backend.describe() == "torch int8 (PT2E, oneDNN)"
    agree = total = 0
    for image in scenes:
        expected = fp32_probabilities(checkpoint, image)
        got = backend.logits(image_to_tensor(image, 32, 96).unsqueeze(0)).softmax(dim=1)
        assert got.shape == expected.shape == (1, 2, 32, 96)
        assert 0.0 < float((got - expected).abs().max()) < quantize.MAX_PROB_ERROR
        agree += int((got.argmax(1) == expected.argmax(1)).sum())
        total += expected[:, 0].numel()
    assert agree / total >= MIN_AGREEMENT
    batch = torch.stack([image_to_tensor(image, 32, 96) for image in scenes[:3]])
    assert torch.allclose(
        backend.logits(batch), torch.cat([backend.logits(batch[i : i + 1]) for i in range(3)])
    )
    key = pt2e.program_key(loaded, autotune.checkpoint_sha256(checkpoint))
    manifest = json.loads(key.path().with_name(key.path().name + ".json").read_text())
    assert manifest["parity_ok"] and manifest["calibration_images"] == 4
    assert manifest["key"]["extra"] == f"torchao {pt2e.torchao_version()}; guard {quantize.GUARD}"

    def explode():
        raise AssertionError("a cached program must not read calibration images")

    lines.clear()
    again = pt2e.torch_int8_backend(loaded, explode, announce=lines.append)
    assert lines == ["torch int8: lowering the cached program to oneDNN kernels (once per process)"]
    x = image_to_tensor(scenes[0], 32, 96).unsqueeze(0)
    assert torch.equal(again.logits(x), backend.logits(x))
    with pytest.raises(SemsegError, match="takes 32x96 images, got 64x96"):
        again.logits(torch.rand(1, 3, 64, 96))
    # a truncated file, then another torchao: quantized again, saying why
    path = key.path()
    path.write_bytes(path.read_bytes()[:1000])
    pt2e.torch_int8_backend(loaded, scenes, announce=lines.append)
    assert any("again (the cached file was changed or truncated)" in line for line in lines)
    monkeypatch.setattr(pt2e, "torchao_version", lambda: "0.0.1")
    lines.clear()
    pt2e.torch_int8_backend(loaded, scenes, announce=lines.append)
    assert any("again (the cached one is stale (extra))" in line for line in lines), lines


def test_a_new_process_lowers_the_cached_program_to_onednn(
    checkpoint: Path, scenes: list[np.ndarray], work: Path
):
    """The lowering passes are registered by importing the quantizer; a process that only loads
    the cached program must still get oneDNN int8 kernels (not fp32 convolutions)."""
    loaded = load_model(checkpoint)
    built = pt2e.torch_int8_backend(loaded, scenes)
    assert pt2e.onednn_calls(built.module) > 0
    script = (
        "import sys, torch\n"
        "from semseg.inference import machine, quantize\n"
        "if not quantize.vnni_supported():  # as the fixture says (the same cache key)\n"
        "    machine.cpu_flags = lambda: frozenset({'avx512_vnni'})\n"
        "from semseg.inference.checkpoint import load_model\n"
        "from semseg.inference.pt2e import onednn_calls, torch_int8_backend\n"
        "backend = torch_int8_backend(load_model(sys.argv[1]), None)\n"
        "assert 'torchao.quantization.pt2e.quantize_pt2e' in sys.modules\n"
        "print(onednn_calls(backend.module))\n"
    )
    env = {**os.environ, "SEMSEG_CACHE_DIR": str(work / "cache")}
    result = subprocess.run(
        [sys.executable, "-c", script, str(checkpoint)], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert int(result.stdout.split()[-1]) == pt2e.onednn_calls(built.module)


def test_failed_parity_is_cached_and_falls_back_to_onnxruntime_int8(
    work: Path, scenes: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
):
    loaded = load_model(tiny_checkpoint(work / "strict.ckpt"))
    monkeypatch.setattr(quantize, "MIN_LABEL_AGREEMENT", 1.01)  # no int8 model can pass
    with pytest.raises(SemsegError, match="torch int8 model fails its parity check"):
        pt2e.torch_int8_backend(loaded, scenes)
    lines: list[str] = []
    with pytest.raises(SemsegError, match="fails its parity check"):
        pt2e.torch_int8_backend(loaded, None, announce=lines.append)  # the verdict, cached
    assert lines == []
    monkeypatch.setattr(quantize, "MIN_LABEL_AGREEMENT", MIN_AGREEMENT)
    backend, choice = choose_backend(
        loaded, BackendOptions("torch", precision="int8"), images=scenes, announce=lines.append
    )
    assert choice.candidate == INT8 and backend.describe().startswith("onnxruntime int8")
    warning = [line for line in lines if line.startswith("warning:")]
    assert (
        len(warning) == 1
        and "torch int8 (PT2E, oneDNN): the torch int8 model fails" in (warning[0])
    )
    assert warning[0].endswith("running onnxruntime int8 instead")


def test_without_torchao_or_vnni_one_line_and_the_next_path(
    checkpoint: Path, scenes: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
):
    loaded = load_model(checkpoint)
    monkeypatch.setattr(pt2e, "torchao_version", lambda: None)
    assert pt2e.pt2e_unsupported() == 'torch int8 needs torchao (pip install -e ".[int8]")'
    lines: list[str] = []
    _, choice = choose_backend(
        loaded, BackendOptions("torch", precision="int8"), images=scenes, announce=lines.append
    )
    assert choice.candidate == INT8
    assert any("needs torchao" in line and line.startswith("warning:") for line in lines)
    monkeypatch.undo()
    assert "8-bit dot products" in pt2e.pt2e_unsupported(NO_VNNI)


def test_auto_leaves_torch_int8_to_an_explicit_request():
    candidates = autotune.auto_candidates(None, None, compile=False)
    assert INT8 in candidates and TORCH_INT8 not in candidates


def test_cli_backend_torch_precision_int8(
    checkpoint: Path, scenes: list[np.ndarray], work: Path, cli
):
    folder = work / "images"
    folder.mkdir(exist_ok=True)
    for index, image in enumerate(scenes):
        Image.fromarray(image).save(folder / f"um_00000{index}.png")
    reference = cli("predict", str(checkpoint), str(folder), "--out", str(work / "p-fp32"),
                    "--backend", "torch")  # fmt: skip
    assert reference.returncode == 0, reference.stderr
    out = work / "p-torch-int8"
    result = cli("predict", str(checkpoint), str(folder), "--out", str(out),
                 "--backend", "torch", "--precision", "int8", "--threads", "1")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "backend: torch int8 (PT2E, oneDNN) (--precision int8" in result.stderr
    assert "recorded route" not in result.stderr  # torch runs it: no torch-free start
    labels, expected = read_labels(out), read_labels(work / "p-fp32")
    assert labels.keys() == expected.keys() and len(labels) == 4
    assert np.mean([(labels[k] != expected[k]).mean() for k in labels]) <= 1 - MIN_AGREEMENT

"""The torch-free start of ``semseg predict`` (semseg.inference.fast_start): the numpy pieces
against torch, the recorded route giving the full path's outputs byte for byte without importing
torch, and every way a route goes stale sending the run back to the full path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_checkpoint
from PIL import Image
from torchvision.transforms import v2

from semseg.inference import fast_start, machine, model_info
from semseg.inference.options import BackendOptions
from semseg.inference.preprocess import model_input, softmax, upsample_bilinear

ROUTE_NOTE = "[recorded route: started without torch]"


# --- the numpy pieces against torch -------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, size",
    [
        ((2, 160, 576), (375, 1242)),  # the KITTI case: logits at the input size, image size back
        ((11, 90, 120), (360, 480)),
        ((3, 7, 9), (5, 4)),  # shrinking
        ((2, 10, 10), (10, 10)),  # identity
        ((4, 5, 6), (13, 3)),  # one side up, one down
        ((1, 1, 1), (3, 7)),
    ],
)
def test_bilinear_upsampling_matches_torch(shape, size):
    logits = np.random.default_rng(0).standard_normal(shape).astype(np.float32) * 5
    expected = F.interpolate(
        torch.from_numpy(logits)[None], size=size, mode="bilinear", align_corners=False
    )[0].numpy()
    got = upsample_bilinear(logits, *size)
    assert got.shape == expected.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_upsampling_a_hand_made_case():
    """2 -> 4 samples: half-pixel centres give 0, 0.25, 0.75, 1 of the way (edges clamped)."""
    row = np.array([[[0.0, 4.0]]], dtype=np.float32)
    np.testing.assert_allclose(upsample_bilinear(row, 1, 4)[0, 0], [0.0, 1.0, 3.0, 4.0])


def test_softmax_matches_torch():
    scores = np.random.default_rng(1).standard_normal((5, 7, 3)).astype(np.float32) * 30
    expected = torch.from_numpy(scores).softmax(dim=0).numpy()
    np.testing.assert_allclose(softmax(scores), expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("size", [(375, 1242), (100, 300), (160, 576)])
def test_model_input_is_torchvisions_antialiased_resize_to_one_level(size):
    """Pillow's bilinear filter (what both paths use) against torchvision's ``antialias=True``
    uint8 kernel: the same to within one level of 255, equal on nearly every value."""
    image = np.random.default_rng(2).integers(0, 256, (*size, 3), dtype=np.uint8)
    torchvision = v2.functional.resize(
        torch.from_numpy(image).permute(2, 0, 1), [160, 576], antialias=True
    )
    got = model_input(image, 160, 576)
    assert got.shape == (3, 160, 576) and got.dtype == np.float32
    difference = np.abs(np.round(got * 255) - torchvision.numpy())
    assert difference.max() <= 1 and (difference > 0).mean() < 0.01
    same_size = image.transpose(2, 0, 1).astype(np.float32) / np.float32(255)
    np.testing.assert_array_equal(model_input(image, *size), same_size)


# --- the route ----------------------------------------------------------------------------------


@pytest.fixture
def setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A tiny checkpoint old enough for its hash to be remembered, three images, a cache."""
    monkeypatch.setenv("SEMSEG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(model_info, "STABLE_FOR_S", -1.0)  # remember hashes of fresh files
    checkpoint = tiny_checkpoint(tmp_path / "tiny.ckpt")
    past = time.time() - 60
    os.utime(checkpoint, (past, past))
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(3)
    for index in range(3):
        pixels = rng.integers(0, 256, (75, 250, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"um_00000{index}.png")
    return {"checkpoint": checkpoint, "images": images, "root": tmp_path}


def predict_in_new_process(setting: dict[str, Path], out: str, *flags: str):
    """``semseg predict`` in a fresh interpreter; prints whether torch was ever imported."""
    code = (
        "import sys\n"
        "from semseg.cli import main\n"
        f"sys.argv = ['semseg', 'predict', {str(setting['checkpoint'])!r}, "
        f"{str(setting['images'])!r}, '--out', {str(setting['root'] / out)!r}, *{flags!r}]\n"
        "try:\n    main()\nexcept SystemExit as exit_:\n    code = exit_.code\n"
        "print('torch imported:', 'torch' in sys.modules)\n"
        "sys.exit(code)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=os.environ, timeout=300
    )


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def test_a_recorded_route_gives_the_same_files_without_torch(setting, cli):
    flags = ("--precision", "int8", "--threads", "1")
    first = cli("predict", str(setting["checkpoint"]), str(setting["images"]),
                "--out", str(setting["root"] / "full"), *flags)  # fmt: skip
    assert first.returncode == 0, first.stderr
    assert ROUTE_NOTE not in first.stderr
    (route,) = (setting["root"] / "cache" / "routes").glob("*.json")

    again = predict_in_new_process(setting, "routed", *flags)
    assert again.returncode == 0, again.stderr
    assert "torch imported: False" in again.stdout
    assert f"backend: onnxruntime int8 (1 threads) (--precision int8; cached, parity checked) " \
           f"{ROUTE_NOTE}" in again.stderr  # fmt: skip
    full, routed = folder_bytes(setting["root"] / "full"), folder_bytes(setting["root"] / "routed")
    assert len(full) == 9 and routed.keys() == full.keys()
    assert all(routed[name] == full[name] for name in full)  # labels, probabilities, overlays

    # a route recorded for one request serves no other: other threads, the torch backend
    other = cli("predict", str(setting["checkpoint"]), str(setting["images"]), "--out",
                str(setting["root"] / "o"), "--precision", "int8", "--threads", "2")  # fmt: skip
    assert other.returncode == 0 and ROUTE_NOTE not in other.stderr
    torch_run = cli("predict", str(setting["checkpoint"]), str(setting["images"]),
                    "--out", str(setting["root"] / "torch"), "--backend", "torch")  # fmt: skip
    assert torch_run.returncode == 0 and ROUTE_NOTE not in torch_run.stderr
    assert route.exists()


def routed(setting, cli, out: str) -> str:
    result = cli("predict", str(setting["checkpoint"]), str(setting["images"]), "--out",
                 str(setting["root"] / out), "--precision", "int8", "--threads", "1")  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stderr


def test_a_stale_route_sends_the_run_back_to_the_full_path(setting, cli, monkeypatch):
    assert ROUTE_NOTE not in routed(setting, cli, "a")
    assert ROUTE_NOTE in routed(setting, cli, "b")
    (route_json,) = (setting["root"] / "cache" / "routes").glob("*.json")
    entry = json.loads(route_json.read_text())
    assert entry["optimized"] and Path(entry["onnx"]) == route_json.with_suffix(".onnx")

    # the int8 model changed under the route: full path, which finds the artefact corrupt and
    # rebuilds it
    source = Path(entry["source"])
    source.write_bytes(source.read_bytes()[:-1] + b"\0")
    stderr = routed(setting, cli, "c")
    assert ROUTE_NOTE not in stderr and "quantizing" in stderr
    assert ROUTE_NOTE in routed(setting, cli, "d")  # recorded again

    # the route's own optimized graph was rewritten: full path (nothing to rebuild)
    optimized = route_json.with_suffix(".onnx")
    optimized.write_bytes(optimized.read_bytes())
    stderr = routed(setting, cli, "c2")
    assert ROUTE_NOTE not in stderr and "quantizing" not in stderr
    assert ROUTE_NOTE in routed(setting, cli, "d2")

    # the checkpoint changed (a new hash memo is needed): full path
    later = time.time() - 30
    os.utime(setting["checkpoint"], (later, later))
    assert ROUTE_NOTE not in routed(setting, cli, "e")
    assert ROUTE_NOTE in routed(setting, cli, "f")

    # another CPU (its flags are part of the key): full path
    options = BackendOptions(precision="int8", threads=1)
    request = fast_start.request_for(setting["checkpoint"], options, 4, 3)
    with monkeypatch.context() as patch:
        patch.setattr(machine, "cpu_flags", lambda: frozenset({"sse2"}))
        assert fast_start.find_route(request) is None
    assert fast_start.find_route(request) is not None

    # the backend choices were rewritten (a recalibration elsewhere): full path
    store = setting["root"] / "cache" / "backend-choices.json"
    store.write_text("{}\n")
    assert fast_start.find_route(request) is None
    assert ROUTE_NOTE not in routed(setting, cli, "g")


def test_requests_only_the_full_path_can_serve():
    model = Path("m.ckpt")
    ok = fast_start.request_for(model, BackendOptions(), batch_size=8, image_count=12)
    assert ok is not None and ok.batch_size == 4  # the batch auto calibrates at
    assert fast_start.request_for(model, BackendOptions(), 8, 2).batch_size == 2
    refused = [
        fast_start.request_for(model, BackendOptions(), 4, 4, crf=object()),
        fast_start.request_for(model, BackendOptions(), 4, 4, mil_flags=True),
        fast_start.request_for(model, BackendOptions(recalibrate=True), 4, 4),
        fast_start.request_for(model, BackendOptions(precision="bf16"), 4, 4),
        fast_start.request_for(model, BackendOptions(compile=True), 4, 4),
        fast_start.request_for(model, BackendOptions("torch"), 4, 4),
        fast_start.request_for(model, BackendOptions("torch", precision="int8"), 4, 4),  # PT2E
        fast_start.request_for(Path("m.pt2"), BackendOptions(), 4, 4),
    ]
    assert refused == [None] * len(refused)
    assert fast_start.request_for(model, BackendOptions(precision="int8"), 4, 4)


def test_a_choice_that_is_not_onnxruntime_removes_the_route(setting, monkeypatch):
    from semseg.inference.checkpoint import load_model

    loaded = load_model(setting["checkpoint"])
    request = fast_start.request_for(setting["checkpoint"], BackendOptions(), 1, 1)

    class Engine:
        name, threads, path = "onnxruntime", 1, setting["checkpoint"]

    fast_start.record_route(request, Engine(), loaded, ["backend: x"])
    (route,) = (setting["root"] / "cache" / "routes").glob("*.json")
    assert not route.with_suffix(".onnx").exists()  # a checkpoint is no model onnxruntime opens
    Engine.name = "torch"
    fast_start.record_route(request, Engine(), loaded, ["backend: torch"])
    assert list((setting["root"] / "cache" / "routes").iterdir()) == []


def test_an_onnx_file_given_directly_gets_a_route_too(setting, cli):
    exported = setting["root"] / "tiny.onnx"
    result = cli("export", str(setting["checkpoint"]), "--format", "onnx", "--out", str(exported))
    assert result.returncode == 0, result.stderr
    runs = []
    for out in ("full", "routed"):
        runs.append(cli("predict", str(exported), str(setting["images"]), "--out",
                        str(setting["root"] / out), "--threads", "1"))  # fmt: skip
        assert runs[-1].returncode == 0, runs[-1].stderr
    assert ROUTE_NOTE not in runs[0].stderr and ROUTE_NOTE in runs[1].stderr
    assert "(the input is an ONNX model)" in runs[1].stderr
    full, routed = folder_bytes(setting["root"] / "full"), folder_bytes(setting["root"] / "routed")
    assert len(full) == 9 and full == routed


def test_a_route_that_cannot_be_written_warns_and_the_run_succeeds(setting, cli, monkeypatch):
    def full_disk(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fast_start, "write_json_atomic", full_disk)
    result = cli("predict", str(setting["checkpoint"]), str(setting["images"]), "--out",
                 str(setting["root"] / "out"), "--backend", "onnxruntime")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "warning: the route of this run was not recorded: [Errno 28]" in result.stderr
    assert len(folder_bytes(setting["root"] / "out")) == 9

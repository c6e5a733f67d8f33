"""Loading checkpoints for inference: memory-mapped reads with a legacy-format fallback, the
finiteness check, the remembered checkpoint hash, and an inference import path without the
training stack."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_checkpoint

from semseg.errors import SemsegError
from semseg.inference import checkpoint as ckpt
from semseg.inference import model_info


def test_a_legacy_format_checkpoint_loads_like_a_zip_one(tmp_path):
    zipped = tiny_checkpoint(tmp_path / "zip.ckpt")
    contents = torch.load(zipped, weights_only=True)
    legacy = tmp_path / "legacy.ckpt"
    torch.save(contents, legacy, _use_new_zipfile_serialization=False)
    image = torch.rand(1, 3, 32, 96)
    with torch.no_grad():
        expected = ckpt.load_model(zipped).model(image)
        got = ckpt.load_model(legacy).model(image)
    assert torch.equal(expected, got)


def test_a_memory_mapped_model_does_not_write_back_to_its_file(tmp_path):
    path = tiny_checkpoint(tmp_path / "model.ckpt")
    before = ckpt.file_sha256(path)
    loaded = ckpt.load_model(path)
    with torch.no_grad():
        for parameter in loaded.model.parameters():
            parameter.add_(1.0)
    assert ckpt.file_sha256(path) == before


def test_a_file_that_is_no_checkpoint_is_refused_in_one_line(tmp_path):
    path = tmp_path / "junk.ckpt"
    path.write_bytes(b"not a checkpoint at all" * 10)
    with pytest.raises(SemsegError, match="not a semseg checkpoint"):
        ckpt.load_model(path)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64, torch.bfloat16])
def test_all_finite_finds_nan_and_infinity_in_every_float_type(dtype):
    values = torch.linspace(-3, 3, 1000, dtype=torch.float32).reshape(10, 100)
    assert ckpt.all_finite(values.to(dtype))
    for bad in (float("nan"), float("inf"), float("-inf")):
        spoilt = values.clone()
        spoilt[7, 42] = bad
        assert not ckpt.all_finite(spoilt.to(dtype))


def test_all_finite_on_a_non_contiguous_view():
    values = torch.zeros(8, 8)
    values[3, 4] = float("nan")
    assert not ckpt.all_finite(values.t()[::2])  # row 4 of the transpose holds it at column 3
    assert ckpt.all_finite(values.t()[::2, :3])


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("SEMSEG_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def memo_files(cache: Path) -> list[Path]:
    return sorted((cache / "hashes").glob("*.json"))


def test_the_checkpoint_hash_is_remembered_once_the_file_is_settled(tmp_path, cache, monkeypatch):
    path = tmp_path / "model.ckpt"
    path.write_bytes(os.urandom(4096))
    expected = ckpt.file_sha256(path)
    assert ckpt.checkpoint_sha256(path) == expected
    assert memo_files(cache) == []  # just written: not remembered yet

    monkeypatch.setattr(model_info, "STABLE_FOR_S", -1.0)
    assert ckpt.checkpoint_sha256(path) == expected
    (memo,) = memo_files(cache)
    assert json.loads(memo.read_text())["sha256"] == expected

    def no_reading(_path):
        raise AssertionError("the remembered hash should have been used")

    monkeypatch.setattr(model_info, "file_sha256", no_reading)
    assert ckpt.checkpoint_sha256(path) == expected


def test_a_changed_checkpoint_misses_its_remembered_hash(tmp_path, cache, monkeypatch):
    monkeypatch.setattr(model_info, "STABLE_FOR_S", -1.0)
    path = tmp_path / "model.ckpt"
    path.write_bytes(b"a" * 4096)
    first = ckpt.checkpoint_sha256(path)
    time.sleep(0.01)
    path.write_bytes(b"b" * 4096)  # same size, new bytes
    second = ckpt.checkpoint_sha256(path)
    assert second == ckpt.file_sha256(path) != first
    replacement = tmp_path / "other.ckpt"
    replacement.write_bytes(b"c" * 4096)
    os.replace(replacement, path)  # a new file under the same name
    assert ckpt.checkpoint_sha256(path) == ckpt.file_sha256(path)


def test_a_corrupt_hash_memo_is_ignored_and_replaced(tmp_path, cache, monkeypatch):
    monkeypatch.setattr(model_info, "STABLE_FOR_S", -1.0)
    path = tmp_path / "model.ckpt"
    path.write_bytes(b"x" * 100)
    ckpt.checkpoint_sha256(path)
    (memo,) = memo_files(cache)
    for junk in ("{", "[]", json.dumps({"path": str(path.resolve()), "stat": "?"})):
        memo.write_text(junk)
        assert ckpt.checkpoint_sha256(path) == ckpt.file_sha256(path)
    forged = json.loads(memo.read_text())
    forged["path"] = "/somewhere/else.ckpt"
    forged["sha256"] = "0" * 64
    memo.write_text(json.dumps(forged))
    assert ckpt.checkpoint_sha256(path) == ckpt.file_sha256(path)


def test_prediction_imports_no_training_stack():
    """``semseg predict`` needs the model registry, not Lightning or torchmetrics (about a
    second of a fresh process's start)."""
    code = (
        "import sys\n"
        "import semseg.cli\n"
        "from semseg.inference.checkpoint import load_model\n"
        "from semseg.inference.artefacts import library_versions\n"
        "from semseg.prediction import predict_files\n"
        "library_versions()\n"
        "heavy = sorted(m for m in ('lightning', 'torchmetrics', 'onnx', 'matplotlib')"
        " if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    assert done.stdout.strip() == ""

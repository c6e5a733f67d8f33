"""Paths built once and cached (issue 18): ``--precision int8`` and the AOTInductor package.

A width-0.125 FCN-8s at 32 x 96 (seeded score layers) on synthetic scenes. Covered: the int8
model is quantized once on the images given and reused by a later run; its output is checked
against the fp32 export run directly in ONNX Runtime; the cache entry is rebuilt when a key input
changes (library version, CPU flags) or the file is corrupt or belongs to another model; a CPU
without VNNI or bf16, no C++ compiler, no calibration images and a failed parity check each give
one clear line and the next path; ``auto`` considers both paths by default. The one real
AOTInductor compilation (marked slow, about 10-20 s on 2 cores) is loaded by a new process with
no compiler on PATH. No timing: speed is measured in benchmarks/int8.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import read_labels, tiny_checkpoint
from PIL import Image

from semseg.data.synthetic import generate_scene
from semseg.data.transforms import image_to_tensor
from semseg.errors import SemsegError
from semseg.inference import artefacts, autotune, machine, quantize
from semseg.inference.autotune import AOT_BF16, INT8, BackendOptions, choose_backend
from semseg.inference.checkpoint import load_model
from semseg.inference.int8_cache import CALIBRATIONS, cached_int8, int8_key, parity_rank

NO_VNNI = frozenset({"sse4_2", "avx2", "avx512f", "avx512_bf16"})
NO_BF16 = frozenset({"sse4_2", "avx2", "avx512f", "avx512_vnni"})
MIN_AGREEMENT = 0.97  # the untrained tiny model leaves pixels near p = 0.5 (tests/test_quantize.py)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("compiled")


@pytest.fixture(scope="module")
def checkpoint(work: Path) -> Path:
    return tiny_checkpoint(work / "tiny.ckpt")


@pytest.fixture(scope="module")
def scenes() -> list[np.ndarray]:
    return [generate_scene(seed, height=60, width=200).image for seed in range(4)]


@pytest.fixture(scope="module")
def images(work: Path, scenes: list[np.ndarray]) -> Path:
    folder = work / "images"
    folder.mkdir()
    for index, image in enumerate(scenes):
        Image.fromarray(image).save(folder / f"um_00000{index}.png")
    return folder


@pytest.fixture(autouse=True)
def setting(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEMSEG_CACHE_DIR", str(work / "cache"))
    monkeypatch.setenv("SEMSEG_AUTO_BUILD", "1")
    monkeypatch.setattr(quantize, "MIN_LABEL_AGREEMENT", MIN_AGREEMENT)
    torch.set_num_threads(1)


def flags(monkeypatch: pytest.MonkeyPatch, value: frozenset[str]) -> None:
    """Simulate another CPU: what /proc/cpuinfo's flags would say."""
    monkeypatch.setattr(machine, "cpu_flags", lambda: value)


def no_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    from semseg.inference import aot

    monkeypatch.setattr(aot.shutil, "which", lambda name: None)


def ort_probabilities(path: Path, image: np.ndarray) -> np.ndarray:
    """The model's softmax at its input size, straight from ONNX Runtime (no semseg code)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"image": image_to_tensor(image, 32, 96).unsqueeze(0).numpy()})[0]
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


# --- the int8 model, cached -------------------------------------------------------------------


def test_int8_is_quantized_once_and_matches_fp32(checkpoint: Path, scenes: list[np.ndarray]):
    loaded = load_model(checkpoint)
    lines: list[str] = []
    first = cached_int8(loaded, scenes, threads=1, announce=lines.append)
    assert first.built and first.ok, first.reason
    assert any("quantizing tiny.ckpt to int8 once:" in line for line in lines)
    manifest = json.loads(first.path.with_name(first.path.name + ".json").read_text())
    assert manifest["key"]["precision"] == "int8" and manifest["key"]["input_size"] == [32, 96]
    assert manifest["parity_ok"] and manifest["calibration_images"] == len(scenes)

    def explode():
        raise AssertionError("a cached model must not read calibration images")

    again = cached_int8(loaded, explode, threads=1)
    assert not again.built and again.path == first.path and again.ok
    # against the fp32 export, each run directly in ONNX Runtime
    fp32 = autotune.cached_onnx(loaded)
    agree = total = 0
    for image in scenes:
        p_int8, p_fp32 = ort_probabilities(first.path, image), ort_probabilities(fp32, image)
        agree += int((p_int8.argmax(1) == p_fp32.argmax(1)).sum())
        total += p_fp32[:, 0].size
        assert 0.0 < float(np.abs(p_int8 - p_fp32).max()) < 0.25
    assert agree / total >= MIN_AGREEMENT


def test_parity_rank_prefers_passing_then_agreement_then_smaller_error():
    def verdict(ok: bool, agreement: float, max_dp: float) -> quantize.Parity:
        comparison = quantize.Comparison(4, agreement, max_dp, max_dp / 10)
        return quantize.Parity(ok, "", comparison)

    ranked = sorted(
        [
            verdict(False, 0.999, 0.30),  # the best agreement, but it failed its guard
            verdict(True, 0.990, 0.20),
            verdict(True, 0.995, 0.20),
            verdict(True, 0.995, 0.10),
            quantize.Parity(False, "cannot be read"),
        ],
        key=parity_rank,
        reverse=True,
    )
    summary = [(p.ok, p.comparison and p.comparison.label_agreement) for p in ranked]
    assert summary == [(True, 0.995), (True, 0.995), (True, 0.990), (False, 0.999), (False, None)]
    assert ranked[0].comparison.max_abs_prob_diff == 0.10


def test_int8_keeps_the_calibration_its_guard_rates_closest(
    checkpoint: Path, scenes: list[np.ndarray], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    """Each method of CALIBRATIONS is quantized and checked; the kept file is the best one's
    (its own metadata says which calibration made it) and the manifest records every verdict."""
    monkeypatch.setenv("SEMSEG_CACHE_DIR", str(tmp_path / "cache"))
    agreement = {"percentile": 0.991, "entropy": 0.998}
    checked = []

    def scripted(int8, fp32, images, **kwargs):
        method = Path(int8).name.split(".")[1]
        checked.append(method)
        comparison = quantize.Comparison(len(images), agreement[method], 0.1, 0.01)
        return quantize.Parity(True, f"{method} ok", comparison)

    monkeypatch.setattr(quantize, "int8_parity_ok", scripted)
    model = cached_int8(load_model(checkpoint), scenes[:2], threads=1)
    assert sorted(checked) == sorted(CALIBRATIONS)
    manifest = json.loads(model.path.with_name(model.path.name + ".json").read_text())
    assert manifest["calibration"] == "entropy" and model.reason == "entropy ok"
    assert manifest["trials"] == {name: f"{name} ok" for name in CALIBRATIONS}
    assert quantize.read_metadata(model.path)["calibration"] == "entropy"

    agreement.update(percentile=0.999)
    rebuilt = cached_int8(load_model(checkpoint), scenes[:2], threads=1, rebuild=True)
    assert quantize.read_metadata(rebuilt.path)["calibration"] == "percentile"


def test_int8_cache_entry_is_rebuilt_when_stale_or_corrupt(
    checkpoint: Path, scenes: list[np.ndarray], monkeypatch: pytest.MonkeyPatch, work: Path
):
    loaded = load_model(checkpoint)
    original = cached_int8(loaded, scenes, threads=1)
    lines: list[str] = []

    def rebuilt() -> str:
        lines.clear()
        model = cached_int8(loaded, scenes[:2], threads=1, announce=lines.append)
        assert model.built and model.path.is_file()
        return next(line for line in lines if "quantizing" in line)

    # a library version changes: a new key, the old entry goes
    versions = {**artefacts.library_versions(), "onnxruntime": "0.0.1"}
    monkeypatch.setattr(artefacts, "library_versions", lambda: versions)
    line = rebuilt()
    assert "again (the cached one is stale (onnxruntime " in line and "-> 0.0.1" in line
    assert not original.path.exists()
    # the CPU changes
    flags(monkeypatch, machine.cpu_flags() ^ {"amx_int8"})  # gained or lost, whichever is new
    assert "CPU flags" in rebuilt()
    # the file is truncated, then replaced by another valid file
    path = cached_int8(loaded, scenes, threads=1).path
    path.write_bytes(path.read_bytes()[:1000])
    assert "changed or truncated" in rebuilt()
    # another model's int8 file (3 classes) in the entry, its manifest made to match
    other = load_model(tiny_checkpoint(work / "three.ckpt", ("sky", "road", "car")))
    foreign = cached_int8(other, scenes[:2], threads=1).path
    key = int8_key(loaded, artefacts.file_sha256(checkpoint))
    entry = key.path()
    entry.write_bytes(foreign.read_bytes())
    manifest = json.loads(entry.with_name(entry.name + ".json").read_text())
    manifest["sha256"] = artefacts.file_sha256(entry)
    entry.with_name(entry.name + ".json").write_text(json.dumps(manifest))
    assert "does not fit the model (its num_classes is 3" in rebuilt()
    # a model quantized for another input size (the metadata says so), manifest made to match
    import onnx

    proto = onnx.load(str(entry))
    for prop in proto.metadata_props:
        if prop.key == "input_size":
            prop.value = "[64, 192]"
    onnx.save(proto, str(entry))
    manifest = json.loads(entry.with_name(entry.name + ".json").read_text())
    manifest["sha256"] = artefacts.file_sha256(entry)
    entry.with_name(entry.name + ".json").write_text(json.dumps(manifest))
    assert "does not fit the model (its input_size is [64, 192]" in rebuilt()


def test_cli_precision_int8_predicts_and_reuses_the_cache(
    checkpoint: Path, images: Path, work: Path, cli
):
    reference = cli("predict", str(checkpoint), str(images), "--out", str(work / "p-torch"),
                    "--backend", "torch")  # fmt: skip
    assert reference.returncode == 0, reference.stderr
    for run in ("first", "cached"):
        out = work / f"p-int8-{run}"
        result = cli("predict", str(checkpoint), str(images), "--out", str(out),
                     "--precision", "int8", "--threads", "1")  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert "backend: onnxruntime int8 (1 threads) (--precision int8" in result.stderr
        labels, expected = read_labels(out), read_labels(work / "p-torch")
        assert labels.keys() == expected.keys() and len(labels) == 4
        changed = np.mean([(labels[k] != expected[k]).mean() for k in labels])
        assert changed <= 1 - MIN_AGREEMENT
    assert "quantizing" not in result.stderr  # the second run found the model cached


# --- falling back ------------------------------------------------------------------------------


def test_int8_falls_back_without_vnni_and_on_failed_parity(
    checkpoint: Path, images: Path, work: Path, cli, monkeypatch: pytest.MonkeyPatch
):
    args = ("predict", str(checkpoint), str(images), "--precision", "int8", "--threads", "1")
    real = machine.cpu_flags()
    flags(monkeypatch, NO_VNNI)
    result = cli(*args, "--out", str(work / "novnni"))
    assert result.returncode == 0, result.stderr
    warning = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "no AVX512-VNNI, AVX-VNNI or AMX-INT8" in warning[0]
    assert warning[0].endswith("running onnxruntime fp32 instead")
    assert "backend: onnxruntime fp32" in result.stderr
    flags(monkeypatch, real)
    monkeypatch.setattr(quantize, "MIN_LABEL_AGREEMENT", 1.01)  # no model can pass
    result = cli(*args, "--recalibrate", "--out", str(work / "parity"))
    assert result.returncode == 0, result.stderr
    assert "fails its parity check (labels agree on" in result.stderr
    assert "backend: onnxruntime fp32" in result.stderr
    labels, expected = read_labels(work / "parity"), read_labels(work / "novnni")
    assert all(np.array_equal(labels[k], expected[k]) for k in expected)  # fp32 both times
    # the failed verdict is cached: the next run falls back without quantizing again
    again = cli(*args, "--out", str(work / "parity2"))
    assert "fails its parity check" in again.stderr and "quantizing" not in again.stderr
    # auto skips it with the same reason
    loaded = load_model(checkpoint)
    no_compiler(monkeypatch)
    lines: list[str] = []
    _, choice = choose_backend(
        loaded, BackendOptions("auto", recalibrate=True), announce=lines.append
    )
    assert choice.candidate != INT8
    assert any(
        line.startswith("onnxruntime int8: not used (the int8 model fails its parity check")
        for line in lines
    ), lines


def test_without_calibration_images_int8_falls_back(work: Path, monkeypatch, scenes):
    fresh = tiny_checkpoint(work / "fresh.ckpt", model_name="fcn32s")
    loaded = load_model(fresh)
    lines: list[str] = []
    backend, choice = choose_backend(
        loaded, BackendOptions("torch", precision="int8"), announce=lines.append
    )
    assert choice.forced == "fallback from --precision int8"
    assert backend.describe().startswith("onnxruntime fp32")
    warnings = [line for line in lines if line.startswith("warning: int8 not used:")]
    assert len(warnings) == 1 and "needs calibration images of your data" in warnings[0]
    # a model built in memory has no file to key a cache by: fp32 eager, said so
    loaded.path = work / "nowhere.ckpt"
    backend, _ = choose_backend(loaded, BackendOptions("auto", precision="int8"), announce=print)
    assert backend.describe() == "torch fp32 eager"


def test_auto_considers_int8_and_the_compiled_package_by_default(
    checkpoint: Path, scenes: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
):
    candidates = autotune.auto_candidates(None, None, compile=False)
    assert INT8 in candidates and AOT_BF16 in candidates
    assert INT8 not in autotune.auto_candidates("32", None, compile=False)
    loaded = load_model(checkpoint)
    no_compiler(monkeypatch)
    flags(monkeypatch, NO_BF16)
    lines: list[str] = []
    _, choice = choose_backend(
        loaded,
        BackendOptions("auto", recalibrate=True),
        image=scenes[0],
        images=scenes,
        announce=lines.append,
    )
    trials = {t.label: t for t in choice.trials}
    assert trials["onnxruntime int8"].accepted, trials["onnxruntime int8"].note
    assert trials["onnxruntime int8"].max_abs_prob_diff <= 0.25
    assert not any("bf16" in label for label in trials)  # no bf16 CPU: no bf16 path tried
    assert "bf16 paths: not used (this CPU has no AVX512-BF16 or AMX instructions)" in lines
    # with SEMSEG_AUTO_BUILD=0 nothing is built, but what is cached is used
    monkeypatch.setenv("SEMSEG_AUTO_BUILD", "0")
    _, quiet = choose_backend(loaded, BackendOptions("auto", recalibrate=True), image=scenes[0])
    assert {t.label: t for t in quiet.trials}["onnxruntime int8"].accepted
    # a bf16 CPU without VNNI and without a C++ compiler: both paths named and skipped
    monkeypatch.setenv("SEMSEG_AUTO_BUILD", "1")
    flags(monkeypatch, NO_VNNI)
    lines.clear()
    _, choice = choose_backend(
        loaded, BackendOptions("auto", recalibrate=True), images=scenes, announce=lines.append
    )
    trials = {t.label: t for t in choice.trials}
    assert "C++ compiler" in trials[AOT_BF16.label()].note
    assert "no AVX512-VNNI" in trials["onnxruntime int8"].note
    skipped = [line for line in lines if ": not used (" in line]
    assert len(skipped) == 2 and choice.candidate not in (INT8, AOT_BF16)


def test_bad_options_and_export_format(checkpoint: Path, cli):
    with pytest.raises(SemsegError, match="int8 runs a quantized model as it was built"):
        BackendOptions("auto", precision="int8", compile=True)
    for args, fragment in (
        (("--precision", "int8"), "--precision must be one of bf16, 32 for pt2"),
        (("--out", "model.onnx"), "--out must name a .pt2 file"),
    ):
        result = cli("export", str(checkpoint), "--format", "pt2", *args)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 2 and len(lines) == 1 and fragment in lines[0], lines


# --- the AOTInductor package ------------------------------------------------------------------


def pt2_precision() -> str:
    return "bf16" if machine.bf16_supported() else "32"


@pytest.mark.slow
def test_compiled_package_is_built_once_and_loads_in_a_new_process(
    checkpoint: Path, work: Path, monkeypatch: pytest.MonkeyPatch, scenes, images: Path, cli
):
    from semseg.inference import aot

    if why := aot.aot_unsupported(pt2_precision()):
        pytest.fail(f"AOTInductor cannot run here: {why}")  # CI has a C++ compiler
    loaded = load_model(checkpoint)
    precision = pt2_precision()
    lines: list[str] = []
    backend = aot.cached_pt2(loaded, precision, announce=lines.append)  # the one compilation
    assert any("with AOTInductor once" in line for line in lines)
    batch = torch.rand(3, 3, 32, 96, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        expected = loaded.model(batch).softmax(dim=1)
    got = backend.logits(batch).softmax(dim=1)
    assert float((got - expected).abs().max()) < aot.VERIFY_TOLERANCE[precision]
    with pytest.raises(SemsegError, match="takes 32x96 images"):
        backend.logits(torch.rand(1, 3, 40, 96))
    # cached: found again without compiling
    package = backend.path
    monkeypatch.setattr(aot, "export_pt2", lambda *a, **k: pytest.fail("compiled again"))
    assert aot.cached_pt2(loaded, precision).path == package
    # a new process loads it with no C++ compiler on PATH (no compilation possible)
    torch.save(expected, work / "expected.pt")
    code = (
        "import sys, torch; from semseg.inference.aot import AotBackend; "
        f"b = AotBackend({str(package)!r}, 2, (32, 96)); "
        f"x = torch.rand(3, 3, 32, 96, generator=torch.Generator().manual_seed(2)); "
        f"e = torch.load({str(work / 'expected.pt')!r}); "
        "print(float((b.logits(x).softmax(1) - e).abs().max()), b.describe())"
    )
    env = {**os.environ, "PATH": str(work / "empty"), "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    worst, description = done.stdout.split(" ", 1)
    assert float(worst) < aot.VERIFY_TOLERANCE[precision]
    assert "AOTInductor package" in description
    # corrupt, then stale: rebuilt (the builder here copies the package made above)
    good = package.read_bytes()

    def rebuild(_loaded, out, _precision, announce=None):
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_bytes(good)
        return 0.0

    monkeypatch.setattr(aot, "export_pt2", rebuild)
    package.write_bytes(good[: len(good) // 2])
    lines.clear()
    assert aot.cached_pt2(loaded, precision, announce=lines.append).path == package
    assert "again (the cached file was changed or truncated)" in lines[0]
    versions = {**artefacts.library_versions(), "torch": "9.9"}
    monkeypatch.setattr(artefacts, "library_versions", lambda: versions)
    lines.clear()
    rebuilt = aot.cached_pt2(loaded, precision, announce=lines.append)
    assert "stale (torch " in lines[0] and rebuilt.path != package and not package.exists()
    # `semseg export --format pt2` writes the package where asked
    out = work / "export" / "tiny.pt2"
    result = cli("export", str(checkpoint), "--format", "pt2", "--precision", precision,
                 "--out", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == good and "AOTInductor package" in result.stdout
    # `semseg predict model.pt2` runs it as compiled, with fp32 eager's labels
    predicted = cli("predict", str(out), str(images), "--out", str(work / "p-pt2"))
    assert predicted.returncode == 0, predicted.stderr
    assert "(the input is an AOTInductor package)" in predicted.stderr
    reference = cli("predict", str(checkpoint), str(images), "--out", str(work / "p-ref"),
                    "--backend", "torch")  # fmt: skip
    assert reference.returncode == 0, reference.stderr
    labels, expected = read_labels(work / "p-pt2"), read_labels(work / "p-ref")
    assert labels.keys() == expected.keys() and len(labels) == 4
    assert np.mean([(labels[k] != expected[k]).mean() for k in labels]) <= 0.02
    refused = cli("predict", str(out), str(images), "--backend", "torch", "--out", str(work / "x"))
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert refused.returncode == 2 and len(lines) == 1 and "runs as compiled" in lines[0]


def test_benchmark_end_to_end_table():
    from conftest import load_benchmark

    bench = load_benchmark("int8")
    rows = [
        {"model": "m", "case": "--precision int8", "run": "first run", "wall_s": 10.0,
         "first_png_s": 4.0, "pngs": 9, "returncode": 0, "backend": "backend: onnxruntime fp32",
         "notes": ["quantizing m to int8 once: ...", "warning: int8 not used: x | y", "other"]},
        {"model": "m", "case": "--backend auto", "run": "cached run", "wall_s": 5.0,
         "first_png_s": None, "pngs": 0, "returncode": 2, "backend": "",
         "notes": ["semseg: error: broken"]},
    ]  # fmt: skip
    lines = bench.render_e2e(rows, {"e2e_source": "3 images", "e2e_batch": 1})
    first, failed = lines[-2], lines[-1]
    # 3 images (9 PNGs): the 2 after the first took (10 - 4) / 2 = 3 s each
    assert "| first run | 10.0 | 4.0 | 3.000 | backend: onnxruntime fp32 |" in first
    assert "quantizing m to int8 once" in first and "x / y" in first and "other" not in first
    assert "exit 2: semseg: error: broken" in failed


def test_serve_quantizes_on_its_calibration_data(work: Path, images: Path):
    from semseg.serve.app import create_app

    served = tiny_checkpoint(work / "served.ckpt", model_name="fcn16s")
    lines: list[str] = []
    app = create_app(
        served,
        backend=BackendOptions("auto", precision="int8", threads=1),
        calibration_data=images,
        warmup=False,
        announce=lines.append,
    )
    assert app.state.service.info.backend_detail.startswith("onnxruntime int8")
    assert any("calibration on 4 image(s) of the data given" in line for line in lines), lines
    # without --calibration-data the cached model serves; for a new model: fp32, said so
    again = create_app(served, backend=BackendOptions("auto", precision="int8"), warmup=False)
    assert again.state.service.info.backend_detail.startswith("onnxruntime int8")
    other = tiny_checkpoint(work / "other-served.ckpt", model_name="fcn32s")
    lines.clear()
    plain = create_app(
        other, backend=BackendOptions("auto", precision="int8"), warmup=False,
        announce=lines.append,
    )  # fmt: skip
    assert plain.state.service.info.backend_detail.startswith("onnxruntime fp32")
    assert any(line.startswith("warning: int8 not used: int8 needs calibration") for line in lines)


def test_auto_judges_int8_by_the_shared_guard_not_its_largest_change():
    """One pixel in ten thousand moved by 0.4 passes (the share is under 0.1%); one in a hundred
    fails, and so do too many changed labels; bf16 keeps its largest-change tolerance."""
    reference = torch.full((1, 2, 100, 100), 0.5)
    reference[:, 0] = 0.8
    reference[:, 1] = 0.2
    one_pixel = reference.clone()
    one_pixel[0, :, 0, 0] = torch.tensor([0.4, 0.6])  # moved by 0.4, label flipped
    assert autotune.parity_problem(INT8, one_pixel, reference) == ""
    hundred = reference.clone()
    hundred[0, :, 0, :100] = torch.tensor([0.45, 0.55])[:, None]  # 1% moved by 0.35
    assert "0.25 on 1.000% of the pixels" in autotune.parity_problem(INT8, hundred, reference)
    flipped = reference.clone()
    flipped[0, :, :4, :] = torch.tensor([0.49, 0.51])[:, None, None]  # 4% of the labels
    # (this module's guard asks for 97% agreement: its tiny untrained models)
    assert "labels agree on 96.00%" in autotune.parity_problem(INT8, flipped, reference)
    assert "parity 0.4 > 0.02" in autotune.parity_problem(AOT_BF16, one_pixel, reference)

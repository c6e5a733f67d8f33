"""int8 post-training quantization (``semseg quantize``, :mod:`semseg.inference.quantize`).

A width-0.125 FCN-8s at 32 x 96 with seeded score layers is quantized on synthetic KITTI-layout
scenes; the int8 model must run in ONNX Runtime, hold QuantizeLinear/DequantizeLinear nodes,
carry the fp32 export's metadata plus ``precision=int8``, and give the fp32 model's labels on
almost every pixel (checked here by running both files directly in ONNX Runtime, independently
of the module's own comparison). No timing: speed is measured in benchmarks/int8.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import TINY_INPUT_SIZE, run_cli, tiny_checkpoint
from PIL import Image

from semseg.data.synthetic import generate_scene, write_kitti_layout
from semseg.data.transforms import image_to_tensor
from semseg.errors import SemsegError
from semseg.evaluation import evaluate_samples, labelled_samples
from semseg.inference.calibration_data import (
    ImageCalibrationReader,
    ImageSet,
    split_calibration,
    spread,
)
from semseg.inference.checkpoint import load_model
from semseg.inference.onnx_export import export_onnx, load_onnx_model, read_onnx_metadata
from semseg.inference.quantize import (
    compare_models,
    int8_parity_ok,
    quantize_checkpoint,
    quantize_onnx,
    vnni_warning,
)
from semseg.inference.runtimes import OnnxRuntimeBackend

INPUT_SIZE = TINY_INPUT_SIZE  # the tiny checkpoint's
MIN_AGREEMENT = 0.97  # of the pixels' labels, int8 against fp32, on the calibration images


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("quantize")


@pytest.fixture(scope="module")
def checkpoint(work: Path) -> Path:
    return tiny_checkpoint(work / "tiny.ckpt")


@pytest.fixture(scope="module")
def kitti(work: Path) -> Path:
    return write_kitti_layout(work / "kitti", num_train=6, height=60, width=200, with_calib=False)


@pytest.fixture(scope="module")
def scenes() -> list[np.ndarray]:
    return [generate_scene(seed, height=60, width=200).image for seed in range(5)]


@pytest.fixture(scope="module")
def fp32(work: Path, checkpoint: Path) -> Path:
    path = work / "tiny.onnx"
    export_onnx(load_model(checkpoint), path)
    return path


@pytest.fixture(scope="module")
def int8(work: Path, fp32: Path, scenes: list[np.ndarray]) -> Path:
    return quantize_onnx(fp32, work / "tiny.int8.onnx", scenes, method="minmax")


@pytest.fixture(autouse=True)
def private_cache(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEMSEG_CACHE_DIR", str(work / "cache"))


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def model_input(image: np.ndarray) -> np.ndarray:
    return image_to_tensor(image, *INPUT_SIZE).unsqueeze(0).numpy()


# --- choosing images, feeding the calibrator --------------------------------------------------


def test_spread_and_split_pick_disjoint_evenly_spaced_images():
    assert spread(3, 9) == [0, 4, 8]
    assert spread(5, 3) == [0, 1, 2]
    calibration, evaluation = split_calibration(10, 3, 2)
    assert calibration == [0, 4, 9]  # linspace(0, 9, 3) = 0, 4.5, 9 rounded half to even
    assert evaluation == [1, 8] and not set(calibration) & set(evaluation)
    # nothing left over: the evaluation uses the calibration images
    assert split_calibration(3, 5, 4) == ([0, 1, 2], [0, 1, 2])


def test_calibration_reader_feeds_predictor_preprocessing(scenes: list[np.ndarray]):
    reader = ImageCalibrationReader(scenes, INPUT_SIZE)
    assert len(reader) == len(scenes)
    batches = list(reader)
    assert len(batches) == len(scenes)
    for image, batch in zip(scenes, batches, strict=True):
        (array,) = batch.values()
        assert array.shape == (1, 3, *INPUT_SIZE) and array.dtype == np.float32
        # exactly what Predictor.predict_batch feeds the model (resize, then / 255)
        np.testing.assert_array_equal(array[0], image_to_tensor(image, *INPUT_SIZE).numpy())
    reader.set_range(1, 3)
    assert [b["image"][0, 0, 0, 0] for b in reader] == [
        batches[1]["image"][0, 0, 0, 0],
        batches[2]["image"][0, 0, 0, 0],
    ]
    reader.rewind()
    assert reader.get_next() is not None
    with pytest.raises(SemsegError, match="at least one image"):
        ImageCalibrationReader([], INPUT_SIZE)


# --- the int8 file ----------------------------------------------------------------------------


def test_int8_model_has_qdq_nodes_and_runs(int8: Path, fp32: Path):
    ops = [node.op_type for node in onnx.load(str(int8)).graph.node]
    assert ops.count("QuantizeLinear") > 10 and ops.count("DequantizeLinear") > 10
    # weights are stored as 8-bit integers, one scale per output channel
    initializers = onnx.load(str(int8)).graph.initializer
    int8_weights = [t for t in initializers if t.data_type == onnx.TensorProto.INT8]
    assert len(int8_weights) >= 10
    assert int8.stat().st_size < 0.5 * fp32.stat().st_size
    out = session(int8).run(
        None, {"image": np.random.default_rng(0).random((2, 3, 32, 96), np.float32)}
    )[0]
    assert out.shape == (2, 2, 32, 96) and np.isfinite(out).all()


def test_int8_labels_agree_with_fp32_on_calibration_images(
    int8: Path, fp32: Path, scenes: list[np.ndarray]
):
    quantized, reference = session(int8), session(fp32)
    agree = total = 0
    worst = 0.0
    for image in scenes:
        x = model_input(image)
        p_int8 = softmax(quantized.run(None, {"image": x})[0])
        p_fp32 = softmax(reference.run(None, {"image": x})[0])
        assert p_fp32.std() > 1e-3  # the model's answer varies over the image
        agree += int((p_int8.argmax(1) == p_fp32.argmax(1)).sum())
        total += p_fp32[:, 0].size
        worst = max(worst, float(np.abs(p_int8 - p_fp32).max()))
    assert agree / total >= MIN_AGREEMENT
    assert 0.0 < worst < 0.25  # quantized (not a copy of fp32), but close


def test_int8_metadata_extends_the_fp32_export(int8: Path, fp32: Path, checkpoint: Path):
    meta, base = read_onnx_metadata(int8), read_onnx_metadata(fp32)
    for key in ("model_name", "num_classes", "class_names", "input_size", "checkpoint_sha256"):
        assert meta[key] == base[key]
    assert len(meta["checkpoint_sha256"]) == 64
    assert meta["precision"] == "int8" and "precision" not in base
    assert meta["calibration"] == "minmax" and meta["calibration_images"] == "5"
    assert json.loads(meta["fp32_nodes"]) == []
    loaded = load_onnx_model(int8)  # what `semseg predict model.int8.onnx` loads
    assert loaded.input_size == INPUT_SIZE and loaded.class_names == ["not road", "road"]
    assert OnnxRuntimeBackend(int8, threads=1).describe().startswith("onnxruntime int8")


def test_excluded_nodes_stay_fp32(work: Path, fp32: Path, scenes: list[np.ndarray]):
    model = onnx.load(str(fp32))
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    kept = [convs[0], convs[-1]]
    path = quantize_onnx(fp32, work / "kept.int8.onnx", scenes[:2], "minmax", exclude=kept)
    graph = onnx.load(str(path)).graph
    producers = {out: node for node in graph.node for out in node.output}
    for node in graph.node:
        if node.name in kept:  # its weight is a float initializer, not a dequantized int8 one
            weight = producers.get(node.input[1])
            assert weight is None or weight.op_type != "DequantizeLinear"
    assert json.loads(read_onnx_metadata(path)["fp32_nodes"]) == kept


# --- quality and parity ----------------------------------------------------------------------


def test_compare_models_matches_independent_scores(
    int8: Path, fp32: Path, kitti: Path, checkpoint: Path, monkeypatch: pytest.MonkeyPatch
):
    samples = labelled_samples(kitti)
    from semseg.data.kitti import read_sample

    pairs = [read_sample(s) for s in samples]
    images = ImageSet(
        [p[0] for p in pairs],
        [s.name for s in samples],
        [s.category for s in samples],
        [p[1] for p in pairs],
    )
    comparison = compare_models(fp32, int8, images, threads=1)
    # MaxF of each model from `semseg evaluate`'s own code path
    for path, score in ((fp32, comparison.fp32_score), (int8, comparison.int8_score)):
        loaded = load_onnx_model(path)
        results = evaluate_samples(
            loaded, samples, read_sample, backend=OnnxRuntimeBackend(path, threads=1)
        )
        assert score == pytest.approx(results["groups"]["all"]["max_f"], abs=1e-9)
    assert comparison.metric == "MaxF" and comparison.images == len(samples)
    assert comparison.label_agreement >= MIN_AGREEMENT
    assert 0.0 < comparison.mean_abs_prob_diff <= comparison.max_abs_prob_diff < 0.25
    # the share of pixels moved by more than the guard's limit, counted by hand at a limit
    # half the largest change (so that some pixels are over it)
    limit = comparison.max_abs_prob_diff / 2
    from semseg.inference.quantize import onnx_predictor

    moved = total = 0
    for image in images.images:
        (p_q,) = onnx_predictor(int8, 1).predict_batch([image])
        (p_f,) = onnx_predictor(fp32, 1).predict_batch([image])
        moved += int((np.abs(p_q - p_f).max(axis=0) > limit).sum())
        total += p_f[0].size
    from semseg.inference import quantize

    monkeypatch.setattr(quantize, "MAX_PROB_ERROR", limit)
    at_limit = compare_models(fp32, int8, images, threads=1)
    assert moved > 0 and at_limit.moved_share == pytest.approx(moved / total, abs=1e-12)
    assert comparison.moved_share == 0.0  # nothing moved by more than 0.25 (max above)


def test_guard_failure_on_hand_made_numbers():
    from semseg.inference.quantize import guard_failure

    assert guard_failure(0.995, 0.0005) == ""  # 99.5% agree, 0.05% of pixels moved > 0.25
    assert guard_failure(0.995, 0.001) == ""  # at the limit
    assert (
        guard_failure(0.995, 0.002)
    ) == "probabilities moved by more than 0.25 on 0.200% of the pixels (> 0.1%)"
    assert guard_failure(0.985, 0.0) == "labels agree on 98.50% of the pixels (< 99%)"
    assert guard_failure(0.985, 0.0, min_agreement=0.98) == ""
    assert guard_failure(0.995, 0.002, max_moved_share=0.01) == ""


def test_parity_guard_accepts_its_own_model_and_refuses_others(
    work: Path, int8: Path, fp32: Path, scenes: list[np.ndarray]
):
    # this untrained model leaves most pixels near p = 0.5, so its labels flip more readily than a
    # trained model's (the default guard is set from those): the guard at this test's threshold
    parity = int8_parity_ok(int8, fp32, scenes[:2], min_agreement=MIN_AGREEMENT, threads=1)
    assert parity.ok, parity.reason
    assert parity.comparison is not None and parity.comparison.images == 2
    # a stricter guard than the model meets
    strict = int8_parity_ok(int8, fp32, scenes[:2], min_agreement=1.01, threads=1)
    assert not strict.ok and "labels agree" in strict.reason
    # an fp32 file in the int8 slot
    assert "not an int8 model" in int8_parity_ok(fp32, fp32, scenes[:1]).reason
    # quantized for another class table / size / checkpoint
    for key, value in (
        ("class_names", json.dumps(["sky", "road"])),
        ("input_size", json.dumps([64, 192])),
        ("checkpoint_sha256", "0" * 64),
    ):
        proto = onnx.load(str(int8))
        for entry in proto.metadata_props:
            if entry.key == key:
                entry.value = value
        other = work / f"other-{key}.onnx"
        onnx.save(proto, str(other))
        parity = int8_parity_ok(other, fp32, scenes[:1])
        assert not parity.ok and parity.comparison is None
        assert (
            key if key != "checkpoint_sha256" else "another checkpoint"
        ) in parity.reason.replace("quantized from checkpoint", "another checkpoint")
    # missing and corrupt files: a reason, never an exception
    assert not int8_parity_ok(work / "missing.onnx", fp32, scenes[:1]).ok
    corrupt = work / "corrupt.onnx"
    corrupt.write_bytes(b"not a model")
    assert "not an ONNX model" in int8_parity_ok(corrupt, fp32, scenes[:1]).reason


def test_vnni_warning_only_on_x86_without_vnni():
    assert vnni_warning(frozenset({"sse4_2", "avx2"})) is not None
    assert vnni_warning(frozenset({"avx2", "avx512f", "avx512_vnni"})) is None
    assert vnni_warning(frozenset({"avx2", "avx_vnni"})) is None
    assert vnni_warning(frozenset()) is None  # unknown CPU: no guess
    assert vnni_warning(frozenset({"neon", "asimd"})) is None  # not x86


# --- end to end ------------------------------------------------------------------------------


def test_quantize_checkpoint_chooses_a_calibration_by_quality(
    work: Path, checkpoint: Path, kitti: Path
):
    out = work / "auto" / "model.int8.onnx"
    result = quantize_checkpoint(
        load_model(checkpoint), kitti, out, images=3, eval_images=3, threads=1
    )
    assert out.is_file() and result.out == out
    assert [t.method for t in result.trials] == ["minmax", "entropy", "percentile"]
    assert all(t.comparison is not None for t in result.trials)
    best = min(abs(t.comparison.score_diff) for t in result.trials)
    assert abs(result.chosen.comparison.score_diff) == best
    assert result.held_out and not set(result.calibration_images) & set(result.eval_images)
    assert result.qdq_nodes > 0
    meta = read_onnx_metadata(out)
    assert meta["calibration"] == result.chosen.method
    assert json.loads(meta["quality"])["metric"] == "MaxF"
    assert [p.name for p in out.parent.iterdir()] == ["model.int8.onnx"]  # no temp files left


def test_multiclass_data_is_scored_by_miou_and_unlabelled_data_by_agreement(work: Path):
    names = ("sky", "road", "car")
    checkpoint = tiny_checkpoint(work / "three.ckpt", names)
    folder = work / "three"
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for index in range(4):
        scene = generate_scene(20 + index, height=60, width=200)
        mask = np.where(scene.road, 1, 0).astype(np.uint8)
        mask[:10] = 0
        mask[40:50, 20:60] = 2
        Image.fromarray(scene.image).save(folder / "images" / f"s{index}.png")
        Image.fromarray(mask).save(folder / "masks" / f"s{index}.png")
    loaded = load_model(checkpoint)
    out = work / "three" / "three.int8.onnx"
    result = quantize_checkpoint(
        loaded, folder, out, images=2, eval_images=2, calibration="percentile", threads=1
    )
    comparison = result.chosen.comparison
    assert comparison.metric == "mIoU" and 0.0 <= comparison.fp32_score <= 100.0
    assert json.loads(read_onnx_metadata(out)["class_names"]) == list(names)
    # a plain folder of images: no labels, so agreement and probability error only
    plain = quantize_checkpoint(
        loaded,
        folder / "images",
        work / "three" / "plain.int8.onnx",
        images=2,
        eval_images=2,
        calibration="minmax",
        threads=1,
    )
    assert plain.chosen.comparison.metric == "" and plain.chosen.comparison.fp32_score is None
    assert plain.chosen.comparison.images == 2


def test_cli_quantize_then_predict(work: Path, checkpoint: Path, kitti: Path):
    out = work / "cli" / "tiny.int8.onnx"
    result = run_cli(
        "quantize",
        str(checkpoint),
        "--data",
        str(kitti),
        "--images",
        "3",
        "--eval-images",
        "2",
        "--calibration",
        "minmax",
        "--out",
        str(out),
        "--threads",
        "1",
    )
    assert result.returncode == 0, result.stderr
    assert out.is_file() and "MaxF" in result.stdout and "minmax (chosen)" in result.stdout
    image = work / "cli" / "scene.png"
    Image.fromarray(generate_scene(11, height=60, width=200).image).save(image)
    predicted = run_cli("predict", str(out), str(image), "--out", str(work / "cli" / "pred"))
    assert predicted.returncode == 0, predicted.stderr
    assert "backend: onnxruntime int8" in predicted.stderr
    assert (work / "cli" / "pred" / "label").is_dir()


def test_cli_refuses_bad_input(work: Path, checkpoint: Path, kitti: Path):
    out = work / "bad" / "m.int8.onnx"

    def fails(*args: str) -> str:
        result = run_cli("quantize", str(checkpoint), *args)
        assert result.returncode != 0
        assert result.stderr.strip().splitlines()[-1].startswith("semseg: error: ")
        assert "Traceback" not in result.stderr
        assert not out.exists()
        return result.stderr

    assert "--calibration" in fails("--data", str(kitti), "--calibration", "kl", "--out", str(out))
    assert "not found" in fails("--data", str(work / "nowhere"), "--out", str(out))
    assert "--out" in fails("--data", str(kitti), "--out", str(work / "bad" / "m.int8"))
    # data labelled with another class table than the model's
    folder = work / "folder"
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    scene = generate_scene(3, height=60, width=200)
    Image.fromarray(scene.image).save(folder / "images" / "a.png")
    Image.fromarray(scene.road.astype(np.uint8) * 2).save(folder / "masks" / "a.png")
    table = work / "other_classes.yaml"  # beside the data, so the folder has no table of its own
    table.write_text(
        "classes:\n  - {name: sky, color: [0, 0, 255]}\n  - {name: road, color: [255, 0, 255]}\n"
    )
    assert "sky" in fails("--data", str(folder), "--class-table", str(table), "--out", str(out))
    # index masks with a class the model does not have
    assert "class index 2" in fails("--data", str(folder), "--out", str(out))

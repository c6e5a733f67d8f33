"""``semseg quantize``: post-training static int8 quantization of a checkpoint's ONNX export.

The quantizer is ONNX Runtime's maintained one (``onnxruntime.quantization.quantize_static``):
QDQ format (QuantizeLinear / DequantizeLinear pairs around each quantized operator, which ONNX
Runtime's CPU provider fuses into integer kernels), unsigned 8-bit activations and signed 8-bit
weights quantized per output channel (U8S8: the combination ONNX Runtime recommends for x86
CPUs, whose VNNI instructions multiply u8 by s8 without saturation). Before quantizing, the fp32
export goes through ``quant_pre_process`` (ONNX shape inference and ONNX Runtime's graph
optimizations: constant folding turns the exported biases into initializers, which the
quantizer needs to fuse each bias into its convolution; measured on FCN-8s/VGG16 at 160 x 576,
the int8 model runs 2.3x faster with it than without).

Calibration (:class:`ImageCalibrationReader`) runs the fp32 model on N images of the user's data,
each resized to the model's input size exactly as :class:`semseg.inference.predictor.Predictor`
preprocesses it (:func:`semseg.data.transforms.image_to_tensor`), one image at a time. The ranges
come from one of three methods (:data:`CALIBRATIONS`): ``minmax`` (the observed range), ``entropy``
(the range minimising the KL divergence between the fp32 and the quantized histogram, TensorRT's
method) or ``percentile`` (the 99.999th percentile of |x|). ``auto`` tries each and keeps the one
whose model scores closest to fp32 on held-out images of the same data (:func:`compare_models`).

Quality (:class:`Comparison`): MaxF of the positive class (binary models, KITTI devkit metric
from :mod:`semseg.metrics`) or mean IoU (multi-class) of int8 and fp32 on the evaluation images,
the share of pixels whose argmax label agrees, and the largest and mean absolute difference of
the softmax probabilities, all at each image's full resolution as ``semseg predict`` computes
them. :func:`int8_parity_ok` is the guard a backend chooser applies before it runs an int8 model
instead of fp32: same checkpoint, classes and input size, label agreement at least
:data:`MIN_LABEL_AGREEMENT`, and at most :data:`MAX_MOVED_SHARE` of the pixels with a
probability moved by more than :data:`MAX_PROB_ERROR`.

The int8 file carries the fp32 export's ``metadata_props`` (checkpoint sha256, input size,
class names, ...) plus ``precision=int8``, the calibration method and image count, the nodes kept
in fp32 and the measured quality; ``semseg predict model.int8.onnx`` runs it with ONNX Runtime.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from semseg.errors import SemsegError
from semseg.inference.calibration_data import (
    ImageCalibrationReader,
    ImageSet,
    check_input_size,
    index_data,
    read_image_set,
    split_calibration,
)
from semseg.inference.checkpoint import LoadedModel
from semseg.io import first_line

CALIBRATIONS = ("minmax", "entropy", "percentile")
CALIBRATION_CHOICES = ("auto", *CALIBRATIONS)
DEFAULT_IMAGES = 16
DEFAULT_EVAL_IMAGES = 16
MIN_LABEL_AGREEMENT = 0.99
"""Smallest share of pixels whose int8 argmax label equals fp32's that :func:`int8_parity_ok`
accepts."""
MAX_PROB_ERROR = 0.25
"""A pixel whose softmax probability of any class moves by more than this (|p_int8 - p_fp32|)
counts as moved; int8 moves a few pixels' probabilities by far more than bf16 does (whose
tolerance is 0.02)."""
MAX_MOVED_SHARE = 0.001
"""Largest share of the pixels moved by more than :data:`MAX_PROB_ERROR` that
:func:`int8_parity_ok` accepts. A share, not the single largest change: the largest of a
million pixels' changes grows with the number of pixels checked, so a guard on it refused more
often the more calibration images a user gave (a VGG16 at 94 MaxF whose int8 labels agree on
99.4% of the pixels moved its worst pixel by 0.33)."""
GUARD = f"labels >= {MIN_LABEL_AGREEMENT:g}, moved > {MAX_PROB_ERROR:g} on <= {MAX_MOVED_SHARE:g}"
"""The guard's thresholds, part of the key of every cached int8 model: a verdict reached under
other thresholds is not reused."""
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
"""/proc/cpuinfo flags of x86 CPUs with 8-bit dot-product instructions."""
COMPARED_KEYS = ("num_classes", "class_names", "input_size")


# ---------------------------------------------------------------------------------------------
# The machine


def vnni_supported(flags: frozenset[str] | None = None) -> bool:
    """Whether this CPU has 8-bit dot-product instructions (AVX512-VNNI, AVX-VNNI or AMX-INT8).

    Unknown (no /proc/cpuinfo, or not x86) counts as supported: no warning is better than a
    wrong one."""
    if flags is None:
        from semseg.inference.machine import cpu_flags

        flags = cpu_flags()
    if not flags or not ({"avx2", "avx512f", "sse4_2"} & flags):
        return True
    return bool(VNNI_FLAGS & flags)


def vnni_warning(flags: frozenset[str] | None = None) -> str | None:
    """A one-line warning where int8 inference is likely slower than fp32 on this CPU."""
    if vnni_supported(flags):
        return None
    return (
        "this CPU has no AVX512-VNNI, AVX-VNNI or AMX-INT8 instructions: the int8 model runs, "
        "but may be no faster (or slower) than fp32 here"
    )


# ---------------------------------------------------------------------------------------------
# Images of the user's data


def read_metadata(path: str | Path) -> dict[str, str]:
    from semseg.inference.onnx_export import read_onnx_metadata

    return read_onnx_metadata(path)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence the quantizer's progress prints (stdout) and advice (root logger warnings)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def preprocess(src: Path, dst: Path) -> bool:
    """``quant_pre_process`` (shape inference + ONNX Runtime graph optimizations) into ``dst``.

    Symbolic shape inference is skipped: it cannot resolve the export's dynamic padding, and the
    quantizer needs only ONNX's own shape inference. Returns False (``dst`` not written) where
    pre-processing fails; the raw export is then quantized as it is."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        with quiet():
            quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
    except Exception:
        dst.unlink(missing_ok=True)
        return False
    return dst.is_file()


def quantize_onnx(
    fp32: str | Path,
    out: str | Path,
    images: Sequence[np.ndarray],
    method: str = "minmax",
    exclude: Sequence[str] = (),
    metadata: dict[str, str] | None = None,
    preprocessed: str | Path | None = None,
) -> Path:
    """Quantize the fp32 ONNX file ``fp32`` with ``images`` as calibration data into ``out``.

    ``exclude``: names of nodes kept in fp32. ``preprocessed``: ``fp32`` already run through
    :func:`preprocess` (saves doing it again per method). The file at ``out`` (written atomically)
    carries ``fp32``'s metadata, then ``metadata``, then ``precision=int8`` and the settings."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if method not in CALIBRATIONS:
        raise SemsegError(
            f"--calibration must be one of {', '.join(CALIBRATION_CHOICES)}, got {method!r}"
        )
    fp32, out = Path(fp32), Path(out)
    meta = read_metadata(fp32)
    input_size = check_input_size(json.loads(meta.get("input_size", "[0, 0]")))
    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as work:
        source = Path(preprocessed) if preprocessed else Path(work) / "pre.onnx"
        pre_processed = bool(preprocessed) or preprocess(fp32, source)
        if not pre_processed:
            source = fp32
        temp = Path(work) / "int8.onnx"
        reader = ImageCalibrationReader(images, input_size)
        try:
            with quiet():
                quantize_static(
                    str(source),
                    str(temp),
                    reader,
                    quant_format=QuantFormat.QDQ,
                    per_channel=True,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    nodes_to_exclude=list(exclude),
                    calibrate_method=methods[method],
                    # one image's statistics at a time (ranges and histograms merge over slices)
                    extra_options={"CalibStridedMinMax": 1},
                )
        except Exception as error:
            raise SemsegError(
                f"onnxruntime cannot quantize {fp32.name}: {first_line(error)}"
            ) from error
        proto = onnx.load(str(temp))
        props = {**meta, **(metadata or {})}
        props.update(
            precision="int8",
            quantization=(
                "onnxruntime.quantization.quantize_static, QDQ, activations uint8 per tensor, "
                "weights int8 per channel" + (", quant_pre_process" if pre_processed else "")
            ),
            calibration=method,
            calibration_images=str(len(images)),
            fp32_nodes=json.dumps(list(exclude)),
        )
        del proto.metadata_props[:]
        for key, value in props.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        proto.producer_name = "semseg"
        onnx.save(proto, str(temp))
        del proto
        os.replace(temp, out)
    return out


def count_qdq(path: str | Path) -> dict[str, int]:
    """How many QuantizeLinear / DequantizeLinear nodes (and of each other type) a file holds."""
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def head_nodes(path: str | Path, num_classes: int) -> list[str]:
    """The classifier head of a segmentation graph: convolutions with ``num_classes`` outputs
    (the score layers) and transposed convolutions (the learned upsampling). Cheap to run in
    fp32, and where quantization error reaches the logits most directly."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    shapes = {init.name: tuple(init.dims) for init in model.graph.initializer}
    names = []
    for node in model.graph.node:
        if node.op_type == "ConvTranspose":
            names.append(node.name)
        elif node.op_type == "Conv" and len(node.input) > 1:
            weight = shapes.get(node.input[1])
            if weight and weight[0] == num_classes:
                names.append(node.name)
    return names


# ---------------------------------------------------------------------------------------------
# Quality and parity


@dataclass
class Comparison:
    """int8 against fp32 on the same images, at each image's full resolution."""

    images: int
    label_agreement: float
    max_abs_prob_diff: float
    mean_abs_prob_diff: float
    moved_share: float = 0.0  # share of the pixels with a probability moved > MAX_PROB_ERROR
    metric: str = ""  # "MaxF" (binary, positive class) or "mIoU"; "" where the data has no labels
    fp32_score: float | None = None
    int8_score: float | None = None

    @property
    def score_diff(self) -> float | None:
        if self.fp32_score is None or self.int8_score is None:
            return None
        return self.int8_score - self.fp32_score

    def summary(self) -> str:
        parts = []
        if self.metric:
            parts.append(
                f"{self.metric} {self.int8_score:.2f} vs fp32 {self.fp32_score:.2f} "
                f"({self.score_diff:+.2f})"
            )
        parts.append(f"labels agree {100 * self.label_agreement:.3f}%")
        parts.append(
            f"max |dp| {self.max_abs_prob_diff:.3g}, mean {self.mean_abs_prob_diff:.2g}, "
            f"> {MAX_PROB_ERROR:g} on {100 * self.moved_share:.3f}% of the pixels"
        )
        return "; ".join(parts) + f" on {self.images} image(s)"


def onnx_predictor(path: Path, threads: int | None = None):
    from semseg.inference.onnx_export import load_onnx_model
    from semseg.inference.predictor import Predictor
    from semseg.inference.runtimes import OnnxRuntimeBackend

    loaded = load_onnx_model(path)
    return Predictor(loaded, batch_size=1, backend=OnnxRuntimeBackend(path, threads))


def compare_models(
    fp32: str | Path,
    int8: str | Path,
    images: ImageSet,
    threads: int | None = None,
    reference: list[np.ndarray] | None = None,
) -> Comparison:
    """Score both ONNX models on ``images`` (MaxF / mIoU where labelled) and compare their
    outputs.

    ``reference``: fp32 probabilities of ``images`` computed before (from
    :func:`fp32_probabilities`), so that several int8 candidates are compared to one run."""
    if not len(images):
        raise SemsegError("no images to compare the int8 model on")
    if reference is None:
        reference = fp32_probabilities(fp32, images, threads)
    return compare_predictor(onnx_predictor(Path(int8), threads), images, reference)


@dataclass
class ParityCounts:
    """int8 against fp32 probabilities, added up image by image: what the parity guard and
    :class:`Comparison` are computed from, the same way on every int8 path."""

    pixels: int = 0
    agree: int = 0  # pixels whose argmax label is the same
    moved: int = 0  # pixels with a class probability moved by more than MAX_PROB_ERROR
    worst: float = 0.0  # the largest |p_int8 - p_fp32|
    error_sum: float = 0.0  # of |p_int8 - p_fp32| averaged over the classes of each pixel

    def add(
        self, p_int8: np.ndarray, p_fp32: np.ndarray, class_axis: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        """Count one image's (or batch's) probabilities; returns both argmax label maps."""
        labels_int8, labels_fp32 = p_int8.argmax(axis=class_axis), p_fp32.argmax(axis=class_axis)
        difference = np.abs(p_int8 - p_fp32)
        self.pixels += labels_fp32.size
        self.agree += int((labels_int8 == labels_fp32).sum())
        self.moved += int((difference.max(axis=class_axis) > MAX_PROB_ERROR).sum())
        self.worst = max(self.worst, float(difference.max()))
        self.error_sum += float(difference.mean()) * labels_fp32.size
        return labels_int8, labels_fp32

    @property
    def agreement(self) -> float:
        return self.agree / max(self.pixels, 1)

    @property
    def moved_share(self) -> float:
        return self.moved / max(self.pixels, 1)

    @property
    def mean_abs(self) -> float:
        return self.error_sum / max(self.pixels, 1)

    def failure(self) -> str:
        """:func:`guard_failure` of these counts at the guard's thresholds."""
        return guard_failure(self.agreement, self.moved_share)


def compare_predictor(predictor, images: ImageSet, reference: list[np.ndarray]) -> Comparison:
    """:func:`compare_models` for any int8 :class:`~semseg.inference.predictor.Predictor` (the
    onnxruntime int8 model, or torch's PT2E one) against fp32 probabilities of ``images``."""
    from semseg.evaluation import SpaceScores

    if not len(images):
        raise SemsegError("no images to compare the int8 model on")
    loaded = predictor.loaded
    scores = {key: SpaceScores(loaded.num_classes, loaded.positive_class) for key in "fq"}
    counts = ParityCounts()
    for index, image in enumerate(images.images):
        (p_int8,) = predictor.predict_batch([image])
        p_fp32 = reference[index]
        labels_int8, labels_fp32 = counts.add(p_int8, p_fp32)
        if images.masks is not None:
            mask, category = images.masks[index], images.categories[index]
            if category in (None, "all"):  # a folder dataset's images: one group of their own
                category = "images"
            positive = loaded.positive_class
            scores["f"].update(category, p_fp32[positive], labels_fp32, mask)
            scores["q"].update(category, p_int8[positive], labels_int8, mask)
    comparison = Comparison(
        len(images), counts.agreement, counts.worst, counts.mean_abs, counts.moved_share
    )
    if images.masks is not None:
        binary = loaded.num_classes == 2
        key = "max_f" if binary else "miou"
        comparison.metric = "MaxF" if binary else "mIoU"
        comparison.fp32_score = float(scores["f"].groups("perspective")["all"][key])
        comparison.int8_score = float(scores["q"].groups("perspective")["all"][key])
    return comparison


def fp32_probabilities(
    fp32: str | Path, images: ImageSet, threads: int | None = None
) -> list[np.ndarray]:
    predictor = onnx_predictor(Path(fp32), threads)
    return [predictor.predict_batch([image])[0] for image in images.images]


def mismatch(int8_meta: dict[str, str], fp32_meta: dict[str, str]) -> str | None:
    """Why an int8 file does not belong to an fp32 model (None where it does)."""
    if int8_meta.get("precision") != "int8":
        return "it is not an int8 model (no precision=int8 in its metadata)"
    for key in COMPARED_KEYS:
        if key in fp32_meta and int8_meta.get(key) != fp32_meta[key]:
            return f"its {key} is {int8_meta.get(key)}, the fp32 model's {fp32_meta[key]}"
    sha_int8, sha_fp32 = int8_meta.get("checkpoint_sha256"), fp32_meta.get("checkpoint_sha256")
    if sha_int8 and sha_fp32 and sha_int8 != sha_fp32:
        return f"it was quantized from checkpoint {sha_int8[:12]}, not {sha_fp32[:12]}"
    return None


@dataclass
class Parity:
    """The outcome of :func:`int8_parity_ok`."""

    ok: bool
    reason: str
    comparison: Comparison | None = None


def int8_parity_ok(
    int8: str | Path,
    fp32: str | Path,
    images: Sequence[np.ndarray],
    min_agreement: float = MIN_LABEL_AGREEMENT,
    max_moved_share: float = MAX_MOVED_SHARE,
    threads: int | None = None,
) -> Parity:
    """Whether the int8 model may stand in for the fp32 one: it was quantized from the same
    checkpoint for the same classes and input size, and on ``images`` (any size: resized as
    :class:`Predictor` does) its labels agree with fp32's on at least ``min_agreement`` of the
    pixels and at most ``max_moved_share`` of the pixels have a probability moved by more than
    :data:`MAX_PROB_ERROR`.

    Never raises for a model that does not fit: ``ok`` is False and ``reason`` says why (a
    missing or unreadable file, another checkpoint, class table or size, too large an error).
    """
    try:
        why = mismatch(read_metadata(int8), read_metadata(fp32))
    except SemsegError as error:
        return Parity(False, str(error))
    if why is not None:
        return Parity(False, f"{Path(int8).name}: {why}")
    if not images:
        return Parity(False, "no images to check the int8 model on")
    names = [f"image{i}" for i in range(len(images))]
    image_set = ImageSet(list(images), names, ["all"] * len(images))
    try:
        comparison = compare_models(fp32, int8, image_set, threads)
    except SemsegError as error:
        return Parity(False, str(error))
    failed = guard_failure(
        comparison.label_agreement, comparison.moved_share, min_agreement, max_moved_share
    )
    if failed:
        return Parity(False, failed, comparison)
    return Parity(True, comparison.summary(), comparison)


def guard_failure(
    agreement: float,
    moved_share: float,
    min_agreement: float | None = None,
    max_moved_share: float | None = None,
) -> str:
    """Why an int8 model with this label agreement and share of pixels moved by more than
    :data:`MAX_PROB_ERROR` fails the parity guard ("" where it passes); shared by every int8
    path. The thresholds default to :data:`MIN_LABEL_AGREEMENT` and :data:`MAX_MOVED_SHARE`."""
    min_agreement = MIN_LABEL_AGREEMENT if min_agreement is None else min_agreement
    max_moved_share = MAX_MOVED_SHARE if max_moved_share is None else max_moved_share
    if agreement < min_agreement:
        return f"labels agree on {100 * agreement:.2f}% of the pixels (< {100 * min_agreement:g}%)"
    if moved_share > max_moved_share:
        return (
            f"probabilities moved by more than {MAX_PROB_ERROR:g} on {100 * moved_share:.3f}% "
            f"of the pixels (> {100 * max_moved_share:g}%)"
        )
    return ""


# ---------------------------------------------------------------------------------------------
# A checkpoint, end to end


@dataclass
class Trial:
    """One calibration method (with one set of fp32 nodes) and how its model compared."""

    method: str
    fp32_nodes: list[str]
    comparison: Comparison | None = None
    seconds: float = 0.0
    note: str = ""

    def loss(self) -> tuple[float, float]:
        """What :func:`choose` minimises: metric lost (or, without labels, labels changed),
        then labels changed."""
        c = self.comparison
        if c is None:
            return (float("inf"), float("inf"))
        diff = c.score_diff
        changed = 1.0 - c.label_agreement
        return (abs(diff) if diff is not None else 100 * changed, changed)


@dataclass
class QuantizeResult:
    out: Path
    chosen: Trial
    trials: list[Trial] = field(default_factory=list)
    calibration_images: list[str] = field(default_factory=list)
    eval_images: list[str] = field(default_factory=list)
    held_out: bool = True
    seconds: float = 0.0
    qdq_nodes: int = 0
    warning: str | None = None


def choose(trials: Sequence[Trial]) -> Trial:
    done = [t for t in trials if t.comparison is not None]
    if not done:
        raise SemsegError(
            "no calibration method gave a model: "
            + "; ".join(f"{t.method}: {t.note}" for t in trials)
        )
    return min(done, key=Trial.loss)


def quantize_checkpoint(
    loaded: LoadedModel,
    data: Path,
    out: Path,
    images: int = DEFAULT_IMAGES,
    calibration: str = "auto",
    eval_images: int = DEFAULT_EVAL_IMAGES,
    class_table: str | None = None,
    fp32_nodes: Sequence[str] = (),
    keep_head: bool = False,
    threads: int | None = None,
    announce: Callable[[str], None] | None = None,
) -> QuantizeResult:
    """Export ``loaded`` to fp32 ONNX, quantize it with images of ``data``, compare, write ``out``.

    ``calibration``: a method of :data:`CALIBRATIONS`, or ``auto`` (each, keeping the one
    closest to fp32 on the evaluation images). ``fp32_nodes``: node names kept in fp32;
    ``keep_head``: keep the classifier head (:func:`head_nodes`) in fp32 too."""
    from semseg.inference.onnx_export import export_onnx

    say = announce or (lambda line: None)
    if calibration not in CALIBRATION_CHOICES:
        raise SemsegError(
            f"--calibration must be one of {', '.join(CALIBRATION_CHOICES)}, got {calibration!r}"
        )
    if images < 1:
        raise SemsegError(f"--images must be at least 1, got {images}")
    if out.suffix.lower() != ".onnx":
        raise SemsegError(f"--out must name an .onnx file, got {out}")
    started = time.perf_counter()
    items, reader = index_data(data, loaded, class_table)
    calibration_ids, eval_ids = split_calibration(len(items), images, eval_images)
    calibration_set = read_image_set(items, reader, calibration_ids)
    eval_set = read_image_set(items, reader, eval_ids)
    methods = list(CALIBRATIONS) if calibration == "auto" else [calibration]
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as work_dir:
        work = Path(work_dir)
        fp32 = work / "fp32.onnx"
        say(f"exporting {loaded.path.name} to fp32 ONNX")
        export_onnx(loaded, fp32, verify=True)
        pre = work / "pre.onnx"
        pre_path = pre if preprocess(fp32, pre) else None
        kept = list(fp32_nodes) + (
            head_nodes(pre_path or fp32, loaded.num_classes) if keep_head else []
        )
        say(f"fp32 reference on {len(eval_set)} evaluation image(s)")
        reference = fp32_probabilities(fp32, eval_set, threads)
        trials = []
        for method in methods:
            trial = Trial(method, kept)
            trials.append(trial)
            say(f"calibrating ({method}) on {len(calibration_set)} image(s)")
            tick = time.perf_counter()
            candidate = work / f"{method}.onnx"
            try:
                quantize_onnx(
                    fp32, candidate, calibration_set.images, method, kept, preprocessed=pre_path
                )
                trial.comparison = compare_models(fp32, candidate, eval_set, threads, reference)
            except SemsegError as error:
                trial.note = str(error)
            trial.seconds = time.perf_counter() - tick
        chosen = choose(trials)
        final = work / f"{chosen.method}.onnx"
        add_quality(final, chosen.comparison, eval_set, calibration_ids == eval_ids)
        qdq = count_qdq(final)
        os.replace(final, out)
    return QuantizeResult(
        out=out,
        chosen=chosen,
        trials=trials,
        calibration_images=calibration_set.names,
        eval_images=eval_set.names,
        held_out=calibration_ids != eval_ids,
        seconds=time.perf_counter() - started,
        qdq_nodes=qdq.get("QuantizeLinear", 0) + qdq.get("DequantizeLinear", 0),
        warning=vnni_warning(),
    )


def add_quality(path: Path, comparison: Comparison | None, images: ImageSet, same: bool) -> None:
    """Record the measured quality in the file's metadata (rewritten in place)."""
    import onnx

    if comparison is None:
        return
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key = "quality"
    entry.value = json.dumps(
        {
            **asdict(comparison),
            "eval_images": images.names,
            "eval_images_are_calibration_images": same,
        }
    )
    onnx.save(proto, str(path))

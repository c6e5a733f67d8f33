"""``semseg evaluate``: the KITTI devkit's perspective metrics at full ground-truth resolution,
or, for a multi-class model, SegNet's three scores and per-class IoU from one confusion matrix.

Per category (um, umm, uu) and over all images: MaxF, AP (11-point), PRE, REC, FPR, FNR at the
best of 256 thresholds, the best threshold, with counts pooled over the images of the group; plus
IoU of the positive class, mean IoU and pixel accuracy of the argmax labels.

``space="bev"`` scores the same things in the benchmark's bird's-eye view (:mod:`semseg.bev`):
the road probability, the argmax labels and the ground truth of each image are warped to the
400 x 800 BEV grid with the image's calibration (nearest-neighbour sampling, so the labels are
exactly the argmax of the warped probabilities); cells outside the image are outside the valid
area. Images without a calib file are skipped with one counted warning. ``space="both"`` returns
``{"spaces": {"perspective": {...}, "bev": {...}}}``; ``"perspective"`` (the default) keeps the
flat ``{"space": "perspective", "groups": ...}`` layout.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from semseg.bev import KITTI_BEV_GRID, LookupCache
from semseg.config import IGNORE_INDEX, DataConfig
from semseg.data.calib import KittiCalib, read_calib
from semseg.data.classes import check_class_names
from semseg.data.datamodule import MULTICLASS_KINDS, data_class_table, index_samples
from semseg.data.folder import is_split_layout
from semseg.data.layout import detect_kind
from semseg.data.multiclass import split_samples
from semseg.data.sample import Sample
from semseg.errors import SemsegError
from semseg.inference.checkpoint import LoadedModel, load_model
from semseg.inference.crf import CRFParams
from semseg.inference.options import BackendOptions
from semseg.inference.predictor import Predictor
from semseg.inference.runtimes import InferenceBackend
from semseg.metrics.kitti import KittiRoadEvaluator
from semseg.metrics.multiclass import (
    ConfusionMatrix,
    scores_from_confusion,
    write_multiclass_outputs,
)

if TYPE_CHECKING:
    from semseg.weak.mil import MILInference

SCORE_COLUMNS = ("max_f", "ap", "precision", "recall", "fpr", "fnr", "best_threshold")
SPACES = {"perspective": ("perspective",), "bev": ("bev",), "both": ("perspective", "bev")}
"""``--space`` choices and the spaces each one scores."""


@dataclass
class ConfusionCounts:
    """Pixel confusion matrix (rows: truth, columns: prediction) over valid pixels."""

    num_classes: int
    matrix: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, truth: np.ndarray, prediction: np.ndarray) -> None:
        valid = truth != IGNORE_INDEX
        index = truth[valid].astype(np.int64) * self.num_classes + prediction[valid]
        self.matrix += np.bincount(index, minlength=self.num_classes**2).reshape(self.matrix.shape)

    def iou(self) -> np.ndarray:
        """Per-class intersection over union, in percent (NaN for a class never seen)."""
        intersection = np.diag(self.matrix).astype(np.float64)
        union = self.matrix.sum(0) + self.matrix.sum(1) - intersection
        with np.errstate(invalid="ignore", divide="ignore"):
            return 100.0 * intersection / union

    def accuracy(self) -> float:
        total = self.matrix.sum()
        return float(100.0 * np.trace(self.matrix) / total) if total else float("nan")


def labelled_samples(data_root: Path, skip_bad: bool = False) -> list[Sample]:
    """Every labelled image under ``data_root`` (any layout :func:`detect_kind` recognises)."""
    return index_samples(data_config_for(data_root, None, skip_bad=skip_bad))


def split_samples_of(
    data_root: Path, split: str, checkpoint: Path, skip_bad: bool = False
) -> list[Sample]:
    """The labelled images ``--split`` names: ``all``; ``train``, ``val`` or ``test``, the
    data's own split folders (CamVid, VOC, Cityscapes); ``val`` on data without them, the
    validation images of the checkpoint's run."""
    data_config = data_config_for(data_root, None, skip_bad=skip_bad)
    if split == "all":
        return index_samples(data_config)
    if data_config.kind in MULTICLASS_KINDS and has_own_splits(data_config.kind, data_root):
        return split_samples(data_config.kind, data_root, split, skip_missing=skip_bad)
    if split != "val":
        raise SemsegError(
            f"--split {split}: {data_root} has no train/, val/ or test/ folders (use all or val)"
        )
    names = set(val_split_names(checkpoint))
    samples = [s for s in index_samples(data_config) if s.name in names]
    if not samples:
        raise SemsegError(f"none of the run's validation images are in {data_root}")
    return samples


def has_own_splits(kind: str, root: Path) -> bool:
    return kind in ("voc", "cityscapes") or is_split_layout(root)


def val_split_names(checkpoint: Path) -> list[str]:
    """The validation names of the run a checkpoint belongs to (``RUN/split.json``)."""
    from semseg.runs import RunDir

    run = RunDir.of_checkpoint(checkpoint)
    if run is None:
        raise SemsegError(f"--split val: no split.json in the run of {checkpoint}")
    return run.read_split()["val"]


class SpaceScores:
    """Devkit counts and the argmax confusion, per category, of one space (perspective or BEV)."""

    def __init__(self, num_classes: int, positive: int) -> None:
        self.num_classes = num_classes
        self.positive = positive
        self.road = KittiRoadEvaluator()
        self.confusion: dict[str, ConfusionCounts] = {}
        self.image_counts: dict[str, int] = {}

    def update(
        self,
        category: str | None,
        confidence: np.ndarray,
        labels: np.ndarray,
        mask: np.ndarray,
    ) -> None:
        """One image: positive-class confidence, argmax labels and class-index GT mask (an image
        without a category counts in the pooled ``"all"`` group only)."""
        valid = mask != IGNORE_INDEX
        self.road.update(category, confidence, mask == self.positive, valid)
        for group in (category, "all") if category else ("all",):
            self.confusion.setdefault(group, ConfusionCounts(self.num_classes))
            self.confusion[group].update(mask, labels)
            self.image_counts[group] = self.image_counts.get(group, 0) + 1

    def groups(self, space: str) -> dict[str, dict[str, float]]:
        try:
            scores = self.road.compute()
        except ValueError as error:
            where = "" if space == "perspective" else f" in {space}"
            raise SemsegError(f"cannot score{where}: {error}") from error
        groups = {}
        for group, group_scores in scores.items():
            iou = self.confusion[group].iou()
            values = {key: getattr(group_scores, key) for key in SCORE_COLUMNS}
            values["iou"] = float(iou[self.positive])
            values["miou"] = float(np.nanmean(iou))
            values["pixel_accuracy"] = self.confusion[group].accuracy()
            values["num_images"] = self.image_counts[group]
            groups[group] = values
        return {key: groups[key] for key in sorted(groups, key=lambda k: (k == "all", k))}


def bev_skip_message(skipped: int, total: int) -> str:
    return f"BEV: {skipped} of {total} images have no calib file and were skipped"


def evaluate_samples(
    loaded: LoadedModel,
    samples: Sequence[Sample],
    reader: Callable[[Sample], tuple[np.ndarray, np.ndarray]],
    batch_size: int = 4,
    on_progress: Callable[[int], None] | None = None,
    space: str = "perspective",
    warn: Callable[[str], None] | None = None,
    crf: CRFParams | None = None,
    skip_bad: bool = False,
    backend: str | InferenceBackend | None = None,
    mil: MILInference | None = None,
) -> dict[str, Any]:
    """Score ``samples`` (read by ``reader``) in ``space`` and return the results as plain data.

    ``mil``: a MIL model's inference (image-level prior, smoothing; ``semseg.weak.mil``),
    recorded under ``"mil"`` in the results.

    ``backend``: what runs the model (:mod:`semseg.inference.autotune`; default fp32 torch).

    ``crf``: refine each image's probabilities with the fully connected CRF before scoring
    (:mod:`semseg.inference.crf`); its settings are recorded under ``"crf"`` in the results.

    ``space`` is ``perspective``, ``bev`` or ``both`` (see the module docstring). For BEV,
    images without ``calib_path`` are skipped and ``warn`` (if given) hears how many once; a
    malformed calib file, or no calib file at all, is a SemsegError before any inference.

    An unreadable image or ground truth is an error, or with ``skip_bad`` left out, counted in
    ``"unreadable"`` and reported once through ``warn``.
    """
    if space not in SPACES:
        raise SemsegError(f"--space must be one of {', '.join(SPACES)}, got {space!r}")
    spaces = SPACES[space]
    calibs: dict[Path, KittiCalib] = {}
    skipped = 0
    if "bev" in spaces:
        with_calib = [s for s in samples if s.calib_path is not None]
        if not with_calib:
            raise SemsegError(
                f"BEV: none of the {len(samples)} images has a calib file "
                "(KITTI data_road training/calib/NAME.txt)"
            )
        calibs = {s.calib_path: read_calib(s.calib_path) for s in with_calib}
        skipped = len(samples) - len(with_calib)
        if skipped and warn is not None:
            warn(bev_skip_message(skipped, len(samples)))
    predictor = Predictor(loaded, batch_size=batch_size, crf=crf, backend=backend, mil=mil)
    positive = loaded.positive_class
    scores = {name: SpaceScores(loaded.num_classes, positive) for name in spaces}
    lookups = LookupCache()
    unreadable: list[str] = []
    used = dict.fromkeys(scores, 0)
    for start in range(0, len(samples), predictor.batch_size):
        chunk, pairs = read_chunk(
            samples[start : start + predictor.batch_size], reader, skip_bad, unreadable
        )
        if not chunk:
            continue
        probabilities = predictor.predict_batch([image for image, _ in pairs])
        for sample, (_, mask), probability in zip(chunk, pairs, probabilities, strict=True):
            labels = probability.argmax(axis=0)
            if "perspective" in scores:
                scores["perspective"].update(sample.category, probability[positive], labels, mask)
                used["perspective"] += 1
            if "bev" in scores and sample.calib_path is not None:
                used["bev"] += 1
                table = lookups.get(calibs[sample.calib_path], mask.shape)
                scores["bev"].update(
                    sample.category,
                    table.nearest(probability[positive]),
                    table.nearest(labels),
                    table.warp_mask(mask),
                )
        if on_progress is not None:
            on_progress(len(chunk))
    by_space: dict[str, dict[str, Any]] = {}
    for name, accumulated in scores.items():
        by_space[name] = {"space": name, "num_images": used[name], "groups": None}
        if name == "bev":
            by_space[name]["skipped_no_calib"] = skipped
            by_space[name]["grid"] = KITTI_BEV_GRID.describe()
            by_space[name]["sampling"] = "nearest"
        by_space[name]["groups"] = accumulated.groups(name)
    if unreadable and warn is not None:
        warn(f"skipped {len(unreadable)} unreadable image(s); first: {unreadable[0]}")
    header = {"checkpoint": str(loaded.path), "model": loaded.model_name, "unreadable": unreadable}
    if crf is not None:
        header["crf"] = dataclasses.asdict(crf)
    if mil is not None:
        header["mil"] = dataclasses.asdict(mil)
    if len(by_space) == 1:
        (only,) = by_space.values()
        return {**header, **only}
    return {**header, "num_images": len(samples) - len(unreadable), "spaces": by_space}


def evaluate_multiclass_samples(
    loaded: LoadedModel,
    samples: Sequence[Sample],
    reader: Callable[[Sample], tuple[np.ndarray, np.ndarray]],
    batch_size: int = 4,
    on_progress: Callable[[int], None] | None = None,
    warn: Callable[[str], None] | None = None,
    crf: CRFParams | None = None,
    skip_bad: bool = False,
    backend: str | InferenceBackend | None = None,
    mil: MILInference | None = None,
) -> dict[str, Any]:
    """Score a multi-class model on ``samples``: one confusion matrix over every image at full
    ground-truth resolution, void ignored (:mod:`semseg.metrics.multiclass`). ``mil``: as for
    :func:`evaluate_samples`.

    Results: ``groups.all`` holds ``miou``, ``mean_acc`` (class average), ``global_acc``,
    ``fwiou``, ``pixels`` and ``num_images``; ``per_class`` {name: {iou, accuracy}};
    ``confusion`` the raw matrix (rows: ground truth); ``classes`` and ``colours`` the palette.
    """
    predictor = Predictor(loaded, batch_size=batch_size, crf=crf, backend=backend, mil=mil)
    confusion = ConfusionMatrix(loaded.num_classes)
    unreadable: list[str] = []
    used = 0
    for start in range(0, len(samples), predictor.batch_size):
        chunk, pairs = read_chunk(
            samples[start : start + predictor.batch_size], reader, skip_bad, unreadable
        )
        if not chunk:
            continue
        probabilities = predictor.predict_batch([image for image, _ in pairs])
        for (_, mask), probability in zip(pairs, probabilities, strict=True):
            check_mask_classes(mask, loaded.num_classes, loaded.path)
            confusion.update_arrays(probability.argmax(axis=0), mask)
            used += 1
        if on_progress is not None:
            on_progress(len(chunk))
    if unreadable and warn is not None:
        warn(f"skipped {len(unreadable)} unreadable image(s); first: {unreadable[0]}")
    matrix = confusion.compute().numpy()
    if matrix.sum() == 0:
        raise SemsegError("nothing to score: no labelled (non-void) pixel in the images")
    scores = scores_from_confusion(matrix).as_dict(loaded.class_names)
    per_class = scores.pop("per_class")
    results: dict[str, Any] = {
        "checkpoint": str(loaded.path),
        "model": loaded.model_name,
        "task": "multiclass",
        "space": "perspective",
        "num_images": used,
        "classes": list(loaded.class_names),
        "colours": np.asarray(loaded.class_colours).tolist(),
        "groups": {"all": {**scores, "num_images": used}},
        "per_class": per_class,
        "confusion": matrix.tolist(),
        "unreadable": unreadable,
    }
    if crf is not None:
        results["crf"] = dataclasses.asdict(crf)
    if hasattr(loaded.model, "detect") and not unreadable:
        results.update(instance_scores(loaded, samples, reader, batch_size))
    if mil is not None:
        results["mil"] = dataclasses.asdict(mil)
    return results


# --- mask AP of an instance model (maskrcnn-semantic) ------------------------------------------

MASK_AP_MIN_AREA = 20  # pixels of a ground-truth instance at the ground truth's resolution


def instance_scores(
    loaded: LoadedModel,
    samples: Sequence[Sample],
    reader: Callable[[Sample], tuple[np.ndarray, np.ndarray]],
    batch_size: int = 4,
) -> dict[str, Any]:
    """Mask AP (:mod:`semseg.metrics.mask_ap`) of a model with ``detect`` and ``things`` on
    ``samples``: ground-truth instances derived from each mask at full resolution as ``semseg
    derive --to instances`` does (:data:`MASK_AP_MIN_AREA`), detections at the training size
    with their mask probabilities resized bilinearly to the mask's size and thresholded at 0.5.
    Returns ``{"mask_ap": {...} or None, "mask_ap_note": str}``."""
    import torch
    import torch.nn.functional as F

    from semseg.data.transforms import image_to_tensor
    from semseg.metrics.mask_ap import INSTALL_HINT, MaskAP, has_pycocotools
    from semseg.weak.derive import instances_from_mask

    model: Any = loaded.model
    if not has_pycocotools():
        return {"mask_ap": None, "mask_ap_note": f"mask AP needs pycocotools: {INSTALL_HINT}"}
    meter = MaskAP(loaded.class_names, model.things)
    height, width = loaded.input_size
    step = max(1, batch_size)
    for start in range(0, len(samples), step):
        pairs = [reader(sample) for sample in samples[start : start + step]]
        batch = torch.stack([image_to_tensor(image, height, width) for image, _ in pairs])
        detections, _ = model.detect(batch)
        for (_, truth), detection in zip(pairs, detections, strict=True):
            probabilities = detection["masks"].float()
            if len(probabilities):
                probabilities = F.interpolate(
                    probabilities[:, None], size=truth.shape, mode="bilinear", align_corners=False
                )[:, 0]
            masks = (probabilities >= 0.5).cpu().numpy().reshape(-1, *truth.shape)
            found = instances_from_mask(truth, model.things, MASK_AP_MIN_AREA)
            meter.update(
                truth.shape,
                [(instance.label, instance.mask) for instance in found],
                masks,
                detection["scores"].cpu().numpy(),
                detection["labels"].cpu().numpy(),
            )
    things = ", ".join(loaded.class_names[t] for t in model.things)
    return {
        "mask_ap": meter.compute(),
        "mask_ap_note": f"COCO segm AP on instances derived from the masks (8-connected "
        f"components of {things}, at least {MASK_AP_MIN_AREA} pixels)",
    }


def check_mask_classes(mask: np.ndarray, num_classes: int, checkpoint: Path) -> None:
    """A ground-truth id the model cannot predict means the data and model do not match."""
    labelled = mask[mask != IGNORE_INDEX]
    if labelled.size and int(labelled.max()) >= num_classes:
        raise SemsegError(
            f"ground truth holds class id {int(labelled.max())} but {checkpoint} predicts "
            f"{num_classes} classes"
        )


def write_multiclass_figures(results: dict[str, Any], out_dir: Path) -> None:
    """Confusion matrix (row-normalised), per-class IoU bars and the per-class table."""
    write_multiclass_outputs(
        out_dir,
        np.asarray(results["confusion"], dtype=np.int64),
        results["classes"],
        colours=np.asarray(results["colours"], dtype=np.uint8),
        title=f"{results['model']} ({results.get('split', '')})",
    )


def read_chunk(
    chunk: Sequence[Sample],
    reader: Callable[[Sample], tuple[np.ndarray, np.ndarray]],
    skip_bad: bool,
    unreadable: list[str],
) -> tuple[list[Sample], list[tuple[np.ndarray, np.ndarray]]]:
    """Read a batch of samples; with ``skip_bad`` unreadable ones are left out and noted."""
    kept, pairs = [], []
    for sample in chunk:
        try:
            pairs.append(reader(sample))
        except SemsegError as error:
            if not skip_bad:
                raise
            unreadable.append(str(error))
            continue
        kept.append(sample)
    return kept, pairs


def check_model_fits_data(loaded: LoadedModel, data_config: DataConfig) -> None:
    """Refuse a model whose classes cannot be scored on the data: KITTI road has 2; a dataset
    with a class table needs a model trained with the same class names, in the same order."""
    if data_config.kind == "kitti":
        if loaded.num_classes != 2:
            raise SemsegError(
                f"{loaded.path} predicts {loaded.num_classes} classes; KITTI road has 2"
            )
        return
    table = data_class_table(data_config)
    placeholders = [f"class{index}" for index in range(loaded.num_classes)]
    if table is not None and loaded.class_names != placeholders:
        check_class_names(table.names, loaded.class_names, loaded.path)


def data_config_for(data_root: Path, class_table: str | None, skip_bad: bool = False) -> DataConfig:
    """The data section for scoring the dataset at ``data_root`` (kind from its layout)."""
    return DataConfig(
        kind=detect_kind(data_root), root=str(data_root), class_table=class_table, skip_bad=skip_bad
    )


def evaluate_checkpoint(
    checkpoint: str | Path,
    data: str | Path,
    *,
    split: str = "all",
    space: str = "perspective",
    batch_size: int = 4,
    class_table: str | None = None,
    skip_bad: bool = False,
    crf: CRFParams | None = None,
    backend: BackendOptions | None = None,
    on_progress: Callable[[int], None] | None = None,
    warn: Callable[[str], None] | None = None,
    announce: Callable[[str], None] | None = None,
    on_total: Callable[[int], None] | None = None,
    image_prior: bool = False,
    smooth: str = "none",
) -> dict[str, Any]:
    """Score ``checkpoint`` on the labelled images of ``data`` (``split``: ``all``, or ``val``,
    the validation images of the checkpoint's run). ``backend``: default plain fp32 eager torch.
    ``image_prior`` / ``smooth`` (``none``, ``superpixels``, ``segments``): the inference of a
    MIL model trained from tags (:func:`semseg.weak.mil.inference_settings`)."""
    from semseg.data.datamodule import make_reader
    from semseg.inference.autotune import choose_backend
    from semseg.weak.mil import inference_settings

    checkpoint, data = Path(checkpoint), Path(data)
    loaded = load_model(checkpoint)
    mil = inference_settings(loaded.lse_r, image_prior, smooth, checkpoint, loaded.prior_tiles)
    data_config = data_config_for(data, class_table)
    check_model_fits_data(loaded, data_config)
    samples = split_samples_of(data, split, checkpoint, skip_bad=skip_bad)
    reader = make_reader(data_config, loaded.num_classes)
    options = backend or BackendOptions(backend="torch")
    image = first_readable_image(reader, samples) if options.backend == "auto" else None
    if on_total is not None:
        on_total(len(samples))
    engine, choice = choose_backend(
        loaded,
        options,
        image=image,
        images=lambda: calibration_images(reader, samples),
        batch_size=batch_size,
        announce=announce,
    )
    if announce is not None:
        announce(choice.line(engine))
    if loaded.is_multiclass:
        if space != "perspective":
            raise SemsegError(f"--space {space} scores road; {checkpoint} is a multi-class model")
        results = evaluate_multiclass_samples(
            loaded, samples, reader, batch_size, on_progress, warn, crf, skip_bad, engine, mil
        )
    else:
        results = evaluate_samples(
            loaded,
            samples,
            reader,
            batch_size,
            on_progress=on_progress,
            space=space,
            warn=warn,
            crf=crf,
            skip_bad=skip_bad,
            backend=engine,
            mil=mil,
        )
    results["split"] = split
    return results


def calibration_images(reader: Callable, samples: Sequence[Sample]) -> list[np.ndarray]:
    """int8 calibration images: up to 16 of the samples' images, spread over them."""
    from semseg.inference.calibration_data import spread
    from semseg.inference.int8_cache import CALIBRATION_IMAGES

    images = []
    for index in spread(CALIBRATION_IMAGES, len(samples)):
        try:
            images.append(reader(samples[index])[0])
        except Exception:  # reported where the sample is scored
            continue
    return images


def first_readable_image(reader: Callable, samples: Sequence[Sample]) -> np.ndarray | None:
    """The first sample's image, for ``--backend auto``'s calibration (None if unreadable)."""
    try:
        return reader(samples[0])[0] if samples else None
    except Exception:
        return None

"""Training from boxes (``data.boxes``): Simple Does It's recursive rounds and BoxSup.

Recursive rounds (``train.rounds: N``, Khoreva et al., CVPR 2017): round 0 trains on the given
labels (``data.labels``) or on pseudo-labels made from the boxes by ``train.round_method``; after
each round the network predicts the training images, the prediction is reset by the boxes
(:func:`semseg.weak.recursive.reset_round_labels`: outside every box background, or ignored where
the class table has none; a box whose segment covers less than half of it gets its round-0 labels
back), optionally refined by the dense CRF (``train.round_crf``), and the next round trains on the
result from scratch. The run folder holds every round::

    rounds/config.yaml              the configuration the rounds were started with
    rounds/round_K/labels/NAME.png  round K's training labels (255 = ignore)
    rounds/round_K/quality.json     their quality against the ground truth (where masks exist)
    rounds/round_K/run/             round K's own run folder (every round but the last)
    rounds/summary.json             every round's label quality and validation scores

and the last round is trained in the run folder itself, so its ``checkpoints/best.ckpt`` and
``eval_val.json`` are the result. ``train.max_time_s`` is the budget of all rounds together
(each gets an equal share).

BoxSup (``train.supervision: boxsup``, Dai, He & Sun, ICCV 2015): before every epoch, with the
network fixed, each box takes one of its candidate segments (:mod:`semseg.weak.segments`, computed
once and kept in ``boxsup/candidates/``) drawn among the 5 cheapest by
``(1 - IoU) + lambda * cross-entropy`` (:mod:`semseg.weak.boxsup`, ``train.boxsup_lambda``, seeded
per epoch); the epoch trains on the labels so made. The first epoch's choice has no network to ask
(uniform probabilities: the overlap alone decides). Each epoch's labels are scored against the
ground truth: a line in ``train.log`` and ``boxsup/epoch_EEE.json``; ``boxsup/labels/`` holds the
latest labels.

Every file is written atomically; a killed run continues with ``--resume RUN`` (finished rounds
and their labels are kept, the round in progress resumes from its last checkpoint).
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import Callback

from semseg.config import Config, load_config, resolve_config, save_config
from semseg.data.datamodule import (
    SegmentationDataModule,
    check_given_split,
    data_split,
    index_samples,
)
from semseg.data.labels import read_label_png
from semseg.data.sample import Sample
from semseg.errors import SemsegError
from semseg.io import atomic_open, write_json_atomic, write_png_atomic
from semseg.runs import RUN_DIR_ENV, RunDir, is_loadable, is_rank_zero, run_groups
from semseg.training import Prepare, _train_in, append_line, prepare_data, with_data_classes
from semseg.weak.boxes import Box, ImageBoxes, read_boxes
from semseg.weak.jobs import BoxData, open_box_data
from semseg.weak.quality import QualityMeter
from semseg.weak.segments import Candidate

ROUNDS = "rounds"
BOXSUP = "boxsup"
QUALITY_FILE = "quality.json"
RECIPE_FILE = "config.yaml"  # the configuration the rounds (or BoxSup) started with


# --- the training images and their boxes -------------------------------------------------------


@dataclass
class BoxedImages:
    """The run's training images that have boxes, with the dataset's class table."""

    data: BoxData
    samples: list[Sample]
    boxes: dict[str, ImageBoxes]
    skipped: dict[str, str]

    def image(self, sample: Sample) -> np.ndarray:
        image = self.data.image(sample)
        annotation = self.boxes[sample.name]
        if (annotation.width, annotation.height) != (image.shape[1], image.shape[0]):
            raise SemsegError(
                f"{sample.image_path}: the boxes are for a {annotation.width}x"
                f"{annotation.height} image but it is {image.shape[1]}x{image.shape[0]}"
            )
        return image

    def quality_meter(self) -> QualityMeter:
        return QualityMeter(self.data.names, self.data.road_class)


def boxed_training_images(config: Config, train_names: Sequence[str]) -> BoxedImages:
    """The training images of ``train_names`` and their boxes from ``data.boxes``."""
    assert config.data.root is not None and config.data.boxes is not None
    data = open_box_data(config.data.root, config.data.class_table)
    if data.table.num_classes != config.model.num_classes:
        raise SemsegError(
            f"the boxes' class table has {data.table.num_classes} classes, the model "
            f"{config.model.num_classes}"
        )
    by_name = {sample.name: sample for sample in data.samples}
    names = [name for name in train_names if name in by_name]
    box_set = read_boxes(
        config.data.boxes, data.names, data.background, names, config.data.skip_bad
    )
    samples = [by_name[name] for name in names if name in box_set.images]
    if not samples:
        raise SemsegError(f"--boxes {config.data.boxes}: no training image has boxes")
    return BoxedImages(data, samples, box_set.images, box_set.skipped)


def run_split(config: Config, run: RunDir) -> dict[str, list[str]]:
    """The run's train/val split (written once, shared by every round)."""
    if run.split.is_file():
        return run.read_split()
    split = data_split(config.data, index_samples(config.data), config.train.seed)
    run.write_split(split)
    return split


# --- entry point ---------------------------------------------------------------------------------


def train_from_boxes(
    config: Config, resume: str | Path | None = None, overwrite: bool = False
) -> Path:
    """Recursive rounds or BoxSup (see module docstring); returns the run folder."""
    if not is_rank_zero():
        raise SemsegError("recursive rounds and BoxSup train in one process: use --devices 1")
    run = RunDir.of_resume(resume) if resume else RunDir.for_config(config)
    if resume:
        config = recipe_of(run, config)
    synthetic = config.data.kind == "synthetic"
    config = with_data_classes(resolve_config(config, run.path))
    check_given_split(config.data)
    require_extras(config)
    if config.train.supervision == "boxsup" and config.data.num_workers > 0:
        raise SemsegError(
            "--supervision boxsup changes the labels in memory before every epoch: "
            "set data.num_workers=0"
        )
    if not resume:
        run.check_new(overwrite)
    with run.lock():
        if not resume:
            run.create(overwrite)
        run.remove_temp_files()
        os.environ[RUN_DIR_ENV] = str(run.path.resolve())
        prepare_data(config, synthetic)
        if config.train.supervision == "boxsup":
            train_boxsup(config, run, bool(resume))
        else:
            train_rounds(config, run, bool(resume))
    return run.path


def recipe_of(run: RunDir, config: Config) -> Config:
    """On resume: the configuration the rounds (or BoxSup) started with."""
    for folder in (ROUNDS, BOXSUP):
        path = run / folder / RECIPE_FILE
        if path.is_file():
            return load_config(str(path))
    return config


def require_extras(config: Config) -> None:
    """Fail before training when a needed optional package is missing."""
    from semseg.inference.crf import require_backend
    from semseg.weak.extras import load_cv2, load_skimage_segmentation

    method = config.train.round_method
    if config.train.supervision == "boxsup" or (
        config.data.labels is None and method in ("candidates", "m-and-g")
    ):
        load_skimage_segmentation()
    if config.data.labels is None and method in ("grabcut", "grabcut-i", "m-and-g"):
        load_cv2()
    if config.train.round_crf:
        require_backend()


def fit(config: Config, run: RunDir, resume: bool, prepare: Prepare | None = None) -> None:
    """One training in ``run`` (held by the caller), resumed from its checkpoint if it has one."""
    L.seed_everything(config.train.seed, workers=True, verbose=False)
    _train_in(config, run, resume and is_loadable(run.last), False, prepare)


# --- recursive rounds ----------------------------------------------------------------------------


def round_dir(run: RunDir, index: int) -> Path:
    return run / ROUNDS / f"round_{index}"


def round_config(config: Config, labels: Path, rounds: int) -> Config:
    """One round's configuration: its labels and its share of the time budget."""
    result = copy.deepcopy(config)
    result.data.labels = str(labels)
    if result.train.max_time_s:
        result.train.max_time_s = result.train.max_time_s / rounds
    return result


def train_rounds(config: Config, run: RunDir, resume: bool) -> None:
    """Round 0 to ``train.rounds - 1`` (see module docstring)."""
    rounds = config.train.rounds
    save_config(config, run / ROUNDS / RECIPE_FILE)
    if not run.config.is_file():
        run.save_config(config)  # --resume finds the run before the last round starts
    split = run_split(config, run)
    images = boxed_training_images(config, split["train"])
    first = round_dir(run, 0)
    if not (first / QUALITY_FILE).is_file():
        write_first_labels(config, images, first)
    for index in range(rounds):
        folder = round_dir(run, index)
        labels_config = round_config(config, folder / "labels", rounds)
        if index == rounds - 1:
            fit(labels_config, run, resume)
            break
        sub = RunDir(folder / "run")
        if not sub.is_finished():
            labels_config.train.rounds = 1
            with sub.lock():
                started = sub.config.is_file()
                if not started:
                    sub.create(overwrite=True)
                    sub.write_split(split)
                fit(labels_config, sub, started)
        following = round_dir(run, index + 1)
        if not (following / QUALITY_FILE).is_file():
            write_next_labels(config, images, sub.best_checkpoint(), first, following)
    write_rounds_summary(run, rounds)


def write_rounds_summary(run: RunDir, rounds: int) -> None:
    """``rounds/summary.json``: each round's label quality and validation scores."""
    rows = []
    for index in range(rounds):
        folder = round_dir(run, index)
        labels = json.loads((folder / QUALITY_FILE).read_text()).get("quality")
        scored = RunDir(folder / "run") if index < rounds - 1 else run
        val = run_groups(scored.read_eval())["all"] if scored.is_finished() else None
        rows.append({"round": index, "label_quality": labels, "val": val})
    write_json_atomic(run / ROUNDS / "summary.json", rows)


def write_first_labels(config: Config, images: BoxedImages, folder: Path) -> None:
    """Round 0's labels: the given ``data.labels`` (checked and copied) or pseudo-labels."""
    from semseg.weak.pseudolabels import PseudoLabelParams, pseudo_label

    meter = images.quality_meter()
    given = Path(config.data.labels) if config.data.labels else None
    source = str(given) if given else config.train.round_method
    num_classes = images.data.table.num_classes
    written, skipped = 0, []
    for index, sample in enumerate(images.samples):
        image = images.image(sample)
        if given is not None:
            path = given / f"{sample.name}.png"
            if not path.is_file():
                if not config.data.skip_bad:
                    raise SemsegError(
                        f"training image {sample.name} has no label {path} "
                        "(--skip-bad skips such images)"
                    )
                skipped.append(sample.name)
                continue
            labels = read_label_png(path, num_classes, image.shape[:2])
        else:
            params = PseudoLabelParams(seed=config.train.seed + index)
            annotation = images.boxes[sample.name].boxes
            labels = pseudo_label(
                image, annotation, config.train.round_method, images.data.background, params
            )
        write_png_atomic(folder / "labels" / f"{sample.name}.png", labels)
        written += 1
        score(meter, images, sample, labels)
    finish_labels(folder, meter, {"round": 0, "source": source, "images": written,
                                  "skipped": skipped})  # fmt: skip


def write_next_labels(
    config: Config, images: BoxedImages, checkpoint: Path, first: Path, folder: Path
) -> None:
    """The next round's labels: the network's prediction reset by the boxes (and the CRF)."""
    from semseg.inference.checkpoint import load_model
    from semseg.inference.predictor import Predictor
    from semseg.weak.pseudolabels import refine_labels
    from semseg.weak.recursive import reset_round_labels

    predictor = Predictor(load_model(checkpoint), batch_size=config.train.batch_size)
    table, background = images.data.table, images.data.background
    meter = images.quality_meter()
    samples = [s for s in images.samples if (first / "labels" / f"{s.name}.png").is_file()]
    batch = max(1, config.train.batch_size)
    for start in range(0, len(samples), batch):
        chunk = samples[start : start + batch]
        pictures = [images.image(sample) for sample in chunk]
        for sample, image, probability in zip(
            chunk, pictures, predictor.predict(pictures), strict=True
        ):
            boxes = images.boxes[sample.name].boxes
            initial = read_label_png(
                first / "labels" / f"{sample.name}.png", table.num_classes, image.shape[:2]
            )
            prediction = probability.argmax(axis=0).astype(np.uint8)
            labels = reset_round_labels(prediction, boxes, initial, background)
            if config.train.round_crf:
                labels = refine_labels(image, labels, boxes, table.num_classes, background)
            write_png_atomic(folder / "labels" / f"{sample.name}.png", labels)
            score(meter, images, sample, labels)
    index = int(folder.name.rsplit("_", 1)[1])
    finish_labels(folder, meter, {"round": index, "source": str(checkpoint),
                                  "images": len(samples), "skipped": []})  # fmt: skip


def score(meter: QualityMeter, images: BoxedImages, sample: Sample, labels: np.ndarray) -> None:
    truth = images.data.truth(sample)
    if truth is not None:
        meter.update(labels, truth)


def finish_labels(folder: Path, meter: QualityMeter, summary: dict[str, Any]) -> None:
    """``quality.json``, written last: its presence marks the round's labels complete."""
    summary["quality"] = meter.result() if meter.images else None
    write_json_atomic(folder / QUALITY_FILE, summary)


# --- BoxSup --------------------------------------------------------------------------------------


def train_boxsup(config: Config, run: RunDir, resume: bool) -> None:
    """BoxSup's alternation in ``run`` (see module docstring)."""
    save_config(config, run / BOXSUP / RECIPE_FILE)
    split = run_split(config, run)
    images = boxed_training_images(config, split["train"])
    candidates = load_candidates(images, run / BOXSUP / "candidates")
    chooser = BoxSupChooser(config, run, images, candidates)
    fit(config, run, resume, prepare=chooser.prepare)


@dataclass(frozen=True)
class PackedCandidates:
    """One box's candidate segments with their masks bit-packed (8x smaller in memory)."""

    masks: np.ndarray  # (n, bytes) uint8: np.packbits of each (height * width) mask
    tight: np.ndarray  # (n, 4) int64: x0, y0, x1, y1 of each segment's tight box
    height: int
    width: int

    @classmethod
    def pack(cls, candidates: Sequence[Candidate], box: Box) -> PackedCandidates:
        flat = np.array([c.mask.ravel() for c in candidates], dtype=bool)
        flat = flat.reshape(len(candidates), box.height * box.width)
        tight = [[c.tight.x0, c.tight.y0, c.tight.x1, c.tight.y1] for c in candidates]
        return cls(
            np.packbits(flat, axis=1),
            np.array(tight, dtype=np.int64).reshape(-1, 4),
            box.height,
            box.width,
        )

    def unpack(self) -> list[Candidate]:
        size = self.height * self.width
        masks = np.unpackbits(self.masks, axis=1, count=size).astype(bool)
        return [
            Candidate(mask.reshape(self.height, self.width), Box(*map(int, tight), -1))
            for mask, tight in zip(masks, self.tight, strict=True)
        ]


def load_candidates(images: BoxedImages, folder: Path) -> dict[str, list[PackedCandidates]]:
    """Every box's candidate segments, computed once per image and kept in ``folder``."""
    from semseg.weak.segments import candidates_for_boxes

    result = {}
    for sample in images.samples:
        boxes = images.boxes[sample.name].boxes
        path = folder / f"{sample.name}.npz"
        packed = read_candidates(path, boxes)
        if packed is None:
            found = candidates_for_boxes(images.image(sample), boxes)
            packed = [PackedCandidates.pack(c, box) for c, box in zip(found, boxes, strict=True)]
            write_candidates(path, packed)
        result[sample.name] = packed
    return result


def write_candidates(path: Path, packed: Sequence[PackedCandidates]) -> None:
    arrays: dict[str, np.ndarray] = {
        "sizes": np.array([[p.height, p.width] for p in packed], dtype=np.int64).reshape(-1, 2)
    }
    for index, item in enumerate(packed):
        arrays[f"masks_{index}"], arrays[f"tight_{index}"] = item.masks, item.tight
    with atomic_open(path, "wb") as stream:
        np.savez_compressed(stream, **arrays)


def read_candidates(path: Path, boxes: Sequence[Box]) -> list[PackedCandidates] | None:
    """The cached candidates of ``boxes``, or None when there is no usable cache."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as arrays:
            sizes = arrays["sizes"].tolist()
            if sizes != [[box.height, box.width] for box in boxes]:
                return None
            return [
                PackedCandidates(arrays[f"masks_{i}"], arrays[f"tight_{i}"], box.height, box.width)
                for i, box in enumerate(boxes)
            ]
    except (OSError, ValueError, KeyError):
        return None


class BoxSupChooser(Callback):
    """Chooses the labels before each epoch (network fixed) and scores them."""

    def __init__(
        self,
        config: Config,
        run: RunDir,
        images: BoxedImages,
        candidates: dict[str, list[PackedCandidates]],
    ) -> None:
        self.config = config
        self.run = run
        self.images = images
        self.candidates = candidates
        self.folder = run / BOXSUP
        self._first: dict[str, Any] | None = None

    def prepare(
        self, config: Config, run: RunDir, datamodule: SegmentationDataModule
    ) -> list[Callback]:
        """The first epoch's labels (no network yet: uniform probabilities) into the data."""
        self.train_set = datamodule.train_set
        num_classes = self.images.data.table.num_classes

        def uniform(image: np.ndarray) -> np.ndarray:
            return np.full((num_classes, *image.shape[:2]), 1.0 / num_classes, np.float32)

        self._first = self.choose(1, uniform)
        return [self]

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if epoch == 1 and self._first is not None:
            summary = self._first
        else:
            training = pl_module.training
            try:
                summary = self.choose(epoch, self.network_probabilities(pl_module))
            finally:
                pl_module.train(training)  # the predictor switched the network to eval
        self._first = None
        if trainer.is_global_zero:
            write_json_atomic(self.folder / f"epoch_{epoch:03d}.json", summary)
            append_line(self.run.log, quality_line(epoch, trainer.max_epochs, summary))

    def network_probabilities(
        self, pl_module: L.LightningModule
    ) -> Callable[[np.ndarray], np.ndarray]:
        """The network's full-resolution softmax of an image (the network in eval mode)."""
        from semseg.inference.checkpoint import LoadedModel
        from semseg.inference.predictor import Predictor

        hparams = pl_module.hparams
        loaded = LoadedModel(
            model=pl_module.model,
            model_name=hparams.model_name,
            num_classes=hparams.num_classes,
            input_size=(self.config.data.height, self.config.data.width),
            positive_class=hparams.positive_class,
            class_names=list(self.images.data.names),
            path=self.run.path,
        )
        predictor = Predictor(loaded, batch_size=1, device=str(pl_module.device))

        def probabilities(image: np.ndarray) -> np.ndarray:
            return predictor.predict_batch([image])[0]

        return probabilities

    def choose(
        self, epoch: int, probabilities_of: Callable[[np.ndarray], np.ndarray]
    ) -> dict[str, Any]:
        """Every training image's labels for ``epoch``; returns the epoch's summary."""
        from semseg.weak.boxsup import TOP_K, boxsup_labels

        rng = np.random.default_rng([self.config.train.seed, epoch])
        meter = self.images.quality_meter()
        background = self.images.data.background
        chosen: dict[str, list[int]] = {}
        for index, sample in enumerate(self.train_set.samples):
            if sample.name not in self.candidates:
                continue
            image, _ = self.train_set.load(index)
            labels, picks = boxsup_labels(
                probabilities_of(image),
                self.images.boxes[sample.name].boxes,
                [packed.unpack() for packed in self.candidates[sample.name]],
                background,
                rng,
                lam=self.config.train.boxsup_lambda,
                top_k=TOP_K,
            )
            self.train_set.set_target(index, labels)
            write_png_atomic(self.folder / "labels" / f"{sample.name}.png", labels)
            score(meter, self.images, sample, labels)
            chosen[sample.name] = picks
        return {
            "epoch": epoch,
            "images": len(chosen),
            "lambda": self.config.train.boxsup_lambda,
            "quality": meter.result() if meter.images else None,
            "chosen": chosen,
        }


def quality_line(epoch: int, epochs: int | None, summary: dict[str, Any]) -> str:
    """The ``train.log`` line of an epoch's BoxSup labels."""
    quality = summary["quality"]
    stamp = datetime.now().isoformat(timespec="seconds")
    line = f"{stamp}  boxsup labels epoch {epoch}/{epochs}  images {summary['images']}"
    if quality is None:
        return line + "  (no ground truth to score them)"
    line += f"  label mIoU {quality['miou']:.2f}  coverage {quality['coverage']:.2f}"
    if quality.get("max_f") is not None:
        line += f"  label MaxF {quality['max_f']:.2f}  label IoU {quality['road_iou']:.2f}"
    return line


__all__ = ["BoxSupChooser", "boxed_training_images", "train_from_boxes"]

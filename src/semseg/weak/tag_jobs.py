"""The tag jobs end to end, for the command line to call.

* :func:`derive_tags_file` (``semseg derive --to tags``): image-level tags from a dataset's full
  masks, per image or per fixed crop, as CSV or JSON (:mod:`semseg.weak.tags`);
* :func:`write_cam_labels` (``semseg pseudo-labels --method cam``): a CAM classifier trained from
  the tags on a short budget (:mod:`semseg.weak.cam`), then one label PNG per tagged image
  (training ids, 255 = ignore; the format of the box pseudo-labels, so ``semseg train --labels
  DIR`` takes them) and the labels' quality against ground truth where masks exist.

Datasets are read as the box jobs read them (:func:`semseg.weak.jobs.open_box_data`): every split
of a folder dataset, KITTI Road's training images, VOC trainval, Cityscapes train and val.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from semseg.errors import SemsegError
from semseg.inference.crf import CRFParams, require_backend
from semseg.io import open_image, write_json_atomic
from semseg.runs import save_checkpoint_atomic
from semseg.weak.cam import CAMThresholds, cam_labels_for_image, write_label_png
from semseg.weak.jobs import QUALITY_FILE, BoxData, open_box_data
from semseg.weak.quality import QualityMeter
from semseg.weak.tag_task import TagDataset, TagTask
from semseg.weak.tags import (
    DEFAULT_MIN_FRAC,
    TagRecord,
    check_min_frac,
    derive_tags,
    image_tags,
    match_samples,
    parse_crop,
    read_tags,
    tag_counts,
    write_tags,
)

Progress = Callable[[int, int], None]
CAM_MODEL_FILE = "cam.pt"  # the trained classifier's state dict, beside the labels


# --- derive --to tags ----------------------------------------------------------------------------


def derive_tags_file(
    data_root: str | Path,
    out_file: str | Path,
    min_frac: float = DEFAULT_MIN_FRAC,
    crop: str | None = None,
    class_table: str | Path | None = None,
) -> dict[str, Any]:
    """Tags of every labelled image (or of each ``crop`` ``"HxW"`` of it), written to
    ``out_file`` (``.csv`` or ``.json``). Returns ``{"images", "records", "unlabelled",
    "per_class": {name: records carrying it}, "out"}``."""
    check_min_frac(min_frac)
    crop_size = parse_crop(crop) if crop else None
    if Path(out_file).suffix.lower() not in (".csv", ".json"):
        raise SemsegError(f"--out {out_file}: tags are written as .csv or .json")
    data = open_box_data(data_root, class_table)
    labelled = [s for s in data.samples if s.target_path is not None]
    if not labelled:
        raise SemsegError(f"{data_root}: no image has a mask to derive tags from")

    def read_mask(sample: Any) -> np.ndarray:
        truth = data.truth(sample)
        assert truth is not None
        return truth

    records = derive_tags(labelled, read_mask, data.names, min_frac, crop_size)
    meta = {"derived_from": str(data_root), "min_frac": min_frac, "crop": crop}
    write_tags(out_file, records, data.names, meta)
    return {
        "images": len(labelled),
        "records": len(records),
        "unlabelled": len(data.samples) - len(labelled),
        "per_class": tag_counts(records, data.names),
        "out": str(out_file),
    }


# --- CAM pseudo-labels ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CAMSchedule:
    """How the CAM classifier is trained: at most ``epochs`` passes over the tagged images (or
    crops) and at most ``max_time_s`` seconds (``clock`` ``cpu``: process CPU seconds divided
    by the torch threads, fair on a shared machine; ``wall``), Adam at ``lr``, batches of
    ``batch_size``, images resized to ``size`` (None: the first record's size), the registry
    ``encoder`` read at ``stride`` 16 or 32, from ``seed``."""

    epochs: int = 10
    max_time_s: float | None = 300.0
    clock: str = "cpu"
    batch_size: int = 8
    lr: float = 1e-3
    size: tuple[int, int] | None = None
    encoder: str = "resnet18"
    stride: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise SemsegError(f"--epochs must be at least 1, got {self.epochs}")
        if self.max_time_s is not None and not self.max_time_s > 0:
            raise SemsegError(f"--max-time must be positive, got {self.max_time_s}")
        if self.clock not in ("cpu", "wall"):
            raise SemsegError(f"clock must be cpu or wall, got {self.clock!r}")


class Budget:
    """Seconds spent since the start, on the wall clock or the CPU clock (see CAMSchedule)."""

    def __init__(self, clock: str) -> None:
        self.clock = clock
        self.threads = max(1, torch.get_num_threads())
        self.start = self.now()

    def now(self) -> float:
        if self.clock == "cpu":
            return time.process_time() / self.threads
        return time.monotonic()

    def elapsed(self) -> float:
        return self.now() - self.start


def record_size(record: TagRecord, image_path: Path) -> tuple[int, int]:
    """``(height, width)`` of a record: its crop's, or its image's."""
    if record.crop is not None:
        return record.crop.height, record.crop.width
    width, height = open_image(image_path).size
    return height, width


def train_cam(
    pairs: Sequence[tuple[TagRecord, Any]],
    class_names: Sequence[str],
    schedule: CAMSchedule | None = None,
) -> tuple[TagTask, dict[str, Any]]:
    """A CAM classifier (``TagTask(method="cam")``) trained from the tagged ``(record, sample)``
    pairs on ``schedule``; returns it (in eval mode) and ``{"steps", "epochs", "seconds",
    "final_loss", ...}``."""
    schedule = schedule or CAMSchedule()
    torch.manual_seed(schedule.seed)
    size = schedule.size or record_size(pairs[0][0], pairs[0][1].image_path)
    dataset = TagDataset(pairs, class_names, size=size, flip=True)
    loader = DataLoader(
        dataset,
        batch_size=schedule.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(schedule.seed),
    )
    task = TagTask(
        method="cam",
        num_classes=len(class_names),
        cam_options={"encoder": schedule.encoder, "stride": schedule.stride},
        lr=schedule.lr,
        class_names=list(class_names),
        input_size=list(size),
    )
    optimizer = task.configure_optimizers()
    task.train()
    budget = Budget(schedule.clock)
    losses: list[float] = []
    epochs = 0
    out_of_time = False
    for _ in range(schedule.epochs):
        for images, tags in loader:
            optimizer.zero_grad()
            loss = task.tag_loss((images, tags))
            if not torch.isfinite(loss):
                raise SemsegError(f"CAM training loss became {loss.item()}; try a lower lr")
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            if schedule.max_time_s is not None and budget.elapsed() >= schedule.max_time_s:
                out_of_time = True
                break
        epochs += 1
        if out_of_time:
            break
    task.eval()
    info = {
        "steps": len(losses),
        "epochs": epochs,
        "seconds": round(budget.elapsed(), 2),
        "clock": schedule.clock,
        "first_loss": losses[0] if losses else None,
        "final_loss": float(np.mean(losses[-10:])) if losses else None,
        "schedule": asdict(schedule),
    }
    return task, info


def write_cam_labels(
    tags_file: str | Path,
    data_root: str | Path,
    out_dir: str | Path,
    crf: bool = False,
    *,
    class_table: str | Path | None = None,
    schedule: CAMSchedule | None = None,
    thresholds: CAMThresholds | None = None,
    crf_params: CRFParams | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Train the CAM classifier from ``tags_file`` and write ``OUT/NAME.png`` for every tagged
    image (its tags: the union over its crops); the labels' quality against ground truth goes
    into the result and ``OUT/quality.json``, the classifier into ``OUT/cam.pt``.

    Returns ``{"method": "cam", "crf", "images", "skipped", "skipped_reasons", "quality",
    "training"}`` (as :func:`semseg.weak.jobs.write_pseudo_labels`, plus the training summary).
    """
    if crf:
        require_backend()
    data = open_box_data(data_root, class_table)
    records = read_tags(tags_file, data.names)
    pairs = match_samples(records, data.samples, tags_file)
    task, training = train_cam(pairs, data.names, schedule)
    out_dir = Path(out_dir)
    meter, written = label_images(
        task, data, records, out_dir, crf, thresholds, crf_params, progress
    )
    save_checkpoint_atomic(
        {"state_dict": task.model.state_dict(), "hyper_parameters": dict(task.hparams)},
        out_dir / CAM_MODEL_FILE,
    )
    result = {
        "method": "cam",
        "crf": crf,
        "images": written,
        "skipped": 0,
        "skipped_reasons": {},
        "quality": meter.result() if meter.images else None,
        "training": training,
    }
    write_json_atomic(out_dir / QUALITY_FILE, result)
    return result


def label_images(
    task: TagTask,
    data: BoxData,
    records: Sequence[TagRecord],
    out_dir: Path,
    crf: bool,
    thresholds: CAMThresholds | None,
    crf_params: CRFParams | None,
    progress: Progress | None,
) -> tuple[QualityMeter, int]:
    """Write the pseudo-labels of every tagged image and score them where masks exist;
    returns the quality meter and the number of images written."""
    thresholds = thresholds or CAMThresholds(background=data.background)
    crf_settings = (crf_params or CRFParams()) if crf else None
    tags = image_tags(records, data.names)
    by_name = {sample.name: sample for sample in data.samples}
    meter = QualityMeter(data.names, data.road_class)
    names = sorted(tags)
    for index, name in enumerate(names):
        sample = by_name[name]
        image = data.image(sample)
        labels = cam_labels_for_image(task.model, image, tags[name], thresholds, crf_settings)
        write_label_png(out_dir / f"{name}.png", labels)
        truth = data.truth(sample)
        if truth is not None:
            meter.update(labels, truth)
        if progress:
            progress(index + 1, len(names))
    return meter, len(names)


__all__ = [
    "CAMSchedule",
    "CAM_MODEL_FILE",
    "derive_tags_file",
    "label_images",
    "train_cam",
    "write_cam_labels",
]

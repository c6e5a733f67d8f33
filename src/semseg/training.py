"""One training run, top to bottom: run folder, data, split, task, trainer, outputs.

The run folder's layout, creation, resume and locking belong to :class:`semseg.runs.RunDir`.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, RichProgressBar, Timer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO

from semseg.config import Config, ModelConfig, resolve_config
from semseg.data.datamodule import (
    SegmentationDataModule,
    check_given_split,
    data_class_table,
    data_split,
    index_samples,
    make_reader,
)
from semseg.errors import SemsegError
from semseg.evaluation import (
    evaluate_multiclass_samples,
    evaluate_samples,
    write_multiclass_figures,
)
from semseg.inference.checkpoint import load_model, read_checkpoint
from semseg.inference.palette import overlay_with_legend
from semseg.inference.predictor import Predictor
from semseg.inference.visualize import overlay, plot_curves
from semseg.io import write_json_atomic, write_png_atomic, write_text_atomic
from semseg.models.regions import is_region_model
from semseg.runs import RUN_DIR_ENV, RunDir, is_rank_zero, save_checkpoint_atomic, warn
from semseg.tasks.balancing import load_class_weights, median_frequency_weights, save_class_weights
from semseg.tasks.segmentation import SegmentationTask

MASKRCNN = "maskrcnn-semantic"  # trained by semseg.tasks.instances
METRIC_COLUMNS = ("val_loss", "val_maxf", "val_ap", "val_iou", "val_miou", "val_acc")


class ChannelsLast(Callback):
    """NHWC weights (so NHWC activations) for training: ``train.channels_last``.

    ``None`` (the default) turns it on for bf16-mixed on the CPU, where oneDNN's bf16
    convolutions run much faster in NHWC (BENCHMARKS.md, Speed); fp32 is left as it is.
    Parameters are converted in place, so the optimiser keeps the same tensors.
    """

    def __init__(self, setting: bool | None) -> None:
        self.setting = setting

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        wanted = self.setting
        if wanted is None:
            wanted = str(trainer.precision) == "bf16-mixed" and pl_module.device.type == "cpu"
        if wanted:
            getattr(pl_module, "model", pl_module).to(memory_format=torch.channels_last)


class EpochLog(Callback):
    """One line per epoch in ``train.log`` (time, epoch, mean loss, validation scores) and one
    row in ``metrics.csv`` (epoch, train_loss, the validation metrics, seconds).

    Both are written before the epoch's checkpoint is saved; on resume, entries of epochs after
    the checkpoint (a run killed between the two) are dropped, so the files stay complete and
    free of duplicates.
    """

    def __init__(self, run: RunDir, echo: bool) -> None:
        self.log_path = run.log
        self.csv_path = run.metrics
        self.echo = echo
        self._loss_sum = 0.0
        self._count = 0
        self._epoch_start = time.monotonic()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        completed = trainer.current_epoch
        keep_lines(self.log_path, lambda line: _epoch_of(line) <= completed)
        keep_lines(
            self.csv_path, lambda row: row.startswith("epoch") or _csv_epoch(row) <= completed
        )
        if not self.csv_path.is_file():
            header = ",".join(("epoch", "train_loss", *METRIC_COLUMNS, "seconds"))
            write_text_atomic(self.csv_path, header + "\n")

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._loss_sum, self._count = 0.0, 0
        self._epoch_start = time.monotonic()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        size = batch[0].shape[0]
        self._loss_sum += float(loss.detach()) * size
        self._count += size

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        totals = torch.tensor([self._loss_sum, float(self._count)], dtype=torch.float64)
        totals = trainer.strategy.reduce(totals, reduce_op="sum")
        mean_loss = float(totals[0] / max(float(totals[1]), 1.0))
        metrics = {key: float(value) for key, value in trainer.callback_metrics.items()}
        seconds = time.monotonic() - self._epoch_start
        epoch = trainer.current_epoch + 1
        shown = ("val_maxf", "val_iou") if "val_maxf" in metrics else ("val_miou", "val_acc")
        scores = "  ".join(f"{key} {metrics[key]:.2f}" for key in shown if key in metrics)
        line = (
            f"{datetime.now().isoformat(timespec='seconds')}  epoch {epoch}/{trainer.max_epochs}"
            f"  loss {mean_loss:.4f}  {scores}  {seconds:.1f}s"
        )
        row = ",".join(
            [str(epoch), f"{mean_loss:.6f}"]
            + [f"{metrics[key]:.6f}" if key in metrics else "" for key in METRIC_COLUMNS]
            + [f"{seconds:.2f}"]
        )
        if trainer.is_global_zero:
            append_line(self.log_path, line)
            append_line(self.csv_path, row)
            if self.echo:
                print(line, flush=True)


class CpuTimer(Timer):
    """Lightning's max_time timer on the CPU clock: the training process's CPU seconds divided
    by the torch threads, i.e. the seconds the run would take on an otherwise idle machine
    (``train.clock: cpu``). On a CPU shared with other jobs this keeps a time budget fair: a
    busy neighbour slows the run down but does not shorten it. Validation counts, as with the
    wall clock; so does data loading in the main process (``num_workers: 0``)."""

    def __init__(self, seconds: float, threads: int) -> None:
        super().__init__(duration={"seconds": seconds})
        self._threads = max(1, threads)
        self._cpu_start: float | None = None
        self._cpu_end: float | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._cpu_start, self._cpu_end = time.process_time(), None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._cpu_end = time.process_time()

    def time_elapsed(self, stage: str = "train") -> float:
        if stage != "train":
            return super().time_elapsed(stage)
        if self._cpu_start is None:
            return float(self._offset)
        end = self._cpu_end if self._cpu_end is not None else time.process_time()
        return (end - self._cpu_start) / self._threads + self._offset


def append_line(path: Path, line: str) -> None:
    """Append one line and make it durable (a killed run keeps every finished line)."""
    with path.open("a") as stream:
        stream.write(line + "\n")
        stream.flush()
        os.fsync(stream.fileno())


def keep_lines(path: Path, keep: Callable[[str], bool]) -> None:
    """Rewrite ``path`` atomically with only the lines ``keep`` accepts."""
    if path.is_file():
        kept = [line for line in path.read_text().splitlines() if keep(line)]
        write_text_atomic(path, "".join(f"{line}\n" for line in kept))


def _epoch_of(line: str) -> int:
    words = line.split()
    try:
        return int(words[words.index("epoch") + 1].split("/")[0])
    except (ValueError, IndexError):
        return 0


def _csv_epoch(row: str) -> int:
    try:
        return int(row.split(",")[0])
    except ValueError:
        return 0


def check_resumable(config: Config, checkpoint: Path) -> None:
    """Refuse to resume a checkpoint of another model or class count than the config's."""
    hparams = read_checkpoint(checkpoint)["hyper_parameters"]
    if hparams["model_name"] != config.model.name:
        raise SemsegError(
            f"{checkpoint} was trained as {hparams['model_name']!r}, not {config.model.name!r}"
        )
    if int(hparams["num_classes"]) != config.model.num_classes:
        raise SemsegError(
            f"{checkpoint} has {hparams['num_classes']} classes, "
            f"the config {config.model.num_classes}"
        )


def prepare_data(config: Config, synthetic: bool) -> None:
    """Generate the synthetic scenes once into ``data.root`` (resolved by
    :func:`semseg.config.resolve_config`), where they are read as KITTI."""
    if not synthetic:
        return
    from semseg.data.synthetic import write_kitti_layout

    data_dir = Path(str(config.data.root))
    height, width = config.data.synthetic_size
    if not (data_dir / "training" / "image_2").is_dir():
        write_kitti_layout(
            data_dir,
            num_train=config.data.synthetic_train,
            seed=config.train.seed,
            height=height,
            width=width,
        )


def parse_devices(devices: str) -> int | list[int] | str:
    text = str(devices).strip()
    if text.isdigit():
        return int(text)
    if "," in text:
        return [int(item) for item in text.split(",") if item.strip()]
    return text


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temp file in their own folder, fsynced, then renamed: a kill
    during the write never leaves a torn ``last.ckpt`` or ``best.ckpt`` (a temp file in
    ``$TMPDIR`` moved across filesystems would be a copy, and could be cut short)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        save_checkpoint_atomic(checkpoint, Path(path))


def build_trainer(config: Config, run: RunDir | Path, progress: bool) -> L.Trainer:
    run = run if isinstance(run, RunDir) else RunDir(run)
    train = config.train
    echo = not progress
    callbacks: list[Callback] = [
        EpochLog(run, echo=echo),
        ChannelsLast(getattr(train, "channels_last", None)),
        ModelCheckpoint(
            dirpath=run.checkpoints,
            filename="best",
            monitor=selection_metric(config),
            mode="max",
            enable_version_counter=False,
        ),
        # Lightning's save_last only follows a new best; resuming needs every epoch's state.
        ModelCheckpoint(
            dirpath=run.checkpoints,
            filename="last",
            monitor=None,
            save_top_k=1,
            enable_version_counter=False,
        ),
    ]
    if progress:
        callbacks.append(RichProgressBar(leave=True))
    wall_budget = train.max_time_s if train.clock == "wall" else None
    if train.max_time_s and train.clock == "cpu":
        callbacks.append(CpuTimer(train.max_time_s, torch.get_num_threads()))
    return L.Trainer(
        default_root_dir=run.path,
        max_epochs=train.epochs,
        max_time={"seconds": wall_budget} if wall_budget else None,
        accelerator=train.accelerator,
        devices=parse_devices(train.devices),
        num_nodes=train.num_nodes,
        strategy=train.strategy,
        precision=train.precision,
        gradient_clip_val=train.grad_clip,
        logger=TensorBoardLogger(
            run.path, name=run.tensorboard.name, version="", default_hp_metric=False
        ),
        plugins=[AtomicCheckpointIO()],
        callbacks=callbacks,
        enable_progress_bar=progress,
        enable_model_summary=False,
        log_every_n_steps=1,
        num_sanity_val_steps=0,
        deterministic="warn",
    )


def selection_metric(config: Config) -> str:
    """What ``best.ckpt`` maximises: road MaxF for two classes, mIoU for more (and for
    training from tags, whose validation scores the raw argmax by mIoU)."""
    if config.train.supervision == "tags":
        return "val_miou"
    return "val_maxf" if config.model.num_classes == 2 else "val_miou"


def with_data_classes(config: Config) -> Config:
    """``config`` with ``model.num_classes`` taken from the data's class table (CamVid's
    ``classes.yaml``, VOC, Cityscapes). A count set on purpose (not the default 2) that differs
    from the table is an error."""
    table = data_class_table(config.data)
    if table is None or config.model.num_classes == table.num_classes:
        return config
    if config.model.num_classes != ModelConfig().num_classes:
        raise SemsegError(
            f"model.num_classes={config.model.num_classes} but the class table "
            f"{table.source} has {table.num_classes} classes"
        )
    model = dataclasses.replace(config.model, num_classes=table.num_classes)
    return dataclasses.replace(config, model=model)


def datamodule_class(model_name: str) -> type[SegmentationDataModule]:
    """The data for model ``model_name``: with each image's regions for region models."""
    if is_region_model(model_name):
        from semseg.regions.data import RegionDataModule

        return RegionDataModule
    return SegmentationDataModule


def build_task(config: Config, class_weights: list[float] | None = None) -> SegmentationTask:
    model = config.model
    options = {
        "keep_prob": model.keep_prob,
        "width_mult": model.width_mult,
        "backbone": model.backbone,
        "pretrained": model.pretrained,
        "backbone_weights": model.backbone_weights,
        **model_specific_options(config),
        "proposals": model.proposals,
    }
    table = data_class_table(config.data)
    named = config.data.kind == "kitti" or table is not None
    names = class_names_of(config)
    return task_class(model.name)(
        model_name=model.name,
        num_classes=model.num_classes,
        model_options=options,
        lr=config.train.lr,
        weight_decay=config.train.weight_decay,
        class_names=names if named else None,
        # the class road outputs (serve's road fraction and probability map) refer to
        positive_class=names.index("road") if "road" in names else 1,
        class_colours=table.colours.tolist() if table is not None else None,
        optimizer=config.train.optimizer,
        schedule=config.train.schedule,
        warmup_epochs=config.train.warmup_epochs,
        min_lr_factor=config.train.min_lr_factor,
        loss=config.train.loss,
        loss_weight=config.train.loss_weight,
        max_time_s=config.train.max_time_s,
        input_size=[config.data.height, config.data.width],
        fused_optimizer=config.train.fused_optimizer,
        class_weights=class_weights,
    )


def model_specific_options(config: Config) -> dict[str, object]:
    """Options only some models take (None: not set, the model's default; dropped by the
    registry for every model): ``grid`` (hypercolumn's K); for maskrcnn-semantic ``things``,
    the countable classes of the class table (its instance classes)."""
    options: dict[str, object] = {"grid": config.model.grid}
    if config.model.name == MASKRCNN:
        from semseg.weak.derive import thing_ids

        names = class_names_of(config)
        things = thing_ids(names)
        if not things or len(things) == len(names):
            raise SemsegError(
                f"{MASKRCNN} needs countable classes (car, pedestrian, bicyclist, sign_symbol, "
                f"pole, ...) and stuff classes; the classes are {', '.join(names)}"
            )
        options["things"] = things
    return options


def task_class(model_name: str) -> type[SegmentationTask]:
    """The task that trains ``model_name``: Mask R-CNN's own, the region task for region models,
    the segmentation task else."""
    if model_name == MASKRCNN:
        from semseg.tasks.instances import MaskRCNNSemanticTask

        return MaskRCNNSemanticTask
    if is_region_model(model_name):
        from semseg.tasks.regions import RegionTask

        return RegionTask
    return SegmentationTask


def training_class_weights(
    config: Config, run: RunDir, datamodule: SegmentationDataModule
) -> list[float] | None:
    """``train.class_weights``: median-frequency weights of the training masks, computed once
    and kept in the run (``class_weights.json``), so a resumed run uses the same ones."""
    if config.train.class_weights is None:
        return None
    names = class_names_of(config)
    if run.class_weights.is_file():
        return [float(w) for w in load_class_weights(run.class_weights, names)]
    train_set = datamodule.train_set
    masks = (train_set.load(index)[1] for index in range(len(train_set.samples)))
    weights = median_frequency_weights(masks, config.model.num_classes)
    save_class_weights(run.class_weights, weights, names)
    return [float(w) for w in weights]


def class_names_of(config: Config) -> list[str]:
    """The class names of the configured data (KITTI: not road, road; else its class table)."""
    if config.data.kind == "kitti":
        return ["not road", "road"]
    table = data_class_table(config.data)
    if table is not None:
        return list(table.names)
    return [f"class{index}" for index in range(config.model.num_classes)]


def resolve_resume(resume: str | Path) -> Path:
    """The run folder named by ``--resume`` (the folder itself or one of its checkpoints)."""
    return RunDir.of_resume(resume).path


def train(
    config: Config,
    resume: str | Path | None = None,
    overwrite: bool = False,
    run_dir: str | Path | None = None,
) -> Path:
    """Train as configured; returns the run folder (``run_dir``: this folder, not a new one).

    The process holds the run folder's lock from start to finish, so a second writer (another
    ``--resume``, an orphaned sweep worker) is refused instead of interleaving its epochs.
    """
    if run_dir is not None:
        config = dataclasses.replace(
            config, train=dataclasses.replace(config.train, run_dir=str(run_dir))
        )
    if config.train.rounds > 1 or config.train.supervision == "boxsup":
        from semseg.box_training import train_from_boxes  # recursive rounds, BoxSup

        return train_from_boxes(config, resume=resume, overwrite=overwrite)
    run = RunDir.of_resume(resume) if resume else RunDir.for_config(config)
    synthetic = config.data.kind == "synthetic"
    config = resolve_config(config, run.path)  # validated; never changed during the run
    config = with_data_classes(config)
    check_given_split(config.data)
    if config.train.supervision == "tags":
        from semseg.training_tags import check_tags

        check_tags(config, class_names_of(config))  # before the run folder is made
    L.seed_everything(config.train.seed, workers=True, verbose=False)
    if not is_rank_zero():
        return _train_in(config, run, resume is not None, synthetic)
    if not resume:
        run.check_new(overwrite)  # refused before the lock file exists: nothing is written
    with run.lock():
        if not resume:
            run.create(overwrite)
        run.remove_temp_files()
        os.environ[RUN_DIR_ENV] = str(run.path.resolve())
        return _train_in(config, run, resume is not None, synthetic)


# Called with the run's data before the task is built; returns callbacks to add (BoxSup).
Prepare = Callable[[Config, RunDir, SegmentationDataModule], list[Callback]]


def _train_in(
    config: Config, run: RunDir, resume: bool, synthetic: bool, prepare: Prepare | None = None
) -> Path:
    """Data, split, config, fit and the finished run's outputs, in an existing run folder."""
    prepare_data(config, synthetic)
    samples = index_samples(config.data)
    if run.split.is_file():
        split = run.read_split()
    else:
        split = data_split(config.data, samples, config.train.seed)
        run.write_split(split)
    run.save_config(config)
    datamodule = datamodule_class(config.model.name)(config, samples, split)
    if datamodule.skipped:
        count, first = len(datamodule.skipped), datamodule.skipped[0]
        warn(f"skipped {count} unreadable sample(s); first: {first}")
    callbacks = prepare(config, run, datamodule) if prepare is not None else []
    task, fit_data = fit_parts(config, run, datamodule)
    progress = config.train.progress and sys.stdout.isatty()
    trainer = build_trainer(config, run, progress)
    trainer.callbacks.extend(callbacks)
    ckpt_path = run.resume_checkpoint() if resume else None
    if ckpt_path is not None:
        check_resumable(config, ckpt_path)
    trainer.fit(task, datamodule=fit_data, ckpt_path=ckpt_path, weights_only=True)
    if trainer.is_global_zero:
        finish_run(config, run, datamodule)
    return run.path


def fit_parts(
    config: Config, run: RunDir, datamodule: SegmentationDataModule
) -> tuple[L.LightningModule, L.LightningDataModule]:
    """The task and data module to fit: from full masks, or (``train.supervision: tags``)
    MIL from image-level tags (:mod:`semseg.training_tags`)."""
    if config.train.supervision == "tags":
        from semseg.training_tags import tag_training

        table = data_class_table(config.data)
        colours = table.colours.tolist() if table is not None else None
        return tag_training(config, datamodule, class_names_of(config), colours)
    return build_task(config, training_class_weights(config, run, datamodule)), datamodule


def best_checkpoint(run_dir: Path) -> Path:
    """The checkpoint a finished run is judged by (see :meth:`RunDir.best_checkpoint`)."""
    return RunDir(run_dir).best_checkpoint()


def finish_run(config: Config, run: RunDir, datamodule: SegmentationDataModule) -> dict:
    """Curves, overlays of validation images and the full-resolution validation scores.

    ``eval_val.json`` is written last: its presence marks a finished run (sweeps rely on it).
    """
    plot_curves(run.metrics, run.curves, title=run.name)
    loaded = load_model(run.best_checkpoint())
    reader = make_reader(config.data, config.model.num_classes)
    samples = datamodule.val_samples
    batch_size = config.train.batch_size
    if loaded.is_multiclass:
        results = evaluate_multiclass_samples(loaded, samples, reader, batch_size=batch_size)
        results["split"] = "val"
        write_multiclass_figures(results, run.eval_val_figures)
    else:
        results = evaluate_samples(loaded, samples, reader, batch_size=batch_size)
        results["split"] = "val"
    write_overlays(loaded, spread(samples, config.train.overlay_samples), reader, run.overlays)
    write_json_atomic(run.eval_val, results)
    return results


def spread(items: list, count: int) -> list:
    """``count`` items evenly spaced through ``items`` (so every category shows up)."""
    if count <= 0 or not items:
        return []
    step = max(1, len(items) // count)
    return items[::step][:count]


def write_overlays(loaded, samples, reader, out_dir: Path) -> None:
    """Validation images with the prediction: road in green, or (multi-class) every class in
    the palette with a legend."""
    predictor = Predictor(loaded)
    images = [reader(sample)[0] for sample in samples]
    for sample, image, probability in zip(samples, images, predictor.predict(images), strict=True):
        labels = probability.argmax(axis=0)
        if loaded.is_multiclass:
            picture = overlay_with_legend(image, labels, loaded.class_names, loaded.class_colours)
        else:
            picture = overlay(image, labels == loaded.positive_class)
        write_png_atomic(out_dir / f"{sample.name}.png", picture)

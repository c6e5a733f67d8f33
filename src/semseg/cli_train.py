"""``semseg train``: a configuration (file, ``--set`` overrides, flags) trained into a run folder.

The command lives on :data:`train_app`, which ``semseg.cli`` merges into the main command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from semseg.cli_support import console, print_scores

train_app = typer.Typer()


def build_train_config(
    config: str | None,
    resume: Path | None,
    overrides: list[str],
    flags: dict[str, object],
):
    """Config file (or the resumed run's), then --set overrides, then plain flags."""
    from semseg.config import apply_overrides, load_config, set_field
    from semseg.data.layout import detect_kind
    from semseg.runs import RunDir

    if resume is not None:
        cfg = RunDir.of_resume(resume).read_config()
    else:
        cfg = load_config(config or "kitti_fcn8s")
    apply_overrides(cfg, overrides)
    data_root = flags.pop("data.root", None)
    if data_root is not None:
        root_path = Path(str(data_root))
        cfg.data.root = str(root_path)
        cfg.data.kind = detect_kind(root_path)
    for dotted, value in flags.items():
        if value is not None:
            set_field(cfg, dotted, value, source="flag")
    return cfg


def weak_flags(
    labels: Path | None, boxes: Path | None, rounds: int | None, supervision: str | None
) -> dict[str, object]:
    """The weak-supervision flags of ``train`` as config fields (semseg.box_training)."""
    return {
        "data.labels": None if labels is None else str(labels),
        "data.boxes": None if boxes is None else str(boxes),
        "train.rounds": rounds,
        "train.supervision": supervision,
    }


def tag_flags(supervision: str | None, tags: Path | None) -> dict[str, object]:
    """``--supervision`` and ``--tags`` as config fields (``--tags`` alone implies tags)."""
    if tags is not None and supervision is None:
        supervision = "tags"
    return {"train.supervision": supervision, "train.tags": None if tags is None else str(tags)}


@train_app.command()
def train(
    config: Annotated[str | None, typer.Option(help="Config file or packaged name.")] = None,
    data: Annotated[
        Path | None, typer.Option(help="KITTI data_road folder (or images/+masks/).")
    ] = None,
    model: Annotated[str | None, typer.Option(help="Model name (see `semseg models`).")] = None,
    epochs: Annotated[int | None, typer.Option(min=1)] = None,
    batch_size: Annotated[int | None, typer.Option(min=1)] = None,
    lr: Annotated[float | None, typer.Option(min=0.0)] = None,
    keep_prob: Annotated[float | None, typer.Option(help="Dropout keep probability.")] = None,
    height: Annotated[int | None, typer.Option(min=32)] = None,
    width: Annotated[int | None, typer.Option(min=32)] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    name: Annotated[str | None, typer.Option(help="Run name (folder prefix).")] = None,
    out_dir: Annotated[str | None, typer.Option(help="Where run folders go.")] = None,
    run_dir: Annotated[str | None, typer.Option(help="Exact run folder (no timestamp).")] = None,
    precision: Annotated[str | None, typer.Option(help="32, bf16-mixed or 16-mixed.")] = None,
    accelerator: Annotated[str | None, typer.Option(help="auto, cpu, gpu, ...")] = None,
    devices: Annotated[str | None, typer.Option(help="auto, a count, or ids like 0,1.")] = None,
    num_nodes: Annotated[int | None, typer.Option(min=1)] = None,
    strategy: Annotated[str | None, typer.Option(help="auto, ddp, ddp_spawn, ...")] = None,
    max_time: Annotated[float | None, typer.Option(help="Stop training after N seconds.")] = None,
    pretrained: Annotated[
        bool | None, typer.Option("--pretrained", help="ImageNet weights.")
    ] = None,
    backbone: Annotated[
        str | None,
        typer.Option(help="FCN encoder: vgg16, vgg16_bn, resnet18/34/50, mobilenet_v3_large."),
    ] = None,
    backbone_weights: Annotated[
        str | None, typer.Option(help="Local torchvision state dict of the backbone.")
    ] = None,
    skip_bad: Annotated[
        bool | None, typer.Option("--skip-bad", help="Skip unreadable samples.")
    ] = None,
    resume: Annotated[
        Path | None, typer.Option(help="Run folder (or checkpoint) to resume.")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Allow reusing an existing run folder.")] = False,
    set_: Annotated[list[str] | None, typer.Option("--set", help="section.field=value")] = None,
    labels: Annotated[
        Path | None,
        typer.Option(help="Train on these label PNGs (NAME.png, 255 = ignore), not the masks."),
    ] = None,
    boxes: Annotated[
        Path | None, typer.Option(help="Box annotations (COCO JSON or VOC XML folder).")
    ] = None,
    rounds: Annotated[
        int | None, typer.Option(min=1, help="Recursive training rounds from --boxes.")
    ] = None,
    tags: Annotated[
        Path | None,
        typer.Option(help="--supervision tags: image-level tags, CSV or JSON (derive --to tags)."),
    ] = None,
    supervision: Annotated[
        str | None,
        typer.Option(
            help="full (masks or --labels), boxsup (BoxSup from --boxes) or tags (MIL-LSE "
            "from --tags; train.lse_r sets r)."
        ),
    ] = None,
) -> None:
    """Train a model (defaults: the reference exercise, configs/kitti_fcn8s.yaml).

    --supervision tags --tags FILE: multiple-instance learning from image-level tags (Pinheiro &
    Collobert): the pixel scores are Log-Sum-Exp pooled (--set train.lse_r=R) and trained with a
    per-class sigmoid multi-label loss; validation and best.ckpt use the validation masks.
    """
    from semseg.training import train as run_training

    flags = {
        "data.root": data,
        "model.name": model,
        "train.epochs": epochs,
        "train.batch_size": batch_size,
        "train.lr": lr,
        "model.keep_prob": keep_prob,
        "data.height": height,
        "data.width": width,
        "train.seed": seed,
        "train.name": name,
        "train.out_dir": out_dir,
        "train.run_dir": run_dir,
        "train.precision": precision,
        "train.accelerator": accelerator,
        "train.devices": devices,
        "train.num_nodes": num_nodes,
        "train.strategy": strategy,
        "train.max_time_s": max_time,
        "model.pretrained": pretrained,
        "model.backbone": backbone,
        "model.backbone_weights": backbone_weights,
        "data.skip_bad": skip_bad,
        **weak_flags(labels, boxes, rounds, supervision),
        **tag_flags(supervision, tags),
    }
    cfg = build_train_config(config, resume, list(set_ or []), flags)
    finished = run_training(cfg, resume=resume, overwrite=overwrite)
    from semseg.runs import RunDir

    console.print(f"run folder: {finished}")
    run = RunDir(finished)
    if run.eval_val.is_file():
        print_scores(run.read_eval(), title="validation (full resolution)")

"""The weak-supervision commands of ``semseg``: ``derive`` (weak labels from full masks) and
``pseudo-labels`` (training labels from boxes, Simple Does It's methods, with their quality).

The commands live on :data:`weak_app`, which ``semseg.cli`` merges into the main command; errors
are :class:`~semseg.errors.SemsegError` and reach the user as one ``semseg: error:`` line.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from semseg.cli_support import console, err_console, progress_bar
from semseg.errors import SemsegError

weak_app = typer.Typer()

BOXES_FILE = "boxes.json"  # what `derive --to boxes` writes into --out
DEFAULT_MIN_AREA = 100  # semseg.weak.derive.DEFAULT_MIN_AREA
QUALITY_MARKDOWN = "quality.md"  # beside write_pseudo_labels' quality.json

# The methods of the `weak` extra: OpenCV for GrabCut, scikit-image for the segment candidates.
NEEDS_OPENCV = frozenset({"grabcut", "grabcut-i", "m-and-g"})
NEEDS_SKIMAGE = frozenset({"candidates", "m-and-g"})


class DeriveTarget(StrEnum):
    """What ``semseg derive --to`` makes from full masks."""

    boxes = "boxes"
    instances = "instances"
    tags = "tags"


class Method(StrEnum):
    """``semseg.weak.pseudolabels.METHODS`` (spelled out: that module loads numpy, the command
    line starts without it)."""

    box = "box"
    box_i = "box-i"
    grabcut = "grabcut"
    grabcut_i = "grabcut-i"
    candidates = "candidates"
    m_and_g = "m-and-g"
    cam = "cam"  # from image-level tags (--tags), not boxes


@dataclass(frozen=True)
class DeriveRequest:
    """The options of ``semseg derive``; each target uses those it needs."""

    data: Path
    out: Path
    class_table: str | None
    min_area: int
    min_frac: float = 0.01  # tags: semseg.weak.tags.DEFAULT_MIN_FRAC
    crop: str | None = None  # tags: "HxW" crops


def info(line: str) -> None:
    """One plain stdout line (no markup, no wrapping: paths and brackets print as they are)."""
    console.print(line, markup=False, highlight=False, soft_wrap=True)


def warn(line: str) -> None:
    err_console.print(f"warning: {line}", markup=False, highlight=False, soft_wrap=True)


# --- derive -------------------------------------------------------------------------------------


def derive_boxes_command(request: DeriveRequest) -> None:
    """``--to boxes``: one box per connected component of each class, as COCO JSON."""
    from semseg.weak.extras import load_cv2

    load_cv2()  # connected components: fail before reading any data
    from semseg.weak.jobs import derive_boxes

    with progress_bar() as bar:
        task = bar.add_task("deriving boxes", total=None)
        summary = derive_boxes(
            request.data,
            request.out / BOXES_FILE,
            min_area=request.min_area,
            class_table=request.class_table,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    info(derive_summary(summary))


def derive_summary(summary: dict[str, Any]) -> str:
    """The one-line report of ``derive --to boxes``."""
    per_class = ", ".join(f"{name}: {count}" for name, count in summary["per_class"].items())
    line = (
        f"derived {summary['boxes']} box(es) from {summary['images']} image(s) "
        f"({per_class or 'no classes'}) -> {summary['out']}"
    )
    if summary["unlabelled"]:
        line += f"; {summary['unlabelled']} image(s) without a mask got no boxes"
    return line


# --- derive --to instances (Mask R-CNN's ground truth) -----------------------------------------

INSTANCES_FILE = "instances.json"  # semseg.weak.instances.INSTANCES_FILE


def derive_instances_command(request: DeriveRequest) -> None:
    """``--to instances``: one instance per connected component of each countable class, as
    COCO instance-segmentation JSON (RLE masks) in OUT/instances.json."""
    from semseg.weak.extras import load_cv2

    load_cv2()  # connected components: fail before reading any data
    from semseg.weak.instances import derive_instances

    with progress_bar() as bar:
        task = bar.add_task("deriving instances", total=None)
        summary = derive_instances(
            request.data,
            request.out / INSTANCES_FILE,
            min_area=request.min_area,
            class_table=request.class_table,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    per_class = ", ".join(f"{name}: {count}" for name, count in summary["per_class"].items())
    info(
        f"derived {summary['instances']} instance(s) from {summary['images']} image(s) "
        f"({per_class}) -> {summary['out']}"
    )


def derive_tags_command(request: DeriveRequest) -> None:
    """``--to tags``: the classes covering at least --min-frac of each image (or crop)."""
    from semseg.weak.tag_jobs import derive_tags_file

    summary = derive_tags_file(
        request.data,
        request.out,
        min_frac=request.min_frac,
        crop=request.crop,
        class_table=request.class_table,
    )
    per_class = ", ".join(f"{name}: {count}" for name, count in summary["per_class"].items())
    what = "crop(s)" if request.crop else "image(s)"
    line = (
        f"derived tags of {summary['records']} {what} of {summary['images']} image(s) "
        f"({per_class}) -> {summary['out']}"
    )
    if summary["unlabelled"]:
        line += f"; {summary['unlabelled']} image(s) without a mask got no tags"
    info(line)


DERIVERS: dict[DeriveTarget, Callable[[DeriveRequest], None]] = {
    DeriveTarget.boxes: derive_boxes_command,
    DeriveTarget.instances: derive_instances_command,
    DeriveTarget.tags: derive_tags_command,
}


@weak_app.command()
def derive(
    to: Annotated[
        DeriveTarget,
        typer.Option("--to", help="What to derive from the masks: boxes, instances or tags."),
    ],
    data: Annotated[
        Path, typer.Option(help="Dataset with full masks: KITTI data_road, a folder, VOC, ...")
    ],
    out: Annotated[
        Path,
        typer.Option(
            help=f"boxes/instances: output folder (OUT/{BOXES_FILE}, OUT/{INSTANCES_FILE}); "
            "tags: a .csv/.json file."
        ),
    ],
    min_area: Annotated[
        int, typer.Option(min=1, help="Fewest pixels a mask component needs to get a box.")
    ] = DEFAULT_MIN_AREA,
    class_table: Annotated[
        str | None, typer.Option(help="YAML class table [DATA/classes.yaml].")
    ] = None,
    min_frac: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="tags: least share of valid pixels a class needs."),
    ] = 0.01,
    crop: Annotated[
        str | None, typer.Option(help="tags: per HxW crop of a grid over the image, e.g. 240x320.")
    ] = None,
) -> None:
    """Weak labels derived from full masks, to measure weak supervision against full.

    boxes: a box per connected component of each non-background class, as COCO detection JSON.
    instances: a mask per connected component of each countable class (car, pedestrian,
    bicyclist, sign_symbol, pole), as COCO instance JSON with RLE masks (maskrcnn-semantic's
    mask AP ground truth).
    tags: the classes covering at least --min-frac of each image's (or crop's) valid pixels,
    as CSV (image,class1;class2[,top,left,height,width]) or JSON, by the --out suffix.
    """
    from semseg.io import check_output_dir, check_output_file

    if DeriveTarget(to) is DeriveTarget.tags:
        check_output_file(out, "--out")
    else:
        check_output_dir(out, "--out")
    request = DeriveRequest(
        data=data, out=out, class_table=class_table, min_area=min_area, min_frac=min_frac, crop=crop
    )
    DERIVERS[DeriveTarget(to)](request)


# --- pseudo-labels ------------------------------------------------------------------------------


def require_extras(method: str) -> None:
    """Fail early, with the install line, when ``method`` needs a missing part of the extra."""
    from semseg.weak.extras import load_cv2, load_skimage_segmentation

    if method in NEEDS_OPENCV:
        load_cv2()
    if method in NEEDS_SKIMAGE:
        load_skimage_segmentation()


@weak_app.command("pseudo-labels")
def pseudo_labels(
    data: Annotated[Path, typer.Option(help="The images (and masks, to score the labels).")],
    method: Annotated[
        Method,
        typer.Option(help="Simple Does It's pseudo-label method (boxes), or cam (tags)."),
    ],
    out: Annotated[Path, typer.Option(help="Output folder: NAME.png per image, quality.")],
    boxes: Annotated[
        Path | None,
        typer.Option(help="COCO detection JSON, or a folder of Pascal VOC NAME.xml files."),
    ] = None,
    crf: Annotated[
        bool,
        typer.Option("--crf", help='Refine with the dense CRF (pip install -e ".\\[crf]").'),
    ] = False,
    skip_bad: Annotated[
        bool,
        typer.Option("--skip-bad", help="Skip images without a usable annotation (counted)."),
    ] = False,
    class_table: Annotated[
        str | None, typer.Option(help="YAML class table [DATA/classes.yaml].")
    ] = None,
    tags: Annotated[
        Path | None, typer.Option(help="cam: image-level tags, CSV or JSON (derive --to tags).")
    ] = None,
    epochs: Annotated[
        int, typer.Option(min=1, help="cam: most passes over the tags to train the classifier.")
    ] = 10,
    max_time: Annotated[
        float, typer.Option(min=1.0, help="cam: classifier training budget, CPU seconds.")
    ] = 300.0,
) -> None:
    """Training labels from boxes (Simple Does It's methods) or from image-level tags (cam)
    and their quality.

    cam: a multi-label GAP classifier trained from --tags (at most --epochs, --max-time CPU
    seconds); its class activation maps of each image's tagged classes, normalised, give the
    labels (below 0.2: background or ignore, from 0.4: the strongest class, ignore between).

    One PNG per image (training ids, 255 = ignore) and, where masks exist, the labels' quality
    against them (mIoU; MaxF and IoU for road) in the table, OUT/quality.json and quality.md.
    """
    from semseg.inference.crf import require_backend
    from semseg.io import check_output_dir, write_text_atomic

    method_name = str(method)
    if method_name == "cam" or tags is not None:
        check_source(method_name, boxes, tags)
        return cam_pseudo_labels(tags, data, out, crf, class_table, epochs, max_time)
    check_source(method_name, boxes, tags)
    assert boxes is not None
    require_extras(method_name)
    if crf:
        require_backend()
    check_output_dir(out, "--out")
    from semseg.weak.jobs import QUALITY_FILE, write_pseudo_labels  # torch: after the checks

    with progress_bar() as bar:
        task = bar.add_task("pseudo-labels", total=None)
        result = write_pseudo_labels(
            boxes,
            data,
            method_name,
            out,
            crf=crf,
            class_table=class_table,
            skip_bad=skip_bad,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    if result["skipped"]:
        first = next(iter(result["skipped_reasons"].values()))
        warn(f"skipped {result['skipped']} image(s) without a usable annotation; first: {first}")
    write_text_atomic(out / QUALITY_MARKDOWN, quality_markdown(result))
    print_quality(result)
    info(
        f"wrote {result['images']} pseudo-label(s) ({method_label(result)}) to {out}; "
        f"quality: {out / QUALITY_FILE}, {out / QUALITY_MARKDOWN}"
    )


def check_source(method: str, boxes: Path | None, tags: Path | None) -> None:
    """cam takes --tags, the box methods --boxes; one of them, not both."""
    if method == "cam":
        if tags is None:
            raise SemsegError("--method cam needs --tags FILE (image-level tags)")
        if boxes is not None:
            raise SemsegError("--method cam learns from --tags; drop --boxes")
    elif tags is not None:
        raise SemsegError(f"--tags is for --method cam, not {method}")
    elif boxes is None:
        raise SemsegError(f"--method {method} needs --boxes (COCO JSON or VOC XML folder)")


def cam_pseudo_labels(
    tags: Path | None,
    data: Path,
    out: Path,
    crf: bool,
    class_table: str | None,
    epochs: int,
    max_time: float,
) -> None:
    """``pseudo-labels --method cam``: train the CAM classifier, write and score its labels."""
    from semseg.inference.crf import require_backend
    from semseg.io import check_output_dir, write_text_atomic

    assert tags is not None
    if crf:
        require_backend()
    check_output_dir(out, "--out")
    from semseg.weak.jobs import QUALITY_FILE
    from semseg.weak.tag_jobs import CAMSchedule, write_cam_labels  # torch: after the checks

    schedule = CAMSchedule(epochs=epochs, max_time_s=max_time)
    with progress_bar() as bar:
        task = bar.add_task("CAM pseudo-labels", total=None)
        result = write_cam_labels(
            tags,
            data,
            out,
            crf,
            class_table=class_table,
            schedule=schedule,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    training = result["training"]
    info(
        f"CAM classifier: {training['steps']} step(s), {training['epochs']} epoch(s), "
        f"{training['seconds']:.0f} s ({training['clock']} clock), loss "
        f"{training['first_loss']:.3f} -> {training['final_loss']:.3f}"
    )
    write_text_atomic(out / QUALITY_MARKDOWN, quality_markdown(result))
    print_quality(result)
    info(
        f"wrote {result['images']} pseudo-label(s) ({method_label(result)}) to {out}; "
        f"quality: {out / QUALITY_FILE}, {out / QUALITY_MARKDOWN}"
    )


def method_label(result: dict[str, Any]) -> str:
    return str(result["method"]) + (" + CRF" if result["crf"] else "")


def cell(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.2f}"


def summary_columns(quality: dict[str, Any]) -> list[tuple[str, str]]:
    """(header, cell) of the overall scores; road data adds MaxF and the road IoU."""
    columns = [
        ("images", str(quality["images"])),
        ("coverage %", cell(quality["coverage"])),
        ("mIoU", cell(quality["miou"])),
        ("class acc", cell(quality["mean_acc"])),
        ("global acc", cell(quality["global_acc"])),
        ("fwIoU", cell(quality["fwiou"])),
    ]
    if "max_f" in quality:
        columns += [("MaxF", cell(quality["max_f"])), ("road IoU", cell(quality["road_iou"]))]
    return columns


def print_quality(result: dict[str, Any]) -> None:
    """The quality table (overall and per class), or a line saying there is no ground truth."""
    quality = result["quality"]
    if quality is None:
        info("no image has a ground-truth mask: the pseudo-labels' quality is not measured")
        return
    title = f"pseudo-label quality: {method_label(result)} against ground truth (percent)"
    overall = Table(title=title)
    columns = summary_columns(quality)
    for header, _ in columns:
        overall.add_column(header, justify="right")
    overall.add_row(*(value for _, value in columns))
    console.print(overall)
    per_class = Table(title="per class")
    for header in ("class", "IoU", "accuracy"):
        per_class.add_column(header, justify="left" if header == "class" else "right")
    for name, scores in quality["per_class"].items():
        per_class.add_row(name, cell(scores["iou"]), cell(scores["accuracy"]))
    console.print(per_class)


def quality_markdown(result: dict[str, Any]) -> str:
    """The quality report as Markdown (``OUT/quality.md``)."""
    lines = [f"# Pseudo-label quality: {method_label(result)}", ""]
    lines.append(f"{result['images']} image(s) labelled, {result['skipped']} skipped.")
    quality = result["quality"]
    if quality is None:
        lines += ["", "No image has a ground-truth mask: quality not measured."]
        return "\n".join(lines) + "\n"
    columns = summary_columns(quality)
    lines += [
        "",
        "| " + " | ".join(header for header, _ in columns) + " |",
        "|" + "---:|" * len(columns),
        "| " + " | ".join(value for _, value in columns) + " |",
        "",
        "| class | IoU | accuracy |",
        "|---|---:|---:|",
    ]
    for name, scores in quality["per_class"].items():
        lines.append(f"| {name} | {cell(scores['iou'])} | {cell(scores['accuracy'])} |")
    lines += [
        "",
        "Scores in percent on the pixels both the pseudo-label and the ground truth label; "
        "coverage is the share of labelled ground-truth pixels that carry a pseudo-label.",
    ]
    return "\n".join(lines) + "\n"


__all__ = ["DERIVERS", "DeriveTarget", "Method", "weak_app"]

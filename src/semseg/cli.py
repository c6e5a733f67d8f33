"""The ``semseg`` command line: train, evaluate, predict, export, quantize, kitti-submission, bev,
sweep, compare, demo, serve, models."""

from __future__ import annotations

import sys
import traceback
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from semseg.cli_regions import regions_app
from semseg.cli_support import (
    RANK_HELP,
    InferenceOptions,
    Space,
    Split,
    choose_backend,
    console,
    err_console,
    inference_options,
    load_any_model,
    print_report,
    print_scores,
    progress_bar,
    quantize_table,
)
from semseg.cli_train import train_app
from semseg.cli_weak import weak_app
from semseg.errors import SemsegError
from semseg.inference.options import Backend, BackendOptions, Precision

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Semantic segmentation of road scenes: FCN-8s on VGG16 for KITTI Road and friends.",
)
STATE = {"debug": False}


class Smooth(StrEnum):
    """``--smooth`` of a MIL model: none, SLIC superpixels or Felzenszwalb's segments."""

    none = "none"
    superpixels = "superpixels"
    segments = "segments"


IMAGE_PRIOR_HELP = "MIL model: multiply by the image-level prior of the LSE-pooled scores."
SMOOTH_HELP = (
    "MIL model: average the probabilities within SLIC superpixels or Felzenszwalb segments "
    '(scikit-image, pip install -e ".\\[weak]").'
)
app.add_typer(train_app)  # train
app.add_typer(weak_app)  # derive, pseudo-labels
app.add_typer(regions_app)  # proposals


@app.callback()
def root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
) -> None:
    STATE["debug"] = debug


@app.command()
@inference_options(default_backend="torch")
def evaluate(
    checkpoint: Annotated[Path, typer.Argument(help="A semseg checkpoint (.ckpt).")],
    data: Annotated[Path, typer.Option(help="KITTI data_road folder, or images/+masks/.")],
    split: Annotated[
        Split,
        typer.Option(help="all; train/val/test: the data's split folders, else val: the run's."),
    ] = Split.all,
    out: Annotated[Path | None, typer.Option(help="JSON file for the results.")] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 4,
    class_table: Annotated[
        str | None, typer.Option(help="YAML class table for colour masks.")
    ] = None,
    skip_bad: Annotated[
        bool, typer.Option("--skip-bad", help="Skip unreadable images and images without GT.")
    ] = False,
    space: Annotated[
        Space, typer.Option(help="perspective, bev (bird's-eye view, needs calib) or both.")
    ] = Space.perspective,
    image_prior: Annotated[bool, typer.Option("--image-prior", help=IMAGE_PRIOR_HELP)] = False,
    smooth: Annotated[Smooth, typer.Option(help=SMOOTH_HELP)] = Smooth.none,
    *,
    inference: InferenceOptions,
) -> None:
    """Score a checkpoint at full ground-truth resolution: the KITTI devkit's metrics for road,
    mIoU / class-average / global accuracy and per-class IoU for multi-class models (with a
    confusion matrix and IoU bars in a folder beside the JSON).

    The model runs in plain fp32 eager torch unless --backend / --precision say otherwise."""
    from semseg.evaluation import evaluate_checkpoint
    from semseg.io import check_output_file, write_json_atomic

    split, space = Split(split).value, Space(space).value
    suffix = "" if space == "perspective" else f"_{space}"
    suffix += "_crf" if inference.crf is not None else ""
    suffix += mil_suffix(image_prior, str(smooth))
    out = out or checkpoint.parent / f"eval_{split}{suffix}.json"
    check_output_file(out, "--out")  # before any image is scored
    with progress_bar() as bar:
        task = bar.add_task("evaluating", total=None)
        results = evaluate_checkpoint(
            checkpoint,
            data,
            split=split,
            space=space,
            batch_size=batch_size,
            class_table=class_table,
            skip_bad=skip_bad,
            crf=inference.crf,
            backend=inference.backend,
            on_total=lambda total: bar.update(task, total=total),
            on_progress=lambda n: bar.advance(task, n),
            warn=lambda message: err_console.print(f"warning: {message}"),
            announce=lambda line: print(line, file=sys.stderr, flush=True),
            image_prior=image_prior,
            smooth=str(smooth),
        )
    if results.get("task") == "multiclass":
        from semseg.evaluation import write_multiclass_figures

        write_multiclass_figures(results, out.with_suffix(""))
    write_json_atomic(out, results)
    print_scores(results, title=f"{checkpoint.name} on {data} ({split})")
    console.print(f"results: {out}")


def mil_suffix(image_prior: bool, smooth: str) -> str:
    """What the MIL inference adds to the default results name (``_prior_superpixels``)."""
    return ("_prior" if image_prior else "") + ("" if smooth == "none" else f"_{smooth}")


@app.command()
@inference_options(default_backend="auto")
def predict(
    checkpoint: Annotated[
        Path, typer.Argument(help="A semseg checkpoint (.ckpt) or its ONNX export (.onnx).")
    ],
    inputs: Annotated[list[Path], typer.Argument(help="Images or folders of images.")],
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("predictions"),
    batch_size: Annotated[int, typer.Option(min=1)] = 4,
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="Skip unreadable images.")] = False,
    image_prior: Annotated[bool, typer.Option("--image-prior", help=IMAGE_PRIOR_HELP)] = False,
    smooth: Annotated[Smooth, typer.Option(help=SMOOTH_HELP)] = Smooth.none,
    *,
    inference: InferenceOptions,
) -> None:
    """Overlays, devkit-named road probabilities and label masks for images.

    Road model, in OUT: overlay/NAME.png (road in green), label/NAME.png
    (class indices), prob/<devkit name>.png (8-bit road probability).
    Multi-class model: label/NAME.png (class indices), colour/NAME.png (the
    labels in the class colours), overlay/NAME.png (the image tinted in the
    class colours, with the legend)."""
    from semseg.inference import fast_start
    from semseg.io import check_output_dir, read_rgb
    from semseg.prediction import collect_inputs, predict_files, readable_inputs, written_outputs

    check_output_dir(out, "--out")  # before any image is predicted
    options = inference.backend

    def request_for(paths: list[Path]) -> fast_start.Request | None:
        mil_flags = image_prior or smooth != Smooth.none
        return fast_start.request_for(
            checkpoint, options, batch_size, len(paths), crf=inference.crf, mil_flags=mil_flags
        )

    paths = None
    if fast_start.may_have_route(checkpoint):  # else the model file is checked first, as always
        paths = readable_inputs(collect_inputs(inputs), skip_bad, warn=err_console.print)
        if (route := fast_start.find_route(request_for(paths))) is not None:
            predict_on_route(route, paths, out, batch_size)  # torch is never imported
            return
    loaded = load_any_model(checkpoint)
    from semseg.weak.mil import inference_settings

    mil = inference_settings(
        getattr(loaded, "lse_r", None),
        image_prior,
        str(smooth),
        checkpoint,
        getattr(loaded, "prior_tiles", (1, 1)),
    )
    if paths is None:
        paths = readable_inputs(collect_inputs(inputs), skip_bad, warn=err_console.print)
    lines: list[str] = []
    engine = choose_backend(
        loaded,
        options,
        image=read_rgb(paths[0]) if options.backend == "auto" else None,
        batch_size=min(batch_size, len(paths)),
        images=calibration_images(paths),
        lines=lines,
    )
    if getattr(engine, "metadata", {}).get("precision") == "int8":
        from semseg.inference.quantize import vnni_warning

        if warning := vnni_warning():
            lines.append(f"warning: {warning}")
            err_console.print(f"warning: {warning}")
    with progress_bar() as bar:
        task = bar.add_task("predicting", total=len(paths))
        count = predict_files(
            loaded,
            paths,
            out,
            batch_size,
            on_progress=lambda n: bar.advance(task, n),
            crf=inference.crf,
            backend=engine,
            mil=mil,
        )
    console.print(f"wrote {count} {written_outputs(loaded)} to {out}")
    request = request_for(paths) if mil is None else None
    fast_start.record_route(request, engine, loaded, lines, say=plain_line)


def plain_line(line: str) -> None:
    """One stderr line as it is (a path or ``[Errno 28]`` is not rich markup)."""
    err_console.print(line, soft_wrap=True, highlight=False, markup=False)


def predict_on_route(route, paths: list[Path], out: Path, batch_size: int) -> None:
    """``semseg predict`` on a recorded route (:mod:`semseg.inference.fast_start`)."""
    from semseg.inference import fast_start
    from semseg.prediction import written_outputs

    for line in route.lines:
        suffix = " [recorded route: started without torch]" if line.startswith("backend:") else ""
        plain_line(line + suffix)
    with progress_bar() as bar:
        task = bar.add_task("predicting", total=len(paths))
        count = fast_start.predict_on_route(
            route, paths, out, batch_size, on_progress=lambda n: bar.advance(task, n)
        )
    console.print(f"wrote {count} {written_outputs(route.loaded)} to {out}")


def calibration_images(paths: list[Path]):
    """int8 calibration images of ``semseg predict``: the images given, read when needed."""
    from semseg.inference.calibration_data import images_from_paths
    from semseg.inference.int8_cache import CALIBRATION_IMAGES

    return lambda: images_from_paths(paths, CALIBRATION_IMAGES)


@app.command("export")
def export_command(
    checkpoint: Annotated[Path, typer.Argument(help="A semseg checkpoint (.ckpt).")],
    format_: Annotated[
        str,
        typer.Option(
            "--format",
            help="onnx, onnx-optimized (onnxruntime's, this CPU) or pt2 (AOTInductor, this CPU).",
        ),
    ] = "onnx",
    out: Annotated[Path | None, typer.Option(help="Output file [CHECKPOINT.onnx].")] = None,
    opset: Annotated[int | None, typer.Option(help="ONNX opset [17].")] = None,
    precision: Annotated[str, typer.Option(help="pt2: bf16 (channels-last) or 32.")] = "bf16",
) -> None:
    """Export a checkpoint for deployment (ONNX: dynamic batch, height and width; pt2: compiled
    once for this CPU at the model's input size, batch 1-64; verified)."""
    from semseg.inference.checkpoint import load_model
    from semseg.inference.onnx_export import DEFAULT_OPSET, check_format, check_opset, export_onnx

    check_format(format_)
    opset = check_opset(DEFAULT_OPSET if opset is None else opset)
    loaded = load_model(checkpoint)
    if format_ == "pt2":
        export_pt2_command(loaded, checkpoint, out, precision)
        return
    if format_ == "onnx-optimized":
        from semseg.inference.onnx_optimized import export_onnx_optimized

        out = out or checkpoint.with_suffix(".optimized.onnx")
        worst = export_onnx_optimized(loaded, out, opset)
        console.print(
            f"exported {checkpoint} to {out} (onnxruntime-optimized graph for this CPU and "
            f"onnxruntime version; {out.stat().st_size / 1e6:.1f} MB; verified: max |dp| "
            f"{worst:.1e} against torch)"
        )
        return
    out = out or checkpoint.with_suffix(".onnx")
    verification = export_onnx(loaded, out, opset=opset)
    size_mb = out.stat().st_size / 1e6
    console.print(
        f"exported {checkpoint} to {out} (ONNX opset {opset}, {size_mb:.1f} MB; "
        "dynamic batch, height and width)"
    )
    if verification is not None:
        console.print(f"verified: {verification.summary()}")


def export_pt2_command(loaded, checkpoint: Path, out: Path | None, precision: str) -> None:
    from semseg.inference.aot import PT2_PRECISIONS, export_pt2

    if precision not in PT2_PRECISIONS:
        choices = ", ".join(PT2_PRECISIONS)
        raise SemsegError(f"--precision must be one of {choices} for pt2, got {precision!r}")
    out = out or checkpoint.with_suffix(f".{precision}.pt2")
    if out.suffix != ".pt2":
        raise SemsegError(f"--out must name a .pt2 file, got {out}")
    worst = export_pt2(loaded, out, precision, announce=lambda line: err_console.print(line))
    height, width = loaded.input_size
    console.print(
        f"exported {checkpoint} to {out} (AOTInductor package, {precision}, {height}x{width}, "
        f"batch 1-64, this CPU and torch {__import__('torch').__version__}; "
        f"{out.stat().st_size / 1e6:.1f} MB; verified: max |dp| {worst:.1e} against fp32 eager)"
    )


@app.command("quantize")
def quantize_command(
    checkpoint: Annotated[Path, typer.Argument(help="A semseg checkpoint (.ckpt).")],
    data: Annotated[
        Path, typer.Option(help="Calibration data: KITTI data_road, images/+masks/, or images.")
    ],
    out: Annotated[Path | None, typer.Option(help="Output file [CHECKPOINT.int8.onnx].")] = None,
    images: Annotated[int, typer.Option(min=1, help="Calibration images.")] = 16,
    eval_images: Annotated[
        int, typer.Option(min=1, help="Other images of --data to compare int8 and fp32 on.")
    ] = 16,
    calibration: Annotated[
        str, typer.Option(help="minmax, entropy, percentile, or auto (each; the closest to fp32).")
    ] = "auto",
    class_table: Annotated[
        str | None, typer.Option(help="YAML class table for colour masks.")
    ] = None,
    fp32_node: Annotated[
        list[str] | None, typer.Option("--fp32-node", help="ONNX node name to keep in fp32.")
    ] = None,
    keep_head: Annotated[
        bool, typer.Option("--keep-head", help="Keep score layers and upsampling in fp32.")
    ] = False,
    threads: Annotated[
        int | None, typer.Option(min=1, help="onnxruntime threads [torch's].")
    ] = None,
) -> None:
    """Post-training static int8 quantization (onnxruntime, QDQ) calibrated on your images."""
    from semseg.inference.checkpoint import load_model
    from semseg.inference.quantize import quantize_checkpoint

    loaded = load_model(checkpoint)
    out = out or checkpoint.with_suffix(".int8.onnx")
    result = quantize_checkpoint(
        loaded,
        data,
        out,
        images=images,
        calibration=calibration,
        eval_images=eval_images,
        class_table=class_table,
        fp32_nodes=fp32_node or (),
        keep_head=keep_head,
        threads=threads,
        announce=lambda line: err_console.print(line),
    )
    console.print(quantize_table(result, data))
    size_mb = out.stat().st_size / 1e6
    kept = (
        f"; kept in fp32: {', '.join(result.chosen.fp32_nodes)}" if result.chosen.fp32_nodes else ""
    )
    console.print(
        f"wrote {out} (int8, {result.chosen.method} calibration on "
        f"{len(result.calibration_images)} image(s), {size_mb:.1f} MB{kept}; "
        f"{result.seconds:.0f} s)"
    )
    if result.warning:
        err_console.print(f"warning: {result.warning}")


@app.command("kitti-submission")
def kitti_submission(
    checkpoint: Annotated[Path, typer.Argument(help="A semseg checkpoint (.ckpt).")],
    data: Annotated[Path, typer.Option(help="KITTI data_road folder (holds testing/).")],
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("kitti_submission"),
    batch_size: Annotated[int, typer.Option(min=1)] = 4,
    skip_bad: Annotated[
        bool, typer.Option("--skip-bad", help="Skip test images without calib (counted).")
    ] = False,
) -> None:
    """BEV road confidences of testing/image_2, named and zipped for the KITTI road benchmark."""
    from semseg.inference.checkpoint import load_model
    from semseg.io import check_output_dir
    from semseg.submission import submission_inputs, write_submission

    check_output_dir(out, "--out")
    loaded = load_model(checkpoint)
    if loaded.num_classes != 2:
        raise SemsegError(f"{checkpoint} predicts {loaded.num_classes} classes; KITTI road has 2")
    items = submission_inputs(
        data, skip_bad, warn=lambda message: err_console.print(f"warning: {message}")
    )
    with progress_bar() as bar:
        task = bar.add_task("predicting", total=len(items))
        result = write_submission(
            loaded, items, out, batch_size, on_progress=lambda n: bar.advance(task, n)
        )
    console.print(f"wrote {len(result.files)} BEV results to {out / 'bev'}")
    console.print(f"upload: {result.archive}")


@app.command("bev")
def bev_command(
    source: Annotated[Path, typer.Argument(help="Image, probability PNG or devkit GT PNG.")],
    calib: Annotated[Path, typer.Option(help="KITTI calib file of that image.")],
    out: Annotated[Path, typer.Option(help="Output PNG.")],
    sampling: Annotated[
        str, typer.Option(help="nearest or bilinear (ground truth is always nearest).")
    ] = "nearest",
) -> None:
    """Warp an image to the KITTI road benchmark's bird's-eye view (400 x 800, 5 cm cells)."""
    from semseg.bev import warp_image_file

    if sampling not in ("nearest", "bilinear"):
        raise SemsegError(f"--sampling must be nearest or bilinear, got {sampling!r}")
    kind = warp_image_file(source, calib, out, sampling)  # type: ignore[arg-type]
    console.print(f"wrote the BEV of {source} ({kind}) to {out}")


@app.command()
def demo(
    out_dir: Annotated[str, typer.Option(help="Where the demo run goes.")] = "runs",
    seconds: Annotated[float | None, typer.Option(help="Training budget in seconds.")] = None,
) -> None:
    """Train a small model on synthetic road scenes (no data, no network) and show the result."""
    from semseg.demo import TARGET_IOU, run_demo
    from semseg.runs import RunDir

    report = run_demo(out_dir=out_dir, seconds=seconds)
    print_scores(report.results, title="held-out synthetic scenes")
    console.print(f"run folder: {report.run_dir}")
    run = RunDir(report.run_dir)
    console.print(f"report: {run.report}")
    console.print(f"overlays: {run.heldout_overlays}")
    console.print(f"held-out road IoU: {report.road_iou:.2f}%")
    if report.road_iou < TARGET_IOU:
        raise SemsegError(
            f"the demo model did not learn: held-out road IoU {report.road_iou:.2f}% is under "
            f"its target {TARGET_IOU:.0f}%"
        )


@app.command()
def sweep(
    config: Annotated[str | None, typer.Option(help="Config file or packaged name.")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="section.field=v1,v2,... (a grid axis) or =value."),
    ] = None,
    data: Annotated[
        Path | None, typer.Option(help="KITTI data_road folder (or images/+masks/).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Sweep folder (default runs/sweep-NAME-TIME).")
    ] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue the sweep in this folder.")] = None,
    rank_by: Annotated[str | None, typer.Option(help=RANK_HELP)] = None,
    jobs: Annotated[int, typer.Option(min=1, help="Settings trained in parallel.")] = 1,
    grid_images: Annotated[
        int | None, typer.Option(min=1, help="Validation images (rows) in grid.png.")
    ] = None,
) -> None:
    """Train a grid of settings and rank them by validation MaxF or mIoU (table, curves, grid)."""
    from semseg.experiments import load_sweep, plan_sweep, run_sweep

    if resume is not None:
        if config is not None or set_ or data is not None or out is not None:
            raise SemsegError(
                "--resume takes the sweep from its sweep.json: drop --config, "
                "--set, --data and --out"
            )
        plan = load_sweep(resume)
        if rank_by is not None:
            plan.rank_by = plan.checked_rank_key(rank_by)
        if grid_images is not None:
            plan.grid_images = grid_images
    else:
        plan = plan_sweep(config, list(set_ or []), data, out, rank_by, grid_images)
    console.print(f"sweep folder: {plan.sweep_dir} ({len(plan.settings)} settings)")
    outcome = run_sweep(plan, jobs=jobs, on_event=console.print)
    if outcome.report is not None:
        print_report(outcome.report)
    if outcome.failures:
        names = ", ".join(outcome.failures)
        raise SemsegError(
            f"{len(outcome.failures)} of {len(plan.settings)} settings failed ({names}); "
            f"fix and continue with: semseg sweep --resume {plan.sweep_dir}"
        )


@app.command()
def compare(
    runs: Annotated[list[Path], typer.Argument(help="Finished run folders.")],
    out: Annotated[Path | None, typer.Option(help="Where the table and figures go.")] = None,
    rank_by: Annotated[str | None, typer.Option(help=RANK_HELP)] = None,
    grid_images: Annotated[
        int, typer.Option(min=1, help="Validation images (rows) in grid.png.")
    ] = 4,
) -> None:
    """Table and figures for finished runs; settings = the config fields that differ."""
    from semseg.experiments import compare_runs

    print_report(compare_runs(runs, out, rank_by, grid_images))


@app.command()
def serve(
    checkpoint: Annotated[Path, typer.Argument(help="A semseg checkpoint (.ckpt).")],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="0 picks a free port.")] = 8000,
    backend: Annotated[
        Backend,
        typer.Option(
            case_sensitive=False,
            help="auto (fastest that matches fp32, timed once and cached), torch, or onnxruntime.",
        ),
    ] = Backend.auto,
    precision: Annotated[
        Precision | None,
        typer.Option(
            help="32, bf16 or int8 (quantized once on --calibration-data, cached; torch's PT2E "
            "int8 with --backend torch)."
        ),
    ] = None,
    calibration_data: Annotated[
        Path | None,
        typer.Option(help="Images of your data to calibrate int8 on the first time (a folder)."),
    ] = None,
    max_bytes: Annotated[
        int, typer.Option(min=1, help="Largest request body in bytes (larger: 413).")
    ] = 20 * 1024 * 1024,
    max_side: Annotated[
        int, typer.Option(min=1, help="Largest image width or height in pixels (larger: 413).")
    ] = 8192,
    max_pixels: Annotated[
        int,
        typer.Option(min=1, help="Largest image in pixels, read from its header (larger: 413)."),
    ] = 4_000_000,
    max_queue: Annotated[
        int, typer.Option(min=1, help="Requests in flight at once (more: 503, Retry-After).")
    ] = 16,
    batch_size: Annotated[int, typer.Option(min=1, help="Largest micro-batch of images.")] = 4,
    body_timeout: Annotated[
        float,
        typer.Option(min=0.1, help="Seconds a client has to send its request body (then 408)."),
    ] = 30.0,
) -> None:
    """Serve a checkpoint over HTTP: POST /v1/segment, a page to try it at /, docs at /docs."""
    from semseg.serve import run_server

    run_server(
        checkpoint,
        host=host,
        port=port,
        backend=BackendOptions(str(backend), None if precision is None else str(precision)),
        calibration_data=calibration_data,
        max_bytes=max_bytes,
        max_side=max_side,
        max_pixels=max_pixels,
        max_queue=max_queue,
        batch_size=batch_size,
        body_timeout=body_timeout,
        announce=lambda line: console.print(line, soft_wrap=True, highlight=False),
    )


@app.command("models")
def models_command() -> None:
    """List the models ``--model`` accepts."""
    from semseg.models import list_models

    for name in list_models():
        console.print(name)


def main() -> None:
    """Entry point: user errors print one line and exit non-zero, never a traceback."""
    try:
        code = app(standalone_mode=False)
    except SemsegError as error:
        report_error(str(error))
        sys.exit(2)
    except typer.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except Exception as error:  # a bug or an environment problem: still one line unless --debug
        if is_usage_error(error):
            report_error(error.format_message())
            sys.exit(2)
        report_error(f"{type(error).__name__}: {error}".splitlines()[0])
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


def is_usage_error(error: Exception) -> bool:
    """A command-line usage error (bad or missing option, unknown command) raised by typer.

    typer vendors its own click, so its exception classes are not importable under a stable
    public name; what they share is ``exit_code`` and ``format_message()``.
    """
    return hasattr(error, "format_message") and isinstance(getattr(error, "exit_code", None), int)


def report_error(message: str) -> None:
    if STATE["debug"] or "--debug" in sys.argv:
        traceback.print_exc()
    print(f"semseg: error: {message}", file=sys.stderr)


if __name__ == "__main__":
    main()

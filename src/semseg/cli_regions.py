"""The region command of ``semseg``: ``proposals`` (region proposals per image, cached, with
their recall).

The command lives on :data:`regions_app`, which ``semseg.cli`` merges into the main command;
errors are :class:`~semseg.errors.SemsegError` and reach the user as one ``semseg: error:`` line.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from semseg.cli_support import console, progress_bar

regions_app = typer.Typer()


class ProposalMethod(StrEnum):
    """``semseg.regions.proposals.METHODS`` (spelled out: the command line starts without
    numpy)."""

    felzenszwalb = "felzenszwalb"
    slic = "slic"
    selective_search = "selective-search"


def info(line: str) -> None:
    console.print(line, markup=False, highlight=False, soft_wrap=True)


def parse_scales(text: str | None) -> tuple[float, ...] | None:
    """``--scales 25,100`` as floats; a one-line error for anything else."""
    from semseg.errors import SemsegError

    if text is None:
        return None
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise SemsegError(f"--scales must be numbers separated by commas, got {text!r}") from None


@regions_app.command()
def proposals(
    data: Annotated[Path, typer.Option(help="Dataset: KITTI data_road, a folder (CamVid), ...")],
    method: Annotated[ProposalMethod, typer.Option(help="How regions are proposed.")],
    out: Annotated[Path, typer.Option(help="Cache folder: one NAME.HASH.METHOD.npz per image.")],
    scales: Annotated[
        str | None,
        typer.Option(help="felzenszwalb: scales per 100,000 pixels, one level each [25,100]."),
    ] = None,
    n_segments: Annotated[
        int | None, typer.Option(min=1, help="slic: about this many superpixels [300].")
    ] = None,
    max_boxes: Annotated[
        int | None, typer.Option(min=1, help="selective-search: boxes kept [200].")
    ] = None,
    limit: Annotated[
        int | None, typer.Option(min=1, help="Only the first N images (a quick look).")
    ] = None,
    class_table: Annotated[
        str | None, typer.Option(help="YAML class table [DATA/classes.yaml].")
    ] = None,
) -> None:
    """Region proposals of every image, cached in --out and reused by later calls and by
        training (--set data.proposals_dir=OUT); a cached file made with other parameters is
        recomputed. Where masks exist, prints the proposal recall: the mIoU if every region got its
        majority label (OUT/recall.METHOD.json), the best a region classifier can reach. Training
    reads the regions made with the default parameters of its model.proposals method."""
    from semseg.io import check_output_dir
    from semseg.regions.extras import require_method

    require_method(str(method))
    check_output_dir(out, "--out")
    from semseg.regions.jobs import write_proposals
    from semseg.regions.proposals import ProposalParams

    given = {
        "scales": parse_scales(scales),
        "n_segments": n_segments,
        "max_boxes": max_boxes,
    }
    params = ProposalParams(str(method), **{k: v for k, v in given.items() if v is not None})
    with progress_bar() as bar:
        task = bar.add_task("proposals", total=None)
        summary = write_proposals(
            data,
            params,
            out,
            class_table=class_table,
            limit=limit,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    per_image = summary["seconds_per_computed_image"]
    timing = f", {per_image:.3f} s per computed image" if per_image is not None else ""
    info(
        f"{summary['images']} image(s): {summary['computed']} computed, {summary['reused']} "
        f"reused from {out}; {summary['regions_per_image']:.1f} regions per image{timing}"
    )
    recall = summary["recall"]
    if recall is not None:
        info(
            f"proposal recall (mIoU with each region's majority label, {recall['images']} "
            f"image(s) with masks): {recall['miou']:.2f}"
        )

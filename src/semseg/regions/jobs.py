"""``semseg proposals``: the region proposals of every image of a dataset, cached in a folder,
and their recall where masks exist (:func:`semseg.regions.proposals.proposal_recall`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from semseg.io import write_json_atomic
from semseg.regions.proposals import (
    ProposalParams,
    Regions,
    cached_regions,
    proposal_recall,
)
from semseg.weak.jobs import open_box_data

RECALL_FILE = "recall.{method}.json"  # in the cache folder, per method
Progress = Callable[[int, int], None]


def write_proposals(
    data: str | Path,
    params: ProposalParams,
    out: str | Path,
    class_table: str | None = None,
    limit: int | None = None,
    progress: Progress | None = None,
) -> dict:
    """Compute (or find in ``out``) the regions of each image of ``data`` (the first ``limit``);
    returns counts, time per computed image and, where masks exist, the proposal recall (also
    written to ``OUT/recall.METHOD.json``)."""
    dataset = open_box_data(data, class_table)
    samples = dataset.samples[:limit] if limit else dataset.samples
    out = Path(out)
    computed = reused = 0
    seconds = 0.0
    counts: list[int] = []
    pairs: list[tuple[Regions, np.ndarray]] = []
    for done, sample in enumerate(samples, start=1):
        image = dataset.image(sample)
        start = time.perf_counter()
        regions, fresh = cached_regions(sample.image_path, image, params, out)
        if fresh:
            computed += 1
            seconds += time.perf_counter() - start
        else:
            reused += 1
        counts.append(regions.count)
        truth = dataset.truth(sample)
        if truth is not None:
            pairs.append((regions, truth))
        if progress is not None:
            progress(done, len(samples))
    summary: dict = {
        "params": params.key(),
        "images": len(samples),
        "computed": computed,
        "reused": reused,
        "seconds_per_computed_image": seconds / computed if computed else None,
        "regions_per_image": float(np.mean(counts)) if counts else 0.0,
        "recall": None,
    }
    if pairs:
        scores = proposal_recall(pairs, dataset.table.num_classes)
        summary["recall"] = {"images": len(pairs), **scores.as_dict(dataset.names)}
        write_json_atomic(out / RECALL_FILE.format(method=params.method), summary)
    return summary


__all__ = ["RECALL_FILE", "write_proposals"]

"""The training-time validation MaxF (semseg.metrics.road) against the devkit computation
(semseg.metrics.kitti) and a brute-force count, with ignored pixels, in one and two processes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from semseg.config import IGNORE_INDEX
from semseg.metrics.kitti import KittiRoadEvaluator, RoadCounts, image_counts
from semseg.metrics.road import RoadMaxF


def make_batch(seed: int, images: int = 3, height: int = 17, width: int = 23):
    """Confidences with exact half-levels (rounding ties), labels with ignored pixels."""
    rng = np.random.default_rng(seed)
    confidence = rng.random((images, height, width)).astype(np.float32)
    confidence[:, 0, :5] = (np.arange(5) + 0.5) / 255  # ties: rounded half to even
    target = (rng.random((images, height, width)) < 0.4).astype(np.int64)
    target[rng.random((images, height, width)) < 0.2] = IGNORE_INDEX
    return confidence, target


def brute_force_maxf(confidence: np.ndarray, target: np.ndarray) -> float:
    """The devkit's MaxF counted threshold by threshold over the valid pixels (in percent)."""
    valid = target != IGNORE_INDEX
    levels = np.round(confidence[valid].astype(np.float64) * 255)
    road = target[valid] == 1
    best = 0.0
    for k in range(256):
        predicted = levels >= k
        tp = np.sum(predicted & road)
        fp = np.sum(predicted & ~road)
        recall = tp / road.sum()
        precision = tp / (tp + fp + 1e-10)
        if recall == 0 and precision == 0:
            continue
        best = max(best, 2 * precision * recall / (precision + recall + 1e-10))
    return 100 * best


def devkit_maxf(confidence: np.ndarray, target: np.ndarray) -> float:
    evaluator = KittiRoadEvaluator()
    for conf, mask in zip(confidence, target, strict=True):
        evaluator.update("um", conf, mask == 1, mask != IGNORE_INDEX)
    return evaluator.compute()["all"].max_f


def streaming_maxf(batches) -> float:
    metric = RoadMaxF()
    for confidence, target in batches:
        metric.update(torch.from_numpy(confidence), torch.from_numpy(target))
    return float(metric.compute()["max_f"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_streaming_maxf_equals_the_devkit_on_the_same_pixels(seed: int):
    confidence, target = make_batch(seed)
    expected = devkit_maxf(confidence, target)
    assert expected == pytest.approx(brute_force_maxf(confidence, target), abs=1e-9)
    # Streamed in two batches, as validation does.
    batches = [(confidence[:1], target[:1]), (confidence[1:], target[1:])]
    assert streaming_maxf(batches) == pytest.approx(expected, abs=1e-9)
    metric = RoadMaxF()
    for conf, mask in batches:
        metric.update(torch.from_numpy(conf), torch.from_numpy(mask))
    devkit = sum(
        (
            image_counts(c, m == 1, m != IGNORE_INDEX)
            for c, m in zip(confidence, target, strict=True)
        ),
        RoadCounts.zeros(),
    )
    assert np.array_equal(metric.counts().pos_hist, devkit.pos_hist)  # ties rounded alike
    assert np.array_equal(metric.counts().neg_hist, devkit.neg_hist)


def test_ignored_pixels_do_not_count():
    confidence, target = make_batch(5)
    changed = confidence.copy()
    changed[target == IGNORE_INDEX] = 1.0 - changed[target == IGNORE_INDEX]
    assert streaming_maxf([(changed, target)]) == pytest.approx(
        streaming_maxf([(confidence, target)]), abs=1e-12
    )


def _rank(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    confidence, target = make_batch(10 + rank)  # each process validates its own images
    metric = RoadMaxF()
    metric.update(torch.from_numpy(confidence), torch.from_numpy(target))
    scores = metric.compute()  # synchronises: counts summed over both processes
    torch.save(
        {"max_f": float(scores["max_f"]), "pos": metric.pos_hist.clone()},
        Path(out_dir) / f"rank{rank}.pt",
    )
    dist.destroy_process_group()


def test_counts_are_summed_across_ddp_processes(tmp_path: Path):
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    mp.spawn(_rank, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    both = [make_batch(10 + rank) for rank in range(2)]
    confidence = np.concatenate([c for c, _ in both])
    target = np.concatenate([t for _, t in both])
    expected = devkit_maxf(confidence, target)
    alone = devkit_maxf(*both[0])
    assert abs(alone - expected) > 1e-6  # one process's images alone score differently
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert result["max_f"] == pytest.approx(expected, abs=1e-9), rank

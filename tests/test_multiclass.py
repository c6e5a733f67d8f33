"""Tests of the multi-class scores against hand calculations on hand-made masks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from semseg.metrics.multiclass import (
    ConfusionMatrix,
    confusion_matrix,
    predictions_at,
    scores_from_confusion,
    write_multiclass_outputs,
)

V = 255  # void

# Image 1 (3 x 4, two void pixels) and image 2 (2 x 2, all class 0, all right).
GT1 = np.array([[0, 0, 0, 1], [0, 1, 1, 1], [2, 2, V, V]])
PRED1 = np.array([[0, 0, 1, 1], [0, 1, 1, 2], [2, 0, 2, 0]])
GT2 = np.zeros((2, 2), dtype=np.int64)
PRED2 = np.zeros((2, 2), dtype=np.int64)


def accumulated() -> ConfusionMatrix:
    metric = ConfusionMatrix(3)
    for gt, pred in ((GT1, PRED1), (GT2, PRED2)):
        metric.update(torch.as_tensor(pred)[None], torch.as_tensor(gt)[None])
    return metric


def test_confusion_matrix_counts_by_hand() -> None:
    # class 0: 4 + 4 pixels, 7 right, 1 called class 1
    # class 1: 4 pixels, 3 right, 1 called class 2
    # class 2: 2 pixels, 1 right, 1 called class 0; the void pixels predicted 2 and 0 do not count
    expected = [[7, 1, 0], [0, 3, 1], [1, 0, 1]]
    assert accumulated().compute().tolist() == expected
    assert confusion_matrix(PRED1, GT1, 3).tolist() == [[3, 1, 0], [0, 3, 1], [1, 0, 1]]


def test_scores_by_hand() -> None:
    scores = accumulated().scores()
    # ground-truth totals G = 8, 4, 2; predicted totals P = 8, 4, 2; TP = 7, 3, 1; 14 pixels
    iou = [7 / (8 + 8 - 7), 3 / (4 + 4 - 3), 1 / (2 + 2 - 1)]
    accuracy = [7 / 8, 3 / 4, 1 / 2]
    assert scores.iou == pytest.approx([100 * v for v in iou])
    assert scores.accuracy == pytest.approx([87.5, 75.0, 50.0])
    assert scores.miou == pytest.approx(100 * (7 / 9 + 3 / 5 + 1 / 3) / 3)  # 57.04
    assert scores.mean_accuracy == pytest.approx(100 * sum(accuracy) / 3)  # 70.83
    assert scores.global_accuracy == pytest.approx(100 * 11 / 14)  # 78.57
    assert scores.fw_iou == pytest.approx(100 * (8 * 7 / 9 + 4 * 3 / 5 + 2 * 1 / 3) / 14)
    assert scores.pixels == 14
    summary = scores.summary()
    assert set(summary) == {"miou", "mean_acc", "global_acc", "fwiou"}
    assert summary["miou"] == pytest.approx(57.037, abs=1e-3)


def test_absent_class_is_left_out_of_the_means() -> None:
    # class 3 never occurs; class 2 is predicted once but never in the ground truth
    matrix = np.array([[3, 0, 1, 0], [0, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    scores = scores_from_confusion(matrix)
    assert math.isnan(scores.iou[3]) and math.isnan(scores.accuracy[3])
    assert scores.iou[2] == 0.0 and math.isnan(scores.accuracy[2])
    assert scores.miou == pytest.approx(100 * (3 / 4 + 1 + 0) / 3)
    assert scores.mean_accuracy == pytest.approx(100 * (3 / 4 + 1) / 2)
    assert scores.global_accuracy == pytest.approx(100 * 5 / 6)
    payload = scores.as_dict(["a", "b", "c", "d"])
    assert payload["per_class"]["d"] == {"iou": None, "accuracy": None}
    json.dumps(payload, allow_nan=False)  # valid JSON: no NaN
    table = scores.markdown(["a", "b", "c", "d"])
    assert "| d | - | - |" in table and "| a | 75.00 | 75.00 |" in table
    empty = scores_from_confusion(np.zeros((2, 2)))
    assert math.isnan(empty.miou) and math.isnan(empty.global_accuracy) and empty.pixels == 0


def test_full_resolution_update_upsamples_the_logits() -> None:
    logits = torch.zeros(1, 3, 1, 2)
    logits[0, 0, 0, 0] = 5.0  # left half: class 0
    logits[0, 1, 0, 1] = 5.0  # right half: class 1
    assert predictions_at(logits, (2, 4)).tolist() == [[[0, 0, 1, 1], [0, 0, 1, 1]]]
    target = torch.tensor([[[0, 0, 1, 1], [0, 2, 1, V]]])
    metric = ConfusionMatrix(3)
    metric.update_full_resolution(logits, target)
    assert metric.compute().tolist() == [[3, 0, 0], [0, 3, 0], [1, 0, 0]]


def test_update_arrays_and_evaluation_outputs(tmp_path: Path) -> None:
    metric = ConfusionMatrix(3)
    metric.update_arrays(PRED1, GT1)
    metric.update_arrays(PRED2.astype(np.uint8), GT2.astype(np.uint8))
    assert metric.compute().tolist() == accumulated().compute().tolist()
    names = ["sky", "road", "car"]
    scores = write_multiclass_outputs(tmp_path / "eval", metric.compute(), names)
    assert scores.miou == pytest.approx(100 * (7 / 9 + 3 / 5 + 1 / 3) / 3)
    payload = json.loads((tmp_path / "eval" / "multiclass.json").read_text())
    assert payload["confusion"] == [[7, 1, 0], [0, 3, 1], [1, 0, 1]]
    assert payload["per_class"]["road"]["accuracy"] == 75.0 and payload["classes"] == names
    assert "| car | 33.33 | 50.00 |" in (tmp_path / "eval" / "multiclass.md").read_text()
    for figure in ("confusion.png", "class_iou.png"):
        assert (tmp_path / "eval" / figure).stat().st_size > 1000

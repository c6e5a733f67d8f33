"""Tests of median-frequency class balancing on hand-made masks."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from semseg.errors import SemsegError
from semseg.tasks.balancing import (
    MedianFrequency,
    load_class_weights,
    median_frequency_weights,
    save_class_weights,
)
from semseg.tasks.recipe import segmentation_loss

V = 255


def test_median_frequency_by_hand() -> None:
    # mask A (2 x 4 = 8 pixels): five of class 0, two of class 1, one void
    a = np.array([[0, 0, 0, 0], [0, 1, 1, V]], dtype=np.uint8)
    # mask B (1 x 4 = 4 pixels): one of class 0, three of class 2
    b = np.array([[0, 2, 2, 2]], dtype=np.uint8)
    # freq_0 = 6 / (8 + 4) = 1/2; freq_1 = 2 / 8 = 1/4 (only A has it); freq_2 = 3 / 4
    # median of (1/2, 1/4, 3/4) = 1/2 -> weights 1, 2, 2/3; class 3 occurs nowhere -> 0
    counter = MedianFrequency(4)
    for mask in (a, b):
        counter.update(mask)
    np.testing.assert_allclose(counter.frequencies()[:3], [1 / 2, 1 / 4, 3 / 4])
    assert np.isnan(counter.frequencies()[3])
    weights = median_frequency_weights([a, b], num_classes=4)
    assert weights.dtype == np.float32
    np.testing.assert_allclose(weights, [1.0, 2.0, 2 / 3, 0.0], rtol=1e-6)
    # an even number of present classes: the median is the mean of the middle two
    np.testing.assert_allclose(
        median_frequency_weights([a], num_classes=2), [(5 / 8 + 2 / 8) / 2 / (5 / 8), 1.75]
    )
    with pytest.raises(SemsegError, match="no labels"):
        median_frequency_weights([np.full((2, 2), V, np.uint8)], num_classes=2)


def test_weights_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "run" / "class_weights.json"
    save_class_weights(path, np.array([0.5, 2.0], np.float32), ["road", "car"])
    np.testing.assert_allclose(load_class_weights(path, ["road", "car"]), [0.5, 2.0])
    with pytest.raises(SemsegError, match=r"class_weights\.json: class weights are for classes"):
        load_class_weights(path, ["road", "sky"])
    path.write_text("{}")
    with pytest.raises(SemsegError, match="not a class weights file"):
        load_class_weights(path)
    with pytest.raises(SemsegError, match="not found"):
        load_class_weights(tmp_path / "none.json")


def test_class_weights_weight_the_cross_entropy_by_hand() -> None:
    # three pixels: class 0 with logits (2, 0), class 1 with logits (0, 0), one void pixel
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0], [5.0, -5.0]]).T.reshape(1, 2, 1, 3)
    target = torch.tensor([[[0, 1, V]]])
    loss_a, loss_b = math.log(1 + math.exp(-2)), math.log(2)
    weights = torch.tensor([1.0, 3.0])
    expected = (1.0 * loss_a + 3.0 * loss_b) / (1.0 + 3.0)  # PyTorch: weighted mean
    value = segmentation_loss(logits, target, "ce", V, class_weights=weights).item()
    assert value == pytest.approx(expected, rel=1e-6)
    plain = segmentation_loss(logits, target, "ce", V).item()
    assert plain == pytest.approx((loss_a + loss_b) / 2, rel=1e-6)


def test_training_with_median_frequency_uses_and_keeps_the_weights(tmp_path):
    """train.class_weights=median_frequency: weights of the run's training masks, computed here
    independently, saved in class_weights.json and the checkpoint, and used by the loss."""
    import json

    import torch
    import torch.nn.functional as F
    from conftest import tiny_config

    from semseg.data.datamodule import make_reader
    from semseg.data.kitti import index_split
    from semseg.inference.checkpoint import read_checkpoint
    from semseg.tasks.segmentation import SegmentationTask
    from semseg.training import train

    config = tiny_config(tmp_path, epochs=1, class_weights="median_frequency")
    run_dir = train(config)
    saved = json.loads((run_dir / "class_weights.json").read_text())
    weights = [entry["weight"] for entry in saved["classes"]]
    hparams = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["hyper_parameters"]
    assert hparams["class_weights"] == pytest.approx(weights)

    train_names = set(json.loads((run_dir / "split.json").read_text())["train"])
    resolved = json.loads(json.dumps(config.data.__dict__))
    resolved.update(kind="kitti", root=str(run_dir / "data"))
    from semseg.config import DataConfig

    reader = make_reader(DataConfig(**resolved), 2)
    # frequency of a class: its pixels over all pixels of the training images that hold it
    counts, present_totals = np.zeros(2), np.zeros(2)
    for sample in index_split(run_dir / "data", "training"):
        if sample.name not in train_names:
            continue
        mask = reader(sample)[1]
        for c in range(2):
            pixels = (mask == c).sum()
            counts[c] += pixels
            present_totals[c] += mask.size if pixels else 0
    frequency = counts / present_totals
    assert weights == pytest.approx(np.median(frequency) / frequency, rel=1e-4)

    task = SegmentationTask(
        num_classes=2, model_options={"width_mult": 0.125}, class_weights=weights
    )
    logits, target = torch.randn(1, 2, 4, 4), torch.randint(0, 2, (1, 4, 4))
    expected = F.cross_entropy(logits, target, weight=torch.tensor(weights), ignore_index=255)
    assert torch.allclose(task.loss(logits, target), expected)

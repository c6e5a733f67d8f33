"""Hypercolumns (Hariharan et al., CVPR 2015): K = 1 is a plain per-pixel classifier, the K x K
location-specific classifiers are mixed by bilinear weights checked by hand, ``model.grid``
reaches the model from the configuration, and the model trains and evaluates end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config, write_multiclass_folder

from semseg.config import load_config, validate
from semseg.errors import SemsegError
from semseg.models import build_model
from semseg.models.hypercolumn import grid_weights, mix_grid

pytestmark = pytest.mark.usefixtures("single_thread")
SMALL = 0.125


def hypercolumn(grid: int, classes: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model("hypercolumn", classes, grid=grid, width_mult=SMALL).eval()
    with torch.no_grad():  # informative scores (the fresh classifier is nearly zero)
        torch.nn.init.normal_(model.classifier.weight, std=0.5)
        torch.nn.init.normal_(model.classifier.bias, std=0.5)
    return model


def test_k1_equals_a_per_pixel_classifier_with_the_same_weights() -> None:
    model = hypercolumn(grid=1)
    image = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        features = model.hypercolumns((image - model.mean) / model.std)  # (N, D, 16, 24)
        weight = model.classifier.weight[:, :, 0, 0]  # (C, D)
        # the same linear classifier applied to every pixel's hypercolumn, independently
        per_pixel = torch.einsum("cd,ndhw->nchw", weight, features)
        per_pixel = per_pixel + model.classifier.bias.view(1, -1, 1, 1)
        expected = F.interpolate(per_pixel, size=(64, 96), mode="bilinear", align_corners=False)
        got = model(image)
    assert got.shape == (2, 3, 64, 96)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    with torch.no_grad():  # and exactly the classifier's scores: no mixing at all for K = 1
        assert torch.equal(model(image), model.grid_scores((image - model.mean) / model.std))


def test_k2_with_four_copies_of_one_classifier_equals_k1() -> None:
    one, two = hypercolumn(grid=1), hypercolumn(grid=2, seed=1)
    state = {k: v for k, v in one.state_dict().items() if not k.startswith("classifier")}
    two.load_state_dict(state, strict=False)
    with torch.no_grad():
        two.classifier.weight.copy_(one.classifier.weight.repeat(4, 1, 1, 1))
        two.classifier.bias.copy_(one.classifier.bias.repeat(4))
        image = torch.rand(1, 3, 64, 64)
        torch.testing.assert_close(two(image), one(image), rtol=0, atol=1e-5)


def hand_weight(position: int, size: int, grid: int, cell: int) -> float:
    """Bilinear weight of cell ``cell``'s centre at pixel ``position`` (clamped at the ends)."""
    u = min(max((position + 0.5) * grid / size - 0.5, 0.0), grid - 1.0)
    return max(0.0, 1.0 - abs(u - cell))


def test_grid_weights_by_hand() -> None:
    weights = grid_weights(2, 4, 8, torch.zeros(1))  # (1, 4, H=4, W=8)
    # columns 0, 3, 5, 7 of an 8-wide image: u = -0.375 (clamped), 0.375, 0.875, 1.375 (clamped)
    expected_columns = {0: (1.0, 0.0), 3: (0.625, 0.375), 5: (0.125, 0.875), 7: (0.0, 1.0)}
    for x, (left, right) in expected_columns.items():
        for y in range(4):
            top = hand_weight(y, 4, 2, 0)
            assert weights[0, :, y, x].tolist() == pytest.approx(
                [top * left, top * right, (1 - top) * left, (1 - top) * right]
            )
    assert torch.allclose(weights.sum(dim=1), torch.ones(1, 4, 8))


def test_k2_scores_are_the_hand_interpolation_of_the_four_classifiers() -> None:
    model, classes, height, width = hypercolumn(grid=2), 3, 64, 96
    image = torch.rand(1, 3, height, width)
    with torch.no_grad():
        scores = model.grid_scores((image - model.mean) / model.std)  # (1, 4 * 3, H, W)
        out = model(image)
    for y, x in ((0, 0), (10, 50), (31, 47), (40, 20), (63, 95), (16, 24)):
        for c in range(classes):
            expected = sum(
                hand_weight(y, height, 2, i)
                * hand_weight(x, width, 2, j)
                * float(scores[0, (i * 2 + j) * classes + c, y, x])
                for i in range(2)
                for j in range(2)
            )
            assert float(out[0, c, y, x]) == pytest.approx(expected, abs=1e-5)
    # a pixel in a corner beyond the centres is scored by that corner's classifier alone
    assert torch.allclose(out[0, :, 0, 0], scores[0, 0:classes, 0, 0], atol=1e-6)
    assert torch.allclose(out[0, :, -1, -1], scores[0, 3 * classes :, -1, -1], atol=1e-6)


def test_mix_grid_k1_returns_the_scores_themselves() -> None:
    scores = torch.rand(2, 5, 7, 9)
    assert mix_grid(scores, 1, 5) is scores


def test_grid_option_from_the_configuration_and_refusals() -> None:
    config = load_config("camvid_fast_cpu")
    config.data.root = "somewhere"
    config.model.name, config.model.grid = "hypercolumn", 3
    validate(config)
    from semseg.training import build_task

    task = build_task(config)
    assert task.model.grid == 3 and task.model.encoder.arch == "MobileNetV3-Large"
    assert task.model.classifier.out_channels == 9 * 11
    config.model.grid = 0
    with pytest.raises(SemsegError, match="model.grid"):
        validate(config)
    with pytest.raises(SemsegError, match="grid"):
        build_model("fcn8s", 2, width_mult=SMALL, grid=2)  # a model without a grid refuses it
    with pytest.raises(SemsegError, match="grid"):
        build_model("hypercolumn", 2, width_mult=SMALL, grid=17)


def test_hypercolumn_trains_and_evaluates_on_tiny_multiclass_data(tmp_path: Path) -> None:
    from semseg.training import train

    data = write_multiclass_folder(tmp_path / "data")
    config = tiny_config(tmp_path / "runs", epochs=2, lr=3e-3)
    config.data.kind, config.data.root = "folder", str(data)
    config.data.height, config.data.width = 32, 48
    config.model.name, config.model.grid = "hypercolumn", 2
    config.train.overlay_samples = 1
    run = train(config)
    results = json.loads((run / "eval_val.json").read_text())
    assert results["task"] == "multiclass" and results["num_images"] == 4
    assert 0.0 <= results["groups"]["all"]["miou"] <= 100.0
    hparams = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)["hyper_parameters"]
    assert hparams["model_name"] == "hypercolumn" and hparams["model_options"]["grid"] == 2

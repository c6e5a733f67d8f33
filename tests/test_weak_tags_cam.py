"""Class activation maps on constructed feature maps, the GAP classifier's identity, and the
pseudo-labels' thresholds, CRF refinement, PNG output and scoring."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from semseg.errors import SemsegError
from semseg.inference.crf import CRFParams, backend_available
from semseg.weak.cam import (
    CAMClassifier,
    CAMThresholds,
    cam_labels_for_image,
    cam_pseudo_labels,
    class_activation_maps,
    crf_class_maps,
    normalise_cams,
    pseudo_label_confusion,
    upsample_cams,
    write_cam_pseudo_labels,
    write_label_png,
)


def test_cam_on_a_constructed_feature_map():
    features = torch.tensor([[[[1.0, 2.0], [0.0, -1.0]], [[0.0, 1.0], [3.0, 1.0]]]])  # (1,2,2,2)
    weight = torch.tensor([[1.0, -1.0], [0.5, 2.0]])
    maps = class_activation_maps(features, weight)
    # class 0: f0 - f1 = [[1, 1], [-3, -2]] -> ReLU; class 1: 0.5 f0 + 2 f1 = [[0.5, 3], [6, 1.5]]
    expected = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]], [[0.5, 3.0], [6.0, 1.5]]]])
    torch.testing.assert_close(maps, expected)
    normalised = normalise_cams(maps)
    torch.testing.assert_close(normalised[0, 1], expected[0, 1] / 6.0)
    torch.testing.assert_close(normalised[0, 0], expected[0, 0])  # max already 1
    assert normalise_cams(torch.zeros(1, 2, 3, 3)).abs().sum() == 0  # zero maps stay zero


def test_upsampling_puts_cell_centres_on_pixel_centres():
    maps = torch.tensor([[[[2.0, 6.0]]]])  # one row of two cells at stride 4
    out = upsample_cams(maps, 4, (3, 7))  # cropped to 3x7
    assert out.shape == (1, 1, 3, 7)
    # pixel x sits at cell coordinate u = (x + 0.5) / 4 - 0.5, clamped to the cells
    u = np.clip((np.arange(7) + 0.5) / 4 - 0.5, 0, 1)
    np.testing.assert_allclose(out[0, 0, 0].numpy(), 2 * (1 - u) + 6 * u, rtol=1e-6)
    np.testing.assert_allclose(out[0, 0, 2].numpy(), out[0, 0, 0].numpy())


@pytest.fixture(scope="module")
def classifier() -> CAMClassifier:
    torch.manual_seed(0)
    return CAMClassifier(3, encoder="resnet18").eval()


def test_classifier_logits_are_gap_of_the_maps_plus_bias(classifier):
    images = torch.rand(2, 3, 50, 70)
    with torch.no_grad():
        features = classifier.features(images)
        logits = classifier(images)
    assert features.shape[-2:] == (2, 3)  # ceil(50/32), ceil(70/32)
    # Zhou et al.: s_c = sum_xy sum_d w_cd f_d(x, y) / (hw) + b_c (the maps before the ReLU)
    linear = torch.einsum("ndhw,kd->nkhw", features, classifier.classifier.weight)
    torch.testing.assert_close(logits, linear.mean(dim=(2, 3)) + classifier.classifier.bias)


def test_image_cams_upsample_normalise_and_drop_untagged_classes(classifier, monkeypatch):
    features = torch.zeros(1, classifier.classifier.in_features, 1, 2)
    features[0, 0] = torch.tensor([1.0, 3.0])
    features[0, 1] = torch.tensor([2.0, 0.0])
    with torch.no_grad():
        classifier.classifier.weight.zero_()
        classifier.classifier.weight[0, 0] = 1.0  # class 0 = f0
        classifier.classifier.weight[1, 1] = 1.0  # class 1 = f1
        classifier.classifier.weight[2, 0] = -1.0  # class 2 = ReLU(-f0) = 0
    monkeypatch.setattr(classifier, "features", lambda images: features)
    maps = classifier.image_cams(torch.rand(1, 3, 32, 64))
    assert maps.shape == (1, 3, 32, 64)
    u = np.clip((np.arange(64) + 0.5) / 32 - 0.5, 0, 1)
    np.testing.assert_allclose(maps[0, 0, 5].numpy(), (1 * (1 - u) + 3 * u) / 3, rtol=1e-5)
    np.testing.assert_allclose(maps[0, 1, 5].numpy(), 2 * (1 - u) / 2, rtol=1e-5, atol=1e-7)
    assert maps[0, 2].abs().sum() == 0
    tagged = classifier.image_cams(torch.rand(1, 3, 32, 64), torch.tensor([[0.0, 1.0, 0.0]]))
    assert tagged[0, 0].abs().sum() == 0
    torch.testing.assert_close(tagged[0, 1], maps[0, 1])


def test_cam_stride_is_checked():
    with pytest.raises(SemsegError, match="stride"):
        CAMClassifier(2, encoder="resnet18", stride=8)


# --- pseudo-labels ------------------------------------------------------------------------------

MAPS = np.array(
    [
        [[0.1, 0.3, 0.9, 0.0, 0.5]],
        [[0.15, 0.1, 0.2, 0.45, 0.6]],
        [[0.0, 0.0, 0.0, 0.0, 0.0]],
    ]
)


def test_pseudo_label_thresholds_without_background():
    labels = cam_pseudo_labels(MAPS, CAMThresholds(low=0.2, high=0.4))
    # max per pixel 0.15, 0.3, 0.9, 0.45, 0.6: below low and in the band are ignored
    assert labels.dtype == np.uint8
    assert labels.tolist() == [[255, 255, 0, 1, 1]]
    assert cam_pseudo_labels(MAPS, CAMThresholds(0.5, 0.5)).tolist() == [[255, 255, 0, 255, 1]]


def test_pseudo_label_thresholds_with_a_background_class():
    labels = cam_pseudo_labels(MAPS, CAMThresholds(low=0.2, high=0.4, background=0))
    # class 0's map is not used: max 0.15, 0.1, 0.2, 0.45, 0.6
    assert labels.tolist() == [[0, 0, 255, 1, 1]]
    with pytest.raises(SemsegError, match="background class 3"):
        cam_pseudo_labels(MAPS, CAMThresholds(background=3))


@pytest.mark.parametrize(("low", "high"), [(0.5, 0.4), (-0.1, 0.2), (0.2, 1.2)])
def test_thresholds_are_checked(low, high):
    with pytest.raises(SemsegError, match="low <= high"):
        CAMThresholds(low=low, high=high)


def three_regions() -> tuple[np.ndarray, np.ndarray]:
    image = np.zeros((8, 12, 3), np.uint8)
    image[:, :4] = (220, 20, 20)
    image[:, 4:8] = (20, 220, 20)
    image[:, 8:] = (20, 20, 220)
    maps = np.zeros((3, 8, 12), np.float32)
    maps[1, :, :4] = 1.0
    maps[2, :, 4:8] = 0.9
    maps[1, 2, 5] = 0.5  # a stray bit of class 1 inside class 2's region
    return image, maps


@pytest.mark.skipif(not backend_available(), reason="pydensecrf2 (the crf extra) not installed")
def test_crf_refinement_keeps_clear_regions_and_the_nothing_region():
    image, maps = three_regions()
    refined = crf_class_maps(image, maps, None, CRFParams())
    assert refined.shape == (3, 8, 12)
    labels = cam_pseudo_labels(refined, CAMThresholds(low=0.2, high=0.4))
    expected = np.full((8, 12), 255, np.uint8)
    expected[:, :4] = 1
    expected[:, 4:8] = 2
    np.testing.assert_array_equal(labels, expected)
    with_background = crf_class_maps(image, maps, 0, CRFParams())
    labels = cam_pseudo_labels(with_background, CAMThresholds(0.2, 0.4, background=0))
    expected[:, 8:] = 0
    np.testing.assert_array_equal(labels, expected)


def test_cam_labels_for_image_use_only_tagged_classes(classifier):
    image = (np.random.default_rng(0).random((40, 48, 3)) * 255).astype(np.uint8)
    labels = cam_labels_for_image(classifier, image, np.array([0.0, 1.0, 1.0]),
                                  CAMThresholds(0.1, 0.3))  # fmt: skip
    assert labels.shape == (40, 48) and labels.dtype == np.uint8
    assert set(np.unique(labels)) <= {1, 2, 255}
    assert (labels != 255).any()  # each tagged map peaks at 1 somewhere
    assert not classifier.training


def test_label_png_round_trip_and_confusion(tmp_path):
    labels = np.array([[0, 1, 255], [1, 255, 0]], np.uint8)
    write_label_png(tmp_path / "labels" / "a.png", labels)
    read = np.asarray(Image.open(tmp_path / "labels" / "a.png"))
    np.testing.assert_array_equal(read, labels)
    assert not list((tmp_path / "labels").glob(".*"))
    with pytest.raises(ValueError):
        write_label_png(tmp_path / "b.png", labels.astype(np.int64))
    target = np.array([[0, 0, 1], [255, 1, 0]], np.uint8)
    matrix, labelled, valid = pseudo_label_confusion(labels, target, 2)
    # pixels labelled in both: (0,0) 0/0, (0,1) gt 0 -> 1, (1,2) 0/0
    np.testing.assert_array_equal(matrix, [[2, 1], [0, 0]])
    assert (labelled, valid) == (3, 5)


def test_write_cam_pseudo_labels_scores_against_ground_truth(classifier, tmp_path):
    rng = np.random.default_rng(1)
    images = [(rng.random((32, 40, 3)) * 255).astype(np.uint8) for _ in range(2)]
    target = np.zeros((32, 40), np.uint8)
    target[:, 20:] = 2
    target[0] = 255
    items = [
        ("a", images[0], np.array([0.0, 0.0, 1.0]), target),
        ("b", images[1], np.array([1.0, 0.0, 0.0]), None),
    ]
    thresholds = CAMThresholds(0.1, 0.3)
    summary = write_cam_pseudo_labels(classifier, items, tmp_path / "labels", thresholds)
    assert summary.images == 2
    written = {p.name for p in (tmp_path / "labels").iterdir()}
    assert written == {"a.png", "b.png"}
    a = np.asarray(Image.open(tmp_path / "labels" / "a.png"))
    np.testing.assert_array_equal(
        a, cam_labels_for_image(classifier, images[0], items[0][2], thresholds)
    )
    assert set(np.unique(a)) <= {2, 255}
    assert set(np.unique(np.asarray(Image.open(tmp_path / "labels" / "b.png")))) <= {0, 255}
    # scored on image a only: every labelled pixel says class 2
    assert summary.valid == 31 * 40
    assert summary.labelled == int(((a != 255) & (target != 255)).sum())
    assert summary.matrix[:, [0, 1]].sum() == 0
    assert summary.matrix[2, 2] == int(((a == 2) & (target == 2)).sum())
    assert summary.coverage == pytest.approx(summary.labelled / summary.valid)

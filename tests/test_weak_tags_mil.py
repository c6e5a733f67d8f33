"""MIL with Log-Sum-Exp pooling: the pooling against its limits and a direct calculation, the
multi-label loss, and the paper's inference (image prior, superpixel smoothing) on hand-made
score maps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from semseg.errors import SemsegError
from semseg.weak.mil import (
    MILInference,
    MILSegmenter,
    apply_image_prior,
    apply_tiled_prior,
    check_prior_tiles,
    lse_pool,
    mil_labels,
    mil_loss,
    mil_probabilities,
    prior_tiles_for,
    segment_mean,
    superpixels,
    tile_slices,
)


def random_scores(seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, 5, 7, generator=generator, dtype=torch.float64)


def direct_lse(scores: np.ndarray, r: float) -> np.ndarray:
    """(1/r) log(mean exp(r s)) written out naively (fine for small scores)."""
    n, c = scores.shape[:2]
    out = np.empty((n, c))
    for i in range(n):
        for k in range(c):
            values = scores[i, k].reshape(-1)
            out[i, k] = math.log(sum(math.exp(r * v) for v in values) / len(values)) / r
    return out


@pytest.mark.parametrize("r", [0.5, 1.0, 5.0, 20.0])
def test_lse_pool_matches_the_direct_formula(r):
    scores = random_scores()
    np.testing.assert_allclose(
        lse_pool(scores, r).numpy(), direct_lse(scores.numpy(), r), atol=1e-9
    )


def test_lse_pool_limits_are_mean_and_max():
    scores = random_scores(1)
    mean = scores.mean(dim=(2, 3))
    maximum = scores.amax(dim=(2, 3))
    np.testing.assert_allclose(lse_pool(scores, 1e-6), mean, atol=1e-5)
    # (1/r) log(mean exp(r s)) lies in [max - log(N)/r, max]
    pooled = lse_pool(scores, 1e4)
    assert torch.all(pooled <= maximum + 1e-12)
    assert torch.all(pooled >= maximum - math.log(35) / 1e4)
    # and between the two, monotone in r
    values = [lse_pool(scores, r) for r in (0.1, 1.0, 10.0)]
    assert torch.all(mean <= values[0] + 1e-12)
    assert torch.all(values[0] <= values[1]) and torch.all(values[1] <= values[2])


def test_lse_pool_is_stable_for_large_scores():
    scores = torch.full((1, 2, 4, 4), 1000.0)
    scores[0, 1, 0, 0] = 1010.0
    pooled = lse_pool(scores, 10.0)
    assert torch.isfinite(pooled).all()
    assert pooled[0, 0].item() == pytest.approx(1000.0)
    # one pixel 10 above the 15 others: 1000 + log((15 + e^100) / 16) / 10
    expected = 1000 + (100 + math.log1p(15 * math.exp(-100)) - math.log(16)) / 10
    assert pooled[0, 1].item() == pytest.approx(expected, abs=1e-3)  # float32 at 1000


def test_lse_r_must_be_positive():
    for bad in (0, -1.0, float("inf"), float("nan")):
        with pytest.raises(SemsegError, match="lse_r"):
            lse_pool(random_scores(), bad)


def test_mil_loss_is_per_class_sigmoid_bce():
    scores = torch.tensor([[2.0, -1.0, 0.0]])
    tags = torch.tensor([[1.0, 0.0, 1.0]])
    sigmoid = [1 / (1 + math.exp(-v)) for v in (2.0, -1.0, 0.0)]
    expected = -(math.log(sigmoid[0]) + math.log(1 - sigmoid[1]) + math.log(sigmoid[2])) / 3
    assert mil_loss(scores, tags).item() == pytest.approx(expected, rel=1e-6)


def test_mil_segmenter_wraps_a_registry_model_and_pools():
    segmenter = MILSegmenter("fcn8s", num_classes=3, lse_r=2.0, model_options={"width_mult": 0.125})
    images = torch.rand(2, 3, 40, 56)
    pixel, pooled = segmenter.scores(images)
    assert pixel.shape == (2, 3, 40, 56)
    assert pooled.shape == (2, 3)
    torch.testing.assert_close(pooled, lse_pool(pixel, 2.0))
    torch.testing.assert_close(segmenter(images), pixel)

    class Constant(torch.nn.Module):
        def forward(self, images):
            scores = torch.zeros(images.shape[0], 2, *images.shape[-2:])
            scores[:, 1, 0, 0] = 4.0
            return scores

    wrapped = MILSegmenter(num_classes=2, lse_r=1.0, model=Constant())
    pooled = wrapped.scores(torch.rand(1, 3, 2, 2))[1]
    # class 1: log((e^4 + 3) / 4)
    assert pooled[0, 1].item() == pytest.approx(math.log((math.exp(4) + 3) / 4), rel=1e-6)


# --- inference ---------------------------------------------------------------------------------


def test_image_prior_multiplies_and_renormalises():
    probabilities = torch.tensor([[[0.4, 0.5]], [[0.6, 0.5]]])  # (C=2, H=1, W=2)
    prior = torch.tensor([0.9, 0.3])
    out = apply_image_prior(probabilities, prior)
    # pixel 0: 0.36 vs 0.18 -> 2/3, 1/3; pixel 1: 0.45 vs 0.15 -> 3/4, 1/4
    torch.testing.assert_close(out, torch.tensor([[[2 / 3, 0.75]], [[1 / 3, 0.25]]]))
    zero = apply_image_prior(probabilities, torch.zeros(2))
    torch.testing.assert_close(zero, torch.full_like(probabilities, 0.5))


def test_image_prior_flips_a_pixel_of_an_unlikely_class():
    # class 1 wins pixel 0 (0.5 > 0) but is absent from the rest of the image
    scores = torch.tensor([[[0.0, 0.0, 0.0, 0.0]], [[0.5, -20.0, -20.0, -20.0]]])
    raw = mil_labels(scores, MILInference(lse_r=1.0, image_prior=False))
    assert raw.tolist() == [[1, 0, 0, 0]]
    # independent calculation: p(pixel 0) = softmax(0, 0.5); prior = sigmoid(LSE_1)
    pooled = [0.0, math.log((math.exp(0.5) + 3 * math.exp(-20)) / 4)]
    prior = [1 / (1 + math.exp(-v)) for v in pooled]
    p = [1 / (1 + math.exp(0.5)), math.exp(0.5) / (1 + math.exp(0.5))]
    weighted = [p[0] * prior[0], p[1] * prior[1]]
    assert weighted[0] > weighted[1]  # 0.1888 vs 0.1818
    probabilities = mil_probabilities(scores, MILInference(lse_r=1.0))
    assert probabilities[:, 0, 0] == pytest.approx(np.array(weighted) / sum(weighted), rel=1e-5)
    assert mil_labels(scores, MILInference(lse_r=1.0)).tolist() == [[0, 0, 0, 0]]


def test_tiles_cover_the_frame_once_in_nearly_equal_parts():
    tiles = tile_slices(7, 10, (2, 3))
    cover = np.zeros((7, 10), dtype=int)
    for rows, columns in tiles:
        cover[rows, columns] += 1
    assert len(tiles) == 6 and (cover == 1).all()
    heights = {rows.stop - rows.start for rows, _ in tiles}
    widths = {columns.stop - columns.start for _, columns in tiles}
    assert heights <= {3, 4} and widths <= {3, 4}
    assert tile_slices(5, 5, (1, 1)) == [(slice(0, 5), slice(0, 5))]


@pytest.mark.parametrize(
    ("extent", "tiles"),
    [((0.5, 0.5), (2, 2)), ((1.0, 1.0), (1, 1)), ((0.34, 0.26), (3, 4)), ((1e-4, 0.9), (64, 1))],
)
def test_prior_tiles_from_the_tags_extent(extent, tiles):
    assert prior_tiles_for(extent) == tiles


@pytest.mark.parametrize("bad", [(0, 1), (1, 65), (2.0, 2), (True, 1), (1, 2, 3), "2x2"])
def test_bad_prior_tiles_are_refused(bad):
    with pytest.raises(SemsegError, match="prior tiles must be two whole numbers"):
        check_prior_tiles(bad)
    with pytest.raises(SemsegError, match="prior tiles"):
        MILInference(prior_tiles=bad)


def test_tiled_prior_judges_each_tile_by_its_own_pooled_scores():
    """Class 1 is strong in the left half (a crop where it is tagged) and faintly ahead in one
    pixel of the right half, where it is absent: the right tile's own prior removes it there,
    the whole frame's prior (lifted by the left half) does not."""
    r = 1.0
    scores = torch.zeros(2, 2, 4)
    scores[1, :, :2] = 6.0  # left tile: class 1 everywhere
    scores[1, :, 2:] = -6.0  # right tile: class 1 absent ...
    scores[1, 0, 3] = 0.3  # ... except one pixel it wins by a little
    probabilities = scores.softmax(dim=0)

    def by_hand(tile: np.ndarray, pixel: np.ndarray) -> np.ndarray:
        pooled = [math.log(np.exp(r * tile[k]).mean()) / r for k in range(2)]
        prior = np.array([1 / (1 + math.exp(-v)) for v in pooled])
        weighted = pixel * prior
        return weighted / weighted.sum()

    tiled = apply_tiled_prior(probabilities, scores, r, (1, 2))
    frame = apply_tiled_prior(probabilities, scores, r, (1, 1))
    s, p = scores.double().numpy(), probabilities.double().numpy()
    expected = by_hand(s[:, :, 2:].reshape(2, -1), p[:, 0, 3])
    assert tiled[:, 0, 3].numpy() == pytest.approx(expected, rel=1e-5)
    assert tiled[:, 0, 0].numpy() == pytest.approx(
        by_hand(s[:, :, :2].reshape(2, -1), p[:, 0, 0]), rel=1e-5
    )
    assert frame[:, 0, 3].numpy() == pytest.approx(by_hand(s.reshape(2, -1), p[:, 0, 3]), rel=1e-5)
    assert int(tiled[:, 0, 3].argmax()) == 0 and int(frame[:, 0, 3].argmax()) == 1
    assert mil_labels(scores, MILInference(lse_r=r, prior_tiles=(1, 2)))[0].tolist() == [1, 1, 0, 0]


def test_segment_mean_on_a_hand_made_map():
    probabilities = np.array(
        [
            [[0.9, 0.2, 0.4], [0.7, 0.1, 0.3]],
            [[0.1, 0.8, 0.6], [0.3, 0.9, 0.7]],
        ]
    )
    segments = np.array([[5, 2, 2], [5, 2, 9]])  # any integer ids, segment 2 not contiguous rows
    out = segment_mean(probabilities, segments)
    expected = np.array(
        [
            [[0.8, 0.25, 0.25], [0.8, 0.25, 0.3]],  # seg 5: (0.9+0.7)/2; seg 2: (0.2+0.4+0.1)/3
            [[0.2, 0.75, 0.75], [0.2, 0.75, 0.7]],
        ]
    )
    expected[0, 0, 1] = expected[0, 0, 2] = expected[0, 1, 1] = (0.2 + 0.4 + 0.1) / 3
    expected[1, 0, 1] = expected[1, 0, 2] = expected[1, 1, 1] = (0.8 + 0.6 + 0.9) / 3
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    with pytest.raises(SemsegError, match="do not match"):
        segment_mean(probabilities, segments[:, :2])
    with pytest.raises(SemsegError, match="integer"):
        segment_mean(probabilities, segments.astype(float))


def two_halves(height: int = 12, width: int = 16) -> np.ndarray:
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[:, : width // 2] = (200, 30, 30)
    image[:, width // 2 :] = (20, 40, 220)
    return image


@pytest.mark.parametrize(
    ("method", "params"),
    [("felzenszwalb", {"min_size": 5}), ("slic", {"n_segments": 2, "compactness": 0.1})],
)
def test_superpixels_follow_the_colour_edge(method, params):
    pytest.importorskip("skimage")
    segments = superpixels(two_halves(), method, **params)
    assert segments.shape == (12, 16)
    left, right = segments[:, :8], segments[:, 8:]
    assert not set(np.unique(left)) & set(np.unique(right))  # no segment crosses the edge


def test_smoothing_prior_removes_speckle_within_superpixels():
    pytest.importorskip("skimage")
    scores = torch.zeros(2, 12, 16)
    scores[0, :, :8] = 1.0  # class 0 on the left half ...
    scores[1, :, 8:] = 2.0  # class 1 on the right half ...
    scores[1, 3, 2] = 3.0  # ... plus one speckle on the left
    scores[0, 5, 12] = 5.0  # and one of class 0 on the right
    settings = MILInference(lse_r=1.0, image_prior=False)
    raw = mil_labels(scores, settings)
    assert raw[3, 2] == 1 and raw[5, 12] == 0
    smooth = MILInference(lse_r=1.0, image_prior=False, smoothing="felzenszwalb",
                          smoothing_params=(("min_size", 5),))  # fmt: skip
    labels = mil_labels(scores, smooth, image=two_halves())
    expected = np.zeros((12, 16), np.uint8)
    expected[:, 8:] = 1
    np.testing.assert_array_equal(labels, expected)
    # the same with segments given by the caller
    segments = np.zeros((12, 16), np.int64)
    segments[:, 8:] = 1
    np.testing.assert_array_equal(mil_labels(scores, settings, segments=segments), expected)


def test_inference_settings_are_checked():
    with pytest.raises(SemsegError, match="unknown smoothing"):
        MILInference(smoothing="watershed")
    with pytest.raises(SemsegError, match="needs the image"):
        mil_labels(torch.zeros(2, 3, 3), MILInference(smoothing="slic"))
    with pytest.raises(SemsegError, match="unknown superpixel method"):
        superpixels(two_halves(), "quickshift")


def test_lse_pool_of_half_precision_scores_is_float32():
    scores = random_scores(2).to(torch.bfloat16)
    pooled = lse_pool(scores, 5.0)
    assert pooled.dtype == torch.float32
    np.testing.assert_allclose(pooled.numpy(), direct_lse(scores.double().numpy(), 5.0), atol=1e-5)


def test_checkpoint_prior_tiles_default_to_the_frame_and_bad_ones_are_refused():
    from pathlib import Path

    from semseg.inference.checkpoint import checked_prior_tiles

    path = Path("run/best.ckpt")
    assert checked_prior_tiles(path, {"method": "mil", "lse_r": 2.0}) == (1, 1)  # older release
    assert checked_prior_tiles(path, {"method": "mil", "prior_tiles": [2, 3]}) == (2, 3)
    assert checked_prior_tiles(path, {"prior_tiles": [2, 3]}) == (1, 1)  # not a MIL model
    with pytest.raises(SemsegError, match=r"run/best.ckpt: prior tiles must be two whole"):
        checked_prior_tiles(path, {"method": "mil", "prior_tiles": [0, "a"]})

"""Simple Does It pseudo-labels on hand-made images whose right answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from semseg.errors import SemsegError
from semseg.weak import pseudolabels
from semseg.weak.boxes import Box
from semseg.weak.pseudolabels import (
    BACKGROUND,
    CLASS,
    UNSURE,
    PseudoLabelParams,
    box_i_map,
    compose,
    grabcut_foreground,
    inner_box,
    pseudo_label,
)

pytest.importorskip("cv2")
pytest.importorskip("skimage")

SQUARE = (slice(40, 80), slice(60, 100))  # rows, cols of the bright object
LOOSE = Box(57, 37, 103, 83, 1)  # the square with a 3-pixel margin


def square_image(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A bright 40x40 square on a dark, slightly noisy background, and its true mask."""
    rng = np.random.default_rng(seed)
    image = rng.normal(40, 8, (120, 160, 3)).clip(0, 255).astype(np.uint8)
    image[SQUARE] = rng.normal(210, 8, (40, 40, 3)).clip(0, 255).astype(np.uint8)
    truth = np.zeros((120, 160), dtype=bool)
    truth[SQUARE] = True
    return image, truth


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def outside(box: Box, shape: tuple[int, int]) -> np.ndarray:
    result = np.ones(shape, dtype=bool)
    result[box.slices] = False
    return result


def test_box_fills_the_rectangle_and_the_rest_is_background_or_ignored():
    image, _ = square_image()
    labels = pseudo_label(image, [LOOSE], "box", background=0)
    assert (labels[LOOSE.slices] == 1).all()
    assert (labels[outside(LOOSE, labels.shape)] == 0).all()
    labels = pseudo_label(image, [LOOSE], "box", background=None)  # CamVid: no background class
    assert (labels[LOOSE.slices] == 1).all()
    assert (labels[outside(LOOSE, labels.shape)] == 255).all()
    assert (pseudo_label(image, [], "box", background=0) == 0).all()


@pytest.mark.parametrize(("width", "height"), [(46, 46), (100, 10), (7, 3), (1, 1), (33, 58)])
def test_box_i_inner_area_is_twenty_percent(width, height):
    box = Box(5, 7, 5 + width, 7 + height, 2)
    inner = inner_box(box, 0.2)
    # each side is the box's side times sqrt(0.2), rounded (at least one pixel)
    expected_w = max(1, round(width * 0.2**0.5))
    expected_h = max(1, round(height * 0.2**0.5))
    assert (inner.width, inner.height) == (expected_w, expected_h)
    if width * height >= 100:
        assert abs(inner.area - 0.2 * box.area) <= 0.5 * (inner.width + inner.height) + 0.25
    # centred (to the pixel) and inside the box
    assert abs((inner.x0 - box.x0) - (box.x1 - inner.x1)) <= 1
    assert abs((inner.y0 - box.y0) - (box.y1 - inner.y1)) <= 1
    result = box_i_map(box, 0.2)
    assert (result == CLASS).sum() == inner.area
    assert (result == UNSURE).sum() == box.area - inner.area


def test_box_i_labels():
    image, truth = square_image()
    labels = pseudo_label(image, [LOOSE], "box-i", background=0)
    inner = inner_box(LOOSE)
    assert (labels[inner.slices] == 1).all()
    assert (labels == 1).sum() == inner.area == 21 * 21  # 46 * sqrt(0.2) = 20.6 -> 21
    assert ((labels == 255) == (~outside(LOOSE, labels.shape) & (labels != 1))).all()
    assert truth[labels == 1].all()  # the inner box lies on the object


def test_draw_order_largest_first_smaller_on_top():
    image, _ = square_image()
    large, small = Box(10, 10, 110, 100, 1), Box(50, 50, 70, 70, 2)
    for boxes in ([small, large], [large, small]):
        labels = pseudo_label(image, boxes, "box", background=0)
        assert (labels[small.slices] == 2).all()
        assert (labels == 1).sum() == large.area - small.area


def test_compose_background_of_a_smaller_box_does_not_erase_a_larger_box():
    large, small = Box(0, 0, 6, 6, 1), Box(2, 2, 4, 4, 2)
    small_map = np.array([[CLASS, BACKGROUND], [UNSURE, BACKGROUND]], dtype=np.int8)
    labels = compose((8, 8), [small, large], [small_map, np.full((6, 6), CLASS, np.int8)], 0)
    expected = np.zeros((8, 8), dtype=np.uint8)
    expected[:6, :6] = 1
    expected[2, 2], expected[3, 2] = 2, 255
    np.testing.assert_array_equal(labels, expected)


def test_grabcut_recovers_the_square():
    image, truth = square_image()
    labels = pseudo_label(image, [LOOSE], "grabcut", background=0)
    assert iou(labels == 1, truth) >= 0.95
    assert (labels[outside(LOOSE, labels.shape)] == 0).all()
    assert set(np.unique(labels)) == {0, 1}
    # the CamVid case: the box's non-object pixels are ignored, not a class
    labels = pseudo_label(image, [LOOSE], "grabcut", background=None)
    assert iou(labels == 1, truth) >= 0.95
    assert set(np.unique(labels)) == {1, 255}


def test_grabcut_without_context_falls_back_to_the_box():
    image, _ = square_image()
    whole = Box(0, 0, 160, 120, 1)
    assert grabcut_foreground(image, whole) is None
    assert (pseudo_label(image, [whole], "grabcut", background=0) == 1).all()


def test_grabcut_i_recovers_the_square_and_is_seeded():
    image, truth = square_image()
    params = PseudoLabelParams(jitter_runs=5, seed=3)
    labels = pseudo_label(image, [LOOSE], "grabcut-i", background=0, params=params)
    assert iou(labels == 1, truth) >= 0.9
    assert (labels[outside(LOOSE, labels.shape)] == 0).all()
    again = pseudo_label(image, [LOOSE], "grabcut-i", background=0, params=params)
    np.testing.assert_array_equal(labels, again)


def test_grabcut_i_agreement_thresholds(monkeypatch):
    box = Box(0, 0, 6, 1, 1)
    votes = np.array([[1.0, 0.7, 0.69, 0.2, 0.19, 0.0]])
    monkeypatch.setattr(pseudolabels, "grabcut_votes", lambda *args: votes)
    result = pseudolabels.grabcut_i_map(
        np.zeros((1, 6, 3), np.uint8), box, PseudoLabelParams(), None
    )
    expected = [CLASS, CLASS, UNSURE, UNSURE, BACKGROUND, BACKGROUND]
    np.testing.assert_array_equal(result[0], expected)


def test_candidates_picks_the_segment_of_the_square():
    image, truth = square_image()
    labels = pseudo_label(image, [LOOSE], "candidates", background=0)
    assert iou(labels == 1, truth) >= 0.85
    assert (labels[outside(LOOSE, labels.shape)] == 0).all()


def test_m_and_g_is_the_class_where_both_agree(monkeypatch):
    image, truth = square_image()
    labels = pseudo_label(image, [LOOSE], "m-and-g", background=0)
    assert truth[labels == 1].all() and (labels == 1).sum() >= 0.95 * truth.sum()
    in_box = ~outside(LOOSE, labels.shape)
    assert set(np.unique(labels[in_box & ~truth])) <= {255}
    # constructed disagreement: candidate = left half, GrabCut = top half -> top-left quadrant
    box = Box(0, 0, 4, 4, 1)
    left = np.zeros((4, 4), dtype=bool)
    left[:, :2] = True
    top = np.where(np.arange(4)[:, None] < 2, CLASS, BACKGROUND).repeat(4, 1).astype(np.int8)
    monkeypatch.setattr(pseudolabels, "candidate_mask", lambda segmentations, b: left)
    monkeypatch.setattr(pseudolabels, "grabcut_map", lambda img, b, params: top)
    result = pseudolabels.m_and_g_map(image, [], box, PseudoLabelParams())
    expected = np.full((4, 4), UNSURE)
    expected[:2, :2] = CLASS
    np.testing.assert_array_equal(result, expected)


def test_unknown_method_is_an_error():
    image, _ = square_image()
    with pytest.raises(SemsegError, match="--method must be one of box, box-i"):
        pseudo_label(image, [LOOSE], "mcg", background=0)


def test_crf_refinement_snaps_the_box_to_the_object():
    from semseg.inference.crf import backend_available

    if not backend_available():
        pytest.skip("pydensecrf2 (the crf extra) is not installed")
    image, truth = square_image()
    loose = Box(50, 30, 110, 90, 1)
    labels = pseudo_label(image, [loose], "box", background=0)
    refined = pseudolabels.refine_labels(image, labels, [loose], 2, background=0)
    assert iou(refined == 1, truth) > iou(labels == 1, truth) + 0.2
    assert (refined[outside(loose, labels.shape)] == 0).all()  # outside boxes unchanged


def test_candidates_for_boxes_include_the_square():
    from semseg.weak.segments import box_iou, candidates_for_boxes

    image, truth = square_image()
    pools = candidates_for_boxes(image, [LOOSE, Box(0, 0, 20, 20, 2)])
    assert len(pools) == 2 and all(pools)
    for candidate in pools[0]:
        assert candidate.mask.shape == (LOOSE.height, LOOSE.width)
    best = max(iou_in_box(c.mask, truth) for c in pools[0])
    assert best >= 0.85
    assert max(box_iou(LOOSE, c.tight) for c in pools[0]) > 0.7
    assert candidates_for_boxes(image, []) == []


def iou_in_box(mask: np.ndarray, truth: np.ndarray) -> float:
    full = np.zeros(truth.shape, dtype=bool)
    full[LOOSE.slices] = mask
    return iou(full, truth)


def test_grabcut_on_a_shrunk_context_still_finds_the_square():
    image, truth = square_image()
    params = PseudoLabelParams(grabcut_max_side=50)  # the 92x92 context shrunk to 50x50
    labels = pseudo_label(image, [LOOSE], "grabcut", background=0, params=params)
    assert iou(labels == 1, truth) >= 0.9
    assert (labels[outside(LOOSE, labels.shape)] == 0).all()

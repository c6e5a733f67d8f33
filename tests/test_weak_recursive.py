"""Simple Does It's reset rules between recursive rounds, and BoxSup's candidate choice."""

from __future__ import annotations

import math

import numpy as np
import pytest

from semseg.errors import SemsegError
from semseg.weak.boxes import Box
from semseg.weak.boxsup import boxsup_labels, candidate_cost, choose_candidate
from semseg.weak.recursive import enforce_boxes, reset_outliers, reset_round_labels, segment_iou
from semseg.weak.segments import Candidate, box_iou


def test_enforce_boxes_resets_pixels_outside_every_box():
    prediction = np.array(
        [
            [1, 1, 0, 2, 2],
            [1, 2, 0, 1, 2],
            [0, 1, 0, 2, 1],
        ],
        dtype=np.uint8,
    )
    boxes = [Box(0, 0, 2, 2, 1), Box(3, 0, 5, 2, 2)]  # class 1 top-left, class 2 top-right
    expected = np.array(
        [
            [1, 1, 0, 2, 2],  # class 2 in class 2's box: kept
            [1, 0, 0, 0, 2],  # a 2 in class 1's box and a 1 in class 2's box: background
            [0, 0, 0, 0, 0],  # outside every box: background
        ],
        dtype=np.uint8,
    )
    np.testing.assert_array_equal(enforce_boxes(prediction, boxes, background=0), expected)
    # without a background class those pixels are ignored instead; class 0 is then a class
    # like the others and stands only in its boxes
    ignored = enforce_boxes(prediction, boxes, background=None)
    np.testing.assert_array_equal(ignored, np.where(expected == 0, 255, expected))


def test_segment_iou_is_the_segments_share_of_its_box():
    labels = np.zeros((4, 4), dtype=np.uint8)
    labels[:2, :3] = 1
    assert segment_iou(labels, Box(0, 0, 4, 4, 1)) == 6 / 16
    assert segment_iou(labels, Box(0, 0, 3, 2, 1)) == 1.0


def test_outlier_reset_below_half_of_the_box():
    box = Box(0, 0, 4, 5, 1)  # 20 pixels
    initial = np.full((6, 6), 0, dtype=np.uint8)
    initial[box.slices] = 255
    initial[1:4, 1:3] = 1  # an inner-box initial label
    for covered, reset in ((9, True), (10, False), (11, False)):
        prediction = np.zeros((6, 6), dtype=np.uint8)
        rows, cols = np.divmod(np.arange(covered), 4)
        prediction[rows, cols] = 1
        result = reset_round_labels(prediction, [box], initial, background=0)
        expected = initial if reset else prediction
        np.testing.assert_array_equal(result, expected, err_msg=f"{covered} of 20 pixels")


def test_outlier_reset_smaller_boxes_on_top():
    large, small = Box(0, 0, 6, 6, 1), Box(1, 1, 3, 3, 2)
    initial = np.full((6, 6), 1, dtype=np.uint8)
    initial[small.slices] = 2
    prediction = np.zeros((6, 6), dtype=np.uint8)
    prediction[small.slices] = 2  # the small box is found, the large one is not
    result = reset_outliers(prediction, [small, large], initial)
    expected = np.ones((6, 6), dtype=np.uint8)
    expected[small.slices] = 2
    np.testing.assert_array_equal(result, expected)
    prediction[small.slices] = 1  # now the small box is lost inside a well-found large box
    prediction[:, :] = 1
    result = reset_outliers(prediction, [large, small], initial)
    np.testing.assert_array_equal(result, initial)


def test_reset_round_labels_checks_shapes():
    with pytest.raises(ValueError, match="differ"):
        reset_round_labels(np.zeros((2, 2), np.uint8), [], np.zeros((3, 3), np.uint8), 0)


# --- BoxSup -------------------------------------------------------------------------------------


def hand_cost(box_area, tight_area, inter, p_values, lam):
    """(1 - IoU) + lam * mean(-ln p), written out."""
    iou = inter / (box_area + tight_area - inter)
    ce = sum(-math.log(p) for p in p_values) / len(p_values)
    return (1 - iou) + lam * ce


def test_boxsup_cost_against_a_hand_calculation():
    probabilities = np.zeros((2, 4, 6), dtype=np.float64)
    probabilities[1] = [
        [0.9, 0.8, 0.7, 0.6, 0.5, 0.4],
        [0.3, 0.2, 0.1, 0.9, 0.8, 0.7],
        [0.5, 0.5, 0.5, 0.5, 0.5, 0.5],
        [0.25, 0.25, 0.25, 0.25, 0.25, 0.25],
    ]
    probabilities[0] = 1 - probabilities[1]
    box = Box(0, 0, 4, 3, 1)  # 12 pixels
    mask = np.zeros((3, 4), dtype=bool)
    mask[0, :2] = mask[1, 3] = True  # pixels p = 0.9, 0.8 and 0.9
    tight = Box(0, 0, 5, 2, -1)  # 10 pixels, overlap 4 x 2 = 8 with the box
    cost = candidate_cost(box, Candidate(mask, tight), probabilities, lam=3.0)
    assert box_iou(box, tight) == pytest.approx(8 / 14)
    assert cost == pytest.approx(hand_cost(12, 10, 8, [0.9, 0.8, 0.9], 3.0))
    # the background class's view of the same segment
    cost0 = candidate_cost(Box(0, 0, 4, 3, 0), Candidate(mask, tight), probabilities, lam=0.5)
    assert cost0 == pytest.approx(hand_cost(12, 10, 8, [0.1, 0.2, 0.1], 0.5))
    empty = Candidate(np.zeros((3, 4), dtype=bool), tight)
    assert candidate_cost(box, empty, probabilities) == math.inf


def ranked_candidates(count: int) -> tuple[Box, list[Candidate], np.ndarray]:
    """Candidates of one box whose cost rises with their index (worse overlap each time)."""
    box = Box(0, 0, 10, 10, 1)
    mask = np.ones((10, 10), dtype=bool)
    order = [3, 0, 6, 1, 5, 2, 4][:count]  # candidate i has rank order[i]
    candidates = [Candidate(mask, Box(0, 0, 10, 10 + 2 * rank, -1)) for rank in order]
    return box, candidates, np.array(order)


def test_boxsup_samples_among_the_five_cheapest_with_a_seeded_rng():
    box, candidates, rank = ranked_candidates(7)
    probabilities = np.full((2, 10, 10), 0.5)
    picks = {
        choose_candidate(box, candidates, probabilities, np.random.default_rng(seed))
        for seed in range(200)
    }
    assert {int(rank[i]) for i in picks} == {0, 1, 2, 3, 4}  # every one of the 5, nothing else
    first = choose_candidate(box, candidates, probabilities, np.random.default_rng(7))
    again = choose_candidate(box, candidates, probabilities, np.random.default_rng(7))
    assert first == again
    only_best = choose_candidate(box, candidates, probabilities, np.random.default_rng(0), top_k=1)
    assert rank[only_best] == 0
    with pytest.raises(SemsegError, match="no candidate segment"):
        choose_candidate(box, [], probabilities, np.random.default_rng(0))


def test_boxsup_labels_put_the_chosen_segment_in_the_box():
    probabilities = np.full((3, 6, 6), 1 / 3)
    big, small = Box(0, 0, 6, 6, 1), Box(3, 3, 5, 5, 2)
    big_mask = np.zeros((6, 6), dtype=bool)
    big_mask[:3, :] = True
    small_mask = np.ones((2, 2), dtype=bool)
    candidates = [
        [Candidate(small_mask, Box(3, 3, 5, 5, -1))],
        [Candidate(big_mask, Box(0, 0, 6, 6, -1))],
    ]
    labels, chosen = boxsup_labels(
        probabilities, [small, big], candidates, background=0, rng=np.random.default_rng(0)
    )
    assert chosen == [0, 0]
    expected = np.zeros((6, 6), dtype=np.uint8)
    expected[:3, :] = 1
    expected[3:5, 3:5] = 2
    np.testing.assert_array_equal(labels, expected)

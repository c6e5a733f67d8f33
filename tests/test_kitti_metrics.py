"""Tests of semseg.metrics.kitti against a brute-force reference and hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from semseg.metrics.kitti import (
    KittiRoadEvaluator,
    RoadCounts,
    RoadScores,
    decode_kitti_gt,
    image_counts,
    quantize_confidence,
    road_scores,
)

# --------------------------------------------------------------------------------------------
# Brute-force reference: the most direct reading of the specification (Fritsch et al. 2013).
# --------------------------------------------------------------------------------------------


def reference_scores(images: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Loop over the 256 thresholds with boolean masks over the concatenated valid pixels.

    ``images`` holds (uint8 levels, road, valid) triples.
    """
    levels = np.concatenate([lv[va] for lv, _, va in images]).astype(int)
    road = np.concatenate([rd[va] for _, rd, va in images]).astype(bool)
    pos_num = int(road.sum())
    neg_num = int((~road).sum())
    rows = []  # (k, precision, recall, F, TP, FP, FN, TN) for the kept thresholds
    for k in range(256):
        pred = levels >= k
        tp = int(np.sum(pred & road))
        fp = int(np.sum(pred & ~road))
        fn = int(np.sum(~pred & road))
        tn = int(np.sum(~pred & ~road))
        assert tp + fn == pos_num and fp + tn == neg_num
        recall = tp / pos_num
        precision = tp / (tp + fp + 1e-10)
        if recall == 0 and precision == 0:
            continue
        f = 2 * precision * recall / (precision + recall + 1e-10)
        rows.append((k, precision, recall, f, tp, fp, fn, tn))
    # 11-point AP with explicit loops.
    ap_sum = 0.0
    ap_count = 0
    for r in np.arange(0, 1.1, 0.1):
        best_p = None
        for row in rows:
            if row[2] >= r and (best_p is None or row[1] > best_p):
                best_p = row[1]
        if best_p is not None:
            ap_sum += best_p
            ap_count += 1
    # First maximum of F.
    best = rows[0]
    for row in rows:
        if row[3] > best[3]:
            best = row
    k, precision, recall, f, tp, fp, fn, tn = best
    return {
        "max_f": 100 * f,
        "ap": 100 * ap_sum / ap_count,
        "precision": 100 * precision,
        "recall": 100 * recall,
        "fpr": 100 * fp / neg_num if neg_num else 0.0,
        "fnr": 100 * fn / pos_num,
        "best_threshold": k / 255,
        "iou": 100 * tp / (tp + fp + fn),
        "accuracy": 100 * (tp + tn) / (pos_num + neg_num),
        "num_pos": float(pos_num),
        "num_neg": float(neg_num),
    }


def assert_scores_close(got: RoadScores, expected: dict[str, float], tol: float = 1e-9) -> None:
    got_d = got.as_dict()
    assert set(got_d) == set(expected)
    for key, value in expected.items():
        assert got_d[key] == pytest.approx(value, abs=tol, rel=0), key


def random_image(rng: np.random.Generator, shape: tuple[int, int]):
    """Random (levels, road, valid) with a spread of level distributions and valid masks."""
    h, w = shape
    road = rng.random((h, w)) < rng.uniform(0.2, 0.8)
    valid = rng.random((h, w)) < rng.uniform(0.5, 1.0)
    # Road pixels tend to higher levels; a few coarse levels make ties and dropped thresholds.
    noise = rng.normal(0, rng.uniform(40, 120), (h, w))
    levels = np.clip(np.where(road, 170, 90) + noise, 0, 255)
    if rng.random() < 0.5:
        levels = np.round(levels / 51) * 51  # only 6 distinct levels
    levels = levels.astype(np.uint8)
    road[0, 0] = valid[0, 0] = True  # at least one valid road pixel per image
    return levels, road, valid


@pytest.mark.parametrize("seed", range(8))
def test_matches_brute_force_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    categories = {"um": [], "umm": [], "uu": []}
    evaluator = KittiRoadEvaluator()
    for name in categories:
        for _ in range(int(rng.integers(1, 4))):
            shape = (int(rng.integers(3, 20)), int(rng.integers(3, 20)))
            img = random_image(rng, shape)
            categories[name].append(img)
            evaluator.update(name, *img)
    results = evaluator.compute()
    assert set(results) == {"um", "umm", "uu", "all"}
    for name, imgs in categories.items():
        assert_scores_close(results[name], reference_scores(imgs))
    everything = [img for imgs in categories.values() for img in imgs]
    assert_scores_close(results["all"], reference_scores(everything))


def test_matches_reference_with_dropped_thresholds() -> None:
    # Road levels never exceed 150, so thresholds 151..255 have TP == 0 and are dropped.
    rng = np.random.default_rng(123)
    levels = rng.integers(0, 151, (12, 9)).astype(np.uint8)
    road = rng.random((12, 9)) < 0.5
    valid = rng.random((12, 9)) < 0.8
    neg_levels = rng.integers(0, 256, (12, 9)).astype(np.uint8)
    levels = np.where(road, levels, neg_levels).astype(np.uint8)
    road[0, 0] = valid[0, 0] = True
    assert_scores_close(
        road_scores(image_counts(levels, road, valid)), reference_scores([(levels, road, valid)])
    )


# --------------------------------------------------------------------------------------------
# Hand-computed cases.
# --------------------------------------------------------------------------------------------

LEVELS_2X3 = np.array([[255, 200, 0], [100, 0, 255]], dtype=np.uint8)


def test_hand_computed_2x3() -> None:
    # levels  road   valid
    # 255 200 0     T T F    1 1 1
    # 100 0 255     F T F    1 1 0     -> pixel (1,2) (level 255, non-road) is ignored
    # Valid road levels {255, 200, 0}: posNum = 3; valid non-road levels {0, 100}: negNum = 2.
    #   k = 0        : TP=3 FP=2 -> P=3/5, R=1,   F=2*.6/1.6           = 0.75
    #   k = 1..100   : TP=2 FP=1 -> P=2/3, R=2/3, F                    = 2/3
    #   k = 101..200 : TP=2 FP=0 -> P=1,   R=2/3, F=2*(2/3)/(5/3)      = 0.8   <- MaxF
    #   k = 201..255 : TP=1 FP=0 -> P=1,   R=1/3, F=2*(1/3)/(4/3)      = 0.5
    # Nothing is dropped (TP >= 1 everywhere). Best threshold: first max at k = 101.
    # At k=101: TP=2 FP=0 FN=1 TN=2 -> PRE=100, REC=66.67, FPR=0/2=0, FNR=1/3=33.33,
    #   IoU = 2/(2+0+1) = 66.67, accuracy = (2+2)/5 = 80.
    # AP: max precision with recall >= r:
    #   r = 0, .1, .2, .3, .4, .5, .6 -> 1 (recall 2/3 at P=1)           7 points
    #   r = .7, .8, .9, 1.0          -> 0.6 (only k=0 has recall 1)     4 points
    #   AP = (7*1 + 4*0.6)/11 = 9.4/11 = 85.4545...%
    road = np.array([[1, 1, 0], [0, 1, 0]], dtype=bool)
    valid = np.array([[1, 1, 1], [1, 1, 0]], dtype=bool)
    s = road_scores(image_counts(LEVELS_2X3, road, valid))
    tol = 1e-6  # the devkit's 1e-10 regularisers move values by ~1e-8 percent
    assert s.max_f == pytest.approx(80.0, abs=tol)
    assert s.best_threshold == pytest.approx(101 / 255)
    assert s.precision == pytest.approx(100.0, abs=tol)
    assert s.recall == pytest.approx(200 / 3, abs=tol)
    assert s.fpr == 0.0
    assert s.fnr == pytest.approx(100 / 3, abs=tol)
    assert s.iou == pytest.approx(200 / 3, abs=tol)
    assert s.accuracy == pytest.approx(80.0, abs=tol)
    assert s.ap == pytest.approx(100 * 9.4 / 11, abs=tol)
    assert (s.num_pos, s.num_neg) == (3, 2)


def test_ap_uses_the_devkit_float_recall_levels() -> None:
    # 10 road pixels: 3 at level 255, 7 at level 100; 5 non-road pixels at level 200.
    #   k = 0..100   : TP=10 FP=5 -> P=2/3, R=1,   F=0.8  <- MaxF, first max at k=0
    #   k = 101..200 : TP=3  FP=5 -> P=3/8, R=0.3
    #   k = 201..255 : TP=3  FP=0 -> P=1,   R=0.3 (3/10 == 0.3 exactly in floating point)
    # np.arange(0, 1.1, 0.1)[3] is 0.30000000000000004 > 0.3, so recall 0.3 does NOT reach
    # the 4th recall level: AP = (3*1 + 8*(2/3))/11 = 25/33 = 75.76%.
    # (With exact levels 0.3 one would get (4*1 + 7*(2/3))/11 = 26/33 = 78.79%.)
    levels = np.array([[255] * 3 + [100] * 7 + [200] * 5], dtype=np.uint8)
    road = np.array([[True] * 10 + [False] * 5])
    s = road_scores(image_counts(levels, road, np.ones_like(road)))
    assert s.ap == pytest.approx(100 * 25 / 33, abs=1e-6)
    assert s.max_f == pytest.approx(80.0, abs=1e-6) and s.best_threshold == 0.0


def test_hand_computed_fn_fp_arrays() -> None:
    # Same image as above: FN[k] = #road levels < k over {255, 200, 0}; FP[k] over {0, 100}.
    road = np.array([[1, 1, 0], [0, 1, 0]], dtype=bool)
    valid = np.array([[1, 1, 1], [1, 1, 0]], dtype=bool)
    fn, fp = image_counts(LEVELS_2X3, road, valid).fn_fp()
    assert fn.shape == fp.shape == (256,)
    assert fn[0] == 0 and np.all(fn[1:201] == 1) and np.all(fn[201:] == 2)
    assert fp[0] == 2 and np.all(fp[1:101] == 1) and np.all(fp[101:] == 0)


def test_perfect_prediction() -> None:
    # Road at 255, non-road at 0: for k >= 1, TP = posNum, FP = 0 -> P = R = 1, F = 1.
    road = np.array([[1, 0, 1], [0, 0, 1]], dtype=bool)
    levels = np.where(road, 255, 0).astype(np.uint8)
    s = road_scores(image_counts(levels, road, np.ones_like(road)))
    tol = 1e-6
    assert s.max_f == pytest.approx(100.0, abs=tol)
    assert s.ap == pytest.approx(100.0, abs=tol)
    assert s.precision == pytest.approx(100.0, abs=tol)
    assert s.recall == 100.0
    assert s.fpr == 0.0 and s.fnr == 0.0
    assert s.iou == 100.0 and s.accuracy == 100.0
    assert s.best_threshold == pytest.approx(1 / 255)  # first maximum


def test_all_zero_prediction() -> None:
    # Every level is 0: k = 0 predicts everything road (TP=3, FP=3 -> P=1/2, R=1); for k >= 1
    # TP = FP = 0 -> P = R = 0, dropped. MaxF = 2*.5/1.5 = 66.67, best threshold 0,
    # PRE = 50, REC = 100, FPR = 100, FNR = 0, AP = 50 (all 11 points see P = 1/2),
    # IoU = 3/(3+3) = 50, accuracy = 3/6 = 50.
    road = np.array([[1, 1, 1], [0, 0, 0]], dtype=bool)
    s = road_scores(image_counts(np.zeros((2, 3), np.uint8), road, np.ones_like(road)))
    tol = 1e-6
    assert s.max_f == pytest.approx(200 / 3, abs=tol)
    assert s.best_threshold == 0.0
    assert s.precision == pytest.approx(50.0, abs=tol)
    assert s.recall == 100.0
    assert s.fpr == 100.0 and s.fnr == 0.0
    assert s.ap == pytest.approx(50.0, abs=tol)
    assert s.iou == 50.0 and s.accuracy == 50.0


def test_no_negatives_gives_zero_fpr() -> None:
    road = np.ones((2, 2), dtype=bool)
    levels = np.array([[10, 20], [30, 40]], dtype=np.uint8)
    s = road_scores(image_counts(levels, road, np.ones_like(road)))
    # All pixels road: precision 1 whenever TP > 0; best F = 1 at k = 0 (recall 1).
    assert s.num_neg == 0 and s.fpr == 0.0
    assert s.max_f == pytest.approx(100.0, abs=1e-6) and s.best_threshold == 0.0


def test_pixels_outside_valid_do_not_matter() -> None:
    rng = np.random.default_rng(7)
    levels, road, valid = random_image(rng, (15, 17))
    base = road_scores(image_counts(levels, road, valid))
    for _ in range(5):
        lv2, rd2 = levels.copy(), road.copy()
        outside = ~valid
        lv2[outside] = rng.integers(0, 256, int(outside.sum()))
        rd2[outside] = rng.random(int(outside.sum())) < 0.5
        assert road_scores(image_counts(lv2, rd2, valid)) == base


def test_pooling_sums_counts_instead_of_averaging_f() -> None:
    # Image A: road 255, non-road 0        -> per-image MaxF = 100.
    # Image B: road 100, non-road 200      -> k<=100: TP=1 FP=1, F = 2/3; k>100: TP=0, dropped.
    # Mean of per-image MaxF = (100 + 66.67)/2 = 83.33.
    # Pooled: road {255, 100}, non-road {0, 200}:
    #   k=0: TP2 FP2 F=2/3; k=1..100: TP2 FP1 P=2/3 R=1 F=0.8; k=101..200: TP1 FP1 F=0.5;
    #   k=201..255: TP1 FP0 P=1 R=.5 F=2/3.  -> pooled MaxF = 80 at k = 1.
    road = np.array([[True, False]])
    valid = np.ones_like(road)
    img_a = np.array([[255, 0]], dtype=np.uint8)
    img_b = np.array([[100, 200]], dtype=np.uint8)
    ev = KittiRoadEvaluator()
    ev.update("um", img_a, road, valid)
    ev.update("um", img_b, road, valid)
    ev.update("uu", img_b, road, valid)
    res = ev.compute()
    per_image = [road_scores(image_counts(x, road, valid)).max_f for x in (img_a, img_b)]
    assert per_image == pytest.approx([100.0, 200 / 3], abs=1e-6)
    assert np.mean(per_image) == pytest.approx(250 / 3, abs=1e-6)
    assert res["um"].max_f == pytest.approx(80.0, abs=1e-6)
    assert res["um"].best_threshold == pytest.approx(1 / 255)
    assert res["uu"].max_f == pytest.approx(200 / 3, abs=1e-6)
    # "all" pools A + 2 x B: road {255, 100, 100}, non-road {0, 200, 200}.
    assert_scores_close(
        res["all"],
        reference_scores([(img_a, road, valid), (img_b, road, valid), (img_b, road, valid)]),
    )


def test_uncategorised_images_count_in_all_only() -> None:
    """Folder datasets have no categories: their images give the pooled "all" group only."""
    road = np.array([[True, False]])
    valid = np.ones_like(road)
    img_a = np.array([[255, 0]], dtype=np.uint8)
    img_b = np.array([[100, 200]], dtype=np.uint8)
    ev = KittiRoadEvaluator()
    ev.update(None, img_a, road, valid)
    ev.update(None, img_b, road, valid)
    res = ev.compute()
    assert list(res) == ["all"] and ev.counts == {}
    assert res["all"].max_f == pytest.approx(80.0, abs=1e-6)  # pooled, as worked out above
    assert_scores_close(res["all"], reference_scores([(img_a, road, valid), (img_b, road, valid)]))
    ev.update("um", img_b, road, valid)  # mixed: "um" alone, "all" over the three images
    res = ev.compute()
    assert sorted(res) == ["all", "um"]
    assert_scores_close(
        res["all"],
        reference_scores([(img_a, road, valid), (img_b, road, valid), (img_b, road, valid)]),
    )
    ev.reset()
    with pytest.raises(ValueError, match="before any update"):
        ev.compute()


# --------------------------------------------------------------------------------------------
# Input handling.
# --------------------------------------------------------------------------------------------


def test_float_quantisation() -> None:
    assert np.round(0.5 * 255) == 128.0  # round(127.5) = 128 (half to even)
    q = quantize_confidence(np.array([[0.0, 0.5, 1.0, 1 / 255, 0.998]]))
    assert q.tolist() == [[0, 128, 255, 1, 254]]


def test_float_and_uint8_inputs_agree() -> None:
    rng = np.random.default_rng(3)
    levels, road, valid = random_image(rng, (10, 11))
    as_float = levels.astype(np.float32) / 255.0
    c_u8, c_f = image_counts(levels, road, valid), image_counts(as_float, road, valid)
    np.testing.assert_array_equal(c_u8.pos_hist, c_f.pos_hist)
    np.testing.assert_array_equal(c_u8.neg_hist, c_f.neg_hist)
    assert road_scores(c_u8) == road_scores(c_f)


def test_torch_tensor_input() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    levels, road, valid = random_image(rng, (6, 7))
    c_np = image_counts(levels.astype(np.float64) / 255, road, valid)
    c_t = image_counts(
        torch.from_numpy(levels).float() / 255, torch.from_numpy(road), torch.from_numpy(valid)
    )
    np.testing.assert_array_equal(c_np.pos_hist, c_t.pos_hist)
    np.testing.assert_array_equal(c_np.neg_hist, c_t.neg_hist)


@pytest.mark.parametrize(
    "bad",
    [
        np.array([[1.5]]),
        np.array([[-0.1]]),
        np.array([[np.nan]]),
        np.array([[256]]),
        np.array([[True]]),
    ],
)
def test_invalid_confidence_values(bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        image_counts(bad, np.ones((1, 1), bool), np.ones((1, 1), bool))


@pytest.mark.parametrize(
    ("conf_shape", "road_shape", "valid_shape"),
    [((2, 3), (3, 2), (2, 3)), ((2, 3), (2, 3), (2, 4)), ((2, 3, 1), (2, 3, 1), (2, 3, 1))],
)
def test_shape_mismatch_raises(conf_shape, road_shape, valid_shape) -> None:
    with pytest.raises(ValueError, match="same HxW shape"):
        image_counts(
            np.zeros(conf_shape, np.uint8), np.ones(road_shape, bool), np.ones(valid_shape, bool)
        )


def test_no_road_pixels_raises() -> None:
    road = np.array([[0, 0], [0, 1]], dtype=bool)
    valid = np.array([[1, 1], [1, 0]], dtype=bool)  # the only road pixel is outside valid
    counts = image_counts(np.zeros((2, 2), np.uint8), road, valid)
    with pytest.raises(ValueError, match="posNum == 0"):
        road_scores(counts)
    ev = KittiRoadEvaluator()
    ev.update("uu", np.zeros((2, 2), np.uint8), road, valid)
    with pytest.raises(ValueError, match="category 'uu'.*no valid road pixel"):
        ev.compute()


def test_evaluator_errors() -> None:
    ev = KittiRoadEvaluator()
    with pytest.raises(ValueError, match="before any update"):
        ev.compute()
    with pytest.raises(ValueError, match="reserved"):
        ev.update("all", np.zeros((1, 1), np.uint8), np.ones((1, 1), bool), np.ones((1, 1), bool))


def test_counts_add_and_sum() -> None:
    rng = np.random.default_rng(11)
    parts = [image_counts(*random_image(rng, (5, 6))) for _ in range(3)]
    total = sum(parts)
    assert isinstance(total, RoadCounts)
    np.testing.assert_array_equal(total.pos_hist, sum(p.pos_hist for p in parts))
    z = RoadCounts.zeros()
    assert z.num_pos == 0 and z.num_neg == 0
    np.testing.assert_array_equal((z + parts[0]).neg_hist, parts[0].neg_hist)


def test_decode_kitti_gt() -> None:
    rgb = np.array(
        [[[255, 0, 255], [255, 0, 0]], [[0, 0, 0], [0, 0, 255]]], dtype=np.uint8
    )  # road, non-road / ignore, road-outside-valid
    valid, road = decode_kitti_gt(rgb)
    assert valid.tolist() == [[True, True], [False, False]]
    assert road.tolist() == [[True, False], [False, True]]
    # Counted: only (0,0) as road and (0,1) as non-road; the blue-only pixel is ignored.
    counts = image_counts(np.full((2, 2), 255, np.uint8), road, valid)
    assert (counts.num_pos, counts.num_neg) == (1, 1)


@pytest.mark.parametrize("shape", [(4, 4), (4, 4, 4), (4, 4, 1), (3,)])
def test_decode_kitti_gt_rejects_bad_shape(shape) -> None:
    with pytest.raises(ValueError, match="HxWx3"):
        decode_kitti_gt(np.zeros(shape, np.uint8))

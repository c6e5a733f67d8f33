"""Region-based models: region features, pasting, proposals and their cache, region training."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import run_cli, write_multiclass_folder

from semseg.models.regions import (
    FEATURE_STRIDE,
    POOL_SIZE,
    SAMPLING_RATIO,
    RegionTensors,
    box_features,
    cell_coverage,
    mask_pooled_features,
    paste_owner,
    region_targets,
)
from semseg.regions.proposals import (
    ProposalParams,
    Regions,
    make_regions,
    oracle_labels,
    paste_labels,
    proposal_recall,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def crop_and_resize(features: torch.Tensor, box: list[float], size: int) -> torch.Tensor:
    """Bilinear samples of ``features`` (1, D, h, w) at the centres of a size x size grid on the
    pixel box, by grid_sample (map cell k's centre is pixel (k + 0.5) * stride)."""
    x0, y0, x1, y1 = (v / FEATURE_STRIDE for v in box)
    height, width = features.shape[-2:]
    steps = (torch.arange(size, dtype=torch.float64) + 0.5) / size
    xs = x0 + (x1 - x0) * steps  # in map units where cell k spans [k, k + 1)
    ys = y0 + (y1 - y0) * steps
    grid_x = (2 * xs / width - 1).float()  # align_corners=False: [-1, 1] spans the map's edges
    grid_y = (2 * ys / height - 1).float()
    grid = torch.stack(torch.meshgrid(grid_y, grid_x, indexing="ij")[::-1], dim=-1)[None]
    return F.grid_sample(features, grid, mode="bilinear", align_corners=False)


def test_box_features_equal_crop_and_resize_of_the_feature_map():
    torch.manual_seed(0)
    features = torch.randn(2, 3, 12, 16)
    boxes = [torch.tensor([[20.0, 16.0, 92.0, 70.0]]), torch.tensor([[8.0, 9.0, 120.0, 85.0]])]
    pooled = box_features(features, boxes)
    assert pooled.shape == (2, 3, POOL_SIZE, POOL_SIZE)
    for index, box in enumerate(boxes):
        fine = crop_and_resize(features[index : index + 1], box[0].tolist(), 7 * SAMPLING_RATIO)
        expected = F.avg_pool2d(fine, SAMPLING_RATIO)[0]  # roi_align: mean of 2x2 samples a bin
        torch.testing.assert_close(pooled[index], expected, atol=1e-5, rtol=1e-5)


def test_mask_pooling_is_the_mean_over_the_region_pixels():
    torch.manual_seed(1)
    features = torch.randn(4, 3, 5)  # (D, h, w): a 24 x 40 image at stride 8
    label_map = -torch.ones(1, 24, 40, dtype=torch.long)
    label_map[0, 2:11, 3:9] = 0  # spans four cells unevenly
    label_map[0, 20:24, 30:40] = 1
    regions = RegionTensors(label_map, torch.tensor([[3.0, 2, 9, 11], [30, 20, 40, 24]]), 2)
    pooled = mask_pooled_features(features, cell_coverage(regions, (3, 5), FEATURE_STRIDE))
    for region in (0, 1):
        total = torch.zeros(4)
        ys, xs = torch.nonzero(label_map[0] == region, as_tuple=True)
        for y, x in zip(ys.tolist(), xs.tolist(), strict=True):
            total += features[:, y // 8, x // 8]
        torch.testing.assert_close(pooled[region], total / len(ys))
    # a box-only region pools over its rectangle
    boxed = RegionTensors(
        torch.zeros(0, 24, 40, dtype=torch.long), torch.tensor([[3.0, 2, 9, 11]]), 0
    )
    pooled_box = mask_pooled_features(features, cell_coverage(boxed, (3, 5), FEATURE_STRIDE))
    torch.testing.assert_close(pooled_box[0], pooled[0])


def test_paste_gives_each_pixel_the_covering_region_of_highest_score():
    level_a = torch.tensor([[0, 0, 1, 1]])[None]  # (1, 1, 4)
    level_b = torch.tensor([[2, 2, 2, -1]])[None]
    maps = torch.cat([level_a, level_b])
    boxes = torch.tensor([[0.0, 0, 2, 1], [2, 0, 4, 1], [0, 0, 3, 1], [3, 0, 4, 1]])
    scores = torch.tensor([0.9, 0.2, 0.5, 0.7])  # region 3 is a box over the last pixel
    owner = paste_owner(maps, boxes, 3, scores)
    assert owner.tolist() == [[0, 0, 2, 3]]
    scores = torch.tensor([0.1, 0.9, 0.5, 0.3])
    assert paste_owner(maps, boxes, 3, scores).tolist() == [[2, 2, 1, 1]]
    regions = Regions(maps.numpy().astype(np.int32), boxes.numpy(), 3)
    labels = np.array([10, 11, 12, 13])
    assert paste_labels(regions, labels, scores.numpy()).tolist() == [[12, 12, 11, 11]]


def test_model_paste_takes_the_winning_regions_probabilities():
    from semseg.models import build_model
    from semseg.models.regions import RegionOutputs

    model = build_model("rcnn-regions", 3, width_mult=1 / 16)
    maps = torch.tensor([[[0, 0, 1, 1]], [[2, 2, 2, 2]]])
    regions = [RegionTensors(maps, torch.tensor([[0.0, 0, 2, 1], [2, 0, 4, 1], [0, 0, 4, 1]]), 3)]
    logits = torch.tensor([[4.0, 0, 0], [0, 0, 1], [0, 3, 0]])
    pixels = model.paste(RegionOutputs([logits]), regions, (1, 4))[0]
    # probabilities of the top class: region 0 0.96, region 1 0.58, region 2 0.91
    assert pixels.argmax(dim=0).tolist() == [[0, 0, 1, 1]]
    torch.testing.assert_close(pixels[:, 0, 3], logits[2].log_softmax(dim=0))


def test_location_weights_interpolate_the_grid_bilinearly():
    from semseg.models.regions import location_weights

    weights = location_weights(2, 4)
    axis = torch.tensor([[1.0, 0.75, 0.25, 0.0], [0.0, 0.25, 0.75, 1.0]])  # by hand, see doc
    torch.testing.assert_close(weights[1], torch.outer(axis[0], axis[1]))  # grid entry (0, 1)
    torch.testing.assert_close(weights.sum(dim=0), torch.ones(4, 4))
    torch.testing.assert_close(location_weights(1, 5), torch.ones(1, 5, 5))


def test_one_location_classifier_is_a_plain_per_pixel_classifier():
    from semseg.models.regions import location_specific_scores, location_weights

    torch.manual_seed(2)
    columns = torch.randn(3, 6, 5, 5)
    conv = torch.nn.Conv2d(6, 4, 1)
    scores = location_specific_scores(
        columns, conv.weight[None, :, :, 0, 0], conv.bias[None], location_weights(1, 5)
    )
    torch.testing.assert_close(scores, conv(columns))
    # with k = 2, a corner cell is scored by its corner's classifier alone
    weight, bias = torch.randn(4, 4, 6), torch.randn(4, 4)
    scores = location_specific_scores(columns, weight, bias, location_weights(2, 4 + 1))
    torch.testing.assert_close(scores[:, :, 0, 0], columns[:, :, 0, 0] @ weight[0].t() + bias[0])


def test_region_targets_are_the_majority_class_and_mostly_void_is_ignored():
    maps = torch.tensor([[[0, 0, 0, 1, 1, 1]]])
    mask = torch.tensor([[2, 2, 1, 255, 255, 0]])
    regions = RegionTensors(maps, torch.zeros(2, 4), 2)
    assert region_targets(regions, mask, 3, 255).tolist() == [2, 255]


def test_make_regions_adds_the_complement_of_what_boxes_cover():
    boxes = np.array([[0, 0, 2, 2], [1, 1, 3, 3]], dtype=np.float32)
    regions = make_regions([], boxes, (4, 4))
    assert regions.count == 3 and regions.num_mapped == 1
    masks = regions.masks()
    assert masks.any(axis=0).all()
    assert masks[0].sum() == 16 - 7 and masks[0][3].all()
    partition = make_regions([np.array([[5, 5], [7, 9]])], np.zeros((0, 4)), (2, 2))
    assert partition.count == 3 and partition.label_maps.tolist() == [[[0, 0], [1, 2]]]
    assert partition.boxes.tolist() == [[0, 0, 2, 1], [0, 1, 1, 2], [1, 1, 2, 2]]


def test_proposal_recall_scores_each_region_at_its_majority_label():
    level = np.array([[0, 0, 0, 1], [0, 0, 1, 1]])
    regions = make_regions([level], np.zeros((0, 4)), (2, 4))
    mask = np.array([[0, 0, 1, 1], [0, 0, 1, 1]], dtype=np.uint8)
    assert oracle_labels(regions, mask, 2).tolist() == [[0, 0, 0, 1], [0, 0, 1, 1]]
    scores = proposal_recall([(regions, mask)], 2)
    # class 0: 4 of 5 predicted pixels right; class 1: 3 right of 4 true
    assert scores.iou == pytest.approx([80.0, 75.0])
    assert scores.miou == pytest.approx(77.5)


def test_transform_keeps_regions_aligned_with_the_image():
    from torchvision.transforms import v2

    from semseg.regions.data import transform_with_regions

    image = np.zeros((4, 6, 3), np.uint8)
    mask = np.zeros((4, 6), np.uint8)
    regions = make_regions([np.array([[0] * 3 + [1] * 3] * 4)], np.array([[0, 0, 2, 2.0]]), (4, 6))
    flip = v2.Compose([v2.RandomHorizontalFlip(p=1.0)])
    _, _, flipped = transform_with_regions(flip, image, mask, regions)
    assert flipped.label_maps[0, 0].tolist() == [1, 1, 1, 0, 0, 0]
    assert flipped.boxes.tolist() == [[3, 0, 6, 4], [0, 0, 3, 4], [4, 0, 6, 2]]
    crop = v2.Compose([v2.CenterCrop((4, 2))])  # columns 2, 3: parts of both regions, no box
    _, _, cropped = transform_with_regions(crop, image, mask, regions)
    assert cropped.label_maps[0, 0].tolist() == [0, 1] and cropped.num_mapped == 2
    assert cropped.count == 2


# --- proposals and their cache (the weak extra) ------------------------------------------------


def scene(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.zeros((40, 60, 3), np.uint8)
    image[:20] = (90, 140, 220)
    image[20:] = (110, 110, 110)
    image[25:35, 10:30] = (200, 30, 30)
    return (image + rng.integers(0, 10, image.shape)).astype(np.uint8)


@pytest.mark.parametrize("method", ["felzenszwalb", "slic"])
def test_partition_proposals_cover_every_pixel_once_per_level(method):
    pytest.importorskip("skimage")
    from semseg.regions.proposals import compute_regions

    regions = compute_regions(scene(), ProposalParams(method))
    assert regions.num_mapped == regions.count > 3
    assert (regions.label_maps >= 0).all()
    assert regions.masks().sum() == regions.label_maps.shape[0] * 40 * 60


def test_selective_search_regions_are_boxes():
    cv2 = pytest.importorskip("cv2")
    if not hasattr(cv2, "ximgproc"):
        pytest.skip("OpenCV without contrib modules")
    from semseg.regions.proposals import compute_regions

    regions = compute_regions(scene(), ProposalParams("selective-search", max_boxes=20))
    box_only = regions.count - regions.num_mapped
    assert 0 < box_only <= 20 and regions.num_mapped <= 1
    assert regions.masks().any(axis=0).all()  # the complement region fills the rest


def test_proposals_are_cached_reused_and_recomputed_for_other_parameters(tmp_path, monkeypatch):
    pytest.importorskip("skimage")
    from PIL import Image

    from semseg.regions import proposals

    image_path = tmp_path / "scene.png"
    image = scene()
    Image.fromarray(image).save(image_path)
    calls = []
    compute = proposals.compute_regions
    monkeypatch.setattr(proposals, "compute_regions", lambda *a: calls.append(a[1]) or compute(*a))
    cache = tmp_path / "cache"
    params = ProposalParams("felzenszwalb")
    first, computed = proposals.cached_regions(image_path, image, params, cache)
    (written,) = cache.glob("*.npz")
    mtime = written.stat().st_mtime_ns
    second, again = proposals.cached_regions(image_path, image, params, cache)
    assert (computed, again, len(calls)) == (True, False, 1)
    assert written.stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(first.label_maps, second.label_maps)
    other = ProposalParams("felzenszwalb", scales=(50.0,))
    third, recomputed = proposals.cached_regions(image_path, image, other, cache)
    assert recomputed and len(calls) == 2 and third.label_maps.shape[0] == 1
    assert list(cache.glob("*.npz")) == [written]  # the same file, replaced
    _, back = proposals.cached_regions(image_path, image, params, cache)
    assert back and len(calls) == 3
    os.utime(image_path, ns=(mtime + 10**9, mtime + 10**9))  # the image changed
    _, changed = proposals.cached_regions(image_path, image, params, cache)
    assert changed and len(calls) == 4


def test_proposals_command_caches_and_prints_the_recall(tmp_path):
    pytest.importorskip("skimage")
    data = write_multiclass_folder(tmp_path / "data", splits={"train": 2, "val": 1})
    out = tmp_path / "proposals"
    args = ("proposals", "--data", str(data), "--method", "slic", "--out", str(out))
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    assert "3 computed, 0 reused" in first.stdout
    assert "proposal recall" in first.stdout
    recall = json.loads((out / "recall.slic.json").read_text())["recall"]
    assert 0 < recall["miou"] <= 100
    second = run_cli(*args)
    assert "0 computed, 3 reused" in second.stdout


def test_bad_scales_are_one_clear_error():
    from semseg.cli_regions import parse_scales
    from semseg.errors import SemsegError

    assert parse_scales("25, 100") == (25.0, 100.0)
    with pytest.raises(SemsegError, match="--scales must be numbers"):
        parse_scales("a,b")
    with pytest.raises(SemsegError, match="positive"):
        ProposalParams("felzenszwalb", scales=())


def test_a_model_without_proposals_refuses_another_method():
    from semseg.errors import SemsegError
    from semseg.models import build_model

    build_model("fcn8s", 3, proposals="felzenszwalb", backbone="resnet18")
    with pytest.raises(SemsegError, match="proposals"):
        build_model("fcn8s", 3, proposals="slic", backbone="resnet18")


# --- training ----------------------------------------------------------------------------------


@pytest.mark.parametrize("model_name", ["rcnn-regions", "sds", "hypercolumn-regions"])
def test_region_models_train_evaluate_and_predict(tmp_path, model_name):
    pytest.importorskip("skimage")
    from semseg.config import load_config
    from semseg.inference.checkpoint import load_model
    from semseg.inference.predictor import Predictor
    from semseg.io import read_rgb
    from semseg.training import train

    data = write_multiclass_folder(tmp_path / "data", splits={"train": 4, "val": 2})
    config = load_config("camvid_fast_cpu")
    config.data.root = str(data)
    config.data.height, config.data.width = 32, 48
    config.data.proposals_dir = str(tmp_path / "proposals")
    config.model.name, config.model.num_classes = model_name, 3
    config.train.epochs, config.train.batch_size, config.train.max_time_s = 2, 2, None
    config.train.out_dir, config.train.name = str(tmp_path / "runs"), "tiny"
    config.train.progress = False
    run = train(config)
    results = json.loads((run / "eval_val.json").read_text())
    assert results["model"] == model_name
    assert 0 <= results["groups"]["all"]["miou"] <= 100
    assert len(list((tmp_path / "proposals").glob("*.felzenszwalb.npz"))) == 6
    loaded = load_model(run / "checkpoints" / "best.ckpt")
    image = read_rgb(next((data / "val" / "images").iterdir()))
    (probability,) = Predictor(loaded).predict([image])
    assert probability.shape == (3, *image.shape[:2])
    np.testing.assert_allclose(probability.sum(axis=0), 1.0, atol=1e-5)


def test_a_region_model_given_an_image_alone_proposes_its_regions(monkeypatch):
    pytest.importorskip("skimage")
    import semseg.models.regions as region_models
    from semseg.errors import SemsegError
    from semseg.models import build_model
    from semseg.regions.proposals import propose_tensors

    torch.manual_seed(0)
    model = build_model("rcnn-regions", 3, width_mult=1 / 16).eval()
    image = torch.from_numpy(scene()).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        alone = model(image)
        given = model(image, propose_tensors(image, "felzenszwalb"))
    torch.testing.assert_close(alone, given)
    monkeypatch.setattr(region_models, "_PROPOSER", {})
    with pytest.raises(SemsegError, match="import semseg.regions"):
        model(image)


def test_region_loss_is_the_weighted_cross_entropy_of_the_majority_labels():
    from semseg.models import build_model
    from semseg.models.regions import RegionOutputs

    model = build_model("rcnn-regions", 3, width_mult=1 / 16)
    maps = torch.tensor([[[0, 0, 1, 1, 2, 2]]])
    regions = [RegionTensors(maps, torch.zeros(3, 4), 3)]
    masks = torch.tensor([[[2, 2, 0, 1, 255, 255]]])  # region 1: a tie, the lower class wins
    logits = torch.tensor([[0.0, 1.0, 2.0], [3.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    weights = torch.tensor([0.5, 1.0, 2.0])
    loss = model.region_loss(RegionOutputs([logits]), regions, masks, 255, class_weights=weights)
    # targets 2, 0, ignored: sum of w * -log p over the sum of the weights (torch's rule)
    terms = [2.0 * -logits[0].log_softmax(0)[2], 0.5 * -logits[1].log_softmax(0)[0]]
    torch.testing.assert_close(loss, sum(terms) / 2.5)

"""Mask R-CNN as a semantic segmenter (``maskrcnn-semantic``): instances pasted by score over the
stuff map, instances derived from masks (``semseg derive --to instances``), mask AP, and a tiny
train + evaluate end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, run_cli, tiny_config, write_multiclass_folder
from PIL import Image

from semseg.config import IGNORE_INDEX
from semseg.errors import SemsegError
from semseg.models import build_model
from semseg.models.maskrcnn import MIN_PROBABILITY, paste_instances, semantic_log_probabilities

pytest.importorskip("cv2")  # connected components (the coco / weak extra)
pytestmark = pytest.mark.usefixtures("single_thread")


def box_mask(height: int, width: int, top: int, left: int, bottom: int, right: int) -> torch.Tensor:
    mask = torch.zeros(height, width)
    mask[top:bottom, left:right] = 0.9
    return mask


# ------------------------------------------------------------------ pasting by score


def test_paste_order_the_higher_score_wins_whatever_the_input_order() -> None:
    stuff = torch.zeros(6, 8, dtype=torch.long)  # class 0 everywhere
    a = box_mask(6, 8, 0, 0, 4, 5)  # class 3, score 0.9
    b = box_mask(6, 8, 2, 3, 6, 8)  # class 4, score 0.7; overlaps a on rows 2-3, cols 3-4
    for order in ((0, 1), (1, 0)):
        masks = torch.stack([a, b])[list(order)]
        scores = torch.tensor([0.9, 0.7])[list(order)]
        labels = torch.tensor([3, 4])[list(order)]
        out, pasted = paste_instances(stuff, masks, scores, labels)
        assert out[2:4, 3:5].eq(3).all()  # the overlap: the 0.9 instance
        assert out[0:4, 0:5].eq(3).all() and out[4:6, 3:8].eq(4).all() and out[2:4, 5:8].eq(4).all()
        assert out[4:6, 0:3].eq(0).all() and not pasted[4:6, 0:3].any()  # stuff fills the rest
        assert int(pasted.sum()) == 4 * 5 + 4 * 5 - 2 * 2


def test_paste_thresholds_scores_and_mask_probabilities() -> None:
    stuff = torch.full((4, 4), 1, dtype=torch.long)
    masks = torch.zeros(2, 4, 4)
    masks[0, :2] = 0.6  # covers the top half at mask threshold 0.5, not at 0.7
    masks[1] = 0.95
    scores = torch.tensor([0.8, 0.3])  # the second is below the score threshold: never pasted
    labels = torch.tensor([2, 3])
    out, pasted = paste_instances(stuff, masks, scores, labels, score_threshold=0.5)
    assert out[:2].eq(2).all() and out[2:].eq(1).all() and pasted[:2].all()
    out, pasted = paste_instances(stuff, masks, scores, labels, mask_threshold=0.7)
    assert out.eq(1).all() and not pasted.any()
    out, _ = paste_instances(stuff, masks, scores, labels, score_threshold=0.2)
    assert out[:2].eq(2).all() and out[2:].eq(3).all()  # now both, the 0.8 one on top


def test_semantic_log_probabilities_one_hot_where_pasted_stuff_elsewhere() -> None:
    stuff_probabilities = torch.tensor([[[0.7, 0.2]], [[0.3, 0.8]]])  # (S=2, 1, 2)
    labels = torch.tensor([[2, 3]])
    pasted = torch.tensor([[True, False]])
    out = semantic_log_probabilities(stuff_probabilities, (0, 3), 4, labels, pasted).exp()
    assert out.shape == (4, 1, 2)
    assert out[:, 0, 0].tolist() == pytest.approx([MIN_PROBABILITY, MIN_PROBABILITY, 1.0, 1e-6])
    assert out[:, 0, 1].tolist() == pytest.approx([0.2, MIN_PROBABILITY, MIN_PROBABILITY, 0.8])


def test_the_model_turns_constructed_detections_into_a_semantic_map(monkeypatch) -> None:
    """Stuff classes 0 (sky) and 1 (road), things 2 and 3; the detector is replaced by fixed
    detections, so the map is checked against a hand-made one."""
    torch.manual_seed(0)
    model = build_model("maskrcnn-semantic", 4, things=[2, 3], width_mult=0.125).eval()
    height, width = 8, 10
    stuff_logits = torch.zeros(1, 3, height, width)  # channels: sky, road, "thing"
    stuff_logits[0, 0, :4] = 5.0  # sky on top
    stuff_logits[0, 1, 4:] = 5.0  # road below
    stuff_logits[0, 2, 6:, 8:] = 50.0  # "thing" says a lot in a corner: ignored without a paste
    detection = {
        "masks": torch.stack(
            [box_mask(height, width, 3, 2, 7, 6), box_mask(height, width, 5, 4, 8, 9)]
        ),
        "scores": torch.tensor([0.6, 0.95]),
        "labels": torch.tensor([2, 3]),
        "boxes": torch.zeros(2, 4),
    }
    low = {**detection, "scores": torch.tensor([0.6, 0.2])}  # the second below the threshold
    for detections, winner in (([detection], 3), ([low], 2)):
        monkeypatch.setattr(model, "detect", lambda images, d=detections: (d, stuff_logits))
        with torch.no_grad():
            labels = model(torch.rand(1, 3, height, width)).argmax(dim=1)[0]
        expected = torch.zeros(height, width, dtype=torch.long)
        expected[4:] = 1
        expected[3:7, 2:6] = 2
        if winner == 3:
            expected[5:8, 4:9] = 3
        assert torch.equal(labels, expected), (winner, labels)


def test_things_must_be_some_of_the_classes() -> None:
    with pytest.raises(SemsegError, match="things"):
        build_model("maskrcnn-semantic", 3, things=[0, 1, 2], width_mult=0.125)
    with pytest.raises(SemsegError, match="things"):
        build_model("maskrcnn-semantic", 3, things=[5], width_mult=0.125)
    with pytest.raises(SemsegError, match="backbone"):
        build_model("maskrcnn-semantic", 3, backbone="resnet18")


def test_backbone_batchnorm_follows_the_batches_at_momentum_0_1() -> None:
    """torchvision's MobileNetV3 momentum (0.01) leaves eval-mode statistics far behind the
    weights over a CPU budget's few hundred steps; the detector's backbone uses 0.1, as the
    MobileNetV3 encoder of the FCNs does."""
    model = build_model("maskrcnn-semantic", 4, things=[3], width_mult=0.25)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and {norm.momentum for norm in norms} == {0.1}
    first_conv, first_norm = list(model.detector.backbone.body["0"].children())[:2]
    first_norm.train()
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        activations = first_conv(images)
        first_norm(activations)
    expected = 0.1 * activations.mean(dim=(0, 2, 3))  # from the initial running mean 0
    torch.testing.assert_close(first_norm.running_mean, expected)


# ------------------------------------------------------------------ instances from masks


def hand_mask() -> np.ndarray:
    """Classes: 0 road (stuff), 2 car, 3 pole. Two cars (one of them two diagonal-touching
    blocks: one 8-connected component), a 2-pixel car speck, one pole, void cutting nothing."""
    mask = np.zeros((12, 16), np.uint8)
    mask[1:4, 1:5] = 2  # car A, 12 px
    mask[4:6, 5:8] = 2  # touches car A only at a corner (4,5)-(3,4): same component, 6 px
    mask[8:11, 10:15] = 2  # car B, 15 px
    mask[0, 15] = 2
    mask[1, 15] = 2  # speck, 2 px
    mask[2:12, 12] = 3  # pole, 10 px; crosses car B
    mask[11, :4] = IGNORE_INDEX
    return mask


def test_instances_from_a_hand_made_mask() -> None:
    from semseg.weak.derive import instances_from_mask

    mask = hand_mask()
    found = instances_from_mask(mask, [2, 3], min_area=3)
    assert [i.label for i in found] == [2, 2, 2, 3]
    assert [i.area for i in found] == [18, 6, 6, 10]  # car B is split in two by the pole
    first = found[0]
    assert (first.box.x0, first.box.y0, first.box.x1, first.box.y1) == (1, 1, 8, 6)
    assert first.mask.sum() == 18 and mask[first.mask].tolist() == [2] * 18
    assert len(instances_from_mask(mask, [2, 3], min_area=1)) == 5  # the speck too
    assert instances_from_mask(mask, [3], min_area=11) == []


def test_instance_targets_of_a_batch() -> None:
    from semseg.tasks.instances import instance_targets

    big = np.kron(hand_mask(), np.ones((3, 3), np.uint8))  # areas x 9: the speck (18) < 20
    masks = torch.from_numpy(np.stack([big, np.zeros_like(big)])).long()
    first, empty = instance_targets(masks, (2, 3))
    assert first["labels"].tolist() == [1, 1, 1, 2]  # 1-based index into things: car, pole
    assert first["boxes"][0].tolist() == [3.0, 3.0, 24.0, 18.0]
    assert first["boxes"][3].tolist() == [36.0, 6.0, 39.0, 36.0]
    assert first["masks"].shape == (4, 36, 48) and first["masks"].dtype == torch.uint8
    assert first["masks"].sum(dim=(1, 2)).tolist() == [162, 54, 54, 90]
    assert empty["boxes"].shape == (0, 4) and empty["masks"].shape == (0, 36, 48)


def test_rle_round_trip_and_a_hand_example() -> None:
    from semseg.weak.instances import rle_decode, rle_encode

    mask = np.array([[0, 1, 1], [0, 1, 0]], dtype=bool)
    # column-major: (0,0)=0 (1,0)=0 | (0,1)=1 (1,1)=1 (0,2)=1 | (1,2)=0
    assert rle_encode(mask) == {"counts": [2, 3, 1], "size": [2, 3]}
    assert rle_encode(np.ones((2, 2), bool))["counts"] == [0, 4]
    for candidate in (mask, hand_mask() == 2, np.zeros((3, 5), bool)):
        assert np.array_equal(rle_decode(rle_encode(candidate)), candidate)


def write_hand_folder(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(root / "images" / "a.png")
    Image.fromarray(hand_mask()).save(root / "masks" / "a.png")
    (root / "classes.yaml").write_text(
        "classes:\n  - {name: road, color: [1, 1, 1]}\n  - {name: sky, color: [2, 2, 2]}\n"
        "  - {name: car, color: [3, 3, 3]}\n  - {name: pole, color: [4, 4, 4]}\n"
    )
    return root


def test_derive_instances_command_writes_coco_instances(tmp_path: Path) -> None:
    data = write_hand_folder(tmp_path / "data")
    result = run_cli(
        "derive", "--to", "instances", "--data", str(data), "--out", str(tmp_path / "out"),
        "--min-area", "3",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "derived 4 instance(s) from 1 image(s) (car: 3, pole: 1)" in result.stdout
    payload = json.loads((tmp_path / "out" / "instances.json").read_text())
    assert payload["categories"] == [{"id": 3, "name": "car"}, {"id": 4, "name": "pole"}]
    annotations = payload["annotations"]
    assert [a["category_id"] for a in annotations] == [3, 3, 3, 4]
    assert [a["area"] for a in annotations] == [18, 6, 6, 10]
    assert annotations[0]["bbox"] == [1, 1, 7, 5]
    coco = pytest.importorskip("pycocotools.coco")
    ground = coco.COCO(str(tmp_path / "out" / "instances.json"))
    pole = ground.annToMask(ground.loadAnns([4])[0]).astype(bool)
    assert np.array_equal(pole, hand_mask() == 3)


def test_derive_instances_without_countable_classes_is_one_line(tmp_path: Path) -> None:
    data = write_multiclass_folder(tmp_path / "data", splits={"train": 1})
    (data / "classes.yaml").write_text(
        "classes:\n  - {name: sky, color: [1, 1, 1]}\n  - {name: road, color: [2, 2, 2]}\n"
        "  - {name: wall, color: [3, 3, 3]}\n  - {name: void, color: [0, 0, 0], ignore: true}\n"
    )
    result = run_cli("derive", "--to", "instances", "--data", str(data), "--out", str(tmp_path))
    assert_one_line_error(result, "no countable class")


# ------------------------------------------------------------------ mask AP


def test_mask_ap_perfect_and_missing_detections() -> None:
    pytest.importorskip("pycocotools")
    from semseg.metrics.mask_ap import MaskAP

    mask = hand_mask()
    truth = [(2, mask == 2), (3, mask == 3)]
    perfect = MaskAP(["road", "sky", "car", "pole"], [2, 3])
    perfect.update(mask.shape, truth, np.stack([m for _, m in truth]), np.array([0.9, 0.8]), [2, 3])
    scores = perfect.compute()
    assert scores["ap"] == pytest.approx(100.0) and scores["ap50"] == pytest.approx(100.0)
    assert scores["per_class"] == {"car": pytest.approx(100.0), "pole": pytest.approx(100.0)}
    wrong_class = MaskAP(["road", "sky", "car", "pole"], [2, 3])
    wrong_class.update(mask.shape, truth, np.stack([mask == 3]), np.array([0.9]), [2])
    assert wrong_class.compute()["ap"] == pytest.approx(0.0)
    none = MaskAP(["road", "sky", "car", "pole"], [2, 3])
    none.update(mask.shape, truth, np.zeros((0, *mask.shape), bool), np.zeros(0), np.zeros(0))
    assert none.compute()["ap"] == 0.0 and none.compute()["instances"] == 2


# ------------------------------------------------------------------ end to end


def test_maskrcnn_semantic_trains_and_evaluates_on_tiny_multiclass_data(tmp_path: Path) -> None:
    from semseg.training import train

    data = write_multiclass_folder(tmp_path / "data", size=(64, 96))
    config = tiny_config(tmp_path / "runs", epochs=2, lr=1e-3)
    config.data.kind, config.data.root = "folder", str(data)
    config.data.height, config.data.width = 64, 96
    config.model.name, config.model.keep_prob = "maskrcnn-semantic", 1.0
    config.train.overlay_samples = 1
    run = train(config)
    hparams = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)["hyper_parameters"]
    assert hparams["model_options"]["things"] == [2]  # "car" of the class table
    header, *rows = (run / "metrics.csv").read_text().splitlines()
    assert len(rows) == 2 and all(np.isfinite(float(r.split(",")[1])) for r in rows)
    results = json.loads((run / "eval_val.json").read_text())
    assert results["task"] == "multiclass" and 0.0 <= results["groups"]["all"]["miou"] <= 100.0
    out = tmp_path / "eval.json"
    checkpoint = run / "checkpoints" / "best.ckpt"
    result = run_cli("evaluate", str(checkpoint), "--data", str(data), "--split", "val",
                     "--out", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    results = json.loads(out.read_text())
    assert results["model"] == "maskrcnn-semantic" and results["num_images"] == 4
    if results["mask_ap"] is not None:  # pycocotools installed
        assert results["mask_ap"]["instances"] == 4  # one car per validation image
        assert 0.0 <= results["mask_ap"]["ap"] <= 100.0
        assert "mask AP " in result.stdout and "AP50" in result.stdout
    else:
        assert "mask AP needs pycocotools" in result.stdout
    with pytest.raises(SemsegError, match="does not export"):
        from semseg.inference.checkpoint import load_model
        from semseg.inference.onnx_export import export_onnx

        export_onnx(load_model(checkpoint), tmp_path / "m.onnx")


def test_maskrcnn_semantic_refuses_data_without_countable_classes(tmp_path: Path) -> None:
    from semseg.training import build_task

    config = tiny_config(tmp_path)
    config.model.name = "maskrcnn-semantic"
    with pytest.raises(SemsegError, match="countable"):
        build_task(config)  # KITTI road: "not road" and "road"

"""End-to-end check of semseg.evaluation.evaluate_samples against a direct numpy calculation.

A tiny KITTI layout is written by hand. Each image carries its own answer: the red channel is
255 on road pixels and 0 elsewhere; the green channel holds a blurred, noisy road probability in
8-bit levels. Hand-written models turn those channels into logits, so the road probability of
every pixel is known exactly and the devkit scores can be recomputed here from the definitions
(Fritsch et al., ITSC 2013): counts pooled per category, thresholds k/255 on 8-bit levels.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

from semseg.data.kitti import index_split, read_sample
from semseg.data.sample import Sample
from semseg.evaluation import SCORE_COLUMNS, ConfusionCounts, evaluate_samples
from semseg.inference.checkpoint import LoadedModel

# (name, height, width): two image sizes, mixed within categories
IMAGES = [
    ("um_000000", 40, 90),
    ("um_000001", 37, 85),
    ("umm_000000", 37, 85),
    ("uu_000000", 40, 90),
    ("uu_000001", 37, 85),
]


pytestmark = pytest.mark.usefixtures("single_thread")


def box_blur(x: np.ndarray, radius: int) -> np.ndarray:
    padded = np.pad(x, radius, mode="edge")
    out = np.zeros_like(x)
    size = 2 * radius + 1
    for dy in range(size):
        for dx in range(size):
            out += padded[dy : dy + x.shape[0], dx : dx + x.shape[1]]
    return out / size**2


def make_scene(index: int, height: int, width: int) -> dict[str, np.ndarray]:
    """Road (a slanted region plus a block), valid area, noisy probability levels."""
    rng = np.random.default_rng(100 + index)
    rows, cols = np.mgrid[0:height, 0:width]
    road = (rows > 12 + 0.2 * cols - 3 * index) & (rows > 10)
    road |= (rows > 5) & (rows < 15) & (cols > 60 - 5 * index) & (cols < 75 - 5 * index)
    valid = np.ones((height, width), dtype=bool)
    valid[: 3 + index % 3] = False  # ignored top band
    valid &= rng.random((height, width)) > 0.03  # scattered ignored pixels
    probability = box_blur(road.astype(np.float64), 2) * 0.7 + 0.15
    probability += rng.normal(0.0, 0.15, (height, width))
    green = np.round(np.clip(probability, 0.0, 1.0) * 255).astype(np.uint8)
    return {"road": road, "valid": valid, "green": green}


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict]]:
    root = tmp_path_factory.mktemp("kitti_eval")
    scenes = {}
    for index, (name, height, width) in enumerate(IMAGES):
        scene = make_scene(index, height, width)
        image = np.zeros((height, width, 3), dtype=np.uint8)
        image[..., 0] = np.where(scene["road"], 255, 0)
        image[..., 1] = scene["green"]
        gt = np.zeros((height, width, 3), dtype=np.uint8)
        gt[..., 0] = np.where(scene["valid"], 255, 0)
        gt[..., 2] = np.where(scene["road"], 255, 0)  # includes road outside the valid area
        category, number = name.split("_")
        for folder, file_name, array in (
            ("image_2", f"{name}.png", image),
            ("gt_image_2", f"{category}_road_{number}.png", gt),
        ):
            (root / "training" / folder).mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(root / "training" / folder / file_name)
        scene["category"] = category
        scenes[name] = scene
    return root, scenes


class RedChannelModel(nn.Module):
    """Logits ``[0, k * (red - 0.5)]``: road probability sigmoid(+-k/2) on pure red/black."""

    def __init__(self, k: float) -> None:
        super().__init__()
        self.k = k

    def forward(self, image: Tensor) -> Tensor:
        road = self.k * (image[:, 0:1] - 0.5)
        return torch.cat([torch.zeros_like(road), road], dim=1)


class GreenChannelModel(nn.Module):
    """Logits ``[0, logit(green)]``: the softmax road probability is the green channel."""

    def forward(self, image: Tensor) -> Tensor:
        q = image[:, 1:2].clamp(1e-6, 1 - 1e-6)
        logit = torch.log(q) - torch.log1p(-q)
        return torch.cat([torch.zeros_like(logit), logit], dim=1)


def loaded_model(module: nn.Module, input_size: tuple[int, int]) -> LoadedModel:
    return LoadedModel(
        model=module.eval(),
        model_name="hand-written",
        num_classes=2,
        input_size=input_size,
        positive_class=1,
        class_names=["not road", "road"],
        path=Path("hand-written.ckpt"),
    )


def evaluate_at_native_size(
    loaded: LoadedModel, samples: list[Sample], read: Callable = read_sample
) -> dict:
    """Run every image at its own size: batch size 1, and the reader (called for each chunk
    before prediction) sets ``input_size`` to the image's size, so nothing is resampled."""

    def reader(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        image, mask = read(sample)
        loaded.input_size = image.shape[:2]
        return image, mask

    progress: list[int] = []
    result = evaluate_samples(loaded, samples, reader, batch_size=1, on_progress=progress.append)
    assert progress == [1] * len(samples)
    return result


# ------------------------------------------------------------------------ direct reference


def reference_group(levels: np.ndarray, road: np.ndarray) -> dict[str, float]:
    """The devkit's scores, threshold by threshold, from valid pixels' levels and truth."""
    eps = 1e-10
    num_pos, num_neg = int(road.sum()), int((~road).sum())
    rows = []
    for k in range(256):
        positive = levels >= k
        tp = int(np.sum(positive & road))
        fp = int(np.sum(positive & ~road))
        fn = int(np.sum(~positive & road))
        if tp == 0:
            continue  # recall == precision == 0: dropped
        precision = tp / (tp + fp + eps)
        recall = tp / num_pos
        f = 2 * precision * recall / (precision + recall + eps)
        rows.append((k, f, precision, recall, fp, fn))
    best = max(rows, key=lambda row: row[1])  # max() keeps the first of equal maxima
    k, f, precision, recall, fp, fn = best
    precisions = np.array([row[2] for row in rows])
    recalls = np.array([row[3] for row in rows])
    ap_terms = [
        precisions[recalls >= r].max() for r in np.arange(0, 1.1, 0.1) if (recalls >= r).any()
    ]
    # argmax labels: road iff logit > 0 iff green / 255 > 0.5 iff level >= 128
    label = levels >= 128
    tp_a = int(np.sum(label & road))
    fp_a = int(np.sum(label & ~road))
    fn_a = int(np.sum(~label & road))
    tn_a = int(np.sum(~label & ~road))
    iou_road = 100 * tp_a / (tp_a + fp_a + fn_a)
    iou_background = 100 * tn_a / (tn_a + fp_a + fn_a)
    return {
        "max_f": 100 * f,
        "ap": 100 * float(np.mean(ap_terms)),
        "precision": 100 * precision,
        "recall": 100 * recall,
        "fpr": 100 * fp / num_neg,
        "fnr": 100 * fn / num_pos,
        "best_threshold": k / 255,
        "iou": iou_road,
        "miou": (iou_road + iou_background) / 2,
        "pixel_accuracy": 100 * (tp_a + tn_a) / (num_pos + num_neg),
    }


def reference_scores(scenes: dict[str, dict], names: list[str]) -> dict[str, dict[str, float]]:
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(scenes[name]["category"], []).append(name)
    groups["all"] = list(names)
    out = {}
    for group, members in groups.items():
        levels = np.concatenate([scenes[n]["green"][scenes[n]["valid"]] for n in members])
        road = np.concatenate([scenes[n]["road"][scenes[n]["valid"]] for n in members])
        out[group] = reference_group(levels.astype(np.int64), road)
        out[group]["num_images"] = len(members)
    return out


def assert_matches_reference(result: dict, expected: dict[str, dict[str, float]]) -> None:
    assert list(result["groups"]) == sorted(expected, key=lambda g: (g == "all", g))
    for group, values in expected.items():
        got = result["groups"][group]
        assert set(SCORE_COLUMNS) | {"iou", "miou", "pixel_accuracy", "num_images"} == set(got)
        for key, value in values.items():
            assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-9), (group, key)


# ------------------------------------------------------------------------------------ tests


def test_reference_is_not_trivial(layout) -> None:
    """The noisy scenes give scores well away from 0 and 100 (so the comparison has teeth)."""
    _, scenes = layout
    expected = reference_scores(scenes, [name for name, _, _ in IMAGES])
    for values in expected.values():
        assert 70 < values["max_f"] < 99.5
        assert 0 < values["fpr"] < 30 and 0 < values["fnr"] < 30
        assert 0.2 < values["best_threshold"] < 0.8
    assert len({round(v["max_f"], 6) for v in expected.values()}) == len(expected)


def test_perfect_model_scores_100(layout) -> None:
    root, _ = layout
    samples = index_split(root)
    assert [s.name for s in samples] == sorted(name for name, _, _ in IMAGES)
    loaded = loaded_model(RedChannelModel(k=40.0), (40, 90))
    result = evaluate_at_native_size(loaded, samples)
    assert result["model"] == "hand-written" and result["space"] == "perspective"
    assert result["num_images"] == 5
    assert list(result["groups"]) == ["um", "umm", "uu", "all"]
    for group, scores in result["groups"].items():
        assert scores["max_f"] == pytest.approx(100.0), group
        assert scores["ap"] == pytest.approx(100.0), group
        assert scores["precision"] == pytest.approx(100.0)
        assert scores["recall"] == pytest.approx(100.0)
        assert scores["fpr"] == 0.0 and scores["fnr"] == 0.0
        assert scores["best_threshold"] == pytest.approx(1 / 255)  # first threshold with F = 1
        assert scores["iou"] == pytest.approx(100.0) and scores["miou"] == pytest.approx(100.0)
        assert scores["pixel_accuracy"] == pytest.approx(100.0)
    assert [result["groups"][g]["num_images"] for g in ("um", "umm", "uu", "all")] == [2, 1, 2, 5]


def test_known_probability_matches_direct_calculation(layout) -> None:
    root, scenes = layout
    samples = index_split(root)
    result = evaluate_at_native_size(loaded_model(GreenChannelModel(), (40, 90)), samples)
    assert_matches_reference(result, reference_scores(scenes, [s.name for s in samples]))


def test_batched_images_at_the_model_size(layout) -> None:
    """Images already at the model's input size, several per batch (one shared size)."""
    root, scenes = layout
    samples = [s for s in index_split(root) if s.name in ("um_000000", "uu_000000")]
    loaded = loaded_model(GreenChannelModel(), (40, 90))
    result = evaluate_samples(loaded, samples, read_sample, batch_size=4)
    assert result["num_images"] == 2
    assert_matches_reference(result, reference_scores(scenes, [s.name for s in samples]))


def test_confusion_counts_three_classes_by_hand() -> None:
    truth = np.array([[0, 0, 1], [1, 2, 255]])
    prediction = np.array([[0, 1, 1], [2, 2, 0]])
    counts = ConfusionCounts(3)
    counts.update(truth, prediction)
    # rows truth, columns prediction; the ignored pixel is not counted
    np.testing.assert_array_equal(counts.matrix, [[1, 1, 0], [0, 1, 1], [0, 0, 1]])
    # class 0: 1 / (1 + 1 + 0); class 1: 1 / (2 + 2 - 1); class 2: 1 / (2 + 1 - 1)
    np.testing.assert_allclose(counts.iou(), [50.0, 100.0 / 3.0, 50.0])
    assert counts.accuracy() == pytest.approx(60.0)
    # counts accumulate; a fourth class never seen has NaN IoU
    four = ConfusionCounts(4)
    four.update(truth, prediction)
    four.update(np.array([[2, 2]]), np.array([[2, 0]]))
    assert four.matrix[2].tolist() == [1, 0, 2, 0]
    iou = four.iou()
    assert np.isnan(iou[3])
    np.testing.assert_allclose(iou[:3], [100 / 3, 100 / 3, 50.0])  # 1/3, 1/3, 2/4
    assert four.accuracy() == pytest.approx(100 * 4 / 7)
    assert np.isnan(ConfusionCounts(2).accuracy())


# ------------------------------------------------------------------------- folder datasets


def write_folder_dataset(root: Path, scenes: dict[str, dict]) -> Path:
    """The scenes as a folder dataset: images/NAME.png, masks/NAME.png (1 road, 255 ignored)."""
    for name, scene in scenes.items():
        image = np.zeros(scene["road"].shape + (3,), dtype=np.uint8)
        image[..., 0] = np.where(scene["road"], 255, 0)
        image[..., 1] = scene["green"]
        mask = np.where(scene["valid"], scene["road"].astype(np.uint8), 255).astype(np.uint8)
        for folder, array in (("images", image), ("masks", mask)):
            (root / folder).mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(root / folder / f"{name}.png")
    return root


def test_folder_dataset_is_scored_in_the_all_group(layout, tmp_path: Path) -> None:
    """Folder samples have no category: one pooled group, equal to the KITTI pooled scores."""
    from semseg.data.folder import index_folder, read_folder_sample

    _, scenes = layout
    root = write_folder_dataset(tmp_path / "folder", scenes)
    samples = index_folder(root)
    assert {s.category for s in samples} == {None}
    read = functools.partial(read_folder_sample, num_classes=2, class_table=None)
    result = evaluate_at_native_size(loaded_model(GreenChannelModel(), (40, 90)), samples, read)
    assert list(result["groups"]) == ["all"] and result["groups"]["all"]["num_images"] == 5
    expected = reference_scores(scenes, list(scenes))["all"]
    for key, value in expected.items():
        assert result["groups"]["all"][key] == pytest.approx(value, rel=1e-9, abs=1e-9), key


def test_folder_dataset_train_evaluate_sweep(tmp_path: Path) -> None:
    """A tiny folder dataset end to end through the command: train, evaluate, sweep."""
    import csv
    import json

    from conftest import run_cli

    scenes = {f"frame{i:02d}": make_scene(i % 5, 40, 96) for i in range(8)}
    data = write_folder_dataset(tmp_path / "folder", scenes)
    tiny = [
        "data.height=32",
        "data.width=64",
        "data.val_fraction=0.25",
        "model.width_mult=0.0625",
        "train.epochs=1",
        "train.batch_size=4",
        "train.max_time_s=null",
        "train.progress=false",
        "train.overlay_samples=1",
    ]
    sets = [item for override in tiny for item in ("--set", override)]
    run = tmp_path / "run"
    result = run_cli("train", "--config", "demo", "--data", str(data), "--run-dir", str(run), *sets)
    assert result.returncode == 0, result.stderr[-2000:]
    config = (run / "config.yaml").read_text()
    assert "kind: folder" in config and "val_every" not in config
    finished = json.loads((run / "eval_val.json").read_text())
    assert list(finished["groups"]) == ["all"] and finished["groups"]["all"]["num_images"] == 2

    out = tmp_path / "eval.json"
    checkpoint = str(run / "checkpoints" / "best.ckpt")
    result = run_cli("evaluate", checkpoint, "--data", str(data), "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    scores = json.loads(out.read_text())
    assert list(scores["groups"]) == ["all"] and scores["groups"]["all"]["num_images"] == 8
    assert 0.0 <= scores["groups"]["all"]["max_f"] <= 100.0

    sweep = tmp_path / "sweep"
    result = run_cli(
        "sweep", "--config", "demo", "--data", str(data), "--out", str(sweep),
        *sets, "--set", "model.keep_prob=0.5,1.0",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    with (sweep / "results.csv").open() as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == 2 and all(row["max_f"] not in ("", "nan") for row in rows), rows

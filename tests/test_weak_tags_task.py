"""Training from tags for one or two steps on tiny synthetic data: the dataset of tagged crops,
the plain loop and the Lightning task (MIL and CAM)."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from semseg.data.sample import Sample
from semseg.errors import SemsegError
from semseg.weak.tag_task import TagDataset, TagTask, train_tag_steps
from semseg.weak.tags import Crop, TagRecord, match_samples

NAMES = ["sky", "road", "car"]


@pytest.fixture()
def tagged(tmp_path) -> list[tuple[TagRecord, Sample]]:
    samples = []
    for index in range(2):
        image = np.zeros((32, 48, 3), np.uint8)
        image[:16] = (120, 120, 250)  # sky on top
        image[16:] = (90, 90, 90)  # road below
        image[20:28, 8 + 16 * index : 24 + 16 * index] = (200, 20, 20)  # a car
        path = tmp_path / f"im{index}.png"
        Image.fromarray(image).save(path)
        samples.append(Sample(f"im{index}", "all", path))
    records = [
        TagRecord("im0.png", ("sky",), Crop(0, 0, 16, 24)),
        TagRecord("im0.png", ("road", "car"), Crop(16, 0, 16, 24)),
        TagRecord("im1", ("sky", "road", "car")),
    ]
    return match_samples(records, samples, "tags.csv")


def test_tag_dataset_crops_resizes_and_targets(tagged):
    dataset = TagDataset(tagged, NAMES, size=(16, 24))
    assert len(dataset) == 3
    image, target = dataset[0]
    assert image.shape == (3, 16, 24) and image.dtype == torch.float32
    torch.testing.assert_close(image[:, 0, 0], torch.tensor([120, 120, 250]) / 255.0)
    torch.testing.assert_close(target, torch.tensor([1.0, 0.0, 0.0]))
    image, target = dataset[2]  # whole 32x48 image resized to 16x24
    assert image.shape == (3, 16, 24)
    torch.testing.assert_close(target, torch.tensor([1.0, 1.0, 1.0]))
    bad = [(TagRecord("im0", ("sky",), Crop(20, 0, 16, 24)), tagged[0][1])]
    with pytest.raises(SemsegError, match="does not fit the 32x48 image"):
        TagDataset(bad, NAMES)[0]
    with pytest.raises(SemsegError, match="no tagged images"):
        TagDataset([], NAMES)


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("mil", {"model_name": "fcn8s", "model_options": {"width_mult": 0.125}, "lse_r": 5.0}),
        ("cam", {"cam_options": {"encoder": "resnet18"}}),
    ],
)
def test_two_plain_steps_change_the_weights_and_lower_the_loss(tagged, method, options):
    torch.manual_seed(0)
    task = TagTask(method, num_classes=3, lr=1e-3, **options)
    loader = DataLoader(TagDataset(tagged, NAMES, size=(32, 48)), batch_size=3)
    before = {name: p.detach().clone() for name, p in task.named_parameters()}
    batch = next(iter(loader))
    losses = train_tag_steps(task, [batch, batch, batch], steps=2)
    assert len(losses) == 2 and all(np.isfinite(losses))
    changed = [n for n, p in task.named_parameters() if not torch.equal(p, before[n])]
    assert changed
    with torch.no_grad():
        assert task.tag_loss(batch).item() < losses[0]  # the same batch, after two steps
    if method == "mil":
        assert task(batch[0]).shape == (3, 3, 32, 48)  # per-pixel scores, as any segmenter
        from semseg.models import build_model

        rebuilt = build_model("fcn8s", 3, width_mult=0.125)
        rebuilt.load_state_dict(task.segmentation_model().state_dict())
        rebuilt.eval(), task.eval()
        with torch.no_grad():
            torch.testing.assert_close(rebuilt(batch[0]), task(batch[0]))
    else:
        assert task(batch[0]).shape == (3, 3)
        with pytest.raises(SemsegError, match="not a segmentation model"):
            task.segmentation_model()


def test_lightning_fit_two_steps_with_tag_and_mask_validation(tmp_path):
    torch.manual_seed(0)
    images = torch.rand(4, 3, 32, 32)
    tags = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=torch.float32)
    masks = torch.randint(0, 3, (4, 32, 32))
    masks[:, 0] = 255
    task = TagTask("mil", 3, model_options={"width_mult": 0.125}, lr=1e-3)
    trainer = L.Trainer(
        accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )  # fmt: skip
    train = DataLoader(TensorDataset(images, tags), batch_size=2)
    val = [DataLoader(TensorDataset(images, tags), batch_size=2),
           DataLoader(TensorDataset(images, masks), batch_size=2)]  # fmt: skip
    trainer.fit(task, train, val)
    assert trainer.global_step == 2
    metrics = trainer.callback_metrics
    for key in ("train_loss", "val_tag_map", "val_miou"):
        assert key in metrics and torch.isfinite(metrics[key]), key
    assert 0.0 <= float(metrics["val_miou"]) <= 100.0


def test_unknown_method_is_refused():
    with pytest.raises(SemsegError, match="unknown tag method"):
        TagTask("boxes", 3)

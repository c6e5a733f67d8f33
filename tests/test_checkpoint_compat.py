"""Checkpoints of earlier releases still load and predict the same."""

from __future__ import annotations

from pathlib import Path

import torch

from semseg.inference.checkpoint import load_model
from semseg.models import build_model


def old_style_checkpoint(path: Path, model_name: str, options: dict) -> torch.nn.Module:
    """A checkpoint as earlier releases wrote it: every option saved, also ignored ones."""
    torch.manual_seed(0)
    model = build_model(model_name, 2, width_mult=options["width_mult"]).eval()
    hparams = {
        "model_name": model_name,
        "num_classes": 2,
        "input_size": [64, 96],
        "model_options": options,
        "class_names": ["not road", "road"],
        "positive_class": 1,
    }
    state = {f"model.{key}": value for key, value in model.state_dict().items()}
    torch.save({"hyper_parameters": hparams, "state_dict": state}, path)
    return model


def test_segnet_checkpoint_with_an_ignored_keep_prob_loads_and_predicts_the_same(tmp_path):
    # SegNet never used keep_prob; earlier releases saved whatever the config held.
    options = {"backbone": "vgg16", "keep_prob": 0.75, "width_mult": 0.0625}
    original = old_style_checkpoint(tmp_path / "segnet.ckpt", "segnet", options)
    loaded = load_model(tmp_path / "segnet.ckpt")
    image = torch.rand(1, 3, 64, 96)
    with torch.inference_mode():
        assert torch.equal(loaded.model(image), original(image))

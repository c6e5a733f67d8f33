"""The Python API: semseg from a script or a notebook, as torchvision and
segmentation_models_pytorch are used.

    import semseg

    model = semseg.build_model("fcn8s", num_classes=2)          # (N,3,H,W) -> (N,C,H,W) logits
    config = semseg.load_config("demo", ["train.epochs=2"])
    run_dir = semseg.train(config)                              # the run folder
    segmenter = semseg.Segmenter.from_checkpoint(run_dir / "checkpoints" / "best.ckpt")
    result = segmenter.predict("scene.png")                     # a path, a PIL image or an array
    result.probabilities                                        # (C, H, W) float32, sums to 1
    result.labels                                               # (H, W) int64 class indices
    scores = semseg.evaluate(run_dir / "checkpoints" / "best.ckpt", "data_road")

Everything here is what the ``semseg`` command runs; errors are :class:`semseg.SemsegError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from semseg.config import Config, apply_overrides, validate
from semseg.config import load_config as read_config
from semseg.errors import SemsegError
from semseg.evaluation import evaluate_checkpoint
from semseg.inference.checkpoint import LoadedModel, load_model
from semseg.inference.options import BackendOptions
from semseg.inference.predictor import Predictor
from semseg.io import read_rgb, to_rgb_array
from semseg.training import train as train_run

ImageLike = str | Path | Image.Image | np.ndarray


def load_config(name_or_path: str | None = None, overrides: Sequence[str] = ()) -> Config:
    """A packaged config by name (``"kitti_fcn8s"``, ``"demo"``, ...) or a YAML file, with
    ``section.field=value`` overrides applied and every value checked."""
    return validate(apply_overrides(read_config(name_or_path), list(overrides)))


def train(config: Config, resume: str | Path | None = None) -> Path:
    """Train as ``config`` says (or continue the run ``resume``); returns the run folder."""
    return train_run(config, resume=resume)


def load_checkpoint(path: str | Path) -> LoadedModel:
    """A checkpoint's model (eval mode) with its classes and input size, loaded safely."""
    return load_model(path)


def evaluate(checkpoint: str | Path, data: str | Path, split: str = "all") -> dict[str, Any]:
    """The devkit's scores of ``checkpoint`` on the labelled images of ``data`` (``split``:
    ``all``, or ``val``: the validation images of the checkpoint's run), fp32 eager torch."""
    return evaluate_checkpoint(checkpoint, data, split=split)


@dataclass
class Segmentation:
    """One image's prediction at the image's own size."""

    probabilities: np.ndarray  # (C, H, W) float32
    labels: np.ndarray  # (H, W) int64, the argmax class
    class_names: list[str]


class Segmenter:
    """A trained model ready to label images of any size (resized to its training size and back).

    ``backend``: ``"torch"`` (fp32 eager, the default), ``"onnxruntime"`` or ``"auto"`` (the
    fastest backend that matches fp32, timed once per machine and cached).
    """

    def __init__(self, loaded: LoadedModel, backend: str = "torch", batch_size: int = 4) -> None:
        self.loaded = loaded
        self.predictor = Predictor(loaded, batch_size=batch_size, backend=backend)

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, backend: str = "torch", batch_size: int = 4
    ) -> Segmenter:
        BackendOptions(backend=backend)  # a bad name is refused here, naming the choices
        return cls(load_model(path), backend=backend, batch_size=batch_size)

    @property
    def class_names(self) -> list[str]:
        return list(self.loaded.class_names)

    def predict(self, image: ImageLike) -> Segmentation:
        """Class probabilities and labels of one image."""
        return self.predict_many([image])[0]

    def predict_many(self, images: Sequence[ImageLike]) -> list[Segmentation]:
        arrays = [as_rgb_array(image) for image in images]
        return [
            Segmentation(probability, probability.argmax(axis=0).astype(np.int64), self.class_names)
            for probability in self.predictor.predict(arrays)
        ]


def as_rgb_array(image: ImageLike) -> np.ndarray:
    """An (H, W, 3) uint8 RGB array from a path, a PIL image or an array."""
    if isinstance(image, str | Path):
        return read_rgb(image)
    if isinstance(image, Image.Image):
        return to_rgb_array(image)
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise SemsegError(
            f"an image array must be (H, W, 3) uint8 RGB, got {array.shape} {array.dtype}"
        )
    return array

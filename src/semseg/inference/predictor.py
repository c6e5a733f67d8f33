"""Full-resolution class probabilities from a trained model, in batches."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from semseg.data.transforms import image_to_tensor
from semseg.inference.autotune import make_backend
from semseg.inference.checkpoint import LoadedModel
from semseg.inference.crf import CRFParams, refine
from semseg.inference.runtimes import InferenceBackend
from semseg.inference.visualize import confidence_levels  # noqa: F401 (its old home)


class Predictor:
    """Resizes each image to the training size, runs the model, upsamples logits back.

    ``predict(images)`` yields ``(C, H, W)`` float32 probabilities, one per input image at the
    image's own size (bilinear upsampling of the logits, then softmax). With ``crf`` set, each
    image's probabilities are then refined by the fully connected CRF (:mod:`semseg.inference.crf`)
    against the image itself. With ``mil`` (a ``semseg.weak.mil.MILInference``, for a model
    trained from tags) the image-level prior from the LSE-pooled scores multiplies the
    probabilities, which are then averaged within superpixels if it says so.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        batch_size: int = 4,
        device: str = "cpu",
        crf: CRFParams | None = None,
        backend: str | InferenceBackend | None = None,
        mil: Any = None,
    ) -> None:
        self.loaded = loaded
        self.crf = crf
        self.mil = mil
        self.batch_size = max(1, batch_size)
        self.device = torch.device(device)
        self.model = None if loaded.model is None else loaded.model.to(self.device).eval()
        # What runs the model (semseg.inference.autotune): plain fp32 eager torch by default;
        # "torch", "onnxruntime" or "auto" by name, or a backend instance.
        self.engine = make_backend(loaded, backend, device)
        self.backend = self.engine.name

    @property
    def positive_class(self) -> int:
        return self.loaded.positive_class

    @torch.inference_mode()
    def predict_batch(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        height, width = self.loaded.input_size
        batch = torch.stack([image_to_tensor(image, height, width) for image in images])
        logits = self.engine.logits(batch.to(self.device)).float()
        probabilities = []
        for index, image in enumerate(images):
            full = F.interpolate(
                logits[index : index + 1],
                size=image.shape[:2],
                mode="bilinear",
                align_corners=False,
            )
            if self.mil is not None:
                from semseg.weak.mil import mil_probabilities

                probability = mil_probabilities(full[0], self.mil, image)
            else:
                probability = full.softmax(dim=1)[0].cpu().numpy()
            if self.crf is not None:
                probability = refine(image, probability, self.crf)
            probabilities.append(probability)
        return probabilities

    def predict(self, images: Sequence[np.ndarray]) -> Iterator[np.ndarray]:
        for start in range(0, len(images), self.batch_size):
            yield from self.predict_batch(images[start : start + self.batch_size])

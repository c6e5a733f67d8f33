"""Multiple-instance learning from image-level tags with Log-Sum-Exp pooling.

Pinheiro & Collobert, "From Image-level to Pixel-level Labeling with Convolutional Networks",
CVPR 2015. A segmentation network produces per-pixel class scores ``s_k(i, j)``; during training
they are aggregated into one score per class and image by Log-Sum-Exp (LSE) pooling

    s_k = (1/r) log( (1/N) sum_ij exp(r s_k(i, j)) ),    N = H * W pixels,

which is mean pooling as ``r -> 0`` and max pooling as ``r -> inf`` (``r`` trades "every pixel
of the class counts" against "the most confident pixel decides"). It is computed stably as
``(logsumexp(r s) - log N) / r``.

Loss: the paper trains with a softmax over the classes and one label per image. Tags list several
classes per image, so here each class is a binary "present / absent" decision: the pooled scores
are logits of a per-class sigmoid and the loss is the binary cross-entropy averaged over classes
and images (multi-label). The image-level class probabilities at inference are therefore
sigmoids of the pooled scores.

Inference as in the paper: the pixel probabilities ``p_ij(k)`` (softmax over the classes of the
pixel scores) are multiplied by the image-level prior ``p(k | image)`` (the class probabilities
from the pooled scores) — classes the image is unlikely to contain are suppressed — and
optionally smoothed by averaging them within superpixels (SLIC, Achanta et al., TPAMI 2012, or
Felzenszwalb & Huttenlocher's graph segmentation, IJCV 2004; scikit-image, the optional ``weak``
extra) or within segments the caller provides; each pixel then takes the argmax class. Averaging
within a segment and multiplying by a per-image constant commute, so the order does not matter.

Tags of crops (``semseg derive --to tags --crop HxW``) teach the classifier to judge an extent
of that size, not a whole frame: a class that fills a corner is "present" in its crop but its
pooled score over the whole frame is low. The image-level prior is therefore computed per tile
of the tags' extent (``MILInference.prior_tiles``, rows x columns of the frame, recorded in the
checkpoint at training) and multiplies the pixels of its own tile; tags of whole images give one
tile, the paper's prior. (Per tile, smoothing and the prior no longer commute exactly: the
prior is applied first.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from semseg.errors import SemsegError

INSTALL_HINT = 'pip install -e ".[weak]"'
SMOOTHING = ("none", "slic", "felzenszwalb")
DEFAULT_LSE_R = 2.0  # BENCHMARKS.md, Weak supervision: r = 2 beat 1 and 5 on CamVid


def check_lse_r(r: float) -> float:
    if not (isinstance(r, int | float) and math.isfinite(r) and r > 0):
        raise SemsegError(f"train.lse_r must be a positive number, got {r!r}")
    return float(r)


def lse_pool(scores: Tensor, r: float) -> Tensor:
    """Log-Sum-Exp pooling of ``(N, C, H, W)`` pixel scores to ``(N, C)`` image scores.

    ``(1/r) log(mean_ij exp(r s(i, j)))``, evaluated as ``(logsumexp(r s) - log(H W)) / r`` so
    that large ``r`` or large scores do not overflow (half-precision scores are pooled in
    float32).
    """
    r = check_lse_r(r)
    flat = scores.flatten(start_dim=2)
    if flat.dtype in (torch.float16, torch.bfloat16):
        flat = flat.float()
    return (torch.logsumexp(r * flat, dim=2) - math.log(flat.shape[2])) / r


def mil_loss(image_scores: Tensor, targets: Tensor) -> Tensor:
    """Multi-label loss: per-class sigmoid binary cross-entropy of the pooled ``(N, C)`` scores
    against ``(N, C)`` multi-hot tags, averaged over classes and images."""
    if image_scores.shape != targets.shape:
        raise ValueError(f"scores {tuple(image_scores.shape)} vs tags {tuple(targets.shape)}")
    return F.binary_cross_entropy_with_logits(image_scores.float(), targets.float())


class MILSegmenter(nn.Module):
    """A segmentation model of the registry trained by MIL: ``forward`` returns its per-pixel
    class scores ``(N, C, H, W)`` (so it predicts like any segmentation model) and
    :meth:`pooled` / :meth:`scores` give the LSE-pooled image scores ``(N, C)``.

    ``model`` is any module mapping ``(N, 3, H, W)`` images in [0, 1] to ``(N, C, H, W)``
    scores; by default ``semseg.models.build_model(model_name, num_classes, **model_options)``.
    """

    def __init__(
        self,
        model_name: str = "fcn8s",
        num_classes: int = 2,
        lse_r: float = DEFAULT_LSE_R,
        model_options: dict[str, Any] | None = None,
        model: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.lse_r = check_lse_r(lse_r)
        if model is None:
            from semseg.models import build_model

            model = build_model(model_name, num_classes, **(model_options or {}))
        self.model = model
        self.num_classes = num_classes

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)

    def pooled(self, pixel_scores: Tensor) -> Tensor:
        return lse_pool(pixel_scores, self.lse_r)

    def scores(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """``(pixel scores (N, C, H, W), image scores (N, C))``."""
        pixel_scores = self(images)
        return pixel_scores, self.pooled(pixel_scores)

    def loss(self, images: Tensor, targets: Tensor) -> Tensor:
        return mil_loss(self.scores(images)[1], targets)


# --- inference -----------------------------------------------------------------------------------


def pixel_probabilities(pixel_scores: Tensor) -> Tensor:
    """Softmax over the classes (dimension -3) of ``(..., C, H, W)`` pixel scores."""
    return pixel_scores.float().softmax(dim=-3)


def image_prior(image_scores: Tensor) -> Tensor:
    """Image-level class probabilities ``p(k | image)`` from pooled scores (sigmoid, since the
    classifier is multi-label)."""
    return image_scores.float().sigmoid()


def apply_image_prior(probabilities: Tensor, prior: Tensor) -> Tensor:
    """``p_ij(k) p(k | image)`` renormalised to sum to 1 over the classes of each pixel.

    ``probabilities`` ``(..., C, H, W)`` and ``prior`` ``(..., C)``.
    """
    weighted = probabilities * prior[..., None, None]
    total = weighted.sum(dim=-3, keepdim=True)
    uniform = torch.full_like(weighted, 1.0 / weighted.shape[-3])
    return torch.where(
        total > 0, weighted / total.clamp_min(torch.finfo(total.dtype).tiny), uniform
    )


MAX_PRIOR_TILES = 64  # per side; a tag crop smaller than 1/64 of the frame teaches no prior


def check_prior_tiles(tiles: object) -> tuple[int, int]:
    """``(rows, columns)``: two whole numbers from 1 to :data:`MAX_PRIOR_TILES`."""
    valid = (
        isinstance(tiles, tuple | list)
        and len(tiles) == 2
        and all(isinstance(n, int) and not isinstance(n, bool) for n in tiles)
        and all(1 <= n <= MAX_PRIOR_TILES for n in tiles)
    )
    if not valid:
        raise SemsegError(
            f"prior tiles must be two whole numbers from 1 to {MAX_PRIOR_TILES}, got {tiles!r}"
        )
    return int(tiles[0]), int(tiles[1])


def prior_tiles_for(extent: tuple[float, float]) -> tuple[int, int]:
    """Tiles per side for tags of an extent given as fractions ``(crop height / image height,
    crop width / image width)``: the nearest whole number of crops that covers each side."""
    tiles = tuple(
        min(MAX_PRIOR_TILES, max(1, round(1.0 / fraction))) if fraction > 0 else 1
        for fraction in extent
    )
    return check_prior_tiles(tiles)


def tile_slices(height: int, width: int, tiles: tuple[int, int]) -> list[tuple[slice, slice]]:
    """Row-major ``(rows, columns)`` slices of an ``height x width`` grid cut into ``tiles``
    nearly equal tiles (sides differ by at most one pixel)."""
    rows = np.linspace(0, height, tiles[0] + 1).round().astype(int)
    columns = np.linspace(0, width, tiles[1] + 1).round().astype(int)
    return [
        (slice(int(top), int(bottom)), slice(int(left), int(right)))
        for top, bottom in zip(rows[:-1], rows[1:], strict=True)
        for left, right in zip(columns[:-1], columns[1:], strict=True)
        if bottom > top and right > left
    ]


def apply_tiled_prior(
    probabilities: Tensor, scores: Tensor, lse_r: float, tiles: tuple[int, int] = (1, 1)
) -> Tensor:
    """:func:`apply_image_prior` per tile: the pixels of each tile of the ``(C, H, W)``
    ``probabilities`` are weighted by the prior of the LSE-pooled ``scores`` of that tile."""
    result = probabilities.clone()
    for rows, columns in tile_slices(scores.shape[-2], scores.shape[-1], tiles):
        prior = image_prior(lse_pool(scores[None, :, rows, columns], lse_r)[0])
        result[:, rows, columns] = apply_image_prior(probabilities[:, rows, columns], prior)
    return result


def segment_mean(probabilities: np.ndarray, segments: np.ndarray) -> np.ndarray:
    """Each pixel's ``(C, H, W)`` probabilities replaced by their mean over its segment.

    ``segments`` is an ``(H, W)`` integer map; pixels with the same value form one segment
    (superpixels, or any unsupervised segmentation).
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    segments = np.asarray(segments)
    if probabilities.ndim != 3 or segments.shape != probabilities.shape[1:]:
        raise SemsegError(
            f"segments {segments.shape} do not match the probabilities {probabilities.shape}"
        )
    if not np.issubdtype(segments.dtype, np.integer):
        raise SemsegError(f"segments must be an integer map, got {segments.dtype}")
    _, inverse = np.unique(segments.reshape(-1), return_inverse=True)
    inverse = inverse.reshape(-1)
    counts = np.bincount(inverse).astype(np.float64)
    means = np.stack(
        [np.bincount(inverse, weights=channel.reshape(-1)) / counts for channel in probabilities]
    )
    return means[:, inverse].reshape(probabilities.shape).astype(np.float32)


def superpixels(image: np.ndarray, method: str = "slic", **params: Any) -> np.ndarray:
    """An ``(H, W)`` int map of superpixels of an RGB ``uint8`` image (scikit-image).

    ``slic`` (defaults ``n_segments=400, compactness=10``) or ``felzenszwalb`` (defaults
    ``scale=100, sigma=0.8, min_size=50``); ``params`` override them.
    """
    if method not in SMOOTHING[1:]:
        raise SemsegError(f"unknown superpixel method {method!r}; choose slic or felzenszwalb")
    if image.ndim != 3 or image.shape[2] != 3:
        raise SemsegError(f"superpixels need an (H, W, 3) RGB image, got shape {image.shape}")
    try:
        from skimage import segmentation
    except ImportError as error:
        raise SemsegError(f"superpixel smoothing needs scikit-image: {INSTALL_HINT}") from error
    if method == "slic":
        options = {"n_segments": 400, "compactness": 10.0, "start_label": 0} | params
        return segmentation.slic(image, channel_axis=-1, **options).astype(np.int64)
    options = {"scale": 100.0, "sigma": 0.8, "min_size": 50} | params
    return segmentation.felzenszwalb(image, channel_axis=-1, **options).astype(np.int64)


@dataclass(frozen=True)
class MILInference:
    """How MIL scores become labels: the LSE ``r`` of the image scores, the image-level prior
    on or off, and the smoothing prior (``none``, ``slic``, ``felzenszwalb``) with its
    scikit-image parameters."""

    lse_r: float = DEFAULT_LSE_R
    image_prior: bool = True
    smoothing: str = "none"
    smoothing_params: tuple[tuple[str, Any], ...] = ()
    prior_tiles: tuple[int, int] = (1, 1)

    def __post_init__(self) -> None:
        check_lse_r(self.lse_r)
        check_prior_tiles(self.prior_tiles)
        if self.smoothing not in SMOOTHING:
            raise SemsegError(
                f"unknown smoothing {self.smoothing!r}; choose one of {', '.join(SMOOTHING)}"
            )


def mil_probabilities(
    pixel_scores: Tensor,
    settings: MILInference | None = None,
    image: np.ndarray | None = None,
    segments: np.ndarray | None = None,
) -> np.ndarray:
    """``(C, H, W)`` float32 class probabilities of one image from its ``(C, H, W)`` scores.

    Applies the image-level prior (when ``settings.image_prior``; per tile of
    ``settings.prior_tiles``) and averages within
    ``segments`` when given, else within superpixels of ``image`` computed as
    ``settings.smoothing`` says.
    """
    settings = settings or MILInference()
    if pixel_scores.ndim != 3:
        raise ValueError(f"expected (C, H, W) scores, got {tuple(pixel_scores.shape)}")
    scores = pixel_scores.detach().float().cpu()
    probabilities = pixel_probabilities(scores)
    if settings.image_prior:
        probabilities = apply_tiled_prior(
            probabilities, scores, settings.lse_r, settings.prior_tiles
        )
    result = probabilities.numpy().astype(np.float32)
    if segments is None and settings.smoothing != "none":
        if image is None:
            raise SemsegError(f"smoothing {settings.smoothing!r} needs the image")
        segments = superpixels(image, settings.smoothing, **dict(settings.smoothing_params))
    if segments is not None:
        result = segment_mean(result, segments)
    return result


def mil_labels(
    pixel_scores: Tensor,
    settings: MILInference | None = None,
    image: np.ndarray | None = None,
    segments: np.ndarray | None = None,
) -> np.ndarray:
    """``(H, W)`` uint8 class ids: the argmax of :func:`mil_probabilities`."""
    probabilities = mil_probabilities(pixel_scores, settings, image, segments)
    return probabilities.argmax(axis=0).astype(np.uint8)


SMOOTH_OPTIONS = {"none": "none", "superpixels": "slic", "segments": "felzenszwalb"}
"""``--smooth`` of ``predict``/``evaluate``: SLIC superpixels or Felzenszwalb's segments."""


def inference_settings(
    lse_r: float | None,
    image_prior: bool,
    smooth: str,
    source: object = "the model",
    prior_tiles: tuple[int, int] = (1, 1),
) -> MILInference | None:
    """The MIL inference ``--image-prior`` / ``--smooth`` ask for (None: neither, plain argmax).

    ``lse_r`` is the model's LSE ``r`` (None: not a MIL model, refused); ``smooth`` one of
    :data:`SMOOTH_OPTIONS`; ``prior_tiles`` the tiles of the tags' extent the checkpoint
    records. scikit-image is checked here, before any image is read.
    """
    if smooth not in SMOOTH_OPTIONS:
        raise SemsegError(f"--smooth must be one of {', '.join(SMOOTH_OPTIONS)}, got {smooth!r}")
    if not image_prior and smooth == "none":
        return None
    if lse_r is None:
        raise SemsegError(
            f"{source} is not a MIL model (semseg train --supervision tags): "
            "--image-prior and --smooth apply to MIL models only"
        )
    if smooth != "none":
        try:
            import skimage.segmentation  # noqa: F401
        except ImportError as error:
            raise SemsegError(f"--smooth {smooth} needs scikit-image: {INSTALL_HINT}") from error
    return MILInference(
        lse_r=lse_r,
        image_prior=image_prior,
        smoothing=SMOOTH_OPTIONS[smooth],
        prior_tiles=prior_tiles,
    )


__all__ = [
    "DEFAULT_LSE_R",
    "SMOOTH_OPTIONS",
    "inference_settings",
    "MILInference",
    "MILSegmenter",
    "apply_image_prior",
    "apply_tiled_prior",
    "check_prior_tiles",
    "image_prior",
    "lse_pool",
    "mil_labels",
    "mil_loss",
    "mil_probabilities",
    "pixel_probabilities",
    "prior_tiles_for",
    "segment_mean",
    "superpixels",
    "tile_slices",
]

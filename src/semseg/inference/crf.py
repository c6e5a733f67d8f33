"""Fully connected CRF post-processing (Kraehenbuehl & Koltun, NIPS 2011), as DeepLab uses it.

Mean-field inference in a CRF over all pixel pairs whose unary terms are the network's
``-log p`` and whose pairwise Potts terms are two Gaussian kernels: a positional one (smoothness)
and a bilateral one on position and colour (appearance: pixels of similar colour nearby take the
same label, so boundaries snap to image edges). The backend is ``pydensecrf2`` (Kraehenbuehl's C++
code with the permutohedral lattice), an optional extra: ``pip install -e ".[crf]"``.

Defaults are DeepLab v1's (Chen et al., ICLR 2015): 10 iterations, positional ``sxy`` 3 with weight
3, bilateral ``sxy`` 121, ``srgb`` 5 with weight 4. They were tuned for PASCAL VOC at about
500 x 500; each is overridable (``--crf-iters``, ``--crf-pos-sxy``, ``--crf-pos-w``,
``--crf-bi-sxy``, ``--crf-bi-srgb``, ``--crf-bi-w``). It works with any model; it is meant for
the stride-8 models (DeepLab-LargeFOV above all), whose upsampled scores are blurry.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from types import ModuleType

import numpy as np

from semseg.errors import SemsegError

INSTALL_HINT = 'pip install -e ".[crf]"'
MIN_PROBABILITY = 1e-8


@dataclass(frozen=True)
class CRFParams:
    """Dense CRF settings (DeepLab v1's defaults)."""

    iterations: int = 10
    pos_sxy: float = 3.0
    pos_w: float = 3.0
    bi_sxy: float = 121.0
    bi_srgb: float = 5.0
    bi_w: float = 4.0

    def __post_init__(self) -> None:
        if int(self.iterations) != self.iterations or self.iterations < 1:
            raise SemsegError(f"--crf-iters must be a positive integer, got {self.iterations}")
        for name in ("pos_sxy", "bi_sxy", "bi_srgb"):
            if not getattr(self, name) > 0:
                raise SemsegError(f"--crf-{name.replace('_', '-')} must be positive")
        for name in ("pos_w", "bi_w"):
            if not getattr(self, name) >= 0:
                raise SemsegError(f"--crf-{name.replace('_', '-')} must not be negative")


def crf_params(enabled: bool, **overrides: float | int | None) -> CRFParams | None:
    """CRF settings from command-line flags: None without ``--crf``; overrides need ``--crf``.

    ``overrides`` are :class:`CRFParams` field names; None means "not given" (the default).
    """
    given = {key: value for key, value in overrides.items() if value is not None}
    unknown = set(given) - {f.name for f in fields(CRFParams)}
    if unknown:
        raise SemsegError(f"unknown CRF setting(s): {', '.join(sorted(unknown))}")
    if not enabled:
        if given:
            flags = ", ".join(
                "--crf-iters" if key == "iterations" else f"--crf-{key.replace('_', '-')}"
                for key in sorted(given)
            )
            verb = "applies" if len(given) == 1 else "apply"
            raise SemsegError(f"{flags} only {verb} with --crf")
        return None
    require_backend()
    return CRFParams(**given)  # type: ignore[arg-type]


def load_backend() -> ModuleType:
    """``pydensecrf.densecrf`` (from the ``pydensecrf2`` package), or a one-line SemsegError."""
    try:
        import pydensecrf.densecrf as densecrf
    except ImportError as error:
        raise SemsegError(
            f"--crf needs the optional fully connected CRF backend (pydensecrf2): {INSTALL_HINT}"
        ) from error
    return densecrf


def require_backend() -> None:
    """Fail early (before any inference) when the CRF backend is missing."""
    load_backend()


def backend_available() -> bool:
    try:
        load_backend()
    except SemsegError:
        return False
    return True


def refine(
    image: np.ndarray, probabilities: np.ndarray, params: CRFParams | None = None
) -> np.ndarray:
    """Dense-CRF refined class probabilities.

    Args:
        image: RGB ``uint8`` ``(H, W, 3)``, the image the probabilities belong to.
        probabilities: ``(C, H, W)`` class probabilities (softmax output) at the image's size.
        params: CRF settings (DeepLab's defaults when None).

    Returns:
        ``(C, H, W)`` float32 probabilities (the mean-field marginals; they sum to 1 per pixel).
    """
    params = params or CRFParams()
    if image.ndim != 3 or image.shape[2] != 3:
        raise SemsegError(f"CRF: expected an (H, W, 3) RGB image, got shape {image.shape}")
    if probabilities.ndim != 3 or probabilities.shape[1:] != image.shape[:2]:
        raise SemsegError(
            f"CRF: probabilities {probabilities.shape} do not match the image {image.shape[:2]}"
        )
    densecrf = load_backend()
    num_classes, height, width = probabilities.shape
    clipped = np.clip(probabilities.astype(np.float32), MIN_PROBABILITY, 1.0)
    unary = np.ascontiguousarray(-np.log(clipped).reshape(num_classes, -1))
    crf = densecrf.DenseCRF2D(width, height, num_classes)
    crf.setUnaryEnergy(unary)
    crf.addPairwiseGaussian(sxy=params.pos_sxy, compat=params.pos_w)
    crf.addPairwiseBilateral(
        sxy=params.bi_sxy,
        srgb=params.bi_srgb,
        rgbim=np.ascontiguousarray(image.astype(np.uint8)),
        compat=params.bi_w,
    )
    marginals = np.asarray(crf.inference(int(params.iterations)), dtype=np.float32)
    return marginals.reshape(num_classes, height, width)


__all__ = ["CRFParams", "backend_available", "crf_params", "refine", "require_backend"]

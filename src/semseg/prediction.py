"""``semseg predict``: overlays, devkit-named road probabilities and label masks for images.

For an input ``um_000000.png``, a two-class (road) model writes::

    OUT/overlay/um_000000.png     the image with the predicted road in translucent green
    OUT/prob/um_road_000000.png   8-bit road probability (0..255), named as the devkit expects
    OUT/label/um_000000.png       class indices (8-bit)

and a multi-class model (more than two classes, e.g. CamVid) writes, for ``0001TP_008550.png``::

    OUT/label/0001TP_008550.png    class indices (8-bit training ids)
    OUT/colour/0001TP_008550.png   the class indices in the model's class colours (RGB)
    OUT/overlay/0001TP_008550.png  the image tinted in the class colours, the legend on its right
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from semseg.data.kitti import kitti_gt_name
from semseg.errors import SemsegError
from semseg.inference.model_info import LoadedModel
from semseg.inference.palette import overlay_with_legend, write_label_pngs
from semseg.inference.visualize import confidence_levels, overlay
from semseg.io import IMAGE_SUFFIXES, list_images, read_rgb, write_png_atomic

if TYPE_CHECKING:  # torch is imported only where a model runs through it
    from semseg.inference.crf import CRFParams
    from semseg.inference.runtimes import InferenceBackend


def collect_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files named directly or found in the named folders, in the given order."""
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            paths.extend(list_images(path))
        elif path.is_file():
            paths.append(path)
        else:
            raise SemsegError(f"input not found: {path}")
    if not paths:
        raise SemsegError("no images found in the inputs")
    stems = [p.stem for p in paths]
    duplicates = sorted({s for s in stems if stems.count(s) > 1})
    if duplicates:
        raise SemsegError(f"two inputs share the name {duplicates[0]!r}; outputs would collide")
    unsupported = [p for p in paths if p.suffix.lower() not in IMAGE_SUFFIXES]
    if unsupported:
        raise SemsegError(f"not an image file: {unsupported[0]}")
    return paths


def readable_inputs(
    paths: Sequence[Path], skip_bad: bool, warn: Callable[[str], None]
) -> list[Path]:
    """Decode every input once before anything is written; bad ones fail or are skipped."""
    good = []
    for path in paths:
        try:
            read_rgb(path)
        except SemsegError as error:
            if not skip_bad:
                raise
            warn(f"skipped: {error}")
            continue
        good.append(path)
    if not good:
        raise SemsegError("no readable images among the inputs")
    return good


def predict_files(
    loaded: LoadedModel,
    paths: Sequence[Path],
    out_dir: Path,
    batch_size: int = 4,
    on_progress: Callable[[int], None] | None = None,
    crf: CRFParams | None = None,
    backend: str | InferenceBackend | None = None,
    mil: Any = None,
) -> int:
    """Write the outputs for each path (the module's docstring lists them: three for a
    two-class model, three others for a multi-class one); returns the number of images written.

    ``crf``: refine the probabilities with the fully connected CRF first (``--crf``).
    ``backend``: what runs the model (:mod:`semseg.inference.autotune`; default fp32 torch).
    ``mil``: a MIL model's inference (``semseg.weak.mil.MILInference``: image-level prior,
    smoothing), or None for the plain argmax.
    """
    from semseg.inference.predictor import Predictor

    predictor = Predictor(loaded, batch_size=batch_size, crf=crf, backend=backend, mil=mil)
    return write_predictions(
        loaded, paths, out_dir, predictor.batch_size, predictor.predict_batch, on_progress
    )


def write_predictions(
    loaded: LoadedModel,
    paths: Sequence[Path],
    out_dir: Path,
    batch_size: int,
    probabilities: Callable[[list[np.ndarray]], list[np.ndarray]],
    on_progress: Callable[[int], None] | None = None,
) -> int:
    """Read the images ``batch_size`` at a time, get their full-size class probabilities from
    ``probabilities`` (the torch predictor's, or the torch-free route's) and write each image's
    outputs; returns the number of images written."""
    written = 0
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        images = [read_rgb(path) for path in chunk]
        for path, image, probability in zip(chunk, images, probabilities(images), strict=True):
            if loaded.is_multiclass:
                write_multiclass_outputs(out_dir, path.stem, image, probability, loaded)
            else:
                write_outputs(out_dir, path.stem, image, probability, loaded.positive_class)
            written += 1
        if on_progress is not None:
            on_progress(len(chunk))
    return written


def write_outputs(
    out_dir: Path, stem: str, image: np.ndarray, probability: np.ndarray, positive: int
) -> None:
    labels = probability.argmax(axis=0).astype(np.uint8)
    write_png_atomic(out_dir / "overlay" / f"{stem}.png", overlay(image, labels == positive))
    write_png_atomic(
        out_dir / "prob" / f"{kitti_gt_name(stem)}.png", confidence_levels(probability[positive])
    )
    write_png_atomic(out_dir / "label" / f"{stem}.png", labels)


def write_multiclass_outputs(
    out_dir: Path, stem: str, image: np.ndarray, probability: np.ndarray, loaded: LoadedModel
) -> None:
    """The index label PNG, the colour label PNG and the overlay with the class legend."""
    labels = probability.argmax(axis=0).astype(np.uint8)
    colours = np.asarray(loaded.class_colours)
    write_label_pngs(
        out_dir / "label" / f"{stem}.png", out_dir / "colour" / f"{stem}.png", labels, colours
    )
    picture = overlay_with_legend(image, labels, loaded.class_names, colours)
    write_png_atomic(out_dir / "overlay" / f"{stem}.png", picture)


def written_outputs(loaded: LoadedModel) -> str:
    """What :func:`predict_files` writes per image, in words (for the closing line)."""
    if loaded.is_multiclass:
        return "labels, colour labels and overlays with the class legend"
    return "overlays, probabilities and labels"

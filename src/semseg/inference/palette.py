"""Multi-class pictures in a class palette: colour label PNGs, overlays with a legend, fractions.

``colours`` is a ``(K, 3)`` uint8 array of the training classes' colours (``ClassTable.colours``)
and ``mask`` a ``(H, W)`` array of training ids, 255 (ignore) where there is no label.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from semseg.config import IGNORE_INDEX
from semseg.io import write_png_atomic

IGNORE_COLOUR = (0, 0, 0)  # unlabelled pixels in colour label images
LEGEND_ROW = 18  # pixels per legend entry
LEGEND_MARGIN = 6
SWATCH = 12
LEGEND_WIDTH = 150
LEGEND_BACKGROUND = (255, 255, 255)
TEXT_COLOUR = (0, 0, 0)


def default_colours(num_classes: int) -> np.ndarray:
    """``(K, 3)`` uint8 colours for a model without a class table: the Pascal VOC colour map
    (bit-interleaved, so neighbouring ids get distinct colours); for two classes (road / not road)
    black and magenta, the KITTI overlay colours."""
    if num_classes == 2:
        return np.array([[0, 0, 0], [255, 0, 255]], dtype=np.uint8)
    colours = np.zeros((num_classes, 3), dtype=np.uint8)
    for index in range(num_classes):
        value, r, g, b = index, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= ((value >> 0) & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        colours[index] = (r, g, b)
    return colours


def palette_lookup(colours: np.ndarray, ignore_colour: Sequence[int] = IGNORE_COLOUR) -> np.ndarray:
    """``(256, 3)`` uint8: training id -> colour, ``ignore_colour`` for every other value."""
    colours = np.asarray(colours, dtype=np.uint8).reshape(-1, 3)
    table = np.tile(np.asarray(ignore_colour, dtype=np.uint8), (256, 1))
    table[: len(colours)] = colours
    return table


def colorize(
    mask: np.ndarray, colours: np.ndarray, ignore_colour: Sequence[int] = IGNORE_COLOUR
) -> np.ndarray:
    """The colour label image ``(H, W, 3)`` uint8 of a mask of training ids."""
    return palette_lookup(colours, ignore_colour)[np.asarray(mask, dtype=np.uint8)]


def blend(
    image: np.ndarray, mask: np.ndarray, colours: np.ndarray, alpha: float = 0.5
) -> np.ndarray:
    """``image`` with each labelled pixel mixed ``alpha`` : ``1 - alpha`` with its class colour;
    ignored pixels keep the image."""
    labelled = np.asarray(mask) != IGNORE_INDEX
    tint = colorize(mask, colours).astype(np.float32)
    blended = image.astype(np.float32)
    blended[labelled] = (1 - alpha) * blended[labelled] + alpha * tint[labelled]
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def legend_swatch_box(row: int) -> tuple[int, int, int, int]:
    """``(left, top, right, bottom)`` (exclusive) of legend entry ``row``'s swatch, relative to
    the legend's top-left corner."""
    top = LEGEND_MARGIN + row * LEGEND_ROW + (LEGEND_ROW - SWATCH) // 2
    return LEGEND_MARGIN, top, LEGEND_MARGIN + SWATCH, top + SWATCH


def legend(names: Sequence[str], colours: np.ndarray, height: int) -> np.ndarray:
    """A ``(max(height, needed), LEGEND_WIDTH, 3)`` column: a colour swatch and name per class."""
    needed = 2 * LEGEND_MARGIN + len(names) * LEGEND_ROW
    canvas = Image.new("RGB", (LEGEND_WIDTH, max(height, needed)), LEGEND_BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for row, (name, colour) in enumerate(zip(names, np.asarray(colours), strict=True)):
        left, top, right, bottom = legend_swatch_box(row)
        draw.rectangle((left, top, right - 1, bottom - 1), fill=tuple(int(c) for c in colour))
        draw.text((right + LEGEND_MARGIN, top - 1), str(name), fill=TEXT_COLOUR, font=font)
    return np.asarray(canvas)


def overlay_with_legend(
    image: np.ndarray,
    mask: np.ndarray,
    names: Sequence[str],
    colours: np.ndarray,
    alpha: float = 0.5,
) -> np.ndarray:
    """:func:`blend` with the class legend on the right; the picture keeps its pixels at the
    top-left, the canvas grows downwards (white) if the legend is taller than the image."""
    picture = blend(image, mask, colours, alpha)
    key = legend(names, colours, picture.shape[0])
    height = key.shape[0]
    canvas = np.full((height, picture.shape[1] + key.shape[1], 3), LEGEND_BACKGROUND, np.uint8)
    canvas[: picture.shape[0], : picture.shape[1]] = picture
    canvas[:, picture.shape[1] :] = key
    return canvas


def write_label_pngs(
    index_path: str | Path, colour_path: str | Path, mask: np.ndarray, colours: np.ndarray
) -> None:
    """The prediction as an index PNG (training ids, 255 = ignore) and a colour PNG in the
    palette, both written atomically."""
    write_png_atomic(index_path, np.asarray(mask, dtype=np.uint8))
    write_png_atomic(colour_path, colorize(mask, colours))


def class_fractions(mask: np.ndarray, names: Sequence[str]) -> dict[str, float]:
    """The fraction of the labelled pixels of ``mask`` that each class covers (sums to 1)."""
    counts = np.bincount(np.asarray(mask, dtype=np.int64).reshape(-1), minlength=256)
    per_class = counts[: len(names)]
    total = per_class.sum()
    if total == 0:
        return {name: 0.0 for name in names}
    return {name: float(c / total) for name, c in zip(names, per_class, strict=True)}


def legend_html(names: Sequence[str], colours: np.ndarray) -> str:
    """The legend as an HTML list (for the serve page): a coloured square and each name."""
    items = []
    for name, colour in zip(names, np.asarray(colours), strict=True):
        hex_colour = "#{:02x}{:02x}{:02x}".format(*(int(c) for c in colour))
        items.append(
            f'<li><span class="swatch" style="background:{hex_colour}"></span>'
            f"{html.escape(str(name))}</li>"
        )
    return '<ul class="legend">' + "".join(items) + "</ul>"


__all__ = [
    "blend",
    "class_fractions",
    "colorize",
    "default_colours",
    "legend",
    "legend_html",
    "legend_swatch_box",
    "overlay_with_legend",
    "palette_lookup",
    "write_label_pngs",
]

"""Tests of the multi-class pictures: palette images, overlays with legend and the figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from semseg.inference.palette import (
    LEGEND_WIDTH,
    class_fractions,
    colorize,
    legend_html,
    legend_swatch_box,
    overlay_with_legend,
    write_label_pngs,
)
from semseg.metrics.figures import (
    DPI,
    confusion_figure_size,
    plot_class_iou,
    plot_confusion_matrix,
    row_normalised,
)

NAMES = ["sky", "road", "car"]
COLOURS = np.array([[128, 128, 128], [128, 64, 128], [64, 0, 128]], dtype=np.uint8)
MASK = np.array([[0, 0, 1, 1], [2, 255, 1, 1]], dtype=np.uint8)


def test_colour_and_index_label_pngs(tmp_path: Path) -> None:
    rgb = colorize(MASK, COLOURS)
    assert rgb.shape == (2, 4, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0].tolist() == [128, 128, 128] and rgb[1, 0].tolist() == [64, 0, 128]
    assert rgb[1, 1].tolist() == [0, 0, 0]  # ignored
    write_label_pngs(tmp_path / "a.png", tmp_path / "a_color.png", MASK, COLOURS)
    index = Image.open(tmp_path / "a.png")
    assert index.mode == "L"
    np.testing.assert_array_equal(np.asarray(index), MASK)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "a_color.png")), rgb)
    assert not list(tmp_path.glob(".*tmp"))  # atomic writes leave no temp files


def test_overlay_with_legend_colours_each_class() -> None:
    image = np.full((40, 60, 3), 200, dtype=np.uint8)
    mask = np.full((40, 60), 255, dtype=np.uint8)
    mask[:10] = 0
    mask[10:20] = 1
    mask[20:30] = 2
    picture = overlay_with_legend(image, mask, NAMES, COLOURS, alpha=0.5)
    # 3 rows of legend need 2 * 6 + 3 * 18 = 66 pixels: taller than the image
    assert picture.shape == (66, 60 + LEGEND_WIDTH, 3)
    for k, row in enumerate((5, 15, 25)):
        expected = np.round(0.5 * 200 + 0.5 * COLOURS[k].astype(float))
        assert picture[row, 30].tolist() == expected.tolist()
        left, top, right, bottom = legend_swatch_box(k)
        swatch = picture[top:bottom, 60 + left : 60 + right]
        assert (swatch == COLOURS[k]).all()
    assert picture[35, 30].tolist() == [200, 200, 200]  # ignored pixels keep the image
    assert (picture[40:, :60] == 255).all()  # canvas grown in white below the picture
    # a taller image keeps its height
    assert overlay_with_legend(
        np.zeros((100, 8, 3), np.uint8), mask[:1, :8].repeat(100, 0), NAMES, COLOURS
    ).shape == (100, 8 + LEGEND_WIDTH, 3)


def test_class_fractions_and_legend_html() -> None:
    fractions = class_fractions(MASK, NAMES)
    assert fractions == pytest.approx({"sky": 2 / 7, "road": 4 / 7, "car": 1 / 7})
    assert class_fractions(np.full((2, 2), 255), NAMES) == {"sky": 0.0, "road": 0.0, "car": 0.0}
    page = legend_html(["a<b", "road"], COLOURS[:2])
    assert "#808080" in page and "#804080" in page and "a&lt;b" in page


def test_row_normalised_by_hand() -> None:
    shares = row_normalised(np.array([[3, 1, 0], [0, 0, 0], [1, 1, 2]]))
    np.testing.assert_allclose(shares, [[0.75, 0.25, 0], [0, 0, 0], [0.25, 0.25, 0.5]])


def test_confusion_matrix_figure(tmp_path: Path) -> None:
    out = tmp_path / "figs" / "confusion.png"
    plot_confusion_matrix(np.array([[50, 0, 0], [0, 40, 10], [5, 0, 5]]), NAMES, out)
    picture = np.asarray(Image.open(out).convert("RGB"))
    width, height = confusion_figure_size(3)
    assert picture.shape == (round(height * DPI), round(width * DPI), 3)
    # the 100 % cell is drawn in the darkest colour of the Blues map (8, 48, 107)
    dark = np.all(np.abs(picture.astype(int) - [8, 48, 107]) <= 2, axis=2)
    assert dark.sum() > 100
    with pytest.raises(ValueError, match="does not fit 2 class names"):
        plot_confusion_matrix(np.eye(3), NAMES[:2], out)


def test_class_iou_bars_in_the_palette(tmp_path: Path) -> None:
    out = tmp_path / "iou.png"
    plot_class_iou([80.0, 60.0, 40.0], NAMES, out, colours=COLOURS)
    picture = np.asarray(Image.open(out).convert("RGB"))
    assert picture.shape == (250, 700, 3)  # 7 x max(2.5, 0.35 * 3 + 1.2) inches at 100 dpi
    areas = [np.all(picture == colour, axis=2).sum() for colour in COLOURS]
    assert all(area > 200 for area in areas)
    assert areas[0] > areas[1] > areas[2]  # longer bar, more pixels
    plot_class_iou([80.0, float("nan"), 40.0], NAMES, out, colours=COLOURS)
    picture = np.asarray(Image.open(out).convert("RGB"))
    assert np.all(picture == COLOURS[1], axis=2).sum() == 0  # no bar for a class without IoU

"""Pillow charts: tick values, where a series is drawn, the heatmap's shading."""
import numpy as np
import pytest
from PIL import Image

from maskrcnn.engine.plots import PALETTE, heatmap, line_chart, nice_ticks


def test_nice_ticks():
    assert nice_ticks(0, 1) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(0, 1.02) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(0, 2500) == [0, 500, 1000, 1500, 2000, 2500]
    assert nice_ticks(0.3, 4.7) == [1.0, 2.0, 3.0, 4.0]
    assert nice_ticks(2, 2) == [2]


def test_line_chart_draws_series_where_the_layout_says(tmp_path):
    path = str(tmp_path / "chart.png")
    # A horizontal line at y = 0.25 (first series) and a vertical step at x = 0.75 (second series).
    series = [("flat", [0.0, 1.0], [0.25, 0.25]), ("step", [0.75, 0.75], [0.0, 1.0])]
    layout = line_chart(path, series, title="t", xlabel="x", ylabel="y", x_range=(0, 1), y_range=(0, 1), size=(600, 400))
    image = Image.open(path).convert("RGB")
    assert image.size == (600, 400)
    column, row = layout.to_pixel(0.4, 0.25)
    assert image.getpixel((round(column), round(row))) == PALETTE[0]
    column, row = layout.to_pixel(0.75, 0.6)
    assert image.getpixel((round(column), round(row))) == PALETTE[1]
    # Corners of the plot area map to the range's corners.
    assert layout.to_pixel(0, 0) == (layout.left, layout.bottom)
    assert layout.to_pixel(1, 1) == (layout.right, layout.top)
    # Away from the lines the plot area is white or grid grey, never a series colour.
    column, row = layout.to_pixel(0.3, 0.7)
    assert image.getpixel((round(column), round(row))) not in PALETTE[:2]


def test_line_chart_breaks_at_non_finite_points(tmp_path):
    path = str(tmp_path / "gap.png")
    layout = line_chart(path, [("", [0, 1, 2, 3], [1.0, float("nan"), 1.0, 1.0])], x_range=(0, 3), y_range=(0, 2))
    image = Image.open(path).convert("RGB")
    column, row = layout.to_pixel(0.5, 1.0)  # between the point before the gap and the gap: not drawn
    assert image.getpixel((round(column), round(row))) != PALETTE[0]
    column, row = layout.to_pixel(2.5, 1.0)  # between two finite points: drawn
    assert image.getpixel((round(column), round(row))) == PALETTE[0]


def test_heatmap_shades_by_row_fraction(tmp_path):
    path = str(tmp_path / "matrix.png")
    counts = np.array([[0, 3, 1], [4, 0, 0], [0, 0, 0]])
    left, top, cell = heatmap(path, counts, ["bg", "a", "b"], ["bg", "a", "b"], title="m")
    image = Image.open(path).convert("RGB")

    def corner(i, j):  # a pixel inside cell (i, j), away from the number written in its centre
        return image.getpixel((left + j * cell + 3, top + i * cell + 3))

    assert corner(1, 0) == (8, 48, 107)  # 4 of 4: the full colour
    assert corner(0, 0) == corner(2, 2) == (255, 255, 255)  # empty cells (and an empty row) stay white
    assert sum(corner(0, 1)) < sum(corner(0, 2)) < 3 * 255  # 3/4 darker than 1/4


def test_heatmap_label_count_must_match(tmp_path):
    with pytest.raises(ValueError, match="2 row and 3 column labels"):
        heatmap(str(tmp_path / "x.png"), np.zeros((3, 3)), ["a", "b"], ["a", "b", "c"])

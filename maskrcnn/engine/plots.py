"""Small charts drawn with Pillow: line charts (precision-recall curves, loss curves) and heatmaps
(confusion matrices), written as PNG.

Pillow is already a dependency (images are read with it), so the pictures need nothing extra; the
charts are deliberately plain: axes with round tick values, one colour per series, a legend, and
numbers in the heatmap's cells. The layout is computed once per chart (``LineLayout``), which also
maps data coordinates to pixels, so a test can check where a point was drawn.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# The ten colours of matplotlib's "tab10" palette (RGB), cycled over the series.
PALETTE = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
]
WHITE, BLACK, GRID = (255, 255, 255), (0, 0, 0), (225, 225, 225)
MAX_LEGEND_ENTRIES = 20


def _font(size: int = 12):
    """Pillow's built-in scalable font (Pillow >= 10.1), else its small bitmap font."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def nice_ticks(low: float, high: float, count: int = 5) -> List[float]:
    """About ``count`` round tick values (steps of 1, 2 or 5 times a power of ten) covering [low, high].

    ``nice_ticks(0, 1) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]``.
    """
    if not high > low:
        return [low]
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    # the step of 1, 2, 5 or 10 x magnitude whose number of intervals is closest to `count`
    step = min((m * magnitude for m in (1, 2, 5, 10)), key=lambda s: abs((high - low) / s - count))
    first = math.ceil(low / step - 1e-9)
    last = math.floor(high / step + 1e-9)
    return [round(k * step, 12) for k in range(first, last + 1)]


def _label(value: float) -> str:
    return f"{value:g}" if abs(value) < 1e5 else f"{value:.1e}"


@dataclass(frozen=True)
class LineLayout:
    """Where the plot area lies in the picture, and the data range it shows."""

    width: int
    height: int
    left: int
    top: int
    right: int
    bottom: int
    x_range: Tuple[float, float]
    y_range: Tuple[float, float]

    def to_pixel(self, x: float, y: float) -> Tuple[float, float]:
        """Data ``(x, y)`` -> picture ``(column, row)``; y grows upwards in the data."""
        (x0, x1), (y0, y1) = self.x_range, self.y_range
        column = self.left + (x - x0) / (x1 - x0) * (self.right - self.left)
        row = self.bottom - (y - y0) / (y1 - y0) * (self.bottom - self.top)
        return column, row


def line_layout(
    series: Sequence[Tuple[str, Sequence[float], Sequence[float]]],
    x_range: Optional[Tuple[float, float]] = None,
    y_range: Optional[Tuple[float, float]] = None,
    size: Tuple[int, int] = (720, 480),
) -> LineLayout:
    """The layout ``line_chart`` uses: ranges from the data unless given, room for a legend on the right."""
    xs = np.concatenate([np.asarray(s[1], dtype=np.float64) for s in series] or [np.zeros(0)])
    ys = np.concatenate([np.asarray(s[2], dtype=np.float64) for s in series] or [np.zeros(0)])
    finite_x, finite_y = xs[np.isfinite(xs)], ys[np.isfinite(ys)]

    def span(values, given):
        if given is not None:
            return float(given[0]), float(given[1])
        if values.size == 0:
            return 0.0, 1.0
        low, high = float(values.min()), float(values.max())
        return (low, high) if high > low else (low - 0.5, high + 0.5)

    width, height = size
    legend_width = 170 if len(series) > 1 or (series and series[0][0]) else 20
    return LineLayout(width, height, 70, 40, width - legend_width, height - 55,
                      span(finite_x, x_range), span(finite_y, y_range))


def line_chart(
    path: str,
    series: Sequence[Tuple[str, Sequence[float], Sequence[float]]],
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    x_range: Optional[Tuple[float, float]] = None,
    y_range: Optional[Tuple[float, float]] = None,
    size: Tuple[int, int] = (720, 480),
) -> LineLayout:
    """Draw ``series`` = ``[(label, xs, ys), ...]`` as lines and save a PNG at ``path``; return the layout.

    Non-finite points break a line. The legend lists the first 20 series.
    """
    layout = line_layout(series, x_range, y_range, size)
    image = Image.new("RGB", (layout.width, layout.height), WHITE)
    draw = ImageDraw.Draw(image)
    font, big = _font(12), _font(15)
    for x in nice_ticks(*layout.x_range):
        column, _ = layout.to_pixel(x, layout.y_range[0])
        draw.line([(column, layout.top), (column, layout.bottom)], fill=GRID)
        draw.text((column, layout.bottom + 6), _label(x), fill=BLACK, font=font, anchor="mt")
    for y in nice_ticks(*layout.y_range):
        _, row = layout.to_pixel(layout.x_range[0], y)
        draw.line([(layout.left, row), (layout.right, row)], fill=GRID)
        draw.text((layout.left - 6, row), _label(y), fill=BLACK, font=font, anchor="rm")
    draw.rectangle([layout.left, layout.top, layout.right, layout.bottom], outline=BLACK)
    for index, (_, xs, ys) in enumerate(series):
        color = PALETTE[index % len(PALETTE)]
        points: List[Tuple[float, float]] = []
        for x, y in zip(xs, ys):
            if math.isfinite(x) and math.isfinite(y):
                points.append(layout.to_pixel(x, y))
            else:
                _polyline(draw, points, color)
                points = []
        _polyline(draw, points, color)
    for index, (label, _, _) in enumerate(series[:MAX_LEGEND_ENTRIES]):
        if not label:
            continue
        row = layout.top + 8 + 16 * index
        draw.line([(layout.right + 12, row), (layout.right + 32, row)], fill=PALETTE[index % len(PALETTE)], width=3)
        draw.text((layout.right + 38, row), label[:20], fill=BLACK, font=font, anchor="lm")
    if len(series) > MAX_LEGEND_ENTRIES:
        row = layout.top + 8 + 16 * MAX_LEGEND_ENTRIES
        draw.text((layout.right + 12, row), f"+{len(series) - MAX_LEGEND_ENTRIES} more", fill=BLACK, font=font, anchor="lm")
    draw.text(((layout.left + layout.right) / 2, 12), title, fill=BLACK, font=big, anchor="mt")
    draw.text(((layout.left + layout.right) / 2, layout.height - 8), xlabel, fill=BLACK, font=font, anchor="mb")
    _vertical_text(image, ylabel, (8, (layout.top + layout.bottom) // 2), font)
    image.save(path)
    return layout


def _polyline(draw: ImageDraw.ImageDraw, points: List[Tuple[float, float]], color) -> None:
    if len(points) == 1:
        x, y = points[0]
        draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=color)
    elif len(points) > 1:
        draw.line(points, fill=color, width=2)


def _vertical_text(image: Image.Image, text: str, left_middle: Tuple[int, int], font) -> None:
    """Paste ``text`` rotated 90 degrees counter-clockwise with its left edge at ``left_middle``."""
    if not text:
        return
    x0, y0, x1, y1 = font.getbbox(text)
    strip = Image.new("RGB", (x1 + 2, y1 + 2), WHITE)
    ImageDraw.Draw(strip).text((0, 0), text, fill=BLACK, font=font)
    strip = strip.rotate(90, expand=True)
    image.paste(strip, (left_middle[0], left_middle[1] - strip.height // 2))


def heatmap_cell_size(rows: int, columns: int) -> int:
    """Cell size in pixels: 48 for small matrices, shrinking to 14 so 47 classes stay readable."""
    return int(max(14, min(48, 900 // max(rows, columns, 1))))


def heatmap(
    path: str,
    counts: np.ndarray,
    row_labels: Sequence[str],
    column_labels: Sequence[str],
    title: str = "",
    row_title: str = "true",
    column_title: str = "predicted",
) -> Tuple[int, int, int]:
    """Draw a matrix of counts, each row shaded by its fraction of the row's total; save a PNG.

    Returns ``(left, top, cell)``: cell ``(i, j)`` spans columns ``left + j*cell ..`` and rows
    ``top + i*cell ..`` of the picture. Counts are written in the cells when they fit.
    """
    counts = np.asarray(counts)
    rows, columns = counts.shape
    if len(row_labels) != rows or len(column_labels) != columns:
        raise ValueError(f"heatmap: {rows}x{columns} matrix but {len(row_labels)} row and {len(column_labels)} column labels")
    cell = heatmap_cell_size(rows, columns)
    font, big = _font(max(8, min(12, cell // 3))), _font(15)
    label_room = 8 + max(font.getbbox(str(label)[:18])[2] for label in list(row_labels) + list(column_labels))
    left, top = 26 + label_room, 56 + label_room  # room for the axis titles, the labels, the title
    width = max(left + columns * cell + 20, big.getbbox(title)[2] + 20)
    image = Image.new("RGB", (width, top + rows * cell + 20), WHITE)
    draw = ImageDraw.Draw(image)
    sums = counts.sum(axis=1, keepdims=True).astype(np.float64)
    fractions = np.divide(counts, sums, out=np.zeros(counts.shape), where=sums > 0)
    for i in range(rows):
        for j in range(columns):
            shade = fractions[i, j]
            color = tuple(int(round(255 - shade * (255 - c))) for c in (8, 48, 107))  # white -> dark blue
            x, y = left + j * cell, top + i * cell
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=color, outline=GRID)
            if counts[i, j] and cell >= 20:
                text = str(int(counts[i, j])) if float(counts[i, j]).is_integer() else f"{counts[i, j]:.2g}"
                draw.text((x + cell / 2, y + cell / 2), text, fill=WHITE if shade > 0.5 else BLACK, font=font, anchor="mm")
        draw.text((left - 6, top + i * cell + cell / 2), str(row_labels[i])[:18], fill=BLACK, font=font, anchor="rm")
    for j, label in enumerate(column_labels):
        x0, y0, x1, y1 = font.getbbox(str(label)[:18])
        strip = Image.new("RGB", (x1 + 2, max(y1 + 2, 1)), WHITE)
        ImageDraw.Draw(strip).text((0, 0), str(label)[:18], fill=BLACK, font=font)
        strip = strip.rotate(90, expand=True)
        image.paste(strip, (int(left + j * cell + cell / 2 - strip.width / 2), top - 6 - strip.height))
    draw.text((width / 2, 8), title, fill=BLACK, font=big, anchor="mt")
    draw.text((left + columns * cell / 2, 32), column_title, fill=BLACK, font=font, anchor="mt")
    _vertical_text(image, row_title, (4, top + rows * cell // 2), font)
    image.save(path)
    return left, top, cell

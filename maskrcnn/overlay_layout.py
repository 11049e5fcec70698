"""Where an overlay's pieces go: the drawing scale, the text size, each tag's place, the legend strip.

``maskrcnn.visualize.draw_instances`` draws what :func:`overlay_layout` decides; the layout is plain numbers
(tests check it without looking at pixels). All positions are in pixels of the drawn picture ("canvas"):
the photo enlarged ``factor`` times, with the legend strip under it. Rectangles are ``(x0, y0, x1, y1)``
with exclusive ends, like boxes (pixels ``x0 .. x1 - 1``).

The rules, in order of importance:

1. **Readable scale.** An image whose longer side is under ``min_side`` is enlarged by the whole factor
   ``round(min_side / longer side)`` (pixels repeated, so nothing is invented): 128 -> 512, 60 -> 540.
   The text is ``2 %`` of ``sqrt(width * height)`` of the enlarged photo, at least 12 pixels (12 on
   512x512, 16 on 800x800, 49 on 3000x2000), the box lines an eighth of that, at least 2 pixels.
2. **Tags never overlap each other** and stay inside the photo. Each tag is a filled rectangle holding
   ``"name"`` or ``"name 0.87"``; instances are served best score first (ground truth: in order). A model
   with an attribute head adds each instance's attributes after a bar, best first:
   ``"dress 0.93 | striped, midi"``. Such a tag is at most ``MAX_TAG_FRACTION`` of the photo's width (or
   as wide as ``"name 0.87"`` alone, if that is wider): the attributes that do not fit are cut, whole
   names first (``"dress 0.93 | striped, …"``), then the letters of the first (``"dress 0.93 | stri…"``).
3. **Tags hide as little of the objects as they can.** Every free place is scored by the fraction of the
   tag lying on an object (any instance's mask, or its box when there are no masks) or on a box outline, plus 0.25 per
   tag-height it sits away from its box; the cheapest wins, the earlier candidate on ties. Candidates:
   just above the box (left-aligned, then right-aligned), just below it, inside its top or bottom edge,
   then above or below at growing distances (drawn with a line to the box). A tag with no free place at
   all is left out (``OverlayLayout.hidden``), never drawn over another.
4. **The legend is outside the photo**: one swatch and name per class shown, in label order, flowing in
   rows in a white strip under the photo.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import ImageFont

Rect = Tuple[int, int, int, int]  # (x0, y0, x1, y1), exclusive ends

READABLE_SIDE = 512          # small images are enlarged until their longer side is about this
TEXT_FRACTION = 0.02         # text size / sqrt(width * height) of the drawn photo
MIN_FONT_SIZE = 12           # the smallest text that reads on a screen
MIN_LINE_WIDTH = 2
STEP_COST = 0.25             # cost of moving a tag one tag-height away from its box
MAX_TAG_FRACTION = 0.5       # a tag with attributes is at most this fraction of the photo's width
ATTRIBUTE_BAR = " | "        # between "name score" and the attributes
LEGEND_BACKGROUND = (255, 255, 255)


@dataclass
class Tag:
    index: int          # the instance's position in the inputs
    label: int
    text: str
    rect: Rect          # where the tag is drawn
    box: Rect           # the instance's box on the canvas
    place: str          # "above", "below", "inside" (of the box)
    step: int           # tag-heights away from the box (0 = touching it)
    covered: float      # fraction of the tag lying on an object


@dataclass
class LegendEntry:
    label: int
    text: str
    swatch: Rect
    text_xy: Tuple[int, int]


@dataclass
class OverlayLayout:
    factor: int                         # the photo's pixels are repeated factor x factor times
    photo_size: Tuple[int, int]         # (width, height) of the enlarged photo
    size: Tuple[int, int]               # (width, height) of the whole picture, legend strip included
    font_size: int
    line_width: int
    padding: int                        # space between a tag's edge and its text
    tags: List[Tag] = field(default_factory=list)
    hidden: List[int] = field(default_factory=list)    # instances whose tag found no free place
    legend: List[LegendEntry] = field(default_factory=list)


def readable_factor(width: int, height: int, min_side: int = READABLE_SIDE) -> int:
    """The whole enlargement factor of an image: ``max(1, round(min_side / max(width, height)))``; 1 when
    ``min_side <= 0``."""
    if min_side <= 0:
        return 1
    return max(1, int(round(min_side / max(width, height, 1))))


def text_size(width: int, height: int) -> int:
    """Text height in pixels for a drawn photo of ``width x height`` (rule 1)."""
    return max(MIN_FONT_SIZE, int(round(TEXT_FRACTION * math.sqrt(width * height))))


def load_font(size: int):
    """Pillow's built-in scalable font at ``size`` pixels (Pillow >= 10.1 with FreeType), else its small bitmap font."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # old Pillow, or no FreeType
        return ImageFont.load_default()


def tag_text(label: int, score: Optional[float], class_names: Optional[Sequence[str]],
             attributes: Sequence[str] = ()) -> str:
    """``"name"`` or ``"name 0.87"``, then ``" | "`` and the attributes when there are any
    (``"dress 0.93 | striped, midi"``); the label number when there is no name for it."""
    name = str(class_names[label - 1]) if class_names and 1 <= label <= len(class_names) else str(label)
    text = name if score is None else f"{name} {score:.2f}"
    return text + ATTRIBUTE_BAR + ", ".join(attributes) if attributes else text


def _ellipsis(font) -> str:
    """One "…" character with a scalable font; three dots with Pillow's bitmap font (Latin-1 only)."""
    return "\u2026" if isinstance(font, ImageFont.FreeTypeFont) else "..."


def fit_tag_text(label: int, score: Optional[float], class_names: Optional[Sequence[str]],
                 attributes: Sequence[str], font, max_width: float) -> str:
    """:func:`tag_text` with the attributes cut so that the text is at most ``max_width`` pixels wide in
    ``font`` (rule 2): whole attribute names while they fit, then the first name's letters, each cut
    marked with an ellipsis; ``"name 0.87"`` alone is never cut."""
    text = tag_text(label, score, class_names, attributes)
    if font.getlength(text) <= max_width:
        return text
    base, more = tag_text(label, score, class_names), _ellipsis(font)
    for count in range(len(attributes) - 1, 0, -1):  # drop whole names from the end
        text = tag_text(label, score, class_names, list(attributes[:count]) + [more])
        if font.getlength(text) <= max_width:
            return text
    first = attributes[0]
    for length in range(len(first) - 1, 0, -1):  # then letters of the first name
        text = base + ATTRIBUTE_BAR + first[:length].rstrip() + more
        if font.getlength(text) <= max_width:
            return text
    return base


def canvas_boxes(boxes, factor: int, photo_size: Tuple[int, int]) -> np.ndarray:
    """(N, 4) boxes in image pixels -> (N, 4) int whole-pixel boxes on the canvas, clipped to the photo.

    Box ``[x1, y1, x2, y2]`` covers image pixels ``floor(x1) .. ceil(x2) - 1``, i.e. canvas pixels
    ``factor * floor(x1) .. factor * ceil(x2) - 1``.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    whole = np.concatenate([np.floor(boxes[:, :2]), np.ceil(boxes[:, 2:])], axis=1) * factor
    width, height = photo_size
    whole[:, 0::2] = whole[:, 0::2].clip(0, width)
    whole[:, 1::2] = whole[:, 1::2].clip(0, height)
    return whole.astype(np.int64)


def _overlaps(a: Rect, b: Rect) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


class _Coverage:
    """Object pixels inside any rectangle in O(1), from a summed-area table of the canvas occupancy."""

    def __init__(self, occupied: np.ndarray):  # (H, W) bool
        table = np.zeros((occupied.shape[0] + 1, occupied.shape[1] + 1), dtype=np.int64)
        table[1:, 1:] = occupied.cumsum(axis=0).cumsum(axis=1)
        self.table = table

    def fraction(self, rect: Rect) -> float:
        x0, y0, x1, y1 = rect
        t = self.table
        inside = t[y1, x1] - t[y0, x1] - t[y1, x0] + t[y0, x0]
        return float(inside) / max(1, (x1 - x0) * (y1 - y0))


def _occupancy(boxes: np.ndarray, masks: Optional[np.ndarray], factor: int, photo_size,
               line_width: int) -> np.ndarray:
    """(H, W) bool canvas map of what a tag should not cover: the union of the masks (else of the filled
    boxes) and the box outlines."""
    width, height = photo_size
    if masks is not None and len(masks):
        union = np.asarray(masks, dtype=bool).any(axis=0)  # (N, h, w) -> (h, w) at the image's size
        occupied = union.repeat(factor, axis=0).repeat(factor, axis=1)  # (h, w) -> (H, W)
    else:
        occupied = np.zeros((height, width), dtype=bool)
        for x0, y0, x1, y1 in boxes:
            occupied[y0:y1, x0:x1] = True
    for x0, y0, x1, y1 in boxes:  # the outlines, line_width pixels inwards
        occupied[y0:y0 + line_width, x0:x1] = occupied[max(y1 - line_width, y0):y1, x0:x1] = True
        occupied[y0:y1, x0:x0 + line_width] = occupied[y0:y1, max(x1 - line_width, x0):x1] = True
    return occupied


def _candidates(box: Rect, tag_w: int, tag_h: int, photo_size) -> List[Tuple[str, int, Rect]]:
    """Places for a ``tag_w x tag_h`` tag of ``box``, in order of preference (module docstring, rule 3)."""
    width, height = photo_size
    bx0, by0, bx1, by1 = box
    xs = []
    for x in (bx0, bx1 - tag_w):  # left-aligned with the box, then right-aligned
        x = min(max(x, 0), max(width - tag_w, 0))
        if x not in xs:
            xs.append(x)
    rows = [("above", 0, by0 - tag_h), ("below", 0, by1), ("inside", 0, by0), ("inside", 0, by1 - tag_h)]
    for step in range(1, height // max(tag_h, 1) + 1):
        rows += [("above", step, by0 - tag_h - step * tag_h), ("below", step, by1 + step * tag_h)]
    places = []
    for place, step, y in rows:
        if 0 <= y and y + tag_h <= height:
            places += [(place, step, (x, y, x + tag_w, y + tag_h)) for x in xs]
    return places


def overlay_layout(image_size: Tuple[int, int], boxes, labels, scores=None,
                   class_names: Optional[Sequence[str]] = None, masks: Optional[np.ndarray] = None, *,
                   min_side: int = READABLE_SIDE, font_size: Optional[int] = None,
                   line_width: Optional[int] = None, show_tags: bool = True,
                   show_legend: bool = True, attributes: Optional[Sequence[Sequence[str]]] = None) -> OverlayLayout:
    """The layout of an overlay of ``image_size = (width, height)`` (module docstring).

    ``boxes`` (N, 4) in image pixels (or None: no tags), ``labels`` (N,), ``scores`` (N,) or None,
    ``masks`` (N, height, width) bool at the image's size or None. ``font_size`` and ``line_width``
    None = chosen by rule 1. ``attributes``: N lists of attribute names shown in the tags (rule 2), or None.
    """
    width, height = image_size
    factor = readable_factor(width, height, min_side)
    photo_size = (width * factor, height * factor)
    font_size = font_size or text_size(*photo_size)
    line_width = line_width or max(MIN_LINE_WIDTH, int(round(font_size / 8)))
    padding = max(1, font_size // 6)
    font = load_font(font_size)
    text_h = font.getbbox("Agy|")[3]  # bottom of tall and descending letters below the drawing origin
    tag_h = text_h + 2 * padding
    layout = OverlayLayout(factor, photo_size, photo_size, font_size, line_width, padding)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    scores = None if scores is None else np.asarray(scores, dtype=np.float64).reshape(-1)

    if boxes is not None and show_tags and len(labels):
        on_canvas = canvas_boxes(boxes, factor, photo_size)
        coverage = _Coverage(_occupancy(on_canvas, masks, factor, photo_size, line_width))
        order = range(len(labels)) if scores is None else np.argsort(-scores, kind="stable")
        for i in order:
            i, label = int(i), int(labels[i])
            score = None if scores is None else float(scores[i])
            names = attributes[i] if attributes is not None else ()
            base_w = font.getlength(tag_text(label, score, class_names))
            text = fit_tag_text(label, score, class_names, names, font, max(base_w, MAX_TAG_FRACTION * photo_size[0]))
            tag_w = int(math.ceil(font.getlength(text))) + 2 * padding
            box = tuple(int(v) for v in on_canvas[i])
            best = None
            for rank, (place, step, rect) in enumerate(_candidates(box, tag_w, tag_h, photo_size)):
                if any(_overlaps(rect, tag.rect) for tag in layout.tags):
                    continue
                covered = coverage.fraction(rect)
                cost = covered + STEP_COST * step
                if best is None or cost < best[0]:
                    best = (cost, place, step, rect, covered)
            if best is None:
                layout.hidden.append(i)
                continue
            _, place, step, rect, covered = best
            layout.tags.append(Tag(i, label, text, rect, box, place, step, covered))
        layout.tags.sort(key=lambda tag: tag.index)

    if show_legend and len(labels):
        layout.legend, strip_h = _legend(sorted(set(labels.tolist())), class_names, font, text_h, padding,
                                         photo_size)
        layout.size = (photo_size[0], photo_size[1] + strip_h)
    return layout


def _legend(shown: Sequence[int], class_names, font, text_h: int, padding: int, photo_size):
    """Legend entries flowing left to right in rows under the photo; returns (entries, strip height)."""
    width, top = photo_size
    margin, gap = 2 * padding, text_h  # around the strip; between entries
    row_h = text_h + 2 * padding
    entries, x, row = [], margin, 0
    for label in shown:
        text = tag_text(label, None, class_names)
        entry_w = text_h + padding + int(math.ceil(font.getlength(text)))
        if x > margin and x + entry_w > width - margin:  # no room left on this row
            x, row = margin, row + 1
        y = top + margin + row * row_h
        swatch = (x, y + padding, x + text_h, y + padding + text_h)
        entries.append(LegendEntry(label, text, swatch, (x + text_h + padding, y + padding)))
        x += entry_w + gap
    return entries, 2 * margin + (row + 1) * row_h


def connector(rect: Rect, box: Rect) -> Optional[List[Tuple[int, int]]]:
    """The line from a tag to its box when they do not touch: from the tag's point nearest the box to
    the box's point nearest the tag's centre; None when the tag touches or overlaps the box."""
    touching = rect[0] <= box[2] and box[0] <= rect[2] and rect[1] <= box[3] and box[1] <= rect[3]
    if touching:
        return None
    centre = ((rect[0] + rect[2]) // 2, (rect[1] + rect[3]) // 2)
    target = (min(max(centre[0], box[0]), box[2] - 1), min(max(centre[1], box[1]), box[3] - 1))
    source = (min(max(target[0], rect[0]), rect[2] - 1), min(max(target[1], rect[1]), rect[3] - 1))
    return [source, target]

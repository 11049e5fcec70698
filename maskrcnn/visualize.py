"""Overlays of instances on an image: masks, boxes, "tag score" labels and a legend, with Pillow only.

    picture = draw_instances(image, boxes, labels, masks=masks, scores=scores, class_names=names)
    picture.save("overlay.png")
    draw_instances(image, boxes, labels, scores=scores, class_names=names,
                   attributes=[["striped", "midi"], []])  # "dress 0.93 | striped, midi", "bag 0.88"
    draw_record(record, class_names).save("gt.png")        # ground truth of a dataset record

Used for ground truth (the dataset checker's ``--show``), predictions (``infer.py``, the evaluation's
``overlays/``) and the stage explainer's final picture. Each class has one colour (:func:`class_color`);
its masks are alpha-blended in that colour, its boxes outlined in it, and its tags filled with it.

Colours. :data:`PALETTE` is built once by farthest-point selection in CIELAB (the colour space in which
distance approximates perceived difference): from the 6-level sRGB grid (0, 51, ..., 255 per channel),
keep the colours of lightness 30-85 and chroma >= 30 (neither near-black nor near-white nor grey, so that
they show on photos and carry black or white text), start from pure red, and repeatedly add the colour
farthest from all chosen so far. Every prefix is then spread as widely as the grid allows: the 8
synthetic classes are at least 59 CIE76 units apart, ModaNet's 13 at least 43, all 46 Fashionpedia
classes at least 21 (the old golden-ratio hues put dress and sleeve 2.2 apart: the same purple).

A picture people can read at any size (``maskrcnn/overlay_layout.py`` decides where everything goes):
small images are enlarged by a whole factor (128 pixels -> 512), the text and the lines grow with the
picture, tags sit beside their boxes without overlapping each other or hiding objects, and the legend
is a strip under the photo.

Pixel conventions (at the drawn scale):

- a mask pixel becomes ``floor((1 - alpha) * pixel + alpha * colour + 0.5)`` per channel (blended at
  the image's own size, then enlarged with the photo);
- a box ``[x1, y1, x2, y2]`` (no "+1", docs/conventions.md) covers pixels ``x1 .. x2 - 1``: its outline
  is drawn on the outermost covered pixels, ``line_width`` pixels thick, inwards.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from maskrcnn.overlay_layout import (
    LEGEND_BACKGROUND,
    OverlayLayout,
    canvas_boxes,
    connector,
    load_font,
    overlay_layout,
    readable_factor,
)

__all__ = ["PALETTE", "class_color", "srgb_to_lab", "to_pil_image", "draw_instances", "draw_record",
           "load_image", "overlay_layout", "readable_factor", "OverlayLayout"]


def srgb_to_lab(rgb) -> np.ndarray:
    """(..., 3) sRGB colours (0-255) -> (..., 3) CIELAB ``(L, a, b)`` under the D65 white point."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)  # undo the sRGB gamma
    to_xyz = np.array([[0.4124564, 0.3575761, 0.1804375],
                       [0.2126729, 0.7151522, 0.0721750],
                       [0.0193339, 0.1191920, 0.9503041]])
    xyz = linear @ to_xyz.T / np.array([0.95047, 1.0, 1.08883])  # relative to the white point
    delta = 6.0 / 29.0
    f = np.where(xyz > delta ** 3, np.cbrt(xyz), xyz / (3 * delta ** 2) + 4.0 / 29.0)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def _farthest_point_palette(count: int = 46) -> List[tuple]:
    """The palette rule of the module docstring; ``count`` colours as (r, g, b) ints."""
    levels = np.arange(0, 256, 51)
    grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), axis=-1).reshape(-1, 3)  # (216, 3)
    lab = srgb_to_lab(grid)
    chroma = np.hypot(lab[:, 1], lab[:, 2])
    usable = (lab[:, 0] >= 30) & (lab[:, 0] <= 85) & (chroma >= 30)
    grid, lab = grid[usable], lab[usable]
    chosen = [int(np.flatnonzero((grid == (255, 0, 0)).all(axis=1))[0])]
    nearest = np.linalg.norm(lab - lab[chosen[0]], axis=1)  # distance of each candidate to the chosen set
    while len(chosen) < min(count, len(grid)):
        chosen.append(int(np.argmax(nearest)))
        nearest = np.minimum(nearest, np.linalg.norm(lab - lab[chosen[-1]], axis=1))
    return [tuple(int(v) for v in grid[i]) for i in chosen]


PALETTE = _farthest_point_palette()


def class_color(label: int) -> tuple:
    """RGB colour (0-255 ints) of label 1..K: ``PALETTE[label - 1]``, repeating after 46 classes."""
    return PALETTE[(int(label) - 1) % len(PALETTE)]


def to_pil_image(image) -> Image.Image:
    """An RGB PIL image from a PIL image, an (H, W, 3) numpy array (uint8, or float in [0, 1]), or a
    (3, H, W) torch tensor (float in [0, 1], or uint8), as the model takes and the dataset yields."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        torch = None
    if torch is not None and isinstance(image, torch.Tensor):
        if image.dim() != 3 or image.shape[0] not in (1, 3):
            raise ValueError(f"image: expected a (3, H, W) tensor, got shape {tuple(image.shape)}")
        image = image.detach().cpu()
        if image.shape[0] == 1:
            image = image.expand(3, -1, -1)
        image = image.permute(1, 2, 0).numpy()  # (3, H, W) -> (H, W, 3)
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"image: expected (H, W, 3), got shape {array.shape}")
    if array.dtype != np.uint8:
        array = np.clip(np.floor(array.astype(np.float64) * 255.0 + 0.5), 0, 255).astype(np.uint8)
    return Image.fromarray(array, "RGB")


def load_image(path) -> Image.Image:
    """Open an image as RGB with its EXIF orientation applied (as the training loader reads it)."""
    with Image.open(path) as image:
        return ImageOps.exif_transpose(image).convert("RGB")


def _as_numpy(values) -> Optional[np.ndarray]:
    if values is None:
        return None
    if hasattr(values, "detach"):  # torch tensor
        values = values.detach().cpu().numpy()
    return np.asarray(values)


def _foreground(masks: np.ndarray, threshold: float) -> np.ndarray:
    """(N, H, W) or (N, 1, H, W) masks -> (N, H, W) bool; floats are probabilities cut at threshold."""
    if masks.ndim == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]  # (N, 1, H, W) -> (N, H, W), the model's eval output
    if masks.ndim != 3:
        raise ValueError(f"masks: expected (N, H, W) or (N, 1, H, W), got shape {masks.shape}")
    if masks.dtype.kind == "f":
        return masks > threshold
    return masks != 0


def _text_color(background: tuple) -> tuple:
    """Black on light colours, white on dark ones (ITU-R BT.601 luma)."""
    luma = 0.299 * background[0] + 0.587 * background[1] + 0.114 * background[2]
    return (0, 0, 0) if luma > 140 else (255, 255, 255)


def draw_instances(
    image,
    boxes=None,
    labels=None,
    masks=None,
    scores=None,
    class_names: Optional[Sequence[str]] = None,
    *,
    mask_alpha: float = 0.5,
    mask_threshold: float = 0.5,
    line_width: Optional[int] = None,
    font_size: Optional[int] = None,
    min_side: int = 512,
    show_tags: bool = True,
    show_legend: bool = True,
    attributes: Optional[Sequence[Sequence[str]]] = None,
) -> Image.Image:
    """Draw instances on a copy of ``image`` and return it (RGB PIL image).

    Args:
        image: PIL image, (H, W, 3) array or (3, H, W) tensor (see :func:`to_pil_image`).
        boxes: (N, 4) ``[x1, y1, x2, y2]`` in pixels of ``image``, or None.
        labels: (N,) ints 1..K (required: they pick the colours and names).
        masks: (N, H, W) binary masks or (N, 1, H, W) probabilities of the image's size, or None.
        scores: (N,) floats shown in the tags, or None (ground truth).
        class_names: K names, label k is ``class_names[k - 1]``; None shows the label numbers.
        mask_alpha: opacity of the mask colour; mask_threshold: cut for float masks.
        line_width, font_size: None = scaled with the drawn picture (module docstring).
        min_side: enlarge images whose longer side is shorter (:func:`readable_factor`); 0 = never.
        show_tags, show_legend: the tags on the photo; the legend strip under it.
        attributes: N lists of attribute names (best first) shown after each tag, ``"dress 0.93 | striped,
            midi"``, cut with an ellipsis when long (``maskrcnn/overlay_layout.py``, rule 2); or None.

    Returns a picture ``factor`` times the image's size (``factor`` = :func:`readable_factor`), taller by
    the legend strip when there is one.
    """
    photo = to_pil_image(image).copy()
    width, height = photo.size
    labels = _as_numpy(labels)
    if labels is None:
        raise ValueError("labels: required (they choose the colours and the names)")
    labels = labels.astype(np.int64).reshape(-1)
    count = len(labels)
    boxes, scores, masks = _as_numpy(boxes), _as_numpy(scores), _as_numpy(masks)
    if boxes is not None and boxes.reshape(-1, 4).shape[0] != count:
        raise ValueError(f"boxes: expected {count} boxes (one per label), got shape {boxes.shape}")
    if scores is not None and scores.reshape(-1).shape[0] != count:
        raise ValueError(f"scores: expected {count} scores, got shape {scores.shape}")
    if attributes is not None and len(attributes) != count:
        raise ValueError(f"attributes: expected {count} lists of names (one per label), got {len(attributes)}")
    foreground = None
    if masks is not None and count:
        foreground = _foreground(masks, mask_threshold)
        if foreground.shape != (count, height, width):
            raise ValueError(f"masks: expected shape ({count}, {height}, {width}), got {foreground.shape}")

    # Masks are blended at the image's own size; enlarging afterwards repeats the blended pixels, which is
    # the same as blending enlarged masks into the enlarged image, at a fraction of the cost.
    if foreground is not None:
        pixels = np.array(photo)  # (H, W, 3) uint8
        for label, mask in zip(labels, foreground):
            rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            if rows.size == 0:
                continue
            within = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))  # the mask's bounding box
            region, inside = pixels[within].astype(np.float64), mask[within]
            region[inside] = (1.0 - mask_alpha) * region[inside] + mask_alpha * np.array(class_color(label), np.float64)
            pixels[within] = np.floor(region + 0.5).astype(np.uint8)  # untouched pixels stay as they were
        photo = Image.fromarray(pixels, "RGB")

    layout = overlay_layout(
        (width, height), boxes, labels, scores=scores, class_names=class_names, masks=foreground,
        min_side=min_side, font_size=font_size, line_width=line_width, show_tags=show_tags,
        show_legend=show_legend, attributes=attributes)
    factor = layout.factor
    if factor > 1:
        photo = photo.resize((width * factor, height * factor), Image.NEAREST)
    picture = Image.new("RGB", layout.size, LEGEND_BACKGROUND)
    picture.paste(photo, (0, 0))
    draw = ImageDraw.Draw(picture)
    font = load_font(layout.font_size)

    if boxes is not None:
        for label, box in zip(labels, canvas_boxes(boxes, factor, layout.photo_size)):
            x0, y0, x1, y1 = box
            if x1 > x0 and y1 > y0:
                draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=class_color(label), width=layout.line_width)
    for tag in layout.tags:
        color = class_color(tag.label)
        x0, y0, x1, y1 = tag.rect
        line = connector(tag.rect, tag.box)
        if line is not None:
            draw.line(line, fill=color, width=max(1, layout.line_width // 2))
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=color)
        draw.text((x0 + layout.padding, y0 + layout.padding), tag.text, fill=_text_color(color), font=font)
    for entry in layout.legend:
        x0, y0, x1, y1 = entry.swatch
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=class_color(entry.label))
        draw.text(entry.text_xy, entry.text, fill=(0, 0, 0), font=font)
    return picture


def draw_record(record: dict, class_names: Optional[Sequence[str]] = None, image=None, **options) -> Image.Image:
    """Ground-truth overlay of a dataset record (``maskrcnn.data.records``): masks, boxes and tags.

    ``image`` defaults to the record's file, opened with :func:`load_image`. ``options`` go to
    :func:`draw_instances`.
    """
    from maskrcnn.data.records import segmentation_to_mask

    picture = load_image(record["file_name"]) if image is None else to_pil_image(image)
    height, width = picture.size[1], picture.size[0]
    annotations = record["annotations"]
    labels = np.array([a["category_id"] for a in annotations], dtype=np.int64)
    boxes = np.array([a["bbox"] for a in annotations], dtype=np.float64).reshape(-1, 4)
    masks = None
    if annotations and (height, width) == (record["height"], record["width"]):
        masks = np.stack([segmentation_to_mask(a["segmentation"], height, width) for a in annotations])
    return draw_instances(picture, boxes, labels, masks=masks, class_names=class_names, **options)


"""Overlays of instances on an image: masks, boxes, "tag score" labels and a legend, with Pillow only.

    picture = draw_instances(image, boxes, labels, masks=masks, scores=scores, class_names=names)
    picture.save("overlay.jpg")
    draw_record(record, class_names).save("gt.jpg")        # ground truth of a dataset record

Used for ground truth (the dataset checker's ``--show``) and for predictions (inference). Each class
has one colour (:func:`class_color`, golden-ratio hue steps, so neighbouring labels differ strongly);
its masks are alpha-blended in that colour, its boxes outlined in it, and the legend lists every class
shown. Drawing conventions:

- a mask pixel becomes ``floor((1 - alpha) * pixel + alpha * colour + 0.5)`` per channel;
- a box ``[x1, y1, x2, y2]`` (no "+1", docs/conventions.md) covers pixels ``x1 .. x2 - 1``: its outline is drawn
  on the outermost covered pixels, ``line_width`` pixels thick, inwards;
- a tag reads ``"name"`` or ``"name 0.87"`` on a filled box of the class colour above the box (inside
  it when there is no room above);
- the legend sits in the top-right corner, one swatch and name per class, in label order.
"""
from __future__ import annotations

import colorsys
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

__all__ = ["class_color", "to_pil_image", "draw_instances", "draw_record", "load_image"]

GOLDEN_RATIO_CONJUGATE = 0.618033988749895


def class_color(label: int) -> tuple:
    """RGB colour (0-255 ints) of a label: hue steps of the golden ratio, high saturation and value."""
    hue = (int(label) * GOLDEN_RATIO_CONJUGATE) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.8, 0.95)
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))


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


def _name(label: int, class_names: Optional[Sequence[str]]) -> str:
    if class_names and 1 <= label <= len(class_names):
        return str(class_names[label - 1])
    return str(label)


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
    line_width: int = 2,
    show_tags: bool = True,
    show_legend: bool = True,
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
    """
    picture = to_pil_image(image).copy()
    width, height = picture.size
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

    if masks is not None and count:
        foreground = _foreground(masks, mask_threshold)
        if foreground.shape != (count, height, width):
            raise ValueError(f"masks: expected shape ({count}, {height}, {width}), got {foreground.shape}")
        pixels = np.asarray(picture, dtype=np.float64)  # (H, W, 3)
        for label, mask in zip(labels, foreground):
            color = np.array(class_color(label), dtype=np.float64)
            pixels[mask] = (1.0 - mask_alpha) * pixels[mask] + mask_alpha * color
        picture = Image.fromarray(np.floor(pixels + 0.5).astype(np.uint8), "RGB")

    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default()
    if boxes is not None:
        for i, (label, box) in enumerate(zip(labels, boxes.reshape(-1, 4))):
            color = class_color(label)
            x1, y1 = int(np.floor(box[0])), int(np.floor(box[1]))
            x2, y2 = int(np.ceil(box[2])) - 1, int(np.ceil(box[3])) - 1  # last covered pixel
            if x2 < x1 or y2 < y1:
                continue
            draw.rectangle([x1, y1, x2, y2], outline=color, width=line_width)
            if show_tags:
                tag = _name(label, class_names)
                if scores is not None:
                    tag += f" {float(scores.reshape(-1)[i]):.2f}"
                left, top, right, bottom = draw.textbbox((0, 0), tag, font=font)
                text_w, text_h = right - left + 2, bottom - top + 2
                tag_y = y1 - text_h if y1 - text_h >= 0 else y1
                draw.rectangle([x1, tag_y, x1 + text_w - 1, tag_y + text_h - 1], fill=color)
                draw.text((x1 + 1 - left, tag_y + 1 - top), tag, fill=_text_color(color), font=font)

    if show_legend and count:
        shown = sorted(set(int(v) for v in labels))
        entries = [(label, _name(label, class_names)) for label in shown]
        line_h = max(draw.textbbox((0, 0), name, font=font)[3] for _, name in entries) + 4
        swatch = line_h - 4
        text_w = max(draw.textbbox((0, 0), name, font=font)[2] for _, name in entries)
        legend_w = swatch + 6 + text_w + 4
        x0 = max(width - legend_w - 2, 0)
        draw.rectangle([x0, 2, x0 + legend_w - 1, 2 + line_h * len(entries) + 1], fill=(255, 255, 255))
        for row, (label, name) in enumerate(entries):
            top = 4 + row * line_h
            draw.rectangle([x0 + 2, top, x0 + 2 + swatch - 1, top + swatch - 1], fill=class_color(label))
            draw.text((x0 + swatch + 6, top), name, fill=(0, 0, 0), font=font)
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

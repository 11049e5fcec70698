"""The stage explainer's pictures, drawn with Pillow from a :class:`maskrcnn.tools.explain.StageTrace`.

Every picture shows the *resized* image (what the network sees), zoomed so that its longer side is about
``display_side`` pixels, under a caption strip that says what is drawn. Boxes are outlined in the pixels
they cover (the ``maskrcnn.visualize`` convention); colours: the class colours of ``maskrcnn.visualize``
for detections, one fixed colour per pyramid level, and a dark-to-bright ramp for scores.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from maskrcnn.tools.explain import StageTrace, anchors_at, roi_align_geometry, roi_align_sample_points
from maskrcnn.visualize import class_color, draw_instances, to_pil_image

# One colour per pyramid level P2..P6 (distinct hues, readable on photos).
LEVEL_COLORS = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180)]
BACKGROUND = (90, 90, 90)
CAPTION_BACKGROUND = (255, 255, 255)


def _font(size: int = 14):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the small bitmap font
        return ImageFont.load_default()


def score_color(value: float) -> Tuple[int, int, int]:
    """A dark-blue -> magenta -> yellow ramp for ``value`` in [0, 1] (higher = brighter)."""
    stops = np.array([[40, 20, 120], [200, 40, 140], [255, 220, 30]], dtype=np.float64)
    position = min(max(float(value), 0.0), 1.0) * (len(stops) - 1)
    low = min(int(position), len(stops) - 2)
    mixed = stops[low] + (position - low) * (stops[low + 1] - stops[low])
    return tuple(int(round(v)) for v in mixed)


def diverging_color(value: float) -> Tuple[int, int, int]:
    """Blue (-1) -> white (0) -> red (+1), for signed values such as logits scaled to [-1, 1]."""
    value = min(max(float(value), -1.0), 1.0)
    end = np.array([40, 90, 180] if value < 0 else [180, 30, 40], dtype=np.float64)
    mixed = (1 - abs(value)) * np.array([255.0, 255.0, 255.0]) + abs(value) * end
    return tuple(int(round(v)) for v in mixed)


class Display:
    """The resized image zoomed by ``zoom``, on a grey canvas with ``margin`` image pixels around it.

    ``px(x, y)`` maps resized-image coordinates to canvas pixels.
    """

    def __init__(self, trace: StageTrace, display_side: int, margin: float = 0.0):
        height, width = trace.resized_size
        self.zoom = display_side / max(width + 2 * margin, height + 2 * margin)
        self.margin = margin
        size = (int(round((width + 2 * margin) * self.zoom)), int(round((height + 2 * margin) * self.zoom)))
        self.picture = Image.new("RGB", size, BACKGROUND)
        shown = to_pil_image(trace.image).resize((int(round(width * self.zoom)), int(round(height * self.zoom))),
                                                 Image.BILINEAR)
        self.picture.paste(shown, self.px(0, 0))
        self.draw = ImageDraw.Draw(self.picture)

    def px(self, x: float, y: float) -> Tuple[int, int]:
        return int(round((x + self.margin) * self.zoom)), int(round((y + self.margin) * self.zoom))

    def box(self, box: Sequence[float], color, width: int = 2) -> None:
        x1, y1 = self.px(box[0], box[1])
        x2, y2 = self.px(box[2], box[3])
        self.draw.rectangle([x1, y1, max(x2 - 1, x1), max(y2 - 1, y1)], outline=color, width=width)

    def dot(self, x: float, y: float, color, radius: int = 3) -> None:
        cx, cy = self.px(x, y)
        self.draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=color)


def _wrap(text: str, font, width: int) -> List[str]:
    """Split ``text`` at spaces into lines no wider than ``width`` pixels (a long word stays whole)."""
    lines, current = [], ""
    for word in text.split(" "):
        candidate = f"{current} {word}" if current else word
        if current and font.getlength(candidate) > width:
            lines.append(current)
            current = word
        else:
            current = candidate
    return lines + [current]


def _legend_columns(legend: Sequence[Tuple[tuple, str]], font, width: int) -> int:
    """Legend entries per row (at most 4) so that the widest label fits its column."""
    widest = max([font.getlength(label) for _, label in legend] or [0])
    return max(1, min(4, int((width - 12) // (widest + 30))))


def captioned(picture: Image.Image, lines: Sequence[str], legend: Sequence[Tuple[tuple, str]] = ()) -> Image.Image:
    """``picture`` under a white strip holding ``lines`` of text and an optional ``(colour, label)`` legend."""
    font = _font(14)
    line_height = 19
    width = max(picture.width, 480)
    lines = [wrapped for line in lines for wrapped in _wrap(line, font, width - 12)]
    columns = _legend_columns(legend, font, width)
    legend_rows = -(-len(legend) // columns)  # ceil division
    strip = 8 + line_height * (len(lines) + legend_rows)
    canvas = Image.new("RGB", (width, strip + picture.height), CAPTION_BACKGROUND)
    canvas.paste(picture, (0, strip))
    draw = ImageDraw.Draw(canvas)
    for row, text in enumerate(lines):
        draw.text((6, 4 + row * line_height), text, fill=(0, 0, 0), font=font)
    column_width = (width - 12) // columns
    for index, (color, label) in enumerate(legend):
        x = 6 + (index % columns) * column_width
        y = 4 + (len(lines) + index // columns) * line_height
        draw.rectangle([x, y + 2, x + 12, y + 14], fill=color)
        draw.text((x + 17, y), label, fill=(0, 0, 0), font=font)
    return canvas


# ---------------------------------------------------------------------------------------------- pictures
def anchors_picture(trace: StageTrace, display_side: int) -> Image.Image:
    """The ``A`` anchors of every level at the feature position nearest to the image centre."""
    height, width = trace.resized_size
    centre = (width / 2, height / 2)
    per_level = [anchors_at(trace, level, centre) for level in range(len(trace.strides))]
    every = torch.cat([anchors for anchors, _ in per_level])  # (L*A, 4)
    outside = [-float(every[:, 0].min()), -float(every[:, 1].min()), float(every[:, 2].max()) - width,
               float(every[:, 3].max()) - height]
    margin = max(0.0, *outside) + 4  # room for the anchors that reach past the image
    view = Display(trace, display_side, margin)
    legend = []
    for level, (anchors, (row, col)) in enumerate(per_level):
        color = LEVEL_COLORS[level % len(LEVEL_COLORS)]
        for anchor in anchors.tolist():
            view.box(anchor, color, width=2)
        view.dot(col * trace.strides[level], row * trace.strides[level], color, radius=4)
        size = int(round(float((anchors[0, 2] - anchors[0, 0]) * (anchors[0, 3] - anchors[0, 1])) ** 0.5))
        legend.append((color, f"P{level + 2} stride {trace.strides[level]}: ~{size} px"))
    ratios = len(trace.cell_anchors[0])
    return captioned(view.picture, [
        f"Anchors at one location: {ratios} per level (aspect ratios h/w), one size per level",
        f"input {width}x{height} px resized; dots = anchor centres on each level's grid (offset 0)"], legend)


def proposals_picture(trace: StageTrace, display_side: int, top: int, before_nms: bool,
                      nms_thresh: float) -> Image.Image:
    """The ``top`` best RPN boxes before NMS (green if NMS keeps them, red if it suppresses them), or after NMS
    (coloured by objectness, brighter = higher, on the range of the boxes drawn)."""
    view = Display(trace, display_side)
    if before_nms:
        boxes, scores = trace.pre_nms_boxes, trace.pre_nms_scores
        kept_boxes = {tuple(box) for box in trace.proposals.tolist()}
        shown = min(top, boxes.shape[0])
        kept = [tuple(boxes[i].tolist()) in kept_boxes for i in range(shown)]
        for index in reversed(range(shown)):
            view.box(boxes[index].tolist(), (40, 200, 60) if kept[index] else (235, 40, 40), width=2)
        legend = [((40, 200, 60), f"kept: {sum(kept)}"), ((235, 40, 40), f"suppressed: {shown - sum(kept)}")]
        return captioned(view.picture, [
            f"RPN boxes before NMS: {boxes.shape[0]} (the best {top} logits of each level), the best {shown} drawn",
            f"NMS drops a box overlapping a better one of its level with IoU > {nms_thresh:g}; "
            f"objectness {float(scores[shown - 1]):.2f} to {float(scores[0]):.2f}"], legend)
    boxes, scores = trace.proposals, trace.proposal_scores
    shown = min(top, boxes.shape[0])
    low, high = (float(scores[shown - 1]), float(scores[0])) if shown else (0.0, 1.0)
    span = max(high - low, 1e-6)
    for index in reversed(range(shown)):  # best drawn last, on top
        view.box(boxes[index].tolist(), score_color((float(scores[index]) - low) / span), width=2)
    legend = [(score_color(0.0), f"objectness {low:.2f}"), (score_color(0.5), f"{(low + high) / 2:.2f}"),
              (score_color(1.0), f"{high:.2f}")]
    return captioned(view.picture, [
        f"Proposals after NMS: {boxes.shape[0]} kept (at most post_nms_top_n), the best {shown} drawn",
        "what the second stage receives: anchors moved by the RPN's deltas, clipped to the image"], legend)


def roi_levels_picture(trace: StageTrace, display_side: int, top: int) -> Image.Image:
    """The best ``top`` proposals coloured by the FPN level the box head pools them from."""
    view = Display(trace, display_side)
    shown = min(top, trace.proposals.shape[0])
    for index in reversed(range(shown)):
        level = int(trace.proposal_levels[index])
        view.box(trace.proposals[index].tolist(), LEVEL_COLORS[level - 2], width=2 if index < 10 else 1)
    counts = torch.bincount(trace.proposal_levels, minlength=6).tolist()
    legend = [(LEVEL_COLORS[level - 2], f"P{level}: {counts[level]} ROIs") for level in range(2, 6)]
    return captioned(view.picture, [
        f"Level of each ROI: floor(4 + log2(sqrt(w*h) / 224)) clamped to P2..P5 ({shown} of "
        f"{trace.proposals.shape[0]} drawn)", "small boxes read the fine P2 map, large ones the coarse P5"], legend)


def roialign_picture(trace: StageTrace, roi: int, output_size: Tuple[int, int], sampling_ratio: int,
                     aligned: bool, display_side: int) -> Image.Image:
    """One ROI zoomed: its level's feature cells, the ``out_h x out_w`` bins and the sampling points."""
    box = trace.proposals[roi].tolist()
    level = int(trace.proposal_levels[roi])
    stride = trace.strides[level - 2]
    points = roi_align_sample_points(box, output_size, 1.0 / stride, sampling_ratio, aligned)
    image_points = (points + 0.5) * stride  # feature index u sits at image coordinate (u + 0.5) * stride
    # The region shown: the ROI, its points and one feature cell around them.
    xs = torch.cat([image_points[..., 1].flatten(), torch.tensor([box[0], box[2]], dtype=torch.float64)])
    ys = torch.cat([image_points[..., 0].flatten(), torch.tensor([box[1], box[3]], dtype=torch.float64)])
    left, right = float(xs.min()) - stride, float(xs.max()) + stride
    top, bottom = float(ys.min()) - stride, float(ys.max()) + stride
    zoom = display_side / max(right - left, bottom - top)
    size = (int(round((right - left) * zoom)), int(round((bottom - top) * zoom)))
    height, width = trace.resized_size
    resized = to_pil_image(trace.image).resize((width, height), Image.BILINEAR)
    picture = resized.transform(size, Image.EXTENT, (left, top, right, bottom), Image.NEAREST)
    draw = ImageDraw.Draw(picture)

    def px(x: float, y: float) -> Tuple[float, float]:
        return (x - left) * zoom, (y - top) * zoom

    cell_color = (255, 255, 255)
    first_col, last_col = int(np.floor(left / stride)), int(np.ceil(right / stride))
    for col in range(first_col, last_col + 1):  # feature cell borders
        draw.line([px(col * stride, top), px(col * stride, bottom)], fill=cell_color, width=1)
    first_row, last_row = int(np.floor(top / stride)), int(np.ceil(bottom / stride))
    for row in range(first_row, last_row + 1):
        draw.line([px(left, row * stride), px(right, row * stride)], fill=cell_color, width=1)
    # The bins as ROIAlign lays them out, in image coordinates (feature index u -> (u + 0.5) * stride).
    out_h, out_w = output_size
    geometry = roi_align_geometry(box, output_size, 1.0 / stride, sampling_ratio, aligned)
    grid_h, grid_w = geometry["grid_h"], geometry["grid_w"]
    origin_y, origin_x = (geometry["start_y"] + 0.5) * stride, (geometry["start_x"] + 0.5) * stride
    bin_h, bin_w = geometry["bin_h"], geometry["bin_w"]
    bin_color = (255, 210, 0)
    for i in range(out_h + 1):
        y = origin_y + i * bin_h * stride
        draw.line([px(origin_x, y), px(origin_x + out_w * bin_w * stride, y)], fill=bin_color, width=2)
    for j in range(out_w + 1):
        x = origin_x + j * bin_w * stride
        draw.line([px(x, origin_y), px(x, origin_y + out_h * bin_h * stride)], fill=bin_color, width=2)
    draw.rectangle([px(box[0], box[1]), px(box[2], box[3])], outline=(0, 230, 255), width=3)
    for y, x in image_points.reshape(-1, 2).tolist():
        cx, cy = px(x, y)
        draw.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=(255, 40, 40))
    shift = "" if aligned else "; aligned=False: points sit half a cell right of and below the box"
    return captioned(picture, [
        f"ROIAlign of the top ROI on P{level} (stride {stride}): {out_h}x{out_w} bins x {grid_h}x{grid_w} "
        f"bilinear samples", f"white = feature cells, cyan = ROI, yellow = bins, red = samples{shift}"])


def box_head_picture(trace: StageTrace, class_names: Sequence[str], display_side: int, top: int = 10) -> Image.Image:
    """The ``top`` proposals by class score (grey) and the box head's box for their best class (colour)."""
    view = Display(trace, display_side)
    scores, classes = trace.class_probabilities[:, 1:].max(dim=1)
    order = scores.argsort(descending=True)[:top]
    for index in order.tolist():
        label = int(classes[index]) + 1
        proposal = trace.proposals[index].tolist()
        refined = trace.refined_boxes[index, label].tolist()
        view.box(proposal, (200, 200, 200), width=1)
        color = class_color(label)
        view.box(refined, color, width=2)
        start = view.px((proposal[0] + proposal[2]) / 2, (proposal[1] + proposal[3]) / 2)
        end = view.px((refined[0] + refined[2]) / 2, (refined[1] + refined[3]) / 2)
        view.draw.line([start, end], fill=color, width=2)
        x, y = view.px(refined[0], refined[1])
        tag, font = f"{_name(label, class_names)} {float(scores[index]):.2f}", _font(12)
        left, top_, right, bottom = view.draw.textbbox((x + 2, y + 2), tag, font=font)
        view.draw.rectangle([left - 1, top_ - 1, right + 1, bottom + 1], fill=color)
        view.draw.text((x + 2, y + 2), tag, fill=(0, 0, 0) if sum(color) > 380 else (255, 255, 255), font=font)
    kept = trace.detections["labels"].shape[0]
    return captioned(view.picture, [
        f"Box head: the {len(order)} best of {trace.proposals.shape[0]} proposals (grey) and their refined box for "
        "the best class (colour)", f"softmax over classes, class-specific deltas; per-class NMS then keeps {kept} "
        "detections"])


def mask_logits_picture(trace: StageTrace, class_names: Sequence[str], cell: int = 10) -> Image.Image:
    """The top detection's 28x28 own-class logits (blue < 0 < red), beside its image patch and the 0.5 cut."""
    if trace.mask_logits.shape[0] == 0:
        empty = Image.new("RGB", (480, 120), (255, 255, 255))
        return captioned(empty, ["Mask logits: no detection above the score threshold on this image"])
    logits = trace.mask_logits[0].numpy()
    size = logits.shape[0]
    label = int(trace.detections["labels"][0])
    box = trace.detections["boxes"][0].tolist()
    height, width = trace.resized_size
    resized = to_pil_image(trace.image).resize((width, height), Image.BILINEAR)
    patch = resized.transform((size * cell, size * cell), Image.EXTENT, tuple(box), Image.BILINEAR)
    limit = max(float(np.abs(logits).max()), 1e-6)
    heat = np.array([[diverging_color(v / limit) for v in row] for row in logits], dtype=np.uint8)  # (M, M, 3)
    heat = Image.fromarray(heat, "RGB").resize((size * cell, size * cell), Image.NEAREST)
    cut = Image.fromarray(((logits > 0) * 255).astype(np.uint8)).convert("RGB").resize(heat.size, Image.NEAREST)
    gap = 12
    picture = Image.new("RGB", (3 * heat.width + 2 * gap, heat.height), (255, 255, 255))
    for index, panel in enumerate((patch, heat, cut)):
        picture.paste(panel, (index * (heat.width + gap), 0))
    legend = [(diverging_color(-1.0), f"{-limit:.1f}"), ((255, 255, 255), "0"), (diverging_color(1.0), f"+{limit:.1f}")]
    return captioned(picture, [
        f"Mask head, top detection '{_name(label, class_names)}' {float(trace.detections['scores'][0]):.2f}: "
        f"image under its box | {size}x{size} logits of its class | logit > 0 (probability > 0.5)"], legend)


def final_picture(trace: StageTrace, class_names: Sequence[str], score_thresh: float, display_side: int) -> Image.Image:
    """The model's final output on the original image: masks pasted, boxes, tags, legend."""
    final = trace.final
    keep = final["scores"] >= score_thresh
    height, width = trace.image.shape[1:]
    zoom = display_side / max(height, width)
    size = (max(1, int(round(width * zoom))), max(1, int(round(height * zoom))))
    picture = to_pil_image(trace.image).resize(size, Image.BILINEAR)
    masks = final["masks"][keep][:, 0] > 0.5                                    # (K, 1, h, w) -> (K, h, w)
    masks = torch.nn.functional.interpolate(masks[:, None].float(), size=(size[1], size[0]))[:, 0] > 0.5
    boxes = final["boxes"][keep] * torch.tensor([size[0] / width, size[1] / height] * 2)
    drawn = draw_instances(picture, boxes, final["labels"][keep], masks=masks.numpy(), scores=final["scores"][keep],
                           class_names=class_names)
    return captioned(drawn, [
        f"Final output: {int(keep.sum())} detections scoring >= {score_thresh:g}, 28x28 masks pasted into the "
        f"{width}x{height} image and cut at 0.5"])


def _name(label: int, class_names: Optional[Sequence[str]]) -> str:
    return str(class_names[label - 1]) if class_names and 1 <= label <= len(class_names) else str(label)


__all__: List[str] = ["anchors_picture", "proposals_picture", "roi_levels_picture", "roialign_picture",
                      "box_head_picture", "mask_logits_picture", "final_picture", "captioned", "Display"]

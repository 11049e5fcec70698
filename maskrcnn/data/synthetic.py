"""A built-in synthetic fashion set: garment silhouettes on cluttered backgrounds, written as JPEGs + COCO JSON.

    python -m maskrcnn.data.synthetic --out datasets/synthetic --num-train 500 --num-val 100 --seed 0 --size 256

writes ``instances_train.json`` and ``instances_val.json`` beside the folders ``train/`` and ``val/``. It is the
default dataset of the README's demo and of the tests: small enough to train a Mask R-CNN on a CPU in minutes,
yet with the difficulties of real photos in miniature.

What an image holds. One to four garments (8 classes with ModaNet's names, in ModaNet's id order: bag,
footwear, outer, dress, pants, top, skirt, headwear), each a polygon silhouette with its class's telltale parts:
a top has short sleeves and a neckline dip, outerwear long sleeves, a V neck and a front opening, pants two legs,
a dress two straps and a flared skirt, a bag a handle arc, a shoe a heel-to-toe profile, a hat a crown on a brim.
Each garment is 15-60 % of the image side, slightly rotated, filled with a texture (solid, stripes, checks,
dots, mottled) under soft shading, and outlined darker. Garments painted later cover earlier ones, but an
object may lose at most 45 % of its area, so occlusion stays moderate. The background is a colour gradient
with 6-14 unlabeled shapes (rectangles, ellipses, lines, triangles) as clutter.

Annotations are exact. A fully visible object's segmentation is its polygon; a partly covered object's is the
compressed COCO RLE of its *visible* pixels (the covered part is not in its mask). The mask is what
``records.segmentation_to_mask`` decodes, the image paints exactly those pixels, ``bbox`` is the whole-pixel box
of the visible mask (``[x, y, w, h]``, COCO order) and ``area`` its pixel count.
``attribute_ids`` holds the object's fabric pattern (one of ``PATTERN_NAMES``, ids 1-5) and, when its fabric is
clearly dark or light, its colour tone (``TONE_NAMES``, ids 6-7: the mean luminance of its visible pixels
below ``DARK_BELOW`` or above ``LIGHT_ABOVE``). Both come from the fabric, whose pattern and colours are drawn
independently of the class, so the class predicts neither; an object has one or two attributes (multi-label).
The file's top-level ``attributes`` list names them as Fashionpedia's files name theirs: the attribute head's
demo (``configs/synthetic_attributes.yaml``).

Determinism. Image ``i`` of a split draws from ``numpy.random.default_rng([seed, split, i])``: the same seed gives
byte-identical JPEGs and JSON, and image ``i`` does not depend on how many images are generated.
"""
from __future__ import annotations

import argparse
import json
import math
import os
from typing import Sequence, Union

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as coco_mask

from .records import mask_to_box, segmentation_to_mask

CLASS_NAMES = ["bag", "footwear", "outer", "dress", "pants", "top", "skirt", "headwear"]  # labels 1..8
# The fabric pattern of each object, drawn independently of its class: its first attribute (attribute_ids,
# source ids 1..5, supercategory "textile pattern"; the file's top-level "attributes" list names them).
PATTERN_NAMES = ["plain", "striped", "checked", "dotted", "mottled"]
# The colour tone of a fabric whose visible pixels are clearly dark or light on average (Rec. 601 luminance in
# [0, 1] of the painted pixels); source ids 6-7, supercategory "colour tone". Most objects have neither.
TONE_NAMES = ["dark", "light"]
DARK_BELOW, LIGHT_ABOVE = 0.3, 0.6
ATTRIBUTES = ([{"id": i + 1, "name": n, "supercategory": "textile pattern"} for i, n in enumerate(PATTERN_NAMES)]
              + [{"id": len(PATTERN_NAMES) + i + 1, "name": n, "supercategory": "colour tone"}
                 for i, n in enumerate(TONE_NAMES)])
SPLITS = {"train": 0, "val": 1}  # split number mixed into the seed
MIN_VISIBLE = 0.55  # an object keeps at least this fraction of its pixels when later objects cover it
JPEG_QUALITY = 90

# Per class: (range of the longer box side as a fraction of the image side, range of height / width).
SIZES = {
    "bag": ((0.22, 0.40), (0.85, 1.15)),
    "footwear": ((0.16, 0.30), (0.45, 0.60)),
    "outer": ((0.40, 0.60), (1.15, 1.40)),
    "dress": ((0.42, 0.60), (1.60, 2.00)),
    "pants": ((0.42, 0.60), (1.80, 2.30)),
    "top": ((0.30, 0.50), (0.90, 1.10)),
    "skirt": ((0.26, 0.42), (0.65, 0.90)),
    "headwear": ((0.16, 0.30), (0.55, 0.75)),
}


# ----------------------------------------------------------------------------------------------
# Silhouettes: each returns polygons in the unit box, x to the right and y down, as (P, 2) arrays
# ----------------------------------------------------------------------------------------------
def _arc(cx, cy, rx, ry, start, stop, count):
    """Points on an ellipse from angle ``start`` to ``stop`` (radians; y up on screen, hence the minus)."""
    angles = np.linspace(start, stop, count)
    return np.stack([cx + rx * np.cos(angles), cy - ry * np.sin(angles)], axis=1)


def _top(rng):
    neck = rng.uniform(0.12, 0.18)  # half-width of the neck opening
    dip = rng.uniform(0.06, 0.14)  # depth of the neckline
    sleeve = rng.uniform(0.26, 0.36)  # height of the short sleeve's end
    side = rng.uniform(0.20, 0.26)  # x of the body's side below the armpit
    flare = rng.uniform(-0.03, 0.04)  # hem wider (> 0) or narrower than the chest
    points = [(0.5 - neck, 0), (0.5, dip), (0.5 + neck, 0), (0.8, 0.04), (1.0, sleeve - 0.08), (0.9, sleeve + 0.06),
              (1 - side, 0.3), (1 - side + flare, 1.0), (side - flare, 1.0), (side, 0.3), (0.1, sleeve + 0.06),
              (0.0, sleeve - 0.08), (0.2, 0.04)]
    return [np.array(points)]


def _outer(rng):
    neck, v_depth, cuff = rng.uniform(0.10, 0.15), rng.uniform(0.25, 0.40), rng.uniform(0.75, 0.90)
    points = [(0.5 - neck, 0), (0.5, v_depth), (0.5 + neck, 0), (0.8, 0.03), (0.97, 0.12), (1.0, cuff),
              (0.87, cuff + 0.02), (0.83, 0.3), (0.82, 1.0), (0.52, 1.0), (0.5, 0.93), (0.48, 1.0), (0.18, 1.0),
              (0.17, 0.3), (0.13, cuff + 0.02), (0.0, cuff), (0.03, 0.12), (0.2, 0.03)]
    return [np.array(points)]


def _pants(rng):
    crotch, gap, taper = rng.uniform(0.26, 0.38), rng.uniform(0.05, 0.10), rng.uniform(0.0, 0.08)
    points = [(0.02, 0), (0.98, 0), (1.0 - taper, 1.0), (0.5 + gap, 1.0), (0.5, crotch), (0.5 - gap, 1.0),
              (taper, 1.0)]
    return [np.array(points)]


def _skirt(rng):
    waist, pleats, depth = rng.uniform(0.18, 0.28), int(rng.integers(3, 8)), rng.uniform(0.0, 0.05)
    hem_x = np.linspace(1.0, 0.0, 2 * pleats + 1)
    hem_y = 1.0 - depth * (np.arange(2 * pleats + 1) % 2)  # a zigzag hem when depth > 0
    return [np.concatenate([np.array([(0.5 - waist, 0), (0.5 + waist, 0)]), np.stack([hem_x, hem_y], 1)])]


def _dress(rng):
    strap_x = rng.uniform(0.30, 0.36)  # x of the left strap
    waist_y = rng.uniform(0.36, 0.46)  # height of the waist
    waist = rng.uniform(0.13, 0.19)  # half-width at the waist
    bodice = rng.uniform(0.18, 0.22)  # half-width under the arms
    s = 0.035  # half the strap width
    points = [(strap_x - s, 0), (strap_x + s, 0), (strap_x + s, 0.13), (1 - strap_x - s, 0.13), (1 - strap_x - s, 0),
              (1 - strap_x + s, 0), (0.5 + bodice, 0.2), (0.5 + waist, waist_y), (1.0, 1.0), (0.0, 1.0),
              (0.5 - waist, waist_y), (0.5 - bodice, 0.2)]
    return [np.array(points)]


def _bag(rng):
    body_top, taper, handle = rng.uniform(0.35, 0.45), rng.uniform(0.0, 0.08), rng.uniform(0.22, 0.32)
    body = np.array([(taper, body_top), (1 - taper, body_top), (1.0, 1.0), (0.0, 1.0)])
    base, thickness = body_top + 0.03, 0.08  # the handle's ends sink into the body
    outer = _arc(0.5, base, handle, base, math.pi, 0.0, 14)
    inner = _arc(0.5, base, handle - thickness, base - thickness, 0.0, math.pi, 14)
    return [body, np.concatenate([outer, inner])]


def _footwear(rng):
    collar, toe = rng.uniform(0.05, 0.2), rng.uniform(0.55, 0.7)
    points = [(0.0, collar), (0.28, collar + 0.02), (0.36, 0.32), (0.62, 0.48), (0.9, toe), (1.0, 0.8),
              (0.98, 0.95), (0.9, 1.0), (0.0, 1.0)]
    return [np.array(points)]


def _headwear(rng):
    crown, brim = rng.uniform(0.24, 0.34), rng.uniform(0.14, 0.2)
    dome = _arc(0.5, 0.8, crown, 0.8, math.pi, 0.0, 16)
    return [dome, _arc(0.5, 1.0 - brim, 0.5, brim, 0.0, 2 * math.pi, 24)[:-1]]


SHAPES = {"bag": _bag, "footwear": _footwear, "outer": _outer, "dress": _dress, "pants": _pants, "top": _top,
          "skirt": _skirt, "headwear": _headwear}


# ----------------------------------------------------------------------------------------------
# Painting
# ----------------------------------------------------------------------------------------------
def _color(rng):
    return rng.uniform(0.05, 0.95, size=3)


def _smooth_noise(rng, height, width, cells):
    """Low-frequency noise in [0, 1]: a random cells x cells grid enlarged bilinearly to (height, width)."""
    grid = Image.fromarray((rng.random((cells, cells)) * 255).astype(np.uint8))
    return np.asarray(grid.resize((width, height), Image.BILINEAR), dtype=np.float64) / 255.0


def _texture(rng, height, width):
    """A (height, width, 3) fabric: solid, stripes, checks, dots or mottled, in two colours, with shading;
    returns ``(fabric, kind)``, ``kind`` the index of the pattern in ``PATTERN_NAMES``."""
    first, second = _color(rng), _color(rng)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    period, angle = rng.uniform(5, 14), rng.uniform(0, math.pi)
    kind = rng.integers(5)
    if kind == 0:
        pattern = np.zeros((height, width))
    elif kind == 1:
        pattern = (((xs * math.cos(angle) + ys * math.sin(angle)) / period) % 1.0 < 0.5).astype(np.float64)
    elif kind == 2:
        pattern = ((np.floor(xs / period) + np.floor(ys / period)) % 2).astype(np.float64)
    elif kind == 3:
        pattern = (((xs % period) - period / 2) ** 2 + ((ys % period) - period / 2) ** 2 < (period / 4) ** 2) * 1.0
    else:
        pattern = _smooth_noise(rng, height, width, int(rng.integers(6, 16)))
    fabric = first + pattern[..., None] * (second - first)  # (H, W) -> (H, W, 3)
    shading = 0.8 + 0.4 * _smooth_noise(rng, height, width, 3)
    return np.clip(fabric * shading[..., None], 0.0, 1.0), int(kind)


def _background(rng, height, width):
    """A gradient between two colours with 6-14 unlabeled clutter shapes: (height, width, 3) in [0, 1]."""
    first, second = _color(rng), _color(rng)
    angle = rng.uniform(0, 2 * math.pi)
    ys, xs = np.mgrid[0:height, 0:width]
    ramp = (xs * math.cos(angle) + ys * math.sin(angle)) / max(height, width)
    ramp = (ramp - ramp.min()) / max(ramp.max() - ramp.min(), 1e-9)
    picture = Image.fromarray(((first + ramp[..., None] * (second - first)) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    for _ in range(int(rng.integers(6, 15))):
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        x0, y0 = rng.uniform(-0.1, 1.0) * width, rng.uniform(-0.1, 1.0) * height
        x1, y1 = x0 + rng.uniform(0.05, 0.4) * width, y0 + rng.uniform(0.05, 0.4) * height
        kind = rng.integers(4)
        if kind == 0:
            draw.rectangle([x0, y0, x1, y1], fill=fill)
        elif kind == 1:
            draw.ellipse([x0, y0, x1, y1], fill=fill)
        elif kind == 2:
            draw.line([x0, y0, x1, y1], fill=fill, width=int(rng.integers(2, 7)))
        else:
            draw.polygon([(x0, y0), (x1, y0 + rng.uniform(-20, 20)), (rng.uniform(x0, x1), y1)], fill=fill)
    return np.asarray(picture, dtype=np.float64) / 255.0


def _outline(mask):
    """Pixels of ``mask`` with a 4-neighbour outside it (its one-pixel boundary)."""
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def _place(rng, name, height, width):
    """Polygons of one ``name`` object scaled, turned by up to 8 degrees and placed inside the image, as COCO
    flat lists with two decimals."""
    (size_low, size_high), (aspect_low, aspect_high) = SIZES[name]
    longer, aspect = rng.uniform(size_low, size_high) * min(height, width), rng.uniform(aspect_low, aspect_high)
    box_h, box_w = (longer, longer / aspect) if aspect >= 1 else (longer * aspect, longer)
    polygons = SHAPES[name](rng)
    if name == "footwear" and rng.random() < 0.5:
        polygons = [np.stack([1.0 - p[:, 0], p[:, 1]], axis=1) for p in polygons]  # the toe points left
    turn = math.radians(rng.uniform(-8, 8))
    rotation = np.array([[math.cos(turn), -math.sin(turn)], [math.sin(turn), math.cos(turn)]])
    x0, y0 = rng.uniform(0, width - box_w), rng.uniform(0, height - box_h)
    centre = np.array([box_w / 2, box_h / 2])
    placed = []
    for polygon in polygons:
        points = (polygon * [box_w, box_h] - centre) @ rotation.T + centre + [x0, y0]  # (P, 2) pixels
        points = np.clip(points, [0, 0], [width, height])
        placed.append([round(float(v), 2) for v in points.reshape(-1)])  # (P, 2) -> (2P,) x0, y0, x1, ...
    return placed


def render_image(rng: np.random.Generator, height: int, width: int):
    """One picture and its objects in painting order.

    Returns ``(image uint8 (H, W, 3), [(label, polygons, visible mask (H, W) bool, full area, attribute ids),
    ...])``: the source ids of the object's pattern and tone (module docstring).
    """
    wanted = int(rng.choice([1, 2, 3, 4], p=[0.2, 0.3, 0.3, 0.2]))
    objects = []  # (label, polygons, full mask) in painting order
    for _ in range(wanted * 10):  # a few tries per object; a try that hides too much of the others is dropped
        if len(objects) == wanted:
            break
        label = int(rng.integers(len(CLASS_NAMES))) + 1
        polygons = _place(rng, CLASS_NAMES[label - 1], height, width)
        full = segmentation_to_mask(polygons, height, width).astype(bool)
        if full.sum() < 16:
            continue
        candidate = objects + [(label, polygons, full)]
        if all(visible.sum() >= MIN_VISIBLE * obj[2].sum() for visible, obj in zip(_visible(candidate), candidate)):
            objects.append((label, polygons, full))
    image = _background(rng, height, width)
    patterns = []
    for _, _, full in objects:
        fabric, pattern = _texture(rng, height, width)
        image[full] = fabric[full]
        image[_outline(full)] *= 0.55
        patterns.append(pattern)
    image = np.clip(image + rng.normal(0.0, 0.015, image.shape), 0.0, 1.0)
    luminance = image @ np.array([0.299, 0.587, 0.114])  # (H, W, 3) -> (H, W)
    described = [(label, polygons, visible, int(full.sum()), [pattern + 1] + _tone_ids(luminance[visible]))
                 for (label, polygons, full), visible, pattern in zip(objects, _visible(objects), patterns)]
    return (image * 255 + 0.5).astype(np.uint8), described


def _tone_ids(luminance: np.ndarray) -> list:
    """``[6]`` (dark), ``[7]`` (light) or ``[]`` from an object's visible pixels' luminance values."""
    mean = float(luminance.mean())
    if mean < DARK_BELOW:
        return [len(PATTERN_NAMES) + 1]
    return [len(PATTERN_NAMES) + 2] if mean > LIGHT_ABOVE else []


def _visible(objects):
    """Visible part of each object's full mask: what no later object covers."""
    visible, cover = [], None
    for _, _, full in reversed(objects):
        visible.append(full if cover is None else full & ~cover)
        cover = full.copy() if cover is None else cover | full
    return visible[::-1]


# ----------------------------------------------------------------------------------------------
# Writing a split
# ----------------------------------------------------------------------------------------------
def _annotation(ann_id, image_id, label, polygons, visible, full_area, attribute_ids):
    x1, y1, x2, y2 = (float(v) for v in mask_to_box(visible))
    if int(visible.sum()) == full_area:
        segmentation = polygons
    else:
        rle = coco_mask.encode(np.asfortranarray(visible.astype(np.uint8)))
        segmentation = {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}
    return {"id": ann_id, "image_id": image_id, "category_id": label, "segmentation": segmentation,
            "area": int(visible.sum()), "bbox": [x1, y1, x2 - x1, y2 - y1], "iscrowd": 0,
            "attribute_ids": list(attribute_ids)}


def write_split(out_dir: str, split: str, count: int, seed: int, height: int, width: int) -> dict:
    """Render ``count`` images into ``out_dir/split/`` and ``out_dir/instances_{split}.json``; return both paths."""
    images_dir = os.path.join(out_dir, split)
    os.makedirs(images_dir, exist_ok=True)
    images, annotations = [], []
    for index in range(count):
        rng = np.random.default_rng([seed, SPLITS[split], index])
        picture, objects = render_image(rng, height, width)
        image_id, file_name = index + 1, f"{index + 1:06d}.jpg"
        Image.fromarray(picture).save(os.path.join(images_dir, file_name), quality=JPEG_QUALITY)
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        for label, polygons, visible, full_area, attribute_ids in objects:
            annotations.append(_annotation(len(annotations) + 1, image_id, label, polygons, visible, full_area,
                                           attribute_ids))
    coco = {"info": {"description": "maskrcnn synthetic fashion set", "seed": seed, "split": split},
            "licenses": [], "images": images, "annotations": annotations,
            "categories": [{"id": i + 1, "name": n, "supercategory": "fashion"} for i, n in enumerate(CLASS_NAMES)],
            "attributes": ATTRIBUTES}
    annotations_path = os.path.join(out_dir, f"instances_{split}.json")
    with open(annotations_path, "w") as f:
        json.dump(coco, f)
    return {"annotations": annotations_path, "images": images_dir}


def generate_synthetic_dataset(out_dir: str, num_train: int = 500, num_val: int = 100, seed: int = 0,
                               image_size: Union[int, Sequence[int]] = 256) -> dict:
    """Write the train and val splits; ``image_size`` is a side or ``(width, height)``.

    Returns ``{"train": {"annotations": json path, "images": folder}, "val": {...}}``.
    """
    width, height = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if min(width, height) < 32:
        raise ValueError(f"image_size: each side must be at least 32 pixels, got {width}x{height}")
    if num_train < 0 or num_val < 0:
        raise ValueError(f"num_train and num_val must be >= 0, got {num_train} and {num_val}")
    return {split: write_split(out_dir, split, count, seed, height, width)
            for split, count in (("train", num_train), ("val", num_val))}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m maskrcnn.data.synthetic", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--num-train", type=int, default=500, help="training images (default 500)")
    parser.add_argument("--num-val", type=int, default=100, help="validation images (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="seed; the same seed writes identical files")
    parser.add_argument("--size", type=int, nargs="+", default=[256], metavar="PIXELS",
                        help="image side, or width and height (default 256)")
    args = parser.parse_args(argv)
    if len(args.size) > 2:
        parser.error("--size takes one side or a width and a height")
    size = args.size[0] if len(args.size) == 1 else tuple(args.size)
    paths = generate_synthetic_dataset(args.out, args.num_train, args.num_val, args.seed, size)
    for split, where in paths.items():
        print(f"{split}: {where['annotations']} (images in {where['images']})")


if __name__ == "__main__":
    main()

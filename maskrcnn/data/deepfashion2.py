"""Adapter for DeepFashion2's per-image JSON: ``annos/000001.json`` beside ``image/000001.jpg``.

Each annotation file describes one image (its id is the file stem as an int)::

    {"source": "shop" | "user", "pair_id": 1,
     "item1": {"category_id": 1-13, "category_name": "short sleeve top", "style": 1,
               "bounding_box": [x1, y1, x2, y2],            # corners, not [x, y, w, h]
               "landmarks": [x, y, v, ...], "segmentation": [[x0, y0, x1, y1, ...], ...],
               "scale": 1-3, "occlusion": 1-3, "zoom_in": 1-3, "viewpoint": 1-3},
     "item2": {...}, ...}

The files do not state the image size, so it is read from the image header (honouring EXIF
orientation, as the training loader does). Items become annotations in item-number order, with ids
1, 2, ... over the whole folder, and keep ``style``, ``occlusion``, ``zoom_in``, ``viewpoint`` and
``scale`` when present; the record keeps ``source`` and ``pair_id``. The official COCO converter
writes the *box* area as ``area``; ``data/prepare_deepfashion2.py`` writes the mask area instead.
"""
from __future__ import annotations

import json
import os
import re
from typing import Iterable, Mapping, Optional, Sequence

from .categories import load_category_table, resolve_category_map
from .problems import DataError, Problems, build_annotation
from .records import RecordSet, read_image_size

__all__ = ["load_deepfashion2", "item_keys"]

ITEM_FIELDS_KEPT = ("style", "scale", "occlusion", "zoom_in", "viewpoint")
_ITEM_KEY = re.compile(r"^item(\d+)$")


def item_keys(data: dict) -> list:
    """The ``item<N>`` keys of one annotation dict, in numeric order (item2 before item10)."""
    keyed = [(int(m.group(1)), key) for key in data if (m := _ITEM_KEY.match(key))]
    return [key for _, key in sorted(keyed)]


def _find_image(images_dir: str, stem: str, extensions: Sequence[str]):
    for extension in extensions:
        candidate = os.path.join(images_dir, stem + extension)
        if os.path.isfile(candidate):
            return candidate
    return None


def load_deepfashion2(
    annotations,
    images_dir="",
    *,
    image_extensions: Sequence[str] = (".jpg", ".jpeg", ".png"),
    categories=None,
    drop: Iterable = (),
    merge: Optional[Mapping] = None,
    class_order: Optional[Sequence[str]] = None,
    recompute_boxes: bool = False,
    clip_boxes: bool = True,
    strict: bool = False,
    problems: Optional[Problems] = None,
) -> RecordSet:
    """Read a DeepFashion2 ``annos/`` folder into records, sorted by image id.

    Args:
        annotations: the ``annos`` folder of one split.
        images_dir: the matching ``image`` folder; image ``<stem><ext>`` for annotation ``<stem>.json``,
            trying ``image_extensions`` in order.
        categories: class table; default ``data/categories/deepfashion2.yaml`` (ids 1-13).
        Other arguments: as ``maskrcnn.data.coco.load_coco``.

    An image file that is missing or unreadable is reported and its record skipped (its size is
    unknown without it).
    """
    folder = str(annotations)
    problems = problems if problems is not None else Problems.for_loading(strict)
    if not os.path.isdir(folder):
        raise DataError(f"{folder}: annotation folder not found (expected DeepFashion2's annos/)")
    table, category_map = resolve_category_map(
        categories, load_category_table("deepfashion2"), drop, merge, class_order)
    names = sorted(n for n in os.listdir(folder) if n.endswith(".json"))
    records, next_id = [], 1
    for name in names:
        path = os.path.join(folder, name)
        stem = name[: -len(".json")]
        if not stem.isdigit():
            problems.report(path, "file name is not a number, so it gives no image id")
            continue
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            problems.report(path, f"not valid JSON: {e}")
            continue
        if not isinstance(data, dict):
            problems.report(path, "expected a JSON object with item1, item2, ...")
            continue
        image_path = _find_image(str(images_dir), stem, image_extensions)
        if image_path is None:
            problems.report(path, f"image {os.path.join(str(images_dir), stem)}"
                                  f"{{{','.join(image_extensions)}}} not found")
            continue
        try:
            height, width = read_image_size(image_path)
        except Exception as e:  # PIL raises several types for undecodable files
            problems.report(path, f"cannot read the size of image {image_path}: {e}")
            continue
        record = {"file_name": image_path, "image_id": int(stem), "height": height, "width": width,
                  "annotations": []}
        for key in ("source", "pair_id"):
            if key in data:
                record[key] = data[key]
        for key in item_keys(data):
            where = f"{path}: {key}"
            item = data[key]
            ann_id, next_id = next_id, next_id + 1
            if not isinstance(item, dict):
                problems.report(where, "expected an object")
                continue
            missing = [k for k in ("category_id", "segmentation") if k not in item]
            if missing:
                problems.report(f"{where}.{missing[0]}", "missing")
                continue
            category, category_name = item["category_id"], item.get("category_name")
            expected_name = category_map.source_names.get(category)
            if category_name is not None and expected_name is not None and category_name != expected_name:
                problems.report(f"{where}.category_name",
                                f"{category_name!r} does not match category_id {category} ({expected_name!r})")
                continue
            extra = {k: item[k] for k in ITEM_FIELDS_KEPT if k in item}
            built = build_annotation(
                box=item.get("bounding_box"), box_format="xyxy", segmentation=item["segmentation"],
                source_category=category, height=height, width=width,
                where=where, problems=problems, category_map=category_map, table_name=table.path,
                recompute_boxes=recompute_boxes, clip_boxes=clip_boxes, box_field="bounding_box",
                id=ann_id, **extra)
            if built is not None:
                record["annotations"].append(built)
        records.append(record)
    records.sort(key=lambda r: r["image_id"])
    return RecordSet(records, list(category_map.class_names), source=folder)

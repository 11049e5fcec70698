"""Adapter for COCO-style instance JSON: ModaNet, Fashionpedia, the prepared iMaterialist/DeepFashion2
files, the synthetic set, and any other COCO-style dataset.

The file holds ``images`` (``id, file_name, height, width``), ``annotations`` (``id, image_id,
category_id, bbox [x, y, w, h], segmentation, iscrowd``, optionally ``area`` and Fashionpedia's
``attribute_ids``) and ``categories`` (``id, name``). A segmentation is a list of polygons, a
compressed RLE ``{"size": [h, w], "counts": str}`` (Fashionpedia) or an uncompressed RLE with
integer ``counts`` (COCO crowds); all three are kept as they are in the record and rasterized by
pycocotools (``records.segmentation_to_mask``).

Dataset quirks handled here (docs/conventions.md section 2):
- ModaNet's annotation ids start at 0, and pycocotools' COCOeval treats a ground-truth id of 0 as "no
  match". Record annotation ids are therefore always positive and unique: the source ids when they
  already are, else the 1-based position in the file (the source id is kept as ``source_id``).
- Some ModaNet boxes disagree with their polygons: ``recompute_boxes=True`` replaces every box by the
  whole-pixel box of its rasterized mask.
- ModaNet's released val JSON has no ``annotations`` key: a missing list is read as empty.
- Fashionpedia's categories are 0-45; the class table maps them to labels 1..46.
- A file's category *names* are checked against the chosen class table (``category_match``): a
  pre-release Fashionpedia file with 48 classes loaded with the 46-class table would otherwise turn
  shoes into "bag, wallet". Harmless spellings (ModaNet's "scarf/tie") are aliases in the table.
"""
from __future__ import annotations

import json
import os
from typing import Iterable, Mapping, Optional, Sequence

from .categories import CategoryTable, match_file_categories, resolve_category_map
from .duplicates import drop_duplicate_annotations
from .problems import DataError, Problems, build_annotation, image_path
from .records import RecordSet

__all__ = ["load_coco", "read_coco_json"]


def read_coco_json(path) -> dict:
    """Parse a COCO JSON file; DataError naming the file when it is missing or not a COCO dict."""
    path = str(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: annotation file not found")
    with open(path) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object with images, annotations, categories")
    for key in ("images", "annotations", "categories"):
        if key in data and not isinstance(data[key], list):
            raise DataError(f"{path}: {key}: expected a list")
    if "images" not in data:
        raise DataError(f"{path}: images: missing")
    return data


def _file_categories(data: dict, path: str) -> CategoryTable:
    """The file's own ``categories`` list as a class table."""
    categories = []
    for i, entry in enumerate(data.get("categories", [])):
        if not (isinstance(entry, dict) and isinstance(entry.get("id"), int)
                and isinstance(entry.get("name"), str)):
            raise DataError(f"{path}: categories[{i}]: expected {{id: int, name: str}}, got {entry!r}")
        categories.append((entry["id"], entry["name"]))
    return CategoryTable(categories, path=f"{path}: categories")


def _read_images(data: dict, path: str, images_dir: str, problems: Problems, allow_outside: bool) -> dict:
    """``{image_id: record without annotations}`` in file order; bad or duplicate entries reported."""
    records = {}
    for i, image in enumerate(data["images"]):
        where = f"{path}: images[{i}]"
        if not isinstance(image, dict):
            problems.report(where, "expected an object")
            continue
        image_id, file_name = image.get("id"), image.get("file_name")
        if not isinstance(image_id, int) or isinstance(image_id, bool):
            problems.report(f"{where}.id", f"expected an int, got {image_id!r}")
            continue
        if not isinstance(file_name, str) or not file_name:
            problems.report(f"{where}.file_name", f"expected a file name, got {file_name!r}")
            continue
        size_ok = True
        for key in ("height", "width"):
            value = image.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                problems.report(f"{where}.{key}", f"expected a positive int, got {value!r}")
                size_ok = False
        if not size_ok:
            continue
        if image_id in records:
            problems.report(f"{where}.id", f"duplicate image id {image_id}")
            continue
        image_file = image_path(images_dir, file_name, f"{where}.file_name", problems, allow_outside)
        if image_file is None:
            continue
        records[image_id] = {
            "file_name": image_file,
            "image_id": image_id,
            "height": image["height"],
            "width": image["width"],
            "annotations": [],
        }
    return records


def _annotation_ids(annotations: list, path: str, problems: Problems) -> list:
    """Positive unique ids: the source ids if they already are, else 1-based file positions."""
    ids = [a.get("id") if isinstance(a, dict) else None for a in annotations]
    seen, duplicates = set(), []
    for i, value in enumerate(ids):
        if isinstance(value, int) and value in seen:
            duplicates.append(i)
        seen.add(value)
    for i in duplicates:
        problems.report(f"{path}: annotations[{i}].id", f"duplicate annotation id {ids[i]}",
                        action="all annotation ids renumbered")
    usable = all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in ids) and not duplicates
    return ids if usable else list(range(1, len(ids) + 1))


def load_coco(
    annotations,
    images_dir="",
    *,
    categories=None,
    drop: Iterable = (),
    merge: Optional[Mapping] = None,
    class_order: Optional[Sequence[str]] = None,
    category_match: str = "id",
    drop_duplicates: bool = True,
    recompute_boxes: bool = False,
    clip_boxes: bool = True,
    allow_outside_images: bool = False,
    strict: bool = False,
    problems: Optional[Problems] = None,
) -> RecordSet:
    """Read a COCO-style JSON file into records.

    Args:
        annotations: path of the JSON file.
        images_dir: folder that ``images[*].file_name`` is relative to.
        categories: class table (path or built-in name); None uses the file's own ``categories``.
        drop, merge, class_order: category configuration, see ``maskrcnn.data.categories``.
        category_match: when ``categories`` names a table, how the file's own categories are matched
            to it: ``"id"`` (same ids, and the names must agree) or ``"name"`` (map by name); see
            ``categories.match_file_categories``. A disagreement raises DataError listing each id.
        drop_duplicates: drop exact duplicate annotations (same class and the same mask or box in one
            image, see ``duplicates.py``); they are counted in a warning (or listed by the checker)
            either way, and the count is ``RecordSet.num_duplicates``.
        recompute_boxes: replace each box by the whole-pixel box of its mask (decodes every mask).
        clip_boxes: clip boxes that stick out of the image to the image.
        allow_outside_images: accept ``file_name`` values that resolve outside ``images_dir``
            (``../../etc/hostname``, absolute paths); refused and reported by default.
        strict: raise DataError at the first problem instead of warning and skipping the item.
        problems: a Problems collector to use instead (the dataset checker passes ``"collect"``).

    Returns:
        a RecordSet: one record per image (images without annotations included), ``class_names``.
    """
    path = str(annotations)
    problems = problems if problems is not None else Problems.for_loading(strict)
    data = read_coco_json(path)
    file_table = _file_categories(data, path)
    table, category_map = resolve_category_map(categories, file_table, drop, merge, class_order)
    to_table = None  # file category id -> table id, when the file is read with another table
    if table is not file_table and file_table.categories:
        try:
            to_table = match_file_categories(table, file_table.categories, category_match, f"{path}: categories")
        except ValueError as e:
            raise DataError(str(e)) from None
        if category_match == "id":
            to_table = None  # the same ids: nothing to translate
    records = _read_images(data, path, str(images_dir), problems, allow_outside_images)
    source_annotations = data.get("annotations", [])
    ids = _annotation_ids(source_annotations, path, problems)
    positions = {}  # image id -> index in the file of each kept annotation, for messages
    for i, (ann, ann_id) in enumerate(zip(source_annotations, ids)):
        where = f"{path}: annotations[{i}]"
        if not isinstance(ann, dict):
            problems.report(where, "expected an object")
            continue
        record = records.get(ann.get("image_id"))
        if record is None:
            problems.report(f"{where}.image_id", f"no image with id {ann.get('image_id')!r}")
            continue
        extra = {"id": ann_id}
        if ann_id != ann.get("id") and isinstance(ann.get("id"), int):
            extra["source_id"] = ann["id"]
        if "attribute_ids" in ann:
            attributes = ann["attribute_ids"]
            if not (isinstance(attributes, list) and all(isinstance(a, int) for a in attributes)):
                problems.report(f"{where}.attribute_ids", f"expected a list of ints, got {attributes!r}")
                continue
            extra["attribute_ids"] = list(attributes)
        for key in ("segmentation", "category_id"):
            if key not in ann:
                problems.report(f"{where}.{key}", "missing")
                break
        else:
            source_category = ann["category_id"]
            if to_table is not None and not isinstance(source_category, bool):
                if source_category not in to_table:
                    name = dict(file_table.categories).get(source_category)
                    problems.report(f"{where}.category_id",
                                    f"category {source_category!r} ({name!r}) has no category of that name in "
                                    f"{table.path}" if name else
                                    f"category {source_category!r} is not among the file's categories")
                    continue
                source_category = to_table[source_category]
            built = build_annotation(
                box=ann.get("bbox"), box_format="xywh", segmentation=ann["segmentation"],
                source_category=source_category, height=record["height"], width=record["width"],
                where=where, problems=problems, category_map=category_map, table_name=table.path,
                recompute_boxes=recompute_boxes, clip_boxes=clip_boxes,
                iscrowd=ann.get("iscrowd", 0), **extra)
            if built is not None:
                record["annotations"].append(built)
                positions.setdefault(record["image_id"], []).append(i)
    records = list(records.values())
    num_duplicates = drop_duplicate_annotations(records, positions, path, category_map.class_names, problems,
                                                drop=drop_duplicates)
    return RecordSet(records, list(category_map.class_names), source=path, num_duplicates=num_duplicates)

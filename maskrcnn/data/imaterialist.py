"""Adapter for iMaterialist (Fashion) 2019 FGVC6: ``train.csv`` + ``label_descriptions.json``.

``train.csv`` has one row per instance mask, columns ``ImageId,EncodedPixels,Height,Width,ClassId``.
``ClassId`` is ``"<category>"`` or ``"<category>_<attr>_<attr>..."`` (e.g. ``"10_20_24"``: category 10
with attributes 20 and 24). ``EncodedPixels`` is the Kaggle run-length encoding:

    space-separated ``start length`` pairs, **1-indexed** and **column-major** (down the first column,
    then the next). E.g. for H=3, W=4, ``"1 2 5 1"`` is pixels 0, 1 and 4 of the column-major flat
    array, i.e. ``[[1,0,0,0],[1,1,0,0],[0,0,0,0]]``. (Forgetting the -1 shifts the mask by one pixel.)

COCO's uncompressed RLE is also column-major, but it lists alternating run lengths starting with a
run of zeros. :func:`to_coco_rle` converts one into the other arithmetically, without building the
(H, W) mask (images are up to ~8700 px): ``starts 1, 5; lengths 2, 1`` -> zeros 0, ones 2, zeros 2,
ones 1, zeros 7. Records store the compressed COCO RLE, so every adapter's masks decode the same way.
:func:`rle_decode` and :func:`rle_encode` are the direct (mask-building) decoder and encoder.
"""
from __future__ import annotations

import csv
import json
import os
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np
from pycocotools import mask as coco_mask

from .categories import CategoryTable, load_category_table, resolve_category_map
from .problems import DataError, Problems, build_annotation, image_path
from .records import RecordSet

__all__ = ["rle_decode", "rle_encode", "to_coco_rle", "parse_class_id", "load_label_descriptions",
           "load_imaterialist", "CSV_COLUMNS"]

CSV_COLUMNS = ("ImageId", "EncodedPixels", "Height", "Width", "ClassId")


def _parse_runs(counts: str, height: int, width: int) -> tuple:
    """``"s1 l1 s2 l2 ..."`` -> (0-indexed starts, lengths) int64 arrays, validated against H*W."""
    if not isinstance(counts, str):
        raise ValueError(f"expected a string of 'start length' pairs, got {type(counts).__name__}")
    tokens = counts.split()
    if len(tokens) % 2:
        raise ValueError(f"odd number of values ({len(tokens)}): expected 'start length' pairs")
    try:
        values = np.array(tokens, dtype=np.int64)  # numpy parses the decimal strings
    except ValueError:
        raise ValueError("expected integers") from None
    starts, lengths = values[0::2] - 1, values[1::2]  # 1-indexed -> 0-indexed
    if (starts < 0).any():
        raise ValueError("a run starts before pixel 1 (the encoding is 1-indexed)")
    if (lengths < 1).any():
        raise ValueError("a run has length < 1")
    if starts.size and (starts + lengths).max() > height * width:
        raise ValueError(
            f"a run ends at pixel {int((starts + lengths).max())} beyond height*width = {height * width}")
    return starts, lengths


def rle_decode(counts: str, height: int, width: int) -> np.ndarray:
    """Decode iMaterialist's 1-indexed column-major RLE into a ``uint8`` (height, width) 0/1 mask.

    Raises ValueError for an odd number of values, non-integers, a start < 1, a length < 1, or a
    run beyond height * width.
    """
    starts, lengths = _parse_runs(counts, int(height), int(width))
    flat = np.zeros(int(height) * int(width), dtype=np.uint8)  # column-major flat pixels
    for start, length in zip(starts, lengths):
        flat[start:start + length] = 1
    return flat.reshape((int(height), int(width)), order="F")  # (H*W,) -> (H, W), column-major


def rle_encode(mask) -> str:
    """Encode an (H, W) binary mask as iMaterialist RLE: 1-indexed column-major ``start length`` pairs.

    An empty mask encodes to ``""``.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"rle_encode: expected an (H, W) mask, got shape {mask.shape}")
    flat = (mask != 0).reshape(-1, order="F").astype(np.int8)  # (H, W) -> (H*W,), column-major
    edges = np.diff(np.concatenate([[0], flat, [0]]))  # +1 where a run starts, -1 after it ends
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    return " ".join(f"{s + 1} {e - s}" for s, e in zip(starts, ends))


def to_coco_rle(counts: str, height: int, width: int) -> dict:
    """iMaterialist RLE -> compressed COCO RLE ``{"size": [h, w], "counts": str}``, without a mask.

    Runs are sorted and overlapping or touching runs are united first, so the result equals
    ``rle_decode`` for any valid input. Vectorized: a row of the real CSV has up to thousands of runs.
    """
    height, width = int(height), int(width)
    starts, lengths = _parse_runs(counts, height, width)
    order = np.argsort(starts, kind="stable")
    starts, ends = starts[order], (starts + lengths)[order]  # 0-indexed [start, end) runs, sorted
    if starts.size:
        # A run opens a new united run when it starts after every earlier run has ended.
        reach = np.maximum.accumulate(ends)                        # furthest end so far
        opens = np.ones(starts.size, dtype=bool)
        opens[1:] = starts[1:] > reach[:-1]
        first = np.flatnonzero(opens)
        run_starts = starts[first]
        run_ends = np.maximum.reduceat(ends, first)
        gaps = run_starts - np.concatenate([[0], run_ends[:-1]])   # zeros before each run
        coco_counts = np.stack([gaps, run_ends - run_starts], axis=1).reshape(-1)  # (R, 2) -> (2R,)
        tail = height * width - int(run_ends[-1])
    else:
        coco_counts, tail = np.zeros(0, dtype=np.int64), height * width
    coco_counts = coco_counts.tolist()
    if tail > 0 or not coco_counts:  # pycocotools writes no trailing zero run when a run ends the mask
        coco_counts.append(tail)
    rle = coco_mask.frPyObjects({"size": [height, width], "counts": coco_counts}, height, width)
    return {"size": [height, width], "counts": rle["counts"].decode("ascii")}


def parse_class_id(value: str) -> tuple:
    """``"10_20_24"`` -> ``(10, [20, 24])``; ``"3"`` -> ``(3, [])``. ValueError if not integers."""
    parts = str(value).strip().split("_")
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"expected '<category>' or '<category>_<attr>_...', got {value!r}") from None
    return numbers[0], numbers[1:]


def load_label_descriptions(path) -> CategoryTable:
    """``label_descriptions.json`` -> class table of its ``categories`` (ids 0-45 in the real file)."""
    path = str(path)
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: cannot read label descriptions: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("categories"), list):
        raise DataError(f"{path}: categories: expected a list of {{id, name}}")
    categories = []
    for i, entry in enumerate(data["categories"]):
        if not (isinstance(entry, dict) and isinstance(entry.get("id"), int)
                and isinstance(entry.get("name"), str)):
            raise DataError(f"{path}: categories[{i}]: expected {{id: int, name: str}}, got {entry!r}")
        categories.append((entry["id"], entry["name"]))
    return CategoryTable(categories, path=f"{path}: categories")


def _default_table(csv_path: str, label_descriptions) -> CategoryTable:
    """label_descriptions given, else the one beside train.csv, else the built-in 46-class table."""
    if label_descriptions:
        return load_label_descriptions(label_descriptions)
    beside = os.path.join(os.path.dirname(os.path.abspath(csv_path)), "label_descriptions.json")
    if os.path.isfile(beside):
        return load_label_descriptions(beside)
    return load_category_table("imaterialist46")


def load_imaterialist(
    annotations,
    images_dir="",
    *,
    label_descriptions=None,
    categories=None,
    drop: Iterable = (),
    merge: Optional[Mapping] = None,
    class_order: Optional[Sequence[str]] = None,
    recompute_boxes: bool = False,
    clip_boxes: bool = True,
    allow_outside_images: bool = False,
    strict: bool = False,
    problems: Optional[Problems] = None,
) -> RecordSet:
    """Read ``train.csv`` into records (one per image, in order of first appearance; ids 1..N).

    Args:
        annotations: path of ``train.csv``.
        images_dir: folder holding the ``ImageId`` files (``train/``).
        label_descriptions: path of ``label_descriptions.json`` for the class names; by default the
            one beside the CSV, else ``data/categories/imaterialist46.yaml``.
        categories: a class table that replaces the above (e.g. ``"imaterialist27"``).
        Other arguments: as ``maskrcnn.data.coco.load_coco``. Boxes come from the RLE itself
        (``pycocotools.mask.toBbox``: whole pixels), so ``recompute_boxes`` changes nothing.

    Each annotation's segmentation is a compressed COCO RLE; ``attribute_ids`` holds the ClassId's
    attributes (an empty list when it has none); ``id`` is the CSV data row number (1-based).
    """
    path = str(annotations)
    problems = problems if problems is not None else Problems.for_loading(strict)
    if not os.path.isfile(path):
        raise DataError(f"{path}: annotation file not found")
    table, category_map = resolve_category_map(
        categories, _default_table(path, label_descriptions), drop, merge, class_order)
    records = {}
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header) != CSV_COLUMNS:
            raise DataError(f"{path}: line 1: expected the header {','.join(CSV_COLUMNS)}, got {header}")
        for row_number, row in enumerate(reader, start=1):
            where = f"{path}: line {row_number + 1}"
            if len(row) != len(CSV_COLUMNS):
                problems.report(where, f"expected {len(CSV_COLUMNS)} columns, got {len(row)}")
                continue
            image_name, encoded, height, width, class_id = row
            try:
                height, width = int(height), int(width)
                if height <= 0 or width <= 0:
                    raise ValueError
            except ValueError:
                problems.report(f"{where}.Height/Width", f"expected positive ints, got {row[2]!r}, {row[3]!r}")
                continue
            record = records.get(image_name)
            if record is None:
                image_file = image_path(str(images_dir), image_name, f"{where}.ImageId", problems,
                                        allow_outside_images)
                if image_file is None:
                    continue
                record = records[image_name] = {
                    "file_name": image_file,
                    "image_id": len(records) + 1,
                    "height": height,
                    "width": width,
                    "annotations": [],
                }
            elif (record["height"], record["width"]) != (height, width):
                problems.report(f"{where}.Height/Width",
                                f"size {height}x{width} differs from an earlier row of {image_name} "
                                f"({record['height']}x{record['width']})")
                continue
            try:
                category, attributes = parse_class_id(class_id)
            except ValueError as e:
                problems.report(f"{where}.ClassId", str(e))
                continue
            try:
                rle = to_coco_rle(encoded, height, width)
            except ValueError as e:
                problems.report(f"{where}.EncodedPixels", str(e))
                continue
            box = coco_mask.toBbox({"size": rle["size"], "counts": rle["counts"].encode("ascii")})
            if box[2] <= 0:  # toBbox gives [x, y, w, h] in whole pixels; w = 0 for an empty mask
                problems.report(f"{where}.EncodedPixels", "empty mask (no run)")
                continue
            built = build_annotation(
                box=[float(v) for v in box], box_format="xywh", segmentation=rle,
                source_category=category, height=height, width=width, where=where,
                problems=problems, category_map=category_map, table_name=table.path,
                recompute_boxes=recompute_boxes, clip_boxes=clip_boxes,
                id=row_number, attribute_ids=attributes)
            if built is not None:
                record["annotations"].append(built)
    return RecordSet(list(records.values()), list(category_map.class_names), source=path)

"""The common per-image record that every dataset adapter produces, and the mask/box helpers on it.

A *record* is a plain ``dict`` describing one image and its instances, whatever the source format
(COCO JSON, the iMaterialist CSV, DeepFashion2's per-image JSON)::

    {
        "file_name": "/abs/or/images_dir-joined/path.jpg",   # str
        "image_id": 17,                                       # int, unique within a record list
        "height": 600, "width": 400,                          # int, size of the image on disk
        "annotations": [                                      # one dict per instance, may be empty
            {
                "bbox": [x1, y1, x2, y2],      # float, absolute pixels, no "+1" (width = x2 - x1)
                "category_id": 3,              # int in 1..K (0 is background), after category mapping
                "segmentation": ...,           # list of polygons [[x0, y0, x1, y1, ...], ...]
                                               # or a COCO RLE dict {"size": [h, w], "counts": str | list}
                "iscrowd": 0,                  # int 0/1 (COCO's crowd flag)
                "attribute_ids": [12, 40],     # optional: Fashionpedia / iMaterialist attributes
                "id": 5,                       # optional: the source annotation id
            },
        ],
    }

Records are plain dicts (not a class) so they pickle cheaply into DataLoader workers and print
readably. :func:`validate_record` checks one against this schema. The class names travel beside the
records in a :class:`RecordSet` (label ``k`` is ``class_names[k - 1]``; background is label 0 and has
no entry), which ``maskrcnn.data.load_dataset`` returns.

Mask and box conventions (docs/conventions.md): a box computed from a binary mask spans whole pixels,
``[x_min, y_min, x_max + 1, y_max + 1]`` of the mask's pixel indices; a polygon's box is the min/max
of its vertices. pycocotools rasterizes a polygon so that the two agree for integer vertices.
"""
from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pycocotools import mask as coco_mask

__all__ = [
    "RecordSet",
    "validate_record",
    "segmentation_to_mask",
    "segmentation_to_rle",
    "segmentation_box",
    "segmentation_area",
    "polygons_to_box",
    "mask_to_box",
    "masks_to_boxes",
    "xywh_to_xyxy",
    "polygon_error",
    "polygon_self_intersects",
    "compressed_counts",
    "rle_error",
    "clean_segmentation",
    "clean_box",
    "read_image_size",
]


@dataclass
class RecordSet:
    """Records of one dataset split plus the class names their ``category_id`` values refer to.

    Attributes:
        records: list of record dicts (see the module docstring).
        class_names: K names; label ``k`` (1..K) is ``class_names[k - 1]``; background is not listed.
        source: where the records came from (annotation file or folder), for messages.
        attribute_names, attribute_source_ids: the A attributes the model predicts and their source ids
            (``attributes.AttributeTable``; empty when ``data.attributes`` is off).
        num_duplicates: exact duplicate annotations found while loading (``maskrcnn.data.duplicates``).
    """

    records: list = field(default_factory=list)
    class_names: list = field(default_factory=list)
    source: str = ""
    attribute_names: list = field(default_factory=list)
    attribute_source_ids: list = field(default_factory=list)
    num_duplicates: int = 0

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:  # records can number hundreds of thousands: summarize them
        return f"RecordSet({len(self.records)} records, {len(self.class_names)} classes, source={self.source!r})"

    @property
    def num_classes(self) -> int:
        """K, the number of object classes (background excluded), as in ``model.num_classes``."""
        return len(self.class_names)


def xywh_to_xyxy(box) -> list:
    """COCO ``[x, y, w, h]`` -> ``[x1, y1, x2, y2]`` as floats."""
    x, y, w, h = (float(v) for v in box)
    return [x, y, x + w, y + h]


def is_number(value) -> bool:
    """An int or float (numpy scalars included), not a bool."""
    kind = type(value)
    if kind is float or kind is int:  # fast path: JSON numbers
        return True
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


# A polygon vertex may lie outside its image (annotators click past the edge), but not by more than
# this many image sides: pycocotools rasterizes at the coordinates' scale, so a coordinate such as 1e12
# crashes it and 3e8 takes tens of gigabytes. Checked before any rasterization.
POLYGON_MARGIN = 1.0


def polygon_error(polygon, height: int | None = None, width: int | None = None) -> str | None:
    """Why ``polygon`` is not a flat ``[x0, y0, x1, y1, ...]`` list of >= 3 finite points, or None if it is.

    With the image's ``height`` and ``width`` it also checks that every vertex lies within
    ``POLYGON_MARGIN`` image sides of the image: x in [-w, 2w], y in [-h, 2h] for a margin of 1.
    """
    if not isinstance(polygon, (list, tuple)) or not all(map(is_number, polygon)):
        return "expected a flat list of numbers [x0, y0, x1, y1, ...]"
    if not all(map(math.isfinite, polygon)):
        return "coordinates are not finite"
    if len(polygon) % 2:
        return f"odd number of coordinates ({len(polygon)})"
    if len(polygon) < 6:
        return f"polygon with fewer than 3 points ({len(polygon) // 2})"
    if height is not None and width is not None:
        for axis, side, values in (("x", width, polygon[0::2]), ("y", height, polygon[1::2])):
            low, high = -POLYGON_MARGIN * side, (1.0 + POLYGON_MARGIN) * side
            outside = [v for v in values if not low <= v <= high]
            if outside:
                return (f"{axis} coordinate {outside[0]:g} lies far outside the {width}x{height} image "
                        f"(allowed {low:g}..{high:g}); not rasterized")
    return None


def polygon_self_intersects(polygon) -> bool:
    """True when two non-adjacent edges of the closed polygon ``[x0, y0, x1, y1, ...]`` cross.

    pycocotools fills a crossing polygon by the even-odd rule, so a figure-eight loses the area where
    its loops overlap. Only proper crossings count (touching endpoints and collinear overlaps do not).
    """
    points = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)  # (n, 2)
    n = len(points)
    if n < 4:
        return False
    start, end = points, np.roll(points, -1, axis=0)  # edge k runs from points[k] to points[k + 1]
    i, j = np.triu_indices(n, k=2)  # pairs of edges that do not share a vertex ...
    keep = ~((i == 0) & (j == n - 1))  # ... except the first and the last, which share points[0]
    i, j = i[keep], j[keep]

    def side(a, b, c):  # sign of the cross product (b - a) x (c - a), per pair
        return np.sign((b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0]))

    p1, p2, q1, q2 = start[i], end[i], start[j], end[j]
    crossing = (side(p1, p2, q1) * side(p1, p2, q2) < 0) & (side(q1, q2, p1) * side(q1, q2, p2) < 0)
    return bool(crossing.any())


def compressed_counts(counts) -> np.ndarray:
    """Decode the run lengths of a compressed COCO RLE string (pycocotools' ``rleFrString`` format).

    Each run is a little-endian sequence of 6-bit characters (``chr(48 + value)``): 5 payload bits and a
    continuation bit (32); the last character's bit 16 is the sign. From the third run on (index > 2),
    a run is stored as the difference to the run two places before it. Vectorized with NumPy (a large
    photo's mask has tens of thousands of runs). Returns int64 ``(R,)``; raises ValueError for a character
    outside that alphabet (a non-ASCII or corrupted string) or an unterminated run.
    """
    text = counts.decode("latin-1") if isinstance(counts, bytes) else str(counts)
    if not text.isascii():
        position = next(i for i, char in enumerate(text) if not char.isascii())
        raise ValueError(f"character {text[position]!r} at position {position} is not part of the compressed "
                         f"RLE alphabet (chr(48)..chr(111))")
    codes = np.frombuffer(text.encode("ascii"), dtype=np.uint8).astype(np.int64) - 48  # (L,)
    bad = np.flatnonzero((codes < 0) | (codes > 63))
    if bad.size:
        position = int(bad[0])
        raise ValueError(f"character {text[position]!r} at position {position} is not part of the compressed "
                         f"RLE alphabet (chr(48)..chr(111))")
    if codes.size == 0:
        return np.zeros(0, dtype=np.int64)
    last = (codes & 0x20) == 0  # (L,) the character that ends its run
    if not last[-1]:
        raise ValueError("the string ends in the middle of a run")
    ends = np.flatnonzero(last)  # (R,) position of each run's last character
    starts = np.concatenate([[0], ends[:-1] + 1])  # (R,)
    digit = np.arange(codes.size) - np.repeat(starts, ends - starts + 1)  # (L,) k-th character of its run
    values = np.add.reduceat((codes & 0x1F) << (5 * digit), starts)  # (R,)
    negative = (codes[ends] & 0x10) != 0
    values[negative] -= np.left_shift(1, 5 * (ends - starts + 1))[negative]  # sign-extend
    # run m > 2 is stored relative to run m - 2: cumulative sums along the odd and the even runs from 1 and 2
    values[1::2] = np.cumsum(values[1::2])
    values[2::2] = np.cumsum(values[2::2])
    return values


def rle_error(rle, height: int, width: int) -> str | None:
    """Why ``rle`` is not a COCO RLE dict of size (height, width) (as "field: reason"), or None if it is.

    The runs must be non-negative and sum to height * width: a compressed RLE whose runs overflow its
    size would otherwise decode into pixels outside the image (and a box far outside it).
    """
    size, counts = rle.get("size"), rle.get("counts")
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(is_number(v) for v in size)):
        return f"size: expected [height, width], got {size!r}"
    if [int(size[0]), int(size[1])] != [int(height), int(width)]:
        return f"size: RLE of the wrong size {list(size)}, the image is [{height}, {width}]"
    if isinstance(counts, list):
        if not all(isinstance(c, numbers.Integral) and not isinstance(c, bool) and c >= 0 for c in counts):
            return "counts: expected non-negative integers"
        runs = counts
    elif isinstance(counts, (str, bytes)):
        try:
            runs = compressed_counts(counts)
        except ValueError as e:
            return f"counts: not a compressed RLE string: {e}"
        if (runs < 0).any():
            return "counts: a run has negative length (corrupted string)"
    else:
        return "counts: expected a string (compressed) or a list (uncompressed)"
    total = int(sum(runs)) if isinstance(runs, list) else int(runs.sum())
    if total != height * width:
        verb = "overflow" if total > height * width else "fall short of"
        return f"counts: runs sum to {total} pixels and {verb} the image's height*width = {height * width}"
    return None


def _check_polygons(polygons, where: str, height: int | None = None, width: int | None = None) -> None:
    """Raise ValueError unless ``polygons`` is a non-empty list of flat [x, y, ...] lists of >= 3 points
    (within ``POLYGON_MARGIN`` of the image when its size is given)."""
    if not isinstance(polygons, list) or not polygons:
        raise ValueError(f"{where}: expected a non-empty list of polygons")
    for i, polygon in enumerate(polygons):
        error = polygon_error(polygon, height, width)
        if error:
            raise ValueError(f"{where}[{i}]: {error}")


def _check_rle(rle: dict, height: int, width: int, where: str) -> None:
    """Raise ValueError unless ``rle`` is a COCO RLE dict of size (height, width)."""
    error = rle_error(rle, height, width)
    if error:
        raise ValueError(f"{where}.{error}")


def _to_rle(segmentation, height: int, width: int, where: str) -> dict:
    """Any supported segmentation -> one compressed pycocotools RLE (counts as bytes)."""
    if isinstance(segmentation, dict):
        _check_rle(segmentation, height, width, where)
        counts = segmentation["counts"]
        if isinstance(counts, list):  # uncompressed RLE -> compressed
            return coco_mask.frPyObjects(segmentation, height, width)
        if isinstance(counts, str):
            counts = counts.encode("ascii")
        return {"size": [int(height), int(width)], "counts": counts}
    _check_polygons(segmentation, where, height, width)  # before pycocotools sees a coordinate
    # Note: pycocotools would read a 4-number "polygon" as a box; _check_polygons rules that out.
    rles = coco_mask.frPyObjects([list(map(float, p)) for p in segmentation], height, width)
    return coco_mask.merge(rles)


def segmentation_to_rle(segmentation, height: int, width: int, where: str = "segmentation") -> dict:
    """Any record segmentation -> one compressed pycocotools RLE dict (``counts`` as bytes).

    Cheaper than a mask for area and box: ``pycocotools.mask.area`` / ``toBbox`` work on the runs.
    Raises ValueError naming ``where`` for malformed input (see :func:`segmentation_to_mask`).
    """
    return _to_rle(segmentation, int(height), int(width), where)


def segmentation_box(segmentation, height: int, width: int, where: str = "segmentation") -> list:
    """Whole-pixel ``[x1, y1, x2, y2]`` of a segmentation's rasterized mask, computed from its RLE.

    Equals ``mask_to_box(segmentation_to_mask(...))`` without building the (H, W) mask; an empty
    mask gives ``[0, 0, 0, 0]``.
    """
    x, y, w, h = (float(v) for v in coco_mask.toBbox(segmentation_to_rle(segmentation, height, width, where)))
    return [x, y, x + w, y + h] if w > 0 else [0.0, 0.0, 0.0, 0.0]


def segmentation_to_mask(segmentation, height: int, width: int, where: str = "segmentation") -> np.ndarray:
    """Rasterize a record's segmentation into a binary mask.

    Args:
        segmentation: list of polygons ``[[x0, y0, x1, y1, ...], ...]`` (pixel coordinates, each with at
            least 3 points), a compressed COCO RLE ``{"size": [h, w], "counts": str | bytes}``, or an
            uncompressed one ``{"size": [h, w], "counts": [int, ...]}`` (column-major runs, zeros first).
        height, width: size of the image the segmentation belongs to.
        where: names the field in error messages, e.g. ``"modanet.json: annotations[3].segmentation"``.

    Returns:
        ``uint8`` array of shape (height, width) with values 0/1. Several polygons are unioned.

    Raises:
        ValueError naming ``where`` for malformed input: fewer than 3 points, an odd coordinate count,
        an RLE whose size differs from (height, width) or whose runs do not sum to height * width.
    """
    rle = _to_rle(segmentation, int(height), int(width), where)
    with warnings.catch_warnings():
        # pycocotools' Cython decoder trips a NumPy 2 DeprecationWarning about __array__(copy=...);
        # harmless, and outside our control.
        warnings.filterwarnings("ignore", message="__array__ implementation", category=DeprecationWarning)
        mask = coco_mask.decode(rle)  # (H, W) uint8, Fortran-ordered
    return np.ascontiguousarray(mask, dtype=np.uint8)


def segmentation_area(segmentation, height: int, width: int, where: str = "segmentation") -> int:
    """Number of foreground pixels of a segmentation (the mask area, as COCO's ``area`` should be)."""
    return int(coco_mask.area(_to_rle(segmentation, int(height), int(width), where)))


def polygons_to_box(polygons, where: str = "segmentation") -> list:
    """Tight ``[x1, y1, x2, y2]`` (floats) around all vertices of a list of polygons."""
    _check_polygons(polygons, where)
    xs = [float(v) for p in polygons for v in p[0::2]]
    ys = [float(v) for p in polygons for v in p[1::2]]
    return [min(xs), min(ys), max(xs), max(ys)]


def mask_to_box(mask) -> np.ndarray:
    """Whole-pixel box of a binary mask: ``[x_min, y_min, x_max + 1, y_max + 1]`` as float32 (4,).

    ``mask`` is an (H, W) array (numpy or torch), nonzero = foreground. An empty mask gives
    ``[0, 0, 0, 0]`` (a degenerate box that callers drop).
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask_to_box: expected an (H, W) mask, got shape {mask.shape}")
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return np.zeros(4, dtype=np.float32)
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float32)


def masks_to_boxes(masks):
    """Whole-pixel boxes of a stack of masks, (N, H, W) -> (N, 4) float32, same rule as mask_to_box.

    Accepts a torch tensor (returns a torch tensor on the same device) or a numpy array (returns
    numpy). Empty masks give ``[0, 0, 0, 0]``.
    """
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        torch = None
    if torch is not None and isinstance(masks, torch.Tensor):
        if masks.dim() != 3:
            raise ValueError(f"masks_to_boxes: expected (N, H, W) masks, got shape {tuple(masks.shape)}")
        n, h, w = masks.shape
        fg = masks != 0
        rows_any = fg.any(dim=2)  # (N, H)
        cols_any = fg.any(dim=1)  # (N, W)
        ys = torch.arange(h, device=masks.device)
        xs = torch.arange(w, device=masks.device)
        big = max(h, w) + 1
        y1 = torch.where(rows_any, ys, big).amin(dim=1) if h else torch.zeros(n, device=masks.device)
        y2 = torch.where(rows_any, ys, -1).amax(dim=1) + 1 if h else torch.zeros(n, device=masks.device)
        x1 = torch.where(cols_any, xs, big).amin(dim=1) if w else torch.zeros(n, device=masks.device)
        x2 = torch.where(cols_any, xs, -1).amax(dim=1) + 1 if w else torch.zeros(n, device=masks.device)
        boxes = torch.stack([x1, y1, x2, y2], dim=1).to(torch.float32)  # (N, 4)
        empty = ~rows_any.any(dim=1) if h else torch.ones(n, dtype=torch.bool, device=masks.device)
        boxes[empty] = 0
        return boxes
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks_to_boxes: expected (N, H, W) masks, got shape {masks.shape}")
    return np.stack([mask_to_box(m) for m in masks]).astype(np.float32) if len(masks) else (
        np.zeros((0, 4), dtype=np.float32))


def validate_record(record: Any, where: str = "record") -> None:
    """Check one record against the schema in the module docstring; raise ValueError naming the field.

    Checks types and required keys, that ``height``/``width`` are positive, that every box has 4
    finite numbers with x2 > x1 and y2 > y1, that ``category_id`` is an int >= 1, and that each
    segmentation is well formed for the record's size (polygons of >= 3 points, RLE of the right size).
    It does not open the image file.
    """
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a dict, got {type(record).__name__}")
    for key in ("file_name", "image_id", "height", "width", "annotations"):
        if key not in record:
            raise ValueError(f"{where}.{key}: missing")
    if not isinstance(record["file_name"], str) or not record["file_name"]:
        raise ValueError(f"{where}.file_name: expected a non-empty string")
    if not isinstance(record["image_id"], numbers.Integral) or isinstance(record["image_id"], bool):
        raise ValueError(f"{where}.image_id: expected an int, got {record['image_id']!r}")
    for key in ("height", "width"):
        value = record[key]
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{where}.{key}: expected a positive int, got {value!r}")
    if not isinstance(record["annotations"], list):
        raise ValueError(f"{where}.annotations: expected a list")
    height, width = record["height"], record["width"]
    for i, ann in enumerate(record["annotations"]):
        at = f"{where}.annotations[{i}]"
        if not isinstance(ann, dict):
            raise ValueError(f"{at}: expected a dict")
        for key in ("bbox", "category_id", "segmentation", "iscrowd"):
            if key not in ann:
                raise ValueError(f"{at}.{key}: missing")
        box = ann["bbox"]
        if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(is_number(v) for v in box):
            raise ValueError(f"{at}.bbox: expected 4 numbers [x1, y1, x2, y2], got {box!r}")
        if not all(np.isfinite(float(v)) for v in box):
            raise ValueError(f"{at}.bbox: not finite: {box!r}")
        if not (box[2] > box[0] and box[3] > box[1]):
            raise ValueError(f"{at}.bbox: degenerate box {list(box)} (needs x2 > x1 and y2 > y1)")
        cat = ann["category_id"]
        if not isinstance(cat, numbers.Integral) or isinstance(cat, bool) or cat < 1:
            raise ValueError(f"{at}.category_id: expected an int >= 1 (0 is background), got {cat!r}")
        if ann["iscrowd"] not in (0, 1):
            raise ValueError(f"{at}.iscrowd: expected 0 or 1, got {ann['iscrowd']!r}")
        seg = ann["segmentation"]
        if isinstance(seg, dict):
            _check_rle(seg, height, width, f"{at}.segmentation")
        else:
            _check_polygons(seg, f"{at}.segmentation", height, width)


# EXIF orientations 5-8 rotate the picture by 90 degrees, so the displayed size is (width, height).
_EXIF_ORIENTATION_TAG = 0x0112
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)


def read_image_size(path) -> tuple:
    """``(height, width)`` of an image file as displayed, i.e. after its EXIF orientation is applied.

    Reads only the file header (Pillow opens lazily). Raises OSError/``PIL.UnidentifiedImageError``
    for a missing or undecodable file.
    """
    from PIL import Image

    with Image.open(path) as image:
        width, height = image.size
        orientation = image.getexif().get(_EXIF_ORIENTATION_TAG, 1)
    if orientation in _TRANSPOSING_ORIENTATIONS:
        width, height = height, width
    return int(height), int(width)


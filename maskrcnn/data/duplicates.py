"""Exact duplicate annotations: the same class and the same mask, or the same box, twice in one image.

Real files have them: in ModaNet the two annotations of a pair of shoes (``footwear`` or ``boots``) often
carry the identical two-shoe segmentation, and once ``recompute_boxes`` replaces their boxes by the mask's
box they are one object annotated twice. A duplicate ground truth is harmful in evaluation (one detection
can match only one of the two, so the other counts as a miss) and double-weights the object in training.

Two annotations of one image are *exact duplicates* when they have the same ``category_id`` and either

- the same segmentation (the same polygon coordinates in the same order, or the same RLE), or
- the same box (all four numbers equal).

The later one (in file order) is the duplicate of the earlier one. Near-duplicates (a polygon shifted by
a pixel) are not touched: telling them from two garments side by side needs a judgement this module does
not make.

    pairs = find_duplicates(record["annotations"])     # [(duplicate index, original index, "mask"), ...]
"""
from __future__ import annotations

import json

__all__ = ["find_duplicates", "remove_duplicates"]


def _segmentation_key(segmentation) -> str:
    """A hashable, exact description of a segmentation (polygons as floats, RLE as its counts)."""
    if isinstance(segmentation, dict):
        counts = segmentation.get("counts")
        counts = counts.decode("ascii", "replace") if isinstance(counts, bytes) else counts
        return json.dumps({"size": list(segmentation.get("size", [])), "counts": counts})
    return json.dumps([[float(v) for v in polygon] for polygon in segmentation])


def find_duplicates(annotations: list) -> list:
    """``[(index, original_index, "mask" | "box"), ...]`` for each annotation that exactly duplicates an
    earlier one of the same image (same ``category_id`` and the same segmentation or the same ``bbox``).

    ``annotations`` are record annotations (``maskrcnn.data.records``); indices are positions in the list.
    """
    seen_masks, seen_boxes, pairs = {}, {}, []
    for index, ann in enumerate(annotations):
        category = ann["category_id"]
        mask_key = (category, _segmentation_key(ann["segmentation"]))
        box_key = (category, tuple(float(v) for v in ann["bbox"]))
        if mask_key in seen_masks:
            pairs.append((index, seen_masks[mask_key], "mask"))
        elif box_key in seen_boxes:
            pairs.append((index, seen_boxes[box_key], "box"))
        else:
            seen_masks[mask_key] = index
            seen_boxes[box_key] = index
    return pairs


def remove_duplicates(annotations: list, pairs: list) -> list:
    """``annotations`` without the duplicates named in ``pairs`` (from :func:`find_duplicates`), in order."""
    dropped = {index for index, _, _ in pairs}
    return [ann for index, ann in enumerate(annotations) if index not in dropped]


def drop_duplicate_annotations(records: list, positions: dict, source: str, class_names: list, problems,
                               drop: bool = True) -> int:
    """Find the exact duplicates of every record; drop them (``drop``) and say so; return their number.

    Args:
        records: record dicts, changed in place when ``drop``.
        positions: ``{image_id: [index in the source file of each record annotation]}``, for messages
            such as ``modanet.json: annotations[5]: exact duplicate of annotations[4]``.
        source: the annotation file, for messages.
        problems: a ``maskrcnn.data.problems.Problems``. The dataset checker (``"collect"`` mode) gets one
            problem per duplicate; loading for training gets one summary ``DataWarning`` with the count.
    """
    import warnings

    from .problems import DataWarning

    found = []
    for record in records:
        pairs = find_duplicates(record["annotations"])
        if not pairs:
            continue
        where_of = positions.get(record["image_id"], list(range(len(record["annotations"]))))
        for index, original, kind in pairs:
            name = class_names[record["annotations"][index]["category_id"] - 1]
            found.append((f"{source}: annotations[{where_of[index]}]",
                          f"exact duplicate of annotations[{where_of[original]}] (same class {name!r} and "
                          f"the same {kind})"))
        if drop:
            record["annotations"] = remove_duplicates(record["annotations"], pairs)
            if record["image_id"] in positions:
                dropped = {index for index, _, _ in pairs}
                positions[record["image_id"]] = [p for i, p in enumerate(where_of) if i not in dropped]
    if not found:
        return 0
    action = "dropped" if drop else "kept (data.drop_duplicates=false)"
    if problems.mode == "collect":
        for where, message in found:
            problems.report(where, message, action=action)
    else:
        warnings.warn(f"{source}: {len(found)} exact duplicate annotation(s) {action}: the same class and the "
                      f"same mask or box as another annotation of the same image; first: {found[0][0]}: "
                      f"{found[0][1]}", DataWarning, stacklevel=3)
    return len(found)

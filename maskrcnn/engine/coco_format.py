"""Converting ground truth and predictions into the COCO format that pycocotools evaluates.

Ground truth arrives either as a COCO dict (``{images, annotations, categories}``, boxes ``[x, y, w, h]``)
or as the project's records (``maskrcnn.data``; boxes ``[x1, y1, x2, y2]``):

    {file_name, image_id, height, width,
     annotations: [{bbox [x1, y1, x2, y2], category_id 1..K, segmentation (polygons | RLE), iscrowd}]}

Predictions arrive as the model's eval output, one dict per image, plus the image's id:

    {image_id, boxes (N, 4) float xyxy in original pixels, labels (N,) int64 1..K, scores (N,),
     masks (N, 1, H, W) float probabilities}                 (masks optional: box-only evaluation)

and are *encoded* per image into compact plain data before anything else (gathering across ranks,
evaluation, confusion matrix): boxes, labels and scores as lists, masks thresholded (``> 0.5``) and
run-length encoded by pycocotools, ``{"size": [H, W], "counts": str}``. A model with an attribute head
(``model.num_attributes = A``) adds ``attribute_scores (N, A)``, kept as one list of A probabilities per
detection.

Attributes in a COCO results entry (:func:`attribute_fields`) are what Fashionpedia's evaluation reads:
``"attribute_ids"``, the *source* ids (the dataset's own, e.g. Fashionpedia's 0..293; column ``a`` of the
model is source id ``model.attribute_source_ids[a]``) of the attributes scoring at least
``infer.attribute_thresh``, best first, and ``"attribute_scores"``, their scores in the same order.

Conventions: category ids are the model's labels, 1..K (0 is background and never a category). COCO
boxes are ``[x, y, w, h]`` in pixels; an annotation's ``area`` is its mask area when it has a mask
(COCO's definition, which decides the small/medium/large buckets), else its box area. pycocotools
treats a ground-truth annotation id of 0 as "unmatched", so ids are always renumbered 1..N.
"""
from __future__ import annotations

import copy
from typing import Any, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from pycocotools import mask as mask_utils


# ----------------------------------------------------------------------------------------------
# Segmentations
# ----------------------------------------------------------------------------------------------
def segmentation_to_rle(segmentation: Any, height: int, width: int) -> dict:
    """One compressed RLE for a segmentation given as polygons, uncompressed RLE or compressed RLE.

    Polygons are ``[[x1, y1, x2, y2, ...], ...]`` (several parts are merged into one mask).
    """
    if isinstance(segmentation, list):
        if not segmentation:
            raise ValueError("segmentation is an empty polygon list")
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation, Mapping) and "counts" in segmentation and "size" in segmentation:
        if list(segmentation["size"]) != [height, width]:
            raise ValueError(f"RLE of size {list(segmentation['size'])} on an image of size {[height, width]}")
        if isinstance(segmentation["counts"], list):  # uncompressed
            return mask_utils.frPyObjects(dict(segmentation), height, width)
        return dict(segmentation)
    raise ValueError(f"segmentation must be polygons (list) or an RLE dict, got {type(segmentation).__name__}")


def _rle_counts_to_str(rle: dict) -> dict:
    """Compressed RLE with ``counts`` as ``str`` (JSON-able and picklable)."""
    counts = rle["counts"]
    return {"size": [int(v) for v in rle["size"]], "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def encode_masks(masks: Any, threshold: float = 0.5) -> List[dict]:
    """``(N, 1, H, W)`` or ``(N, H, W)`` probabilities -> N compressed RLEs of ``masks > threshold``."""
    masks = torch.as_tensor(masks)
    if masks.dim() == 4:
        if masks.shape[1] != 1:
            raise ValueError(f"masks: expected shape (N, 1, H, W), got {tuple(masks.shape)}")
        masks = masks[:, 0]  # (N, 1, H, W) -> (N, H, W)
    if masks.dim() != 3:
        raise ValueError(f"masks: expected shape (N, 1, H, W) or (N, H, W), got {tuple(masks.shape)}")
    binary = (masks > threshold).to(torch.uint8).cpu().numpy()
    # pycocotools wants a Fortran-ordered (H, W, N) uint8 array: (N, H, W) -> (H, W, N)
    binary = np.asfortranarray(binary.transpose(1, 2, 0))
    return [_rle_counts_to_str(r) for r in mask_utils.encode(binary)]


# ----------------------------------------------------------------------------------------------
# Ground truth
# ----------------------------------------------------------------------------------------------
def records_to_coco(records: Sequence[Mapping], class_names: Sequence[str]) -> dict:
    """Records (xyxy boxes, labels 1..K) -> a COCO ground-truth dict with categories ``1..K``.

    Annotation ids are 1..N in record order; ``area`` is the mask area (or the box area without a
    segmentation). Raises ``ValueError`` naming the record and field for malformed input.
    """
    images, annotations = [], []
    seen_ids = set()
    num_classes = len(class_names)
    for index, record in enumerate(records):
        where = f"records[{index}]"
        for field in ("image_id", "height", "width", "annotations"):
            if field not in record:
                raise ValueError(f"{where}: missing field {field!r}")
        image_id = int(record["image_id"])
        if image_id in seen_ids:
            raise ValueError(f"{where}: duplicate image_id {image_id}")
        seen_ids.add(image_id)
        height, width = int(record["height"]), int(record["width"])
        images.append({"id": image_id, "file_name": record.get("file_name", ""), "height": height, "width": width})
        for j, ann in enumerate(record["annotations"]):
            there = f"{where}.annotations[{j}]"
            label = int(ann["category_id"])
            if not 1 <= label <= num_classes:
                raise ValueError(f"{there}: category_id {label} outside 1..{num_classes}")
            x1, y1, x2, y2 = (float(v) for v in ann["bbox"])
            if x2 < x1 or y2 < y1:
                raise ValueError(f"{there}: bbox {list(ann['bbox'])} is not [x1, y1, x2, y2] with x2>=x1, y2>=y1")
            coco_ann = {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": label,
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "iscrowd": int(ann.get("iscrowd", 0)),
            }
            segmentation = ann.get("segmentation")
            if segmentation:
                rle = segmentation_to_rle(segmentation, height, width)
                coco_ann["segmentation"] = segmentation if isinstance(segmentation, list) else _rle_counts_to_str(rle)
                coco_ann["area"] = float(mask_utils.area(rle))
            else:
                coco_ann["area"] = (x2 - x1) * (y2 - y1)
            annotations.append(coco_ann)
    categories = [{"id": i + 1, "name": str(name)} for i, name in enumerate(class_names)]
    return {"images": images, "annotations": annotations, "categories": categories}


def prepare_coco_ground_truth(coco: Mapping) -> dict:
    """A checked deep copy of a COCO ground-truth dict, ready for pycocotools.

    Annotation ids are renumbered 1..N (an id of 0 breaks COCOeval's matching, see docs/conventions.md on
    ModaNet); a missing ``iscrowd`` becomes 0; a missing ``area`` becomes the mask area (or the box
    area). Category ids must be 1..K: the model's labels.
    """
    for field in ("images", "annotations", "categories"):
        if field not in coco:
            raise ValueError(f"ground truth: missing field {field!r} (expected a COCO dict)")
    gt = {"images": copy.deepcopy(list(coco["images"])), "categories": copy.deepcopy(list(coco["categories"]))}
    images = {}
    for image in gt["images"]:
        for field in ("id", "height", "width"):
            if field not in image:
                raise ValueError(f"ground truth: image {image.get('id', '?')} has no {field!r}")
        images[image["id"]] = image
    category_ids = sorted(c["id"] for c in gt["categories"])
    if category_ids != list(range(1, len(category_ids) + 1)):
        raise ValueError(
            f"ground truth: category ids must be 1..K (the model's labels), got {category_ids[:10]}; "
            "remap them when loading the dataset"
        )
    annotations = []
    for index, source in enumerate(coco["annotations"]):
        ann = copy.deepcopy(dict(source))
        if ann.get("image_id") not in images:
            raise ValueError(f"ground truth: annotations[{index}] names unknown image_id {ann.get('image_id')!r}")
        if ann.get("category_id") not in category_ids:
            raise ValueError(f"ground truth: annotations[{index}] has unknown category_id {ann.get('category_id')!r}")
        if "bbox" not in ann or len(ann["bbox"]) != 4:
            raise ValueError(f"ground truth: annotations[{index}] needs a bbox [x, y, w, h]")
        ann["id"] = index + 1
        ann["iscrowd"] = int(ann.get("iscrowd", 0))
        if "area" not in ann:
            if ann.get("segmentation"):
                image = images[ann["image_id"]]
                rle = segmentation_to_rle(ann["segmentation"], image["height"], image["width"])
                ann["area"] = float(mask_utils.area(rle))
            else:
                ann["area"] = float(ann["bbox"][2] * ann["bbox"][3])
        annotations.append(ann)
    gt["annotations"] = annotations
    return gt


# ----------------------------------------------------------------------------------------------
# Predictions
# ----------------------------------------------------------------------------------------------
def encode_prediction(prediction: Mapping, mask_threshold: float = 0.5) -> dict:
    """One image's model output -> ``{image_id, boxes, labels, scores, masks}`` as plain lists.

    ``boxes`` stay ``[x1, y1, x2, y2]``; ``masks`` becomes a list of compressed RLEs (``None`` when the
    prediction has no masks). An already encoded prediction is returned unchanged.
    """
    if prediction.get("encoded"):
        return dict(prediction)
    if "image_id" not in prediction:
        raise ValueError("prediction: missing 'image_id' (add the image's id to the model's output dict)")
    boxes = torch.as_tensor(prediction["boxes"]).detach().float().cpu().reshape(-1, 4)
    labels = torch.as_tensor(prediction["labels"]).detach().cpu().reshape(-1)
    scores = torch.as_tensor(prediction["scores"]).detach().float().cpu().reshape(-1)
    n = boxes.shape[0]
    if labels.shape[0] != n or scores.shape[0] != n:
        raise ValueError(
            f"prediction for image {prediction['image_id']}: {n} boxes but {labels.shape[0]} labels "
            f"and {scores.shape[0]} scores"
        )
    masks = prediction.get("masks")
    rles: Optional[List[dict]] = None
    if masks is not None:
        masks = torch.as_tensor(masks).detach()
        if masks.shape[0] != n:
            raise ValueError(f"prediction for image {prediction['image_id']}: {n} boxes but {masks.shape[0]} masks")
        rles = encode_masks(masks, mask_threshold) if n > 0 else []
    encoded = {
        "encoded": True,
        "image_id": int(prediction["image_id"]),
        "boxes": boxes.tolist(),
        "labels": [int(v) for v in labels.tolist()],
        "scores": scores.tolist(),
        "masks": rles,
    }
    if prediction.get("attribute_scores") is not None:  # (n, A) with an attribute head: one row per detection
        encoded["attribute_scores"] = torch.as_tensor(prediction["attribute_scores"]).detach().float().cpu().tolist()
    return encoded


def attributes_above(scores: Sequence[float], threshold: float) -> List[Tuple[int, float]]:
    """``(column a, score)`` of the attributes scoring at least ``threshold``, best first (ties: lower ``a`` first).

    ``scores`` are one detection's ``A`` attribute probabilities (a row of ``attribute_scores``).
    """
    kept = [(a, float(score)) for a, score in enumerate(scores) if score >= threshold]
    return sorted(kept, key=lambda pair: (-pair[1], pair[0]))


def attribute_fields(scores: Sequence[float], source_ids: Sequence[int], threshold: float) -> dict:
    """``{"attribute_ids": [source ids], "attribute_scores": [scores]}`` of one detection (module docstring).

    ``scores``: the detection's ``A`` attribute probabilities; ``source_ids``: the ``A`` source ids, column
    order (``model.attribute_source_ids``; empty = the columns' own positions ``0..A-1``).
    """
    source_ids = list(source_ids) or list(range(len(scores)))
    if len(source_ids) != len(scores):
        raise ValueError(f"model.attribute_source_ids names {len(source_ids)} attributes, but the model scores "
                         f"{len(scores)}")
    kept = attributes_above(scores, threshold)
    return {"attribute_ids": [int(source_ids[a]) for a, _ in kept], "attribute_scores": [s for _, s in kept]}


def coco_results(encoded: Sequence[Mapping], iou_type: str) -> List[dict]:
    """Encoded predictions -> COCO result entries for ``iou_type`` ``'bbox'`` or ``'segm'``.

    ``bbox`` entries carry ``bbox [x, y, w, h]`` and the box area; ``segm`` entries carry the RLE and
    the mask area (pycocotools would otherwise take the box area for both, shifting the size buckets).
    """
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type={iou_type!r}: choose 'bbox' or 'segm'")
    results = []
    for pred in encoded:
        if iou_type == "segm" and pred["masks"] is None:
            raise ValueError(
                f"prediction for image {pred['image_id']} has no masks: evaluate with iou_types=['bbox']"
            )
        for i, (box, label, score) in enumerate(zip(pred["boxes"], pred["labels"], pred["scores"])):
            x1, y1, x2, y2 = box
            entry = {"image_id": pred["image_id"], "category_id": label, "score": float(score)}
            if iou_type == "bbox":
                entry["bbox"] = [x1, y1, x2 - x1, y2 - y1]
                entry["area"] = (x2 - x1) * (y2 - y1)
            else:
                entry["segmentation"] = pred["masks"][i]
                entry["area"] = float(mask_utils.area(pred["masks"][i]))
            results.append(entry)
    return results

"""The confusion matrix of a detector, with a background row and column.

COCO AP says how good the ranking is; the confusion matrix says *what goes wrong* at one operating
point: which classes are mistaken for which, which objects are missed, which detections are spurious.

    matrix[t, p]   t = true class, p = predicted class, both in 0..K with 0 = background:
    matrix[t, p]   t, p >= 1   an object of class t detected as class p (the diagonal is correct)
    matrix[t, 0]   t >= 1      an object of class t that no detection matched (a miss)
    matrix[0, p]   p >= 1      a detection of class p that matched no object (a false positive)
    matrix[0, 0]               always 0 (background detected as background is not counted)

Matching rule, per image (class-agnostic, greedy by score, as in YOLO-style confusion matrices):

1. keep the detections with ``score >= score_thresh``, sorted by decreasing score (ties keep their order);
2. each detection in turn takes the not-yet-matched, non-crowd ground-truth object it overlaps most,
   if that IoU is ``>= iou_thresh`` (ties go to the first object); the pair counts in
   ``matrix[object class, detection class]``, whatever the two classes are;
3. a detection left unmatched counts in ``matrix[0, class]``, unless it lies on a crowd region
   (intersection over the detection's own area ``>= iou_thresh``, COCO's crowd rule), then it is ignored;
4. every non-crowd object left unmatched counts in ``matrix[class, 0]``.

IoU is between boxes (``iou_type='bbox'``) or masks (``'segm'``), computed by pycocotools.
"""
from __future__ import annotations

from collections import defaultdict
from typing import List, Mapping, Sequence

import numpy as np
from pycocotools import mask as mask_utils

from maskrcnn.engine.coco_format import segmentation_to_rle


def confusion_matrix(
    ground_truth: Mapping,
    predictions: Sequence[Mapping],
    num_classes: int,
    iou_thresh: float = 0.5,
    score_thresh: float = 0.5,
    iou_type: str = "bbox",
) -> np.ndarray:
    """``(K + 1, K + 1)`` int64 counts: rows are true classes, columns predicted, index 0 background.

    Args:
        ground_truth: a prepared COCO dict (``coco_format.prepare_coco_ground_truth``).
        predictions: encoded predictions (``coco_format.encode_prediction``), one per image; images
            without a prediction count all their objects as missed.
        num_classes: K, the number of object classes.
        iou_type: ``'bbox'`` or ``'segm'`` (then every annotation needs a segmentation and every
            prediction masks).
    """
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type={iou_type!r}: choose 'bbox' or 'segm'")
    images = {image["id"]: image for image in ground_truth["images"]}
    objects = defaultdict(list)  # image id -> its annotations
    for ann in ground_truth["annotations"]:
        objects[ann["image_id"]].append(ann)
    by_image = {}
    for pred in predictions:
        if pred["image_id"] not in images:
            raise ValueError(f"prediction names image_id {pred['image_id']}, which the ground truth does not have")
        by_image[pred["image_id"]] = pred

    matrix = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
    for image_id, image in images.items():
        anns = objects.get(image_id, [])
        pred = by_image.get(image_id)
        _match_image(matrix, image, anns, pred, num_classes, iou_thresh, score_thresh, iou_type)
    return matrix


def _match_image(matrix, image, anns, pred, num_classes, iou_thresh, score_thresh, iou_type) -> None:
    """Add one image's matches to ``matrix`` (see the module docstring for the rule)."""
    for ann in anns:
        if not 1 <= ann["category_id"] <= num_classes:
            raise ValueError(f"annotation {ann['id']}: category_id {ann['category_id']} outside 1..{num_classes}")
    regular = [a for a in anns if not a.get("iscrowd", 0)]
    crowd = [a for a in anns if a.get("iscrowd", 0)]
    if pred is None:
        kept: List[int] = []
    else:
        if iou_type == "segm" and pred["masks"] is None:
            raise ValueError(f"prediction for image {image['id']} has no masks: use iou_type='bbox'")
        kept = [i for i, s in enumerate(pred["scores"]) if s >= score_thresh]
        kept.sort(key=lambda i: -pred["scores"][i])  # stable: equal scores keep their order

    def gt_regions(group):  # pycocotools' input: [x, y, w, h] boxes or RLEs
        if iou_type == "bbox":
            return [[float(v) for v in a["bbox"]] for a in group]
        return [segmentation_to_rle(a["segmentation"], image["height"], image["width"]) for a in group]

    if kept:
        if iou_type == "bbox":
            corners = [pred["boxes"][i] for i in kept]
            det_regions = [[x1, y1, x2 - x1, y2 - y1] for x1, y1, x2, y2 in corners]
        else:
            det_regions = [pred["masks"][i] for i in kept]
        # (D, G) IoU of kept detections against regular objects; (D, C) coverage of crowd regions
        ious = np.asarray(mask_utils.iou(det_regions, gt_regions(regular), [0] * len(regular))).reshape(len(kept), len(regular))
        on_crowd = np.asarray(mask_utils.iou(det_regions, gt_regions(crowd), [1] * len(crowd))).reshape(len(kept), len(crowd))
    matched = np.zeros(len(regular), dtype=bool)
    for d, index in enumerate(kept):
        label = int(pred["labels"][index])
        if not 1 <= label <= num_classes:
            raise ValueError(f"prediction for image {image['id']}: label {label} outside 1..{num_classes}")
        candidates = np.where(matched, -1.0, ious[d]) if regular else np.zeros(0)
        best = int(np.argmax(candidates)) if len(candidates) else -1
        if best >= 0 and candidates[best] >= iou_thresh:
            matched[best] = True
            matrix[regular[best]["category_id"], label] += 1
        elif crowd and on_crowd[d].max() >= iou_thresh:
            continue  # on a crowd region: neither right nor wrong
        else:
            matrix[0, label] += 1
    for ann, was_matched in zip(regular, matched):
        if not was_matched:
            matrix[ann["category_id"], 0] += 1


def normalize_rows(matrix: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (the fraction of a true class that went to each prediction);
    rows with no entries stay 0."""
    sums = matrix.sum(axis=1, keepdims=True).astype(np.float64)
    return np.divide(matrix, sums, out=np.zeros(matrix.shape, dtype=np.float64), where=sums > 0)

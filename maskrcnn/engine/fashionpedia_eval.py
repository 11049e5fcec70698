"""Fashionpedia's "AP with attributes" (``AP_IoU+F1``): a detection is a true positive only when its class,
its mask (or box) *and* its attributes are right.

Reference: Jia et al., 2020, "Fashionpedia: Ontology, Segmentation, and an Attribute Localization
Dataset", and its official evaluator, class ``FPEval`` in ``fashionpedia/fp_eval.py`` of the
fashionpedia-api (a subclass of pycocotools' ``COCOeval``). This module recomputes it from that definition.

**Attribute F1** between a detection and a ground-truth object. Both become multi-hot vectors ``d`` and ``g``
over the whole attribute vocabulary (``V`` attributes); a detection predicts the attributes scoring at
least ``infer.attribute_thresh``. The F1 is scikit-learn's ``f1_score(g, d, average="macro")`` on the two
1-D binary vectors: the mean, over the values {0, 1} that occur in ``g`` or ``d``, of that value's F1,
``F1_v = 2 TP_v / (#(g == v) + #(d == v))``. With ``|g|``, ``|d|`` attributes set and ``|g & d|`` shared:

    F1_1 = 2 |g & d| / (|g| + |d|)                      (value 1 occurs when |g| + |d| > 0)
    F1_0 = 2 (V - |g | d|) / (2V - |g| - |d|)           (value 0 occurs when |g| + |d| < 2V)

(a value that occurs has a positive denominator, so sklearn's zero-division rule never applies). Two empty
vectors give 1.0 (only the value 0 occurs, and it agrees everywhere); ``g = {a}``, ``d = {}`` with V = 4
give (0 + 6/7) / 2 = 3/7. With V large, F1_0 is close to 1, so F1 ~ (1 + F1_1) / 2.

**Matching**, per image and category, as ``COCOeval.evaluateImg``: detections best score first (stable),
at most 100; ground truth with ``ignore`` (crowd) objects last; each detection takes the best still
unmatched object. For a category *with attributes* a candidate must pass both thresholds, IoU >= t and
F1 >= f, and the official loop then raises *both* bars to the accepted candidate's IoU and F1: a later
object is taken instead only if it beats the current one in IoU *and* in F1 (a later object with higher
IoU but lower F1 loses). We reproduce this. Unlike ``COCOeval``, that loop never lets a crowd object take
a second detection. Categories *without attributes* are matched by plain ``COCOeval`` (IoU only, crowd
objects may absorb several detections).

**AP**: ``COCOeval.accumulate`` per category and threshold pair: detections of all images by score
(stable, images in id order), precision made monotone, read at the 101 recall points 0, 0.01, ..., 1.
IoU thresholds t and F1 thresholds f are both 0.50, 0.55, ..., 0.95. ``AP_IoU+F1`` is the mean over all
entries of the list that holds, for each category with ground truth, one entry per (t, f) if the
category has attributes and one entry per t (its plain COCO AP at t) if not: a category with attributes
weighs ten times as much. ``AP_IoU50_F150`` etc. fix t and f: one entry per category (its AP at t, f,
or at t alone without attributes), as the official summary does.

**Deviations and generalisations** (docs/extending.md section 6):

* ``FPEval`` hard-codes which categories have attributes: 18 of Fashionpedia's 46, the 0-based ids 0-12
  (shirt ... cape) and 28, 29, 31, 32, 33 (collar, lapel, sleeve, pocket, neckline); labels 1-13, 29, 30,
  32-34 here. Here a category has attributes when any of its ground-truth objects carries an attribute
  id of the evaluated table. This equals the official list only if the evaluated Fashionpedia split bears
  it out, which we could not check (the data are not in the repository).
* The vocabulary is the model's attribute table (``data.attributes``), the official one every attribute
  of the ground-truth file; they agree when the table is the file's full list (294 for Fashionpedia).
  Ground-truth ids outside the table are dropped.
* An object with no attribute ids is an empty vector (as in ``FPEval``), not "unknown" as in
  ``attribute_eval.py``. Only area range "all" and ``maxDets`` 100 are computed, and the F1 is computed
  in closed form: it can differ from sklearn's float result in the last bit.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Dict, Mapping, Optional, Sequence

import numpy as np
from pycocotools import mask as mask_utils

from maskrcnn.engine.coco_format import segmentation_to_rle

# pycocotools' Params: 0.50:0.05:0.95 and the 101 recall points, built the same way so that the floats agree.
IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
F1_THRESHOLDS = IOU_THRESHOLDS.copy()
RECALL_POINTS = np.linspace(0.0, 1.0, int(np.round((1.0 - 0.0) / 0.01)) + 1, endpoint=True)
MAX_DETECTIONS = 100
SUMMARY_PAIRS = {"AP_IoU50_F150": (0.5, 0.5), "AP_IoU50_F175": (0.5, 0.75),
                 "AP_IoU75_F150": (0.75, 0.5), "AP_IoU75_F175": (0.75, 0.75)}


def binary_macro_f1(truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """``(D, G)`` float64 F1 (module docstring) of ``predicted (D, V)`` against ``truth (G, V)`` multi-hot rows."""
    truth = np.asarray(truth, dtype=np.float64)
    predicted = np.asarray(predicted, dtype=np.float64)
    vocabulary = truth.shape[1]
    n_true = truth.sum(axis=1)[None, :]      # (1, G)
    n_pred = predicted.sum(axis=1)[:, None]  # (D, 1)
    shared = predicted @ truth.T             # (D, G): |g & d|
    ones = n_true + n_pred                   # #(g == 1) + #(d == 1)
    zeros = 2 * vocabulary - ones            # #(g == 0) + #(d == 0)
    both_zero = vocabulary - (ones - shared)  # V - |g | d|: TP of the value 0
    with np.errstate(invalid="ignore", divide="ignore"):
        f1_one = np.where(ones > 0, 2 * shared / ones, 0.0)
        f1_zero = np.where(zeros > 0, 2 * both_zero / zeros, 0.0)
    values_present = (ones > 0).astype(np.float64) + (zeros > 0)
    return (f1_one + f1_zero) / values_present


def match_detections(ious: np.ndarray, f1s: Optional[np.ndarray], gt_ignore: np.ndarray, gt_crowd: np.ndarray,
                     crowd_rematch: bool, iou_thresholds=IOU_THRESHOLDS, f1_thresholds=F1_THRESHOLDS) -> np.ndarray:
    """Matched ground-truth index per threshold pair and detection, ``(T, F, D)`` int, -1 = unmatched.

    ``ious``, ``f1s`` are ``(D, G)`` with detections by score descending and ground truth ignore-last;
    ``gt_ignore``, ``gt_crowd`` are ``(G,)`` bool (the same here: only crowds are ignored at area "all");
    ``crowd_rematch`` lets a crowd object take several detections (COCOeval, not FPEval); ``f1s=None`` (no
    attributes) is COCOeval's IoU-only loop with an F1 axis of length 1. All T x F pairs
    run at once; the loops go over detections and objects in their order, as the official code does.
    """
    num_dt, num_gt = ious.shape
    if f1s is None:  # every F1 is 0 against a bar of -1: the F1 test always passes
        f1s, f1_thresholds = np.zeros((num_dt, num_gt)), np.array([-1.0])
    iou_start = np.minimum(np.asarray(iou_thresholds, dtype=np.float64), 1 - 1e-10)[:, None]  # (T, 1)
    f1_start = np.minimum(np.asarray(f1_thresholds, dtype=np.float64), 1 - 1e-10)[None, :]    # (1, F)
    shape = (iou_start.shape[0], f1_start.shape[1])
    matches = np.full(shape + (num_dt,), -1, dtype=np.int64)
    taken = np.zeros(shape + (num_gt,), dtype=bool)
    rows, cols = np.indices(shape)
    for d in range(num_dt):
        best_iou = np.broadcast_to(iou_start, shape).copy()
        best_f1 = np.broadcast_to(f1_start, shape).copy()
        match = np.full(shape, -1, dtype=np.int64)
        stopped = np.zeros(shape, dtype=bool)
        for g in range(num_gt):
            # matched to a regular object and reached the ignored ones: stop looking
            stopped |= (match >= 0) & ~gt_ignore[np.maximum(match, 0)] & gt_ignore[g]
            blocked = taken[:, :, g] & (not (crowd_rematch and gt_crowd[g]))  # COCOeval: a crowd may take many
            accept = ~stopped & ~blocked & (ious[d, g] >= best_iou) & (f1s[d, g] >= best_f1)
            best_iou = np.where(accept, ious[d, g], best_iou)
            best_f1 = np.where(accept, f1s[d, g], best_f1)  # the quirk: the F1 bar rises too
            match = np.where(accept, g, match)
        found = match >= 0
        taken[rows[found], cols[found], match[found]] = True
        matches[:, :, d] = match
    return matches


def interpolated_precision(scores: np.ndarray, true_positive: np.ndarray, false_positive: np.ndarray,
                           num_gt: int) -> np.ndarray:
    """COCO's precision at the 101 recall points, ``(T, F, 101)``, from ``(N,)`` scores and ``(T, F, N)`` flags."""
    order = np.argsort(-scores, kind="mergesort")
    tp = np.cumsum(true_positive[..., order], axis=-1, dtype=np.float64)
    fp = np.cumsum(false_positive[..., order], axis=-1, dtype=np.float64)
    recall = tp / num_gt
    precision = tp / (fp + tp + np.spacing(1))
    precision = np.maximum.accumulate(precision[..., ::-1], axis=-1)[..., ::-1]  # best precision at higher recall
    result = np.zeros(tp.shape[:2] + (RECALL_POINTS.size,))
    for t, f in np.ndindex(*tp.shape[:2]):
        index = np.searchsorted(recall[t, f], RECALL_POINTS, side="left")
        reached = index < recall.shape[-1]
        result[t, f, reached] = precision[t, f, index[reached]]
    return result


def _multi_hot(ids: Sequence[int], attribute_index: Mapping[int, int]) -> np.ndarray:
    row = np.zeros(len(attribute_index), dtype=bool)
    row[[attribute_index[i] for i in ids if i in attribute_index]] = True
    return row


def fashionpedia_ap(records: Sequence[Mapping], encoded: Sequence[Mapping], attribute_index: Mapping[int, int],
                    threshold: float = 0.5, iou_type: str = "segm", skipped_ids=()) -> Dict:
    """``AP_IoU+F1`` and ``AP_IoU50_F150`` ... (module docstring) for ``iou_type`` ``'segm'`` or ``'bbox'``.

    ``records`` carry the ground truth (``bbox`` xyxy, ``category_id``, ``segmentation``, ``iscrowd``,
    source ``attribute_ids``); ``encoded`` are ``encode_prediction`` outputs with ``attribute_scores``
    ``(D, A)``; ``attribute_index`` maps a source attribute id to its column. Images in ``skipped_ids``
    are left out, as the COCO evaluation leaves them out. Returns ``{"AP_IoU+F1", "AP_IoU50_F150", ...,
    "iou_type", "threshold", "num_categories", "categories_with_attributes"}``; the APs are None when no
    category has ground truth.
    """
    if iou_type not in ("segm", "bbox"):
        raise ValueError(f"iou_type={iou_type!r}: choose 'segm' or 'bbox'")
    by_image = {int(p["image_id"]): p for p in encoded}
    skipped_ids = {int(i) for i in skipped_ids}
    records = sorted((r for r in records if int(r["image_id"]) not in skipped_ids), key=lambda r: int(r["image_id"]))
    with_attributes = {int(a["category_id"]) for r in records for a in r["annotations"]
                       if _multi_hot(a.get("attribute_ids") or [], attribute_index).any()}
    # per category, in image order: detection scores, TP and FP flags (T, F, D), and the regular GT count
    scores, tps, fps, num_gt = defaultdict(list), defaultdict(list), defaultdict(list), defaultdict(int)
    for record in records:
        prediction = by_image.get(int(record["image_id"]), {"labels": []})
        categories = {int(a["category_id"]) for a in record["annotations"]} | {int(c) for c in prediction["labels"]}
        for category in sorted(categories):
            objects = [a for a in record["annotations"] if int(a["category_id"]) == category]
            objects = sorted(objects, key=lambda a: int(a.get("iscrowd", 0)))  # stable: ignore (crowd) last
            detections = [i for i, c in enumerate(prediction["labels"]) if int(c) == category]
            detections = sorted(detections, key=lambda i: -prediction["scores"][i])[:MAX_DETECTIONS]  # stable
            crowd = np.array([bool(a.get("iscrowd", 0)) for a in objects], dtype=bool)
            if iou_type == "bbox":
                gt_regions = [[x1, y1, x2 - x1, y2 - y1] for x1, y1, x2, y2 in (a["bbox"] for a in objects)]
                dt_regions = [[x1, y1, x2 - x1, y2 - y1]
                              for x1, y1, x2, y2 in (prediction["boxes"][i] for i in detections)]
            else:
                gt_regions = [segmentation_to_rle(a["segmentation"], int(record["height"]), int(record["width"]))
                              for a in objects]
                dt_regions = [prediction["masks"][i] for i in detections]
            ious = np.zeros((len(detections), len(objects)))  # (D, G); pycocotools' IoU (crowd: / detection area)
            if objects and detections:
                ious[:] = mask_utils.iou(dt_regions, gt_regions, crowd.astype(np.uint8).tolist())
            f1s = None
            if category in with_attributes:
                if detections and prediction.get("attribute_scores") is None:
                    raise ValueError(f"prediction for image {record['image_id']} has no attribute_scores: "
                                     "evaluate a model with an attribute head (model.num_attributes)")
                vocabulary = len(attribute_index)
                truth = np.array([_multi_hot(a.get("attribute_ids") or [], attribute_index) for a in objects])
                scores_dv = np.asarray([prediction["attribute_scores"][i] for i in detections], dtype=np.float64)
                f1s = binary_macro_f1(truth.reshape(len(objects), vocabulary),          # (G, V)
                                      scores_dv.reshape(len(detections), vocabulary) >= threshold)  # (D, V)
            matches = match_detections(ious, f1s, crowd, crowd, crowd_rematch=category not in with_attributes)
            ignored = (matches >= 0) & crowd[np.maximum(matches, 0)] if objects else np.zeros(matches.shape, bool)
            scores[category].extend(float(prediction["scores"][i]) for i in detections)
            tps[category].append((matches >= 0) & ~ignored)
            fps[category].append((matches < 0) & ~ignored)
            num_gt[category] += int((~crowd).sum())
    # per category (T, F, 101); a category without ground truth to find is absent (COCOeval's -1)
    precision = {c: interpolated_precision(np.array(scores[c]), np.concatenate(tps[c], axis=-1),
                                           np.concatenate(fps[c], axis=-1), num_gt[c])
                 for c in sorted(num_gt) if num_gt[c] > 0}
    report = {"iou_type": iou_type, "threshold": threshold, "num_categories": len(precision),
              "categories_with_attributes": sorted(c for c in precision if c in with_attributes),
              "AP_IoU+F1": _mean_entries(precision, slice(None), slice(None))}
    for key, (iou_thresh, f1_thresh) in SUMMARY_PAIRS.items():
        t = int(np.flatnonzero(IOU_THRESHOLDS == iou_thresh)[0])
        f = int(np.flatnonzero(F1_THRESHOLDS == f1_thresh)[0])
        report[key] = _mean_entries(precision, slice(t, t + 1), slice(f, f + 1))
    return report


def _mean_entries(precision: Mapping[int, np.ndarray], iou_slice: slice, f1_slice: slice) -> Optional[float]:
    """Mean over every category's selected entries: (t, f) pairs with attributes, t alone (F axis of 1) without."""
    values = [p[iou_slice, f1_slice if p.shape[1] > 1 else slice(None)].ravel() for p in precision.values()]
    return float(np.mean(np.concatenate(values))) if values else None


def evaluate_fashionpedia(records: Sequence[Mapping], encoded: Sequence[Mapping], attribute_index: Mapping[int, int],
                          threshold: float = 0.5, iou_types: Sequence[str] = ("segm", "bbox"),
                          skipped_ids=()) -> Dict[str, Dict]:
    """``{iou_type: fashionpedia_ap(...)}`` for each of ``iou_types``; ``'segm'`` only when predictions have masks."""
    have_masks = all(p.get("masks") is not None for p in encoded)
    return {iou_type: fashionpedia_ap(records, encoded, attribute_index, threshold, iou_type, skipped_ids)
            for iou_type in iou_types if iou_type == "bbox" or have_masks}


def format_fashionpedia_report(reports: Mapping[str, Mapping]) -> str:
    """One line per IoU type: AP_IoU+F1 and the fixed-threshold pairs."""
    def fmt(v):
        return "-" if v is None else f"{v:.3f}"
    lines = []
    for iou_type, r in reports.items():
        pairs = ", ".join(f"{key[3:]} {fmt(r[key])}" for key in SUMMARY_PAIRS)
        lines.append(f"Fashionpedia {iou_type} AP_IoU+F1 {fmt(r['AP_IoU+F1'])} ({pairs}) over {r['num_categories']} "
                     f"categories, {len(r['categories_with_attributes'])} with attributes")
    return "\n".join(lines)

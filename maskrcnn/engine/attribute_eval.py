"""Evaluation of the attribute head: per-attribute average precision over correctly detected objects.

Which metric, and why. An attribute score only means something for a detection that found a real object,
so the attributes are scored on the *matched* detections: in each image, detections are taken best score
first and each is matched to the unmatched ground-truth object of the same class with the highest box
IoU, if that IoU is at least 0.5 (COCO's AP50 matching). Objects without attribute annotations
(``attribute_ids`` empty, see ``maskrcnn/data/attributes.py``) are left out. Over the remaining pairs,
for each attribute ``a``:

* **AP** = the area under its precision-recall curve when the pairs are ranked by the detection's score
  for ``a``: the mean, over the pairs whose object has ``a``, of the precision at that pair's rank
  (ties broken by order, no interpolation);
* **chance** = the fraction of pairs whose object has ``a`` (its prevalence): the AP of a constant score;
* **precision / recall / F1** at ``infer.attribute_thresh`` (the threshold the outputs use).

``mAP`` and ``chance_mAP`` average over the attributes with at least one positive pair. This measures the
attribute scores alone. Fashionpedia's "AP with attributes" (``AP_IoU+F1``: a detection is a true positive
only when its mask or box IoU and its attribute F1 both pass thresholds) measures detection and attributes
together; ``maskrcnn/engine/fashionpedia_eval.py`` computes it, and the validation report carries it in
``"attributes"["fashionpedia"]`` beside these numbers (docs/extending.md section 6).
"""
from __future__ import annotations

import csv
import json
import os
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch

from maskrcnn.engine.fashionpedia_eval import format_fashionpedia_report
from maskrcnn.ops import box_iou

ATTRIBUTE_CSV = "attributes.csv"


def matched_attribute_pairs(records: Sequence[Mapping], encoded: Sequence[Mapping], attribute_index: Mapping[int, int],
                            iou_thresh: float = 0.5):
    """``(scores (M, A), labels (M, A))`` of the detections matched to annotated GT objects (module docstring).

    ``records`` carry the ground truth (``bbox`` xyxy, ``category_id``, source ``attribute_ids``);
    ``encoded`` are ``encode_prediction`` outputs with ``attribute_scores``; ``attribute_index`` maps a
    source attribute id to its column ``a``."""
    num_attributes = len(attribute_index)
    by_image = {int(p["image_id"]): p for p in encoded}
    scores, labels = [], []
    for record in records:
        prediction = by_image.get(int(record["image_id"]))
        if prediction is None or not prediction.get("attribute_scores"):
            continue
        objects = [a for a in record["annotations"] if not a.get("iscrowd", 0)]
        gt_boxes = np.array([a["bbox"] for a in objects], dtype=np.float64).reshape(-1, 4)
        gt_classes = np.array([a["category_id"] for a in objects], dtype=np.int64)
        taken = np.zeros(len(objects), dtype=bool)
        order = np.argsort(-np.asarray(prediction["scores"]), kind="stable")
        detected = torch.tensor(prediction["boxes"], dtype=torch.float64).reshape(-1, 4)
        ious = box_iou(detected, torch.from_numpy(gt_boxes)).numpy()  # (D, G), once per image
        for d in order:
            iou = ious[d].copy()
            iou[(gt_classes != prediction["labels"][d]) | taken] = -1.0
            if iou.size == 0 or iou.max() < iou_thresh:
                continue
            g = int(iou.argmax())
            taken[g] = True
            ids = objects[g].get("attribute_ids") or []
            if not ids:  # no attribute annotations: unknown, not "none"
                continue
            row = np.zeros(num_attributes)
            row[[attribute_index[i] for i in ids if i in attribute_index]] = 1.0
            scores.append(prediction["attribute_scores"][d])
            labels.append(row)
    # (M, A) each; (0, A) when nothing matched
    return (np.array(scores, dtype=np.float64).reshape(-1, num_attributes),
            np.array(labels, dtype=np.float64).reshape(-1, num_attributes))


def average_precision(scores: np.ndarray, labels: np.ndarray) -> Optional[float]:
    """Mean over the positives of the precision at their rank (scores descending, stable); None without
    positives. ``average_precision([0.9, 0.8, 0.7], [1, 0, 1])`` = (1/1 + 2/3) / 2 = 0.8333."""
    labels = np.asarray(labels, dtype=np.float64)
    if labels.sum() == 0:
        return None
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    hits = labels[order]
    precision_at_rank = np.cumsum(hits) / np.arange(1, hits.size + 1)
    return float((precision_at_rank * hits).sum() / hits.sum())


def evaluate_attributes(records: Sequence[Mapping], encoded: Sequence[Mapping], attribute_names: Sequence[str],
                        attribute_index: Mapping[int, int], threshold: float = 0.5, iou_thresh: float = 0.5) -> Dict:
    """The attribute report (module docstring): ``{"num_matched", "mAP", "chance_mAP", "mean_F1", "threshold",
    "per_attribute": [{"name", "num_positive", "AP", "chance", "precision", "recall", "F1"}]}``."""
    scores, labels = matched_attribute_pairs(records, encoded, attribute_index, iou_thresh)
    rows = []
    for a, name in enumerate(attribute_names):
        positives = int(labels[:, a].sum())
        predicted = scores[:, a] >= threshold
        true_positive = float((predicted & (labels[:, a] > 0)).sum())
        precision = true_positive / predicted.sum() if predicted.sum() else None
        recall = true_positive / positives if positives else None
        f1 = (2 * precision * recall / (precision + recall) if precision and recall else
              (0.0 if positives else None))
        rows.append({"name": name, "num_positive": positives, "AP": average_precision(scores[:, a], labels[:, a]),
                     "chance": positives / labels.shape[0] if labels.shape[0] else None,
                     "precision": precision, "recall": recall, "F1": f1})
    valid = [r for r in rows if r["AP"] is not None]

    def mean(key):
        values = [r[key] for r in valid if r[key] is not None]
        return float(np.mean(values)) if values else None

    return {"num_matched": int(labels.shape[0]), "threshold": threshold, "iou_thresh": iou_thresh,
            "mAP": mean("AP"), "chance_mAP": mean("chance"), "mean_F1": mean("F1"), "per_attribute": rows}


def format_attribute_report(report: Mapping) -> str:
    """One line: mAP against chance, F1, and over how many matched detections; then one line per IoU type of
    Fashionpedia's AP_IoU+F1 when the report has ``"fashionpedia"`` (``fashionpedia_eval.evaluate_fashionpedia``)."""
    def fmt(v):
        return "-" if v is None else f"{v:.3f}"
    line = (f"attributes: mAP {fmt(report['mAP'])} (chance {fmt(report['chance_mAP'])}), mean F1 "
            f"{fmt(report['mean_F1'])} at {report['threshold']:g}, over {report['num_matched']} matched detections")
    if report.get("fashionpedia"):
        line += "\n" + format_fashionpedia_report(report["fashionpedia"])
    return line


def write_attribute_report(report: Mapping, output_dir: str) -> List[str]:
    """Adds ``"attributes"`` to ``output_dir/evaluation.json`` (created if absent) and writes ``attributes.csv``."""
    os.makedirs(output_dir, exist_ok=True)
    json_path = os.path.join(output_dir, "evaluation.json")
    data = {}
    if os.path.exists(json_path):
        with open(json_path) as f:
            data = json.load(f)
    data["attributes"] = dict(report)
    with open(json_path, "w") as f:
        json.dump(data, f, indent=2)
    csv_path = os.path.join(output_dir, ATTRIBUTE_CSV)
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        columns = ["name", "num_positive", "AP", "chance", "precision", "recall", "F1"]
        writer.writerow(columns)
        for row in report["per_attribute"]:
            writer.writerow(["" if row[c] is None else (f"{row[c]:.6f}" if isinstance(row[c], float) else row[c])
                             for c in columns])
    return [json_path, csv_path]

"""Attribute evaluation (maskrcnn/engine/attribute_eval.py): AP literals, the matching rules, chance, the report
files."""
import csv
import json
import os

import pytest

from maskrcnn.engine.attribute_eval import (average_precision, evaluate_attributes, format_attribute_report,
                                            matched_attribute_pairs, write_attribute_report)


def test_average_precision_literals():
    # positives at ranks 1 and 3: (1/1 + 2/3) / 2
    assert average_precision([0.9, 0.8, 0.7], [1, 0, 1]) == pytest.approx(5 / 6, abs=1e-15)
    assert average_precision([0.1, 0.2, 0.3], [1, 0, 0]) == pytest.approx(1 / 3, abs=1e-15)
    assert average_precision([0.5, 0.4], [0, 0]) is None
    # a constant score ranks in the given order (stable): the AP of positives at ranks 2 and 4 of 4
    assert average_precision([0.5] * 4, [0, 1, 0, 1]) == pytest.approx((1 / 2 + 2 / 4) / 2, abs=1e-15)


def record(image_id, objects):
    return {"image_id": image_id, "annotations": [
        {"bbox": box, "category_id": label, "attribute_ids": ids, "iscrowd": 0} for box, label, ids in objects]}


def test_matching_same_class_iou_half_and_unknown_objects_skipped():
    records = [record(1, [([0, 0, 10, 10], 1, [7]), ([20, 20, 30, 30], 2, []), ([40, 40, 50, 50], 1, [8])])]
    prediction = {"image_id": 1, "boxes": [[0, 0, 10, 10],      # matches object 0
                                           [20, 20, 30, 30],    # matches object 1, which has no annotations
                                           [40, 40, 50, 50],    # right place, wrong class: no match
                                           [0, 0, 10, 4]],      # IoU 0.4 with object 0 (already taken anyway)
                  "labels": [1, 2, 2, 1], "scores": [0.9, 0.8, 0.7, 0.6],
                  "attribute_scores": [[0.9, 0.1], [0.5, 0.5], [0.2, 0.8], [0.3, 0.3]]}
    scores, labels = matched_attribute_pairs(records, [prediction], {7: 0, 8: 1})
    assert scores.tolist() == [[0.9, 0.1]] and labels.tolist() == [[1.0, 0.0]]


def test_report_chance_f1_and_files(tmp_path):
    # four matched objects; attribute "a" on objects 0 and 2, "b" on none
    objects = [([10 * k, 0, 10 * k + 8, 8], 1, [1] if k % 2 == 0 else [2]) for k in range(4)]
    records = [record(1, objects)]
    prediction = {"image_id": 1, "boxes": [o[0] for o in objects], "labels": [1] * 4,
                  "scores": [0.9, 0.8, 0.7, 0.6],
                  "attribute_scores": [[0.9, 0.2], [0.6, 0.1], [0.4, 0.3], [0.1, 0.2]]}
    # columns: attribute source 1 = "a", source 3 = "b" (source 2 is another supercategory's)
    report = evaluate_attributes(records, [prediction], ["a", "b"], {1: 0, 3: 1}, threshold=0.5)
    a, b = report["per_attribute"]
    assert report["num_matched"] == 4
    assert a["AP"] == pytest.approx((1 / 1 + 2 / 3) / 2) and a["chance"] == 0.5  # ranks 1 and 3
    # at 0.5: predicted on objects 0 and 1, one right: precision 1/2, recall 1/2
    assert a["precision"] == 0.5 and a["recall"] == 0.5 and a["F1"] == pytest.approx(0.5)
    assert b["AP"] is None and b["num_positive"] == 0
    assert report["mAP"] == pytest.approx(5 / 6) and report["chance_mAP"] == 0.5
    assert format_attribute_report(report) == ("attributes: mAP 0.833 (chance 0.500), mean F1 0.500 at 0.5, "
                                               "over 4 matched detections")
    with open(tmp_path / "evaluation.json", "w") as f:
        json.dump({"bbox": {"AP": 0.5}}, f)
    json_path, csv_path = write_attribute_report(report, str(tmp_path))
    with open(json_path) as f:
        data = json.load(f)
    assert data["bbox"] == {"AP": 0.5} and data["attributes"]["mAP"] == pytest.approx(5 / 6)
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == ["a", "b"] and rows[1]["AP"] == "" and float(rows[0]["chance"]) == 0.5
    assert os.path.basename(csv_path) == "attributes.csv"

"""Attribute evaluation (maskrcnn/engine/attribute_eval.py): AP literals, the matching rules, chance, the report
files, and the validation report that carries Fashionpedia's AP_IoU+F1 beside them."""
import csv
import json
import os

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from maskrcnn.config import load_config
from maskrcnn.data import load_split
from maskrcnn.data.synthetic import generate_synthetic_dataset
from maskrcnn.engine.coco_format import segmentation_to_rle
from maskrcnn.engine.distributed import DistributedInfo
from maskrcnn.engine.validation import load_validation_set, run_evaluation
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


def test_report_prints_fashionpedia_lines():
    report = {"mAP": 0.5, "chance_mAP": 0.25, "mean_F1": 0.4, "threshold": 0.5, "num_matched": 3,
              "fashionpedia": {"segm": {"AP_IoU+F1": 0.25, "AP_IoU50_F150": 0.5, "AP_IoU50_F175": 0.375,
                                        "AP_IoU75_F150": 0.125, "AP_IoU75_F175": None, "num_categories": 2,
                                        "categories_with_attributes": [1]}}}
    assert format_attribute_report(report).splitlines() == [
        "attributes: mAP 0.500 (chance 0.250), mean F1 0.400 at 0.5, over 3 matched detections",
        "Fashionpedia segm AP_IoU+F1 0.250 (IoU50_F150 0.500, IoU50_F175 0.375, IoU75_F150 0.125, IoU75_F175 -) "
        "over 2 categories, 1 with attributes"]


class GroundTruthModel(torch.nn.Module):
    """Predicts each validation image's ground truth (in image order) with its true attributes: every AP is 1."""

    def __init__(self, records, attribute_index):
        super().__init__()
        self.records, self.attribute_index, self.calls = records, attribute_index, 0

    def forward(self, images):
        outputs = []
        for _ in images:
            record = self.records[self.calls]
            self.calls += 1
            objects = record["annotations"]
            height, width = record["height"], record["width"]
            masks = [mask_utils.decode(segmentation_to_rle(a["segmentation"], height, width)) for a in objects]
            attributes = torch.zeros(len(objects), len(self.attribute_index))
            for row, a in enumerate(objects):
                attributes[row, [self.attribute_index[i] for i in a["attribute_ids"]]] = 0.9
            outputs.append({"boxes": torch.tensor([a["bbox"] for a in objects], dtype=torch.float32).reshape(-1, 4),
                            "labels": torch.tensor([a["category_id"] for a in objects], dtype=torch.int64),
                            "scores": torch.linspace(0.9, 0.5, len(objects)),
                            "masks": torch.from_numpy(np.array(masks, dtype=np.float32)).reshape(-1, 1, height, width),
                            "attribute_scores": attributes})
        return outputs


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools on numpy 2
def test_validation_report_carries_fashionpedia_ap(tmp_path, capsys):
    paths = generate_synthetic_dataset(str(tmp_path / "data"), num_train=0, num_val=3, seed=2, image_size=64)
    val = paths["val"]
    cfg = load_config("configs/synthetic_attributes.yaml", overrides=[
        f"data.val_annotations={val['annotations']}", f"data.val_images={val['images']}", "eval.pictures=false"])
    cfg.model.attribute_names = ["plain", "striped", "checked", "dotted", "mottled", "dark", "light"]
    validation = load_validation_set(cfg, load_split(cfg, "val").class_names, verbose=False)
    model = GroundTruthModel(validation.records, validation.dataset.attribute_index)
    report = run_evaluation(model, validation, cfg, DistributedInfo(0, 1, 0, torch.device("cpu"), None), str(tmp_path))
    with open(tmp_path / "evaluation.json") as f:
        written = json.load(f)["attributes"]["fashionpedia"]
    assert sorted(written) == ["bbox", "segm"] and written == report["attributes"]["fashionpedia"]
    for iou_type in ("bbox", "segm"):
        assert written[iou_type]["AP_IoU+F1"] == pytest.approx(1.0, abs=1e-12)
        assert written[iou_type]["categories_with_attributes"]  # the synthetic objects all carry a pattern
    assert "Fashionpedia segm AP_IoU+F1 1.000" in capsys.readouterr().out


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools on numpy 2
def test_eval_only_config_without_names_uses_the_validation_table(tmp_path):
    """``train.py --eval-only`` reads the YAML, whose ``model.attribute_names`` is empty: the report then names
    the attributes from the validation set's table instead of reporting none."""
    paths = generate_synthetic_dataset(str(tmp_path / "data"), num_train=0, num_val=3, seed=2, image_size=64)
    val = paths["val"]
    cfg = load_config("configs/synthetic_attributes.yaml", overrides=[
        f"data.val_annotations={val['annotations']}", f"data.val_images={val['images']}", "eval.pictures=false"])
    assert list(cfg.model.attribute_names) == []
    validation = load_validation_set(cfg, load_split(cfg, "val").class_names, verbose=False)
    model = GroundTruthModel(validation.records, validation.dataset.attribute_index)
    report = run_evaluation(model, validation, cfg, DistributedInfo(0, 1, 0, torch.device("cpu"), None), str(tmp_path))
    rows = report["attributes"]["per_attribute"]
    assert [r["name"] for r in rows] == ["plain", "striped", "checked", "dotted", "mottled", "dark", "light"]
    assert report["attributes"]["mAP"] == pytest.approx(1.0, abs=1e-12)


def test_validation_table_other_than_the_models_is_refused(tmp_path):
    paths = generate_synthetic_dataset(str(tmp_path / "data"), num_train=0, num_val=1, seed=2, image_size=64)
    val = paths["val"]
    cfg = load_config("configs/synthetic_attributes.yaml", overrides=[
        f"data.val_annotations={val['annotations']}", f"data.val_images={val['images']}"])
    cfg.model.attribute_names = ["striped", "plain", "checked", "dotted", "mottled", "dark", "light"]  # other order
    with pytest.raises(ValueError, match="use the same attribute table for both"):
        load_validation_set(cfg, load_split(cfg, "val").class_names, verbose=False)

"""COCO evaluation: perfect predictions give AP 1, hand-computed values for known mistakes, the formats.

The hand-computed values follow COCOeval's definition: precision is interpolated (the best precision at
any recall >= r) and read at the 101 recall points r = 0, 0.01, ..., 1; AP averages those 101 values
and then the 10 IoU thresholds 0.50..0.95; the dataset AP averages the classes that have objects.
"""
import csv
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from maskrcnn.engine.coco_format import encode_masks, encode_prediction, prepare_coco_ground_truth, records_to_coco
from maskrcnn.engine.evaluation import evaluate, format_report, gather_predictions, write_report

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "fixtures", "eval", "small_gt.json")
CLASS_NAMES = ["top", "skirt", "bag"]


@pytest.fixture
def gt():
    with open(FIXTURE) as f:
        return json.load(f)


def _mask_of(gt, ann):
    image = next(i for i in gt["images"] if i["id"] == ann["image_id"])
    coco = COCO()
    coco.dataset = {"images": [image], "annotations": [], "categories": []}
    coco.createIndex()
    return coco.annToMask(dict(ann))  # (H, W) uint8 rasterised by pycocotools, like COCOeval does


def perfect_predictions(gt, drop=(), extra=None):
    """One exact detection per non-crowd object (masks as probabilities 0.9 / 0.1), minus ``drop`` ids."""
    per_image = {image["id"]: {"boxes": [], "labels": [], "scores": [], "masks": []} for image in gt["images"]}
    for n, ann in enumerate(gt["annotations"]):
        if ann["iscrowd"] or ann["id"] in drop:
            continue
        x, y, w, h = ann["bbox"]
        p = per_image[ann["image_id"]]
        p["boxes"].append([x, y, x + w, y + h])
        p["labels"].append(ann["category_id"])
        p["scores"].append(0.9 - 0.05 * n)
        p["masks"].append(np.where(_mask_of(gt, ann) > 0, 0.9, 0.1))
    for image_id, box, label, score, mask in extra or []:
        p = per_image[image_id]
        p["boxes"].append(box), p["labels"].append(label), p["scores"].append(score), p["masks"].append(mask)
    predictions = []
    for image in gt["images"]:
        p = per_image[image["id"]]
        masks = np.stack(p["masks"])[:, None] if p["masks"] else np.zeros((0, 1, image["height"], image["width"]))
        predictions.append({
            "image_id": image["id"],
            "boxes": torch.tensor(p["boxes"], dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(p["labels"], dtype=torch.int64),
            "scores": torch.tensor(p["scores"], dtype=torch.float32),
            "masks": torch.tensor(masks, dtype=torch.float32),
        })
    return predictions


def test_perfect_predictions_give_ap_one(gt):
    report = evaluate(gt, perfect_predictions(gt), CLASS_NAMES)
    for iou_type in ("bbox", "segm"):
        part = report[iou_type]
        assert part["AP"] == pytest.approx(1.0, abs=1e-12)
        assert part["AP50"] == pytest.approx(1.0, abs=1e-12)
        assert part["AP75"] == pytest.approx(1.0, abs=1e-12)
        assert part["APs"] == pytest.approx(1.0, abs=1e-12)  # every object is under 32^2 pixels
        assert part["APm"] is None and part["APl"] is None  # no medium or large objects: COCOeval's -1
        rows = {row["name"]: row for row in part["per_class"]}
        assert rows["top"]["AP"] == rows["skirt"]["AP"] == pytest.approx(1.0, abs=1e-12)
        assert rows["top"]["num_gt"] == 2 and rows["skirt"]["num_gt"] == 2  # the crowd region is not counted
        assert rows["bag"]["AP"] is None and rows["bag"]["num_gt"] == 0
        np.testing.assert_allclose(part["pr_curve"]["precision"]["top"], [1.0] * 101, rtol=0, atol=1e-12)
        assert part["pr_curve"]["precision"]["bag"] is None


def test_annotation_id_zero_is_renumbered(gt):
    # Without renumbering, COCOeval reads the match with GT id 0 as "no match": AP drops below 1.
    raw = prepare_coco_ground_truth(gt)  # with areas, then the original ids 0..4 put back
    for ann, original in zip(raw["annotations"], gt["annotations"]):
        ann["id"] = original["id"]
    coco_gt = COCO()
    coco_gt.dataset = raw
    coco_gt.createIndex()
    results = []
    for pred in perfect_predictions(gt):
        for box, label, score in zip(pred["boxes"].tolist(), pred["labels"].tolist(), pred["scores"].tolist()):
            results.append({"image_id": pred["image_id"], "category_id": label, "score": score,
                            "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]})
    evaluator = COCOeval(coco_gt, coco_gt.loadRes(results), "bbox")
    evaluator.evaluate(), evaluator.accumulate(), evaluator.summarize()
    assert evaluator.stats[0] < 0.99
    prepared = prepare_coco_ground_truth(gt)
    assert [a["id"] for a in prepared["annotations"]] == [1, 2, 3, 4, 5]
    assert gt["annotations"][0]["id"] == 0  # the input is not modified


def test_one_of_two_objects_missed(gt):
    # Class "top" finds object 0 but not object 2: precision 1 up to recall 0.5, nothing beyond, so
    # 51 of the 101 recall points (0.00..0.50) have precision 1: AP_top = 51/101. "skirt" is perfect.
    report = evaluate(gt, perfect_predictions(gt, drop={2}), CLASS_NAMES)
    for iou_type in ("bbox", "segm"):
        rows = {row["name"]: row for row in report[iou_type]["per_class"]}
        assert rows["top"]["AP"] == pytest.approx(51 / 101, abs=1e-12)
        assert rows["skirt"]["AP"] == pytest.approx(1.0, abs=1e-12)
        assert report[iou_type]["AP"] == pytest.approx((51 / 101 + 1) / 2, abs=1e-12)
        curve = report[iou_type]["pr_curve"]["precision"]["top"]
        # COCOeval divides by (tp + fp + eps), so a precision of 1 reads 1 - 2e-16
        np.testing.assert_allclose(curve, [1.0] * 51 + [0.0] * 50, rtol=0, atol=1e-12)


def test_false_positive_between_two_hits(gt):
    # "top" detections by score: hit (0.9), false positive (0.85, on empty background), hit (0.8).
    # Raw precision/recall: (1, 0.5), (0.5, 0.5), (2/3, 1). Interpolated: 1 for r <= 0.5 and 2/3 for
    # r in (0.5, 1]: AP_top = (51 * 1 + 50 * 2/3) / 101.
    fp_mask = np.zeros((60, 80))
    fp_mask[40:55, 5:20] = 0.9
    extra = [(1, [5.0, 40.0, 20.0, 55.0], 1, 0.85, fp_mask)]
    predictions = perfect_predictions(gt, extra=extra)
    assert predictions[0]["scores"][0] == pytest.approx(0.9) and predictions[1]["scores"][0] == pytest.approx(0.8)
    report = evaluate(gt, predictions, CLASS_NAMES)
    expected = (51 + 50 * (2 / 3)) / 101
    for iou_type in ("bbox", "segm"):
        rows = {row["name"]: row for row in report[iou_type]["per_class"]}
        assert rows["top"]["AP"] == pytest.approx(expected, abs=1e-12)
        assert rows["top"]["AP50"] == pytest.approx(expected, abs=1e-12)


def test_iou_between_thresholds():
    # One object [0, 0, 10, 10], one detection [0, 0, 10, 7.2]: IoU 72/100 = 0.72 matches at the IoU
    # thresholds 0.50..0.70 (5 of 10) and misses at 0.75..0.95, so AP = 0.5, AP50 = 1, AP75 = 0.
    records = [{"file_name": "a.jpg", "image_id": 7, "height": 20, "width": 20,
                "annotations": [{"bbox": [0, 0, 10, 10], "category_id": 1, "iscrowd": 0}]}]
    prediction = {"image_id": 7, "boxes": torch.tensor([[0.0, 0.0, 10.0, 7.2]]),
                  "labels": torch.tensor([1]), "scores": torch.tensor([0.6])}
    report = evaluate(records, [prediction], ["only"], iou_types=["bbox"])
    assert report["bbox"]["AP"] == pytest.approx(0.5, abs=1e-12)
    assert report["bbox"]["AP50"] == pytest.approx(1.0, abs=1e-12)
    assert report["bbox"]["AP75"] == pytest.approx(0.0, abs=1e-12)
    assert "segm" not in report


def test_no_predictions_gives_zero(gt):
    report = evaluate(gt, [], CLASS_NAMES)
    assert report["bbox"]["AP"] == 0.0 and report["segm"]["AP"] == 0.0
    assert report["num_predictions"] == 0


def test_records_give_the_same_result_as_coco(gt):
    # The same objects as records (xyxy boxes, the same segmentations) evaluate identically.
    records = []
    for image in gt["images"]:
        anns = [a for a in gt["annotations"] if a["image_id"] == image["id"]]
        records.append({"file_name": image["file_name"], "image_id": image["id"], "height": image["height"],
                        "width": image["width"], "annotations": [
                            {"bbox": [a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]],
                             "category_id": a["category_id"], "segmentation": a["segmentation"], "iscrowd": a["iscrowd"]}
                            for a in anns]})
    predictions = perfect_predictions(gt, drop={1})
    from_coco = evaluate(gt, predictions, CLASS_NAMES)
    from_records = evaluate(records, predictions, CLASS_NAMES)
    for iou_type in ("bbox", "segm"):
        assert from_records[iou_type]["AP"] == pytest.approx(from_coco[iou_type]["AP"], abs=1e-12)
        assert from_records[iou_type]["per_class"] == from_coco[iou_type]["per_class"]
    coco = records_to_coco(records, CLASS_NAMES)
    areas = [a["area"] for a in coco["annotations"]]
    assert areas[2] == 314.0 and areas[3] == 85.0 and areas[4] == 400.0  # mask areas, not box areas


def test_mask_threshold_is_strictly_above_half():
    probabilities = torch.tensor([[[[0.5, 0.51], [0.49, 1.0]]]])  # (N=1, 1, 2, 2)
    rle = encode_masks(probabilities)[0]
    assert isinstance(rle["counts"], str) and rle["size"] == [2, 2]
    np.testing.assert_array_equal(mask_utils.decode(rle), [[0, 1], [0, 1]])


def test_encode_prediction_is_plain_data():
    pred = {"image_id": 3, "boxes": torch.tensor([[1.0, 2.0, 3.0, 4.0]]), "labels": torch.tensor([2]),
            "scores": torch.tensor([0.25]), "masks": torch.ones(1, 1, 5, 6)}
    encoded = encode_prediction(pred)
    assert encoded["boxes"] == [[1.0, 2.0, 3.0, 4.0]] and encoded["labels"] == [2] and encoded["scores"] == [0.25]
    assert encoded["masks"][0]["size"] == [5, 6] and mask_utils.area(encoded["masks"][0]) == 30
    json.dumps(encoded)
    assert encode_prediction(encoded) == encoded


def test_bad_predictions_are_refused(gt):
    good = perfect_predictions(gt)
    with pytest.raises(ValueError, match="image_id 99"):
        evaluate(gt, [dict(good[0], image_id=99)], CLASS_NAMES)
    with pytest.raises(ValueError, match=r"labels \[0, 0\] outside 1..3"):
        evaluate(gt, [dict(good[0], labels=torch.zeros(2, dtype=torch.int64))], CLASS_NAMES)
    with pytest.raises(ValueError, match="original-image pixels"):
        evaluate(gt, [dict(good[0], masks=torch.zeros(2, 1, 30, 40))], CLASS_NAMES)
    with pytest.raises(ValueError, match="missing 'image_id'"):
        evaluate(gt, [{k: v for k, v in good[0].items() if k != "image_id"}], CLASS_NAMES)
    with pytest.raises(ValueError, match="iou_types=\\['bbox'\\]"):
        evaluate(gt, [{k: v for k, v in good[0].items() if k != "masks"}], CLASS_NAMES)
    with pytest.raises(ValueError, match="category ids must be 1..K"):
        evaluate(dict(gt, categories=[{"id": 0, "name": "x"}]), [], ["x"])


def test_gather_predictions_single_process_dedupes_and_sorts(gt):
    predictions = perfect_predictions(gt)
    gathered = gather_predictions([predictions[2], predictions[0], predictions[2]])
    assert [p["image_id"] for p in gathered] == [1, 3]
    assert all(p["encoded"] for p in gathered)


def test_write_report_files(gt, tmp_path):
    report = evaluate(gt, perfect_predictions(gt, drop={2}), CLASS_NAMES, output_dir=str(tmp_path))
    names = sorted(os.listdir(tmp_path))
    assert names == sorted(["evaluation.json", "per_class_bbox.csv", "per_class_segm.csv", "pr_curve_bbox.csv",
                            "pr_curve_segm.csv", "pr_curve_bbox.png", "pr_curve_segm.png", "confusion_matrix.csv",
                            "confusion_matrix.png"])
    with open(tmp_path / "evaluation.json") as f:
        assert json.load(f)["segm"]["AP"] == pytest.approx((51 / 101 + 1) / 2, abs=1e-12)
    with open(tmp_path / "per_class_segm.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == CLASS_NAMES
    assert float(rows[0]["AP"]) == pytest.approx(51 / 101, abs=1e-6) and rows[2]["AP"] == ""
    with open(tmp_path / "pr_curve_bbox.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["recall", "top", "skirt"] and len(rows) == 102
    assert rows[51] == ["0.50", "1.000000", "1.000000"] and rows[52] == ["0.51", "0.000000", "1.000000"]
    with open(tmp_path / "confusion_matrix.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["true \\ predicted", "background", "top", "skirt", "bag"]
    assert rows[2] == ["top", "1", "1", "0", "0"]  # one top found, one missed
    assert Image.open(tmp_path / "confusion_matrix.png").size[0] > 100
    text = format_report(report)
    assert "segm: AP 0.752" in text and "top" in text


def test_write_report_without_pictures(gt, tmp_path):
    report = evaluate(gt, perfect_predictions(gt), CLASS_NAMES)
    written = write_report(report, str(tmp_path), pictures=False)
    assert not any(p.endswith(".png") for p in written) and len(written) == 6


def test_skipped_images_leave_the_ground_truth(gt):
    """An undecodable image's objects are not misses: perfect predictions on the rest score AP 1."""
    broken = gt["images"][0]
    predictions = [p for p in perfect_predictions(gt) if p["image_id"] != broken["id"]]
    unfair = evaluate(gt, predictions, CLASS_NAMES)
    assert unfair["segm"]["AP"] < 1.0  # the broken image's objects counted as misses
    skipped = [{"image_id": broken["id"], "file_name": "val/broken.jpg", "reason": "cannot decode the image"}]
    report = evaluate(gt, predictions, CLASS_NAMES, skipped=skipped)
    assert report["segm"]["AP"] == pytest.approx(1.0, abs=1e-12)
    assert report["bbox"]["AP"] == pytest.approx(1.0, abs=1e-12)
    assert (report["num_images"], report["num_images_total"]) == (len(gt["images"]) - 1, len(gt["images"]))
    assert report["skipped_images"] == skipped
    assert format_report(report).splitlines()[0] == (
        f"evaluated on {len(gt['images']) - 1} of {len(gt['images'])} images; skipped: val/broken.jpg "
        f"(cannot decode the image)")
    assert format_report(evaluate(gt, perfect_predictions(gt), CLASS_NAMES)).splitlines()[0] == (
        f"evaluated on {len(gt['images'])} of {len(gt['images'])} images")
    with pytest.raises(ValueError, match=r"skipped: image ids \[999\] are not in the ground truth"):
        evaluate(gt, predictions, CLASS_NAMES, skipped=[{"image_id": 999, "file_name": "x", "reason": "y"}])


def test_validation_lists_the_undecodable_images_with_their_reason(tmp_path):
    from maskrcnn.data.dataset import FashionDataset
    from maskrcnn.engine.validation import skipped_images

    good = tmp_path / "good.png"
    Image.new("RGB", (8, 6)).save(good)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    records = [{"file_name": str(broken), "image_id": 7, "height": 6, "width": 8, "annotations": []},
               {"file_name": str(good), "image_id": 8, "height": 6, "width": 8, "annotations": []}]
    dataset = FashionDataset(records)
    with pytest.warns(UserWarning, match="broken.jpg: cannot decode the image"):
        image, target = dataset[0]
    assert target["image_id"] == 8
    [entry] = skipped_images(dataset)
    assert (entry["image_id"], entry["file_name"]) == (7, str(broken))
    assert entry["reason"] == "cannot decode the image (OSError: Truncated File Read)"


def test_prediction_overlays_decode_like_training(tmp_path):
    from maskrcnn.engine.validation import write_overlays

    gray16 = tmp_path / "gray16.png"
    Image.fromarray(np.full((400, 600), 32768, dtype=np.uint16)).save(gray16)
    rgba = tmp_path / "rgba.png"
    pixels = np.zeros((400, 600, 4), dtype=np.uint8)
    pixels[..., 0] = 255  # pure red, fully transparent: training composites it on white
    Image.fromarray(pixels, "RGBA").save(rgba)
    records = [{"file_name": str(gray16), "image_id": 1, "height": 400, "width": 600, "annotations": []},
               {"file_name": str(rgba), "image_id": 2, "height": 400, "width": 600, "annotations": []}]
    empty = {"boxes": [], "labels": [], "scores": [], "masks": None}
    paths = write_overlays(str(tmp_path / "overlays"), records, [dict(empty, image_id=1), dict(empty, image_id=2)],
                           CLASS_NAMES)
    assert Image.open(paths[0]).convert("RGB").getpixel((300, 200)) == (128, 128, 128)  # not white
    assert Image.open(paths[1]).convert("RGB").getpixel((300, 200)) == (255, 255, 255)  # not red

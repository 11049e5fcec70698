"""Fashionpedia's AP_IoU+F1 (maskrcnn/engine/fashionpedia_eval.py): hand-computed F1 and AP literals, the
official matching quirk, and pycocotools' COCOeval as an independent reference when every F1 test passes."""
import contextlib
import io

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from maskrcnn.engine.coco_format import coco_results, encode_masks, records_to_coco
from maskrcnn.engine.fashionpedia_eval import (IOU_THRESHOLDS, binary_macro_f1, evaluate_fashionpedia,
                                               fashionpedia_ap, format_fashionpedia_report, match_detections)

SIZE = 64


def multi_hot(ids, vocabulary=4):
    row = np.zeros(vocabulary, dtype=bool)
    row[list(ids)] = True
    return row


@pytest.mark.parametrize("truth, predicted, vocabulary, expected", [
    ([], [], 4, 1.0),                    # only the value 0 occurs, and agrees everywhere
    ([0, 1, 2, 3], [0, 1, 2, 3], 4, 1.0),  # only the value 1 occurs
    ([0], [], 4, 3 / 7),                 # F1_1 = 0; F1_0 = 2*3 / (3 + 4) = 6/7
    ([], [0], 4, 3 / 7),                 # the same, one-sided the other way
    ([0, 1], [0], 4, 11 / 15),           # F1_1 = 2*1 / (2 + 1) = 2/3; F1_0 = 2*2 / (2 + 3) = 4/5
    ([0, 1, 2], [0, 1, 2, 3], 4, 3 / 7),  # F1_1 = 2*3 / (3 + 4) = 6/7; F1_0 = 0 / (1 + 0) = 0
    ([0, 1, 2, 3], [], 4, 0.0),          # both values occur, neither has a true positive
    ([0], [1], 2, 0.0),
    ([3], [3], 294, 1.0),
    ([3], [], 294, (0 + 2 * 293 / (293 + 294)) / 2),  # a large vocabulary: F1 ~ (1 + F1_1) / 2, just below 0.5
])
def test_binary_macro_f1_literals(truth, predicted, vocabulary, expected):
    f1 = binary_macro_f1(multi_hot(truth, vocabulary)[None], multi_hot(predicted, vocabulary)[None])
    assert f1.shape == (1, 1) and f1[0, 0] == pytest.approx(expected, abs=1e-15)


def test_binary_macro_f1_is_detections_by_objects():
    truth = np.stack([multi_hot([0]), multi_hot([0, 1]), multi_hot([])])     # (G=3, V=4)
    predicted = np.stack([multi_hot([0]), multi_hot([])])                      # (D=2, V=4)
    expected = [[1.0, 11 / 15, 3 / 7], [3 / 7, (0 + 2 * 2 / (2 + 4)) / 2, 1.0]]
    assert binary_macro_f1(truth, predicted) == pytest.approx(np.array(expected), abs=1e-15)


def test_matching_quirk_a_later_object_must_beat_both_iou_and_f1():
    # one detection, two objects: the first passes with IoU 0.6 and F1 1.0, the second has the higher IoU
    # 0.9 but F1 0.8. The official loop raises both bars to (0.6, 1.0) after the first, so the second
    # loses wherever the first passes; COCOeval (IoU only) would take the second.
    no_crowd = np.zeros(2, dtype=bool)
    matches = match_detections(np.array([[0.6, 0.9]]), np.array([[1.0, 0.8]]), no_crowd, no_crowd, False)
    t, f = np.indices((10, 10))
    # IoU bars 0.50-0.60 (t <= 2): the first object; 0.65-0.90: the second if the F1 bar <= 0.80 (f <= 6)
    expected = np.where(t <= 2, 0, np.where((t <= 8) & (f <= 6), 1, -1))
    assert matches.shape == (10, 10, 1) and (matches[:, :, 0] == expected).all()
    iou_only = match_detections(np.array([[0.6, 0.9]]), None, no_crowd, no_crowd, True)
    assert iou_only.shape == (10, 1, 1) and iou_only[:, 0, 0].tolist() == [1] * 9 + [-1]
    # the object order decides: listed first, the (0.9, 0.8) object wins wherever it passes both bars
    swapped = match_detections(np.array([[0.9, 0.6]]), np.array([[0.8, 1.0]]), no_crowd, no_crowd, False)
    expected = np.where((t <= 8) & (f <= 6), 0, np.where(t <= 2, 1, -1))
    assert (swapped[:, :, 0] == expected).all()


def test_crowd_rematch_only_in_cocoeval_loop():
    crowd = np.array([True])
    ious = np.array([[0.7], [0.7]])  # two detections inside one crowd region
    cocoeval = match_detections(ious, None, crowd, crowd, crowd_rematch=True)
    official = match_detections(ious, np.ones((2, 1)), crowd, crowd, crowd_rematch=False)
    assert cocoeval[0, 0].tolist() == [0, 0]
    assert official[0, 0].tolist() == [0, -1]


def box_mask(box):
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
    x1, y1, x2, y2 = box
    mask[y1:y2, x1:x2] = 1
    return mask


def rle(box):
    return encode_masks(box_mask(box)[None])[0]


def gt(box, label, ids=(), iscrowd=0):
    return {"bbox": list(box), "category_id": label, "segmentation": rle(box), "iscrowd": iscrowd,
            "attribute_ids": list(ids)}


def prediction(image_id, detections):
    boxes, labels, scores, attribute_scores = zip(*detections)
    return {"image_id": image_id, "boxes": [list(map(float, b)) for b in boxes], "labels": list(labels),
            "scores": list(scores), "masks": [rle(b) for b in boxes], "attribute_scores": list(attribute_scores)}


def hand_built_case():
    """Two images, category 1 with attributes (source ids 10-13), category 2 without (module test doc)."""
    records = [
        {"image_id": 1, "height": SIZE, "width": SIZE, "annotations": [
            gt([0, 0, 10, 10], 1, [10]),         # A
            gt([20, 0, 40, 10], 1, [10, 11]),    # B
            gt([0, 20, 25, 30], 2)]},            # C, no attributes
        {"image_id": 2, "height": SIZE, "width": SIZE, "annotations": [gt([0, 0, 10, 10], 2)]},  # E, missed
    ]
    encoded = [
        prediction(1, [([0, 0, 10, 10], 1, 0.9, [0.9, 0.1, 0.1, 0.1]),    # d1 on A: IoU 1, F1 1
                       ([20, 0, 39, 8], 1, 0.8, [0.5, 0.49, 0.2, 0.1]),   # d2 on B: IoU 152/200, F1 11/15
                       ([0, 20, 23, 30], 2, 0.7, [0.1, 0.1, 0.1, 0.1])]),  # d3 on C: IoU 230/250
        prediction(2, [([50, 50, 60, 60], 1, 0.85, [0.9, 0.1, 0.1, 0.1])]),  # d4: no category-1 object
    ]
    return records, encoded


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_hand_built_ap_iou_f1(iou_type):
    # Category 1 (2 objects), detections by score d1 (TP), d4 (FP), d2. d2 passes the IoU bars 0.50-0.75
    # (IoU 0.76) and the F1 bars 0.50-0.70 (F1 0.733; 0.5 >= the 0.5 threshold predicts attribute 10):
    #   d2 TP: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1 -> interpolated 1 at recall 0-0.5 (51 points),
    #          2/3 at 0.51-1 (50 points): AP = (51 + 50 * 2/3) / 101, in 6 x 5 = 30 of the 100 (t, f) pairs;
    #   d2 FP: recall reaches 1/2 with precision 1: AP = 51/101 in the other 70.
    # Category 2 (no attributes, 2 objects, one missed): d3 TP for the IoU bars 0.50-0.90 (IoU 0.92): 51/101
    #   in 9 entries, 0 at 0.95.  Entries: 100 of category 1 and 10 of category 2.
    both, one = (51 + 50 * 2 / 3) / 101, 51 / 101
    records, encoded = hand_built_case()
    report = fashionpedia_ap(records, encoded, {10: 0, 11: 1, 12: 2, 13: 3}, threshold=0.5, iou_type=iou_type)
    assert report["AP_IoU+F1"] == pytest.approx((30 * both + 70 * one + 9 * one) / 110, abs=1e-12)
    assert report["AP_IoU50_F150"] == pytest.approx((both + one) / 2, abs=1e-12)
    assert report["AP_IoU75_F150"] == pytest.approx((both + one) / 2, abs=1e-12)
    assert report["AP_IoU50_F175"] == pytest.approx(one, abs=1e-12)
    assert report["AP_IoU75_F175"] == pytest.approx(one, abs=1e-12)
    assert report["categories_with_attributes"] == [1] and report["num_categories"] == 2
    # a table without attribute 11 drops it from B (B = {10}): F1 1, d2 TP in all 60 pairs with t <= 0.75
    narrow_encoded = [{**p, "attribute_scores": [row[:1] + row[2:] for row in p["attribute_scores"]]}
                      for p in encoded]
    narrow = fashionpedia_ap(records, narrow_encoded, {10: 0, 12: 1, 13: 2}, threshold=0.5, iou_type=iou_type)
    assert narrow["AP_IoU+F1"] == pytest.approx((60 * both + 40 * one + 9 * one) / 110, abs=1e-12)


def random_case(seed, all_with_attributes):
    """Images with rectangles of 3 categories, jittered detections (some of another class, some spurious),
    scores on a 0.1 grid (ties across images). Every attributed object has {10}, every detection predicts
    {10}: every F1 is 1. Without ``all_with_attributes`` category 3 has no attributes and a crowd region."""
    rng = np.random.default_rng(seed)
    records, encoded = [], []
    for image_id in range(1, 9):
        annotations, detections = [], []
        for _ in range(rng.integers(0, 5)):
            x, y = rng.integers(0, 40, size=2)
            box = [int(x), int(y), int(x + rng.integers(6, 24)), int(y + rng.integers(6, 24))]
            label = int(rng.integers(1, 4))
            has = all_with_attributes or label != 3
            annotations.append(gt(box, label, [10] if has else []))
            if rng.random() < 0.8:
                jitter = rng.integers(-2, 3, size=4)
                found = [min(max(v + int(j), 0), SIZE) for v, j in zip(box, jitter)]
                if found[2] > found[0] and found[3] > found[1]:
                    other = label if rng.random() < 0.85 else int(rng.integers(1, 4))
                    detections.append((found, other, round(float(rng.random()), 1), [0.9, 0.2]))
        for _ in range(rng.integers(0, 3)):
            x, y = rng.integers(0, 50, size=2)
            detections.append(([int(x), int(y), int(x) + 12, int(y) + 12], int(rng.integers(1, 4)),
                               round(float(rng.random()), 1), [0.7, 0.4]))
        if not all_with_attributes and image_id == 3:
            annotations.append(gt([30, 30, 60, 60], 3, iscrowd=1))
            detections += [([32, 32, 44, 44], 3, 0.6, [0.1, 0.1]), ([46, 46, 58, 58], 3, 0.5, [0.1, 0.1])]
        records.append({"image_id": image_id, "height": SIZE, "width": SIZE, "annotations": annotations})
        if detections:
            encoded.append(prediction(image_id, detections))
    return records, encoded


def cocoeval_precision(records, encoded, iou_type):
    """pycocotools' precision table (T, R, K) at area 'all', maxDets 100, and its stats."""
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO()
        ground_truth.dataset = records_to_coco(records, ["a", "b", "c"])
        ground_truth.createIndex()
        evaluation = COCOeval(ground_truth, ground_truth.loadRes(coco_results(encoded, iou_type)), iou_type)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation.eval["precision"][:, :, :, 0, 2], evaluation.stats


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_perfect_attributes_equal_cocoeval_ap(iou_type):
    records, encoded = random_case(seed=3, all_with_attributes=True)
    report = fashionpedia_ap(records, encoded, {10: 0, 11: 1}, threshold=0.5, iou_type=iou_type)
    _, stats = cocoeval_precision(records, encoded, iou_type)
    assert 0.2 < stats[0] < 0.9 and stats[1] > stats[2] > 0  # a case with hits and misses
    assert report["categories_with_attributes"] == [1, 2, 3]
    # every category has attributes and every F1 passes: the mean over (t, f, c) is COCO's mean over (t, c)
    assert report["AP_IoU+F1"] == pytest.approx(stats[0], abs=1e-12)
    assert report["AP_IoU50_F150"] == pytest.approx(stats[1], abs=1e-12)
    assert report["AP_IoU75_F175"] == pytest.approx(stats[2], abs=1e-12)


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_category_without_attributes_weighs_one_tenth(iou_type):
    records, encoded = random_case(seed=4, all_with_attributes=False)
    report = fashionpedia_ap(records, encoded, {10: 0, 11: 1}, threshold=0.5, iou_type=iou_type)
    precision, _ = cocoeval_precision(records, encoded, iou_type)  # (T, R, K)
    assert report["categories_with_attributes"] == [1, 2]
    # category 3 (with its crowd region, matched by COCOeval's rules) enters once, 1 and 2 once per F1 bar
    entries = [precision[:, :, k] for k in (0, 1) for _ in range(10)] + [precision[:, :, 2]]
    values = np.stack(entries)
    assert report["AP_IoU+F1"] == pytest.approx(values[values > -1].mean(), abs=1e-12)
    # one threshold pair: one entry per category, with attributes or not
    at_half = precision[0]  # (R, K) at IoU 0.5
    assert report["AP_IoU50_F150"] == pytest.approx(at_half[at_half > -1].mean(), abs=1e-12)
    assert abs(report["AP_IoU+F1"] - precision[precision > -1].mean()) > 0.01  # the weighting matters here


def test_report_and_format():
    records, encoded = hand_built_case()
    reports = evaluate_fashionpedia(records, encoded, {10: 0, 11: 1, 12: 2, 13: 3}, 0.5, ["segm", "bbox"])
    assert list(reports) == ["segm", "bbox"]
    line = format_fashionpedia_report({"segm": reports["segm"]})
    assert line == (f"Fashionpedia segm AP_IoU+F1 {reports['segm']['AP_IoU+F1']:.3f} (IoU50_F150 0.670, "
                    "IoU50_F175 0.505, IoU75_F150 0.670, IoU75_F175 0.505) over 2 categories, 1 with attributes")
    boxes_only = [{**p, "masks": None} for p in encoded]
    assert list(evaluate_fashionpedia(records, boxes_only, {10: 0, 11: 1, 12: 2, 13: 3}, 0.5, ["segm", "bbox"])
                ) == ["bbox"]
    # a skipped image leaves with its objects and detections: no d4, no E. At (0.50, 0.75) category 1 has
    # d1 TP, d2 FP (AP 51/101) and category 2 finds its only object (AP 1)
    skipped = fashionpedia_ap(records, encoded, {10: 0, 11: 1, 12: 2, 13: 3}, 0.5, "bbox", skipped_ids=[2])
    assert skipped["AP_IoU50_F175"] == pytest.approx((51 / 101 + 1) / 2, abs=1e-12)
    assert IOU_THRESHOLDS[5] == 0.75

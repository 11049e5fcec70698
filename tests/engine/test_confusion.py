"""Confusion matrix at IoU 0.5 with a background row and column, on hand-made cases."""
import json
import os

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from maskrcnn.engine.coco_format import encode_masks, prepare_coco_ground_truth
from maskrcnn.engine.confusion import confusion_matrix, normalize_rows

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "fixtures", "eval", "small_gt.json")


def _gt(objects, height=120, width=120, image_id=1):
    """One image with ``objects`` = [(class, [x1, y1, x2, y2], iscrowd)]."""
    return prepare_coco_ground_truth({
        "images": [{"id": image_id, "height": height, "width": width}],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
        "annotations": [{"image_id": image_id, "category_id": c, "iscrowd": crowd,
                         "bbox": [x1, y1, x2 - x1, y2 - y1]} for c, (x1, y1, x2, y2), crowd in objects],
    })


def _pred(detections, image_id=1):
    """Encoded prediction from [(class, [x1, y1, x2, y2], score)], without masks."""
    return {"encoded": True, "image_id": image_id, "boxes": [list(map(float, b)) for _, b, _ in detections],
            "labels": [c for c, _, _ in detections], "scores": [s for _, _, s in detections], "masks": None}


def test_hand_made_case():
    gt = _gt([
        (1, [0, 0, 10, 10], 0),      # A
        (2, [20, 20, 30, 30], 0),    # B
        (1, [40, 40, 50, 50], 0),    # C
        (1, [80, 80, 100, 100], 1),  # crowd region
    ])
    pred = _pred([
        (1, [0, 0, 10, 10], 0.9),    # on A, right class           -> [1, 1]
        (1, [20, 20, 30, 30], 0.8),  # on B, wrong class           -> [2, 1]
        (2, [60, 60, 70, 70], 0.7),  # on nothing                  -> [0, 2]
        (2, [0, 0, 10, 10], 0.6),    # on A again, A already taken -> [0, 2]
        (1, [40, 40, 50, 50], 0.3),  # on C but below score 0.5    -> dropped, so C is missed -> [1, 0]
        (1, [85, 85, 95, 95], 0.9),  # inside the crowd region     -> ignored
    ])
    matrix = confusion_matrix(gt, [pred], num_classes=2, iou_thresh=0.5, score_thresh=0.5, iou_type="bbox")
    expected = [[0, 0, 2],
                [1, 1, 0],
                [0, 1, 0]]
    np.testing.assert_array_equal(matrix, expected)
    assert matrix.dtype == np.int64
    # Lowering the score threshold lets the 0.3 detection find C.
    low = confusion_matrix(gt, [pred], num_classes=2, score_thresh=0.2)
    np.testing.assert_array_equal(low, [[0, 0, 2], [0, 2, 0], [0, 1, 0]])


def test_greedy_by_score_and_iou_threshold():
    # Object [0, 0, 10, 10]. The 0.9 detection overlaps it with IoU 50/100 = 0.5 (matches at >= 0.5);
    # the 0.8 detection overlaps it exactly, but the object is already taken, so it is a false positive.
    gt = _gt([(1, [0, 0, 10, 10], 0)])
    pred = _pred([(2, [0, 0, 10, 5], 0.9), (1, [0, 0, 10, 10], 0.8)])
    np.testing.assert_array_equal(confusion_matrix(gt, [pred], 2), [[0, 1, 0], [0, 0, 1], [0, 0, 0]])
    # At IoU 0.6 the first detection no longer matches: the second one takes the object.
    np.testing.assert_array_equal(confusion_matrix(gt, [pred], 2, iou_thresh=0.6), [[0, 0, 1], [0, 1, 0], [0, 0, 0]])


def test_each_detection_takes_its_best_overlap():
    # Two objects side by side; a detection overlapping the second more (IoU 0.8 vs 0) takes the second.
    gt = _gt([(1, [0, 0, 10, 10], 0), (2, [10, 0, 20, 10], 0)])
    pred = _pred([(2, [12, 0, 20, 10], 0.9)])
    np.testing.assert_array_equal(confusion_matrix(gt, [pred], 2), [[0, 0, 0], [1, 0, 0], [0, 0, 1]])


def test_image_without_prediction_and_empty_image():
    gt = _gt([(2, [0, 0, 10, 10], 0)])
    np.testing.assert_array_equal(confusion_matrix(gt, [], 2), [[0, 0, 0], [0, 0, 0], [1, 0, 0]])
    empty = _gt([])
    pred = _pred([(1, [0, 0, 10, 10], 0.9)])
    np.testing.assert_array_equal(confusion_matrix(empty, [pred], 2), [[0, 1, 0], [0, 0, 0], [0, 0, 0]])


def test_mask_iou_on_the_fixture():
    # Image 2 of the fixture: object 2 ("top", 314 px) and object 3 ("skirt", 85 px) plus a crowd region.
    with open(FIXTURE) as f:
        gt = prepare_coco_ground_truth(json.load(f))
    top = mask_utils.decode(gt["annotations"][2]["segmentation"]).astype(np.float32)
    half_top = top.copy()
    half_top[:, 19:] = 0  # keeps the columns 8..18 of the rows 5..19: 11 * 15 = 165 px inside 314 -> IoU 0.525
    assert half_top.sum() == 165
    quarter_top = top.copy()
    quarter_top[:, 14:] = 0  # 6 * 15 = 90 px -> IoU 90 / 314 = 0.287
    masks = np.stack([half_top, quarter_top])[:, None]  # (2, 1, 50, 50)
    pred = {"encoded": True, "image_id": 2, "boxes": [[8, 5, 19, 20], [8, 5, 14, 20]], "labels": [1, 2],
            "scores": [0.9, 0.95], "masks": encode_masks(masks)}
    matrix = confusion_matrix(gt, [pred], 3, iou_type="segm")
    # quarter (0.95, class 2): IoU 0.287 < 0.5 -> false positive of class 2; half (0.9, class 1) finds the top.
    # The skirt of image 2 and both objects of image 1 are missed.
    expected = np.zeros((4, 4), dtype=np.int64)
    expected[0, 2] = 1
    expected[1, 1] = 1
    expected[1, 0] = 1  # image 1's top
    expected[2, 0] = 2  # image 1's skirt and image 2's skirt
    np.testing.assert_array_equal(matrix, expected)


def test_normalize_rows():
    m = np.array([[0, 1, 3], [2, 2, 0], [0, 0, 0]])
    np.testing.assert_allclose(normalize_rows(m), [[0, 0.25, 0.75], [0.5, 0.5, 0], [0, 0, 0]])


def test_errors_name_the_problem():
    gt = _gt([(1, [0, 0, 10, 10], 0)])
    with pytest.raises(ValueError, match="image_id 5"):
        confusion_matrix(gt, [_pred([], image_id=5)], 2)
    with pytest.raises(ValueError, match="label 3 outside 1..2"):
        confusion_matrix(gt, [_pred([(3, [0, 0, 1, 1], 0.9)])], 2)
    with pytest.raises(ValueError, match="has no masks"):
        confusion_matrix(gt, [_pred([(1, [0, 0, 1, 1], 0.9)])], 2, iou_type="segm")

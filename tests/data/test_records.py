"""The common record and its mask/box helpers, against hand-computed masks and boxes."""
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as coco_mask

from maskrcnn.data.problems import DataError, DataWarning, Problems, clean_box, clean_segmentation
from maskrcnn.data.records import (
    mask_to_box,
    masks_to_boxes,
    polygons_to_box,
    read_image_size,
    segmentation_area,
    segmentation_box,
    segmentation_to_mask,
    validate_record,
    xywh_to_xyxy,
)


def rectangle(height, width, x1, y1, x2, y2):
    """Hand-made mask: pixels x1..x2-1, y1..y2-1 set."""
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[y1:y2, x1:x2] = 1
    return mask


def test_polygon_rectangle_covers_whole_pixels():
    mask = segmentation_to_mask([[0, 0, 4, 0, 4, 3, 0, 3]], 5, 6)
    assert mask.dtype == np.uint8 and mask.shape == (5, 6)
    np.testing.assert_array_equal(mask, rectangle(5, 6, 0, 0, 4, 3))


def test_l_shaped_polygon():
    # rows 40..44 x cols 20..29 plus rows 45..49 x cols 25..29 = 50 + 25 pixels
    mask = segmentation_to_mask([[20, 40, 30, 40, 30, 50, 25, 50, 25, 45, 20, 45]], 60, 40)
    expected = rectangle(60, 40, 20, 40, 30, 45) | rectangle(60, 40, 25, 45, 30, 50)
    np.testing.assert_array_equal(mask, expected)
    assert segmentation_area([[20, 40, 30, 40, 30, 50, 25, 50, 25, 45, 20, 45]], 60, 40) == 75


def test_several_polygons_are_united():
    polygons = [[1, 1, 3, 1, 3, 4, 1, 4], [5, 0, 7, 0, 7, 2, 5, 2]]
    expected = rectangle(6, 8, 1, 1, 3, 4) | rectangle(6, 8, 5, 0, 7, 2)
    np.testing.assert_array_equal(segmentation_to_mask(polygons, 6, 8), expected)


def test_uncompressed_rle_hand_counts():
    # [[1,0,0,0],[1,1,0,0],[0,0,0,0]] column-major: 1 1 0 | 0 1 0 | 0 0 0 | 0 0 0 -> zeros 0, ones 2,
    # zeros 2, ones 1, zeros 7.
    mask = segmentation_to_mask({"size": [3, 4], "counts": [0, 2, 2, 1, 7]}, 3, 4)
    np.testing.assert_array_equal(mask, [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]])


def test_compressed_rle_str_and_bytes():
    expected = rectangle(24, 16, 2, 4, 6, 10)
    encoded = coco_mask.encode(np.asfortranarray(expected))
    as_str = {"size": [24, 16], "counts": encoded["counts"].decode("ascii")}
    np.testing.assert_array_equal(segmentation_to_mask(as_str, 24, 16), expected)
    np.testing.assert_array_equal(segmentation_to_mask(encoded, 24, 16), expected)


@pytest.mark.parametrize("segmentation, message", [
    ([[1, 1, 5, 5]], "fewer than 3 points"),           # pycocotools would read this as a box
    ([[1, 1, 5, 5, 3]], "odd number"),
    ([], "non-empty list"),
    ({"size": [10, 10], "counts": [0, 100]}, "wrong size"),
    ({"size": [3, 4], "counts": [0, 2, 2]}, "sum to 4"),
])
def test_bad_segmentation_raises_naming_the_field(segmentation, message):
    with pytest.raises(ValueError, match=message) as info:
        segmentation_to_mask(segmentation, 3, 4, where="x.json: annotations[2].segmentation")
    assert str(info.value).startswith("x.json: annotations[2].segmentation")


def test_mask_to_box_whole_pixel_rule():
    mask = np.zeros((5, 7), dtype=np.uint8)
    mask[1, 2] = mask[3, 5] = 1  # x 2..5, y 1..3
    np.testing.assert_array_equal(mask_to_box(mask), [2, 1, 6, 4])
    assert mask_to_box(mask).dtype == np.float32
    np.testing.assert_array_equal(mask_to_box(np.zeros((3, 3))), [0, 0, 0, 0])
    np.testing.assert_array_equal(mask_to_box(np.ones((3, 4))), [0, 0, 4, 3])


def test_masks_to_boxes_numpy_and_torch_agree_with_hand_values():
    masks = np.zeros((3, 4, 6), dtype=np.uint8)
    masks[0, 1, 2] = masks[0, 0, 5] = 1      # x 2..5, y 0..1 -> [2, 0, 6, 2]
    masks[2, :, 0] = 1                       # column 0 -> [0, 0, 1, 4]; masks[1] empty
    expected = [[2, 0, 6, 2], [0, 0, 0, 0], [0, 0, 1, 4]]
    np.testing.assert_array_equal(masks_to_boxes(masks), expected)
    boxes = masks_to_boxes(torch.from_numpy(masks).bool())
    assert boxes.dtype == torch.float32
    np.testing.assert_array_equal(boxes.numpy(), expected)
    assert masks_to_boxes(torch.zeros(0, 4, 6)).shape == (0, 4)


def test_polygon_box_equals_rasterized_mask_box():
    polygons = [[3, 2, 9, 2, 9, 7, 6, 7, 6, 5, 3, 5]]
    assert polygons_to_box(polygons) == [3, 2, 9, 7]
    np.testing.assert_array_equal(mask_to_box(segmentation_to_mask(polygons, 10, 12)), [3, 2, 9, 7])


def test_xywh_to_xyxy():
    assert xywh_to_xyxy([10, 20, 5, 7]) == [10.0, 20.0, 15.0, 27.0]


def good_record():
    return {"file_name": "a.jpg", "image_id": 3, "height": 6, "width": 8, "annotations": [
        {"bbox": [1.0, 1.0, 3.0, 4.0], "category_id": 2, "segmentation": [[1, 1, 3, 1, 3, 4, 1, 4]],
         "iscrowd": 0}]}


@pytest.mark.parametrize("edit, field", [
    (lambda r: r.pop("height"), "rec.height: missing"),
    (lambda r: r.update(width=0), "rec.width"),
    (lambda r: r["annotations"][0].update(bbox=[1, 1, 3]), "rec.annotations[0].bbox"),
    (lambda r: r["annotations"][0].update(bbox=[3, 1, 3, 4]), "rec.annotations[0].bbox: degenerate"),
    (lambda r: r["annotations"][0].update(category_id=0), "rec.annotations[0].category_id"),
    (lambda r: r["annotations"][0].update(segmentation=[[1, 1, 2, 2]]), "rec.annotations[0].segmentation[0]"),
    (lambda r: r["annotations"][0].update(segmentation={"size": [5, 8], "counts": "x"}),
     "rec.annotations[0].segmentation.size"),
])
def test_validate_record_names_the_field(edit, field):
    validate_record(good_record(), "rec")
    record = good_record()
    edit(record)
    with pytest.raises(ValueError) as info:
        validate_record(record, "rec")
    assert str(info.value).startswith(field)


def test_read_image_size_honours_exif_rotation(tmp_path):
    image = Image.new("RGB", (8, 4))  # width 8, height 4 as stored
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    image.save(tmp_path / "rotated.jpg", exif=exif.tobytes())
    image.save(tmp_path / "plain.jpg")
    assert read_image_size(tmp_path / "plain.jpg") == (4, 8)
    assert read_image_size(tmp_path / "rotated.jpg") == (8, 4)


def test_problems_modes():
    with pytest.raises(DataError, match="f.json: annotations\\[1\\].bbox: bad"):
        Problems("raise").report("f.json: annotations[1].bbox", "bad")
    warn = Problems("warn")
    with pytest.warns(DataWarning, match="f.json: x: bad \\(skipped\\)"):
        warn.report("f.json: x", "bad")
    assert len(warn) == 1
    collect = Problems("collect")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        collect.report("a", "b")
    assert [str(p) for p in collect] == ["a: b"]
    with pytest.raises(ValueError, match="mode"):
        Problems("loud")


def test_clean_box_converts_clips_and_reports():
    problems = Problems("collect")
    assert clean_box([2, 3, 4, 5], "xywh", 10, 10, "w", problems) == [2, 3, 6, 8]
    assert clean_box([2, 3, 4, 5], "xyxy", 10, 10, "w", problems) == [2, 3, 4, 5]
    assert clean_box([-2, 3, 14, 5], "xyxy", 10, 10, "w", problems) == [0, 3, 10, 5]  # clipped
    assert len(problems) == 0
    assert clean_box([-2, 3, 14, 5], "xyxy", 10, 10, "w", problems, clip=False) == [-2, 3, 14, 5]
    assert clean_box([20, 3, 4, 5], "xywh", 10, 10, "w", problems) is None   # wholly outside
    assert clean_box([2, 3, 0, 5], "xywh", 10, 10, "w", problems) is None    # degenerate
    assert clean_box([2, 3, 4], "xywh", 10, 10, "w", problems) is None
    messages = [p.message for p in problems]
    assert "out-of-image box" in messages[0] and "outside the 10x10 image" in messages[1]
    assert "degenerate" in messages[2] and messages[3] == "expected 4 numbers, got 3"


def test_clean_segmentation_drops_bad_polygons_only():
    problems = Problems("collect")
    kept = clean_segmentation([[0, 0, 4, 0, 4, 4], [1, 1, 2, 2]], 5, 5, "s", problems)
    assert kept == [[0.0, 0.0, 4.0, 0.0, 4.0, 4.0]]
    assert [str(p) for p in problems] == ["s[1]: polygon with fewer than 3 points (2)"]
    assert clean_segmentation([[1, 1, 2, 2]], 5, 5, "t", problems) is None
    # pycocotools' encoding of a 5x5 mask with rows 1-2, columns 1-3 set: runs 6 2 3 2 3 2 7 (sum 25).
    rle = clean_segmentation({"size": [5, 5], "counts": b"6230004"}, 5, 5, "u", problems)
    assert rle == {"size": [5, 5], "counts": "6230004"}


def test_segmentation_box_from_runs_equals_the_decoded_mask_box():
    rng = np.random.default_rng(7)
    for _ in range(100):
        height, width = (int(v) for v in rng.integers(1, 30, size=2))
        mask = (rng.random((height, width)) < rng.random() * 0.3).astype(np.uint8)
        rle = coco_mask.encode(np.asfortranarray(mask))
        assert segmentation_box(rle, height, width) == mask_to_box(mask).tolist()
    polygon = [[3, 2, 9, 2, 9, 7, 6, 7, 6, 5, 3, 5]]
    assert segmentation_box(polygon, 10, 12) == [3.0, 2.0, 9.0, 7.0]
    assert segmentation_box({"size": [3, 4], "counts": [12]}, 3, 4) == [0.0, 0.0, 0.0, 0.0]

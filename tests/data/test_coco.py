"""COCO-style JSON adapter on the hand-written ModaNet and Fashionpedia fixtures (hand-computed values)."""
import json
import os
import warnings

import numpy as np
import pytest

from maskrcnn.data import DataError, DataWarning, Problems, load_dataset, load_records, validate_record
from maskrcnn.data.records import segmentation_to_mask

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "data")
MODANET_JSON = os.path.join(FIXTURES, "modanet", "modanet2018_instances_train.json")
MODANET_IMAGES = os.path.join(FIXTURES, "modanet", "images")
FASHIONPEDIA_JSON = os.path.join(FIXTURES, "fashionpedia", "instances_attributes_val2020.json")
FASHIONPEDIA_IMAGES = os.path.join(FIXTURES, "fashionpedia", "images")
MODANET_NAMES = ["bag", "belt", "boots", "footwear", "outer", "dress", "sunglasses", "pants", "top",
                 "shorts", "skirt", "headwear", "scarf & tie"]


def rectangle(height, width, x1, y1, x2, y2):
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[y1:y2, x1:x2] = 1
    return mask


def test_modanet_records_match_the_fixture():
    dataset = load_dataset("coco", MODANET_JSON, MODANET_IMAGES)
    assert dataset.class_names == MODANET_NAMES
    records = dataset.records
    assert [r["image_id"] for r in records] == [1, 2, 3]
    assert records[0]["file_name"] == os.path.join(MODANET_IMAGES, "0000001.jpg")
    assert (records[0]["height"], records[0]["width"]) == (60, 40)
    assert records[2]["annotations"] == []  # an image without instances is kept
    for record in records:
        validate_record(record)
    top, pants = records[0]["annotations"]
    assert top["bbox"] == [10.0, 10.0, 30.0, 25.0] and top["category_id"] == 9
    assert pants["bbox"] == [12.0, 26.0, 28.0, 56.0] and pants["category_id"] == 8
    legs = rectangle(60, 40, 12, 26, 20, 56) | rectangle(60, 40, 21, 26, 28, 56)
    np.testing.assert_array_equal(segmentation_to_mask(pants["segmentation"], 60, 40), legs)
    assert int(legs.sum()) == 450


def test_modanet_ids_from_zero_are_renumbered_from_one():
    records = load_records("coco", MODANET_JSON, MODANET_IMAGES)
    annotations = [a for r in records for a in r["annotations"]]
    assert [a["id"] for a in annotations] == [1, 2, 3, 4]
    assert [a["source_id"] for a in annotations] == [0, 1, 2, 3]


def test_modanet_box_that_disagrees_with_its_polygon():
    bag = load_records("coco", MODANET_JSON, MODANET_IMAGES)[1]["annotations"][0]
    assert bag["bbox"] == [5.0, 5.0, 15.0, 15.0]  # as stored: [5, 5, 10, 10] xywh
    fixed = load_records("coco", MODANET_JSON, MODANET_IMAGES, recompute_boxes=True)
    assert fixed[1]["annotations"][0]["bbox"] == [6.0, 8.0, 14.0, 20.0]  # polygon 6..14 x 8..20
    footwear = fixed[1]["annotations"][1]  # L shape: x 20..29, y 40..49 -> [20, 40, 30, 50]
    assert footwear["bbox"] == [20.0, 40.0, 30.0, 50.0]


def test_fashionpedia_polygon_rle_and_attributes():
    dataset = load_dataset("coco", FASHIONPEDIA_JSON, FASHIONPEDIA_IMAGES)
    assert len(dataset.class_names) == 46
    assert dataset.class_names[0] == "shirt, blouse" and dataset.class_names[45] == "tassel"
    (record,) = dataset.records
    assert record["image_id"] == 7 and (record["height"], record["width"]) == (24, 16)
    shirt, sleeve = record["annotations"]
    # Fashionpedia ids are 0-45: category 0 -> label 1, category 31 (sleeve) -> label 32
    assert shirt["category_id"] == 1 and dataset.class_names[shirt["category_id"] - 1] == "shirt, blouse"
    assert sleeve["category_id"] == 32 and dataset.class_names[31] == "sleeve"
    assert shirt["attribute_ids"] == [115, 136] and sleeve["attribute_ids"] == []
    assert shirt["bbox"] == [1.0, 1.0, 15.0, 12.0] and sleeve["bbox"] == [2.0, 4.0, 6.0, 10.0]
    assert isinstance(sleeve["segmentation"], dict) and isinstance(sleeve["segmentation"]["counts"], str)
    np.testing.assert_array_equal(segmentation_to_mask(sleeve["segmentation"], 24, 16),
                                  rectangle(24, 16, 2, 4, 6, 10))
    assert [a["id"] for a in record["annotations"]] == [11, 12]  # positive unique ids are kept


def test_category_configuration_through_load_records():
    records = load_records("coco", MODANET_JSON, MODANET_IMAGES, drop=["top"],
                           merge={"boots": "shoe", "footwear": "shoe"})
    dataset = load_dataset("coco", MODANET_JSON, MODANET_IMAGES, drop=["top"],
                           merge={"boots": "shoe", "footwear": "shoe"})
    assert dataset.class_names == ["bag", "belt", "shoe", "outer", "dress", "sunglasses", "pants",
                                   "shorts", "skirt", "headwear", "scarf & tie"]
    assert [a["category_id"] for a in records[0]["annotations"]] == [7]    # top dropped, pants -> 7
    assert [a["category_id"] for a in records[1]["annotations"]] == [1, 3]  # bag, footwear -> shoe


def test_uncompressed_crowd_rle(tmp_path):
    path = tmp_path / "crowd.json"
    path.write_text(json.dumps({
        "images": [{"id": 5, "file_name": "x.jpg", "height": 3, "width": 4}],
        "annotations": [{"id": 1, "image_id": 5, "category_id": 1, "iscrowd": 1, "bbox": [0, 0, 2, 2],
                         "segmentation": {"size": [3, 4], "counts": [0, 2, 2, 1, 7]}}],
        "categories": [{"id": 1, "name": "top"}]}))
    (ann,) = load_records("coco", path, tmp_path)[0]["annotations"]
    assert ann["iscrowd"] == 1
    np.testing.assert_array_equal(segmentation_to_mask(ann["segmentation"], 3, 4),
                                  [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]])


def test_missing_annotations_list_reads_as_empty(tmp_path):
    path = tmp_path / "val.json"  # ModaNet's released val JSON has no annotations
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg", "height": 6, "width": 4}],
                                "categories": [{"id": 1, "name": "bag"}]}))
    (record,) = load_records("coco", path, "")
    assert record["annotations"] == []


def test_strict_raises_naming_file_and_field(tmp_path):
    path = tmp_path / "modanet.json"
    data = json.load(open(MODANET_JSON))
    data["annotations"][2]["bbox"] = [5, 5, 10]
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"modanet.json: annotations\[2\].bbox: expected 4 numbers, got 3"):
        load_records("coco", path, MODANET_IMAGES, strict=True)
    with pytest.warns(DataWarning, match=r"annotations\[2\].bbox: expected 4 numbers, got 3 \(skipped\)"):
        records = load_records("coco", path, MODANET_IMAGES)
    assert len(records[1]["annotations"]) == 1  # the bad one skipped, the other kept
    problems = Problems("collect")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_records("coco", path, MODANET_IMAGES, problems=problems)
    assert len(problems) == 1


def test_file_level_errors(tmp_path):
    with pytest.raises(DataError, match="annotation file not found"):
        load_records("coco", tmp_path / "nope.json", "")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="bad.json: not valid JSON"):
        load_records("coco", bad, "")
    with pytest.raises(ValueError, match="format: unknown dataset format 'yolo'"):
        load_records("yolo", bad, "")


def test_load_split_reads_the_config_data_section(tmp_path):
    from maskrcnn.config import load_config
    from maskrcnn.data import load_split

    config = tmp_path / "modanet.yaml"
    config.write_text(
        "data:\n  format: coco\n"
        f"  train_annotations: {MODANET_JSON}\n  train_images: {MODANET_IMAGES}\n"
        "  drop_categories: [belt, outer, dress, sunglasses, headwear, scarf & tie, shorts, skirt]\n"
        "  merge_categories: {boots: shoe, footwear: shoe}\n"
        "  class_order: [top, pants, shoe, bag]\n"
        "  recompute_boxes: true\n")
    train = load_split(load_config(str(config)), "train")
    assert train.class_names == ["top", "pants", "shoe", "bag"]
    assert [[a["category_id"] for a in r["annotations"]] for r in train.records] == [[1, 2], [4, 3], []]
    assert train.records[1]["annotations"][0]["bbox"] == [6.0, 8.0, 14.0, 20.0]  # recomputed
    with pytest.raises(ValueError, match="data.val_annotations is not set"):
        load_split(load_config(str(config)), "val")


def _coco_with_file_names(tmp_path, names):
    data = {"images": [{"id": i + 1, "file_name": n, "height": 4, "width": 4} for i, n in enumerate(names)],
            "annotations": [], "categories": [{"id": 1, "name": "top"}]}
    path = tmp_path / "names.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_file_names_outside_the_images_folder_are_refused(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    path = _coco_with_file_names(tmp_path, ["a.jpg", "../../../../etc/hostname", "/etc/passwd", "sub/../b.jpg"])
    problems = Problems("collect")
    dataset = load_dataset("coco", path, str(images), problems=problems)
    climbed = os.path.abspath(os.path.join(str(images), "../../../../etc/hostname"))
    assert [r["file_name"] for r in dataset.records] == [os.path.join(str(images), "a.jpg"),
                                                         os.path.join(str(images), "sub/../b.jpg")]
    assert [str(p) for p in problems] == [
        f"{path}: images[1].file_name: '../../../../etc/hostname' resolves to {climbed}, outside the images "
        f"folder {images}; refused (set data.allow_outside_images=true to allow it)",
        f"{path}: images[2].file_name: '/etc/passwd' resolves to /etc/passwd, outside the images folder {images}; "
        f"refused (set data.allow_outside_images=true to allow it)"]
    allowed = load_dataset("coco", path, str(images), allow_outside_images=True)
    assert len(allowed.records) == 4
    with pytest.raises(DataError, match=r"images\[1\].file_name: '../../../../etc/hostname' resolves to"):
        load_dataset("coco", path, str(images), strict=True)


def test_without_an_images_folder_only_climbing_names_are_refused(tmp_path):
    path = _coco_with_file_names(tmp_path, ["a.jpg", "/data/b.jpg", "../c.jpg"])
    problems = Problems("collect")
    dataset = load_dataset("coco", path, "", problems=problems)
    assert [r["file_name"] for r in dataset.records] == ["a.jpg", "/data/b.jpg"]
    assert [p.where for p in problems] == [f"{path}: images[2].file_name"]

"""DeepFashion2 per-image JSON adapter on the hand-written fixture (corner boxes, polygons, mask area)."""
import json
import os
import shutil

import numpy as np
import pytest

from maskrcnn.data import DataError, Problems, load_dataset, load_records, segmentation_area
from maskrcnn.data.deepfashion2 import item_keys
from maskrcnn.data.records import segmentation_to_mask

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "data", "deepfashion2")
ANNOS = os.path.join(FIXTURES, "annos")
IMAGES = os.path.join(FIXTURES, "image")


def test_fixture_records():
    dataset = load_dataset("deepfashion2", ANNOS, IMAGES)
    assert len(dataset.class_names) == 13
    assert dataset.class_names[0] == "short sleeve top" and dataset.class_names[12] == "sling dress"
    first, second = dataset.records
    assert (first["image_id"], first["height"], first["width"]) == (1, 40, 30)  # size read from the jpg
    assert first["file_name"] == os.path.join(IMAGES, "000001.jpg")
    assert (first["source"], first["pair_id"], second["source"]) == ("user", 1, "shop")
    top, trousers = first["annotations"]
    assert (top["category_id"], top["bbox"], top["id"]) == (1, [4.0, 5.0, 24.0, 20.0], 1)
    assert (trousers["category_id"], trousers["bbox"], trousers["id"]) == (8, [6.0, 21.0, 23.0, 39.0], 2)
    assert (trousers["style"], trousers["occlusion"], trousers["zoom_in"]) == (1, 2, 1)
    (skirt,) = second["annotations"]
    assert (skirt["category_id"], skirt["bbox"], skirt["id"]) == (9, [2.0, 2.0, 18.0, 10.0], 3)


def test_mask_area_is_not_the_box_area():
    trousers = load_records("deepfashion2", ANNOS, IMAGES)[0]["annotations"][1]
    legs = np.zeros((40, 30), dtype=np.uint8)
    legs[21:39, 6:14] = 1
    legs[21:39, 15:23] = 1
    np.testing.assert_array_equal(segmentation_to_mask(trousers["segmentation"], 40, 30), legs)
    assert segmentation_area(trousers["segmentation"], 40, 30) == 288  # 2 x 8 x 18
    x1, y1, x2, y2 = trousers["bbox"]
    assert (x2 - x1) * (y2 - y1) == 306                                 # 17 x 18


def test_item_keys_in_numeric_order():
    assert item_keys({"item10": 0, "source": 0, "item2": 0, "item1": 0, "pair_id": 0}) == ["item1", "item2", "item10"]


def test_problems_are_named(tmp_path):
    annos, images = tmp_path / "annos", tmp_path / "image"
    shutil.copytree(ANNOS, annos)
    shutil.copytree(IMAGES, images)
    data = json.load(open(annos / "000001.json"))
    data["item2"]["category_name"] = "skirt"          # does not match category_id 8
    data["item1"]["segmentation"] = [[4, 5, 24, 5]]   # 2 points
    json.dump(data, open(annos / "000001.json", "w"))
    (annos / "000003.json").write_text(json.dumps({"source": "user", "pair_id": 2}))  # no image
    problems = Problems("collect")
    records = load_records("deepfashion2", annos, images, problems=problems)
    assert [len(r["annotations"]) for r in records] == [0, 1]
    messages = [str(p).replace(str(tmp_path) + os.sep, "") for p in problems]
    assert messages[0] == "annos/000001.json: item1.segmentation[0]: polygon with fewer than 3 points (2)"
    assert messages[1].startswith("annos/000001.json: item2.category_name: 'skirt' does not match category_id 8")
    assert messages[2].startswith("annos/000003.json: image") and messages[2].endswith("not found")
    with pytest.raises(DataError, match="item1.segmentation"):
        load_records("deepfashion2", annos, images, strict=True)


def test_missing_folder():
    with pytest.raises(DataError, match="annotation folder not found"):
        load_records("deepfashion2", os.path.join(FIXTURES, "nope"), IMAGES)

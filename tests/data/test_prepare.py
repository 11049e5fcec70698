"""The data/prepare_*.py scripts: iMaterialist and DeepFashion2 -> COCO JSON, ModaNet split, PaperDoll export."""
import importlib.util
import io
import json
import os
import sys

import numpy as np
import pytest
from PIL import Image

from maskrcnn.data import load_dataset
from maskrcnn.data.records import segmentation_to_mask

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "data")

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def script(name):
    """Import data/<name>.py as a module (the scripts are not part of the package)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "data", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_imaterialist_csv_to_coco(tmp_path):
    out = tmp_path / "instances_train.json"
    csv = os.path.join(FIXTURES, "imaterialist", "train.csv")
    assert script("prepare_imaterialist").main(["--csv", csv, "--out", str(out)]) == 0
    coco = json.load(open(out))
    assert [(im["id"], im["height"], im["width"]) for im in coco["images"]] == [(1, 3, 4), (2, 6, 5)]
    assert len(coco["categories"]) == 46 and coco["categories"][0]["id"] == 0
    assert [a["id"] for a in coco["annotations"]] == [1, 2, 3, 4]
    dress = coco["annotations"][2]  # image 2's first row: "14 3 20 3", ClassId 10_20_24
    assert (dress["image_id"], dress["category_id"], dress["attribute_ids"]) == (2, 10, [20, 24])
    assert (dress["bbox"], dress["area"], dress["iscrowd"]) == ([2.0, 1.0, 2.0, 3.0], 6, 0)
    # the converted file loads through the COCO adapter into the same records as the CSV
    images = os.path.join(FIXTURES, "imaterialist", "train")
    from_csv = load_dataset("imaterialist", csv, images, categories="imaterialist27")
    from_json = load_dataset("coco", out, images, categories="imaterialist27")
    assert from_json.class_names == from_csv.class_names
    for a, b in zip(from_csv.records, from_json.records):
        assert a["file_name"] == b["file_name"] and len(a["annotations"]) == len(b["annotations"])
        for x, y in zip(a["annotations"], b["annotations"]):
            assert (x["bbox"], x["category_id"], x["attribute_ids"]) == (y["bbox"], y["category_id"], y["attribute_ids"])
            np.testing.assert_array_equal(segmentation_to_mask(x["segmentation"], a["height"], a["width"]),
                                          segmentation_to_mask(y["segmentation"], b["height"], b["width"]))


def test_deepfashion2_to_coco_with_mask_area(tmp_path):
    out = tmp_path / "df2.json"
    annos = os.path.join(FIXTURES, "deepfashion2", "annos")
    images = os.path.join(FIXTURES, "deepfashion2", "image")
    assert script("prepare_deepfashion2").main(["--annos", annos, "--images", images, "--out", str(out)]) == 0
    coco = json.load(open(out))
    assert [(im["id"], im["file_name"], im["height"], im["width"], im["source"]) for im in coco["images"]] == [
        (1, "000001.jpg", 40, 30, "user"), (2, "000002.jpg", 20, 20, "shop")]
    top, trousers, skirt = coco["annotations"]
    assert (top["category_id"], top["bbox"], top["area"]) == (1, [4.0, 5.0, 20.0, 15.0], 300)
    assert (trousers["category_id"], trousers["bbox"], trousers["area"]) == (8, [6.0, 21.0, 17.0, 18.0], 288)
    assert trousers["area"] != trousers["bbox"][2] * trousers["bbox"][3]  # 288, not the box's 306
    assert (skirt["category_id"], skirt["area"], skirt["occlusion"]) == (9, 128, 1)
    assert [c["name"] for c in coco["categories"]][7] == "trousers"


def modanet_like(per_category_images):
    """A COCO dict: for each (category, n), n images holding one instance of that category."""
    images, annotations = [], []
    for category, count in per_category_images:
        for _ in range(count):
            image_id = len(images) + 1
            images.append({"id": image_id, "file_name": f"{image_id:07d}.jpg", "height": 600, "width": 400})
            annotations.append({"id": len(annotations), "image_id": image_id, "category_id": category,
                                "bbox": [0, 0, 1, 1], "segmentation": [[0, 0, 1, 0, 1, 1]], "iscrowd": 0})
    return {"info": {}, "images": images, "annotations": annotations,
            "categories": [{"id": 1, "name": "bag"}, {"id": 9, "name": "top"}]}


def test_modanet_split_is_stratified_seeded_and_complete(tmp_path):
    split = script("prepare_modanet_split")
    data = modanet_like([(1, 10), (9, 30)])
    data["images"].append({"id": 41, "file_name": "0000041.jpg", "height": 600, "width": 400})  # no instance
    # an image with both: its stratum is the rarer category, bag (11 images with bag vs 31 with top)
    data["images"].append({"id": 42, "file_name": "0000042.jpg", "height": 600, "width": 400})
    data["annotations"] += [{"id": 40, "image_id": 42, "category_id": 1, "bbox": [0, 0, 1, 1],
                             "segmentation": [[0, 0, 1, 0, 1, 1]], "iscrowd": 0},
                            {"id": 41, "image_id": 42, "category_id": 9, "bbox": [0, 0, 1, 1],
                             "segmentation": [[0, 0, 1, 0, 1, 1]], "iscrowd": 0}]
    train, val = split.stratified_split(data["images"], data["annotations"], 0.1, seed=3)
    assert sorted(train + val) == list(range(1, 43)) and not set(train) & set(val)
    bag_val = [i for i in val if i <= 10 or i == 42]
    top_val = [i for i in val if 11 <= i <= 40]
    assert (len(bag_val), len(top_val), len(val)) == (1, 3, 4)  # round(0.1 * 11), round(0.1 * 30), round(0.1 * 1)
    assert split.stratified_split(data["images"], data["annotations"], 0.1, seed=3) == (train, val)
    others = {tuple(split.stratified_split(data["images"], data["annotations"], 0.1, seed=s)[1]) for s in range(5)}
    assert len(others) > 1  # the seed matters


def test_modanet_split_files(tmp_path):
    source = tmp_path / "modanet.json"
    source.write_text(json.dumps(modanet_like([(1, 10), (9, 10)])))
    split = script("prepare_modanet_split")
    args = ["--annotations", str(source), "--val-fraction", "0.2", "--seed", "0", "--out-dir"]
    assert split.main(args + [str(tmp_path / "a")]) == 0
    assert split.main(args + [str(tmp_path / "b")]) == 0
    for name in ("modanet_train.json", "modanet_val.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()  # reproducible
    train = json.load(open(tmp_path / "a" / "modanet_train.json"))
    val = json.load(open(tmp_path / "a" / "modanet_val.json"))
    assert (len(train["images"]), len(val["images"])) == (16, 4)
    assert [a["id"] for a in val["annotations"]] == [1, 2, 3, 4]  # renumbered from 1
    assert {a["image_id"] for a in val["annotations"]} == {im["id"] for im in val["images"]}
    assert sorted(a["category_id"] for a in val["annotations"]) == [1, 1, 9, 9]


def test_paperdoll_export_with_a_fake_database(tmp_path):
    paperdoll = script("prepare_paperdoll")
    buffer = io.BytesIO()
    Image.new("RGB", (4, 6)).save(buffer, format="JPEG")
    database = {b"1": buffer.getvalue(), b"2": buffer.getvalue()}
    images = [{"id": 1, "file_name": "0000001.jpg", "height": 6, "width": 4},
              {"id": 2, "file_name": "0000002.jpg", "height": 60, "width": 40},
              {"id": 3, "file_name": "0000003.jpg", "height": 6, "width": 4}]
    result = paperdoll.export_images(database.get, images, str(tmp_path))
    assert result["written"] == ["0000001.jpg", "0000002.jpg"] and result["missing"] == ["0000003.jpg"]
    assert result["mismatched"] == [("0000002.jpg", (6, 4))]
    assert (tmp_path / "0000001.jpg").read_bytes() == database[b"1"]
    assert paperdoll.export_images(database.get, images[:1], str(tmp_path))["skipped"] == ["0000001.jpg"]


def test_paperdoll_without_lmdb_says_how_to_install(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "lmdb", None)  # makes `import lmdb` fail, as when it is not installed
    paperdoll = script("prepare_paperdoll")
    status = paperdoll.main(["--lmdb", str(tmp_path), "--annotations", "x.json", "--out", str(tmp_path)])
    assert status == 2
    assert "pip install lmdb" in capsys.readouterr().err


def test_modanet_split_of_a_tiny_set_that_leaves_val_empty_stops(tmp_path, capsys):
    source = tmp_path / "tiny.json"
    source.write_text(json.dumps(modanet_like([(1, 2), (9, 3)])))  # round(0.1 * 2) = round(0.1 * 3) = 0
    split = script("prepare_modanet_split")
    out = tmp_path / "out"
    assert split.main(["--annotations", str(source), "--val-fraction", "0.1", "--out-dir", str(out)]) == 2
    assert capsys.readouterr().err == (
        f"error: {source}: --val-fraction 0.1 puts 0 of the 5 images in val (each category's share is rounded "
        f"per stratum); use a larger --val-fraction or more images\n")
    assert not out.exists()  # nothing written

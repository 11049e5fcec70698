"""Attribute tables and targets (maskrcnn/data/attributes.py) for each format that carries attributes, in the
formats' real layouts: Fashionpedia's per-annotation attribute_ids + top-level attributes list, iMaterialist's
ClassId suffixes + label_descriptions.json, and the synthetic set's fabric pattern."""
import json
import os
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from maskrcnn.config import load_config
from maskrcnn.data import FashionDataset, load_dataset
from maskrcnn.data.attributes import (attribute_table_for, attribute_targets, drop_attributes, parse_attribute_list,
                                      read_attribute_table, select_supercategories, unknown_attribute_ids)
from maskrcnn.data.load import load_split
from maskrcnn.data.records import segmentation_to_mask
from maskrcnn.data.synthetic import (CLASS_NAMES, DARK_BELOW, LIGHT_ABOVE, PATTERN_NAMES, TONE_NAMES,
                                     generate_synthetic_dataset)
from maskrcnn.data.transforms import keep_instances

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "data")
FASHIONPEDIA = os.path.join(FIXTURES, "fashionpedia", "instances_attributes_val2020.json")
IMATERIALIST = os.path.join(FIXTURES, "imaterialist")
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def test_fashionpedia_file_table_and_targets():
    table = attribute_table_for("file", FASHIONPEDIA, "coco")
    assert table.source_ids == [115, 136] and table.names == ["attribute 115", "attribute 136"]
    records = load_dataset("coco", FASHIONPEDIA, os.path.join(FIXTURES, "fashionpedia", "images"),
                           categories="fashionpedia")
    records.attribute_names, records.attribute_source_ids = table.names, table.source_ids
    anns = records.records[0]["annotations"]
    assert [a["attribute_ids"] for a in anns] == [[115, 136], []]  # source ids kept as in the file
    target = FashionDataset(records)._target(records.records[0], 0, 24, 16)
    # the shirt has both attributes; the part (category 31) lists none: unknown, not "has none"
    assert target["attributes"].tolist() == [[1.0, 1.0], [0.0, 0.0]]
    assert target["attributes"].dtype == torch.float32
    assert target["attributes_known"].tolist() == [True, False]


def test_imaterialist_classid_suffixes_and_label_descriptions():
    records = load_dataset("imaterialist", os.path.join(IMATERIALIST, "train.csv"), os.path.join(IMATERIALIST, "train"))
    by_category = {}
    for record in records.records:
        for ann in record["annotations"]:
            by_category[ann["category_id"]] = ann["attribute_ids"]
    assert sorted(by_category.values()) == [[], [], [], [20, 24]]  # "10_20_24" -> category 10, attributes 20, 24
    table = attribute_table_for("file", os.path.join(IMATERIALIST, "train.csv"), "imaterialist")
    assert table.source_ids == [20, 24] and table.path.endswith("label_descriptions.json")


def test_targets_ignore_ids_outside_the_table_and_keep_order():
    targets, known = attribute_targets([[7, 3], [9], None, []], {3: 0, 7: 2, 5: 1}, 3)
    assert targets.tolist() == [[1, 0, 1], [0, 0, 0], [0, 0, 0], [0, 0, 0]]
    # [9]: annotated, but only with an attribute of another supercategory: all known negatives here
    assert known.tolist() == [True, True, False, False]


def test_supercategory_selection_and_errors(tmp_path):
    entries = [{"id": 1, "name": "above-the-knee (length)", "supercategory": "length"},
               {"id": 2, "name": "floral", "supercategory": "textile pattern"},
               {"id": 4, "name": "midi", "supercategory": "length"}]
    table = parse_attribute_list(entries, "t.json: attributes")
    lengths = select_supercategories(table, ["length"])
    assert lengths.source_ids == [1, 4] and lengths.names == ["above-the-knee (length)", "midi"]
    with pytest.raises(ValueError, match=r"data.attribute_supercategories: \['sleeve'\] not in"):
        select_supercategories(table, ["sleeve"])
    with pytest.raises(ValueError, match=r"t.json: attributes\[1\].id: 1 appears twice"):
        parse_attribute_list([entries[0], dict(entries[0])], "t.json: attributes")
    with pytest.raises(ValueError, match=r"attributes\[0\]: expected \{id: int, name: str\}"):
        parse_attribute_list([{"id": "1", "name": "x"}], "t.json: attributes")
    no_list = tmp_path / "modanet.json"
    no_list.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    with pytest.raises(ValueError, match=r"modanet.json: attributes: missing"):
        read_attribute_table(str(no_list))
    with pytest.raises(ValueError, match=r"'file' needs a format whose files list attributes"):
        attribute_table_for("file", "annos", "deepfashion2")
    assert attribute_table_for("", FASHIONPEDIA, "coco") is None


def test_drop_attributes_by_name_or_id_and_errors():
    entries = [{"id": 1, "name": "above-the-knee (length)", "supercategory": "length"},
               {"id": 2, "name": "floral", "supercategory": "textile pattern"},
               {"id": 4, "name": "midi", "supercategory": "length"}]
    table = parse_attribute_list(entries, "t.json: attributes")
    kept = drop_attributes(table, ["floral", 1])
    assert (kept.source_ids, kept.names, kept.supercategories) == ([4], ["midi"], ["length"])
    assert drop_attributes(table, []) is table
    with pytest.raises(ValueError, match=r"data.drop_attributes: \['sleeveless', 9\] not in t.json"):
        drop_attributes(table, ["sleeveless", 9, "midi"])


def test_built_in_synthetic_table_is_the_files_list_and_config_narrows_it(tmp_path):
    paths = generate_synthetic_dataset(str(tmp_path), num_train=2, num_val=0, seed=1, image_size=64)
    with open(paths["train"]["annotations"]) as f:
        written = json.load(f)["attributes"]
    table = read_attribute_table("synthetic_attributes")  # data/categories/synthetic_attributes.yaml
    assert [{"id": i, "name": n, "supercategory": s}
            for i, n, s in zip(table.source_ids, table.names, table.supercategories)] == written
    config = tmp_path / "c.yaml"
    config.write_text(f"data:\n  train_annotations: {paths['train']['annotations']}\n"
                      f"  train_images: {paths['train']['images']}\n  attributes: synthetic_attributes\n"
                      "  attribute_supercategories: [textile pattern]\n  drop_attributes: [mottled, 1]\n")
    train = load_split(load_config(str(config)), "train")
    assert train.attribute_names == ["striped", "checked", "dotted"] and train.attribute_source_ids == [2, 3, 4]
    target = FashionDataset(train)[0][1]
    assert target["attributes"].shape[1] == 3  # the dropped and other-supercategory ids are not columns


def test_unknown_ids_are_counted_for_the_checker():
    table = parse_attribute_list([{"id": 3, "name": "a"}], "t")
    records = [{"annotations": [{"attribute_ids": [3, 8]}, {"attribute_ids": [8]}, {}]}]
    assert unknown_attribute_ids(records, table) == {8: 2}


def test_instances_dropped_by_augmentation_drop_their_attributes():
    target = {"boxes": torch.zeros(3, 4), "labels": torch.tensor([1, 2, 3]),
              "attributes": torch.eye(3), "attributes_known": torch.tensor([True, False, True])}
    kept = keep_instances(target, torch.tensor([True, False, True]))
    assert kept["attributes"].tolist() == [[1, 0, 0], [0, 0, 1]]
    assert kept["attributes_known"].tolist() == [True, True]


def test_synthetic_attributes_are_written_named_and_independent_of_the_class(tmp_path):
    paths = generate_synthetic_dataset(str(tmp_path), num_train=40, num_val=0, seed=3, image_size=64)
    with open(paths["train"]["annotations"]) as f:
        data = json.load(f)
    names = PATTERN_NAMES + TONE_NAMES
    assert [a["name"] for a in data["attributes"]] == names
    assert [a["id"] for a in data["attributes"]] == [1, 2, 3, 4, 5, 6, 7]
    assert {a["supercategory"] for a in data["attributes"][:5]} == {"textile pattern"}
    assert {a["supercategory"] for a in data["attributes"][5:]} == {"colour tone"}
    for ann in data["annotations"]:  # one pattern, then at most one tone
        ids = ann["attribute_ids"]
        assert 1 <= ids[0] <= 5 and len(ids) <= 2 and all(i in (6, 7) for i in ids[1:]), ids
    tones = Counter(i for a in data["annotations"] for i in a["attribute_ids"][1:])
    assert tones[6] >= 5 and tones[7] >= 5 and sum(tones.values()) < len(data["annotations"])  # multi-label
    pairs = Counter((a["category_id"], i) for a in data["annotations"] for i in a["attribute_ids"])
    # every attribute is worn by several classes, so the class cannot predict it
    for attribute in range(1, 8):
        assert len({c for c, p in pairs if p == attribute}) >= 3

    config = tmp_path / "c.yaml"
    config.write_text(f"data:\n  train_annotations: {paths['train']['annotations']}\n"
                      f"  train_images: {paths['train']['images']}\n  attributes: file\n")
    train = load_split(load_config(str(config)), "train")
    assert train.attribute_names == names and train.attribute_source_ids == [1, 2, 3, 4, 5, 6, 7]
    assert train.class_names == CLASS_NAMES
    image, target = FashionDataset(train)[0]
    first = data["annotations"][0]
    assert target["attributes"][0, :5].argmax().item() == first["attribute_ids"][0] - 1
    assert target["attributes"][:, :5].sum(dim=1).tolist() == [1.0] * len(target["labels"])  # one pattern each
    expected = torch.zeros(len(target["labels"]), 7)
    for row, ann in enumerate(a for a in data["annotations"] if a["image_id"] == 1):
        expected[row, [i - 1 for i in ann["attribute_ids"]]] = 1
    assert torch.equal(target["attributes"], expected)


def test_synthetic_tone_is_the_mean_luminance_of_the_visible_pixels(tmp_path):
    """The tone ids follow their definition on the written JPEGs (up to JPEG error, so objects within 0.03 of
    a threshold are not judged): dark below 0.3, light above 0.6, neither in between."""
    paths = generate_synthetic_dataset(str(tmp_path), num_train=12, num_val=0, seed=4, image_size=64)
    records = load_dataset("coco", paths["train"]["annotations"], paths["train"]["images"])
    judged = 0
    for record in records.records:
        pixels = np.asarray(Image.open(record["file_name"]).convert("RGB"), dtype=np.float64) / 255.0
        luminance = pixels @ np.array([0.299, 0.587, 0.114])
        for ann in record["annotations"]:
            mean = luminance[segmentation_to_mask(ann["segmentation"], record["height"], record["width"]) > 0].mean()
            if min(abs(mean - DARK_BELOW), abs(mean - LIGHT_ABOVE)) < 0.03:
                continue
            judged += 1
            expected = [6] if mean < DARK_BELOW else [7] if mean > LIGHT_ABOVE else []
            assert ann["attribute_ids"][1:] == expected, (record["file_name"], mean, ann["attribute_ids"])
    assert judged >= 20

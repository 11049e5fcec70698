"""Exact duplicate annotations (ModaNet's shoe pairs with one two-shoe polygon) are found, counted and dropped."""
import json
import os
import shutil
import warnings

import pytest
from PIL import Image

from maskrcnn.data import load_dataset
from maskrcnn.data.duplicates import find_duplicates
from maskrcnn.data.problems import DataWarning
from maskrcnn.tools.check_dataset import check_dataset, main as check_main

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "data")
MODANET_DUPLICATES = os.path.join(FIXTURES, "modanet_duplicates", "modanet_duplicates.json")


def load(**options):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = load_dataset("coco", MODANET_DUPLICATES, "", categories="modanet", **options)
    return dataset, [str(w.message) for w in caught if issubclass(w.category, DataWarning)]


@pytest.mark.parametrize("recompute_boxes", [False, True])
def test_duplicates_are_dropped_with_one_counted_warning(recompute_boxes):
    dataset, messages = load(recompute_boxes=recompute_boxes)
    # file annotations 1 (footwear, same mask as 0), 4 (boots, same mask as 3), 6 (bag, same box as 5)
    assert dataset.num_duplicates == 3
    kept = [[a["id"] for a in r["annotations"]] for r in dataset.records]
    # ModaNet's ids start at 0, so record ids are file positions + 1
    assert kept == [[1, 3], [4, 6, 8], [9]]
    assert len(messages) == 1
    assert messages[0].startswith(f"{MODANET_DUPLICATES}: 3 exact duplicate annotation(s) dropped: ")
    assert messages[0].endswith(f"first: {MODANET_DUPLICATES}: annotations[1]: exact duplicate of annotations[0] "
                                f"(same class 'footwear' and the same mask)")


def test_recomputed_boxes_of_a_shoe_pair_are_identical():
    dataset, _ = load(recompute_boxes=True, drop_duplicates=False)
    first, second = dataset.records[0]["annotations"][:2]
    assert first["bbox"] == second["bbox"] == [100.0, 500.0, 280.0, 565.0]  # both shoes, whole pixels
    assert dataset.num_duplicates == 3 and len(dataset.records[0]["annotations"]) == 3  # counted, kept


def test_the_same_segmentation_under_another_class_is_not_a_duplicate():
    dataset, _ = load()
    footwear = dataset.records[1]["annotations"][2]
    assert dataset.class_names[footwear["category_id"] - 1] == "footwear"  # shares the boots' polygons


def test_find_duplicates_rules():
    square = [[0, 0, 4, 0, 4, 4, 0, 4]]
    ann = lambda cat, seg, box: {"category_id": cat, "segmentation": seg, "bbox": box}
    annotations = [ann(1, square, [0, 0, 4, 4]), ann(1, square, [0, 0, 2, 2]), ann(2, square, [0, 0, 4, 4]),
                   ann(1, [[0, 0, 4, 0, 4, 4]], [0, 0, 4, 4]), ann(1, [[1, 1, 3, 1, 3, 3]], [1, 1, 3, 3]),
                   ann(1, {"size": [4, 4], "counts": "04"}, [9, 9, 10, 10]),
                   ann(1, {"size": [4, 4], "counts": b"04"}, [8, 8, 10, 10])]
    assert find_duplicates(annotations) == [(1, 0, "mask"), (3, 0, "box"), (6, 5, "mask")]


def test_checker_lists_each_duplicate(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for i in (1, 2, 3):
        Image.new("RGB", (400, 600), (128, 128, 128)).save(images / f"{i:07d}.jpg")
    report = check_dataset("coco", MODANET_DUPLICATES, str(images), categories="modanet", recompute_boxes=True)
    assert [(p.where.split(": ")[-1], p.message) for p in report.problems] == [
        ("annotations[1]", "exact duplicate of annotations[0] (same class 'footwear' and the same mask)"),
        ("annotations[4]", "exact duplicate of annotations[3] (same class 'boots' and the same mask)"),
        ("annotations[6]", "exact duplicate of annotations[5] (same class 'bag' and the same box)"),
    ]
    assert report.num_instances == 6
    assert check_main(["--format", "coco", "--annotations", MODANET_DUPLICATES, "--images", str(images),
                       "--categories", "modanet"]) == 1
    out = capsys.readouterr().out
    assert "problems: 3" in out and "annotations[4]: exact duplicate of annotations[3]" in out

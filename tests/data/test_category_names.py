"""An annotation file's category names are checked against the chosen class table, never assumed."""
import json
import os
import warnings

import pytest

from maskrcnn.data import load_dataset
from maskrcnn.data.categories import CategoryTable, load_category_table, match_file_categories, normalize_name
from maskrcnn.data.problems import DataError, Problems
from maskrcnn.tools.check_dataset import main as check_main

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "data")
PRERELEASE = os.path.join(FIXTURES, "fashionpedia_prerelease", "instances_prerelease.json")
MODANET_DUPLICATES = os.path.join(FIXTURES, "modanet_duplicates", "modanet_duplicates.json")
# The category list of ModaNet's released val file (modanet2018_instances_val.json): the meta
# categories with their fine-grained names, as the ModaNet README lists them.
MODANET_VAL_NAMES = ["bag", "belt", "boots", "footwear",
                     "coat/jacket/suit/blazers/cardigan/sweater/Jumpsuits/Rompers/vest", "dress/t-shirt dress",
                     "sunglasses", "pants/jeans/leggings", "top/blouse/t-shirt/shirt", "shorts", "skirt",
                     "headwear", "scarf/tie"]


def test_prerelease_48_class_file_against_the_46_class_table_stops_listing_each_id():
    with pytest.raises(DataError) as caught:
        load_dataset("coco", PRERELEASE, "", categories="fashionpedia")
    message = str(caught.value)
    assert message.startswith(f"{PRERELEASE}: categories: 25 category name(s) disagree with ")
    assert "fashionpedia.yaml for the same id" in message
    # the three relabellings the outside check saw: shoe -> "bag, wallet", sleeve -> pocket, neckline -> zipper
    assert "id 24: file 'shoe', table 'bag, wallet'" in message
    assert "id 32: file 'sleeve', table 'pocket'" in message
    assert "id 35: file 'neckline', table 'zipper'" in message
    assert "id 21: file 'tights', table 'tights, stockings'" in message
    assert "data.category_match=name" in message
    # ids 0-20 agree, so they are not listed; 21-45 differ (25 ids); 46 and 47 are not in the table at all
    assert "id 20:" not in message and "id 0:" not in message


def test_prerelease_file_by_name_maps_each_class_to_its_own_label():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # all three names exist in the table: nothing may be skipped
        dataset = load_dataset("coco", PRERELEASE, "", categories="fashionpedia", category_match="name")
    labels = {dataset.class_names[a["category_id"] - 1] for a in dataset.records[0]["annotations"]}
    assert labels == {"shoe", "sleeve", "neckline"}


def test_by_name_a_class_missing_from_the_table_is_reported_per_annotation(tmp_path):
    data = json.load(open(PRERELEASE))
    data["annotations"][0]["category_id"] = 33  # 'cuff': not in the 46-class table
    path = tmp_path / "prerelease.json"
    path.write_text(json.dumps(data))
    problems = Problems("collect")
    dataset = load_dataset("coco", str(path), "", categories="fashionpedia", category_match="name",
                           problems=problems)
    assert len(dataset.records[0]["annotations"]) == 2
    assert [str(p) for p in problems] == [
        f"{path}: annotations[0].category_id: category 33 ('cuff') has no category of that name in "
        f"{load_category_table('fashionpedia').path}"]


def test_modanet_spellings_pass_through_the_table_aliases():
    # The train file says "scarf/tie" where the table says "scarf & tie".
    dataset = load_dataset("coco", MODANET_DUPLICATES, "", categories="modanet")
    assert dataset.class_names[12] == "scarf & tie"
    scarf = dataset.records[2]["annotations"][0]
    assert dataset.class_names[scarf["category_id"] - 1] == "scarf & tie"
    # The released val file's long names (case differs too: "Jumpsuits") are aliases as well.
    table = load_category_table("modanet")
    file_categories = list(enumerate(MODANET_VAL_NAMES, start=1))
    assert match_file_categories(table, file_categories, "id") == {i: i for i in range(1, 14)}
    assert match_file_categories(table, file_categories, "name") == {i: i for i in range(1, 14)}


def test_a_wrong_modanet_name_still_stops():
    table = load_category_table("modanet")
    with pytest.raises(ValueError, match=r"1 category name\(s\) disagree .*id 3: file 'footwear', table 'boots'"):
        match_file_categories(table, [(1, "bag"), (3, "footwear")], "id", "f.json: categories")


def test_name_normalization_and_modes():
    assert normalize_name("  Scarf   &  TIE ") == "scarf & tie"
    table = CategoryTable([(1, "bag"), (2, "belt")], path="t.yaml")
    assert match_file_categories(table, [(7, "Belt"), (8, "bag")], "name") == {7: 2, 8: 1}
    with pytest.raises(ValueError, match=r"data.category_match: expected one of \('id', 'name'\), got 'label'"):
        match_file_categories(table, [], "label")


def test_checker_stops_on_the_prerelease_file(capsys):
    assert check_main(["--format", "coco", "--annotations", PRERELEASE, "--categories", "fashionpedia",
                       "--no-images"]) == 2
    err = capsys.readouterr().err
    assert "id 24: file 'shoe', table 'bag, wallet'" in err and "Traceback" not in err

"""Category maps as configuration: the class-table files against docs/conventions.md, drop, merge, class_order."""
import json

import pytest

from maskrcnn.data.categories import (
    build_category_map,
    category_map_from_table,
    load_category_table,
    resolve_category_map,
    resolve_table_path,
)

# docs/conventions.md (reference facts), verbatim.
MODANET = ["bag", "belt", "boots", "footwear", "outer", "dress", "sunglasses", "pants", "top", "shorts",
           "skirt", "headwear", "scarf & tie"]
DEEPFASHION2 = ["short sleeve top", "long sleeve top", "short sleeve outwear", "long sleeve outwear", "vest",
                "sling", "shorts", "trousers", "skirt", "short sleeve dress", "long sleeve dress", "vest dress",
                "sling dress"]
IMATERIALIST = ["shirt, blouse", "top, t-shirt, sweatshirt", "sweater", "cardigan", "jacket", "vest", "pants",
                "shorts", "skirt", "coat", "dress", "jumpsuit", "cape", "glasses", "hat",
                "headband, head covering, hair accessory", "tie", "glove", "watch", "belt", "leg warmer",
                "tights, stockings", "sock", "shoe", "bag, wallet", "scarf", "umbrella", "hood", "collar",
                "lapel", "epaulette", "sleeve", "pocket", "neckline", "buckle", "zipper", "applique", "bead",
                "bow", "flower", "fringe", "ribbon", "rivet", "ruffle", "sequin", "tassel"]


@pytest.mark.parametrize("name, first_id, names", [
    ("modanet", 1, MODANET),
    ("deepfashion2", 1, DEEPFASHION2),
    ("imaterialist46", 0, IMATERIALIST),
    ("fashionpedia", 0, IMATERIALIST),
])
def test_tables_match_facts(name, first_id, names):
    table = load_category_table(name)
    assert table.categories == [(first_id + i, n) for i, n in enumerate(names)]
    category_map = category_map_from_table(table)
    assert category_map.class_names == names
    assert category_map.labels[first_id] == 1 and category_map.labels[first_id + len(names) - 1] == len(names)


def test_imaterialist27_keeps_items_0_to_26():
    category_map = category_map_from_table(load_category_table("imaterialist27"))
    assert category_map.class_names == IMATERIALIST[:27]
    assert category_map.dropped == set(range(27, 46))
    assert category_map.label(26) == 27 and category_map.label(31) is None
    with pytest.raises(KeyError):
        category_map.label(46)


def test_drop_by_name_and_id_and_merge():
    table = [(1, "bag"), (2, "belt"), (3, "boots"), (4, "footwear"), (5, "outer")]
    category_map = build_category_map(table, drop=["belt", 5], merge={"boots": "shoe", 4: "shoe", "bag": "handbag"})
    assert category_map.class_names == ["handbag", "shoe"]
    assert category_map.labels == {1: 1, 3: 2, 4: 2}
    assert category_map.dropped == {2, 5}
    assert "2 shoe  <- 3 boots, 4 footwear" in category_map.describe()


def test_class_order_aligns_two_datasets_into_one_taxonomy():
    order = ["top", "bottom", "shoe", "bag"]
    modanet = category_map_from_table(
        load_category_table("modanet"), drop=["belt", "outer", "dress", "sunglasses", "headwear", "scarf & tie"],
        merge={"pants": "bottom", "shorts": "bottom", "skirt": "bottom", "boots": "shoe", "footwear": "shoe"},
        class_order=order)
    imat = category_map_from_table(
        load_category_table("imaterialist27"), drop=[i for i in range(27) if i not in (0, 1, 6, 7, 8, 23, 24)],
        merge={"shirt, blouse": "top", "top, t-shirt, sweatshirt": "top", "pants": "bottom", "shorts": "bottom",
               "skirt": "bottom", "bag, wallet": "bag"},
        class_order=order)
    assert modanet.class_names == imat.class_names == order
    assert modanet.label(9) == imat.label(0) == 1    # top
    assert modanet.label(4) == imat.label(23) == 3   # footwear / shoe
    assert modanet.label(1) == imat.label(24) == 4   # bag / bag, wallet


@pytest.mark.parametrize("kwargs, message", [
    ({"drop": ["blet"]}, "unknown category 'blet'; did you mean 'belt'"),
    ({"drop": [9]}, "unknown category id 9"),
    ({"merge": {"bag": ""}}, "expected a non-empty new name"),
    ({"class_order": ["bag"]}, "class_order lacks \\['belt'\\]"),
])
def test_configuration_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_category_map([(1, "bag"), (2, "belt")], **kwargs)


def test_duplicate_table_entries():
    with pytest.raises(ValueError, match="duplicate category id 1"):
        build_category_map([(1, "bag"), (1, "belt")])
    with pytest.raises(ValueError, match="duplicate category name 'bag'"):
        build_category_map([(1, "bag"), (2, "bag")])


def test_table_files_and_paths(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"categories": [{"id": 7, "name": "hat"}, {"id": 9, "name": "cap"}],
                                "merge": {"cap": "hat"}}))
    table = load_category_table(str(path))
    assert table.categories == [(7, "hat"), (9, "cap")]
    _, category_map = resolve_category_map(str(path), None)
    assert category_map.class_names == ["hat"] and category_map.labels == {7: 1, 9: 1}
    assert resolve_table_path("data/categories/modanet.yaml").name == "modanet.yaml"
    with pytest.raises(FileNotFoundError, match="built-in tables"):
        resolve_table_path("no_such_table")
    broken = tmp_path / "broken.yaml"
    broken.write_text("categories:\n  - {id: one, name: hat}\n")
    with pytest.raises(ValueError, match=r"broken.yaml: categories\[0\]"):
        load_category_table(str(broken))

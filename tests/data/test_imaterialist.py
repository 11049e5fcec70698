"""iMaterialist 2019 CSV: the RLE decoder/encoder (docs/conventions.md examples, round-trips, pycocotools) and the adapter."""
import os

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from maskrcnn.data import DataError, Problems, load_dataset, load_records
from maskrcnn.data.imaterialist import parse_class_id, rle_decode, rle_encode, to_coco_rle
from maskrcnn.data.records import segmentation_to_mask

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "data", "imaterialist")
CSV = os.path.join(FIXTURES, "train.csv")
IMAGES = os.path.join(FIXTURES, "train")
IMAGE_A = "00000663ed1ff0c4e0132b9b9ac53f6e.jpg"  # 3 x 4
IMAGE_B = "0000fe7c9191fba733c8a69cfaf962b7.jpg"  # 6 x 5

# pycocotools' decoder trips a harmless NumPy 2 DeprecationWarning when called directly.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def slow_reference_encode(mask):
    """Pixel-by-pixel encoder written from the format's definition (down each column, 1-indexed)."""
    height, width = mask.shape
    pairs, position, run_start = [], 1, None
    for col in range(width):
        for row in range(height):
            if mask[row, col] and run_start is None:
                run_start = position
            if not mask[row, col] and run_start is not None:
                pairs += [run_start, position - run_start]
                run_start = None
            position += 1
    if run_start is not None:
        pairs += [run_start, position - run_start]
    return " ".join(str(v) for v in pairs)


def test_facts_worked_examples():
    decoded = rle_decode("1 2 5 1", 3, 4)
    assert decoded.dtype == np.uint8 and decoded.shape == (3, 4)
    np.testing.assert_array_equal(decoded, [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]])
    assert rle_encode(np.array([[0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]])) == "4 2 7 2"
    np.testing.assert_array_equal(rle_decode("4 2 7 2", 3, 4), [[0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]])


def test_off_by_one_pitfall_is_not_ours():
    # Forgetting the -1 would put the run "1 1" on pixel (1, 0) instead of (0, 0).
    np.testing.assert_array_equal(rle_decode("1 1", 2, 2), [[1, 0], [0, 0]])
    assert rle_encode(np.zeros((3, 3))) == ""
    np.testing.assert_array_equal(rle_decode("", 2, 3), np.zeros((2, 3)))


def test_random_round_trips_against_pycocotools():
    rng = np.random.default_rng(2019)
    for _ in range(300):
        height, width = (int(v) for v in rng.integers(1, 40, size=2))
        mask = (rng.random((height, width)) < rng.random()).astype(np.uint8)
        counts = rle_encode(mask)
        assert counts == slow_reference_encode(mask)
        np.testing.assert_array_equal(rle_decode(counts, height, width), mask)
        coco = to_coco_rle(counts, height, width)
        np.testing.assert_array_equal(coco_mask.decode({"size": coco["size"], "counts": coco["counts"].encode()}), mask)
        reference = coco_mask.encode(np.asfortranarray(mask))  # pycocotools' own encoding of the mask
        assert coco["counts"] == reference["counts"].decode("ascii")


def test_to_coco_rle_unites_unsorted_and_overlapping_runs():
    counts = "5 1 1 2 2 2"  # runs [4, 5), [0, 2), [1, 3) -> pixels 0, 1, 2, 4
    expected = [[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 0, 0]]
    np.testing.assert_array_equal(rle_decode(counts, 3, 4), expected)
    np.testing.assert_array_equal(segmentation_to_mask(to_coco_rle(counts, 3, 4), 3, 4), expected)


@pytest.mark.parametrize("counts, message", [
    ("1 2 5", "odd number"),
    ("0 2", "starts before pixel 1"),
    ("1 0", "length < 1"),
    ("11 3", "beyond height\\*width = 12"),
    ("1 x", "integers"),
])
def test_bad_rle_raises(counts, message):
    with pytest.raises(ValueError, match=message):
        rle_decode(counts, 3, 4)
    with pytest.raises(ValueError, match=message):
        to_coco_rle(counts, 3, 4)


def test_parse_class_id():
    assert parse_class_id("10_20_24") == (10, [20, 24])
    assert parse_class_id("3") == (3, [])
    with pytest.raises(ValueError, match="category"):
        parse_class_id("x_1")


def test_fixture_records_with_label_descriptions_beside_the_csv():
    dataset = load_dataset("imaterialist", CSV, IMAGES)
    assert len(dataset.class_names) == 46 and dataset.class_names[6] == "pants"
    a, b = dataset.records
    assert (a["file_name"], a["image_id"], a["height"], a["width"]) == (os.path.join(IMAGES, IMAGE_A), 1, 3, 4)
    assert (b["file_name"], b["image_id"], b["height"], b["width"]) == (os.path.join(IMAGES, IMAGE_B), 2, 6, 5)
    pants, shoe = a["annotations"]  # CSV lines 2 and 5
    assert (pants["category_id"], pants["bbox"], pants["id"]) == (7, [0.0, 0.0, 2.0, 2.0], 1)
    assert (shoe["category_id"], shoe["bbox"], shoe["id"]) == (24, [1.0, 0.0, 3.0, 2.0], 4)
    np.testing.assert_array_equal(segmentation_to_mask(shoe["segmentation"], 3, 4),
                                  [[0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]])
    dress, sleeve = b["annotations"]
    # "14 3 20 3" on 6 rows: pixels 13-15 and 19-21 -> rows 1..3 of columns 2 and 3
    assert (dress["category_id"], dress["attribute_ids"], dress["bbox"]) == (11, [20, 24], [2.0, 1.0, 4.0, 4.0])
    expected = np.zeros((6, 5), dtype=np.uint8)
    expected[1:4, 2:4] = 1
    np.testing.assert_array_equal(segmentation_to_mask(dress["segmentation"], 6, 5), expected)
    assert (sleeve["category_id"], sleeve["bbox"]) == (32, [0.0, 0.0, 2.0, 6.0])  # 31 sleeve -> 32


def test_imaterialist27_drops_the_garment_parts():
    dataset = load_dataset("imaterialist", CSV, IMAGES, categories="imaterialist27")
    assert len(dataset.class_names) == 27 and dataset.class_names[-1] == "umbrella"
    assert [a["category_id"] for a in dataset.records[1]["annotations"]] == [11]  # sleeve dropped


def test_bad_rows_are_reported_by_line_and_column(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("ImageId,EncodedPixels,Height,Width,ClassId\n"
                    "a.jpg,1 2 5 1,3,4,6\n"
                    "a.jpg,11 3,3,4,6\n"
                    "a.jpg,1 2,3,4,x_1\n"
                    "a.jpg,1 2,4,4,6\n"
                    "b.jpg,1 2,3,4,77\n")
    problems = Problems("collect")
    records = load_records("imaterialist", path, tmp_path, problems=problems)
    assert [len(r["annotations"]) for r in records] == [1, 0]
    where = [p.where.replace(str(path), "train.csv") for p in problems]
    assert where == ["train.csv: line 3.EncodedPixels", "train.csv: line 4.ClassId",
                     "train.csv: line 5.Height/Width", "train.csv: line 6.category_id"]
    assert "unknown category 77" in problems.items[3].message
    with pytest.raises(DataError, match="line 3.EncodedPixels"):
        load_records("imaterialist", path, tmp_path, strict=True)


def test_wrong_header(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("ImageId,Pixels,Height,Width,ClassId\n")
    with pytest.raises(DataError, match="line 1: expected the header ImageId,EncodedPixels"):
        load_records("imaterialist", path, tmp_path)

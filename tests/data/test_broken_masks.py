"""Broken masks are named by file and field before anything is rasterized (no segfault, no runaway memory)."""
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask

from maskrcnn.data import load_dataset
from maskrcnn.data.problems import Problems
from maskrcnn.data.records import compressed_counts, polygon_self_intersects, rle_error, segmentation_to_mask

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HEIGHT, WIDTH = 16, 20
SQUARE = [[2, 2, 8, 2, 8, 8, 2, 8]]
BOW_TIE = [[2, 2, 10, 10, 10, 2, 2, 10]]  # edges (2,2)-(10,10) and (10,2)-(2,10) cross


def compressed(runs, height=HEIGHT, width=WIDTH) -> str:
    """pycocotools' compressed string for the given runs (it does not check their sum)."""
    return coco_mask.frPyObjects({"size": [height, width], "counts": runs}, height, width)["counts"].decode()


def overflowing_rle() -> dict:
    mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8, order="F")
    mask[3:9, 4:12] = 1
    runs = compressed_counts(coco_mask.encode(mask)["counts"]).tolist()
    assert sum(runs) == HEIGHT * WIDTH
    runs[-1] += 5000  # the last background run runs far past the image
    return {"size": [HEIGHT, WIDTH], "counts": compressed(runs)}


def write_dataset(tmp_path, segmentations):
    Image.new("RGB", (WIDTH, HEIGHT), (90, 90, 90)).save(tmp_path / "a.jpg")
    annotations = [{"id": i + 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 6, 6 + i], "segmentation": s,
                    "iscrowd": 0} for i, s in enumerate(segmentations)]
    data = {"images": [{"id": 1, "file_name": "a.jpg", "height": HEIGHT, "width": WIDTH}],
            "annotations": annotations, "categories": [{"id": 1, "name": "top"}]}
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_compressed_counts_decode_pycocotools_strings():
    mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8, order="F")
    mask[3:9, 4:12] = 1
    mask[10:12, 0:20] = 1
    runs = compressed_counts(coco_mask.encode(mask)["counts"])  # int64 (R,)
    expected = coco_mask.frPyObjects({"size": [HEIGHT, WIDTH], "counts": runs.tolist()}, HEIGHT, WIDTH)["counts"]
    assert expected == coco_mask.encode(mask)["counts"]  # the runs re-encode to the same string
    # column-major: column 0 is background down to row 10, then the 2-row stripe; the next background run
    # goes on into column 1 (4 rows + 10 rows)
    assert runs[:3].tolist() == [10, 2, 14] and runs.sum() == HEIGHT * WIDTH


def test_rle_checks_name_the_field():
    assert rle_error(overflowing_rle(), HEIGHT, WIDTH) == (
        "counts: runs sum to 5320 pixels and overflow the image's height*width = 320")
    assert rle_error({"size": [HEIGHT, WIDTH], "counts": "\u00e9\u00e8"}, HEIGHT, WIDTH) == (
        "counts: not a compressed RLE string: character '\u00e9' at position 0 is not part of the compressed "
        "RLE alphabet (chr(48)..chr(111))")
    assert rle_error({"size": [HEIGHT, WIDTH], "counts": compressed([10, 5])}, HEIGHT, WIDTH).endswith(
        "runs sum to 15 pixels and fall short of the image's height*width = 320")


def test_polygon_far_outside_is_refused_before_rasterizing():
    for value in (1e12, 3e8):
        with pytest.raises(ValueError, match=r"^ann.segmentation\[0\]: x coordinate (1e\+12|3e\+08) lies far outside "
                                             r"the 20x16 image \(allowed -20..40\); not rasterized$"):
            segmentation_to_mask([[0, 0, value, 0, 5, 5]], HEIGHT, WIDTH, where="ann.segmentation")
    # within one image side of the edge is still rasterized (clicks just past the border are common)
    assert segmentation_to_mask([[-3, -3, 25, -3, 25, 20, -3, 20]], HEIGHT, WIDTH).all()


def test_self_intersection():
    assert polygon_self_intersects(BOW_TIE[0])
    assert not polygon_self_intersects(SQUARE[0])
    assert not polygon_self_intersects([0, 0, 4, 0, 2, 3])  # a triangle cannot cross itself
    assert not polygon_self_intersects([0, 0, 4, 0, 4, 4, 2, 1, 0, 4])  # concave, not crossing


def test_loader_names_each_broken_mask(tmp_path):
    path = write_dataset(tmp_path, [SQUARE, overflowing_rle(), {"size": [HEIGHT, WIDTH], "counts": "\u00ff0"},
                                    [[0, 0, 1e12, 0, 5, 5]], [[0, 0, 3e8, 0, 5, 5]], BOW_TIE])
    problems = Problems("collect", thorough=True)
    dataset = load_dataset("coco", path, str(tmp_path), problems=problems)
    assert [a["id"] for a in dataset.records[0]["annotations"]] == [1, 6]  # the square and the bow tie
    assert [str(p) for p in problems] == [
        f"{path}: annotations[1].segmentation.counts: runs sum to 5320 pixels and overflow the image's "
        f"height*width = 320",
        f"{path}: annotations[2].segmentation.counts: not a compressed RLE string: character '\u00ff' at position 0 "
        f"is not part of the compressed RLE alphabet (chr(48)..chr(111))",
        f"{path}: annotations[3].segmentation[0]: x coordinate 1e+12 lies far outside the 20x16 image "
        f"(allowed -20..40); not rasterized",
        f"{path}: annotations[4].segmentation[0]: x coordinate 3e+08 lies far outside the 20x16 image "
        f"(allowed -20..40); not rasterized",
    ]
    assert [str(n) for n in problems.notes] == [
        f"{path}: annotations[5].segmentation[0]: self-intersecting polygon (filled by the even-odd rule: "
        f"where its loops overlap is left out)"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lenient = load_dataset("coco", path, str(tmp_path))  # training: the same four skipped, no notes
    assert [a["id"] for a in lenient.records[0]["annotations"]] == [1, 6]


def test_checker_command_reports_them_without_crashing(tmp_path):
    path = write_dataset(tmp_path, [SQUARE, [[0, 0, 1e12, 0, 5, 5]], [[0, 0, 3e8, 0, 5, 5]], overflowing_rle(),
                                    BOW_TIE, [[1, 1, 9, 9, 9, 1, 1, 9]]])
    env = dict(os.environ, PYTHONPATH=REPO)
    result = subprocess.run([sys.executable, "-m", "maskrcnn.tools.check_dataset", "--format", "coco",
                             "--annotations", path, "--images", str(tmp_path)],
                            capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
    assert result.returncode == 1, result.stderr  # problems found; not -11 (segfault) nor killed
    assert "problems: 3" in result.stdout
    assert "annotations[1].segmentation[0]: x coordinate 1e+12 lies far outside" in result.stdout
    assert "annotations[3].segmentation.counts: runs sum to 5320 pixels and overflow" in result.stdout
    assert "warnings: 2 (the data stays usable)" in result.stdout
    assert "annotations[5].segmentation[0]: self-intersecting polygon" in result.stdout

"""The crop run-length encoder (maskrcnn/inference/crop_rle.py) writes exactly pycocotools' string for the
full-size mask: random crops and rectangles, and every edge (image borders, full height, full width, a crop
that is all ones or all zeros, an empty rectangle, a 1-pixel image)."""
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from maskrcnn.inference.crop_rle import crop_rle, crop_run_lengths


def full_size_rle(crop, rect, size):
    mask = np.zeros(size, dtype=np.uint8)
    x1, y1, x2, y2 = rect
    mask[y1:y2, x1:x2] = crop
    rle = mask_utils.encode(np.asfortranarray(mask))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def test_hand_computed_runs():
    # a 3x4 image (H=3, W=4), crop rows 1-2 x columns 1-2 = [[1, 0], [1, 1]]; column-major:
    # col 0: 0 0 0 | col 1: 0 1 1 | col 2: 0 0 1 | col 3: 0 0 0  -> runs 4 zeros, 2 ones, 2 zeros, 1 one, 3 zeros
    crop = np.array([[1, 0], [1, 1]], dtype=bool)
    assert crop_run_lengths(crop, (1, 1, 3, 3), (3, 4)).tolist() == [4, 2, 2, 1, 3]
    assert crop_run_lengths(np.ones((3, 4), bool), (0, 0, 4, 3), (3, 4)).tolist() == [0, 12]
    assert crop_run_lengths(np.zeros((0, 2), bool), (1, 2, 3, 2), (3, 4)).tolist() == [12]


@pytest.mark.parametrize("seed", range(40))
def test_random_crops_match_pycocotools(seed):
    rng = np.random.default_rng(seed)
    height, width = (int(v) for v in rng.integers(1, 40, size=2))
    x1, x2 = sorted(int(v) for v in rng.integers(0, width + 1, size=2))
    y1, y2 = sorted(int(v) for v in rng.integers(0, height + 1, size=2))
    if seed % 5 == 0:  # touch the borders
        x1, y1, x2, y2 = 0, 0, width, height
    elif seed % 5 == 1:
        y1, y2 = 0, height  # the full height: no zeros between the crop's columns
    elif seed % 5 == 2:
        x1, x2 = 0, width
    crop = rng.random((y2 - y1, x2 - x1)) < rng.choice([0.0, 0.3, 0.7, 1.0])
    assert crop_rle(crop, (x1, y1, x2, y2), (height, width)) == full_size_rle(crop, (x1, y1, x2, y2), (height, width))


def test_edges_match_pycocotools():
    cases = [((1, 1), (0, 0, 1, 1), np.ones((1, 1), bool)), ((1, 1), (0, 0, 1, 1), np.zeros((1, 1), bool)),
             ((5, 7), (6, 4, 7, 5), np.ones((1, 1), bool)),   # the last pixel
             ((5, 7), (0, 0, 1, 1), np.ones((1, 1), bool)),   # the first pixel
             ((5, 7), (2, 0, 5, 5), np.ones((5, 3), bool)),   # full-height columns
             ((5, 7), (3, 3, 3, 3), np.zeros((0, 0), bool))]  # an empty rectangle
    for size, rect, crop in cases:
        assert crop_rle(crop, rect, size) == full_size_rle(crop, rect, size), (size, rect)


def test_a_crop_that_does_not_fit_is_refused():
    with pytest.raises(ValueError, match="does not fit"):
        crop_rle(np.ones((2, 2), bool), (3, 3, 5, 5), (4, 4))
    with pytest.raises(ValueError, match="does not fit"):
        crop_rle(np.ones((2, 3), bool), (0, 0, 2, 2), (4, 4))

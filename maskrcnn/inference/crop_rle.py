"""COCO run-length encoding of a mask that is zero outside one rectangle, without the full-size mask.

The predictor pastes each detection's mask only inside its box (``paste_masks_in_crops``), so each mask
arrives as a crop: ``crop (h, w)`` bool, at ``rect = (x1, y1, x2, y2)`` (exclusive ends) of an ``H x W``
image. Building the full ``H x W`` mask to hand to ``pycocotools.mask.encode`` costs three full-size
copies per detection (zeros, uint8, column-major): on a 6000x6000 photo 36 MB each, about 0.4 s per
detection, which dominated a 100-detection prediction (docs/benchmarks.md, large photos). This module
computes the same runs from the crop alone.

COCO RLE reads the mask column by column (column-major, index ``x * H + y``) and lists the lengths of
alternating runs, starting with a run of zeros (possibly of length 0). Outside the rectangle every pixel
is 0, so in that order the crop's columns are separated by zeros only:

    x1 * H + y1 zeros | crop column 0 | H - h zeros | crop column 1 | ... | crop column w-1 | (H - y2) + (W - x2) * H zeros

Give each crop pixel weight 1 and each gap one element of its length as weight; the runs are the sums of
the weights between the places where the value changes. ``pycocotools.mask.frPyObjects`` then compresses
the run lengths into the same string ``encode`` writes for the full mask (the string is a function of
the runs alone); ``tests/test_crop_rle.py`` checks equality with ``encode`` on random crops and edges.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np
from pycocotools import mask as mask_utils


def crop_run_lengths(crop: np.ndarray, rect: Sequence[int], image_size: Tuple[int, int]) -> np.ndarray:
    """The COCO run lengths (int64, zeros first, summing to ``H * W``) of the ``H x W`` mask that is
    ``crop (h, w)`` inside ``rect = (x1, y1, x2, y2)`` and 0 elsewhere."""
    height, width = int(image_size[0]), int(image_size[1])
    x1, y1, x2, y2 = (int(v) for v in rect)
    crop = np.asarray(crop, dtype=bool)
    h, w = y2 - y1, x2 - x1
    if not (0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height) or crop.shape != (h, w):
        raise ValueError(f"crop {crop.shape} at {tuple(rect)} does not fit a {height}x{width} image")
    if h == 0 or w == 0 or not crop.any():
        return np.array([height * width], dtype=np.int64)
    # (w, h + 1): each crop column (column-major order) followed by one element for the zeros after it
    values = np.zeros((w, h + 1), dtype=bool)
    values[:, :h] = crop.T
    weights = np.ones((w, h + 1), dtype=np.int64)
    weights[:, h] = height - h                      # rows y2..H-1 of this column and 0..y1-1 of the next
    weights[-1, h] = (height - y2) + (width - x2) * height  # after the last column: to the end of the image
    values, weights = values.reshape(-1), weights.reshape(-1)  # (w, h + 1) -> (w * (h + 1),)
    kept = weights > 0                              # a gap of length 0 (the crop spans the height) is no run
    values, weights = values[kept], weights[kept]
    # leading zeros: the columns before x1 and the rows above y1 in column x1
    values = np.concatenate(([False], values))
    weights = np.concatenate(([x1 * height + y1], weights))
    starts = np.flatnonzero(np.diff(values.astype(np.int8))) + 1  # where the value changes
    boundaries = np.concatenate(([0], starts, [values.size]))
    lengths = np.add.reduceat(weights, boundaries[:-1])  # each run's total weight
    # ``values[0]`` is a zero (the leading run, even of length 0), so the runs alternate from zeros
    return lengths.astype(np.int64)


def crop_rle(crop: np.ndarray, rect: Sequence[int], image_size: Tuple[int, int]) -> dict:
    """Compressed COCO RLE ``{"size": [H, W], "counts": str}`` of the mask (module docstring), the same
    string ``pycocotools.mask.encode`` gives for the full-size mask."""
    height, width = int(image_size[0]), int(image_size[1])
    lengths = crop_run_lengths(crop, rect, image_size)
    rle = mask_utils.frPyObjects({"size": [height, width], "counts": lengths.tolist()}, height, width)
    return {"size": [height, width], "counts": rle["counts"].decode("ascii")}

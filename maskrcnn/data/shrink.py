"""Large photos at the training scale: resize the image first, then build the masks at the small size.

The model's first stage (``maskrcnn.modeling.transform.ImageTransform``) resizes every image so its short
side is ``input.min_size`` (800) unless the long side would pass ``input.max_size`` (1333). A 5214 x 3676
photo thus becomes 1134 x 800: 21 times fewer pixels. Building its 30 masks at full size first costs
30 x 19 M bytes, and the model then turns them into floats to resize them (another 2.3 GB). This module
does the resize in the dataset instead, cheaply:

- the image is decoded as ``uint8`` and resized bilinearly with the model's indices and weights
  (``align_corners=False``, the output size's exact ratios), separably: only the rows that the output
  samples are ever converted to float;
- polygons are rasterized directly at the training size, their coordinates mapped so that each small
  pixel samples the full-size pixel that the model's nearest-neighbour resize would have picked;
- RLE masks are never decoded at full size: the pixels that the model's nearest-neighbour resize would
  pick (the same ``F.interpolate`` call, on index vectors) are looked up in the runs directly;
- boxes are scaled by the model's own ``resize_boxes``.

The model then finds the image already at its size: ``resize_scale`` gives an output size equal to the
input, and the resize is an exact copy. :func:`shrunk_size` only shrinks when that holds (under the
model's own rounding rule), so the model's input is the same size as before; otherwise the photo takes
the full-size path. What can differ from building everything at full size, and by how much, is tested in
``tests/data/test_shrink.py``: the image by float rounding (normalizing after instead of before the
resize), polygon masks on boundary pixels only, RLE masks and boxes not at all.
"""
from __future__ import annotations

import math
import warnings
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as coco_mask

from maskrcnn.modeling.transform import ImageTransform, resize_boxes

from .records import compressed_counts, segmentation_to_rle

__all__ = ["size_rule", "shrunk_size", "shrink_image", "shrink_box", "shrunk_mask", "nearest_indices"]

Size = Tuple[int, int]  # (height, width)


def size_rule(min_size: int, max_size: int) -> ImageTransform:
    """The model's resize rule for ``input.min_size`` / ``input.max_size`` (only ``resize_scale`` is used)."""
    return ImageTransform(min_size, max_size, pixel_mean=[0.0, 0.0, 0.0], pixel_std=[1.0, 1.0, 1.0])


def _resized(rule: ImageTransform, height: int, width: int) -> Size:
    """The size the model's resize gives a (height, width) image (as ``F.interpolate`` computes it)."""
    scale = rule.resize_scale(height, width)
    return math.floor(height * scale), math.floor(width * scale)


def shrunk_size(rule: ImageTransform, height: int, width: int) -> Optional[Size]:
    """The training size of a (height, width) photo when shrinking it in the dataset is exact, else None.

    None when the model would enlarge the image (nothing to save) or when the model, given the shrunk
    image, would resize it once more (its rounding can make the short side 799 and then 800; about 3 %
    of large sizes under a float64 scale): those photos keep the full-size path.
    """
    if rule.resize_scale(height, width) >= 1.0:
        return None
    size = _resized(rule, height, width)
    if min(size) < 1 or _resized(rule, *size) != size:
        return None
    return size


def _linear_taps(full: int, small: int) -> tuple:
    """Source indices ``i0, i1`` (int64) and weights ``w0, w1`` (float32) of 1-D linear resampling,
    ``(small,)`` each, by the rule of ``F.interpolate(mode="bilinear", align_corners=False)`` for a given
    output size: the scale ``full / small`` in float32, ``src = max(scale * (i + 0.5) - 0.5, 0)``
    evaluated exactly and rounded once to float32 (as a fused multiply-add does; checked against
    ``F.interpolate`` in the tests), ``i0 = floor(src)``, ``i1 = min(i0 + 1, full - 1)``, ``w1 = src - i0``."""
    scale = np.float64(np.float32(full) / np.float32(small))
    src = np.maximum(scale * (np.arange(small, dtype=np.float64) + 0.5) - 0.5, 0.0).astype(np.float32)  # (small,)
    i0 = src.astype(np.int64)
    i1 = np.minimum(i0 + 1, full - 1)
    w1 = (src - i0.astype(np.float32)).astype(np.float32)
    return i0, i1, (np.float32(1.0) - w1).astype(np.float32), w1


def shrink_image(array: np.ndarray, size: Size) -> torch.Tensor:
    """(H, W, 3) ``uint8`` (or float in [0, 1]) -> float32 (3, h, w) in [0, 1], bilinear like the model.

    Bilinear resampling is separable: first along the rows, reading only the two rows each output row
    needs (so only ``2h`` of the ``H`` rows are ever converted to float), then along the columns, with
    the indices and weights of the model's ``F.interpolate`` (``_linear_taps``). The result equals the
    model's resize of the full image up to float rounding (the sums are taken in another order).
    """
    scale = 255.0 if array.dtype == np.uint8 else 1.0
    top, bottom, w_top, w_bottom = _linear_taps(array.shape[0], size[0])
    left, right, w_left, w_right = _linear_taps(array.shape[1], size[1])
    rows = (array[top].astype(np.float32) / np.float32(scale)) * w_top[:, None, None]  # (h, W, 3)
    rows += (array[bottom].astype(np.float32) / np.float32(scale)) * w_bottom[:, None, None]
    out = rows[:, left] * w_left[None, :, None] + rows[:, right] * w_right[None, :, None]  # (h, w, 3)
    return torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1)))  # (h, w, 3) -> (3, h, w)


def shrink_box(box, height: int, width: int, size: Size) -> list:
    """An ``[x1, y1, x2, y2]`` box of the (height, width) image in pixels of the ``size`` image, by the
    model's own ``resize_boxes`` (float32 ratios), so the numbers are the ones the model would compute."""
    boxes = torch.tensor([box], dtype=torch.float32)  # (1, 4)
    return resize_boxes(boxes, (height, width), size)[0].tolist()


def _polygons_at(polygons: list, height: int, width: int, size: Size) -> list:
    """Polygon coordinates mapped so that small pixel ``i`` samples full pixel ``floor(i * H / h)``.

    Nearest-neighbour resizing gives small pixel ``i`` the value of full-size pixel ``floor(i * s)``
    (``s = H / h``), whose centre is at ``floor(i * s) + 0.5``; the rasterizer tests the small pixel's
    centre ``i + 0.5``. The affine map ``x' = (x - 0.5) / s + 0.5`` sends one onto the other (up to the
    floor, less than one full-size pixel).
    """
    sy, sx = size[0] / height, size[1] / width
    out = []
    for polygon in polygons:
        xy = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)  # (n, 2) as x, y
        xy = (xy - 0.5) * np.array([sx, sy]) + 0.5
        out.append(xy.reshape(-1).tolist())
    return out


def shrunk_mask(segmentation, height: int, width: int, size: Size, where: str = "segmentation") -> Tuple[np.ndarray, int]:
    """The mask of a record segmentation at the training ``size``, and its pixel count at full size.

    Returns ``(mask (h, w) uint8, full_area int)``; ``full_area`` (from the run-length encoding, no
    full-size array) decides whether the instance is empty, exactly as on the full-size path. Raises
    ValueError naming ``where`` for a malformed segmentation (see ``records.segmentation_to_mask``).
    """
    rle = segmentation_to_rle(segmentation, height, width, where)  # validated, full-size runs
    full_area = int(coco_mask.area(rle))
    small_h, small_w = size
    if isinstance(segmentation, list):  # polygons: rasterize at the small size directly
        polygons = _polygons_at(segmentation, height, width, size)
        small = coco_mask.merge(coco_mask.frPyObjects(polygons, small_h, small_w))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="__array__ implementation", category=DeprecationWarning)
            mask = coco_mask.decode(small)  # (h, w) uint8, Fortran-ordered
        return np.ascontiguousarray(mask), full_area
    return _sample_rle(rle, height, width, size), full_area


def nearest_indices(full: int, small: int) -> np.ndarray:
    """``(small,)`` int64: the full-size index that the model's nearest-neighbour resize picks for each
    output index (computed by the same ``F.interpolate`` call, so the rounding is the model's)."""
    # float32 like the model's masks: the interpolation's scale is computed in the input's precision.
    # Each value is its own index (exact in float32 up to 2**24).
    source = torch.arange(full, dtype=torch.float32)[None, None, :]  # (1, 1, full)
    return F.interpolate(source, size=small, mode="nearest")[0, 0].numpy().astype(np.int64)  # (small,)


def _sample_rle(rle: dict, height: int, width: int, size: Size) -> np.ndarray:
    """Nearest-neighbour resize of a run-length encoded mask without building the full-size mask.

    The runs are column-major and start with background. The sampled pixels, listed column by column
    (flat index ``c * H + r``), are in increasing order, so one binary search per run end splits them
    into runs, and each sample takes its run's parity (odd = foreground).
    """
    counts = rle["counts"]
    runs = np.asarray(counts, dtype=np.int64) if isinstance(counts, list) else compressed_counts(counts)
    ends = np.cumsum(runs)  # (R,) exclusive end of each run
    rows = nearest_indices(height, size[0])  # (h,)
    cols = nearest_indices(width, size[1])  # (w,)
    samples = (cols[:, None] * height + rows[None, :]).reshape(-1)  # (w, h) -> (w * h,)
    if (np.diff(rows) > 0).all() and (np.diff(cols) > 0).all():  # shrinking: the samples increase
        per_run = np.diff(np.searchsorted(samples, ends, side="left"), prepend=0)  # (R,) samples in each run
        parity = (np.arange(len(runs)) % 2).astype(np.uint8)  # (R,) 1 for foreground runs
        columns = np.repeat(parity, per_run)  # (w * h,)
    else:  # enlarging repeats rows or columns: search each sample's run instead
        columns = (np.searchsorted(ends, samples, side="right") % 2).astype(np.uint8)  # (w * h,)
    return np.ascontiguousarray(columns.reshape(size[1], size[0]).T)  # (w * h,) -> (w, h) -> (h, w)

"""Pasting the mask head's small ``M x M`` probability maps into full-size image masks.

Shape shorthand: ``K`` detections, ``M`` the mask resolution (28), ``S = M + 2`` the padded resolution,
``(h, w)`` the target image size.

    masks (K, 1, M, M) probabilities, boxes (K, 4) xyxy in image pixels  ->  (K, 1, h, w)

The mask head predicts each ROI's mask on an ``M x M`` grid that covers the box. To put it back:

1. pad the grid by one zero cell on every side, ``(M, M) -> (S, S)``, and enlarge the box about its
   centre by the same factor ``S / M``, so that bilinear resizing fades to 0 at the box edge instead of
   smearing the border values outwards;
2. truncate the enlarged box to integers ``(x1, y1, x2, y2)`` and resize the padded grid bilinearly to
   ``(y2 - y1 + 1) x (x2 - x1 + 1)`` pixels (``align_corners=False``);
3. copy the part that falls inside the image to rows ``y1..y2`` and columns ``x1..x2`` of a zero canvas.

The ``+ 1`` in step 2 is the pixel-inclusive box convention of Detectron (v1) and torchvision; the rest of
this project uses ``width = x2 - x1``. It is kept here on purpose, because it is what torchvision computes,
and the difference is at most one pixel of width at the right and bottom edges of each mask.

How it is computed. torchvision resizes each detection's grid with its own ``F.interpolate`` call, in a
Python loop over detections. Here every detection is handled at once, without reading anything back to
the host: bilinear resizing is separable, so for each detection and each image column ``X`` the two grid
columns it reads and their weights are a small ``(K, w)`` table (:func:`axis_table`, the same formulas as
``F.interpolate``'s source index and weights: ``src = (S / size) * (X - x1 + 0.5) - 0.5``, clamped at 0),
and likewise for rows. A pixel's value is then ``(g[y0, x0] * ax0 + g[y0, x1] * ax1) * ay0 +
(g[y1, x0] * ax0 + g[y1, x1] * ax1) * ay1``. This is ``F.interpolate``'s formula, not its rounding: the
CPU kernel fuses multiply-adds (measured on this build: bit-identical once ``src`` and the weighted sum
are fused), so values differ from a per-detection ``F.interpolate`` by a few float32 steps of ``src``
(about ``2 * ulp(S) = 4e-6`` at most; ``tests/modeling/test_transform.py`` checks that bound and the
float64 rule). Full canvases are produced a chunk of detections at a time (:data:`CHUNK_PIXELS` bounds
the temporaries); :func:`paste_masks_in_crops` evaluates the same operations only inside each box (the
same values, bit for bit), for callers that never need ``K`` full canvases (the predictor).
"""
from __future__ import annotations

from typing import NamedTuple, Tuple

import torch
from torch import Tensor
import torch.nn.functional as F

# Pixels (detections x canvas size) pasted at once: bounds the float and index temporaries of a chunk.
CHUNK_PIXELS = 1 << 24


def expand_boxes(boxes: Tensor, scale: float) -> Tensor:
    """Scale ``(K, 4)`` xyxy boxes about their centres by ``scale``; returns float ``(K, 4)``."""
    half_w = (boxes[:, 2] - boxes[:, 0]) * 0.5 * scale
    half_h = (boxes[:, 3] - boxes[:, 1]) * 0.5 * scale
    center_x = (boxes[:, 2] + boxes[:, 0]) * 0.5
    center_y = (boxes[:, 3] + boxes[:, 1]) * 0.5
    return torch.stack((center_x - half_w, center_y - half_h, center_x + half_w, center_y + half_h), dim=1)


class AxisTable(NamedTuple):
    """Bilinear sampling of one axis for every (detection, pixel) pair, each of shape ``(K, n)``:
    grid indices ``low``/``high``, their weights, and whether the pixel lies inside the pasted box."""

    low: Tensor
    high: Tensor
    weight_low: Tensor
    weight_high: Tensor
    inside: Tensor


def axis_table(first: Tensor, last: Tensor, pixels: Tensor, grid_size: int, dtype: torch.dtype) -> AxisTable:
    """One axis of the resize of an ``S``-cell grid onto the inclusive pixel range ``[first, last]``.

    Args:
        first, last: ``(K,)`` int64 integer box corners on this axis (may lie outside the image).
        pixels: int64 pixel coordinates on this axis, ``(1, n)`` (the same for every detection) or ``(K, n)``.
        grid_size: ``S``; dtype: the masks' floating dtype (the weights are computed in it).
    Returns:
        An :class:`AxisTable` of ``(K, n)`` tensors.

    ``F.interpolate(size=...)`` with ``align_corners=False``: scale ``S / size`` (``size = last - first + 1``,
    at least 1), ``src = scale * (pixel - first + 0.5) - 0.5`` clamped at 0, ``low = min(floor(src), S - 1)``,
    ``high = low + 1`` unless ``low`` is the last cell, ``weight_high = src - low`` clamped to [0, 1].
    """
    size = (last - first + 1).clamp(min=1)                                     # (K,)
    scale = torch.full_like(size, grid_size, dtype=dtype) / size.to(dtype)     # (K,)
    offset = (pixels - first[:, None]).to(dtype)                               # (K, n), pixel - first
    src = (scale[:, None] * (offset + 0.5) - 0.5).clamp(min=0)
    low = src.floor().clamp(max=grid_size - 1)
    weight_high = (src - low).clamp(min=0, max=1)
    low = low.to(torch.int64)
    high = torch.where(low < grid_size - 1, low + 1, low)
    inside = (pixels >= first[:, None]) & (pixels <= last[:, None])
    return AxisTable(low, high, 1 - weight_high, weight_high, inside)


def integer_boxes(boxes: Tensor, mask_size: int, padding: int) -> Tensor:
    """The boxes enlarged by ``(M + 2 * padding) / M`` and truncated toward zero: ``(K, 4)`` int64."""
    scale = float(mask_size + 2 * padding) / mask_size
    return expand_boxes(boxes, scale).to(torch.int64)


def _check(masks: Tensor, boxes: Tensor) -> None:
    if masks.dim() != 4 or masks.shape[1] != 1 or masks.shape[-1] != masks.shape[-2]:
        raise ValueError(f"masks: expected shape (K, 1, M, M), got {tuple(masks.shape)}")
    if boxes.shape != (masks.shape[0], 4):
        raise ValueError(f"boxes: expected shape ({masks.shape[0]}, 4), got {tuple(boxes.shape)}")


def _sample(grid: Tensor, rows: AxisTable, columns: AxisTable) -> Tensor:
    """Separable bilinear resize: ``grid (K, S, S)``, tables ``(K, h)`` and ``(K, w)`` -> ``(K, h, w)``,
    zero outside each box."""
    k, s = grid.shape[0], grid.shape[1]
    w, h = columns.low.shape[1], rows.low.shape[1]
    # along x first, as F.interpolate: (K, S, S) -> (K, S, w)
    left = torch.gather(grid, 2, columns.low[:, None, :].expand(k, s, w))
    right = torch.gather(grid, 2, columns.high[:, None, :].expand(k, s, w))
    along_x = left * columns.weight_low[:, None, :] + right * columns.weight_high[:, None, :]
    # then along y: (K, S, w) -> (K, h, w)
    top = torch.gather(along_x, 1, rows.low[:, :, None].expand(k, h, w))
    bottom = torch.gather(along_x, 1, rows.high[:, :, None].expand(k, h, w))
    values = top * rows.weight_low[:, :, None] + bottom * rows.weight_high[:, :, None]
    inside = rows.inside[:, :, None] & columns.inside[:, None, :]
    return torch.where(inside, values, torch.zeros((), dtype=values.dtype, device=values.device))


def paste_masks_in_image(masks: Tensor, boxes: Tensor, image_size: Tuple[int, int], padding: int = 1) -> Tensor:
    """``masks (K, 1, M, M)``, ``boxes (K, 4)`` -> ``(K, 1, h, w)`` full-image masks (same dtype and device
    as masks), pasted :data:`CHUNK_PIXELS` canvas pixels at a time."""
    _check(masks, boxes)
    image_height, image_width = int(image_size[0]), int(image_size[1])
    num_masks, mask_size = masks.shape[0], masks.shape[-1]
    out = masks.new_zeros((num_masks, 1, image_height, image_width))
    if num_masks == 0 or image_height == 0 or image_width == 0:
        return out
    grid = F.pad(masks[:, 0], (padding,) * 4)  # (K, M, M) -> (K, S, S)
    corners = integer_boxes(boxes, mask_size, padding).to(masks.device)  # (K, 4)
    device = masks.device
    rows = torch.arange(image_height, device=device)[None, :]     # (1, h)
    columns = torch.arange(image_width, device=device)[None, :]   # (1, w)
    chunk = max(1, CHUNK_PIXELS // (image_height * image_width))
    for start in range(0, num_masks, chunk):  # a loop over chunks of detections, not over detections
        part = slice(start, min(start + chunk, num_masks))
        x1, y1, x2, y2 = corners[part].unbind(1)
        row_table = axis_table(y1, y2, rows, grid.shape[-1], grid.dtype)
        column_table = axis_table(x1, x2, columns, grid.shape[-1], grid.dtype)
        out[part, 0] = _sample(grid[part], row_table, column_table)
    return out


class MaskCrops(NamedTuple):
    """Pasted masks restricted to each box's part of the image.

    ``values`` holds, detection after detection, the row-major pixels of rectangle ``rects[k] = (x1, y1,
    x2, y2)`` (int64, exclusive ends, clipped to the image; empty when the box misses the image): the very
    values ``paste_masks_in_image`` writes there. Everything outside the rectangles is 0.
    """

    values: Tensor
    rects: Tensor


def paste_masks_in_crops(masks: Tensor, boxes: Tensor, image_size: Tuple[int, int], padding: int = 1) -> MaskCrops:
    """Like :func:`paste_masks_in_image`, but computes only the pixels inside each pasted box.

    Reads the ``K`` rectangles back to the host once (a ``(K, 4)`` copy) to size the result; the values
    stay on the masks' device, one flat tensor for all detections. Memory is proportional to the boxes'
    area, not to ``K`` canvases.
    """
    _check(masks, boxes)
    image_height, image_width = int(image_size[0]), int(image_size[1])
    num_masks, mask_size = masks.shape[0], masks.shape[-1]
    device = masks.device
    corners = integer_boxes(boxes, mask_size, padding).to(device)  # (K, 4) inclusive pixel corners
    x1, y1, x2, y2 = corners.unbind(1)
    # (K, 4) exclusive rectangles inside the image; an empty one has x2 == x1 or y2 == y1
    rect_x1 = x1.clamp(min=0, max=image_width)
    rect_y1 = y1.clamp(min=0, max=image_height)
    rect_x2 = torch.maximum((x2 + 1).clamp(max=image_width), rect_x1)
    rect_y2 = torch.maximum((y2 + 1).clamp(max=image_height), rect_y1)
    rects = torch.stack((rect_x1, rect_y1, rect_x2, rect_y2), dim=1)
    area = (rect_x2 - rect_x1) * (rect_y2 - rect_y1)                  # (K,)
    total = int(area.sum()) if num_masks else 0                      # the one read-back
    if total == 0:
        return MaskCrops(masks.new_zeros((0,)), rects)
    # Pixel j of the flat result belongs to detection k with ends[k - 1] <= j < ends[k].
    ends = torch.cumsum(area, 0)
    j = torch.arange(total, device=device)
    k = torch.searchsorted(ends, j, right=True)
    j = j - (ends - area)[k]
    crop_width = (rect_x2 - rect_x1)[k]
    pixel_x = rect_x1[k] + j % crop_width
    pixel_y = rect_y1[k] + j // crop_width
    grid = F.pad(masks[:, 0], (padding,) * 4)  # (K, M, M) -> (K, S, S)
    s = grid.shape[-1]
    # One table entry per point, (P, 1) -> (P,): the same formulas as the full-canvas tables.
    column = AxisTable(*(t[:, 0] for t in axis_table(x1[k], x2[k], pixel_x[:, None], s, grid.dtype)))
    row = AxisTable(*(t[:, 0] for t in axis_table(y1[k], y2[k], pixel_y[:, None], s, grid.dtype)))
    flat = grid.reshape(num_masks * s * s)  # (K, S, S) -> (K*S*S,)

    def cell(grid_row: Tensor, grid_column: Tensor) -> Tensor:
        return flat[(k * s + grid_row) * s + grid_column]

    # along x, then along y, as _sample (every point lies inside its box)
    top = cell(row.low, column.low) * column.weight_low + cell(row.low, column.high) * column.weight_high
    bottom = cell(row.high, column.low) * column.weight_low + cell(row.high, column.high) * column.weight_high
    return MaskCrops(top * row.weight_low + bottom * row.weight_high, rects)

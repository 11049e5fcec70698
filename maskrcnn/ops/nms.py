"""Non-maximum suppression (NMS): keep the best box of every cluster of overlapping boxes.

Greedy rule (torchvision's, and the one of every Mask R-CNN implementation): visit the boxes in
decreasing score order; keep a box unless a box kept before it overlaps it with IoU *strictly greater*
than ``iou_threshold``. Ties in score are visited in index order (a stable sort), so with five identical
boxes the one with the best score, or the lowest index among equal scores, survives.

``nms`` is the public entry point: it checks its arguments and runs an implementation, the native kernel
when the extension is built for the boxes' device, else ``nms_reference`` (pure PyTorch); see
``maskrcnn/ops/_native.py``. ``batched_nms`` runs NMS independently within each class (or FPN level) id, in
one ``nms`` call (the coordinate-offset trick).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from . import _native

# Rows of the IoU matrix computed at once: bounds the float intermediates to _CHUNK x N values.
_CHUNK = 1024


def _check_nms_args(boxes: Tensor, scores: Tensor, idxs: Tensor | None = None) -> None:
    if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[1] != 4:
        shape = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
        raise ValueError(f"boxes must have shape (N, 4) [x1, y1, x2, y2], got {shape}")
    if not isinstance(scores, Tensor) or scores.dim() != 1:
        shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise ValueError(f"scores must have shape (N,), got {shape}")
    if boxes.shape[0] != scores.shape[0]:
        raise ValueError(
            f"boxes and scores must have the same length, got boxes of shape {tuple(boxes.shape)} "
            f"and scores of shape {tuple(scores.shape)}"
        )
    if boxes.device != scores.device:
        raise ValueError(f"boxes and scores must be on the same device, got {boxes.device} and {scores.device}")
    if not boxes.is_floating_point():
        raise TypeError(f"boxes must be a floating-point tensor, got {boxes.dtype}")
    if idxs is not None:
        if not isinstance(idxs, Tensor) or idxs.shape != scores.shape:
            shape = tuple(idxs.shape) if isinstance(idxs, Tensor) else type(idxs).__name__
            raise ValueError(
                f"idxs must have the shape of scores {tuple(scores.shape)}, got idxs of shape {shape}"
            )
        if idxs.device != boxes.device:
            raise ValueError(f"idxs and boxes must be on the same device, got {idxs.device} and {boxes.device}")


def nms_reference(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Pure-PyTorch NMS; arguments as in :func:`nms`, assumed valid.

    Sort by score (stable, descending), compute which pairs overlap with IoU > threshold (the same
    float operations as torchvision's kernel, in the boxes' dtype, so borderline pairs are decided
    identically), then make the inherently sequential greedy pass over that boolean matrix on the CPU.
    Memory: N * N booleans (1 MB for 1000 boxes).
    """
    n = boxes.shape[0]
    if n == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    if boxes.dtype not in (torch.float32, torch.float64):
        boxes = boxes.float()
    order = torch.sort(scores, descending=True, stable=True)[1]
    b = boxes[order]
    x1, y1, x2, y2 = b.unbind(1)
    areas = (x2 - x1) * (y2 - y1)

    overlaps = torch.empty((n, n), dtype=torch.bool)
    for start in range(0, n, _CHUNK):  # a loop over row blocks, to bound memory, not over boxes
        rows = slice(start, min(start + _CHUNK, n))
        w = (torch.min(x2[rows, None], x2[None, :]) - torch.max(x1[rows, None], x1[None, :])).clamp(min=0)
        h = (torch.min(y2[rows, None], y2[None, :]) - torch.max(y1[rows, None], y1[None, :])).clamp(min=0)
        inter = w * h
        iou = inter / (areas[rows, None] + areas[None, :] - inter)  # 0 / 0 = NaN never suppresses
        # Compare in float64 like the kernel (float IoU > double threshold), so that a threshold such as
        # 0.3, which rounds *up* in float32, is not moved.
        overlaps[rows] = (iou.double() > iou_threshold).cpu()

    suppressed = np.zeros(n, dtype=bool)
    keep = []
    overlaps_np = overlaps.numpy()
    for i in range(n):  # the greedy pass; box i can only be suppressed by a kept box j < i
        if not suppressed[i]:
            keep.append(i)
            suppressed |= overlaps_np[i]
    keep_t = torch.as_tensor(keep, dtype=torch.int64, device=boxes.device)
    return order[keep_t]


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression.

    Args:
        boxes: ``(N, 4)`` float boxes ``(x1, y1, x2, y2)``.
        scores: ``(N,)`` scores, higher is better.
        iou_threshold: a box is discarded when it overlaps a better kept box with IoU > this value.

    Returns:
        int64 indices into ``boxes`` of the kept boxes, in decreasing score order.
    """
    _check_nms_args(boxes, scores)
    # The native kernel when built for this device, else nms_reference. See ops/_native.py.
    return _native.nms(boxes, scores, float(iou_threshold), reference=nms_reference)


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """NMS within each group: boxes with different ``idxs`` (class ids, FPN levels) never suppress
    each other.

    One :func:`nms` call for all groups, by the coordinate-offset trick (torchvision's
    ``_batched_nms_coordinate_trick``): every box of group ``g`` is moved by ``g * (max_coordinate + 1)``
    along both axes, so boxes of different groups can no longer overlap, while boxes of one group keep
    their relative positions. No Python loop over groups and no read-back to the host, so the cost in
    syncs does not grow with the number of classes.

    Precision: the shift is done in float32 (float64 boxes stay float64; float16 / bfloat16 boxes are
    computed in float32, whose range the offsets need). A shifted coordinate is rounded to half the float32
    spacing at ``max_id * (max_coordinate + 1)``: with 46 classes on a 1333-pixel image (62,697) that is
    2**-9 px, with the RPN's 5 levels (6,669) 2**-12 px. This can only change a decision whose IoU lies
    within about ``spacing / box side`` of ``iou_threshold``; torchvision's model makes the same trade (its
    ``batched_nms`` uses this trick up to 1,000 boxes on the CPU and 5,000 on the GPU).

    Returns int64 indices in decreasing score order; equal scores keep index order.
    """
    _check_nms_args(boxes, scores, idxs)
    if boxes.shape[0] == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    coordinates = boxes if boxes.dtype == torch.float64 else boxes.float()
    # Every coordinate lies in [low, high] with low = min(smallest coordinate, 0); group g's boxes are moved
    # into [low + g * span, high + g * span] with span = high - low + 1, so the groups' squares are disjoint
    # (for any integer ids). For non-negative boxes span = max_coordinate + 1, torchvision's offset, op for op.
    span = coordinates.max() - torch.clamp(coordinates.min(), max=0) + 1  # 0-dim, stays on the device
    offsets = idxs.to(coordinates.dtype) * span                           # (N,)
    return nms(coordinates + offsets[:, None], scores, iou_threshold)     # (N, 4) + (N, 1)

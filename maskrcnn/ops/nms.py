"""Non-maximum suppression (NMS): keep the best box of every cluster of overlapping boxes.

Greedy rule (torchvision's, and the one of every Mask R-CNN implementation): visit the boxes in
decreasing score order; keep a box unless a box kept before it overlaps it with IoU *strictly greater*
than ``iou_threshold``. Ties in score are visited in index order (a stable sort), so with five identical
boxes the one with the best score, or the lowest index among equal scores, survives.

``nms`` is the public entry point: it checks its arguments and runs an implementation, the native kernel
when the extension is built for the boxes' device, else ``nms_reference`` (pure PyTorch); see
``maskrcnn/ops/_native.py``. ``batched_nms`` runs NMS independently within each class (or FPN level) id.
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

    Runs :func:`nms` once per distinct id on that id's boxes, in the boxes' own coordinates (no
    coordinate-offset trick, so no precision is lost to large offsets, in any dtype), and merges the
    results. Returns int64 indices in decreasing score order; equal scores keep index order.
    """
    _check_nms_args(boxes, scores, idxs)
    if boxes.shape[0] == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    keep_mask = torch.zeros(boxes.shape[0], dtype=torch.bool, device=boxes.device)
    for class_id in torch.unique(idxs):  # a loop over classes, not boxes
        members = torch.where(idxs == class_id)[0]
        keep_mask[members[nms(boxes[members], scores[members], iou_threshold)]] = True
    kept = torch.where(keep_mask)[0]  # ascending index, so the stable sort breaks ties by index
    return kept[torch.sort(scores[kept], descending=True, stable=True)[1]]

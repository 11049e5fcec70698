"""Elementary box operations: area, pairwise IoU, clipping to the image, dropping tiny boxes.

Conventions (see ``docs/architecture.md``): a box is ``(x1, y1, x2, y2)`` in absolute pixels with no
"+1", so its width is ``x2 - x1`` and a box with ``x1 == x2`` has zero area. Shapes: ``boxes (N, 4)``.
The formulas and the order of the floating-point operations follow torchvision, so results agree with it
bit for bit in float32 (tests/fixtures/boxes.pt).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def at_least_float32(t: Tensor) -> Tensor:
    """``t`` as float32 when it is float16 / bfloat16; float32 and float64 tensors are returned unchanged.

    Under ``torch.autocast`` the heads return half-precision tensors; geometry, scores and losses are
    computed from them after this widening (a float64 model keeps float64).
    """
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def _upcast(t: Tensor) -> Tensor:
    """Half-precision boxes overflow in products like w * h (65504 max): compute those in float32."""
    if t.is_floating_point():
        return t if t.dtype in (torch.float32, torch.float64) else t.float()
    return t if t.dtype in (torch.int32, torch.int64) else t.int()


def _check_boxes(name: str, boxes: Tensor) -> None:
    if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[1] != 4:
        shape = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
        raise ValueError(f"{name} must be a tensor of shape (N, 4) [x1, y1, x2, y2], got {shape}")


def box_area(boxes: Tensor) -> Tensor:
    """Area ``(x2 - x1) * (y2 - y1)`` of each box: ``(N, 4) -> (N,)``."""
    _check_boxes("boxes", boxes)
    boxes = _upcast(boxes)
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise intersection over union: ``boxes1 (N, 4), boxes2 (M, 4) -> (N, M)``.

    ``IoU = |A and B| / |A or B|`` with ``|A or B| = |A| + |B| - |A and B|``. A pair whose union is
    empty (two zero-area boxes) has IoU 0 rather than 0 / 0 = NaN; a zero-area box against any box of
    positive area already gives 0 / area = 0.
    """
    _check_boxes("boxes1", boxes1)
    _check_boxes("boxes2", boxes2)
    area1 = box_area(boxes1)
    area2 = box_area(boxes2)
    lt = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])  # (N, M, 2) top-left of the intersection
    rb = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])  # (N, M, 2) bottom-right
    wh = _upcast(rb - lt).clamp(min=0)  # disjoint boxes: empty intersection, not a negative one
    inter = wh[..., 0] * wh[..., 1]
    union = area1[:, None] + area2[None, :] - inter
    return torch.where(union > 0, inter / union, torch.zeros_like(inter))


def clip_boxes_to_image(boxes: Tensor, size: Sequence[int]) -> Tensor:
    """Clamp ``x`` to ``[0, W]`` and ``y`` to ``[0, H]``; ``size`` is ``(H, W)``.

    Works on any ``(..., 4k)`` layout of ``x1, y1, x2, y2`` groups (e.g. class-specific ``(N, K*4)``
    boxes), and returns a new tensor of the same shape.
    """
    if not isinstance(boxes, Tensor) or boxes.dim() == 0 or boxes.shape[-1] % 4 != 0:
        shape = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
        raise ValueError(f"boxes must have a last dimension that is a multiple of 4, got {shape}")
    if len(size) != 2:
        raise ValueError(f"size must be (height, width), got {size!r}")
    height, width = size
    x = boxes[..., 0::2].clamp(min=0, max=width)
    y = boxes[..., 1::2].clamp(min=0, max=height)
    return torch.stack((x, y), dim=-1).reshape(boxes.shape)


def remove_small_boxes(boxes: Tensor, min_size: float) -> Tensor:
    """Indices (int64, ascending) of the boxes whose width and height are both ``>= min_size``."""
    _check_boxes("boxes", boxes)
    ws = boxes[:, 2] - boxes[:, 0]
    hs = boxes[:, 3] - boxes[:, 1]
    keep = (ws >= min_size) & (hs >= min_size)
    return torch.where(keep)[0]

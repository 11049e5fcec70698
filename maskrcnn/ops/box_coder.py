"""The box coder: how a detector turns "move this box a little" into four numbers and back.

A regression head does not predict box corners directly. It predicts *deltas* relative to a reference
box (an anchor in the RPN, a proposal in the box head), in units that do not depend on the reference's
size or position (Girshick et al., R-CNN, appendix C)::

    dx = wx * (gx - px) / pw        dy = wy * (gy - py) / ph        (shift of the center, in box sizes)
    dw = ww * log(gw / pw)          dh = wh * log(gh / ph)          (log of the scale change)

where ``(px, py, pw, ph)`` is the reference box's center and size and ``(gx, gy, gw, gh)`` the target's.
The weights ``(wx, wy, ww, wh)`` only rescale the targets so that they have roughly unit variance for the
loss: ``(1, 1, 1, 1)`` in the RPN, ``(10, 10, 5, 5)`` in the ROI heads. Sizes are ``x2 - x1`` with no
"+1" and centers ``x1 + 0.5 * w`` (torchvision's convention). Decoding inverts the formulas; ``dw`` and
``dh`` are first clamped at ``bbox_xform_clip = log(1000 / 16)`` so that an untrained head cannot ask for
``exp(20)`` times the reference size (the clamp allows up to 62.5x).

dtypes: box geometry is computed in float32 (float64 when an input is float64), whatever the dtype of the
deltas: under ``torch.autocast`` the regression heads give bfloat16 / float16 deltas, and a box corner
rounded to bfloat16 is off by up to 4 px at 1000 px. The weights are Python floats, fixed at construction:
no tensor is built (or copied to a device) per call.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor


class BoxCoder:
    """Encode target boxes as deltas w.r.t. reference boxes, and decode deltas back into boxes.

    Args:
        weights: ``(wx, wy, ww, wh)``, the scale of the four deltas.
        bbox_xform_clip: upper bound of ``dw`` and ``dh`` (after dividing by the weights) in decode.
    """

    def __init__(self, weights: Sequence[float], bbox_xform_clip: float = math.log(1000.0 / 16)):
        if len(weights) != 4:
            raise ValueError(f"weights must have 4 values (wx, wy, ww, wh), got {weights!r}")
        self.weights = tuple(float(w) for w in weights)
        self.bbox_xform_clip = float(bbox_xform_clip)

    def __repr__(self) -> str:
        return f"BoxCoder(weights={self.weights}, bbox_xform_clip={self.bbox_xform_clip:.4f})"

    def encode(self, targets: Tensor, proposals: Tensor) -> Tensor:
        """Deltas that move each proposal onto its target: ``(N, 4), (N, 4) -> (N, 4)``, float32 (float64 if
        an input is)."""
        if targets.dim() != 2 or targets.shape[1] != 4 or targets.shape != proposals.shape:
            raise ValueError(
                f"targets and proposals must both have shape (N, 4), got targets {tuple(targets.shape)} "
                f"and proposals {tuple(proposals.shape)}"
            )
        dtype = geometry_dtype(targets, proposals)
        targets, proposals = targets.to(dtype), proposals.to(dtype)
        wx, wy, ww, wh = self.weights

        ex_widths = proposals[:, 2] - proposals[:, 0]
        ex_heights = proposals[:, 3] - proposals[:, 1]
        ex_ctr_x = proposals[:, 0] + 0.5 * ex_widths
        ex_ctr_y = proposals[:, 1] + 0.5 * ex_heights

        gt_widths = targets[:, 2] - targets[:, 0]
        gt_heights = targets[:, 3] - targets[:, 1]
        gt_ctr_x = targets[:, 0] + 0.5 * gt_widths
        gt_ctr_y = targets[:, 1] + 0.5 * gt_heights

        dx = wx * (gt_ctr_x - ex_ctr_x) / ex_widths
        dy = wy * (gt_ctr_y - ex_ctr_y) / ex_heights
        dw = ww * torch.log(gt_widths / ex_widths)
        dh = wh * torch.log(gt_heights / ex_heights)
        return torch.stack((dx, dy, dw, dh), dim=1)

    def decode(self, deltas: Tensor, boxes: Tensor) -> Tensor:
        """Apply deltas to reference boxes: ``deltas (N, 4) or (N, K*4), boxes (N, 4)`` -> boxes
        of the shape of ``deltas`` (``(N, K*4)``: one box per class, for class-specific regression), float32
        (float64 if an input is): half-precision deltas are widened, the boxes never rounded to them."""
        if deltas.dim() != 2 or deltas.shape[1] % 4 != 0 or boxes.dim() != 2 or boxes.shape[1] != 4:
            raise ValueError(
                f"deltas must have shape (N, 4) or (N, K*4) and boxes (N, 4), got deltas "
                f"{tuple(deltas.shape)} and boxes {tuple(boxes.shape)}"
            )
        if deltas.shape[0] != boxes.shape[0]:
            raise ValueError(
                f"deltas and boxes must have the same number of rows, got deltas {tuple(deltas.shape)} "
                f"and boxes {tuple(boxes.shape)}"
            )
        dtype = geometry_dtype(deltas, boxes)
        deltas, boxes = deltas.to(dtype), boxes.to(dtype)
        widths = boxes[:, 2] - boxes[:, 0]
        heights = boxes[:, 3] - boxes[:, 1]
        ctr_x = boxes[:, 0] + 0.5 * widths
        ctr_y = boxes[:, 1] + 0.5 * heights

        wx, wy, ww, wh = self.weights
        dx = deltas[:, 0::4] / wx
        dy = deltas[:, 1::4] / wy
        dw = (deltas[:, 2::4] / ww).clamp(max=self.bbox_xform_clip)
        dh = (deltas[:, 3::4] / wh).clamp(max=self.bbox_xform_clip)

        pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
        pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
        half_w = 0.5 * (torch.exp(dw) * widths[:, None])
        half_h = 0.5 * (torch.exp(dh) * heights[:, None])
        pred = torch.stack(
            (pred_ctr_x - half_w, pred_ctr_y - half_h, pred_ctr_x + half_w, pred_ctr_y + half_h), dim=2
        )
        return pred.reshape(deltas.shape)


def geometry_dtype(*tensors: Tensor) -> torch.dtype:
    """float64 if any of ``tensors`` is float64, else float32: the dtype box geometry is computed in."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32

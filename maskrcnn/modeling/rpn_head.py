"""The RPN head: a small conv net slid over every pyramid level (Faster R-CNN, Sec. 3.1).

Shape shorthand: ``N`` images, ``D`` pyramid channels (256), ``A`` anchors per position (3),
``h_l x w_l`` the size of level ``l``, ``T = sum_l h_l * w_l * A`` anchors per image.

    P_l (N, D, h_l, w_l) -> conv3x3 + ReLU (N, D, h_l, w_l) -> objectness 1x1 (N, A,     h_l, w_l)
                                                            -> box deltas 1x1 (N, A * 4, h_l, w_l)

The same weights are shared by every level (FPN paper, Sec. 4.1): anchor sizes, not separate heads,
carry the scale. Each objectness value is a logit (sigmoid -> probability that the anchor covers an
object); each group of 4 deltas ``(dx, dy, dw, dh)`` moves one anchor (see ``maskrcnn.ops.BoxCoder``).
The delta channels are ordered anchor-major: channel ``4 * a + k`` is delta ``k`` of anchor ``a``.

:func:`flatten_predictions` lays all levels out in the anchor generator's order (level, then row-major
position, then anchor), so that prediction ``i`` belongs to anchor ``i``.
"""
from __future__ import annotations

from typing import List, Tuple

import torch
from torch import Tensor, nn
import torch.nn.functional as F


class RPNHead(nn.Module):
    """``[P_l] -> ([objectness_l (N, A, h_l, w_l)], [deltas_l (N, 4A, h_l, w_l)])`` for every level.

    Args:
        in_channels: channels ``D`` of the pyramid levels.
        num_anchors: ``A``, anchors per position (the same at every level).
    """

    def __init__(self, in_channels: int, num_anchors: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.objectness = nn.Conv2d(in_channels, num_anchors, 1)
        self.box_deltas = nn.Conv2d(in_channels, num_anchors * 4, 1)
        for conv in (self.conv, self.objectness, self.box_deltas):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, features: List[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
        objectness, deltas = [], []
        for feature in features:
            hidden = F.relu(self.conv(feature))
            objectness.append(self.objectness(hidden))
            deltas.append(self.box_deltas(hidden))
        return objectness, deltas


def flatten_predictions(objectness: List[Tensor], deltas: List[Tensor]) -> Tuple[Tensor, Tensor]:
    """Concatenate the levels in anchor order: ``(N, T)`` logits and ``(N, T, 4)`` deltas."""
    flat_objectness, flat_deltas = [], []
    for logits, level_deltas in zip(objectness, deltas):
        n, a, h, w = logits.shape
        # (N, A, h, w) -> (N, h, w, A) -> (N, h*w*A)
        flat_objectness.append(logits.permute(0, 2, 3, 1).reshape(n, -1))
        # (N, A*4, h, w) -> (N, A, 4, h, w) -> (N, h, w, A, 4) -> (N, h*w*A, 4)
        flat_deltas.append(level_deltas.view(n, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, 4))
    return torch.cat(flat_objectness, dim=1), torch.cat(flat_deltas, dim=1)

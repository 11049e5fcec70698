"""Pasting the mask head's small ``M x M`` probability maps into full-size image masks.

Shape shorthand: ``K`` detections, ``M`` the mask resolution (28), ``(h, w)`` the target image size.

    masks (K, 1, M, M) probabilities, boxes (K, 4) xyxy in image pixels  ->  (K, 1, h, w)

The mask head predicts each ROI's mask on an ``M x M`` grid that covers the box. To put it back:

1. pad the grid by one zero cell on every side, ``(M, M) -> (M + 2, M + 2)``, and enlarge the box about its
   centre by the same factor ``(M + 2) / M``, so that bilinear resizing fades to 0 at the box edge instead of
   smearing the border values outwards;
2. truncate the enlarged box to integers ``(x1, y1, x2, y2)`` and resize the padded grid bilinearly to
   ``(y2 - y1 + 1) x (x2 - x1 + 1)`` pixels (``align_corners=False``);
3. copy the part that falls inside the image to rows ``y1..y2`` and columns ``x1..x2`` of a zero canvas.

The ``+ 1`` in step 2 is the pixel-inclusive box convention of Detectron (v1) and torchvision; the rest of
this project uses ``width = x2 - x1``. It is kept here on purpose, because it is what torchvision computes,
and the difference is at most one pixel of width at the right and bottom edges of each mask.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor
import torch.nn.functional as F


def expand_boxes(boxes: Tensor, scale: float) -> Tensor:
    """Scale ``(K, 4)`` xyxy boxes about their centres by ``scale``; returns float ``(K, 4)``."""
    half_w = (boxes[:, 2] - boxes[:, 0]) * 0.5 * scale
    half_h = (boxes[:, 3] - boxes[:, 1]) * 0.5 * scale
    center_x = (boxes[:, 2] + boxes[:, 0]) * 0.5
    center_y = (boxes[:, 3] + boxes[:, 1]) * 0.5
    return torch.stack((center_x - half_w, center_y - half_h, center_x + half_w, center_y + half_h), dim=1)


def paste_mask_in_image(mask: Tensor, box: Tuple[int, int, int, int], image_height: int, image_width: int
                        ) -> Tensor:
    """Paste one padded ``(M + 2, M + 2)`` mask into a ``(image_height, image_width)`` zero canvas.

    ``box`` holds integer pixel corners; the mask covers ``[x1, x2] x [y1, y2]`` inclusive.
    """
    x1, y1, x2, y2 = box
    width = max(x2 - x1 + 1, 1)
    height = max(y2 - y1 + 1, 1)
    # (M+2, M+2) -> (1, 1, M+2, M+2) -> (1, 1, height, width) -> (height, width)
    resized = F.interpolate(mask[None, None], size=(height, width), mode="bilinear", align_corners=False)[0, 0]
    canvas = mask.new_zeros((image_height, image_width))
    inside_x1, inside_x2 = max(x1, 0), min(x2 + 1, image_width)
    inside_y1, inside_y2 = max(y1, 0), min(y2 + 1, image_height)
    if inside_x1 < inside_x2 and inside_y1 < inside_y2:
        canvas[inside_y1:inside_y2, inside_x1:inside_x2] = resized[
            inside_y1 - y1: inside_y2 - y1, inside_x1 - x1: inside_x2 - x1
        ]
    return canvas


def paste_masks_in_image(masks: Tensor, boxes: Tensor, image_size: Tuple[int, int], padding: int = 1) -> Tensor:
    """``masks (K, 1, M, M)``, ``boxes (K, 4)`` -> ``(K, 1, h, w)`` full-image masks (same dtype as masks)."""
    if masks.dim() != 4 or masks.shape[1] != 1 or masks.shape[-1] != masks.shape[-2]:
        raise ValueError(f"masks: expected shape (K, 1, M, M), got {tuple(masks.shape)}")
    if boxes.shape != (masks.shape[0], 4):
        raise ValueError(f"boxes: expected shape ({masks.shape[0]}, 4), got {tuple(boxes.shape)}")
    image_height, image_width = int(image_size[0]), int(image_size[1])
    size = masks.shape[-1]
    scale = float(size + 2 * padding) / size
    padded = F.pad(masks, (padding,) * 4)  # (K, 1, M, M) -> (K, 1, M+2, M+2)
    int_boxes = expand_boxes(boxes, scale).to(torch.int64).tolist()  # truncation toward zero
    pasted = [paste_mask_in_image(mask[0], tuple(box), image_height, image_width)
              for mask, box in zip(padded, int_boxes)]
    if not pasted:
        return masks.new_zeros((0, 1, image_height, image_width))
    return torch.stack(pasted)[:, None]  # K x (h, w) -> (K, 1, h, w)

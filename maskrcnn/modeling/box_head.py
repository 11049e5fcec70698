"""The box branch of the second stage: classify each ROI and refine its box (Fast R-CNN, Sec. 2).

Shape shorthand: ``R`` ROIs in the batch (all images together), ``D`` pyramid channels (256),
``S`` the pooled size (7), ``F`` the hidden width (1024), ``C`` object classes (background excluded,
so ``C + 1`` outputs with background at index 0), ``K`` detections kept for one image.

    pooled ROI features (R, D, S, S) -> flatten (R, D*S*S) -> fc1 + ReLU -> fc2 + ReLU   (R, F)
      -> class_logits (R, C + 1)      one logit per class, background included
      -> box_deltas   (R, (C + 1) * 4) one (dx, dy, dw, dh) per class ("class-specific" regression)

Training (:func:`box_losses`, Fast R-CNN Eq. 1): ``loss_classifier`` = cross-entropy over the sampled ROIs;
``loss_box_reg`` = smooth-L1 (beta 1/9) between the deltas *of the ROI's GT class* and
``BoxCoder((10, 10, 5, 5)).encode(GT box, ROI)``, summed over positive ROIs and divided by the number of
sampled ROIs (positives and negatives), so the two terms are balanced as in torchvision.

Inference (:func:`postprocess_detections`), per image: softmax scores; decode every class's box and clip
it to the image; drop the background column; keep (box, class) pairs with score ``> score_thresh`` and
sides ``>= 0.01`` px; NMS at ``nms_thresh`` separately per class; keep the ``detections_per_img`` best.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import torch
from torch import Tensor, nn
import torch.nn.functional as F

from maskrcnn.ops import BoxCoder, batched_nms, clip_boxes_to_image, remove_small_boxes
from maskrcnn.ops.boxes import at_least_float32


class BoxHead(nn.Module):
    """Two fully connected layers ("2fc", FPN paper Sec. 4.2): ``(R, D, S, S) -> (R, F)``."""

    def __init__(self, in_channels: int, pooled_size: int, hidden_dim: int = 1024):
        super().__init__()
        self.fc1 = nn.Linear(in_channels * pooled_size * pooled_size, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, hidden_dim)

    def forward(self, pooled: Tensor) -> Tensor:
        x = pooled.flatten(start_dim=1)  # (R, D, S, S) -> (R, D*S*S)
        return F.relu(self.fc2(F.relu(self.fc1(x))))


class BoxPredictor(nn.Module):
    """Class logits and class-specific box deltas: ``(R, F) -> (R, C + 1), (R, (C + 1) * 4)``."""

    def __init__(self, hidden_dim: int, num_classes: int):
        super().__init__()
        self.class_logits = nn.Linear(hidden_dim, num_classes + 1)
        self.box_deltas = nn.Linear(hidden_dim, (num_classes + 1) * 4)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        return self.class_logits(x), self.box_deltas(x)


def box_losses(class_logits: Tensor, box_deltas: Tensor, labels: Tensor, regression_targets: Tensor
               ) -> Dict[str, Tensor]:
    """Fast R-CNN losses over sampled ROIs.

    Args:
        class_logits: ``(R, C + 1)``; box_deltas: ``(R, (C + 1) * 4)``.
        labels: ``(R,)`` int64, 0 for background; regression_targets: ``(R, 4)`` encoded GT boxes.
    Returns:
        ``{"loss_classifier", "loss_box_reg"}``; the box term is exactly 0 when no ROI is positive.
    """
    class_logits, box_deltas = at_least_float32(class_logits), at_least_float32(box_deltas)  # autocast: float32
    classification_loss = F.cross_entropy(class_logits, labels)
    positive = torch.where(labels > 0)[0]
    num_rois = class_logits.shape[0]
    deltas = box_deltas.reshape(num_rois, -1, 4)  # (R, (C+1)*4) -> (R, C+1, 4)
    box_loss = F.smooth_l1_loss(deltas[positive, labels[positive]], regression_targets[positive],
                                beta=1.0 / 9, reduction="sum")
    return {"loss_classifier": classification_loss, "loss_box_reg": box_loss / labels.numel()}


def postprocess_detections(class_logits: Tensor, box_deltas: Tensor, proposals: List[Tensor],
                           image_sizes: List[Tuple[int, int]], box_coder: BoxCoder, score_thresh: float,
                           nms_thresh: float, detections_per_img: int, min_size: float = 1e-2
                           ) -> List[Dict[str, Tensor]]:
    """Turn the second stage's outputs into detections: per image ``boxes (K, 4)``, ``scores (K,)``,
    ``labels (K,)`` (int64 in 1..C), best score first, in the resized image's pixels.

    Args:
        class_logits: ``(R, C + 1)``; box_deltas: ``(R, (C + 1) * 4)``; proposals: per image ``(R_i, 4)``.

    Boxes and scores are float32 (float64 for float64 inputs) even when the logits and deltas are half
    precision (autocast): scores are the softmax of the widened logits, boxes are decoded in float32.
    """
    num_classes_with_bg = class_logits.shape[-1]
    boxes_per_image = [p.shape[0] for p in proposals]
    # (R, (C+1)*4) -> (R, C+1, 4): every proposal decoded once per class
    boxes = box_coder.decode(box_deltas, torch.cat(proposals)).reshape(-1, num_classes_with_bg, 4)
    scores = F.softmax(at_least_float32(class_logits), dim=-1)
    detections = []
    for image_boxes, image_scores, size in zip(boxes.split(boxes_per_image), scores.split(boxes_per_image),
                                               image_sizes):
        image_boxes = clip_boxes_to_image(image_boxes, size)
        labels = torch.arange(num_classes_with_bg, device=class_logits.device)
        labels = labels.view(1, -1).expand_as(image_scores)  # (C+1,) -> (R_i, C+1)
        # drop the background column, then one row per (proposal, class) pair:
        image_boxes = image_boxes[:, 1:].reshape(-1, 4)      # (R_i, C, 4) -> (R_i*C, 4)
        image_scores = image_scores[:, 1:].reshape(-1)       # (R_i, C) -> (R_i*C,)
        labels = labels[:, 1:].reshape(-1)                   # (R_i, C) -> (R_i*C,)
        keep = torch.where(image_scores > score_thresh)[0]
        image_boxes, image_scores, labels = image_boxes[keep], image_scores[keep], labels[keep]
        keep = remove_small_boxes(image_boxes, min_size)
        image_boxes, image_scores, labels = image_boxes[keep], image_scores[keep], labels[keep]
        keep = batched_nms(image_boxes, image_scores, labels, nms_thresh)[:detections_per_img]
        detections.append({"boxes": image_boxes[keep], "scores": image_scores[keep], "labels": labels[keep]})
    return detections

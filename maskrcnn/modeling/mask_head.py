"""The mask branch: a small fully convolutional net predicting one mask per class per ROI.

Mask R-CNN (He et al., 2017), Sec. 3 and Fig. 4 (right, "FPN" head). Shape shorthand: ``R`` ROIs,
``D`` channels (256), ``S`` the pooled size (14), ``M = 2S`` the mask size (28), ``C`` object classes
(``C + 1`` output channels, background at 0, as in the box branch).

    pooled ROI features (R, D, S, S)
      -> 4 x (conv3x3 D->D + ReLU)                   (R, D, S, S)
      -> deconv 2x2 stride 2 + ReLU                  (R, D, M, M)
      -> conv1x1 -> mask logits                      (R, C + 1, M, M)

Only the channel of the ROI's class is used ("decoupling mask and class prediction", Sec. 3): in
training that of its GT class, at inference that of the predicted class.

Training (:func:`mask_loss`): the target of a positive ROI is its matched GT mask *cropped and resampled to
the ROI* by ROIAlign (``M x M``, spatial scale 1, adaptive sampling, ``aligned`` as in the poolers: False
by default, as torchvision's ``project_masks_on_boxes``); the loss is the mean binary cross-entropy over the ``M x M`` logits of the
GT class, averaged over positive ROIs. The targets are soft (bilinear averages of 0/1 pixels in [0, 1]).
"""
from __future__ import annotations

from typing import List

import torch
from torch import Tensor, nn
import torch.nn.functional as F

from maskrcnn.ops import roi_align
from maskrcnn.ops.boxes import at_least_float32


class MaskHead(nn.Module):
    """``(R, D, S, S)`` pooled features -> ``(R, C + 1, 2S, 2S)`` mask logits.

    Args:
        in_channels: ``D``; num_classes: ``C`` (background excluded);
        conv_dims: widths of the 3x3 convs (four 256s in the paper).
    """

    def __init__(self, in_channels: int, num_classes: int, conv_dims=(256, 256, 256, 256)):
        super().__init__()
        convs = []
        channels = in_channels
        for width in conv_dims:
            convs.append(nn.Conv2d(channels, width, 3, padding=1))
            channels = width
        self.convs = nn.ModuleList(convs)
        self.deconv = nn.ConvTranspose2d(channels, channels, 2, stride=2)
        self.logits = nn.Conv2d(channels, num_classes + 1, 1)
        for layer in list(self.convs) + [self.deconv, self.logits]:
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(layer.bias)

    def forward(self, pooled: Tensor) -> Tensor:
        x = pooled
        for conv in self.convs:
            x = F.relu(conv(x))
        x = F.relu(self.deconv(x))  # (R, D, S, S) -> (R, D, 2S, 2S)
        return self.logits(x)


def mask_targets(gt_masks: Tensor, boxes: Tensor, matched_gt: Tensor, mask_size: int, aligned: bool = False
                 ) -> Tensor:
    """Crop each ROI's matched GT mask and resample it to ``(mask_size, mask_size)``.

    Args:
        gt_masks: ``(G, H, W)`` binary masks of one image (resized-image pixels).
        boxes: ``(P, 4)`` positive ROIs; matched_gt: ``(P,)`` int64 index into ``gt_masks``.
        aligned: ROIAlign's half-pixel shift; False is torchvision's ``project_masks_on_boxes``.
    Returns:
        ``(P, mask_size, mask_size)`` float targets in [0, 1].
    """
    # roi_align's rows [image index, x1, y1, x2, y2], here [GT index, box]: built in float32 (float64 for
    # float64 boxes) whatever the dtype of the ROIs, so the GT index (exact below 2**24) and the box are
    # never rounded to half precision (bfloat16 holds integers exactly only up to 256).
    dtype = at_least_float32(boxes).dtype
    rois = torch.cat([matched_gt.to(dtype)[:, None], boxes.to(dtype)], dim=1)  # (P, 1) + (P, 4) -> (P, 5)
    masks = gt_masks[:, None].to(dtype)                                        # (G, H, W) -> (G, 1, H, W)
    # (P, 1, M, M) -> (P, M, M); the indices are valid by construction: no per-call value check (a sync)
    return roi_align(masks, rois, (mask_size, mask_size), 1.0, -1, aligned, check_indices=False)[:, 0]


def mask_loss(mask_logits: Tensor, positive_boxes: List[Tensor], gt_masks: List[Tensor],
              gt_labels: List[Tensor], matched_gt: List[Tensor], aligned: bool = False) -> Tensor:
    """Mean BCE between the GT-class logits of positive ROIs and their mask targets.

    Args:
        mask_logits: ``(P, C + 1, M, M)`` for the positive ROIs of all images, image by image.
        positive_boxes, matched_gt: per image ``(P_i, 4)`` and ``(P_i,)``;
        gt_masks, gt_labels: per image ``(G_i, H, W)`` and ``(G_i,)``.
        aligned: passed to :func:`mask_targets` (the same setting as the poolers').
    Returns:
        A scalar; exactly 0 (still attached to the graph) when there are no positive ROIs.
    """
    mask_size = mask_logits.shape[-1]
    labels, targets = [], []
    for boxes, masks, image_labels, matched in zip(positive_boxes, gt_masks, gt_labels, matched_gt):
        if boxes.shape[0] == 0:
            continue
        labels.append(image_labels[matched])
        targets.append(mask_targets(masks, boxes, matched, mask_size, aligned))
    if not targets:
        return mask_logits.sum() * 0
    labels, targets = torch.cat(labels), torch.cat(targets)
    rows = torch.arange(labels.shape[0], device=labels.device)
    logits = at_least_float32(mask_logits[rows, labels])  # (P, M, M); float32 loss under autocast
    return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype))


def mask_probabilities(mask_logits: Tensor, labels: List[Tensor]) -> List[Tensor]:
    """Sigmoid of each detection's own-class logits: ``(K, C + 1, M, M) -> per image (K_i, 1, M, M)``,
    float32 (float64 for float64 logits) also under autocast."""
    all_labels = torch.cat(labels)
    rows = torch.arange(all_labels.shape[0], device=all_labels.device)
    probabilities = at_least_float32(mask_logits[rows, all_labels]).sigmoid()[:, None]  # (K, M, M) -> (K, 1, M, M)
    return list(probabilities.split([len(l) for l in labels]))

"""The Region Proposal Network: from pyramid features to a few hundred candidate boxes per image.

Faster R-CNN (Ren et al., 2015), Sec. 3.1, with the FPN changes of Lin et al., 2017, Sec. 4.1.
Shape shorthand: ``N`` images, ``L`` pyramid levels (P2..P6), ``A`` anchors per position,
``T = sum_l h_l * w_l * A`` anchors per image, ``G_i`` ground-truth boxes of image ``i``,
``K_i`` proposals kept for image ``i``.

    features [P_l (N, D, h_l, w_l)]
      -> RPNHead                        objectness [(N, A, h_l, w_l)], deltas [(N, 4A, h_l, w_l)]
      -> flatten_predictions            logits (N, T), deltas (N, T, 4)   (anchor order)
      -> decode deltas on the anchors   boxes (N, T, 4)
      -> select_proposals, per image:   top ``pre_nms_top_n`` logits of every level
                                        -> clip to the image -> drop boxes under ``min_size``
                                        -> NMS at ``nms_thresh`` within each level
                                        -> best ``post_nms_top_n`` overall
      -> proposals [(K_i, 4)] in decreasing objectness, resized-image pixels (detached from the graph)

Training adds the RPN's two losses (Faster R-CNN, Eq. 1):

- every anchor is labelled by :class:`Matcher` (IoU >= 0.7 with some GT box, or the best anchor of a GT
  box: positive 1; IoU < 0.3 with every GT box: negative 0; otherwise ignored -1);
- :class:`BalancedPositiveNegativeSampler` keeps ``batch_size_per_image`` anchors per image, at most
  ``positive_fraction`` of them positive;
- ``loss_objectness`` = mean binary cross-entropy of the logits of the sampled anchors;
- ``loss_rpn_box_reg`` = smooth-L1 (beta 1/9) of the deltas of the sampled *positive* anchors against
  ``BoxCoder((1, 1, 1, 1)).encode(matched GT, anchor)``, summed and divided by the number of sampled anchors.

Proposals are never back-propagated through (the "approximate joint training" of Faster R-CNN, Sec. 3.2).

Mixed precision: under ``torch.autocast`` the head's outputs are bfloat16 / float16, but anchors, decoded
boxes, proposals, their scores and the losses stay float32 (float64 for a float64 model): the logits and
deltas are widened before any geometry or loss is computed from them.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
import torch.nn.functional as F

from maskrcnn.modeling.anchors import AnchorGenerator
from maskrcnn.modeling.matcher import Matcher
from maskrcnn.modeling.rpn_head import RPNHead, flatten_predictions
from maskrcnn.modeling.sampler import BalancedPositiveNegativeSampler
from maskrcnn.modeling.transform import ImageBatch
from maskrcnn.ops import BoxCoder, batched_nms, box_iou, clip_boxes_to_image, remove_small_boxes
from maskrcnn.ops.boxes import at_least_float32


class RegionProposalNetwork(nn.Module):
    """Anchors, RPN head, proposal selection and (in training) the RPN losses.

    Args:
        in_channels: channels of the pyramid levels.
        anchor_sizes: one anchor size per level (e.g. 32, 64, 128, 256, 512 for P2..P6).
        aspect_ratios: anchor ratios ``h / w``, shared by every level.
        fg_iou_thresh, bg_iou_thresh: the matcher's positive / negative IoU thresholds.
        batch_size_per_image, positive_fraction: the anchor sampler's settings.
        pre_nms_top_n_train, pre_nms_top_n_test: boxes kept per level before NMS.
        post_nms_top_n_train, post_nms_top_n_test: proposals kept per image after NMS.
        nms_thresh: IoU above which a lower-scoring box of the same level is suppressed.
        min_size: boxes narrower or shorter than this (pixels) are dropped.
        score_thresh: boxes with objectness probability below this are dropped (0 keeps all).
    """

    def __init__(self, in_channels: int = 256, anchor_sizes: Sequence[float] = (32, 64, 128, 256, 512),
                 aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0), fg_iou_thresh: float = 0.7,
                 bg_iou_thresh: float = 0.3, batch_size_per_image: int = 256, positive_fraction: float = 0.5,
                 pre_nms_top_n_train: int = 2000, pre_nms_top_n_test: int = 1000,
                 post_nms_top_n_train: int = 2000, post_nms_top_n_test: int = 1000, nms_thresh: float = 0.7,
                 min_size: float = 1e-3, score_thresh: float = 0.0):
        super().__init__()
        self.anchor_generator = AnchorGenerator(sizes=[(s,) for s in anchor_sizes], aspect_ratios=aspect_ratios)
        num_anchors = self.anchor_generator.num_anchors_per_location()
        if len(set(num_anchors)) != 1:
            raise ValueError(f"anchor_sizes/aspect_ratios: the RPN head needs the same number of anchors "
                             f"at every level, got {num_anchors}")
        self.head = RPNHead(in_channels, num_anchors[0])
        self.box_coder = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
        self.matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=True)
        self.sampler = BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)
        self.pre_nms_top_n = {"train": pre_nms_top_n_train, "test": pre_nms_top_n_test}
        self.post_nms_top_n = {"train": post_nms_top_n_train, "test": post_nms_top_n_test}
        self.nms_thresh = nms_thresh
        self.min_size = min_size
        self.score_thresh = score_thresh

    def forward(self, images: ImageBatch, features: List[Tensor],
                targets: Optional[List[Dict[str, Tensor]]] = None) -> Tuple[List[Tensor], Dict[str, Tensor]]:
        """Proposals ``[(K_i, 4)]`` for each image, and the losses (an empty dict outside training)."""
        objectness, deltas = self.head(features)       # [(N, A, h_l, w_l)], [(N, 4A, h_l, w_l)]
        anchors = self.anchors(images, features)       # (T, 4), the same for every image
        proposals, _ = self.propose(objectness, deltas, anchors, images.image_sizes)
        losses: Dict[str, Tensor] = {}
        if self.training:
            if targets is None:
                raise ValueError("targets: the RPN needs targets in training mode")
            logits, flat_deltas = flatten_predictions(objectness, deltas)  # (N, T), (N, T, 4)
            labels, regression_targets = self.label_anchors(anchors, targets)
            losses = rpn_losses(logits, flat_deltas, labels, regression_targets, self.sampler)
        return proposals, losses

    def anchors(self, images: ImageBatch, features: List[Tensor]) -> Tensor:
        """``(T, 4)`` anchors for the padded batch size ``images.tensors.shape[-2:]``: float32 whatever the
        features' dtype (float64 for float64 features), so autocast never rounds an anchor."""
        feature_sizes = [tuple(f.shape[-2:]) for f in features]
        dtype = torch.promote_types(features[0].dtype, torch.float32)
        return self.anchor_generator(image_size=tuple(images.tensors.shape[-2:]), feature_sizes=feature_sizes,
                                     dtype=dtype, device=features[0].device)

    # ------------------------------------------------------------------------------ proposal selection
    def propose(self, objectness: List[Tensor], deltas: List[Tensor], anchors: Tensor,
                image_sizes: List[Tuple[int, int]]) -> Tuple[List[Tensor], List[Tensor]]:
        """Head outputs -> per image ``(K_i, 4)`` proposals (best first) and their ``(K_i,)`` probabilities.

        Works on detached predictions: no gradient flows through the proposals.
        """
        logits, flat_deltas = flatten_predictions([o.detach() for o in objectness], [d.detach() for d in deltas])
        logits = logits.to(anchors.dtype)  # half-precision logits (autocast) widened: float32 scores
        num_images = logits.shape[0]
        # (N, T, 4) -> (N*T, 4) -> decode -> (N*T, 4) -> (N, T, 4)
        boxes = self.box_coder.decode(flat_deltas.reshape(-1, 4), anchors.repeat(num_images, 1))
        boxes = boxes.view(num_images, -1, 4)
        anchors_per_level = [o.shape[1] * o.shape[2] * o.shape[3] for o in objectness]
        return self.select_proposals(boxes, logits, image_sizes, anchors_per_level)

    def select_proposals(self, boxes: Tensor, logits: Tensor, image_sizes: List[Tuple[int, int]],
                         anchors_per_level: List[int]) -> Tuple[List[Tensor], List[Tensor]]:
        """``boxes (N, T, 4)``, ``logits (N, T)`` -> per image ``(K_i, 4)`` proposals, best first, and their
        ``(K_i,)`` objectness probabilities."""
        mode = "train" if self.training else "test"
        num_images = boxes.shape[0]
        # Level index of every anchor: (T,) -> (N, T)
        levels = torch.cat([torch.full((n,), level, dtype=torch.int64, device=boxes.device)
                            for level, n in enumerate(anchors_per_level)])
        levels = levels[None].expand(num_images, -1)  # (T,) -> (1, T) -> (N, T)
        top_indices = []
        start = 0
        for n in anchors_per_level:
            k = min(self.pre_nms_top_n[mode], n)
            _, indices = logits[:, start:start + n].topk(k, dim=1)  # (N, n) -> (N, k)
            top_indices.append(indices + start)
            start += n
        top_indices = torch.cat(top_indices, dim=1)                   # (N, sum_l k_l)
        rows = torch.arange(num_images, device=boxes.device)[:, None]  # (N, 1), broadcasts over columns
        boxes, logits, levels = boxes[rows, top_indices], logits[rows, top_indices], levels[rows, top_indices]
        scores = torch.sigmoid(logits)

        proposals, proposal_scores = [], []
        for image_boxes, image_scores, image_levels, size in zip(boxes, scores, levels, image_sizes):
            image_boxes = clip_boxes_to_image(image_boxes, size)
            keep = remove_small_boxes(image_boxes, self.min_size)
            image_boxes, image_scores, image_levels = image_boxes[keep], image_scores[keep], image_levels[keep]
            keep = torch.where(image_scores >= self.score_thresh)[0]
            image_boxes, image_scores, image_levels = image_boxes[keep], image_scores[keep], image_levels[keep]
            keep = batched_nms(image_boxes, image_scores, image_levels, self.nms_thresh)  # best first
            keep = keep[: self.post_nms_top_n[mode]]
            proposals.append(image_boxes[keep])
            proposal_scores.append(image_scores[keep])
        return proposals, proposal_scores

    # ------------------------------------------------------------------------------------ training
    def label_anchors(self, anchors: Tensor, targets: List[Dict[str, Tensor]]) -> Tuple[List[Tensor], List[Tensor]]:
        """Per image: ``labels (T,)`` int64 in {1, 0, -1} and ``regression_targets (T, 4)``.

        Regression targets are computed for every anchor (against its best GT box) but only the
        positives' enter the loss. An image without GT boxes has every anchor negative.
        """
        labels, regression_targets = [], []
        for target in targets:
            gt_boxes = target["boxes"]
            if gt_boxes.shape[0] == 0:
                labels.append(torch.zeros(anchors.shape[0], dtype=torch.int64, device=anchors.device))
                regression_targets.append(torch.zeros_like(anchors))
                continue
            matches = self.matcher(box_iou(gt_boxes, anchors))  # (G, T) -> (T,)
            image_labels = (matches >= 0).to(torch.int64)
            image_labels[matches == Matcher.BETWEEN_THRESHOLDS] = -1
            matched_boxes = gt_boxes[matches.clamp(min=0)]     # (T, 4)
            labels.append(image_labels)
            regression_targets.append(self.box_coder.encode(matched_boxes, anchors))
        return labels, regression_targets


def rpn_losses(logits: Tensor, deltas: Tensor, labels: List[Tensor], regression_targets: List[Tensor],
               sampler: BalancedPositiveNegativeSampler) -> Dict[str, Tensor]:
    """``loss_objectness`` and ``loss_rpn_box_reg`` over the anchors the sampler picks.

    Args:
        logits: ``(N, T)`` objectness logits; deltas: ``(N, T, 4)``.
        labels: per image ``(T,)`` int64 in {1, 0, -1}; regression_targets: per image ``(T, 4)``.
    """
    logits, deltas = at_least_float32(logits), at_least_float32(deltas)  # float32 losses under autocast
    positive_masks, negative_masks = sampler(labels)
    positive = torch.where(torch.cat(positive_masks))[0]
    negative = torch.where(torch.cat(negative_masks))[0]
    sampled = torch.cat([positive, negative])
    logits = logits.reshape(-1)          # (N, T) -> (N*T,)
    deltas = deltas.reshape(-1, 4)       # (N, T, 4) -> (N*T, 4)
    labels = torch.cat(labels)
    regression_targets = torch.cat(regression_targets)
    if sampled.numel() == 0:  # no anchors at all: keep the graph connected, contribute nothing
        zero = logits.sum() * 0
        return {"loss_objectness": zero, "loss_rpn_box_reg": deltas.sum() * 0}
    box_loss = F.smooth_l1_loss(deltas[positive], regression_targets[positive], beta=1.0 / 9, reduction="sum")
    objectness_loss = F.binary_cross_entropy_with_logits(logits[sampled], labels[sampled].to(logits.dtype))
    return {"loss_objectness": objectness_loss, "loss_rpn_box_reg": box_loss / sampled.numel()}

"""The second stage: per-ROI classification, box refinement and mask prediction (Mask R-CNN, Sec. 3).

Shape shorthand: ``N`` images, ``R_i`` ROIs of image ``i`` (``R = sum R_i``), ``G_i`` its GT boxes,
``C`` object classes (``C + 1`` with background 0), ``K_i`` detections of image ``i``, ``D`` channels.

Training:

    proposals [(R_i, 4)] + GT boxes appended                  (Faster R-CNN's "add_gt_proposals")
      -> Matcher(0.5, 0.5): label = GT class if IoU >= 0.5, else background 0
      -> sampler: ``batch_size_per_image`` ROIs per image, at most ``positive_fraction`` positive
      -> box pooler on P2..P5 (R, D, 7, 7) -> BoxHead (R, 1024) -> BoxPredictor -> box_losses
      -> positive ROIs only: mask pooler (P, D, 14, 14) -> MaskHead (P, C + 1, 28, 28) -> mask_loss

Inference:

    proposals -> box pooler -> BoxHead -> BoxPredictor -> postprocess_detections [K_i boxes]
      -> mask pooler on the *detected* boxes -> MaskHead -> sigmoid of the predicted class' channel
      -> masks [(K_i, 1, 28, 28)] probabilities (pasted into the image later by the transform)

Appending the GT boxes guarantees positives for the box and mask heads early in training, when the RPN
proposes little of use. All boxes here are in the resized image's pixels; proposals carry no gradient.

Mixed precision: under ``torch.autocast`` the heads' convolutions and FC layers run in bfloat16 / float16,
but every box (proposals, GT boxes, ROIs, regression targets, detections), every score and every loss is
float32 (float64 for a float64 model): GT boxes are never rounded to the proposals' or features' dtype.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from maskrcnn.modeling.attribute_head import AttributeHead, attribute_loss
from maskrcnn.modeling.box_head import BoxHead, BoxPredictor, box_losses, postprocess_detections
from maskrcnn.modeling.mask_head import MaskHead, mask_loss, mask_probabilities
from maskrcnn.modeling.matcher import Matcher
from maskrcnn.modeling.poolers import MultiScaleRoIAlign
from maskrcnn.modeling.sampler import BalancedPositiveNegativeSampler
from maskrcnn.ops import BoxCoder, box_iou
from maskrcnn.ops.boxes import at_least_float32

Size = Tuple[int, int]


class ROIHeads(nn.Module):
    """Box and mask branches over the pooled pyramid features of each ROI.

    Args:
        in_channels: pyramid channels ``D``; num_classes: ``C`` (background excluded).
        box_pooled_size, mask_pooled_size: ROIAlign output sizes (7 and 14).
        sampling_ratio: ROIAlign samples per bin and axis (2); aligned: ROIAlign's half-pixel shift.
        box_hidden_dim: width of the two FC layers (1024); mask_conv_dims: the mask head's conv widths.
        fg_iou_thresh, bg_iou_thresh: IoU at/above which an ROI is foreground / below which background.
        batch_size_per_image, positive_fraction: the ROI sampler's settings (512, 0.25).
        box_coder_weights: ``(wx, wy, ww, wh)`` of the box targets (10, 10, 5, 5).
        score_thresh, nms_thresh, detections_per_img: inference post-processing.
        mask_on: build and run the mask branch (False gives a Faster R-CNN).
        num_attributes: ``A`` > 0 builds the attribute branch (attribute_head.py) on the pooled ROI
            features the box head reads; attribute_hidden_dim, attribute_loss_weight, attribute_pos_weight: its width, the weight
            of ``loss_attributes`` and of the positive BCE term. 0 leaves the model exactly as without it.
    """

    def __init__(self, in_channels: int = 256, num_classes: int = 13, box_pooled_size: int = 7,
                 mask_pooled_size: int = 14, sampling_ratio: int = 2, aligned: bool = False,
                 box_hidden_dim: int = 1024, mask_conv_dims: Sequence[int] = (256, 256, 256, 256),
                 fg_iou_thresh: float = 0.5, bg_iou_thresh: float = 0.5, batch_size_per_image: int = 512,
                 positive_fraction: float = 0.25, box_coder_weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0),
                 score_thresh: float = 0.05, nms_thresh: float = 0.5, detections_per_img: int = 100,
                 mask_on: bool = True, num_attributes: int = 0, attribute_hidden_dim: int = 256,
                 attribute_loss_weight: float = 1.0, attribute_pos_weight: float = 1.0):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes={num_classes}: need at least one object class")
        self.num_classes = num_classes
        self.box_pooler = MultiScaleRoIAlign(box_pooled_size, sampling_ratio, aligned=aligned)
        self.box_head = BoxHead(in_channels, box_pooled_size, box_hidden_dim)
        self.box_predictor = BoxPredictor(box_hidden_dim, num_classes)
        self.mask_on = mask_on
        if mask_on:
            self.mask_pooler = MultiScaleRoIAlign(mask_pooled_size, sampling_ratio, aligned=aligned)
            self.mask_head = MaskHead(in_channels, num_classes, tuple(mask_conv_dims))
        self.num_attributes = num_attributes
        if num_attributes > 0:
            self.attribute_head = AttributeHead(in_channels * box_pooled_size ** 2, attribute_hidden_dim,
                                                num_attributes)
            self.attribute_loss_weight = attribute_loss_weight
            self.attribute_pos_weight = attribute_pos_weight
        self.box_coder = BoxCoder(box_coder_weights)
        self.matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=False)
        self.sampler = BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img

    def forward(self, features: List[Tensor], proposals: List[Tensor], image_sizes: List[Size],
                targets: Optional[List[Dict[str, Tensor]]] = None
                ) -> Tuple[List[Dict[str, Tensor]], Dict[str, Tensor]]:
        """``features`` are the pooled levels P2..P5. Returns (detections, {}) in eval mode and
        ([], losses) in training mode."""
        if self.training:
            if targets is None:
                raise ValueError("targets: the ROI heads need targets in training mode")
            return [], self.training_losses(features, proposals, image_sizes, targets)
        return self.detect(features, proposals, image_sizes), {}

    def box_features(self, features: List[Tensor], boxes: List[Tensor], image_sizes: List[Size]) -> Tensor:
        """The box head's ``(R, 1024)`` features of the ROIs ``boxes`` (read by the box predictor)."""
        return self.box_head(self.box_pooler(features, boxes, image_sizes))  # (R, D, 7, 7) -> (R, F)

    def box_outputs(self, features: List[Tensor], boxes: List[Tensor], image_sizes: List[Size]
                    ) -> Tuple[Tensor, Tensor]:
        """``class_logits (R, C + 1)`` and ``box_deltas (R, (C + 1) * 4)`` for the ROIs ``boxes``."""
        return self.box_predictor(self.box_features(features, boxes, image_sizes))

    def mask_logits(self, features: List[Tensor], boxes: List[Tensor], image_sizes: List[Size]) -> Tensor:
        """``(R, C + 1, 28, 28)`` mask logits for the ROIs ``boxes``."""
        return self.mask_head(self.mask_pooler(features, boxes, image_sizes))  # (R, D, 14, 14) -> ...

    # --------------------------------------------------------------------------------------- inference
    def detect(self, features: List[Tensor], proposals: List[Tensor], image_sizes: List[Size]
               ) -> List[Dict[str, Tensor]]:
        class_logits, box_deltas = self.box_outputs(features, proposals, image_sizes)
        detections = postprocess_detections(class_logits, box_deltas, proposals, image_sizes, self.box_coder,
                                            self.score_thresh, self.nms_thresh, self.detections_per_img)
        if self.mask_on:
            boxes = [d["boxes"] for d in detections]
            logits = self.mask_logits(features, boxes, image_sizes)
            for detection, masks in zip(detections, mask_probabilities(logits, [d["labels"] for d in detections])):
                detection["masks"] = masks  # (K_i, 1, 28, 28)
        if self.num_attributes > 0:
            boxes = [d["boxes"] for d in detections]
            scores = self.attribute_probabilities(features, boxes, image_sizes)  # (K, A), all images
            for detection, image_scores in zip(detections, scores.split([b.shape[0] for b in boxes])):
                detection["attribute_scores"] = image_scores  # (K_i, A) float32
        return detections

    def attribute_probabilities(self, features: List[Tensor], boxes: List[Tensor], image_sizes: List[Size]
                                ) -> Tensor:
        """``(K, A)`` float32 attribute probabilities (sigmoids) of the boxes ``boxes`` (the detections, ``K``
        of all images in order): they are pooled once more (the box pooler) and read by the attribute head."""
        logits = self.attribute_head(self.box_pooler(features, boxes, image_sizes))  # (K, D, 7, 7) -> (K, A)
        return torch.sigmoid(logits.float())

    # ---------------------------------------------------------------------------------------- training
    def sample_rois(self, proposals: List[Tensor], targets: List[Dict[str, Tensor]]):
        """Append GT boxes, match, and sample. Per image returns the sampled ``rois (S_i, 4)``,
        ``labels (S_i,)`` int64 (0 = background), ``matched_gt (S_i,)`` (index of the matched GT box; 0 for
        background ROIs) and ``regression_targets (S_i, 4)``."""
        all_rois, all_labels, all_matched = [], [], []
        for image_proposals, target in zip(proposals, targets):
            gt_boxes, gt_labels = target["boxes"], target["labels"]
            dtype = torch.promote_types(at_least_float32(image_proposals).dtype, gt_boxes.dtype)
            rois = torch.cat([image_proposals.to(dtype), gt_boxes.to(dtype)])  # (R_i + G_i, 4)
            if gt_boxes.shape[0] == 0:
                matched = torch.zeros(rois.shape[0], dtype=torch.int64, device=rois.device)
                labels = torch.zeros_like(matched)
            else:
                matches = self.matcher(box_iou(gt_boxes, rois))  # (G_i, R_i + G_i) -> (R_i + G_i,)
                matched = matches.clamp(min=0)
                labels = gt_labels[matched].to(torch.int64)
                labels[matches == Matcher.BELOW_LOW_THRESHOLD] = 0
                labels[matches == Matcher.BETWEEN_THRESHOLDS] = -1
            all_rois.append(rois)
            all_labels.append(labels)
            all_matched.append(matched)
        positive_masks, negative_masks = self.sampler(all_labels)
        sampled_rois, sampled_labels, sampled_matched, regression_targets = [], [], [], []
        for rois, labels, matched, positive, negative, target in zip(
                all_rois, all_labels, all_matched, positive_masks, negative_masks, targets):
            keep = torch.where(positive | negative)[0]
            rois, labels, matched = rois[keep], labels[keep], matched[keep]
            gt_boxes = target["boxes"]
            # Background ROIs of an image without GT regress onto themselves (zero targets, never used).
            matched_boxes = gt_boxes[matched].to(rois) if gt_boxes.shape[0] > 0 else rois
            sampled_rois.append(rois)
            sampled_labels.append(labels)
            sampled_matched.append(matched)
            regression_targets.append(self.box_coder.encode(matched_boxes, rois))
        return sampled_rois, sampled_labels, sampled_matched, regression_targets

    def training_losses(self, features: List[Tensor], proposals: List[Tensor], image_sizes: List[Size],
                        targets: List[Dict[str, Tensor]]) -> Dict[str, Tensor]:
        rois, labels, matched_gt, regression_targets = self.sample_rois(proposals, targets)
        pooled = self.box_pooler(features, rois, image_sizes)  # (S, D, 7, 7), S sampled ROIs
        class_logits, box_deltas = self.box_predictor(self.box_head(pooled))  # via (S, F) box features
        losses = box_losses(class_logits, box_deltas, torch.cat(labels), torch.cat(regression_targets))
        if self.num_attributes > 0:
            losses["loss_attributes"] = self.attribute_weighted_loss(pooled, labels, matched_gt, targets)
        if self.mask_on:
            positive = [torch.where(image_labels > 0)[0] for image_labels in labels]
            positive_rois = [image_rois[p] for image_rois, p in zip(rois, positive)]
            positive_matched = [image_matched[p] for image_matched, p in zip(matched_gt, positive)]
            for index, target in enumerate(targets):
                if "masks" not in target:
                    raise ValueError(f"targets[{index}]['masks']: the mask branch needs GT masks in training")
            logits = self.mask_logits(features, positive_rois, image_sizes)  # (P, C + 1, 28, 28)
            losses["loss_mask"] = mask_loss(logits, positive_rois, [t["masks"] for t in targets],
                                            [t["labels"] for t in targets], positive_matched,
                                            aligned=self.mask_pooler.aligned)
        return losses

    def attribute_weighted_loss(self, pooled: Tensor, labels: List[Tensor], matched_gt: List[Tensor],
                                targets: List[Dict[str, Tensor]]) -> Tensor:
        """``attribute_loss_weight *`` BCE of the positive sampled ROIs against their GT object's attributes.

        ``pooled (S, D, 7, 7)`` are the sampled ROIs' pooled features, all images in order;
        ``labels``/``matched_gt`` per image ``(S_i,)``. Targets without ``attributes`` (a dataset without them) count as unknown."""
        target_rows, known_rows = [], []
        for image_labels, image_matched, target in zip(labels, matched_gt, targets):
            count = image_labels.shape[0]
            if "attributes" in target and target["attributes"].shape[0] > 0:
                target_rows.append(target["attributes"][image_matched].to(pooled.dtype))  # (S_i, A)
                known_rows.append(target["attributes_known"][image_matched] & (image_labels > 0))
            else:
                target_rows.append(pooled.new_zeros((count, self.num_attributes)))
                known_rows.append(torch.zeros(count, dtype=torch.bool, device=pooled.device))
        known = torch.cat(known_rows)  # (S,) positive ROIs of annotated objects
        logits = self.attribute_head(pooled)  # (S, A)
        loss = attribute_loss(logits, torch.cat(target_rows), known, self.attribute_pos_weight)
        return self.attribute_loss_weight * loss

"""Mask R-CNN: the whole model, whose forward reads like Fig. 1 of the paper (He et al., 2017).

Shape shorthand: ``N`` images of sizes ``(3, h_i, w_i)``; ``(N, 3, H, W)`` the resized, padded batch;
``D`` = 256 pyramid channels; ``K_i`` detections of image ``i``; ``C`` object classes.

    images [(3, h_i, w_i)] in [0, 1]
      -> ImageTransform             normalize, resize, pad           ImageBatch (N, 3, H, W)
      -> ResNetFPN                  backbone + feature pyramid      [P2 .. P6], (N, D, H/s, W/s)
      -> RegionProposalNetwork      anchors, objectness, NMS         proposals [(R_i, 4)]
      -> ROIHeads                   box + mask branches on P2..P5    detections [K_i boxes, masks 28x28]
      -> ImageTransform.postprocess back to original pixels          boxes, masks (K_i, 1, h_i, w_i)

Eval mode returns, per image, ``{"boxes" (K_i, 4) float xyxy, "labels" (K_i,) int64 in 1..C,
"scores" (K_i,), "masks" (K_i, 1, h_i, w_i) float probabilities}`` in original-image pixels. Training mode
takes targets (``boxes``, ``labels``, ``masks`` per image) and returns the losses ``loss_objectness``,
``loss_rpn_box_reg`` (RPN), ``loss_classifier``, ``loss_box_reg`` (box head) and ``loss_mask``.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Union

from torch import Tensor, nn

from maskrcnn.modeling.fpn import ResNetFPN
from maskrcnn.modeling.roi_heads import ROIHeads
from maskrcnn.modeling.rpn import RegionProposalNetwork
from maskrcnn.modeling.transform import ImageTransform

Detections = List[Dict[str, Tensor]]
Losses = Dict[str, Tensor]

# The levels the second stage pools from: P2..P5 (P6 only feeds the RPN; FPN paper Sec. 4.2).
NUM_POOLED_LEVELS = 4


class MaskRCNN(nn.Module):
    """The assembled detector: ``transform -> backbone -> rpn -> roi_heads -> transform.postprocess``."""

    def __init__(self, transform: ImageTransform, backbone: ResNetFPN, rpn: RegionProposalNetwork,
                 roi_heads: ROIHeads):
        super().__init__()
        self.transform = transform
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads

    def forward(self, images: List[Tensor], targets: Optional[List[Dict[str, Tensor]]] = None
                ) -> Union[Detections, Losses]:
        if self.training and targets is None:
            raise ValueError("targets: required in training mode (call model.eval() for inference)")
        original_sizes = [(int(image.shape[-2]), int(image.shape[-1])) for image in images]
        batch, targets = self.transform(images, targets)
        features = self.backbone(batch.tensors)
        proposals, rpn_losses = self.rpn(batch, features, targets)
        detections, head_losses = self.roi_heads(features[:NUM_POOLED_LEVELS], proposals, batch.image_sizes,
                                                 targets)
        if self.training:
            return {**rpn_losses, **head_losses}
        return self.transform.postprocess(detections, batch.image_sizes, original_sizes)

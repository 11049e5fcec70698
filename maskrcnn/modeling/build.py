"""``build_model(cfg)``: the one place where configuration keys become constructor arguments.

Every module takes plain keyword arguments; this file wires them from the config tree
(``maskrcnn/defaults.py`` documents each key). ``model.num_classes`` counts object categories only; the
predictors add the background class themselves.
"""
from __future__ import annotations

from maskrcnn.modeling.fpn import ResNetFPN
from maskrcnn.modeling.mask_rcnn import MaskRCNN
from maskrcnn.modeling.roi_heads import ROIHeads
from maskrcnn.modeling.rpn import RegionProposalNetwork
from maskrcnn.modeling.transform import ImageTransform


def build_transform(cfg) -> ImageTransform:
    i = cfg.input
    return ImageTransform(min_size=i.min_size, max_size=i.max_size, pixel_mean=i.pixel_mean, pixel_std=i.pixel_std,
                          size_divisible=i.size_divisible)


def build_rpn(cfg) -> RegionProposalNetwork:
    r = cfg.model.rpn
    return RegionProposalNetwork(
        in_channels=cfg.model.backbone.fpn_channels, anchor_sizes=r.anchor_sizes, aspect_ratios=r.aspect_ratios,
        fg_iou_thresh=r.fg_iou_thresh, bg_iou_thresh=r.bg_iou_thresh, batch_size_per_image=r.batch_size_per_image,
        positive_fraction=r.positive_fraction, pre_nms_top_n_train=r.pre_nms_top_n_train,
        pre_nms_top_n_test=r.pre_nms_top_n_test, post_nms_top_n_train=r.post_nms_top_n_train,
        post_nms_top_n_test=r.post_nms_top_n_test, nms_thresh=r.nms_thresh, min_size=r.min_size,
        score_thresh=r.score_thresh,
    )


def build_roi_heads(cfg) -> ROIHeads:
    h = cfg.model.roi_heads
    return ROIHeads(
        in_channels=cfg.model.backbone.fpn_channels, num_classes=cfg.model.num_classes,
        box_pooled_size=h.box_pooled_size, mask_pooled_size=h.mask_pooled_size, sampling_ratio=h.sampling_ratio,
        aligned=h.aligned, box_hidden_dim=h.box_hidden_dim, mask_conv_dims=h.mask_conv_dims,
        fg_iou_thresh=h.fg_iou_thresh, bg_iou_thresh=h.bg_iou_thresh, batch_size_per_image=h.batch_size_per_image,
        positive_fraction=h.positive_fraction, box_coder_weights=h.box_coder_weights,
        score_thresh=h.score_thresh, nms_thresh=h.nms_thresh, detections_per_img=h.detections_per_img,
        mask_on=cfg.model.mask_on, num_attributes=cfg.model.num_attributes,
        attribute_hidden_dim=cfg.model.attribute_hidden_dim, attribute_loss_weight=cfg.model.attribute_loss_weight,
        attribute_pos_weight=cfg.model.attribute_pos_weight,
    )


def build_model(cfg, load_weights: bool = True) -> MaskRCNN:
    """A :class:`MaskRCNN` from a config (``maskrcnn.config.load_config``).

    With ``load_weights`` and a non-empty ``model.weights`` the file is loaded through
    :func:`maskrcnn.checkpoint.load_model_weights` (torchvision and ImageNet layouts converted; a different
    class count re-initializes the predictors), which prints what it loaded.
    """
    b = cfg.model.backbone
    model = MaskRCNN(
        transform=build_transform(cfg),
        backbone=ResNetFPN(depth=b.depth, frozen_stages=b.frozen_stages, out_channels=b.fpn_channels),
        rpn=build_rpn(cfg),
        roi_heads=build_roi_heads(cfg),
    )
    if load_weights and cfg.model.weights:
        # imported here: maskrcnn.checkpoint itself imports maskrcnn.modeling.resnet
        from maskrcnn.checkpoint import checkpoint_anchors, load_model_weights, load_weights_file

        load_model_weights(model, load_weights_file(cfg.model.weights), anchors=checkpoint_anchors(cfg.model.weights))
    return model

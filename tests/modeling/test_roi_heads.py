"""ROI heads: sampling with GT boxes appended, the box losses (float64 formulas), and post-processing."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from maskrcnn.modeling.box_head import BoxHead, BoxPredictor, box_losses, postprocess_detections
from maskrcnn.modeling.roi_heads import ROIHeads
from maskrcnn.ops import BoxCoder


def small_heads(**kwargs):
    defaults = dict(in_channels=4, num_classes=3, box_hidden_dim=16, mask_conv_dims=(4, 4),
                    batch_size_per_image=10**7)
    defaults.update(kwargs)
    return ROIHeads(**defaults)


def test_sampling_appends_gt_boxes_and_labels_by_iou():
    heads = small_heads()
    proposals = [torch.tensor([[0.0, 0.0, 10.0, 10.0],     # IoU 0.81 with GT 0 -> class 2
                               [0.0, 0.0, 10.0, 4.0],      # IoU 36/85 = 0.42 -> background
                               [50.0, 50.0, 70.0, 70.0]])]  # IoU 1 with GT 1 -> class 3
    gt = torch.tensor([[0.0, 0.0, 9.0, 9.0], [50.0, 50.0, 70.0, 70.0]])
    target = {"boxes": gt, "labels": torch.tensor([2, 3])}
    (rois,), (labels,), (matched,), (targets,) = heads.sample_rois(proposals, [target])
    assert torch.equal(rois, torch.cat([proposals[0], gt]))   # every candidate kept, GT appended last
    assert labels.tolist() == [2, 0, 3, 2, 3]
    assert matched[labels > 0].tolist() == [0, 1, 0, 1]
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    positive = labels > 0
    torch.testing.assert_close(targets[positive], coder.encode(gt[matched[positive]], rois[positive]))
    # ROI 0 -> GT 0: centres 5 vs 4.5 over width 10, sizes 9/10: (10 * -0.05, 10 * -0.05, 5 log .9, 5 log .9)
    torch.testing.assert_close(targets[0], torch.tensor([-0.5, -0.5, 5 * math.log(0.9), 5 * math.log(0.9)]))


def test_sampling_an_image_without_gt_gives_background_only():
    heads = small_heads()
    proposals = [torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 8.0, 9.0]])]
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    (rois,), (labels,), _, (targets,) = heads.sample_rois(proposals, [empty])
    assert rois.shape == (2, 4) and labels.tolist() == [0, 0]
    assert torch.equal(targets, torch.zeros(2, 4))


def test_sampler_quota_is_applied_per_image():
    heads = small_heads(batch_size_per_image=4, positive_fraction=0.25)
    proposals = [torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 3 + [[50.0, 50.0, 60.0, 60.0]] * 5)]
    target = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "labels": torch.tensor([1])}
    (rois,), (labels,), _, _ = heads.sample_rois(proposals, [target])
    assert labels.shape == (4,) and int((labels > 0).sum()) == 1 and int((labels == 0).sum()) == 3


def test_box_losses_match_float64_formulas():
    torch.manual_seed(0)
    logits = torch.randn(5, 4, dtype=torch.float64)
    deltas = torch.randn(5, 16, dtype=torch.float64)
    labels = torch.tensor([2, 0, 3, 0, 1])
    targets = torch.randn(5, 4, dtype=torch.float64)
    losses = box_losses(logits, deltas, labels, targets)
    log_softmax = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    cross_entropy = -log_softmax[torch.arange(5), labels].mean()
    smooth_l1 = 0.0
    for r in range(5):
        if labels[r] > 0:
            d = (deltas[r, 4 * labels[r]: 4 * labels[r] + 4] - targets[r]).abs()
            smooth_l1 += torch.where(d < 1 / 9, 0.5 * d**2 * 9, d - 0.5 / 9).sum()
    torch.testing.assert_close(losses["loss_classifier"], cross_entropy, rtol=1e-12, atol=0)
    torch.testing.assert_close(losses["loss_box_reg"], smooth_l1 / 5, rtol=1e-12, atol=0)


def test_box_loss_is_exactly_zero_without_positives():
    logits = torch.randn(3, 4, requires_grad=True)
    deltas = torch.randn(3, 16, requires_grad=True)
    losses = box_losses(logits, deltas, torch.zeros(3, dtype=torch.int64), torch.zeros(3, 4))
    assert losses["loss_box_reg"].item() == 0.0 and losses["loss_box_reg"].requires_grad
    assert math.isfinite(losses["loss_classifier"].item())


def test_postprocess_thresholds_clips_and_runs_nms_per_class():
    proposals = [torch.tensor([[10.0, 10.0, 50.0, 50.0], [12.0, 12.0, 50.0, 50.0], [60.0, 0.0, 130.0, 40.0]])]
    # background, class 1, class 2
    probabilities = torch.tensor([[0.1, 0.6, 0.3], [0.2, 0.7, 0.1], [0.5, 0.45, 0.05]])
    logits = probabilities.log()
    deltas = torch.zeros(3, 12)  # decoded boxes = the proposals
    (detections,) = postprocess_detections(logits, deltas, proposals, [(100, 100)], BoxCoder((10, 10, 5, 5)),
                                           score_thresh=0.2, nms_thresh=0.5, detections_per_img=10)
    # class 1: proposals 1 (0.7) and 0 (0.6) overlap (IoU 0.9) -> 1 kept; proposal 2 (0.45, clipped to x <= 100)
    # class 2: proposal 0 (0.3); proposal 1 (0.1) and 2 (0.05) are under the threshold
    torch.testing.assert_close(detections["scores"], torch.tensor([0.7, 0.45, 0.3]))
    assert detections["labels"].tolist() == [1, 1, 2]
    torch.testing.assert_close(detections["boxes"], torch.tensor([[12.0, 12.0, 50.0, 50.0], [60.0, 0.0, 100.0, 40.0],
                                                                  [10.0, 10.0, 50.0, 50.0]]))
    (top1,) = postprocess_detections(logits, deltas, proposals, [(100, 100)], BoxCoder((10, 10, 5, 5)),
                                     score_thresh=0.2, nms_thresh=0.5, detections_per_img=1)
    assert top1["labels"].tolist() == [1] and top1["boxes"].shape == (1, 4)


def test_box_head_and_predictor_shapes():
    head, predictor = BoxHead(4, 7, 16), BoxPredictor(16, num_classes=3)
    logits, deltas = predictor(head(torch.randn(5, 4, 7, 7)))
    assert logits.shape == (5, 4) and deltas.shape == (5, 16)


def test_forward_in_both_modes():
    torch.manual_seed(0)
    heads = small_heads()
    features = [torch.randn(1, 4, 64 // s, 64 // s) for s in (4, 8, 16, 32)]
    proposals = [torch.tensor([[4.0, 4.0, 30.0, 40.0], [20.0, 8.0, 60.0, 50.0]])]
    heads.eval()
    with torch.no_grad():
        (detections,), losses = heads(features, proposals, [(64, 64)])
    k = detections["boxes"].shape[0]
    assert losses == {} and detections["masks"].shape == (k, 1, 28, 28) and k > 0
    assert detections["labels"].min() >= 1 and detections["labels"].max() <= 3
    heads.train()
    masks = torch.zeros(1, 64, 64, dtype=torch.uint8)
    masks[0, 5:40, 5:30] = 1
    target = {"boxes": torch.tensor([[5.0, 5.0, 30.0, 40.0]]), "labels": torch.tensor([2]), "masks": masks}
    detections, losses = heads(features, proposals, [(64, 64)], [target])
    assert detections == [] and set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask"}
    assert all(torch.isfinite(v) for v in losses.values())
    with pytest.raises(ValueError, match=r"targets\[0\]\['masks'\]"):
        heads(features, proposals, [(64, 64)], [{"boxes": target["boxes"], "labels": target["labels"]}])

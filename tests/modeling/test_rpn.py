"""RPN: prediction layout vs anchor order, anchor labelling, losses (float64 formulas), proposal selection."""
from __future__ import annotations

import math

import pytest
import torch

from maskrcnn.modeling.rpn import RegionProposalNetwork, rpn_losses
from maskrcnn.modeling.rpn_head import RPNHead, flatten_predictions
from maskrcnn.modeling.sampler import BalancedPositiveNegativeSampler
from maskrcnn.modeling.transform import ImageBatch
from maskrcnn.ops import BoxCoder


def small_rpn(**kwargs):
    return RegionProposalNetwork(in_channels=4, anchor_sizes=(32, 64), aspect_ratios=(0.5, 1.0, 2.0), **kwargs)


def test_flattened_predictions_follow_the_anchor_order():
    """Anchor order is (level, row, column, anchor); encode those in the values and check the layout."""
    sizes = [(3, 4), (2, 2)]
    objectness, deltas = [], []
    for level, (h, w) in enumerate(sizes):
        y = torch.arange(h)[None, :, None]
        x = torch.arange(w)[None, None, :]
        a = torch.arange(3)[:, None, None]
        code = level * 10000 + y * 1000 + x * 10 + a                          # (A, h, w)
        objectness.append(code[None].float())                                 # (1, A, h, w)
        k = torch.arange(4)[None, :, None, None]
        deltas.append((code[:, None] * 10 + k).reshape(1, 12, h, w).float())  # channel 4a + k
    logits, flat_deltas = flatten_predictions(objectness, deltas)
    expected = [level * 10000 + y * 1000 + x * 10 + a
                for level, (h, w) in enumerate(sizes) for y in range(h) for x in range(w) for a in range(3)]
    assert logits.shape == (1, len(expected)) and flat_deltas.shape == (1, len(expected), 4)
    assert logits[0].long().tolist() == expected
    assert flat_deltas[0].long().tolist() == [[e * 10 + k for k in range(4)] for e in expected]


def test_head_shapes_and_initialization():
    head = RPNHead(8, 3)
    objectness, deltas = head([torch.randn(2, 8, 6, 5), torch.randn(2, 8, 3, 3)])
    assert [tuple(o.shape) for o in objectness] == [(2, 3, 6, 5), (2, 3, 3, 3)]
    assert [tuple(d.shape) for d in deltas] == [(2, 12, 6, 5), (2, 12, 3, 3)]
    assert float(head.conv.weight.detach().std()) == pytest.approx(0.01, rel=0.1)
    assert torch.count_nonzero(head.objectness.bias) == 0


def test_anchor_labels_and_regression_targets():
    rpn = small_rpn()
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0],     # IoU 1.0 -> positive
                            [0.0, 0.0, 10.0, 8.0],      # IoU 0.8 -> positive
                            [0.0, 0.0, 10.0, 5.0],      # IoU 0.5 -> ignored
                            [0.0, 0.0, 5.0, 5.0],       # IoU 0.25 -> negative
                            [20.0, 20.0, 30.0, 30.0]])  # IoU 0 with the first box, best match of the second
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [21.0, 21.0, 40.0, 40.0]])
    (labels,), (targets,) = rpn.label_anchors(anchors, [{"boxes": gt, "labels": torch.tensor([1, 2])}])
    assert labels.tolist() == [1, 1, -1, 0, 1]   # the last one: a low-quality match promoted to positive
    coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
    torch.testing.assert_close(targets[[0, 1, 4]], coder.encode(gt[[0, 0, 1]], anchors[[0, 1, 4]]))
    # anchor 1 against GT 0: same centre x, centre y 4 vs 5 over height 8, width ratio 1, height ratio 10/8
    torch.testing.assert_close(targets[1], torch.tensor([0.0, 1 / 8, 0.0, math.log(10 / 8)]))


def test_losses_match_float64_formulas():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, dtype=torch.float64)
    deltas = torch.randn(2, 6, 4, dtype=torch.float64)
    labels = [torch.tensor([1, 0, -1, 0, 1, 0]), torch.tensor([0, 0, 0, -1, -1, 1])]
    targets = [torch.randn(6, 4, dtype=torch.float64) for _ in range(2)]
    keep_all = BalancedPositiveNegativeSampler(10**7, 0.5)
    losses = rpn_losses(logits, deltas, labels, targets, keep_all)

    flat_labels, flat_logits = torch.cat(labels), logits.reshape(-1)
    sampled = flat_labels >= 0
    y, z = flat_labels[sampled].double(), flat_logits[sampled]
    bce = -(y * torch.log(torch.sigmoid(z)) + (1 - y) * torch.log(1 - torch.sigmoid(z))).mean()
    diff = (deltas.reshape(-1, 4) - torch.cat(targets))[flat_labels == 1].abs()
    beta = 1 / 9
    smooth_l1 = torch.where(diff < beta, 0.5 * diff**2 / beta, diff - 0.5 * beta).sum()
    torch.testing.assert_close(losses["loss_objectness"], bce, rtol=1e-12, atol=0)
    torch.testing.assert_close(losses["loss_rpn_box_reg"], smooth_l1 / int(sampled.sum()), rtol=1e-12, atol=0)


def test_sampler_limits_the_anchors_in_the_loss():
    logits = torch.zeros(1, 8, requires_grad=True)
    labels = [torch.tensor([1, 1, 1, 0, 0, 0, 0, 0])]
    losses = rpn_losses(logits, torch.zeros(1, 8, 4), labels, [torch.zeros(8, 4)],
                        BalancedPositiveNegativeSampler(4, 0.5))
    losses["loss_objectness"].backward()
    assert int(torch.count_nonzero(logits.grad)) == 4  # 2 positives + 2 negatives


def test_image_without_boxes_gives_all_negative_anchors_and_zero_box_loss():
    rpn = small_rpn(batch_size_per_image=16)
    rpn.train()
    features = [torch.randn(1, 4, 8, 8), torch.randn(1, 4, 4, 4)]
    images = ImageBatch(torch.zeros(1, 3, 32, 32), [(32, 32)])
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    proposals, losses = rpn(images, features, [empty])
    assert losses["loss_rpn_box_reg"].item() == 0.0 and losses["loss_rpn_box_reg"].requires_grad
    assert math.isfinite(losses["loss_objectness"].item()) and losses["loss_objectness"].item() > 0
    assert proposals[0].shape[1] == 4


def test_select_proposals_per_level_top_n_clipping_nms_and_order():
    rpn = small_rpn(pre_nms_top_n_test=2, post_nms_top_n_test=3, nms_thresh=0.5, min_size=1.0)
    rpn.eval()
    boxes = torch.tensor([[[0.0, 0.0, 10.0, 10.0],     # level 0, logit 3: kept
                           [0.0, 0.0, 10.0, 10.5],     # level 0, logit 2: suppressed by the one above
                           [50.0, 50.0, 60.0, 60.0],   # level 0, logit 1: not in the level's top 2
                           [0.0, 0.0, 10.0, 10.0],     # level 1, logit 2.5: same box, other level, kept
                           [-5.0, 30.0, 0.5, 200.0]]])  # level 1, logit 4: clipped to 0.5 wide -> too small
    logits = torch.tensor([[3.0, 2.0, 1.0, 2.5, 4.0]])
    (proposals,), (scores,) = rpn.select_proposals(boxes, logits, [(100, 100)], [3, 2])
    torch.testing.assert_close(proposals, torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]]))
    torch.testing.assert_close(scores, torch.sigmoid(torch.tensor([3.0, 2.5])))


def test_training_uses_the_train_top_n():
    rpn = small_rpn(pre_nms_top_n_train=5, post_nms_top_n_train=4, pre_nms_top_n_test=50,
                    post_nms_top_n_test=40, nms_thresh=1.0)
    features = [torch.randn(1, 4, 8, 8), torch.randn(1, 4, 4, 4)]
    images = ImageBatch(torch.zeros(1, 3, 32, 32), [(32, 32)])
    target = {"boxes": torch.tensor([[2.0, 3.0, 20.0, 25.0]]), "labels": torch.tensor([1])}
    rpn.train()
    proposals, losses = rpn(images, features, [target])
    assert proposals[0].shape[0] <= 4 and set(losses) == {"loss_objectness", "loss_rpn_box_reg"}
    rpn.eval()
    proposals, losses = rpn(images, features)
    assert 4 < proposals[0].shape[0] <= 40 and losses == {}
    with pytest.raises(ValueError, match="targets"):
        rpn.train()(images, features)

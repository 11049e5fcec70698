"""The attribute head (maskrcnn/modeling/attribute_head.py): its loss against hand-computed values, what it
adds to training and inference, and that model.num_attributes = 0 leaves the model exactly as it was."""
from __future__ import annotations

import math

import pytest
import torch

from maskrcnn.config import load_config
from maskrcnn.modeling import build_model
from maskrcnn.modeling.attribute_head import AttributeHead, attribute_loss

SMALL = ["model.backbone.depth=18", "model.num_classes=4", "input.min_size=64", "input.max_size=96",
         "model.rpn.pre_nms_top_n_test=200", "model.rpn.post_nms_top_n_test=50",
         "model.backbone.fpn_channels=64", "model.roi_heads.box_hidden_dim=64",
         "model.roi_heads.mask_conv_dims=[64,64]", "model.roi_heads.detections_per_img=20",
         "model.roi_heads.score_thresh=0.0"]


def small_model(*overrides):
    torch.manual_seed(0)
    return build_model(load_config(overrides=SMALL + list(overrides)))


def sample(attributes=True):
    image = torch.rand(3, 64, 80, generator=torch.Generator().manual_seed(0))
    masks = torch.zeros(2, 64, 80, dtype=torch.uint8)
    masks[0, 10:40, 5:30] = 1
    masks[1, 20:60, 40:75] = 1
    target = {"boxes": torch.tensor([[5.0, 10.0, 30.0, 40.0], [40.0, 20.0, 75.0, 60.0]]),
              "labels": torch.tensor([1, 3]), "masks": masks}
    if attributes:
        target["attributes"] = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
        target["attributes_known"] = torch.tensor([True, False])
    return image, target


def test_loss_against_hand_computed_values():
    logits = torch.tensor([[0.0, 2.0], [1.0, -1.0], [3.0, 3.0]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    known = torch.tensor([True, False, True])
    # known rows 0 and 2: BCE(0, y=1) = log 2; BCE(2, y=0) = log(1 + e^2); BCE(3, y=1) = log(1 + e^-3) twice
    expected = (math.log(2) + math.log(1 + math.e ** 2) + 2 * math.log(1 + math.e ** -3)) / 4
    assert attribute_loss(logits, targets, known).item() == pytest.approx(expected, rel=1e-6)
    # pos_weight multiplies only the positive terms (log 2 and both log(1 + e^-3))
    weighted = (3 * math.log(2) + math.log(1 + math.e ** 2) + 3 * 2 * math.log(1 + math.e ** -3)) / 4
    assert attribute_loss(logits, targets, known, pos_weight=3.0).item() == pytest.approx(weighted, rel=1e-6)


def test_loss_without_known_objects_is_an_attached_zero():
    logits = torch.randn(4, 3, requires_grad=True)
    loss = attribute_loss(logits, torch.ones(4, 3), torch.zeros(4, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"must be \(P, A\), \(P, A\) and \(P,\)"):
        attribute_loss(logits, torch.ones(4, 2), torch.zeros(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="at least one attribute"):
        AttributeHead(8, 4, 0)


def test_num_attributes_zero_builds_exactly_the_plain_model():
    plain = small_model()
    assert not any("attribute" in name for name in plain.state_dict())
    assert not hasattr(plain.roi_heads, "attribute_head")
    plain.eval()
    with torch.no_grad():
        output = plain([sample()[0]])[0]
    assert "attribute_scores" not in output
    plain.train()
    image, target = sample()
    assert "loss_attributes" not in plain([image], [target])  # attribute targets are ignored without a head


def test_the_head_does_not_change_the_detections():
    plain, extended = small_model(), small_model("model.num_attributes=3")
    extra = {k for k in extended.state_dict()} - {k for k in plain.state_dict()}
    assert extra == {"roi_heads.attribute_head.fc.weight", "roi_heads.attribute_head.fc.bias",
                     "roi_heads.attribute_head.logits.weight", "roi_heads.attribute_head.logits.bias"}
    shared = {k: v for k, v in extended.state_dict().items() if k not in extra}
    plain.load_state_dict(shared)
    plain.eval(), extended.eval()
    image = sample()[0]
    with torch.no_grad():
        a, b = plain([image])[0], extended([image])[0]
    assert a["boxes"].shape[0] > 0
    for key in ("boxes", "labels", "scores", "masks"):
        assert torch.equal(a[key], b[key]), key
    scores = b["attribute_scores"]
    assert scores.shape == (a["boxes"].shape[0], 3) and scores.dtype == torch.float32
    assert bool(((scores > 0) & (scores < 1)).all())


def test_training_adds_the_weighted_loss_of_known_positive_rois_only():
    model = small_model("model.num_attributes=3", "model.attribute_loss_weight=2.0")
    model.train()
    image, target = sample()
    torch.manual_seed(1)
    losses = model([image], [target])
    assert set(losses) >= {"loss_attributes", "loss_classifier", "loss_mask"}
    assert losses["loss_attributes"].item() > 0
    losses["loss_attributes"].backward()
    head = model.roi_heads.attribute_head
    assert head.logits.weight.grad.abs().sum() > 0
    # the loss reaches the pyramid it pools from (shared features), never the box head, mask head or RPN
    assert model.backbone.fpn.output_convs[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.roi_heads.box_head.parameters())
    assert all(p.grad is None for p in model.roi_heads.mask_head.parameters())
    assert all(p.grad is None for p in model.rpn.parameters())
    model.zero_grad(set_to_none=True)
    # the same sample without attribute annotations: an attached zero
    image, plain_target = sample(attributes=False)
    losses = model([image], [plain_target])
    assert losses["loss_attributes"].item() == 0.0
    losses["loss_attributes"].backward()

"""Shared support for the torchvision parity tests: the fixture, its weights, and the matching model.

``tests/fixtures/maskrcnn_r50_fpn.pt`` holds torchvision 0.28's outputs for a Mask R-CNN R50-FPN whose
weights are not stored but rebuilt from the key list ``torchvision_maskrcnn_r50_fpn_keys.json`` with the
recipe of the fixture's README (``rebuild_reference_weights``). The rebuilt torchvision state dict goes
through our converter, so every parity test is also a test of ``maskrcnn.checkpoint.convert_torchvision``.

The tests in this file check the recipe itself.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
REFERENCE_FILE = FIXTURES / "maskrcnn_r50_fpn.pt"
KEYS_FILE = FIXTURES / "torchvision_maskrcnn_r50_fpn_keys.json"

# The fixture's torchvision settings (manifest.json -> model_kwargs), in our config keys. torchvision's
# num_classes=14 counts the background; ours does not.
REFERENCE_OVERRIDES = [
    "model.num_classes=13",
    "input.min_size=224",
    "input.max_size=320",
    "model.roi_heads.score_thresh=0.0",
    "model.roi_heads.detections_per_img=50",
    "model.rpn.pre_nms_top_n_test=500",
    "model.rpn.post_nms_top_n_test=300",
    # training-mode fixture: samplers keep every candidate, fewer proposals
    "model.rpn.batch_size_per_image=10000000",
    "model.roi_heads.batch_size_per_image=10000000",
    "model.rpn.pre_nms_top_n_train=500",
    "model.rpn.post_nms_top_n_train=300",
]


def load_reference() -> dict:
    return torch.load(REFERENCE_FILE, weights_only=True)


def load_key_list() -> list:
    with open(KEYS_FILE) as f:
        return json.load(f)


def rebuild_reference_weights(keys: list, seed: int = 0) -> dict:
    """The fixture README's recipe, literally: one seeded ``randn`` per key, then a per-kind rescaling."""
    state = {}
    for index, (name, shape) in enumerate(keys):
        generator = torch.Generator().manual_seed(seed * 100000 + index)
        r = torch.randn(shape, generator=generator)
        if name.endswith("running_var"):
            value = 0.5 + r.abs()
        elif name.endswith("running_mean") or (len(shape) == 1 and name.endswith("bias")):
            value = 0.1 * r
        elif len(shape) == 1:
            value = 1 + 0.1 * r
        else:
            value = r / math.sqrt(math.prod(shape[1:]))
        state[name] = value
    return state


def build_reference_model():
    """Our model with the fixture's settings and the rebuilt, converted torchvision weights (eval mode)."""
    from maskrcnn.checkpoint import convert_torchvision
    from maskrcnn.config import load_config
    from maskrcnn.modeling import build_model

    cfg = load_config(overrides=REFERENCE_OVERRIDES)
    model = build_model(cfg)
    converted = convert_torchvision(rebuild_reference_weights(load_key_list()))
    model.load_state_dict(converted, strict=True)  # every key maps, no key is left over
    return model.eval()


def test_recipe_covers_every_key_with_the_documented_rules():
    keys = load_key_list()
    state = rebuild_reference_weights(keys)
    assert len(state) == len(keys) == 307
    assert all(tuple(state[name].shape) == tuple(shape) for name, shape in keys)
    assert float(state["backbone.body.bn1.running_var"].min()) >= 0.5
    # a 1-D non-bias, non-statistic tensor is a norm weight around 1
    assert abs(float(state["backbone.body.bn1.weight"].mean()) - 1) < 0.05
    # index 0 is conv1.weight: seed 0 * 100000 + 0, scaled by 1 / sqrt(3 * 7 * 7)
    expected = torch.randn((64, 3, 7, 7), generator=torch.Generator().manual_seed(0)) / math.sqrt(147)
    assert torch.equal(state["backbone.body.conv1.weight"], expected)


def test_converter_maps_every_reference_key_one_to_one():
    from maskrcnn.checkpoint import convert_torchvision

    keys = load_key_list()
    converted = convert_torchvision(rebuild_reference_weights(keys))
    assert len(converted) == len(keys)
    assert converted["rpn.head.objectness.weight"].shape == (3, 256, 1, 1)
    assert converted["roi_heads.mask_head.logits.weight"].shape == (14, 256, 1, 1)


def relative_difference(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``max |actual - expected| / max |expected|``: the README's "relative" for whole-model stages."""
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    scale = expected.abs().max().clamp(min=1e-12)
    return float((actual.double() - expected.double()).abs().max() / scale) if expected.numel() else 0.0


def match_detections_as_sets(boxes, scores, labels, ref_boxes, ref_scores, ref_labels, score_rel=1e-4):
    """Pair every reference detection with one of ours by IoU > 0.99 (one-to-one), then compare scores to
    ``score_rel`` (relative to the largest score) and labels exactly.

    Returns ``(ours_for_reference, worst)``: for reference detection ``r`` the index of our match, and the
    largest relative score difference."""
    from maskrcnn.ops import box_iou

    assert boxes.shape == ref_boxes.shape, f"{boxes.shape[0]} detections, reference has {ref_boxes.shape[0]}"
    iou = box_iou(ref_boxes, boxes)  # (reference, ours)
    used, ours_for_reference = set(), []
    worst = 0.0
    scale = float(ref_scores.abs().max())
    for r in range(ref_boxes.shape[0]):
        candidates = [int(o) for o in torch.where(iou[r] > 0.99)[0] if int(o) not in used
                      and int(labels[o]) == int(ref_labels[r])]
        assert candidates, f"reference detection {r} ({ref_boxes[r].tolist()}, label {int(ref_labels[r])}) unmatched"
        best = min(candidates, key=lambda o: abs(float(scores[o]) - float(ref_scores[r])))
        used.add(best)
        ours_for_reference.append(best)
        worst = max(worst, abs(float(scores[best]) - float(ref_scores[r])) / scale)
    assert worst <= score_rel, f"largest relative score difference {worst:.3g} > {score_rel}"
    return ours_for_reference, worst

"""Parity with torchvision's ``maskrcnn_resnet50_fpn``: every stage against ``tests/fixtures/maskrcnn_r50_fpn.pt``.

The reference model is our model built from the config with the fixture's settings and loaded with the
README's rebuilt weights through ``convert_torchvision`` (``test_parity_support.py``). It is built once per
module; the eval-mode stages and the training step are each computed once (module fixtures) and the tests
compare them with the reference at the README's tolerances: anchors 1e-5 absolute, whole-model stages 1e-4
relative (to the largest reference value), detections as sets, losses 1e-4 and gradients 1e-3 relative.
"""
from __future__ import annotations

import pytest
import torch

from maskrcnn.checkpoint import torchvision_name_map
from maskrcnn.modeling.rpn_head import flatten_predictions
from maskrcnn.modeling.transform import ImageTransform
from maskrcnn.ops import box_iou

from test_parity_support import (build_reference_model, load_key_list, load_reference, match_detections_as_sets,
                                 relative_difference)

STAGE_REL = 1e-4
LOSS_REL = 1e-4
GRAD_REL = 1e-3
LEVEL_NAMES = ["0", "1", "2", "3", "pool"]  # torchvision's names of P2..P6


@pytest.fixture(scope="module")
def reference():
    return load_reference()


@pytest.fixture(scope="module")
def images(reference):
    return [reference["image0"], reference["image1"]]


@pytest.fixture(scope="module")
def model():
    return build_reference_model()


@pytest.fixture(scope="module")
def stages(model, reference, images):
    """Every intermediate result of one eval-mode pass, computed stage by stage."""
    out = {}
    with torch.no_grad():
        batch, _ = model.transform(images)
        features = model.backbone(batch.tensors)
        objectness, deltas = model.rpn.head(features)
        anchors = model.rpn.anchors(batch, features)
        proposals, proposal_scores = model.rpn.propose(objectness, deltas, anchors, batch.image_sizes)
        rpn_proposals, rpn_losses = model.rpn(batch, features)
        pooled_levels = features[:4]
        reference_proposals = [reference["proposals0"], reference["proposals1"]]
        class_logits, box_deltas = model.roi_heads.box_outputs(pooled_levels, reference_proposals, batch.image_sizes)
        detections = model.roi_heads.detect(pooled_levels, reference_proposals, batch.image_sizes)
        # mask logits on the reference detections, so that this stage does not depend on the one before
        reference_boxes = [reference["det0_boxes"], reference["det1_boxes"]]
        reference_labels = torch.cat([reference["det0_labels"], reference["det1_labels"]])
        mask_logits = model.roi_heads.mask_logits(pooled_levels, reference_boxes, batch.image_sizes)
        mask_logits_of_label = mask_logits[torch.arange(len(reference_labels)), reference_labels]
        final = model(images)
    out.update(batch=batch, features=features, objectness=objectness, deltas=deltas, anchors=anchors,
               proposals=proposals, proposal_scores=proposal_scores, rpn_proposals=rpn_proposals,
               rpn_losses=rpn_losses, class_logits=class_logits, box_deltas=box_deltas, detections=detections,
               mask_logits_of_label=mask_logits_of_label, final=final)
    return out


def test_transform_batches_like_torchvision(reference, images):
    transform = ImageTransform(224, 320, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], 32)
    batch, _ = transform(images)
    assert batch.image_sizes == [tuple(s) for s in reference["image_sizes"].tolist()]
    assert batch.tensors.shape == reference["batched_images"].shape == (2, 3, 288, 320)
    torch.testing.assert_close(batch.tensors, reference["batched_images"], rtol=0, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("level", range(5))
def test_every_fpn_level(stages, reference, level):
    feature = stages["features"][level]
    name = LEVEL_NAMES[level]
    assert relative_difference(feature[:, :16], reference[f"feature_{name}_first16"]) <= STAGE_REL
    assert relative_difference(feature.mean(dim=(2, 3)), reference[f"feature_{name}_channel_mean"]) <= STAGE_REL


@pytest.mark.slow
@pytest.mark.parametrize("level", range(5))
def test_rpn_head_outputs(stages, reference, level):
    assert relative_difference(stages["objectness"][level], reference[f"rpn_objectness_{level}"]) <= STAGE_REL
    assert relative_difference(stages["deltas"][level], reference[f"rpn_deltas_{level}"]) <= STAGE_REL


@pytest.mark.slow
def test_anchors(stages, reference):
    # whole-pixel values (rounded cell anchors + integer shifts) are exact in float32 on every CPU, so
    # the comparison is exact; an absolute 1e-5 would be below one ulp at these magnitudes (up to 618)
    torch.testing.assert_close(stages["anchors"], reference["anchors0"], rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("image", [0, 1])
def test_proposals(stages, reference, image):
    """Same boxes (1e-4 relative), in the same order up to swaps of scores tied within float noise."""
    ours, scores = stages["proposals"][image], stages["proposal_scores"][image]
    expected = reference[f"proposals{image}"]
    assert ours.shape == expected.shape
    # each reference proposal is one of ours (1:1), at coordinates within the tolerance
    distance = (expected[:, None, :] - ours[None, :, :]).abs().amax(dim=2)  # (300, 300)
    position = distance.argmin(dim=1)
    assert sorted(position.tolist()) == list(range(ours.shape[0]))
    scale = float(expected.abs().max())
    assert float(distance.min(dim=1).values.max()) <= STAGE_REL * scale
    # where the order differs, the swapped proposals' scores differ by float noise only
    moved = torch.where(position != torch.arange(ours.shape[0]))[0]
    for r in moved.tolist():
        assert abs(float(scores[r]) - float(scores[position[r]])) <= 1e-5, f"proposal {r} out of order"
    assert torch.all(scores[:-1] >= scores[1:]), "proposals must come in decreasing objectness"


@pytest.mark.slow
def test_rpn_forward_returns_the_selected_proposals(stages):
    for ours, selected in zip(stages["rpn_proposals"], stages["proposals"]):
        assert torch.equal(ours, selected)
    assert stages["rpn_losses"] == {}


@pytest.mark.slow
def test_second_stage_logits_and_regression(stages, reference):
    assert relative_difference(stages["class_logits"], reference["box_class_logits"]) <= STAGE_REL
    assert relative_difference(stages["box_deltas"], reference["box_regression"]) <= STAGE_REL


@pytest.mark.slow
@pytest.mark.parametrize("image", [0, 1])
def test_detections_on_reference_proposals(stages, reference, image):
    detection = stages["detections"][image]
    _, worst = match_detections_as_sets(detection["boxes"], detection["scores"], detection["labels"],
                                        reference[f"det{image}_boxes"], reference[f"det{image}_scores"],
                                        reference[f"det{image}_labels"])
    assert worst <= STAGE_REL


@pytest.mark.slow
def test_mask_logits_of_label(stages, reference):
    assert relative_difference(stages["mask_logits_of_label"], reference["mask_logits_of_label"]) <= STAGE_REL


@pytest.mark.slow
@pytest.mark.parametrize("image", [0, 1])
def test_end_to_end_detections_and_pasted_masks(stages, reference, images, image):
    final = stages["final"][image]
    height, width = images[image].shape[-2:]
    assert final["masks"].shape == (final["boxes"].shape[0], 1, height, width)
    ours_for_reference, _ = match_detections_as_sets(
        final["boxes"], final["scores"], final["labels"], reference[f"final{image}_boxes"],
        reference[f"final{image}_scores"], reference[f"final{image}_labels"])
    first8 = torch.stack([final["masks"][o] for o in ours_for_reference[:8]])
    assert relative_difference(first8, reference[f"final{image}_masks_first8"]) <= STAGE_REL
    areas = torch.stack([(final["masks"][o] > 0.5).sum() for o in ours_for_reference])
    assert torch.equal(areas, reference[f"final{image}_mask_areas"])


# ------------------------------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def training_step(reference, images):
    """One training forward + backward with the fixture's targets; samplers keep every candidate."""
    model = build_reference_model().train()
    targets = [{"boxes": reference[f"target{i}_boxes"], "labels": reference[f"target{i}_labels"],
                "masks": reference[f"target{i}_masks"]} for i in range(2)]
    losses = model(images, targets)
    sum(losses.values()).backward()
    names = torchvision_name_map([name for name, _ in load_key_list()])
    parameters = dict(model.named_parameters())
    gradients = {tv_name: parameters[ours].grad for tv_name, ours in names.items() if ours in parameters}
    return losses, gradients


@pytest.mark.slow
@pytest.mark.parametrize("name", ["loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg",
                                  "loss_mask"])
def test_training_losses(training_step, reference, name):
    losses, _ = training_step
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask"}
    assert relative_difference(losses[name].detach(), reference[f"loss_{name}"]) <= LOSS_REL


def _gradient_keys():
    return sorted(k for k in load_reference() if "::" in k)


@pytest.mark.slow
@pytest.mark.parametrize("key", _gradient_keys())
def test_training_gradients(training_step, reference, key):
    _, gradients = training_step
    kind, tv_name = key.split("::")
    gradient = gradients[tv_name]
    assert gradient is not None, f"{tv_name} received no gradient"
    summary = {"grad": lambda g: g, "gradnorm": lambda g: g.norm(), "gradsum": lambda g: g.sum(),
               "gradhead4096": lambda g: g.flatten()[:4096]}[kind](gradient)
    assert relative_difference(summary, reference[key]) <= GRAD_REL

"""Host syncs in the hot path do not grow with the work.

On a GPU, every op whose result the host must read (``.item()``, ``bool(t)``, ``nonzero``, ``unique``, a
``.tolist()``) waits for the device. One eval forward is profiled for 8 and 46 classes and for 20 and 100
detections per image (a small model with random weights and score threshold 0, so every image has
``detections_per_img`` detections): the count of such ops, the count of all ops (a Python loop over classes
or detections would add ops per class or detection) and the host reads made from Python are the same for
all four. Measured before this test existed (per-class NMS loop, per-call checks, per-detection paste):
60 sync ops with 8 classes and 136 with 46; now 16 for all four, from a fixed number per image and level.
"""
from __future__ import annotations

import collections

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.profiler import ProfilerActivity, profile

from maskrcnn.config import load_config
from maskrcnn.modeling import build_model
from maskrcnn.modeling.paste_masks import paste_masks_in_crops

# aten ops that read a device value back to the host (or size their output by one)
SYNC_OPS = {"aten::_local_scalar_dense", "aten::item", "aten::is_nonzero", "aten::nonzero", "aten::nonzero_static",
            "aten::unique", "aten::_unique", "aten::_unique2", "aten::unique_dim", "aten::unique_consecutive",
            "aten::masked_select", "aten::equal", "aten::repeat_interleave"}
# Tensor methods that copy to the host when called from Python
HOST_READS = {"tolist", "numpy", "cpu", "item", "__bool__", "__int__", "__float__", "__index__"}
VIEW_OPS = {"aten::as_strided", "aten::slice", "aten::narrow", "aten::view", "aten::alias"}
CASES = [(8, 20), (46, 20), (8, 100), (46, 100)]


class PythonHostReads(TorchFunctionMode):
    """Counts the Tensor methods of ``HOST_READS`` called while active."""

    def __init__(self):
        super().__init__()
        self.calls = collections.Counter()
        self.total = 0  # every torch function and Tensor method called from Python

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        self.total += 1
        if name in HOST_READS:
            self.calls[name] += 1
        return func(*args, **(kwargs or {}))


def small_model(num_classes: int, detections: int, config: str = "configs/synthetic_demo.yaml", extra=()):
    cfg = load_config(config, [
        f"model.num_classes={num_classes}", f"model.roi_heads.detections_per_img={detections}",
        "model.roi_heads.score_thresh=0.0", *extra])
    torch.manual_seed(0)
    return build_model(cfg, load_weights=False).eval()


def profile_forward(model, images):
    """(sync-op counts, number of aten ops, Python host reads, detections per image) of one eval forward."""
    with torch.no_grad():
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            detections = model(images)
        with PythonHostReads() as reads:
            model(images)
    names = [event.name for event in prof.events()]
    syncs = collections.Counter(name for name in names if name in SYNC_OPS)
    # View ops (metadata only, no work) are left out: ATen kernels emit them internally in numbers that can
    # depend on tensor sizes (one more aten::narrow/slice/as_strided with 46 classes than with 8 here, with
    # identical Python-level calls), which says nothing about loops in our code.
    aten = sum(name.startswith("aten::") and name not in VIEW_OPS for name in names)
    return syncs, (aten, reads.total), dict(reads.calls), [len(d["boxes"]) for d in detections]


@pytest.fixture(scope="module")
def measurements():
    torch.manual_seed(1)
    images = [torch.rand(3, 120, 160), torch.rand(3, 128, 100)]
    return {case: profile_forward(small_model(*case), images) for case in CASES}


@pytest.mark.slow
def test_every_case_has_its_detections(measurements):
    for (_, detections), (_, _, _, found) in measurements.items():
        assert found == [detections, detections]


@pytest.mark.slow
def test_sync_ops_do_not_grow_with_classes_or_detections(measurements):
    counts = {case: sum(syncs.values()) for case, (syncs, _, _, _) in measurements.items()}
    print("sync ops per eval forward:", counts, dict(measurements[CASES[-1]][0]))
    assert len(set(counts.values())) == 1, counts
    # a fixed number per image and pyramid level: 2 images x (RPN 2 + detections 2) + 2 poolers x 4 levels
    assert counts[CASES[0]] <= 16


@pytest.mark.slow
def test_no_python_loop_over_classes_or_detections(measurements):
    ops = {case: aten for case, (_, aten, _, _) in measurements.items()}
    assert len(set(ops.values())) == 1, ops
    reads = {case: calls for case, (_, _, calls, _) in measurements.items()}
    assert all(calls == {} for calls in reads.values()), reads  # nothing read back from Python at all


def test_crops_for_the_predictor_are_read_back_once():
    """Pasting K masks into their boxes reads one number (the total crop area) whatever K is."""
    generator = torch.Generator().manual_seed(2)
    counts = []
    for k in (20, 100):
        masks = torch.rand(k, 1, 28, 28, generator=generator)
        corners = torch.rand(k, 2, generator=generator) * 150
        boxes = torch.cat([corners, corners + 5 + torch.rand(k, 2, generator=generator) * 60], dim=1)
        with PythonHostReads() as reads:
            paste_masks_in_crops(masks, boxes, (180, 200))
        counts.append(dict(reads.calls))
    assert counts[0] == counts[1] == {"__int__": 1}


@pytest.mark.slow
def test_the_attribute_head_adds_a_fixed_number_of_syncs_and_no_loops():
    """With the attribute head (7 or Fashionpedia's 294 attributes, 20 or 100 detections) one eval forward
    makes the same number of sync ops and ops in all, and no Python host reads; the head adds only its
    one extra pooling of the detections (a sync per level). Its training loss adds no sync at all."""
    torch.manual_seed(1)
    images = [torch.rand(3, 120, 160), torch.rand(3, 128, 100)]
    plain = profile_forward(small_model(8, 20), images)
    measured = {(attributes, detections): profile_forward(small_model(8, detections, "configs/synthetic_attributes.yaml",
                                                                      [f"model.num_attributes={attributes}"]), images)
                for attributes, detections in [(7, 20), (294, 100)]}
    for case, (syncs, _, calls, found) in measured.items():
        assert found == [case[1], case[1]] and calls == {}, case
    counts = {case: sum(syncs.values()) for case, (syncs, _, _, _) in measured.items()}
    assert len(set(counts.values())) == 1, counts
    assert len({aten for _, aten, _, _ in measured.values()}) == 1
    assert counts[(7, 20)] - sum(plain[0].values()) <= 4  # one more pooler call over 4 levels

    from maskrcnn.modeling.attribute_head import attribute_loss
    logits = torch.randn(50, 294, requires_grad=True)
    targets = (torch.rand(50, 294) < 0.05).float()
    known = torch.rand(50) < 0.5
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        attribute_loss(logits, targets, known, pos_weight=3.0).backward()
    assert not [event.name for event in prof.events() if event.name in SYNC_OPS]

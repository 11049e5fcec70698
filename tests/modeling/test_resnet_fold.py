"""The frozen-norm fold of ``maskrcnn.modeling.resnet``: ``conv(x, w * scale) + shift`` against ``norm(conv(x))``.

The reference is the same model run *unfolded*: every convolution followed by its ``FrozenBatchNorm2d``
module, ReLU and the residual add out of place, written out below from the block definitions. In float64 the
two agree to rounding (the fold is exact algebra, gradients included); in float32 each carries its own
rounding, compared in float32 ulps of each pyramid level's largest magnitude (the bound is explained at
``ULPS_FROM_FLOAT64``).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from float32 import float32_ulp
from maskrcnn.modeling.resnet import Bottleneck, FrozenBatchNorm2d, ResNet

# Each float32 output (folded or unfolded) against the float64 model, in ulps of the level's largest value.
# Why ulps of the *largest* value: an activation is a sum of up to 4608 products (3x3x512) passed through
# ~50 such layers, so its rounding error scales with the magnitudes summed, not with its own (often near-zero)
# value. Measured on ResNet-18/50, seeds 0-2, both paths: 4-16 ulps. The fold does not reorder any sum; it
# rounds ``w * scale`` once per weight instead of ``conv * scale + shift`` once per activation, so both
# paths carry errors of the same size, as measured. Folded vs unfolded is then bounded by the triangle
# inequality: twice this (measured: 7-22 ulps).
ULPS_FROM_FLOAT64 = 24
ULPS_FOLDED_VS_UNFOLDED = 2 * ULPS_FROM_FLOAT64


def unfolded_forward(model: ResNet, x: torch.Tensor):
    """``model(x)`` computed the textbook way: ``relu(norm(conv(x)))``, ``relu(out + identity)``, nothing in place."""
    stem = model.stem
    x = F.max_pool2d(F.relu(stem.norm(stem.conv(x))), kernel_size=3, stride=2, padding=1)
    features = []
    for stage in (model.res2, model.res3, model.res4, model.res5):
        for block in stage:
            identity = x if block.shortcut is None else block.shortcut.norm(block.shortcut.conv(x))
            out = F.relu(block.norm1(block.conv1(x)))
            if isinstance(block, Bottleneck):
                out = F.relu(block.norm2(block.conv2(out)))
                out = block.norm3(block.conv3(out))
            else:
                out = block.norm2(block.conv2(out))
            x = F.relu(out + identity)
        features.append(x)
    return features


def model_with_statistics(depth: int, seed: int, frozen_stages: int = 0) -> ResNet:
    """A ResNet whose frozen norms are not the identity (scales 0.5-1.5, shifts and means ~0.1, variances 0.5-2)."""
    torch.manual_seed(seed)
    model = ResNet(depth, frozen_stages=frozen_stages).eval()
    for module in model.modules():
        if isinstance(module, FrozenBatchNorm2d):
            module.weight.uniform_(0.5, 1.5)
            module.bias.normal_(0, 0.1)
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 2.0)
    return model


def level_ulp(reference: torch.Tensor) -> float:
    """One float32 ulp at the largest magnitude of ``reference``."""
    return float(float32_ulp(reference.abs().max()))


@pytest.mark.parametrize("depth, seed", [(18, 0), (50, 1)])
def test_folded_float32_matches_unfolded_within_ulps_of_the_level(depth, seed):
    model = model_with_statistics(depth, seed)
    x = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        folded = model(x)
        unfolded = unfolded_forward(model, x)
        exact = model.double()(x.double())
    for level, (f, u, e) in enumerate(zip(folded, unfolded, exact)):
        ulp = level_ulp(e)
        for name, value in (("folded", f), ("unfolded", u)):
            error = float((value.double() - e).abs().max()) / ulp
            assert error <= ULPS_FROM_FLOAT64, f"C{level + 2} {name}: {error:.1f} ulps from float64"
        difference = float((f - u).abs().max()) / ulp
        assert difference <= ULPS_FOLDED_VS_UNFOLDED, f"C{level + 2}: folded vs unfolded {difference:.1f} ulps"
        assert difference > 0  # the fold really rounds differently: this compares two computations


def test_fold_is_exact_algebra_in_float64_forward_and_gradient():
    model = model_with_statistics(18, 2, frozen_stages=2).double()
    x = torch.rand(1, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    weights = torch.randn(4, dtype=torch.float64)  # a loss that mixes the four levels

    def gradients(forward):
        model.zero_grad(set_to_none=True)
        loss = sum(w * (level ** 2).mean() for w, level in zip(weights, forward(model, x)))
        loss.backward()
        return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    loss_folded, grads_folded = gradients(lambda m, inp: m(inp))
    loss_unfolded, grads_unfolded = gradients(unfolded_forward)
    torch.testing.assert_close(loss_folded, loss_unfolded, rtol=1e-12, atol=0)
    assert sorted(grads_folded) == sorted(grads_unfolded)
    assert not any(name.startswith(("stem.", "res2.")) for name in grads_folded)  # frozen stages stay frozen
    assert len(grads_folded) == 15  # ResNet-18, res3-res5: 2 blocks x 2 convs per stage + 3 shortcut convs
    for name, grad in grads_folded.items():
        torch.testing.assert_close(grad, grads_unfolded[name], rtol=1e-10, atol=1e-12 * grad.abs().max().item(),
                                   msg=name)


def test_state_dict_keeps_its_layout_and_new_statistics_take_effect_at_once():
    model = model_with_statistics(18, 3)
    names = list(model.state_dict())
    assert "stem.conv.weight" in names and "res3.0.shortcut.norm.running_var" in names
    assert not any("fold" in name for name in names)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        before = model(x)[0]
        model.res2[0].norm1.running_var.mul_(4)  # nothing is cached: the next call must see the new variance
        after = model(x)[0]
        reference = unfolded_forward(model, x)[0]
    assert not torch.allclose(before, after)
    assert float((after - reference).abs().max()) <= ULPS_FOLDED_VS_UNFOLDED * level_ulp(reference)

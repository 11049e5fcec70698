"""ResNet trunk: FrozenBatchNorm2d arithmetic, output shapes per depth, stage freezing, torchvision names."""
from __future__ import annotations

import pytest
import torch

from maskrcnn.modeling.resnet import FrozenBatchNorm2d, ResNet, resnet_state_dict_names


def test_frozen_batchnorm_is_the_batchnorm_formula_in_float64():
    torch.manual_seed(0)
    norm = FrozenBatchNorm2d(5, eps=1e-5).double()
    norm.weight.copy_(torch.randn(5, dtype=torch.float64))
    norm.bias.copy_(torch.randn(5, dtype=torch.float64))
    norm.running_mean.copy_(torch.randn(5, dtype=torch.float64))
    norm.running_var.copy_(torch.rand(5, dtype=torch.float64) + 0.5)
    x = torch.randn(2, 5, 3, 4, dtype=torch.float64)
    expected = torch.empty_like(x)
    for c in range(5):  # the textbook formula, channel by channel
        expected[:, c] = (x[:, c] - norm.running_mean[c]) / torch.sqrt(norm.running_var[c] + 1e-5) * norm.weight[c] \
            + norm.bias[c]
    torch.testing.assert_close(norm(x), expected, rtol=0, atol=1e-12)


def test_frozen_batchnorm_has_buffers_only_and_ignores_train_mode():
    norm = FrozenBatchNorm2d(3)
    assert list(norm.parameters()) == []
    assert sorted(dict(norm.named_buffers())) == ["bias", "running_mean", "running_var", "weight"]
    x = torch.randn(4, 3, 2, 2)
    norm.train()
    out_train = norm(x)
    norm.eval()
    assert torch.equal(out_train, norm(x))
    torch.testing.assert_close(out_train, x / (1 + 1e-5) ** 0.5)  # identity statistics


@pytest.mark.parametrize("depth, channels", [(18, [64, 128, 256, 512]), (34, [64, 128, 256, 512]),
                                             (50, [256, 512, 1024, 2048])])
def test_outputs_are_c2_to_c5_with_strides_4_to_32(depth, channels):
    model = ResNet(depth, frozen_stages=0).eval()
    assert model.out_channels == channels
    with torch.no_grad():
        outputs = model(torch.randn(1, 3, 64, 96))
    assert [tuple(o.shape) for o in outputs] == [(1, c, 64 // s, 96 // s) for c, s in zip(channels, (4, 8, 16, 32))]


@pytest.mark.parametrize("depth, torchvision_total", [(50, 25_557_032), (101, 44_549_160)])
def test_parameter_count_matches_torchvision_classifier(depth, torchvision_total):
    """torchvision's published parameter counts (resnet50 / resnet101 with BN and the 1000-way FC): our
    conv weights + the frozen norms' weight and bias + a 2048 x 1000 FC must add up to them."""
    model = ResNet(depth)
    conv = sum(p.numel() for p in model.parameters())
    norm_affine = sum(2 * m.weight.numel() for m in model.modules() if isinstance(m, FrozenBatchNorm2d))
    assert conv + norm_affine + 2048 * 1000 + 1000 == torchvision_total


def test_freezing_matches_torchvision_trainable_layers():
    # docs/conventions.md: torchvision's trainable_layers = 0..5 freezes the first 53, 43, 24, 11, 1, 0 parameters.
    model = ResNet(50)
    for trainable_layers, frozen_count in zip(range(6), (53, 43, 24, 11, 1, 0)):
        model.freeze(5 - trainable_layers)
        flags = [p.requires_grad for p in model.parameters()]
        assert len(flags) == 53
        assert flags == [False] * frozen_count + [True] * (53 - frozen_count)


def test_frozen_stages_get_no_gradient():
    model = ResNet(18, frozen_stages=2)
    sum(o.sum() for o in model(torch.randn(1, 3, 64, 64))).backward()
    assert model.stem.conv.weight.grad is None and model.res2[0].conv1.weight.grad is None
    assert model.res3[0].conv1.weight.grad is not None


def test_torchvision_names_cover_every_tensor_once():
    for depth in (18, 50):
        names = resnet_state_dict_names(depth)
        ours = set(ResNet(depth).state_dict())
        assert set(names.values()) == ours
        assert len(names) == len(ours)
    names50 = resnet_state_dict_names(50)
    assert names50["layer1.0.downsample.0.weight"] == "res2.0.shortcut.conv.weight"
    assert names50["layer4.2.bn3.running_var"] == "res5.2.norm3.running_var"
    assert "layer1.0.downsample.0.weight" not in resnet_state_dict_names(18)  # basic blocks keep 64 channels


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="depth=42"):
        ResNet(42)
    with pytest.raises(ValueError, match="frozen_stages=6"):
        ResNet(50, frozen_stages=6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_frozen_batchnorm_returns_the_input_dtype(dtype):
    torch.manual_seed(1)
    norm = FrozenBatchNorm2d(4)  # float32 buffers, as in a model run under autocast
    norm.weight.uniform_(0.5, 1.5)
    norm.bias.normal_()
    norm.running_mean.normal_()
    norm.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 4, 3, 5).to(dtype)
    out = norm(x)
    assert out.dtype == dtype
    # The float32 result of the same (rounded) input, rounded once more: the per-channel factors are rounded
    # to the dtype (relative 2**-8 for bfloat16, 2**-11 for float16) and the multiply-add is done in it.
    expected = norm(x.float())
    unit = 2.0 ** -8 if dtype == torch.bfloat16 else 2.0 ** -11
    bound = 4 * unit * (x.float().abs() * norm.scale_and_shift()[0].abs().reshape(1, -1, 1, 1) + expected.abs())
    assert bool(((out.float() - expected).abs() <= bound).all())


def test_resnet_under_bfloat16_autocast_returns_bfloat16_close_to_float32():
    torch.manual_seed(2)
    model = ResNet(18, frozen_stages=0).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        reference = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outputs = model(x)
    for out, ref in zip(outputs, reference):
        assert out.dtype == torch.bfloat16
        # bfloat16 keeps 8 significant bits; ~20 layers of rounding leave a few percent of the level's range
        assert float((out.float() - ref).abs().max()) <= 0.05 * float(ref.abs().max())


def test_training_under_bfloat16_autocast_gives_float32_gradients_close_to_float32_training():
    torch.manual_seed(3)
    model = ResNet(18, frozen_stages=2)
    x = torch.rand(1, 3, 64, 64)

    def gradients():
        model.zero_grad(set_to_none=True)
        sum(level.float().square().mean() for level in model(x)).backward()
        return {name: p.grad for name, p in model.named_parameters() if p.grad is not None}

    reference = gradients()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = gradients()
    assert sorted(mixed) == sorted(reference) and len(mixed) == 15  # res3-res5 convs
    assert all(grad.dtype == torch.float32 for grad in mixed.values())
    # bfloat16 keeps 8 significant bits: over all trained weights the gradient differs from float32's by 2-3 %
    # (norm of the difference over the norm), measured for seeds 3-5, and so does an unfolded ResNet's
    # (textbook conv -> norm -> relu under autocast): 2.4-2.6 %.
    flat = torch.cat([mixed[name].flatten() for name in sorted(mixed)])
    flat_reference = torch.cat([reference[name].flatten() for name in sorted(reference)])
    assert float((flat - flat_reference).norm() / flat_reference.norm()) <= 0.05

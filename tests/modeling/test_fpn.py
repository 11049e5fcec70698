"""FPN: shapes, the top-down merge against a float64 loop reference, and P6 as a subsample of P5."""
from __future__ import annotations

import pytest
import torch

from maskrcnn.modeling.fpn import FeaturePyramidNetwork, ResNetFPN


def nearest_upsample_reference(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Nearest neighbour by explicit index arithmetic: output pixel (i, j) reads floor(i * h / H)."""
    out = x.new_zeros(x.shape[:2] + (height, width))
    for i in range(height):
        for j in range(width):
            out[:, :, i, j] = x[:, :, (i * x.shape[2]) // height, (j * x.shape[3]) // width]
    return out


def conv_reference(x: torch.Tensor, conv: torch.nn.Conv2d) -> torch.Tensor:
    """A 'same'-padded convolution written as a sum of shifted 1x1 products (float64)."""
    weight, bias = conv.weight.double(), conv.bias.double()
    k = weight.shape[-1]
    pad = k // 2
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    out = bias[None, :, None, None].expand(x.shape[0], -1, x.shape[2], x.shape[3]).clone()
    for dy in range(k):
        for dx in range(k):
            window = padded[:, :, dy:dy + x.shape[2], dx:dx + x.shape[3]]
            out = out + torch.einsum("oc,nchw->nohw", weight[:, :, dy, dx], window)
    return out


def test_top_down_pathway_matches_a_float64_reference():
    torch.manual_seed(0)
    fpn = FeaturePyramidNetwork([3, 5, 7], out_channels=4).double()
    # odd sizes: the coarser level is not exactly half of the finer one
    inputs = [torch.randn(2, 3, 13, 11, dtype=torch.float64), torch.randn(2, 5, 7, 6, dtype=torch.float64),
              torch.randn(2, 7, 4, 3, dtype=torch.float64)]
    outputs = fpn(inputs)
    merged = conv_reference(inputs[2], fpn.lateral_convs[2])
    expected = [conv_reference(merged, fpn.output_convs[2])]
    for level in (1, 0):
        lateral = conv_reference(inputs[level], fpn.lateral_convs[level])
        merged = lateral + nearest_upsample_reference(merged, *lateral.shape[-2:])
        expected.insert(0, conv_reference(merged, fpn.output_convs[level]))
    expected.append(expected[-1][:, :, ::2, ::2])  # P6: max-pool with kernel 1, stride 2 = every other pixel
    assert len(outputs) == 4
    for ours, reference in zip(outputs, expected):
        torch.testing.assert_close(ours, reference, rtol=0, atol=1e-10)


def test_resnet_fpn_levels_have_strides_4_to_64():
    model = ResNetFPN(depth=18).eval()
    with torch.no_grad():
        levels = model(torch.randn(1, 3, 128, 96))
    assert [tuple(p.shape) for p in levels] == [(1, 256, 128 // s, 96 // s) for s in (4, 8, 16, 32)] + [(1, 256, 2, 2)]
    assert ResNetFPN.strides == (4, 8, 16, 32, 64)


def test_wrong_number_of_levels_is_an_error():
    fpn = FeaturePyramidNetwork([8, 16], out_channels=4)
    with pytest.raises(ValueError, match="features: expected 2 levels, got 1"):
        fpn([torch.randn(1, 8, 4, 4)])


def test_cpu_inference_runs_channels_last_with_the_same_values():
    """Eval mode on the CPU converts the images to channels_last (faster there, docs/benchmarks.md); the
    levels keep their shapes and values. Bound: both layouts sum the same products in different orders,
    each within ~16 float32 ulps of the float64 result at the level's largest magnitude (ResNet-18/50,
    measured), so 2 x 24 ulps of that magnitude apart at most."""
    from float32 import float32_ulp

    torch.manual_seed(0)
    model = ResNetFPN(depth=18).eval()
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        fast = model(x)
        model.channels_last_cpu_inference = False
        plain = model(x)
    for f, p in zip(fast, plain):
        assert f.is_contiguous(memory_format=torch.channels_last) and p.is_contiguous()
        assert f.shape == p.shape
        assert float((f - p).abs().max()) <= 48 * float(float32_ulp(p.abs().max()))
    model.train()  # training keeps the default layout
    model.channels_last_cpu_inference = True
    assert model(x)[0].is_contiguous()

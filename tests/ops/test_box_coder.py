"""BoxCoder against torchvision's numbers (both weight sets) and docs/conventions.md."""
import math

import pytest
import torch
from float32 import assert_close_ulps

from maskrcnn.ops import BoxCoder

# Float32 results against torchvision's stored float32 numbers. Encoding takes a log and decoding an exp;
# their vectorized implementations differ by up to one ulp between CPUs (AVX2 vs AVX-512 paths), and the
# result is scaled by the box size, so the two may differ by ~2 ulps of the value: 3e-5 at a coordinate
# of 480, 5e-4 at the 6990 that row 0 grows to. The old absolute 1e-5 stays as the floor for values near
# zero, which come from cancellation of coordinates (the inputs' ulp, not the result's).
CODER_ULPS, CODER_ATOL = 2, 1e-5


@pytest.mark.parametrize("w", ["w1", "w10"])
def test_encode_matches_torchvision(boxes_ref, w):
    coder = BoxCoder(boxes_ref[f"coder_{w}_weights"].tolist())
    codes = coder.encode(boxes_ref["coder_gt"], boxes_ref["coder_proposals"])
    assert_close_ulps(codes, boxes_ref[f"coder_{w}_codes"], ulps=CODER_ULPS, atol=CODER_ATOL, what="codes")


@pytest.mark.parametrize("w", ["w1", "w10"])
def test_decode_matches_torchvision(boxes_ref, w):
    coder = BoxCoder(boxes_ref[f"coder_{w}_weights"].tolist())
    deltas, proposals = boxes_ref[f"coder_{w}_deltas"], boxes_ref["coder_proposals"]
    decoded = coder.decode(deltas, proposals)
    assert_close_ulps(decoded, boxes_ref[f"coder_{w}_decoded"], ulps=CODER_ULPS, atol=CODER_ATOL, what="decoded")
    # row 0 has dw = 20 and dh = -20: with weights 1, dw is clamped at log(1000/16) and the box grows
    # 62.5x (not e^20 x); with weight 5, dw / 5 = 4 is below the clamp. dh is never clamped from below.
    dw = deltas[0, 2].item() / boxes_ref[f"coder_{w}_weights"][2].item()
    growth = 1000 / 16 if w == "w1" else math.exp(4.0)
    assert (dw > coder.bbox_xform_clip) == (w == "w1")
    width0 = (proposals[0, 2] - proposals[0, 0]).item()
    assert (decoded[0, 2] - decoded[0, 0]).item() == pytest.approx(growth * width0, rel=1e-5)


def test_default_clip_is_torchvision_value(boxes_ref):
    assert BoxCoder((1, 1, 1, 1)).bbox_xform_clip == pytest.approx(math.log(1000 / 16))
    assert BoxCoder((1, 1, 1, 1)).bbox_xform_clip == pytest.approx(boxes_ref["bbox_xform_clip"].item())


def test_encode_literals():
    coder = BoxCoder((10, 10, 5, 5))
    proposals = torch.tensor([[0.8, 1.1, 3.2, 2.8], [2.3, 2.5, 7.0, 8.0]])
    targets = torch.tensor([[1.0, 1.0, 3.0, 3.0], [2.0, 2.0, 6.0, 6.0]])
    expected = torch.tensor([[0.0, 0.29412, -0.91161, 0.81259], [-1.38298, -2.27273, -0.80634, -1.59227]])
    torch.testing.assert_close(coder.encode(targets, proposals), expected, rtol=0, atol=1e-5)


def test_decode_inverts_encode_and_handles_class_specific_deltas():
    torch.manual_seed(0)
    xy = torch.rand(20, 2) * 100
    proposals = torch.cat([xy, xy + torch.rand(20, 2) * 50 + 1], dim=1).double()
    xy = torch.rand(20, 2) * 100
    targets = torch.cat([xy, xy + torch.rand(20, 2) * 50 + 1], dim=1).double()
    coder = BoxCoder((10, 10, 5, 5))
    deltas = coder.encode(targets, proposals)
    torch.testing.assert_close(coder.decode(deltas, proposals), targets, rtol=0, atol=1e-10)
    # (N, K*4): one set of deltas per class, each decoded against the same proposal
    per_class = torch.cat([deltas, torch.zeros_like(deltas), deltas], dim=1)
    decoded = coder.decode(per_class, proposals)
    assert decoded.shape == (20, 12)
    torch.testing.assert_close(decoded[:, 0:4], targets, rtol=0, atol=1e-10)
    torch.testing.assert_close(decoded[:, 4:8], proposals, rtol=0, atol=1e-10)  # zero deltas: no move
    torch.testing.assert_close(decoded[:, 8:12], targets, rtol=0, atol=1e-10)


def test_decode_of_nothing():
    coder = BoxCoder((1, 1, 1, 1))
    assert coder.decode(torch.zeros(0, 4), torch.zeros(0, 4)).shape == (0, 4)
    assert coder.encode(torch.zeros(0, 4), torch.zeros(0, 4)).shape == (0, 4)


def test_shape_errors():
    coder = BoxCoder((1, 1, 1, 1))
    with pytest.raises(ValueError, match=r"same number of rows.*\(3, 4\).*\(2, 4\)"):
        coder.decode(torch.zeros(3, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"targets and proposals must both have shape \(N, 4\)"):
        coder.encode(torch.zeros(3, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"weights must have 4 values"):
        BoxCoder((1, 1, 1))

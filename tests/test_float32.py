"""The magnitude-scaled float32 comparison of tests/float32.py: ulp literals, and that it passes and fails
where it should."""
import pytest
import torch
from float32 import assert_close_ulps, float32_ulp


def test_ulp_literals():
    # 2**-23 at 1, 2**-15 at [256, 512), 2**-11 at [4096, 8192); zero's neighbour is the smallest subnormal
    ulp = float32_ulp(torch.tensor([1.0, 480.0, 6990.0, 0.0]))
    assert ulp[:3].tolist() == [2.0**-23, 2.0**-15, 2.0**-11]
    assert ulp[3].item() == 2.0**-149


def test_one_ulp_apart_at_480_passes_and_three_fail():
    # the case that failed with atol=1e-5 on an Intel CPU: ours 480.105896 vs torchvision's 480.105927
    ours, theirs = torch.tensor([480.105896]), torch.tensor([480.105927])
    assert (theirs - ours).item() == 2.0**-15
    assert_close_ulps(ours, theirs, ulps=2, atol=1e-5)
    three_away = ours + 3 * 2.0**-15
    with pytest.raises(AssertionError, match=r"at index \(0,\).*3\.00 float32 ulps"):
        assert_close_ulps(ours, three_away, ulps=2, atol=1e-5)


def test_bound_scales_with_magnitude_and_keeps_the_absolute_floor():
    # 2 ulps at 6990 is 9.8e-4: a 5e-4 difference there passes, the same difference at 1.0 fails
    assert_close_ulps(torch.tensor([6990.0]), torch.tensor([6990.0 + 4.8828125e-4]), ulps=2)
    with pytest.raises(AssertionError):
        assert_close_ulps(torch.tensor([1.0]), torch.tensor([1.0005]), ulps=2)
    # near zero the absolute floor decides
    assert_close_ulps(torch.tensor([0.0]), torch.tensor([9e-6]), ulps=2, atol=1e-5)
    with pytest.raises(AssertionError):
        assert_close_ulps(torch.tensor([0.0]), torch.tensor([2e-5]), ulps=2, atol=1e-5)


def test_shapes_and_non_finite_values_must_agree():
    with pytest.raises(AssertionError, match="shape"):
        assert_close_ulps(torch.zeros(2), torch.zeros(3), ulps=1)
    with pytest.raises(AssertionError, match="non-finite"):
        assert_close_ulps(torch.tensor([float("nan")]), torch.tensor([1.0]), ulps=1)

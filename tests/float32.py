"""Float32 comparisons whose bound scales with the values' magnitude.

Why this module exists: a float32 value carries 24 significant bits, so the gap between neighbouring
float32 numbers (one *ulp*, "unit in the last place") grows with the value: 1.2e-7 at 1.0, 3.05e-5 at
480, 4.9e-4 at 6990. Two CPUs running the same float32 code may legitimately differ in the last bit or
two: `exp` and `log` come from different vector libraries (AVX2 vs AVX-512 code paths), and compilers
contract `a * b + c` into one fused multiply-add on one target and not on another. A fixed absolute
tolerance such as 1e-5 is therefore *below one ulp* for any value above 128 and fails on a machine
whose last bit differs (this happened: a decoded box coordinate of 480.105896 on an Intel Xeon against
torchvision's stored 480.105927, one ulp apart, where the float64 answer is 480.105900).

The bound used here is ``atol + ulps * ulp(max(|actual|, |expected|))`` elementwise:

* ``ulps`` says how many last-place steps the computation may legitimately differ by (state why at
  each call: usually 1 per transcendental function or re-associated sum on the value's path);
* ``atol`` keeps the absolute floor a test had before, for values computed by cancellation (a
  difference of two large numbers has an error of the *inputs'* ulp, not of its own magnitude).

Float64 checks stay exact (or at 1e-10 against float64 references): they never use this module.
"""
from __future__ import annotations

import torch
from torch import Tensor


def float32_ulp(values: Tensor) -> Tensor:
    """The spacing of float32 numbers at each value: ``nextafter(|x|, inf) - |x|``, same shape, float64.

    ``float32_ulp(torch.tensor([1.0, 480.0]))`` is ``[2**-23, 2**-15]`` (1.19e-7, 3.05e-5)."""
    magnitude = values.detach().to(torch.float32).abs()
    above = torch.nextafter(magnitude, torch.full_like(magnitude, float("inf")))
    return (above.double() - magnitude.double())


def assert_close_ulps(actual: Tensor, expected: Tensor, *, ulps: float, atol: float = 0.0, what: str = "values"):
    """Asserts ``|actual - expected| <= atol + ulps * ulp(max(|actual|, |expected|))`` elementwise.

    ``actual`` and ``expected`` are float tensors of the same shape (float32 results; ``expected`` may
    be a float64 reference). On failure the message names the worst element, both values, the difference
    and how many ulps it is."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    if actual.numel() == 0:
        return
    a, e = actual.detach().double(), expected.detach().double()
    finite = torch.isfinite(a)
    assert torch.equal(finite, torch.isfinite(e)), f"{what}: non-finite values at different places"
    assert torch.equal(a[~finite].nan_to_num(), e[~finite].nan_to_num()), f"{what}: non-finite values differ"
    a, e = a.where(finite, 0.0), e.where(finite, 0.0)  # compared above; zero here
    ulp = float32_ulp(torch.maximum(a.abs(), e.abs()))
    difference = (a - e).abs()
    excess = difference - (atol + ulps * ulp)
    worst = int(excess.flatten().argmax())
    if float(excess.flatten()[worst]) > 0:
        index = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), a.shape))
        d, u = float(difference.flatten()[worst]), float(ulp.flatten()[worst])
        raise AssertionError(
            f"{what}: at index {index} {float(a.flatten()[worst])!r} vs {float(e.flatten()[worst])!r}: difference "
            f"{d:.3g} = {d / u:.2f} float32 ulps, allowed {atol:g} + {ulps:g} ulps ({atol + ulps * u:.3g})"
        )

"""The native ROIAlign kernels (C++ CPU, CUDA) against torchvision's numbers and the pure-PyTorch
reference: forward and backward, float32 and float64, aligned True/False, sampling ratios,
non-contiguous tensors, empty ROI sets, boxes outside the map; gradcheck; dispatch, autocast and
the MASKRCNN_NATIVE switch.

Tolerances (../shared/reference/README.md): 1e-10 in float64, 1e-5 in float32, absolute.
The CUDA variants run when a GPU is present and are skipped with a visible reason otherwise.
"""
import pytest
import torch

from maskrcnn.ops import _native
from maskrcnn.ops.roi_align import roi_align, roi_align_reference

from native_support import (  # noqa: F401  (backend is a fixture)
    DEVICES, NO_GPU, CountingExtension, backend, needs_cuda_kernels, require_native_extension)

# Inputs are randn features and 0.1-scaled output gradients, so outputs and input gradients are O(1):
# the float32 bound 1e-5 is tens of ulps there (one ulp is 2.4e-7 at 2); pixel-sized values would need
# the magnitude-scaled bounds of tests/float32.py instead.
ATOL = {torch.float64: 1e-10, torch.float32: 1e-5}


@pytest.fixture(autouse=True)
def native_extension():
    return require_native_extension()


def native_roi_align(input, rois, output_size, spatial_scale, sampling_ratio, aligned):
    """The kernel under test, whatever MASKRCNN_NATIVE says."""
    return _native.RoIAlignFunction.apply(input, rois, output_size, spatial_scale, sampling_ratio,
                                          aligned)


def random_rois(num_rois, batch_size, image_h, image_w, generator, dtype):
    """(K, 5) rows [b, x1, y1, x2, y2] in image pixels: mostly inside the image, some partly or
    wholly outside, some smaller than a feature cell."""
    b = torch.randint(0, batch_size, (num_rois, 1), generator=generator).to(dtype)
    xy = torch.rand(num_rois, 2, generator=generator, dtype=dtype) * torch.tensor(
        [image_w * 1.3, image_h * 1.3], dtype=dtype) - torch.tensor(
        [image_w * 0.15, image_h * 0.15], dtype=dtype)
    wh = torch.rand(num_rois, 2, generator=generator, dtype=dtype) ** 2 * torch.tensor(
        [image_w * 0.8, image_h * 0.8], dtype=dtype)
    return torch.cat([b, xy, xy + wh], dim=1)


def compare_with_reference(device, dtype, output_size, spatial_scale, sampling_ratio, aligned,
                           num_rois=40, seed=0):
    generator = torch.Generator().manual_seed(seed)
    feature_h, feature_w = 13, 17
    x = torch.randn(2, 5, feature_h, feature_w, generator=generator, dtype=dtype)
    rois = random_rois(num_rois, 2, feature_h / spatial_scale, feature_w / spatial_scale,
                       generator, dtype)
    # scaled so that input gradients stay O(1): a float32 gradient summing hundreds of terms to
    # ~20 carries ~1e-5 of rounding in any summation order (the reference's, too), which the 1e-5
    # tolerance is not meant to measure
    grad_weight = 0.1 * torch.randn(num_rois, 5, *output_size, generator=generator, dtype=dtype)
    x, rois, grad_weight = x.to(device), rois.to(device), grad_weight.to(device)
    results = []
    for run in (native_roi_align, roi_align_reference):
        xi = x.clone().requires_grad_()
        out = run(xi, rois, output_size, spatial_scale, sampling_ratio, aligned)
        (out * grad_weight).sum().backward()
        results.append((out.detach(), xi.grad))
    (out_native, grad_native), (out_ref, grad_ref) = results
    assert out_native.shape == (num_rois, 5, *output_size) and out_native.dtype == dtype
    torch.testing.assert_close(out_native, out_ref, rtol=0, atol=ATOL[dtype])
    torch.testing.assert_close(grad_native, grad_ref, rtol=0, atol=ATOL[dtype])
    return out_native, grad_native


# --- torchvision's numbers, through both backends of the public op ----------------------------------

def assert_backend_ran(backend, expected_calls):
    name, spy = backend
    assert spy.calls == (expected_calls if name == "native" else []), spy.calls


@pytest.mark.parametrize("k", range(7))
def test_public_op_matches_torchvision_through_each_backend(roi_align_ref, backend, k):
    out_h, out_w, scale, ratio, aligned = roi_align_ref[f"case{k}_params"].tolist()
    x = roi_align_ref["input"].clone().requires_grad_()
    out = roi_align(x, roi_align_ref["rois"], (int(out_h), int(out_w)), spatial_scale=scale,
                    sampling_ratio=int(ratio), aligned=bool(aligned))
    torch.testing.assert_close(out, roi_align_ref[f"case{k}_output"], rtol=0, atol=1e-10)
    (out * roi_align_ref[f"case{k}_grad_weight"]).sum().backward()
    torch.testing.assert_close(x.grad, roi_align_ref[f"case{k}_grad_input"], rtol=0, atol=1e-10)
    assert_backend_ran(backend, ["roi_align_forward", "roi_align_backward"])


def test_public_op_float32_matches_torchvision_through_each_backend(roi_align_ref, backend):
    x, rois = roi_align_ref["input"].float(), roi_align_ref["rois"].float()
    out = roi_align(x, rois, (7, 7), spatial_scale=0.25, sampling_ratio=2, aligned=False)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, roi_align_ref["float32_output"], rtol=0, atol=1e-5)
    assert_backend_ran(backend, ["roi_align_forward"])


@pytest.mark.parametrize("device", DEVICES)
def test_native_kernel_matches_torchvision(roi_align_ref, device):
    needs_cuda_kernels(device)
    for k in range(7):
        out_h, out_w, scale, ratio, aligned = roi_align_ref[f"case{k}_params"].tolist()
        x = roi_align_ref["input"].to(device).clone().requires_grad_()
        out = native_roi_align(x, roi_align_ref["rois"].to(device), (int(out_h), int(out_w)),
                               scale, int(ratio), bool(aligned))
        (out * roi_align_ref[f"case{k}_grad_weight"].to(device)).sum().backward()
        torch.testing.assert_close(out.cpu(), roi_align_ref[f"case{k}_output"], rtol=0, atol=1e-10)
        torch.testing.assert_close(x.grad.cpu(), roi_align_ref[f"case{k}_grad_input"], rtol=0,
                                   atol=1e-10)


# --- native against the reference on random inputs ---------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 0, 1, 2, 3])
def test_native_matches_reference(device, dtype, aligned, sampling_ratio):
    needs_cuda_kernels(device)
    compare_with_reference(device, dtype, (7, 7), 0.25, sampling_ratio, aligned)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("output_size, spatial_scale", [((14, 14), 0.5), ((2, 3), 1.0),
                                                        ((5, 4), 0.125), ((1, 1), 1 / 32)])
def test_native_matches_reference_at_other_sizes_and_scales(device, output_size, spatial_scale):
    needs_cuda_kernels(device)
    for dtype in (torch.float32, torch.float64):
        for aligned in (False, True):
            compare_with_reference(device, dtype, output_size, spatial_scale, 2, aligned, seed=1)


@pytest.mark.parametrize("device", DEVICES)
def test_boxes_outside_the_map_read_zero_and_get_no_gradient(device):
    needs_cuda_kernels(device)
    x = torch.rand(1, 2, 8, 8, dtype=torch.float64, device=device, requires_grad=True)
    rois = torch.tensor([[0, 20, 20, 30, 30], [0, -30, -30, -20, -20], [0, -40, 2, -5, 6]],
                        dtype=torch.float64, device=device)
    out = native_roi_align(x, rois, (3, 3), 1.0, 2, False)
    out.sum().backward()
    assert torch.equal(out, torch.zeros_like(out))
    assert torch.equal(x.grad, torch.zeros_like(x.grad))


NAN, INF = float("nan"), float("inf")
NON_FINITE_BOXES = [[0, NAN, 1, 5, 5], [1, 1, NAN, 5, 5], [0, 1, 1, NAN, 5], [1, 1, 1, 5, NAN],
                    [0, INF, 1, 5, 5], [1, -INF, 1, 5, 5], [0, 1, 1, INF, 5], [1, 1, -INF, 5, 5],
                    [0, 1, 1, 5, INF], [1, -INF, -INF, INF, INF], [0, NAN, NAN, NAN, NAN]]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [2, 0])
def test_non_finite_boxes_pool_zeros_and_get_no_gradient(device, aligned, sampling_ratio):
    """A box with a NaN or infinite corner pools zeros and gets a zero gradient (the documented
    rule of roi_align_sampling.h: NaN samples read 0, a non-finite adaptive grid is empty). Before,
    a NaN passed the `y < -1 || y > H` test and reached static_cast<int>: the CPU kernel crashed.
    The finite boxes in between are unaffected: they match the reference, forward and backward
    (the reference itself fails on NaN boxes, so it only sees the finite ones)."""
    needs_cuda_kernels(device)
    generator = torch.Generator().manual_seed(11)
    x = torch.rand(2, 3, 10, 12, generator=generator, dtype=torch.float64).to(device)
    finite = random_rois(len(NON_FINITE_BOXES), 2, 20, 24, generator, torch.float64)
    rois = torch.stack([row for pair in zip(finite, torch.tensor(NON_FINITE_BOXES, dtype=torch.float64))
                        for row in pair]).to(device)  # finite, non-finite, finite, ...
    grad_weight = torch.rand(len(rois), 3, 3, 4, generator=generator, dtype=torch.float64).to(device)
    xi = x.clone().requires_grad_()
    out = native_roi_align(xi, rois, (3, 4), 0.5, sampling_ratio, aligned)
    (out * grad_weight).sum().backward()
    assert torch.equal(out[1::2], torch.zeros_like(out[1::2]))

    xr = x.clone().requires_grad_()
    expected = roi_align_reference(xr, rois[0::2], (3, 4), 0.5, sampling_ratio, aligned)
    (expected * grad_weight[0::2]).sum().backward()
    torch.testing.assert_close(out[0::2], expected, rtol=0, atol=1e-10)
    torch.testing.assert_close(xi.grad, xr.grad, rtol=0, atol=1e-10)


def test_nan_batch_index_is_rejected_on_the_cpu(native_extension):
    x = torch.rand(2, 3, 8, 8)
    for batch in (NAN, INF, -INF, -1.0, 2.0):
        rois = torch.tensor([[0.0, 1, 1, 5, 5], [batch, 1, 1, 5, 5]])
        with pytest.raises(IndexError, match=r"rois\[1, 0\] = .* is not a batch index"):
            native_extension.roi_align_forward(x, rois, 1.0, 2, 2, 2, False)
        with pytest.raises(IndexError, match=r"rois\[1, 0\] = .* is not a batch index"):
            native_extension.roi_align_backward(torch.rand(2, 3, 2, 2), rois, 1.0, 2, 2, 2, 3, 8, 8,
                                                2, False)


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_tensors(device):
    needs_cuda_kernels(device)
    generator = torch.Generator().manual_seed(2)
    # input: a (N, H, W, C) tensor viewed as (N, C, H, W) (channels_last), or every other row and
    # column of a larger map; rois: columns 1..5 of a wider tensor
    inputs = [torch.randn(2, 9, 11, 4, generator=generator, dtype=torch.float64).permute(0, 3, 1, 2),
              torch.randn(2, 4, 18, 23, generator=generator, dtype=torch.float64)[:, :, ::2, 1::2]]
    wide = torch.cat([torch.zeros(12, 1, dtype=torch.float64),
                      random_rois(12, 2, 36, 44, generator, torch.float64)], dim=1)
    rois = wide.to(device)[:, 1:]
    grad_weight = torch.randn(12, 4, 3, 5, generator=generator, dtype=torch.float64).to(device)
    for x in inputs:
        x = x.to(device)
        assert x.shape == (2, 4, 9, 11) and not x.is_contiguous() and not rois.is_contiguous()
        results = []
        for run in (native_roi_align, roi_align_reference):
            xi = x.detach().requires_grad_()  # keeps the strides (clone would not, for a slice)
            assert not xi.is_contiguous()
            out = run(xi, rois, (5, 3), 0.25, 2, True)
            # a transposed view makes grad_output non-contiguous too
            (out.transpose(2, 3) * grad_weight).sum().backward()
            results.append((out.detach(), xi.grad))
        torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=1e-10)
        torch.testing.assert_close(results[0][1], results[1][1], rtol=0, atol=1e-10)


@pytest.mark.parametrize("device", DEVICES)
def test_empty_roi_set(device):
    needs_cuda_kernels(device)
    x = torch.rand(2, 3, 5, 6, device=device, requires_grad=True)
    out = native_roi_align(x, torch.zeros(0, 5, device=device), (7, 7), 0.25, 2, False)
    assert out.shape == (0, 3, 7, 7)
    out.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_gradcheck_float64():
    generator = torch.Generator().manual_seed(3)
    x = torch.rand(2, 2, 6, 7, generator=generator, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 1.2, 0.7, 5.1, 4.9], [1, -1.5, 2.0, 3.3, 7.5], [0, 0.0, 0.0, 6.5, 5.5],
                         [1, 4.4, 3.3, 4.6, 3.4]], dtype=torch.float64)
    for aligned in (False, True):
        for sampling_ratio in (2, -1):
            assert torch.autograd.gradcheck(
                lambda t: native_roi_align(t, rois, (3, 2), 1.0, sampling_ratio, aligned), (x,))


def test_cpu_backward_is_deterministic_and_independent_of_thread_count():
    """Overlapping ROIs scatter into the same pixels; the CPU backward gives each thread whole
    channels, so the result is the same bits with one thread, two threads, and on every run."""
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(1, 8, 20, 20, generator=generator)
    rois = random_rois(200, 1, 20, 20, generator, torch.float32)  # heavily overlapping
    grad_weight = torch.randn(200, 8, 7, 7, generator=generator)

    def run():
        xi = x.clone().requires_grad_()
        out = native_roi_align(xi, rois, (7, 7), 1.0, 2, False)
        (out * grad_weight).sum().backward()
        return out.detach(), xi.grad

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = run()
        torch.set_num_threads(max(2, threads))
        multi, again = run(), run()
    finally:
        torch.set_num_threads(threads)
    for a, b, c in zip(single, multi, again):
        assert torch.equal(a, b) and torch.equal(b, c)


# --- dtypes, autocast, the switch -------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_on_cpu_is_computed_in_float32(dtype):
    generator = torch.Generator().manual_seed(5)
    x = torch.rand(1, 3, 10, 10, generator=generator).to(dtype)
    rois = random_rois(6, 1, 10, 10, generator, torch.float32).to(dtype)
    out = native_roi_align(x, rois, (4, 4), 1.0, 2, True)
    expected = native_roi_align(x.float(), rois.float(), (4, 4), 1.0, 2, True).to(dtype)
    assert out.dtype == dtype
    assert torch.equal(out, expected)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_GPU)
@pytest.mark.parametrize("dtype, atol", [(torch.float16, 1e-3), (torch.bfloat16, 1e-2)])
def test_half_precision_cuda_kernels(dtype, atol):
    """The 16-bit kernels read 16-bit values and sum in float32: they equal the float32 kernel on
    the same (rounded) numbers up to the final rounding of the output, half an ulp of values in
    [0, 1) (about 5e-4 for float16, 4e-3 for bfloat16)."""
    needs_cuda_kernels("cuda")
    generator = torch.Generator().manual_seed(6)
    x = torch.rand(2, 4, 16, 16, generator=generator).to(dtype).cuda()
    rois = random_rois(30, 2, 64, 64, generator, torch.float32).to(dtype).cuda()
    grad_weight = torch.rand(30, 4, 7, 7, generator=generator).to(dtype).cuda()
    results = []
    for xx, rr, gg in ((x, rois, grad_weight), (x.float(), rois.float(), grad_weight.float())):
        xi = xx.clone().requires_grad_()
        out = native_roi_align(xi, rr, (7, 7), 0.25, 2, False)
        (out * gg).sum().backward()
        results.append((out.detach(), xi.grad))
    assert results[0][0].dtype == dtype and results[0][1].dtype == dtype
    torch.testing.assert_close(results[0][0].float(), results[1][0], rtol=0, atol=atol)
    # gradients are sums of up to hundreds of terms (bounded by the grad weights, < 1 each):
    # compare relative to their size
    torch.testing.assert_close(results[0][1].float(), results[1][1], rtol=atol, atol=atol)


@pytest.mark.parametrize("device", DEVICES)
def test_autocast_computes_in_float32(device):
    needs_cuda_kernels(device)
    autocast_dtype = torch.bfloat16 if device == "cpu" else torch.float16
    generator = torch.Generator().manual_seed(7)
    x = torch.rand(1, 4, 12, 12, generator=generator).to(device)
    rois = random_rois(10, 1, 48, 48, generator, torch.float32).to(device)
    expected = roi_align(x, rois, (7, 7), 0.25, 2, False)
    with torch.autocast(device_type=device, dtype=autocast_dtype):
        same = roi_align(x, rois, (7, 7), 0.25, 2, False)
        half_in = roi_align(x.to(autocast_dtype), rois.to(autocast_dtype), (7, 7), 0.25, 2, False)
    assert same.dtype == torch.float32 and torch.equal(same, expected)
    # 16-bit inputs: computed in float32 from the rounded inputs, returned in the input's dtype
    rounded = roi_align(x.to(autocast_dtype).float(), rois.to(autocast_dtype).float(), (7, 7),
                        0.25, 2, False)
    assert half_in.dtype == autocast_dtype and torch.equal(half_in, rounded.to(autocast_dtype))


def test_switch_forces_the_reference(monkeypatch):
    monkeypatch.setenv("MASKRCNN_NATIVE", "0")
    assert _native.choose_backend("cpu") == ("reference", "MASKRCNN_NATIVE=0 in the environment")
    monkeypatch.setenv("MASKRCNN_NATIVE", "1")
    assert _native.choose_backend("cpu") == ("native", "C++ CPU kernel")


def test_rois_that_require_grad_go_to_the_reference(monkeypatch):
    """The native kernels give no gradient for the boxes; the reference does, so boxes that
    require grad are sent there (Mask R-CNN detaches its proposals: the model stays native)."""
    spy = CountingExtension(_native._C)
    monkeypatch.setattr(_native, "_C", spy)
    monkeypatch.delenv("MASKRCNN_NATIVE", raising=False)
    x = torch.rand(1, 2, 6, 6, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 0.5, 0.5, 4.5, 4.0]], dtype=torch.float64)
    roi_align(x, rois, (2, 2), 1.0, 2, True).sum().backward()
    assert spy.calls == ["roi_align_forward", "roi_align_backward"]
    rois.requires_grad_()
    roi_align(x, rois, (2, 2), 1.0, 2, True).sum().backward()
    assert spy.calls == ["roi_align_forward", "roi_align_backward"] and rois.grad is not None
    assert _native.choose_backend("cpu", rois_require_grad=True) == (
        "reference", "rois require grad; the native kernels give no gradient for boxes")
    # called directly, the native op leaves the boxes without gradient
    out = native_roi_align(x, rois, (2, 2), 1.0, 2, True)
    rois.grad = None
    out.sum().backward()
    assert rois.grad is None


# --- errors ------------------------------------------------------------------------------------------

def test_extension_rejects_bad_arguments_naming_them(native_extension):
    C = native_extension
    x, rois = torch.rand(2, 3, 8, 8), torch.tensor([[0.0, 1, 1, 5, 5]])
    with pytest.raises(ValueError, match=r"`input` must have shape \(N, C, H, W\)"):
        C.roi_align_forward(x[0], rois, 1.0, 2, 2, 2, False)
    with pytest.raises(ValueError, match=r"`rois` must have shape \(K, 5\)"):
        C.roi_align_forward(x, rois[:, :4], 1.0, 2, 2, 2, False)
    with pytest.raises(TypeError, match="`input` and `rois` must have the same dtype"):
        C.roi_align_forward(x, rois.double(), 1.0, 2, 2, 2, False)
    with pytest.raises(TypeError, match="`input` must be float32, float64, float16 or bfloat16"):
        C.roi_align_forward(x.int(), rois.int(), 1.0, 2, 2, 2, False)
    with pytest.raises(ValueError, match="`output_size` must be positive"):
        C.roi_align_forward(x, rois, 1.0, 0, 2, 2, False)
    with pytest.raises(ValueError, match="`spatial_scale` must be positive"):
        C.roi_align_forward(x, rois, 0.0, 2, 2, 2, False)
    with pytest.raises(IndexError, match=r"rois\[1, 0\] = 2 is not a batch index"):
        C.roi_align_forward(x, torch.tensor([[0.0, 1, 1, 5, 5], [2, 1, 1, 5, 5]]), 1.0, 2, 2, 2,
                            False)
    with pytest.raises(ValueError, match="`grad_output` must have shape"):
        C.roi_align_backward(torch.rand(1, 3, 2, 3), rois, 1.0, 2, 2, 2, 3, 8, 8, 2, False)
    with pytest.raises(RuntimeError, match="not supported"):
        C.roi_align_forward(x.to("meta"), rois.to("meta"), 1.0, 2, 2, 2, False)

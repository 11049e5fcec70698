"""roi_align against torchvision's kernel, docs/conventions.md, and a slow loop written from the paper."""
import math
import sys

import pytest
import torch

from maskrcnn.ops import roi_align


def _params(roi_align_ref, k):
    out_h, out_w, scale, ratio, aligned = roi_align_ref[f"case{k}_params"].tolist()
    return dict(output_size=(int(out_h), int(out_w)), spatial_scale=scale, sampling_ratio=int(ratio),
                aligned=bool(aligned))


# --- torchvision's numbers ---------------------------------------------------------------------------

@pytest.mark.parametrize("k", range(7))
def test_forward_and_backward_match_torchvision(roi_align_ref, k):
    x = roi_align_ref["input"].clone().requires_grad_()
    out = roi_align(x, roi_align_ref["rois"], **_params(roi_align_ref, k))
    torch.testing.assert_close(out, roi_align_ref[f"case{k}_output"], rtol=0, atol=1e-10)
    (out * roi_align_ref[f"case{k}_grad_weight"]).sum().backward()
    torch.testing.assert_close(x.grad, roi_align_ref[f"case{k}_grad_input"], rtol=0, atol=1e-10)


# The float32 ROIAlign comparisons below use an absolute 1e-5: the outputs are O(1) (at most 2.3 in the
# fixture, one float32 ulp there is 2.4e-7), so 1e-5 is ~40 ulps of the largest value, room for bilinear
# sums rounded in another order or with fused multiply-adds; never used on pixel-sized values.
def test_float32_matches_torchvision(roi_align_ref):
    x, rois = roi_align_ref["input"].float(), roi_align_ref["rois"].float()
    out = roi_align(x, rois, (7, 7), spatial_scale=0.25, sampling_ratio=2, aligned=False)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, roi_align_ref["float32_output"], rtol=0, atol=1e-5)


# --- docs/conventions.md literals -------------------------------------------------------------------------------

ARANGE_ALIGNED_FALSE = [[7.5, 8, 8.5, 9], [10, 10.5, 11, 11.5], [12.5, 13, 13.5, 14], [15, 15.5, 16, 16.5]]
ARANGE_ALIGNED_TRUE = [[4.5, 5, 5.5, 6], [7, 7.5, 8, 8.5], [9.5, 10, 10.5, 11], [12, 12.5, 13, 13.5]]


@pytest.mark.parametrize("aligned, expected", [(False, ARANGE_ALIGNED_FALSE), (True, ARANGE_ALIGNED_TRUE)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_arange_literals(aligned, expected, dtype):
    x = torch.arange(25, dtype=dtype).reshape(1, 1, 5, 5)
    rois = torch.tensor([[0, 1, 1, 3, 3]], dtype=dtype)
    out = roi_align(x, rois, 4, spatial_scale=1.0, sampling_ratio=0, aligned=aligned)
    torch.testing.assert_close(out, torch.tensor(expected, dtype=dtype).view(1, 1, 4, 4), rtol=0, atol=1e-6)


def test_aligned_reads_pixel_centers():
    # the box [1, 3] x [1, 3] covers pixels 1 and 2 in each direction: mean 5 * 1.5 + 1.5 = 9;
    # without the half-pixel shift the samples sit half a pixel down-right, on pixel (2, 2) = 12
    x = torch.arange(25, dtype=torch.float64).reshape(1, 1, 5, 5)
    rois = torch.tensor([[0, 1, 1, 3, 3]], dtype=torch.float64)
    assert roi_align(x, rois, 1, sampling_ratio=0, aligned=True).item() == 9.0
    assert roi_align(x, rois, 1, sampling_ratio=0, aligned=False).item() == 12.0


def test_zero_height_box_aligned_gives_zero_output_and_gradient():
    x = torch.rand(1, 2, 10, 10, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 3, 4, 5, 4]], dtype=torch.float64)
    out = roi_align(x, rois, 7, spatial_scale=1.0, sampling_ratio=0, aligned=True)
    assert torch.equal(out, torch.zeros(1, 2, 7, 7, dtype=torch.float64))
    out.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_empty_rois():
    x = torch.rand(2, 3, 10, 10, requires_grad=True)
    out = roi_align(x, torch.zeros(0, 5), 7, spatial_scale=0.5, sampling_ratio=2)
    assert out.shape == (0, 3, 7, 7)
    out.sum().backward()  # still part of the graph: an image without boxes must train
    assert torch.equal(x.grad, torch.zeros_like(x))
    assert roi_align(x, torch.zeros(0, 5), (3, 5)).shape == (0, 3, 3, 5)


# --- a slow loop straight from the paper's definition ------------------------------------------------

def _bilinear(feature, y, x):
    """Read a (C, H, W) map at a real point (y, x): bilinear interpolation of the four nearest cells,
    with the kernel's boundary rule (reference README): 0 beyond one cell outside the map, otherwise
    the point is clamped onto [0, H-1] x [0, W-1]."""
    _, h, w = feature.shape
    if y < -1 or y > h or x < -1 or x > w:
        return torch.zeros(feature.shape[0], dtype=feature.dtype)
    y, x = min(max(y, 0.0), h - 1.0), min(max(x, 0.0), w - 1.0)
    y0, x0 = math.floor(y), math.floor(x)
    y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
    ly, lx = y - y0, x - x0
    return ((1 - ly) * (1 - lx) * feature[:, y0, x0] + (1 - ly) * lx * feature[:, y0, x1]
            + ly * (1 - lx) * feature[:, y1, x0] + ly * lx * feature[:, y1, x1])


def roi_align_loop(input, rois, output_size, spatial_scale, sampling_ratio, aligned):
    """Mask R-CNN section 3: split each ROI into out_h x out_w bins, sample each bin at a regular
    grid_h x grid_w lattice of sub-cell centers by bilinear interpolation, and average the samples."""
    out_h, out_w = output_size
    out = torch.zeros(len(rois), input.shape[1], out_h, out_w, dtype=torch.float64)
    offset = 0.5 if aligned else 0.0
    for k, (b, x1, y1, x2, y2) in enumerate(rois.tolist()):
        x1, y1 = x1 * spatial_scale - offset, y1 * spatial_scale - offset
        x2, y2 = x2 * spatial_scale - offset, y2 * spatial_scale - offset
        roi_w, roi_h = x2 - x1, y2 - y1
        if not aligned:
            roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
        bin_h, bin_w = roi_h / out_h, roi_w / out_w
        grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_h / out_h)
        grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_w / out_w)
        for ph in range(out_h):
            for pw in range(out_w):
                total = torch.zeros(input.shape[1], dtype=torch.float64)
                for iy in range(grid_h):
                    y = y1 + ph * bin_h + (iy + 0.5) * bin_h / grid_h
                    for ix in range(grid_w):
                        x = x1 + pw * bin_w + (ix + 0.5) * bin_w / grid_w
                        total += _bilinear(input[int(b)].double(), y, x)
                out[k, :, ph, pw] = total / max(grid_h * grid_w, 1)
    return out


def _random_rois(n_images, height, width, scale, generator):
    """Random boxes in image pixels plus the edge cases: partly outside, fully outside, zero width,
    zero area, tiny, and two identical boxes."""
    h, w = height / scale, width / scale
    xy = torch.rand(10, 2, generator=generator, dtype=torch.float64) * torch.tensor([w, h]) * 0.8
    wh = torch.rand(10, 2, generator=generator, dtype=torch.float64) * torch.tensor([w, h]) * 0.6 + 0.1
    boxes = torch.cat([xy, xy + wh], dim=1)
    extra = torch.tensor(
        [
            [-0.3 * w, -0.2 * h, 0.4 * w, 0.5 * h],  # partly outside, top-left
            [0.7 * w, 0.6 * h, 1.3 * w, 1.2 * h],  # partly outside, bottom-right
            [1.5 * w, 1.5 * h, 1.9 * w, 2.0 * h],  # fully outside
            [0.3 * w, 0.2 * h, 0.3 * w, 0.7 * h],  # zero width
            [0.5 * w, 0.5 * h, 0.5 * w, 0.5 * h],  # a single point
            [0.2 * w, 0.3 * h, 0.21 * w, 0.33 * h],  # smaller than a cell
        ],
        dtype=torch.float64,
    )
    boxes = torch.cat([boxes, extra, boxes[:1]])  # the last one repeats the first
    batch = torch.randint(0, n_images, (len(boxes), 1), generator=generator).double()
    batch[-1] = batch[0]
    return torch.cat([batch, boxes], dim=1)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 1, 2, 3])
def test_matches_loop_from_the_paper(aligned, sampling_ratio):
    g = torch.Generator().manual_seed(sampling_ratio + 10 * aligned + 100)
    # a non-contiguous (N, C, H, W) view
    x = torch.randn(2, 13, 11, 3, generator=g, dtype=torch.float64).permute(0, 3, 2, 1)
    assert not x.is_contiguous()
    scale = 0.5
    rois = _random_rois(2, 11, 13, scale, g)
    params = dict(output_size=(3, 4), spatial_scale=scale, sampling_ratio=sampling_ratio, aligned=aligned)
    out = roi_align(x, rois, **params)
    torch.testing.assert_close(out, roi_align_loop(x, rois, **params), rtol=0, atol=1e-10)
    assert torch.equal(out[0], out[-1])  # identical boxes, identical features
    fully_outside = 12
    assert torch.equal(out[fully_outside], torch.zeros_like(out[fully_outside]))


@pytest.mark.parametrize("aligned", [False, True])
def test_gradcheck(aligned):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 2, 6, 7, generator=g, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 0.5, 1.2, 5.1, 4.7], [1, -1.0, 2.0, 3.5, 7.5], [1, 2.0, 2.0, 2.0, 5.0]],
                        dtype=torch.float64)
    for ratio in (-1, 2):
        assert torch.autograd.gradcheck(
            lambda t: roi_align(t, rois, (3, 2), spatial_scale=1.0, sampling_ratio=ratio, aligned=aligned), (x,)
        )


def test_image_without_boxes_gets_no_gradient():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 2, 8, 9, generator=g, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 1.0, 1.0, 6.0, 5.0], [2, 0.0, 2.0, 8.0, 7.0], [0, 3.0, 3.0, 4.0, 8.0]],
                        dtype=torch.float64)  # image 1 has no boxes
    out = roi_align(x, rois, 2, spatial_scale=1.0, sampling_ratio=2)
    out.sum().backward()
    assert torch.equal(x.grad[1], torch.zeros_like(x.grad[1]))
    assert x.grad[0].abs().sum() > 0 and x.grad[2].abs().sum() > 0
    alone = roi_align(x[2:].detach(), torch.tensor([[0, 0.0, 2.0, 8.0, 7.0]], dtype=torch.float64), 2,
                      spatial_scale=1.0, sampling_ratio=2)
    torch.testing.assert_close(out[1:2], alone, rtol=0, atol=1e-12)


def test_gradient_with_respect_to_box_coordinates():
    # the native kernels give no gradient for the boxes; the reference is differentiable in them too.
    # (Bilinear interpolation has kinks where a sample crosses a cell boundary: no sample lies on one.)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 2, 9, 8, generator=g, dtype=torch.float64)
    batch = torch.tensor([[0.0], [1.0], [1.0]], dtype=torch.float64)
    boxes = torch.tensor([[0.7, 1.35, 6.1, 5.4], [-1.2, 2.2, 4.3, 9.6], [2.1, 0.4, 7.7, 3.3]],
                         dtype=torch.float64, requires_grad=True)
    for aligned in (False, True):
        assert torch.autograd.gradcheck(
            lambda b: roi_align(x, torch.cat([batch, b], dim=1), (3, 2), spatial_scale=0.8,
                                sampling_ratio=2, aligned=aligned), (boxes,)
        )


def test_pooling_in_groups_of_points_changes_nothing(monkeypatch):
    module = sys.modules["maskrcnn.ops.roi_align"]  # the attribute maskrcnn.ops.roi_align is the function
    g = torch.Generator().manual_seed(8)
    x = torch.randn(2, 3, 11, 13, generator=g, dtype=torch.float64, requires_grad=True)
    rois = _random_rois(2, 11, 13, 0.5, g)
    weight = torch.randn(len(rois), 3, 3, 4, generator=g, dtype=torch.float64)
    results = []
    for max_points in (1 << 21, 50):  # one group; a group per ROI or two (single ROIs over the limit)
        monkeypatch.setattr(module, "_MAX_POINTS", max_points)
        x.grad = None
        out = roi_align(x, rois, (3, 4), spatial_scale=0.5, sampling_ratio=-1, aligned=True)
        (out * weight).sum().backward()
        results.append((out.detach(), x.grad.clone()))
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=1e-12)


def test_half_precision_is_computed_in_float32():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 4, 16, 16, generator=g)
    rois = torch.tensor([[0, 2.0, 3.0, 40.0, 50.0]])
    ref = roi_align(x, rois, 7, spatial_scale=0.25, sampling_ratio=2)
    out = roi_align(x.half(), rois.half(), 7, spatial_scale=0.25, sampling_ratio=2)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float(), ref, rtol=1e-2, atol=1e-2)


def test_argument_errors():
    x = torch.rand(2, 3, 10, 10)
    with pytest.raises(ValueError, match=r"rois must have shape \(K, 5\).*got \(4, 4\)"):
        roi_align(x, torch.zeros(4, 4), 7)
    with pytest.raises(TypeError, match=r"rois must have the dtype of input"):
        roi_align(x, torch.zeros(4, 5, dtype=torch.float64), 7)
    with pytest.raises(ValueError, match=r"batch index\) must be integers in \[0, 1\].*\[2\.0\]"):
        roi_align(x, torch.tensor([[2.0, 0, 0, 5, 5]]), 7)
    with pytest.raises(ValueError, match=r"batch index"):
        roi_align(x, torch.tensor([[-1.0, 0, 0, 5, 5]]), 7)
    with pytest.raises(ValueError, match=r"input must have shape \(N, C, H, W\), got \(3, 10, 10\)"):
        roi_align(x[0], torch.zeros(1, 5), 7)
    with pytest.raises(ValueError, match=r"output_size must be a positive int"):
        roi_align(x, torch.zeros(1, 5), (7, 0))


@pytest.mark.slow
def test_detection_sized_batch():
    """1000 ROIs x 256 channels x 7x7, sampling ratio 2, on a 200x304 map (memory ~ samples, not
    samples x channels); rows agree with running ROIs one at a time."""
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 256, 200, 304, generator=g, requires_grad=True)
    xy = torch.rand(1000, 2, generator=g) * torch.tensor([1216.0, 800.0])
    boxes = torch.cat([xy, xy + torch.rand(1000, 2, generator=g) * 300 + 4], dim=1)
    rois = torch.cat([torch.randint(0, 2, (1000, 1), generator=g).float(), boxes], dim=1)
    out = roi_align(x, rois, 7, spatial_scale=0.25, sampling_ratio=2)
    assert out.shape == (1000, 256, 7, 7)
    out.sum().backward()
    assert x.grad.shape == x.shape
    with torch.no_grad():
        for i in (0, 500, 999):
            torch.testing.assert_close(out[i:i + 1], roi_align(x, rois[i:i + 1], 7, 0.25, 2), rtol=0, atol=1e-5)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_torchvision(roi_align_ref):
    for k in range(7):
        x = roi_align_ref["input"].cuda().requires_grad_()
        out = roi_align(x, roi_align_ref["rois"].cuda(), **_params(roi_align_ref, k))
        torch.testing.assert_close(out.cpu(), roi_align_ref[f"case{k}_output"], rtol=0, atol=1e-10)
        (out * roi_align_ref[f"case{k}_grad_weight"].cuda()).sum().backward()
        torch.testing.assert_close(x.grad.cpu(), roi_align_ref[f"case{k}_grad_input"], rtol=0, atol=1e-10)

"""The native NMS kernels (C++ CPU, CUDA bitmask) against torchvision's numbers and the
pure-PyTorch reference: kept indices must be identical, in the same order. Also dispatch, the
MASKRCNN_NATIVE switch, autocast, half precision and argument errors.

The CUDA variants run when a GPU is present and are skipped with a visible reason otherwise.
"""
import pytest
import torch

from maskrcnn.ops import _native
from maskrcnn.ops.nms import batched_nms, nms, nms_reference

from native_support import (  # noqa: F401  (backend is a fixture)
    DEVICES, CountingExtension, backend, needs_cuda_kernels, require_native_extension)


@pytest.fixture(autouse=True)
def native_extension():
    return require_native_extension()


def random_boxes(n, generator, dtype=torch.float32, extent=1000.0, max_size=300.0):
    """(n, 4) boxes in a square of side `extent`, sizes up to max_size, heavily overlapping."""
    xy = torch.rand(n, 2, generator=generator, dtype=dtype) * extent
    wh = torch.rand(n, 2, generator=generator, dtype=dtype) * max_size
    return torch.cat([xy, xy + wh], dim=1)


# --- torchvision's numbers, through both backends of the public ops ---------------------------------

def assert_backend_ran(backend):
    name, spy = backend
    if name == "native":
        assert spy.calls and set(spy.calls) == {"nms"}, spy.calls
    else:
        assert spy.calls == [], spy.calls


@pytest.mark.parametrize("k", range(4))
def test_public_ops_match_torchvision_through_each_backend(nms_ref, backend, k):
    boxes, scores = nms_ref[f"case{k}_boxes"], nms_ref[f"case{k}_scores"]
    threshold = float(nms_ref[f"case{k}_iou_threshold"])
    assert torch.equal(nms(boxes, scores, threshold), nms_ref[f"case{k}_keep"])
    assert torch.equal(batched_nms(boxes, scores, nms_ref[f"case{k}_idxs"], threshold),
                       nms_ref[f"case{k}_batched_keep"])
    assert_backend_ran(backend)


def test_public_op_duplicates_and_empty_through_each_backend(nms_ref, backend):
    assert torch.equal(nms(nms_ref["dup_boxes"], nms_ref["dup_scores"], 0.5), nms_ref["dup_keep"])
    keep = nms(torch.zeros(0, 4), torch.zeros(0), 0.5)
    assert keep.dtype == torch.int64 and torch.equal(keep, nms_ref["empty_keep"])


@pytest.mark.parametrize("device", DEVICES)
def test_native_kernel_matches_torchvision(nms_ref, device):
    needs_cuda_kernels(device)
    for k in range(4):
        keep = _native._C.nms(nms_ref[f"case{k}_boxes"].to(device),
                              nms_ref[f"case{k}_scores"].to(device),
                              float(nms_ref[f"case{k}_iou_threshold"]))
        assert keep.device.type == device
        assert torch.equal(keep.cpu(), nms_ref[f"case{k}_keep"])
    dup = _native._C.nms(nms_ref["dup_boxes"].to(device), nms_ref["dup_scores"].to(device), 0.5)
    assert torch.equal(dup.cpu(), nms_ref["dup_keep"])


# --- native against the reference on random inputs ---------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.7, 0.95, 1.0])
def test_native_matches_reference(device, dtype, threshold):
    needs_cuda_kernels(device)
    generator = torch.Generator().manual_seed(int(threshold * 100))
    for n in (1, 2, 63, 64, 65, 700):  # around the CUDA kernel's 64-box blocks
        boxes = random_boxes(n, generator, dtype).to(device)
        scores = torch.rand(n, generator=generator, dtype=dtype).to(device)
        keep = _native._C.nms(boxes, scores, threshold)
        assert keep.dtype == torch.int64
        assert torch.equal(keep.cpu(), nms_reference(boxes.cpu(), scores.cpu(), threshold))


@pytest.mark.parametrize("device", DEVICES)
def test_ties_degenerate_boxes_and_non_contiguous_inputs(device):
    """Equal scores keep input order; zero-area boxes (IoU 0/0) never suppress or get suppressed;
    strided boxes and scores give the same result as contiguous ones."""
    needs_cuda_kernels(device)
    generator = torch.Generator().manual_seed(9)
    boxes = random_boxes(300, generator, extent=200.0, max_size=80.0)
    boxes[::7, 2:] = boxes[::7, :2]  # zero-area boxes
    boxes[50:60] = boxes[40]  # exact duplicates
    scores = torch.randint(0, 8, (300,), generator=generator).float()  # many ties
    expected = nms_reference(boxes, scores, 0.5)
    wide = torch.zeros(300, 9)
    wide[:, 1:9:2] = boxes  # boxes as every other column of a wider tensor
    strided_scores = torch.stack([scores, scores], dim=1)[:, 1]
    strided_boxes = wide[:, 1:9:2].to(device)
    assert not strided_boxes.is_contiguous()
    for b, s in ((boxes.to(device), scores.to(device)), (strided_boxes, strided_scores.to(device))):
        assert torch.equal(_native._C.nms(b, s, 0.5).cpu(), expected)


@pytest.mark.parametrize("device", DEVICES)
def test_empty_input(device):
    needs_cuda_kernels(device)
    keep = _native._C.nms(torch.zeros(0, 4, device=device), torch.zeros(0, device=device), 0.5)
    assert keep.shape == (0,) and keep.dtype == torch.int64 and keep.device.type == device


# --- dtypes, autocast, the switch -------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_boxes_are_compared_in_float32(device, dtype):
    needs_cuda_kernels(device)
    generator = torch.Generator().manual_seed(10)
    boxes = random_boxes(400, generator, extent=500.0).to(dtype).to(device)
    scores = torch.rand(400, generator=generator).to(device)
    expected = nms_reference(boxes.float().cpu(), scores.cpu(), 0.6)
    assert torch.equal(_native._C.nms(boxes, scores, 0.6).cpu(), expected)
    assert torch.equal(nms(boxes, scores, 0.6).cpu(), expected)


@pytest.mark.parametrize("device", DEVICES)
def test_threshold_is_compared_in_double_like_torchvision(device):
    """The IoU is computed in the boxes' dtype and compared with the threshold as a double:
    3 / 10 in float32 is 0.30000001192..., above 0.3 and 0.30000001 but not above itself."""
    needs_cuda_kernels(device)
    boxes = torch.tensor([[0.0, 0.0, 10.0, 1.0], [0.0, 0.0, 3.0, 1.0]], device=device)
    scores = torch.tensor([0.9, 0.8], device=device)
    float_iou = float(torch.tensor(3.0) / torch.tensor(10.0))
    for threshold, kept in ((0.3, [0]), (0.30000001, [0]), (float_iou, [0, 1]), (0.300000012, [0, 1])):
        assert _native._C.nms(boxes, scores, threshold).tolist() == kept
        assert nms_reference(boxes.cpu(), scores.cpu(), threshold).tolist() == kept


def test_scores_may_have_another_dtype_than_boxes():
    generator = torch.Generator().manual_seed(11)
    boxes = random_boxes(200, generator)
    scores = torch.rand(200, generator=generator, dtype=torch.float64)
    assert torch.equal(_native._C.nms(boxes, scores, 0.5), nms_reference(boxes, scores, 0.5))


@pytest.mark.parametrize("device", DEVICES)
def test_autocast_computes_in_float32(device):
    needs_cuda_kernels(device)
    autocast_dtype = torch.bfloat16 if device == "cpu" else torch.float16
    generator = torch.Generator().manual_seed(12)
    # coordinates up to 60000: beyond float16's 65504 once offset, and coarse in bfloat16
    boxes = random_boxes(500, generator, extent=60000.0, max_size=9000.0).to(device)
    scores = torch.rand(500, generator=generator).to(device)
    expected = nms(boxes, scores, 0.5)
    with torch.autocast(device_type=device, dtype=autocast_dtype):
        assert torch.equal(nms(boxes, scores, 0.5), expected)


def test_switch_forces_the_reference(monkeypatch):
    spy = CountingExtension(_native._C)
    monkeypatch.setattr(_native, "_C", spy)
    monkeypatch.setenv("MASKRCNN_NATIVE", "0")
    boxes = random_boxes(50, torch.Generator().manual_seed(13))
    nms(boxes, torch.rand(50), 0.5)
    assert spy.calls == []
    monkeypatch.setenv("MASKRCNN_NATIVE", "1")
    nms(boxes, torch.rand(50), 0.5)
    assert spy.calls == ["nms"]


# --- errors ------------------------------------------------------------------------------------------

def test_extension_rejects_bad_arguments_naming_them(native_extension):
    C = native_extension
    boxes, scores = torch.rand(3, 4), torch.rand(3)
    with pytest.raises(ValueError, match=r"`boxes` must have shape \(N, 4\)"):
        C.nms(boxes[:, :3], scores, 0.5)
    with pytest.raises(ValueError, match=r"`scores` must have shape \(N,\) with N = 3"):
        C.nms(boxes, scores[:2], 0.5)
    with pytest.raises(TypeError, match="`boxes` must be float32, float64, float16 or bfloat16"):
        C.nms(boxes.long(), scores, 0.5)
    with pytest.raises(RuntimeError, match="not supported"):
        C.nms(boxes.to("meta"), scores.to("meta"), 0.5)

"""ROIAlign (He et al., Mask R-CNN, 2017, section 3): a fixed-size feature for each box.

What it computes
----------------
For each ROI ``[b, x1, y1, x2, y2]`` (image ``b`` of the batch, corners in *image* pixels) and each
channel, ROIAlign returns an ``out_h x out_w`` grid. The box is first mapped onto the feature map by
``spatial_scale`` (1/4 for P2, ...), then cut into ``out_h x out_w`` equal bins. In each bin a regular
``grid_h x grid_w`` lattice of sample points is placed at the centers of equal sub-cells, the feature map
is read at each point by **bilinear interpolation** of its four nearest cells, and the samples are
averaged. Nothing is rounded to the feature grid (ROIPool rounded the box and the bins, which misaligned
masks by up to a stride); every output is a continuous function of the box, and a linear function of
the feature map, so gradients flow to the features.

Bilinear sampling at a point ``(y, x)``: with ``y0 = floor(y)``, ``x0 = floor(x)``, ``ly = y - y0``,
``lx = x - x0``, the value is ``(1-ly)(1-lx) f[y0, x0] + (1-ly) lx f[y0, x0+1] + ly (1-lx) f[y0+1, x0]
+ ly lx f[y0+1, x0+1]``. Boundary rule of the torchvision / Detectron kernels, reproduced exactly: a point
with ``y < -1`` or ``y > H`` (or ``x < -1`` or ``x > W``) reads 0; otherwise ``y`` and ``x`` are clamped
to ``>= 0``, and a point at or past the last row (``y0 >= H - 1``) reads row ``H - 1`` alone (likewise for
columns). The bin average divides by the number of lattice points, including those that read 0.

Sampling ratio: ``sampling_ratio > 0`` puts ``sampling_ratio x sampling_ratio`` points in every bin;
``sampling_ratio <= 0`` is adaptive: ``ceil(roi_h / out_h) x ceil(roi_w / out_w)`` points, about one per
feature cell, so the lattice differs from ROI to ROI.

Aligned: a feature cell ``i`` covers the continuous interval ``[i, i + 1)`` and its value sits at its
center ``i + 0.5``. ``aligned=True`` subtracts that half pixel from the scaled box, so that a box corner
at continuous coordinate ``x`` is sampled at ``x - 0.5`` in the cell-index coordinates of the
interpolation. ``aligned=False`` (the original Mask R-CNN and torchvision's default) skips the shift,
which samples everything half a cell down-right, and also raises the ROI's width and height to at least
one cell. See docs/architecture.md for a worked example.

Implementation
--------------
All sample points of all ROIs are generated at once as flat tensors (no Python loop over ROIs) by index
arithmetic: sample ``j`` of ROI ``k`` decodes into ``(bin row, bin column, lattice row, lattice column)``
with the ROI's own lattice size, so ROIs with different adaptive lattices need no padding. Each point
contributes its four bilinear corners as (flat index into the ``(N*H*W, C)`` feature table, weight)
pairs, and ``torch.nn.functional.embedding_bag(mode="sum", per_sample_weights=...)`` gathers and sums
them per output bin in one fused step, so memory is proportional to the number of sample points, never
to ``points x channels``. Autograd differentiates the embedding bag with respect to the feature table,
which is the scatter-add backward of the CUDA kernel; it also differentiates the bilinear weights with
respect to the box coordinates (torchvision's and the native kernels give no gradient for the boxes;
Mask R-CNN detaches its proposals anyway). ROIs are pooled in consecutive groups of a bounded number of
sample points, so that large adaptive lattices (mask targets cut from full-size masks) cannot exhaust
memory; at detection sizes there is a single group.
"""
from __future__ import annotations

import itertools
from typing import NamedTuple, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _native


def _autocast_enabled(device_type: str) -> bool:
    return device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type)


def _pair(output_size: Union[int, Tuple[int, int]]) -> Tuple[int, int]:
    if isinstance(output_size, int):
        size = (output_size, output_size)
    else:
        size = tuple(output_size)
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
        raise ValueError(f"output_size must be a positive int or a pair (h, w) of them, got {output_size!r}")
    return size


def _axis_weights(coord: Tensor, size: int) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """One axis of the kernel's bilinear interpolation at coordinates ``coord`` on an axis of ``size``
    cells: returns ``(low, high, w_low, w_high)``. Bilinear weights factor into a y part times an x part,
    and so does the out-of-range test (the point reads 0 when y *or* x is out), so the 2-D weight of a
    corner is the product of the two axes' weights."""
    valid = (coord >= -1.0) & (coord <= size)
    c = coord.clamp(min=0, max=size)  # max only keeps invalid points' indices in range; they weigh 0
    low = c.long()
    at_end = low >= size - 1  # at or past the last cell: read it alone
    low = torch.where(at_end, torch.full_like(low, size - 1), low)
    high = torch.where(at_end, low, low + 1)
    c = torch.where(at_end, low.to(c.dtype), c)
    frac = c - low.to(c.dtype)
    zero = torch.zeros_like(frac)
    return low, high, torch.where(valid, 1 - frac, zero), torch.where(valid, frac, zero)


def roi_align_reference(
    input: Tensor,
    rois: Tensor,
    output_size: Tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
) -> Tensor:
    """Vectorized pure-PyTorch ROIAlign; arguments as in :func:`roi_align`, assumed valid."""
    out_h, out_w = output_size
    n, c, height, width = input.shape
    k = rois.shape[0]

    # Per ROI: the box on the feature map, bin size and lattice size (computed in the input's dtype, in
    # the kernel's order of operations).
    offset = 0.5 if aligned else 0.0
    start_x = rois[:, 1] * spatial_scale - offset
    start_y = rois[:, 2] * spatial_scale - offset
    roi_w = rois[:, 3] * spatial_scale - offset - start_x
    roi_h = rois[:, 4] * spatial_scale - offset - start_y
    if not aligned:
        roi_w = roi_w.clamp(min=1.0)
        roi_h = roi_h.clamp(min=1.0)
    if sampling_ratio > 0:
        grid_h = torch.full((k,), sampling_ratio, dtype=torch.int64, device=input.device)
        grid_w = grid_h
    else:
        grid_h = torch.ceil(roi_h.detach() / out_h).clamp(min=0).long()
        grid_w = torch.ceil(roi_w.detach() / out_w).clamp(min=0).long()
    rois_on_map = _RoisOnMap(
        batch=rois[:, 0].detach().long(), start_y=start_y, start_x=start_x,
        bin_h=roi_h / out_h, bin_w=roi_w / out_w, grid_h=grid_h, grid_w=grid_w,
    )

    # The feature map as a table with one row of C values per (image, y, x) cell.
    table = input.permute(0, 2, 3, 1).reshape(n * height * width, c)
    if k == 0:  # an empty output that is still part of the graph, so that backward() works
        return table.new_zeros((0, c, out_h, out_w)) + 0 * table.sum()
    # ROIs are pooled in consecutive groups: a ROI joins group g when its first sample point is point
    # g * _MAX_POINTS or later of the whole batch. This bounds the memory of the large adaptive lattices
    # (mask targets cut from full-size masks) to about _MAX_POINTS plus one ROI's points per group.
    per_roi = grid_h * grid_w * (out_h * out_w)
    group = (torch.cumsum(per_roi, 0) - per_roi) // _MAX_POINTS
    sizes = torch.unique_consecutive(group, return_counts=True)[1].tolist()
    firsts = [0] + list(itertools.accumulate(sizes))
    pooled = [
        _pool(table, rois_on_map, first, last, output_size, height, width)
        for first, last in zip(firsts[:-1], firsts[1:])  # a loop over groups (one at detection sizes)
    ]
    return torch.cat(pooled).permute(0, 3, 1, 2).contiguous()


# Sample points pooled at once (each costs about 200 bytes of temporaries).
_MAX_POINTS = 1 << 21


class _RoisOnMap(NamedTuple):
    """Per-ROI geometry on the feature map, each of shape (K,)."""

    batch: Tensor
    start_y: Tensor
    start_x: Tensor
    bin_h: Tensor
    bin_w: Tensor
    grid_h: Tensor
    grid_w: Tensor


def _pool(table: Tensor, r: _RoisOnMap, first: int, last: int, output_size: Tuple[int, int],
          height: int, width: int) -> Tensor:
    """ROIAlign of ROIs ``first`` to ``last - 1``: ``(last - first, out_h, out_w, C)``."""
    out_h, out_w = output_size
    dtype, device = table.dtype, table.device
    r = _RoisOnMap(*(t[first:last] for t in r))
    k = last - first
    points = r.grid_h * r.grid_w  # lattice points per bin (0 for an empty ROI with aligned=True)

    # Every sample point, ordered (roi, bin row, bin column, lattice row, lattice column): point j of
    # the group belongs to the ROI whose range [end - count, end) contains j.
    per_roi = points * (out_h * out_w)
    ends = torch.cumsum(per_roi, 0)
    j = torch.arange(int(ends[-1]), device=device)
    roi = torch.searchsorted(ends, j, right=True)
    j = j - (ends - per_roi)[roi]
    gw, gh = r.grid_w[roi], r.grid_h[roi]
    ix, j = j % gw, j // gw
    iy, j = j % gh, j // gh
    pw, ph = j % out_w, j // out_w

    y = r.start_y[roi] + ph * r.bin_h[roi] + (iy + 0.5).to(dtype) * r.bin_h[roi] / gh.to(dtype)
    x = r.start_x[roi] + pw * r.bin_w[roi] + (ix + 0.5).to(dtype) * r.bin_w[roi] / gw.to(dtype)
    y_low, y_high, wy_low, wy_high = _axis_weights(y, height)
    x_low, x_high, wx_low, wx_high = _axis_weights(x, width)

    # Four corners per point, as rows of the (N*H*W, C) feature table, and their bilinear weights.
    base = r.batch[roi] * (height * width)
    index = torch.stack(
        (
            base + y_low * width + x_low,
            base + y_low * width + x_high,
            base + y_high * width + x_low,
            base + y_high * width + x_high,
        ),
        dim=1,
    ).reshape(-1)
    weight = torch.stack(
        (wy_low * wx_low, wy_low * wx_high, wy_high * wx_low, wy_high * wx_high), dim=1
    ).reshape(-1)

    # One bag per output bin: 4 * points consecutive entries (an empty bag sums to 0).
    bag_size = (4 * points)[:, None].expand(k, out_h * out_w).reshape(-1)
    offsets = torch.cumsum(bag_size, 0) - bag_size
    summed = F.embedding_bag(index, table, offsets, mode="sum", per_sample_weights=weight)  # (k*oh*ow, C)
    count = points.clamp(min=1).to(dtype)
    return (summed.reshape(k, out_h * out_w, -1) / count[:, None, None]).reshape(k, out_h, out_w, -1)


def roi_align(
    input: Tensor,
    rois: Tensor,
    output_size: Union[int, Tuple[int, int]],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
    *,
    check_indices: bool = True,
) -> Tensor:
    """ROIAlign: pool a fixed ``output_size`` feature for each region of interest.

    Args:
        input: ``(N, C, H, W)`` feature maps of a batch of N images (floating point).
        rois: ``(K, 5)`` rows ``[batch_index, x1, y1, x2, y2]``, in image pixels, same device as ``input``
            and the same dtype, except under ``torch.autocast`` (see below).
        output_size: ``out_h`` and ``out_w``: an int for a square output, or a pair.
        spatial_scale: factor from image pixels to feature-map cells (1 / stride).
        sampling_ratio: lattice points per bin and axis; ``<= 0``: adaptive, ``ceil(roi size / bins)``.
        aligned: subtract half a cell so that sample points line up with pixel centers (see module doc).
        check_indices: raise a ValueError naming the bad values unless every ``rois[:, 0]`` is an image of
            the batch. Reading that answer back costs a device sync, so callers that build ``rois``
            themselves (the model's poolers and mask targets) pass False; the native kernels still refuse
            a bad index (an IndexError), and the reference's lookup fails on one.

    Returns:
        ``(K, C, out_h, out_w)``, differentiable with respect to ``input`` and the box coordinates.

    Half and bfloat16 inputs are computed in float32 and returned in their own dtype. Under
    ``torch.autocast`` (for the input's device) ``input`` and ``rois`` may differ in dtype, as torchvision's
    autocast rule allows: both are computed in float32 and the result has ``input``'s dtype.
    """
    if not isinstance(input, Tensor) or input.dim() != 4:
        shape = tuple(input.shape) if isinstance(input, Tensor) else type(input).__name__
        raise ValueError(f"roi_align: input must have shape (N, C, H, W), got {shape}")
    if not input.is_floating_point():
        raise TypeError(f"roi_align: input must be a floating-point tensor, got {input.dtype}")
    if not isinstance(rois, Tensor) or rois.dim() != 2 or rois.shape[1] != 5:
        shape = tuple(rois.shape) if isinstance(rois, Tensor) else type(rois).__name__
        raise ValueError(
            f"roi_align: rois must have shape (K, 5) with rows [batch_index, x1, y1, x2, y2], got {shape}"
        )
    if rois.dtype != input.dtype and not _autocast_enabled(input.device.type):
        raise TypeError(f"roi_align: rois must have the dtype of input ({input.dtype}) outside torch.autocast, "
                        f"got {rois.dtype}")
    if rois.device != input.device:
        raise ValueError(f"roi_align: rois must be on the device of input ({input.device}), got {rois.device}")
    size = _pair(output_size)
    if isinstance(sampling_ratio, bool) or not isinstance(sampling_ratio, int):
        raise TypeError(f"roi_align: sampling_ratio must be an int, got {sampling_ratio!r}")
    if check_indices and rois.shape[0] > 0:
        batch_index = rois[:, 0]
        bad = (batch_index < 0) | (batch_index >= input.shape[0]) | (batch_index != batch_index.floor())
        if bool(bad.any()):
            raise ValueError(
                f"roi_align: rois[:, 0] (batch index) must be integers in [0, {input.shape[0] - 1}] for an "
                f"input batch of {input.shape[0]}, got {batch_index[bad][:5].tolist()}"
            )
    # The native kernel when built for this device, else roi_align_reference (16-bit inputs computed in
    # float32); float32 under autocast. See ops/_native.py.
    return _native.roi_align(input, rois, size, float(spatial_scale), sampling_ratio, bool(aligned),
                             reference=roi_align_reference)

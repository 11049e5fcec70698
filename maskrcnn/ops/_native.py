"""The native ROIAlign and NMS kernels: loading them, and choosing per call between them and the
pure-PyTorch references.

Every op has two implementations with one signature:

* the **reference**, in plain PyTorch (``roi_align_reference`` in ``roi_align.py``,
  ``nms_reference`` in ``nms.py``): readable, differentiable by autograd, runs anywhere;
* the **native** kernel, C++ for the CPU and CUDA for GPUs (``csrc/``), compiled by ``setup.py``
  into the extension module ``maskrcnn.ops._C``. It computes the same numbers, much faster.

The public ops (``roi_align``, ``nms``) call :func:`roi_align` / :func:`nms` here with their
reference function. The native kernel runs when all of these hold (:func:`choose_backend`):

1. ``MASKRCNN_NATIVE`` is not ``0`` in the environment (read at every call, so a test or a
   notebook can flip it; ``0`` forces the reference everywhere: for teaching, debugging and
   benchmarks);
2. the extension was built and imports (a skipped or failed build leaves the reference);
3. it has kernels for the tensors' device (CPU always; CUDA only in a CUDA build);
4. for ROIAlign, ``rois`` does not require grad: the native kernels, like torchvision's, give a
   gradient for the features only (through :class:`RoIAlignFunction`, whose backward is the
   native backward kernel), while the reference also differentiates the box coordinates.
   Mask R-CNN detaches its proposals, so in the model the native kernel runs.

Under ``torch.autocast``, both ops compute in float32 (ROIAlign's output is then cast back to
the input's dtype, as torchvision does): half-precision bilinear weights lose accuracy, and
coordinate offsets such as batched NMS's overflow float16. Outside autocast, float16 / bfloat16
ROIAlign runs in float32 on the CPU and on the reference path (and returns the input's dtype); the
CUDA kernel reads 16-bit values directly and accumulates in float32. NMS always compares float16 /
bfloat16 boxes in float32, since it only returns indices.

Importing this module warns (``RuntimeWarning``, once) in the two cases where the reference runs
although the user meant the native kernels: the last build failed, or CUDA is available but the
extension has CPU kernels only (the reason comes from the build record's ``cuda`` field, e.g.
"CPU-only: CUDA build failed: <first compiler error>").

``python -m maskrcnn.doctor`` prints what :func:`extension_status` and :func:`choose_backend`
say for this installation.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

ENV_SWITCH = "MASKRCNN_NATIVE"
# Written by setup.py next to the compiled module: {"status": "built" | "skipped" | "failed", ...}
BUILD_RECORD_PATH = Path(__file__).with_name("_native_build.json")

_OFF_VALUES = {"0", "false", "no", "off"}
_HALF_DTYPES = (torch.float16, torch.bfloat16)


def _import_extension():
    """(module, None) when maskrcnn.ops._C imports, else (None, "why not")."""
    try:
        from maskrcnn.ops import _C  # the compiled extension; absent when not built
    except ImportError as error:  # not built, or built against another torch (undefined symbol)
        return None, f"{type(error).__name__}: {error}"
    return _C, None


def read_build_record() -> Optional[dict]:
    """What the last ``setup.py`` run did about the extension, or None when it left no record."""
    try:
        return json.loads(BUILD_RECORD_PATH.read_text())
    except (OSError, ValueError):
        return None


_C, IMPORT_ERROR = _import_extension()
BUILD_RECORD = read_build_record()

if _C is None and BUILD_RECORD is not None and BUILD_RECORD.get("status") == "failed":
    warnings.warn(
        "maskrcnn: the native ROIAlign/NMS extension failed to build "
        f"({BUILD_RECORD.get('reason', 'no reason recorded')}); using the pure-PyTorch ops. "
        "Run `python -m maskrcnn.doctor` for details.",
        RuntimeWarning,
        stacklevel=2,
    )


def cuda_kernels_missing_message(cuda_available: bool, extension, record: Optional[dict]) -> Optional[str]:
    """The warning for a machine whose GPU the extension cannot use: CUDA is available, the extension
    is loaded, but it was built with CPU kernels only. None otherwise."""
    if extension is None or extension.with_cuda or not cuda_available:
        return None
    why = (record or {}).get("cuda", "built without CUDA kernels")
    return (
        f"maskrcnn: CUDA is available but the native extension has CPU kernels only ({why}); "
        "ROIAlign and NMS on CUDA tensors run the pure-PyTorch references (slower, and NMS loops "
        "on the host). Rebuild with a CUDA toolkit (MASKRCNN_REQUIRE_CUDA=1 makes a failed CUDA "
        "build an install error); see docs/native.md and `python -m maskrcnn.doctor`."
    )


def cuda_kernels_warning() -> Optional[str]:
    """:func:`cuda_kernels_missing_message` for this process (asks CUDA only when it matters)."""
    if _C is None or _C.with_cuda or torch.version.cuda is None:
        return None
    return cuda_kernels_missing_message(torch.cuda.is_available(), _C, BUILD_RECORD)


_CUDA_WARNING = cuda_kernels_warning()
if _CUDA_WARNING is not None:  # once: at the first import of maskrcnn.ops
    warnings.warn(_CUDA_WARNING, RuntimeWarning, stacklevel=2)


def native_enabled_by_env() -> bool:
    """False when ``MASKRCNN_NATIVE`` is 0 (or false/no/off): the references run everywhere."""
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in _OFF_VALUES


def native_devices() -> tuple[str, ...]:
    """Device types the loaded extension has kernels for: (), ("cpu",) or ("cpu", "cuda")."""
    if _C is None:
        return ()
    return ("cpu", "cuda") if _C.with_cuda else ("cpu",)


def extension_status() -> str:
    """One line: is the extension built, for which devices, and if not, why not."""
    if _C is not None:
        kinds = "C++ CPU and CUDA kernels" if _C.with_cuda else "C++ CPU kernels only"
        return f"built: {kinds} ({Path(_C.__file__).name})"
    return f"not available: {_why_not_available()}"


def _why_not_available() -> str:
    record = BUILD_RECORD or {}
    status = record.get("status")
    if status == "skipped":
        return f"the build was skipped ({record.get('reason', 'MASKRCNN_BUILD_NATIVE=0')})"
    if status == "failed":
        return f"the build failed ({record.get('reason', 'no reason recorded')})"
    if status == "built":  # built once, but does not import now (e.g. torch changed since)
        return f"built for torch {record.get('torch', '?')} but does not import: {IMPORT_ERROR}"
    return (
        "not built (install with `pip install --no-build-isolation -e .` to compile it); "
        f"{IMPORT_ERROR}"
    )


def choose_backend(
    device: Union[torch.device, str], *, rois_require_grad: bool = False
) -> tuple[str, str]:
    """Which implementation runs for tensors on ``device``, and why.

    Returns ``("native", reason)`` or ``("reference", reason)``; the reason is one short phrase.
    ``rois_require_grad`` applies to ROIAlign only.
    """
    device_type = torch.device(device).type
    if not native_enabled_by_env():
        return "reference", f"{ENV_SWITCH}={os.environ[ENV_SWITCH]} in the environment"
    if _C is None:
        return "reference", f"native extension {extension_status()}"
    if device_type not in native_devices():
        built_for = " and ".join(native_devices())
        return "reference", f"the native extension has {built_for} kernels only, not {device_type}"
    if rois_require_grad:
        return "reference", "rois require grad; the native kernels give no gradient for boxes"
    kernel = "CUDA kernel" if device_type == "cuda" else "C++ CPU kernel"
    return "native", kernel


def _autocast_on(device_type: str) -> bool:
    return device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type)


def _as_pair(output_size: Union[int, Sequence[int]]) -> tuple[int, int]:
    if isinstance(output_size, int):
        return output_size, output_size
    height, width = output_size
    return int(height), int(width)


class RoIAlignFunction(torch.autograd.Function):
    """The native ROIAlign as an autograd op: forward and backward are the C++/CUDA kernels.

    Gradient flows to ``input`` only (``rois`` gets None); the backward is not itself
    differentiable (``once_differentiable``), like torchvision's.
    """

    @staticmethod
    def forward(ctx, input, rois, output_size, spatial_scale, sampling_ratio, aligned):
        out_h, out_w = output_size
        ctx.save_for_backward(rois)
        ctx.params = (spatial_scale, out_h, out_w, sampling_ratio, aligned)
        ctx.input_shape = tuple(input.shape)  # (N, C, H, W)
        return _C.roi_align_forward(input, rois, spatial_scale, out_h, out_w, sampling_ratio, aligned)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        if not ctx.needs_input_grad[0]:
            return (None,) * 6
        (rois,) = ctx.saved_tensors
        spatial_scale, out_h, out_w, sampling_ratio, aligned = ctx.params
        batch_size, channels, height, width = ctx.input_shape
        grad_input = _C.roi_align_backward(
            grad_output, rois, spatial_scale, out_h, out_w,
            batch_size, channels, height, width, sampling_ratio, aligned,
        )
        return grad_input, None, None, None, None, None


def roi_align(
    input: Tensor,
    rois: Tensor,
    output_size: Union[int, Sequence[int]],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
    *,
    reference: Callable[..., Tensor],
) -> Tensor:
    """ROIAlign through the native kernel when :func:`choose_backend` allows, else ``reference``.

    input (N, C, H, W) float; rois (K, 5) ``[batch_index, x1, y1, x2, y2]`` in input-image
    pixels, same dtype and device; returns (K, C, out_h, out_w) in input's dtype.
    ``reference`` is called with the same six arguments, ``output_size`` as an (h, w) tuple.
    """
    output_size = _as_pair(output_size)
    if _autocast_on(input.device.type):
        with torch.autocast(device_type=input.device.type, enabled=False):
            output = roi_align(input.float(), rois.float(), output_size, spatial_scale,
                               sampling_ratio, aligned, reference=reference)
        return output.to(input.dtype)
    backend, _ = choose_backend(input.device, rois_require_grad=rois.requires_grad)
    if backend == "native":
        return RoIAlignFunction.apply(input, rois, output_size, float(spatial_scale),
                                      int(sampling_ratio), bool(aligned))
    if input.dtype in _HALF_DTYPES:
        output = reference(input.float(), rois.float(), output_size, spatial_scale,
                           sampling_ratio, aligned)
        return output.to(input.dtype)
    return reference(input, rois, output_size, spatial_scale, sampling_ratio, aligned)


def nms(
    boxes: Tensor, scores: Tensor, iou_threshold: float, *, reference: Callable[..., Tensor]
) -> Tensor:
    """Greedy NMS through the native kernel when :func:`choose_backend` allows, else ``reference``.

    boxes (N, 4) ``[x1, y1, x2, y2]``, scores (N,) of any float dtype; returns the int64 indices of
    the kept boxes in decreasing score order (ties in input order). float16 / bfloat16 inputs (and
    any input under autocast) are compared in float32.
    """
    if _autocast_on(boxes.device.type):
        with torch.autocast(device_type=boxes.device.type, enabled=False):
            return nms(boxes.float(), scores, iou_threshold, reference=reference)
    if boxes.dtype in _HALF_DTYPES:
        boxes = boxes.float()  # scores are only sorted: any dtype will do
    backend, _ = choose_backend(boxes.device)
    if backend == "native":
        return _C.nms(boxes, scores, float(iou_threshold))
    return reference(boxes, scores, iou_threshold)

"""``python -m maskrcnn.doctor``: what this installation can run, and why.

Prints the torch version, whether CUDA is usable, whether the native ROIAlign / NMS extension was
built and for which devices (with the outcome of the last ``setup.py`` build), the
``MASKRCNN_NATIVE`` switch, and for every op and device the backend that runs and the reason.
Then, for every device where the native kernels run, a smoke test compares them with the
pure-PyTorch references on a small input. Example (a CPU machine, default install)::

    torch              2.13.0+cpu (compiled without CUDA)
    CUDA               not available
    native extension   built: C++ CPU kernels only (_C.cpython-311-x86_64-linux-gnu.so)
    last build         built, cpu variant, 18.5 s, for torch 2.13.0+cpu, cuda: CPU-only: torch 2.13.0+cpu was built without CUDA, openmp: OpenMP (-fopenmp), as torch's build
    MASKRCNN_NATIVE    unset (native kernels allowed)
    op         device  backend    why
    roi_align  cpu     native     C++ CPU kernel
    nms        cpu     native     C++ CPU kernel
    roi_align  cuda    -          no CUDA device
    nms        cuda    -          no CUDA device
    smoke test cpu     native vs reference: ok (roi_align fwd+bwd max difference 2e-16, nms ...)

On a machine where CUDA is available but the extension was built with CPU kernels only (a CUDA
build that failed, or no toolkit at install time), a ``WARNING`` line after "last build" says so
and why; importing ``maskrcnn.ops`` warns once about it too.

The exit status is 1 when a smoke test fails, else 0.
"""
from __future__ import annotations

import os
import sys

import torch

from maskrcnn.ops import _native

OPS = ("roi_align", "nms")


def _cuda_line() -> str:
    if not torch.cuda.is_available():
        return "not available"
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return f"available: {len(names)} device(s): {', '.join(names)}"


def _build_line() -> str:
    record = _native.BUILD_RECORD
    if record is None:
        return "no record (setup.py has not built it here)"
    parts = [record.get("status", "?")]
    if "variant" in record:
        parts.append(f"{record['variant']} variant")
    if "build_seconds" in record:
        parts.append(f"{record['build_seconds']} s")
    if "torch" in record:
        parts.append(f"for torch {record['torch']}")
    if record.get("reason"):
        parts.append(record["reason"])
    parts.extend(record.get("notes", []))
    for key in ("cuda", "openmp"):  # what became of the CUDA kernels, and the CPU kernels' threads
        if record.get(key):
            parts.append(f"{key}: {record[key]}")
    return ", ".join(parts)


def _switch_line() -> str:
    value = os.environ.get(_native.ENV_SWITCH)
    if value is None:
        return "unset (native kernels allowed)"
    allowed = "native kernels allowed" if _native.native_enabled_by_env() else "reference forced"
    return f"{value!r} ({allowed})"


def backend_table() -> list[tuple[str, str, str, str]]:
    """(op, device, backend, why) for every op on the CPU and on CUDA."""
    rows = []
    for device in ("cpu", "cuda"):
        for op in OPS:
            if device == "cuda" and not torch.cuda.is_available():
                rows.append((op, device, "-", "no CUDA device"))
            else:
                backend, why = _native.choose_backend(device)
                rows.append((op, device, backend, why))
    return rows


def smoke_test(device: str) -> str:
    """Runs native and reference ROIAlign (forward and backward) and NMS on a small input on
    ``device``; returns "ok ..." or "FAILED ..." (never raises)."""
    try:
        from maskrcnn.ops.nms import nms_reference
        from maskrcnn.ops.roi_align import roi_align_reference
    except ImportError as error:
        return f"skipped: the references do not import ({error})"
    try:
        generator = torch.Generator().manual_seed(0)
        features = torch.rand(2, 3, 12, 16, generator=generator, dtype=torch.float64)
        corners = torch.rand(6, 4, generator=generator, dtype=torch.float64) * 40
        rois = torch.cat([torch.tensor([[0.0], [1.0]] * 3, dtype=torch.float64),
                          corners[:, :2], corners[:, :2] + corners[:, 2:]], dim=1)
        features, rois = features.to(device), rois.to(device)
        results = []
        for name, run in (("native", _native.RoIAlignFunction.apply), ("reference", roi_align_reference)):
            x = features.clone().requires_grad_()
            out = run(x, rois, (3, 3), 0.5, 2, True)
            out.sum().backward()
            results.append((out.detach(), x.grad))
        diff = max((a - b).abs().max().item() for a, b in zip(*results))
        boxes, scores = rois[:, 1:], torch.rand(6, generator=generator, dtype=torch.float64).to(device)
        same_nms = torch.equal(_native._C.nms(boxes, scores, 0.3), nms_reference(boxes, scores, 0.3))
    except Exception as error:  # the point of a doctor: report, do not crash
        return f"FAILED: {type(error).__name__}: {error}"
    if diff > 1e-10 or not same_nms:
        return f"FAILED: roi_align max difference {diff:.3g}, nms indices equal: {same_nms}"
    return f"ok (roi_align fwd+bwd max difference {diff:.1g}, nms indices equal)"


def report() -> tuple[str, bool]:
    """The report's text, and whether every smoke test passed."""
    lines = [
        f"{'torch':<18} {torch.__version__} "
        f"({'CUDA ' + torch.version.cuda if torch.version.cuda else 'compiled without CUDA'})",
        f"{'CUDA':<18} {_cuda_line()}",
        f"{'native extension':<18} {_native.extension_status()}",
        f"{'last build':<18} {_build_line()}",
    ]
    warning = _native.cuda_kernels_warning()
    if warning is not None:  # a GPU the native kernels cannot use
        lines.append(f"{'WARNING':<18} {warning.removeprefix('maskrcnn: ')}")
    lines += [
        f"{_native.ENV_SWITCH:<18} {_switch_line()}",
        f"{'op':<10} {'device':<7} {'backend':<10} why",
    ]
    lines += [f"{op:<10} {device:<7} {backend:<10} {why}" for op, device, backend, why in backend_table()]
    healthy = True
    for device in _native.native_devices():
        if device == "cuda" and not torch.cuda.is_available():
            continue
        result = smoke_test(device)
        healthy = healthy and not result.startswith("FAILED")
        lines.append(f"{'smoke test ' + device:<18} native vs reference: {result}")
    return "\n".join(lines), healthy


def main() -> int:
    text, healthy = report()
    print(text)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())

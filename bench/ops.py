"""Native kernels vs pure-PyTorch references: ROIAlign forward+backward and NMS, time and peak memory.

    python bench/ops.py                      # CPU, and CUDA when present
    python bench/ops.py --devices cpu --repeats 7 --threads 2

ROIAlign is measured as Mask R-CNN uses it: 512 or 1000 ROIs from one 800x1216 image, spread over
the four FPN levels P2-P5 (strides 4, 8, 16, 32; 256 channels) by the paper's level rule
``floor(4 + log2(sqrt(area) / 224))`` clamped to [2, 5], pooled to 7x7 (box head) or 14x14 (mask
head) with sampling ratio 2 and aligned=False; one call per level, then ``backward`` from a
random output gradient. NMS is measured on 2k, 5k and 20k boxes of RPN-like sizes in the same
image at IoU threshold 0.7.

Time: the median of ``--repeats`` runs after one warm-up run (3 runs for steps slower than 5 s),
the reference and the native step taking turns so that other processes' load hits both alike.
Peak memory: what the operation added at its peak over what was allocated before it (CPU: the
peak resident set size, reset through /proc/self/clear_refs, of a fresh process in which glibc
returns freed blocks at once; Linux only. CUDA: torch's peak allocated bytes). The native
kernels run whatever MASKRCNN_NATIVE says; nothing here is asserted: this is a measurement.
Results go to docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import gc
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from maskrcnn.ops import _native
from maskrcnn.ops.nms import nms_reference
from maskrcnn.ops.roi_align import roi_align_reference

IMAGE_H, IMAGE_W = 800, 1216
STRIDES = (4, 8, 16, 32)  # P2..P5
CHANNELS = 256


# --- workloads ---------------------------------------------------------------------------------------

def random_boxes(n: int, generator: torch.Generator) -> torch.Tensor:
    """(n, 4) boxes in the image: sqrt(area) log-uniform in [16, 800], aspect ratio in [1/2, 2]."""
    side = torch.exp(torch.empty(n).uniform_(math.log(16), math.log(800), generator=generator))
    ratio = torch.exp(torch.empty(n).uniform_(math.log(0.5), math.log(2.0), generator=generator))
    w, h = side * ratio.sqrt(), side / ratio.sqrt()
    x1 = torch.rand(n, generator=generator) * (IMAGE_W - w).clamp(min=1)
    y1 = torch.rand(n, generator=generator) * (IMAGE_H - h).clamp(min=1)
    return torch.stack([x1, y1, x1 + w, y1 + h], dim=1)


def fpn_level(boxes: torch.Tensor) -> torch.Tensor:
    """Index 0..3 of the level (P2..P5) each box is pooled from (Mask R-CNN's FPN paper, eq. 1)."""
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    level = torch.floor(4 + torch.log2(area.sqrt() / 224) + 1e-6).clamp(2, 5)
    return level.long() - 2


def roi_align_workload(num_rois: int, size: int, device: str) -> Callable[[Callable], Callable]:
    """Builds the inputs once; returns `make(run)` -> a no-argument callable doing fwd + bwd."""
    generator = torch.Generator().manual_seed(num_rois + size)
    features = [torch.randn(1, CHANNELS, IMAGE_H // s, IMAGE_W // s, generator=generator).to(device)
                for s in STRIDES]
    boxes = random_boxes(num_rois, generator)
    levels = fpn_level(boxes)
    rois = torch.cat([torch.zeros(num_rois, 1), boxes], dim=1).to(device)  # (K, 5), all image 0
    per_level = [rois[(levels == i).to(device)] for i in range(len(STRIDES))]
    grads = [torch.randn(len(r), CHANNELS, size, size, generator=generator).to(device)
             for r in per_level]

    def make(run):
        def step():
            inputs = [f.detach().requires_grad_() for f in features]
            outputs = [run(x, r, (size, size), 1.0 / s, 2, False)
                       for x, r, s in zip(inputs, per_level, STRIDES)]
            torch.autograd.backward(outputs, grads)
        return step

    return make


def nms_workload(n: int, device: str) -> Callable[[Callable], Callable]:
    generator = torch.Generator().manual_seed(n)
    boxes = random_boxes(n, generator).to(device)
    scores = torch.rand(n, generator=generator).to(device)
    return lambda run: (lambda: run(boxes, scores, 0.7))


# --- measuring -----------------------------------------------------------------------------------------

def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def median_seconds(steps: dict[str, Callable[[], object]], device: str,
                   repeats: int) -> dict[str, float]:
    """Median wall time of each step. The steps take turns (reference, native, reference, ...),
    so that load from other processes on a shared machine falls on both alike. Steps slower
    than 5 s get 3 timed runs."""
    first = {}
    for label, step in steps.items():  # warm-up, also a first estimate
        start = time.perf_counter()
        step()
        synchronize(device)
        first[label] = time.perf_counter() - start
    runs = 3 if max(first.values()) > 5.0 else repeats
    times = {label: [] for label in steps}
    for _ in range(runs):
        for label, step in steps.items():
            start = time.perf_counter()
            step()
            synchronize(device)
            times[label].append(time.perf_counter() - start)
    return {label: statistics.median(values) for label, values in times.items()}


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def peak_mib(step: Callable[[], object], device: str) -> Optional[float]:
    """Memory the step added at its peak, in MiB; None where it cannot be measured."""
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    try:
        before = _status_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (peak RSS) to the current RSS
        step()
        return (_status_kib("VmHWM") - before) / 1024
    except OSError:
        return None


def native_roi_align(input, rois, output_size, spatial_scale, sampling_ratio, aligned):
    return _native.RoIAlignFunction.apply(input, rois, output_size, spatial_scale, sampling_ratio,
                                          aligned)


def native_nms(boxes, scores, iou_threshold):
    return _native._C.nms(boxes, scores, iou_threshold)


def cases(device: str) -> list[tuple[str, Callable[[], Callable], dict[str, Callable]]]:
    """(name, workload builder, {backend: op}) for every measured case; workloads built lazily."""
    backends_roi_align = {"reference": roi_align_reference, "native": native_roi_align}
    backends_nms = {"reference": nms_reference, "native": native_nms}
    table = [(f"ROIAlign fwd+bwd, {k} ROIs, {s}x{s}",
              lambda k=k, s=s: roi_align_workload(k, s, device), backends_roi_align)
             for k in (512, 1000) for s in (7, 14)]
    table += [(f"NMS, {n} boxes", lambda n=n: nms_workload(n, device), backends_nms)
              for n in (2000, 5000, 20000)]
    return table


def peak_in_fresh_process(index: int, backend: str, device: str) -> Optional[float]:
    """CPU peak memory of one case, measured in a new process (see child_peak)."""
    # glibc keeps freed blocks for reuse, so the RSS would miss peaks in a process that has run
    # other cases; with a fixed mmap threshold every large block goes back to the OS when freed
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(64 * 1024)}
    result = subprocess.run([sys.executable, __file__, "--peak-of", str(index), backend, device],
                            capture_output=True, text=True, env=env)
    try:
        return float(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        print(f"peak memory of case {index} ({backend}) not measured: {result.stderr[-500:]}")
        return None


def child_peak(index: int, backend: str, device: str) -> None:
    name, build, backends = cases(device)[index]
    step = build()(backends[backend])
    step()  # warm-up: lazy initialisations are not part of the op's footprint
    value = peak_mib(step, device)
    print("nan" if value is None else value)


def measure(device: str, repeats: int) -> list[dict]:
    rows = []
    for index, (name, build, backends) in enumerate(cases(device)):
        row = {"device": device, "case": name}
        make = build()
        steps = {label: make(run) for label, run in backends.items()}
        for label, seconds in median_seconds(steps, device, repeats).items():
            row[f"{label}_s"] = seconds
            row[f"{label}_mib"] = (peak_mib(steps[label], device) if device == "cuda"
                                   else peak_in_fresh_process(index, label, device))
        row["speedup"] = row["reference_s"] / row["native_s"]
        rows.append(row)
        print(format_row(row), flush=True)
    return rows


# --- reporting -----------------------------------------------------------------------------------------

def machine_description(devices: list[str]) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    parts = [f"CPU: {cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
             f"load average {os.getloadavg()[0]:.1f} at start",
             f"torch {torch.__version__}", f"native extension {_native.extension_status()}"]
    if "cuda" in devices:
        parts.insert(1, f"GPU: {torch.cuda.get_device_name(0)}")
    return "; ".join(parts)


def _mib(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.0f}"


HEADER = ("| device | case | reference ms | native ms | speed-up | reference peak MiB | "
          "native peak MiB |\n|---|---|---:|---:|---:|---:|---:|")


def format_row(row: dict) -> str:
    return (f"| {row['device']} | {row['case']} | {row['reference_s'] * 1e3:.1f} | "
            f"{row['native_s'] * 1e3:.1f} | {row['speedup']:.1f}x | {_mib(row['reference_mib'])} | "
            f"{_mib(row['native_mib'])} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", nargs="+", default=None,
                        help="cpu and/or cuda (default: cpu, plus cuda when available)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--peak-of", nargs=3, metavar=("CASE", "BACKEND", "DEVICE"),
                        help=argparse.SUPPRESS)  # internal: one memory measurement
    args = parser.parse_args()
    if args.peak_of:
        return child_peak(int(args.peak_of[0]), args.peak_of[1], args.peak_of[2])
    if _native._C is None:
        raise SystemExit(f"the native extension is {_native.extension_status()}")
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    for device in devices:
        if device not in _native.native_devices():
            raise SystemExit(f"--devices {device}: the extension has no {device} kernels")
    print(machine_description(devices))
    print(HEADER)
    for device in devices:
        measure(device, args.repeats)


if __name__ == "__main__":
    main()

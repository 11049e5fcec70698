"""Mask R-CNN R50-FPN at 800x1216: inference and training-step time and peak memory, reference vs native ops.

    python bench/model.py                                   # CPU (and CUDA when present), both op backends
    python bench/model.py --devices cpu --runs 3 --threads 2 --modes inference train

For every (device, ops backend, mode) the measurement runs in a fresh Python process, so that one
measurement's peak memory cannot hide another's:

- **model**: the default config (torchvision's ``maskrcnn_resnet50_fpn`` v1 settings, 13 classes), randomly
  initialized with a fixed seed; ResNet stages 1-2 frozen as in training;
- **input**: one 800x1216 image (already the default size and a multiple of 32, so the transform neither
  resizes nor pads); for training, 6 objects (boxes with full-image masks);
- **inference**: ``model([image])`` in eval mode under ``torch.no_grad`` (RPN 1000 proposals, 100 detections
  at the defaults' score threshold 0.05, masks pasted into the 800x1216 frame);
- **train**: one SGD step: forward with targets, the sum of the five losses, ``backward``, ``step``;
- **ops backend**: ``reference`` runs with ``MASKRCNN_NATIVE=0`` (pure-PyTorch ROIAlign and NMS); ``native``
  with the compiled kernels (skipped, and said so, when the extension is not built);
- **time**: wall clock per call, the median of ``--runs`` calls after one warm-up call, and the process CPU
  time per call (summed over threads; less sensitive to other load on a shared machine);
- **peak memory**: CPU -- the process's peak resident set size (``ru_maxrss``) at the end minus the one after
  building the model and input; CUDA -- ``torch.cuda.max_memory_allocated`` over the timed calls.

It prints a Markdown table (the one in ``docs/benchmarks.md``, section "Model"). Nothing is asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Dict, List

HEIGHT, WIDTH = 800, 1216
NUM_OBJECTS = 6


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def synthetic_targets(generator, device) -> dict:
    """``NUM_OBJECTS`` boxes of 100-500 pixels inside the image, their labels, and filled-box masks."""
    import torch

    sizes = torch.randint(100, 500, (NUM_OBJECTS, 2), generator=generator)
    x1 = (torch.rand(NUM_OBJECTS, generator=generator) * (WIDTH - sizes[:, 0])).floor()
    y1 = (torch.rand(NUM_OBJECTS, generator=generator) * (HEIGHT - sizes[:, 1])).floor()
    boxes = torch.stack([x1, y1, x1 + sizes[:, 0], y1 + sizes[:, 1]], dim=1)
    masks = torch.zeros((NUM_OBJECTS, HEIGHT, WIDTH), dtype=torch.uint8)
    for mask, (a, b, c, d) in zip(masks, boxes.long().tolist()):
        mask[b:d, a:c] = 1
    labels = torch.randint(1, 14, (NUM_OBJECTS,), generator=generator)
    return {"boxes": boxes.to(device), "labels": labels.to(device), "masks": masks.to(device)}


def measure(device_name: str, mode: str, runs: int, threads: int) -> Dict:
    """One measurement in this process (the environment already chose the ops backend)."""
    import torch

    from maskrcnn.config import load_config
    from maskrcnn.modeling import build_model
    from maskrcnn.ops import _native

    if threads:
        torch.set_num_threads(threads)
    device = torch.device(device_name)
    backend, why = _native.choose_backend(device)
    torch.manual_seed(0)
    model = build_model(load_config(), load_weights=False).to(device)
    generator = torch.Generator().manual_seed(1)
    image = torch.rand(3, HEIGHT, WIDTH, generator=generator).to(device)
    targets = [synthetic_targets(generator, device)]
    if mode == "train":
        model.train()
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(trainable, lr=0.001, momentum=0.9)

        def call():
            losses = model([image], targets)
            optimizer.zero_grad(set_to_none=True)
            sum(losses.values()).backward()
            optimizer.step()
    else:
        model.eval()

        def call():
            with torch.no_grad():
                model([image])

    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    baseline_rss = peak_rss_bytes()
    start = time.perf_counter()
    call()  # warm-up
    synchronize()
    warmup = time.perf_counter() - start
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    wall, cpu = [], []
    for _ in range(runs):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        call()
        synchronize()
        wall.append(time.perf_counter() - start_wall)
        cpu.append(time.process_time() - start_cpu)
    peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
            else peak_rss_bytes() - baseline_rss)
    return {"device": device_name, "mode": mode, "backend": backend, "backend_reason": why,
            "warmup_s": warmup, "median_s": statistics.median(wall), "cpu_s": statistics.median(cpu),
            "runs": runs, "peak_bytes": peak, "threads": torch.get_num_threads(),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()}


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_child(device: str, mode: str, backend: str, runs: int, threads: int) -> Dict:
    """Measure in a fresh process with ``MASKRCNN_NATIVE`` set for ``backend``; returns its JSON record."""
    env = dict(os.environ, MASKRCNN_NATIVE="0" if backend == "reference" else "1")
    command = [sys.executable, os.path.abspath(__file__), "--child", device, mode, "--runs", str(runs),
               "--threads", str(threads)]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        return {"device": device, "mode": mode, "backend": backend, "error": done.stderr.strip().splitlines()[-1:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(records: List[Dict]) -> str:
    lines = ["| device | mode | ops | time per call (median) | CPU time per call | first call | peak memory |",
             "|---|---|---|---|---|---|---|"]
    for r in records:
        if "error" in r:
            lines.append(f"| {r['device']} | {r['mode']} | {r['backend']} | failed: {r['error']} | | | |")
            continue
        cpu = f"{r['cpu_s']:.2f} s" if r["device"] == "cpu" else "-"
        lines.append(f"| {r['device']} | {r['mode']} | {r['backend']} | {r['median_s']:.2f} s | {cpu} | "
                     f"{r['warmup_s']:.2f} s | {r['peak_bytes'] / 2 ** 30:.2f} GiB |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", nargs="+", default=None,
                        help="cpu and/or cuda (default: cpu, plus cuda if present)")
    parser.add_argument("--modes", nargs="+", default=["inference", "train"], choices=["inference", "train"])
    parser.add_argument("--backends", nargs="+", default=["reference", "native"], choices=["reference", "native"])
    parser.add_argument("--runs", type=int, default=3, help="timed calls after the warm-up call (default 3)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's choice)")
    parser.add_argument("--child", nargs=2, metavar=("DEVICE", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], args.child[1], args.runs, args.threads)))
        return

    import torch

    from maskrcnn.ops import _native

    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    print(f"torch {torch.__version__}, {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}; "
          f"native extension: {_native.extension_status()}", flush=True)
    records = []
    for device in devices:
        for mode in args.modes:
            for backend in args.backends:
                if backend == "native" and device not in _native.native_devices():
                    print(f"{device} {mode} native: skipped, {_native.extension_status()}", flush=True)
                    continue
                record = run_child(device, mode, backend, args.runs, args.threads)
                records.append(record)
                print(json.dumps(record), flush=True)
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}\n")
    print(table(records))


if __name__ == "__main__":
    main()

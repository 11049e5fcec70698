"""CPU inference cost of the full Mask R-CNN ResNet-50-FPN on one 800x1216 image: time and peak memory.

    python bench/model_forward.py                       # default config, randomly initialized weights
    python bench/model_forward.py --weights w.pt --runs 5 --threads 2

An 800x1216 image is already at the default size (short side 800, long side <= 1333) and a multiple of 32, so
the transform neither resizes nor pads it: the numbers are those of the network itself. Time is wall clock
per forward pass (``torch.no_grad``, eval mode), the first (warm-up) run reported separately, together with
the process's CPU time (summed over threads), which depends less on other load on the machine. Memory is the
process's peak resident set size (``ru_maxrss``) before and after the forward passes; the difference is
what inference added on top of the loaded model. Nothing here is asserted: this is a measurement.
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import time

import torch

from maskrcnn.config import load_config
from maskrcnn.modeling import build_model


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1216)
    parser.add_argument("--runs", type=int, default=3, help="timed runs after the warm-up run")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--weights", default="", help="optional weights file (ours, torchvision or ImageNet)")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    overrides = [f"model.weights={args.weights}"] if args.weights else []
    model = build_model(load_config(overrides=overrides)).eval()
    image = torch.rand(3, args.height, args.width, generator=torch.Generator().manual_seed(0))
    rss_model = peak_rss_mib()

    times, cpu_times = [], []
    with torch.no_grad():
        for _ in range(args.runs + 1):
            start, cpu_start = time.perf_counter(), time.process_time()
            (detections,) = model([image])
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    rss_peak = peak_rss_mib()

    params = sum(p.numel() for p in model.parameters())
    print(f"Mask R-CNN R50-FPN forward, image {args.height}x{args.width}, CPU "
          f"({platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads)")
    print(f"parameters: {params / 1e6:.1f} M; detections in the last run: {detections['boxes'].shape[0]}")
    print(f"first run (warm-up): {times[0]:.2f} s")
    if args.runs:
        print(f"timed runs: median {statistics.median(times[1:]):.2f} s, min {min(times[1:]):.2f} s "
              f"over {args.runs} runs; CPU time per run (all threads) median "
              f"{statistics.median(cpu_times[1:]):.2f} s")
    print(f"load average during the run: {os.getloadavg()[0]:.1f} (wall times grow when other processes "
          "share the cores; CPU time much less so)")
    print(f"peak RSS: {rss_model:.0f} MiB after building the model, {rss_peak:.0f} MiB after the forward passes "
          f"(+{rss_peak - rss_model:.0f} MiB)")


if __name__ == "__main__":
    main()

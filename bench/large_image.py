"""A 6000x6000 JPEG through the predictor: decoding time, whole-prediction time and peak memory, before and after
decoding at a reduced size (``maskrcnn/inference/images.py``).

    python bench/large_image.py                        # both models, the three decoding variants
    python bench/large_image.py --side 4000 --models demo

Decoding variants:

- ``before``: what ``decode_image`` did before: the whole image decoded into float32 by ``read_image``, then the
  float block mean that ``infer.max_decoded_side`` (4096) asks for (``reduce_image``: a factor 2 here);
- ``draft``: ``decode_image`` as the predictor calls it (``max_decoded_side`` only): the JPEG decoded at 1/2 by
  DCT scaling, uint8 until the reduced image;
- ``draft+model``: ``decode_image`` given the model's ``min_size`` / ``max_size`` too, so that it also takes the
  reduction the model's resize makes free (1/8 by DCT scaling for R50-FPN's 800-pixel input).

Models (random weights with a fixed seed: no trained checkpoint is needed to measure cost): ``demo``,
``configs/synthetic_demo.yaml`` (ResNet-18, 64-channel FPN, 128-pixel input, up to 20 detections), and
``r50``, the default config (R50-FPN, 800/1333, up to 100 detections). The score threshold is 0, so every
prediction has the model's maximum number of detections, each pasted and run-length encoded at 6000x6000 (the
predictor's part, ``maskrcnn/inference/predictor.py``). Each (model, variant) runs in a fresh process, one
thread; memory is the growth of the peak resident set over the loaded predictor (``/proc/self/clear_refs``).
Nothing is asserted: this is a measurement (``docs/benchmarks.md``).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = ("before", "draft", "draft+model")
CONFIGS = {"demo": "configs/synthetic_demo.yaml", "r50": None}
REPO = Path(__file__).resolve().parents[1]


def make_photo(path: str, side: int) -> None:
    """A ``side x side`` JPEG of smooth colour waves and a few rectangles (about what a photo compresses to)."""
    import numpy as np
    from PIL import Image

    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / (side / 600)
    rgb = np.stack([127 + 110 * np.sin(xx / (9 + 5 * c) + yy / (13 + 3 * c)) for c in range(3)], axis=2)
    for k in range(5):
        a, b = (k + 1) * side // 8, (k + 2) * side // 8
        rgb[a:b, a // 2:b // 2 + side // 4] = (40 * k, 200 - 30 * k, 90)
    Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).save(path, quality=90)


def make_checkpoint(path: str, model: str) -> None:
    import torch

    from maskrcnn.config import load_config
    from maskrcnn.modeling import build_model

    config = CONFIGS[model]
    cfg = load_config(str(REPO / config) if config else None)
    torch.manual_seed(0)
    network = build_model(cfg, load_weights=False)
    names = [f"class_{k}" for k in range(1, cfg.model.num_classes + 1)]
    torch.save({"model": network.state_dict(), "config": cfg.to_dict(), "class_names": names}, path)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def child(photo: str, checkpoint: str, variant: str) -> None:
    """One measurement in this (fresh) process; prints a JSON record."""
    import torch

    from maskrcnn.data import read_image
    from maskrcnn.inference.images import DecodedImage, decode_image, reduce_image, reduction_factor
    from maskrcnn.inference.predictor import Predictor

    torch.set_num_threads(1)
    predictor = Predictor(checkpoint, device="cpu", score_thresh=0.0)
    sizes = predictor.cfg.input

    def decode():
        if variant == "before":
            image = read_image(photo)
            height, width = int(image.shape[1]), int(image.shape[2])
            factor = reduction_factor(height, width, predictor.max_decoded_side)
            return DecodedImage(reduce_image(image, factor), height, width, factor)
        extra = {"min_size": sizes.min_size, "max_size": sizes.max_size} if variant == "draft+model" else {}
        return decode_image(photo, predictor.max_image_pixels, predictor.max_decoded_side, **extra)

    before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # peak resident set := the current one
    cpu, wall = time.process_time(), time.perf_counter()
    decoded = decode()
    decode_cpu, decode_wall = time.process_time() - cpu, time.perf_counter() - wall
    instances = predictor.predict_decoded([decoded])[0]
    total_cpu, total_wall = time.process_time() - cpu, time.perf_counter() - wall
    print(json.dumps({"variant": variant, "reduction": decoded.reduction, "decoded": list(decoded.image.shape[1:]),
                      "detections": len(instances), "decode_cpu_s": decode_cpu, "decode_wall_s": decode_wall,
                      "total_cpu_s": total_cpu, "total_wall_s": total_wall,
                      "peak_growth_mib": (_status_kib("VmHWM") - before) / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--side", type=int, default=6000)
    parser.add_argument("--models", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--child", nargs=3, metavar=("PHOTO", "CHECKPOINT", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)
    print(f"{time.strftime('%Y-%m-%d %H:%M %Z')}; load average {os.getloadavg()}", flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": str(64 * 1024)}
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        photo = os.path.join(folder, "photo.jpg")
        make_photo(photo, args.side)
        print(f"{args.side}x{args.side} JPEG, {os.path.getsize(photo) / 2 ** 20:.1f} MiB", flush=True)
        for model in args.models:
            checkpoint = os.path.join(folder, f"{model}.pth")
            make_checkpoint(checkpoint, model)
            for variant in args.variants:
                done = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", photo, checkpoint,
                                       variant], capture_output=True, text=True, env=env)
                if done.returncode != 0:
                    raise SystemExit(f"{model} {variant} failed: {done.stderr[-800:]}")
                row = {"model": model, **json.loads(done.stdout.strip().splitlines()[-1])}
                rows.append(row)
                print(json.dumps(row), flush=True)
    print(f"\nload average at the end {os.getloadavg()}\n")
    print("| model | decoding | decoded size (factor) | detections | decode CPU | prediction CPU (wall) | "
          "peak growth |\n|---|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['variant']} | {r['decoded'][0]}x{r['decoded'][1]} ({r['reduction']}) | "
              f"{r['detections']} | {r['decode_cpu_s']:.2f} s | {r['total_cpu_s']:.1f} s ({r['total_wall_s']:.1f} s) | "
              f"{r['peak_growth_mib']:.0f} MiB |")


if __name__ == "__main__":
    main()

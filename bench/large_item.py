"""Time and peak memory of one training item built from a large photo (issue: "large photos are cheap").

    python bench/large_item.py                  # both paths, each in a fresh process, 3 rounds interleaved
    python bench/large_item.py --rounds 5 --width 5214 --height 3676 --masks 30
    python bench/large_item.py --before-repo ../main   # also the checkout before this change

The photo: a ``width`` x ``height`` JPEG (smooth colour gradients plus noise, quality 90, like a camera
photo), with ``masks`` instances: two thirds polygons (ModaNet, Fashionpedia) and one third compressed
RLE (Fashionpedia, the converted iMaterialist CSV), each a garment-sized ellipse.

One measurement = one fresh Python process that builds the dataset, then times ``dataset[0]`` followed by
what the model's first stage does with it (``ImageTransform``: normalize, resize the image and its masks to
800 / 1333), and reports the wall time and the growth of the peak resident memory over the memory held
just before the item (``/proc/self/status`` VmHWM after resetting it through ``/proc/self/clear_refs``;
falls back to ``ru_maxrss``). Two paths:

- ``full``: every image at its own size (``FashionDataset(input_size=None)``, the path before this change);
- ``shrunk``: the training path, ``FashionDataset(input_size=(800, 1333))`` (``maskrcnn/data/shrink.py``);
- ``before`` (with ``--before-repo DIR``): the ``full`` path of another checkout, e.g. the commit before
  this change, whose decoder made two full-size float copies.

The two paths run alternately (full, shrunk, full, ...) so that load on a shared machine hits both alike;
the medians and the ratio are printed.

``--float64-scale`` measures under the resize rule computed in Python floats (torchvision's eager code).
The dataset shrinks a photo only when the model's resize of the shrunk image is an exact copy
(``shrink.shrunk_size``); under a float32 scale the 5214 x 3676 photo's short side comes out 799, which the
model would resize again, so that photo keeps the full-size path there.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_photo(folder: str, width: int, height: int, count: int, seed: int = 0) -> str:
    """Write the photo and a COCO JSON of ``count`` instances into ``folder``; return the JSON path."""
    from PIL import Image
    from pycocotools import mask as coco_mask

    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([xs / width * 200, ys / height * 200, (xs + ys) / (width + height) * 255], axis=2)
    rgb += rng.normal(0.0, 12.0, size=(height, width, 3)).astype(np.float32)
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(os.path.join(folder, "photo.jpg"), quality=90)
    del rgb, ys, xs
    annotations = []
    for k in range(count):
        cx, cy = rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height
        rx, ry = rng.uniform(0.05, 0.2) * width, rng.uniform(0.05, 0.2) * height
        angles = np.linspace(0.0, 2.0 * np.pi, 60, endpoint=False)
        polygon = np.stack([cx + rx * np.cos(angles), cy + ry * np.sin(angles)], axis=1).round(1).reshape(-1).tolist()
        segmentation = [polygon]
        if k % 3 == 2:  # a third as compressed RLE
            rle = coco_mask.merge(coco_mask.frPyObjects(segmentation, height, width))
            segmentation = {"size": [height, width], "counts": rle["counts"].decode("ascii")}
        box = [cx - rx, cy - ry, 2 * rx, 2 * ry]
        annotations.append({"id": k + 1, "image_id": 1, "category_id": 1 + k % 3, "bbox": box,
                            "segmentation": segmentation, "iscrowd": 0})
    data = {"images": [{"id": 1, "file_name": "photo.jpg", "height": height, "width": width}],
            "annotations": annotations,
            "categories": [{"id": 1, "name": "top"}, {"id": 2, "name": "skirt"}, {"id": 3, "name": "bag"}]}
    path = os.path.join(folder, "photo.json")
    with open(path, "w") as f:
        json.dump(data, f)
    return path


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def float64_resize_scale(self, height: int, width: int) -> float:
    """torchvision's eager rule in Python floats: ``min(min_size / short, max_size / long)``."""
    return min(self.min_size / min(height, width), self.max_size / max(height, width))


def measure(annotations: str, path: str, float64_scale: bool = False) -> dict:
    """Build the item once in this process; return seconds and peak memory growth in MiB."""
    import resource

    import torch

    from maskrcnn.data import load_dataset
    from maskrcnn.data.dataset import FashionDataset
    from maskrcnn.modeling.transform import ImageTransform

    if float64_scale:
        ImageTransform.resize_scale = float64_resize_scale

    torch.set_num_threads(1)
    records = load_dataset("coco", annotations, os.path.dirname(annotations))
    dataset = FashionDataset(records, input_size=(800, 1333)) if path == "shrunk" else FashionDataset(records)
    transform = ImageTransform(800, 1333, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    before = _status_kib("VmRSS")
    try:  # reset the peak (VmHWM) to the current RSS
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        peak_field = "VmHWM"
    except OSError:
        peak_field = None
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    image, target = dataset[0]
    batch, targets = transform([image], [target])
    seconds = time.perf_counter() - start
    peak = _status_kib(peak_field) if peak_field else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"path": path, "seconds": seconds, "peak_growth_mib": (peak - before) / 1024.0,
            "input": list(batch.image_sizes[0]), "instances": int(targets[0]["masks"].shape[0])}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=5214)
    parser.add_argument("--height", type=int, default=3676)
    parser.add_argument("--masks", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--before-repo", default="", help="another checkout to measure as 'before'")
    parser.add_argument("--float64-scale", action="store_true",
                        help="measure with the resize scale in Python floats (torchvision's eager rule)")
    parser.add_argument("--measure", nargs=2, metavar=("ANNOTATIONS", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(*args.measure, float64_scale=args.float64_scale)))
        return 0
    paths = {"full": REPO, "shrunk": REPO}
    if args.before_repo:
        paths = {"before": os.path.abspath(args.before_repo), **paths}
    results = {path: [] for path in paths}
    with tempfile.TemporaryDirectory() as folder:
        annotations = make_photo(folder, args.width, args.height, args.masks)
        for _ in range(args.rounds):
            for path, repo in paths.items():
                env = dict(os.environ, PYTHONPATH=repo, OMP_NUM_THREADS="1")
                command = [sys.executable, os.path.abspath(__file__), "--measure", annotations,
                           "full" if path == "before" else path] + (["--float64-scale"] if args.float64_scale else [])
                out = subprocess.run(command, env=env, cwd=repo,
                                     capture_output=True, text=True, check=True).stdout
                results[path].append(json.loads(out.strip().splitlines()[-1]))
    print(f"{args.width}x{args.height} photo, {args.masks} masks; load: {os.getloadavg()[0]:.2f} (1-min average)")
    medians = {}
    for path, runs in results.items():
        seconds = statistics.median(r["seconds"] for r in runs)
        memory = statistics.median(r["peak_growth_mib"] for r in runs)
        medians[path] = (seconds, memory)
        print(f"{path:7s} {seconds:6.2f} s  {memory:7.0f} MiB peak growth  model input {runs[0]['input']}  "
              f"instances {runs[0]['instances']}  (runs: {', '.join('%.2f' % r['seconds'] for r in runs)} s)")
    reference = "before" if "before" in medians else "full"
    print(f"ratio {reference}/shrunk: time {medians[reference][0] / medians['shrunk'][0]:.1f}x, "
          f"memory {medians[reference][1] / max(medians['shrunk'][1], 1e-9):.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

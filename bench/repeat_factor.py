"""Rare-class AP with and without repeat-factor sampling, on a synthetic set made imbalanced on purpose.

    python bench/repeat_factor.py                     # 2 runs of 600 iterations at 96 pixels (~10 min CPU)
    python bench/repeat_factor.py --iters 300 --threshold 0.3 --data /tmp/synth_rare --out /tmp/rare

The set: the synthetic generator's 1200 training images, of which only ``--keep`` images (default: 12 with a
headwear, 30 with a bag) keep the two rare classes; every other image containing one of them is left out (an
image is dropped whole, so no object goes unlabelled). The common six classes are each in roughly a quarter to
a third of the remaining images. The 200 validation images stay balanced, so the rare classes are scored on
as many objects as the others.

Both runs train ``configs/synthetic_demo.yaml`` from scratch with the same seed and schedule; the second sets
``dataloader.repeat_factor_threshold``. It prints the per-class repeat factors, then a Markdown table of box and
mask AP for each rare class and over all classes, and writes ``repeat_factor.json``. Short runs are noisy and a
class with 12 training images is hard either way: nothing is asserted.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from typing import Dict, List

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from maskrcnn.config import load_config  # noqa: E402
from maskrcnn.data.samplers import format_repeat_factors  # noqa: E402
from maskrcnn.data.synthetic import generate_synthetic_dataset  # noqa: E402
from maskrcnn.engine.trainer import train  # noqa: E402

DEMO_CONFIG = os.path.join(ROOT, "configs", "synthetic_demo.yaml")
RARE = {"headwear": 12, "bag": 30}  # rare class -> training images that keep it


def make_imbalanced(data_dir: str, keep: Dict[str, int]) -> str:
    """Write ``instances_train_rare.json`` beside the generated set; return its path."""
    if not os.path.exists(os.path.join(data_dir, "instances_val.json")):
        generate_synthetic_dataset(data_dir, num_train=1200, num_val=200, seed=0, image_size=128)
    with open(os.path.join(data_dir, "instances_train.json")) as f:
        data = json.load(f)
    name_of = {c["id"]: c["name"] for c in data["categories"]}
    classes_of: Dict[int, set] = {image["id"]: set() for image in data["images"]}
    for ann in data["annotations"]:
        classes_of[ann["image_id"]].add(name_of[ann["category_id"]])
    kept_images, budget = [], dict(keep)
    for image in data["images"]:  # in file order: deterministic
        rare = classes_of[image["id"]] & set(keep)
        if all(budget[name] > 0 for name in rare):
            kept_images.append(image)
            for name in rare:
                budget[name] -= 1
    ids = {image["id"] for image in kept_images}
    data["images"] = kept_images
    data["annotations"] = [ann for ann in data["annotations"] if ann["image_id"] in ids]
    path = os.path.join(data_dir, "instances_train_rare.json")
    with open(path, "w") as f:
        json.dump(data, f)
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iters", type=int, default=600)
    parser.add_argument("--size", type=int, default=96, help="input.min_size = input.max_size")
    parser.add_argument("--threshold", type=float, default=0.2, help="dataloader.repeat_factor_threshold")
    parser.add_argument("--arms", type=float, nargs="+", default=None,
                        help="thresholds to train (default: 0 and --threshold; one each to run arms in parallel)")
    parser.add_argument("--data", default="datasets/synthetic_rare")
    parser.add_argument("--out", default="output/repeat_factor")
    parser.add_argument("--seed", type=int, default=0, help="training seed (the data stay the same)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load = os.getloadavg()
    train_json = make_imbalanced(args.data, RARE)
    iters = args.iters
    base = [f"data.train_annotations={train_json}", f"data.train_images={args.data}/train",
            f"data.val_annotations={args.data}/instances_val.json", f"data.val_images={args.data}/val",
            f"solver.max_iter={iters}", f"solver.warmup_iters={max(1, iters // 10)}",
            f"solver.steps=[{iters * 3 // 4},{iters * 9 // 10}]", f"solver.checkpoint_period={iters}",
            f"input.min_size={args.size}", f"input.max_size={args.size}", "train.overlays=0",
            "train.tensorboard=false", "eval.pictures=false", "train.log_period=50", f"seed={args.seed}"]

    from maskrcnn.data import load_split
    cfg = load_config(DEMO_CONFIG, overrides=base)
    train_set = load_split(cfg, "train")
    table = format_repeat_factors(train_set.records, train_set.class_names, args.threshold)
    print(table, flush=True)

    results = []
    for threshold in (args.arms if args.arms is not None else (0.0, args.threshold)):
        name = f"t_{threshold:g}"
        cfg = load_config(DEMO_CONFIG, overrides=base + [f"output_dir={os.path.join(args.out, name)}",
                                                         f"dataloader.repeat_factor_threshold={threshold}"])
        cpu = time.process_time()
        report = train(cfg)["eval"]
        row = {"threshold": threshold, "cpu_s": time.process_time() - cpu}
        for iou_type, short in (("bbox", "box"), ("segm", "mask")):
            row[f"{short}_AP"] = report[iou_type]["AP"]
            for entry in report[iou_type]["per_class"]:
                row[f"{short}_AP_{entry['name']}"] = entry["AP"]
                row[f"{short}_AP50_{entry['name']}"] = entry["AP50"]
        results.append(row)

    columns: List[str] = []
    for name in RARE:
        columns += [f"box_AP_{name}", f"mask_AP_{name}", f"mask_AP50_{name}"]
    columns += ["box_AP", "mask_AP"]
    lines = ["| repeat_factor_threshold | " + " | ".join(c.replace("_", " ") for c in columns) + " | CPU s |",
             "|---" * (len(columns) + 2) + "|"]
    for row in results:
        cells = " | ".join("n/a" if row[c] is None else f"{row[c]:.3f}" for c in columns)
        lines.append(f"| {row['threshold']:g} | {cells} | {row['cpu_s']:.0f} |")
    command = "python bench/repeat_factor.py " + " ".join(argv if argv is not None else sys.argv[1:])
    with open(os.path.join(args.out, "repeat_factor.json"), "w") as f:
        json.dump({"command": command, "started": started, "load_average_at_start": load,
                   "load_average_at_end": os.getloadavg(), "repeat_factor_table": table, "results": results}, f,
                  indent=1)
    print(f"\n{command}  ({started}, load average {load[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end, "
          f"{args.threads} thread(s), {len(train_set)} training images)")
    print(table)
    print("\n".join(lines))


if __name__ == "__main__":
    main()

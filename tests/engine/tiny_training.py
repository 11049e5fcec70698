"""Shared set-up of the training tests: the demo config shrunk to a few-second model, tiny datasets, subprocess runs.

Not a test module (pytest collects ``test_*.py`` only). The tiny config is ``configs/synthetic_demo.yaml``
(the demo's ResNet-18 FPN model) at 64-pixel images with narrow heads, logging every iteration.
"""
import json
import os
import subprocess
import sys

import numpy as np
import yaml
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO_CONFIG = os.path.join(REPO, "configs", "synthetic_demo.yaml")
TRAIN_PY = os.path.join(REPO, "train.py")

TINY = {
    "input": {"min_size": 64, "max_size": 64},
    "model": {
        "backbone": {"fpn_channels": 16},
        "rpn": {"pre_nms_top_n_train": 200, "post_nms_top_n_train": 50, "pre_nms_top_n_test": 100,
                "post_nms_top_n_test": 20},
        "roi_heads": {"box_hidden_dim": 32, "mask_conv_dims": [16], "batch_size_per_image": 32,
                      "detections_per_img": 10},
    },
    "solver": {"ims_per_batch": 2, "base_lr": 0.01, "warmup_iters": 2, "steps": [1000], "checkpoint_period": 2},
    "eval": {"period": 0, "pictures": False},
    "train": {"log_period": 1, "overlays": 0},
    "dataloader": {"num_workers": 0},
}

# Sampling that draws no random numbers and normalizes every loss by the same count on every image (all
# images the same size with the same number of objects): every anchor is labelled (no ignored band) and
# sampled, and the ROI heads see exactly the ground-truth boxes (no proposals). Under these settings a
# W-process run is mathematically the same computation as one process over the global batch.
DETERMINISTIC_SAMPLING = {
    "model": {
        "rpn": {"fg_iou_thresh": 0.5, "bg_iou_thresh": 0.5, "batch_size_per_image": 10**7, "post_nms_top_n_train": 0},
        "roi_heads": {"batch_size_per_image": 10**7},
    },
}

# One thread per process: the result then does not depend on how many cores the machine lends, and
# processes sharing two cores do not fight over them.
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def merge(base: dict, extra: dict) -> dict:
    """``base`` updated by ``extra``, section by section."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def write_config(folder, data: dict, **sections) -> str:
    """Write ``{folder}/tiny.yaml``: the demo config, ``TINY``, the data paths and ``sections``; return its path."""
    settings = merge(merge(TINY, {"data": data}), sections)
    settings = {"_base_": DEMO_CONFIG, **settings}
    path = os.path.join(str(folder), "tiny.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(settings, f, sort_keys=False)
    return path


def synthetic_data(folder, num_train=8, num_val=4, seed=0) -> dict:
    """A tiny synthetic fashion set (64x64 images) and the ``data`` config section that reads it."""
    from maskrcnn.data.synthetic import generate_synthetic_dataset

    paths = generate_synthetic_dataset(str(folder), num_train, num_val, seed, image_size=64)
    return {"train_annotations": paths["train"]["annotations"], "train_images": paths["train"]["images"],
            "val_annotations": paths["val"]["annotations"], "val_images": paths["val"]["images"]}


def write_rectangles_set(folder, images, class_names=("top", "skirt", "bag"), size=64) -> str:
    """A COCO set of ``size`` x ``size`` PNGs holding filled rectangles; return the JSON path.

    ``images``: one list per image of ``(label, x1, y1, x2, y2)`` rectangles (an empty list: no objects).
    Each class has its own colour on a seeded noise background, so the set is learnable and deterministic.
    """
    os.makedirs(str(folder), exist_ok=True)
    rng = np.random.default_rng(0)
    colors = [(220, 40, 40), (40, 200, 60), (50, 80, 230)]
    entries, annotations = [], []
    for index, rectangles in enumerate(images):
        pixels = rng.integers(90, 160, size=(size, size, 3)).astype(np.uint8)
        for label, x1, y1, x2, y2 in rectangles:
            pixels[y1:y2, x1:x2] = colors[(label - 1) % len(colors)]
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1, "category_id": label,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0,
                                "segmentation": [[x1, y1, x2, y1, x2, y2, x1, y2]]})
        name = f"{index + 1:03d}.png"
        Image.fromarray(pixels).save(os.path.join(str(folder), name))
        entries.append({"id": index + 1, "file_name": name, "height": size, "width": size})
    path = os.path.join(str(folder), "instances.json")
    with open(path, "w") as f:
        json.dump({"images": entries, "annotations": annotations,
                   "categories": [{"id": i + 1, "name": n} for i, n in enumerate(class_names)]}, f)
    return path


def run(args, timeout=240, env=None, torchrun_processes=0) -> subprocess.CompletedProcess:
    """Run ``train.py args`` (under ``torchrun`` with that many processes when > 0) in the repository."""
    if torchrun_processes:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={torchrun_processes}", TRAIN_PY] + list(args)
    else:
        command = [sys.executable, TRAIN_PY] + list(args)
    return subprocess.run(command, cwd=REPO, env=env or ENV, capture_output=True, text=True, timeout=timeout)


def read_metrics(output_dir, kind="train") -> list:
    """The ``kind`` records of ``{output_dir}/metrics.jsonl``."""
    with open(os.path.join(str(output_dir), "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if r["type"] == kind]

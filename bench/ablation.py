"""A small ablation table: short training runs on the synthetic set with one design choice changed per row.

    python bench/ablation.py                          # warm-up + every row (about 15 min of CPU time)
    python bench/ablation.py --rows baseline aligned --iters 100 --data /tmp/synth --out /tmp/ablation

Training the demo model from random weights crawls for its first ~400 iterations and then takes off
(``configs/synthetic_demo.yaml``), so a few hundred iterations from scratch compare noise. Hence two phases:

1. **warm-up**: ``configs/synthetic_demo.yaml`` at ``--size`` pixels, trained ``--warm-iters`` iterations from
   scratch with the demo schedule compressed to that length (skipped when ``--warm`` names its checkpoint);
2. **test-time rows** (``--eval-rows``, cheap: one evaluation each): the warm-up weights evaluated with one
   inference setting changed -- ``as_trained``; ``rpn_nms_per_image`` (see below); ``aligned`` (ROIAlign
   ``aligned=true`` on weights trained with ``false``); ``proposals_20`` (``post_nms_top_n_test`` 100 -> 20);
   ``score_0.5`` (``roi_heads.score_thresh`` 0.05 -> 0.5);
3. **training rows** (``--rows``): each continues from the warm-up weights for ``--iters`` iterations at a
   constant learning rate ``--lr`` with one thing changed, then is evaluated on the validation images:

- ``baseline``: nothing changed;
- ``seed_1``: another seed (other batches, other ROI samples) -- the noise level the other rows must beat;
- ``aligned``: ``model.roi_heads.aligned=true`` (ROIAlign samples half a pixel further, geometrically exact);
- ``positive_half``: ``model.roi_heads.positive_fraction=0.5`` (up to half of the sampled ROIs foreground);
- ``rpn_nms_per_image``: the RPN's NMS over all levels at once instead of within each level (a code change,
  patched in for the run: the level ids passed to ``batched_nms`` are all set to 0);
- ``box_loss_per_positive``: the box-regression loss divided by the number of *positive* ROIs instead of all
  sampled ROIs (patched in: ``box_losses`` is replaced for the run).

It writes ``ablation.json`` and prints two Markdown tables (the ones in ``docs/design_choices.md``) with box and mask
AP / AP50 on the 100 validation images, the final training loss and the CPU seconds of each row (training and
evaluation, summed over threads). Read a difference smaller than the gap between ``baseline`` and ``seed_1`` as
no difference. Nothing is asserted.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import sys
import time
from typing import Dict, Iterator, List

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from maskrcnn.config import load_config  # noqa: E402
from maskrcnn.data.synthetic import generate_synthetic_dataset  # noqa: E402
from maskrcnn.engine.trainer import train  # noqa: E402
from maskrcnn.engine.validation import evaluate_checkpoint  # noqa: E402
import maskrcnn.modeling.roi_heads as roi_heads_module  # noqa: E402
import maskrcnn.modeling.rpn as rpn_module  # noqa: E402

EVAL_ROWS: Dict[str, List[str]] = {  # test-time row -> overrides (rpn_nms_per_image: patched)
    "as_trained": [],
    "rpn_nms_per_image": [],
    "aligned": ["model.roi_heads.aligned=true"],
    "proposals_20": ["model.rpn.post_nms_top_n_test=20"],
    "score_0.5": ["model.roi_heads.score_thresh=0.5"],
}
DEMO_CONFIG = os.path.join(ROOT, "configs", "synthetic_demo.yaml")
ORIGINAL_BATCHED_NMS = rpn_module.batched_nms  # what the RPN calls
ORIGINAL_BOX_LOSSES = roi_heads_module.box_losses  # what the ROI heads call


# ----------------------------------------------------------------------------------- patched variants
def _nms_across_levels(boxes, scores, levels, iou_threshold):
    """``batched_nms`` with every proposal in one group: NMS over the whole image, not within each level."""
    return ORIGINAL_BATCHED_NMS(boxes, scores, torch.zeros_like(levels), iou_threshold)


def _box_losses_per_positive(class_logits, box_deltas, labels, regression_targets):
    """Fast R-CNN losses with the box term divided by the positive ROIs (at least 1) instead of all sampled."""
    losses = ORIGINAL_BOX_LOSSES(class_logits, box_deltas, labels, regression_targets)
    num_positive = int((labels > 0).sum())
    losses["loss_box_reg"] = losses["loss_box_reg"] * labels.numel() / max(num_positive, 1)
    return losses




@contextlib.contextmanager
def patched(row: str) -> Iterator[None]:
    """Swap in the code variant a row needs for the duration of its run."""
    if row == "rpn_nms_per_image":  # a training row or a test-time row
        rpn_module.batched_nms = _nms_across_levels
    elif row == "box_loss_per_positive":
        roi_heads_module.box_losses = _box_losses_per_positive
    try:
        yield
    finally:
        rpn_module.batched_nms = ORIGINAL_BATCHED_NMS
        roi_heads_module.box_losses = ORIGINAL_BOX_LOSSES


ROWS: Dict[str, List[str]] = {  # row -> config overrides (the code variants are in ``patched``)
    "baseline": [],
    "seed_1": ["seed=1"],
    "aligned": ["model.roi_heads.aligned=true"],
    "positive_half": ["model.roi_heads.positive_fraction=0.5"],
    "rpn_nms_per_image": [],
    "box_loss_per_positive": [],
}


# ----------------------------------------------------------------------------------------- running
def dataset_overrides(data_dir: str) -> List[str]:
    """The synthetic set in ``data_dir`` (600 train / 100 val images of 128 pixels), generated if missing."""
    if not os.path.exists(os.path.join(data_dir, "instances_val.json")):
        generate_synthetic_dataset(data_dir, num_train=600, num_val=100, seed=0, image_size=128)
    return [f"data.train_annotations={data_dir}/instances_train.json", f"data.train_images={data_dir}/train",
            f"data.val_annotations={data_dir}/instances_val.json", f"data.val_images={data_dir}/val"]


def schedule_overrides(iters: int, size: int, decay: bool) -> List[str]:
    """``iters`` iterations at ``size`` pixels, quiet outputs; ``decay``: the demo schedule compressed to that
    length (warm-up 10 %, steps at 75 % and 90 %), else a constant rate."""
    steps = f"[{iters * 3 // 4},{iters * 9 // 10}]" if decay else "[]"
    warmup = max(1, iters // 10) if decay else 0
    return [f"solver.max_iter={iters}", f"solver.warmup_iters={warmup}", f"solver.steps={steps}",
            f"solver.checkpoint_period={iters}", f"input.min_size={size}", f"input.max_size={size}",
            "train.overlays=0", "train.tensorboard=false", "eval.pictures=false", "train.log_period=50"]


def run(name: str, overrides: List[str], out: str, row: str = "baseline") -> dict:
    """Train one run (with ``row``'s code variant); return its headline numbers and checkpoint."""
    cfg = load_config(DEMO_CONFIG, overrides=overrides + [f"output_dir={os.path.join(out, name)}"])
    cpu, wall = time.process_time(), time.perf_counter()
    with patched(row):
        result = train(cfg)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    report = result["eval"]
    with open(os.path.join(out, name, "metrics.jsonl")) as f:
        last_train = [json.loads(line) for line in f if '"train"' in line][-1]
    return {"row": name, "overrides": overrides, "box_AP": report["bbox"]["AP"], "box_AP50": report["bbox"]["AP50"],
            "mask_AP": report["segm"]["AP"], "mask_AP50": report["segm"]["AP50"], "cpu_s": cpu, "wall_s": wall,
            "final_losses": {k: v for k, v in last_train.items() if k.startswith("loss")},
            "checkpoint": result["checkpoint"]}


def evaluate(name: str, overrides: List[str], out: str) -> dict:
    """Evaluate the weights in ``overrides`` with test-time row ``name``'s setting; return its numbers."""
    cfg = load_config(DEMO_CONFIG, overrides=overrides + EVAL_ROWS[name] + [f"output_dir={os.path.join(out, 'eval_' + name)}"])
    cpu = time.process_time()
    with patched(name):
        report = evaluate_checkpoint(cfg)
    return {"row": name, "box_AP": report["bbox"]["AP"], "box_AP50": report["bbox"]["AP50"],
            "mask_AP": report["segm"]["AP"], "mask_AP50": report["segm"]["AP50"], "cpu_s": time.process_time() - cpu}


def earlier_run(checkpoint: str) -> dict:
    """The headline numbers of the run that wrote ``checkpoint`` (its folder's ``metrics.jsonl``)."""
    with open(os.path.join(os.path.dirname(checkpoint), "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    final = [r for r in records if r["type"] == "eval"][-1]
    last_train = [r for r in records if r["type"] == "train"][-1]
    return {"row": "warm_up", "box_AP": final["bbox/AP"], "box_AP50": final["bbox/AP50"], "mask_AP": final["segm/AP"],
            "mask_AP50": final["segm/AP50"], "cpu_s": float("nan"), "checkpoint": checkpoint,
            "final_losses": {k: v for k, v in last_train.items() if k.startswith("loss")}}


def markdown(results: List[dict]) -> str:
    lines = ["| row | box AP | box AP50 | mask AP | mask AP50 | final loss | CPU s |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        loss = f"{r['final_losses']['loss']:.3f}" if "final_losses" in r else "-"
        lines.append(f"| {r['row']} | {r['box_AP']:.3f} | {r['box_AP50']:.3f} | {r['mask_AP']:.3f} | "
                     f"{r['mask_AP50']:.3f} | {loss} | {r['cpu_s']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--eval-rows", nargs="*", default=list(EVAL_ROWS), choices=list(EVAL_ROWS))
    parser.add_argument("--warm-iters", type=int, default=500, help="iterations of the warm-up run")
    parser.add_argument("--warm", default="", help="checkpoint of an earlier warm-up run (skips phase 1)")
    parser.add_argument("--iters", type=int, default=200, help="iterations of each row after the warm-up")
    parser.add_argument("--lr", type=float, default=0.002, help="constant learning rate of the rows")
    parser.add_argument("--size", type=int, default=96, help="input.min_size = input.max_size")
    parser.add_argument("--data", default="datasets/synthetic_ablation")
    parser.add_argument("--out", default="output/ablation")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    data = dataset_overrides(args.data)
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load = os.getloadavg()
    results = []
    warm = args.warm
    if not warm:
        results.append(run("warm_up", data + schedule_overrides(args.warm_iters, args.size, decay=True), args.out))
        warm = results[-1]["checkpoint"]
    else:
        results.append(earlier_run(warm))
    sizes = [f"input.min_size={args.size}", f"input.max_size={args.size}", "train.overlays=0", "eval.pictures=false"]
    evaluated = [evaluate(name, data + sizes + [f"model.weights={warm}"], args.out) for name in args.eval_rows]
    print(markdown(evaluated), flush=True)
    rows = data + schedule_overrides(args.iters, args.size, decay=False) + [f"model.weights={warm}",
                                                                            f"solver.base_lr={args.lr}"]
    for row in args.rows:
        results.append(run(row, rows + ROWS[row], args.out, row))
        print(markdown(results), flush=True)
    summary = {"command": "python bench/ablation.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "started": started, "load_average_at_start": load, "load_average_at_end": os.getloadavg(),
               "warm": warm, "iters": args.iters, "size": args.size, "threads": args.threads, "test_time": evaluated,
               "results": results}
    with open(os.path.join(args.out, "ablation.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(f"\n{summary['command']}  ({started}, load average {load[0]:.1f} at start, "
          f"{summary['load_average_at_end'][0]:.1f} at end, {args.threads} thread(s))")
    print(markdown(evaluated))
    print(markdown(results))


if __name__ == "__main__":
    main()

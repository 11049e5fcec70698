"""This project against torchvision, side by side: same weights, same inputs, identical outputs, then time.

Runs in a *separate* virtual environment that holds torchvision (it is never a dependency of the package or
its tests), with the project installed into it:

    python -m venv /work/tvenv
    /work/tvenv/bin/pip install torch==2.14.1 torchvision==0.29.1 numpy pillow pycocotools pyyaml
    /work/tvenv/bin/pip install --no-build-isolation .         # this project, native kernels included
    /work/tvenv/bin/python bench/compare_torchvision.py        # every case; --cases inference nms_5k ...

Cases (each one thread, ``torch.set_num_threads(1)``):

- ``inference``: Mask R-CNN R50-FPN on one 800x1216 image (the default size, so neither transform resizes),
  eval mode under ``torch.inference_mode``; 13 classes (14 with torchvision's background), default settings.
- ``train``: one training step on the same image with 6 objects: forward, the sum of the losses, backward,
  an SGD step (momentum 0.9) over the trainable parameters.
- ``roi_align_7``, ``roi_align_14``: ROIAlign forward + backward, 512 ROIs over P2-P5 (``bench/ops.py``'s
  workload), ``maskrcnn.ops.roi_align`` vs ``torchvision.ops.roi_align``.
- ``nms_5k``, ``nms_20k``: NMS at IoU 0.7 of 5000 / 20000 RPN-like boxes, ``maskrcnn.ops.nms`` vs
  ``torchvision.ops.nms``.

Models. ``torchvision (frozen BN)`` is built the way ours is laid out: ``resnet50(norm_layer=
FrozenBatchNorm2d)``, 3 trainable ResNet stages, FPN with a max-pool P6, ``MaskRCNN(num_classes=14)``.
``torchvision (plain)`` is ``maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)``, what one gets without
ImageNet weights: ``BatchNorm2d`` (batch statistics in training) and all 5 stages trainable. The frozen-BN
model's weights (random, seeded, scaled by the fan-in, random norm statistics: the parity fixture's recipe)
are loaded into the plain one and, through ``maskrcnn.checkpoint.convert_torchvision``, into ours.

Protocol. First the outputs are checked (the run stops if they differ): inference detections matched as sets
(same label, IoU > 0.99, scores within 1e-4) and their masks; the training losses with both samplers keeping
every candidate (so that no random draw differs); ROIAlign outputs and gradients; NMS kept indices. Then
``--pairs`` interleaved pairs (the order alternates each pair) after one warm-up call each, recording the
process CPU time and the wall time of every call; the table gives medians and ``ours / torchvision`` ratios.
CPU time is the steadier number on a shared machine. Memory: each (case, implementation) runs again in a
fresh process, which loads the model (or inputs), then reports the growth of its peak resident set over
that, across one warm-up call and one measured call (glibc returns large freed blocks at once:
``MALLOC_MMAP_THRESHOLD_``). Nothing is asserted beyond the output check: this is a measurement; results
go to ``docs/benchmarks.md``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch

HEIGHT, WIDTH, NUM_CLASSES = 800, 1216, 13  # the sizes of bench/model.py (its synthetic_targets draws labels 1..13)
CASES = ("inference", "train", "roi_align_7", "roi_align_14", "nms_5k", "nms_20k")
MODEL_IMPLS = ("ours", "torchvision_frozen_bn", "torchvision_plain")
OP_IMPLS = ("ours", "torchvision")


# ------------------------------------------------------------------------------------------------ models
def torchvision_models():
    """``(frozen_bn_model, plain_model)`` with the same seeded weights (module docstring)."""
    from torchvision.models import resnet50
    from torchvision.models.detection import MaskRCNN, maskrcnn_resnet50_fpn
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops import FrozenBatchNorm2d

    torch.manual_seed(0)
    frozen = MaskRCNN(_resnet_fpn_extractor(resnet50(norm_layer=FrozenBatchNorm2d), 3), num_classes=NUM_CLASSES + 1)
    # Well-conditioned random weights (the recipe of the parity fixture, tests/fixtures): a network whose
    # activations grow layer after layer would turn float32 rounding into different detections.
    generator = torch.Generator().manual_seed(1)
    for name, tensor in frozen.state_dict().items():
        r = torch.randn(tensor.shape, generator=generator)
        if name.endswith("running_var"):
            tensor.copy_(0.5 + r.abs())
        elif name.endswith("running_mean") or (tensor.dim() == 1 and name.endswith("bias")):
            tensor.copy_(0.1 * r)
        elif tensor.dim() == 1:
            tensor.copy_(1 + 0.1 * r)
        else:
            tensor.copy_(r / math.sqrt(math.prod(tensor.shape[1:])))
    plain = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=NUM_CLASSES + 1)
    missing, unexpected = plain.load_state_dict(frozen.state_dict(), strict=False)
    assert not unexpected and all(name.endswith("num_batches_tracked") for name in missing)
    return frozen, plain


def our_model(torchvision_state_dict):
    from maskrcnn.checkpoint import convert_torchvision
    from maskrcnn.config import load_config
    from maskrcnn.modeling import build_model

    model = build_model(load_config(overrides=[f"model.num_classes={NUM_CLASSES}"]), load_weights=False)
    model.load_state_dict(convert_torchvision(torchvision_state_dict), strict=True)
    return model


def model_inputs():
    """One 800x1216 image in [0, 1] and its targets: 6 boxes of 100-500 pixels, labels, filled-box masks
    (``bench/model.py``'s ``synthetic_targets``, drawn after the image from the same generator)."""
    from model import synthetic_targets  # bench/model.py, beside this script (same sizes: 800x1216, 6, 13)

    generator = torch.Generator().manual_seed(2)
    image = torch.rand(3, HEIGHT, WIDTH, generator=generator)
    return image, synthetic_targets(generator, "cpu")


def build_models(names):
    frozen, plain = torchvision_models()
    everything = {"torchvision_frozen_bn": frozen, "torchvision_plain": plain}
    if "ours" in names:
        everything["ours"] = our_model(frozen.state_dict())
    return {name: everything[name] for name in names}


def inference_call(model, image):
    model.eval()

    def call():
        with torch.inference_mode():
            return model([image])[0]
    return call


def train_call(model, image, target):
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)

    def call():
        losses = model([image], [target])
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()
        return losses
    return call


# --------------------------------------------------------------------------------------------------- ops
def op_calls(case: str, names) -> Dict[str, Callable]:
    """``{impl: call}`` for a ROIAlign or NMS case, the inputs built once (``bench/ops.py``'s workloads)."""
    import torchvision.ops

    from maskrcnn.ops import nms, roi_align
    from ops import nms_workload, roi_align_workload  # bench/ops.py, next to this file

    if case.startswith("roi_align"):
        make = roi_align_workload(512, int(case.split("_")[-1]), "cpu")
        impls = {"ours": roi_align, "torchvision": lambda x, r, size, scale, ratio, aligned:
                 torchvision.ops.roi_align(x, r, size, scale, ratio, aligned)}
    else:
        make = nms_workload({"nms_5k": 5000, "nms_20k": 20000}[case], "cpu")
        impls = {"ours": nms, "torchvision": torchvision.ops.nms}
    return {name: make(impls[name]) for name in names}


def roi_align_results(case: str):
    """Outputs and input gradients of both ROIAlign implementations on the case's workload."""
    import torchvision.ops

    from maskrcnn.ops import roi_align
    from ops import roi_align_workload

    size = int(case.split("_")[-1])
    results = {}
    for name, op in (("ours", roi_align), ("torchvision", torchvision.ops.roi_align)):
        captured = []

        def run(x, r, out, scale, ratio, aligned, op=op):
            captured.append(x)
            y = op(x, r, out, scale, ratio, aligned)
            captured.append(y)
            return y
        roi_align_workload(512, size, "cpu")(run)()
        results[name] = [t.grad if i % 2 == 0 else t.detach() for i, t in enumerate(captured)]
    return results


# ------------------------------------------------------------------------------------------ output check
def check_outputs(case: str, calls: Dict[str, Callable], image=None, target=None, models=None) -> str:
    """Raises SystemExit when the implementations disagree; returns a one-line summary."""
    from maskrcnn.ops import box_iou

    if case == "inference":
        outs = {name: call() for name, call in calls.items()}
        ref = outs["torchvision_frozen_bn"]
        lines = []
        for name, out in outs.items():
            if name == "torchvision_frozen_bn":
                continue
            if out["boxes"].shape != ref["boxes"].shape:
                raise SystemExit(f"inference: {name} has {len(out['boxes'])} detections, torchvision {len(ref['boxes'])}")
            iou = box_iou(ref["boxes"], out["boxes"])
            same = (iou > 0.99) & (ref["labels"][:, None] == out["labels"][None, :])
            score_gap = (ref["scores"][:, None] - out["scores"][None, :]).abs().masked_fill(~same, float("inf"))
            match = score_gap.argmin(dim=1)
            if not bool(same.any(dim=1).all()) or len(set(match.tolist())) != len(match) or \
                    float(score_gap.min(dim=1).values.max()) > 1e-4:
                raise SystemExit(f"inference: {name}'s detections differ from torchvision's")
            box_gap = float((out["boxes"][match] - ref["boxes"]).abs().max())
            mask_gap = float((out["masks"][match] - ref["masks"]).abs().max())
            lines.append(f"{name}: {len(match)} detections matched, boxes within {box_gap:.2g} px, "
                         f"mask probabilities within {mask_gap:.2g}")
        return "; ".join(lines)
    if case == "train":
        # The check runs with samplers keeping every candidate (no random draw); the timed steps use defaults.
        losses = {}
        for name, model in models.items():
            samplers = ([model.rpn.sampler, model.roi_heads.sampler] if name == "ours"
                        else [model.rpn.fg_bg_sampler, model.roi_heads.fg_bg_sampler])
            saved = [s.batch_size_per_image for s in samplers]
            for s in samplers:
                s.batch_size_per_image = 10 ** 7
            model.train()
            with torch.no_grad():
                values = model([image], [target])
            for s, value in zip(samplers, saved):
                s.batch_size_per_image = value
            losses[name] = {k: float(v) for k, v in values.items()}
        ref = losses["torchvision_frozen_bn"]
        worst = max(abs(losses["ours"][k] - v) / max(abs(v), 1e-12) for k, v in ref.items())
        if sorted(losses["ours"]) != sorted(ref) or worst > 1e-4:
            raise SystemExit(f"train: losses differ: ours {losses['ours']} torchvision {ref}")
        return f"training losses (samplers keeping everything) within {worst:.2g} relative of torchvision's"
    if case.startswith("roi_align"):
        results = roi_align_results(case)
        worst = max(float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))
                    for a, b in zip(results["ours"], results["torchvision"]))
        if worst > 1e-5:
            raise SystemExit(f"{case}: outputs or gradients differ by {worst:.3g} relative")
        return f"outputs and input gradients within {worst:.2g} relative"
    kept = {name: call() for name, call in calls.items()}
    if not torch.equal(kept["ours"], kept["torchvision"]):
        raise SystemExit(f"{case}: kept indices differ")
    return f"the same {len(kept['ours'])} kept indices in the same order"


# --------------------------------------------------------------------------------------------- measuring
def interleaved(calls: Dict[str, Callable], pairs: int) -> Dict[str, Dict[str, List[float]]]:
    """One warm-up call each, then ``pairs`` rounds calling every implementation once, the order reversed
    every other round. Returns ``{impl: {"cpu": [...], "wall": [...]}}`` in seconds."""
    for call in calls.values():
        call()
    times = {name: {"cpu": [], "wall": []} for name in calls}
    names = list(calls)
    for round_index in range(pairs):
        for name in (names if round_index % 2 == 0 else names[::-1]):
            cpu, wall = time.process_time(), time.perf_counter()
            calls[name]()
            times[name]["cpu"].append(time.process_time() - cpu)
            times[name]["wall"].append(time.perf_counter() - wall)
    return times


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def peak_growth_child(case: str, impl: str) -> None:
    """In a fresh process: load, then print the peak resident growth (MiB) over two calls (warm-up + one)."""
    torch.set_num_threads(1)
    if case in ("inference", "train"):
        model = build_models([impl])[impl]
        image, target = model_inputs()
        call = inference_call(model, image) if case == "inference" else train_call(model, image, target)
    else:
        call = op_calls(case, [impl])[impl]
    before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # peak resident set (VmHWM) := the current one
    call()
    call()
    print((_status_kib("VmHWM") - before) / 1024)


def peak_growth(case: str, impl: str) -> float:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(64 * 1024), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, os.path.abspath(__file__), "--peak-of", case, impl],
                          capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"memory of {case}/{impl} failed: {done.stderr[-800:]}")
    return float(done.stdout.strip().splitlines()[-1])


def run_case(case: str, pairs: int, with_memory: bool) -> List[dict]:
    names = MODEL_IMPLS if case in ("inference", "train") else OP_IMPLS
    if case in ("inference", "train"):
        models = build_models(names)
        image, target = model_inputs()
        calls = {n: inference_call(m, image) if case == "inference" else train_call(m, image, target)
                 for n, m in models.items()}
        summary = check_outputs(case, calls, image, target, models)
    else:
        calls = op_calls(case, names)
        summary = check_outputs(case, calls)
    print(f"{case}: {summary}", flush=True)
    times = interleaved(calls, pairs)
    rows = []
    for name in names:
        row = {"case": case, "impl": name, "cpu_s": statistics.median(times[name]["cpu"]),
               "wall_s": statistics.median(times[name]["wall"]), "cpu_all": times[name]["cpu"],
               "wall_all": times[name]["wall"]}
        if with_memory:
            row["peak_mib"] = peak_growth(case, name)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def markdown(rows: List[dict]) -> str:
    lines = ["| case | implementation | CPU time | wall time | peak growth | CPU ratio ours / this | "
             "wall ratio | memory ratio |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    ours = {r["case"]: r for r in rows if r["impl"] == "ours"}
    for r in rows:
        o = ours[r["case"]]
        unit = (1, "s") if r["cpu_s"] >= 1 else (1e3, "ms")
        memory = f"{r['peak_mib']:.0f} MiB" if "peak_mib" in r else "-"
        ratios = ["", "", ""] if r["impl"] == "ours" else [
            f"{o['cpu_s'] / r['cpu_s']:.2f}", f"{o['wall_s'] / r['wall_s']:.2f}",
            f"{o['peak_mib'] / r['peak_mib']:.2f}" if "peak_mib" in r and r["peak_mib"] > 0 else "-"]
        lines.append(f"| {r['case']} | {r['impl']} | {r['cpu_s'] * unit[0]:.3g} {unit[1]} | "
                     f"{r['wall_s'] * unit[0]:.3g} {unit[1]} | {memory} | " + " | ".join(ratios) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--pairs", type=int, default=3, help="interleaved timed rounds per case (default 3)")
    parser.add_argument("--no-memory", action="store_true", help="skip the fresh-process memory runs")
    parser.add_argument("--peak-of", nargs=2, metavar=("CASE", "IMPL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peak_of:
        return peak_growth_child(*args.peak_of)
    torch.set_num_threads(1)
    import torchvision

    from maskrcnn.ops import _native

    print(f"{time.strftime('%Y-%m-%d %H:%M %Z')}; torch {torch.__version__}, torchvision {torchvision.__version__}; "
          f"{os.cpu_count()} CPU cores, 1 torch thread; load average {os.getloadavg()}; "
          f"native extension: {_native.extension_status()}", flush=True)
    rows = []
    for case in args.cases:
        rows.extend(run_case(case, args.pairs, not args.no_memory))
    print(f"\nload average at the end {os.getloadavg()}\n")
    print(markdown(rows))


if __name__ == "__main__":
    main()

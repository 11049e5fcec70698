"""The Python steps of bench/gpu_check.sh: one check of the GPU path per subcommand.

    python bench/gpu_check.py build                  # clean CUDA build of the extension (MASKRCNN_REQUIRE_CUDA=1)
    python bench/gpu_check.py cuda-tests             # pytest -m cuda
    python bench/gpu_check.py parity  [--device cuda]
    python bench/gpu_check.py ops-speed [--device cuda] [--small]
    python bench/gpu_check.py train [--device cuda] [--small]
    python bench/gpu_check.py ddp
    python bench/gpu_check.py infer [--device cuda] [--small]

Each subcommand prints what it does and ends by writing one line of results (Markdown-safe, for the
table that gpu_check.sh prints) to the file named by $GPU_CHECK_RESULT (stdout when unset); it exits
with status 1 when the check fails. The device-independent ones run on the CPU too (``--device cpu
--small``: tiny sizes), which is how they were tried on a machine without a GPU.

What each compares or measures:
* parity: the CUDA kernels against the C++ CPU kernels on the same inputs (ROIAlign forward and
  backward in float32, float64, float16 and bfloat16, aligned True/False; NMS in float32 and
  float64). Tolerances: float64 1e-10; float32 1e-4 (atomicAdd order and fused multiply-adds);
  16-bit outputs half an ulp of values below 2 plus the float32 error (float16 2e-3, bfloat16
  1.6e-2); gradients relative to their size with the same numbers. NMS must keep the same indices.
* ops-speed: bench/ops.py's workloads (ROIAlign fwd+bwd over P2-P5 of an 800x1216 image; NMS of
  RPN-like boxes), native kernels against the pure-PyTorch references, median of 5 runs.
* train: train.py itself on the synthetic set (maskrcnn/data/synthetic.py) at 1333x800 pixels, so
  that the default 800/1333 resize keeps it 800x1333: R50-FPN (random weights, stages 1-2 frozen),
  bf16 autocast (train.amp), 300 iterations of 4 images; img/s (median of the logged values
  after the first two) and peak GPU memory from its metrics.jsonl.
* ddp: the same with torchrun and 2 processes when 2 or more GPUs are visible, else skipped (NCCL
  refuses two ranks on one GPU).
* infer: the model in eval mode under torch.no_grad (and bf16 autocast on CUDA), the training run's
  last checkpoint when present, batches of 1 and 8 images of 800x1333; img/s over 10 timed batches
  after 3 warm-up batches.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))  # bench/ops.py's workloads and timing
WORK = Path(os.environ.get("GPU_CHECK_WORK", "/tmp/gpu_check"))
TRAIN_DIR = WORK / "train"
DATA_DIR = WORK / "synthetic"


class CheckFailed(Exception):
    """The check ran and its result is wrong; the message is the table's detail."""


def report(detail: str) -> None:
    """Writes the table's detail for this step (one line, no '|')."""
    line = " ".join(detail.replace("|", "/").split())
    target = os.environ.get("GPU_CHECK_RESULT")
    if target:
        Path(target).write_text(line + "\n")
    print(f"RESULT: {line}", flush=True)


def run(command: list[str], env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    print("$ " + " ".join(command), flush=True)
    return subprocess.run(command, cwd=ROOT, env={**os.environ, **(env or {})}, **kwargs)


# --- build --------------------------------------------------------------------------------------

def step_build(args) -> None:
    """Removes every earlier build output, installs the project (editable, no deps, no build
    isolation: the torch already here) with MASKRCNN_REQUIRE_CUDA=1, then checks in a fresh process
    that the installed extension has CUDA kernels."""
    for path in [ROOT / "build", *map(Path, glob.glob(str(ROOT / "maskrcnn" / "ops" / "_C*.so"))),
                 ROOT / "maskrcnn" / "ops" / "_native_build.json"]:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    started = time.time()
    install = run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-v",
                   "-e", "."], env={"MASKRCNN_REQUIRE_CUDA": "1"})
    if install.returncode != 0:
        raise CheckFailed(f"pip install failed (exit {install.returncode}); see the build log")
    probe = run([sys.executable, "-c",
                 "import json; from maskrcnn.ops import _native as n; "
                 "print(json.dumps({'cuda': bool(n._C is not None and n._C.with_cuda), "
                 "'status': n.extension_status(), 'record': n.BUILD_RECORD}))"],
                capture_output=True, text=True)
    if probe.returncode != 0:
        raise CheckFailed(f"the built extension does not import: {probe.stderr.strip().splitlines()[-1:]}")
    state = json.loads(probe.stdout.strip().splitlines()[-1])
    if not state["cuda"]:
        raise CheckFailed(f"no CUDA kernels: {state['status']}; record {state['record']}")
    record = state["record"] or {}
    report(f"CUDA kernels built in {time.time() - started:.0f} s; {record.get('cuda', '')}; "
           f"openmp: {record.get('openmp', '?')}")


def step_cuda_tests(args) -> None:
    result = run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "tests"],
                 capture_output=True, text=True)
    print(result.stdout[-20000:], result.stderr[-5000:])
    lines = [line for line in result.stdout.splitlines() if " passed" in line or " failed" in line
             or "error" in line or "no tests ran" in line]
    summary = lines[-1].strip("= ") if lines else f"exit {result.returncode}"
    if result.returncode != 0 or "passed" not in summary:
        raise CheckFailed(f"pytest -m cuda: {summary}")
    report(f"pytest -m cuda: {summary}")


# --- parity -------------------------------------------------------------------------------------

ROI_ALIGN_TOLERANCE = {"float64": 1e-10, "float32": 1e-4, "float16": 2e-3, "bfloat16": 1.6e-2}


def roi_align_both(device: str, dtype, aligned: bool, seed: int, small: bool):
    """Native ROIAlign forward + backward on ``device`` and on the CPU, same inputs.
    Returns ((out, grad) on device, (out, grad) on the CPU), both moved to the CPU as float64."""
    import torch

    from maskrcnn.ops import _native

    generator = torch.Generator().manual_seed(seed)
    n, c, h, w, k = (2, 4, 12, 16, 20) if small else (2, 64, 100, 152, 500)
    features = torch.rand(n, c, h, w, generator=generator)
    corners = torch.rand(k, 2, generator=generator) * torch.tensor([w * 8.0, h * 8.0])
    sizes = 4 + torch.rand(k, 2, generator=generator) * torch.tensor([w * 4.0, h * 4.0])
    batch = torch.randint(0, n, (k, 1), generator=generator).float()
    rois = torch.cat([batch, corners, corners + sizes], dim=1)
    grad = torch.rand(k, c, 7, 7, generator=generator) - 0.5
    results = []
    for where in (device, "cpu"):
        x = features.to(where, dtype).clone().requires_grad_()  # a leaf of its own on each device
        out = _native.RoIAlignFunction.apply(x, rois.to(where, dtype), (7, 7), 0.125, 2, aligned)
        out.backward(grad.to(where, dtype))
        results.append((out.detach().cpu().double(), x.grad.cpu().double()))
    return results


def nms_both(device: str, dtype, seed: int, small: bool):
    import torch

    from maskrcnn.ops import _native
    from ops import random_boxes  # bench/ops.py

    generator = torch.Generator().manual_seed(seed)
    count = 200 if small else 5000
    boxes, scores = random_boxes(count, generator).to(dtype), torch.rand(count, generator=generator)
    return [_native._C.nms(boxes.to(where), scores.to(where), 0.7).cpu() for where in (device, "cpu")]


def step_parity(args) -> None:
    import torch

    from maskrcnn.ops import _native

    if _native._C is None or args.device not in _native.native_devices():
        raise CheckFailed(f"no native {args.device} kernels: {_native.extension_status()}")
    worst, failures = {}, []
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        name = str(dtype).removeprefix("torch.")
        tolerance = ROI_ALIGN_TOLERANCE[name]
        for aligned in (False, True):
            (out, grad), (out_cpu, grad_cpu) = roi_align_both(args.device, dtype, aligned, 0, args.small)
            out_error = (out - out_cpu).abs().max().item()
            grad_error = ((grad - grad_cpu).abs() / (1 + grad_cpu.abs())).max().item()
            worst[name] = max(worst.get(name, 0.0), out_error, grad_error)
            if not (out_error <= tolerance and grad_error <= tolerance):
                failures.append(f"roi_align {name} aligned={aligned}: fwd {out_error:.2g}, "
                                f"bwd {grad_error:.2g} > {tolerance:g}")
    for dtype in (torch.float32, torch.float64):
        kept, kept_cpu = nms_both(args.device, dtype, 1, args.small)
        if not torch.equal(kept, kept_cpu):
            failures.append(f"nms {dtype}: {len(kept)} vs {len(kept_cpu)} kept, indices differ")
    errors = ", ".join(f"{name} {error:.1g}" for name, error in worst.items())
    if failures:
        raise CheckFailed("; ".join(failures))
    report(f"{args.device} vs cpu kernels: roi_align fwd+bwd max error {errors}; nms indices equal (f32, f64)")


# --- op speed -----------------------------------------------------------------------------------

def step_ops_speed(args) -> None:
    import ops as op_bench  # bench/ops.py

    from maskrcnn.ops import _native

    if _native._C is None or args.device not in _native.native_devices():
        raise CheckFailed(f"no native {args.device} kernels: {_native.extension_status()}")
    repeats = 2 if args.small else 5
    roi_cases = [(32, 7)] if args.small else [(1000, 7), (1000, 14)]
    nms_cases = [500] if args.small else [5000, 20000]
    parts = []
    for rois, size in roi_cases:
        make = op_bench.roi_align_workload(rois, size, args.device)
        times = op_bench.median_seconds({"reference": make(op_bench.roi_align_reference),
                                         "native": make(op_bench.native_roi_align)},
                                        args.device, repeats)
        parts.append(f"ROIAlign fwd+bwd {rois}x{size}x{size}: native {times['native'] * 1e3:.2f} ms, "
                     f"reference {times['reference'] * 1e3:.2f} ms "
                     f"({times['reference'] / times['native']:.1f}x)")
    for boxes in nms_cases:
        make = op_bench.nms_workload(boxes, args.device)
        times = op_bench.median_seconds({"reference": make(op_bench.nms_reference),
                                         "native": make(op_bench.native_nms)}, args.device, repeats)
        parts.append(f"NMS {boxes} boxes: native {times['native'] * 1e3:.2f} ms, reference "
                     f"{times['reference'] * 1e3:.2f} ms ({times['reference'] / times['native']:.1f}x)")
    report("; ".join(parts))


# --- training and inference ------------------------------------------------------------------------

def synthetic_data(small: bool) -> Path:
    """The synthetic set at the training size (generated once per work folder)."""
    if not (DATA_DIR / "instances_val.json").exists():
        size = ["160", "96"] if small else ["1333", "800"]  # width, height
        count = ["8", "2"] if small else ["48", "4"]
        result = run([sys.executable, "-m", "maskrcnn.data.synthetic", "--out", str(DATA_DIR),
                      "--num-train", count[0], "--num-val", count[1], "--size", *size])
        if result.returncode != 0:
            raise CheckFailed("the synthetic set could not be generated")
    return DATA_DIR


def model_overrides(small: bool) -> list[str]:
    """The model (configs/base.yaml: R50-FPN at 800/1333) for the synthetic set's 8 classes; with
    ``small``, a CPU sanity run's ResNet-18 at 96x160."""
    overrides = ["model.num_classes=8", "model.weights="]
    if small:
        overrides += ["input.min_size=96", "input.max_size=160", "model.backbone.depth=18",
                      "model.backbone.frozen_stages=0", "model.backbone.fpn_channels=64",
                      "model.rpn.pre_nms_top_n_train=300", "model.rpn.post_nms_top_n_train=150",
                      "model.roi_heads.batch_size_per_image=64"]
    return overrides


def train_overrides(device: str, small: bool, iterations: int) -> list[str]:
    data = synthetic_data(small)
    return [
        f"output_dir={TRAIN_DIR}", f"device={device}", "data.format=coco",
        f"data.train_annotations={data / 'instances_train.json'}", f"data.train_images={data / 'train'}",
        f"data.val_annotations={data / 'instances_val.json'}", f"data.val_images={data / 'val'}",
        *model_overrides(small), f"solver.max_iter={iterations}", "solver.ims_per_batch=4",
        # random weights: a gentle rate with warm-up and clipping keeps the losses finite
        "solver.base_lr=0.01", "solver.warmup_iters=100", "solver.steps=[]", "solver.clip_grad_norm=10.0",
        "solver.checkpoint_period=0", "eval.period=0", "eval.pictures=false", "train.overlays=0",
        "train.tensorboard=false", "train.amp=bf16", f"train.log_period={2 if small else 20}",
        f"dataloader.num_workers={0 if small else 4}",
    ]


def metrics_summary(metrics_path: Path) -> tuple[float, int, float]:
    """(median img/s of the logged training lines after the first two, peak memory bytes, last loss)."""
    records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    training = [r for r in records if "images_per_second" in r]
    if not training:
        raise CheckFailed(f"no training lines in {metrics_path}")
    steady = training[2:] or training
    last = training[-1]
    loss = last.get("loss", sum(v for k, v in last.items() if k.startswith("loss_")))
    return (statistics.median(r["images_per_second"] for r in steady),
            max(r.get("peak_memory_bytes", 0) for r in training), loss)


def run_training(command, what: str):
    """Train into a fresh ``TRAIN_DIR`` with ``command``; return ``metrics_summary`` of its metrics."""
    if TRAIN_DIR.exists():
        shutil.rmtree(TRAIN_DIR)
    result = run(command)
    if result.returncode != 0:
        raise CheckFailed(f"{what} exited with {result.returncode}")
    return metrics_summary(TRAIN_DIR / "metrics.jsonl")


def step_train(args) -> None:
    iterations = 6 if args.small else 300
    started = time.time()
    images_per_second, peak, loss = run_training(
        [sys.executable, "train.py", "--config", "configs/base.yaml",
         *train_overrides(args.device, args.small, iterations)], "train.py")
    report(f"{iterations} iterations x 4 images, bf16 autocast: {images_per_second:.1f} img/s, "
           f"peak memory {peak / 2**30:.2f} GiB, last loss {loss:.3f}, {time.time() - started:.0f} s in all")


def step_ddp(args) -> None:
    import torch

    gpus = torch.cuda.device_count()
    if gpus < 2:
        report(f"skipped: {gpus} GPU visible, and NCCL refuses two ranks on one GPU")
        return
    images_per_second, peak, loss = run_training(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "train.py", "--config", "configs/base.yaml", *train_overrides("cuda", False, 60)], "torchrun")
    report(f"2 processes, 60 iterations x 4 images: {images_per_second:.1f} img/s, rank-0 peak "
           f"{peak / 2**30:.2f} GiB, last loss {loss:.3f}")


def step_infer(args) -> None:
    import torch

    from maskrcnn.config import load_config
    from maskrcnn.modeling import build_model

    device = torch.device(args.device)
    cfg = load_config("configs/base.yaml", model_overrides(args.small))
    torch.manual_seed(0)
    model = build_model(cfg, load_weights=False)
    weights = "random weights"
    checkpoints = sorted(TRAIN_DIR.glob("model_*.pth"))  # model_{iteration:07d}.pth: the last is the final
    if checkpoints:
        model.load_state_dict(torch.load(checkpoints[-1], map_location="cpu", weights_only=True)["model"])
        weights = f"the trained {checkpoints[-1].name}"
    model.eval().to(device)
    height, width = (96, 160) if args.small else (800, 1333)
    timed, warmup = (2, 1) if args.small else (10, 3)
    generator = torch.Generator().manual_seed(0)
    parts = []
    for batch in (1, 8):
        images = [torch.rand(3, height, width, generator=generator).to(device) for _ in range(batch)]
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
        with torch.no_grad(), autocast:
            for i in range(warmup + timed):
                if i == warmup:
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    start = time.perf_counter()
                model(images)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        parts.append(f"batch {batch}: {batch * timed / (time.perf_counter() - start):.1f} img/s")
    report(f"{height}x{width}, {weights}: " + ", ".join(parts))


STEPS = {"build": step_build, "cuda-tests": step_cuda_tests, "parity": step_parity,
         "ops-speed": step_ops_speed, "train": step_train, "ddp": step_ddp, "infer": step_infer}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("step", choices=sorted(STEPS))
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu, for a sanity run")
    parser.add_argument("--small", action="store_true", help="tiny sizes (a CPU sanity run)")
    args = parser.parse_args(argv)
    try:
        STEPS[args.step](args)
    except CheckFailed as failure:
        report(f"FAILED: {failure}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

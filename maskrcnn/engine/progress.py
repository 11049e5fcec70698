"""What a training run reports: the progress line, metrics as JSON lines, TensorBoard, the loss-curve picture.

Everything here runs on rank 0 only (the trainer creates a :class:`MetricsLog` there and nowhere else).

The progress line, printed every ``train.log_period`` iterations::

    iter 40/300  loss 1.873  objectness 0.412  rpn_box 0.031  classifier 0.602  box 0.388  mask 0.440
      lr 0.0100  7.9 img/s  eta 0:02:11  peak mem 1.3G

``iter`` counts completed updates (1..max_iter, the number a checkpoint of that moment is named after);
the losses are those of that iteration, averaged over the processes; ``img/s`` is measured over the
iterations since the previous line (the global batch divided by the seconds per iteration); ``eta`` is the
remaining iterations times a moving average of the seconds per iteration (:class:`SmoothedIterationTime`,
half-life 50 iterations), so that one slow or fast stretch does not swing it; the first line, printed
after the first iteration, holds the start-up cost (loader workers, memory) and only seeds that average;
``peak mem`` is the peak GPU memory allocated by torch on CUDA, and the process's peak resident memory on
CPU.

``metrics.jsonl`` in the output folder holds one JSON object per line, a training line at every
progress line and an evaluation line after every evaluation::

    {"type": "train", "iteration": 40, "loss": 1.873, "loss_objectness": 0.412, ..., "lr": 0.01,
     "images_per_second": 7.9, "seconds_per_iteration": 0.51, "peak_memory_bytes": 1395864371}
    {"type": "eval", "iteration": 300, "bbox/AP": 0.61, "bbox/AP50": 0.88, ..., "segm/AP50": 0.86}

When a run resumes from the checkpoint of iteration k, lines after k (written by the interrupted run
after its last checkpoint) are dropped, so the file reads as if the run had never stopped.
TensorBoard event files are written too when the ``tensorboard`` package is installed (it is optional).
``loss_curves.png`` draws every loss against the iteration (with Pillow, through ``engine/plots.py``).
"""
from __future__ import annotations

import datetime
import json
import math
import os
import resource
import sys
from typing import Dict, List, Mapping, Optional

import torch

from maskrcnn.engine import plots

METRICS_FILE = "metrics.jsonl"
LOSS_CURVES_FILE = "loss_curves.png"

# Loss names -> the short names of the progress line.
SHORT_NAMES = {
    "loss_objectness": "objectness",
    "loss_rpn_box_reg": "rpn_box",
    "loss_classifier": "classifier",
    "loss_box_reg": "box",
    "loss_mask": "mask",
}


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory so far: torch's peak allocation on a CUDA ``device``, else the process's peak RSS."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(usage if sys.platform == "darwin" else usage * 1024)  # Linux reports KiB, macOS bytes


def format_bytes(count: int) -> str:
    """``1395864371 -> '1.3G'``, ``52428800 -> '50M'``."""
    if count >= 1 << 30:
        return f"{count / (1 << 30):.1f}G"
    return f"{count / (1 << 20):.0f}M"


def format_duration(seconds: float) -> str:
    """``131.2 -> '0:02:11'`` (hours:minutes:seconds)."""
    return str(datetime.timedelta(seconds=int(round(max(seconds, 0.0)))))


def progress_line(iteration: int, max_iter: int, losses: Mapping[str, float], lr: float,
                  images_per_second: float, eta_seconds: float, peak_memory: int) -> str:
    """One progress line (see the module docstring); ``losses`` are the named losses of one iteration."""
    parts = [f"iter {iteration}/{max_iter}", f"loss {sum(losses.values()):.3f}"]
    parts += [f"{SHORT_NAMES.get(name, name)} {value:.3f}" for name, value in losses.items()]
    parts += [f"lr {lr:.4g}", f"{images_per_second:.1f} img/s", f"eta {format_duration(eta_seconds)}",
              f"peak mem {format_bytes(peak_memory)}"]
    return "  ".join(parts)


class SmoothedIterationTime:
    """Seconds per iteration averaged exponentially over iterations, for the ETA.

    ``update(seconds, iterations)`` folds in a window of ``iterations`` iterations that took ``seconds`` each on
    average; the weight of older windows halves every ``half_life`` iterations, whatever the window sizes.
    A ``provisional`` window (the first iteration, which includes start-up) is replaced by the next window
    instead of averaged with it.
    """

    def __init__(self, half_life: float = 50.0):
        self.half_life = half_life
        self.value: Optional[float] = None
        self.provisional = False

    def update(self, seconds: float, iterations: int, provisional: bool = False) -> float:
        if self.value is None or self.provisional:
            self.value = seconds
        else:
            keep = 0.5 ** (iterations / self.half_life)  # the weight left to the older iterations
            self.value = keep * self.value + (1.0 - keep) * seconds
        self.provisional = provisional
        return self.value


def _open_tensorboard(output_dir: str):
    """A TensorBoard ``SummaryWriter`` when the optional ``tensorboard`` package is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch's wrapper needs the separate tensorboard package
        return None
    return SummaryWriter(log_dir=os.path.join(output_dir, "tensorboard"))


class MetricsLog:
    """``metrics.jsonl`` (+ TensorBoard when installed) and ``loss_curves.png`` in ``output_dir``.

    Args:
        output_dir: the run's folder.
        resume_from: the iteration the run resumes from; lines of later iterations are dropped. ``None``
            (a fresh run) starts a new file.
        tensorboard: also write TensorBoard events when the package is installed.
    """

    def __init__(self, output_dir: str, resume_from: Optional[int] = None, tensorboard: bool = True):
        self.path = os.path.join(output_dir, METRICS_FILE)
        self.curves_path = os.path.join(output_dir, LOSS_CURVES_FILE)
        kept = [] if resume_from is None else [r for r in read_metrics(self.path) if r["iteration"] <= resume_from]
        with open(self.path, "w") as f:
            f.writelines(json.dumps(record) + "\n" for record in kept)
        self.tensorboard = _open_tensorboard(output_dir) if tensorboard else None
        if tensorboard and self.tensorboard is None:
            print("TensorBoard is not installed: metrics go to metrics.jsonl only (pip install tensorboard to add it)")

    def write(self, record: Mapping) -> None:
        """Append one record (it must have ``type`` and ``iteration``); numbers also go to TensorBoard."""
        with open(self.path, "a") as f:
            f.write(json.dumps(dict(record)) + "\n")
        if self.tensorboard is not None:
            for key, value in record.items():
                if key not in ("type", "iteration") and isinstance(value, (int, float)) and value is not None:
                    self.tensorboard.add_scalar(f"{record['type']}/{key}", value, record["iteration"])
            self.tensorboard.flush()

    def draw_loss_curves(self) -> Optional[str]:
        """Redraw ``loss_curves.png`` from the training lines so far; return its path (None without data)."""
        records = [r for r in read_metrics(self.path) if r["type"] == "train"]
        if not records:
            return None
        names = ["loss"] + [name for name in records[-1] if name.startswith("loss_")]
        series = [(name, [r["iteration"] for r in records], [r.get(name, math.nan) for r in records])
                  for name in names]
        plots.line_chart(self.curves_path, series, title="training losses", xlabel="iteration", ylabel="loss")
        return self.curves_path

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def read_metrics(path: str) -> List[Dict]:
    """The records of a ``metrics.jsonl`` file, in order (``[]`` when it does not exist).

    A last line cut short by a killed process is ignored; any other unreadable line raises naming it.
    """
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        lines = f.read().split("\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number >= len(lines) - 1:  # the last, possibly half-written line
                break
            raise ValueError(f"{path}:{number}: not a JSON line: {line[:80]!r}") from None
    return records

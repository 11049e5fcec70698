"""Multi-process training with ``torch.distributed``: set-up from ``torchrun``, rank helpers, gathering.

One process per GPU (or several on a CPU), started by ``torchrun``:

    torchrun --nproc_per_node=8 train.py --config configs/modanet_r50_fpn.yaml            # one machine
    torchrun --nnodes=2 --node_rank=0 --master_addr=HOST --master_port=29500 \\
             --nproc_per_node=8 train.py --config ...                                     # two machines

``torchrun`` tells each process who it is through environment variables: ``RANK`` (0..world_size-1
over all machines), ``WORLD_SIZE``, ``LOCAL_RANK`` (index on this machine, i.e. which GPU),
``MASTER_ADDR`` and ``MASTER_PORT`` (where rank 0 listens). ``init_distributed`` reads them and joins
the process group: NCCL between GPUs, gloo on CPU. Without those variables (plain ``python train.py``)
everything here works as a group of one: ``get_rank() == 0``, ``all_gather_object(x) == [x]``.

Conventions: ``solver.ims_per_batch`` is the global batch, split evenly over the ranks
(``per_rank_batch_size``); rank 0 alone logs and writes checkpoints (``is_main_process``); every
collective call here must be made by every rank, in the same order, or the group hangs.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping

import torch
import torch.distributed as dist

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistributedInfo:
    """Who this process is. ``backend`` is ``None`` for a single process (no process group)."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``'auto'`` -> ``cuda:{local_rank}`` when CUDA is available, else ``cpu``; ``'cuda'`` -> this
    process's GPU; anything else (``'cpu'``, ``'cuda:1'``) is taken as is."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device='cuda' but torch sees no CUDA GPU (set device: cpu or auto)")
        return torch.device("cuda", local_rank)
    return torch.device(device)


def init_distributed(device: str = "auto", timeout_minutes: float = 30.0) -> DistributedInfo:
    """Join the process group described by ``torchrun``'s environment variables; return this process's info.

    With ``WORLD_SIZE`` unset or 1 no group is created. Otherwise the backend is NCCL when the device
    is a GPU (and the process's GPU is set to ``LOCAL_RANK``) and gloo on CPU. Calling it again when
    the group exists returns the same info. ``timeout_minutes`` bounds how long a collective waits for
    a missing rank before failing (instead of hanging forever).
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    resolved = resolve_device(device, local_rank)
    if world_size <= 1:
        return DistributedInfo(0, 1, local_rank, resolved, None)
    missing = [name for name in ENV_VARS if not os.environ.get(name)]
    if missing:
        raise RuntimeError(
            f"WORLD_SIZE={world_size} but {', '.join(missing)} not set: start multi-process runs with torchrun"
        )
    if not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} is outside 0..WORLD_SIZE-1 = 0..{world_size - 1}")
    backend = "nccl" if resolved.type == "cuda" else "gloo"
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend,
            init_method="env://",
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(minutes=timeout_minutes),
        )
    return DistributedInfo(rank, world_size, local_rank, resolved, dist.get_backend())


def destroy_distributed() -> None:
    """Leave the process group (at the end of a run); a no-op without one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _group_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def get_world_size() -> int:
    """Number of processes in the run (1 without a process group)."""
    return _group_size()


def get_rank() -> int:
    """This process's global rank, 0..world_size-1 (0 without a process group)."""
    return dist.get_rank() if _group_size() > 1 else 0


def get_local_rank() -> int:
    """This process's index on its machine (``LOCAL_RANK``; 0 without torchrun)."""
    return _env_int("LOCAL_RANK", 0)


def is_main_process() -> bool:
    """True on rank 0: the process that logs, evaluates the gathered results and writes files."""
    return get_rank() == 0


def synchronize() -> None:
    """Wait until every rank reaches this point (a barrier); a no-op for a single process."""
    if _group_size() <= 1:
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def all_gather_object(obj: Any) -> List[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (any picklable object; ``[obj]`` alone).

    Objects travel pickled (through the GPU with NCCL), so gather compact data (e.g. RLE-encoded
    masks), not large tensors. A rank with nothing to contribute must still call it (with ``[]``).
    """
    size = _group_size()
    if size <= 1:
        return [obj]
    gathered: List[Any] = [None] * size
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (e.g. a decision made by rank 0); ``obj`` alone."""
    if _group_size() <= 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def reduce_mean(values: Mapping[str, torch.Tensor]) -> Dict[str, float]:
    """The mean over ranks of each scalar, e.g. the losses to log: ``{"loss_mask": 0.41, ...}``.

    Every rank must pass the same keys. Values are detached; the result is plain floats.
    """
    names = sorted(values)
    if not names:
        return {}
    stacked = torch.stack([values[n].detach().reshape(()).float() for n in names])  # (len(names),)
    size = _group_size()
    if size > 1:
        if dist.get_backend() == "nccl":
            stacked = stacked.cuda()
        dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
        stacked = stacked / size
    return {n: float(v) for n, v in zip(names, stacked.cpu().tolist())}


def ddp_without_buffer_sync() -> Dict[str, bool]:
    """Keyword arguments that stop ``DistributedDataParallel`` from broadcasting every buffer from
    rank 0 at the start of each forward. The model's buffers (FrozenBatchNorm2d's statistics and
    affine terms, constants) never change and every rank loads the same weights, so that broadcast
    is pure communication. torch >= 2.13 names the switch ``forward_sync_buffers`` (buffers are
    still synced once, when DDP is built) and deprecates ``broadcast_buffers``, which older torch
    needs (it also skips that first sync: harmless for buffers that are equal on every rank)."""
    import inspect

    parameters = inspect.signature(torch.nn.parallel.DistributedDataParallel).parameters
    if "forward_sync_buffers" in parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


def per_rank_batch_size(global_batch: int, world_size: int) -> int:
    """Images per process per iteration: ``global_batch / world_size``, which must divide exactly.

    ``per_rank_batch_size(16, 8) == 2``; ``per_rank_batch_size(16, 3)`` raises naming
    ``solver.ims_per_batch``.
    """
    if world_size <= 0:
        raise ValueError(f"world_size={world_size}: must be positive")
    if global_batch <= 0:
        raise ValueError(f"solver.ims_per_batch={global_batch}: must be positive")
    if global_batch % world_size != 0:
        lower = global_batch - global_batch % world_size
        nearest = " or ".join(str(n) for n in (lower, lower + world_size) if n > 0)
        raise ValueError(
            f"solver.ims_per_batch={global_batch} (the global batch) is not divisible by the "
            f"{world_size} processes; use a multiple of {world_size}, e.g. {nearest}"
        )
    return global_batch // world_size


# ----------------------------------------------------------------------------------------------
# The processes' share of the machine
# ----------------------------------------------------------------------------------------------
NUM_THREADS_ENV = "MASKRCNN_NUM_THREADS"


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask; all cores where that is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def default_num_threads(cores: int, processes_per_machine: int, loader_workers: int) -> int:
    """Torch's intra-op threads per training process: its share of the cores minus its loader workers.

    ``default_num_threads(16, 1, 2) == 14``; ``default_num_threads(2, 1, 2) == 1``;
    ``default_num_threads(16, 4, 2) == 2``. Never below 1.
    """
    share = cores // max(processes_per_machine, 1)
    return max(1, share - loader_workers)


def configure_threads(loader_workers: int, device: torch.device) -> str | None:
    """Set torch's intra-op thread count for CPU training so that the threads do not outnumber the cores.

    torch's default is one thread per core whatever else runs: with data-loader workers decoding beside it, or
    on a machine busy with other work, its threads wait for each other at every parallel region and training
    slows far more than the sharing of the cores explains (see docs/training.md, "Threads"). The count is,
    in order: ``MASKRCNN_NUM_THREADS`` when set; ``OMP_NUM_THREADS`` when set (torch reads it itself;
    ``torchrun`` sets it to 1 for several processes); else :func:`default_num_threads`. Returns the line
    the trainer prints, or None on a GPU (where torch's CPU threads hardly matter and are left alone).
    """
    if device.type != "cpu":
        return None
    chosen = os.environ.get(NUM_THREADS_ENV, "").strip()
    if chosen:
        count = _env_int(NUM_THREADS_ENV, 1)
        if count < 1:
            raise ValueError(f"environment variable {NUM_THREADS_ENV}={chosen!r} must be at least 1")
        torch.set_num_threads(count)
        return f"torch threads: {count} per process ({NUM_THREADS_ENV})"
    if os.environ.get("OMP_NUM_THREADS", "").strip():
        return f"torch threads: {torch.get_num_threads()} per process (OMP_NUM_THREADS)"
    cores = available_cores()
    processes = _env_int("LOCAL_WORLD_SIZE", 1)
    count = default_num_threads(cores, processes, loader_workers)
    torch.set_num_threads(count)
    return (f"torch threads: {count} per process ({cores} cores, {processes} process(es) on this machine, "
            f"{loader_workers} loader worker(s) each; set {NUM_THREADS_ENV} to choose)")


def stop_when_launcher_exits(poll_seconds: float = 1.0) -> bool:
    """Under ``torchrun``: end this process when its launcher goes away; return whether a watcher started.

    ``torchrun`` forwards SIGINT / SIGTERM to its workers, but when the launcher itself is killed (``kill -9``,
    or its process group killed while the workers run in their own sessions) the workers would train on as
    orphans. A daemon thread checks every ``poll_seconds`` whether the parent process changed (an orphan is
    re-parented) and then sends this process SIGTERM, after one line on stderr.
    """
    if not os.environ.get("TORCHELASTIC_RUN_ID"):
        return False
    import signal
    import sys
    import threading
    import time

    launcher = os.getppid()

    def watch() -> None:
        while os.getppid() == launcher:
            time.sleep(poll_seconds)
        print(f"train.py (rank {os.environ.get('RANK', '?')}): the torchrun launcher (pid {launcher}) has exited; "
              "stopping", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="launcher-watch", daemon=True).start()
    return True

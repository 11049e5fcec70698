"""Training-state checkpoints: save everything a run needs to continue exactly, and load it back.

A checkpoint is one ``torch.save``-d dict:

    {"format": "maskrcnn-train-state", "version": 1,
     "iteration": int,                 # updates completed; the resumed run starts at this iteration
     "model": state_dict, "optimizer": state_dict, "scheduler": state_dict, "grad_scaler": state_dict,
     "config": dict, "class_names": [str, ...],
     "rng_states": [per-rank {python, numpy, torch, cuda}], "extra": dict}

Everything in it is a tensor or a plain Python value (dict, list, tuple, str, int, float, bool, None),
so it loads with ``torch.load(..., weights_only=True)``, which refuses to run code from the file. RNG
states are converted accordingly (NumPy's key array becomes a tensor).

Files are ``model_{iteration:07d}.pth`` in the output folder, written atomically: to a temporary file
in the same folder, flushed and fsync-ed, then ``os.replace``-d onto the final name, so a run killed
mid-write never leaves a truncated checkpoint under a real name. A small text file ``last_checkpoint``
names the newest one; when it is missing or stale, the folder is scanned instead.

Faults. A write that fails for lack of space raises :class:`CheckpointWriteError` ("no space left on device
while writing FILE") after removing its temporary file; ``last_checkpoint`` is updated only after the
checkpoint itself is complete, so it keeps naming the previous, intact checkpoint. A process killed mid-write
leaves a hidden ``.model_*.pth.PID.tmp`` file, removed by :func:`remove_interrupted_writes` when the run
resumes. :func:`find_resume_checkpoint` reads the newest checkpoint and, when it is unreadable (truncated by
a crash or a full disk), warns and falls back to the newest intact one.

This is the training state. Converting torchvision weights into this model is ``maskrcnn/checkpoint.py``.
"""
from __future__ import annotations

import errno
import os
import random
import re
import sys
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from maskrcnn.checkpoint import CheckpointError, read_checkpoint_file

FORMAT = "maskrcnn-train-state"
VERSION = 1
LAST_CHECKPOINT_FILE = "last_checkpoint"
_NAME_PATTERN = re.compile(r"^model_(\d+)\.pth$")
_TEMPORARY_PATTERN = re.compile(r"^\..+\.\d+\.tmp$")  # atomic_write's hidden temporary files
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class CheckpointWriteError(OSError):
    """Writing a checkpoint failed (e.g. the disk is full); the message names the file."""


# ----------------------------------------------------------------------------------------------
# RNG states as weights_only-friendly values
# ----------------------------------------------------------------------------------------------
def get_rng_states() -> Dict[str, Any]:
    """This process's RNG states: Python's ``random``, NumPy's global generator, torch CPU and CUDA.

    Values: ``python`` a tuple of ints (``random.getstate()``), ``numpy`` a dict with the 624 MT19937
    keys as an int64 tensor, ``torch`` a uint8 tensor, ``cuda`` a list of uint8 tensors (one per
    visible GPU; empty without CUDA).
    """
    version, internal, gauss_next = random.getstate()
    bit_generator, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    return {
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next},
        "numpy": {
            "bit_generator": str(bit_generator),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_states(states: Mapping[str, Any]) -> None:
    """Restore the states returned by ``get_rng_states`` (CUDA only when it was saved and is available).

    The tensors may sit on any device (a checkpoint loaded with ``map_location="cuda"``): generators
    take their states as CPU byte tensors, so they are moved back first.
    """
    py = states["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss_next"]))
    n = states["numpy"]
    keys = n["keys"].cpu().numpy().astype(np.uint32)
    np.random.set_state((n["bit_generator"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(states["torch"].cpu())
    cuda_states = [state.cpu() for state in states.get("cuda") or []]
    if cuda_states and torch.cuda.is_available():
        if len(cuda_states) != torch.cuda.device_count():
            raise ValueError(
                f"checkpoint holds CUDA RNG states for {len(cuda_states)} GPUs, "
                f"this process sees {torch.cuda.device_count()}"
            )
        torch.cuda.set_rng_state_all(cuda_states)


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------
def checkpoint_path(output_dir: str, iteration: int) -> str:
    """``{output_dir}/model_{iteration:07d}.pth`` (the file name sorts by iteration)."""
    return os.path.join(output_dir, f"model_{iteration:07d}.pth")


def _fsync_directory(folder: str) -> None:
    """Make a rename in ``folder`` durable (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str, write) -> None:
    """Call ``write(file_object)`` on a temporary file beside ``path``, fsync it, then rename it to ``path``.

    On any error the temporary file is removed and ``path`` is untouched; a full disk (or quota) raises
    :class:`CheckpointWriteError` "no space left on device while writing ``path``".
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    # A hidden name in the same folder (os.replace is atomic only within one file system); the
    # process id keeps two writers apart, and open(..., "xb") respects the umask, unlike mkstemp.
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    if os.path.exists(tmp):  # left by a killed earlier process that had the same id
        os.remove(tmp)
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        if os.path.exists(tmp):
            os.remove(tmp)
        if _is_disk_full(error):
            raise CheckpointWriteError(errno.ENOSPC, f"no space left on device while writing {path}") from None
        raise
    _fsync_directory(folder)


def _is_disk_full(error: BaseException) -> bool:
    """True for ENOSPC / EDQUOT, also when torch wraps it in a RuntimeError of its zip writer."""
    if isinstance(error, OSError) and error.errno in _DISK_FULL:
        return True
    cause = error.__cause__ or error.__context__
    return (isinstance(error, RuntimeError) and ("No space left on device" in str(error)
                                                 or (cause is not None and _is_disk_full(cause))))


def remove_interrupted_writes(output_dir: str) -> List[str]:
    """Delete the hidden temporary files that writes killed mid-way left in ``output_dir``; return their paths.

    Call only when no other process writes into the folder (rank 0, before training starts).
    """
    removed = []
    if os.path.isdir(output_dir):
        for name in sorted(os.listdir(output_dir)):
            if _TEMPORARY_PATTERN.match(name):
                os.remove(os.path.join(output_dir, name))
                removed.append(os.path.join(output_dir, name))
    return removed


def _unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside ``DistributedDataParallel`` / ``DataParallel`` (their ``.module``)."""
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


def save_checkpoint(
    path: str,
    *,
    model: nn.Module,
    iteration: int,
    optimizer: Optional[torch.optim.Optimizer] = None,
    scheduler: Optional[Any] = None,
    grad_scaler: Optional[Any] = None,
    config: Optional[Mapping] = None,
    class_names: Optional[Sequence[str]] = None,
    rng_states: Optional[List[Dict[str, Any]]] = None,
    extra: Optional[Mapping] = None,
    update_last: bool = True,
) -> str:
    """Write the training state to ``path`` atomically; return ``path``.

    Args:
        iteration: updates completed (a resumed run starts its loop at this iteration).
        config: the run's config as plain data (``Config.to_dict()``; a ``Config`` is converted).
        rng_states: one ``get_rng_states()`` dict per rank, in rank order (gather them with
            ``distributed.all_gather_object`` on every rank, then save on rank 0); defaults to this
            process's states as the only entry.
        extra: any further plain data (e.g. the data sampler's position).
        update_last: also point ``last_checkpoint`` in the same folder at this file.

    Call on one process only (rank 0).
    """
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    state = {
        "format": FORMAT,
        "version": VERSION,
        "iteration": int(iteration),
        "model": _unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "grad_scaler": grad_scaler.state_dict() if grad_scaler is not None else None,
        "config": dict(config) if config is not None else None,
        "class_names": list(class_names) if class_names is not None else None,
        "rng_states": rng_states if rng_states is not None else [get_rng_states()],
        "extra": dict(extra) if extra is not None else {},
    }
    atomic_write(path, lambda f: torch.save(state, f))
    if update_last:
        name = os.path.basename(path).encode()
        atomic_write(os.path.join(os.path.dirname(os.path.abspath(path)), LAST_CHECKPOINT_FILE), lambda f: f.write(name))
    return path


def checkpoint_candidates(output_dir: str) -> List[str]:
    """Checkpoints of ``output_dir``, newest first: the one ``last_checkpoint`` names, then every
    ``model_*.pth`` by decreasing iteration."""
    if not os.path.isdir(output_dir):
        return []
    found = sorted(((int(m.group(1)), name) for name in os.listdir(output_dir)
                    if (m := _NAME_PATTERN.match(name))), reverse=True)
    paths = [os.path.join(output_dir, name) for _, name in found]
    pointer = os.path.join(output_dir, LAST_CHECKPOINT_FILE)
    if os.path.isfile(pointer):
        with open(pointer) as f:
            named = os.path.join(output_dir, f.read().strip())
        if named in paths:
            paths.remove(named)
            paths.insert(0, named)
    return paths


def find_resume_checkpoint(output_dir: str, map_location: Any = "cpu", verbose: bool = True
                           ) -> Tuple[Optional[str], Optional[Dict[str, Any]]]:
    """``(path, state)`` of the newest *readable* checkpoint in ``output_dir``; ``(None, None)`` when there is none.

    An unreadable newer checkpoint (truncated, empty, not ours) is skipped with a warning on stderr
    (``verbose``). When checkpoints exist but none can be read, raises :class:`CheckpointError` naming them.
    """
    broken = []
    for path in checkpoint_candidates(output_dir):
        try:
            state = read_training_state(path, map_location=map_location)
        except CheckpointError as error:
            broken.append(path)
            if verbose:
                print(f"warning: {error}; trying the next older checkpoint", file=sys.stderr, flush=True)
            continue
        return path, state
    if broken:
        raise CheckpointError(f"{output_dir}: no loadable checkpoint to resume from (unreadable: "
                              f"{', '.join(os.path.basename(p) for p in broken)})")
    return None, None


def find_last_checkpoint(output_dir: str) -> Optional[str]:
    """The newest checkpoint in ``output_dir``: the one ``last_checkpoint`` names, if that file exists,
    else the ``model_*.pth`` with the highest iteration; ``None`` when there is none."""
    if not os.path.isdir(output_dir):
        return None
    pointer = os.path.join(output_dir, LAST_CHECKPOINT_FILE)
    if os.path.isfile(pointer):
        with open(pointer) as f:
            named = os.path.join(output_dir, f.read().strip())
        if os.path.isfile(named):
            return named
    found = []
    for name in os.listdir(output_dir):
        match = _NAME_PATTERN.match(name)
        if match:
            found.append((int(match.group(1)), name))
    return os.path.join(output_dir, max(found)[1]) if found else None


def read_training_state(path: str, map_location: Any = "cpu") -> Dict[str, Any]:
    """Read a training-state checkpoint (``weights_only=True``); raise naming the file when it is not one.

    ``FileNotFoundError`` for a missing file, :class:`CheckpointError` for an unreadable one or for a dict
    that is not a training state (e.g. torchvision weights, which load through ``model.weights`` instead).
    """
    state = read_checkpoint_file(path, map_location=map_location)
    if state.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not a loadable checkpoint (not a maskrcnn training state: no format={FORMAT!r}; "
            "model weights such as torchvision's load through model.weights=FILE)"
        )
    return state


def restore_training_state(
    state: Mapping[str, Any],
    path: str,
    *,
    model: Optional[nn.Module] = None,
    optimizer: Optional[torch.optim.Optimizer] = None,
    scheduler: Optional[Any] = None,
    grad_scaler: Optional[Any] = None,
    restore_rng: bool = True,
    rank: int = 0,
) -> None:
    """Restore the given objects from ``state`` (read from ``path``, named in errors); see :func:`load_checkpoint`."""
    for name, target in (("optimizer", optimizer), ("scheduler", scheduler), ("grad_scaler", grad_scaler)):
        if target is not None and state[name] is None:
            raise CheckpointError(f"{path}: has no {name} state to restore")
    if model is not None:
        try:
            _unwrap(model).load_state_dict(state["model"])
        except RuntimeError as error:  # missing / unexpected keys, size mismatches: the config changed the model
            lines = [line.strip() for line in str(error).splitlines() if line.strip()]
            detail = "; ".join(lines[1:3]) or lines[0]
            raise CheckpointError(f"{path}: its model does not fit the one the config builds (the architecture "
                                  f"keys changed since it was written?): {detail}") from None
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    if grad_scaler is not None and state["grad_scaler"]:
        grad_scaler.load_state_dict(state["grad_scaler"])
    if restore_rng:
        saved = state["rng_states"]
        if rank >= len(saved):
            raise CheckpointError(
                f"{path}: holds RNG states for {len(saved)} rank(s), cannot restore rank {rank}; "
                "resume with the same number of processes, or pass restore_rng=False"
            )
        set_rng_states(saved[rank])


def load_checkpoint(
    path: str,
    *,
    model: Optional[nn.Module] = None,
    optimizer: Optional[torch.optim.Optimizer] = None,
    scheduler: Optional[Any] = None,
    grad_scaler: Optional[Any] = None,
    restore_rng: bool = True,
    rank: int = 0,
    map_location: Any = "cpu",
) -> Dict[str, Any]:
    """Load a training-state checkpoint into the given objects; return the whole dict.

    The file is read with ``weights_only=True`` (:func:`read_training_state`). Each object passed is restored
    from its entry (``model`` strictly: every key must match). ``restore_rng`` sets this process's RNG states
    to the entry for ``rank``; a checkpoint saved by fewer ranks than ``rank + 1`` raises (the run cannot
    continue exactly with a different number of processes: pass ``restore_rng=False`` to continue anyway).
    A scaler saved while disabled (empty state) leaves ``grad_scaler`` as it is.
    """
    state = read_training_state(path, map_location=map_location)
    restore_training_state(state, path, model=model, optimizer=optimizer, scheduler=scheduler,
                           grad_scaler=grad_scaler, restore_rng=restore_rng, rank=rank)
    return state

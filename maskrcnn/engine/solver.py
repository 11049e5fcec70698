"""The optimizer and the learning-rate schedule: SGD with momentum, warm-up, step or cosine decay.

The learning rate is a pure function of the iteration, so a resumed run continues exactly:

    lr(i) = stage_lr(i) * warmup(i) * decay(i)

    warmup(i) = f + (1 - f) * i / W        for i < W  (linear from f = solver.warmup_factor, W = warmup_iters)
              = 1                          otherwise
    decay(i)  = gamma ** (number of steps s with s <= i)          "multistep" (solver.steps, solver.gamma)
              = (1 + cos(pi * i / max_iter)) / 2                   "cosine" (reaches 0 at max_iter)
    stage_lr(i) = base_lr of the stage containing i               (see stages.plan_stages)

``i`` is the 0-based global iteration: the learning rate used for the i-th update. The warm-up
(Goyal et al., 2017, "Accurate, Large Minibatch SGD", Sec. 2.2) spans the first W iterations of the run,
not of each stage. Without ``solver.stages`` the stage rate is ``solver.base_lr`` throughout.

The scheduler is a ``torch.optim.lr_scheduler.LambdaLR``; the trainer calls ``scheduler.step()`` once
after every ``optimizer.step()``, so during iteration i the optimizer's rate is ``lr(i)``. Its
``state_dict`` holds the iteration, not the schedule, which always comes from the config.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Iterable, List, Optional, Tuple

import torch
from torch import nn

from maskrcnn.engine.stages import Stage, plan_stages, stage_at

SCHEDULES = ("multistep", "cosine")

# Module types whose parameters count as normalization parameters for ``weight_decay_norm``.
NORM_TYPES = (
    nn.modules.batchnorm._NormBase,  # BatchNorm1d/2d/3d, SyncBatchNorm, InstanceNorm*
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)


# ----------------------------------------------------------------------------------------------
# Optimizer
# ----------------------------------------------------------------------------------------------
def _is_norm(module: nn.Module) -> bool:
    """A normalization layer: a torch norm type, or any module whose class name ends in 'Norm'
    (or 'Norm1d/2d/3d'), which covers hand-written layers such as a trainable FrozenBatchNorm."""
    name = type(module).__name__
    return isinstance(module, NORM_TYPES) or name.endswith(("Norm", "Norm1d", "Norm2d", "Norm3d"))


def parameter_groups(
    model: nn.Module,
    weight_decay: float,
    weight_decay_norm: Optional[float] = None,
    weight_decay_bias: Optional[float] = None,
) -> List[dict]:
    """SGD parameter groups by weight decay: ``[{"params": [...], "weight_decay": wd, "names": [...]}]``.

    Every parameter with ``requires_grad`` joins exactly one group, in ``model.named_parameters()``
    order. Parameters of normalization layers get ``weight_decay_norm``, other parameters named
    ``*.bias`` get ``weight_decay_bias``; ``None`` means "same as ``weight_decay``". Groups with equal
    decay are merged, so the default makes one group. ``names`` is informational (the optimizer ignores
    unknown group keys but keeps them in its ``state_dict``).
    """
    norm_of = {}  # parameter id -> True for parameters owned by a norm layer
    for module in model.modules():
        if _is_norm(module):
            for p in module.parameters(recurse=False):
                norm_of[id(p)] = True
    groups: dict = {}  # decay value -> group
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if id(p) in norm_of and weight_decay_norm is not None:
            decay = weight_decay_norm
        elif name.endswith(".bias") or name == "bias":
            decay = weight_decay if weight_decay_bias is None else weight_decay_bias
        else:
            decay = weight_decay
        group = groups.setdefault(float(decay), {"params": [], "weight_decay": float(decay), "names": []})
        group["params"].append(p)
        group["names"].append(name)
    if not groups:
        raise ValueError("model has no parameter with requires_grad=True: nothing to optimize")
    return list(groups.values())


def build_optimizer(
    model: nn.Module,
    base_lr: float,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    weight_decay_norm: Optional[float] = None,
    weight_decay_bias: Optional[float] = None,
) -> torch.optim.SGD:
    """SGD with momentum over every parameter that has ``requires_grad`` now (see ``parameter_groups``).

    Build it before applying a training stage (``stages.apply_stage``), so that it covers the
    parameters of every stage and its state loads across a stage boundary.
    """
    if base_lr < 0 or momentum < 0 or weight_decay < 0:
        raise ValueError(
            f"base_lr={base_lr}, momentum={momentum}, weight_decay={weight_decay}: all must be >= 0"
        )
    groups = parameter_groups(model, weight_decay, weight_decay_norm, weight_decay_bias)
    return torch.optim.SGD(groups, lr=base_lr, momentum=momentum, weight_decay=weight_decay)


def clip_gradients(parameters: Iterable[torch.Tensor], max_norm: float) -> float:
    """Scale gradients so their global L2 norm is at most ``max_norm``; return the norm before clipping.

    ``max_norm <= 0`` only measures the norm. With AMP's grad scaler, call ``scaler.unscale_(optimizer)``
    first, so the norm is of the true gradients. A non-finite norm is returned as is (the scaler then
    skips the step; without a scaler the trainer's non-finite check should stop the run).
    """
    grads = [p for p in parameters if p.grad is not None]
    if not grads:
        return 0.0
    if max_norm > 0:
        return float(torch.nn.utils.clip_grad_norm_(grads, max_norm))
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in grads])))


# ----------------------------------------------------------------------------------------------
# Learning-rate schedule
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LrSchedule:
    """The learning rate as a function of the iteration (see the module docstring for the formula).

    ``stages``: the planned stages (``stages.plan_stages``), each with its own base rate.
    ``base_lr`` is the rate the optimizer was built with; ``factor(i) = lr(i) / base_lr`` is what
    ``LambdaLR`` multiplies it by.
    """

    base_lr: float
    max_iter: int
    stages: Tuple[Stage, ...]
    schedule: str = "multistep"
    steps: Tuple[int, ...] = ()
    gamma: float = 0.1
    warmup_iters: int = 0
    warmup_factor: float = 0.001

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"solver.lr_schedule={self.schedule!r}: choose one of {SCHEDULES}")
        if list(self.steps) != sorted(self.steps) or len(set(self.steps)) != len(self.steps):
            raise ValueError(f"solver.steps={list(self.steps)}: must be strictly increasing iterations")
        if any(s <= 0 for s in self.steps):
            raise ValueError(f"solver.steps={list(self.steps)}: iterations must be positive")
        if self.gamma <= 0:
            raise ValueError(f"solver.gamma={self.gamma}: must be positive")
        if self.warmup_iters < 0:
            raise ValueError(f"solver.warmup_iters={self.warmup_iters}: must be >= 0")
        if not 0 < self.warmup_factor <= 1:
            raise ValueError(f"solver.warmup_factor={self.warmup_factor}: must be in (0, 1]")
        if self.base_lr <= 0:
            raise ValueError(f"base_lr={self.base_lr}: must be positive (it is the scheduler's reference)")
        if not self.stages:
            raise ValueError("stages: at least one stage is needed (use stages.plan_stages)")

    def warmup(self, iteration: int) -> float:
        if iteration >= self.warmup_iters:
            return 1.0
        alpha = iteration / self.warmup_iters
        return self.warmup_factor * (1.0 - alpha) + alpha

    def decay(self, iteration: int) -> float:
        if self.schedule == "multistep":
            return self.gamma ** bisect.bisect_right(self.steps, iteration)
        progress = min(iteration, self.max_iter) / self.max_iter
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    def lr(self, iteration: int) -> float:
        """The learning rate of the update made at 0-based ``iteration``."""
        _, stage = stage_at(self.stages, iteration)
        return stage.base_lr * self.warmup(iteration) * self.decay(iteration)

    def factor(self, iteration: int) -> float:
        """``lr(iteration) / base_lr``: the multiplier ``LambdaLR`` applies."""
        return self.lr(iteration) / self.base_lr


def lr_schedule_from_config(solver_cfg) -> LrSchedule:
    """The schedule described by the ``solver`` section of a config (attribute access).

    Reads ``base_lr, max_iter, lr_schedule, steps, gamma, warmup_iters, warmup_factor, stages, stage``.
    """
    s = solver_cfg
    stages = plan_stages(s.stages, s.max_iter, s.base_lr, default_stage=s.stage)
    return LrSchedule(
        base_lr=float(s.base_lr),
        max_iter=int(s.max_iter),
        stages=tuple(stages),
        schedule=s.lr_schedule,
        steps=tuple(int(v) for v in s.steps),
        gamma=float(s.gamma),
        warmup_iters=int(s.warmup_iters),
        warmup_factor=float(s.warmup_factor),
    )


def build_lr_scheduler(optimizer: torch.optim.Optimizer, schedule: LrSchedule) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` that sets every group's rate to ``initial_lr * schedule.factor(i)``.

    The optimizer must have been built with ``lr=schedule.base_lr``. Right after construction the
    optimizer's rate is ``lr(0)``; after k calls of ``step()`` it is ``lr(k)``. The lambda is a plain
    function, so ``state_dict()`` stores only the iteration counters.
    """
    for index, group in enumerate(optimizer.param_groups):
        lr = group.get("initial_lr", group["lr"])
        if not math.isclose(lr, schedule.base_lr, rel_tol=1e-12):
            raise ValueError(
                f"optimizer param group {index} has lr {lr}, but the schedule's base_lr is {schedule.base_lr}: "
                "build the optimizer with lr=schedule.base_lr"
            )

    def factor(iteration: int) -> float:
        return schedule.factor(iteration)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=factor)


def optimizer_from_config(model: nn.Module, solver_cfg) -> torch.optim.SGD:
    """``build_optimizer`` with ``base_lr, momentum, weight_decay, weight_decay_norm, weight_decay_bias``
    read from the ``solver`` section of a config."""
    s = solver_cfg
    return build_optimizer(
        model,
        base_lr=float(s.base_lr),
        momentum=float(s.momentum),
        weight_decay=float(s.weight_decay),
        weight_decay_norm=s.weight_decay_norm,
        weight_decay_bias=s.weight_decay_bias,
    )

"""Training stages: which parameters train, as named presets, and how a run chains them.

Fine-tuning a detector from COCO weights often starts by training only the new heads and then opens
the backbone (Matterport's Mask R-CNN calls the presets ``heads``, ``3+``, ``4+``, ``5+`` and ``all``).
A stage here is a preset name plus a length and a learning rate; ``solver.stages`` chains several:

    solver:
      stages:
        - {name: heads, iters: 40000, base_lr: 0.001}
        - {name: all,   iters: 120000, base_lr: 0.0001}

The presets, by ResNet stage (torchvision's names in brackets; ``stem`` is ``conv1`` + ``bn1``):

    preset   stem   res2      res3      res4      res5      heads (FPN, RPN, box and mask heads)
             [conv1][layer1]  [layer2]  [layer3]  [layer4]
    heads     -      -         -         -         -         trains
    5+        -      -         -         -         trains    trains
    4+        -      -         -         trains    trains    trains
    3+        -      -         trains    trains    trains    trains
    all       trains trains    trains    trains    trains    trains

(``3+`` means "ResNet stage 3 and up", i.e. ``res3``: Matterport's and detectron2's numbering.)

How parameters are recognised: a parameter belongs to a ResNet stage when one component of its dotted
name is ``stem``, ``res2``, ``res3``, ``res4`` or ``res5`` (the names of ``maskrcnn.modeling.resnet``,
e.g. ``backbone.resnet.res4.2.conv1.weight``); every other parameter (the FPN, the RPN, the ROI heads)
is a *head*. The backbone's own prefix does not matter. A model with no such names is refused, so a
renamed backbone fails loudly instead of silently training everything.

A stage can only freeze: a parameter the model itself froze (``frozen_stages`` of the ResNet, e.g. the
stem and res2 by default) stays frozen under ``all``. Hence the order the trainer follows:

    baseline = trainable_baseline(model)              # right after building / loading weights
    optimizer = build_optimizer(model, ...)           # over every baseline-trainable parameter
    apply_stage(model, "heads", baseline)             # before wrapping in DistributedDataParallel

The optimizer holds every baseline-trainable parameter in every stage (SGD skips parameters whose
``grad`` is ``None``), so its state loads across a stage boundary. DDP records which parameters
need gradients when it is constructed: re-wrap the model after changing stage.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from torch import nn

RESNET_STAGES = ("stem", "res2", "res3", "res4", "res5")
HEADS = "heads"  # the part name of every parameter outside the ResNet trunk

# preset -> the parts it trains
STAGE_PRESETS: Dict[str, Tuple[str, ...]] = {
    "heads": (HEADS,),
    "5+": ("res5", HEADS),
    "4+": ("res4", "res5", HEADS),
    "3+": ("res3", "res4", "res5", HEADS),
    "all": RESNET_STAGES + (HEADS,),
}


@dataclass(frozen=True)
class Stage:
    """One stage of a run: a preset ``name``, its length ``iters`` and learning rate ``base_lr``.

    ``start`` is the first iteration of the stage (0-based, global), ``end`` one past its last.
    """

    name: str
    start: int
    end: int
    base_lr: float


def parameter_part(name: str) -> str:
    """The part a parameter belongs to: ``'stem'``, ``'res2'`` .. ``'res5'`` or ``'heads'``.

    ``'backbone.resnet.res4.0.conv1.weight' -> 'res4'``; ``'roi_heads.box_head.fc6.weight' -> 'heads'``.
    """
    for component in name.split("."):
        if component in RESNET_STAGES:
            return component
    return HEADS


def _check_preset(stage_name: str) -> None:
    if stage_name not in STAGE_PRESETS:
        raise ValueError(f"stage name {stage_name!r} is not a preset; choose one of {list(STAGE_PRESETS)}")


def trainable_baseline(model: nn.Module) -> Dict[str, bool]:
    """``{parameter name: requires_grad}`` as the model was built: the most any stage may train."""
    return {name: p.requires_grad for name, p in model.named_parameters()}


def apply_stage(model: nn.Module, stage_name: str, baseline: Mapping[str, bool]) -> Dict[str, bool]:
    """Set ``requires_grad`` of every parameter for the preset ``stage_name``; return the new flags.

    A parameter trains when its part is in the preset and ``baseline[name]`` is True. Pass the bare
    model (not a DDP wrapper, whose names start with ``module.``). Raises ``ValueError`` for an unknown
    preset, for a model whose parameter names contain no ResNet stage, or for a baseline that does not
    name exactly the model's parameters.
    """
    _check_preset(stage_name)
    named = dict(model.named_parameters())
    if set(named) != set(baseline):
        missing = sorted(set(named) - set(baseline))[:3]
        extra = sorted(set(baseline) - set(named))[:3]
        raise ValueError(
            f"baseline does not match the model's parameters (model-only: {missing}, baseline-only: {extra}); "
            "take it with trainable_baseline(model) on the same, unwrapped model"
        )
    parts = {name: parameter_part(name) for name in named}
    if stage_name != "all" and not any(part != HEADS for part in parts.values()):
        example = next(iter(named), "<no parameters>")
        raise ValueError(
            f"stage {stage_name!r} needs ResNet stage names ({', '.join(RESNET_STAGES)}) in the parameter "
            f"names, but none has one (e.g. {example!r}); see maskrcnn/engine/stages.py"
        )
    trained_parts = STAGE_PRESETS[stage_name]
    flags = {}
    for name, parameter in named.items():
        flags[name] = bool(baseline[name]) and parts[name] in trained_parts
        parameter.requires_grad_(flags[name])
    return flags


def _row_of(name: str) -> str:
    """The table row of a parameter: its path up to the ResNet stage, or its first two components.

    ``backbone.resnet.res4.0.conv1.weight -> backbone.resnet.res4``; ``rpn.head.conv.weight -> rpn.head``.
    """
    components = name.split(".")
    for i, component in enumerate(components):
        if component in RESNET_STAGES:
            return ".".join(components[: i + 1])
    return ".".join(components[:2]) if len(components) > 2 else components[0]


def trainable_table(model: nn.Module, title: str = "") -> str:
    """A printable table: one row per module group, its parameter count and whether it trains.

        stage 'heads': 3,353,408 of 44,395,510 parameters train
        module                       parameters   trains
        backbone.resnet.stem              9,408   no
        backbone.resnet.res5         14,964,736   no
        backbone.fpn                  3,344,384   yes
    """
    rows: Dict[str, List[int]] = {}  # row -> [parameters, trainable parameters]
    for name, parameter in model.named_parameters():
        counts = rows.setdefault(_row_of(name), [0, 0])
        counts[0] += parameter.numel()
        counts[1] += parameter.numel() if parameter.requires_grad else 0
    total = sum(c[0] for c in rows.values())
    trained = sum(c[1] for c in rows.values())
    width = max([len("module")] + [len(r) for r in rows])
    lines = [f"{title + ': ' if title else ''}{trained:,} of {total:,} parameters train"]
    lines.append(f"{'module':<{width}}  {'parameters':>12}   trains")
    for row, (count, count_trained) in rows.items():
        status = "yes" if count_trained == count else ("no" if count_trained == 0 else "partly")
        lines.append(f"{row:<{width}}  {count:>12,}   {status}")
    return "\n".join(lines)


def plan_stages(
    stages: Sequence[Mapping], max_iter: int, base_lr: float, default_stage: str = "all"
) -> List[Stage]:
    """Lay ``solver.stages`` entries ``{name, iters, base_lr}`` back to back from iteration 0.

    ``solver.max_iter`` is the length of the run: stages past it are cut (or never reached), and the
    last stage runs on to ``max_iter`` when the listed lengths add up to less (so ``solver.max_iter=N``
    on the command line always means N iterations). ``base_lr`` may be left out of an entry (it then
    uses the solver's ``base_lr``); ``iters`` may be left out of the last entry only. With no entries
    the whole run is one stage, ``default_stage`` at ``base_lr``.

    Example: ``[{heads, 100, 1e-3}, {all, 200, 1e-4}]`` with ``max_iter=400`` ->
    ``[Stage('heads', 0, 100, 1e-3), Stage('all', 100, 400, 1e-4)]``.
    """
    if max_iter <= 0:
        raise ValueError(f"solver.max_iter={max_iter}: must be positive")
    if not stages:
        _check_preset(default_stage)
        return [Stage(default_stage, 0, max_iter, float(base_lr))]
    planned: List[Stage] = []
    start = 0
    for index, entry in enumerate(stages):
        where = f"solver.stages[{index}]"
        if not isinstance(entry, Mapping):
            raise ValueError(f"{where}: expected a mapping {{name, iters, base_lr}}, got {entry!r}")
        unknown = set(entry) - {"name", "iters", "base_lr"}
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {sorted(unknown)}; allowed: name, iters, base_lr")
        if "name" not in entry:
            raise ValueError(f"{where}: missing 'name' (one of {list(STAGE_PRESETS)})")
        _check_preset(entry["name"])
        last = index == len(stages) - 1
        iters: Optional[int] = entry.get("iters")
        if iters is None and not last:
            raise ValueError(f"{where}: missing 'iters' (only the last stage may leave it out)")
        if iters is not None and (not isinstance(iters, int) or isinstance(iters, bool) or iters <= 0):
            raise ValueError(f"{where}: 'iters' must be a positive integer, got {iters!r}")
        lr = entry.get("base_lr", base_lr)
        if not isinstance(lr, (int, float)) or isinstance(lr, bool) or lr < 0:
            raise ValueError(f"{where}: 'base_lr' must be a non-negative number, got {lr!r}")
        end = max_iter if last or iters is None else min(start + iters, max_iter)
        planned.append(Stage(entry["name"], start, max(end, start), float(lr)))
        start = end
        if start >= max_iter:
            break
    return [s for s in planned if s.end > s.start]


def stage_at(stages: Sequence[Stage], iteration: int) -> Tuple[int, Stage]:
    """``(index, stage)`` of the stage that contains ``iteration`` (0-based). Iterations past the end
    belong to the last stage."""
    if iteration < 0:
        raise ValueError(f"iteration={iteration}: must be >= 0")
    for index, stage in enumerate(stages):
        if iteration < stage.end:
            return index, stage
    return len(stages) - 1, stages[-1]

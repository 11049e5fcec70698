"""Model weights in and out: torchvision's names -> ours, and a class-count-aware loader.

Two kinds of foreign checkpoints load through :func:`convert_torchvision`:

- torchvision ``maskrcnn_resnet50_fpn`` state dicts (``backbone.body.*``, ``backbone.fpn.*``, ``rpn.*``,
  ``roi_heads.*``), including the older layouts torchvision itself still accepts
  (``rpn.head.conv.weight``, ``roi_heads.mask_head.mask_fcn{1..4}.*``);
- ImageNet ``resnet50`` (or 18/34/101) classification state dicts (``conv1.*``, ``layer{1..4}.*``, ``fc.*``),
  which fill only the backbone trunk; ``fc.*`` and ``num_batches_tracked`` are dropped.

The mapping of every name is spelled out in :func:`torchvision_name_map` and documented in
``docs/architecture.md``. Class indices need no reordering: both layouts put background at index 0 and
the ``num_classes`` object categories at 1..num_classes, so torchvision's ``num_classes=14`` is our 13.

:func:`load_model_weights` copies a (converted) state dict into a model. Tensors whose shape differs only
because the number of classes differs -- the class-logit and box-delta layers of the box predictor and the
mask logits -- keep the model's fresh initialization; any other mismatch is an error. It prints a table of
what was loaded, skipped (in the file, not in the model) and re-initialized.

:func:`read_checkpoint_file` is the one reader of every weights and checkpoint file (``model.weights``,
``train.py --resume`` / ``--eval-only``, ``infer.py``): ``torch.load(weights_only=True)``, and a file it cannot
use -- empty, truncated, an image renamed ``.pth``, a bare tensor, a pickle that would run code -- raises
:class:`CheckpointError` ``"FILE: not a loadable checkpoint (reason)"`` (never torch's advice to load unsafely).

Anchor surgery (:func:`adapt_rpn_anchors`): when the anchors per position differ (say a tall ratio 4 added for
long garments: 3 -> 4 anchors), the RPN's two 1x1 predictors change shape -- ``objectness`` has 1 output
channel per anchor, ``box_deltas`` 4 (channel ``4 * a + k``). The rows of the anchors that exist in both
configurations (the same ratio; the size comes from the level, since one head serves every level) are copied,
the new anchors' rows keep their fresh initialization, and the load report says which is which. The same
happens when the count is equal but the ratios or their order differ, which would otherwise load silently
into the wrong anchors. It needs the checkpoint's anchors: our checkpoints store their config
(:func:`checkpoint_anchors`); torchvision checkpoints use torchvision's (sizes 32-512, ratios 0.5, 1, 2).
"""
from __future__ import annotations

import os
import pickle
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from maskrcnn.modeling.resnet import RESNET_SPECS, resnet_state_dict_names

# Parameters whose first dimension scales with the number of classes. Only these may be re-initialized
# when a checkpoint's class count differs from the model's.
PREDICTOR_PREFIXES = (
    "roi_heads.box_predictor.class_logits.",
    "roi_heads.box_predictor.box_deltas.",
    "roi_heads.mask_head.logits.",
)

# The RPN's per-anchor predictors: rows (output channels) come in groups of 1 and 4 per anchor.
RPN_ANCHOR_PREFIXES = ("rpn.head.objectness.", "rpn.head.box_deltas.")

# Anchors of torchvision's maskrcnn_resnet50_fpn (one size per level P2-P6, ratios h/w), for its checkpoints.
TORCHVISION_ANCHORS = {"anchor_sizes": [32, 64, 128, 256, 512], "aspect_ratios": [0.5, 1.0, 2.0]}

# torchvision name pattern -> our name (applied after the backbone trunk's table); \1 keeps an index.
_HEAD_RULES = [
    (r"^backbone\.fpn\.inner_blocks\.(\d+)\.0\.", r"backbone.fpn.lateral_convs.\1."),
    (r"^backbone\.fpn\.inner_blocks\.(\d+)\.", r"backbone.fpn.lateral_convs.\1."),
    (r"^backbone\.fpn\.layer_blocks\.(\d+)\.0\.", r"backbone.fpn.output_convs.\1."),
    (r"^backbone\.fpn\.layer_blocks\.(\d+)\.", r"backbone.fpn.output_convs.\1."),
    (r"^rpn\.head\.conv\.0\.0\.", "rpn.head.conv."),
    (r"^rpn\.head\.conv\.", "rpn.head.conv."),
    (r"^rpn\.head\.cls_logits\.", "rpn.head.objectness."),
    (r"^rpn\.head\.bbox_pred\.", "rpn.head.box_deltas."),
    (r"^roi_heads\.box_head\.fc6\.", "roi_heads.box_head.fc1."),
    (r"^roi_heads\.box_head\.fc7\.", "roi_heads.box_head.fc2."),
    (r"^roi_heads\.box_predictor\.cls_score\.", "roi_heads.box_predictor.class_logits."),
    (r"^roi_heads\.box_predictor\.bbox_pred\.", "roi_heads.box_predictor.box_deltas."),
    (r"^roi_heads\.mask_head\.(\d+)\.0\.", r"roi_heads.mask_head.convs.\1."),
    (r"^roi_heads\.mask_predictor\.conv5_mask\.", "roi_heads.mask_head.deconv."),
    (r"^roi_heads\.mask_predictor\.mask_fcn_logits\.", "roi_heads.mask_head.logits."),
]


def _rename_head(name: str) -> Optional[str]:
    """Our name for a torchvision detection (non-trunk) parameter, or None if it has no counterpart."""
    legacy = re.match(r"^roi_heads\.mask_head\.mask_fcn(\d+)\.(.*)$", name)  # torchvision < 0.13 layout
    if legacy:
        return f"roi_heads.mask_head.convs.{int(legacy.group(1)) - 1}.{legacy.group(2)}"
    for pattern, replacement in _HEAD_RULES:
        if re.match(pattern, name):
            return re.sub(pattern, replacement, name)
    return None


def _infer_resnet_depth(names: List[str], prefix: str) -> int:
    """The ResNet depth whose block counts (and block kind) match the ``layer{k}.{b}`` names present."""
    counts = []
    for stage in range(1, 5):
        blocks = {int(m.group(1)) for n in names if (m := re.match(rf"^{re.escape(prefix)}layer{stage}\.(\d+)\.", n))}
        counts.append(len(blocks))
    bottleneck = any(n.startswith(f"{prefix}layer1.0.conv3.") for n in names)
    for depth, (kind, blocks_per_stage) in RESNET_SPECS.items():
        if tuple(counts) == blocks_per_stage and (kind == "bottleneck") == bottleneck:
            return depth
    raise ValueError(f"state_dict: its ResNet blocks per stage {counts} match no supported depth "
                     f"({sorted(RESNET_SPECS)})")


def torchvision_name_map(names: List[str]) -> Dict[str, str]:
    """Map each torchvision name in ``names`` to our name (names without a counterpart are left out)."""
    detection = any(n.startswith("backbone.body.") for n in names)
    trunk_prefix = "backbone.body." if detection else ""
    depth = _infer_resnet_depth(names, trunk_prefix)
    trunk = {trunk_prefix + src: "backbone.resnet." + dst for src, dst in resnet_state_dict_names(depth).items()}
    mapping = {}
    for name in names:
        if name in trunk:
            mapping[name] = trunk[name]
        elif detection:
            ours = _rename_head(name)
            if ours is not None:
                mapping[name] = ours
    return mapping


def convert_torchvision(state_dict: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """A torchvision ``maskrcnn_resnet50_fpn`` or ImageNet ``resnet*`` state dict, renamed to our names.

    Keys without a counterpart (``fc.*``, ``num_batches_tracked``) are dropped. Raises ValueError when the
    dict looks like neither format, or when a key that should map does not.
    """
    names = list(state_dict)
    if not any(n.startswith("backbone.body.") or n.startswith("conv1.") for n in names):
        raise ValueError("state_dict: neither a torchvision detection checkpoint (no 'backbone.body.*' keys) "
                         "nor an ImageNet ResNet one (no 'conv1.*' keys)")
    mapping = torchvision_name_map(names)
    ignorable = re.compile(r"(^|\.)num_batches_tracked$|^fc\.")
    unmapped = [n for n in names if n not in mapping and not ignorable.search(n)]
    if unmapped:
        raise ValueError(f"state_dict: {len(unmapped)} torchvision keys have no counterpart, e.g. {unmapped[:3]}")
    return {mapping[n]: state_dict[n] for n in names if n in mapping}


def is_torchvision_state_dict(state_dict: Mapping[str, Tensor]) -> bool:
    """True for torchvision detection or ImageNet ResNet layouts (which need :func:`convert_torchvision`)."""
    return any(n.startswith("backbone.body.") or n == "conv1.weight" for n in state_dict)


def load_model_weights(model: nn.Module, state_dict: Mapping[str, Tensor], verbose: bool = True,
                       anchors: Optional[Mapping] = None) -> Dict[str, List[str]]:
    """Copy ``state_dict`` into ``model``; return ``{"loaded", "skipped", "reinitialized", "missing", "adapted"}``
    names and ``"notes"`` (lines for the report).

    - torchvision / ImageNet layouts are converted first (:func:`convert_torchvision`);
    - ``loaded``: same name and shape, copied;
    - ``reinitialized``: a predictor tensor (see ``PREDICTOR_PREFIXES``) whose class dimension differs; the
      model keeps its fresh initialization;
    - ``skipped``: in the file but not in the model;
    - ``missing``: in the model but not in the file (keeps its initialization; e.g. the heads when loading
      an ImageNet backbone);
    - ``adapted``: an RPN predictor whose anchors differ (count, ratios or their order): the rows of the anchors
      both configurations share are copied, the others keep their initialization (:func:`adapt_rpn_anchors`);
      ``notes`` says which.
      ``anchors`` is the checkpoint's ``{"anchor_sizes", "aspect_ratios"}`` (:func:`checkpoint_anchors`);
      None means torchvision's for torchvision layouts and unknown otherwise (then a mismatch is an error).

    Any other shape mismatch raises ValueError naming the key. With ``verbose`` a table is printed.
    """
    if is_torchvision_state_dict(state_dict):
        state_dict = convert_torchvision(state_dict)
        anchors = TORCHVISION_ANCHORS if anchors is None else anchors
    own = model.state_dict()
    report: Dict[str, List[str]] = {"loaded": [], "reinitialized": [], "skipped": [], "missing": [], "adapted": [],
                                    "notes": []}
    to_load = {}
    for name, tensor in state_dict.items():
        if name not in own:
            report["skipped"].append(name)
        elif name.startswith(RPN_ANCHOR_PREFIXES) and (own[name].shape != tensor.shape
                                                         or ratios_differ(anchors, model)):
            to_load[name] = adapt_rpn_anchors(name, tensor, own[name], anchors, model, report)
            report["adapted"].append(name)
        elif own[name].shape == tensor.shape:
            to_load[name] = tensor
            report["loaded"].append(name)
        elif name.startswith(PREDICTOR_PREFIXES):
            report["reinitialized"].append(name)
        else:
            raise ValueError(f"state_dict[{name!r}]: shape {tuple(tensor.shape)} does not fit the model's "
                             f"{tuple(own[name].shape)} (only the class-dependent predictor layers may differ)")
    report["missing"] = [name for name in own if name not in state_dict]
    report["notes"] += anchor_size_notes(anchors, model)
    model.load_state_dict(to_load, strict=False)
    if verbose:
        print(format_load_report(report))
    return report


def format_load_report(report: Mapping[str, List[str]]) -> str:
    """A small text table: one row per group, with a count and the names (shortened per module)."""
    lines = [f"{'group':<14} {'count':>5}  names"]
    for group in ("loaded", "reinitialized", "skipped", "missing", "adapted"):
        names = report.get(group, [])
        if group == "adapted" and not names:
            continue
        modules = sorted({name.rsplit(".", 1)[0] for name in names})
        shown = ", ".join(modules[:6]) + (f", ... (+{len(modules) - 6} modules)" if len(modules) > 6 else "")
        lines.append(f"{group:<14} {len(names):>5}  {shown}")
    lines += list(dict.fromkeys(report.get("notes", [])))  # each note once
    return "\n".join(lines)


class CheckpointError(ValueError):
    """A weights or checkpoint file that cannot be used; the message starts with the file's path."""


def _signature_reason(path: str) -> Optional[str]:
    """Why the file's first bytes already show it is not a torch file, or None when they do not."""
    with open(path, "rb") as f:
        head = f.read(8)
    if not head:
        return "empty: 0 bytes"
    for magic, kind in _OTHER_FORMATS:
        if head.startswith(magic):
            return f"it is {kind}, not a file written by torch.save"
    return None


# First bytes of files people mistake for checkpoints. torch.save writes a zip archive (b"PK\x03\x04");
# files of old torch versions start with a pickle (b"\x80").
_OTHER_FORMATS = (
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x89PNG", "a PNG image"),
    (b"GIF8", "a GIF image"),
    (b"{", "text (JSON?)"),
    (b"\x1f\x8b", "a gzip archive (unpack it first)"),
)


def _load_error_reason(error: Exception) -> str:
    """A short, safe reason for an exception of ``torch.load(..., weights_only=True)``.

    torch's own texts for refused pickles recommend ``weights_only=False`` -- i.e. running whatever code the
    file holds -- so they are never passed on; only the offending global's name is kept.
    """
    text = str(error)
    refused = re.search(r"GLOBAL ([\w.]+)", text)  # "unsupported GLOBAL posix.system", "GLOBAL __main__.X was not"
    if refused:
        return (f"it holds a pickled reference to {refused.group(1)}, which loading would import and call; "
                "refused: a checkpoint holds only tensors and plain data")
    if "weights only load failed" in text.lower() or isinstance(error, pickle.UnpicklingError):
        return "not a file written by torch.save (unreadable pickle data)"
    if isinstance(error, EOFError):
        return "truncated (the file ends early)"
    if "zip archive" in text or "central directory" in text or "PytorchStreamReader" in text:
        return "truncated or corrupted: its zip archive is incomplete"
    first_line = text.strip().splitlines()[0] if text.strip() else ""
    return f"{type(error).__name__}: {first_line[:200]}" if first_line else type(error).__name__


def read_checkpoint_file(path: str, map_location: Any = "cpu") -> Dict[str, Any]:
    """Read a ``torch.save``-d dict safely (``weights_only=True``), or raise naming the file.

    The one reader of weights and checkpoint files, shared by ``model.weights``, ``train.py --resume`` /
    ``--eval-only`` and ``infer.py``. Raises ``FileNotFoundError`` for a missing file and
    :class:`CheckpointError` ``"FILE: not a loadable checkpoint (reason)"`` for an empty, truncated or
    foreign file, a pickle that would run code, or content that is not a dict (e.g. a bare tensor).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")

    def refuse(reason: str) -> CheckpointError:
        return CheckpointError(f"{path}: not a loadable checkpoint ({reason})")

    reason = _signature_reason(path)
    if reason:
        raise refuse(reason)
    try:
        content = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # zip, pickle and EOF errors of every kind, reworded without torch's advice
        raise refuse(_load_error_reason(error)) from None
    if not isinstance(content, Mapping):
        raise refuse(f"it holds a {type(content).__name__}, not a dict of named weights")
    return dict(content)


def load_weights_file(path: str) -> Dict[str, Tensor]:
    """Read a weights file safely (:func:`read_checkpoint_file`); return its model state dict.

    Accepts a bare state dict or a training checkpoint dict holding one under ``"model"``.
    """
    content = read_checkpoint_file(path)
    if isinstance(content.get("model"), Mapping):
        content = content["model"]
    if not all(isinstance(v, Tensor) for v in content.values()):
        raise CheckpointError(f"{path}: not a loadable checkpoint (expected a state dict of name -> tensor "
                              "or a checkpoint with a 'model' entry)")
    return dict(content)


def classes_of_weights(content: Mapping) -> tuple:
    """``(class names or None, class count of the box predictor or None)`` of a file read by
    :func:`read_checkpoint_file`: a training checkpoint names its classes; a bare state dict (ours or
    torchvision's) only tells their number, through the class-logit layer (background included)."""
    names = content.get("class_names")
    state_dict = content["model"] if isinstance(content.get("model"), Mapping) else content
    count = None
    for key in ("roi_heads.box_predictor.class_logits.weight", "roi_heads.box_predictor.cls_score.weight"):
        if isinstance(state_dict.get(key), Tensor):
            count = int(state_dict[key].shape[0]) - 1
    return (list(names) if names is not None else None), count


def check_class_names(path: str, saved: Optional[Sequence[str]], data_names: Sequence[str], data_source: str,
                      hint: str = "") -> None:
    """Refuse a checkpoint whose class names differ from the data's: its heads would mean other classes.

    ``saved`` None (a file without class names, e.g. a torchvision state dict) is not compared.
    Raises :class:`CheckpointError` listing both.
    """
    if saved is None or list(saved) == list(data_names):
        return
    raise CheckpointError(f"{path}: trained for the classes {list(saved)}, but the data ({data_source}) has "
                          f"{list(data_names)}{'; ' + hint if hint else ''}")


# ------------------------------------------------------------------------------------------ anchor surgery
def model_anchors(model: nn.Module) -> Dict[str, list]:
    """``{"anchor_sizes", "aspect_ratios"}`` of a model's RPN (one size per level, ratios shared by the levels)."""
    generator = model.rpn.anchor_generator
    return {"anchor_sizes": [size for level in generator.sizes for size in level],
            "aspect_ratios": list(generator.aspect_ratios[0])}


def match_anchors(source: Mapping, target: Mapping) -> List[Tuple[int, int]]:
    """``(target index, source index)`` of every anchor present in both anchor configurations.

    Anchor ``a`` of a position is aspect ratio ``a`` (compared to 1e-6) at the level's size. The head is shared
    by every level, so a row means a ratio whatever the sizes; when the size lists differ, the kept rows serve
    the new sizes (as they would if only the sizes had changed) and the report says so.
    """
    pairs = []
    for new, ratio in enumerate(target["aspect_ratios"]):
        olds = [old for old, r in enumerate(source["aspect_ratios"]) if abs(float(r) - float(ratio)) <= 1e-6]
        if olds:
            pairs.append((new, olds[0]))
    return pairs


def ratios_differ(source: Optional[Mapping], model: nn.Module) -> bool:
    """True when the checkpoint's anchors are known and their ratios (or order) differ from the model's."""
    if source is None:
        return False
    target = model_anchors(model)["aspect_ratios"]
    ratios = source["aspect_ratios"]
    return len(ratios) != len(target) or any(abs(float(a) - float(b)) > 1e-6 for a, b in zip(ratios, target))


def adapt_rpn_anchors(name: str, tensor: Tensor, own: Tensor, source: Optional[Mapping], model: nn.Module,
                      report: Dict[str, List[str]]) -> Tensor:
    """The model's ``own`` RPN predictor tensor with the rows of the anchors it shares with the checkpoint
    copied from ``tensor``; a note for the load report goes to ``report["notes"]``.

    ``tensor`` has ``A_src * g`` rows and ``own`` ``A * g`` (``g`` = 1 for objectness, 4 for box deltas; row
    ``g * a + k`` belongs to anchor ``a``). Raises ValueError when the checkpoint's anchors are unknown or
    disagree with its tensor's row count.
    """
    target = model_anchors(model)
    if source is None:
        raise ValueError(f"state_dict[{name!r}]: {tensor.shape[0]} rows for the model's {own.shape[0]}: the number "
                         f"of anchors per position differs, and the file stores no config saying which anchors it "
                         f"has (model.rpn.aspect_ratios); load it into a model with its own anchor settings")
    num_source, num_target = len(source["aspect_ratios"]), len(target["aspect_ratios"])
    group = own.shape[0] // num_target  # rows per anchor: 1 or 4
    if tensor.shape[0] != group * num_source or tensor.shape[1:] != own.shape[1:]:
        raise ValueError(f"state_dict[{name!r}]: shape {tuple(tensor.shape)} does not fit the checkpoint's "
                         f"{num_source} anchors per position ({list(source['aspect_ratios'])})")
    pairs = match_anchors(source, target)
    adapted = own.clone()
    for new, old in pairs:
        adapted[new * group:(new + 1) * group] = tensor[old * group:(old + 1) * group]
    kept = [target["aspect_ratios"][new] for new, _ in pairs]
    fresh = [r for i, r in enumerate(target["aspect_ratios"]) if i not in {new for new, _ in pairs}]
    report["notes"].append(f"rpn.head anchors per position {num_source} -> {num_target}: kept the checkpoint's "
                           f"ratios {kept or 'none'}, initialized new ratios {fresh or 'none'}")
    return adapted


def anchor_size_notes(source: Optional[Mapping], model: nn.Module) -> List[str]:
    """A report line when the checkpoint's anchor sizes are known and differ from the model's (shapes do not
    change, so the RPN rows load by ratio and now serve other sizes); else nothing."""
    target = model_anchors(model)
    if source is None or [float(v) for v in source["anchor_sizes"]] == [float(v) for v in target["anchor_sizes"]]:
        return []
    listed = lambda values: "[" + ", ".join(f"{float(v):g}" for v in values) + "]"  # noqa: E731
    return [f"rpn anchor sizes differ: {listed(source['anchor_sizes'])} in the checkpoint, "
            f"{listed(target['anchor_sizes'])} in the model; the RPN rows serve the new sizes by ratio"]


def checkpoint_anchors(path: str) -> Optional[Dict[str, list]]:
    """``{"anchor_sizes", "aspect_ratios"}`` from the config stored in one of our checkpoints; None for a file
    without one (a bare state dict, torchvision or ImageNet weights). Reads no tensor data (memory-mapped)."""
    try:
        content = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, OSError, pickle.UnpicklingError):  # an old (non-zip) file cannot be memory-mapped
        return None
    config = content.get("config") if isinstance(content, Mapping) else None
    rpn = (config or {}).get("model", {}).get("rpn", {}) if isinstance(config, Mapping) else {}
    if "anchor_sizes" not in rpn or "aspect_ratios" not in rpn:
        return None
    return {"anchor_sizes": list(rpn["anchor_sizes"]), "aspect_ratios": list(rpn["aspect_ratios"])}

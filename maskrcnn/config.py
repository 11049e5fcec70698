"""Configuration: the defaults tree, YAML files that override it, and dotted command-line overrides.

    cfg = load_config("configs/modanet_r50_fpn.yaml", ["solver.base_lr=0.01", "model.num_classes=13"])
    cfg.solver.base_lr            # 0.01
    print(cfg.dump())             # YAML that loads back to the same config

Three layers, each one overriding the one before:

1. the defaults tree in ``maskrcnn/defaults.py`` (every key, its default, and why);
2. a YAML file, which may name one or more parent files with ``_base_: base.yaml`` (paths relative to the
   file that names them; a list is applied left to right, then the file itself);
3. ``key=value`` overrides, the value parsed as a YAML scalar or list (``solver.steps=[100,200]``).

Every key a file or an override sets must exist in the defaults tree: an unknown key, at any depth, raises
:class:`ConfigError` naming the key, the file (or "command line"), and the closest valid key from every key at
every depth (``learning_rate`` -> ``solver.base_lr``). A value of the
wrong type raises naming the key and the expected type, and a value out of its range (``VALUE_RULES``:
``solver.base_lr=-0.01``, ``solver.max_iter=0``) naming the key and the range. Only ``yaml.safe_load`` is used: a config file can
never construct arbitrary Python objects.
"""
from __future__ import annotations

import copy
import difflib
import os
import re
from typing import Any, Iterable, Mapping, Optional

import yaml

from maskrcnn.defaults import DEFAULTS, K

BASE_KEY = "_base_"


class ConfigError(ValueError):
    """A configuration file or override that does not fit the defaults tree."""


class Config(dict):
    """A nested dict whose keys can also be read as attributes: ``cfg.model.rpn.nms_thresh``.

    It stays a plain ``dict`` underneath, so ``dict(cfg)``, ``cfg["model"]`` and ``yaml.safe_dump`` work.
    """

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no key {name!r}; keys here: {sorted(self)}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in self:
            raise AttributeError(f"config has no key {name!r}; keys here: {sorted(self)}")
        self[name] = value

    def to_dict(self) -> dict:
        """A deep copy as plain dicts and lists (for checkpoints and YAML)."""
        return {k: v.to_dict() if isinstance(v, Config) else copy.deepcopy(v) for k, v in self.items()}

    def dump(self, path: Optional[str] = None) -> str:
        """The config as YAML text; also written to ``path`` when given. ``load_config(path)`` reads it back."""
        text = yaml.dump(self.to_dict(), Dumper=_ConfigDumper, sort_keys=False)
        if path is not None:
            with open(path, "w") as f:
                f.write(text)
        return text


class _ConfigDumper(yaml.SafeDumper):
    """Sections in block style, lists of scalars on one line: `steps: [60000, 80000]`."""


def _represent_list(dumper: yaml.SafeDumper, data: list):
    flow = all(not isinstance(v, (list, dict)) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_ConfigDumper.add_representer(list, _represent_list)


# ----------------------------------------------------------------------------------------------
# The defaults tree
# ----------------------------------------------------------------------------------------------
def _defaults_as_config(tree: Mapping) -> Config:
    """Turn the ``K(...)`` declarations of ``maskrcnn.defaults`` into a Config of default values."""
    out = Config()
    for name, node in tree.items():
        out[name] = _defaults_as_config(node) if isinstance(node, Mapping) else copy.deepcopy(node.default)
    return out


def _all_dotted_keys(tree: Mapping, prefix: str = "") -> list:
    """Every key of the tree, leaves and sections, as dotted names (used to suggest the closest key)."""
    keys = []
    for name, node in tree.items():
        dotted = prefix + name
        keys.append(dotted)
        if isinstance(node, Mapping):
            keys.extend(_all_dotted_keys(node, dotted + "."))
    return keys


def _words(name: str) -> list:
    """The words of a key's last component: ``'base_lr' -> ['base', 'lr']``."""
    return [w for w in name.split("_") if w]


def _word_score(typed: str, candidate: str) -> float:
    """How well the words of ``typed`` name ``candidate`` (both last components), in [0, 0.85].

    The typed name, or its initials (``learning_rate -> lr``), equal to the candidate's last word counts most
    (``base_lr``), equal to another of its words less (``lr_schedule``).
    """
    words = _words(typed)
    forms = {typed} | ({"".join(w[0] for w in words)} if len(words) > 1 else set())
    target = _words(candidate)
    if not target:
        return 0.0
    if forms & {target[-1]}:
        return 0.85
    return 0.7 if forms & set(target) else 0.0


def _similarity(typed: str, candidate: str) -> tuple:
    """Sort key of a suggestion: the best of three similarities, then the dotted paths' similarity.

    - the last components as strings (``nms_tresh`` ~ ``nms_thresh``, at any depth);
    - the whole dotted paths (``solvr`` ~ ``solver``);
    - the words of the last components (``learning_rate`` -> ``base_lr`` through the initials ``lr``).
    """
    typed_last, candidate_last = typed.rsplit(".", 1)[-1], candidate.rsplit(".", 1)[-1]
    last = difflib.SequenceMatcher(None, typed_last, candidate_last).ratio()
    path = difflib.SequenceMatcher(None, typed, candidate).ratio()
    return max(last, path, _word_score(typed_last, candidate_last)), path


def _closest_key(dotted: str) -> str:
    """The valid dotted key most similar to ``dotted`` (a typo's most likely intent), from every key at every
    depth: ``learning_rate`` -> ``solver.base_lr``, ``model.rpn.nms_tresh`` -> ``model.rpn.nms_thresh``."""
    known_parents = {dotted.rsplit(".", 1)[0]} if "." in dotted else set()
    candidates = [c for c in _all_dotted_keys(DEFAULTS) if c not in known_parents]
    return max(candidates, key=lambda c: _similarity(dotted, c))


def _type_name(spec: K) -> str:
    if spec.default is None:
        return f"{spec.type.__name__} or null"
    if isinstance(spec.default, list):
        elem = spec.type or (type(spec.default[0]) if spec.default else None)
        return f"list of {elem.__name__}" if elem else "list"
    return type(spec.default).__name__


# YAML 1.1 (PyYAML) reads `1e-4` as the string "1e-4" (it wants `1.0e-4`); a float key takes it as a number.
_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _as_float_if_numeric_text(value: Any, expected: Optional[type]) -> Any:
    if expected is float and isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
        return float(value)
    return value


def _check_scalar(value: Any, expected: type) -> bool:
    if expected is bool:
        return isinstance(value, bool)
    if expected is float:  # an int is a valid float (`base_lr: 1` means 1.0)
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected in (dict, list):
        return isinstance(value, expected)
    return isinstance(value, expected)


def _coerce(dotted: str, spec: K, value: Any, source: str) -> Any:
    """Check ``value`` against the key's declared type; return it (ints promoted to float where needed)."""

    def fail() -> ConfigError:
        return ConfigError(
            f"{source}: key '{dotted}' expects {_type_name(spec)}, got {type(value).__name__} {value!r}"
        )

    if value is None:
        if spec.default is None:
            return None
        raise fail()
    if spec.default is None:
        expected = spec.type
    elif isinstance(spec.default, list):
        if not isinstance(value, list):
            raise fail()
        elem = spec.type or (type(spec.default[0]) if spec.default else None)
        value = [_as_float_if_numeric_text(v, elem) for v in value]
        if elem is not None and not all(_check_scalar(v, elem) for v in value):
            raise fail()
        return [float(v) if elem is float else v for v in value]
    else:
        expected = type(spec.default)
    value = _as_float_if_numeric_text(value, expected)
    if expected is not None and not _check_scalar(value, expected):
        raise fail()
    return float(value) if expected is float else value


# Value ranges of keys whose type alone does not rule out a meaningless value (checked as each is set):
# dotted key -> (test, what the key must be).
VALUE_RULES = {
    "model.num_classes": (lambda v: v >= 1, "at least 1"),
    "input.min_size": (lambda v: v >= 1, "at least 1"),
    "input.max_size": (lambda v: v >= 1, "at least 1"),
    "solver.ims_per_batch": (lambda v: v >= 1, "at least 1 (the global batch)"),
    "solver.base_lr": (lambda v: v > 0, "a positive number"),
    "solver.max_iter": (lambda v: v >= 1, "at least 1 (the number of iterations to train)"),
    "solver.momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "solver.weight_decay": (lambda v: v >= 0, "non-negative"),
    "solver.gamma": (lambda v: v > 0, "a positive number"),
    "solver.warmup_iters": (lambda v: v >= 0, "non-negative"),
    "solver.warmup_factor": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "solver.steps": (lambda v: all(s >= 1 for s in v), "a list of positive iterations"),
    "solver.checkpoint_period": (lambda v: v >= 0, "non-negative (0 = only at the end)"),
    "solver.clip_grad_norm": (lambda v: v >= 0, "non-negative (0 = off)"),
    "eval.period": (lambda v: v >= 0, "non-negative (0 = only at the end)"),
    "train.log_period": (lambda v: v >= 1, "at least 1"),
    "dataloader.num_workers": (lambda v: v >= 0, "non-negative (0 = decode in the main process)"),
}


def _check_range(dotted: str, value: Any, source: str) -> None:
    rule = VALUE_RULES.get(dotted)
    if rule is not None and value is not None and not rule[0](value):
        raise ConfigError(f"{source}: key '{dotted}' must be {rule[1]}, got {value!r}")


def _set(cfg: Config, dotted: str, value: Any, source: str) -> None:
    """Set one dotted key, checking that it exists and that the value has the declared type."""
    node: Any = DEFAULTS
    target = cfg
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, Mapping) or part not in node:
            prefix = ".".join(parts[: i + 1])
            raise ConfigError(
                f"{source}: unknown key '{prefix}'. Did you mean '{_closest_key(prefix)}'?"
            )
        node = node[part]
        if i < len(parts) - 1:
            if not isinstance(node, Mapping):
                raise ConfigError(
                    f"{source}: '{'.'.join(parts[: i + 1])}' is a value, not a section, so "
                    f"'{dotted}' does not exist"
                )
            target = target[part]
    if isinstance(node, Mapping):
        # A whole section given as a mapping: descend into it key by key.
        if not isinstance(value, Mapping):
            raise ConfigError(f"{source}: '{dotted}' is a section; give it a mapping, got {value!r}")
        for key, sub in value.items():
            _set(cfg, f"{dotted}.{key}", sub, source)
        return
    target[parts[-1]] = _coerce(dotted, node, value, source)
    _check_range(dotted, target[parts[-1]], source)


# ----------------------------------------------------------------------------------------------
# Files and overrides
# ----------------------------------------------------------------------------------------------
def _read_yaml(path: str) -> dict:
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    with open(path) as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def _apply_file(cfg: Config, path: str, seen: tuple = ()) -> None:
    """Apply a YAML file (its ``_base_`` parents first) onto ``cfg``."""
    path = os.path.abspath(path)
    if path in seen:
        chain = " -> ".join(seen + (path,))
        raise ConfigError(f"{path}: circular _base_ inheritance: {chain}")
    data = _read_yaml(path)
    bases = data.pop(BASE_KEY, [])
    for base in [bases] if isinstance(bases, str) else bases:
        if not isinstance(base, str):
            raise ConfigError(f"{path}: '{BASE_KEY}' must be a file name or a list of file names")
        _apply_file(cfg, os.path.join(os.path.dirname(path), base), seen + (path,))
    for key, value in data.items():
        _set(cfg, str(key), value, path)


def parse_override(text: str) -> tuple:
    """``"solver.base_lr=0.01"`` -> ``("solver.base_lr", 0.01)``; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"command line: override {text!r} must look like key=value (e.g. solver.base_lr=0.01)")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"command line: cannot parse the value of {key!r}: {e}") from None
    return key.strip(), value


def load_config(path: Optional[str] = None, overrides: Iterable[str] = ()) -> Config:
    """Defaults, then the YAML file at ``path`` (with its ``_base_`` chain), then ``key=value`` overrides."""
    cfg = _defaults_as_config(DEFAULTS)
    if path is not None:
        _apply_file(cfg, path)
    for text in overrides:
        key, value = parse_override(text)
        _set(cfg, key, value, "command line")
    return cfg


def config_from_dict(data: Mapping, source: str = "checkpoint") -> Config:
    """Rebuild a Config from a plain dict (as stored in checkpoints), checked like a YAML file.

    Keys the current defaults no longer know raise, naming ``source``; keys the dict lacks keep their defaults.
    """
    cfg = _defaults_as_config(DEFAULTS)
    for key, value in data.items():
        _set(cfg, str(key), value, source)
    return cfg


def commented_defaults_yaml() -> str:
    """The whole defaults tree as YAML, each key preceded by its explanation as a comment.

    ``configs/base.yaml`` is this text (regenerate it with ``python -m maskrcnn.config > configs/base.yaml``),
    so the file a user copies and edits documents every key it contains.
    """
    lines = [
        "# The defaults tree of maskrcnn, written out with the explanation of every key.",
        "# Generated from maskrcnn/defaults.py by `python -m maskrcnn.config > configs/base.yaml`.",
        "# The model keys reproduce torchvision's maskrcnn_resnet50_fpn (v1). Other configs start with",
        "# `_base_: base.yaml` and override only what differs.",
    ]

    def walk(tree: Mapping, indent: str) -> None:
        for name, node in tree.items():
            if isinstance(node, Mapping):
                lines.append(f"{indent}{name}:")
                walk(node, indent + "  ")
            else:
                lines.append(f"{indent}# {node.doc}")
                value = yaml.dump({name: node.default}, Dumper=_ConfigDumper, sort_keys=False).rstrip()
                lines.append(f"{indent}{value}")

    walk(DEFAULTS, "")
    return "\n".join(lines) + "\n"


def describe_keys() -> str:
    """Every key with its default and explanation, one per line (for `--help`-style listings and docs)."""
    lines = []

    def walk(tree: Mapping, prefix: str) -> None:
        for name, node in tree.items():
            if isinstance(node, Mapping):
                walk(node, prefix + name + ".")
            else:
                lines.append(f"{prefix + name} = {node.default!r}  # {node.doc}")

    walk(DEFAULTS, "")
    return "\n".join(lines)


if __name__ == "__main__":
    print(commented_defaults_yaml(), end="")

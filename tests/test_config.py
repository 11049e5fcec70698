"""Tests of maskrcnn.config: defaults, YAML with _base_, dotted overrides, errors, dump round trip."""
import os
import textwrap
from collections.abc import Mapping

import pytest

from maskrcnn.config import (
    ConfigError,
    commented_defaults_yaml,
    config_from_dict,
    load_config,
    parse_override,
)
from maskrcnn.defaults import DEFAULTS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def leaves(tree, prefix=""):
    for name, node in tree.items():
        if isinstance(node, Mapping):
            yield from leaves(node, prefix + name + ".")
        else:
            yield prefix + name, node


def test_every_key_has_a_real_comment():
    for dotted, spec in leaves(DEFAULTS):
        assert isinstance(spec.doc, str) and len(spec.doc.split()) >= 4, f"{dotted} needs a comment"
        if spec.default is None or spec.default == []:
            # type=object is allowed for lists that mix kinds (e.g. category names or ids).
            assert spec.type is not None, f"{dotted}: a None or [] default must declare type="


def test_defaults_and_attribute_access():
    cfg = load_config()
    assert cfg.solver.base_lr == 0.02
    assert cfg["solver"]["momentum"] == 0.9
    assert cfg.input.pixel_mean == [0.485, 0.456, 0.406]
    with pytest.raises(AttributeError, match="no key 'nope'"):
        cfg.solver.nope


def test_yaml_file_with_base_chain_and_overrides(tmp_path):
    write(tmp_path, "a.yaml", "solver:\n  base_lr: 0.5\n  max_iter: 10\n")
    write(tmp_path, "b.yaml", "solver:\n  max_iter: 20\nseed: 3\n")
    sub = tmp_path / "sub"
    sub.mkdir()
    child = write(sub, "child.yaml", "_base_: [../a.yaml, ../b.yaml]\nsolver:\n  momentum: 0.8\n")
    cfg = load_config(child, ["solver.base_lr=1", "input.pixel_std=[1, 2, 3]"])
    assert cfg.solver.max_iter == 20  # b after a
    assert cfg.seed == 3
    assert cfg.solver.momentum == 0.8  # the file itself after its bases
    assert cfg.solver.base_lr == 1.0 and isinstance(cfg.solver.base_lr, float)  # int accepted as float
    assert cfg.input.pixel_std == [1.0, 2.0, 3.0]
    assert cfg.solver.weight_decay == 1e-4  # untouched default


def test_unknown_key_in_file_names_key_file_and_closest(tmp_path):
    path = write(tmp_path, "typo.yaml", "solver:\n  base_lrr: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert "solver.base_lrr" in msg and path in msg and "solver.base_lr'" in msg


def test_unknown_top_level_and_override_keys():
    with pytest.raises(ConfigError, match=r"unknown key 'solvr'.*Did you mean 'solver'"):
        load_config(overrides=["solvr.base_lr=0.1"])
    with pytest.raises(ConfigError, match=r"command line: unknown key 'input.min_sise'.*'input.min_size'"):
        load_config(overrides=["input.min_sise=600"])


@pytest.mark.parametrize("typed, suggested", [
    ("learning_rate", "solver.base_lr"),         # the initials of its words name the last word of base_lr
    ("solver.learning_rate", "solver.base_lr"),
    ("lr", "solver.base_lr"),
    ("max_iters", "solver.max_iter"),             # a leaf typed without its section, found at its depth
    ("weights", "model.weights"),
    ("model.rpn.nms_tresh", "model.rpn.nms_thresh"),
    ("model.roi_heads.nms_tresh", "model.roi_heads.nms_thresh"),
    ("trian", "train"),
])
def test_suggestions_come_from_every_key_at_every_depth(typed, suggested):
    with pytest.raises(ConfigError, match=rf"unknown key '{typed}'. Did you mean '{suggested}'\?$"):
        load_config(overrides=[f"{typed}=1"])


@pytest.mark.parametrize("override, message", [
    ("solver.base_lr=-0.01", "key 'solver.base_lr' must be a positive number, got -0.01"),
    ("solver.base_lr=0", "key 'solver.base_lr' must be a positive number, got 0.0"),
    ("solver.max_iter=0", "key 'solver.max_iter' must be at least 1 (the number of iterations to train), got 0"),
    ("solver.max_iter=-5", "key 'solver.max_iter' must be at least 1 (the number of iterations to train), got -5"),
    ("solver.ims_per_batch=0", "key 'solver.ims_per_batch' must be at least 1 (the global batch), got 0"),
    ("solver.steps=[0, 10]", "key 'solver.steps' must be a list of positive iterations, got [0, 10]"),
    ("solver.momentum=1.5", "key 'solver.momentum' must be in [0, 1), got 1.5"),
    ("dataloader.num_workers=-1", "key 'dataloader.num_workers' must be non-negative"),
    ("train.log_period=0", "key 'train.log_period' must be at least 1, got 0"),
])
def test_values_out_of_range_name_the_key_and_the_range(override, message):
    with pytest.raises(ConfigError) as error:
        load_config(overrides=[override])
    assert str(error.value).startswith("command line: ") and message in str(error.value)


def test_values_out_of_range_in_a_file_name_the_file(tmp_path):
    path = write(tmp_path, "negative.yaml", "solver:\n  base_lr: -0.01\n")
    with pytest.raises(ConfigError, match=r"negative.yaml: key 'solver.base_lr' must be a positive number"):
        load_config(path)


def test_wrong_type_names_key_and_expected_type(tmp_path):
    with pytest.raises(ConfigError, match=r"key 'solver.max_iter' expects int, got str 'many'"):
        load_config(overrides=["solver.max_iter=many"])
    with pytest.raises(ConfigError, match=r"key 'solver.max_iter' expects int, got float"):
        load_config(overrides=["solver.max_iter=1.5"])
    path = write(tmp_path, "bad.yaml", "input:\n  pixel_mean: 0.5\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: key 'input.pixel_mean' expects list of float"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"'solver' is a section"):
        load_config(overrides=["solver=3"])
    with pytest.raises(ConfigError, match=r"'seed' is a value, not a section"):
        load_config(overrides=["seed.x=3"])


def test_exponent_without_a_dot_is_a_float(tmp_path):
    # PyYAML reads `1e-4` as a string (YAML 1.1 wants `1.0e-4`); float keys accept it as the number.
    cfg = load_config(overrides=["solver.base_lr=1e-4", "input.pixel_std=[1e-1, 2, 3E+0]"])
    assert cfg.solver.base_lr == 1e-4 and isinstance(cfg.solver.base_lr, float)
    assert cfg.input.pixel_std == [0.1, 2.0, 3.0]
    path = write(tmp_path, "exp.yaml", "solver:\n  weight_decay: 5e-5\n")
    assert load_config(path).solver.weight_decay == 5e-5
    with pytest.raises(ConfigError, match=r"key 'solver.max_iter' expects int, got str '1e3'"):
        load_config(overrides=["solver.max_iter=1e3"])
    with pytest.raises(ConfigError, match=r"key 'solver.base_lr' expects float, got str '1e-4x'"):
        load_config(overrides=["solver.base_lr=1e-4x"])


def test_override_parsing():
    assert parse_override("solver.base_lr=0.01") == ("solver.base_lr", 0.01)
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])
    assert parse_override("a=true") == ("a", True)
    assert parse_override("output_dir=out/x=1") == ("output_dir", "out/x=1")
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("solver.base_lr")


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*missing.yaml"):
        load_config(str(tmp_path / "missing.yaml"))
    a = write(tmp_path, "loop_a.yaml", "_base_: loop_b.yaml\n")
    write(tmp_path, "loop_b.yaml", "_base_: loop_a.yaml\n")
    with pytest.raises(ConfigError, match="circular _base_"):
        load_config(a)
    lst = write(tmp_path, "list.yaml", "- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(lst)
    broken = write(tmp_path, "broken.yaml", "solver: [\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_config(broken)


def test_safe_load_only(tmp_path):
    path = write(tmp_path, "evil.yaml", "seed: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_dump_round_trip(tmp_path):
    cfg = load_config(overrides=["solver.base_lr=0.005", "seed=7", "output_dir=runs/a b"])
    path = str(tmp_path / "dumped.yaml")
    cfg.dump(path)
    again = load_config(path)
    assert again == cfg
    assert config_from_dict(cfg.to_dict()) == cfg


def test_base_yaml_is_the_commented_defaults_tree():
    base = os.path.join(REPO, "configs", "base.yaml")
    with open(base) as f:
        text = f.read()
    assert text == commented_defaults_yaml(), (
        "configs/base.yaml is out of date: run `python -m maskrcnn.config > configs/base.yaml`"
    )
    assert load_config(base) == load_config()


def test_every_shipped_config_loads():
    configs = os.path.join(REPO, "configs")
    for name in sorted(os.listdir(configs)):
        if name.endswith(".yaml"):
            load_config(os.path.join(configs, name))

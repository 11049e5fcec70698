"""Training-stage presets on a tiny stand-in model with the real model's names, and stage planning."""
import pytest
from torch import nn

from maskrcnn.engine.stages import (
    Stage,
    apply_stage,
    parameter_part,
    plan_stages,
    stage_at,
    trainable_baseline,
    trainable_table,
)


def _block(channels=2):
    return nn.Sequential(nn.Conv2d(channels, channels, 1, bias=False))


class TinyResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Module()
        self.stem.conv = nn.Conv2d(3, 2, 1, bias=False)
        for name in ("res2", "res3", "res4", "res5"):
            self.add_module(name, _block())


class TinyBackbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.resnet = TinyResNet()
        self.fpn = nn.Module()
        self.fpn.lateral = nn.Conv2d(2, 4, 1)  # weight 8 + bias 4


class TinyMaskRCNN(nn.Module):
    """Names like the real model: backbone.resnet.{stem,res2..res5}, backbone.fpn, rpn, roi_heads."""

    def __init__(self):
        super().__init__()
        self.backbone = TinyBackbone()
        self.rpn = nn.Module()
        self.rpn.head = nn.Conv2d(4, 3, 1)  # 12 + 3
        self.roi_heads = nn.Module()
        self.roi_heads.box_head = nn.Linear(4, 5)  # 20 + 5
        self.roi_heads.mask_predictor = nn.Conv2d(4, 2, 1)  # 8 + 2


def _trainable_parts(model):
    return sorted({parameter_part(n) for n, p in model.named_parameters() if p.requires_grad})


def test_parameter_part():
    assert parameter_part("backbone.resnet.res4.2.conv1.weight") == "res4"
    assert parameter_part("backbone.resnet.stem.conv.weight") == "stem"
    assert parameter_part("backbone.fpn.lateral_convs.0.weight") == "heads"
    assert parameter_part("roi_heads.box_head.fc6.weight") == "heads"
    assert parameter_part("rpn.head.conv.weight") == "heads"


@pytest.mark.parametrize("preset, parts", [
    ("heads", ["heads"]),
    ("5+", ["heads", "res5"]),
    ("4+", ["heads", "res4", "res5"]),
    ("3+", ["heads", "res3", "res4", "res5"]),
    ("all", ["heads", "res2", "res3", "res4", "res5", "stem"]),
])
def test_presets(preset, parts):
    model = TinyMaskRCNN()
    baseline = trainable_baseline(model)
    flags = apply_stage(model, preset, baseline)
    assert _trainable_parts(model) == parts
    assert flags == {n: p.requires_grad for n, p in model.named_parameters()}


def test_a_stage_never_unfreezes_what_the_model_froze():
    model = TinyMaskRCNN()
    for p in list(model.backbone.resnet.stem.parameters()) + list(model.backbone.resnet.res2.parameters()):
        p.requires_grad_(False)  # like ResNet(frozen_stages=2)
    baseline = trainable_baseline(model)
    apply_stage(model, "heads", baseline)
    assert _trainable_parts(model) == ["heads"]
    apply_stage(model, "all", baseline)  # the second stage of a chained run
    assert _trainable_parts(model) == ["heads", "res3", "res4", "res5"]


def test_resnet50_presets_freeze_torchvisions_counts():
    # docs/conventions.md: ResNet-50 in torchvision's parameter order; trainable_layers = 0..5 freezes the first
    # 53, 43, 24, 11, 1, 0 parameters. "heads" = trainable_layers 0, "5+" = 1, "4+" = 2, "3+" = 3.
    from maskrcnn.modeling.resnet import ResNet

    trunk = ResNet(depth=50, frozen_stages=0)
    baseline = trainable_baseline(trunk)
    for preset, frozen in (("5+", 43), ("4+", 24), ("3+", 11), ("all", 0)):
        apply_stage(trunk, preset, baseline)
        flags = [p.requires_grad for p in trunk.parameters()]
        assert len(flags) == 53
        assert flags == [False] * frozen + [True] * (53 - frozen), preset
    # "heads" leaves no trunk parameter trainable (the trunk alone has no head parameters).
    apply_stage(trunk, "heads", baseline)
    assert not any(p.requires_grad for p in trunk.parameters())


def test_trainable_table():
    model = TinyMaskRCNN()
    apply_stage(model, "5+", trainable_baseline(model))
    text = trainable_table(model, title="stage '5+'")
    assert text.splitlines() == [
        "stage '5+': 66 of 84 parameters train",
        "module                      parameters   trains",
        "backbone.resnet.stem                 6   no",
        "backbone.resnet.res2                 4   no",
        "backbone.resnet.res3                 4   no",
        "backbone.resnet.res4                 4   no",
        "backbone.resnet.res5                 4   yes",
        "backbone.fpn                        12   yes",
        "rpn.head                            15   yes",
        "roi_heads.box_head                  25   yes",
        "roi_heads.mask_predictor            10   yes",
    ]
    model.roi_heads.box_head.bias.requires_grad_(False)
    text = trainable_table(model)
    assert text.splitlines()[0] == "61 of 84 parameters train"  # the box head's 5 biases no longer train
    assert "roi_heads.box_head                  25   partly" in text


def test_errors():
    model = TinyMaskRCNN()
    baseline = trainable_baseline(model)
    with pytest.raises(ValueError, match="not a preset"):
        apply_stage(model, "2+", baseline)
    with pytest.raises(ValueError, match="baseline does not match"):
        apply_stage(model, "all", {"x": True})
    renamed = nn.Sequential(nn.Linear(2, 2))  # names "0.weight": no ResNet stage to recognise
    with pytest.raises(ValueError, match="needs ResNet stage names"):
        apply_stage(renamed, "heads", trainable_baseline(renamed))


def test_plan_stages():
    # The seeds' recipe: heads at 1e-3, then all layers at 1e-4, then at 1e-5.
    entries = [{"name": "heads", "iters": 100, "base_lr": 1e-3}, {"name": "all", "iters": 200, "base_lr": 1e-4},
               {"name": "all", "iters": 100, "base_lr": 1e-5}]
    assert plan_stages(entries, 400, 0.02) == [Stage("heads", 0, 100, 1e-3), Stage("all", 100, 300, 1e-4),
                                               Stage("all", 300, 400, 1e-5)]
    # max_iter shorter: later stages are cut; longer: the last stage runs on.
    assert plan_stages(entries, 150, 0.02) == [Stage("heads", 0, 100, 1e-3), Stage("all", 100, 150, 1e-4)]
    assert plan_stages(entries, 1000, 0.02)[-1] == Stage("all", 300, 1000, 1e-5)
    assert plan_stages(entries, 100, 0.02) == [Stage("heads", 0, 100, 1e-3)]
    # Defaults: a missing base_lr is the solver's; a missing iters on the last stage runs to the end.
    assert plan_stages([{"name": "4+", "iters": 10}, {"name": "all"}], 30, 0.5) == [
        Stage("4+", 0, 10, 0.5), Stage("all", 10, 30, 0.5)]
    assert plan_stages([], 50, 0.01, default_stage="3+") == [Stage("3+", 0, 50, 0.01)]


@pytest.mark.parametrize("entries, message", [
    ([{"name": "heads"}, {"name": "all", "iters": 5}], r"solver.stages\[0\]: missing 'iters'"),
    ([{"name": "bogus", "iters": 5}], "not a preset"),
    ([{"iters": 5}], r"solver.stages\[0\]: missing 'name'"),
    ([{"name": "all", "iters": 0}], "positive integer"),
    ([{"name": "all", "iters": 5, "lr": 0.1}], r"unknown field\(s\) \['lr'\]"),
    ([{"name": "all", "iters": 5, "base_lr": -1}], "non-negative"),
    (["heads"], "expected a mapping"),
])
def test_plan_stages_errors(entries, message):
    with pytest.raises(ValueError, match=message):
        plan_stages(entries, 100, 0.01)


def test_stage_at():
    stages = plan_stages([{"name": "heads", "iters": 100}, {"name": "all", "iters": 200}], 300, 0.01)
    assert stage_at(stages, 0) == (0, stages[0])
    assert stage_at(stages, 99) == (0, stages[0])
    assert stage_at(stages, 100) == (1, stages[1])
    assert stage_at(stages, 299) == (1, stages[1])
    assert stage_at(stages, 300) == (1, stages[1])  # past the end: the last stage
    with pytest.raises(ValueError):
        stage_at(stages, -1)

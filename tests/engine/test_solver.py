"""SGD parameter groups, the learning-rate schedule (hand-computed values), resume, gradient clipping."""
import math

import pytest
import torch
from torch import nn

from maskrcnn.config import load_config
from maskrcnn.engine.solver import (
    LrSchedule,
    build_lr_scheduler,
    build_optimizer,
    clip_gradients,
    lr_schedule_from_config,
    optimizer_from_config,
    parameter_groups,
)
from maskrcnn.engine.stages import Stage, plan_stages


def _schedule(**kwargs):
    base_lr = kwargs.pop("base_lr", 0.02)
    max_iter = kwargs.pop("max_iter", 500)
    stages = tuple(kwargs.pop("stages", None) or plan_stages([], max_iter, base_lr))
    return LrSchedule(base_lr=base_lr, max_iter=max_iter, stages=stages, **kwargs)


def test_warmup_then_multistep_by_hand():
    s = _schedule(base_lr=0.02, max_iter=500, steps=(300, 400), gamma=0.1, warmup_iters=100, warmup_factor=0.001)
    assert s.lr(0) == pytest.approx(0.02 * 0.001, rel=1e-12)          # warm-up starts at factor 0.001
    assert s.lr(50) == pytest.approx(0.02 * 0.5005, rel=1e-12)        # 0.001 * 0.5 + 0.5
    assert s.lr(99) == pytest.approx(0.02 * (0.001 * 0.01 + 0.99), rel=1e-12)
    assert s.lr(100) == pytest.approx(0.02, rel=1e-12)
    assert s.lr(299) == pytest.approx(0.02, rel=1e-12)
    assert s.lr(300) == pytest.approx(0.002, rel=1e-12)               # decayed at the step itself
    assert s.lr(399) == pytest.approx(0.002, rel=1e-12)
    assert s.lr(400) == pytest.approx(0.0002, rel=1e-12)
    assert s.factor(400) == pytest.approx(0.01, rel=1e-12)


def test_cosine_by_hand():
    s = _schedule(base_lr=0.02, max_iter=1000, schedule="cosine")
    assert s.lr(0) == pytest.approx(0.02, rel=1e-12)
    assert s.lr(250) == pytest.approx(0.02 * (1 + math.sqrt(0.5)) / 2, rel=1e-12)  # 0.0170711
    assert s.lr(500) == pytest.approx(0.01, rel=1e-12)
    assert s.lr(1000) == pytest.approx(0.0, abs=1e-18)
    # warm-up multiplies the cosine: at 10 of 20 warm-up iterations, factor (0.001 + 1) / 2
    w = _schedule(base_lr=0.02, max_iter=1000, schedule="cosine", warmup_iters=20)
    assert w.lr(10) == pytest.approx(0.02 * 0.5005 * (1 + math.cos(math.pi * 0.01)) / 2, rel=1e-12)


def test_stages_set_the_rate():
    # The seeds' recipe: heads at 1e-3 for 100, all at 1e-4 for 200, then 1e-5; no decay steps.
    stages = plan_stages([{"name": "heads", "iters": 100, "base_lr": 1e-3}, {"name": "all", "iters": 200, "base_lr": 1e-4},
                          {"name": "all", "iters": 100, "base_lr": 1e-5}], 400, 1e-3)
    s = _schedule(base_lr=1e-3, max_iter=400, stages=stages, steps=(), warmup_iters=10, warmup_factor=0.1)
    assert s.lr(0) == pytest.approx(1e-4, rel=1e-12)                 # warm-up at the start of the run only
    assert s.lr(5) == pytest.approx(1e-3 * 0.55, rel=1e-12)
    assert s.lr(99) == pytest.approx(1e-3, rel=1e-12)
    assert s.lr(100) == pytest.approx(1e-4, rel=1e-12)
    assert s.lr(299) == pytest.approx(1e-4, rel=1e-12)
    assert s.lr(300) == pytest.approx(1e-5, rel=1e-12)
    assert s.lr(399) == pytest.approx(1e-5, rel=1e-12)


def _model():
    torch.manual_seed(0)
    # names: 0 conv, 1 batch norm, 2 group norm, 3 flatten (no parameters), 4 linear
    return nn.Sequential(nn.Conv2d(1, 2, 3, bias=True), nn.BatchNorm2d(2), nn.GroupNorm(1, 2), nn.Flatten(),
                         nn.Linear(2 * 4 * 4, 3))


def test_scheduler_follows_the_schedule_and_resumes_exactly():
    s = _schedule(base_lr=0.02, max_iter=40, steps=(20, 30), warmup_iters=10)
    model = _model()
    optimizer = build_optimizer(model, base_lr=0.02)
    scheduler = build_lr_scheduler(optimizer, s)
    seen = []
    for iteration in range(40):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
        if iteration == 24:
            saved = (optimizer.state_dict(), scheduler.state_dict())
    assert seen == pytest.approx([s.lr(i) for i in range(40)], rel=1e-12)
    # A fresh optimizer and scheduler loaded at iteration 25 continue with the same rates.
    optimizer2 = build_optimizer(_model(), base_lr=0.02)
    scheduler2 = build_lr_scheduler(optimizer2, s)
    optimizer2.load_state_dict(saved[0])
    scheduler2.load_state_dict(saved[1])
    resumed = []
    for _ in range(25, 40):
        resumed.append(optimizer2.param_groups[0]["lr"])
        optimizer2.step()
        scheduler2.step()
    assert resumed == seen[25:]
    assert set(saved[1]) >= {"last_epoch", "base_lrs"} and saved[1]["lr_lambdas"] == [None]


def test_parameter_groups_by_decay():
    model = _model()
    groups = parameter_groups(model, weight_decay=1e-4)
    assert len(groups) == 1 and len(groups[0]["params"]) == 8
    groups = parameter_groups(model, weight_decay=1e-4, weight_decay_norm=0.0)
    by_decay = {g["weight_decay"]: g["names"] for g in groups}
    assert by_decay[0.0] == ["1.weight", "1.bias", "2.weight", "2.bias"]
    assert by_decay[1e-4] == ["0.weight", "0.bias", "4.weight", "4.bias"]
    groups = parameter_groups(model, weight_decay=1e-4, weight_decay_norm=0.0, weight_decay_bias=0.5)
    by_decay = {g["weight_decay"]: g["names"] for g in groups}
    assert by_decay == {1e-4: ["0.weight", "4.weight"], 0.5: ["0.bias", "4.bias"],
                        0.0: ["1.weight", "1.bias", "2.weight", "2.bias"]}
    model[0].weight.requires_grad_(False)
    assert "0.weight" not in sum((g["names"] for g in parameter_groups(model, 1e-4)), [])


def test_sgd_update_matches_the_formula():
    # torch's SGD: buf = momentum * buf + (g + wd * p); p -= lr * buf. Two steps, checked in float64.
    p = nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    model = nn.Module()
    model.weight = p
    optimizer = build_optimizer(model, base_lr=0.1, momentum=0.9, weight_decay=0.01)
    grads = [torch.tensor([0.5, 0.25], dtype=torch.float64), torch.tensor([-1.0, 2.0], dtype=torch.float64)]
    expected, buf = torch.tensor([1.0, -2.0], dtype=torch.float64), None
    for g in grads:
        d = g + 0.01 * expected
        buf = d if buf is None else 0.9 * buf + d
        expected = expected - 0.1 * buf
        p.grad = g.clone()
        optimizer.step()
    torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-15)


def test_a_parameter_without_gradient_does_not_move():
    model = _model()
    optimizer = build_optimizer(model, base_lr=0.1, weight_decay=0.5)
    model[0].weight.requires_grad_(False)  # frozen by a stage after the optimizer was built
    before, before_linear = model[0].weight.detach().clone(), model[4].weight.detach().clone()
    model(torch.randn(2, 1, 6, 6)).sum().backward()
    optimizer.step()
    assert torch.equal(model[0].weight, before)  # no update, no weight decay
    assert not torch.equal(model[4].weight, before_linear)  # the rest of the model did train


def test_clip_gradients():
    a, b = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    a.grad, b.grad = torch.tensor([3.0]), torch.tensor([4.0])
    assert clip_gradients([a, b], max_norm=0) == pytest.approx(5.0)  # measure only
    assert a.grad.item() == 3.0
    assert clip_gradients([a, b], max_norm=1.0) == pytest.approx(5.0)
    assert a.grad.item() == pytest.approx(0.6, rel=1e-5) and b.grad.item() == pytest.approx(0.8, rel=1e-5)
    assert clip_gradients([nn.Parameter(torch.zeros(1))], max_norm=1.0) == 0.0  # no gradients at all


@pytest.mark.parametrize("kwargs, message", [
    ({"schedule": "poly"}, "lr_schedule='poly'"),
    ({"steps": (400, 300)}, "strictly increasing"),
    ({"gamma": 0.0}, "gamma"),
    ({"warmup_factor": 0.0}, "warmup_factor"),
    ({"warmup_iters": -1}, "warmup_iters"),
])
def test_schedule_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _schedule(**kwargs)


def test_scheduler_needs_the_schedules_base_lr():
    optimizer = build_optimizer(_model(), base_lr=0.01)
    with pytest.raises(ValueError, match="base_lr"):
        build_lr_scheduler(optimizer, _schedule(base_lr=0.02))


def test_from_config():
    cfg = load_config(overrides=[
        "solver.max_iter=300", "solver.steps=[200]", "solver.warmup_iters=0", "solver.base_lr=0.01",
        "solver.stages=[{name: heads, iters: 100, base_lr: 0.001}, {name: all}]", "solver.weight_decay_norm=0",
    ])
    schedule = lr_schedule_from_config(cfg.solver)
    assert schedule.stages == (Stage("heads", 0, 100, 0.001), Stage("all", 100, 300, 0.01))
    assert [schedule.lr(i) for i in (0, 100, 199, 200)] == pytest.approx([0.001, 0.01, 0.01, 0.001], rel=1e-12)
    optimizer = optimizer_from_config(_model(), cfg.solver)
    assert sorted(g["weight_decay"] for g in optimizer.param_groups) == [0.0, 1e-4]
    assert optimizer.defaults["momentum"] == 0.9 and optimizer.param_groups[0]["lr"] == 0.01

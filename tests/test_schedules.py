"""Learning-rate schedules: their formulas, PyTorch's schedulers, the optimizer they drive."""

import math

import numpy as np
import pytest

import cnnumpy as cn
from cnnumpy.schedules import build_schedule, make_schedule


def test_constant_and_step_decay():
    assert cn.Constant(0.3).lr(1000) == 0.3
    schedule = cn.StepDecay(1.0, step_size=3, gamma=0.5)
    assert [schedule.lr(t) for t in range(7)] == [1, 1, 1, 0.5, 0.5, 0.5, 0.25]


def test_warmup_cosine_formula():
    schedule = cn.WarmupCosine(0.8, total_steps=10, warmup_steps=4, min_lr=0.1,
                               warmup_start_factor=0.25)
    assert schedule.lr(0) == pytest.approx(0.2)
    assert schedule.lr(2) == pytest.approx(0.8 * (0.25 + 0.75 * 2 / 4))
    assert schedule.lr(4) == pytest.approx(0.8)
    assert schedule.lr(7) == pytest.approx(0.1 + 0.7 * (1 + math.cos(math.pi * 3 / 6)) / 2)
    assert schedule.lr(10) == pytest.approx(0.1) and schedule.lr(50) == pytest.approx(0.1)


def test_one_cycle_formula_and_momentum():
    schedule = cn.OneCycle(1.0, total_steps=100)  # phase ends: 29 and 99
    assert schedule.lr(0) == pytest.approx(1 / 25)
    assert schedule.lr(29) == pytest.approx(1.0)
    assert schedule.lr(99) == pytest.approx(1 / 25 / 1e4)
    middle = (99 + 29) / 2  # halfway down: the mean of peak and floor
    assert schedule.lr(64) == pytest.approx(
        1e-6 * 4 + (1 - 4e-6) / 2 * (1 + math.cos(math.pi * (64 - 29) / 70)))
    assert schedule.lr(int(middle)) == pytest.approx((1 + 4e-6) / 2, rel=1e-12)
    assert schedule.momentum(0) == 0.95 and schedule.momentum(29) == pytest.approx(0.85)
    assert schedule.momentum(99) == pytest.approx(0.95)
    assert cn.OneCycle(1.0, 100, cycle_momentum=False).momentum(10) is None
    assert schedule.lr(150) == schedule.lr(99)


def test_apply_sets_lr_and_momentum(rng):
    model = cn.Linear(2, 2, rng=rng)
    sgd, adam = cn.SGD(model, lr=1.0, momentum=0.9), cn.Adam(model)
    schedule = cn.OneCycle(0.5, total_steps=20)
    assert schedule.apply(sgd, 0) == pytest.approx(0.02)
    assert sgd.momentum == 0.95
    schedule.apply(adam, 5)
    assert adam.lr == schedule.lr(5) and adam.betas == (schedule.momentum(5), 0.999)
    with pytest.raises(ValueError, match="step must be an integer >= 0"):
        schedule.apply(sgd, -1)


@pytest.mark.parametrize("schedule", [
    cn.Constant(0.1), cn.StepDecay(0.1, 7, 0.5), cn.WarmupCosine(0.1, 40, 5, 1e-3),
    cn.OneCycle(0.05, 40, pct_start=0.25, cycle_momentum=False),
])
def test_config_round_trip(schedule):
    rebuilt = build_schedule(schedule.config())
    assert [rebuilt.lr(t) for t in range(45)] == [schedule.lr(t) for t in range(45)]
    assert repr(rebuilt) == repr(schedule)


def test_make_schedule_and_errors():
    assert make_schedule("step", 1.0, epochs=6, steps_per_epoch=10).lr(20) == pytest.approx(0.1)
    assert make_schedule("cosine", 1.0, epochs=5, steps_per_epoch=10).lr(10) == 1.0
    assert make_schedule("onecycle", 1.0, epochs=5, steps_per_epoch=10).total_steps == 50
    with pytest.raises(ValueError, match="unknown schedule 'linear'"):
        make_schedule("linear", 1.0, 1, 1)
    with pytest.raises(ValueError, match="unknown schedule 'nope'"):
        build_schedule({"name": "nope"})
    with pytest.raises(ValueError, match="step_size must be an integer >= 1, got 0"):
        cn.StepDecay(0.1, step_size=0)
    with pytest.raises(ValueError, match="warmup_steps must be an integer in"):
        cn.WarmupCosine(0.1, total_steps=5, warmup_steps=5)


def torch_lrs(make_scheduler, steps, momentum=False):
    torch = pytest.importorskip("torch")
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.1, momentum=0.9)
    scheduler = make_scheduler(torch.optim.lr_scheduler, opt)
    values = []
    for _ in range(steps):
        group = opt.param_groups[0]
        values.append(group["momentum"] if momentum else group["lr"])
        opt.step()
        scheduler.step()
    return np.array(values)


def test_against_torch_schedulers():
    pytest.importorskip("torch")
    steps = 60
    cases = [
        (cn.StepDecay(0.1, 7, 0.5), lambda s, o: s.StepLR(o, step_size=7, gamma=0.5)),
        (cn.OneCycle(0.1, steps), lambda s, o: s.OneCycleLR(o, max_lr=0.1, total_steps=steps)),
        (cn.WarmupCosine(0.1, steps, warmup_steps=10, min_lr=1e-3),
         lambda s, o: s.SequentialLR(o, [s.LinearLR(o, start_factor=1 / 3, total_iters=10),
                                         s.CosineAnnealingLR(o, T_max=steps - 10, eta_min=1e-3)],
                                     milestones=[10])),
    ]
    for schedule, make in cases:
        ours = np.array([schedule.lr(t) for t in range(steps)])
        np.testing.assert_allclose(ours, torch_lrs(make, steps), rtol=1e-10, atol=1e-15,
                                   err_msg=type(schedule).__name__)
    one_cycle = cn.OneCycle(0.1, steps)
    np.testing.assert_allclose(
        [one_cycle.momentum(t) for t in range(steps)],
        torch_lrs(lambda s, o: s.OneCycleLR(o, max_lr=0.1, total_steps=steps), steps, True),
        rtol=1e-12)

"""The step schedule (He et al.'s piecewise-constant LR) against torch's MultiStepLR, and its spec."""
import math

import pytest
import torch

from clrlib.schedules import multistep


@pytest.mark.parametrize("total,milestones,factor", [(64_000, (0.5, 0.75), 10.0), (100, (0.3,), 2.0),
                                                     (391 * 30, (0.5, 0.75), 10.0), (7, (0.2, 0.5, 0.9), 3.0)])
def test_multistep_matches_torch(total, milestones, factor):
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    marks = [math.ceil(m * total) for m in milestones]
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=marks, gamma=1 / factor)
    for step in range(total + 3 if total < 1000 else 0):
        assert multistep(step, total, 0.1, milestones, factor) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
        opt.step()
        sched.step()
    assert multistep(marks[0] - 1, total, 0.1, milestones, factor) == 0.1
    assert multistep(marks[0], total, 0.1, milestones, factor) == pytest.approx(0.1 / factor)


def test_he_et_al_schedule():
    assert [multistep(s, 64_000, 0.1) for s in (0, 31_999, 32_000, 47_999, 48_000, 70_000)] == \
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]


@pytest.mark.parametrize("kwargs,bad", [(dict(milestones=(0.75, 0.5)), "milestones"), (dict(milestones=(0.5, 1.0)), "milestones"),
                                        (dict(milestones=()), "milestones"), (dict(factor=0), "factor"),
                                        (dict(lr=-0.1), "lr"), (dict(total_steps=True), "total_steps"),
                                        (dict(total_steps=0), "total_steps"), (dict(milestones="ab"), "milestones")])
def test_multistep_refuses_bad_settings(kwargs, bad):
    args = {**dict(total_steps=100, lr=0.1), **kwargs}
    with pytest.raises(ValueError, match=bad):
        multistep(0, **args)


def test_multistep_spec_takes_the_runs_length():
    from clrlib.lab.specs import ScheduleSpec, TrainSpec
    spec = TrainSpec(ScheduleSpec.make("multistep", lr=0.1, milestones=[0.5, 0.75], factor=10.0), epochs=30,
                     batch_size=128)
    assert spec.steps_per_epoch == 391 and spec.total_steps == 11_730
    fn = spec.schedule_fn()
    assert [fn(s) for s in (0, 5864, 5865, 8797, 8798)] == [0.1, 0.1, 0.01, 0.01, pytest.approx(0.001)]

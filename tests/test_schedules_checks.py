"""Nothing wrong passes silently through the schedules: booleans and NaN as steps or counts,
momenta that are not numbers, and a Scheduler asked to set an LR or momentum no optimizer
should get."""
from __future__ import annotations

import re
from functools import partial

import pytest
import torch

from clrlib.schedules import Scheduler, constant, cyclic, multistep, one_cycle, one_cycle_cosine

SCHEDULES = {
    "cyclic": partial(cyclic, base_lr=0.1, max_lr=1.0, step_size=4),
    "one_cycle": partial(one_cycle, total_steps=10, max_lr=1.0),
    "one_cycle_cosine": partial(one_cycle_cosine, total_steps=10, max_lr=1.0),
    "multistep": partial(multistep, total_steps=10, lr=0.1),
    "constant": partial(constant, lr=0.1),
}


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("step", [True, False, float("nan"), float("inf"), -1, "3", None])
def test_a_step_that_is_not_a_batch_index_is_named(name, step):
    with pytest.raises(ValueError, match=re.escape(f"step must be a batch index >= 0") + ".*"
                       + re.escape(repr(step))):
        SCHEDULES[name](step)


def test_one_cycle_at_nan_is_a_value_error_not_an_assertion():
    with pytest.raises(ValueError, match="got nan"):
        one_cycle(float("nan"), 100, 0.8)


@pytest.mark.parametrize("fn", [
    partial(one_cycle, 0, max_lr=0.8), partial(one_cycle_cosine, 0, max_lr=0.8), partial(multistep, 0, lr=0.1)])
@pytest.mark.parametrize("total_steps", [True, False, 10.0, 0])
def test_total_steps_must_be_a_positive_integer_not_a_bool(fn, total_steps):
    with pytest.raises(ValueError, match=re.escape(f"total_steps must be a positive integer, got {total_steps!r}")):
        fn(total_steps=total_steps)


def test_integer_steps_of_other_integer_types_still_work():
    import numpy as np
    assert one_cycle(np.int64(5), np.int64(100), 0.8) == one_cycle(5, 100, 0.8)
    assert cyclic(np.int64(3), 0.1, 1.0, np.int64(4)) == cyclic(3, 0.1, 1.0, 4)
    assert one_cycle(2.5, 100, 0.8)[0] == pytest.approx((one_cycle(2, 100, 0.8)[0] + one_cycle(3, 100, 0.8)[0]) / 2)


@pytest.mark.parametrize("fn", [one_cycle, one_cycle_cosine])
@pytest.mark.parametrize("moms", ["ab", ("a", "b"), (True, False), 0.9, None, (0.95, float("nan"))])
def test_moms_that_are_not_two_momenta_are_named(fn, moms):
    with pytest.raises(ValueError, match=re.escape(f"moms must be two momenta in [0, 1), got {moms!r}")):
        fn(3, 100, 0.8, moms=moms)


def _sgd(groups: int = 1):
    return torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(2))]} for _ in range(groups)],
                           lr=0.1, momentum=0.9)


def _bad_at(step: int, value):
    """A schedule that gives (0.1 * (s + 1), 0.9) until ``step``, then ``value``."""
    return lambda s: (0.1 * (s + 1), 0.9) if s < step else value


@pytest.mark.parametrize("value,match", [
    (float("nan"), "the schedule gave LR nan at step 2 for param group 1"),
    ((float("nan"), 0.9), "the schedule gave LR nan at step 2 for param group 1; an LR must be a finite number >= 0"),
    ((-0.01, 0.9), "the schedule gave LR -0.01 at step 2 for param group 1"),
    ((float("inf"), 0.9), "the schedule gave LR inf at step 2"),
    ((0.1, 1.5), "the schedule gave momentum 1.5 at step 2 for param group 1; a momentum must be in [0, 1)"),
    ((0.1, -0.1), "the schedule gave momentum -0.1 at step 2"),
    ((0.1, float("nan")), "the schedule gave momentum nan at step 2"),
    ("0.1", "the schedule returned '0.1' at step 2 for param group 1; expected an LR or an (lr, momentum) pair"),
    ((0.1, 0.9, 0.99), "the schedule returned (0.1, 0.9, 0.99) at step 2"),
])
def test_scheduler_refuses_values_no_optimizer_should_get(value, match):
    opt = _sgd(groups=2)
    good = _bad_at(10**6, None)
    sched = Scheduler(opt, [good, _bad_at(2, value)])
    opt.step()
    sched.step()  # step 1
    before = [(g["lr"], g["momentum"]) for g in opt.param_groups]
    opt.step()
    with pytest.raises(ValueError, match=re.escape(match)):
        sched.step()  # step 2
    assert [(g["lr"], g["momentum"]) for g in opt.param_groups] == before  # nothing was set


def test_scheduler_refuses_a_bad_value_at_construction_and_takes_zero_lr():
    with pytest.raises(ValueError, match=re.escape("LR -1.0 at step 0 for param group 0")):
        Scheduler(_sgd(), lambda s: -1.0)
    opt = _sgd()
    Scheduler(opt, lambda s: (0.0, 0.0))  # a zero LR and no momentum are legitimate
    assert (opt.param_groups[0]["lr"], opt.param_groups[0]["momentum"]) == (0.0, 0.0)

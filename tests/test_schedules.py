"""Tests of clrlib.schedules: the schedule functions against PyTorch's own schedulers and
against the numbers of "The 1cycle policy" post, and the Scheduler that drives an optimizer."""
from __future__ import annotations

import doctest
import math
import pickle
import re
import warnings
from functools import partial

import pytest
import torch
from torch.optim.lr_scheduler import CyclicLR, OneCycleLR

from clrlib import schedules
from clrlib.schedules import (Scheduler, anneal_cos, anneal_exp, anneal_linear, constant, cyclic,
                              one_cycle, one_cycle_cosine)

# The post's main run: ResNet-56 for 95 epochs (here of 97 batches: 50,000 images in batches of
# 512 without the partial one), 1cycle 0.08 -> 0.8 -> 0.08 over 82 epochs, then annihilation
# down to 0.0008 over the last 13.68% of training.
EPOCHS, STEPS_PER_EPOCH = 95, 97
POST = dict(max_lr=0.8, div=10.0, final_div=100.0, annihilate=0.1368)


def _param():
    return torch.nn.Parameter(torch.zeros(3))


def _sgd(lr=0.1, momentum=0.9, **kw):
    return torch.optim.SGD([_param()], lr=lr, momentum=momentum, **kw)


def _step_torch(opt, sched):
    opt.step()  # no gradients: a no-op that keeps PyTorch's call-order check quiet
    sched.step()


# --- annealing helpers ------------------------------------------------------------------------

@pytest.mark.parametrize("anneal", [anneal_linear, anneal_cos, anneal_exp])
def test_annealers_hit_both_ends(anneal):
    assert anneal(0.5, 0.02, 0.0) == pytest.approx(0.5, rel=1e-12)
    assert anneal(0.5, 0.02, 1.0) == pytest.approx(0.02, rel=1e-12)
    mid = anneal(0.5, 0.02, 0.5)
    assert 0.02 < mid < 0.5


def test_annealer_midpoints():
    assert anneal_linear(0.0, 1.0, 0.25) == pytest.approx(0.25)
    assert anneal_cos(0.0, 1.0, 0.5) == pytest.approx(0.5)  # cosine is symmetric about the middle
    assert anneal_cos(0.0, 1.0, 0.25) == pytest.approx((1 - math.cos(math.pi / 4)) / 2)
    assert anneal_exp(1e-3, 1e-1, 0.5) == pytest.approx(1e-2)  # geometric mean


# --- cyclic: equal to torch's CyclicLR --------------------------------------------------------

@pytest.mark.parametrize("step_size", [1, 4, 25])
@pytest.mark.parametrize("mode,gamma", [("triangular", 1.0), ("triangular2", 1.0), ("exp_range", 0.999)])
def test_cyclic_equals_torch_cycliclr(mode, gamma, step_size):
    base_lr, max_lr = 0.01, 0.3
    opt = _sgd(lr=base_lr)
    torch_sched = CyclicLR(opt, base_lr, max_lr, step_size_up=step_size, mode=mode, gamma=gamma,
                           cycle_momentum=False)
    n_steps = 3 * 2 * step_size + 1  # three whole cycles and the start of a fourth
    ours = [cyclic(s, base_lr, max_lr, step_size, mode=mode, gamma=gamma) for s in range(n_steps)]
    theirs = []
    for _ in range(n_steps):
        theirs.append(opt.param_groups[0]["lr"])
        _step_torch(opt, torch_sched)
    for step, (a, b) in enumerate(zip(ours, theirs)):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-15), f"step {step}: {a} != {b}"


def test_cyclic_shape_of_each_mode():
    base, top, k = 0.1, 1.0, 10
    # triangular: base at even multiples of the step size, max at odd ones, linear in between.
    tri = partial(cyclic, base_lr=base, max_lr=top, step_size=k)
    assert [tri(s) for s in (0, k, 2 * k, 3 * k, 4 * k)] == pytest.approx([base, top, base, top, base])
    assert tri(k // 2) == pytest.approx((base + top) / 2)
    # triangular2: the amplitude halves at every new cycle.
    tri2 = partial(cyclic, base_lr=base, max_lr=top, step_size=k, mode="triangular2")
    peaks = [tri2(k + 2 * k * c) for c in range(4)]
    assert peaks == pytest.approx([base + (top - base) / 2 ** c for c in range(4)])
    # exp_range: the amplitude decays as gamma ** step.
    gamma = 0.99
    exp = partial(cyclic, base_lr=base, max_lr=top, step_size=k, mode="exp_range", gamma=gamma)
    for s in (k, 3 * k, 5 * k):
        assert exp(s) == pytest.approx(base + (top - base) * gamma ** s)
    assert all(base <= f(s) <= top for f in (tri, tri2, exp) for s in range(100))


# --- one_cycle: the post's numbers ------------------------------------------------------------

def _post_fn(total_steps, **overrides):
    return partial(one_cycle, total_steps=total_steps, **{**POST, **overrides})


def test_one_cycle_post_run_per_step_boundaries():
    n = EPOCHS * STEPS_PER_EPOCH
    f = _post_fn(n)
    c = 1 - POST["annihilate"]
    peak_step, cycle_end = c * n / 2, c * n  # not integers: check the nearest steps by the slope
    lr_slope = (0.8 - 0.08) / peak_step  # per step, phases 1 and 2
    mom_slope = (0.95 - 0.85) / peak_step
    values = [f(s) for s in range(n + 1)]
    lrs = [v[0] for v in values]
    moms = [v[1] for v in values]

    assert values[0] == pytest.approx((0.08, 0.95), rel=1e-12)
    for s in (math.floor(peak_step), math.ceil(peak_step)):
        assert abs(lrs[s] - 0.8) <= lr_slope * abs(s - peak_step) + 1e-12
        assert abs(moms[s] - 0.85) <= mom_slope * abs(s - peak_step) + 1e-12
    assert max(lrs) == pytest.approx(0.8, abs=lr_slope)
    assert lrs.index(max(lrs)) in (math.floor(peak_step), math.ceil(peak_step))
    assert min(moms) == pytest.approx(0.85, abs=mom_slope)
    s = round(cycle_end)
    assert abs(lrs[s] - 0.08) <= lr_slope * abs(s - cycle_end) + 1e-12
    assert values[n] == pytest.approx((0.0008, 0.95), rel=1e-12)
    # past the end the schedule holds its final value
    for s in (n + 1, n + 97, 10 * n):
        assert f(s) == pytest.approx((0.0008, 0.95), rel=1e-12)


def test_one_cycle_post_run_per_epoch():
    f = _post_fn(EPOCHS)
    c = 1 - POST["annihilate"]
    slope = 0.72 / (c * EPOCHS / 2)  # per epoch
    assert f(0)[0] == pytest.approx(0.08)
    assert abs(f(41)[0] - 0.8) <= slope * abs(41 - c * EPOCHS / 2) + 1e-12
    assert abs(f(82)[0] - 0.08) <= slope * abs(82 - c * EPOCHS) + 1e-12
    assert f(95) == pytest.approx((0.0008, 0.95))
    assert f(120) == pytest.approx((0.0008, 0.95))


def test_one_cycle_exact_boundaries_on_a_round_grid():
    # With c*n/2 and c*n integers the phase ends are hit exactly.
    f = partial(one_cycle, total_steps=1000, max_lr=0.8, annihilate=0.2)
    assert f(0) == pytest.approx((0.08, 0.95), rel=1e-12)
    assert f(400) == pytest.approx((0.8, 0.85), rel=1e-12)
    assert f(800) == pytest.approx((0.08, 0.95), rel=1e-12)
    assert f(1000) == pytest.approx((0.0008, 0.95), rel=1e-12)
    assert f(900) == pytest.approx(((0.08 + 0.0008) / 2, 0.95), rel=1e-12)


def test_one_cycle_monotonic_pieces_and_momentum_opposite():
    n = EPOCHS * STEPS_PER_EPOCH
    f = _post_fn(n)
    c = 1 - POST["annihilate"]
    values = [f(s) for s in range(n + 1)]
    peak = max(range(n + 1), key=lambda s: values[s][0])
    end = math.floor(c * n)
    for s in range(n):
        (lr0, m0), (lr1, m1) = values[s], values[s + 1]
        if s < peak:
            assert lr1 > lr0 and m1 < m0, s
        elif s + 1 <= end:
            assert lr1 < lr0 and m1 > m0, s
        elif s > end:  # annihilation: LR keeps falling, momentum stays at the high value
            assert lr1 < lr0 and m1 == 0.95, s
        # momentum always moves opposite to the learning rate
        assert (lr1 - lr0) * (m1 - m0) <= 0, s
    # in the cycle, momentum is the mirror image of the LR (same fraction of the way)
    for s in range(0, end + 1, 37):
        lr, mom = values[s]
        assert (lr - 0.08) / 0.72 == pytest.approx((0.95 - mom) / 0.10, abs=1e-9)


def test_one_cycle_cos_same_boundaries_different_inside():
    lin = partial(one_cycle, total_steps=1000, max_lr=0.8, annihilate=0.2)
    cos = partial(one_cycle, total_steps=1000, max_lr=0.8, annihilate=0.2, anneal="cos")
    for s in (0, 400, 800, 1000, 1500):
        assert cos(s) == pytest.approx(lin(s), rel=1e-12)
    # a quarter into the warm-up the cosine has barely left its start
    assert lin(100)[0] == pytest.approx(0.08 + 0.72 / 4)
    assert cos(100)[0] == pytest.approx(0.8 - 0.36 * (math.cos(math.pi / 4) + 1))
    assert abs(cos(100)[0] - lin(100)[0]) > 0.05
    assert abs(cos(100)[1] - lin(100)[1]) > 0.005
    # and the post's run: equal at step 0 and at the end, apart in between
    n = EPOCHS * STEPS_PER_EPOCH
    lin_post, cos_post = _post_fn(n), _post_fn(n, anneal="cos")
    assert cos_post(0) == pytest.approx(lin_post(0))
    assert cos_post(n) == pytest.approx(lin_post(n))
    assert all(0.0008 - 1e-12 <= cos_post(s)[0] <= 0.8 + 1e-12 for s in range(0, n + 1, 50))
    assert max(abs(cos_post(s)[0] - lin_post(s)[0]) for s in range(0, n, 50)) > 0.05


# --- relation to torch's OneCycleLR -----------------------------------------------------------

def _torch_values(opt, sched, n):
    values = []
    for _ in range(n):
        group = opt.param_groups[0]
        values.append((group["lr"], group["momentum"]))
        _step_torch(opt, sched)
    return values


@pytest.mark.parametrize("n", [EPOCHS, 1000, EPOCHS * STEPS_PER_EPOCH])
def test_one_cycle_vs_torch_three_phase_onecyclelr(n):
    max_lr, div, final_div, ann = POST["max_lr"], POST["div"], POST["final_div"], POST["annihilate"]
    c = 1 - ann
    opt = _sgd()
    sched = OneCycleLR(opt, max_lr, total_steps=n, pct_start=c / 2, anneal_strategy="linear",
                       div_factor=div, final_div_factor=final_div, three_phase=True,
                       base_momentum=0.85, max_momentum=0.95)
    theirs = _torch_values(opt, sched, n)
    ours = [one_cycle(s, n, max_lr, div, final_div, ann) for s in range(n + 1)]
    # Both are piecewise linear through the same values; torch's phase ends sit at most two
    # steps before ours, so at any step they differ by at most 2 steps of our steepest slope.
    low = max_lr / div
    lr_slope = max((max_lr - low) / (c * n / 2), (low - low / final_div) / (n - c * n))
    mom_slope = (0.95 - 0.85) / (c * n / 2)
    lr_bound, mom_bound = 2 * lr_slope * (1 + 1e-9) + 1e-12, 2 * mom_slope * (1 + 1e-9) + 1e-12
    lr_gap = [abs(o[0] - t[0]) for o, t in zip(ours, theirs)]
    mom_gap = [abs(o[1] - t[1]) for o, t in zip(ours, theirs)]
    assert max(lr_gap) <= lr_bound
    assert max(mom_gap) <= mom_bound
    assert max(lr_gap) > 0  # they really are shifted, the bound is not vacuous
    # endpoints: same start; torch ends one step before us at the same final value
    assert ours[0] == pytest.approx(theirs[0], rel=1e-12)
    assert ours[n] == pytest.approx(theirs[n - 1], rel=1e-9)
    assert theirs[n - 1][0] == pytest.approx(max_lr / (div * final_div), rel=1e-9)


@pytest.mark.parametrize("n", [100, 1000, 4321])
def test_one_cycle_cosine_vs_default_onecyclelr(n):
    max_lr = 0.5
    opt = _sgd()
    sched = OneCycleLR(opt, max_lr, total_steps=n)  # cos, two phases, pct_start 0.3, div 25, 1e4
    theirs = _torch_values(opt, sched, n)
    ours = [one_cycle_cosine(s, n, max_lr) for s in range(n + 1)]
    # Same cosine pieces; torch's phases end one step earlier. A cosine from a to b over m steps
    # has slope at most pi/2 * |a - b| / m, so the gap is at most one step of the steepest piece.
    low, pct = max_lr / 25, 0.3
    lr_slope = math.pi / 2 * max((max_lr - low) / (pct * n), (max_lr - low / 1e4) / ((1 - pct) * n))
    mom_slope = math.pi / 2 * 0.10 / (pct * n)
    lr_gap = max(abs(o[0] - t[0]) for o, t in zip(ours, theirs))
    mom_gap = max(abs(o[1] - t[1]) for o, t in zip(ours, theirs))
    assert lr_gap <= lr_slope * (1 + 1e-9) + 1e-12
    assert mom_gap <= mom_slope * (1 + 1e-9) + 1e-12
    assert lr_gap > 0
    assert ours[0] == pytest.approx(theirs[0], rel=1e-12)
    assert ours[n] == pytest.approx(theirs[n - 1], rel=1e-9)
    assert ours[n][0] == pytest.approx(max_lr / 25 / 1e4)


def test_one_cycle_cosine_docstring_values_and_hold():
    assert one_cycle_cosine(30, 100, max_lr=1.0) == pytest.approx((1.0, 0.85))
    assert one_cycle_cosine(0, 100, max_lr=1.0) == pytest.approx((1 / 25, 0.95))
    assert one_cycle_cosine(100, 100, max_lr=1.0) == pytest.approx((1 / 25 / 1e4, 0.95))
    assert one_cycle_cosine(10_000, 100, max_lr=1.0) == one_cycle_cosine(100, 100, max_lr=1.0)


def test_constant():
    assert constant(0, 0.1) == 0.1
    assert constant(10**6, 0.1, 0.9) == (0.1, 0.9)


def test_schedules_docstring_examples_hold():
    """The examples in the module's docstrings are the documented numbers of the post."""
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    failed, attempted = [], 0
    for test in finder.find(schedules, globs=dict(vars(schedules))):
        attempted += runner.run(test, out=failed.append).attempted
    assert attempted >= 5  # the examples of cyclic, one_cycle, one_cycle_cosine and Scheduler
    assert not failed, "".join(failed)


# --- Scheduler --------------------------------------------------------------------------------

def test_scheduler_drives_sgd_lr_and_momentum_every_step():
    fn = partial(one_cycle, total_steps=50, max_lr=0.8, annihilate=0.2)
    opt = _sgd(lr=1.0, momentum=0.5)
    sched = Scheduler(opt, fn)
    for step in range(60):
        lr, mom = fn(step)
        group = opt.param_groups[0]
        assert group["lr"] == lr and group["momentum"] == mom, step
        assert sched.get_last_lr() == [lr]
        _step_torch(opt, sched)


def test_scheduler_drives_adam_beta1():
    fn = partial(one_cycle, total_steps=30, max_lr=1e-2, moms=(0.9, 0.8))
    opt = torch.optim.Adam([_param()], lr=1e-3, betas=(0.5, 0.999))
    sched = Scheduler(opt, fn)
    for step in range(35):
        lr, mom = fn(step)
        group = opt.param_groups[0]
        assert group["lr"] == lr
        assert group["betas"][0] == mom and group["betas"][1] == 0.999, step
        _step_torch(opt, sched)


def test_scheduler_one_function_per_group_and_lr_scale():
    a, b = _param(), _param()
    opt = torch.optim.SGD([{"params": [a]}, {"params": [b], "momentum": 0.7}], lr=0.1, momentum=0.9)
    f0 = partial(one_cycle, total_steps=20, max_lr=0.4)
    f1 = partial(constant, lr=0.05)  # a plain float: momentum left alone
    sched = Scheduler(opt, [f0, f1], lr_scale=[1.0, 0.1])
    for step in range(25):
        g0, g1 = opt.param_groups
        assert g0["lr"] == pytest.approx(f0(step)[0]) and g0["momentum"] == f0(step)[1]
        assert g1["lr"] == pytest.approx(0.05 * 0.1) and g1["momentum"] == 0.7
        _step_torch(opt, sched)


def test_scheduler_lr_scale_with_one_function_and_unscaled_momentum():
    opt = torch.optim.SGD([{"params": [_param()]}, {"params": [_param()]}], lr=0.1, momentum=0.9)
    fn = partial(one_cycle, total_steps=10, max_lr=1.0)
    sched = Scheduler(opt, fn, lr_scale=(1.0, 0.25))
    for step in range(12):
        lr, mom = fn(step)
        assert [g["lr"] for g in opt.param_groups] == pytest.approx([lr, lr * 0.25])
        assert [g["momentum"] for g in opt.param_groups] == [mom, mom]
        _step_torch(opt, sched)


def test_scheduler_float_schedule_leaves_momentum_unchanged():
    opt = _sgd(lr=0.3, momentum=0.8)
    fn = partial(cyclic, base_lr=0.01, max_lr=0.1, step_size=3)
    sched = Scheduler(opt, fn)
    for step in range(10):
        assert opt.param_groups[0]["lr"] == pytest.approx(fn(step))
        assert opt.param_groups[0]["momentum"] == 0.8
        _step_torch(opt, sched)


def _trace(opt, sched, n):
    out = []
    for _ in range(n):
        _step_torch(opt, sched)
        g = opt.param_groups[0]
        out.append((g["lr"], g["momentum"]))
    return out


def test_scheduler_resume_from_state_dict():
    fn = partial(one_cycle, total_steps=100, max_lr=0.8, annihilate=0.15)
    opt = _sgd()
    sched = Scheduler(opt, fn)
    _trace(opt, sched, 37)
    state = sched.state_dict()
    assert state["last_epoch"] == 37
    assert all(not callable(v) for v in state.values())  # the functions are not in the state
    state = pickle.loads(pickle.dumps(state))  # a checkpoint survives serialisation

    opt2 = _sgd(lr=0.5, momentum=0.3)
    sched2 = Scheduler(opt2, fn)
    sched2.load_state_dict(state)
    g1, g2 = opt.param_groups[0], opt2.param_groups[0]
    assert (g2["lr"], g2["momentum"]) == (g1["lr"], g1["momentum"]) == fn(37)
    assert _trace(opt2, sched2, 80) == _trace(opt, sched, 80)
    assert sched2.last_epoch == sched.last_epoch == 117


def test_scheduler_pickles_with_its_optimizer():
    fn = partial(one_cycle, total_steps=60, max_lr=0.5)
    opt = _sgd()
    sched = Scheduler(opt, fn)
    _trace(opt, sched, 5)
    opt2, sched2 = pickle.loads(pickle.dumps((opt, sched)))
    assert sched2.optimizer is opt2
    assert sched2.fns[0].func is one_cycle and sched2.fns[0].keywords == fn.keywords
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    assert _trace(opt2, sched2, 70) == _trace(opt, sched, 70)


def test_scheduler_past_the_end_holds_last_value():
    for fn in (partial(one_cycle, total_steps=20, max_lr=0.5),
               partial(one_cycle_cosine, total_steps=20, max_lr=0.5)):
        opt = _sgd()
        sched = Scheduler(opt, fn)
        trace = _trace(opt, sched, 500)
        final = fn(20)
        assert all(v == final for v in trace[19:])
        assert sched.last_epoch == 500


def test_scheduler_momentum_without_momentum_key_is_an_error():
    opt = torch.optim.Adagrad([_param()], lr=0.1)
    with pytest.raises(ValueError, match=r"0\.95"):
        Scheduler(opt, partial(one_cycle, total_steps=10, max_lr=0.5))
    # a float schedule works with it
    sched = Scheduler(opt, partial(constant, lr=0.02))
    assert opt.param_groups[0]["lr"] == 0.02 and sched.last_epoch == 0


# --- bad arguments ----------------------------------------------------------------------------

def _raises_naming(value, fn, *args, **kwargs):
    with pytest.raises(ValueError, match=re.escape(repr(value))):
        fn(*args, **kwargs)


@pytest.mark.parametrize("kwargs,bad", [
    (dict(step_size=0), 0),
    (dict(step_size=2.5), 2.5),
    (dict(mode="bogus"), "bogus"),
    (dict(gamma=1.5), 1.5),
    (dict(gamma=0.0), 0.0),
    (dict(base_lr=-1.0), -1.0),
    (dict(max_lr=float("nan")), float("nan")),
    (dict(max_lr=0.001), 0.001),  # below base_lr
])
def test_cyclic_bad_arguments(kwargs, bad):
    args = {**dict(base_lr=0.01, max_lr=0.1, step_size=10), **kwargs}
    _raises_naming(bad, cyclic, 3, **args)


def test_negative_step_is_rejected():
    for fn in (partial(cyclic, base_lr=0.1, max_lr=1.0, step_size=2),
               partial(one_cycle, total_steps=10, max_lr=1.0),
               partial(one_cycle_cosine, total_steps=10, max_lr=1.0),
               partial(constant, lr=0.1)):
        _raises_naming(-1, fn, -1)


@pytest.mark.parametrize("kwargs,bad", [
    (dict(annihilate=1.5), 1.5),
    (dict(annihilate=1.0), 1.0),
    (dict(annihilate=-0.1), -0.1),
    (dict(max_lr=-1), -1),
    (dict(max_lr=0), 0),
    (dict(moms=(1.2, 0.8)), (1.2, 0.8)),
    (dict(moms=(0.95,)), (0.95,)),
    (dict(total_steps=0), 0),
    (dict(total_steps=10.0), 10.0),
    (dict(div=0), 0),
    (dict(final_div=-5.0), -5.0),
    (dict(anneal="bogus"), "bogus"),
])
def test_one_cycle_bad_arguments(kwargs, bad):
    args = {**dict(total_steps=100, max_lr=0.8), **kwargs}
    _raises_naming(bad, one_cycle, 5, **args)


@pytest.mark.parametrize("kwargs,bad", [
    (dict(pct_start=1.0), 1.0),
    (dict(pct_start=0), 0),
    (dict(total_steps=-3), -3),
    (dict(max_lr=float("inf")), float("inf")),
    (dict(moms=(0.9, 1.0)), (0.9, 1.0)),
])
def test_one_cycle_cosine_bad_arguments(kwargs, bad):
    args = {**dict(total_steps=100, max_lr=0.8), **kwargs}
    _raises_naming(bad, one_cycle_cosine, 5, **args)


def test_constant_bad_arguments():
    _raises_naming(0.0, constant, 0, 0.0)
    _raises_naming(1.0, constant, 0, 0.1, 1.0)


def test_scheduler_bad_arguments():
    opt = torch.optim.SGD([{"params": [_param()]}, {"params": [_param()]}], lr=0.1, momentum=0.9)
    fn = partial(one_cycle, total_steps=10, max_lr=0.5)
    with pytest.raises(ValueError, match=r"2 callables") as info:
        Scheduler(opt, [fn])
    assert repr([fn]) in str(info.value)
    with pytest.raises(ValueError, match=r"2 callables"):
        Scheduler(opt, [fn, fn, fn])
    with pytest.raises(ValueError, match=r"callable"):
        Scheduler(opt, [fn, 0.1])
    _raises_naming([1.0], Scheduler, opt, fn, lr_scale=[1.0])
    _raises_naming([1.0, -0.5], Scheduler, opt, fn, lr_scale=[1.0, -0.5])
    _raises_naming((1.0, 0.0), Scheduler, opt, fn, lr_scale=(1.0, 0.0))


def test_no_warnings_in_normal_use():
    fn = partial(one_cycle, total_steps=10, max_lr=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt = _sgd()
        sched = Scheduler(opt, fn)
        assert len(_trace(opt, sched, 15)) == 15


# --- silent misuse: inverted momentum, a start or end above the peak ----------------------------

@pytest.mark.parametrize("fn", [one_cycle, one_cycle_cosine])
@pytest.mark.parametrize("moms", [(0.85, 0.95), [0.8, 0.9], (0.0, 0.5)])
def test_inverted_moms_are_rejected_naming_value_and_flag(fn, moms):
    with pytest.raises(ValueError, match=re.escape(repr(moms))) as info:
        fn(5, 100, 0.8, moms=moms)
    assert "allow_inverted_moms=True" in str(info.value)
    with pytest.raises(ValueError, match="allow_inverted_moms"):
        Scheduler(_sgd(), partial(fn, total_steps=100, max_lr=0.8, moms=moms))


def test_inverted_moms_allowed_with_the_flag():
    f = partial(one_cycle, total_steps=1000, max_lr=0.8, annihilate=0.2, moms=(0.85, 0.95),
                allow_inverted_moms=True)
    assert f(0) == pytest.approx((0.08, 0.85), rel=1e-12)
    assert f(400) == pytest.approx((0.8, 0.95), rel=1e-12)  # momentum now rises with the LR
    assert f(1000) == pytest.approx((0.0008, 0.85), rel=1e-12)
    g = partial(one_cycle_cosine, total_steps=100, max_lr=1.0, moms=(0.85, 0.95),
                allow_inverted_moms=True)
    assert g(0) == pytest.approx((1 / 25, 0.85)) and g(30) == pytest.approx((1.0, 0.95))
    # the flag changes nothing for the usual order
    assert one_cycle(7, 100, 0.8, allow_inverted_moms=True) == one_cycle(7, 100, 0.8)


@pytest.mark.parametrize("fn", [one_cycle, one_cycle_cosine])
def test_equal_moms_give_constant_momentum(fn):
    f = partial(fn, total_steps=50, max_lr=0.5, moms=(0.9, 0.9))
    assert {f(s)[1] for s in range(0, 60)} == {0.9}
    assert max(f(s)[0] for s in range(60)) == pytest.approx(0.5, rel=0.1)


@pytest.mark.parametrize("fn", [one_cycle, one_cycle_cosine])
@pytest.mark.parametrize("name,bad", [("div", 0.5), ("div", 0.999), ("final_div", 0.1),
                                      ("final_div", 0.99)])
def test_div_and_final_div_below_one_are_rejected(fn, name, bad):
    with pytest.raises(ValueError, match=re.escape(repr(bad))) as info:
        fn(5, 100, 0.8, **{name: bad})
    assert f"{name} must be >= 1" in str(info.value)


def test_div_and_final_div_of_one_are_allowed():
    # div=1: the cycle is flat at max_lr; final_div=1: no annihilation below max_lr/div
    assert one_cycle(0, 100, 0.8, div=1.0) == pytest.approx((0.8, 0.95))
    assert one_cycle(100, 100, 0.8, final_div=1) == pytest.approx((0.08, 0.95))
    assert one_cycle_cosine(0, 100, 0.8, div=1) == pytest.approx((0.8, 0.95))
    assert one_cycle_cosine(100, 100, 0.8, final_div=1.0) == pytest.approx((0.8 / 25, 0.95))

"""cyclic's cyclical momentum, asymmetric cycles and custom amplitude, against PyTorch's
CyclicLR itself (to 1e-12), and the value of earlier versions kept when none is asked for."""
from __future__ import annotations

import itertools
import math
import re
from functools import partial

import pytest
import torch
from torch.optim.lr_scheduler import CyclicLR

from clrlib.schedules import Scheduler, cyclic

BASE, TOP = 0.01, 0.3
MOMS = (0.95, 0.85)


def _torch_values(n_steps, momentum=False, adam=False, **kwargs):
    """``[(lr, momentum)]`` that torch's CyclicLR gives at steps 0 .. n_steps - 1."""
    param = torch.nn.Parameter(torch.zeros(2))
    opt = (torch.optim.Adam([param], lr=BASE) if adam else
           torch.optim.SGD([param], lr=BASE, momentum=0.9 if momentum else 0.0))
    sched = CyclicLR(opt, BASE, TOP, cycle_momentum=momentum, max_momentum=MOMS[0], base_momentum=MOMS[1],
                     **kwargs)
    out = []
    for _ in range(n_steps):
        group = opt.param_groups[0]
        out.append((group["lr"], group["betas"][0] if adam else group["momentum"]))
        opt.step()
        sched.step()
    return out


def _torch_kwargs(up, down, mode="triangular", gamma=1.0, scale_fn=None, scale_mode=None):
    kwargs = dict(step_size_up=up, step_size_down=down, mode=mode, gamma=gamma, scale_fn=scale_fn)
    if scale_mode is not None:
        kwargs["scale_mode"] = scale_mode
    return kwargs


def _halving(cycle):
    return 0.5 ** (cycle - 1)


def _decay(step):
    return 0.999 ** step


def _wave(x):
    return 0.5 * (1 + math.sin(x / 3))


CONFIGS = [
    *[dict(mode=m, gamma=g) for m, g in (("triangular", 1.0), ("triangular2", 1.0), ("exp_range", 0.995))],
    dict(scale_fn=_halving, scale_mode="cycle"),
    dict(scale_fn=_halving),  # "cycle" is the default with a scale_fn
    dict(scale_fn=_decay, scale_mode="iterations"),
    dict(scale_fn=_wave, scale_mode="iterations"),
    dict(scale_fn=_wave, scale_mode="cycle"),
]
SIZES = [(1, None), (3, None), (7, None), (2, 5), (5, 2), (1, 4), (6, 6), (10, 3)]


@pytest.mark.parametrize("moms", [None, MOMS])
@pytest.mark.parametrize("up,down", SIZES)
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(
    str(getattr(v, "__name__", v)) for v in c.values()))
def test_cyclic_equals_torch_cycliclr_to_1e_12(config, up, down, moms):
    n = 4 * (up + (down or up)) + 3  # four whole cycles and a bit
    theirs = _torch_values(n, momentum=moms is not None, **_torch_kwargs(up, down, **config))
    for step in range(n):
        ours = cyclic(step, BASE, TOP, up, step_size_down=down, moms=moms, **config)
        if moms is None:
            assert isinstance(ours, float)
            assert abs(ours - theirs[step][0]) <= 1e-12, (step, ours, theirs[step])
        else:
            lr, mom = ours
            assert abs(lr - theirs[step][0]) <= 1e-12 and abs(mom - theirs[step][1]) <= 1e-12, \
                (step, ours, theirs[step])


@pytest.mark.parametrize("adam", [False, True])
def test_scheduler_with_cyclic_momentum_drives_the_optimizer_as_cycliclr(adam):
    up, down, n = 3, 5, 40
    theirs = _torch_values(n, momentum=True, adam=adam, **_torch_kwargs(up, down, mode="triangular2"))
    param = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.Adam([param], lr=0.5) if adam else torch.optim.SGD([param], lr=0.5, momentum=0.5)
    sched = Scheduler(opt, partial(cyclic, base_lr=BASE, max_lr=TOP, step_size=up, step_size_down=down,
                                   mode="triangular2", moms=MOMS))
    for step in range(n):
        group = opt.param_groups[0]
        mom = group["betas"][0] if adam else group["momentum"]
        assert abs(group["lr"] - theirs[step][0]) <= 1e-12 and abs(mom - theirs[step][1]) <= 1e-12
        opt.step()
        sched.step()


def _smith(step, base_lr, max_lr, step_size, mode="triangular", gamma=1.0):
    """The formula of clrlib before step_size_down, scale_fn and moms (kept bit for bit)."""
    cycle = math.floor(1 + step / (2 * step_size))
    x = abs(step / step_size - 2 * cycle + 1)
    scale = {"triangular": 1.0, "triangular2": 1.0 / 2.0 ** (cycle - 1)}.get(mode, gamma ** step)
    return base_lr + (max_lr - base_lr) * max(0.0, 1.0 - x) * scale


@pytest.mark.parametrize("mode,gamma", [("triangular", 1.0), ("triangular2", 1.0), ("exp_range", 0.99)])
def test_without_the_new_arguments_the_values_are_the_old_ones_bit_for_bit(mode, gamma):
    for step, size in itertools.product(range(200), (1, 4, 98)):
        value = cyclic(step, 0.08, 0.8, size, mode=mode, gamma=gamma)
        assert type(value) is float and value == _smith(step, 0.08, 0.8, size, mode, gamma)


def test_momentum_moves_opposite_to_the_lr():
    for step in range(20):
        lr, mom = cyclic(step, 0.1, 1.0, 5, step_size_down=3, moms=MOMS)
        # (lr - base) / (max - base) == (high - mom) / (high - low)
        assert (lr - 0.1) / 0.9 == pytest.approx((MOMS[0] - mom) / 0.1, abs=1e-12)
    assert cyclic(5, 0.1, 1.0, 5, step_size_down=3, moms=MOMS) == pytest.approx((1.0, 0.85))
    assert cyclic(8, 0.1, 1.0, 5, step_size_down=3, moms=MOMS) == pytest.approx((0.1, 0.95))


@pytest.mark.parametrize("kwargs,bad", [
    (dict(step_size_down=0), "step_size_down must be a positive integer, got 0"),
    (dict(step_size_down=2.5), "step_size_down must be a positive integer, got 2.5"),
    (dict(step_size_down=True), "step_size_down must be a positive integer, got True"),
    (dict(step_size=True), "step_size must be a positive integer, got True"),
    (dict(scale_mode="cycle"), "scale_mode='cycle' applies only to a scale_fn"),
    (dict(scale_fn=_halving, scale_mode="epochs"), "scale_mode must be one of ('cycle', 'iterations'), got 'epochs'"),
    (dict(scale_fn=_halving, mode="exp_range", gamma=0.9), "scale_fn replaces mode and gamma"),
    (dict(scale_fn=_halving, mode="triangular2"), "got mode='triangular2'"),
    (dict(scale_fn=0.5), "scale_fn must be a function x -> amplitude scale, got 0.5"),
    (dict(scale_fn=lambda x: float("nan")), "scale_fn(1) must return a finite number, got nan"),
    (dict(scale_fn=lambda x: "half"), "scale_fn(1) must return a finite number, got 'half'"),
    (dict(moms="ab"), "moms must be two momenta in [0, 1), got 'ab'"),
    (dict(moms=(0.85, 0.95)), "moms must be (high, low)"),
    (dict(moms=(0.95, 1.2)), "got (0.95, 1.2)"),
    (dict(gamma="0.9"), "gamma must be in (0, 1], got '0.9'"),
])
def test_cyclic_bad_new_arguments_are_named(kwargs, bad):
    args = {**dict(base_lr=0.01, max_lr=0.1, step_size=10), **kwargs}
    with pytest.raises(ValueError, match=re.escape(bad)):
        cyclic(3, **args)

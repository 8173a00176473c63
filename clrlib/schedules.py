"""Learning-rate and momentum schedules as pure functions of the step.

Every schedule here is a plain function ``f(step, **settings)`` that returns a
learning rate, or a ``(learning_rate, momentum)`` pair. They hold no state, so
they are easy to plot, test and pickle (bind the settings with
:func:`functools.partial`). :class:`Scheduler` applies such a function to any
``torch.optim`` optimizer once per batch.

Policies:

* :func:`cyclic` -- Smith's cyclical learning rates (CLR): ``triangular``,
  ``triangular2`` and ``exp_range``. L. N. Smith, "Cyclical Learning Rates for
  Training Neural Networks", WACV 2017, https://arxiv.org/abs/1506.01186
* :func:`one_cycle` -- the 1cycle policy with cyclical momentum as described in
  S. Gugger, "The 1cycle policy" (2018): two equal phases up and down between
  ``max_lr/div`` and ``max_lr``, then an annihilation phase down to
  ``max_lr/(div*final_div)``. L. N. Smith, "A disciplined approach to neural
  network hyper-parameters: Part 1", https://arxiv.org/abs/1803.09820
* :func:`one_cycle_cosine` -- the two-phase cosine 1cycle of PyTorch's
  ``OneCycleLR`` and fastai's ``fit_one_cycle``.
* :func:`multistep` -- piecewise constant: the LR divided by a factor at given fractions
  of training, as in He et al.'s ResNet paper (K. He, X. Zhang, S. Ren, J. Sun, "Deep
  Residual Learning for Image Recognition", CVPR 2016, section 4.2).
* :func:`constant` -- a fixed learning rate (and momentum), the usual baseline.
"""
from __future__ import annotations

import math
import numbers
from typing import Callable, Sequence, Union

import torch

__all__ = [
    "anneal_linear",
    "anneal_cos",
    "anneal_exp",
    "cyclic",
    "one_cycle",
    "one_cycle_cosine",
    "multistep",
    "constant",
    "Scheduler",
]

ScheduleValue = Union[float, "tuple[float, float]"]
ScheduleFn = Callable[[int], ScheduleValue]

CYCLIC_MODES = ("triangular", "triangular2", "exp_range")
SCALE_MODES = ("cycle", "iterations")


# --- annealing functions: go from `start` to `end` as `pct` goes from 0 to 1 -----------

def anneal_linear(start: float, end: float, pct: float) -> float:
    """Linear interpolation from ``start`` (pct=0) to ``end`` (pct=1)."""
    return start + (end - start) * pct


def anneal_cos(start: float, end: float, pct: float) -> float:
    """Cosine interpolation from ``start`` (pct=0) to ``end`` (pct=1): flat at both ends."""
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1.0)


def anneal_exp(start: float, end: float, pct: float) -> float:
    """Geometric interpolation from ``start`` to ``end`` (both must be positive)."""
    return start * (end / start) ** pct


ANNEALERS = {"linear": anneal_linear, "cos": anneal_cos, "exp": anneal_exp}


def _annealer(anneal: str) -> Callable[[float, float, float], float]:
    try:
        return ANNEALERS[anneal]
    except KeyError:
        raise ValueError(f"anneal must be one of {sorted(ANNEALERS)}, got {anneal!r}") from None


def _is_real(value) -> bool:
    """A real number, not a bool (``True`` is an int to Python, never a step count here)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_positive(name: str, value: float) -> None:
    if not (_is_real(value) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


def _check_count(name: str, value: int) -> None:
    """A positive integer (a number of steps), not a bool or a float."""
    if not (isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_step(step: int) -> None:
    if not (_is_real(step) and math.isfinite(step) and step >= 0):
        raise ValueError(f"step must be a batch index >= 0 (a finite number, not a bool), got {step!r}")


def _check_one_cycle(step: int, total_steps: int, max_lr: float, div: float, final_div: float) -> None:
    _check_step(step)
    _check_count("total_steps", total_steps)
    _check_positive("max_lr", max_lr)
    _check_positive("div", div)
    _check_positive("final_div", final_div)
    if div < 1:
        raise ValueError(f"div must be >= 1 (the cycle starts at max_lr/div, not above max_lr), got {div!r}")
    if final_div < 1:
        raise ValueError(
            f"final_div must be >= 1 (the last phase ends at max_lr/(div*final_div), not above "
            f"max_lr/div), got {final_div!r}")


def _check_moms(moms: Sequence[float], allow_inverted: bool = False) -> tuple[float, float]:
    """``(high, low)`` momenta in [0, 1); ``high < low`` only with ``allow_inverted``."""
    if (not isinstance(moms, (tuple, list)) or len(moms) != 2
            or not all(_is_real(m) and 0.0 <= m < 1.0 for m in moms)):
        raise ValueError(f"moms must be two momenta in [0, 1), got {moms!r}")
    if moms[0] < moms[1] and not allow_inverted:
        raise ValueError(
            f"moms must be (high, low), momentum falling as the learning rate rises, got {moms!r}; "
            "pass allow_inverted_moms=True to raise momentum with the learning rate on purpose")
    return float(moms[0]), float(moms[1])


def _phased(pct: float, phases: Sequence[tuple[float, float, float, float, float]], anneal) -> tuple[float, float]:
    """Evaluate a piecewise schedule at ``pct`` (fraction of training done, clamped to [0, 1]).

    ``phases`` is a table of ``(end_pct, lr_start, lr_end, mom_start, mom_end)``; each phase
    starts where the previous one ended (the first at 0) and the last ends at 1.
    """
    pct = min(max(pct, 0.0), 1.0)
    start_pct = 0.0
    for end_pct, lr0, lr1, m0, m1 in phases:
        if pct <= end_pct:
            width = end_pct - start_pct
            frac = 1.0 if width <= 0 else (pct - start_pct) / width
            return anneal(lr0, lr1, frac), anneal(m0, m1, frac)
        start_pct = end_pct
    raise AssertionError("phase table must end at 1.0")  # pragma: no cover


# --- policies ----------------------------------------------------------------------------

def cyclic(step: int, base_lr: float, max_lr: float, step_size: int,
           mode: str = "triangular", gamma: float = 1.0, *, step_size_down: int | None = None,
           scale_fn: Callable[[float], float] | None = None, scale_mode: str | None = None,
           moms: Sequence[float] | None = None) -> ScheduleValue:
    """Smith's cyclical learning rate at batch ``step`` (0-based), and optionally a cyclical momentum.

    With ``cycle = floor(1 + step / (2 * step_size))`` and
    ``x = |step / step_size - 2 * cycle + 1|`` the rate is
    ``base_lr + (max_lr - base_lr) * max(0, 1 - x) * scale`` where ``scale`` is 1 for
    ``triangular``, ``1 / 2**(cycle - 1)`` for ``triangular2`` (the amplitude halves
    every cycle) and ``gamma**step`` for ``exp_range``. The values equal those of
    ``torch.optim.lr_scheduler.CyclicLR(base_lr, max_lr, step_size_up=step_size,
    step_size_down=step_size_down, mode=mode, gamma=gamma, scale_fn=scale_fn,
    scale_mode=scale_mode, cycle_momentum=moms is not None, max_momentum=moms[0],
    base_momentum=moms[1])`` at every step (to 1e-12; the tests run torch itself).

    Args:
        step: batch index, starting at 0.
        base_lr: the lower bound of the cycle.
        max_lr: the upper bound of the cycle (reached at odd multiples of ``step_size``).
        step_size: number of batches in half a cycle (Smith suggests 2-10 epochs); with
            ``step_size_down``, the batches of the rising half.
        mode: ``"triangular"``, ``"triangular2"`` or ``"exp_range"``.
        gamma: decay per batch of the amplitude in ``exp_range`` mode, in (0, 1].
        step_size_down: batches of the falling half (torch's ``step_size_down``), for a cycle of
            ``step_size + step_size_down`` batches; None: the same as ``step_size``.
        scale_fn: a custom amplitude ``scale_fn(x) -> float`` in place of ``mode`` and ``gamma``,
            with ``x`` the cycle number (from 1) or the step, as ``scale_mode`` says.
        scale_mode: ``"cycle"`` (the default with a ``scale_fn``) or ``"iterations"``; only
            with ``scale_fn``.
        moms: ``(high, low)`` momentum: the momentum moves opposite to the LR, from ``high``
            at ``base_lr`` to ``low`` at ``max_lr``, with the same amplitude scale (torch's
            ``cycle_momentum`` with ``max_momentum=high, base_momentum=low``). Then the
            function returns ``(lr, momentum)``.

    Returns:
        The learning rate, or ``(lr, momentum)`` if ``moms`` is given.

    Raises:
        ValueError: for a bad argument (naming it and its value), ``scale_mode`` without a
            ``scale_fn``, a ``scale_fn`` beside a ``mode`` or ``gamma`` it would override, or a
            ``scale_fn`` that returns something other than a finite number.

    Example:
        >>> [round(cyclic(s, 0.1, 1.0, step_size=2), 3) for s in range(5)]
        [0.1, 0.55, 1.0, 0.55, 0.1]
        >>> [tuple(round(v, 3) for v in cyclic(s, 0.1, 1.0, 1, step_size_down=3, moms=(0.95, 0.85)))
        ...  for s in range(5)]
        [(0.1, 0.95), (1.0, 0.85), (0.7, 0.883), (0.4, 0.917), (0.1, 0.95)]
    """
    _check_cyclic(step, base_lr, max_lr, step_size, mode, gamma, step_size_down, scale_fn, scale_mode)
    if step_size_down is None:  # Smith's formula (the values of earlier versions, bit for bit)
        cycle = math.floor(1 + step / (2 * step_size))
        height = max(0.0, 1.0 - abs(step / step_size - 2 * cycle + 1))
    else:  # CyclicLR's: the position x in [0, 1) within a cycle of step_size + step_size_down
        total = step_size + step_size_down
        up = step_size / total
        cycle = math.floor(1 + step / total)
        x = 1.0 + step / total - cycle
        height = x / up if x <= up else (x - 1) / (up - 1)
    scale = _cyclic_scale(step, cycle, mode, gamma, scale_fn, scale_mode)
    lr = base_lr + (max_lr - base_lr) * height * scale
    if moms is None:
        return lr
    high, low = _check_moms(moms)
    return lr, high - (high - low) * height * scale


def _check_cyclic(step, base_lr, max_lr, step_size, mode, gamma, step_size_down, scale_fn, scale_mode) -> None:
    _check_step(step)
    _check_positive("base_lr", base_lr)
    _check_positive("max_lr", max_lr)
    if max_lr < base_lr:
        raise ValueError(f"max_lr must be >= base_lr, got max_lr={max_lr!r} < base_lr={base_lr!r}")
    _check_count("step_size", step_size)
    if step_size_down is not None:
        _check_count("step_size_down", step_size_down)
    if mode not in CYCLIC_MODES:
        raise ValueError(f"mode must be one of {CYCLIC_MODES}, got {mode!r}")
    if not (_is_real(gamma) and 0.0 < gamma <= 1.0):
        raise ValueError(f"gamma must be in (0, 1], got {gamma!r}")
    if scale_fn is None:
        if scale_mode is not None:
            raise ValueError(f"scale_mode={scale_mode!r} applies only to a scale_fn; mode={mode!r} sets its own")
        return
    if not callable(scale_fn):
        raise ValueError(f"scale_fn must be a function x -> amplitude scale, got {scale_fn!r}")
    if mode != "triangular" or gamma != 1.0:
        raise ValueError(f"scale_fn replaces mode and gamma; got mode={mode!r}, gamma={gamma!r} beside it: "
                         "pass only one of them")
    if scale_mode is not None and scale_mode not in SCALE_MODES:
        raise ValueError(f"scale_mode must be one of {SCALE_MODES}, got {scale_mode!r}")


def _cyclic_scale(step, cycle: int, mode: str, gamma: float, scale_fn, scale_mode: str | None) -> float:
    """The amplitude factor of :func:`cyclic` at ``step`` (in cycle number ``cycle``, from 1)."""
    if scale_fn is not None:
        x = step if scale_mode == "iterations" else cycle
        scale = scale_fn(x)
        if not (_is_real(scale) and math.isfinite(scale)):
            raise ValueError(f"scale_fn({x!r}) must return a finite number, got {scale!r}")
        return scale
    if mode == "triangular":
        return 1.0
    if mode == "triangular2":
        return 1.0 / 2.0 ** (cycle - 1)
    return gamma ** step


def one_cycle(step: int, total_steps: int, max_lr: float, div: float = 10.0,
              final_div: float = 100.0, annihilate: float = 0.1,
              moms: Sequence[float] = (0.95, 0.85), anneal: str = "linear",
              allow_inverted_moms: bool = False) -> tuple[float, float]:
    """The 1cycle policy with cyclical momentum, as in "The 1cycle policy" (Gugger, 2018).

    The schedule is a function of ``pct = step / total_steps``, clamped to [0, 1], so a
    step past the end holds the final value. Its phase table:

    =================  ===========================  ===========================
    pct                learning rate                momentum
    =================  ===========================  ===========================
    0 -> c/2           max_lr/div -> max_lr          moms[0] -> moms[1]
    c/2 -> c           max_lr -> max_lr/div          moms[1] -> moms[0]
    c -> 1             max_lr/div -> max_lr/(div*final_div)   moms[0]
    =================  ===========================  ===========================

    with ``c = 1 - annihilate``. fastai 0.7's ``use_clr_beta=(div, 100*annihilate,
    moms[0], moms[1])`` is this schedule with ``final_div=100``.

    Relation to PyTorch: ``OneCycleLR(opt, max_lr, total_steps=n, pct_start=c/2,
    anneal_strategy="linear", div_factor=div, final_div_factor=final_div,
    three_phase=True, base_momentum=moms[1], max_momentum=moms[0])`` gives the same
    values, except that it ends each phase one step earlier (its phases end at steps
    ``c*n/2 - 1``, ``c*n - 2`` and ``n - 1``, ours at ``c*n/2``, ``c*n`` and ``n``), so
    the two differ by at most two steps' worth of slope.

    Relation to fastai 0.7 (the post's code), and why its momentum is not copied: its
    ``CircularLR_beta`` runs the momentum one batch ahead of the LR (``calc_mom`` reads the
    counter that ``calc_lr`` has just advanced, so batch ``k`` gets the LR of position ``k`` and
    the momentum of ``k + 1``). That shifts the momentum by one step's worth of its slope,
    ``(moms[0] - moms[1]) / (c * n / 2)``: at most 0.0022 over 100 steps (annihilate 0.1), and
    2.5e-5 on the post's run (95 epochs of 98 batches, 9,310 steps, annihilate 0.1368;
    the example below computes it). fastai also ends its phases at ``int(c * n / 2)`` steps
    where this function ends them at ``c * n / 2``: with both, its momentum differs from this
    one by at most 3.5e-5 and its LR by 7.0e-5 (of 0.8) on the post's run. Momenta of 0.85 to
    0.95 scale the step by ``1 / (1 - momentum)``; 2.5e-5 changes that by 0.05% at most, and
    at every step of the cycle by less (at most 0.74 times as much) than the LR's own schedule
    changes the step from one batch to the next: the shift is smaller than running the
    schedule one batch late, and cannot show in the post's results, which compare momenta
    0.05 apart.

    Args:
        step: batch index, starting at 0.
        total_steps: number of batches in the whole training.
        max_lr: the peak learning rate (the post picks it with the LR range test).
        div: the cycle starts and ends at ``max_lr / div``; at least 1.
        final_div: the annihilation ends at ``max_lr / (div * final_div)``; at least 1.
        annihilate: fraction of training spent in the final annihilation phase, in [0, 1).
        moms: (high, low) momentum; momentum moves opposite to the learning rate. Equal
            values give a constant momentum; ``moms[0] < moms[1]`` is an error unless
            ``allow_inverted_moms`` is set.
        anneal: ``"linear"`` (the post) or ``"cos"`` interpolation inside each phase.
        allow_inverted_moms: accept ``moms[0] < moms[1]`` (momentum rising with the LR).

    Returns:
        ``(lr, momentum)`` at ``step``.

    Example (the post's main run: 0.08 -> 0.8 -> 0.08 by epoch 82, 0.0008 at epoch 95):
        >>> f = lambda epoch: one_cycle(epoch, 95, max_lr=0.8, annihilate=0.1368)
        >>> [f"{f(e)[0]:.2g}" for e in (0, 41, 82, 95)]
        ['0.08', '0.8', '0.08', '0.0008']

    The momentum one batch ahead, as fastai 0.7 sets it, on the post's 9,310 steps:
        >>> post = lambda k: one_cycle(k, 95 * 98, max_lr=0.8, annihilate=0.1368)
        >>> f"{max(abs(post(k + 1)[1] - post(k)[1]) for k in range(95 * 98)):.2g}"
        '2.5e-05'
    """
    _check_one_cycle(step, total_steps, max_lr, div, final_div)
    if not (0.0 <= annihilate < 1.0):
        raise ValueError(f"annihilate must be a fraction in [0, 1), got {annihilate!r}")
    hi_mom, lo_mom = _check_moms(moms, allow_inverted_moms)
    low = max_lr / div
    cycle_end = 1.0 - annihilate
    phases = (
        (cycle_end / 2, low, max_lr, hi_mom, lo_mom),
        (cycle_end, max_lr, low, lo_mom, hi_mom),
        (1.0, low, low / final_div, hi_mom, hi_mom),
    )
    return _phased(step / total_steps, phases, _annealer(anneal))


def one_cycle_cosine(step: int, total_steps: int, max_lr: float, pct_start: float = 0.3,
                     div: float = 25.0, final_div: float = 1e4,
                     moms: Sequence[float] = (0.95, 0.85),
                     allow_inverted_moms: bool = False) -> tuple[float, float]:
    """The two-phase cosine 1cycle of PyTorch's ``OneCycleLR`` and fastai's ``fit_one_cycle``.

    Warm up from ``max_lr/div`` to ``max_lr`` over the first ``pct_start`` of training
    while momentum goes ``moms[0] -> moms[1]``, then anneal down to
    ``max_lr/(div*final_div)`` while momentum returns to ``moms[0]``, both with cosine
    curves. The defaults are ``OneCycleLR``'s (fastai uses ``pct_start=0.25``).
    ``OneCycleLR(opt, max_lr, total_steps=n)`` gives the same values except that its
    phases end one step earlier (at steps ``pct_start*n - 1`` and ``n - 1``).

    Args:
        step: batch index, starting at 0.
        total_steps: number of batches in the whole training.
        max_lr: the peak learning rate.
        pct_start: fraction of training spent warming up, in (0, 1).
        div: the warm-up starts at ``max_lr / div``; at least 1.
        final_div: training ends at ``max_lr / (div * final_div)``; at least 1.
        moms: (high, low) momentum, as in :func:`one_cycle`.
        allow_inverted_moms: accept ``moms[0] < moms[1]`` (momentum rising with the LR).

    Example:
        >>> lr, mom = one_cycle_cosine(30, 100, max_lr=1.0)
        >>> round(lr, 6), round(mom, 6)
        (1.0, 0.85)
    """
    _check_one_cycle(step, total_steps, max_lr, div, final_div)
    if not (0.0 < pct_start < 1.0):
        raise ValueError(f"pct_start must be in (0, 1), got {pct_start!r}")
    hi_mom, lo_mom = _check_moms(moms, allow_inverted_moms)
    low = max_lr / div
    phases = (
        (pct_start, low, max_lr, hi_mom, lo_mom),
        (1.0, max_lr, low / final_div, lo_mom, hi_mom),
    )
    return _phased(step / total_steps, phases, anneal_cos)


def multistep(step: int, total_steps: int, lr: float, milestones: Sequence[float] = (0.5, 0.75),
              factor: float = 10.0) -> float:
    """A piecewise-constant LR: ``lr``, divided by ``factor`` at each milestone passed.

    A milestone is a fraction of training: from step ``ceil(m * total_steps)`` on, the LR is
    divided once more. The defaults are He et al.'s CIFAR-10 schedule (ResNet paper, section
    4.2): LR 0.1 divided by 10 at 32k and 48k of 64k iterations, i.e. at 50% and 75% of
    training. Like ``torch.optim.lr_scheduler.MultiStepLR(milestones=[round(m * n) ...],
    gamma=1/factor)`` stepped once per batch. Steps past ``total_steps`` keep the last value.

    Args:
        step: batch index, starting at 0.
        total_steps: number of batches in the whole training.
        lr: the learning rate before the first milestone.
        milestones: increasing fractions of training in (0, 1).
        factor: what the LR is divided by at each milestone (> 0; 10 in the paper).

    Example (He et al.'s schedule over 64,000 iterations):
        >>> [multistep(s, 64_000, lr=0.1) for s in (0, 31_999, 32_000, 48_000)]
        [0.1, 0.1, 0.01, 0.001]
    """
    _check_step(step)
    if isinstance(total_steps, bool) or not (isinstance(total_steps, int) and total_steps >= 1):
        raise ValueError(f"total_steps must be a positive integer, got {total_steps!r}")
    _check_positive("lr", lr)
    _check_positive("factor", factor)
    marks = list(milestones) if isinstance(milestones, (list, tuple)) else None
    if (not marks or not all(isinstance(m, (int, float)) and not isinstance(m, bool) and 0 < m < 1 for m in marks)
            or any(a >= b for a, b in zip(marks, marks[1:]))):
        raise ValueError(f"milestones must be increasing fractions of training in (0, 1), got {milestones!r}")
    passed = sum(step >= math.ceil(m * total_steps) for m in marks)
    value = float(lr)
    for _ in range(passed):
        value /= factor
    return value


def constant(step: int, lr: float, momentum: float | None = None) -> ScheduleValue:
    """A fixed learning rate (and, if given, a fixed momentum) at every step."""
    _check_step(step)
    _check_positive("lr", lr)
    if momentum is None:
        return lr
    if not (0.0 <= momentum < 1.0):
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
    return lr, momentum


# --- driving an optimizer -----------------------------------------------------------------

def _momentum_key(group: dict) -> str | None:
    if "momentum" in group:
        return "momentum"
    if "betas" in group:
        return "betas"
    return None


def group_momentum(group: dict) -> float:
    """The momentum of a param group: ``momentum`` for SGD-like optimizers, beta1 for Adam-like."""
    key = _momentum_key(group)
    if key == "momentum":
        return float(group["momentum"])
    if key == "betas":
        return float(group["betas"][0])
    return float("nan")


def set_group_momentum(group: dict, momentum: float) -> None:
    """Set SGD's ``momentum`` or Adam's beta1 in a param group; error if it has neither."""
    key = _momentum_key(group)
    if key == "momentum":
        group["momentum"] = momentum
    elif key == "betas":
        group["betas"] = (momentum, *group["betas"][1:])
    else:
        raise ValueError(
            f"the schedule returned a momentum ({momentum!r}) but the optimizer's param group has "
            "neither 'momentum' nor 'betas'")


def _checked_value(value, step: int, group: int, scale: float) -> tuple[float, float | None]:
    """``(scaled lr, momentum or None)`` of a schedule's value, refused if an optimizer must not take it."""
    where = f"at step {step} for param group {group}"
    if isinstance(value, tuple) and len(value) == 2:
        lr, momentum = value
        if not (_is_real(momentum) and 0.0 <= momentum < 1.0):
            raise ValueError(f"the schedule gave momentum {momentum!r} {where}; a momentum must be in [0, 1)")
    elif _is_real(value):
        lr, momentum = value, None
    else:
        raise ValueError(f"the schedule returned {value!r} {where}; expected an LR or an (lr, momentum) pair")
    if not (_is_real(lr) and math.isfinite(lr) and lr >= 0):
        raise ValueError(f"the schedule gave LR {lr!r} {where}; an LR must be a finite number >= 0")
    return lr * scale, momentum


class Scheduler(torch.optim.lr_scheduler.LRScheduler):
    """Drive an optimizer from a pure function of the batch index.

    Call :meth:`step` once per batch, after ``optimizer.step()``. Construction
    applies step 0, and each :meth:`step` applies the next one. The function returns
    a learning rate, or a ``(lr, momentum)`` pair, in which case the momentum of
    SGD-like optimizers (``momentum``) or Adam-like ones (``betas[0]``) is set too.
    Past the end of a finite schedule the function holds its last value (all the
    schedules of this module clamp), so extra steps never raise.

    Args:
        optimizer: any ``torch.optim.Optimizer``.
        fn: a schedule ``step -> lr | (lr, momentum)``, or one such function per param group.
        lr_scale: optional multiplier of the learning rate per param group
            (discriminative learning rates); momentum is not scaled.
        last_epoch: the last step applied, for resuming; prefer :meth:`load_state_dict`.

    Example:
        >>> from functools import partial
        >>> model = torch.nn.Linear(2, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        >>> sched = Scheduler(opt, partial(one_cycle, total_steps=100, max_lr=0.8))
        >>> round(opt.param_groups[0]["lr"], 3), opt.param_groups[0]["momentum"]
        (0.08, 0.95)

    ``state_dict()`` holds the position and scales but not the functions: resume by
    building the scheduler with the same functions and loading the state. Use
    module-level functions or ``functools.partial`` (not lambdas) to pickle it.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, fn: ScheduleFn | Sequence[ScheduleFn],
                 lr_scale: Sequence[float] | None = None, last_epoch: int = -1) -> None:
        n_groups = len(optimizer.param_groups)
        fns = list(fn) if isinstance(fn, (list, tuple)) else [fn] * n_groups
        if len(fns) != n_groups or not all(callable(f) for f in fns):
            raise ValueError(
                f"fn must be a callable or a list of {n_groups} callables (one per param group), got {fn!r}")
        scales = [1.0] * n_groups if lr_scale is None else [float(s) for s in lr_scale]
        if len(scales) != n_groups or not all(s > 0 for s in scales):
            raise ValueError(
                f"lr_scale must hold {n_groups} positive factors (one per param group), got {lr_scale!r}")
        self.fns = fns
        self.lr_scale = scales
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:  # called by LRScheduler.step()
        """The LR of each param group at this step; sets their momenta too.

        Raises:
            ValueError: for a value the optimizer must not get (a non-finite or negative LR, a
                momentum outside [0, 1)), naming the step, the value and the param group;
                nothing is set then.
        """
        values = [_checked_value(f(self.last_epoch), self.last_epoch, index, scale)
                  for index, (f, scale) in enumerate(zip(self.fns, self.lr_scale))]
        for group, (_, momentum) in zip(self.optimizer.param_groups, values):
            if momentum is not None:
                set_group_momentum(group, momentum)
        return [lr for lr, _ in values]

    def state_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "fns")}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore the position, then re-apply the schedule so the optimizer matches it."""
        self.__dict__.update(state_dict)
        for group, lr in zip(self.optimizer.param_groups, self.get_lr()):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

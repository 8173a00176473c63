"""Numbers read off runs: final and first-reached accuracies, the validation-training gap,
statistics over seeds, and the weight-decay rule of the range tests.

Everything takes the plain results of :func:`clrlib.train.fit` (a per-step history) or
:func:`clrlib.finder.lr_find` (a :class:`~clrlib.finder.FinderResult`).

Example:
    >>> mean_std([93.1, 93.5, 93.3])
    (93.3, 0.2, 3)
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Mapping, Sequence

import pandas as pd

from ..train import epoch_table

__all__ = ["epoch_table", "final_accuracy", "first_epoch_reaching", "loss_gap", "schedule_mismatch",
           "mean_std", "t_critical", "confidence_interval", "welch_difference",
           "largest_weight_decay_at_high_lr"]

# Two-sided 95% critical values of Student's t for 1..30 degrees of freedom (then 1.96 in the limit).
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042)


def final_accuracy(history: pd.DataFrame) -> float:
    """Test accuracy (%) after the last epoch of a :func:`~clrlib.train.fit` history."""
    return 100 * float(epoch_table(history)["test_acc"].iloc[-1])


def first_epoch_reaching(history: pd.DataFrame, accuracy: float) -> float:
    """The first epoch whose test accuracy (a fraction, like the history's) is at least ``accuracy``;
    NaN if the run never reaches it."""
    epochs = epoch_table(history)
    hits = epochs.index[epochs["test_acc"] >= accuracy]
    return int(hits[0]) if len(hits) else math.nan


def loss_gap(history: pd.DataFrame) -> pd.Series:
    """Validation minus training loss at the end of each epoch, indexed by the fraction of training done."""
    epochs = epoch_table(history)
    gap = epochs["test_loss"] - epochs["train_loss"]
    gap.index = epochs.index / epochs.index[-1]
    return gap.rename("validation - training loss")


def schedule_mismatch(history: pd.DataFrame, schedule: Callable) -> float:
    """The largest difference between the logged LR (and momentum) and ``schedule`` at each logged step."""
    worst = 0.0
    for step, lr, momentum in zip(history["step"], history["lr"], history["momentum"]):
        value = schedule(int(step))
        want_lr, want_mom = value if isinstance(value, tuple) else (value, None)
        worst = max(worst, abs(lr - want_lr), abs(momentum - want_mom) if want_mom is not None else 0.0)
    return worst


def mean_std(values: Sequence[float] | float) -> tuple[float, float, int]:
    """Mean, sample standard deviation (NaN for one value) and count of ``values`` (or one value).

    Raises:
        ValueError: for no values.
    """
    values = [float(v) for v in (values if isinstance(values, Iterable) and not isinstance(values, str)
                                 else [values])]  # a list, tuple, Series or array; or one number
    if not values:
        raise ValueError("mean_std got no values")
    n = len(values)
    mean = sum(values) / n
    std = round(math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)), 12) if n > 1 else math.nan
    return round(mean, 12), std, n  # rounded: 93.3, not 93.29999999999998


def t_critical(df: float) -> float:
    """Two-sided 95% critical value of Student's t with ``df`` degrees of freedom (a fractional
    df is rounded down, which errs on the wide side; 1.96 beyond 30)."""
    if not df >= 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df!r}")
    return _T95[int(df) - 1] if df < len(_T95) + 1 else 1.96


def confidence_interval(values: Sequence[float]) -> float:
    """Half-width of the 95% confidence interval of the mean of ``values`` (Student's t); NaN for one value."""
    mean, std, n = mean_std(list(values))
    return t_critical(n - 1) * std / math.sqrt(n) if n > 1 else math.nan


def welch_difference(a: Sequence[float], b: Sequence[float]) -> dict:
    """Mean of ``a`` minus mean of ``b`` with its 95% confidence interval (Welch's t, unequal variances).

    Returns ``{"difference", "ci95", "df", "verdict"}``: the verdict is "real at 95%" when the
    interval excludes 0, "within noise" when it does not, and "one run each: no test" when
    either side has a single value (no variance to test against).

    Example:
        >>> welch_difference([93.5, 93.6, 93.4], [93.4, 93.3, 93.5])["verdict"]
        'within noise'
    """
    (ma, sa, na), (mb, sb, nb) = mean_std(list(a)), mean_std(list(b))
    if na < 2 or nb < 2:
        return dict(difference=ma - mb, ci95=math.nan, df=math.nan, verdict="one run each: no test")
    va, vb = sa ** 2 / na, sb ** 2 / nb
    se = math.sqrt(va + vb)
    if se == 0:
        df = na + nb - 2
    else:
        df = (va + vb) ** 2 / (va ** 2 / (na - 1) + vb ** 2 / (nb - 1))
    half = t_critical(df) * se
    verdict = "real at 95%" if abs(ma - mb) > half else "within noise"
    return dict(difference=ma - mb, ci95=half, df=df, verdict=verdict)


def largest_weight_decay_at_high_lr(by_weight_decay: Mapping[float, object], within: float = 2.0,
                                    read: str = "bottom_end") -> float:
    """Smith's rule as the post relays it: of a few weight decays, keep the largest that still
    lets training reach a high maximum learning rate.

    Each range test's highest workable LR is read off its curve, and "high" means within a
    factor ``within`` of the best of the sweep.

    Args:
        by_weight_decay: ``{weight_decay: FinderResult}`` of range tests that differ only in it.
        within: how far below the sweep's best reading still counts as high (>= 1).
        read: ``"bottom_end"`` (default): the highest LR at which the smoothed loss is still
            near its minimum (:meth:`FinderResult.bottom_end_lr`, tolerance 0.1), robust to
            where noise puts the minimum on a flat bottom; ``"min_loss"``: the LR of the
            lowest smoothed loss (:attr:`FinderResult.min_loss_lr`); ``"blowup"``: the LR at
            which the test blew up (:attr:`FinderResult.blowup_lr`), which moves least with
            the weight decay. Tests with no point to read are left out (with ``"blowup"``, a
            test that stopped at once still counts).

    Raises:
        ValueError: for no tests, ``within < 1``, an unknown ``read``, or no test to read.
    """
    readers = {"bottom_end": lambda r: r.bottom_end_lr() if len(r) else None,
               "min_loss": lambda r: r.min_loss_lr if len(r) else None,
               "blowup": lambda r: r.blowup_lr if (len(r) or r.stopped) else None}
    if read not in readers:
        raise ValueError(f"read must be one of {sorted(readers)}, got {read!r}")
    if not by_weight_decay:
        raise ValueError("largest_weight_decay_at_high_lr got no range tests")
    if isinstance(within, bool) or not (isinstance(within, (int, float)) and within >= 1):
        raise ValueError(f"within must be >= 1, got {within!r}")
    lrs = {wd: readers[read](r) for wd, r in by_weight_decay.items()}
    lrs = {wd: lr for wd, lr in lrs.items() if lr is not None}
    if not lrs:
        raise ValueError(f"none of the range tests (weight decays {sorted(by_weight_decay)}) kept a point to read")
    best = max(lrs.values())
    return max(wd for wd, lr in lrs.items() if lr * within >= best)

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

from .train import epoch_table

__all__ = ["epoch_table", "final_accuracy", "first_epoch_reaching", "loss_gap", "schedule_mismatch",
           "mean_std", "momentum_variants", "flatten", "split", "largest_weight_decay_at_high_lr"]


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


def flatten(groups: Iterable[Sequence]) -> list:
    """``[[a, b], [c]] -> [a, b, c]``: the specs of several comparisons, to get their runs in one call."""
    return [item for group in groups for item in group]


def split(items: Sequence, groups: Iterable[Sequence]) -> list[list]:
    """The inverse of :func:`flatten`: ``items`` cut into lists as long as each of ``groups``."""
    out, start = [], 0
    for group in groups:
        out.append(list(items[start:start + len(group)]))
        start += len(group)
    if start != len(items):
        raise ValueError(f"split: {len(items)} items but the groups hold {start}")
    return out


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


def momentum_variants(cyclical: Sequence[float], constants: Sequence[float]) -> dict[str, tuple[float, float]]:
    """The momentum settings of a comparison: ``{"cyclical": (hi, lo), "constant 0.9": (0.9, 0.9), ...}``."""
    variants = {"cyclical": (float(cyclical[0]), float(cyclical[1]))}
    variants.update({f"constant {m:g}": (float(m), float(m)) for m in constants})
    return variants


def largest_weight_decay_at_high_lr(by_weight_decay: Mapping[float, object], within: float = 2.0) -> float:
    """Smith's rule as the post applies it: the largest weight decay that still trains at a high LR.

    "High" is a blow-up LR (:attr:`FinderResult.blowup_lr`) within a factor ``within`` of the
    highest blow-up LR of the sweep.

    Args:
        by_weight_decay: ``{weight_decay: FinderResult}`` of range tests that differ only in it.
        within: how far below the best blow-up LR still counts as high.
    """
    if not by_weight_decay:
        raise ValueError("largest_weight_decay_at_high_lr got no range tests")
    if not within >= 1:
        raise ValueError(f"within must be >= 1, got {within!r}")
    best = max(r.blowup_lr for r in by_weight_decay.values())
    return max(wd for wd, r in by_weight_decay.items() if r.blowup_lr * within >= best)

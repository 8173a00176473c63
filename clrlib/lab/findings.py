"""Findings computed from the runs: the sentences that figure captions and closing cells state.

A caption written before the runs states the conclusion its author expected; here every
sentence that states a finding ("the gap opens in the annihilation", "the larger the weight
decay, the earlier the blow-up") is made from the numbers it is about, so it says what the
stored runs show, and says it beside the post's claim. Each function returns a
:class:`Finding`: its sentence, the direction it states and the numbers behind it, which tests
check against the data.

Example:
    >>> f = trend("stop LR", {1e-5: 17.4, 1e-4: 19.1, 1e-3: 15.8}, "weight decay")
    >>> f.direction
    'no single direction'
    >>> change(0.19, 0.011, tolerance=0.05).direction
    'falls'
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import pandas as pd

from .analysis import loss_gap

__all__ = ["Finding", "Change", "change", "trend", "annihilation_start", "gap_in_annihilation",
           "gap_through_cycle", "closing_lines", "GAP_TOLERANCE"]

#: How far (in loss units) the validation-training gap must move to be said to open or close.
GAP_TOLERANCE = 0.05


@dataclass(frozen=True)
class Finding:
    """One measured statement: ``text`` (a sentence), the ``direction`` it states, its ``numbers``."""

    text: str
    direction: str
    numbers: Mapping = field(default_factory=dict)

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class Change:
    """A number before and after, and whether it moved by more than ``tolerance``."""

    before: float
    after: float
    tolerance: float

    @property
    def direction(self) -> str:
        """"rises", "falls" or "stays flat" (moved by at most ``tolerance``)."""
        delta = self.after - self.before
        return "stays flat" if abs(delta) <= self.tolerance else ("rises" if delta > 0 else "falls")

    @property
    def gap_word(self) -> str:
        """The direction said of a gap: "opens", "closes" or "stays flat"."""
        return {"rises": "opens", "falls": "closes"}.get(self.direction, "stays flat")


def change(before: float, after: float, tolerance: float) -> Change:
    """``before -> after`` as a :class:`Change`; finite numbers and a tolerance >= 0 only.

    Raises:
        ValueError: naming a NaN or infinite value, or a negative tolerance.
    """
    for name, value in (("before", before), ("after", after), ("tolerance", tolerance)):
        if isinstance(value, bool) or not math.isfinite(value):
            raise ValueError(f"change: {name} must be a finite number, got {value!r}")
    if tolerance < 0:
        raise ValueError(f"change: tolerance must be >= 0, got {tolerance!r}")
    return Change(float(before), float(after), float(tolerance))


def trend(what: str, by: Mapping[float, float], against: str) -> Finding:
    """How ``what`` moves as ``against`` grows, from ``{x: value}``: "rises", "falls" or "no single
    direction", with every value in the sentence.

    Raises:
        ValueError: for fewer than two values, or a value that is not a finite number (naming it).
    """
    if len(by) < 2:
        raise ValueError(f"trend: {what} needs values at two or more {against} settings, got {dict(by)!r}")
    for x, y in by.items():
        if isinstance(y, bool) or not isinstance(y, (int, float)) or not math.isfinite(y):
            raise ValueError(f"trend: {what} at {against} {x!r} must be a finite number, got {y!r}")
    xs = sorted(by)
    ys = [by[x] for x in xs]
    steps = [b - a for a, b in zip(ys, ys[1:])]
    direction = ("rises" if all(s > 0 for s in steps) else "falls" if all(s < 0 for s in steps)
                 else "no single direction")
    said = {"rises": f"rises as {against} grows", "falls": f"falls as {against} grows",
            "no single direction": f"does not move one way with {against}"}[direction]
    values = ", ".join(f"{x:g}: {y:.3g}" for x, y in zip(xs, ys))
    return Finding(f"{what} {said} ({values})", direction, dict(zip(xs, ys)))


def annihilation_start(history: pd.DataFrame) -> float:
    """The fraction of training after which the logged LR stays below its first value: where a
    1cycle's annihilation begins (1.0 for a schedule that never goes below its start)."""
    lr = history["lr"].to_numpy()
    last = int((lr >= lr[0] * (1 - 1e-9)).nonzero()[0][-1])  # the last step at or above the start
    return 1.0 if last == len(lr) - 1 else last / len(lr)


def _gap_at(gap: pd.Series, fraction: float) -> tuple[int, float]:
    """The epoch (1, 2, ...) that ends last at or before ``fraction`` of training (the first if
    none), and the gap at its end."""
    k = max(1, int((gap.index <= fraction + 1e-9).sum()))
    return k, float(gap.iloc[k - 1])


def gap_in_annihilation(histories: Mapping[str, pd.DataFrame], tolerance: float = GAP_TOLERANCE) -> Finding:
    """What the validation-training loss gap of each run does during its annihilation: its value
    when the annihilation starts and at the end of training, and "opens"/"closes"/"stays flat".

    ``direction`` is the direction of the first run when all agree, else "mixed"."""
    parts, words, numbers = [], [], {}
    for name, history in histories.items():
        gap = loss_gap(history)
        start = annihilation_start(history)
        epoch, before = _gap_at(gap, start)
        c = change(before, float(gap.iloc[-1]), tolerance)
        words.append(c.gap_word)
        numbers[name] = {"annihilation_start": start, "epoch": epoch, "before": c.before, "after": c.after,
                         "word": c.gap_word}
        parts.append(f"{name}: {c.before:.3f} after epoch {epoch} (the annihilation starts at {100 * start:.0f}% "
                     f"of training) -> {c.after:.3f} after epoch {len(gap)} ({c.gap_word})")
    direction = words[0] if len(set(words)) == 1 else "mixed"
    text = ("validation minus training loss from the start of each annihilation to the end of training: "
            + "; ".join(parts))
    return Finding(text, direction, numbers)


def gap_through_cycle(history: pd.DataFrame, tolerance: float = GAP_TOLERANCE, skip: float = 0.2) -> Finding:
    """The gap of one 1cycle run: its range during the cycle past the first ``skip`` of training
    (early validation spikes of a young model left out, as :func:`clrlib.plots.plot_gaps` does),
    its value at the cycle's end and at the end of training; ``direction`` is what it does in
    the annihilation."""
    gap = loss_gap(history)
    start = annihilation_start(history)
    epoch, before = _gap_at(gap, start)
    cycle = gap.iloc[:epoch]
    cycle = cycle[cycle.index > skip] if (cycle.index > skip).any() else cycle
    low, peak = float(cycle.min()), float(cycle.max())
    c = change(before, float(gap.iloc[-1]), tolerance)
    text = (f"validation minus training loss: between {low:.3f} and {peak:.3f} during the cycle (past its first "
            f"{100 * skip:.0f}%), {c.before:.3f} at its end (after epoch {epoch}; the annihilation starts at "
            f"{100 * start:.0f}% of training), {c.after:.3f} after the last epoch, {len(gap)}: in the "
            f"annihilation the gap {c.gap_word}")
    return Finding(text, c.gap_word, {"peak_in_cycle": peak, "low_in_cycle": low, "before": c.before, "after": c.after,
                                      "annihilation_start": start, "epoch": epoch})


def _number(value: float, metric: str) -> str:
    return f"{value:.2f}" if "%" in metric else f"{value:.3g}"


def closing_lines(summary: pd.DataFrame, comparisons: pd.DataFrame) -> list[str]:
    """Markdown bullets from a notebook's summary and comparison rows: each number that has a
    post value beside it (ours, over how many seeds, and the difference), and each comparison
    against the post's difference, saying where the direction disagrees."""
    lines = []
    for row in summary.itertuples(index=False):
        if row.post_value is None or (isinstance(row.post_value, float) and math.isnan(row.post_value)):
            continue
        spread = f" +- {_number(row.std, row.metric)}" if row.n_seeds > 1 else ""
        diff = row.value - row.post_value
        side = "above" if diff > 0 else "below" if diff < 0 else "equal to"
        lines.append(f"- {row.experiment}, {row.metric}: **{_number(row.value, row.metric)}{spread}** "
                     f"({row.n_seeds} seed(s)) against the post's {_number(row.post_value, row.metric)}: "
                     f"{_number(abs(diff), row.metric)} {side} it")
    for row in comparisons.itertuples(index=False):
        ours = f"{row.difference:+.2f}" + ("" if math.isnan(row.ci95) else f" +- {row.ci95:.2f}")
        line = f"- {row.comparison}: ours {ours} ({row.verdict})"
        post = row.post_difference
        if post is not None and not (isinstance(post, float) and math.isnan(post)):
            agree = (row.difference > 0) == (post > 0) or row.difference == post
            line += f"; the post's {post:+.2f}: " + ("same direction" if agree else "**the opposite direction**")
        lines.append(line)
    return lines

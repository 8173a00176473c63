"""The post's method as one call: range tests choose the weight decay and the max LR, then
1cycle trains.

:func:`plan_one_cycle` runs one LR range test per candidate weight decay (through
:meth:`clrlib.lab.runs.Lab.lr_find_many`, so they are stored and reused like any run), reads the
choices off the curves by the three written rules below, and returns a :class:`Plan`: the
choices, the sentences that justify them, the warnings, and a ready :class:`~clrlib.lab.specs.TrainSpec`
that :meth:`Plan.fit` trains. :func:`plan_from_curves` applies the same rules to curves you
already have (saved ones, or synthetic ones in tests).

The range tests run under the training's own conditions: the model, data, batch size, SGD
momentum, drop-last rule, seed and precision all come from the ``base`` spec the caller
gives; only the weight decay varies. The post is firm that a finder run under other settings
says little about the real run.

Rules (each paraphrases the post's advice, then says how it is read off the curves):

1. **Weight decay.** Smith's advice, as the post relays it: run the finder at a few weight
   decays and keep the biggest weight decay that still lets training reach a high maximum LR.
   The highest LR a curve trains well at is read as the end of its bottom
   (:meth:`~clrlib.finder.FinderResult.bottom_end_lr`): going right from the minimum of the
   smoothed loss, the last LR before the loss climbs more than a tenth of the curve's descent
   above the minimum. "High" means no more than ``within`` times (default 2) below the
   highest of the sweep, and the largest weight decay that meets this bar is chosen
   (:func:`clrlib.lab.analysis.largest_weight_decay_at_high_lr`). Curves too short or too flat to
   read (see the checks below) are left out, with a warning. Why not the minimum or the
   blow-up: on real curves the bottom is flat (ResNet-20 on 10k CIFAR-10 images: within 2% of
   the minimum from LR 0.5 to 4), so noise decides where the minimum falls, while the blow-up
   moves little with the weight decay (13 to 19 from wd 1e-2 to 1e-5); the end of the bottom
   moves with it (1.9 at 1e-2, 3.3 at 1e-3, 5.3 at 1e-4) and sits where the curve turns up
   steeply, so noise moves it little.
   When two weight decays give nearly the same curve (smoothed losses within
   ``same_tolerance``, default 5%, of each other from the first LR both tried up to the later
   of their minima, and blow-ups within a factor 1.5), the rule takes the larger and the plan
   says so: more regularization at little or no cost in learning rate.
2. **Max LR.** The post reads the peak of the cycle a little to the left of the curve's
   minimum, on the part where the loss is still going down. Here: the chosen curve's
   :meth:`~clrlib.finder.FinderResult.one_cycle_max_lr`, its min-loss LR divided by
   ``divisor`` (default 3, about half a decade to the left). The post also found that 1cycle
   tolerates peaks nearer the minimum (super-convergence, at some risk of divergence, which a
   longer warm-up helps against): a ``divisor`` of 1.5 to 2 is that more aggressive choice.
3. **Cycle.** The post's cycle has two legs of equal length, up from a value about ten times
   below the peak to the peak and back down; the cycle is a bit shorter than the whole
   training, whose last part lets the LR fall far below the low end. Here: low LR
   ``max_lr / div`` (``div`` 10 by default; 20 is gentler), the cycle spans ``1 - annihilate``
   of the epochs (``annihilate`` 0.1 by default), the rest goes down to
   ``max_lr / (div * final_div)`` (``final_div`` 100: the post's last phase ends two orders
   of magnitude under the low end), and momentum moves opposite to the LR between 0.95 and
   0.85, the post's pair.

Checks on the curves, each with a stated outcome:

- A curve that kept fewer than ``min_points`` points before it blew up, or whose smoothed
  loss is lowest at its very first LR, cannot be read: it is left out of rule 1 with a warning
  (lower ``start_lr``, or raise ``num_it``). If no curve can be read, :class:`ValueError`,
  naming the largest weight decay's curve and what to change.
- A curve that never blew up within the range: a warning (its blow-up LR is only a lower
  bound; rerun with a larger ``end_lr``); the choice is still made.
- The max LR falls below the first LR tested: a warning (lower ``start_lr`` to see it).

Warnings go to :attr:`Plan.warnings` and are also issued as :class:`PlanWarning`.

Example:
    >>> from clrlib.finder import FinderResult
    >>> from clrlib.lab.specs import FinderSpec
    >>> lrs = [10 ** (k / 4 - 3) for k in range(17)]          # 1e-3 to 10
    >>> bowl = [2.3, 2.3, 2.2, 2.1, 1.9, 1.7, 1.5, 1.35, 1.25, 1.2, 1.3, 1.6, 2.2]
    >>> curves = {1e-3: FinderResult(lrs[:12], bowl[:12], stop_lr=lrs[12]),
    ...           1e-4: FinderResult(lrs[:13], bowl, stop_lr=lrs[13])}
    >>> plan = plan_from_curves(curves, FinderSpec(), epochs=30)
    >>> plan.weight_decay, round(plan.max_lr, 4), plan.spec.schedule.kwargs["div"]
    (0.001, 0.0593, 10.0)
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import warnings as _warnings
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .lab.analysis import largest_weight_decay_at_high_lr
from .finder import FinderResult
from .lab.specs import FinderSpec, ScheduleSpec, TrainSpec

__all__ = ["Plan", "PlanWarning", "plan_one_cycle", "plan_from_curves", "curve_gap", "WEIGHT_DECAYS"]

#: The weight decays tried by default (the post's sweep).
WEIGHT_DECAYS = (1e-2, 1e-3, 1e-4, 1e-5)
#: Two curves whose blow-up LRs differ by more than this factor are not "nearly the same".
SAME_BLOWUP_FACTOR = 1.5


class PlanWarning(UserWarning):
    """A choice of :func:`plan_one_cycle` was made on a curve that is not fully readable."""


@dataclass
class Plan:
    """A 1cycle run chosen from range tests, with its reasons.

    Attributes:
        weight_decay: rule 1's choice.
        max_lr: rule 2's choice, the peak LR of the cycle.
        div: the cycle runs from ``max_lr / div`` to ``max_lr`` and back.
        annihilate: the fraction of the epochs after the cycle, in which the LR falls to
            ``max_lr / (div * final_div)``.
        final_div: see ``annihilate``.
        moms: the momentum's (high, low), high at the ends of the cycle, low at the peak.
        epochs: the length of the run.
        curves: ``{weight_decay: FinderResult}``, the range tests the choices were read from.
        reasons: plain sentences, each naming the rule it applies and the numbers it used.
        warnings: what to be wary of (each also issued as a :class:`PlanWarning`).
        spec: the training run, ready for :meth:`fit` or :meth:`clrlib.lab.runs.Lab.fit_many`.
        finder_specs: ``{weight_decay: FinderSpec}`` of the range tests (empty if the curves
            were given to :func:`plan_from_curves`).
        rules: the settings of the rules (``within``, ``divisor``, ``min_points``, ...).
    """

    weight_decay: float
    max_lr: float
    div: float
    annihilate: float
    final_div: float
    moms: tuple
    epochs: int
    curves: dict = field(repr=False)
    reasons: list
    warnings: list
    spec: TrainSpec = field(repr=False)
    finder_specs: dict = field(default_factory=dict, repr=False)
    rules: dict = field(default_factory=dict)
    explained: dict = field(default_factory=dict, repr=False)  # choice -> the reason behind it

    @property
    def low_lr(self) -> float:
        """Where the cycle starts and ends: ``max_lr / div``."""
        return self.max_lr / self.div

    @property
    def final_lr(self) -> float:
        """Where the annihilation ends: ``max_lr / (div * final_div)``."""
        return self.low_lr / self.final_div

    def fit(self, lab, seeds: Sequence[int] = (0,)) -> list[pd.DataFrame]:
        """Train :attr:`spec` once per seed with ``lab.fit_many``; one history per seed.

        Raises:
            ValueError: for no seeds (a bad seed raises :class:`~clrlib.lab.specs.SpecError`).
        """
        seeds = [seeds] if isinstance(seeds, numbers.Integral) else list(seeds)
        if not seeds:
            raise ValueError("Plan.fit needs at least one seed")
        return lab.fit_many([self.spec.replace(seed=seed) for seed in seeds])

    def table(self) -> pd.DataFrame:
        """The choices, one row each (``choice, value, reason``), then the other notes and
        the warnings (choice ``"note"`` / ``"warning"``)."""
        values = {
            "weight decay": self.weight_decay,
            "max LR": self.max_lr,
            "low LR (max LR / div)": self.low_lr,
            "annihilate": self.annihilate,
            "final LR": self.final_lr,
            "momentum (high, low)": tuple(self.moms),
        }
        rows = [(name, value, self.explained.get(name, "")) for name, value in values.items()]
        used = set(self.explained.values())
        rows += [("note", None, r) for r in self.reasons if r not in used]  # range tests, twin curves
        rows += [("warning", None, w) for w in self.warnings]
        return pd.DataFrame(rows, columns=["choice", "value", "reason"])

    def sweep_table(self) -> pd.DataFrame:
        """One row per range test: points kept, whether it stopped, blow-up LR, min-loss LR,
        the end of its bottom (rule 1's reading; NaN where the curve was left out of rule 1),
        the max LR rule 2 would read off it, and whether it was chosen."""
        divisor, min_points = self.rules.get("divisor", 3.0), self.rules.get("min_points", 8)
        rows = []
        for wd, curve in self.curves.items():
            n = len(curve)
            min_lr = curve.min_loss_lr if n else math.nan
            rows.append(dict(weight_decay=wd, points=n, stopped=curve.stopped,
                             blowup_lr=curve.blowup_lr if (n or curve.stopped) else math.nan,
                             min_loss_lr=min_lr, min_loss=min(curve.losses) if n else math.nan,
                             bottom_end_lr=curve.bottom_end_lr() if _readable(curve, min_points) else math.nan,
                             one_cycle_max_lr=min_lr / divisor, chosen=wd == self.weight_decay))
        return pd.DataFrame(rows)

    def plot(self, ax=None, **kwargs):
        """The range tests overlaid (log LR axis), each readable curve's end of the bottom
        marked (rule 1's reading), the chosen max LR starred on the chosen curve and the
        cycle's LR range shaded; returns the axes.

        Args:
            ax: axes to draw on (default: a new figure).
            **kwargs: passed to :func:`clrlib.plots.plot_finders` (``marks``, ``raw``, ...).
        """
        from .plots import plot_finders

        labels = {wd: f"wd {wd:g}" + (" (chosen)" if wd == self.weight_decay else "") for wd in self.curves}
        ax = plot_finders({labels[wd]: curve for wd, curve in self.curves.items()}, ax=ax, **kwargs)
        chosen = self.curves[self.weight_decay]
        color = next((ln.get_color() for ln in ax.get_lines() if ln.get_label() == labels[self.weight_decay]),
                     "k")
        colors = {ln.get_label(): ln.get_color() for ln in ax.get_lines()}
        for line in ax.get_lines():
            if line.get_label() == labels[self.weight_decay]:
                line.set_linewidth(2.5)
        marked = False
        for wd, curve in self.curves.items():  # rule 1's reading on every readable curve
            if _readable(curve, self.rules.get("min_points", 8)):
                end = curve.bottom_end_lr()
                ax.plot([end], [curve.loss_at(end)], "v", color=colors.get(labels[wd], "k"), ms=8, mec="k",
                        label="_nolegend_" if marked else "end of the bottom (rule 1)")
                marked = True
        ax.axvspan(self.low_lr, self.max_lr, color=color, alpha=0.12,
                   label=f"cycle: {self.low_lr:.3g} to {self.max_lr:.3g}")
        ax.plot([self.max_lr], [chosen.loss_at(self.max_lr)], "*", color=color, ms=15, mec="k",
                label=f"max LR {self.max_lr:.3g} (min-loss LR / {self.rules.get('divisor', 3.0):g})")
        ax.set_title(f"1cycle plan: weight decay {self.weight_decay:g}, max LR {self.max_lr:.3g}",
                     fontsize="medium")
        ax.legend(fontsize="small")
        return ax


def curve_gap(a: FinderResult, b: FinderResult, up_to: float | None = None) -> tuple[float, float, float]:
    """How far apart two range-test curves are where both were measured.

    Args:
        a, b: the curves.
        up_to: compare only LRs up to this one (the plan passes the later of the two
            min-loss LRs: the descent and the bottom, not the steep climb to the blow-up,
            where a small shift in LR makes a large difference in loss).

    Returns:
        ``(gap, lo, hi)``: the largest relative difference of the smoothed losses
        (``|a - b| / min(a, b)``, both curves interpolated on log(LR) at every LR of either)
        over the LRs ``lo`` to ``hi`` that both reached; ``gap`` is infinite if they share
        fewer than two LRs.
    """
    if not len(a) or not len(b):
        return math.inf, math.nan, math.nan
    lo, hi = max(a.lrs[0], b.lrs[0]), min(a.lrs[-1], b.lrs[-1])
    if up_to is not None:
        hi = min(hi, up_to)
    grid = sorted({lr for lr in (*a.lrs, *b.lrs) if lo <= lr <= hi})
    if len(grid) < 2:
        return math.inf, lo, hi
    x = np.log(grid)
    ya = np.interp(x, np.log(a.lrs), a.losses)
    yb = np.interp(x, np.log(b.lrs), b.losses)
    floor = np.maximum(np.minimum(np.abs(ya), np.abs(yb)), 1e-12)
    return float(np.max(np.abs(ya - yb) / floor)), lo, hi


def plan_one_cycle(lab, base: TrainSpec | FinderSpec, epochs: int | None = None,
                   weight_decays: Sequence[float] = WEIGHT_DECAYS, *, finder: Mapping[str, Any] | None = None,
                   within: float = 2.0, divisor: float = 3.0, div: float = 10.0, annihilate: float = 0.1,
                   final_div: float = 100.0, moms: Sequence[float] = (0.95, 0.85), min_points: int = 8,
                   same_tolerance: float = 0.05) -> Plan:
    """Run the range tests over ``weight_decays`` and plan a 1cycle run by the module's rules.

    Args:
        lab: a :class:`~clrlib.lab.runs.Lab` (anything with ``lr_find_many``); its store keeps the
            range tests, so planning again reuses them.
        base: the run's settings: model, data, batch size, momentum, drop-last rule, seed and
            precision. A :class:`~clrlib.lab.specs.FinderSpec` also gives the range test's settings
            (``start_lr``, ``end_lr``, ``num_it``, ...); a :class:`~clrlib.lab.specs.TrainSpec`
            also gives ``epochs``. Its weight decay and schedule are replaced.
        epochs: the length of the planned run (default: ``base.epochs`` for a TrainSpec).
        weight_decays: the candidates, one range test each.
        finder: changes to the range test's settings, e.g. ``{"num_it": 200, "end_lr": 10}``
            (applied to ``base`` if it is a FinderSpec, else to FinderSpec's defaults).
        within, divisor, div, annihilate, final_div, moms, min_points, same_tolerance: the
            rules' settings; see :func:`plan_from_curves`.

    Returns:
        A :class:`Plan`; ``plan.fit(lab)`` trains it.

    Raises:
        ValueError: for a bad setting (before any range test runs), or curves from which
            no choice can be read (the message says what to change).
    """
    epochs = _check_settings(base, epochs, weight_decays, within, divisor, div, annihilate, final_div, moms,
                             min_points, same_tolerance)
    finder_base = _finder_spec(base, finder)
    specs = {float(wd): finder_base.replace(weight_decay=float(wd)) for wd in weight_decays}
    results = lab.lr_find_many(list(specs.values()))
    curves = dict(zip(specs, results))
    plan = plan_from_curves(curves, base, epochs, within=within, divisor=divisor, div=div,
                            annihilate=annihilate, final_div=final_div, moms=moms, min_points=min_points,
                            same_tolerance=same_tolerance)
    plan.finder_specs = specs
    plan.reasons.insert(0, _describe_tests(finder_base, list(specs)))
    return plan


def plan_from_curves(curves: Mapping[float, FinderResult], base: TrainSpec | FinderSpec,
                     epochs: int | None = None, *, within: float = 2.0, divisor: float = 3.0,
                     div: float = 10.0, annihilate: float = 0.1, final_div: float = 100.0,
                     moms: Sequence[float] = (0.95, 0.85), min_points: int = 8,
                     same_tolerance: float = 0.05) -> Plan:
    """Plan a 1cycle run from range tests already made, by the module's three rules.

    Args:
        curves: ``{weight_decay: FinderResult}``, tests that differ only in the weight decay.
        base: the run's other settings (see :func:`plan_one_cycle`).
        epochs: the length of the run (default: ``base.epochs`` for a TrainSpec).
        within: rule 1: how far below the sweep's highest blow-up LR still counts as high (>= 1).
        divisor: rule 2: max LR = min-loss LR / ``divisor`` (> 1; 3 stays on the descent,
            somewhat left of the minimum; 1.5 to 2 goes nearer to it, for super-convergence).
        div, annihilate, final_div, moms: rule 3, the cycle
            (see :func:`clrlib.schedules.one_cycle`).
        min_points: the fewest points a readable curve keeps before it blows up.
        same_tolerance: curves whose smoothed losses differ by at most this fraction (and
            whose blow-ups are within a factor 1.5) count as nearly the same.

    Raises:
        ValueError: for a bad setting, or when the chosen curve is unreadable (it blew up
            after fewer than ``min_points`` points, or its loss was lowest at its first LR).
    """
    epochs = _check_settings(base, epochs, list(curves), within, divisor, div, annihilate, final_div, moms,
                             min_points, same_tolerance)
    curves = {float(wd): _check_curve(wd, c) for wd, c in curves.items()}
    readable = {w: c for w, c in curves.items() if _readable(c, min_points)}
    if not readable:
        _check_chosen(max(curves), curves[max(curves)], min_points)  # raises, saying what to change
    wd = largest_weight_decay_at_high_lr(readable, within=within)
    chosen = curves[wd]
    warned: list[str] = []

    explained = {"weight decay": _weight_decay_reason(wd, curves, readable, within)}
    notes = _same_curve_notes(wd, curves, min_points, same_tolerance)
    max_lr = chosen.min_loss_lr / divisor
    explained["max LR"] = _max_lr_reason(wd, chosen, max_lr, divisor)
    for other, curve in curves.items():
        if other != wd:
            warned += _unreadable_warnings(other, curve, min_points)
    warned += _blowup_warnings(wd, curves)
    if max_lr < chosen.lrs[0]:
        warned.append(f"The max LR {max_lr:.3g} lies below the first LR the test at weight decay {wd:g} "
                      f"tried ({chosen.lrs[0]:.3g}): its minimum is only "
                      f"{chosen.lrs.index(chosen.min_loss_lr)} point(s) into the curve. Lower start_lr to "
                      "see the descent that the max LR should stand on.")

    schedule = ScheduleSpec.make("one_cycle", max_lr=max_lr, div=div, annihilate=annihilate,
                                 final_div=final_div, moms=tuple(moms))
    spec = _train_spec(base, epochs, wd, schedule)
    cycle = _cycle_reasons(spec, max_lr, div, annihilate, final_div, moms)
    explained.update(cycle)
    reasons = [explained["weight decay"], *notes, explained["max LR"], cycle["cycle"]]
    for message in warned:
        _warnings.warn(message, PlanWarning, stacklevel=2)
    rules = dict(within=within, divisor=divisor, min_points=min_points, same_tolerance=same_tolerance)
    return Plan(weight_decay=wd, max_lr=max_lr, div=float(div), annihilate=float(annihilate),
                final_div=float(final_div), moms=tuple(float(m) for m in moms), epochs=epochs,
                curves=curves, reasons=reasons, warnings=warned, spec=spec, rules=rules, explained=explained)


# --- checks ---------------------------------------------------------------------------------------

def _positive(name: str, value, minimum: float, exclusive: bool) -> None:
    ok = (isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
          and (value > minimum if exclusive else value >= minimum))
    if not ok:
        raise ValueError(f"{name} must be a number {'>' if exclusive else '>='} {minimum:g}, got {value!r}")


def _check_settings(base, epochs, weight_decays, within, divisor, div, annihilate, final_div, moms,
                    min_points, same_tolerance) -> int:
    """Check everything before a range test runs; returns the epochs of the run."""
    if not isinstance(base, (TrainSpec, FinderSpec)):
        raise TypeError(f"base must be a TrainSpec or a FinderSpec, got {base!r}")
    if epochs is None:
        if not isinstance(base, TrainSpec):
            raise ValueError("epochs is needed when base is a FinderSpec (a TrainSpec gives its own)")
        epochs = base.epochs
    if isinstance(epochs, bool) or not isinstance(epochs, numbers.Integral) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    weight_decays = list(weight_decays)
    if not weight_decays:
        raise ValueError("weight_decays is empty: give at least one weight decay to test")
    for wd in weight_decays:
        _positive("each weight decay", wd, 0, exclusive=False)
    if len({float(wd) for wd in weight_decays}) != len(weight_decays):
        raise ValueError(f"weight_decays has repeats: {weight_decays!r}")
    _positive("within", within, 1, exclusive=False)
    _positive("divisor", divisor, 1, exclusive=True)
    _positive("same_tolerance", same_tolerance, 0, exclusive=False)
    if isinstance(min_points, bool) or not isinstance(min_points, numbers.Integral) or min_points < 2:
        raise ValueError(f"min_points must be an integer >= 2, got {min_points!r}")
    try:  # the schedule's own checks of div, final_div, annihilate and moms
        ScheduleSpec.make("one_cycle", max_lr=1.0, div=div, annihilate=annihilate, final_div=final_div,
                          moms=tuple(moms))
    except (TypeError, ValueError) as e:
        raise ValueError(f"bad cycle setting: {e}") from None
    return int(epochs)


def _check_curve(wd, curve) -> FinderResult:
    if not isinstance(curve, FinderResult):
        raise TypeError(f"the range test of weight decay {wd!r} must be a FinderResult, "
                        f"got {type(curve).__name__}")
    if len(curve.lrs) != len(curve.losses):
        raise ValueError(f"the range test of weight decay {wd:g} has {len(curve.lrs)} LRs but "
                         f"{len(curve.losses)} losses")
    if not len(curve) and not curve.stopped:
        raise ValueError(f"the range test of weight decay {wd:g} kept no points and did not stop: nothing to read")
    return curve


def _start_lr(curve: FinderResult) -> float:
    return curve.settings.get("start_lr", curve.lrs[0] if len(curve) else math.nan)


def _readable(curve: FinderResult, min_points: int) -> bool:
    """Whether a max LR can be read off the curve: enough points, and a minimum past the first."""
    return len(curve) >= min_points and curve.min_loss_lr != curve.lrs[0]


def _check_chosen(wd: float, curve: FinderResult, min_points: int) -> None:
    """Raise, saying what to change, if the curve cannot give a max LR."""
    n = len(curve)
    if n < min_points:
        if curve.stopped:
            raise ValueError(
                f"the range test at weight decay {wd:g} (the largest tested; no curve could be read) kept only "
                f"{n} point(s) before it blew up at LR {curve.stop_lr:.3g}; at least {min_points} are needed to "
                "see a descent. "
                f"It started too close to the blow-up: lower start_lr (it was {_start_lr(curve):.3g}), "
                "e.g. by 100x, or raise num_it.")
        raise ValueError(f"the range test at weight decay {wd:g} (the largest tested; no curve could be read) "
                         f"kept only {n} point(s); at least {min_points} are needed: raise num_it.")
    if curve.min_loss_lr == curve.lrs[0]:
        raise ValueError(
            f"the smoothed loss of the range test at weight decay {wd:g} (the largest tested; no curve could be "
            f"read) was lowest at its very first LR, {curve.lrs[0]:.3g}: start_lr is too high to see the descent, so no LR left of "
            f"the minimum can be read. Lower start_lr (e.g. to {curve.lrs[0] / 100:.3g}).")


def _unreadable_warnings(wd: float, curve: FinderResult, min_points: int) -> list[str]:
    """Warnings for a curve that rule 1 did not choose but that cannot be read either."""
    n = len(curve)
    if n < min_points and curve.stopped:
        return [f"The range test at weight decay {wd:g} blew up after only {n} point(s), at LR "
                f"{curve.stop_lr:.3g}: too few to read its curve; lower start_lr (it was "
                f"{_start_lr(curve):.3g}) to see it. It is left out of rule 1."]
    if n < min_points:
        return [f"The range test at weight decay {wd:g} kept only {n} point(s), too few to read its curve; "
                "raise num_it. It is left out of rule 1."]
    if curve.min_loss_lr == curve.lrs[0]:
        return [f"The smoothed loss of the range test at weight decay {wd:g} was lowest at its first LR "
                f"({curve.lrs[0]:.3g}): start_lr was too high for this curve; lower it to see its descent. It is "
                "left out of rule 1."]
    return []


def _blowup_warnings(wd: float, curves: dict) -> list[str]:
    """One warning per range test that never blew up (its blow-up LR is only a lower bound)."""
    out = []
    for other, curve in curves.items():
        if curve.stopped:
            continue
        last = curve.lrs[-1]
        falling = curve.min_loss_lr == last
        text = (f"The range test at weight decay {other:g} never blew up: it reached LR {last:.3g}, the end "
                f"of its range, with the loss {'still falling' if falling else 'under the stop factor'}, "
                "so its blow-up LR is only a lower bound")
        if other == wd and falling:
            text += ", and the max LR read off its last point is conservative"
        out.append(text + f". Rerun with a larger end_lr (e.g. {10 * last:.3g}).")
    return out


# --- reasons --------------------------------------------------------------------------------------

def _blowup_text(curve: FinderResult) -> str:
    return f"{curve.blowup_lr:.3g}" if curve.stopped else f"over {curve.blowup_lr:.3g} (never blew up)"


def _weight_decay_reason(wd: float, curves: dict, readable: dict, within: float) -> str:
    ends = {w: c.bottom_end_lr() for w, c in readable.items()}
    best_wd = max(ends, key=lambda w: (ends[w], w))
    best = ends[best_wd]
    listing = "; ".join(f"wd {w:g}: " + (f"{ends[w]:.3g} (blow-up {_blowup_text(c)})" if w in ends
                                          else "unreadable, left out")
                        for w, c in sorted(curves.items(), reverse=True))
    if len(readable) == 1:
        return (f"Weight decay {wd:g} (rule 1, the largest weight decay that still trains at a high LR): "
                f"it was the only readable test (bottom ends at LR {ends[wd]:.3g}, blow-up "
                f"{_blowup_text(curves[wd])}), so there was nothing to compare it with.")
    return (f"Weight decay {wd:g} (rule 1, the largest weight decay whose bottom, the LRs where the loss stays "
            f"near its minimum, reaches within {within:g}x of the sweep's highest): the bottoms ended at {listing}. "
            f"The highest is {best:.3g} (wd {best_wd:g}), so {best / within:.3g} or above counts as high, and "
            f"{wd:g} is the largest weight decay that reaches it ("
            + ("its own is the highest)." if ends[wd] == best else
               f"its bottom ends at {ends[wd]:.3g}, {best / ends[wd]:.2g}x below the highest)."))


def _same_curve_notes(wd: float, curves: dict, min_points: int, tolerance: float) -> list[str]:
    """Sentences for the smaller weight decays whose curves nearly match the chosen one's."""
    chosen = curves[wd]
    notes = []
    for other in sorted((w for w in curves if w < wd), reverse=True):
        curve = curves[other]
        if len(curve) < min_points:
            continue
        gap, lo, hi = curve_gap(chosen, curve, up_to=max(chosen.min_loss_lr, curve.min_loss_lr))
        ratio = max(chosen.blowup_lr, curve.blowup_lr) / min(chosen.blowup_lr, curve.blowup_lr)
        if gap <= tolerance and ratio <= SAME_BLOWUP_FACTOR:
            notes.append(
                f"Weight decays {wd:g} and {other:g} gave nearly the same curve (smoothed losses within "
                f"{gap:.1%} of each other from LR {lo:.3g} to {hi:.3g}, the later minimum; blow-ups at "
                f"{_blowup_text(chosen)} and {_blowup_text(curve)}): rule 1 takes the larger, {wd:g}: more "
                "regularization at little or no cost in learning rate.")
    return notes


def _times(ratio: float) -> str:
    """A ratio for a sentence: 3 significant digits, without an exponent (1270, not 1.27e+03)."""
    return f"{ratio:.3g}" if ratio < 1000 else f"{ratio:,.0f}"


def _max_lr_reason(wd: float, curve: FinderResult, max_lr: float, divisor: float) -> str:
    low = curve.min_loss_lr
    lowest = min(curve.losses)
    return (f"Max LR {max_lr:.3g} (rule 2, on the descent left of the minimum: min-loss LR / {divisor:g}): "
            f"the smoothed loss of the wd {wd:g} test is lowest ({lowest:.3g}) at LR {low:.3g}, and {low:.3g} / "
            f"{divisor:g} = {max_lr:.3g}, where the loss is {curve.loss_at(max_lr):.3g}, still above the "
            f"minimum; it is {_times(curve.blowup_lr / max_lr)}x below the blow-up LR "
            f"{_blowup_text(curve)}.")


def _cycle_reasons(spec: TrainSpec, max_lr: float, div: float, annihilate: float, final_div: float,
                   moms: Sequence[float]) -> dict[str, str]:
    """Rule 3's sentence (key ``"cycle"``) and a short reason for each of its table rows."""
    cycle_steps = round((1 - annihilate) * spec.total_steps)
    low, final = max_lr / div, max_lr / div / final_div
    length = (f"the first {1 - annihilate:.0%} of the {spec.epochs} epochs ({cycle_steps} of "
              f"{spec.total_steps} steps)")
    return {
        "cycle": (f"Cycle (rule 3): the LR goes from {low:.3g} (max LR / {div:g}) up to {max_lr:.3g} and back "
                  f"in two equal legs over {length}, a little shorter than the run, then falls to {final:.3g} "
                  f"(low LR / {final_div:g}) over the last {annihilate:.0%} (annihilate = {annihilate:g}); "
                  f"momentum moves the other way, {moms[0]:g} -> {moms[1]:g} -> {moms[0]:g}."),
        "low LR (max LR / div)": f"Rule 3: {max_lr:.3g} / {div:g}; the cycle starts and ends here.",
        "annihilate": f"Rule 3: the cycle spans {length}; the LR falls in the rest.",
        "final LR": f"Rule 3: low LR / {final_div:g}, reached at the end of the run.",
        "momentum (high, low)": (f"Rule 3: {moms[0]:g} at the ends of the cycle, {moms[1]:g} at its peak, "
                                 "opposite to the LR."),
    }


def _describe_tests(spec: FinderSpec, weight_decays: list[float]) -> str:
    data = spec.data
    what = (f"synthetic data ({data.n_train} images)" if data.synthetic
            else f"{data.dataset} ({data.n_train} training images)")
    stop = (f"stopping once the smoothed loss passed {spec.stop_factor:g}x its best" if spec.stop_factor
            else "without an early stop")
    return (f"Range tests (the training's own settings, one per weight decay "
            f"{', '.join(f'{w:g}' for w in weight_decays)}): {spec.model.label} on {what}, batch "
            f"{spec.batch_size}, SGD momentum {spec.momentum:g}, precision {spec.precision}, LR "
            f"{spec.start_lr:g} to {spec.end_lr:g} over {spec.num_it} iterations, {stop}.")


# --- specs ----------------------------------------------------------------------------------------

_TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainSpec)}
#: The settings a range test and a training run share: model, data, batch size, momentum, ...
_SHARED = [f.name for f in dataclasses.fields(FinderSpec) if f.name in _TRAIN_FIELDS]


def _shared_settings(spec) -> dict[str, Any]:
    """The settings a training run and a range test have in common (model, data, batch, ...)."""
    return {name: getattr(spec, name) for name in _SHARED}


def _finder_spec(base, changes: Mapping[str, Any] | None) -> FinderSpec:
    changes = dict(changes or {})
    bad = [k for k in changes if k in _SHARED]
    if bad:
        raise ValueError(f"finder= sets only the range test's own settings (start_lr, end_lr, num_it, ...); "
                         f"{bad} come from base (and the weight decays from weight_decays)")
    try:
        if isinstance(base, FinderSpec):
            return base.replace(**changes)
        return FinderSpec(**_shared_settings(base), **changes)
    except TypeError as e:  # an unknown name (a bad value raises SpecError, a ValueError)
        raise ValueError(f"bad finder setting: {e}") from None


def _train_spec(base, epochs: int, weight_decay: float, schedule: ScheduleSpec) -> TrainSpec:
    if isinstance(base, TrainSpec):
        return base.replace(schedule=schedule, epochs=epochs, weight_decay=weight_decay)
    settings = _shared_settings(base)
    settings["weight_decay"] = weight_decay
    return TrainSpec(schedule=schedule, epochs=epochs, **settings)

"""The post's figures, drawn from logs: a :class:`~clrlib.finder.FinderResult` or a
:func:`~clrlib.train.fit` history. Every function takes optional axes and returns the
axes it drew on; nothing here shows or prints.
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import pandas as pd

from .train import epoch_table

__all__ = ["plot_finder", "plot_finders", "plot_schedule", "plot_schedule_fn", "plot_cycle",
           "schedule_frame", "epoch_axis_frame", "plot_epoch_curves", "plot_gaps"]


def _axes(ax, nrows: int = 1, **fig_kw):
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt
    _, ax = plt.subplots(nrows, 1, **fig_kw)
    return ax


FINDER_MARKS = ("blowup", "min_loss")


def plot_finder(result, ax=None, skip_start: int = 0, skip_end: int = 0,
                suggestions: Sequence[str] = ("valley",), label: str | None = None,
                raw: bool = False, ylim_factor: float | None = 1.5, marks: Sequence[str] = ()):
    """Smoothed loss against learning rate (log axis), as in the post's finder figure.

    Args:
        result: a :class:`~clrlib.finder.FinderResult`.
        ax: axes to draw on (default: a new figure).
        skip_start, skip_end: points left out at each end of the curve.
        suggestions: methods of :meth:`FinderResult.suggest` to mark on the curve, each labelled
            with what it is for, e.g. ``"valley (fixed LR): 0.0067"``; ``"one_cycle"`` marks the
            post's 1cycle max LR, ``"cyclic"`` its CLR max LR.
        label: legend label of the curve.
        raw: also draw the unsmoothed loss, faintly.
        ylim_factor: cap the y axis at this times the first plotted loss, so that the blow-up
            does not flatten the interesting part (None: no cap).
        marks: read-outs to label, from :data:`FINDER_MARKS`: ``"blowup"`` labels the vertical
            line at :attr:`~FinderResult.blowup_lr` (dotted where the test stopped, dashed at
            the last LR if it never did), ``"min_loss"`` marks :attr:`~FinderResult.min_loss_lr`.
            Without ``"blowup"`` the stop line is drawn unlabelled, and only if the test stopped.

    Raises:
        ValueError: for an unknown mark.
    """
    bad = [m for m in marks if m not in FINDER_MARKS]
    if bad:
        raise ValueError(f"marks must be among {FINDER_MARKS}, got {bad}")
    ax = _axes(ax)
    end = len(result.lrs) - skip_end
    lrs, losses = result.lrs[skip_start:end], result.losses[skip_start:end]
    (line,) = ax.plot(lrs, losses, label=label)
    if raw:
        ax.plot(lrs, result.raw_losses[skip_start:end], color=line.get_color(), alpha=0.3, lw=0.8)
    _mark_finder(result, ax, line.get_color(), suggestions, marks, label)
    if ylim_factor and losses:
        _fit_ylim(ax, [losses], ylim_factor)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("smoothed training loss" if not result.settings.get("held_out") else "smoothed held-out loss")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    return ax


def _mark_finder(result, ax, color, suggestions: Sequence[str], marks: Sequence[str],
                 label: str | None) -> None:
    """Draw :func:`plot_finder`'s suggestion markers, then the blow-up line and the minimum."""
    import itertools

    # what each rule is for comes with the result (FinderResult.suggestion_uses): this module
    # does not import clrlib.finder, which imports it (FinderResult.plot)
    uses = getattr(result, "suggestion_uses", {})
    suffix = f" ({label})" if label else ""
    markers = itertools.cycle("ovs^Dp*")
    for method in suggestions if len(result) >= 3 else ():  # too short a curve to suggest from
        lr = result.suggest(method)
        loss = result.loss_at(lr)
        use = uses.get(method)
        ax.plot([lr], [loss], next(markers), color=color, ms=7,
                label=f"{method}" + (f" ({use})" if use else "") + f": {lr:.3g}" + suffix)
    if "blowup" in marks and len(result):
        text = (f"blow-up (stopped): {result.blowup_lr:.3g}" if result.stopped
                else f"no blow-up up to {result.blowup_lr:.3g}")
        ax.axvline(result.blowup_lr, color=color, ls=":" if result.stopped else "--", lw=1,
                   label=text + suffix)
    elif result.stop_lr is not None:
        ax.axvline(result.stop_lr, color=color, ls=":", lw=1)
    if "min_loss" in marks and len(result):
        ax.plot([result.min_loss_lr], [min(result.losses)], "X", color=color, ms=8,
                label=f"min loss: {result.min_loss_lr:.3g}" + suffix)


def plot_finders(results: Mapping[str, object], ax=None, suggestions: Sequence[str] = (), **kwargs):
    """Several finder curves overlaid (e.g. a weight-decay or batch-size sweep).

    Args:
        results: label -> :class:`~clrlib.finder.FinderResult`, in legend order.
        ax: axes to draw on (default: a new figure).
        suggestions: methods of :meth:`FinderResult.suggest` to mark on each curve.
        **kwargs: passed to :func:`plot_finder` (``marks``, ``raw``, ``skip_start``, ...).
    """
    ax = _axes(ax)
    for label, result in results.items():
        plot_finder(result, ax=ax, label=str(label), suggestions=suggestions, **kwargs)
    factor = kwargs.get("ylim_factor", 1.5)
    curves = [r.losses for r in results.values() if len(r.losses)]
    if factor and curves:  # one range that shows every curve, not just the last one drawn
        _fit_ylim(ax, curves, factor)
    ax.legend(fontsize="small")
    return ax


def _fit_ylim(ax, curves: Sequence[Sequence[float]], factor: float) -> None:
    """Y range from the lowest loss to ``factor`` times the highest starting loss (blow-ups cut off)."""
    lo = min(min(c) for c in curves)
    hi = max(min(max(c), factor * c[0]) for c in curves)
    ax.set_ylim(lo - 0.05 * abs(lo), max(hi, lo * 1.01 + 1e-9))


def schedule_frame(fn: Callable, total_steps: int) -> pd.DataFrame:
    """Tabulate a schedule function as a frame with columns ``step, lr, momentum``."""
    if not (isinstance(total_steps, int) and total_steps >= 1):
        raise ValueError(f"total_steps must be a positive integer, got {total_steps!r}")
    rows = []
    for step in range(total_steps):
        value = fn(step)
        lr, mom = value if isinstance(value, tuple) else (value, float("nan"))
        rows.append((step, lr, mom))
    return pd.DataFrame(rows, columns=["step", "lr", "momentum"])


def plot_schedule(history: pd.DataFrame, axes=None, x: str = "step", label: str | None = None):
    """Learning rate and momentum side by side, from a log with ``lr`` and ``momentum`` columns.

    Returns ``(ax_lr, ax_momentum)``; the momentum panel is left empty if it was not logged.
    """
    if axes is None:
        import matplotlib.pyplot as plt
        _, axes = plt.subplots(1, 2, figsize=(10, 3.5), layout="constrained")
    ax_lr, ax_mom = axes
    ax_lr.plot(history[x], history["lr"], label=label)
    ax_lr.set_xlabel(x)
    ax_lr.set_ylabel("learning rate")
    if ax_mom is not None and history["momentum"].notna().any():
        ax_mom.plot(history[x], history["momentum"], label=label)
    if ax_mom is not None:
        ax_mom.set_xlabel(x)
        ax_mom.set_ylabel("momentum")
    if label:
        ax_lr.legend(fontsize="small")
    return ax_lr, ax_mom


def plot_schedule_fn(fn: Callable, total_steps: int, axes=None, label: str | None = None,
                     steps_per_epoch: int | None = None):
    """Plot a schedule function's learning rate and momentum over ``total_steps`` steps
    (against epochs if ``steps_per_epoch`` is given)."""
    frame = epoch_axis_frame(fn, total_steps, steps_per_epoch)
    return plot_schedule(frame, axes=axes, label=label, x="epoch" if steps_per_epoch else "step")


def plot_cycle(history: pd.DataFrame, axes=None, title: str | None = None):
    """The post's "losses during a full cycle": training and validation loss per epoch with
    the learning rate on a second axis (top), test accuracy (bottom).

    Returns ``(ax_loss, ax_lr, ax_acc)``.
    """
    if axes is None:
        import matplotlib.pyplot as plt
        fig, axes = plt.subplots(2, 1, figsize=(8, 6), sharex=True, height_ratios=(2, 1),
                                 layout="constrained")
    ax_loss, ax_acc = axes
    epochs = epoch_table(history)
    ax_loss.plot(epochs.index, epochs["train_loss"], label="training loss")
    ax_loss.plot(epochs.index, epochs["test_loss"], label="validation loss")
    ax_loss.set_ylabel("loss")
    # an early validation spike (BatchNorm statistics at a high LR) would flatten the curves:
    # cap the axis at twice the largest training loss and say which epochs went off the chart
    cap = 2 * epochs["train_loss"].max()
    off = epochs.index[epochs["test_loss"] > cap]
    if len(off) and math.isfinite(cap):
        ax_loss.set_ylim(0, cap)
        ax_loss.text(0.01, 0.97, "validation loss off the chart at epoch(s) "
                     + ", ".join(str(e) for e in off[:8]) + ("..." if len(off) > 8 else ""),
                     transform=ax_loss.transAxes, va="top", fontsize="small", color="C1")
    ax_lr = ax_loss.twinx()
    ax_lr.plot(history["epoch"], history["lr"], color="0.6", lw=1, ls="--", label="learning rate")
    ax_lr.set_ylabel("learning rate")
    lines = ax_loss.get_lines() + ax_lr.get_lines()
    ax_loss.legend(lines, [ln.get_label() for ln in lines], fontsize="small", loc="upper right")
    ax_acc.plot(epochs.index, 100 * epochs["test_acc"], color="C2")
    ax_acc.set_ylabel("test accuracy (%)")
    ax_acc.set_xlabel("epoch")
    if len(epochs):
        final = 100 * epochs["test_acc"].iloc[-1]
        ax_acc.set_title(f"final accuracy {final:.2f}%", fontsize="small", loc="right")
    if title:
        ax_loss.set_title(title)
    return ax_loss, ax_lr, ax_acc


def epoch_axis_frame(fn: Callable, total_steps: int, steps_per_epoch: int | None = None) -> pd.DataFrame:
    """:func:`schedule_frame` with an ``epoch`` column (steps done / steps per epoch) when given."""
    frame = schedule_frame(fn, total_steps)
    if steps_per_epoch:
        frame["epoch"] = frame["step"] / steps_per_epoch
    return frame


def plot_epoch_curves(runs: Mapping[str, Sequence[pd.DataFrame]], column: str = "test_acc", ax=None,
                      scale: float = 1.0):
    """One per-epoch curve per label: the mean over its runs (seeds), with a min-max band.

    Args:
        runs: ``{label: [history, ...]}``, :func:`~clrlib.train.fit` histories (a single history
            is taken as a list of one).
        column: an epoch column: ``test_acc``, ``test_loss`` or ``train_loss``.
        ax: axes to draw on (default: a new figure).
        scale: multiply the values (100 for accuracies in %).
    """
    ax = _axes(ax)
    for label, hists in runs.items():
        hists = [hists] if isinstance(hists, pd.DataFrame) else list(hists)
        table = pd.concat([epoch_table(h)[column] * scale for h in hists], axis=1)
        (line,) = ax.plot(table.index, table.mean(axis=1), label=f"{label}" + (f" (n={len(hists)})" if len(hists) > 1 else ""))
        if len(hists) > 1:
            ax.fill_between(table.index, table.min(axis=1), table.max(axis=1), color=line.get_color(), alpha=0.2)
    ax.set_xlabel("epoch")
    names = {"test_acc": "test accuracy", "test_loss": "validation loss", "train_loss": "training loss"}
    ax.set_ylabel(names.get(column, column) + (" (%)" if scale == 100 else ""))
    ax.legend(fontsize="small")
    return ax


def plot_gaps(histories: Mapping[str, pd.DataFrame], ax=None, skip: float = 0.2):
    """Validation minus training loss per epoch, against the fraction of training done.

    The y axis is scaled to the gaps after the first ``skip`` of training: early validation
    spikes (BatchNorm statistics at a high LR in a young model) would hide the rest.
    """
    ax = _axes(ax, figsize=(8, 3.5))
    late = []
    for label, history in histories.items():
        epochs = epoch_table(history)
        frac = epochs.index / epochs.index[-1]
        gap = epochs["test_loss"] - epochs["train_loss"]
        ax.plot(frac, gap, label=label)
        late += [g for f, g in zip(frac, gap) if f > skip and math.isfinite(g)]
    if late:
        margin = 0.1 * (max(late) - min(late)) + 0.02
        ax.set_ylim(min(late) - margin, max(late) + margin)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xlabel("fraction of training")
    ax.set_ylabel("validation - training loss")
    ax.legend(fontsize="small")
    return ax

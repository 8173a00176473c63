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
           "schedule_frame"]


def _axes(ax, nrows: int = 1, **fig_kw):
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt
    _, ax = plt.subplots(nrows, 1, **fig_kw)
    return ax


def plot_finder(result, ax=None, skip_start: int = 0, skip_end: int = 0,
                suggestions: Sequence[str] = ("valley",), label: str | None = None,
                raw: bool = False, ylim_factor: float | None = 1.5):
    """Smoothed loss against learning rate (log axis), as in the post's finder figure.

    Args:
        result: a :class:`~clrlib.finder.FinderResult`.
        ax: axes to draw on (default: a new figure).
        skip_start, skip_end: points left out at each end of the curve.
        suggestions: methods of :meth:`FinderResult.suggest` to mark on the curve.
        label: legend label of the curve.
        raw: also draw the unsmoothed loss, faintly.
        ylim_factor: cap the y axis at this times the first plotted loss, so that the blow-up
            does not flatten the interesting part (None: no cap).
    """
    ax = _axes(ax)
    end = len(result.lrs) - skip_end
    lrs, losses = result.lrs[skip_start:end], result.losses[skip_start:end]
    (line,) = ax.plot(lrs, losses, label=label)
    if raw:
        ax.plot(lrs, result.raw_losses[skip_start:end], color=line.get_color(), alpha=0.3, lw=0.8)
    markers = iter("ovs^D")
    for method in suggestions if len(result) >= 3 else ():  # too short a curve to suggest from
        lr = result.suggest(method)
        loss = min(zip(result.lrs, result.losses), key=lambda p: abs(p[0] / lr - 1))[1]
        ax.plot([lr], [loss], next(markers), color=line.get_color(), ms=7,
                label=f"{method}: {lr:.3g}" + (f" ({label})" if label else ""))
    if result.stop_lr is not None:
        ax.axvline(result.stop_lr, color=line.get_color(), ls=":", lw=1)
    if ylim_factor and losses:
        lo = min(losses)
        ax.set_ylim(lo - 0.05 * abs(lo), max(min(max(losses), ylim_factor * losses[0]), lo * 1.01 + 1e-9))
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("smoothed training loss" if not result.settings.get("held_out") else "smoothed held-out loss")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    return ax


def plot_finders(results: Mapping[str, object], ax=None, suggestions: Sequence[str] = (), **kwargs):
    """Several finder curves overlaid (e.g. a weight-decay or batch-size sweep)."""
    ax = _axes(ax)
    for label, result in results.items():
        plot_finder(result, ax=ax, label=str(label), suggestions=suggestions, **kwargs)
    ax.legend(fontsize="small")
    return ax


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
    if history["momentum"].notna().any():
        ax_mom.plot(history[x], history["momentum"], label=label)
    ax_mom.set_xlabel(x)
    ax_mom.set_ylabel("momentum")
    if label:
        ax_lr.legend(fontsize="small")
    return ax_lr, ax_mom


def plot_schedule_fn(fn: Callable, total_steps: int, axes=None, label: str | None = None):
    """Plot a schedule function's learning rate and momentum over ``total_steps`` steps."""
    return plot_schedule(schedule_frame(fn, total_steps), axes=axes, label=label)


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

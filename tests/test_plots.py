"""Tests of clrlib.plots: every function returns the axes it drew on, draws what it should, uses
given axes, and never shows or prints anything."""
from __future__ import annotations

import math
from functools import partial

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn
from matplotlib.axes import Axes

from clrlib.data import CifarLoader, synthetic_cifar10
from clrlib.finder import SUGGESTIONS, FinderResult
from clrlib.plots import (plot_cycle, plot_finder, plot_finders, plot_schedule, plot_schedule_fn,
                          schedule_frame)
from clrlib.schedules import cyclic, one_cycle
from clrlib.train import EPOCH_COLUMNS, STEP_COLUMNS, fit

pytestmark = pytest.mark.usefixtures("no_show")


@pytest.fixture(autouse=True)
def _prints_nothing(capsys):
    yield
    out, _ = capsys.readouterr()
    assert out == ""


def finder_result(n=60, stop=True, held_out=False):
    lrs = [10 ** (-5 + 6 * i / (n - 1)) for i in range(n)]
    # a typical curve: flat, a descent, a minimum, then the blow-up
    losses = [2.3 - 1.5 / (1 + math.exp(-(i - n / 2) / 4)) + (0.05 * (i - 0.8 * n) ** 2 if i > 0.8 * n else 0)
              for i in range(n)]
    return FinderResult(lrs=lrs, losses=losses, raw_losses=[v * 1.05 for v in losses],
                        stop_lr=lrs[-1] * 1.3 if stop else None, settings={"held_out": held_out})


def history_frame(epochs=4, per_epoch=5):
    """A DataFrame laid out like fit()'s history."""
    n = epochs * per_epoch
    fn = partial(one_cycle, total_steps=n, max_lr=0.5)
    rows = {c: [] for c in STEP_COLUMNS + EPOCH_COLUMNS}
    for s in range(n):
        lr, mom = fn(s)
        rows["step"].append(s)
        rows["epoch"].append((s + 1) / per_epoch)
        rows["lr"].append(lr)
        rows["momentum"].append(mom)
        rows["loss"].append(2.0 / (1 + s))
        last = (s + 1) % per_epoch == 0
        e = s // per_epoch + 1
        for col, value in zip(EPOCH_COLUMNS, (1.0 / e, 1.2 / e, 0.5 + 0.1 * e, 0.3)):
            rows[col].append(value if last else math.nan)
    return pd.DataFrame(rows)


# --- finder plots -------------------------------------------------------------------------------

def test_plot_finder_new_axes():
    res = finder_result()
    figs = len(plt.get_fignums())
    ax = plot_finder(res)
    assert isinstance(ax, Axes) and len(plt.get_fignums()) == figs + 1
    assert ax.get_xscale() == "log"
    lines = ax.get_lines()
    assert len(lines) == 3  # curve, valley marker, stop line
    assert lines[0].get_xdata().tolist() == res.lrs and lines[0].get_ydata().tolist() == res.losses
    assert np.asarray(lines[1].get_xdata()).tolist() == [res.suggest("valley")]
    assert np.asarray(lines[2].get_xdata()).tolist() == [res.stop_lr] * 2
    assert "valley" in [t.get_text() for t in ax.get_legend().get_texts()][0]
    assert "training loss" in ax.get_ylabel()


def test_plot_finder_on_given_axes_with_options():
    res = finder_result(stop=False, held_out=True)
    fig, ax = plt.subplots()
    figs = len(plt.get_fignums())
    out = plot_finder(res, ax=ax, skip_start=5, skip_end=3, suggestions=("steepest", "minimum/10", "valley"),
                      label="run", raw=True)
    assert out is ax and len(plt.get_fignums()) == figs  # no new figure
    lines = ax.get_lines()
    assert len(lines) == 1 + 1 + 3  # curve, raw curve, three markers; no stop line
    assert len(lines[0].get_xdata()) == len(res) - 8
    assert lines[1].get_ydata().tolist() == res.raw_losses[5:-3]
    assert "held-out" in ax.get_ylabel()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[0] == "run" and all("(run)" in t for t in labels[1:])


def test_plot_finder_caps_the_blow_up():
    res = finder_result()
    ax = plot_finder(res, suggestions=())
    assert len(ax.get_lines()) == 2  # curve and stop line
    assert ax.get_ylim()[1] <= 1.5 * res.losses[0] + 1e-9
    assert max(res.losses) > 1.5 * res.losses[0]
    ax = plot_finder(res, suggestions=(), ylim_factor=None)
    assert ax.get_ylim()[1] >= max(res.losses)


def test_finder_result_plot_method():
    res = finder_result()
    ax = res.plot()
    assert isinstance(ax, Axes) and ax.get_xscale() == "log"


def test_plot_finders_overlays_curves():
    results = {"wd=1e-4": finder_result(stop=False), "wd=1e-3": finder_result(40, stop=False),
               "wd=1e-2": finder_result(30, stop=True)}
    ax = plot_finders(results)
    assert isinstance(ax, Axes)
    assert len(ax.get_lines()) == 3 + 1  # three curves and one stop line
    assert [t.get_text() for t in ax.get_legend().get_texts()] == list(results)
    _, given = plt.subplots()
    assert plot_finders(results, ax=given, suggestions=("valley",)) is given
    assert len(given.get_lines()) == 3 * 2 + 1


# --- schedule plots ------------------------------------------------------------------------------

def test_schedule_frame():
    fn = partial(one_cycle, total_steps=50, max_lr=0.8)
    frame = schedule_frame(fn, 50)
    assert list(frame.columns) == ["step", "lr", "momentum"]
    assert frame["step"].tolist() == list(range(50))
    assert frame["lr"].tolist() == [fn(s)[0] for s in range(50)]
    assert frame["momentum"].tolist() == [fn(s)[1] for s in range(50)]
    plain = schedule_frame(partial(cyclic, base_lr=0.1, max_lr=1.0, step_size=5), 20)
    assert plain["momentum"].isna().all() and plain["lr"].iloc[5] == pytest.approx(1.0)
    for bad in (0, 2.5):
        with pytest.raises(ValueError, match=repr(bad)):
            schedule_frame(fn, bad)


def test_plot_schedule_from_a_history():
    history = history_frame()
    ax_lr, ax_mom = plot_schedule(history)
    assert isinstance(ax_lr, Axes) and isinstance(ax_mom, Axes) and ax_lr is not ax_mom
    assert len(ax_lr.get_lines()) == 1 and len(ax_mom.get_lines()) == 1
    assert ax_lr.get_lines()[0].get_ydata().tolist() == history["lr"].tolist()
    assert ax_mom.get_lines()[0].get_ydata().tolist() == history["momentum"].tolist()
    assert ax_lr.get_xlabel() == "step"


def test_plot_schedule_on_given_axes_by_epoch_with_label():
    history = history_frame()
    _, axes = plt.subplots(1, 2)
    out = plot_schedule(history, axes=axes, x="epoch", label="1cycle")
    assert out[0] is axes[0] and out[1] is axes[1]
    assert axes[0].get_lines()[0].get_xdata().tolist() == history["epoch"].tolist()
    assert axes[0].get_legend() is not None
    plot_schedule(history.assign(lr=history["lr"] / 2), axes=axes, label="half")
    assert len(axes[0].get_lines()) == 2  # overlays


def test_plot_schedule_without_momentum_leaves_the_panel_empty():
    frame = schedule_frame(partial(cyclic, base_lr=0.1, max_lr=1.0, step_size=5), 30)
    ax_lr, ax_mom = plot_schedule(frame)
    assert len(ax_lr.get_lines()) == 1 and len(ax_mom.get_lines()) == 0


def test_plot_schedule_fn():
    fn = partial(one_cycle, total_steps=100, max_lr=0.8, annihilate=0.2)
    ax_lr, ax_mom = plot_schedule_fn(fn, 100)
    lr_line, mom_line = ax_lr.get_lines()[0], ax_mom.get_lines()[0]
    assert np.allclose(lr_line.get_ydata(), [fn(s)[0] for s in range(100)])
    assert max(lr_line.get_ydata()) == pytest.approx(0.8)
    assert min(mom_line.get_ydata()) == pytest.approx(0.85)
    _, axes = plt.subplots(1, 2)
    assert plot_schedule_fn(fn, 100, axes=axes) == (axes[0], axes[1])


# --- the training-cycle figure ------------------------------------------------------------------

def test_plot_cycle():
    history = history_frame(epochs=4)
    ax_loss, ax_lr, ax_acc = plot_cycle(history, title="ResNet-56")
    assert all(isinstance(a, Axes) for a in (ax_loss, ax_lr, ax_acc))
    assert len(ax_loss.get_lines()) == 2  # training and validation loss per epoch
    assert len(ax_lr.get_lines()) == 1  # learning rate, per step, on the twin axis
    assert len(ax_acc.get_lines()) == 1
    assert ax_loss.get_lines()[0].get_xdata().tolist() == [1, 2, 3, 4]
    assert ax_lr.get_lines()[0].get_ydata().tolist() == history["lr"].tolist()
    assert ax_acc.get_lines()[0].get_ydata().tolist() == pytest.approx([60, 70, 80, 90])
    assert "90.00%" in ax_acc.get_title(loc="right")
    assert ax_loss.get_title() == "ResNet-56"
    assert len(ax_loss.get_legend().get_texts()) == 3


def test_plot_cycle_on_given_axes_from_a_real_fit():
    x, y, xt, yt = synthetic_cifar10(64, 32, seed=0)
    train = CifarLoader(x, y, batch_size=16, device="cpu")
    test = CifarLoader(xt, yt, batch_size=32, train=False, device="cpu")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    fn = partial(one_cycle, total_steps=3 * len(train), max_lr=0.05)
    history = fit(model, train, 3, fn, test_loader=test, device="cpu", progress=False)
    fig, axes = plt.subplots(2, 1)
    ax_loss, ax_lr, ax_acc = plot_cycle(history, axes=axes)
    assert ax_loss is axes[0] and ax_acc is axes[1] and ax_lr not in axes
    assert len(fig.axes) == 3  # the twin LR axis was added to the given figure
    assert len(ax_loss.get_lines()) == 2 and len(ax_lr.get_lines()) == 1 and len(ax_acc.get_lines()) == 1
    ax_s, ax_m = plot_schedule(history)
    assert ax_s.get_lines()[0].get_ydata().tolist() == [fn(s)[0] for s in range(len(history))]


def test_plot_finder_draws_a_curve_too_short_to_suggest_from():
    """A range test that blew up within its first iterations is exactly when one wants to see
    the curve. ``FinderResult.suggest`` needs 3 points, but the plot should still be drawn
    (without the markers it cannot compute) instead of raising."""
    res = FinderResult(lrs=[1e-3, 1e-2], losses=[2.0, 1.9], raw_losses=[2.0, 1.9], stop_lr=0.1)
    ax = res.plot()  # default suggestions=("valley",)
    lines = ax.get_lines()
    assert lines[0].get_xdata().tolist() == [1e-3, 1e-2]
    assert np.asarray(lines[-1].get_xdata()).tolist() == [0.1, 0.1]  # the stop line
    assert ax.get_xscale() == "log"


# --- finder read-outs marked and labelled --------------------------------------------------------

def test_plot_finder_marks_blowup_minimum_and_one_cycle_advice():
    res = finder_result()
    ax = plot_finder(res, suggestions=("one_cycle", "cyclic", "valley"), marks=("blowup", "min_loss"))
    lines = ax.get_lines()
    assert len(lines) == 1 + 3 + 1 + 1  # curve, three suggestions, the blow-up line, the minimum
    assert np.asarray(lines[1].get_xdata()).tolist() == [res.one_cycle_max_lr()]
    assert np.asarray(lines[4].get_xdata()).tolist() == [res.blowup_lr] * 2
    assert lines[4].get_linestyle() == ":"
    assert np.asarray(lines[5].get_xdata()).tolist() == [res.min_loss_lr]
    assert np.asarray(lines[5].get_ydata()).tolist() == [min(res.losses)]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == [f"one_cycle (1cycle max LR): {res.one_cycle_max_lr():.3g}",
                      f"cyclic (CLR max LR): {res.cyclic_max_lr():.3g}",
                      f"valley (fixed LR): {res.suggest('valley'):.3g}",
                      f"blow-up (stopped): {res.blowup_lr:.3g}",
                      f"min loss: {res.min_loss_lr:.3g}"]


def test_plot_finder_blowup_mark_of_a_test_that_never_stopped():
    res = finder_result(stop=False)
    ax = plot_finder(res, suggestions=(), marks=("blowup",), label="run")
    lines = ax.get_lines()
    assert len(lines) == 2
    assert np.asarray(lines[1].get_xdata()).tolist() == [res.lrs[-1]] * 2
    assert lines[1].get_linestyle() == "--"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["run", f"no blow-up up to {res.lrs[-1]:.3g} (run)"]


def test_plot_finder_rejects_an_unknown_mark():
    with pytest.raises(ValueError, match="'bogus'"):
        plot_finder(finder_result(), marks=("blowup", "bogus"))


def test_plot_finders_passes_marks_and_draws_every_suggestion():
    results = {"a": finder_result(stop=True), "b": finder_result(40, stop=False)}
    ax = plot_finders(results, suggestions=SUGGESTIONS, marks=("blowup", "min_loss"))
    assert len(ax.get_lines()) == 2 * (1 + len(SUGGESTIONS) + 2)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert sum("1cycle max LR" in t for t in labels) == 2
    assert sum(t.startswith("min loss") for t in labels) == 2

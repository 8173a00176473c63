"""Numbers read off runs: accuracies, the loss gap, statistics over seeds, the weight-decay rule."""
from __future__ import annotations

import math
from functools import partial

import numpy as np
import pandas as pd
import pytest

from clrlib.lab import analysis
from clrlib.finder import FinderResult
from clrlib.schedules import constant, one_cycle


def history(test_acc=(0.3, 0.6, 0.8), train_loss=(2.0, 1.0, 0.5), test_loss=(2.2, 1.5, 1.2),
            steps_per_epoch: int = 2, schedule=None) -> pd.DataFrame:
    """A fit()-shaped history: one row per step, the epoch's numbers on its last step."""
    epochs = len(test_acc)
    n = epochs * steps_per_epoch
    rows = []
    for step in range(n):
        lr, mom = (schedule(step) if schedule else (0.1, 0.9))
        row = dict(step=step, epoch=(step + 1) / steps_per_epoch, lr=lr, momentum=mom, loss=2.0 - 0.1 * step,
                   train_loss=math.nan, test_loss=math.nan, test_acc=math.nan, seconds=math.nan)
        if (step + 1) % steps_per_epoch == 0:
            e = (step + 1) // steps_per_epoch - 1
            row.update(train_loss=train_loss[e], test_loss=test_loss[e], test_acc=test_acc[e], seconds=1.0)
        rows.append(row)
    return pd.DataFrame(rows)


# --- mean_std -----------------------------------------------------------------------------------------

def test_mean_std_of_several_values():
    assert analysis.mean_std([93.1, 93.5, 93.3]) == (93.3, 0.2, 3)
    mean, std, n = analysis.mean_std([90.0, 92.0])
    assert (mean, n) == (91.0, 2) and std == pytest.approx(math.sqrt(2))


@pytest.mark.parametrize("values", [[90.0, 92.0], (90.0, 92.0), pd.Series([90.0, 92.0]),
                                    np.array([90.0, 92.0]), [np.float32(90.0), 92]])
def test_mean_std_takes_any_sequence_of_numbers(values):
    mean, std, n = analysis.mean_std(values)
    assert (mean, n) == (91.0, 2) and std == pytest.approx(math.sqrt(2))


@pytest.mark.parametrize("value", [93.0, 93, np.float64(93.0), np.float32(93.0), [93.0]])
def test_mean_std_of_one_value_has_no_std(value):
    mean, std, n = analysis.mean_std(value)
    assert mean == 93.0 and n == 1 and math.isnan(std)


def test_mean_std_of_nothing_is_an_error():
    with pytest.raises(ValueError, match="no values"):
        analysis.mean_std([])


# --- histories ----------------------------------------------------------------------------------------

def test_final_accuracy_and_first_epoch_reaching():
    h = history()
    assert analysis.final_accuracy(h) == pytest.approx(80.0)
    assert analysis.first_epoch_reaching(h, 0.6) == 2
    assert analysis.first_epoch_reaching(h, 0.3) == 1
    assert analysis.first_epoch_reaching(h, 0.75) == 3
    assert math.isnan(analysis.first_epoch_reaching(h, 0.9))
    assert analysis.first_epoch_reaching(history(test_acc=(0.5, 0.4, 0.6)), 0.5) == 1  # the first, not the last


def test_loss_gap_is_indexed_by_the_fraction_of_training():
    gap = analysis.loss_gap(history())
    assert gap.tolist() == pytest.approx([0.2, 0.5, 0.7])
    assert gap.index.tolist() == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert gap.name == "validation - training loss"


def test_analysis_refuses_a_frame_that_is_not_a_history():
    with pytest.raises(ValueError, match="not a fit"):
        analysis.final_accuracy(pd.DataFrame({"step": [0], "loss": [1.0]}))


def test_schedule_mismatch_is_zero_for_the_logged_schedule_and_sees_a_difference():
    fn = partial(one_cycle, total_steps=6, max_lr=0.8)
    h = history(schedule=fn)
    assert analysis.schedule_mismatch(h, fn) == 0.0
    other = partial(one_cycle, total_steps=6, max_lr=0.4)
    want = max(abs(fn(s)[0] - other(s)[0]) for s in range(6))
    assert want > 0.3 and analysis.schedule_mismatch(h, other) == pytest.approx(want)
    h.loc[3, "momentum"] += 0.05
    assert analysis.schedule_mismatch(h, fn) == pytest.approx(0.05)


def test_schedule_mismatch_of_an_lr_only_schedule_ignores_momentum():
    h = history(schedule=lambda s: (0.1, 0.9))
    assert analysis.schedule_mismatch(h, partial(constant, lr=0.1)) == pytest.approx(0.0)
    assert analysis.schedule_mismatch(h, partial(constant, lr=0.1, momentum=0.85)) == pytest.approx(0.05)
    assert analysis.schedule_mismatch(h, partial(constant, lr=0.3)) == pytest.approx(0.2)


# --- the weight-decay rule -----------------------------------------------------------------------------

def result(blowup: float, stopped: bool = True) -> FinderResult:
    lrs = [blowup / 100, blowup / 10, blowup / 2]
    return FinderResult(lrs=lrs, losses=[2.3, 2.0, 1.9], raw_losses=[2.3, 2.0, 1.9],
                        stop_lr=blowup if stopped else None)


def test_largest_weight_decay_at_high_lr():
    sweep = {1e-2: result(1.0), 1e-3: result(8.0), 1e-4: result(10.0), 1e-5: result(12.0)}
    assert analysis.largest_weight_decay_at_high_lr(sweep) == 1e-3      # 8 is within 2x of 12
    assert analysis.largest_weight_decay_at_high_lr(sweep, within=1.0) == 1e-5
    assert analysis.largest_weight_decay_at_high_lr(sweep, within=1.25) == 1e-4
    assert analysis.largest_weight_decay_at_high_lr(sweep, within=100.0) == 1e-2


def test_a_range_test_that_never_blew_up_counts_its_last_lr():
    sweep = {1e-2: result(1.0), 1e-4: result(20.0, stopped=False)}  # last LR 10, a lower bound
    assert sweep[1e-4].blowup_lr == 10.0
    assert analysis.largest_weight_decay_at_high_lr(sweep) == 1e-4
    assert analysis.largest_weight_decay_at_high_lr({1e-4: result(10.0), 1e-3: result(20.0, False)}) == 1e-3


def test_the_weight_decay_rule_reads_the_end_of_the_bottom_by_default():
    lrs = [0.1 * 1.25 ** k for k in range(30)]
    flat = [2.3 - 0.3 * min(k, 10) / 10 for k in range(30)]           # flat from LR 0.93 on
    early = FinderResult(lrs, flat[:20] + [3.0] * 10, stop_lr=None)   # bottom ends at lrs[19]
    late = FinderResult(lrs, flat[:28] + [3.0] * 2, stop_lr=None)     # bottom ends at lrs[27]
    early.losses[18] -= 0.001                                         # noise: its minimum moves right
    assert late.min_loss_lr < early.min_loss_lr < early.bottom_end_lr() < late.bottom_end_lr()
    assert (early.bottom_end_lr(), late.bottom_end_lr()) == (lrs[19], lrs[27])
    sweep = {1e-2: early, 1e-4: late}
    assert analysis.largest_weight_decay_at_high_lr(sweep, within=1.5) == 1e-4
    assert analysis.largest_weight_decay_at_high_lr(sweep, within=1.5, read="min_loss") == 1e-2
    assert analysis.largest_weight_decay_at_high_lr(sweep, within=1.5, read="blowup") == 1e-2  # both ran out
    with pytest.raises(ValueError, match="read must be one of.*'lowest'"):
        analysis.largest_weight_decay_at_high_lr(sweep, read="lowest")
    empty = FinderResult([], [], stop_lr=None)
    assert analysis.largest_weight_decay_at_high_lr({1e-2: empty, 1e-4: early}) == 1e-4  # left out
    with pytest.raises(ValueError, match="none of the range tests"):
        analysis.largest_weight_decay_at_high_lr({1e-2: empty})


def test_largest_weight_decay_refuses_bad_input():
    with pytest.raises(ValueError, match="no range tests"):
        analysis.largest_weight_decay_at_high_lr({})
    with pytest.raises(ValueError, match="within"):
        analysis.largest_weight_decay_at_high_lr({1e-4: result(1.0)}, within=0.5)

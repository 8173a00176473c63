"""The 1cycle recipe (clrlib.recipe): its three rules on synthetic range-test curves, its checks
on unreadable curves, and one tiny end-to-end plan-and-train on synthetic data."""
from __future__ import annotations

import json
import math
import random
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from clrlib.lab import analysis
from clrlib.finder import FinderResult, _schedule
from clrlib.recipe import Plan, PlanWarning, curve_gap, plan_from_curves, plan_one_cycle
from clrlib.lab.runs import Lab
from clrlib.lab.specs import DataSpec, FinderSpec, ModelSpec, ScheduleSpec, SpecError, TrainSpec

BASE = FinderSpec(model=ModelSpec(20), batch_size=256, momentum=0.9)


# --- synthetic range tests --------------------------------------------------------------------------

def bowl(min_lr: float, blowup_lr: float):
    """A raw loss against LR: 2.3 at small LRs, down to about 0.8 near ``min_lr``, exploding
    past ``blowup_lr``."""
    def loss(lr: float) -> float:
        descent = 1.5 / (1 + math.exp(3 * (math.log10(lr / min_lr) + 1)))
        return 0.8 + descent + 20 * math.exp(6 * math.log10(lr / blowup_lr))
    return loss


def range_test(raw, start_lr=1e-5, end_lr=100.0, num_it=100, noise=0.0, seed=0) -> FinderResult:
    """What lr_find would record for a raw loss ``raw(lr)`` (times 1 + noise * N(0, 1)): the
    bias-corrected EMA (beta 0.98), stopped once it passes 4x its best. Plain lists, no training."""
    rng = random.Random(seed)
    lrs, losses, raws, stop = [], [], [], None
    avg, best = 0.0, math.inf
    for i, lr in enumerate(_schedule(start_lr, end_lr, num_it, "exp")):
        value = raw(lr) * (1 + noise * rng.gauss(0, 1))
        avg = 0.98 * avg + 0.02 * value
        smoothed = avg / (1 - 0.98 ** (i + 1))
        if i > 0 and smoothed > 4 * best:
            stop = lr
            break
        best = min(best, smoothed)
        lrs.append(lr), losses.append(smoothed), raws.append(value)
    return FinderResult(lrs=lrs, losses=losses, raw_losses=raws, stop_lr=stop,
                        settings=dict(start_lr=start_lr, end_lr=end_lr, num_it=num_it))


#: A sweep shaped like the post's: more weight decay, earlier blow-up.
SHAPES = {1e-2: (0.1, 1.0), 1e-3: (0.5, 8.0), 1e-4: (1.0, 10.0), 1e-5: (1.0, 12.0)}


def sweep(noise=0.0, seed=0, shapes=SHAPES, **kwargs) -> dict[float, FinderResult]:
    return {wd: range_test(bowl(*shape), noise=noise, seed=seed * 100 + i, **kwargs)
            for i, (wd, shape) in enumerate(shapes.items())}


def plan_quietly(curves, base=BASE, epochs=30, **rules) -> Plan:
    """A plan that must not warn."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", PlanWarning)
        return plan_from_curves(curves, base, epochs, **rules)


def straight(lrs, losses, stop_lr=None) -> FinderResult:
    return FinderResult(lrs=list(lrs), losses=list(losses), raw_losses=list(losses), stop_lr=stop_lr)


# --- the rules ---------------------------------------------------------------------------------------

def test_rules_on_a_clean_sweep():
    curves = sweep()
    plan = plan_quietly(curves)
    blowups = {wd: c.blowup_lr for wd, c in curves.items()}
    assert all(c.stopped for c in curves.values())
    # rule 1: wd 1e-3's bottom ends within 2x of the highest end; 1e-2's does not
    ends = {wd: c.bottom_end_lr() for wd, c in curves.items()}
    assert ends[1e-3] * 2 >= max(ends.values()) > ends[1e-2] * 2
    assert plan.weight_decay == 1e-3 == analysis.largest_weight_decay_at_high_lr(curves)
    # rule 2: a third of the chosen curve's min-loss LR, on its descent
    chosen = curves[1e-3]
    assert plan.max_lr == pytest.approx(chosen.one_cycle_max_lr()) == pytest.approx(chosen.min_loss_lr / 3)
    assert chosen.loss_at(plan.max_lr) > min(chosen.losses)
    # rule 3: the cycle, as a ready spec with the base's model, data, batch and momentum
    spec = plan.spec
    assert isinstance(spec, TrainSpec) and spec.epochs == plan.epochs == 30
    assert (spec.model, spec.data, spec.batch_size, spec.momentum) == (BASE.model, BASE.data, 256, 0.9)
    assert spec.weight_decay == plan.weight_decay
    assert spec.schedule == ScheduleSpec.make("one_cycle", max_lr=plan.max_lr, div=10.0, annihilate=0.1,
                                              final_div=100.0, moms=(0.95, 0.85))
    assert (plan.div, plan.annihilate, plan.moms) == (10.0, 0.1, (0.95, 0.85))
    assert plan.low_lr == pytest.approx(plan.max_lr / 10) and plan.final_lr == pytest.approx(plan.max_lr / 1000)
    lr, momentum = spec.schedule_fn()(int(0.45 * spec.total_steps))
    assert lr == pytest.approx(plan.max_lr) and momentum == pytest.approx(0.85)
    # the reasons cite the rules and their numbers
    assert plan.warnings == [] and len(plan.reasons) == 3
    wd_reason, lr_reason, cycle_reason = plan.reasons
    assert "rule 1" in wd_reason and f"{max(ends.values()):.3g}" in wd_reason and f"{ends[1e-3]:.3g}" in wd_reason
    assert f"{blowups[1e-5]:.3g}" in wd_reason  # the blow-ups are reported beside
    assert "rule 2" in lr_reason and f"{chosen.min_loss_lr:.3g}" in lr_reason and f"{plan.max_lr:.3g}" in lr_reason
    assert "rule 3" in cycle_reason and "90%" in cycle_reason and f"{plan.low_lr:.3g}" in cycle_reason


def test_the_rules_settings_move_the_choices():
    curves = sweep()
    clean = plan_quietly(curves)
    assert plan_quietly(curves, within=1.0).weight_decay == 1e-5  # only the highest blow-up counts
    assert plan_quietly(curves, within=100.0).weight_decay == 1e-2
    bold = plan_quietly(curves, divisor=1.5)  # super-convergence: closer to the minimum
    assert bold.max_lr == pytest.approx(2 * clean.max_lr)
    gentle = plan_quietly(curves, div=20, annihilate=0.15, final_div=10, moms=(0.9, 0.8))
    assert gentle.spec.schedule.kwargs == dict(max_lr=clean.max_lr, div=20.0, annihilate=0.15, final_div=10.0,
                                               moms=(0.9, 0.8))
    assert gentle.low_lr == pytest.approx(clean.max_lr / 20)


def test_base_train_spec_gives_its_settings_and_epochs():
    base = TrainSpec(ScheduleSpec.make("constant", lr=0.1), epochs=12, model=ModelSpec(8), batch_size=128,
                     momentum=0.85, seed=3, precision="fp32", drop_last=True)
    plan = plan_quietly(sweep(), base=base, epochs=None)
    spec = plan.spec
    assert spec.epochs == 12 and spec.schedule.name == "one_cycle"
    assert (spec.model, spec.batch_size, spec.momentum, spec.seed, spec.precision, spec.drop_last) == (
        ModelSpec(8), 128, 0.85, 3, "fp32", True)
    assert plan_quietly(sweep(), base=base, epochs=5).spec.epochs == 5


def test_noisy_curves_keep_the_choice_within_a_factor_of_two():
    """Noise on every batch's loss (10%, then smoothed as lr_find smooths it), and a jitter of
    the smoothed curve itself (2%): same weight decay, max LR within 2x of the clean one."""
    clean = plan_quietly(sweep())
    for seed in range(8):
        noisy = plan_quietly(sweep(noise=0.1, seed=seed))
        assert noisy.weight_decay == clean.weight_decay, seed
        assert 0.5 <= noisy.max_lr / clean.max_lr <= 2, seed
        rng = random.Random(seed)
        jittered = {wd: straight(c.lrs, [v * (1 + 0.02 * rng.gauss(0, 1)) for v in c.losses], c.stop_lr)
                    for wd, c in sweep().items()}
        plan = plan_quietly(jittered)
        assert plan.weight_decay == clean.weight_decay and 0.5 <= plan.max_lr / clean.max_lr <= 2, seed


def test_a_curve_that_never_blows_up_gives_a_choice_and_a_warning():
    curves = sweep(end_lr=0.05)  # no test reaches its blow-up; the loss still falls at the end
    assert not any(c.stopped for c in curves.values())
    with pytest.warns(PlanWarning, match="never blew up.*larger end_lr"):
        plan = plan_from_curves(curves, BASE, 30)
    assert plan.weight_decay == 1e-2  # every "blow-up" is the last LR, 0.05: all within 2x
    chosen = curves[1e-2]
    assert plan.max_lr == pytest.approx(chosen.min_loss_lr / 3)
    assert len(plan.warnings) == 4 and all("end_lr" in w for w in plan.warnings)
    assert "conservative" in next(w for w in plan.warnings if "weight decay 0.01 " in w)
    assert "never blew up" in plan.reasons[0]
    # one test that never blows up among others that do: still a choice, and a warning naming it
    mixed = sweep()
    mixed[1e-5] = range_test(bowl(1.0, 12.0), end_lr=5.0)
    with pytest.warns(PlanWarning, match="weight decay 1e-05 never blew up"):
        plan = plan_from_curves(mixed, BASE, 30)
    assert plan.weight_decay == 1e-3 and len(plan.warnings) == 1


def test_nearly_identical_curves_pick_the_larger_and_say_so():
    base = range_test(bowl(1.0, 10.0))
    twin = straight(base.lrs, [v * (1.01 if i % 2 else 0.99) for i, v in enumerate(base.losses)], base.stop_lr)
    curves = {1e-3: range_test(bowl(0.2, 3.0)), 1e-4: twin, 1e-5: base}
    gap, lo, hi = curve_gap(twin, base)
    assert 0.005 < gap < 0.02 and (lo, hi) == (base.lrs[0], base.lrs[-1])
    plan = plan_quietly(curves)
    assert plan.weight_decay == 1e-4
    [note] = [r for r in plan.reasons if "nearly the same" in r]
    assert "1e-05" in note and "0.0001" in note and "the larger, 0.0001" in note
    assert note in plan.table()["reason"].tolist()
    # the same sweep with a real difference between them: no such note
    apart = {**curves, 1e-4: straight(base.lrs, [v * 1.2 for v in base.losses], base.stop_lr)}
    assert not any("nearly the same" in r for r in plan_quietly(apart).reasons)


def test_a_range_test_that_blows_up_at_once_is_an_error_that_says_lower_start_lr():
    lrs = [2.0, 2.3, 2.6]
    at_once = {wd: straight(lrs, [2.3, 2.2, 2.4], stop_lr=3.0) for wd in (1e-3, 1e-4)}
    with pytest.raises(ValueError, match=r"0.001 .*kept only 3 point.*blew up at LR 3\b.*lower start_lr"):
        plan_from_curves(at_once, BASE, 30)
    # one such test among readable ones: its blow-up LR still counts, with a warning
    curves = sweep()
    curves[1e-2] = straight(lrs, [2.3, 2.2, 2.4], stop_lr=3.0)
    with pytest.warns(PlanWarning, match="weight decay 0.01 blew up after only 3 point"):
        plan = plan_from_curves(curves, BASE, 30)
    assert plan.weight_decay == 1e-3
    # a test that ran all its (too few) iterations: raise num_it
    with pytest.raises(ValueError, match="raise num_it"):
        plan_from_curves({1e-4: straight([1e-3, 1e-2, 1e-1], [2.3, 2.0, 1.9])}, BASE, 30)


def test_a_minimum_at_the_first_lr_is_an_error_that_says_start_lr_is_too_high():
    lrs = [10 ** (k / 30 - 1) for k in range(30)]  # 0.1 to 0.93
    rising = straight(lrs, [1.0 + 0.05 * k for k in range(30)], stop_lr=1.0)
    with pytest.raises(ValueError, match="lowest at its very first LR.*start_lr is too high.*Lower start_lr"):
        plan_from_curves({1e-4: rising}, BASE, 30)
    # a non-chosen curve like that: a warning
    curves = {1e-4: range_test(bowl(1.0, 10.0)), 1e-2: rising}
    with pytest.warns(PlanWarning, match="weight decay 0.01 was lowest at its first LR"):
        plan = plan_from_curves(curves, BASE, 30)
    assert plan.weight_decay == 1e-4


def test_a_minimum_next_to_the_start_warns_that_the_max_lr_was_not_tested():
    lrs = [10 ** (k / 10) for k in range(20)]
    losses = [2.0, 1.9] + [1.9 + 0.1 * k for k in range(1, 19)]
    with pytest.warns(PlanWarning, match="below the first LR.*Lower start_lr"):
        plan = plan_from_curves({1e-4: straight(lrs, losses, stop_lr=200.0)}, BASE, 30)
    assert plan.max_lr == pytest.approx(lrs[1] / 3) and plan.max_lr < lrs[0]


@pytest.mark.parametrize("rules, message", [
    (dict(within=0.5), "within"), (dict(divisor=1.0), "divisor"), (dict(div=0.5), "div"),
    (dict(annihilate=1.0), "annihilate"), (dict(min_points=1), "min_points"),
    (dict(epochs=0), "epochs"), (dict(epochs=None), "epochs is needed"),
])
def test_bad_settings_are_refused(rules, message):
    rules = {"epochs": 30, **rules}
    with pytest.raises(ValueError, match=message):
        plan_from_curves(sweep(), BASE, **rules)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="weight_decays is empty"):
        plan_from_curves({}, BASE, 30)
    with pytest.raises(TypeError, match="TrainSpec or a FinderSpec"):
        plan_from_curves(sweep(), {"batch_size": 256}, 30)
    with pytest.raises(TypeError, match="FinderResult"):
        plan_from_curves({1e-4: [1, 2, 3]}, BASE, 30)


# --- table, plot ---------------------------------------------------------------------------------------

def test_table_lists_the_choices_with_their_reasons():
    curves = sweep()
    curves[1e-5] = range_test(bowl(1.0, 12.0), end_lr=5.0)  # one warning
    with pytest.warns(PlanWarning):
        plan = plan_from_curves(curves, BASE, 30)
    table = plan.table()
    assert list(table.columns) == ["choice", "value", "reason"]
    rows = table.set_index("choice")
    assert rows.loc["weight decay", "value"] == plan.weight_decay
    assert rows.loc["max LR", "value"] == plan.max_lr
    assert rows.loc["low LR (max LR / div)", "value"] == pytest.approx(plan.max_lr / 10)
    assert rows.loc["weight decay", "reason"].startswith("Weight decay 0.001 (rule 1")
    assert rows.loc["max LR", "reason"].startswith(f"Max LR {plan.max_lr:.3g} (rule 2")
    assert table[table["choice"] == "warning"]["reason"].tolist() == plan.warnings
    sweep_rows = plan.sweep_table()
    assert sweep_rows["weight_decay"].tolist() == list(curves)
    assert sweep_rows["chosen"].tolist() == [False, True, False, False]
    assert sweep_rows["stopped"].tolist() == [True, True, True, False]
    assert sweep_rows["bottom_end_lr"].tolist() == [c.bottom_end_lr() for c in curves.values()]
    unreadable = {**curves, 1e-2: straight([2.0, 2.3, 2.6], [2.3, 2.2, 2.4], stop_lr=3.0)}
    with pytest.warns(PlanWarning):
        left_out = plan_from_curves(unreadable, BASE, 30)
    assert any("left out of rule 1" in w for w in left_out.warnings)
    rows = left_out.sweep_table()
    assert math.isnan(rows["bottom_end_lr"].iloc[0]) and rows["bottom_end_lr"].iloc[1:].notna().all()


def test_plot_overlays_the_curves_and_stars_the_choice(no_show):
    plan = plan_quietly(sweep())
    ax = plan.plot()
    assert ax.get_xscale() == "log"
    labels = [line.get_label() for line in ax.get_lines()]
    assert "wd 0.001 (chosen)" in labels and "wd 1e-05" in labels
    [star] = [line for line in ax.get_lines() if line.get_marker() == "*"]
    assert star.get_xdata()[0] == pytest.approx(plan.max_lr)
    ends = [line for line in ax.get_lines() if line.get_marker() == "v"]  # rule 1's reading, one per curve
    assert sorted(e.get_xdata()[0] for e in ends) == sorted(c.bottom_end_lr() for c in plan.curves.values())
    assert "end of the bottom (rule 1)" in [t.get_text() for t in ax.get_legend().get_texts()]
    _, given = plt.subplots()
    assert plan.plot(ax=given) is given


# --- saved real curves (ResNet-20 on real CIFAR-10, 10k-image subset, batch 256) ---------------------

DATA = Path(__file__).parent / "data"


def saved_sweep(prefix: str = "finder_") -> dict[float, FinderResult]:
    curves = {}
    for wd in (1e-2, 1e-3, 1e-4, 1e-5):
        meta = json.loads((DATA / f"{prefix}wd{wd:g}_seed0.json").read_text())
        curves[wd] = FinderResult.from_frame(pd.read_csv(DATA / f"{prefix}wd{wd:g}_seed0.csv"),
                                             stop_lr=meta["stop_lr"], settings=meta["finder_settings"])
    return curves


def test_saved_weight_decay_sweep():
    """The older saved sweep (He init): the bottoms end at 6.1, 8.1, 6.1 and 12.9 (wd 1e-2 to
    1e-5); rule 1 picks 1e-3 (8.1 is within 2x of 12.9), noting that 1e-4's curve is nearly
    the same; the max LR is about 1, in the post's range."""
    curves = saved_sweep()
    plan = plan_quietly(curves)
    assert plan.weight_decay == 1e-3 and plan.max_lr == pytest.approx(1.17, rel=0.01)
    assert "8.11" in plan.reasons[0] and "12.9" in plan.reasons[0] and "6.46" in plan.reasons[0]
    assert any(r.startswith("Weight decays 0.001 and 0.0001 gave nearly the same curve") for r in plan.reasons)


def test_saved_post_init_sweep():
    """The quick profile's sweep (the post's init, ResNet-20, 10,240 images, batch 256): flat
    bottoms, whose minima (0.69, 2.1, 3.0, 0.63) do not order with the weight decay, while
    the ends of the bottoms do (1.9, 3.3, 5.3, 4.8). Rule 1 takes 1e-3 (3.3 is 1.6x below
    5.3); a factor 1.5 gives the post's 1e-4. The blow-ups (13 to 19) would have chosen 1e-2."""
    curves = saved_sweep("finder_post_")
    ends = {wd: c.bottom_end_lr() for wd, c in curves.items()}
    assert ends[1e-2] < ends[1e-3] < ends[1e-4] and ends[1e-5] < ends[1e-4]
    assert analysis.largest_weight_decay_at_high_lr(curves, read="blowup") == 1e-2
    plan = plan_quietly(curves)
    assert plan.weight_decay == 1e-3 and plan.max_lr == pytest.approx(curves[1e-3].min_loss_lr / 3)
    assert 0.5 < plan.max_lr < 1.0  # the hand-picked quick 1cycle peaks at 0.8
    strict = plan_quietly(curves, within=1.5)
    assert strict.weight_decay == 1e-4 and 0.8 < strict.max_lr < 1.2


# --- plan_one_cycle: the range tests it asks for, then end to end --------------------------------

class RecordingLab:
    """Answers lr_find_many with synthetic curves, recording the specs it was asked for."""

    def __init__(self):
        self.asked = []

    def lr_find_many(self, specs):
        self.asked += specs
        return [range_test(bowl(*SHAPES[s.weight_decay])) for s in specs]


def test_plan_one_cycle_runs_one_range_test_per_weight_decay_with_the_real_settings():
    lab = RecordingLab()
    base = TrainSpec(ScheduleSpec.make("constant", lr=0.1), epochs=20, model=ModelSpec(20), batch_size=128,
                     momentum=0.85, precision="fp32", seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PlanWarning)
        plan = plan_one_cycle(lab, base, finder=dict(num_it=100, end_lr=100.0))
    assert [s.weight_decay for s in lab.asked] == [1e-2, 1e-3, 1e-4, 1e-5]
    for spec in lab.asked:
        assert isinstance(spec, FinderSpec)
        assert (spec.model, spec.batch_size, spec.momentum, spec.precision, spec.seed) == (
            ModelSpec(20), 128, 0.85, "fp32", 2)
        assert (spec.start_lr, spec.end_lr, spec.num_it) == (1e-5, 100.0, 100)
    assert plan.finder_specs == dict(zip([1e-2, 1e-3, 1e-4, 1e-5], lab.asked))
    assert plan.weight_decay == 1e-3 and plan.spec.epochs == 20 and plan.spec.momentum == 0.85
    assert plan.reasons[0].startswith("Range tests") and "momentum 0.85" in plan.reasons[0]


def test_plan_one_cycle_checks_its_settings_before_any_range_test():
    lab = RecordingLab()
    for kwargs in (dict(epochs=None), dict(epochs=10, divisor=0.5), dict(epochs=10, weight_decays=()),
                   dict(epochs=10, finder=dict(batch_size=64)), dict(epochs=10, finder=dict(num_itt=5))):
        with pytest.raises(ValueError):
            plan_one_cycle(lab, BASE, **kwargs)
    with pytest.raises(SpecError, match="start_lr"):
        plan_one_cycle(lab, BASE, 10, finder=dict(start_lr=-1.0))
    assert lab.asked == []


def test_plan_one_cycle_end_to_end(tmp_path):
    """Two range tests and a 2-epoch 1cycle run of a ResNet-8 on 256 synthetic images, on the CPU."""
    lab = Lab(tmp_path, device="cpu")
    base = FinderSpec(model=ModelSpec(8), data=DataSpec("synthetic", synthetic_train=256, synthetic_test=64),
                      batch_size=64, precision="fp32", num_it=16, start_lr=1e-4, end_lr=1000.0)
    plan = plan_one_cycle(lab, base, epochs=2, weight_decays=(1e-2, 1e-4))
    assert set(plan.curves) == {1e-2, 1e-4} and all(len(c) >= 8 for c in plan.curves.values())
    assert plan.weight_decay == analysis.largest_weight_decay_at_high_lr(plan.curves)
    assert plan.max_lr == pytest.approx(plan.curves[plan.weight_decay].min_loss_lr / 3)
    assert plan.spec.weight_decay == plan.weight_decay
    assert plan.spec.schedule.kwargs["max_lr"] == plan.max_lr
    [history] = plan.fit(lab, seeds=(0,))
    assert len(history) == 2 * plan.spec.steps_per_epoch == 8
    assert history["lr"].max() <= plan.max_lr * (1 + 1e-6)
    assert len(lab.store) == 3  # two range tests and the run, stored
    again = plan_one_cycle(lab, base, epochs=2, weight_decays=(1e-2, 1e-4))  # from the store
    assert (again.weight_decay, again.max_lr) == (plan.weight_decay, plan.max_lr)


def test_the_module_example_runs():
    import doctest

    import clrlib.recipe

    result = doctest.testmod(clrlib.recipe)
    assert result.attempted > 0 and result.failed == 0

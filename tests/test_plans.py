"""The plans (clrlib.lab.plans): each notebook's runs under each profile, named groups with ranks,
comparisons and the post's numbers; 07's two stages; keys that do not depend on the machine."""
from __future__ import annotations

import math
import types
import warnings

import pytest
import torch

from clrlib import device as _device
from clrlib.finder import FinderResult
from clrlib.lab import doctor, plans, suite
from clrlib.lab.runs import Lab
from clrlib.lab.specs import FinderSpec, TrainSpec

CASES = [(nb, profile) for profile in suite.PROFILES for nb in suite.profile_notebooks(profile)]


def plan_of(notebook: str, profile: str) -> plans.Plan:
    return plans.plan_for(notebook, suite.apply_profile(notebook, profile))


@pytest.mark.parametrize("notebook, profile", CASES)
def test_every_notebook_has_a_plan_of_named_groups(notebook, profile):
    plan = plan_of(notebook, profile)
    assert plan.notebook == notebook and plan.groups
    for name, specs in plan.groups.items():
        assert isinstance(name, str) and specs and all(isinstance(s, (TrainSpec, FinderSpec)) for s in specs)
        assert len({s.seed for s in specs}) == len(specs), f"{name}: a group's specs differ by seed"
        assert plan.ranks[name] in plans.RANKS
    for c in plan.comparisons:
        assert c.a in plan.groups and c.b in plan.groups, c
    assert set(plan.post) <= set(plan.groups)
    for sweep in plan.sweeps.values():
        assert set(sweep.values()) <= set(plan.groups)


def test_the_headline_groups_are_the_posts_numbers():
    headline = {nb: plan_of(nb, "full").headline for nb in suite.profile_notebooks("full")}
    assert headline["01_lr_finder"] == ["range test, post init"]
    assert headline["03_one_cycle"] == ["1cycle, max LR 0.8, 95 epochs"]
    assert headline["04_super_convergence"] == ["max LR 3, 50 epochs", "max LR 3, 70 epochs",
                                                "max LR 0.8, 50% annihilation, 95 epochs"]
    assert headline["05_momentum"] == ["1cycle max LR 0.8, 95 epochs, momentum constant 0.9",
                                       "1cycle max LR 3, 50 epochs, momentum constant 0.9"]
    assert headline["02_cyclical_lr"] == headline["06_weight_decay"] == headline["07_auto_recipe"] == []
    sweep = plan_of("06_weight_decay", "full")
    assert {sweep.ranks[g] for g in sweep.sweeps["weight decay"].values()} == {"next"}
    full = plan_of("04_super_convergence", "full")
    assert full.post["max LR 3, 50 epochs"] == 92.31 and full.post["max LR 3, 70 epochs"] == 93.08
    [longer, short] = full.comparisons
    assert (longer.a, longer.b) == ("max LR 3, 70 epochs", "max LR 3, 50 epochs")
    assert longer.post_difference == pytest.approx(93.08 - 92.31)


def test_the_plans_runs_follow_the_notebooks_parameters():
    p = suite.apply_profile("03_one_cycle", "quick")
    plan = plans.plan_for("03_one_cycle", p)
    [main] = plan.headline
    assert [s.seed for s in plan.groups[main]] == [0, 1, 2]
    spec = plan.groups[main][0]
    assert (spec.model.depth, spec.batch_size, spec.epochs, spec.data.train_subset) == (20, 256, 12, 10240)
    assert spec.schedule.kwargs["max_lr"] == 0.8 and spec.precision == "fp32"
    assert plan.groups["kaiming init control"][0].model.init == "kaiming"
    assert "fp32 control" not in plan.groups
    smoke = plan_of("03_one_cycle", "smoke")
    assert smoke.groups["fp32 control"][0].precision == "fp32"


def test_full_profile_pins_bf16_and_03s_control_stays_fp32():
    precisions = {s.precision for nb in suite.profile_notebooks("full") for s in plan_of(nb, "full").specs()}
    assert precisions == {"bf16", "fp32"}
    control = plan_of("03_one_cycle", "full").groups["fp32 control"]
    assert [s.precision for s in control] == ["fp32"]


def full_keys(lab: Lab, **changes) -> list[str]:
    params = {nb: {**suite.apply_profile(nb, "full"), **changes} for nb in suite.profile_notebooks("full")}
    return [lab.bind(s).key() for nb, p in params.items() for s in plans.plan_for(nb, p).specs()]


def test_the_full_profiles_keys_are_the_same_on_a_cpu_and_on_a_cuda_gpu(monkeypatch, tmp_path):
    arrays = types.SimpleNamespace(fingerprint="cifar10-fingerprint")
    monkeypatch.setattr(Lab, "arrays", lambda self, data: arrays)
    monkeypatch.setattr(_device, "cpu_has_native_bf16", lambda: False)
    cpu = Lab(tmp_path, device="cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(_device, "cuda_has_native_bf16", lambda: True)
    gpu = Lab(tmp_path, device="cuda")
    assert full_keys(cpu) == full_keys(gpu) and len(set(full_keys(cpu))) > 30
    assert full_keys(cpu, precision="auto") != full_keys(gpu, precision="auto")  # what pinning prevents


# --- 07: the recipe's second stage ----------------------------------------------------------------

def curve(weight_decay: float) -> FinderResult:
    """A readable range test whose bottom ends earlier for a larger weight decay."""
    lrs = [10 ** (k / 10 - 2) for k in range(50)]  # 0.01 .. 79
    top = 2.0 if weight_decay >= 1e-2 else 8.0
    losses = [2.3 - 1.2 * min(lr, top) / top + (3 * (lr / top - 1) ** 2 if lr > top else 0.0) for lr in lrs]
    keep = next((i for i, v in enumerate(losses) if v > 4 * min(losses[:i + 1])), len(lrs))
    return FinderResult(lrs=lrs[:keep], losses=losses[:keep], raw_losses=losses[:keep],
                        stop_lr=lrs[keep] if keep < len(lrs) else None)


class FakeLab:
    """Serves range tests (no training) and records which specs were asked for."""

    def __init__(self) -> None:
        self.asked: list[FinderSpec] = []

    def lr_find_many(self, specs):
        self.asked += specs
        return [curve(s.weight_decay) for s in specs]


@pytest.mark.parametrize("profile", ["smoke", "quick", "full"])
def test_07_lists_its_range_tests_up_front_and_the_recipe_reads_exactly_those(profile):
    plan = plan_of("07_auto_recipe", profile)
    p = suite.apply_profile("07_auto_recipe", profile)
    depths = [p["depth"], *p["other_depths"]]
    tests = [s for d in depths for g in plan.sweeps[f"ResNet-{d} range tests"].values() for s in plan.groups[g]]
    assert len(tests) == len(depths) * len(p["weight_decays"])
    lab = FakeLab()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the recipe's warnings about the fake curves are not the point
        stage = plan.then(lab)
    assert lab.asked == tests  # the recipe asked for the range tests the first stage declared, no other
    assert set(stage.readings) == set(depths)
    made = [(g, s.model.depth, s.epochs, s.seed, s.data.n_train) for g, specs in stage.groups.items() for s in specs]
    assert made == [(r.group, r.depth, r.epochs, r.seed, r.n_train) for r in plan.pending]
    for d, chosen in stage.readings.items():
        [spec] = {s.replace(seed=0) for s in stage.groups[stage.sweeps["recipe"][d]]}
        assert spec == chosen.spec.replace(seed=0) and spec.weight_decay == chosen.weight_decay
    for c in stage.comparisons:
        assert c.a in stage.groups and c.b in plan.groups and c.labels[1] == c.b


def test_momentum_variants():
    assert plans.momentum_variants([0.95, 0.85], [0.9, 0.85]) == {
        "cyclical": (0.95, 0.85), "constant 0.9": (0.9, 0.9), "constant 0.85": (0.85, 0.85)}


def test_a_plan_refuses_a_group_twice_an_unknown_rank_and_a_comparison_of_nothing():
    plan = plans.Plan("x")
    spec = plan_of("03_one_cycle", "smoke").specs()[0]
    plan.add("a", spec)
    with pytest.raises(ValueError, match="declared twice"):
        plan.add("a", spec)
    with pytest.raises(ValueError, match="rank"):
        plan.add("b", spec, rank="first")
    with pytest.raises(ValueError, match="unknown group"):
        plan.compare("a", "c")


# --- doctor's projection: the sum over the plans --------------------------------------------------

def test_doctor_projects_the_sum_over_the_plans_training_runs():
    for profile in ("smoke", "quick", "full"):
        specs = {}
        pending = 0.0
        for nb in suite.profile_notebooks(profile):
            plan = plan_of(nb, profile)
            specs.update({s: None for s in plan.specs() if isinstance(s, TrainSpec)})
            pending += sum(r.epochs * (r.depth - 2) / 54 * r.n_train / 50_000 for r in plan.pending)
        expected = sum(s.epochs * (s.model.depth - 2) / 54 * s.data.n_train / 50_000 for s in specs) + pending
        assert doctor.profile_epochs(profile) == pytest.approx(expected)
    # full: ResNet-56 on all the data, 2,684 epochs (02 3x48, 03 4x95, 04 3x(50+70+95), 05 3x3x(95+50),
    # 07 3x70), and 08's 3 x 30 epochs of ResNet-20 at a third of the cost
    assert doctor.profile_epochs("full") == pytest.approx(2684 + 3 * 30 * 18 / 54)
    assert math.isfinite(doctor.profile_epochs("smoke")) and doctor.profile_epochs("smoke") < 1

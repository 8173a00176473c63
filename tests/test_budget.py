"""The runner's budget: projections (stated defaults, then this process's measurements), a fake
clock, a run that would not fit left unstarted with a message that says so, and exit code 0."""
from __future__ import annotations

import pytest

from clrlib.lab import cli, runner, runs
from clrlib.lab.plans import Plan
from clrlib.lab.runner import COMPILE_SECONDS, Budget, Projector
from clrlib.lab.runs import Lab
from clrlib.lab.specs import DataSpec, FinderSpec, ModelSpec, ScheduleSpec, TrainSpec
from lab_fakes import FakeTraining

FULL = DataSpec()  # all of CIFAR-10
SMALL_DATA = DataSpec("synthetic", synthetic_train=64, synthetic_test=32)


def full_run(depth: int = 56, epochs: int = 1, batch: int = 512, seed: int = 0) -> TrainSpec:
    return TrainSpec(ScheduleSpec.make("constant", lr=0.1), epochs, model=ModelSpec(depth), batch_size=batch,
                     seed=seed, precision="bf16")


def small(epochs: int, seed: int = 0) -> TrainSpec:
    return TrainSpec(ScheduleSpec.make("constant", lr=0.1), epochs, batch_size=32, model=ModelSpec(8),
                     data=SMALL_DATA, seed=seed, precision="fp32")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_stated_defaults_per_device():
    gpu = Projector("cuda")
    assert gpu.seconds(full_run()) == pytest.approx(1.0 + COMPILE_SECONDS)  # ResNet-56, batch 512, all images
    gpu.assume_compiled(full_run())
    assert gpu.seconds(full_run(epochs=95)) == pytest.approx(95.0)  # compiled once per architecture and batch
    assert gpu.seconds(full_run(depth=110)) == pytest.approx(2.0 + COMPILE_SECONDS)  # twice the blocks; compiles
    assert gpu.seconds(full_run(batch=256)) == pytest.approx(1.0 + COMPILE_SECONDS)  # another shape compiles
    assert Projector("cuda", compile=False).seconds(full_run()) == pytest.approx(1.0)
    cpu = Projector("cpu")
    assert cpu.seconds(full_run(depth=20)) == pytest.approx(75.0)    # no compile time on a CPU
    quarter = full_run(depth=20).replace(data={"train_subset": 12_500, "test_subset": 2_500})
    assert cpu.seconds(quarter) == pytest.approx(75.0 / 4)
    finder = FinderSpec(model=ModelSpec(56), num_it=98, precision="bf16")  # ~one epoch of batches
    assert Projector("cuda").seconds(finder) == pytest.approx(98 * 512 / (50_000 + 10_000 / 3))


def test_a_measured_run_replaces_the_default():
    p = Projector("cuda")
    spec = full_run(epochs=10)
    p.observe(spec, {"wall_seconds": 140.0, "fit": {"cold_compile_seconds": 40.0}})
    assert p.seconds(full_run(epochs=95)) == pytest.approx(95 * 10.0)   # (140 - 40) / 10 s per epoch
    assert p.seconds(full_run(depth=20)) == pytest.approx(18 / 54 + COMPILE_SECONDS)  # other nets: default
    assert p.per_image("fit", spec.model, 512)[1] == "measured"


def test_a_run_that_would_not_fit_is_not_started_and_the_message_says_so(tmp_path, monkeypatch):
    clock = FakeClock()
    fake = FakeTraining()
    real = fake.__call__

    def take_time(spec, *args, **kwargs):  # each epoch takes 10 s of the fake clock
        clock.now += 10.0 * spec.epochs
        return real(spec, *args, **kwargs)

    monkeypatch.setattr(runs, "execute", take_time)
    plan = Plan("03_one_cycle")
    plan.add("first", small(3), rank="headline")
    plan.add("too long", small(6))
    plan.add("short", small(1))
    lab = Lab(tmp_path, device="cpu", log=lambda line: None)
    projector = Projector("cpu")
    projector.measured[("fit", ModelSpec(8), 32)] = 10.0 / (64 + 32 / 3)  # 10 s per epoch, as the clock
    lines = []
    outcome = runner.train_planned(lab, runner.ordered_runs([plan], lab.bind), projector,
                                   Budget(45, clock=clock), log=lines.append)
    assert [r.group for r in outcome.made] == ["first", "short"]   # 30 s, then 10 s; 60 s would not fit
    [(run, reason)] = outcome.not_started
    assert run.group == "too long" and outcome.budget_ended and not outcome.failed
    assert reason == "not started: projected 60 s, but 15 s are left of the 45 s budget"
    assert "03_one_cycle: too long (seed 0): not started: projected 60 s" in "\n".join(lines)
    assert [s.epochs for s in fake.specs] == [3, 1] and len(lab.store) == 2


def test_the_runner_stops_cleanly_and_exits_0_when_the_budget_ends(tmp_path, monkeypatch, capsys):
    fake = FakeTraining()
    monkeypatch.setattr(runs, "execute", fake)
    monkeypatch.setattr(runner, "DEFAULT_EPOCH_SECONDS", {"cpu": (8, 1e6)})  # nothing fits 60 s ...
    code = cli.main(["run", "03", "--profile", "smoke", "--train-only", "--budget", "60", "--out", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 0 and fake.specs == [] and "FAILED" not in err
    assert "left for later" in out and "the budget ended the work (not an error)" in out
    assert "projected" in out and "left of the 60 s budget" in out
    monkeypatch.setattr(runner, "DEFAULT_EPOCH_SECONDS", {"cpu": (8, 0.001)})  # ... and now everything does
    code = cli.main(["run", "03", "--profile", "smoke", "--train-only", "--budget", "60", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0 and len(fake.specs) >= 3 and "left for later" not in out


def test_a_budget_must_be_positive(capsys):
    assert cli.main(["run", "--budget", "-5", "--profile", "smoke"]) == 2
    assert "--budget must be a positive number" in capsys.readouterr().err
    with pytest.raises(ValueError, match="positive"):
        Budget(0)


def test_plan_with_a_budget_lists_the_headline_runs_first_and_what_fits(tmp_path, monkeypatch):
    rows, notes = cli.plan_rows("full", out=tmp_path, device="cuda", budget=540, data=str(tmp_path / "no-data"))
    assert rows[0]["tier"] == 0 and rows[0]["notebook"] == "01_lr_finder"
    headline = [r for r in rows if r["tier"] == 0]
    assert [r["fits"] for r in headline[:6]] == ["yes"] * 6  # the range test and five of the post's numbers
    assert sum(r["seconds"] for r in rows if r["fits"] == "yes") <= 540
    assert all(r["stored"] == "?" for r in rows if r["tier"] != "stage 2")  # no data here: no keys
    assert any("is unknown" in n for n in notes)
    assert {r["fits"] for r in rows} == {"yes", "no"}
    printed = []
    cli.print_plan(rows, notes, 540, log=printed.append)
    assert any(line.startswith("within a 540 s budget:") for line in printed)

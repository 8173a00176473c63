"""The plan-first runner: the order of the suite's runs, training them (keep going, stop, Ctrl-C),
--train-only without Jupyter, --render-only from the store, and what "already done" means."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import papermill
import pytest

from clrlib.lab import cli, runner, runs, suite
from clrlib.lab.plans import Plan
from clrlib.lab.runs import Lab, MissingRuns
from clrlib.lab.specs import DataSpec, FinderSpec, ModelSpec, ScheduleSpec, TrainSpec
from lab_fakes import FakeTraining, fake_training  # noqa: F401  (a fixture)

DATA = DataSpec("synthetic", synthetic_train=64, synthetic_test=32)
SMALL = dict(batch_size=32, model=ModelSpec(8), data=DATA, precision="fp32")


def fit(lr: float, seed: int = 0, epochs: int = 1) -> TrainSpec:
    return TrainSpec(ScheduleSpec.make("constant", lr=lr), epochs, seed=seed, **SMALL)


def plan(notebook: str, groups: dict, ranks: dict) -> Plan:
    p = Plan(notebook)
    for name, specs in groups.items():
        p.add(name, specs, rank=ranks.get(name, "rest"))
    return p


class RecordingPapermill:
    """papermill.execute_notebook's stand-in: notes the render-only variable each kernel would see,
    and can fail as a notebook would on a missing run (``missing``)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None]] = []
        self.fail_with: Exception | None = None

    def __call__(self, input_path, output_path, parameters=None, **kwargs):
        name = Path(input_path).stem
        self.calls.append((name, os.environ.get(runs.RENDER_ONLY_VARIABLE)))
        Path(output_path).write_text("{}")
        if self.fail_with is not None:
            raise self.fail_with
        out = Path(parameters["out_dir"])
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary_rows.csv").write_text("experiment,metric,value,std,ci95,n_seeds,post_value\n"
                                              f"{name},final test accuracy (%),42.0,,,1,\n")
        (out / "figures.json").write_text(json.dumps([{"name": "curve", "caption": f"{name}'s curve"}]))
        (out / "curve.png").write_bytes(b"png")
        return {}


@pytest.fixture
def fake_papermill(monkeypatch, fake_training):
    fake = RecordingPapermill()
    monkeypatch.setattr(papermill, "execute_notebook", fake)
    return fake


# --- the order ------------------------------------------------------------------------------------

def test_ordered_runs_puts_headline_then_next_then_the_rest_then_further_seeds():
    a = plan("03_one_cycle", {"main": [fit(0.8, 0), fit(0.8, 1)], "control": [fit(0.5)]}, {"main": "headline"})
    b = plan("06_weight_decay", {"wd 1e-2": [fit(0.1)], "batch 64": [fit(0.2)]}, {"wd 1e-2": "next"})
    c = plan("01_lr_finder", {"test": [fit(0.3, 0), fit(0.3, 1)]}, {"test": "headline"})
    d = plan("05_momentum", {"shared with 03": [fit(0.8, 0), fit(0.8, 1)], "constant": [fit(0.9)]},
             {"constant": "headline"})
    got = [(r.tier, r.notebook, r.group, r.spec.seed) for r in runner.ordered_runs([a, b, c, d])]
    assert got == [(0, "01_lr_finder", "test", 0), (0, "03_one_cycle", "main", 0), (0, "05_momentum", "constant", 0),
                   (1, "06_weight_decay", "wd 1e-2", 0),
                   (2, "03_one_cycle", "control", 0), (2, "06_weight_decay", "batch 64", 0),
                   (3, "01_lr_finder", "test", 1), (3, "03_one_cycle", "main", 1)]  # 05's copies: once


def test_the_full_profile_brings_the_posts_numbers_first():
    runs_ = runner.ordered_runs(runner.gather("full"))
    assert len({r.spec for r in runs_}) == len(runs_)
    first = [(r.notebook, r.group) for r in runs_ if r.tier == 0]
    expected = [("01_lr_finder", "range test"), ("03_one_cycle", "1cycle, max LR 0.8, 95 epochs"),
                ("04_super_convergence", "max LR 3, 50 epochs"), ("04_super_convergence", "max LR 3, 70 epochs"),
                ("04_super_convergence", "50% annihilation, 95 epochs"),
                ("05_momentum", "max LR 0.8, 95 epochs, momentum constant 0.9"),
                ("05_momentum", "max LR 3, 50 epochs, momentum constant 0.9")]
    for (notebook, group), (got_notebook, got_group) in zip(expected, first):
        assert got_notebook == notebook and group in got_group, (notebook, group, first)
    assert all(r.spec.seed == 0 for r in runs_ if r.tier < 3)
    tiers = [r.tier for r in runs_]
    assert tiers == sorted(tiers)
    assert {r.notebook for r in runs_ if r.tier == 1} == {"06_weight_decay"}  # the weight-decay sweep next
    assert all("wd" in r.group for r in runs_ if r.tier == 1)
    rest = [r.notebook for r in runs_ if r.tier == 2]
    assert "02_cyclical_lr" in rest and all(r.spec.seed > 0 for r in runs_ if r.tier == 3)


# --- training a plan -------------------------------------------------------------------------------

def test_a_failed_run_is_reported_with_its_spec_and_the_rest_goes_on(tmp_path, monkeypatch):
    fake = FakeTraining(fail=lambda spec: spec.schedule.kwargs["lr"] == 0.5)
    monkeypatch.setattr(runs, "execute", fake)
    lab = Lab(tmp_path, device="cpu", log=lambda line: None)
    p = plan("03_one_cycle", {"a": [fit(0.8)], "broken": [fit(0.5)], "c": [fit(0.3)]}, {})
    planned = runner.ordered_runs([p], lab.bind)
    lines = []
    outcome = runner.train_planned(lab, planned, log=lines.append)
    assert [r.group for r in outcome.made] == ["a", "c"] and len(lab.store) == 2
    [(run, error)] = outcome.failed
    assert run.group == "broken" and "broken on purpose" in str(error) and "'lr': 0.5" in str(error)
    assert any(line.startswith("FAILED 03_one_cycle: broken") for line in lines)
    # --no-keep-going: nothing starts after the first failure
    lab2 = Lab(tmp_path / "other", device="cpu", log=lambda line: None)
    outcome = runner.train_planned(lab2, runner.ordered_runs([p], lab2.bind), keep_going=False, log=lines.append)
    assert [r.group for r in outcome.made] == ["a"] and [r.group for r, _ in outcome.not_started] == ["c"]
    assert "an earlier run failed" in outcome.not_started[0][1]


def test_a_run_suite_trains_every_planned_run_once_then_renders(tmp_path, fake_papermill, fake_training):
    report = cli.run_suite(["03", "05"], "smoke", out=tmp_path, log=lambda line: None)
    assert report.exit_code == 0 and not report.failed
    assert len(fake_training.specs) == len(set(fake_training.specs))  # 05 shares 03's runs: trained once
    assert [name for name, _ in fake_papermill.calls] == ["03_one_cycle", "05_momentum"]
    assert all(flag is None for _, flag in fake_papermill.calls)  # a plain run: the kernels may train
    assert len(report.outcome.made) == len(fake_training.specs)


# --- --train-only, --render-only ---------------------------------------------------------------------

def test_train_only_needs_no_jupyter_package(tmp_path):
    script = f"""
import sys
for name in ("papermill", "ipykernel", "nbformat", "nbclient", "jupyter_client"):
    sys.modules[name] = None  # importing any of them now raises ImportError
sys.path.insert(0, {str(Path(__file__).parent)!r})
from lab_fakes import FakeTraining
from clrlib.lab import runs
runs.execute = FakeTraining()
from clrlib.lab.cli import main
sys.exit(main(["run", "03", "--profile", "smoke", "--train-only", "--out", {str(tmp_path)!r}]))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "trained now" in done.stdout and "notebooks executed" not in done.stdout
    lab = Lab(tmp_path / "smoke" / "runs", device="cpu")
    planned = runner.ordered_runs(runner.gather("smoke", ["03_one_cycle"]), lab.bind)  # fp32 control = main on a CPU
    assert len(planned) >= 3 and all(lab.store.get(r.spec) is not None for r in planned)
    assert not (tmp_path / "smoke" / "03_one_cycle.ipynb").exists()


def test_render_only_on_an_empty_store_trains_nothing_and_names_the_missing_runs(
        tmp_path, fake_papermill, fake_training, capsys):
    fake_papermill.fail_with = papermill.PapermillExecutionError(
        1, 2, "runs = exp.get(plan)", "MissingRuns", "render-only: notebook 03_one_cycle lacks 4 run(s)", [])
    code = cli.main(["run", "03", "--profile", "smoke", "--render-only", "--out", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 1 and fake_training.specs == []
    assert fake_papermill.calls == [("03_one_cycle", "1")]  # the kernel saw CLRLIB_RENDER_ONLY=1
    assert os.environ.get(runs.RENDER_ONLY_VARIABLE) is None  # and only the kernel
    assert "03_one_cycle: runs missing from the store (render-only), so these numbers are absent" in err
    assert "'1cycle, max LR 0.8, 4 epochs' (headline): 2 of 2 runs (seed 0, 1)" in err
    assert "notebook 03_one_cycle failed in cell 2: MissingRuns" in err
    assert not (tmp_path / "smoke" / "03_one_cycle.ipynb").exists()


def test_train_only_then_render_only_renders_from_the_store(tmp_path, fake_papermill, fake_training):
    trained = cli.run_suite(["03"], "smoke", out=tmp_path, render=False, log=lambda line: None)
    n = len(fake_training.specs)
    assert trained.exit_code == 0 and fake_papermill.calls == [] and n >= 3
    rendered = cli.run_suite(["03"], "smoke", out=tmp_path, train=False, log=lambda line: None)
    assert rendered.exit_code == 0 and rendered.missing == {} and len(fake_training.specs) == n
    assert fake_papermill.calls == [("03_one_cycle", "1")] and rendered.executed == ["03_one_cycle"]
    assert "03_one_cycle" in (tmp_path / "smoke" / "summary.csv").read_text()


def test_a_render_only_lab_raises_missing_runs_naming_notebook_and_groups(tmp_path, monkeypatch):
    monkeypatch.setenv(runs.RENDER_ONLY_VARIABLE, "1")
    params = {**suite.apply_profile("03_one_cycle", "smoke"), "out_dir": str(tmp_path / "03_one_cycle")}
    exp = suite.Experiment("03_one_cycle", params)
    assert exp.lab.train is False
    p = exp.plan()
    with pytest.raises(MissingRuns) as info:
        exp.get(p)
    message = str(info.value)
    assert message.startswith("render-only: notebook 03_one_cycle lacks ")
    assert "'1cycle, max LR 0.8, 4 epochs' (headline): 2 of 2 run(s) missing (seed 0, 1)" in message
    assert "python -m clrlib run 03_one_cycle --train-only" in message
    assert len(exp.lab.store) == 0
    monkeypatch.setenv(runs.RENDER_ONLY_VARIABLE, "maybe")
    with pytest.raises(ValueError, match="CLRLIB_RENDER_ONLY"):
        runs.render_only_from_environment()


# --- what "already done" means; stale results -------------------------------------------------------

def test_a_corrupt_completed_json_is_not_done_and_warns(tmp_path, fake_papermill):
    cli.run_suite(["03"], "smoke", out=tmp_path, log=lambda line: None)
    (tmp_path / "smoke" / "03_one_cycle" / "completed.json").write_text("{not json")
    with pytest.warns(RuntimeWarning, match="completed.json is unreadable"):
        report = cli.run_suite(["03"], "smoke", out=tmp_path, log=lambda line: None)
    assert report.executed == ["03_one_cycle"] and len(fake_papermill.calls) == 2


def test_other_data_or_other_code_reexecutes_the_notebook(tmp_path, fake_papermill, monkeypatch):
    cli.run_suite(["03"], "smoke", out=tmp_path, log=lambda line: None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to warn about
        assert cli.run_suite(["03"], "smoke", out=tmp_path, log=lambda line: None).executed == []
    from clrlib import data as _data
    other = _data.synthetic_cifar10(512, 256, seed=1)  # other images under the same settings and path
    monkeypatch.setattr(runs, "load_arrays", lambda data, root=None: other)
    assert cli.run_suite(["03"], "smoke", out=tmp_path, log=lambda line: None).executed == ["03_one_cycle"]
    assert cli.run_suite(["03"], "smoke", out=tmp_path, log=lambda line: None).executed == []
    monkeypatch.setattr(cli, "package_hash", lambda: "other code")
    assert cli.run_suite(["03"], "smoke", out=tmp_path, log=lambda line: None).executed == ["03_one_cycle"]


def test_the_package_hash_follows_the_source():
    assert cli.package_hash() == cli.package_hash() and len(cli.package_hash()) == 16


def test_a_failed_rerun_removes_the_notebooks_old_rows_and_figures(tmp_path, fake_papermill):
    cli.run_suite(["03", "04"], "smoke", out=tmp_path, log=lambda line: None)
    base = tmp_path / "smoke"
    assert "03_one_cycle" in (base / "summary.csv").read_text() and "03_one_cycle" in (base / "README.md").read_text()
    fake_papermill.fail_with = papermill.PapermillExecutionError(3, 4, "x", "ZeroDivisionError", "division by zero", [])
    report = cli.run_suite(["03"], "smoke", out=tmp_path, redo=True, log=lambda line: None)
    assert report.exit_code == 1 and report.failed_notebooks[0][0] == "03_one_cycle"
    summary, gallery = (base / "summary.csv").read_text(), (base / "README.md").read_text()
    assert "03_one_cycle" not in summary and "04_super_convergence" in summary
    assert "03_one_cycle's curve" not in gallery and "04_super_convergence's curve" in gallery
    assert not (base / "03_one_cycle" / "curve.png").exists() and (base / "04_super_convergence" / "curve.png").exists()


# --- Ctrl-C -----------------------------------------------------------------------------------------

def test_ctrl_c_exits_130_after_saying_what_was_kept(tmp_path, monkeypatch, fake_papermill, capsys):
    fake = FakeTraining()
    real = fake.__call__

    def interrupt_on_the_third(spec, *args, **kwargs):
        if len(fake.specs) == 2:
            raise KeyboardInterrupt
        return real(spec, *args, **kwargs)

    monkeypatch.setattr(runs, "execute", interrupt_on_the_third)
    code = cli.main(["run", "03", "--profile", "smoke", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 130 and fake_papermill.calls == []
    assert "interrupted: 2 run(s) trained in this session are stored" in err, err
    assert "rerunning the same command resumes" in err.strip().splitlines()[-1]
    assert len(list((tmp_path / "smoke" / "runs").glob("fit-*.json"))) == 2


def test_a_second_stage_is_trained_once_its_first_stage_is_stored(tmp_path, fake_training):
    """07: the recipe reads its range tests (the first stage) and only then declares its runs."""
    rows, _ = cli.plan_rows("smoke", ["07"], out=tmp_path)
    pending = [r for r in rows if r["tier"] == "stage 2"]
    assert pending and all(r["stored"] == "no" for r in pending)  # as far as known before the range tests
    report = cli.run_suite(["07"], "smoke", out=tmp_path, render=False, log=lambda line: None)
    assert report.exit_code == 0 and not report.outcome.failed
    stages = [r.stage for r in report.outcome.made]
    assert stages == sorted(stages) and stages.count(2) == len(pending)  # every first-stage run came first
    rows, _ = cli.plan_rows("smoke", ["07"], out=tmp_path)
    assert all(r["stored"] == "yes" for r in rows)  # now read from the stored range tests: every run is in
    assert [r["group"] for r in rows if r["tier"] == "stage 2"] == [r.group for r in report.outcome.made if r.stage == 2]

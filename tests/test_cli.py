"""The command line: list, run (papermill replaced by a fake), profiles, data, resuming, exit codes."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.error

import papermill
import pytest
import torch

from clrlib.lab import cli, suite
from clrlib.lab.suite import NOTEBOOKS, ORDER, ProfileError
from lab_fakes import fake_training  # noqa: F401  (a fixture)


class FakePapermill:
    """Stands in for papermill.execute_notebook: writes the output notebook and the summary rows."""

    def __init__(self, fail: BaseException | None = None) -> None:
        self.calls: list[dict] = []
        self.fail = fail

    def __call__(self, input_path, output_path, parameters=None, **kwargs):
        self.calls.append(dict(parameters))
        with open(output_path, "w") as f:
            json.dump({"cells": [], "parameters": parameters}, f)
        if self.fail is not None:
            raise self.fail
        out = parameters["out_dir"]
        from pathlib import Path
        Path(out).mkdir(parents=True, exist_ok=True)
        notebook = Path(input_path).stem
        (Path(out) / "summary_rows.csv").write_text(
            "experiment,metric,value,std,ci95,n_seeds,post_value\n"
            f"{notebook} [synthetic data],final test accuracy (%),42.0,,,1,93.53\n")
        return {}


@pytest.fixture
def fake_papermill(monkeypatch, fake_training):
    """papermill replaced, and training too (the runner trains the plans' runs before executing)."""
    fake = FakePapermill()
    monkeypatch.setattr(papermill, "execute_notebook", fake)
    return fake


@pytest.fixture
def no_cifar(monkeypatch, tmp_path):
    """No CIFAR-10 anywhere and no internet: a download creates its folder, then fails."""
    from torchvision.datasets import utils as tv_utils

    def offline(url, download_root, *args, **kwargs):
        from pathlib import Path
        Path(download_root).mkdir(parents=True, exist_ok=True)
        raise urllib.error.URLError("no network (test)")

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", offline)
    monkeypatch.setenv("CLRLIB_DATA", str(tmp_path / "default-data"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    return tmp_path / "no-data-here"


def run(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --- names and order -------------------------------------------------------------------------------

def test_resolve_names_accepts_numbers_and_parts():
    assert cli.resolve_names([]) == list(ORDER)
    assert cli.resolve_names(["03", "momentum"]) == ["03_one_cycle", "05_momentum"]
    assert cli.resolve_names(["06_weight_decay", "06"]) == ["06_weight_decay"]
    assert cli.resolve_names(["momentum", "lr_finder"], order=NOTEBOOKS) == ["01_lr_finder", "05_momentum"]
    with pytest.raises(ProfileError, match="'nonsense'"):
        cli.resolve_names(["nonsense"])


def test_parse_order_puts_the_listed_notebooks_first():
    assert cli.parse_order(None) == ORDER and cli.parse_order("") == ORDER
    assert cli.parse_order("02, 05") == ("02_cyclical_lr", "05_momentum", "01_lr_finder", "03_one_cycle",
                                         "04_super_convergence", "06_weight_decay", "07_auto_recipe",
                                         "08_same_budget")
    assert cli.parse_order("03,03_one_cycle,,04") [:3] == ("03_one_cycle", "04_super_convergence", "01_lr_finder")
    assert sorted(cli.parse_order("06")) == sorted(NOTEBOOKS)
    with pytest.raises(ProfileError, match="'99'"):
        cli.parse_order("03,99")


def test_list_names_the_notebooks_and_profiles(capsys):
    code, out, _ = run(capsys, "list")
    assert code == 0 and out.splitlines()[:len(ORDER)] == list(ORDER)
    assert "smoke" in out and "quick" in out and "full" in out


def test_python_dash_m_clrlib_lists_the_notebooks():
    done = subprocess.run([sys.executable, "-m", "clrlib", "list"], capture_output=True, text=True,
                          cwd=suite.REPO_ROOT, timeout=120)
    assert done.returncode == 0 and "03_one_cycle" in done.stdout


def test_a_bad_profile_is_rejected(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["run", "--profile", "huge"])
    assert info.value.code == 2 and "huge" in capsys.readouterr().err


def test_a_bad_notebook_name_exits_2(capsys, tmp_path, fake_papermill):
    code, _, err = run(capsys, "run", "nonsense", "--profile", "smoke", "--out", str(tmp_path))
    assert code == 2 and "'nonsense'" in err and fake_papermill.calls == []
    code, _, err = run(capsys, "run", "--order", "03,99", "--profile", "smoke", "--out", str(tmp_path))
    assert code == 2 and "'99'" in err


# --- data ----------------------------------------------------------------------------------------------

def test_an_explicit_profile_without_cifar10_fails_and_creates_nothing(capsys, tmp_path, no_cifar, fake_papermill):
    code, out, err = run(capsys, "run", "03", "--profile", "quick", "--data", str(no_cifar),
                         "--out", str(tmp_path / "out"))
    assert code == 2
    assert "profile 'quick' needs CIFAR-10" in err and "CIFAR-10 (python version) not found" in err
    assert str(no_cifar) in err
    assert not no_cifar.exists() and not (tmp_path / "out").exists()
    assert fake_papermill.calls == []


def test_auto_without_cifar10_falls_back_to_smoke_and_says_so_last(capsys, tmp_path, no_cifar, fake_papermill):
    out_dir = tmp_path / "out"
    code, out, err = run(capsys, "run", "03", "--data", str(no_cifar), "--out", str(out_dir))
    assert code == 0, err
    [params] = fake_papermill.calls
    assert params["profile"] == "smoke" and params["dataset"] == "synthetic" and params["data_root"] is None
    assert params["out_dir"] == str(out_dir.resolve() / "smoke" / "03_one_cycle")
    assert "Running the smoke profile on synthetic data instead of 'quick'" in out
    last = out.strip().splitlines()[-1]
    assert "CIFAR-10 was not found" in last and "smoke" in last and "synthetic" in last
    assert (out_dir / "smoke" / "03_one_cycle.ipynb").is_file()
    assert (out_dir / "smoke" / "summary.csv").is_file() and "42" in (out_dir / "smoke" / "summary.md").read_text()
    assert not no_cifar.exists() and not (out_dir / "quick").exists()


# --- the results folder -------------------------------------------------------------------------------

@pytest.mark.parametrize("profile", [["--profile", "smoke"], []])
def test_an_out_that_is_a_file_exits_2_with_one_line(capsys, tmp_path, no_cifar, fake_papermill, profile):
    (tmp_path / "afile").write_text("")
    code, out, err = run(capsys, "run", "03", *profile, "--data", str(no_cifar), "--out", str(tmp_path / "afile"))
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: --out") and "is a file" in err
    assert fake_papermill.calls == [] and not no_cifar.exists()


# --- resuming ---------------------------------------------------------------------------------------------

def test_a_notebook_done_with_the_same_settings_is_skipped(capsys, tmp_path, fake_papermill, fake_training,
                                                           monkeypatch):
    base = tmp_path / "out" / "smoke"
    args = ("run", "03", "04", "--profile", "smoke", "--out", str(tmp_path / "out"))
    assert run(capsys, *args)[0] == 0
    assert [c["out_dir"] for c in fake_papermill.calls] == [str(base.resolve() / n)
                                                          for n in ("03_one_cycle", "04_super_convergence")]
    assert json.loads((base / "03_one_cycle" / "completed.json").read_text())["settings"]
    trained = len(fake_training.specs)
    assert trained == len(set(fake_training.specs)) > 0  # every planned run once, by the runner
    code, out, _ = run(capsys, *args)
    assert code == 0 and len(fake_papermill.calls) == 2 and len(fake_training.specs) == trained
    assert out.count("done earlier with these settings, data and code, skipped") == 2
    # --redo runs them again: the runner retrains the planned runs (once), the kernels only read them
    assert run(capsys, *args, "--redo")[0] == 0 and len(fake_papermill.calls) == 4
    assert fake_papermill.calls[-1]["redo"] is False and len(fake_training.specs) == 2 * trained
    # changed profile settings: that notebook runs again, the other is still skipped
    profiles = tmp_path / "profiles"
    shutil.copytree(suite.PROFILE_DIR, profiles)
    text = (profiles / "smoke.yaml").read_text()
    assert "03_one_cycle:\n  epochs: 4" in text
    (profiles / "smoke.yaml").write_text(text.replace("03_one_cycle:\n  epochs: 4", "03_one_cycle:\n  epochs: 3"))
    monkeypatch.setattr(suite, "PROFILE_DIR", profiles)
    code, out, _ = run(capsys, *args)
    assert code == 0 and len(fake_papermill.calls) == 5
    assert fake_papermill.calls[-1]["epochs"] == 3 and "04_super_convergence (smoke): done earlier" in out
    # a notebook whose code changed runs again too (its runs would come from the store)
    notebooks = tmp_path / "notebooks"
    shutil.copytree(cli.NOTEBOOK_DIR, notebooks)
    nb = json.loads((notebooks / "04_super_convergence.ipynb").read_text())
    nb["cells"][-1]["source"].append("\nassert True")
    (notebooks / "04_super_convergence.ipynb").write_text(json.dumps(nb))
    monkeypatch.setattr(cli, "NOTEBOOK_DIR", notebooks)
    monkeypatch.setattr(suite, "NOTEBOOK_DIR", notebooks)
    code, out, _ = run(capsys, *args)
    assert code == 0 and len(fake_papermill.calls) == 6
    assert "03_one_cycle (smoke): done earlier" in out and "04_super_convergence (smoke) ..." in out


def test_a_failing_notebook_leaves_only_its_partial_notebook(capsys, tmp_path, fake_papermill, monkeypatch):
    base = tmp_path / "out" / "smoke"
    args = ("run", "03", "--profile", "smoke", "--out", str(tmp_path / "out"))
    assert run(capsys, *args)[0] == 0  # a completed run first: its results must not outlive a failed rerun
    fake_papermill.fail = papermill.PapermillExecutionError(4, 5, "x = 1 / 0", "ZeroDivisionError",
                                                              "division by zero", [])
    code, out, err = run(capsys, *args, "--redo")
    assert code == 1  # reported, after the rest (--keep-going)
    assert "notebook 03_one_cycle failed in cell 5: ZeroDivisionError: division by zero" in err
    assert ".03_one_cycle.partial.ipynb" in err
    assert not (base / "03_one_cycle" / "completed.json").exists()
    assert not (base / "03_one_cycle.ipynb").exists()
    assert (base / ".03_one_cycle.partial.ipynb").is_file()
    # fixed: the next run executes it again
    fake_papermill.fail = None
    assert run(capsys, *args)[0] == 0 and len(fake_papermill.calls) == 3
    assert (base / "03_one_cycle.ipynb").is_file() and (base / "03_one_cycle" / "completed.json").is_file()


def test_an_interrupted_run_exits_130_and_says_a_rerun_resumes(capsys, tmp_path, fake_papermill):
    fake_papermill.fail = KeyboardInterrupt()
    code, out, err = run(capsys, "run", "03", "--profile", "smoke", "--out", str(tmp_path))
    assert code == 130
    assert "rerunning the same command resumes" in err.strip().splitlines()[-1]
    assert "stopped while executing 03_one_cycle (not kept" in err
    assert not (tmp_path / "smoke" / "03_one_cycle" / "completed.json").exists()
    assert not (tmp_path / "smoke" / "03_one_cycle.ipynb").exists()
    assert not (tmp_path / "smoke" / "03_one_cycle" / "summary_rows.csv").exists()


def test_the_kernels_own_log_goes_to_a_file_not_the_terminal(tmp_path, monkeypatch):
    """A kernel stopped by Ctrl-C prints a zmq.error.ZMQError traceback on its stderr: that goes
    to <out>/<profile>/.<notebook>.kernel.log."""
    import asyncio
    from jupyter_client.manager import AsyncKernelManager
    seen = {}

    async def fake_start(self, **kw):
        seen.update(kw)

    monkeypatch.setattr(AsyncKernelManager, "start_kernel", fake_start)
    with open(tmp_path / "kernel.log", "ab") as log:
        km = cli._kernel_manager(log)
        asyncio.run(km.start_kernel(cwd="x"))
        assert seen == {"stderr": log, "cwd": "x"} and km.kernel_name == "python3"


def test_run_notebooks_runs_in_the_given_order(tmp_path, fake_papermill):
    lines = []
    table = cli.run_notebooks(["06", "03", "01"], "smoke", out=tmp_path, order=cli.parse_order("06,03"),
                              log=lines.append)
    assert [c["out_dir"].rsplit("/", 1)[1] for c in fake_papermill.calls] == [
        "06_weight_decay", "03_one_cycle", "01_lr_finder"]
    assert sorted(table["experiment"]) == sorted(f"{n} [synthetic data]" for n in
                                                 ("01_lr_finder", "03_one_cycle", "06_weight_decay"))
    assert "06_weight_decay (smoke) ..." in [line for line in lines if "(smoke) ..." in line][0]


def test_run_notebooks_can_execute_several_at_once(tmp_path, fake_papermill):
    table = cli.run_notebooks(["03", "04", "06"], "smoke", out=tmp_path, jobs=2, log=lambda line: None)
    assert len(fake_papermill.calls) == 3 and len(table) == 3
    for name in ("03_one_cycle", "04_super_convergence", "06_weight_decay"):
        assert (tmp_path / "smoke" / name / "completed.json").is_file()
    with pytest.raises(cli.RunnerError, match="--jobs"):
        cli.run_notebooks(["03"], "smoke", out=tmp_path, jobs=0)


def test_use_executor_sets_what_the_kernels_read(monkeypatch):
    monkeypatch.delenv("CLRLIB_EXECUTOR", raising=False)
    cli.use_executor("local")
    import os
    assert os.environ["CLRLIB_EXECUTOR"] == "local"
    monkeypatch.setenv("CLRLIB_EXECUTOR", "local")  # restored by monkeypatch after the test


# --- the last lines and progress ------------------------------------------------------------------

def test_the_last_lines_name_the_gallery_and_what_was_reused_not_the_wide_table(capsys, tmp_path, fake_papermill):
    base = (tmp_path / "out" / "smoke").resolve()
    args = ("run", "03", "--profile", "smoke", "--out", str(tmp_path / "out"))
    code, out, _ = run(capsys, *args)
    assert code == 0
    assert "post_value" not in out and "n_seeds" not in out, "the summary table belongs in the files"
    last = out.strip().splitlines()[-1]
    assert last.startswith(f"results: {base / 'README.md'}") and str(base / "summary.csv") in last, last
    code, out, _ = run(capsys, *args)
    assert code == 0
    reused = [line for line in out.splitlines() if line.startswith("notebooks reused")]
    assert reused and "03_one_cycle" in reused[0] and "--redo" in reused[0], out
    assert out.strip().splitlines()[-1].startswith("results: "), out


@pytest.mark.parametrize("setting, shown", [("1", True), ("0", False)])
def test_the_suite_shows_a_progress_bar_of_runs_unless_told_not_to(capsys, tmp_path, fake_papermill, monkeypatch,
                                                                  setting, shown):
    monkeypatch.setenv("CLRLIB_PROGRESS", setting)
    code, _, err = run(capsys, "run", "03", "--profile", "smoke", "--train-only", "--out", str(tmp_path / "out"))
    assert code == 0
    assert ("suite:" in err and "run" in err and "min projected for the rest" in err) is shown, err


def test_progress_is_off_under_ci_and_on_a_terminal_otherwise(monkeypatch):
    from clrlib.lab import runner
    monkeypatch.delenv("CLRLIB_PROGRESS", raising=False)
    monkeypatch.setenv("CI", "true")
    assert runner.progress_enabled() is False
    monkeypatch.delenv("CI")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert runner.progress_enabled() is True


# --- faults: a symlink loop as --data, a full disk under --out -----------------------------------------

@pytest.mark.parametrize("command", ["run", "plan"])
def test_a_symlink_loop_as_data_exits_2_naming_it(capsys, tmp_path, fake_papermill, command):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    extra = ("--out", str(tmp_path / "out")) if command == "run" else ()
    code, out, err = run(capsys, command, "03", "--profile", "quick", "--data", str(loop), *extra)
    assert code == 2, out + err
    assert f"--data {loop}: cannot be resolved" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() and fake_papermill.calls == []


def test_too_little_free_space_under_out_is_refused_before_any_training(capsys, tmp_path, fake_papermill,
                                                                         fake_training, monkeypatch):
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=5 * 2**20))
    code, out, err = run(capsys, "run", "03", "--profile", "smoke", "--out", str(tmp_path / "out"))
    assert code == 2
    assert "only 5 MiB free under" in err and "free some space or give another folder" in err
    assert fake_training.specs == [] and fake_papermill.calls == []


def test_a_disk_that_fills_while_a_notebook_runs_keeps_nothing_of_it(capsys, tmp_path, fake_papermill, monkeypatch):
    import errno
    fake_papermill.fail = OSError(errno.ENOSPC, "No space left on device", "figure.png")
    code, out, err = run(capsys, "run", "03", "--profile", "smoke", "--out", str(tmp_path / "out"))
    base = tmp_path / "out" / "smoke"
    assert code == 1
    assert "cannot write its results under" in err and "No space left on device" in err and "Traceback" not in err
    assert not list(base.glob("*.ipynb")) and not list(base.glob(".*.partial.ipynb"))
    assert not (base / "03_one_cycle" / "summary_rows.csv").exists()

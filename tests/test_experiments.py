"""The notebook runner's pieces: profiles, parameter checks, the Run helper, the summary."""
import json
import math

import pandas as pd
import pytest

from clrlib import experiments
from clrlib.experiments import ExperimentError, Run


@pytest.mark.parametrize("profile", experiments.PROFILES)
@pytest.mark.parametrize("notebook", experiments.NOTEBOOKS)
def test_every_profile_setting_is_a_parameter_of_its_notebook(profile, notebook):
    settings = experiments.load_profile(profile, notebook)
    assert settings["profile"] == profile
    experiments.check_parameters(notebook, settings)  # raises on a typo in a profile file


@pytest.mark.parametrize("notebook", experiments.NOTEBOOKS)
def test_notebook_defaults_are_the_full_profile_and_the_posts_settings(notebook):
    params = experiments.notebook_parameters(notebook)
    assert params["profile"] == "'full'" or params["profile"] == '"full"'
    assert params["depth"] == "56" and params["batch_size"] == "512"
    assert params["shortcut"] in ("'B'", '"B"') and params["weight_decay"] == "1e-4"


def test_bad_names_and_profiles_are_named_in_the_error():
    with pytest.raises(ExperimentError, match="'huge'"):
        experiments.load_profile("huge", "03_one_cycle")
    with pytest.raises(ExperimentError, match="'07_nothing'"):
        experiments.load_profile("smoke", "07_nothing")
    with pytest.raises(ExperimentError, match="'nonsense'"):
        experiments.resolve_names(["nonsense"])
    with pytest.raises(ExperimentError, match=r"03_one_cycle.*\['learning_rate'\]"):
        experiments.check_parameters("03_one_cycle", {"learning_rate": 1.0})


def test_resolve_names_accepts_numbers_and_parts():
    assert experiments.resolve_names([]) == list(experiments.NOTEBOOKS)
    assert experiments.resolve_names(["03", "momentum"]) == ["03_one_cycle", "05_momentum"]
    assert experiments.resolve_names(["06_weight_decay", "06"]) == ["06_weight_decay"]


def _smoke_run(tmp_path, **extra):
    params = dict(profile="smoke", dataset="synthetic", synthetic_train=128, synthetic_test=64,
                  depth=8, batch_size=32, device="cpu", progress=False,
                  out_dir=str(tmp_path / "smoke" / "03_one_cycle"), **extra)
    return Run("03_one_cycle", params)


def test_run_records_provenance_and_labels_synthetic_data(tmp_path):
    run = _smoke_run(tmp_path)
    info = json.loads((run.out / "params.json").read_text())
    assert info["synthetic_data"] is True and info["data"] == "synthetic"
    for key in ("commit", "date", "torch", "device_name", "parameters", "host"):
        assert info[key], key
    row = run.record("1cycle", "final test accuracy (%)", [90.0, 92.0], post_value=93.5)
    assert row["experiment"].endswith("[synthetic data]")
    assert row["value"] == pytest.approx(91.0) and row["n_seeds"] == 2
    assert row["std"] == pytest.approx(math.sqrt(2.0))
    saved = pd.read_csv(run.out / "summary_rows.csv")
    assert list(saved.columns) == experiments.SUMMARY_COLUMNS and len(saved) == 1
    run.record("1cycle", "final test accuracy (%)", 50.0)  # same row again replaces it
    assert len(pd.read_csv(run.out / "summary_rows.csv")) == 1


def test_fit_saves_history_and_reuses_it_only_for_identical_settings(tmp_path):
    run = _smoke_run(tmp_path)
    first = run.fit("oc", "one_cycle", 1, seed=0, max_lr=0.5)
    csv = run.runs_dir / "oc_seed0.csv"
    meta = json.loads(csv.with_suffix(".json").read_text())
    assert meta["settings"]["schedule_args"]["total_steps"] == len(first) == 4
    assert meta["commit"] and meta["device_name"]
    # same settings under another name: read back, not retrained
    again = run.fit("other_name", "one_cycle", 1, seed=0, max_lr=0.5)
    pd.testing.assert_frame_equal(first, again)
    assert not (run.runs_dir / "other_name_seed0.csv").exists()
    # different settings: trained anew
    run.fit("oc_b", "one_cycle", 1, seed=0, max_lr=0.4)
    assert (run.runs_dir / "oc_b_seed0.csv").exists()
    with pytest.raises(ExperimentError, match="'warmup'"):
        run.fit("x", "warmup", 1)


def test_lr_find_round_trips_through_its_saved_csv(tmp_path):
    run = _smoke_run(tmp_path)
    result = run.lr_find("f", start_lr=1e-3, end_lr=10.0, num_it=8)
    again = run.lr_find("f", start_lr=1e-3, end_lr=10.0, num_it=8)
    assert again.lrs == pytest.approx(result.lrs) and again.losses == pytest.approx(result.losses)
    assert again.stop_lr == result.stop_lr


def test_setup_notebook_applies_the_profile_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CLRLIB_PROFILE", "smoke")
    monkeypatch.setenv("CLRLIB_OUT", str(tmp_path))
    namespace = dict(profile="full", dataset="cifar10", data_root=None, out_dir=None, device=None,
                     redo=False, progress=True, depth=56, shortcut="B", batch_size=512,
                     weight_decay=1e-4, train_subset=None, test_subset=None, synthetic_train=512,
                     synthetic_test=256, seeds=[0], epochs=95, max_lr=0.8, div=10.0, final_div=100.0,
                     annihilate=0.1368, moms=[0.95, 0.85], post_accuracy=93.53, In=[], _hidden=1)
    run = experiments.setup_notebook("03_one_cycle", namespace)
    assert namespace["profile"] == "smoke" and namespace["depth"] == 8 and namespace["epochs"] == 4
    assert run.out == tmp_path / "smoke" / "03_one_cycle" and run.data.synthetic
    assert "In" not in run.params and "_hidden" not in run.params


def test_write_summary_gathers_notebook_rows(tmp_path):
    for name, value in (("01_lr_finder", 8.0), ("03_one_cycle", 93.0)):
        (tmp_path / name).mkdir()
        pd.DataFrame([dict(experiment=name, metric="m", value=value, post_value=None, n_seeds=1,
                           std=float("nan"))]).to_csv(tmp_path / name / "summary_rows.csv", index=False)
    table = experiments.write_summary(tmp_path)
    assert list(table["value"]) == [8.0, 93.0]
    assert "| 03_one_cycle | m | 93 |" in (tmp_path / "summary.md").read_text()


def test_command_line_lists_notebooks_and_rejects_a_bad_profile(capsys):
    assert experiments.main(["list"]) == 0
    assert "03_one_cycle" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        experiments.main(["run", "--profile", "huge"])

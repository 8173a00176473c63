"""The notebook suite: parameters cells, profiles and their checks, start(), Experiment, the summary."""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from clrlib.lab import suite
from clrlib.lab.suite import ProfileError


def write_profile(monkeypatch, tmp_path, text: str, name: str = "smoke"):
    """Make ``text`` the profile file ``name`` (suite.PROFILE_DIR moved to ``tmp_path``)."""
    folder = tmp_path / "profiles"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.yaml").write_text(text)
    monkeypatch.setattr(suite, "PROFILE_DIR", folder)
    return folder / f"{name}.yaml"


# --- parameters and the real profiles ---------------------------------------------------------------

@pytest.mark.parametrize("profile", suite.PROFILES)
@pytest.mark.parametrize("notebook", suite.NOTEBOOKS)
def test_every_real_profile_is_valid_for_every_notebook(profile, notebook):
    settings = suite.load_profile(profile, notebook)  # raises on a typo or a wrong type
    assert settings["profile"] == profile
    defaults = suite.notebook_parameters(notebook)
    assert set(settings) <= set(defaults)
    applied = suite.apply_profile(notebook, profile)
    assert set(applied) == set(defaults) and applied["profile"] == profile


@pytest.mark.parametrize("notebook", suite.NOTEBOOKS)
def test_notebook_defaults_are_the_posts_settings(notebook):
    params = suite.notebook_parameters(notebook)
    assert params["profile"] is None  # None: "full", or $CLRLIB_PROFILE when opened by hand
    assert params["dataset"] == "cifar10" and params["train_subset"] is None and params["test_subset"] is None
    depth = 20 if notebook == "08_same_budget" else 56  # 08: ResNet-20 at full data, the post's claim on a CPU
    assert params["depth"] == depth and params["shortcut"] == "B" and params["init"] == "post"
    assert params["batch_size"] == 512 and params["weight_decay"] == 1e-4 and params["drop_last"] is False
    assert params["out_dir"] is None and params["redo"] is False


@pytest.mark.parametrize("notebook", suite.NOTEBOOKS)
def test_papermill_reads_every_parameter_of_the_notebook(notebook, caplog):
    """papermill's own parser must see each parameter the suite reads (a line it cannot parse
    is only a warning, "Passed unknown parameter", when the runner passes that parameter)."""
    import papermill

    found = papermill.inspect_notebook(str(suite.NOTEBOOK_DIR / f"{notebook}.ipynb"))
    assert sorted(found) == sorted(suite.notebook_parameters(notebook))
    assert "Unable to parse" not in caplog.text


def test_the_one_cycle_notebook_holds_the_posts_schedule():
    p = suite.notebook_parameters("03_one_cycle")
    assert (p["epochs"], p["max_lr"], p["div"], p["final_div"], p["annihilate"]) == (95, 0.8, 10.0, 100.0, 0.1368)
    assert p["moms"] == [0.95, 0.85]


def test_the_smoke_profile_is_small_and_synthetic():
    s = suite.load_profile("smoke", "03_one_cycle")
    assert s["dataset"] == "synthetic" and s["depth"] == 8 and s["device"] == "cpu" and s["epochs"] == 4


def test_the_full_profile_keeps_the_posts_settings_and_adds_only_seeds_and_the_gpus_precision():
    for notebook in suite.NOTEBOOKS:
        settings = suite.load_profile("full", notebook)
        assert set(settings) <= {"profile", "seeds", "precision"}, settings
        assert settings["precision"] == "bf16"  # pinned: the keys do not depend on the rendering machine
        assert settings.get("seeds", [0]) in ([0], [0, 1, 2])
        assert suite.apply_profile(notebook, "full") == {**suite.notebook_parameters(notebook), **settings}
    for headline in ("03_one_cycle", "04_super_convergence", "05_momentum"):
        assert len(suite.load_profile("full", headline)["seeds"]) >= 3


def test_bad_names_and_profiles_are_named_in_the_error():
    with pytest.raises(ProfileError, match="'huge'"):
        suite.load_profile("huge", "03_one_cycle")
    with pytest.raises(ProfileError, match="'07_nothing'"):
        suite.load_profile("smoke", "07_nothing")
    with pytest.raises(ProfileError, match="'07_nothing'"):
        suite.notebook_parameters("07_nothing")


# --- crafted profiles -----------------------------------------------------------------------------------

def test_a_number_written_like_5e_4_is_a_float(monkeypatch, tmp_path):
    # YAML 1.1 reads 5e-4 (no dot) as a string
    write_profile(monkeypatch, tmp_path, "common:\n  weight_decay: 5e-4\n  epochs: 10\n")
    settings = suite.load_profile("smoke", "03_one_cycle")
    assert settings["weight_decay"] == 0.0005 and type(settings["weight_decay"]) is float
    assert settings["epochs"] == 10 and type(settings["epochs"]) is int


def test_an_integer_setting_may_be_written_as_a_float_or_string(monkeypatch, tmp_path):
    write_profile(monkeypatch, tmp_path, "03_one_cycle:\n  epochs: 10.0\n  max_lr: 1\n  depth: '20'\n")
    settings = suite.load_profile("smoke", "03_one_cycle")
    assert settings["epochs"] == 10 and type(settings["epochs"]) is int
    assert settings["max_lr"] == 1.0 and type(settings["max_lr"]) is float
    assert settings["depth"] == 20


@pytest.mark.parametrize("text, names", [
    ("03_one_cycle:\n  epochs: ten\n", ["smoke.yaml", "03_one_cycle.epochs", "'ten'"]),
    ("common:\n  epochs: 9.5\n", ["common.epochs", "an integer"]),
    ("common:\n  redo: 1\n", ["common.redo", "true or false"]),
    ("common:\n  weight_decay: .inf\n", ["common.weight_decay", "a number"]),
    ("common:\n  shortcut: 1\n", ["common.shortcut", "a string"]),
    ("common:\n  seeds: 0\n", ["common.seeds", "a list"]),
    ("common:\n  batch_size: true\n", ["common.batch_size", "a number"]),
])
def test_a_value_of_the_wrong_type_names_file_section_and_parameter(monkeypatch, tmp_path, text, names):
    write_profile(monkeypatch, tmp_path, text)
    with pytest.raises(ProfileError) as info:
        suite.load_profile("smoke", "03_one_cycle")
    for name in names:
        assert name in str(info.value), (name, str(info.value))


def test_a_yaml_syntax_error_names_the_file(monkeypatch, tmp_path):
    path = write_profile(monkeypatch, tmp_path, "common:\n  depth: [8\n  epochs: 2\n")
    with pytest.raises(ProfileError, match=f"{path}: not valid YAML"):
        suite.load_profile("smoke", "03_one_cycle")


def test_a_section_that_is_a_list_is_refused(monkeypatch, tmp_path):
    write_profile(monkeypatch, tmp_path, "03_one_cycle:\n  - epochs: 2\n")
    with pytest.raises(ProfileError, match="section '03_one_cycle' must map parameters to values, got list"):
        suite.load_profile("smoke", "03_one_cycle")


def test_a_file_that_is_a_list_is_refused(monkeypatch, tmp_path):
    write_profile(monkeypatch, tmp_path, "- common\n")
    with pytest.raises(ProfileError, match="smoke.yaml"):
        suite.load_profile("smoke", "03_one_cycle")


def test_an_unknown_parameter_is_refused(monkeypatch, tmp_path):
    write_profile(monkeypatch, tmp_path, "03_one_cycle:\n  learning_rate: 1.0\n")
    with pytest.raises(ProfileError, match=r"'03_one_cycle' sets 'learning_rate'.*notebook 03_one_cycle"):
        suite.load_profile("smoke", "03_one_cycle")
    # a parameter of another notebook is unknown here, but fine in that notebook's own section
    write_profile(monkeypatch, tmp_path, "common:\n  num_it: 20\n")
    with pytest.raises(ProfileError, match="'num_it'"):
        suite.load_profile("smoke", "03_one_cycle")
    write_profile(monkeypatch, tmp_path, "01_lr_finder:\n  num_it: 20\n")
    assert suite.load_profile("smoke", "03_one_cycle") == {"profile": "smoke"}


def test_an_unknown_section_is_refused(monkeypatch, tmp_path):
    write_profile(monkeypatch, tmp_path, "07_nothing:\n  epochs: 2\n")
    with pytest.raises(ProfileError, match=r"unknown section\(s\) \['07_nothing'\]"):
        suite.load_profile("smoke", "03_one_cycle")


def test_a_notebook_section_overrides_common(monkeypatch, tmp_path):
    write_profile(monkeypatch, tmp_path, "common:\n  depth: 20\n  epochs: 3\n03_one_cycle:\n  epochs: 7\n")
    assert suite.load_profile("smoke", "03_one_cycle") == {"depth": 20, "epochs": 7, "profile": "smoke"}
    write_profile(monkeypatch, tmp_path, "")  # an empty file: the notebook's own settings
    assert suite.load_profile("smoke", "03_one_cycle") == {"profile": "smoke"}


# --- start() and Experiment -------------------------------------------------------------------------

def namespace(notebook: str = "03_one_cycle", **changes) -> dict:
    """A notebook's globals after its parameters cell (plus what IPython adds)."""
    return {**suite.notebook_parameters(notebook), "In": [], "_hidden": 1, "get_ipython": print, **changes}


def test_start_applies_the_profile_and_the_results_root_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CLRLIB_PROFILE", "smoke")
    monkeypatch.setenv("CLRLIB_OUT", str(tmp_path))
    ns = namespace()
    exp = suite.start("03_one_cycle", ns)
    assert ns["profile"] == "smoke" and ns["depth"] == 8 and ns["epochs"] == 4 and ns["dataset"] == "synthetic"
    assert exp.profile == "smoke" and exp.out == tmp_path / "smoke" / "03_one_cycle"
    assert exp.data.synthetic and exp.model.depth == 8 and str(exp.lab.device) == "cpu"
    assert "In" not in exp.params and "_hidden" not in exp.params and "get_ipython" not in exp.params
    assert exp.lab.store.root == tmp_path / "smoke" / "runs"
    assert "profile smoke" in exp.describe() and "synthetic" in exp.describe()


def test_start_leaves_a_profile_that_papermill_injected_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("CLRLIB_PROFILE", "quick")
    monkeypatch.setenv("CLRLIB_OUT", str(tmp_path / "elsewhere"))
    params = suite.apply_profile("03_one_cycle", "smoke")
    ns = namespace(**{**params, "out_dir": str(tmp_path / "injected")})
    exp = suite.start("03_one_cycle", ns)
    assert exp.profile == "smoke" and exp.out == tmp_path / "injected" and ns["depth"] == 8


def test_start_with_a_bad_profile_in_the_environment_names_it(tmp_path, monkeypatch):
    monkeypatch.setenv("CLRLIB_PROFILE", "huge")
    with pytest.raises(ProfileError, match="'huge'"):
        suite.start("03_one_cycle", namespace())


def test_start_without_a_profile_runs_the_full_settings_on_a_gpu(monkeypatch):
    monkeypatch.delenv("CLRLIB_PROFILE", raising=False)
    monkeypatch.delenv("CLRLIB_OUT", raising=False)  # make test sets both for nbval
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)  # --profile auto: full on a GPU
    monkeypatch.setattr(suite, "_interactive_data_root", lambda params: None)
    seen = {}
    monkeypatch.setattr(suite, "Experiment", lambda notebook, params: seen.update(params) or "exp")
    assert suite.start("03_one_cycle", namespace()) == "exp"
    assert seen["profile"] == "full" and seen["depth"] == 56 and seen["out_dir"] is None


@pytest.fixture
def smoke_experiment(tmp_path):
    params = {**suite.apply_profile("03_one_cycle", "smoke"), "out_dir": str(tmp_path / "smoke" / "03_one_cycle"),
              "synthetic_train": 64, "synthetic_test": 32, "batch_size": 32}
    return suite.Experiment("03_one_cycle", params)


def test_experiment_records_provenance_and_labels_synthetic_data(smoke_experiment):
    exp = smoke_experiment
    info = json.loads((exp.out / "params.json").read_text())
    assert info["synthetic_data"] is True and info["data"] == "synthetic" and info["profile"] == "smoke"
    for key in ("commit", "date", "torch", "device_name", "parameters", "host", "data_fingerprint"):
        assert info[key], key
    assert info["parameters"]["depth"] == 8
    assert exp.data_label == "synthetic CIFAR-shaped data"


def test_record_keeps_one_row_per_experiment_and_metric(smoke_experiment):
    exp = smoke_experiment
    row = exp.record("1cycle", "final test accuracy (%)", [90.0, 92.0], post_value=93.5)
    assert row["experiment"] == "1cycle [synthetic data]"
    assert row["value"] == pytest.approx(91.0) and row["n_seeds"] == 2 and row["std"] == pytest.approx(math.sqrt(2))
    saved = pd.read_csv(exp.out / "summary_rows.csv")
    assert list(saved.columns) == suite.SUMMARY_COLUMNS and len(saved) == 1
    exp.record("1cycle", "final test accuracy (%)", 50.0)  # the same row again replaces it
    exp.record("1cycle", "epochs", 4)
    saved = pd.read_csv(exp.out / "summary_rows.csv")
    assert len(saved) == 2 and saved["value"].tolist() == [50.0, 4.0] and math.isnan(saved["std"][0])


def test_record_gives_the_confidence_interval_and_compare_a_verdict(smoke_experiment):
    exp = smoke_experiment
    row = exp.record("1cycle", "acc", [93.1, 93.5, 93.3])
    assert row["ci95"] == pytest.approx(4.303 * 0.2 / math.sqrt(3))
    same = exp.compare("cyclical", [93.5, 93.6, 93.4], "constant", [93.4, 93.3, 93.5], post_difference=0.14)
    assert same["verdict"] == "within noise" and same["test"].startswith("Welch")
    real = exp.compare("70 epochs", [93.0, 93.1, 92.9], "50 epochs", [92.3, 92.2, 92.4])
    assert real["verdict"] == "real at 95%" and real["difference"] == pytest.approx(0.7)
    single = exp.compare("fp32", [93.0], "bf16", [92.9])
    assert single["verdict"] == "one run each: no test"
    saved = pd.read_csv(exp.out / "comparison_rows.csv")
    assert list(saved.columns) == suite.COMPARISON_COLUMNS and len(saved) == 3


def test_save_figure_keeps_its_caption_for_the_gallery(smoke_experiment):
    import json
    import matplotlib.pyplot as plt
    exp = smoke_experiment
    fig, _ = plt.subplots()
    exp.save_figure(fig, "curve", "what to see in it")
    assert (exp.out / "curve.png").is_file() and (exp.out / "curve.svg").is_file()
    assert json.loads((exp.out / "figures.json").read_text()) == [{"name": "curve", "caption": "what to see in it"}]


def test_the_experiments_plan_carries_the_notebooks_settings_with_its_precision_resolved(smoke_experiment):
    exp = smoke_experiment
    plan = exp.plan()
    assert plan.notebook == "03_one_cycle" and plan.headline == ["1cycle, max LR 0.8, 4 epochs"]
    spec = plan.groups[plan.headline[0]][1]
    assert spec.model.depth == 8 and spec.batch_size == 32 and spec.data.synthetic and spec.seed == 1
    assert spec.weight_decay == 1e-4 and spec.drop_last is False
    assert {s.precision for s in plan.specs()} <= {"fp32", "bf16"}  # "auto" resolved on the Lab's device
    assert plan.groups["fp32 control"][0].precision == "fp32"


def test_the_compile_parameter_reaches_the_lab(tmp_path):
    params = {**suite.apply_profile("03_one_cycle", "smoke"), "out_dir": str(tmp_path / "nb"), "compile_model": False}
    assert suite.Experiment("03_one_cycle", params).lab.compile is False


def test_save_figure_labels_synthetic_data(smoke_experiment):
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    path = smoke_experiment.save_figure(fig, "curve", svg=False)
    assert path.is_file() and any("synthetic data" in t.get_text() for t in fig.texts)


def test_write_summary_gathers_the_notebooks_rows(tmp_path):
    for name, value in (("01_lr_finder", 8.0), ("03_one_cycle", 93.0)):
        (tmp_path / name).mkdir()
        pd.DataFrame([dict(experiment=name, metric="m", value=value, std=float("nan"), ci95=float("nan"),
                           n_seeds=1, post_value=None)]).to_csv(tmp_path / name / "summary_rows.csv", index=False)
    (tmp_path / "03_one_cycle" / "figures.json").write_text('[{"name": "losses", "caption": "what to see"}]')
    table = suite.write_summary(tmp_path)
    assert list(table["value"]) == [8.0, 93.0]
    md = (tmp_path / "summary.md").read_text()
    assert "| 03_one_cycle | m | 93 |  |  | 1 |  |" in md
    gallery = (tmp_path / "README.md").read_text()
    assert "| 03_one_cycle | m | 93 |" in gallery and "**losses**: what to see" in gallery
    assert "![losses](03_one_cycle/losses.png)" in gallery
    assert pd.read_csv(tmp_path / "summary.csv")["experiment"].tolist() == ["01_lr_finder", "03_one_cycle"]


def test_write_summary_of_nothing_is_an_empty_table(tmp_path):
    table = suite.write_summary(tmp_path)
    assert len(table) == 0 and list(table.columns) == suite.SUMMARY_COLUMNS
    assert (tmp_path / "summary.md").is_file()


def test_the_executor_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("CLRLIB_EXECUTOR", raising=False)
    assert suite.executor_from_environment() is None
    monkeypatch.setenv("CLRLIB_EXECUTOR", "cluster")
    with pytest.raises(ProfileError, match="'cluster'"):
        suite.executor_from_environment()
    pytest.importorskip("ray")
    monkeypatch.setenv("CLRLIB_EXECUTOR", "ray")
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    from clrlib.lab.ray_executor import RayExecutor
    executor = suite.executor_from_environment()  # connects only when it first runs something
    assert isinstance(executor, RayExecutor) and executor.address == "127.0.0.1:6379"

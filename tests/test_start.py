"""suite.start(): parameters a user passes win over a profile; a notebook opened by hand picks the
profile like ``--profile auto``, the data like ``make run``, and says what it will do."""
import warnings

import pytest
import torch

from clrlib import data as _data
from clrlib.lab import suite


def namespace(notebook="01_lr_finder", **changes):
    return {**suite.notebook_parameters(notebook), "In": [], **changes}


@pytest.fixture
def captured(monkeypatch, tmp_path):
    for name in ("CLRLIB_PROFILE", "CLRLIB_OUT", "CLRLIB_DATA"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(suite, "REPO_ROOT", tmp_path / "checkout")  # no ./data there
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    seen = {}
    monkeypatch.setattr(suite, "Experiment", lambda notebook, params: seen.update(params) or "exp")
    return seen


def test_a_parameter_papermill_injected_wins_over_the_profile(captured, monkeypatch):
    monkeypatch.setenv("CLRLIB_PROFILE", "smoke")
    ns = namespace(num_it=5)
    assert suite.start("01_lr_finder", ns) == "exp"
    assert captured["num_it"] == 5 and ns["num_it"] == 5
    assert captured["profile"] == "smoke" and captured["depth"] == 8  # the rest from the profile


def test_a_list_passed_with_no_profile_set_wins(captured, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the full profile, as on a GPU
    monkeypatch.setattr(suite, "_interactive_data_root", lambda params: None)
    ns = namespace("03_one_cycle", seeds=[7])
    suite.start("03_one_cycle", ns)
    assert captured["seeds"] == [7] and captured["profile"] == "full"


def test_a_value_equal_to_the_default_takes_the_profiles(captured, monkeypatch):
    monkeypatch.setenv("CLRLIB_PROFILE", "smoke")
    default = suite.notebook_parameters("01_lr_finder")["num_it"]
    suite.start("01_lr_finder", namespace(num_it=default))
    assert captured["num_it"] == suite.load_profile("smoke", "01_lr_finder").get("num_it", default)


def test_no_profile_on_a_cpu_picks_quick_and_prints_one_line(captured, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(suite, "_interactive_data_root", lambda params: None)  # the data is tested below
    suite.start("01_lr_finder", namespace())
    assert captured["profile"] == "quick"
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "profile quick" in out[0] and "device cpu" in out[0] and "rough" in out[0]


def test_no_profile_on_a_gpu_picks_full(captured, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(suite, "_interactive_data_root", lambda params: None)
    suite.start("03_one_cycle", namespace("03_one_cycle"))
    assert captured["profile"] == "full" and captured["depth"] == 56


def test_the_full_profile_on_a_cpu_warns_with_the_hours(captured, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("CLRLIB_PROFILE", "full")
    monkeypatch.setattr(suite, "_interactive_data_root", lambda params: None)
    with pytest.warns(UserWarning, match=r"full profile on a CPU.*hours"):
        suite.start("03_one_cycle", namespace("03_one_cycle"))


def test_the_checkouts_data_folder_is_found(captured, monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    root = tmp_path / "checkout" / "data"
    _data.write_cifar10_folder(root, _data.synthetic_cifar10(n_train=20, n_test=10))
    suite.start("01_lr_finder", namespace())
    assert captured["data_root"] == str(root)


def test_data_not_found_names_the_checkouts_folder(captured, monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(_data.DatasetNotFoundError, match="checkout's data folder.*make data"):
        suite.start("01_lr_finder", namespace())


def test_a_data_root_or_clrlib_data_is_left_alone(captured, monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(suite, "projected_seconds", lambda *a: 1.0)
    suite.start("01_lr_finder", namespace(data_root=str(tmp_path / "mine")))
    assert captured["data_root"] == str(tmp_path / "mine")


def test_a_cuda_device_asked_without_cuda_is_named(captured, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"device 'cuda'.*CUDA is not available.*available: cpu"):
        suite.start("01_lr_finder", namespace(device="cuda"))


def test_a_cuda_device_passed_with_a_profile_is_named_too(captured, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"device 'cuda'.*not available"):
        suite.start("01_lr_finder", namespace(profile="smoke", device="cuda"))

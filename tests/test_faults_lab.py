"""Faults and bad input in the lab's specs, profiles, store and doctor: clear errors, nothing lost."""
import json
import os
import stat

import pytest

from clrlib.lab import specs as _specs
from clrlib.lab.specs import FinderSpec, ScheduleSpec, SpecError, TrainSpec


# --- unreasonable sizes ------------------------------------------------------------------------------

def test_a_run_of_a_billion_epochs_is_refused_naming_the_value_and_the_override(monkeypatch):
    monkeypatch.delenv(_specs.ALLOW_HUGE_ENV, raising=False)
    with pytest.raises(SpecError, match=r"epochs=1,000,000,000.*more than 10,000,000.*CLRLIB_ALLOW_HUGE_RUNS=1"):
        TrainSpec(ScheduleSpec.make("constant", lr=0.1), epochs=10**9)
    with pytest.raises(SpecError, match=r"num_it=20,000,000"):
        FinderSpec(num_it=20_000_000)
    assert TrainSpec(ScheduleSpec.make("constant", lr=0.1), epochs=95).total_steps == 9310


def test_the_override_admits_a_huge_run_with_the_same_key(monkeypatch):
    monkeypatch.setenv(_specs.ALLOW_HUGE_ENV, "1")
    spec = TrainSpec(ScheduleSpec.make("constant", lr=0.1), epochs=10**9)
    assert "allow" not in json.dumps(spec.to_dict())


# --- profiles ----------------------------------------------------------------------------------------

def profile_file(tmp_path, monkeypatch, text, name="quick"):
    from clrlib.lab import suite
    folder = tmp_path / "profiles"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.yaml").write_text(text)
    monkeypatch.setattr(suite, "PROFILE_DIR", folder)
    return folder / f"{name}.yaml"


def test_a_key_given_twice_in_a_section_is_refused_naming_file_section_and_key(tmp_path, monkeypatch):
    from clrlib.lab import suite
    path = profile_file(tmp_path, monkeypatch, "03_one_cycle:\n  epochs: 4\n  seeds: [0]\n  epochs: 9\n")
    with pytest.raises(suite.ProfileError, match=rf"{path}.*section '03_one_cycle', 'epochs' is given twice "
                                                 r"\(lines 2 and 4\)"):
        suite.load_profile("quick", "03_one_cycle")


def test_a_section_given_twice_is_refused(tmp_path, monkeypatch):
    from clrlib.lab import suite
    profile_file(tmp_path, monkeypatch, "common:\n  depth: 8\ncommon:\n  depth: 20\n")
    with pytest.raises(suite.ProfileError, match=r"top level, 'common' is given twice"):
        suite.load_profile("quick", "03_one_cycle")


def test_an_empty_list_of_seeds_is_refused_naming_the_parameter(tmp_path, monkeypatch):
    from clrlib.lab import suite
    profile_file(tmp_path, monkeypatch, "03_one_cycle:\n  seeds: []\n")
    with pytest.raises(suite.ProfileError, match=r"03_one_cycle\.seeds must be a non-empty list"):
        suite.load_profile("quick", "03_one_cycle")

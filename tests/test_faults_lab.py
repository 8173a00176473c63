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

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


# --- the run store -----------------------------------------------------------------------------------

def stored(tmp_path, **store_args):
    import pandas as pd
    from clrlib.lab.specs import DataSpec
    from clrlib.lab.store import RunStore
    spec = TrainSpec(ScheduleSpec.make("constant", lr=0.1), 1, batch_size=256, precision="fp32",
                     data=DataSpec("synthetic", synthetic_train=512, fingerprint="abc"))
    store = RunStore(tmp_path / "runs", **store_args)
    store.put(spec, pd.DataFrame({"step": [0, 1], "loss": [2.3, 2.2]}), {"wall_seconds": 1.0})
    return store, spec


@pytest.mark.parametrize("edit, problem", [
    (lambda r: {**r, "rows": "abc"}, "'rows' is 'abc'"),
    (lambda r: {**r, "meta": []}, "'meta' is a JSON list"),
    (lambda r: [r], "a JSON list, not a record"),
])
def test_a_hand_edited_record_is_reported_naming_the_file(tmp_path, edit, problem):
    from clrlib.lab.store import StoreWarning
    store, spec = stored(tmp_path)
    record = store.paths(spec)[1]
    record.write_text(json.dumps(edit(json.loads(record.read_text()))))
    with pytest.warns(StoreWarning, match=rf"{record}.*{problem}"):
        assert store.get(spec) is None


def test_a_lock_held_too_long_names_the_lock_file_and_the_holders_pid(tmp_path):
    import fcntl
    import subprocess
    import sys
    from clrlib.lab.store import StoreLockTimeout
    store, spec = stored(tmp_path, lock_timeout=0.3)
    lock = store.paths(spec)[1].with_name(f".{store.paths(spec)[1].name}.lock")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(lock)!r}, os.O_RDWR)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX); os.ftruncate(fd, 0); os.write(fd, str(os.getpid()).encode())\n"
        "print('held', flush=True); time.sleep(30)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StoreLockTimeout, match=rf"{lock} is held by process {holder.pid} for more than 0.3 s"):
            store.get(spec)
    finally:
        holder.kill()
        holder.wait()
    assert store.get(spec) is not None
    assert lock.read_text().strip() == str(holder.pid)  # a writer's pid; the next put writes its own
    store.put(spec, store.get(spec).frame, {"wall_seconds": 1.0})
    assert lock.read_text().strip() == str(os.getpid())


def test_check_writable_names_a_read_only_folder(tmp_path):
    from clrlib.lab.store import RunStore, StoreNotWritable
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    folder = tmp_path / "runs"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(StoreNotWritable, match=rf"{folder} is not writable"):
            RunStore(folder).check_writable()
    finally:
        folder.chmod(0o755)
    RunStore(folder).check_writable()
    assert list(folder.iterdir()) == []


def test_check_writable_names_a_folder_that_is_a_file_below(tmp_path):
    from clrlib.lab.store import RunStore, StoreNotWritable
    (tmp_path / "file").write_text("")
    with pytest.raises(StoreNotWritable, match=r"file/runs is not writable"):
        RunStore(tmp_path / "file" / "runs").check_writable()


def test_a_killed_writers_temporary_is_removed_when_the_store_is_written(tmp_path):
    import time
    (tmp_path / "runs").mkdir()
    stale = tmp_path / "runs" / ".fit-0123.csv.abc.tmp"
    stale.write_text("half")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    store, spec = stored(tmp_path)
    assert not stale.exists() and store.get(spec) is not None


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664)])
def test_stored_files_follow_the_umask(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        store, spec = stored(tmp_path)
    finally:
        os.umask(previous)
    for path in store.paths(spec):
        assert stat.S_IMODE(path.stat().st_mode) == mode, path


# --- devices -----------------------------------------------------------------------------------------

def test_doctor_with_an_absent_cuda_device_says_so_and_what_is_here(monkeypatch):
    import torch
    from clrlib.lab.doctor import run_doctor
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    lines = []
    assert run_doctor(device="cuda", log=lines.append) == 2
    assert len(lines) == 1 and "device 'cuda'" in lines[0] and "CUDA is not available" in lines[0]
    assert "available: cpu" in lines[0]


def test_resolve_device_names_a_bad_name_and_an_absent_index(monkeypatch):
    import torch
    from clrlib.device import resolve_device
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"device 'gpu' is not a device name.*available: cpu"):
        resolve_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"device 'cuda:3'.*1 CUDA device"):
        resolve_device("cuda:3")

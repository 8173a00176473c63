"""The run store: keyed by spec, relocatable, atomic, and never serving a run that does not check out."""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import threading
import warnings

import numpy as np
import pandas as pd
import pytest

from clrlib.lab import store as store_module
from clrlib.lab.specs import DataSpec, FinderSpec, ModelSpec, ScheduleSpec, TrainSpec
from clrlib.lab.store import RunStore, StoreWarning

DATA = DataSpec("synthetic", synthetic_train=64, synthetic_test=32, fingerprint="00112233aabbccdd")
SPEC = TrainSpec(ScheduleSpec.make("one_cycle", max_lr=0.5), 2, batch_size=32, model=ModelSpec(8),
                 data=DATA, precision="fp32")  # 2 steps per epoch, 4 steps
FINDER = FinderSpec(batch_size=32, model=ModelSpec(8), data=DATA, precision="fp32", num_it=5)


def history(spec: TrainSpec = SPEC, rows: int | None = None, seconds: float = 0.5) -> pd.DataFrame:
    """A fit()-shaped history of ``rows`` steps (default: the whole run) with made-up numbers."""
    n = spec.total_steps if rows is None else rows
    spe = spec.steps_per_epoch
    step = np.arange(n)
    end = (step + 1) % spe == 0
    frame = pd.DataFrame({"step": step, "epoch": (step + 1) / spe, "lr": 0.1 + 0.01 * step, "momentum": 0.9,
                          "loss": 2.3 - 0.1 * step})
    for col, value in (("train_loss", 2.0), ("test_loss", 2.1), ("test_acc", 0.3), ("seconds", seconds)):
        frame[col] = np.where(end, value + 0.001 * step, np.nan)
    return frame


def curve(rows: int = 5) -> pd.DataFrame:
    return pd.DataFrame({"lr": np.geomspace(1e-3, 1.0, rows), "loss": np.linspace(2.3, 1.9, rows),
                         "raw_loss": np.linspace(2.4, 1.8, rows)})


def no_temporaries(root) -> bool:
    return not [p for p in os.listdir(root) if p.endswith(".tmp")]


def test_put_then_get_returns_the_same_frame_and_meta(tmp_path):
    store = RunStore(tmp_path / "runs")
    assert store.get(SPEC) is None and len(store) == 0
    frame = history()
    put = store.put(SPEC, frame, {"wall_seconds": 1.5, "stop_lr": float("inf"), "shape": (1, 2)})
    got = store.get(SPEC)
    pd.testing.assert_frame_equal(got.frame, frame)
    pd.testing.assert_frame_equal(put.frame, frame)
    assert got.meta == put.meta == {"wall_seconds": 1.5, "stop_lr": "inf", "shape": [1, 2]}
    assert got.spec == SPEC and len(store) == 1
    csv, record = store.paths(SPEC)
    assert csv.name == f"fit-{SPEC.key()}.csv" and record.name == f"fit-{SPEC.key()}.json"
    assert json.loads(record.read_text())["rows"] == 4
    assert no_temporaries(store.root)


def test_run_computes_once_and_redo_computes_again(tmp_path):
    store, calls = RunStore(tmp_path), []

    def compute(spec):
        calls.append(spec)
        return history(spec, seconds=len(calls)), {"n": len(calls)}

    assert store.run(SPEC, compute).meta == {"n": 1}
    assert store.run(SPEC, compute).meta == {"n": 1} and len(calls) == 1
    assert store.run(SPEC, compute, redo=True).meta == {"n": 2} and len(calls) == 2
    assert store.get(SPEC).meta == {"n": 2}


def test_a_moved_checkout_reuses_its_runs(tmp_path):
    RunStore(tmp_path / "a" / "results" / "runs").put(SPEC, history(), {"wall_seconds": 2.0})
    RunStore(tmp_path / "a" / "results" / "runs").put(FINDER, curve(), {"stop_lr": None})
    shutil.copytree(tmp_path / "a", tmp_path / "b" / "moved")
    shutil.rmtree(tmp_path / "a")
    moved = RunStore(tmp_path / "b" / "moved" / "results" / "runs")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pd.testing.assert_frame_equal(moved.get(SPEC).frame, history())
        pd.testing.assert_frame_equal(moved.get(FINDER).frame, curve())
    for record in moved.root.glob("*.json"):
        assert str(tmp_path) not in record.read_text()


def test_another_spec_is_not_served(tmp_path):
    store = RunStore(tmp_path)
    store.put(SPEC, history(), {})
    assert store.get(SPEC.replace(seed=1)) is None
    assert store.get(SPEC.replace(data={"fingerprint": "ffffffffffffffff"})) is None


def test_a_half_written_csv_is_rejected(tmp_path):
    store = RunStore(tmp_path)
    store.put(SPEC, history(), {})
    csv, _ = store.paths(SPEC)
    data = csv.read_bytes()
    csv.write_bytes(data[: len(data) // 2])
    with pytest.warns(StoreWarning, match="half-written or replaced"):
        assert store.get(SPEC) is None


def test_a_csv_replaced_by_another_runs_is_rejected(tmp_path):
    store = RunStore(tmp_path)
    other = SPEC.replace(seed=1)
    store.put(SPEC, history(), {})
    store.put(other, history(seconds=9.0), {})
    shutil.copyfile(store.paths(other)[0], store.paths(SPEC)[0])
    with pytest.warns(StoreWarning, match=f"fit-{SPEC.key()}.json"):
        assert store.get(SPEC) is None
    pd.testing.assert_frame_equal(store.get(other).frame, history(seconds=9.0))


def test_a_record_holding_another_spec_is_rejected(tmp_path):
    store = RunStore(tmp_path)
    store.put(SPEC, history(), {})
    _, record_path = store.paths(SPEC)
    record = json.loads(record_path.read_text())
    record["spec"]["seed"] = 7
    record_path.write_text(json.dumps(record))
    with pytest.warns(StoreWarning, match="other settings"):
        assert store.get(SPEC) is None


@pytest.mark.parametrize("text", ["{not json", "[1, 2, 3]", "null", '"a string"'])
def test_an_unreadable_record_is_rejected(tmp_path, text):
    store = RunStore(tmp_path)
    store.put(SPEC, history(), {})
    store.paths(SPEC)[1].write_text(text)
    with pytest.warns(StoreWarning):
        assert store.get(SPEC) is None


def test_a_missing_csv_is_rejected(tmp_path):
    store = RunStore(tmp_path)
    store.put(SPEC, history(), {})
    store.paths(SPEC)[0].unlink()
    with pytest.warns(StoreWarning, match="unreadable"):
        assert store.get(SPEC) is None


def test_a_record_whose_row_count_was_edited_is_rejected(tmp_path):
    store = RunStore(tmp_path)
    store.put(SPEC, history(), {})
    _, record_path = store.paths(SPEC)
    record = json.loads(record_path.read_text())
    record["rows"] = 3
    record_path.write_text(json.dumps(record))
    with pytest.warns(StoreWarning, match="3 rows"):
        assert store.get(SPEC) is None


def _failing_replace(fail_on: int):
    real, calls = os.replace, []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == fail_on:
            raise OSError("killed")
        return real(src, dst)
    return replace


@pytest.mark.parametrize("fail_on", [1, 2])  # 1: while the CSV is renamed into place, 2: the record
def test_a_killed_write_leaves_no_record(tmp_path, monkeypatch, fail_on):
    store = RunStore(tmp_path)
    monkeypatch.setattr(os, "replace", _failing_replace(fail_on))
    with pytest.raises(OSError, match="killed"):
        store.put(SPEC, history(), {})
    monkeypatch.undo()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert store.get(SPEC) is None
    assert not store.paths(SPEC)[1].exists() and len(store) == 0
    assert no_temporaries(tmp_path)


def test_a_killed_rewrite_never_pairs_the_old_record_with_the_new_csv(tmp_path, monkeypatch):
    store = RunStore(tmp_path)
    store.put(SPEC, history(seconds=1.0), {})
    monkeypatch.setattr(os, "replace", _failing_replace(2))  # the new CSV lands, its record does not
    with pytest.raises(OSError):
        store.put(SPEC, history(seconds=2.0), {})
    monkeypatch.undo()
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        got = store.get(SPEC)
    assert got is None or got.frame.equals(history(seconds=1.0))
    assert no_temporaries(tmp_path)


def test_put_refuses_a_history_shorter_than_its_schedule_unless_it_diverged(tmp_path):
    store = RunStore(tmp_path)
    with pytest.raises(ValueError, match="3 rows.*2 epochs of 2 steps are 4"):
        store.put(SPEC, history(rows=3), {})
    with pytest.raises(ValueError, match="5 rows"):
        store.put(SPEC, history(rows=5), {})
    assert store.get(SPEC) is None and len(store) == 0
    short = history(rows=3)
    pd.testing.assert_frame_equal(store.put(SPEC, short, {"diverged": True}).frame, short)
    pd.testing.assert_frame_equal(store.get(SPEC).frame, short)


def test_finder_curves_hold_at_most_num_it_points(tmp_path):
    store = RunStore(tmp_path)
    with pytest.raises(ValueError, match="6 points for a range test of 5 iterations"):
        store.put(FINDER, curve(6), {})
    with pytest.raises(ValueError, match="0 points"):
        store.put(FINDER, curve(0), {})
    store.put(FINDER, curve(3), {"stop_lr": 0.5})  # stopped early on a blow-up
    assert len(store.get(FINDER).frame) == 3 and store.get(FINDER).meta["stop_lr"] == 0.5


def test_a_store_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "runs").write_text("")
    with pytest.raises(NotADirectoryError, match="is a file"):
        RunStore(tmp_path / "runs")


# --- two writers and a reader at once --------------------------------------------------------------

ROUNDS = 40


def _writer(root: str, seconds: float) -> None:
    store = RunStore(root)
    for _ in range(ROUNDS):
        store.put(SPEC, history(seconds=seconds), {"writer": seconds})


def _reader(root: str, bad) -> None:
    store = RunStore(root)
    good = [history(seconds=s) for s in (1.0, 2.0)]
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        for _ in range(3 * ROUNDS):
            got = store.get(SPEC)
            if got is not None and not any(got.frame.equals(g) for g in good):
                bad.value += 1


def test_two_writers_and_a_reader_corrupt_nothing(tmp_path):
    """Both writers store the same spec (with different timings, as two real runs would)."""
    ctx = multiprocessing.get_context("fork")
    bad = ctx.Value("i", 0)
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), 1.0)),
             ctx.Process(target=_writer, args=(str(tmp_path), 2.0)),
             ctx.Process(target=_reader, args=(str(tmp_path), bad))]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert bad.value == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the store is left whole: one writer's CSV with its own record
        got = RunStore(tmp_path).get(SPEC)
    assert got is not None
    assert got.frame.equals(history(seconds=got.meta["writer"]))
    assert no_temporaries(tmp_path)


def test_a_second_writer_of_a_run_waits_for_the_first(tmp_path, monkeypatch):
    """Deterministic: the first writer stops between its CSV and its record; the second must not
    slip its CSV in between (the record left last would then describe another CSV)."""
    store = RunStore(tmp_path)
    real = store_module.atomic_write_text
    in_first, release = threading.Event(), threading.Event()

    def slow_record(path, text):
        if threading.current_thread().name == "first":
            in_first.set()
            release.wait(10)
        real(path, text)

    monkeypatch.setattr(store_module, "atomic_write_text", slow_record)
    first = threading.Thread(target=store.put, args=(SPEC, history(seconds=1.0), {"writer": 1.0}), name="first")
    second = threading.Thread(target=store.put, args=(SPEC, history(seconds=2.0), {"writer": 2.0}),
                              name="second")
    first.start()
    assert in_first.wait(10)
    second.start()
    second.join(0.3)  # without a lock the second writer is done by now
    release.set()
    first.join(10)
    second.join(10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = store.get(SPEC)
    assert got is not None and got.frame.equals(history(seconds=got.meta["writer"]))

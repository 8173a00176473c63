"""Lab: specs to histories, training only what the store lacks; execute and its errors."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from clrlib import finder as _finder
from clrlib.lab import runs
from clrlib.finder import FinderResult
from clrlib.lab.runs import Lab, RunFailed, SerialExecutor, execute
from clrlib.lab.specs import DataSpec, FinderSpec, ModelSpec, ScheduleSpec, SpecError, TrainSpec

DATA = DataSpec("synthetic", synthetic_train=64, synthetic_test=32)
SMALL = dict(batch_size=32, model=ModelSpec(8), data=DATA, precision="fp32")  # 2 steps per epoch


def train_spec(seed=0, max_lr=0.5, epochs=1, **changes) -> TrainSpec:
    return TrainSpec(ScheduleSpec.make("one_cycle", max_lr=max_lr), epochs, seed=seed, **{**SMALL, **changes})


def finder_spec(**changes) -> FinderSpec:
    return FinderSpec(**{**SMALL, "start_lr": 1e-3, "end_lr": 10.0, "num_it": 6, **changes})


class CountingExecutor:
    """Runs tasks one after another (in reverse, to show the order they finish in does not matter)."""

    def __init__(self, reverse: bool = False) -> None:
        self.ran: list = []
        self.reverse = reverse

    def run(self, task, specs, done) -> None:
        for spec in (list(specs)[::-1] if self.reverse else specs):
            self.ran.append(spec)
            done(spec, task(spec))


def fake_history(spec: TrainSpec) -> pd.DataFrame:
    """A fit()-shaped history whose loss says which spec made it."""
    n, spe = spec.total_steps, spec.steps_per_epoch
    step = np.arange(n)
    end = (step + 1) % spe == 0
    frame = pd.DataFrame({"step": step, "epoch": (step + 1) / spe, "lr": 0.1, "momentum": 0.9,
                          "loss": float(spec.seed) + spec.schedule.kwargs["max_lr"]})
    for col in ("train_loss", "test_loss", "test_acc", "seconds"):
        frame[col] = np.where(end, 0.5, np.nan)
    return frame


@pytest.fixture
def fake_training(monkeypatch):
    """Replace training by :func:`fake_history` (fast); returns the list of specs trained."""
    trained = []

    def fake_execute(spec, arrays, device, compile=None, progress=False, checkpoint=None, log=None):
        assert spec.data.fingerprint == arrays.fingerprint and spec.precision == "fp32"
        trained.append(spec)
        return fake_history(spec), {"wall_seconds": 0.0, "diverged": False}

    monkeypatch.setattr(runs, "execute", fake_execute)
    return trained


def test_fit_many_trains_only_the_missing_runs_in_input_order(tmp_path, fake_training):
    executor = CountingExecutor(reverse=True)
    lab = Lab(tmp_path, device="cpu", executor=executor)
    a, b, c = train_spec(0), train_spec(1), train_spec(2)
    first = lab.fit_many([a, b])
    assert [f["loss"].iloc[0] for f in first] == [0.5, 1.5]
    assert len(executor.ran) == 2
    # a and b are stored; c is new; b twice is trained (and returned) once per position
    got = lab.fit_many([c, b, a, b, c])
    assert [f["loss"].iloc[0] for f in got] == [2.5, 1.5, 0.5, 1.5, 2.5]
    assert [s.seed for s in executor.ran] == [1, 0, 2]
    assert len(lab.store) == 3 and len(fake_training) == 3


def test_a_new_lab_on_the_same_store_reads_back_and_redo_retrains(tmp_path, fake_training):
    Lab(tmp_path, device="cpu").fit_many([train_spec(0), train_spec(1)])
    executor = CountingExecutor()
    again = Lab(tmp_path, device="cpu", executor=executor).fit_many([train_spec(1), train_spec(0)])
    assert executor.ran == [] and [f["loss"].iloc[0] for f in again] == [1.5, 0.5]
    executor = CountingExecutor()
    Lab(tmp_path, device="cpu", redo=True, executor=executor).fit_many([train_spec(0), train_spec(0)])
    assert len(executor.ran) == 1 and len(fake_training) == 3


def test_a_different_setting_or_data_is_a_different_run(tmp_path, fake_training):
    lab = Lab(tmp_path, device="cpu")
    lab.fit_many([train_spec(0)])
    lab.fit_many([train_spec(0, max_lr=0.4)])
    other_data = train_spec(0, data=DataSpec("synthetic", synthetic_train=96, synthetic_test=32))
    lab.fit_many([other_data])
    assert len(fake_training) == 3
    fingerprints = {s.data.fingerprint for s in fake_training}
    assert len(fingerprints) == 2 and "" not in fingerprints
    assert lab.bind(other_data).key() != lab.bind(train_spec(0)).key()


def test_bind_fills_in_the_fingerprint_and_the_precision(tmp_path):
    lab = Lab(tmp_path, device="cpu")
    spec = lab.bind(train_spec(precision="auto"))
    assert spec.precision in ("bf16", "fp32") and spec.data.fingerprint == lab.arrays(DATA).fingerprint
    assert lab.bind(train_spec()).precision == "fp32"
    assert lab.arrays(DATA) is lab.arrays(DataSpec("synthetic", synthetic_train=64, synthetic_test=32,
                                                   train_subset=32))  # loaded once
    spec.key()  # bound: has a key


def test_fit_many_and_lr_find_many_refuse_the_other_kind(tmp_path):
    lab = Lab(tmp_path, device="cpu")
    with pytest.raises(TypeError, match="TrainSpec"):
        lab.fit_many([finder_spec()])
    with pytest.raises(TypeError, match="FinderSpec"):
        lab.lr_find_many([train_spec()])


def test_the_progress_line_names_the_run(tmp_path, fake_training):
    lines = []
    lab = Lab(tmp_path, device="cpu", log=lines.append)
    lab.fit_many([train_spec(0), train_spec(1)])
    assert len(lines) == 2 and lines[0].startswith("[1/2 runs] fit-") and lines[1].startswith("[2/2 runs]")
    assert "50.00%" in lines[0]


# --- real (tiny) runs ------------------------------------------------------------------------------

def test_a_real_fit_is_stored_with_its_provenance_and_read_back(tmp_path):
    lab = Lab(tmp_path, device="cpu")
    [history] = lab.fit_many([train_spec(0)])
    assert len(history) == 2 and history["test_acc"].notna().sum() == 1
    stored = lab.store.get(lab.bind(train_spec(0)))
    pd.testing.assert_frame_equal(stored.frame, history)
    meta = stored.meta
    for key in ("commit", "date", "device_name", "torch", "wall_seconds"):
        assert meta[key] not in (None, ""), key
    assert meta["device"] == "cpu" and meta["diverged"] is False and meta["fit"]["precision"] == "fp32"
    # who made it and what actually ran: the executor, host and process; fit()'s record, whole
    import os
    import platform
    assert meta["executor"] == "serial" and meta["pid"] == meta["driver_pid"] == os.getpid()
    assert meta["host"] == meta["driver_host"] == platform.node()
    assert {"compile_asked", "compile", "cudagraph_skips", "graphs_compiled", "channels_last"} <= set(meta["fit"])
    assert len(meta["epoch_seconds"]) == 1 and meta["seconds_per_epoch"] == pytest.approx(meta["epoch_seconds"][0])
    executor = CountingExecutor()
    [again] = Lab(tmp_path, device="cpu", executor=executor).fit_many([train_spec(0)])
    assert executor.ran == []
    pd.testing.assert_frame_equal(again, history)


def test_lr_find_many_round_trips_through_the_store(tmp_path, monkeypatch):
    made = []
    real_lr_find = _finder.lr_find

    def keep(*args, **kwargs):  # the range test's own result, before it is stored
        made.append(real_lr_find(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(_finder, "lr_find", keep)
    lab = Lab(tmp_path, device="cpu")
    [first] = lab.lr_find_many([finder_spec()])
    [in_memory] = made
    executor = CountingExecutor()
    [again] = Lab(tmp_path, device="cpu", executor=executor).lr_find_many([finder_spec()])
    assert executor.ran == []
    for result in (first, again):
        assert result.lrs == in_memory.lrs and result.losses == in_memory.losses
        assert result.raw_losses == in_memory.raw_losses
        assert result.stop_lr == in_memory.stop_lr and result.settings == in_memory.settings
    assert len(again) == 6 and again.settings["num_it"] == 6


def test_a_stopped_range_test_keeps_its_stop_lr(tmp_path, monkeypatch):
    def fake_lr_find(model, loss_fn, loader, opt, **kwargs):
        return FinderResult(lrs=[0.01, 0.1], losses=[2.3, 2.2], raw_losses=[2.3, 2.1], stop_lr=1.0,
                            settings={"num_it": kwargs["num_it"]})

    monkeypatch.setattr(_finder, "lr_find", fake_lr_find)
    [result] = Lab(tmp_path, device="cpu").lr_find_many([finder_spec()])
    assert result.stop_lr == 1.0 and result.stopped and result.blowup_lr == 1.0
    [again] = Lab(tmp_path, device="cpu").lr_find_many([finder_spec()])
    assert again == result


# --- failures --------------------------------------------------------------------------------------

def test_a_failing_run_raises_run_failed_naming_its_spec(tmp_path, monkeypatch):
    from clrlib import train as _train

    def broken_fit(*args, **kwargs):
        raise FloatingPointError("loss is nan")

    monkeypatch.setattr(_train, "fit", broken_fit)
    lab = Lab(tmp_path, device="cpu")
    spec = lab.bind(train_spec(3))
    with pytest.raises(RunFailed) as info:
        execute(spec, lab.arrays(DATA), "cpu")
    message = str(info.value)
    assert f"fit-{spec.key()}" in message and "FloatingPointError: loss is nan" in message
    assert "'seed': 3" in message
    with pytest.raises(RunFailed, match=spec.key()):
        lab.fit_many([train_spec(3)])
    assert len(lab.store) == 0


def test_a_run_whose_data_does_not_match_its_spec_names_the_spec(tmp_path):
    lab = Lab(tmp_path, device="cpu")
    spec = lab.bind(train_spec(0))
    other = lab.arrays(DataSpec("synthetic", synthetic_train=128, synthetic_test=32))
    with pytest.raises(RunFailed) as info:
        execute(spec, other, "cpu")
    assert f"fit-{spec.key()}" in str(info.value) and "batches per epoch" in str(info.value)


def test_a_failing_unbound_spec_still_raises_run_failed(tmp_path, monkeypatch):
    from clrlib import train as _train
    monkeypatch.setattr(_train, "fit", lambda *a, **k: 1 / 0)
    with pytest.raises(RunFailed, match="ZeroDivisionError") as info:
        execute(train_spec(0, precision="auto"), Lab(tmp_path, device="cpu").arrays(DATA), "cpu")
    assert "'seed': 0" in str(info.value)


def test_keyboard_interrupt_is_not_wrapped(tmp_path, monkeypatch):
    from clrlib import train as _train

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(_train, "fit", interrupted)
    lab = Lab(tmp_path, device="cpu")
    with pytest.raises(KeyboardInterrupt):
        lab.fit_many([train_spec(0)])


def test_serial_executor_reports_each_result_as_it_finishes():
    seen = []
    SerialExecutor().run(lambda s: s * 2, [1, 2, 3], lambda s, r: seen.append((s, r)))
    assert seen == [(1, 2), (2, 4), (3, 6)]


def test_serial_executor_keeps_going_after_a_failure_and_reports_it_at_the_end():
    seen, failed = [], []

    def task(x):
        if x == 2:
            raise ValueError("two")
        return x

    with pytest.raises(RunFailed) as info:
        SerialExecutor().run(task, [1, 2, 3, 4], lambda s, r: seen.append(s), admit=lambda s: s != 4,
                             failed=lambda s, e: failed.append((s, str(e))))
    assert seen == [1, 3] and failed == [(2, "two")]  # 4 not admitted: not started
    assert str(info.value).startswith("1 of 4 runs failed (1 try each)") and "run 2 failed (ValueError: two)" in str(info.value)
    assert [(s, type(e).__name__) for s, e in info.value.failures] == [(2, "ValueError")]


def test_make_reports_made_failed_and_not_started(tmp_path, fake_training, monkeypatch):
    lab = Lab(tmp_path, device="cpu")
    real = runs.execute

    def failing(spec, *args, **kwargs):
        if spec.seed == 1:
            raise RunFailed(f"run {spec.kind}-{spec.key()} failed (ValueError: no); spec: {spec.to_dict()}")
        return real(spec, *args, **kwargs)

    monkeypatch.setattr(runs, "execute", failing)
    made = lab.make([train_spec(0), train_spec(1), train_spec(2)], admit=lambda s: s.seed != 2)
    assert [s.seed for s in made.made] == [0] and [s.seed for s, _ in made.failed] == [1]
    assert [s.seed for s in made.not_started] == [2] and made.runs[made.bound[2]] is None
    assert isinstance(made.error, RunFailed) and len(lab.store) == 1


def test_an_unbound_spec_has_no_key():
    with pytest.raises(SpecError):
        train_spec(precision="auto").key()

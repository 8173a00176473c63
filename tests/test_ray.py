"""RayExecutor on a local two-CPU Ray cluster: the same histories as the serial executor, failed
runs reported with their specs while the others are stored, an interrupted sweep resumed, and
``python -m clrlib run --executor ray`` storing runs made by Ray worker processes.

One cluster for the whole module (started with :func:`init_ray`, whose start-up timeouts allow
a busy two-core machine), shut down at its end."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ray = pytest.importorskip("ray")

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from clrlib.lab import cli  # noqa: E402
from clrlib.lab.ray_executor import STARTUP_ENV, RayExecutor, init_ray  # noqa: E402
from clrlib.lab.runs import Lab, RunFailed  # noqa: E402
from clrlib.lab.specs import DataSpec, ModelSpec, ScheduleSpec, TrainSpec  # noqa: E402

DATA = DataSpec("synthetic", synthetic_train=128, synthetic_test=64)


def smoke(seed: int = 0, schedule: ScheduleSpec | None = None) -> TrainSpec:
    return TrainSpec(schedule or ScheduleSpec.make("one_cycle", max_lr=0.5), epochs=1, batch_size=32,
                     model=ModelSpec(8), data=DATA, seed=seed, precision="fp32")


# Passes the spec's checks (ScheduleSpec() skips make()'s trial call) but fails in execute:
# one_cycle needs max_lr.
BROKEN = smoke(seed=7, schedule=ScheduleSpec("one_cycle", ()))


@pytest.fixture(scope="module")
def cluster():
    if ray.is_initialized():  # another module's cluster: not this one's to reuse
        ray.shutdown()
    init_ray(num_cpus=2, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_importing_clrlib_does_not_import_ray():
    code = "import sys, clrlib, clrlib.lab.runs, clrlib.lab.suite; assert 'ray' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_ray_gives_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'clrlib\[ray\]'"):
        RayExecutor()


def test_ray_gives_the_serial_histories(cluster, tmp_path):
    torch.set_num_threads(1)  # the runs on Ray use one thread each (num_cpus_per_run=1)
    specs = [smoke(seed) for seed in range(3)]
    serial = Lab(tmp_path / "serial", device="cpu").fit_many(specs)
    lines = []
    on_ray = Lab(tmp_path / "ray", device="cpu", executor=RayExecutor(log=lines.append)).fit_many(specs)
    assert len(lines) == 3 and lines[-1].startswith("ray: 3/3 runs done, 0 in flight, 0 waiting")
    for a, b in zip(serial, on_ray):
        # every column but the wall-clock seconds, exactly (same threads, same seed, same data)
        pd.testing.assert_frame_equal(a.drop(columns="seconds"), b.drop(columns="seconds"), check_exact=True)
    assert not serial[0]["loss"].equals(serial[1]["loss"])  # the seeds do differ


def test_a_failing_run_is_reported_with_its_spec_and_the_others_are_stored(cluster, tmp_path):
    lines = []
    lab = Lab(tmp_path, device="cpu", executor=RayExecutor(max_retries=1, log=lines.append))
    specs = [smoke(0), BROKEN, smoke(1)]
    with pytest.raises(RunFailed) as info:
        lab.runs(specs)
    broken = lab.bind(BROKEN)
    message = str(info.value)
    assert message.startswith("1 of 3 runs failed (2 tries each); the other 2 finished")
    assert f"fit-{broken.key()}" in message and "TypeError" in message and "max_lr" in message
    assert [spec for spec, _ in info.value.failures] == [broken]
    assert len(lab.store) == 2 and lab.store.get(broken) is None
    assert [line for line in lines if "trying it again" in line] == [
        f"ray: run fit-{broken.key()} failed (TypeError: one_cycle() missing 1 required positional "
        "argument: 'max_lr'); trying it again"]


def test_an_interrupted_sweep_resumes_from_the_store(cluster, tmp_path):
    specs = [smoke(seed) for seed in range(4)]
    stored = []

    def interrupt_after_two(line):
        stored.append(line)
        if len(stored) == 2:
            raise KeyboardInterrupt  # as if Ctrl-C came after the second run was stored

    executor = RayExecutor(max_in_flight=2)
    with pytest.raises(KeyboardInterrupt):
        Lab(tmp_path, device="cpu", executor=executor, log=interrupt_after_two).runs(specs)
    assert len(Lab(tmp_path, device="cpu").store) == 2

    made = []
    lab = Lab(tmp_path, device="cpu", executor=executor, log=made.append)
    runs = lab.runs(specs)
    assert len(made) == 2 and len(lab.store) == 4  # only the two missing runs were made
    assert [run.spec for run in runs] == [lab.bind(s) for s in specs]


def test_other_tasks_are_shipped_whole(cluster):
    results = {}

    def square(x):  # a local function: cloudpickle sends it by value
        if x == 3:
            raise ValueError("three")
        if x == 4:
            os._exit(1)  # the worker dies
        return x * x

    with pytest.raises(RunFailed) as info:
        RayExecutor(max_retries=0).run(square, [1, 2, 3, 4], results.__setitem__)
    assert results == {1: 1, 2: 4}
    assert str(info.value).startswith("2 of 4 runs failed (1 try each); the other 2 finished")
    assert "run 3 failed (ValueError: three)" in str(info.value)
    assert sorted((x, type(e).__name__) for x, e in info.value.failures) == [
        (3, "ValueError"), (4, "WorkerCrashedError")]


def test_the_startup_timeouts_are_raised_for_a_busy_machine(cluster):
    assert all(os.environ.get(name) for name in STARTUP_ENV)
    assert int(os.environ["RAY_raylet_start_wait_time_s"]) >= 60


def test_the_runner_trains_a_notebooks_plan_on_ray_workers(cluster, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CLRLIB_EXECUTOR", "local")  # restored after the test (the runner sets both)
    monkeypatch.setenv("RAY_ADDRESS", "")
    code = cli.main(["run", "01", "--profile", "smoke", "--executor", "ray", "--train-only", "--out", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert ray.is_initialized()  # the module's cluster: not shut down by the command that joined it
    records = [json.loads(p.read_text()) for p in (tmp_path / "smoke" / "runs").glob("*.json")]
    assert len(records) == 2  # 01's range tests at two initialisations
    for record in records:
        meta = record["meta"]
        assert meta["executor"] == "ray" and meta["pid"] != os.getpid() and meta["driver_pid"] == os.getpid()
        assert meta["host"] and meta["stop_lr"] and meta["wall_seconds"] > 0

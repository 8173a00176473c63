"""fit's compile fallback and its record of what ran (issue 21), emulated on the CPU.

A compile that raises, a compiled call that raises, and CUDA graphs that inductor skipped
each end the compiled path: the run goes on eagerly with a warning naming the cause, and
``history.attrs["fit"]`` says so. Also: the record's fields, true fp32 (TF32 off inside the
run, restored after) and cuDNN's autotuner flag.
"""
from __future__ import annotations

import dataclasses
import math
import types

import pytest
import torch
import torch.nn as nn

from clrlib import train as T
from clrlib.data import CifarLoader, synthetic_cifar10
from clrlib.device import resolve_policy
from clrlib.models import resnet_cifar

DATA = synthetic_cifar10(64, 32, seed=0)
RECORD_FIELDS = {"device", "precision", "channels_last", "cudnn_benchmark", "tf32_matmul", "tf32_cudnn",
                 "compile_asked", "compile", "compile_fallback", "cudagraph_skips", "graphs_compiled",
                 "cold_compile_seconds", "seconds_per_epoch"}


@pytest.fixture(autouse=True)
def _fresh_fallbacks(monkeypatch):
    """Each test starts with no remembered fallback, and leaves none behind for other modules."""
    monkeypatch.setattr(T, "_FALLBACKS", {})


def _run(compile, model=None, epochs=1, **kwargs):
    x, y, xt, yt = DATA
    train = CifarLoader(x, y, batch_size=16, device="cpu", seed=0)
    test = CifarLoader(xt, yt, batch_size=16, train=False, device="cpu")
    T.seed_everything(0)
    model = model if model is not None else resnet_cifar(8)
    return T.fit(model, train, epochs, test_loader=test, device="cpu", precision="fp32", compile=compile,
                 lr=0.05, progress=False, **kwargs)


class _Calls:
    """A stand-in for a compiled function: runs ``fn``, after ``before(call number)``."""

    def __init__(self, fn, before=None):
        self.fn, self.before, self.calls = fn, before, 0

    def __call__(self, *args):
        self.calls += 1
        if self.before is not None:
            self.before(self.calls)
        return self.fn(*args)


def _fake_steps(train_before=None, eval_before=None, cudagraphs=False):
    return T.CompiledSteps(train=_Calls(T._train_forward, train_before), evaluate=_Calls(T._eval_forward, eval_before),
                           mode="reduce-overhead" if cudagraphs else "default", cudagraphs=cudagraphs)


def test_a_compile_that_raises_falls_back_to_eager(monkeypatch):
    made = []

    def broken(*args):
        made.append(1)
        raise RuntimeError("inductor: no C compiler found")

    monkeypatch.setattr(T, "compiled_steps", broken)
    with pytest.warns(RuntimeWarning, match="training eagerly: compiling raised RuntimeError: inductor: no C"):
        history = _run("default")
    record = history.attrs["fit"]
    assert record["compile_asked"] == "default" and record["compile"] is False
    assert "no C compiler" in record["compile_fallback"]
    assert history["loss"].tolist() == _run(False)["loss"].tolist()  # the eager run, exactly
    # remembered: the next run of this architecture is eager at once, without compiling again
    with pytest.warns(RuntimeWarning, match="earlier run"):
        again = _run("default")
    assert len(made) == 1 and again.attrs["fit"]["compile"] is False
    assert "no C compiler" in again.attrs["fit"]["compile_fallback"]


def test_a_first_compiled_call_that_raises_falls_back_to_eager(monkeypatch):
    def fail_first(call):
        if call == 1:
            raise RuntimeError("BackendCompilerFailed: a lowering failed")

    fake = _fake_steps(train_before=fail_first)
    monkeypatch.setattr(T, "compiled_steps", lambda *args: fake)
    with pytest.warns(RuntimeWarning, match="a compiled training step raised RuntimeError: BackendCompilerFailed"):
        history = _run("default", epochs=2)
    assert fake.train.calls == 1 and fake.evaluate.calls == 0  # eager from the failed step on
    record = history.attrs["fit"]
    assert record["compile"] is False and "lowering failed" in record["compile_fallback"]
    eager = _run(False, epochs=2)
    assert history["loss"].tolist() == eager["loss"].tolist()  # the failed step was redone eagerly
    assert T.epoch_table(history)["test_loss"].tolist() == T.epoch_table(eager)["test_loss"].tolist()


def test_a_compiled_evaluation_that_raises_falls_back_to_eager(monkeypatch):
    def fail(call):
        raise RuntimeError("eval graph broke")

    fake = _fake_steps(eval_before=fail)
    monkeypatch.setattr(T, "compiled_steps", lambda *args: fake)
    with pytest.warns(RuntimeWarning, match="a compiled evaluation raised RuntimeError: eval graph broke"):
        history = _run("default", epochs=2)
    assert fake.evaluate.calls == 1 and fake.train.calls == 4  # epoch 1 compiled, epoch 2 eager
    assert history.attrs["fit"]["compile"] is False
    assert T.epoch_table(history)["test_loss"].notna().all()


def test_cudagraph_skips_fall_back_to_eager(monkeypatch):
    from torch._dynamo.utils import counters

    def skip(call):  # as inductor does when it cannot graph a compiled function
        if call == 1:
            counters["inductor"]["cudagraph_skips"] += 1

    fake = _fake_steps(train_before=skip, cudagraphs=True)
    monkeypatch.setattr(T, "compiled_steps", lambda *args: fake)
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: None)
    with pytest.warns(RuntimeWarning, match="CUDA graphs were skipped 1 time"):
        history = _run("reduce-overhead")
    record = history.attrs["fit"]
    assert fake.train.calls == 1  # the skipped step's result is kept; the rest is eager
    assert record["compile_asked"] == "reduce-overhead" and record["compile"] is False
    assert record["cudagraph_skips"] == 1 and "cudagraph_skips" in record["compile_fallback"]
    assert history["loss"].notna().all()


def test_no_fallback_on_the_cpu_for_skips_of_a_mode_without_graphs(monkeypatch):
    from torch._dynamo.utils import counters

    def skip(call):
        counters["inductor"]["cudagraph_skips"] += 1

    fake = _fake_steps(train_before=skip)
    monkeypatch.setattr(T, "compiled_steps", lambda *args: fake)
    history = _run("default")
    assert history.attrs["fit"]["compile"] == "default" and history.attrs["fit"]["compile_fallback"] is None
    assert history.attrs["fit"]["cudagraph_skips"] == fake.train.calls == 4


def test_cold_compile_seconds_is_the_compiling_calls_time_less_a_normal_call(monkeypatch):
    """On a fake clock: the first train call compiles a graph and takes 5 s, the others 0.25 s;
    the first eval call compiles one and takes 2 s, the others 0.5 s."""
    from torch._dynamo.utils import counters
    clock = [0.0]
    durations = {"train": (5.0, 0.25), "eval": (2.0, 0.5)}

    def timed(kind):
        def before(call):
            cold, warm = durations[kind]
            if call == 1:
                counters["stats"]["unique_graphs"] += 1
            clock[0] += cold if call == 1 else warm
        return before

    fake = _fake_steps(train_before=timed("train"), eval_before=timed("eval"))
    monkeypatch.setattr(T, "compiled_steps", lambda *args: fake)
    monkeypatch.setattr(T, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    record = _run("default", epochs=2).attrs["fit"]
    assert record["graphs_compiled"] == 2
    assert record["cold_compile_seconds"] == pytest.approx((5.0 - 0.25) + (2.0 - 0.5))
    # the epochs' seconds: 4 train calls each (epoch 1: 5 + 3 * 0.25; epoch 2: 4 * 0.25)
    assert record["seconds_per_epoch"] == pytest.approx((5.75 + 1.0) / 2)


def test_the_record_of_an_eager_run():
    history = _run(False, epochs=2)
    record = history.attrs["fit"]
    assert set(record) == RECORD_FIELDS
    assert record["device"] == "cpu" and record["precision"] == "fp32" and record["channels_last"] is True
    assert record["compile_asked"] is False and record["compile"] is False and record["compile_fallback"] is None
    assert record["cudagraph_skips"] == 0 and record["graphs_compiled"] == 0
    assert record["cold_compile_seconds"] is None
    assert record["cudnn_benchmark"] is False  # a CPU run
    assert record["tf32_matmul"] is False and record["tf32_cudnn"] is False  # fp32 is true fp32
    assert record["seconds_per_epoch"] == pytest.approx(T.epoch_table(history)["seconds"].mean())


class _FlagSpy(nn.Module):
    """Records the backend flags in effect at each forward pass."""

    def __init__(self):
        super().__init__()
        self.lin, self.seen = nn.Linear(3 * 32 * 32, 10), []

    def forward(self, x):
        self.seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
                          torch.backends.cudnn.benchmark))
        return self.lin(x.flatten(1))


@pytest.fixture
def tf32_on():
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = False
    yield
    (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark) = saved


def test_fp32_runs_without_tf32_and_restores_it(tf32_on):
    spy = _FlagSpy()
    history = _run(False, model=spy)
    assert spy.seen and set(spy.seen) == {(False, False, False)}  # training steps and evaluation alike
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32  # restored
    assert history.attrs["fit"]["tf32_matmul"] is False and history.attrs["fit"]["tf32_cudnn"] is False
    spy.seen.clear()
    x, y, _, _ = DATA
    bf16 = T.fit(spy, CifarLoader(x, y, batch_size=32, device="cpu"), 1, device="cpu", precision="bf16",
                 progress=False)
    assert set(spy.seen) == {(True, True, False)}  # bf16: TF32 left as it was
    assert bf16.attrs["fit"]["tf32_matmul"] is True


def test_the_policy_sets_cudnn_benchmark_for_the_run(tf32_on):
    """What fit does on CUDA (policy.cudnn_benchmark True), with the flag checked from inside."""
    spy = _FlagSpy()
    policy = dataclasses.replace(resolve_policy("cpu", "fp32", model=spy), cudnn_benchmark=True)
    assert resolve_policy("cuda", "fp32").cudnn_benchmark
    x, y, _, _ = DATA
    history = T.fit(spy, CifarLoader(x, y, batch_size=32, device="cpu"), 1, policy=policy, progress=False)
    assert set(spy.seen) == {(False, False, True)}
    assert history.attrs["fit"]["cudnn_benchmark"] is True and torch.backends.cudnn.benchmark is False
    with pytest.raises(ValueError, match="policy") as info:
        T.fit(spy, CifarLoader(x, y, batch_size=32, device="cpu"), 1, policy=policy, precision="bf16")
    assert "'bf16'" in str(info.value)
    assert not math.isnan(T.evaluate(spy, list(CifarLoader(x, y, batch_size=32, device="cpu")), policy=policy)[0])

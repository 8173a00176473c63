"""Tests of clrlib.train.fit / evaluate on a small synthetic CIFAR-shaped problem (CPU)."""
from __future__ import annotations

import math
from functools import partial

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from clrlib.data import CifarLoader, synthetic_cifar10
from clrlib.models import resnet_cifar
from clrlib.schedules import one_cycle
from clrlib.train import EPOCH_COLUMNS, STEP_COLUMNS, epoch_table, evaluate, fit, seed_everything

EPOCHS = 12
BATCH = 64


@pytest.fixture(scope="module")
def loaders():
    x, y, xt, yt = synthetic_cifar10(512, 128, seed=0)
    train = CifarLoader(x, y, batch_size=BATCH, device="cpu", seed=0)
    test = CifarLoader(xt, yt, batch_size=128, train=False, device="cpu")
    return train, test


@pytest.fixture(scope="module")
def one_cycle_run(loaders):
    train, test = loaders
    steps = EPOCHS * len(train)
    fn = partial(one_cycle, total_steps=steps, max_lr=0.4, annihilate=0.15)
    seed_everything(0)
    model = resnet_cifar(8)
    history = fit(model, train, EPOCHS, fn, test_loader=test, device="cpu", progress=False)
    return history, fn, model


def test_history_layout(one_cycle_run, loaders):
    history, _, _ = one_cycle_run
    per_epoch = len(loaders[0])
    assert per_epoch == 512 // BATCH
    n = EPOCHS * per_epoch
    assert list(history.columns) == list(STEP_COLUMNS + EPOCH_COLUMNS)
    assert len(history) == n
    assert history["step"].tolist() == list(range(n))
    assert history["epoch"].tolist() == pytest.approx([(s + 1) / per_epoch for s in range(n)])
    # the epoch columns are filled on the last step of each epoch only
    filled = history["seconds"].notna()
    assert filled.sum() == EPOCHS
    assert history.index[filled].tolist() == [per_epoch * e - 1 for e in range(1, EPOCHS + 1)]


def test_logged_lr_and_momentum_are_the_schedule(one_cycle_run):
    history, fn, _ = one_cycle_run
    want = [fn(step) for step in history["step"]]
    assert history["lr"].tolist() == [lr for lr, _ in want]
    assert history["momentum"].tolist() == [m for _, m in want]


def test_loss_drops_and_accuracy_beats_chance(one_cycle_run):
    history, _, _ = one_cycle_run
    losses = history["loss"]
    assert losses.notna().all() and (losses > 0).all()
    first, last = losses.iloc[:20].mean(), losses.iloc[-20:].mean()
    assert first > 1.0  # starts near log(10) = 2.3
    assert last < 0.3 * first
    table = epoch_table(history)
    assert table["test_acc"].iloc[-1] >= 0.5  # chance is 0.1
    assert table["test_loss"].iloc[-1] < table["test_loss"].iloc[0]


def test_epoch_table(one_cycle_run):
    history, _, _ = one_cycle_run
    table = epoch_table(history)
    assert table.index.tolist() == list(range(1, EPOCHS + 1))
    for col in ("train_loss", "test_loss", "test_acc", "seconds"):
        assert col in table.columns
        assert table[col].notna().all()
    assert (table["seconds"] > 0).all()
    assert table["test_acc"].between(0, 1).all()
    # train_loss is the mean of the epoch's step losses
    per_epoch = len(history) // EPOCHS
    means = history["loss"].groupby(history["step"] // per_epoch).mean().tolist()
    assert table["train_loss"].tolist() == pytest.approx(means, rel=1e-6)
    with pytest.raises(ValueError, match="seconds"):
        epoch_table(history.drop(columns=["seconds"]))


def test_evaluate(one_cycle_run, loaders):
    history, _, model = one_cycle_run
    _, test = loaders
    model.train()
    loss, acc = evaluate(model, test)
    assert model.training  # mode restored
    assert 0.0 <= acc <= 1.0 and math.isfinite(loss) and loss >= 0
    assert abs(acc * 128 - round(acc * 128)) < 1e-9  # a fraction of the 128 test images
    final = epoch_table(history).iloc[-1]
    assert acc == final["test_acc"]
    assert loss == pytest.approx(final["test_loss"], rel=1e-5)
    with pytest.raises(ValueError, match="no batches"):
        evaluate(model, [])


def test_default_schedule_is_constant(loaders):
    train, _ = loaders
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    history = fit(model, train, 2, lr=0.02, momentum=0.8, device="cpu", progress=True)
    assert len(history) == 2 * len(train)
    assert (history["lr"] == 0.02).all()
    assert (history["momentum"] == 0.8).all()
    table = epoch_table(history)
    assert table["test_loss"].isna().all() and table["train_loss"].notna().all()


def test_adam_logs_beta1_as_momentum(loaders):
    train, _ = loaders
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.5, 0.99))
    fn = partial(one_cycle, total_steps=len(train), max_lr=3e-3, moms=(0.95, 0.85))
    history = fit(model, train, 1, fn, optimizer=opt, device="cpu", progress=False)
    assert history["momentum"].tolist() == [fn(s)[1] for s in range(len(train))]
    assert history["lr"].tolist() == [fn(s)[0] for s in range(len(train))]
    assert opt.param_groups[0]["betas"] == (fn(len(train))[1], 0.99)


def _seeded_run(loaders_seed, model_seed):
    x, y, _, _ = synthetic_cifar10(128, 8, seed=0)
    train = CifarLoader(x, y, batch_size=32, device="cpu", seed=loaders_seed)
    seed_everything(model_seed)
    model = resnet_cifar(8)
    fn = partial(one_cycle, total_steps=2 * len(train), max_lr=0.2)
    return fit(model, train, 2, fn, device="cpu", progress=False, seed=7)


def test_seeded_fits_are_identical():
    a = _seeded_run(0, 0)
    b = _seeded_run(0, 0)
    assert a["loss"].tolist() == b["loss"].tolist()
    assert a["train_loss"].dropna().tolist() == b["train_loss"].dropna().tolist()
    c = _seeded_run(0, 1)  # another initialisation: another run
    assert a["loss"].tolist() != c["loss"].tolist()


@pytest.mark.parametrize("bad", [0, -1, 1.5, "3"])
def test_bad_epochs(loaders, bad):
    train, _ = loaders
    with pytest.raises(ValueError, match="epochs") as info:
        fit(nn.Linear(2, 2), train, bad, device="cpu", progress=False)
    assert repr(bad) in str(info.value)


def test_empty_loader_is_an_error():
    with pytest.raises(ValueError, match="no batches"):
        fit(nn.Linear(2, 2), [], 1, device="cpu", progress=False)


def test_divergence_stops_at_the_end_of_the_epoch(loaders):
    train, _ = loaders
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))

    def nan_loss(out, target):
        return F.cross_entropy(out, target) * float("nan")

    with pytest.warns(RuntimeWarning, match="diverged"):
        history = fit(model, train, 3, loss_fn=nan_loss, device="cpu", progress=False)
    assert len(history) == len(train)  # only the first epoch ran
    assert len(epoch_table(history)) == 1


# --- precision, channels-last and compile settings ---------------------------------------------

from clrlib import device as D  # noqa: E402
from clrlib import train as T  # noqa: E402


def test_cpu_flags_reads_a_cpuinfo_file(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16\n\nprocessor\t: 1\n"
                    "flags\t\t: fpu sse2 avx512f avx512_bf16\n")
    assert T.cpu_flags(str(info)) == {"fpu", "sse2", "avx512f", "avx512_bf16"}
    assert T.cpu_flags(str(tmp_path / "missing")) == set()
    assert isinstance(T.cpu_has_native_bf16(), bool)


def test_bf16_by_default_only_where_it_was_measured_to_pay(monkeypatch):
    D.cpu_has_native_bf16.cache_clear()
    monkeypatch.setattr(D.torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    cases = [({"avx512_bf16"}, "AuthenticAMD", True), ({"avx512_bf16"}, "GenuineIntel", False),
             ({"avx512_bf16", "amx_bf16"}, "GenuineIntel", True), ({"avx2"}, "AuthenticAMD", False)]
    try:
        for flags, vendor, want in cases:
            monkeypatch.setattr(D, "cpu_flags", lambda flags=flags: flags)
            monkeypatch.setattr(D, "cpu_vendor", lambda vendor=vendor: vendor)
            D.cpu_has_native_bf16.cache_clear()
            assert D.cpu_has_native_bf16() is want, (flags, vendor)
            assert T.cpu_has_native_bf16 is D.cpu_has_native_bf16  # the old name, re-exported
    finally:
        D.cpu_has_native_bf16.cache_clear()


def test_default_precision(monkeypatch):
    monkeypatch.setattr(D, "cpu_has_native_bf16", lambda: True)
    assert T.default_precision("cpu") == "bf16"
    assert T.default_channels_last("cpu", "bf16") and T.default_channels_last("cpu", "fp32")
    monkeypatch.setattr(D, "cpu_has_native_bf16", lambda: False)
    assert T.default_precision("cpu") == "fp32"
    assert T.default_precision("mps") == "fp32"
    monkeypatch.setattr(D, "cuda_has_native_bf16", lambda: True)
    assert T.default_precision("cuda") == "bf16" and T.default_channels_last("cuda", "fp32")


def test_resolve_precision(monkeypatch):
    monkeypatch.setattr(D, "cpu_has_native_bf16", lambda: False)
    assert T.resolve_precision(None, "cpu") == T.resolve_precision("auto", "cpu") == "fp32"
    assert T.resolve_precision("bf16", "cpu") == "bf16"
    for bad in ("fp16", "BF16", 16):
        with pytest.raises(ValueError, match="precision") as info:
            T.resolve_precision(bad, "cpu")
        assert repr(bad) in str(info.value)


def test_amp_is_an_alias_of_precision():
    cpu = torch.device("cpu")
    assert T._precision_and_amp(None, True, cpu) == T._precision_and_amp("bf16", True, cpu) == "bf16"
    assert T._precision_and_amp("auto", False, cpu) == "fp32"
    with pytest.raises(ValueError, match="contradicts") as info:
        T._precision_and_amp("fp32", True, cpu)
    assert "'fp32'" in str(info.value) and "True" in str(info.value)
    with pytest.raises(ValueError, match="amp"):
        T._precision_and_amp(None, "yes", cpu)
    assert isinstance(T.autocast_for("bf16", "cpu"), torch.autocast)
    assert not isinstance(T.autocast_for("fp32", "cpu"), torch.autocast)


def test_resolve_compile(monkeypatch):
    assert T.resolve_compile(None, "cpu") is False and T.resolve_compile(False, "cuda") is False
    assert T.resolve_compile(True, "cpu") == "default"
    assert T.resolve_compile(True, "cuda") == "reduce-overhead"
    assert T.resolve_compile("max-autotune", "cpu") == "max-autotune"
    for bad in ("fast", 1):
        with pytest.raises(ValueError, match="compile") as info:
            T.resolve_compile(bad, "cpu")
        assert repr(bad) in str(info.value)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fit_records_its_settings(loaders, precision):
    train, test = loaders
    torch.manual_seed(0)
    model = resnet_cifar(8)
    history = fit(model, train, 1, test_loader=test, device="cpu", precision=precision, progress=False)
    record = history.attrs["fit"]
    assert {k: record[k] for k in ("precision", "compile", "channels_last", "device")} == {
        "precision": precision, "compile": False, "channels_last": True, "device": "cpu"}
    assert T.model_is_channels_last(model)  # channels-last pays on the CPU in fp32 too
    assert history["loss"].notna().all()


def test_fit_default_precision_follows_the_cpu(loaders, monkeypatch):
    train, _ = loaders
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    for native, want in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(D, "cpu_has_native_bf16", lambda: native)
        history = fit(model, train, 1, device="cpu", progress=False)
        assert history.attrs["fit"]["precision"] == want
        assert history.attrs["fit"]["channels_last"] is False  # an MLP: no 4-d conv weights
    assert fit(model, train, 1, device="cpu", amp=False, progress=False).attrs["fit"]["precision"] == "fp32"
    with pytest.raises(ValueError, match="contradicts"):
        fit(model, train, 1, device="cpu", amp=True, precision="fp32", progress=False)


def test_evaluate_precision_and_layout(one_cycle_run, loaders):
    _, _, model = one_cycle_run
    _, test = loaders
    loss32, acc32 = evaluate(model, test, precision="fp32")
    loss16, acc16 = evaluate(model, test, precision="bf16", channels_last=True)
    assert evaluate(model, test, amp=True, channels_last=True) == (loss16, acc16)
    assert loss16 == pytest.approx(loss32, rel=0.05)
    assert abs(acc16 - acc32) <= 0.05
    with pytest.raises(ValueError, match="precision"):
        evaluate(model, test, precision="half")


# --- loaders that lie about their length ------------------------------------------------------

class _ShortLoader:
    """Says it has ``length`` batches but yields only ``actual``."""

    def __init__(self, loader, length, actual):
        self.loader, self.length, self.actual = loader, length, actual

    def __len__(self):
        return self.length

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if i == self.actual:
                return
            yield batch


@pytest.mark.parametrize("actual", [0, 3])
def test_loader_shorter_than_its_len(loaders, actual):
    train, _ = loaders
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    short = _ShortLoader(train, len(train), actual)
    with pytest.raises(ValueError, match=rf"the loader yielded {actual} batches but len\(\) says {len(train)}"):
        fit(model, short, 2, device="cpu", progress=True)


def test_evaluate_on_an_empty_loader_with_compile_settings(one_cycle_run):
    _, _, model = one_cycle_run
    model.train()
    with pytest.raises(ValueError, match="no batches"):
        evaluate(model, [], precision="fp32")
    assert model.training


# --- the CUDA-graph bookkeeping, emulated on the CPU ------------------------------------------

class _GraphLike:
    """Emulates a CUDA graph's static outputs: each call first poisons (NaN) what the previous
    call returned, as the next replay would overwrite it. Counts calls."""

    def __init__(self, fn):
        self.fn, self.previous, self.calls = fn, (), 0

    def __call__(self, *args):
        with torch.no_grad():
            for t in self.previous:
                if isinstance(t, torch.Tensor):
                    t.detach().fill_(math.nan if t.is_floating_point() else -10**6)
        out = self.fn(*args)
        self.calls += 1
        self.previous = out if isinstance(out, tuple) else (out,)
        return out


def test_cudagraph_outputs_are_copied_before_the_next_replay(monkeypatch):
    x, y, xt, yt = synthetic_cifar10(128, 80, seed=0)
    fake = T.CompiledSteps(train=_GraphLike(T._train_forward), evaluate=_GraphLike(T._eval_forward),
                           mode="reduce-overhead", cudagraphs=True)
    monkeypatch.setattr(T, "compiled_steps", lambda *args: fake)
    marks = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))

    def run(compile):  # fresh loaders: the same batches
        train = CifarLoader(x, y, batch_size=BATCH, device="cpu", seed=0)
        test = CifarLoader(xt, yt, batch_size=BATCH, train=False, device="cpu")  # 64 + 16 images
        seed_everything(0)
        model = resnet_cifar(8)
        return fit(model, train, 2, test_loader=test, device="cpu", precision="fp32", compile=compile,
                   lr=0.05, progress=False)

    graphed, eager = run("reduce-overhead"), run(False)
    steps, evals = 2 * 128 // BATCH, 2 * 2
    assert fake.train.calls == steps and fake.evaluate.calls == evals
    assert len(marks) == steps + evals  # one mark per replay
    assert graphed.attrs["fit"]["compile"] == "reduce-overhead"
    assert graphed["loss"].notna().all()
    assert graphed["loss"].tolist() == eager["loss"].tolist()
    assert epoch_table(graphed)["test_loss"].tolist() == epoch_table(eager)["test_loss"].tolist()


def test_fit_evaluates_without_autograd(loaders):
    train, test = loaders
    grad_modes = []

    def loss_fn(out, target):
        grad_modes.append(torch.is_grad_enabled())
        return F.cross_entropy(out, target)

    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    fit(model, train, 1, loss_fn=loss_fn, test_loader=test, device="cpu", progress=False)
    assert grad_modes == [True] * len(train) + [False] * len(test)

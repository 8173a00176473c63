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

"""fit(checkpoint=...): a run interrupted after epoch 2 and resumed is bit for bit the uninterrupted one."""
from __future__ import annotations

from functools import partial

import pytest

from clrlib import checkpoint as C
from clrlib.data import CifarLoader, synthetic_cifar10
from clrlib.models import resnet_cifar
from clrlib.schedules import one_cycle
from clrlib.train import fit, seed_everything

EPOCHS = 3
DATA = synthetic_cifar10(96, 32, seed=0)


class _Interrupt(Exception):
    pass


def _fit(checkpoint=None, on_epoch=None):
    """A fresh model, optimizer and loaders, as a restarted process would build them."""
    x, y, xt, yt = DATA
    train = CifarLoader(x, y, batch_size=32, device="cpu", seed=0)
    test = CifarLoader(xt, yt, batch_size=32, train=False, device="cpu")
    seed_everything(0)
    model = resnet_cifar(8)
    sched = partial(one_cycle, total_steps=EPOCHS * len(train), max_lr=0.3)
    return fit(model, train, EPOCHS, sched, test_loader=test, device="cpu", precision="fp32",
               progress=False, checkpoint=checkpoint, on_epoch=on_epoch)


def test_interrupted_and_resumed_equals_uninterrupted(tmp_path):
    whole = _fit()
    path = tmp_path / "run.pt"

    def stop_after_two(row):
        if row["epoch"] == 2:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        _fit(path, stop_after_two)
    assert C.read(path, epochs=EPOCHS, steps_per_epoch=3)["epoch"] == 2  # written before on_epoch
    epochs_run = []
    resumed = _fit(path, lambda row: epochs_run.append(row["epoch"]))
    assert epochs_run == [3]
    same = [c for c in whole.columns if c != "seconds"]
    assert resumed[same].equals(whole[same])
    assert resumed["seconds"].notna().sum() == EPOCHS

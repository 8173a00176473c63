"""Resumable training: a run interrupted after an epoch and resumed from its checkpoint gives,
on a CPU, the same history bit for bit as an uninterrupted run (the ``seconds`` column aside)."""
from functools import partial

import pytest
import torch

from clrlib import checkpoint, data, models, schedules, train

EPOCHS = 3


def _fit(path, interrupt_after=None, monkeypatch=None, epochs=EPOCHS):
    x, y, xt, yt = data.synthetic_cifar10(192, 64)
    torch.manual_seed(0)
    loader = data.CifarLoader(x, y, batch_size=64, device="cpu", seed=3, drop_last=False)
    test = data.CifarLoader(xt, yt, batch_size=64, train=False, device="cpu")
    model = models.resnet_cifar(8, init="post")
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9, weight_decay=1e-4)
    sched = partial(schedules.one_cycle, total_steps=epochs * len(loader), max_lr=0.5)
    if interrupt_after is not None:
        real = checkpoint.write

        def write_then_stop(*args, **kwargs):
            real(*args, **kwargs)
            if kwargs["epoch"] == interrupt_after:
                raise KeyboardInterrupt  # the machine goes away right after the checkpoint

        monkeypatch.setattr(checkpoint, "write", write_then_stop)
    return train.fit(model, loader, epochs, sched, opt, test_loader=test, device="cpu", precision="fp32",
                     compile=False, progress=False, checkpoint=path)


def _same(a, b):
    cols = [c for c in a.columns if c != "seconds"]
    return a[cols].equals(b[cols])


def test_resumed_run_is_bit_for_bit_the_uninterrupted_one(tmp_path, monkeypatch):
    whole = _fit(None)
    path = tmp_path / "run.pt"
    with pytest.raises(KeyboardInterrupt):
        _fit(path, interrupt_after=2, monkeypatch=monkeypatch)
    monkeypatch.undo()
    assert checkpoint.read(path, epochs=EPOCHS, steps_per_epoch=3)["epoch"] == 2
    resumed = _fit(path)
    assert len(resumed) == len(whole) == EPOCHS * 3
    assert _same(whole, resumed)
    # a finished run's checkpoint resumes to the same history without training a step
    again = _fit(path)
    assert _same(whole, again)


def test_checkpoint_of_another_length_is_refused(tmp_path):
    path = tmp_path / "run.pt"
    _fit(path, epochs=1)
    with pytest.raises(checkpoint.CheckpointError, match="1 epochs x 3 steps, this one is 3 x 3"):
        _fit(path)


def test_unreadable_checkpoint_is_ignored_with_a_warning(tmp_path):
    path = tmp_path / "run.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.warns(RuntimeWarning, match="unreadable"):
        history = _fit(path)
    assert len(history) == EPOCHS * 3
    assert checkpoint.read(path, epochs=EPOCHS, steps_per_epoch=3)["epoch"] == EPOCHS

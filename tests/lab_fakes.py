"""Fast stand-ins for training, shared by the runner's tests (test_cli, test_runner, test_budget)."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from clrlib.lab import runs
from clrlib.lab.specs import FinderSpec, TrainSpec


def fake_history(spec: TrainSpec) -> pd.DataFrame:
    """A fit()-shaped history of the right length whose accuracy rises a little."""
    n, spe = spec.total_steps, spec.steps_per_epoch
    step = np.arange(n)
    end = (step + 1) % spe == 0
    frame = pd.DataFrame({"step": step, "epoch": (step + 1) / spe, "lr": 0.1, "momentum": 0.9,
                          "loss": 2.0 - step / (2 * n)})
    for col, value in (("train_loss", 1.5), ("test_loss", 1.6), ("test_acc", 0.5), ("seconds", 0.01)):
        frame[col] = np.where(end, value, np.nan)
    return frame


def fake_curve(spec: FinderSpec) -> pd.DataFrame:
    """A range test's curve: the loss falls, then blows up."""
    k = min(spec.num_it, 12)
    lrs = spec.start_lr * (spec.end_lr / spec.start_lr) ** (np.arange(k) / spec.num_it)
    loss = 2.3 - np.sin(np.linspace(0, 2.5, k))
    return pd.DataFrame({"lr": lrs, "loss": loss, "raw_loss": loss})


class FakeTraining:
    """Replaces :func:`clrlib.lab.runs.execute`: records the specs, returns fakes at once."""

    def __init__(self, seconds: float = 0.0, fail=lambda spec: False) -> None:
        self.specs: list = []
        self.seconds = seconds
        self.fail = fail

    def __call__(self, spec, arrays, device, compile=None, progress=False, checkpoint=None, log=None):
        self.specs.append(spec)
        if self.fail(spec):
            raise runs.RunFailed(f"run {spec.kind}-{spec.key()} failed (ValueError: broken on purpose); "
                                 f"spec: {spec.to_dict()}")
        meta = {"wall_seconds": self.seconds, "pid": os.getpid(), "host": "test", "device": str(device)}
        if isinstance(spec, TrainSpec):
            return fake_history(spec), {**meta, "diverged": False, "fit": {"precision": spec.precision}}
        frame = fake_curve(spec)
        return frame, {**meta, "stop_lr": float(frame["lr"].iloc[-1]), "finder_settings": {"num_it": spec.num_it}}


@pytest.fixture
def fake_training(monkeypatch) -> FakeTraining:
    fake = FakeTraining()
    monkeypatch.setattr(runs, "execute", fake)
    return fake

"""Shared settings for clrlib's tests: a headless matplotlib, two CPU threads, tiny data."""
from __future__ import annotations

import os

os.environ.setdefault("MPLBACKEND", "Agg")  # before anything imports pyplot

import matplotlib

matplotlib.use("Agg", force=True)

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _two_threads_and_no_leaked_figures():
    """Keep torch on two threads and close every figure a test opened."""
    torch.set_num_threads(2)
    yield
    plt.close("all")


@pytest.fixture
def no_show(monkeypatch):
    """Make ``plt.show`` fail the test: library code must never show figures itself."""
    def _show(*args, **kwargs):
        raise AssertionError("clrlib called plt.show()")

    monkeypatch.setattr(plt, "show", _show)
    return _show


@pytest.fixture(scope="session")
def tiny_cifar():
    """A small synthetic CIFAR-shaped data set (seeded): 256 train and 64 test images."""
    from clrlib.data import synthetic_cifar10
    return synthetic_cifar10(256, 64, seed=0)

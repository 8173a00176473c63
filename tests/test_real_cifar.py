"""Tests against the real CIFAR-10, where the project's shared copy is on disk.

The copy lives at ``../shared/data/cifar10`` from the repository root (xz files plus an
``unpack.py``). It is unpacked once per test module into a temporary folder; set
``CLRLIB_CIFAR_DIR`` to an already unpacked copy (a folder holding ``cifar-10-batches-py/``,
or that folder itself) to skip the unpacking. Without either, these tests are skipped.
"""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clrlib import data
from clrlib.data import CIFAR10_MEAN, CIFAR10_STD, find_cifar10, load_cifar10

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"
TEST_MEAN = (0.4942, 0.4851, 0.4504)
# The fingerprint of the shared copy (its image order differs from the official download's).
SHARED_FINGERPRINT = "0b173dcb886e2ee0"


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    """A folder holding cifar-10-batches-py/ with the real data, or skip."""
    given = os.environ.get("CLRLIB_CIFAR_DIR")
    if given:
        folder = find_cifar10(given)
        if folder is None:
            pytest.fail(f"CLRLIB_CIFAR_DIR={given!r} holds no cifar-10-batches-py/data_batch_1")
        return folder
    unpack = SHARED / "unpack.py"
    if not unpack.is_file():
        pytest.skip(f"the shared CIFAR-10 copy is not here ({SHARED}); "
                    "set CLRLIB_CIFAR_DIR to an unpacked copy to run these tests")
    dest = tmp_path_factory.mktemp("cifar10")
    done = subprocess.run([sys.executable, str(unpack), str(dest)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, f"unpack.py failed: {done.stderr}"
    folder = dest / "cifar-10-batches-py"
    assert folder.is_dir()
    return dest


@pytest.fixture(scope="module")
def cifar(cifar_root):
    return load_cifar10(cifar_root)


def channel_stats(x: torch.Tensor, chunk: int = 5000) -> tuple[list[float], list[float]]:
    """Per-channel mean and (population) std of uint8 images, as fractions of 255, exactly."""
    total = torch.zeros(3, dtype=torch.int64)
    squares = torch.zeros(3, dtype=torch.int64)
    for part in x.split(chunk):
        p = part.to(torch.int32)
        total += p.sum(dim=(0, 2, 3), dtype=torch.int64)
        squares += (p * p).sum(dim=(0, 2, 3), dtype=torch.int64)
    count = x.shape[0] * x.shape[2] * x.shape[3]
    mean = total.double() / count
    var = squares.double() / count - mean ** 2
    return (mean / 255).tolist(), (var.sqrt() / 255).tolist()


def test_sizes_and_classes(cifar):
    x_train, y_train, x_test, y_test = cifar
    assert x_train.shape == (50_000, 3, 32, 32) and x_train.dtype == torch.uint8
    assert x_test.shape == (10_000, 3, 32, 32) and x_test.dtype == torch.uint8
    assert y_train.dtype == torch.int64 and y_test.dtype == torch.int64
    assert torch.bincount(y_train, minlength=10).tolist() == [5_000] * 10
    assert torch.bincount(y_test, minlength=10).tolist() == [1_000] * 10
    assert cifar.synthetic is False and cifar.name == "CIFAR-10"


def test_train_statistics(cifar):
    mean, std = channel_stats(cifar[0])
    assert mean == pytest.approx(list(CIFAR10_MEAN), abs=1e-3)
    assert std == pytest.approx(list(CIFAR10_STD), abs=1e-3)


def test_test_statistics(cifar):
    mean, _ = channel_stats(cifar[2])
    assert mean == pytest.approx(list(TEST_MEAN), abs=1e-3)


def test_files_are_python2_pickles(cifar):
    folder = Path(cifar.source)
    with open(folder / "test_batch", "rb") as f:
        with pytest.raises(UnicodeDecodeError):
            pickle.load(f)
    with open(folder / "test_batch", "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    assert entry["data"].shape == (10_000, 3072)
    assert torch.equal(torch.as_tensor(entry["labels"]), cifar[3])


def test_strict_checks_and_safe_unpickling_accept_the_real_files(cifar):
    # the fixture loaded with strict=None: no clrlib marker here, so the official counts were checked
    folder = Path(cifar.source)
    meta, _ = data._unpickle(folder / "batches.meta")  # the restricted unpickler reads every file
    assert data.SMALL_MARKER not in meta and len(meta["label_names"]) == 10
    for name in data.TRAIN_FILES + data.TEST_FILES:
        entry, _ = data._unpickle(folder / name)
        assert entry["data"].shape == (10_000, 3072)


def test_fingerprint_is_cheap_and_stable(cifar):
    import time
    again = data.CifarArrays(tuple(cifar), cifar.source)
    start = time.perf_counter()
    fp = again.fingerprint
    seconds = time.perf_counter() - start
    assert len(fp) == 16 and fp == cifar.fingerprint
    assert seconds < 3, f"fingerprint of 60,000 images took {seconds:.2f} s"
    if not os.environ.get("CLRLIB_CIFAR_DIR"):
        assert fp == SHARED_FINGERPRINT

"""Issue 27's data probes: the folder writer refuses what it cannot write faithfully, and a tiny
pickle that declares a huge array is refused before anything is allocated."""
from __future__ import annotations

import pickle
import tracemalloc

import numpy as np
import pytest
import torch

from clrlib import data
from clrlib.data import CifarFormatError, load_cifar10, synthetic_cifar10, write_cifar10_folder

try:
    from numpy._core import multiarray
except ImportError:  # numpy < 2
    from numpy.core import multiarray


@pytest.fixture(scope="module")
def small():
    return synthetic_cifar10(40, 10, seed=1)


def test_writer_refuses_height_width_channel_images(tmp_path, small):
    x, y, xt, yt = small
    hwc = x.permute(0, 2, 3, 1).contiguous()  # (N, 32, 32, 3)
    with pytest.raises(ValueError, match=r"\(40, 32, 32, 3\)") as info:
        write_cifar10_folder(tmp_path, (hwc, y, xt, yt))
    assert "permute HWC to CHW" in str(info.value) and "training" in str(info.value)
    assert not (tmp_path / data.FOLDER).exists()  # nothing written
    write_cifar10_folder(tmp_path, (hwc.permute(0, 3, 1, 2), y, xt, yt))  # what the message says to do
    assert torch.equal(load_cifar10(tmp_path)[0], x)


@pytest.mark.parametrize("change,match", [
    (lambda x: x.float(), r"torch.float32 of shape \(40, 3, 32, 32\)"),
    (lambda x: x[:, :1], r"\(40, 1, 32, 32\)"),
    (lambda x: x.reshape(40, -1), r"\(40, 3072\)"),
    (lambda x: x[:, :, :16], r"\(40, 3, 16, 32\)"),
])
def test_writer_refuses_other_shapes_and_dtypes(tmp_path, small, change, match):
    x, y, xt, yt = small
    with pytest.raises(ValueError, match=match):
        write_cifar10_folder(tmp_path, (change(x), y, xt, yt))


def test_writer_refuses_labels_it_cannot_write(tmp_path, small):
    x, y, xt, yt = small
    with pytest.raises(ValueError, match="10 integers"):
        write_cifar10_folder(tmp_path, (x, y, xt, yt[:5]))
    with pytest.raises(ValueError, match="label 12"):
        write_cifar10_folder(tmp_path, (x, y, xt, torch.full_like(yt, 12)))
    with pytest.raises(ValueError, match="float"):
        write_cifar10_folder(tmp_path, (x, y.float(), xt, yt))


def test_writer_takes_numpy_arrays(tmp_path, small):
    x, y, xt, yt = small
    write_cifar10_folder(tmp_path, (x.numpy(), y.numpy(), xt.numpy(), yt.numpy()))
    assert torch.equal(load_cifar10(tmp_path)[2], xt)


class _Declares:
    """Pickles as numpy's ``_reconstruct(ndarray, shape, dtype)`` and nothing else: an array whose
    bytes are not in the file (numpy allocates it, uninitialised)."""

    def __init__(self, shape, dtype=b"b"):
        self.shape, self.dtype = shape, dtype

    def __reduce__(self):
        return multiarray._reconstruct, (np.ndarray, self.shape, self.dtype)


class _CallsNdarray(_Declares):
    def __reduce__(self):
        return np.ndarray, (self.shape, self.dtype)


@pytest.mark.parametrize("payload,match", [
    (_Declares((250_000, 3072)), r"declares an array of shape \(250000, 3072\) and dtype int8 \(768,000,000 bytes\)"),
    (_CallsNdarray((250_000, 3072)), r"calls numpy.ndarray"),
])
def test_a_tiny_pickle_that_claims_a_huge_array_is_refused_before_allocating(tmp_path, small, payload, match):
    folder = write_cifar10_folder(tmp_path, small)
    path = folder / "data_batch_1"
    path.write_bytes(pickle.dumps({"data": payload, "labels": [0] * 3}, protocol=2))
    assert path.stat().st_size < 400
    tracemalloc.start()
    try:
        with pytest.raises(CifarFormatError, match=match) as info:
            load_cifar10(tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(path) in str(info.value)
    assert peak < 50 * 2**20  # numpy reports its allocations to tracemalloc: 732 MiB before the fix


def test_arrays_whose_bytes_are_in_the_file_still_load(tmp_path, small):
    """The size check counts the declared array against the file: every real array fits."""
    folder = write_cifar10_folder(tmp_path, small)
    x, y = small[2], small[3]
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        entry = {"data": x.reshape(len(x), -1).numpy(), "labels": y.numpy().astype(np.int64)}
        (folder / "test_batch").write_bytes(pickle.dumps(entry, protocol=protocol))
        assert torch.equal(load_cifar10(tmp_path)[3], y)
    with pytest.raises(CifarFormatError, match="not valid"):
        (folder / "test_batch").write_bytes(pickle.dumps({"data": _Declares((-1, 3072)), "labels": []}, protocol=2))
        load_cifar10(tmp_path)

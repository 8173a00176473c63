"""Tests of clrlib.data: the CIFAR-10 "python version" reader and writer, the synthetic stand-in,
the on-device augmentation and the loader."""
from __future__ import annotations

import pickle
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clrlib import data
from clrlib.data import (CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, CifarArrays, CifarLoader,
                         DatasetNotFoundError, augment, default_data_root, find_cifar10,
                         load_cifar10, synthetic_cifar10, write_cifar10_folder)

FOLDER = "cifar-10-batches-py"
BATCH_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


@pytest.fixture(scope="module")
def small():
    return synthetic_cifar10(100, 20, seed=3)


@pytest.fixture
def cifar_folder(tmp_path, small):
    folder = write_cifar10_folder(tmp_path, small)
    return tmp_path, folder


def assert_same_arrays(got, want):
    assert len(got) == 4
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        assert torch.equal(g, w)
    x_train, y_train, x_test, y_test = got
    assert x_train.dtype == torch.uint8 and x_train.shape[1:] == (3, 32, 32)
    assert y_train.dtype == torch.int64 and x_test.dtype == torch.uint8 and y_test.dtype == torch.int64


# --- reading and writing the official layout ---------------------------------------------------

def test_write_then_load_round_trip(cifar_folder, small):
    root, folder = cifar_folder
    assert folder == root / FOLDER
    assert sorted(p.name for p in folder.iterdir()) == sorted(BATCH_FILES + ["batches.meta"])
    got = load_cifar10(root)
    assert_same_arrays(got, small)
    assert got.synthetic is False and got.name == "CIFAR-10"
    assert got.source == str(folder)


def test_load_from_the_batches_folder_itself(cifar_folder, small):
    _, folder = cifar_folder
    assert find_cifar10(folder) == folder
    assert_same_arrays(load_cifar10(folder), small)
    assert_same_arrays(load_cifar10(str(folder)), small)


def test_load_from_the_environment_variable(cifar_folder, small, monkeypatch):
    root, folder = cifar_folder
    monkeypatch.setenv("CLRLIB_DATA", str(root))
    assert default_data_root() == root
    assert find_cifar10() == folder
    assert_same_arrays(load_cifar10(), small)


def test_default_root_is_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("CLRLIB_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_data_root() == tmp_path / "clrlib"
    assert find_cifar10() is None


def test_written_files_have_the_official_format(cifar_folder, small):
    _, folder = cifar_folder
    with open(folder / "data_batch_1", "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    assert set(entry) == {"batch_label", "data", "labels", "filenames"}
    assert isinstance(entry["data"], np.ndarray) and entry["data"].dtype == np.uint8
    assert entry["data"].shape == (20, 3072)  # 100 training images over five files
    assert isinstance(entry["labels"], list) and len(entry["labels"]) == 20
    # rows are the R, then G, then B planes of a 32x32 image
    x0 = small[0][0]
    assert np.array_equal(entry["data"][0, :1024], x0[0].flatten().numpy())
    assert np.array_equal(entry["data"][0, 2048:], x0[2].flatten().numpy())
    with open(folder / "batches.meta", "rb") as f:
        meta = pickle.load(f, encoding="latin1")
    assert meta["label_names"] == list(CIFAR10_CLASSES)


class Py2Pickler(pickle._Pickler):
    """Writes strings and bytes the way Python 2 pickled its ``str``: as BINSTRING opcodes.

    Python 3 can read such pickles only with an ``encoding`` (the official CIFAR-10 files need
    ``encoding="latin1"``): with the default ASCII the raw image bytes fail to decode.
    """

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj):
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str
    dispatch[str] = _save_py2_str


def _write_py2_folder(root, arrays):
    folder = root / FOLDER
    folder.mkdir(parents=True)
    x_train, y_train, x_test, y_test = arrays
    parts = list(zip(torch.tensor_split(x_train, 5), torch.tensor_split(y_train, 5))) + [(x_test, y_test)]
    for name, (x, y) in zip(BATCH_FILES, parts):
        entry = {"batch_label": name, "data": x.reshape(len(x), -1).numpy(), "labels": y.tolist(),
                 "filenames": [f"img_{i}.png" for i in range(len(y))]}
        with open(folder / name, "wb") as f:
            Py2Pickler(f, protocol=2).dump(entry)
    return folder


def test_python2_pickles_need_latin1_and_load(tmp_path, small):
    folder = _write_py2_folder(tmp_path, small)
    with open(folder / "data_batch_1", "rb") as f:
        with pytest.raises(UnicodeDecodeError):
            pickle.load(f)  # what a plain pickle.load does with the official files
    assert_same_arrays(load_cifar10(tmp_path, strict=False), small)  # small, and no clrlib marker


def test_our_files_also_load_with_plain_pickle(cifar_folder):
    # written from Python 3 with protocol 2, so both readers work
    _, folder = cifar_folder
    with open(folder / "test_batch", "rb") as f:
        assert pickle.load(f)["data"].shape == (20, 3072)


# --- missing and broken data --------------------------------------------------------------------

def test_missing_folder_message(tmp_path):
    where = tmp_path / "nowhere"
    with pytest.raises(DatasetNotFoundError) as info:
        load_cifar10(where)
    assert isinstance(info.value, FileNotFoundError)
    message = str(info.value)
    assert str(where / FOLDER) in message and str(where) in message
    assert "download=True" in message
    assert "CLRLIB_DATA" in message


def test_missing_folder_via_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CLRLIB_DATA", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="CLRLIB_DATA") as info:
        load_cifar10()
    assert str(tmp_path / "empty") in str(info.value)


def test_download_fetches_the_official_archive_only_when_missing(tmp_path, small, monkeypatch):
    import torchvision.datasets.utils as tv_utils
    calls = []

    def fake_download(url, download_root, md5=None, **kwargs):
        calls.append((url, download_root, md5))
        write_cifar10_folder(download_root, small)  # what extracting the archive gives

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", fake_download)
    got = load_cifar10(tmp_path / "fresh", download=True)
    assert_same_arrays(got, small)
    assert calls == [(data.URL, str(tmp_path / "fresh"), data.ARCHIVE_MD5)]
    assert data.URL.endswith("cifar-10-python.tar.gz") and len(data.ARCHIVE_MD5) == 32
    load_cifar10(tmp_path / "fresh", download=True)  # already there: no second download
    assert len(calls) == 1


def test_incomplete_folder_names_the_missing_file(cifar_folder):
    root, folder = cifar_folder
    (folder / "test_batch").unlink()
    with pytest.raises(DatasetNotFoundError, match="test_batch") as info:
        load_cifar10(root)
    assert str(folder) in str(info.value)


def test_truncated_file_raises_value_error_naming_it(cifar_folder):
    root, folder = cifar_folder
    path = folder / "data_batch_3"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError) as info:
        load_cifar10(root)
    assert str(path) in str(info.value)
    assert not isinstance(info.value, FileNotFoundError)


@pytest.mark.parametrize("entry", [
    {"labels": [0]},                                                      # no data
    {"data": np.zeros((2, 3072), np.uint8), "labels": [0, 12]},           # label out of range
    {"data": np.zeros((2, 3072), np.uint8), "labels": [0]},               # count mismatch
    {"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]},             # wrong image size
])
def test_malformed_file_raises_value_error_naming_it(cifar_folder, entry):
    root, folder = cifar_folder
    path = folder / "test_batch"
    with open(path, "wb") as f:
        pickle.dump(entry, f, protocol=2)
    with pytest.raises(ValueError, match="test_batch") as info:
        load_cifar10(root)
    assert str(path) in str(info.value)


def test_garbage_file_raises_value_error(cifar_folder):
    root, folder = cifar_folder
    (folder / "data_batch_1").write_bytes(b"this is not a pickle")
    with pytest.raises(ValueError, match="data_batch_1"):
        load_cifar10(root)


# --- synthetic data -------------------------------------------------------------------------------

def test_synthetic_is_seeded_and_shaped():
    a = synthetic_cifar10(64, 16, seed=1)
    b = synthetic_cifar10(64, 16, seed=1)
    c = synthetic_cifar10(64, 16, seed=2)
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    assert not torch.equal(a[0], c[0])
    x_train, y_train, x_test, y_test = a  # unpacks as a 4-tuple
    assert x_train.shape == (64, 3, 32, 32) and x_train.dtype == torch.uint8
    assert x_test.shape == (16, 3, 32, 32) and x_test.dtype == torch.uint8
    assert y_train.shape == (64,) and y_train.dtype == torch.int64
    assert y_test.shape == (16,) and y_test.dtype == torch.int64
    assert 0 <= int(y_train.min()) and int(y_train.max()) <= 9
    assert a.synthetic is True and "synthetic" in a.name and a.source == "synthetic"
    assert isinstance(a, tuple) and isinstance(a, CifarArrays) and len(a) == 4


def test_synthetic_classes_and_variety():
    x, y, _, _ = synthetic_cifar10(500, 10, num_classes=5, seed=0)
    assert set(y.tolist()) == set(range(5))
    assert x.float().std() > 10  # not a blank image
    assert not torch.equal(x[0], x[1])


def test_synthetic_flag_survives_pickling():
    a = synthetic_cifar10(8, 4)
    b = pickle.loads(pickle.dumps(a))
    assert b.synthetic is True and b.name == a.name and torch.equal(a[0], b[0])


@pytest.mark.parametrize("kwargs,bad", [(dict(n_train=0), "0"), (dict(n_test=-1), "-1"),
                                        (dict(num_classes=2.5), "2.5")])
def test_synthetic_bad_arguments(kwargs, bad):
    with pytest.raises(ValueError, match=next(iter(kwargs))) as info:
        synthetic_cifar10(**kwargs)
    assert bad in str(info.value)


# --- augmentation -------------------------------------------------------------------------------

def _coordinate_canvas(n, pad=4, size=32):
    """Padded images whose every value encodes (channel, row, column) of the padded canvas."""
    side = size + 2 * pad
    c = torch.arange(3).view(3, 1, 1) * 10_000
    r = torch.arange(side).view(1, side, 1) * 100
    k = torch.arange(side).view(1, 1, side)
    return (c + r + k).expand(n, 3, side, side).contiguous()


def _decode(crops):
    """Row offset, column offset and flip of each crop of a coordinate canvas (asserting it is one)."""
    ch, rows, cols = crops // 10_000, crops // 100 % 100, crops % 100
    n, _, h, w = crops.shape
    assert torch.equal(ch, torch.arange(3).view(1, 3, 1, 1).expand_as(ch))
    oy, ox_left, ox_right = rows[:, 0, 0, 0], cols[:, 0, 0, 0], cols[:, 0, 0, -1]
    flipped = ox_left > ox_right
    ox = torch.where(flipped, ox_right, ox_left)
    ar_h, ar_w = torch.arange(h), torch.arange(w)
    want_rows = (oy[:, None] + ar_h).view(n, 1, h, 1).expand_as(rows)
    want_cols = torch.where(flipped[:, None], ox[:, None] + ar_w.flip(0), ox[:, None] + ar_w)
    assert torch.equal(rows, want_rows)  # whole rows of the canvas, in order
    assert torch.equal(cols, want_cols.view(n, 1, 1, w).expand_as(cols))  # a window, maybe mirrored
    return oy, ox, flipped


def test_augment_crops_are_windows_of_the_padded_image_at_all_offsets():
    canvas = _coordinate_canvas(3000)
    crops = augment(canvas, torch.Generator().manual_seed(0))
    assert crops.shape == (3000, 3, 32, 32) and crops.dtype == canvas.dtype
    oy, ox, flipped = _decode(crops)
    assert set(oy.tolist()) == set(range(8))  # offsets 0..2*pad-1, as fastai 0.7
    assert set(ox.tolist()) == set(range(8))
    assert 0.4 < flipped.float().mean().item() < 0.6  # both flip states, about equally often


def test_augment_without_flip_and_other_pad():
    crops = augment(_coordinate_canvas(500, pad=2), torch.Generator().manual_seed(1), pad=2, flip=False)
    assert crops.shape == (500, 3, 32, 32)
    oy, ox, flipped = _decode(crops)
    assert not flipped.any()
    assert set(oy.tolist()) == set(range(4)) and set(ox.tolist()) == set(range(4))


def test_augment_on_a_reflection_padded_image():
    # a real image, reflection-padded as CifarLoader does; its pixels encode their coordinates
    img = (torch.arange(3 * 32 * 32, dtype=torch.float32) % 997).view(1, 3, 32, 32)
    padded = data.reflect_pad(img, 4)
    assert padded.shape == (1, 3, 40, 40)
    n = 40
    crops = augment(padded.expand(n, -1, -1, -1), torch.Generator().manual_seed(2))
    windows = [(oy, ox, fl) for oy in range(8) for ox in range(8) for fl in (False, True)]
    found = set()
    for crop in crops:
        matches = []
        for oy, ox, fl in windows:
            window = padded[0, :, oy:oy + 32, ox:ox + 32]
            if torch.equal(crop, window.flip(-1) if fl else window):
                matches.append((oy, ox, fl))
        assert len(matches) == 1  # exactly one window of the padded image, possibly mirrored
        found.add(matches[0])
    assert len(found) > 10  # and they vary


def test_augment_is_deterministic_for_a_seeded_generator():
    canvas = _coordinate_canvas(64)
    a = augment(canvas, torch.Generator().manual_seed(5))
    b = augment(canvas, torch.Generator().manual_seed(5))
    c = augment(canvas, torch.Generator().manual_seed(6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


# --- the loader ---------------------------------------------------------------------------------

def _unnormalise(x):
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    return x * std + mean


def test_loader_len_and_batches(small):
    x, y, _, _ = small  # 100 images
    drop = CifarLoader(x, y, batch_size=32, device="cpu")
    keep = CifarLoader(x, y, batch_size=32, device="cpu", drop_last=False)
    test = CifarLoader(x, y, batch_size=32, train=False, device="cpu")
    assert (len(drop), len(keep), len(test)) == (3, 4, 4)
    assert [len(b[1]) for b in drop] == [32, 32, 32]
    assert [len(b[1]) for b in keep] == [32, 32, 32, 4]
    assert len(CifarLoader(x, y, batch_size=25, device="cpu")) == 4
    assert drop.num_images == 100
    for xb, yb in drop:
        assert xb.shape == (32, 3, 32, 32) and xb.dtype == torch.float32
        assert yb.dtype == torch.int64 and xb.device.type == "cpu"


def test_eval_loader_in_order_covers_each_image_once_and_normalises(small):
    x, y, _, _ = small
    loader = CifarLoader(x, y, batch_size=32, train=False, device="cpu")
    xs, ys = zip(*loader)
    xs, ys = torch.cat(xs), torch.cat(ys)
    assert torch.equal(ys, y)
    torch.testing.assert_close(_unnormalise(xs), x.float() / 255, atol=1e-5, rtol=0)
    # normalised by the CIFAR-10 statistics
    torch.testing.assert_close(((x.float() / 255 - _unnormalise(torch.zeros(1, 3, 1, 1))) /
                                torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)), xs, atol=1e-4, rtol=0)


def test_train_loader_without_augmentation_is_a_permutation(small):
    x, y, _, _ = small
    loader = CifarLoader(x, y, batch_size=10, augment=False, device="cpu")
    xs, ys = zip(*loader)
    imgs = (_unnormalise(torch.cat(xs)) * 255).round().to(torch.uint8)
    probe = torch.randn(3 * 32 * 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    key = lambda t: sorted((t.reshape(len(t), -1).double() @ probe).tolist())  # noqa: E731
    assert key(imgs) == pytest.approx(key(x))
    assert sorted(torch.cat(ys).tolist()) == sorted(y.tolist())
    assert not torch.equal(torch.cat(ys), y)  # shuffled


def test_augmented_batches_stay_in_range(small):
    x, y, _, _ = small
    loader = CifarLoader(x, y, batch_size=50, device="cpu")
    assert loader.images.shape == (100, 3, 40, 40)  # padded once, up front
    for xb, _ in loader:
        pixels = _unnormalise(xb)
        assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5


def test_loader_seeds(small):
    x, y, _, _ = small

    def epoch(seed):
        return [(xb.clone(), yb.clone()) for xb, yb in CifarLoader(x, y, batch_size=32, device="cpu", seed=seed)]

    a, b, c = epoch(0), epoch(0), epoch(1)
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b))
    assert not all(torch.equal(p[0], q[0]) for p, q in zip(a, c))
    loader = CifarLoader(x, y, batch_size=32, device="cpu", seed=0)
    first, second = list(loader), list(loader)
    assert not torch.equal(first[0][0], second[0][0])  # a new shuffle and new crops every epoch


def test_loader_subset(small):
    x, y, _, _ = small
    loader = CifarLoader(x, y, batch_size=16, train=False, device="cpu", subset=40, seed=4)
    assert loader.num_images == 40 and len(loader) == 3
    imgs = (_unnormalise(torch.cat([xb for xb, _ in loader])) * 255).round().to(torch.uint8)
    flat = x.reshape(100, -1)
    for img in imgs.reshape(40, -1):
        assert (flat == img).all(1).any()  # every image comes from the set
    again = CifarLoader(x, y, batch_size=16, train=False, device="cpu", subset=40, seed=4)
    assert torch.equal(again.images, loader.images)
    other = CifarLoader(x, y, batch_size=16, train=False, device="cpu", subset=40, seed=5)
    assert not torch.equal(other.images, loader.images)


def test_loader_channels_last(small):
    x, y, _, _ = small
    xb, _ = next(iter(CifarLoader(x, y, batch_size=8, device="cpu", channels_last=True)))
    assert xb.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("change,bad", [
    (dict(images="float"), "torch.float32"),
    (dict(images="gray"), "(100, 1, 32, 32)"),
    (dict(labels="short"), "99 labels"),
    (dict(batch_size=0), "0"),
    (dict(batch_size=2.0), "2.0"),
    (dict(subset=0), "0"),
    (dict(subset=101), "101"),
    (dict(pad=-1), "-1"),
])
def test_loader_bad_arguments(small, change, bad):
    x, y, _, _ = small
    kwargs = dict(images=x, labels=y, batch_size=10, device="cpu")
    if change.get("images") == "float":
        change = dict(images=x.float())
    elif change.get("images") == "gray":
        change = dict(images=x[:, :1])
    elif change.get("labels") == "short":
        change = dict(labels=y[:99])
    with pytest.raises(ValueError) as info:
        CifarLoader(**{**kwargs, **change})
    assert bad in str(info.value)


def test_module_constants():
    assert len(CIFAR10_CLASSES) == 10 and CIFAR10_CLASSES[0] == "airplane"
    assert data.TRAIN_FILES == tuple(BATCH_FILES[:5]) and data.TEST_FILES == ("test_batch",)


@pytest.mark.parametrize("pad", [1, 4])
def test_reflect_pad_matches_numpy_symmetric_and_keeps_uint8(pad):
    # cv2.BORDER_REFLECT (fastai 0.7) is numpy's "symmetric" mode: the edge pixel repeated
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    padded = data.reflect_pad(images, pad)
    assert padded.dtype == torch.uint8 and padded.shape == (3, 3, 32 + 2 * pad, 32 + 2 * pad)
    expected = np.pad(images.numpy(), ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="symmetric")
    assert torch.equal(padded, torch.from_numpy(expected))
    not_expected = F.pad(images.float(), (pad,) * 4, mode="reflect").to(torch.uint8)
    assert not torch.equal(padded, not_expected)  # torch's "reflect" skips the edge pixel
    with pytest.raises(ValueError, match="32"):
        data.reflect_pad(images, 32)


def test_download_into_a_root_that_names_the_batches_folder(tmp_path, small, monkeypatch):
    import torchvision.datasets.utils as tv_utils
    roots = []

    def fake_download(url, download_root, md5=None, **kwargs):
        roots.append(download_root)
        write_cifar10_folder(download_root, small)

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", fake_download)
    got = load_cifar10(tmp_path / "cifar-10-batches-py", download=True)
    assert roots == [str(tmp_path)]
    assert_same_arrays(got, small)


# --- augmentation as fastai 0.7: cv2.BORDER_REFLECT padding, crop offsets 0..2*pad-1 ------------

def test_reflect_pad_repeats_the_edge_pixel_like_cv2_border_reflect():
    cols = torch.arange(32).expand(1, 1, 32, 32)  # pixel value = column index
    padded = data.reflect_pad(cols, 4)
    row = padded[0, 0, 10].tolist()
    assert row[:4] == [3, 2, 1, 0]            # padded columns -4..-1
    assert row[4:36] == list(range(32))
    assert row[36:] == [31, 30, 29, 28]       # columns W..W+3 are W-1..W-4
    rows = data.reflect_pad(cols.transpose(-1, -2), 4)[0, 0, :, 10].tolist()
    assert rows[:4] == [3, 2, 1, 0] and rows[36:] == [31, 30, 29, 28]  # the same along rows


def test_augment_reaches_crop_offsets_0_to_7_and_never_8():
    # pixel value = 100 * row + column of the original image; crop pixel (4, 4) at offset
    # (oy, ox) of the padded image is original pixel (oy, ox)
    img = (100 * torch.arange(32).view(32, 1) + torch.arange(32)).expand(4000, 3, 32, 32)
    crops = augment(data.reflect_pad(img, 4), torch.Generator().manual_seed(0), flip=False)
    oy, ox = crops[:, 0, 4, 4] // 100, crops[:, 0, 4, 4] % 100
    assert set(oy.tolist()) == set(range(8)) and set(ox.tolist()) == set(range(8))
    counts = torch.bincount(ox, minlength=9)
    assert counts[8] == 0 and counts[:8].min() > 350  # about uniform over 8 positions


def test_augment_flips_half_the_images():
    img = torch.arange(32).expand(2000, 1, 32, 32)
    crops = augment(data.reflect_pad(img, 4), torch.Generator().manual_seed(1))
    flipped = crops[:, 0, 0, 0] > crops[:, 0, 0, -1]
    assert 0.45 < flipped.float().mean().item() < 0.55


# --- steps per epoch ------------------------------------------------------------------------------

def test_steps_per_epoch_keeps_the_last_partial_batch_like_fastai():
    assert data.steps_per_epoch(50_000, 512, drop_last=False) == 98  # fastai 0.7, the post
    assert data.steps_per_epoch(50_000, 512, drop_last=True) == 97
    assert data.steps_per_epoch(100, 25, False) == data.steps_per_epoch(100, 25, True) == 4
    assert data.steps_per_epoch(0, 8, False) == 0 and data.steps_per_epoch(7, 8, True) == 0


@pytest.mark.parametrize("args,bad", [((-1, 8, True), "-1"), ((10, 0, True), "0"), ((10, 2.5, True), "2.5"),
                                      ((10.0, 8, True), "10.0"), ((10, 8, "no"), "'no'"),
                                      ((10, True, False), "True")])
def test_steps_per_epoch_bad_arguments(args, bad):
    with pytest.raises(ValueError) as info:
        data.steps_per_epoch(*args)
    assert bad in str(info.value)


def test_loader_len_uses_steps_per_epoch(small, monkeypatch):
    x, y, _, _ = small
    calls = []
    monkeypatch.setattr(data, "steps_per_epoch", lambda *a: calls.append(a) or 7)
    loader = CifarLoader(x, y, batch_size=32, device="cpu", drop_last=False)
    assert len(loader) == 7 and calls == [(100, 32, False)]
    assert len(list(loader)) == 7 and loader.drop_last is False


# --- checks of loaded data --------------------------------------------------------------------------

def _dump(path, entry, protocol=2):
    with open(path, "wb") as f:
        pickle.dump(entry, f, protocol=protocol)


def _pixels(n, dtype=np.uint8):
    return (np.arange(n * 3072).reshape(n, 3072) % 256).astype(dtype)


def _with(pixels, value):
    pixels[1, 7] = value
    return pixels


@pytest.mark.parametrize("entry,bad", [
    ({"data": _pixels(2).T.copy(), "labels": [0, 1]}, "(3072, 2)"),                 # transposed
    ({"data": _pixels(2).reshape(2, 32, 32, 3), "labels": [0, 1]}, "(2, 32, 32, 3)"),  # HWC
    ({"data": _pixels(2, np.float32), "labels": [0, 1]}, "float32"),                # floats
    ({"data": _pixels(2, np.float64).round(), "labels": [0, 1]}, "float64"),        # whole floats too
    ({"data": _with(_pixels(2, np.int64), 300), "labels": [0, 1]}, "value 300 (row 1, column 7"),
    ({"data": _with(_pixels(2, np.int16), -1), "labels": [0, 1]}, "value -1 (row 1, column 7"),
    ({"data": _pixels(2), "labels": [0, 2.7]}, "got 2.7 (label of image 1)"),      # a float label
    ({"data": _pixels(2), "labels": [0, 2.0]}, "got 2.0"),                          # not rounded either
    ({"data": _pixels(2), "labels": np.array([0.0, 2.5])}, "got 2.5"),
    ({"data": _pixels(2), "labels": [0, True]}, "got True"),
    ({"data": _pixels(2), "labels": [0, 10]}, "10"),
    ({"data": _pixels(2), "labels": [-1, 0]}, "-1"),
    ({"data": _pixels(2), "labels": ["0", "1"]}, "'0'"),
    ({"data": _pixels(2)}, "labels"),
    ({"data": _pixels(2).tolist(), "labels": [0, 1]}, "list"),
    ([_pixels(2), [0, 1]], "list"),                                                 # not a dict
])
def test_malformed_data_is_refused_naming_file_and_value(cifar_folder, entry, bad):
    root, folder = cifar_folder
    path = folder / "test_batch"
    _dump(path, entry)
    with pytest.raises(data.CifarFormatError) as info:
        load_cifar10(root)
    assert isinstance(info.value, ValueError)
    assert str(path) in str(info.value) and bad in str(info.value)


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint16])
def test_integer_pixels_in_range_load_losslessly(cifar_folder, dtype):
    root, folder = cifar_folder
    pixels = _pixels(3, dtype)
    _dump(folder / "test_batch", {"data": pixels, "labels": np.array([0, 9, 4], dtype=np.int32)}, protocol=4)
    _, _, x_test, y_test = load_cifar10(root)
    assert x_test.dtype == torch.uint8 and torch.equal(x_test.reshape(3, -1), torch.from_numpy(pixels).to(torch.uint8))
    assert y_test.dtype == torch.int64 and y_test.tolist() == [0, 9, 4]


def test_a_file_copied_over_another_is_refused(cifar_folder):
    root, folder = cifar_folder
    (folder / "data_batch_4").write_bytes((folder / "data_batch_2").read_bytes())
    with pytest.raises(ValueError, match="byte-identical") as info:
        load_cifar10(root)
    assert str(folder / "data_batch_4") in str(info.value) and str(folder / "data_batch_2") in str(info.value)


def test_small_folders_carry_a_marker_and_load_only_when_not_strict(cifar_folder, small):
    root, folder = cifar_folder
    with open(folder / "batches.meta", "rb") as f:
        assert pickle.load(f)[data.SMALL_MARKER]  # written by write_cifar10_folder: 100 images
    assert_same_arrays(load_cifar10(root), small)  # strict=None: the marker turns count checks off
    with pytest.raises(ValueError, match="10,000") as info:
        load_cifar10(root, strict=True)
    assert str(folder / "data_batch_1") in str(info.value) and "holds 20 images" in str(info.value)
    _dump(folder / "batches.meta", {"label_names": list(CIFAR10_CLASSES)})  # marker gone: strict
    with pytest.raises(ValueError, match="data_batch_1"):
        load_cifar10(root)
    (folder / "batches.meta").unlink()  # no meta file at all: strict as well
    with pytest.raises(ValueError, match="strict=False"):
        load_cifar10(root)
    assert_same_arrays(load_cifar10(root, strict=False), small)
    with pytest.raises(ValueError, match="'yes'"):
        load_cifar10(root, strict="yes")


@pytest.fixture
def official_counts(monkeypatch):
    """Shrink the official counts to 20 images per file, 10 (train) / 2 (test) per class."""
    monkeypatch.setattr(data, "IMAGES_PER_FILE", 20)
    monkeypatch.setattr(data, "PER_CLASS", {"train": 10, "test": 2})
    x, _, xt, _ = synthetic_cifar10(100, 20, seed=5)
    return CifarArrays((x, torch.arange(100) % 10, xt, torch.arange(20) % 10), source="balanced")


def test_strict_checks_pass_on_official_counts(tmp_path, official_counts):
    folder = write_cifar10_folder(tmp_path, official_counts)
    with open(folder / "batches.meta", "rb") as f:
        assert data.SMALL_MARKER not in pickle.load(f)  # official counts: no marker
    assert_same_arrays(load_cifar10(tmp_path), official_counts)
    assert_same_arrays(load_cifar10(tmp_path, strict=True), official_counts)


def test_strict_checks_refuse_wrong_class_counts(tmp_path, official_counts):
    x, y, xt, yt = official_counts
    folder = write_cifar10_folder(tmp_path, (x, y, xt, torch.zeros(20, dtype=torch.int64)))
    _dump(folder / "batches.meta", {"label_names": list(CIFAR10_CLASSES)})  # as the official folder
    with pytest.raises(ValueError, match=r"\[20, 0, 0, 0, 0, 0, 0, 0, 0, 0\] images per class") as info:
        load_cifar10(tmp_path)
    assert "test_batch" in str(info.value) and str(folder) in str(info.value)
    assert load_cifar10(tmp_path, strict=False)[3].tolist() == [0] * 20


# --- safe unpickling ----------------------------------------------------------------------------

class _RunsACommand:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        import os
        return (os.system, (self.command,))


def test_a_pickle_that_would_run_code_is_refused_unrun(cifar_folder, tmp_path):
    root, folder = cifar_folder
    control, pwned = tmp_path / "control", tmp_path / "pwned"
    pickle.loads(pickle.dumps(_RunsACommand(f"touch {control}"), protocol=2))  # plain pickle runs it
    assert control.exists()
    path = folder / "data_batch_1"
    _dump(path, {"data": _RunsACommand(f"touch {pwned}"), "labels": [0]})
    with pytest.raises(data.CifarFormatError, match="unsafe") as info:
        load_cifar10(root)
    assert str(path) in str(info.value) and "system" in str(info.value)
    assert not pwned.exists()
    path.write_bytes(pickle.dumps(_RunsACommand(f"touch {pwned}"), protocol=0))  # a bare payload, old protocol
    with pytest.raises(ValueError, match="unsafe"):
        load_cifar10(root)
    assert not pwned.exists()


def test_safe_unpickler_reads_every_protocol_and_python2_files(cifar_folder, tmp_path, small):
    root, folder = cifar_folder
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        _dump(folder / "test_batch", {"data": small[2].reshape(20, -1).numpy(), "labels": small[3].tolist()},
              protocol=protocol)
        assert_same_arrays(load_cifar10(root), small)
    assert_same_arrays(load_cifar10(_write_py2_folder(tmp_path / "py2", small), strict=False), small)


# --- fingerprint --------------------------------------------------------------------------------

def test_fingerprint_identifies_the_content(cifar_folder, small):
    root, _ = cifar_folder
    fp = small.fingerprint
    assert isinstance(fp, str) and len(fp) == 16 and int(fp, 16) >= 0
    assert synthetic_cifar10(100, 20, seed=3).fingerprint == fp
    loaded = load_cifar10(root)
    assert loaded.fingerprint == fp  # the content, not where it came from
    assert "fingerprint" in loaded.__dict__  # computed once, then cached
    x, y, xt, yt = small
    x2 = x.clone()
    x2[5, 1, 2, 3] ^= 1
    y2 = y.clone()
    y2[0] = (y2[0] + 1) % 10
    others = {CifarArrays((x2, y, xt, yt), "s").fingerprint, CifarArrays((x, y2, xt, yt), "s").fingerprint,
              CifarArrays((xt, yt, x, y), "s").fingerprint, synthetic_cifar10(100, 20, seed=4).fingerprint}
    assert len(others) == 4 and fp not in others


# --- errors on finding and downloading ------------------------------------------------------------

def test_a_root_that_is_a_file_is_named_as_such(tmp_path, monkeypatch):
    path = tmp_path / "cifar.tar.gz"
    path.write_bytes(b"x")
    monkeypatch.setenv("CLRLIB_DATA", str(path))
    for call in (lambda: load_cifar10(), lambda: load_cifar10(path, download=True)):
        with pytest.raises(DatasetNotFoundError, match="is a file, not a folder") as info:
            call()
        assert str(path) in str(info.value)
    assert "CLRLIB_DATA" in str(pytest.raises(DatasetNotFoundError, load_cifar10).value)


def test_loading_without_download_creates_no_folder(tmp_path):
    with pytest.raises(DatasetNotFoundError):
        load_cifar10(tmp_path / "a" / "b")
    assert list(tmp_path.iterdir()) == []


def _fake_download(monkeypatch, error):
    import torchvision.datasets.utils as tv_utils

    def fake(url, download_root, md5=None, **kwargs):
        import os
        os.makedirs(download_root, exist_ok=True)  # as torchvision does before downloading
        raise error

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", fake)


def test_download_without_network_raises_one_clear_error(tmp_path, monkeypatch):
    import urllib.error
    _fake_download(monkeypatch, urllib.error.URLError("[Errno -3] Temporary failure in name resolution"))
    with pytest.raises(data.DatasetDownloadError) as info:
        load_cifar10(tmp_path / "new" / "data", download=True)
    message = str(info.value)
    assert data.URL in message and str(tmp_path / "new" / "data") in message
    assert "name resolution" in message and "by hand" in message and "CLRLIB_DATA" in message
    assert isinstance(info.value.__cause__, urllib.error.URLError)
    assert list(tmp_path.iterdir()) == []  # the folders it made are gone again


def test_download_into_a_read_only_folder_raises_one_clear_error(tmp_path, monkeypatch):
    into = tmp_path / "ro"
    into.mkdir()
    into.chmod(0o555)  # root ignores this, hence the simulated PermissionError
    _fake_download(monkeypatch, PermissionError(13, "Permission denied", str(into / data.ARCHIVE)))
    with pytest.raises(data.DatasetDownloadError, match="permission") as info:
        load_cifar10(into, download=True)
    assert str(into) in str(info.value) and not isinstance(info.value, PermissionError)
    assert into.is_dir()  # it was there before: kept


@pytest.mark.parametrize("raises", [False, True])
def test_download_with_a_bad_checksum_names_and_removes_the_archive(tmp_path, monkeypatch, raises):
    import torchvision.datasets.utils as tv_utils
    written = []

    def junk_download(url, root, filename=None, md5=None, **kwargs):
        archive = tmp_path / root / (filename or data.ARCHIVE)
        archive.parent.mkdir(parents=True, exist_ok=True)
        archive.write_bytes(b"not the CIFAR-10 archive")
        written.append(archive)
        if raises:  # what torchvision's own MD5 check does after the download
            raise RuntimeError("File not found or corrupted.")

    monkeypatch.setattr(tv_utils, "download_url", junk_download)
    with pytest.raises(data.DatasetDownloadError, match="MD5") as info:
        load_cifar10(tmp_path / "fresh", download=True)
    assert written == [tmp_path / "fresh" / data.ARCHIVE]
    assert str(written[0]) in str(info.value) and "removed" in str(info.value)
    assert not written[0].exists()


# --- labels checked by the loader -------------------------------------------------------------------

@pytest.mark.parametrize("labels,kwargs,bad", [
    ("ten", {}, "got 10"), ("float", {}, "torch.float32"), ("nine", dict(num_classes=5), "got 9"),
    ("negative", {}, "got -1"), ("ok", dict(num_classes=0), "0"), ("ok", dict(num_classes=True), "True"),
    ("2d", {}, "(100, 1)"),
])
def test_loader_checks_labels(small, labels, kwargs, bad):
    x, y, _, _ = small
    y = {"ten": torch.where(torch.arange(100) == 17, 10, y), "float": y.float(),
         "nine": torch.where(torch.arange(100) == 3, 9, y % 5), "negative": torch.where(torch.arange(100) == 0, -1, y),
         "ok": y, "2d": y[:, None]}[labels]
    with pytest.raises(ValueError) as info:
        CifarLoader(x, y, batch_size=10, device="cpu", **kwargs)
    assert bad in str(info.value)


def test_loader_accepts_other_integer_labels_and_num_classes(small):
    x, y, _, _ = small
    loader = CifarLoader(x, (y % 3).to(torch.int32), batch_size=50, device="cpu", num_classes=3)
    assert loader.labels.dtype == torch.int64 and loader.num_classes == 3
    assert all(yb.dtype == torch.int64 for _, yb in loader)

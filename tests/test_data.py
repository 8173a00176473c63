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
    assert_same_arrays(load_cifar10(tmp_path), small)


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
    assert set(oy.tolist()) == set(range(9))
    assert set(ox.tolist()) == set(range(9))
    assert 0.4 < flipped.float().mean().item() < 0.6  # both flip states, about equally often


def test_augment_without_flip_and_other_pad():
    crops = augment(_coordinate_canvas(500, pad=2), torch.Generator().manual_seed(1), pad=2, flip=False)
    assert crops.shape == (500, 3, 32, 32)
    oy, ox, flipped = _decode(crops)
    assert not flipped.any()
    assert set(oy.tolist()) == set(range(5)) and set(ox.tolist()) == set(range(5))


def test_augment_on_a_reflection_padded_image():
    # a real image, reflection-padded as CifarLoader does; its pixels encode their coordinates
    img = (torch.arange(3 * 32 * 32, dtype=torch.float32) % 997).view(1, 3, 32, 32)
    padded = F.pad(img, (4, 4, 4, 4), mode="reflect")
    assert padded.shape == (1, 3, 40, 40)
    n = 40
    crops = augment(padded.expand(n, -1, -1, -1), torch.Generator().manual_seed(2))
    windows = [(oy, ox, fl) for oy in range(9) for ox in range(9) for fl in (False, True)]
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
def test_reflect_pad_matches_torch_and_keeps_uint8(pad):
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    padded = data.reflect_pad(images, pad)
    assert padded.dtype == torch.uint8 and padded.shape == (3, 3, 32 + 2 * pad, 32 + 2 * pad)
    expected = F.pad(images.float(), (pad,) * 4, mode="reflect").to(torch.uint8)
    assert torch.equal(padded, expected)
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

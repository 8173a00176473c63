"""CIFAR-10: reading the official "python version", a synthetic stand-in, and a loader
that keeps the whole data set on the device and augments it there.

The official files (``cifar-10-batches-py/data_batch_1..5``, ``test_batch``) are
Python-2 pickles of dicts whose ``data`` is a uint8 array of shape (10000, 3072): the
R, G and B planes of each 32x32 image one after the other.

Reading them is guarded: the pickles are opened with an unpickler that can build only
numpy arrays, lists, strings and numbers (nothing in a file can run code), and the data
is checked (dtype, shape, labels, the official counts, no file copied over another)
before anything is returned. The augmentation matches fastai 0.7, which the post used.
"""
from __future__ import annotations

import codecs
import functools
import hashlib
import io
import math
import os
import pickle
import urllib.error
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR10_CLASSES",
    "CifarArrays",
    "CifarFormatError",
    "DatasetNotFoundError",
    "DatasetDownloadError",
    "default_data_root",
    "find_cifar10",
    "load_cifar10",
    "synthetic_cifar10",
    "write_cifar10_folder",
    "CifarLoader",
    "augment",
    "reflect_pad",
    "steps_per_epoch",
]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
META_FILE = "batches.meta"
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
ARCHIVE = "cifar-10-python.tar.gz"
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
# The official counts: images per file, and images per class in each split.
IMAGES_PER_FILE = 10_000
PER_CLASS = {"train": 5_000, "test": 1_000}
# Key that write_cifar10_folder puts in batches.meta when the folder does not hold the
# official counts (a small test or smoke-run folder): load_cifar10(strict=None) then
# skips the count checks for that folder.
SMALL_MARKER = "clrlib_small"


class DatasetNotFoundError(FileNotFoundError):
    """CIFAR-10 is not where clrlib looked; the message says where it looked and how to get it."""


class DatasetDownloadError(RuntimeError):
    """Downloading CIFAR-10 failed; the message names the URL or folder, and what to do."""


class CifarFormatError(ValueError):
    """A CIFAR-10 file is there but unreadable, unsafe or malformed; the message names it."""


class CifarArrays(tuple):
    """``(x_train, y_train, x_test, y_test)``, plus where the data came from.

    Unpacks like a 4-tuple. ``source`` is a path or ``"synthetic"``; ``synthetic`` is
    True for :func:`synthetic_cifar10`'s data, so results made from it can say so.
    ``fingerprint`` identifies the content (see :attr:`fingerprint`).
    """

    def __new__(cls, arrays, source: str, synthetic: bool = False):
        self = super().__new__(cls, arrays)
        self.source = source
        self.synthetic = synthetic
        return self

    def __reduce__(self):
        return (CifarArrays, (tuple(self), self.source, self.synthetic))

    @property
    def name(self) -> str:
        """A label for figures and tables: "CIFAR-10" or "synthetic CIFAR-shaped data"."""
        return "synthetic CIFAR-shaped data" if self.synthetic else "CIFAR-10"

    @functools.cached_property
    def fingerprint(self) -> str:
        """The first 16 hex digits of a SHA-256 over the four tensors' dtypes, shapes and bytes.

        Computed once (on first use) and cached. It depends on the content and order of the
        images and labels only, not on where they were read from, so two runs with the same
        fingerprint saw the same data (about 0.2 s for the 60,000 CIFAR-10 images on two
        CPU cores).
        """
        digest = hashlib.sha256()
        for t in self:
            t = t.detach().cpu().contiguous()
            digest.update(f"{t.dtype}{tuple(t.shape)};".encode())
            digest.update(t.view(torch.uint8).numpy() if t.numel() else b"")
        return digest.hexdigest()[:16]


def default_data_root() -> Path:
    """``$CLRLIB_DATA`` if set, else the user cache folder (``$XDG_CACHE_HOME/clrlib``)."""
    if os.environ.get("CLRLIB_DATA"):
        return Path(os.environ["CLRLIB_DATA"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "clrlib"


def _candidates(root: Path) -> list[Path]:
    return [root / FOLDER, root] if root.name != FOLDER else [root]


def find_cifar10(root: str | os.PathLike | None = None) -> Path | None:
    """The ``cifar-10-batches-py`` folder under ``root`` (or ``root`` itself), or None."""
    base = Path(root).expanduser() if root is not None else default_data_root()
    for folder in _candidates(base):
        if (folder / TRAIN_FILES[0]).is_file():
            return folder
    return None


def not_found_message(base: Path) -> str:
    """Where clrlib looked for CIFAR-10 under ``base``, and how to get it."""
    looked = ", ".join(str(p) for p in _candidates(base))
    return (
        f"CIFAR-10 (python version) not found: looked for {FOLDER}/data_batch_1 in {looked}.\n"
        "To get it, either\n"
        "  - let clrlib download it (needs internet): load_cifar10(root, download=True), or\n"
        f"  - download {URL}, extract it and point clrlib at the folder holding {FOLDER}/\n"
        "    with the root argument, --data DIR, or the CLRLIB_DATA environment variable;\n"
        "  - on this project's machines: python3 ../shared/data/cifar10/unpack.py DIR, "
        "then CLRLIB_DATA=DIR.")


# --- reading the files safely ------------------------------------------------------------------

def _allowed_globals() -> dict[tuple[str, str], object]:
    """The only globals a CIFAR-10 pickle may name: numpy's array and dtype reconstructors.

    The official files need ``numpy.core.multiarray._reconstruct``, ``numpy.ndarray`` and
    ``numpy.dtype``; files pickled by Python 3 (protocol 2) add ``_codecs.encode`` for bytes,
    numpy 2 spells the module ``numpy._core``, and newer protocols use ``_frombuffer`` and
    ``scalar``. None of these can run a command or touch a file.
    """
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy < 2
        from numpy.core import multiarray, numeric
    allowed = {("_codecs", "encode"): codecs.encode, ("codecs", "encode"): codecs.encode}
    for module in ("numpy", "numpy.core", "numpy._core"):
        allowed[(f"{module}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{module}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{module}.numeric", "_frombuffer")] = numeric._frombuffer
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    return allowed


class _DirectArrayCall(Exception):
    """A pickle called numpy.ndarray itself (reported by ``_unpickle`` with the file's name)."""


class _ArrayClass:
    """What ``numpy.ndarray`` unpickles as: only ``_reconstruct``'s first argument. Called (or
    ``__new__``-ed), numpy.ndarray would allocate an array of any declared shape from a few bytes."""

    def __new__(cls, *args, **kwargs):
        raise _DirectArrayCall(f"its pickle calls numpy.ndarray{args!r} directly, which no CIFAR-10 file does")


def _declared_bytes(shape, dtype) -> int:
    """The bytes an array of ``shape`` and ``dtype`` needs (ValueError/TypeError if they are not valid)."""
    dims = [int(d) for d in shape] if isinstance(shape, (tuple, list)) else [int(shape)]
    if any(d < 0 for d in dims):
        raise ValueError(f"negative dimension in {shape!r}")
    return math.prod(dims) * np.dtype(dtype).itemsize


class _SafeUnpickler(pickle.Unpickler):
    """Unpickles only plain containers, strings, numbers and numpy arrays (see ``_allowed_globals``).

    An array is reconstructed only if its declared size fits in the file: a tiny file that
    declares a huge array is refused before anything is allocated (a real array's bytes are
    in the file).

    Args:
        file: the pickle's bytes, as a binary file.
        path: the file's name, for error messages.
        size: the file's size in bytes.
    """

    def __init__(self, file, path: Path, size: int) -> None:
        super().__init__(file, encoding="latin1")  # latin1: the official Python-2 pickles
        self.path, self.size = path, size
        self.allowed = _allowed_globals()
        for key, value in self.allowed.items():
            if key[1] == "_reconstruct":
                self.allowed[key] = functools.partial(self._reconstruct, value)
        self.allowed[("numpy", "ndarray")] = _ArrayClass

    def _reconstruct(self, reconstruct, subtype, shape, dtype):
        """numpy's ``_reconstruct(ndarray, shape, dtype)``, once the declared size is checked."""
        try:
            declared = _declared_bytes(shape, dtype)
        except (TypeError, ValueError, OverflowError) as e:
            raise CifarFormatError(f"malformed CIFAR-10 file {self.path}: it declares an array of shape {shape!r} "
                                   f"and dtype {dtype!r}, which is not valid ({e})") from e
        if subtype is not _ArrayClass:
            raise CifarFormatError(f"unsafe CIFAR-10 file {self.path}: it reconstructs an array of {subtype!r}")
        if declared > self.size:
            raise CifarFormatError(
                f"malformed CIFAR-10 file {self.path}: it declares an array of shape {tuple(shape)!r} and dtype "
                f"{np.dtype(dtype)} ({declared:,} bytes), more than the whole file holds ({self.size:,} bytes); "
                "refused before allocating it. Delete the folder and unpack or download the data again.")
        return reconstruct(np.ndarray, shape, dtype)

    def find_class(self, module: str, name: str):
        if (module, name) in self.allowed:
            return self.allowed[(module, name)]
        raise CifarFormatError(
            f"unsafe CIFAR-10 file {self.path}: its pickle asks for {module}.{name}, which no "
            "CIFAR-10 file holds (only numpy arrays, lists, strings and numbers are allowed), so "
            "it was not loaded and nothing in it ran. Delete it and unpack or download the data again.")

    def persistent_load(self, pid):
        raise CifarFormatError(f"unsafe CIFAR-10 file {self.path}: it holds a persistent id {pid!r}")


def _unpickle(path: Path) -> tuple[object, str]:
    """The object pickled in ``path`` (read with :class:`_SafeUnpickler`) and the file's SHA-256."""
    raw = path.read_bytes()
    try:
        entry = _SafeUnpickler(io.BytesIO(raw), path, len(raw)).load()
    except CifarFormatError:
        raise
    except _DirectArrayCall as e:
        raise CifarFormatError(f"unsafe CIFAR-10 file {path}: {e}; it was refused before allocating "
                               "anything. Delete it and unpack or download the data again.") from None
    except Exception as e:  # truncated file, not a pickle at all
        raise CifarFormatError(f"corrupt CIFAR-10 file {path}: {type(e).__name__}: {e}. "
                               "Delete the folder and unpack or download it again.") from e
    return entry, hashlib.sha256(raw).hexdigest()


def _check_images(path: Path, data) -> np.ndarray:
    """``data`` as uint8 of shape (N, 3072), or a CifarFormatError saying what is wrong with it."""
    if not isinstance(data, np.ndarray):
        raise CifarFormatError(f"malformed CIFAR-10 file {path}: 'data' is a {type(data).__name__}, "
                               "not a numpy array")
    if data.dtype.kind not in "iu":
        raise CifarFormatError(f"malformed CIFAR-10 file {path}: 'data' has dtype {data.dtype}; "
                               "CIFAR-10 pixels are uint8 (or integers in 0..255), not floats or other types")
    if data.ndim != 2 or data.shape[1] != 3072:
        hint = ("; it looks transposed" if data.ndim == 2 and data.shape[0] == 3072 else
                "; it looks like (N, 32, 32, 3) height-width-channel images" if data.shape[1:] == (32, 32, 3)
                else "")
        raise CifarFormatError(f"malformed CIFAR-10 file {path}: 'data' has shape {data.shape}, expected "
                               f"(N, 3072): one row of R, G and B 32x32 planes per image{hint}")
    if data.dtype != np.uint8 and data.size:
        outside = (data < 0) | (data > 255)
        if outside.any():
            row, col = np.argwhere(outside)[0]
            raise CifarFormatError(
                f"malformed CIFAR-10 file {path}: 'data' value {data[row, col]} (row {row}, column {col}, "
                f"dtype {data.dtype}) is outside the pixel range 0..255")
    return data.astype(np.uint8, copy=False)


def _first_non_integer(labels) -> tuple[int, object] | None:
    """Index and value of the first label that is not an integer (bools and whole floats are not)."""
    if isinstance(labels, np.ndarray):
        if labels.dtype.kind in "iu":
            return None
        flat = labels.ravel()
        if labels.dtype.kind == "f" and len(flat):
            fractional = np.flatnonzero(flat != np.round(flat))
            i = int(fractional[0]) if len(fractional) else 0
            return i, flat[i].item()
        labels = flat.tolist()
    for i, v in enumerate(labels):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            return i, v
    return None


def _check_labels(path: Path, labels, n: int) -> np.ndarray:
    """``labels`` as int64 of shape (n,), all in 0..9, or a CifarFormatError saying what is wrong."""
    if labels is None:
        raise CifarFormatError(f"malformed CIFAR-10 file {path}: no 'labels'")
    if not isinstance(labels, (list, tuple, np.ndarray)):
        raise CifarFormatError(f"malformed CIFAR-10 file {path}: 'labels' is a {type(labels).__name__}, "
                               "not a list or array")
    bad = _first_non_integer(labels)
    if bad is not None:
        raise CifarFormatError(f"malformed CIFAR-10 file {path}: labels must be integers, got {bad[1]!r} "
                               f"(label of image {bad[0]})")
    try:
        y = np.asarray(labels, dtype=np.int64) if len(labels) else np.zeros(0, np.int64)
    except OverflowError as e:
        raise CifarFormatError(f"malformed CIFAR-10 file {path}: a label is out of range ({e})") from e
    if y.ndim != 1 or len(y) != n:
        raise CifarFormatError(f"malformed CIFAR-10 file {path}: {n} images but labels of shape {y.shape}")
    outside = (y < 0) | (y > 9)
    if outside.any():
        i = int(np.argmax(outside))
        raise CifarFormatError(f"malformed CIFAR-10 file {path}: label {y[i]} (image {i}) is outside 0..9")
    return y


def _read_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Images (uint8 (N, 3, 32, 32)), labels (int64) and the file's SHA-256 of one batch file.

    Args:
        path: a ``data_batch_*`` or ``test_batch`` file.

    Raises:
        CifarFormatError: the file is unreadable, asks to run code, or its content is malformed.
    """
    entry, digest = _unpickle(path)
    if not isinstance(entry, dict) or "data" not in entry:
        what = f"a dict with keys {sorted(map(str, entry))}" if isinstance(entry, dict) else type(entry).__name__
        raise CifarFormatError(f"malformed CIFAR-10 file {path}: it holds {what}; expected a dict "
                               "with 'data' and 'labels'")
    data = _check_images(path, entry["data"])
    labels = _check_labels(path, entry.get("labels", entry.get("fine_labels")), len(data))
    x = torch.from_numpy(np.ascontiguousarray(data)).reshape(-1, 3, 32, 32)
    return x, torch.from_numpy(labels), digest


def _is_small_folder(folder: Path) -> bool:
    """Whether ``folder``'s batches.meta carries :data:`SMALL_MARKER` (written by write_cifar10_folder)."""
    path = folder / META_FILE
    if not path.is_file():
        return False
    try:
        meta, _ = _unpickle(path)
    except CifarFormatError:
        return False  # an unreadable meta file marks nothing: the strict checks apply
    return isinstance(meta, dict) and bool(meta.get(SMALL_MARKER))


def _has_official_counts(y: torch.Tensor, split: str) -> bool:
    return torch.bincount(y, minlength=10).tolist() == [PER_CLASS[split]] * 10


def _read_split(folder: Path, split: str, strict: bool,
                seen: dict[str, Path]) -> tuple[torch.Tensor, torch.Tensor]:
    """Read and check one split's files; ``seen`` maps file digests to files (duplicate check)."""
    files = TRAIN_FILES if split == "train" else TEST_FILES
    how = ("For a small folder of your own, write it with write_cifar10_folder or pass "
           "load_cifar10(..., strict=False).")
    xs, ys = [], []
    for name in files:
        path = folder / name
        x, y, digest = _read_batch(path)
        if digest in seen:
            raise CifarFormatError(f"corrupt CIFAR-10 folder: {path} is byte-identical to {seen[digest]} "
                                   "(a file copied over another). Unpack or download the data again.")
        seen[digest] = path
        if strict and len(y) != IMAGES_PER_FILE:
            raise CifarFormatError(f"CIFAR-10 file {path} holds {len(y)} images; the official files hold "
                                   f"{IMAGES_PER_FILE:,} each. {how}")
        xs.append(x)
        ys.append(y)
    x, y = torch.cat(xs), torch.cat(ys)
    if strict and not _has_official_counts(y, split):
        counts = torch.bincount(y, minlength=10).tolist()
        raise CifarFormatError(f"CIFAR-10 {split} files {', '.join(files)} in {folder} hold {counts} images "
                               f"per class; CIFAR-10 has {PER_CLASS[split]:,} of each. {how}")
    return x, y


# --- finding and downloading -------------------------------------------------------------------

def _check_root_is_a_folder(base: Path, root) -> None:
    if base.exists() and not base.is_dir():
        origin = "the root argument" if root is not None else "CLRLIB_DATA" if os.environ.get(
            "CLRLIB_DATA") else "the default data root"
        raise DatasetNotFoundError(
            f"{base} ({origin}) is a file, not a folder: point it at the folder that holds {FOLDER}/ "
            f"(or at {FOLDER}/ itself).")


def _remove_created(folder: Path, existing: Path) -> None:
    """Remove ``folder`` and its parents up to (not including) ``existing``, where they are empty."""
    try:
        while folder != existing and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
            folder = folder.parent
    except OSError:
        pass  # best effort: the download error that follows matters more


def _download_error(e: BaseException, into: Path, removed: Path | None) -> DatasetDownloadError:
    """The one error a failed download raises, saying what failed and what to do."""
    by_hand = (f"Or download {URL} by hand, extract it and point clrlib at the folder holding {FOLDER}/ "
               "(the root argument, --data DIR or CLRLIB_DATA).")
    if removed is not None:
        what = (f"the downloaded archive {removed} does not have the official MD5 {ARCHIVE_MD5} "
                "(a broken or tampered download); it was removed. Try again.")
    elif isinstance(e, PermissionError):
        what = (f"no permission to write into {into} ({e}). Pick a folder you can write to "
                "(the root argument or CLRLIB_DATA).")
    elif isinstance(e, (urllib.error.URLError, OSError)):
        what = f"could not download {URL} into {into} ({type(e).__name__}: {e}). No internet here?"
    else:
        what = f"downloading {URL} into {into} failed ({type(e).__name__}: {e})."
    return DatasetDownloadError(f"CIFAR-10 download failed: {what}\n{by_hand}")


def _download(base: Path) -> None:
    """Download the official archive (MD5-checked by torchvision) and extract it beside ``base``.

    Args:
        base: the data root asked for; when it names ``cifar-10-batches-py`` itself, the archive
            (which holds that folder) is extracted into its parent.

    Raises:
        DatasetDownloadError: no network, no permission, a checksum mismatch (the bad archive is
            removed) or any other failure; folders it created are removed again where empty.
    """
    from torchvision.datasets import utils as tv_utils
    into = base.parent if base.name == FOLDER else base
    existing = next(p for p in (into, *into.parents) if p.exists())
    try:
        tv_utils.download_and_extract_archive(URL, str(into), md5=ARCHIVE_MD5)
    except Exception as e:
        archive, removed = into / ARCHIVE, None
        if archive.is_file() and not tv_utils.check_integrity(str(archive), ARCHIVE_MD5):
            archive.unlink(missing_ok=True)
            removed = archive
        _remove_created(into, existing)
        raise _download_error(e, into, removed) from e


def load_cifar10(root: str | os.PathLike | None = None, download: bool = False,
                 strict: bool | None = None) -> CifarArrays:
    """Read CIFAR-10 from the official "python version" folder, and check it.

    Always checked, per file: it unpickles without naming anything but numpy arrays, lists,
    strings and numbers (a file that would run code is refused, unrun); ``data`` is uint8,
    or integers all in 0..255, of shape (N, 3072); the labels are N integers in 0..9; and
    no file is byte-identical to another. With ``strict``, also the official counts:
    10,000 images per file and 5,000 (train) / 1,000 (test) images of each class.

    Args:
        root: a folder holding ``cifar-10-batches-py/`` (or that folder itself). Default:
            ``$CLRLIB_DATA``, else the user cache folder ``~/.cache/clrlib``.
        download: if the folder is missing, fetch the official archive with torchvision's
            downloader (its MD5 is checked) and extract it under ``root``. Without it,
            nothing is created on disk.
        strict: check the official counts. None (default): yes, unless the folder's
            ``batches.meta`` carries the ``clrlib_small`` marker that
            :func:`write_cifar10_folder` writes for folders not of the official size.

    Returns:
        ``(x_train, y_train, x_test, y_test)`` as a :class:`CifarArrays`: uint8 tensors of
        shape (N, 3, 32, 32) and int64 labels (50,000 and 10,000 images).

    Raises:
        DatasetNotFoundError: no data where it looked (the message says where, and how to
            get it), or the root is a file.
        DatasetDownloadError: ``download=True`` and the download failed (no network, no
            permission, bad checksum).
        CifarFormatError: a file is there but unreadable, unsafe or malformed (a ValueError;
            the message names the file and what is wrong).

    Example:
        >>> x_train, y_train, x_test, y_test = load_cifar10("~/data")  # doctest: +SKIP
    """
    if strict not in (None, True, False):
        raise ValueError(f"strict must be None, True or False, got {strict!r}")
    base = Path(root).expanduser() if root is not None else default_data_root()
    _check_root_is_a_folder(base, root)
    folder = find_cifar10(base)
    if folder is None and download:
        _download(base)
        folder = find_cifar10(base)
        if folder is None:
            raise DatasetDownloadError(f"downloaded and extracted {URL}, but {base} still holds no "
                                       f"{FOLDER}/data_batch_1. " + not_found_message(base))
    if folder is None:
        raise DatasetNotFoundError(not_found_message(base))
    missing = [f for f in TRAIN_FILES + TEST_FILES if not (folder / f).is_file()]
    if missing:
        raise DatasetNotFoundError(
            f"incomplete CIFAR-10 folder {folder}: missing {', '.join(missing)}. "
            + not_found_message(base).split("\n", 1)[1])
    strict = not _is_small_folder(folder) if strict is None else strict
    seen: dict[str, Path] = {}
    parts = {split: _read_split(folder, split, strict, seen) for split in ("train", "test")}
    return CifarArrays((*parts["train"], *parts["test"]), source=str(folder))


def synthetic_cifar10(n_train: int = 2048, n_test: int = 512, num_classes: int = 10,
                      seed: int = 0) -> CifarArrays:
    """A small, seeded, learnable data set shaped like CIFAR-10 (uint8 (N,3,32,32), int64).

    Each class is a smooth random colour pattern; an image is its class pattern with a
    random brightness, a small random shift and pixel noise, so a CNN learns it in a
    few hundred steps but not in one. It is flagged ``synthetic`` so that nothing made
    from it can pass for CIFAR-10.
    """
    for name, value in (("n_train", n_train), ("n_test", n_test), ("num_classes", num_classes)):
        if not (isinstance(value, int) and value >= 1):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(num_classes, 3, 4, 4, generator=g)
    templates = F.interpolate(coarse, size=(40, 40), mode="bicubic", align_corners=False)

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, num_classes, (n,), generator=g)
        dx, dy = torch.randint(0, 9, (2, n), generator=g)
        rows = (dy[:, None] + torch.arange(32))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(32))[:, None, None, :]
        x = templates[y[:, None, None, None], torch.arange(3)[None, :, None, None], rows, cols]
        x = x * (0.6 + 0.8 * torch.rand(n, 1, 1, 1, generator=g))
        x = x + 0.25 * torch.randn(x.shape, generator=g)
        return (x.clamp(0, 1) * 255).round().to(torch.uint8), y

    return CifarArrays((*sample(n_train), *sample(n_test)), source="synthetic", synthetic=True)


def _check_arrays_to_write(split: str, x, y) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` and ``y`` as tensors if the official layout holds them faithfully, else a ValueError."""
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    if x.dtype != torch.uint8 or x.dim() != 4 or tuple(x.shape[1:]) != (3, 32, 32):
        hint = (": they look like (N, 32, 32, 3) height-width-channel images; permute HWC to CHW first, "
                "x.permute(0, 3, 1, 2)" if tuple(x.shape[1:]) == (32, 32, 3) else "")
        raise ValueError(f"write_cifar10_folder: the {split} images must be uint8 of shape (N, 3, 32, 32), "
                         f"got {x.dtype} of shape {tuple(x.shape)}{hint}")
    integer = not (y.is_floating_point() or y.is_complex() or y.dtype == torch.bool)
    if not integer or y.dim() != 1 or len(y) != len(x):
        raise ValueError(f"write_cifar10_folder: the {split} labels must be {len(x)} integers (one per image), "
                         f"got {y.dtype} of shape {tuple(y.shape)}")
    outside = (y < 0) | (y > 9)
    if outside.any():
        i = int(outside.nonzero()[0])
        raise ValueError(f"write_cifar10_folder: {split} label {int(y[i])} (image {i}) is outside 0..9")
    return x, y


def write_cifar10_folder(root: str | os.PathLike, arrays=None) -> Path:
    """Write images in the official "python version" layout under ``root/cifar-10-batches-py``.

    Used by the tests (a small folder that :func:`load_cifar10` reads back) and to hand
    synthetic data to code that expects files. Unless the arrays have the official counts
    (50,000 and 10,000 images, 5,000 and 1,000 per class), ``batches.meta`` gets the
    :data:`SMALL_MARKER` key, so that ``load_cifar10(strict=None)`` skips the count checks.

    Args:
        root: the folder to write ``cifar-10-batches-py/`` into (created if missing).
        arrays: ``(x_train, y_train, x_test, y_test)``; default a small synthetic set
            (100 and 20 images).

    Returns:
        The ``cifar-10-batches-py`` folder written.

    Raises:
        ValueError: for images that are not uint8 of shape (N, 3, 32, 32) (channels first: the
            files hold R, G and B planes, so (N, 32, 32, 3) images would come back scrambled),
            or labels that are not N integers in 0..9; nothing is written then.
    """
    x_train, y_train, x_test, y_test = arrays if arrays is not None else synthetic_cifar10(100, 20)
    x_train, y_train = _check_arrays_to_write("training", x_train, y_train)
    x_test, y_test = _check_arrays_to_write("test", x_test, y_test)
    folder = Path(root) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    chunks = torch.tensor_split(torch.arange(len(x_train)), len(TRAIN_FILES))

    def dump(name: str, x: torch.Tensor, y: torch.Tensor) -> None:
        entry = {"batch_label": name, "data": x.reshape(len(x), -1).numpy(),
                 "labels": y.tolist(), "filenames": [f"{name}_{i}.png" for i in range(len(y))]}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f, protocol=2)

    for name, idx in zip(TRAIN_FILES, chunks):
        dump(name, x_train[idx], y_train[idx])
    dump(TEST_FILES[0], x_test, y_test)
    meta = {"label_names": list(CIFAR10_CLASSES), "num_vis": 3072}
    if not (_has_official_counts(y_train, "train") and _has_official_counts(y_test, "test")):
        meta[SMALL_MARKER] = ("written by clrlib.write_cifar10_folder: not the official CIFAR-10 "
                              "counts, so load_cifar10 skips its count checks here")
    with open(folder / META_FILE, "wb") as f:
        pickle.dump(meta, f, protocol=2)
    return folder


# --- the on-device loader --------------------------------------------------------------------

def reflect_pad(images: torch.Tensor, pad: int) -> torch.Tensor:
    """Reflection padding of the last two dimensions as OpenCV's ``cv2.BORDER_REFLECT``.

    The edge pixel is repeated (``fedcba|abcdefgh|hgfedcb``): padded columns -4..-1 are
    columns 3, 2, 1, 0 and columns W..W+3 are W-1..W-4. This is the padding of fastai 0.7
    (``AddPadding(pad, mode=cv2.BORDER_REFLECT)``), which the post used; numpy calls it
    ``np.pad(mode="symmetric")``. Done by indexing, so uint8 images stay uint8 (no float
    copy of the whole data set).

    Args:
        images: (..., H, W) images of any dtype.
        pad: pixels added on each side; must be smaller than H and W.
    """
    def index(size: int) -> torch.Tensor:
        if pad >= size:
            raise ValueError(f"pad must be smaller than the image size {size}, got {pad!r}")
        i = torch.arange(-pad, size + pad, device=images.device)
        return torch.where(i < 0, -1 - i, torch.where(i >= size, 2 * size - 1 - i, i))

    return images[..., index(images.shape[-2])[:, None], index(images.shape[-1])]


def augment(x_padded: torch.Tensor, generator: torch.Generator | None = None, pad: int = 4,
            flip: bool = True) -> torch.Tensor:
    """Random crop of the original size from padded images, and a random horizontal flip.

    As fastai 0.7's ``RandomCrop`` then ``RandomFlip``: a crop starts at ``floor(u * 2*pad)``
    for a uniform u, so at offsets 0..2*pad-1 (8 positions per axis for pad 4; the offset
    2*pad, flush with the far edge, is never drawn), each axis independently.

    Args:
        x_padded: (N, C, H+2*pad, W+2*pad) images, already padded (see :func:`reflect_pad`).
        generator: the random source (on the same device as ``x_padded``).
        pad: the padding on each side; crops start at offsets 0..2*pad-1 in each direction.
        flip: also flip each image horizontally with probability 1/2.
    """
    n, c, hp, wp = x_padded.shape
    h, w = hp - 2 * pad, wp - 2 * pad
    dev = x_padded.device
    offsets = torch.randint(0, max(2 * pad, 1), (2, n), generator=generator, device=dev)
    rows = (offsets[0, :, None] + torch.arange(h, device=dev))[:, None, :, None]
    cols = offsets[1, :, None] + torch.arange(w, device=dev)
    if flip:
        flipped = torch.rand(n, generator=generator, device=dev) < 0.5
        cols = torch.where(flipped[:, None], cols.flip(1), cols)
    cols = cols[:, None, None, :]
    return x_padded[torch.arange(n, device=dev)[:, None, None, None],
                    torch.arange(c, device=dev)[None, :, None, None], rows, cols]


def steps_per_epoch(n_images: int, batch_size: int, drop_last: bool) -> int:
    """Batches in one pass over ``n_images``: ``n // b`` with ``drop_last``, else ``ceil(n / b)``.

    fastai 0.7 (the post) kept the last partial batch: 50,000 images at batch size 512 are
    98 steps (97 full batches and one of 336); dropping it gives 97.

    Args:
        n_images: images in the epoch (a non-negative integer).
        batch_size: images per batch (a positive integer).
        drop_last: drop the last batch when it is smaller than ``batch_size``.
    """
    if isinstance(n_images, bool) or not (isinstance(n_images, int) and n_images >= 0):
        raise ValueError(f"n_images must be a non-negative integer, got {n_images!r}")
    if isinstance(batch_size, bool) or not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not isinstance(drop_last, bool):
        raise ValueError(f"drop_last must be True or False, got {drop_last!r}")
    return n_images // batch_size if drop_last else -(-n_images // batch_size)


_INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _check_loader_args(images, labels, batch_size, subset, pad, num_classes) -> None:
    """Raise a ValueError echoing the first bad argument of :class:`CifarLoader`."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be uint8 of shape (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
    if not isinstance(labels, torch.Tensor) or labels.ndim != 1:
        what = f"shape {tuple(labels.shape)}" if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"labels must be a 1-d torch tensor, got {what}")
    if len(labels) != len(images):
        raise ValueError(f"got {len(images)} images but {len(labels)} labels")
    if isinstance(batch_size, bool) or not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if subset is not None and not (isinstance(subset, int) and 1 <= subset <= len(images)):
        raise ValueError(f"subset must be an integer in [1, {len(images)}], got {subset!r}")
    if not (isinstance(pad, int) and pad >= 0):
        raise ValueError(f"pad must be a non-negative integer, got {pad!r}")
    if isinstance(num_classes, bool) or not (isinstance(num_classes, int) and num_classes >= 1):
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if labels.dtype not in _INTEGER_DTYPES:
        raise ValueError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    if len(labels):
        outside = (labels < 0) | (labels >= num_classes)
        if outside.any():
            i = int(outside.int().argmax())
            raise ValueError(f"labels must lie in 0..{num_classes - 1} (num_classes={num_classes}), "
                             f"got {int(labels[i])} (label of image {i})")


class CifarLoader:
    """Batches of CIFAR images from tensors kept on the device, augmented there.

    The uint8 images move to ``device`` once (reflection-padded once if augmenting);
    every epoch draws a seeded permutation, then each batch is cropped, flipped and
    normalised by the CIFAR-10 mean and std on the device, with no CPU workers. The
    labels are checked when the loader is built (integers in 0..num_classes-1).

    Args:
        images: uint8 (N, 3, 32, 32); labels: integer (N,), returned as int64.
        batch_size: images per batch.
        train: shuffle, augment and drop the last partial batch (each can be overridden).
        device: where data and batches live (default: the best available).
        seed: seeds the shuffling and augmentation; same seed, same batches.
        subset: use only a seeded random subset of this many images.
        augment / shuffle / drop_last: default to ``train``. fastai 0.7 (the post) kept the
            last partial batch: pass ``drop_last=False`` for its step count
            (see :func:`steps_per_epoch`).
        pad: reflection padding for the random crop (the post: 4); see :func:`augment`.
        channels_last: return batches in channels-last memory format.
        num_classes: labels must lie in 0..num_classes-1.

    Example:
        >>> x, y, *_ = synthetic_cifar10(64, 8)
        >>> loader = CifarLoader(x, y, batch_size=16, device="cpu")
        >>> len(loader), next(iter(loader))[0].shape
        (4, torch.Size([16, 3, 32, 32]))
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 512,
                 train: bool = True, device: str | torch.device | None = None, seed: int = 0,
                 subset: int | None = None, augment: bool | None = None, shuffle: bool | None = None,
                 drop_last: bool | None = None, pad: int = 4, channels_last: bool = False,
                 num_classes: int = 10) -> None:
        _check_loader_args(images, labels, batch_size, subset, pad, num_classes)
        from .train import default_device
        self.device = torch.device(device) if device is not None else default_device()
        self.batch_size = batch_size
        self.augment = train if augment is None else augment
        self.shuffle = train if shuffle is None else shuffle
        self.drop_last = bool(train if drop_last is None else drop_last)
        self.pad = pad
        self.num_classes = num_classes
        self.channels_last = channels_last
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        if subset is not None:
            pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:subset]
            images, labels = images[pick], labels[pick]
        images = images.to(self.device)
        if self.augment and pad:
            images = reflect_pad(images, pad)
        self.images = images
        self.labels = labels.to(self.device, torch.int64)
        self.mean = torch.tensor(CIFAR10_MEAN, device=self.device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(CIFAR10_STD, device=self.device).view(1, 3, 1, 1) * 255

    def __len__(self) -> int:
        return steps_per_epoch(len(self.labels), self.batch_size, self.drop_last)

    @property
    def num_images(self) -> int:
        return len(self.labels)

    def state_dict(self) -> dict:
        """The random state of the shuffling and augmentation (the next epoch's batches)."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`: the next epoch draws the batches it would have drawn."""
        self.generator.set_state(state["generator"])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.labels)
        order = (torch.randperm(n, generator=self.generator, device=self.device)
                 if self.shuffle else torch.arange(n, device=self.device))
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            x = self.images[idx]
            if self.augment:
                x = augment(x, self.generator, pad=self.pad)
            x = (x.float() - self.mean) / self.std
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.labels[idx]


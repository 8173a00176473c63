"""CIFAR-10: reading the official "python version", a synthetic stand-in, and a loader
that keeps the whole data set on the device and augments it there.

The official files (``cifar-10-batches-py/data_batch_1..5``, ``test_batch``) are
Python-2 pickles of dicts whose ``data`` is a uint8 array of shape (10000, 3072): the
R, G and B planes of each 32x32 image one after the other.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR10_CLASSES",
    "CifarArrays",
    "DatasetNotFoundError",
    "default_data_root",
    "find_cifar10",
    "load_cifar10",
    "synthetic_cifar10",
    "write_cifar10_folder",
    "CifarLoader",
    "augment",
]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"


class DatasetNotFoundError(FileNotFoundError):
    """CIFAR-10 is not where clrlib looked; the message says where it looked and how to get it."""


class CifarArrays(tuple):
    """``(x_train, y_train, x_test, y_test)``, plus where the data came from.

    Unpacks like a 4-tuple. ``source`` is a path or ``"synthetic"``; ``synthetic`` is
    True for :func:`synthetic_cifar10`'s data, so results made from it can say so.
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


def _read_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
        data, labels = entry["data"], entry.get("labels", entry.get("fine_labels"))
        x = torch.as_tensor(data, dtype=torch.uint8).reshape(-1, 3, 32, 32)
        y = torch.as_tensor(labels, dtype=torch.int64)
    except FileNotFoundError:
        raise
    except Exception as e:  # truncated file, wrong format, missing keys, bad shape
        raise ValueError(f"corrupt CIFAR-10 file {path}: {type(e).__name__}: {e}. "
                         "Delete the folder and unpack or download it again.") from e
    if len(x) != len(y) or (len(y) and (y.min() < 0 or y.max() > 9)):
        raise ValueError(f"corrupt CIFAR-10 file {path}: {len(x)} images but {len(y)} labels "
                         f"in range [{int(y.min()) if len(y) else '-'}, {int(y.max()) if len(y) else '-'}]")
    return x, y


def load_cifar10(root: str | os.PathLike | None = None, download: bool = False) -> CifarArrays:
    """Read CIFAR-10 from the official "python version" folder.

    Args:
        root: a folder holding ``cifar-10-batches-py/`` (or that folder itself). Default:
            ``$CLRLIB_DATA``, else the user cache folder ``~/.cache/clrlib``.
        download: if the folder is missing, fetch the official archive with torchvision's
            downloader (its MD5 is checked) and extract it under ``root``.

    Returns:
        ``(x_train, y_train, x_test, y_test)`` as a :class:`CifarArrays`: uint8 tensors of
        shape (N, 3, 32, 32) and int64 labels (50,000 and 10,000 images).

    Raises:
        DatasetNotFoundError: no data where it looked (the message says where, and how to get it).
        ValueError: a file is there but unreadable or malformed (the message names it).

    Example:
        >>> x_train, y_train, x_test, y_test = load_cifar10("~/data")  # doctest: +SKIP
    """
    base = Path(root).expanduser() if root is not None else default_data_root()
    folder = find_cifar10(base)
    if folder is None and download:
        from torchvision.datasets.utils import download_and_extract_archive
        # the archive holds cifar-10-batches-py/: extract beside it if root names that folder
        into = base.parent if base.name == FOLDER else base
        download_and_extract_archive(URL, str(into), md5=ARCHIVE_MD5)
        folder = find_cifar10(base)
    if folder is None:
        raise DatasetNotFoundError(not_found_message(base))
    parts = {}
    for split, files in (("train", TRAIN_FILES), ("test", TEST_FILES)):
        missing = [f for f in files if not (folder / f).is_file()]
        if missing:
            raise DatasetNotFoundError(
                f"incomplete CIFAR-10 folder {folder}: missing {', '.join(missing)}. "
                + not_found_message(base).split("\n", 1)[1])
        xs, ys = zip(*(_read_batch(folder / f) for f in files))
        parts[split] = torch.cat(xs), torch.cat(ys)
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


def write_cifar10_folder(root: str | os.PathLike, arrays=None) -> Path:
    """Write images in the official "python version" layout under ``root/cifar-10-batches-py``.

    Used by the tests (a small folder that :func:`load_cifar10` reads back) and to hand
    synthetic data to code that expects files. ``arrays`` defaults to a small synthetic set.
    """
    x_train, y_train, x_test, y_test = arrays if arrays is not None else synthetic_cifar10(100, 20)
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
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(CIFAR10_CLASSES), "num_vis": 3072}, f, protocol=2)
    return folder


# --- the on-device loader --------------------------------------------------------------------

def reflect_pad(images: torch.Tensor, pad: int) -> torch.Tensor:
    """Reflection padding of the last two dimensions (edge pixel not repeated), in any dtype.

    Done by indexing, so uint8 images stay uint8 (no float copy of the whole data set).
    """
    def index(size: int) -> torch.Tensor:
        if pad >= size:
            raise ValueError(f"pad must be smaller than the image size {size}, got {pad!r}")
        i = torch.arange(-pad, size + pad, device=images.device).abs()
        return torch.where(i >= size, 2 * (size - 1) - i, i)

    return images[..., index(images.shape[-2])[:, None], index(images.shape[-1])]


def augment(x_padded: torch.Tensor, generator: torch.Generator | None = None, pad: int = 4,
            flip: bool = True) -> torch.Tensor:
    """Random crop of the original size from reflection-padded images, and a random flip.

    Args:
        x_padded: (N, C, H+2*pad, W+2*pad) images, already padded.
        generator: the random source (on the same device as ``x_padded``).
        pad: the padding on each side; crops start at offsets 0..2*pad in each direction.
        flip: also flip each image horizontally with probability 1/2.
    """
    n, c, hp, wp = x_padded.shape
    h, w = hp - 2 * pad, wp - 2 * pad
    dev = x_padded.device
    offsets = torch.randint(0, 2 * pad + 1, (2, n), generator=generator, device=dev)
    rows = (offsets[0, :, None] + torch.arange(h, device=dev))[:, None, :, None]
    cols = offsets[1, :, None] + torch.arange(w, device=dev)
    if flip:
        flipped = torch.rand(n, generator=generator, device=dev) < 0.5
        cols = torch.where(flipped[:, None], cols.flip(1), cols)
    cols = cols[:, None, None, :]
    return x_padded[torch.arange(n, device=dev)[:, None, None, None],
                    torch.arange(c, device=dev)[None, :, None, None], rows, cols]


class CifarLoader:
    """Batches of CIFAR images from tensors kept on the device, augmented there.

    The uint8 images move to ``device`` once (reflection-padded once if augmenting);
    every epoch draws a seeded permutation, then each batch is cropped, flipped and
    normalised by the CIFAR-10 mean and std on the device, with no CPU workers.

    Args:
        images: uint8 (N, 3, 32, 32); labels: int64 (N,).
        batch_size: images per batch.
        train: shuffle, augment and drop the last partial batch (each can be overridden).
        device: where data and batches live (default: the best available).
        seed: seeds the shuffling and augmentation; same seed, same batches.
        subset: use only a seeded random subset of this many images.
        augment / shuffle / drop_last: default to ``train``.
        pad: reflection padding for the random crop (the post: 4).
        channels_last: return batches in channels-last memory format.

    Example:
        >>> x, y, *_ = synthetic_cifar10(64, 8)
        >>> loader = CifarLoader(x, y, batch_size=16, device="cpu")
        >>> len(loader), next(iter(loader))[0].shape
        (4, torch.Size([16, 3, 32, 32]))
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 512,
                 train: bool = True, device: str | torch.device | None = None, seed: int = 0,
                 subset: int | None = None, augment: bool | None = None, shuffle: bool | None = None,
                 drop_last: bool | None = None, pad: int = 4, channels_last: bool = False) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be uint8 of shape (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
        if len(labels) != len(images):
            raise ValueError(f"got {len(images)} images but {len(labels)} labels")
        if not (isinstance(batch_size, int) and batch_size >= 1):
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if subset is not None and not (isinstance(subset, int) and 1 <= subset <= len(images)):
            raise ValueError(f"subset must be an integer in [1, {len(images)}], got {subset!r}")
        if not (isinstance(pad, int) and pad >= 0):
            raise ValueError(f"pad must be a non-negative integer, got {pad!r}")
        from .train import default_device
        self.device = torch.device(device) if device is not None else default_device()
        self.batch_size = batch_size
        self.augment = train if augment is None else augment
        self.shuffle = train if shuffle is None else shuffle
        self.drop_last = train if drop_last is None else drop_last
        self.pad = pad
        self.channels_last = channels_last
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        if subset is not None:
            pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:subset]
            images, labels = images[pick], labels[pick]
        images = images.to(self.device)
        if self.augment and pad:
            images = reflect_pad(images, pad)
        self.images = images
        self.labels = labels.to(self.device)
        self.mean = torch.tensor(CIFAR10_MEAN, device=self.device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(CIFAR10_STD, device=self.device).view(1, 3, 1, 1) * 255

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    @property
    def num_images(self) -> int:
        return len(self.labels)

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


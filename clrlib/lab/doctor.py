"""``python -m clrlib doctor``: check, in a minute or two, every path that depends on the device.

Before a long run on a machine one has for a short while (a GPU lent for half an hour), this
runs each device-dependent piece once, small, and prints a table: the device and versions;
bf16 and channels-last; the data loader on the device (same seed, same augmented batch); the
range test restoring weights, BatchNorm buffers and optimizer state bit for bit; a short
compiled training run against eager (loss agreement, number of compiled graphs); seconds per
epoch eager and compiled; and the projected time of each profile on this device. It exits
non-zero, naming the failed check, if any check fails.
"""
from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F

from .. import data as _data
from .. import finder as _finder
from .. import train as _train
from ..models import resnet_cifar
from .provenance import machine_info
from ..schedules import one_cycle
from .runner import gather
from .specs import TrainSpec

__all__ = ["run_doctor", "profile_epochs", "Check"]


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def profile_epochs(profile: str) -> float:
    """The training work of ``profile``, in epochs of ResNet-56 over all 50,000 CIFAR-10 images.

    The sum over the training runs of the profile's plans (:mod:`clrlib.lab.plans`), each distinct
    run once (05's cyclical runs are 03's and 04's, 07's hand-picked ones 03's or 04's), with the
    runs a later stage will add as the plan declares them (07's recipe runs). An epoch of another
    depth counts by its residual blocks, (depth - 2) / 54, and of a subset by its share of the
    images; the batch size is not modelled, nor are range tests and evaluation.
    """
    work, seen = 0.0, set()
    for plan in gather(profile):
        for spec in plan.specs():
            if isinstance(spec, TrainSpec) and spec not in seen:
                seen.add(spec)
                work += _resnet56_epochs(spec.epochs, spec.model.depth, spec.data.n_train)
        work += sum(_resnet56_epochs(r.epochs, r.depth, r.n_train) for r in plan.pending)
    return work


def _resnet56_epochs(epochs: int, depth: int, n_train: int) -> float:
    return epochs * (depth - 2) / 54 * n_train / 50_000


def _size(full: bool, device: torch.device) -> dict:
    if full:
        return dict(depth=56, images=50_000, batch=512)
    return dict(depth=8, images=1024, batch=128)


def _loader(size: dict, device, seed: int = 0, channels_last: bool = False) -> _data.CifarLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (size["images"], 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (size["images"],), generator=g)
    return _data.CifarLoader(x, y, batch_size=size["batch"], device=device, seed=seed, drop_last=False,
                             channels_last=channels_last)


def check_loader(size, device) -> str:
    a, b = next(iter(_loader(size, device, seed=3))), next(iter(_loader(size, device, seed=3)))
    c = next(iter(_loader(size, device, seed=4)))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]), "same seed gave different batches"
    assert not torch.equal(a[0], c[0]), "another seed gave the same batch"
    return f"batch {tuple(a[0].shape)} on {a[0].device}, reproducible for a seed"


def check_finder_restores(size, device, precision) -> str:
    model = resnet_cifar(size["depth"], init="post").to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    loader = _loader(size, device)
    _train.fit(model, loader, 1, optimizer=opt, device=device, precision=precision, compile=False, progress=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    moms = [s["momentum_buffer"].clone() for s in opt.state.values()]
    result = _finder.lr_find(model, F.cross_entropy, loader, opt, start_lr=1e-4, end_lr=10, num_it=8,
                             precision=precision)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "weights/buffers changed"
    assert all(torch.equal(m, s["momentum_buffer"]) for m, s in zip(moms, opt.state.values())), "optimizer changed"
    return f"{len(result)} iterations, weights, BN buffers and momentum restored bit for bit"


def _timed_fit(size, device, precision, compile, epochs) -> tuple[list[float], list[float], float]:
    torch.manual_seed(0)
    model = resnet_cifar(size["depth"], init="post")
    loader = _loader(size, device, channels_last=_train.default_channels_last(device, precision))
    sched = partial(one_cycle, total_steps=epochs * len(loader), max_lr=0.4)
    start = time.perf_counter()
    hist = _train.fit(model, loader, epochs, sched, device=device, precision=precision, compile=compile,
                      progress=False)
    total = time.perf_counter() - start
    return hist["loss"].tolist(), _train.epoch_table(hist)["seconds"].tolist(), total


def check_compiled(size, device, precision, epochs: int = 3) -> tuple[str, float, float]:
    from torch._dynamo.utils import counters
    mode = _train.resolve_compile(True, device)
    eager_loss, eager_s, _ = _timed_fit(size, device, precision, False, epochs)
    graphs = counters["stats"]["unique_graphs"]
    fast_loss, fast_s, _ = _timed_fit(size, device, precision, mode, epochs)
    first = counters["stats"]["unique_graphs"] - graphs
    _timed_fit(size, device, precision, mode, 1)  # a new model of the same architecture
    again = counters["stats"]["unique_graphs"] - graphs - first
    k = min(20, len(eager_loss))
    diff = max(abs(a - b) / max(abs(a), 1e-6) for a, b in zip(eager_loss[:k], fast_loss[:k]))
    tol = 0.05 if precision == "bf16" else 1e-2
    assert diff < tol, f"compiled and eager losses differ by {diff:.3g} (relative) in the first {k} steps"
    assert again == 0, f"a new model of the same architecture compiled {again} more graph(s)"
    eager, fast = min(eager_s[1:] or eager_s), min(fast_s[1:] or fast_s)
    return (f"mode {mode}: loss within {diff:.2g} of eager over {k} steps; {first} graph(s), "
            f"0 more for a new model", eager, fast)


def run_doctor(full: bool = False, device: str | None = None, log: Callable[[str], None] = print) -> int:
    """Run the checks, print the table; 0 if all passed, 1 otherwise."""
    from ..device import resolve_device
    try:
        device = resolve_device(device)  # "cuda" without CUDA: named, with what this machine has
    except ValueError as e:
        log(f"error: doctor --device: {e}")
        return 2
    precision = _train.default_precision(device)
    size = _size(full, device)
    info = machine_info(device)
    checks = [Check("device", True, f"{info['device_name']}, torch {info['torch']}, precision {precision}, "
                    f"channels-last {_train.default_channels_last(device, precision)}")]
    timing = {}

    def attempt(name, fn):
        try:
            out = fn()
            if isinstance(out, tuple):
                out, timing["eager"], timing["fast"] = out
            checks.append(Check(name, True, out))
        except Exception as e:  # report every failure, keep checking the rest
            checks.append(Check(name, False, f"{type(e).__name__}: {e}"))
            traceback.print_exc()

    attempt("data loader", lambda: check_loader(size, device))
    attempt("range test restores", lambda: check_finder_restores(size, device, precision))
    attempt("compiled vs eager", lambda: check_compiled(size, device, precision))
    if timing:
        checks.append(Check("seconds per epoch", True, f"eager {timing['eager']:.2f}, compiled {timing['fast']:.2f} "
                            f"(ResNet-{size['depth']}, {size['images']} images, batch {size['batch']})"))
        if full:
            for profile in ("full",):
                epochs = profile_epochs(profile)
                checks.append(Check(f"projected: {profile} profile", True,
                                    f"{epochs:.0f} ResNet-56 epochs x {timing['fast']:.2f} s = "
                                    f"{epochs * timing['fast'] / 60:.0f} min of training (range tests and "
                                    "evaluation extra)"))
    width = max(len(c.name) for c in checks)
    for c in checks:
        log(f"{'ok  ' if c.ok else 'FAIL'} {c.name:<{width}}  {c.detail}")
    failed = [c.name for c in checks if not c.ok]
    log("all checks passed" if not failed else f"failed: {', '.join(failed)}")
    return 1 if failed else 0

"""A small training loop with a per-batch schedule and a per-step log.

:func:`fit` trains any classifier with a schedule from :mod:`clrlib.schedules`,
evaluates on the test set after every epoch and returns the whole history as one
pandas DataFrame: a row per optimizer step (``step, epoch, lr, momentum, loss``), the
last row of each epoch also carrying ``train_loss, test_loss, test_acc, seconds``.
:func:`epoch_table` selects those rows. Plots in :mod:`clrlib.plots` are drawn from it.
"""
from __future__ import annotations

import contextlib
from functools import partial
import math
import random
import time
import warnings
from typing import Callable, Iterable

import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from .schedules import ScheduleFn, Scheduler, constant, group_momentum

__all__ = ["default_device", "seed_everything", "autocast", "train_step", "evaluate", "fit",
           "epoch_table", "STEP_COLUMNS", "EPOCH_COLUMNS"]

STEP_COLUMNS = ("step", "epoch", "lr", "momentum", "loss")
EPOCH_COLUMNS = ("train_loss", "test_loss", "test_acc", "seconds")


def default_device() -> torch.device:
    """CUDA if available, then Apple's MPS, then the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    """Seed Python's, and torch's CPU and CUDA generators (for weight init and dropout)."""
    random.seed(seed)
    torch.manual_seed(seed)


def autocast(device: torch.device, enabled: bool | None = None):
    """bf16 autocast on CUDA (default), nothing elsewhere unless ``enabled`` is True."""
    device = torch.device(device)
    if enabled is None:
        enabled = device.type == "cuda"
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def model_device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def training_modes(model: nn.Module) -> list[tuple[nn.Module, bool]]:
    """Every submodule's train/eval flag, so that they can be put back exactly (a frozen BN stays frozen)."""
    return [(m, m.training) for m in model.modules()]


def restore_training_modes(modes: list[tuple[nn.Module, bool]]) -> None:
    """Put back what :func:`training_modes` saved."""
    for module, flag in modes:
        module.training = flag


def train_step(model: Callable, loss_fn: Callable, optimizer: torch.optim.Optimizer,
               x: torch.Tensor, y: torch.Tensor,
               amp: contextlib.AbstractContextManager | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on a batch; returns the loss (0-d) and the output, detached.

    ``amp`` is the autocast context to run the forward pass in (see :func:`autocast`), or None.
    Nothing is copied to the host, so the caller decides when to synchronise.
    """
    optimizer.zero_grad(set_to_none=True)
    with amp if amp is not None else contextlib.nullcontext():
        out = model(x)
        loss = loss_fn(out, y)
    loss.backward()
    optimizer.step()
    return loss.detach(), out.detach()


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable, loss_fn: Callable | None = None,
             amp: bool | None = None) -> tuple[float, float]:
    """Mean loss and accuracy (a fraction) of ``model`` over ``batches``, in eval mode."""
    device = model_device(model)
    loss_fn = loss_fn or F.cross_entropy
    modes = training_modes(model)
    model.eval()
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    count = 0
    with autocast(device, amp):
        for x, y in batches:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            out = model(x)
            total_loss += loss_fn(out.float(), y) * len(y)
            correct += (out.argmax(1) == y).sum()
            count += len(y)
    restore_training_modes(modes)
    if count == 0:
        raise ValueError("evaluate got no batches")
    return total_loss.item() / count, correct.item() / count


def fit(model: nn.Module, train_loader, epochs: int, schedule: ScheduleFn | None = None,
        optimizer: torch.optim.Optimizer | None = None, *, lr: float = 0.1, momentum: float = 0.9,
        weight_decay: float = 1e-4, test_loader=None, loss_fn: Callable | None = None,
        device: str | torch.device | None = None, amp: bool | None = None,
        channels_last: bool | None = None, compile: bool = False, seed: int | None = None,
        progress: bool = True, stop_on_divergence: bool = True) -> pd.DataFrame:
    """Train ``model`` for ``epochs`` epochs, stepping the schedule every batch.

    Args:
        model: the network; it is moved to ``device``.
        train_loader: re-iterable batches ``(x, y)`` with a ``len()``, e.g. :class:`clrlib.data.CifarLoader`.
        epochs: number of passes over ``train_loader``.
        schedule: ``step -> lr`` or ``step -> (lr, momentum)`` over the ``epochs * len(train_loader)``
            steps, e.g. ``partial(one_cycle, total_steps=..., max_lr=0.8)``. Default: constant ``lr``.
        optimizer: default ``SGD(lr, momentum, weight_decay)`` over all parameters.
        lr, momentum, weight_decay: settings of the default optimizer; without a schedule the LR
            stays ``lr`` (or the given optimizer's own LR).
        test_loader: batches to evaluate on after every epoch (the post uses the test set).
        loss_fn: default cross-entropy.
        device: default: CUDA, then MPS, then CPU.
        amp: bf16 autocast; default on for CUDA only.
        channels_last: channels-last memory format; default on for CUDA only.
        compile: wrap the model in ``torch.compile``.
        seed: if given, seeds torch before training (see also :func:`seed_everything`).
        progress: show a tqdm progress bar with the loss and LR.
        stop_on_divergence: stop at the end of an epoch whose training loss is not finite.

    Returns:
        A DataFrame with a row per step: ``step, epoch, lr, momentum, loss`` (``epoch`` is
        fractional: steps done / steps per epoch, so the last step of epoch 1 is 1.0), and on
        each epoch's last row ``train_loss, test_loss, test_acc, seconds``
        (``seconds``: training time of that epoch). See :func:`epoch_table`.

    Example:
        >>> from functools import partial
        >>> from clrlib import data, models, schedules
        >>> x, y, xt, yt = data.synthetic_cifar10(256, 64)
        >>> train = data.CifarLoader(x, y, batch_size=64, device="cpu")
        >>> test = data.CifarLoader(xt, yt, batch_size=64, train=False, device="cpu")
        >>> sched = partial(schedules.one_cycle, total_steps=2 * len(train), max_lr=0.5)
        >>> hist = fit(models.resnet_cifar(8), train, 2, sched, test_loader=test, progress=False)
        >>> len(hist), list(epoch_table(hist).index)
        (8, [1, 2])
    """
    if not (isinstance(epochs, int) and epochs >= 1):
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    steps_per_epoch = len(train_loader)
    if steps_per_epoch < 1:
        raise ValueError(f"train_loader yields no batches (len(train_loader) = {steps_per_epoch})")
    device = torch.device(device) if device is not None else default_device()
    if channels_last is None:
        channels_last = device.type == "cuda"
    if seed is not None:
        seed_everything(seed)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if optimizer is None:
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                                    weight_decay=weight_decay)
    elif schedule is None:
        lr = float(optimizer.param_groups[0]["lr"])
    scheduler = Scheduler(optimizer, schedule if schedule is not None else partial(constant, lr=lr))
    loss_fn = loss_fn or F.cross_entropy
    run_model = torch.compile(model) if compile else model
    amp_ctx = autocast(device, amp)
    total = epochs * steps_per_epoch

    rows: dict[str, list] = {c: [] for c in STEP_COLUMNS + EPOCH_COLUMNS}
    bar = _progress_bar(total, progress)
    step = 0
    for epoch in range(1, epochs + 1):
        model.train()
        start = time.perf_counter()
        losses = torch.empty(steps_per_epoch, device=device)
        n = 0
        for x, y in train_loader:
            if n == steps_per_epoch:
                break
            group = optimizer.param_groups[0]
            rows["lr"].append(float(group["lr"]))
            rows["momentum"].append(group_momentum(group))
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            losses[n] = train_step(run_model, loss_fn, optimizer, x, y, amp_ctx)[0]
            scheduler.step()
            n += 1
            step += 1
            if bar is not None:
                bar.update(1)
                if n % max(1, steps_per_epoch // 4) == 0 or n == steps_per_epoch:
                    bar.set_postfix(epoch=epoch, loss=f"{losses[n - 1].item():.3f}",
                                    lr=f"{rows['lr'][-1]:.3g}")
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        step_losses = losses[:n].tolist()
        first = step - n
        rows["step"].extend(range(first, step))
        rows["epoch"].extend((first + i + 1) / steps_per_epoch for i in range(n))
        rows["loss"].extend(step_losses)
        train_loss = sum(step_losses) / max(n, 1)
        test_loss, test_acc = (evaluate(model, test_loader, loss_fn, amp) if test_loader is not None
                               else (math.nan, math.nan))
        for col, value in zip(EPOCH_COLUMNS, (train_loss, test_loss, test_acc, seconds)):
            rows[col].extend([math.nan] * (n - 1) + [value])
        if stop_on_divergence and not math.isfinite(train_loss):
            warnings.warn(f"training loss diverged (not finite) in epoch {epoch}; stopping early",
                          RuntimeWarning, stacklevel=2)
            break
    if bar is not None:
        bar.close()
    history = pd.DataFrame(rows)
    history["epoch"] = history["epoch"].round(6)
    return history


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, unit="step", leave=False)


def epoch_table(history: pd.DataFrame) -> pd.DataFrame:
    """The per-epoch rows of a :func:`fit` history, indexed by epoch number (1, 2, ...)."""
    missing = [c for c in STEP_COLUMNS + EPOCH_COLUMNS if c not in history.columns]
    if missing:
        raise ValueError(f"not a fit() history: missing columns {missing}")
    table = history[history["seconds"].notna()].copy()
    table.index = table["epoch"].round().astype(int).rename("epoch_number")
    return table[["step", "lr", "momentum", *EPOCH_COLUMNS]]

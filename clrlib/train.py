"""A small training loop with a per-batch schedule and a per-step log.

:func:`fit` trains any classifier with a schedule from :mod:`clrlib.schedules`,
evaluates on the test set after every epoch and returns the whole history as one
pandas DataFrame: a row per optimizer step (``step, epoch, lr, momentum, loss``), the
last row of each epoch also carrying ``train_loss, test_loss, test_acc, seconds``.
:func:`epoch_table` selects those rows. Plots in :mod:`clrlib.plots` are drawn from it.

Speed settings, each resolved per device when left as None (see :func:`fit`):

* precision: ``"bf16"`` (bf16 autocast) on CUDA and on CPUs with native bf16
  instructions (:func:`cpu_has_native_bf16`), ``"fp32"`` elsewhere (:func:`default_precision`);
* channels-last memory format: on CUDA, and on a CPU training in bf16;
* ``torch.compile``: on CUDA, in mode ``"reduce-overhead"`` (CUDA graphs), off elsewhere.
  Only the forward pass and the loss are compiled (their backward comes with them); the
  optimizer step stays eager, so a new LR or momentum every step never recompiles.
  Compiled code is kept per process and architecture (:func:`compiled_steps`): a new
  model of the same architecture reuses it.
"""
from __future__ import annotations

import contextlib
import math
import os
import random
import time
import types
import warnings
from dataclasses import dataclass
from functools import partial
from typing import Callable, Iterable

import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import checkpoint as _checkpoint
from .batches import MODEL_LOSS, call_model, count, output_loss, resolve_unpack, to_device
# The device policy lives in clrlib.device; its names stay importable from here.
from .device import (COMPILE_MODES, CUDAGRAPH_MODES, PRECISIONS, DevicePolicy, autocast, autocast_for,  # noqa: F401
                     cpu_flags, cpu_has_native_bf16, cpu_vendor, default_channels_last, default_device,
                     default_precision, model_device, model_is_channels_last, resolve_compile, resolve_policy,
                     resolve_precision)
from .device import precision_and_amp as _precision_and_amp  # noqa: F401
from .schedules import ScheduleFn, Scheduler, constant, group_momentum

__all__ = ["default_device", "seed_everything", "autocast", "autocast_for", "cpu_flags", "cpu_vendor", "cpu_has_native_bf16",
           "default_precision", "resolve_precision", "default_channels_last", "resolve_compile",
           "DevicePolicy", "resolve_policy", "model_device", "model_is_channels_last",
           "compiled_steps", "clear_compile_cache", "CompiledSteps", "train_step", "evaluate", "fit",
           "epoch_table", "STEP_COLUMNS", "EPOCH_COLUMNS", "PRECISIONS", "COMPILE_MODES"]

STEP_COLUMNS = ("step", "epoch", "lr", "momentum", "loss")
EPOCH_COLUMNS = ("train_loss", "test_loss", "test_acc", "seconds")


def seed_everything(seed: int) -> None:
    """Seed Python's, and torch's CPU and CUDA generators (for weight init and dropout)."""
    random.seed(seed)
    torch.manual_seed(seed)


def training_modes(model: nn.Module) -> list[tuple[nn.Module, bool]]:
    """Every submodule's train/eval flag, so that they can be put back exactly (a frozen BN stays frozen)."""
    return [(m, m.training) for m in model.modules()]


def restore_training_modes(modes: list[tuple[nn.Module, bool]]) -> None:
    """Put back what :func:`training_modes` saved."""
    for module, flag in modes:
        module.training = flag


# ---------------------------------------------------------------------------------------------
# The compiled path. The compiled functions take the model as an argument: with
# torch._dynamo.config.inline_inbuilt_nn_modules (the default since torch 2.5) its parameters
# and buffers are graph inputs, not constants, so another model of the same architecture
# passes the same guards and reuses the code.

def _train_forward(model: Callable, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return loss_fn(model(x), y)


def _eval_forward(model: Callable, loss_fn: Callable, x: torch.Tensor,
                  y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    out = model(x)
    return loss_fn(out.float(), y) * y.shape[0], (out.argmax(1) == y).sum()


@dataclass(frozen=True)
class CompiledSteps:
    """The compiled functions of one (architecture, mode, precision, layout, device type).

    Attributes:
        train: ``(model, loss_fn, x, y) -> loss`` (forward and loss; call ``.backward()`` on it).
        evaluate: ``(model, loss_fn, x, y) -> (sum of the losses, number correct)``, for no-grad use.
        mode: the ``torch.compile`` mode.
        cudagraphs: whether they replay CUDA graphs, so that each step must start with
            ``torch.compiler.cudagraph_mark_step_begin()`` and outputs must be copied before the next.
    """

    train: Callable
    evaluate: Callable
    mode: str
    cudagraphs: bool


_COMPILED: dict[tuple, CompiledSteps] = {}


def _own_code(fn: Callable, tag: int) -> Callable:
    """A copy of ``fn`` with its own code object: dynamo keeps its cache (and its limit of
    recompilations) per code object, so each :class:`CompiledSteps` gets its own."""
    name = f"{fn.__name__}_{tag}"
    return types.FunctionType(fn.__code__.replace(co_name=name), fn.__globals__, name)


def architecture_key(model: nn.Module) -> tuple:
    """The model's class and the names, shapes and dtypes of its parameters and buffers."""
    cls = type(model)
    return (cls.__module__, cls.__qualname__,
            tuple((name, tuple(t.shape), str(t.dtype)) for name, t in model.state_dict().items()))


def compiled_steps(model: nn.Module, mode: str, precision: str, channels_last: bool,
                   device: str | torch.device) -> CompiledSteps:
    """The process-wide compiled train and eval functions for ``model``'s architecture.

    Made (lazily: the compilation happens at the first call) once per process and key
    ``(architecture, mode, precision, channels_last, device type)``, with ``dynamic=False``:
    each input shape (the full batch, a last partial batch) is compiled once, statically.

    Args:
        model: any instance of the architecture (the functions take the model as an argument).
        mode: one of :data:`COMPILE_MODES`.
        precision, channels_last: the settings the functions will be called under (part of the key).
        device: the device they run on (CUDA graphs only on CUDA).
    """
    if mode not in COMPILE_MODES:
        raise ValueError(f"mode must be one of {COMPILE_MODES}, got {mode!r}")
    device = torch.device(device)
    key = (architecture_key(model), mode, precision, bool(channels_last), device.type)
    if key not in _COMPILED:
        from torch import _dynamo  # the compiler, imported only when asked for
        old_torch = torch.torch_version.TorchVersion(torch.__version__) < "2.5"  # the option became the default
        if old_torch and not getattr(_dynamo.config, "inline_inbuilt_nn_modules", False):
            warnings.warn("torch._dynamo.config.inline_inbuilt_nn_modules is off (torch < 2.5?): "
                          "every new model instance will be compiled again", RuntimeWarning, stacklevel=3)
        tag = len(_COMPILED)
        build = partial(torch.compile, mode=mode, dynamic=False)
        _COMPILED[key] = CompiledSteps(train=build(_own_code(_train_forward, tag)),
                                       evaluate=build(_own_code(_eval_forward, tag)), mode=mode,
                                       cudagraphs=device.type == "cuda" and mode in CUDAGRAPH_MODES)
    return _COMPILED[key]


def clear_compile_cache() -> None:
    """Forget the compiled functions of :func:`compiled_steps` and reset dynamo's caches."""
    from torch import _dynamo
    _COMPILED.clear()
    _dynamo.reset()


# ---------------------------------------------------------------------------------------------

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


def _compiled_train_step(steps: CompiledSteps, model: nn.Module, loss_fn: Callable,
                         optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                         amp: contextlib.AbstractContextManager, log: torch.Tensor, index: int) -> None:
    """:func:`train_step` through ``steps.train``; the loss is copied into ``log[index]`` at once
    (a CUDA graph's output is overwritten by its next replay)."""
    optimizer.zero_grad(set_to_none=True)
    if steps.cudagraphs:
        torch.compiler.cudagraph_mark_step_begin()
    with amp:
        loss = steps.train(model, loss_fn, x, y)
    log[index] = loss.detach()
    loss.backward()
    optimizer.step()


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable, loss_fn: Callable | None = None,
             amp: bool | None = None, *, precision: str | None = None,
             channels_last: bool | None = None, compile: bool | str | None = False) -> tuple[float, float]:
    """Mean loss and accuracy (a fraction) of ``model`` over ``batches``, in eval mode.

    Args:
        model: the network, on its device (batches are moved there); its train/eval flags are restored.
        batches: ``(x, y)`` batches.
        loss_fn: default cross-entropy (computed in fp32).
        amp: older alias of ``precision``: True for ``"bf16"``, False for ``"fp32"``.
        precision: ``"bf16"``, ``"fp32"``, or None for :func:`default_precision` of the model's device.
        channels_last: convert inputs to channels-last; default: if the model's weights are.
        compile: as in :func:`fit`, but off by default.

    Raises:
        ValueError: if ``batches`` is empty, or for a bad setting.
    """
    if channels_last is None:
        channels_last = model_is_channels_last(model)
    policy = resolve_policy(model_device(model), precision, channels_last, compile, model=model, amp=amp)
    device, precision, mode = policy.device, policy.precision, policy.compile
    steps = compiled_steps(model, mode, precision, channels_last, device) if mode else None
    with policy.applied():
        return _evaluate(model, batches, loss_fn or F.cross_entropy, device, precision, channels_last, steps)


@torch.no_grad()
def _evaluate(model: nn.Module, batches: Iterable, loss_fn: Callable, device: torch.device,
              precision: str, channels_last: bool, steps: CompiledSteps | None) -> tuple[float, float]:
    forward = steps.evaluate if steps is not None else _eval_forward
    modes = training_modes(model)
    model.eval()
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    count = 0
    try:
        with autocast_for(precision, device):
            for x, y in batches:
                x, y = to_device(x, device, channels_last), to_device(y, device)
                if steps is not None and steps.cudagraphs:
                    torch.compiler.cudagraph_mark_step_begin()
                loss_sum, right = forward(model, loss_fn, x, y)
                total_loss += loss_sum  # copied out before the next replay
                correct += right
                count += y.shape[0]
    finally:
        restore_training_modes(modes)
    if count == 0:
        raise ValueError("evaluate got no batches")
    return total_loss.item() / count, correct.item() / count


@dataclass
class _Run:
    """What one epoch of :func:`fit` needs, resolved once."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Scheduler
    loss_fn: Callable
    device: torch.device
    precision: str
    channels_last: bool
    steps: CompiledSteps | None
    bar: object = None

    def settings(self) -> dict:
        """What was used, for ``history.attrs["fit"]``."""
        return {"precision": self.precision, "compile": self.steps.mode if self.steps else False,
                "channels_last": self.channels_last, "device": str(self.device)}


def fit(model: nn.Module, train_loader, epochs: int, schedule: ScheduleFn | None = None,
        optimizer: torch.optim.Optimizer | None = None, *, lr: float = 0.1, momentum: float = 0.9,
        weight_decay: float = 1e-4, test_loader=None, loss_fn: Callable | None = None,
        device: str | torch.device | None = None, precision: str | None = None, amp: bool | None = None,
        channels_last: bool | None = None, compile: bool | str | None = None, seed: int | None = None,
        progress: bool = True, stop_on_divergence: bool = True,
        checkpoint: str | os.PathLike | None = None,
        on_epoch: Callable[[dict], None] | None = None) -> pd.DataFrame:
    """Train ``model`` for ``epochs`` epochs, stepping the schedule every batch.

    Args:
        model: the network; it is moved to ``device``.
        train_loader: re-iterable batches ``(x, y)`` with a ``len()``, e.g. :class:`clrlib.data.CifarLoader`.
        epochs: number of passes over ``train_loader``.
        schedule: ``step -> lr`` or ``step -> (lr, momentum)`` over the ``epochs * len(train_loader)``
            steps, e.g. ``partial(one_cycle, total_steps=..., max_lr=0.8)``. Default: constant ``lr``.
        optimizer: default ``SGD(lr, momentum, weight_decay)`` over all parameters (foreach on CUDA).
        lr, momentum, weight_decay: settings of the default optimizer; without a schedule the LR
            stays ``lr`` (or the given optimizer's own LR).
        test_loader: batches to evaluate on after every epoch (the post uses the test set).
        loss_fn: default cross-entropy.
        device: default: CUDA, then MPS, then CPU.
        precision: ``"bf16"`` (bf16 autocast) or ``"fp32"``; default :func:`default_precision`:
            bf16 on CUDA and on CPUs with native bf16, fp32 elsewhere.
        amp: older alias: True for ``"bf16"``, False for ``"fp32"`` (must agree with ``precision``).
        channels_last: channels-last memory format; default on CUDA, and on a CPU in bf16.
        compile: ``torch.compile`` the forward pass and loss (see :func:`resolve_compile`):
            None: CUDA graphs (``"reduce-overhead"``) on CUDA, eager elsewhere; True: the
            device's mode; False: eager; or a mode string. The optimizer step stays eager.
        seed: if given, seeds torch before training (see also :func:`seed_everything`).
        progress: show a tqdm progress bar with the loss and LR.
        stop_on_divergence: stop at the end of an epoch whose training loss is not finite.
        checkpoint: a file to write the run's state to after every epoch, and to resume from
            when it exists (see :mod:`clrlib.checkpoint`): an interrupted run called again with
            the same path loses at most one epoch, and on a CPU its history is bit for bit an
            uninterrupted run's. Build the model, optimizer and loader as for a fresh start.
            The file is left in place; delete it once the history is saved.
        on_epoch: called after every epoch with ``{"epoch", "epochs", "train_loss", "test_loss",
            "test_acc", "seconds", "lr"}`` (e.g. to log progress from a long run).

    Returns:
        A DataFrame with a row per step: ``step, epoch, lr, momentum, loss`` (``epoch`` is
        fractional: steps done / steps per epoch, so the last step of epoch 1 is 1.0), and on
        each epoch's last row ``train_loss, test_loss, test_acc, seconds``
        (``seconds``: training time of that epoch). See :func:`epoch_table`.
        ``history.attrs["fit"]`` records the settings used: ``precision``, ``compile``
        (the mode or False), ``channels_last`` and ``device``.

    Raises:
        ValueError: for a bad argument, or a loader that yields fewer batches than its ``len()``.

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
    policy = resolve_policy(device, precision, channels_last, compile, model=model, amp=amp)
    device, precision, channels_last, mode = policy.device, policy.precision, policy.channels_last, policy.compile
    if seed is not None:
        seed_everything(seed)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if optimizer is None:
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay,
                                    foreach=True if device.type == "cuda" else None)
    elif schedule is None:
        lr = float(optimizer.param_groups[0]["lr"])
    scheduler = Scheduler(optimizer, schedule if schedule is not None else partial(constant, lr=lr))
    steps = compiled_steps(model, mode, precision, channels_last, device) if mode else None
    run = _Run(model, optimizer, scheduler, loss_fn or F.cross_entropy, device, precision,
               bool(channels_last), steps)
    with policy.applied():
        history = _train(run, train_loader, epochs, steps_per_epoch, test_loader, progress, stop_on_divergence,
                         checkpoint, on_epoch)
    history.attrs["fit"] = run.settings()
    return history


def _resume(run: _Run, train_loader, epochs: int, steps_per_epoch: int, path) -> tuple[dict, int, bool]:
    """The history so far, the last epoch done and whether training stopped, from ``path``'s
    checkpoint (loaded into the run), or a fresh start."""
    state = _checkpoint.read(path, epochs=epochs, steps_per_epoch=steps_per_epoch) if path else None
    if state is None:
        return {c: [] for c in STEP_COLUMNS + EPOCH_COLUMNS}, 0, False
    _checkpoint.restore(state, model=run.model, optimizer=run.optimizer, scheduler=run.scheduler,
                        loader=train_loader)
    return state["rows"], state["epoch"], state["stopped"]


def _train(run: _Run, train_loader, epochs: int, steps_per_epoch: int, test_loader, progress: bool,
           stop_on_divergence: bool, checkpoint=None, on_epoch=None) -> pd.DataFrame:
    """The epochs of :func:`fit`: train, evaluate, log (and checkpoint); returns the history."""
    rows, done, stopped = _resume(run, train_loader, epochs, steps_per_epoch, checkpoint)
    run.bar = _progress_bar(epochs * steps_per_epoch, progress, initial=done * steps_per_epoch)
    try:
        for epoch in range(done + 1, epochs + 1 if not stopped else 0):
            step_losses, seconds = _train_epoch(run, train_loader, steps_per_epoch, rows, epoch)
            first = len(rows["step"])
            rows["step"].extend(range(first, first + steps_per_epoch))
            rows["epoch"].extend((first + i + 1) / steps_per_epoch for i in range(steps_per_epoch))
            rows["loss"].extend(step_losses)
            train_loss = sum(step_losses) / steps_per_epoch
            test_loss, test_acc = (
                _evaluate(run.model, test_loader, run.loss_fn, run.device, run.precision,
                          run.channels_last, run.steps)
                if test_loader is not None else (math.nan, math.nan))
            for col, value in zip(EPOCH_COLUMNS, (train_loss, test_loss, test_acc, seconds)):
                rows[col].extend([math.nan] * (steps_per_epoch - 1) + [value])
            if run.bar is not None:
                run.bar.set_postfix(epoch=epoch, loss=f"{train_loss:.3f}", lr=f"{rows['lr'][-1]:.3g}")
            if on_epoch is not None:
                on_epoch(dict(epoch=epoch, epochs=epochs, train_loss=train_loss, test_loss=test_loss,
                              test_acc=test_acc, seconds=seconds, lr=rows["lr"][-1]))
            diverged = stop_on_divergence and not math.isfinite(train_loss)
            if checkpoint:
                _checkpoint.write(checkpoint, epoch=epoch, epochs=epochs, steps_per_epoch=steps_per_epoch,
                                  model=run.model, optimizer=run.optimizer, scheduler=run.scheduler,
                                  loader=train_loader, rows=rows, stopped=diverged)
            if diverged:
                warnings.warn(f"training loss diverged (not finite) in epoch {epoch}; stopping early",
                              RuntimeWarning, stacklevel=3)
                break
    finally:
        if run.bar is not None:
            run.bar.close()
    history = pd.DataFrame(rows)
    history["epoch"] = history["epoch"].round(6)
    return history


def _train_epoch(run: _Run, train_loader, steps_per_epoch: int, rows: dict, epoch: int) -> tuple[list, float]:
    """One pass over ``train_loader`` (at most ``steps_per_epoch`` batches); logs LR and momentum
    into ``rows``; returns the step losses and the seconds taken.

    The losses stay on the device until the epoch ends: no host synchronisation per step
    (the progress bar reads a loss a few times per epoch on the CPU only).
    """
    run.model.train()
    amp = autocast_for(run.precision, run.device)
    start = time.perf_counter()
    losses = torch.empty(steps_per_epoch, device=run.device)
    n = 0
    for x, y in train_loader:
        if n == steps_per_epoch:
            break
        group = run.optimizer.param_groups[0]
        rows["lr"].append(float(group["lr"]))
        rows["momentum"].append(group_momentum(group))
        x, y = to_device(x, run.device, run.channels_last), to_device(y, run.device)
        if run.steps is not None:
            _compiled_train_step(run.steps, run.model, run.loss_fn, run.optimizer, x, y, amp, losses, n)
        else:
            losses[n] = train_step(run.model, run.loss_fn, run.optimizer, x, y, amp)[0]
        run.scheduler.step()
        n += 1
        if run.bar is not None:
            run.bar.update(1)
            if run.device.type == "cpu" and n % max(1, steps_per_epoch // 4) == 0:
                run.bar.set_postfix(epoch=epoch, loss=f"{losses[n - 1].item():.3f}", lr=f"{rows['lr'][-1]:.3g}")
    if n != steps_per_epoch:
        raise ValueError(f"the loader yielded {n} batches but len() says {steps_per_epoch} "
                         f"(epoch {epoch}); fit needs a loader whose len() is its number of batches")
    _synchronize(run.device)
    seconds = time.perf_counter() - start
    return losses.tolist(), seconds


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _progress_bar(total: int, enabled: bool, initial: int = 0):
    if not enabled:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, unit="step", leave=False)


def epoch_table(history: pd.DataFrame) -> pd.DataFrame:
    """The per-epoch rows of a :func:`fit` history, indexed by epoch number (1, 2, ...)."""
    missing = [c for c in STEP_COLUMNS + EPOCH_COLUMNS if c not in history.columns]
    if missing:
        raise ValueError(f"not a fit() history: missing columns {missing}")
    table = history[history["seconds"].notna()].copy()
    table.index = table["epoch"].round().astype(int).rename("epoch_number")
    return table[["step", "lr", "momentum", *EPOCH_COLUMNS]]

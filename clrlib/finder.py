"""The learning-rate range test ("LR finder").

Train for ``num_it`` batches while the learning rate grows from ``start_lr`` to
``end_lr`` (exponentially by default), record the loss, smooth it with a
bias-corrected exponential moving average, and stop once the smoothed loss exceeds
``stop_factor`` times the best seen (or is not finite). The model's weights,
buffers and the optimizer's state are then restored, in memory, to what they were.

L. N. Smith, "Cyclical Learning Rates for Training Neural Networks", WACV 2017
(section 3.3, accuracy against LR); S. Gugger, "How do you find a good learning rate"
(2017) and "The 1cycle policy" (2018) (smoothed loss against LR, stop at 4x the best).

Example:
    >>> import torch
    >>> model = torch.nn.Linear(4, 1)
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> batches = [(torch.randn(32, 4), torch.randn(32, 1)) for _ in range(10)]
    >>> result = lr_find(model, torch.nn.functional.mse_loss, batches, opt,
    ...                  start_lr=1e-4, end_lr=10, num_it=50)
    >>> 1e-4 <= result.suggest("valley") <= 10
    True
"""
from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import pandas as pd
import torch
import torch.nn as nn

from .train import autocast, evaluate, model_device, restore_training_modes, train_step, training_modes

__all__ = ["lr_find", "FinderResult", "SUGGESTIONS", "snapshot", "restore"]

MODES = ("exp", "linear")
SUGGESTIONS = ("steepest", "minimum/10", "valley")


@dataclass
class FinderResult:
    """What :func:`lr_find` recorded, as plain lists (one entry per batch kept).

    Attributes:
        lrs: the learning rate of each iteration.
        losses: the smoothed (bias-corrected EMA) loss.
        raw_losses: the loss as measured (training batch, or held-out batches).
        accuracies: accuracy per iteration, if asked for (Smith's original plot).
        stop_lr: the learning rate at which the smoothed loss blew up (test stopped), or None.
        settings: the arguments of the test, for the record.
    """

    lrs: list = field(default_factory=list)
    losses: list = field(default_factory=list)
    raw_losses: list = field(default_factory=list)
    accuracies: list = field(default_factory=list)
    stop_lr: float | None = None
    settings: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.lrs)

    def suggest(self, method: str = "valley", skip_start: int | None = None,
                skip_end: int | None = None) -> float:
        """A learning rate read off the curve.

        Methods:
            ``"steepest"``: where the smoothed loss falls fastest against log(LR).
            ``"minimum/10"``: a tenth of the LR at the lowest smoothed loss (fastai's rule).
            ``"valley"``: the middle of the longest stretch over which the loss keeps falling
            (a robust variant of the steepest point, as in fastai 2's ``valley``).

        ``skip_start`` / ``skip_end`` points are ignored by ``"steepest"`` (defaults: a
        tenth and a twentieth of the curve, at most 10 and 5), where the curve is noisy.
        """
        if method not in SUGGESTIONS:
            raise ValueError(f"method must be one of {SUGGESTIONS}, got {method!r}")
        n = len(self.lrs)
        if n < 3:
            raise ValueError(f"the range test kept only {n} points; need at least 3 to suggest an LR")
        if method == "minimum/10":
            best = min(range(n), key=lambda i: self.losses[i])
            return self.lrs[best] / 10
        if method == "valley":
            lo, hi = longest_descent(self.losses)
            return self.lrs[(lo + hi) // 2]
        start = min(10, n // 10) if skip_start is None else skip_start
        end = min(5, n // 20) if skip_end is None else skip_end
        idx = list(range(max(start, 1), n - max(end, 1)))
        if not idx:
            raise ValueError(f"skip_start={start} and skip_end={end} leave no points of {n}")
        x = [math.log(lr) for lr in self.lrs]
        slope = {i: (self.losses[i + 1] - self.losses[i - 1]) / (x[i + 1] - x[i - 1]) for i in idx}
        return self.lrs[min(idx, key=slope.get)]

    def plot(self, ax=None, **kwargs):
        """Smoothed loss against LR on a log axis, with suggestions marked; returns the axes.

        See :func:`clrlib.plots.plot_finder` for the keyword arguments.
        """
        from .plots import plot_finder
        return plot_finder(self, ax=ax, **kwargs)

    def to_frame(self) -> pd.DataFrame:
        """The curve as a DataFrame with columns ``lr, loss, raw_loss`` (and ``accuracy``)."""
        frame = pd.DataFrame({"lr": self.lrs, "loss": self.losses, "raw_loss": self.raw_losses})
        if self.accuracies:
            frame["accuracy"] = self.accuracies
        return frame


def longest_descent(values: list) -> tuple[int, int]:
    """Start and end index of the longest strictly decreasing subsequence of ``values``."""
    n = len(values)
    length = [1] * n
    origin = list(range(n))
    for i in range(1, n):
        for j in range(i):
            if values[i] < values[j] and length[j] + 1 > length[i]:
                length[i], origin[i] = length[j] + 1, origin[j]
    end = max(range(n), key=lambda i: (length[i], -i))
    return origin[end], end


def snapshot(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict, list]:
    """An in-memory copy of the model's weights, buffers and train/eval flags, and the optimizer's state."""
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return weights, copy.deepcopy(optimizer.state_dict()), training_modes(model)


def restore(model: nn.Module, optimizer: torch.optim.Optimizer, saved: tuple[dict, dict, list]) -> None:
    """Put back what :func:`snapshot` saved, bit for bit."""
    weights, opt_state, modes = saved
    with torch.no_grad():
        for k, v in model.state_dict().items():
            v.copy_(weights[k])
    optimizer.load_state_dict(opt_state)
    restore_training_modes(modes)


def _schedule(start_lr: float, end_lr: float, num_it: int, mode: str) -> list[float]:
    if mode == "exp":
        return [start_lr * (end_lr / start_lr) ** (i / (num_it - 1)) for i in range(num_it)]
    return [start_lr + (end_lr - start_lr) * i / (num_it - 1) for i in range(num_it)]


def _repeat(batches: Iterable) -> Iterator:
    """Yield from ``batches`` again and again (a DataLoader starts a new epoch each time)."""
    count = 0
    while True:
        before = count
        for batch in batches:
            count += 1
            yield batch
        if count == before:
            if count == 0:
                raise ValueError("batches is empty")
            warnings.warn(f"batches ran out after {count} batches; stopping the range test there "
                          "(pass a re-iterable loader to run all num_it iterations)",
                          RuntimeWarning, stacklevel=3)
            return


def _check_args(start_lr, end_lr, num_it, mode, beta, stop_factor) -> None:
    for name, value in (("start_lr", start_lr), ("end_lr", end_lr)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    if start_lr >= end_lr:
        raise ValueError(f"start_lr must be smaller than end_lr, got start_lr={start_lr!r} >= end_lr={end_lr!r}")
    if not (isinstance(num_it, int) and num_it >= 2):
        raise ValueError(f"num_it must be an integer >= 2, got {num_it!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not (0.0 <= beta < 1.0):
        raise ValueError(f"beta must be in [0, 1), got {beta!r}")
    if stop_factor is not None and not stop_factor > 1.0:
        raise ValueError(f"stop_factor must be > 1 (or None to never stop), got {stop_factor!r}")


def lr_find(model: nn.Module, loss_fn: Callable, batches: Iterable, optimizer: torch.optim.Optimizer,
            start_lr: float = 1e-7, end_lr: float = 10.0, num_it: int = 100, mode: str = "exp",
            beta: float = 0.98, stop_factor: float | None = 4.0, val_batches: Iterable | None = None,
            accuracy: bool = False, amp: bool | None = None) -> FinderResult:
    """Run the LR range test and restore the model and optimizer afterwards.

    Args:
        model: the network, on its device (batches are moved there).
        loss_fn: ``loss_fn(output, target)``, e.g. ``torch.nn.functional.cross_entropy``.
        batches: re-iterable ``(x, y)`` batches; restarted as often as needed to reach ``num_it``.
        optimizer: the optimizer to test, with the momentum and weight decay of the real run;
            its learning rate is overwritten each batch (all param groups alike).
        start_lr, end_lr: the range of learning rates (``start_lr < end_lr``).
        num_it: number of batches (the LR reaches ``end_lr`` at the last one).
        mode: ``"exp"`` (geometric steps, the post) or ``"linear"`` (Smith's CLR paper).
        beta: smoothing of the loss, ``avg = beta*avg + (1-beta)*loss``, divided by ``1 - beta**k``.
        stop_factor: stop when the smoothed loss exceeds this times the best, or is not finite;
            None never stops early. (The rule assumes a positive loss, as cross-entropy and MSE are.)
        val_batches: if given, the loss (and accuracy) are measured on these held-out batches
            after each step, in eval mode, instead of on the training batch.
        accuracy: also record the accuracy (argmax of the output) at each iteration.
        amp: bf16 autocast; default on for CUDA only.

    Returns:
        A :class:`FinderResult`.

    Raises:
        ValueError: for a bad argument (naming it and its value).
    """
    _check_args(start_lr, end_lr, num_it, mode, beta, stop_factor)
    device = model_device(model)
    amp_ctx = autocast(device, amp)
    result = FinderResult(settings=dict(start_lr=start_lr, end_lr=end_lr, num_it=num_it, mode=mode,
                                        beta=beta, stop_factor=stop_factor,
                                        held_out=val_batches is not None, accuracy=accuracy))
    saved = snapshot(model, optimizer)
    avg, best = 0.0, math.inf
    try:
        if not model.training:  # a model already training keeps its own per-layer settings
            model.train()
        for i, (lr, (x, y)) in enumerate(zip(_schedule(start_lr, end_lr, num_it, mode), _repeat(batches))):
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss, out = train_step(model, loss_fn, optimizer, x, y, amp_ctx)
            loss = loss.item()
            acc = (out.argmax(1) == y).float().mean().item() if accuracy else None
            if val_batches is not None:
                loss, acc = evaluate(model, val_batches, loss_fn, amp)
            avg = beta * avg + (1 - beta) * loss
            smoothed = avg / (1 - beta ** (i + 1))
            if not math.isfinite(smoothed) or (stop_factor is not None and i > 0
                                               and smoothed > stop_factor * best):
                result.stop_lr = lr
                break
            best = min(best, smoothed)
            result.lrs.append(lr)
            result.losses.append(smoothed)
            result.raw_losses.append(loss)
            if accuracy:
                result.accuracies.append(acc)
    finally:
        restore(model, optimizer, saved)
    return result


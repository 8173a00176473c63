"""The learning-rate range test ("LR finder").

Train for ``num_it`` batches while the learning rate grows from ``start_lr`` to
``end_lr`` (exponentially by default), record the loss, smooth it with a
bias-corrected exponential moving average, and stop once the smoothed loss exceeds
``stop_factor`` times the best seen (or is not finite). The model's weights,
buffers and the optimizer's state are then restored, in memory, to what they were.

By default the exponential schedule is ``lr_i = start_lr * (end_lr / start_lr) ** (i / (num_it - 1))``
for ``i = 0 .. num_it - 1``, so the last iteration runs at ``end_lr`` exactly. fastai 0.7 (and
the post) use ``i / num_it`` (``endpoint=False`` here) and never quite reach ``end_lr``: the steps are a hair smaller
and the LR of a given iteration a little lower. With the post's settings (1e-5 to 100 over 98
iterations) iteration 93 is at LR 44 under fastai's schedule and at LR 51 under this one.

Reading the curve (:class:`FinderResult`): :attr:`~FinderResult.blowup_lr` is where the test
stopped (the smoothed loss passed 4x its best), :attr:`~FinderResult.min_loss_lr` where the
smoothed loss was lowest; the post's advice is then :meth:`~FinderResult.one_cycle_max_lr`
("a bit before the minimum, where the loss still improves") for the peak of 1cycle and
:meth:`~FinderResult.cyclic_max_lr` (about a tenth of the blow-up) for the top of a CLR cycle.
The older rules ``"steepest"``, ``"valley"`` and ``"minimum/10"`` of
:meth:`~FinderResult.suggest` give learning rates for fixed-LR training, not a 1cycle maximum
(see :data:`SUGGESTION_USES`): on the saved quick curve (1e-5 to 100) they are 3x, 260x and
1100x below :meth:`~FinderResult.one_cycle_max_lr` ("minimum/10", "valley", "steepest"; how
far "valley" falls depends on ``start_lr``, where its descent begins).

L. N. Smith, "Cyclical Learning Rates for Training Neural Networks", WACV 2017
(section 3.3, accuracy against LR); S. Gugger, "How do you find a good learning rate"
(2017) and "The 1cycle policy" (2018) (smoothed loss against LR, stop at 4x the best).

Example:
    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Linear(4, 1)
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> w = torch.randn(4, 1)  # a learnable target
    >>> batches = [(x, x @ w) for x in torch.randn(10, 32, 4)]
    >>> result = lr_find(model, torch.nn.functional.mse_loss, batches, opt,
    ...                  start_lr=1e-4, end_lr=10, num_it=50)
    >>> 1e-4 <= result.suggest("valley") <= 10
    True
    >>> result.one_cycle_max_lr() < result.min_loss_lr <= result.blowup_lr
    True
"""
from __future__ import annotations

import copy
import math
import numbers
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import pandas as pd
import torch
import torch.nn as nn

from .train import autocast, evaluate, model_device, restore_training_modes, train_step, training_modes

__all__ = ["lr_find", "FinderResult", "SUGGESTIONS", "SUGGESTION_USES", "snapshot", "restore"]

MODES = ("exp", "linear")
PRECISIONS = ("bf16", "fp32")
SUGGESTIONS = ("steepest", "minimum/10", "valley", "one_cycle", "cyclic")
#: What each rule of :meth:`FinderResult.suggest` is for (also the plot's legend).
SUGGESTION_USES = {
    "steepest": "fixed LR, conservative",
    "minimum/10": "fixed LR",
    "valley": "fixed LR",
    "one_cycle": "1cycle max LR",
    "cyclic": "CLR max LR",
}


@dataclass
class FinderResult:
    """What :func:`lr_find` recorded, as plain lists (one entry per batch kept).

    Attributes:
        lrs: the learning rate of each iteration.
        losses: the smoothed (bias-corrected EMA) loss.
        raw_losses: the loss as measured (training batch, or held-out batches).
        accuracies: accuracy per iteration, if asked for (Smith's original plot).
        stop_lr: the learning rate of the iteration at which the test stopped (the smoothed loss
            passed ``stop_factor`` times its best, or was not finite; that iteration is not
            kept), or None if the test ran all ``num_it`` iterations.
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

    @property
    def stopped(self) -> bool:
        """Whether the test stopped on a blow-up (else it ran all its iterations)."""
        return self.stop_lr is not None

    @property
    def blowup_lr(self) -> float:
        """The LR at which the loss blew up: :attr:`stop_lr` if the test stopped, else the last
        LR reached (then only a lower bound on the blow-up; see :attr:`stopped`).

        Raises:
            ValueError: if the test neither stopped nor kept a point.
        """
        if self.stopped:
            return self.stop_lr
        self._require(1)
        return self.lrs[-1]

    @property
    def min_loss_lr(self) -> float:
        """The LR at which the smoothed loss was lowest (the first such, on a tie)."""
        return self.lrs[self._min_index()]

    def _min_index(self) -> int:
        """Index of the lowest smoothed loss (the first such, on a tie)."""
        self._require(1)
        return min(range(len(self.losses)), key=self.losses.__getitem__)

    def bottom_end_lr(self, tolerance: float = 0.1) -> float:
        """The highest LR that still trains about as well as the best: going right from the
        minimum of the smoothed loss, the last LR before the loss rises more than ``tolerance``
        times the curve's descent (its first loss minus its minimum) above the minimum.

        The minimum itself is a poor mark on a flat-bottomed curve: on the quick sweep's
        curves (ResNet-20, 10k CIFAR-10 images) the smoothed loss stays within 2% of its
        minimum from LR 0.5 to 4, so noise decides where in that stretch the minimum falls.
        The end of the bottom sits where the curve turns up steeply and moves little with
        noise; it is what "still trains at a high LR" means when weight decays are compared
        (:func:`clrlib.analysis.largest_weight_decay_at_high_lr`).

        Args:
            tolerance: the fraction of the descent that still counts as the bottom (0 to 1).

        Raises:
            ValueError: for a tolerance outside [0, 1], or an empty curve.
        """
        if isinstance(tolerance, bool) or not (isinstance(tolerance, (int, float)) and 0 <= tolerance <= 1):
            raise ValueError(f"tolerance must be a number in [0, 1], got {tolerance!r}")
        low = self._min_index()
        bar = self.losses[low] + tolerance * max(self.losses[0] - self.losses[low], 0.0)
        end = low
        while end + 1 < len(self.losses) and self.losses[end + 1] <= bar:
            end += 1
        return self.lrs[end]

    def loss_at(self, lr: float) -> float:
        """The smoothed loss at the kept point whose LR is nearest ``lr`` on the log axis.

        Args:
            lr: a positive learning rate.
        """
        if not (isinstance(lr, (int, float)) and lr > 0):
            raise ValueError(f"lr must be a positive number, got {lr!r}")
        self._require(1)
        i = min(range(len(self.lrs)), key=lambda k: abs(math.log(self.lrs[k] / lr)))
        return self.losses[i]

    def one_cycle_max_lr(self, divisor: float = 3.0) -> float:
        """The peak LR of a 1cycle schedule, by the post's advice: "a bit before the minimum,
        where the loss still improves".

        Rule: ``min_loss_lr / divisor``, by default a third of the LR at the lowest smoothed
        loss, about half a decade to its left on the log axis: still on the descent, clear of
        the flat bottom and of the blow-up. On the saved quick curve (ResNet-20, real CIFAR-10,
        batch 256, wd 1e-4, 1e-5 to 100: minimum at 5.3, blow-up at 38) it gives 1.8, where
        the post would use 0.8 to 3; on the weight-decay sweep's curves (wd 1e-5 to 1e-2) 1.0,
        1.2, 1.2 and 0.24. (A rule on the slope instead, the largest LR before the minimum
        where the loss still falls at a given fraction of its steepest rate, proved fragile:
        on the quick curve it moved from 0.55 to 2.4 as the fraction went from 1/3 to 1/4.)

        The smoothed loss lags the raw one, so its minimum can lie past the LR at which a
        fixed-LR run would diverge; this is a peak for a cycle that visits it briefly, not a
        fixed LR (for that, see ``suggest("minimum/10")``).

        Args:
            divisor: how far below the minimum to go (> 1).

        Raises:
            ValueError: for ``divisor <= 1``, or an empty curve.
        """
        if not (isinstance(divisor, (int, float)) and divisor > 1):
            raise ValueError(f"divisor must be a number > 1, got {divisor!r}")
        lr = self.min_loss_lr
        if lr == self.lrs[0] and len(self) > 1:
            warnings.warn(f"the smoothed loss was lowest at the first LR ({lr:.3g}): the test started "
                          "too high to read a 1cycle max LR off it; rerun with a smaller start_lr",
                          RuntimeWarning, stacklevel=2)
        return lr / divisor

    def cyclic_max_lr(self, divisor: float = 10.0) -> float:
        """The top of a CLR cycle by the post's advice: ``blowup_lr / divisor`` (about a tenth of
        the blow-up; 3.8 on the saved quick curve). If the test never stopped, the blow-up is
        only known to lie above the last LR, and this is conservative.

        Args:
            divisor: how far below the blow-up to go (> 1).
        """
        if not (isinstance(divisor, (int, float)) and divisor > 1):
            raise ValueError(f"divisor must be a number > 1, got {divisor!r}")
        return self.blowup_lr / divisor

    def suggest(self, method: str = "one_cycle", skip_start: int | None = None,
                skip_end: int | None = None) -> float:
        """A learning rate read off the curve; mind what each is for (:data:`SUGGESTION_USES`).

        Methods:
            ``"one_cycle"``: :meth:`one_cycle_max_lr`, the peak LR of a 1cycle schedule.
            ``"cyclic"``: :meth:`cyclic_max_lr`, the top LR of a CLR cycle.
            ``"minimum/10"``: a tenth of the LR at the lowest smoothed loss (fastai 1's rule), a
            fixed LR.
            ``"valley"``: the middle (on the log axis) of the longest stretch over which the loss
            keeps falling, a fixed LR. Like fastai 2's ``valley`` (which takes a point about
            halfway along), it depends on ``start_lr``: the stretch starts where the test did.
            ``"steepest"``: where the smoothed loss falls fastest against log(LR): a
            conservative fixed LR, far below a 1cycle maximum.

        On the saved quick curve (1e-5 to 100, blow-up at 38) these give 1.8, 3.8, 0.53, 0.0067
        and 0.0016; the post would take 0.8 to 3 as the 1cycle maximum.

        Args:
            method: one of :data:`SUGGESTIONS`.
            skip_start, skip_end: points ignored by ``"steepest"`` at each end, where the curve
                is noisy (defaults: a tenth and a twentieth of the curve, at most 10 and 5).

        Raises:
            ValueError: for an unknown method, or a curve of fewer than 3 points.
        """
        if method not in SUGGESTIONS:
            raise ValueError(f"method must be one of {SUGGESTIONS}, got {method!r}")
        self._require(3, "to suggest an LR")
        if method == "one_cycle":
            return self.one_cycle_max_lr()
        if method == "cyclic":
            return self.cyclic_max_lr()
        if method == "minimum/10":
            return self.min_loss_lr / 10
        if method == "valley":
            lo, hi = longest_descent(self.losses)
            return self.lrs[(lo + hi) // 2]
        return self.lrs[steepest_index(self.lrs, self.losses, skip_start, skip_end)]

    def _require(self, count: int, why: str = "") -> None:
        if len(self.lrs) < count:
            raise ValueError(f"the range test kept only {len(self.lrs)} points; need at least {count}"
                             + (f" {why}" if why else ""))

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

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, stop_lr: float | None = None,
                   settings: dict | None = None) -> "FinderResult":
        """Rebuild a result from :meth:`to_frame`'s output (e.g. read back from a CSV).

        Args:
            frame: columns ``lr`` and ``loss``; ``raw_loss`` and ``accuracy`` if recorded.
            stop_lr: the result's :attr:`stop_lr` (not in the frame): None if it never stopped.
            settings: the result's :attr:`settings`.

        Raises:
            ValueError: if ``lr`` or ``loss`` is missing, or ``stop_lr`` is not a positive number.
        """
        missing = [c for c in ("lr", "loss") if c not in frame.columns]
        if missing:
            raise ValueError(f"frame needs columns 'lr' and 'loss', missing {missing}; "
                             f"it has {list(frame.columns)}")
        if stop_lr is not None and (isinstance(stop_lr, bool) or not isinstance(stop_lr, numbers.Real)
                                    or not stop_lr > 0):
            raise ValueError(f"stop_lr must be a positive number or None, got {stop_lr!r}")
        column = lambda name: frame[name].tolist() if name in frame.columns else []  # noqa: E731
        return cls(lrs=column("lr"), losses=column("loss"), raw_losses=column("raw_loss"),
                   accuracies=column("accuracy"), stop_lr=None if stop_lr is None else float(stop_lr),
                   settings=dict(settings or {}))


def steepest_index(lrs: list, losses: list, skip_start: int | None = None,
                   skip_end: int | None = None) -> int:
    """Index where ``losses`` falls fastest against log(LR) (central differences).

    Args:
        lrs, losses: the curve.
        skip_start, skip_end: points left out at each end (defaults: a tenth and a twentieth
            of the curve, at most 10 and 5; at least one, for the central difference).
    """
    n = len(lrs)
    start = min(10, n // 10) if skip_start is None else skip_start
    end = min(5, n // 20) if skip_end is None else skip_end
    idx = list(range(max(start, 1), n - max(end, 1)))
    if not idx:
        raise ValueError(f"skip_start={start} and skip_end={end} leave no points of {n}")
    x = [math.log(lr) for lr in lrs]
    slope = {i: (losses[i + 1] - losses[i - 1]) / (x[i + 1] - x[i - 1]) for i in idx}
    return min(idx, key=slope.get)


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


def _schedule(start_lr: float, end_lr: float, num_it: int, mode: str, endpoint: bool = True) -> list[float]:
    """The test's LRs at ``i / (num_it - 1)`` (the last is ``end_lr``), or at ``i / num_it``
    without the endpoint (fastai 0.7's)."""
    steps = num_it - 1 if endpoint else num_it
    if mode == "exp":
        return [start_lr * (end_lr / start_lr) ** (i / steps) for i in range(num_it)]
    return [start_lr + (end_lr - start_lr) * i / steps for i in range(num_it)]


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


def _resolve_amp(precision: str | None, amp: bool | None) -> bool | None:
    """Map ``precision`` onto the ``amp`` flag: ``"bf16"`` -> True, ``"fp32"`` -> False, None
    (or ``"auto"``) -> ``amp``.

    Args:
        precision: ``"bf16"`` (bf16 autocast), ``"fp32"`` (none), or None / ``"auto"`` (leave
            it to ``amp``).
        amp: the older flag; None means bf16 autocast on CUDA only.

    Raises:
        ValueError: for an unknown precision, or one that contradicts ``amp``.
    """
    if precision is None or precision == "auto":
        return amp
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, 'auto' or None, got {precision!r}")
    wanted = precision == "bf16"
    if amp is not None and bool(amp) != wanted:
        raise ValueError(f"precision={precision!r} contradicts amp={amp!r}; pass only one of them")
    return wanted


def lr_find(model: nn.Module, loss_fn: Callable, batches: Iterable, optimizer: torch.optim.Optimizer,
            start_lr: float = 1e-7, end_lr: float = 10.0, num_it: int = 100, mode: str = "exp",
            beta: float = 0.98, stop_factor: float | None = 4.0, val_batches: Iterable | None = None,
            accuracy: bool = False, amp: bool | None = None, precision: str | None = None,
            endpoint: bool = True) -> FinderResult:
    """Run the LR range test and restore the model and optimizer afterwards.

    Args:
        model: the network, on its device (batches are moved there).
        loss_fn: ``loss_fn(output, target)``, e.g. ``torch.nn.functional.cross_entropy``.
        batches: re-iterable ``(x, y)`` batches; restarted as often as needed to reach ``num_it``.
        optimizer: the optimizer to test, with the momentum and weight decay of the real run;
            its learning rate is overwritten each batch (all param groups alike).
        start_lr, end_lr: the range of learning rates (``start_lr < end_lr``).
        num_it: number of batches; iteration ``i`` runs at
            ``start_lr * (end_lr/start_lr) ** (i / (num_it - 1))``, so the last at ``end_lr``
            (fastai divides by ``num_it`` instead: ``endpoint=False``; see the module's docstring).
        mode: ``"exp"`` (geometric steps, the post) or ``"linear"`` (Smith's CLR paper).
        beta: smoothing of the loss, ``avg = beta*avg + (1-beta)*loss``, divided by ``1 - beta**k``.
        stop_factor: stop when the smoothed loss exceeds this times the best, or is not finite;
            None never stops early. (The rule assumes a positive loss, as cross-entropy and MSE are.)
        val_batches: if given, the loss (and accuracy) are measured on these held-out batches
            after each step, in eval mode, instead of on the training batch.
        accuracy: also record the accuracy (argmax of the output) at each iteration.
        amp: bf16 autocast; default on for CUDA only.
        precision: ``"bf16"`` (same as ``amp=True``), ``"fp32"`` (``amp=False``) or None (use
            ``amp``). The one in effect is recorded as ``settings["precision"]``.
        endpoint: whether the last iteration runs at ``end_lr`` (True) or one step short of it,
            as in fastai 0.7 and the post (False).

    Returns:
        A :class:`FinderResult`.

    Raises:
        ValueError: for a bad argument (naming it and its value), or a loss that is not finite
            at the very first iteration (nothing to read off; the model is restored).
    """
    _check_args(start_lr, end_lr, num_it, mode, beta, stop_factor)
    amp = _resolve_amp(precision, amp)
    device = model_device(model)
    in_effect = amp if amp is not None else device.type == "cuda"
    result = FinderResult(settings=dict(start_lr=start_lr, end_lr=end_lr, num_it=num_it, mode=mode,
                                        beta=beta, stop_factor=stop_factor,
                                        held_out=val_batches is not None, accuracy=accuracy,
                                        precision="bf16" if in_effect else "fp32", endpoint=endpoint))
    saved = snapshot(model, optimizer)
    try:
        if not model.training:  # a model already training keeps its own per-layer settings
            model.train()
        # the precision recorded is the one used, for the training steps and any held-out loss alike
        _run(result, model, loss_fn, _repeat(batches), optimizer, val_batches, in_effect)
    finally:
        restore(model, optimizer, saved)
    return result


def _run(result: FinderResult, model: nn.Module, loss_fn: Callable, batches: Iterator,
         optimizer: torch.optim.Optimizer, val_batches: Iterable | None, amp: bool) -> None:
    """The range test's loop, filling ``result`` (whose settings hold the other arguments)."""
    s = result.settings
    device = model_device(model)
    amp_ctx = autocast(device, amp)
    avg, best = 0.0, math.inf
    for i, (lr, (x, y)) in enumerate(zip(_schedule(s["start_lr"], s["end_lr"], s["num_it"], s["mode"], s["endpoint"]),
                                         batches)):
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss, out = train_step(model, loss_fn, optimizer, x, y, amp_ctx)
        loss = loss.item()
        acc = (out.argmax(1) == y).float().mean().item() if s["accuracy"] else None
        if val_batches is not None:
            loss, acc = evaluate(model, val_batches, loss_fn, amp)
        avg = s["beta"] * avg + (1 - s["beta"]) * loss
        smoothed = avg / (1 - s["beta"] ** (i + 1))
        if i == 0 and not math.isfinite(smoothed):
            raise ValueError(f"the loss was not finite ({loss!r}) at the first iteration of the range "
                             f"test, at LR {lr!r}: try a smaller start_lr, or check the data, the "
                             "labels and the loss function")
        if not math.isfinite(smoothed) or (s["stop_factor"] is not None and i > 0
                                           and smoothed > s["stop_factor"] * best):
            result.stop_lr = lr
            return
        best = min(best, smoothed)
        result.lrs.append(lr)
        result.losses.append(smoothed)
        result.raw_losses.append(loss)
        if s["accuracy"]:
            result.accuracies.append(acc)

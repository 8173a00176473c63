"""The learning-rate range test ("LR finder").

Train for ``num_it`` steps (of one batch, or ``accumulation_steps`` batches) while the
learning rate grows from ``start_lr`` to ``end_lr`` (exponentially by default), record the
loss, smooth it with a bias-corrected exponential moving average, and stop once the smoothed
loss exceeds ``stop_factor`` times the best seen (or is not finite). The model's weights,
buffers, train/eval flags and the optimizer's state are then restored, in memory, to what they
were. Batches may have any layout (``unpack=``; dict and tuple inputs, a model that returns its
own loss with ``loss_fn="model"``: see :mod:`clrlib.batches`).

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
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Iterable, Iterator

import pandas as pd
import torch
import torch.nn as nn

from .batches import MODEL_LOSS, call_model, count, output_loss, resolve_unpack, to_device
from .train import autocast, model_device, model_is_channels_last, restore_training_modes, training_modes

__all__ = ["lr_find", "FinderResult", "SUGGESTIONS", "SUGGESTION_USES", "FASTAI_BEST_AFTER", "snapshot",
           "restore"]

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
#: ``best_after`` of fastai 0.7's range test (``LR_Finder.on_batch_end``: the best loss is
#: updated only ``if loss < self.best and self.iteration > 10``, on a count of batches from 0,
#: so batches 0..10 never set it and the test cannot stop on them, except on a NaN).
FASTAI_BEST_AFTER = 11


@dataclass
class FinderResult:
    """What :func:`lr_find` recorded, as plain lists (one entry per step kept).

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

    #: What each rule of :meth:`suggest` is for: :func:`clrlib.plots.plot_finder` reads the
    #: legend from the result, so that the plots need not import this module.
    suggestion_uses: ClassVar[Mapping[str, str]] = SUGGESTION_USES

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
        (:func:`clrlib.lab.analysis.largest_weight_decay_at_high_lr`).

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
        the flat bottom and of the blow-up. On the quick profile's stored curves (ResNet-20,
        real CIFAR-10, batch 256, wd 1e-4, 1e-5 to 100; results/quick/01_lr_finder) it gives
        2.53 with He et al.'s initialisation (minimum at 7.59, blow-up at 38.0) and 1.33 with
        the post's (minimum at 3.98, blow-up at 27.5), where the post would use 0.8 to 3; on
        the weight-decay sweep's curves (wd 1e-5, 1e-4, 1e-3, 1e-2; results/quick/06_weight_decay)
        0.21, 1.01, 0.70 and 0.23. (A rule on the slope instead, the largest LR before the
        minimum where the loss still falls at a given fraction of its steepest rate, proved
        fragile: on an earlier quick curve it moved from 0.55 to 2.4 as the fraction went from
        1/3 to 1/4.)

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

        On the quick profile's stored curve with He et al.'s initialisation (1e-5 to 100,
        blow-up at 38.0; results/quick/01_lr_finder) these give 2.53, 3.80, 0.76, 0.0087 and
        0.0020; the post would take 0.8 to 3 as the 1cycle maximum.

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
    seen = 0
    while True:
        before = seen
        for batch in batches:
            seen += 1
            yield batch
        if seen == before:
            if seen == 0:
                raise ValueError("batches is empty")
            # stack: _repeat, _train_step, _run, lr_find, the caller
            warnings.warn(f"batches ran out after {seen} batches; stopping the range test there "
                          "(pass a re-iterable loader to run all num_it iterations)",
                          RuntimeWarning, stacklevel=5)
            return


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_count(value, minimum: int) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= minimum


def _check_args(start_lr, end_lr, num_it, mode, beta, stop_factor, accumulation_steps=1, best_after=0) -> None:
    for name, value in (("start_lr", start_lr), ("end_lr", end_lr)):
        if not (_is_real(value) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    if start_lr >= end_lr:
        raise ValueError(f"start_lr must be smaller than end_lr, got start_lr={start_lr!r} >= end_lr={end_lr!r}")
    if not _is_count(num_it, 2):
        raise ValueError(f"num_it must be an integer >= 2, got {num_it!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not (_is_real(beta) and 0.0 <= beta < 1.0):
        raise ValueError(f"beta must be in [0, 1), got {beta!r}")
    if stop_factor is not None and not (_is_real(stop_factor) and stop_factor > 1.0):
        raise ValueError(f"stop_factor must be > 1 (or None to never stop), got {stop_factor!r}")
    if not _is_count(accumulation_steps, 1):
        raise ValueError(f"accumulation_steps must be an integer >= 1, got {accumulation_steps!r}")
    if not _is_count(best_after, 0):
        raise ValueError(f"best_after must be an integer >= 0, got {best_after!r}")


def _is_optimizer(value) -> bool:
    """A torch optimizer, or an object that behaves like one (param groups and a state dict)."""
    return isinstance(value, torch.optim.Optimizer) or all(
        hasattr(value, name) for name in ("param_groups", "state_dict", "load_state_dict", "step", "zero_grad"))


def _what(value) -> str:
    """A few words on what ``value`` is, for the message about arguments in the wrong place."""
    kind = type(value).__name__
    if _is_optimizer(value):
        return f"an optimizer ({kind})"
    if isinstance(value, nn.modules.loss._Loss):
        return f"a loss ({kind})"
    if isinstance(value, nn.Module):
        return f"a model ({kind})"
    if isinstance(value, (str, numbers.Number)) or value is None:
        return repr(value)
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if callable(value):
        return f"a function ({getattr(value, '__name__', kind)})"
    if hasattr(value, "__iter__"):
        return f"batches ({kind})"
    return f"a {kind}"


def _check_roles(model, loss_fn, batches, optimizer) -> None:
    """Refuse arguments in the wrong place or of the wrong kind, saying which is which.

    Raises:
        TypeError: naming each misplaced argument and what it got; for torch-lr-finder's order
            ``(model, optimizer, criterion, loader)``, the call to make instead.
    """
    wrong = []
    if not isinstance(model, nn.Module) or isinstance(model, nn.modules.loss._Loss):
        wrong.append(("model", "an nn.Module", model))
    if _is_optimizer(loss_fn) or not (loss_fn == MODEL_LOSS if isinstance(loss_fn, str) else callable(loss_fn)):
        wrong.append(("loss_fn", f"a function loss_fn(output, target) or {MODEL_LOSS!r}", loss_fn))
    if (isinstance(batches, (nn.Module, torch.Tensor, str, Mapping)) or _is_optimizer(batches)
            or not hasattr(batches, "__iter__")):
        wrong.append(("batches", "an iterable of batches (a DataLoader, a list of (inputs, target))", batches))
    if not _is_optimizer(optimizer):
        wrong.append(("optimizer", "a torch.optim.Optimizer", optimizer))
    if not wrong:
        return
    lines = "; ".join(f"{name} must be {want}, got {_what(value)}" for name, want, value in wrong)
    hint = "the order is lr_find(model, loss_fn, batches, optimizer); keywords avoid the mix-up"
    if _is_optimizer(loss_fn) and isinstance(batches, nn.Module) and not _is_optimizer(optimizer):
        hint = ("that is torch-lr-finder's order (model, optimizer, criterion, loader); clrlib's is "
                "lr_find(model, loss_fn, batches, optimizer): call lr_find(model, criterion, loader, optimizer)")
    raise TypeError(f"lr_find got arguments in the wrong place: {lines}. {hint}")


def _optimizer_lr(optimizer) -> float:
    """The learning rate the optimizer holds now (``start_lr=None``), the same in every group."""
    lrs = sorted({float(group["lr"]) for group in optimizer.param_groups})
    if len(lrs) != 1:
        raise ValueError(f"start_lr=None starts from the optimizer's own LR, but its param groups hold "
                         f"different LRs {lrs}: pass start_lr")
    return lrs[0]


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


def lr_find(model: nn.Module, loss_fn: Callable | str, batches: Iterable, optimizer: torch.optim.Optimizer,
            start_lr: float | None = 1e-7, end_lr: float = 10.0, num_it: int = 100, mode: str = "exp",
            beta: float = 0.98, stop_factor: float | None = 4.0, val_batches: Iterable | None = None,
            accuracy: bool = False, amp: bool | None = None, precision: str | None = None,
            endpoint: bool = True, *, unpack: Callable | None = None, accumulation_steps: int = 1,
            best_after: int = 0, progress: bool = False) -> FinderResult:
    """Run the LR range test and restore the model and optimizer afterwards.

    The defaults (1e-7 to 10, last iteration at ``end_lr``) are fastai 1's and torch-lr-finder's
    habits for a model of unknown scale. The run specs of this project
    (:class:`clrlib.lab.specs.FinderSpec`) use the post's settings instead: 1e-5 to 100 with
    fastai 0.7's steps (``endpoint=False``), so a curve from the notebooks and one from a bare
    ``lr_find(model, loss_fn, batches, optimizer)`` cover different ranges.

    Args:
        model: the network, on its device (batches are moved there).
        loss_fn: ``loss_fn(output, target)``, e.g. ``torch.nn.functional.cross_entropy``; or
            ``"model"`` for a model that returns its own loss (an output with ``.loss``, a dict
            with ``"loss"``, or a 0-d tensor, as Hugging Face models do when given ``labels``).
        batches: re-iterable batches; restarted as often as needed to reach ``num_it``.
        optimizer: the optimizer to test, with the momentum and weight decay of the real run;
            its learning rate is overwritten each step (all param groups alike).
        start_lr, end_lr: the range of learning rates (``start_lr < end_lr``); ``start_lr=None``
            starts from the LR the optimizer holds now.
        num_it: number of steps; step ``i`` runs at
            ``start_lr * (end_lr/start_lr) ** (i / (num_it - 1))``, so the last at ``end_lr``
            (fastai divides by ``num_it`` instead: ``endpoint=False``; see the module's docstring).
        mode: ``"exp"`` (geometric steps, the post) or ``"linear"`` (Smith's CLR paper).
        beta: smoothing of the loss, ``avg = beta*avg + (1-beta)*loss``, divided by ``1 - beta**k``.
        stop_factor: stop when the smoothed loss exceeds this times the best, or is not finite;
            None never stops early. The rule needs a positive loss (cross-entropy, MSE): a
            smoothed loss at or below zero raises a ValueError unless ``stop_factor=None``.
        val_batches: if given, the loss (and accuracy) are measured on these held-out batches
            after each step, in eval mode, instead of on the training batch (any layout that
            ``unpack`` takes; the mean is weighted by the examples in each batch).
        accuracy: also record the accuracy (argmax over dimension 1 of the output, or of its
            ``.logits``, against the target) at each iteration.
        amp: bf16 autocast; default on for CUDA only.
        precision: ``"bf16"`` (same as ``amp=True``), ``"fp32"`` (``amp=False``) or None (use
            ``amp``). The one in effect is recorded as ``settings["precision"]``.
        endpoint: whether the last iteration runs at ``end_lr`` (True) or one step short of it,
            as in fastai 0.7 and the post (False).
        unpack: ``unpack(batch) -> (inputs, target)``; the default takes ``(x, y)`` pairs and
            dicts with a ``"labels"`` entry (:func:`clrlib.batches.default_unpack`). Inputs may be
            a tensor (``model(x)``), a tuple (``model(*inputs)``) or a dict (``model(**inputs)``).
        accumulation_steps: batches per step: the gradients of ``N`` batches are averaged before
            each optimizer step, the LR moves once per ``N`` batches, and the loss recorded is
            the mean over them (the effective batch is ``N`` times the loader's).
        best_after: the first ``best_after`` steps are not taken as the best loss, so the test
            cannot stop on them (except on a non-finite loss); 0 tracks the best from the start.
            fastai 0.7 (the post) does not stop during its first 11 steps:
            ``best_after=FASTAI_BEST_AFTER``.
        progress: a tqdm progress bar over the iterations, with the LR and the smoothed loss
            (nothing is printed otherwise).

    Returns:
        A :class:`FinderResult`.

    Raises:
        TypeError: for arguments in the wrong place (naming each: e.g. torch-lr-finder's order
            ``(model, optimizer, criterion, loader)``), or a batch ``unpack`` cannot read.
        ValueError: for a bad argument (naming it and its value), a loss that is not finite at
            the very first iteration, or a smoothed loss at or below zero under the stop rule
            (nothing to read off; the model is restored in every case).

    Example (a model that returns its own loss, fed dict batches):
        >>> class Text(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.emb, self.out = torch.nn.Embedding(50, 8), torch.nn.Linear(8, 2)
        ...     def forward(self, input_ids, labels):
        ...         loss = torch.nn.functional.cross_entropy(self.out(self.emb(input_ids).mean(1)), labels)
        ...         return {"loss": loss}
        >>> _ = torch.manual_seed(0)
        >>> model = Text()
        >>> data = [{"input_ids": torch.randint(0, 50, (16, 5)), "labels": torch.randint(0, 2, (16,))}]
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.01)
        >>> result = lr_find(model, "model", data, opt, start_lr=None, end_lr=1.0, num_it=10,
        ...                  accumulation_steps=2)
        >>> len(result), result.lrs[0], result.settings["accumulation_steps"]
        (10, 0.01, 2)
    """
    _check_roles(model, loss_fn, batches, optimizer)
    if start_lr is None:
        start_lr = _optimizer_lr(optimizer)
    _check_args(start_lr, end_lr, num_it, mode, beta, stop_factor, accumulation_steps, best_after)
    for name, flag in (("accuracy", accuracy), ("endpoint", endpoint), ("progress", progress)):
        if not isinstance(flag, bool):
            raise ValueError(f"{name} must be True or False, got {flag!r}")
    if val_batches is not None and (isinstance(val_batches, (torch.Tensor, str, Mapping))
                                    or not hasattr(val_batches, "__iter__")):
        raise TypeError(f"val_batches must be an iterable of batches or None, got {_what(val_batches)}")
    amp = _resolve_amp(precision, amp)
    device = model_device(model)
    forward = _Forward(model, loss_fn, resolve_unpack(unpack, loss_fn), device, model_is_channels_last(model))
    in_effect = amp if amp is not None else device.type == "cuda"
    result = FinderResult(settings=dict(start_lr=start_lr, end_lr=end_lr, num_it=num_it, mode=mode,
                                        beta=beta, stop_factor=stop_factor,
                                        held_out=val_batches is not None, accuracy=accuracy,
                                        precision="bf16" if in_effect else "fp32", endpoint=endpoint,
                                        accumulation_steps=accumulation_steps, best_after=best_after))
    saved, bar = snapshot(model, optimizer), None
    try:
        if not model.training:  # a model already training keeps its own per-layer settings
            model.train()
        # the precision recorded is the one used, for the training steps and any held-out loss alike
        bar = _progress_bar(num_it) if progress else None
        _run(result, forward, _repeat(batches), optimizer, val_batches, in_effect, bar)
    finally:
        if bar is not None:
            bar.close()
        restore(model, optimizer, saved)
    return result


@dataclass
class _Forward:
    """How the range test turns a batch into an output and a loss: unpack it, move it to the
    model's device (channels-last for 4-d float inputs if the model is), call the model."""

    model: nn.Module
    loss_fn: Callable | str
    unpack: Callable
    device: torch.device
    channels_last: bool

    def __call__(self, batch) -> tuple:
        """``(output, target, inputs)`` of a batch."""
        parts = self.unpack(batch)
        if not (isinstance(parts, (tuple, list)) and len(parts) == 2):
            raise TypeError(f"unpack must return (inputs, target), got {_what(parts)}")
        inputs = to_device(parts[0], self.device, self.channels_last)
        target = to_device(parts[1], self.device)
        return call_model(self.model, inputs), target, inputs

    def loss(self, output, target, fp32: bool = False) -> torch.Tensor:
        """The loss of an output: ``loss_fn(output, target)``, or the model's own."""
        if isinstance(self.loss_fn, str):
            loss = output_loss(output)
            return loss.float() if fp32 else loss
        return self.loss_fn(output.float() if fp32 else output, target)


def _correct(output, target) -> tuple[int, int]:
    """Right predictions (argmax over dimension 1 of the logits) and predictions made."""
    logits = output if isinstance(output, torch.Tensor) else getattr(output, "logits", None)
    if logits is None and isinstance(output, Mapping):
        logits = output.get("logits")
    if not isinstance(logits, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise TypeError(f"accuracy=True needs logits (a tensor output, or one with .logits) and a target "
                        f"tensor, got an output {type(output).__name__} and a target {type(target).__name__}")
    hits = logits.argmax(1) == target
    return int(hits.sum().item()), hits.numel()


_END = object()


def _train_step(forward: _Forward, optimizer, batches: Iterator, n: int, amp_ctx, accuracy: bool):
    """One optimizer step on ``n`` batches (gradients averaged); ``(mean loss, accuracy)``, or None
    if the batches ran out before ``n`` (that step is not taken)."""
    optimizer.zero_grad(set_to_none=True)
    losses, right, made = [], 0, 0
    for _ in range(n):
        batch = next(batches, _END)
        if batch is _END:
            return None
        with amp_ctx:
            output, target, _ = forward(batch)
            loss = forward.loss(output, target)
        (loss if n == 1 else loss / n).backward()
        losses.append(loss.detach())
        if accuracy:
            hits, total = _correct(output.detach() if isinstance(output, torch.Tensor) else output, target)
            right, made = right + hits, made + total
    optimizer.step()
    return math.fsum(loss.item() for loss in losses) / n, (right / made if accuracy else None)


@torch.no_grad()
def _held_out(forward: _Forward, batches: Iterable, amp: bool, accuracy: bool) -> tuple[float, float | None]:
    """Mean loss (fp32, weighted by examples per batch) and accuracy on ``batches``, in eval mode."""
    modes = training_modes(forward.model)
    forward.model.eval()
    total = torch.zeros((), device=forward.device)
    examples, right, made = 0, 0, 0
    try:
        with autocast(forward.device, amp):
            for batch in batches:
                output, target, inputs = forward(batch)
                size = count(inputs, target)
                total += forward.loss(output, target, fp32=True) * size
                examples += size
                if accuracy:
                    hits, predictions = _correct(output, target)
                    right, made = right + hits, made + predictions
    finally:
        restore_training_modes(modes)
    if examples == 0:
        raise ValueError("val_batches is empty")
    return total.item() / examples, (right / made if accuracy else None)


def _stops(settings: dict, i: int, lr: float, loss: float, smoothed: float, best: float) -> bool:
    """Whether the test stops at iteration ``i``: a non-finite loss, or the stop rule.

    Raises:
        ValueError: for a non-finite loss at the first iteration, or a smoothed loss at or
            below zero while the stop rule is on (the rule means nothing there).
    """
    if i == 0 and not math.isfinite(smoothed):
        raise ValueError(f"the loss was not finite ({loss!r}) at the first iteration of the range "
                         f"test, at LR {lr!r}: try a smaller start_lr, or check the data, the "
                         "labels and the loss function")
    if not math.isfinite(smoothed):
        return True
    factor = settings["stop_factor"]
    if factor is None:
        return False
    if smoothed <= 0:
        raise ValueError(f"the smoothed loss is {smoothed:.4g} at iteration {i} (LR {lr:.3g}): the stop "
                         f"rule (stop at stop_factor={factor!r} times the best loss) needs a positive "
                         "loss such as cross-entropy or MSE. For a loss that can be zero or negative "
                         "(a log-likelihood, a shifted loss) pass stop_factor=None, or add a constant "
                         "that keeps the loss positive")
    return i > 0 and smoothed > factor * best


def _run(result: FinderResult, forward: _Forward, batches: Iterator, optimizer: torch.optim.Optimizer,
         val_batches: Iterable | None, amp: bool, bar=None) -> None:
    """The range test's loop, filling ``result`` (whose settings hold the other arguments)."""
    s = result.settings
    amp_ctx = autocast(forward.device, amp)
    avg, best = 0.0, math.inf
    for i, lr in enumerate(_schedule(s["start_lr"], s["end_lr"], s["num_it"], s["mode"], s["endpoint"])):
        for group in optimizer.param_groups:
            group["lr"] = lr
        step = _train_step(forward, optimizer, batches, s["accumulation_steps"], amp_ctx, s["accuracy"])
        if step is None:
            return
        loss, acc = step
        if val_batches is not None:
            loss, acc = _held_out(forward, val_batches, amp, s["accuracy"])
        avg = s["beta"] * avg + (1 - s["beta"]) * loss
        smoothed = avg / (1 - s["beta"] ** (i + 1))
        if _stops(s, i, lr, loss, smoothed, best):
            result.stop_lr = lr
            return
        if i >= s["best_after"]:
            best = min(best, smoothed)
        result.lrs.append(lr)
        result.losses.append(smoothed)
        result.raw_losses.append(loss)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(lr=f"{lr:.3g}", loss=f"{smoothed:.3f}", refresh=False)
        if s["accuracy"]:
            result.accuracies.append(acc)


def _progress_bar(total: int):
    from tqdm.auto import tqdm
    return tqdm(total=total, unit="it", desc="range test", leave=False)

"""A small training loop with a per-batch schedule and a per-step log.

:func:`fit` trains any model with a schedule from :mod:`clrlib.schedules`,
evaluates on the test set after every epoch and returns the whole history as one
pandas DataFrame: a row per optimizer step (``step, epoch, lr, momentum, loss``), the
last row of each epoch also carrying ``train_loss, test_loss, test_acc, seconds``.
:func:`epoch_table` selects those rows. Plots in :mod:`clrlib.plots` are drawn from it.
Batches may have any layout (:mod:`clrlib.batches`: ``(x, y)`` pairs, dicts with
``"labels"``, tuple or dict inputs, or an ``unpack`` function), and a model may return its
own loss (``loss_fn="model"``).

Speed settings are resolved once per run by :func:`clrlib.device.resolve_policy` (their
names stay importable from here), each per device when left as None (see :func:`fit`):

* precision: ``"bf16"`` (bf16 autocast) on CUDA and on CPUs with native bf16
  instructions (:func:`cpu_has_native_bf16`), ``"fp32"`` elsewhere (:func:`default_precision`);
  an fp32 run turns TF32 off (true fp32);
* channels-last memory format: on CUDA and the CPU, for models with 4-d conv weights, and
  only on the inputs' 4-d floating-point tensors;
* ``torch.compile``: on CUDA, in mode ``"reduce-overhead"`` (CUDA graphs), off elsewhere.
  Only the forward pass and the loss are compiled (their backward comes with them); the
  optimizer step stays eager, so a new LR or momentum every step never recompiles.
  Compiled code is kept per process and architecture (:func:`compiled_steps`): a new
  model of the same architecture reuses it. If compiling fails or CUDA graphs are skipped,
  the run goes on eagerly with a warning (:class:`CompileWatch`).
"""
from __future__ import annotations

import contextlib
import math
import os
import random
import time
import types
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
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
           "compiled_steps", "compile_key", "clear_compile_cache", "CompiledSteps", "CompileWatch", "watch_compile",
           "output_logits", "is_class_target", "train_step", "evaluate", "fit",
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

def _train_forward(model: Callable, loss_fn: Callable | str, inputs, target) -> torch.Tensor:
    return _loss_of(loss_fn, call_model(model, inputs), target)


def _eval_forward(model: Callable, loss_fn: Callable | str, inputs,
                  target) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The batch's summed loss (in fp32) and its number of correct predictions (None where the
    output has no logits for a class target, see :func:`is_class_target`)."""
    output = call_model(model, inputs)
    loss = _loss_of(loss_fn, output.float() if isinstance(output, torch.Tensor) else output, target)
    logits = output_logits(output)
    right = (logits.argmax(1) == target).sum() if is_class_target(logits, target) else None
    return loss.float() * count(inputs, target), right


def _check_loss_fn(loss_fn) -> Callable | str:
    """``loss_fn`` checked: a function ``(output, target) -> loss``, ``"model"``, or None for cross-entropy."""
    if loss_fn is None:
        return F.cross_entropy
    if isinstance(loss_fn, str) and loss_fn == MODEL_LOSS:
        return MODEL_LOSS
    if isinstance(loss_fn, str) or not callable(loss_fn):
        raise ValueError(f"loss_fn must be a function (output, target) -> loss, {MODEL_LOSS!r} (the model "
                         f"returns its own loss) or None (cross-entropy), got {loss_fn!r}")
    return loss_fn


def _loss_of(loss_fn: Callable | str, output, target) -> torch.Tensor:
    return output_loss(output) if isinstance(loss_fn, str) else loss_fn(output, target)


def output_logits(output) -> torch.Tensor | None:
    """The class scores in a model's output: the output itself if a tensor, else its ``.logits``
    or ``["logits"]`` (as Hugging Face models return them); None if it has none."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, Mapping):
        logits = output.get("logits")
    return logits if isinstance(logits, torch.Tensor) else None


def is_class_target(logits: torch.Tensor | None, target) -> bool:
    """Whether ``logits`` score classes for an integer class ``target``: target (N, ...) integers,
    logits (N, C, ...) floats with the same trailing sizes, so that ``logits.argmax(1)`` predicts it."""
    if not (isinstance(logits, torch.Tensor) and isinstance(target, torch.Tensor)):
        return False
    integer = not (target.is_floating_point() or target.is_complex() or target.dtype == torch.bool)
    return (integer and logits.is_floating_point() and logits.dim() == target.dim() + 1
            and logits.shape[0] == target.shape[0] and logits.shape[2:] == target.shape[1:])


@dataclass(frozen=True)
class CompiledSteps:
    """The compiled functions of one (architecture, mode, precision, layout, device type).

    Attributes:
        train: ``(model, loss_fn, inputs, target) -> loss`` (forward and loss; call ``.backward()`` on it).
        evaluate: ``(model, loss_fn, inputs, target) -> (sum of the losses, number correct)``, for
            no-grad use; the number correct is None where the output has no class logits.
        mode: the ``torch.compile`` mode.
        cudagraphs: whether they replay CUDA graphs, so that each step must start with
            ``torch.compiler.cudagraph_mark_step_begin()`` and outputs must be copied before the next.
    """

    train: Callable
    evaluate: Callable
    mode: str
    cudagraphs: bool


_COMPILED: dict[tuple, CompiledSteps] = {}
# compile_key -> why its compiled code was given up (a later run of that key trains eagerly at once).
_FALLBACKS: dict[tuple, str] = {}


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


def compile_key(model: nn.Module, mode: str, precision: str, channels_last: bool,
                device: str | torch.device) -> tuple:
    """What the compiled code of :func:`compiled_steps` is kept under (and a fallback remembered by)."""
    return (architecture_key(model), mode, precision, bool(channels_last), torch.device(device).type)


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
    key = compile_key(model, mode, precision, channels_last, device)
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
    """Forget the compiled functions of :func:`compiled_steps`, the remembered fallbacks to eager,
    and reset dynamo's caches."""
    from torch import _dynamo
    _COMPILED.clear()
    _FALLBACKS.clear()
    _dynamo.reset()


def _dynamo_counter(group: str, name: str) -> int:
    from torch._dynamo.utils import counters
    return int(counters[group][name])


@dataclass
class CompileWatch:
    """The compiled path of one :func:`fit` (or :func:`evaluate`): its functions, the fallback to
    eager, and what compiling cost.

    Every compiled call goes through :meth:`call`. A call that raises, or CUDA graphs that
    inductor skipped (``torch._dynamo.utils.counters["inductor"]["cudagraph_skips"]`` grew:
    compiled code without graphs is slower than eager), ends the compiled path (:meth:`give_up`):
    a warning names the cause, the rest of the run is eager, and the fallback is remembered
    for the same :func:`compile_key` (a later run trains eagerly at once).

    Cold compile seconds are measured on the host: the wall time of each compiled call during
    which dynamo compiled a graph (``counters["stats"]["unique_graphs"]`` grew; a call that
    raised counts too), less the median time of the calls of the same kind (train step or
    eval batch) that did not compile. It is approximate: the backward graph compiled lazily
    at the first backward is in it (a train step's time includes its backward), but on a
    GPU the queued device time is not, nor CUDA-graph recording in the calls after.

    Attributes:
        asked: the mode asked (False: eager).
        steps: the compiled functions, or None once eager (or from the start).
        key: the :func:`compile_key` of the run (None for eager).
        fallback: why the compiled path was given up, or None.
    """

    asked: str | bool
    steps: CompiledSteps | None = None
    key: tuple | None = None
    fallback: str | None = None
    graphs_at_start: int = 0
    skips_at_start: int = 0
    cold: dict = field(default_factory=lambda: {"train": [], "eval": []})
    warm: dict = field(default_factory=lambda: {"train": [], "eval": []})

    def call(self, kind: str, fn: Callable, *args):
        """``fn(*args)``, timed as a ``kind`` (``"train"`` or ``"eval"``) call; see the class."""
        graphs, start = _dynamo_counter("stats", "unique_graphs"), time.perf_counter()
        try:
            out = fn(*args)
        except Exception:
            self.cold[kind].append(time.perf_counter() - start)
            raise
        seconds = time.perf_counter() - start
        if _dynamo_counter("stats", "unique_graphs") != graphs:
            self.cold[kind].append(seconds)
        elif len(self.warm[kind]) < 200:
            self.warm[kind].append(seconds)
        skips = self.cudagraph_skips()
        if skips and self.steps is not None and self.steps.cudagraphs:
            self.give_up(f"CUDA graphs were skipped {skips} time(s) (torch._dynamo counters "
                         "'cudagraph_skips'; the log of torch._inductor says why)")
        return out

    def give_up(self, reason: str) -> None:
        """End the compiled path: warn, train eagerly from here, remember it for this key."""
        warnings.warn(f"torch.compile (mode {self.asked!r}) given up, training eagerly: {reason}",
                      RuntimeWarning, stacklevel=4)
        self.fallback, self.steps = reason, None
        if self.key is not None:
            _FALLBACKS[self.key] = reason

    def cudagraph_skips(self) -> int:
        return _dynamo_counter("inductor", "cudagraph_skips") - self.skips_at_start if self.asked else 0

    def record(self) -> dict:
        """``compile_asked``, ``compile`` (the mode used to the end, or False), ``compile_fallback``,
        ``cudagraph_skips``, ``graphs_compiled`` and ``cold_compile_seconds`` (None if eager)."""
        graphs = _dynamo_counter("stats", "unique_graphs") - self.graphs_at_start if self.asked else 0
        cold = None
        if self.asked:
            cold = sum(max(0.0, sum(times) - len(times) * _median(self.warm[kind]))
                       for kind, times in self.cold.items())
        return {"compile_asked": self.asked, "compile": self.steps.mode if self.steps else False,
                "compile_fallback": self.fallback, "cudagraph_skips": self.cudagraph_skips(),
                "graphs_compiled": graphs, "cold_compile_seconds": cold}


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else 0.0


def _error_text(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300] if text else ''}"


def watch_compile(model: nn.Module, policy: DevicePolicy) -> CompileWatch:
    """The :class:`CompileWatch` of a run of ``model`` under ``policy``: eager if the policy says
    so or an earlier run of the same key fell back, else :func:`compiled_steps` (eager, with a
    warning, if making them raises)."""
    watch = CompileWatch(asked=policy.compile)
    if not policy.compile:
        return watch
    watch.graphs_at_start = _dynamo_counter("stats", "unique_graphs")
    watch.skips_at_start = _dynamo_counter("inductor", "cudagraph_skips")
    watch.key = compile_key(model, policy.compile, policy.precision, policy.channels_last, policy.device)
    if watch.key in _FALLBACKS:
        watch.give_up(f"{_FALLBACKS[watch.key]} (in an earlier run of this architecture and settings)")
        return watch
    try:
        watch.steps = compiled_steps(model, policy.compile, policy.precision, policy.channels_last,
                                     policy.device)
    except Exception as e:  # noqa: BLE001 - any failure of the compiler means: train eagerly
        watch.give_up(f"compiling raised {_error_text(e)}")
    return watch


# ---------------------------------------------------------------------------------------------

def train_step(model: Callable, loss_fn: Callable | str, optimizer: torch.optim.Optimizer, x, y,
               amp: contextlib.AbstractContextManager | None = None) -> tuple[torch.Tensor, object]:
    """One optimizer step on a batch; returns the loss (0-d) and the output, both detached.

    Nothing is copied to the host, so the caller decides when to synchronise.

    Args:
        model: the network.
        loss_fn: ``(output, target) -> loss``, or ``"model"`` for a model that returns its own
            loss (see :func:`clrlib.batches.output_loss`).
        optimizer: stepped once.
        x: the inputs, on the model's device: a tensor (``model(x)``), a tuple or list
            (``model(*x)``) or a dict (``model(**x)``).
        y: the target, as ``loss_fn`` takes it.
        amp: the autocast context to run the forward pass in (see :func:`autocast_for`), or None.
    """
    optimizer.zero_grad(set_to_none=True)
    with amp if amp is not None else contextlib.nullcontext():
        out = call_model(model, x)
        loss = _loss_of(loss_fn, out, y)
    loss.backward()
    optimizer.step()
    return loss.detach(), out.detach() if isinstance(out, torch.Tensor) else out


def _compiled_train_step(steps: CompiledSteps, model: nn.Module, loss_fn: Callable | str,
                         optimizer: torch.optim.Optimizer, x, y,
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


def _train_batch(run: "_Run", inputs, target, amp, losses: torch.Tensor, index: int) -> None:
    """One training step, compiled while the run's :class:`CompileWatch` has steps (eager if it
    raises, see :meth:`CompileWatch.give_up`), into ``losses[index]``."""
    watch = run.watch
    if watch.steps is not None:
        try:
            watch.call("train", _compiled_train_step, watch.steps, run.model, run.loss_fn, run.optimizer,
                       inputs, target, amp, losses, index)
            return
        except Exception as e:  # noqa: BLE001 - the step is redone eagerly (which raises a real error again)
            watch.give_up(f"a compiled training step raised {_error_text(e)}")
    losses[index] = train_step(run.model, run.loss_fn, run.optimizer, inputs, target, amp)[0]


def _eval_batch(watch: CompileWatch | None, model: nn.Module, loss_fn, inputs, target):
    """:func:`_eval_forward` of a batch, compiled while ``watch`` has steps."""
    steps = watch.steps if watch is not None else None
    if steps is not None:
        try:
            if steps.cudagraphs:
                torch.compiler.cudagraph_mark_step_begin()
            return watch.call("eval", steps.evaluate, model, loss_fn, inputs, target)
        except Exception as e:  # noqa: BLE001
            watch.give_up(f"a compiled evaluation raised {_error_text(e)}")
    return _eval_forward(model, loss_fn, inputs, target)


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable, loss_fn: Callable | str | None = None,
             amp: bool | None = None, *, precision: str | None = None,
             channels_last: bool | None = None, compile: bool | str | None = False,
             unpack: Callable | None = None, policy: DevicePolicy | None = None) -> tuple[float, float]:
    """Mean loss and accuracy (a fraction) of ``model`` over ``batches``, in eval mode.

    The accuracy counts ``output.argmax(1) == target`` where the output (or its ``.logits``)
    scores classes for an integer class target (:func:`is_class_target`: logits (N, C, ...),
    target (N, ...)); it is NaN if any batch has no such output and target (a regression, a
    model that returns only its loss).

    Args:
        model: the network, on its device (batches are moved there); its train/eval flags are restored.
        batches: batches of any layout that ``unpack`` reads.
        loss_fn: ``(output, target) -> loss`` (given the output in fp32), ``"model"`` for a model that
            returns its own loss, or None for cross-entropy.
        amp: older alias of ``precision``: True for ``"bf16"``, False for ``"fp32"``.
        precision: ``"bf16"``, ``"fp32"``, or None for :func:`default_precision` of the model's device.
        channels_last: convert inputs' 4-d float tensors to channels-last; default: if the model's weights are.
        compile: as in :func:`fit`, but off by default.
        unpack: ``batch -> (inputs, target)``; default :func:`clrlib.batches.default_unpack`.
        policy: a :class:`DevicePolicy` to use instead of ``amp``, ``precision``, ``channels_last``
            and ``compile`` (which must then be left unset).

    Raises:
        ValueError: if ``batches`` is empty, or for a bad setting.
    """
    if policy is None:
        if channels_last is None:
            channels_last = model_is_channels_last(model)
        policy = resolve_policy(model_device(model), precision, channels_last, compile, model=model, amp=amp)
    else:
        _no_settings_beside_policy(amp=amp, precision=precision, channels_last=channels_last,
                                   compile=compile or None)
    loss_fn = _check_loss_fn(loss_fn)
    with policy.applied():
        watch = watch_compile(model, policy)
        return _evaluate(model, batches, loss_fn, resolve_unpack(unpack, loss_fn), policy, watch)


def _no_settings_beside_policy(**settings) -> None:
    given = {name: value for name, value in settings.items() if value is not None}
    if given:
        raise ValueError(f"pass either policy= or the settings it holds, not both: got {given}")


@torch.no_grad()
def _evaluate(model: nn.Module, batches: Iterable, loss_fn: Callable | str, unpack: Callable,
              policy: DevicePolicy, watch: CompileWatch | None) -> tuple[float, float]:
    device = policy.device
    modes = training_modes(model)
    model.eval()
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    examples, scored, classes = 0, 0, True
    try:
        with policy.autocast():
            for batch in batches:
                inputs, target = unpack(batch)
                inputs, target = to_device(inputs, device, policy.channels_last), to_device(target, device)
                loss_sum, right = _eval_batch(watch, model, loss_fn, inputs, target)
                total_loss += loss_sum  # copied out before the next replay
                examples += count(inputs, target)
                classes = classes and right is not None
                if classes:
                    correct += right
                    scored += target.numel()
    finally:
        restore_training_modes(modes)
    if examples == 0:
        raise ValueError("evaluate got no batches")
    return total_loss.item() / examples, correct.item() / scored if classes else math.nan


@dataclass
class _Run:
    """What one epoch of :func:`fit` needs, resolved once."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Scheduler
    loss_fn: Callable | str
    unpack: Callable
    policy: DevicePolicy
    watch: CompileWatch
    bar: object = None

    @property
    def device(self) -> torch.device:
        return self.policy.device

    def settings(self, history: pd.DataFrame) -> dict:
        """What was used and what it cost, for ``history.attrs["fit"]`` (inside ``policy.applied()``)."""
        seconds = history["seconds"].dropna() if len(history) else pd.Series(dtype=float)
        return {**self.policy.record(), **self.watch.record(),
                "seconds_per_epoch": float(seconds.mean()) if len(seconds) else math.nan}


def fit(model: nn.Module, train_loader, epochs: int, schedule: ScheduleFn | None = None,
        optimizer: torch.optim.Optimizer | None = None, *, lr: float = 0.1, momentum: float = 0.9,
        weight_decay: float = 1e-4, test_loader=None, loss_fn: Callable | str | None = None,
        unpack: Callable | None = None,
        device: str | torch.device | None = None, precision: str | None = None, amp: bool | None = None,
        channels_last: bool | None = None, compile: bool | str | None = None, seed: int | None = None,
        progress: bool = True, stop_on_divergence: bool = True,
        checkpoint: str | os.PathLike | None = None,
        on_epoch: Callable[[dict], None] | None = None, policy: DevicePolicy | None = None) -> pd.DataFrame:
    """Train ``model`` for ``epochs`` epochs, stepping the schedule every batch.

    Args:
        model: the network; it is moved to ``device``.
        train_loader: re-iterable batches with a ``len()``, e.g. :class:`clrlib.data.CifarLoader` or a
            ``torch.utils.data.DataLoader``: ``(inputs, target)`` pairs or dicts with ``"labels"``
            (or any layout ``unpack`` reads). Inputs may be a tensor (``model(x)``), a tuple
            (``model(*inputs)``) or a dict (``model(**inputs)``); they are moved to the device.
        epochs: number of passes over ``train_loader``.
        schedule: ``step -> lr`` or ``step -> (lr, momentum)`` over the ``epochs * len(train_loader)``
            steps, e.g. ``partial(one_cycle, total_steps=..., max_lr=0.8)``. Default: constant ``lr``.
        optimizer: default ``SGD(lr, momentum, weight_decay)`` over all parameters (foreach on CUDA).
        lr, momentum, weight_decay: settings of the default optimizer; without a schedule the LR
            stays ``lr`` (or the given optimizer's own LR).
        test_loader: batches to evaluate on after every epoch (the post uses the test set).
        loss_fn: ``(output, target) -> loss``; ``"model"`` for a model that returns its own loss
            (a 0-d tensor, an output with ``.loss`` or a dict with ``"loss"``; dict batches then keep
            their ``"labels"`` among the inputs); None: cross-entropy.
        unpack: ``batch -> (inputs, target)``; default :func:`clrlib.batches.default_unpack`.
        device: default: CUDA, then MPS, then CPU.
        precision: ``"bf16"`` (bf16 autocast) or ``"fp32"``; default :func:`default_precision`:
            bf16 on CUDA and on CPUs with native bf16, fp32 elsewhere.
        amp: older alias: True for ``"bf16"``, False for ``"fp32"`` (must agree with ``precision``).
        channels_last: channels-last memory format for the model and the inputs' 4-d float
            tensors; default on CUDA and the CPU for a model with 4-d conv weights, off otherwise
            (see :func:`clrlib.device.resolve_channels_last`).
        compile: ``torch.compile`` the forward pass and loss (see :func:`resolve_compile`):
            None: CUDA graphs (``"reduce-overhead"``) on CUDA, eager elsewhere; True: the
            device's mode; False: eager; or a mode string. The optimizer step stays eager. If
            compiling or a compiled call raises, or CUDA graphs are skipped, the run goes on
            eagerly with a warning naming the cause (see :class:`CompileWatch`).
        seed: if given, seeds torch before training (see also :func:`seed_everything`).
        progress: show a tqdm progress bar with the loss and LR.
        stop_on_divergence: stop at the end of an epoch whose training loss is not finite.
        checkpoint: a file to write the run's state to after every epoch, and to resume from
            when it exists (see :mod:`clrlib.checkpoint`): an interrupted run called again with
            the same path loses at most one epoch, and on a CPU its history is bit for bit an
            uninterrupted run's. Build the model, optimizer and loader as for a fresh start.
            The file is left in place; delete it once the history is saved.
        on_epoch: called after every epoch (after its checkpoint is written) with ``{"epoch",
            "epochs", "train_loss", "test_loss", "test_acc", "seconds", "lr"}`` (e.g. to log
            progress from a long run).
        policy: a :class:`clrlib.device.DevicePolicy` (from :func:`resolve_policy`) to use instead of
            ``device``, ``precision``, ``amp``, ``channels_last`` and ``compile``, which must then be unset.
        The run sets ``torch.backends.cudnn.benchmark`` on CUDA and, in fp32, turns TF32 off for
        matmul and cuDNN (true fp32); both are restored when it ends.

    Returns:
        A DataFrame with a row per step: ``step, epoch, lr, momentum, loss`` (``epoch`` is
        fractional: steps done / steps per epoch, so the last step of epoch 1 is 1.0), and on
        each epoch's last row ``train_loss, test_loss, test_acc, seconds``
        (``seconds``: training time of that epoch; ``test_acc`` is NaN where the output has no
        logits for a class target, see :func:`evaluate`). See :func:`epoch_table`.
        ``history.attrs["fit"]`` records how the run went: ``device``, ``precision``,
        ``channels_last``, ``cudnn_benchmark``, ``tf32_matmul``, ``tf32_cudnn`` (in effect during
        the run), ``compile_asked`` (the mode asked, or False), ``compile`` (the mode used to the
        end, False after a fallback), ``compile_fallback`` (its reason, or None),
        ``cudagraph_skips``, ``graphs_compiled`` (dynamo's ``unique_graphs`` during the run),
        ``cold_compile_seconds`` (None if eager; measured as :class:`CompileWatch` says) and
        ``seconds_per_epoch`` (the mean of ``seconds``).

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
    if policy is None:
        policy = resolve_policy(device, precision, channels_last, compile, model=model, amp=amp)
    else:
        _no_settings_beside_policy(device=device, precision=precision, amp=amp, channels_last=channels_last,
                                   compile=compile)
    loss_fn = _check_loss_fn(loss_fn)
    unpack = resolve_unpack(unpack, loss_fn)
    if seed is not None:
        seed_everything(seed)
    with policy.applied():
        run = _start_run(model, policy, optimizer, schedule, loss_fn, unpack,
                         dict(lr=lr, momentum=momentum, weight_decay=weight_decay))
        history = _train(run, train_loader, epochs, steps_per_epoch, test_loader, progress, stop_on_divergence,
                         checkpoint, on_epoch)
        history.attrs["fit"] = run.settings(history)
    return history


def _start_run(model: nn.Module, policy: DevicePolicy, optimizer, schedule, loss_fn, unpack,
               sgd: dict) -> _Run:
    """The model on its device and layout, the optimizer (default SGD with ``sgd``'s settings),
    the scheduler and the compiled path of a :func:`fit`."""
    model.to(policy.device)
    if policy.channels_last:
        model.to(memory_format=torch.channels_last)
    lr = sgd["lr"]
    if optimizer is None:
        optimizer = torch.optim.SGD(model.parameters(), **sgd, foreach=True if policy.device.type == "cuda" else None)
    elif schedule is None:
        lr = float(optimizer.param_groups[0]["lr"])
    scheduler = Scheduler(optimizer, schedule if schedule is not None else partial(constant, lr=lr))
    return _Run(model, optimizer, scheduler, loss_fn, unpack, policy, watch_compile(model, policy))


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
                _evaluate(run.model, test_loader, run.loss_fn, run.unpack, run.policy, run.watch)
                if test_loader is not None else (math.nan, math.nan))
            for col, value in zip(EPOCH_COLUMNS, (train_loss, test_loss, test_acc, seconds)):
                rows[col].extend([math.nan] * (steps_per_epoch - 1) + [value])
            if run.bar is not None:
                run.bar.set_postfix(epoch=epoch, loss=f"{train_loss:.3f}", lr=f"{rows['lr'][-1]:.3g}")
            diverged = stop_on_divergence and not math.isfinite(train_loss)
            if checkpoint:  # before on_epoch: an interrupt in the callback loses nothing
                _checkpoint.write(checkpoint, epoch=epoch, epochs=epochs, steps_per_epoch=steps_per_epoch,
                                  model=run.model, optimizer=run.optimizer, scheduler=run.scheduler,
                                  loader=train_loader, rows=rows, stopped=diverged)
            if on_epoch is not None:
                on_epoch(dict(epoch=epoch, epochs=epochs, train_loss=train_loss, test_loss=test_loss,
                              test_acc=test_acc, seconds=seconds, lr=rows["lr"][-1]))
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
    amp = run.policy.autocast()
    start = time.perf_counter()
    losses = torch.empty(steps_per_epoch, device=run.device)
    n = 0
    for batch in train_loader:
        if n == steps_per_epoch:
            break
        group = run.optimizer.param_groups[0]
        rows["lr"].append(float(group["lr"]))
        rows["momentum"].append(group_momentum(group))
        inputs, target = run.unpack(batch)
        inputs, target = to_device(inputs, run.device, run.policy.channels_last), to_device(target, run.device)
        _train_batch(run, inputs, target, amp, losses, n)
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

"""Getting the results of run specifications: from the store, or by training.

:class:`Lab` is where runs happen: it loads each data set once, binds specs to it (data
fingerprint, precision on this device), and returns the histories of a list of specs with
:meth:`Lab.fit_many` / :meth:`Lab.lr_find_many`, taking each from the :class:`~clrlib.lab.store.RunStore`
or training it. The runs that are missing go to an :class:`Executor`, one small interface:
:class:`SerialExecutor` runs them one after another in this process; another executor (more
GPUs, a cluster) only has to map :func:`execute` over specs. Finished runs are written to the
store by the driver (this process), as each one finishes.

Example:
    >>> import tempfile
    >>> from clrlib.lab.specs import DataSpec, ModelSpec, ScheduleSpec, TrainSpec
    >>> lab = Lab(tempfile.mkdtemp(), device="cpu")
    >>> spec = TrainSpec(ScheduleSpec.make("one_cycle", max_lr=0.5), epochs=1, batch_size=64,
    ...                  model=ModelSpec(8), data=DataSpec("synthetic", synthetic_train=256,
    ...                  synthetic_test=64), precision="fp32")
    >>> [history] = lab.fit_many([spec])
    >>> len(history), len(lab.store)
    (4, 1)
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import time
from typing import Any, Callable, Iterable, Protocol, Sequence

import pandas as pd
import torch

from .. import data as _data
from .. import finder as _finder
from .. import train as _train
from .provenance import git_commit, machine_info
from .specs import DataSpec, FinderSpec, SpecError, TrainSpec
from .store import RunStore, StoredRun

__all__ = ["Lab", "Executor", "SerialExecutor", "execute", "train_run", "finder_run", "RunFailed",
           "SUBSET_SEED"]

#: Subsets of a data set are drawn with this seed, whatever the run's seed: the seeds of a
#: comparison then vary the initialisation and the batches, never the images.
SUBSET_SEED = 0
Spec = TrainSpec | FinderSpec


class RunFailed(RuntimeError):
    """A run raised; the message names its spec."""


class Executor(Protocol):
    """Runs ``task(spec)`` for each spec and calls ``done(spec, result)`` as each one finishes."""

    def run(self, task: Callable[[Spec], Any], specs: Sequence[Spec],
            done: Callable[[Spec, Any], None]) -> None: ...


class SerialExecutor:
    """One run after another, in this process."""

    def run(self, task, specs, done) -> None:
        for spec in specs:
            done(spec, task(spec))


def take_subset(images: torch.Tensor, labels: torch.Tensor, n: int | None):
    """A seeded random subset of ``n`` images (all of them for None), the same for every run."""
    if n is None or n == len(images):
        return images, labels
    pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(SUBSET_SEED))[:n]
    return images[pick], labels[pick]


def load_arrays(data: DataSpec, data_root=None) -> _data.CifarArrays:
    """The whole data set that ``data`` names (before subsets)."""
    if data.synthetic:
        return _data.synthetic_cifar10(data.synthetic_train, data.synthetic_test)
    return _data.load_cifar10(data_root)


def loaders(spec: Spec, arrays, device: torch.device, channels_last: bool):
    """The training and test loaders of a run: its subset, batch size, drop-last rule and seed."""
    x, y, xt, yt = arrays
    x, y = take_subset(x, y, spec.data.train_subset)
    xt, yt = take_subset(xt, yt, spec.data.test_subset)
    train = _data.CifarLoader(x, y, batch_size=spec.batch_size, device=device, seed=spec.seed,
                              drop_last=spec.drop_last, channels_last=channels_last)
    test = _data.CifarLoader(xt, yt, batch_size=1000, train=False, device=device,
                             channels_last=channels_last)
    return train, test


def _stamp(device: torch.device, start: float, **extra) -> dict[str, Any]:
    info = machine_info(device)
    return {"wall_seconds": round(time.time() - start, 2), "commit": git_commit(),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "device_name": info["device_name"], "device": info["device"], "torch": info["torch"],
            **extra}


def train_run(spec: TrainSpec, arrays, device: torch.device, compile: bool | str | None = None,
              progress: bool = False, checkpoint=None, log=None) -> tuple[pd.DataFrame, dict]:
    """Train ``spec`` from scratch (or from ``checkpoint``, written after every epoch, where it
    exists); returns its per-step history and a record of how it ran. ``log`` (e.g. ``print``)
    gets a line per epoch."""
    start = time.time()
    precision = _train.resolve_precision(spec.precision, device)
    channels_last = _train.default_channels_last(device, precision)
    train, test = loaders(spec, arrays, device, channels_last)
    if len(train) != spec.steps_per_epoch:
        raise RunFailed(f"the loader has {len(train)} batches per epoch, the spec {spec.steps_per_epoch}")
    _train.seed_everything(spec.seed)
    model = spec.model.build().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=spec.momentum,  # the schedule sets the LR
                          weight_decay=spec.weight_decay, foreach=True)
    history = _train.fit(model, train, spec.epochs, spec.schedule_fn(), opt, test_loader=test, device=device,
                         precision=precision, channels_last=channels_last, compile=compile,
                         progress=progress, checkpoint=checkpoint,
                         on_epoch=_epoch_logger(spec, log) if log else None)
    used = dict(history.attrs.get("fit", {}))
    diverged = len(history) < spec.total_steps
    return history, _stamp(device, start, fit=used, diverged=diverged)


def _epoch_logger(spec: TrainSpec, log):
    name = f"{spec.kind}-{spec.key()}"

    def on_epoch(row: dict) -> None:
        left = (row["epochs"] - row["epoch"]) * row["seconds"]
        log(f"  {name} epoch {row['epoch']}/{row['epochs']}: train loss {row['train_loss']:.3f}, "
            f"test acc {100 * row['test_acc']:.2f}%, LR {row['lr']:.3g}, {row['seconds']:.0f} s "
            f"(about {left / 60:.0f} min left in this run)")
    return on_epoch


def finder_run(spec: FinderSpec, arrays, device: torch.device, progress: bool = False
               ) -> tuple[pd.DataFrame, dict]:
    """Run the range test of ``spec`` on a fresh model; returns its curve and a record."""
    start = time.time()
    precision = _train.resolve_precision(spec.precision, device)
    channels_last = _train.default_channels_last(device, precision)
    train, _ = loaders(spec, arrays, device, channels_last)
    _train.seed_everything(spec.seed)
    model = spec.model.build().to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=spec.start_lr, momentum=spec.momentum,
                          weight_decay=spec.weight_decay, foreach=True)
    result = _finder.lr_find(model, torch.nn.functional.cross_entropy, train, opt, precision=precision,
                             **spec.finder_args)
    return result.to_frame(), _stamp(device, start, stop_lr=result.stop_lr, finder_settings=result.settings,
                                     precision=precision)


def execute(spec: Spec, arrays, device: torch.device | str, compile: bool | str | None = None,
            progress: bool = False, checkpoint=None, log=None) -> tuple[pd.DataFrame, dict]:
    """Make the run of ``spec`` (a bound spec) on ``device``: what an executor calls for each spec.

    ``checkpoint``: a file a training run writes after every epoch and resumes from."""
    device = torch.device(device)
    try:
        if isinstance(spec, TrainSpec):
            return train_run(spec, arrays, device, compile, progress, checkpoint, log)
        return finder_run(spec, arrays, device, progress)
    except KeyboardInterrupt:
        raise
    except Exception as e:
        what = str(e) if isinstance(e, RunFailed) else f"{type(e).__name__}: {e}"
        raise RunFailed(f"run {_run_name(spec)} failed ({what}); spec: {spec.to_dict()}") from e


def _run_name(spec: Spec) -> str:
    """``fit-<key>``, or ``fit (unbound)`` for a spec without a key."""
    try:
        return f"{spec.kind}-{spec.key()}"
    except SpecError:
        return f"{spec.kind} (unbound)"


class Lab:
    """Data, device and run store: turns specs into histories, training only what is missing.

    Args:
        store: a :class:`~clrlib.lab.store.RunStore` or the folder of one.
        data_root: where CIFAR-10 is (default: ``$CLRLIB_DATA``, else ``~/.cache/clrlib``).
        device: default: CUDA, then MPS, then the CPU.
        compile: :func:`clrlib.train.fit`'s ``compile`` (None: the fast path on CUDA only).
        progress: progress bars while training.
        redo: train again even where the store has the run.
        executor: how missing runs are made (default: :class:`SerialExecutor`).
        log: called with one line per finished run (e.g. ``print``), or None.
    """

    def __init__(self, store: RunStore | str, data_root=None, device=None, compile: bool | str | None = None,
                 progress: bool = False, redo: bool = False, executor: Executor | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        self.store = store if isinstance(store, RunStore) else RunStore(store)
        self.data_root = data_root
        self.device = torch.device(device) if device else _train.default_device()
        self.compile, self.progress, self.redo = compile, progress, redo
        self.executor = executor or SerialExecutor()
        self.log = log
        self._arrays: dict[tuple, _data.CifarArrays] = {}

    def arrays(self, data: DataSpec) -> _data.CifarArrays:
        """The whole data set ``data`` names, loaded once."""
        name = (data.dataset, data.synthetic_train, data.synthetic_test) if data.synthetic else (data.dataset,)
        if name not in self._arrays:
            self._arrays[name] = load_arrays(data, self.data_root)
        return self._arrays[name]

    def bind(self, spec: Spec) -> Spec:
        """``spec`` with its data's fingerprint and its precision on this device filled in."""
        fingerprint = self.arrays(spec.data).fingerprint
        precision = _train.resolve_precision(spec.precision, self.device)
        return spec.replace(data=dataclasses.replace(spec.data, fingerprint=fingerprint), precision=precision)

    def runs(self, specs: Iterable[Spec]) -> list[StoredRun]:
        """The stored run of each spec, making the missing ones with the executor."""
        bound = [self.bind(s) for s in specs]
        found = {s: (None if self.redo else self.store.get(s)) for s in bound}
        missing = list(dict.fromkeys(s for s, run in found.items() if run is None))
        if self.redo:  # train again from the start, not from an earlier attempt's checkpoint
            for spec in missing:
                self.checkpoint_path(spec).unlink(missing_ok=True)
        started = time.time()

        def done(spec, result):
            frame, meta = result
            found[spec] = self.store.put(spec, frame, meta)
            self.checkpoint_path(spec).unlink(missing_ok=True)  # the run is stored: nothing to resume
            if self.log:
                self.log(_progress_line(spec, found[spec], len([s for s in missing if found[s] is not None]),
                                        len(missing), time.time() - started))

        self.executor.run(self._task, missing, done)
        return [found[s] for s in bound]

    def checkpoint_path(self, spec: Spec):
        """Where a training run of ``spec`` keeps its per-epoch checkpoint: beside the store."""
        return self.store.root / ".checkpoints" / f"{spec.kind}-{spec.key()}.pt"

    def _task(self, spec: Spec):
        checkpoint = self.checkpoint_path(spec) if isinstance(spec, TrainSpec) else None
        return execute(spec, self.arrays(spec.data), self.device, self.compile, self.progress, checkpoint,
                       self.log)

    def fit_many(self, specs: Sequence[TrainSpec]) -> list[pd.DataFrame]:
        """The per-step history (:func:`clrlib.train.fit`'s frame) of each training spec."""
        _check_kind(specs, TrainSpec)
        return [run.frame for run in self.runs(specs)]

    def lr_find_many(self, specs: Sequence[FinderSpec]) -> list[_finder.FinderResult]:
        """The range-test result of each finder spec."""
        _check_kind(specs, FinderSpec)
        return [_finder.FinderResult.from_frame(run.frame, stop_lr=_float_or_none(run.meta.get("stop_lr")),
                                                settings=run.meta.get("finder_settings", {}))
                for run in self.runs(specs)]


def _check_kind(specs, cls) -> None:
    bad = [s for s in specs if not isinstance(s, cls)]
    if bad:
        raise TypeError(f"expected {cls.__name__}s, got {bad[0]!r}")


def _float_or_none(value):
    return None if value is None else float(value)


def _progress_line(spec: Spec, run: StoredRun, done: int, total: int, elapsed: float) -> str:
    if isinstance(spec, TrainSpec):
        acc = run.frame["test_acc"].dropna()
        what = (f"{spec.schedule.label}, {spec.epochs} epochs, seed {spec.seed}: "
                f"{100 * acc.iloc[-1]:.2f}%" if len(acc) else "no epoch finished")
    else:
        what = f"range test wd {spec.weight_decay:g}, batch {spec.batch_size}: stop LR {run.meta.get('stop_lr')}"
    return (f"[{done}/{total} runs] {spec.kind}-{spec.key()} {what} "
            f"({run.meta.get('wall_seconds', 0):.0f} s; {elapsed:.0f} s so far)")

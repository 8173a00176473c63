"""Getting the results of run specifications: from the store, or by training.

:class:`Lab` is where runs happen: it loads each data set once, binds specs to it (data
fingerprint, precision on this device), and returns the histories of a list of specs with
:meth:`Lab.fit_many` / :meth:`Lab.lr_find_many`, taking each from the :class:`~clrlib.lab.store.RunStore`
or training it. The runs that are missing go to an :class:`Executor`, one small interface:
:class:`SerialExecutor` runs them one after another in this process; another executor (more
GPUs, a cluster: :class:`~clrlib.lab.ray_executor.RayExecutor`) only has to map :func:`execute`
over specs. Finished runs are written to the store by the driver (this process), as each one
finishes, with a record of which executor, host and process made them and what actually ran.

A Lab made with ``train=False`` (render-only: ``$CLRLIB_RENDER_ONLY=1`` where the notebooks
build theirs, see :func:`lab_options_from_environment`) trains nothing: a run missing from the
store raises :class:`MissingRuns`, which lists them.

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
import os
import platform
import time
from dataclasses import dataclass, field
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
           "MissingRuns", "Made", "SUBSET_SEED", "executor_from_environment", "render_only_from_environment",
           "lab_options_from_environment", "failures_error", "RENDER_ONLY_VARIABLE"]

#: Subsets of a data set are drawn with this seed, whatever the run's seed: the seeds of a
#: comparison then vary the initialisation and the batches, never the images.
SUBSET_SEED = 0
Spec = TrainSpec | FinderSpec


#: The environment variable that makes the notebooks' Labs render-only (set by ``--render-only``).
RENDER_ONLY_VARIABLE = "CLRLIB_RENDER_ONLY"


class RunFailed(RuntimeError):
    """A run raised; the message names its spec. Raised by an executor for several runs at once,
    it has ``failures``: ``[(spec, error), ...]``."""


class MissingRuns(LookupError):
    """Runs that are not in the store of a Lab that trains nothing (render-only).

    Attributes:
        specs: the missing (bound) specs.
        store: the store they were looked for in.
    """

    def __init__(self, message: str, specs: Sequence = (), store=None) -> None:
        super().__init__(message)
        self.specs, self.store = list(specs), store

    def __str__(self) -> str:
        return self.args[0] if self.args else ""

    @classmethod
    def of(cls, specs: Sequence, store) -> "MissingRuns":
        lines = [f"  {_run_name(s)}: {_describe(s)}" for s in specs]
        return cls(f"render-only: {len(specs)} run(s) are not in the run store {store.root} and render-only "
                   f"trains nothing:\n" + "\n".join(lines)
                   + "\nTrain them first (python -m clrlib run ... --train-only) or copy their store here.",
                   specs, store)

    def by_group(self, notebook: str, groups: dict[str, Sequence], bind: Callable,
                 headline: Sequence[str] = ()) -> "MissingRuns":
        """The same error, naming ``notebook``'s groups (``{name: [spec, ...]}``) that lack runs:
        the numbers and figures of those groups are absent."""
        missing = set(self.specs)
        lines = []
        for name, specs in groups.items():
            seeds = [s.seed for s in specs if bind(s) in missing]
            if seeds:
                lines.append(f"  {name!r}{' (headline)' if name in headline else ''}: {len(seeds)} of "
                             f"{len(specs)} run(s) missing (seed {', '.join(map(str, seeds))})")
        where = f" {self.store.root}" if self.store is not None else ""
        text = (f"render-only: notebook {notebook} lacks {len(missing)} run(s) in the run store{where}, and "
                "render-only trains nothing; the numbers and figures of these groups are absent:\n"
                + "\n".join(lines) + f"\nTrain them first: python -m clrlib run {notebook} --train-only "
                "(same profile), or copy that run store here.")
        return MissingRuns(text, self.specs, self.store)


def _describe(spec) -> str:
    if isinstance(spec, TrainSpec):
        return f"{spec.schedule.label}, {spec.epochs} epochs, seed {spec.seed}, {spec.model.label}"
    if isinstance(spec, FinderSpec):
        return (f"range test wd {spec.weight_decay:g}, batch {spec.batch_size}, seed {spec.seed}, "
                f"{spec.model.label}")
    return repr(spec)


class Executor(Protocol):
    """Runs ``task(spec)`` for each spec and calls ``done(spec, result)`` in this process as each
    one finishes.

    ``admit(spec)``, where given, is called in this process just before a spec would start; a
    false answer leaves it unstarted (a budget, a stop after a failure). A run that raises does
    not stop the others: ``failed(spec, error)``, where given, is called as its failure is final,
    and once the others are finished (and stored) the executor raises one :class:`RunFailed`
    whose ``failures`` lists ``(spec, error)`` (see :func:`failures_error`). ``name`` ("serial",
    "ray") goes into every run record.
    """

    name: str

    def run(self, task: Callable[[Spec], Any], specs: Sequence[Spec],
            done: Callable[[Spec, Any], None], admit: Callable[[Spec], bool] | None = None,
            failed: Callable[[Spec, BaseException], None] | None = None) -> None: ...


def failures_error(failures: Sequence[tuple[Any, BaseException]], total: int, tries: int = 1) -> RunFailed:
    """One :class:`RunFailed` for the runs of ``failures`` (of ``total``), each with its error and spec."""
    lines = []
    for spec, error in failures:
        text = str(error).split("; spec: ")[0]
        if not (isinstance(error, RunFailed) and text.startswith("run ")):
            first = text.splitlines()[0] if text else ""
            text = f"run {_run_name(spec)} failed ({type(error).__name__}: {first})"
        lines.append(f"  {text}" + (f"\n    spec: {spec.to_dict()}" if hasattr(spec, "to_dict") else ""))
    each = f" ({tries} tr{'y' if tries == 1 else 'ies'} each)"
    error = RunFailed(f"{len(failures)} of {total} runs failed{each}; the other {total - len(failures)} "
                      "finished:\n" + "\n".join(lines))
    error.failures = list(failures)
    return error


class SerialExecutor:
    """One run after another, in this process. A run that raises is reported with the others'
    failures once the rest have run (see :class:`Executor`); Ctrl-C stops at once."""

    name = "serial"

    def run(self, task, specs, done, admit=None, failed=None) -> None:
        specs = list(specs)
        failures = []
        for spec in specs:
            if admit is not None and not admit(spec):
                continue
            try:
                result = task(spec)
            except Exception as e:  # KeyboardInterrupt and SystemExit go through
                failures.append((spec, e))
                if failed is not None:
                    failed(spec, e)
                continue
            done(spec, result)
        if failures:
            raise failures_error(failures, len(specs))


def executor_from_environment():
    """The executor ``$CLRLIB_EXECUTOR`` names: None (runs one after another here) or a Ray one
    joining ``$RAY_ADDRESS``."""
    name = os.environ.get("CLRLIB_EXECUTOR", "local")
    if name in ("local", "serial", ""):
        return None
    if name != "ray":
        raise ValueError(f"CLRLIB_EXECUTOR must be 'local' or 'ray', got {name!r}")
    from .ray_executor import RayExecutor
    return RayExecutor(address=os.environ.get("RAY_ADDRESS"), log=print)


def render_only_from_environment() -> bool:
    """True where ``$CLRLIB_RENDER_ONLY`` is 1 (or true, yes): the notebooks' Labs train nothing."""
    value = os.environ.get(RENDER_ONLY_VARIABLE, "").strip().lower()
    if value in ("", "0", "false", "no"):
        return False
    if value in ("1", "true", "yes"):
        return True
    raise ValueError(f"{RENDER_ONLY_VARIABLE} must be 1 or 0, got {value!r}")


def lab_options_from_environment() -> dict[str, Any]:
    """The :class:`Lab` options the runner passes to notebook kernels through the environment:
    ``executor`` (``$CLRLIB_EXECUTOR``) and ``train`` (False under ``$CLRLIB_RENDER_ONLY=1``)."""
    return {"executor": executor_from_environment(), "train": not render_only_from_environment()}


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
            "host": info["host"], "pid": os.getpid(), "torch_threads": torch.get_num_threads(), **extra}


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
    used = dict(history.attrs.get("fit", {}))  # what actually ran, whole
    diverged = len(history) < spec.total_steps
    epoch_seconds = [round(float(s), 3) for s in history["seconds"].dropna()] if "seconds" in history else []
    return history, _stamp(device, start, fit=used, diverged=diverged, compile_asked=compile,
                           epoch_seconds=epoch_seconds,
                           seconds_per_epoch=sum(epoch_seconds) / len(epoch_seconds) if epoch_seconds else None)


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
                             progress=progress, **spec.finder_args)
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
    """``fit-<key>``, ``fit (unbound)`` for a spec without a key, or the repr of anything else."""
    try:
        return f"{spec.kind}-{spec.key()}"
    except SpecError:
        return f"{spec.kind} (unbound)"
    except AttributeError:  # not a spec (an executor's other tasks)
        return repr(spec)


class Lab:
    """Data, device and run store: turns specs into histories, training only what is missing.

    Args:
        store: a :class:`~clrlib.lab.store.RunStore` or the folder of one.
        data_root: where CIFAR-10 is (default: ``$CLRLIB_DATA``, else ``~/.cache/clrlib``).
        device: default: CUDA, then MPS, then the CPU.
        compile: :func:`clrlib.train.fit`'s ``compile`` (None: the fast path on CUDA only).
        progress: progress bars while training.
        redo: train again even where the store has the run (once per Lab: a run it made is reused).
        executor: how missing runs are made (default: :class:`SerialExecutor`).
        log: called with one line per finished run and per epoch (e.g. ``print``), or None.
        train: False: render-only, a run missing from the store raises :class:`MissingRuns`
            instead of being trained.
    """

    def __init__(self, store: RunStore | str, data_root=None, device=None, compile: bool | str | None = None,
                 progress: bool = False, redo: bool = False, executor: Executor | None = None,
                 log: Callable[[str], None] | None = None, train: bool = True) -> None:
        self.store = store if isinstance(store, RunStore) else RunStore(store)
        self.data_root = data_root
        self.device = torch.device(device) if device else _train.default_device()
        self.compile, self.progress, self.redo = compile, progress, redo
        self.executor = executor or SerialExecutor()
        self.log = log
        self.train = bool(train)
        self._arrays: dict[tuple, _data.CifarArrays] = {}
        self._made: set = set()  # specs this Lab trained (redo trains each once)

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
        """The stored run of each spec, making the missing ones with the executor.

        Raises:
            MissingRuns: render-only (``train=False``) and some runs are not stored.
            RunFailed: some runs failed (the others are stored first); ``failures`` lists them.
        """
        made = self.make(specs)
        if made.error is not None:
            raise made.error
        return [made.runs[s] for s in made.bound]

    def missing(self, specs: Iterable[Spec]) -> list[Spec]:
        """The bound specs of ``specs`` whose runs the store lacks, once each (nothing is trained)."""
        bound = dict.fromkeys(self.bind(s) for s in specs)
        return [s for s in bound if (self.redo and s not in self._made) or self.store.get(s) is None]

    def make(self, specs: Iterable[Spec], admit: Callable[[Spec], bool] | None = None,
             on_stored: Callable[[Spec, StoredRun], None] | None = None,
             on_failed: Callable[[Spec, BaseException], None] | None = None) -> "Made":
        """Make the runs of ``specs`` that the store lacks; what happened to each, without raising
        for a failed run (see :class:`Made`).

        ``admit(spec)`` is asked just before each missing run would start (a false answer leaves
        it unstarted); ``on_stored(spec, run)`` is called as each made run is stored, and
        ``on_failed(spec, error)`` as a run's failure is final.

        Raises:
            MissingRuns: render-only (``train=False``) and some runs are not stored.
        """
        bound = [self.bind(s) for s in specs]
        found = {s: (None if self.redo and s not in self._made else self.store.get(s)) for s in bound}
        missing = list(dict.fromkeys(s for s, run in found.items() if run is None))
        made = Made(bound, found, missing)
        if missing and not self.train:
            raise MissingRuns.of(missing, self.store)
        if missing:
            self.store.check_writable()  # before hours of training, not after
        if self.redo:  # train again from the start, not from an earlier attempt's checkpoint
            for spec in missing:
                self.checkpoint_path(spec).unlink(missing_ok=True)
        started = time.time()

        def done(spec, result):
            frame, meta = result
            meta = {**meta, "executor": getattr(self.executor, "name", type(self.executor).__name__),
                    "driver_host": platform.node(), "driver_pid": os.getpid()}
            found[spec] = self.store.put(spec, frame, meta)
            self._made.add(spec)
            made.made.append(spec)
            self.checkpoint_path(spec).unlink(missing_ok=True)  # the run is stored: nothing to resume
            if self.log:
                self.log(_progress_line(spec, found[spec], len(made.made), len(missing), time.time() - started))
            if on_stored is not None:
                on_stored(spec, found[spec])

        def admitted(spec) -> bool:
            if admit(spec):
                return True
            made.not_started.append(spec)
            return False

        def failed(spec, error) -> None:
            made.failed.append((spec, error))
            if on_failed is not None:
                on_failed(spec, error)

        try:
            if admit is None and on_failed is None:  # executors of the three-argument protocol still work
                self.executor.run(self._task, missing, done)
            else:
                self.executor.run(self._task, missing, done, admit=admitted if admit else None, failed=failed)
        except RunFailed as e:
            if not hasattr(e, "failures"):
                raise
            made.failed, made.error = list(e.failures), e  # the executor's list: the same runs
        return made

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


@dataclass
class Made:
    """What :meth:`Lab.make` did with each spec.

    Attributes:
        bound: the specs as bound, in the order given.
        runs: ``{bound spec: StoredRun or None}`` (None: not made).
        missing: the specs the store lacked, once each.
        made: those made and stored now, in the order they finished.
        failed: ``[(spec, error), ...]``: those that raised.
        not_started: those that ``admit`` refused.
        error: the executor's :class:`RunFailed` for ``failed`` (None if none failed).
    """

    bound: list
    runs: dict
    missing: list
    made: list = field(default_factory=list)
    failed: list = field(default_factory=list)
    not_started: list = field(default_factory=list)
    error: RunFailed | None = None


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
        stop = run.meta.get("stop_lr")
        said = f"{stop:.3g}" if isinstance(stop, (int, float)) else "none (the test ran to its end)"
        what = f"range test wd {spec.weight_decay:g}, batch {spec.batch_size}: stop LR {said}"
    return (f"[{done}/{total} runs] {spec.kind}-{spec.key()} {what} "
            f"({run.meta.get('wall_seconds', 0):.0f} s; {elapsed:.0f} s so far)")

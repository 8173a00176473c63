"""Run specifications: everything that decides the outcome of a run, in one frozen value.

A :class:`TrainSpec` (a training run) or a :class:`FinderSpec` (an LR range test) holds the
model (:class:`ModelSpec`), the data (:class:`DataSpec`), the batch size, the optimizer's
settings, the schedule as a small serialisable value (:class:`ScheduleSpec`), the number of
epochs, the seed and the numeric precision. It is the only place their defaults live: the
post's settings (ResNet-56 with 1x1-conv shortcuts and PyTorch 0.3's initialisation, all of
CIFAR-10 with the last partial batch kept, batch 512, SGD with momentum 0.9 and weight decay
1e-4).

Each spec has a stable content hash, :meth:`TrainSpec.key`, that leaves out everything that
does not change the result (paths, device names, progress bars, compilation) and includes a
fingerprint of the data arrays and :data:`SEMANTICS_VERSION`, so that a run store keyed by it
never serves a history made from other data or under another meaning of a setting.

Example:
    >>> spec = TrainSpec(ScheduleSpec.make("one_cycle", max_lr=0.8, annihilate=0.1368), epochs=95)
    >>> spec.steps_per_epoch, spec.total_steps       # 50,000 images at batch 512, last batch kept
    (98, 9310)
    >>> [round(spec.schedule_fn()(s)[0], 4) for s in (0, 4018, 9310)]
    [0.08, 0.8, 0.0008]
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, ClassVar

from .. import schedules as _schedules
from ..data import steps_per_epoch as _steps_per_epoch

__all__ = ["SEMANTICS_VERSION", "MAX_TOTAL_STEPS", "ALLOW_HUGE_ENV", "DATASET_SIZES", "PRECISIONS", "SCHEDULES", "SpecError", "ModelSpec",
           "DataSpec", "ScheduleSpec", "TrainSpec", "FinderSpec", "spec_from_dict"]

#: Bump when the meaning of a setting changes (a stored run made under another meaning is not reused).
#: 2: the post's initialisation, fastai 0.7's augmentation, subsets fixed per data set, precision.
SEMANTICS_VERSION = 2
#: Training and test images of each data set (a subset takes fewer).
DATASET_SIZES = {"cifar10": (50_000, 10_000)}
PRECISIONS = ("bf16", "fp32", "auto")
SCHEDULES: dict[str, Callable] = {
    "one_cycle": _schedules.one_cycle,
    "one_cycle_cosine": _schedules.one_cycle_cosine,
    "cyclic": _schedules.cyclic,
    "multistep": _schedules.multistep,
    "constant": _schedules.constant,
}
#: The most optimizer steps a run may take (the post's longest is 9,310) unless the environment
#: variable :data:`ALLOW_HUGE_ENV` is "1". An override, not a setting: it does not change a run's
#: result, so it is kept out of the spec (and so of its key) rather than being a field.
MAX_TOTAL_STEPS = 10_000_000
ALLOW_HUGE_ENV = "CLRLIB_ALLOW_HUGE_RUNS"


def _check_size(owner: str, what: str, steps: int) -> None:
    if steps > MAX_TOTAL_STEPS and os.environ.get(ALLOW_HUGE_ENV) != "1":
        raise SpecError(f"{owner}: {what} gives {steps:,} optimizer steps, more than {MAX_TOTAL_STEPS:,} "
                        f"(the post's longest run takes 9,310); lower it, or set {ALLOW_HUGE_ENV}=1 if you "
                        "really mean it")


#: Schedules that take the run's length (``total_steps``) from its epochs and steps per epoch.
_NEEDS_TOTAL = {"one_cycle", "one_cycle_cosine", "multistep"}
#: Schedule arguments given in epochs; the spec turns them into steps.
_EPOCH_ARGS = {"step_epochs": "step_size", "step_down_epochs": "step_size_down"}
#: Schedule arguments that the schedule wants as integers (stored as floats, like every number).
_INT_ARGS = {"step_size", "step_size_down"}


class SpecError(ValueError):
    """A setting of a run that is missing, of the wrong type or out of range; the message names it."""


def _number(owner: str, name: str, value: Any, *, integer: bool = False, minimum: float | None = None,
            exclusive: bool = False, optional: bool = False):
    """``value`` as an int or float, or a :class:`SpecError` naming the setting and the value."""
    if value is None and optional:
        return None
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or not math.isfinite(value):
        kind = "an integer" if integer else "a number"
        raise SpecError(f"{owner}.{name} must be {kind}, got {value!r}")
    if minimum is not None and (value <= minimum if exclusive else value < minimum):
        raise SpecError(f"{owner}.{name} must be {'>' if exclusive else '>='} {minimum}, got {value!r}")
    return int(value) if integer else float(value)


def _choice(owner: str, name: str, value: Any, choices) -> str:
    if value not in choices:
        raise SpecError(f"{owner}.{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def _set(obj, name: str, value) -> None:
    object.__setattr__(obj, name, value)


@dataclass(frozen=True)
class ModelSpec:
    """A CIFAR ResNet: ``depth`` = 6n+2, shortcut "B" (1x1 conv, the post) or "A", and its init."""

    depth: int = 56
    shortcut: str = "B"
    init: str = "post"

    def __post_init__(self) -> None:
        from ..models import INITS, SHORTCUTS
        depth = _number("ModelSpec", "depth", self.depth, integer=True, minimum=8)
        if (depth - 2) % 6:
            raise SpecError(f"ModelSpec.depth must be 6n+2 (20, 32, 44, 56, 110, ...), got {depth!r}")
        _set(self, "depth", depth)
        _choice("ModelSpec", "shortcut", self.shortcut, SHORTCUTS)
        _choice("ModelSpec", "init", self.init, INITS)

    def build(self):
        """A freshly initialised model (seed torch first for a reproducible init)."""
        from ..models import resnet_cifar
        return resnet_cifar(self.depth, self.shortcut, init=self.init)

    @property
    def label(self) -> str:
        return f"ResNet-{self.depth} ({self.shortcut}, {self.init} init)"


@dataclass(frozen=True)
class DataSpec:
    """Which images: CIFAR-10 (or a synthetic stand-in), optionally a seeded subset of each split.

    ``fingerprint`` is that of the loaded arrays (:attr:`clrlib.data.CifarArrays.fingerprint`);
    it is filled in when a run is bound to its data (see :meth:`clrlib.lab.runs.Lab.bind`).
    """

    dataset: str = "cifar10"
    train_subset: int | None = None
    test_subset: int | None = None
    synthetic_train: int = 512
    synthetic_test: int = 256
    fingerprint: str = ""

    def __post_init__(self) -> None:
        _choice("DataSpec", "dataset", self.dataset, ("cifar10", "synthetic"))
        if not isinstance(self.fingerprint, str):
            raise SpecError(f"DataSpec.fingerprint must be a string, got {self.fingerprint!r}")
        for name in ("synthetic_train", "synthetic_test"):
            _set(self, name, _number("DataSpec", name, getattr(self, name), integer=True, minimum=1))
        full_train, full_test = self.full_sizes
        for name, full in (("train_subset", full_train), ("test_subset", full_test)):
            value = _number("DataSpec", name, getattr(self, name), integer=True, minimum=1, optional=True)
            if value is not None and value > full:
                raise SpecError(f"DataSpec.{name} must be at most the {full} images of the split, got {value!r}")
            _set(self, name, value)

    @property
    def full_sizes(self) -> tuple[int, int]:
        """Training and test images of the whole data set."""
        if self.dataset == "synthetic":
            return self.synthetic_train, self.synthetic_test
        return DATASET_SIZES[self.dataset]

    @property
    def n_train(self) -> int:
        return self.train_subset or self.full_sizes[0]

    @property
    def n_test(self) -> int:
        return self.test_subset or self.full_sizes[1]

    @property
    def synthetic(self) -> bool:
        return self.dataset == "synthetic"


@dataclass(frozen=True)
class ScheduleSpec:
    """A schedule of :mod:`clrlib.schedules` by name, with its arguments as plain values.

    ``total_steps`` (1cycle schedules) is not an argument: it comes from the run's epochs and
    steps per epoch. Arguments in epochs (``step_epochs`` for :func:`~clrlib.schedules.cyclic`)
    are turned into steps the same way, so one spec serves any batch size.

    Example:
        >>> s = ScheduleSpec.make("cyclic", base_lr=0.08, max_lr=0.8, step_epochs=4, mode="triangular2")
        >>> s.function(steps_per_epoch=98, epochs=48)(4 * 98)
        0.8
    """

    name: str
    args: tuple = ()

    def __post_init__(self) -> None:
        _choice("ScheduleSpec", "name", self.name, SCHEDULES)
        items = self.args.items() if isinstance(self.args, dict) else self.args
        clean = []
        for key, value in sorted(items):
            if key == "total_steps":
                raise SpecError("ScheduleSpec: total_steps comes from the run's epochs; don't set it")
            try:
                clean.append((key, _plain(value)))
            except SpecError as e:
                raise SpecError(f"ScheduleSpec {self.name}: argument {key!r}: {e}") from None
        _set(self, "args", tuple(clean))

    @classmethod
    def make(cls, name: str, **args) -> "ScheduleSpec":
        """``ScheduleSpec.make("one_cycle", max_lr=0.8)``: the schedule ``name`` with these arguments."""
        spec = cls(name, tuple(args.items()))
        spec.function(steps_per_epoch=1, epochs=1)(0)  # bad arguments fail here, with the schedule's message
        return spec

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.args)

    def function(self, steps_per_epoch: int, epochs: int) -> Callable:
        """The schedule ``step -> lr`` or ``step -> (lr, momentum)`` for a run of this length."""
        kwargs = self.kwargs
        for name in _INT_ARGS & kwargs.keys():
            if isinstance(kwargs[name], float) and kwargs[name].is_integer():
                kwargs[name] = int(kwargs[name])
        for in_epochs, in_steps in _EPOCH_ARGS.items():
            if in_epochs in kwargs:
                kwargs[in_steps] = max(1, round(kwargs.pop(in_epochs) * steps_per_epoch))
        if self.name in _NEEDS_TOTAL:
            kwargs["total_steps"] = epochs * steps_per_epoch
        return partial(SCHEDULES[self.name], **kwargs)

    @property
    def label(self) -> str:
        return f"{self.name}(" + ", ".join(f"{k}={v}" for k, v in self.args) + ")"


def _plain(value):
    """A hashable, JSON-stable form of a setting: floats for numbers (so 3 and 3.0 hash alike), tuples."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise SpecError(f"a schedule argument must be a finite number, got {value!r}")
        return float(value)
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value)
    raise SpecError(f"a schedule argument must be a number, string, bool or list, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class _RunSpec:
    """What a training run and a range test share: model, data, optimizer, batches, seed, precision."""

    kind: ClassVar[str] = ""
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    batch_size: int = 512
    momentum: float = 0.9       # SGD's momentum (a schedule returning a momentum overrides it)
    weight_decay: float = 1e-4  # SGD's L2 penalty on every parameter
    drop_last: bool = False     # fastai 0.7 kept the last partial batch (98 steps per epoch)
    seed: int = 0
    precision: str = "auto"     # "bf16" autocast, "fp32" (the post), or "auto" (resolved on the device)

    def __post_init__(self) -> None:
        name = type(self).__name__
        if not isinstance(self.model, ModelSpec):
            raise SpecError(f"{name}.model must be a ModelSpec, got {self.model!r}")
        if not isinstance(self.data, DataSpec):
            raise SpecError(f"{name}.data must be a DataSpec, got {self.data!r}")
        _set(self, "batch_size", _number(name, "batch_size", self.batch_size, integer=True, minimum=1))
        momentum = _number(name, "momentum", self.momentum, minimum=0)
        if momentum >= 1:
            raise SpecError(f"{name}.momentum must be in [0, 1), got {self.momentum!r}")
        _set(self, "momentum", momentum)
        _set(self, "weight_decay", _number(name, "weight_decay", self.weight_decay, minimum=0))
        if not isinstance(self.drop_last, bool):
            raise SpecError(f"{name}.drop_last must be True or False, got {self.drop_last!r}")
        _set(self, "seed", _number(name, "seed", self.seed, integer=True, minimum=0))
        _choice(name, "precision", self.precision, PRECISIONS)

    @property
    def steps_per_epoch(self) -> int:
        """Batches per epoch, from the data size, the batch size and the drop-last rule."""
        return _steps_per_epoch(self.data.n_train, self.batch_size, self.drop_last)

    def replace(self, **changes):
        """A copy with some settings changed (``model=`` / ``data=`` also take a dict of changes)."""
        for part in ("model", "data"):
            if isinstance(changes.get(part), dict):
                changes[part] = dataclasses.replace(getattr(self, part), **changes[part])
        return dataclasses.replace(self, **changes)

    #: Settings added after runs were stored, with the value that reproduces the earlier
    #: behaviour: at that value a setting is left out of :meth:`to_dict` (and so of the key),
    #: so that runs stored before it existed are found again.
    _ADDED: ClassVar[dict[str, Any]] = {}

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain JSON values, with the kind of run."""
        out = {"kind": self.kind}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in self._ADDED and value == self._ADDED[f.name]:
                continue
            if isinstance(value, ScheduleSpec):
                value = {"name": value.name, "args": {k: _json(v) for k, v in value.args}}
            elif dataclasses.is_dataclass(value):
                value = dataclasses.asdict(value)
            out[f.name] = value
        return out

    def key(self) -> str:
        """A stable content hash (16 hex digits) of everything that decides the outcome.

        Raises :class:`SpecError` for a spec not bound to its data and device yet
        (no data fingerprint, or precision "auto").
        """
        if self.precision == "auto" or not self.data.fingerprint:
            raise SpecError(f"{type(self).__name__} must be bound to its data and device before it has a "
                            f"key (precision={self.precision!r}, data fingerprint={self.data.fingerprint!r}); "
                            "use Lab.bind(spec)")
        text = json.dumps({"semantics": SEMANTICS_VERSION, **self.to_dict()}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class TrainSpec(_RunSpec):
    """A training run: ``epochs`` epochs of SGD driven by ``schedule``, evaluated every epoch."""

    kind: ClassVar[str] = "fit"
    schedule: ScheduleSpec
    epochs: int

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.schedule, ScheduleSpec):
            raise SpecError(f"TrainSpec.schedule must be a ScheduleSpec, got {self.schedule!r}")
        _set(self, "epochs", _number("TrainSpec", "epochs", self.epochs, integer=True, minimum=1))
        _check_size("TrainSpec", f"epochs={self.epochs:,} at {self.steps_per_epoch} steps per epoch",
                    self.total_steps)

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def schedule_fn(self) -> Callable:
        """The schedule as a function of the step, for this run's length (figures and training)."""
        return self.schedule.function(self.steps_per_epoch, self.epochs)


@dataclass(frozen=True, kw_only=True)
class FinderSpec(_RunSpec):
    """An LR range test: ``num_it`` batches while the LR grows from ``start_lr`` to ``end_lr``."""

    kind: ClassVar[str] = "lr_find"
    start_lr: float = 1e-5
    end_lr: float = 100.0
    num_it: int = 100
    beta: float = 0.98
    stop_factor: float | None = 4.0
    accuracy: bool = False
    endpoint: bool = False      # False: iteration i at start*(end/start)**(i/num_it), as fastai 0.7 (the post)
    best_after: int = 0         # the first losses that cannot set the best (fastai 0.7: 11; see lr_find)
    accumulation_steps: int = 1  # batches per LR step (their losses averaged)

    _ADDED: ClassVar[dict[str, Any]] = {"best_after": 0, "accumulation_steps": 1}

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("start_lr", "end_lr"):
            _set(self, name, _number("FinderSpec", name, getattr(self, name), minimum=0, exclusive=True))
        if self.start_lr >= self.end_lr:
            raise SpecError(f"FinderSpec.start_lr must be below end_lr, got {self.start_lr!r} >= {self.end_lr!r}")
        _set(self, "num_it", _number("FinderSpec", "num_it", self.num_it, integer=True, minimum=2))
        _check_size("FinderSpec", f"num_it={self.num_it:,}", self.num_it)
        _set(self, "beta", _number("FinderSpec", "beta", self.beta, minimum=0))
        _set(self, "stop_factor", _number("FinderSpec", "stop_factor", self.stop_factor, minimum=1,
                                          exclusive=True, optional=True))
        for name in ("accuracy", "endpoint"):
            if not isinstance(getattr(self, name), bool):
                raise SpecError(f"FinderSpec.{name} must be True or False, got {getattr(self, name)!r}")
        _set(self, "best_after", _number("FinderSpec", "best_after", self.best_after, integer=True, minimum=0))
        _set(self, "accumulation_steps", _number("FinderSpec", "accumulation_steps", self.accumulation_steps,
                                                 integer=True, minimum=1))

    @property
    def finder_args(self) -> dict[str, Any]:
        """The keyword arguments of :func:`clrlib.finder.lr_find` this spec sets."""
        return dict(start_lr=self.start_lr, end_lr=self.end_lr, num_it=self.num_it, beta=self.beta,
                    stop_factor=self.stop_factor, accuracy=self.accuracy, endpoint=self.endpoint,
                    best_after=self.best_after, accumulation_steps=self.accumulation_steps)


def _json(value):
    return list(value) if isinstance(value, tuple) else value


def spec_from_dict(d: dict[str, Any]) -> TrainSpec | FinderSpec:
    """The spec that :meth:`TrainSpec.to_dict` / :meth:`FinderSpec.to_dict` wrote."""
    d = dict(d)
    kind = d.pop("kind", None)
    cls = {"fit": TrainSpec, "lr_find": FinderSpec}.get(kind)
    if cls is None:
        raise SpecError(f"unknown kind of run {kind!r}; expected 'fit' or 'lr_find'")
    d["model"] = ModelSpec(**d["model"])
    d["data"] = DataSpec(**d["data"])
    if "schedule" in d:
        d["schedule"] = ScheduleSpec(d["schedule"]["name"], tuple(d["schedule"]["args"].items()))
    return cls(**d)

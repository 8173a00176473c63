"""The plan-first runner: gather the chosen notebooks' plans, order their runs, train the missing ones.

:func:`gather` makes the plan of each chosen notebook under a profile (:mod:`clrlib.lab.plans`);
:func:`ordered_runs` lists every run once (by bound spec: a run two notebooks share is trained
once) in tiers, so that a short window brings back the most of the post first:

0. the first seed of every headline group (the post's own numbers: 01's range test, 03's 1cycle,
   04's runs at LR 3 and the short cycle, 05's constant momentum at both settings);
1. the first seed of every group ranked ``next`` (06's weight-decay sweep of range tests);
2. the first seed of every other group (02's CLR runs, controls, 07's hand-picked runs, ...);
3. the further seeds, group after group.

Within a tier the notebooks come in the suite's order (:data:`~clrlib.lab.suite.ORDER`, or the
runner's ``--order``), and a notebook's groups in its plan's order.

:func:`train_planned` trains the runs that the store lacks through a :class:`~clrlib.lab.runs.Lab`
(and so through its executor, serial or Ray), in that order. A run that fails is reported with
its spec and the rest go on (``keep_going``); with a :class:`Budget`, a run starts only if its
projected time (:class:`Projector`) fits what is left. A plan with a second stage (07: the
recipe reads its range tests) gets it once its first stage is all stored.

Example:
    >>> runs = ordered_runs(gather("smoke", ["03_one_cycle", "01_lr_finder"]))
    >>> [(r.tier, r.notebook, r.group) for r in runs][:2]
    [(0, '01_lr_finder', 'range test, post init'), (0, '03_one_cycle', '1cycle, max LR 0.8, 4 epochs')]
    >>> round(Projector("cuda").seconds(runs[1].spec), 1)  # 4 epochs of ResNet-8 on 512 images, compiling
    100.0
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from .plans import Plan, common_settings, plan_for
from .runs import Lab
from .specs import FinderSpec, ModelSpec, TrainSpec
from .suite import ORDER, apply_profile, profile_notebooks

__all__ = ["PlannedRun", "NotebookPlan", "TIERS", "gather", "gather_notebooks", "ordered_runs", "Projector",
           "Budget", "Outcome", "train_planned", "DEFAULT_EPOCH_SECONDS", "COMPILE_SECONDS"]

#: What each tier holds (see the module's docstring).
TIERS = {0: "headline, first seed", 1: "next, first seed", 2: "other groups, first seed", 3: "further seeds"}
_RANK_TIER = {"headline": 0, "next": 1, "rest": 2}

#: Seconds of one epoch on all 50,000 CIFAR-10 training images (evaluation on the 10,000 test
#: images included) before this process has measured any: ``{device type: (depth, seconds)}``.
#: CUDA: 1.0 s for ResNet-56 at batch 512 with CUDA graphs (an equivalent compiled loop on an
#: H100); CPU: 75 s for ResNet-20 (this project's 2-core Xeon). Other depths scale by the number
#: of residual blocks, (depth - 2) / (reference depth - 2), and other data sizes by images
#: trained plus a third of the images evaluated; the batch size is not modelled. Other devices
#: (MPS) take the CPU's figure.
DEFAULT_EPOCH_SECONDS = {"cuda": (56, 1.0), "cpu": (20, 75.0)}
#: Compiling (torch.compile with CUDA graphs), added once per architecture and batch size in a
#: process on CUDA unless compiling is off.
COMPILE_SECONDS = 100.0
_FULL_IMAGES = 50_000 + 10_000 / 3


@dataclass(frozen=True)
class PlannedRun:
    """One run of the suite: its spec, the notebook and group that declared it first, its tier."""

    spec: Any
    notebook: str
    group: str
    tier: int        # see TIERS
    stage: int = 1   # 2: from a plan's second stage (07's recipe runs)

    @property
    def label(self) -> str:
        seed = getattr(self.spec, "seed", None)
        return f"{self.notebook}: {self.group}" + (f" (seed {seed})" if seed is not None else "")


@dataclass
class NotebookPlan:
    """A notebook's parameters under a profile and its plan (None, with ``error``, if it has none)."""

    notebook: str
    params: dict
    plan: Plan | None
    error: str | None = None


def gather_notebooks(profile: str, names: Sequence[str] = (), extra: dict | None = None,
                     order: Sequence[str] = ORDER) -> list[NotebookPlan]:
    """The parameters and plan of each notebook of ``names`` (default: every notebook the profile
    runs) in ``order``; ``extra`` settings (data root, device) are added to every notebook's."""
    listed = profile_notebooks(profile)
    chosen = [n for n in order if n in listed and (not names or n in names)]
    out = []
    for name in chosen:
        params = {**apply_profile(name, profile), **(extra or {})}
        try:
            out.append(NotebookPlan(name, params, plan_for(name, params)))
        except Exception as e:  # no plan (yet), or a plan that cannot be made: the notebook trains its own
            out.append(NotebookPlan(name, params, None, f"{type(e).__name__}: {e}"))
    return out


def gather(profile: str, names: Sequence[str] = (), order: Sequence[str] = ORDER) -> list[Plan]:
    """The plans of ``names`` (default: every notebook the profile runs), in ``order``."""
    return [n.plan for n in gather_notebooks(profile, names, order=order) if n.plan is not None]


def _rank(plan: Plan, group: str) -> str:
    ranks = getattr(plan, "ranks", None)
    if ranks:
        return ranks.get(group, "rest")
    return "headline" if group in plan.headline else "rest"


def ordered_runs(plans: Sequence[Plan], bind: Callable = lambda s: s, order: Sequence[str] = ORDER,
                 stage: int = 1) -> list[PlannedRun]:
    """Every run of ``plans`` once (by bound spec), in tier order; within a tier by notebook
    (``order``), then as declared. A run declared twice keeps its best tier."""
    position = {name: i for i, name in enumerate(order)}
    runs: dict[Any, PlannedRun] = {}
    rank_of: dict[Any, tuple] = {}
    for p, plan in enumerate(plans):
        for g, (group, specs) in enumerate(plan.groups.items()):
            for i, spec in enumerate(specs):
                tier = 3 if i else _RANK_TIER.get(_rank(plan, group), 2)
                bound = bind(spec)
                where = (tier, position.get(plan.notebook, len(position) + p), g, i)
                if bound not in runs or where < rank_of[bound]:
                    runs[bound] = PlannedRun(bound, plan.notebook, group, tier, stage)
                    rank_of[bound] = where
    return sorted(runs.values(), key=lambda r: rank_of[r.spec])


# --- projections and the budget --------------------------------------------------------------------

def _images(n_train: int, n_test: int) -> float:
    return n_train + n_test / 3  # evaluating an image costs about a third of training on it


class Projector:
    """Projected seconds of a run on ``device``: from this process's measurements once a run of the
    same architecture and batch size has finished (:meth:`observe`), else from
    :data:`DEFAULT_EPOCH_SECONDS`, with :data:`COMPILE_SECONDS` once per architecture and batch
    size on CUDA (every run's if ``compile_once`` is False, as on a cluster of worker processes).

    Args:
        device: where the runs train ("cuda", "cpu", ...).
        compile: the runs' ``compile`` setting (False: eager, no compile time).
        compile_once: compile time only for the first run of an architecture and batch size.
    """

    def __init__(self, device="cpu", compile=None, compile_once: bool = True) -> None:
        self.device = torch.device(device)
        self.compiles = self.device.type == "cuda" and compile is not False
        self.compile_once = compile_once
        self.measured: dict[tuple, float] = {}   # (kind, model, batch) -> seconds per image
        self.compiled: set[tuple] = set()       # (model, batch) compiled in this process

    def default_per_image(self, model: ModelSpec) -> float:
        depth, seconds = DEFAULT_EPOCH_SECONDS.get(self.device.type, DEFAULT_EPOCH_SECONDS["cpu"])
        return seconds / _FULL_IMAGES * (model.depth - 2) / (depth - 2)

    def per_image(self, kind: str, model: ModelSpec, batch: int) -> tuple[float, str]:
        """Seconds per image and where that figure comes from ("measured" or "default")."""
        for k in (kind, "fit", "lr_find"):
            if (k, model, batch) in self.measured:
                return self.measured[(k, model, batch)], "measured"
        return self.default_per_image(model), "default"

    def epoch_seconds(self, model: ModelSpec, batch: int, n_train: int, n_test: int) -> float:
        return self.per_image("fit", model, batch)[0] * _images(n_train, n_test)

    def seconds(self, spec) -> float:
        """The projected wall time of ``spec``'s run, compiling included where it would happen."""
        if isinstance(spec, FinderSpec):
            return self.per_image("lr_find", spec.model, spec.batch_size)[0] * spec.num_it * spec.batch_size
        run = spec.epochs * self.epoch_seconds(spec.model, spec.batch_size, spec.data.n_train, spec.data.n_test)
        return run + self.compile_seconds(spec)

    def compile_seconds(self, spec) -> float:
        if not (self.compiles and isinstance(spec, TrainSpec)):
            return 0.0
        return 0.0 if self.compile_once and (spec.model, spec.batch_size) in self.compiled else COMPILE_SECONDS

    def observe(self, spec, meta: dict, rows: int | None = None) -> None:
        """Learn from a finished run's record (``wall_seconds``, ``fit.cold_compile_seconds``)."""
        wall = float(meta.get("wall_seconds") or 0.0)
        if isinstance(spec, TrainSpec):
            fit = meta.get("fit") or {}
            cold = fit.get("cold_compile_seconds") if isinstance(fit, dict) else None
            wall -= float(cold) if isinstance(cold, (int, float)) else 0.0
            images = spec.epochs * _images(spec.data.n_train, spec.data.n_test)
            self.compiled.add((spec.model, spec.batch_size))
        else:
            images = (rows or spec.num_it) * spec.batch_size
        if wall > 0 and images > 0:
            self.measured[(spec.kind, spec.model, spec.batch_size)] = wall / images

    def assume_compiled(self, spec) -> None:
        """For dry runs: count ``spec``'s compilation as done (the next run of its shape has none)."""
        if isinstance(spec, TrainSpec):
            self.compiled.add((spec.model, spec.batch_size))


class Budget:
    """Seconds of wall time for the work, from when it is made (``clock``: a fake one in tests)."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        if not (isinstance(seconds, (int, float)) and seconds > 0):
            raise ValueError(f"a budget must be a positive number of seconds, got {seconds!r}")
        self.seconds, self.clock = float(seconds), clock
        self.deadline = clock() + self.seconds

    def left(self) -> float:
        return max(0.0, self.deadline - self.clock())

    def refuses(self, projected: float) -> str | None:
        """Why a run projected to take ``projected`` seconds cannot start now, or None if it fits."""
        left = self.left()
        if projected <= left:
            return None
        return f"projected {projected:.0f} s, but {left:.0f} s are left of the {self.seconds:.0f} s budget"


# --- training a plan -------------------------------------------------------------------------------

@dataclass
class Outcome:
    """What :func:`train_planned` did: each planned run stored before, made now, failed or not started."""

    stored: list = field(default_factory=list)       # PlannedRun, already in the store
    made: list = field(default_factory=list)         # PlannedRun, trained now
    failed: list = field(default_factory=list)       # (PlannedRun, error)
    not_started: list = field(default_factory=list)  # (PlannedRun, reason)

    @property
    def budget_ended(self) -> bool:
        return any("budget" in reason for _, reason in self.not_started)

    def incomplete(self, notebook: str) -> list:
        """The planned runs of ``notebook`` that failed or were not started."""
        return [r for r, _ in self.failed + self.not_started if r.notebook == notebook]


def progress_enabled() -> bool:
    """Whether the runner shows progress bars: ``$CLRLIB_PROGRESS`` (1 or 0) if set, else on a
    terminal and off under CI (``$CI`` set)."""
    said = os.environ.get("CLRLIB_PROGRESS")
    if said is not None:
        return said.strip().lower() not in ("", "0", "false", "no")
    return not os.environ.get("CI") and sys.stderr.isatty()


class _SuiteBar:
    """The suite's progress bar: runs done of those to train, and the projected time left."""

    def __init__(self, lab: Lab, runs: Sequence[PlannedRun], projector: Projector) -> None:
        from tqdm.auto import tqdm
        missing = set(lab.missing([r.spec for r in runs]))
        self.left = {r.spec: projector.seconds(r.spec) for r in runs if r.spec in missing}
        self.bar = tqdm(total=len(self.left), unit="run", desc="suite", position=1, leave=True)
        self._show()

    def done(self, spec) -> None:
        self.left.pop(spec, None)
        self.bar.update(1)
        self._show()

    def _show(self) -> None:
        self.bar.set_postfix_str(f"about {sum(self.left.values()) / 60:.0f} min projected for the rest")

    def close(self) -> None:
        self.bar.close()


def train_planned(lab: Lab, runs: Sequence[PlannedRun], projector: Projector | None = None,
                  budget: Budget | None = None, keep_going: bool = True, outcome: Outcome | None = None,
                  log: Callable[[str], None] = print) -> Outcome:
    """Train the runs of ``runs`` (bound by ``lab``) that its store lacks, in the given order,
    through ``lab``'s executor; see the module's docstring. Returns (or adds to) an :class:`Outcome`."""
    outcome = outcome if outcome is not None else Outcome()
    by_spec = {r.spec: r for r in runs}
    projector = projector or Projector(lab.device, lab.compile)

    def admit(spec) -> bool:
        run = by_spec[spec]
        reason = "not started: an earlier run failed (--no-keep-going)" if outcome.failed and not keep_going else None
        if reason is None and budget is not None:
            why = budget.refuses(projector.seconds(spec))
            reason = f"not started: {why}" if why else None
        if reason is None:
            log(f"starting {run.label} [tier {run.tier}], projected {projector.seconds(spec):.0f} s"
                + (f", {budget.left():.0f} s of the budget left" if budget is not None else ""))
            return True
        outcome.not_started.append((run, reason))
        log(f"{run.label}: {reason}")
        return False

    bar = _SuiteBar(lab, runs, projector) if progress_enabled() and runs else None

    def stored(spec, run) -> None:
        projector.observe(spec, run.meta, len(run.frame))
        outcome.made.append(by_spec[spec])
        if bar is not None:
            bar.done(spec)

    def failed(spec, error) -> None:
        outcome.failed.append((by_spec[spec], error))
        log(f"FAILED {by_spec[spec].label}: {str(error).splitlines()[0]}")
        if bar is not None:
            bar.done(spec)

    try:
        made = lab.make([r.spec for r in runs], admit=admit, on_stored=stored, on_failed=failed)
    finally:
        if bar is not None:
            bar.close()
    fresh = set(made.missing)
    outcome.stored += [r for r in runs if r.spec not in fresh]
    return outcome


def second_stages(notebooks: Sequence[NotebookPlan], lab: Lab, outcome: Outcome, order: Sequence[str] = ORDER,
                  log: Callable[[str], None] = print) -> list[PlannedRun]:
    """The runs of the plans' second stages (``plan.then(lab)``) whose first stage is all stored;
    a stage that cannot be made is reported as a failure of its notebook."""
    stages = []
    for nb in notebooks:
        if nb.plan is None or getattr(nb.plan, "then", None) is None or outcome.incomplete(nb.notebook):
            continue
        try:
            stages.append(nb.plan.then(lab))
        except Exception as e:
            placeholder = PlannedRun(None, nb.notebook, "second stage", 2, stage=2)
            outcome.failed.append((placeholder, e))
            log(f"FAILED {nb.notebook}: its second stage could not be planned ({type(e).__name__}: {e})")
    return ordered_runs(stages, lab.bind, order, stage=2)


def pending_seconds(nb: NotebookPlan, projector: Projector) -> list[tuple[Any, float]]:
    """A second stage's runs as far as they are known before it (``plan.pending``), projected."""
    shared = common_settings(nb.params)
    out = []
    for item in getattr(nb.plan, "pending", None) or []:
        model = ModelSpec(item.depth, shared["model"].shortcut, shared["model"].init)
        seconds = item.epochs * projector.epoch_seconds(model, shared["batch_size"], item.n_train,
                                                        shared["data"].n_test)
        if projector.compiles and not (projector.compile_once and (model, shared["batch_size"]) in projector.compiled):
            seconds += COMPILE_SECONDS
            projector.compiled.add((model, shared["batch_size"]))
        out.append((item, seconds))
    return out

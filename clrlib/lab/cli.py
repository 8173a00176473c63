"""The command line: plan the suite's runs, train them, render the notebooks, check a machine.

    python -m clrlib list
    python -m clrlib plan [NAMES...] [--profile P] [--budget SECONDS] [--device D] [--data DIR] [--out DIR]
    python -m clrlib run [NAMES...] [--profile P] [--data DIR] [--out DIR] [--redo] [--order 01,03,...]
                         [--train-only | --render-only] [--budget SECONDS] [--keep-going/--no-keep-going]
                         [--executor {local,ray}] [--address A] [--gpus-per-run G] [--cpus-per-run C]
                         [--jobs N]
    python -m clrlib doctor [--full] [--device D]

``run`` gathers the chosen notebooks' plans (:mod:`clrlib.lab.plans`) under the profile, trains
the runs the run store lacks in one process per worker (headline runs first, see
:mod:`clrlib.lab.runner`), then executes the notebooks with papermill into
``<out>/<profile>/<notebook>.ipynb``; they find every run in the store. Their headline numbers
go to ``<out>/<profile>/summary.csv``, ``summary.md`` and the gallery ``README.md``. A notebook
is skipped when it was completed with the same settings, data and code. ``--train-only`` needs
no Jupyter package (papermill, ipykernel, nbformat are never imported); ``--render-only``
trains nothing: the notebooks' Labs read ``$CLRLIB_RENDER_ONLY=1`` and a missing run fails the
notebook with a message naming it.

Exit codes: 0 done (also when ``--budget`` ended the work: what was left is printed); 1 some
runs or notebooks failed, or runs were missing under ``--render-only`` (listed last);
2 a bad command line, profile, data or results folder; 130 interrupted (Ctrl-C).
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from .. import data as _data
from . import runner as _runner
from .plans import common_settings
from .runs import RENDER_ONLY_VARIABLE, Lab, MissingRuns
from .specs import SpecError, TrainSpec
from .store import StoreLockTimeout, StoreNotWritable
from .store import atomic_write_text, jsonable
from .suite import (NOTEBOOK_DIR, NOTEBOOKS, ORDER, PROFILES, NotebooksNotFound, ProfileError, notebook_dir,
                    write_summary)

__all__ = ["main", "run_suite", "run_notebooks", "resolve_names", "parse_order", "RunnerError", "Report",
           "package_hash", "plan_rows"]

#: The least free space under --out the runner starts with: a profile's run records, figures and
#: executed notebooks take a few MiB to a few tens of MiB.
MIN_FREE_BYTES = 64 * 2**20
#: Parameters that say where things are or how they are shown, not what runs.
_NOT_SETTINGS = {"out_dir", "data_root", "redo", "progress"}
PACKAGE_DIR = Path(__file__).resolve().parents[1]
#: What a notebook writes beside its executed copy; removed before it is executed again (and
#: after a failed execution), so that the summary and gallery never show a stale notebook's rows.
_RESULT_FILES = ("summary_rows.csv", "comparison_rows.csv", "figures.json", "findings.md", "completed.json")


class RunnerError(RuntimeError):
    """Something the runner cannot do; the message says what and what to do."""


# --- names, data, the results folder ---------------------------------------------------------------

def resolve_names(names: Sequence[str], order: Sequence[str] = ORDER) -> list[str]:
    """Notebook names from full names, numbers ("03") or parts of names ("one_cycle"), in ``order``."""
    chosen = set()
    for name in names:
        hits = [n for n in NOTEBOOKS if n == name or n.startswith(name) or name in n]
        if not hits:
            raise ProfileError(f"no notebook matches {name!r}; the notebooks are {NOTEBOOKS}")
        chosen.update(hits)
    return [n for n in order if not names or n in chosen]


def parse_order(text: str | None) -> tuple[str, ...]:
    """``--order 03,04``: those notebooks first, in that order, then the rest in the default order."""
    listed: list[str] = []
    for part in (t.strip() for t in (text or "").split(",")):
        if part:
            listed += [n for n in resolve_names([part], order=NOTEBOOKS) if n not in listed]
    return tuple(listed + [n for n in ORDER if n not in listed])


def _data_root(data: str | None) -> Path:
    """``--data`` (or the default data root) as an absolute path; a :class:`RunnerError` naming it
    if it cannot be resolved (a symlink loop)."""
    root = Path(data).expanduser() if data else _data.default_data_root()
    try:
        return root.resolve()
    except (RuntimeError, OSError) as e:  # Python < 3.13 says RuntimeError for a symlink loop
        raise RunnerError(f"--data {data if data else root}: cannot be resolved ({e}); give the folder "
                          f"holding {_data.FOLDER}") from None


def find_data(data: str | None) -> str | None:
    """The data root holding CIFAR-10, downloading it where missing; None (and a message) if there is none."""
    root = _data_root(data)
    if _data.find_cifar10(root) is not None:
        return str(root)
    existed = root.exists()
    try:
        _data.load_cifar10(root, download=True)
        return str(root)
    except Exception as e:  # no internet, a read-only folder, a failed checksum
        if not existed and root.is_dir() and not any(root.iterdir()):
            root.rmdir()  # don't leave behind a folder nobody asked for
        print(f"CIFAR-10 not found and not downloaded ({type(e).__name__}: {e}).", file=sys.stderr)
        return None


def _check_out(out: str | os.PathLike, base: Path) -> None:
    if base.exists() and not base.is_dir() or any(p.is_file() for p in base.parents if p.exists()):
        raise RunnerError(f"--out {out}: {base} or a folder above it is a file; give a folder")


def _prepare_out(out: str | os.PathLike, profile: str) -> Path:
    base = Path(out).expanduser().resolve() / profile
    _check_out(out, base)
    try:
        base.mkdir(parents=True, exist_ok=True)
        probe = base / ".write-test"
        probe.write_text("")
        probe.unlink()
        free = shutil.disk_usage(base).free
    except OSError as e:
        raise RunnerError(f"--out {out}: cannot write in {base} ({e.strerror}); give a writable folder") from None
    if free < MIN_FREE_BYTES:
        raise RunnerError(f"--out {out}: only {free / 2**20:.0f} MiB free under {base}; the suite needs at least "
                          f"{MIN_FREE_BYTES / 2**20:.0f} MiB (run records, figures, executed notebooks): free some "
                          "space or give another folder")
    return base


def _resolve_profile(profile: str, data: str | None, out, log) -> tuple[str, str | None]:
    """The profile to run (``auto`` resolved, smoke where CIFAR-10 is missing) and the data root."""
    asked = profile
    if profile == "auto":
        profile = "full" if torch.cuda.is_available() else "quick"
    if profile not in PROFILES:
        raise ProfileError(f"unknown profile {profile!r}; choose auto or one of {PROFILES}")
    _check_out(out, Path(out).expanduser().resolve())  # before looking for (or downloading) data
    if profile == "smoke":
        return profile, None
    data_root = find_data(data)
    root = Path(data).expanduser() if data else _data.default_data_root()
    if data_root is None and asked != "auto":
        raise RunnerError(f"profile {profile!r} needs CIFAR-10.\n" + _data.not_found_message(root))
    if data_root is None:
        log(_data.not_found_message(root) + f"\nRunning the smoke profile on synthetic data instead of {profile!r}.")
        return "smoke", None
    return profile, data_root


# --- what "done" means ------------------------------------------------------------------------------

def package_hash() -> str:
    """A hash of clrlib's source (every ``.py`` file and profile): the code that ran."""
    digest = hashlib.sha256()
    for path in sorted([*PACKAGE_DIR.rglob("*.py"), *PACKAGE_DIR.rglob("*.yaml")]):
        if "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(PACKAGE_DIR)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _settings_hash(name: str, settings: dict, fingerprint: str = "", code: str = "") -> str:
    """A hash of a notebook's settings, of its data's fingerprint and of its code (the notebook
    file and clrlib's source): a change to any re-executes it (its runs still come from the store)."""
    kept = {k: v for k, v in settings.items() if k not in _NOT_SETTINGS}
    notebook = (NOTEBOOK_DIR / f"{name}.ipynb").read_bytes()
    text = json.dumps(jsonable(kept), sort_keys=True) + fingerprint + (code or package_hash())
    return hashlib.sha256(text.encode() + notebook).hexdigest()[:16]


def _read_done(path: Path) -> dict | None:
    """A notebook's ``completed.json``, or None if it is missing or unreadable (with a warning)."""
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
        if not isinstance(record, dict):
            raise ValueError(f"a JSON {type(record).__name__}, not a record")
        return record
    except (OSError, ValueError) as e:
        warnings.warn(f"{path} is unreadable ({type(e).__name__}: {e}); its notebook is executed again",
                      RuntimeWarning, stacklevel=2)
        return None


def _clear_results(base: Path, name: str) -> None:
    """Remove what ``name`` wrote last time (rows, figures, executed notebook): it is stale now."""
    folder = base / name
    for filename in _RESULT_FILES:
        (folder / filename).unlink(missing_ok=True)
    if folder.is_dir():
        for figure in [*folder.glob("*.png"), *folder.glob("*.svg")]:
            figure.unlink()
    (base / f"{name}.ipynb").unlink(missing_ok=True)


# --- executing notebooks ---------------------------------------------------------------------------

@contextlib.contextmanager
def _environment(**values: str | None):
    """Set (or, for None, remove) environment variables for the duration: what the kernels inherit."""
    before = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        yield
    finally:
        for k, v in before.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def _kernel_manager(stderr):
    """A kernel manager whose kernel process writes its own log (its stderr) to ``stderr``: a
    kernel stopped mid-cell by Ctrl-C then leaves its traceback (a ``zmq.error.ZMQError`` as its
    sockets close) in that file, not on the runner's terminal. Cell output is not affected."""
    from jupyter_client.manager import AsyncKernelManager

    class KernelManager(AsyncKernelManager):
        async def start_kernel(self, **kw):
            kw.setdefault("stderr", stderr)
            return await super().start_kernel(**kw)

    return KernelManager(kernel_name="python3")


def _execute(name: str, settings: dict, base: Path) -> float:
    """Run one notebook with papermill; the executed notebook appears whole or not at all. The
    kernel's own log goes to ``<base>/.<name>.kernel.log``."""
    import papermill
    executed, partial = base / f"{name}.ipynb", base / f".{name}.partial.ipynb"
    start = time.time()
    try:
        with open(base / f".{name}.kernel.log", "ab") as kernel_log:
            papermill.execute_notebook(str(NOTEBOOK_DIR / f"{name}.ipynb"), str(partial), parameters=settings,
                                       cwd=str(NOTEBOOK_DIR), progress_bar=_runner.progress_enabled(), kernel_name="python3",
                                       km=_kernel_manager(kernel_log))
    except papermill.PapermillExecutionError as e:
        raise RunnerError(f"notebook {name} failed in cell {e.exec_count}: {e.ename}: {e.evalue}; "
                          f"the partly executed notebook is {partial}") from None
    except OSError as e:  # a full disk or a folder made read-only meanwhile: nothing of it is kept
        partial.unlink(missing_ok=True)
        raise RunnerError(f"notebook {name}: cannot write its results under {base} ({e.strerror or e}"
                          f"{': ' + str(e.filename) if e.filename else ''}); free some space or give another "
                          "--out; nothing of this notebook is kept") from None
    os.replace(partial, executed)
    return time.time() - start


# --- the report ------------------------------------------------------------------------------------

@dataclass
class Report:
    """What a :func:`run_suite` did, for its last lines and its exit code."""

    profile: str = ""
    base: Path | None = None
    outcome: _runner.Outcome = field(default_factory=_runner.Outcome)
    missing: dict = field(default_factory=dict)        # render-only: {notebook: [line, ...]}
    executed: list = field(default_factory=list)       # notebooks executed now
    reused: list = field(default_factory=list)         # notebooks done earlier with the same settings, data, code
    gallery: Path | None = None                        # the profile's results page, once written
    executing: list = field(default_factory=list)      # notebooks being executed
    skipped: dict = field(default_factory=dict)        # {notebook: why not executed}
    failed_notebooks: list = field(default_factory=list)  # (notebook, message)
    trained: bool = False                              # the runner trained (not render-only)
    notes: list = field(default_factory=list)          # said last (e.g. synthetic data instead of CIFAR-10)
    interrupted: bool = False

    @property
    def failed(self) -> bool:
        return bool(self.outcome.failed or self.failed_notebooks or self.missing)

    @property
    def exit_code(self) -> int:
        return 130 if self.interrupted else 1 if self.failed else 0

    def lines(self) -> list[str]:
        """The last lines but the failures: what was kept and what is left."""
        o, out = self.outcome, []
        if self.trained:
            out.append(f"runs: {len(o.made)} trained now, {len(o.stored)} already in the store"
                       + (f", {len(o.not_started)} not started" if o.not_started else "")
                       + (f", {len(o.failed)} failed" if o.failed else ""))
        if self.executed:
            out.append(f"notebooks executed: {', '.join(self.executed)}")
        if self.reused:
            out.append(f"notebooks reused (done earlier with these settings, data and code; --redo executes them "
                       f"again): {', '.join(self.reused)}")
        if o.not_started:
            out.append(f"left for later ({len(o.not_started)} runs; the same command resumes):")
            out += [f"  {run.label} [tier {run.tier}]: {reason}" for run, reason in o.not_started]
        for name, why in self.skipped.items():
            out.append(f"not executed: {name}: {why}")
        if self.gallery is not None:
            out.append(f"results: {self.gallery} (every table, figure and caption, and what each notebook found); "
                       f"the numbers in {self.gallery.parent / 'summary.csv'}, the executed notebooks beside it")
        return out

    def failure_lines(self) -> list[str]:
        """The very last lines: every failed run (with its spec and error) and notebook."""
        o, out = self.outcome, []
        problems = [f"  run {run.label}: {str(error).split('; spec: ')[0].strip()}" + _spec_line(run)
                    for run, error in o.failed]
        for name, lines in self.missing.items():
            problems.append(f"  {name}: runs missing from the store (render-only), so these numbers are absent:")
            problems += [f"    {line}" for line in lines]
        problems += [f"  {message}" for _, message in self.failed_notebooks]
        if problems:
            out.append(f"FAILED ({len(o.failed)} runs, {len(self.failed_notebooks)} notebooks"
                       + (f", runs missing for {len(self.missing)} notebooks" if self.missing else "") + "):")
            out += problems
        return out


def _spec_line(run) -> str:
    spec = getattr(run, "spec", None)
    return f"\n      spec: {spec.to_dict()}" if spec is not None and hasattr(spec, "to_dict") else ""


# --- the suite -------------------------------------------------------------------------------------

def _labs(notebooks, base: Path, data_root, redo: bool, executor, train: bool, log) -> dict:
    """One Lab per device and compile setting among the notebooks (usually one for the suite)."""
    labs = {}
    for nb in notebooks:
        key = (nb.params.get("device"), nb.params.get("compile_model"))
        if key not in labs:
            labs[key] = Lab(base / "runs", data_root=data_root, device=key[0], compile=key[1], redo=redo,
                            executor=executor, log=log, train=train, progress=_runner.progress_enabled())
    return labs


def _lab_of(labs: dict, nb) -> Lab:
    return labs[(nb.params.get("device"), nb.params.get("compile_model"))]


def _train(notebooks, labs, report: Report, order, budget, keep_going, executor, log) -> None:
    """Train every planned run the store lacks, stage by stage, into ``report.outcome``."""
    planned = [nb for nb in notebooks if nb.plan is not None]
    for nb in notebooks:
        if nb.plan is None:
            log(f"{nb.notebook}: no plan ({nb.error}); its runs are trained when it is executed")
    for lab in {id(lab): lab for lab in labs.values()}.values():
        mine = [nb for nb in planned if _lab_of(labs, nb) is lab]
        if not mine:
            continue
        projector = _runner.Projector(lab.device, lab.compile, compile_once=getattr(executor, "name", "") != "ray")
        runs = _runner.ordered_runs([nb.plan for nb in mine], lab.bind, order)
        log(f"{len(runs)} planned runs for {', '.join(nb.notebook for nb in mine)} ({lab.device}); "
            f"{sum(lab.store.get(r.spec) is None for r in runs)} to train")
        _runner.train_planned(lab, runs, projector, budget, keep_going, report.outcome, log)
        later = _runner.second_stages(mine, lab, report.outcome, order, log)
        if later:
            _runner.train_planned(lab, later, projector, budget, keep_going, report.outcome, log)


def _missing_lines(plan, lab: Lab) -> list[str]:
    """A line per group of ``plan`` with runs the store lacks (and its second stage's, once readable)."""
    lines = []
    for group, specs in plan.groups.items():
        seeds = [s.seed for s in specs if lab.store.get(lab.bind(s)) is None]
        if seeds:
            headline = " (headline)" if group in plan.headline else ""
            lines.append(f"{group!r}{headline}: {len(seeds)} of {len(specs)} runs (seed {', '.join(map(str, seeds))})")
    if getattr(plan, "then", None) is not None and not lines:
        try:
            lines += _missing_lines(plan.then(lab), lab)
        except MissingRuns as e:
            lines.append(f"its second stage: {len(e.specs)} runs")
    return lines


def _missing_report(notebooks, labs, log) -> dict:
    """Render-only: the planned runs the store lacks, by notebook and group (what each notebook lacks)."""
    missing = {}
    for nb in notebooks:
        if nb.plan is None:
            continue
        lines = _missing_lines(nb.plan, _lab_of(labs, nb))
        if lines:
            missing[nb.notebook] = lines
            log(f"render-only: {nb.notebook} lacks {len(lines)} group(s) of runs; it will fail and its numbers "
                "are absent")
    return missing


def _render(notebooks, labs, base: Path, report: Report, render_only: bool, redo: bool, jobs: int, log) -> None:
    """Execute the notebooks that are not done with these settings, data and code."""
    code, todo = package_hash(), []
    for nb in notebooks:
        lab = _lab_of(labs, nb)
        fingerprint = lab.arrays(common_settings(nb.params)["data"]).fingerprint
        settings = {**nb.params, "out_dir": str(base / nb.notebook),
                    "redo": bool(redo and nb.plan is None)}  # planned runs were (re)trained by the runner
        digest = _settings_hash(nb.notebook, settings, fingerprint, code)
        done = _read_done(base / nb.notebook / "completed.json")
        if not redo and done and done.get("settings") == digest and (base / f"{nb.notebook}.ipynb").exists():
            log(f"{nb.notebook} ({report.profile}): done earlier with these settings, data and code, skipped")
            report.reused.append(nb.notebook)
            continue
        _clear_results(base, nb.notebook)  # a failed or skipped rerun must not leave the last one's results
        incomplete = report.outcome.incomplete(nb.notebook)
        if incomplete and not render_only:
            report.skipped[nb.notebook] = f"{len(incomplete)} of its runs failed or were not started"
            continue
        todo.append((nb.notebook, settings, digest))

    def execute_one(item) -> None:
        name, settings, digest = item
        log(f"{name} ({report.profile}) ...")
        report.executing.append(name)
        try:
            seconds = _execute(name, settings, base)
        except KeyboardInterrupt:
            _clear_results(base, name)  # what it wrote before Ctrl-C is not a result
            raise
        except RunnerError as e:
            _clear_results(base, name)  # its partial rows and figures are not results
            report.executing.remove(name)
            report.failed_notebooks.append((name, str(e)))
            log(f"FAILED {e}")
            return
        atomic_write_text(base / name / "completed.json",
                          json.dumps({"settings": digest, "notebook_seconds": round(seconds, 1)}) + "\n")
        report.executing.remove(name)
        report.executed.append(name)
        log(f"{name} done in {seconds:.0f} s -> {base / (name + '.ipynb')}")

    with _environment(**{RENDER_ONLY_VARIABLE: "1" if render_only else None}):  # what the kernels inherit
        if jobs > 1 and len(todo) > 1:  # several notebooks at once (their kernels share a Ray cluster)
            from concurrent.futures import ThreadPoolExecutor
            with ThreadPoolExecutor(max_workers=jobs) as pool:
                list(pool.map(execute_one, todo))
        else:
            for item in todo:
                execute_one(item)


def run_suite(names: Sequence[str] = (), profile: str = "auto", data: str | None = None,
              out: str | os.PathLike = "results", redo: bool = False, order: Sequence[str] = ORDER,
              jobs: int = 1, executor=None, train: bool = True, render: bool = True, keep_going: bool = True,
              budget: float | None = None, clock: Callable[[], float] = time.monotonic, report: Report | None = None,
              log: Callable[[str], None] = print) -> Report:
    """Train the chosen notebooks' missing runs (``train``), then execute the notebooks
    (``render``); see the module's docstring. ``train=False`` with ``render``: render-only.
    Returns the :class:`Report` (also filled in as it goes, for a caller interrupted midway)."""
    if not (isinstance(jobs, int) and jobs >= 1):
        raise RunnerError(f"--jobs must be a positive integer, got {jobs!r}")
    if not (train or render):
        raise RunnerError("--train-only and --render-only exclude each other")
    report = report if report is not None else Report()
    chosen = resolve_names(names, order)
    asked = profile
    budget_ = _runner.Budget(budget, clock) if budget is not None else None  # from the start
    profile, data_root = _resolve_profile(profile, data, out, log)
    base = _prepare_out(out, profile)
    report.profile, report.base = profile, base
    notebooks = _runner.gather_notebooks(profile, chosen, {"data_root": data_root}, order)
    labs = _labs(notebooks, base, data_root, redo, executor, train, log)
    if train:
        report.trained = True
        _train(notebooks, labs, report, order, budget_, keep_going, executor, log)
    else:
        report.missing = _missing_report(notebooks, labs, log)
    if render and not (report.outcome.failed and not keep_going):
        _render(notebooks, labs, base, report, not train, redo, jobs, log)
        table = write_summary(base)  # the wide table goes to the files; the last lines name them
        report.gallery = base / "README.md"
        log(f"summary: {len(table)} rows from {table['experiment'].nunique() if len(table) else 0} experiments "
            f"in {base / 'summary.csv'}")
    if asked != "smoke" and profile == "smoke":
        report.notes.append("Note: CIFAR-10 was not found, so these are the smoke profile's results on "
                            "synthetic data.")
    return report


def run_notebooks(names: Sequence[str] = (), profile: str = "auto", data: str | None = None,
                  out: str | os.PathLike = "results", redo: bool = False, order: Sequence[str] = ORDER,
                  jobs: int = 1, log=print):
    """:func:`run_suite` (train, then execute), returning the summary table; raises
    :class:`RunnerError` listing what failed."""
    report = run_suite(names, profile, data, out, redo, order, jobs, log=log)
    if report.failed:
        raise RunnerError("\n".join(report.failure_lines()))
    import pandas as pd
    summary = report.base / "summary.csv"
    return pd.read_csv(summary) if summary.exists() else pd.DataFrame()


# --- executors -------------------------------------------------------------------------------------

def make_executor(executor: str, address: str | None = None, gpus_per_run: float | None = None,
                  cpus_per_run: int = 1, log=print):
    """The executor the runner trains through (None: serial, here). For Ray, the notebooks' kernels
    are pointed at the same cluster (``$CLRLIB_EXECUTOR``, ``$RAY_ADDRESS``); without an address, a
    local cluster is started here."""
    os.environ["CLRLIB_EXECUTOR"] = executor
    if executor != "ray":
        return None
    from .ray_executor import RayExecutor, import_ray, init_ray
    address = address or os.environ.get("RAY_ADDRESS")
    started = not import_ray().is_initialized() and not address
    ray = init_ray(address)
    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    executor = RayExecutor(address=address, num_gpus_per_run=gpus_per_run, num_cpus_per_run=cpus_per_run, log=log)
    executor.started_here = started  # a local cluster this command started: shut down at its end
    return executor


use_executor = make_executor  # the earlier name


# --- plan: a dry run -------------------------------------------------------------------------------

def plan_rows(profile: str, names: Sequence[str] = (), data: str | None = None, out="results",
              device: str | None = None, budget: float | None = None, order: Sequence[str] = ORDER,
              compile=None) -> tuple[list[dict], list[str]]:
    """The ordered runs of ``profile`` (every stage as far as it is known) with their projected
    seconds on ``device``, whether they are stored, and whether they fit ``budget`` in turn."""
    notes = []
    if device is None and profile == "full" and not torch.cuda.is_available():
        device = "cuda"
        notes.append("projected for a CUDA GPU (the full profile's device; --device to change)")
    data_root = None if profile == "smoke" else find_data_quietly(data)
    notebooks = _runner.gather_notebooks(profile, resolve_names(names, order), {"data_root": data_root}, order)
    lab_device = (device or notebooks[0].params.get("device")) if notebooks else device
    lab = Lab(Path(out).expanduser().resolve() / profile / "runs", data_root=data_root, device=lab_device,
              train=False)
    projector = _runner.Projector(lab.device, compile)
    plans = [n.plan for n in notebooks if n.plan is not None]
    runs, stored = _runner.ordered_runs(plans, order=order), {}
    if profile != "smoke" and data_root is None:  # no data here: no fingerprints, so no keys
        notes.append("CIFAR-10 is not found here (--data), so which runs are stored is unknown")
    else:
        runs = _runner.ordered_runs(plans, lab.bind, order)
        stored = {r.spec: lab.store.get(r.spec) is not None for r in runs}
    rows, total, used = [], 0.0, [0.0]  # used: the seconds of the runs a budget admits, in turn

    def fits(seconds: float) -> str:  # as the runner admits: a run that does not fit is passed over
        if budget is None:
            return ""
        if used[0] + seconds > budget:
            return "no"
        used[0] += seconds
        return "yes"

    for r in runs:
        done = stored.get(r.spec)
        seconds = 0.0 if done else projector.seconds(r.spec)
        total += seconds
        rows.append(_row(r.tier, r.notebook, r.group, r.spec, seconds, total, done, "yes" if done else fits(seconds)))
        if rows[-1]["fits"] != "no":
            projector.assume_compiled(r.spec)
    for nb in notebooks:
        if nb.plan is None:
            notes.append(f"{nb.notebook}: no plan ({nb.error}); its runs are not listed")
            continue
        for r, seconds, done in _stage_two(nb, lab if stored else None, stored, projector, order):
            total += seconds
            row = _row("stage 2", nb.notebook, r.group, r.spec, seconds, total, done, "yes" if done else fits(seconds))
            rows.append(row)
    return rows, notes


def _stage_two(nb, lab, stored: dict, projector, order) -> list[tuple]:
    """A plan's second stage for ``plan``: ``(run, projected seconds, stored)`` per run, made with
    ``plan.then(lab)`` where its first stage is all stored here, else as far as it is known
    before (``plan.pending``; stored unknown or no)."""
    if getattr(nb.plan, "then", None) is None:
        return []
    if lab is not None and all(stored.get(lab.bind(s)) for s in nb.plan.specs()):
        try:
            runs = _runner.ordered_runs([nb.plan.then(lab)], lab.bind, order, stage=2)
        except MissingRuns:
            runs = None
        if runs is not None:
            out = []
            for r in runs:
                done = lab.store.get(r.spec) is not None
                out.append((r, 0.0 if done else projector.seconds(r.spec), done))
            return out
    pending = _runner.pending_seconds(nb, projector)
    return [(_runner.PlannedRun(_Pending(item), nb.notebook, item.group, 2, stage=2), seconds,
             None if lab is None else False) for item, seconds in pending]


@dataclass(frozen=True)
class _Pending:
    """A second-stage run before its stage is known, shaped like a spec for the plan's table."""

    item: object

    @property
    def seed(self) -> int:
        return self.item.seed

    @property
    def epochs(self) -> int:
        return self.item.epochs


def find_data_quietly(data: str | None) -> str | None:
    """The data root holding CIFAR-10 (``data``, else the default one), or None; nothing downloaded."""
    root = _data_root(data)
    return str(root) if _data.find_cifar10(root) is not None else None


def _row(tier, notebook, group, spec, seconds, total, done, fits: str) -> dict:
    length = f"{spec.epochs} epochs" if isinstance(spec, (TrainSpec, _Pending)) else f"{spec.num_it} iterations"
    return dict(tier=tier, notebook=notebook, group=group, seed=spec.seed, length=length, seconds=seconds,
                cumulative=total, stored={True: "yes", False: "no", None: "?"}[done], fits=fits)


def print_plan(rows: list[dict], notes: list[str], budget: float | None, log=print) -> None:
    import pandas as pd
    table = pd.DataFrame(rows)
    if len(table):
        shown = table.assign(seconds=table["seconds"].round(0).astype(int),
                             cumulative=(table["cumulative"] / 60).round(1))
        shown = shown.rename(columns={"seconds": "projected s", "cumulative": "cumulative min"})
        if budget is None:
            shown = shown.drop(columns="fits")
        log(shown.to_string(index=False))
    epochs = sum(int(r["length"].split()[0]) for r in rows if r["length"].endswith("epochs"))
    total = rows[-1]["cumulative"] if rows else 0.0
    log(f"{len(rows)} runs ({sum(r['stored'] == 'yes' for r in rows)} stored), {epochs} training epochs, "
        f"projected {total / 60:.1f} min for the runs not stored")
    if budget is not None:
        fit = [r for r in rows if r["fits"] == "yes" and r["stored"] != "yes"]
        left = sum(r["fits"] == "no" for r in rows)
        log(f"within a {budget:.0f} s budget: {len(fit)} runs trained ({sum(r['seconds'] for r in fit) / 60:.1f} "
            f"min projected), {left} left for later (fits = no: a run that does not fit what is left is passed "
            "over, a shorter one after it may still start)")
        log("headline groups brought back: " + ", ".join(
            sorted({f"{r['notebook']}: {r['group']}" for r in rows if r["tier"] == 0 and r["fits"] == "yes"})))
    for note in notes:
        log(f"note: {note}")


# --- the command line ------------------------------------------------------------------------------

def _common_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("names", nargs="*", help="notebooks (names, numbers like 03, or parts); default all")
    p.add_argument("--profile", default="auto", choices=("auto", *PROFILES),
                   help="auto: full on a CUDA GPU, quick otherwise (smoke if CIFAR-10 is missing)")
    p.add_argument("--data", default=None, help="folder holding cifar-10-batches-py "
                   "(default: $CLRLIB_DATA, else ~/.cache/clrlib)")
    p.add_argument("--out", default="results", help="results folder, anywhere (default: results)")
    p.add_argument("--order", default=None, help="notebook order within a tier, e.g. 03,04 "
                   "(default: 01,03,04,06,05,02,07,08)")
    p.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                   help="start a run only if its projected time fits what is left of SECONDS")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m clrlib", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the notebooks and profiles")
    plan = sub.add_parser("plan", help="a dry run: the ordered runs, projected time, which are stored")
    _common_arguments(plan)
    plan.add_argument("--device", default=None, help="project for this device (default: the profile's, "
                      "else this machine's; the full profile on a machine without CUDA: cuda)")
    run = sub.add_parser("run", help="train the missing runs, then execute the notebooks with papermill")
    _common_arguments(run)
    run.add_argument("--redo", action="store_true", help="rerun notebooks and runs whose results exist")
    only = run.add_mutually_exclusive_group()
    only.add_argument("--train-only", action="store_true", help="train into the run store, execute no "
                      "notebook (needs no Jupyter package)")
    only.add_argument("--render-only", action="store_true", help="execute the notebooks from the run store, "
                      "train nothing (a missing run fails its notebook, naming it)")
    run.add_argument("--keep-going", action=argparse.BooleanOptionalAction, default=True,
                     help="after a failed run or notebook, go on with the rest (default; exit code 1 at the end)")
    run.add_argument("--executor", default="local", choices=("local", "ray"),
                     help="local: runs one after another in this process; ray: each run a Ray task")
    run.add_argument("--address", default=None, help="Ray cluster to join (default: $RAY_ADDRESS, else a "
                     "local cluster started here)")
    run.add_argument("--gpus-per-run", type=float, default=None, help="Ray: GPUs per run, fractions allowed "
                     "(default: 1 on a cluster with GPUs, else 0)")
    run.add_argument("--cpus-per-run", type=int, default=1, help="Ray: CPUs (and torch threads) per run")
    run.add_argument("--jobs", type=int, default=1, help="notebooks executed at once (default 1)")
    doctor = sub.add_parser("doctor", help="check every device-dependent path on this machine")
    doctor.add_argument("--full", action="store_true", help="ResNet-56 at batch 512 (default: a small smoke size)")
    doctor.add_argument("--device", default=None, help="default: cuda, then mps, then cpu")
    return parser


def _run_command(args, report: Report) -> int:
    executor = make_executor(args.executor, args.address, args.gpus_per_run, args.cpus_per_run)
    try:
        run_suite(args.names, args.profile, args.data, args.out, args.redo, parse_order(args.order), args.jobs,
                  executor, train=not args.render_only, render=not args.train_only, keep_going=args.keep_going,
                  budget=args.budget, report=report)
    finally:
        if getattr(executor, "started_here", False):
            import ray
            ray.shutdown()  # the local cluster this command started
    for line in report.lines():
        print(line)
    if report.outcome.budget_ended and not report.failed:
        print("the budget ended the work (not an error); run the same command again for the rest")
    for note in report.notes:
        print(note)
    sys.stdout.flush()
    for line in report.failure_lines():
        print(line, file=sys.stderr)
    return report.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    report = Report()
    try:
        if args.command == "list":
            print("\n".join(ORDER))
            print("profiles:", ", ".join(PROFILES))
            try:
                notebook_dir()
            except NotebooksNotFound as e:
                print(f"note: {e}")
            return 0
        if args.command in ("plan", "run"):
            notebook_dir()  # an installed package has no notebooks: say so before anything is written
        if args.command == "doctor":
            from .doctor import run_doctor
            return run_doctor(full=args.full, device=args.device)
        if args.budget is not None and not args.budget > 0:
            raise RunnerError(f"--budget must be a positive number of seconds, got {args.budget:g}")
        if args.command == "plan":
            profile = args.profile if args.profile != "auto" else ("full" if torch.cuda.is_available() else "quick")
            rows, notes = plan_rows(profile, args.names, args.data, args.out, args.device, args.budget,
                                    parse_order(args.order))
            print_plan(rows, notes, args.budget)
            return 0
        return _run_command(args, report)
    except KeyboardInterrupt:
        report.interrupted = True
        made = report.outcome.made
        kept = f"{len(made)} run(s) trained in this session are stored" + (
            f" in {report.base / 'runs'}" if report.base else "")
        done = f"; notebooks completed: {', '.join(report.executed)}" if report.executed else ""
        cut = (f"; stopped while executing {', '.join(report.executing)} (not kept: its rows and figures "
               "were removed)") if report.executing else ""
        print(f"interrupted: {kept}{done}{cut}; a training run in progress keeps its last epoch's checkpoint. "
              "Finished runs are in the run store, so rerunning the same command resumes.", file=sys.stderr)
        return 130
    except (ProfileError, RunnerError, SpecError, StoreNotWritable, StoreLockTimeout, _data.DatasetNotFoundError,
            _data.DatasetDownloadError, _data.CifarFormatError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

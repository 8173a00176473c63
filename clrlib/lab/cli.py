"""The command line: run the notebook suite with papermill, list it, check a machine.

    python -m clrlib list
    python -m clrlib run [NAMES...] --profile {auto,smoke,quick,full} [--data DIR] [--out DIR]
                         [--redo] [--order 01,03,...]
    python -m clrlib doctor [--full]

``run`` executes the notebooks in the order that gives the most of the post first (01, 03, 04,
06, 05, 02), each into ``<out>/<profile>/<notebook>.ipynb``, and gathers their headline numbers
into ``<out>/<profile>/summary.csv`` and ``summary.md``. A notebook is skipped when it was
completed with the same parameters; its runs are in the profile's run store, so an interrupted
suite resumes where it stopped, losing at most the run in progress.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Sequence

import torch

from .. import data as _data
from .store import atomic_write_text, jsonable
from .suite import NOTEBOOK_DIR, NOTEBOOKS, ORDER, PROFILES, ProfileError, apply_profile, write_summary

__all__ = ["main", "run_notebooks", "resolve_names", "RunnerError"]

#: Parameters that say where things are or how they are shown, not what runs.
_NOT_SETTINGS = {"out_dir", "data_root", "redo", "progress"}


class RunnerError(RuntimeError):
    """Something the runner cannot do; the message says what and what to do."""


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


def find_data(data: str | None) -> str | None:
    """The data root holding CIFAR-10, downloading it where missing; None (and a message) if there is none."""
    root = (Path(data).expanduser() if data else _data.default_data_root()).resolve()
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


def _settings_hash(name: str, settings: dict) -> str:
    """A hash of a notebook's settings and of its code: a change to either re-executes it
    (its runs still come from the store)."""
    kept = {k: v for k, v in settings.items() if k not in _NOT_SETTINGS}
    code = (NOTEBOOK_DIR / f"{name}.ipynb").read_bytes()
    return hashlib.sha256(json.dumps(jsonable(kept), sort_keys=True).encode() + code).hexdigest()[:16]


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
    except OSError as e:
        raise RunnerError(f"--out {out}: cannot write in {base} ({e.strerror}); give a writable folder") from None
    return base


def _execute(name: str, settings: dict, base: Path) -> float:
    """Run one notebook with papermill; the executed notebook appears whole or not at all."""
    import papermill
    executed, partial = base / f"{name}.ipynb", base / f".{name}.partial.ipynb"
    start = time.time()
    try:
        papermill.execute_notebook(str(NOTEBOOK_DIR / f"{name}.ipynb"), str(partial), parameters=settings,
                                   cwd=str(NOTEBOOK_DIR), progress_bar=False, kernel_name="python3")
    except papermill.PapermillExecutionError as e:
        raise RunnerError(f"notebook {name} failed in cell {e.exec_count}: {e.ename}: {e.evalue}; "
                          f"the partly executed notebook is {partial}") from None
    os.replace(partial, executed)
    return time.time() - start


def run_notebooks(names: Sequence[str] = (), profile: str = "auto", data: str | None = None,
                  out: str | os.PathLike = "results", redo: bool = False,
                  order: Sequence[str] = ORDER, jobs: int = 1, log=print):
    """Execute notebooks with papermill in ``profile``; returns the summary table.

    ``profile="auto"`` is ``full`` on a CUDA machine and ``quick`` elsewhere, falling back to
    ``smoke`` (synthetic data, labelled so) when CIFAR-10 is missing. An explicit profile that
    needs CIFAR-10 fails instead, with the message saying where it looked. ``jobs`` notebooks
    are executed at once (their runs then share the executor, e.g. a Ray cluster).
    """
    if not (isinstance(jobs, int) and jobs >= 1):
        raise RunnerError(f"--jobs must be a positive integer, got {jobs!r}")
    chosen = resolve_names(names, order)
    asked = profile
    if profile == "auto":
        profile = "full" if torch.cuda.is_available() else "quick"
    if profile not in PROFILES:
        raise ProfileError(f"unknown profile {profile!r}; choose auto or one of {PROFILES}")
    _check_out(out, Path(out).expanduser().resolve())  # before looking for (or downloading) data
    data_root = None
    if profile != "smoke":
        data_root = find_data(data)
        root = Path(data).expanduser() if data else _data.default_data_root()
        if data_root is None and asked != "auto":
            raise RunnerError(f"profile {profile!r} needs CIFAR-10.\n" + _data.not_found_message(root))
        if data_root is None:
            log(_data.not_found_message(root) + f"\nRunning the smoke profile on synthetic data instead of {profile!r}.")
            profile = "smoke"
    base = _prepare_out(out, profile)
    todo = []
    for name in chosen:
        settings = {**apply_profile(name, profile), "out_dir": str(base / name), "redo": redo,
                    "data_root": data_root}
        done, executed = base / name / "completed.json", base / f"{name}.ipynb"
        digest = _settings_hash(name, settings)
        if not redo and executed.exists() and done.exists() and json.loads(done.read_text()).get("settings") == digest:
            log(f"{name} ({profile}): done earlier with these settings, skipped")
        else:
            done.unlink(missing_ok=True)
            executed.unlink(missing_ok=True)  # a failed rerun must not leave the last run's notebook behind
            todo.append((name, settings, digest))

    def execute_one(item) -> None:
        name, settings, digest = item
        log(f"{name} ({profile}) ...")
        seconds = _execute(name, settings, base)
        atomic_write_text(base / name / "completed.json",
                          json.dumps({"settings": digest, "notebook_seconds": round(seconds, 1)}) + "\n")
        log(f"{name} done in {seconds:.0f} s -> {base / (name + '.ipynb')}")

    if jobs > 1 and len(todo) > 1:  # every notebook's runs in flight together (with --executor ray)
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            list(pool.map(execute_one, todo))
    else:
        for item in todo:
            execute_one(item)
    table = write_summary(base)
    log(table.to_string(index=False))
    if asked != "smoke" and profile == "smoke":
        log("Note: CIFAR-10 was not found, so these are the smoke profile's results on synthetic data.")
    return table


def use_executor(executor: str, address: str | None = None) -> None:
    """Make the notebooks' runs go to ``executor``: the kernels read ``$CLRLIB_EXECUTOR`` and
    ``$RAY_ADDRESS``. For Ray without an address, a local cluster is started here for them to join."""
    os.environ["CLRLIB_EXECUTOR"] = executor
    if executor != "ray":
        return
    from .ray_executor import import_ray
    ray = import_ray()
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        ray.init(include_dashboard=False)
        address = ray.get_runtime_context().gcs_address
    os.environ["RAY_ADDRESS"] = address


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m clrlib", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the notebooks and profiles")
    run = sub.add_parser("run", help="execute notebooks with papermill")
    run.add_argument("names", nargs="*", help="notebooks to run (names, numbers like 03, or parts); default all")
    run.add_argument("--profile", default="auto", choices=("auto", *PROFILES),
                     help="auto: full on a CUDA GPU, quick otherwise (smoke if CIFAR-10 is missing)")
    run.add_argument("--data", default=None, help="folder holding cifar-10-batches-py "
                     "(default: $CLRLIB_DATA, else ~/.cache/clrlib)")
    run.add_argument("--out", default="results", help="results folder, anywhere (default: results)")
    run.add_argument("--redo", action="store_true", help="rerun notebooks and runs whose results exist")
    run.add_argument("--order", default=None, help="notebook order, e.g. 03,04 (default: 01,03,04,06,05,02,07)")
    run.add_argument("--executor", default="local", choices=("local", "ray"),
                     help="local: runs one after another here; ray: each run a task on a Ray cluster")
    run.add_argument("--address", default=None, help="Ray cluster to join (default: $RAY_ADDRESS, else a "
                     "local cluster started here)")
    run.add_argument("--jobs", type=int, default=1, help="notebooks executed at once (default 1)")
    doctor = sub.add_parser("doctor", help="check every device-dependent path on this machine")
    doctor.add_argument("--full", action="store_true", help="ResNet-56 at batch 512 (default: a small smoke size)")
    doctor.add_argument("--device", default=None, help="default: cuda, then mps, then cpu")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "list":
            print("\n".join(ORDER))
            print("profiles:", ", ".join(PROFILES))
            return 0
        if args.command == "doctor":
            from .doctor import run_doctor
            return run_doctor(full=args.full, device=args.device)
        use_executor(args.executor, args.address)
        run_notebooks(args.names, args.profile, args.data, args.out, args.redo, parse_order(args.order),
                      args.jobs)
        return 0
    except KeyboardInterrupt:
        print("interrupted; finished runs are in the run store, so rerunning the same command resumes",
              file=sys.stderr)
        return 130
    except (ProfileError, RunnerError, _data.DatasetNotFoundError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

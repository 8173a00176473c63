"""Run the notebook suite with papermill, and the helpers the notebooks call.

Command line::

    python -m clrlib.experiments list
    python -m clrlib.experiments run [NAMES...] --profile {auto,smoke,quick,full} \\
        [--data DIR] [--out results] [--redo]

Each notebook in ``notebooks/`` has a cell tagged ``parameters`` holding the ``full``
profile's settings (the post's). A profile file ``clrlib/profiles/<profile>.yaml``
overrides them: papermill injects them when the runner executes a notebook, and
:func:`setup_notebook` applies them when the environment variable ``CLRLIB_PROFILE``
is set (that is how the tests run every notebook in the ``smoke`` profile).

A notebook writes under ``<out>/<profile>/<notebook>/``: ``params.json`` (settings,
commit, device, versions, date), figures, per-run CSV histories with a JSON of their
settings beside each, and ``summary_rows.csv``. The runner saves the executed notebook
as ``<out>/<profile>/<notebook>.ipynb`` and gathers every notebook's rows into
``<out>/<profile>/summary.csv`` and ``summary.md``.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd
import torch

from . import data as _data
from . import finder as _finder
from . import models as _models
from . import schedules as _schedules
from . import train as _train

__all__ = ["NOTEBOOKS", "PROFILES", "load_profile", "setup_notebook", "Run", "run_notebooks", "main"]

NOTEBOOKS = ("01_lr_finder", "02_cyclical_lr", "03_one_cycle", "04_super_convergence",
             "05_momentum", "06_weight_decay")
PROFILES = ("smoke", "quick", "full")
PROFILE_DIR = Path(__file__).resolve().parent / "profiles"
REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
SUMMARY_COLUMNS = ["experiment", "metric", "value", "post_value", "n_seeds", "std"]
SCHEDULES: dict[str, Callable] = {
    "one_cycle": _schedules.one_cycle,
    "one_cycle_cosine": _schedules.one_cycle_cosine,
    "cyclic": _schedules.cyclic,
    "constant": _schedules.constant,
}
_IPYTHON_NAMES = {"In", "Out", "exit", "quit", "get_ipython"}
_PLAIN = (bool, int, float, str, list, tuple, dict, type(None))


class ExperimentError(ValueError):
    """A bad notebook name, profile or parameter; the message names it."""


# --- profiles ---------------------------------------------------------------------------------

def load_profile(profile: str, notebook: str) -> dict[str, Any]:
    """The settings of ``notebook`` in ``profile``: the file's ``common`` section, then its own."""
    if profile not in PROFILES:
        raise ExperimentError(f"unknown profile {profile!r}; choose one of {PROFILES}")
    if notebook not in NOTEBOOKS:
        raise ExperimentError(f"unknown notebook {notebook!r}; choose from {NOTEBOOKS}")
    import yaml
    path = PROFILE_DIR / f"{profile}.yaml"
    with open(path) as f:
        spec = yaml.safe_load(f) or {}
    unknown = set(spec) - {"common", *NOTEBOOKS}
    if unknown:
        raise ExperimentError(f"{path}: unknown section(s) {sorted(unknown)}; expected 'common' or {NOTEBOOKS}")
    settings = {**(spec.get("common") or {}), **(spec.get(notebook) or {})}
    settings["profile"] = profile
    return settings


def notebook_parameters(notebook: str) -> dict[str, Any]:
    """The names and default values of a notebook's ``parameters`` cell (via papermill)."""
    import papermill
    path = NOTEBOOK_DIR / f"{notebook}.ipynb"
    return {name: p["default"] for name, p in papermill.inspect_notebook(str(path)).items()}


def check_parameters(notebook: str, settings: dict[str, Any]) -> None:
    """Fail with the notebook's and the parameter's name if a setting is not a parameter."""
    known = notebook_parameters(notebook)
    bad = sorted(set(settings) - set(known))
    if bad:
        raise ExperimentError(f"notebook {notebook}: unknown parameter(s) {bad}; "
                              f"its parameters cell defines {sorted(known)}")


# --- inside a notebook ----------------------------------------------------------------------------

def setup_notebook(notebook: str, namespace: dict) -> "Run":
    """Apply ``$CLRLIB_PROFILE`` (if set) to a notebook's parameters and start its :class:`Run`.

    ``namespace`` is the notebook's ``globals()`` after the parameters cell: its plain
    values are the parameters. When ``CLRLIB_PROFILE`` is set, that profile's settings
    replace them (in ``namespace`` too, so the notebook's variables show what runs), and
    ``CLRLIB_OUT`` (if set) replaces the results folder's root.
    """
    params = {k: v for k, v in namespace.items()
              if not k.startswith("_") and k not in _IPYTHON_NAMES and isinstance(v, _PLAIN)}
    env_profile = os.environ.get("CLRLIB_PROFILE")
    if env_profile:
        settings = load_profile(env_profile, notebook)
        bad = sorted(set(settings) - set(params))
        if bad:
            raise ExperimentError(f"notebook {notebook}: profile {env_profile!r} sets unknown parameter(s) {bad}")
        params.update(settings)
        if os.environ.get("CLRLIB_OUT"):
            params["out_dir"] = str(Path(os.environ["CLRLIB_OUT"]) / env_profile / notebook)
        namespace.update(params)
    return Run(notebook, params)


def git_commit() -> str:
    """The commit of the working tree (``+dirty`` if it has uncommitted changes), or "unknown"."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine_info(device: torch.device) -> dict[str, Any]:
    """Device, host and library versions, for the record of a run."""
    import torchvision
    info = {"device": str(device), "host": platform.node(), "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__}
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
    else:
        info["device_name"] = _cpu_name()
    return info


def _cpu_name() -> str:
    """The CPU's model name where Linux tells it, else what the platform module knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip() + f" ({os.cpu_count()} cores)"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return str(value)


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(_jsonable(obj), indent=2) + "\n")


class Run:
    """One notebook's run: its settings, data, device and output folder.

    Expected parameters (a notebook may have more): ``profile``, ``out_dir``, ``dataset``
    ("cifar10" or "synthetic"), ``data_root``, ``depth``, ``shortcut``, ``batch_size``,
    ``weight_decay``, ``train_subset``, ``test_subset``, ``seeds``.
    """

    def __init__(self, notebook: str, params: dict[str, Any]) -> None:
        self.notebook = notebook
        self.params = dict(params)
        self.profile = params.get("profile", "full")
        self.out = Path(params.get("out_dir") or REPO_ROOT / "results" / self.profile / notebook)
        self.out.mkdir(parents=True, exist_ok=True)
        dev = params.get("device")
        self.device = torch.device(dev) if dev else _train.default_device()
        self.redo = bool(params.get("redo", False)) or os.environ.get("CLRLIB_REDO") == "1"
        self.started = time.time()
        self.data = self._load_data()
        self.summary: list[dict] = []
        self.info = {"notebook": notebook, "profile": self.profile, "parameters": self.params,
                     "data": self.data.source, "synthetic_data": self.data.synthetic,
                     "commit": git_commit(), "clrlib": _clrlib_version(),
                     "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                     **machine_info(self.device)}
        _write_json(self.out / "params.json", self.info)

    # data and model -----------------------------------------------------------------------------
    def _load_data(self) -> _data.CifarArrays:
        dataset = self.params.get("dataset", "cifar10")
        if dataset == "synthetic":
            return _data.synthetic_cifar10(int(self.params.get("synthetic_train", 512)),
                                           int(self.params.get("synthetic_test", 256)))
        if dataset != "cifar10":
            raise ExperimentError(f"notebook {self.notebook}: dataset must be 'cifar10' or 'synthetic', "
                                  f"got {dataset!r}")
        return _data.load_cifar10(self.params.get("data_root"))

    @property
    def data_label(self) -> str:
        """"CIFAR-10" or "synthetic CIFAR-shaped data", for titles and tables."""
        return self.data.name

    def loaders(self, batch_size: int | None = None, seed: int = 0):
        """``(train_loader, test_loader)`` on the run's device, with the post's augmentation."""
        x, y, xt, yt = self.data
        batch_size = batch_size or self.params.get("batch_size", 512)
        cuda = self.device.type == "cuda"
        train = _data.CifarLoader(x, y, batch_size=batch_size, device=self.device, seed=seed,
                                  subset=self.params.get("train_subset"), channels_last=cuda)
        test = _data.CifarLoader(xt, yt, batch_size=1000, train=False, device=self.device,
                                 subset=self.params.get("test_subset"), seed=seed, channels_last=cuda)
        return train, test

    def model(self, seed: int = 0) -> torch.nn.Module:
        """A freshly initialised ResNet (``depth``, ``shortcut``) seeded with ``seed``."""
        _train.seed_everything(seed)
        return _models.resnet_cifar(int(self.params.get("depth", 56)),
                                    self.params.get("shortcut", "B")).to(self.device)

    # training and range tests, saved and reused -----------------------------------------------------
    @property
    def runs_dir(self) -> Path:
        """Where training histories and range tests are saved: shared by the profile's notebooks,
        so a run that two notebooks need (same settings) is trained once."""
        path = self.out.parent / "runs"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _cached(self, settings: dict) -> Path | None:
        """The CSV of a saved run with exactly these settings, unless the run must be redone."""
        if self.redo:
            return None
        wanted = _jsonable(settings)
        for meta in sorted(self.runs_dir.glob("*.json")):
            csv = meta.with_suffix(".csv")
            if csv.exists() and json.loads(meta.read_text()).get("settings") == wanted:
                return csv
        return None

    def _save(self, stem: str, frame: pd.DataFrame, settings: dict, extra: dict) -> None:
        frame.to_csv(self.runs_dir / f"{stem}.csv", index=False)
        _write_json(self.runs_dir / f"{stem}.json",
                    {"settings": settings, **extra, "notebook": self.notebook, "data": self.data.source,
                     "commit": self.info["commit"], "device_name": self.info["device_name"],
                     "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})

    def _settings(self, kind: str, **settings) -> dict:
        """A run's settings, plus everything of the notebook's that decides its outcome."""
        x_train, _, x_test, _ = self.data
        return dict(kind=kind, **settings, depth=self.params.get("depth", 56),
                    shortcut=self.params.get("shortcut", "B"), train_subset=self.params.get("train_subset"),
                    test_subset=self.params.get("test_subset"), data=self.data.source,
                    n_train=len(x_train), n_test=len(x_test), device_type=self.device.type)

    def fit(self, name: str, schedule: str, epochs: int, seed: int = 0, momentum: float = 0.9,
            weight_decay: float | None = None, batch_size: int | None = None,
            **schedule_args) -> pd.DataFrame:
        """Train a fresh model with a named schedule and return (and save) its history.

        ``schedule`` is one of "one_cycle", "one_cycle_cosine", "cyclic", "constant";
        ``schedule_args`` are its arguments (``total_steps`` is filled in for the 1cycle
        ones). A history saved earlier with the same settings is read back instead of
        retraining, unless the run was asked to redo.
        """
        if schedule not in SCHEDULES:
            raise ExperimentError(f"schedule must be one of {sorted(SCHEDULES)}, got {schedule!r}")
        weight_decay = self.params.get("weight_decay", 1e-4) if weight_decay is None else weight_decay
        batch_size = batch_size or self.params.get("batch_size", 512)
        train, test = self.loaders(batch_size, seed)
        if schedule.startswith("one_cycle"):
            schedule_args["total_steps"] = epochs * len(train)
        fn = partial(SCHEDULES[schedule], **schedule_args)
        settings = self._settings("fit", schedule=schedule, schedule_args=schedule_args, epochs=epochs,
                                  seed=seed, momentum=momentum, weight_decay=weight_decay,
                                  batch_size=batch_size)
        stem = f"{name}_seed{seed}"
        cached = self._cached(settings)
        if cached is not None:
            return pd.read_csv(cached)
        model = self.model(seed)
        opt = torch.optim.SGD(model.parameters(), lr=0.0,  # the schedule sets it from step 0
                              momentum=momentum, weight_decay=weight_decay)
        start = time.time()
        history = _train.fit(model, train, epochs, fn, opt, test_loader=test, device=self.device,
                             progress=bool(self.params.get("progress", True)))
        self._save(stem, history, settings, {"wall_seconds": round(time.time() - start, 2)})
        return history

    def lr_find(self, name: str, seed: int = 0, weight_decay: float | None = None,
                batch_size: int | None = None, momentum: float = 0.9, **finder_args) -> _finder.FinderResult:
        """Run (or read back) an LR range test on a fresh model with SGD(momentum, weight_decay)."""
        weight_decay = self.params.get("weight_decay", 1e-4) if weight_decay is None else weight_decay
        batch_size = batch_size or self.params.get("batch_size", 512)
        settings = self._settings("lr_find", seed=seed, weight_decay=weight_decay, batch_size=batch_size,
                                  momentum=momentum, finder_args=finder_args)
        stem = f"{name}_seed{seed}"
        cached = self._cached(settings)
        if cached is not None:
            frame = pd.read_csv(cached)
            meta = json.loads(cached.with_suffix(".json").read_text())
            return _finder.FinderResult(lrs=frame["lr"].tolist(), losses=frame["loss"].tolist(),
                                        raw_losses=frame["raw_loss"].tolist(),
                                        accuracies=frame["accuracy"].tolist() if "accuracy" in frame else [],
                                        stop_lr=meta.get("stop_lr"), settings=meta.get("finder_settings", {}))
        train, _ = self.loaders(batch_size, seed)
        model = self.model(seed)
        opt = torch.optim.SGD(model.parameters(), lr=finder_args.get("start_lr", 1e-7), momentum=momentum,
                              weight_decay=weight_decay)
        start = time.time()
        result = _finder.lr_find(model, torch.nn.functional.cross_entropy, train, opt, **finder_args)
        self._save(stem, result.to_frame(), settings,
                   {"stop_lr": result.stop_lr, "finder_settings": result.settings,
                    "wall_seconds": round(time.time() - start, 2)})
        return result

    # outputs -------------------------------------------------------------------------------------
    def save_figure(self, fig, name: str, svg: bool = False) -> Path:
        """Save ``fig`` as ``<out>/<name>.png`` (and ``.svg``), labelled if the data is synthetic."""
        if self.data.synthetic:
            fig.text(0.99, 0.01, "synthetic data (smoke test), not CIFAR-10", ha="right", va="bottom",
                     fontsize="small", color="red")
        path = self.out / f"{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        if svg:
            fig.savefig(self.out / f"{name}.svg", bbox_inches="tight")
        return path

    def record(self, experiment: str, metric: str, values: Sequence[float] | float,
               post_value: float | None = None) -> dict:
        """Add a headline number (mean and std over seeds) to the summary table."""
        values = [float(v) for v in (values if isinstance(values, (list, tuple)) else [values])]
        if not values:
            raise ExperimentError(f"record({experiment!r}, {metric!r}) got no values")
        mean = sum(values) / len(values)
        std = (math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
               if len(values) > 1 else float("nan"))
        if self.data.synthetic:
            experiment = f"{experiment} [synthetic data]"
        row = dict(experiment=experiment, metric=metric, value=mean, post_value=post_value,
                   n_seeds=len(values), std=std)
        self.summary = [r for r in self.summary if (r["experiment"], r["metric"]) != (experiment, metric)]
        self.summary.append(row)
        pd.DataFrame(self.summary, columns=SUMMARY_COLUMNS).to_csv(self.out / "summary_rows.csv", index=False)
        return row

    def table(self) -> pd.DataFrame:
        """This notebook's summary rows so far."""
        return pd.DataFrame(self.summary, columns=SUMMARY_COLUMNS)


def _clrlib_version() -> str:
    from . import __version__
    return __version__


# --- the runner ---------------------------------------------------------------------------------

def resolve_names(names: Sequence[str]) -> list[str]:
    """Notebook names from full names, numbers ("03") or parts of names ("one_cycle")."""
    if not names:
        return list(NOTEBOOKS)
    chosen = []
    for name in names:
        hits = [n for n in NOTEBOOKS if n == name or n.startswith(name) or name in n]
        if not hits:
            raise ExperimentError(f"no notebook matches {name!r}; the notebooks are {NOTEBOOKS}")
        chosen += [h for h in hits if h not in chosen]
    return chosen


def _find_data(data: str | None) -> str | None:
    """A data root holding CIFAR-10, trying a download where it is missing; None if there is none."""
    root = (Path(data).expanduser() if data else _data.default_data_root()).resolve()
    if _data.find_cifar10(root) is not None:
        return str(root)
    try:
        _data.load_cifar10(root, download=True)
        return str(root)
    except Exception as e:  # no internet, or a failed download
        print(f"CIFAR-10 not found and could not be downloaded ({type(e).__name__}: {e}).\n"
              + _data.not_found_message(root), file=sys.stderr)
        return None


def run_notebooks(names: Sequence[str] = (), profile: str = "auto", data: str | None = None,
                  out: str | os.PathLike = "results", redo: bool = False) -> pd.DataFrame:
    """Execute notebooks with papermill in ``profile`` and write the summary table.

    ``profile="auto"`` is ``full`` on a CUDA machine and ``quick`` elsewhere. Where the
    profile needs CIFAR-10 and none is found (or downloaded), it says so and runs the
    ``smoke`` profile on synthetic data instead. Returns the summary table.
    """
    import papermill
    chosen = resolve_names(names)
    if profile == "auto":
        profile = "full" if torch.cuda.is_available() else "quick"
    if profile not in PROFILES:
        raise ExperimentError(f"unknown profile {profile!r}; choose auto or one of {PROFILES}")
    data_root = None
    if profile != "smoke":
        data_root = _find_data(data)
        if data_root is None:
            print(f"Running the smoke profile on synthetic data instead of {profile!r}; its results go to "
                  f"{Path(out) / 'smoke'} and are labelled synthetic.", file=sys.stderr)
            profile = "smoke"
    base = Path(out).resolve() / profile
    base.mkdir(parents=True, exist_ok=True)
    env_before = {k: os.environ.get(k) for k in ("CLRLIB_PROFILE", "CLRLIB_OUT")}
    os.environ.pop("CLRLIB_PROFILE", None)  # papermill injects the settings; no second override
    os.environ.pop("CLRLIB_OUT", None)
    try:
        for i, name in enumerate(chosen, 1):
            settings = load_profile(profile, name)
            check_parameters(name, settings)
            settings.update(out_dir=str(base / name), redo=redo)
            if data_root is not None:
                settings["data_root"] = data_root
            done = base / name / "params.json"
            executed = base / f"{name}.ipynb"
            if not redo and executed.exists() and done.exists() and json.loads(done.read_text()).get("completed"):
                print(f"[{i}/{len(chosen)}] {name} ({profile}): results exist, skipped (use --redo to rerun)")
                continue
            print(f"[{i}/{len(chosen)}] {name} ({profile}) ...", flush=True)
            start = time.time()
            try:
                papermill.execute_notebook(str(NOTEBOOK_DIR / f"{name}.ipynb"), str(executed),
                                           parameters=settings, cwd=str(NOTEBOOK_DIR), progress_bar=True,
                                           kernel_name="python3")
            except papermill.PapermillExecutionError as e:
                raise ExperimentError(f"notebook {name} ({profile}) failed in cell {e.exec_count}: "
                                      f"{e.ename}: {e.evalue}; the partly executed notebook is {executed}") from None
            info = json.loads(done.read_text())
            info.update(completed=True, notebook_seconds=round(time.time() - start, 1))
            _write_json(done, info)
            print(f"    done in {time.time() - start:.0f} s -> {executed}")
    finally:
        for k, v in env_before.items():
            if v is not None:
                os.environ[k] = v
    return write_summary(base)


def write_summary(base: Path) -> pd.DataFrame:
    """Gather ``<base>/<notebook>/summary_rows.csv`` into ``summary.csv`` and ``summary.md``."""
    frames = [pd.read_csv(p) for n in NOTEBOOKS if (p := base / n / "summary_rows.csv").exists()]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=SUMMARY_COLUMNS)
    table = table[SUMMARY_COLUMNS]
    table.to_csv(base / "summary.csv", index=False)
    lines = ["| " + " | ".join(SUMMARY_COLUMNS) + " |", "|" + "---|" * len(SUMMARY_COLUMNS)]
    for row in table.itertuples(index=False):
        cells = ["" if (isinstance(v, float) and math.isnan(v)) else (f"{v:.4g}" if isinstance(v, float) else str(v))
                 for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    (base / "summary.md").write_text(
        f"# Summary: {base.name} profile\n\nvalue = mean over seeds; std empty for one seed; "
        "post_value = the post's (or its notebook's) number where it gives one.\n\n" + "\n".join(lines) + "\n")
    return table


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clrlib.experiments", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the notebooks and profiles")
    run = sub.add_parser("run", help="execute notebooks with papermill")
    run.add_argument("names", nargs="*", help="notebooks to run (names, numbers like 03, or parts); default all")
    run.add_argument("--profile", default="auto", choices=("auto", *PROFILES),
                     help="auto: full on a CUDA GPU, quick otherwise")
    run.add_argument("--data", default=None, help="folder holding cifar-10-batches-py "
                     "(default: $CLRLIB_DATA, else ~/.cache/clrlib)")
    run.add_argument("--out", default="results", help="results folder (default: results)")
    run.add_argument("--redo", action="store_true", help="rerun notebooks and runs whose results exist")
    args = parser.parse_args(argv)
    if args.command == "list":
        for name in NOTEBOOKS:
            print(name)
        print("profiles:", ", ".join(PROFILES))
        return 0
    try:
        table = run_notebooks(args.names, args.profile, args.data, args.out, args.redo)
    except ExperimentError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(table.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())

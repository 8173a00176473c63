"""The notebook suite: its notebooks, their parameters, the profiles, and the helper each notebook uses.

Each notebook in ``notebooks/`` starts with a cell tagged ``parameters``: literal settings whose
defaults are the post's. A profile, ``clrlib/lab/profiles/<profile>.yaml``, overrides some of them
(a ``common`` section, then one per notebook). :func:`apply_profile` is the one place where a
profile meets a notebook's parameters: the runner calls it to make papermill's parameters, and
a notebook opened by hand calls it (through :func:`start`) when its ``profile`` parameter is
None and ``$CLRLIB_PROFILE`` names one. Every profile value is checked against the type of the
parameter's default when the profile is read; the error names the file, section and parameter.

Inside a notebook::

    exp = suite.start("03_one_cycle", globals())   # the parameters, profile applied; data and store ready
    plan = exp.plan()                              # its runs, named groups (clrlib.lab.plans)
    runs = exp.get(plan)                           # {group: [history, ...]}, from the store or trained
    exp.record(name, "final test accuracy (%)", [...], post_value=plan.post[name])
"""
from __future__ import annotations

import ast
import datetime as _dt
import functools
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from . import analysis
from .provenance import REPO_ROOT, git_commit, machine_info
from . import runs as _runs
from .runs import Lab, MissingRuns
from .plans import Plan, common_settings, plan_for
from .specs import FinderSpec, TrainSpec
from .store import atomic_write_text, jsonable
from ..train import resolve_precision

__all__ = ["NOTEBOOKS", "PROFILES", "ORDER", "ProfileError", "NotebooksNotFound", "notebook_dir", "notebook_parameters", "load_profile",
           "apply_profile", "start", "Experiment", "SUMMARY_COLUMNS", "COMPARISON_COLUMNS", "write_summary"]

NOTEBOOKS = ("01_lr_finder", "02_cyclical_lr", "03_one_cycle", "04_super_convergence",
             "05_momentum", "06_weight_decay", "07_auto_recipe", "08_same_budget")
#: The order that gives the most of the post first when time runs short.
ORDER = ("01_lr_finder", "03_one_cycle", "04_super_convergence", "06_weight_decay", "05_momentum",
         "02_cyclical_lr", "07_auto_recipe", "08_same_budget")
PROFILES = ("smoke", "quick", "full", "cpu")
PROFILE_DIR = Path(__file__).resolve().parent / "profiles"
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
SUMMARY_COLUMNS = ["experiment", "metric", "value", "std", "ci95", "n_seeds", "post_value"]
COMPARISON_COLUMNS = ["comparison", "metric", "difference", "ci95", "n_a", "n_b", "test", "verdict",
                      "post_difference"]


class ProfileError(ValueError):
    """A bad notebook name, profile file, section or setting; the message names it."""


class NotebooksNotFound(ProfileError):
    """The notebooks folder is absent: clrlib was installed as a package, without a checkout."""


def notebook_dir() -> Path:
    """The folder of the suite's notebooks, or :class:`NotebooksNotFound` saying where it looked.

    An installed wheel ships the library and the profiles, not the notebooks: the suite needs a
    checkout of the repository."""
    if not NOTEBOOK_DIR.is_dir():
        raise NotebooksNotFound(
            f"the notebook suite needs a checkout of the repository: there is no notebooks folder at "
            f"{NOTEBOOK_DIR} (this clrlib is installed as a package, which ships the library and its "
            "profiles but not the notebooks). Get the suite with `git clone <the clrlib repository> clrlib && "
            "cd clrlib && make run`; the library itself (clrlib.schedules, clrlib.finder, clrlib.train, ...) "
            "works as installed.")
    return NOTEBOOK_DIR


# --- parameters and profiles ---------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _parameters_cached(path: str, mtime: float) -> tuple:
    nb = json.loads(Path(path).read_text())
    cells = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ProfileError(f"{path}: expected one cell tagged 'parameters', found {len(cells)}")
    params = {}
    for node in ast.parse("".join(cells[0]["source"])).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            params[node.targets[0].id] = ast.literal_eval(node.value)
    return tuple(params.items())


def notebook_parameters(notebook: str) -> dict[str, Any]:
    """The names and default values of ``notebook``'s parameters cell, in order."""
    if notebook not in NOTEBOOKS:
        raise ProfileError(f"unknown notebook {notebook!r}; choose from {NOTEBOOKS}")
    path = notebook_dir() / f"{notebook}.ipynb"
    return dict(_parameters_cached(str(path), path.stat().st_mtime))


def _coerce(value, default, where: str):
    """``value`` as the type of ``default`` (numbers written like 5e-4 are numbers), or a ProfileError."""
    def bad(kind):
        return ProfileError(f"{where} must be {kind} (like its default {default!r}), got {value!r}")

    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if isinstance(default, (int, float)):
        if isinstance(value, str):
            try:
                value = float(value) if isinstance(default, float) else int(value)
            except ValueError:
                raise bad("a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad("a number")
        if isinstance(default, int) and value != int(value):
            raise bad("an integer")
        return float(value) if isinstance(default, float) else int(value)
    if isinstance(default, str) and not isinstance(value, str):
        raise bad("a string")
    if isinstance(default, list):
        if not isinstance(value, list):
            raise bad("a list")
        if default and not value:
            raise bad("a non-empty list")
        return value
    return value


def _unique_key_loader(path: Path):
    """A YAML SafeLoader that refuses a key given twice in one mapping (YAML keeps the last),
    naming ``path``, the section and the key."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    where = "at the top level" if node is self._root else f"in section {self._section(node)!r}"
                    raise ProfileError(f"{path}: {where}, {key!r} is given twice (lines {seen[key]} and "
                                       f"{key_node.start_mark.line + 1}); YAML would keep the last silently: "
                                       "keep one")
                seen[key] = key_node.start_mark.line + 1
            return super().construct_mapping(node, deep=deep)

        def get_single_node(self):
            self._root = super().get_single_node()
            return self._root

        def _section(self, node):
            for key_node, value in getattr(self._root, "value", []):
                if value is node:
                    return key_node.value
            return "?"

    return UniqueKeyLoader


def _read_profile(profile: str) -> tuple[Path, dict]:
    """The profile's file and its parsed content (sections), checked for shape."""
    import yaml
    if profile not in PROFILES:
        raise ProfileError(f"unknown profile {profile!r}; choose one of {PROFILES}")
    path = PROFILE_DIR / f"{profile}.yaml"
    try:
        spec = yaml.load(path.read_text(), Loader=_unique_key_loader(path)) or {}
    except yaml.YAMLError as e:
        where = " ".join(str(e).split())  # one line: the parser's message spans several
        raise ProfileError(f"{path}: not valid YAML: {where}") from None
    if not isinstance(spec, dict):
        raise ProfileError(f"{path}: expected sections 'common' and notebook names, got {type(spec).__name__}")
    unknown = set(spec) - {"common", "notebooks", *NOTEBOOKS}
    if unknown:
        raise ProfileError(f"{path}: unknown section(s) {sorted(unknown)}; expected 'common', 'notebooks' "
                           f"or {NOTEBOOKS}")
    listed = spec.get("notebooks", list(NOTEBOOKS))
    if not isinstance(listed, list) or not listed or any(n not in NOTEBOOKS for n in listed):
        raise ProfileError(f"{path}: 'notebooks' must list notebooks of {NOTEBOOKS}, got {listed!r}")
    return path, spec


def profile_notebooks(profile: str) -> tuple[str, ...]:
    """The notebooks ``profile`` runs (its ``notebooks`` list; default all), in :data:`ORDER`."""
    listed = _read_profile(profile)[1].get("notebooks", NOTEBOOKS)
    return tuple(n for n in ORDER if n in listed)


def load_profile(profile: str, notebook: str) -> dict[str, Any]:
    """The settings of ``notebook`` in ``profile``, checked against its parameters' types."""
    path, spec = _read_profile(profile)
    defaults = notebook_parameters(notebook)
    settings: dict[str, Any] = {}
    for section in ("common", notebook):
        values = spec.get(section) or {}
        if not isinstance(values, dict):
            raise ProfileError(f"{path}: section {section!r} must map parameters to values, "
                               f"got {type(values).__name__}")
        for name, value in values.items():
            if name not in defaults:
                raise ProfileError(f"{path}: section {section!r} sets {name!r}, which is not a parameter of "
                                   f"notebook {notebook} (its parameters: {sorted(defaults)})")
            settings[name] = _coerce(value, defaults[name], f"{path}: {section}.{name}")
    settings["profile"] = profile
    return settings


def apply_profile(notebook: str, profile: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """``params`` (default: the notebook's defaults) with ``profile``'s settings applied."""
    base = notebook_parameters(notebook) if params is None else dict(params)
    return {**base, **load_profile(profile, notebook)}


# --- inside a notebook ------------------------------------------------------------------------------

#: Rough seconds per epoch of all 50,000 training images, by device type: (depth, seconds).
#: ResNet-56 on a CUDA GPU (an H100-class one, compiled, bf16), ResNet-20 on a CPU (fp32); an
#: epoch scales with depth and images. Only for the rough projection :func:`start` prints.
EPOCH_SECONDS = {"cuda": (56, 1.0), "cpu": (20, 75.0), "mps": (20, 15.0)}


def projected_seconds(notebook: str, params: dict[str, Any], device) -> float:
    """A rough projection of the time ``notebook``'s plan takes on ``device`` (all its runs trained):
    epochs x a per-device epoch (:data:`EPOCH_SECONDS`) scaled by depth and images."""
    import torch
    depth0, seconds = EPOCH_SECONDS.get(torch.device(device).type, EPOCH_SECONDS["cpu"])
    total = 0.0
    for spec in plan_for(notebook, {**params, "precision": "fp32"}).specs():
        epochs = spec.epochs if isinstance(spec, TrainSpec) else spec.num_it / spec.steps_per_epoch
        total += epochs * seconds * (spec.model.depth / depth0) * (spec.data.n_train / 50_000)
    return total


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def _interactive_data_root(params: dict[str, Any]) -> str | None:
    """The data root of a notebook opened by hand, like ``make run``: its ``data_root``, else
    ``$CLRLIB_DATA``, else the checkout's ``./data`` when it holds CIFAR-10, else the user cache.
    Raises :class:`clrlib.data.DatasetNotFoundError` naming every place looked at when the
    notebook needs CIFAR-10 and none holds it."""
    from .. import data as _data
    if params.get("data_root") is not None or os.environ.get("CLRLIB_DATA"):
        return params.get("data_root")
    checkout = REPO_ROOT / "data"
    if _data.find_cifar10(checkout) is not None:
        return str(checkout)
    if not common_settings(params)["data"].synthetic and _data.find_cifar10(None) is None:
        looked = ", ".join(str(p) for p in (checkout / _data.FOLDER, checkout))
        raise _data.DatasetNotFoundError(
            _data.not_found_message(_data.default_data_root())
            + f"\nAlso looked in the checkout's data folder: {looked} (`make data` unpacks it there).")
    return None


def start(notebook: str, namespace: dict) -> "Experiment":
    """Read ``notebook``'s parameters from its namespace and start its :class:`Experiment`.

    The parameters are the names the notebook's parameters cell assigns. If ``profile`` is
    None (a notebook opened by hand, or run by papermill without ``-p profile``), a profile
    is applied with :func:`apply_profile`: ``$CLRLIB_PROFILE`` if set, else the runner's
    ``--profile auto`` (full on a CUDA GPU, quick otherwise). A parameter whose value differs
    from its parameters cell's default was passed by the user (papermill injects ``-p``/``-y``
    values after the parameters cell) and wins over the profile; a value passed equal to the
    default cannot be told apart from it, so the profile's value is used for it. The result is
    written back into the namespace so that the notebook's variables show what runs, and
    ``$CLRLIB_OUT`` (if set) becomes the results folder's root. The data is then found like
    ``make run`` does (``data_root``, ``$CLRLIB_DATA``, the checkout's ``./data``, the user cache),
    and one line is printed, the notebook's first output: profile, data, device and a rough
    projection of the time its runs take. A CPU asked for the full profile warns first.
    """
    from ..device import resolve_device
    defaults = notebook_parameters(notebook)
    params = {name: namespace[name] for name in defaults}
    device = resolve_device(params.get("device"))  # a ValueError naming it and what is here, if absent
    if params.get("profile") is None:
        import warnings
        profile = os.environ.get("CLRLIB_PROFILE") or ("full" if device.type == "cuda" else "quick")
        passed = {name: value for name, value in params.items()
                  if name != "profile" and not _same(value, defaults[name])}
        params = {**apply_profile(notebook, profile, params), **passed}
        if os.environ.get("CLRLIB_OUT") and params.get("out_dir") is None:
            params["out_dir"] = str(Path(os.environ["CLRLIB_OUT"]) / profile / notebook)
        if "data_root" in params:
            params["data_root"] = _interactive_data_root(params)
        namespace.update(params)
        seconds = projected_seconds(notebook, params, device)
        if profile == "full" and device.type == "cpu":
            warnings.warn(f"{notebook}: the full profile on a CPU: its runs take roughly "
                          f"{seconds / 3600:.0f} hours here; set CLRLIB_PROFILE=quick (or -p profile quick) "
                          "for a run of minutes", stacklevel=2)
        data = common_settings(params)["data"]
        where = "synthetic data" if data.synthetic else f"CIFAR-10 from {params.get('data_root') or 'the default data root'}"
        given = f", {sorted(passed)} as passed" if passed else ""
        print(f"{notebook}: profile {profile}{given}; {where}; device {device}; "
              f"roughly {_duration(seconds)} if every run is trained (a rough projection)")
    return Experiment(notebook, params)


def _same(value, default) -> bool:
    """Whether a parameter's value is its default (1 and 1.0 alike; True and 1 not)."""
    return type(value) is type(default) and value == default or (
        isinstance(value, (int, float)) and isinstance(default, (int, float))
        and not isinstance(value, bool) and not isinstance(default, bool) and value == default)


def executor_from_environment():
    """The executor ``$CLRLIB_EXECUTOR`` names: None (runs one after another here) or a Ray one
    (:func:`clrlib.lab.runs.executor_from_environment`)."""
    try:
        return _runs.executor_from_environment()
    except ValueError as e:
        raise ProfileError(str(e)) from None


class Experiment:
    """One notebook's run: its settings, the specs they give, the runs, figures and summary rows.

    Writes under ``out_dir`` (default ``results/<profile>/<notebook>``): ``params.json``, the
    figures and ``summary_rows.csv``; runs go to the profile's store, ``<out_dir>/../runs``.
    """

    def __init__(self, notebook: str, params: dict[str, Any]) -> None:
        self.notebook, self.params = notebook, dict(params)
        self.profile = params.get("profile") or "full"
        self.out = Path(params.get("out_dir") or REPO_ROOT / "results" / self.profile / notebook)
        self.out.mkdir(parents=True, exist_ok=True)
        p = self.params
        shared = common_settings(p)
        self.model, self.data = shared["model"], shared["data"]
        self.lab = Lab(self.out.parent / "runs", data_root=p.get("data_root"), device=p.get("device"),
                       compile=p.get("compile_model"), progress=bool(p.get("progress", False)),
                       redo=bool(p.get("redo", False)), log=print,
                       **_runs.lab_options_from_environment())  # the runner's executor; render-only
        self.arrays = self.lab.arrays(self.data)
        self.summary: list[dict] = []
        self.comparisons: list[dict] = []
        self.figures: list[dict] = []
        self.info = {"notebook": notebook, "profile": self.profile, "parameters": self.params,
                     "data": self.arrays.source, "data_fingerprint": self.arrays.fingerprint,
                     "synthetic_data": self.data.synthetic, "commit": git_commit(),
                     "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                     **machine_info(self.lab.device)}
        atomic_write_text(self.out / "params.json", json.dumps(jsonable(self.info), indent=2) + "\n")

    @property
    def data_label(self) -> str:
        """"CIFAR-10" or "synthetic CIFAR-shaped data", for titles and tables."""
        return self.arrays.name

    def describe(self) -> str:
        """One line: profile, data, device, model, batch size and where results go."""
        return (f"profile {self.profile}: {self.data_label} ({self.data.n_train} training images), "
                f"{self.model.label}, batch {self.params.get('batch_size', 512)}, device {self.lab.device}, "
                f"results in {self.out}")

    def plan(self) -> Plan:
        """This notebook's plan (:mod:`clrlib.lab.plans`) under its parameters, with the precision
        resolved on this device, so that its specs show what runs (their keys are unchanged)."""
        precision = resolve_precision(self.params.get("precision", "auto"), self.lab.device)
        return plan_for(self.notebook, {**self.params, "precision": precision})

    def get(self, plan: Plan) -> dict[str, list]:
        """Every group of ``plan`` as its runs: histories for training specs, results for range
        tests, from the run store (or trained where missing)."""
        specs = plan.specs()
        missing = [] if self.lab.train else self.lab.missing(specs)
        if missing:  # render-only: name the groups whose numbers are absent, train nothing
            raise MissingRuns.of(missing, self.lab.store).by_group(self.notebook, plan.groups, self.lab.bind,
                                                                  plan.headline)
        fits = [s for s in specs if isinstance(s, TrainSpec)]
        finders = [s for s in specs if isinstance(s, FinderSpec)]
        made = dict(zip(fits, self.fit_many(fits))) if fits else {}
        made.update(zip(finders, self.lr_find_many(finders)) if finders else {})
        return {name: [made[s] for s in group] for name, group in plan.groups.items()}

    def fit_many(self, specs: Sequence[TrainSpec]) -> list[pd.DataFrame]:
        return self.lab.fit_many(specs)

    def lr_find_many(self, specs: Sequence[FinderSpec]):
        return self.lab.lr_find_many(specs)

    def save_figure(self, fig, name: str, caption: str = "", svg: bool = True) -> Path:
        """Save ``fig`` as ``<out>/<name>.png`` (and ``.svg``), labelled if the data is synthetic.

        ``caption`` (what to see in it) goes with the figure into the profile's gallery.
        """
        if self.data.synthetic:
            fig.text(0.99, 0.01, "synthetic data (smoke test), not CIFAR-10", ha="right", va="bottom",
                     fontsize="small", color="red")
        path = self.out / f"{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        if svg:
            fig.savefig(self.out / f"{name}.svg", bbox_inches="tight")
        self.figures = [f for f in self.figures if f["name"] != name] + [{"name": name, "caption": caption}]
        atomic_write_text(self.out / "figures.json", json.dumps(self.figures, indent=2) + "\n")
        return path

    def record(self, experiment: str, metric: str, values: Sequence[float] | float,
               post_value: float | None = None) -> dict:
        """Add a headline number (mean, std and 95% CI over seeds) to the notebook's summary rows."""
        values = list(values) if isinstance(values, (list, tuple)) else [values]
        mean, std, n = analysis.mean_std(values)
        ci = analysis.confidence_interval(values) if n > 1 else math.nan
        row = dict(experiment=self._label(experiment), metric=metric, value=mean, std=std, ci95=ci,
                   n_seeds=n, post_value=post_value)
        self.summary = [r for r in self.summary if (r["experiment"], r["metric"]) != (row["experiment"], metric)]
        self.summary.append(row)
        atomic_write_text(self.out / "summary_rows.csv", self.table().to_csv(index=False))
        return row

    def compare(self, a: str, a_values: Sequence[float], b: str, b_values: Sequence[float],
                metric: str = "final test accuracy (%)", post_difference: float | None = None) -> dict:
        """A comparison the post makes: mean of ``a`` minus mean of ``b``, its 95% CI (Welch's t)
        and a verdict ("real at 95%" / "within noise"), added to the notebook's comparison rows."""
        test = analysis.welch_difference(a_values, b_values)
        row = dict(comparison=self._label(f"{a} vs {b}"), metric=metric, difference=test["difference"],
                   ci95=test["ci95"], n_a=len(a_values), n_b=len(b_values),
                   test="Welch's t, two-sided 95%", verdict=test["verdict"], post_difference=post_difference)
        self.comparisons = [r for r in self.comparisons if r["comparison"] != row["comparison"]] + [row]
        atomic_write_text(self.out / "comparison_rows.csv",
                          pd.DataFrame(self.comparisons, columns=COMPARISON_COLUMNS).to_csv(index=False))
        return row

    def conclude(self, claims: Mapping[str, Any] | None = None):
        """The notebook's closing cell: what this run found, as Markdown made from its numbers.

        ``claims`` maps a claim of the post to the finding measured here (a
        :class:`~clrlib.lab.findings.Finding` or a sentence computed from the runs); then come
        the summary rows that have a post value beside them and the comparisons, with where their
        direction disagrees with the post's. Written to ``<out>/findings.md`` (the gallery shows
        it) and returned as an ``IPython.display.Markdown`` (plain text without IPython).
        """
        from .findings import closing_lines
        lines = [f"### What this run found ({self.describe_setting()})", ""]
        lines += [f"- The post: {claim}. Here: {finding}." for claim, finding in (claims or {}).items()]
        lines += closing_lines(self.table(), self.comparisons_table())
        text = "\n".join(lines) + "\n"
        atomic_write_text(self.out / "findings.md", text)
        try:
            from IPython.display import Markdown
        except ImportError:
            return text
        return Markdown(text)

    def describe_setting(self) -> str:
        """Profile, data, model and device in a few words, for the closing cell."""
        return (f"profile {self.profile}: {self.model.label}, {self.data_label}, {self.data.n_train} "
                f"training images, device {self.lab.device.type}")

    def _label(self, text: str) -> str:
        return f"{text} [synthetic data]" if self.data.synthetic else text

    def table(self) -> pd.DataFrame:
        """This notebook's summary rows so far (and its comparisons, in ``comparisons_table()``)."""
        return pd.DataFrame(self.summary, columns=SUMMARY_COLUMNS)

    def comparisons_table(self) -> pd.DataFrame:
        return pd.DataFrame(self.comparisons, columns=COMPARISON_COLUMNS)


def _markdown(table: pd.DataFrame) -> list[str]:
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    for row in table.itertuples(index=False):
        cells = ["" if (isinstance(v, float) and math.isnan(v)) else (f"{v:.4g}" if isinstance(v, float) else str(v))
                 for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _gather(base: Path, filename: str, columns: list[str]) -> pd.DataFrame:
    frames = [pd.read_csv(p) for n in NOTEBOOKS if (p := base / n / filename).exists()]
    frames = [f for f in frames if len(f)]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    return table[columns]


def write_summary(base: Path) -> pd.DataFrame:
    """Gather the notebooks' rows under ``base`` into ``summary.csv``, ``comparisons.csv``,
    ``summary.md`` and the gallery ``README.md`` (tables, then every figure with its caption)."""
    table = _gather(base, "summary_rows.csv", SUMMARY_COLUMNS)
    comparisons = _gather(base, "comparison_rows.csv", COMPARISON_COLUMNS)
    atomic_write_text(base / "summary.csv", table.to_csv(index=False))
    atomic_write_text(base / "comparisons.csv", comparisons.to_csv(index=False))
    legend = ("value = mean over seeds, std = their standard deviation (empty for one seed), ci95 = "
              "half-width of the 95% confidence interval of the mean (Student's t); post_value = the "
              "post's (or its notebook's) number where it gives one.")
    tables = (["## Headline numbers", "", legend, ""] + _markdown(table)
              + ["", "## Comparisons the post makes", "",
                 "difference = mean of the first minus mean of the second; ci95 = half-width of its 95% "
                 "confidence interval (Welch's t-test, two-sided); n_a, n_b = seeds on each side.", ""]
              + _markdown(comparisons))
    atomic_write_text(base / "summary.md", f"# Summary: {base.name} profile\n\n" + "\n".join(tables) + "\n")
    atomic_write_text(base / "README.md", _gallery(base, tables))
    return table


def _gallery(base: Path, tables: list[str]) -> str:
    """The profile's results as one page: the tables, then each notebook's figures with captions."""
    lines = [f"# Results: {base.name} profile", "",
             "Written by the runner (`python -m clrlib run`) from the runs in `runs/`; each notebook's "
             "settings, commit, device and date are in `<notebook>/params.json`.", ""] + tables
    for name in NOTEBOOKS:
        path = base / name / "figures.json"
        if not path.exists():
            continue
        lines += ["", f"## {name}", "", f"Executed notebook: [{name}.ipynb]({name}.ipynb)", ""]
        for fig in json.loads(path.read_text()):
            lines += [f"**{fig['name']}**: {fig['caption']}", "", f"![{fig['name']}]({name}/{fig['name']}.png)", ""]
        if (findings := base / name / "findings.md").exists():
            lines += [findings.read_text().replace("### ", "#### ", 1)]
    return "\n".join(lines) + "\n"

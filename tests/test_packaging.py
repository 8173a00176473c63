"""The packaging files agree with each other: pyproject.toml and environment.yml list the
same packages, and CI runs the test command that the README shows."""
from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = {"torch", "torchvision", "jupyter", "matplotlib", "pandas", "papermill", "nbval",
            "pytest", "tqdm"}
# conda-forge names that differ from the PyPI ones
CONDA_TO_PYPI = {"pytorch": "torch"}
# entries of environment.yml that are not dependencies of the package
NOT_DEPENDENCIES = {"python", "pip"}
TEST_COMMAND = "make test"


def normalize(name: str) -> str:
    """PEP 503 normalisation: lower case, runs of '-', '_' and '.' become one '-'."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(spec: str) -> str:
    """The distribution name at the start of a PEP 508 or conda match spec."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", spec)
    assert match, f"cannot read a package name from {spec!r}"
    return normalize(match.group(1))


def pyproject() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def pyproject_packages() -> set[str]:
    project = pyproject()["project"]
    specs = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        specs.extend(extra)
    self_name = normalize(project["name"])
    return {name for name in map(requirement_name, specs) if name != self_name}


def environment_packages() -> set[str]:
    with open(ROOT / "environment.yml") as f:
        env = yaml.safe_load(f)
    names = set()
    for entry in env["dependencies"]:
        if isinstance(entry, dict):  # the pip section
            for spec in entry.get("pip", []):
                if spec.startswith("-e") or spec.strip() in (".", "./"):
                    continue  # the editable install of the project itself
                names.add(requirement_name(spec))
        else:
            names.add(requirement_name(entry))
    names = {CONDA_TO_PYPI.get(name, name) for name in names}
    return names - NOT_DEPENDENCIES


def test_environment_lists_the_same_packages_as_pyproject():
    in_pyproject, in_env = pyproject_packages(), environment_packages()
    assert in_pyproject == in_env, (
        f"only in pyproject.toml: {sorted(in_pyproject - in_env)}; "
        f"only in environment.yml: {sorted(in_env - in_pyproject)}")


@pytest.mark.parametrize("source", [pyproject_packages, environment_packages],
                         ids=["pyproject.toml", "environment.yml"])
def test_required_packages_are_listed(source):
    missing = REQUIRED - source()
    assert not missing, f"missing from {source.__name__}: {sorted(missing)}"


def test_environment_uses_conda_forge_and_installs_the_project():
    with open(ROOT / "environment.yml") as f:
        env = yaml.safe_load(f)
    assert "conda-forge" in env["channels"]
    pip_sections = [e["pip"] for e in env["dependencies"] if isinstance(e, dict) and "pip" in e]
    assert any(spec.startswith("-e") for section in pip_sections for spec in section)


def test_package_data_includes_the_profiles():
    data = pyproject()["tool"]["setuptools"]["package-data"]
    assert "profiles/*.yaml" in data["clrlib.lab"]


def ci_commands() -> list[str]:
    """The commands of .ci/run, leaving out the shebang, comments, `set` and `cd`."""
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    return [line.strip() for line in lines
            if line.strip() and not line.lstrip().startswith("#")
            and not re.match(r"(set|cd)\s", line.strip())]


def readme_code_lines() -> set[str]:
    """Every line inside the README's fenced code blocks, without a trailing `# comment`."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M)
    return {re.sub(r"\s+#.*$", "", line).strip() for block in blocks for line in block.splitlines()}


def test_ci_runs_the_readme_test_command():
    assert ci_commands() == [TEST_COMMAND]
    assert TEST_COMMAND in readme_code_lines()


def test_ci_script_is_executable():
    mode = os.stat(ROOT / ".ci" / "run").st_mode
    assert mode & stat.S_IXUSR, ".ci/run must be executable"


# --- a non-editable install: what the wheel ships, and what the suite says without a checkout ----

#: The phrase the runner prints when the notebooks folder is absent (an installed wheel has no
#: notebooks: the suite needs a checkout).
NEEDS_CHECKOUT = "needs a checkout of the repository"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built offline (no build isolation, no dependencies) from a copy of the sources, so
    that the checkout gets no build/ or egg-info of it."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "clrlib", src / "clrlib", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                            "--no-index", "-q", "-w", str(tmp / "dist"), str(src)],
                           capture_output=True, text=True, timeout=600)
    if built.returncode and "No module named" in built.stderr:
        pytest.skip(f"cannot build a wheel without build isolation here: {built.stderr.strip()[-300:]}")
    assert built.returncode == 0, built.stderr
    [path] = (tmp / "dist").glob("clrlib-*.whl")
    return path


def test_the_wheel_ships_every_module_and_the_profiles(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    profiles = {f"clrlib/lab/profiles/{p.name}" for p in (ROOT / "clrlib" / "lab" / "profiles").glob("*.yaml")}
    assert profiles and profiles <= names, f"missing from the wheel: {sorted(profiles - names)}"
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "clrlib").rglob("*.py")}
    assert modules <= names, f"missing from the wheel: {sorted(modules - names)}"
    assert not [n for n in names if n.endswith(".ipynb")], "the wheel is not meant to ship the notebooks"


def installed(wheel: Path, tmp_path: Path) -> dict:
    """The wheel unpacked into a folder of its own, as pip would install it, and an environment
    that imports clrlib from there (not from this checkout), run from a folder outside it."""
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLRLIB_")}
    env.update(PYTHONPATH=str(site), MPLBACKEND="Agg", PYTHONSAFEPATH="1")
    return env


def test_the_installed_package_imports_from_outside_the_checkout_and_reads_its_profiles(wheel, tmp_path):
    env = installed(wheel, tmp_path)
    code = ("import clrlib, clrlib.lab.suite as s; print(clrlib.__file__); "
            "print(sorted(p.stem for p in s.PROFILE_DIR.glob('*.yaml')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    where, profiles = out.stdout.splitlines()[-2:]
    assert where.startswith(str(tmp_path / "site")), f"clrlib was imported from {where}, not from the wheel"
    assert all(p in profiles for p in ("smoke", "quick", "full", "cpu")), profiles


def test_the_installed_runner_says_the_suite_needs_a_checkout(wheel, tmp_path):
    env = installed(wheel, tmp_path)
    out = subprocess.run([sys.executable, "-m", "clrlib", "run", "01", "--profile", "smoke", "--out",
                          str(tmp_path / "results")], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600)
    said = out.stdout + out.stderr
    assert out.returncode == 2, said
    assert "Traceback" not in said, said
    assert NEEDS_CHECKOUT in said and "git clone" in said and "make run" in said, said
    assert "notebooks" in said and str(tmp_path / "site") in said, f"it must name where it looked: {said}"
    assert not (tmp_path / "results").exists(), "nothing is written before the check"
    listed = subprocess.run([sys.executable, "-m", "clrlib", "list"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=600)
    assert listed.returncode == 0 and NEEDS_CHECKOUT in listed.stdout, listed.stdout + listed.stderr

"""The packaging files agree with each other: pyproject.toml and environment.yml list the
same packages, and CI runs the test command that the README shows."""
from __future__ import annotations

import os
import re
import stat
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

"""No import cycles through the finder, the schedules, the plots or the batch helpers.

The graph is read from the source (every ``import`` anywhere in a module, including those inside
functions, which close a cycle just as well at call time; ``if TYPE_CHECKING:`` blocks excepted),
so the test needs no import to succeed and sees lazy imports that ``sys.modules`` would miss.
Only cycles through the modules listed in :data:`CHECKED` are asserted: the rest of the package
is checked by its owners."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "clrlib"
CHECKED = ("clrlib.finder", "clrlib.plots", "clrlib.schedules", "clrlib.batches")


def _modules() -> dict[str, Path]:
    """Module name -> file, for every module and package of clrlib."""
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The clrlib modules that module ``name`` imports, anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    stack = [ast.parse(path.read_text())]
    while stack:
        node = stack.pop()
        if _type_checking(node):
            continue
        stack.extend(ast.iter_child_nodes(node))
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.add(sub if sub in modules else base)
    return {m for m in out if m in modules and m != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _path_back(graph: dict[str, set[str]], start: str) -> list[str] | None:
    """A chain of imports from ``start`` back to itself, or None."""
    seen, stack = set(), [(dep, [start, dep]) for dep in sorted(graph[start])]
    while stack:
        node, path = stack.pop()
        if node == start:
            return path
        if node in seen:
            continue
        seen.add(node)
        stack.extend((dep, path + [dep]) for dep in sorted(graph.get(node, ())))
    return None


def test_the_graph_is_read():
    graph = _graph()
    assert set(CHECKED) <= set(graph)
    assert "clrlib.batches" in graph["clrlib.finder"] and "clrlib.train" in graph["clrlib.finder"]
    assert "clrlib.plots" in graph["clrlib.finder"]  # FinderResult.plot's lazy import is seen


@pytest.mark.parametrize("module", CHECKED)
def test_no_import_comes_back(module):
    cycle = _path_back(_graph(), module)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_plots_do_not_import_the_finder():
    assert "clrlib.finder" not in _graph()["clrlib.plots"]


def test_the_cycle_finder_sees_a_cycle():
    assert _path_back({"a": {"b"}, "b": {"c"}, "c": {"a"}}, "a") == ["a", "b", "c", "a"]
    assert _path_back({"a": {"b"}, "b": set()}, "a") is None

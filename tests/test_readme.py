"""Every code block of README.md is under test.

``python`` blocks are executed, at the size they are written (CPU, no internet, no CIFAR-10):
the blocks of one ``## `` section run in order in one namespace, as a reader pasting them into
one session would, so a later block may use names an earlier one of its section defines. The
only change made to a block is listed in :data:`SUBSTITUTIONS`, with the reason. A value the
README states for an expression, as a comment that starts with a Python literal on the
expression's last line or on the line right after it (``one_cycle_cosine(30, ...)   # (1.0,
0.85)``), is compared with the value the expression has; comments that start with words are
prose and are not checked. A warning raised against a README line fails the test.

``bash`` blocks are parsed with ``bash -n`` and each command is checked against what it names:
``make`` targets and variables against the Makefile (and ``make -n``), ``python -m clrlib``
verbs, options and notebook names against the command line's own help, ``python -c`` code
against the functions it calls, ``papermill`` parameters against the notebook's parameters
cell. A command the test does not know fails it, so a new block cannot go unchecked.
"""
from __future__ import annotations

import ast
import contextlib
import inspect
import io
import math
import re
import shlex
import shutil
import subprocess
import tokenize
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
README_MODULE = "__readme__"  # the blocks' __name__: warnings blamed on their lines carry it


def cifar10_stand_in():
    """What ``load_cifar10("data")`` returns, in shapes and dtypes, without the data: 50,000 and
    10,000 uint8 images (all zero) and int64 labels 0..9, each class 5,000 and 1,000 times."""
    return (torch.zeros(50_000, 3, 32, 32, dtype=torch.uint8), torch.arange(50_000) % 10,
            torch.zeros(10_000, 3, 32, 32, dtype=torch.uint8), torch.arange(10_000) % 10)


#: The changes made to the README's python blocks before they run: {text in the README:
#: (replacement, why)}. Each text must occur exactly once in the README's python blocks, and the
#: block it is in says so in a comment.
SUBSTITUTIONS = {
    'load_cifar10("data")': (
        "cifar10_stand_in()",
        "the Data block reads the real CIFAR-10 from ./data, which CI does not have; the stand-in has "
        "its shapes and dtypes, so the block's batch counts (97, 98) are computed as they would be"),
}


# --- the README's blocks -------------------------------------------------------------------------

@dataclass
class Block:
    language: str
    code: str
    line: int      # README line of the block's first line of code
    section: str   # the "## " heading it is under
    heading: str   # the nearest heading of any level

    def __str__(self) -> str:
        return f"README.md line {self.line} ({self.heading})"


def readme_blocks() -> list[Block]:
    blocks, section, heading = [], "", ""
    lines = README.read_text().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
            if re.match(r"##\s", line):
                section = heading
        elif line.startswith("```"):
            language, start = line[3:].strip(), i + 2
            i += 1
            body = []
            while not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            blocks.append(Block(language, "\n".join(body) + "\n", start, section, heading))
        i += 1
    return blocks


BLOCKS = readme_blocks()
PYTHON_SECTIONS = list(dict.fromkeys(b.section for b in BLOCKS if b.language == "python"))


def test_every_block_has_a_known_language():
    """python blocks run, bash blocks are checked; blocks without a language are listings
    (folder trees), which must not hold commands."""
    for block in BLOCKS:
        assert block.language in ("python", "bash", ""), f"{block}: unknown language {block.language!r}"
        if block.language == "":
            assert not re.search(r"^\s*(\.venv/bin/|python |make |\$ )", block.code, re.M), (
                f"{block}: a listing that holds a command; mark it ```bash so that it is checked")


def test_the_readme_has_blocks_to_test():
    languages = [b.language for b in BLOCKS]
    assert languages.count("python") >= 8 and languages.count("bash") >= 4


# --- stated values -------------------------------------------------------------------------------

def leading_literal(text: str) -> str:
    """The start of a comment up to where a Python literal would end: a bracketed group, or a
    token ending at white space or at one of , ; : outside brackets and quotes."""
    text = text.strip()
    depth, quote = 0, None
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth == 0 and text[0] in "([{":
                return text[:i + 1]
        elif depth == 0 and (ch.isspace() or ch in ",;:"):
            return text[:i]
    return text


def stated_value(comment: str):
    """(True, value) if the comment starts with a Python literal, else (False, None)."""
    try:
        return True, ast.literal_eval(leading_literal(comment.lstrip("#")))
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return False, None


def same(value, stated) -> bool:
    """``value`` equals the stated literal: floats to 1e-9 relative, sequences item by item
    (a list must be a list and a tuple a tuple), everything else by ==."""
    if isinstance(stated, bool) or stated is None or isinstance(stated, str):
        return type(value) is type(stated) and value == stated
    if isinstance(stated, (int, float)):
        if isinstance(value, bool):
            return False
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        try:
            value = float(value)
        except (TypeError, ValueError):
            return False
        return math.isclose(value, stated, rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(stated, (list, tuple)):
        return (isinstance(value, (list, tuple)) and isinstance(value, tuple) == isinstance(stated, tuple)
                and len(value) == len(stated) and all(same(v, s) for v, s in zip(value, stated)))
    return value == stated


def comments_by_line(code: str) -> dict[int, tuple[str, bool]]:
    """{line: (comment, whether the line holds only the comment)}, lines counted from 1."""
    out = {}
    lines = code.splitlines()
    for tok in tokenize.generate_tokens(io.StringIO(code).readline):
        if tok.type == tokenize.COMMENT:
            row = tok.start[0]
            out[row] = (tok.string, lines[row - 1].strip().startswith("#"))
    return out


def claims(code: str) -> dict[int, str]:
    """{index of a top-level expression statement: the comment that states its value}."""
    tree = ast.parse(code)
    comments = comments_by_line(code)
    found = {}
    for i, node in enumerate(tree.body):
        if not isinstance(node, ast.Expr):
            continue
        after = comments.get(node.end_lineno)
        if after is None or after[1]:  # no comment on its last line: one on the line after it
            after = comments.get(node.end_lineno + 1)
            after = after if after and after[1] else None
        if after is not None and stated_value(after[0])[0]:
            found[i] = after[0]
    return found


def test_stated_values_are_read_as_meant():
    assert leading_literal("# (0.08, 0.95): step 0 applied".lstrip("#")) == "(0.08, 0.95)"
    assert stated_value("# [0.1, 0.55, 1.0]; also mode=") == (True, [0.1, 0.55, 1.0])
    assert stated_value("# 97 batches: the last") == (True, 97)
    assert stated_value("# (True, 'synthetic CIFAR-shaped data')") == (True, (True, "synthetic CIFAR-shaped data"))
    assert stated_value("# where the 4x rule stopped")[0] is False
    assert stated_value("# also 20, 32, 44, ...")[0] is False
    assert same((0.08, 0.95), (0.08, 0.95)) and same(0.8000000000000002, 0.8) and not same([1], (1,))
    assert not same(True, 1) and not same(0.81, 0.8)
    code = "x = 1\nx + 1   # 2\n[x]\n# [1], and prose\nx  # prose\n"
    assert claims(code) == {1: "# 2", 2: "# [1], and prose"}


# --- running the python blocks -------------------------------------------------------------------

def substituted(block: Block) -> str:
    code = block.code
    for old, (new, _why) in SUBSTITUTIONS.items():
        code = code.replace(old, new)
    return code


def test_each_substitution_is_used_once_and_said_in_its_block():
    python = [b for b in BLOCKS if b.language == "python"]
    for old in SUBSTITUTIONS:
        hits = [b for b in python if old in b.code]
        assert sum(b.code.count(old) for b in hits) == 1, f"{old!r} must occur once in the README's python blocks"
        assert "tests/test_readme.py" in hits[0].code, (
            f"{hits[0]}: the block that {old!r} is replaced in must say so in a comment")


def run_block(block: Block, namespace: dict) -> int:
    """Execute one block statement by statement; check its stated values; return how many."""
    code = substituted(block)
    tree = ast.parse(code)
    stated = claims(code)
    ast.increment_lineno(tree, block.line - 1)
    checked = 0
    for i, node in enumerate(tree.body):
        where = f"{block}, line {node.lineno}"
        if isinstance(node, ast.Expr):
            value = eval(compile(ast.Expression(node.value), str(README), "eval"), namespace)
            if i in stated:
                ok, expected = stated_value(stated[i])
                assert same(value, expected), (
                    f"{where}: the README says {leading_literal(stated[i].lstrip('#'))}, the code gives {value!r}")
                checked += 1
        else:
            exec(compile(ast.Module([node], type_ignores=[]), str(README), "exec"), namespace)
    return checked


@pytest.mark.parametrize("section", PYTHON_SECTIONS)
def test_python_blocks_run_and_give_the_stated_values(section, tmp_path, monkeypatch):
    """The section's blocks in order, in one namespace, in an empty folder (where they write
    runs/, finder.png, cycle.png). A warning raised against a line of the README (a range test
    too short to read, say) fails the test: an example must not teach a misuse."""
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": README_MODULE, "cifar10_stand_in": cifar10_stand_in}
    checked = 0
    with warnings.catch_warnings():
        warnings.filterwarnings("error", module=README_MODULE)
        for block in (b for b in BLOCKS if b.language == "python" and b.section == section):
            checked += run_block(block, namespace)
    if section == "The library":
        assert checked >= 10, f"only {checked} stated values checked in {section!r}"


# --- checking the bash blocks --------------------------------------------------------------------

def _open_quote(text: str) -> bool:
    """Whether ``text`` ends inside a quoted string, as bash reads it (a # at the start of a word,
    outside quotes, comments out the rest of its line)."""
    quote, i = None, 0
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == quote:
                quote = None
            elif ch == "\\" and quote == '"':
                i += 1
        elif ch in "'\"":
            quote = ch
        elif ch == "\\":
            i += 1
        elif ch == "#" and (i == 0 or text[i - 1].isspace()):
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
            continue
        i += 1
    return quote is not None


def logical_lines(code: str) -> list[str]:
    """A bash block's commands, one string each: backslash continuations joined, and a quoted
    string that spans lines (``python -c '...'``) kept whole."""
    out, current = [], ""
    for line in code.splitlines():
        current = f"{current}\n{line}" if current else line
        if current.endswith("\\"):
            current = current[:-1] + " "
        elif not _open_quote(current):
            out.append(current)
            current = ""
    assert not current, f"a quote is never closed in {current!r}"
    return [line for line in out if line.strip()]


def commands(code: str) -> list[list[str]]:
    """Each command of a bash block as argv (comments dropped; split at ; && || | &).
    ``export`` lines are kept whole, as ["export", line]: their values may hold ``$(...)``."""
    out = []
    for line in logical_lines(code):
        if line.lstrip().startswith("export "):
            out.append(["export", line.strip()])
            continue
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        argv = []
        for token in lexer:
            if token in (";", "&&", "||", "|", "&"):
                out.append(argv)
                argv = []
            else:
                argv.append(token)
        out.append(argv)
    return [argv for argv in out if argv]


def makefile_targets_and_variables() -> tuple[set[str], set[str]]:
    text = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([A-Za-z][\w.-]*)\s*:(?!=)", text, re.M))
    variables = set(re.findall(r"^([A-Z_][A-Z0-9_]*)\s*[?:+]?=", text, re.M))
    variables |= set(re.findall(r"\$\(([A-Z_][A-Z0-9_]*)\)", text))
    return targets, variables


def check_make(argv: list[str], where: str) -> None:
    targets, variables = makefile_targets_and_variables()
    assignments = [a for a in argv[1:] if "=" in a]
    goals = [a for a in argv[1:] if "=" not in a and not a.startswith("-")]
    for goal in goals:
        assert goal in targets, f"{where}: `make {goal}`: the Makefile has no target {goal!r} ({sorted(targets)})"
    for a in assignments:
        name = a.split("=", 1)[0]
        assert name in variables, f"{where}: `make ... {a}`: the Makefile does not use a variable {name}"
    if shutil.which("make"):
        dry = subprocess.run(["make", "-n", "-C", str(ROOT), *argv[1:]], capture_output=True, text=True,
                             timeout=60)
        assert dry.returncode == 0, f"{where}: `make -n {' '.join(argv[1:])}` failed: {dry.stderr}"


_HELP: dict[str, str] = {}


def clrlib_help(verb: str) -> str:
    """``python -m clrlib VERB --help``, asked in this process."""
    if verb not in _HELP:
        from clrlib.lab import cli
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as e:
            cli.main([verb, "--help"])
        assert e.value.code == 0, f"python -m clrlib {verb} --help exited {e.value.code}"
        _HELP[verb] = out.getvalue()
    return _HELP[verb]


def options_of(help_text: str) -> dict[str, set[str] | bool]:
    """{--option: its choices (a set), True for any value, False for a flag} from argparse's help."""
    out: dict = {}
    for name, value in re.findall(r"(--[\w-]+)(?:[ =](\{[^}]*\}|[A-Z][A-Z_]*))?", help_text):
        if value.startswith("{"):
            out[name] = set(value[1:-1].split(","))
        else:
            out.setdefault(name, bool(value))
            out[name] = out[name] or bool(value)
    return out


def check_clrlib(args: list[str], where: str) -> None:
    from clrlib.lab.cli import resolve_names
    verb, rest = args[0], args[1:]
    options = options_of(clrlib_help(verb))
    positional = []
    i = 0
    while i < len(rest):
        arg = rest[i]
        if arg.startswith("--"):
            name, _, inline = arg.partition("=")
            assert name in options, f"{where}: `clrlib {verb}` has no option {name} (it has {sorted(options)})"
            kind = options[name]
            if kind is not False:
                value = inline or rest[i + 1]
                i += 0 if inline else 1
                if isinstance(kind, set):
                    assert value in kind, f"{where}: {name} {value}: not one of {sorted(kind)}"
        else:
            positional.append(arg)
        i += 1
    if verb == "run" and positional:
        resolve_names(positional)  # raises for a name that matches no notebook


def check_python_c(code: str, where: str) -> None:
    """The code compiles (it is not run: it may need data or a GPU), every name it imports from
    clrlib exists, and each call of a clrlib function (``clrlib.f(...)`` or an imported ``f(...)``)
    binds to its signature: the number of arguments and the keywords' names."""
    import importlib

    import clrlib
    tree = ast.parse(code)
    functions = {}  # name in the code -> clrlib function
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "clrlib":
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), f"{where}: {node.module} has no {alias.name}"
                functions[alias.asname or alias.name] = getattr(module, alias.name)
    calls = 0
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        fn = None
        if isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name) \
                and node.func.value.id == "clrlib":
            assert hasattr(clrlib, node.func.attr), f"{where}: clrlib has no {node.func.attr}"
            fn = getattr(clrlib, node.func.attr)
        elif isinstance(node.func, ast.Name) and callable(functions.get(node.func.id)):
            fn = functions[node.func.id]
        if fn is None or any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
            continue
        try:
            inspect.signature(fn).bind(*[None] * len(node.args), **{k.arg: None for k in node.keywords})
        except TypeError as e:
            raise AssertionError(f"{where}: {ast.unparse(node)[:80]}: {e}") from None
        calls += 1
    assert calls or functions, f"{where}: python -c {code!r} uses nothing of clrlib's that the test can check"


def check_papermill(args: list[str], where: str) -> None:
    from clrlib.lab.suite import notebook_parameters
    notebook = Path(args[0])
    assert (ROOT / notebook).is_file(), f"{where}: no notebook {notebook}"
    names = [args[i + 1] for i, a in enumerate(args) if a in ("-p", "--parameters")]
    known = notebook_parameters(notebook.stem)
    for name in names:
        assert name in known, f"{where}: {notebook.name} has no parameter {name!r} (it has {sorted(known)})"
    for i, a in enumerate(args):
        if a == "--cwd":
            assert (ROOT / args[i + 1]).is_dir(), f"{where}: --cwd {args[i + 1]} is not a folder"


def check_command(argv: list[str], where: str) -> str:
    """Check one command; returns what kind it was."""
    program = Path(argv[0]).name
    if argv[0].startswith(".venv/bin/"):
        assert program in ("python", "papermill", "jupyter"), f"{where}: {argv[0]} is not installed by make setup"
    if program == "make":
        check_make(argv, where)
        return "make"
    if program == "python":
        if argv[1:3] == ["-m", "clrlib"]:
            check_clrlib(argv[3:], where)
            return "clrlib"
        if argv[1] == "-c":
            check_python_c(argv[2], where)
            return "python -c"
        if argv[1].endswith(".py"):
            assert (ROOT / argv[1]).is_file(), f"{where}: no script {argv[1]}"
            return "python script"
    if program == "export":  # only variables that clrlib (or the Makefile) reads
        sources = "".join(p.read_text() for p in (ROOT / "clrlib").rglob("*.py")) + (ROOT / "Makefile").read_text()
        names = re.findall(r"\bexport\s+([A-Za-z_]\w*)=", argv[1])
        assert names, f"{where}: {argv[1]!r} sets nothing"
        for name in names:
            assert name in sources, f"{where}: nothing in clrlib reads {name}"
        return "export"
    if program in SHELL_TOOLS:  # standard tools, not the project's: their use is not checked
        return "shell"
    if program == "papermill":
        check_papermill(argv[1:], where)
        return "papermill"
    if program == "ray":  # Ray's own command line, from the ray extra
        import tomllib
        extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
        assert "ray" in extras.get("ray", []), f"{where}: `ray` is used but pyproject.toml has no ray extra"
        assert argv[1] in ("start", "stop", "status"), f"{where}: ray {argv[1]}?"
        return "ray"
    pytest.fail(f"{where}: the test does not know the command {' '.join(argv)!r}; teach tests/test_readme.py "
                "how to check it")


#: Standard commands a README block may use around the project's own; not checked further.
SHELL_TOOLS = {"tar", "cp", "scp", "rsync", "mkdir", "cd", "ls", "rm", "git", "echo"}

BASH_BLOCKS = [b for b in BLOCKS if b.language == "bash"]


@pytest.mark.parametrize("block", BASH_BLOCKS, ids=[f"line{b.line}" for b in BASH_BLOCKS])
def test_bash_blocks_parse_and_name_real_commands(block):
    if shutil.which("bash"):
        parsed = subprocess.run(["bash", "-n"], input=block.code, capture_output=True, text=True)
        assert parsed.returncode == 0, f"{block}: bash -n: {parsed.stderr}"
    argvs = commands(block.code)
    assert argvs, f"{block}: no command"
    for argv in argvs:
        check_command(argv, str(block))


def test_the_command_checks_catch_mistakes():
    with pytest.raises(AssertionError, match="no target"):
        check_make(["make", "runn"], "here")
    with pytest.raises(AssertionError, match="no option"):
        check_clrlib(["run", "--profil", "quick"], "here")
    with pytest.raises(AssertionError, match="not one of"):
        check_clrlib(["run", "--profile", "huge"], "here")
    with pytest.raises(AssertionError, match="downloads"):
        check_python_c("import clrlib; clrlib.load_cifar10('data', downloads=True)", "here")
    with pytest.raises(AssertionError, match="has no"):
        check_python_c("from clrlib import fitt", "here")
    with pytest.raises(AssertionError, match="nothing in clrlib reads"):
        check_command(["export", "export CLRLIB_NOTHING=1"], "here")
    code = "make a  # it's a comment\npython -c '\nprint(1)  # here\n'\nmake b \\\n  X=1\n"
    assert commands(code) == [["make", "a"], ["python", "-c", "\nprint(1)  # here\n"], ["make", "b", "X=1"]]

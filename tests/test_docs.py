"""Every ``python`` code block in README.md and docs/ runs, and prints what it says it prints.

Blocks of one file run in order in one namespace (a page reads as one
session). A block whose fence line is ```` ```{.python .skip-test} ```` is shown (the
fence syntax pymdownx.superfences renders) but not run (for commands needing
several processes, for example).

What a block shows as output is checked against what it prints, so a value in
the docs cannot go stale:

- a comment after a ``print(...)`` call, on its last line (with the comment
  lines right after it, when it wraps), is that call's output, every time it
  runs;
- comment lines right after a statement that printed something are that
  statement's output, line by line, or the whole output wrapped over them.

Either may go on with prose after ``": "``, ``"; "`` or ``" ("`` (``# tensor(4.): the
square of 2``), ``...`` stands for any text, as in doctest, and a number written
with fewer decimals than Python prints is compared at that rounding (``0.1867``
for ``-0.18672...``). A prose comment that is no output goes on the line above.

The docstring examples of the package run as doctests (``--doctest-modules`` in
pyproject.toml); the tests at the end check that every public name has one and
that the API reference documents it.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import inspect
import io
import math
import re
import warnings
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```(?:python|\{\.python)([^\n]*)\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
SHOWN = "__shown__"  # the name a checked print() is rewritten to


def code_blocks(page: Path) -> list[str]:
    return [
        body
        for options, body in FENCE.findall(page.read_text(encoding="utf-8"))
        if "skip-test" not in options
    ]


# -- comparing what a block prints with what its comments show ------------------------------

_TOKEN = re.compile(r"\.\.\.|-?\d+\.\d+(?:e[-+]?\d+)?")
_PROSE = re.compile(r":\s|;\s|\s\(")  # where prose may follow the output in a comment


def _decimals(number: str) -> int:
    return len(number.split(".")[1].split("e")[0])


def _head_matches(output: str, head: str) -> bool:
    parts, shown, start = [], [], 0
    for token in _TOKEN.finditer(head):
        parts.append(re.escape(head[start : token.start()]))
        if token.group() == "...":
            parts.append(".*?")
        else:
            parts.append(r"(-?\d+\.\d+(?:e[-+]?\d+)?)")
            shown.append(token.group())
        start = token.end()
    parts.append(re.escape(head[start:]))
    found = re.fullmatch("".join(parts), output, re.DOTALL)
    if found is None:
        return False
    for written, printed in zip(shown, found.groups(), strict=True):
        if written == printed:
            continue
        places = _decimals(written)
        # a rounded copy of a longer number: equal at the places written (0 places: exact only)
        if not places or _decimals(printed) <= places:
            return False
        # (half a unit in the last place written, plus the float error of parsing both)
        if abs(float(printed) - float(written)) > 0.5 * 10.0**-places + 4 * math.ulp(
            float(printed)
        ):
            return False
    return True


def shows(output: str, comment: str) -> bool:
    """Whether ``comment`` shows ``output``, possibly followed by prose."""
    output, comment = " ".join(output.split()), " ".join(comment.split())
    heads = [comment] + [comment[: cut.start()] for cut in _PROSE.finditer(comment)]
    return any(_head_matches(output, head) for head in heads)


def test_shows_the_output_then_prose() -> None:
    assert shows("{'MSE': tensor(5.)}", "{'MSE': tensor(5.)}")
    assert shows("tensor(4.)", "tensor(4.): the square of the mean error 2")
    assert shows("0", "0; 2 under torchrun")
    assert shows("2 -0.18672345 4", "2 -0.1867 4: stopped after epoch 4")
    assert shows("tensor(2.5000, grad_fn=<DivBackward0>)", "tensor(2.5000, ...)")
    assert shows("a\n  b", "a b")
    assert not shows("tensor(4)", "tensor(4.)")
    assert not shows("tensor(5.3000)", "tensor(5.)")
    assert not shows("-0.1877", "-0.1867")
    assert not shows("25", "2")
    assert not shows("the same on every rank", "{'MAE': tensor(1.)}")


@given(st.floats(-1e6, 1e6), st.integers(1, 6), st.integers(1, 10))
def test_a_rounded_number_shows_the_number_it_rounds(value: float, places: int, more: int) -> None:
    printed = f"{value:.{places + more}f}"  # as Python prints a float: more decimals
    written = f"{float(printed):.{places}f}"
    assert shows(f"[{printed}]", f"[{written}]: rounded")
    off = f"{float(written) + 2 * 10.0**-places:.{places}f}"  # two units off in the last place
    assert not shows(f"[{printed}]", f"[{off}]")


class Checker:
    """Runs one page's blocks, each statement alone, and records every output that differs."""

    def __init__(self, page: Path) -> None:
        self.page = page
        self.namespace: dict[str, Any] = {"__name__": f"docs_{page.stem}", SHOWN: self._shown}
        self.differences: list[str] = []

    def _shown(self, where: str, comment: str, *args: Any, sep: str = " ", **_: Any) -> None:
        output = sep.join(str(arg) for arg in args)
        if not shows(output, comment):
            self.differences.append(f"{where}: shows {comment!r}, prints {output!r}")

    def run(self, index: int, block: str) -> None:
        name = f"{self.page.name}[block {index}]"
        lines = block.splitlines()
        tree = ast.parse(block)
        for node in ast.walk(tree):
            comment = _trailing_print_comment(node, lines)
            if comment is not None and isinstance(node, ast.Expr):
                call = node.value
                assert isinstance(call, ast.Call)
                call.func = ast.Name(SHOWN, ast.Load())
                call.args[:0] = [ast.Constant(f"{name}, line {node.lineno}"), ast.Constant(comment)]
        ast.fix_missing_locations(tree)
        for statement in tree.body:
            printed = io.StringIO()
            code = compile(ast.Module([statement], type_ignores=[]), name, "exec")
            with warnings.catch_warnings(), contextlib.redirect_stdout(printed):
                warnings.simplefilter("default")
                exec(code, self.namespace)
            shown = _comment_lines_after(statement, lines)
            if printed.getvalue() and shown:
                self._compare(f"{name}, line {statement.lineno}", printed.getvalue(), shown)

    def _compare(self, where: str, output: str, shown: list[str]) -> None:
        printed = output.rstrip("\n").split("\n")
        if len(printed) == len(shown) and all(map(shows, printed, shown)):
            return
        if shows(output, " ".join(shown)):
            return
        self.differences.append(f"{where}: shows {shown!r}, prints {output!r}")


def _trailing_print_comment(node: ast.AST, lines: list[str]) -> str | None:
    """The comment after a ``print(...)`` statement on its last line, if any."""
    if not (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Call)
        and isinstance(node.value.func, ast.Name)
        and node.value.func.id == "print"
        and node.end_lineno is not None
        and node.end_col_offset is not None
    ):
        return None
    found = re.match(r"\s*#\s?(.*)$", lines[node.end_lineno - 1][node.end_col_offset :])
    if found is None:
        return None
    return " ".join([found.group(1), *_comment_lines_after(node, lines)])  # wrapped on


def _comment_lines_after(statement: ast.stmt, lines: list[str]) -> list[str]:
    """The comment lines right after a statement (its shown output, if it printed)."""
    shown = []
    for line in lines[statement.end_lineno or 0 :]:
        found = re.match(r"\s*#\s?(.*)$", line)
        if found is None:
            break
        shown.append(found.group(1))
    return shown


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_code_blocks_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    checker = Checker(page)
    for index, block in enumerate(code_blocks(page)):
        try:
            checker.run(index, block)
        except Exception as error:  # pragma: no cover - the failure message is the point
            pytest.fail(f"{page.name}, code block {index} raised {error!r}:\n{block}")
    assert not checker.differences, "\n".join(checker.differences)


def test_every_page_has_been_found() -> None:
    assert ROOT / "README.md" in PAGES


def test_every_code_fence_is_closed_alone() -> None:
    """A fence closed with text after it (```` ``` Pass ... ````) swallows the page that follows."""
    for page in PAGES:
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            if line.startswith("```"):
                assert re.fullmatch(r"```(\w+|\{[^}]*\})?\s*", line), (
                    f"{page.name}:{number}: {line!r}"
                )


# -- the API reference and the docstrings ---------------------------------------------------

PUBLIC_MODULES = (
    "torchtally",
    "torchtally.objectives",
    "torchtally.losses",
    "torchtally.formula",
    "torchtally.schedules",
    "torchtally.tracking",
    "torchtally.aggregation",
    "torchtally.sync",
    "torchtally.distributed",
    "torchtally.protocols",
    "torchtally.errors",
    "torchtally.wrap",
    "torchtally.contrib.torchmetrics",
    "torchtally.contrib.torcheval",
)
DIRECTIVE = re.compile(r"^::: (\S+)\n((?:[ \t]+.*\n)*)", re.MULTILINE)


def documented() -> dict[str, list[str] | None]:
    """Each ``:::`` directive of docs/api.md: its member list, or None for every member."""
    directives: dict[str, list[str] | None] = {}
    for target, options in DIRECTIVE.findall((ROOT / "docs" / "api.md").read_text("utf-8")):
        listed = re.search(r"members:\n((?:\s+- .*\n)+)", options)
        directives[target] = re.findall(r"- (\S+)", listed.group(1)) if listed else None
    return directives


def test_every_public_name_is_in_the_api_reference() -> None:
    directives = documented()
    missing = []
    for module_name in PUBLIC_MODULES[1:]:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            members = directives.get(module_name, [])
            listed = members is None or name in members or f"{module_name}.{name}" in directives
            if not listed:
                missing.append(f"{module_name}.{name}")
    for name in importlib.import_module("torchtally").__all__:
        value = getattr(importlib.import_module("torchtally"), name)
        home = getattr(value, "__module__", None) or getattr(value, "__name__", "")
        if name != "__version__" and not any(home.startswith(d) for d in directives):
            missing.append(f"torchtally.{name} (from {home})")
    assert not missing, f"not in docs/api.md: {missing}"


def test_the_public_surface_has_runnable_examples() -> None:
    """DESIGN.md: every class and function of the public surface shows a short example."""
    without = []
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        if ">>>" not in (module.__doc__ or ""):
            without.append(module_name)
    surface = importlib.import_module("torchtally")
    names = [
        getattr(surface, name)
        for name in surface.__all__
        if not inspect.ismodule(getattr(surface, name)) and name != "__version__"
    ]
    schedules = importlib.import_module("torchtally.schedules")
    names += [schedules.linear, schedules.cosine, schedules.piecewise]
    names += [
        importlib.import_module("torchtally.contrib.torchmetrics").from_torchmetrics,
        importlib.import_module("torchtally.contrib.torcheval").from_torcheval,
    ]
    without += [value.__qualname__ for value in names if ">>>" not in (value.__doc__ or "")]
    assert not without, f"no example in the docstring of {without}"

"""The layers of docs/architecture.md, checked on the source with ``ast``.

Every module under ``src/torchtally`` is parsed (nothing is imported) and each of its
imports is read, wherever it stands: at the top, inside a function, under
``if TYPE_CHECKING:``, relative or absolute, and ``importlib.import_module`` of a
literal name. The tests fail when

- a module belongs to no layer of :data:`LAYERS` (a new top-level module or package
  must be placed),
- a module imports a module of a higher layer, or a sibling of an independent layer,
- two modules import each other, directly or through others (module granularity),
- two top-level units (``losses``, ``sync``, ``wrap``, ...) import each other
  (package granularity),
- a module reaches into another package's private submodule (``aggregation._states``)
  or a private name of another package (``from torchtally.sync import _x``) instead of
  what the package exports in its ``__init__``,
- a module is longer than :data:`MAX_LINES`.

The root's own private modules (``torchtally._conventions``, ``torchtally._dtypes``,
...) are shared by the whole library: any module may import them, from above.
"""

from __future__ import annotations

import ast
import re
import shutil
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = "torchtally"

LAYERS: tuple[tuple[str, ...], ...] = (
    ("demo",),  # an example application: imports torchtally like a user
    ("",),  # torchtally/__init__.py: the public surface, re-exports only
    ("wrap",),  # the public home of wrap() (its code is in contrib.wrap)
    ("contrib",),  # foreign metric forms: wrap, torchmetrics, torcheval
    ("losses",),
    ("objectives",),
    ("sync",),
    ("aggregation", "distributed", "formula", "schedules", "tracking"),
    ("_conventions",),
    (
        "_batches",
        "_criteria",
        "_dtypes",
        "_foreign",
        "_inference",
        "_lazy",
        "_names",
        "_origin",
        "_results",
        "_state_keys",
        "_wire",
    ),
    ("errors", "protocols", "_version"),
)
"""Top-level units (the first name under ``torchtally``; ``""`` is the root's
``__init__``), from the top layer down. A unit may import units of lower layers."""

MAX_LINES = 400
"""The longest a module may be (DESIGN.md): split it by job before it grows past this."""

INDEPENDENT = frozenset({7, 10})
"""Layers (indices into :data:`LAYERS`) whose units do not import one another either.
In the other layers a unit may import a sibling, as long as no cycle forms."""

ANNOTATION_CYCLES = frozenset(
    {
        ("torchtally.losses._operators", "torchtally.losses._base"),
        ("torchtally.losses._operators", "torchtally.losses._compositional"),
        ("torchtally.losses._operators", "torchtally.losses._joined"),
        ("torchtally.losses._base", "torchtally.losses._joined"),
    }
)
"""Imports under ``if TYPE_CHECKING:`` that close a cycle, allowed one by one.

The operator mixin (``losses._operators``) is a base class of ``LossBase``, and its
operators are annotated with the classes they return, ``LossBase`` and its subclasses
``CompositionalLoss`` and ``JoinedLoss`` (``loss | metric``; ``LossBase.joined`` names
``JoinedLoss`` too): a base class naming its subclass is a cycle that only a merged
module or a looser public return type would remove. Nothing runs these imports.
"""


@dataclass(frozen=True)
class Import:
    """One import of a module of the library, as written in the source."""

    source: str  # the importing module
    target: str  # the imported module (for ``from m import name``: ``m.name`` if a module)
    names: tuple[str, ...]  # for ``from m import a, b`` where m is the target: a, b
    line: int
    type_checking: bool

    def where(self) -> str:
        return f"{self.source}:{self.line}"


def module_files(src: Path) -> dict[str, Path]:
    """Every module of the package under ``src``, by dotted name."""
    modules = {}
    for path in sorted((src / ROOT).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.attr if isinstance(test, ast.Attribute) else getattr(test, "id", "")
            if name == "TYPE_CHECKING":
                for child in node.body:
                    for inner in ast.walk(child):
                        if hasattr(inner, "lineno"):
                            lines.add(inner.lineno)
    return lines


def _imports_of(name: str, path: Path, modules: Mapping[str, Path]) -> Iterable[Import]:
    tree = ast.parse(path.read_text("utf-8"), filename=str(path))
    guarded = _type_checking_lines(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        found: list[tuple[str, tuple[str, ...]]] = []
        if isinstance(node, ast.Import):
            found = [(alias.name, ()) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                written = ".".join([*base, *([node.module] if node.module else [])])
            else:
                written = node.module or ""
            plain = []
            for alias in node.names:
                if f"{written}.{alias.name}" in modules:
                    found.append((f"{written}.{alias.name}", ()))
                else:
                    plain.append(alias.name)
            if plain or not found:
                found.append((written, tuple(plain)))
        elif isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first = node.args[0] if node.args else None
            if called in {"import_module", "__import__"} and isinstance(first, ast.Constant):
                found = [(str(first.value), ())]
        for target, names in found:
            if target == ROOT or target.startswith(ROOT + "."):
                yield Import(name, target, names, node.lineno, node.lineno in guarded)


def imports(src: Path) -> list[Import]:
    """Every import of a library module by a library module under ``src``."""
    modules = module_files(src)
    return [found for name, path in modules.items() for found in _imports_of(name, path, modules)]


def unit(module: str) -> str:
    """The top-level unit of a module: ``torchtally.losses._base`` -> ``losses``."""
    return module.split(".")[1] if "." in module else ""


def _rank(module: str) -> int | None:
    return next((i for i, layer in enumerate(LAYERS) if unit(module) in layer), None)


def _cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def unplaced(src: Path) -> list[str]:
    return sorted(module for module in module_files(src) if _rank(module) is None)


def upward(found: Iterable[Import]) -> list[str]:
    """Imports of a higher layer, or of an independent sibling."""
    wrong = []
    for each in found:
        source, target = _rank(each.source), _rank(each.target)
        if source is None or target is None or unit(each.source) == unit(each.target):
            continue
        if target < source or (target == source and source in INDEPENDENT):
            wrong.append(
                f"{each.where()} imports {each.target}: layer {target} "
                f"{LAYERS[target]} is not below layer {source} {LAYERS[source]}"
            )
    return wrong


def module_cycles(found: Iterable[Import]) -> list[list[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for each in found:
        if (each.source, each.target) in ANNOTATION_CYCLES and each.type_checking:
            continue
        if each.source != each.target:
            graph[each.source].add(each.target)
    return _cycles(graph)


def package_cycles(found: Iterable[Import]) -> list[list[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for each in found:
        if unit(each.source) != unit(each.target):
            graph[unit(each.source) or ROOT].add(unit(each.target) or ROOT)
    return _cycles(graph)


def private_reaches(src: Path, found: Iterable[Import]) -> list[str]:
    """Imports of another package's private submodule or private name."""
    files = module_files(src)
    packages = {name for name, path in files.items() if path.name == "__init__.py"} - {ROOT}
    wrong = []
    for each in found:
        owner = next(
            (p for p in packages if each.target == p or each.target.startswith(p + ".")), None
        )
        if owner is None or each.source == owner or each.source.startswith(owner + "."):
            continue
        inside = each.target[len(owner) + 1 :].split(".") if each.target != owner else []
        private = [part for part in inside if part.startswith("_")]
        names = [n for n in each.names if n.startswith("_") and not n.startswith("__")]
        if private or names:
            what = each.target if private else f"{each.target} names {names}"
            wrong.append(f"{each.where()} reaches into {what}: import it from {owner}")
    return wrong


# -- the tests --------------------------------------------------------------------------------


def test_every_module_has_a_layer() -> None:
    assert not unplaced(SRC), "add these units to LAYERS (and docs/architecture.md)"


def test_no_module_imports_a_higher_layer() -> None:
    assert upward(imports(SRC)) == []


def test_no_two_modules_import_each_other() -> None:
    assert module_cycles(imports(SRC)) == []


def test_the_allowed_annotation_cycles_are_annotations_and_still_there() -> None:
    written = {(each.source, each.target): each for each in imports(SRC)}
    for edge in sorted(ANNOTATION_CYCLES):
        assert edge in written, f"{edge} is gone: remove it from ANNOTATION_CYCLES"
        assert written[edge].type_checking, f"{edge} now runs: the cycle is real"


def test_no_two_packages_import_each_other() -> None:
    assert package_cycles(imports(SRC)) == []


def test_packages_are_reached_through_their_init() -> None:
    assert private_reaches(SRC, imports(SRC)) == []


def test_protocols_and_errors_import_nothing_of_ours() -> None:
    bottom = {f"{ROOT}.{name}" for name in LAYERS[-1]}
    assert [each.where() for each in imports(SRC) if each.source in bottom] == []


def test_no_module_is_longer_than_400_lines() -> None:
    lengths = {
        name: len(path.read_text("utf-8").splitlines()) for name, path in module_files(SRC).items()
    }
    assert {name: n for name, n in lengths.items() if n > MAX_LINES} == {}


def test_every_module_has_its_line_in_the_architecture_page() -> None:
    page = (SRC.parent / "docs" / "architecture.md").read_text("utf-8")
    listed = set(re.findall(r"^\| `([\w./]+)` \|", page, re.MULTILINE))
    named = {name.partition(".")[2] or "torchtally/__init__" for name in module_files(SRC)}
    assert sorted(named - listed) == [], "give each a line in docs/architecture.md"
    assert sorted(listed - named) == [], "gone: remove them from docs/architecture.md"


def test_the_checks_see_imports_wherever_they_are_written(tmp_path: Path) -> None:
    """A copy of the source with one violation of each kind added: each is reported."""
    shutil.copytree(SRC / ROOT, tmp_path / ROOT)
    package = tmp_path / ROOT
    with (package / "aggregation" / "_states.py").open("a", encoding="utf-8") as file:
        file.write("\n\ndef _late() -> None:\n    from torchtally import losses  # noqa\n")
    with (package / "formula" / "_leaves.py").open("a", encoding="utf-8") as file:
        file.write("\nif TYPE_CHECKING:\n    from ..schedules import Schedule  # noqa\n")
    with (package / "sync" / "_rows.py").open("a", encoding="utf-8") as file:
        file.write("\nfrom torchtally.objectives._plan import Plan  # noqa\n")
    with (package / "objectives" / "_plan.py").open("a", encoding="utf-8") as file:
        file.write("\nimportlib.import_module('torchtally.sync._rows')\n")
    (package / "extra.py").write_text("from torchtally import errors\n", encoding="utf-8")
    found = imports(tmp_path)

    assert unplaced(tmp_path) == ["torchtally.extra"]
    wrong = upward(found)
    assert any(w.startswith("torchtally.aggregation._states:") and "losses" in w for w in wrong)
    assert any(w.startswith("torchtally.formula._leaves:") and "schedules" in w for w in wrong)
    assert any(w.startswith("torchtally.sync._rows:") and "objectives" in w for w in wrong)
    reaches = private_reaches(tmp_path, found)
    assert any("torchtally.objectives._plan: import it from" in w for w in reaches)
    assert any("torchtally.sync._rows: import it from" in w for w in reaches)
    assert any({"objectives", "sync"} <= set(cycle) for cycle in package_cycles(found))
    assert any(
        {"torchtally.objectives._plan", "torchtally.sync._rows"} <= set(cycle)
        for cycle in module_cycles(found)
    )

"""The expression tree: formula rendering, direction rules, compiled evaluation, pickling.

Expected formulas are written out by hand, one per operator pair (each of
``+ - x / ^`` as the parent, with each operator as its left and as its right
operand), plus unary minus, constants on both sides and negative constants.
"""

from __future__ import annotations

import copy
import operator
import pickle
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from torchtally.errors import FormulaError
from torchtally.formula import (
    Component,
    Constant,
    Expression,
    Negation,
    Operation,
    compile_expression,
    component_names,
    direction,
    render,
)

A, B, C = Component("A"), Component("B"), Component("C")


def op(symbol: str, left: Expression, right: Expression) -> Operation:
    return Operation(symbol, left, right)


def k(value: float) -> Constant:
    return Constant(value)


# (parent, child operator, side of the child) -> expected formula.
# The child is [A] <child> [B] on the left (then <parent> [C]), or [B] <child> [C] on the right.
PAIRS: dict[tuple[str, str, str], str] = {
    ("+", "+", "left"): "[A] + [B] + [C]",
    ("+", "-", "left"): "[A] - [B] + [C]",
    ("+", "*", "left"): "[A] x [B] + [C]",
    ("+", "/", "left"): "[A] / [B] + [C]",
    ("+", "**", "left"): "[A]^[B] + [C]",
    ("+", "+", "right"): "[A] + [B] + [C]",
    ("+", "-", "right"): "[A] + [B] - [C]",
    ("+", "*", "right"): "[A] + [B] x [C]",
    ("+", "/", "right"): "[A] + [B] / [C]",
    ("+", "**", "right"): "[A] + [B]^[C]",
    ("-", "+", "left"): "[A] + [B] - [C]",
    ("-", "-", "left"): "[A] - [B] - [C]",
    ("-", "*", "left"): "[A] x [B] - [C]",
    ("-", "/", "left"): "[A] / [B] - [C]",
    ("-", "**", "left"): "[A]^[B] - [C]",
    ("-", "+", "right"): "[A] - ([B] + [C])",
    ("-", "-", "right"): "[A] - ([B] - [C])",
    ("-", "*", "right"): "[A] - [B] x [C]",
    ("-", "/", "right"): "[A] - [B] / [C]",
    ("-", "**", "right"): "[A] - [B]^[C]",
    ("*", "+", "left"): "([A] + [B]) x [C]",
    ("*", "-", "left"): "([A] - [B]) x [C]",
    ("*", "*", "left"): "[A] x [B] x [C]",
    ("*", "/", "left"): "[A] / [B] x [C]",
    ("*", "**", "left"): "[A]^[B] x [C]",
    ("*", "+", "right"): "[A] x ([B] + [C])",
    ("*", "-", "right"): "[A] x ([B] - [C])",
    ("*", "*", "right"): "[A] x [B] x [C]",
    ("*", "/", "right"): "[A] x [B] / [C]",
    ("*", "**", "right"): "[A] x [B]^[C]",
    ("/", "+", "left"): "([A] + [B]) / [C]",
    ("/", "-", "left"): "([A] - [B]) / [C]",
    ("/", "*", "left"): "[A] x [B] / [C]",
    ("/", "/", "left"): "[A] / [B] / [C]",
    ("/", "**", "left"): "[A]^[B] / [C]",
    ("/", "+", "right"): "[A] / ([B] + [C])",
    ("/", "-", "right"): "[A] / ([B] - [C])",
    ("/", "*", "right"): "[A] / ([B] x [C])",
    ("/", "/", "right"): "[A] / ([B] / [C])",
    ("/", "**", "right"): "[A] / [B]^[C]",
    ("**", "+", "left"): "([A] + [B])^[C]",
    ("**", "-", "left"): "([A] - [B])^[C]",
    ("**", "*", "left"): "([A] x [B])^[C]",
    ("**", "/", "left"): "([A] / [B])^[C]",
    ("**", "**", "left"): "([A]^[B])^[C]",
    ("**", "+", "right"): "[A]^([B] + [C])",
    ("**", "-", "right"): "[A]^([B] - [C])",
    ("**", "*", "right"): "[A]^([B] x [C])",
    ("**", "/", "right"): "[A]^([B] / [C])",
    ("**", "**", "right"): "[A]^[B]^[C]",
}


@pytest.mark.parametrize(("parent", "child", "side"), list(PAIRS), ids=str)
def test_every_operator_pair(parent: str, child: str, side: str) -> None:
    left, right = (op(child, A, B), C) if side == "left" else (A, op(child, B, C))
    tree = op(parent, left, right)
    assert render(tree) == PAIRS[parent, child, side]


UNARY_AND_CONSTANTS: list[tuple[Expression, str]] = [
    # unary minus as an operand of each operator, both sides
    (op("+", Negation(A), B), "-[A] + [B]"),
    (op("+", A, Negation(B)), "[A] + -[B]"),
    (op("-", Negation(A), B), "-[A] - [B]"),
    (op("-", A, Negation(B)), "[A] - -[B]"),
    (op("*", Negation(A), B), "-[A] x [B]"),
    (op("*", A, Negation(B)), "[A] x -[B]"),
    (op("/", Negation(A), B), "-[A] / [B]"),
    (op("/", A, Negation(B)), "[A] / -[B]"),
    (op("**", Negation(A), B), "(-[A])^[B]"),
    (op("**", A, Negation(B)), "[A]^-[B]"),
    # unary minus over each operator
    (Negation(A), "-[A]"),
    (Negation(Negation(A)), "--[A]"),
    (Negation(op("+", A, B)), "-([A] + [B])"),
    (Negation(op("-", A, B)), "-([A] - [B])"),
    (Negation(op("*", A, B)), "-([A] x [B])"),
    (Negation(op("/", A, B)), "-([A] / [B])"),
    (Negation(op("**", A, B)), "-[A]^[B]"),
    # constants on both sides, as Python prints them
    (op("+", op("**", A, k(2)), op("*", k(0.5), B)), "[A]^2 + 0.5 x [B]"),
    (op("*", A, k(0.5)), "[A] x 0.5"),
    (op("+", k(1), A), "1 + [A]"),
    (op("-", k(3), A), "3 - [A]"),
    (op("-", A, k(1e-08)), "[A] - 1e-08"),
    (op("/", k(1), A), "1 / [A]"),
    (op("/", A, k(2.0)), "[A] / 2.0"),
    (op("**", k(2), A), "2^[A]"),
    (op("**", k(0.5), op("+", A, B)), "0.5^([A] + [B])"),
    (op("*", k(2), op("**", A, k(3))), "2 x [A]^3"),
    # negative constants: a leading minus, so they bind like unary minus
    (op("*", k(-0.5), A), "-0.5 x [A]"),
    (op("*", A, k(-0.5)), "[A] x -0.5"),
    (op("+", A, k(-2)), "[A] + -2"),
    (op("+", k(-2), A), "-2 + [A]"),
    (op("-", A, k(-2)), "[A] - -2"),
    (op("/", k(-1), A), "-1 / [A]"),
    (op("/", A, k(-2)), "[A] / -2"),
    (op("**", A, k(-2)), "[A]^-2"),
    (op("**", A, k(-0.5)), "[A]^-0.5"),
    (op("**", k(-2), A), "(-2)^[A]"),
    (op("**", k(-0.0), A), "(-0.0)^[A]"),
    # deeper nesting: associative chains lose their parentheses, the rest keep them
    (op("+", A, op("+", B, op("+", C, A))), "[A] + [B] + [C] + [A]"),
    (op("*", op("*", A, B), op("*", C, A)), "[A] x [B] x [C] x [A]"),
    (op("-", op("-", A, B), op("-", C, A)), "[A] - [B] - ([C] - [A])"),
    (op("**", op("**", A, B), op("**", C, A)), "([A]^[B])^[C]^[A]"),
    (op("**", A, Negation(op("**", B, C))), "[A]^-[B]^[C]"),
    (op("*", Negation(op("+", A, B)), op("/", C, k(2))), "-([A] + [B]) x [C] / 2"),
]


@pytest.mark.parametrize(
    ("tree", "expected"), UNARY_AND_CONSTANTS, ids=[e for _, e in UNARY_AND_CONSTANTS]
)
def test_unary_minus_and_constants(tree: Expression, expected: str) -> None:
    assert render(tree) == expected


# -- the formula means what the tree means -----------------------------------------------------

VALUES = {"A": 1.7, "B": 0.6, "C": 2.3}
FUNCTIONS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}


def evaluate(tree: Expression, sizes: list[float]) -> Any:
    """Independent reference: evaluate the tree recursively in Python numbers.

    ``sizes`` collects the magnitude of every intermediate value.
    """
    value: Any
    if isinstance(tree, Component):
        value = VALUES[tree.name]
    elif isinstance(tree, Constant):
        value = tree.value
    elif isinstance(tree, Negation):
        value = -evaluate(tree.operand, sizes)
    else:
        left, right = evaluate(tree.left, sizes), evaluate(tree.right, sizes)
        value = left**right if tree.op == "**" else FUNCTIONS[tree.op](left, right)
    sizes.append(abs(value))
    return value


def python_text(formula: str) -> str:
    for name, value in VALUES.items():
        formula = formula.replace(f"[{name}]", f"({value!r})")
    return formula.replace(" x ", " * ").replace("^", "**")


leaves = st.sampled_from([A, B, C]) | st.sampled_from([0.5, 2, 3, 1.25]).map(Constant)
trees = st.recursive(
    leaves,
    lambda inner: (
        st.builds(Negation, inner)
        | st.builds(Operation, st.sampled_from(["+", "-", "*", "/", "**"]), inner, inner)
    ),
    max_leaves=7,
)


@settings(max_examples=50, deadline=None)
@given(trees)
def test_rendered_formula_evaluates_like_the_tree(tree: Expression) -> None:
    sizes: list[float] = []
    try:
        expected = evaluate(tree, sizes)
        found: Any = eval(python_text(render(tree)))
        compiled: Any = compile_expression(tree).run(VALUES)
    except (ZeroDivisionError, OverflowError):
        return
    if any(isinstance(value, complex) for value in (expected, found, compiled)):
        return  # a negative base to a fractional power: no real value to compare
    if max(sizes) > 1e6:
        return  # regrouping a chain may cancel digits of huge intermediates
    # The formula may regroup associative chains: equal up to rounding.
    assert found == pytest.approx(expected, rel=1e-9, abs=1e-9)
    assert compiled == expected  # the compiled order is the tree's: bit for bit


def test_program_evaluates_each_component_once_and_in_written_order() -> None:
    tree = op("+", op("*", B, A), op("-", B, k(2)))
    program = compile_expression(tree)
    assert program.names == ("B", "A")
    assert program.constants == (2,)
    assert len(program.steps) == 3
    assert program.run({"A": 3.0, "B": 5.0}) == 5.0 * 3.0 + 5.0 - 2
    assert component_names(tree) == ("B", "A")


def test_a_bare_component_compiles_to_no_steps() -> None:
    program = compile_expression(A)
    assert program.steps == ()
    assert program.run({"A": 4.0}) == 4.0


# -- directions --------------------------------------------------------------------------------

LOW, HIGH = Component("L"), Component("H")
DIRECTIONS = {"L": False, "H": True, "M": False}
M = Component("M")

ACCEPTED: list[tuple[Expression, bool]] = [
    (LOW, False),
    (HIGH, True),
    (Negation(LOW), True),
    (op("+", LOW, M), False),
    (op("-", LOW, HIGH), False),
    (op("-", HIGH, LOW), True),
    (op("*", LOW, M), False),
    (op("/", LOW, HIGH), False),
    (op("/", k(1), LOW), True),  # a loss in a denominator flips
    (op("/", k(-1), LOW), False),  # ... and a negative constant flips back
    (op("*", k(-2), LOW), True),  # a negative factor flips
    (op("*", LOW, k(-2)), True),
    (op("*", k(0.5), LOW), False),
    (op("/", LOW, k(-2)), True),
    (op("**", LOW, k(2)), False),
    (op("**", LOW, k(-1)), True),  # a negative power flips
    (op("**", LOW, k(0)), False),
    (op("**", k(2), LOW), False),  # c ** loss, c > 1: increasing
    (op("**", k(1), LOW), False),  # c == 1: constant, keeps the direction
    (op("**", k(0.5), LOW), True),  # 0 < c < 1: decreasing
    (op("**", LOW, M), False),  # loss ** loss: like a product
    (op("+", LOW, k(3)), False),
    (op("-", k(3), LOW), True),
    (op("+", op("**", LOW, k(-1)), HIGH), True),
    (op("-", HIGH, op("-", M, HIGH)), True),
]


@pytest.mark.parametrize(("tree", "expected"), ACCEPTED, ids=[render(t) for t, _ in ACCEPTED])
def test_direction_rules(tree: Expression, expected: bool) -> None:
    assert direction(tree, DIRECTIONS) is expected


REFUSED: list[tuple[Expression, list[str]]] = [
    (
        op("+", LOW, HIGH),
        ["cannot add [L] (lower is better) and [H] (higher is better)", "[L] - [H]"],
    ),
    (op("-", LOW, M), ["cannot subtract [M] (lower is better) from [L]", "flips", "[L] + [M]"]),
    (op("*", HIGH, LOW), ["cannot multiply [H] (higher is better) by [L]", "[H] / [L]"]),
    (op("/", LOW, M), ["cannot divide [L] (lower is better) by [M]", "denominator", "[L] x [M]"]),
    (op("**", LOW, HIGH), ["cannot raise [L] (lower is better) to the power [H]", "[L]^-[H]"]),
    (op("+", LOW, Negation(M)), ["-[M] (higher is better)"]),
    (op("+", LOW, op("*", k(-1), M)), ["-1 x [M] (higher is better)"]),
    (op("+", LOW, op("**", M, k(-1))), ["[M]^-1 (higher is better)"]),
    (op("+", LOW, op("/", k(2), M)), ["2 / [M] (higher is better)"]),
    (op("+", LOW, op("**", k(0.5), M)), ["0.5^[M] (higher is better)"]),
    (op("-", LOW, op("-", M, HIGH)), ["subtract [M] - [H] (lower is better) from [L]"]),
    (op("/", LOW, k(0)), ["division by 0"]),
    (op("**", k(-2), LOW), ["must be a positive constant", "-2"]),
    (op("**", k(0), LOW), ["must be a positive constant"]),
]


@pytest.mark.parametrize(("tree", "fragments"), REFUSED, ids=[render(t) for t, _ in REFUSED])
def test_direction_refusals_name_both_operands(tree: Expression, fragments: list[str]) -> None:
    with pytest.raises(FormulaError) as caught:
        direction(tree, DIRECTIONS)
    message = str(caught.value)
    assert message.startswith(render(tree) + ":")
    for fragment in fragments:
        assert fragment in message
    assert isinstance(caught.value, ValueError)


def test_constants_must_be_finite_ints_or_floats() -> None:
    for bad in (True, float("inf"), float("nan"), "2", 1j):
        with pytest.raises(FormulaError, match="constant"):
            Constant(bad)  # type: ignore[arg-type]
    with pytest.raises(FormulaError, match="unknown operator"):
        Operation("%", A, B)


def test_trees_are_data() -> None:
    tree = op("+", op("**", A, k(2)), op("*", k(0.5), Negation(B)))
    for clone in (pickle.loads(pickle.dumps(tree)), copy.deepcopy(tree)):
        assert clone == tree
        assert render(clone) == render(tree)
    program = compile_expression(tree)
    assert pickle.loads(pickle.dumps(program)).run(VALUES) == program.run(VALUES)
    assert repr(Component("A")) == "Component(name='A')"
    assert hash(tree) == hash(copy.deepcopy(tree))

"""The expression tree: formula rendering, direction rules, compiled evaluation, pickling.

Expected formulas are written out by hand, one per operator pair (each of
``+ - x / ^`` as the parent, with each operator as its left and as its right
operand), plus unary minus, constants on both sides and negative constants.
"""

from __future__ import annotations

import copy
import math
import operator
import pickle
import re
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
    describe_integer,
    direction,
    from_postfix,
    postfix,
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
    (op("**", LOW, M), False),  # loss ** loss, positive base and exponent: like a product
    (op("**", k(2), LOW), False),  # c ** loss, c > 1: increasing
    (op("**", k(1), LOW), False),  # c == 1: constant, keeps the direction
    (op("**", k(0.5), LOW), True),  # 0 < c < 1: decreasing
    # signs: a negated operand is negative, given positive components
    (op("*", Negation(LOW), Negation(M)), False),  # (-L) x (-M) = L x M
    (op("*", LOW, Negation(M)), True),  # -(L x M)
    (op("*", Negation(LOW), M), True),  # -(L x M)
    (op("/", Negation(LOW), Negation(HIGH)), False),  # L / H
    (op("/", k(1), Negation(LOW)), False),  # -1 / L
    (op("**", Negation(LOW), k(2)), False),  # L^2
    (op("**", Negation(LOW), k(-2)), True),  # 1 / L^2
    (op("**", Negation(LOW), k(3)), True),  # -(L^3)
    (op("**", Negation(LOW), k(-1)), False),  # -1 / L
    (op("**", Negation(LOW), k(2.0)), False),  # an integral float exponent
    (op("*", op("**", Negation(LOW), k(2)), M), False),  # L^2 x M: the square is positive
    (op("**", op("-", LOW, HIGH), k(3)), False),  # an odd power of either sign keeps the order
    (op("*", op("-", LOW, HIGH), k(2)), False),  # a constant factor needs no sign
    (op("+", op("-", k(1), HIGH), LOW), False),
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
    (op("**", LOW, HIGH), ["cannot raise [L] (lower is better) to the power [H]"]),
    (op("**", LOW, Negation(M)), ["cannot tell", "-[M] is negative", "positive base and exponent"]),
    (op("**", op("-", LOW, HIGH), M), ["[L] - [H] may be negative", "higher_is_better"]),
    (op("**", op("-", LOW, HIGH), k(2)), ["[L] - [H] may be positive or negative", "even power"]),
    (op("**", op("-", LOW, HIGH), k(0.5)), ["may be positive or negative", "not real"]),
    (op("**", Negation(LOW), k(0.5)), ["-[L] is negative", "not real"]),
    (op("*", op("-", LOW, HIGH), M), ["[L] - [H] may be positive or negative", "product"]),
    (op("/", M, op("-", LOW, HIGH)), ["[L] - [H] may be positive or negative"]),
    (
        op("*", LOW, Negation(HIGH)),
        ["cannot multiply [L] (lower is better) by -[H] (lower is better)", "-[H] is negative"],
    ),
    (op("*", Negation(LOW), Negation(HIGH)), ["are negative", "-[L] / -[H]"]),
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


# A numeric check of the direction rules: on positive component values, improving every
# component a little (lower-is-better ones down, higher-is-better ones up) must move the value
# the way the inferred direction says (or leave it unchanged). Refused trees make no claim.

SIGNED_LEAVES = st.sampled_from([LOW, HIGH, M]) | st.sampled_from(
    [k(-2), k(-1), k(-0.5), k(0.5), k(2), k(3)]
)
EXPONENTS = st.sampled_from([k(-3), k(-2), k(-1), k(0.5), k(2), k(3), k(2.5)])


def signed_trees(children: Any) -> Any:
    return st.one_of(
        st.builds(Negation, children),
        st.builds(op, st.sampled_from(["+", "-", "*", "/"]), children, children),
        st.builds(op, st.just("**"), children, EXPONENTS),
        st.builds(op, st.just("**"), st.sampled_from([k(0.5), k(2)]), children),
    )


@settings(max_examples=400, deadline=None)
@given(
    tree=st.recursive(SIGNED_LEAVES, signed_trees, max_leaves=6),
    start=st.lists(st.floats(0.5, 3.0), min_size=3, max_size=3),
)
def test_inferred_directions_match_a_numeric_check_on_positive_values(
    tree: Expression, start: list[float]
) -> None:
    try:
        found = direction(tree, DIRECTIONS)
    except FormulaError:
        return  # refused: no claim to check
    if found is None:
        return  # constants only
    program = compile_expression(tree)
    before = dict(zip(("L", "H", "M"), start, strict=True))
    step = 1e-4
    after = {
        name: value * (1 + step if DIRECTIONS[name] else 1 - step) for name, value in before.items()
    }
    try:
        first, second = program.run(before), program.run(after)
    except OverflowError:  # Python floats raise where tensors give inf: no finite claim to check
        return
    if not all(
        isinstance(v, float) and math.isfinite(v) and abs(v) < 1e12 for v in (first, second)
    ):
        return
    change = second - first
    tolerance = 1e-9 * max(1.0, abs(first))
    assert (change >= -tolerance) if found else (change <= tolerance), (
        render(tree),
        before,
        change,
    )


def test_negated_operands_of_products_and_powers_from_the_report() -> None:
    directions = {"MAE": False, "MSE": False}
    mae, mse = Negation(Component("MAE")), Negation(Component("MSE"))
    assert direction(op("*", mae, mse), directions) is False  # MAE x MSE
    assert direction(op("**", mae, k(2)), directions) is False  # MAE^2
    assert direction(op("**", mae, k(-2)), directions) is True  # 1 / MAE^2


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


# -- any depth: every algorithm walks the tree without recursion ---------------------------------

DEPTH = 10_000
LEAVES = [Component(f"L{index}") for index in range(DEPTH)]
LEAF_VALUES = {leaf.name: (index % 7) * 0.25 + 0.5 for index, leaf in enumerate(LEAVES)}


def left_deep(symbol: str) -> Expression:
    tree: Expression = LEAVES[0]
    for leaf in LEAVES[1:]:
        tree = op(symbol, tree, leaf)
    return tree


def right_deep(symbol: str) -> Expression:
    tree: Expression = LEAVES[-1]
    for leaf in reversed(LEAVES[:-1]):
        tree = op(symbol, leaf, tree)
    return tree


def balanced(symbol: str) -> Expression:
    level: list[Expression] = list(LEAVES)
    while len(level) > 1:
        pairs = [op(symbol, level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        level = pairs + ([level[-1]] if len(level) % 2 else [])
    return level[0]


def negations(count: int) -> Expression:
    tree: Expression = A
    for _ in range(count):
        tree = Negation(tree)
    return tree


def expected_sum() -> float:
    return math.fsum(LEAF_VALUES.values())


DEEP_SUMS = {"left-deep": left_deep, "right-deep": right_deep, "balanced": balanced}


@pytest.mark.parametrize("shape", list(DEEP_SUMS))
def test_deep_sums_render_compile_and_walk(shape: str) -> None:
    tree = DEEP_SUMS[shape]("+")
    # an associative chain needs no parentheses whatever its grouping
    assert render(tree) == " + ".join(f"[{leaf.name}]" for leaf in LEAVES)
    assert component_names(tree) == tuple(leaf.name for leaf in LEAVES)
    assert direction(tree, dict.fromkeys(LEAF_VALUES, False)) is False
    program = compile_expression(tree)
    assert program.names == tuple(leaf.name for leaf in LEAVES)
    assert len(program.steps) == DEPTH - 1
    assert program.run(LEAF_VALUES) == pytest.approx(expected_sum(), rel=1e-12)
    tokens = postfix(tree)
    assert len(tokens) == 2 * DEPTH - 1
    assert tokens.count("+") == DEPTH - 1
    assert from_postfix(tokens) == tree


@pytest.mark.parametrize("shape", list(DEEP_SUMS))
def test_deep_trees_pickle_copy_compare_and_hash(shape: str) -> None:
    tree = DEEP_SUMS[shape]("*")
    rebuilt = DEEP_SUMS[shape]("*")
    assert tree is not rebuilt and tree == rebuilt and hash(tree) == hash(rebuilt)
    for clone in (pickle.loads(pickle.dumps(tree)), copy.deepcopy(tree), copy.copy(tree)):
        assert clone == tree and hash(clone) == hash(tree)
        assert render(clone) == render(tree)
        assert isinstance(clone, Operation) and clone.op == "*"
    different = DEEP_SUMS[shape]("+")
    assert tree != different
    program = compile_expression(tree)
    restored = pickle.loads(pickle.dumps(program))
    assert restored.run(LEAF_VALUES) == program.run(LEAF_VALUES)


def test_a_deep_tree_differing_only_at_its_deepest_leaf_is_not_equal() -> None:
    tree = left_deep("+")
    other: Expression = Component("other")
    for leaf in LEAVES[1:]:
        other = op("+", other, leaf)
    assert tree != other
    assert render(tree) != render(other)


def test_deep_right_nested_subtraction_keeps_every_parenthesis() -> None:
    tree = right_deep("-")
    expected = f"[{LEAVES[-1].name}]"
    for leaf in reversed(LEAVES[:-1]):
        expected = (
            f"[{leaf.name}] - ({expected})" if " " in expected else f"[{leaf.name}] - {expected}"
        )
    assert render(tree) == expected
    # a - (b - (c - ...)): alternating signs, evaluated exactly like the nested Python expression
    reference = LEAF_VALUES[LEAVES[-1].name]
    for leaf in reversed(LEAVES[:-1]):
        reference = LEAF_VALUES[leaf.name] - reference
    assert compile_expression(tree).run(LEAF_VALUES) == reference
    # directions alternate through the nesting: every leaf must point the same way as the result
    names = [leaf.name for leaf in LEAVES]
    alternating = {name: index % 2 == 1 for index, name in enumerate(names)}
    assert direction(tree, alternating) is False
    with pytest.raises(FormulaError, match="cannot subtract"):
        direction(tree, dict.fromkeys(names, False))


def test_ten_thousand_negations() -> None:
    tree = negations(DEPTH)
    assert render(tree) == "-" * DEPTH + "[A]"
    assert render(negations(DEPTH + 1)) == "-" * (DEPTH + 1) + "[A]"
    assert direction(tree, {"A": False}) is False
    assert direction(negations(DEPTH + 1), {"A": False}) is True
    assert compile_expression(tree).run(VALUES) == VALUES["A"]
    assert compile_expression(negations(DEPTH + 1)).run(VALUES) == -VALUES["A"]
    assert postfix(tree) == (A, *["neg"] * DEPTH)
    for clone in (
        pickle.loads(pickle.dumps(tree)),
        copy.deepcopy(tree),
        from_postfix(postfix(tree)),
    ):
        assert clone == tree and hash(clone) == hash(tree)
    assert tree != negations(DEPTH + 1)


def test_deep_powers_and_mixed_operators() -> None:
    # [A]^([A]^([A]^...)): a right-grouped power chain needs no parentheses; the left-grouped
    # one needs a pair per level
    tower: Expression = A
    leaning: Expression = A
    for _ in range(DEPTH - 1):
        tower = op("**", A, tower)
        leaning = op("**", leaning, A)
    assert render(tower) == "^".join(["[A]"] * DEPTH)
    assert render(leaning) == "(" * (DEPTH - 2) + "[A]^[A]" + ")^[A]" * (DEPTH - 2)
    assert component_names(tower) == ("A",)
    ones = {"A": 1.0}
    assert compile_expression(tower).run(ones) == 1.0
    assert compile_expression(leaning).run(ones) == 1.0
    assert direction(leaning, {"A": False}) is False
    cubes: Expression = Negation(A)
    for _ in range(DEPTH - 1):
        cubes = op("**", cubes, k(3))
    assert direction(cubes, {"A": False}) is True  # -(A^(3^n)): odd powers keep the order
    mixed: Expression = A
    for index in range(DEPTH):
        mixed = op("*", k(0.5), mixed) if index % 2 else op("+", mixed, B)
    assert pickle.loads(pickle.dumps(mixed)) == mixed
    assert render(copy.deepcopy(mixed)) == render(mixed)


def test_postfix_round_trip_and_malformed_forms() -> None:
    tree = op("-", Negation(op("**", A, k(2))), op("/", B, Negation(C)))
    tokens = postfix(tree)
    assert tokens == (A, k(2), "**", "neg", B, C, "neg", "/", "-")
    assert from_postfix(tokens) == tree
    assert from_postfix(list(tokens)) == tree
    for bad, fragment in [
        ((A, "+"), "malformed postfix expression at '+'"),
        (("neg",), "malformed postfix expression at 'neg'"),
        ((A, B), "must describe one expression, found 2"),
        ((), "must describe one expression, found 0"),
        ((A, 3), "unknown token 3"),
        ((A, B, "%"), "unknown operator '%'"),
    ]:
        with pytest.raises(FormulaError, match=re.escape(fragment)):
            from_postfix(bad)  # type: ignore[arg-type]


def test_nodes_are_immutable() -> None:
    tree = op("+", A, B)
    with pytest.raises(AttributeError, match="immutable"):
        tree.op = "-"  # type: ignore[misc]
    with pytest.raises(AttributeError, match="immutable"):
        Negation(A).operand = B  # type: ignore[misc]
    assert repr(tree) == "Operation('[A] + [B]')"
    assert repr(Negation(A)) == "Negation('-[A]')"


@pytest.mark.parametrize(
    ("number", "text"),
    [
        (2**63, "9.223e+18"),
        (-(2**63) - 1, "-9.223e+18"),
        (10**400, "1.000e+400"),
        (-3 * 10**5000, "-3.000e+5000"),  # beyond what str() of an int may print
    ],
    ids=["2**63", "-2**63-1", "10**400", "-3*10**5000"],
)
def test_constants_outside_int64_are_refused_with_a_readable_number(number: int, text: str) -> None:
    assert describe_integer(number) == text
    with pytest.raises(FormulaError) as caught:
        Constant(number)
    assert f"the constant {text} is outside the int64 range" in str(caught.value)
    assert Constant(2**63 - 1).value == 2**63 - 1 and Constant(-(2**63)).value == -(2**63)

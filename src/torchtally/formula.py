"""The expression tree of composed losses: rendering, directions and evaluation.

A loss expression is plain data: immutable nodes (:class:`Component`,
:class:`Constant`, :class:`Scheduled`, :class:`Negation`,
:class:`Operation`) that pickle, deep-copy, compare by value and print.
Everything that reads a tree walks it with an explicit stack, never by
recursion, so a composition of ten thousand terms renders, compiles, copies
and pickles like a small one; composite nodes pickle as their flat postfix
form.

- :func:`render` writes the formula with the fewest parentheses that keep its
  meaning (``[MSE]^2 + 0.5 x [MAE]``);
- :func:`direction` works out whether a higher value is better, refusing
  combinations of values that point in opposite directions (one node at a
  time: :func:`combine_directions`);
- :func:`compile_expression` turns the tree into a :class:`Program`, a flat
  evaluation order that losses run on every batch (no recursion, no checks).

Example:
    >>> from torchtally.formula import Component, Constant, Operation, render, compile_expression
    >>> tree = Operation('+', Operation('**', Component('MSE'), Constant(2)),
    ...                  Operation('*', Constant(0.5), Component('MAE')))
    >>> render(tree)
    '[MSE]^2 + 0.5 x [MAE]'
    >>> compile_expression(tree).run({'MSE': 4.0, 'MAE': 2.0})
    17.0
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol, runtime_checkable

from torchtally.errors import FormulaError

__all__ = [
    "OPERATORS",
    "Component",
    "Constant",
    "Expression",
    "Factor",
    "Negation",
    "Operation",
    "Program",
    "Scheduled",
    "combine_directions",
    "compile_expression",
    "component_names",
    "describe_integer",
    "direction",
    "from_postfix",
    "postfix",
    "render",
]

OPERATORS: Final = ("+", "-", "*", "/", "**")
"""The binary operators of an :class:`Operation`, as Python writes them."""

_SYMBOLS: Final = {"+": "+", "-": "-", "*": "x", "/": "/", "**": "^"}
_NEGATE: Final = "neg"
_INT64: Final = (-(2**63), 2**63 - 1)

# Binding strength, as in Python's grammar: a + b < a * b < -a < a ** b < atoms.
_ADDITIVE, _MULTIPLICATIVE, _UNARY, _POWER, _ATOM = 1, 2, 3, 4, 5
_BINDING: Final = {"+": _ADDITIVE, "-": _ADDITIVE, "*": _MULTIPLICATIVE, "/": _MULTIPLICATIVE}


@runtime_checkable
class Factor(Protocol):
    """A value that changes as training goes on (a weight schedule), usable in a formula.

    :mod:`torchtally.schedules` implements it. ``low`` and ``high`` bound
    every value it takes, so that directions can be checked once.
    """

    @property
    def label(self) -> str:
        """How formulas write it, e.g. ``linear(0→1, 1000)``."""

    @property
    def low(self) -> float:
        """The smallest value it takes."""

    @property
    def high(self) -> float:
        """The largest value it takes."""


def describe_integer(number: int) -> str:
    """An integer in scientific notation, also beyond the range of floats.

    Example:
        >>> from torchtally.formula import describe_integer
        >>> describe_integer(10**30), describe_integer(-3 * 10**400)
        ('1.000e+30', '-3.000e+400')
    """
    if abs(number) < 10**300:
        return f"{number:.3e}"
    exponent = int(math.log10(abs(number)))
    mantissa = abs(number) / 10**exponent  # int / int: a correctly rounded float in [1, 10)
    if mantissa >= 10:  # log10 rounded up at a power of ten
        exponent, mantissa = exponent + 1, mantissa / 10
    return f"{'-' if number < 0 else ''}{mantissa:.3f}e+{exponent}"


@dataclass(frozen=True)
class Component:
    """A named value of the loss, written ``[name]`` in formulas.

    Example:
        >>> from torchtally.formula import Component, render
        >>> render(Component('MSE'))
        '[MSE]'
    """

    name: str


@dataclass(frozen=True)
class Constant:
    """A number in an expression: a finite ``float`` or an ``int`` within int64 (never ``bool``).

    Raises:
        FormulaError: anything else.

    Example:
        >>> from torchtally.formula import Constant, render
        >>> render(Constant(0.5))
        '0.5'
    """

    value: int | float

    def __post_init__(self) -> None:
        if type(self.value) not in (int, float):
            raise FormulaError(
                f"a loss expression takes int or float constants, found "
                f"{type(self.value).__name__} {self.value!r:.60}"
            )
        if isinstance(self.value, float) and not math.isfinite(self.value):
            raise FormulaError(f"a loss expression takes finite constants, found {self.value!r}")
        if isinstance(self.value, int) and not _INT64[0] <= self.value <= _INT64[1]:
            raise FormulaError(
                f"the constant {describe_integer(self.value)} is outside the int64 range a "
                f"tensor operation takes; write it as a float"
            )


@dataclass(frozen=True)
class Scheduled:
    """A factor whose value changes during training (see :mod:`torchtally.schedules`).

    Example:
        >>> from torchtally import schedules
        >>> from torchtally.formula import Scheduled, render
        >>> render(Scheduled(schedules.linear(0.0, 1.0, steps=1000)))
        'linear(0→1, 1000)'
    """

    factor: Factor


class _Composite:
    """Shared behaviour of :class:`Negation` and :class:`Operation`.

    Immutable, compared, hashed and pickled through their flat postfix form (never by recursion).
    """

    __slots__ = ()

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _Composite):
            return NotImplemented
        return postfix(self) == postfix(other)  # type: ignore[arg-type]

    def __hash__(self) -> int:
        return hash(postfix(self))  # type: ignore[arg-type]

    def __reduce__(self) -> tuple[Any, ...]:
        return from_postfix, (postfix(self),)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({render(self)!r})"  # type: ignore[arg-type]


class Negation(_Composite):
    """``-operand``.

    Example:
        >>> from torchtally.formula import Component, Negation, render
        >>> render(Negation(Component('Accuracy')))
        '-[Accuracy]'
    """

    __slots__ = ("operand",)
    operand: Expression

    def __init__(self, operand: Expression) -> None:
        object.__setattr__(self, "operand", operand)


class Operation(_Composite):
    """``left <op> right`` for ``op`` one of ``+ - * / **`` (operands in the written order).

    Raises:
        FormulaError: ``op`` is not one of :data:`OPERATORS`.

    Example:
        >>> from torchtally.formula import Component, Operation, render
        >>> render(Operation('/', Component('A'), Component('B')))
        '[A] / [B]'
    """

    __slots__ = ("left", "op", "right")
    op: str
    left: Expression
    right: Expression

    def __init__(self, op: str, left: Expression, right: Expression) -> None:
        if op not in OPERATORS:
            raise FormulaError(f"unknown operator {op!r}; expected one of {OPERATORS}")
        object.__setattr__(self, "op", op)
        object.__setattr__(self, "left", left)
        object.__setattr__(self, "right", right)


Expression = Component | Constant | Scheduled | Negation | Operation
"""A node of a loss expression tree."""

Token = Component | Constant | Scheduled | str
"""One step of a postfix form: a leaf, an operator, or ``'neg'``."""


# -- walking -----------------------------------------------------------------------------------


def _postorder(node: Expression) -> Iterator[Expression]:
    """Every node, children before parents, operands in the written order (no recursion)."""
    stack: list[tuple[Expression, bool]] = [(node, False)]
    while stack:
        item, expanded = stack.pop()
        if expanded or not isinstance(item, _Composite):
            yield item
        elif isinstance(item, Negation):
            stack.extend(((item, True), (item.operand, False)))
        else:
            stack.extend(((item, True), (item.right, False), (item.left, False)))


def postfix(node: Expression) -> tuple[Token, ...]:
    """The flat postfix form of an expression: leaves, operators and ``'neg'``.

    Example:
        >>> from torchtally.formula import Component, Constant, Operation, postfix
        >>> postfix(Operation('*', Constant(2), Component('A')))
        (Constant(value=2), Component(name='A'), '*')
    """
    tokens: list[Token] = []
    for item in _postorder(node):
        if isinstance(item, Negation):
            tokens.append(_NEGATE)
        elif isinstance(item, Operation):
            tokens.append(item.op)
        else:
            tokens.append(item)
    return tuple(tokens)


def from_postfix(tokens: Sequence[Token]) -> Expression:
    """The expression a postfix form describes (the inverse of :func:`postfix`).

    Raises:
        FormulaError: the tokens do not describe exactly one expression.

    Example:
        >>> from torchtally.formula import Component, from_postfix, render
        >>> render(from_postfix([Component('A'), Component('B'), '-', 'neg']))
        '-([A] - [B])'
    """
    stack: list[Expression] = []
    for token in tokens:
        if isinstance(token, str):
            needed = 1 if token == _NEGATE else 2
            if len(stack) < needed:
                raise FormulaError(f"malformed postfix expression at {token!r}")
            if token == _NEGATE:
                stack.append(Negation(stack.pop()))
            else:
                right = stack.pop()
                stack.append(Operation(token, stack.pop(), right))
        elif isinstance(token, (Component, Constant, Scheduled)):
            stack.append(token)
        else:
            raise FormulaError(f"unknown token {token!r:.60} in a postfix expression")
    if len(stack) != 1:
        raise FormulaError(f"a postfix expression must describe one expression, found {len(stack)}")
    return stack[0]


# -- rendering ---------------------------------------------------------------------------------


def _binding(node: Expression) -> int:
    if isinstance(node, (Component, Scheduled)):
        return _ATOM
    if isinstance(node, Constant):
        # A negative number is written with a unary minus, and binds like one: (-2)^[A].
        return _UNARY if repr(node.value).startswith("-") else _ATOM
    if isinstance(node, Negation):
        return _UNARY
    return _POWER if node.op == "**" else _BINDING[node.op]


def render(node: Expression) -> str:
    """The formula of an expression, with the fewest parentheses that keep its meaning.

    Leaves are ``[name]``, constants are written as Python prints them,
    schedules by their label, ``x`` is multiplication and ``^`` a power.
    Parentheses follow Python's grammar (a power binds tighter than a unary
    minus and groups to the right), except that regrouping an associative
    chain needs none: ``a + (b - c)`` is written ``[A] + [B] - [C]`` and
    ``a x (b / c)`` is written ``[A] x [B] / [C]``.

    Example:
        >>> from torchtally.formula import Component, Negation, Operation, render
        >>> a, b, c = Component('A'), Component('B'), Component('C')
        >>> render(Operation('-', a, Operation('-', b, c)))
        '[A] - ([B] - [C])'
        >>> render(Operation('**', Negation(a), Operation('**', b, c)))
        '(-[A])^[B]^[C]'
    """
    parts: list[str] = []
    # Work items: a node to write, or a string to emit as it is.
    stack: list[Expression | str] = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            parts.append(item)
        elif isinstance(item, Component):
            parts.append(f"[{item.name}]")
        elif isinstance(item, Constant):
            parts.append(repr(item.value))
        elif isinstance(item, Scheduled):
            parts.append(item.factor.label)
        elif isinstance(item, Negation):
            stack.extend(reversed(["-", *_wrapped(item.operand, _binding(item.operand) < _UNARY)]))
        else:
            left_binding, right_binding = _binding(item.left), _binding(item.right)
            if item.op == "**":
                # The base of a power is an atom; the exponent may be a negation or a power.
                left = _wrapped(item.left, left_binding < _ATOM)
                right = _wrapped(item.right, right_binding < _UNARY)
                stack.extend(reversed([*left, "^", *right]))
                continue
            binding = _BINDING[item.op]
            # Only subtraction and division care about how their right operand is grouped.
            right_parens = right_binding < binding or (
                right_binding == binding and item.op in ("-", "/")
            )
            left = _wrapped(item.left, left_binding < binding)
            right = _wrapped(item.right, right_parens)
            stack.extend(reversed([*left, f" {_SYMBOLS[item.op]} ", *right]))
    return "".join(parts)


def _wrapped(node: Expression, parenthesise: bool) -> list[Expression | str]:
    return ["(", node, ")"] if parenthesise else [node]


def component_names(node: Expression) -> tuple[str, ...]:
    """The component names of an expression, each once, in the order they are written.

    Example:
        >>> from torchtally.formula import Component, Operation, component_names
        >>> a, b = Component('A'), Component('B')
        >>> component_names(Operation('*', b, Operation('+', a, b)))
        ('B', 'A')
    """
    names: dict[str, None] = {}
    for item in _postorder(node):
        if isinstance(item, Component):
            names.setdefault(item.name)
    return tuple(names)


# -- directions --------------------------------------------------------------------------------


def _describe(direction: bool | None) -> str:
    return "higher is better" if direction else "lower is better"


def _flip(direction: bool | None) -> bool | None:
    return None if direction is None else not direction


def _sign(node: Expression) -> float | None:
    """For a constant or a schedule: a value with its sign (``None`` for anything else).

    A schedule is one-signed (see :mod:`torchtally.schedules`): its value farthest from 0
    stands for it, so a schedule between -1 and 0 counts as negative.
    """
    if isinstance(node, Constant):
        return float(node.value)
    if isinstance(node, Scheduled):
        low, high = node.factor.low, node.factor.high
        return low if high <= 0 else high
    return None


def _may_be_zero(node: Expression) -> bool:
    """Whether a constant or a schedule is (or may become) 0."""
    if isinstance(node, Scheduled):
        return node.factor.low <= 0 <= node.factor.high
    return isinstance(node, Constant) and node.value == 0


def _refuse(node: Operation, left: bool | None, right: bool | None) -> FormulaError:
    """The error for two operands that point in opposite directions."""
    op, first, second = node.op, render(node.left), render(node.right)
    written = _describe(right if op in ("+", "*", "**") else not right)
    phrase, reason, instead = {
        "+": (f"add {first} ({_describe(left)}) and {second} ({written})", "", "-"),
        "-": (
            f"subtract {second} ({written}) from {first} ({_describe(left)})",
            f"subtraction flips the direction of {second}, so ",
            "+",
        ),
        "*": (f"multiply {first} ({_describe(left)}) by {second} ({written})", "", "/"),
        "/": (
            f"divide {first} ({_describe(left)}) by {second} ({written})",
            "a loss in a denominator flips its direction, so ",
            "*",
        ),
        "**": (
            f"raise {first} ({_describe(left)}) to the power {second} ({written})",
            "",
            "",
        ),
    }[op]
    # The same operands with the other operator agree: suggest it.
    other = (
        Operation("**", node.left, Negation(node.right))
        if op == "**"
        else Operation(instead, node.left, node.right)
    )
    return FormulaError(
        f"{render(node)}: cannot {phrase}: {reason}the two point in opposite directions and "
        f"the result would improve as one of them gets worse; write {render(other)} "
        f"instead, or change the higher_is_better of one of them"
    )


def _agree(node: Operation, left: bool | None, right: bool | None) -> bool | None:
    if left is None or right is None or left == right:
        return right if left is None else left
    raise _refuse(node, left, right)


def combine_directions(node: Operation | Negation, *directions: bool | None) -> bool | None:
    """The direction of ``node`` from its operands' directions (one step of :func:`direction`).

    Args:
        node: the operation (its operands are only inspected for constants
            and schedules, and rendered in error messages).
        *directions: the operands' directions (one for a negation, two for an operation).

    Raises:
        FormulaError: see :func:`direction`.

    Example:
        >>> from torchtally.formula import Component, Constant, Operation, combine_directions
        >>> combine_directions(Operation('*', Constant(-2), Component('CE')), None, False)
        True
    """
    if isinstance(node, Negation):
        return _flip(directions[0])
    left, right = directions
    op = node.op
    if op == "+":
        return _agree(node, left, right)
    if op == "-":
        return _agree(node, left, _flip(right))
    constant_left, constant_right = _sign(node.left), _sign(node.right)
    if op == "*":
        if constant_left is not None:
            return _flip(right) if constant_left < 0 else right
        if constant_right is not None:
            return _flip(left) if constant_right < 0 else left
        return _agree(node, left, right)
    if op == "/":
        if constant_right is not None:
            if _may_be_zero(node.right):
                what = "a schedule that may be 0" if isinstance(node.right, Scheduled) else "0"
                raise FormulaError(f"{render(node)}: division by {what}")
            return _flip(left) if constant_right < 0 else left
        if constant_left is not None:  # c / loss: the inverse flips, a negative c flips back
            return right if constant_left < 0 else _flip(right)
        return _agree(node, left, _flip(right))
    # op == "**"
    if constant_right is not None:
        return _flip(left) if constant_right < 0 else left
    if constant_left is not None:
        if isinstance(node.left, Scheduled):
            raise FormulaError(
                f"{render(node)}: a schedule cannot be the base of a power with a loss exponent "
                f"(whether the result grows with the loss would change as the schedule moves)"
            )
        if constant_left <= 0:
            raise FormulaError(
                f"{render(node)}: the base of a power with a loss exponent must be a positive "
                f"constant (a non-positive base has no real power for fractional exponents), "
                f"found {constant_left!r}"
            )
        return _flip(right) if constant_left < 1 else right
    return _agree(node, left, right)


def direction(node: Expression, directions: Mapping[str, bool]) -> bool | None:
    """Whether a higher value of the expression is better (``None``: constants only).

    The rules follow the algebra, assuming positive component values:
    negation flips the direction; subtraction adds the negation and division
    multiplies by the inverse (so the right operand is flipped); a negative
    constant (or schedule) factor or divisor flips, and so does a negative
    constant exponent. ``c ** loss`` keeps the loss's direction for ``c >= 1``
    and flips it for ``0 < c < 1``; ``loss ** loss`` is treated like a
    product. Constants and schedules have no direction. Adding or
    multiplying two operands that point in opposite directions is refused.

    Args:
        node: the expression.
        directions: ``higher_is_better`` of every component, by name.

    Raises:
        FormulaError: two operands point in opposite directions, a value is
            divided by zero (or by a schedule that may be zero), or the base
            of a power with a loss exponent is not a positive constant.

    Example:
        >>> from torchtally.formula import Component, Constant, Operation, direction
        >>> ce, acc = Component('CE'), Component('Accuracy')
        >>> direction(Operation('-', ce, acc), {'CE': False, 'Accuracy': True})
        False
        >>> direction(Operation('/', Constant(1), ce), {'CE': False})
        True
    """
    found: list[bool | None] = []
    for item in _postorder(node):
        if isinstance(item, Component):
            found.append(directions[item.name])
        elif isinstance(item, (Constant, Scheduled)):
            found.append(None)
        elif isinstance(item, Negation):
            found.append(combine_directions(item, found.pop()))
        else:
            right = found.pop()
            found.append(combine_directions(item, found.pop(), right))
    return found[0]


# -- evaluation --------------------------------------------------------------------------------


def _negate(operand: Any, _unused: Any) -> Any:
    return -operand


_FUNCTIONS: Final[dict[str, Callable[[Any, Any], Any]]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
    "**": operator.pow,
}


@dataclass(frozen=True)
class Program:
    """A compiled expression: a flat list of steps over numbered registers.

    Registers hold the constants, then the schedules' values, then the
    component values (each component once, however often it is written),
    then one result per step. Running it is a loop over ``steps``: no
    recursion, no type dispatch, no checks. Plain data (module-level
    functions and numbers), so it pickles.

    Attributes:
        constants: the constants' values, in registers ``0 ..``.
        factors: the schedules, in the registers after the constants.
        names: the components, in the registers after the schedules.
        steps: ``(function, first register, second register)`` per operation.
        result: the register holding the value of the whole expression.

    Example:
        >>> import torch
        >>> from torchtally.formula import Component, Constant, Operation, compile_expression
        >>> program = compile_expression(Operation('*', Constant(2), Component('MAE')))
        >>> program.run({'MAE': torch.tensor(1.5)})
        tensor(3.)
    """

    constants: tuple[int | float, ...]
    factors: tuple[Factor, ...]
    names: tuple[str, ...]
    steps: tuple[tuple[Callable[[Any, Any], Any], int, int], ...]
    result: int

    def run(self, values: Mapping[str, Any], factors: Sequence[Any] = ()) -> Any:
        """Evaluate the expression with the component ``values`` (tensors or numbers).

        Args:
            values: every component's value, by name.
            factors: the schedules' current values, in the order of :attr:`factors`.

        Example:
            >>> from torchtally.formula import Component, Negation, compile_expression
            >>> compile_expression(Negation(Component('A'))).run({'A': 3.0})
            -3.0
        """
        return self.run_list([values[name] for name in self.names], factors)

    def run_list(self, values: Sequence[Any], factors: Sequence[Any] = ()) -> Any:
        """Evaluate with the component values given in the order of :attr:`names`."""
        registers = [*self.constants, *factors, *values]
        for function, first, second in self.steps:
            registers.append(function(registers[first], registers[second]))
        return registers[self.result]


def compile_expression(node: Expression) -> Program:
    """The evaluation order of an expression, as a :class:`Program`.

    Example:
        >>> from torchtally.formula import Component, Constant, Operation, compile_expression
        >>> program = compile_expression(Operation('*', Constant(2), Component('A')))
        >>> program.run({'A': 1.5}), len(program.steps)
        (3.0, 1)
    """
    order = list(_postorder(node))
    constants = [item.value for item in order if isinstance(item, Constant)]
    factor_slots: dict[Factor, int] = {}  # each schedule once, in the order it is written
    for item in order:
        if isinstance(item, Scheduled):
            factor_slots.setdefault(item.factor, len(factor_slots))
    factors = list(factor_slots)
    names = component_names(node)
    offset_factors = len(constants)
    offset_names = offset_factors + len(factors)
    slots = {name: offset_names + index for index, name in enumerate(names)}
    first_step = offset_names + len(names)
    steps: list[tuple[Callable[[Any, Any], Any], int, int]] = []
    registers: list[int] = []
    next_constant = 0
    for item in order:
        if isinstance(item, Component):
            registers.append(slots[item.name])
        elif isinstance(item, Constant):
            registers.append(next_constant)
            next_constant += 1
        elif isinstance(item, Scheduled):
            registers.append(offset_factors + factor_slots[item.factor])
        elif isinstance(item, Negation):
            operand = registers.pop()
            steps.append((_negate, operand, operand))
            registers.append(first_step + len(steps) - 1)
        else:
            right = registers.pop()
            steps.append((_FUNCTIONS[item.op], registers.pop(), right))
            registers.append(first_step + len(steps) - 1)
    return Program(tuple(constants), tuple(factors), names, tuple(steps), registers[0])

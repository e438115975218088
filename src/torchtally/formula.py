"""The expression tree of composed losses: rendering, directions and evaluation.

A loss expression is plain data: frozen dataclasses (:class:`Component`,
:class:`Constant`, :class:`Negation`, :class:`Operation`) that pickle,
deep-copy, compare by value and print. Three functions read a tree:

- :func:`render` writes the formula with the fewest parentheses that keep its
  meaning (``[MSE]^2 + 0.5 x [MAE]``);
- :func:`direction` works out whether a higher value is better, refusing
  combinations of values that point in opposite directions;
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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from torchtally.errors import FormulaError

__all__ = [
    "OPERATORS",
    "Component",
    "Constant",
    "Expression",
    "Negation",
    "Operation",
    "Program",
    "compile_expression",
    "component_names",
    "direction",
    "render",
]

OPERATORS: Final = ("+", "-", "*", "/", "**")
"""The binary operators of an :class:`Operation`, as Python writes them."""

_SYMBOLS: Final = {"+": "+", "-": "-", "*": "x", "/": "/", "**": "^"}

# Binding strength, as in Python's grammar: a + b < a * b < -a < a ** b < atoms.
_ADDITIVE, _MULTIPLICATIVE, _UNARY, _POWER, _ATOM = 1, 2, 3, 4, 5
_BINDING: Final = {"+": _ADDITIVE, "-": _ADDITIVE, "*": _MULTIPLICATIVE, "/": _MULTIPLICATIVE}


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
    """A number in an expression: a finite Python ``int`` or ``float`` (never ``bool``).

    Raises:
        FormulaError: the value is not a finite int or float.

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
                f"{type(self.value).__name__} {self.value!r}"
            )
        if not math.isfinite(self.value):
            raise FormulaError(f"a loss expression takes finite constants, found {self.value!r}")


@dataclass(frozen=True)
class Negation:
    """``-operand``.

    Example:
        >>> from torchtally.formula import Component, Negation, render
        >>> render(Negation(Component('Accuracy')))
        '-[Accuracy]'
    """

    operand: Expression


@dataclass(frozen=True)
class Operation:
    """``left <op> right`` for ``op`` one of ``+ - * / **`` (operands in the written order).

    Raises:
        FormulaError: ``op`` is not one of :data:`OPERATORS`.

    Example:
        >>> from torchtally.formula import Component, Operation, render
        >>> render(Operation('/', Component('A'), Component('B')))
        '[A] / [B]'
    """

    op: str
    left: Expression
    right: Expression

    def __post_init__(self) -> None:
        if self.op not in OPERATORS:
            raise FormulaError(f"unknown operator {self.op!r}; expected one of {OPERATORS}")


Expression = Component | Constant | Negation | Operation
"""A node of a loss expression tree."""


# -- rendering -------------------------------------------------------------------------------


def _binding(node: Expression) -> int:
    if isinstance(node, Component):
        return _ATOM
    if isinstance(node, Constant):
        # A negative number is written with a unary minus, and binds like one: (-2)^[A].
        return _UNARY if repr(node.value).startswith("-") else _ATOM
    if isinstance(node, Negation):
        return _UNARY
    return _POWER if node.op == "**" else _BINDING[node.op]


def _wrap(node: Expression, parenthesise: bool) -> str:
    text = render(node)
    return f"({text})" if parenthesise else text


def render(node: Expression) -> str:
    """The formula of an expression, with the fewest parentheses that keep its meaning.

    Leaves are ``[name]``, constants are written as Python prints them,
    ``x`` is multiplication and ``^`` a power. Parentheses follow Python's
    grammar (a power binds tighter than a unary minus and groups to the
    right), except that regrouping an associative chain needs none:
    ``a + (b - c)`` is written ``[A] + [B] - [C]`` and ``a x (b / c)`` is
    written ``[A] x [B] / [C]``.

    Example:
        >>> from torchtally.formula import Component, Negation, Operation, render
        >>> a, b, c = Component('A'), Component('B'), Component('C')
        >>> render(Operation('-', a, Operation('-', b, c)))
        '[A] - ([B] - [C])'
        >>> render(Operation('**', Negation(a), Operation('**', b, c)))
        '(-[A])^[B]^[C]'
    """
    if isinstance(node, Component):
        return f"[{node.name}]"
    if isinstance(node, Constant):
        return repr(node.value)
    if isinstance(node, Negation):
        return "-" + _wrap(node.operand, _binding(node.operand) < _UNARY)
    left_binding, right_binding = _binding(node.left), _binding(node.right)
    if node.op == "**":
        # The base of a power is an atom; the exponent may carry a unary minus or be a power.
        return (
            f"{_wrap(node.left, left_binding < _ATOM)}^{_wrap(node.right, right_binding < _UNARY)}"
        )
    binding = _BINDING[node.op]
    # Only subtraction and division care about how their right operand is grouped.
    right_parens = right_binding < binding or (right_binding == binding and node.op in ("-", "/"))
    left = _wrap(node.left, left_binding < binding)
    return f"{left} {_SYMBOLS[node.op]} {_wrap(node.right, right_parens)}"


def component_names(node: Expression) -> tuple[str, ...]:
    """The component names of an expression, each once, in the order they are written.

    Example:
        >>> from torchtally.formula import Component, Operation, component_names
        >>> a, b = Component('A'), Component('B')
        >>> component_names(Operation('*', b, Operation('+', a, b)))
        ('B', 'A')
    """
    names: dict[str, None] = {}
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, Component):
            names.setdefault(item.name)
        elif isinstance(item, Negation):
            stack.append(item.operand)
        elif isinstance(item, Operation):
            stack.extend((item.right, item.left))
    return tuple(names)


# -- directions ------------------------------------------------------------------------------


def _describe(direction: bool | None) -> str:
    return "higher is better" if direction else "lower is better"


def _flip(direction: bool | None) -> bool | None:
    return None if direction is None else not direction


def _agree(node: Operation, left: bool | None, right: bool | None) -> bool | None:
    """The common direction of two operands; refused when they point opposite ways.

    ``right`` is the right operand's direction as the operation uses it: flipped
    for subtraction and division.
    """
    if left is None or right is None or left == right:
        return right if left is None else left
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
    raise FormulaError(
        f"{render(node)}: cannot {phrase}: {reason}the two point in opposite directions and "
        f"the result would improve as one of them gets worse; write {render(other)} "
        f"instead, or change the higher_is_better of one of them"
    )


def direction(node: Expression, directions: Mapping[str, bool]) -> bool | None:
    """Whether a higher value of the expression is better (``None``: a bare constant).

    The rules follow the algebra, assuming positive component values:
    negation flips the direction; subtraction adds the negation and division
    multiplies by the inverse (so the right operand is flipped); a negative
    constant factor or divisor flips, and so does a negative constant
    exponent. ``c ** loss`` keeps the loss's direction for ``c >= 1`` and
    flips it for ``0 < c < 1``; ``loss ** loss`` is treated like a product.
    Constants have no direction. Adding or multiplying two operands that
    point in opposite directions is refused.

    Args:
        node: the expression.
        directions: ``higher_is_better`` of every component, by name.

    Raises:
        FormulaError: two operands point in opposite directions, a constant
            is divided by zero, or a constant base of a power is not positive.

    Example:
        >>> from torchtally.formula import Component, Constant, Operation, direction
        >>> ce, acc = Component('CE'), Component('Accuracy')
        >>> direction(Operation('-', ce, acc), {'CE': False, 'Accuracy': True})
        False
        >>> direction(Operation('/', Constant(1), ce), {'CE': False})
        True
    """
    if isinstance(node, Component):
        return directions[node.name]
    if isinstance(node, Constant):
        return None
    if isinstance(node, Negation):
        return _flip(direction(node.operand, directions))
    left, right = direction(node.left, directions), direction(node.right, directions)
    op = node.op
    if op == "+":
        return _agree(node, left, right)
    if op == "-":
        return _agree(node, left, _flip(right))
    constant_left = node.left.value if isinstance(node.left, Constant) else None
    constant_right = node.right.value if isinstance(node.right, Constant) else None
    if op == "*":
        if constant_left is not None:
            return _flip(right) if constant_left < 0 else right
        if constant_right is not None:
            return _flip(left) if constant_right < 0 else left
        return _agree(node, left, right)
    if op == "/":
        if constant_right is not None:
            if constant_right == 0:
                raise FormulaError(f"{render(node)}: division by the constant 0")
            return _flip(left) if constant_right < 0 else left
        if constant_left is not None:  # c / loss: the inverse flips, a negative c flips back
            return right if constant_left < 0 else _flip(right)
        return _agree(node, left, _flip(right))
    # op == "**"
    if constant_right is not None:
        return _flip(left) if constant_right < 0 else left
    if constant_left is not None:
        if constant_left <= 0:
            raise FormulaError(
                f"{render(node)}: the base of a power with a loss exponent must be a positive "
                f"constant (a non-positive base has no real power for fractional exponents), "
                f"found {constant_left!r}"
            )
        return _flip(right) if constant_left < 1 else right
    return _agree(node, left, right)


# -- evaluation ------------------------------------------------------------------------------


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

    Registers hold the constants, then the component values (each component
    once, however often it is written), then one result per step. Running it
    is a loop over ``steps``: no recursion, no type dispatch, no checks.
    Plain data (module-level functions and numbers), so it pickles.

    Attributes:
        constants: the constants' values, in registers ``0 ..``.
        names: the components, in the registers after the constants.
        steps: ``(function, first register, second register)`` per operation.
        result: the register holding the value of the whole expression.

    Example:
        >>> import torch
        >>> import torchtally as tt
        >>> loss = 2 * tt.Loss(lambda o, t: (o - t).abs(), 'MAE')
        >>> program = loss._program
        >>> program.run({'MAE': torch.tensor(1.5)})
        tensor(3.)
    """

    constants: tuple[int | float, ...]
    names: tuple[str, ...]
    steps: tuple[tuple[Callable[[Any, Any], Any], int, int], ...]
    result: int

    def run(self, values: Mapping[str, Any]) -> Any:
        """Evaluate the expression with the component ``values`` (tensors or numbers).

        Example:
            >>> from torchtally.formula import Component, Negation, compile_expression
            >>> compile_expression(Negation(Component('A'))).run({'A': 3.0})
            -3.0
        """
        registers = [*self.constants, *[values[name] for name in self.names]]
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
    constants: list[int | float] = []
    names = component_names(node)
    slots = {name: index for index, name in enumerate(names)}
    steps: list[tuple[Callable[[Any, Any], Any], int, int]] = []

    def count_constants(item: Expression) -> None:
        if isinstance(item, Constant):
            constants.append(item.value)
        elif isinstance(item, Negation):
            count_constants(item.operand)
        elif isinstance(item, Operation):
            count_constants(item.left)
            count_constants(item.right)

    count_constants(node)
    offset = len(constants)
    constant_slot = iter(range(offset))

    def emit(item: Expression) -> int:
        if isinstance(item, Component):
            return offset + slots[item.name]
        if isinstance(item, Constant):
            return next(constant_slot)
        if isinstance(item, Negation):
            operand = emit(item.operand)
            steps.append((_negate, operand, operand))
        else:
            left = emit(item.left)
            right = emit(item.right)
            steps.append((_FUNCTIONS[item.op], left, right))
        return offset + len(names) + len(steps) - 1

    result = emit(node)
    return Program(tuple(constants), names, tuple(steps), result)

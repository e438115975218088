"""Composite nodes and the forms of an expression tree: walked, flattened and written.

:class:`Negation` and :class:`Operation` combine leaves (and each other)
into an :data:`Expression`. Everything that reads a tree walks it with an
explicit stack, never by recursion, so a composition of ten thousand terms
renders, compiles, copies and pickles like a small one.

A tree has two forms, and the composite nodes are built on both: the flat
:func:`postfix` form (read back by :func:`from_postfix`), by which they
compare, hash and pickle, and the written formula (:func:`render`, with the
fewest parentheses that keep its meaning), by which they print. The forms
live here, beside the nodes that use them, so that no two modules import
each other.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Final

from torchtally.errors import FormulaError
from torchtally.formula._leaves import Component, Constant, Scheduled

__all__ = [
    "OPERATORS",
    "Expression",
    "Negation",
    "Operation",
    "Token",
    "component_names",
    "from_postfix",
    "postfix",
    "postorder",
    "render",
]

OPERATORS: Final = ("+", "-", "*", "/", "**")
"""The binary operators of an :class:`Operation`, as Python writes them."""

_SYMBOLS: Final = {"+": "+", "-": "-", "*": "x", "/": "/", "**": "^"}
_NEGATE: Final = "neg"

# Binding strength, as in Python's grammar: a + b < a * b < -a < a ** b < atoms.
_ADDITIVE, _MULTIPLICATIVE, _UNARY, _POWER, _ATOM = 1, 2, 3, 4, 5
_BINDING: Final = {"+": _ADDITIVE, "-": _ADDITIVE, "*": _MULTIPLICATIVE, "/": _MULTIPLICATIVE}


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


def postorder(node: Expression) -> Iterator[Expression]:
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
    for item in postorder(node):
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
        return _UNARY if node.text.startswith("-") else _ATOM
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
        elif isinstance(item, (Constant, Scheduled)):
            parts.append(item.text)  # written when the leaf was made
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
    for item in postorder(node):
        if isinstance(item, Component):
            names.setdefault(item.name)
    return tuple(names)

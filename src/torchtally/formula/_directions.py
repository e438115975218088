"""Directions: whether a higher value of an expression is better.

:func:`direction` works out the direction of a whole tree from its
components' ``higher_is_better``, refusing combinations of values that
point in opposite directions; :func:`combine_directions` is one step of it
(one node), which the loss algebra runs once per operator.
"""

from __future__ import annotations

from collections.abc import Mapping

from torchtally.errors import FormulaError
from torchtally.formula._leaves import Component, Constant, Scheduled
from torchtally.formula._tree import Expression, Negation, Operation, postorder, render

__all__ = ["combine_directions", "direction"]


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
    for item in postorder(node):
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

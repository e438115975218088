"""Directions: whether a higher value of an expression is better.

:func:`direction` works out the direction of a whole tree from its
components' ``higher_is_better``, refusing combinations of values that
point in opposite directions; :func:`combine_directions` is one step of it
(one node), which the loss algebra runs once per operator.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torchtally.errors import FormulaError
from torchtally.formula._leaves import Component, Constant, Scheduled
from torchtally.formula._tree import Expression, Negation, Operation, postorder, render

__all__ = [
    "Sign",
    "combine_directions",
    "combine_signed",
    "direction",
    "signed",
    "value_sign",
]

Sign = int | None
"""A value's sign given positive components: 1, -1, 0 (a zero constant) or ``None`` (either)."""


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


def _refuse(
    node: Operation, left: bool | None, right: bool | None, signs: tuple[Sign, Sign] = (1, 1)
) -> FormulaError:
    """The error for two operands whose effects on the result point in opposite directions."""
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
        "**": (f"raise {first} ({_describe(left)}) to the power {second} ({written})", "", ""),
    }[op]
    negative = [
        render(operand)
        for operand, sign in zip((node.left, node.right), signs, strict=True)
        if sign == -1
    ]
    conflict = "the two point in opposite directions and "
    if negative:  # a negative factor turns the other around: the operands may agree
        reason = (
            f"{reason}{' and '.join(negative)} {'is' if len(negative) == 1 else 'are'} negative "
            f"(given positive components), which turns the direction of the other factor "
            f"around, so "
        )
        conflict = ""
    # The same operands with the other operator agree: suggest it (a power has none).
    other = (
        f"write {render(Operation(instead, node.left, node.right))} instead, or " if instead else ""
    )
    return FormulaError(
        f"{render(node)}: cannot {phrase}: {reason}{conflict}the result would improve as one "
        f"of them gets worse; {other}change the higher_is_better of one of them"
    )


def _agree(node: Operation, left: bool | None, right: bool | None) -> bool | None:
    if left is None or right is None or left == right:
        return right if left is None else left
    raise _refuse(node, left, right)


def _leaf_sign(node: Expression) -> Sign:
    """The sign of a leaf: a component is positive, a constant or a schedule its own."""
    value = _sign(node)
    if value is None:
        return 1
    return 0 if value == 0 else (1 if value > 0 else -1)


def _negated(sign: Sign) -> Sign:
    return None if sign is None else -sign


def _product(left: Sign, right: Sign) -> Sign:
    if left == 0 or right == 0:
        return 0
    return None if left is None or right is None else left * right


def _sum(left: Sign, right: Sign) -> Sign:
    if left == 0 or right == 0:
        return right if left == 0 else left
    return left if left == right else None


def _unknown(node: Operation, operand: Expression, what: str) -> FormulaError:
    return FormulaError(
        f"{render(node)}: cannot tell whether a higher value is better: {render(operand)} may "
        f"be positive or negative (given positive components), and {what}; rewrite the "
        f"formula, or build a CompositionalLoss from a criterion with an explicit "
        f"higher_is_better"
    )


def _scaled(direction: bool | None, sign: Sign, node: Operation, by: Expression) -> bool | None:
    """The direction of a factor in a product whose other factor ``by`` has ``sign``."""
    if direction is None or sign in (1, 0):
        return direction
    if sign is None:
        raise _unknown(node, by, "the direction of the product depends on its sign")
    return not direction


def _integral(node: Expression) -> bool:
    return isinstance(node, Constant) and float(node.value).is_integer()


def _power(node: Operation, base: bool | None, sign: Sign) -> bool | None:
    """The direction of ``base ** c`` for a constant or scheduled exponent ``c``."""
    exponent = _sign(node.right)
    assert exponent is not None
    flipped = _flip(base) if exponent < 0 else base
    if sign in (1, 0) or exponent == 0 or base is None:
        return flipped
    if not _integral(node.right):
        if sign is None:
            raise _unknown(node, node.left, "a fractional power of a negative value is not real")
        raise FormulaError(
            f"{render(node)}: {render(node.left)} is negative (given positive components), and "
            f"a fractional or scheduled power of a negative value is not real"
        )
    if int(exponent) % 2 == 1:  # an odd power keeps the order on both sides of 0
        return flipped
    if sign is None:
        raise _unknown(node, node.left, "an even power turns its order around below 0")
    return _flip(flipped)


def _combined_sign(node: Operation, left: Sign, right: Sign) -> Sign:
    """The sign of ``node`` from its operands' signs."""
    if node.op in ("+", "-"):
        return _sum(left, right if node.op == "+" else _negated(right))
    if node.op in ("*", "/"):
        return _product(left, right)
    if left in (1, 0) or _sign(node.right) is None:  # a positive base (or none: refused)
        return 1
    exponent = float(_sign(node.right) or 0)
    if exponent == 0 or (_integral(node.right) and int(exponent) % 2 == 0):
        return 1
    return left  # an odd power keeps the sign (a fractional one is refused)


def value_sign(node: Expression) -> Sign:
    """The sign of an expression's value, given positive components (see :func:`combine_signed`).

    Example:
        >>> from torchtally.formula import Component, Constant, Negation, Operation, value_sign
        >>> value_sign(Operation('**', Negation(Component('A')), Constant(3)))
        -1
    """
    found: list[Sign] = []
    for item in postorder(node):
        if isinstance(item, Negation):
            found.append(_negated(found.pop()))
        elif isinstance(item, Operation):
            right = found.pop()
            found.append(_combined_sign(item, found.pop(), right))
        else:
            found.append(_leaf_sign(item))
    return found[0]


def combine_signed(
    node: Operation | Negation, *operands: tuple[bool | None, Sign]
) -> tuple[bool | None, Sign]:
    """The direction and sign of ``node`` from its operands' (one step of :func:`signed`).

    A sign is ``1`` (positive), ``-1`` (negative), ``0`` (a zero constant)
    or ``None`` (either), given positive component values.

    Raises:
        FormulaError: see :func:`direction`.

    Example:
        >>> from torchtally.formula import Component, Negation, Operation, combine_signed
        >>> a, b = Negation(Component('A')), Negation(Component('B'))
        >>> combine_signed(Operation('*', a, b), (True, -1), (True, -1))  # (-A) x (-B) = A x B
        (False, 1)
    """
    if isinstance(node, Negation):
        ((found, sign),) = operands
        return _flip(found), _negated(sign)
    (left, left_sign), (right, right_sign) = operands
    return _operation(node, left, right, left_sign, right_sign), _combined_sign(
        node, left_sign, right_sign
    )


def _operation(
    node: Operation, left: bool | None, right: bool | None, left_sign: Sign, right_sign: Sign
) -> bool | None:
    """The direction of an operation (see :func:`combine_signed`)."""
    op = node.op
    if op == "+":
        return _agree(node, left, right)
    if op == "-":
        return _agree(node, left, _flip(right))
    if op == "*" or op == "/":
        if op == "/" and _sign(node.right) is not None and _may_be_zero(node.right):
            what = "a schedule that may be 0" if isinstance(node.right, Scheduled) else "0"
            raise FormulaError(f"{render(node)}: division by {what}")
        # The product rule: each factor's direction, flipped where the other factor is
        # negative; a divisor is the factor 1 / right (the other way, the same sign).
        first = _scaled(left, right_sign, node, node.right)
        second = _scaled(right if op == "*" else _flip(right), left_sign, node, node.left)
        if first is not None and second is not None and first != second:
            raise _refuse(node, left, right, (left_sign, right_sign))
        return second if first is None else first
    # op == "**"
    if _sign(node.right) is not None:
        return _power(node, left, left_sign)
    constant_left = _sign(node.left)
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
    # loss ** loss: taken like a product (a convention that holds for a base above 1), for a
    # positive base and a positive exponent only
    for operand, sign in ((node.left, left_sign), (node.right, right_sign)):
        if sign != 1:
            raise FormulaError(
                f"{render(node)}: cannot tell whether a higher value is better: "
                f"{render(operand)} {'is negative' if sign == -1 else 'may be negative'} (given "
                f"positive components), and a power with losses in both its base and its "
                f"exponent has a direction only for a positive base and exponent; build a "
                f"CompositionalLoss from a criterion with an explicit higher_is_better"
            )
    return _agree(node, left, right)


def combine_directions(
    node: Operation | Negation, *directions: bool | None, signs: Sequence[Sign] | None = None
) -> bool | None:
    """The direction of ``node`` from its operands' directions (one step of :func:`direction`).

    Args:
        node: the operation (its operands are inspected for constants and
            schedules, and rendered in error messages).
        *directions: the operands' directions (one for a negation, two for an operation).
        signs: the operands' signs (see :func:`combine_signed`); by default
            worked out from the operands' trees (:func:`signed`).

    Raises:
        FormulaError: see :func:`direction`.

    Example:
        >>> from torchtally.formula import Component, Constant, Operation, combine_directions
        >>> combine_directions(Operation('*', Constant(-2), Component('CE')), None, False)
        True
    """
    operands = [node.operand] if isinstance(node, Negation) else [node.left, node.right]
    if signs is None:
        signs = [value_sign(operand) for operand in operands]
    return combine_signed(node, *zip(directions, signs, strict=True))[0]


def signed(node: Expression, directions: Mapping[str, bool]) -> tuple[bool | None, Sign]:
    """The direction of the expression (see :func:`direction`) and its sign.

    Example:
        >>> from torchtally.formula import Component, Negation, Operation, signed
        >>> signed(Operation('-', Component('CE'), Component('Acc')), {'CE': False, 'Acc': True})
        (False, None)
    """
    found: list[tuple[bool | None, Sign]] = []
    for item in postorder(node):
        if isinstance(item, Component):
            found.append((directions[item.name], 1))
        elif isinstance(item, (Constant, Scheduled)):
            found.append((None, _leaf_sign(item)))
        elif isinstance(item, Negation):
            found.append(combine_signed(item, found.pop()))
        else:
            right = found.pop()
            found.append(combine_signed(item, found.pop(), right))
    return found[0]


def direction(node: Expression, directions: Mapping[str, bool]) -> bool | None:
    """Whether a higher value of the expression is better (``None``: constants only).

    The rules follow the algebra, assuming positive component values, and
    track each subexpression's sign (:func:`signed`): negation flips the
    direction and the sign; subtraction adds the negation and division
    multiplies by the inverse (so the right operand is flipped); in a
    product each factor's direction is turned around where the other factor
    is negative (a negative constant or schedule included), and a negative
    constant exponent flips. An even power of a negative value flips once
    more, an odd power keeps the order. ``c ** loss`` keeps the loss's
    direction for ``c >= 1`` and flips it for ``0 < c < 1``; ``loss ** loss``
    is treated like a product, for a positive base and exponent only.
    Constants and schedules have no direction. Adding or multiplying two
    operands whose effects point in opposite directions is refused, and so
    is a direction that depends on a sign that is not known.

    Args:
        node: the expression.
        directions: ``higher_is_better`` of every component, by name.

    Raises:
        FormulaError: two operands point in opposite directions, the
            direction depends on a sign that is not known (a factor or an even
            power of ``ce - accuracy``), a power of a negative value is not
            real, a value is divided by zero (or by a schedule that may be
            zero), or the base of a power with a loss exponent is not a
            positive constant.

    Example:
        >>> from torchtally.formula import Component, Constant, Operation, direction
        >>> ce, acc = Component('CE'), Component('Accuracy')
        >>> direction(Operation('-', ce, acc), {'CE': False, 'Accuracy': True})
        False
        >>> direction(Operation('/', Constant(1), ce), {'CE': False})
        True
    """
    return signed(node, directions)[0]

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

import inspect

from torchtally.formula._directions import (
    Sign,
    combine_directions,
    combine_signed,
    direction,
    signed,
    value_sign,
)
from torchtally.formula._leaves import Component, Constant, Factor, Scheduled, describe_integer
from torchtally.formula._program import Program, _negate, compile_expression
from torchtally.formula._tree import (
    OPERATORS,
    Expression,
    Negation,
    Operation,
    component_names,
    from_postfix,
    postfix,
    render,
)
from torchtally.formula._tree import Token as Token  # documented, not in __all__ (as before)

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
    "Sign",
    "combine_directions",
    "combine_signed",
    "compile_expression",
    "component_names",
    "describe_integer",
    "direction",
    "from_postfix",
    "postfix",
    "render",
    "signed",
    "value_sign",
]

# Documented, pickled and shown under the package's name, as before it was split: pickles
# name the nodes, Program, from_postfix and the steps' _negate by ``torchtally.formula``.
# The methods of the classes move with them, so that their examples run as this
# package's doctests.
for _public in (
    Component,
    Constant,
    Factor,
    Negation,
    Operation,
    Program,
    Scheduled,
    combine_directions,
    combine_signed,
    compile_expression,
    component_names,
    describe_integer,
    direction,
    from_postfix,
    postfix,
    render,
    signed,
    value_sign,
    _negate,
):
    if inspect.isclass(_public):
        for _member in vars(_public).values():
            if inspect.isfunction(_member) and _member.__module__ == _public.__module__:
                _member.__module__ = __name__
    _public.__module__ = __name__

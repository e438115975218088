"""Evaluation: an expression compiled into a :class:`Program`, a flat evaluation order.

:func:`compile_expression` turns a tree into registers and steps once;
losses run the :class:`Program` on every batch (no recursion, no type
dispatch, no checks).
"""

# No ``from __future__ import annotations`` here: Program is shown as
# ``torchtally.formula.Program``, where its field annotations could not be resolved from
# strings (``typing.get_type_hints`` reads the namespace of the class's ``__module__``).

import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from torchtally.formula._leaves import Component, Constant, Factor, Scheduled
from torchtally.formula._tree import Expression, Negation, component_names, postorder

__all__ = ["Program", "compile_expression"]


def _negate(operand: Any, _unused: Any) -> Any:
    return -operand


def _power(base: Any, exponent: Any) -> Any:
    """``base ** exponent``; a tensor's int exponent is passed as the float of the same value.

    Under ``torch.compile(dynamic=True)`` an int constant of the formula is a symbolic int,
    and the gradient of a tensor's power by a symbolic int fails an internal assert of
    torch; a float exponent does not. An int up to 2**53 is a float exactly, and torch
    computes a floating tensor's power by a float or an int exponent alike.
    """
    if (
        isinstance(exponent, int)
        and not isinstance(base, (int, float))
        and -_EXACT <= exponent <= _EXACT
    ):
        return base ** float(exponent)
    return base**exponent


_EXACT: Final = 2**53


_FUNCTIONS: Final[dict[str, Callable[[Any, Any], Any]]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
    "**": _power,
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
    order = list(postorder(node))
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

"""The leaves of a loss expression: components, constants and schedules.

A leaf is plain, immutable data: :class:`Component` (a named value of the
loss, ``[name]``), :class:`Constant` (a number) and :class:`Scheduled` (a
:class:`Factor`, a weight that changes as training goes on). Leaves compare
by value, hash, pickle and print as dataclasses; the composite nodes that
combine them are in :mod:`torchtally.formula._tree`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Final, Protocol, runtime_checkable

from torchtally.errors import FormulaError

__all__ = ["Component", "Constant", "Factor", "Scheduled", "describe_integer"]

_INT64: Final = (-(2**63), 2**63 - 1)


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
    # Written once here: compiled with dynamic=True, a number read inside the graph is
    # symbolic and has no repr (a formula first written in a compiled step broke it).
    text: str = field(init=False, repr=False, compare=False)

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
        object.__setattr__(self, "text", repr(self.value))


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
    text: str = field(init=False, repr=False, compare=False)  # the label, as Constant.text

    def __post_init__(self) -> None:
        object.__setattr__(self, "text", self.factor.label)

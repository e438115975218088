"""Loss-weight schedules: factors of the loss algebra whose value moves as training goes on.

``loss = ce + tt.schedules.linear(0.0, 1.0, steps=1000) * kl`` anneals the
weight of ``kl`` from 0 to 1 over the first 1,000 calls of the loss (KL
annealing, warm-up). A schedule is plain, frozen data: it says how its value
depends on a position. The position lives in the loss that uses it (part of
its ``state_dict``, copies and pickles), so a resumed run continues exactly
where it stopped:

- ``unit='step'`` (default): the position is the number of training
  ``forward`` calls of the loss (``update``, a ``forward`` with gradients
  disabled, as in validation, and a ``forward`` on an empty batch do not
  advance it);
- ``unit='epoch'``: the position is the number of calls of the loss's
  :meth:`~torchtally.LossBase.advance_epoch`.

A schedule appears in the formula under its label
(``[CE] + linear(0→1, 1000) x [KL]``); ``loss.schedule_values()`` gives the
values the next call will use. A schedule whose values change sign is
refused: the direction of the loss would flip during training.

Example:
    >>> import torch
    >>> import torchtally as tt
    >>> mse = tt.Loss(lambda o, t: (o - t).pow(2).mean(1), 'MSE')
    >>> loss = tt.schedules.linear(0.0, 1.0, steps=4) * mse
    >>> loss.formula
    'linear(0→1, 4) x [MSE]'
    >>> tuple(float(loss(torch.ones(2, 1), torch.zeros(2, 1))) for _ in range(6))
    (0.0, 0.25, 0.5, 0.75, 1.0, 1.0)
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor
from typing_extensions import Self

from torchtally.errors import FormulaError

__all__ = ["UNITS", "Schedule", "cosine", "linear", "piecewise"]

UNITS = ("step", "epoch")
"""What moves a schedule: a loss's ``forward`` calls or its ``advance_epoch()`` calls."""


def _number(value: Any, what: str, owner: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FormulaError(f"{owner}: {what} must be a number, found {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number):
        raise FormulaError(f"{owner}: {what} must be finite, found {value!r}")
    return number


def _count(value: Any, what: str, owner: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise FormulaError(f"{owner}: {what} must be an int >= 1, found {value!r}")
    return value


def _short(value: float) -> str:
    text = repr(value)
    return text[:-2] if text.endswith(".0") else text


_Operator = Callable[["Schedule", object], Any]


def _refusing(name: str, op: str) -> tuple[_Operator, _Operator]:
    """The methods ``__name__`` and ``__rname__`` of :class:`Schedule` for the operator ``op``."""

    def method(right: bool) -> _Operator:
        def operator(self: Schedule, other: object) -> Any:
            return self._alone(other, op, right=right)

        operator.__name__ = f"__{'r' if right else ''}{name}__"
        operator.__qualname__ = f"Schedule.{operator.__name__}"
        return operator

    return method(False), method(True)


@dataclass(frozen=True)
class Schedule(ABC):
    """A weight as a function of a position (see the module documentation).

    Subclasses implement :meth:`value` (on the host) and :meth:`values` (the
    same as tensor operations, for compiled code) and their :attr:`label`.

    Attributes:
        unit: ``'step'`` or ``'epoch'``.
    """

    kind: ClassVar[str]
    unit: str = field(default="step", kw_only=True)

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise FormulaError(
                f"{self.kind}: unit must be one of {list(UNITS)}, found {self.unit!r}"
            )
        if self.low < 0 < self.high:
            raise FormulaError(
                f"{self.label}: the values change sign "
                f"({_short(self.low)} to {_short(self.high)}); "
                f"the direction of the loss would flip during training; keep a schedule "
                f"non-negative (or non-positive) and subtract instead of adding a negative weight"
            )

    @abstractmethod
    def value(self, position: int) -> float:
        """The weight at ``position`` (0 for the first call)."""

    @abstractmethod
    def values(self, position: Tensor) -> Tensor:
        """The weight at ``position`` (a float64 tensor), with tensor operations only."""

    @property
    @abstractmethod
    def label(self) -> str:
        """How formulas write the schedule."""

    @property
    @abstractmethod
    def low(self) -> float:
        """The smallest value the schedule takes."""

    @property
    @abstractmethod
    def high(self) -> float:
        """The largest value the schedule takes."""

    def _suffix(self) -> str:
        return " epochs" if self.unit == "epoch" else ""

    @abstractmethod
    def _arguments(self) -> str:
        """The arguments of the call that builds the schedule, but ``unit``."""

    def __repr__(self) -> str:
        # The call that builds it (``linear(0.0, 1.0, steps=10)``), not the private class.
        unit = f", unit={self.unit!r}" if self.unit != "step" else ""
        return f"{self.kind}({self._arguments()}{unit})"

    # -- arithmetic: a schedule is a factor of a loss, never an operand of its own ------------

    def _alone(self, other: object, op: str, *, right: bool = False) -> Any:
        """``NotImplemented`` for a loss (its operators take the schedule); else the refusal.

        Raises:
            FormulaError: ``other`` is a number, a tensor or a schedule.
        """
        if not isinstance(other, (int, float, Tensor, Schedule)):
            return NotImplemented
        shown = other.label if isinstance(other, Schedule) else f"{other!r:.40}"
        written = f"{shown} {op} {self.label}" if right else f"{self.label} {op} {shown}"
        raise FormulaError(
            f"{self.label}: cannot compute {written}: a schedule is a factor of a loss, not a "
            f"number; write the loss next to the schedule first, then the other factors "
            f"(0.1 * (schedule * kl), linear(...) * (cosine(...) * kl)), or put a constant "
            f"factor in the schedule (linear(0.0, 0.1, steps))"
        )

    # each binary operator, both ways round (``2 * schedule`` is ``__rmul__``)
    __mul__, __rmul__ = _refusing("mul", "*")
    __truediv__, __rtruediv__ = _refusing("truediv", "/")
    __add__, __radd__ = _refusing("add", "+")
    __sub__, __rsub__ = _refusing("sub", "-")
    __pow__, __rpow__ = _refusing("pow", "**")

    def __neg__(self) -> Any:
        return self._alone(-1, "*", right=True)


@dataclass(frozen=True, repr=False)
class _Ramp(Schedule):
    """From ``start`` to ``end`` over ``steps`` positions, then ``end``."""

    start: float = 0.0
    end: float = 1.0
    steps: int = 1

    @classmethod
    def checked(cls, start: Any, end: Any, steps: Any, unit: str) -> Self:
        """The schedule, its arguments checked (the errors name ``cls.kind``)."""
        return cls(
            start=_number(start, "start", cls.kind),
            end=_number(end, "end", cls.kind),
            steps=_count(steps, "steps", cls.kind),
            unit=unit,
        )

    @property
    def label(self) -> str:
        return f"{self.kind}({_short(self.start)}→{_short(self.end)}, {self.steps}{self._suffix()})"

    def _arguments(self) -> str:
        return f"{self.start!r}, {self.end!r}, steps={self.steps}"

    @property
    def low(self) -> float:
        return min(self.start, self.end)

    @property
    def high(self) -> float:
        return max(self.start, self.end)

    def _progress(self, position: int) -> float:
        return min(max(position, 0), self.steps) / self.steps

    def _progress_tensor(self, position: Tensor) -> Tensor:
        return position.to(torch.float64).clamp(0, self.steps) / self.steps

    def _between(self, weight: float) -> float:
        """``start`` moved ``weight`` (0 to 1) of the way to ``end``: exactly each at 0 and 1.

        Counted from the nearer end (as ``torch.lerp`` does): ``start + (end - start) x 1``
        need not be ``end`` in floating point.
        """
        span = self.end - self.start
        return self.start + weight * span if weight < 0.5 else self.end - span * (1 - weight)

    def _between_tensor(self, weight: Tensor) -> Tensor:
        """:meth:`_between` with tensor operations (the same numbers)."""
        span = self.end - self.start
        return torch.where(weight < 0.5, self.start + weight * span, self.end - span * (1 - weight))


@dataclass(frozen=True, repr=False)
class _Linear(_Ramp):
    kind: ClassVar[str] = "linear"

    def value(self, position: int) -> float:
        return self._between(self._progress(position))

    def values(self, position: Tensor) -> Tensor:
        return self._between_tensor(self._progress_tensor(position))


@dataclass(frozen=True, repr=False)
class _Cosine(_Ramp):
    kind: ClassVar[str] = "cosine"

    def value(self, position: int) -> float:
        return self._between((1 - math.cos(math.pi * self._progress(position))) / 2)

    def values(self, position: Tensor) -> Tensor:
        return self._between_tensor((1 - torch.cos(math.pi * self._progress_tensor(position))) / 2)


@dataclass(frozen=True, repr=False)
class _Piecewise(Schedule):
    kind: ClassVar[str] = "piecewise"
    points: tuple[tuple[int, float], ...] = ((0, 1.0),)

    def value(self, position: int) -> float:
        current = self.points[0][1]
        for start, weight in self.points:
            if start > position:
                break
            current = weight
        return current

    def values(self, position: Tensor) -> Tensor:
        starts = torch.tensor([start for start, _ in self.points], device=position.device)
        weights = torch.tensor(
            [weight for _, weight in self.points], dtype=torch.float64, device=position.device
        )
        index = torch.searchsorted(starts, position.to(starts.dtype), right=True) - 1
        return weights[index.clamp(min=0)]

    @property
    def label(self) -> str:
        points = ", ".join(f"{start}: {_short(weight)}" for start, weight in self.points)
        return f"piecewise({points}{self._suffix()})"

    def _arguments(self) -> str:
        return repr(dict(self.points))

    @property
    def low(self) -> float:
        return min(weight for _, weight in self.points)

    @property
    def high(self) -> float:
        return max(weight for _, weight in self.points)


def linear(start: float, end: float, steps: int, *, unit: str = "step") -> Schedule:
    """A weight moving in a straight line from ``start`` to ``end`` over ``steps``, then ``end``.

    Raises:
        FormulaError: non-finite values, ``steps`` not an int >= 1, an unknown
            ``unit``, or ``start`` and ``end`` of opposite signs.

    Example:
        >>> from torchtally import schedules
        >>> warm_up = schedules.linear(0.0, 1.0, steps=100)
        >>> warm_up.label, warm_up.value(0), warm_up.value(50), warm_up.value(500)
        ('linear(0→1, 100)', 0.0, 0.5, 1.0)
    """
    return _Linear.checked(start, end, steps, unit)


def cosine(start: float, end: float, steps: int, *, unit: str = "step") -> Schedule:
    """A weight moving from ``start`` to ``end`` along half a cosine over ``steps``, then ``end``.

    Raises:
        FormulaError: as :func:`linear`.

    Example:
        >>> from torchtally import schedules
        >>> decay = schedules.cosine(1.0, 0.0, steps=10, unit='epoch')
        >>> decay.label, decay.value(0), round(decay.value(5), 6), decay.value(10)
        ('cosine(1→0, 10 epochs)', 1.0, 0.5, 0.0)
    """
    return _Cosine.checked(start, end, steps, unit)


def piecewise(points: Mapping[int, float], *, unit: str = "step") -> Schedule:
    """A weight that holds ``points[k]`` from position ``k`` until the next key.

    Args:
        points: weights by the position they start at; must include 0.
        unit: ``'step'`` or ``'epoch'``.

    Raises:
        FormulaError: no point at 0, keys that are not ints from 0 to 2**63 - 1
            (positions are counted in int64), non-finite weights, or weights of
            both signs.

    Example:
        >>> from torchtally import schedules
        >>> steps = schedules.piecewise({0: 0.0, 100: 0.5, 200: 1.0})
        >>> steps.label, steps.value(99), steps.value(100), steps.value(10_000)
        ('piecewise(0: 0, 100: 0.5, 200: 1)', 0.0, 0.5, 1.0)
    """
    if not isinstance(points, Mapping) or not points:
        raise FormulaError(
            f"piecewise: expected a non-empty dict of positions to weights, found {points!r:.60}"
        )
    for start in points:
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise FormulaError(f"piecewise: positions must be ints >= 0, found {start!r}")
        if start >= 2**63:
            raise FormulaError(
                f"piecewise: positions are counted in int64 and must be below 2**63, "
                f"found {start!r}"
            )
    if 0 not in points:
        raise FormulaError(
            f"piecewise: the points must say the weight at position 0, found {sorted(points)}"
        )
    ordered = tuple(
        (start, _number(points[start], f"the weight at {start}", "piecewise"))
        for start in sorted(points)
    )
    return _Piecewise(points=ordered, unit=unit)

"""The pieces of the loss algebra: the component table, operands, and the rules on names.

Composing two losses must cost about the same whatever their sizes, so that
``sum()`` of ten thousand losses builds in linear time: the expression is a
new node over the operands' trees, its direction follows from the operands'
(:func:`~torchtally.formula.combine_directions`), and the component table
(:class:`ComponentTable`) grows in place when it can. Everything else a loss
needs (formula, program, accumulators) is made on first use.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from typing import Final

from torchtally._conventions import check_direction, check_name
from torchtally.errors import (
    FormulaError,
    InvalidNameError,
    NameConflictError,
)
from torchtally.formula import Constant, Scheduled, describe_integer
from torchtally.objectives import NamedCallable
from torchtally.schedules import Schedule

__all__ = [
    "COMBINED_NAME",
    "ComponentTable",
    "check_direction",
    "check_loss_name",
    "constant_or_schedule",
]

COMBINED_NAME: Final = "Combined Loss"
"""The name compositions report their combined value under (no component may use it)."""


def check_loss_name(name: object, owner: str) -> str:
    """A name a formula can show: a non-empty string without ``[``, ``]``, not reserved.

    Raises:
        InvalidNameError: not a non-empty string, or holding a bracket (a name
            like ``'a] + [b'`` would make one formula read as another).
        NameConflictError: the name is ``'Combined Loss'``.

    Example:
        >>> from torchtally.losses import check_loss_name
        >>> check_loss_name('KL', 'Loss')
        'KL'
    """
    name = check_name(name, owner)
    if "[" in name or "]" in name:
        raise InvalidNameError(
            f"{owner}: the name {name!r} holds a bracket, which formulas use to delimit names "
            f"('[name]'); choose a name without '[' or ']'"
        )
    if name == COMBINED_NAME:
        raise NameConflictError(
            f"{owner}: the name {COMBINED_NAME!r} is reserved for the combined value of "
            f"compositions; give the value another name"
        )
    return name


def constant_or_schedule(
    value: object, owner: str | Callable[[], str], hint: str = ""
) -> Constant | Scheduled:
    """A number or a schedule as a node of the expression; anything else is refused.

    ``owner`` names the loss in errors; pass a callable to render it only on
    error (rendering a formula costs time linear in its size).

    Raises:
        FormulaError: a bool, a number that is not finite or does not fit a
            tensor operation (an int outside int64, ``10**400``), or something
            else (``hint`` is added to the message).

    Example:
        >>> from torchtally.losses._algebra import constant_or_schedule
        >>> constant_or_schedule(0.5, 'Loss [MSE]')
        Constant(value=0.5)
        >>> try:
        ...     constant_or_schedule(10**400, 'Loss [MSE]')
        ... except ValueError as error:
        ...     print(error)  # doctest: +ELLIPSIS
        Loss [MSE]: the constant 1.000e+400 does not fit a tensor operation (int64); write ...
    """
    if isinstance(value, Schedule):
        return Scheduled(value)
    if not isinstance(value, bool) and isinstance(value, numbers.Real):
        if isinstance(value, numbers.Integral):
            number: int | float = int(value)
        else:
            try:
                number = float(value)
            except OverflowError:
                number = math.inf
        if isinstance(number, float) and not math.isfinite(number):
            raise FormulaError(
                f"{_say(owner)}: a loss combines with finite constants, found {value!r:.40}"
            )
        if isinstance(number, int) and abs(number) > 2**63 - 1:
            raise FormulaError(
                f"{_say(owner)}: the constant {describe_integer(number)} does not fit a tensor "
                f"operation (int64); write it as a float"
            )
        return Constant(number)
    raise FormulaError(
        f"{_say(owner)}: cannot combine a loss with {type(value).__name__} {value!r:.80}; a loss "
        f"combines with int or float constants, schedules and other losses{hint}"
    )


class ComponentTable:
    """Named callables keyed by name, each name with one callable and one direction.

    Tables of composed losses share storage: a union extends the larger
    table's dict in place when that table is the newest view of it (each
    entry records when it was added, and a table sees only the entries
    added before its own length), so building a composition term by term
    copies nothing and checks each new name once.

    Example:
        >>> from torchtally.objectives import NamedCallable
        >>> from torchtally.losses import ComponentTable
        >>> def mae(o, t):
        ...     return (o - t).abs()
        >>> left = ComponentTable.of([NamedCallable('MAE', mae, False)], 'example')
        >>> right = ComponentTable.of([NamedCallable('MAE', mae, False)], 'example')
        >>> len(left.union(right, 'example'))
        1
    """

    __slots__ = ("_length", "_shared")

    def __init__(self, shared: dict[str, tuple[int, NamedCallable]], length: int) -> None:
        self._shared = shared
        self._length = length

    @classmethod
    def of(cls, entries: Iterable[NamedCallable], owner: str) -> ComponentTable:
        """A table of ``entries`` (the same callable may appear twice under one name).

        Raises:
            NameConflictError: one name with two callables or two directions.
        """
        table = cls({}, 0)
        for entry in entries:
            table = table.union(cls({entry.name: (0, entry)}, 1), owner)
        return table

    def __len__(self) -> int:
        return self._length

    def get(self, name: str) -> NamedCallable | None:
        """The entry called ``name``, if this table holds it."""
        item = self._shared.get(name)
        return item[1] if item is not None and item[0] < self._length else None

    def items(self) -> Iterator[tuple[str, NamedCallable]]:
        """The table's entries, in the order they were added."""
        for name, (_, entry) in islice(self._shared.items(), self._length):
            yield name, entry

    def union(self, other: ComponentTable, owner: str | Callable[[], str]) -> ComponentTable:
        """A table with the entries of both (``owner`` names the result in errors).

        Raises:
            NameConflictError: a name with different callables or directions in the two.
        """
        big, small = (self, other) if len(self) >= len(other) else (other, self)
        shared = big._shared
        if big._length != len(shared):  # another table extended this dict: start a copy
            shared = dict(islice(shared.items(), big._length))
        for name, entry in small.items():
            present = big.get(name)
            if present is None:
                shared[name] = (len(shared), entry)
            elif not present.same_callable(entry):
                raise NameConflictError(
                    f"{_say(owner)}: the name {name!r} is given to two different callables "
                    f"({present.fn!r:.60} and {entry.fn!r:.60}); give one of them another name"
                )
            elif present.higher_is_better != entry.higher_is_better:
                raise NameConflictError(
                    f"{_say(owner)}: the component {name!r} is given both higher_is_better="
                    f"{present.higher_is_better} and {entry.higher_is_better}"
                )
        return ComponentTable(shared, len(shared))

    def compact(self) -> ComponentTable:
        """A table owning exactly its entries (what a pickle or a copy should carry)."""
        return ComponentTable(dict(islice(self._shared.items(), self._length)), self._length)

    def __getstate__(self) -> tuple[dict[str, tuple[int, NamedCallable]], int]:
        return dict(islice(self._shared.items(), self._length)), self._length

    def __setstate__(self, state: tuple[dict[str, tuple[int, NamedCallable]], int]) -> None:
        self._shared, self._length = state


def _say(owner: str | Callable[[], str]) -> str:
    return owner if isinstance(owner, str) else owner()

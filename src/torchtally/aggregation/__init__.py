"""Accumulators: the running state of named values, and its arithmetic.

An accumulator holds the state of one or more values (its *rows*, one per
name) that aggregate the same way: :class:`Mean`, :class:`Sum`,
:class:`Min`, :class:`Max` or :class:`Cat`. Keeping the rows of one kind
together lets an objective fold a batch of every value in a handful of
tensor operations, whatever the number of values.

A batch reaches :meth:`Accumulator.add` as *entries*: a ``(rows, T)`` tensor
(one column per entry) with optional per-entry weights. A per-sample vector
gives one entry per sample; an objective turns a scalar batch mean into one
entry weighted by its batch size. ``add`` never keeps a reference to what it
is given: it reduces it (or, for :class:`Cat`, copies it).

Every state tensor is declared once, in :attr:`Accumulator.states`, with the
rule that combines two states (:class:`StateSpec`); creating, resetting,
merging, exporting, loading and moving state are all derived from that table.
State tensors are at least 1-d and updated in place, so ``add`` runs inside
``torch.compile`` without a graph break.

Precision (see ``docs/aggregation.md`` for the table): means and sums keep a
compensated (two-word) float64 running sum, so integer sums are exact and a
mean of 10**7 float32 values is exact to float64 rounding; ``reduce`` reports
float32 for 16- and 32-bit floats, float64 for float64, float64 for the mean
of integers and booleans, and int64 for their sums (float64 once a row is
weighted), minima and maxima.
Infinities propagate as in torch (``inf`` stays ``inf``; ``inf`` and ``-inf``
together give NaN).

Example:
    >>> import torch
    >>> from torchtally.aggregation import Mean
    >>> acc = Mean()
    >>> acc.add(torch.tensor([1.0, 2.0, 3.0]))               # three samples
    >>> acc.add(torch.tensor([10.0]), torch.tensor([2.0]))   # one entry weighing 2
    >>> acc.reduce()
    [tensor(5.2000)]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torchtally.aggregation._accumulator import (
    MERGE_RULES,
    Accumulator,
    ExportedState,
    StateSpec,
    combine_stacked,
    combine_states,
    dtypes_from_counts,
)
from torchtally.aggregation._batch import Entries as Entries
from torchtally.aggregation._cat import Cat
from torchtally.aggregation._kinds import Max, Mean, Min, Sum
from torchtally.aggregation._states import nan_where_negative as nan_where_negative
from torchtally.aggregation._states import normal_state as normal_state
from torchtally.aggregation._states import weigh_in_place as weigh_in_place
from torchtally.aggregation._states import weighted_values as weighted_values
from torchtally.aggregation._widening import REUSED_ELEMENTS as REUSED_ELEMENTS
from torchtally.aggregation._widening import scratch_float64 as scratch_float64
from torchtally.errors import InvalidArgumentError

__all__ = [
    "ACCUMULATORS",
    "MERGE_RULES",
    "Accumulator",
    "Cat",
    "ExportedState",
    "Max",
    "Mean",
    "Min",
    "StateSpec",
    "Sum",
    "accumulator_class",
    "combine_stacked",
    "combine_states",
    "dtypes_from_counts",
]
# Also imported above, for the objectives' queue and the losses (not in __all__, so not
# documented): Entries (a batch's entries for some rows, see Accumulator.add_entries),
# nan_where_negative, normal_state, weigh_in_place, weighted_values (the
# weighting and copying rules of the states), REUSED_ELEMENTS and scratch_float64 (the
# reused float64 buffer). Other packages import them from here, never from the private
# modules (tests/test_layers.py).

# Documented, pickled and shown under the package's name, wherever they are defined.
for _public in (Accumulator, StateSpec, Mean, Sum, Min, Max, Cat):
    _public.__module__ = __name__

ACCUMULATORS: dict[str, type[Accumulator]] = {cls.kind: cls for cls in (Mean, Sum, Min, Max, Cat)}
"""Accumulator classes by ``kind``."""


def accumulator_class(aggregation: Any, owner: str | Callable[[], str]) -> type[Accumulator]:
    """The accumulator class an ``aggregation=`` names: a kind or an :class:`Accumulator` subclass.

    Raises:
        InvalidArgumentError: anything else (naming the accepted kinds; a
            ``TypeError`` and a ``ValueError``).

    Example:
        >>> from torchtally.aggregation import Max, accumulator_class
        >>> accumulator_class('max', 'Metric') is Max
        True
    """
    if isinstance(aggregation, type) and issubclass(aggregation, Accumulator):
        return aggregation
    found = ACCUMULATORS.get(aggregation) if isinstance(aggregation, str) else None
    if found is None:
        raise InvalidArgumentError(
            f"{owner if isinstance(owner, str) else owner()}: aggregation must be one of "
            f"{sorted(ACCUMULATORS)} or an Accumulator subclass, found {aggregation!r}"
        )
    return found

"""The bounded accumulators: weighted :class:`Mean` and :class:`Sum`, :class:`Min`, :class:`Max`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor
from typing_extensions import Self, override

from torchtally.aggregation._accumulator import (
    Accumulator,
    StateSpec,
    is_exact,
    two_sum_into,
)
from torchtally.aggregation._batch import Entries, RowFolding
from torchtally.aggregation._states import weigh_in_place
from torchtally.aggregation._widening import scratch_float64

__all__ = ["Max", "Mean", "Min", "Sum"]

_F64 = torch.float64
_I64 = torch.int64


def _exact_sum(total: Tensor, values: Tensor, entries: tuple[int, ...], scale: float) -> Tensor:
    """``scale`` times the int64 sum of ``values`` over ``entries``, as float64.

    A float64 sum rounds integers past 2**53, so the sum is taken in int64 and
    what its float64 conversion loses is added to ``total`` (compensated) at
    once. ``scale`` is a power of 2, so scaling is exact. An int64 sum wraps
    past 2**63: :meth:`Mean._add` sums int64 values as their high and low 32
    bits (each sum exact below 2**31 entries per fold).
    """
    exact = values.sum(entries, dtype=_I64)
    rounded = exact.to(_F64)
    two_sum_into(total, (exact - rounded.to(_I64)).to(_F64) * scale)  # what it lost
    return rounded * scale


def _integer_rows(accumulator: Accumulator) -> list[bool]:
    """Which rows hold integers (int64 values, whose exceptions ``reduce`` reads on the host)."""
    return [dtype is not None and is_exact(dtype) for dtype in accumulator.dtypes]


class Mean(RowFolding, Accumulator):
    """Weighted mean with a compensated float64 state and constant memory.

    Each entry adds ``weight * value`` to the total and ``weight`` to the
    total weight; the mean is their ratio. A per-sample vector gives entries
    of weight 1 (or its per-sample weights), so the mean over any split into
    batches equals the mean over the concatenated data. An entry of weight 0
    is left out, NaN or infinite as it may be; all-zero weights give NaN.

    Example:
        >>> import torch
        >>> from torchtally.aggregation import Mean
        >>> acc = Mean()
        >>> acc.add(torch.tensor([2.0]), torch.tensor([4.0]), samples=4)   # a mean of 4 samples
        >>> acc.add(torch.tensor([5.0]))                                    # one sample
        >>> acc.reduce()
        [tensor(2.6000)]
    """

    kind: ClassVar[str] = "mean"
    scalar_is_mean: ClassVar[bool] = True
    states: ClassVar[tuple[StateSpec, ...]] = (
        *Accumulator.states,
        StateSpec("total", 2, _F64, "twosum"),
        StateSpec("weight", 1, _F64, "sum"),
        # the last droppable entry: weight x value, weight, 1 if droppable (sync(dataset_size=))
        StateSpec("last", 3, _F64, "latest"),
    )

    @override
    def report_dtype(self, dtype: torch.dtype) -> torch.dtype:
        return super().report_dtype(dtype) if dtype.is_floating_point else _F64

    @override
    def _add(
        self,
        state: dict[str, Tensor],
        values: Tensor,
        weights: Tensor | None,
        samples: Any,
        droppable: bool,
    ) -> None:
        entries = tuple(range(1, values.ndim))
        final: tuple[slice | int, ...] = (slice(None), *(-1 for _ in entries))
        # The last entry goes column by column: no stacked temporary (under torch.compile each
        # temporary is a buffer the graph allocates every step).
        last = state["last"]
        if weights is None:
            if values.dtype == _I64:  # summed as integers, split at 2**32: see _exact_sum
                high = _exact_sum(state["total"], values >> 32, entries, 2.0**32)
                two_sum_into(state["total"], high)
                sums = _exact_sum(state["total"], values & (2**32 - 1), entries, 1.0)
            elif is_exact(values.dtype):  # no int64 sum of narrower integers can wrap
                sums = _exact_sum(state["total"], values, entries, 1.0)
            elif values.dtype == _F64:
                sums = values.sum(entries)
            else:  # converted in a reused buffer, not a fresh one: see _widening
                sums = scratch_float64(values).sum(entries)
            state["weight"].add_(values.shape[1:].numel())
            last[:, 0].copy_(values[final])
            last[:, 1].fill_(1.0)
        else:
            weighted = weigh_in_place(scratch_float64(values), weights)
            sums = weighted.sum(entries)
            state["weight"].add_(weights.sum())
            last[:, 0].copy_(weighted[final])
            last[:, 1].copy_(weights[final[1:]])
        last[:, 2].fill_(1.0 if droppable else 0.0)
        two_sum_into(state["total"], sums)
        state["samples"].add_(samples)

    @override
    def add_entries(self, entries: Sequence[Entries], samples: Any) -> None:
        # Floating entries for every row, once each: each state tensor written once, whole
        # (see _batch). Integers are summed exactly by _add; some rows only: as before.
        covered, count = [False] * self.rows, 0
        for lines, _, rows, _, _ in entries:
            count += len(lines)
            for place in range(len(lines)):
                covered[place if rows is None else rows[place]] = lines[place].is_floating_point()
        if not entries or count != self.rows or not all(covered):
            super().add_entries(entries, samples)
            return
        self._ensure_state(entries[0][0][0].device)
        for lines, weights, rows, _, scale in entries:
            weighted = weights is not None or scale is not None
            self._promote_rows(
                range(self.rows) if rows is None else rows,
                self.entry_dtype(lines[0].dtype, weighted),
            )
        self._fold_rows(entries, samples)

    @override
    def _reduce(self, state: dict[str, Tensor]) -> list[Tensor]:
        total = state["total"]
        return list(((total[:, 0] + total[:, 1]) / state["weight"][:, 0]).unbind())

    @override
    def without_last(self) -> tuple[Self, Tensor]:
        copied, dropped = super().without_last()
        state = copied.state
        if state is None:
            return copied, dropped
        last = state["last"]
        dropped = (last[:, 2] > 0) & (state["samples"][:, 0] > 0)
        value = last[:, 0]
        # A non-finite repeat also sits in the total through its original: leave the total.
        two_sum_into(state["total"], torch.where(dropped & value.isfinite(), -value, 0.0))
        state["weight"][:, 0] -= torch.where(dropped, last[:, 1], 0.0)
        state["samples"][:, 0] -= dropped.to(_I64)
        last[:, 2] = torch.where(dropped, 0.0, last[:, 2])  # dropped once, never twice
        return copied, dropped

    @override
    def keeping_last(self, rows: Tensor) -> Self:
        copied = self.copy()
        state = copied.state
        if state is not None:
            last = state["last"]
            last[:, 2] = torch.where(rows.to(last.device), 0.0, last[:, 2])
        return copied


class Sum(Mean):
    """Weighted sum with a compensated float64 state and constant memory.

    Each entry adds ``weight * value``; an objective gives a scalar batch
    total one entry of weight 1. Sums of integers and booleans are exact
    (the two float64 words hold any integer sum below 2**106) and reported as
    int64, unless a row has received weighted entries: those are no longer
    integers, and the row is reported in float64. A sum outside int64's range
    is reported in float64 too (rounded once), never wrapped around.

    Example:
        >>> import torch
        >>> from torchtally.aggregation import Sum
        >>> acc = Sum()
        >>> acc.add(torch.tensor([16_777_216, 1]))
        >>> acc.reduce()
        [tensor(16777217)]
    """

    kind: ClassVar[str] = "sum"
    scalar_is_mean: ClassVar[bool] = False

    @override
    def report_dtype(self, dtype: torch.dtype) -> torch.dtype:
        return Accumulator.report_dtype(self, dtype)

    @override
    def entry_dtype(self, dtype: torch.dtype, weighted: bool) -> torch.dtype:
        # The row's dtype (host-side, so no sync) says whether it holds a fraction; it travels
        # with merges, syncs and exports, and float64 wins every promotion.
        return _F64 if weighted and is_exact(dtype) else dtype

    @override
    def reduce(self) -> list[Tensor]:
        results = super().reduce()
        exact = _integer_rows(self)
        if self._state is None or not any(exact):
            return results
        # An integer row's exact sum is read on the host (here only, never while adding) and
        # its two words added as Python ints: the high word may lie outside int64 while the
        # sum does not (no int64 conversion of it is right), and a sum outside int64 would
        # wrap around, so it is reported in float64 instead.
        words = self._state["total"].tolist()
        for index, integer in enumerate(exact):
            high, low = words[index]
            if integer and math.isfinite(high + low):
                value = int(high) + int(low)
                inside = -(2**63) <= value < 2**63
                results[index] = torch.tensor(
                    value if inside else float(value),
                    dtype=_I64 if inside else _F64,
                    device=self.device,
                )
        return results

    @override
    def _reduce(self, state: dict[str, Tensor]) -> list[Tensor]:
        total = state["total"]
        return list((total[:, 0] + total[:, 1]).unbind())  # integer rows: see reduce()


class _Extremum(Accumulator):
    """Shared machinery of :class:`Min` and :class:`Max`: a float64 and an int64 word per row.

    ``included`` is 1 once a row has taken an entry of nonzero weight: a row
    whose entries all weighed 0 holds only the neutral words and reduces to NaN.
    """

    pick: ClassVar[str]

    @override
    def _add(
        self,
        state: dict[str, Tensor],
        values: Tensor,
        weights: Tensor | None,
        samples: Any,
        droppable: bool,
    ) -> None:
        # Repeated samples (DistributedSampler padding) do not change an extremum: no 'last'.
        exact = is_exact(values.dtype)
        target = state["integer" if exact else "float"]
        entries = tuple(range(1, values.ndim))
        if values.dtype == torch.bool:
            values = values.to(_I64)
        included = state["included"]
        if weights is None:
            included.fill_(1)
        else:  # a weight of 0 excludes the entry
            if exact:  # int64 first: the neutral (int64's extreme) fits no narrower integer
                values = values.to(_I64)
            kept = weights > 0
            values = torch.where(kept, values, values.new_full((), self._neutral(exact)))
            included.copy_(torch.maximum(included, kept.any().to(_I64)))  # on the device
        if self.pick == "max":
            found = values.amax(entries).to(target.dtype).unsqueeze(1)
            target.copy_(torch.maximum(target, found))  # copy_: see Mean._add
        else:
            found = values.amin(entries).to(target.dtype).unsqueeze(1)
            target.copy_(torch.minimum(target, found))
        state["samples"].add_(samples)

    @override
    def without_last(self) -> tuple[Self, Tensor]:
        # A repeated sample changes no extremum: it is only counted out.
        copied, dropped = super().without_last()
        state = copied.state
        if state is not None:
            dropped = state["samples"][:, 0] > 0
            state["samples"][:, 0] -= dropped.to(_I64)
        return copied, dropped

    def _neutral(self, exact: bool) -> float | int:
        if exact:
            info = torch.iinfo(_I64)
            return info.min if self.pick == "max" else info.max
        return float("-inf") if self.pick == "max" else float("inf")

    @override
    def reduce(self) -> list[Tensor]:
        results = super().reduce()
        exact = _integer_rows(self)
        if self._state is None or not any(exact):
            return results
        # An int64 row cannot hold NaN: whether it included anything is read on the host
        # (here only, never while adding), and a row that did not reduces as an empty one.
        included = self._state["included"][:, 0].tolist()
        return [
            self._nan() if integer and not seen else value
            for value, integer, seen in zip(results, exact, included, strict=True)
        ]

    @override
    def _reduce(self, state: dict[str, Tensor]) -> list[Tensor]:
        floats, integers = state["float"][:, 0], state["integer"][:, 0]
        included = state["included"][:, 0] > 0
        results = []
        for index, integer in enumerate(_integer_rows(self)):
            if integer:
                results.append(integers[index])  # NaN if nothing included: see reduce()
            else:  # a row that also saw integers compares them as float64
                both = torch.stack([floats[index], integers[index].to(_F64)])
                empty = integers[index] == self._neutral(True)
                candidate = both.amax() if self.pick == "max" else both.amin()
                value = torch.where(empty, floats[index], candidate)
                results.append(torch.where(included[index], value, math.nan))
        return results


class Min(_Extremum):
    """Smallest value seen (over every sample of per-sample vectors); weight 0 excludes.

    A row whose entries all weighed 0 reduces to NaN, as an empty one.

    Example:
        >>> import torch
        >>> from torchtally.aggregation import Min
        >>> acc = Min()
        >>> acc.add(torch.tensor([3.0, -1.0, 0.5]))
        >>> acc.reduce()
        [tensor(-1.)]
    """

    kind: ClassVar[str] = "min"
    pick: ClassVar[str] = "min"
    states: ClassVar[tuple[StateSpec, ...]] = (
        *Accumulator.states,
        StateSpec("float", 1, _F64, "min", float("inf")),
        StateSpec("integer", 1, _I64, "min", torch.iinfo(_I64).max),
        StateSpec("included", 1, _I64, "max"),  # any rank's inclusion counts
    )


class Max(_Extremum):
    """Largest value seen (over every sample of per-sample vectors); weight 0 excludes.

    A row whose entries all weighed 0 reduces to NaN, as an empty one.

    Example:
        >>> import torch
        >>> from torchtally.aggregation import Max
        >>> acc = Max()
        >>> acc.add(torch.tensor([3.0, -1.0]))
        >>> acc.reduce()
        [tensor(3.)]
    """

    kind: ClassVar[str] = "max"
    pick: ClassVar[str] = "max"
    states: ClassVar[tuple[StateSpec, ...]] = (
        *Accumulator.states,
        StateSpec("float", 1, _F64, "max", float("-inf")),
        StateSpec("integer", 1, _I64, "max", torch.iinfo(_I64).min),
        StateSpec("included", 1, _I64, "max"),  # any rank's inclusion counts
    )

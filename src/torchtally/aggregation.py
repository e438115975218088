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
of integers and booleans, and int64 for their sums, minima and maxima.
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

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor
from typing_extensions import Self, override

from torchtally._conventions import dtype_from_name, dtype_name
from torchtally.errors import (
    DeviceMismatchError,
    IncompatibleStateError,
    ResultShapeError,
    StateDictError,
    WeightError,
)

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
]

ExportedState = tuple[dict[str, Any], list[Tensor]]
"""A state as JSON-able metadata plus a list of tensors."""

MERGE_RULES = ("sum", "twosum", "min", "max", "latest")
"""How two states combine: add them; add compensated ``(high, low)`` pairs exactly; keep
the smaller or the larger; keep the later one (``latest``: per-rank bookkeeping)."""

_F64 = torch.float64
_I64 = torch.int64
_CPU = torch.device("cpu")


@dataclass(frozen=True)
class StateSpec:
    """One state tensor of an accumulator: shape ``(rows, width)``, its dtype and merge rule.

    Attributes:
        name: the key of the tensor in exports and state dicts.
        width: columns per row.
        dtype: the tensor's dtype.
        rule: one of :data:`MERGE_RULES`.
        fill: the value of a row that has seen nothing.

    Example:
        >>> import torch
        >>> from torchtally.aggregation import Mean
        >>> [(spec.name, spec.width, spec.rule) for spec in Mean.states]
        [('samples', 1, 'sum'), ('total', 2, 'twosum'), ('weight', 1, 'sum'), ('last', 3, 'latest')]
    """

    name: str
    width: int
    dtype: torch.dtype
    rule: str
    fill: float = 0.0


def _two_sum_into(total: Tensor, addend: Tensor) -> None:
    """``total[:, 0] + total[:, 1] += addend``, exactly (Knuth's TwoSum), in place.

    ``total`` holds a high word and a low word per row; the rounding error of
    adding to the high word is recovered exactly and kept in the low word.
    Where the sum is not finite the error is not defined (``inf - inf``) and
    is dropped, so that infinities propagate as torch propagates them.
    """
    high, low = total.unbind(1)
    summed = high + addend
    virtual = summed - high
    error = (high - (summed - virtual)).add_(addend - virtual)
    low.add_(error.nan_to_num_(0.0, 0.0, 0.0))
    high.copy_(summed)


def _is_exact(dtype: torch.dtype) -> bool:
    """Integers and booleans: values whose sums, minima and maxima are reported exactly."""
    return not dtype.is_floating_point and not dtype.is_complex


def _promote(first: torch.dtype | None, second: torch.dtype) -> torch.dtype:
    return second if first is None else torch.promote_types(first, second)


class Accumulator(ABC):
    """Running state of ``rows`` named values that aggregate the same way.

    Subclasses declare their state tensors in :attr:`states` and implement
    :meth:`_add` (fold entries into state tensors, in place) and
    :meth:`_reduce` (the value of every row); creating, resetting, merging,
    exporting, loading and moving state follow from :attr:`states`. The
    number of samples each row has seen is always tracked (``samples``).

    The state lives on the device of the first values added; rows that have
    seen nothing reduce to NaN.

    Attributes:
        kind: the aggregation's name (``'mean'``, ``'sum'``, ...).
        states: the declared state tensors (:class:`StateSpec`).
        rows: the number of values held.
        labels: how error messages name each row (set by the owning objective).
        dtypes: each row's input dtype, promoted over everything it has seen
            (``None`` before any value): it decides the reported dtype.

    Example:
        >>> import torch
        >>> from torchtally.aggregation import Mean
        >>> left, right = Mean(rows=2), Mean(rows=2)
        >>> left.add(torch.tensor([[1.0, 2.0], [0.0, 0.0]]))
        >>> right.add(torch.tensor([[6.0], [3.0]]))
        >>> left.merge(right)
        >>> left.reduce()
        [tensor(3.), tensor(1.)]
    """

    kind: ClassVar[str]
    states: ClassVar[tuple[StateSpec, ...]] = (StateSpec("samples", 1, _I64, "sum"),)
    weighted: ClassVar[bool] = True
    """Whether per-entry weights mean something to this kind (``Cat`` refuses them)."""
    scalar_is_mean: ClassVar[bool] = False
    """Whether a scalar value stands for a mean over its batch (an entry weighing the batch
    size), rather than a total or a candidate (an entry weighing 1)."""

    def __init__(self, rows: int = 1) -> None:
        if not isinstance(rows, int) or isinstance(rows, bool) or rows < 0:
            raise ValueError(f"{type(self).__name__}: rows must be an int >= 0, found {rows!r}")
        self.rows = rows
        self.labels = [f"{type(self).__name__} row {index}" for index in range(rows)]
        self.dtypes: list[torch.dtype | None] = [None] * rows
        self.device: torch.device | None = None
        self._state: dict[str, Tensor] | None = None

    # -- to implement -------------------------------------------------------------------------

    @abstractmethod
    def _add(
        self,
        state: dict[str, Tensor],
        values: Tensor,
        weights: Tensor | None,
        samples: Any,
        droppable: bool,
    ) -> None:
        """Fold entries into ``state`` (one tensor per declared spec, the targeted rows), in place.

        ``values`` is ``(m, T)``; ``weights`` is ``(T,)`` float64 or ``None`` (each
        entry weighs 1); ``samples`` the number of samples the entries stand for;
        ``droppable`` whether the last entry is the last sample of a per-sample
        batch (so that a sync can drop it, see ``sync(dataset_size=...)``).
        Tensor operations only: this runs inside ``torch.compile``.
        """

    @abstractmethod
    def _reduce(self, state: dict[str, Tensor]) -> list[Tensor]:
        """The value of every row (before the reported dtype is applied)."""

    def report_dtype(self, dtype: torch.dtype) -> torch.dtype:
        """The dtype a row whose inputs had ``dtype`` is reported in.

        Never less precise than float32 for floating inputs; float64 stays float64.

        Example:
            >>> import torch
            >>> from torchtally.aggregation import Mean, Sum
            >>> Mean().report_dtype(torch.bfloat16), Sum().report_dtype(torch.int32)
            (torch.float32, torch.int64)
        """
        if dtype == _F64:
            return _F64
        if dtype.is_floating_point:
            return torch.float32
        return _I64

    # -- adding -------------------------------------------------------------------------------

    def add(
        self,
        values: Tensor,
        weights: Tensor | None = None,
        *,
        samples: Any = None,
        rows: Sequence[int] | None = None,
        droppable: bool = False,
    ) -> None:
        """Fold entries into the state (never keeping a reference to the arguments).

        Args:
            values: ``(m, T)`` entries for ``m`` rows (``(T,)`` when ``m`` is 1).
            weights: ``(T,)`` per-entry weights (``None``: each entry weighs 1).
            samples: how many samples the entries stand for (default ``T``).
            rows: which rows the ``m`` lines of ``values`` belong to (default: all, in order).
            droppable: whether the last entry is the last sample of a per-sample batch.

        Raises:
            DeviceMismatchError: ``values`` are on another device than the state.
            ResultShapeError: ``values`` do not have one line per targeted row.
            WeightError: weights of another length, or weights given to ``Cat``.

        Example:
            >>> import torch
            >>> from torchtally.aggregation import Sum
            >>> hits = Sum()
            >>> hits.add(torch.tensor([1, 0, 1]))
            >>> hits.add(torch.tensor([4]), samples=10)   # a batch total over 10 samples
            >>> hits.reduce(), hits.samples()
            ([tensor(6)], [13])
        """
        targets = list(range(self.rows)) if rows is None else list(rows)
        if values.ndim == 1 and len(targets) == 1:
            values = values.reshape(1, -1)
        if values.ndim < 2 or values.shape[0] != len(targets):
            raise ResultShapeError(
                f"{type(self).__name__}: expected entries of shape ({len(targets)}, T), found "
                f"{tuple(values.shape)}"
            )
        if weights is not None:
            if not self.weighted:
                raise WeightError(
                    f"{self.labels[targets[0]] if targets else type(self).__name__}: a "
                    f"{self.kind!r} aggregation keeps every value as it is and cannot weight "
                    f"them; leave weight= out for it"
                )
            if weights.shape != values.shape[1:]:
                raise WeightError(
                    f"{type(self).__name__}: expected weights of shape {tuple(values.shape[1:])}, "
                    f"found {tuple(weights.shape)}"
                )
        if values[0].numel() == 0 or not targets:
            return
        self._ensure_state(values.device)
        for row in targets:
            self.dtypes[row] = _promote(self.dtypes[row], values.dtype)
        if samples is None:
            samples = values[0].numel()
        values = values.detach()
        if weights is not None:
            weights = weights.detach().to(_F64)
        self._update_rows(
            rows,
            lambda state: self._add(state, values, weights, samples, droppable),
        )

    def _ensure_state(self, device: torch.device) -> None:
        if self._state is None:
            self.device = device
            self._state = self._fresh(self.rows, device)
        elif device != self.device:
            raise DeviceMismatchError(
                f"{self.labels[0] if self.labels else type(self).__name__}: state lives on "
                f"{self.device} but values arrived on {device}; call .to({str(device)!r}) on the "
                f"objective (or reset() it) before feeding values from another device"
            )

    def _fresh(self, rows: int, device: torch.device) -> dict[str, Tensor]:
        return {
            spec.name: torch.full((rows, spec.width), spec.fill, dtype=spec.dtype, device=device)
            for spec in self.states
        }

    def _update_rows(self, rows: Sequence[int] | None, change: Any) -> None:
        """Apply ``change`` (a function of a state dict, in place) to all rows or some rows."""
        assert self._state is not None
        if rows is None:
            change(self._state)
            return
        index = torch.tensor(list(rows), dtype=_I64, device=self.device)
        part = {name: tensor.index_select(0, index) for name, tensor in self._state.items()}
        change(part)
        for name, tensor in part.items():
            self._state[name].index_copy_(0, index, tensor)

    # -- reading ------------------------------------------------------------------------------

    def reduce(self) -> list[Tensor]:
        """Every row's value as a fresh 0-d tensor in its reported dtype; NaN for empty rows.

        Example:
            >>> import torch
            >>> from torchtally.aggregation import Max
            >>> best = Max(rows=2)
            >>> best.add(torch.tensor([[3, 7, 5]]), rows=[0])
            >>> best.reduce()
            [tensor(7), tensor(nan)]
        """
        if self._state is None:
            return [self._nan() for _ in range(self.rows)]
        values = self._reduce(self._state)
        return [
            self._nan() if dtype is None else value.to(self.report_dtype(dtype), copy=True)
            for value, dtype in zip(values, self.dtypes, strict=True)
        ]

    def samples(self) -> list[int]:
        """How many samples each row has seen (reads the state on the host)."""
        if self._state is None:
            return [0] * self.rows
        return [int(count) for count in self._state["samples"][:, 0].tolist()]

    def _nan(self) -> Tensor:
        device = self.device if self.device is not None else _CPU
        return torch.full((), float("nan"), dtype=torch.get_default_dtype(), device=device)

    # -- rows ---------------------------------------------------------------------------------

    def grow(self, labels: Sequence[str]) -> int:
        """Add one empty row per label; returns the index of the first new row.

        Example:
            >>> from torchtally.aggregation import Mean
            >>> acc = Mean(rows=0)
            >>> acc.grow(['MAE', 'MSE']), acc.rows
            (0, 2)
        """
        first = self.rows
        self.rows += len(labels)
        self.labels.extend(labels)
        self.dtypes.extend([None] * len(labels))
        if self._state is not None:
            assert self.device is not None
            fresh = self._fresh(len(labels), self.device)
            self._state = {
                name: torch.cat([tensor, fresh[name]]) for name, tensor in self._state.items()
            }
        return first

    # -- combining ----------------------------------------------------------------------------

    def merge(self, other: Accumulator, rows: Sequence[int] | None = None) -> None:
        """Add ``other``'s state to this one's (``other`` is not changed).

        Args:
            other: an accumulator of the same kind.
            rows: for each row of ``other``, the row of ``self`` it merges into
                (default: the same rows, in order).

        Raises:
            IncompatibleStateError: ``other`` is of another kind or row count.
        """
        if other.kind != self.kind:
            raise IncompatibleStateError(
                f"{type(self).__name__}: cannot merge a {other.kind!r} state into a "
                f"{self.kind!r} state"
            )
        targets = list(range(other.rows)) if rows is None else list(rows)
        if len(targets) != other.rows or any(not 0 <= row < self.rows for row in targets):
            raise IncompatibleStateError(
                f"{type(self).__name__}: cannot merge {other.rows} rows into rows {targets} of "
                f"{self.rows}"
            )
        if other._state is None:
            return
        assert other.device is not None
        self._ensure_state(self.device if self.device is not None else other.device)
        theirs = {name: tensor.to(self.device) for name, tensor in other._state.items()}
        for source, target in enumerate(targets):
            dtype = other.dtypes[source]
            if dtype is not None:
                self.dtypes[target] = _promote(self.dtypes[target], dtype)
        self._update_rows(None if rows is None else targets, lambda mine: self._merge(mine, theirs))

    def _merge(self, mine: dict[str, Tensor], theirs: dict[str, Tensor]) -> None:
        """Combine state tensors, each by its declared rule, in place (``mine`` changes)."""
        took = theirs["samples"] > 0
        for spec in self.states:
            mine_tensor, their_tensor = mine[spec.name], theirs[spec.name]
            if spec.rule == "sum":
                mine_tensor.add_(their_tensor)
            elif spec.rule == "twosum":
                _two_sum_into(mine_tensor, their_tensor[:, 0])
                mine_tensor[:, 1].add_(their_tensor[:, 1])
            elif spec.rule == "min":
                torch.minimum(mine_tensor, their_tensor, out=mine_tensor)
            elif spec.rule == "max":
                torch.maximum(mine_tensor, their_tensor, out=mine_tensor)
            else:  # latest: the other's, where it has seen anything
                mine_tensor.copy_(torch.where(took, their_tensor, mine_tensor))

    # -- lifecycle ----------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget every value (rows and labels stay); the next value may come from any device."""
        self.dtypes = [None] * self.rows
        self.device = None
        self._state = None

    def to(self, device: torch.device | str) -> None:
        """Move the state to ``device``, in place (a state not made yet follows the values)."""
        if self._state is not None:
            self.device = torch.device(device)
            self._state = {name: tensor.to(self.device) for name, tensor in self._state.items()}

    def copy(self) -> Self:
        """An independent copy (state tensors cloned)."""
        other = type(self).__new__(type(self))
        other.__dict__.update(self.__dict__)
        other.labels = list(self.labels)
        other.dtypes = list(self.dtypes)
        if self._state is not None:
            other._state = {name: tensor.clone() for name, tensor in self._state.items()}
        return other

    # -- export and import --------------------------------------------------------------------

    def export(self) -> ExportedState:
        """The state as JSON-able metadata plus tensors (copies), for sync and state dicts.

        Example:
            >>> import torch
            >>> from torchtally.aggregation import Max
            >>> acc = Max()
            >>> acc.add(torch.tensor([1.5, 4.0]))
            >>> meta, tensors = acc.export()
            >>> meta['kind'], meta['dtypes'], [tuple(t.shape) for t in tensors]
            ('max', ['float32'], [(1, 1), (1, 1), (1, 1)])
        """
        meta = {
            "kind": self.kind,
            "rows": self.rows,
            "dtypes": [None if dtype is None else dtype_name(dtype) for dtype in self.dtypes],
        }
        if self._state is None:
            return meta, []
        return meta, [self._state[spec.name].clone() for spec in self.states]

    def load(
        self, meta: Any, tensors: Sequence[Any], device: torch.device | str | None = None
    ) -> None:
        """Replace the state with an exported one (on ``device``; default: where it was).

        Everything is checked before anything changes: the kind, the number of
        rows, the dtype names (an allow-list), one tensor per declared state
        with the declared shape and dtype, and non-negative sample counts.

        Raises:
            StateDictError: naming the first thing that does not fit.
        """
        rows, dtypes, state = self._check_export(meta, tensors)
        if state is not None:
            target = torch.device(device) if device is not None else state["samples"].device
            state = {name: tensor.to(target) for name, tensor in state.items()}
            self.device = target
        else:
            self.device = None
        self.rows = rows
        if len(self.labels) != rows:
            self.labels = [f"{type(self).__name__} row {index}" for index in range(rows)]
        self.dtypes = dtypes
        self._state = state

    def _check_export(
        self, meta: Any, tensors: Sequence[Any]
    ) -> tuple[int, list[torch.dtype | None], dict[str, Tensor] | None]:
        where = type(self).__name__
        if not isinstance(meta, dict) or meta.get("kind") != self.kind:
            found = meta.get("kind") if isinstance(meta, dict) else type(meta).__name__
            raise StateDictError(f"{where}: expected a {self.kind!r} state, found {found!r}")
        rows = meta.get("rows")
        if not isinstance(rows, int) or isinstance(rows, bool) or rows < 0:
            raise StateDictError(f"{where}: expected a row count >= 0, found {rows!r}")
        names = meta.get("dtypes")
        if not isinstance(names, list) or len(names) != rows:
            raise StateDictError(f"{where}: expected {rows} dtype names, found {names!r}")
        dtypes = [None if name is None else dtype_from_name(name) for name in names]
        unknown = [name for name, dtype in zip(names, dtypes, strict=True) if name and not dtype]
        if unknown:
            raise StateDictError(f"{where}: unknown dtype names {unknown} in the state")
        if not tensors:
            if any(dtype is not None for dtype in dtypes):
                raise StateDictError(
                    f"{where}: the state names dtypes of values seen but holds no tensors"
                )
            return rows, dtypes, None
        specs = self._specs_for(meta)
        if len(tensors) != len(specs):
            raise StateDictError(
                f"{where}: expected {len(specs)} state tensors ({[s.name for s in specs]}), "
                f"found {len(tensors)}"
            )
        state: dict[str, Tensor] = {}
        for spec, tensor in zip(specs, tensors, strict=True):
            if not isinstance(tensor, Tensor):
                raise StateDictError(
                    f"{where}: state {spec.name!r} must be a tensor, found {type(tensor).__name__}"
                )
            if tuple(tensor.shape) != (rows, spec.width) or tensor.dtype != spec.dtype:
                raise StateDictError(
                    f"{where}: state {spec.name!r} must be ({rows}, {spec.width}) "
                    f"{dtype_name(spec.dtype)}, found {tuple(tensor.shape)} "
                    f"{dtype_name(tensor.dtype)}"
                )
            state[spec.name] = tensor
        counts = state["samples"]
        if bool((counts < 0).any()):
            raise StateDictError(f"{where}: sample counts must be >= 0, found {counts.tolist()}")
        return rows, dtypes, {name: tensor.clone() for name, tensor in state.items()}

    def _specs_for(self, meta: dict[str, Any]) -> tuple[StateSpec, ...]:
        return self.states

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rows={self.rows})"


class Mean(Accumulator):
    """Weighted mean with a compensated float64 state and constant memory.

    Each entry adds ``weight * value`` to the total and ``weight`` to the
    total weight; the mean is their ratio. A per-sample vector gives entries
    of weight 1 (or its per-sample weights), so the mean over any split into
    batches equals the mean over the concatenated data. All-zero weights
    give NaN.

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
        last: tuple[slice | int, ...] = (slice(None), *(-1 for _ in entries))
        if weights is None:
            sums = values.sum(entries, dtype=_F64)
            state["weight"].add_(values[0].numel())
            last_value, last_weight = values[last].to(_F64), torch.ones_like(sums)
        else:
            weighted = values.to(_F64) * weights
            sums = weighted.sum(entries)
            state["weight"].add_(weights.sum())
            last_value, last_weight = weighted[last], weights[last[1:]].expand_as(sums)
        _two_sum_into(state["total"], sums)
        state["samples"].add_(samples)
        flag = torch.full_like(sums, 1.0 if droppable else 0.0)
        torch.stack([last_value, last_weight, flag], 1, out=state["last"])

    @override
    def _reduce(self, state: dict[str, Tensor]) -> list[Tensor]:
        total = state["total"]
        return list(((total[:, 0] + total[:, 1]) / state["weight"][:, 0]).unbind())


class Sum(Mean):
    """Weighted sum with a compensated float64 state and constant memory.

    Each entry adds ``weight * value``; an objective gives a scalar batch
    total one entry of weight 1. Sums of integers and booleans are exact
    (the two float64 words hold any integer sum below 2**106) and reported as
    int64.

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
    def _reduce(self, state: dict[str, Tensor]) -> list[Tensor]:
        total = state["total"]
        floats = total[:, 0] + total[:, 1]
        # Integer rows: both words hold integers, so converting each is exact.
        exact = total[:, 0].to(_I64) + total[:, 1].to(_I64)
        return [
            exact[index] if dtype is not None and _is_exact(dtype) else floats[index]
            for index, dtype in enumerate(self.dtypes)
        ]


class _Extremum(Accumulator):
    """Shared machinery of :class:`Min` and :class:`Max`: a float64 and an int64 word per row."""

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
        exact = _is_exact(values.dtype)
        target = state["integer" if exact else "float"]
        entries = tuple(range(1, values.ndim))
        if values.dtype == torch.bool:
            values = values.to(_I64)
        if weights is not None:  # a weight of 0 excludes the entry
            values = torch.where(weights > 0, values, values.new_full((), self._neutral(exact)))
        if self.pick == "max":
            found = values.amax(entries).to(target.dtype).unsqueeze(1)
            torch.maximum(target, found, out=target)
        else:
            found = values.amin(entries).to(target.dtype).unsqueeze(1)
            torch.minimum(target, found, out=target)
        state["samples"].add_(samples)

    def _neutral(self, exact: bool) -> float | int:
        if exact:
            info = torch.iinfo(_I64)
            return info.min if self.pick == "max" else info.max
        return float("-inf") if self.pick == "max" else float("inf")

    @override
    def _reduce(self, state: dict[str, Tensor]) -> list[Tensor]:
        floats, integers = state["float"][:, 0], state["integer"][:, 0]
        results = []
        for index, dtype in enumerate(self.dtypes):
            if dtype is not None and _is_exact(dtype):
                results.append(integers[index])
            else:  # a row that also saw integers compares them as float64
                both = torch.stack([floats[index], integers[index].to(_F64)])
                empty = integers[index] == self._neutral(True)
                candidate = both.amax() if self.pick == "max" else both.amin()
                results.append(torch.where(empty, floats[index], candidate))
        return results


class Min(_Extremum):
    """Smallest value seen (over every sample of per-sample vectors); weight 0 excludes.

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
    )


class Max(_Extremum):
    """Largest value seen (over every sample of per-sample vectors); weight 0 excludes.

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
    )


class Cat(Accumulator):
    """Keeps every value, concatenated along the batch dimension.

    For metrics that need all values at once (AUROC, a median). Values may
    have trailing dimensions (``(B, C)`` scores); ``reduce`` returns each
    row's concatenation (a copy) in the values' promoted dtype. Memory grows
    with the data: use it only where a bounded accumulator cannot give the
    right answer. Weights are refused (excluding samples would need their
    values on the host). Not traced by ``torch.compile``: its state is a
    growing list.

    Example:
        >>> import torch
        >>> from torchtally.aggregation import Cat
        >>> acc = Cat()
        >>> acc.add(torch.tensor([0.1, 0.9]))
        >>> acc.add(torch.tensor([0.4]))
        >>> acc.reduce()
        [tensor([0.1000, 0.9000, 0.4000])]
    """

    kind: ClassVar[str] = "cat"
    states: ClassVar[tuple[StateSpec, ...]] = ()
    weighted: ClassVar[bool] = False

    def __init__(self, rows: int = 1) -> None:
        super().__init__(rows)
        self._chunks: list[list[Tensor]] = [[] for _ in range(rows)]
        self._counts = [0] * rows
        self._droppable = [False] * rows

    @override
    @torch.compiler.disable  # type: ignore[untyped-decorator]
    def add(
        self,
        values: Tensor,
        weights: Tensor | None = None,
        *,
        samples: Any = None,
        rows: Sequence[int] | None = None,
        droppable: bool = False,
    ) -> None:
        """Keep copies of ``values``: ``(m, T, *trailing)`` for ``m`` rows (``(T,)`` for one row).

        Raises:
            ResultShapeError: the values' trailing shape differs from what a row holds.
            WeightError: weights were given.
        """
        targets = list(range(self.rows)) if rows is None else list(rows)
        if weights is not None:
            raise WeightError(
                f"{self.labels[targets[0]] if targets else 'Cat'}: a 'cat' aggregation keeps every "
                f"value as it is and cannot weight them; leave weight= out for it"
            )
        if len(targets) == 1 and values.ndim < 2:  # one row's values: (T,) or a scalar
            values = values.reshape(1, -1)
        if values.ndim < 2 or values.shape[0] != len(targets):
            raise ResultShapeError(
                f"Cat: expected entries of shape ({len(targets)}, T, ...), found "
                f"{tuple(values.shape)}"
            )
        for row in targets:
            held = self._chunks[row]
            if held and held[0].shape[1:] != values.shape[2:]:
                raise ResultShapeError(
                    f"{self.labels[row]}: values must share their trailing shape to be "
                    f"concatenated, found {tuple(held[0].shape[1:])} and {tuple(values.shape[2:])}"
                )
            if self.device is not None and values.device != self.device:
                self._ensure_state(values.device)  # raises DeviceMismatchError
        if values.shape[1] == 0:
            return
        self.device = values.device
        for line, row in enumerate(targets):
            self._chunks[row].append(values[line].detach().clone())
            self.dtypes[row] = _promote(self.dtypes[row], values.dtype)
            self._counts[row] += int(values.shape[1]) if samples is None else int(samples)
            self._droppable[row] = droppable

    @override
    def _add(
        self,
        state: dict[str, Tensor],
        values: Tensor,
        weights: Tensor | None,
        samples: Any,
        droppable: bool,
    ) -> None:  # pragma: no cover - add is overridden
        raise NotImplementedError

    def trailing(self, row: int) -> tuple[int, ...] | None:
        """The trailing shape the values of ``row`` have (``None`` before any value)."""
        held = self._chunks[row]
        return tuple(held[0].shape[1:]) if held else None

    def _joined(self, row: int) -> Tensor | None:
        chunks = self._chunks[row]
        if len(chunks) > 1:  # one concatenation for everything held: merging stays linear
            dtype = chunks[0].dtype
            for chunk in chunks[1:]:
                dtype = torch.promote_types(dtype, chunk.dtype)
            self._chunks[row] = chunks = [torch.cat([chunk.to(dtype) for chunk in chunks])]
        return chunks[0] if chunks else None

    @override
    def reduce(self) -> list[Tensor]:
        results = []
        for row in range(self.rows):
            joined = self._joined(row)
            if joined is None:
                dtype = self.dtypes[row] or torch.get_default_dtype()
                results.append(torch.empty(0, dtype=dtype, device=self.device or _CPU))
            else:
                results.append(joined.clone())
        return results

    @override
    def _reduce(self, state: dict[str, Tensor]) -> list[Tensor]:  # pragma: no cover
        raise NotImplementedError

    @override
    def samples(self) -> list[int]:
        return list(self._counts)

    @override
    def grow(self, labels: Sequence[str]) -> int:
        first = super().grow(labels)
        self._chunks.extend([] for _ in labels)
        self._counts.extend(0 for _ in labels)
        self._droppable.extend(False for _ in labels)
        return first

    @override
    def merge(self, other: Accumulator, rows: Sequence[int] | None = None) -> None:
        if not isinstance(other, Cat):
            raise IncompatibleStateError(
                f"Cat: cannot merge a {other.kind!r} state into a 'cat' state"
            )
        targets = list(range(other.rows)) if rows is None else list(rows)
        for source, target in enumerate(targets):
            joined = other._joined(source)
            if joined is None:
                continue
            held = self._chunks[target]
            if held and held[0].shape[1:] != joined.shape[1:]:
                raise IncompatibleStateError(
                    f"{self.labels[target]}: cannot merge values of trailing shape "
                    f"{tuple(joined.shape[1:])} into {tuple(held[0].shape[1:])}"
                )
            device = self.device if self.device is not None else joined.device
            self.device = device
            held.append(joined.to(device, copy=True))
            self.dtypes[target] = _promote(self.dtypes[target], joined.dtype)
            self._counts[target] += other._counts[source]
            self._droppable[target] = other._droppable[source]

    @override
    def reset(self) -> None:
        super().reset()
        self._chunks = [[] for _ in range(self.rows)]
        self._counts = [0] * self.rows
        self._droppable = [False] * self.rows

    @override
    def to(self, device: torch.device | str) -> None:
        if any(self._chunks):
            self.device = torch.device(device)
            self._chunks = [[chunk.to(self.device) for chunk in held] for held in self._chunks]

    @override
    def copy(self) -> Self:
        other = super().copy()
        other._chunks = [[chunk.clone() for chunk in held] for held in self._chunks]
        other._counts = list(self._counts)
        other._droppable = list(self._droppable)
        return other

    @override
    def export(self) -> ExportedState:
        meta: dict[str, Any] = {
            "kind": self.kind,
            "rows": self.rows,
            "dtypes": [None if dtype is None else dtype_name(dtype) for dtype in self.dtypes],
            "samples": list(self._counts),
            "droppable": list(self._droppable),
        }
        tensors = []
        for row in range(self.rows):
            joined = self._joined(row)
            if joined is not None:
                tensors.append(joined.clone())
        meta["held"] = [bool(held) for held in self._chunks]
        return meta, tensors

    @override
    def load(
        self, meta: Any, tensors: Sequence[Any], device: torch.device | str | None = None
    ) -> None:
        where = "Cat"
        if not isinstance(meta, dict) or meta.get("kind") != "cat":
            raise StateDictError(f"{where}: expected a 'cat' state, found {meta!r:.80}")
        rows = meta.get("rows")
        held = meta.get("held")
        counts = meta.get("samples")
        flags = meta.get("droppable")
        names = meta.get("dtypes")
        if (
            not isinstance(rows, int)
            or isinstance(rows, bool)
            or rows < 0
            or not all(
                isinstance(item, list) and len(item) == rows
                for item in (held, counts, flags, names)
            )
        ):
            raise StateDictError(f"{where}: malformed 'cat' state metadata {meta!r:.120}")
        assert isinstance(held, list) and isinstance(counts, list)
        assert isinstance(flags, list) and isinstance(names, list)
        if sum(bool(item) for item in held) != len(tensors):
            raise StateDictError(
                f"{where}: the metadata says {sum(map(bool, held))} rows hold values, found "
                f"{len(tensors)} tensors"
            )
        if any(
            not isinstance(count, int) or isinstance(count, bool) or count < 0 for count in counts
        ):
            raise StateDictError(f"{where}: sample counts must be ints >= 0, found {counts}")
        dtypes = [None if name is None else dtype_from_name(name) for name in names]
        if any(
            name is not None and dtype is None for name, dtype in zip(names, dtypes, strict=True)
        ):
            raise StateDictError(f"{where}: unknown dtype names in {names}")
        chunks: list[list[Tensor]] = []
        remaining = iter(tensors)
        target = None
        for row in range(rows):
            if not held[row]:
                chunks.append([])
                continue
            tensor = next(remaining)
            if not isinstance(tensor, Tensor) or tensor.ndim == 0:
                raise StateDictError(
                    f"{where}: row {row} must hold a tensor with a leading dimension, found "
                    f"{type(tensor).__name__}"
                )
            target = torch.device(device) if device is not None else tensor.device
            chunks.append([tensor.to(target, copy=True)])
        self.rows = rows
        if len(self.labels) != rows:
            self.labels = [f"Cat row {index}" for index in range(rows)]
        self.dtypes = dtypes
        self._chunks = chunks
        self._counts = list(counts)
        self._droppable = [bool(flag) for flag in flags]
        self.device = target
        self._state = None


ACCUMULATORS: dict[str, type[Accumulator]] = {cls.kind: cls for cls in (Mean, Sum, Min, Max, Cat)}
"""Accumulator classes by ``kind``."""


def accumulator_class(aggregation: Any, owner: str | Callable[[], str]) -> type[Accumulator]:
    """The accumulator class an ``aggregation=`` names: a kind or an :class:`Accumulator` subclass.

    Raises:
        ValueError: anything else (naming the accepted kinds).

    Example:
        >>> from torchtally.aggregation import Max, accumulator_class
        >>> accumulator_class('max', 'Metric') is Max
        True
    """
    if isinstance(aggregation, type) and issubclass(aggregation, Accumulator):
        return aggregation
    found = ACCUMULATORS.get(aggregation) if isinstance(aggregation, str) else None
    if found is None:
        raise ValueError(
            f"{owner if isinstance(owner, str) else owner()}: aggregation must be one of "
            f"{sorted(ACCUMULATORS)} or an Accumulator subclass, found {aggregation!r}"
        )
    return found

"""The accumulator base: declared state tensors, and everything derived from them."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor
from typing_extensions import Self

from torchtally._conventions import dtype_from_name, dtype_name
from torchtally.errors import (
    DeviceMismatchError,
    IncompatibleStateError,
    ResultShapeError,
    StateDictError,
    WeightError,
)

__all__ = [
    "MERGE_RULES",
    "Accumulator",
    "ExportedState",
    "StateSpec",
    "combine_stacked",
    "combine_states",
    "dtypes_from_counts",
    "is_exact",
    "promote",
    "two_sum_into",
]


ExportedState = tuple[dict[str, Any], list[Tensor]]
"""A state as JSON-able metadata plus a list of tensors."""

MERGE_RULES = ("sum", "twosum", "min", "max", "latest")
"""How two states combine: add them; add compensated ``(high, low)`` pairs exactly; keep
the smaller or the larger; keep the later one (``latest``: per-rank bookkeeping)."""

_F64 = torch.float64
_I64 = torch.int64
_ADDED = ("sum", "twosum")  # the rules of states that a sum all-reduce combines
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
        >>> tuple((spec.name, spec.width, spec.rule) for spec in Mean.states)
        (('samples', 1, 'sum'), ('total', 2, 'twosum'), ('weight', 1, 'sum'), ('last', 3, 'latest'))
    """

    name: str
    width: int
    dtype: torch.dtype
    rule: str
    fill: float = 0.0


def two_sum_into(total: Tensor, addend: Tensor) -> None:
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


def is_exact(dtype: torch.dtype) -> bool:
    """Integers and booleans: values whose sums, minima and maxima are reported exactly."""
    return not dtype.is_floating_point and not dtype.is_complex


def promote(first: torch.dtype | None, second: torch.dtype) -> torch.dtype:
    """The dtype of a row that has seen ``first`` (``None``: nothing yet) and then ``second``."""
    return second if first is None else torch.promote_types(first, second)


def _two_sum_all(stacked: Tensor) -> Tensor:
    """The compensated sum of ``(n, rows, 2)`` ``(high, low)`` pairs, as ``(rows, 2)``.

    Pairs are added as a balanced tree of TwoSums, so ``n`` states take
    ``log2(n)`` vectorised steps, each exact up to the low words' own rounding.
    """
    high, low = stacked[..., 0], stacked[..., 1]
    while high.shape[0] > 1:
        if high.shape[0] % 2:
            high = torch.cat([high, torch.zeros_like(high[:1])])
            low = torch.cat([low, torch.zeros_like(low[:1])])
        first, second = high[0::2], high[1::2]
        summed = first + second
        virtual = summed - first
        error = (first - (summed - virtual)) + (second - virtual)
        low = low[0::2] + low[1::2] + error.nan_to_num(0.0, 0.0, 0.0)
        high = summed
    return torch.stack([high[0], low[0]], 1)


def combine_states(
    specs: Sequence[StateSpec], states: Sequence[Mapping[str, Tensor]]
) -> dict[str, Tensor]:
    """Combine the states of any number of accumulators holding the same rows, in one pass.

    Each state tensor combines by its declared rule (:data:`MERGE_RULES`);
    ``latest`` takes the last state whose row has seen anything. This is the
    one place states combine: ``merge``, ``merge_state`` and ``sync_all`` use it.

    Example:
        >>> import torch
        >>> from torchtally.aggregation import Max, combine_states
        >>> parts = [Max(), Max()]
        >>> parts[0].add(torch.tensor([1.0])); parts[1].add(torch.tensor([4.0, 2.0]))
        >>> combined = combine_states(Max.states, [part.state for part in parts])
        >>> combined['samples'], combined['float']
        (tensor([[3]]), tensor([[4.]], dtype=torch.float64))
    """
    return combine_stacked(
        specs, {spec.name: torch.stack([state[spec.name] for state in states]) for spec in specs}
    )


def combine_stacked(specs: Sequence[StateSpec], stacked: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """:func:`combine_states` of states already stacked: ``(n, rows, width)`` per state."""
    combined: dict[str, Tensor] = {}
    for spec in specs:
        if spec.name not in stacked:  # a state that does not travel (per-rank bookkeeping)
            continue
        parts = stacked[spec.name]
        if spec.rule == "sum":
            combined[spec.name] = parts.sum(0)
        elif spec.rule == "twosum":
            combined[spec.name] = _two_sum_all(parts)
        elif spec.rule == "min":
            combined[spec.name] = parts.amin(0)
        elif spec.rule == "max":
            combined[spec.name] = parts.amax(0)
        else:  # latest: from the last state whose row has seen anything
            took = stacked["samples"] > 0  # (n, rows, 1)
            order = torch.arange(took.shape[0], device=took.device).view(-1, 1, 1)
            last = torch.where(took, order, 0).amax(0, keepdim=True)
            combined[spec.name] = parts.gather(0, last.expand(1, *parts.shape[1:]))[0]
    return combined


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
            self.dtypes[row] = promote(self.dtypes[row], values.dtype)
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

    @property
    def state(self) -> dict[str, Tensor] | None:
        """The state tensors by declared name, ``(rows, width)`` each (``None`` before any value).

        The accumulator's own tensors, for reading: change them and the state changes.
        """
        return self._state

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
                self.dtypes[target] = promote(self.dtypes[target], dtype)
        self._update_rows(
            None if rows is None else targets,
            lambda mine: _replace(mine, combine_states(self.states, [mine, theirs])),
        )

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

    # -- across processes (sync_all) ----------------------------------------------------------

    @classmethod
    def summable(cls) -> bool:
        """Whether every state combines by addition, so a sum all-reduce alone can sync it.

        True for :class:`Mean` and :class:`Sum` (and custom kinds whose states
        all use the ``'sum'`` and ``'twosum'`` rules; ``'latest'`` states stay
        on their process). Such rows travel in one float64 vector whose size
        does not grow with the number of processes.

        Example:
            >>> from torchtally.aggregation import Max, Mean
            >>> Mean.summable(), Max.summable()
            (True, False)
        """
        return bool(cls.states) and not cls.fixed_layout(1)

    @classmethod
    def sync_width(cls) -> int:
        """Columns per row of :meth:`sync_columns`: the added-up states, then 3 dtype counts."""
        return sum(spec.width for spec in cls.states if spec.rule in _ADDED) + 3

    def sync_columns(self) -> Tensor:
        """The states that add up, and the dtype counts: ``(rows, sync_width())`` float64.

        Added up over ranks (one all-reduce), they give those states over all
        ranks (exactly for integer counts below 2**53; for float64 sums, to the
        rounding of adding one number per rank) and the reported dtype
        (:meth:`dtype_counts`).
        """
        device = self.device if self.device is not None else _CPU
        added = [spec for spec in self.states if spec.rule in _ADDED]
        if self._state is None:
            width = sum(spec.width for spec in added)
            values = [torch.zeros(self.rows, width, dtype=_F64, device=device)]
        else:
            values = [self._state[spec.name].to(_F64) for spec in added]
        return torch.cat([*values, self.dtype_counts()], 1)

    def dtype_counts(self) -> Tensor:
        """Per row, whether it saw float64, another floating dtype, integers: ``(rows, 3)``.

        Added up over ranks, they tell the reported dtype (:func:`dtypes_from_counts`).
        """
        device = self.device if self.device is not None else _CPU
        flags = [
            [0.0, 0.0, 0.0]
            if dtype is None
            else [
                float(dtype == _F64),
                float(dtype.is_floating_point and dtype != _F64),
                float(is_exact(dtype)),
            ]
            for dtype in self.dtypes
        ]
        return torch.tensor(flags, dtype=_F64, device=device).reshape(self.rows, 3)

    @classmethod
    def fixed_layout(cls, rows: int) -> list[tuple[StateSpec, int, int]]:
        """Where the states that do not add up lie in :meth:`fixed_bytes`: ``(spec, offset, size)``.

        The ``'min'`` and ``'max'`` states (``'latest'`` ones stay on their
        process), each at a multiple of 8 bytes so it can be viewed in its dtype.
        """
        layout = []
        offset = 0
        for spec in cls.states:
            if spec.rule in _ADDED or spec.rule == "latest":
                continue
            size = rows * spec.width * spec.dtype.itemsize
            layout.append((spec, offset, size))
            offset += -(-size // 8) * 8
        return layout

    @classmethod
    def fixed_size(cls, rows: int) -> int:
        """The number of bytes :meth:`fixed_bytes` gives for ``rows`` rows."""
        layout = cls.fixed_layout(rows)
        return 0 if not layout else layout[-1][1] + -(-layout[-1][2] // 8) * 8

    def fixed_bytes(self) -> Tensor:
        """The states that do not add up, as one uint8 tensor of :meth:`fixed_size` bytes.

        A layout known from the rows alone: ranks holding the same rows send
        blocks that line up, gathered and combined without any metadata.
        """
        device = self.device if self.device is not None else _CPU
        state = self._state if self._state is not None else self._fresh(self.rows, device)
        block = torch.zeros(self.fixed_size(self.rows), dtype=torch.uint8, device=device)
        for spec, offset, size in self.fixed_layout(self.rows):
            block[offset : offset + size] = state[spec.name].contiguous().view(-1).view(torch.uint8)
        return block

    @classmethod
    def from_synced(cls, columns: Tensor, blocks: Tensor | None, labels: Sequence[str]) -> Self:
        """An accumulator holding every rank's state combined.

        Args:
            columns: the added-up :meth:`sync_columns`, ``(rows, sync_width())``.
            blocks: every rank's :meth:`fixed_bytes`, ``(ranks, fixed_size)``
                (``None`` for a kind without such states).
            labels: how messages name the rows.
        """
        result = cls(rows=columns.shape[0])
        result.labels = list(labels)
        result.dtypes = dtypes_from_counts(columns[:, -3:])
        if all(dtype is None for dtype in result.dtypes):
            return result
        result.device = columns.device
        state = result._fresh(result.rows, columns.device)
        offset = 0
        for spec in cls.states:
            if spec.rule in _ADDED:
                part = columns[:, offset : offset + spec.width]
                exact = not spec.dtype.is_floating_point
                state[spec.name] = part.round().to(spec.dtype) if exact else part.to(spec.dtype)
                offset += spec.width
        if blocks is not None:
            ranks = blocks.shape[0]
            stacked = {
                spec.name: blocks[:, start : start + size]
                .contiguous()
                .view(spec.dtype)
                .view(ranks, result.rows, spec.width)
                for spec, start, size in cls.fixed_layout(result.rows)
            }
            state.update(combine_stacked(cls.states, stacked))
        result._state = state
        return result

    def without_last(self) -> tuple[Self, Tensor]:
        """A copy without each row's last sample, where that sample is known; and which rows.

        For ``sync(dataset_size=...)``: the last sample of a process is the one
        a ``DistributedSampler`` may have repeated. Returns the copy and a
        ``(rows,)`` bool tensor of the rows it was dropped from. The default
        drops nothing; :class:`Mean` and :class:`Sum` drop the last entry of a
        per-sample batch, :class:`Min` and :class:`Max` need not drop anything
        (a repeated sample changes no extremum) and only count it out,
        :class:`Cat` removes the last value kept.
        """
        device = self.device if self.device is not None else _CPU
        return self.copy(), torch.zeros(self.rows, dtype=torch.bool, device=device)

    @classmethod
    def combined(
        cls, parts: Sequence[tuple[Accumulator, Sequence[int]]], rows: int, labels: Sequence[str]
    ) -> Self:
        """One accumulator of ``rows`` rows holding every part's state (parts unchanged).

        Each part comes with the row each of its rows goes to; all parts are
        combined at once (:func:`combine_states`), so ``n`` parts cost one pass,
        not ``n`` merges.
        """
        result = cls(rows=rows)
        result.labels = list(labels)
        held = [(part, list(targets)) for part, targets in parts if part._state is not None]
        if not held:
            return result
        device = held[0][0].device
        assert device is not None
        aligned = []
        for part, targets in held:
            full = result._fresh(rows, device)
            assert part._state is not None
            index = torch.tensor(targets, dtype=_I64, device=device)
            for name, tensor in part._state.items():
                full[name].index_copy_(0, index, tensor.to(device))
            aligned.append(full)
            for source, target in enumerate(targets):
                dtype = part.dtypes[source]
                if dtype is not None:
                    result.dtypes[target] = promote(result.dtypes[target], dtype)
        result.device = device
        result._state = combine_states(cls.states, aligned)
        return result

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


def dtypes_from_counts(counts: Tensor) -> list[torch.dtype | None]:
    """The dtype each row reports from, given its added-up :meth:`Accumulator.dtype_counts`.

    Example:
        >>> import torch
        >>> from torchtally.aggregation._accumulator import dtypes_from_counts
        >>> dtypes_from_counts(torch.tensor([[0.0, 2.0, 1.0], [0.0, 0.0, 0.0]]))
        [torch.float32, None]
    """
    return [
        _F64 if f64 else torch.float32 if floating else _I64 if exact else None
        for f64, floating, exact in counts.tolist()
    ]


def _replace(state: dict[str, Tensor], combined: Mapping[str, Tensor]) -> None:
    for name, tensor in combined.items():
        state[name].copy_(tensor)

"""An accumulator's state as ``sync_all`` moves it: summed columns and fixed-layout bytes.

:class:`SyncLayout` is the part of :class:`~torchtally.aggregation.Accumulator`
that lays its state out for the collectives and rebuilds an accumulator from
what they bring back. States that add up (the ``'sum'`` and ``'twosum'``
rules) travel as float64 columns added over the ranks by one all-reduce;
minima and maxima as raw bytes whose layout follows from the row count
alone, gathered and combined without metadata; ``'latest'`` states stay on
their process. Before any of that, ``sync(dataset_size=...)`` takes the
sample a ``DistributedSampler`` repeated out of a copy (:meth:`SyncLayout.without_last`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from typing_extensions import Self

from torchtally.aggregation._states import (
    StateHolder,
    StateSpec,
    combine_stacked,
    fresh_state,
    is_exact,
    outside_inference_mode,
)

__all__ = ["SyncLayout", "dtypes_from_counts"]

_F64 = torch.float64
_I64 = torch.int64
_ADDED = ("sum", "twosum")  # the rules of states that a sum all-reduce combines
_CPU = torch.device("cpu")


class SyncLayout(StateHolder):
    """The sync side of an accumulator (a mixin of :class:`~torchtally.aggregation.Accumulator`).

    It reads the accumulator's declared :attr:`states`, rows, dtypes and
    state tensors, and makes accumulators with ``cls(rows=...)`` and ``copy()``.
    """

    if TYPE_CHECKING:

        def __init__(self, rows: int = 1) -> None: ...

        def copy(self) -> Self: ...

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
        ranks (exactly for counts below 2**53 and for integer sums, see
        :func:`_integer_words`; for float64 sums, to the rounding of adding one
        number per rank) and the reported dtype (:meth:`dtype_counts`).
        """
        device = self.device if self.device is not None else _CPU
        added = [spec for spec in self.states if spec.rule in _ADDED]
        if self._state is None:
            width = sum(spec.width for spec in added)
            values = [torch.zeros(self.rows, width, dtype=_F64, device=device)]
        else:
            exact = [dtype is not None and is_exact(dtype) for dtype in self.dtypes]
            integers = torch.tensor(exact, dtype=torch.bool, device=device)
            values = [
                _integer_words(self._state[spec.name], integers)
                if spec.rule == "twosum"
                else self._state[spec.name].to(_F64)
                for spec in added
            ]
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
        state = (
            self._state if self._state is not None else fresh_state(self.states, self.rows, device)
        )
        block = torch.zeros(self.fixed_size(self.rows), dtype=torch.uint8, device=device)
        for spec, offset, size in self.fixed_layout(self.rows):
            block[offset : offset + size] = state[spec.name].contiguous().view(-1).view(torch.uint8)
        return block

    @classmethod
    @outside_inference_mode
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
        state = fresh_state(cls.states, result.rows, columns.device)
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

    def keeping_last(self, rows: Tensor) -> Self:
        """A copy whose :meth:`without_last` keeps the last sample of ``rows`` (a ``(rows,)`` bool).

        For a row whose last value was computed from values that could not
        drop their repeat (a loss's combined value broadcasting a batch
        mean): its last entry is not one sample's value either. :class:`Mean`
        and :class:`Sum` mark those rows as holding no droppable sample; the
        default copies only, right for minima and maxima (they drop nothing)
        but not for :class:`Cat`, whose derived rows would still drop their last
        value (losses derive means only).
        """
        return self.copy()


def _integer_words(total: Tensor, integers: Tensor) -> Tensor:
    """Compensated ``(high, low)`` pairs; those of integer rows split so ranks add them exactly.

    A float64 all-reduce rounds a sum of high words past 2**53 (``2**53 + 1``
    over two ranks gave ``2**53``). A row of integers (``integers``, from its
    dtype) whose words hold an integer ``v`` below 2**63 in magnitude is sent
    as ``(v - v mod 2**32, v mod 2**32)``: a multiple of 2**32 with 31
    significant bits and a number below 2**32, whose sums over up to 2**21
    ranks are exact in float64. Other rows (floats, weighted integers) go as
    they are.
    """
    high, low = total[:, 0], total[:, 1]
    limit = 2.0**62
    whole = (
        integers
        & (high == high.trunc())
        & (low == low.trunc())
        & (high.abs() < limit)
        & (low.abs() < limit)
    )
    value = torch.where(whole, high, 0.0).to(_I64) + torch.where(whole, low, 0.0).to(_I64)
    below = value & (2**32 - 1)  # v mod 2**32, in [0, 2**32) for negative v too
    split = torch.stack([value - below, below], 1).to(_F64)
    return torch.where(whole.unsqueeze(1), split, total)


def dtypes_from_counts(counts: Tensor) -> list[torch.dtype | None]:
    """The dtype each row reports from, given its added-up :meth:`Accumulator.dtype_counts`.

    Example:
        >>> import torch
        >>> from torchtally.aggregation import dtypes_from_counts
        >>> dtypes_from_counts(torch.tensor([[0.0, 2.0, 1.0], [0.0, 0.0, 0.0]]))
        [torch.float32, None]
    """
    return [
        _F64 if f64 else torch.float32 if floating else _I64 if exact else None
        for f64, floating, exact in counts.tolist()
    ]

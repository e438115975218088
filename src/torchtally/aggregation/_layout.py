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

import torch
from torch import Tensor
from typing_extensions import Self

from torchtally._dtypes import DTYPES
from torchtally._inference import outside_inference_mode
from torchtally.aggregation._states import (
    StateHolder,
    StateSpec,
    combine_stacked,
    fresh_state,
    is_exact,
    promote,
    two_sum_into,
)

__all__ = ["SyncLayout", "dtypes_from_counts"]

_F64 = torch.float64
_I64 = torch.int64
_ADDED = ("sum", "twosum")  # the rules of states that a sum all-reduce combines
_CPU = torch.device("cpu")
_HELD = tuple(DTYPES.values())  # one dtype count per held dtype, in this order
_ONE_HOT: dict[torch.dtype | None, list[float]] = {
    dtype: [float(dtype == held) for held in _HELD] for dtype in (None, *_HELD)
}  # a row's dtype counts, by its dtype (read once per row at each sync)


def _sent_width(spec: StateSpec) -> int:
    """Columns a summed state takes in :meth:`SyncLayout.sync_columns` (``'twosum'``: 4)."""
    return spec.width + 2 if spec.rule == "twosum" else spec.width


class SyncLayout(StateHolder):
    """The sync side of an accumulator (a mixin of :class:`~torchtally.aggregation.Accumulator`).

    It reads the accumulator's declared :attr:`states`, rows, dtypes and
    state tensors, and makes accumulators with ``cls(rows=...)`` and ``copy()``.
    """

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
        """Columns per row of :meth:`sync_columns`: the added-up states, then the dtype counts."""
        return sum(_sent_width(spec) for spec in cls.states if spec.rule in _ADDED) + len(_HELD)

    def sync_columns(self) -> Tensor:
        """The states that add up, and the dtype counts: ``(rows, sync_width())`` float64.

        Added up over ranks (one all-reduce), they give those states over all
        ranks (exactly for counts below 2**53 and for integer sums, see
        :func:`_integer_words`; for float64 sums, to the rounding of adding one
        number per rank) and the row's dtype (:meth:`dtype_counts`).
        """
        device = self.device if self.device is not None else _CPU
        added = [spec for spec in self.states if spec.rule in _ADDED]
        if self._state is None:
            width = sum(_sent_width(spec) for spec in added)
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
        """Per row, a 1 in the column of its dtype, one column per held dtype: ``(rows, 10)``.

        The columns follow :data:`torchtally._dtypes.DTYPES`; a row that has seen
        nothing is all 0. Added up over ranks, they tell which dtypes the ranks
        saw, and so the row's dtype over all of them (:func:`dtypes_from_counts`).
        """
        device = self.device if self.device is not None else _CPU
        flags = [_ONE_HOT[dtype] for dtype in self.dtypes]
        return torch.tensor(flags, dtype=_F64, device=device).reshape(self.rows, len(_HELD))

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
        result.dtypes = dtypes_from_counts(columns[:, -len(_HELD) :])
        if all(dtype is None for dtype in result.dtypes):
            return result
        result.device = columns.device
        state = fresh_state(cls.states, result.rows, columns.device)
        offset = 0
        for spec in cls.states:
            if spec.rule == "twosum":  # the float words, then the integer words added exactly
                part = columns[:, offset : offset + 4]
                total = part[:, :2].to(spec.dtype, copy=True)
                two_sum_into(total, part[:, 2])
                two_sum_into(total, part[:, 3])
                state[spec.name] = total
            elif spec.rule in _ADDED:
                part = columns[:, offset : offset + spec.width]
                exact = not spec.dtype.is_floating_point
                state[spec.name] = part.round().to(spec.dtype) if exact else part.to(spec.dtype)
            offset += _sent_width(spec) if spec.rule in _ADDED else 0
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
        mean): its last entry is not one sample's value either. :class:`Mean`,
        :class:`Sum` and :class:`Cat` mark those rows as holding no droppable
        sample; the default copies only, right for minima and maxima (they
        drop nothing). A custom kind whose :meth:`without_last` drops values
        overrides this too.
        """
        return self.copy()


def _integer_words(total: Tensor, integers: Tensor) -> Tensor:
    """Compensated ``(high, low)`` pairs as 4 columns: float words, then integer words.

    A float64 all-reduce rounds a sum of high words past 2**53 (``2**53 + 1``
    over two ranks gave ``2**53``). A row of integers (``integers``, from its
    dtype) whose two words are integers below 2**62 in magnitude (so their
    int64 sum ``v`` cannot wrap) is sent as ``(0, 0, v - v mod 2**32, v mod 2**32)``:
    a multiple of 2**32 with at most 31 significant bits and a number below
    2**32, whose sums over up to 2**21 ranks are exact in float64. Other rows
    (floats, weighted integers, integer words beyond 2**62) are sent as
    ``(high, low, 0, 0)``. The integer words have columns of their own: added
    to another rank's float words, ``-2**32`` would round them (a float64 row
    of ``0.35`` on one rank and an int8 sum of ``-1`` on another came back
    off by ``2**-23``). :meth:`SyncLayout.from_synced` adds the integer words
    to the float words exactly.
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
    kept = whole.unsqueeze(1)
    return torch.cat([torch.where(kept, 0.0, total), torch.where(kept, split, 0.0)], 1)


def dtypes_from_counts(counts: Tensor) -> list[torch.dtype | None]:
    """Each row's dtype over all ranks, given its added-up :meth:`Accumulator.dtype_counts`.

    :func:`~torchtally.aggregation._states.promote` folded over the dtypes the
    ranks saw (in the order of :data:`torchtally._dtypes.DTYPES`), so a synced
    row has the dtype a merge of the ranks' accumulators gives: the very one
    for two ranks, and for more one that reports alike (only the order of
    float16, bfloat16 and narrow integers may differ, and those all report
    float32); ``None`` for a row no rank has seen.

    Example:
        >>> import torch
        >>> from torchtally.aggregation import Max, Mean, dtypes_from_counts
        >>> ids, scores, empty = Max(), Max(), Mean()
        >>> ids.add(torch.tensor([16_777_217])); scores.add(torch.tensor([0.5]))
        >>> dtypes_from_counts(ids.dtype_counts() + scores.dtype_counts() + empty.dtype_counts())
        [torch.float64]
    """
    found: list[torch.dtype | None] = []
    for row in counts.tolist():
        dtype: torch.dtype | None = None
        for held, count in zip(_HELD, row, strict=True):
            if count > 0:
                dtype = promote(dtype, held)
        found.append(dtype)
    return found

"""Merging accumulators: another's state into some rows of this one, or many into a new one.

A mixin of :class:`~torchtally.aggregation.Accumulator`, apart from adding
and reading: it checks that the states fit (kind, rows), moves the other
state to this one's device, aligns rows and promotes each row's dtype by
the one merged into it. How two states' tensors combine, rule by rule, is
:func:`~torchtally.aggregation._states.combine_states` (also what a sync uses).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from typing_extensions import Self

from torchtally._inference import outside_inference_mode
from torchtally.aggregation._states import (
    StateHolder,
    change_rows,
    combine_states,
    fresh_state,
    replace_state,
)
from torchtally.errors import IncompatibleStateError

__all__ = ["Merging"]


class Merging(StateHolder):
    """Merging states (a mixin of :class:`~torchtally.aggregation.Accumulator`).

    It reads the accumulator's kind, rows, device and state tensors, makes
    the state with ``_ensure_state`` and records dtypes with ``_promote_rows``.

    Example:
        >>> import torch
        >>> from torchtally.aggregation import Sum
        >>> left, right = Sum(rows=2), Sum(rows=1)
        >>> left.add(torch.tensor([[1, 2], [3, 4]]))
        >>> right.add(torch.tensor([10]))
        >>> left.merge(right, rows=[1])
        >>> left.reduce()
        [tensor(3), tensor(17)]
    """

    def merge(self, other: Self, rows: Sequence[int] | None = None) -> None:
        """Add ``other``'s state to this one's (``other`` is not changed).

        Args:
            other: an accumulator of the same kind.
            rows: for each row of ``other``, the row of ``self`` it merges into
                (default: the same rows, in order).

        Raises:
            IncompatibleStateError: ``other`` is of another kind or row count.
        """
        targets = self._merge_targets(other, rows)
        if other._state is None:
            return
        assert other.device is not None
        self._ensure_state(self.device if self.device is not None else other.device)
        theirs = {name: tensor.to(self.device) for name, tensor in other._state.items()}
        self._take_dtypes(other, targets)
        assert self._state is not None
        change_rows(
            self._state,
            None if rows is None else targets,
            lambda mine: replace_state(mine, combine_states(self.states, [mine, theirs])),
        )

    @classmethod
    @outside_inference_mode
    def combined(
        cls, parts: Sequence[tuple[Self, Sequence[int]]], rows: int, labels: Sequence[str]
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
            full = fresh_state(cls.states, rows, device)
            assert part._state is not None
            index = torch.tensor(targets, dtype=torch.int64, device=device)
            for name, tensor in part._state.items():
                full[name].index_copy_(0, index, tensor.to(device))
            aligned.append(full)
            result._take_dtypes(part, targets)
        result.device = device
        result._state = combine_states(cls.states, aligned)
        return result

    def _merge_targets(self, other: Self, rows: Sequence[int] | None) -> list[int]:
        """The row of ``self`` each row of ``other`` merges into, once both are checked to fit.

        Raises:
            IncompatibleStateError: ``other`` is of another kind, or ``rows`` does not
                give each of its rows a row of ``self``.
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
        return targets

    def _take_dtypes(self, other: Self, targets: Sequence[int]) -> None:
        """Promote each row of ``targets`` by the dtype of ``other``'s row that goes into it."""
        for target, dtype in zip(targets, other.dtypes, strict=True):
            if dtype is not None:
                self._promote_rows((target,), dtype)

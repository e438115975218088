"""One batch folded into every row of a mean or a sum at once, one write per state tensor.

Inside ``torch.compile`` an objective folds each batch straight into its
accumulators (nothing is queued). There, what costs is not the arithmetic but
each buffer the compiled graph allocates and each view it cuts: a write into
some rows of a state tensor becomes a copy of the whole tensor, and a
``stack`` (or ``cat``) on the CPU is a buffer of its own with a view per
input. So when a batch's entries cover every row of a
:class:`~torchtally.aggregation.Mean` or :class:`~torchtally.aggregation.Sum`
and are floating point, :meth:`RowFolding._fold_rows` works out each row's
contribution (the arithmetic of ``Mean._add``, row by row, to the bit), picks
it by nested ``where`` on the row index, and writes each state tensor once,
whole and in place. Otherwise each part is added as usual.

The fold is reached through the accumulator's methods and closures made while
tracing: each module-level function the traced code calls would be one more
guard that dynamo checks before every call of the compiled step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from torchtally.aggregation._states import StateHolder, two_sum, weigh_in_place

__all__ = ["Entries", "RowFolding"]

Entries = tuple[tuple[Tensor, ...], "Tensor | None", "tuple[int, ...] | None", bool, Any]
"""One batch's entries for some rows of an accumulator: ``(lines, weights, rows, droppable,
scale)``.

``lines`` holds one ``(T,)`` tensor of entries per row; ``weights`` ``(T,)``
float64 per-entry weights or ``None``; ``rows`` the rows the lines go to
(``None``: every row, in order); ``droppable`` whether the last entry is the
last sample of a per-sample batch; ``scale``, when ``weights`` is ``None``, the
positive number each entry weighs (``None``: 1; a scalar batch mean weighs
its batch size). A plain tuple: a named tuple's class would be guarded.
"""


class RowFolding(StateHolder):
    """Folding one batch's entries into every row of a mean or sum at once (a mixin)."""

    def _fold_rows(self, entries: Sequence[Entries], samples: Any) -> None:
        """Fold ``entries`` (floating, covering each row once) into the state, in place.

        Each state tensor is written once, whole: ``total`` by a compensated
        sum (``two_sum``, as ``two_sum_into`` adds), ``weight`` and
        ``samples`` by one addition, ``last`` by one copy. Rows are picked by
        nested ``where`` on the row index: in a graph compiled for the CPU a
        ``stack`` is a buffer of its own with a view per piece, a ``where`` is
        computed where it is stored.
        """
        state = self._state
        assert state is not None
        total = state["total"]
        f64 = total.dtype

        def by_row(pieces: Sequence[Any]) -> Tensor:  # (rows,) from a 0-d tensor or number each
            index = torch.arange(len(pieces), device=total.device)
            out = total.new_zeros(len(pieces))
            for row, piece in enumerate(pieces):
                out = torch.where(index == row, piece, out)
            return out

        def shared(pieces: Sequence[Any]) -> Any:  # one number when every row has the same
            first = pieces[0]
            for piece in pieces:  # ints and floats only: a symbolic int compared is a guard
                if (type(piece) is not int and type(piece) is not float) or piece != first:
                    return by_row(pieces)
            return first

        def columns(*found: Any) -> Tensor:  # (rows, k) from k columns (tensors or numbers)
            index = torch.arange(len(found), device=total.device)
            out = found[-1].unsqueeze(1) if isinstance(found[-1], Tensor) else found[-1]
            for place in range(len(found) - 2, -1, -1):
                column = found[place]
                column = column.unsqueeze(1) if isinstance(column, Tensor) else column
                out = torch.where(index == place, column, out)
            return out

        count = self.rows
        sums: list[Any] = [None] * count
        weights: list[Any] = [None] * count
        lasts: list[Any] = [None] * count
        last_weights: list[Any] = [None] * count
        dropped: list[Any] = [None] * count
        for lines, weight, rows, droppable, scale in entries:
            for place in range(len(lines)):  # the arithmetic of Mean._add, line by line
                line, row = lines[place], place if rows is None else rows[place]
                if weight is not None:
                    wide = weigh_in_place(line.to(f64, copy=True), weight.detach())
                    weights[row], last_weights[row] = weight.sum(), weight[-1]
                elif scale is not None:
                    wide = line.to(f64) * scale
                    weights[row], last_weights[row] = scale * line.shape[0], scale
                else:
                    wide = line.to(f64)
                    weights[row], last_weights[row] = line.shape[0], 1
                sums[row], lasts[row] = wide.sum(), wide[-1]
                dropped[row] = 1.0 if droppable else 0.0
        high, low = total.unbind(1)
        summed, error = two_sum(high, by_row(sums))
        total.copy_(columns(summed, low + error))
        weight = shared(weights)
        state["weight"].add_(weight.unsqueeze(1) if isinstance(weight, Tensor) else weight)
        state["last"].copy_(columns(by_row(lasts), shared(last_weights), shared(dropped)))
        state["samples"].add_(samples)

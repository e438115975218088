"""The rows of an objective's state: names over accumulator rows, read and replaced as a whole.

An objective's values live in :class:`~torchtally.aggregation.Accumulator`
rows, one per name, the rows of one accumulator class kept together.
:class:`Rows` owns them and what is done to all of them at once: reducing
them to values, merging another objective's, moving them, and exporting
and installing them (the format is :mod:`._state_io`'s). It also holds the
views an objective caches: the synced values and the computed ones.

It knows nothing of the queue that :class:`~._ledger.Ledger` (its
subclass) puts in front of the accumulators; two hooks let the ledger fold
what it holds back before the state is read or its rows change.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from torchtally._conventions import check_name
from torchtally.aggregation import Accumulator
from torchtally.errors import IncompatibleStateError
from torchtally.objectives._state_io import Rebuilt, export_state, import_state, row_groups

__all__ = ["Rows"]


class Rows:
    """Rows by name over accumulators, with the synced and computed views.

    Args:
        label: how error messages name the objective.
        accumulator_for: the accumulator class of a name.
    """

    def __init__(self, label: str, accumulator_for: Callable[[str], type[Accumulator]]) -> None:
        self.label = label
        self._accumulator_for = accumulator_for
        self.rows: dict[str, tuple[Accumulator, int]] = {}
        self.accumulators: dict[type[Accumulator], Accumulator] = {}
        self.device: torch.device | None = None
        self.updated = False
        self.synced: dict[str, Tensor] | None = None
        self.computed: dict[str, Tensor] | None = None

    # -- the hooks of a subclass that holds values back ---------------------------------------

    def flush(self) -> None:
        """Fold every value held back into the accumulators (nothing is held back here)."""

    def _rows_changing(self) -> None:
        """Called before the rows, the accumulators or the device change (nothing to do here)."""

    # -- names --------------------------------------------------------------------------------

    @property
    def names(self) -> tuple[str, ...]:
        """Every name with a row, in the order the rows were made."""
        return tuple(self.rows)

    def add_names(self, names: Sequence[str]) -> None:
        """Make a row for each new name (an accumulator of its class is made when needed)."""
        new = [check_name(name, self.label) for name in names if name not in self.rows]
        by_class: dict[type[Accumulator], list[str]] = {}
        for name in dict.fromkeys(new):
            by_class.setdefault(self._accumulator_for(name), []).append(name)
        if not by_class:
            return
        self._rows_changing()
        for cls, members in by_class.items():
            accumulator = self.accumulators.get(cls)
            if accumulator is None:
                accumulator = self.accumulators[cls] = cls(rows=0)
            first = accumulator.grow([f"{self.label} value {name!r}" for name in members])
            for offset, name in enumerate(members):
                self.rows[name] = (accumulator, first + offset)

    # -- reading ------------------------------------------------------------------------------

    def reduced(self) -> dict[str, Tensor]:
        """Every name's value (synced view if there is one), before an objective finalises it."""
        if self.synced is not None:
            return {name: value.clone() for name, value in self.synced.items()}
        self.flush()
        values = {cls: accumulator.reduce() for cls, accumulator in self.accumulators.items()}
        return {
            name: values[type(accumulator)][row] for name, (accumulator, row) in self.rows.items()
        }

    def groups(self) -> list[tuple[Accumulator, list[str]]]:
        """Every accumulator with the names of its rows, in row order (held values folded first)."""
        self.flush()
        return row_groups(self.rows, self.accumulators)

    # -- the state as a whole -----------------------------------------------------------------

    def reset(self) -> None:
        """Forget every value (rows stay) and drop the views."""
        for accumulator in self.accumulators.values():
            accumulator.reset()
        self.device = None
        self.updated = False
        self.synced = None
        self.computed = None

    def to(self, device: torch.device | str) -> None:
        """Move the state and the views to ``device``."""
        self._rows_changing()
        for accumulator in self.accumulators.values():
            accumulator.to(device)
        if self.synced is not None:
            self.synced = {name: value.to(device) for name, value in self.synced.items()}
        if self.device is not None:
            self.device = torch.device(device)
        self.computed = None

    def merge(self, other: Rows) -> None:
        """Add ``other``'s state, name by name.

        Raises:
            IncompatibleStateError: a shared name is aggregated differently.
        """
        self._rows_changing()  # concatenations' trailing shapes and the device may change
        other.flush()
        for name, (theirs, _) in other.rows.items():
            mine = self.rows.get(name)
            expected = type(mine[0]) if mine is not None else self._accumulator_for(name)
            if expected is not type(theirs):
                raise IncompatibleStateError(
                    f"{self.label}: cannot merge {name!r} aggregated as {theirs.kind!r} into "
                    f"{name!r} aggregated as {expected.kind!r}"
                )
        self.add_names(list(other.rows))
        for cls, accumulator in other.accumulators.items():
            names = [name for name, (held, _) in other.rows.items() if held is accumulator]
            self.accumulators[cls].merge(accumulator, [self.rows[name][1] for name in names])
        if other.device is not None and self.device is None:
            self.device = other.device
        self.updated = self.updated or other.updated
        self.synced = None
        self.computed = None

    def export(self) -> tuple[dict[str, Any], list[Tensor]]:
        """The state as JSON-able metadata plus tensors (copies), accumulator by accumulator."""
        self.flush()
        return export_state(self.rows, self.accumulators, self.updated)

    def imported(
        self, meta: Any, tensors: Sequence[Any], device: torch.device | str | None = None
    ) -> Rebuilt:
        """Accumulators rebuilt from :meth:`export`'s output, checked against this ledger's rules.

        Nothing of this ledger changes. Raises :class:`~torchtally.errors.StateDictError`.
        """
        return import_state(
            meta, tensors, label=self.label, accumulator_for=self._accumulator_for, device=device
        )

    def install(self, rebuilt: Mapping[type[Accumulator], tuple[Accumulator, list[str]]]) -> None:
        """Replace the state with accumulators from :meth:`imported` (which checked them)."""
        self.reset()
        names = [name for _, members in rebuilt.values() for name in members]
        self.add_names(names)
        for cls, (accumulator, members) in rebuilt.items():
            # into the accumulator reset above, not a new one: a compiled step guards on the
            # objects it folds into (a new one recompiled it at every load, then ran it eagerly)
            target = self.accumulators[cls]
            target.merge(accumulator, [self.rows[name][1] for name in members])
            if target.device is not None:
                self.device = target.device
        self._rows_changing()  # what was planned may hold the state just replaced
        self.updated = any(
            count > 0
            for accumulator in self.accumulators.values()
            for count in accumulator.samples()
        )

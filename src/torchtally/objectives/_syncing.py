"""How an objective combines with others: ``merge_state``, ``sync`` and the sync hooks.

:class:`SyncHooks` is the part of :class:`~torchtally.objectives.Objective`
that :func:`~torchtally.sync_all` talks to (the public
:class:`~torchtally.sync.SyncParticipant` hooks): what must agree across
ranks, what this process sends, and the values over all processes that
:meth:`~torchtally.objectives.Objective.compute` reports after a sync.
"""

from __future__ import annotations

import warnings
from typing import Any

from torch import Tensor
from typing_extensions import Self

from torchtally import sync as _sync
from torchtally._conventions import WeightFn
from torchtally.aggregation import Accumulator
from torchtally.errors import RepeatedSampleWarning
from torchtally.objectives._holder import LedgerHolder
from torchtally.sync import (
    Gathered,
    Padding,
    SyncCounters,
    SyncState,
    check_mergeable,
    export_rows,
    merge_rows,
)

__all__ = ["SyncHooks"]


class SyncHooks(SyncCounters, LedgerHolder):
    """Merging and syncing (a mixin of :class:`~torchtally.objectives.Objective`).

    It works on the objective's ledger, and reads its declared names, their
    accumulators and whether it learns names from the data.
    """

    _weight_fn: WeightFn | None  # the weight= callable given at construction (Objective's)
    _warned_repeats = False  # RepeatedSampleWarning is given once per objective
    _elsewhere: str | None = None  # why compute() has no synced value here (destination=)

    def merge_state(self, other: Self) -> None:
        """Add another instance's updates to this one's, as if this one had seen them.

        Raises:
            IncompatibleStateError: ``other`` is of another type or is defined
                otherwise (what :func:`~torchtally.sync_all` requires ranks to
                agree on, :meth:`sync_identity`: names, aggregations, callables,
                ``weight=``). Nothing changes then.
        """
        check_mergeable(self._ledger.label, self, other)
        held = self._ledger.updated
        self._ledger.merge(other._ledger)
        self._note_merged(other, held)

    def sync(self, process_group: Any = None, *, dataset_size: int | None = None) -> None:
        """Make :meth:`compute` report the value over all ranks (see :func:`~torchtally.sync_all`).

        Example:
            >>> import torch
            >>> import torchtally as tt
            >>> metric = tt.Metric(lambda o, t: (o - t).abs(), 'MAE')
            >>> _ = metric.update(torch.ones(2), torch.zeros(2))
            >>> metric.sync()   # no-op outside a distributed run
            >>> metric.compute()
            {'MAE': tensor(1.)}
        """
        _sync.sync_all(self, process_group=process_group, dataset_size=dataset_size)

    # -- sync hooks (torchtally.sync.SyncParticipant) -----------------------------------------

    def sync_identity(self) -> dict[str, Any]:
        """What the counterpart of this objective on every other rank must equal.

        Its class, declared names, their aggregations, whether it learns
        names from the data and its ``weight=`` callable if it has one;
        subclasses add what else defines them (callables, formula). Override
        to add more, calling ``super()``.

        Example:
            >>> import torchtally as tt
            >>> identity = tt.Metric(lambda o, t: o - t, 'Bias').sync_identity()
            >>> identity['names'], identity['aggregations']
            (['Bias'], ['mean'])
        """
        names = list(self.declared_names())
        identity = {
            "kind": f"{type(self).__module__}.{type(self).__qualname__}",
            "names": names,
            "aggregations": [_aggregation_identity(self.accumulator_for(name)) for name in names],
            "learns_names": self.learns_names,
        }
        if self._weight_fn is not None:  # weighted and unweighted states do not add up
            identity["weight"] = _sync.callable_identity(self._weight_fn)
        return identity

    def derived_values(self) -> dict[str, tuple[str, ...]]:
        """Values computed from other values of the same batch, with those values' names.

        ``sync_all(dataset_size=...)`` drops a repeated sample from a derived
        value only where every value it was computed from could drop it: a
        loss's combined value that broadcasts a scalar batch mean keeps the
        repeat, as that batch mean does, and says so. None by default; losses
        name their combined value. Override it when :meth:`calculate`
        returns such a value.

        Example:
            >>> import torchtally as tt
            >>> error = tt.Loss(lambda o, t: (o - t).abs(), 'MAE')
            >>> (error + 2 * tt.Loss(lambda o, t: (o - t) ** 2, 'MSE')).derived_values()
            {'Combined Loss': ('MAE', 'MSE')}
        """
        return {}

    def sync_export(self, drop_last: bool) -> SyncState:
        """This process's state for :func:`~torchtally.sync_all` (see ``torchtally.sync``)."""
        return export_rows(
            self._ledger.groups(),
            drop_last=drop_last,
            known=not self.learns_names,
            declared=self.declared_names(),
            derived=self.derived_values() if drop_last else None,
        )

    def sync_merge(self, gathered: Gathered, padding: Padding | None) -> dict[str, Tensor] | str:
        """Every value over all ranks (``self`` unchanged), or why this rank has none."""
        ledger = self._ledger
        groups = ledger.groups()
        if gathered.states is None and (
            self.learns_names or any(not type(acc).summable() for acc, _ in groups)
        ):  # this rank is not sync_all's destination: only the means and sums reached it
            return (
                f"{ledger.label}: synced with sync_all(destination=...) to another rank; only "
                f"that rank has its values over all processes"
            )
        values, counts = merge_rows(
            ledger.label, groups, gathered, self.accumulator_for, known=not self.learns_names
        )
        if padding is not None:
            kept = padding.check(ledger.label, counts)
            if kept and not self._warned_repeats:
                self._warned_repeats = True
                warnings.warn(
                    RepeatedSampleWarning(
                        f"{ledger.label}: {kept} saw only batch values (a scalar per batch) on "
                        f"the processes holding a sample DistributedSampler repeated, so the "
                        f"repeat cannot be dropped and is counted twice; return per-sample "
                        f"values (B,) to have it dropped"
                    ),
                    stacklevel=4,
                )
        device = ledger.device
        order = [*ledger.names, *[name for name in values if name not in ledger.rows]]
        return {name: values[name] if device is None else values[name].to(device) for name in order}

    def sync_install(self, prepared: dict[str, Tensor] | str) -> None:
        """Make :meth:`compute` report what :meth:`sync_merge` prepared."""
        ledger = self._ledger
        if isinstance(prepared, str):
            self._elsewhere = prepared
            ledger.synced = {}
        else:
            self._elsewhere = None
            ledger.add_names(list(prepared))
            ledger.synced = prepared
        ledger.computed = None
        self._count_sync()


def _aggregation_identity(cls: type[Accumulator]) -> str:
    """A built-in kind by its name, a custom accumulator by its qualified class name."""
    if cls.__module__.startswith("torchtally.aggregation"):
        return cls.kind
    return f"{cls.__module__}.{cls.__qualname__}"

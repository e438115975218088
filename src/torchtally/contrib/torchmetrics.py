"""torchmetrics metrics as torchtally objectives and losses: :func:`from_torchmetrics`.

The adapter keeps the torchmetrics object and its state; it adds what a
torchtally training loop expects: ``compute()`` returning ``dict[str, Tensor]``
(a composition reports its combined value and each of its leaf metrics),
and an explicit, idempotent ``sync()`` that takes part in
:func:`torchtally.sync_all`, so torchmetrics, torcheval and native objectives
are synced together in one exchange (states reduced by a sum travel with the
native means in one all-reduce; other states are gathered).

Sync happens in exactly one place. ``from_torchmetrics`` switches off
torchmetrics' own implicit sync (``sync_on_compute`` and
``dist_sync_on_step`` of every metric in the given object are set to
``False``); :meth:`TorchMetricsAdapter.sync` sends every leaf metric's local
states, and each rank rebuilds the global states by stacking the ranks'
states and applying the metric's own reduction (``dist_reduce_fx``: sum,
mean, min, max, cat or a custom callable; list states are concatenated in
rank order), as torchmetrics does after its gather. The result goes into a
synced copy of the metric, which ``compute()`` reads until the next
``update``/``forward``/``reset``; the local state is left as it was, so
syncing twice equals syncing once and later updates are counted once at the
next sync.

Importing this module imports torchmetrics; without it, an ``ImportError``
says which extra to install.

Example:
    >>> import torch
    >>> import torchmetrics
    >>> from torchtally.contrib.torchmetrics import from_torchmetrics
    >>> metric = from_torchmetrics(1 + torchmetrics.MeanSquaredError())
    >>> metric.update(torch.ones(1, 1), 3 * torch.ones(1, 1))
    >>> metric.compute()
    {'Combined Loss': tensor(5.), 'MeanSquaredError': tensor(4.)}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor

try:
    import torchmetrics
    from torchmetrics.metric import CompositionalMetric
except ImportError as error:  # pragma: no cover - exercised with the library hidden
    raise ImportError(
        'torchtally.contrib.torchmetrics needs torchmetrics: pip install "torchtally[torchmetrics]"'
    ) from error

from torchtally._conventions import check_name, merge_results, normalize_result, unique_names
from torchtally._state_keys import check_state_keys
from torchtally.contrib._adapter import SyncedAdapter, foreign_compute
from torchtally.contrib._torchmetrics_calls import TorchMetricsCalls, View
from torchtally.contrib._torchmetrics_leaves import (
    TorchMetricsObject,
    direction_of,
    keeps_inputs,
    leaf_options,
    leaves_of,
    switch_off_sync,
)
from torchtally.contrib._torchmetrics_states import (
    checked_states,
    counted,
    install,
    saved_states,
    take_states,
)
from torchtally.contrib._torchmetrics_sync import combined, exported, states_identity
from torchtally.errors import (
    NameConflictError,
    StateDictError,
    UnsupportedObjectError,
)
from torchtally.losses import LossOperand
from torchtally.objectives import is_objective_like, join
from torchtally.sync import Gathered, SyncState, callable_identity, checked_saved_on

__all__ = ["COMBINED_NAME", "TorchMetricsAdapter", "from_torchmetrics"]

COMBINED_NAME = "Combined Loss"
"""The name of a composition's combined value (unless ``name=`` gives another)."""

_STATE_VERSION = 1


class TorchMetricsAdapter(LossOperand, TorchMetricsCalls):
    """A torchmetrics ``Metric``, ``CompositionalMetric`` or ``MetricCollection`` for torchtally.

    It satisfies :class:`~torchtally.protocols.LossProtocol`: ``forward`` (and
    calling the adapter) returns what the metric's ``forward`` returns,
    differentiable where the metric is, and accumulates the batch. Build it
    with :func:`from_torchmetrics`, which documents the names ``compute``
    reports.

    Example:
        >>> import torch
        >>> import torchmetrics
        >>> from torchtally.contrib.torchmetrics import from_torchmetrics
        >>> loss = from_torchmetrics(torchmetrics.MeanSquaredError(), 'MSE')
        >>> outputs = torch.zeros(2, requires_grad=True)
        >>> value = loss(outputs, torch.ones(2))   # the batch value, differentiable
        >>> value.backward()
        >>> loss.compute()
        {'MSE': tensor(1.)}
    """

    def __init__(self, metric: TorchMetricsObject, name: str | None = None) -> None:
        if not isinstance(metric, (torchmetrics.Metric, torchmetrics.MetricCollection)):
            raise UnsupportedObjectError(
                f"from_torchmetrics: expected a torchmetrics Metric, CompositionalMetric or "
                f"MetricCollection, found {type(metric).__name__}; use torchtally.wrap for "
                f"other metric forms"
            )
        if name is not None:
            check_name(name, "from_torchmetrics")
        self._metric = metric
        self._composition = isinstance(metric, CompositionalMetric)
        self._leaves = leaves_of(metric)
        # As constructed: an attribute the metric changes while updating is no option.
        self._options = [leaf_options(leaf) for leaf in self._leaves]
        # A composition or collection gives each leaf the keywords its update names, and
        # drops the rest without a word: check_keywords refuses what a leaf would miss.
        self._filters = self._composition or isinstance(metric, torchmetrics.MetricCollection)
        self._keeps_inputs = keeps_inputs(self._leaves)  # such metrics get copies
        # Several leaves: update reads their counts first, to tell which took a refused batch.
        self._several = len(self._leaves) > 1
        switch_off_sync(metric)  # sync happens in one place, our sync()
        default = COMBINED_NAME if self._composition else type(metric).__name__
        self._name = default if name is None else name
        self._owner = f"from_torchmetrics({type(metric).__name__}, name={self._name!r})"
        self._leaf_names: tuple[str, ...] = ()
        if self._composition:
            self._leaf_names = tuple(unique_names([type(leaf).__name__ for leaf in self._leaves]))
            if self._name in self._leaf_names:
                raise NameConflictError(
                    f"{self._owner}: the name {self._name!r} is also the name of a leaf metric "
                    f"(leaves: {list(self._leaf_names)}); choose another name"
                )
        SyncedAdapter.__init__(self)

    # -- description --------------------------------------------------------------------------

    @property
    def metric(self) -> TorchMetricsObject:
        """The wrapped torchmetrics object (it holds this process's state)."""
        return self._metric

    @property
    def name(self) -> str:
        """The name of the value (the combined value of a composition)."""
        return self._name

    @property
    def leaf_names(self) -> tuple[str, ...]:
        """For a composition, the names its leaf metrics are reported under."""
        return self._leaf_names

    def higher_is_better_for(self, name: str) -> bool | None:
        """The torchmetrics ``higher_is_better`` of the metric reported as ``name``.

        ``None`` when unknown (the combined value of a composition, whose
        operator may flip the direction).

        Example:
            >>> import torchmetrics
            >>> from torchtally.contrib.torchmetrics import from_torchmetrics
            >>> from_torchmetrics(torchmetrics.MeanSquaredError()).higher_is_better_for(
            ...     'MeanSquaredError')
            False
        """
        return direction_of(self._metric, self._leaves, self._leaf_names, self._name, name)

    def __repr__(self) -> str:
        return self._owner

    # -- values -------------------------------------------------------------------------------

    def values(self, view: View | None) -> dict[str, Tensor]:
        """The metric's values (the synced view's, when given), normalised, not copied."""
        root, leaves = (self._metric, self._leaves) if view is None else view
        owner = self._owner
        result = normalize_result(foreign_compute(root, owner), self._name, owner)
        if self._composition:
            for leaf_name, leaf in zip(self._leaf_names, leaves, strict=True):
                value = foreign_compute(leaf, owner)
                merge_results(result, normalize_result(value, leaf_name, owner), owner)
        return result

    def has_data(self) -> bool:
        """Whether a leaf counted an update (torchmetrics' count, kept through syncs and loads)."""
        return counted(self._leaves)

    def known_names(self) -> list[str]:
        """The name, a composition's leaf names, a collection's keys (a result's are learnt)."""
        if isinstance(self._metric, torchmetrics.MetricCollection):
            return [str(key) for key in self._metric.keys(keep_base=False)]  # prefixed
        return [self._name, *self._leaf_names]

    def reset(self) -> None:
        """Reset the metric and drop the synced view."""
        self.drop_view()
        self._metric.reset()
        self.back_in_step()
        self._count_reset()

    # -- sync ---------------------------------------------------------------------------------

    def sync_identity(self) -> dict[str, Any]:
        """The wrapped classes, their states and reductions, and the reported names."""
        self.check_in_step()  # also refuses a sync and a merge_state, on every rank
        return {
            "kind": "torchmetrics",
            "root": callable_identity(type(self._metric)),
            "name": self._name,
            "leaves": states_identity(self._leaves, self._options),
        }

    def sync_export(self, drop_last: bool) -> SyncState:
        """Every leaf's states; ``drop_last`` cannot apply (a state holds no samples).

        Update counts and tensor states reduced by a sum travel in the summed
        vector (float64, one all-reduce; exact for integer states below
        2**53); other states (concatenated lists, other reductions) are
        gathered, a list state concatenated once.
        """
        return exported(self._leaves, self._owner)

    def combine(self, gathered: Gathered) -> View | None:
        """A copy of the metric holding every rank's states, reduced as torchmetrics does."""
        return combined(self._metric, self._leaves, gathered, self._owner)

    def adopt(self, view: View) -> None:
        """Give every leaf the states of the view's leaves (the wrapped objects stay the same)."""
        take_states(self._leaves, view[1])
        self.drop_view()

    # -- persistence and devices --------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Every leaf metric's states and update count, ``torch.save``-able.

        Independent of torchmetrics' ``persistent`` flags: the accumulated
        states are always included.

        Example:
            >>> import torch
            >>> import torchmetrics
            >>> from torchtally.contrib.torchmetrics import from_torchmetrics
            >>> metric = from_torchmetrics(torchmetrics.MeanAbsoluteError())
            >>> metric.update(torch.ones(2), torch.zeros(2))
            >>> restored = from_torchmetrics(torchmetrics.MeanAbsoluteError())
            >>> restored.load_state_dict(metric.state_dict())
            >>> restored.compute()
            {'MeanAbsoluteError': tensor(1.)}
        """
        self.check_in_step()
        leaves = saved_states(self._leaves, self._options)
        return {"version": _STATE_VERSION, "leaves": leaves, "saved_on": self._saved_on()}

    def state_keys(self) -> frozenset[str]:
        """The top-level keys :meth:`state_dict` writes; :meth:`load_state_dict` refuses others."""
        return frozenset(("version", "leaves", "saved_on"))

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore the states saved by :meth:`state_dict`.

        Raises:
            StateDictError: the state holds another key, or other metrics or
                states than this adapter's.
        """
        check_state_keys(state_dict, self.state_keys(), _STATE_VERSION, self._owner)
        stored = state_dict.get("leaves")
        if not isinstance(stored, list):
            raise StateDictError(
                f"{self._owner}: expected a list of leaf states under 'leaves', found "
                f"{type(stored).__name__}"
            )
        # Everything is checked and converted before any leaf changes: a damaged state
        # changes nothing.
        prepared = checked_states(self._leaves, self._options, stored, self._owner)
        origin = checked_saved_on(state_dict.get("saved_on"), self._owner)
        for leaf, (states, count) in zip(self._leaves, prepared, strict=True):
            install(leaf, states, count)
        self.back_in_step()
        self.drop_view()
        self._note_loaded(origin, holds_updates=self.has_data())  # another rank's: sync refuses

    def restore_point(self) -> Callable[[], None]:
        """As the base's, with copies of the leaves' states: a load writes into the leaves."""
        saved = saved_states(self._leaves, self._options)  # no check_in_step: taken out of step too
        attributes = super().restore_point()

        def restore() -> None:
            for leaf, entry in zip(self._leaves, saved, strict=True):
                install(leaf, entry["states"], entry["count"])
            attributes()

        return restore

    def held_metrics(self) -> list[Any]:
        """The torchmetrics object held, and a synced view's copy."""
        return [self._metric] + ([self._synced[0]] if self._synced is not None else [])

    def __ror__(self, other: object) -> Any:
        return join(other, self) if is_objective_like(other) else NotImplemented


def from_torchmetrics(metric: TorchMetricsObject, name: str | None = None) -> TorchMetricsAdapter:
    """Use a torchmetrics ``Metric``, ``CompositionalMetric`` or ``MetricCollection`` in torchtally.

    ``compute()`` returns ``dict[str, Tensor]``: ``{name: value}`` for a plain
    metric (``name`` defaults to its class name); for a composition the
    combined value under ``name`` (default ``'Combined Loss'``) followed by each
    leaf metric under its class name, made unique (``MeanSquaredError``,
    ``MeanSquaredError_2``); a dict result (a collection) keeps its keys.
    Sync is explicit (``sync()`` or :func:`torchtally.sync_all`), idempotent,
    uses the metrics' own state reductions, and counts later updates once;
    the metrics' implicit sync is switched off.

    Args:
        metric: the torchmetrics object. Its ``sync_on_compute`` and
            ``dist_sync_on_step`` are set to ``False``.
        name: the value's name (see above).

    Returns:
        The adapter (a :class:`TorchMetricsAdapter`).

    Raises:
        UnsupportedObjectError: ``metric`` is not a torchmetrics metric or collection.
        NameConflictError: ``name`` is also the name of a leaf metric.

    Example:
        >>> import torch
        >>> import torchmetrics
        >>> from torchtally.contrib.torchmetrics import from_torchmetrics
        >>> twice = from_torchmetrics(
        ...     torchmetrics.MeanSquaredError() + 2 * torchmetrics.MeanSquaredError(squared=False))
        >>> twice.update(torch.zeros(2), torch.tensor([1.0, 3.0]))
        >>> values = twice.compute()
        >>> values['Combined Loss'], values['MeanSquaredError'], values['MeanSquaredError_2']
        (tensor(9.4721), tensor(5.), tensor(2.2361))
    """
    return TorchMetricsAdapter(metric, name)

"""How a batch reaches a torchmetrics metric: the adapter's ``update`` and ``forward``.

:class:`TorchMetricsCalls` is the hot path of
:class:`~torchtally.contrib.torchmetrics.TorchMetricsAdapter` (a layer of it,
never used alone): it refuses, before anything changes, arguments a
composition's or collection's leaves would drop or a plain metric's
``update`` cannot take, gives metrics that keep their inputs copies of
them, takes back the count of a batch torchmetrics refused, and marks the
adapter out of step when a leaf refuses a batch other leaves took (or when
torchmetrics' ``forward`` loses the state it set aside).

Imported by :mod:`torchtally.contrib.torchmetrics` alone, after torchmetrics
itself (whose absence that module reports with the extra to install).
"""

from __future__ import annotations

from typing import Any, NoReturn

import torchmetrics

from torchtally.contrib._adapter import SyncedAdapter, foreign_error, unshared
from torchtally.contrib._torchmetrics_leaves import (
    TorchMetricsObject,
    leaf_labels,
    named_receivers,
)
from torchtally.contrib._torchmetrics_states import refusing_leaves, uncount

__all__ = ["TorchMetricsCalls", "View"]

View = tuple[TorchMetricsObject, tuple[Any, ...]]
"""A synced view: a copy of the wrapped object and its leaves, holding the states of all ranks."""


class TorchMetricsCalls(SyncedAdapter[View]):
    """``update``, ``forward`` and ``__call__`` of the torchmetrics adapter.

    The adapter sets what these read when it is built.
    """

    _metric: TorchMetricsObject
    _leaves: tuple[torchmetrics.Metric, ...]
    _leaf_names: tuple[str, ...]
    _name: str
    _filters: bool
    """Whether the metric gives each leaf only the keywords its update names."""
    _keeps_inputs: bool
    """Whether a leaf keeps the tensors it is given (it gets copies)."""
    _several: bool
    """Whether there are several leaves (``update`` reads their counts first)."""

    def update(self, outputs: Any, targets: Any, *args: Any, **kwargs: Any) -> None:
        """Update the metric with one batch (extra arguments go to the metric's ``update``).

        Raises:
            WeightError: ``weight=`` to a composition or collection with a leaf
                whose ``update`` takes none (torchmetrics would drop it for that
                leaf); nothing changed.
            InvalidArgumentError: a keyword no leaf of a composition or
                collection takes (torchmetrics would drop it); nothing changed.
            MetricCallError: the metric's ``update`` raised (an argument it does
                not take, ``weight=`` say); the synced view is kept. In a
                composition or collection, a leaf refusing a batch after other
                leaves took it leaves the adapter out of step (``compute``,
                ``state_dict``, ``merge_state`` and ``sync`` refuse until
                ``reset`` or ``load_state_dict``).
        """
        if kwargs and self._filters:
            self.check_keywords(kwargs)
        if self._keeps_inputs:
            outputs, targets, args, kwargs = unshared((outputs, targets, args, kwargs))
        counts = [leaf._update_count for leaf in self._leaves] if self._several else None
        try:
            self._metric.update(outputs, targets, *args, **kwargs)
        except Exception as error:
            refused = foreign_error(self._metric, "update", self._owner, error)
            if counts is None:  # one leaf: torchmetrics counted the batch it refused
                uncount(self._leaves[0])
                raise refused from error
            self._refused(counts, refused, error)
        self.drop_view()

    def _refused(self, counts: list[int], refused: Exception, error: Exception) -> NoReturn:
        """Raise for an update one of several leaves refused (its count taken back)."""
        took = refusing_leaves(self._leaves, counts)  # the last of them refused it
        if len(took) < 2:
            raise refused from error
        self.drop_view()  # the leaves before it changed: the synced view is stale
        names = leaf_labels(self._metric, self._leaves, self._leaf_names)
        taken = [names[i] for i in took[:-1]]
        raise self.out_of_step(self._owner, taken, names[took[-1]], refused) from error

    def forward(self, outputs: Any, targets: Any, *args: Any, **kwargs: Any) -> Any:
        """Accumulate one batch and return the metric's value on it (torchmetrics' ``forward``).

        torchmetrics' ``forward`` sets the accumulated state aside, updates the
        metric with the batch alone and adds the state back: a batch its
        ``update`` refuses loses the state set aside. Arguments a plain
        metric's ``update`` cannot take are refused before (nothing changes).

        Raises:
            WeightError, InvalidArgumentError: as :meth:`update`; nothing changed.
            MetricCallError: the call does not fit the metric's ``update`` (nothing
                changed), or the metric's ``forward`` raised: the state it set
                aside is lost, and ``compute``, ``state_dict``, ``merge_state``
                and ``sync`` refuse until ``reset`` or ``load_state_dict``.
        """
        if self._filters:
            if kwargs:
                self.check_keywords(kwargs)
        elif args or kwargs or not self._checked_bare_call:
            self.check_call(len(args), kwargs, "forward")  # before the state is set aside
        if self._keeps_inputs:  # copies that keep the batch value differentiable
            outputs, targets, args, kwargs = unshared(
                (outputs, targets, args, kwargs), detach=False
            )
        try:
            value = self._metric(outputs, targets, *args, **kwargs)
        except Exception as error:
            self.drop_view()
            refused = foreign_error(self._metric, "forward", self._owner, error)
            what = "forward raised after torchmetrics set the accumulated state aside"
            raise self.lost(self._owner, what, refused) from error
        self.drop_view()
        return value

    def members(self) -> dict[str, Any]:
        """The wrapped object (whose ``update`` the adapter calls), by name."""
        return {self._name: self._metric}

    def keyword_receivers(self, keywords: list[str]) -> tuple[list[str], dict[str, list[str]]]:
        """The leaves' names, and for each keyword those whose update torchmetrics gives it."""
        return named_receivers(self._leaves, self._leaf_names, keywords)

    def __call__(self, outputs: Any, targets: Any, *args: Any, **kwargs: Any) -> Any:
        """Same as :meth:`forward`."""
        return self.forward(outputs, targets, *args, **kwargs)

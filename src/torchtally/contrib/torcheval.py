"""torcheval metrics as torchtally objectives: :func:`from_torcheval`.

torcheval's own sync (``torcheval.metrics.toolkit.sync_and_compute``) gives
the global value to one recipient rank. The adapter's :meth:`~TorchEvalAdapter.sync`
gives it to every rank, takes part in :func:`torchtally.sync_all` (two
collective calls for any number of objectives of any library), and relies on
torcheval's own state merging: every rank sends its metric's
``state_dict()`` (after torcheval's ``_prepare_for_merge_state``), and each
rank rebuilds one copy of the metric per rank from them and merges them in
rank order with the metric's ``merge_state``, so every rank computes the same
value. The merged copy is what ``compute()`` reads until the next ``update``
or ``reset``; the local state is kept as it was, so syncing twice equals
syncing once and later updates are counted once. Outside a distributed run
``sync()`` does nothing, quietly.

Importing this module imports torcheval; without it, an ``ImportError`` says
which extra to install.

Example:
    >>> import torch
    >>> from torcheval.metrics import MeanSquaredError
    >>> from torchtally.contrib.torcheval import from_torcheval
    >>> metric = from_torcheval(MeanSquaredError())
    >>> metric.update(torch.ones(1, 1), 3 * torch.ones(1, 1))
    >>> metric.sync()   # quiet: not a distributed run
    >>> metric.compute()
    {'MeanSquaredError': tensor(4.)}
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from torch import Tensor

try:
    from torcheval.metrics import Metric as TorchEvalMetric
except ImportError as error:  # pragma: no cover - exercised with the library hidden
    raise ImportError(
        'torchtally.contrib.torcheval needs torcheval: pip install "torchtally[torcheval]"'
    ) from error

from torchtally._conventions import check_name, merge_results, normalize_result
from torchtally._state_keys import check_state_keys
from torchtally.contrib._adapter import SyncedAdapter, foreign_compute, foreign_error, unshared
from torchtally.contrib._options import differing_options
from torchtally.contrib._torcheval_states import (
    exported_states,
    loaded_copy,
    metric_options,
    moved_from_defaults,
    split_states,
)
from torchtally.errors import StateDictError, SyncError, UnsupportedObjectError
from torchtally.losses import LossOperand
from torchtally.objectives import is_objective_like, join
from torchtally.sync import Gathered, SyncState, callable_identity, checked_saved_on

__all__ = ["TorchEvalAdapter", "from_torcheval"]

_STATE_VERSION = 1

AnyMetric = TorchEvalMetric[Any]


class TorchEvalAdapter(LossOperand, SyncedAdapter[dict[str, Any]]):
    """A torcheval ``Metric`` (or a dict of them) for torchtally.

    Build it with :func:`from_torcheval`, which documents the names
    ``compute`` reports.

    Example:
        >>> import torch
        >>> from torcheval.metrics import BinaryAccuracy, MeanSquaredError
        >>> from torchtally.contrib.torcheval import from_torcheval
        >>> metrics = from_torcheval({'MSE': MeanSquaredError(), 'Accuracy': BinaryAccuracy()})
        >>> metrics.update(torch.tensor([0.2, 0.9]), torch.tensor([0.0, 0.0]))
        >>> metrics.compute()
        {'MSE': tensor(0.4250), 'Accuracy': tensor(0.5000)}
    """

    _every_keyword = True  # torcheval passes every keyword on: a metric not taking it raises
    _updated = False
    """Whether the metrics took a batch through the adapter since built, reset or loaded
    (torcheval keeps no count), or merged a state that had."""

    def __init__(
        self, metric: AnyMetric | Mapping[str, AnyMetric], name: str | None = None
    ) -> None:
        if name is not None:
            check_name(name, "from_torcheval")
        if isinstance(metric, TorchEvalMetric):
            label = type(metric).__name__
            self._metrics: dict[str, AnyMetric] = {name or label: metric}
        elif isinstance(metric, Mapping) and metric:
            label = "dict"
            self._metrics = {}
            for key, value in metric.items():
                check_name(key, "from_torcheval: a key of the dict of metrics")
                if not isinstance(value, TorchEvalMetric):
                    raise UnsupportedObjectError(
                        f"from_torcheval: the value for {key!r} must be a torcheval Metric, "
                        f"found {type(value).__name__}"
                    )
                self._metrics[key] = value
        else:
            raise UnsupportedObjectError(
                f"from_torcheval: expected a torcheval Metric or a non-empty dict of them, "
                f"found {type(metric).__name__}; use torchtally.wrap for other metric forms"
            )
        self._single = isinstance(metric, TorchEvalMetric)
        # As constructed: an attribute the metric changes while updating is no option.
        self._options = {key: metric_options(member) for key, member in self._metrics.items()}
        # A list or dict state keeps the tensors update is given: such metrics get copies.
        self._keeps_inputs = any(
            not isinstance(default, Tensor)
            for member in self._metrics.values()
            for default in member._state_name_to_default.values()
        )
        if self._single:
            self._name = next(iter(self._metrics))
        else:
            self._name = name or "dict"
        self._owner = f"from_torcheval({label}, name={self._name!r})"
        SyncedAdapter.__init__(self)

    # -- description --------------------------------------------------------------------------

    @property
    def metric(self) -> AnyMetric | dict[str, AnyMetric]:
        """The wrapped metric (or dict of metrics), holding this process's state."""
        return next(iter(self._metrics.values())) if self._single else dict(self._metrics)

    @property
    def name(self) -> str:
        """The value's name (for a dict of metrics, a label; its keys name the values)."""
        return self._name

    def __repr__(self) -> str:
        return self._owner

    def higher_is_better_for(self, name: str) -> bool | None:
        """``None``: torcheval metrics do not say which way is better (pass a direction yourself).

        Example:
            >>> from torcheval.metrics import MeanSquaredError
            >>> from torchtally.contrib.torcheval import from_torcheval
            >>> print(from_torcheval(MeanSquaredError()).higher_is_better_for('MeanSquaredError'))
            None
        """
        return None

    # -- the hot path -------------------------------------------------------------------------

    def update(self, outputs: Any, targets: Any, *args: Any, **kwargs: Any) -> None:
        """Update every metric with one batch (extra arguments go to each ``update``).

        Raises:
            WeightError, InvalidArgumentError: a metric of a dict takes no such
                keyword (``weight=``, say) or not that many positional
                arguments; no metric changed.
            MetricCallError: a metric's ``update`` raised (a single metric given
                ``weight=``, say; the synced view is kept). In a dict, a metric
                refusing a batch after the metrics before it took it leaves the
                adapter out of step (``compute``, ``state_dict``, ``merge_state``
                and ``sync`` refuse until ``reset`` or ``load_state_dict``).
        """
        if len(self._metrics) > 1 and (args or kwargs or not self._checked_bare_call):
            self.check_call(len(args), kwargs)  # once per form of call, before any metric
        if self._keeps_inputs:
            outputs, targets, args, kwargs = unshared((outputs, targets, args, kwargs))
        for index, metric in enumerate(self._metrics.values()):
            try:
                metric.update(outputs, targets, *args, **kwargs)
            except Exception as error:
                refused = foreign_error(metric, "update", self._owner, error)
                if not index:
                    raise refused from error
                self.drop_view()  # the metrics before it changed: the synced view is stale
                keys = list(self._metrics)
                raise self.out_of_step(self._owner, keys[:index], keys[index], refused) from error
        self._updated = True
        self.drop_view()

    def members(self) -> dict[str, Any]:
        """Every metric, by key."""
        return dict(self._metrics)

    # -- values -------------------------------------------------------------------------------

    def values(self, view: dict[str, Any] | None) -> dict[str, Tensor]:
        """The metrics' values (the synced view's, when given), normalised, not copied."""
        result: dict[str, Tensor] = {}
        for key, metric in (self._metrics if view is None else view).items():
            value = normalize_result(foreign_compute(metric, self._owner), key, self._owner)
            merge_results(result, value, self._owner)
        return result

    def has_data(self) -> bool:
        """Whether a metric took a batch through the adapter, or holds other than its defaults.

        torcheval keeps no count: a metric updated before it was wrapped, or
        directly, shows in its states.
        """
        return self._updated or any(moved_from_defaults(m) for m in self._metrics.values())

    def known_names(self) -> list[str]:
        """The metrics' names (a tuple or dict result's are learnt from it)."""
        return list(self._metrics)

    def reset(self) -> None:
        """Reset every metric and drop the synced view."""
        self.drop_view()
        for metric in self._metrics.values():
            metric.reset()
        self._updated = False
        self.back_in_step()
        self._count_reset()

    # -- sync ---------------------------------------------------------------------------------

    def sync_identity(self) -> dict[str, Any]:
        """The wrapped classes by key, their options and state names, and the reported name."""
        self.check_in_step()  # also refuses a sync and a merge_state, on every rank
        return {
            "kind": "torcheval",
            "name": self._name,
            "metrics": [
                [
                    key,
                    callable_identity(type(metric)),
                    self._options[key],
                    sorted(metric._state_name_to_default),
                ]
                for key, metric in self._metrics.items()
            ],
        }

    def sync_export(self, drop_last: bool) -> SyncState:
        """Every metric's state dict (after torcheval's own pre-merge step)."""
        return exported_states(self._metrics, self._owner)

    def combine(self, gathered: Gathered) -> dict[str, Any] | None:
        """Copies of the metrics holding every rank's state, merged with ``merge_state``."""
        if gathered.states is None:
            return None  # gathered to another rank (sync_all(destination=...))
        states = gathered.states
        try:
            per_rank = split_states(states)
        except (KeyError, TypeError, ValueError, IndexError) as error:
            raise SyncError(f"{self._owner}: a process's state is malformed: {error}") from None

        merged: dict[str, AnyMetric] = {}
        for key, local in self._metrics.items():
            where = f"from_torcheval: metric {key!r} ({type(local).__name__})"
            try:
                copies = [loaded_copy(local, rank_states[key]) for rank_states in per_rank]
                merged[key] = copies[0].merge_state(copies[1:])
            except Exception as error:
                raise SyncError(
                    f"{where}: merging the processes' states failed: {type(error).__name__}: "
                    f"{error}"
                ) from error
        return merged

    def adopt(self, view: dict[str, Any]) -> None:
        """Keep the view's merged metrics in place of the wrapped ones (as ``load_state_dict``)."""
        self._metrics = dict(view)
        self.drop_view()

    def adopt_merged(self, view: dict[str, Any], other: TorchEvalAdapter) -> None:
        """Keep the merged metrics; updated if either adapter was."""
        updated = self._updated or other._updated
        super().adopt_merged(view, other)
        self._updated = updated

    # -- persistence and devices --------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Every metric's torcheval ``state_dict()``, ``torch.save``-able.

        Example:
            >>> import torch
            >>> from torcheval.metrics import MeanSquaredError
            >>> from torchtally.contrib.torcheval import from_torcheval
            >>> mse = from_torcheval(MeanSquaredError())
            >>> mse.update(torch.tensor([1.0, 2.0]), torch.zeros(2))
            >>> restored = from_torcheval(MeanSquaredError())
            >>> restored.load_state_dict(mse.state_dict())
            >>> restored.compute()
            {'MeanSquaredError': tensor(2.5000)}
        """
        self.check_in_step()
        return {
            "version": _STATE_VERSION,
            "metrics": {key: metric.state_dict() for key, metric in self._metrics.items()},
            "options": copy.deepcopy(self._options),  # an edit to it must not reach the adapter
            "updated": self.has_data(),
            "saved_on": self._saved_on(),
        }

    def state_keys(self) -> frozenset[str]:
        """The top-level keys :meth:`state_dict` writes; :meth:`load_state_dict` refuses others."""
        return frozenset(("version", "metrics", "options", "updated", "saved_on"))

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore the states saved by :meth:`state_dict`, all of them or none.

        Raises:
            StateDictError: the state holds another key, other metrics, options
                or states, or one that torcheval refuses; no metric changes then.
        """
        check_state_keys(state_dict, self.state_keys(), _STATE_VERSION, self._owner)
        stored = state_dict.get("metrics")
        if not isinstance(stored, Mapping) or sorted(stored) != sorted(self._metrics):
            found = sorted(stored) if isinstance(stored, Mapping) else type(stored).__name__
            raise StateDictError(
                f"{self._owner}: expected the states of the metrics {sorted(self._metrics)}, "
                f"found {found}"
            )
        saved_options = state_dict.get("options", self._options)  # older states saved none
        for key in self._metrics:
            saved = saved_options.get(key) if isinstance(saved_options, Mapping) else saved_options
            different = differing_options(self._options[key], saved)
            if different is not None:
                raise StateDictError(
                    f"{self._owner}: metric {key!r}: the state was saved with other options "
                    f"({different})"
                )
        origin = checked_saved_on(state_dict.get("saved_on"), self._owner)
        loaded: dict[str, AnyMetric] = {}
        for key, metric in self._metrics.items():
            try:
                loaded[key] = loaded_copy(metric, stored[key])
            except (RuntimeError, TypeError, ValueError, KeyError, AttributeError) as error:
                raise StateDictError(f"{self._owner}: metric {key!r}: {error}") from error
        self._metrics = loaded  # every metric checked and rebuilt: swap them all at once
        self._updated = state_dict.get("updated", True) is not False  # older states: assume so
        self.back_in_step()
        self.drop_view()
        self._note_loaded(origin, holds_updates=self.has_data())  # another rank's: sync refuses

    def held_metrics(self) -> list[Any]:
        """The torcheval metrics held: this process's, and a synced view's."""
        return [*self._metrics.values(), *(self._synced or {}).values()]

    def __ror__(self, other: object) -> Any:
        return join(other, self) if is_objective_like(other) else NotImplemented


def from_torcheval(
    metric: AnyMetric | Mapping[str, AnyMetric], name: str | None = None
) -> TorchEvalAdapter:
    """Use a torcheval ``Metric`` (or a dict of them) in torchtally, with a sync on every rank.

    ``compute()`` returns ``{name: value}`` (``name`` defaults to the class
    name) or, for a dict, ``{key: value}``. After ``sync()`` (or
    :func:`torchtally.sync_all`) every rank's ``compute()`` returns the value
    over all ranks; syncing is idempotent and later updates count once.
    Outside a distributed run ``sync()`` is a quiet no-op.

    Args:
        metric: a torcheval metric or a non-empty dict of string keys to metrics.
        name: the value's name for a single metric (a label for a dict).

    Returns:
        The adapter (a :class:`TorchEvalAdapter`).

    Raises:
        UnsupportedObjectError: ``metric`` is not a torcheval metric or a dict of them.

    Example:
        >>> import torch
        >>> from torcheval.metrics import BinaryAUROC
        >>> from torchtally.contrib.torcheval import from_torcheval
        >>> auroc = from_torcheval(BinaryAUROC(), 'AUROC')
        >>> auroc.update(torch.tensor([0.1, 0.9, 0.4]), torch.tensor([0, 1, 1]))
        >>> auroc.sync()
        >>> auroc.compute()
        {'AUROC': tensor(1., dtype=torch.float64)}
    """
    return TorchEvalAdapter(metric, name)

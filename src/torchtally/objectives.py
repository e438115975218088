"""Objectives: metrics defined from plain callables, aggregated exactly over batches.

An :class:`Objective` turns one batch of ``(outputs, targets)`` into named
values (:meth:`Objective.calculate`), accumulates them (one
:class:`~torchtally.aggregation.Accumulator` per name) and reports the epoch
value (:meth:`Objective.compute`). :class:`Metric` and
:class:`MetricCollection` build objectives from callables;
:class:`AverageObjective` is the base for hand-written ones.

Batch weighting: the batch size ``B`` is the leading dimension of the first
tensor found in ``targets`` (then ``outputs``), searching tuples, lists and
dicts in order. A callable may return per-sample values of shape ``(B,)`` or
a scalar batch mean; both are weighted by ``B``, so the epoch value is exact
over uneven batches.

Example:
    >>> import torch
    >>> import torchtally as tt
    >>> from torch.nn.functional import mse_loss
    >>> def mae(outputs, targets):
    ...     return (outputs - targets).abs().flatten(1).mean(1)
    >>> metrics = tt.Metric(mse_loss, 'MSE', higher_is_better=False) | tt.Metric(mae, 'MAE')
    >>> _ = metrics.update(torch.ones(1, 1), 3 * torch.ones(1, 1))
    >>> metrics.compute()
    {'MSE': tensor(4.), 'MAE': tensor(2.)}
"""

from __future__ import annotations

import copy
import numbers
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

import torch
from torch import Tensor
from typing_extensions import Self, override

from torchtally import distributed
from torchtally.aggregation import (
    ACCUMULATORS,
    Accumulator,
    ExportedState,
    Mean,
    merge_exported,
)
from torchtally.errors import (
    BatchSizeError,
    ComputedBeforeUpdatedWarning,
    IncompatibleStateError,
    InvalidNameError,
    MetricCallError,
    NameConflictError,
    ResultTypeError,
    StateDictError,
    SyncError,
)

__all__ = [
    "AverageObjective",
    "CallableObjective",
    "MetricFn",
    "PENDING_ELEMENTS",
    "PENDING_LIMIT",
    "Metric",
    "MetricCollection",
    "NamedCallable",
    "Objective",
    "SyncParticipant",
    "as_value_tensor",
    "batch_size",
    "callable_error",
    "compute_metrics",
    "default_name",
    "sync_all",
]

OutputT = TypeVar("OutputT")
TargetT = TypeVar("TargetT")

MetricFn = Callable[[Any, Any], Any]
"""A callable of ``(outputs, targets)`` returning a tensor or a Python number."""

_STATE_VERSION = 1

PENDING_LIMIT = 64
"""Batches an objective queues before folding them into its accumulators.

At small batch sizes an update's cost is the fixed overhead of each tensor
operation, so the hot path only checks metadata and queues values; a fold
costs a few operations per name, paid once for up to this many batches.
Everything that reads the state (``compute``, ``sync``, ``merge_state``,
``state_dict``, pickling) folds first.
"""

PENDING_ELEMENTS = 1 << 16
"""Upper bound on queued elements (the queue is shortened for large batches)."""


# -- input conventions ------------------------------------------------------------------------


def _leading_dim(item: Any) -> int | None:
    """Leading dimension of the first tensor in ``item`` (depth first), or ``None``."""
    if isinstance(item, Tensor):
        if item.ndim == 0:
            raise BatchSizeError("a 0-d tensor has no batch dimension")
        return int(item.shape[0])
    if isinstance(item, Mapping):
        item = item.values()
    elif not isinstance(item, (tuple, list)):
        return None
    for element in item:
        size = _leading_dim(element)
        if size is not None:
            return size
    return None


def batch_size(targets: Any, outputs: Any, owner: str = "objective") -> int:
    """The batch size: leading dimension of the first tensor in ``targets``, then ``outputs``.

    Tuples, lists and dicts are searched in order, depth first.

    Args:
        targets: the batch's targets.
        outputs: the model's outputs for the batch.
        owner: how error messages name the objective.

    Returns:
        The number of samples in the batch.

    Raises:
        BatchSizeError: no tensor was found, or the first one is 0-d.

    Example:
        >>> import torch
        >>> from torchtally.objectives import batch_size
        >>> batch_size({'label': torch.zeros(5)}, torch.zeros(5, 3))
        5
    """
    if type(targets) is Tensor and targets.ndim:  # the common case, without recursion
        return targets.shape[0]
    for where, item in (("targets", targets), ("outputs", outputs)):
        try:
            size = _leading_dim(item)
        except BatchSizeError as error:
            raise BatchSizeError(
                f"{owner}: cannot read the batch size from the {where}: {error}; expected a "
                f"tensor whose first dimension is the batch"
            ) from None
        if size is not None:
            return size
    raise BatchSizeError(
        f"{owner}: no tensor found in the targets ({type(targets).__name__}) or the outputs "
        f"({type(outputs).__name__}) to read the batch size from"
    )


_FORMS_HINT = "callables returning tuples, lists or dicts can be wrapped with torchtally.wrap"


def as_value_tensor(value: Any, owner: str, name: str, hint: str = _FORMS_HINT) -> Tensor:
    """A callable's result as a tensor: tensors pass, Python numbers become 0-d CPU tensors.

    Integers and booleans are accepted (counts, hits) and reported as floats
    by mean aggregation. NaN is kept: it is a real signal (a diverging model),
    and checking for it would need a host synchronisation every step.

    Raises:
        ResultTypeError: the value is neither a tensor nor a real number.

    Example:
        >>> from torchtally.objectives import as_value_tensor
        >>> as_value_tensor(0.5, 'Metric', 'score')
        tensor(0.5000)
    """
    if isinstance(value, Tensor):
        return value
    if isinstance(value, numbers.Real):
        return torch.tensor(value)
    raise ResultTypeError(
        f"{owner}: {name!r} must be a tensor or a Python number, found "
        f"{type(value).__name__} ({value!r:.80}); {hint}"
    )


def _check_name(name: Any, owner: str) -> str:
    if not isinstance(name, str) or not name:
        raise InvalidNameError(
            f"{owner}: names must be non-empty strings, found {type(name).__name__} {name!r}"
        )
    return name


# -- the sync hook ----------------------------------------------------------------------------


@runtime_checkable
class SyncParticipant(Protocol):
    """What :func:`sync_all` needs from an object to sync it in its shared exchange.

    Every :class:`Objective` implements it; the torchmetrics and torcheval
    adapters do too, so that one ``sync_all`` moves everything in two
    collectives.

    Example:
        >>> import torchtally as tt
        >>> from torchtally.objectives import SyncParticipant
        >>> isinstance(tt.Metric(lambda o, t: o - t, 'Bias'), SyncParticipant)
        True
    """

    def _sync_export(self) -> ExportedState:
        """This process's state: JSON-able metadata plus tensors."""

    def _sync_prepare(self, states: list[ExportedState]) -> Any:
        """Combine every rank's state (rank order) without changing ``self``.

        Must raise :class:`~torchtally.errors.SyncError` with a message built
        only from ``states``, so every rank raises the same error.
        """

    def _sync_install(self, prepared: Any) -> None:
        """Make ``compute()`` report the combined state from ``_sync_prepare``."""


def sync_all(*objectives: SyncParticipant, process_group: distributed.ProcessGroup = None) -> None:
    """Synchronise any number of objectives across processes in two collective calls.

    After the call, ``compute()`` on every rank returns the value over the
    updates of all ranks. Syncing twice equals syncing once (each process
    keeps its own updates; the synced view is rebuilt from all of them), and
    updates made after a sync are counted once at the next sync. Until then
    ``compute()`` reports this process's own updates. Outside a distributed
    run this is a no-op.

    Args:
        *objectives: torchtally objectives and adapters, in the same order on
            every rank.
        process_group: the ``torch.distributed`` group; ``None`` is the default group.

    Raises:
        SyncError: ranks disagree on the objectives, their names or their
            state layouts, or a rank could not export its state (an argument
            that cannot take part, for example). Every rank raises the same
            error, built from the exchanged data only; none hangs. Nothing
            is changed when it is raised.
        TypeError: outside a distributed run, an argument cannot take part in a sync.

    Example:
        >>> import torch
        >>> import torchtally as tt
        >>> mae = tt.Metric(lambda o, t: (o - t).abs(), 'MAE')
        >>> accuracy = tt.Metric(lambda o, t: (o.round() == t).float(), 'Accuracy')
        >>> _ = mae.update(torch.ones(3), torch.zeros(3))
        >>> tt.sync_all(mae, accuracy)   # single process: nothing to exchange
        >>> mae.compute()
        {'MAE': tensor(1.)}
    """
    if not distributed.is_distributed(process_group):
        for item in objectives:
            _check_participant(item)
        return
    # A local failure is sent to the others instead of skipping the exchange: every rank
    # then raises the same SyncError, and none waits forever for a collective.
    failure: Exception | None = None
    try:
        metas, tensors = _export_all(objectives)
        payload: dict[str, Any] = {"objectives": metas}
    except Exception as error:
        failure, tensors = error, []
        payload = {"error": f"{type(error).__name__}: {error}"}
    gathered = distributed.all_gather_states(payload, tensors, process_group)

    failed = [(index, meta["error"]) for index, (meta, _) in enumerate(gathered) if "error" in meta]
    if failed:
        found = "; ".join(f"rank {index}: {message}" for index, message in failed)
        raise SyncError(f"sync_all: processes could not export their state ({found})") from failure
    kinds = [[entry["type"] for entry in meta["objectives"]] for meta, _ in gathered]
    if any(rank_kinds != kinds[0] for rank_kinds in kinds):
        found = "; ".join(f"rank {index}: {rank_kinds}" for index, rank_kinds in enumerate(kinds))
        raise SyncError(f"sync_all: processes sync different objectives ({found})")
    per_objective: list[list[ExportedState]] = [[] for _ in objectives]
    for meta, rank_tensors in gathered:
        offset = 0
        for index, entry in enumerate(meta["objectives"]):
            end = offset + entry["size"]
            per_objective[index].append((entry["state"], rank_tensors[offset:end]))
            offset = end
    # Every objective is prepared before any is installed: an error leaves all of them as they were.
    pairs = zip(objectives, per_objective, strict=True)
    prepared = [item._sync_prepare(states) for item, states in pairs]
    for item, result in zip(objectives, prepared, strict=True):
        item._sync_install(result)


def _check_participant(item: object) -> None:
    # isinstance on a runtime-checkable protocol is slow: objectives take the quick test.
    if not isinstance(item, Objective) and not isinstance(item, SyncParticipant):
        raise TypeError(
            f"sync_all takes torchtally objectives and adapters, found "
            f"{type(item).__name__}; wrap foreign metrics with torchtally.wrap, "
            f"from_torchmetrics or from_torcheval"
        )


def _export_all(objectives: tuple[SyncParticipant, ...]) -> tuple[list[Any], list[Tensor]]:
    """Every objective's exported state: one metadata entry each, and all their tensors."""
    metas: list[dict[str, Any]] = []
    tensors: list[Tensor] = []
    for item in objectives:
        _check_participant(item)
        meta, state = item._sync_export()
        metas.append({"type": type(item).__qualname__, "size": len(state), "state": meta})
        tensors.extend(state)
    return metas, tensors


# -- objectives -------------------------------------------------------------------------------


class Objective(ABC, Generic[OutputT, TargetT]):
    """Base class: named values per batch, accumulated into epoch values.

    Subclasses implement :meth:`calculate` and :meth:`_get_aggregator` (which
    accumulator a name uses); :meth:`_compute` may post-process the reduced
    values (for example an AUROC from concatenated scores). Objectives are
    plain Python objects, not ``nn.Module``: no module-call overhead, and they
    provide ``state_dict``, ``load_state_dict`` and ``to`` themselves.

    Example:
        >>> import torch
        >>> import torchtally as tt
        >>> from torchtally.aggregation import Max
        >>> class WorstError(tt.Objective[torch.Tensor, torch.Tensor]):
        ...     def calculate(self, outputs, targets):
        ...         return {'worst': (outputs - targets).abs()}
        ...     def _get_aggregator(self, name):
        ...         return Max()
        >>> worst = WorstError()
        >>> _ = worst.update(torch.tensor([1.0, 5.0]), torch.zeros(2))
        >>> worst.compute()
        {'worst': tensor(5.)}
    """

    def __init__(self) -> None:
        self._accumulators: dict[str, Accumulator] = {}
        # Queued batches: one tuple of values per batch, aligned with _names (None where a
        # batch lacks a name), and the batch sizes. Columns are taken with zip(*queue).
        self._names: tuple[str, ...] = ()
        self._queue: list[tuple[Tensor | None, ...]] = []
        self._queue_sizes: list[int] = []
        self._queue_has_gaps = False
        # The first batch is folded at once: its size sets a limit that respects PENDING_ELEMENTS
        # (starting at PENDING_LIMIT would queue that many batches of any size before a fold).
        self._queue_limit = 1
        self._synced: dict[str, Accumulator] | None = None
        self._computed: dict[str, Tensor] | None = None
        for name in self._declared_names():
            self._new_accumulator(name)

    # -- to implement -------------------------------------------------------------------------

    @abstractmethod
    def calculate(self, outputs: OutputT, targets: TargetT) -> dict[str, Tensor]:
        """The named values of one batch (per-sample ``(B,)`` vectors or scalar batch means)."""

    @abstractmethod
    def _get_aggregator(self, name: str) -> Accumulator:
        """A fresh accumulator for the value called ``name``."""

    def _compute(self, reduced: dict[str, Tensor]) -> dict[str, Tensor]:
        """Post-process the reduced values; the default returns them unchanged."""
        return reduced

    def _declared_names(self) -> tuple[str, ...]:
        """Names known before any data (so a rank without data can still sync)."""
        return ()

    def higher_is_better_for(self, name: str) -> bool | None:
        """Whether a higher value of ``name`` is better (``None``: no direction).

        Example:
            >>> import torchtally as tt
            >>> accuracy = tt.Metric(lambda o, t: o == t, 'Accuracy', higher_is_better=True)
            >>> accuracy.higher_is_better_for('Accuracy')
            True
        """
        return None

    # -- description --------------------------------------------------------------------------

    def _label(self) -> str:
        names = list(self._accumulators)
        return f"{type(self).__name__}{names}" if names else type(self).__name__

    @property
    def names(self) -> tuple[str, ...]:
        """Names of the values this objective reports (known so far)."""
        return tuple(self._accumulators)

    # -- the hot path -------------------------------------------------------------------------

    def update(self, outputs: OutputT, targets: TargetT) -> dict[str, Tensor]:
        """Accumulate one batch and return its values (as :meth:`calculate` gave them).

        No host synchronisation happens here: values are checked by their
        metadata only and queued; an empty batch (``B == 0``) changes nothing.
        Python numbers in the result come back as 0-d tensors.

        Args:
            outputs: the model's outputs.
            targets: the batch's targets.

        Returns:
            This batch's named values.
        """
        return self._accumulate(self.calculate(outputs, targets), outputs, targets)

    def _accumulate(self, values: dict[str, Any], outputs: Any, targets: Any) -> dict[str, Tensor]:
        """Queue one batch's values; fold the queue when it is full. Returns ``values``.

        The fast path reads a few attributes per value and appends to a list:
        the values go into the queue as they are when the batch has the known
        names, in order, and every value is a tensor that needs no detaching,
        0-d or ``(B,)``.
        Anything else takes :meth:`_prepare`, which checks, detaches and
        converts (and raises the library's errors).
        """
        if type(targets) is Tensor and targets.ndim:  # the common case, read inline
            size = targets.shape[0]
        else:
            size = batch_size(targets, outputs, self._label())
        if not size:  # an empty batch changes nothing (not even a synced view)
            label = self._label()
            return {name: as_value_tensor(value, label, name) for name, value in values.items()}
        self._computed = None
        self._synced = None
        if tuple(values) != self._names:
            values, queued = self._prepare(values, size)
        else:
            for value in values.values():
                if type(value) is not Tensor or value.requires_grad:
                    values, queued = self._prepare(values, size)
                    break
                ndim = value.ndim
                if ndim and (ndim != 1 or value.shape[0] != size):
                    values, queued = self._prepare(values, size)
                    break
            else:
                queued = tuple(values.values())
        queue = self._queue
        queue.append(queued)
        self._queue_sizes.append(size)
        if len(queue) >= self._queue_limit:
            self._flush()
        return values

    def _prepare(
        self, values: Mapping[str, Any], size: int
    ) -> tuple[dict[str, Tensor], tuple[Tensor | None, ...]]:
        """The slow path: (values to return, values to queue) for one batch.

        Returned values are the callables' own, with Python numbers turned
        into tensors. Queued values are also detached and shaped for folding,
        in the order of ``_names``, with ``None`` for names the batch lacks.
        """
        if not isinstance(values, Mapping):
            raise ResultTypeError(
                f"{self._label()}: calculate() must return a dict of values by name, found "
                f"{type(values).__name__}"
            )
        returned: dict[str, Tensor] = {}
        prepared: dict[str, Tensor] = {}
        for name, value in values.items():
            accumulator = self._accumulators.get(name)
            if accumulator is None:
                accumulator = self._new_accumulator(name)
            tensor = as_value_tensor(value, self._label(), name)
            returned[name] = tensor
            prepared[name] = accumulator.prepare(tensor, size)
        queued = tuple(prepared.get(name) for name in self._names)
        if len(prepared) < len(self._names):
            self._queue_has_gaps = True
        return returned, queued

    def _new_accumulator(self, name: str) -> Accumulator:
        _check_name(name, self._label())
        self._flush()  # queued batches are aligned with the names known so far
        accumulator = self._get_aggregator(name)
        accumulator.label = f"{type(self).__name__} value {name!r}"
        self._accumulators[name] = accumulator
        self._names = (*self._names, name)
        return accumulator

    def _flush(self) -> None:
        """Fold every queued batch into the accumulators."""
        queue = self._queue
        if not queue:
            return
        sizes = self._queue_sizes
        self._queue, self._queue_sizes = [], []
        gaps, self._queue_has_gaps = self._queue_has_gaps, False
        columns = zip(*queue, strict=True)  # every queued tuple has one entry per name
        for accumulator, column in zip(self._accumulators.values(), columns, strict=True):
            if gaps:  # some batches lack this name (a custom calculate() may do that)
                kept = [(v, n) for v, n in zip(column, sizes, strict=True) if v is not None]
                accumulator.fold([v for v, _ in kept], [n for _, n in kept])
            else:
                accumulator.fold(list(column), sizes)
        # Bound the queue's memory: about PENDING_ELEMENTS queued elements at most.
        elements = max(1, sizes[-1] * len(self._accumulators))
        self._queue_limit = max(1, min(PENDING_LIMIT, PENDING_ELEMENTS // elements))

    # -- epoch values -------------------------------------------------------------------------

    def compute(self) -> dict[str, Tensor]:
        """The epoch values as 0-d tensors, cached until the next update, reset or sync.

        After :meth:`sync` (and before the next update) the values are over all
        processes; otherwise over this process's updates. Before any update it
        warns (:class:`~torchtally.errors.ComputedBeforeUpdatedWarning`) and
        returns NaN for every known name.
        """
        if self._computed is None:
            self._flush()
            accumulators = self._synced if self._synced is not None else self._accumulators
            if all(accumulator.count == 0 for accumulator in accumulators.values()):
                warnings.warn(
                    ComputedBeforeUpdatedWarning(
                        f"{self._label()}: compute() called before any update; values are NaN"
                    ),
                    stacklevel=2,
                )
            reduced = {name: accumulator.reduce() for name, accumulator in accumulators.items()}
            self._computed = self._compute(reduced)
        return dict(self._computed)

    def reset(self) -> None:
        """Clear the state (the names stay known) and drop any synced view."""
        self._queue, self._queue_sizes, self._queue_has_gaps = [], [], False
        for accumulator in self._accumulators.values():
            accumulator.reset()
        self._synced = None
        self._computed = None

    # -- combining ----------------------------------------------------------------------------

    def merge_state(self, other: Self) -> None:
        """Add another instance's updates to this one's, as if this one had seen them.

        Raises:
            IncompatibleStateError: ``other`` is of another type or aggregates
                a shared name differently.
        """
        if type(other) is not type(self):
            raise IncompatibleStateError(
                f"{self._label()}: cannot merge the state of a {type(other).__name__}"
            )
        self._flush()
        other._flush()
        for name, theirs in other._accumulators.items():
            mine = self._accumulators.get(name)
            if mine is None:
                mine = self._new_accumulator(name)
            mine.merge(theirs)
        self._synced = None
        self._computed = None

    def sync(self, process_group: distributed.ProcessGroup = None) -> None:
        """Make :meth:`compute` report the value over all processes (see :func:`sync_all`).

        Example:
            >>> import torch
            >>> import torchtally as tt
            >>> metric = tt.Metric(lambda o, t: (o - t).abs(), 'MAE')
            >>> _ = metric.update(torch.ones(2), torch.zeros(2))
            >>> metric.sync()   # no-op outside a distributed run
            >>> metric.compute()
            {'MAE': tensor(1.)}
        """
        sync_all(self, process_group=process_group)

    def _sync_export(self) -> ExportedState:
        self._flush()
        metas: dict[str, Any] = {}
        tensors: list[Tensor] = []
        for name, accumulator in self._accumulators.items():
            meta, state = accumulator.export()
            metas[name] = {"size": len(state), "state": meta}
            tensors.extend(state)
        return {"names": metas}, tensors

    def _sync_prepare(self, states: list[ExportedState]) -> dict[str, Accumulator]:
        per_rank: list[dict[str, ExportedState]] = []
        for meta, tensors in states:
            split: dict[str, ExportedState] = {}
            offset = 0
            for name, entry in meta["names"].items():
                split[name] = (entry["state"], tensors[offset : offset + entry["size"]])
                offset += entry["size"]
            per_rank.append(split)
        # A rank that knows no names has seen no data: it takes part with an empty state.
        name_sets = [list(split) for split in per_rank]
        known = [names for names in name_sets if names]
        if any(sorted(names) != sorted(known[0]) for names in known):
            found = "; ".join(f"rank {index}: {names}" for index, names in enumerate(name_sets))
            raise SyncError(f"{type(self).__name__}: processes report different names ({found})")
        if not known:
            return {}
        synced: dict[str, Accumulator] = {}
        for name in known[0]:
            rank_states = [split[name] for split in per_rank if name in split]
            local = self._accumulators.get(name)
            device = local._device if local is not None else None
            synced[name] = merge_exported(
                rank_states, device, f"{type(self).__name__} value {name!r}"
            )
        return synced

    def _sync_install(self, prepared: dict[str, Accumulator]) -> None:
        for name in prepared:
            if name not in self._accumulators:
                self._new_accumulator(name)
        self._synced = prepared
        self._computed = None

    # -- persistence and devices --------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """This process's accumulated state, ``torch.save``-able (pending values included).

        Example:
            >>> import torch
            >>> import torchtally as tt
            >>> metric = tt.Metric(lambda o, t: (o - t).abs(), 'MAE')
            >>> _ = metric.update(torch.ones(2), torch.zeros(2))
            >>> restored = tt.Metric(metric.fn, 'MAE')
            >>> restored.load_state_dict(metric.state_dict())
            >>> restored.compute()
            {'MAE': tensor(1.)}
        """
        self._flush()
        return {
            "version": _STATE_VERSION,
            "accumulators": {
                name: accumulator.state_dict() for name, accumulator in self._accumulators.items()
            },
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Replace the state with one from :meth:`state_dict`.

        Raises:
            StateDictError: the state is malformed, names values this objective
                does not declare, or aggregates a value differently.
        """
        if not isinstance(state_dict, Mapping) or not isinstance(
            state_dict.get("accumulators"), Mapping
        ):
            found = (
                f"a mapping with keys {sorted(map(str, state_dict))}"
                if isinstance(state_dict, Mapping)
                else type(state_dict).__name__
            )
            raise StateDictError(
                f"{self._label()}: expected a dict from state_dict() whose 'accumulators' "
                f"entry maps names to states, found {found}"
            )
        declared = set(self._declared_names())
        stored = dict(state_dict["accumulators"])
        unexpected = sorted(set(stored) - declared) if declared else []
        if unexpected:
            raise StateDictError(
                f"{self._label()}: the state holds names {unexpected} this objective does not "
                f"report (it reports {sorted(declared)})"
            )
        restored: dict[str, Accumulator] = {}
        for name, state in stored.items():
            accumulator = self._get_aggregator(_check_name(name, self._label()))
            accumulator.label = f"{type(self).__name__} value {name!r}"
            accumulator.load_state_dict(state)
            restored[name] = accumulator
        self.reset()
        for name, accumulator in restored.items():
            if name not in self._accumulators:
                self._new_accumulator(name)
            self._accumulators[name] = accumulator

    def to(self, device: torch.device | str) -> Self:
        """Move the accumulated state to ``device`` (in place) and return ``self``.

        Not needed to follow a model: the state is created on the device of the
        first values it receives. Needed to move a state that already exists.
        """
        self._flush()
        for accumulator in self._accumulators.values():
            accumulator.to(device)
        if self._synced is not None:
            for accumulator in self._synced.values():
                accumulator.to(device)
        self._computed = None
        return self

    def copy(self) -> Self:
        """An independent deep copy, state included."""
        return copy.deepcopy(self)

    def __getstate__(self) -> dict[str, Any]:
        # Pickles and deep copies carry folded state, never a queue of batches.
        self._flush()
        return self.__dict__.copy()

    def __repr__(self) -> str:
        return self._label()


class AverageObjective(Objective[OutputT, TargetT]):
    """An objective whose every value is a batch-weighted mean; implement :meth:`calculate`.

    Example:
        >>> import torch
        >>> import torchtally as tt
        >>> class Errors(tt.AverageObjective[torch.Tensor, torch.Tensor]):
        ...     def calculate(self, outputs, targets):
        ...         diff = outputs - targets
        ...         return {'MSE': diff.pow(2).flatten(1).mean(1),
        ...                 'MAE': diff.abs().flatten(1).mean(1)}
        >>> errors = Errors()
        >>> _ = errors.update(torch.ones(1, 1), 3 * torch.ones(1, 1))
        >>> errors.compute()
        {'MSE': tensor(4.), 'MAE': tensor(2.)}
    """

    @override
    def _get_aggregator(self, name: str) -> Accumulator:
        return Mean()


# -- objectives built from callables -----------------------------------------------------------


@dataclass(frozen=True)
class NamedCallable:
    """A callable of ``(outputs, targets)`` with the name and direction of its value.

    Attributes:
        name: the value's name.
        fn: the callable.
        higher_is_better: direction of the value (``None``: no direction).
        aggregation: accumulator kind (``'mean'``, ``'sum'``, ``'min'``, ``'max'``).

    Example:
        >>> import torch
        >>> from torchtally.objectives import NamedCallable
        >>> entry = NamedCallable('MAE', lambda o, t: (o - t).abs(), higher_is_better=False)
        >>> entry.fn(torch.ones(2), torch.zeros(2))
        tensor([1., 1.])
    """

    name: str
    fn: MetricFn
    higher_is_better: bool | None = None
    aggregation: str = "mean"

    def same_callable(self, other: NamedCallable) -> bool:
        """Whether both wrap the same callable."""
        return self.fn is other.fn or self.fn == other.fn

    def call_error(self, error: Exception, owner: str) -> MetricCallError:
        """The error raised when the callable raised ``error``."""
        return callable_error(owner, self.name, error)


def callable_error(owner: str, name: str, error: Exception) -> MetricCallError:
    """The library's error for a user callable that raised: names the objective and the value.

    Raise it ``from error`` so the original stays chained as ``__cause__``.

    Example:
        >>> from torchtally.objectives import callable_error
        >>> print(callable_error('Metric', 'MAE', ZeroDivisionError('division by zero')))
        Metric: the callable for 'MAE' raised ZeroDivisionError: division by zero
    """
    return MetricCallError(
        f"{owner}: the callable for {name!r} raised {type(error).__name__}: {error}"
    )


def default_name(fn: MetricFn, owner: str) -> str:
    """The name of a callable's value when none is given: its ``__name__`` (or class name).

    Raises:
        InvalidNameError: the callable is a lambda, whose name says nothing.

    Example:
        >>> from torch.nn.functional import mse_loss
        >>> from torchtally.objectives import default_name
        >>> default_name(mse_loss, 'Metric')
        'mse_loss'
    """
    name = getattr(fn, "__name__", None) or type(fn).__name__
    if name == "<lambda>":
        raise InvalidNameError(f"{owner}: a lambda has no usable name; pass name='...'")
    return name


def merge_named_callables(
    first: Iterable[NamedCallable], second: Iterable[NamedCallable], owner: str
) -> dict[str, NamedCallable]:
    """The union of two sets of named callables, keyed by name.

    Raises:
        NameConflictError: one name is given to two different callables.
    """
    merged: dict[str, NamedCallable] = {}
    for entry in (*first, *second):
        present = merged.get(entry.name)
        if present is None:
            merged[entry.name] = entry
        elif not present.same_callable(entry):
            raise NameConflictError(
                f"{owner}: the name {entry.name!r} is given to two different callables "
                f"({present.fn!r} and {entry.fn!r}); give one of them another name"
            )
    return merged


class CallableObjective(Objective[OutputT, TargetT]):
    """An objective evaluating a fixed set of named callables (shared by metrics and losses).

    Args:
        entries: the named callables; one name per callable.

    Example:
        >>> import torch
        >>> from torchtally.objectives import CallableObjective, NamedCallable
        >>> both = CallableObjective([NamedCallable('Bias', lambda o, t: o - t)])
        >>> both.update(torch.tensor([1.0, 2.0]), torch.zeros(2))
        {'Bias': tensor([1., 2.])}
        >>> both.compute()
        {'Bias': tensor(1.5000)}
    """

    _entries: dict[str, NamedCallable]

    def __init__(self, entries: Iterable[NamedCallable]) -> None:
        self._entries = merge_named_callables(entries, (), type(self).__name__)
        for entry in self._entries.values():
            _check_name(entry.name, type(self).__name__)
            if entry.aggregation not in ACCUMULATORS or entry.aggregation == "cat":
                raise ValueError(
                    f"{type(self).__name__}: aggregation of {entry.name!r} must be one of "
                    f"'mean', 'sum', 'min', 'max', found {entry.aggregation!r}"
                )
        super().__init__()
        self._owner = self._label()
        self._calls = tuple((entry.name, entry.fn) for entry in self._entries.values())

    @override
    def _declared_names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    @override
    def _get_aggregator(self, name: str) -> Accumulator:
        entry = self._entries.get(name)
        return ACCUMULATORS[entry.aggregation if entry is not None else "mean"]()

    @override
    def higher_is_better_for(self, name: str) -> bool | None:
        entry = self._entries.get(name)
        return None if entry is None else entry.higher_is_better

    @override
    def calculate(self, outputs: OutputT, targets: TargetT) -> dict[str, Tensor]:
        # One loop, one try: this runs every step. Python numbers are converted by update.
        values: dict[str, Any] = {}
        name = ""
        try:
            for name, fn in self._calls:
                values[name] = fn(outputs, targets)
        except Exception as error:
            raise self._entries[name].call_error(error, self._owner) from error
        return values

    @property
    def entries(self) -> tuple[NamedCallable, ...]:
        """The named callables, in order."""
        return tuple(self._entries.values())

    def __or__(self, other: object) -> MetricCollection[Any, Any]:
        """A new collection with the entries of both (state is not carried over).

        A loss on the right makes the result a loss (see ``LossBase.__ror__``).
        """
        if not isinstance(other, CallableObjective) or _is_loss(other) or _is_loss(self):
            return NotImplemented
        return _collection(
            merge_named_callables(self.entries, other.entries, "MetricCollection").values()
        )


class MetricCollection(CallableObjective[OutputT, TargetT]):
    """Several metrics evaluated together, each under its own name.

    Args:
        **named_fns: callables of ``(outputs, targets)`` by name.

    Example:
        >>> import torch
        >>> import torchtally as tt
        >>> metrics = tt.MetricCollection(
        ...     MAE=lambda o, t: (o - t).abs(), Bias=lambda o, t: o - t)
        >>> _ = metrics.update(torch.tensor([1.0, 3.0]), torch.tensor([2.0, 2.0]))
        >>> metrics.compute()
        {'MAE': tensor(1.), 'Bias': tensor(0.)}
    """

    def __init__(self, **named_fns: MetricFn) -> None:
        super().__init__(NamedCallable(name, fn) for name, fn in named_fns.items())

    @classmethod
    def from_dict(cls, named_fns: Mapping[str, MetricFn]) -> MetricCollection[Any, Any]:
        """A collection from a mapping of names to callables (names need not be identifiers).

        Example:
            >>> import torchtally as tt
            >>> tt.MetricCollection.from_dict({'Mean Error': lambda o, t: o - t}).names
            ('Mean Error',)
        """
        for name in named_fns:
            _check_name(name, cls.__name__)
        return _collection(NamedCallable(name, fn) for name, fn in named_fns.items())

    @property
    def higher_is_better(self) -> dict[str, bool | None]:
        """Direction of each value by name."""
        return {name: entry.higher_is_better for name, entry in self._entries.items()}


class Metric(CallableObjective[OutputT, TargetT]):
    """One metric from a callable of ``(outputs, targets)``.

    The callable returns per-sample values of shape ``(B,)`` (preferred: exact
    weighting) or a scalar that is already a batch mean.

    Args:
        fn: the callable.
        name: the value's name (default: the callable's ``__name__``).
        higher_is_better: direction of the value (``None``: no direction).
        aggregation: ``'mean'`` (batch-weighted, default), ``'sum'``, ``'min'`` or ``'max'``.

    Example:
        >>> import torch
        >>> import torchtally as tt
        >>> from torch.nn.functional import mse_loss
        >>> mse = tt.Metric(mse_loss, name='MSE', higher_is_better=False)
        >>> _ = mse.update(torch.zeros(3), torch.ones(3))   # scalar mean over 3 samples
        >>> _ = mse.update(torch.zeros(1), 4 * torch.ones(1))
        >>> mse.compute()   # (3 * 1 + 1 * 16) / 4
        {'MSE': tensor(4.7500)}
    """

    def __init__(
        self,
        fn: MetricFn,
        name: str | None = None,
        higher_is_better: bool | None = None,
        *,
        aggregation: str = "mean",
    ) -> None:
        if not callable(fn):
            raise TypeError(f"Metric: expected a callable of (outputs, targets), found {fn!r}")
        name = default_name(fn, "Metric") if name is None else _check_name(name, "Metric")
        super().__init__((NamedCallable(name, fn, higher_is_better, aggregation),))

    @property
    def name(self) -> str:
        """The metric's name."""
        return next(iter(self._entries))

    @property
    def fn(self) -> MetricFn:
        """The metric's callable."""
        return next(iter(self._entries.values())).fn

    @property
    def higher_is_better(self) -> bool | None:
        """Direction of the metric (``None``: no direction)."""
        return next(iter(self._entries.values())).higher_is_better

    @override
    def _label(self) -> str:
        return f"Metric {self.name!r}"


def _collection(entries: Iterable[NamedCallable]) -> MetricCollection[Any, Any]:
    collection: MetricCollection[Any, Any] = MetricCollection.__new__(MetricCollection)
    CallableObjective.__init__(collection, entries)
    return collection


def _is_loss(objective: object) -> bool:
    # Losses live in the layer above; they mark themselves so that metric | loss defers to them.
    return getattr(objective, "is_loss", False) is True


def compute_metrics(objective: Any) -> dict[str, float]:
    """The computed values of any objective as plain Python floats, for loggers.

    Accepts torchtally objectives and foreign ones (torchmetrics, torcheval,
    anything with ``compute``) returning a tensor, a number or a dict of them.

    Example:
        >>> import torch
        >>> import torchtally as tt
        >>> metric = tt.Metric(lambda o, t: (o - t).abs(), 'MAE')
        >>> _ = metric.update(torch.tensor([1.0, 2.0]), torch.zeros(2))
        >>> tt.compute_metrics(metric)
        {'MAE': 1.5}
    """
    result = objective.compute()
    if isinstance(result, Mapping):
        return {str(name): float(value) for name, value in result.items()}
    name = getattr(objective, "name", None) or type(objective).__name__
    return {str(name): float(result)}

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

import copy
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor
from typing_extensions import Self

try:
    import torchmetrics
    from torchmetrics.metric import CompositionalMetric
    from torchmetrics.utilities import dim_zero_cat, dim_zero_sum
except ImportError as error:  # pragma: no cover - exercised with the library hidden
    raise ImportError(
        'torchtally.contrib.torchmetrics needs torchmetrics: pip install "torchtally[torchmetrics]"'
    ) from error

from torchtally._conventions import merge_results, normalize_result, unique_names
from torchtally.contrib._adapter import SyncedAdapter
from torchtally.errors import (
    InvalidNameError,
    NameConflictError,
    StateDictError,
    SyncError,
    UnsupportedObjectError,
)
from torchtally.losses import LossOperand
from torchtally.objectives import is_objective_like, join
from torchtally.sync import Gathered, SyncState, callable_identity

__all__ = ["COMBINED_NAME", "TorchMetricsAdapter", "from_torchmetrics"]

COMBINED_NAME = "Combined Loss"
"""The name of a composition's combined value (unless ``name=`` gives another)."""

_STATE_VERSION = 1

TorchMetricsObject = torchmetrics.Metric | torchmetrics.MetricCollection


def _nodes(node: Any) -> Iterator[torchmetrics.Metric]:
    """Every metric in a metric, composition or collection (compositions included), depth first."""
    if isinstance(node, torchmetrics.MetricCollection):
        for member in node._modules.values():
            yield from _nodes(member)
    elif isinstance(node, CompositionalMetric):
        yield node
        yield from _nodes(node.metric_a)
        yield from _nodes(node.metric_b)
    elif isinstance(node, torchmetrics.Metric):
        yield node


def _leaves(root: TorchMetricsObject) -> tuple[torchmetrics.Metric, ...]:
    """The metrics holding state (not compositions), each once, in a fixed order."""
    seen: dict[int, torchmetrics.Metric] = {}
    for node in _nodes(root):
        if not isinstance(node, CompositionalMetric):
            seen.setdefault(id(node), node)
    return tuple(seen.values())


class TorchMetricsAdapter(LossOperand, SyncedAdapter[tuple[TorchMetricsObject, tuple[Any, ...]]]):
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
        if name is not None and (not isinstance(name, str) or not name):
            raise InvalidNameError(
                f"from_torchmetrics: a name must be a non-empty string, found "
                f"{type(name).__name__} {name!r}"
            )
        self._metric = metric
        self._composition = isinstance(metric, CompositionalMetric)
        self._leaves = _leaves(metric)
        # Sync happens in one place, our sync(): none inside torchmetrics' compute or forward.
        for node in _nodes(metric):
            node.sync_on_compute = False
            node.dist_sync_on_step = False
            node._to_sync = False
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
        candidates: dict[str, Any] = {}
        if self._composition:
            candidates = dict(zip(self._leaf_names, self._leaves, strict=True))
        elif isinstance(self._metric, torchmetrics.MetricCollection):
            candidates = dict(
                zip(map(str, self._metric.keys()), self._metric._modules.values(), strict=True)
            )
        else:
            candidates = {self._name: self._metric}
        direction = getattr(candidates.get(name), "higher_is_better", None)
        return direction if isinstance(direction, bool) else None

    def __repr__(self) -> str:
        return self._owner

    # -- the hot path -------------------------------------------------------------------------

    def update(self, outputs: Any, targets: Any, *args: Any, **kwargs: Any) -> None:
        """Update the metric with one batch (extra arguments go to the metric's ``update``)."""
        self.drop_view()
        self._metric.update(outputs, targets, *args, **kwargs)

    def forward(self, outputs: Any, targets: Any, *args: Any, **kwargs: Any) -> Any:
        """Accumulate one batch and return the metric's value on it (torchmetrics' ``forward``)."""
        self.drop_view()
        return self._metric(outputs, targets, *args, **kwargs)

    def __call__(self, outputs: Any, targets: Any, *args: Any, **kwargs: Any) -> Any:
        """Same as :meth:`forward`."""
        return self.forward(outputs, targets, *args, **kwargs)

    # -- values -------------------------------------------------------------------------------

    def compute(self) -> dict[str, Tensor]:
        """The values as ``dict[str, Tensor]``, over all processes after :meth:`sync`.

        A plain metric reports ``{name: value}`` (a tuple result becomes
        ``name_0``, ``name_1``, ...); a dict result (a collection, for
        example) keeps its keys; a composition reports its combined value
        under ``name`` (default ``'Combined Loss'``) and then each leaf metric
        under its class name, made unique (``MeanSquaredError``,
        ``MeanSquaredError_2``).
        """
        view = self.view()
        root, leaves = (self._metric, self._leaves) if view is None else view
        result = normalize_result(root.compute(), self._name, self._owner)
        if self._composition:
            for leaf_name, leaf in zip(self._leaf_names, leaves, strict=True):
                merge_results(
                    result, normalize_result(leaf.compute(), leaf_name, self._owner), self._owner
                )
        return result

    def reset(self) -> None:
        """Reset the metric and drop the synced view."""
        self.drop_view()
        self._metric.reset()
        self._count_reset()

    # -- sync ---------------------------------------------------------------------------------

    def sync_identity(self) -> dict[str, Any]:
        """The wrapped classes, their states and reductions, and the reported names."""
        return {
            "kind": "torchmetrics",
            "root": callable_identity(type(self._metric)),
            "name": self._name,
            "leaves": [
                [
                    callable_identity(type(leaf)),
                    [
                        [
                            state,
                            callable_identity(reduction),
                            type(leaf._defaults[state]).__name__,
                            # a summed state's shape fixes the numbers it adds up
                            list(getattr(leaf, state).shape)
                            if _summed(getattr(leaf, state), reduction)
                            else None,
                        ]
                        for state, reduction in leaf._reductions.items()
                    ],
                ]
                for leaf in self._leaves
            ],
        }

    def sync_export(self, drop_last: bool) -> SyncState:
        """Every leaf's states; ``drop_last`` cannot apply (a state holds no samples).

        Update counts and tensor states reduced by a sum travel in the summed
        vector (float64, one all-reduce; exact for integer states below
        2**53); other states (concatenated lists, other reductions) are
        gathered, a list state concatenated once.
        """
        sums: list[Tensor] = []
        leaves: list[dict[str, Any]] = []
        tensors: list[Tensor] = []
        for leaf in self._leaves:
            if type(leaf)._sync_dist is not torchmetrics.Metric._sync_dist:
                raise UnsupportedObjectError(
                    f"{self._owner}: {type(leaf).__name__} gathers its state with its own "
                    f"_sync_dist, which from_torchmetrics cannot reproduce; sync it with "
                    f"torchmetrics itself"
                )
            count = torch.tensor([float(leaf._update_count)], dtype=torch.float64)
            sums.append(count.to(leaf.device))
            states: list[list[Any]] = []
            for state_name, reduction in leaf._reductions.items():
                value = getattr(leaf, state_name)
                if _summed(value, reduction):
                    sums.append(value.detach().to(leaf.device, torch.float64).reshape(-1))
                    continue
                if isinstance(value, Tensor):
                    states.append([state_name, "tensor", 1])
                    tensors.append(value.detach())
                    continue
                parts = [part.detach() for part in value]
                if reduction is dim_zero_cat and len(parts) > 1:
                    parts = [dim_zero_cat(parts)]  # one tensor per rank instead of one per batch
                states.append([state_name, "list", len(parts)])
                tensors.extend(parts)
            leaves.append({"class": type(leaf).__name__, "states": states})
        described = any(leaf["states"] for leaf in leaves)
        return SyncState(
            sums=torch.cat(sums),
            meta={"leaves": leaves} if described else None,
            tensors=tensors,
        )

    def combine(self, gathered: Gathered) -> tuple[TorchMetricsObject, tuple[Any, ...]] | None:
        """A copy of the metric holding every rank's states, reduced as torchmetrics does."""
        assert gathered.sums is not None
        summed = self._from_sums(gathered.sums)
        described: list[dict[str, Any]] = [{} for _ in self._leaves]
        if any(_described(leaf) for leaf in self._leaves):
            if gathered.states is None:
                return None  # gathered to another rank (sync_all(destination=...))
            described = self._from_states(gathered.states)
        # A copy of the metric holding the global states; the local tensors are not copied
        # (they are replaced in the copy right away) and not touched.
        memo: dict[int, Any] = {}
        for leaf in self._leaves:
            for state_name in leaf._reductions:
                value = getattr(leaf, state_name)
                memo[id(value)] = value
        root = copy.deepcopy(self._metric, memo)
        leaves = _leaves(root)
        for leaf, (values, count), others in zip(leaves, summed, described, strict=True):
            for state_name, value in {**values, **others}.items():
                setattr(leaf, state_name, value)
            leaf._update_count = count
            leaf._computed = None
            leaf._forward_cache = None
        return root, leaves

    def _from_sums(self, sums: Tensor) -> list[tuple[dict[str, Tensor], int]]:
        """Every leaf's summed states and update count, from the added-up vector."""
        found = []
        offset = 0
        for leaf in self._leaves:
            count = int(sums[offset].round().item())
            offset += 1
            values: dict[str, Tensor] = {}
            for state_name, reduction in leaf._reductions.items():
                local = getattr(leaf, state_name)
                if not _summed(local, reduction):
                    continue
                part = sums[offset : offset + local.numel()].reshape(local.shape)
                offset += local.numel()
                if not local.dtype.is_floating_point:
                    part = part.round()
                values[state_name] = part.to(local.device, local.dtype)
            found.append((values, count))
        return found

    def _from_states(self, states: list[tuple[Any, list[Any]]]) -> list[dict[str, Any]]:
        """Every leaf's gathered states (rank order), reduced as the metric's states say."""
        label = self._owner
        layouts = []
        for rank, (meta, tensors) in enumerate(states):
            try:
                layout = [
                    (leaf["class"], [entry[:2] for entry in leaf["states"]])
                    for leaf in meta["leaves"]
                ]
                sizes = [entry[2] for leaf in meta["leaves"] for entry in leaf["states"]]
                if sum(sizes) != len(tensors) or any(
                    not isinstance(size, int) or size < 0 for size in sizes
                ):
                    raise ValueError("state sizes do not match the tensors")
            except (KeyError, TypeError, ValueError, IndexError) as error:
                raise SyncError(f"{label}: rank {rank}'s state is malformed: {error}") from None
            layouts.append(layout)
        if any(layout != layouts[0] for layout in layouts):
            found = "; ".join(f"rank {index}: {layout}" for index, layout in enumerate(layouts))
            raise SyncError(f"{label}: processes hold different states ({found})")
        # Split every rank's tensors by leaf and state.
        per_rank: list[list[dict[str, list[Tensor]]]] = []
        for meta, tensors in states:
            offset = 0
            rank_leaves: list[dict[str, list[Tensor]]] = []
            for leaf_meta in meta["leaves"]:
                split: dict[str, list[Tensor]] = {}
                for state_name, _, size in leaf_meta["states"]:
                    split[state_name] = tensors[offset : offset + size]
                    offset += size
                rank_leaves.append(split)
            per_rank.append(rank_leaves)
        reduced: list[dict[str, Any]] = []
        for index, (leaf, (cls, entries)) in enumerate(zip(self._leaves, layouts[0], strict=True)):
            values: dict[str, Any] = {}
            for state_name, kind in entries:
                where = f"{label}: state {state_name!r} of {cls} (leaf {index})"
                gathered = [rank_leaves[index][state_name] for rank_leaves in per_rank]
                reduction = leaf._reductions[state_name]
                if kind == "tensor":
                    values[state_name] = _reduce_tensor_state(
                        [parts[0] for parts in gathered],
                        reduction,
                        getattr(leaf, state_name).device,
                        where,
                    )
                else:
                    local = getattr(leaf, state_name)
                    device = local[0].device if local else leaf.device
                    flat = [part.to(device) for parts in gathered for part in parts]
                    values[state_name] = _reduce(flat, reduction, where) if flat else []
            reduced.append(values)
        return reduced

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
        leaves = []
        for leaf in self._leaves:
            states: dict[str, Any] = {}
            for state_name in leaf._reductions:
                value = getattr(leaf, state_name)
                if isinstance(value, Tensor):
                    states[state_name] = value.detach().clone()
                else:
                    states[state_name] = [part.detach().clone() for part in value]
            leaves.append(
                {"class": type(leaf).__name__, "count": int(leaf._update_count), "states": states}
            )
        return {"version": _STATE_VERSION, "leaves": leaves}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore the states saved by :meth:`state_dict`.

        Raises:
            StateDictError: the state holds other metrics or states than this adapter's.
        """
        stored = state_dict.get("leaves") if isinstance(state_dict, Mapping) else None
        if not isinstance(stored, list):
            raise StateDictError(
                f"{self._owner}: expected a dict from state_dict() with key 'leaves', found "
                f"{type(state_dict).__name__}"
            )
        expected = [(type(leaf).__name__, sorted(leaf._reductions)) for leaf in self._leaves]
        found = [
            (entry.get("class"), sorted(entry.get("states", {})))
            if isinstance(entry, Mapping) and isinstance(entry.get("states"), Mapping)
            else (type(entry).__name__, [])
            for entry in stored
        ]
        if found != expected:
            raise StateDictError(
                f"{self._owner}: the state holds metrics {found}, this adapter holds {expected}"
            )
        # Everything is checked and converted before any leaf changes: a damaged state
        # changes nothing.
        prepared = [
            (leaf, self._checked_leaf_state(leaf, entry, index))
            for index, (leaf, entry) in enumerate(zip(self._leaves, stored, strict=True))
        ]
        for leaf, (states, count) in prepared:
            for state_name, value in states.items():
                setattr(leaf, state_name, value)
            leaf._update_count = count
            leaf._computed = None
            leaf._forward_cache = None
        self.drop_view()

    def _checked_leaf_state(
        self, leaf: torchmetrics.Metric, entry: Mapping[str, Any], index: int
    ) -> tuple[dict[str, Any], int]:
        """One leaf's stored states, checked against the leaf's own, on its device."""
        where = f"{self._owner}: {type(leaf).__name__} (leaf {index})"
        count = entry.get("count")
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise StateDictError(f"{where}: the update count must be an int >= 0, found {count!r}")
        states: dict[str, Any] = {}
        for state_name, value in entry["states"].items():
            default = leaf._defaults[state_name]
            if isinstance(default, Tensor):
                if not isinstance(value, Tensor) or value.shape != default.shape:
                    found = (
                        tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                    )
                    raise StateDictError(
                        f"{where}: state {state_name!r} must be a tensor of shape "
                        f"{tuple(default.shape)}, found {found}"
                    )
                states[state_name] = value.detach().to(leaf.device, default.dtype, copy=True)
            else:
                if not isinstance(value, list) or not all(isinstance(p, Tensor) for p in value):
                    raise StateDictError(
                        f"{where}: state {state_name!r} must be a list of tensors, found "
                        f"{type(value).__name__}"
                    )
                states[state_name] = [part.detach().to(leaf.device, copy=True) for part in value]
        return states, count

    def to(self, device: torch.device | str) -> Self:
        """Move the metric (and a synced view) to ``device``; returns ``self``."""
        self._metric.to(device)
        if self._synced is not None:
            self._synced[0].to(device)
        return self

    def __ror__(self, other: object) -> Any:
        return join(other, self) if is_objective_like(other) else NotImplemented


def _summed(value: Any, reduction: Any) -> bool:
    """A tensor state reduced by a sum: it travels in the all-reduced vector."""
    return (
        isinstance(value, Tensor)
        and reduction is dim_zero_sum
        and not value.dtype.is_complex
        and value.dtype != torch.bool
    )


def _described(leaf: Any) -> bool:
    """Whether a leaf has states that travel in the gathered payload."""
    return any(
        not _summed(getattr(leaf, name), reduction) for name, reduction in leaf._reductions.items()
    )


def _reduce(values: Any, reduction: Any, where: str) -> Any:
    if reduction is None:
        return values
    try:
        return reduction(values)
    except Exception as error:
        raise SyncError(
            f"{where}: the metric's reduction failed: {type(error).__name__}: {error}"
        ) from error


def _reduce_tensor_state(
    tensors: list[Tensor], reduction: Any, device: torch.device, where: str
) -> Any:
    """Stack the ranks' states of one tensor state and apply the metric's reduction."""
    layouts = [(tuple(tensor.shape), tensor.dtype) for tensor in tensors]
    if any(layout != layouts[0] for layout in layouts):
        found = "; ".join(
            f"rank {index}: shape {shape} {str(dtype).removeprefix('torch.')}"
            for index, (shape, dtype) in enumerate(layouts)
        )
        raise SyncError(f"{where} differs between processes ({found})")
    return _reduce(torch.stack([tensor.to(device) for tensor in tensors]), reduction, where)


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

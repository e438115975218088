"""``sync_all``: one exchange that makes every objective report the value over all processes.

What ranks must agree on, how the gathered states are merged and how the
synced view is installed are decided here; the bytes on the wire are
:mod:`torchtally.distributed`'s business. Objectives and adapters take part
through three hooks (:class:`SyncParticipant`).

Example:
    >>> import torch
    >>> import torchtally as tt
    >>> mae = tt.Metric(lambda o, t: (o - t).abs(), 'MAE')
    >>> _ = mae.update(torch.ones(3), torch.zeros(3))
    >>> tt.sync_all(mae)   # single process: nothing to exchange
    >>> mae.compute()
    {'MAE': tensor(1.)}
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from torch import Tensor

from torchtally import distributed
from torchtally.aggregation import ExportedState
from torchtally.errors import SyncError

__all__ = ["SyncParticipant", "sync_all"]


@runtime_checkable
class SyncParticipant(Protocol):
    """What :func:`sync_all` needs from an object to sync it in its shared exchange.

    Every objective implements it; the torchmetrics and torcheval adapters
    do too, so that one ``sync_all`` moves everything in one exchange.

    Example:
        >>> import torchtally as tt
        >>> from torchtally.sync import SyncParticipant
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


def sync_all(
    *objectives: SyncParticipant,
    process_group: distributed.ProcessGroup = None,
    dataset_size: int | None = None,
) -> None:
    """Synchronise any number of objectives across processes in one exchange.

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
        dataset_size: the number of samples of the dataset a
            ``DistributedSampler`` spread over the ranks: the samples it
            repeated to even out the ranks are dropped.

    Raises:
        SyncError: ranks disagree on the objectives, their names or their
            state layouts, or a rank could not export its state. Every rank
            raises the same error, built from the exchanged data only; none
            hangs. Nothing is changed when it is raised.
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
    objectives = tuple(part for item in objectives for part in _participants(item))
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


def _participants(item: object) -> tuple[Any, ...]:
    """What syncs for ``item``: itself, or the parts a composite names (``sync_parts()``)."""
    parts = getattr(item, "sync_parts", None)
    return tuple(parts()) if callable(parts) else (item,)


def _check_participant(item: object) -> None:
    if not isinstance(item, SyncParticipant):
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

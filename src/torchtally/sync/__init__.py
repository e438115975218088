"""``sync_all``: one exchange that makes every objective report the value over all processes.

Participants (objectives and adapters) take part through five public hooks
(:class:`SyncParticipant`); this package decides what ranks must agree on
(:mod:`torchtally.sync._agreement`), how the rows of accumulators travel and
combine (:mod:`torchtally.sync._rows`) and in which order things happen;
the bytes on the wire are :mod:`torchtally.distributed`'s business. What
participants share besides the hooks is named here too, so that objectives and
adapters never import this package's private modules: the refusal of
``merge_state`` (:func:`check_mergeable`, what a sync would refuse) and the
check of a loaded state's rank (:func:`checked_saved_on`).

A sync is at most three collectives, whatever the number of objectives:
the headers (fingerprints of what each rank syncs and where it is in its
sequence of syncs), one ``all_reduce`` of every mean and sum, and one gather
of everything else. Ranks that disagree exchange descriptions instead of
states, and every rank raises the same :class:`~torchtally.errors.SyncError`.

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

from typing import Any

from torchtally import distributed
from torchtally.sync._agreement import Padding, callable_identity, check_mergeable
from torchtally.sync._exchange import _check_options, _Exchange
from torchtally.sync._exchange import agreeing as agreeing  # read by tests/_sync.py
from torchtally.sync._participant import (
    SyncCounters,
    SyncParticipant,
    _check_participant,
    _participants,
    checked_saved_on,
)
from torchtally.sync._rows import Gathered, SyncState, export_rows, merge_rows

__all__ = [
    "Gathered",
    "Padding",
    "SyncCounters",
    "SyncParticipant",
    "SyncState",
    "callable_identity",
    "check_mergeable",
    "checked_saved_on",
    "export_rows",
    "merge_rows",
    "sync_all",
]

# Documented, pickled and shown under the package's name, where they were first defined.
for _public in (SyncParticipant, SyncCounters):
    _public.__module__ = __name__


def sync_all(
    *objectives: Any,
    process_group: distributed.ProcessGroup = None,
    dataset_size: int | None = None,
    destination: int | None = None,
) -> None:
    """Synchronise any number of objectives across processes in one exchange.

    After the call, ``compute()`` on every rank returns the value over the
    updates of all ranks. Syncing twice equals syncing once (each process
    keeps its own updates; the synced view is rebuilt from all of them), and
    updates made after a sync are counted once at the next sync. Until then
    ``compute()`` reports this process's own updates. Outside a distributed
    run (or in a group of one process) nothing is exchanged and nothing
    changes; ``dataset_size`` is still checked against the samples each value
    saw, as a distributed sync checks it.

    Args:
        *objectives: torchtally objectives and adapters, in the same order on
            every rank.
        process_group: the ``torch.distributed`` group; ``None`` is the default group.
        dataset_size: the length of the dataset a ``DistributedSampler``
            (``drop_last=False``) spread over the ranks: the samples it
            repeated to even out the ranks are dropped, so the values are those
            of the ``dataset_size`` samples (in one process: checked, nothing
            is repeated). Objectives that saw only batch
            values cannot drop them: they warn
            (:class:`~torchtally.errors.RepeatedSampleWarning`).
        destination: a rank of the group: minima, maxima, concatenations and
            adapters' states are gathered to it alone (means and sums still
            reach every rank); elsewhere ``compute()`` of an objective that
            needs them raises :class:`~torchtally.errors.SyncError`.

    Raises:
        SyncError: ranks disagree on the objectives (position, kind, names,
            aggregations, callables, formula, state layout), are at different
            syncs, pass different arguments, or a rank could not export its
            state; or a header or payload is not torchtally's; or a value saw
            another number of samples than ``dataset_size`` gives (in one
            process too, where an object keeping its own state, which cannot
            count its samples, is refused with ``dataset_size`` as in a
            distributed run). Every rank raises the same error after the same
            collectives; none hangs. Nothing is changed when it is raised.
        InvalidArgumentError: outside a distributed run, an argument that
            cannot take part in a sync (in a distributed run, the ``SyncError``
            every rank raises names it); ``dataset_size`` or ``destination`` is
            not a valid count or rank. A ``TypeError`` and a ``ValueError``.

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
    participants = tuple(part for item in objectives for part in _participants(item))
    world = distributed.world_size(process_group)
    if not distributed.is_distributed(process_group):
        for item in participants:
            _check_participant(item)
        # A process outside the group (torch reports its size as -1) returns at once; it
        # cannot tell whether destination= is a rank of the group.
        _check_options(dataset_size, destination, world if world >= 1 else None)
        if dataset_size is not None and world >= 1:  # the counts a sync checks, checked here too
            alone = _Exchange(participants, process_group, 1, 0)
            alone.prepare(dataset_size, None)
            alone.check_alone()
        return
    me = distributed.rank(process_group)
    exchange = _Exchange(participants, process_group, world, me)
    exchange.prepare(dataset_size, destination)
    exchange.run()

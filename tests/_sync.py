"""Ranks simulated in one process: what ``sync_all`` does, with every collective done by hand.

``simulate_sync([rank0_objects, rank1_objects, ...])`` runs the very steps of
:func:`torchtally.sync_all` on each rank's participants (describe, export,
headers, the disagreement path, the added-up sums, packed payloads unpacked
through the wire format, merge, install), so adapters and objectives can be
checked against many ranks without spawning processes. The real collectives
are covered by the gloo tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from torchtally.sync import _Exchange, _participants, agreeing

__all__ = ["simulate_sync"]

CPU = torch.device("cpu")


def simulate_sync(
    ranks: Sequence[Sequence[Any]],
    *,
    dataset_size: int | None = None,
    destination: int | None = None,
) -> None:
    """Sync ``ranks[r]`` as rank ``r``'s objectives, as ``sync_all`` on ``len(ranks)`` processes.

    Raises:
        SyncError: as ``sync_all`` would, on every rank (raised once here).
    """
    world = len(ranks)
    exchanges = []
    for rank, objects in enumerate(ranks):
        participants = tuple(part for item in objects for part in _participants(item))
        exchange = _Exchange(participants, None, world, rank)
        exchange.prepare(dataset_size, destination)
        exchanges.append(exchange)
    outgoing = [exchange.outgoing(CPU) for exchange in exchanges]
    notes = [exchange.notes(CPU) for exchange in exchanges]
    headers = [
        exchange.header(sums, payload, note)
        for exchange, (sums, payload), note in zip(exchanges, outgoing, notes, strict=True)
    ]
    if not agreeing(headers):
        exchanges[0].raise_disagreement(notes)
    sums = [vector for vector, _ in outgoing]
    reduced = torch.stack(sums).sum(0) if sums[0].numel() else None
    payloads = [payload for _, payload in outgoing]
    gathered = any(payload.numel() for payload in payloads)
    for rank, exchange in enumerate(exchanges):
        here = not gathered or destination is None or destination == rank
        exchange.merge_and_install(reduced, payloads if here else None)

"""Folding: blocks of values added to the accumulator rows a plan targets.

A plan's parts (see :mod:`._plan`) say which accumulator rows each line of
a block goes to. This module adds blocks there: the queued blocks of many
batches at once (:func:`fold_queued`, what a ledger's flush does), the
values a concatenation keeps whole (:func:`keep`), and one batch straight
from its values inside ``torch.compile``, where nothing is queued
(:func:`fold_now`). It decides nothing about when to fold.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from torchtally._conventions import Weight
from torchtally.aggregation import Accumulator, Entries
from torchtally.objectives._plan import VECTOR, Part, Plan
from torchtally.objectives._queue import Queued, batch_weights, per_sample

__all__ = ["fold_now", "fold_queued", "fold_scalars", "fold_vectors", "keep"]


def fold_queued(queued: Iterable[Queued]) -> None:
    """Fold queued blocks (:meth:`._queue.Queue.items`) into their accumulators."""
    for part, values, weights, sizes in queued:
        if part.kind == VECTOR:
            fold_vectors(part, values, weights, sum(sizes))
        else:
            fold_scalars(part, values, sizes, weights)


def fold_now(plan: Plan, tensors: Sequence[Tensor], size: Any, weight: Weight) -> None:
    """Fold one batch's values (in the batch's order) at once, no queue.

    Every accumulator takes all its parts of the batch in one call
    (``Accumulator.add_entries``), so that a mean or a sum writes each of its
    state tensors once: inside ``torch.compile`` a write into some rows of a
    state tensor becomes a copy of the whole tensor. A scalar batch mean with
    no ``weight=`` weighs the batch size, a number (no weight tensor is made).
    """
    accumulators: list[Accumulator] = []  # in the order first targeted (no id(): a guard)
    found: list[list[Entries]] = []
    for group in plan.groups:
        for part in group.parts:
            vector = part.kind == VECTOR
            members = [tensors[position].detach() for position in part.members]
            weights = None
            if vector and weight is not None:
                weights = per_sample(weight, size, members[0].device)
            elif not vector:
                members = [member.reshape(1) for member in members]
            for target in part.targets:
                accumulator, scale, lines = target.accumulator, None, target.lines
                if not vector:
                    mean = accumulator.scalar_is_mean
                    if weight is None:
                        scale = size if mean else None
                    else:
                        weights = batch_weights([size], [weight], members[0].device, mean)
                picked = members[lines] if type(lines) is slice else [members[i] for i in lines]
                entries = (tuple(picked), weights, target.rows, vector, scale)
                for index in range(len(accumulators)):
                    if accumulators[index] is accumulator:
                        found[index].append(entries)
                        break
                else:
                    accumulators.append(accumulator)
                    found.append([entries])
    for index in range(len(accumulators)):
        accumulators[index].add_entries(found[index], size)


def fold_vectors(part: Part, values: Tensor, weights: Tensor | None, samples: Any) -> None:
    """Fold per-sample values ``(m, ...)`` (``weights``: one per sample)."""
    for target in part.targets:
        target.accumulator.add(
            _select(values, target.lines),
            weights,
            samples=samples,
            rows=target.rows,
            droppable=True,
        )


def fold_scalars(
    part: Part, values: Tensor, sizes: list[Any], weights: Sequence[Weight] | None
) -> None:
    """Fold scalar values ``(m, K)``, one per batch, weighted as their accumulator says.

    ``weights`` holds the batches' weights (``None``: no batch had one).
    """
    samples = sum(sizes)
    for target in part.targets:
        target.accumulator.add(
            _select(values, target.lines),
            batch_weights(sizes, weights, values.device, target.accumulator.scalar_is_mean),
            samples=samples,
            rows=target.rows,
        )


def keep(plan: Plan, tensors: Sequence[Tensor], size: Any) -> None:
    """Add the values concatenations keep whole to their accumulators."""
    for item in plan.kept:
        value = tensors[item.position]
        item.accumulator.add(
            value.reshape(1, 1) if value.ndim == 0 else value.unsqueeze(0),
            rows=(item.row,),
            samples=size,
            droppable=value.ndim > 0,
        )


def _select(block: Tensor, lines: slice | tuple[int, ...]) -> Tensor:
    if isinstance(lines, slice):
        return block if lines == slice(0, block.shape[0]) else block[lines]
    return block.index_select(0, torch.tensor(lines, device=block.device))

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
from torchtally.objectives._plan import SCALAR, VECTOR, Part, Plan
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
    """Fold one batch's values (in the batch's order) at once, part by part (no queue)."""
    for group in plan.groups:
        for part in group.parts:
            block = _stacked(part, tensors).detach()
            if part.kind == VECTOR:
                fold_vectors(part, block, per_sample(weight, size, block.device), size)
            else:
                fold_scalars(part, block.unsqueeze(1), [size], [weight])


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


def _stacked(part: Part, tensors: Sequence[Tensor]) -> Tensor:
    """A part's values of one batch stacked: ``(m, B)`` for vectors, ``(m,)`` for scalars."""
    members = [tensors[position] for position in part.members]
    if part.kind == SCALAR:
        members = [member.reshape(()) for member in members]
    return torch.stack(members)

"""The pending queue of a ledger: batches copied into persistent buffers, folded in bulk.

The :class:`Queue` holds one flat buffer per group of the plan in use (see
:mod:`._plan`), allocated once and reused across folds, and hands out
*slots*: for each batch index, the views of the buffers that batch is copied
into. Slots are cut once per batch size and kept (cutting a view costs as
much as a small copy), so a steady stream of batches of one size copies its
values and does nothing else. Batches of other sizes are placed at the
buffers' current offsets instead.

The queue knows nothing of names or accumulators: the ledger decides when to
fold, and folds what :meth:`Queue.items` views.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from torchtally._conventions import Weight
from torchtally._inference import outside_inference_mode
from torchtally.aggregation import REUSED_ELEMENTS, nan_where_negative
from torchtally.objectives._plan import VECTOR, Part, Plan

__all__ = ["PENDING_BATCHES", "PENDING_ELEMENTS", "Queue", "Queued", "batch_weights", "per_sample"]

PENDING_ELEMENTS = REUSED_ELEMENTS
"""At most this many elements (2**18, 1 MiB of float32) are queued before a fold, or one batch if
it is larger: as many as a fold converts to float64 in its reused buffer
(:data:`~torchtally.aggregation.REUSED_ELEMENTS`). The buffers holding them are sized
for :data:`PENDING_BATCHES` batches of the first batch's size, within this bound, grow only when
a batch needs more room, and are reused."""

PENDING_BATCHES = 256
"""At most this many batches are queued before a fold."""

F64 = torch.float64

Queued = tuple[Part, Tensor, Any, list[int]]
"""A part, its queued values (``(m, K, B)`` or ``(m, K)``), their weights, the batch sizes."""


class Queue:
    """Batches of one plan waiting to be folded, in buffers reused from fold to fold.

    While every queued batch has one size (``size``), batch ``k`` is copied
    into ``slots[k]``; ``room`` batches of that size fit before a fold. A
    batch of another size goes at the current offsets (``used``) instead, and
    the queue stays irregular until it is emptied.
    """

    def __init__(self) -> None:
        self.plan: Plan | None = None
        self.buffers: list[Tensor] = []
        self.sizes: list[int] = []  # the queued batches' sizes
        self.size = 0  # the size of every queued batch (0: sizes differ, or nothing planned)
        self.slots: list[tuple[Tensor, ...]] = []  # cut for batches of `cut` samples
        self.cut = 0
        self.room = 0  # batches of `cut` samples the buffers hold
        self.forms: tuple[tuple[torch.dtype, tuple[int, ...]], ...] | None = None  # at `cut`
        self.used: list[int] = []  # per buffer, elements used (kept up to date when irregular)
        # Weights, once a batch since the last fold had one: per batch, and per sample for
        # vector groups in a float64 buffer (batches queued before the first weigh 1 each).
        self.weights: list[Weight] = []
        self.weighted = False
        self.sample_weights: Tensor | None = None

    # -- placing batches ----------------------------------------------------------------------

    def prepare(self, plan: Plan, size: int) -> None:
        """Make the empty queue hold batches of ``plan``, sized for batches of ``size``."""
        assert not self.sizes
        lengths = plan.lengths(size)
        total = sum(lengths)
        wanted = min(PENDING_BATCHES, max(1, PENDING_ELEMENTS // total)) if total else 1
        if plan is not self.plan or size != self.cut:
            self.slots = []  # views of other buffers or for another size
        if not self._holds(plan, lengths, wanted):
            self._allocate(plan, lengths, wanted)
        self.plan, self.size, self.cut = plan, size, size
        self.forms = plan.forms_at(size)
        capacities = [
            buffer.numel() // length
            for buffer, length in zip(self.buffers, lengths, strict=True)
            if length
        ]
        self.room = min([PENDING_BATCHES, *capacities])

    def _holds(self, plan: Plan, lengths: list[int], batches: int) -> bool:
        """Whether the buffers suit ``plan`` and hold ``batches`` batches of these lengths.

        A buffer made for one batch larger than :data:`PENDING_ELEMENTS` is
        not kept for smaller batches: memory goes back within the bound.
        """
        return len(self.buffers) == len(plan.groups) and all(
            buffer.dtype == group.dtype
            and buffer.device == plan.device
            and batches * length <= buffer.numel() <= max(PENDING_ELEMENTS, batches * length)
            for buffer, group, length in zip(self.buffers, plan.groups, lengths, strict=True)
        )

    @outside_inference_mode
    def _allocate(self, plan: Plan, lengths: list[int], batches: int) -> None:
        """Buffers for ``batches`` batches of these lengths (within bounds, never smaller)."""
        old = self.buffers if len(self.buffers) == len(plan.groups) else []
        fresh = []
        for index, (group, length) in enumerate(zip(plan.groups, lengths, strict=True)):
            keep = 0
            if old and old[index].dtype == group.dtype and old[index].device == plan.device:
                keep = old[index].numel() if old[index].numel() <= PENDING_ELEMENTS else 0
            fresh.append(
                torch.empty(max(batches * length, keep, 1), dtype=group.dtype, device=plan.device)
            )
        self.buffers = fresh
        self.slots, self.sample_weights = [], None

    def fits(self, size: int) -> bool:
        """Whether one more batch of ``size`` samples fits before a fold."""
        if size == self.size:
            return len(self.sizes) < self.room
        if self.plan is None or len(self.sizes) >= PENDING_BATCHES:
            return False
        lengths = self.plan.lengths(size)
        return all(
            used + length <= buffer.numel()
            for used, length, buffer in zip(self.offsets(), lengths, self.buffers, strict=True)
        )

    def slot(self, size: int) -> tuple[Tensor, ...]:
        """The views the next batch of ``size`` samples is copied into (it :meth:`fits`)."""
        index = len(self.sizes)
        if size == self.size:
            while len(self.slots) <= index:  # cut once, kept for later folds
                self.slots.append(self._views([len(self.slots) * n for n in self._cut_lengths()]))
            return self.slots[index]
        self.used, self.size = self.offsets(), 0  # from here on, until emptied: irregular
        return self._views(self.used, size)

    def _cut_lengths(self) -> list[int]:
        assert self.plan is not None
        return self.plan.lengths(self.cut)

    def _views(self, offsets: list[int], size: int | None = None) -> tuple[Tensor, ...]:
        assert self.plan is not None
        lengths = self.plan.lengths(self.cut if size is None else size)
        return tuple(
            group.shaped(buffer[offset : offset + length])
            for group, buffer, offset, length in zip(
                self.plan.groups, self.buffers, offsets, lengths, strict=True
            )
        )

    def offsets(self) -> list[int]:
        """Elements used in each buffer."""
        if self.size:
            return [len(self.sizes) * length for length in self._cut_lengths()]
        return list(self.used)

    def commit(self, size: int, weight: Weight) -> bool:
        """Count the batch just copied into its slot; whether the queue is now full."""
        if not self.size:
            assert self.plan is not None
            lengths = self.plan.lengths(size)
            self.used = [used + length for used, length in zip(self.used, lengths, strict=True)]
        if weight is not None or self.weighted:
            self._record_weight(size, weight)
        self.sizes.append(size)
        return len(self.sizes) >= (self.room if self.size else PENDING_BATCHES)

    def _record_weight(self, size: int, weight: Weight) -> None:
        """Record a batch's weight: per batch, and per sample if the plan has vector groups."""
        assert self.plan is not None
        if isinstance(weight, Tensor):
            weight = weight.detach().to(F64, copy=True)
        queued = sum(self.sizes)
        if not self.weighted:
            self.weights = [None] * len(self.sizes)
        self.weights.append(weight)
        if self.plan.vectors:
            part = self._sample_weights_for(queued, size)
            if weight is None:
                part.fill_(1.0)
            elif isinstance(weight, Tensor) and weight.ndim == 1:
                part.copy_(weight)
            elif isinstance(weight, Tensor):  # a batch's total weight, shared by its samples
                part.copy_((weight / size).expand(size))
            else:
                part.fill_(weight / size)
        self.weighted = True

    def _sample_weights_for(self, queued: int, size: int) -> Tensor:
        """The per-sample weights' place for the next batch (the earlier ones weigh 1 each)."""
        assert self.plan is not None
        held = self.sample_weights
        if held is None or held.numel() < queued + size:
            self.sample_weights = held = self._grown_sample_weights(queued, size)
        if not self.weighted:
            held[:queued].fill_(1.0)
        return held[queued : queued + size]

    # -- reading and emptying -----------------------------------------------------------------

    @outside_inference_mode
    def _grown_sample_weights(self, queued: int, size: int) -> Tensor:
        """A per-sample weight buffer with room for ``queued + size``, the queued ones kept."""
        assert self.plan is not None
        held = self.sample_weights
        grown = torch.empty(
            max(self.room * self.cut, queued + size), dtype=F64, device=self.plan.device
        )
        if held is not None and self.weighted:
            grown[:queued] = held[:queued]
        return grown

    def items(self) -> Iterator[Queued]:
        """The queued values part by part, as views of the buffers (nothing is copied).

        A group with per-sample vectors gives one item per part and run of
        consecutive batches of one size ``B`` (``K`` batches): values
        ``(m, K, B)`` and per-sample weights ``(K, B)`` or ``None`` for its
        vectors, values ``(m, K)`` and the batches' weights (a list, ``None``
        when no batch had one) for its scalars, and the ``K`` sizes. A group
        of scalars only gives one item for all the queued batches.
        """
        plan, sizes = self.plan, self.sizes
        if plan is None or not sizes:
            return
        weights = self.weights if self.weighted else None
        runs = [(self.size, len(sizes))] if self.size else _runs(sizes)  # one size: one run
        for group, buffer in zip(plan.groups, self.buffers, strict=True):
            pieces = runs if group.vectors else [(sizes[0], len(sizes))]  # any size: one piece
            offset = first = start = 0  # in the buffer, in the batches, in the samples
            for size, batches in pieces:
                length = group.length(size)
                block = buffer[offset : offset + batches * length].view(batches, length)
                run = slice(first, first + batches)
                for part in group.parts:
                    found: Any = None if weights is None else weights[run]  # scalars: per batch
                    if part.kind == VECTOR:
                        found = self._sample_weights_of(start, batches, size)
                    yield part, group.folded(part, block, size), found, sizes[run]
                offset += batches * length
                first += batches
                start += batches * size

    def _sample_weights_of(self, start: int, batches: int, size: int) -> Tensor | None:
        """The per-sample weights of ``batches`` batches of ``size`` from sample ``start``."""
        if not self.weighted or self.sample_weights is None:
            return None
        return self.sample_weights[start : start + batches * size].view(batches, size)

    def clear(self) -> None:
        """Forget the queued batches (what :meth:`items` viewed is overwritten from now on)."""
        self.sizes, self.weights, self.weighted = [], [], False
        self.size = self.cut

    def release(self) -> None:
        """Forget the queued batches, the plan and the buffers."""
        self.clear()
        self.plan, self.buffers, self.slots, self.sample_weights = None, [], [], None
        self.size = self.cut = self.room = 0
        self.forms = None


def _runs(sizes: list[int]) -> list[tuple[int, int]]:
    """``(size, count)`` of every run of equal consecutive batch sizes."""
    runs: list[tuple[int, int]] = []
    for size in sizes:
        if runs and runs[-1][0] == size:
            runs[-1] = (size, runs[-1][1] + 1)
        else:
            runs.append((size, 1))
    return runs


def per_sample(weight: Weight, size: Any, device: torch.device) -> Tensor | None:
    """One float64 weight per sample of one batch (``None``: each weighs 1)."""
    if weight is None:
        return None
    if isinstance(weight, Tensor) and weight.ndim == 1:
        return weight.to(device, F64)
    if not isinstance(weight, Tensor):
        # A number multiplies a tensor (no torch.tensor(number)): under torch.compile a number
        # that changes every step stays symbolic instead of recompiling at each new value.
        spread: Tensor = torch.ones(size, dtype=F64, device=device) * (weight / size)
    else:
        spread = (weight.to(device, F64) / size).expand(size)
    return spread


def batch_weights(
    sizes: list[int], weights: Sequence[Weight] | None, device: torch.device, mean_like: bool
) -> Tensor | None:
    """One float64 weight per queued batch for scalar values (``weights``: None if none had one).

    A batch mean weighs its batch size (or its weight); a batch total or an
    extremum candidate weighs 1 (or its weight: 0 excludes it).
    """
    if weights is None or all(weight is None for weight in weights):
        if not mean_like:
            return None
        if sizes.count(sizes[0]) == len(sizes):  # one batch size: no list to convert
            return torch.full((len(sizes),), sizes[0], dtype=F64, device=device)
        return torch.tensor(sizes, dtype=F64, device=device)
    parts = []
    for size, weight in zip(sizes, weights, strict=True):
        if weight is None:
            parts.append(torch.tensor([size if mean_like else 1], dtype=F64, device=device))
        elif isinstance(weight, Tensor):  # a negative per-sample weight: NaN, as for vectors
            parts.append(nan_where_negative(weight.to(device, F64)).sum().reshape(1))
        else:
            parts.append(torch.ones(1, dtype=F64, device=device) * weight)  # see per_sample
    return torch.cat(parts)

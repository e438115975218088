"""Plans: how a batch of named values is checked once, copied every batch and folded.

A :class:`Plan` is made from one batch whose values were validated (names,
types, shapes, device), for the rows a ledger has. It splits the values
into groups (:class:`Group`), one per dtype: each group is copied with one
tensor operation per batch into a *record* (its per-sample vectors, then its
scalars), and folded in parts (:class:`Part`): the vectors of a group
together, its scalars together, each part into the accumulator rows it
targets (:class:`Target`). Values that a :class:`~torchtally.aggregation.Cat`
keeps whole are listed apart (:class:`Kept`).

A later batch matches a plan when its metadata does (:meth:`Plan.forms_at`):
the hot path needs no validation then. Plans are made (and batches checked
for them) in :mod:`._planning`.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from torchtally._lazy import lazy
from torchtally.aggregation import Accumulator

__all__ = [
    "SCALAR",
    "VECTOR",
    "Group",
    "Kept",
    "Part",
    "Plan",
    "Target",
    "copy_batch",
]

VECTOR, SCALAR = "vector", "scalar"
Form = tuple[torch.dtype, tuple[int, ...]]


@dataclass(frozen=True)
class Target:
    """Where some lines of a part go: rows of one accumulator."""

    accumulator: Accumulator
    rows: tuple[int, ...] | None  # None: every row of the accumulator, in order
    lines: slice | tuple[int, ...]  # the part's lines, as a slice when contiguous


@dataclass(frozen=True)
class Part:
    """The values of a group folded together: its per-sample vectors, or its scalars."""

    kind: str  # VECTOR: (m, K, B) when folded; SCALAR: (m, K)
    members: tuple[int, ...]  # positions of the values in the batch
    targets: tuple[Target, ...]


@dataclass(frozen=True)
class Group:
    """Values of one dtype copied with one operation per batch.

    A *record* group holds per-sample vectors and scalars of at most one
    dimension, one after the other, the vectors first (a batch takes
    ``V * B + S`` elements); a group of scalars of another shape (``(1, 1)``)
    holds ``(m, *shape[1:])`` per batch.
    """

    dtype: torch.dtype
    members: tuple[int, ...]  # positions of the values in the batch: vectors first, in order
    shapes: tuple[tuple[int, ...] | None, ...]  # per member; None: a per-sample vector
    record: bool  # vectors and scalars of at most one dimension (else odd scalars)
    everything: bool  # members are all the batch's values, in order
    parts: tuple[Part, ...]

    # Derived on first use (by the eager queue): a plan made while torch.compile traces folds
    # its parts only, and each builtin or module global these read would be a guard.
    @lazy
    def vectors(self) -> int:
        """How many members are per-sample vectors."""
        return sum(shape is None for shape in self.shapes)

    @lazy
    def single(self) -> int | None:
        """The one member, if there is one."""
        return self.members[0] if len(self.members) == 1 else None

    @lazy
    def pick(self) -> Callable[[Sequence[Tensor]], Any]:
        """The members of a batch's values, in the group's order."""
        return operator.itemgetter(*self.members)

    @lazy
    def join(self) -> Callable[..., Tensor]:
        """How the members are copied into a record with one operation (``out=``)."""
        if not self.record or all(shape is None or len(shape) == 1 for shape in self.shapes):
            return torch.cat  # all 1-d, or odd scalars along dim 0
        if all(shape == () for shape in self.shapes):
            return torch.stack  # 0-d scalars side by side: cheaper than hstack
        return torch.hstack  # vectors and 0-d scalars in one record

    def length(self, size: int) -> int:
        """How many buffer elements one batch of ``size`` samples takes."""
        return self.vectors * size + len(self.members) - self.vectors

    def shaped(self, part: Tensor) -> Tensor:
        """A batch's part of the buffer, shaped as :func:`copy_batch` writes it."""
        if self.record:
            return part
        shape = self.shapes[0]
        assert shape is not None
        return part.view(len(self.members), *shape[1:])

    def folded(self, part: Part, block: Tensor, size: int) -> Tensor:
        """A part's values, viewed in a block of ``K`` records of batches of ``size`` samples.

        ``block`` is ``(K, length)``; records hold the vectors first, so each
        part is a range of columns: vectors come out ``(m, K, B)``, scalars
        ``(m, K)``, both views (nothing is copied).
        """
        split = self.vectors * size
        if part.kind == VECTOR:
            return block[:, :split].view(block.shape[0], self.vectors, size).transpose(0, 1)
        return block[:, split:].t()


@dataclass(frozen=True)
class Kept:
    """A value an accumulator keeps whole (a :class:`~torchtally.aggregation.Cat` row)."""

    position: int
    accumulator: Accumulator
    row: int


@dataclass(frozen=True)
class Plan:
    """How a batch with these names, dtypes, shapes and device becomes blocks."""

    names: tuple[str, ...]
    groups: tuple[Group, ...]  # queued, folded later
    kept: tuple[Kept, ...]  # added to their accumulator at once
    device: torch.device
    scalar_totals: bool  # some scalar is a batch total (a sum): weights cannot apply to it
    keeps_values: bool  # some value goes to a Cat (kept as it is: weights cannot apply to it)
    scalar_means: tuple[str, ...]  # scalars a mean weighs whole: per-sample weights only sum

    # Derived on first use, by the eager queue (see Group): not while torch.compile traces.
    @lazy
    def _forms(self) -> tuple[tuple[Any, ...], tuple[tuple[int, ...] | None, ...]]:
        dtypes: list[Any] = [None] * len(self.names)
        shapes: list[tuple[int, ...] | None] = [None] * len(self.names)
        for group in self.groups:
            for position, shape in zip(group.members, group.shapes, strict=True):
                dtypes[position], shapes[position] = group.dtype, shape
        return tuple(dtypes), tuple(shapes)

    @lazy
    def dtypes(self) -> tuple[torch.dtype, ...]:
        """Every value's dtype."""
        return self._forms[0]

    @lazy
    def shapes(self) -> tuple[tuple[int, ...] | None, ...]:
        """Every value's shape; ``None``: ``(B,)``."""
        return self._forms[1]

    @lazy
    def on_cpu(self) -> bool:
        """Whether the values live on the CPU."""
        return self.device.type == "cpu"

    @lazy
    def copy(self) -> Callable[[Sequence[Tensor], Sequence[Tensor]], Any]:
        """:func:`copy_batch` for these groups, one call (call without autograd)."""
        return _copier(self.groups)

    @property
    def vectors(self) -> bool:
        """Whether some value is per-sample (and batches need per-sample weights)."""
        return any(group.vectors for group in self.groups)

    def lengths(self, size: int) -> list[int]:
        """Buffer elements per group for one batch of ``size`` samples."""
        return [group.length(size) for group in self.groups]

    def forms_at(self, size: int) -> tuple[Form, ...] | None:
        """Every value's dtype and shape in a batch of ``size`` samples.

        ``None`` when a batch of this plan cannot be queued from its metadata
        alone: a value is kept whole, or the batch has one sample and some
        scalar has shape ``(1,)`` (a per-sample vector there).
        """
        if self.kept or (size == 1 and (1,) in self.shapes):
            return None
        vector = (size,)
        return tuple(
            (dtype, vector if shape is None else shape)
            for dtype, shape in zip(self.dtypes, self.shapes, strict=True)
        )


def copy_batch(groups: Sequence[Group], values: Sequence[Tensor], slot: Sequence[Tensor]) -> None:
    """Copy one batch's values into its slot: one operation per group (call without autograd)."""
    for line, group in enumerate(groups):  # not zip(..., strict=): this runs every batch
        out = slot[line]
        if group.single is not None:
            out.copy_(values[group.single])
        else:
            group.join(values if group.everything else group.pick(values), out=out)


def _copier(groups: tuple[Group, ...]) -> Callable[[Sequence[Tensor], Sequence[Tensor]], Any]:
    """:func:`copy_batch` for ``groups``; for one group (one dtype: the common case), inline."""
    if len(groups) != 1 or groups[0].single is not None:
        return functools.partial(copy_batch, groups)
    join, pick = groups[0].join, groups[0].pick
    if groups[0].everything:

        def copy_all(values: Sequence[Tensor], slot: Sequence[Tensor]) -> Any:
            return join(values, out=slot[0])

        return copy_all

    def copy_picked(values: Sequence[Tensor], slot: Sequence[Tensor]) -> Any:
        return join(pick(values), out=slot[0])  # vectors first: another order than the batch's

    return copy_picked

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
the hot path needs no validation then.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from torchtally._dtypes import refuse_unheld
from torchtally._lazy import lazy
from torchtally.aggregation import Accumulator, Cat
from torchtally.errors import DeviceMismatchError, ResultShapeError

__all__ = [
    "SCALAR",
    "VECTOR",
    "Group",
    "Kept",
    "Part",
    "Plan",
    "Target",
    "copy_batch",
    "make_plan",
    "plan_key",
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


def plan_key(values: Mapping[str, Tensor], size: int) -> Any:
    """What a plan depends on besides the rows and the state's device.

    Names, dtypes, shape classes (the leading dimension marked when it is
    the batch size) and devices: batches with the same key are valid or not
    alike, and become blocks alike.
    """
    forms = tuple((v.dtype, _shape_class(v, size), v.device) for v in values.values())
    return (tuple(values), forms)


def _shape_class(value: Tensor, size: int) -> tuple[Any, ...]:
    shape = tuple(value.shape)
    if shape and shape[0] == size:
        return ("batch", *shape[1:])
    return shape


def make_plan(
    values: Mapping[str, Tensor],
    size: int,
    *,
    label: str,
    rows: Mapping[str, tuple[Accumulator, int]],
    accumulator_for: Callable[[str], type[Accumulator]],
    device: torch.device | None,
) -> Plan:
    """Classify every value (raising the library's errors on a wrong one) and group them.

    A value must be a scalar or ``(B,)`` (any ``(B, ...)`` for a concatenation),
    of a dtype states hold (:data:`~torchtally._dtypes.DTYPES`), on the
    state's device.

    ``rows`` are the ledger's rows by name, ``device`` the device its state
    lives on (``None``: none yet). Names without a row give a plan for
    checking only (it targets nothing for them).
    """
    device = _device(values, device, label)
    keys: dict[tuple[torch.dtype, tuple[int, ...] | None], list[tuple[int, Any]]] = {}
    kept: list[Kept] = []
    scalar_totals = keeps_values = False
    for position, (name, value) in enumerate(values.items()):
        refuse_unheld(value.dtype, label, name)
        held = rows.get(name)
        cls = type(held[0]) if held is not None else accumulator_for(name)
        if issubclass(cls, Cat):
            _check_kept(name, value, size, held, label)
            keeps_values = True
            if held is not None:
                kept.append(Kept(position, held[0], held[1]))
            continue
        vector = value.ndim == 1 and value.shape[0] == size
        if not vector and value.numel() != 1:
            raise ResultShapeError(
                f"{label}: expected {name!r} to be a scalar or per-sample values of "
                f"shape ({size},) for a batch of {size}, found shape {tuple(value.shape)}"
                f"{_SIZE_FROM}"
            )
        if not vector and not cls.scalar_is_mean and cls.kind == "sum":
            scalar_totals = True
        # Vectors and scalars of at most one dimension share a record; odder scalars do not.
        odd = None if value.ndim <= 1 else tuple(value.shape)
        keys.setdefault((value.dtype, odd), []).append((position, None if vector else value.shape))
    names = list(values)
    groups = tuple(
        _group(dtype, odd is None, members, names, rows) for (dtype, odd), members in keys.items()
    )
    return Plan(tuple(names), groups, tuple(kept), device, scalar_totals, keeps_values)


_SIZE_FROM = (
    " (the batch size is the length of a per-sample weight= when one is given, else the "
    "targets' leading dimension)"
)


def _device(values: Mapping[str, Tensor], held: torch.device | None, label: str) -> torch.device:
    """The one device of the values and the state (0-d CPU tensors go anywhere)."""
    devices = {value.device for value in values.values() if value.ndim or value.is_cuda}
    if held is not None:
        devices.add(held)
    if len(devices) > 1:
        raise DeviceMismatchError(
            f"{label}: values arrived on several devices ({sorted(map(str, devices))}); "
            f"keep an objective's values on one device, or call .to(device) (or reset()) "
            f"before feeding values from another device"
        )
    return devices.pop() if devices else torch.device("cpu")


def _check_kept(
    name: str, value: Tensor, size: int, held: tuple[Accumulator, int] | None, label: str
) -> None:
    """A value to concatenate: a scalar or ``(B, ...)``, keeping its trailing shape."""
    if value.ndim and value.shape[0] != size:
        raise ResultShapeError(
            f"{label}: expected {name!r} to be a scalar or to have a leading "
            f"dimension of {size} for a batch of {size}, found shape {tuple(value.shape)}"
            f"{_SIZE_FROM}"
        )
    if held is None:
        return
    accumulator, row = held
    assert isinstance(accumulator, Cat)
    before = accumulator.trailing(row)
    found = tuple(value.shape[1:]) if value.ndim else ()
    if before is not None and before != found:
        raise ResultShapeError(
            f"{label}: {name!r} must keep its trailing shape {before} to be concatenated, "
            f"found {found}"
        )


def _group(
    dtype: torch.dtype,
    record: bool,
    members: list[tuple[int, Any]],
    names: list[str],
    rows: Mapping[str, tuple[Accumulator, int]],
) -> Group:
    """A group of values of one dtype: the vectors first, then the scalars.

    Each kind is laid out accumulator by accumulator and row by row, so that
    a part's lines for one accumulator are a range of its rows (folded
    through views, see ``Accumulator.add``), whatever order the batch has.
    """
    order: dict[int, int] = {}  # accumulators, in the order they first appear
    # An accumulator's rows are made in the order their names enter ``rows``, so a name's
    # place there orders its rows. A row index would do, but compiled with dynamic=True it is
    # a symbolic int, and dynamo cannot sort by one.
    made = {name: place for place, name in enumerate(rows)}

    def by_row(member: tuple[int, Any]) -> tuple[int, int]:
        name = names[member[0]]
        held = rows.get(name)
        if held is None:  # no row yet (a plan for checking only): keep the batch's order
            return (len(names), member[0])
        return (order.setdefault(id(held[0]), len(order)), made[name])

    ordered = sorted(members, key=by_row)
    vectors = [position for position, shape in ordered if shape is None]
    scalars = [(position, tuple(shape)) for position, shape in ordered if shape is not None]
    parts = [
        Part(kind, tuple(found), _targets([names[position] for position in found], rows))
        for kind, found in ((VECTOR, vectors), (SCALAR, [position for position, _ in scalars]))
        if found
    ]
    positions = [*vectors, *(position for position, _ in scalars)]
    return Group(
        dtype=dtype,
        members=tuple(positions),
        shapes=(*[None] * len(vectors), *(shape for _, shape in scalars)),
        record=record,
        everything=positions == list(range(len(names))),
        parts=tuple(parts),
    )


def _targets(names: list[str], rows: Mapping[str, tuple[Accumulator, int]]) -> tuple[Target, ...]:
    """The accumulator rows of a part's lines, accumulator by accumulator."""
    by_accumulator: dict[int, tuple[Accumulator, list[int], list[int]]] = {}
    for line, name in enumerate(names):
        held = rows.get(name)
        if held is None:  # not made yet: a plan for checking only, remade after add_names
            continue
        entry = by_accumulator.setdefault(id(held[0]), (held[0], [], []))
        entry[1].append(held[1])
        entry[2].append(line)
    return tuple(
        Target(
            accumulator,
            None if found == list(range(accumulator.rows)) else tuple(found),
            _lines(lines),
        )
        for accumulator, found, lines in by_accumulator.values()
    )


def _lines(positions: list[int]) -> slice | tuple[int, ...]:
    if positions == list(range(positions[0], positions[0] + len(positions))):
        return slice(positions[0], positions[0] + len(positions))
    return tuple(positions)

"""The state ledger of an objective: rows by name, accumulators, pending batches, views.

An objective's values live in :class:`~torchtally.aggregation.Accumulator`
rows, one per name, the rows of one accumulator class kept together. The
hot path (:meth:`Ledger.queue`) does the least it can per batch: it checks
the batch's values by their metadata and copies them into library-owned
blocks with one stacking operation per group of values (values of one
dtype and shape class); blocks are folded into the accumulators together
(:meth:`Ledger.flush`) once the queue holds :data:`PENDING_ELEMENTS` elements
or :data:`PENDING_BATCHES` batches, or when anything reads the state. The
state never shares storage with a tensor the user can reach, and what is
held between updates is bounded whatever the tensors the values view.

How a batch's values become blocks is worked out once per set of names
(a :class:`Plan`) and reused while the values keep their dtypes and shapes;
anything else takes the slow path, which validates every value, raises the
library's errors before changing anything, and plans again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from torchtally._conventions import Weight, as_value_tensor, check_name
from torchtally.aggregation import Accumulator, Cat, Mean
from torchtally.errors import (
    DeviceMismatchError,
    IncompatibleStateError,
    ResultShapeError,
    StateDictError,
    WeightError,
)

__all__ = ["PENDING_BATCHES", "PENDING_ELEMENTS", "Ledger", "Plan"]

PENDING_ELEMENTS = 1 << 18
"""At most this many elements (1 MiB of float32) are queued per group of values before a fold,
or one batch if it is larger. The buffers holding them are sized for
:data:`PENDING_BATCHES` batches of the first batch's size, within this bound, and reused."""

PENDING_BATCHES = 256
"""At most this many batches are queued before a fold."""

_F64 = torch.float64
_VECTOR, _SCALAR, _ROWS = "vector", "scalar", "rows"


@dataclass(frozen=True)
class Target:
    """Where some lines of a group's block go: rows of one accumulator."""

    accumulator: Accumulator
    rows: tuple[int, ...] | None  # None: every row of the accumulator, in order
    lines: slice | tuple[int, ...]  # the block's lines, as a slice when contiguous


@dataclass(frozen=True)
class Group:
    """Values stacked together in one operation: one dtype, one shape class."""

    shape: str  # 'vector' (B,), 'scalar' (0-d) or 'rows' (kept whole: Cat)
    dtype: torch.dtype
    members: tuple[int, ...]  # positions of the values in the batch
    flat: tuple[bool, ...]  # per member: a one-element tensor that is not 0-d
    everything: bool  # members are all the batch's values, in order
    targets: tuple[Target, ...]


@dataclass(frozen=True)
class Kept:
    """A value an accumulator keeps whole (a :class:`~torchtally.aggregation.Cat` row)."""

    position: int
    accumulator: Accumulator
    row: int


@dataclass(frozen=True)
class Plan:
    """How a batch with these names, dtypes and shapes becomes blocks."""

    names: tuple[str, ...]
    groups: tuple[Group, ...]  # queued, folded later
    kept: tuple[Kept, ...]  # added to their accumulator at once
    device: torch.device
    scalar_totals: bool  # some scalar is a batch total (a sum): weights cannot apply to it
    keeps_values: bool  # some value goes to a Cat (kept as it is: weights cannot apply to it)
    width: int = field(init=False)  # how many values a batch has
    simple: bool = field(init=False)  # one group of vectors, every value in order: fastest
    dtype: torch.dtype | None = field(init=False)  # the dtype of the first group

    def __post_init__(self) -> None:
        object.__setattr__(self, "width", len(self.names))
        object.__setattr__(self, "dtype", self.groups[0].dtype if self.groups else None)
        simple = len(self.groups) == 1 and self.groups[0].everything
        object.__setattr__(
            self, "simple", simple and not self.kept and self.groups[0].shape == _VECTOR
        )


def _lines(positions: list[int]) -> slice | tuple[int, ...]:
    if positions == list(range(positions[0], positions[0] + len(positions))):
        return slice(positions[0], positions[0] + len(positions))
    return tuple(positions)


class Ledger:
    """Rows by name over accumulators, the pending queue, and the synced and computed views.

    Args:
        label: how error messages name the objective.
        accumulator_for: the accumulator class of a name.
    """

    def __init__(self, label: str, accumulator_for: Callable[[str], type[Accumulator]]) -> None:
        self.label = label
        self._accumulator_for = accumulator_for
        self.rows: dict[str, tuple[Accumulator, int]] = {}
        self.accumulators: dict[type[Accumulator], Accumulator] = {}
        self.device: torch.device | None = None
        self.updated = False
        self.synced: dict[str, Tensor] | None = None
        self.computed: dict[str, Tensor] | None = None
        self._plan_in_use: Plan | None = None
        # The queue: per group of the plan in use, a flat buffer the objective owns, reused
        # across folds (no allocation per batch), and how many elements of it are used;
        # the queued batch sizes and weights, and per-sample weights once any batch had one.
        self._buffers: list[Tensor] = []
        self._used: list[int] = []
        self._sizes: list[int] = []
        self._weights: list[Weight] = []
        self._weighted = False
        self._sample_weights: Tensor | None = None
        self._capacity = 0
        self._recent: _Recent | None = None  # the last batches, once running values are asked for
        self.compiled = False  # whether batches were folded inside torch.compile
        self._slots: list[Tensor] = []  # views of the buffer, one per batch (the fastest path)
        self._slot_size = 0  # the batch size the slots are cut for; 0 while none are valid

    # -- names --------------------------------------------------------------------------------

    @property
    def names(self) -> tuple[str, ...]:
        """Every name with a row, in the order the rows were made."""
        return tuple(self.rows)

    def add_names(self, names: Sequence[str]) -> None:
        """Make a row for each new name (an accumulator of its class is made when needed)."""
        new = [check_name(name, self.label) for name in names if name not in self.rows]
        by_class: dict[type[Accumulator], list[str]] = {}
        for name in dict.fromkeys(new):
            by_class.setdefault(self._accumulator_for(name), []).append(name)
        if by_class:
            self.flush()  # queued blocks were planned against the rows as they are
        for cls, members in by_class.items():
            accumulator = self.accumulators.get(cls)
            if accumulator is None:
                accumulator = self.accumulators[cls] = cls(rows=0)
            first = accumulator.grow([f"{self.label} value {name!r}" for name in members])
            for offset, name in enumerate(members):
                self.rows[name] = (accumulator, first + offset)
            self._plan_in_use = None

    # -- the hot path -------------------------------------------------------------------------

    def queue(self, values: Mapping[str, Any], size: int, ordered: bool) -> bool:
        """Copy one unweighted batch of per-sample vectors into the queue, if it fits the plan.

        The fastest path: a few attribute reads per value and one copy. It
        applies when the plan in use has one group of per-sample vectors
        holding every value, in order. ``ordered`` promises that ``values``
        has the names of the plan in use, in its order (objectives built from
        callables know it); otherwise the names are compared. When it returns
        ``False`` nothing has changed and the caller takes :meth:`queue_checked`.
        """
        plan = self._plan_in_use
        if plan is None or not plan.simple or (not ordered and tuple(values) != plan.names):
            return False
        vals = [*values.values()]
        if len(vals) != plan.width:
            return False
        dtype = plan.dtype
        shape = (size,)
        grad = False
        for value in vals:
            if type(value) is not Tensor or value.dtype is not dtype or value.shape != shape:
                return False
            if value.requires_grad:
                grad = True
        # While this path runs the buffer holds batches of one length: slot k is the view of
        # batch k, made once (slicing a tensor costs as much as the copy itself).
        if size != self._slot_size and not self._slots_for(plan, size):
            return False
        sizes = self._sizes  # read after _slots_for: a fold starts a new list
        index = len(sizes)
        slots = self._slots
        try:
            if grad:
                with torch.no_grad():
                    torch.cat(vals, out=slots[index])
            else:
                torch.cat(vals, out=slots[index])
        except RuntimeError:  # another device: the checked path says so
            return False
        sizes.append(size)
        self.computed = None
        self.synced = None
        self.updated = True
        if index + 1 == len(slots):
            self.flush()
        return True

    def _slots_for(self, plan: Plan, size: int) -> bool:
        """Fold what is queued and cut the buffer into one view per batch of ``size``."""
        length = plan.width * size
        self.flush()
        if not self._buffers:
            return False
        if self._capacity < max(length, min(PENDING_BATCHES * length, PENDING_ELEMENTS)):
            self._allocate(plan, length)  # first cut for smaller batches: room for more
        buffer = self._buffers[0]
        count = min(self._capacity // length, PENDING_BATCHES)
        self._slots = [buffer[index * length : (index + 1) * length] for index in range(count)]
        self._slot_size = size
        return True

    def queue_checked(
        self, values: Mapping[str, Any], size: int, weight: Weight
    ) -> dict[str, Tensor]:
        """The slow path: check every value, plan, then queue; returns the values as tensors.

        Raises the library's errors (name, type, shape, device, weight)
        before anything changes.
        """
        returned = {
            name: as_value_tensor(value, self.label, name) for name, value in values.items()
        }
        for name in returned:
            check_name(name, self.label)
        plan = self._plan(returned, size)
        self._check_weight(plan, weight)
        tensors = [value.to(plan.device) for value in returned.values()]
        groups = [
            [
                tensors[position].reshape(()) if flat else tensors[position]
                for position, flat in zip(group.members, group.flat, strict=True)
            ]
            for group in plan.groups
        ]
        # Everything is checked: from here on the batch is committed.
        if any(name not in self.rows for name in returned):
            self.add_names(list(returned))
            plan = self._plan(returned, size)
        for item in plan.kept:
            value = tensors[item.position]
            item.accumulator.add(
                value.reshape(1, 1) if value.ndim == 0 else value.unsqueeze(0),
                rows=(item.row,),
                samples=size,
                droppable=value.ndim > 0,
            )
        self._commit(plan, groups, size, weight)
        return returned

    def check(self, values: Mapping[str, Any], size: int, weight: Weight) -> None:
        """Raise what :meth:`queue_checked` would raise for this batch, changing nothing."""
        returned = {
            name: as_value_tensor(value, self.label, name) for name, value in values.items()
        }
        for name in returned:
            check_name(name, self.label)
        self._check_weight(self._plan(returned, size), weight)

    def _commit(self, plan: Plan, groups: list[list[Tensor]], size: int, weight: Weight) -> None:
        """Copy one batch's checked values into the buffers of ``plan`` (folding first if full)."""
        self._count_slots()
        if plan is not self._plan_in_use:
            self.flush()
            self._plan_in_use = plan
            self._buffers = []
        lengths = [
            len(members) * (size if group.shape == _VECTOR else 1)
            for group, members in zip(plan.groups, groups, strict=True)
        ]
        if self._buffers and any(
            used + length > self._capacity for used, length in zip(self._used, lengths, strict=True)
        ):
            self.flush()
        if not self._buffers or max(lengths, default=0) > self._capacity:
            self._allocate(plan, max(lengths, default=0))
        with torch.no_grad():  # out= refuses autograd: the values are copied, detached
            for group, members, buffer, used, length in zip(
                plan.groups, groups, self._buffers, self._used, lengths, strict=True
            ):
                stack = torch.cat if group.shape == _VECTOR else torch.stack
                stack(members, out=buffer[used : used + length])
        if weight is not None or self._weighted:
            self._queue_weight(plan, size, weight)
        self._slot_size = 0  # the buffer may no longer hold batches of one size
        self._used = [used + length for used, length in zip(self._used, lengths, strict=True)]
        self._sizes.append(size)
        self.device = plan.device
        self.computed = None
        self.synced = None
        self.updated = True
        if len(self._sizes) >= PENDING_BATCHES:
            self.flush()

    def _allocate(self, plan: Plan, longest: int) -> None:
        """Buffers for ``plan``: room for PENDING_BATCHES batches like this one, within bounds."""
        self._capacity = max(min(PENDING_BATCHES * longest, PENDING_ELEMENTS), longest, 1024)
        self._buffers = [
            torch.empty(self._capacity, dtype=group.dtype, device=plan.device)
            for group in plan.groups
        ]
        self._used = [0] * len(self._buffers)
        self._sample_weights = None
        self._slots, self._slot_size = [], 0

    def _queue_weight(self, plan: Plan, size: int, weight: Weight) -> None:
        """Record a batch's weight, once any batch since the last fold has one.

        Scalar values take the batch's weight; per-sample values one weight
        per sample, kept in a float64 buffer (the batches queued before the
        first weight weigh 1 per sample).
        """
        if isinstance(weight, Tensor):
            weight = weight.detach().to(_F64, copy=True)
        queued = sum(self._sizes)
        if not self._weighted:
            self._weights = [None] * len(self._sizes)
        self._weights.append(weight)
        if any(group.shape == _VECTOR for group in plan.groups):
            held = self._sample_weights
            if held is None or held.numel() < queued + size:
                grown = torch.empty(
                    max(self._capacity, queued + size), dtype=_F64, device=plan.device
                )
                if held is not None and self._weighted:
                    grown[:queued] = held[:queued]
                self._sample_weights = held = grown
            if not self._weighted:
                held[:queued].fill_(1.0)
            part = held[queued : queued + size]
            if weight is None:
                part.fill_(1.0)
            elif isinstance(weight, Tensor) and weight.ndim == 1:
                part.copy_(weight)
            elif isinstance(weight, Tensor):  # a batch's total weight, shared by its samples
                part.copy_((weight / size).expand(size))
            else:
                part.fill_(weight / size)
        self._weighted = True

    def add_now(self, values: Mapping[str, Any], size: Any, weight: Weight) -> None:
        """Fold one batch straight into the accumulators (inside ``torch.compile``).

        No queue: the state tensors are updated in place, which dynamo traces
        into the graph; the plan is worked out from the values' metadata at
        trace time. Names must be known before the compiled region runs.
        """
        returned = {
            name: as_value_tensor(value, self.label, name) for name, value in values.items()
        }
        if any(name not in self.rows for name in returned):
            _register_outside_graph(self, list(returned))
        plan = self._plan(returned, size)
        self._check_weight(plan, weight)
        tensors = [value.to(plan.device) for value in returned.values()]
        for group in plan.groups:
            block = torch.stack(
                [
                    tensors[position].reshape(()) if flat else tensors[position]
                    for position, flat in zip(group.members, group.flat, strict=True)
                ]
            ).detach()
            if group.shape == _VECTOR:
                self._fold_vectors(group, block, _per_sample(weight, size, block.device), size)
            else:
                self._fold_scalars(group, block.unsqueeze(1), [size], [weight])
        for item in plan.kept:
            value = tensors[item.position]
            item.accumulator.add(
                value.reshape(1, 1) if value.ndim == 0 else value.unsqueeze(0),
                rows=(item.row,),
                samples=size,
                droppable=value.ndim > 0,
            )
        self.device = plan.device
        self.computed = None
        self.synced = None
        self.updated = True
        self.compiled = True

    def _check_weight(self, plan: Plan, weight: Weight) -> None:
        if weight is None:
            return
        if plan.scalar_totals:
            raise WeightError(
                f"{self.label}: a scalar summed value is a batch total and cannot be weighted; "
                f"return per-sample values to weight them, or leave weight= out"
            )
        if plan.keeps_values:
            raise WeightError(
                f"{self.label}: a 'cat' aggregation keeps every value as it is and cannot weight "
                f"them; leave weight= out"
            )
        if isinstance(weight, Tensor) and weight.device != plan.device:
            raise DeviceMismatchError(
                f"{self.label}: the weight is on {weight.device}, the values on {plan.device}"
            )

    def _plan(self, values: Mapping[str, Tensor], size: Any) -> Plan:
        """Classify every value (raising on a wrong one) and group them."""
        devices = {value.device for value in values.values() if value.ndim or value.is_cuda}
        if self.device is not None:
            devices.add(self.device)
        if len(devices) > 1:
            raise DeviceMismatchError(
                f"{self.label}: values arrived on several devices ({sorted(map(str, devices))}); "
                f"keep an objective's values on one device, or call .to(device) (or reset()) "
                f"before feeding values from another device"
            )
        device = devices.pop() if devices else torch.device("cpu")
        keys: dict[tuple[str, torch.dtype], list[tuple[int, bool]]] = {}
        kept: list[Kept] = []
        scalar_totals = keeps_values = False
        for position, (name, value) in enumerate(values.items()):
            held = self.rows.get(name)
            cls = type(held[0]) if held is not None else self._accumulator_for(name)
            if issubclass(cls, Cat):
                if value.ndim and value.shape[0] != size:
                    raise ResultShapeError(
                        f"{self.label}: expected {name!r} to be a scalar or to have a leading "
                        f"dimension of {size} for a batch of {size}, found shape "
                        f"{tuple(value.shape)}"
                    )
                keeps_values = True
                if held is not None:
                    self._check_trailing(name, value)
                    kept.append(Kept(position, held[0], held[1]))
                continue
            if value.ndim == 1 and value.shape[0] == size:
                shape, flat = _VECTOR, False
            elif value.numel() == 1:
                shape, flat = _SCALAR, value.ndim > 0
                if not cls.scalar_is_mean and cls.kind == "sum":
                    scalar_totals = True
            else:
                raise ResultShapeError(
                    f"{self.label}: expected {name!r} to be a scalar or per-sample values of "
                    f"shape ({size},) for a batch of {size}, found shape {tuple(value.shape)}"
                )
            keys.setdefault((shape, value.dtype), []).append((position, flat))
        names = list(values)
        groups = tuple(
            self._group(shape, dtype, members, names) for (shape, dtype), members in keys.items()
        )
        return Plan(tuple(names), groups, tuple(kept), device, scalar_totals, keeps_values)

    def _group(
        self, shape: str, dtype: torch.dtype, members: list[tuple[int, bool]], names: list[str]
    ) -> Group:
        by_accumulator: dict[int, tuple[Accumulator, list[int], list[int]]] = {}
        for line, (position, _) in enumerate(members):
            held = self.rows.get(names[position])
            if held is None:  # not made yet: a plan for checking only, remade after add_names
                continue
            entry = by_accumulator.setdefault(id(held[0]), (held[0], [], []))
            entry[1].append(held[1])
            entry[2].append(line)
        targets = tuple(
            Target(
                accumulator,
                None if rows == list(range(accumulator.rows)) else tuple(rows),
                _lines(lines),
            )
            for accumulator, rows, lines in by_accumulator.values()
        )
        positions = [position for position, _ in members]
        return Group(
            shape=shape,
            dtype=dtype,
            members=tuple(positions),
            flat=tuple(flat for _, flat in members),
            everything=positions == list(range(len(names))),
            targets=targets,
        )

    def _check_trailing(self, name: str, value: Tensor) -> None:
        accumulator, row = self.rows[name]
        assert isinstance(accumulator, Cat)
        held = accumulator.trailing(row)
        found = tuple(value.shape[1:]) if value.ndim else ()
        if held is not None and held != found:
            raise ResultShapeError(
                f"{self.label}: {name!r} must keep its trailing shape {held} to be concatenated, "
                f"found {found}"
            )

    # -- folding ------------------------------------------------------------------------------

    def _count_slots(self) -> None:
        """Bring ``_used`` up to date after the fastest path (which only counts batches)."""
        if self._slot_size and self._plan_in_use is not None:
            self._used = [len(self._sizes) * self._plan_in_use.width * self._slot_size]

    def flush(self) -> None:
        """Fold every queued batch into the accumulators."""
        plan = self._plan_in_use
        if not self._sizes or plan is None:
            return
        self._count_slots()
        queued = list(self._queued(plan))
        if self._recent is not None:
            self._recent.push(self._batch_means(queued))
        self._sizes, self._weights, self._weighted = [], [], False
        self._used = [0] * len(self._used)
        for group, values, weights, sizes in queued:
            if group.shape == _VECTOR:
                self._fold_vectors(group, values, weights, sum(sizes))
            else:
                self._fold_scalars(group, values, sizes, weights)

    def _queued(self, plan: Plan) -> Iterator[tuple[Group, Tensor, Any, list[int]]]:
        """The queued values, as views of the buffers (nothing is copied), group by group.

        For a group of per-sample values, one item per run of batches of one
        size ``B``: values ``(m, K, B)``, per-sample weights ``(K, B)`` or
        ``None``, and the ``K`` sizes. For a group of scalars: values ``(m, K)``,
        the batches' weights (a list) and sizes.
        """
        sizes = self._sizes
        weights: list[Weight] = self._weights if self._weighted else [None] * len(sizes)
        sample_weights = self._sample_weights if self._weighted else None
        for group, buffer, count in zip(plan.groups, self._buffers, self._used, strict=True):
            width = len(group.members)
            if group.shape != _VECTOR:
                yield group, buffer[:count].view(len(sizes), width).t(), weights, sizes
                continue
            offset = start = 0
            for size, batches in _runs(sizes):  # batches of one size view as (m, K, B)
                end = offset + batches * width * size
                values = buffer[offset:end].view(batches, width, size).transpose(0, 1)
                run_weights = None
                if sample_weights is not None:
                    run_weights = sample_weights[start : start + batches * size].view(batches, size)
                yield group, values, run_weights, [size] * batches
                offset, start = end, start + batches * size

    # -- the last batches (running values) ----------------------------------------------------

    def running(self, window: int) -> dict[str, Tensor]:
        """The mean of each mean-aggregated value over its last ``window`` batches.

        Batches are remembered from the first call on (and after a reset):
        ``window`` pairs of float64 numbers per name, on the values' device;
        nothing is read on the host and the epoch values are not touched.
        """
        if self._recent is None or self._recent.window != window:
            self._recent = _Recent(window)
        if self.compiled:
            raise RuntimeError(
                f"{self.label}: batches updated inside torch.compile are not kept for running "
                f"values; read them in eager steps, or use compute() for the epoch value"
            )
        plan = self._plan_in_use
        self._count_slots()
        newest = (
            self._batch_means(list(self._queued(plan))) if plan is not None and self._sizes else {}
        )
        return self._recent.means(newest)

    def _batch_means(self, queued: list[tuple[Group, Tensor, Any, list[int]]]) -> dict[str, Tensor]:
        """Every mean-aggregated name's per-batch ``(weighted sum, weight)``, ``(K, 2)`` float64."""
        found: dict[str, list[Tensor]] = {}
        for group, values, weights, sizes in queued:
            names = [self._plan_in_use.names[position] for position in group.members]  # type: ignore[union-attr]
            if group.shape == _VECTOR:
                wide = values.to(_F64) if weights is None else values.to(_F64) * weights
                sums = wide.sum(2)  # (m, K)
                batch = (
                    torch.tensor(sizes, dtype=_F64, device=values.device)
                    if weights is None
                    else weights.sum(1)
                )
            else:
                batch = _batch_weights(sizes, weights, values.device, True)
                assert batch is not None
                sums = values.to(_F64) * batch
            for line, name in enumerate(names):
                if type(self.rows[name][0]) is Mean:
                    pairs = torch.stack([sums[line], batch.expand_as(sums[line])], 1)
                    found.setdefault(name, []).append(pairs)
        return {name: torch.cat(parts) for name, parts in found.items()}

    def _fold_vectors(
        self, group: Group, values: Tensor, weights: Tensor | None, samples: Any
    ) -> None:
        """Fold per-sample values ``(m, ...)`` of a vector group (``weights``: one per sample)."""
        for target in group.targets:
            target.accumulator.add(
                _select(values, target.lines),
                weights,
                samples=samples,
                rows=target.rows,
                droppable=True,
            )

    def _fold_scalars(
        self, group: Group, values: Tensor, sizes: list[Any], weights: list[Weight]
    ) -> None:
        """Fold scalar values ``(m, K)``, one per batch, weighted as their accumulator says."""
        for target in group.targets:
            target.accumulator.add(
                _select(values, target.lines),
                _batch_weights(sizes, weights, values.device, target.accumulator.scalar_is_mean),
                samples=sum(sizes),
                rows=target.rows,
            )

    # -- reading ------------------------------------------------------------------------------

    def reduced(self) -> dict[str, Tensor]:
        """Every name's value (synced view if there is one), before an objective finalises it."""
        if self.synced is not None:
            return {name: value.clone() for name, value in self.synced.items()}
        self.flush()
        values = {cls: accumulator.reduce() for cls, accumulator in self.accumulators.items()}
        return {
            name: values[type(accumulator)][row] for name, (accumulator, row) in self.rows.items()
        }

    # -- lifecycle ----------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget every value (rows stay) and drop the views."""
        self._plan_in_use, self._buffers, self._used = None, [], []
        if self._recent is not None:
            self._recent = _Recent(self._recent.window)
        self.compiled = False
        self._sizes, self._weights, self._weighted = [], [], False
        self._sample_weights = None
        for accumulator in self.accumulators.values():
            accumulator.reset()
        self.device = None
        self.updated = False
        self.synced = None
        self.computed = None

    def to(self, device: torch.device | str) -> None:
        """Move the state and the views to ``device``."""
        self.flush()
        for accumulator in self.accumulators.values():
            accumulator.to(device)
        if self.synced is not None:
            self.synced = {name: value.to(device) for name, value in self.synced.items()}
        if self.device is not None:
            self.device = torch.device(device)
        self._plan_in_use = None
        self.computed = None

    def merge(self, other: Ledger) -> None:
        """Add ``other``'s state, name by name.

        Raises:
            IncompatibleStateError: a shared name is aggregated differently.
        """
        self.flush()
        other.flush()
        for name, (theirs, _) in other.rows.items():
            mine = self.rows.get(name)
            expected = type(mine[0]) if mine is not None else self._accumulator_for(name)
            if expected is not type(theirs):
                raise IncompatibleStateError(
                    f"{self.label}: cannot merge {name!r} aggregated as {theirs.kind!r} into "
                    f"{name!r} aggregated as {expected.kind!r}"
                )
        self.add_names(list(other.rows))
        for cls, accumulator in other.accumulators.items():
            names = [name for name, (held, _) in other.rows.items() if held is accumulator]
            self.accumulators[cls].merge(accumulator, [self.rows[name][1] for name in names])
        if other.device is not None and self.device is None:
            self.device = other.device
        self.updated = self.updated or other.updated
        self.synced = None
        self.computed = None

    # -- export and import --------------------------------------------------------------------

    def groups(self) -> list[tuple[Accumulator, list[str]]]:
        """Every accumulator with the names of its rows, in row order (the queue folded first)."""
        self.flush()
        found: list[tuple[Accumulator, list[str]]] = []
        for accumulator in self.accumulators.values():
            rows = [(row, name) for name, (held, row) in self.rows.items() if held is accumulator]
            found.append((accumulator, [name for _, name in sorted(rows)]))
        return found

    def export(self) -> tuple[dict[str, Any], list[Tensor]]:
        """The state as JSON-able metadata plus tensors (copies), accumulator by accumulator."""
        self.flush()
        parts: list[dict[str, Any]] = []
        tensors: list[Tensor] = []
        for accumulator in self.accumulators.values():
            meta, state = accumulator.export()
            names = [name for name, (held, _) in self.rows.items() if held is accumulator]
            parts.append({"names": names, "state": meta, "size": len(state)})
            tensors.extend(state)
        return {"names": list(self.rows), "updated": self.updated, "accumulators": parts}, tensors

    def imported(
        self, meta: Any, tensors: Sequence[Any], device: torch.device | str | None = None
    ) -> dict[type[Accumulator], tuple[Accumulator, list[str]]]:
        """Accumulators rebuilt from :meth:`export`'s output, checked against this ledger's rules.

        Nothing of this ledger changes. Raises :class:`StateDictError`.
        """
        if not isinstance(meta, Mapping) or not isinstance(meta.get("accumulators"), list):
            raise StateDictError(
                f"{self.label}: expected state metadata with an 'accumulators' list, found "
                f"{type(meta).__name__}"
            )
        rebuilt: dict[type[Accumulator], tuple[Accumulator, list[str]]] = {}
        offset = 0
        seen: set[str] = set()
        for part in meta["accumulators"]:
            names = part.get("names") if isinstance(part, Mapping) else None
            size = part.get("size") if isinstance(part, Mapping) else None
            if (
                not isinstance(names, list)
                or not isinstance(size, int)
                or isinstance(size, bool)
                or not 0 <= size <= len(tensors) - offset
            ):
                raise StateDictError(f"{self.label}: malformed accumulator entry {part!r:.120}")
            for name in names:
                check_name_state(name, self.label)
                if name in seen:
                    raise StateDictError(f"{self.label}: the name {name!r} appears twice")
                seen.add(name)
            classes = {self._accumulator_for(name) for name in names}
            kind = part["state"].get("kind") if isinstance(part.get("state"), Mapping) else None
            if len(classes) != 1 or next(iter(classes)).kind != kind:
                expected = {name: self._accumulator_for(name).kind for name in names}
                raise StateDictError(
                    f"{self.label}: the state aggregates {names} as {kind!r}, this objective as "
                    f"{expected}"
                )
            cls = classes.pop()
            accumulator = cls(rows=0)
            accumulator.load(part["state"], list(tensors[offset : offset + size]), device)
            if accumulator.rows != len(names):
                raise StateDictError(
                    f"{self.label}: the {kind!r} state holds {accumulator.rows} rows for "
                    f"{len(names)} names"
                )
            accumulator.labels = [f"{self.label} value {name!r}" for name in names]
            offset += size
            rebuilt[cls] = (accumulator, names)
        if offset != len(tensors):
            raise StateDictError(
                f"{self.label}: the state holds {len(tensors) - offset} tensors no accumulator uses"
            )
        return rebuilt

    def install(self, rebuilt: Mapping[type[Accumulator], tuple[Accumulator, list[str]]]) -> None:
        """Replace the state with accumulators from :meth:`imported` (which checked them)."""
        self.reset()
        names = [name for _, members in rebuilt.values() for name in members]
        self.add_names(names)
        for cls, (accumulator, members) in rebuilt.items():
            target = self.accumulators[cls]
            fresh = type(target)(rows=target.rows)
            fresh.labels = list(target.labels)
            fresh.merge(accumulator, [self.rows[name][1] for name in members])
            self.accumulators[cls] = fresh
            for name, (held, row) in list(self.rows.items()):
                if held is target:
                    self.rows[name] = (fresh, row)
            if fresh.device is not None:
                self.device = fresh.device
        self.updated = any(
            count > 0
            for accumulator in self.accumulators.values()
            for count in accumulator.samples()
        )

    def prepare_pickle(self) -> None:
        """Fold the queue and drop the plans, so copies and pickles carry state only."""
        self.flush()
        self._plan_in_use = None


@torch.compiler.disable  # type: ignore[untyped-decorator]
def _register_outside_graph(ledger: Ledger, names: list[str]) -> None:
    """Make rows for new names outside a compiled graph (a graph break, once)."""
    ledger.add_names(names)


def check_name_state(name: Any, label: str) -> str:
    """A name read from a state: a non-empty string, else :class:`StateDictError`."""
    if not isinstance(name, str) or not name:
        raise StateDictError(f"{label}: names in a state must be non-empty strings, found {name!r}")
    return name


def _select(block: Tensor, lines: slice | tuple[int, ...]) -> Tensor:
    if isinstance(lines, slice):
        return block if lines == slice(0, block.shape[0]) else block[lines]
    return block.index_select(0, torch.tensor(lines, device=block.device))


class _Recent:
    """The last ``window`` batches' ``(weighted sum, weight)`` of each name (a ring each)."""

    def __init__(self, window: int) -> None:
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"running values need a window of at least 1 batch, found {window!r}")
        self.window = window
        self.rings: dict[str, Tensor] = {}

    def push(self, batches: Mapping[str, Tensor]) -> None:
        for name, pairs in batches.items():
            held = self.rings.get(name)
            joined = pairs if held is None else torch.cat([held, pairs])
            self.rings[name] = joined[-self.window :].clone()  # bounded: window pairs

    def means(self, newest: Mapping[str, Tensor]) -> dict[str, Tensor]:
        result: dict[str, Tensor] = {}
        for name in {**self.rings, **newest}:
            parts = [part for part in (self.rings.get(name), newest.get(name)) if part is not None]
            last = torch.cat(parts)[-self.window :]
            totals = last.sum(0)
            result[name] = totals[0] / totals[1]
        return result


def _runs(sizes: list[int]) -> list[tuple[int, int]]:
    """``(size, count)`` of every run of equal consecutive batch sizes."""
    runs: list[tuple[int, int]] = []
    for size in sizes:
        if runs and runs[-1][0] == size:
            runs[-1] = (size, runs[-1][1] + 1)
        else:
            runs.append((size, 1))
    return runs


def _per_sample(weight: Weight, size: Any, device: torch.device) -> Tensor | None:
    """One float64 weight per sample of one batch (``None``: each weighs 1)."""
    if weight is None:
        return None
    if isinstance(weight, Tensor) and weight.ndim == 1:
        return weight.to(device, _F64)
    total = weight if isinstance(weight, Tensor) else torch.tensor(weight, dtype=_F64)
    spread: Tensor = (total.to(device, _F64) / size).expand(size)
    return spread


def _batch_weights(
    sizes: list[int], weights: list[Weight], device: torch.device, mean_like: bool
) -> Tensor | None:
    """One float64 weight per queued batch for scalar values.

    A batch mean weighs its batch size (or its weight); a batch total or an
    extremum candidate weighs 1 (or its weight: 0 excludes it).
    """
    if all(weight is None for weight in weights):
        if not mean_like:
            return None
        return torch.tensor(sizes, dtype=_F64, device=device)
    parts = []
    for size, weight in zip(sizes, weights, strict=True):
        if weight is None:
            parts.append(torch.tensor([size if mean_like else 1], dtype=_F64, device=device))
        elif isinstance(weight, Tensor):
            parts.append(weight.to(device, _F64).sum().reshape(1))
        else:
            parts.append(torch.tensor([weight], dtype=_F64, device=device))
    return torch.cat(parts)

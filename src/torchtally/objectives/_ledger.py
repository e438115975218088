"""The state ledger of an objective: rows by name, accumulators, pending batches, views.

An objective's values live in :class:`~torchtally.aggregation.Accumulator`
rows, one per name, the rows of one accumulator class kept together. The
hot path (:meth:`Ledger.queue`) does the least it can per batch: it compares
the values' metadata with the plan in use and copies them into buffers the
objective owns, one operation per dtype (per-sample vectors and scalars side
by side); the buffers are folded into the accumulators together
(:meth:`Ledger.flush`) once the queue holds :data:`PENDING_ELEMENTS` elements
or :data:`PENDING_BATCHES` batches, or when anything reads the state. The
state never shares storage with a tensor the user can reach, and what is
held between updates is bounded whatever the tensors the values view.

How a batch becomes blocks (a :class:`~._plan.Plan`) is worked out when a
batch of its kind (names, dtypes, shape classes, device) is first validated,
and kept: the slow path (:meth:`Ledger.queue_checked`) validates every value
and raises the library's errors before changing anything, but plans only
kinds of batches it has not seen since the rows last changed. So a stream
that mixes scalar batch means and per-sample vectors, or changes batch size,
is validated once, not batch by batch. Planning lives in :mod:`._plan`, the
buffers in :mod:`._queue`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from torchtally._conventions import Weight, as_value_tensor, check_name
from torchtally.aggregation import Accumulator, Mean
from torchtally.errors import (
    DeviceMismatchError,
    IncompatibleStateError,
    StateDictError,
    WeightError,
)
from torchtally.objectives._plan import (
    SCALAR,
    VECTOR,
    Part,
    Plan,
    copy_batch,
    make_plan,
    plan_key,
)
from torchtally.objectives._queue import (
    PENDING_BATCHES,
    PENDING_ELEMENTS,
    Queue,
    Queued,
    batch_weights,
    per_sample,
)
from torchtally.objectives._running import Recent, batch_means

__all__ = ["PENDING_BATCHES", "PENDING_ELEMENTS", "Ledger", "Plan"]

_F64 = torch.float64
# Leaving autograd around a copy without a context object, looked up once (the hot path).
_grad_enabled, _set_grad_enabled = torch.is_grad_enabled, torch._C._set_grad_enabled
_PLANS_KEPT = 32
"""Plans kept per ledger (kinds of batches seen since the rows last changed), then started over."""

PlanKey = tuple[Any, ...]


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
        self._plans: dict[PlanKey, Plan] = {}  # validated kinds of batches, for the rows as is
        self._pending = Queue()
        self._recent: Recent | None = None  # the last batches, once running values are asked for
        self.compiled = False  # whether batches were folded inside torch.compile

    # The queue's buffers, sizes and per-sample weights (what tests measure the memory bound on).
    @property
    def _buffers(self) -> list[Tensor]:
        return self._pending.buffers

    @property
    def _sizes(self) -> list[int]:
        return self._pending.sizes

    @property
    def _sample_weights(self) -> Tensor | None:
        return self._pending.sample_weights

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
        if not by_class:
            return
        self._forget_plans()  # they were made against the rows as they are
        for cls, members in by_class.items():
            accumulator = self.accumulators.get(cls)
            if accumulator is None:
                accumulator = self.accumulators[cls] = cls(rows=0)
            first = accumulator.grow([f"{self.label} value {name!r}" for name in members])
            for offset, name in enumerate(members):
                self.rows[name] = (accumulator, first + offset)

    def _forget_plans(self) -> None:
        """Fold what is queued and drop every plan (the rows, accumulators or device change)."""
        self.flush()
        self._plans.clear()
        self._pending.plan = None

    # -- the hot path -------------------------------------------------------------------------

    def queue(
        self, values: Mapping[str, Any], size: int, ordered: bool, weight: Weight = None
    ) -> bool:
        """Copy one batch into the queue if it matches the plan in use, without validating it.

        The fastest path, for any mix of per-sample vectors and scalars: a
        few metadata reads per value and one copy per group of values.
        ``ordered`` promises that ``values`` has the names of the plan in use,
        in its order (objectives built from callables know it); otherwise the
        names are compared. When it returns ``False`` nothing has changed and
        the caller takes :meth:`queue_checked`.
        """
        pending = self._pending
        plan = pending.plan
        if plan is None or (not ordered and tuple(values) != plan.names):
            return False
        vals = [*values.values()]
        forms = pending.forms if size == pending.cut else plan.forms_at(size)
        if forms is None or len(vals) != len(forms):
            return False
        # The values' metadata against the plan's, inline: this runs every batch (indexing,
        # not zip(..., strict=), which costs as much as the checks themselves).
        grad = False
        on_cpu, device = plan.on_cpu, plan.device
        for line, value in enumerate(vals):
            dtype, shape = forms[line]
            if (
                type(value) is not Tensor
                or value.dtype is not dtype
                or value.shape != shape
                or not (value.is_cpu if on_cpu else value.device == device)
            ):
                return False
            if value.requires_grad:
                grad = True
        if weight is not None and not self._weight_fits(plan, weight):
            return False  # the checked path says why
        index = len(pending.sizes)
        if size == pending.size and index < len(pending.slots):
            slot = pending.slots[index]  # a steady stream of one batch size: cut already
        else:
            slot = self._slot(plan, size)
        try:
            if grad and _grad_enabled():
                self._copy_detached(plan, vals, slot)
            else:
                copy_batch(plan.groups, vals, slot)
        except RuntimeError:  # a layout the metadata does not tell (sparse): not counted
            return False
        self._committed(size, weight)
        return True

    def queue_checked(
        self, values: Mapping[str, Any], size: int, weight: Weight
    ) -> dict[str, Tensor]:
        """The slow path: check every value, plan (or reuse a plan), then queue.

        Returns the values as tensors. Raises the library's errors (name,
        type, shape, device, weight) before anything changes.
        """
        if self.queue(values, size, False, weight):  # a kind of batch validated before
            return dict(values)
        returned = self._as_tensors(values)
        plan = self._plan_for(returned, size)
        self._check_weight(plan, weight)
        # Everything is checked: from here on the batch is committed.
        if any(name not in self.rows for name in returned):
            self.add_names(list(returned))
            plan = self._plan_for(returned, size)
        tensors = [value.to(plan.device) for value in returned.values()]
        self._copy(plan, tensors, self._slot(plan, size))  # not counted until committed
        self._keep(plan, tensors, size)
        self._committed(size, weight)
        return returned

    def check(self, values: Mapping[str, Any], size: int, weight: Weight) -> None:
        """Raise what :meth:`queue_checked` would raise for this batch, changing nothing."""
        returned = self._as_tensors(values)
        self._check_weight(self._plan_for(returned, size), weight)

    def _as_tensors(self, values: Mapping[str, Any]) -> dict[str, Tensor]:
        """The values as tensors, by checked name."""
        returned = {
            name: as_value_tensor(value, self.label, name) for name, value in values.items()
        }
        for name in returned:
            check_name(name, self.label)
        return returned

    def _slot(self, plan: Plan, size: int) -> tuple[Tensor, ...]:
        """Where the next batch of ``plan`` goes, folding first if it does not fit."""
        pending = self._pending
        if pending.plan is not plan or not pending.fits(size):
            self.flush()
        if not pending.sizes and (pending.plan is not plan or size != pending.size):
            pending.prepare(plan, size)
        self.device = plan.device
        return pending.slot(size)

    @staticmethod
    def _copy(plan: Plan, values: Sequence[Tensor], slot: tuple[Tensor, ...]) -> None:
        """Copy the values into the slot, detached (``out=`` refuses autograd)."""
        if _grad_enabled() and any(value.requires_grad for value in values):
            Ledger._copy_detached(plan, values, slot)
        else:
            copy_batch(plan.groups, values, slot)

    @staticmethod
    def _copy_detached(plan: Plan, values: Sequence[Tensor], slot: tuple[Tensor, ...]) -> None:
        _set_grad_enabled(False)  # out= refuses autograd
        try:
            copy_batch(plan.groups, values, slot)
        finally:
            _set_grad_enabled(True)

    def _committed(self, size: int, weight: Weight) -> None:
        """Count the batch just copied, drop the views it makes stale, fold when full."""
        self.computed = None
        self.synced = None
        self.updated = True
        pending = self._pending
        if weight is None and pending.size and not pending.weighted:  # the common case, inline
            sizes = pending.sizes
            sizes.append(size)
            full = len(sizes) >= pending.room
        else:
            full = pending.commit(size, weight)
        if full:
            self.flush()

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
            for part in group.parts:
                block = _stacked(part, tensors).detach()
                if part.kind == VECTOR:
                    self._fold_vectors(part, block, per_sample(weight, size, block.device), size)
                else:
                    self._fold_scalars(part, block.unsqueeze(1), [size], [weight])
        self._keep(plan, tensors, size)
        self.device = plan.device
        self.computed = None
        self.synced = None
        self.updated = True
        self.compiled = True

    @staticmethod
    def _keep(plan: Plan, tensors: Sequence[Tensor], size: Any) -> None:
        """Add the values concatenations keep whole to their accumulators."""
        for item in plan.kept:
            value = tensors[item.position]
            item.accumulator.add(
                value.reshape(1, 1) if value.ndim == 0 else value.unsqueeze(0),
                rows=(item.row,),
                samples=size,
                droppable=value.ndim > 0,
            )

    # -- planning -----------------------------------------------------------------------------

    def _plan_for(self, values: Mapping[str, Tensor], size: int) -> Plan:
        """The plan for a batch like this one: kept from an earlier batch, or made (validating)."""
        key = plan_key(values, size)
        plan = self._plans.get(key)
        if plan is None or (self.device is not None and plan.device != self.device):
            plan = self._plan(values, size)  # raises on a wrong value
            if all(name in self.rows for name in values):  # else a plan for checking only
                if len(self._plans) >= _PLANS_KEPT:
                    self._plans.clear()
                self._plans[key] = plan
        return plan

    def _plan(self, values: Mapping[str, Tensor], size: Any) -> Plan:
        """Classify every value (raising on a wrong one) and group them, for the rows as is."""
        return make_plan(
            values,
            size,
            label=self.label,
            rows=self.rows,
            accumulator_for=self._accumulator_for,
            device=self.device,
        )

    def _weight_fits(self, plan: Plan, weight: Weight) -> bool:
        """Whether ``weight`` may weigh a batch of ``plan`` (see :meth:`_check_weight`)."""
        if plan.scalar_totals or plan.keeps_values:
            return False
        return not isinstance(weight, Tensor) or weight.device == plan.device

    def _check_weight(self, plan: Plan, weight: Weight) -> None:
        """Raise unless ``weight`` may weigh a batch of ``plan``."""
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

    # -- folding ------------------------------------------------------------------------------

    def flush(self) -> None:
        """Fold every queued batch into the accumulators."""
        pending = self._pending
        if not pending.sizes:
            return
        queued = list(pending.items())
        if self._recent is not None:
            self._recent.push(self._batch_means(queued))
        pending.clear()  # the views in `queued` stay valid until the next batch is copied
        for part, values, weights, sizes in queued:
            if part.kind == VECTOR:
                self._fold_vectors(part, values, weights, sum(sizes))
            else:
                self._fold_scalars(part, values, sizes, weights)

    # -- the last batches (running values) ----------------------------------------------------

    def running(self, window: int) -> dict[str, Tensor]:
        """The mean of each mean-aggregated value over its last ``window`` batches.

        Batches are remembered from the first call on (and after a reset):
        ``window`` pairs of float64 numbers per name, on the values' device;
        nothing is read on the host and the epoch values are not touched.
        """
        if self._recent is None or self._recent.window != window:
            self._recent = Recent(window)
        if self.compiled:
            raise RuntimeError(
                f"{self.label}: batches updated inside torch.compile are not kept for running "
                f"values; read them in eager steps, or use compute() for the epoch value"
            )
        newest = self._batch_means(list(self._pending.items()))
        return self._recent.means(newest)

    def _batch_means(self, queued: list[Queued]) -> dict[str, Tensor]:
        """The queued batches' ``(weighted sum, weight)`` per mean-aggregated name."""
        plan = self._pending.plan
        if plan is None:
            return {}
        return batch_means(queued, plan.names, lambda name: type(self.rows[name][0]) is Mean)

    def _fold_vectors(
        self, part: Part, values: Tensor, weights: Tensor | None, samples: Any
    ) -> None:
        """Fold per-sample values ``(m, ...)`` (``weights``: one per sample)."""
        for target in part.targets:
            target.accumulator.add(
                _select(values, target.lines),
                weights,
                samples=samples,
                rows=target.rows,
                droppable=True,
            )

    def _fold_scalars(
        self, part: Part, values: Tensor, sizes: list[Any], weights: list[Weight]
    ) -> None:
        """Fold scalar values ``(m, K)``, one per batch, weighted as their accumulator says."""
        for target in part.targets:
            target.accumulator.add(
                _select(values, target.lines),
                batch_weights(sizes, weights, values.device, target.accumulator.scalar_is_mean),
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
        """Forget every value (rows stay) and drop the views; the queue's buffers are kept."""
        self._pending.clear()
        self._pending.plan = None
        self._plans.clear()  # the device and the concatenations' trailing shapes start over
        if self._recent is not None:
            self._recent = Recent(self._recent.window)
        self.compiled = False
        for accumulator in self.accumulators.values():
            accumulator.reset()
        self.device = None
        self.updated = False
        self.synced = None
        self.computed = None

    def to(self, device: torch.device | str) -> None:
        """Move the state and the views to ``device``."""
        self._forget_plans()
        self._pending.release()  # buffers on the old device
        for accumulator in self.accumulators.values():
            accumulator.to(device)
        if self.synced is not None:
            self.synced = {name: value.to(device) for name, value in self.synced.items()}
        if self.device is not None:
            self.device = torch.device(device)
        self.computed = None

    def merge(self, other: Ledger) -> None:
        """Add ``other``'s state, name by name.

        Raises:
            IncompatibleStateError: a shared name is aggregated differently.
        """
        self._forget_plans()  # concatenations' trailing shapes and the device may change
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
        self._forget_plans()  # they point at the accumulators just replaced
        self.updated = any(
            count > 0
            for accumulator in self.accumulators.values()
            for count in accumulator.samples()
        )

    def prepare_pickle(self) -> None:
        """Fold the queue and drop the plans and buffers, so copies and pickles carry state only."""
        self._forget_plans()
        self._pending.release()


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


def _stacked(part: Part, tensors: Sequence[Tensor]) -> Tensor:
    """A part's values of one batch stacked: ``(m, B)`` for vectors, ``(m,)`` for scalars."""
    members = [tensors[position] for position in part.members]
    if part.kind == SCALAR:
        members = [member.reshape(()) for member in members]
    return torch.stack(members)

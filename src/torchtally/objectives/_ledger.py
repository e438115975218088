"""The ledger of an objective: its rows behind a queue of pending batches, and the hot path.

The hot path (:meth:`Ledger.queue`) does the least it can per batch: it
compares the values' metadata with the plan in use and copies them into
buffers the objective owns, one operation per dtype (per-sample vectors and
scalars side by side); the buffers are folded into the accumulators
together (:meth:`Ledger.flush`) once the queue holds
:data:`PENDING_ELEMENTS` elements or :data:`PENDING_BATCHES` batches, or
when anything reads the state. The state never shares storage with a
tensor the user can reach, and what is held between updates is bounded
whatever the tensors the values view.

How a batch becomes blocks (a :class:`~._plan.Plan`) is worked out when a
batch of its kind (names, dtypes, shape classes, device) is first validated,
and kept: the slow path (:meth:`Ledger.queue_checked`) validates every value
and raises the library's errors before changing anything, but plans only
kinds of batches it has not seen since the rows last changed. So a stream
that mixes scalar batch means and per-sample vectors, or changes batch size,
is validated once, not batch by batch.

Modules below this one, each with one job: the rows and the state as a
whole (:mod:`._rows`, its format :mod:`._state_io`), planning
(:mod:`._plan`), the buffers (:mod:`._queue`), folding blocks into
accumulators (:mod:`._fold`), running values (:mod:`._running`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from torchtally._conventions import Weight, as_value_tensor, check_name
from torchtally.aggregation import Accumulator, Mean
from torchtally.errors import (
    CompileError,
    HookError,
    InvalidArgumentError,
)
from torchtally.objectives._fold import fold_now, fold_queued, keep
from torchtally.objectives._plan import Plan
from torchtally.objectives._planning import (
    check_weight,
    make_plan,
    plan_key,
    warn_scalar_weighted,
)
from torchtally.objectives._queue import PENDING_BATCHES, PENDING_ELEMENTS, Queue, Queued
from torchtally.objectives._rows import Rows
from torchtally.objectives._running import Recent, batch_means

__all__ = ["PENDING_BATCHES", "PENDING_ELEMENTS", "Ledger", "Plan"]

# Leaving autograd around a copy without a context object, looked up once (the hot path).
_grad_enabled, _set_grad_enabled = torch.is_grad_enabled, torch._C._set_grad_enabled
_PLANS_KEPT = 32
"""Plans kept per ledger (kinds of batches seen since the rows last changed), then started over."""

PlanKey = tuple[Any, ...]


class Ledger(Rows):
    """Rows by name over accumulators (see :class:`~._rows.Rows`) behind a pending queue.

    Args:
        label: how error messages name the objective.
        accumulator_for: the accumulator class of a name.
    """

    warned_scalar_weights = False  # whether ScalarWeightWarning was given (once per objective)

    def __init__(self, label: str, accumulator_for: Callable[[str], type[Accumulator]]) -> None:
        super().__init__(label, accumulator_for)
        self._plans: dict[PlanKey, Plan] = {}  # validated kinds of batches, for the rows as is
        self._pending = Queue()
        self._recent: Recent | None = None  # the last batches, once running values are asked for
        self.compiled = False  # whether batches were folded inside torch.compile
        self.closed = False  # no name besides the declared ones (the objective learns none)

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

    def _rows_changing(self) -> None:
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
        # The values' metadata against the plan's, inline: this runs every batch (zip without
        # strict=: the lengths are equal, and strict= costs as much as the checks themselves).
        grad = False
        on_cpu, device = plan.on_cpu, plan.device
        for value, (dtype, shape) in zip(vals, forms, strict=False):
            if (
                type(value) is not Tensor
                or value.dtype is not dtype
                or value.shape != shape
                or not (value.is_cpu if on_cpu else value.device == device)
            ):
                return False
            if value.requires_grad:
                grad = True
        sizes = pending.sizes
        index = len(sizes)
        if weight is None and size == pending.size and index < len(pending.slots):
            # A steady stream of one batch size, unweighted (the common case): the slot is cut
            # already and counting the batch is one append, all inline.
            slot = pending.slots[index]
            try:
                if grad and _grad_enabled():
                    self._copy_detached(plan, vals, slot)
                else:
                    plan.copy(vals, slot)
            except RuntimeError:  # a layout the metadata does not tell (sparse): not counted
                return False
            self.computed = self.synced = None
            self.updated = True
            if not pending.weighted:
                sizes.append(size)
                if index >= pending.room - 1:
                    self.flush()
                return True
            self._committed(size, weight)
            return True
        if weight is not None and not self._weight_fits(plan, weight):
            return False  # the checked path says why
        slot = self._slot(plan, size)
        try:
            self._copy(plan, vals, slot)
        except RuntimeError:  # as above
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
        check_weight(plan, weight, self.label)
        if plan.scalar_means and weight is not None:
            self._warn_scalar_weights(plan, weight)
        # Everything is checked: from here on the batch is committed.
        if any(name not in self.rows for name in returned):
            self.add_names(list(returned))
            plan = self._plan_for(returned, size)
        tensors = [value.to(plan.device) for value in returned.values()]
        self._copy(plan, tensors, self._slot(plan, size))  # not counted until committed
        keep(plan, tensors, size)
        self._committed(size, weight)
        return returned

    def check(self, values: Mapping[str, Any], size: int, weight: Weight) -> None:
        """Raise what :meth:`queue_checked` would raise for this batch, changing nothing."""
        returned = self._as_tensors(values)
        check_weight(self._plan_for(returned, size), weight, self.label)

    def _as_tensors(self, values: Mapping[str, Any]) -> dict[str, Tensor]:
        """The values as tensors, by checked name."""
        returned = {
            name: as_value_tensor(value, self.label, name) for name, value in values.items()
        }
        for name in returned:
            check_name(name, self.label)
            if self.closed and name not in self.rows:
                raise HookError(
                    f"{self.label}: calculate() returned {name!r}, which declared_names() does "
                    f"not declare {list(self.names)}, and learns_names is False; declare it, "
                    f"or let learns_names be True"
                )
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
            plan.copy(values, slot)

    @staticmethod
    def _copy_detached(plan: Plan, values: Sequence[Tensor], slot: tuple[Tensor, ...]) -> None:
        _set_grad_enabled(False)  # out= refuses autograd
        try:
            plan.copy(values, slot)
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
            if self.closed:  # new names are known at trace time: says which, outside the graph
                self._as_tensors(returned)
            _register_outside_graph(self, list(returned))
        plan = self._plan(returned, size)
        check_weight(plan, weight, self.label)
        tensors = [value.to(plan.device) for value in returned.values()]
        fold_now(plan, tensors, size, weight)
        keep(plan, tensors, size)
        if self.device != plan.device:  # read by the plan, so guarded: no store to replay
            self.device = plan.device
        self.computed = None
        self.synced = None
        self.updated = True
        self.compiled = True

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
        """Whether ``weight`` may weigh a batch of ``plan`` (see :func:`.check_weight`)."""
        if plan.scalar_means:
            self._warn_scalar_weights(plan, weight)
        if plan.scalar_totals or plan.keeps_values:
            return False
        return not isinstance(weight, Tensor) or weight.device == plan.device

    def _warn_scalar_weights(self, plan: Plan, weight: Weight) -> None:
        """Warn once when per-sample weights meet scalar batch means (they only sum there)."""
        if not self.warned_scalar_weights and isinstance(weight, Tensor) and weight.ndim:
            self.warned_scalar_weights = True
            warn_scalar_weighted(plan, self.label)

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
        fold_queued(queued)

    # -- the last batches (running values) ----------------------------------------------------

    def running(self, window: int) -> dict[str, Tensor]:
        """The mean of each mean-aggregated value over its last ``window`` batches.

        Batches are remembered from the first call on (and after a reset),
        with those still queued at that call: as many pairs of float64 numbers
        per name as the largest window asked for, on the values' device;
        nothing is read on the host and the epoch values are not touched.
        """
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise InvalidArgumentError(
                f"{self.label}: running values need a window of at least 1 batch (an int), "
                f"found {window!r}"
            )
        if self.compiled:  # before anything changes: a refused call changes nothing
            raise CompileError(
                f"{self.label}: batches updated inside torch.compile are not kept for running "
                f"values; read them in eager steps, or use compute() for the epoch value"
            )
        if self._recent is None:
            self._recent = Recent(window)
        self._recent.widen(window)  # another window reads the same batches (a bar and a log)
        newest = self._batch_means(list(self._pending.items()))
        return self._recent.means(newest, window)

    def _batch_means(self, queued: list[Queued]) -> dict[str, Tensor]:
        """The queued batches' ``(weighted sum, weight)`` per mean-aggregated name."""
        plan = self._pending.plan
        if plan is None:
            return {}
        return batch_means(queued, plan.names, lambda name: type(self.rows[name][0]) is Mean)

    # -- lifecycle ----------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget every value (rows stay) and drop the views; the queue's buffers are kept."""
        self._pending.clear()
        self._pending.plan = None
        self._plans.clear()  # the device and the concatenations' trailing shapes start over
        if self._recent is not None:
            self._recent = Recent(self._recent.window)
        self.compiled = False
        super().reset()

    def to(self, device: torch.device | str) -> None:
        """Move the state and the views to ``device``."""
        super().to(device)  # folds the queue first
        self._pending.release()  # buffers on the old device

    def prepare_pickle(self) -> None:
        """Fold the queue and drop the plans and buffers, so copies and pickles carry state only."""
        self._rows_changing()
        self._pending.release()


@torch.compiler.disable  # type: ignore[untyped-decorator]
def _register_outside_graph(ledger: Ledger, names: list[str]) -> None:
    """Make rows for new names outside a compiled graph (a graph break, once)."""
    ledger.add_names(names)

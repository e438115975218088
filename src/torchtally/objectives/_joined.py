"""``Joined``: objectives of any kind evaluated together, the result of ``a | b``.

``a | b`` between two objectives built from callables gives a
:class:`~torchtally.MetricCollection` (their entries, one ledger). Any other
pair (a hand-written :class:`~torchtally.Objective`, a ``tt.wrap`` result, a
torchmetrics or torcheval adapter, a wrapped stateful object, another
``Joined``) gives a :class:`Joined`:

- torchtally objectives among the parts are *templates*: their
  ``calculate``, aggregations, ``finalize`` and directions are used, and the
  state lives in the ``Joined`` itself (one ledger: one copy per batch, one
  sync participant, atomic updates). As for collections, the parts' own state
  is not carried over; use ``merge_state`` for that.
- every other part (an adapter, a wrapped stateful object) keeps its own
  state, and is updated, computed, reset, synced, merged, saved and moved with
  the rest. A batch one of them refuses after another took it leaves the join
  out of step (:class:`~torchtally._foreign.InStep`): it reports nothing until
  reset or loaded.

Each value's name may appear once: two parts reporting the same name are a
:class:`~torchtally.errors.NameConflictError` (at construction for names known
up front, at the first batch for names learnt from data).

A loss among the parts makes the result a loss: :func:`join` leaves such a
join to the loss (``LossBase.joined``, in the layer above), which returns a
``JoinedLoss`` (a ``Joined`` whose ``forward`` returns the loss's
differentiable value).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor
from typing_extensions import Self, override

from torchtally._conventions import (
    is_objective_like,
    merge_results,
    normalize_result,
    shared_weight_fn,
)
from torchtally._foreign import binds
from torchtally.aggregation import Accumulator
from torchtally.errors import (
    IncompatibleStateError,
    NameConflictError,
    StateDictError,
    UnsupportedObjectError,
    WeightError,
)
from torchtally.objectives._base import Objective, composites
from torchtally.objectives._joined_state import JoinedState

__all__ = ["Joined", "is_objective_like", "join"]


class Joined(JoinedState):
    """Several objectives of any kind, updated, computed, synced and saved as one.

    Build it with ``a | b`` (or :func:`join`); see the module documentation.

    Args:
        *parts: objectives (torchtally ones, adapters, wrapped objects, or
            anything with ``update``, ``compute`` and ``reset``).

    Raises:
        UnsupportedObjectError: a part is not an objective.
        NameConflictError: two parts declare the same name.
        WeightError: the torchtally parts have different ``weight=`` callables (one
            with a callable and one without included).

    Example:
        >>> import torch
        >>> import torchtally as tt
        >>> class Worst(tt.Objective[torch.Tensor, torch.Tensor]):
        ...     aggregation = 'max'
        ...     def calculate(self, outputs, targets):
        ...         return {'Worst': (outputs - targets).abs()}
        >>> both = Worst() | tt.Metric(lambda o, t: (o - t).abs(), 'MAE')
        >>> _ = both.update(torch.tensor([1.0, 4.0]), torch.zeros(2))
        >>> both.compute()
        {'Worst': tensor(4.), 'MAE': tensor(2.5000)}
    """

    def __init__(self, *parts: Any) -> None:
        flat: list[Any] = []
        for part in parts:
            flat.extend(part.parts if isinstance(part, Joined) else [part])
        for part in flat:
            if not is_objective_like(part):
                raise UnsupportedObjectError(
                    f"Joined: {type(part).__name__} {part!r:.60} is not an objective (it needs "
                    f"update, compute and reset); wrap foreign metrics with torchtally.wrap"
                )
        self._templates = [part for part in flat if isinstance(part, Objective)]
        self._kept = [part for part in flat if not isinstance(part, Objective)]
        for part in self._kept:  # else it would refuse every batch after the parts before it
            if not binds(part.update, 2):
                raise UnsupportedObjectError(
                    f"Joined: {type(part).__name__} {part!r:.60} cannot be called as "
                    f"update(outputs, targets), as a join calls its parts"
                )
        self._order = flat
        weight = shared_weight_fn((part._weight_fn for part in self._templates), "Joined")
        self._owners: dict[str, Objective[Any, Any]] = {}
        for template in self._templates:
            for name in template.declared_names():
                self._claim(name, template)
        self._refuse_reported_twice()
        super().__init__(weight=weight)

    def _claim(self, name: str, template: Objective[Any, Any]) -> None:
        owner = self._owners.setdefault(name, template)
        if owner is not template:
            mine, theirs = owner.reported_name(name), template.reported_name(name)
            reported = "" if mine == theirs else f" (reported as {mine!r} and {theirs!r})"
            raise NameConflictError(
                f"{self._label()}: {owner!r} and {template!r} both keep a value named "
                f"{name!r}{reported}, and a join keeps one value per name; give one of them "
                f"another name, or keep them apart (compute_metrics(a, b) logs both)"
            )

    def _refuse_reported_twice(self) -> None:
        """Refuse two declared names that ``compute()`` would report as one (a prefix's doing)."""
        seen: dict[str, str] = {}
        for name, owner in self._owners.items():
            reported = owner.reported_name(name)
            other = seen.setdefault(reported, name)
            if other != name:
                raise NameConflictError(
                    f"{self._label()}: {other!r} of {self._owners[other]!r} and {name!r} of "
                    f"{owner!r} are both reported as {reported!r}; give one of them another name"
                )

    @property
    def parts(self) -> tuple[Any, ...]:
        """The joined objectives, in the order they were written."""
        return tuple(self._order)

    @override
    def _label(self) -> str:
        parts = " | ".join(repr(part) for part in getattr(self, "_order", ()))
        text = f"{type(self).__name__}({parts})"
        return text if len(text) <= 160 else text[:157] + "..."

    # -- hooks, delegated to the part that owns each name -------------------------------------

    @override
    def declared_names(self) -> tuple[str, ...]:
        return tuple(self._owners)

    @property
    @override
    def learns_names(self) -> bool:
        return any(template.learns_names for template in self._templates)

    @override
    def accumulator_for(self, name: str) -> type[Accumulator]:
        return self._owner_of(name).accumulator_for(name)

    @override
    def _aggregated_names(self) -> tuple[str, ...]:
        return tuple(name for part in self._templates for name in part._aggregated_names())

    def _owner_of(self, name: str) -> Objective[Any, Any]:
        """The part that reports ``name`` (for a name not seen yet: the one part learning names)."""
        owner = self._owners.get(name)
        if owner is None:
            learning = [template for template in self._templates if template.learns_names]
            if len(learning) != 1:
                raise StateDictError(
                    f"{self._label()}: no part is known to report {name!r} (its name is learnt "
                    f"from data, and {len(learning)} parts learn names)"
                )
            owner = learning[0]
            self._claim(name, owner)
        return owner

    @property
    def reported_names(self) -> tuple[str, ...]:
        """The names ``compute()`` reports (each part's prefix applied), when all are known.

        Empty when a foreign part cannot tell its names before data.
        """
        if self._kept:
            return ()
        return tuple(self.reported_name(name) for name in self._owners)

    @override
    def higher_is_better_for(self, name: str) -> bool | None:
        for own, part in self._owners.items():  # the name as compute() reports it first
            if part.reported_name(own) == name:
                return part.higher_is_better_for(own)
        owner = self._owners.get(name)
        if owner is not None:
            return owner.higher_is_better_for(name)
        for part in self._kept:
            finder = getattr(part, "higher_is_better_for", None)
            if callable(finder):
                found = finder(name)
                if isinstance(found, bool):
                    return found
        return None

    @override
    def calculate(self, outputs: Any, targets: Any) -> dict[str, Tensor]:
        values: dict[str, Any] = {}
        for template in self._templates:
            produced = template.calculate(outputs, targets)
            for name in produced:
                if name in values:
                    raise NameConflictError(
                        f"{self._label()}: two parts reported a value named {name!r} for the "
                        f"same batch; give one of them another name"
                    )
                if name not in self._owners:
                    self._claim(name, template)
            values.update(produced)
        return values

    @override
    def reported_name(self, name: str) -> str:
        owner = self._owners.get(name)
        return name if owner is None else owner.reported_name(name)

    @override
    def finalize(self, values: dict[str, Tensor]) -> dict[str, Tensor]:
        result: dict[str, Tensor] = {}
        label = self._label()
        for template in self._templates:
            own = {
                name: value for name, value in values.items() if self._owner_of(name) is template
            }
            merge_results(result, template._finalized(label, own), label)
        return result

    # -- the lifecycle: the ledger for the templates, the kept parts beside it ----------------

    @override
    def update(self, outputs: Any, targets: Any, *, weight: Any = None) -> dict[str, Tensor]:
        values = self.calculate(outputs, targets)
        size, weight = self._batch(outputs, targets, weight)
        return self._record(outputs, targets, values, size, weight)

    def _record(
        self, outputs: Any, targets: Any, values: dict[str, Tensor], size: int, weight: Any
    ) -> dict[str, Tensor]:
        """Accumulate a calculated batch and give it to every kept part (see :meth:`update`).

        The batch is checked in full before any kept part sees it, and the
        torchtally parts keep it last. A kept part refusing it after another
        took it cannot be undone (that would need a copy of every state at
        every step): the join is then out of step (:class:`InStep`).
        """
        if not self._kept:
            return self._accumulate(values, size, weight, not self.learns_names)
        if weight is not None:
            raise WeightError(
                f"{self._label()}: {type(self._kept[0]).__name__} keeps its own state and cannot "
                f"weight batches; leave weight= out, or join only torchtally objectives"
            )
        if size:  # check this batch fully before any part keeps it
            self._ledger.check(values, size, weight)
        returned: dict[str, Tensor] = {}
        for index, part in enumerate(self._kept):
            try:
                produced = part.update(outputs, targets)
            except Exception as error:
                if index:
                    raise self._parted(index, repr(part), error) from error
                raise
            if isinstance(produced, Mapping):
                try:
                    merge_results(returned, produced, self._label())
                except Exception as error:
                    raise self._parted(index + 1, "a name reported twice", error) from error
        merge_results(returned, self._accumulate(values, size, weight, False), self._label())
        return returned

    def _parted(self, took: int, refused: str, error: Exception) -> Exception:
        return self.out_of_step(self._label(), [repr(p) for p in self._kept[:took]], refused, error)

    @override
    def compute(self) -> dict[str, Tensor]:
        self.check_in_step()
        result = super().compute() if self._templates else {}
        for part in self._kept:
            name = str(getattr(part, "name", type(part).__name__))
            merge_results(
                result, normalize_result(part.compute(), name, self._label()), self._label()
            )
        return result

    @override
    def reset(self) -> None:
        """Reset the parts keeping their own state first, then torchtally's.

        A first kept part whose reset raises changes nothing; a later one leaves the
        parts out of step (``MetricCallError`` both times).
        """
        for index, part in enumerate(self._kept):  # they may raise: before ours changes
            try:
                part.reset()
            except Exception as error:
                if index:
                    reset = ", ".join(f"{p!r:.60}" for p in self._kept[:index])
                    raise self.lost(
                        self._label(),
                        f"reset() of {part!r:.60} raised after {reset} were reset",
                        error,
                    ) from error
                raise
        super().reset()
        self.back_in_step()

    @override
    def merge_state(self, other: Self) -> None:
        """Add another join's updates to this one's: every part's, or none.

        The kept parts' merged states are prepared first (their
        ``merged_with``, which changes nothing), then the torchtally parts'
        state is merged (checked before it changes), then each kept part takes
        its merged state (``adopt_merged``).

        Raises:
            IncompatibleStateError: ``other`` is of another type or joins other
                parts, or a kept part cannot merge (a wrapped object keeping its
                own state); nothing changes then.
            MetricCallError: either join is out of step (:class:`InStep`).
        """
        if type(other) is not type(self) or len(other._kept) != len(self._kept):
            raise IncompatibleStateError(
                f"{self._label()}: cannot merge the state of {other!r:.160}, a join of other parts"
            )
        self.check_in_step()
        other.check_in_step()
        for part in self._kept:
            if not all(
                callable(getattr(part, hook, None)) for hook in ("merged_with", "adopt_merged")
            ):
                raise IncompatibleStateError(
                    f"{self._label()}: {part!r:.80} keeps its state inside the object, where "
                    f"torchtally cannot merge it; nothing was merged"
                )
        views = [
            mine.merged_with(theirs) for mine, theirs in zip(self._kept, other._kept, strict=True)
        ]
        super().merge_state(other)
        for part, view, theirs in zip(self._kept, views, other._kept, strict=True):
            part.adopt_merged(view, theirs)

    def sync_parts(self) -> tuple[Any, ...]:
        """What ``sync_all`` syncs for this object: its own state, then every kept part."""
        return (self, *self._kept)

    @override
    def sync_identity(self) -> dict[str, Any]:
        self.check_in_step()  # also refuses a sync and a merge_state, on every rank
        identity = super().sync_identity()
        identity["parts"] = [template.sync_identity() for template in self._templates]
        return identity

    @override
    def to(self, device: Any) -> Self:
        super().to(device)  # the device is checked there first: a refused move moves nothing
        for part in self._kept:
            if callable(getattr(part, "to", None)):
                part.to(device)
        return self


def join(*parts: Any) -> Joined:
    """Join objectives of any kind into one (what ``a | b`` does when it is not a collection).

    With a torchtally loss among the parts, the loss builds the result
    (``loss.joined(*parts)``), which is a loss: its ``forward`` returns the
    loss's differentiable value.

    Example:
        >>> import torch
        >>> import torchtally as tt
        >>> from torchtally.objectives import join
        >>> both = join(tt.wrap(lambda o, t: (o - t).abs().mean(), 'MAE'), tt.Metric(
        ...     lambda o, t: (o - t).pow(2), 'MSE'))
        >>> _ = both.update(torch.tensor([1.0, 3.0]), torch.zeros(2))
        >>> both.compute()
        {'MAE': tensor(2.), 'MSE': tensor(5.)}
    """
    for part in parts:
        if getattr(part, "is_loss", False) is True:
            # Losses live in the layer above and mark themselves: the loss keeps the result a loss.
            joined: Joined = part.joined(*parts)
            return joined
    return Joined(*parts)


composites.joined = Joined

"""Named callables, and the objective that evaluates a fixed set of them.

A callable of ``(outputs, targets)`` returns per-sample values of shape
``(B,)`` (preferred: exact weighting) or a scalar that is already a batch
mean; its name, direction and aggregation travel with it in a
:class:`NamedCallable`. :class:`CallableObjective` evaluates a set of them:
it is the base of ``Metric``, ``MetricCollection`` and the losses. Objectives
built from callables know their names before any data, so a process that saw
no batch still takes part in a sync.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from typing_extensions import override

from torchtally._conventions import (
    MetricFn,
    WeightFn,
    call_each,
    callable_error,
    check_direction,
    check_name,
    refuse_stateful_callable,
)
from torchtally._criteria import warn_if_self_weighted
from torchtally.aggregation import Accumulator, Cat, accumulator_class
from torchtally.errors import InvalidArgumentError, NameConflictError, ResultTypeError
from torchtally.objectives._base import Objective
from torchtally.objectives._holder import refuse_contradicting_aggregation
from torchtally.objectives._hooks import OutputT, TargetT
from torchtally.sync import callable_identity

_is_compiling = torch.compiler.is_compiling

__all__ = ["CallableObjective", "NamedCallable", "is_loss", "merge_named_callables"]


@dataclass(frozen=True)
class NamedCallable:
    """A callable of ``(outputs, targets)`` with the name and direction of its value.

    Attributes:
        name: the value's name.
        fn: the callable.
        higher_is_better: direction of the value (``None``: no direction).
        aggregation: accumulator kind (``'mean'``, ``'sum'``, ``'min'``, ``'max'``) or class.

    Example:
        >>> import torch
        >>> from torchtally.objectives import NamedCallable
        >>> entry = NamedCallable('MAE', lambda o, t: (o - t).abs(), higher_is_better=False)
        >>> entry.fn(torch.ones(2), torch.zeros(2))
        tensor([1., 1.])
    """

    name: str
    fn: MetricFn
    higher_is_better: bool | None = None
    aggregation: str | type[Accumulator] = "mean"

    def same_callable(self, other: NamedCallable) -> bool:
        """Whether both wrap the same callable."""
        return self.fn is other.fn or self.fn == other.fn


def merge_named_callables(
    first: Iterable[NamedCallable], second: Iterable[NamedCallable], owner: str
) -> dict[str, NamedCallable]:
    """The union of two sets of named callables, keyed by name.

    Raises:
        NameConflictError: one name is given to two different callables, or to
            one callable with another aggregation or direction.

    Example:
        >>> from torchtally.objectives import NamedCallable, merge_named_callables
        >>> def mae(o, t):
        ...     return (o - t).abs()
        >>> entry = NamedCallable('MAE', mae)
        >>> list(merge_named_callables([entry], [NamedCallable('MAE', mae)], 'x'))
        ['MAE']
    """
    merged: dict[str, NamedCallable] = {}
    for entry in (*first, *second):
        present = merged.get(entry.name)
        if present is None:
            merged[entry.name] = entry
        elif not present.same_callable(entry):
            raise NameConflictError(
                f"{owner}: the name {entry.name!r} is given to two different callables "
                f"({present.fn!r} and {entry.fn!r}); give one of them another name"
            )
        elif present != entry:  # one callable, other options: keeping one would drop the other's
            raise NameConflictError(
                f"{owner}: the name {entry.name!r} is given to one callable with other options "
                f"(aggregation {present.aggregation!r} and {entry.aggregation!r}, "
                f"higher_is_better {present.higher_is_better} and {entry.higher_is_better}); "
                f"give one of them another name"
            )
    return merged


class CallableObjective(Objective[OutputT, TargetT]):
    """An objective evaluating a fixed set of named callables (shared by metrics and losses).

    Args:
        entries: the named callables; one name per callable.
        weight: a callable of ``(outputs, targets)`` returning each batch's weight.

    Example:
        >>> import torch
        >>> from torchtally.objectives import CallableObjective, NamedCallable
        >>> both = CallableObjective([NamedCallable('Bias', lambda o, t: o - t)])
        >>> both.update(torch.tensor([1.0, 2.0]), torch.zeros(2))
        {'Bias': tensor([1., 2.])}
        >>> both.compute()
        {'Bias': tensor(1.5000)}
    """

    _entries: dict[str, NamedCallable]

    def __init__(
        self,
        entries: Iterable[NamedCallable],
        *,
        weight: WeightFn | None = None,
        multi: Iterable[MetricFn] = (),
    ) -> None:
        owner = type(self).__name__
        self._multi = tuple(multi)
        # calculate() returns the same names in the same order every batch: the queue may trust it.
        self._names_ordered: bool = not self._multi
        for fn in self._multi:
            refuse_stateful_callable(fn, f"{owner} (a positional argument)")
            if not callable(fn):
                raise InvalidArgumentError(
                    f"{owner}: a positional argument must be a callable of (outputs, targets) "
                    f"returning a dict of values by name, found {type(fn).__name__}"
                )
        self._entries = merge_named_callables(entries, (), owner)
        for entry in self._entries.values():
            check_name(entry.name, owner)
            refuse_stateful_callable(entry.fn, f"{owner} {entry.name!r}")
            if not callable(entry.fn):
                raise InvalidArgumentError(
                    f"{owner}: the value {entry.name!r} needs a callable of (outputs, targets), "
                    f"found {type(entry.fn).__name__}"
                )
            check_direction(entry.higher_is_better, f"{owner} value {entry.name!r}", optional=True)
            if issubclass(accumulator_class(entry.aggregation, f"{owner} {entry.name!r}"), Cat):
                raise InvalidArgumentError(
                    f"{owner}: {entry.name!r} cannot use the 'cat' aggregation: it reports every "
                    f"value, not an epoch value; subclass tt.Objective and finalize() them"
                )
        refuse_contradicting_aggregation(
            owner,
            self.aggregation,
            {name: entry.aggregation for name, entry in self._entries.items()},
        )
        self._calls = tuple((entry.name, entry.fn) for entry in self._entries.values())
        if weight is None:
            for name, fn in self._calls:
                warn_if_self_weighted(fn, f"{owner} {name!r}")
        super().__init__(weight=weight)

    @override
    def declared_names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    @property
    @override
    def learns_names(self) -> bool:
        return bool(self._multi)  # dict-valued callables name their values themselves

    @override
    def sync_identity(self) -> dict[str, Any]:
        identity = super().sync_identity()
        identity["callables"] = [callable_identity(fn) for _, fn in self._calls]
        identity["multi"] = [callable_identity(fn) for fn in getattr(self, "_multi", ())]
        return identity

    @override
    def accumulator_for(self, name: str) -> type[Accumulator]:
        entry = self._entries.get(name)
        if entry is None:  # learnt from data: the class attribute's (default: the mean)
            return super().accumulator_for(name)
        return accumulator_class(entry.aggregation, lambda: f"{self._label()} {name!r}")

    @override
    def higher_is_better_for(self, name: str) -> bool | None:
        entry = self._entries.get(name)
        return None if entry is None else entry.higher_is_better

    @override
    def calculate(self, outputs: OutputT, targets: TargetT) -> dict[str, Tensor]:
        values = call_each(self._calls, outputs, targets, self._ledger.label)
        for fn in self._multi:
            self._merge_produced(values, fn, outputs, targets)
        return values

    def _merge_produced(
        self, values: dict[str, Any], fn: MetricFn, outputs: Any, targets: Any
    ) -> None:
        """Add the values a dict-valued callable returns, refusing a name given twice."""
        label = self._ledger.label
        owner = getattr(fn, "__name__", type(fn).__name__)
        try:
            produced = fn(outputs, targets)
        except Exception as error:
            raise callable_error(label, owner, error) from error
        if not isinstance(produced, Mapping):
            raise ResultTypeError(
                f"{label}: the positional callable {owner} must return a dict of values by name, "
                f"found {type(produced).__name__}"
            )
        for key in produced:  # (names are checked once, when the ledger first plans them)
            if key in values:
                raise NameConflictError(
                    f"{label}: two callables returned a value named {key!r}; give one another name"
                )
        values.update(produced)

    @override
    def update(
        self, outputs: OutputT, targets: TargetT, *, weight: Any = None
    ) -> dict[str, Tensor]:
        values = self.calculate(outputs, targets)
        if self._queued_at_once(values, targets, weight):
            return values
        size, weight = self._batch(outputs, targets, weight)
        return self._accumulate(values, size, weight, self._names_ordered)

    def _queued_at_once(self, values: Any, targets: Any, weight: Any) -> bool:
        """Queue a batch of a kind validated before, by the shortest path; whether it was.

        The batch of nearly every training step: no weight, tensor targets
        (their leading dimension is the batch size), values matching the
        queue's plan (:meth:`~._ledger.Ledger.queue` checks their metadata).
        ``False``: nothing changed, and :meth:`_batch` and :meth:`_accumulate`
        take it (they check everything and raise the library's errors).
        """
        if (
            _is_compiling()  # first: what the others read would be guards of the compiled frame
            or weight is not None
            or type(targets) is not Tensor
            or self._weight_fn is not None
            or type(values) is not dict
        ):
            return False
        shape = targets.shape  # read once: each read builds a torch.Size
        if not (shape and shape[0]):  # an empty batch changes nothing: the full path says so
            return False
        return self._ledger.queue(values, shape[0], self._names_ordered)

    @property
    def entries(self) -> tuple[NamedCallable, ...]:
        """The named callables, in order."""
        return tuple(self._entries.values())

    @override
    def __or__(self, other: object) -> Objective[Any, Any]:
        """This objective and ``other`` as one (:class:`~torchtally.objectives.Joined`).

        A loss on either side is left to the loss (see ``LossBase.__ror__``);
        ``Metric`` and ``MetricCollection`` join into a new collection instead.
        """
        if is_loss(other) or is_loss(self):
            return NotImplemented
        return super().__or__(other)


def is_loss(objective: object) -> bool:
    """Whether ``objective`` is a loss (they live in the layer above, and mark themselves)."""
    return getattr(objective, "is_loss", False) is True

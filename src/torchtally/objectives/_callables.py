"""Objectives built from plain callables: ``Metric``, ``MetricCollection``, ``compute_metrics``.

A callable of ``(outputs, targets)`` returns per-sample values of shape
``(B,)`` (preferred: exact weighting) or a scalar that is already a batch
mean; its name, direction and aggregation travel with it in a
:class:`NamedCallable`. Objectives built from callables know their names
before any data, so a process that saw no batch still takes part in a sync.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from torch import Tensor
from typing_extensions import override

from torchtally._conventions import (
    MetricFn,
    WeightFn,
    callable_error,
    check_name,
    default_name,
)
from torchtally.aggregation import Accumulator, Cat, Mean, accumulator_class
from torchtally.errors import NameConflictError
from torchtally.objectives._base import Objective

__all__ = [
    "CallableObjective",
    "Metric",
    "MetricCollection",
    "NamedCallable",
    "compute_metrics",
    "merge_named_callables",
]

OutputT = TypeVar("OutputT")
TargetT = TypeVar("TargetT")


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
        NameConflictError: one name is given to two different callables.

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

    def __init__(self, entries: Iterable[NamedCallable], *, weight: WeightFn | None = None) -> None:
        owner = type(self).__name__
        self._entries = merge_named_callables(entries, (), owner)
        for entry in self._entries.values():
            check_name(entry.name, owner)
            if not callable(entry.fn):
                raise TypeError(
                    f"{owner}: the value {entry.name!r} needs a callable of (outputs, targets), "
                    f"found {type(entry.fn).__name__}"
                )
            if entry.higher_is_better is not None and not isinstance(entry.higher_is_better, bool):
                raise TypeError(
                    f"{owner}: higher_is_better of {entry.name!r} must be True, False or None, "
                    f"found {entry.higher_is_better!r}"
                )
            if issubclass(accumulator_class(entry.aggregation, f"{owner} {entry.name!r}"), Cat):
                raise ValueError(
                    f"{owner}: {entry.name!r} cannot use the 'cat' aggregation: it reports every "
                    f"value, not an epoch value; subclass tt.Objective and finalize() them"
                )
        self._calls = tuple((entry.name, entry.fn) for entry in self._entries.values())
        super().__init__(weight=weight)

    @override
    def declared_names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    @property
    @override
    def learns_names(self) -> bool:
        return False

    @override
    def accumulator_for(self, name: str) -> type[Accumulator]:
        entry = self._entries.get(name)
        if entry is None:
            return Mean
        return accumulator_class(entry.aggregation, lambda: f"{self._label()} {name!r}")

    @override
    def higher_is_better_for(self, name: str) -> bool | None:
        entry = self._entries.get(name)
        return None if entry is None else entry.higher_is_better

    @override
    def calculate(self, outputs: OutputT, targets: TargetT) -> dict[str, Tensor]:
        # One loop, one try: this runs every step. Python numbers are converted by update.
        values: dict[str, Any] = {}
        name = ""
        try:
            for name, fn in self._calls:
                values[name] = fn(outputs, targets)
        except Exception as error:
            raise callable_error(self._ledger.label, name, error) from error
        return values

    @override
    def update(
        self, outputs: OutputT, targets: TargetT, *, weight: Any = None
    ) -> dict[str, Tensor]:
        # calculate() returns the names in the same order every time: the queue may trust it.
        values = self.calculate(outputs, targets)
        size, weight = self._batch(outputs, targets, weight)
        return self._accumulate(values, size, weight, True)

    @property
    def entries(self) -> tuple[NamedCallable, ...]:
        """The named callables, in order."""
        return tuple(self._entries.values())

    def __or__(self, other: object) -> MetricCollection[Any, Any]:
        """A new collection with the entries of both (state is not carried over).

        A loss on the right makes the result a loss (see ``LossBase.__ror__``).
        """
        if not isinstance(other, CallableObjective) or _is_loss(other) or _is_loss(self):
            return NotImplemented
        return _collection(
            merge_named_callables(self.entries, other.entries, "MetricCollection").values()
        )


class MetricCollection(CallableObjective[OutputT, TargetT]):
    """Several metrics evaluated together, each under its own name.

    Args:
        **named_fns: callables of ``(outputs, targets)`` by name.

    Example:
        >>> import torch
        >>> import torchtally as tt
        >>> metrics = tt.MetricCollection(
        ...     MAE=lambda o, t: (o - t).abs(), Bias=lambda o, t: o - t)
        >>> _ = metrics.update(torch.tensor([1.0, 3.0]), torch.tensor([2.0, 2.0]))
        >>> metrics.compute()
        {'MAE': tensor(1.), 'Bias': tensor(0.)}
    """

    def __init__(self, **named_fns: MetricFn) -> None:
        super().__init__(NamedCallable(name, fn) for name, fn in named_fns.items())

    @classmethod
    def from_dict(
        cls, named_fns: Mapping[str, MetricFn], *, weight: WeightFn | None = None
    ) -> MetricCollection[Any, Any]:
        """A collection from a mapping of names to callables (names need not be identifiers).

        Args:
            named_fns: callables of ``(outputs, targets)`` by name.
            weight: a callable of ``(outputs, targets)`` returning each batch's weight.

        Example:
            >>> import torchtally as tt
            >>> tt.MetricCollection.from_dict({'Mean Error': lambda o, t: o - t}).names
            ('Mean Error',)
        """
        for name in named_fns:
            check_name(name, cls.__name__)
        return _collection((NamedCallable(name, fn) for name, fn in named_fns.items()), weight)

    @property
    def higher_is_better(self) -> dict[str, bool | None]:
        """Direction of each value by name."""
        return {name: entry.higher_is_better for name, entry in self._entries.items()}


class Metric(CallableObjective[OutputT, TargetT]):
    """One metric from a callable of ``(outputs, targets)``.

    The callable returns per-sample values of shape ``(B,)`` (preferred: exact
    weighting) or a scalar that is already a batch mean.

    Args:
        fn: the callable.
        name: the value's name (default: the callable's ``__name__``).
        higher_is_better: direction of the value (``None``: no direction).
        aggregation: ``'mean'`` (batch-weighted, default), ``'sum'``, ``'min'`` or ``'max'``.
        weight: a callable of ``(outputs, targets)`` returning each batch's weight.

    Example:
        >>> import torch
        >>> import torchtally as tt
        >>> from torch.nn.functional import mse_loss
        >>> mse = tt.Metric(mse_loss, name='MSE', higher_is_better=False)
        >>> _ = mse.update(torch.zeros(3), torch.ones(3))   # scalar mean over 3 samples
        >>> _ = mse.update(torch.zeros(1), 4 * torch.ones(1))
        >>> mse.compute()   # (3 * 1 + 1 * 16) / 4
        {'MSE': tensor(4.7500)}
    """

    def __init__(
        self,
        fn: MetricFn,
        name: str | None = None,
        higher_is_better: bool | None = None,
        *,
        aggregation: str | type[Accumulator] = "mean",
        weight: WeightFn | None = None,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"Metric: expected a callable of (outputs, targets), found {fn!r}")
        name = default_name(fn, "Metric") if name is None else check_name(name, "Metric")
        super().__init__((NamedCallable(name, fn, higher_is_better, aggregation),), weight=weight)

    @property
    def name(self) -> str:
        """The metric's name."""
        return next(iter(self._entries))

    @property
    def fn(self) -> MetricFn:
        """The metric's callable."""
        return next(iter(self._entries.values())).fn

    @property
    def higher_is_better(self) -> bool | None:
        """Direction of the metric (``None``: no direction)."""
        return next(iter(self._entries.values())).higher_is_better

    @override
    def _label(self) -> str:
        return f"Metric {next(iter(self._entries))!r}"


def _collection(
    entries: Iterable[NamedCallable], weight: WeightFn | None = None
) -> MetricCollection[Any, Any]:
    collection: MetricCollection[Any, Any] = MetricCollection.__new__(MetricCollection)
    CallableObjective.__init__(collection, entries, weight=weight)
    return collection


def _is_loss(objective: object) -> bool:
    # Losses live in the layer above; they mark themselves so that metric | loss defers to them.
    return getattr(objective, "is_loss", False) is True


def compute_metrics(objective: Any) -> dict[str, float]:
    """The computed values of any objective as plain Python floats, for loggers.

    Accepts torchtally objectives and foreign ones (torchmetrics, torcheval,
    anything with ``compute``) returning a tensor, a number or a dict of them.

    Example:
        >>> import torch
        >>> import torchtally as tt
        >>> metric = tt.Metric(lambda o, t: (o - t).abs(), 'MAE')
        >>> _ = metric.update(torch.tensor([1.0, 2.0]), torch.zeros(2))
        >>> tt.compute_metrics(metric)
        {'MAE': 1.5}
    """
    result = objective.compute()
    if isinstance(result, Mapping):
        return {str(name): float(value) for name, value in result.items()}
    name = getattr(objective, "name", None) or type(objective).__name__
    return {str(name): float(result)}

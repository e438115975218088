"""``CriterionCall``: a combined value from an arbitrary criterion over named components.

The arithmetic operators express weighted sums, products and powers; a
criterion they cannot express (``log``, ``clamp``, ``max``) is a callable of
the dict of component values. :class:`CriterionCall` evaluates every component
once per batch and then the criterion, and gives all of them by name, so that a
:class:`~torchtally.CompositionalLoss` built from it accumulates the criterion
(its combined value) and every component like any other loss.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from typing_extensions import override

from torchtally._conventions import MetricFn, call_each, callable_error
from torchtally.losses._evaluation import MultiCall
from torchtally.objectives import NamedCallable

__all__ = ["Criterion", "CriterionCall"]

Criterion = Callable[[dict[str, Any]], Any]
"""A callable of the dict of component values (by name) returning the combined value."""


class CriterionCall(MultiCall):
    """Evaluates named components once per batch, then a criterion of their values.

    :meth:`evaluate` returns the criterion's value under ``key`` followed by
    every component's value. Components are callables of ``(outputs,
    targets)`` returning per-sample ``(B,)`` values or scalar batch means; the
    criterion gets them in a dict and combines them (element-wise for
    per-sample values, to keep the combined value exact per sample).

    Args:
        criterion: callable of the dict of component values.
        key: the name of the criterion's value.
        components: the component callables by name.

    Example:
        >>> import torch
        >>> from torchtally.losses import CriterionCall
        >>> call = CriterionCall(lambda v: torch.log1p(v['MAE']), 'Log MAE',
        ...                      {'MAE': lambda o, t: (o - t).abs()})
        >>> call.evaluate(torch.tensor([0.0, 1.0]), torch.zeros(2), 'example')
        {'Log MAE': tensor([0.0000, 0.6931]), 'MAE': tensor([0., 1.])}
    """

    learns = False

    def __init__(self, criterion: Criterion, key: str, components: Mapping[str, MetricFn]) -> None:
        self.criterion = criterion
        self.key = key
        self.calls = tuple(components.items())
        self.declared = tuple(components)

    @property
    def entries(self) -> tuple[NamedCallable, ...]:
        """The components as named callables (without a direction), in order."""
        return tuple(NamedCallable(name, fn) for name, fn in self.calls)

    @override
    def callables(self) -> tuple[Any, ...]:
        return (self.criterion, *(fn for _, fn in self.calls))

    @override
    def evaluate(self, outputs: Any, targets: Any, owner: str) -> dict[str, Any]:
        """The criterion's value, then every component's, for one batch.

        Raises:
            MetricCallError: a component or the criterion raised.
        """
        values = call_each(self.calls, outputs, targets, owner)
        return {self.key: self.combine(values, owner), **values}

    def combine(self, values: Mapping[str, Any], owner: str) -> Any:
        """The criterion on the component values (a dict holding each component by name).

        Raises:
            MetricCallError: the criterion raised (a missing component, say).
        """
        try:
            return self.criterion(values if type(values) is dict else dict(values))
        except Exception as error:
            raise callable_error(owner, self.key, error) from error

    @override
    def complete(self, values: dict[str, Any], owner: str) -> None:
        """Set the criterion's value from the components' values when all are given."""
        if all(name in values for name in self.declared):
            values[self.key] = self.combine({name: values[name] for name in self.declared}, owner)

    def __repr__(self) -> str:
        name = getattr(self.criterion, "__name__", type(self.criterion).__name__)
        return f"CriterionCall({name}, {self.key!r}, {list(self.declared)})"

"""Objectives from elsewhere as operands of the loss algebra: :func:`as_loss`.

A loss expression combines losses. Besides torchtally's own, two kinds of
objects can become one of its components, each evaluated on the batch alone,
its values accumulated and reported like any component's:

- a ``tt.wrap()`` result wrapping a callable (a loss function, a stateless
  ``nn.Module`` such as ``nn.CrossEntropyLoss()``): the component is that
  callable, as if written ``tt.Loss(fn, name)``;
- a foreign loss: an objective with ``forward(outputs, targets)`` returning a
  differentiable batch value (a ``from_torchmetrics`` adapter, a torchmetrics
  metric): the component is the value ``forward`` returns for each batch on
  its own, computed by a private copy of the object that is reset before each
  batch (the object given keeps its own state untouched).

Anything else is refused with a :class:`~torchtally.errors.FormulaError` that
names the object and says why: metrics built from callables (``tt.Metric``,
collections) and hand-written objectives are metrics, tracked next to a loss
with ``|``; objects that keep their state and have no ``forward`` (torcheval
adapters, wrapped stateful objects) give no batch value; objects declaring
``is_differentiable = False`` (as torchmetrics' accuracy does) have no gradient.

:class:`LossOperand` gives such objects the arithmetic operators, so that
``ce + 0.1 * adapter`` reads as written.
"""

from __future__ import annotations

import contextlib
import copy
import weakref
from typing import Any

from torchtally._conventions import check_name
from torchtally.aggregation import Mean
from torchtally.errors import FormulaError
from torchtally.losses._algebra import check_direction
from torchtally.losses._base import LossBase
from torchtally.losses._kinds import Loss
from torchtally.losses._operators import builders
from torchtally.objectives import CallableObjective, Objective, is_objective_like

__all__ = ["BatchForward", "LossOperand", "as_loss"]

_BATCH_FORWARDS: weakref.WeakKeyDictionary[Any, BatchForward] = weakref.WeakKeyDictionary()
"""One :class:`BatchForward` per live object, so that an object used twice is one component."""


class BatchForward:
    """A foreign loss's value on each batch alone: a callable of ``(outputs, targets)``.

    It holds a copy of the object, made when it is built; each call returns
    what the copy's ``forward`` returns for the batch (differentiable where the
    object is) and resets the copy, so that between calls it keeps neither the
    batch nor its autograd graph (which would keep the batch's activations
    alive and make the loss impossible to copy). The object it was made from
    is never touched.

    Args:
        source: an objective with ``forward``, ``reset`` (and deep-copyable).

    Example:
        >>> import torch
        >>> import torchmetrics
        >>> from torchtally.losses import BatchForward
        >>> mse = torchmetrics.MeanSquaredError()
        >>> value = BatchForward(mse)
        >>> value(torch.zeros(2), torch.tensor([1.0, 3.0])), value(torch.zeros(1), torch.ones(1))
        (tensor(5.), tensor(1.))
    """

    def __init__(self, source: Any) -> None:
        self.blank = copy.deepcopy(source)
        self.blank.reset()
        self.held = copy.deepcopy(self.blank)
        # What processes that sync compare for this callable (see torchtally.sync): its source.
        self.__qualname__ = f"{type(self).__qualname__}[{source!r:.80}]"

    def __call__(self, outputs: Any, targets: Any) -> Any:
        """The object's ``forward`` on this batch alone."""
        held = self.held
        try:
            return held.forward(outputs, targets)
        finally:
            held.reset()  # only this batch: the copy keeps no state and no graph after it

    def __getstate__(self) -> dict[str, Any]:
        # Copies and pickles take the copy no batch has run through: a reset does not clear
        # everything a forward leaves behind (a torchmetrics CompositionalMetric keeps its
        # last differentiable value, and with it the batch's graph, which cannot be copied).
        return {"blank": self.blank, "__qualname__": self.__qualname__}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.held = copy.deepcopy(self.blank)

    def __repr__(self) -> str:
        return self.__qualname__


def as_loss(
    obj: Any, name: str | None = None, *, higher_is_better: bool | None = None
) -> LossBase[Any, Any]:
    """``obj`` as a loss, to combine with others (see the module documentation).

    Args:
        obj: a torchtally loss (returned as it is), a ``tt.wrap()`` result
            wrapping a callable, or a foreign objective with a differentiable
            ``forward`` (a ``from_torchmetrics`` adapter, say).
        name: the component's name (default: the object's ``name``, else its class name).
        higher_is_better: its direction (default: the object's, else ``False``,
            as for ``tt.Loss``).

    Returns:
        A :class:`~torchtally.Loss` over the object's batch values, with fresh state.

    Raises:
        FormulaError: ``obj`` cannot be a loss component (the message says why),
            or a name or direction is given for a torchtally loss.
        InvalidNameError: the name holds a bracket or is not a string.
        NameConflictError: the name is ``'Combined Loss'`` (a composition's:
            pass ``name=``).

    Example:
        >>> import torch
        >>> import torchtally as tt
        >>> from torchtally.losses import as_loss
        >>> def penalty(outputs, targets):
        ...     return outputs.pow(2).mean()
        >>> loss = tt.Loss(lambda o, t: (o - t).abs(), 'MAE') + 0.1 * as_loss(tt.wrap(penalty))
        >>> loss.formula
        '[MAE] + 0.1 x [penalty]'
        >>> loss(torch.tensor([1.0, 3.0]), torch.zeros(2))
        tensor(2.5000)
    """
    if isinstance(obj, LossBase):
        if name is not None or higher_is_better is not None:
            raise FormulaError(
                f"as_loss: {obj!r:.80} is already a loss; give its name and direction where it "
                f"is built"
            )
        return obj
    refusal = _refusal(obj)
    if refusal:
        raise FormulaError(f"{obj!r:.100} cannot be a loss component: {refusal}")
    if name is None:
        found = getattr(obj, "name", None)
        name = found if isinstance(found, str) else type(obj).__name__
    name = check_name(name, f"as_loss({type(obj).__name__})")
    if higher_is_better is None:
        higher_is_better = _direction(obj, name)
    direction = check_direction(higher_is_better, f"as_loss({name!r})", optional=False)
    assert direction is not None
    if isinstance(obj, Objective):  # a tt.wrap() result: its callable is the component
        weight = obj._weight_fn
        return Loss(obj.wrapped, name, direction, weight=weight)  # type: ignore[attr-defined]
    try:
        fn = _BATCH_FORWARDS[obj]
    except (KeyError, TypeError):  # TypeError: an object that cannot be weakly referenced
        fn = BatchForward(obj)
        with contextlib.suppress(TypeError):
            _BATCH_FORWARDS[obj] = fn
    return Loss(fn, name, direction)


def _refusal(obj: Any) -> str:
    """Why ``obj`` cannot be a loss component ('' when it can)."""
    if getattr(obj, "is_loss", False) is True:  # a loss joined with other objectives
        return (
            "it is a loss joined with other objectives; write the arithmetic on the losses, then "
            "join: (a + b) | metric"
        )
    if isinstance(obj, CallableObjective):
        return (
            "it is a metric; build the component with tt.Loss(fn, name), or to track a metric "
            "next to a loss use loss | metric"
        )
    if isinstance(obj, Objective):
        if not callable(getattr(obj, "wrapped", None)) or not isinstance(
            getattr(obj, "name", None), str
        ):
            return (
                "a hand-written objective is a metric; track it next to a loss with loss | "
                "objective, or build the component with tt.Loss(fn, name)"
            )
        name = obj.name  # type: ignore[attr-defined]
        kind = obj.accumulator_for(name).kind
        if kind != Mean.kind:
            return (
                f"it aggregates {name!r} by {kind!r}, and a loss component is a batch mean; wrap "
                f"the callable with the default aggregation"
            )
        return ""
    if not is_objective_like(obj):
        return "it is not an objective (a loss combines with losses, numbers and schedules)"
    if not callable(getattr(obj, "forward", None)):
        return (
            "it keeps its own state and has no forward() giving a batch value; track it next to "
            "a loss with loss | objective"
        )
    for holder in (obj, getattr(obj, "metric", None)):
        if getattr(holder, "is_differentiable", None) is False:
            return (
                f"{type(holder).__name__} declares is_differentiable=False (its value has no "
                f"gradient); track it next to a loss with loss | objective"
            )
    return ""


def _direction(obj: Any, name: str) -> bool:
    """The object's direction for ``name`` (``False``, as for ``tt.Loss``, when it has none)."""
    finder = getattr(obj, "higher_is_better_for", None)
    found = finder(name) if callable(finder) else getattr(obj, "higher_is_better", None)
    return found if isinstance(found, bool) else False


class LossOperand:
    """Arithmetic for objects that can be loss components: ``ce + 0.1 * adapter``.

    A class inheriting it gets ``+ - * / **`` and unary ``-``, with numbers,
    schedules and losses on either side; each turns the object into a loss
    with :func:`as_loss` first (a refused object raises its
    :class:`~torchtally.errors.FormulaError`).

    Example:
        >>> import torch
        >>> import torchmetrics
        >>> import torchtally as tt
        >>> from torchtally.contrib.torchmetrics import from_torchmetrics
        >>> mae = tt.Loss(lambda o, t: (o - t).abs(), 'MAE')
        >>> loss = mae + 0.5 * from_torchmetrics(torchmetrics.MeanSquaredError(), 'MSE')
        >>> loss.formula
        '[MAE] + 0.5 x [MSE]'
    """

    __slots__ = ()

    def __add__(self, other: object) -> LossBase[Any, Any]:
        return as_loss(self).__add__(other)

    def __radd__(self, other: object) -> LossBase[Any, Any]:
        return as_loss(self).__radd__(other)

    def __sub__(self, other: object) -> LossBase[Any, Any]:
        return as_loss(self).__sub__(other)

    def __rsub__(self, other: object) -> LossBase[Any, Any]:
        return as_loss(self).__rsub__(other)

    def __mul__(self, other: object) -> LossBase[Any, Any]:
        return as_loss(self).__mul__(other)

    def __rmul__(self, other: object) -> LossBase[Any, Any]:
        return as_loss(self).__rmul__(other)

    def __truediv__(self, other: object) -> LossBase[Any, Any]:
        return as_loss(self).__truediv__(other)

    def __rtruediv__(self, other: object) -> LossBase[Any, Any]:
        return as_loss(self).__rtruediv__(other)

    def __pow__(self, other: object) -> LossBase[Any, Any]:
        return as_loss(self).__pow__(other)

    def __rpow__(self, other: object) -> LossBase[Any, Any]:
        return as_loss(self).__rpow__(other)

    def __neg__(self) -> LossBase[Any, Any]:
        return as_loss(self).__neg__()


# What the loss operators build (see torchtally.losses._operators.Builders).
builders.as_loss = as_loss

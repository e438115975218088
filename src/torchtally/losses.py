"""Losses: objectives that are also training criteria, composed with arithmetic.

A loss is an objective (``update``, ``compute``, ``reset``, ``sync``,
``merge_state``, ``state_dict``, ``copy``, pickling all work as for metrics)
with a :meth:`LossBase.forward` that returns the differentiable value to
optimise. :class:`Loss` wraps one callable; ``+ - * / **``, unary ``-``,
numbers on either side and builtin ``sum`` compose losses into a
:class:`CompositionalLoss` whose :attr:`~LossBase.formula` reads like the
expression you wrote. :class:`DictLoss` wraps a callable that returns a dict
of values (the loss and the components it wants tracked).

Each component is evaluated once per batch and accumulated like a metric;
``compute()`` reports the combined value first, the formula evaluated on the
components' epoch values, then every component.

Example:
    >>> import torch
    >>> import torchtally as tt
    >>> from torch.nn.functional import mse_loss
    >>> def mae(outputs, targets):
    ...     return (outputs - targets).abs().flatten(1).mean(1)
    >>> loss = tt.Loss(mse_loss, 'MSE')**2 + 0.5 * tt.Loss(mae, 'MAE')
    >>> loss.formula
    '[MSE]^2 + 0.5 x [MAE]'
    >>> loss(torch.ones(1, 1), 3 * torch.ones(1, 1))
    tensor(17.)
    >>> loss.compute()
    {'Combined Loss': tensor(17.), 'MSE': tensor(4.), 'MAE': tensor(2.)}
"""

from __future__ import annotations

import math
import numbers
from abc import abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final, TypeVar

import torch
from torch import Tensor
from typing_extensions import Self, override

from torchtally.aggregation import Accumulator, ExportedState
from torchtally.errors import (
    FormulaError,
    IncompatibleStateError,
    NameConflictError,
    ResultTypeError,
    SyncError,
)
from torchtally.formula import (
    Component,
    Constant,
    Expression,
    Negation,
    Operation,
    compile_expression,
    component_names,
    direction,
    render,
)
from torchtally.objectives import (
    CallableObjective,
    MetricFn,
    NamedCallable,
    as_value_tensor,
    callable_error,
    default_name,
    merge_named_callables,
)

__all__ = [
    "COMBINED_NAME",
    "CompositionalLoss",
    "DictCall",
    "DictLoss",
    "Loss",
    "LossBase",
]

OutputT = TypeVar("OutputT")
TargetT = TypeVar("TargetT")

COMBINED_NAME: Final = "Combined Loss"
"""The name compositions report their combined value under (no component may use it)."""


@dataclass(frozen=True)
class DictCall:
    """The callable of a :class:`DictLoss`: calls ``fn`` and returns its values by name.

    With ``summed=False`` the callable returns a dict whose entry ``name`` is
    the loss. With ``summed=True`` it returns a dict, tuple or list of values
    (or a single value) and the loss is their sum, reported under ``name``
    next to each summand (sequence entries are named ``name_0``, ``name_1``, ...).

    Attributes:
        fn: the user's callable of ``(outputs, targets)``.
        name: the loss's name.
        summed: whether the loss is the sum of the returned values.

    Example:
        >>> import torch
        >>> from torchtally.losses import DictCall
        >>> call = DictCall(lambda o, t: (o.sum(), t.sum()), 'Loss', summed=True)
        >>> call.evaluate(torch.ones(2), torch.zeros(2), 'DictLoss [Loss]')
        {'Loss': tensor(2.), 'Loss_0': tensor(2.), 'Loss_1': tensor(0.)}
    """

    fn: MetricFn
    name: str
    summed: bool = False

    def __call__(self, outputs: Any, targets: Any) -> dict[str, Any]:
        """Same as :meth:`evaluate`, with errors naming the loss by its name."""
        return self.evaluate(outputs, targets, f"DictLoss {self.name!r}")

    def evaluate(self, outputs: Any, targets: Any, owner: str) -> dict[str, Any]:
        """Call ``fn`` and return its values by name (the loss included).

        Raises:
            MetricCallError: ``fn`` raised.
            ResultTypeError: the result is not a dict holding the loss
                (``summed=False``) or holds nothing to sum.
            NameConflictError: a summed dict has an entry named like the loss.
        """
        try:
            result = self.fn(outputs, targets)
        except Exception as error:
            raise callable_error(owner, self.name, error) from error
        if self.summed:
            return self._summed(result, owner)
        if not isinstance(result, Mapping):
            raise ResultTypeError(
                f"{owner}: the callable for {self.name!r} must return a dict of values "
                f"(DictLoss.summed sums tuples, lists and single values), found "
                f"{type(result).__name__}"
            )
        if self.name not in result:
            raise ResultTypeError(
                f"{owner}: the dict returned for {self.name!r} has no entry {self.name!r} "
                f"(the loss); found keys {sorted(map(str, result))}"
            )
        return result if type(result) is dict else dict(result)

    def _summed(self, result: Any, owner: str) -> dict[str, Any]:
        if isinstance(result, Mapping):
            values = dict(result)
            if self.name in values:
                raise NameConflictError(
                    f"{owner}: the summed dict has an entry named {self.name!r}, the name of "
                    f"the sum; give the loss another name"
                )
        elif isinstance(result, (tuple, list)):
            values = {f"{self.name}_{index}": value for index, value in enumerate(result)}
        else:  # a single value is the loss itself
            return {self.name: result}
        if not values:
            raise ResultTypeError(
                f"{owner}: the callable for {self.name!r} returned an empty "
                f"{type(result).__name__}; expected the values to sum"
            )
        summands = iter(values.values())
        total = next(summands)
        for value in summands:  # no 0 + ...: one operation fewer, and no int start value
            total = total + value
        return {self.name: total, **values}


# -- operands of the algebra ------------------------------------------------------------------


def _operand(value: object, loss: LossBase[Any, Any]) -> LossBase[Any, Any] | Constant:
    """A loss or a number as an operand; anything else is refused with its name."""
    if isinstance(value, LossBase):
        return value
    if not isinstance(value, bool) and isinstance(value, numbers.Real):
        number: int | float = int(value) if isinstance(value, numbers.Integral) else float(value)
        if not math.isfinite(number):
            raise FormulaError(
                f"{loss._label()}: a loss combines with finite constants, found {number!r}"
            )
        return Constant(number)
    hint = (
        "; to track a metric next to a loss use loss | metric"
        if isinstance(value, CallableObjective)
        else ""
    )
    raise FormulaError(
        f"{loss._label()}: cannot combine a loss with {type(value).__name__} "
        f"{value!r:.80}; a loss combines with int or float constants and other losses{hint}"
    )


def _tree(operand: LossBase[Any, Any] | Constant) -> Expression:
    return operand._expression if isinstance(operand, LossBase) else operand


def _parts(operand: LossBase[Any, Any] | Constant) -> tuple[tuple[NamedCallable, ...], ...]:
    if isinstance(operand, LossBase):
        return operand.components, operand.tracked
    return (), ()


def _compose(
    op: str, left: LossBase[Any, Any] | Constant, right: LossBase[Any, Any] | Constant
) -> CompositionalLoss[Any, Any]:
    left_components, left_tracked = _parts(left)
    right_components, right_tracked = _parts(right)
    return CompositionalLoss(
        Operation(op, _tree(left), _tree(right)),
        (*left_components, *right_components),
        (*left_tracked, *right_tracked),
    )


def _is_zero(value: object) -> bool:
    return type(value) in (int, float) and value == 0


# -- losses -----------------------------------------------------------------------------------


class LossBase(CallableObjective[OutputT, TargetT]):
    """Base class of losses: an expression over named component callables.

    A loss is built from an expression tree (see :mod:`torchtally.formula`),
    the component callables its leaves name and, optionally, tracked
    metrics that are evaluated and reported but not part of the formula.
    Everything an objective does works on it; :meth:`forward` (and calling
    the loss) also returns the differentiable criterion of the batch.

    Concrete losses: :class:`Loss`, :class:`CompositionalLoss`,
    :class:`DictLoss`. Arithmetic between losses and numbers returns a
    :class:`CompositionalLoss`; ``loss | metric`` returns a loss of the same
    kind that also tracks the metric.

    Args:
        expression: the expression tree; every leaf names a component.
        components: the callables of the leaves, keyed by their names.
        tracked: metrics evaluated with the loss but not part of the formula.

    Raises:
        FormulaError: the expression names no component or one without a
            callable, a callable is not in the expression, a component has
            no direction, or two operands point in opposite directions.
        NameConflictError: one name is given to two different callables, or
            a value is named ``'Combined Loss'``.

    Example:
        >>> import torch
        >>> import torchtally as tt
        >>> mse = tt.Loss(torch.nn.functional.mse_loss, 'MSE')
        >>> isinstance(mse, tt.LossBase), isinstance(mse, tt.Objective)
        (True, True)
    """

    is_loss: ClassVar[bool] = True
    """Marks losses, so that ``metric | loss`` is left to the loss (see ``CallableObjective``)."""

    def __init__(
        self,
        expression: Expression,
        components: Iterable[NamedCallable],
        tracked: Iterable[NamedCallable] = (),
    ) -> None:
        formula = render(expression)
        label = f"{type(self).__name__} {formula}"
        components = tuple(components)
        by_name = merge_named_callables(components, (), label)
        for entry in components:
            if entry.higher_is_better != by_name[entry.name].higher_is_better:
                raise NameConflictError(
                    f"{label}: the component {entry.name!r} is given both higher_is_better="
                    f"{by_name[entry.name].higher_is_better} and {entry.higher_is_better}"
                )
        tracked_by_name = merge_named_callables(tracked, (), label)
        merge_named_callables(by_name.values(), tracked_by_name.values(), label)  # conflicts
        names = component_names(expression)
        if not names:
            raise FormulaError(f"{label}: a loss expression needs at least one component")
        missing = [name for name in names if name not in by_name]
        unused = [name for name in by_name if name not in names]
        if missing or unused:
            raise FormulaError(
                f"{label}: the components must be the expression's leaves {list(names)}, "
                f"found callables for {list(by_name)}; pass metrics to track as tracked"
            )
        for name in (*by_name, *tracked_by_name):
            if name == COMBINED_NAME:
                raise NameConflictError(
                    f"{label}: the name {COMBINED_NAME!r} is reserved for the combined value of "
                    f"compositions; give the component another name"
                )
        directions: dict[str, bool] = {}
        for name in names:
            higher_is_better = by_name[name].higher_is_better
            if not isinstance(higher_is_better, bool):
                raise FormulaError(
                    f"{label}: the component {name!r} needs higher_is_better True or False to "
                    f"be part of a loss, found {higher_is_better!r}"
                )
            directions[name] = higher_is_better
        try:
            found = direction(expression, directions)
        except FormulaError as error:
            raise FormulaError(f"{type(self).__name__} {error}") from None
        assert found is not None  # an expression with a component has a direction
        # Everything the hot path needs is settled here, once.
        self._expression = expression
        self._formula = formula
        self._program = compile_expression(expression)
        self._higher_is_better: bool = found
        self._component_names = names
        self._tracked_names = tuple(name for name in tracked_by_name if name not in by_name)
        self._extra_names: tuple[str, ...] = ()
        super().__init__(
            [
                *(by_name[name] for name in names),
                *(tracked_by_name[name] for name in self._tracked_names),
            ]
        )
        multi: list[DictCall] = []
        for entry in self._entries.values():
            if isinstance(entry.fn, DictCall):
                multi.append(entry.fn)
        self._multi_calls = tuple(multi)
        self._calls = tuple(call for call in self._calls if not isinstance(call[1], DictCall))

    # -- description --------------------------------------------------------------------------

    @property
    @abstractmethod
    def name(self) -> str:
        """The name ``compute()`` reports the loss's value under."""

    @property
    def formula(self) -> str:
        """The expression, written with the fewest parentheses that keep its meaning.

        Example:
            >>> import torchtally as tt
            >>> a = tt.Loss(lambda o, t: o - t, 'A')
            >>> b = tt.Loss(lambda o, t: o + t, 'B')
            >>> (-(a + b)).formula
            '-([A] + [B])'
        """
        return self._formula

    @property
    def expression(self) -> Expression:
        """The expression tree (frozen dataclasses from :mod:`torchtally.formula`)."""
        return self._expression

    @property
    def higher_is_better(self) -> bool:
        """Whether a higher value of the loss is better (``False`` for ordinary losses)."""
        return self._higher_is_better

    @property
    def components(self) -> tuple[NamedCallable, ...]:
        """The named callables of the formula's leaves, in the order they are written."""
        return tuple(self._entries[name] for name in self._component_names)

    @property
    def tracked(self) -> tuple[NamedCallable, ...]:
        """The metrics evaluated and reported with the loss but not part of its formula."""
        return tuple(self._entries[name] for name in self._tracked_names)

    @override
    def higher_is_better_for(self, name: str) -> bool | None:
        if name == self.name:
            return self._higher_is_better
        return super().higher_is_better_for(name)

    @override
    def _label(self) -> str:
        return f"{type(self).__name__} {self._formula}"

    @override
    def __repr__(self) -> str:
        tracked = f", tracking {list(self._tracked_names)}" if self._tracked_names else ""
        return f"{type(self).__name__}({self._formula}{tracked})"

    # -- the hot path -------------------------------------------------------------------------

    @override
    def calculate(self, outputs: OutputT, targets: TargetT) -> dict[str, Tensor]:
        """Every component's (and tracked metric's) value for the batch, each callable once."""
        values = super().calculate(outputs, targets)
        for call in self._multi_calls:
            produced = call.evaluate(outputs, targets, self._owner)
            if not values.keys().isdisjoint(produced):
                raise NameConflictError(
                    f"{self._owner}: the dict returned for {call.name!r} has entries named like "
                    f"other values of the loss: {sorted(values.keys() & produced.keys())}"
                )
            values.update(produced)
        return values

    def forward(self, outputs: OutputT, targets: TargetT) -> Tensor:
        """The batch's differentiable loss; the components are accumulated (detached).

        Every component callable is evaluated once. The value is the batch
        mean of the formula evaluated on the component values: per-sample
        ``(B,)`` values combine element-wise and scalars broadcast.

        Args:
            outputs: the model's outputs.
            targets: the batch's targets.

        Returns:
            A differentiable scalar tensor.

        Example:
            >>> import torch
            >>> import torchtally as tt
            >>> loss = 2 * tt.Loss(lambda o, t: (o - t).abs(), 'MAE')
            >>> outputs = torch.tensor([1.0, -1.0], requires_grad=True)
            >>> value = loss.forward(outputs, torch.zeros(2))
            >>> value.backward()
            >>> value.item(), outputs.grad
            (2.0, tensor([ 1., -1.]))
        """
        values = self.calculate(outputs, targets)
        try:
            detached = {name: value.detach() for name, value in values.items()}
        except AttributeError:  # a callable returned a Python number (or worse: this says so)
            values = {
                name: as_value_tensor(value, self._owner, name) for name, value in values.items()
            }
            detached = {name: value.detach() for name, value in values.items()}
        self._accumulate(detached, outputs, targets)
        loss: Tensor = self._program.run(values)
        return loss.mean() if loss.ndim else loss

    def __call__(self, outputs: OutputT, targets: TargetT) -> Tensor:
        """Same as :meth:`forward`."""
        return self.forward(outputs, targets)

    # -- epoch values -------------------------------------------------------------------------

    @override
    def _compute(self, reduced: dict[str, Tensor]) -> dict[str, Tensor]:
        try:
            combined: Tensor = self._program.run(reduced)
        except KeyError:  # a sync in which no process had data leaves no component state
            combined = torch.tensor(float("nan"))
        result = {self.name: combined}
        for name in self._component_names:
            if name in reduced:
                result[name] = reduced[name]
        tracked = set(self._tracked_names)
        for name, value in reduced.items():  # a DictLoss's other entries, then the metrics
            if name not in tracked:
                result.setdefault(name, value)
        for name in self._tracked_names:
            if name in reduced:
                result[name] = reduced[name]
        return result

    @override
    def _declared_names(self) -> tuple[str, ...]:
        return (*self._entries, *self._extra_names)

    @override
    def _new_accumulator(self, name: str) -> Accumulator:
        if name == COMBINED_NAME:
            raise NameConflictError(
                f"{self._label()}: the name {COMBINED_NAME!r} is reserved for the combined value "
                f"of compositions; the callables returned a value under it"
            )
        accumulator = super()._new_accumulator(name)
        if name not in self._entries:  # a DictLoss entry, known from its first batch on
            self._extra_names = (*self._extra_names, name)
        return accumulator

    @override
    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Replace the state with one from :meth:`state_dict`.

        A :class:`DictLoss` learns the names of its dict's entries from the
        state, so a freshly built one can be restored before any batch.

        Example:
            >>> import torch
            >>> import torchtally as tt
            >>> loss = tt.DictLoss(lambda o, t: {'Loss': (o - t).abs(), 'Bias': o - t}, 'Loss')
            >>> _ = loss(torch.ones(2), torch.zeros(2))
            >>> fresh = tt.DictLoss(loss.fn, 'Loss')
            >>> fresh.load_state_dict(loss.state_dict())
            >>> fresh.compute()
            {'Loss': tensor(1.), 'Bias': tensor(1.)}
        """
        stored = state_dict.get("accumulators") if isinstance(state_dict, Mapping) else None
        if self._multi_calls and isinstance(stored, Mapping):
            for name in stored:
                if name not in self._accumulators:
                    self._new_accumulator(name)
        super().load_state_dict(state_dict)

    @override
    def merge_state(self, other: Self) -> None:
        """Add the state of another instance of the same loss (same formula)."""
        if isinstance(other, LossBase) and other._formula != self._formula:
            raise IncompatibleStateError(
                f"{self._label()}: cannot merge the state of a loss with another formula "
                f"({other._formula})"
            )
        super().merge_state(other)

    @override
    def _sync_export(self) -> ExportedState:
        meta, tensors = super()._sync_export()
        if self._multi_calls and not tensors:
            # Without data, a DictLoss may not know its entries yet: take part as knowing none.
            meta, tensors = {"names": {}}, []
        return {**meta, "formula": self._formula}, tensors

    @override
    def _sync_prepare(self, states: list[ExportedState]) -> dict[str, Accumulator]:
        # Same components under another formula would sync silently into different
        # combined values on each rank: refuse, naming every rank's formula.
        formulas = [meta.get("formula") for meta, _ in states]
        if len(set(formulas)) > 1:
            found = "; ".join(f"rank {index}: {formula}" for index, formula in enumerate(formulas))
            raise SyncError(f"{type(self).__name__}: processes sync different formulas ({found})")
        return super()._sync_prepare(states)

    # -- algebra ------------------------------------------------------------------------------

    def _derive(self, tracked: Iterable[NamedCallable] | None = None) -> Self:
        """The same loss (same class and formula) with fresh state and, maybe, other metrics."""
        derived = type(self).__new__(type(self))
        LossBase.__init__(
            derived,
            self._expression,
            self.components,
            self.tracked if tracked is None else tracked,
        )
        return derived

    def __add__(self, other: LossBase[Any, Any] | float) -> LossBase[Any, Any]:
        if _is_zero(other):  # sum() starts from 0: 0 + loss is the loss
            return self._derive()
        return _compose("+", self, _operand(other, self))

    def __radd__(self, other: LossBase[Any, Any] | float) -> LossBase[Any, Any]:
        if _is_zero(other):
            return self._derive()
        return _compose("+", _operand(other, self), self)

    def __sub__(self, other: LossBase[Any, Any] | float) -> CompositionalLoss[Any, Any]:
        return _compose("-", self, _operand(other, self))

    def __rsub__(self, other: LossBase[Any, Any] | float) -> CompositionalLoss[Any, Any]:
        return _compose("-", _operand(other, self), self)

    def __mul__(self, other: LossBase[Any, Any] | float) -> CompositionalLoss[Any, Any]:
        return _compose("*", self, _operand(other, self))

    def __rmul__(self, other: LossBase[Any, Any] | float) -> CompositionalLoss[Any, Any]:
        return _compose("*", _operand(other, self), self)

    def __truediv__(self, other: LossBase[Any, Any] | float) -> CompositionalLoss[Any, Any]:
        return _compose("/", self, _operand(other, self))

    def __rtruediv__(self, other: LossBase[Any, Any] | float) -> CompositionalLoss[Any, Any]:
        return _compose("/", _operand(other, self), self)

    def __pow__(self, other: LossBase[Any, Any] | float) -> CompositionalLoss[Any, Any]:
        return _compose("**", self, _operand(other, self))

    def __rpow__(self, other: LossBase[Any, Any] | float) -> CompositionalLoss[Any, Any]:
        return _compose("**", _operand(other, self), self)

    def __neg__(self) -> CompositionalLoss[Any, Any]:
        return CompositionalLoss(Negation(self._expression), self.components, self.tracked)

    def __or__(self, other: object) -> LossBase[Any, Any]:  # type: ignore[override]
        """A loss of the same kind that also tracks ``other``'s metrics (fresh state).

        ``loss | loss`` is refused: combine losses with arithmetic instead.
        """
        tracking = self._track(other, before=False)
        return NotImplemented if tracking is None else tracking

    def __ror__(self, other: object) -> LossBase[Any, Any]:
        tracking = self._track(other, before=True)
        return NotImplemented if tracking is None else tracking

    def _track(self, other: object, *, before: bool) -> LossBase[Any, Any] | None:
        """``self`` also tracking ``other``'s metrics, listed in the order they were written."""
        if getattr(other, "is_loss", False) is True:
            formula = getattr(other, "formula", type(other).__name__)
            raise FormulaError(
                f"{self._label()}: '|' tracks metrics next to a loss, and {formula} is a loss; "
                f"combine losses with arithmetic (for example {self._formula} + {formula})"
            )
        if not isinstance(other, CallableObjective):
            return None
        if before:
            return self._derive((*other.entries, *self.tracked))
        return self._derive((*self.tracked, *other.entries))


class Loss(LossBase[OutputT, TargetT]):
    """A loss from one callable of ``(outputs, targets)``; its formula is ``[name]``.

    The callable returns per-sample values of shape ``(B,)`` or a scalar
    batch mean (``torch.nn.functional.mse_loss`` with its default reduction,
    say). The same callable is the training criterion and the metric.

    Args:
        fn: the callable.
        name: the loss's name (default: the callable's ``__name__``).
        higher_is_better: ``False`` (default) for ordinary losses; ``True``
            for a value to maximise (a reward, a log-likelihood).

    Raises:
        NameConflictError: the name is ``'Combined Loss'``.

    Example:
        >>> import torch
        >>> import torchtally as tt
        >>> mse = tt.Loss(torch.nn.functional.mse_loss, 'MSE')
        >>> mse(torch.zeros(3), torch.ones(3))
        tensor(1.)
        >>> mse, mse.compute()
        (Loss([MSE]), {'MSE': tensor(1.)})
    """

    def __init__(
        self, fn: MetricFn, name: str | None = None, higher_is_better: bool = False
    ) -> None:
        if not callable(fn):
            raise TypeError(f"Loss: expected a callable of (outputs, targets), found {fn!r}")
        name = default_name(fn, "Loss") if name is None else name
        super().__init__(Component(name), (NamedCallable(name, fn, higher_is_better),))

    @property
    @override
    def name(self) -> str:
        return self._component_names[0]

    @property
    def fn(self) -> MetricFn:
        """The loss's callable."""
        return self._entries[self.name].fn


class CompositionalLoss(LossBase[OutputT, TargetT]):
    """A loss combining other losses and numbers; built by arithmetic on losses.

    ``compute()`` reports the combined value under ``'Combined Loss'`` (the
    formula evaluated on the components' epoch values), then every
    component, then the tracked metrics. For a sum of mean-reduced losses the
    combined value equals the loss over the concatenated data.

    Args:
        expression: the expression tree (see :mod:`torchtally.formula`).
        components: the callables of its leaves.
        tracked: metrics evaluated and reported with the loss, outside the formula.

    Example:
        >>> import torch
        >>> import torchtally as tt
        >>> def error(o, t):
        ...     return (o - t).abs()
        >>> def accuracy(o, t):
        ...     return (o.round() == t).float()
        >>> hits = tt.Loss(accuracy, 'Accuracy', higher_is_better=True)
        >>> loss = tt.Loss(error, 'Error') - 0.1 * hits
        >>> loss
        CompositionalLoss([Error] - 0.1 x [Accuracy])
        >>> try:
        ...     loss + hits
        ... except tt.errors.FormulaError as error:
        ...     print(error)  # doctest: +ELLIPSIS
        CompositionalLoss [Error] - 0.1 x [Accuracy] + [Accuracy]: cannot add [Error] - ...
    """

    @property
    @override
    def name(self) -> str:
        return COMBINED_NAME


class DictLoss(LossBase[OutputT, TargetT]):
    """A loss from a callable returning a dict: the entry ``name`` is the loss.

    The other entries are tracked and reported after the loss (their names
    are learnt from the first batch, or from a loaded state; they have no
    direction). :meth:`summed` builds a loss that is the sum of every
    returned value instead.

    Args:
        fn: callable of ``(outputs, targets)`` returning a dict of tensors or numbers.
        name: the entry holding the loss.
        higher_is_better: direction of the loss (``False``: lower is better).

    Example:
        >>> import torch
        >>> import torchtally as tt
        >>> def detection(outputs, targets):
        ...     error = (outputs - targets).abs()
        ...     return {'Loss': error.mean(1), 'Worst': error.amax(1)}
        >>> loss = tt.DictLoss(detection, 'Loss')
        >>> loss(torch.tensor([[1.0, 3.0]]), torch.zeros(1, 2))
        tensor(2.)
        >>> loss.compute()
        {'Loss': tensor(2.), 'Worst': tensor(3.)}
    """

    def __init__(self, fn: MetricFn, name: str, higher_is_better: bool = False) -> None:
        if not callable(fn):
            raise TypeError(f"DictLoss: expected a callable of (outputs, targets), found {fn!r}")
        call = DictCall(fn, name)
        super().__init__(Component(name), (NamedCallable(name, call, higher_is_better),))

    @classmethod
    def summed(
        cls, fn: MetricFn, name: str | None = None, higher_is_better: bool = False
    ) -> DictLoss[Any, Any]:
        """A loss that is the sum of the values ``fn`` returns, each one tracked.

        ``fn`` returns a dict (each entry tracked under its key), a tuple or
        list (entries named ``name_0``, ``name_1``, ...) or a single value.

        Args:
            fn: callable of ``(outputs, targets)``.
            name: the sum's name (default: the callable's ``__name__``).
            higher_is_better: direction of the loss.

        Example:
            >>> import torch
            >>> import torchtally as tt
            >>> def parts(outputs, targets):
            ...     return {'cls_loss': (outputs - targets).abs(), 'box_loss': torch.tensor(0.5)}
            >>> loss = tt.DictLoss.summed(parts, 'Loss')
            >>> loss(torch.ones(2), torch.zeros(2))
            tensor(1.5000)
            >>> loss.compute()
            {'Loss': tensor(1.5000), 'cls_loss': tensor(1.), 'box_loss': tensor(0.5000)}
        """
        if not callable(fn):
            raise TypeError(f"DictLoss: expected a callable of (outputs, targets), found {fn!r}")
        name = default_name(fn, "DictLoss") if name is None else name
        loss: DictLoss[Any, Any] = cls.__new__(cls)
        call = DictCall(fn, name, summed=True)
        LossBase.__init__(loss, Component(name), (NamedCallable(name, call, higher_is_better),))
        return loss

    @property
    @override
    def name(self) -> str:
        return self._component_names[0]

    @property
    def fn(self) -> MetricFn:
        """The user's callable."""
        call = self._entries[self.name].fn
        assert isinstance(call, DictCall)
        return call.fn

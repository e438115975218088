"""``LossBase`` and ``CompositionalLoss``: objectives that are also training criteria.

A loss is an expression over named component callables. Every component is
evaluated once per batch and accumulated like a metric; the criterion (the
expression evaluated on the batch's component values, per sample) is what
``forward`` returns as a batch mean, and what a composition accumulates
under its own name, so that its epoch value is the exact mean of what was
optimised. Arithmetic on losses builds a :class:`CompositionalLoss` in
constant time per operator; its formula, compiled program and state are
made on first use.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor
from typing_extensions import Self, override

from torchtally._conventions import WeightFn, callable_error, check_name
from torchtally._lazy import lazy
from torchtally.errors import (
    FormulaError,
    IncompatibleStateError,
    NameConflictError,
    StateDictError,
)
from torchtally.formula import (
    Component,
    Expression,
    Negation,
    Operation,
    Program,
    combine_directions,
    compile_expression,
    component_names,
    direction,
    render,
)
from torchtally.losses._algebra import (
    COMBINED_NAME,
    ComponentTable,
    check_loss_name,
    constant_or_schedule,
)
from torchtally.losses._evaluation import MultiCall, Produced, batch_value, criterion
from torchtally.objectives import CallableObjective, NamedCallable, merge_named_callables
from torchtally.sync import callable_identity

__all__ = ["CompositionalLoss", "LossBase"]

OutputT = TypeVar("OutputT")
TargetT = TypeVar("TargetT")


class LossBase(CallableObjective[OutputT, TargetT]):
    """Base class of losses: an expression over named component callables.

    Everything an objective does works on a loss; :meth:`forward` (and
    calling the loss) also returns the differentiable criterion of the batch.
    Arithmetic between losses, numbers and schedules returns a
    :class:`CompositionalLoss`; ``loss | metric`` returns a loss of the same
    kind that also tracks the metric.

    Args:
        expression: the expression tree; every leaf names a component.
        components: the callables of the leaves, keyed by their names.
        tracked: metrics evaluated with the loss but not part of the formula.
        weight: a callable of ``(outputs, targets)`` returning each batch's weight.

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

    _definition: ClassVar[tuple[str, ...]] = (
        "_expression",
        "_table",
        "_tracked_entries",
        "_higher_is_better",
        "_weight_fn",
    )
    """The attributes that define a loss (copied by :meth:`_derive`); the rest is state."""

    def __init__(
        self,
        expression: Expression,
        components: Iterable[NamedCallable],
        tracked: Iterable[NamedCallable] = (),
        *,
        weight: WeightFn | None = None,
    ) -> None:
        owner = f"{type(self).__name__} {render(expression)}"
        components = tuple(components)
        for entry in components:
            check_loss_name(entry.name, owner)
            if not isinstance(entry.higher_is_better, bool):
                raise FormulaError(
                    f"{owner}: the component {entry.name!r} needs higher_is_better True or False "
                    f"to be part of a loss, found {entry.higher_is_better!r}"
                )
        table = ComponentTable.of(components, owner)
        names = component_names(expression)
        if not names:
            raise FormulaError(f"{owner}: a loss expression needs at least one component")
        held = [name for name, _ in table.items()]
        if sorted(names) != sorted(held):
            raise FormulaError(
                f"{owner}: the components must be the expression's leaves {list(names)}, "
                f"found callables for {held}; pass metrics to track as tracked"
            )
        tracked = self._checked_tracked(table, tuple(tracked), owner)
        # the table holds exactly the leaves (checked above), each with a bool direction
        directions = {name: bool(entry.higher_is_better) for name, entry in table.items()}
        try:
            found = direction(expression, directions)
        except FormulaError as error:
            raise FormulaError(f"{type(self).__name__} {error}") from None
        assert found is not None  # an expression with a component has a direction
        self._define(expression, table, tracked, found, weight)

    def _define(
        self,
        expression: Expression,
        table: ComponentTable,
        tracked: tuple[NamedCallable, ...],
        higher_is_better: bool,
        weight: WeightFn | None,
    ) -> None:
        super(CallableObjective, self).__init__(weight=weight)
        self._expression = expression
        self._table = table
        self._tracked_entries = tracked
        self._higher_is_better = higher_is_better

    @staticmethod
    def _checked_tracked(
        table: ComponentTable, tracked: tuple[NamedCallable, ...], owner: str
    ) -> tuple[NamedCallable, ...]:
        for entry in tracked:
            check_name(entry.name, owner)
            if entry.name == COMBINED_NAME:
                raise NameConflictError(
                    f"{owner}: the name {COMBINED_NAME!r} is reserved for the combined value of "
                    f"compositions; give the tracked value another name"
                )
        by_name = merge_named_callables(tracked, (), owner)
        for name, entry in by_name.items():
            present = table.get(name)
            if present is not None and not present.same_callable(entry):
                raise NameConflictError(
                    f"{owner}: the name {name!r} is given to two different callables "
                    f"({present.fn!r:.60} and {entry.fn!r:.60}); give one of them another name"
                )
        return tuple(entry for name, entry in by_name.items() if table.get(name) is None)

    # -- what is made on first use ------------------------------------------------------------

    @lazy
    def _component_names(self) -> tuple[str, ...]:
        return component_names(self._expression)

    @lazy
    def _formula(self) -> str:
        return render(self._expression)

    @lazy
    def _program(self) -> Program:
        return compile_expression(self._expression)

    @lazy
    def _entries(self) -> dict[str, NamedCallable]:
        entries: dict[str, NamedCallable] = {}
        for name in self._component_names:
            entry = self._table.get(name)
            assert entry is not None
            entries[name] = entry
        for entry in self._tracked_entries:
            entries.setdefault(entry.name, entry)
        return entries

    @lazy
    def _calls(self) -> tuple[tuple[str, Any], ...]:
        return tuple(
            (name, entry.fn)
            for name, entry in self._entries.items()
            if not isinstance(entry.fn, (MultiCall, Produced))
        )

    @lazy
    def _multi_calls(self) -> tuple[MultiCall, ...]:
        calls: dict[int, MultiCall] = {}
        for entry in self._entries.values():
            call = entry.fn.call if isinstance(entry.fn, Produced) else entry.fn
            if isinstance(call, MultiCall):
                calls.setdefault(id(call), call)
        return tuple(calls.values())

    @lazy
    def _combined_row(self) -> bool:
        """Whether the criterion is a value of its own (not one component under its name)."""
        expression = self._expression
        return not (isinstance(expression, Component) and expression.name == self.name)

    @lazy
    def _position(self) -> dict[str, Tensor]:
        """The schedules' positions: ``forward`` calls and ``advance_epoch`` calls (1-d tensors)."""
        return {unit: torch.zeros(1, dtype=torch.int64) for unit in ("step", "epoch")}

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
        """The expression tree (immutable nodes from :mod:`torchtally.formula`)."""
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
        return self._tracked_entries

    @property
    @override
    def learns_names(self) -> bool:
        return bool(self._multi_calls)  # a dict-valued callable may return entries not declared

    @override
    def declared_names(self) -> tuple[str, ...]:
        names = [self.name] if self._combined_row else []
        names += self._component_names
        for call in self._multi_calls:
            names += call.declared
        names += [entry.name for entry in self._tracked_entries]
        return tuple(dict.fromkeys(names))

    @override
    def higher_is_better_for(self, name: str) -> bool | None:
        if name == self.name:
            return self._higher_is_better
        return super().higher_is_better_for(name)

    @override
    def _label(self) -> str:
        formula = self._formula  # a long formula is cut: labels go into every error message
        return f"{type(self).__name__} {formula if len(formula) <= 160 else formula[:157] + '...'}"

    @override
    def __repr__(self) -> str:
        tracked = self._tracked_entries
        suffix = f", tracking {[entry.name for entry in tracked]}" if tracked else ""
        return f"{type(self).__name__}({self._formula}{suffix})"

    # -- the hot path -------------------------------------------------------------------------

    @override
    def calculate(self, outputs: OutputT, targets: TargetT) -> dict[str, Tensor]:
        """Every component's and tracked metric's value for the batch (each callable once).

        The criterion comes with them, under the loss's name, when it is not a component itself.
        """
        values: dict[str, Any] = {}
        name = ""
        try:
            for name, fn in self._calls:
                values[name] = fn(outputs, targets)
        except Exception as error:
            raise callable_error(self._ledger.label, name, error) from error
        for call in self._multi_calls:
            produced = call.evaluate(outputs, targets, self._ledger.label)
            taken = values.keys() & produced.keys()
            if self._combined_row and self.name in produced:
                taken.add(self.name)
            if COMBINED_NAME in produced:
                taken.add(COMBINED_NAME)
            if taken:
                raise NameConflictError(
                    f"{self._ledger.label}: a dict-valued callable returned entries named like "
                    f"other values of the loss: {sorted(taken)} ({COMBINED_NAME!r} is reserved "
                    f"for the combined value of compositions)"
                )
            values.update(produced)
        if self._combined_row:
            values[self.name] = self._criterion(values)
        return values

    def _criterion(self, values: Mapping[str, Any]) -> Any:
        """The expression on the batch's component values (see :func:`criterion`)."""
        program = self._program
        factors = [
            factor.values(self._position[factor.unit])[0]  # type: ignore[attr-defined]
            for factor in program.factors
        ]
        return criterion(program, values, factors, self._ledger.label)

    @override
    def update(
        self, outputs: OutputT, targets: TargetT, *, weight: Any = None
    ) -> dict[str, Tensor]:
        values = self.calculate(outputs, targets)
        size, weight = self._batch(outputs, targets, weight)
        return self._accumulate(values, size, weight, not self._multi_calls)

    def forward(self, outputs: OutputT, targets: TargetT, *, weight: Any = None) -> Tensor:
        """The batch's differentiable loss; the values are accumulated (copied, detached).

        Every component callable is evaluated once. The criterion is the
        formula on the component values (per-sample ``(B,)`` values combine
        element-wise, scalars broadcast), in the widest floating dtype among
        them; the result is its batch mean, weighted by ``weight`` when it
        holds per-sample weights (see :meth:`update`). Schedules advance by
        one step after the batch is accumulated; a refused batch changes
        nothing.

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
        size, weight = self._batch(outputs, targets, weight)
        value = batch_value(values[self.name], weight)  # before anything changes
        self._accumulate(values, size, weight, not self._multi_calls)
        if self._program.factors:
            self._position["step"].add_(1)
        return value

    @override
    def __call__(self, outputs: OutputT, targets: TargetT, *, weight: Any = None) -> Tensor:
        """Same as :meth:`forward`."""
        return self.forward(outputs, targets, weight=weight)

    # -- schedules ----------------------------------------------------------------------------

    def schedule_values(self) -> dict[str, float]:
        """The value each schedule of the formula gives the next batch, by label.

        Example:
            >>> import torch
            >>> import torchtally as tt
            >>> mse = tt.Loss(lambda o, t: (o - t).pow(2).mean(1), 'MSE')
            >>> loss = tt.schedules.linear(0.0, 1.0, steps=10) * mse
            >>> _ = loss(torch.ones(2, 1), torch.zeros(2, 1))
            >>> loss.schedule_values()
            {'linear(0→1, 10)': 0.1}
        """
        return {
            factor.label: float(factor.values(self._position[factor.unit])[0])  # type: ignore[attr-defined]
            for factor in self._program.factors
        }

    def advance_epoch(self) -> None:
        """Move the schedules counted in epochs (``unit='epoch'``) one epoch on.

        Call it once at the end of each epoch (``reset()`` does not move
        schedules); schedules counted in steps move at each :meth:`forward`.

        Example:
            >>> import torch
            >>> import torchtally as tt
            >>> mse = tt.Loss(lambda o, t: (o - t).pow(2).mean(1), 'MSE')
            >>> loss = tt.schedules.piecewise({0: 1.0, 2: 0.5}, unit='epoch') * mse
            >>> for epoch in range(3):
            ...     print(epoch, loss.schedule_values())
            ...     loss.advance_epoch()
            0 {'piecewise(0: 1, 2: 0.5 epochs)': 1.0}
            1 {'piecewise(0: 1, 2: 0.5 epochs)': 1.0}
            2 {'piecewise(0: 1, 2: 0.5 epochs)': 0.5}
        """
        self._position["epoch"].add_(1)

    # -- epoch values -------------------------------------------------------------------------

    @override
    def finalize(self, values: dict[str, Tensor]) -> dict[str, Tensor]:
        return values

    def formula_value(self) -> Tensor:
        """The formula on the components' epoch values (and the schedules' current values).

        For a formula that is linear in its components (weighted sums) this
        equals the combined value of :meth:`compute` up to float rounding;
        otherwise it differs: ``compute()`` reports the mean of what was
        optimised, batch by batch (see ``docs/losses.md``).

        Example:
            >>> import torch
            >>> import torchtally as tt
            >>> mae = tt.Loss(lambda o, t: (o - t).abs(), 'MAE')
            >>> squared = mae ** 2
            >>> _ = squared(torch.tensor([1.0, 3.0]), torch.zeros(2))
            >>> squared.compute()['Combined Loss'], squared.formula_value()
            (tensor(5.), tensor(4.))
        """
        values = self.compute()
        return torch.as_tensor(self._criterion(values))

    # -- combining, persistence ---------------------------------------------------------------

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
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self._program.factors:
            state["schedule_position"] = {
                unit: position.clone() for unit, position in self._position.items()
            }
        return state

    @override
    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        positions: dict[str, Tensor] = {}
        if self._program.factors:
            stored = (
                state_dict.get("schedule_position") if isinstance(state_dict, Mapping) else None
            )
            for unit in ("step", "epoch"):
                value = stored.get(unit) if isinstance(stored, Mapping) else None
                if (
                    not isinstance(value, Tensor)
                    or value.shape != (1,)
                    or value.dtype != torch.int64
                    or int(value) < 0
                ):
                    raise StateDictError(
                        f"{self._label()}: expected the schedules' {unit} position (a (1,) int64 "
                        f"tensor >= 0) under 'schedule_position', found {value!r:.60}"
                    )
                positions[unit] = value.clone()
        super().load_state_dict(state_dict)
        for unit, value in positions.items():
            self._position[unit].copy_(value)

    @override
    def sync_identity(self) -> dict[str, Any]:
        # Same components under another formula would sync into different combined values.
        identity = super().sync_identity()
        identity["formula"] = self._formula
        identity["produced"] = [
            callable_identity(getattr(call, "fn", call)) for call in self._multi_calls
        ]
        return identity

    # -- algebra ------------------------------------------------------------------------------

    def _derive(self, tracked: Iterable[NamedCallable] | None = None) -> Self:
        """The same loss (same class and formula) with fresh state and, maybe, other metrics."""
        derived = type(self).__new__(type(self))
        for attribute in self._definition:
            setattr(derived, attribute, getattr(self, attribute))
        super(CallableObjective, derived).__init__(weight=self._weight_fn)
        if tracked is not None:
            derived._tracked_entries = self._checked_tracked(
                self._table, tuple(tracked), self._label()
            )
        return derived

    def _operand(self, value: object) -> LossBase[Any, Any] | Expression:
        if isinstance(value, LossBase):
            return value
        hint = (
            "; to track a metric next to a loss use loss | metric"
            if isinstance(value, CallableObjective)
            else ""
        )
        return constant_or_schedule(value, self._label, hint)  # the label is made on error only

    def _compose(self, op: str, left: object, right: object) -> CompositionalLoss[Any, Any]:
        """``left <op> right`` in constant time (one of the operands is ``self``)."""
        first, second = self._operand(left), self._operand(right)
        losses = [item for item in (first, second) if isinstance(item, LossBase)]
        node = Operation(op, _tree(first), _tree(second))
        try:
            found = combine_directions(node, _direction(first), _direction(second))
        except FormulaError as error:
            raise FormulaError(f"CompositionalLoss {error}") from None
        assert found is not None
        if len(losses) == 1:
            table, tracked = losses[0]._table, losses[0]._tracked_entries
        else:

            def owner() -> str:  # rendered on error only
                return f"CompositionalLoss {render(node)}"

            table = losses[0]._table.union(losses[1]._table, owner)
            tracked = (
                self._checked_tracked(
                    table, losses[0]._tracked_entries + losses[1]._tracked_entries, owner()
                )
                if losses[0]._tracked_entries or losses[1]._tracked_entries
                else ()
            )
        weights = {id(loss._weight_fn): loss._weight_fn for loss in losses if loss._weight_fn}
        if len(weights) > 1:
            raise FormulaError(
                "CompositionalLoss: the losses have different weight= callables; give the "
                "composition one weight callable, or pass weight= to update and forward"
            )
        composed: CompositionalLoss[Any, Any] = CompositionalLoss.__new__(CompositionalLoss)
        composed._define(node, table, tracked, found, next(iter(weights.values()), None))
        return composed

    def __add__(self, other: object) -> LossBase[Any, Any]:
        if _is_zero(other):  # sum() starts from 0: 0 + loss is the loss
            return self._derive()
        return self._compose("+", self, other)

    def __radd__(self, other: object) -> LossBase[Any, Any]:
        if _is_zero(other):
            return self._derive()
        return self._compose("+", other, self)

    def __sub__(self, other: object) -> CompositionalLoss[Any, Any]:
        return self._compose("-", self, other)

    def __rsub__(self, other: object) -> CompositionalLoss[Any, Any]:
        return self._compose("-", other, self)

    def __mul__(self, other: object) -> CompositionalLoss[Any, Any]:
        return self._compose("*", self, other)

    def __rmul__(self, other: object) -> CompositionalLoss[Any, Any]:
        return self._compose("*", other, self)

    def __truediv__(self, other: object) -> CompositionalLoss[Any, Any]:
        return self._compose("/", self, other)

    def __rtruediv__(self, other: object) -> CompositionalLoss[Any, Any]:
        return self._compose("/", other, self)

    def __pow__(self, other: object) -> CompositionalLoss[Any, Any]:
        return self._compose("**", self, other)

    def __rpow__(self, other: object) -> CompositionalLoss[Any, Any]:
        return self._compose("**", other, self)

    def __neg__(self) -> CompositionalLoss[Any, Any]:
        node = Negation(self._expression)
        composed: CompositionalLoss[Any, Any] = CompositionalLoss.__new__(CompositionalLoss)
        composed._define(
            node, self._table, self._tracked_entries, not self._higher_is_better, self._weight_fn
        )
        return composed

    def __or__(self, other: object) -> LossBase[Any, Any]:  # type: ignore[override, unused-ignore]
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
            return self._derive((*other.entries, *self._tracked_entries))
        return self._derive((*self._tracked_entries, *other.entries))


class CompositionalLoss(LossBase[OutputT, TargetT]):
    """A loss combining other losses, numbers and schedules; built by arithmetic on losses.

    ``compute()`` reports the combined value under ``'Combined Loss'`` (the
    exact epoch mean of the criterion ``forward`` returned, batch by batch),
    then every component, then the tracked metrics. :meth:`formula_value`
    gives the formula evaluated on the components' epoch values instead.

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


def _tree(operand: LossBase[Any, Any] | Expression) -> Expression:
    return operand._expression if isinstance(operand, LossBase) else operand


def _direction(operand: LossBase[Any, Any] | Expression) -> bool | None:
    return operand._higher_is_better if isinstance(operand, LossBase) else None


def _is_zero(value: object) -> bool:
    return type(value) in (int, float) and value == 0

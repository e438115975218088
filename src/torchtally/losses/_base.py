"""``LossBase`` and ``CompositionalLoss``: objectives that are also training criteria.

A loss is an expression over named component callables. Every component is
evaluated once per batch and accumulated like a metric; the criterion (the
expression evaluated on the batch's component values, per sample) is what
``forward`` returns as a batch mean, and what a composition accumulates
under its own name, so that its epoch value is the exact mean of what was
optimised. Arithmetic on losses builds a :class:`CompositionalLoss` in
constant time per operator; its formula, compiled program and state are
made on first use.

``loss | objective`` keeps a loss: with metrics built from callables the
result is a loss of the same kind tracking them; with any other objective a
:class:`~torchtally.losses.JoinedLoss`. A composition from an arbitrary
criterion (``CompositionalLoss(criterion=..., formula=..., **components)``)
is one component computed by a :class:`~torchtally.losses.CriterionCall`.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor
from typing_extensions import Self, override

from torchtally._conventions import MetricFn, WeightFn, callable_error, check_name, default_name
from torchtally._lazy import lazy
from torchtally.errors import (
    FormulaError,
    IncompatibleStateError,
    InvalidArgumentError,
    InvalidNameError,
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
    check_direction,
    check_loss_name,
    constant_or_schedule,
)
from torchtally.losses._criterion import Criterion, CriterionCall
from torchtally.losses._evaluation import MultiCall, Produced, batch_value, criterion
from torchtally.objectives import (
    CallableObjective,
    Metric,
    MetricCollection,
    NamedCallable,
    is_objective_like,
    merge_named_callables,
)
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
        """The named callables of the formula's leaves, in the order they are written.

        For a loss built from a criterion, the components the criterion combines.
        """
        return tuple(self._entries[name] for name in self._component_names)

    @property
    def tracked(self) -> tuple[NamedCallable, ...]:
        """The metrics evaluated and reported with the loss but not part of its formula."""
        return self._tracked_entries

    @property
    @override
    def learns_names(self) -> bool:
        # a dict-valued callable may return entries not declared; a criterion's call may not
        return any(call.learns for call in self._multi_calls)

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
            if COMBINED_NAME in produced and self._table.get(COMBINED_NAME) is None:
                taken.add(COMBINED_NAME)  # reserved, unless a criterion's value is the loss
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
        self._step()
        return value

    def _step(self) -> None:
        """Move the schedules counted in steps one step on (after each ``forward``)."""
        if self._program.factors:
            self._position["step"].add_(1)

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
        return self.criterion(self.compute())

    def criterion(self, values: Mapping[str, Any]) -> Tensor:
        """The loss's criterion on a dict of component values (and the schedules' current values).

        ``values`` holds every component's value by name: tensors (per-sample
        ``(B,)`` values combine element-wise) or numbers; other entries are
        ignored. A value a criterion computes from components (see
        :class:`CompositionalLoss`) is computed from theirs.

        Raises:
            ResultTypeError: a component's value is missing or not a number.
            MetricCallError: a criterion raised.

        Example:
            >>> import torch
            >>> import torchtally as tt
            >>> a = tt.Loss(lambda o, t: (o - t).abs(), 'A')
            >>> b = tt.Loss(lambda o, t: (o - t).pow(2), 'B')
            >>> (a + 0.5 * b**2).criterion({'A': torch.tensor(1.0), 'B': torch.tensor(2.0)})
            tensor(3.)
        """
        values = dict(values)
        label = self._label()
        for call in self._multi_calls:
            call.complete(values, label)
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
        state.update(self._schedule_state())
        return state

    @override
    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        positions = self._checked_schedule_state(state_dict, self._label())
        super().load_state_dict(state_dict)
        self._install_schedule_state(positions)

    def _schedule_state(self) -> dict[str, Any]:
        """The schedules' positions as state-dict entries (none without schedules)."""
        if not self._program.factors:
            return {}
        return {
            "schedule_position": {
                unit: position.clone() for unit, position in self._position.items()
            }
        }

    def _checked_schedule_state(self, state_dict: Any, label: str) -> dict[str, Tensor]:
        """The positions stored in ``state_dict``, checked; nothing changes here.

        Raises:
            StateDictError: a position is missing or not a ``(1,)`` int64 tensor ``>= 0``.
        """
        positions: dict[str, Tensor] = {}
        if not self._program.factors:
            return positions
        stored = state_dict.get("schedule_position") if isinstance(state_dict, Mapping) else None
        for unit in ("step", "epoch"):
            value = stored.get(unit) if isinstance(stored, Mapping) else None
            if (
                not isinstance(value, Tensor)
                or value.shape != (1,)
                or value.dtype != torch.int64
                or int(value) < 0
            ):
                raise StateDictError(
                    f"{label}: expected the schedules' {unit} position (a (1,) int64 tensor "
                    f">= 0) under 'schedule_position', found {value!r:.60}"
                )
            positions[unit] = value.clone()
        return positions

    def _install_schedule_state(self, positions: Mapping[str, Tensor]) -> None:
        for unit, value in positions.items():
            self._position[unit].copy_(value)

    @override
    def sync_identity(self) -> dict[str, Any]:
        # Same components under another formula would sync into different combined values.
        identity = super().sync_identity()
        identity["formula"] = self._formula
        identity["produced"] = [
            [callable_identity(fn) for fn in call.callables()] for call in self._multi_calls
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

    def _operand(self, value: object) -> LossBase[Any, Any] | Expression | None:
        """An operand as a loss or an expression node; ``None`` for a joined loss (it composes)."""
        if isinstance(value, LossBase):
            return value._composable()
        if getattr(value, "is_loss", False) is True:
            return None  # a JoinedLoss: its own operators compose it
        if is_objective_like(value):
            # Imported on first use: the module builds tt.Loss, defined above this one.
            from torchtally.losses._operands import as_loss

            try:
                return as_loss(value)._composable()
            except FormulaError as error:
                raise FormulaError(f"{self._label()}: {error}") from None
        return constant_or_schedule(value, self._label)  # the label is made on error only

    def _composable(self) -> Self:
        """``self``, checked to be usable in a larger expression.

        Raises:
            FormulaError: a composition from a criterion that has no name of its own.
        """
        if self._table.get(COMBINED_NAME) is not None:
            raise FormulaError(
                f"{self._label()}: a loss built from a criterion takes part in a larger formula "
                f"under a name of its own; build it with name='...'"
            )
        return self

    def _compose(self, op: str, left: object, right: object) -> CompositionalLoss[Any, Any]:
        """``left <op> right`` in constant time (one of the operands is ``self``)."""
        first, second = self._operand(left), self._operand(right)
        if first is None or second is None:
            return NotImplemented  # type: ignore[no-any-return]
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
        self._composable()
        node = Negation(self._expression)
        composed: CompositionalLoss[Any, Any] = CompositionalLoss.__new__(CompositionalLoss)
        composed._define(
            node, self._table, self._tracked_entries, not self._higher_is_better, self._weight_fn
        )
        return composed

    def __or__(self, other: object) -> Any:
        """A loss that also tracks ``other`` (any objective), with fresh state.

        With a ``tt.Metric`` or a plain ``MetricCollection``, a loss of the
        same kind tracking its callables; with any other objective (a
        hand-written one, a ``tt.wrap()`` result, an adapter, a collection with
        dict-valued callables or a prefix), a :class:`JoinedLoss`. ``loss |
        loss`` is refused: combine losses with arithmetic instead.

        Example:
            >>> import torch
            >>> import torchtally as tt
            >>> class Worst(tt.Objective[torch.Tensor, torch.Tensor]):
            ...     aggregation = 'max'
            ...     def calculate(self, outputs, targets):
            ...         return {'Worst': (outputs - targets).abs()}
            >>> loss = tt.Loss(lambda o, t: (o - t).abs(), 'MAE') | Worst()
            >>> loss(torch.tensor([1.0, 3.0]), torch.zeros(2))
            tensor(2.)
            >>> loss.compute()
            {'MAE': tensor(2.), 'Worst': tensor(3.)}
        """
        return self._track(other, before=False)

    def __ror__(self, other: object) -> Any:
        return self._track(other, before=True)

    def _track(self, other: object, *, before: bool) -> Any:
        """``self`` also tracking ``other``, listed in the order they were written."""
        if getattr(other, "is_loss", False) is True:
            formula = getattr(other, "formula", type(other).__name__)
            raise FormulaError(
                f"{self._label()}: '|' tracks metrics next to a loss, and {formula} is a loss; "
                f"combine losses with arithmetic (for example {self._formula} + {formula})"
            )
        if _plain_entries(other):
            assert isinstance(other, CallableObjective)
            if before:
                return self._derive((*other.entries, *self._tracked_entries))
            return self._derive((*self._tracked_entries, *other.entries))
        if not is_objective_like(other):
            return NotImplemented
        return self.joined(other, self) if before else self.joined(self, other)

    def joined(self, *parts: Any) -> Any:
        """The parts (this loss among them) as one loss, a :class:`JoinedLoss` (fresh state).

        What ``loss | objective`` and :func:`torchtally.objectives.join` build
        when a part is not a metric made of callables.

        Example:
            >>> import torch
            >>> import torchtally as tt
            >>> mae = tt.Loss(lambda o, t: (o - t).abs(), 'MAE')
            >>> both = mae.joined(mae, tt.wrap(lambda o, t: (o - t).max(), 'Max'))
            >>> both
            JoinedLoss(Loss([MAE]) | WrappedFunction 'Max')
        """
        # Imported on first use: JoinedLoss builds on this class.
        from torchtally.losses._joined import JoinedLoss

        return JoinedLoss(*parts)


class CompositionalLoss(LossBase[OutputT, TargetT]):
    """A loss combining components: by arithmetic on losses, or by a criterion of your own.

    Arithmetic on losses, numbers and schedules builds one (its formula is
    the expression). For a criterion the operators cannot express (``log``,
    ``clamp``, ``max``), build it from the criterion, a callable of the dict
    of component values, and the components, callables of ``(outputs,
    targets)`` given as keyword arguments (DRYTorch's form). Each component is
    evaluated once per batch and the criterion on their values is what
    :meth:`forward` returns as a batch mean (per-sample ``(B,)`` values make
    the criterion per sample, so combine them element-wise).

    ``compute()`` reports the combined value under ``'Combined Loss'`` (the
    exact epoch mean of the criterion ``forward`` returned, batch by batch),
    then every component, then the tracked metrics. :meth:`formula_value`
    gives the criterion on the components' epoch values instead.

    Args:
        criterion: callable of the dict of component values returning the
            combined value (a ``(B,)`` tensor or a scalar).
        formula: how :attr:`formula` and ``repr`` show it (default:
            ``criterion([A], [B])`` with the criterion's name).
        higher_is_better: direction of the combined value (``False``: lower is better).
        name: the name ``compute()`` reports it under. A composition from a
            criterion takes part in arithmetic with other losses under a name
            of its own (it is then ``[name]`` in their formula).
        weight: a callable of ``(outputs, targets)`` returning each batch's weight.
        **components: the component callables by name (names other than the
            arguments above; no ``[`` or ``]``).

    Raises:
        InvalidArgumentError: the criterion or a component is not a callable,
            the formula is not a non-empty string, or ``higher_is_better`` is not a bool.
        FormulaError: no component is given.
        InvalidNameError, NameConflictError: a name is not usable in a formula
            (or a component is named ``'Combined Loss'`` or like the loss).

    ``pickle`` and ``torch.save`` of the loss pickle the criterion and the
    components too: use functions defined at module level; a lambda cannot
    be pickled (deep copies and ``state_dict`` work with any callable).

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
        >>> def log_error(values):
        ...     return torch.log1p(values['Error'])
        >>> custom = tt.CompositionalLoss(log_error, 'log(1 + [Error])', Error=hits.fn)
        >>> custom(torch.tensor([0.0, 1.0]), torch.tensor([0.0, 0.0]))
        tensor(0.3466)
        >>> custom.compute()
        {'Combined Loss': tensor(0.3466), 'Error': tensor(0.5000)}
    """

    _definition: ClassVar[tuple[str, ...]] = (*LossBase._definition, "_name", "_formula_text")

    _name: str = COMBINED_NAME
    _formula_text: str | None = None  # the formula given with a criterion (None: the expression)

    def __init__(
        self,
        criterion: Criterion,
        formula: str | None = None,
        higher_is_better: bool = False,
        *,
        name: str = COMBINED_NAME,
        weight: WeightFn | None = None,
        **components: MetricFn,
    ) -> None:
        owner = "CompositionalLoss"
        if not callable(criterion):
            raise InvalidArgumentError(
                f"{owner}: criterion must be a callable of the dict of component values, found "
                f"{type(criterion).__name__} {criterion!r:.60}"
            )
        if not components:
            raise FormulaError(
                f"{owner}: a loss expression needs at least one component; pass the component "
                f"callables as keyword arguments (CompositionalLoss(criterion, formula, CE=fn))"
            )
        for key, fn in components.items():
            check_loss_name(key, owner)
            if not callable(fn) or is_objective_like(fn):
                raise InvalidArgumentError(
                    f"{owner}: the component {key!r} must be a callable of (outputs, targets), "
                    f"found {type(fn).__name__} {fn!r:.60}"
                )
        if name != COMBINED_NAME:
            name = check_loss_name(name, owner)
        if name in components:
            raise NameConflictError(
                f"{owner}: a component is named {name!r}, the name of the combined value; give "
                f"one of them another name"
            )
        if formula is None:
            try:
                called = default_name(criterion, owner)
            except InvalidNameError:  # a lambda
                called = "criterion"
            formula = f"{called}({', '.join(f'[{key}]' for key in components)})"
        elif not isinstance(formula, str) or not formula:
            raise InvalidArgumentError(
                f"{owner}: formula must be a non-empty string, found {type(formula).__name__} "
                f"{formula!r:.60}"
            )
        direction = check_direction(higher_is_better, f"{owner} {formula}", optional=False)
        assert direction is not None
        call = CriterionCall(criterion, name, components)
        entry = NamedCallable(name, Produced(call, name), direction)
        self._name, self._formula_text = name, formula
        self._define(Component(name), ComponentTable.of([entry], owner), (), direction, weight)

    @property
    @override
    def name(self) -> str:
        return self._name

    @lazy
    @override
    def _formula(self) -> str:
        return self._formula_text if self._formula_text is not None else render(self._expression)

    @property
    @override
    def components(self) -> tuple[NamedCallable, ...]:
        if self._formula_text is not None:  # built from a criterion: the components it combines
            entry = self._table.get(self._name)
            assert entry is not None and isinstance(entry.fn, Produced)
            assert isinstance(entry.fn.call, CriterionCall)
            return entry.fn.call.entries
        return super().components


def _plain_entries(other: object) -> bool:
    """Whether ``other`` is exactly its named callables (what a loss can track by itself).

    A ``Metric``, or a ``MetricCollection`` without dict-valued callables and
    without a prefix or postfix (those need the collection's own ``finalize``).
    """
    if type(other) is Metric:
        return True
    return (
        type(other) is MetricCollection
        and not other.learns_names
        and other.reported_names == other.declared_names()
    )


def _tree(operand: LossBase[Any, Any] | Expression) -> Expression:
    return operand._expression if isinstance(operand, LossBase) else operand


def _direction(operand: LossBase[Any, Any] | Expression) -> bool | None:
    return operand._higher_is_better if isinstance(operand, LossBase) else None


def _is_zero(value: object) -> bool:
    return type(value) in (int, float) and value == 0

"""``LossBase``: the base class of losses, objectives that are also training criteria.

A loss is an expression over named component callables. Every component is
evaluated once per batch and accumulated like a metric; the criterion (the
expression evaluated on the batch's component values, per sample) is what
``forward`` returns as a batch mean, and what a composition accumulates
under its own name, so that its epoch value is the exact mean of what was
optimised.

:class:`LossBase` is what a loss shows and does: its description, the
batch (``calculate``, ``update``, ``forward``), the schedules and the
criterion. It stands on three layers, one job each: the definition and what
is made from it on first use (:mod:`~torchtally.losses._definition`), the
schedules' positions in saved and synced state
(:mod:`~torchtally.losses._state`), and the algebra
(:mod:`~torchtally.losses._operators`: arithmetic builds a
:class:`~torchtally.losses.CompositionalLoss`, ``loss | objective`` a loss
tracking it).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from torch import Tensor
from typing_extensions import Self, override

from torchtally._conventions import WeightFn, call_each, size_and_weight
from torchtally._lazy import lazy
from torchtally.errors import IncompatibleStateError, NameConflictError
from torchtally.formula import Component, Expression
from torchtally.losses._algebra import COMBINED_NAME
from torchtally.losses._evaluation import batch_value, criterion, differentiable_weight
from torchtally.losses._operators import LossAlgebra, builders
from torchtally.objectives import NamedCallable, OutputT, TargetT

if TYPE_CHECKING:  # for annotations only: it builds on this class
    from torchtally.losses._joined import JoinedLoss

__all__ = ["LossBase"]


class LossBase(LossAlgebra[OutputT, TargetT]):
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

    def __init__(
        self,
        expression: Expression,
        components: Iterable[NamedCallable],
        tracked: Iterable[NamedCallable] = (),
        *,
        weight: WeightFn | None = None,
    ) -> None:
        table, checked, found, sign = self._checked_definition(expression, components, tracked)
        self._define(expression, table, checked, found, weight, sign)

    @lazy
    def _combined_row(self) -> bool:
        """Whether the criterion is a value of its own (not one component under its name)."""
        expression = self._expression
        return not (isinstance(expression, Component) and expression.name == self.name)

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

    @override
    def declared_names(self) -> tuple[str, ...]:
        names = [self.name] if self._combined_row else []
        names += self._component_names
        names += self._checked_declared(self.name if self._combined_row else None)
        names += [entry.name for entry in self._tracked_entries]
        return tuple(dict.fromkeys(names))

    @override
    def higher_is_better_for(self, name: str) -> bool | None:
        if name == self.name:
            return self._higher_is_better
        return super().higher_is_better_for(name)

    # -- the hot path -------------------------------------------------------------------------

    @override
    def calculate(self, outputs: OutputT, targets: TargetT) -> dict[str, Tensor]:
        """Every component's and tracked metric's value for the batch (each callable once).

        The criterion comes with them, under the loss's name, when it is not a component itself.
        """
        values = call_each(self._calls, outputs, targets, self._ledger.label)
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

    def _criterion(self, values: Mapping[str, Any]) -> Tensor:
        """The expression on the batch's component values (see :func:`criterion`), a tensor."""
        program = self._program
        factors = (
            [
                factor.values(self._position[factor.unit])[0]  # type: ignore[attr-defined]
                for factor in program.factors
            ]
            if program.factors
            else ()  # no schedules (most losses): no comprehension to run every batch
        )
        return criterion(program, values, factors, self._ledger.label)

    def forward(self, outputs: OutputT, targets: TargetT, *, weight: Any = None) -> Tensor:
        """The batch's differentiable loss; the values are accumulated (copied, detached).

        Every component callable is evaluated once. The criterion is the
        formula on the component values (per-sample ``(B,)`` values combine
        element-wise, scalars broadcast), in the widest floating dtype among
        them; the result is its batch mean, weighted by ``weight`` when it
        holds per-sample weights (see :meth:`update`): the weights are
        normalised in float32 (or wider) first, so float16 values cannot
        overflow, and a weight tensor that requires grad keeps its graph in
        the result (the accumulated state is detached). Schedules advance by
        one step after the batch is accumulated, when gradients are enabled (a
        forward under ``torch.no_grad()`` or ``torch.inference_mode()``, as
        in validation, leaves them where they are); a refused batch changes
        nothing, and neither does an empty one (its value is NaN, the mean of
        no values, as torch's).

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
        if self._queued_at_once(values, targets, weight):  # tensors only: the mean cannot fail
            value = batch_value(values[self.name], None)
            size = targets.shape[0]  # type: ignore[attr-defined]  # a tensor: see _queued_at_once
        else:
            given = self._given_weight(outputs, targets, weight)
            size, weight = size_and_weight(targets, outputs, given, self._ledger.label)
            # before anything changes; per-sample weights that require grad keep their graph
            try:
                value = batch_value(values[self.name], differentiable_weight(given, weight))
            except RuntimeError:  # a value torch cannot average (float8): the checks say why
                self._ledger.check(values, size, weight)
                raise
            self._accumulate(values, size, weight, self._names_ordered)
        if self._program.factors:  # only schedules move (most losses have none: no call)
            self._step(size)
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
        self._advance("epoch")

    # -- sync ---------------------------------------------------------------------------------

    @override
    def derived_values(self) -> dict[str, tuple[str, ...]]:
        # the combined value from its components, a summed dict's total from its entries
        return self._derived_from(self._ledger.names)

    def _derived_from(self, names: Iterable[str]) -> dict[str, tuple[str, ...]]:
        """:meth:`derived_values`, with ``names`` the values the state holds."""
        derived: dict[str, tuple[str, ...]] = {}
        components = tuple(name for name in self._program.names if name != self.name)
        if components:
            derived[self.name] = components
        for call in self._multi_calls:
            total = call.summed_name()
            if total is not None:  # every entry the call produced (others too, to be safe)
                derived[total] = tuple(
                    name for name in names if name != total and name not in derived
                )
        return derived

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
        return self._criterion(values)

    # -- combining ----------------------------------------------------------------------------

    @override
    def merge_state(self, other: Self) -> None:
        """Add the state of another instance of the same loss (same formula)."""
        if isinstance(other, LossBase) and other._formula != self._formula:
            raise IncompatibleStateError(
                f"{self._label()}: cannot merge the state of a loss with another formula "
                f"({other._formula})"
            )
        super().merge_state(other)

    # -- joining ------------------------------------------------------------------------------

    @override
    def joined(self, *parts: Any) -> JoinedLoss:
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
        return builders.joined(*parts)


def __getattr__(name: str) -> Any:
    """``CompositionalLoss`` by its former path, ``torchtally.losses._base.CompositionalLoss``.

    Pickles written before it moved to ``_compositional`` name that path; new
    ones name ``torchtally.losses.CompositionalLoss``.
    """
    if name == "CompositionalLoss":
        return builders.composition
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

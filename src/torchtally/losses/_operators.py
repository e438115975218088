"""The algebra of losses: ``+ - * / **``, unary ``-`` and ``|`` on every loss.

Arithmetic between losses, numbers and schedules builds a
:class:`~torchtally.losses.CompositionalLoss` in constant time per operator:
the operands' definitions were checked when they were built, so an operator
joins their component tables, checks one new node's direction
(:func:`~torchtally.formula.combine_directions`) and makes nothing else;
the formula, program and state of the result are made on first use.
``loss | objective`` keeps a loss: the same loss tracking plain metrics, or
a :class:`~torchtally.losses.JoinedLoss` with any other objective.

What the operators build is defined in modules above this one, because it
builds on :class:`~torchtally.losses.LossBase`: :data:`builders` holds it,
and each of those modules fills its slot when imported (see
:class:`Builders`), so that no module imports one above it.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Final, cast

from typing_extensions import Self

from torchtally._conventions import shared_weight_fn
from torchtally.errors import FormulaError
from torchtally.formula import (
    Expression,
    Negation,
    Operation,
    Sign,
    combine_signed,
    render,
    value_sign,
)
from torchtally.losses._algebra import COMBINED_NAME, constant_or_schedule
from torchtally.losses._state import LossState
from torchtally.objectives import (
    CallableObjective,
    Metric,
    MetricCollection,
    NamedCallable,
    OutputT,
    TargetT,
    is_objective_like,
)

if TYPE_CHECKING:  # for annotations only: the classes the operators return build on this one
    from torchtally.losses._base import LossBase
    from torchtally.losses._compositional import CompositionalLoss
    from torchtally.losses._joined import JoinedLoss

__all__ = ["Builders", "LossAlgebra", "builders"]


class Builders:
    """What the loss operators build, each registered by the module that defines it.

    ``CompositionalLoss``, ``JoinedLoss`` and ``as_loss`` build on
    ``LossBase``, so they are defined in modules above the operators; each of
    those modules sets its attribute of :data:`builders` when imported.
    ``torchtally.losses`` imports them all, so the three are set before any
    loss exists.

    Attributes:
        composition: ``CompositionalLoss``, what arithmetic returns.
        joined: ``JoinedLoss``, what ``loss | objective`` returns with an
            objective other than plain metrics (see ``LossBase.joined``).
        as_loss: turns a ``tt.wrap()`` result or a foreign loss into an operand.
    """

    composition: type[CompositionalLoss[Any, Any]]
    joined: Callable[..., JoinedLoss]
    as_loss: Callable[[Any], LossBase[Any, Any]]


builders: Final = Builders()
"""The one :class:`Builders`, filled by ``_compositional``, ``_joined`` and ``_operands``."""


class LossAlgebra(LossState[OutputT, TargetT]):
    """Arithmetic and ``|`` on losses.

    A layer of :class:`~torchtally.losses.LossBase` (never used on its own):
    every instance is a ``LossBase``.
    """

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

    def _operand(self, value: object) -> LossAlgebra[Any, Any] | Expression | None:
        """An operand as a loss or an expression node; ``None`` for a joined loss (it composes)."""
        if isinstance(value, LossAlgebra):
            return value._composable()
        if getattr(value, "is_loss", False) is True:
            return None  # a JoinedLoss: its own operators compose it
        if is_objective_like(value):
            try:
                return builders.as_loss(value)._composable()
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
        losses = [item for item in (first, second) if isinstance(item, LossAlgebra)]
        node = Operation(op, _tree(first), _tree(second))
        try:
            found, sign = combine_signed(node, _signed(first), _signed(second))
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
        # one weight for the whole criterion: a weighted loss and an unweighted one are refused
        # (the unweighted one would be weighted too), as for metrics joined with '|'
        weight = losses[0]._weight_fn
        if any(loss._weight_fn is not weight for loss in losses):  # render on error only
            shared_weight_fn(
                (loss._weight_fn for loss in losses), f"CompositionalLoss {render(node)}"
            )
        composition = builders.composition
        composed: CompositionalLoss[Any, Any] = composition.__new__(composition)
        composed._define(node, table, tracked, found, weight, sign)
        return composed

    def __add__(self, other: object) -> LossBase[Any, Any]:
        if _is_zero(other):  # sum() starts from 0: 0 + loss is the loss
            return cast("LossBase[Any, Any]", self._derive())  # every LossAlgebra is a LossBase
        return self._compose("+", self, other)

    def __radd__(self, other: object) -> LossBase[Any, Any]:
        if _is_zero(other):
            return cast("LossBase[Any, Any]", self._derive())
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

    def __pos__(self) -> Self:
        """The same loss with fresh state, as ``0 + loss`` (``+x`` is ``x``, as for tensors)."""
        return self._derive()

    def __neg__(self) -> CompositionalLoss[Any, Any]:
        self._composable()
        node = Negation(self._expression)
        composition = builders.composition
        composed: CompositionalLoss[Any, Any] = composition.__new__(composition)
        found, sign = combine_signed(node, _signed(self))
        assert found is not None  # a loss has a direction, and so has its negation
        composed._define(node, self._table, self._tracked_entries, found, self._weight_fn, sign)
        return composed

    def __or__(self, other: object) -> Self | JoinedLoss:
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
        tracking = self._track(other, before=False)
        return NotImplemented if tracking is None else tracking

    def __ror__(self, other: object) -> Self | JoinedLoss:
        tracking = self._track(other, before=True)
        return NotImplemented if tracking is None else tracking

    def _track(self, other: object, *, before: bool) -> Self | JoinedLoss | None:
        """``self`` also tracking ``other``, in the order written (``None``: not an objective)."""
        if getattr(other, "is_loss", False) is True:
            formula = getattr(other, "formula", type(other).__name__)
            raise FormulaError(
                f"{self._label()}: '|' tracks metrics next to a loss, and {formula} is a loss; "
                f"combine losses with arithmetic (for example {self._formula} + {formula})"
            )
        if _plain_entries(other):
            assert isinstance(other, CallableObjective)
            if other._weight_fn is not self._weight_fn:  # raises: one objective, one weight
                shared_weight_fn((self._weight_fn, other._weight_fn), self._label())
            if before:
                return self._derive((*other.entries, *self._tracked_entries))
            return self._derive((*self._tracked_entries, *other.entries))
        if not is_objective_like(other):
            return None
        return self.joined(other, self) if before else self.joined(self, other)

    @abstractmethod
    def joined(self, *parts: Any) -> JoinedLoss:
        """The parts (this loss among them) as one loss (``LossBase.joined``)."""


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


def _tree(operand: LossAlgebra[Any, Any] | Expression) -> Expression:
    return operand._expression if isinstance(operand, LossAlgebra) else operand


def _signed(operand: LossAlgebra[Any, Any] | Expression) -> tuple[bool | None, Sign]:
    """An operand's direction and sign: a loss's own, a constant's or a schedule's."""
    if isinstance(operand, LossAlgebra):
        return operand._higher_is_better, operand._value_sign
    return None, value_sign(operand)  # a constant or a schedule: a leaf


def _is_zero(value: object) -> bool:
    return type(value) in (int, float) and value == 0

"""``JoinedLoss``: a loss joined with objectives of any kind, still a loss.

``loss | objective`` with a hand-written objective, a ``tt.wrap()`` result,
a torchmetrics or torcheval adapter, a collection with dict-valued callables
(anything but plain metrics made of callables, which a loss tracks itself)
gives a :class:`JoinedLoss`. It is a :class:`~torchtally.objectives.Joined`
(torchtally parts share one ledger, foreign parts keep their own state and
sync as their own participants) whose loss part decides what a loss does:
:meth:`~JoinedLoss.forward` returns its differentiable value, and its
formula, direction, criterion and schedules are the joined loss's.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from torch import Tensor
from typing_extensions import Self, override

from torchtally._conventions import size_and_weight
from torchtally.errors import IncompatibleStateError, InvalidArgumentError
from torchtally.formula import Expression
from torchtally.losses._base import LossBase
from torchtally.losses._evaluation import batch_value, differentiable_weight
from torchtally.losses._operators import builders
from torchtally.objectives import Joined, NamedCallable, is_objective_like

__all__ = ["JoinedLoss"]


class JoinedLoss(Joined):
    """A loss and other objectives of any kind, updated, computed, synced and saved as one.

    Build it with ``loss | objective`` (or ``objective | loss``). The loss
    comes first among the :attr:`parts` and in ``compute()``; like every
    part that torchtally evaluates, it is taken as a definition (its state
    is not carried over: use ``merge_state``). :meth:`forward` (and calling
    the object) evaluates every part once, accumulates the batch, and returns
    the loss's differentiable batch value. Arithmetic applies to the loss and
    keeps the other parts: ``2 * (loss | metric)`` is ``(2 * loss) | metric``.

    Args:
        *parts: one torchtally loss and any objectives (see
            :class:`~torchtally.objectives.Joined`).

    Raises:
        InvalidArgumentError: no part is a torchtally loss.
        FormulaError: two parts are losses (combine them with arithmetic).
        NameConflictError: two parts declare the same name.

    Example:
        >>> import torch
        >>> import torchtally as tt
        >>> class Worst(tt.Objective[torch.Tensor, torch.Tensor]):
        ...     aggregation = 'max'
        ...     def calculate(self, outputs, targets):
        ...         return {'Worst': (outputs - targets).abs()}
        >>> loss = tt.Loss(lambda o, t: (o - t).pow(2), 'MSE') | Worst()
        >>> outputs = torch.tensor([1.0, 3.0], requires_grad=True)
        >>> value = loss(outputs, torch.zeros(2))
        >>> value.backward()
        >>> value, outputs.grad
        (tensor(5., grad_fn=<MeanBackward0>), tensor([1., 3.]))
        >>> loss.compute()
        {'MSE': tensor(5.), 'Worst': tensor(3.)}
    """

    is_loss: ClassVar[bool] = True
    """Marks losses, so that ``objective | loss`` is left to the loss."""

    def __init__(self, *parts: Any) -> None:
        flat: list[Any] = []
        for part in parts:
            for item in part.parts if isinstance(part, Joined) else (part,):
                if all(item is not present for present in flat):  # a part given twice: once
                    flat.append(item)
        losses = [part for part in flat if isinstance(part, LossBase)]
        if not losses:
            raise InvalidArgumentError(
                f"JoinedLoss: expected a torchtally loss among the parts, found "
                f"{[type(part).__name__ for part in flat]}; join metrics with |"
            )
        for other in losses[1:]:
            losses[0]._track(other, before=False)  # raises: '|' takes one loss
        loss = losses[0]._derive()  # a definition with fresh state (schedules from the start)
        super().__init__(loss, *(part for part in flat if part is not losses[0]))
        self._loss = loss
        self._value_name = loss.name

    # -- what makes it a loss -----------------------------------------------------------------

    @property
    def name(self) -> str:
        """The name ``compute()`` reports the loss's value under."""
        return self._value_name

    @property
    def formula(self) -> str:
        """The loss's formula (see :attr:`LossBase.formula <torchtally.LossBase.formula>`)."""
        return self._loss.formula

    @property
    def expression(self) -> Expression:
        """The loss's expression tree."""
        return self._loss.expression

    @property
    def higher_is_better(self) -> bool:
        """Whether a higher value of the loss is better."""
        return self._loss.higher_is_better

    @property
    def components(self) -> tuple[NamedCallable, ...]:
        """The loss's components (see ``LossBase.components``)."""
        return self._loss.components

    @property
    def others(self) -> tuple[Any, ...]:
        """The parts joined with the loss, in order."""
        return self.parts[1:]

    def forward(self, outputs: Any, targets: Any, *, weight: Any = None) -> Tensor:
        """The batch's differentiable loss; every part's values are accumulated.

        As :meth:`LossBase.forward <torchtally.LossBase.forward>`: each part is
        evaluated once, the batch is checked in full before anything is kept,
        and schedules advance by one step.

        Example:
            >>> import torch
            >>> import torchtally as tt
            >>> loss = 2 * tt.Loss(lambda o, t: (o - t).abs(), 'MAE') | tt.wrap(
            ...     lambda o, t: o.max(), 'Max')
            >>> loss.forward(torch.tensor([1.0, -3.0]), torch.zeros(2))
            tensor(4.)
            >>> loss.compute()
            {'Combined Loss': tensor(4.), 'MAE': tensor(2.), 'Max': tensor(1.)}
        """
        values = self.calculate(outputs, targets)
        given = self._given_weight(outputs, targets, weight)
        size, weight = size_and_weight(targets, outputs, given, self._ledger.label)
        # before anything changes; per-sample weights that require grad keep their graph
        value = batch_value(values[self._value_name], differentiable_weight(given, weight))
        self._record(outputs, targets, values, size, weight)
        self._loss._step(size)
        return value

    @override
    def __call__(self, outputs: Any, targets: Any, *, weight: Any = None) -> Tensor:
        """Same as :meth:`forward`."""
        return self.forward(outputs, targets, weight=weight)

    def criterion(self, values: Mapping[str, Any]) -> Tensor:
        """The loss's criterion on a dict of component values (see ``LossBase.criterion``)."""
        return self._loss.criterion(values)

    def formula_value(self) -> Tensor:
        """The loss's criterion on the components' epoch values (see ``LossBase.formula_value``)."""
        return self._loss.criterion(self.compute())

    def schedule_values(self) -> dict[str, float]:
        """The value each schedule of the formula gives the next batch, by label."""
        return self._loss.schedule_values()

    def advance_epoch(self) -> None:
        """Move the schedules counted in epochs one epoch on (see ``LossBase.advance_epoch``)."""
        self._loss.advance_epoch()

    # -- joining and arithmetic ---------------------------------------------------------------

    def joined(self, *parts: Any) -> JoinedLoss:
        """The parts (this joined loss among them) as one :class:`JoinedLoss`."""
        return JoinedLoss(*parts)

    @override
    def __or__(self, other: object) -> JoinedLoss:
        """This loss also joined with ``other`` (any objective but a loss)."""
        if getattr(other, "is_loss", False) is True:
            self._loss._track(other, before=False)  # raises: '|' takes one loss
            raise AssertionError("unreachable: '|' of two losses raised above")
        return JoinedLoss(self, other) if is_objective_like(other) else NotImplemented

    @override
    def __ror__(self, other: object) -> JoinedLoss:
        return JoinedLoss(other, self) if is_objective_like(other) else NotImplemented

    def _arithmetic(
        self, function: Callable[[Any, Any], Any], other: object, reflected: bool
    ) -> JoinedLoss:
        """``function`` applied to the loss (and ``other``'s loss), the other parts kept."""
        operand, extra = (
            (other._loss, other.others) if isinstance(other, JoinedLoss) else (other, ())
        )
        left, right = (operand, self._loss) if reflected else (self._loss, operand)
        return JoinedLoss(function(left, right), *self.others, *extra)

    def __add__(self, other: object) -> JoinedLoss:
        return self._arithmetic(operator.add, other, False)

    def __radd__(self, other: object) -> JoinedLoss:
        return self._arithmetic(operator.add, other, True)

    def __sub__(self, other: object) -> JoinedLoss:
        return self._arithmetic(operator.sub, other, False)

    def __rsub__(self, other: object) -> JoinedLoss:
        return self._arithmetic(operator.sub, other, True)

    def __mul__(self, other: object) -> JoinedLoss:
        return self._arithmetic(operator.mul, other, False)

    def __rmul__(self, other: object) -> JoinedLoss:
        return self._arithmetic(operator.mul, other, True)

    def __truediv__(self, other: object) -> JoinedLoss:
        return self._arithmetic(operator.truediv, other, False)

    def __rtruediv__(self, other: object) -> JoinedLoss:
        return self._arithmetic(operator.truediv, other, True)

    def __pow__(self, other: object) -> JoinedLoss:
        return self._arithmetic(operator.pow, other, False)

    def __rpow__(self, other: object) -> JoinedLoss:
        return self._arithmetic(operator.pow, other, True)

    def __pos__(self) -> JoinedLoss:
        return JoinedLoss(+self._loss, *self.others)

    def __neg__(self) -> JoinedLoss:
        return JoinedLoss(-self._loss, *self.others)

    # -- state --------------------------------------------------------------------------------

    @override
    def merge_state(self, other: Self) -> None:
        """Add the state of another instance of the same joined loss (same formula)."""
        if isinstance(other, JoinedLoss) and other._loss.formula != self._loss.formula:
            raise IncompatibleStateError(
                f"{self._label()}: cannot merge the state of a loss with another formula "
                f"({other._loss.formula})"
            )
        super().merge_state(other)

    @override
    def derived_values(self) -> dict[str, tuple[str, ...]]:
        return self._loss._derived_from(self._ledger.names)

    @override
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(self._loss._loss_state())
        return state

    @override
    def state_keys(self) -> frozenset[str]:
        return super().state_keys() | self._loss._loss_keys()

    @override
    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore every part and the schedules' positions, or nothing (see ``Joined``).

        The state must hold the loss's formula (see ``LossBase.load_state_dict``).
        """
        positions = self._loss._checked_loss_state(state_dict, self._label())
        super().load_state_dict(state_dict)
        self._loss._install_schedule_state(positions)


# What the loss operators build (see torchtally.losses._operators.Builders).
builders.joined = JoinedLoss

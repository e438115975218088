"""``CompositionalLoss``: the loss arithmetic builds, or one built from a criterion of your own.

Arithmetic on losses (:mod:`~torchtally.losses._operators`) builds a
composition from its operands' definitions; its formula is the expression.
``CompositionalLoss(criterion, formula, **components)`` builds one from a
callable of the dict of component values and the component callables
(DRYTorch's form): a single value computed by a
:class:`~torchtally.losses.CriterionCall`, under the loss's name, which
also yields the components it combines.
"""

# No ``from __future__ import annotations`` here: the class is shown and pickled as
# ``torchtally.losses.CompositionalLoss``, where ``typing.get_type_hints`` could not resolve
# string annotations written in this module.

from typing import ClassVar

from typing_extensions import override

from torchtally._conventions import MetricFn, WeightFn, default_name
from torchtally._criteria import warn_if_self_weighted
from torchtally._lazy import lazy
from torchtally.errors import (
    FormulaError,
    InvalidArgumentError,
    InvalidNameError,
    NameConflictError,
)
from torchtally.formula import Component, render
from torchtally.losses._algebra import (
    COMBINED_NAME,
    ComponentTable,
    check_direction,
    check_loss_name,
)
from torchtally.losses._base import LossBase
from torchtally.losses._criterion import Criterion, CriterionCall
from torchtally.losses._evaluation import Produced
from torchtally.losses._operators import builders
from torchtally.objectives import NamedCallable, OutputT, TargetT, is_objective_like

__all__ = ["CompositionalLoss"]


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
            if weight is None:
                warn_if_self_weighted(fn, f"{owner} component {key!r}")
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
        """The name ``compute()`` reports the combined value under (``'Combined Loss'``)."""
        return self._name

    @lazy
    @override
    def _formula(self) -> str:
        return self._formula_text if self._formula_text is not None else render(self._expression)

    @property
    @override
    def components(self) -> tuple[NamedCallable, ...]:
        """The named callables of the formula's leaves (see ``LossBase.components``)."""
        if self._formula_text is not None:  # built from a criterion: the components it combines
            entry = self._table.get(self._name)
            assert entry is not None and isinstance(entry.fn, Produced)
            assert isinstance(entry.fn.call, CriterionCall)
            return entry.fn.call.entries
        return super().components


# What the loss operators build (see torchtally.losses._operators.Builders).
builders.composition = CompositionalLoss

"""The losses users build: ``Loss`` (one callable) and ``DictLoss`` (a dict-valued callable)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

from typing_extensions import override

from torchtally._conventions import (
    MetricFn,
    WeightFn,
    callable_error,
    check_name,
    default_name,
    refuse_stateful_callable,
)
from torchtally._criteria import warn_if_self_weighted
from torchtally.errors import FormulaError, InvalidArgumentError, NameConflictError, ResultTypeError
from torchtally.formula import Component, Constant, Expression, Operation
from torchtally.losses._algebra import (
    COMBINED_NAME,
    check_direction,
    check_loss_name,
    constant_or_schedule,
)
from torchtally.losses._base import LossBase
from torchtally.losses._evaluation import MultiCall, Produced, in_common_dtype
from torchtally.objectives import NamedCallable, OutputT, TargetT

__all__ = ["DictCall", "DictLoss", "Loss"]


_MODES = ("loss", "summed", "entries")


class Loss(LossBase[OutputT, TargetT]):
    """A loss from one callable of ``(outputs, targets)``; its formula is ``[name]``.

    The callable returns per-sample values of shape ``(B,)`` or a scalar
    batch mean (``torch.nn.functional.mse_loss`` with its default reduction,
    say). The same callable is the training criterion and the metric.

    Args:
        fn: the callable.
        name: the loss's name (default: the callable's ``__name__``); no ``[`` or ``]``.
        higher_is_better: ``False`` (default) for ordinary losses; ``True``
            for a value to maximise (a reward, a log-likelihood).
        weight: a callable of ``(outputs, targets)`` returning each batch's weight.

    Raises:
        NameConflictError: the name is ``'Combined Loss'``.
        InvalidNameError: the name is empty or holds a bracket.
        InvalidArgumentError: ``higher_is_better`` is not a bool.

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
        self,
        fn: Callable[[OutputT, TargetT], Any],
        name: str | None = None,
        higher_is_better: bool = False,
        *,
        weight: WeightFn | None = None,
    ) -> None:
        name, direction = _named(fn, name, higher_is_better, "Loss")
        if weight is None:
            warn_if_self_weighted(fn, f"Loss {name!r}")
        super().__init__(Component(name), (NamedCallable(name, fn, direction),), weight=weight)

    @property
    @override
    def name(self) -> str:
        """The name ``compute()`` reports the loss's value under (its callable's name)."""
        return self._component_names[0]

    @property
    def fn(self) -> MetricFn:
        """The loss's callable."""
        return self._entries[self.name].fn


class DictCall(MultiCall):
    """The callable of a :class:`DictLoss`: calls ``fn`` once and returns its values by name.

    Modes: ``'loss'``, the dict's entry ``name`` is the loss; ``'summed'``,
    the loss is the sum of the returned values (a dict, a tuple or list
    named ``name_0``, ``name_1``, ..., or a single value), reported under
    ``name`` next to each summand; ``'entries'``, the values only (a
    weighted sum's formula combines them).

    Example:
        >>> import torch
        >>> from torchtally.losses import DictCall
        >>> call = DictCall(lambda o, t: (o.sum(), t.sum()), 'Loss', 'summed')
        >>> call.evaluate(torch.ones(2), torch.zeros(2), 'DictLoss [Loss]')
        {'Loss': tensor(2.), 'Loss_0': tensor(2.), 'Loss_1': tensor(0.)}
    """

    def __init__(
        self, fn: MetricFn, name: str, mode: str = "loss", declared: Iterable[str] = ()
    ) -> None:
        if mode not in _MODES:
            raise ValueError(f"DictCall: mode must be one of {_MODES}, found {mode!r}")
        self.fn = fn
        self.name = name
        self.mode = mode
        self.declared = tuple(declared)

    def __call__(self, outputs: Any, targets: Any) -> dict[str, Any]:
        """Same as :meth:`evaluate`, with errors naming the loss by its name."""
        return self.evaluate(outputs, targets, f"DictLoss {self.name!r}")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DictCall) and (self.fn, self.name, self.mode) == (
            other.fn,
            other.name,
            other.mode,
        )

    def __hash__(self) -> int:
        return hash((self.name, self.mode, id(self.fn)))

    def __repr__(self) -> str:
        return f"DictCall({getattr(self.fn, '__name__', type(self.fn).__name__)}, {self.name!r})"

    @override
    def evaluate(self, outputs: Any, targets: Any, owner: str) -> dict[str, Any]:
        """Call ``fn`` and return its values by name.

        Raises:
            MetricCallError: ``fn`` raised.
            ResultTypeError: the result is not what the mode needs.
            NameConflictError: a summed dict has an entry named like the loss.
        """
        try:
            result = self.fn(outputs, targets)
        except Exception as error:
            raise callable_error(owner, self.name, error) from error
        if self.mode == "loss":
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
            return _checked_keys(result, owner)
        values = self._entries(result, owner)
        if self.mode == "entries":
            return values
        # in the widest floating dtype among them, as a composition's criterion is
        summands, _ = in_common_dtype(list(values.values()), tuple(values), owner)
        total = summands[0]
        for value in summands[1:]:  # no 0 + ...: one operation fewer, and no int start value
            total = total + value
        return (
            {self.name: total, **values} if len(values) > 1 or self.name not in values else values
        )

    @override
    def summed_name(self) -> str | None:
        return self.name if self.mode == "summed" else None

    def _entries(self, result: Any, owner: str) -> dict[str, Any]:
        if isinstance(result, Mapping):
            values = _checked_keys(result, owner)
            if self.mode == "summed" and self.name in values:
                raise NameConflictError(
                    f"{owner}: the summed dict has an entry named {self.name!r}, the name of "
                    f"the sum; give the loss another name"
                )
        elif isinstance(result, (tuple, list)):
            values = {f"{self.name}_{index}": value for index, value in enumerate(result)}
        elif self.mode == "summed":  # a single value is the loss itself
            return {self.name: result}
        else:
            raise ResultTypeError(
                f"{owner}: the callable for {self.name!r} must return a dict, tuple or list of "
                f"values, found {type(result).__name__}"
            )
        if not values:
            raise ResultTypeError(
                f"{owner}: the callable for {self.name!r} returned an empty "
                f"{type(result).__name__}; expected the values to sum"
            )
        return values


def _checked_keys(result: Mapping[Any, Any], owner: str) -> dict[str, Any]:
    for key in result:
        check_name(key, owner)
    return result if type(result) is dict else dict(result)


class DictLoss(LossBase[OutputT, TargetT]):
    """A loss from a callable returning a dict: the entry ``name`` is the loss.

    The other entries are tracked and reported after the loss (they have no
    direction). Their names are learnt from the batches, or declared with
    ``names=`` so that a process whose batches never hold an entry still
    syncs it. :meth:`summed` builds a loss that is the (weighted) sum of
    every returned value instead.

    Args:
        fn: callable of ``(outputs, targets)`` returning a dict of tensors or numbers.
        name: the entry holding the loss.
        higher_is_better: direction of the loss (``False``: lower is better).
        names: the other entries, declared up front.
        weight: a callable of ``(outputs, targets)`` returning each batch's weight.

    Example:
        >>> import torch
        >>> import torchtally as tt
        >>> def detection(outputs, targets):
        ...     error = (outputs - targets).abs()
        ...     return {'Loss': error.mean(1), 'Worst': error.amax(1)}
        >>> loss = tt.DictLoss(detection, 'Loss', names=['Worst'])
        >>> loss(torch.tensor([[1.0, 3.0]]), torch.zeros(1, 2))
        tensor(2.)
        >>> loss.compute()
        {'Loss': tensor(2.), 'Worst': tensor(3.)}
    """

    _definition: ClassVar[tuple[str, ...]] = (*LossBase._definition, "_name", "_call")

    def __init__(
        self,
        fn: Callable[[OutputT, TargetT], Any],
        name: str,
        higher_is_better: bool = False,
        *,
        names: Iterable[str] = (),
        weight: WeightFn | None = None,
    ) -> None:
        if not callable(fn):
            raise InvalidArgumentError(
                f"DictLoss: expected a callable of (outputs, targets), found {fn!r:.60}"
            )
        name = check_loss_name(name, "DictLoss")
        refuse_stateful_callable(fn, f"DictLoss {name!r}")
        direction = check_direction(higher_is_better, f"DictLoss {name!r}", optional=False)
        assert direction is not None
        call = DictCall(fn, name, "loss", _declared(names, name))
        self._name, self._call = name, call
        super().__init__(Component(name), (NamedCallable(name, call, direction),), weight=weight)

    @classmethod
    def summed(
        cls,
        fn: Callable[[OutputT, TargetT], Any],
        name: str | None = None,
        higher_is_better: bool = False,
        *,
        weights: Mapping[str, Any] | None = None,
        names: Iterable[str] = (),
        weight: WeightFn | None = None,
    ) -> DictLoss[OutputT, TargetT]:
        """A loss that is the sum of the values ``fn`` returns, each one tracked.

        ``fn`` returns a dict (each entry tracked under its key), a tuple or
        list (entries named ``name_0``, ``name_1``, ...) or a single value.
        With ``weights``, the loss is the weighted sum of the entries it
        names (numbers or schedules), which become the formula's components:
        ``[cls_loss] + 0.5 x [box_loss]``.

        Args:
            fn: callable of ``(outputs, targets)``.
            name: the sum's name (default: the callable's ``__name__``).
            higher_is_better: direction of the loss.
            weights: a weight per entry; the entries the loss is made of.
            names: entries declared up front (see :class:`DictLoss`).
            weight: a callable of ``(outputs, targets)`` returning each batch's weight.

        Example:
            >>> import torch
            >>> import torchtally as tt
            >>> def parts(outputs, targets):
            ...     return {'cls_loss': (outputs - targets).abs(), 'box_loss': torch.tensor(0.5)}
            >>> loss = tt.DictLoss.summed(parts, 'Loss', weights={'cls_loss': 1, 'box_loss': 2})
            >>> loss.formula
            '[cls_loss] + 2 x [box_loss]'
            >>> loss(torch.ones(2), torch.zeros(2))
            tensor(2.)
            >>> loss.compute()
            {'Loss': tensor(2.), 'cls_loss': tensor(1.), 'box_loss': tensor(0.5000)}
        """
        name, direction = _named(fn, name, higher_is_better, "DictLoss")
        loss: DictLoss[OutputT, TargetT] = cls.__new__(cls)
        loss._name = name
        if weights is None:
            loss._call = DictCall(fn, name, "summed", _declared(names, name))
            entry = NamedCallable(name, loss._call, direction)
            LossBase.__init__(loss, Component(name), (entry,), weight=weight)
            return loss
        if not isinstance(weights, Mapping) or not weights:
            raise FormulaError(
                f"DictLoss {name!r}: weights must be a non-empty dict of entry names to weights, "
                f"found {weights!r:.60}"
            )
        keys = [check_loss_name(key, f"DictLoss {name!r}") for key in weights]
        if name in keys:
            raise NameConflictError(
                f"DictLoss {name!r}: an entry is named like the sum; give the loss another name"
            )
        loss._call = DictCall(fn, name, "entries", _declared([*keys, *names], name))
        terms: list[Expression] = []
        for key, value in weights.items():
            factor = constant_or_schedule(value, f"DictLoss {name!r}")
            leaf = Component(key)
            terms.append(
                leaf
                if isinstance(factor, Constant) and factor.value == 1
                else Operation("*", factor, leaf)
            )
        expression = terms[0]
        for term in terms[1:]:
            expression = Operation("+", expression, term)
        components = [NamedCallable(key, Produced(loss._call, key), direction) for key in keys]
        LossBase.__init__(loss, expression, components, weight=weight)
        return loss

    @property
    @override
    def name(self) -> str:
        """The entry of the callable's dict that is the loss (``compute()`` reports it by it)."""
        return self._name

    @property
    def fn(self) -> MetricFn:
        """The user's callable."""
        return self._call.fn

    @override
    def higher_is_better_for(self, name: str) -> bool | None:
        if self._call.mode != "loss" and name in self._call.declared:
            return self._higher_is_better  # a summand of the loss points its way
        return super().higher_is_better_for(name)


def _declared(names: Iterable[str], name: str) -> list[str]:
    if isinstance(names, str):
        raise FormulaError(f"DictLoss {name!r}: names= takes a list of entry names, found a string")
    declared = [check_name(entry, f"DictLoss {name!r}") for entry in names if entry != name]
    if COMBINED_NAME in declared:  # it would report NaN beside the entries
        raise NameConflictError(
            f"DictLoss {name!r}: names= declares an entry {COMBINED_NAME!r}, the name reserved for "
            f"the combined value of compositions; give the entry another name"
        )
    return declared


def _named(fn: Any, name: str | None, higher_is_better: Any, kind: str) -> tuple[str, bool]:
    """A loss callable's name (its default if ``None``) and direction, checked.

    Raises:
        InvalidArgumentError: ``fn`` is not callable, or ``higher_is_better`` not a bool.
        InvalidNameError: the name is not a valid loss name (``check_loss_name``).
        NameConflictError: the name is ``'Combined Loss'``.
    """
    if not callable(fn):
        raise InvalidArgumentError(
            f"{kind}: expected a callable of (outputs, targets), found {fn!r:.60}"
        )
    name = check_loss_name(default_name(fn, kind) if name is None else name, kind)
    refuse_stateful_callable(fn, f"{kind} {name!r}")
    direction = check_direction(higher_is_better, f"{kind} {name!r}", optional=False)
    assert direction is not None
    return name, direction

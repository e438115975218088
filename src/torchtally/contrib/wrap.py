"""The code of :func:`torchtally.wrap`, documented and imported from :mod:`torchtally.wrap`.

It lives in ``contrib`` because :func:`wrap` hands torchmetrics and torcheval metrics
to the adapters beside it (:mod:`torchtally.contrib.torchmetrics`,
:mod:`torchtally.contrib.torcheval`), which it imports only when it meets one of
their metrics; it imports no third-party library.

Example:
    >>> from torchtally.contrib.wrap import wrap
    >>> import torchtally
    >>> wrap is torchtally.wrap
    True
"""

from __future__ import annotations

import sys
import types
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn
from typing_extensions import override

from torchtally._conventions import callable_error, check_direction, check_name, normalize_result
from torchtally._criteria import warn_if_self_weighted
from torchtally.aggregation import Accumulator, accumulator_class
from torchtally.contrib._stateful import StatefulObjective
from torchtally.errors import InvalidArgumentError, InvalidNameError, UnsupportedObjectError
from torchtally.losses import LossOperand
from torchtally.objectives import Objective
from torchtally.sync import SyncParticipant

__all__ = [
    "ACCEPTED_FORMS",
    "StatefulObjective",
    "WrappedFunction",
    "normalize_result",
    "wrap",
]

ACCEPTED_FORMS = (
    "(1) a function of (outputs, targets); "
    "(2) an object with update(outputs, targets), compute() and reset() (reset may be "
    "inherited, as from a torchmetrics Metric); "
    "(3) a stateless torch.nn.Module whose forward(outputs, targets) returns the values; "
    "(4) a stateful torch.nn.Module with update, compute and reset; "
    "also torchmetrics metrics and collections, torcheval metrics and dicts of them. "
    "Values may be a number, a tensor, a tuple or list of them, or a dict with string keys"
)
"""The forms :func:`wrap` accepts, as its error messages list them."""

_AGGREGATIONS = ("mean", "sum", "min", "max")


# -- stateless forms: torchtally keeps the state ----------------------------------------------


class WrappedFunction(LossOperand, Objective[Any, Any]):
    """A function (or stateless ``nn.Module``) of ``(outputs, targets)`` as an objective.

    Its values are accumulated by torchtally, so they get exact batch
    weighting, ``sync()``, ``merge_state``, checkpoints and pickling like any
    :class:`~torchtally.Objective`. Build it with :func:`wrap`.

    Args:
        fn: the callable.
        name: the name of a single value, the prefix of a tuple's names.
        aggregation: ``'mean'`` (batch-weighted, default), ``'sum'`` (a scalar is
            a batch total), ``'min'`` or ``'max'``, for every value or per name
            (a mapping; unlisted names use the mean).
        higher_is_better: the direction of every value, or a mapping per name.

    Example:
        >>> import torch
        >>> import torchtally as tt
        >>> nll = tt.wrap(torch.nn.NLLLoss())
        >>> log_probs = torch.log(torch.tensor([[0.5, 0.5], [0.25, 0.75]]))
        >>> _ = nll.update(log_probs, torch.tensor([0, 1]))
        >>> nll.compute()
        {'NLLLoss': tensor(0.4904)}
    """

    def __init__(
        self,
        fn: Any,
        name: str,
        *,
        aggregation: str | Mapping[str, str] = "mean",
        higher_is_better: bool | Mapping[str, bool | None] | None = None,
        weight: Any = None,
    ) -> None:
        self._name = check_name(name, "wrap")
        owner = f"{type(self).__name__} {name!r}"
        if isinstance(aggregation, str):
            default, per_name = aggregation, {}
        else:
            default, per_name = "mean", dict(aggregation)
        for key, kind in (("default", default), *per_name.items()):
            check_name(key, owner)
            if kind not in _AGGREGATIONS:
                raise InvalidArgumentError(
                    f"{owner}: aggregation of {key!r} must be one of {list(_AGGREGATIONS)}, "
                    f"found {kind!r}"
                )
        self._fn = fn
        self._default_aggregation = default
        self._aggregations = per_name
        if isinstance(higher_is_better, Mapping):
            for key, direction in higher_is_better.items():
                check_direction(direction, f"{owner} value {key!r}", optional=True)
        else:
            check_direction(higher_is_better, owner, optional=True)
        self._higher_is_better = higher_is_better
        self._owner = owner
        self._sequence_names: tuple[str, ...] = ()
        if weight is None:
            warn_if_self_weighted(fn, owner)
        super().__init__(weight=weight)

    @property
    def name(self) -> str:
        """The name of a single value (the prefix of a sequence's names)."""
        return self._name

    @property
    def wrapped(self) -> Any:
        """The wrapped callable."""
        return self._fn

    @override
    def calculate(self, outputs: Any, targets: Any) -> dict[str, Tensor]:
        try:
            result = self._fn(outputs, targets)
        except Exception as error:
            raise callable_error(self._owner, self._name, error) from error
        if type(result) is Tensor:  # the common case: one value, no checks needed here
            return {self._name: result}
        if type(result) is dict and result.keys() == self._ledger.rows.keys():
            for value in result.values():  # keys were validated when first seen
                if type(value) is not Tensor:
                    return normalize_result(result, self._name, self._owner)
            return result
        if (type(result) is tuple or type(result) is list) and len(result) == len(
            self._sequence_names
        ):
            return dict(zip(self._sequence_names, result, strict=True))
        values = normalize_result(result, self._name, self._owner)
        if isinstance(result, (tuple, list)):
            self._sequence_names = tuple(values)
        return values

    @override
    def _aggregated_names(self) -> tuple[str, ...]:
        return tuple(self._aggregations)

    @override
    def accumulator_for(self, name: str) -> type[Accumulator]:
        return accumulator_class(
            self._aggregations.get(name, self._default_aggregation), self._owner
        )

    @override
    def higher_is_better_for(self, name: str) -> bool | None:
        if isinstance(self._higher_is_better, Mapping):
            return self._higher_is_better.get(name)
        return self._higher_is_better

    @override
    def _label(self) -> str:
        return self._owner


# -- wrap -------------------------------------------------------------------------------------


def _adapter_for(obj: Any, name: str | None) -> Any:
    """The torchmetrics or torcheval adapter for ``obj``, or ``None``.

    A library that is not imported cannot have made ``obj``, so nothing is imported here.
    """
    torchmetrics = sys.modules.get("torchmetrics")
    if torchmetrics is not None and isinstance(
        obj, (torchmetrics.Metric, torchmetrics.MetricCollection)
    ):
        from torchtally.contrib.torchmetrics import from_torchmetrics

        return from_torchmetrics(obj, name)
    torcheval = sys.modules.get("torcheval.metrics.metric")
    if torcheval is not None:
        is_metric = isinstance(obj, torcheval.Metric)
        is_dict = (
            isinstance(obj, Mapping)
            and bool(obj)
            and all(isinstance(value, torcheval.Metric) for value in obj.values())
        )
        if is_metric or is_dict:
            from torchtally.contrib.torcheval import from_torcheval

            return from_torcheval(obj, name)
    return None


def _unsupported(obj: Any, why: str) -> UnsupportedObjectError:
    if isinstance(obj, type):
        what = f"the class {obj.__name__}"
    else:
        what = f"a {type(obj).__name__} ({obj!r:.60})"
    return UnsupportedObjectError(
        f"wrap: cannot use {what} as a metric: {why}. Accepted forms: {ACCEPTED_FORMS}"
    )


def _callable_name(obj: Any) -> str:
    if isinstance(obj, (types.FunctionType, types.BuiltinFunctionType, types.MethodType)):
        name = obj.__name__
        if name == "<lambda>":
            raise InvalidNameError("wrap: a lambda has no usable name; pass name='...'")
        return name
    return type(obj).__name__


def wrap(
    obj: Any,
    name: str | None = None,
    *,
    aggregation: str | Mapping[str, str] | None = None,
    higher_is_better: bool | Mapping[str, bool | None] | None = None,
    weight: Any = None,
) -> Any:
    """Turn a function, a metric object or an ``nn.Module`` into a torchtally objective.

    See :mod:`torchtally.wrap` for the accepted forms. Stateless forms
    return a :class:`WrappedFunction` (exact aggregation, sync); torchmetrics
    metrics return :func:`~torchtally.contrib.torchmetrics.from_torchmetrics`'s
    adapter, torcheval metrics :func:`~torchtally.contrib.torcheval.from_torcheval`'s;
    other stateful objects a :class:`StatefulObjective`. A torchtally objective
    (or adapter) is returned unchanged.

    Args:
        obj: the metric.
        name: the value's name (the prefix of a tuple's names). Default: a
            function's ``__name__``, an object's class name; a lambda needs one.
        aggregation: for stateless forms only: ``'mean'`` (default), ``'sum'``,
            ``'min'``, ``'max'``, or a mapping from value names to those.
        higher_is_better: the direction of the values (or a mapping per name),
            for stateless forms.
        weight: for stateless forms: a callable of ``(outputs, targets)``
            returning each batch's weight (see ``Objective.update``).

    Returns:
        An object with ``update``, ``compute``, ``reset``, ``sync``,
        ``state_dict``/``load_state_dict`` and ``to``.

    Raises:
        UnsupportedObjectError: ``obj`` fits none of the forms (a ``TypeError``).
        InvalidNameError: no usable name (a lambda without ``name=``).
        InvalidArgumentError: ``aggregation``, ``higher_is_better`` or ``weight``
            given for a stateful form (a ``TypeError`` and a ``ValueError``).

    Example:
        >>> import torch
        >>> import torchtally as tt
        >>> def losses(outputs, targets):
        ...     return (outputs - targets).abs().mean(), (outputs - targets).pow(2).mean()
        >>> metric = tt.wrap(losses)
        >>> _ = metric.update(torch.ones(2), torch.zeros(2))
        >>> metric.compute()
        {'losses_0': tensor(1.), 'losses_1': tensor(1.)}
    """
    if name is not None:
        check_name(name, "wrap")
    if isinstance(obj, type):
        raise _unsupported(obj, "it is a class; pass an instance")
    stateless_options = (
        aggregation is not None or higher_is_better is not None or weight is not None
    )
    if isinstance(obj, SyncParticipant):  # already a torchtally objective or adapter
        if name is not None or stateless_options:
            raise InvalidArgumentError(
                f"wrap: {obj!r:.60} is already a torchtally objective; name it and set its "
                f"options where it is built"
            )
        return obj
    adapter = _adapter_for(obj, name)
    if adapter is not None:
        if stateless_options:
            raise InvalidArgumentError(
                f"wrap: aggregation, higher_is_better and weight apply to stateless forms only; a "
                f"{type(obj).__name__} aggregates and names its values itself"
            )
        return adapter
    has_update = callable(getattr(obj, "update", None))
    has_compute = callable(getattr(obj, "compute", None))
    if has_update and has_compute:
        if not callable(getattr(obj, "reset", None)):
            raise _unsupported(obj, "it has update and compute but no reset")
        if stateless_options:
            raise InvalidArgumentError(
                f"wrap: aggregation, higher_is_better and weight apply to stateless forms only; a "
                f"{type(obj).__name__} keeps and aggregates its own state"
            )
        return StatefulObjective(obj, name or type(obj).__name__)
    if has_update or has_compute:
        present = "update" if has_update else "compute"
        raise _unsupported(obj, f"it has {present} but not both update and compute")
    if isinstance(obj, nn.Module) and type(obj).forward is nn.Module.forward:
        raise _unsupported(obj, "this nn.Module defines no forward")
    if not callable(obj):
        raise _unsupported(obj, "it is neither callable nor has update/compute/reset")
    return WrappedFunction(
        obj,
        name if name is not None else _callable_name(obj),
        aggregation="mean" if aggregation is None else aggregation,
        higher_is_better=higher_is_better,
        weight=weight,
    )

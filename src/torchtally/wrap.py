"""Turn the metric forms users already have into torchtally objectives.

:func:`wrap` accepts every metric form of a plain training script:

1. a function of ``(outputs, targets)``;
2. an object with ``update(outputs, targets)``, ``compute()`` and ``reset()``
   (``reset`` may be inherited);
3. a stateless ``torch.nn.Module`` whose ``forward(outputs, targets)`` returns
   the values (``torch.nn.NLLLoss()``, for example);
4. a stateful ``torch.nn.Module`` with ``update``, ``compute`` and ``reset``.

Results may be a Python number, a tensor, a tuple or list of them (named
``name_0``, ``name_1``, ...) or a dict with string keys; they are normalised
into ``dict[str, Tensor]``.

Stateless forms (1 and 3) become a :class:`WrappedFunction`: torchtally
accumulates their values itself, with exact batch weighting (a scalar is a
batch mean weighted by the batch size, a ``(B,)`` vector holds per-sample
values), and they sync across processes like any objective. Stateful forms
(2 and 4) keep their own state in the object: torchmetrics and torcheval
metrics go to :func:`~torchtally.contrib.torchmetrics.from_torchmetrics` and
:func:`~torchtally.contrib.torcheval.from_torcheval`, which know how to sync
them; any other object becomes a :class:`StatefulObjective`, whose state
torchtally cannot reach, so that its ``sync()`` raises
:class:`~torchtally.errors.SyncError` in a distributed run (outside one there
is nothing to combine and it does nothing).

This module imports no third-party library: torchmetrics and torcheval
objects are recognised only when their library is already imported.

Example:
    >>> import torch
    >>> import torchtally as tt
    >>> def errors(outputs, targets):
    ...     diff = outputs - targets
    ...     return {'MAE': diff.abs().mean(), 'Bias': diff.mean()}
    >>> metric = tt.wrap(errors)
    >>> _ = metric.update(torch.tensor([1.0, 3.0]), torch.zeros(2))
    >>> _ = metric.update(torch.tensor([-2.0]), torch.zeros(1))
    >>> metric.compute()   # over the 3 samples
    {'MAE': tensor(2.), 'Bias': tensor(0.6667)}
"""

from __future__ import annotations

import copy
import sys
import types
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from typing_extensions import Self, override

from torchtally import distributed
from torchtally._conventions import callable_error, check_name, normalize_result
from torchtally.aggregation import Accumulator, accumulator_class
from torchtally.errors import (
    InvalidNameError,
    MetricCallError,
    StateDictError,
    SyncError,
    UnsupportedObjectError,
)
from torchtally.losses import LossOperand
from torchtally.objectives import Objective, is_objective_like, join
from torchtally.sync import SyncParticipant, sync_all

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

_STATE_VERSION = 1
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
                raise ValueError(
                    f"{owner}: aggregation of {key!r} must be one of {list(_AGGREGATIONS)}, "
                    f"found {kind!r}"
                )
        self._fn = fn
        self._default_aggregation = default
        self._aggregations = per_name
        self._higher_is_better = higher_is_better
        self._owner = owner
        self._sequence_names: tuple[str, ...] = ()
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


# -- stateful forms: the object keeps its state -----------------------------------------------


class StatefulObjective(LossOperand):
    """An object with ``update``/``compute``/``reset`` that keeps its own state.

    ``update`` and ``compute`` call the object's and normalise what they return
    into ``dict[str, Tensor]`` (``update`` returns ``None`` when the object's
    does). The object's state is its own business: torchtally cannot combine
    it across processes, so :meth:`sync` raises
    :class:`~torchtally.errors.SyncError` in a distributed run (on every rank,
    also within :func:`torchtally.sync_all`); outside one it does nothing.
    Build it with :func:`wrap`.

    Example:
        >>> import torch
        >>> import torchtally as tt
        >>> class Hits:
        ...     def __init__(self):
        ...         self.hits = 0
        ...     def update(self, outputs, targets):
        ...         self.hits += int((outputs.argmax(1) == targets).sum())
        ...     def compute(self):
        ...         return self.hits
        ...     def reset(self):
        ...         self.hits = 0
        >>> hits = tt.wrap(Hits())
        >>> hits.update(torch.eye(2), torch.tensor([0, 0]))
        >>> hits.compute()
        {'Hits': tensor(1)}
    """

    can_sync = False
    """Whether :meth:`sync` can combine this objective's state across processes."""

    def __init__(self, obj: Any, name: str) -> None:
        self._object = obj
        self._name = check_name(name, "wrap")
        self._owner = f"{type(self).__name__} {name!r}"

    @property
    def name(self) -> str:
        """The name of a single value (the prefix of a sequence's names)."""
        return self._name

    @property
    def wrapped(self) -> Any:
        """The wrapped object."""
        return self._object

    def _call_error(self, method: str, error: Exception) -> MetricCallError:
        return MetricCallError(
            f"{self._owner}: {type(self._object).__name__}.{method}() raised "
            f"{type(error).__name__}: {error}"
        )

    def update(self, outputs: Any, targets: Any) -> dict[str, Tensor] | None:
        """Call the object's ``update``; return what it returned, normalised (or ``None``)."""
        try:
            result = self._object.update(outputs, targets)
        except Exception as error:
            raise self._call_error("update", error) from error
        if result is None:
            return None
        return normalize_result(result, self._name, self._owner)

    def compute(self) -> dict[str, Tensor]:
        """The object's ``compute()`` as ``dict[str, Tensor]`` of 0-d tensors.

        Raises:
            MetricCallError: the object's ``compute`` raised.
            ResultTypeError: it returned something other than the accepted types.
            ResultShapeError: a value has more than one element.
        """
        try:
            result = self._object.compute()
        except Exception as error:
            raise self._call_error("compute", error) from error
        return normalize_result(result, self._name, self._owner, scalars=True)

    def reset(self) -> None:
        """Call the object's ``reset``."""
        self._object.reset()

    def higher_is_better_for(self, name: str) -> bool | None:
        """The object's ``higher_is_better`` attribute if it has one, else ``None``."""
        direction = getattr(self._object, "higher_is_better", None)
        return direction if isinstance(direction, bool) else None

    # -- sync: not reachable ------------------------------------------------------------------

    def _sync_refusal(self) -> SyncError:
        return SyncError(
            f"{self._owner}: the state of this {type(self._object).__name__} lives inside the "
            f"object, where torchtally cannot combine it across processes; wrap a function "
            f"of (outputs, targets) instead (torchtally then keeps and syncs the state), use a "
            f"torchmetrics or torcheval metric, or sync the object yourself"
        )

    def sync(self, process_group: distributed.ProcessGroup = None) -> None:
        """Refuse to sync in a distributed run; do nothing outside one.

        Raises:
            SyncError: in a distributed run, on every rank.
        """
        sync_all(self, process_group=process_group)

    # Every hook refuses: sync_all sends the refusal to the other ranks, which raise it too.

    def sync_identity(self) -> dict[str, Any]:
        """Refuse (see :meth:`sync`)."""
        raise self._sync_refusal()

    def sync_stamp(self) -> tuple[int, int]:
        """Refuse (see :meth:`sync`)."""
        raise self._sync_refusal()

    def sync_export(self, drop_last: bool) -> Any:
        """Refuse (see :meth:`sync`)."""
        raise self._sync_refusal()

    def sync_merge(self, gathered: Any, padding: Any) -> Any:
        """Refuse (see :meth:`sync`)."""
        raise self._sync_refusal()

    def sync_install(self, prepared: Any) -> None:
        """Refuse (see :meth:`sync`)."""
        raise self._sync_refusal()

    # -- persistence and devices --------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The object's state: its ``state_dict()`` if it has one, else a copy of its attributes."""
        if callable(getattr(self._object, "state_dict", None)):
            return {"version": _STATE_VERSION, "state_dict": self._object.state_dict()}
        try:
            attributes = vars(self._object)
        except TypeError:
            raise StateDictError(
                f"{self._owner}: a {type(self._object).__name__} has neither state_dict() nor "
                f"attributes to save"
            ) from None
        return {"version": _STATE_VERSION, "attributes": copy.deepcopy(attributes)}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a state from :meth:`state_dict`.

        Raises:
            StateDictError: the state is not one :meth:`state_dict` made for this kind of object.
        """
        if isinstance(state_dict, Mapping) and "state_dict" in state_dict:
            loader = getattr(self._object, "load_state_dict", None)
            if callable(loader):
                loader(state_dict["state_dict"])
                return
        elif (
            isinstance(state_dict, Mapping)
            and "attributes" in state_dict
            and hasattr(self._object, "__dict__")
        ):
            vars(self._object).update(copy.deepcopy(dict(state_dict["attributes"])))
            return
        raise StateDictError(
            f"{self._owner}: expected a dict from StatefulObjective.state_dict() for a "
            f"{type(self._object).__name__}, found {type(state_dict).__name__}"
        )

    def to(self, device: torch.device | str) -> Self:
        """Move the object (if it has a ``to`` method, as modules do) and return ``self``."""
        mover = getattr(self._object, "to", None)
        if callable(mover):
            mover(device)
        return self

    def copy(self) -> Self:
        """An independent deep copy, the wrapped object included."""
        return copy.deepcopy(self)

    def __or__(self, other: object) -> Any:
        """This object and ``other`` (any objective) as one (``torchtally.objectives.Joined``)."""
        return join(self, other) if is_objective_like(other) else NotImplemented

    def __ror__(self, other: object) -> Any:
        return join(other, self) if is_objective_like(other) else NotImplemented

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self._object).__name__}, name={self._name!r})"


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

    See the module documentation for the accepted forms. Stateless forms
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
        ValueError: ``aggregation`` or ``higher_is_better`` given for a stateful form.

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
            raise ValueError(
                f"wrap: {obj!r:.60} is already a torchtally objective; name it and set its "
                f"options where it is built"
            )
        return obj
    adapter = _adapter_for(obj, name)
    if adapter is not None:
        if stateless_options:
            raise ValueError(
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
            raise ValueError(
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

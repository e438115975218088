"""The metrics built from plain callables: ``Metric`` and ``MetricCollection``.

A :class:`Metric` is one named callable; a :class:`MetricCollection` several,
each under its own name, or dict-valued callables whose names are learnt from
the first batch. Both are callable objectives
(:class:`~torchtally.objectives.CallableObjective`); joined with ``|`` they
make one collection.
"""

from __future__ import annotations

from collections.abc import (
    Callable,
    Iterable,
    Mapping,
)
from typing import Any

from torch import Tensor
from typing_extensions import override

from torchtally._conventions import (
    MetricFn,
    WeightFn,
    check_name,
    default_name,
    shared_weight_fn,
    showable,
)
from torchtally.aggregation import Accumulator
from torchtally.errors import InvalidArgumentError, InvalidNameError
from torchtally.objectives._base import Objective
from torchtally.objectives._entries_view import EntriesView
from torchtally.objectives._hooks import OutputT, TargetT
from torchtally.objectives._named import (
    CallableObjective,
    NamedCallable,
    is_loss,
    merge_named_callables,
)

__all__ = [
    "CallableObjective",
    "Metric",
    "MetricCollection",
    "NamedCallable",
    "merge_named_callables",
]


class MetricCollection(CallableObjective[OutputT, TargetT], EntriesView):
    """Several metrics evaluated together, each under its own name; a mapping of its entries.

    ``collection['MAE']`` is the entry (a :class:`NamedCallable`), ``len``,
    iteration (over names) and ``in`` work as for a dict.

    Args:
        *fns: callables of ``(outputs, targets)`` returning a dict of values by
            name (several metrics computed in one pass); their names are learnt
            from the first batch.
        prefix: put before every name ``compute()`` reports (``'val/'``).
        postfix: put after every name ``compute()`` reports.
        weight: a callable of ``(outputs, targets)`` returning each batch's weight.
        **named_fns: callables of ``(outputs, targets)`` by name (or a
            :class:`Metric`, whose callable and options are taken under the new name).

    Raises:
        InvalidArgumentError: an argument that is not a callable (or a
            ``Metric``), or a prefix or postfix that is not a string.
        WeightError: a ``Metric`` entry has a ``weight=`` callable that other
            entries (or the collection's ``weight=``) do not share.

    Example:
        >>> import torch
        >>> import torchtally as tt
        >>> def errors(outputs, targets):
        ...     return {'MAE': (outputs - targets).abs(), 'Bias': outputs - targets}
        >>> metrics = tt.MetricCollection(errors, Max=lambda o, t: o, prefix='val/')
        >>> _ = metrics.update(torch.tensor([1.0, 3.0]), torch.tensor([2.0, 2.0]))
        >>> metrics.compute()
        {'val/Max': tensor(2.), 'val/MAE': tensor(1.), 'val/Bias': tensor(0.)}
        >>> 'Max' in metrics, len(metrics), list(metrics)
        (True, 1, ['Max'])
    """

    def __init__(
        self,
        *fns: MetricFn,
        prefix: str = "",
        postfix: str = "",
        weight: WeightFn | None = None,
        **named_fns: Any,
    ) -> None:
        for option, value in (("prefix", prefix), ("postfix", postfix)):
            if not isinstance(value, str):
                raise InvalidArgumentError(
                    f"MetricCollection: {option} must be a string, found {type(value).__name__} "
                    f"{value!r:.40}"
                )
        self._prefix, self._postfix = prefix, postfix
        super().__init__(
            (_entry(name, fn) for name, fn in named_fns.items()),
            weight=_entries_weight(named_fns, weight, bool(fns)),
            multi=fns,
        )

    @classmethod
    def from_dict(
        cls,
        named_fns: Mapping[str, Any],
        *,
        prefix: str = "",
        postfix: str = "",
        weight: WeightFn | None = None,
    ) -> MetricCollection[Any, Any]:
        """A collection from a mapping of names to callables (names need not be identifiers).

        Args:
            named_fns: callables of ``(outputs, targets)`` (or ``Metric``s) by name.
            prefix: put before every name ``compute()`` reports.
            postfix: put after every name ``compute()`` reports.
            weight: a callable of ``(outputs, targets)`` returning each batch's weight.

        Example:
            >>> import torchtally as tt
            >>> tt.MetricCollection.from_dict({'Mean Error': lambda o, t: o - t}).names
            ('Mean Error',)
        """
        for name in named_fns:
            check_name(name, cls.__name__)
        _refuse_own_init(cls, "from_dict")
        weight = _entries_weight(named_fns, weight, False)
        entries = (_entry(name, fn) for name, fn in named_fns.items())
        collection = _collection(entries, weight, cls=cls)
        if prefix or postfix:
            return collection.renamed(prefix=prefix, postfix=postfix)
        return collection

    def renamed(self, *, prefix: str = "", postfix: str = "") -> MetricCollection[Any, Any]:
        """The same collection (fresh state) reporting its names with a prefix and a postfix.

        A subclass's collection stays of its class: its ``aggregation`` and
        ``finalize`` apply to the renamed one too. One whose class defines its
        own ``__init__`` is copied (then reset), so that what that ``__init__``
        set is kept too; the callables are then copies as well.

        Example:
            >>> import torchtally as tt
            >>> train = tt.MetricCollection(MAE=lambda o, t: (o - t).abs())
            >>> validation = train.renamed(prefix='val/')
            >>> validation.reported_names
            ('val/MAE',)
            >>> validation  # its repr (and its error messages) show the affixes
            MetricCollection['MAE'], prefix='val/'
        """
        for option, value in (("prefix", prefix), ("postfix", postfix)):
            if not isinstance(value, str):
                raise InvalidArgumentError(
                    f"MetricCollection: {option} must be a string, found {type(value).__name__}"
                )
            if not showable(value):  # it goes into every name: see check_name
                raise InvalidNameError(
                    f"MetricCollection: {option} must be printable (no newline, tab or other "
                    f"control character), found {value!r}"
                )
        if type(self).__init__ is MetricCollection.__init__:
            renamed = _collection(self.entries, self._weight_fn, self._multi, cls=type(self))
        else:  # rebuilt without its __init__, it would lack the settings its hooks may read
            renamed = self.copy()
            renamed.reset()
        renamed._prefix, renamed._postfix = prefix, postfix
        return renamed

    @property
    def reported_names(self) -> tuple[str, ...]:
        """The names ``compute()`` reports: the entries' names with the prefix and postfix."""
        return tuple(f"{self._prefix}{name}{self._postfix}" for name in self.names)

    @override
    def _finalized(self, label: str, values: dict[str, Tensor]) -> dict[str, Tensor]:
        # The affixes go on after finalize(), so that a subclass's override keeps them.
        values = super()._finalized(label, values)
        if not (self._prefix or self._postfix):
            return values
        return {self.reported_name(name): value for name, value in values.items()}

    @override
    def reported_name(self, name: str) -> str:
        return f"{self._prefix}{name}{self._postfix}"

    @override
    def _label(self) -> str:
        # The affixes name the values it reports: a train and a validation collection differ.
        affixes = "".join(
            f", {option}={value!r}"
            for option, value in (("prefix", self._prefix), ("postfix", self._postfix))
            if value
        )
        return super()._label() + affixes

    @override
    def higher_is_better_for(self, name: str) -> bool | None:
        prefix, postfix = self._prefix, self._postfix
        if (prefix or postfix) and name.startswith(prefix) and name.endswith(postfix):
            bare = name[len(prefix) : len(name) - len(postfix)]
            if bare in self._entries:
                name = bare
        return super().higher_is_better_for(name)

    @property
    def higher_is_better(self) -> dict[str, bool | None]:
        """Direction of each value by name."""
        return {name: entry.higher_is_better for name, entry in self._entries.items()}

    @override
    def __or__(self, other: object) -> Objective[Any, Any]:
        return _union(self, other)


def _entries_weight(
    named_fns: Mapping[str, Any], weight: WeightFn | None, multi: bool
) -> WeightFn | None:
    r"""A collection's ``weight=`` callable, shared with the ``Metric`` entries that have one.

    A ``Metric`` entry keeps its callable (the collection then has it); entries
    without one (plain callables, dict-valued ``multi`` callables, ``Metric``\ s
    without one) take the collection's, so they must agree with it.
    """
    own = [
        fn._weight_fn
        for fn in named_fns.values()
        if isinstance(fn, Metric) and fn._weight_fn is not None
    ]
    if not own:
        return weight
    taking = multi or len(own) < len(named_fns)  # entries weighted by the collection's callable
    shared = [*own, weight] if weight is not None or taking else own
    return shared_weight_fn(shared, "MetricCollection")


def _entry(name: str, fn: Any) -> NamedCallable:
    """A collection's entry from a keyword argument: a callable, or a ``Metric`` renamed."""
    if isinstance(fn, Metric):
        (entry,) = fn.entries
        return NamedCallable(name, entry.fn, entry.higher_is_better, entry.aggregation)
    if isinstance(fn, Objective) or not callable(fn):
        what = "an objective" if isinstance(fn, Objective) else type(fn).__name__
        raise InvalidArgumentError(
            f"MetricCollection: {name!r} must be a callable of (outputs, targets) (or a Metric), "
            f"found {what}; join objectives with | instead"
        )
    return NamedCallable(name, fn)


class Metric(CallableObjective[OutputT, TargetT]):
    """One metric from a callable of ``(outputs, targets)``.

    The callable returns per-sample values of shape ``(B,)`` (preferred: exact
    weighting) or a scalar that is already a batch mean.

    Args:
        fn: the callable.
        name: the value's name (default: the callable's ``__name__``).
        higher_is_better: direction of the value (``None``: no direction).
        aggregation: ``'mean'`` (batch-weighted, default), ``'sum'``, ``'min'`` or ``'max'``.
        weight: a callable of ``(outputs, targets)`` returning each batch's weight.

    Example:
        >>> import torch
        >>> import torchtally as tt
        >>> from torch.nn.functional import mse_loss
        >>> mse = tt.Metric(mse_loss, name='MSE', higher_is_better=False)
        >>> _ = mse.update(torch.zeros(3), torch.ones(3))   # scalar mean over 3 samples
        >>> _ = mse.update(torch.zeros(1), 4 * torch.ones(1))
        >>> mse.compute()   # (3 * 1 + 1 * 16) / 4
        {'MSE': tensor(4.7500)}
    """

    def __init__(
        self,
        fn: Callable[[OutputT, TargetT], Any],
        name: str | None = None,
        higher_is_better: bool | None = None,
        *,
        aggregation: str | type[Accumulator] = "mean",
        weight: WeightFn | None = None,
    ) -> None:
        if not callable(fn):
            raise InvalidArgumentError(
                f"Metric: expected a callable of (outputs, targets), found {fn!r}"
            )
        name = default_name(fn, "Metric") if name is None else check_name(name, "Metric")
        super().__init__((NamedCallable(name, fn, higher_is_better, aggregation),), weight=weight)

    @property
    def name(self) -> str:
        """The metric's name."""
        return next(iter(self._entries))

    @property
    def fn(self) -> MetricFn:
        """The metric's callable."""
        return next(iter(self._entries.values())).fn

    @property
    def higher_is_better(self) -> bool | None:
        """Direction of the metric (``None``: no direction)."""
        return next(iter(self._entries.values())).higher_is_better

    @override
    def _label(self) -> str:
        return f"Metric {next(iter(self._entries))!r}"

    @override
    def __or__(self, other: object) -> Objective[Any, Any]:
        return _union(self, other)


def _collection(
    entries: Iterable[NamedCallable],
    weight: WeightFn | None = None,
    multi: Iterable[MetricFn] = (),
    *,
    cls: type[MetricCollection[Any, Any]] = MetricCollection,
) -> MetricCollection[Any, Any]:
    """A collection of class ``cls`` (its hooks kept) built without calling its ``__init__``."""
    collection: MetricCollection[Any, Any] = cls.__new__(cls)
    collection._prefix, collection._postfix = "", ""
    CallableObjective.__init__(collection, entries, weight=weight, multi=multi)
    return collection


def _refuse_own_init(cls: type[MetricCollection[Any, Any]], method: str) -> None:
    """Refuse to rebuild a subclass whose own ``__init__`` sets what its hooks may read."""
    if cls.__init__ is not MetricCollection.__init__:
        raise InvalidArgumentError(
            f"{cls.__name__}.{method}: {cls.__name__} defines its own __init__, whose settings "
            f"a collection rebuilt without calling it would lack (its finalize() could report "
            f"other values); build it with {cls.__name__}(..., prefix=..., postfix=...)"
        )


def _affixed(objective: object) -> bool:
    """Whether ``objective`` is a collection that reports its names with a prefix or postfix."""
    return isinstance(objective, MetricCollection) and bool(objective._prefix or objective._postfix)


def _union(first: CallableObjective[Any, Any], other: object) -> Objective[Any, Any]:
    """``first | other`` for a ``Metric`` or ``MetricCollection``: one collection of both's entries.

    Only for two of exactly these classes, neither a loss nor a collection
    with a prefix or postfix (one merged collection would report every name
    under one naming); the new collection starts with fresh state. Anything
    else joins as any callable objective does (``CallableObjective.__or__``),
    each part keeping the names it reports.
    """
    plain = (Metric, MetricCollection)
    if (
        is_loss(other)
        or is_loss(first)
        or type(first) not in plain
        or type(other) not in plain
        or _affixed(first)
        or _affixed(other)
    ):
        return CallableObjective.__or__(first, other)
    assert isinstance(other, CallableObjective)
    weight = shared_weight_fn((first._weight_fn, other._weight_fn), "MetricCollection")
    return _collection(
        merge_named_callables(first.entries, other.entries, "MetricCollection").values(),
        weight,
        (*first._multi, *other._multi),
    )

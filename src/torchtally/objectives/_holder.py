"""The hooks of an objective: those its mixins read, and those a subclass may not override.

:class:`~torchtally.objectives._syncing.SyncHooks` and
:class:`~torchtally.objectives._persistence.Persistence` are written apart
from :class:`~torchtally.objectives.Objective` and work on what it provides;
this declares that once, for the type checker. :func:`refuse_renamed_hooks`
refuses the hooks of DRYTorch and torchtally 0.1 that torchtally does not call;
:func:`finalized`, :func:`checked_accumulator` and :func:`checked_declared_names`
call the public hooks and refuse what torchtally cannot use;
:func:`refuse_contradicting_aggregation` refuses a class attribute
``aggregation`` that a callable's own aggregation would silently override.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import warnings
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from torch import Tensor

from torchtally._origin import user_stacklevel
from torchtally.aggregation import Accumulator, accumulator_class
from torchtally.errors import (
    HookError,
    InvalidArgumentError,
    MetricCallError,
    TorchTallyError,
    UnusedAggregationWarning,
)
from torchtally.objectives._ledger import Ledger

__all__ = [
    "LedgerHolder",
    "checked_accumulator",
    "checked_declared_names",
    "finalized",
    "guard_calculate",
    "refuse_contradicting_aggregation",
    "refuse_renamed_hooks",
    "warn_unused_aggregations",
]


class LedgerHolder:
    """An object whose state lives in a ledger (declarations only: ``Objective`` provides them)."""

    if TYPE_CHECKING:

        @property
        def _ledger(self) -> Ledger: ...

        @property
        def learns_names(self) -> bool: ...

        def declared_names(self) -> tuple[str, ...]: ...

        def accumulator_for(self, name: str) -> type[Accumulator]: ...


_RENAMED_HOOKS = {
    "_get_aggregator": (
        "set the class attribute aggregation ('max', an Accumulator class, or a dict of them by "
        "name), or override accumulator_for(self, name) to return an Accumulator class"
    ),
    "_compute": "override finalize(self, values), which turns aggregated values into reported ones",
    "_declared_names": "override declared_names(self)",
}
"""Hooks of DRYTorch and torchtally 0.1, and what to write instead."""


def refuse_renamed_hooks(cls: type) -> None:
    """Refuse a class that overrides a hook torchtally does not call (its values would be wrong).

    Raises:
        HookError: ``cls`` itself defines one of DRYTorch's or torchtally 0.1's hooks.
    """
    for hook, instead in _RENAMED_HOOKS.items():
        if hook in cls.__dict__:
            raise HookError(
                f"{cls.__name__} overrides {hook}(), a hook of DRYTorch and torchtally 0.1 "
                f"that torchtally does not call (its values would be aggregated as the default "
                f"mean, silently); {instead}"
            )


def guard_calculate(cls: type) -> None:
    """Make a user class's own ``calculate`` raise the library's error, naming the objective.

    Wrapped once, when the class is defined (torchtally's own classes raise
    their errors themselves): an error the user's code raises comes as
    :class:`~torchtally.errors.MetricCallError` naming the objective, with the
    original chained as ``__cause__``, wherever ``calculate`` is called from
    (``update``, a loss's ``forward``, a join). Errors of the library pass
    through. A refused batch changes nothing: nothing is kept before
    ``calculate`` returns.
    """
    calculate = cls.__dict__.get("calculate")
    if (
        not inspect.isfunction(calculate)
        or getattr(calculate, "__isabstractmethod__", False)
        or getattr(calculate, "_guarded", False)
        or cls.__module__.partition(".")[0] == "torchtally"
    ):
        return
    user_calculate: Callable[[Any, Any, Any], Any] = calculate

    @functools.wraps(user_calculate)
    def guarded(self: Any, outputs: Any, targets: Any) -> Any:
        try:
            return user_calculate(self, outputs, targets)
        except TorchTallyError:
            raise
        except Exception as error:
            raise MetricCallError(
                f"{self._ledger.label}: calculate() raised {type(error).__name__}: {error}"
            ) from error

    guarded._guarded = True  # type: ignore[attr-defined]
    setattr(cls, "calculate", guarded)  # noqa: B010 - the hook, replaced on the class


def finalized(
    label: str, finalize: Callable[[dict[str, Tensor]], Any], values: dict[str, Tensor]
) -> dict[str, Tensor]:
    """``finalize(values)``, checked: a dict of tensors by (string) name.

    Raises:
        MetricCallError: ``finalize`` raised (chained as ``__cause__``).
        HookError: it returned anything else.
    """
    try:
        result = finalize(values)
    except TorchTallyError:
        raise
    except Exception as error:
        raise MetricCallError(
            f"{label}: finalize() raised {type(error).__name__}: {error} (it was given the "
            f"values {sorted(values)}; before any update only declared_names() are known)"
        ) from error
    if not isinstance(result, Mapping):
        raise HookError(
            f"{label}: finalize() must return a dict of tensors by name, found "
            f"{type(result).__name__}"
        )
    for name, value in result.items():
        if not isinstance(name, str) or not isinstance(value, Tensor):
            raise HookError(
                f"{label}: finalize() must return a dict of tensors by name, found "
                f"{type(name).__name__} {name!r:.60}: {type(value).__name__}"
            )
    return dict(result)


def warn_unused_aggregations(label: str, listed: tuple[str, ...], names: tuple[str, ...]) -> bool:
    """Warn when a per-name aggregation lists names no value was returned under.

    The values returned under other names aggregate as the default mean, so
    a misspelt name turns a sum of counts into a mean without a word. Called
    by ``compute()`` once the objective has data (a name listed for values
    that only some batches return may not have come yet: the message says so).

    Returns:
        Whether it warned.
    """
    unused = [name for name in listed if name not in names]
    if not unused:
        return False
    hints = [
        f"{name!r} (did you mean {close[0]!r}?)" if close else repr(name)
        for name in unused
        for close in [difflib.get_close_matches(name, names, n=1)]
    ]
    warnings.warn(
        UnusedAggregationWarning(
            f"{label}: its aggregation names {', '.join(hints)}, but no value was returned "
            f"under that name; the values returned {list(names)} that it does not name are "
            f"aggregated as the mean. Correct the name (or ignore this if only some batches, "
            f"none of them yet, return it)"
        ),
        stacklevel=user_stacklevel(),
    )
    return True


def refuse_contradicting_aggregation(
    label: str, aggregation: Any, entries: Mapping[str, Any]
) -> None:
    """Refuse a class attribute ``aggregation`` naming another kind for an entry than its own.

    An objective built from named callables aggregates each as its entry says
    (default: the mean); the class attribute decides the names learnt from
    data. Where it names a kind for an entry too (a kind for every name, or a
    dict listing it), the two must agree: one of them would be ignored.

    Args:
        label: the objective, for the message.
        aggregation: the class attribute (``'mean'``, the default, says nothing).
        entries: each entry's own aggregation by name.

    Raises:
        InvalidArgumentError: the class attribute and an entry disagree.
    """
    if isinstance(aggregation, str) and aggregation == "mean":
        return
    for name, own in entries.items():
        said = aggregation.get(name) if isinstance(aggregation, Mapping) else aggregation
        if said is not None and accumulator_class(said, label) is not accumulator_class(own, label):
            raise InvalidArgumentError(
                f"{label}: the class attribute aggregation gives {name!r} the kind {said!r}, "
                f"but its callable was given {own!r}; give it aggregation={said!r} "
                f"(tt.Metric(fn, aggregation={said!r})), or name only the learnt values in a "
                f"dict by name"
            )


def checked_accumulator(
    label: str, accumulator_for: Callable[[str], Any], name: str
) -> type[Accumulator]:
    """``accumulator_for(name)``, checked: an :class:`~torchtally.aggregation.Accumulator` class.

    Raises:
        HookError: it returned anything else.
    """
    cls = accumulator_for(name)
    if not (isinstance(cls, type) and issubclass(cls, Accumulator)):
        raise HookError(
            f"{label}: accumulator_for({name!r}) must return an Accumulator subclass (Mean, "
            f"Sum, Min, Max, Cat or your own), found {type(cls).__name__} {cls!r:.60}"
        )
    return cls


def checked_declared_names(label: str, names: Any) -> tuple[str, ...]:
    """The result of ``declared_names()``, checked: a tuple or list (of names), not a string.

    Raises:
        HookError: it returned anything else (a string would declare each of its letters).
    """
    if not isinstance(names, (tuple, list)):
        raise HookError(
            f"{label}: declared_names() must return a tuple of names, found "
            f"{type(names).__name__} {names!r:.60}"
        )
    return tuple(names)

"""The input rules of torchtally, each written once.

Every objective, loss and adapter reads its inputs through these helpers:
how big a batch is (:func:`batch_size`), what a ``weight=`` may be
(:func:`batch_weight`), how a callable's result becomes a tensor
(:func:`as_value_tensor`) or a dict of tensors (:func:`normalize_result`),
what a name may be (:func:`check_name`, :func:`default_name`), which error
a failing user callable becomes (:func:`callable_error`, raised by
:func:`call_each` for every objective built from callables) and which devices a
state may move to (:func:`usable_device`). The rules for batches and their
weights are written in :mod:`torchtally._batches`, those for what callables
return in :mod:`torchtally._results`, what a name may be in
:mod:`torchtally._names`; all are named here too. Nothing here imports
another torchtally module but those three and :mod:`torchtally.errors`.

Example:
    >>> import torch
    >>> from torchtally._conventions import as_value_tensor, size_and_weight
    >>> size_and_weight(torch.zeros(5, 3), None, 40, 'Metric')  # 5 samples, 40 tokens
    (5, 40.0)
    >>> as_value_tensor(0.25, 'Metric', 'MAE')
    tensor(0.2500, dtype=torch.float64)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from torchtally._batches import (
    Weight,
    WeightFn,
    batch_size,
    batch_weight,
    shared_weight_fn,
    size_and_weight,
)
from torchtally._names import check_name, default_name, showable
from torchtally._results import (
    FORMS_HINT,
    as_value_tensor,
    merge_results,
    normalize_result,
    real_number,
    unique_names,
    values_dict,
)
from torchtally.errors import (
    InvalidArgumentError,
    MetricCallError,
)

__all__ = [
    "FORMS_HINT",
    "MetricFn",
    "Weight",
    "WeightFn",
    "as_value_tensor",
    "batch_size",
    "batch_weight",
    "call_each",
    "callable_error",
    "check_direction",
    "check_name",
    "default_name",
    "is_objective_like",
    "merge_results",
    "normalize_result",
    "real_number",
    "refuse_stateful_callable",
    "shared_weight_fn",
    "showable",
    "size_and_weight",
    "unique_names",
    "usable_device",
    "values_dict",
]

MetricFn = Callable[[Any, Any], Any]
"""A callable of ``(outputs, targets)`` returning a tensor or a Python number."""

# -- failures of user code ---------------------------------------------------------------------


def callable_error(owner: str, name: str, error: Exception) -> MetricCallError:
    """The library's error for a user callable that raised: names the objective and the value.

    Raise it ``from error`` so the original stays chained as ``__cause__``.

    Example:
        >>> from torchtally._conventions import callable_error
        >>> print(callable_error('Metric', 'MAE', ZeroDivisionError('division by zero')))
        Metric: the callable for 'MAE' raised ZeroDivisionError: division by zero
    """
    return MetricCallError(
        f"{owner}: the callable for {name!r} raised {type(error).__name__}: {error}"
    )


def call_each(
    calls: Iterable[tuple[str, MetricFn]], outputs: Any, targets: Any, owner: str
) -> dict[str, Any]:
    """Every named callable's value for one batch, by name, each called once, in order.

    One loop, one try: this runs every step. Values are returned as the
    callables gave them (``update`` converts Python numbers).

    Raises:
        MetricCallError: a callable raised (:func:`callable_error`, naming it).

    Example:
        >>> from torchtally._conventions import call_each
        >>> call_each([('Sum', lambda o, t: o + t), ('Bias', lambda o, t: o - t)], 3, 1, 'Metric')
        {'Sum': 4, 'Bias': 2}
    """
    values: dict[str, Any] = {}
    name = ""
    try:
        for name, fn in calls:
            values[name] = fn(outputs, targets)
    except Exception as error:
        raise callable_error(owner, name, error) from error
    return values


def check_direction(value: Any, owner: str, *, optional: bool) -> bool | None:
    """``higher_is_better`` checked: ``True`` or ``False`` (or ``None`` when ``optional``).

    Raises:
        InvalidArgumentError: anything else (``'yes'``, ``1``).

    Example:
        >>> from torchtally._conventions import check_direction
        >>> check_direction(False, 'Loss', optional=False)
        False
    """
    if value is None and optional:
        return None
    if not isinstance(value, bool):
        expected = "True, False or None" if optional else "True or False"
        raise InvalidArgumentError(
            f"{owner}: higher_is_better must be {expected}, found {type(value).__name__} "
            f"{value!r:.40}"
        )
    return value


def is_objective_like(item: object) -> bool:
    """Whether ``item`` has ``update``, ``compute`` and ``reset`` (what ``|`` can join)."""
    return all(callable(getattr(item, method, None)) for method in ("update", "compute", "reset"))


def refuse_stateful_callable(fn: object, label: str) -> None:
    """Refuse an object keeping its own state where a callable of a value is expected.

    Called per batch, it gives batch values whose size-weighted mean is not
    its epoch value (a macro F1 is no mean over samples), and its state grows.

    Raises:
        InvalidArgumentError: ``fn`` has ``update``, ``compute`` and ``reset``.
    """
    if is_objective_like(fn):
        raise InvalidArgumentError(
            f"{label}: {fn!r:.80} keeps its own state (update, compute, reset), so it is no "
            f"callable of (outputs, targets): the mean of its batch values is not its epoch "
            f"value; join it with | to report its value (metric | obj), or, for a "
            f"differentiable foreign loss (an adapter with forward), make a loss component of "
            f"it with tt.losses.as_loss(obj)"
        )


# -- devices -----------------------------------------------------------------------------------


def usable_device(device: Any, label: str) -> torch.device:
    """``device`` as a :class:`torch.device` a state can live on (checked before any move).

    Every objective's and adapter's ``to()`` asks this first, so a refused move
    changes nothing.
    """
    if isinstance(device, torch.dtype):
        why = "the state keeps the dtypes its values had"
    else:
        try:
            target = torch.device(device)
            torch.empty(0, device=target)  # an unusable device raises here, not half-way through
        except (TypeError, ValueError, RuntimeError, AssertionError) as error:
            why = str(error).splitlines()[0]
        else:
            if target.type != "meta":
                return target
            why = "meta tensors hold no values: the state would be lost"
    raise InvalidArgumentError(
        f"{label}: to() takes a device this process can use, found {device!r} ({why})"
    )

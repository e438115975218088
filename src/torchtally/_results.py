"""What a user callable returned, as tensors: one value, or a foreign metric's result as a dict.

The rules, once each: a value is a tensor or a real Python number
(:func:`as_value_tensor`); a foreign metric's result is a number, a tensor, a
tuple or list of them or a dict with string keys (:func:`normalize_result`);
what ``calculate()`` returns is a mapping (:func:`values_dict`);
two results joined must not share a name (:func:`merge_results`), and leaf
metrics of one class get unique names (:func:`unique_names`). They are named
in :mod:`torchtally._conventions` too, with the other input rules.

Example:
    >>> from torchtally._results import normalize_result
    >>> normalize_result({'MAE': 0.5}, 'errors', 'example')
    {'MAE': tensor(0.5000, dtype=torch.float64)}
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from torchtally._names import check_name
from torchtally.errors import (
    NameConflictError,
    ResultShapeError,
    ResultTypeError,
)

__all__ = [
    "FORMS_HINT",
    "as_value_tensor",
    "merge_results",
    "normalize_result",
    "real_number",
    "unique_names",
    "values_dict",
]

FORMS_HINT = "callables returning tuples, lists or dicts can be wrapped with torchtally.wrap"
_RESULT_FORMS = (
    "a result may be a number, a tensor, a tuple or list of them, or a dict of string keys to them"
)
_INT64 = (-(2**63), 2**63 - 1)


def as_value_tensor(value: Any, owner: str, name: str, hint: str = FORMS_HINT) -> Tensor:
    """A callable's result as a tensor: tensors pass, real Python numbers become 0-d tensors.

    Integers and booleans (NumPy's too) are accepted (counts, hits) and stay
    integers; other real numbers (floats, fractions, NumPy scalars) become float64, so
    that no digit of a Python float is lost. NaN and infinities are kept: they
    are real signals, and checking for them would need a host
    synchronisation every step.

    Raises:
        ResultTypeError: the value is complex, an integer outside int64, or
            neither a tensor nor a real number.

    Example:
        >>> from fractions import Fraction
        >>> from torchtally._conventions import as_value_tensor
        >>> as_value_tensor(Fraction(1, 4), 'Metric', 'score')
        tensor(0.2500, dtype=torch.float64)
    """
    if isinstance(value, Tensor):
        if value.is_complex():
            raise ResultTypeError(
                f"{owner}: {name!r} is a complex tensor ({value.dtype}); averaging would drop "
                f"the imaginary part: return its real part, its absolute value or both"
            )
        if value.layout is not torch.strided:  # copied into dense buffers: say so, not copy_
            raise ResultTypeError(
                f"{owner}: {name!r} is a {str(value.layout).removeprefix('torch.')} tensor; "
                f"return a dense one (.to_dense())"
            )
        return value
    number = real_number(value, owner, name, hint)
    if isinstance(number, float):
        return torch.tensor(number, dtype=torch.float64)
    return torch.tensor(number)


def real_number(value: Any, owner: str, name: str, hint: str = FORMS_HINT) -> bool | int | float:
    """A real number a callable returned, as Python's ``bool``, ``int`` or ``float``.

    The rule :func:`as_value_tensor` applies to what is not a tensor: booleans
    (NumPy's too) stay booleans, integers in int64's range stay integers, other
    real numbers become floats.

    Raises:
        ResultTypeError: as :func:`as_value_tensor`.

    Example:
        >>> from fractions import Fraction
        >>> from torchtally._results import real_number
        >>> [real_number(value, 'Loss', 'A') for value in (True, 3, Fraction(1, 2))]
        [True, 3, 0.5]
    """
    if isinstance(value, bool) or _is_numpy(value, "bool"):  # np.all() returns numpy's
        return bool(value)
    if isinstance(value, numbers.Integral):
        integer = int(value)
        if not _INT64[0] <= integer <= _INT64[1]:
            raise ResultTypeError(
                f"{owner}: {name!r} is the integer {integer}, outside the int64 range a tensor "
                f"can hold; return it as a float"
            )
        return integer
    if isinstance(value, numbers.Real):
        return float(value)
    kind = type(value)
    what = kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__name__}"
    if isinstance(value, numbers.Complex):
        what = "a complex number"
    elif _is_numpy(value, "ndarray"):
        hint = "convert an array with torch.as_tensor"
    raise ResultTypeError(
        f"{owner}: {name!r} must be a tensor or a real Python number, found {what} "
        f"({value!r:.80}); {hint}"
    )


def _is_numpy(value: Any, kind: str) -> bool:
    """Whether ``value`` is NumPy's ``kind`` (``'bool'``, ``'ndarray'``), without importing it."""
    cls = type(value)
    return cls.__module__ == "numpy" and cls.__name__ in (kind, f"{kind}_")


def normalize_result(
    result: Any, name: str, owner: str, *, scalars: bool = False
) -> dict[str, Tensor]:
    """A foreign metric's result as ``dict[str, Tensor]``.

    A number or a tensor becomes ``{name: value}``; a tuple or list becomes
    ``{name_0: ..., name_1: ...}``; a dict keeps its keys, which must be
    non-empty strings. Python numbers become tensors (:func:`as_value_tensor`).

    Args:
        result: what the metric returned.
        name: the name of a single value, and the prefix of a sequence's names.
        owner: how error messages name the metric.
        scalars: require every value to hold one element (returned 0-d).

    Raises:
        InvalidNameError: a dict key is no name (:func:`~torchtally._names.check_name`).
        ResultTypeError: a value is neither a tensor nor a real number.
        ResultShapeError: ``scalars`` is set and a value has more than one element.

    Example:
        >>> from torchtally._conventions import normalize_result
        >>> normalize_result((1, 0.5), 'loss', 'example')
        {'loss_0': tensor(1), 'loss_1': tensor(0.5000, dtype=torch.float64)}
    """
    if isinstance(result, Mapping):
        items = list(result.items())
        label = f"{owner}: a key of the returned dict"  # formatted once, not per key per update
        for key, _ in items:
            check_name(key, label)
    elif isinstance(result, (tuple, list)):
        items = [(f"{name}_{index}", value) for index, value in enumerate(result)]
    else:
        items = [(name, result)]
    normalized: dict[str, Tensor] = {}
    for key, value in items:
        tensor = as_value_tensor(value, owner, key, _RESULT_FORMS)
        if scalars:
            if tensor.numel() != 1:
                raise ResultShapeError(
                    f"{owner}: the value {key!r} must be a scalar (one element), found a tensor "
                    f"of shape {tuple(tensor.shape)}"
                )
            tensor = tensor.reshape(())
        normalized[key] = tensor
    return normalized


def unique_names(base: list[str]) -> list[str]:
    """``base`` with repeats made unique: ``A``, ``A_2``, ``A_3``.

    Example:
        >>> from torchtally._conventions import unique_names
        >>> unique_names(['MSE', 'MAE', 'MSE'])
        ['MSE', 'MAE', 'MSE_2']
    """
    seen: set[str] = set()
    unique: list[str] = []
    for name in base:
        candidate, index = name, 1
        while candidate in seen:
            index += 1
            candidate = f"{name}_{index}"
        seen.add(candidate)
        unique.append(candidate)
    return unique


def merge_results(target: dict[str, Tensor], extra: Mapping[str, Tensor], owner: str) -> None:
    """Add ``extra`` to ``target``; a name present in both is a :class:`NameConflictError`.

    Example:
        >>> import torch
        >>> from torchtally._conventions import merge_results
        >>> values = {'MSE': torch.tensor(1.0)}
        >>> merge_results(values, {'MAE': torch.tensor(2.0)}, 'example')
        >>> sorted(values)
        ['MAE', 'MSE']
    """
    for key, value in extra.items():
        if key in target:
            raise NameConflictError(
                f"{owner}: two values are reported under the name {key!r}; give the metrics "
                f"distinct names"
            )
        target[key] = value


def values_dict(values: Any, owner: str) -> dict[str, Any]:
    """What ``calculate()`` returned, as a dict (any mapping is accepted).

    Raises:
        ResultTypeError: ``values`` is not a mapping.
    """
    if isinstance(values, Mapping):
        return dict(values)
    raise ResultTypeError(
        f"{owner}: calculate() must return a dict of values by name, found {type(values).__name__}"
    )

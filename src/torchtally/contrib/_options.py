"""A wrapped metric's options: what it was built with, compared before a sync or a load.

Two metrics of one class built with other options (``average='macro'`` and
``'micro'``, ``squared=False``) hold states that must not be combined: the
adapters record the options when they are made, save them in their state
and put them in their sync identity.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from torch import Tensor

__all__ = ["differing_options", "options"]

_SIMPLE = (bool, int, float, str, type(None))
_OPTION_ELEMENTS = 4096  # a tensor option up to this size is compared value by value


def options(metric: Any, skip: Iterable[str]) -> dict[str, Any]:
    """A metric's configuration: its public attributes that are not states or in ``skip``.

    What the constructor was given (``average='macro'``, ``num_classes=3``,
    ``squared=False``), as JSON-able values (tuples as lists, a small tensor
    as its values), compared before a sync and a load: two metrics of one
    class with other options hold states that must not be combined.
    """
    skipped = set(skip)
    found: dict[str, Any] = {}
    for name, value in sorted(vars(metric).items()):
        if name.startswith("_") or name in skipped:
            continue
        simple = _option_value(value)
        if simple is not _NOT_AN_OPTION:
            found[name] = simple
    return found


_NOT_AN_OPTION = object()


def _option_value(value: Any) -> Any:
    if isinstance(value, _SIMPLE):
        return value
    if isinstance(value, Tensor):
        if value.numel() > _OPTION_ELEMENTS:
            return [str(value.dtype), list(value.shape)]
        return [str(value.dtype), value.detach().cpu().tolist()]
    if isinstance(value, (tuple, list)):
        parts = [_option_value(part) for part in value]
        return _NOT_AN_OPTION if any(p is _NOT_AN_OPTION for p in parts) else parts
    return _NOT_AN_OPTION


def differing_options(expected: Mapping[str, Any], found: Any) -> str | None:
    """What differs between two metrics' :func:`options` (``None``: nothing)."""
    if not isinstance(found, Mapping):
        return f"options must be a dict, found {type(found).__name__}"
    missing = "<missing>"
    differences = [
        f"{name}: expected {expected.get(name, missing)!r}, found {found.get(name, missing)!r}"
        for name in sorted(set(expected) | set(found))
        if expected.get(name, _NOT_AN_OPTION) != found.get(name, _NOT_AN_OPTION)
    ]
    return "; ".join(differences) or None

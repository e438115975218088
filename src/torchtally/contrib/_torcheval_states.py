"""A torcheval metric's state: loading a saved one (checked first, then put into a copy).

For :class:`~torchtally.contrib.torcheval.TorchEvalAdapter`'s
``load_state_dict``: every metric's stored state is checked against the
kind of state the metric holds and loaded into a copy, so that the adapter
can swap all its metrics at once or change none; and whether a state moved
from its defaults (torcheval keeps no update count). Imported by
:mod:`torchtally.contrib.torcheval` alone, after torcheval itself.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from torcheval.metrics import Metric as TorchEvalMetric

from torchtally.contrib._adapter import options

__all__ = ["loaded_copy", "metric_options", "moved_from_defaults"]


def metric_options(metric: TorchEvalMetric[Any]) -> dict[str, Any]:
    """A metric's constructor options (``average``, ``num_classes``): its non-state attributes."""
    return options(metric, metric._state_name_to_default)


def loaded_copy(metric: TorchEvalMetric[Any], state: Any) -> TorchEvalMetric[Any]:
    """A copy of ``metric`` holding the saved ``state`` (``metric`` is not changed).

    Raises:
        TypeError, ValueError: ``state`` is not a dict of states of the kinds
            ``metric`` holds (tensors, lists of tensors); torcheval's own
            refusals (``RuntimeError``, ``KeyError``) pass through. The adapter
            turns each into a ``StateDictError``.
    """
    if not isinstance(state, Mapping):
        raise TypeError(f"expected a dict of states, found {type(state).__name__}")
    for name, value in state.items():
        _check_like(getattr(metric, name, None), value, name)
    memo: dict[int, Any] = {}  # the metric's own state tensors are not copied, but replaced
    for name in metric._state_name_to_default:
        held = getattr(metric, name)
        memo[id(held)] = held
    clone = copy.deepcopy(metric, memo)
    clone.load_state_dict(dict(state), strict=True)  # replaces (never writes into) every state
    return clone.to(metric.device)


def _check_like(current: Any, stored: Any, name: str) -> None:
    """A stored torcheval state must be of the kind of the current one (shapes follow the data)."""
    if isinstance(current, Tensor):
        if not isinstance(stored, Tensor):
            raise ValueError(f"state {name!r} must be a tensor, found {type(stored).__name__}")
    elif isinstance(current, list) and not (
        isinstance(stored, list) and all(isinstance(part, Tensor) for part in stored)
    ):
        raise ValueError(f"state {name!r} must be a list of tensors, found {type(stored).__name__}")


def moved_from_defaults(metric: TorchEvalMetric[Any]) -> bool:
    """Whether a state of ``metric`` differs from its default (it saw data; reads values)."""
    return any(
        _differs(getattr(metric, name), default)
        for name, default in metric._state_name_to_default.items()
    )


def _differs(value: Any, default: Any) -> bool:
    if isinstance(default, Tensor):
        return not (
            isinstance(value, Tensor)
            and value.shape == default.shape
            and torch.equal(value.to(default.device), default)
        )
    if isinstance(default, (list, tuple)):
        return (
            not isinstance(value, (list, tuple))
            or len(value) != len(default)
            or any(_differs(part, base) for part, base in zip(value, default, strict=True))
        )
    if isinstance(default, Mapping):
        return (
            not isinstance(value, Mapping)
            or value.keys() != default.keys()
            or any(_differs(value[key], base) for key, base in default.items())
        )
    return bool(value != default)

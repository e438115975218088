"""``compute_metrics``: the computed values of any objectives as plain floats, for loggers."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from torchtally.errors import NameConflictError, ResultTypeError

__all__ = ["compute_metrics"]


_EXACT_FLOAT = 2**53  # every integer up to this magnitude is a float64


def compute_metrics(*objectives: Any, prefix: str = "") -> dict[str, float]:
    """The computed values of any objectives as one dict of plain Python floats, for loggers.

    Accepts torchtally objectives and foreign ones (torchmetrics, torcheval,
    anything with ``compute``) returning a tensor, a number or a dict of them.
    A value with several elements (per-class scores, say) is flattened: its
    entries are named ``name_0``, ``name_1``, ... (``name_0_1`` for a matrix,
    row by row); a value with no elements (a concatenation that saw nothing)
    is logged as NaN under its name, never left out. An integer value beyond
    2**53 in magnitude (an exact int64 sum or count that no float64 holds) is
    logged as a Python ``int``, exact, not rounded. Each name may appear once
    across the objectives.

    Args:
        *objectives: the objectives, in the order their values should appear.
        prefix: put before every name (``'val/'``).

    Raises:
        NameConflictError: two objectives report the same name.
        ResultTypeError: a value is neither a tensor nor a real number (a tuple
            of curves, say), so no float can stand for it.

    Example:
        >>> import torch
        >>> import torchtally as tt
        >>> mae = tt.Metric(lambda o, t: (o - t).abs(), 'MAE')
        >>> per_class = tt.Metric(lambda o, t: o, 'Score', aggregation='max')
        >>> _ = mae.update(torch.tensor([1.0, 2.0]), torch.zeros(2))
        >>> _ = per_class.update(torch.tensor([0.5, 0.25]), torch.zeros(2))
        >>> tt.compute_metrics(mae, per_class, prefix='val/')
        {'val/MAE': 1.5, 'val/Score': 0.5}
    """
    flat: dict[str, float] = {}
    for objective in objectives:
        result = objective.compute()
        if not isinstance(result, Mapping):
            name = getattr(objective, "name", None) or type(objective).__name__
            result = {str(name): result}
        for name, value in result.items():
            for key, number in _flattened(str(name), value, objective):
                key = f"{prefix}{key}"
                if key in flat:
                    raise NameConflictError(
                        f"compute_metrics: two values are reported under {key!r}; give the "
                        f"metrics distinct names (or the collections a prefix)"
                    )
                flat[key] = number
    return flat


def _flattened(name: str, value: Any, objective: Any) -> list[tuple[str, float]]:
    if not isinstance(value, Tensor):
        try:  # a number of any kind (Python's, NumPy's, a bool)
            return [(name, float(value))]
        except (TypeError, ValueError):
            raise ResultTypeError(
                f"compute_metrics: {name!r} of {type(objective).__name__} is a "
                f"{type(value).__name__}, not a tensor or a real number: log it yourself, or "
                f"pass an objective whose compute() gives numbers"
            ) from None
    if value.numel() == 0:  # nothing seen (an empty concatenation): said, not dropped
        return [(name, math.nan)]
    if value.numel() == 1:
        return [(name, _number(value.item()))]
    if value.ndim == 1:
        return [(f"{name}_{index}", _number(item)) for index, item in enumerate(value.tolist())]
    entries = value.reshape(-1).tolist()
    return [
        (f"{name}_" + "_".join(map(str, index)), _number(item))
        for index, item in zip(_indices(tuple(value.shape)), entries, strict=True)
    ]


def _number(item: float) -> float:
    """``item`` as a float, or as itself where it is an integer no float64 holds exactly."""
    if type(item) is int and abs(item) > _EXACT_FLOAT:
        return item
    return float(item)


def _indices(shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    indices: list[tuple[int, ...]] = [()]
    for size in shape:
        indices = [(*index, position) for index in indices for position in range(size)]
    return indices

"""The states of torchmetrics metrics: installed, counted, saved and loaded.

The writes of torchmetrics' own bookkeeping (``_update_count``, ``_computed``,
``_forward_cache``) and the reads of its declared states (``_reductions``,
``_defaults``) for :class:`~torchtally.contrib.torchmetrics.TorchMetricsAdapter`
are here and in :mod:`torchtally.contrib._torchmetrics_sync`, which sends
them in a sync and rebuilds them over all ranks.

Imported by :mod:`torchtally.contrib.torchmetrics` alone, after torchmetrics
itself (whose absence that module reports with the extra to install).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

import torchmetrics
from torch import Tensor

from torchtally._inference import outside_inference_mode
from torchtally.contrib._options import differing_options
from torchtally.errors import StateDictError

__all__ = [
    "checked_states",
    "counted",
    "install",
    "refusing_leaves",
    "saved_states",
    "take_states",
    "uncount",
]


@outside_inference_mode
def install(leaf: torchmetrics.Metric, states: Mapping[str, Any], count: int) -> None:
    """Give ``leaf`` these states and update count, and forget what it computed from the old.

    A state made under ``torch.inference_mode()`` (a load or merge in a
    validation hook) is given as a normal copy: the leaf's updates change it
    in place, which an inference tensor refuses outside that mode.
    """
    for state_name, value in states.items():
        normal = _normal(value) if isinstance(value, Tensor) else [_normal(p) for p in value]
        setattr(leaf, state_name, normal)
    leaf._update_count = count
    leaf._computed = None
    leaf._forward_cache = None


def _normal(tensor: Tensor) -> Tensor:
    """``tensor``, or a normal copy of it if it is an inference tensor (inference mode off)."""
    return tensor.clone() if tensor.is_inference() else tensor


def take_states(
    leaves: tuple[torchmetrics.Metric, ...], merged: tuple[torchmetrics.Metric, ...]
) -> None:
    """Give every leaf the states and update count of its merged copy (the leaves stay)."""
    for leaf, source in zip(leaves, merged, strict=True):
        states = {name: getattr(source, name) for name in leaf._reductions}
        for name, value in states.items():  # a list state stays a list: updates append to it
            if isinstance(leaf._defaults[name], list) and isinstance(value, Tensor):
                states[name] = [value]
        install(leaf, states, source._update_count)


def counted(leaves: Iterable[torchmetrics.Metric]) -> bool:
    """Whether a leaf counted an update (its count travels with syncs, merges and loads)."""
    return any(leaf._update_count > 0 for leaf in leaves)


def uncount(leaf: torchmetrics.Metric) -> None:
    """Take back the update count torchmetrics adds before an ``update`` that then raised."""
    leaf._update_count = max(leaf._update_count - 1, 0)


def refusing_leaves(leaves: tuple[torchmetrics.Metric, ...], counts: list[int]) -> list[int]:
    """The leaves whose count moved since ``counts``: the last refused the batch (uncounted)."""
    took = [i for i, count in enumerate(counts) if leaves[i]._update_count != count]
    if took:
        uncount(leaves[took[-1]])
    return took


# -- persistence ------------------------------------------------------------------------------


def saved_states(
    leaves: tuple[torchmetrics.Metric, ...], leaves_options: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Every leaf's class, options, update count and states (copies), persistent or not."""
    saved = []
    for leaf, leaf_opts in zip(leaves, leaves_options, strict=True):
        states: dict[str, Any] = {}
        for state_name in leaf._reductions:
            value = getattr(leaf, state_name)
            if isinstance(value, Tensor):
                states[state_name] = value.detach().clone()
            else:
                states[state_name] = [part.detach().clone() for part in value]
        saved.append(
            {
                "class": type(leaf).__name__,
                "options": copy.deepcopy(leaf_opts),  # an edit to it must not reach the adapter
                "count": int(leaf._update_count),
                "states": states,
            }
        )
    return saved


def checked_states(
    leaves: tuple[torchmetrics.Metric, ...],
    leaves_options: list[dict[str, Any]],
    stored: list[Any],
    owner: str,
) -> list[tuple[dict[str, Any], int]]:
    """Every leaf's stored states and update count, checked against the leaves, on their devices.

    Raises:
        StateDictError: the state holds other metrics, options or states than
            ``leaves`` (a state saved before options were saved is not checked for them).
    """
    expected = [(type(leaf).__name__, sorted(leaf._reductions)) for leaf in leaves]
    found = [
        (entry.get("class"), sorted(entry.get("states", {})))
        if isinstance(entry, Mapping) and isinstance(entry.get("states"), Mapping)
        else (type(entry).__name__, [])
        for entry in stored
    ]
    if found != expected:
        raise StateDictError(
            f"{owner}: the state holds metrics {found}, this adapter holds {expected}"
        )
    checked = []
    for index, (leaf, leaf_opts, entry) in enumerate(
        zip(leaves, leaves_options, stored, strict=True)
    ):
        where = f"{owner}: {type(leaf).__name__} (leaf {index})"
        different = differing_options(leaf_opts, entry.get("options", leaf_opts))
        if different is not None:
            raise StateDictError(f"{where}: the state was saved with other options ({different})")
        checked.append(_checked_leaf_state(leaf, entry, where))
    return checked


def _checked_leaf_state(
    leaf: torchmetrics.Metric, entry: Mapping[str, Any], where: str
) -> tuple[dict[str, Any], int]:
    """One leaf's stored states, checked against the leaf's own, on its device."""
    count = entry.get("count")
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise StateDictError(f"{where}: the update count must be an int >= 0, found {count!r}")
    states: dict[str, Any] = {}
    for state_name, value in entry["states"].items():
        default = leaf._defaults[state_name]
        if isinstance(default, Tensor):
            if not isinstance(value, Tensor) or value.shape != default.shape:
                found = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise StateDictError(
                    f"{where}: state {state_name!r} must be a tensor of shape "
                    f"{tuple(default.shape)}, found {found}"
                )
            states[state_name] = value.detach().to(leaf.device, default.dtype, copy=True)
        else:
            if not isinstance(value, list) or not all(isinstance(p, Tensor) for p in value):
                raise StateDictError(
                    f"{where}: state {state_name!r} must be a list of tensors, found "
                    f"{type(value).__name__}"
                )
            states[state_name] = [part.detach().to(leaf.device, copy=True) for part in value]
    return states, count

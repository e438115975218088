"""torcheval metrics' states: sent in a sync and split again, loaded, compared to defaults.

For :class:`~torchtally.contrib.torcheval.TorchEvalAdapter`: the states as a
sync sends them (tensors, and their layout as metadata) and each rank's again;
for ``load_state_dict``, every metric's stored state is checked against the
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

from torchtally.contrib._options import options
from torchtally.errors import SyncError
from torchtally.sync import SyncState

__all__ = [
    "exported_states",
    "loaded_copy",
    "metric_options",
    "moved_from_defaults",
    "split_states",
]


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


# -- sync: the states as sent, and split again ------------------------------------------------


_JSON_KEYS = (str, int, float, bool)


def _json_key(key: Any, where: str) -> Any:
    # bool is an int: both round-trip through JSON unchanged, as do str and float.
    if key is None or isinstance(key, _JSON_KEYS):
        return key
    raise SyncError(
        f"{where}: a dict state has the key {key!r} of type {type(key).__name__}; only str, "
        f"int, float, bool and None keys can be sent between processes"
    )


def exported_states(metrics: Mapping[str, TorchEvalMetric[Any]], owner: str) -> SyncState:
    """Every metric's state dict (after torcheval's own pre-merge step), as a sync sends it.

    Tensors (lists' and dicts' included) travel as tensors; the layout and
    numbers in the metadata.
    """
    entries: list[dict[str, Any]] = []
    tensors: list[Tensor] = []
    for key, metric in metrics.items():
        where = f"{owner}: metric {key!r}"
        metric._prepare_for_merge_state()  # torcheval's own pre-sync step (lists to one tensor)
        states: list[list[Any]] = []
        for state_name, value in metric.state_dict().items():
            if isinstance(value, Tensor):
                states.append([state_name, "tensor", None])
                tensors.append(value)
            elif isinstance(value, list):
                states.append([state_name, "list", len(value)])
                tensors.extend(value)
            elif isinstance(value, dict):
                keys = [_json_key(dict_key, where) for dict_key in value]
                states.append([state_name, "dict", keys])
                tensors.extend(value.values())
            else:  # int or float
                states.append([state_name, "number", value])
        entries.append({"key": key, "class": type(metric).__name__, "states": states})
    return SyncState(meta={"metrics": entries}, tensors=tensors)


def split_states(states: list[tuple[Any, list[Any]]]) -> list[dict[str, dict[str, Any]]]:
    """Every rank's state dict of every metric, from the gathered metadata and tensors.

    Raises:
    SyncError: the ranks hold different metrics or states.
    """
    layouts = [
        [
            (entry["key"], entry["class"], [[name, kind] for name, kind, _ in entry["states"]])
            for entry in meta["metrics"]
        ]
        for meta, _ in states
    ]
    if any(layout != layouts[0] for layout in layouts):
        found = "; ".join(
            f"rank {index}: "
            + ", ".join(f"{key}={cls}{[n for n, _ in entries]}" for key, cls, entries in layout)
            for index, layout in enumerate(layouts)
        )
        raise SyncError(f"from_torcheval: processes hold different metrics or states ({found})")
    per_rank: list[dict[str, dict[str, Any]]] = []
    for meta, tensors in states:
        offset = 0
        rank_states: dict[str, dict[str, Any]] = {}
        for entry in meta["metrics"]:
            state: dict[str, Any] = {}
            for state_name, kind, info in entry["states"]:
                if kind == "tensor":
                    state[state_name] = tensors[offset]
                    offset += 1
                elif kind == "list":
                    state[state_name] = list(tensors[offset : offset + info])
                    offset += info
                elif kind == "dict":
                    values = tensors[offset : offset + len(info)]
                    state[state_name] = dict(zip(info, values, strict=True))
                    offset += len(info)
                else:
                    state[state_name] = info
            rank_states[entry["key"]] = state
        per_rank.append(rank_states)
    return per_rank

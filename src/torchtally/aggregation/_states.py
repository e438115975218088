"""State tensors: how each is declared (:class:`StateSpec`), and the one place states combine.

An accumulator's state is a few ``(rows, width)`` tensors, each combining with
its counterpart by one of :data:`MERGE_RULES`. :func:`combine_states` applies
those rules to any number of states at once; ``Accumulator.merge``,
``Objective.merge_state`` and ``sync_all`` all combine through it. A change to
some rows of a state (an add or a merge into them) goes through
:func:`change_rows`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor
from typing_extensions import Self

from torchtally._inference import outside_inference_mode

__all__ = [
    "MERGE_RULES",
    "StateHolder",
    "StateSpec",
    "change_rows",
    "combine_stacked",
    "combine_states",
    "fresh_state",
    "is_exact",
    "nan_where_negative",
    "normal_state",
    "promote",
    "replace_state",
    "two_sum_into",
    "weigh_in_place",
    "weighted_values",
]

MERGE_RULES = ("sum", "twosum", "min", "max", "latest")
"""How two states combine: add them; add compensated ``(high, low)`` pairs exactly; keep
the smaller or the larger; keep the later one (``latest``: per-rank bookkeeping)."""


@dataclass(frozen=True)
class StateSpec:
    """One state tensor of an accumulator: shape ``(rows, width)``, its dtype and merge rule.

    Attributes:
        name: the key of the tensor in exports and state dicts.
        width: columns per row.
        dtype: the tensor's dtype.
        rule: one of :data:`MERGE_RULES`.
        fill: the value of a row that has seen nothing.

    Example:
        >>> import torch
        >>> from torchtally.aggregation import Mean
        >>> tuple((spec.name, spec.width, spec.rule) for spec in Mean.states)
        (('samples', 1, 'sum'), ('total', 2, 'twosum'), ('weight', 1, 'sum'), ('last', 3, 'latest'))
    """

    name: str
    width: int
    dtype: torch.dtype
    rule: str
    fill: float = 0.0


class StateHolder:
    """What an accumulator holds and does, declared once for its parts written in other modules.

    Declarations only, for the type checker (``Accumulator`` provides them):
    the kind and its declared :attr:`states`, the rows with their labels and
    dtypes, the device and the state tensors (``None`` before any value), and
    the methods of ``Accumulator`` its mixins call.
    """

    kind: ClassVar[str]
    states: ClassVar[tuple[StateSpec, ...]]
    rows: int
    labels: list[str]
    dtypes: list[torch.dtype | None]
    device: torch.device | None
    _state: dict[str, Tensor] | None

    if TYPE_CHECKING:

        def __init__(self, rows: int = 1) -> None: ...

        def copy(self) -> Self: ...

        def _ensure_state(self, device: torch.device) -> None: ...

        def _promote_rows(self, rows: Sequence[int], dtype: torch.dtype) -> None: ...


@outside_inference_mode
def fresh_state(specs: Sequence[StateSpec], rows: int, device: torch.device) -> dict[str, Tensor]:
    """The state of ``rows`` rows that have seen nothing: every tensor filled with its ``fill``."""
    return {
        spec.name: torch.full((rows, spec.width), spec.fill, dtype=spec.dtype, device=device)
        for spec in specs
    }


@outside_inference_mode
def normal_state(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Copies of ``state``'s tensors that are normal tensors (not inference tensors)."""
    return {name: tensor.clone() for name, tensor in state.items()}


def nan_where_negative(weights: Tensor) -> Tensor:
    """``weights`` with every negative entry NaN.

    A tensor weight is never read on the host, so a negative one cannot be
    refused; a NaN in what it weighs shows it instead of a wrong mean or sum.
    """
    return weights.masked_fill(weights < 0, math.nan)


def weighted_values(values: Tensor, weights: Tensor) -> Tensor:
    """``values * weights`` in float64, where an entry of weight 0 counts 0, NaN or inf as it is.

    A weight of 0 leaves an entry out; ``NaN x 0`` and ``inf x 0`` would be NaN.
    An entry of negative weight is NaN (:func:`nan_where_negative`).
    """
    return weigh_in_place(values.to(torch.float64, copy=True), weights)


def weigh_in_place(wide: Tensor, weights: Tensor) -> Tensor:
    """:func:`weighted_values` of float64 ``wide``, computed in ``wide`` itself (returned)."""
    return wide.mul_(nan_where_negative(weights)).masked_fill_(weights == 0, 0.0)


def two_sum(high: Tensor, addend: Tensor) -> tuple[Tensor, Tensor]:
    """``high + addend`` rounded, and its rounding error, exactly (Knuth's TwoSum).

    Where the sum is not finite the error is not defined (``inf - inf``) and
    is 0, so that infinities propagate as torch propagates them.
    """
    summed = high + addend
    virtual = summed - high
    error = (high - (summed - virtual)).add_(addend - virtual)
    return summed, error.nan_to_num_(0.0, 0.0, 0.0)


def two_sum_into(total: Tensor, addend: Tensor) -> None:
    """``total[:, 0] + total[:, 1] += addend``, exactly (:func:`two_sum`), in place.

    ``total`` holds a high word and a low word per row; the rounding error of
    adding to the high word is recovered exactly and kept in the low word.
    """
    high, low = total.unbind(1)
    summed, error = two_sum(high, addend)
    low.add_(error)
    high.copy_(summed)


def is_exact(dtype: torch.dtype) -> bool:
    """Integers and booleans: values whose sums, minima and maxima are reported exactly."""
    return not dtype.is_floating_point and not dtype.is_complex


def promote(first: torch.dtype | None, second: torch.dtype) -> torch.dtype:
    """The dtype of a row that has seen ``first`` (``None``: nothing yet) and then ``second``.

    torch's promotion, except that integers joining floats get a float that holds
    them (torch makes ``int64`` and ``float16`` ``float16``, where 4097 is 4096).

    Example:
        >>> import torch
        >>> promote(torch.int64, torch.float16), promote(torch.int8, torch.bfloat16)
        (torch.float64, torch.bfloat16)
    """
    if first is None or first == second:
        return second
    promoted = torch.promote_types(first, second)
    if promoted.is_floating_point and not (first.is_floating_point and second.is_floating_point):
        integer = second if first.is_floating_point else first
        promoted = torch.promote_types(promoted, _HOLDING.get(integer, promoted))
    return promoted


_HOLDING = {torch.int16: torch.float32, torch.int32: torch.float64, torch.int64: torch.float64}
"""The narrowest float holding every value of an integer dtype (``int64``: up to 2**53).

Booleans, ``uint8`` and ``int8`` fit in ``float16`` and ``bfloat16`` alike.
"""


def _two_sum_all(stacked: Tensor) -> Tensor:
    """The compensated sum of ``(n, rows, 2)`` ``(high, low)`` pairs, as ``(rows, 2)``.

    Pairs are added as a balanced tree of TwoSums, so ``n`` states take
    ``log2(n)`` vectorised steps, each exact up to the low words' own rounding.
    """
    high, low = stacked[..., 0], stacked[..., 1]
    while high.shape[0] > 1:
        if high.shape[0] % 2:
            high = torch.cat([high, torch.zeros_like(high[:1])])
            low = torch.cat([low, torch.zeros_like(low[:1])])
        first, second = high[0::2], high[1::2]
        summed = first + second
        virtual = summed - first
        error = (first - (summed - virtual)) + (second - virtual)
        low = low[0::2] + low[1::2] + error.nan_to_num(0.0, 0.0, 0.0)
        high = summed
    return torch.stack([high[0], low[0]], 1)


def combine_states(
    specs: Sequence[StateSpec], states: Sequence[Mapping[str, Tensor]]
) -> dict[str, Tensor]:
    """Combine the states of any number of accumulators holding the same rows, in one pass.

    Each state tensor combines by its declared rule (:data:`MERGE_RULES`);
    ``latest`` takes the last state whose row has seen anything. This is the
    one place states combine: ``merge``, ``merge_state`` and ``sync_all`` use it.

    Example:
        >>> import torch
        >>> from torchtally.aggregation import Max, combine_states
        >>> parts = [Max(), Max()]
        >>> parts[0].add(torch.tensor([1.0])); parts[1].add(torch.tensor([4.0, 2.0]))
        >>> combined = combine_states(Max.states, [part.state for part in parts])
        >>> combined['samples'], combined['float']
        (tensor([[3]]), tensor([[4.]], dtype=torch.float64))
    """
    return combine_stacked(
        specs, {spec.name: torch.stack([state[spec.name] for state in states]) for spec in specs}
    )


def combine_stacked(specs: Sequence[StateSpec], stacked: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """:func:`combine_states` of states already stacked: ``(n, rows, width)`` per state."""
    combined: dict[str, Tensor] = {}
    for spec in specs:
        if spec.name not in stacked:  # a state that does not travel (per-rank bookkeeping)
            continue
        parts = stacked[spec.name]
        if spec.rule == "sum":
            combined[spec.name] = parts.sum(0)
        elif spec.rule == "twosum":
            combined[spec.name] = _two_sum_all(parts)
        elif spec.rule == "min":
            combined[spec.name] = parts.amin(0)
        elif spec.rule == "max":
            combined[spec.name] = parts.amax(0)
        else:  # latest: from the last state whose row has seen anything
            took = stacked["samples"] > 0  # (n, rows, 1)
            order = torch.arange(took.shape[0], device=took.device).view(-1, 1, 1)
            last = torch.where(took, order, 0).amax(0, keepdim=True)
            combined[spec.name] = parts.gather(0, last.expand(1, *parts.shape[1:]))[0]
    return combined


def change_rows(
    state: dict[str, Tensor],
    rows: Sequence[int] | None,
    change: Callable[[dict[str, Tensor]], None],
) -> None:
    """Apply ``change`` (a function of a state dict, in place) to all rows or to ``rows``.

    Evenly spaced rows are changed through views, in place; other rows are
    gathered, changed and written back.
    """
    if rows is None:
        change(state)
        return
    evenly = _as_slice(rows)
    if evenly is not None:
        views = {name: tensor[evenly] for name, tensor in state.items()}
        part = views.copy()  # not dict(views): dynamo runs that through a guarded polyfill
        change(part)
        for name, tensor in part.items():
            if tensor is not views[name]:  # a change that rebinds an entry: copy it back
                state[name][evenly] = tensor
        return
    first = next(iter(state.values()))
    index = torch.tensor(list(rows), dtype=torch.int64, device=first.device)
    part = {name: tensor.index_select(0, index) for name, tensor in state.items()}
    change(part)
    for name, tensor in part.items():
        state[name].index_copy_(0, index, tensor)


def replace_state(state: dict[str, Tensor], combined: Mapping[str, Tensor]) -> None:
    """Copy ``combined`` into ``state``'s tensors, in place."""
    for name, tensor in combined.items():
        state[name].copy_(tensor)


def _as_slice(rows: Sequence[int]) -> slice | None:
    """``rows`` as a slice when they are evenly spaced and ascending (a view selects them)."""
    first = rows[0]
    if len(rows) == 1:
        return slice(first, first + 1)
    step = rows[1] - first
    if step <= 0 or list(rows) != list(range(first, rows[-1] + 1, step)):
        return None
    return slice(first, rows[-1] + 1, step)

"""Planning: a batch's values checked once and laid out as a :class:`~._plan.Plan`.

:func:`make_plan` validates one batch's values (dtypes the state can hold,
shapes, one device, values a :class:`~torchtally.aggregation.Cat` keeps) for
the rows a ledger has, and groups them by dtype into the records the queue
copies and the parts the fold adds; :func:`plan_key` says which later
batches the plan fits. A ledger calls both when a batch's form is new.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from torchtally._dtypes import refuse_unheld
from torchtally._origin import user_stacklevel
from torchtally.aggregation import Accumulator, Cat
from torchtally.errors import (
    DeviceMismatchError,
    ResultShapeError,
    ScalarWeightWarning,
    WeightError,
)
from torchtally.objectives._plan import SCALAR, VECTOR, Group, Kept, Part, Plan, Target

__all__ = ["check_weight", "make_plan", "plan_key", "warn_scalar_weighted"]


def plan_key(values: Mapping[str, Tensor], size: int) -> Any:
    """What a plan depends on besides the rows and the state's device.

    Names, dtypes, shape classes (the leading dimension marked when it is
    the batch size) and devices: batches with the same key are valid or not
    alike, and become blocks alike.
    """
    forms = tuple((v.dtype, _shape_class(v, size), v.device) for v in values.values())
    return (tuple(values), forms)


def _shape_class(value: Tensor, size: int) -> tuple[Any, ...]:
    shape = tuple(value.shape)
    if shape and shape[0] == size:
        return ("batch", *shape[1:])
    return shape


def make_plan(
    values: Mapping[str, Tensor],
    size: int,
    *,
    label: str,
    rows: Mapping[str, tuple[Accumulator, int]],
    accumulator_for: Callable[[str], type[Accumulator]],
    device: torch.device | None,
) -> Plan:
    """Classify every value (raising the library's errors on a wrong one) and group them.

    A value must be a scalar or ``(B,)`` (any ``(B, ...)`` for a concatenation),
    of a dtype states hold (:data:`~torchtally._dtypes.DTYPES`), on the
    state's device.

    ``rows`` are the ledger's rows by name, ``device`` the device its state
    lives on (``None``: none yet). Names without a row give a plan for
    checking only (it targets nothing for them).
    """
    device = _device(values, device, label)
    keys: dict[tuple[torch.dtype, tuple[int, ...] | None], list[tuple[int, Any]]] = {}
    kept: list[Kept] = []
    scalar_totals = keeps_values = False
    scalar_means: list[str] = []
    for position, (name, value) in enumerate(values.items()):
        refuse_unheld(value.dtype, label, name)
        held = rows.get(name)
        cls = type(held[0]) if held is not None else accumulator_for(name)
        if issubclass(cls, Cat):
            _check_kept(name, value, size, held, label)
            keeps_values = True
            if held is not None:
                kept.append(Kept(position, held[0], held[1]))
            continue
        vector = value.ndim == 1 and value.shape[0] == size
        if not vector and value.numel() != 1:
            raise ResultShapeError(
                f"{label}: expected {name!r} to be a scalar or per-sample values of "
                f"shape ({size},) for a batch of {size}, found shape {tuple(value.shape)}"
                f"{_SIZE_FROM}"
            )
        if not vector and not cls.scalar_is_mean and cls.kind == "sum":
            scalar_totals = True
        elif not vector and cls.scalar_is_mean:
            scalar_means.append(name)
        # Vectors and scalars of at most one dimension share a record; odder scalars do not.
        odd = None if value.ndim <= 1 else tuple(value.shape)
        keys.setdefault((value.dtype, odd), []).append((position, None if vector else value.shape))
    names = list(values)
    groups = tuple(
        _group(dtype, odd is None, members, names, rows) for (dtype, odd), members in keys.items()
    )
    return Plan(
        tuple(names), groups, tuple(kept), device, scalar_totals, keeps_values, tuple(scalar_means)
    )


def warn_scalar_weighted(plan: Plan, label: str) -> None:
    """Warn that per-sample weights only sum for the plan's scalar batch means.

    See :class:`~torchtally.errors.ScalarWeightWarning`; the caller warns once per objective.
    """
    names = ", ".join(map(repr, plan.scalar_means))
    one = len(plan.scalar_means) == 1
    warnings.warn(
        f"{label}: {names} {'is' if one else 'are'} one number for the batch (a batch mean), "
        f"so per-sample weights cannot leave samples out of {'it' if one else 'them'}: "
        f"{'it counts' if one else 'they count'} with the weights' sum. Return per-sample "
        f"values (reduction='none') for the weights to apply; if the value already leaves out "
        f"the samples of weight 0, give their count as the batch's weight (weight=w.sum())",
        ScalarWeightWarning,
        stacklevel=user_stacklevel(),
    )


_SIZE_FROM = (
    " (the batch size is the length of a per-sample weight= when one is given, else the "
    "targets' leading dimension)"
)


def _device(values: Mapping[str, Tensor], held: torch.device | None, label: str) -> torch.device:
    """The one device of the values and the state (0-d CPU tensors go anywhere)."""
    devices = {value.device for value in values.values() if value.ndim or value.is_cuda}
    if held is not None:
        devices.add(held)
    if len(devices) > 1:
        raise DeviceMismatchError(
            f"{label}: values arrived on several devices ({sorted(map(str, devices))}); "
            f"keep an objective's values on one device, or call .to(device) (or reset()) "
            f"before feeding values from another device"
        )
    return devices.pop() if devices else torch.device("cpu")


def _check_kept(
    name: str, value: Tensor, size: int, held: tuple[Accumulator, int] | None, label: str
) -> None:
    """A value to concatenate: a scalar or ``(B, ...)``, keeping its trailing shape."""
    if value.ndim and value.shape[0] != size:
        raise ResultShapeError(
            f"{label}: expected {name!r} to be a scalar or to have a leading "
            f"dimension of {size} for a batch of {size}, found shape {tuple(value.shape)}"
            f"{_SIZE_FROM}"
        )
    if held is None:
        return
    accumulator, row = held
    assert isinstance(accumulator, Cat)
    before = accumulator.trailing(row)
    found = tuple(value.shape[1:]) if value.ndim else ()
    if before is not None and before != found:
        raise ResultShapeError(
            f"{label}: {name!r} must keep its trailing shape {before} to be concatenated, "
            f"found {found}"
        )


def _group(
    dtype: torch.dtype,
    record: bool,
    members: list[tuple[int, Any]],
    names: list[str],
    rows: Mapping[str, tuple[Accumulator, int]],
) -> Group:
    """A group of values of one dtype: the vectors first, then the scalars.

    Each kind is laid out accumulator by accumulator and row by row, so that
    a part's lines for one accumulator are a range of its rows (folded
    through views, see ``Accumulator.add``), whatever order the batch has.
    """
    order: dict[int, int] = {}  # accumulators, in the order they first appear
    # An accumulator's rows are made in the order their names enter ``rows``, so a name's
    # place there orders its rows. A row index would do, but compiled with dynamic=True it is
    # a symbolic int, and dynamo cannot sort by one.
    made = {name: place for place, name in enumerate(rows)}

    def by_row(member: tuple[int, Any]) -> tuple[int, int]:
        name = names[member[0]]
        held = rows.get(name)
        if held is None:  # no row yet (a plan for checking only): keep the batch's order
            return (len(names), member[0])
        return (order.setdefault(id(held[0]), len(order)), made[name])

    ordered = sorted(members, key=by_row)
    vectors = [position for position, shape in ordered if shape is None]
    scalars = [(position, tuple(shape)) for position, shape in ordered if shape is not None]
    parts = [
        Part(kind, tuple(found), _targets([names[position] for position in found], rows))
        for kind, found in ((VECTOR, vectors), (SCALAR, [position for position, _ in scalars]))
        if found
    ]
    positions = [*vectors, *(position for position, _ in scalars)]
    return Group(
        dtype=dtype,
        members=tuple(positions),
        shapes=(*[None] * len(vectors), *(shape for _, shape in scalars)),
        record=record,
        everything=positions == list(range(len(names))),
        parts=tuple(parts),
    )


def _targets(names: list[str], rows: Mapping[str, tuple[Accumulator, int]]) -> tuple[Target, ...]:
    """The accumulator rows of a part's lines, accumulator by accumulator."""
    by_accumulator: dict[int, tuple[Accumulator, list[int], list[int]]] = {}
    for line, name in enumerate(names):
        held = rows.get(name)
        if held is None:  # not made yet: a plan for checking only, remade after add_names
            continue
        entry = by_accumulator.setdefault(id(held[0]), (held[0], [], []))
        entry[1].append(held[1])
        entry[2].append(line)
    return tuple(
        Target(
            accumulator,
            None if found == list(range(accumulator.rows)) else tuple(found),
            _lines(lines),
        )
        for accumulator, found, lines in by_accumulator.values()
    )


def _lines(positions: list[int]) -> slice | tuple[int, ...]:
    if positions == list(range(positions[0], positions[0] + len(positions))):
        return slice(positions[0], positions[0] + len(positions))
    return tuple(positions)


def check_weight(plan: Plan, weight: Any, label: str) -> None:
    """Raise unless ``weight`` may weigh a batch of ``plan`` (``label`` names the objective)."""
    if weight is None:
        return
    if plan.scalar_totals:
        raise WeightError(
            f"{label}: a scalar summed value is a batch total and cannot be weighted; "
            f"return per-sample values to weight them, or leave weight= out"
        )
    if plan.keeps_values:
        raise WeightError(
            f"{label}: a 'cat' aggregation keeps every value as it is and cannot weight "
            f"them; leave weight= out"
        )
    if isinstance(weight, Tensor) and weight.device != plan.device:
        raise DeviceMismatchError(
            f"{label}: the weight is on {weight.device}, the values on {plan.device}"
        )

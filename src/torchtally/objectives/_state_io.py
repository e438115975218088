"""An objective's accumulated state as JSON-able metadata plus tensors, and back.

:func:`export_state` writes the accumulators of a ledger's rows, accumulator
by accumulator, with the names of their rows; :func:`import_state` rebuilds
accumulators from that, checking every part against the objective's rules
(names, aggregation kinds, row and tensor counts) and raising
:class:`~torchtally.errors.StateDictError` before anything is used. Neither
touches a ledger: installing the rebuilt accumulators is the ledger's job.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from torchtally._conventions import check_name
from torchtally.aggregation import Accumulator
from torchtally.errors import InvalidNameError, StateDictError

__all__ = ["Rebuilt", "RowMap", "check_name_state", "export_state", "import_state", "row_groups"]

RowMap = Mapping[str, tuple[Accumulator, int]]
"""A ledger's rows: each name's accumulator and row in it."""

Rebuilt = dict[type[Accumulator], tuple[Accumulator, list[str]]]
"""Accumulators read from a state, each with the names of its rows in order."""


def row_groups(
    rows: RowMap, accumulators: Mapping[type[Accumulator], Accumulator]
) -> list[tuple[Accumulator, list[str]]]:
    """Every accumulator with the names of its rows, in row order."""
    found: list[tuple[Accumulator, list[str]]] = []
    for accumulator in accumulators.values():
        held = [(row, name) for name, (owner, row) in rows.items() if owner is accumulator]
        found.append((accumulator, [name for _, name in sorted(held)]))
    return found


def export_state(
    rows: RowMap, accumulators: Mapping[type[Accumulator], Accumulator], updated: bool
) -> tuple[dict[str, Any], list[Tensor]]:
    """The state as JSON-able metadata plus tensors (copies), accumulator by accumulator."""
    parts: list[dict[str, Any]] = []
    tensors: list[Tensor] = []
    for accumulator in accumulators.values():
        meta, state = accumulator.export()
        names = [name for name, (held, _) in rows.items() if held is accumulator]
        parts.append({"names": names, "state": meta, "size": len(state)})
        tensors.extend(state)
    return {"names": list(rows), "updated": updated, "accumulators": parts}, tensors


def import_state(
    meta: Any,
    tensors: Sequence[Any],
    *,
    label: str,
    accumulator_for: Callable[[str], type[Accumulator]],
    device: torch.device | str | None = None,
) -> Rebuilt:
    """Accumulators rebuilt from :func:`export_state`'s output, checked against the rules.

    ``label`` names the objective in errors, ``accumulator_for`` is its
    accumulator class of a name. Raises :class:`StateDictError`.
    """
    if not isinstance(meta, Mapping) or not isinstance(meta.get("accumulators"), list):
        raise StateDictError(
            f"{label}: expected state metadata with an 'accumulators' list, found "
            f"{type(meta).__name__}"
        )
    rebuilt: Rebuilt = {}
    offset = 0
    seen: set[str] = set()
    for part in meta["accumulators"]:
        names = part.get("names") if isinstance(part, Mapping) else None
        size = part.get("size") if isinstance(part, Mapping) else None
        if (
            not isinstance(names, list)
            or not isinstance(size, int)
            or isinstance(size, bool)
            or not 0 <= size <= len(tensors) - offset
        ):
            raise StateDictError(f"{label}: malformed accumulator entry {part!r:.120}")
        for name in names:
            check_name_state(name, label)
            if name in seen:
                raise StateDictError(f"{label}: the name {name!r} appears twice")
            seen.add(name)
        classes = {accumulator_for(name) for name in names}
        kind = part["state"].get("kind") if isinstance(part.get("state"), Mapping) else None
        if len(classes) != 1 or next(iter(classes)).kind != kind:
            expected = {name: accumulator_for(name).kind for name in names}
            raise StateDictError(
                f"{label}: the state aggregates {names} as {kind!r}, this objective as {expected}"
            )
        cls = classes.pop()
        accumulator = cls(rows=0)
        accumulator.load(part["state"], list(tensors[offset : offset + size]), device)
        if accumulator.rows != len(names):
            raise StateDictError(
                f"{label}: the {kind!r} state holds {accumulator.rows} rows for {len(names)} names"
            )
        accumulator.labels = [f"{label} value {name!r}" for name in names]
        offset += size
        rebuilt[cls] = (accumulator, names)
    if offset != len(tensors):
        raise StateDictError(
            f"{label}: the state holds {len(tensors) - offset} tensors no accumulator uses"
        )
    return rebuilt


def check_name_state(name: Any, label: str) -> str:
    """A name read from a state, as :func:`~torchtally._conventions.check_name` takes it.

    Raises:
        StateDictError: a name ``check_name`` refuses.
    """
    try:
        return check_name(name, f"{label}: a name in the state")
    except InvalidNameError as error:
        raise StateDictError(str(error)) from None

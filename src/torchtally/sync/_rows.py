"""Syncing the rows of accumulators: what each rank sends, and the combined values.

An objective whose names are known before any data (the same on every rank)
sends each accumulator by the cheapest route its kind allows:

- **summed** (:meth:`~torchtally.aggregation.Accumulator.summable`: means and
  sums): the states go in the float64 vector that one ``all_reduce`` adds up,
  whose size per rank does not grow with the number of ranks;
- **fixed** (other kinds with declared states: minima, maxima): the states go
  as raw bytes in a block whose layout follows from the rows alone
  (:meth:`~torchtally.aggregation.Accumulator.fixed_bytes`), gathered without
  metadata and combined for all ranks in a few tensor operations;
- **described** (concatenations, and every row of an objective that learns its
  names from the data): an export with its metadata, gathered and combined
  for all ranks at once (:meth:`~torchtally.aggregation.Accumulator.combined`).

Each row also tells, in the added-up vector (or the metadata), the dtypes it
has seen and, for ``dataset_size``, whether its repeated sample was dropped or
had to be kept.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from torchtally.aggregation import Accumulator
from torchtally.errors import IncompatibleStateError, StateDictError, SyncError

__all__ = ["Gathered", "SyncState", "export_rows", "merge_rows"]

_F64 = torch.float64
Groups = Sequence[tuple[Accumulator, list[str]]]
_SUMMED, _FIXED, _DESCRIBED = "summed", "fixed", "described"


@dataclass
class SyncState:
    """What a participant sends.

    Attributes:
        sums: a 1-d float64 tensor added element-wise over the ranks (``None``: none).
        fixed: a 1-d uint8 tensor whose layout every rank shares, gathered (``None``: none).
        meta: JSON-able metadata gathered from every rank (``None``: nothing).
        tensors: tensors gathered with the metadata.
    """

    sums: Tensor | None = None
    fixed: Tensor | None = None
    meta: Any = None
    tensors: list[Tensor] | None = None


@dataclass
class Gathered:
    """What a participant gets back.

    Attributes:
        sums: its part of the added-up vector (``None``: it sent none).
        fixed: every rank's fixed block, ``(ranks, bytes)`` (``None``: it sent none).
        states: every rank's ``(meta, tensors)``, in rank order (an empty list
            when no rank sent any).

    ``fixed`` and ``states`` are ``None`` on a rank that is not the destination
    of ``sync_all(destination=...)``.
    """

    sums: Tensor | None
    states: list[tuple[Any, list[Tensor]]] | None
    fixed: Tensor | None = None


def _route(accumulator: Accumulator, known: bool) -> str:
    if not known or not type(accumulator).states:  # learnt names, or no declared states (Cat)
        return _DESCRIBED
    return _SUMMED if type(accumulator).summable() else _FIXED


def _routed(groups: Groups, known: bool, route: str) -> list[tuple[Accumulator, list[str]]]:
    """The groups taking ``route``, in an order every rank shares (by kind)."""
    found = [(acc, names) for acc, names in groups if _route(acc, known) == route]
    return sorted(found, key=lambda group: (group[0].kind, type(group[0]).__qualname__))


class _Sent(NamedTuple):
    """An accumulator as sent, and per row whether its repeat was dropped or had to be kept."""

    held: Accumulator
    dropped: Tensor
    kept: Tensor


def _dropped(accumulator: Accumulator, drop_last: bool) -> _Sent:
    """The accumulator to send, with its rows' dropped and kept flags."""
    device = accumulator.device if accumulator.device is not None else torch.device("cpu")
    if not drop_last:
        nothing = torch.zeros(accumulator.rows, dtype=torch.bool, device=device)
        return _Sent(accumulator, nothing, nothing)
    held, dropped = accumulator.without_last()
    seen = torch.tensor(accumulator.samples(), device=device) > 0
    return _Sent(held, dropped, seen & ~dropped)


def _dropped_rows(
    groups: Groups, drop_last: bool, derived: Mapping[str, Collection[str]]
) -> dict[int, _Sent]:
    """:func:`_dropped` of every accumulator (by ``id``), derived rows kept where they must be.

    A derived row (``derived[name]``: the names its value was computed from,
    in the same batch) drops its last sample only when every one of those
    could: one that kept its repeat (a scalar batch mean) is broadcast into
    the derived row's last entry, which is no single sample's value then.
    """
    found = {id(acc): _dropped(acc, drop_last) for acc, _ in groups}
    if not drop_last or not derived:
        return found
    kept = {
        name: found[id(acc)].kept[row] for acc, names in groups for row, name in enumerate(names)
    }
    for accumulator, names in groups:
        # per row, the kept flags of the values it was computed from (none: not derived)
        sources = [
            [kept[source] for source in _sources(name, derived) if source in kept] for name in names
        ]
        if not any(sources):
            continue
        none = torch.zeros((), dtype=torch.bool, device=found[id(accumulator)].dropped.device)
        keep = torch.stack([torch.stack(flags).any() if flags else none for flags in sources])
        found[id(accumulator)] = _dropped(accumulator.keeping_last(keep), drop_last)
    return found


def _sources(name: str, derived: Mapping[str, Collection[str]]) -> list[str]:
    """The names ``name`` is computed from, through derived ones among them ([]: not derived)."""
    found: list[str] = []
    pending = list(derived.get(name, ()))
    while pending:
        source = pending.pop()
        if source != name and source not in found:
            found.append(source)
            pending.extend(derived.get(source, ()))
    return found


def export_rows(
    groups: Groups,
    *,
    drop_last: bool,
    known: bool,
    declared: Collection[str] = (),
    derived: Mapping[str, Collection[str]] | None = None,
) -> SyncState:
    """What an objective sends for its accumulators (see the module docstring).

    Args:
        groups: every accumulator with the names of its rows.
        drop_last: drop each row's last sample, a ``DistributedSampler`` repeat.
        known: the names are the same on every rank (declared, none learnt).
        declared: the names declared before any data (known on every rank), when not ``known``.
        derived: names whose values are computed from other names' values of the
            same batch (a loss's combined value), with those names: such a value
            drops its repeat only where all of those could.
    """
    prepared = _dropped_rows(groups, drop_last, derived or {})
    columns: list[Tensor] = []
    blocks: list[Tensor] = []
    for route in (_SUMMED, _FIXED):
        for accumulator, _ in _routed(groups, known, route):
            held, dropped, kept = prepared[id(accumulator)]
            flags = torch.stack([dropped, kept], 1).to(_F64)
            columns.append(torch.cat([held.sync_columns(), flags], 1).reshape(-1))
            if route == _FIXED:
                blocks.append(held.fixed_bytes())
    parts: list[dict[str, Any]] = []
    tensors: list[Tensor] = []
    for accumulator, names in _routed(groups, known, _DESCRIBED):
        held, dropped, kept = prepared[id(accumulator)]
        meta, state = held.export()
        parts.append(
            {
                "names": names,
                "state": meta,
                "size": len(state),
                "dropped": dropped.tolist(),
                "kept": kept.tolist(),
            }
        )
        tensors.extend(state)
    sums = torch.cat(columns) if columns else None
    fixed = torch.cat(blocks) if blocks else None
    if not parts and known:
        return SyncState(sums, fixed, None, [])
    meta_out: dict[str, Any] = {"groups": parts}
    if not known:  # the names it has: declared, and learnt since its reset (rows may be older)
        counts = [
            (name, count)
            for accumulator, names in groups
            for name, count in zip(names, accumulator.samples(), strict=True)
        ]
        meta_out["updated"] = any(count > 0 for _, count in counts)
        meta_out["seen"] = sorted(name for name, count in counts if count > 0 or name in declared)
    return SyncState(sums, fixed, meta_out, tensors)


def merge_rows(
    label: str,
    groups: Groups,
    gathered: Gathered,
    accumulator_for: Callable[[str], type[Accumulator]],
    *,
    known: bool,
) -> tuple[dict[str, Tensor], dict[str, tuple[int, int, int]]]:
    """Every name's value over all ranks, and its ``(samples, dropped, kept)`` counts.

    Raises:
        SyncError: a rank's state does not fit (its message is built from the
            gathered data only, so every rank raises the same one).
    """
    values: dict[str, Tensor] = {}
    counts: dict[str, tuple[int, int, int]] = {}
    offset = block = 0
    for route in (_SUMMED, _FIXED):
        for accumulator, names in _routed(groups, known, route):
            cls = type(accumulator)
            width = cls.sync_width() + 2
            assert gathered.sums is not None
            columns = gathered.sums[offset : offset + width * len(names)].view(len(names), width)
            offset += width * len(names)
            blocks = None
            if route == _FIXED:
                assert gathered.fixed is not None
                size = cls.fixed_size(len(names))
                blocks = gathered.fixed[:, block : block + size]
                block += size
            merged = cls.from_synced(columns[:, :-2], blocks, accumulator.labels)
            flags = columns[:, -2:].round().to(torch.int64).tolist()
            for name, value, samples, (dropped, kept) in zip(
                names, merged.reduce(), merged.samples(), flags, strict=True
            ):
                values[name] = value
                counts[name] = (samples + dropped, dropped, kept)
    if not gathered.states:
        return values, counts
    _check_learnt_names(label, gathered.states)
    collected: dict[type[Accumulator], list[tuple[Accumulator, list[str], list[Any]]]] = {}
    for rank, (meta, tensors) in enumerate(gathered.states):
        for accumulator, names, flags in _rank_groups(label, rank, meta, tensors, accumulator_for):
            collected.setdefault(type(accumulator), []).append((accumulator, names, flags))
    local = [name for _, names in groups for name in names]
    for cls, parts in collected.items():
        order = list(
            dict.fromkeys(
                [
                    *[name for name in local if cls is accumulator_for(name)],
                    *[name for _, names, _ in parts for name in names],
                ]
            )
        )
        row_of = {name: row for row, name in enumerate(order)}
        try:
            merged = cls.combined(
                [(acc, [row_of[name] for name in names]) for acc, names, _ in parts],
                len(order),
                [f"{label} value {name!r}" for name in order],
            )
        except IncompatibleStateError as error:
            raise SyncError(f"{label}: the processes' states do not combine: {error}") from None
        tallies = {name: [0, 0] for name in order}
        for _, names, flags in parts:
            for name, (dropped, kept) in zip(names, flags, strict=True):
                tallies[name][0] += int(dropped)
                tallies[name][1] += int(kept)
        for name, value, samples in zip(order, merged.reduce(), merged.samples(), strict=True):
            dropped, kept = tallies[name]
            values[name] = value
            counts[name] = (samples + dropped, dropped, kept)
    return values, counts


def _check_learnt_names(label: str, states: list[tuple[Any, list[Tensor]]]) -> None:
    """Ranks with data must have seen the same names since their reset.

    A rank without data knows only some names; rows learnt in an earlier epoch
    and empty since do not count.
    """
    found: list[list[str] | None] = []
    for meta, _ in states:
        seen = meta.get("seen") if isinstance(meta, dict) and meta.get("updated") else None
        found.append(sorted(map(str, seen)) if isinstance(seen, list) else None)
    reported = [names for names in found if names is not None]
    if any(names != reported[0] for names in reported):
        described = "; ".join(
            f"rank {index}: {'no data' if names is None else names}"
            for index, names in enumerate(found)
        )
        raise SyncError(f"{label}: processes report different names ({described})")


def _rank_groups(
    label: str,
    rank: int,
    meta: Any,
    tensors: list[Tensor],
    accumulator_for: Callable[[str], type[Accumulator]],
) -> list[tuple[Accumulator, list[str], list[Any]]]:
    """One rank's gathered accumulators, rebuilt and checked against this objective's rules."""
    if meta is None:
        return []
    where = f"{label}: rank {rank}'s state"
    groups = meta.get("groups") if isinstance(meta, dict) else None
    if not isinstance(groups, list):
        raise SyncError(f"{where} has no list of accumulators")
    rebuilt = []
    offset = 0
    for part in groups:
        try:
            names, size = part["names"], part["size"]
            dropped, kept = part["dropped"], part["kept"]
            if not (
                isinstance(names, list)
                and all(isinstance(name, str) and name for name in names)
                and isinstance(size, int)
                and 0 <= size <= len(tensors) - offset
                and isinstance(dropped, list)
                and isinstance(kept, list)
                and len(dropped) == len(kept) == len(names)
            ):
                raise StateDictError(f"malformed entry {part!r:.120}")
            classes = {accumulator_for(name) for name in names}
            if len(classes) > 1:
                raise StateDictError(f"{names} are aggregated in different ways here")
            cls = classes.pop() if classes else None
            if cls is None:
                offset += size
                continue
            accumulator = cls(rows=0)
            accumulator.load(part["state"], tensors[offset : offset + size])
            if accumulator.rows != len(names):
                raise StateDictError(f"{accumulator.rows} rows for {len(names)} names")
        except (StateDictError, KeyError, TypeError) as error:
            raise SyncError(f"{where} does not fit: {error}") from None
        offset += size
        rebuilt.append((accumulator, names, list(zip(dropped, kept, strict=True))))
    return rebuilt

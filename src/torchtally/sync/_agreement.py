"""What ranks must agree on before their states are combined, and how a difference is named.

Each rank describes what it syncs: per participant an *identity* (its kind,
names, aggregations, callables, formula; see ``sync_identity``) and a
*stamp* (how often it was reset, and synced since). Only two 64-bit
fingerprints of these travel in the header; when they differ, the ranks
exchange the full descriptions (:class:`Diagnostics`) and every rank builds
the same message from them (:func:`disagreement`).

Example:
    >>> from torchtally.sync._agreement import callable_identity
    >>> import math
    >>> callable_identity(math.sqrt)
    'math.sqrt'
"""

from __future__ import annotations

import functools
import hashlib
import json
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torchtally.errors import IncompatibleStateError, SyncError

__all__ = [
    "Diagnostics",
    "Padding",
    "callable_identity",
    "check_mergeable",
    "describe",
    "disagreement",
    "fingerprint",
    "identity_difference",
    "serial",
]

_created = 0


def serial() -> int:
    """A number that grows with every participant made in this process (its creation order).

    Twins (participants with equal identities) are told apart by their
    creation order, so that ``sync_all(train, val)`` on one rank and
    ``sync_all(val, train)`` on another is refused even when ``train`` and
    ``val`` are built alike.
    """
    global _created
    _created += 1
    return _created


def callable_identity(fn: Any) -> str:
    """A description of a callable that is the same in every process running the same code.

    The module and qualified name, and for functions the line they start
    on and a digest of their code (two lambdas differ by their line, or, on
    one line, by what they compute); for ``functools.partial`` the wrapped
    callable and its arguments' types; for other callable objects their
    class. Values a function closes over or takes by default are not part of
    it (they may rightly differ between ranks: a device).

    Example:
        >>> import functools
        >>> from torchtally.sync import callable_identity
        >>> callable_identity(functools.partial(max, 0))
        'partial(builtins.max, int)'
    """
    if isinstance(fn, functools.partial):
        arguments = [type(value).__name__ for value in fn.args]
        arguments += [f"{key}={type(value).__name__}" for key, value in sorted(fn.keywords.items())]
        return f"partial({callable_identity(fn.func)}, {', '.join(arguments)})"
    target = fn if hasattr(fn, "__qualname__") else type(fn)
    name = f"{getattr(target, '__module__', None)}.{getattr(target, '__qualname__', '?')}"
    code = getattr(fn, "__code__", None)
    if not isinstance(code, types.CodeType):
        return name
    digest = hashlib.blake2b(repr(_code_parts(code)).encode(), digest_size=4).hexdigest()
    return f"{name}:{code.co_firstlineno}#{digest}"


def _code_parts(code: types.CodeType) -> tuple[Any, ...]:
    """What a function computes, the same in every process running the same code.

    Nested code objects (and their reprs, which hold an address) are replaced
    by their parts, frozensets (whose order follows string hashing, which
    differs between processes) by their sorted reprs.
    """

    def constant(value: Any) -> Any:
        if isinstance(value, types.CodeType):
            return _code_parts(value)
        if isinstance(value, tuple):
            return tuple(constant(item) for item in value)
        if isinstance(value, frozenset):
            return ("frozenset", sorted(repr(constant(item)) for item in value))
        return repr(value)

    return (code.co_code, constant(code.co_consts), code.co_names, code.co_varnames)


def describe(identities: Sequence[dict[str, Any]], serials: Sequence[int]) -> list[str]:
    """Every identity as canonical JSON, twins numbered by creation order."""
    texts = [json.dumps(identity, sort_keys=True, separators=(",", ":")) for identity in identities]
    twins: dict[str, list[int]] = {}
    for index, text in enumerate(texts):
        twins.setdefault(text, []).append(index)
    described = list(texts)
    for members in twins.values():
        if len(members) > 1:
            by_age = sorted(members, key=lambda index: serials[index])
            for twin, index in enumerate(by_age):
                described[index] = f'{texts[index][:-1]},"twin":{twin}}}'
    return described


def fingerprint(parts: Sequence[Any]) -> int:
    """A signed 64-bit digest of JSON-able ``parts`` (equal on every rank for equal parts)."""
    text = json.dumps(list(parts), sort_keys=True, separators=(",", ":"), default=str)
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


@dataclass(frozen=True)
class Padding:
    """Where ``DistributedSampler`` repeated samples: ``dataset_size`` samples, ``world`` ranks.

    The sampler gives each rank ``ceil(N / W)`` samples; rank ``r``'s ``i``-th
    sample is a repeat exactly when ``r + i * W >= N``, which is the last
    sample of every rank ``r >= N % W`` (when ``N % W`` is not 0).

    Example:
        >>> from torchtally.sync import Padding
        >>> padding = Padding(dataset_size=10, world=4)
        >>> padding.per_rank, padding.repeats, [padding.drops(r) for r in range(4)]
        (3, 2, [False, False, True, True])
    """

    dataset_size: int
    world: int
    per_rank: int = field(init=False)
    repeats: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "per_rank", -(-self.dataset_size // self.world))
        object.__setattr__(self, "repeats", self.per_rank * self.world - self.dataset_size)

    def drops(self, rank: int) -> bool:
        """Whether ``rank``'s last sample is a repeat."""
        return rank >= self.world - self.repeats

    def check(self, label: str, counts: dict[str, tuple[int, int, int]]) -> list[str]:
        """Check every value's counts over all ranks; return the names that kept a repeat.

        ``counts`` maps a name to ``(samples, dropped, kept)``: the samples seen
        (repeats included), the repeats dropped and the repeats that could not
        be dropped. Names that saw nothing are not checked.

        Raises:
            SyncError: a value saw another number of samples than the sampler
                hands out, or a rank holding a repeat saw none of it.
        """
        total = self.per_rank * self.world
        # A value beside one that saw the whole pass was left out of some batches: say so.
        whole = [name for name, (samples, _, _) in counts.items() if samples == total]
        untold = (
            "which of its samples are the sampler's repeats cannot be checked: return it for "
            "every batch, or sync it in an objective of its own without dataset_size"
        )
        kept_names = []
        for name, (samples, dropped, kept) in counts.items():
            if samples == 0:
                continue
            if samples != total:
                why = (
                    f"{whole[0]!r} saw the whole pass, so {name!r} was left out of some batches, "
                    f"and {untold}"
                    if whole
                    else "pass dataset_size only for objectives updated on one pass over that "
                    "dataset, once per sample (reset() before the pass), and none when the "
                    "sampler has drop_last=True"
                )
                expected = (
                    f"over {self.world} processes, but a DistributedSampler over "
                    f"dataset_size={self.dataset_size} samples hands out {self.per_rank} to "
                    f"each ({total} in all)"
                    if self.world > 1
                    else f"in one process, but dataset_size={self.dataset_size}"
                )
                raise SyncError(f"{label}: value {name!r} saw {samples} samples {expected}; {why}")
            if dropped + kept != self.repeats:
                raise SyncError(
                    f"{label}: value {name!r}: {self.repeats} processes hold a repeated sample "
                    f"(their last), but only {dropped + kept} of them saw a value of {name!r} "
                    f"in their last batch: for a value left out of some batches (or given "
                    f"more than once per sample) {untold}"
                )
            if kept:
                kept_names.append(name)
        return kept_names


@dataclass
class Diagnostics:
    """What a rank sends instead of its states when ranks disagree: enough to name the difference.

    Attributes:
        labels: how each participant is named in messages.
        identities: each participant's identity (canonical JSON).
        stamps: each participant's ``(resets, syncs)``.
        sums: each participant's float64 numbers added up and bytes of fixed states.
        options: the ``sync_all`` arguments ranks must agree on.
        error: why this rank could not take part (``None``: it could).
    """

    labels: list[str]
    identities: list[str]
    stamps: list[list[int]]
    sums: list[list[int]]
    options: dict[str, Any]
    error: str | None = None

    def to_json(self) -> bytes:
        """The diagnostics as UTF-8 JSON."""
        return json.dumps(self.__dict__, separators=(",", ":"), default=str).encode()

    @classmethod
    def from_json(cls, data: bytes, rank: int) -> Diagnostics:
        """Read a rank's diagnostics; anything malformed is a :class:`SyncError` naming the rank."""
        try:
            fields = json.loads(data.decode("utf-8"))
            found = cls(**fields)
        except (UnicodeDecodeError, ValueError, TypeError) as error:
            raise SyncError(f"sync_all: rank {rank} sent unreadable diagnostics: {error}") from None
        lengths = {len(found.labels), len(found.identities), len(found.stamps), len(found.sums)}
        if found.error is None and len(lengths) != 1:
            raise SyncError(f"sync_all: rank {rank} sent inconsistent diagnostics")
        return found


def identity_difference(first: Mapping[str, Any], second: Mapping[str, Any]) -> str:
    """Which fields of two identities differ, with both values as JSON (abridged); ``""``: none.

    What :func:`~torchtally.sync_all` names when ranks disagree and what
    ``merge_state`` names when it refuses an objective defined otherwise.

    Example:
        >>> from torchtally.sync._agreement import identity_difference
        >>> identity_difference({'kind': 'M', 'names': ['A']}, {'kind': 'M', 'names': ['B']})
        'names: ["A"] against ["B"]'
    """
    keys = sorted({*first, *second}, key=lambda key: (key != "kind", key))
    return "; ".join(
        f"{key}: {_shown(first.get(key))} against {_shown(second.get(key))}"
        for key in keys
        if first.get(key) != second.get(key)
    )


def _shown(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)[:160]


def check_mergeable(label: str, mine: Any, other: Any) -> None:
    """Refuse to merge ``other`` into ``mine`` unless a sync would pair them (type and identity).

    Raises:
        IncompatibleStateError: ``other`` is of another type, or its
            ``sync_identity()`` differs (named with both values, the other's first).

    Example:
        >>> import torchtally as tt
        >>> from torchtally.sync import check_mergeable
        >>> mae = tt.Metric(lambda o, t: (o - t).abs(), 'MAE')
        >>> check_mergeable('MAE', mae, mae.copy())  # defined alike: nothing happens
    """
    if type(other) is not type(mine):
        raise IncompatibleStateError(f"{label}: cannot merge the state of a {type(other).__name__}")
    difference = identity_difference(other.sync_identity(), mine.sync_identity())
    if difference:
        raise IncompatibleStateError(
            f"{label}: cannot merge the state of one defined otherwise (the other's against this "
            f"one's: {difference})"
        )


def _differing_keys(first: str, second: str) -> str:
    """:func:`identity_difference` of two identities as they travel (canonical JSON)."""
    try:
        return identity_difference(json.loads(first), json.loads(second))
    except ValueError:  # pragma: no cover - identities are always JSON
        return f"{first[:120]} against {second[:120]}"


def disagreement(every: Sequence[Diagnostics]) -> str:
    """The one message every rank raises: built from every rank's diagnostics, in rank order."""
    failed = [(index, item.error) for index, item in enumerate(every) if item.error is not None]
    if failed:
        found = "; ".join(f"rank {index}: {error}" for index, error in failed)
        return f"sync_all: processes could not take part in the sync ({found})"
    first = every[0]
    for index, item in enumerate(every[1:], 1):
        if item.options != first.options:
            return (
                f"sync_all: processes pass different arguments: rank 0 {first.options}, "
                f"rank {index} {item.options}"
            )
    for index, item in enumerate(every[1:], 1):
        if len(item.identities) != len(first.identities):
            return (
                f"sync_all: processes sync different numbers of objectives: rank 0 syncs "
                f"{len(first.identities)} ({', '.join(first.labels)[:300]}), rank {index} "
                f"{len(item.identities)} ({', '.join(item.labels)[:300]})"
            )
    rules: list[tuple[str, Callable[[Diagnostics, int], Any]]] = [
        ("identities", lambda item, position: item.identities[position]),
        ("sums", lambda item, position: item.sums[position]),
    ]
    for position in range(len(first.identities)):
        for what, read in rules:
            for index, item in enumerate(every[1:], 1):
                if read(item, position) != read(first, position):
                    detail = (
                        _differing_keys(first.identities[position], item.identities[position])
                        if what == "identities"
                        else f"it sends [numbers, bytes] {first.sums[position]} on rank 0 and "
                        f"{item.sums[position]} on rank {index}"
                    )
                    return (
                        f"sync_all: objective {position} differs between processes: rank 0 "
                        f"syncs {first.labels[position]}, rank {index} syncs "
                        f"{item.labels[position]} "
                        f"({detail}); pass the same objectives, built alike, in the same order "
                        f"on every process"
                    )
    for position in range(len(first.stamps)):
        for index, item in enumerate(every[1:], 1):
            if item.stamps[position] != first.stamps[position]:
                mine, theirs = first.stamps[position], item.stamps[position]
                return (
                    f"sync_all: {first.labels[position]} is at another sync on rank {index} than "
                    f"on rank 0: rank 0 has reset it {mine[0]} times and synced it {mine[1]} times "
                    f"since, rank {index} {theirs[0]} and {theirs[1]}; a process called sync() or "
                    f"reset() more often than the others (a sync only some processes run?), so "
                    f"the states would pair different epochs"
                )
    return "sync_all: processes disagree, but their descriptions match"  # pragma: no cover

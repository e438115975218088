"""``sync_all``: one exchange that makes every objective report the value over all processes.

Participants (objectives and adapters) take part through five public hooks
(:class:`SyncParticipant`); this package decides what ranks must agree on
(:mod:`torchtally.sync._agreement`), how the rows of accumulators travel and
combine (:mod:`torchtally.sync._rows`) and in which order things happen;
the bytes on the wire are :mod:`torchtally.distributed`'s business.

A sync is at most three collectives, whatever the number of objectives:
the headers (fingerprints of what each rank syncs and where it is in its
sequence of syncs), one ``all_reduce`` of every mean and sum, and one gather
of everything else. Ranks that disagree exchange descriptions instead of
states, and every rank raises the same :class:`~torchtally.errors.SyncError`.

Example:
    >>> import torch
    >>> import torchtally as tt
    >>> mae = tt.Metric(lambda o, t: (o - t).abs(), 'MAE')
    >>> _ = mae.update(torch.ones(3), torch.zeros(3))
    >>> tt.sync_all(mae)   # single process: nothing to exchange
    >>> mae.compute()
    {'MAE': tensor(1.)}
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from torchtally import distributed
from torchtally.errors import InvalidArgumentError, SyncError
from torchtally.sync._agreement import (
    Diagnostics,
    Padding,
    callable_identity,
    describe,
    disagreement,
    fingerprint,
    serial,
)
from torchtally.sync._rows import Gathered, SyncState, export_rows, merge_rows

__all__ = [
    "Gathered",
    "Padding",
    "SyncCounters",
    "SyncParticipant",
    "SyncState",
    "callable_identity",
    "export_rows",
    "merge_rows",
    "sync_all",
]


@runtime_checkable
class SyncParticipant(Protocol):
    """What :func:`sync_all` needs from an object to sync it in its shared exchange.

    Every objective implements it, and the torchmetrics and torcheval
    adapters do too, so that one ``sync_all`` moves everything in one
    exchange. Implement it to sync a state of your own.

    Example:
        >>> import torchtally as tt
        >>> from torchtally.sync import SyncParticipant
        >>> isinstance(tt.Metric(lambda o, t: o - t, 'Bias'), SyncParticipant)
        True
    """

    def sync_identity(self) -> dict[str, Any]:
        """What every rank's counterpart must equal (JSON-able).

        The same in every process running the same code: kinds, names,
        layouts; no addresses, no values.
        """

    def sync_stamp(self) -> tuple[int, int]:
        """Where it is in its sequence of syncs: ``(resets, syncs since the last reset)``."""

    def sync_export(self, drop_last: bool) -> SyncState:
        """This process's state, without its last sample when ``drop_last`` (a sampler's repeat)."""

    def sync_merge(self, gathered: Gathered, padding: Padding | None) -> Any:
        """Combine every rank's state without changing ``self``.

        Raise only :class:`~torchtally.errors.SyncError`, with messages built
        from ``gathered`` alone, so that every rank raises the same.
        """

    def sync_install(self, prepared: Any) -> None:
        """Make ``compute()`` report what :meth:`sync_merge` prepared."""


class SyncCounters:
    """The bookkeeping behind :meth:`SyncParticipant.sync_stamp`: resets, syncs, creation order.

    A mixin: call :meth:`_count_reset` from ``reset`` and :meth:`_count_sync`
    from ``sync_install``.

    Example:
        >>> from torchtally.sync import SyncCounters
        >>> counters = SyncCounters()
        >>> counters._count_sync(); counters._count_reset(); counters._count_sync()
        >>> counters.sync_stamp()
        (1, 1)
    """

    _resets = 0
    _syncs = 0
    _serial = 0

    def __init__(self) -> None:
        self._serial = serial()

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A copy or an unpickled object is a new participant, made now.
        self.__dict__.update(state)
        self._serial = serial()

    def sync_stamp(self) -> tuple[int, int]:
        """``(resets, syncs since the last reset)``."""
        return self._resets, self._syncs

    def _count_reset(self) -> None:
        """Note a reset."""
        self._resets += 1
        self._syncs = 0

    def _count_sync(self) -> None:
        """Note a completed sync."""
        self._syncs += 1


def sync_all(
    *objectives: Any,
    process_group: distributed.ProcessGroup = None,
    dataset_size: int | None = None,
    destination: int | None = None,
) -> None:
    """Synchronise any number of objectives across processes in one exchange.

    After the call, ``compute()`` on every rank returns the value over the
    updates of all ranks. Syncing twice equals syncing once (each process
    keeps its own updates; the synced view is rebuilt from all of them), and
    updates made after a sync are counted once at the next sync. Until then
    ``compute()`` reports this process's own updates. Outside a distributed
    run this is a no-op.

    Args:
        *objectives: torchtally objectives and adapters, in the same order on
            every rank.
        process_group: the ``torch.distributed`` group; ``None`` is the default group.
        dataset_size: the length of the dataset a ``DistributedSampler``
            (``drop_last=False``) spread over the ranks: the samples it
            repeated to even out the ranks are dropped, so the values are those
            of the ``dataset_size`` samples. Objectives that saw only batch
            values cannot drop them: they warn
            (:class:`~torchtally.errors.RepeatedSampleWarning`).
        destination: a rank of the group: minima, maxima, concatenations and
            adapters' states are gathered to it alone (means and sums still
            reach every rank); elsewhere ``compute()`` of an objective that
            needs them raises :class:`~torchtally.errors.SyncError`.

    Raises:
        SyncError: ranks disagree on the objectives (position, kind, names,
            aggregations, callables, formula, state layout), are at different
            syncs, pass different arguments, or a rank could not export its
            state; or a header or payload is not torchtally's. Every rank
            raises the same error after the same collectives; none hangs.
            Nothing is changed when it is raised.
        TypeError: outside a distributed run, an argument cannot take part in a sync.
        InvalidArgumentError: ``dataset_size`` or ``destination`` is not a valid count or rank.

    Example:
        >>> import torch
        >>> import torchtally as tt
        >>> mae = tt.Metric(lambda o, t: (o - t).abs(), 'MAE')
        >>> accuracy = tt.Metric(lambda o, t: (o.round() == t).float(), 'Accuracy')
        >>> _ = mae.update(torch.ones(3), torch.zeros(3))
        >>> tt.sync_all(mae, accuracy)   # single process: nothing to exchange
        >>> mae.compute()
        {'MAE': tensor(1.)}
    """
    participants = tuple(part for item in objectives for part in _participants(item))
    if not distributed.is_distributed(process_group):
        for item in participants:
            _check_participant(item)
        _check_options(dataset_size, destination, 1)
        return
    world = distributed.world_size(process_group)
    me = distributed.rank(process_group)
    exchange = _Exchange(participants, process_group, world, me)
    exchange.prepare(dataset_size, destination)
    exchange.run()


def _participants(item: object) -> tuple[Any, ...]:
    """What syncs for ``item``: itself, or the parts a composite names (``sync_parts()``)."""
    parts = getattr(item, "sync_parts", None)
    return tuple(parts()) if callable(parts) else (item,)


def _check_participant(item: object) -> None:
    if not isinstance(item, SyncParticipant):
        raise TypeError(
            f"sync_all takes torchtally objectives and adapters, found "
            f"{type(item).__name__}; wrap foreign metrics with torchtally.wrap, "
            f"from_torchmetrics or from_torcheval"
        )


def _check_options(dataset_size: Any, destination: Any, world: int) -> None:
    for what, value, low, high in (
        ("dataset_size", dataset_size, 0, None),
        ("destination", destination, 0, world - 1),
    ):
        if value is None:
            continue
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or value < low
            or (high is not None and value > high)
        ):
            expected = f"an int >= {low}" if high is None else f"a rank from 0 to {high}"
            raise InvalidArgumentError(f"sync_all: {what} must be {expected}, found {value!r}")


def _numel(tensor: Tensor | None) -> int:
    return 0 if tensor is None else tensor.numel()


def agreeing(headers: list[list[int]]) -> bool:
    """Whether the (checked) headers show ranks ready to combine their states.

    Raises:
        SyncError: a header is not torchtally's or announces impossible sizes.
    """
    distributed.check_headers(headers)
    fields = [dict(zip(distributed.HEADER, row, strict=True)) for row in headers]
    first = fields[0]
    return not any(
        row["flags"]
        or row["fingerprint"] != first["fingerprint"]
        or row["sequence"] != first["sequence"]
        or row["sums"] != first["sums"]
        for row in fields
    )


def _label(item: Any) -> str:
    text = repr(item)
    return text if len(text) <= 120 else text[:117] + "..."


class _Exchange:
    """One ``sync_all`` call on one rank: what it sends, the collectives, and the results."""

    def __init__(self, participants: tuple[Any, ...], group: Any, world: int, me: int) -> None:
        self.participants = participants
        self.group = group
        self.world = world
        self.me = me
        self.failure: Exception | None = None
        self.padding: Padding | None = None
        self.destination: int | None = None
        self.states: list[SyncState] = []
        self.diagnostics = Diagnostics([], [], [], [], {})

    def prepare(self, dataset_size: Any, destination: Any) -> None:
        """Describe and export everything; a failure is kept to be sent, not raised yet.

        A rank that raised here would leave the others waiting in a collective;
        instead every rank learns of the failure from the headers and raises.
        """
        labels: list[str] = []
        identities: list[str] = []
        stamps: list[list[int]] = []
        sizes: list[list[int]] = []
        options = {"dataset_size": dataset_size, "destination": destination}
        try:
            labels = [_label(item) for item in self.participants]
            for item in self.participants:
                _check_participant(item)
            _check_options(dataset_size, destination, self.world)
            self.destination = destination
            if dataset_size is not None:
                self.padding = Padding(dataset_size, self.world)
            identities = describe(
                [item.sync_identity() for item in self.participants],
                [getattr(item, "_serial", 0) for item in self.participants],
            )
            stamps = [list(item.sync_stamp()) for item in self.participants]
            drop = self.padding is not None and self.padding.drops(self.me)
            self.states = [item.sync_export(drop) for item in self.participants]
            sizes = [[_numel(state.sums), _numel(state.fixed)] for state in self.states]
        except Exception as error:
            self.failure = error
        self.diagnostics = Diagnostics(labels, identities, stamps, sizes, options)
        if self.failure is not None:
            self.diagnostics.error = f"{type(self.failure).__name__}: {self.failure}"

    def run(self) -> None:
        """The collectives, then merging and installing (all or nothing)."""
        device = distributed.buffer_device(self.group, self.tensors())
        sums, payload = self.outgoing(device)
        notes = self.notes(device)
        try:
            headers = distributed.exchange_headers(
                self.header(sums, payload, notes), self.group, device
            )
        except RuntimeError as error:  # the backend itself failed (sizes that do not match)
            raise SyncError(
                f"sync_all: the header exchange failed ({type(error).__name__}: {error}); is "
                f"another collective running on the same process group?"
            ) from error
        if not agreeing(headers):
            lengths = [row[distributed.HEADER.index("diagnostics")] for row in headers]
            received = distributed.all_gather_payloads(notes, lengths, self.group)
            assert received is not None
            self.raise_disagreement(received)
        reduced = distributed.all_reduce_sums(sums, self.group) if sums.numel() else None
        lengths = [row[distributed.HEADER.index("payload")] for row in headers]
        gathered: list[Tensor] | None = [payload[:0]] * self.world  # nothing to gather
        if any(lengths):
            gathered = distributed.all_gather_payloads(
                payload, lengths, self.group, self.destination
            )
        self.merge_and_install(reduced, gathered)

    def tensors(self) -> list[Tensor]:
        """Every tensor this rank sends (they decide where the buffers live under nccl)."""
        found = [tensor for state in self.states for tensor in (state.tensors or [])]
        return found + [state.sums for state in self.states if state.sums is not None]

    def notes(self, device: torch.device) -> Tensor:
        """The diagnostics, as bytes to gather should the ranks disagree."""
        return torch.frombuffer(bytearray(self.diagnostics.to_json()), dtype=torch.uint8).to(device)

    def header(self, sums: Tensor, payload: Tensor, notes: Tensor) -> list[int]:
        """This rank's header (see :data:`torchtally.distributed.HEADER`)."""
        return [
            distributed.MAGIC,
            distributed.WIRE_VERSION,
            fingerprint(
                [self.diagnostics.identities, self.diagnostics.sums, self.diagnostics.options]
            ),
            fingerprint(self.diagnostics.stamps),
            distributed.FAILED if self.failure is not None else 0,
            sums.numel(),
            payload.numel(),
            notes.numel(),
        ]

    def outgoing(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """The float64 vector to add up and the payload to gather (empty after a failure).

        The payload is every participant's fixed block, then (if any participant
        described a state) the packed descriptions.
        """
        empty = torch.empty(0, dtype=torch.uint8, device=device)
        nothing = torch.empty(0, dtype=torch.float64, device=device)
        if self.failure is not None:
            return nothing, empty
        sums = [state.sums.to(device) for state in self.states if state.sums is not None]
        vector = torch.cat(sums) if sums else nothing
        parts = [state.fixed.to(device) for state in self.states if state.fixed is not None]
        if any(state.meta is not None or state.tensors for state in self.states):
            metas = [[state.meta, len(state.tensors or [])] for state in self.states]
            tensors = [tensor for state in self.states for tensor in (state.tensors or [])]
            try:
                parts.append(distributed.pack(metas, tensors, device))
            except SyncError as error:  # sent as a failure, like any other
                self.failure = error
                self.diagnostics.error = f"{type(error).__name__}: {error}"
                return nothing, empty
        return vector, torch.cat(parts) if parts else empty

    def raise_disagreement(self, received: list[Tensor]) -> None:
        """Raise the one message every rank builds from every rank's diagnostics."""
        every = [
            Diagnostics.from_json(bytes(part.cpu().numpy()), rank)
            for rank, part in enumerate(received)
        ]
        raise SyncError(disagreement(every)) from self.failure

    def merge_and_install(self, reduced: Tensor | None, received: list[Tensor] | None) -> None:
        """Merge every participant from the added-up sums and the gathered payloads, then install.

        ``received`` is ``None`` on a rank that is not the destination.
        """
        fixed: Tensor | None = None
        per_rank: list[list[tuple[Any, list[Tensor]]]] | None = None
        if received is not None:
            fixed, per_rank = self._received(received)
        prepared = []
        offset = block = 0
        for index, (item, state) in enumerate(zip(self.participants, self.states, strict=True)):
            size, width = _numel(state.sums), _numel(state.fixed)
            part = None if reduced is None or not size else reduced[offset : offset + size]
            blocks = None if fixed is None or not width else fixed[:, block : block + width]
            offset, block = offset + size, block + width
            states: list[tuple[Any, list[Tensor]]] | None = None
            if per_rank is not None:
                # What the identities agree on: a participant that describes nothing here
                # describes nothing on any rank; it is not handed a list as long as the world.
                sends = state.meta is not None or bool(state.tensors)
                states = [rank_parts[index] for rank_parts in per_rank] if sends else []
            prepared.append(item.sync_merge(Gathered(part, states, blocks), self.padding))
        # Every participant is merged before any is installed: an error leaves all as they were.
        for item, result in zip(self.participants, prepared, strict=True):
            item.sync_install(result)

    def _received(
        self, received: list[Tensor]
    ) -> tuple[Tensor | None, list[list[tuple[Any, list[Tensor]]]]]:
        """Every rank's fixed blocks, ``(ranks, bytes)``, and described states, checked."""
        width = sum(_numel(state.fixed) for state in self.states)
        for rank, part in enumerate(received):
            if part.numel() and part.numel() < width:
                raise SyncError(
                    f"sync_all: rank {rank}'s payload holds {part.numel()} bytes, fewer than the "
                    f"{width} bytes of fixed states every rank sends"
                )
        fixed = torch.stack([part[:width] for part in received]) if width else None
        described = [(rank, part[width:]) for rank, part in enumerate(received)]
        per_rank = [self._split(rank, part) for rank, part in described if part.numel()]
        return fixed, per_rank

    def _split(self, rank: int, part: Tensor) -> list[tuple[Any, list[Tensor]]]:
        """One rank's payload, checked, as ``(meta, tensors)`` per participant."""
        count = len(self.participants)
        metas, tensors = distributed.unpack(part, rank)
        if (
            not isinstance(metas, list)
            or len(metas) != count
            or not all(
                isinstance(entry, list)
                and len(entry) == 2
                and isinstance(entry[1], int)
                and not isinstance(entry[1], bool)
                and entry[1] >= 0
                for entry in metas
            )
            or sum(entry[1] for entry in metas) != len(tensors)
        ):
            raise SyncError(f"sync_all: rank {rank}'s payload does not describe {count} states")
        found = []
        offset = 0
        for meta, size in metas:
            found.append((meta, tensors[offset : offset + size]))
            offset += size
        return found

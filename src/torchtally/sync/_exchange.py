"""One ``sync_all`` call on one rank: what it sends, the collectives, and the results.

:class:`_Exchange` runs the steps in order: describe and export every
participant (a failure is kept to be sent, not raised), exchange the headers,
then either the diagnostics (ranks that disagree, or one that failed, all
raise the same :class:`~torchtally.errors.SyncError`) or the summed vector and
the gathered payloads, and last merge every participant before installing any.
The collectives and the wire format are called through
:mod:`torchtally.distributed`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from torchtally import distributed
from torchtally.errors import InvalidArgumentError, SyncError
from torchtally.sync._agreement import Diagnostics, Padding, describe, disagreement, fingerprint
from torchtally.sync._participant import _check_own_state, _check_participant
from torchtally.sync._rows import Gathered, SyncState

__all__ = ["agreeing"]


def _check_options(dataset_size: Any, destination: Any, world: int | None) -> None:
    """Check the arguments; ``world`` ``None``: the group's size is not known here."""
    for what, value, low, high in (
        ("dataset_size", dataset_size, 0, None),
        ("destination", destination, 0, None if world is None else world - 1),
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
    """How messages name ``item``: its ``repr``, or its class where that would be an address.

    Messages are compared across ranks: an address differs on every process.
    """
    default = getattr(type(item), "__repr__", None) is object.__repr__
    text = type(item).__qualname__ if default else repr(item)
    return text if len(text) <= 120 else text[:117] + "..."


def _check_state(state: Any, label: str) -> None:
    """Refuse a ``SyncState`` whose blocks are not what travels: they would be cast silently.

    Raises:
        SyncError: not a ``SyncState``, or ``sums`` not 1-d float64, or ``fixed`` not 1-d uint8.
    """
    if not isinstance(state, SyncState):
        raise SyncError(f"{label}: sync_export() must return a SyncState, found {state!r:.60}")
    for field, dtype in (("sums", torch.float64), ("fixed", torch.uint8)):
        block = getattr(state, field)
        if block is not None and (
            not isinstance(block, Tensor) or block.dtype != dtype or block.ndim != 1
        ):
            found = (
                f"{block.dtype} of shape {tuple(block.shape)}"
                if isinstance(block, Tensor)
                else type(block).__name__
            )
            raise SyncError(
                f"{label}: SyncState.{field} must be a 1-d {str(dtype).removeprefix('torch.')} "
                f"tensor, found {str(found).removeprefix('torch.')} (the exchange carries no "
                f"other: it would be converted without a word, a float64 block cast to bytes)"
            )


def _merged_by(item: Any, gathered: Gathered, padding: Padding | None) -> Any:
    """``item.sync_merge(gathered, padding)``; an error other than ``SyncError`` as one, naming it.

    The hook merges what every rank received alike, so every rank raises the same.

    Raises:
        SyncError: the participant raised (a hand-written one's own error chained).
    """
    try:
        return item.sync_merge(gathered, padding)
    except SyncError:
        raise
    except Exception as error:
        raise SyncError(
            f"sync_all: {_label(item)}: its sync_merge() raised {type(error).__name__}: {error} "
            f"(a participant must raise only SyncError); nothing was installed"
        ) from error


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
            here = distributed.rank()  # the global rank, as state_dict() records it
            for item, label in zip(self.participants, labels, strict=True):
                _check_participant(item)
                if self.world > 1:  # alone, nothing is counted twice: any rank's state is fine
                    _check_own_state(item, label, here)
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
            for state, label in zip(self.states, labels, strict=True):
                _check_state(state, label)
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
            distributed.payload_limit(),
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

    def check_alone(self) -> None:
        """One process: merge as a world of one would, to check ``dataset_size``; install nothing.

        A sync in one process exchanges nothing, but the counts it would check are
        here: a loop that forgot a ``reset()`` is refused as it is under torchrun.

        Raises:
            SyncError: a value saw another number of samples than ``dataset_size``.
        """
        sums, payload = self.outgoing(torch.device("cpu"))  # empty after a failure
        if self.failure is not None:
            raise self.failure
        self.merged(sums, [payload])

    def merge_and_install(self, reduced: Tensor | None, received: list[Tensor] | None) -> None:
        """Merge every participant from the added-up sums and the gathered payloads, then install.

        ``received`` is ``None`` on a rank that is not the destination.
        """
        prepared = self.merged(reduced, received)
        # Every participant is merged before any is installed: an error leaves all as they were.
        for item, result in zip(self.participants, prepared, strict=True):
            item.sync_install(result)

    def merged(self, reduced: Tensor | None, received: list[Tensor] | None) -> list[Any]:
        """What each participant would install (see :meth:`merge_and_install`); nothing changes."""
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
            prepared.append(_merged_by(item, Gathered(part, states, blocks), self.padding))
        return prepared

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

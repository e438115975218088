"""The wire format of ``sync_all``: the header's fields, the payload's bytes, their validation.

A **header** is nine int64 per rank (:data:`HEADER`): a magic value, the
format version, fingerprints of what the rank syncs and of where it is in its
sequence of syncs, flags, the sizes of what follows, and the rank's
:func:`payload_limit`. A **payload** is one
uint8 buffer (:func:`pack`): the length of its metadata, the metadata as UTF-8
JSON, then every tensor's bytes, each segment aligned to 16 bytes.

Both are validated before anything is allocated from them
(:func:`check_headers`, :func:`unpack`), with messages built from what every
rank sees, so that every rank raises the same
:class:`~torchtally.errors.SyncError`. Nothing here calls ``torch.distributed``:
the collectives are :mod:`torchtally.distributed`'s, which also gives these
names.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Final

import torch
from torch import Tensor

from torchtally._dtypes import dtype_from_name, dtype_name, is_held
from torchtally.errors import InvalidArgumentError, SyncError

__all__ = [
    "DISAGREEING",
    "FAILED",
    "HEADER",
    "MAGIC",
    "WIRE_VERSION",
    "check_headers",
    "pack",
    "payload_limit",
    "set_payload_limit",
    "unpack",
]

MAGIC: Final = 0x7474616C6C79  # "ttally"
"""The first field of every header: a header without it is not torchtally's."""

WIRE_VERSION: Final = 2
"""The format version: ranks running other versions of torchtally cannot sync."""

HEADER: Final = (
    "magic",
    "version",
    "fingerprint",
    "sequence",
    "flags",
    "sums",
    "payload",
    "diagnostics",
    "limit",
)
"""The fields of a header, in order (int64 each): ``sums`` counts float64 numbers,
``payload`` and ``diagnostics`` count bytes, ``limit`` is the rank's :func:`payload_limit`
(ranks must agree on it, or one would refuse a size the others go on with)."""

FAILED: Final = 1
"""Flag: the rank could not export its state; its payload says why."""

DISAGREEING: Final = 2
"""Flag: the payload holds descriptions to name a disagreement, not states."""

_ALIGN = 16  # bytes; every segment starts aligned so it can be viewed as any dtype
_CPU = torch.device("cpu")
_limit = 1 << 31


def payload_limit() -> int:
    """The most bytes one collective may bring to a rank (default 2 GiB).

    Headers announcing more (the largest payload times the number of ranks,
    or the float64 vector) are refused with a ``SyncError`` before anything
    is allocated.

    Example:
        >>> from torchtally.distributed import payload_limit
        >>> payload_limit() == 2**31
        True
    """
    return _limit


def set_payload_limit(limit: int) -> int:
    """Set :func:`payload_limit` (every rank must set the same); returns the previous limit.

    Example:
        >>> from torchtally.distributed import set_payload_limit
        >>> previous = set_payload_limit(1 << 20)
        >>> _ = set_payload_limit(previous)
    """
    global _limit
    # below 2**63: the limit travels in every header as an int64
    if isinstance(limit, bool) or not isinstance(limit, int) or not 0 <= limit < 2**63:
        raise InvalidArgumentError(
            f"set_payload_limit: expected a number of bytes from 0 to 2**63 - 1, found {limit!r}"
        )
    previous, _limit = _limit, limit
    return previous


def check_headers(headers: Sequence[Sequence[int]]) -> None:
    """Refuse headers that are not torchtally's or announce sizes over :func:`payload_limit`.

    What one collective brings to a rank is its ranks' sizes times their
    number (buffers are padded to the longest). Sizes are checked against
    the limit, once the headers show that every rank set the same one: the
    message is built from the headers alone, so every rank raises the same
    one.

    Raises:
        SyncError: naming the first rank whose header does not fit, or the
            ranks whose payload limits differ.
    """
    rows = [dict(zip(HEADER, header, strict=True)) for header in headers]
    for index, fields in enumerate(rows):
        if fields["magic"] != MAGIC:
            raise SyncError(
                f"sync_all: rank {index} sent a header that is not torchtally's (magic "
                f"{fields['magic']:#x}); is another collective running on the same process group?"
            )
        if fields["version"] != WIRE_VERSION:
            raise SyncError(
                f"sync_all: rank {index} speaks wire format {fields['version']}, this one "
                f"{WIRE_VERSION}: run the same torchtally on every process"
            )
    limit = rows[0]["limit"]
    for index, fields in enumerate(rows):
        if fields["limit"] != limit:
            raise SyncError(
                f"sync_all: rank {index} set a payload limit of {fields['limit']} bytes, rank 0 "
                f"{limit}: call torchtally.distributed.set_payload_limit with the same value on "
                f"every rank"
            )
    for index, fields in enumerate(rows):
        sizes = {
            "sums": fields["sums"] * 8,
            "payload": fields["payload"] * len(headers),
            "diagnostics": fields["diagnostics"] * len(headers),
        }
        for what, size in sizes.items():
            if not 0 <= size <= limit:
                raise SyncError(
                    f"sync_all: rank {index} announces {what} that would bring {size} bytes to "
                    f"every rank, outside 0 to the limit of {limit} bytes "
                    f"(torchtally.distributed.set_payload_limit)"
                )
        if fields["flags"] not in (0, FAILED, DISAGREEING, FAILED | DISAGREEING):
            raise SyncError(f"sync_all: rank {index} sent unknown flags {fields['flags']}")


# -- payloads -----------------------------------------------------------------------------------


def _padded(size: int) -> int:
    return -(-size // _ALIGN) * _ALIGN


def pack(meta: Any, tensors: Sequence[Tensor], device: torch.device | None = None) -> Tensor:
    """One uint8 buffer: the metadata's length, the metadata as UTF-8 JSON, then every tensor.

    Raises:
        SyncError: the metadata is not JSON-serialisable or a dtype is not one of
            the dtypes a state may hold.
    """
    layout = []
    for tensor in tensors:
        if not is_held(tensor.dtype):
            raise SyncError(f"sync_all: cannot send a tensor of dtype {tensor.dtype}")
        layout.append([dtype_name(tensor.dtype), list(tensor.shape)])
    try:
        text = json.dumps({"meta": meta, "layout": layout}, separators=(",", ":")).encode()
    except (TypeError, ValueError) as error:
        raise SyncError(f"sync_all: the state description cannot be sent: {error}") from error
    target = device if device is not None else (tensors[0].device if tensors else _CPU)
    head = len(text).to_bytes(8, "little") + text
    parts = [torch.frombuffer(bytearray(head.ljust(_padded(len(head)), b" ")), dtype=torch.uint8)]
    parts = [part.to(target) for part in parts]
    for tensor in tensors:
        raw = tensor.detach().to(target).contiguous().reshape(-1).view(torch.uint8)
        parts.append(raw)
        if _padded(raw.numel()) > raw.numel():
            parts.append(
                torch.zeros(_padded(raw.numel()) - raw.numel(), dtype=torch.uint8, device=target)
            )
    return torch.cat(parts)


def unpack(buffer: Tensor, rank: int) -> tuple[Any, list[Tensor]]:
    """The metadata and tensors of one rank's payload, checked before anything is allocated.

    Raises:
        SyncError: the payload is truncated, its metadata is not UTF-8 JSON of
            the expected form, a dtype is unknown or the shapes claim more bytes
            than the payload holds; the message names the rank.
    """
    where = f"sync_all: rank {rank}'s payload"
    size = buffer.numel()
    if size < 8:
        raise SyncError(f"{where} is truncated ({size} bytes)")
    head = bytes(buffer[:8].cpu().tolist())
    length = int.from_bytes(head, "little")
    if length > size - 8:
        raise SyncError(f"{where} announces {length} bytes of metadata but holds {size - 8}")
    try:
        envelope = json.loads(bytes(buffer[8 : 8 + length].cpu().numpy()).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise SyncError(f"{where} holds metadata that is not UTF-8 JSON: {error}") from None
    layout = envelope.get("layout") if isinstance(envelope, dict) else None
    if not isinstance(layout, list) or "meta" not in envelope:
        raise SyncError(f"{where} holds metadata of an unknown form")
    offset = _padded(8 + length)
    plan = []
    for entry in layout:
        dtype = dtype_from_name(entry[0]) if isinstance(entry, list) and len(entry) == 2 else None
        shape = entry[1] if dtype is not None else None
        if (
            dtype is None
            or not isinstance(shape, list)
            or not all(
                isinstance(dim, int) and not isinstance(dim, bool) and dim >= 0 for dim in shape
            )
        ):
            raise SyncError(f"{where} describes a tensor as {entry!r:.80}: unknown dtype or shape")
        numel = 1
        for dim in shape:
            numel *= dim
        nbytes = numel * dtype.itemsize
        if offset + nbytes > size:
            raise SyncError(
                f"{where} describes tensors of {offset + nbytes} bytes but holds {size} bytes"
            )
        plan.append((offset, nbytes, dtype, shape))
        offset += _padded(nbytes)
    # Copies, not views: a view would keep the whole gathered buffer alive.
    tensors = [
        buffer[start : start + nbytes].view(dtype).reshape(shape).clone()
        for start, nbytes, dtype, shape in plan
    ]
    return envelope["meta"], tensors

"""The one place torchtally calls ``torch.distributed``: the collectives and the wire format.

A sync (:func:`torchtally.sync_all`) exchanges, in this order:

1. a fixed-size **header** per rank (:data:`HEADER`, eight int64: a magic
   value, the format version, fingerprints of what the rank syncs and of
   where it is in its sequence of syncs, flags, and the sizes of what
   follows), gathered with one ``all_gather``;
2. a float64 vector of every sum and mean state, summed over the ranks with
   one ``all_reduce`` (its size does not grow with the number of ranks);
3. one byte **payload** per rank for everything else (minima, maxima,
   concatenations, learnt names, adapters' states), gathered with one
   ``all_gather`` (or ``gather`` to one destination rank).

When the headers show that ranks disagree (or one failed), the ranks skip 2
and 3 and gather their **diagnostics** instead: descriptions from which every
rank builds the same error message.

Headers and payloads are validated before anything is allocated from them:
a header that is not torchtally's, sizes over :func:`payload_limit`, a dtype
outside :data:`torchtally._conventions.DTYPES`, shapes that do not match the
bytes, truncated or non-UTF-8 metadata all raise
:class:`~torchtally.errors.SyncError`. Every rank sees every header and payload,
so every rank raises the same error after the same collectives, and none
waits forever on a collective the others skipped.

Everything here is a no-op (or an identity) when ``torch.distributed`` is
unavailable or not initialised.

Example:
    >>> import torch
    >>> from torchtally.distributed import pack, unpack
    >>> payload = pack({'names': ['MAE']}, [torch.tensor([1.0, 2.0])])
    >>> unpack(payload, rank=0)
    ({'names': ['MAE']}, [tensor([1., 2.])])
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, Final

import torch
from torch import Tensor

from torchtally._conventions import dtype_from_name, dtype_name
from torchtally.errors import SyncError

__all__ = [
    "HEADER",
    "MAGIC",
    "WIRE_VERSION",
    "ProcessGroup",
    "all_gather_payloads",
    "all_reduce_sums",
    "bytes_received",
    "check_headers",
    "collective_count",
    "end_distributed_run",
    "exchange_headers",
    "is_distributed",
    "pack",
    "payload_limit",
    "rank",
    "set_payload_limit",
    "unpack",
    "world_size",
]

ProcessGroup = Any
"""A ``torch.distributed`` process group (``None`` means the default group)."""

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
)
"""The fields of a header, in order (int64 each): ``sums`` counts float64 numbers,
``payload`` and ``diagnostics`` count bytes."""

FAILED: Final = 1
"""Flag: the rank could not export its state; its payload says why."""

DISAGREEING: Final = 2
"""Flag: the payload holds descriptions to name a disagreement, not states."""

_ALIGN = 16  # bytes; every segment starts aligned so it can be viewed as any dtype
_CPU = torch.device("cpu")
_collectives = 0
_received = 0
_limit = 1 << 31


def collective_count() -> int:
    """How many collective calls this process has issued through torchtally so far.

    Example:
        >>> from torchtally.distributed import collective_count
        >>> isinstance(collective_count(), int)
        True
    """
    return _collectives


def bytes_received() -> int:
    """How many bytes this process has received through torchtally's collectives so far.

    Gathers count every rank's part; an all-reduce counts the reduced
    vector once (a ring all-reduce moves about twice that).

    Example:
        >>> from torchtally.distributed import bytes_received
        >>> bytes_received() >= 0
        True
    """
    return _received


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
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ValueError(f"set_payload_limit: expected a number of bytes >= 0, found {limit!r}")
    previous, _limit = _limit, limit
    return previous


def is_distributed(group: ProcessGroup = None) -> bool:
    """Whether ``torch.distributed`` is initialised with more than one process in ``group``.

    Example:
        >>> from torchtally.distributed import is_distributed
        >>> is_distributed()
        False
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return False
    return torch.distributed.get_world_size(group) > 1


def world_size(group: ProcessGroup = None) -> int:
    """Number of processes in ``group``; 1 outside a distributed run.

    Example:
        >>> from torchtally.distributed import world_size
        >>> world_size()
        1
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return 1
    return torch.distributed.get_world_size(group)


def rank(group: ProcessGroup = None) -> int:
    """This process's rank in ``group``; 0 outside a distributed run.

    Example:
        >>> from torchtally.distributed import rank
        >>> rank()
        0
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return 0
    return torch.distributed.get_rank(group)


def buffer_device(group: ProcessGroup, tensors: Sequence[Tensor] = ()) -> torch.device:
    """Where the collective buffers live for the group's backend.

    The device *type* depends on the backend alone, so every rank picks the
    same one whatever state it holds: CUDA for nccl (the state's own device
    when it is on CUDA, else the current device, as set by
    ``torch.cuda.set_device``), the CPU otherwise.
    """
    backend = str(torch.distributed.get_backend(group)).lower()
    if "nccl" in backend:
        for tensor in tensors:
            if tensor.device.type == "cuda":
                return tensor.device
        return torch.device("cuda", torch.cuda.current_device())
    return _CPU


def _gather_into(output: Tensor, value: Tensor, group: ProcessGroup) -> None:
    gather = getattr(torch.distributed, "all_gather_single", None) or (
        torch.distributed.all_gather_into_tensor
    )
    gather(output, value, group=group)


# -- the three collectives --------------------------------------------------------------------


def exchange_headers(
    header: Sequence[int], group: ProcessGroup, device: torch.device
) -> list[list[int]]:
    """Every rank's header, in rank order (one ``all_gather`` of eight int64 per rank)."""
    global _collectives, _received
    mine = torch.tensor(list(header), dtype=torch.int64, device=device)
    size = world_size(group)
    every = torch.empty(size * len(HEADER), dtype=torch.int64, device=device)
    _gather_into(every, mine, group)
    _collectives += 1
    _received += every.numel() * 8
    rows = every.cpu().tolist()
    return [rows[index * len(HEADER) : (index + 1) * len(HEADER)] for index in range(size)]


def all_reduce_sums(sums: Tensor, group: ProcessGroup) -> Tensor:
    """The float64 vector summed over every rank (one ``all_reduce``; a copy, not ``sums``)."""
    global _collectives, _received
    total = sums.clone()
    torch.distributed.all_reduce(total, group=group)
    _collectives += 1
    _received += total.numel() * 8
    return total


def all_gather_payloads(
    payload: Tensor, lengths: Sequence[int], group: ProcessGroup, destination: int | None = None
) -> list[Tensor] | None:
    """Every rank's payload, padded to the longest: one ``all_gather`` (or ``gather``).

    ``lengths`` are the ranks' announced payload sizes, already checked
    against :func:`payload_limit` by :func:`check_headers`. With a
    ``destination`` (a rank of ``group``), only that rank receives them; the
    others get ``None``.
    """
    global _collectives, _received
    longest = max(lengths)
    padded = torch.zeros(longest, dtype=torch.uint8, device=payload.device)
    padded[: payload.numel()] = payload
    _collectives += 1
    if destination is None:
        every = torch.empty(len(lengths) * longest, dtype=torch.uint8, device=payload.device)
        _gather_into(every, padded, group)
    else:
        here = rank(group) == destination
        parts = [torch.empty_like(padded) for _ in lengths] if here else None
        target = (
            destination if group is None else torch.distributed.get_global_rank(group, destination)
        )
        torch.distributed.gather(padded, parts, dst=target, group=group)
        if parts is None:
            return None
        every = torch.cat(parts)
    _received += every.numel()
    return [
        every[index * longest : index * longest + length] for index, length in enumerate(lengths)
    ]


def check_headers(headers: Sequence[Sequence[int]]) -> None:
    """Refuse headers that are not torchtally's or announce sizes over :func:`payload_limit`.

    What one collective brings to a rank is its ranks' sizes times their
    number (buffers are padded to the longest). The message is built from
    the headers alone, so every rank raises the same one.

    Raises:
        SyncError: naming the first rank whose header does not fit.
    """
    for index, header in enumerate(headers):
        fields = dict(zip(HEADER, header, strict=True))
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
        sizes = {
            "sums": fields["sums"] * 8,
            "payload": fields["payload"] * len(headers),
            "diagnostics": fields["diagnostics"] * len(headers),
        }
        for what, size in sizes.items():
            if not 0 <= size <= _limit:
                raise SyncError(
                    f"sync_all: rank {index} announces {what} that would bring {size} bytes to "
                    f"every rank, outside 0 to the limit of {_limit} bytes "
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
        if dtype_from_name(dtype_name(tensor.dtype)) is None:
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


# -- ending a distributed run -----------------------------------------------------------------
#
# Why a process of a gloo run must not end through the interpreter's own shutdown (issue 13):
# a gloo worker thread (pt_gloo_runloop) marks a collective complete, so the caller's wait()
# returns, and only afterwards drops the finished work and with it the collective's tensors;
# dropping a tensor that has a Python object takes the GIL. destroy_process_group() only
# unregisters the group: the group and its threads go with its last reference, and references
# outlive it (a DistributedDataParallel module; ten default arguments of
# torch.distributed.nn.functional, bound to group.WORLD when it is imported, which happens
# when torch.optim builds its first optimizer). So the threads live on into interpreter
# finalization, and one that asks for the GIL there is ended by Python with pthread_exit,
# whose unwinding through a noexcept destructor calls std::terminate: "terminate called
# without an active exception", SIGABRT, after correct output. No teardown order inside the
# interpreter closes that window (a barrier does not: the work it waits for is dropped after
# it completes), so the function below does the Python-level part of an exit (atexit
# handlers, flushed streams) and then skips finalization with os._exit.


def end_distributed_run(exit_code: int = 0) -> None:
    """End this process of a distributed run, without the occasional abort at exit.

    Call it as the last statement of every process of a run (a ``torchrun``
    script, the target of ``torch.multiprocessing``), instead of
    ``torch.distributed.destroy_process_group()``. In a process whose default
    process group is initialised it does not return: it destroys the process
    groups (with ``exit_code`` 0 only: after a failure a collective may still
    be pending, and waiting for it could block), runs the ``atexit`` handlers,
    flushes standard output and error, and ends the process with
    ``os._exit(exit_code)``, skipping the interpreter shutdown that races with
    the backend's threads. Elsewhere it does nothing and returns.

    Args:
        exit_code: the process's exit status; 0 for success.

    Example:
        >>> from torchtally.distributed import end_distributed_run
        >>> end_distributed_run()  # no process group in this process: returns at once
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    if exit_code == 0:
        torch.distributed.destroy_process_group()
    atexit._run_exitfuncs()  # what a normal exit runs: logging, multiprocessing finalizers
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            with contextlib.suppress(OSError, ValueError):  # closed or broken: nothing to do
                stream.flush()
    os._exit(exit_code)

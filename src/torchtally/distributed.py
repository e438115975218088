"""The one place torchtally calls ``torch.distributed``: the collectives and the wire format.

A sync (:func:`torchtally.sync_all`) exchanges, in this order:

1. a fixed-size **header** per rank (:data:`HEADER`, nine int64: a magic
   value, the format version, fingerprints of what the rank syncs and of
   where it is in its sequence of syncs, flags, the sizes of what
   follows and the rank's payload limit), gathered with one ``all_gather``;
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
outside :data:`torchtally._dtypes.DTYPES`, shapes that do not match the
bytes, truncated or non-UTF-8 metadata all raise
:class:`~torchtally.errors.SyncError`. Every rank sees every header and payload,
so every rank raises the same error after the same collectives, and none
waits forever on a collective the others skipped.

Everything here is a no-op (or an identity) when ``torch.distributed`` is
unavailable or not initialised. The wire format itself (the header's
fields, :func:`pack`, :func:`unpack` and the checks) is written in
:mod:`torchtally._wire` and named here too, so that every name of a sync's
bytes reads ``torchtally.distributed.<name>``.

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
import os
import sys
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from torchtally._wire import DISAGREEING as DISAGREEING  # flags: not public, still here
from torchtally._wire import FAILED as FAILED
from torchtally._wire import (
    HEADER,
    MAGIC,
    WIRE_VERSION,
    check_headers,
    pack,
    payload_limit,
    set_payload_limit,
    unpack,
)

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

_CPU = torch.device("cpu")
_collectives = 0
_received = 0


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


def _initialised() -> bool:
    """Whether ``torch.distributed`` is available and its default process group initialised."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def is_distributed(group: ProcessGroup = None) -> bool:
    """Whether ``torch.distributed`` is initialised with more than one process in ``group``.

    Example:
        >>> from torchtally.distributed import is_distributed
        >>> is_distributed()
        False
    """
    if not _initialised():
        return False
    return torch.distributed.get_world_size(group) > 1


def world_size(group: ProcessGroup = None) -> int:
    """Number of processes in ``group``; 1 outside a distributed run (torch's -1 outside ``group``).

    Example:
        >>> from torchtally.distributed import world_size
        >>> world_size()
        1
    """
    if not _initialised():
        return 1
    return torch.distributed.get_world_size(group)


def rank(group: ProcessGroup = None) -> int:
    """This process's rank in ``group``; 0 outside a distributed run.

    Example:
        >>> from torchtally.distributed import rank
        >>> rank()
        0
    """
    if not _initialised():
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
    """Every rank's header, in rank order (one ``all_gather`` of nine int64 per rank)."""
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
    if not _initialised():
        return
    if exit_code == 0:
        torch.distributed.destroy_process_group()
    atexit._run_exitfuncs()  # what a normal exit runs: logging, multiprocessing finalizers
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            with contextlib.suppress(OSError, ValueError):  # closed or broken: nothing to do
                stream.flush()
    os._exit(exit_code)

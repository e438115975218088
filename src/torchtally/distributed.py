"""The one place torchtally calls ``torch.distributed``.

:func:`all_gather_states` sends every process's state, described by JSON-able
metadata plus any number of tensors of any dtypes and shapes, to every
process, in exactly two collective calls:

1. an ``all_gather`` of a two-number header per rank (metadata bytes, tensor
   bytes), so every rank knows every payload size;
2. an ``all_gather`` of one byte buffer per rank (padded to the largest),
   holding the metadata as UTF-8 JSON followed by the raw bytes of every
   tensor.

Each rank then unpacks every rank's payload and combines them itself, in rank
order, so all ranks compute bit-identical results, and any disagreement
(different names, kinds, shapes) is seen by every rank at the same moment:
every rank raises the same error, none waits forever on a collective the
others skipped. Raw bytes keep every dtype exact (float64 running sums,
integer counts, bool masks) in one buffer.

Everything here is a no-op when ``torch.distributed`` is unavailable or not
initialised.

Example:
    >>> import torch
    >>> from torchtally.distributed import all_gather_states
    >>> all_gather_states({'count': 3}, [torch.tensor([1.0, 2.0])])  # one process: itself
    [({'count': 3}, [tensor([1., 2.])])]
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from torchtally.errors import SyncError

__all__ = [
    "ProcessGroup",
    "all_gather_states",
    "collective_count",
    "is_distributed",
    "rank",
    "world_size",
]

ProcessGroup = Any
"""A ``torch.distributed`` process group (``None`` means the default group)."""

_ALIGN = 16  # bytes; every segment starts aligned so it can be viewed as any dtype (complex128)
_collectives = 0
_CPU = torch.device("cpu")


def collective_count() -> int:
    """How many collective calls this process has issued through torchtally so far.

    Example:
        >>> from torchtally.distributed import collective_count
        >>> isinstance(collective_count(), int)
        True
    """
    return _collectives


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


def _buffer_device(group: ProcessGroup, tensors: Sequence[Tensor]) -> torch.device:
    """Where the collective buffers must live for the group's backend.

    The device *type* depends on the backend alone, so every rank picks the
    same one whatever state it holds (a rank without data included): CUDA
    for a group with nccl (the state's own device when it is on CUDA, else
    the current device, as set by ``torch.cuda.set_device``), the CPU for
    gloo and mpi.
    """
    backend = str(torch.distributed.get_backend(group)).lower()
    if "nccl" in backend:
        for tensor in tensors:
            if tensor.device.type == "cuda":
                return tensor.device
        return torch.device("cuda", torch.cuda.current_device())
    return _CPU


def _padded(size: int) -> int:
    return -(-size // _ALIGN) * _ALIGN


def _pack(
    meta: Any, tensors: Sequence[Tensor], device: torch.device, error: str | None = None
) -> tuple[Tensor, int]:
    """One uint8 buffer: aligned JSON metadata, then each tensor's raw bytes, aligned."""
    layout = [[str(t.dtype).removeprefix("torch."), list(t.shape)] for t in tensors]
    envelope = {"meta": meta, "layout": layout, "error": error}
    meta_bytes = json.dumps(envelope, separators=(",", ":")).encode()
    padded_meta = bytearray(meta_bytes.ljust(_padded(len(meta_bytes)), b" "))
    parts = [torch.frombuffer(padded_meta, dtype=torch.uint8).to(device)]
    for tensor in tensors:
        raw = tensor.detach().to(device).contiguous().reshape(-1).view(torch.uint8)
        pad = _padded(raw.numel()) - raw.numel()
        parts.append(raw)
        if pad:
            parts.append(torch.zeros(pad, dtype=torch.uint8, device=device))
    return torch.cat(parts), len(meta_bytes)


def _unpack(buffer: Tensor, meta: Any) -> list[Tensor]:
    """The tensors of one rank's buffer, as described by its decoded metadata."""
    offset = _padded(meta["bytes"])
    tensors = []
    for dtype_name, shape in meta["layout"]:
        dtype = getattr(torch, dtype_name)
        numel = 1
        for dim in shape:
            numel *= dim
        nbytes = numel * dtype.itemsize
        # Copies, not views: a view would keep the whole gathered buffer alive, and tensors
        # that view one storage as several dtypes cannot be saved with torch.save.
        tensors.append(buffer[offset : offset + nbytes].view(dtype).reshape(shape).clone())
        offset += _padded(nbytes)
    return tensors


def _decode(buffers: list[Tensor], meta_sizes: list[int]) -> list[Any]:
    """Every rank's metadata, read from the buffers' heads in one device-to-host copy."""
    head = max(meta_sizes)
    heads = torch.stack([buffer[:head] for buffer in buffers]).cpu().numpy()
    decoded = []
    for row, size in zip(heads, meta_sizes, strict=True):
        meta = json.loads(row[:size].tobytes().decode())
        meta["bytes"] = size
        decoded.append(meta)
    return decoded


def all_gather_states(
    meta: Any, tensors: Sequence[Tensor], group: ProcessGroup = None
) -> list[tuple[Any, list[Tensor]]]:
    """Every rank's ``(meta, tensors)``, in rank order, on every rank.

    Two collective calls whatever the number and kinds of tensors. Outside a
    distributed run (or with one process) returns ``[(meta, list(tensors))]``.
    Tensors come back on the buffer device of the backend (CPU for gloo, the
    state's CUDA device for nccl); callers move them where they need them.

    Args:
        meta: JSON-serialisable description of the state (names, counts, ...).
        tensors: the state tensors, any dtypes and shapes.
        group: the process group; ``None`` for the default group.

    Returns:
        A list with one ``(meta, tensors)`` pair per rank.

    Raises:
        SyncError: a rank could not pack its state (metadata that is not
            JSON-serialisable, for example). Every rank raises it, after the
            exchange, so that none waits for the others.

    Example:
        >>> import torch
        >>> from torchtally.distributed import all_gather_states
        >>> [(meta, tensors)] = all_gather_states({'names': ['MAE']}, [torch.ones(2)])
        >>> meta, tensors
        ({'names': ['MAE']}, [tensor([1., 1.])])
    """
    global _collectives
    if not is_distributed(group):
        return [(meta, list(tensors))]
    device = _buffer_device(group, tensors)
    failure: Exception | None = None
    try:
        payload, meta_size = _pack(meta, tensors, device)
    except Exception as error:  # sent to the others rather than raised alone
        failure = error
        payload, meta_size = _pack(None, [], device, f"{type(error).__name__}: {error}")
    size = world_size(group)

    header = torch.tensor([meta_size, payload.numel()], dtype=torch.int64, device=device)
    headers = [torch.empty_like(header) for _ in range(size)]
    torch.distributed.all_gather(headers, header, group=group)
    _collectives += 1
    sizes = torch.stack(headers).cpu().tolist()

    longest = max(total for _, total in sizes)
    if payload.numel() < longest:
        payload = torch.cat(
            [payload, torch.zeros(longest - payload.numel(), dtype=torch.uint8, device=device)]
        )
    buffers = [torch.empty_like(payload) for _ in range(size)]
    torch.distributed.all_gather(buffers, payload, group=group)
    _collectives += 1
    metas = _decode(buffers, [meta_size for meta_size, _ in sizes])
    failed = [(index, meta["error"]) for index, meta in enumerate(metas) if meta["error"]]
    if failed:
        found = "; ".join(f"rank {index}: {message}" for index, message in failed)
        raise SyncError(f"processes could not pack their state for the exchange ({found})") from (
            failure
        )
    return [
        (meta["meta"], _unpack(buffer, meta)) for buffer, meta in zip(buffers, metas, strict=True)
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
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    import atexit
    import contextlib
    import os
    import sys

    if exit_code == 0:
        torch.distributed.destroy_process_group()
    atexit._run_exitfuncs()  # what a normal exit runs: logging, multiprocessing finalizers
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            with contextlib.suppress(OSError, ValueError):  # closed or broken: nothing to do
                stream.flush()
    os._exit(exit_code)


__all__ += ["end_distributed_run"]

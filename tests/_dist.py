"""Start gloo process groups on loopback for the distributed tests, with a hard time limit.

``launch(world, "module:function", tmp_path)`` spawns ``world`` processes; each
joins a fresh gloo group on 127.0.0.1, counts every ``torch.distributed``
collective it issues (by wrapping the functions), runs ``function(rank, world,
**kwargs)`` and saves the returned dict with ``torch.save``. The parent joins
the children with a deadline: a child still alive at the deadline is killed
and the launch fails, as does a child that exits non-zero (its traceback is in
the failure message). So a hang fails the test instead of blocking the run.
Each child ends with ``torchtally.distributed.end_distributed_run``, so that
gloo's threads cannot abort it at interpreter exit.
"""

from __future__ import annotations

import datetime
import functools
import importlib
import os
import socket
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from torchtally.distributed import end_distributed_run

__all__ = ["COLLECTIVES", "count_collectives", "launch", "real_collectives"]

COLLECTIVES = (
    "all_gather",
    "all_gather_into_tensor",
    "all_gather_single",
    "all_gather_object",
    "all_reduce",
    "all_to_all",
    "all_to_all_single",
    "barrier",
    "broadcast",
    "broadcast_object_list",
    "gather",
    "gather_object",
    "irecv",
    "isend",
    "monitored_barrier",
    "recv",
    "reduce",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "scatter",
    "scatter_object_list",
    "send",
)
"""``torch.distributed`` functions counted as collective (or point-to-point) calls."""

_calls: dict[str, int] = {}


def real_collectives() -> int:
    """How many ``torch.distributed`` communication calls this process has made."""
    return sum(_calls.values())


def count_collectives() -> None:
    """Wrap every communication function of ``torch.distributed`` with a counter."""

    def counted(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            _calls[name] = _calls.get(name, 0) + 1
            return fn(*args, **kwargs)

        return wrapper

    for name in COLLECTIVES:
        fn = getattr(dist, name, None)
        if fn is not None:
            setattr(dist, name, counted(name, fn))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _child(rank: int, world: int, port: int, target: str, out: str, kwargs: dict[str, Any]) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    try:
        dist.init_process_group(
            "gloo",
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=world,
            # A collective that waits longer than this raises in the child (belt and braces:
            # the parent's deadline kills it anyway). Generous: on a loaded 2-core machine a
            # rank can be descheduled for seconds between collectives.
            timeout=datetime.timedelta(seconds=120),
        )
        count_collectives()
        module_name, function_name = target.split(":")
        function = getattr(importlib.import_module(module_name), function_name)
        result = function(rank, world, **kwargs)
        torch.save(result, Path(out) / f"rank{rank}.pt")
    except BaseException:
        (Path(out) / f"rank{rank}.err").write_text(traceback.format_exc())
        end_distributed_run(1)  # does not return once a process group exists
        raise SystemExit(1) from None
    # Ends the process (exit code 0) without the interpreter shutdown that now and then
    # aborts a gloo process after correct results (see torchtally.distributed).
    end_distributed_run()


def launch(
    world: int, target: str, out: Path, timeout: float = 60.0, **kwargs: Any
) -> list[dict[str, Any]]:
    """Run ``target`` (``"module:function"``) on ``world`` gloo processes; every rank's result.

    Raises:
        AssertionError: a process hung past ``timeout`` seconds or failed.
    """
    out.mkdir(parents=True, exist_ok=True)
    context = mp.get_context("spawn")
    port = _free_port()
    processes = [
        context.Process(
            target=_child, args=(rank, world, port, target, str(out), kwargs), daemon=True
        )
        for rank in range(world)
    ]
    for process in processes:
        process.start()
    deadline = time.monotonic() + timeout
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
    hung = [rank for rank, process in enumerate(processes) if process.is_alive()]
    for process in processes:
        if process.is_alive():
            process.kill()
            process.join(5)
    errors = "\n".join(path.read_text() for path in sorted(out.glob("rank*.err")))
    if hung:
        raise AssertionError(f"ranks {hung} of {world} still running after {timeout} s\n{errors}")
    failed = [rank for rank, process in enumerate(processes) if process.exitcode != 0]
    if failed:
        raise AssertionError(f"ranks {failed} of {world} failed:\n{errors}")
    return [torch.load(out / f"rank{rank}.pt", weights_only=False) for rank in range(world)]

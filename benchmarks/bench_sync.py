"""Time one distributed sync of many objectives: torchtally against torchmetrics.

Usage::

    python benchmarks/bench_sync.py                      # 2, 4 and 8 gloo processes
    python benchmarks/bench_sync.py --worlds 2 --repeats 5

For each world size, gloo processes on 127.0.0.1 each hold N objectives of two
batch-weighted means (N in 1, 8, 64, 1024), fed with an uneven batch per rank:

- torchtally: N ``MetricCollection(MAE=..., MSE=...)``, synced with one
  ``tt.sync_all(*collections)``;
- torchmetrics: the same 2N means as ``MeanMetric`` (2N, since torchmetrics
  syncs every metric of a collection by itself), each synced with its own
  ``Metric.sync()`` (``unsync()`` runs outside the timed region).

Each round times both, one after the other, between barriers; the table gives
the median over rounds of rank 0's wall time, the number of
``torch.distributed`` calls one sync made (counted by wrapping every
communication function of ``torch.distributed``) and the bytes one torchtally
sync brought to rank 0. Counts of 1,024 run at most 3 rounds (torchmetrics
then makes thousands of calls per sync). Both sides' synced values
are checked against each other before timing. With more processes than CPU
cores the processes share cores, so absolute times grow with the world size.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

# One counter of torch.distributed calls for the tests and this benchmark: tests/_dist.py.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _dist import count_collectives, real_collectives


def _mae(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return (outputs - targets).abs().mean(1)


def _mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return (outputs - targets).pow(2).mean(1)


def _timed(action: Callable[[], object]) -> tuple[float, int]:
    dist.barrier()
    calls = real_collectives()
    start = time.perf_counter()
    action()
    elapsed = time.perf_counter() - start
    return elapsed, real_collectives() - calls


def _worker(rank: int, world: int, port: int, counts: list[int], repeats: int, out: str) -> None:
    import torchmetrics

    import torchtally as tt
    from torchtally import distributed
    from torchtally.distributed import end_distributed_run

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=120),
    )
    count_collectives()
    generator = torch.Generator().manual_seed(rank)
    outputs = torch.randn(32 + 5 * rank, 4, generator=generator)
    targets = torch.randn(32 + 5 * rank, 4, generator=generator)
    rows = []
    for count in counts:
        ours = [tt.MetricCollection(MAE=_mae, MSE=_mse) for _ in range(count)]
        # Explicit sync only (as torchtally's): no implicit sync inside compute().
        theirs = [torchmetrics.MeanMetric(sync_on_compute=False) for _ in range(2 * count)]
        for collection in ours:
            collection.update(outputs, targets)
        for index, metric in enumerate(theirs):
            metric.update(_mae(outputs, targets) if index % 2 == 0 else _mse(outputs, targets))

        # Same values on both sides, and the same on every rank.
        tt.sync_all(*ours)
        for metric in theirs:
            metric.sync()
        for collection, mae, mse in zip(ours, theirs[::2], theirs[1::2], strict=True):
            values = collection.compute()
            torch.testing.assert_close(values["MAE"], mae.compute(), rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(values["MSE"], mse.compute(), rtol=1e-5, atol=1e-6)
        # (torchmetrics' compute() un-syncs the metric afterwards: local state again.)

        def sync_theirs(metrics: list[Any] = theirs) -> None:
            for metric in metrics:
                metric.sync()

        ours_times, theirs_times = [], []
        ours_calls = theirs_calls = 0
        received = distributed.bytes_received()
        rounds = repeats if count < 1024 else min(repeats, 3)
        for _ in range(rounds):
            elapsed, ours_calls = _timed(lambda objectives=ours: tt.sync_all(*objectives))
            ours_times.append(elapsed)
            elapsed, theirs_calls = _timed(sync_theirs)
            theirs_times.append(elapsed)
            for metric in theirs:
                metric.unsync()
        rows.append(
            {
                "world": world,
                "objectives": count,
                "names": 2 * count,
                "torchtally_ms": 1e3 * statistics.median(ours_times),
                "torchtally_calls": ours_calls,
                "torchtally_bytes": (distributed.bytes_received() - received) // rounds,
                "torchmetrics_ms": 1e3 * statistics.median(theirs_times),
                "torchmetrics_calls": theirs_calls,
            }
        )
    if rank == 0:
        Path(out).write_text(json.dumps(rows))
    end_distributed_run()  # no abort at exit (see torchtally.distributed)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run(world: int, counts: list[int], repeats: int) -> list[dict[str, Any]]:
    """Every row of the table for one world size."""
    with tempfile.TemporaryDirectory() as folder:
        out = str(Path(folder) / "rows.json")
        mp.start_processes(  # type: ignore[no-untyped-call]
            _worker,
            args=(world, _free_port(), counts, repeats, out),
            nprocs=world,
            start_method="spawn",
        )
        rows: list[dict[str, Any]] = json.loads(Path(out).read_text())
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| processes | objectives (names) | torchtally `sync_all` | calls | bytes received | "
        "torchmetrics `sync()` | calls | speed-up |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['world']} | {row['objectives']} ({row['names']}) "
            f"| {row['torchtally_ms']:.2f} ms | {row['torchtally_calls']} "
            f"| {row['torchtally_bytes'] / 1024:.1f} KiB "
            f"| {row['torchmetrics_ms']:.2f} ms | {row['torchmetrics_calls']} "
            f"| {row['torchmetrics_ms'] / row['torchtally_ms']:.0f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--worlds", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 8, 64, 1024])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    rows = [row for world in args.worlds for row in run(world, args.counts, args.repeats)]
    print(f"torch {torch.__version__}, {os.cpu_count()} CPU cores, gloo on 127.0.0.1")
    print(f"median of {args.repeats} rounds, rank 0's wall time per sync\n")
    print(markdown(rows))


if __name__ == "__main__":
    main()

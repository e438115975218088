"""How one sync's work and traffic per rank grow with the world size, up to 1,024 ranks.

Usage::

    python benchmarks/bench_sync_scale.py                         # every case below
    python benchmarks/bench_sync_scale.py --worlds 2 1024 --repeats 3

One machine cannot run 1,024 processes, so each world size runs in a fresh
process that joins a *simulated* process group of that size
(``torch.testing._internal.distributed.fake_pg``): every collective returns
at once, a gather hands back this rank's buffer in every rank's place (so the
merge works on as many states as a real run would), and an all-reduce
leaves the vector as it is. What it measures is therefore everything a sync
does on one rank *except waiting for the network*: describing, exporting,
packing, checking the headers, unpacking, merging every rank's states and
installing the result; plus the bytes the collectives bring to the rank
(counted by ``torchtally.distributed.bytes_received``).

Cases (``--cases``):

- ``means``: 1,024 ``Metric`` objectives, batch-weighted means (the sums path:
  one all-reduce whose size does not depend on the world size);
- ``extrema``: 1,024 ``Metric(..., aggregation='max')`` (the gathered path);
- ``cat``: one objective concatenating 1M float32 rows per rank, against one
  ``torch.cat`` of the same tensors (the floor of any merge).

The table gives the median over rounds of the sync's wall time, the bytes
received per sync, and the collectives per sync; one CPU thread.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import run_child


def _case(case: str, world: int, repeats: int) -> dict[str, Any]:
    """Run in a fresh process: one world size, one case."""
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    import torchtally as tt
    from torchtally import distributed

    torch.set_num_threads(1)
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world)
    generator = torch.Generator().manual_seed(0)
    outputs, targets = (
        torch.randn(32, 4, generator=generator),
        torch.randn(32, 4, generator=generator),
    )
    floor_ms = None
    if case == "cat":

        class Rows(tt.Objective[torch.Tensor, torch.Tensor]):
            aggregation = "cat"

            def calculate(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
                return {"rows": outputs}

        objectives: list[Any] = [Rows()]
        rows = torch.randn(1 << 20, generator=generator)
        objectives[0].update(rows, rows)
        parts = [rows.clone() for _ in range(world)]
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            torch.cat(parts)
            times.append(time.perf_counter() - start)
        floor_ms = 1e3 * statistics.median(times)
        del parts
    else:
        aggregation = "mean" if case == "means" else "max"
        objectives = [
            tt.Metric(lambda o, t: (o - t).abs().mean(1), f"M{index}", aggregation=aggregation)
            for index in range(1024)
        ]
        for objective in objectives:
            objective.update(outputs, targets)
    tt.sync_all(*objectives)  # warm-up
    times = []
    received = distributed.bytes_received()
    calls = distributed.collective_count()
    for _ in range(repeats):
        start = time.perf_counter()
        tt.sync_all(*objectives)
        times.append(time.perf_counter() - start)
    return {
        "case": case,
        "world": world,
        "objectives": len(objectives),
        "sync_ms": 1e3 * statistics.median(times),
        "bytes": (distributed.bytes_received() - received) // repeats,
        "collectives": (distributed.collective_count() - calls) // repeats,
        "floor_ms": floor_ms,
    }


def run(case: str, world: int, repeats: int) -> dict[str, Any]:
    """One row, measured in a fresh process (no heap state carried between cases)."""
    row: dict[str, Any] = run_child(__file__, case, str(world), str(repeats))
    return row


def _size(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024  # type: ignore[assignment]
    return str(count)  # pragma: no cover


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| case | ranks | objectives | sync (one rank, no network) | received per rank | "
        "collectives | one torch.cat |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        floor = f"{row['floor_ms']:.1f} ms" if row["floor_ms"] is not None else ""
        lines.append(
            f"| {row['case']} | {row['world']} | {row['objectives']} | {row['sync_ms']:.1f} ms "
            f"| {_size(row['bytes'])} | {row['collectives']} | {floor} |"
        )
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        case, world, repeats = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
        print(json.dumps(_case(case, world, repeats)))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--worlds", type=int, nargs="+", default=[2, 8, 64, 256, 1024])
    parser.add_argument("--cases", nargs="+", default=["means", "extrema", "cat"])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rows = []
    for case in args.cases:
        worlds = [world for world in args.worlds if case != "cat" or world <= 64]
        if case == "cat" and 64 not in worlds:
            worlds.append(64)
        rows.extend(run(case, world, args.repeats) for world in worlds)
    print(f"torch {torch.__version__}, simulated process groups, one CPU thread")
    print(f"median of {args.repeats} syncs after a warm-up, each world size in a fresh process\n")
    print(markdown(rows))


if __name__ == "__main__":
    main()

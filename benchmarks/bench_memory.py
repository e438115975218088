"""Peak extra memory of keeping epoch values: torchtally against the direct calls.

Each case runs in a fresh process (so one case's heap does not hide
another's), one CPU thread: 512 training-loop steps, each making new
``outputs`` and ``targets`` and calling the metric callables on them, either
directly (the baseline: values dropped at once) or through a torchtally
``MetricCollection`` (values copied into the objective's queue, folded into
float64 state). The peak resident set size (``ru_maxrss``) of the process
after the loop, minus the baseline's, is the memory torchtally adds.

Cases (``--cases``):

- ``64x10`` and ``4096x10``: two per-sample callables (MSE and MAE, ``(B,)``);
- ``views``: a callable returning ``outputs[:, 0]`` of a ``64 x 50,000``
  output (a view that would pin the whole output were it queued as is).

The bound the queue keeps is :data:`torchtally.objectives.PENDING_ELEMENTS`
queued elements per group of values (or one batch when a batch is larger),
whatever the tensors the values view::

    taskset -c 1 python benchmarks/bench_memory.py
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import run_child

STEPS = 512
SHAPES = {"64x10": (64, 10), "4096x10": (4096, 10), "views": (64, 50_000)}


def _mse(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).square().mean(1)


def _mae(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).abs().mean(1)


def _first_column(outputs: Tensor, targets: Tensor) -> Tensor:
    return outputs[:, 0]


def child(case: str, library: str) -> dict[str, float]:
    """Run the loop of ``case`` with ``library`` ('direct' or 'torchtally'); peak RSS in MiB."""
    torch.set_num_threads(1)
    import torchtally as tt

    callables: dict[str, Callable[[Tensor, Tensor], Tensor]] = (
        {"First": _first_column} if case == "views" else {"MSE": _mse, "MAE": _mae}
    )
    collection = tt.MetricCollection(**callables)
    rows, columns = SHAPES[case]
    generator = torch.Generator().manual_seed(0)
    for _ in range(STEPS):
        outputs = torch.rand(rows, columns, generator=generator)
        targets = torch.rand(rows, columns, generator=generator)
        if library == "torchtally":
            collection.update(outputs, targets)
        else:
            for fn in callables.values():
                fn(outputs, targets)
    if library == "torchtally":
        collection.compute()
    return {"peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--rounds", type=int, default=3, help="fresh processes per case")
    parser.add_argument("--child", nargs=2, metavar=("CASE", "LIBRARY"), help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child:
        print(json.dumps(child(*arguments.child)))
        return

    def peak(case: str, library: str) -> float:
        return float(run_child(__file__, case, library)["peak_mib"])

    print(f"torch {torch.__version__}, Python {sys.version.split()[0]}, {STEPS} steps per process")
    print()
    print("| case | direct peak MiB | torchtally peak MiB | extra MiB |")
    print("|---|---:|---:|---:|")
    for case in arguments.cases:
        direct, tally = [], []
        for _ in range(arguments.rounds):  # interleaved: a drift of the machine hits both
            direct.append(peak(case, "direct"))
            tally.append(peak(case, "torchtally"))
        low_direct, low_tally = min(direct), min(tally)
        print(f"| {case} | {low_direct:.1f} | {low_tally:.1f} | {low_tally - low_direct:+.1f} |")


if __name__ == "__main__":
    main()

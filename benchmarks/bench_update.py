"""Time ``update`` of a torchtally MetricCollection against the alternatives.

For collections of regression metrics, at batch 64x10 and 4096x10, on one
CPU thread, this times one training step's metric update. The sets of
metrics (``--sets``) mix the two shapes a callable may return:

- ``2 vectors``, ``8 vectors``: per-sample callables returning ``(B,)``;
- ``2 scalars``: ``mse_loss`` and ``l1_loss`` with ``reduction='mean'`` (0-d batch means);
- ``scalar+vector``: ``mse_loss`` (0-d) and a per-sample MAE;
- ``8 mixed``: the two scalars and six per-sample callables.

Each set is updated:

- **direct**: calling the same callables, nothing else (the floor);
- **exact floor**: the callables plus a hand-rolled exact accumulator with no
  validation (``total += value.sum(dtype=torch.float64)`` per value);
- **torchtally**: ``MetricCollection(**callables).update(outputs, targets)``;
- **torchtally, fold every batch**: the same with the queue turned off (each
  batch folded into the accumulators at once): the choice the queue is measured against;
- **torchmetrics**: a ``torchmetrics.MetricCollection`` of the equivalent classes;
- **torcheval**: torcheval metrics updated one by one (``MeanSquaredError``
  where torcheval has one, a ``Mean`` of the same values otherwise, a scalar
  weighted by its batch size).

Two measurements, because running many variants in one process hides what
the memory allocator does to a fresh one (glibc trimming its heap, then page
faulting it back, can cost more than the arithmetic):

1. every case in one process, in interleaved rounds (``_timing.compare``);
2. every case in fresh processes, interleaved, several rounds
   (``_timing.in_fresh_processes``), with the minor page faults per call.

Run it pinned to one core to reduce noise::

    taskset -c 1 python benchmarks/bench_update.py
    taskset -c 1 python benchmarks/bench_update.py --sets "scalar+vector" --batches 64
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import Fresh, Timing, compare, in_fresh_processes, measure, single_thread

import torchtally as tt
from torchtally.objectives import _queue

EPS = 1.17e-6  # the division guard of torchmetrics' percentage errors
TARGETS = {64: 1.20, 4096: 1.15}


# -- per-sample callables (mean over the 10 columns of each sample) ----------------------------


def mse(o: Tensor, t: Tensor) -> Tensor:
    return (o - t).square().mean(1)


def mae(o: Tensor, t: Tensor) -> Tensor:
    return (o - t).abs().mean(1)


def msle(o: Tensor, t: Tensor) -> Tensor:
    return (o.log1p() - t.log1p()).square().mean(1)


def mape(o: Tensor, t: Tensor) -> Tensor:
    return ((o - t).abs() / t.abs().clamp_min(EPS)).mean(1)


def smape(o: Tensor, t: Tensor) -> Tensor:
    return (2 * (o - t).abs() / (o.abs() + t.abs()).clamp_min(EPS)).mean(1)


def kl_divergence(o: Tensor, t: Tensor) -> Tensor:
    p = o / o.sum(1, keepdim=True)
    q = t / t.sum(1, keepdim=True)
    return (p * (p / q).log()).sum(1)


def poisson_deviance(o: Tensor, t: Tensor) -> Tensor:
    return (2 * (t * (t / o).log() + o - t)).mean(1)


def gamma_deviance(o: Tensor, t: Tensor) -> Tensor:
    return (2 * ((o / t).log() + t / o - 1)).mean(1)


Fn = Callable[[Tensor, Tensor], Tensor]

# name: (callable, torchmetrics.regression class and keyword arguments, native torcheval class)
METRICS: dict[str, tuple[Fn, str, dict[str, Any], str | None]] = {
    "MSE": (mse, "MeanSquaredError", {}, "MeanSquaredError"),
    "MAE": (mae, "MeanAbsoluteError", {}, None),
    "MSLE": (msle, "MeanSquaredLogError", {}, None),
    "MAPE": (mape, "MeanAbsolutePercentageError", {}, None),
    "SMAPE": (smape, "SymmetricMeanAbsolutePercentageError", {}, None),
    "KL": (kl_divergence, "KLDivergence", {}, None),
    "Poisson": (poisson_deviance, "TweedieDevianceScore", {"power": 1}, None),
    "Gamma": (gamma_deviance, "TweedieDevianceScore", {"power": 2}, None),
    # batch means (reduction='mean', 0-d tensors): the values of MSE and MAE over a batch
    "MSE (scalar)": (functional.mse_loss, "MeanSquaredError", {}, "MeanSquaredError"),
    "MAE (scalar)": (functional.l1_loss, "MeanAbsoluteError", {}, None),
}

SETS: dict[str, list[str]] = {
    "2 vectors": ["MSE", "MAE"],
    "8 vectors": ["MSE", "MAE", "MSLE", "MAPE", "SMAPE", "KL", "Poisson", "Gamma"],
    "2 scalars": ["MSE (scalar)", "MAE (scalar)"],
    "scalar+vector": ["MSE (scalar)", "MAE"],
    "8 mixed": ["MSE (scalar)", "MAE (scalar)", "MSLE", "MAPE", "SMAPE", "KL", "Poisson", "Gamma"],
}

CASES = ("direct", "exact floor", "torchtally", "fold every batch", "torchmetrics", "torcheval")


def data(batch: int) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(0)
    # Positive values: every metric above is defined on them.
    outputs = torch.rand(batch, 10, generator=generator) + 0.05
    targets = torch.rand(batch, 10, generator=generator) + 0.05
    return outputs, targets


def torchmetrics_collection(names: list[str]) -> Any:
    """The equivalent torchmetrics collection (imported here: only its processes pay for it)."""
    import torchmetrics
    import torchmetrics.regression as tmr

    return torchmetrics.MetricCollection(
        {name: getattr(tmr, METRICS[name][1])(**METRICS[name][2]) for name in names}
    )


def subject(case: str, names: list[str], outputs: Tensor, targets: Tensor) -> Callable[[], None]:
    """One callable doing one batch's metric update the way ``case`` does it."""
    fns = tuple(METRICS[name][0] for name in names)
    if case == "direct":

        def direct() -> None:
            for fn in fns:
                fn(outputs, targets)

        return direct
    if case == "exact floor":
        totals = [torch.zeros(1, dtype=torch.float64) for _ in fns]
        counts = [0]

        def exact() -> None:
            for fn, total in zip(fns, totals, strict=True):
                total += fn(outputs, targets).sum(dtype=torch.float64)
            counts[0] += len(outputs)

        return exact
    if case in ("torchtally", "fold every batch"):
        collection = tt.MetricCollection(**{name: METRICS[name][0] for name in names})
        return lambda: collection.update(outputs, targets)  # type: ignore[return-value]
    if case == "torchmetrics":
        reference = torchmetrics_collection(names)
        return lambda: reference.update(outputs, targets)  # type: ignore[no-any-return]
    return torcheval_update(names, outputs, targets)


def torcheval_update(names: list[str], outputs: Tensor, targets: Tensor) -> Callable[[], None]:
    """torcheval metrics updated one by one: native where torcheval has one, else a Mean."""
    from torcheval import metrics as tem

    batch = len(outputs)
    evaluators = [
        (None, getattr(tem, native)()) if native is not None else (fn, tem.Mean())
        for fn, _, _, native in (METRICS[name] for name in names)
    ]

    def update() -> None:
        for fn, metric in evaluators:
            if fn is None:
                metric.update(outputs, targets)
                continue
            value = fn(outputs, targets)
            if value.ndim:
                metric.update(value)
            else:  # a batch mean weighs its batch size
                metric.update(value, weight=batch)

    return update


def check_equivalence(names: list[str], outputs: Tensor, targets: Tensor) -> float:
    """Largest relative difference between the torchtally and torchmetrics values (sanity)."""
    collection = tt.MetricCollection(**{name: METRICS[name][0] for name in names})
    reference = torchmetrics_collection(names)
    for _ in range(3):
        collection.update(outputs, targets)
        reference.update(outputs, targets)
    ours, theirs = collection.compute(), reference.compute()
    return max(
        abs(ours[name].item() - theirs[name].item()) / max(abs(theirs[name].item()), 1e-12)
        for name in names
    )


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> str:
    import torcheval
    import torchmetrics

    return (
        f"torch {torch.__version__}, torchmetrics {torchmetrics.__version__}, torcheval "
        f"{getattr(torcheval, '__version__', '?')}, torchtally {tt.__version__}, Python "
        f"{platform.python_version()}, {cpu_name()}, {torch.get_num_threads()} thread"
    )


def child(case: str, batch: int, set_name: str) -> None:
    """Measure one case in this (fresh) process and print the result as JSON."""
    single_thread()
    if case == "fold every batch":
        _queue.PENDING_BATCHES = 1  # every batch is folded at once: no queue
    outputs, targets = data(batch)
    print(json.dumps(measure(subject(case, SETS[set_name], outputs, targets))))


Row = tuple[int, str, dict[str, Timing], dict[str, Fresh]]


def run(batch: int, set_name: str, args: argparse.Namespace) -> Row:
    """Both measurements of one set of metrics at one batch size."""
    outputs, targets = data(batch)
    names = SETS[set_name]
    in_process = {case: subject(case, names, outputs, targets) for case in CASES}
    # The fold-every-batch variant needs its own process: it changes a module constant.
    in_process.pop("fold every batch")
    timings = compare(
        in_process,
        baseline="direct",
        rounds=args.rounds,
        minimum_calls=2048 if batch <= 256 else 64,
        clock=time.perf_counter if args.wall else time.thread_time,
    )
    fresh = in_fresh_processes(
        __file__, list(CASES), "direct", [str(batch), set_name], args.fresh_rounds
    )
    return batch, set_name, timings, fresh


def print_tables(rows: list[Row]) -> None:
    clock = "wall time" if "--wall" in sys.argv else "thread CPU time"
    print(f"In one process ({clock}, µs per call, median of interleaved rounds):\n")
    print("| batch | metrics | " + " | ".join(CASES) + " |")
    print("|---|---|" + "---:|" * len(CASES))
    for batch, set_name, timings, _ in rows:
        cells = []
        for case in CASES:
            if case not in timings:
                cells.append("(fresh only)")
                continue
            timing = timings[case]
            micro = f"{timing.seconds_per_call * 1e6:.1f}"
            cells.append(micro if case == "direct" else f"{micro} ({timing.ratio:.3f})")
        print(f"| {batch}x10 | {set_name} | " + " | ".join(cells) + " |")
    print("\nIn fresh processes (wall time, µs per call, median over rounds; minor page faults")
    print("per call):\n")
    print("| batch | metrics | " + " | ".join(CASES) + " |")
    print("|---|---|" + "---:|" * len(CASES))
    for batch, set_name, _, fresh in rows:
        cells = []
        for case in CASES:
            result = fresh[case]
            ratio = "" if case == "direct" else f" ({result.ratio:.3f})"
            cells.append(f"{result.us_per_call:.1f}{ratio}, {result.faults_per_call:.2f} pf")
        print(f"| {batch}x10 | {set_name} | " + " | ".join(cells) + " |")


def print_verdicts(rows: list[Row]) -> None:
    for batch, set_name, timings, fresh in rows:
        target = TARGETS.get(batch, 1.15)
        ours = fresh["torchtally"].ratio
        theirs = fresh["torchmetrics"].ratio
        verdict = "met" if ours <= target and ours < theirs else "NOT met"
        print(
            f"torchtally at {batch}x10, {set_name}: {ours:.3f}x direct in fresh processes "
            f"({timings['torchtally'].ratio:.3f}x in one process), torchmetrics {theirs:.3f}x; "
            f"target {target:.2f}x and ahead of torchmetrics: {verdict}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds, one process")
    parser.add_argument("--fresh-rounds", type=int, default=5, help="rounds of fresh processes")
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 4096])
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--wall", action="store_true", help="wall time in the one-process table")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        batch, set_name = args.rest
        child(args.child, int(batch), set_name)
        return

    single_thread()
    print(versions() + "\n")
    rows: list[Row] = []
    worst = 0.0
    for batch in args.batches:
        for set_name in args.sets:
            outputs, targets = data(batch)
            worst = max(worst, check_equivalence(SETS[set_name], outputs, targets))
            rows.append(run(batch, set_name, args))
            print(f"done: batch {batch}x10, {set_name}", file=sys.stderr)
    print_tables(rows)
    print(f"\nlargest relative difference torchtally vs torchmetrics values: {worst:.1e}")
    print_verdicts(rows)


if __name__ == "__main__":
    main()

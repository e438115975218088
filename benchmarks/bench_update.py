"""Time ``update`` of a torchtally MetricCollection against the alternatives.

For a 2-metric and an 8-metric collection of per-sample regression metrics, at
batch 64x10 and 4096x10, on one CPU thread, this times one training step's
metric update done:

- **direct**: calling the same callables, nothing else (the floor);
- **exact floor**: the callables plus a hand-rolled exact accumulator with no
  validation (``total += value.sum(dtype=torch.float64)`` per value);
- **torchtally**: ``MetricCollection(**callables).update(outputs, targets)``;
- **torchtally, fold every batch**: the same with the queue turned off (each
  batch folded into the accumulators at once): the choice the queue is measured against;
- **torchmetrics**: a ``torchmetrics.MetricCollection`` of the equivalent classes;
- **torcheval**: torcheval metrics updated one by one (``MeanSquaredError``
  where torcheval has one, a ``Mean`` of the same per-sample values otherwise).

Two measurements, because running many variants in one process hides what
the memory allocator does to a fresh one (glibc trimming its heap, then page
faulting it back, can cost more than the arithmetic):

1. every case in one process, in interleaved rounds (``_timing.compare``);
2. every case in fresh processes, interleaved, several rounds
   (``_timing.in_fresh_processes``), with the minor page faults per call.

Run it pinned to one core to reduce noise::

    taskset -c 1 python benchmarks/bench_update.py
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchmetrics
import torchmetrics.regression as tmr
from torch import Tensor
from torcheval import metrics as tem

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import Fresh, Timing, compare, in_fresh_processes, measure, single_thread

import torchtally as tt
from torchtally.objectives import _ledger

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


Factory = Callable[[], object]

# name: (callable, torchmetrics class factory, native torcheval class factory or None)
METRICS: dict[str, tuple[Callable[[Tensor, Tensor], Tensor], Factory, Factory | None]] = {
    "MSE": (mse, tmr.MeanSquaredError, tem.MeanSquaredError),
    "MAE": (mae, tmr.MeanAbsoluteError, None),
    "MSLE": (msle, tmr.MeanSquaredLogError, None),
    "MAPE": (mape, tmr.MeanAbsolutePercentageError, None),
    "SMAPE": (smape, tmr.SymmetricMeanAbsolutePercentageError, None),
    "KL": (kl_divergence, tmr.KLDivergence, None),
    "Poisson": (poisson_deviance, lambda: tmr.TweedieDevianceScore(power=1), None),
    "Gamma": (gamma_deviance, lambda: tmr.TweedieDevianceScore(power=2), None),
}

CASES = ("direct", "exact floor", "torchtally", "fold every batch", "torchmetrics", "torcheval")


def data(batch: int) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(0)
    # Positive values: every metric above is defined on them.
    outputs = torch.rand(batch, 10, generator=generator) + 0.05
    targets = torch.rand(batch, 10, generator=generator) + 0.05
    return outputs, targets


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
        reference = torchmetrics.MetricCollection({name: METRICS[name][1]() for name in names})
        return lambda: reference.update(outputs, targets)
    evaluators = [
        (None, factory()) if factory is not None else (METRICS[name][0], tem.Mean())
        for name, factory in ((name, METRICS[name][2]) for name in names)
    ]

    def torcheval_update() -> None:
        for fn, metric in evaluators:
            if fn is None:
                metric.update(outputs, targets)  # type: ignore[attr-defined]
            else:
                metric.update(fn(outputs, targets))  # type: ignore[attr-defined]

    return torcheval_update


def check_equivalence(names: list[str], outputs: Tensor, targets: Tensor) -> float:
    """Largest relative difference between the torchtally and torchmetrics values (sanity)."""
    collection = tt.MetricCollection(**{name: METRICS[name][0] for name in names})
    reference = torchmetrics.MetricCollection({name: METRICS[name][1]() for name in names})
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


def child(case: str, batch: int, size: int) -> None:
    """Measure one case in this (fresh) process and print the result as JSON."""
    single_thread()
    if case == "fold every batch":
        _ledger.PENDING_BATCHES = 1  # every batch is folded at once: no queue
    outputs, targets = data(batch)
    print(json.dumps(measure(subject(case, list(METRICS)[:size], outputs, targets))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds, one process")
    parser.add_argument("--fresh-rounds", type=int, default=5, help="rounds of fresh processes")
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 4096])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2, 8], help="metrics per set")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        batch, size = map(int, args.rest)
        child(args.child, batch, size)
        return

    single_thread()
    print(
        f"torch {torch.__version__}, torchmetrics {torchmetrics.__version__}, "
        f"torchtally {tt.__version__}, Python {platform.python_version()}, {cpu_name()}, "
        f"{torch.get_num_threads()} thread\n"
    )
    rows: list[tuple[int, int, dict[str, Timing], dict[str, Fresh]]] = []
    worst = 0.0
    for batch in args.batches:
        outputs, targets = data(batch)
        for size in args.sizes:
            names = list(METRICS)[:size]
            worst = max(worst, check_equivalence(names, outputs, targets))
            in_process = {case: subject(case, names, outputs, targets) for case in CASES}
            # The fold-every-batch variant needs its own process: it changes a module constant.
            in_process.pop("fold every batch")
            timings = compare(
                in_process,
                baseline="direct",
                rounds=args.rounds,
                minimum_calls=2048 if batch <= 256 else 64,
                clock=time.thread_time,
            )
            fresh = in_fresh_processes(
                __file__, list(CASES), "direct", [str(batch), str(size)], args.fresh_rounds
            )
            rows.append((batch, size, timings, fresh))
            print(f"done: batch {batch}x10, {size} metrics", file=sys.stderr)

    print("In one process (thread CPU time, median of interleaved rounds):\n")
    print("| batch | metrics | " + " | ".join(CASES) + " |")
    print("|---:|---:|" + "---:|" * len(CASES))
    for batch, size, timings, _ in rows:
        cells = []
        for case in CASES:
            if case not in timings:
                cells.append("(fresh only)")
                continue
            timing = timings[case]
            micro = f"{timing.seconds_per_call * 1e6:.1f} µs"
            cells.append(micro if case == "direct" else f"{micro} ({timing.ratio:.3f})")
        print(f"| {batch}x10 | {size} | " + " | ".join(cells) + " |")
    print("\nIn fresh processes (wall time, median over rounds; minor page faults per call):\n")
    print("| batch | metrics | " + " | ".join(CASES) + " |")
    print("|---:|---:|" + "---:|" * len(CASES))
    for batch, size, _, fresh in rows:
        cells = []
        for case in CASES:
            result = fresh[case]
            micro = f"{result.us_per_call:.1f} µs"
            ratio = "" if case == "direct" else f" ({result.ratio:.3f})"
            cells.append(f"{micro}{ratio}, {result.faults_per_call:.2f} pf")
        print(f"| {batch}x10 | {size} | " + " | ".join(cells) + " |")
    print(f"\nlargest relative difference torchtally vs torchmetrics values: {worst:.1e}")
    for batch, size, timings, fresh in rows:
        target = TARGETS.get(batch, 1.15)
        ours = fresh["torchtally"].ratio
        theirs = fresh["torchmetrics"].ratio
        verdict = "met" if ours <= target and ours < theirs else "NOT met"
        print(
            f"torchtally at {batch}x10, {size} metrics: {ours:.3f}x direct in fresh processes "
            f"({timings['torchtally'].ratio:.3f}x in one process), torchmetrics {theirs:.3f}x; "
            f"target {target:.2f}x and ahead of torchmetrics: {verdict}"
        )


if __name__ == "__main__":
    main()

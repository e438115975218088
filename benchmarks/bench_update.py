"""Time ``update`` of a torchtally MetricCollection against the alternatives.

For a 2-metric and an 8-metric collection of per-sample regression metrics, at
batch 64x10 and 4096x10, on one CPU thread, in one process, in interleaved
rounds (see ``_timing.py``), this times one training step's metric update done:

- **direct**: calling the same callables, nothing else (the floor);
- **torchtally**: ``MetricCollection(**callables).update(outputs, targets)``;
- **torchmetrics**: a ``torchmetrics.MetricCollection`` of the equivalent classes;
- **torcheval**: torcheval metrics updated one by one (``MeanSquaredError``
  where torcheval has one, a ``Mean`` of the same per-sample values otherwise).

It prints a Markdown table of µs per call and the median of per-round ratios to
``direct``. Targets: torchtally within 1.15x of direct at 64x10 and 1.03x at
4096x10. Run it pinned to one core to reduce noise::

    taskset -c 1 python benchmarks/bench_update.py
"""

from __future__ import annotations

import argparse
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
from _timing import Timing, compare, single_thread

import torchtally as tt

EPS = 1.17e-6  # the division guard of torchmetrics' percentage errors


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

CASES = ("direct", "torchtally", "torchmetrics", "torcheval")


def subjects(names: list[str], outputs: Tensor, targets: Tensor) -> dict[str, Callable[[], None]]:
    """One callable per case, each doing one batch's metric update."""
    fns = tuple(METRICS[name][0] for name in names)

    def direct() -> None:
        for fn in fns:
            fn(outputs, targets)

    collection = tt.MetricCollection(**{name: METRICS[name][0] for name in names})

    def torchtally() -> None:
        collection.update(outputs, targets)

    reference = torchmetrics.MetricCollection({name: METRICS[name][1]() for name in names})

    def torchmetrics_update() -> None:
        reference.update(outputs, targets)

    native = [(name, METRICS[name][2]) for name in names]
    evaluators: list[tuple[Callable[[Tensor, Tensor], Tensor] | None, object]] = [
        (None, factory()) if factory is not None else (METRICS[name][0], tem.Mean())
        for name, factory in native
    ]

    def torcheval_update() -> None:
        for fn, metric in evaluators:
            if fn is None:
                metric.update(outputs, targets)  # type: ignore[attr-defined]
            else:
                metric.update(fn(outputs, targets))  # type: ignore[attr-defined]

    return {
        "direct": direct,
        "torchtally": torchtally,
        "torchmetrics": torchmetrics_update,
        "torcheval": torcheval_update,
    }


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds per setting")
    parser.add_argument(
        "--target-seconds", type=float, default=0.05, help="time per case per round"
    )
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 4096])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2, 8], help="metrics per set")
    parser.add_argument(
        "--wall", action="store_true", help="time wall-clock instead of this thread's CPU time"
    )
    args = parser.parse_args()

    single_thread()
    print(
        f"torch {torch.__version__}, torchmetrics {torchmetrics.__version__}, "
        f"torchtally {tt.__version__}, Python {platform.python_version()}, {cpu_name()}, "
        f"{torch.get_num_threads()} thread, {args.rounds} interleaved rounds, median, "
        f"{'wall-clock' if args.wall else 'thread CPU'} time\n"
    )
    generator = torch.Generator().manual_seed(0)
    rows: list[tuple[int, int, dict[str, Timing], float]] = []
    for batch in args.batches:
        # Positive values: every metric above is defined on them.
        outputs = torch.rand(batch, 10, generator=generator) + 0.05
        targets = torch.rand(batch, 10, generator=generator) + 0.05
        for size in args.sizes:
            names = list(METRICS)[:size]
            difference = check_equivalence(names, outputs, targets)
            # Enough calls per block to include torchtally's periodic folds many times.
            minimum = 2048 if batch <= 256 else 64
            results = compare(
                subjects(names, outputs, targets),
                baseline="direct",
                rounds=args.rounds,
                target_seconds=args.target_seconds,
                minimum_calls=minimum,
                clock=time.perf_counter if args.wall else time.thread_time,
            )
            rows.append((batch, size, results, difference))
            print(f"done: batch {batch}x10, {size} metrics", file=sys.stderr)

    header = "| batch | metrics | " + " | ".join(
        f"{case} µs" if case == "direct" else f"{case} µs (ratio)" for case in CASES
    )
    print(header + " |")
    print("|---:|---:|" + "---:|" * len(CASES))
    for batch, size, results, _ in rows:
        cells = []
        for case in CASES:
            timing = results[case]
            micro = f"{timing.seconds_per_call * 1e6:.1f}"
            cells.append(micro if case == "direct" else f"{micro} ({timing.ratio:.3f})")
        print(f"| {batch}x10 | {size} | " + " | ".join(cells) + " |")
    print()
    worst = max(difference for *_, difference in rows)
    print(f"largest relative difference torchtally vs torchmetrics values: {worst:.1e}")
    for batch, size, results, _ in rows:
        target = 1.15 if batch <= 64 else 1.03
        timing = results["torchtally"]
        verdict = "met" if timing.ratio <= target else "NOT met"
        print(
            f"torchtally at {batch}x10, {size} metrics: median ratio {timing.ratio:.3f} "
            f"(± {timing.spread:.3f}), best-round ratio {timing.best_ratio:.3f}; "
            f"target {target:.2f}x {verdict}"
        )


if __name__ == "__main__":
    main()

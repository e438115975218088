"""Time forward + backward of a composed torchtally loss against the hand-written expression.

The loss is the DRYTorch reference example ``mse**2 + 0.5 * mae``, with its
components returning either shape a callable may return (``--sets``):

- ``scalar+vector`` (the reference): ``mse`` is ``torch.nn.functional.mse_loss``
  (mean-reduced: a 0-d batch mean) and ``mae`` is per-sample
  (``(o - t).abs().mean(1)``, a ``(B,)`` vector);
- ``vectors``: both per-sample (``(o - t).square().mean(1)`` and the same ``mae``);
- ``scalars``: both batch means (``mse_loss`` and ``l1_loss``).

The criterion is the batch mean of ``mse**2 + 0.5 * mae``. Cases, at batch
64x10 and 4096x10, on one CPU thread:

- **hand-written**: ``(mse(o, t)**2 + 0.5 * mae(o, t)).mean().backward()``
  (the floor: the same tensor operations, no bookkeeping);
- **exact floor**: the hand-written expression plus what a user writes by hand
  to get the same epoch values: float64 running sums of the criterion and both
  components (a batch mean counts ``B`` times) and a count, with no validation;
- **torchtally**: ``loss(o, t).backward()`` with
  ``loss = Loss(mse, 'MSE')**2 + 0.5 * Loss(mae, 'MAE')``, which also
  accumulates both components and the criterion for ``compute()``.

``--forward-only`` adds the same two cases without ``backward``. ``--breakdown``
adds **torchtally, no accumulation**: ``loss.calculate(o, t)['Combined Loss']``
(every component called once, the criterion evaluated, nothing accumulated),
its batch mean and ``backward``, which splits the torchtally case into the
loss's own work and the accumulation. Target: the torchtally case within 1.15x
of the hand-written one.

Two measurements, as in ``bench_update.py``: every case in one process in
interleaved rounds (thread CPU time, ``_timing.compare``), then the
hand-written and torchtally cases in fresh processes, interleaved, several
rounds (wall time, with the minor page faults per call). Run it pinned to
one core to reduce noise::

    taskset -c 1 python benchmarks/bench_loss.py --breakdown
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor
from torch.nn.functional import l1_loss, mse_loss

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import Fresh, Timing, compare, in_fresh_processes, measure, single_thread

import torchtally as tt

SHAPES = [(64, 10), (4096, 10)]
TARGET = 1.15
FRESH_CASES = ["hand-written", "exact floor", "torchtally"]

Fn = Callable[[Tensor, Tensor], Tensor]


def mae(o: Tensor, t: Tensor) -> Tensor:
    return (o - t).abs().mean(1)


def per_sample_mse(o: Tensor, t: Tensor) -> Tensor:
    return (o - t).square().mean(1)


SETS: dict[str, tuple[Fn, Fn]] = {  # (mse, mae)
    "scalar+vector": (mse_loss, mae),
    "vectors": (per_sample_mse, mae),
    "scalars": (mse_loss, l1_loss),
}


def hand_written(set_name: str) -> Callable[[Tensor, Tensor], Tensor]:
    mse, absolute = SETS[set_name]

    def criterion(o: Tensor, t: Tensor) -> Tensor:
        return (mse(o, t) ** 2 + 0.5 * absolute(o, t)).mean()

    return criterion


def exact_floor(set_name: str) -> Callable[[Tensor, Tensor], Tensor]:
    """The hand-written criterion, keeping exact epoch sums of it and its components by hand."""
    mse, absolute = SETS[set_name]
    sums = torch.zeros(3, dtype=torch.float64)  # criterion, MSE, MAE
    count = [0]

    def criterion(o: Tensor, t: Tensor) -> Tensor:
        first, second = mse(o, t), absolute(o, t)
        per_sample = first**2 + 0.5 * second
        size = o.shape[0]
        parts = (per_sample.detach(), first.detach(), second.detach())
        totals = [p.sum(dtype=torch.float64) if p.ndim else p.double() * size for p in parts]
        sums.add_(torch.stack(totals))
        count[0] += size
        return per_sample.mean()

    return criterion


def torchtally_loss(set_name: str) -> tt.Loss[Tensor, Tensor]:
    mse, absolute = SETS[set_name]
    return tt.Loss(mse, "MSE") ** 2 + 0.5 * tt.Loss(absolute, "MAE")  # type: ignore[return-value]


def tensors(batch: int, columns: int) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(0)
    outputs = torch.randn(batch, columns, generator=generator).requires_grad_(True)
    targets = torch.randn(batch, columns, generator=generator)
    return outputs, targets


def step(
    criterion: Callable[[Tensor, Tensor], Tensor], outputs: Tensor, targets: Tensor
) -> Callable[[], None]:
    def run() -> None:
        outputs.grad = None
        criterion(outputs, targets).backward()  # type: ignore[no-untyped-call]

    return run


def cases(
    set_name: str, batch: int, columns: int, forward_only: bool, breakdown: bool = False
) -> dict[str, Callable[[], object]]:
    outputs, targets = tensors(batch, columns)
    hand, loss = hand_written(set_name), torchtally_loss(set_name)
    found: dict[str, Callable[[], object]] = {
        "hand-written": step(hand, outputs, targets),
        "exact floor": step(exact_floor(set_name), outputs, targets),
        "torchtally": step(loss, outputs, targets),
    }
    if breakdown:
        found["torchtally, no accumulation"] = step(
            lambda o, t: loss.calculate(o, t)["Combined Loss"].mean(), outputs, targets
        )
    if forward_only:
        found["hand-written, forward only"] = lambda: hand(outputs, targets)
        found["torchtally, forward only"] = lambda: loss(outputs, targets)
    # Same value and gradient, or the comparison means nothing.
    reference = outputs.detach().clone().requires_grad_(True)
    hand(reference, targets).backward()  # type: ignore[no-untyped-call]
    outputs.grad = None
    torch.testing.assert_close(loss(outputs, targets), hand(outputs, targets))
    loss(outputs, targets).backward()  # type: ignore[no-untyped-call]
    torch.testing.assert_close(outputs.grad, reference.grad)
    return found


def child(case: str, set_name: str, batch: int, columns: int) -> None:
    """Measure one case in this (fresh) process and print the result as JSON."""
    single_thread()
    print(json.dumps(measure(cases(set_name, batch, columns, False)[case], seconds=1.0)))


Key = tuple[str, int, int]


def table(results: dict[Key, dict[str, Timing]], fresh: dict[Key, dict[str, Fresh]]) -> str:
    lines = [
        "| loss | batch | case | µs per call | ratio vs hand-written | fresh processes: µs, "
        "ratio, page faults per call |",
        "|---|---|---|---:|---:|---:|",
    ]
    for key, timings in results.items():
        set_name, batch, columns = key
        for timing in timings.values():
            found = fresh.get(key, {}).get(timing.name)
            cell = (
                f"{found.us_per_call:.1f}, {found.ratio:.3f}, {found.faults_per_call:.2f}"
                if found is not None
                else ""
            )
            lines.append(
                f"| {set_name} | {batch}x{columns} | {timing.name} | "
                f"{timing.seconds_per_call * 1e6:.1f} | {timing.ratio:.3f} ± {timing.spread:.3f} "
                f"| {cell} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=21, help="interleaved rounds per shape")
    parser.add_argument("--seconds", type=float, default=0.1, help="time per case per round")
    parser.add_argument("--fresh-rounds", type=int, default=5, help="rounds of fresh processes")
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--forward-only", action="store_true", help="also time forward alone")
    parser.add_argument(
        "--breakdown", action="store_true", help="also time the loss without accumulating"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        set_name, batch, columns = args.rest
        child(args.child, set_name, int(batch), int(columns))
        return 0
    single_thread()
    print(
        f"torch {torch.__version__}, Python {platform.python_version()}, "
        f"{platform.processor() or platform.machine()}, 1 thread"
    )
    results: dict[Key, dict[str, Timing]] = {}
    fresh: dict[Key, dict[str, Fresh]] = {}
    for set_name in args.sets:
        for batch, columns in SHAPES:
            key = (set_name, batch, columns)
            results[key] = compare(
                cases(set_name, batch, columns, args.forward_only, args.breakdown),
                baseline="hand-written",
                rounds=args.rounds,
                target_seconds=args.seconds,
                # every block must include the periodic fold of the queued batches
                minimum_calls=1100,
            )
            if args.fresh_rounds:
                fresh[key] = in_fresh_processes(
                    __file__,
                    FRESH_CASES,
                    "hand-written",
                    [set_name, str(batch), str(columns)],
                    args.fresh_rounds,
                )
            print(f"done: {set_name} at {batch}x{columns}", file=sys.stderr)
    print(table(results, fresh))
    for (set_name, batch, columns), timings in results.items():
        ratio = timings["torchtally"].ratio
        late = fresh.get((set_name, batch, columns), {}).get("torchtally")
        also = f", {late.ratio:.3f} in fresh processes" if late is not None else ""
        verdict = "met" if ratio <= TARGET and (late is None or late.ratio <= TARGET) else "NOT met"
        print(
            f"{set_name} at {batch}x{columns}: torchtally / hand-written = {ratio:.3f}{also} "
            f"({verdict}, <= {TARGET})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

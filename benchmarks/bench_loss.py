"""Time forward + backward of a composed torchtally loss against the hand-written expression.

The loss is the DRYTorch reference example ``mse**2 + 0.5 * mae`` where
``mse`` is ``torch.nn.functional.mse_loss`` (mean-reduced: a scalar per batch)
and ``mae`` is per-sample (``(o - t).abs().mean(1)``, a ``(B,)`` vector), so
the criterion is the batch mean of ``mse**2 + 0.5 * mae``. Cases, at batch
64x10 and 4096x10, one CPU thread, one process, interleaved rounds (see
``_timing.py``):

- **hand-written**: ``(mse_loss(o, t)**2 + 0.5 * mae(o, t)).mean().backward()``
  (the floor: the same tensor operations, no bookkeeping);
- **torchtally**: ``loss(o, t).backward()`` with
  ``loss = Loss(mse_loss, 'MSE')**2 + 0.5 * Loss(mae, 'MAE')``, which also
  accumulates both components for ``compute()``.

``--forward-only`` adds the same two cases without ``backward``. ``--breakdown``
adds **torchtally, no accumulation**: ``loss.calculate(o, t)['Combined Loss']``
(every component called once, the criterion evaluated, nothing accumulated),
its batch mean and ``backward``, which splits the torchtally case into the
loss's own work and the accumulation. Target: the torchtally case within 1.15x
of the hand-written one. Run it pinned to one core
to reduce noise::

    taskset -c 1 python benchmarks/bench_loss.py
"""

from __future__ import annotations

import argparse
import platform
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor
from torch.nn.functional import mse_loss

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import Timing, compare, single_thread

import torchtally as tt

SHAPES = [(64, 10), (4096, 10)]
TARGET = 1.15


def mae(o: Tensor, t: Tensor) -> Tensor:
    return (o - t).abs().mean(1)


def hand_written(o: Tensor, t: Tensor) -> Tensor:
    return (mse_loss(o, t) ** 2 + 0.5 * mae(o, t)).mean()


def cases(
    batch: int, columns: int, forward_only: bool, breakdown: bool = False
) -> dict[str, Callable[[], object]]:
    generator = torch.Generator().manual_seed(0)
    outputs = torch.randn(batch, columns, generator=generator).requires_grad_(True)
    targets = torch.randn(batch, columns, generator=generator)
    loss = tt.Loss(mse_loss, "MSE") ** 2 + 0.5 * tt.Loss(mae, "MAE")

    def step(criterion: Callable[[Tensor, Tensor], Tensor]) -> Callable[[], object]:
        def run() -> None:
            outputs.grad = None
            criterion(outputs, targets).backward()  # type: ignore[no-untyped-call]

        return run

    found: dict[str, Callable[[], object]] = {
        "hand-written": step(hand_written),
        "torchtally": step(loss),
    }
    if breakdown:
        found["torchtally, no accumulation"] = step(
            lambda o, t: loss.calculate(o, t)["Combined Loss"].mean()
        )
    if forward_only:
        found["hand-written, forward only"] = lambda: hand_written(outputs, targets)
        found["torchtally, forward only"] = lambda: loss(outputs, targets)
    # Same value and gradient, or the comparison means nothing.
    reference = outputs.detach().clone().requires_grad_(True)
    hand_written(reference, targets).backward()  # type: ignore[no-untyped-call]
    outputs.grad = None
    torch.testing.assert_close(loss(outputs, targets), hand_written(outputs, targets))
    loss(outputs, targets).backward()  # type: ignore[no-untyped-call]
    torch.testing.assert_close(outputs.grad, reference.grad)
    return found


def table(results: dict[tuple[int, int], dict[str, Timing]]) -> str:
    lines = [
        "| batch | case | µs per call | ratio vs hand-written |",
        "|---|---|---:|---:|",
    ]
    for (batch, columns), timings in results.items():
        for timing in timings.values():
            lines.append(
                f"| {batch}x{columns} | {timing.name} | {timing.seconds_per_call * 1e6:.1f} | "
                f"{timing.ratio:.3f} ± {timing.spread:.3f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=21, help="interleaved rounds per shape")
    parser.add_argument("--seconds", type=float, default=0.1, help="time per case per round")
    parser.add_argument("--forward-only", action="store_true", help="also time forward alone")
    parser.add_argument(
        "--breakdown", action="store_true", help="also time the loss without accumulating"
    )
    args = parser.parse_args(argv)
    single_thread()
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, 1 thread")
    results: dict[tuple[int, int], dict[str, Timing]] = {}
    for batch, columns in SHAPES:
        results[batch, columns] = compare(
            cases(batch, columns, args.forward_only, args.breakdown),
            baseline="hand-written",
            rounds=args.rounds,
            target_seconds=args.seconds,
            # every block must include the periodic fold of the queued batches
            minimum_calls=1100,
        )
    print(table(results))
    for (batch, columns), timings in results.items():
        ratio = timings["torchtally"].ratio
        verdict = "met" if ratio <= TARGET else "NOT met"
        print(
            f"{batch}x{columns}: torchtally / hand-written = {ratio:.3f} ({verdict}, <= {TARGET})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

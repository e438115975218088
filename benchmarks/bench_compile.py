"""A compiled training step with torchtally against the same step written by hand and compiled.

Usage::

    taskset -c 1 python benchmarks/bench_compile.py            # 64x10 and 4096x10
    taskset -c 1 python benchmarks/bench_compile.py --parts loss --steps 400 --repeats 7

The step: a linear model, a loss, backward, an SGD step, and the epoch state
of two metrics updated with the detached outputs. ``--parts`` picks what keeps
epoch values (all three by default, one table row each): ``both``, the loss
and the collection; ``loss``, the composed loss only (the metrics left out);
``collection``, the collection only (the loss written by hand in both steps).
``--call-only`` compiles the loss call and the collection update alone (no
model, backward or optimizer step), to see the objectives' own cost.
``--skip-global-guards`` compiles both steps with
``options={'guard_filter_fn': torch.compiler.skip_guard_on_globals_unsafe}``
(torch drops its checks that module globals are unchanged before each call).

- **torchtally**: ``tt.Loss(mse_loss, 'MSE') + 0.5 * tt.Loss(mae, 'MAE')`` called on
  the outputs (its ``forward``: the value to optimise, accumulated with its
  components) and ``tt.MetricCollection(MSE=..., MAE=...)`` updated;
- **by hand**: the same expression, and the same exact epoch state kept by
  hand as float64 running sums and counts updated in place (what a careful
  user would write to have epoch values at all).

Both steps go through ``torch.compile`` (default mode) once, are warmed up,
then timed over ``--steps`` steps; each variant runs in a fresh process
(``--child``), one CPU thread, the two interleaved over ``--repeats`` rounds,
and the table gives the medians. The recompilations each compiled step made
are counted (``torch._dynamo`` counters) and printed.
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
from torch import Tensor
from torch.nn import functional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import run_child

FEATURES = 10


def mae(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).abs().mean(1)


def mse(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).pow(2).mean(1)


PARTS = ("both", "loss", "collection")
WHAT = {"both": "loss and collection", "loss": "composed loss", "collection": "collection"}


def _calls(variant: str, parts: str) -> Any:
    """What keeps the epoch values of ``parts``: a function of ``(outputs, targets)``.

    It returns the loss to optimise when ``parts`` keeps the loss's values
    (``both`` or ``loss``), else ``None``. **torchtally**: the composed loss and
    the collection's update; **by hand**: the same expression, and float64
    running sums and counts updated in place (compile-friendly).
    """
    import torchtally as tt

    with_loss, with_metrics = parts in ("both", "loss"), parts in ("both", "collection")
    if variant == "torchtally":
        loss = tt.Loss(functional.mse_loss, "MSE") + 0.5 * tt.Loss(mae, "MAE")
        metrics = tt.MetricCollection(MSE=mse, MAE=mae)

        def calls(outputs: Tensor, targets: Tensor) -> Tensor | None:
            if with_metrics:
                metrics.update(outputs.detach(), targets)
            return loss(outputs, targets) if with_loss else None

        return calls
    sums = torch.zeros(3 * with_loss + 2 * with_metrics, dtype=torch.float64)
    counts = torch.zeros(1, dtype=torch.float64)

    def by_hand(outputs: Tensor, targets: Tensor) -> Tensor | None:
        size, totals, value = outputs.shape[0], [], None
        if with_metrics:  # metric MSE and MAE
            detached = outputs.detach()
            totals += [mse(detached, targets).sum(), mae(detached, targets).sum()]
        if with_loss:  # the loss, MSE and MAE
            per_mae, batch_mse = mae(outputs, targets), functional.mse_loss(outputs, targets)
            value = batch_mse + 0.5 * per_mae.mean()
            totals += [value.detach() * size, batch_mse.detach() * size, per_mae.detach().sum()]
        sums.add_(torch.stack(totals).to(torch.float64))
        counts.add_(size)
        return value

    return by_hand


def _steps(variant: str, parts: str = "both") -> Any:
    """The training step of ``variant`` around :func:`_calls` (the loss written by hand if
    ``parts`` is ``collection``): a linear model, backward, an SGD step."""
    torch.manual_seed(0)
    model = torch.nn.Linear(FEATURES, FEATURES)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    calls = _calls(variant, parts)

    def step(inputs: Tensor, targets: Tensor) -> None:
        outputs = model(inputs)
        value = calls(outputs, targets)
        if value is None:  # the loss's values are not kept: the same expression by hand
            value = functional.mse_loss(outputs, targets) + 0.5 * mae(outputs, targets).mean()
        value.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)

    return step


def _child(
    variant: str, batch: int, steps: int, parts: str, call_only: bool, skip_globals: bool
) -> dict[str, Any]:
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch.set_num_threads(1)
    step = _calls(variant, parts) if call_only else _steps(variant, parts)
    options = {"guard_filter_fn": torch.compiler.skip_guard_on_globals_unsafe}
    compiled = torch.compile(step, options=options if skip_globals else None)
    generator = torch.Generator().manual_seed(1)
    data = [
        (
            torch.randn(batch, FEATURES, generator=generator).requires_grad_(call_only),
            torch.randn(batch, FEATURES, generator=generator),
        )
        for _ in range(16)
    ]
    for inputs, targets in data:  # compile and warm up
        compiled(inputs, targets)
    start = time.perf_counter()
    for index in range(steps):
        compiled(*data[index % len(data)])
    elapsed = (time.perf_counter() - start) / steps
    return {
        "variant": variant,
        "batch": batch,
        "parts": parts,
        "us": elapsed * 1e6,
        "graphs": counters["stats"]["unique_graphs"],
        "breaks": sum(counters["graph_break"].values()),
    }


def run(
    variant: str, batch: int, steps: int, parts: str, call_only: bool, skip_globals: bool
) -> dict[str, Any]:
    what = "call" if call_only else "step"
    guards = "no-globals" if skip_globals else "all"
    result: dict[str, Any] = run_child(
        __file__, variant, str(batch), str(steps), parts, what, guards
    )
    return result


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        arguments = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
        only, skip = sys.argv[6] == "call", sys.argv[7] == "no-globals"
        print(json.dumps(_child(*arguments, call_only=only, skip_globals=skip)))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 4096])
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--call-only", action="store_true", help="time the objectives' calls alone, not a step"
    )
    parser.add_argument(
        "--skip-global-guards",
        action="store_true",
        help="compile with torch.compiler.skip_guard_on_globals_unsafe as the guard filter",
    )
    args = parser.parse_args()
    rows = []
    for parts in args.parts:
        for batch in args.batches:
            times: dict[str, list[float]] = {"torchtally": [], "by hand": []}
            graphs: dict[str, Any] = {}
            for _ in range(args.repeats):
                for variant in times:  # interleaved, each in a fresh process
                    result = run(
                        variant, batch, args.steps, parts, args.call_only, args.skip_global_guards
                    )
                    times[variant].append(result["us"])
                    graphs[variant] = (result["graphs"], result["breaks"])
            ours = statistics.median(times["torchtally"])
            theirs = statistics.median(times["by hand"])
            rows.append((parts, batch, ours, theirs, graphs))
    print(
        f"torch {torch.__version__}, one CPU thread, compiled "
        f"{'calls of the objectives' if args.call_only else 'training step'}"
        f"{', no guards on globals' if args.skip_global_guards else ''}, median of "
        f"{args.repeats} fresh processes x {args.steps} steps\n"
    )
    print(
        "| epoch values kept | batch | torchtally | by hand | ratio "
        "| graphs (breaks): torchtally, by hand |"
    )
    print("|---|---|---|---|---|---|")
    for parts, batch, ours, theirs, graphs in rows:
        print(
            f"| {WHAT[parts]} | {batch}x{FEATURES} | {ours:.1f} µs | {theirs:.1f} µs "
            f"| {ours / theirs:.2f}x | {graphs['torchtally'][0]} ({graphs['torchtally'][1]}), "
            f"{graphs['by hand'][0]} ({graphs['by hand'][1]}) |"
        )


if __name__ == "__main__":
    main()

"""A small timing helper shared by the benchmark scripts.

Every case of a comparison is timed in the same process, one CPU thread, in
interleaved rounds: each round times every case once (in a rotating order) so
that drifts of the machine (frequency scaling, other processes) hit all cases
alike. A case's ratio to the baseline is taken within each round and the
median over rounds is reported, which is far less noisy than a ratio of two
separately measured medians.

Time is the CPU time of the calling thread by default (``time.thread_time``):
for single-threaded CPU work it equals wall time on an idle machine, and on a
shared one it leaves out the time the thread waits for a core. Pass
``clock=time.perf_counter`` for wall time.

Usage::

    from _timing import compare, markdown_table, single_thread

    single_thread()
    results = compare({"direct": direct, "library": library}, baseline="direct")
    print(markdown_table(results))
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "Clock",
    "Fresh",
    "Timing",
    "calibrate",
    "compare",
    "in_fresh_processes",
    "markdown_table",
    "measure",
    "run_child",
    "single_thread",
]


@dataclass(frozen=True)
class Timing:
    """Result of one case.

    Attributes:
        name: the case's name.
        seconds_per_call: median over rounds of the time per call.
        ratio: median over rounds of (this case's time per call / the baseline's).
        spread: half the distance between the 25th and 75th percentile of the ratios.
        best_ratio: this case's fastest round over the baseline's fastest round.
            Interference from other processes only ever adds time, so on a
            shared machine this is a useful check on ``ratio``.
        calls_per_round: how many calls each round timed.
    """

    name: str
    seconds_per_call: float
    ratio: float
    spread: float
    best_ratio: float
    calls_per_round: int


def single_thread() -> None:
    """Run torch on one CPU thread (intra- and inter-op), as the targets are stated."""
    torch.set_num_threads(1)
    # Raises once inter-op work has started or the value was set: keep what is there then.
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)


Clock = Callable[[], float]


def _time_block(fn: Callable[[], object], calls: int, clock: Clock = time.thread_time) -> float:
    gc.collect()
    gc.disable()  # a collection inside one case's block would be charged to that case alone
    try:
        start = clock()
        for _ in range(calls):
            fn()
        return clock() - start
    finally:
        gc.enable()


def calibrate(
    fn: Callable[[], object],
    target_seconds: float,
    minimum_calls: int = 1,
    clock: Clock = time.thread_time,
) -> int:
    """How many calls of ``fn`` take about ``target_seconds`` (at least ``minimum_calls``)."""
    calls = 1
    while True:
        elapsed = _time_block(fn, calls, clock)
        if elapsed >= target_seconds / 4 or calls >= 1 << 24:
            break
        calls *= 4
    return max(minimum_calls, round(calls * target_seconds / max(elapsed, 1e-9)))


def compare(
    cases: Mapping[str, Callable[[], object]],
    baseline: str,
    *,
    rounds: int = 15,
    target_seconds: float = 0.05,
    minimum_calls: int = 1,
    warmup_calls: int = 200,
    clock: Clock = time.thread_time,
) -> dict[str, Timing]:
    """Time every case in interleaved rounds and compare each with ``baseline``.

    Args:
        cases: callables of no argument, by name (each call is one unit of work).
        baseline: the name of the case ratios are taken against.
        rounds: how many interleaved rounds.
        target_seconds: about how long each case runs per round.
        minimum_calls: at least this many calls per case per round (so that
            work amortised over many calls, such as a periodic fold, is
            included in every block).
        warmup_calls: calls of each case before anything is timed.
        clock: the clock read around each block (default: this thread's CPU time).

    Returns:
        A :class:`Timing` per case, in the order of ``cases``.
    """
    if baseline not in cases:
        raise KeyError(f"baseline {baseline!r} is not one of the cases {list(cases)}")
    names = list(cases)
    for fn in cases.values():
        for _ in range(warmup_calls):
            fn()
    calls = {name: calibrate(cases[name], target_seconds, minimum_calls, clock) for name in names}
    per_call: dict[str, list[float]] = {name: [] for name in names}
    ratios: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        shift = round_index % len(names)
        this_round: dict[str, float] = {}
        for name in names[shift:] + names[:shift]:  # rotate the order every round
            this_round[name] = _time_block(cases[name], calls[name], clock) / calls[name]
        for name in names:
            per_call[name].append(this_round[name])
            ratios[name].append(this_round[name] / this_round[baseline])
    results = {}
    for name in names:
        quartiles = statistics.quantiles(ratios[name], n=4) if rounds > 1 else [0.0, 0.0, 0.0]
        results[name] = Timing(
            name=name,
            seconds_per_call=statistics.median(per_call[name]),
            ratio=statistics.median(ratios[name]),
            spread=(quartiles[2] - quartiles[0]) / 2,
            best_ratio=min(per_call[name]) / min(per_call[baseline]),
            calls_per_round=calls[name],
        )
    return results


def markdown_table(
    results: Mapping[str, Timing], title: str = "case", baseline_label: str = "direct"
) -> str:
    """A Markdown table: µs per call, ratio to the baseline and its spread."""
    lines = [
        f"| {title} | µs per call | ratio vs {baseline_label} | best-round ratio |",
        "|---|---:|---:|---:|",
    ]
    for timing in results.values():
        lines.append(
            f"| {timing.name} | {timing.seconds_per_call * 1e6:.1f} | "
            f"{timing.ratio:.3f} ± {timing.spread:.3f} | {timing.best_ratio:.3f} |"
        )
    return "\n".join(lines)


# -- fresh processes ------------------------------------------------------------------------------


def measure(
    fn: Callable[[], object], seconds: float = 0.5, warmup_calls: int = 300
) -> dict[str, float]:
    """Time ``fn`` in this process after a warm-up: µs per call and minor page faults per call.

    Meant for a fresh process (see :func:`in_fresh_processes`): in a process
    that has run other cases the allocator is warm and page faults hide.
    """
    for _ in range(warmup_calls):
        fn()
    calls = calibrate(fn, seconds / 4, clock=time.perf_counter)
    faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - start
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before
    return {"us_per_call": elapsed / calls * 1e6, "faults_per_call": faults / calls, "calls": calls}


@dataclass(frozen=True)
class Fresh:
    """One case measured in fresh processes: medians over rounds."""

    name: str
    us_per_call: float
    ratio: float
    faults_per_call: float


def run_child(script: str, *args: str) -> Any:
    """Run ``python script --child *args`` on one thread; the JSON its last line prints."""
    done = subprocess.run(
        [sys.executable, script, "--child", *args],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def in_fresh_processes(
    script: str, cases: list[str], baseline: str, args: list[str], rounds: int = 5
) -> dict[str, Fresh]:
    """Run ``python script --child CASE *args`` once per case per round, interleaved.

    The child prints :func:`measure`'s dict as JSON on its last line. Each
    round runs every case once, in a rotating order; a case's ratio to the
    baseline is taken within each round and the median over rounds reported.
    """
    results: dict[str, list[dict[str, float]]] = {case: [] for case in cases}
    for round_index in range(rounds):
        shift = round_index % len(cases)
        for case in cases[shift:] + cases[:shift]:
            results[case].append(run_child(script, case, *args))
    fresh = {}
    for case in cases:
        ratios = [
            mine["us_per_call"] / base["us_per_call"]
            for mine, base in zip(results[case], results[baseline], strict=True)
        ]
        fresh[case] = Fresh(
            name=case,
            us_per_call=statistics.median(run["us_per_call"] for run in results[case]),
            ratio=statistics.median(ratios),
            faults_per_call=statistics.median(run["faults_per_call"] for run in results[case]),
        )
    return fresh

"""Threads: two threads, each with its own objectives, get what one thread gets.

Lazily made attributes (a loss's schedule positions, a plan's derived data) are
computed without a lock (``torchtally._lazy``); each belongs to one instance, so
objectives that share nothing but their callables may run in parallel threads.
One objective used from two threads at once is not supported (docs/metrics.md).
"""

from __future__ import annotations

import sys
import threading
from typing import Any

import torch
from torch import Tensor

import torchtally as tt


def mae(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).abs().mean(1)


def mse(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).pow(2).mean()


def highest(outputs: Tensor, targets: Tensor) -> Tensor:
    return outputs.max()


def make() -> Any:
    ramp = tt.schedules.linear(0.0, 1.0, steps=30)
    loss = 2 * tt.Loss(mae, "MAE") + ramp * tt.Loss(mse, "MSE")
    return loss | tt.Metric(highest, "Max")


def batches(seed: int) -> list[tuple[Tensor, Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(5 + i % 3, 4, generator=generator),
            torch.randn(5 + i % 3, 4, generator=generator),
        )
        for i in range(60)
    ]


def test_two_threads_with_their_own_losses_get_what_one_thread_gets() -> None:
    data = {seed: batches(seed) for seed in (1, 2)}
    expected = {}
    for seed, seeds_batches in data.items():
        loss = make()
        for outputs, targets in seeds_batches:
            loss(outputs, targets)
        expected[seed] = loss.compute()
    found: dict[int, dict[str, Tensor]] = {}
    both_ready = threading.Barrier(2)

    def train(seed: int) -> None:
        loss = make()  # nothing made yet: plans and positions are made in the threads
        both_ready.wait(timeout=60)
        for outputs, targets in data[seed]:
            loss(outputs, targets)
        found[seed] = loss.compute()

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        threads = [threading.Thread(target=train, args=(seed,)) for seed in data]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    finally:
        sys.setswitchinterval(interval)
    assert found.keys() == expected.keys()
    for seed, values in expected.items():
        assert found[seed].keys() == values.keys()
        for name, value in values.items():
            assert torch.equal(found[seed][name], value), (seed, name)

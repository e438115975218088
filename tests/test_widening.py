"""Tests of the reused float64 buffer folds sum through (torchtally.aggregation._widening).

The buffer is shared by every fold of a thread, so what could go wrong is
aliasing: one fold's values overwriting another's, one thread's another's,
or a buffer made in inference mode refusing later folds. References are
float64 sums of the concatenated data.
"""

from __future__ import annotations

import threading

import pytest
import torch
from torch import Tensor

import torchtally as tt
from torchtally.aggregation._widening import REUSED_ELEMENTS, scratch_float64
from torchtally.objectives import PENDING_ELEMENTS


def per_sample_mae(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).abs().mean(1)


def per_sample_mse(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).square().mean(1)


@pytest.fixture(autouse=True)
def small_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    """Folds every two batches of 1024 samples (two names), as a full queue would."""
    monkeypatch.setattr("torchtally.objectives._queue.PENDING_ELEMENTS", 4096)


def batches(seed: int, count: int, size: int = 1024) -> list[tuple[Tensor, Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(size, 10, generator=generator), torch.randn(size, 10, generator=generator))
        for _ in range(count)
    ]


def reference(fn: object, data: list[tuple[Tensor, Tensor]]) -> float:
    outputs = torch.cat([o for o, _ in data]).double()
    targets = torch.cat([t for _, t in data]).double()
    assert callable(fn)
    return float(fn(outputs, targets).mean())


def test_a_copy_the_caller_may_change_and_the_buffer_reused() -> None:
    values = torch.tensor([1.0, 2.5, -3.0])
    wide = scratch_float64(values)
    wide.mul_(2)
    assert wide.dtype == torch.float64
    assert torch.equal(values, torch.tensor([1.0, 2.5, -3.0]))  # the input is never changed
    again = scratch_float64(torch.tensor([7.0]))
    assert again.data_ptr() == wide.data_ptr()  # the same buffer, not a fresh tensor
    assert float64_input_is_copied_too()


def float64_input_is_copied_too() -> bool:
    values = torch.tensor([1.0, 2.0], dtype=torch.float64)
    scratch_float64(values).zero_()
    return bool(torch.equal(values, torch.tensor([1.0, 2.0], dtype=torch.float64)))


def test_blocks_over_the_bound_get_a_fresh_tensor() -> None:
    small = scratch_float64(torch.ones(4))
    large = scratch_float64(torch.ones(REUSED_ELEMENTS + 1))
    assert large.data_ptr() != small.data_ptr()
    assert float(large.sum()) == REUSED_ELEMENTS + 1
    assert REUSED_ELEMENTS >= PENDING_ELEMENTS  # a full queue's fold reuses the buffer


def test_interleaved_folds_of_two_collections_stay_exact() -> None:
    # Each collection's fold goes through the same buffer, and their folds alternate.
    left = tt.MetricCollection(MAE=per_sample_mae, MSE=per_sample_mse)
    right = tt.MetricCollection(MAE=per_sample_mae)
    first, second = batches(0, 9), batches(1, 9)
    for (o1, t1), (o2, t2) in zip(first, second, strict=True):
        left.update(o1, t1)
        right.update(o2, t2)
    values = left.compute()
    assert abs(float(values["MAE"]) - reference(per_sample_mae, first)) < 1e-6
    assert abs(float(values["MSE"]) - reference(per_sample_mse, first)) < 1e-6
    assert abs(float(right.compute()["MAE"]) - reference(per_sample_mae, second)) < 1e-6


def test_weighted_folds_through_the_buffer_stay_exact() -> None:
    metric = tt.Metric(per_sample_mae, "MAE")
    data = batches(2, 9)
    generator = torch.Generator().manual_seed(3)
    weights = [torch.rand(1024, generator=generator).double() for _ in data]
    weights[5][:100] = 0.0  # excluded samples
    for (outputs, targets), weight in zip(data, weights, strict=True):
        metric.update(outputs, targets, weight=weight)
    outputs = torch.cat([o for o, _ in data]).double()
    targets = torch.cat([t for _, t in data]).double()
    every = torch.cat(weights)
    expected = float((per_sample_mae(outputs, targets) * every).sum() / every.sum())
    assert abs(float(metric.compute()["MAE"]) - expected) < 1e-6


def test_threads_folding_at_once_each_get_their_own_buffer() -> None:
    results: dict[int, float] = {}
    pointers: dict[int, int] = {}
    data = {seed: batches(seed, 41) for seed in (10, 11)}
    both_alive = threading.Barrier(2)

    def fold(seed: int) -> None:
        metric = tt.Metric(per_sample_mae, "MAE")
        for outputs, targets in data[seed]:
            metric.update(outputs, targets)
        results[seed] = float(metric.compute()["MAE"])
        pointers[seed] = scratch_float64(torch.ones(1)).data_ptr()
        both_alive.wait(timeout=60)  # neither buffer is freed before both were seen

    threads = [threading.Thread(target=fold, args=(seed,)) for seed in data]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert pointers[10] != pointers[11]
    for seed, found in results.items():
        assert abs(found - reference(per_sample_mae, data[seed])) < 1e-6


def test_a_buffer_first_made_in_inference_mode_serves_later_training_folds() -> None:
    result: list[float] = []

    def run() -> None:  # a fresh thread: its buffer is first made under inference mode
        evaluation, training = tt.Metric(per_sample_mae, "MAE"), tt.Metric(per_sample_mae, "MAE")
        data = batches(4, 9)
        with torch.inference_mode():  # a full queue (4 batches of 1024): the largest fold
            for outputs, targets in data[:4]:
                evaluation.update(outputs, targets)
            evaluation.compute()
        for outputs, targets in data:
            training.update(outputs, targets)
        result.append(float(training.compute()["MAE"]) - reference(per_sample_mae, data))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=60)
    assert len(result) == 1 and abs(result[0]) < 1e-6

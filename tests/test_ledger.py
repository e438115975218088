"""The ledger's update path for every mix of batch shapes.

``update`` and ``forward`` copy each batch's values into buffers the objective
owns and fold them into the accumulators in bulk. How a batch becomes blocks
(a plan) is worked out once per kind of batch (names, dtypes, shape classes,
device) and reused: a stream mixing scalar batch values (``mse_loss`` with
``reduction='mean'``) and per-sample ``(B,)`` vectors must not be validated
and folded batch by batch. These tests count plans and folds with spies, and
check values against exact references, refusals, memory bounds and aliasing.
Timings live in ``benchmarks/``, never here.
"""

from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction
from typing import Any, ClassVar

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor
from typing_extensions import override

import torchtally as tt
from _held import queued_elements  # tests/_held.py
from torchtally.aggregation import Accumulator
from torchtally.errors import ResultShapeError, ResultTypeError, WeightError
from torchtally.objectives import PENDING_BATCHES, PENDING_ELEMENTS
from torchtally.objectives._ledger import Ledger

Values = dict[str, Any]


def mae(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).abs().mean(1)  # per sample: (B,)


def scalar_mae(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).abs().mean()  # a batch mean: 0-d


class Echo(tt.Objective[Values, Tensor]):
    """Reports the values it is given: ``outputs`` is the batch's dict, ``targets`` sizes it."""

    aggregation: ClassVar[dict[str, Any]] = {  # type: ignore[misc]
        "total": "sum",
        "count": "sum",
        "peak": "max",
        "low": "min",
    }

    def __init__(self, *names: str) -> None:
        super().__init__()
        self._names = names  # known before the first batch (else learnt from it)

    @override
    def declared_names(self) -> tuple[str, ...]:
        return self._names

    @override
    def calculate(self, outputs: Values, targets: Tensor) -> dict[str, Tensor]:
        return dict(outputs)


class Spies:
    """Counts plans made (validations) and accumulator adds (folds) while installed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.plans = 0
        self.adds = 0
        plan, add = Ledger._plan, Accumulator.add

        def counted_plan(ledger: Ledger, *args: Any, **kwargs: Any) -> Any:
            self.plans += 1
            return plan(ledger, *args, **kwargs)

        def counted_add(accumulator: Accumulator, *args: Any, **kwargs: Any) -> None:
            self.adds += 1
            add(accumulator, *args, **kwargs)

        monkeypatch.setattr(Ledger, "_plan", counted_plan)
        monkeypatch.setattr(Accumulator, "add", counted_add)


@pytest.fixture
def spies(monkeypatch: pytest.MonkeyPatch) -> Spies:
    return Spies(monkeypatch)


def dyadic(generator: torch.Generator, *shape: int) -> Tensor:
    """float64 multiples of 1/8 in [-4, 4]: every sum and mean below is exact in float64."""
    return torch.randint(-32, 33, shape, generator=generator).double() / 8


def data(sizes: list[int], seed: int = 0) -> list[tuple[Tensor, Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [(dyadic(generator, size, 4), dyadic(generator, size, 4)) for size in sizes]


def exact_mean(pairs: list[tuple[float, float]]) -> float:
    """``sum(weight * value) / sum(weight)``, computed exactly, then rounded once."""
    total = sum(Fraction(weight) * Fraction(value) for value, weight in pairs)
    return float(total / sum(Fraction(weight) for _, weight in pairs))


UNEVEN = [8, 8, 8, 5, 8, 3, 8, 8, 2, 8]


# -- one plan per kind of batch -------------------------------------------------------------------


def test_a_collection_mixing_scalars_and_vectors_plans_once_and_queues(spies: Spies) -> None:
    metrics = tt.MetricCollection(MSE=F.mse_loss, MAE=mae)
    batches = data(UNEVEN)
    for outputs, targets in batches:
        metrics.update(outputs, targets)
    # Validated once, then every batch (of any size) matched the plan from its metadata;
    # nothing was folded yet: the batches wait in the queue.
    assert spies.plans == 1
    assert spies.adds == 0
    assert len(metrics._ledger._sizes) == len(UNEVEN)
    result = metrics.compute()
    assert spies.adds > 0
    # Batch means of uneven batches are rounded: within float64 rounding of the exact mean.
    mse_batches = [(F.mse_loss(o, t).item(), len(o)) for o, t in batches]
    assert result["MSE"].item() == pytest.approx(exact_mean(mse_batches), rel=1e-15)
    assert result["MAE"].item() == exact_mean(  # per-sample dyadic values: exact
        [(value, 1) for o, t in batches for value in mae(o, t).tolist()]
    )


def test_a_collection_of_scalars_only_plans_once_and_queues(spies: Spies) -> None:
    metrics = tt.MetricCollection(MSE=F.mse_loss, MAE=scalar_mae)
    for outputs, targets in data(UNEVEN):
        metrics.update(outputs, targets)
    assert (spies.plans, spies.adds) == (1, 0)


def test_a_loss_with_a_scalar_and_a_vector_component_plans_once(spies: Spies) -> None:
    loss = tt.Loss(F.mse_loss, "MSE") ** 2 + 0.5 * tt.Loss(mae, "MAE")
    batches = data(UNEVEN)
    returned = []
    for outputs, targets in batches:
        outputs.requires_grad_(True)
        value = loss(outputs, targets)
        value.backward()  # the graph is intact: the queue copied the values, detached
        assert outputs.grad is not None
        returned.append((value.item(), len(outputs)))
    assert (spies.plans, spies.adds) == (1, 0)
    assert all(not buffer.requires_grad for buffer in loss._ledger._buffers)
    computed = loss.compute()
    assert computed["Combined Loss"].item() == pytest.approx(exact_mean(returned), rel=1e-15)
    assert not any(value.requires_grad for value in computed.values())


def test_weighted_batches_reuse_the_plan_too(spies: Spies) -> None:
    metrics = tt.MetricCollection(MSE=F.mse_loss, MAE=mae)
    weights: list[Any] = [None, 2.0, torch.tensor(3.0), None, 0.5]
    for index, (outputs, targets) in enumerate(data(UNEVEN)):
        weight = weights[index % len(weights)]
        if index % 3 == 2:
            weight = torch.full((len(outputs),), 0.25, dtype=torch.float64)
        metrics.update(outputs, targets, weight=weight)
    assert (spies.plans, spies.adds) == (1, 0)


def test_python_numbers_are_checked_every_batch_but_planned_once(spies: Spies) -> None:
    metric = tt.Metric(lambda outputs, targets: float(len(outputs)), "Size")
    for outputs, targets in data(UNEVEN):
        metric.update(outputs, targets)
    assert (spies.plans, spies.adds) == (1, 0)
    sizes = [(size, size) for size in UNEVEN]
    assert metric.compute()["Size"].item() == exact_mean(sizes)


def test_each_kind_of_batch_is_planned_once_and_switching_kinds_folds(spies: Spies) -> None:
    echo = Echo("x", "s")
    generator = torch.Generator().manual_seed(1)
    expected: list[tuple[float, float]] = []
    for index in range(12):
        size = 4
        dtype = torch.float64 if index % 2 else torch.float32
        value = dyadic(generator, size).to(dtype)
        echo.update({"x": value, "s": value.sum()}, torch.zeros(size))
        expected += [(item, 1) for item in value.tolist()]
    assert spies.plans == 2  # float32 batches and float64 batches: two kinds, each planned once
    assert echo.compute()["x"].item() == exact_mean(expected)


# -- exact values over uneven mixes ------------------------------------------------------------


def mixed_values(generator: torch.Generator, size: int) -> Values:
    vector = dyadic(generator, size)
    return {
        "vector": vector,  # per-sample mean
        "scalar": vector.sum() / 8,  # a batch mean (0-d), weighted by the batch size
        "flat": (vector.sum() / 16).reshape(1),  # a one-element scalar (not a vector for B > 1)
        "odd": (vector.sum() / 32).reshape(1, 1),  # a scalar of another shape
        "total": vector.sum(),  # a batch total (sum)
        "count": (vector > 0).long(),  # integers, summed
        "peak": vector * 2,  # max over samples
        "low": vector.max(),  # min over batch scalars
        "half": vector.float(),  # another dtype, per-sample mean
    }


def references(batches: list[tuple[Values, int]]) -> dict[str, float]:
    def per_sample(name: str) -> list[tuple[float, float]]:
        return [(value, 1) for values, _ in batches for value in values[name].flatten().tolist()]

    def per_batch(name: str) -> list[tuple[float, float]]:
        return [(values[name].item(), size) for values, size in batches]

    return {
        "vector": exact_mean(per_sample("vector")),
        "scalar": exact_mean(per_batch("scalar")),
        "flat": exact_mean(per_batch("flat")),  # a (1,) value is one sample when B is 1
        "odd": exact_mean(per_batch("odd")),
        "total": float(sum(Fraction(values["total"].item()) for values, _ in batches)),
        "count": float(sum(int(values["count"].sum()) for values, _ in batches)),
        "peak": max(value for value, _ in per_sample("peak")),
        "low": min(values["low"].item() for values, _ in batches),
        "half": float(torch.tensor(exact_mean(per_sample("half"))).float()),  # float32
    }


@pytest.mark.parametrize("sizes", [UNEVEN, [1, 3, 1, 1, 6, 2, 1], [5] * 40 + [2] + [5] * 3])
def test_values_equal_exact_references_over_uneven_mixed_batches(sizes: list[int]) -> None:
    generator = torch.Generator().manual_seed(len(sizes))
    echo, seen = Echo(), []
    for size in sizes:
        values = mixed_values(generator, size)
        echo.update(values, torch.zeros(size))
        seen.append(({name: value.clone() for name, value in values.items()}, size))
    computed = echo.compute()
    assert {name: value.item() for name, value in computed.items()} == references(seen)
    assert computed["count"].dtype == torch.int64


def test_a_state_saved_mid_stream_and_merged_halves_give_the_same_exact_values() -> None:
    generator = torch.Generator().manual_seed(3)
    batches = [(mixed_values(generator, size), size) for size in UNEVEN * 3]
    whole, first, second = Echo(), Echo(), Echo()
    for index, (values, size) in enumerate(batches):
        whole.update(values, torch.zeros(size))
        (first if index < len(batches) // 2 else second).update(values, torch.zeros(size))
    restored = Echo()
    restored.load_state_dict(first.state_dict())
    restored.merge_state(second)
    expected = references(batches)
    for objective in (whole, restored):
        assert {name: v.item() for name, v in objective.compute().items()} == expected


def weighted_values(generator: torch.Generator, size: int) -> Values:
    vector = dyadic(generator, size)
    return {"vector": vector, "scalar": vector.sum() / 8, "peak": vector}


@pytest.mark.parametrize("kind", ["per-sample", "number", "0-d", "mixed"])
def test_weighted_mixes_equal_exact_references(kind: str) -> None:
    generator = torch.Generator().manual_seed(5)
    echo = Echo()
    vector_pairs: list[tuple[float, float]] = []
    scalar_pairs: list[tuple[float, float]] = []
    peak = -float("inf")
    for index, size in enumerate([4, 4, 2, 4, 8, 4, 1, 4]):
        values = weighted_values(generator, size)
        choice = kind if kind != "mixed" else ["per-sample", "number", "0-d", "none"][index % 4]
        if choice == "per-sample":  # weights of 0 exclude samples
            weight: Any = torch.randint(0, 4, (size,), generator=generator).double() / 2
            if index == 0:
                weight[0] = 1.0
            sample_weights = weight.tolist()
        elif choice in ("number", "0-d"):
            total = 0.5 * size * (1 + index % 3)
            weight = total if choice == "number" else torch.tensor(total)
            sample_weights = [total / size] * size
        else:
            weight, sample_weights = None, [1.0] * size
        echo.update(values, torch.zeros(size), weight=weight)
        vector_pairs += zip(values["vector"].tolist(), sample_weights, strict=True)
        scalar_pairs.append((values["scalar"].item(), sum(sample_weights)))
        kept = zip(values["peak"].tolist(), sample_weights, strict=True)
        peak = max([peak] + [value for value, weight in kept if weight > 0])
    computed = echo.compute()
    assert computed["vector"].item() == exact_mean(vector_pairs)
    assert computed["scalar"].item() == exact_mean(scalar_pairs)
    assert computed["peak"].item() == peak


def test_running_values_over_mixed_batches() -> None:
    metrics = tt.MetricCollection(MSE=F.mse_loss, MAE=mae)
    metrics.running(window=3)
    batches = data(UNEVEN)
    for outputs, targets in batches:
        metrics.update(outputs, targets)
    last = batches[-3:]
    running = metrics.running(window=3)
    mse_batches = [(F.mse_loss(o, t).item(), len(o)) for o, t in last]
    assert running["MSE"].item() == pytest.approx(exact_mean(mse_batches), rel=1e-15)
    assert running["MAE"].item() == exact_mean(
        [(value, 1) for o, t in last for value in mae(o, t).tolist()]
    )


# -- refusals, bounds, aliasing ----------------------------------------------------------------


def refused_batches(size: int) -> Iterator[tuple[Values, Any, type[Exception]]]:
    """Batches of ``size`` samples that update must refuse, with a weight and the error."""
    good = {"vector": torch.ones(size, dtype=torch.float64), "scalar": torch.tensor(2.0)}
    yield {**good, "vector": torch.ones(size + 1, dtype=torch.float64)}, None, ResultShapeError
    yield {**good, "vector": torch.ones(size, 2, dtype=torch.float64)}, None, ResultShapeError
    yield {**good, "scalar": torch.ones(2)}, None, ResultShapeError
    yield {**good, "scalar": torch.tensor(1j)}, None, ResultTypeError
    yield {**good, "total": torch.tensor(3.0)}, 2.0, WeightError  # a batch total: no weight
    yield {**good, "scalar": "two"}, None, ResultTypeError


def test_a_refused_batch_changes_nothing() -> None:
    generator = torch.Generator().manual_seed(7)
    touched, untouched = Echo(), Echo()
    for step, size in enumerate([6, 6, 3, 6, 6]):
        values = {"vector": dyadic(generator, size), "scalar": dyadic(generator, 1).reshape(())}
        for objective in (touched, untouched):
            objective.update(values, torch.zeros(size))
        sizes = list(touched._ledger._sizes)
        used = sum(sizes) + len(sizes)  # one record per batch: the vector, then the scalar
        before = [buffer[:used].clone() for buffer in touched._ledger._buffers]
        for refused, weight, error in refused_batches(size if step % 2 else 6):
            with pytest.raises(error):
                touched.update(refused, torch.zeros(size if step % 2 else 6), weight=weight)
            assert list(touched._ledger._sizes) == sizes
            for buffer, held in zip(touched._ledger._buffers, before, strict=True):
                assert torch.equal(buffer[:used], held)
    assert touched.names == untouched.names == ("vector", "scalar")
    assert touched.compute() == untouched.compute()
    mine, theirs = touched.state_dict()["tensors"], untouched.state_dict()["tensors"]
    assert mine and all(torch.equal(a, b) for a, b in zip(mine, theirs, strict=True))


def test_the_queue_stays_bounded_when_mixed_batches_change_size() -> None:
    metrics = tt.MetricCollection(MSE=F.mse_loss, MAE=mae)
    sizes = [64] * 300 + [4096] * 40 + [1, 3, 7, 64, 4096, 2, 100_000] * 10 + [2] * 300
    for size in sizes:
        outputs, targets = torch.full((size, 1), 0.5), torch.zeros(size, 1)
        metrics.update(outputs, targets)
        assert len(metrics._ledger._sizes) < PENDING_BATCHES
        # 2**18 elements, or one batch when a single batch is larger (100,000 x 2 + 1 here)
        assert queued_elements(metrics) <= max(PENDING_ELEMENTS, 2 * size + 1)
    assert metrics.compute() == {"MSE": torch.tensor(0.25), "MAE": torch.tensor(0.5)}


def test_state_shares_no_memory_with_mixed_values_or_inputs() -> None:
    metrics = tt.MetricCollection(MSE=F.mse_loss, MAE=mae, Peak=lambda o, t: o[:, 0])
    reference = tt.MetricCollection(MSE=F.mse_loss, MAE=mae, Peak=lambda o, t: o[:, 0])
    for outputs, targets in data(UNEVEN):
        returned = metrics.update(outputs, targets)
        reference.update(outputs.clone(), targets.clone())
        for value in returned.values():  # what the user can reach, changed after the update
            value.add_(100.0)
        outputs.mul_(-3.0)
    assert metrics.compute() == reference.compute()


def test_a_one_element_scalar_in_a_batch_of_one_is_a_per_sample_value(spies: Spies) -> None:
    echo = Echo("v", "w")
    generator = torch.Generator().manual_seed(11)
    pairs = []
    for size in [4, 1, 4, 1, 1, 4]:
        value = dyadic(generator, 1)  # shape (1,): a scalar for B = 4, one sample for B = 1
        echo.update({"v": value, "w": dyadic(generator, size)}, torch.zeros(size))
        pairs.append((value.item(), size))
    assert spies.plans == 2  # the two readings of a (1,) value
    assert echo.compute()["v"].item() == exact_mean(pairs)

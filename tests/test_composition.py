"""Every objective composes with every other: ``a | b`` for each pair of kinds.

For each ordered pair of kinds (a callable-built metric, a collection, a hand-written
objective, a ``tt.wrap`` result, a torchmetrics adapter, a torcheval adapter, and a loss on the
left), the joined object reports the union of what each part reports alone on the same data,
and copies, pickles, ``state_dict`` round trips and a two-process gloo sync all work.
"""

from __future__ import annotations

import copy
import io
import itertools
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torchmetrics
from torch import Tensor
from torch.nn import functional
from torcheval import metrics as eval_metrics

import _dist
import torchtally as tt
from torchtally.contrib.torcheval import from_torcheval
from torchtally.contrib.torchmetrics import from_torchmetrics
from torchtally.errors import NameConflictError, WeightError


def mae(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).abs().mean(1)


def mse(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).pow(2).mean(1)


def bias(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).mean(1)


def spread(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).std()  # a scalar batch value


class Peak(tt.Objective[Tensor, Tensor]):
    """A hand-written objective: its names are learnt from the data."""

    aggregation = "max"

    def calculate(self, outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
        return {"Peak": (outputs - targets).abs().amax(1)}


KINDS: dict[str, Callable[[], Any]] = {
    "metric": lambda: tt.Metric(mae, "MAE", higher_is_better=False),
    "collection": lambda: tt.MetricCollection(MSE=mse, Bias=bias),
    "custom": Peak,
    "wrapped": lambda: tt.wrap(spread),
    "torchmetrics": lambda: from_torchmetrics(torchmetrics.MeanAbsoluteError(), "TM MAE"),
    "torcheval": lambda: from_torcheval(eval_metrics.MeanSquaredError(), "TE MSE"),
}
LOSS: Callable[[], Any] = lambda: tt.Loss(functional.mse_loss, "Loss")  # noqa: E731
PAIRS = [pair for pair in itertools.permutations([*KINDS, "loss"], 2) if pair[1] != "loss"]
MAKE = {**KINDS, "loss": LOSS}


def batches(seed: int = 0, sizes: tuple[int, ...] = (4, 7, 2)) -> list[tuple[Tensor, Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(size, 3, generator=generator), torch.randn(size, 3, generator=generator))
        for size in sizes
    ]


def alone(kind: str, data: list[tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
    objective = MAKE[kind]()
    for outputs, targets in data:
        objective.update(outputs, targets)
    return dict(objective.compute())


def assert_values(found: dict[str, Tensor], expected: dict[str, Tensor]) -> None:
    assert set(found) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(found[name].double(), value.double(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(("left", "right"), PAIRS, ids=lambda pair: str(pair))
def test_every_pair_joins_and_reports_the_union(left: str, right: str) -> None:
    joined = MAKE[left]() | MAKE[right]()
    data = batches()
    for outputs, targets in data:
        joined.update(outputs, targets)
    assert_values(joined.compute(), {**alone(left, data), **alone(right, data)})
    if left == "loss":  # a loss on the left stays a loss: forward is differentiable
        outputs, targets = data[0]
        outputs = outputs.clone().requires_grad_(True)
        value = joined(outputs, targets)
        value.backward()
        assert outputs.grad is not None
        torch.testing.assert_close(value, functional.mse_loss(outputs, targets))


def round_trips(objective: Any) -> list[Any]:
    buffer = io.BytesIO()
    torch.save(objective, buffer)
    buffer.seek(0)
    return [
        copy.deepcopy(objective),
        pickle.loads(pickle.dumps(objective)),
        torch.load(buffer, weights_only=False),
    ]


@pytest.mark.parametrize(("left", "right"), PAIRS, ids=lambda pair: str(pair))
def test_every_pair_copies_pickles_and_restores(left: str, right: str) -> None:
    data = batches()
    joined = MAKE[left]() | MAKE[right]()
    for outputs, targets in data[:2]:
        joined.update(outputs, targets)
    expected = {**alone(left, data), **alone(right, data)}
    for duplicate in round_trips(joined):
        duplicate.update(*data[2])
        assert_values(duplicate.compute(), expected)
    fresh = MAKE[left]() | MAKE[right]()
    fresh.load_state_dict(joined.state_dict())
    fresh.update(*data[2])
    assert_values(fresh.compute(), expected)


def test_a_joined_update_with_a_bad_value_changes_no_part() -> None:
    def sometimes_wrong(outputs: Tensor, targets: Tensor) -> Tensor:
        return outputs.sum(1) if len(outputs) < 3 else outputs  # (B, 3) is not per-sample

    joined = from_torchmetrics(torchmetrics.MeanAbsoluteError(), "TM") | tt.Metric(
        sometimes_wrong, "Sum"
    )
    data = batches()
    joined.update(*data[2])  # a batch of 2: fine
    before = joined.compute()
    with pytest.raises(tt.errors.ResultShapeError):
        joined.update(*data[0])  # refused before the torchmetrics part saw it
    assert_values(joined.compute(), before)


def test_names_reported_twice_are_refused() -> None:
    with pytest.raises(NameConflictError, match="'MAE'"):
        tt.Metric(mae, "MAE") | tt.MetricCollection(MAE=mse)
    joined = Peak() | tt.Metric(mae, "Peak")  # the custom objective's name is learnt from data
    with pytest.raises(NameConflictError, match="'Peak'"):
        joined.update(*batches()[0])


def test_weights_go_to_torchtally_parts_and_are_refused_by_foreign_ones() -> None:
    joined = Peak() | tt.Metric(mae, "MAE")
    outputs, targets = batches()[0]
    joined.update(outputs, targets, weight=torch.tensor([1.0, 0.0, 0.0, 0.0]))
    assert joined.compute()["MAE"] == mae(outputs[:1], targets[:1])[0]
    with_adapter = joined | from_torchmetrics(torchmetrics.MeanAbsoluteError())
    with pytest.raises(WeightError, match="cannot weight"):
        with_adapter.update(outputs, targets, weight=2.0)


# -- sync of every pair on two gloo processes ---------------------------------------------------

def sync_scenario(rank: int, world: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    data = batches(seed=rank, sizes=(3 + rank, 2))
    for left, right in PAIRS:
        joined = MAKE[left]() | MAKE[right]()
        for outputs, targets in data:
            joined.update(outputs, targets)
        tt.sync_all(joined)
        results[f"{left}|{right}"] = joined.compute()
    return results


@pytest.mark.timeout(300)
def test_every_pair_syncs_on_two_processes(tmp_path: Path) -> None:
    records = _dist.launch(2, "test_composition:sync_scenario", tmp_path, timeout=240.0)
    every = [pair for rank in range(2) for pair in batches(seed=rank, sizes=(3 + rank, 2))]
    for left, right in PAIRS:
        expected = {**alone(left, every), **alone(right, every)}
        for record in records:
            assert_values(record[f"{left}|{right}"], expected)

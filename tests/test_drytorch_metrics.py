"""The metric examples of the DRYTorch documentation, written with torchtally names.

Each test follows one example of ``shared/reference/drytorch-metrics-and-losses.txt``
(protocol checks, ``Metric`` and ``MetricCollection`` with ``|``, a custom
``AverageObjective``) and asserts the values the documentation expects.
"""

from __future__ import annotations

import pytest
import torch
import torchmetrics
from torch.nn.functional import mse_loss as mse_loss_fn  # returns a scalar batch mean
from torcheval import metrics as eval_metrics
from typing_extensions import override

import torchtally as tt
from torchtally import protocols as p


@pytest.fixture
def tensor_a() -> torch.Tensor:
    return torch.ones(1, 1, dtype=torch.float)


@pytest.fixture
def tensor_b() -> torch.Tensor:
    return 3 * torch.ones(1, 1, dtype=torch.float)


def mae_loss_fn(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-sample mean absolute error."""
    return torch.abs(outputs - targets).flatten(1).mean(1)


EXPECTED_METRIC_COLLECTION = {"MSE": torch.tensor(4.0), "MAE": torch.tensor(2.0)}


def is_valid_objective(metric: p.ObjectiveProtocol[torch.Tensor, torch.Tensor]) -> bool:
    return isinstance(metric, p.ObjectiveProtocol)


def is_valid_loss(metric: p.LossProtocol[torch.Tensor, torch.Tensor]) -> bool:
    return isinstance(metric, p.LossProtocol)


def test_third_party_metrics_follow_the_protocols(
    tensor_a: torch.Tensor, tensor_b: torch.Tensor
) -> None:
    torch_metric = torchmetrics.MeanSquaredError()
    eval_metric = eval_metrics.MeanSquaredError()
    torch_metric.update(tensor_a, tensor_b)
    eval_metric.update(tensor_a, tensor_b)
    assert torch.isclose(torch_metric.compute(), eval_metric.compute())
    assert is_valid_objective(eval_metric) and is_valid_objective(torch_metric)
    assert is_valid_loss(torch_metric)


def test_metric_and_metric_collection(tensor_a: torch.Tensor, tensor_b: torch.Tensor) -> None:
    mse_metric = tt.Metric(mse_loss_fn, name="MSE", higher_is_better=False)
    mae_metric = tt.Metric(mae_loss_fn, "MAE", higher_is_better=False)
    metric_collection = mse_metric | mae_metric
    metric_collection.update(tensor_a, tensor_b)
    metric_collection.compute()
    assert metric_collection.compute() == EXPECTED_METRIC_COLLECTION
    assert is_valid_objective(metric_collection)
    assert not is_valid_loss(mse_metric)  # losses can be metrics, not the other way round


def test_metric_collection_from_a_dictionary(
    tensor_a: torch.Tensor, tensor_b: torch.Tensor
) -> None:
    metric_collection = tt.MetricCollection.from_dict({"MSE": mse_loss_fn, "MAE": mae_loss_fn})
    metric_collection.update(tensor_a, tensor_b)
    assert metric_collection.compute() == EXPECTED_METRIC_COLLECTION


class MyMetrics(tt.AverageObjective[torch.Tensor, torch.Tensor]):
    """MSE and MAE from one difference."""

    @override
    def calculate(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        diff = outputs - targets
        return {
            "MSE": torch.pow(diff, 2).flatten(1).mean(1),
            "MAE": torch.abs(diff).flatten(1).mean(1),
        }


def test_custom_average_objective(tensor_a: torch.Tensor, tensor_b: torch.Tensor) -> None:
    my_metrics = MyMetrics()
    my_metrics.update(tensor_a, tensor_b)
    my_metrics.compute()
    assert my_metrics.compute() == EXPECTED_METRIC_COLLECTION
    assert is_valid_objective(my_metrics)

"""Tests of torchtally.protocols: structural checks for objectives and losses."""

from __future__ import annotations

from typing import Any

import torch
import torchmetrics
from torch import Tensor
from torcheval import metrics as eval_metrics
from typing_extensions import override

import torchtally as tt
from torchtally import protocols as p


def mae(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).abs()


class Errors(tt.AverageObjective[Tensor, Tensor]):
    @override
    def calculate(self, outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
        return {"MAE": mae(outputs, targets)}


class DuckMetric:
    """A metric from no library at all: the three methods are enough."""

    def update(self, outputs: Any, targets: Any) -> None:
        pass

    def compute(self) -> float:
        return 0.0

    def reset(self) -> None:
        pass


class DuckLoss(DuckMetric):
    def forward(self, outputs: Any, targets: Any) -> Tensor:
        return torch.zeros(())


class NoReset:
    def update(self, outputs: Any, targets: Any) -> None:
        pass

    def compute(self) -> float:
        return 0.0


def test_torchmetrics_metric_is_an_objective_and_a_loss() -> None:
    metric = torchmetrics.MeanSquaredError()
    assert isinstance(metric, p.ObjectiveProtocol)
    assert isinstance(metric, p.LossProtocol)
    collection = torchmetrics.MetricCollection([torchmetrics.MeanAbsoluteError()])
    assert isinstance(collection, p.ObjectiveProtocol)


def test_torcheval_metric_is_an_objective() -> None:
    metric = eval_metrics.MeanSquaredError()
    assert isinstance(metric, p.ObjectiveProtocol)
    assert not isinstance(metric, p.LossProtocol)  # no forward


def test_torchtally_objectives_are_objectives_but_not_losses() -> None:
    for objective in (
        tt.Metric(mae, "MAE"),
        tt.MetricCollection(MAE=mae),
        tt.Metric(mae, "MAE") | tt.Metric(lambda o, t: o, "Out"),
        Errors(),
    ):
        assert isinstance(objective, p.ObjectiveProtocol)
        assert not isinstance(objective, p.LossProtocol)


def test_protocols_are_structural() -> None:
    assert isinstance(DuckMetric(), p.ObjectiveProtocol)
    assert not isinstance(DuckMetric(), p.LossProtocol)
    assert isinstance(DuckLoss(), p.LossProtocol)
    assert not isinstance(NoReset(), p.ObjectiveProtocol)
    assert not isinstance(mae, p.ObjectiveProtocol)
    assert issubclass(DuckLoss, p.ObjectiveProtocol)


def test_protocols_are_generic_in_outputs_and_targets() -> None:
    def evaluate(metric: p.ObjectiveProtocol[Tensor, Tensor]) -> Any:
        metric.update(torch.ones(2), torch.zeros(2))
        return metric.compute()

    def train_step(loss: p.LossProtocol[Tensor, Tensor]) -> Any:
        return loss.forward(torch.ones(2), 3 * torch.ones(2))

    assert evaluate(tt.Metric(mae, "MAE")) == {"MAE": torch.tensor(1.0)}
    assert train_step(torchmetrics.MeanSquaredError()).item() == 4.0
    assert p.ObjectiveProtocol[Tensor, Tensor] is not None
    assert set(p.__all__) >= {"ObjectiveProtocol", "LossProtocol"}

"""Compiled training steps as a new user writes them: ``dynamic=True``, schedules, weights.

Each compiled step is checked against the same loss run eagerly and against float64 values
written by hand. Compilation is slow on a small CPU machine: every run stays a few steps long.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from torch import Tensor
from torch._dynamo.utils import counters

import torchtally as tt


def mae(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).abs().mean(1)


def mse(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).pow(2).mean(1)


def batches(sizes: list[int]) -> list[tuple[Tensor, Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [
        (torch.randn(n, 2, generator=generator), torch.randn(n, 2, generator=generator))
        for n in sizes
    ]


@pytest.mark.timeout(300)
def test_a_step_compiled_with_dynamic_shapes_keeps_a_loss_and_metrics_in_one_graph() -> None:
    # dynamic=True makes the ints and floats dynamo reads symbolic, those of the objectives
    # too when they come in as arguments or from a closure. Each of these made fullgraph=True
    # raise torch's Unsupported or an internal assert (and, without fullgraph, broke the
    # graph and sent frames back to eager): ordering a batch's values by their row indices
    # (sorting by symbolic ints), writing the formula's constants and schedule in the graph
    # (the loss's label, made on first use: repr of a symbolic float), and the gradient of
    # ``** 2`` (torch's backward of a power by a symbolic int).
    schedule = tt.schedules.linear(0.0, 1.0, steps=2)
    loss = tt.Loss(mse, "MSE") ** 2 + 0.5 * (schedule * tt.Loss(mae, "MAE"))
    metrics = tt.MetricCollection(MAE=mae) | tt.Metric(mae, "Worst", aggregation="max")
    metrics.update(torch.zeros(1, 2), torch.zeros(1, 2))  # rows made before the graph

    def step(
        objective: tt.CompositionalLoss[Tensor, Tensor],
        tracked: tt.MetricCollection[Tensor, Tensor],
        outputs: Tensor,
        targets: Tensor,
    ) -> Tensor:
        tracked.update(outputs.detach(), targets)
        return objective(outputs, targets)

    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(step, dynamic=True, fullgraph=True)
    values = [torch.zeros(1)]  # the batch updated before
    for index, (outputs, targets) in enumerate(batches([6, 3])):
        leaf = outputs.clone().requires_grad_(True)
        compiled(loss, metrics, leaf, targets).backward()
        outputs, targets = outputs.double().requires_grad_(True), targets.double()
        weight = schedule.value(index)
        expected = (mse(outputs, targets) ** 2 + 0.5 * weight * mae(outputs, targets)).mean()
        expected.backward()
        assert leaf.grad is not None and outputs.grad is not None
        torch.testing.assert_close(leaf.grad.double(), outputs.grad, rtol=1e-5, atol=1e-7)
        values.append(mae(outputs, targets).detach())
    assert sum(counters["graph_break"].values()) == 0
    assert counters["frames"]["total"] == counters["frames"]["ok"]
    assert loss.formula == "[MSE]^2 + 0.5 x linear(0→1, 2) x [MAE]"
    assert loss.schedule_values() == {"linear(0→1, 2)": 1.0}
    result = metrics.compute()
    everything = torch.cat(values)
    torch.testing.assert_close(result["MAE"].double(), everything.mean(), rtol=1e-6, atol=0)
    assert result["Worst"].item() == pytest.approx(float(everything.max()), rel=1e-6)


def shorter(outputs: Tensor, targets: Tensor) -> Tensor:
    return mae(outputs, targets)[:-1]  # one value short of the batch


@pytest.mark.timeout(300)
def test_components_that_do_not_combine_raise_the_library_error_in_a_compiled_step() -> None:
    # Eagerly a ResultShapeError; compiled (default mode), torch's broadcast error stopped the
    # compiler with its own TorchRuntimeError. The step must fall back to eager code for
    # that call and raise the library's error, as the docs say, changing nothing.
    loss = tt.Loss(mae, "MAE") + tt.schedules.linear(0.0, 1.0, steps=4) * tt.Loss(shorter, "S")
    torch._dynamo.reset()
    compiled = torch.compile(loss)
    (outputs, targets), *_ = batches([6])
    before = loss.state_dict()
    with pytest.raises(tt.errors.ResultShapeError, match=r"\[MAE\].*\(6,\).*\(5,\)"):
        compiled(outputs.requires_grad_(True), targets)
    after = loss.state_dict()
    assert after["tensors"] == before["tensors"] == [] and after["state"] == before["state"]
    assert loss.schedule_values() == {"linear(0→1, 4)": 0.0}
    with pytest.warns(tt.errors.ComputedBeforeUpdatedWarning):
        assert loss.compute()["MAE"].isnan()


@pytest.mark.timeout(300)
def test_loading_a_state_between_compiled_steps_does_not_recompile_them() -> None:
    # load_state_dict (a rollback to the best epoch, a resume) replaced the objects the
    # graph folds into: every load recompiled the step, and after torch's limit of 8 the
    # whole step, model included, ran eagerly for the rest of the run.
    loss = tt.Loss(mse, "MSE") + tt.schedules.linear(0.0, 1.0, steps=4) * tt.Loss(mae, "MAE")
    metrics = tt.MetricCollection(MAE=mae) | tt.Metric(mae, "Worst", aggregation="max")

    def step(outputs: Tensor, targets: Tensor) -> Tensor:
        metrics.update(outputs.detach(), targets)
        return loss(outputs, targets)

    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(step)
    data = batches([4, 4, 4])
    for outputs, targets in data:
        compiled(outputs, targets)
    saved = (loss.state_dict(), metrics.state_dict())
    graphs = counters["stats"]["unique_graphs"]
    for _epoch in range(3):
        loss.load_state_dict(saved[0])
        metrics.load_state_dict(saved[1])
        compiled(*data[0])
    assert counters["stats"]["unique_graphs"] == graphs
    maes = torch.cat([mae(*batch).double() for batch in [*data, data[0]]])
    torch.testing.assert_close(metrics.compute()["MAE"].double(), maes.mean(), rtol=1e-6, atol=0)
    assert metrics.compute()["Worst"].item() == pytest.approx(float(maes.max()), rel=1e-6)
    assert loss.schedule_values() == {"linear(0→1, 4)": 1.0}  # 3 steps saved, then one more


@pytest.mark.timeout(300)
def test_an_infinite_number_weight_is_refused_once_weights_are_symbolic() -> None:
    # After a number weight changes, dynamo makes it a symbolic float, and took the check
    # ``weight < math.inf`` for true of any symbolic float: an inf token count was folded in
    # (the mean read NaN, the sum inf), where eager code refuses it.
    metric = tt.Metric(mae, "MAE") | tt.Metric(mae, "Total", aggregation="sum")
    torch._dynamo.reset()
    compiled = torch.compile(metric.update)
    outputs, targets = torch.ones(4, 2), torch.zeros(4, 2)
    for tokens in (3.0, 4.5):
        compiled(outputs, targets, weight=tokens)
    with pytest.raises(tt.errors.WeightError, match=r"finite and >= 0, found inf"):
        compiled(outputs, targets, weight=float("inf"))
    assert metric.compute() == {"MAE": torch.tensor(1.0), "Total": torch.tensor(7.5)}

"""The facts behind the README's comparison table, checked against the installed libraries.

Each test pins one claim the README makes about torchtally next to
torchmetrics or torcheval, so that the table cannot drift from what the code
(ours and theirs) does. Speed claims live in ``benchmarks/`` instead.
"""

from __future__ import annotations

import math
import pickle

import pytest
import torch
import torchmetrics
from drytorch.lib import objectives as drytorch_objectives
from torch.nn.functional import mse_loss
from torcheval import metrics as torcheval_metrics

import torchtally as tt
from torchtally.aggregation import Mean


def mae(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return (outputs - targets).abs().mean(1)


def uneven_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    sizes = [32, 32, 32, 5]
    return [
        (torch.randn(n, 3, generator=generator), torch.randn(n, 3, generator=generator))
        for n in sizes
    ]


def test_batch_mean_callables_are_exact_without_passing_weights() -> None:
    batches = uneven_batches()
    exact = mse_loss(torch.cat([o for o, _ in batches]), torch.cat([t for _, t in batches]))

    ours = tt.Metric(mse_loss, "MSE")
    drytorch = drytorch_objectives.Metric(mse_loss, name="MSE")
    unweighted = torchmetrics.MeanMetric()
    weighted = torchmetrics.MeanMetric()
    torcheval_unweighted = torcheval_metrics.Mean()
    for outputs, targets in batches:
        ours.update(outputs, targets)
        drytorch.update(outputs, targets)
        unweighted.update(mse_loss(outputs, targets))
        weighted.update(mse_loss(outputs, targets), weight=len(outputs))
        torcheval_unweighted.update(mse_loss(outputs, targets))

    assert torch.isclose(ours.compute()["MSE"], exact, rtol=1e-6)
    # Averaging batch means needs the batch size passed by hand; without it the small last
    # batch counts as much as a full one.
    assert torch.isclose(weighted.compute(), exact, rtol=1e-6)
    assert not torch.isclose(unweighted.compute(), exact, rtol=1e-3)
    assert not torch.isclose(torcheval_unweighted.compute().float(), exact, rtol=1e-3)
    # DRYTorch averages a scalar result per batch (its docs recommend per-sample vectors).
    assert not torch.isclose(drytorch.compute()["MSE"], exact, rtol=1e-3)


def test_precision_of_the_reported_mean_versus_other_running_sums() -> None:
    # The README row compares like with like: the relative error of the value each library
    # reports for the mean of 10^6 float32 values near 1e4.
    generator = torch.Generator().manual_seed(1)
    values = 1e4 + torch.rand(1_000_000, generator=generator, dtype=torch.float32)
    reference = math.fsum(values.double().tolist()) / len(values)

    def error(value: float) -> float:
        return abs(value - reference) / reference

    ours = tt.Metric(lambda o, t: o, "Value")
    drytorch = drytorch_objectives.Metric(lambda o, t: o, name="Value")
    torchmetrics_mean = torchmetrics.MeanMetric()
    torcheval_mean = torcheval_metrics.Mean()
    for chunk in values.split(1000):
        ours.update(chunk, chunk)
        drytorch.update(chunk, chunk)
        torchmetrics_mean.update(chunk)
        torcheval_mean.update(chunk)

    # torchtally: "3.2e-9: the exact mean rounded to float32 (compensated float64 state)".
    reported = ours.compute()["Value"]
    assert reported.dtype == torch.float32
    assert reported.item() == torch.tensor(reference, dtype=torch.float32).item()
    assert f"{error(reported.item()):.1e}" == "3.2e-09"
    saved = ours.state_dict()
    total = saved["tensors"][[spec.name for spec in Mean.states].index("total")]
    state = total[0]  # the [high, low] words of the compensated float64 sum
    assert state.dtype == torch.float64
    assert error((state[0] + state[1]).item() / len(values)) < 1e-12  # why it is exactly rounded
    # torchmetrics and DRYTorch: "> 1e-6 (float32 running sum)".
    assert torchmetrics_mean.mean_value.dtype == torch.float32
    assert error(torchmetrics_mean.compute().item()) > 1e-6
    assert error(drytorch.compute()["Value"].item()) > 1e-6
    # torcheval: "about 3e-9 (float64 total of float32 batch sums)": as close as ours.
    assert torcheval_mean.weighted_sum.dtype == torch.float64
    assert torcheval_mean.compute().dtype == torch.float64
    assert 2e-9 < error(torcheval_mean.compute().item()) < 5e-9


def test_composed_losses_carry_a_readable_formula() -> None:
    ours = tt.Loss(mse_loss, "MSE") ** 2 + 0.5 * tt.Loss(mae, "MAE")
    theirs = torchmetrics.MeanSquaredError() ** 2 + 0.5 * torchmetrics.MeanAbsoluteError()
    assert ours.formula == "[MSE]^2 + 0.5 x [MAE]"
    assert repr(ours) == "CompositionalLoss([MSE]^2 + 0.5 x [MAE])"
    assert not hasattr(theirs, "formula")
    with pytest.raises(TypeError):  # torcheval metrics have no algebra
        torcheval_metrics.MeanSquaredError() + 1
    drytorch = drytorch_objectives.Loss(mse_loss, name="MSE") ** 2 + 0.5 * drytorch_objectives.Loss(
        mae, "MAE"
    )
    assert drytorch.formula == ours.formula  # the notation torchtally keeps from DRYTorch


def test_a_composed_loss_pickles_mid_epoch_and_resumes_exactly() -> None:
    loss = tt.Loss(mse_loss, "MSE") + 0.5 * tt.Loss(mae, "MAE")
    batches = uneven_batches()
    for outputs, targets in batches[:2]:
        loss(outputs, targets)
    restored = pickle.loads(pickle.dumps(loss))
    for outputs, targets in batches[2:]:
        loss(outputs, targets)
        restored(outputs, targets)
    assert restored.formula == loss.formula
    assert restored.compute() == loss.compute()


def test_drytorch_composed_losses_do_not_pickle() -> None:
    loss = drytorch_objectives.Loss(mse_loss, name="MSE") + 0.5 * drytorch_objectives.Loss(
        mae, "MAE"
    )
    with pytest.raises((AttributeError, pickle.PicklingError)):
        pickle.dumps(loss)

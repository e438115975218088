"""Loss algebra pushed by a demanding user: combinations of the promises in docs/losses.md.

Every expected value is computed independently, in float64, from hand-written
expressions over the batches (or their concatenation).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor

from torchtally.losses import COMBINED_NAME, Loss


def batch_mse(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).pow(2).mean()  # a scalar batch mean


def per_sample_mae(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).abs().mean(1)


# a per-sample weight that requires grad, with a criterion that is one number per batch -------


@pytest.mark.parametrize("how", ["call", "constructor"])
def test_a_scalar_criterion_keeps_the_graph_of_per_sample_weights(how: str) -> None:
    generator = torch.Generator().manual_seed(7)
    outputs = torch.randn(6, 3, generator=generator, dtype=torch.float64)
    targets = torch.randn(6, 3, generator=generator, dtype=torch.float64)
    logits = torch.randn(6, generator=generator, dtype=torch.float64, requires_grad=True)
    if how == "call":
        loss = 2 * Loss(batch_mse, "MSE") + Loss(batch_mse, "MSE") ** 2
        value = loss(outputs, targets, weight=torch.softmax(logits, 0))
    else:
        weighted = Loss(batch_mse, "MSE", weight=lambda o, t: torch.softmax(logits, 0))
        loss = 2 * weighted + weighted**2
        value = loss(outputs, targets)
    hand_logits = logits.detach().clone().requires_grad_(True)
    weight = torch.softmax(hand_logits, 0)
    criterion = 2 * batch_mse(outputs, targets) + batch_mse(outputs, targets) ** 2
    reference = (criterion * weight).sum() / weight.sum()
    (hand_gradient,) = torch.autograd.grad(reference, hand_logits)
    # the returned value is the criterion itself (a weighted mean of one number), exactly
    assert value.item() == criterion.item()
    assert loss.compute()[COMBINED_NAME].item() == criterion.item()
    (gradient,) = torch.autograd.grad(value, logits)  # raised: the weights were not in the graph
    torch.testing.assert_close(gradient, hand_gradient, atol=1e-15, rtol=0)


@pytest.mark.parametrize("fn", [batch_mse, per_sample_mae], ids=["batch mean", "per sample"])
@pytest.mark.parametrize("build", [lambda fn: Loss(fn, "L"), lambda fn: 2 * Loss(fn, "L") + 1])
def test_weights_summing_to_zero_give_nan_whatever_the_criterion_returns(
    fn: Callable[[Tensor, Tensor], Tensor], build: Callable[[Any], Any]
) -> None:
    # docs/losses.md: the returned value is (v * w).sum() / w.sum(); a batch that weighs
    # nothing is no number to optimise (it gave the criterion for a batch-mean criterion)
    outputs, targets = torch.randn(4, 3), torch.randn(4, 3)
    loss = build(fn)
    hand = (fn(outputs, targets) * torch.zeros(4)).sum() / torch.zeros(4).sum()
    assert hand.isnan()
    assert loss(outputs, targets, weight=torch.zeros(4)).isnan()
    # the batch counts for nothing in the epoch value, and the next batch counts as usual
    value = loss(outputs, targets, weight=torch.ones(4))
    assert not value.isnan()
    torch.testing.assert_close(loss.compute()[loss.name], value)

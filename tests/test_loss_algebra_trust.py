"""Loss algebra pushed by a demanding user: combinations of the promises in docs/losses.md.

Every expected value is computed independently, in float64, from hand-written
expressions over the batches (or their concatenation).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

import torchtally as tt
from torchtally import schedules
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


# the combined value under a random formula, batches, weights, forward and update mixed ------


def positive_per_sample(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).abs().mean(1) + 0.5


def positive_batch_mean(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).pow(2).mean() + 0.5


# each builds (the loss, the criterion written by hand on the values P, M and the weight s)
FORMULAS: dict[str, Callable[[Loss[Any, Any], Loss[Any, Any]], Any]] = {
    "P + P": lambda p, m: p + p,
    "P x P": lambda p, m: p * p,
    "(P + M) x P": lambda p, m: (p + m) * p,
    "P^M": lambda p, m: p**m,
    "s x P + M / s": lambda p, m: (
        (schedules.linear(1.0, 3.0, 2)) * p + m / schedules.linear(1.0, 3.0, 2)
    ),
    "P x s + P x s": lambda p, m: (lambda s: p * s + p * s)(schedules.cosine(2.0, 0.5, 3)),
    "P^s x M": lambda p, m: p ** schedules.piecewise({0: 1.0, 2: 2.0}) * m,
}
BY_HAND: dict[str, Callable[[Tensor, Tensor, int], Tensor]] = {
    "P + P": lambda p, m, step: p + p,
    "P x P": lambda p, m, step: p * p,
    "(P + M) x P": lambda p, m, step: (p + m) * p,
    "P^M": lambda p, m, step: p**m,
    "s x P + M / s": lambda p, m, step: (1 + min(step, 2)) * p + m / (1 + min(step, 2)),
    "P x s + P x s": lambda p, m, step: (
        2
        * p
        * (
            0.5
            + 1.5 * (1 + torch.cos(torch.tensor(torch.pi * min(step, 3) / 3, dtype=p.dtype))) / 2
        )
    ),
    "P^s x M": lambda p, m, step: p ** (1.0 if step < 2 else 2.0) * m,
}


@settings(max_examples=40, deadline=None)
@given(
    formula=st.sampled_from(sorted(FORMULAS)),
    batches=st.lists(
        st.tuples(
            st.integers(1, 5),  # batch size
            st.sampled_from(["none", "number", "per-sample"]),  # weight
            st.booleans(),  # forward (a training step) or update
        ),
        min_size=1,
        max_size=6,
    ),
    seed=st.integers(0, 2**16),
)
def test_the_combined_value_is_the_weighted_mean_of_the_criteria_of_the_batches(
    formula: str, batches: list[tuple[int, str, bool]], seed: int
) -> None:
    generator = torch.Generator().manual_seed(seed)
    p = Loss(positive_per_sample, "P")
    m = Loss(positive_batch_mean, "M")
    loss = FORMULAS[formula](p, m)
    step = 0
    criteria, weights, per_p, per_m, m_weights = [], [], [], [], []
    for size, weighting, training in batches:
        outputs = torch.randn(size, 2, generator=generator, dtype=torch.float64)
        targets = torch.randn(size, 2, generator=generator, dtype=torch.float64)
        if weighting == "none":
            given_weight: Any = None
            sample_weights = torch.ones(size, dtype=torch.float64)
        elif weighting == "number":
            given_weight = 3.5
            sample_weights = torch.full((size,), 3.5 / size, dtype=torch.float64)
        else:
            given_weight = torch.rand(size, generator=generator, dtype=torch.float64) + 0.1
            sample_weights = given_weight
        p_values = positive_per_sample(outputs, targets)
        m_value = positive_batch_mean(outputs, targets)
        criterion = BY_HAND[formula](p_values, m_value.expand(size), step)
        if training:
            returned = loss(outputs, targets, weight=given_weight)
            expected = (criterion * sample_weights).sum() / sample_weights.sum()
            torch.testing.assert_close(returned, expected, rtol=1e-12, atol=0)
            step += 1
        else:
            loss.update(outputs, targets, weight=given_weight)
        criteria.append(criterion)
        weights.append(sample_weights)
        per_p.append(p_values)
        per_m.append(m_value)
        m_weights.append(sample_weights.sum())
    every_weight = torch.cat(weights)
    computed = loss.compute()
    combined = (torch.cat(criteria) * every_weight).sum() / every_weight.sum()
    torch.testing.assert_close(computed[COMBINED_NAME], combined, rtol=1e-12, atol=0)
    epoch_p = (torch.cat(per_p) * every_weight).sum() / every_weight.sum()
    total_m = torch.stack(m_weights)
    epoch_m = (torch.stack(per_m) * total_m).sum() / total_m.sum()
    torch.testing.assert_close(computed["P"], epoch_p, rtol=1e-12, atol=0)
    if "M" in computed:
        torch.testing.assert_close(computed["M"], epoch_m, rtol=1e-12, atol=0)
    # the formula on the epoch values, with the schedules where training left them
    on_epoch = BY_HAND[formula](epoch_p.reshape(1), epoch_m.reshape(1), step)[0]
    torch.testing.assert_close(loss.formula_value(), on_epoch, rtol=1e-12, atol=0)


def test_one_schedule_in_two_terms_moves_once_per_forward_and_copies_move_alone() -> None:
    warm_up = schedules.linear(0.0, 1.0, steps=10)
    loss = warm_up * Loss(positive_per_sample, "P") + warm_up * Loss(positive_batch_mean, "M")
    outputs, targets = torch.ones(3, 2), torch.zeros(3, 2)
    loss(outputs, targets)
    twin = loss.copy()
    for _ in range(3):
        loss(outputs, targets)
    twin(outputs, targets)
    assert loss.schedule_values() == {"linear(0→1, 10)": 0.4}
    assert twin.schedule_values() == {"linear(0→1, 10)": 0.2}


def test_a_dict_entry_absent_from_some_batches_is_the_mean_over_the_batches_that_had_it() -> None:
    def with_auxiliary(outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
        values = {"Main": (outputs - targets).abs().mean(1)}
        if outputs.shape[0] > 1:
            values["Aux"] = (outputs - outputs.mean(0)).pow(2).mean(1)
        return values

    generator = torch.Generator().manual_seed(11)
    loss = tt.DictLoss(with_auxiliary, "Main", names=["Aux"]) + 0.5 * Loss(per_sample_mae, "MAE")
    sizes = (4, 1, 6, 1, 3)
    batches = [
        (
            torch.randn(n, 2, generator=generator, dtype=torch.float64),
            torch.randn(n, 2, generator=generator, dtype=torch.float64),
        )
        for n in sizes
    ]
    for outputs, targets in batches:
        loss(outputs, targets)
    everything = torch.cat([outputs for outputs, _ in batches])
    every_target = torch.cat([targets for _, targets in batches])
    main = (everything - every_target).abs().mean(1)
    auxiliary = torch.cat(
        [with_auxiliary(o, t)["Aux"] for o, t in batches if o.shape[0] > 1]
    ).mean()
    computed = loss.compute()
    torch.testing.assert_close(computed[COMBINED_NAME], (1.5 * main).mean(), rtol=1e-12, atol=0)
    torch.testing.assert_close(computed["Aux"], auxiliary, rtol=1e-12, atol=0)

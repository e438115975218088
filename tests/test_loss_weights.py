"""Per-sample weights in a loss's forward: no overflow in half precision, and their gradient.

References: the weighted mean written by hand in float64, and the hand-written
expression ``(v * w).sum() / w.sum()`` differentiated by torch.autograd.
"""

from __future__ import annotations

import functools
import re
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor
from torch.nn import functional

import torchtally as tt
from torchtally.losses import COMBINED_NAME, Loss


def mse(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).pow(2).mean(1)


def mae(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).abs().mean(1)


def by_hand(outputs: Tensor, targets: Tensor, weight: Tensor) -> Tensor:
    """The composed loss of :func:`composed`, written by hand."""
    values = mse(outputs, targets) + 0.5 * mae(outputs, targets)
    return (values * weight).sum() / weight.sum()


def composed() -> Any:
    return Loss(mse, "MSE") + 0.5 * Loss(mae, "MAE")


# (3) half precision: the weighted mean cannot overflow --------------------------------------


def test_the_report_half_precision_weights_beyond_65504_give_the_mean_and_its_gradient() -> None:
    h = torch.ones(128, 4, dtype=torch.float16, requires_grad=True)
    loss = Loss(mse, "MSE")
    value = loss(h, torch.zeros(128, 4, dtype=torch.float16), weight=torch.full((128,), 1000))
    assert value.dtype == torch.float16
    assert value.item() == 1.0
    value.backward()
    assert h.grad is not None
    torch.testing.assert_close(h.grad, torch.full_like(h, 2 / 4 / 128))
    torch.testing.assert_close(loss.compute()["MSE"], torch.tensor(1.0))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3, 1e6])
def test_weighted_batch_means_match_a_float64_reference(dtype: torch.dtype, scale: float) -> None:
    generator = torch.Generator().manual_seed(int(scale * 7) % 1000)
    outputs = torch.randn(64, 3, generator=generator)
    targets = torch.randn(64, 3, generator=generator)
    weight = torch.rand(64, generator=generator) * scale
    low = outputs.to(dtype).requires_grad_(True)
    value = composed()(low, targets.to(dtype), weight=weight)
    assert value.dtype == dtype
    value.backward()
    wide = low.detach().double().requires_grad_(True)
    reference = by_hand(wide, targets.to(dtype).double(), weight.double())
    reference.backward()
    assert torch.isfinite(value)
    tolerance = {torch.float16: 2e-3, torch.bfloat16: 1e-2, torch.float32: 1e-5}[dtype]
    torch.testing.assert_close(value.double(), reference, rtol=tolerance, atol=tolerance)
    assert low.grad is not None and wide.grad is not None
    torch.testing.assert_close(low.grad.double(), wide.grad, rtol=2e-2, atol=1e-4)


def test_a_float16_weight_tensor_summing_beyond_its_range_is_read_in_float32() -> None:
    values = torch.full((200,), 3.0, dtype=torch.float16)
    weight = torch.full((200,), 60000.0, dtype=torch.float16)  # sum 1.2e7, beyond float16
    value = Loss(lambda o, t: o, "Id")(values, values, weight=weight)
    assert value.dtype == torch.float16 and value.item() == 3.0


# (4) the weight's gradient ---------------------------------------------------------------------


def softmax_weights(logits: Tensor) -> Tensor:
    return torch.softmax(logits, 0) * logits.shape[0]


CASES: dict[str, Callable[[], Any]] = {
    "composed": composed,
    "joined": lambda: composed() | tt.Metric(mae, "Tracked"),
}


@pytest.mark.parametrize("kind", list(CASES))
def test_forward_keeps_the_gradient_of_a_weight_that_requires_grad(kind: str) -> None:
    generator = torch.Generator().manual_seed(3)
    outputs = torch.randn(8, 3, generator=generator, requires_grad=True)
    targets = torch.randn(8, 3, generator=generator)
    logits = torch.randn(8, generator=generator, requires_grad=True)
    loss = CASES[kind]()
    value = loss(outputs, targets, weight=softmax_weights(logits))
    value.backward()
    assert logits.grad is not None and outputs.grad is not None
    hand_outputs = outputs.detach().clone().requires_grad_(True)
    hand_logits = logits.detach().clone().requires_grad_(True)
    reference = by_hand(hand_outputs, targets, softmax_weights(hand_logits))
    reference.backward()
    torch.testing.assert_close(value, reference)
    torch.testing.assert_close(logits.grad, hand_logits.grad)
    torch.testing.assert_close(outputs.grad, hand_outputs.grad)
    # the accumulated state holds no graph
    state = loss.state_dict()
    assert not any(tensor.requires_grad for tensor in state["tensors"])
    computed = loss.compute()
    assert not any(tensor.requires_grad for tensor in computed.values())
    torch.testing.assert_close(computed[COMBINED_NAME], reference.detach())


def test_a_weight_callable_keeps_the_gradient_too() -> None:
    generator = torch.Generator().manual_seed(5)
    outputs = torch.randn(6, 2, generator=generator)
    targets = torch.randn(6, 2, generator=generator)
    logits = torch.randn(6, generator=generator, requires_grad=True)
    loss = Loss(mse, "MSE", weight=lambda o, t: softmax_weights(logits))
    loss(outputs, targets).backward()
    hand_logits = logits.detach().clone().requires_grad_(True)
    weight = softmax_weights(hand_logits)
    ((mse(outputs, targets) * weight).sum() / weight.sum()).backward()
    torch.testing.assert_close(logits.grad, hand_logits.grad)


def test_a_weight_without_grad_gives_the_same_value_as_before() -> None:
    generator = torch.Generator().manual_seed(4)
    outputs = torch.randn(8, 3, generator=generator)
    targets = torch.randn(8, 3, generator=generator)
    weight = torch.rand(8, generator=generator)
    value = composed()(outputs, targets, weight=weight)
    assert not value.requires_grad
    torch.testing.assert_close(value, by_hand(outputs, targets, weight))


def test_a_weight_callable_runs_once_per_forward() -> None:
    calls: list[int] = []

    def weigh(outputs: torch.Tensor, targets: torch.Tensor) -> None:
        calls.append(len(outputs))  # None: weighed by the batch size

    loss = tt.Loss(lambda o, t: (o - t).abs().mean(1), "MAE", weight=weigh)
    joined = loss | tt.Metric(lambda o, t: o.mean(1), "Mean", weight=weigh)
    loss(torch.ones(3, 2), torch.zeros(3, 2))
    joined(torch.ones(2, 2), torch.zeros(2, 2))
    assert calls == [3, 2]


# (5) losses made one with different weight= callables ---------------------------------------


def rows_with_positive_targets(outputs: Tensor, targets: Tensor) -> Tensor:
    return (targets[:, 0] > 0).double()


def test_a_weighted_loss_and_an_unweighted_one_are_not_made_one_silently() -> None:
    # Loss(mae, weight=w) + Loss(mse) returned (and accumulated) the w-weighted mean of
    # mae + mse: the unweighted MSE was weighted by w too (4.34 for the hand-written 4.38,
    # seed 0). '|' with a Metric did the same, or dropped the metric's weight= instead.
    weighted = Loss(mae, "MAE", weight=rows_with_positive_targets)
    plain = Loss(mse, "MSE")
    attempts = {
        "weighted + plain": lambda: weighted + plain,
        "plain * weighted": lambda: plain * weighted,
        "weighted | metric": lambda: weighted | tt.Metric(mse, "M"),
        "plain | weighted metric": lambda: plain | tt.Metric(mse, "M", weight=mae),
        "weighted metric | plain": lambda: tt.Metric(mse, "M", weight=mae) | plain,
        "two callables": lambda: weighted + Loss(mse, "MSE", weight=mae),
    }
    for what, attempt in attempts.items():
        with pytest.raises(tt.errors.WeightError, match="different weight= callables") as error:
            attempt()
        assert "[MAE]" in str(error.value) or "[MSE]" in str(error.value), what


def test_losses_sharing_one_weight_callable_still_compose_with_the_hand_written_value() -> None:
    generator = torch.Generator().manual_seed(0)
    outputs = torch.randn(6, 3, generator=generator, dtype=torch.float64)
    targets = torch.randn(6, 3, generator=generator, dtype=torch.float64)
    weigh = rows_with_positive_targets
    loss = Loss(mae, "MAE", weight=weigh) + Loss(mse, "MSE", weight=weigh)
    tracked = loss | tt.Metric(mse, "M", weight=weigh)
    weight = weigh(outputs, targets)
    expected = ((mae(outputs, targets) + mse(outputs, targets)) * weight).sum() / weight.sum()
    torch.testing.assert_close(loss(outputs, targets), expected, rtol=1e-14, atol=0)
    torch.testing.assert_close(tracked(outputs, targets), expected, rtol=1e-14, atol=0)
    metric = (mse(outputs, targets) * weight).sum() / weight.sum()
    torch.testing.assert_close(tracked.compute()["M"], metric, rtol=1e-14, atol=0)


# a criterion averaging with its own class weights --------------------------------------------


RECIPE = re.escape("w[t[t != -100]].sum()")


def test_a_class_weighted_criterion_without_weight_warns_once_when_built() -> None:
    """nn.CrossEntropyLoss(weight=w) divides each batch by its targets' summed class weights.

    Weighted by batch size, its epoch value is not the criterion on the whole
    data (1.2837 against 1.2116 for the reference's NLL over batches of 8 and 2);
    the recipe ``weight=lambda o, t: w[t[t != -100]].sum()`` makes it exact, so building
    one without ``weight=`` warns, naming the objective and the recipe.
    """
    class_weights = torch.tensor([1.0, 5.0, 0.2])
    criterion = torch.nn.CrossEntropyLoss(weight=class_weights)
    logits = torch.randn(10, 3, generator=torch.Generator().manual_seed(3))
    labels = torch.tensor([0, 1, 2, 1, 0, 2, 2, 1, 0, 1])
    for make in (
        lambda: tt.Loss(criterion, "CE"),
        lambda: tt.Metric(criterion, "CE"),
        lambda: tt.MetricCollection(CE=criterion),
        lambda: tt.wrap(criterion, "CE"),
    ):
        with pytest.warns(tt.errors.CriterionWeightWarning, match=rf"'CE'.*{RECIPE}"):
            built = make()
        built.update(logits[:8], labels[:8])
        built.update(logits[8:], labels[8:])
        unweighted = built.compute()["CE"]
        assert not torch.allclose(unweighted, criterion(logits, labels))  # why it warns
    with pytest.warns(tt.errors.CriterionWeightWarning, match=rf"component 'CE'.*{RECIPE}"):
        tt.CompositionalLoss(lambda values: values["CE"], CE=criterion)  # a component, too
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        exact = tt.Loss(criterion, "CE", weight=lambda o, t: class_weights[t].sum())
        tt.Loss(torch.nn.CrossEntropyLoss(), "CE")  # no class weights: the batch size is right
        tt.Loss(torch.nn.CrossEntropyLoss(weight=class_weights, reduction="none"), "CE")
    exact(logits[:8], labels[:8])
    exact(logits[8:], labels[8:])
    torch.testing.assert_close(exact.compute()["CE"], criterion(logits, labels))


@pytest.mark.parametrize("ignore_index", [0, -100])
@pytest.mark.parametrize("kind", [torch.nn.CrossEntropyLoss, torch.nn.NLLLoss])
def test_the_recipe_the_class_weight_warning_gives_leaves_out_ignored_targets(
    kind: type[torch.nn.CrossEntropyLoss | torch.nn.NLLLoss], ignore_index: int
) -> None:
    """The criterion leaves targets equal to its ``ignore_index`` out of the denominator too.

    The recipe the warning gave, ``w[t].sum()``, counted them: with
    ``ignore_index=0`` the epoch value was 1.0073 for the criterion's 1.0443
    on all the data, and padding marked -100 (the default) raised IndexError.
    """
    class_weights = torch.tensor([1.0, 5.0, 0.5])
    criterion = kind(weight=class_weights, ignore_index=ignore_index)
    generator = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(n, 3, generator=generator), torch.randint(-1, 3, (n,), generator=generator))
        for n in (6, 3, 7)
    ]
    batches = [(o, torch.where(t < 0, ignore_index, t)) for o, t in batches]  # some ignored
    with pytest.warns(tt.errors.CriterionWeightWarning) as record:
        tt.Loss(criterion, "CE")
    found = re.search(r"weight=(lambda o, t: .+?\.sum\(\))", str(record[0].message))
    assert found is not None
    recipe = eval(found.group(1), {"w": class_weights})  # the warning's own text
    exact = tt.Loss(criterion, "CE", weight=recipe)
    for batch in batches:
        exact(*batch)
    outputs, targets = (torch.cat(parts) for parts in zip(*batches, strict=True))
    expected = kind(weight=class_weights.double(), ignore_index=ignore_index)(
        outputs.double(), targets
    )
    torch.testing.assert_close(exact.compute()["CE"].double(), expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize(
    "criterion",
    [
        torch.nn.BCELoss(weight=torch.tensor([1.0, 5.0, 0.2])),
        torch.nn.BCEWithLogitsLoss(weight=torch.tensor([1.0, 5.0, 0.2])),
        torch.nn.MultiLabelSoftMarginLoss(weight=torch.tensor([1.0, 5.0, 0.2])),
        torch.nn.MultiMarginLoss(weight=torch.tensor([1.0, 5.0, 0.2])),
    ],
    ids=lambda criterion: type(criterion).__name__,
)
def test_a_criterion_rescaling_its_elements_averages_over_the_batch_and_does_not_warn(
    criterion: torch.nn.Module,
) -> None:
    # their weight rescales each element and the mean still divides by the batch (the element
    # count): weighed by batch size the epoch value is exact, where the class-weight recipe
    # w[t].sum() the warning advised gave MultiMarginLoss 1.5916 for 1.4740
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(10, 3, generator=generator)
    if isinstance(criterion, torch.nn.MultiMarginLoss):
        targets = torch.tensor([0, 1, 2, 1, 0, 2, 2, 1, 0, 1])
    else:
        targets = (torch.rand(10, 3, generator=generator) > 0.5).float()
    inputs = logits.sigmoid() if isinstance(criterion, torch.nn.BCELoss) else logits
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss = tt.Loss(criterion, "L")
        tt.MetricCollection(L=criterion)
    loss.update(inputs[:8], targets[:8])
    loss.update(inputs[8:], targets[8:])
    torch.testing.assert_close(loss.compute()["L"], criterion(inputs, targets))


def test_the_class_weight_warning_points_at_the_users_line() -> None:
    # from_dict and `|` pointed inside torchtally (objectives/_callables.py)
    criterion = torch.nn.NLLLoss(weight=torch.tensor([1.0, 5.0, 0.2]))
    collection = tt.MetricCollection(MSE=mse)
    for make in (
        lambda: tt.MetricCollection.from_dict({"NLL": criterion}),
        lambda: tt.MetricCollection.from_dict({"NLL": criterion}) | collection,
        lambda: tt.MetricCollection.from_dict({"NLL": criterion}, prefix="x/"),
        lambda: tt.Metric(criterion, "NLL"),
        lambda: tt.Loss(criterion, "NLL"),
        lambda: tt.wrap(criterion, "NLL"),
    ):
        with pytest.warns(tt.errors.CriterionWeightWarning, match="NLLLoss") as record:
            make()
        assert {warning.filename for warning in record} == {__file__}


def fixed_shape_class_weights(
    class_weights: Tensor, ignore_index: int
) -> Callable[[Tensor, Tensor], Tensor]:
    """The compile-friendly recipe of docs "Losses and formulas": no boolean indexing."""
    return functools.partial(_real_class_weights, class_weights, ignore_index)


def _real_class_weights(
    class_weights: Tensor, ignore_index: int, outputs: Tensor, targets: Tensor
) -> Tensor:
    picked = class_weights[targets.clamp(0, len(class_weights) - 1)]
    return (picked * (targets != ignore_index)).sum()


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 6), min_size=1, max_size=4),
    classes=st.integers(2, 5),
    ignore_index=st.sampled_from([0, -100, 7]),
    kind=st.sampled_from([torch.nn.CrossEntropyLoss, torch.nn.NLLLoss]),
    seed=st.integers(0, 2**16),
)
def test_the_fixed_shape_recipe_gives_the_criterion_on_all_the_data(
    sizes: list[int],
    classes: int,
    ignore_index: int,
    kind: type[torch.nn.CrossEntropyLoss | torch.nn.NLLLoss],
    seed: int,
) -> None:
    # (w[t.clamp(0, C - 1)] * (t != ignore_index)).sum(), the form without boolean indexing
    # (no graph break under torch.compile, no host sync on a GPU), weighs each batch as the
    # criterion's own denominator, so the epoch value is the criterion on the concatenated data.
    generator = torch.Generator().manual_seed(seed)
    class_weights = torch.rand(classes, generator=generator) + 0.1
    criterion = kind(weight=class_weights, ignore_index=ignore_index)
    batches = []
    for size in sizes:
        targets = torch.randint(0, classes, (size,), generator=generator)
        if targets[0] == ignore_index:
            targets[0] = 1  # ignore_index is 0 here
        ignored = torch.rand(size, generator=generator) < 0.3
        ignored[0] = False  # every batch keeps a real target (else the criterion is NaN)
        batches.append(
            (
                torch.randn(size, classes, generator=generator),
                targets.masked_fill(ignored, ignore_index),
            )
        )
    exact = tt.Loss(criterion, "CE", weight=fixed_shape_class_weights(class_weights, ignore_index))
    for outputs, targets in batches:
        torch.testing.assert_close(  # the same weight as the boolean-indexing recipe
            fixed_shape_class_weights(class_weights, ignore_index)(outputs, targets),
            class_weights[targets[targets != ignore_index]].sum(),
        )
        exact(outputs, targets)
    outputs, targets = (torch.cat(parts) for parts in zip(*batches, strict=True))
    expected = kind(weight=class_weights.double(), ignore_index=ignore_index)(
        outputs.double(), targets
    )
    torch.testing.assert_close(exact.compute()["CE"].double(), expected, rtol=1e-5, atol=1e-7)


# -- per-sample weights beside a scalar batch mean: ScalarWeightWarning --------------------


def test_per_sample_weights_on_a_batch_mean_warn_once_and_count_with_their_sum() -> None:
    # mse_loss's default reduction is a mean over the batch: weights [1, 0] cannot leave the
    # second sample out of it (5.0 is the documented value, 1.0 what the weights meant)
    outputs, targets = torch.tensor([[1.0], [3.0]]), torch.zeros(2, 1)
    metric = tt.Metric(functional.mse_loss, "MSE")
    with pytest.warns(tt.errors.ScalarWeightWarning, match=r"Metric 'MSE': 'MSE' is one number"):
        metric.update(outputs, targets, weight=torch.tensor([1.0, 0.0]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metric.update(outputs, targets, weight=torch.tensor([1.0, 0.0]))  # once per objective
    assert metric.compute()["MSE"].item() == 5.0


def test_a_batch_mean_weighted_after_unweighted_batches_warns_too() -> None:
    outputs, targets = torch.tensor([[1.0], [3.0]]), torch.zeros(2, 1)
    metric = tt.Metric(functional.mse_loss, "MSE")
    metric.update(outputs, targets)  # the kind of batch is planned without a weight
    with pytest.warns(tt.errors.ScalarWeightWarning):
        metric.update(outputs, targets, weight=torch.tensor([1.0, 0.0]))


def test_batch_weights_and_per_sample_values_do_not_warn() -> None:
    outputs, targets = torch.tensor([[1.0], [3.0]]), torch.zeros(2, 1)
    mask = torch.tensor([1.0, 0.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scalar = tt.Metric(functional.mse_loss, "MSE")
        scalar.update(outputs, targets, weight=mask.sum())  # a count: the batch's weight
        scalar.update(outputs, targets)
        per_sample = tt.Metric(lambda o, t: (o - t).square().mean(1), "MSE")
        per_sample.update(outputs, targets, weight=mask)
    assert scalar.compute()["MSE"].item() == pytest.approx(5.0)
    assert per_sample.compute()["MSE"].item() == 1.0


def test_a_composed_loss_with_a_batch_mean_component_warns_on_per_sample_weights() -> None:
    outputs, targets = torch.tensor([[1.0], [3.0]]), torch.zeros(2, 1)
    loss = tt.Loss(functional.mse_loss, "MSE") + tt.Loss(lambda o, t: (o - t).abs().mean(1), "MAE")
    with pytest.warns(tt.errors.ScalarWeightWarning, match=r"'MSE' is one number"):
        value = loss(outputs, targets, weight=torch.tensor([1.0, 0.0]))
    assert value.item() == 5.0 + 1.0  # the whole batch's MSE, the first sample's MAE

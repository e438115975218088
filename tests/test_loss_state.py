"""A loss's state dict carries its formula: a state saved under another formula is refused.

The combined value a loss reports is the epoch mean of its criterion, so the
accumulators of ``[A] + [B]`` loaded into ``[A] x [B]`` would be reported as the
product's value. ``load_state_dict`` compares the formula the state was saved
under with the loss's (the rendered formula, which ``merge_state`` and
``sync_all`` compare too) and changes nothing when they differ.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor

import torchtally as tt
from torchtally import schedules
from torchtally.errors import StateDictError
from torchtally.losses import COMBINED_NAME, CompositionalLoss, DictLoss, Loss, LossBase


def mae(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).abs().mean(1)


def mse(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).pow(2).mean(1)


def parts(outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
    return {"MAE": mae(outputs, targets), "MSE": mse(outputs, targets)}


def smooth(values: dict[str, Tensor]) -> Tensor:
    return torch.log1p(values["MAE"]) + torch.clamp(values["MSE"], max=1.0)


def through_torch_save(state: dict[str, Any]) -> dict[str, Any]:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded: dict[str, Any] = torch.load(buffer, weights_only=True)
    return loaded


def a() -> Loss[Tensor, Tensor]:
    return Loss(mae, "A")


def b() -> Loss[Tensor, Tensor]:
    return Loss(mse, "B")


DATA = (torch.ones(2, 1), torch.full((2, 1), 3.0))

# (saved, loaded into): each pair has the same names and accumulators, another formula
DIFFERENT: dict[str, tuple[Callable[[], Any], Callable[[], Any]]] = {
    "sum-product": (lambda: a() + b(), lambda: a() * b()),
    "weight": (lambda: a() + b(), lambda: 10 * a() + b()),
    "schedule": (
        lambda: a() + schedules.linear(0.0, 1.0, 20) * b(),
        lambda: a() + schedules.linear(0.0, 1.0, 40) * b(),
    ),
    "schedule unit": (
        lambda: a() + schedules.linear(0.0, 1.0, 20) * b(),
        lambda: a() + schedules.linear(0.0, 1.0, 20, unit="epoch") * b(),
    ),
    "criterion": (
        lambda: CompositionalLoss(smooth, "smooth", MAE=mae, MSE=mse),
        lambda: CompositionalLoss(smooth, "log1p([MAE]) + min([MSE], 1)", MAE=mae, MSE=mse),
    ),
    "summed weights": (
        lambda: DictLoss.summed(parts, "Loss"),
        lambda: DictLoss.summed(parts, "Loss", weights={"MAE": 1.0, "MSE": 2.0}),
    ),
    "joined": (
        lambda: (a() + b()) | tt.Metric(mae, "Peak"),
        lambda: (a() * b()) | tt.Metric(mae, "Peak"),
    ),
}


@pytest.mark.parametrize("case", list(DIFFERENT))
def test_a_state_saved_under_another_formula_is_refused_and_nothing_changes(case: str) -> None:
    build_saved, build_target = DIFFERENT[case]
    saved, target = build_saved(), build_target()
    saved(*DATA)
    target(torch.zeros(3, 1), torch.ones(3, 1))
    state = through_torch_save(saved.state_dict())
    before_state, before = target.state_dict(), target.compute()
    with pytest.raises(StateDictError) as caught:
        target.load_state_dict(state)
    message = str(caught.value)
    assert message.startswith(type(target).__name__)
    assert repr(saved.formula) in message and repr(target.formula) in message
    assert "nothing was loaded" in message
    after = target.compute()
    assert list(after) == list(before)
    for name in before:
        torch.testing.assert_close(after[name], before[name], equal_nan=True)
    assert target.state_dict().keys() == before_state.keys()


def test_the_example_of_the_report_is_refused() -> None:
    saved = a() + b()
    saved(*DATA)
    product = a() * b()
    with pytest.raises(StateDictError, match=r"'\[A\] \+ \[B\]'.*'\[A\] x \[B\]'"):
        product.load_state_dict(saved.state_dict())
    product(*DATA)
    assert float(product.compute()[COMBINED_NAME]) == 8.0  # [A] x [B] on |1 - 3|


@pytest.mark.parametrize(
    "build",
    [
        lambda: a() + b(),
        lambda: 0.5 * a() + b() ** 2,
        lambda: a() + schedules.cosine(1.0, 0.0, 5) * b(),
        lambda: CompositionalLoss(smooth, "smooth", MAE=mae, MSE=mse),
        lambda: DictLoss(parts, "MAE", names=["MSE"]),
        lambda: DictLoss.summed(parts, "Loss", weights={"MAE": 1.0, "MSE": 2.0}),
        lambda: (a() + b()) | tt.Metric(mae, "Peak"),
        lambda: a(),
    ],
)
def test_the_same_formula_loads_through_torch_save_with_weights_only(build: Any) -> None:
    saved = build()
    saved(*DATA)
    saved(torch.zeros(3, 1), torch.ones(3, 1))
    state = saved.state_dict()
    assert state["formula"] == saved.formula
    restored = build()
    restored.load_state_dict(through_torch_save(state))
    expected, found = saved.compute(), restored.compute()
    assert list(found) == list(expected)
    for name in expected:
        torch.testing.assert_close(found[name], expected[name])


def test_a_loss_state_without_its_formula_is_refused() -> None:
    saved = a() + b()
    saved(*DATA)
    state = saved.state_dict()
    del state["formula"]
    target = a() + b()
    with pytest.raises(StateDictError, match=r"no 'formula'.*nothing was loaded"):
        target.load_state_dict(state)
    state["formula"] = 3
    with pytest.raises(StateDictError, match="nothing was loaded"):
        target.load_state_dict(state)


def test_a_metric_state_carries_no_formula_and_loads_as_before() -> None:
    metric = tt.Metric(mae, "A")
    metric.update(*DATA)
    state = metric.state_dict()
    assert "formula" not in state
    restored = tt.Metric(mae, "A")
    restored.load_state_dict(through_torch_save(state))
    torch.testing.assert_close(restored.compute()["A"], torch.tensor(2.0))


def test_a_metric_state_is_refused_by_a_loss_of_the_same_names() -> None:
    metric = tt.Metric(mae, "A")
    metric.update(*DATA)
    loss: LossBase[Tensor, Tensor] = a()
    with pytest.raises(StateDictError, match="no 'formula'"):
        loss.load_state_dict(metric.state_dict())


# Directions of negated operands (through the loss operators, and for MetricTracker) ---------


def test_products_and_powers_of_negated_losses_point_the_right_way() -> None:
    mae_loss, mse_loss = Loss(mae, "MAE"), Loss(mse, "MSE")
    product = (-mae_loss) * (-mse_loss)
    assert product.higher_is_better is False
    assert tt.monitor_mode(product, COMBINED_NAME) == "min"
    assert ((-mae_loss) ** 2).higher_is_better is False
    assert ((-mae_loss) ** -2).higher_is_better is True
    assert ((-mae_loss) ** 3).higher_is_better is True
    assert (mae_loss * (-mse_loss)).higher_is_better is True  # -(MAE x MSE)
    assert (-(-mae_loss * mse_loss)).higher_is_better is False
    # a copy keeps the sign: composing it again gives the same direction
    again = copy.deepcopy(-mae_loss) * (-mse_loss)
    assert again.higher_is_better is False
    with pytest.raises(tt.errors.FormulaError, match="may be positive or negative"):
        _ = (mae_loss - Loss(mae, "Acc", higher_is_better=True)) ** 2


def test_a_tracker_of_a_product_of_negated_losses_keeps_the_lowest_epoch() -> None:
    loss = (-Loss(mae, "MAE")) * (-Loss(mse, "MSE"))
    tracker = tt.MetricTracker(loss, COMBINED_NAME)
    for error in (2.0, 1.0, 3.0):
        loss.reset()
        loss(torch.zeros(2, 1), torch.full((2, 1), error))
        tracker.update()
    assert tracker.best_epoch == 1 and float(tracker.best_value) == 1.0

"""Small contracts at the edges of the input: unary plus, unshowable names, declared
entries that collide, the demo's limits, and a batch that weighs nothing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor

import torchtally as tt
from torchtally.losses import JoinedLoss


def mae(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).abs()


def mse(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).pow(2).mean()


def parts(outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
    error = (outputs - targets).abs()
    return {"L": error, "Worst": error.amax().expand(len(error))}


class Peak(tt.Objective[Tensor, Tensor]):
    aggregation = "max"

    def calculate(self, outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
        return {"Peak": (outputs - targets).abs()}


OUTPUTS, TARGETS = torch.tensor([1.0, -2.0, 4.0]), torch.zeros(3)

# -- unary plus ---------------------------------------------------------------------------------

LOSSES: dict[str, Callable[[], Any]] = {
    "Loss": lambda: tt.Loss(mae, "MAE"),
    "composition": lambda: tt.Loss(mae, "MAE") + 0.5 * tt.Loss(mse, "MSE"),
    "negation": lambda: -tt.Loss(mae, "MAE"),
    "DictLoss": lambda: tt.DictLoss(parts, "L", names=["Worst"]),
    "joined": lambda: tt.Loss(mae, "MAE") | Peak(),
}


@pytest.mark.parametrize("kind", list(LOSSES))
def test_unary_plus_is_the_same_loss_with_fresh_state(kind: str) -> None:
    loss = LOSSES[kind]()
    loss(OUTPUTS, TARGETS)
    plus = +loss
    assert plus is not loss and type(plus) is type(loss)
    assert plus.formula == loss.formula and repr(plus) == repr(loss)
    assert plus.higher_is_better == loss.higher_is_better
    with pytest.warns(tt.errors.ComputedBeforeUpdatedWarning):
        plus.compute()  # fresh state, as for 0 + loss
    fresh = LOSSES[kind]()
    torch.testing.assert_close(plus(OUTPUTS, TARGETS), fresh(OUTPUTS, TARGETS))
    assert plus.compute().keys() == fresh.compute().keys()
    for name, value in fresh.compute().items():
        torch.testing.assert_close(plus.compute()[name], value)


def test_unary_plus_and_minus_compose_as_on_numbers() -> None:
    loss = tt.Loss(mae, "MAE")
    assert (+-loss).formula == (-+loss).formula == "-[MAE]"
    assert (+-loss).higher_is_better is True
    assert isinstance(+(loss | Peak()), JoinedLoss)
    expected = -mae(OUTPUTS, TARGETS).mean()
    torch.testing.assert_close((+-loss)(OUTPUTS, TARGETS), expected)

"""Per-sample weights in a loss's forward: no overflow in half precision, and their gradient.

References: the weighted mean written by hand in float64, and the hand-written
expression ``(v * w).sum() / w.sum()`` differentiated by torch.autograd.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor

from torchtally.losses import Loss


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

"""Objectives touched under ``torch.inference_mode()`` keep working outside it.

A tensor made in inference mode can never be changed in place outside it: state or queue
buffers first made there (a validation loop run under ``trainer.validate``, a ``compute()`` in
a logging hook) made every later update raise a raw ``RuntimeError``, and the batch that
raised was half folded, so the next ``compute()`` reported a wrong value.
"""

from __future__ import annotations

import copy
import io
import pickle
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor
from torch.nn import functional

import torchtally as tt


def mae(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).abs().mean(1)


def batches() -> list[tuple[Tensor, Tensor]]:
    generator = torch.Generator().manual_seed(3)
    return [
        (torch.randn(size, 3, generator=generator), torch.randn(size, 3, generator=generator))
        for size in (4, 4, 2, 5, 4, 1)
    ]


def reference(data: list[tuple[Tensor, Tensor]]) -> Tensor:
    return torch.cat([mae(o.double(), t.double()) for o, t in data]).mean()


def first_update(objective: Any, data: list[tuple[Tensor, Tensor]]) -> None:
    objective.update(*data[0])


def compute_then_update(objective: Any, data: list[tuple[Tensor, Tensor]]) -> None:
    objective.compute()


def state_dict(objective: Any, data: list[tuple[Tensor, Tensor]]) -> None:
    objective.state_dict()


def weighted_update(objective: Any, data: list[tuple[Tensor, Tensor]]) -> None:
    objective.update(*data[0], weight=torch.ones(len(data[0][0])))


def load_state_dict(objective: Any, data: list[tuple[Tensor, Tensor]]) -> None:
    objective.load_state_dict(objective.state_dict())


def copy_back(objective: Any, data: list[tuple[Tensor, Tensor]]) -> None:
    objective.merge_state(objective.copy())
    objective.reset()
    objective.update(*data[0])


def move(objective: Any, data: list[tuple[Tensor, Tensor]]) -> None:
    objective.to("cpu")
    objective.compute()


STEPS: list[Callable[[Any, list[tuple[Tensor, Tensor]]], None]] = [
    first_update,
    compute_then_update,
    state_dict,
    weighted_update,
    load_state_dict,
    copy_back,
    move,
]


@pytest.mark.filterwarnings("ignore::torchtally.errors.ComputedBeforeUpdatedWarning")
@pytest.mark.parametrize("step", STEPS, ids=lambda step: step.__name__)
@pytest.mark.parametrize("make", ["metric", "collection", "loss"])
@pytest.mark.parametrize("warm", [False, True], ids=["fresh", "used before"])
def test_an_objective_touched_in_inference_mode_keeps_counting_outside_it(
    step: Callable[[Any, list[tuple[Tensor, Tensor]]], None], make: str, warm: bool
) -> None:
    data = batches()
    objective: Any = {
        "metric": lambda: tt.Metric(mae, "MAE"),
        "collection": lambda: tt.MetricCollection(MAE=mae, MSE=functional.mse_loss),
        "loss": lambda: tt.Loss(mae, "MAE") * 2,
    }[make]()
    if warm:
        objective.update(*data[0])  # some state before, as in a training loop
    with torch.inference_mode():
        step(objective, data)
    objective.reset()
    for outputs, targets in data:
        objective.update(outputs, targets)
    with torch.inference_mode():
        objective.update(*data[-1])  # and a last batch under inference mode again
    expected = reference([*data, data[-1]])
    value = objective.compute()["MAE"]
    torch.testing.assert_close(value.double(), expected, rtol=1e-6, atol=0)


def test_a_loss_validated_in_inference_mode_then_trained_returns_its_gradient() -> None:
    # Lightning's trainer.validate() runs under inference mode; trainer.fit() then trains.
    data = batches()
    loss = tt.Loss(mae, "MAE") + 0.5 * tt.Loss(functional.mse_loss, "MSE")
    with torch.inference_mode():
        for outputs, targets in data:
            loss.update(outputs, targets)
    loss.reset()
    outputs = data[0][0].clone().requires_grad_(True)
    loss(outputs, data[0][1]).backward()
    by_hand = outputs.detach().clone().requires_grad_(True)
    target = data[0][1]
    (mae(by_hand, target).mean() + 0.5 * functional.mse_loss(by_hand, target)).backward()
    torch.testing.assert_close(outputs.grad, by_hand.grad)
    assert loss.compute()["MAE"] == pytest.approx(mae(data[0][0], target).mean().item())


@pytest.mark.parametrize("how", ["copy", "deepcopy"])
def test_a_copy_taken_in_inference_mode_keeps_counting_outside_it(how: str) -> None:
    data = batches()
    for objective in (tt.Metric(mae, "MAE"), tt.Loss(mae, "MAE") * 2):
        objective.update(*data[0])
        with torch.inference_mode():
            copied = objective.copy() if how == "copy" else copy.deepcopy(objective)
        for outputs, targets in data[1:]:
            copied.update(outputs, targets)
        torch.testing.assert_close(
            copied.compute()["MAE"].double(), reference(data), rtol=1e-6, atol=0
        )


def test_a_schedule_first_moved_under_inference_mode_moves_on_outside_it() -> None:
    # Its position was made lazily at the first forward, as an inference tensor: the next
    # forward outside raised torch's RuntimeError after counting the batch.
    loss = tt.Loss(mae, "A") + tt.schedules.linear(0.0, 1.0, steps=4) * tt.Loss(mae, "B")
    # (A forward under inference mode is no training step: it leaves the schedule at 0.)
    with torch.inference_mode():
        loss(torch.ones(2, 1), torch.zeros(2, 1))
    loss(torch.ones(2, 1), torch.zeros(2, 1))
    loss(torch.ones(2, 1), torch.zeros(2, 1))
    assert loss.schedule_values() == {"linear(0→1, 4)": 0.5}
    assert loss.compute()["Combined Loss"].item() == pytest.approx((1.0 + 1.0 + 1.25) / 3)


@pytest.mark.parametrize("first", ["forward", "load_state_dict", "advance_epoch"])
def test_a_scheduled_loss_first_used_in_inference_mode_keeps_training_outside_it(
    first: str,
) -> None:
    # Lightning's sanity check runs validation (under inference mode) before the first
    # training step: the schedules' positions must not become inference tensors there.
    data = batches()
    loss = tt.Loss(mae, "MAE") + tt.schedules.linear(0.0, 1.0, steps=4) * tt.Loss(
        functional.mse_loss, "MSE"
    )
    with torch.inference_mode():
        if first == "forward":
            loss(*data[0])
        elif first == "load_state_dict":
            loss.load_state_dict(loss.state_dict())
        else:
            loss.advance_epoch()
    loss.reset()
    for index, (outputs, targets) in enumerate(data[1:]):  # validation moved no schedule
        weight = min(index, 4) / 4
        expected = mae(outputs, targets).mean() + weight * functional.mse_loss(outputs, targets)
        torch.testing.assert_close(loss(outputs, targets), expected)
    loss.advance_epoch()
    torch.testing.assert_close(
        loss.compute()["MAE"].double(), reference(data[1:]), rtol=1e-6, atol=0
    )
    assert loss.schedule_values() == {"linear(0→1, 4)": 1.0}


class MeanOfErrors:
    """``update`` and ``compute`` of a mean absolute error kept in ``total`` and ``count``."""

    total: Tensor
    count: Any

    def update(self, outputs: Tensor, targets: Tensor) -> None:
        self.total += mae(outputs, targets).double().sum()
        self.count += len(outputs)

    def compute(self) -> Tensor:
        return self.total / self.count


class AbsoluteErrors(MeanOfErrors, torch.nn.Module):
    """A stateful module (``tt.wrap`` keeps its state in it): the mean absolute error."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("total", torch.zeros((), dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))

    def reset(self) -> None:
        self.total.zero_()
        self.count.zero_()


def mse_per_sample(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).pow(2).mean(1)


def mae_and_double(outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
    return {"MAE": mae(outputs, targets), "Twice": 2 * mae(outputs, targets)}


def torchmetrics_mae() -> Any:
    torchmetrics = pytest.importorskip("torchmetrics")
    from torchtally.contrib.torchmetrics import from_torchmetrics

    # Over every element of rows of equal length: the mean of the rows' mean absolute errors.
    return from_torchmetrics(torchmetrics.MeanAbsoluteError(), name="MAE")


KINDS: dict[str, Callable[[], Any]] = {
    "metric": lambda: tt.Metric(mae, "MAE"),
    "collection": lambda: tt.MetricCollection(MAE=mae, MSE=mse_per_sample),
    "scheduled loss": lambda: (
        tt.Loss(mae, "MAE") + tt.schedules.linear(0.0, 1.0, 3) * tt.Loss(mse_per_sample, "MSE")
    ),
    "dict loss": lambda: tt.DictLoss(mae_and_double, "MAE"),
    "joined": lambda: tt.Metric(mae, "MAE") | tt.Metric(mse_per_sample, "MSE"),
    "joined loss": lambda: tt.Loss(mae, "MAE") | tt.Metric(mse_per_sample, "MSE"),
    "wrapped function": lambda: tt.wrap(mae, name="MAE"),
    "wrapped stateful module": lambda: tt.wrap(AbsoluteErrors(), name="MAE"),
    "torchmetrics adapter": torchmetrics_mae,
}


def _pickled(objective: Any) -> Any:
    return pickle.loads(pickle.dumps(objective))


def _saved(objective: Any) -> Any:
    buffer = io.BytesIO()
    torch.save(objective, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


@pytest.mark.parametrize("how", ["pickle", "torch.save", "deepcopy"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_an_objective_restored_in_inference_mode_keeps_counting_outside_it(
    kind: str, how: str
) -> None:
    # A checkpoint read (or an objective copied) inside a validation hook, then trained on.
    data = batches()
    objective = KINDS[kind]()
    objective.update(*data[0])
    restore = {"pickle": _pickled, "torch.save": _saved, "deepcopy": copy.deepcopy}[how]
    with torch.inference_mode():
        restored = restore(objective)
    for outputs, targets in data[1:]:
        restored.update(outputs, targets)
    torch.testing.assert_close(
        restored.compute()["MAE"].double(), reference(data), rtol=1e-6, atol=0
    )
    if hasattr(restored, "schedule_values"):
        restored(*data[0])  # a forward moves the schedules outside inference mode


class Tally(MeanOfErrors):
    """A plain object keeping its state in attributes (``tt.wrap`` saves them as they are)."""

    def __init__(self) -> None:
        self.total = torch.zeros((), dtype=torch.float64)
        self.count = 0

    def reset(self) -> None:
        self.total = torch.zeros((), dtype=torch.float64)
        self.count = 0


def test_a_wrapped_object_loaded_in_inference_mode_keeps_counting_outside_it() -> None:
    data = batches()
    saved = tt.wrap(Tally(), name="MAE")
    saved.update(*data[0])
    restored = tt.wrap(Tally(), name="MAE")
    with torch.inference_mode():
        restored.load_state_dict(saved.state_dict())
    for outputs, targets in data[1:]:
        restored.update(outputs, targets)
    torch.testing.assert_close(restored.compute()["MAE"], reference(data), rtol=1e-6, atol=0)


def test_a_torchmetrics_adapter_loaded_or_merged_in_inference_mode_keeps_counting_outside_it() -> (
    None
):
    # The leaves took inference tensors as states: every later update raised "Inplace update
    # to inference tensor outside InferenceMode".
    data = batches()
    saved = torchmetrics_mae()
    saved.update(*data[0])
    loaded, merged = torchmetrics_mae(), torchmetrics_mae()
    with torch.inference_mode():
        loaded.load_state_dict(saved.state_dict())
        merged.merge_state(saved)
    for restored in (loaded, merged):
        for outputs, targets in data[1:]:
            restored.update(outputs, targets)
        torch.testing.assert_close(
            restored.compute()["MAE"].double(), reference(data), rtol=1e-6, atol=0
        )

"""The hot path's structure, counted: torch operations and torchtally's Python calls per batch.

At small batches an update costs the fixed overhead of each tensor operation
and of each Python call, so these tests count both for one steady-state
batch (a kind of batch seen before, a queue with room: no fold) of a
collection's ``update`` and a composed loss's ``forward``, and check the
values against independent float64 references. Counts, not timings: the
timings live in ``benchmarks/`` (see docs/performance.md).
"""

from __future__ import annotations

import gc
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from torch import Tensor
from torch.nn.functional import mse_loss
from torch.utils._python_dispatch import TorchDispatchMode

import torchtally as tt
from torchtally.objectives._ledger import Ledger

PACKAGE = str(Path(tt.__file__).resolve().parent)


def mse(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).square().mean(1)  # per sample: (B,)


def mae(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).abs().mean(1)


class _Ops(TorchDispatchMode):
    """Counts the aten operations dispatched inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.counts[str(func)] += 1
        return func(*args, **(kwargs or {}))


def aten_ops(step: Callable[[], Any]) -> Counter[str]:
    with _Ops() as mode:
        step()
    return mode.counts


def torchtally_calls(step: Callable[[], Any]) -> list[str]:
    """The torchtally functions (comprehensions included) one call of ``step`` enters."""
    entered: list[str] = []

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        code = frame.f_code
        if event == "call" and str(Path(code.co_filename).resolve()).startswith(PACKAGE):
            entered.append(f"{Path(code.co_filename).name}:{code.co_name}")

    previous, collecting = sys.getprofile(), gc.isenabled()
    gc.disable()  # no collection (and no finaliser) inside the counted call
    sys.setprofile(profile)
    try:
        step()
    finally:
        sys.setprofile(previous)
        if collecting:
            gc.enable()
    return entered


def steady(step: Callable[[], Any], ledger: Ledger) -> None:
    """Warm ``step`` up, then leave room in the queue: the next call neither plans nor folds.

    The first pass through the queue cuts each batch's slot (a view, once); past a fold
    every slot is cut.
    """
    step()
    pending = ledger._pending
    for _ in range(pending.room + 1):
        step()
    while len(pending.sizes) >= pending.room - 3:
        step()


def batches() -> list[tuple[Tensor, Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [(torch.rand(64, 10, generator=generator), torch.rand(64, 10, generator=generator))]


def test_collection_update_adds_one_copy_and_few_python_calls() -> None:
    outputs, targets = batches()[0]
    metrics = tt.MetricCollection(MSE=mse, MAE=mae)

    def step() -> None:
        metrics.update(outputs, targets)

    steady(step, metrics._ledger)
    direct = aten_ops(lambda: (mse(outputs, targets), mae(outputs, targets)))
    assert aten_ops(step) - direct == Counter({"aten.cat.out": 1})
    calls = torchtally_calls(step)
    assert len(calls) <= 6, calls  # update, calculate, call_each, the queue's three
    # every batch counted, exactly: 64-sample batches, float64 references
    metrics.reset()
    for _ in range(300):  # more than one fold
        step()
    values = metrics.compute()
    for name, fn in (("MSE", mse), ("MAE", mae)):
        expected = fn(outputs.double(), targets.double()).mean()
        torch.testing.assert_close(values[name].double(), expected, rtol=1e-6, atol=0)


def test_composed_loss_forward_adds_one_copy_and_few_python_calls() -> None:
    outputs, targets = batches()[0]
    outputs.requires_grad_(True)
    loss = tt.Loss(mse_loss, "MSE") ** 2 + 0.5 * tt.Loss(mae, "MAE")

    def step() -> Tensor:
        return loss(outputs, targets)

    def by_hand() -> Tensor:
        return (mse_loss(outputs, targets) ** 2 + 0.5 * mae(outputs, targets)).mean()

    steady(step, loss._ledger)
    # the 0-d MSE, the (B,) MAE and the (B,) criterion: one copy (its 0-d value viewed as (1,))
    added = aten_ops(step) - aten_ops(by_hand)
    assert added == Counter({"aten.cat.out": 1, "aten.view.default": 1})
    calls = torchtally_calls(step)
    # __call__, forward, calculate, call_each, _criterion, criterion, _one_floating_dtype,
    # run_list, _power, name (twice), batch_value, and the queue's four: no comprehension
    # for absent schedules or the components, no call to advance absent schedules
    assert len(calls) <= 16, calls
    torch.testing.assert_close(step(), by_hand(), rtol=0, atol=0)
    loss.reset()
    for _ in range(300):
        step()
    hand = by_hand().detach().double()
    values = loss.compute()
    torch.testing.assert_close(values["Combined Loss"].double(), hand, rtol=1e-6, atol=0)
    mean_mse = mse_loss(outputs.detach().double(), targets.double())
    torch.testing.assert_close(values["MSE"].double(), mean_mse, rtol=1e-6, atol=0)


def test_scheduled_loss_keeps_its_schedule_on_the_hot_path() -> None:
    """A schedule's factor is read and advanced on the path without the per-batch checks."""
    outputs, targets = batches()[0]
    loss = tt.schedules.linear(0.0, 1.0, steps=4) * tt.Loss(mae, "MAE")
    for step in range(6):  # 0, 0.25, 0.5, 0.75, 1, 1: the factor the batch was given
        factor = min(step, 4) / 4
        value = loss(outputs, targets)
        expected = (factor * mae(outputs.double(), targets.double())).mean()
        torch.testing.assert_close(value.double(), expected, rtol=1e-6, atol=1e-12)
    assert loss.schedule_values() == {"linear(0→1, 4)": 1.0}

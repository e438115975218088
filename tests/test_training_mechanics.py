"""Training-loop mechanics: gradient accumulation, AMP's GradScaler, resuming in a new process.

Each test runs the loop as a user writes it and checks what torchtally reports
against float64 references computed here from the same data (a hand-written
loop over the same batches).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import torchtally as tt

TESTS = Path(__file__).resolve().parent
SOURCE = Path(tt.__file__).resolve().parents[1]


def squared(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).pow(2).flatten(1).mean(1)  # per sample


def absolute(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).abs().flatten(1).mean(1)  # per sample


def batch_mse(outputs: Tensor, targets: Tensor) -> Tensor:
    return torch.nn.functional.mse_loss(outputs, targets)  # a batch mean


def worst(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).abs().flatten(1).amax(1)


def detector(outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
    return {"cls": absolute(outputs, targets).mean(), "box": squared(outputs, targets)}


SIZES = (5, 1, 8, 3, 7)


def batch(epoch: int, index: int) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(1000 * epoch + index)
    size = SIZES[index % len(SIZES)]
    return torch.randn(size, 3, generator=generator), torch.randn(size, 3, generator=generator)


# -- gradient accumulation --------------------------------------------------------------------


def test_with_gradient_accumulation_a_step_schedule_moves_once_per_micro_batch() -> None:
    # k micro-batches per optimizer step: steps=k * N spans N optimizer steps, and each
    # micro-batch is weighted at its own forward count, returned and accumulated alike.
    k, optimizer_steps = 3, 4
    model = torch.nn.Linear(3, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loss = tt.Loss(absolute, "AE") + tt.schedules.linear(0.0, 1.0, k * optimizer_steps) * tt.Loss(
        squared, "SE"
    )
    criteria = []
    for step in range(optimizer_steps):
        for micro in range(k):
            inputs, targets = batch(step, micro)
            outputs = model(inputs)
            value = loss(outputs, targets)
            weight = (step * k + micro) / (k * optimizer_steps)
            with torch.no_grad():
                by_hand = (
                    absolute(outputs, targets).double()
                    + weight * squared(outputs, targets).double()
                )
            torch.testing.assert_close(value.double(), by_hand.mean(), rtol=1e-6, atol=0)
            criteria.append(by_hand)
            (value / k).backward()
        optimizer.step()
        optimizer.zero_grad()
    assert loss.schedule_values() == {"linear(0→1, 12)": 1.0}
    combined = loss.compute()["Combined Loss"]
    torch.testing.assert_close(combined.double(), torch.cat(criteria).mean(), rtol=1e-6, atol=0)


def test_a_weight_held_over_each_optimizer_step_counts_steps_with_advance_epoch() -> None:
    # The documented way to give the k micro-batches of one optimizer step one weight:
    # a schedule counted by advance_epoch(), called after each optimizer.step().
    k, optimizer_steps = 2, 5
    model = torch.nn.Linear(3, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    warm_up = tt.schedules.linear(0.0, 1.0, optimizer_steps, unit="epoch")
    loss = tt.Loss(absolute, "AE") + warm_up * tt.Loss(squared, "SE")
    criteria = []
    for step in range(optimizer_steps + 1):
        assert loss.schedule_values() == {warm_up.label: min(step / optimizer_steps, 1.0)}
        for micro in range(k):
            inputs, targets = batch(step, micro)
            outputs = model(inputs)
            value = loss(outputs, targets)
            with torch.no_grad():
                by_hand = (
                    absolute(outputs, targets).double()
                    + min(step / optimizer_steps, 1.0) * squared(outputs, targets).double()
                )
            torch.testing.assert_close(value.double(), by_hand.mean(), rtol=1e-6, atol=0)
            criteria.append(by_hand)
            (value / k).backward()
        optimizer.step()
        optimizer.zero_grad()
        loss.advance_epoch()
    combined = loss.compute()["Combined Loss"]
    torch.testing.assert_close(combined.double(), torch.cat(criteria).mean(), rtol=1e-6, atol=0)


# -- AMP: GradScaler ---------------------------------------------------------------------------


def test_a_step_gradscaler_skips_is_still_a_forward_counted_in_the_epoch_and_the_schedule() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    # a scale so large the float16 gradients overflow: the scaler skips steps, halving it
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40)
    loss = tt.Loss(squared, "SE") * tt.schedules.linear(1.0, 2.0, steps=10)
    metrics = tt.MetricCollection(AE=absolute, MSE=batch_mse)
    criteria, errors, mses, sizes, skipped = [], [], [], [], 0
    for index in range(4):
        inputs, targets = batch(0, index)
        inputs = torch.cat([inputs, inputs[:, :1]], 1)
        targets = targets[:, :1]
        optimizer.zero_grad()
        with torch.autocast("cpu", torch.float16):
            outputs = model(inputs)
            value = loss(outputs, targets)
            metrics.update(outputs, targets)
            assert value.dtype == squared(outputs, targets).mean().dtype  # as written by hand
        with torch.no_grad():
            weight = 1.0 + index / 10
            criteria.append(weight * squared(outputs, targets).double())
            errors.append(absolute(outputs, targets).double())
            mses.append(batch_mse(outputs, targets).double() * len(targets))
            sizes.append(len(targets))
        scale = scaler.get_scale()
        scaler.scale(value).backward()
        scaler.step(optimizer)
        scaler.update()
        skipped += scaler.get_scale() < scale
    assert skipped >= 2  # the scenario holds: steps were skipped
    assert loss.schedule_values() == {"linear(1→2, 10)": 1.4}  # one step per forward
    values = loss.compute()
    torch.testing.assert_close(
        values["Combined Loss"].double(), torch.cat(criteria).mean(), rtol=1e-6, atol=0
    )
    computed = metrics.compute()
    torch.testing.assert_close(computed["AE"].double(), torch.cat(errors).mean(), rtol=1e-6, atol=0)
    torch.testing.assert_close(computed["MSE"].double(), sum(mses) / sum(sizes), rtol=1e-6, atol=0)


# -- resuming in a new process -----------------------------------------------------------------

EPOCHS, BATCHES, STOP = 3, 5, (1, 2)  # the checkpoint: epoch 1, before its batch 2


def build() -> dict[str, Any]:
    """The objectives of a run, built the same way in every process."""
    collection = tt.MetricCollection(SE=squared, AE=absolute, MSE=batch_mse)
    loss = (
        tt.Loss(batch_mse, "MSE") ** 2
        + tt.schedules.linear(0.0, 1.0, steps=7) * tt.Loss(absolute, "AE")
        + tt.schedules.cosine(1.0, 0.5, steps=3, unit="epoch") * tt.Loss(squared, "SE")
    )
    return {
        "collection": collection,
        "worst": tt.Metric(worst, "Worst", aggregation="max", higher_is_better=False),
        "loss": loss,
        "dict": tt.DictLoss.summed(
            detector, "Loss", weights={"cls": 1.0, "box": tt.schedules.linear(0.5, 2.0, 5)}
        ),
        "tracker": tt.MetricTracker(collection, "SE", higher_is_better=False, patience=1),
        "loss tracker": tt.MetricTracker(loss, "Combined Loss"),
    }


OBJECTIVES = ("collection", "worst", "loss", "dict")


def run(objects: dict[str, Any], start: tuple[int, int], stop: tuple[int, int] | None) -> None:
    """Epochs and batches from ``start`` (epoch, batch) until ``stop`` (or the end)."""
    for epoch in range(start[0], EPOCHS):
        if epoch != start[0] or start[1] == 0:
            if epoch > 0:
                objects["loss"].advance_epoch()
            for name in OBJECTIVES:
                objects[name].reset()
        for index in range(start[1] if epoch == start[0] else 0, BATCHES):
            if (epoch, index) == stop:
                return
            outputs, targets = batch(epoch, index)
            objects["collection"].update(outputs, targets)
            objects["worst"].update(outputs, targets)
            objects["loss"](outputs, targets)
            objects["dict"](outputs, targets)
        objects["tracker"].update()
        objects["loss tracker"].update()


def report(objects: dict[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {name: objects[name].compute() for name in OBJECTIVES}
    for name in ("tracker", "loss tracker"):
        tracker = objects[name]
        values[name] = {"history": tracker.history, "best_epoch": tracker.best_epoch}
    return values


def child(stage: str, folder: str) -> None:
    """One process of the interrupted run: ``'first'`` saves a checkpoint, ``'second'`` resumes."""
    objects = build()
    checkpoint = Path(folder) / "checkpoint.pt"
    if stage == "first":
        run(objects, (0, 0), STOP)
        torch.save({name: objects[name].state_dict() for name in objects}, checkpoint)
        return
    saved = torch.load(checkpoint, weights_only=True)
    for name, state in saved.items():
        objects[name].load_state_dict(state)
    run(objects, STOP, None)
    torch.save(report(objects), Path(folder) / "report.pt")


def test_a_run_resumed_mid_epoch_in_a_new_process_reports_what_an_uninterrupted_one_does(
    tmp_path: Path,
) -> None:
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join((str(SOURCE), str(TESTS)))}
    for stage in ("first", "second"):
        code = f"import test_training_mechanics as m; m.child({stage!r}, {str(tmp_path)!r})"
        subprocess.run(
            [sys.executable, "-c", code], env=environment, check=True, timeout=120, cwd=tmp_path
        )
    resumed = torch.load(tmp_path / "report.pt", weights_only=True)

    objects = build()
    run(objects, (0, 0), None)
    uninterrupted = report(objects)
    assert resumed.keys() == uninterrupted.keys()
    for name in OBJECTIVES:
        assert resumed[name].keys() == uninterrupted[name].keys()
        for value in uninterrupted[name]:
            assert torch.equal(resumed[name][value], uninterrupted[name][value]), (name, value)
    for name in ("tracker", "loss tracker"):
        assert resumed[name] == uninterrupted[name]

    # and the uninterrupted values are those of a hand-written loop over the last epoch
    position, last = 0, EPOCHS - 1
    combined, errors = [], []
    for epoch in range(EPOCHS):
        for index in range(BATCHES):
            outputs, targets = (part.double() for part in batch(epoch, index))
            if epoch == last:
                epoch_weight = 0.5 + 0.5 * (1 + torch.cos(torch.tensor(torch.pi * epoch / 3))) / 2
                combined.append(
                    batch_mse(outputs, targets) ** 2
                    + min(position / 7, 1.0) * absolute(outputs, targets)
                    + epoch_weight.double() * squared(outputs, targets)
                )
                errors.append(absolute(outputs, targets))
            position += 1
    torch.testing.assert_close(
        uninterrupted["loss"]["Combined Loss"].double(), torch.cat(combined).mean()
    )
    torch.testing.assert_close(uninterrupted["loss"]["AE"].double(), torch.cat(errors).mean())


def test_float64_values_resumed_from_a_checkpoint_equal_the_saving_run_going_on() -> None:
    # Reading the state folds the queue, so a float64 sum of widely spread values can differ
    # in its last bits from a run that never read it mid-epoch (docs/aggregation.md); the
    # saving run and the resumed run fold alike and agree exactly.
    generator = torch.Generator().manual_seed(0)
    for trial in range(50):
        scales = 10.0 ** torch.randint(-10, 17, (12, 3), generator=generator).double()
        batches = list(torch.randn(12, 3, generator=generator, dtype=torch.float64) * scales)
        stop = 1 + trial % 11
        saving = tt.MetricCollection(
            Mean=tt.Metric(lambda o, t: o, "Mean"),
            Sum=tt.Metric(lambda o, t: o, "Sum", aggregation="sum"),
        )
        for values in batches[:stop]:
            saving.update(values, values)
        resumed = saving.copy()
        resumed.reset()
        resumed.load_state_dict(saving.state_dict())
        for values in batches[stop:]:
            saving.update(values, values)
            resumed.update(values, values)
        going_on, again = saving.compute(), resumed.compute()
        for name in ("Mean", "Sum"):
            assert torch.equal(going_on[name], again[name]), (trial, name)
        total = torch.stack(batches).flatten().double()
        torch.testing.assert_close(going_on["Sum"], total.sum(), rtol=1e-12, atol=0)

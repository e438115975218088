"""The demo's training: its data, model and objectives, the epoch loop, the printed table.

One process trains on its shard of every batch (:func:`train`); running
several processes and the command line are :mod:`torchtally.demo._cli`'s.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from typing import Any, TextIO

import torch
from torch import Tensor, nn
from torch.nn import functional

import torchtally as tt
from torchtally.losses import LossBase

__all__ = ["DemoConfig", "EpochRow", "absolute_error", "train", "within_tolerance"]

_TOLERANCE = 0.5
_WINDOW = 10
"""Batches the progress bar's running loss is the mean of."""
_VALIDATION_LOSS = "Val Loss"


@dataclass(frozen=True)
class DemoConfig:
    """What the demo trains and how.

    Attributes:
        epochs: passes over the training data.
        processes: gloo processes to train with (1: no torch.distributed).
        batch_size: samples per step (split unevenly across processes).
        samples: training samples (validation gets a quarter as many).
        learning_rate: Adam learning rate.
        seed: seed of the data and the model.
        progress: draw a progress bar on standard error while an epoch runs.

    Example:
        >>> from torchtally.demo import DemoConfig
        >>> DemoConfig(epochs=1).processes
        1
    """

    epochs: int = 3
    processes: int = 1
    batch_size: int = 48
    samples: int = 1000
    learning_rate: float = 0.01
    seed: int = 0
    progress: bool = True


@dataclass(frozen=True)
class EpochRow:
    """One epoch's synced values: training loss components, validation loss and metrics.

    ``best_epoch`` is the epoch with the lowest validation loss so far.

    Example:
        >>> from torchtally.demo import EpochRow
        >>> EpochRow(1, {'Combined Loss': 0.5}, {'Val Loss': 0.6, 'R2': 0.9}, 1).train
        {'Combined Loss': 0.5}
    """

    epoch: int
    train: dict[str, float]
    validation: dict[str, float]
    best_epoch: int = 0


# -- the task -------------------------------------------------------------------------------


def _data(config: DemoConfig) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    generator = torch.Generator().manual_seed(config.seed)
    total = config.samples + config.samples // 4
    inputs = torch.randn(total, 8, generator=generator)
    weights = torch.randn(8, 1, generator=generator)
    signal = torch.tanh(inputs @ weights / 3) * 2
    targets = signal + 0.1 * torch.randn(total, 1, generator=generator)
    split = config.samples
    return inputs[:split], targets[:split], inputs[split:], targets[split:]


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))


def absolute_error(outputs: Tensor, targets: Tensor) -> Tensor:
    """Per-sample mean absolute error."""
    return (outputs - targets).abs().flatten(1).mean(1)


def within_tolerance(outputs: Tensor, targets: Tensor) -> Tensor:
    """Per-sample hit: 1 when every output is within 0.5 of its target."""
    return ((outputs - targets).abs() <= _TOLERANCE).flatten(1).all(1).float()


def _loss() -> LossBase[Tensor, Tensor]:
    return tt.Loss(functional.mse_loss, "MSE") + 0.5 * tt.Loss(absolute_error, "MAE")


def _objectives() -> tuple[LossBase[Tensor, Tensor], list[Any]]:
    loss = _loss()
    metrics: list[Any] = [
        tt.Metric(within_tolerance, "Within 0.5", higher_is_better=True)
        | tt.Metric(absolute_error, "Max Error", higher_is_better=False, aggregation="max")
    ]
    try:
        import torchmetrics

        from torchtally.contrib.torchmetrics import from_torchmetrics
    except ImportError:  # torchmetrics is an optional extra
        pass
    else:
        metrics.append(from_torchmetrics(torchmetrics.R2Score(), name="R2"))
    return loss, metrics


def _direction(objective: Any, name: str) -> bool | None:
    finder = getattr(objective, "higher_is_better_for", None)
    if finder is not None:
        return finder(name)  # type: ignore[no-any-return]
    return getattr(objective, "higher_is_better", None)


# -- training -------------------------------------------------------------------------------


def _shard(batch: int, rank: int, world: int) -> slice:
    """Rank ``rank``'s slice of a batch: contiguous, deliberately uneven when world > 1."""
    bounds = [round(batch * (index * index) / (world * world)) for index in range(world + 1)]
    return slice(bounds[rank], bounds[rank + 1])


def train(
    config: DemoConfig, rank: int = 0, world: int = 1, out: TextIO | None = None
) -> list[EpochRow]:
    """Train the demo model; return the synced values of every epoch.

    With ``world > 1`` it must run inside an initialised gloo process group.
    Each rank's loss is scaled by its share of the batch and gradients are
    summed, so every rank takes the same step as a single process would.

    Example:
        >>> from torchtally.demo import DemoConfig, train
        >>> rows = train(DemoConfig(epochs=1, progress=False))
        >>> sorted(rows[0].train)
        ['Combined Loss', 'MAE', 'MSE']
    """
    train_x, train_y, val_x, val_y = _data(config)
    model = _model(config.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    loss, metrics = _objectives()
    validation_loss = _loss()
    # The epoch with the lowest validation loss (a loss: lower is better, known from the loss).
    best = tt.MetricTracker(validation_loss, "Combined Loss", first_epoch=1)
    drawing = config.progress and rank == 0
    if drawing:
        loss.running(window=_WINDOW)  # remember the last batches from here on
    rows: list[EpochRow] = []
    steps = math.ceil(len(train_x) / config.batch_size)
    widths: list[int] = []
    for epoch in range(1, config.epochs + 1):
        for objective in (loss, validation_loss, *metrics):
            objective.reset()
        model.train()
        started = time.perf_counter()
        for step in range(steps):
            batch = slice(step * config.batch_size, (step + 1) * config.batch_size)
            inputs, targets = train_x[batch], train_y[batch]
            part = _shard(len(inputs), rank, world)
            optimizer.zero_grad()
            value = loss(model(inputs[part]), targets[part])
            torch.autograd.backward(value * (len(inputs[part]) / len(inputs)))
            if world > 1:
                for parameter in model.parameters():
                    assert parameter.grad is not None
                    torch.distributed.all_reduce(parameter.grad)
            optimizer.step()
            if drawing:
                # The mean over the last batches, read on the host only to draw it.
                running = float(loss.running(window=_WINDOW)["Combined Loss"])
                _progress(epoch, step + 1, steps, time.perf_counter() - started, running)
        model.eval()
        with torch.no_grad():
            part = _shard(len(val_x), rank, world)
            outputs = model(val_x[part])
            validation_loss.update(outputs, val_y[part])
            for metric in metrics:
                metric.update(outputs, val_y[part])
        tt.sync_all(loss, validation_loss, *metrics)
        best.update()  # after the sync: every process records the same value
        validation = {_VALIDATION_LOSS: best.history[-1]}
        for metric in metrics:
            validation.update(tt.compute_metrics(metric))
        rows.append(EpochRow(epoch, tt.compute_metrics(loss), validation, best.best_epoch))
        if drawing:
            sys.stderr.write("\r\033[K")
        if out is not None and rank == 0:
            if epoch == 1:
                widths = _print_header(loss, validation_loss, metrics, out)
            _print_row(rows[-1], widths, out)
    if out is not None and rank == 0 and rows:
        out.write(
            f"\nbest epoch by validation loss: {best.best_epoch} "
            f"(validation loss {best.best_value:.5f})\n"
        )
    return rows


def _progress(epoch: int, step: int, steps: int, elapsed: float, running: float) -> None:
    width = 30
    filled = width * step // steps
    bar = "#" * filled + "." * (width - filled)
    sys.stderr.write(
        f"\repoch {epoch} [{bar}] {step}/{steps} {elapsed:5.2f}s "
        f"loss {running:.4f} (last {min(step, _WINDOW)} batches)"
    )
    sys.stderr.flush()


# -- printing -------------------------------------------------------------------------------


def _arrow(direction: bool | None) -> str:
    return {True: " ↑", False: " ↓", None: ""}[direction]


_COLUMN = 13


def _print_header(
    loss: LossBase[Tensor, Tensor],
    validation_loss: LossBase[Tensor, Tensor],
    metrics: list[Any],
    out: TextIO,
) -> list[int]:
    """Print the formula and the column names; return the column widths."""
    out.write(f"loss formula: {loss.formula}\n")
    out.write("columns: training loss and components, validation loss and metrics, best epoch\n")
    out.write("arrows: ↓ lower is better, ↑ higher is better\n\n")
    names = ["epoch"]
    for name in loss.compute():
        names.append(f"{name}{_arrow(_direction(loss, name))}")
    names.append(f"{_VALIDATION_LOSS}{_arrow(_direction(validation_loss, 'Combined Loss'))}")
    for metric in metrics:
        for name in tt.compute_metrics(metric):
            names.append(f"{name}{_arrow(_direction(metric, name))}")
    names.append("best epoch")
    widths = [len(names[0])] + [max(_COLUMN, len(name)) for name in names[1:-1]]
    widths.append(len(names[-1]))
    out.write(" | ".join(name.rjust(width) for name, width in zip(names, widths, strict=True)))
    out.write("\n" + "-+-".join("-" * width for width in widths) + "\n")
    return widths


def _print_row(row: EpochRow, widths: list[int], out: TextIO) -> None:
    values = [*row.train.values(), *row.validation.values()]
    cells = [f"{row.epoch:{widths[0]}d}"]
    cells += [f"{value:{width}.5f}" for value, width in zip(values, widths[1:-1], strict=True)]
    cells.append(f"{row.best_epoch:{widths[-1]}d}")
    out.write(" | ".join(cells) + "\n")
    out.flush()

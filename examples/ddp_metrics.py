"""Epoch metrics under DistributedDataParallel, synced with one ``tt.sync_all`` call.

Run on a CPU machine with two gloo processes::

    torchrun --nproc-per-node 2 examples/ddp_metrics.py

or alone (world size 1: the sync is a no-op)::

    python examples/ddp_metrics.py

A tiny regression model is trained for a few epochs on synthetic data. Every
rank sees its own shard of the training and validation data; the shards are
uneven (97 and 61 samples do not split evenly into 2 ranks of batches of 16),
and no sample is repeated. After each epoch every rank calls ``tt.sync_all``
on the training loss and the validation metrics; then rank 0 prints the
synced values next to the same metrics computed with plain torch on the whole
validation set in one process, and checks that they agree.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.algorithms.join import Join
from torch.nn import functional
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler, TensorDataset

import torchtally as tt
from torchtally.distributed import end_distributed_run

TRAIN_SAMPLES = 97
VALIDATION_SAMPLES = 61
BATCH = 16
EPOCHS = 2
FEATURES = 8


class ShardSampler(Sampler[int]):
    """This rank's share of the samples: every sample on exactly one rank.

    ``DistributedSampler`` pads the shards to equal length by repeating
    samples (or drops the tail with ``drop_last=True``); either way a metric
    synced over the ranks would not be the full-data one. Here shards differ
    by at most one sample and nothing is repeated or dropped.
    """

    def __init__(self, size: int, rank: int, world: int, shuffle: bool, seed: int = 0) -> None:
        self.size, self.rank, self.world = size, rank, world
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:  # the same permutation on every rank: a seed per epoch
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.size, generator=generator)
        else:
            order = torch.arange(self.size)
        return iter(order[self.rank :: self.world].tolist())

    def __len__(self) -> int:
        return len(range(self.rank, self.size, self.world))


def absolute_error(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).abs().flatten(1).mean(1)  # per sample: exact weighting


def worst_error(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).abs().flatten(1).amax(1)


class MedianError(tt.Objective[Tensor, Tensor]):
    """Median absolute error: needs every value, so it keeps them (a 'cat' aggregation)."""

    aggregation = "cat"

    def calculate(self, outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
        return {"Median error": absolute_error(outputs, targets)}

    def finalize(self, values: dict[str, Tensor]) -> dict[str, Tensor]:
        return {name: kept.median() for name, kept in values.items()}


def synthetic_data(samples: int, seed: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(samples, FEATURES, generator=generator)
    weights = torch.linspace(-1.0, 1.0, FEATURES).unsqueeze(1)
    noise = 0.1 * torch.randn(samples, 1, generator=generator)
    return TensorDataset(inputs, torch.tanh(inputs @ weights) + noise)


def full_data_metrics(model: nn.Module, data: TensorDataset) -> dict[str, float]:
    """The validation metrics over the whole set, in one process, with plain torch."""
    inputs, targets = data.tensors
    with torch.no_grad():
        errors = (model(inputs) - targets).abs().flatten()
    return {
        "MSE": errors.double().pow(2).mean().item(),
        "MAE": errors.double().mean().item(),
        "Max error": errors.max().item(),
        "Median error": errors.median().item(),
    }


def main() -> None:
    distributed_run = "RANK" in os.environ  # set by torchrun
    if distributed_run:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if distributed_run else 0
    world = dist.get_world_size() if distributed_run else 1

    torch.manual_seed(0)  # DDP also broadcasts rank 0's parameters
    model = nn.Sequential(nn.Linear(FEATURES, 16), nn.Tanh(), nn.Linear(16, 1))
    trained: nn.Module = DistributedDataParallel(model) if distributed_run else model
    optimizer = torch.optim.SGD(trained.parameters(), lr=0.1)

    train_data = synthetic_data(TRAIN_SAMPLES, seed=1)
    validation_data = synthetic_data(VALIDATION_SAMPLES, seed=2)
    train_sampler = ShardSampler(TRAIN_SAMPLES, rank, world, shuffle=True)
    validation_sampler = ShardSampler(VALIDATION_SAMPLES, rank, world, shuffle=False)
    train_loader = DataLoader(train_data, batch_size=BATCH, sampler=train_sampler)
    validation_loader = DataLoader(validation_data, batch_size=BATCH, sampler=validation_sampler)

    loss = tt.Loss(functional.mse_loss, "MSE") + 0.5 * tt.Loss(absolute_error, "MAE")
    metrics = tt.MetricCollection(MSE=functional.mse_loss, MAE=absolute_error)
    worst = tt.Metric(worst_error, "Max error", aggregation="max")
    median = MedianError()
    validation = [metrics, worst, median]

    if rank == 0:
        shards = [len(range(r, TRAIN_SAMPLES, world)) for r in range(world)]
        print(f"world size {world}: training shards {shards}, batches of {BATCH}")

    for epoch in range(1, EPOCHS + 1):
        train_sampler.set_epoch(epoch)
        loss.reset()
        trained.train()
        # Shards of different lengths give ranks different numbers of steps: Join lets DDP
        # finish the epoch on the ranks that still have batches.
        joined = Join([trained]) if distributed_run else contextlib.nullcontext()
        with joined:
            for inputs, targets in train_loader:
                optimizer.zero_grad()
                value = loss(trained(inputs), targets)  # updates the loss's running state
                value.backward()
                optimizer.step()

        for objective in validation:
            objective.reset()
        trained.eval()
        with torch.no_grad():
            for inputs, targets in validation_loader:
                outputs = model(inputs)
                for objective in validation:
                    objective.update(outputs, targets)

        # Every rank, once per epoch, before compute(): two collectives for everything.
        tt.sync_all(loss, *validation)
        synced = {
            name: value.item()
            for objective in validation
            for name, value in objective.compute().items()
        }
        if rank != 0:
            continue
        train_values = ", ".join(f"{k} {v:.4f}" for k, v in tt.compute_metrics(loss).items())
        print(f"epoch {epoch}: training loss {loss.formula} (synced): {train_values}")
        reference = full_data_metrics(model, validation_data)
        print(f"  {'validation':<14}{'synced over ranks':>20}{'full data, one process':>26}")
        for name, value in synced.items():
            print(f"  {name:<14}{value:>20.7f}{reference[name]:>26.7f}")
        worst_gap = max(abs(synced[name] - reference[name]) for name in reference)
        close = all(
            math.isclose(synced[name], reference[name], rel_tol=1e-5, abs_tol=1e-6)
            for name in reference
        )
        verdict = "agree" if close else "DIFFER"
        print(f"epoch {epoch}: synced metrics {verdict} with the full data (gap {worst_gap:.1e})")
        assert close, (synced, reference)

    # Every rank's last statement, instead of dist.destroy_process_group(): it destroys the
    # group and ends the process without the interpreter shutdown, which can abort a gloo
    # run after correct output (the DDP module keeps the group's threads alive until then).
    # Alone (no process group) it does nothing.
    end_distributed_run()


if __name__ == "__main__":
    main()

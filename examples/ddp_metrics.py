"""Epoch metrics under DistributedDataParallel, synced with one ``tt.sync_all`` call.

Run on a CPU machine with two gloo processes::

    torchrun --nproc-per-node 2 examples/ddp_metrics.py

or alone (world size 1: the sync is a no-op)::

    python examples/ddp_metrics.py

A tiny regression model is trained for a few epochs on synthetic data, each
rank reading its shard through PyTorch's own ``DistributedSampler``. The
sampler evens out the shards by repeating samples: 61 validation samples over
2 ranks give each rank 31, and rank 1's last one repeats sample 0. After each
epoch every rank calls ``tt.sync_all`` on the validation metrics with
``dataset_size=61``, which drops that repeat, then on the training loss (whose
value is over what was trained on, repeats included). Rank 0 prints the synced
validation values next to the same metrics computed with plain torch on the
whole validation set in one process, and checks that they agree.
"""

from __future__ import annotations

import math
import os

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn import functional
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import torchtally as tt
from torchtally.distributed import end_distributed_run

TRAIN_SAMPLES = 97
VALIDATION_SAMPLES = 61
BATCH = 16
EPOCHS = 2
FEATURES = 8


def absolute_error(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).abs().flatten(1).mean(1)  # per sample: exact weighting


def squared_error(outputs: Tensor, targets: Tensor) -> Tensor:
    # Per sample, not functional.mse_loss's batch mean: a repeated sample can then be dropped.
    return (outputs - targets).pow(2).flatten(1).mean(1)


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
    # PyTorch's sampler, as it comes (drop_last=False): equal shards, a few samples repeated.
    train_sampler = DistributedSampler(train_data, num_replicas=world, rank=rank, shuffle=True)
    validation_sampler = DistributedSampler(
        validation_data, num_replicas=world, rank=rank, shuffle=False
    )
    train_loader = DataLoader(train_data, batch_size=BATCH, sampler=train_sampler)
    validation_loader = DataLoader(validation_data, batch_size=BATCH, sampler=validation_sampler)

    loss = tt.Loss(functional.mse_loss, "MSE") + 0.5 * tt.Loss(absolute_error, "MAE")
    metrics = tt.MetricCollection(MSE=squared_error, MAE=absolute_error)
    worst = tt.Metric(worst_error, "Max error", aggregation="max")
    median = MedianError()
    validation = [metrics, worst, median]

    if rank == 0:
        print(
            f"world size {world}: {len(validation_sampler)} validation samples per rank for "
            f"{VALIDATION_SAMPLES} in all, batches of {BATCH}"
        )

    for epoch in range(1, EPOCHS + 1):
        train_sampler.set_epoch(epoch)
        loss.reset()
        trained.train()
        for inputs, targets in train_loader:  # equal shards: every rank takes the same steps
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

        # Every rank, once per epoch, before compute(). dataset_size drops the samples the
        # sampler repeated; the training loss is over what was trained on, repeats included.
        tt.sync_all(*validation, dataset_size=len(validation_data))
        tt.sync_all(loss)
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

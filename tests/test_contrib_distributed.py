"""The adapters across real processes: 2 ranks, gloo on 127.0.0.1, uneven shards.

Every scenario runs in two forked processes; each rank checks that after ``sync()`` its
``compute()`` equals the metric computed on the concatenation of every rank's data
(computed independently, in the same process), twice in a row, and again after further
updates. A hang fails: the process group has a timeout, each test has one, and the
parent kills a process that does not finish.
"""

from __future__ import annotations

import os
import socket
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torchmetrics
from torch import Tensor
from torcheval import metrics as eval_metrics
from torchmetrics.classification import (
    BinaryAUROC,
    BinaryF1Score,
    BinaryPrecision,
    BinaryRecall,
    MulticlassAccuracy,
)

import torchtally as tt
from torchtally import distributed, errors
from torchtally.contrib.torcheval import from_torcheval
from torchtally.contrib.torchmetrics import from_torchmetrics

pytestmark = pytest.mark.timeout(120)

WORLD = 2
Scenario = Callable[[int], None]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _worker(rank: int, port: int, scenario: Scenario, results: Any) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    try:
        dist.init_process_group(
            "gloo",
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=WORLD,
            timeout=timedelta(seconds=60),
        )
        scenario(rank)
        results.put((rank, None))
    except BaseException:
        results.put((rank, traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run(scenario: Scenario, timeout: float = 90.0) -> None:
    context = mp.get_context("fork")
    results = context.Queue()
    port = _free_port()
    processes = [
        context.Process(target=_worker, args=(rank, port, scenario, results))
        for rank in range(WORLD)
    ]
    for process in processes:
        process.start()
    failures: dict[int, str] = {}
    try:
        for _ in processes:
            rank, failure = results.get(timeout=timeout)
            if failure is not None:
                failures[rank] = failure
    finally:
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()
    assert not failures, "\n".join(
        f"rank {rank}:\n{text}" for rank, text in sorted(failures.items())
    )


# -- data: one global dataset, split unevenly ------------------------------------------------------

FIRST = {0: [5, 3], 1: [2]}  # uneven shards
LATER = {0: [4], 1: [1, 6]}  # further updates after the first syncs


def batches(
    sizes: dict[int, list[int]], seed: int, classes: int | None = None
) -> dict[int, list[tuple[Tensor, Tensor]]]:
    """The same data on every rank: ``result[rank]`` is that rank's shard."""
    generator = torch.Generator().manual_seed(seed)
    shards: dict[int, list[tuple[Tensor, Tensor]]] = {}
    for rank, rank_sizes in sizes.items():
        shards[rank] = []
        for n in rank_sizes:
            if classes is None:
                outputs = torch.rand(n, generator=generator)
                targets = torch.randint(0, 2, (n,), generator=generator)
            else:
                outputs = torch.randn(n, classes, generator=generator)
                targets = torch.randint(0, classes, (n,), generator=generator)
            shards[rank].append((outputs, targets))
    return shards


def everything(*shard_sets: dict[int, list[Any]]) -> list[Any]:
    return [batch for shards in shard_sets for rank in sorted(shards) for batch in shards[rank]]


def assert_values(found: dict[str, Tensor], expected: dict[str, Tensor], what: str) -> None:
    assert list(found) == list(expected), (what, list(found), list(expected))
    for name, value in expected.items():
        assert torch.allclose(found[name].double(), value.double(), atol=1e-6), (
            what,
            name,
            found[name],
            value,
        )


# -- torchmetrics ----------------------------------------------------------------------------------


class HundredTimesAccuracy(MulticlassAccuracy):
    """CCO example #2."""

    def update(self, model_output: Tensor, target: Tensor) -> None:
        super().update(model_output, target)

    def compute(self) -> Tensor:
        return super().compute() * 100


TM_FACTORIES: dict[str, tuple[Callable[[], Any], int | None]] = {
    "repeated leaves": (
        lambda: torchmetrics.MeanSquaredError() + 2 * torchmetrics.MeanSquaredError(squared=False),
        None,
    ),
    "auroc": (lambda: BinaryAUROC(), None),
    "collection": (
        lambda: torchmetrics.MetricCollection([BinaryPrecision(), BinaryRecall(), BinaryF1Score()]),
        None,
    ),
    "cco #2": (lambda: HundredTimesAccuracy(num_classes=3), 3),
}


def tm_reference(factory: Callable[[], Any], data: list[Any]) -> dict[str, Tensor]:
    adapter = from_torchmetrics(factory())
    for batch in data:
        adapter.update(*batch)
    return adapter.compute()


def scenario_torchmetrics(rank: int) -> None:
    for index, (what, (factory, classes)) in enumerate(TM_FACTORIES.items()):
        first, later = (
            batches(FIRST, seed=index, classes=classes),
            batches(LATER, seed=50 + index, classes=classes),
        )
        adapter = tt.wrap(factory())
        for batch in first[rank]:
            adapter.update(*batch)
        assert_values(adapter.compute(), tm_reference(factory, first[rank]), f"{what}: local")
        adapter.sync()
        assert_values(
            adapter.compute(), tm_reference(factory, everything(first)), f"{what}: synced"
        )
        adapter.sync()
        assert_values(
            adapter.compute(), tm_reference(factory, everything(first)), f"{what}: synced twice"
        )
        for batch in later[rank]:
            adapter.update(*batch)
        adapter.sync()
        assert_values(
            adapter.compute(), tm_reference(factory, everything(first, later)), f"{what}: later"
        )


def test_from_torchmetrics_gives_the_global_value_on_every_rank() -> None:
    run(scenario_torchmetrics)


# -- torcheval -------------------------------------------------------------------------------------

TE_FACTORIES: dict[str, Callable[[], Any]] = {
    "mse": lambda: eval_metrics.MeanSquaredError(),
    "auroc": lambda: eval_metrics.BinaryAUROC(),
    "dict": lambda: {
        "MSE": eval_metrics.MeanSquaredError(),
        "Accuracy": eval_metrics.BinaryAccuracy(),
    },
}


def te_reference(factory: Callable[[], Any], data: list[Any]) -> dict[str, Tensor]:
    adapter = from_torcheval(factory())
    for batch in data:
        adapter.update(*batch)
    return adapter.compute()


def scenario_torcheval(rank: int) -> None:
    for index, (what, factory) in enumerate(TE_FACTORIES.items()):
        first, later = batches(FIRST, seed=index), batches(LATER, seed=50 + index)
        adapter = from_torcheval(factory())
        for batch in first[rank]:
            adapter.update(*batch)
        assert_values(adapter.compute(), te_reference(factory, first[rank]), f"{what}: local")
        adapter.sync()
        assert_values(
            adapter.compute(), te_reference(factory, everything(first)), f"{what}: synced"
        )
        adapter.sync()
        assert_values(
            adapter.compute(), te_reference(factory, everything(first)), f"{what}: synced twice"
        )
        for batch in later[rank]:
            adapter.update(*batch)
        adapter.sync()
        assert_values(
            adapter.compute(), te_reference(factory, everything(first, later)), f"{what}: later"
        )


def test_from_torcheval_gives_the_global_value_on_every_rank() -> None:
    run(scenario_torcheval)


# -- everything in one exchange --------------------------------------------------------------------


def mae(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).abs()


def scenario_sync_all(rank: int) -> None:
    first = batches(FIRST, seed=7)
    native = tt.Metric(mae, "MAE")
    wrapped = tt.wrap(lambda o, t: (torch.nn.functional.mse_loss(o, t.float()), o.mean()), "pair")
    tm = from_torchmetrics(torchmetrics.MeanSquaredError() + BinaryAUROC())
    te = from_torcheval(
        {"AUROC": eval_metrics.BinaryAUROC(), "MSE": eval_metrics.MeanSquaredError()}
    )
    # updated on rank 0 only: the other rank takes part with no data at all
    tm_rank0 = from_torchmetrics(BinaryAUROC(), "AUROC")
    te_rank0 = from_torcheval(eval_metrics.BinaryAUROC(), "AUROC")
    objectives = (native, wrapped, tm, te, tm_rank0, te_rank0)
    for batch in first[rank]:
        for objective in objectives[:4]:
            objective.update(*batch)
        if rank == 0:
            tm_rank0.update(*batch)
            te_rank0.update(*batch)

    before = distributed.collective_count()
    tt.sync_all(*objectives)
    assert distributed.collective_count() - before == 2

    data = everything(first)
    outputs, targets = torch.cat([o for o, _ in data]), torch.cat([t for _, t in data])
    reference_native, reference_wrapped = tt.Metric(mae, "MAE"), tt.wrap(wrapped.wrapped, "pair")
    for batch in data:
        reference_native.update(*batch)
        reference_wrapped.update(*batch)
    assert_values(native.compute(), {"MAE": (outputs - targets).abs().double().mean()}, "native")
    assert_values(wrapped.compute(), reference_wrapped.compute(), "wrapped function")
    assert_values(
        tm.compute(),
        tm_reference(lambda: torchmetrics.MeanSquaredError() + BinaryAUROC(), data),
        "torchmetrics",
    )
    expected_te = {
        "AUROC": eval_metrics.BinaryAUROC().update(outputs, targets).compute(),
        "MSE": eval_metrics.MeanSquaredError().update(outputs, targets).compute(),
    }
    assert_values(te.compute(), expected_te, "torcheval")
    rank0_outputs, rank0_targets = (
        torch.cat([o for o, _ in first[0]]),
        torch.cat([t for _, t in first[0]]),
    )
    rank0_auroc = BinaryAUROC()(rank0_outputs, rank0_targets)
    assert_values(tm_rank0.compute(), {"AUROC": rank0_auroc}, "torchmetrics, data on rank 0 only")
    assert_values(te_rank0.compute(), {"AUROC": rank0_auroc}, "torcheval, data on rank 0 only")

    # again: same values, still two collectives
    before = distributed.collective_count()
    tt.sync_all(*objectives)
    assert distributed.collective_count() - before == 2
    assert_values(te.compute(), expected_te, "torcheval twice")


def test_sync_all_moves_native_and_both_adapters_in_two_collectives() -> None:
    run(scenario_sync_all)


# -- errors never hang -----------------------------------------------------------------------------


class BatchMeans:
    """CCO example #3: its state is a Python list torchtally cannot reach."""

    def __init__(self) -> None:
        self.avgs: list[float] = []

    def update(self, outputs: Tensor, targets: Tensor) -> None:
        self.avgs.append(float((outputs.round() == targets).float().mean()))

    def compute(self) -> float:
        return sum(self.avgs) / len(self.avgs)

    def reset(self) -> None:
        self.avgs = []


def scenario_errors(rank: int) -> None:
    mismatched = from_torchmetrics(
        torchmetrics.MeanSquaredError() if rank == 0 else torchmetrics.MeanAbsoluteError()
    )
    with pytest.raises(
        errors.SyncError, match=r"rank 0.*MeanSquaredError.*rank 1.*MeanAbsoluteError"
    ):
        mismatched.sync()
    te_mismatched = from_torcheval(
        eval_metrics.MeanSquaredError() if rank == 0 else eval_metrics.BinaryAUROC()
    )
    with pytest.raises(errors.SyncError, match=r"rank 0.*MeanSquaredError.*rank 1.*BinaryAUROC"):
        te_mismatched.sync()
    stateful = tt.wrap(BatchMeans())
    stateful.update(torch.ones(2), torch.ones(2))
    with pytest.raises(errors.SyncError, match="cannot combine"):
        stateful.sync()
    native = tt.Metric(mae, "MAE")
    native.update(torch.full((rank + 1,), float(rank)), torch.zeros(rank + 1))
    with pytest.raises(errors.SyncError, match="cannot combine"):
        tt.sync_all(native, stateful)
    assert native.compute() == {"MAE": torch.tensor(float(rank))}  # nothing installed
    # the processes are still in step: a good sync works afterwards
    tt.sync_all(native)
    assert torch.allclose(native.compute()["MAE"], torch.tensor(2 / 3))


def test_errors_are_raised_on_every_rank_without_hanging() -> None:
    run(scenario_errors)

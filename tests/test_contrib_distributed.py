"""The adapters across real processes: 2 ranks, gloo on 127.0.0.1, uneven shards.

One launch (``tests/_dist.py``) runs every scenario below on both ranks and returns what
each rank computed; the tests check those records in the parent against the metric
computed on the concatenation of every rank's data (computed independently, here): after
``sync()``, twice in a row, and again after further updates. Errors are caught in the
children and their class and message checked here. A hang fails: the process group has a
timeout, the launch a deadline and each test a pytest timeout.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
import torch
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

import _dist  # tests/_dist.py, importable through tests/conftest.py
import torchtally as tt
from torchtally import distributed, errors
from torchtally.contrib.torcheval import from_torcheval
from torchtally.contrib.torchmetrics import from_torchmetrics

WORLD = 2
LAUNCH_TIMEOUT = 90.0
pytestmark = pytest.mark.timeout(LAUNCH_TIMEOUT + 30)
Record = dict[str, Any]

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


def snapshot(objective: Any) -> dict[str, Tensor]:
    return {name: value.clone() for name, value in objective.compute().items()}


# -- the adapters, stage by stage: local, synced, synced twice, synced after further updates ------


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

TE_FACTORIES: dict[str, tuple[Callable[[], Any], int | None]] = {
    "mse": (lambda: eval_metrics.MeanSquaredError(), None),
    "auroc": (lambda: eval_metrics.BinaryAUROC(), None),
    "dict": (
        lambda: {
            "MSE": eval_metrics.MeanSquaredError(),
            "Accuracy": eval_metrics.BinaryAccuracy(),
        },
        None,
    ),
}

# library: (its factories, how a rank wraps one, how the reference wraps one)
ADAPTERS: dict[str, tuple[dict[str, tuple[Callable[[], Any], int | None]], Any, Any]] = {
    "torchmetrics": (TM_FACTORIES, tt.wrap, from_torchmetrics),
    "torcheval": (TE_FACTORIES, from_torcheval, from_torcheval),
}


def stage_data(
    index: int, classes: int | None
) -> tuple[dict[int, list[Any]], dict[int, list[Any]]]:
    first = batches(FIRST, seed=index, classes=classes)
    return first, batches(LATER, seed=50 + index, classes=classes)


def run_stages(library: str, rank: int) -> dict[str, dict[str, dict[str, Tensor]]]:
    factories, wrap, _ = ADAPTERS[library]
    found: dict[str, dict[str, dict[str, Tensor]]] = {}
    for index, (what, (factory, classes)) in enumerate(factories.items()):
        first, later = stage_data(index, classes)
        adapter = wrap(factory())
        for batch in first[rank]:
            adapter.update(*batch)
        stages = found[what] = {"local": snapshot(adapter)}
        adapter.sync()
        stages["synced"] = snapshot(adapter)
        adapter.sync()
        stages["synced twice"] = snapshot(adapter)
        for batch in later[rank]:
            adapter.update(*batch)
        adapter.sync()
        stages["later"] = snapshot(adapter)
    return found


def reference(wrap: Any, factory: Callable[[], Any], data: list[Any]) -> dict[str, Tensor]:
    adapter = wrap(factory())
    for batch in data:
        adapter.update(*batch)
    return adapter.compute()  # type: ignore[no-any-return]


def check_stages(records: list[Record], library: str) -> None:
    factories, _, wrap = ADAPTERS[library]
    for index, (what, (factory, classes)) in enumerate(factories.items()):
        first, later = stage_data(index, classes)
        synced = reference(wrap, factory, everything(first))
        for rank, record in enumerate(records):
            found = record[library][what]
            local = reference(wrap, factory, first[rank])
            assert_values(found["local"], local, f"{what}: local, rank {rank}")
            assert_values(found["synced"], synced, f"{what}: synced, rank {rank}")
            assert_values(found["synced twice"], synced, f"{what}: synced twice, rank {rank}")
            expected = reference(wrap, factory, everything(first, later))
            assert_values(found["later"], expected, f"{what}: later, rank {rank}")


# -- everything in one exchange --------------------------------------------------------------------


def mae(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).abs()


def pair(outputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    return torch.nn.functional.mse_loss(outputs, targets.float()), outputs.mean()


def counted_sync_all(*objectives: Any) -> tuple[int, int]:
    """``sync_all``; the collectives torchtally counted and those torch.distributed saw."""
    before = distributed.collective_count(), _dist.real_collectives()
    tt.sync_all(*objectives)
    return distributed.collective_count() - before[0], _dist.real_collectives() - before[1]


def run_sync_all(rank: int) -> Record:
    first = batches(FIRST, seed=7)
    native = tt.Metric(mae, "MAE")
    wrapped = tt.wrap(pair, "pair")
    tm = from_torchmetrics(torchmetrics.MeanSquaredError() + BinaryAUROC())
    te = from_torcheval(
        {"AUROC": eval_metrics.BinaryAUROC(), "MSE": eval_metrics.MeanSquaredError()}
    )
    # updated on rank 0 only: the other rank takes part with no data at all
    tm_rank0 = from_torchmetrics(BinaryAUROC(), "AUROC")
    te_rank0 = from_torcheval(eval_metrics.BinaryAUROC(), "AUROC")
    named = {
        "native": native,
        "wrapped": wrapped,
        "tm": tm,
        "te": te,
        "tm_rank0": tm_rank0,
        "te_rank0": te_rank0,
    }
    objectives = tuple(named.values())
    for batch in first[rank]:
        for objective in objectives[:4]:
            objective.update(*batch)
        if rank == 0:
            tm_rank0.update(*batch)
            te_rank0.update(*batch)
    record: Record = {"calls": counted_sync_all(*objectives)}
    for name, objective in named.items():
        record[name] = snapshot(objective)
    # again: same values, still three collectives
    record["calls twice"] = counted_sync_all(*objectives)
    record["te twice"] = snapshot(te)
    # states that add up (torchmetrics' sum reductions) travel with the native means
    sums = from_torchmetrics(torchmetrics.MeanSquaredError() + torchmetrics.MeanAbsoluteError())
    for batch in first[rank]:
        sums.update(*batch)
    record["sums calls"] = counted_sync_all(native, sums)
    record["sums"] = snapshot(sums)
    return record


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


def raised(action: Callable[[], object]) -> tuple[type[BaseException], str] | None:
    """The class and message of what ``action`` raised, for the parent to check."""
    try:
        action()
    except Exception as error:
        return type(error), str(error)
    return None


def run_errors(rank: int) -> Record:
    mismatched = from_torchmetrics(
        torchmetrics.MeanSquaredError() if rank == 0 else torchmetrics.MeanAbsoluteError()
    )
    te_mismatched = from_torcheval(
        eval_metrics.MeanSquaredError() if rank == 0 else eval_metrics.BinaryAUROC()
    )
    record: Record = {
        "tm mismatch": raised(mismatched.sync),
        "te mismatch": raised(te_mismatched.sync),
    }
    stateful = tt.wrap(BatchMeans())
    stateful.update(torch.ones(2), torch.ones(2))
    record["stateful"] = raised(stateful.sync)
    native = tt.Metric(mae, "MAE")
    native.update(torch.full((rank + 1,), float(rank)), torch.zeros(rank + 1))
    record["sync_all stateful"] = raised(lambda: tt.sync_all(native, stateful))
    record["after failure"] = snapshot(native)
    # the processes are still in step: a good sync works afterwards
    tt.sync_all(native)
    record["after good sync"] = snapshot(native)
    # a join out of step on rank 0 alone (a later part refused a batch the first took):
    # every rank raises, none hangs, and after a reset the join syncs again
    joined = from_torchmetrics(torchmetrics.MeanAbsoluteError()) | from_torchmetrics(
        torchmetrics.classification.BinaryAccuracy()
    )
    joined.update(torch.tensor([0.2, 0.8]), torch.tensor([0, 1]))
    if rank == 0:
        record["out of step update"] = raised(
            lambda: joined.update(torch.tensor([0.2, 0.8]), torch.tensor([0, 5]))
        )
    record["out of step"] = raised(lambda: tt.sync_all(joined))
    joined.reset()
    joined.update(torch.tensor([0.2, 0.8]), torch.tensor([0.0, float(rank)]))
    tt.sync_all(joined)
    record["back in step"] = snapshot(joined)
    return record


def assert_raised(found: tuple[type[BaseException], str] | None, pattern: str, what: str) -> None:
    assert found is not None, f"{what}: nothing raised"
    kind, message = found
    assert issubclass(kind, errors.SyncError), (what, kind, message)
    assert re.search(pattern, message), (what, pattern, message)


# -- the children: every scenario on every rank, one launch ----------------------------------------


def scenario(rank: int, world: int) -> Record:
    assert world == WORLD
    return {
        "torchmetrics": run_stages("torchmetrics", rank),
        "torcheval": run_stages("torcheval", rank),
        "sync_all": run_sync_all(rank),
        "errors": run_errors(rank),
    }


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> list[Record]:
    out = tmp_path_factory.mktemp("contrib")
    return _dist.launch(WORLD, "test_contrib_distributed:scenario", out, LAUNCH_TIMEOUT)


# -- the parent: check the records -----------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:No positive samples:UserWarning")  # a local shard
def test_from_torchmetrics_gives_the_global_value_on_every_rank(records: list[Record]) -> None:
    check_stages(records, "torchmetrics")


def test_from_torcheval_gives_the_global_value_on_every_rank(records: list[Record]) -> None:
    check_stages(records, "torcheval")


def test_sync_all_moves_native_and_both_adapters_in_three_collectives(
    records: list[Record],
) -> None:
    first = batches(FIRST, seed=7)
    data = everything(first)
    outputs, targets = torch.cat([o for o, _ in data]), torch.cat([t for _, t in data])
    reference_wrapped = tt.wrap(pair, "pair")
    for batch in data:
        reference_wrapped.update(*batch)
    expected_tm = reference(
        from_torchmetrics, lambda: torchmetrics.MeanSquaredError() + BinaryAUROC(), data
    )
    expected_te = {
        "AUROC": eval_metrics.BinaryAUROC().update(outputs, targets).compute(),
        "MSE": eval_metrics.MeanSquaredError().update(outputs, targets).compute(),
    }
    rank0_outputs, rank0_targets = (
        torch.cat([o for o, _ in first[0]]),
        torch.cat([t for _, t in first[0]]),
    )
    rank0_auroc = BinaryAUROC()(rank0_outputs, rank0_targets)
    for rank, all_records in enumerate(records):
        record = all_records["sync_all"]
        assert record["calls"] == (3, 3), (rank, record["calls"])  # headers, sums, states
        expected_native = {"MAE": (outputs - targets).abs().double().mean()}
        assert_values(record["native"], expected_native, "native")
        assert_values(record["wrapped"], reference_wrapped.compute(), "wrapped function")
        assert_values(record["tm"], expected_tm, "torchmetrics")
        assert_values(record["te"], expected_te, "torcheval")
        only0 = {"AUROC": rank0_auroc}
        assert_values(record["tm_rank0"], only0, "torchmetrics, data on rank 0 only")
        assert_values(record["te_rank0"], only0, "torcheval, data on rank 0 only")
        assert record["calls twice"] == (3, 3), (rank, record["calls twice"])
        assert_values(record["te twice"], expected_te, "torcheval twice")
        assert record["sums calls"] == (2, 2), (rank, record["sums calls"])  # headers, sums
        expected_sums = reference(
            from_torchmetrics,
            lambda: torchmetrics.MeanSquaredError() + torchmetrics.MeanAbsoluteError(),
            data,
        )
        assert_values(record["sums"], expected_sums, "torchmetrics sum states")


def test_errors_are_raised_on_every_rank_without_hanging(records: list[Record]) -> None:
    for rank, all_records in enumerate(records):
        record = all_records["errors"]
        assert_raised(
            record["tm mismatch"], r"rank 0.*MeanSquaredError.*rank 1.*MeanAbsoluteError", "tm"
        )
        assert_raised(record["te mismatch"], r"rank 0.*MeanSquaredError.*rank 1.*BinaryAUROC", "te")
        assert_raised(record["stateful"], "cannot combine", "stateful")
        assert_raised(record["sync_all stateful"], "cannot combine", "sync_all")
        assert record["after failure"] == {"MAE": torch.tensor(float(rank))}  # nothing installed
        assert torch.allclose(record["after good sync"]["MAE"], torch.tensor(2 / 3))
        out_of_step = r"could not take part.*rank 0: MetricCallError"
        assert_raised(record["out of step"], out_of_step, "step")
        if rank == 0:
            assert record["out of step update"] is not None
            assert issubclass(record["out of step update"][0], errors.MetricCallError)
        back = record["back in step"]  # |0.2 - 0| + |0.8 - 0| on rank 0, + |0.8 - 1| on rank 1
        assert torch.allclose(back["MeanAbsoluteError"], torch.tensor((0.2 + 0.8 + 0.2 + 0.2) / 4))
        assert torch.allclose(back["BinaryAccuracy"], torch.tensor(3 / 4))

"""Edges checked in one process or on simulated ranks, again on real gloo processes (2 ranks).

A join's refused ``load_state_dict`` after ``sync_all``, batch weights of 0 and
negative tensor weights seen by one rank only, and folds through the reused
float64 buffer (``aggregation._widening``). One spawned run (``scenario``)
goes through every case; the parent checks each rank's record against float64
values computed here from the concatenated data of both ranks.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torchmetrics
from torch import Tensor
from torcheval import metrics as eval_metrics

import _dist  # tests/_dist.py, importable through tests/conftest.py
import torchtally as tt
from torchtally.contrib.torcheval import from_torcheval
from torchtally.contrib.torchmetrics import from_torchmetrics

MODULE = "test_dist_edges"
WORLD = 2
TIMEOUT = 60.0
pytestmark = pytest.mark.timeout(TIMEOUT + 30)
Record = dict[str, Any]


def absolute(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).abs()


def squared(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).square()


def row_absolute(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).abs().mean(1)


def row_squared(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).square().mean(1)


def attempt(action: Callable[[], Any]) -> Any:
    """What ``action`` returned, or its exception's class name and message."""
    try:
        return action()
    except Exception as error:  # every refusal is compared in the parent
        return (type(error).__name__, str(error))


def assert_close(found: dict[str, Tensor], expected: dict[str, float], what: str) -> None:
    assert list(found) == list(expected), (what, list(found))
    for name, value in expected.items():
        assert float(found[name]) == pytest.approx(value, rel=1e-6), (what, name, found[name])


# -- a join's refused load after a real sync ----------------------------------------------------

SHARDS = {0: [[1.0, 2.0], [3.0]], 1: [[5.0, -1.0, 0.5]]}
LATER = {0: [4.0], 1: [-2.0, 1.0]}  # updated after the refused loads, before the next sync
ORDERS = (("torchmetrics", "torcheval"), ("torcheval", "torchmetrics"))
ADAPTERS: dict[str, Callable[[], Any]] = {
    "torchmetrics": lambda: from_torchmetrics(torchmetrics.MeanSquaredError(), "TM MSE"),
    "torcheval": lambda: from_torcheval(eval_metrics.MeanSquaredError(), "TE MSE"),
}
NAMES = {"torchmetrics": "TM MSE", "torcheval": "TE MSE"}


def joined(order: tuple[str, str], rank: int) -> Any:
    """``Metric | adapter | adapter``, updated with rank ``rank``'s shard."""
    join = tt.Metric(absolute, "MAE") | ADAPTERS[order[0]]() | ADAPTERS[order[1]]()
    for values in SHARDS[rank]:
        join.update(torch.tensor(values), torch.zeros(len(values)))
    return join


def damaged(state: dict[str, Any], part: int) -> dict[str, Any]:
    """A join's state whose kept part ``part`` holds the state of other metrics (refused)."""
    state = copy.deepcopy(state)
    key = "leaves" if "leaves" in state["parts"][part] else "metrics"
    state["parts"][part][key] = {"Other": {}} if key == "metrics" else []
    return state


def refused_load(join: Any, part: int) -> Any:
    """``join`` loading its own state with part ``part`` damaged: the refusal."""
    return attempt(lambda: join.load_state_dict(damaged(join.state_dict(), part)))


def refused_loads(rank: int, world: int) -> Record:
    record: Record = {}
    for order in ORDERS:
        join = joined(order, rank)
        tt.sync_all(join)
        found: Record = {"synced": join.compute()}
        # part 0 refused: only the join's own state had loaded; part 1: the first adapter too
        found["refused"] = [refused_load(join, part) for part in (0, 1)]
        found["after"] = join.compute()
        if rank == 1:  # refused on one rank only: the ranks are still at the same sync
            found["refused"].append(refused_load(join, 1))
        join.update(torch.tensor(LATER[rank]), torch.zeros(len(LATER[rank])))
        tt.sync_all(join)
        found["later"] = join.compute()

        gathered = joined(order, rank)
        tt.sync_all(gathered, destination=0)
        found["gathered_refused"] = refused_load(gathered, 1)
        found["gathered"] = attempt(gathered.compute)
        tt.sync_all(gathered)  # to every rank this time
        found["gathered_later"] = gathered.compute()
        record["/".join(order)] = found
    return record


def join_reference(shards: list[dict[int, list[list[float]]]]) -> dict[str, float]:
    values = torch.tensor(
        [v for shard in shards for rank in sorted(shard) for batch in shard[rank] for v in batch],
        dtype=torch.float64,
    )
    mse = float(values.square().mean())
    return {"MAE": float(values.abs().mean()), "TM MSE": mse, "TE MSE": mse}


def test_a_refused_load_of_a_synced_join_keeps_the_global_values_on_every_rank(
    records: list[Record],
) -> None:
    synced = join_reference([SHARDS])
    later = join_reference([SHARDS, {rank: [values] for rank, values in LATER.items()}])
    for libraries in ORDERS:
        order = "/".join(libraries)
        names = ["MAE", *(NAMES[library] for library in libraries)]
        expected = {name: synced[name] for name in names}
        for rank, record in enumerate(records):
            found = record["refused_loads"][order]
            what = f"{order}, rank {rank}"
            assert_close(found["synced"], expected, what)
            assert len(found["refused"]) == 2 + rank
            for refusal in found["refused"]:
                assert isinstance(refusal, tuple) and refusal[0] == "StateDictError", refusal
            assert_close(found["after"], expected, what + " after the refused loads")
            assert_close(found["later"], {n: later[n] for n in names}, what + " at the next sync")
            assert found["gathered_refused"][0] == "StateDictError"
            assert_close(found["gathered_later"], expected, what + " synced to every rank")
        rank_0, rank_1 = (record["refused_loads"][order]["gathered"] for record in records)
        assert_close(rank_0, expected, order + ", rank 0 gathered to")
        assert isinstance(rank_1, tuple) and rank_1[0] == "SyncError", rank_1
        assert "another rank" in rank_1[1]


# -- loss forward with weights seen by one rank only --------------------------------------------

WEIGHTS: dict[int, list[Any]] = {
    0: [1.0, 0, 2.0],  # a number is the batch's total weight
    1: [torch.tensor(0.0), 3.0, torch.tensor([1.0, 0.0, 2.0])],
}


NEGATIVE = {  # form: (the one rank that sees it, which batch, the weight)
    "(B,)": (0, 0, torch.tensor([1.0, -0.5, 1.0])),
    "0-d": (1, 1, torch.tensor(-1.0)),
}


def loss() -> Any:
    return tt.Loss(squared, "L2") + 0.5 * tt.Loss(absolute, "L1")


def loss_batches(rank: int) -> list[Tensor]:
    generator = torch.Generator().manual_seed(rank)
    return [torch.randn(3, generator=generator) for _ in WEIGHTS[rank]]


def weighted_forward(rank: int, world: int) -> Record:
    batches = loss_batches(rank)
    weighted = loss()
    for values, weight in zip(batches, WEIGHTS[rank], strict=True):
        weighted(values, torch.zeros(3), weight=weight)
    tt.sync_all(weighted)
    record: Record = {"weighted": weighted.compute()}
    for form, (where, index, negative) in NEGATIVE.items():
        objective = loss()
        for position, values in enumerate(batches):
            chosen = rank == where and position == index
            objective(values, torch.zeros(3), weight=negative if chosen else 1.0)
        tt.sync_all(objective)
        record[form] = objective.compute()
    return record


def test_weights_of_0_and_negative_weights_on_one_rank_sync_as_documented(
    records: list[Record],
) -> None:
    totals = {"Combined Loss": 0.0, "L2": 0.0, "L1": 0.0}
    weight_sum = 0.0
    for rank in range(WORLD):
        for values, weight in zip(loss_batches(rank), WEIGHTS[rank], strict=True):
            values = values.double()
            weight = torch.as_tensor(weight, dtype=torch.float64)
            per_sample = weight.expand(3) / 3 if weight.ndim == 0 else weight
            squares, absolutes = values.square(), values.abs()
            totals["Combined Loss"] += float(((squares + 0.5 * absolutes) * per_sample).sum())
            totals["L2"] += float((squares * per_sample).sum())
            totals["L1"] += float((absolutes * per_sample).sum())
            weight_sum += float(per_sample.sum())
    expected = {name: total / weight_sum for name, total in totals.items()}
    for rank, record in enumerate(records):
        found = record["weighted_forward"]
        assert_close(found["weighted"], expected, f"rank {rank}, weights of 0 excluded")
        for form in NEGATIVE:  # seen by one rank, NaN on both
            assert list(found[form]) == list(expected)
            assert all(math.isnan(float(value)) for value in found[form].values()), (rank, form)


# -- folds through the reused float64 buffer ----------------------------------------------------


def fold_batches(rank: int) -> list[tuple[Tensor, Tensor]]:
    generator = torch.Generator().manual_seed(10 + rank)
    return [
        (torch.randn(1024, 10, generator=generator), torch.randn(1024, 10, generator=generator))
        for _ in range(5 + 2 * rank)  # uneven; a fold every 2 batches, one batch left queued
    ]


SAMPLE_WEIGHTS = torch.linspace(0.0, 1.0, 1024)


def folds(rank: int, world: int) -> Record:
    from torchtally.aggregation import _widening
    from torchtally.objectives import _queue

    _queue.PENDING_ELEMENTS = 4096  # this child only: a fold every 2 batches of 1024 x 2 names
    both = tt.MetricCollection(MAE=row_absolute, MSE=row_squared)
    swapped = tt.MetricCollection(MAE=row_absolute)
    weighted = tt.MetricCollection(MAE=row_absolute)
    for outputs, targets in fold_batches(rank):  # three collections folding in turn
        both.update(outputs, targets)
        swapped.update(targets, 2 * outputs)
        weighted.update(outputs, targets, weight=SAMPLE_WEIGHTS)
    folded = getattr(_widening._kept, "buffer", None) is not None
    tt.sync_all(both, swapped, weighted)
    return {
        "folded": folded,
        "both": both.compute(),
        "swapped": swapped.compute(),
        "weighted": weighted.compute(),
    }


def test_folds_through_the_reused_buffer_sync_exactly(records: list[Record]) -> None:
    data = fold_batches(0) + fold_batches(1)
    outputs = torch.cat([o for o, _ in data]).double()
    targets = torch.cat([t for _, t in data]).double()
    weights = SAMPLE_WEIGHTS.double().repeat(len(data))
    expected = {
        "both": {
            "MAE": float(row_absolute(outputs, targets).mean()),
            "MSE": float(row_squared(outputs, targets).mean()),
        },
        "swapped": {"MAE": float(row_absolute(targets, 2 * outputs).mean())},
        "weighted": {
            "MAE": float((row_absolute(outputs, targets) * weights).sum() / weights.sum())
        },
    }
    for rank, record in enumerate(records):
        found = record["folds"]
        assert found["folded"], f"rank {rank} never folded through the buffer"
        for key, values in expected.items():
            assert_close(found[key], values, f"rank {rank}, {key}")


CASES: dict[str, Callable[[int, int], Any]] = {
    "refused_loads": refused_loads,
    "weighted_forward": weighted_forward,
    "folds": folds,
}


def scenario(rank: int, world: int) -> dict[str, Any]:
    """Every case in turn on one process group (spawning is the slow part)."""
    return {name: case(rank, world) for name, case in CASES.items()}


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> list[Record]:
    return _dist.launch(WORLD, f"{MODULE}:scenario", tmp_path_factory.mktemp("edges"), TIMEOUT)

"""Distributed loops as users write them (torchrun style, 2 gloo ranks): exact or refused.

One spawned run (``scenario``) goes through every case; the parent checks each
rank's record against float64 values computed here from the concatenated data.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch import Tensor

import _dist  # tests/_dist.py, importable through tests/conftest.py
import torchtally as tt

MODULE = "test_dist_loops"
WORLD = 2
TIMEOUT = 60.0
pytestmark = pytest.mark.timeout(TIMEOUT + 30)


def absolute(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).abs().flatten(1).mean(1)


def squared(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).pow(2).flatten(1).mean(1)


def shard(rank: int) -> list[tuple[Tensor, Tensor]]:
    """Rank ``rank``'s batches of one epoch (uneven sizes)."""
    generator = torch.Generator().manual_seed(7 + rank)
    sizes = [4, 3, 5, 2] if rank == 0 else [3, 6, 1, 4]
    return [
        (torch.randn(size, 2, generator=generator), torch.randn(size, 2, generator=generator))
        for size in sizes
    ]


ADAPTERS = all(importlib.util.find_spec(name) for name in ("torchmetrics", "torcheval"))


def _objectives() -> list[Any]:
    objectives = [
        tt.MetricCollection(MAE=absolute),
        tt.Loss(absolute, "L1") + 0.5 * tt.Loss(squared, "L2"),
        tt.MetricCollection(SE=squared) | tt.Metric(absolute, "AE", aggregation="max"),
    ]
    if ADAPTERS:
        import torchmetrics
        from torcheval.metrics import MeanSquaredError

        from torchtally.contrib.torcheval import from_torcheval
        from torchtally.contrib.torchmetrics import from_torchmetrics

        objectives.append(from_torchmetrics(torchmetrics.MeanAbsoluteError(), name="tmMAE"))
        objectives.append(from_torcheval(MeanSquaredError(), name="teMSE"))
    return objectives


def _values(objectives: list[Any]) -> dict[str, float]:
    return tt.compute_metrics(*objectives)


def _attempt(action: Any) -> str | None:
    try:
        action()
    except tt.errors.SyncError as error:
        return str(error)
    return None


def _update(objectives: list[Any], batches: list[tuple[Tensor, Tensor]]) -> None:
    for outputs, targets in batches:
        for objective in objectives:
            objective.update(outputs, targets)


def resumed_from_rank_0(rank: int, world: int) -> dict[str, Any]:
    """Checkpointed mid-epoch on rank 0 alone, every rank resumed from that one checkpoint."""
    batches = shard(rank)
    first = _objectives()
    _update(first, batches[:2])
    box = [[objective.state_dict() for objective in first] if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)  # the one file every rank loads
    shared = box[0]
    assert shared is not None
    record: dict[str, Any] = {}
    # the new run: every rank loads rank 0's state and goes on with its own batches
    resumed = _objectives()
    for objective, state in zip(resumed, shared, strict=True):
        objective.load_state_dict(state)
    _update(resumed, batches[2:])
    before = _values(resumed)
    record["refused"] = _attempt(lambda: tt.sync_all(*resumed))
    record["adapters_refused"] = _attempt(lambda: tt.sync_all(*resumed[3:])) if ADAPTERS else ""
    record["unchanged"] = _values(resumed) == before
    # saved again on each rank and reloaded, the state still holds rank 0's updates
    again = _objectives()
    for objective, state in zip(again, [o.state_dict() for o in resumed], strict=True):
        objective.load_state_dict(state)
    record["resaved_refused"] = _attempt(lambda: tt.sync_all(*again))
    # merged into new objects (merge_state, not load_state_dict): still rank 0's updates
    merged, sources = _objectives(), _objectives()
    for objective, source, state in zip(merged, sources, shared, strict=True):
        source.load_state_dict(state)
        objective.merge_state(source)
    _update(merged, batches[2:])
    record["merged_refused"] = _attempt(lambda: tt.sync_all(*merged))
    # each rank's own checkpoint restores each rank: the synced values of the whole epoch
    own = _objectives()
    _update(own, batches[:2])
    saved = [objective.state_dict() for objective in own]
    restored = _objectives()
    for objective, state in zip(restored, saved, strict=True):
        objective.load_state_dict(state)
    _update(restored, batches[2:])
    tt.sync_all(*restored)
    record["own"] = _values(restored)
    # a shared checkpoint, then reset() before the next epoch (the Lightning pattern): fine
    fresh = _objectives()
    for objective, state in zip(fresh, shared, strict=True):
        objective.load_state_dict(state)
        objective.reset()
    _update(fresh, batches[2:])
    tt.sync_all(*fresh)
    record["reset"] = _values(fresh)
    return record


CASES = {"resumed_from_rank_0": resumed_from_rank_0}


def scenario(rank: int, world: int) -> dict[str, Any]:
    """Every case in turn on one process group (spawning is the slow part)."""
    return {name: case(rank, world) for name, case in CASES.items()}


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return _dist.launch(WORLD, f"{MODULE}:scenario", tmp_path_factory.mktemp("loops"), TIMEOUT)


def _reference(batches: list[tuple[Tensor, Tensor]]) -> dict[str, float]:
    outputs = torch.cat([o for o, _ in batches]).double()
    targets = torch.cat([t for _, t in batches]).double()
    ae, se = absolute(outputs, targets), squared(outputs, targets)
    found = {
        "MAE": ae.mean().item(),
        "Combined Loss": (ae + 0.5 * se).mean().item(),
        "L1": ae.mean().item(),
        "L2": se.mean().item(),
        "SE": se.mean().item(),
        "AE": ae.max().item(),
    }
    if ADAPTERS:
        found.update(tmMAE=found["MAE"], teMSE=found["SE"])
    return found


def _assert_close(found: dict[str, float], expected: dict[str, float]) -> None:
    assert found.keys() == expected.keys()
    for name, value in expected.items():
        assert found[name] == pytest.approx(value, rel=1e-6), name


def test_a_checkpoint_of_rank_0_loaded_on_every_rank_is_refused_at_the_sync(
    records: list[dict[str, Any]],
) -> None:
    """A mid-epoch state saved on rank 0 alone (what users and Lightning do), loaded everywhere.

    Every rank then held rank 0's first batches, and the sync counted them
    once per rank and rank 1's not at all: an MAE of 1.2284 and a squared error
    of 2.4304 where the epoch's are 1.2375 and 2.8402, without a word.
    """
    for rank, record in enumerate(records):
        case = record["resumed_from_rank_0"]
        assert case["refused"] is not None, f"rank {rank} synced a state loaded from rank 0"
        assert "saved on rank 0" in case["refused"] and "loaded on rank 1" in case["refused"]
        assert case["refused"] == records[0]["resumed_from_rank_0"]["refused"]
        assert case["adapters_refused"] is not None, f"rank {rank} synced adapters from rank 0"
        assert case["unchanged"]
        assert case["resaved_refused"] == case["refused"], (
            "saving again hid where updates came from"
        )
        assert case["merged_refused"] == case["refused"], (
            "merging into a new object hid where updates came from"
        )
        _assert_close(case["own"], _reference(shard(0) + shard(1)))
        _assert_close(case["reset"], _reference(shard(0)[2:] + shard(1)[2:]))


@pytest.mark.parametrize("index", [0, 3, 4])  # a collection, both adapters
def test_a_malformed_saved_on_is_refused_and_changes_nothing(index: int) -> None:
    if index >= 3 and not ADAPTERS:
        pytest.skip("needs torchmetrics and torcheval")
    metric = _objectives()[index]
    metric.update(torch.ones(2, 2), torch.zeros(2, 2))
    expected = tt.compute_metrics(metric)
    state = metric.state_dict()
    inner = index == 0  # an objective keeps it in its metadata, an adapter at the top
    where = state["state"] if inner else state
    assert where["saved_on"] == 0  # outside a distributed run: rank 0

    def with_saved_on(value: Any) -> dict[str, Any]:
        changed = {k: v for k, v in where.items() if k != "saved_on"}
        if value is not None:
            changed["saved_on"] = value
        return {**state, "state": changed} if inner else changed

    for wrong in ("0", -1, True, 1.0):
        with pytest.raises(tt.errors.StateDictError, match="'saved_on' must be a rank"):
            metric.load_state_dict(with_saved_on(wrong))
        assert tt.compute_metrics(metric) == expected
    metric.load_state_dict(with_saved_on(None))  # a state saved before ranks were recorded
    assert tt.compute_metrics(metric) == expected


def _saved_on(state: dict[str, Any], inner: bool, rank: int | None = None) -> Any:
    """The rank ``state`` records (or ``state`` recording ``rank`` instead)."""
    where = state["state"] if inner else state
    if rank is None:
        return where["saved_on"]
    changed = {**where, "saved_on": rank}
    return {**state, "state": changed} if inner else changed


@pytest.mark.parametrize("index", [0, 1, 2, 3, 4])  # collection, loss, join, both adapters
def test_a_state_merged_into_an_empty_object_keeps_the_rank_it_came_from(index: int) -> None:
    """``fresh.merge_state(loaded)`` holds exactly the loaded updates, as a load would.

    It held rank 1's updates and recorded none (saved again: rank 0's), so a
    sync on every rank counted them once per rank without a word.
    """
    if index >= 3 and not ADAPTERS:
        pytest.skip("needs torchmetrics and torcheval")
    inner = index < 3
    saved = _objectives()[index]
    saved.update(torch.ones(2, 2), torch.zeros(2, 2))
    loaded = _objectives()[index]
    loaded.load_state_dict(_saved_on(saved.state_dict(), inner, rank=1))
    fresh = _objectives()[index]
    fresh.merge_state(loaded)
    assert _saved_on(fresh.state_dict(), inner) == 1
    # merged into this process's own updates, the state is this process's (a consolidation)
    own = _objectives()[index]
    own.update(torch.ones(2, 2), torch.zeros(2, 2))
    own.merge_state(loaded)
    assert _saved_on(own.state_dict(), inner) == 0
    own.reset()
    fresh.reset()
    assert _saved_on(fresh.state_dict(), inner) == 0


def test_the_states_of_every_rank_merged_in_one_process_sync_with_dataset_size() -> None:
    """An evaluation in one process of the states each rank of a training run saved.

    Nothing is counted twice in one process, but the sync with ``dataset_size``
    refused the merged state because rank 1's was loaded first.
    """
    states = []
    for rank in range(WORLD):
        metric = tt.MetricCollection(MAE=absolute)
        _update([metric], shard(rank))
        states.append(_saved_on(metric.state_dict(), True, rank=rank))
    merged, other = tt.MetricCollection(MAE=absolute), tt.MetricCollection(MAE=absolute)
    merged.load_state_dict(states[1])
    other.load_state_dict(states[0])
    merged.merge_state(other)
    samples = sum(len(outputs) for rank in range(WORLD) for outputs, _ in shard(rank))
    tt.sync_all(merged, dataset_size=samples)
    merged.sync(dataset_size=samples)
    _assert_close(
        {name: value.item() for name, value in merged.compute().items()},
        {"MAE": _reference(shard(0) + shard(1))["MAE"]},
    )

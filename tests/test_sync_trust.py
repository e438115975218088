"""Syncs that cannot be fooled (issue 11), on real gloo processes of 2, 3 and 4 ranks.

Each numbered case of the issue is a scenario run on spawned processes (a
deadline on every launch, ``tests/_dist.py``); the parent checks every rank's
record against values computed here, independently, in float64:

1. objectives passed in another order on some rank (callables, twins, adapters);
2. one rank syncing once more than the others;
3. headers and payloads that are not torchtally's or are corrupt;
4. concatenations merged in one pass (checked in-process: one ``torch.cat`` per row);
5. ``DistributedSampler`` padding dropped with ``dataset_size=N`` (a grid over ``N``,
   world sizes, batch sizes and shuffling).

The unpacker is also fuzzed in-process: only ``SyncError`` escapes.
"""

from __future__ import annotations

import resource
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torchmetrics
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import _dist  # tests/_dist.py, importable through tests/conftest.py
import torchtally as tt
from torchtally import distributed
from torchtally.aggregation import Cat
from torchtally.contrib.torchmetrics import from_torchmetrics
from torchtally.errors import RepeatedSampleWarning, SyncError

MODULE = "test_sync_trust"
TIMEOUT = 90.0
pytestmark = pytest.mark.timeout(TIMEOUT + 30)


def train_error(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).abs()


def val_error(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).pow(2)


def absolute(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).abs()


def _attempt(action: Callable[[], object]) -> str | None:
    try:
        action()
    except SyncError as error:
        return str(error)
    return None


def scenario(rank: int, world: int) -> dict[str, Any]:
    """Every case, one after the other, on one process group (spawning is the slow part).

    Each case leaves the ranks at the same number of collectives, failed syncs included,
    so the next case starts in step.
    """
    record = {name: case(rank, world) for name, case in CASES.items()}
    if world == 3:
        record["wrong_counts"] = wrong_counts(rank, world)
        record["to_destination"] = to_destination(rank, world)
    return record


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Callable[[int], list[dict[str, Any]]]:
    cache: dict[int, list[dict[str, Any]]] = {}

    def get(world: int) -> list[dict[str, Any]]:
        if world not in cache:
            out = tmp_path_factory.mktemp(f"trust{world}")
            cache[world] = _dist.launch(world, f"{MODULE}:scenario", out, TIMEOUT)
        return cache[world]

    return get


Runs = Callable[[int], list[dict[str, Any]]]


def _case(runs: Runs, world: int, name: str) -> list[dict[str, Any]]:
    return [record[name] for record in runs(world)]


# -- 1. another order on some rank ----------------------------------------------------------------


def crosswise(rank: int, world: int) -> dict[str, Any]:
    swapped = rank == world - 1
    values = torch.full((2,), float(rank + 1))
    zeros = torch.zeros(2)
    record: dict[str, Any] = {}

    train, val = tt.Metric(train_error, "err"), tt.Metric(val_error, "err")
    train.update(values, zeros)
    val.update(values, zeros)
    record["callables"] = _attempt(
        lambda: tt.sync_all(*((val, train) if swapped else (train, val)))
    )

    first, second = tt.Metric(absolute, "MAE"), tt.Metric(absolute, "MAE")  # built alike
    first.update(values, zeros)
    second.update(2 * values, zeros)
    record["twins"] = _attempt(
        lambda: tt.sync_all(*((second, first) if swapped else (first, second)))
    )

    left = from_torchmetrics(torchmetrics.MeanSquaredError(), name="train")
    right = from_torchmetrics(torchmetrics.MeanSquaredError(), name="val")
    left.update(values, zeros)
    right.update(2 * values, zeros)
    record["adapters"] = _attempt(
        lambda: tt.sync_all(*((right, left) if swapped else (left, right)))
    )
    one = from_torchmetrics(torchmetrics.MeanSquaredError())
    other = from_torchmetrics(torchmetrics.MeanSquaredError())
    one.update(values, zeros)
    other.update(2 * values, zeros)
    record["adapter twins"] = _attempt(
        lambda: tt.sync_all(*((other, one) if swapped else (one, other)))
    )

    # Nothing changed, and the right order goes through.
    record["local"] = (train.compute()["err"], val.compute()["err"])
    record["ordered"] = _attempt(lambda: tt.sync_all(train, val, first, second, left, right))
    record["synced"] = [
        train.compute()["err"],
        val.compute()["err"],
        first.compute()["MAE"],
        second.compute()["MAE"],
        left.compute()["train"],
        right.compute()["val"],
    ]
    return record


@pytest.mark.parametrize("world", [2, 3, 4])
def test_objectives_in_another_order_raise_on_every_rank(world: int, runs: Runs) -> None:
    records = _case(runs, world, "crosswise")
    last = world - 1
    for key in ("callables", "twins", "adapters", "adapter twins"):
        messages = [record[key] for record in records]
        assert messages[0] is not None, key
        assert all(message == messages[0] for message in messages), key  # the same text
        assert "objective 0 differs" in messages[0], key
        assert f"rank {last} syncs" in messages[0], key
    assert "callables" in records[0]["callables"]
    assert "val_error" in records[0]["callables"] and "train_error" in records[0]["callables"]
    assert "twin: 0 against 1" in records[0]["twins"].replace('"', "")
    assert '"name": "train"' in records[0]["adapters"] or "train" in records[0]["adapters"]
    scale = sum(rank + 1 for rank in range(world)) / world
    squares = sum((rank + 1) ** 2 for rank in range(world)) / world
    for rank, record in enumerate(records):
        assert record["local"][0].item() == rank + 1  # the failed syncs changed nothing
        assert record["ordered"] is None
        expected = [scale, squares, scale, 2 * scale, squares, 4 * squares]
        got = [value.item() for value in record["synced"]]
        assert got == pytest.approx(expected, rel=1e-6)


# -- 2. one rank syncs once more ------------------------------------------------------------------


def extra_sync(rank: int, world: int) -> dict[str, Any]:
    metric = tt.Metric(absolute, "MAE")
    reported: list[float] = []
    for epoch in (1, 2, 3):
        metric.reset()
        metric.update(torch.full((rank + 1,), float(epoch * (rank + 1))), torch.zeros(rank + 1))
        try:
            metric.sync()
        except SyncError as error:
            return {"reported": reported, "error": str(error), "epoch": epoch}
        reported.append(metric.compute()["MAE"].item())
        if rank == 0 and epoch == 1:
            try:
                metric.sync()  # rank-0-only logging: the others are already in epoch 2
            except SyncError as error:
                return {"reported": reported, "error": str(error), "epoch": epoch}
    return {"reported": reported, "error": None}


@pytest.mark.parametrize("world", [2, 3, 4])
def test_an_extra_sync_on_one_rank_raises_at_the_first_mispaired_call(
    world: int, runs: Runs
) -> None:
    records = _case(runs, world, "extra_sync")
    samples = sum(rank + 1 for rank in range(world))
    epoch_one = sum((rank + 1) ** 2 for rank in range(world)) / samples
    for rank, record in enumerate(records):
        assert record["reported"] == [pytest.approx(epoch_one)]  # epoch 1 right, nothing after
        assert record["epoch"] == (1 if rank == 0 else 2)  # rank 0 fails in its extra sync
        assert record["error"] == records[0]["error"]
    message = records[0]["error"]
    assert "Metric 'MAE' is at another sync" in message
    assert "rank 0 has reset it 1 times and synced it 1 times" in message


# -- 3. headers and payloads that are not torchtally's -------------------------------------------


def _corrupt(kind: str, packed: Tensor) -> Tensor:
    """A payload ``pack`` made, damaged as ``kind`` says."""
    raw = bytearray(packed.numpy().tobytes())
    length = int.from_bytes(raw[:8], "little")
    text = raw[8 : 8 + length].decode()
    if kind == "truncated":
        return packed[: 8 + length // 2].clone()
    if kind == "not utf-8":
        raw[9] = 0xFF
    elif kind == "unknown dtype":  # edits of the same length: the layout stays in place
        raw[8 : 8 + length] = text.replace('"float32"', '"floatXX"').encode()
    elif kind == "shape too large":
        assert ",[2]]" in text  # the concatenation's two values, claimed as nine
        raw[8 : 8 + length] = text.replace(",[2]]", ",[9]]").encode()
    return torch.frombuffer(raw, dtype=torch.uint8).clone()


CORRUPTIONS = ["truncated", "not utf-8", "unknown dtype", "shape too large"]


def corrupt(rank: int, world: int) -> dict[str, Any]:
    last = rank == world - 1
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    metric = tt.Metric(absolute, "Worst", aggregation="max")  # its state travels in the payload
    metric.update(torch.full((2,), float(rank)), torch.zeros(2))
    record: dict[str, Any] = {}

    # Another piece of code gathers as many int64 of its own while rank 0 syncs.
    if rank == 0:
        record["foreign"] = _attempt(metric.sync)
    else:
        fields = len(distributed.HEADER)
        foreign = torch.tensor([7, 3 * 10**9] + [0] * (fields - 2), dtype=torch.int64)
        dist.all_gather_into_tensor(torch.empty(fields * world, dtype=torch.int64), foreign)
        record["foreign"] = None
    record["after foreign"] = _attempt(metric.sync)

    exchange = distributed.exchange_headers
    for field, value in (("payload", 2**40), ("sums", 2**60), ("version", 99), ("flags", 64)):

        def lying(header: Any, group: Any, device: Any) -> Any:
            header = list(header)
            header[distributed.HEADER.index(field)] = value  # noqa: B023
            return exchange(header, group, device)

        distributed.exchange_headers = lying if last else exchange  # type: ignore[assignment]
        record[f"header {field}"] = _attempt(metric.sync)
    distributed.exchange_headers = exchange  # type: ignore[assignment]

    # The last rank alone lowers its payload limit: it would refuse a size the others accept.
    limit = distributed.payload_limit()
    if last:
        distributed.set_payload_limit(16)
    record["limit"] = _attempt(metric.sync)
    distributed.set_payload_limit(limit)

    described = Sorted()  # a concatenation: its state travels with a description
    described.update(torch.full((2,), float(rank)), torch.zeros(2))
    pack = distributed.pack
    for kind in CORRUPTIONS:

        def damaged(meta: Any, tensors: Any, device: Any = None) -> Tensor:
            return _corrupt(kind, pack(meta, tensors, device))  # noqa: B023

        distributed.pack = damaged if last else pack  # type: ignore[assignment]
        record[f"payload {kind}"] = _attempt(lambda: tt.sync_all(metric, described))
    distributed.pack = pack  # type: ignore[assignment]

    record["recovered"] = _attempt(lambda: tt.sync_all(metric, described))
    record["value"] = metric.compute()["Worst"].item()
    record["grown"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak  # KiB
    return record


@pytest.mark.parametrize("world", [2, 3])
def test_foreign_and_corrupt_headers_and_payloads_raise_before_allocating(
    world: int, runs: Runs
) -> None:
    records = _case(runs, world, "corrupt")
    last = world - 1
    assert "rank 1 sent a header that is not torchtally's" in records[0]["foreign"]
    expected = {
        "header payload": f"rank {last} announces payload",
        "header sums": f"rank {last} announces sums",
        "header version": f"rank {last} speaks wire format 99",
        "header flags": f"rank {last} sent unknown flags 64",
        "limit": f"rank {last} set a payload limit of 16 bytes, rank 0 {2**31}",
        "payload truncated": f"rank {last}'s payload",
        "payload not utf-8": "not UTF-8 JSON",
        "payload unknown dtype": "unknown dtype",
        "payload shape too large": "holds",
    }
    for key, fragment in expected.items():
        messages = [record[key] for record in records]
        assert messages[0] is not None and fragment in messages[0], (key, messages[0])
        assert all(message == messages[0] for message in messages), key
    for record in records:
        assert record["after foreign"] is None and record["recovered"] is None
        assert record["value"] == world - 1  # the group still works, values are right
        assert record["grown"] < 200 * 1024  # no allocation of the sizes claimed (KiB)


# -- 4. concatenations merge in one pass -----------------------------------------------------------


def test_combining_many_concatenations_does_one_cat_per_row(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parts = []
    for rank in range(64):
        part = Cat(rows=2)
        part.add(torch.arange(3.0).expand(2, 3) + rank)
        part.add(torch.ones(2, 2))  # two chunks per part
        parts.append((part, [0, 1]))
    for part, _ in parts:
        part.reduce()  # each part joins its own chunks first (as a rank does before sending)
    calls = []
    original = torch.cat

    def counted(*args: Any, **kwargs: Any) -> Tensor:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch, "cat", counted)
    combined = Cat.combined(parts, 2, ["a", "b"])
    monkeypatch.setattr(torch, "cat", original)
    assert len(calls) == 2  # one per row, whatever the number of parts
    expected = torch.cat(
        [torch.cat([torch.arange(3.0) + rank, torch.ones(2)]) for rank in range(64)]
    )
    for value in combined.reduce():
        assert torch.equal(value, expected)


# -- 5. DistributedSampler padding ----------------------------------------------------------------

GRID_SIZES = (7, 10, 13)
BATCHES = (1, 3, 4)


def _dataset(size: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(size)
    outputs = torch.randn(size, generator=generator)
    targets = torch.randn(size, generator=generator)
    return TensorDataset(outputs, targets)


class Sorted(tt.Objective[Tensor, Tensor]):
    """Every error, concatenated and reported sorted (a finalize over a 'cat' state)."""

    aggregation = "cat"

    def calculate(self, outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
        return {"errors": outputs - targets}

    def finalize(self, values: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"sorted": values["errors"].sort().values}


def _objectives() -> list[Any]:
    return [
        tt.MetricCollection(MAE=absolute, Bias=lambda o, t: o - t),
        tt.Metric(lambda o, t: (o - t > 0).long(), "Above", aggregation="sum"),
        tt.Metric(lambda o, t: o - t, "Low", aggregation="min"),
        tt.Metric(lambda o, t: o - t, "High", aggregation="max"),
        Sorted(),
        tt.Metric(lambda o, t: (o - t).abs().mean(), "BatchMAE"),  # a scalar per batch
    ]


def sampler_grid(rank: int, world: int) -> dict[str, Any]:
    results = {}
    for size in GRID_SIZES:
        for batch in BATCHES:
            for shuffle in (False, True):
                dataset = _dataset(size)
                sampler = DistributedSampler(
                    dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=3
                )
                objectives = _objectives()
                for outputs, targets in DataLoader(dataset, batch_size=batch, sampler=sampler):
                    for objective in objectives:
                        objective.update(outputs, targets)
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    tt.sync_all(*objectives, dataset_size=size)
                values: dict[str, Any] = {}
                for objective in objectives:
                    values.update(objective.compute())
                values["warned"] = [
                    str(w.message) for w in caught if issubclass(w.category, RepeatedSampleWarning)
                ]
                results[(size, batch, shuffle)] = values
    return results


def _padded_batch_mean(size: int, world: int, batch: int, shuffle: bool) -> float:
    """What the scalar-per-batch metric reports: the sampler's repeats counted (float64)."""
    outputs, targets = _dataset(size).tensors
    total, count = 0.0, 0
    for rank in range(world):
        sampler = DistributedSampler(
            range(size), num_replicas=world, rank=rank, shuffle=shuffle, seed=3
        )
        indices = list(sampler)
        for start in range(0, len(indices), batch):
            chosen = torch.tensor(indices[start : start + batch])
            errors = (outputs[chosen].double() - targets[chosen].double()).abs()
            total += errors.mean().item() * len(chosen)
            count += len(chosen)
    return total / count


@pytest.mark.parametrize("world", [2, 3, 4])
def test_dataset_size_drops_the_sampler_repeats(world: int, runs: Runs) -> None:
    records = _case(runs, world, "sampler_grid")
    for size in GRID_SIZES:
        outputs, targets = _dataset(size).tensors
        errors = outputs.double() - targets.double()
        repeats = -size % world
        for batch in BATCHES:
            for shuffle in (False, True):
                key = (size, batch, shuffle)
                for record in records:
                    values = record[key]
                    assert values["MAE"].item() == pytest.approx(
                        errors.abs().mean().item(), rel=1e-6
                    )
                    assert values["Bias"].item() == pytest.approx(
                        errors.mean().item(), rel=1e-6, abs=1e-7
                    )
                    assert values["Above"].item() == int((errors > 0).sum())
                    assert values["Low"].item() == pytest.approx(errors.min().item(), rel=1e-6)
                    assert values["High"].item() == pytest.approx(errors.max().item(), rel=1e-6)
                    torch.testing.assert_close(
                        values["sorted"].double(), errors.sort().values, rtol=1e-6, atol=1e-6
                    )
                    padded = _padded_batch_mean(size, world, batch, shuffle)
                    assert values["BatchMAE"].item() == pytest.approx(padded, rel=1e-6), key
                    warned = values["warned"]
                    assert len(warned) == (1 if repeats else 0), key
                    if warned:
                        assert "Metric 'BatchMAE'" in warned[0] and "['BatchMAE']" in warned[0]
                    for name in ("MAE", "Above", "BatchMAE"):
                        assert torch.equal(values[name], records[0][key][name])


def wrong_counts(rank: int, world: int) -> dict[str, Any]:
    dataset = _dataset(10)
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False)
    metric = tt.Metric(absolute, "MAE")
    for _ in range(2):  # two epochs without a reset: 2 x the samples
        for outputs, targets in DataLoader(dataset, batch_size=4, sampler=sampler):
            metric.update(outputs, targets)
    record = {"twice": _attempt(lambda: metric.sync(dataset_size=10))}
    record["disagreeing"] = _attempt(lambda: metric.sync(dataset_size=10 if rank == 0 else 11))
    metric.reset()
    for outputs, targets in DataLoader(dataset, batch_size=4, sampler=sampler):
        metric.update(outputs, targets)
    record["right"] = _attempt(lambda: metric.sync(dataset_size=10))
    record["value"] = metric.compute()["MAE"].item()
    return record


def test_dataset_size_refuses_counts_that_do_not_fit(runs: Runs) -> None:
    records = _case(runs, 3, "wrong_counts")
    outputs, targets = _dataset(10).tensors
    for record in records:
        assert "saw 24 samples over 3 processes" in record["twice"]
        assert "hands out 4 to each (12 in all)" in record["twice"]
        assert "different arguments" in record["disagreeing"]
        assert "'dataset_size': 10" in record["disagreeing"]
        assert record["right"] is None
        expected = (outputs.double() - targets.double()).abs().mean().item()
        assert record["value"] == pytest.approx(expected, rel=1e-6)
        assert record["twice"] == records[0]["twice"]


# -- a gather to one rank -------------------------------------------------------------------------


def to_destination(rank: int, world: int) -> dict[str, Any]:
    rows = Sorted()
    mean = tt.Metric(absolute, "MAE")
    outputs, targets = torch.full((rank + 1,), float(rank)), torch.zeros(rank + 1)
    rows.update(outputs, targets)
    mean.update(outputs, targets)
    before = _dist.real_collectives()
    tt.sync_all(rows, mean, destination=world - 1)
    calls = _dist.real_collectives() - before
    record: dict[str, Any] = {"calls": calls, "MAE": mean.compute()["MAE"].item()}
    record["sorted"] = _attempt(lambda: record.__setitem__("values", rows.compute()))
    return record


def test_destination_gathers_concatenations_to_one_rank(runs: Runs) -> None:
    records = _case(runs, 3, "to_destination")
    errors = torch.cat([torch.full((rank + 1,), float(rank)) for rank in range(3)])
    for rank, record in enumerate(records):
        assert record["calls"] == 3
        assert record["MAE"] == pytest.approx(errors.mean().item())  # means reach every rank
        if rank == 2:
            assert record["sorted"] is None
            assert torch.equal(record["values"]["sorted"], errors.sort().values)
        else:
            assert "another rank" in record["sorted"]


CASES: dict[str, Callable[[int, int], dict[str, Any]]] = {
    "crosswise": crosswise,
    "extra_sync": extra_sync,
    "corrupt": corrupt,
    "sampler_grid": sampler_grid,
}


# -- the unpacker, fuzzed ------------------------------------------------------------------------


def _check_unpack(buffer: Tensor) -> None:
    try:
        _, tensors = distributed.unpack(buffer, rank=5)
    except SyncError as error:
        assert "rank 5's payload" in str(error)
        return
    held = sum(tensor.numel() * tensor.element_size() for tensor in tensors)
    assert held <= buffer.numel()  # nothing larger than what arrived was allocated


@pytest.mark.timeout(120)
@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_unpack_of_random_bytes_raises_only_sync_errors(data: bytes) -> None:
    _check_unpack(
        torch.frombuffer(bytearray(data), dtype=torch.uint8)
        if data
        else torch.empty(0, dtype=torch.uint8)
    )


@pytest.mark.timeout(120)
@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from([torch.float32, torch.int64, torch.bool, torch.float16]), max_size=4),
    st.integers(0, 10),
    st.lists(st.tuples(st.integers(0, 4096), st.integers(0, 255)), max_size=8),
    st.integers(0, 4096),
)
def test_unpack_of_damaged_payloads_raises_only_sync_errors(
    dtypes: list[torch.dtype], length: int, flips: list[tuple[int, int]], cut: int
) -> None:
    tensors = [torch.ones(length, dtype=dtype) for dtype in dtypes]
    packed = distributed.pack({"names": ["a"] * length}, tensors, torch.device("cpu"))
    raw = bytearray(packed.numpy().tobytes())
    for position, value in flips:
        if raw:
            raw[position % len(raw)] = value
    raw = raw[: max(0, len(raw) - cut)] if cut % 3 == 0 else raw
    buffer = torch.frombuffer(raw, dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
    _check_unpack(buffer)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.lists(
            st.integers(-(2**63), 2**63 - 1),
            min_size=len(distributed.HEADER),
            max_size=len(distributed.HEADER),
        ),
        min_size=1,
        max_size=5,
    )
)
def test_header_checks_raise_only_sync_errors(headers: list[list[int]]) -> None:
    for header in headers[: len(headers) // 2]:
        header[0], header[1] = distributed.MAGIC, distributed.WIRE_VERSION  # some look right
    try:
        distributed.check_headers(headers)
    except SyncError:
        return
    for header in headers:
        fields = dict(zip(distributed.HEADER, header, strict=True))
        assert fields["payload"] * len(headers) <= distributed.payload_limit()
        assert 0 <= fields["sums"] * 8 <= distributed.payload_limit()


def test_bad_arguments_are_refused_outside_a_distributed_run() -> None:
    metric = tt.Metric(absolute, "MAE")
    for bad in (-1, 2.5, True, "10"):
        with pytest.raises(tt.errors.InvalidArgumentError, match="dataset_size"):
            tt.sync_all(metric, dataset_size=bad)  # type: ignore[arg-type]
    with pytest.raises(tt.errors.InvalidArgumentError, match="destination"):
        tt.sync_all(metric, destination=1)  # one process: only rank 0

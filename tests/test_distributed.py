"""Distributed sync on real gloo process groups of 2 and 3 ranks.

One spawned run per world size (``scenario`` below) goes through every rule in
order, records what each rank computed, and the tests here check the records
in the parent against values computed independently on the concatenated data
of all ranks in this process. Each launch has a deadline (``tests/_dist.py``),
and every test a pytest timeout, so a hang fails instead of blocking.

Data layout (batch sizes per rank and phase): uneven batch sizes, uneven
numbers of updates, and ranks without any update in some phases. Phase 0 is
the first part of an epoch, phase 1 comes after the first sync, phase 2 after
a reset.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
import torch.distributed as dist
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor
from torch.nn import functional

import _dist  # tests/_dist.py, importable through tests/conftest.py
import torchtally as tt
from torchtally import distributed
from torchtally.aggregation import Accumulator, Cat, Max, Mean, Min
from torchtally.errors import ComputedBeforeUpdatedWarning, SyncError

ROOT = Path(__file__).resolve().parents[1]

MODULE = "test_distributed"
WORLDS = [2, 3]
LAUNCH_TIMEOUT = 60.0

SIZES: dict[int, list[list[list[int]]]] = {
    # SIZES[world][rank][phase] = batch sizes
    2: [[[4, 7, 1], [3], []], [[5, 2], [], [6]]],
    3: [[[4, 7, 1], [3], []], [[5], [], [6]], [[], [2], [3]]],
}


def batches(world: int, rank: int, phase: int) -> list[tuple[Tensor, Tensor]]:
    generator = torch.Generator().manual_seed(100 * world + 10 * rank + phase)
    return [
        (torch.randn(size, 3, generator=generator), torch.randn(size, 3, generator=generator))
        for size in SIZES[world][rank][phase]
    ]


def data(world: int, ranks: list[int], phases: list[int]) -> list[tuple[Tensor, Tensor]]:
    """Batches in the order a sync concatenates them: rank by rank, then update order."""
    return [pair for rank in ranks for phase in phases for pair in batches(world, rank, phase)]


# -- the objectives under test ----------------------------------------------------------------


def mae(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).abs().mean(1)


def worst(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).abs().amax(1)


def best(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).abs().amin(1)


def hits(outputs: Tensor, targets: Tensor) -> Tensor:
    return ((outputs - targets).abs().mean(1) < 0.8).long()


class Errors(tt.AverageObjective[Tensor, Tensor]):
    """A custom average objective: names are only known once it has seen data."""

    def calculate(self, outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
        diff = outputs - targets
        return {"MSE": diff.pow(2).mean(1), "Bias": diff.mean()}  # per-sample and batch mean


class Extremes(tt.Objective[Tensor, Tensor]):
    """Min, max, concatenation (with a trailing dimension) and a float64 mean."""

    aggregation: ClassVar[dict[str, type[Accumulator]]] = {  # type: ignore[misc]
        "low": Min,
        "high": Max,
        "pairs": Cat,
        "wide": Mean,
    }

    def calculate(self, outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
        diff = outputs - targets
        return {
            "low": diff.amin(1),
            "high": diff.amax(1),
            "pairs": diff[:, :2],
            "wide": diff.double().mean(1),
        }


class Rows(tt.Objective[Tensor, Tensor]):
    """Concatenates the outputs (to give ranks different trailing shapes)."""

    aggregation = "cat"

    def calculate(self, outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
        return {"rows": outputs}


FACTORIES: dict[str, Callable[[], tt.Objective[Any, Any]]] = {
    "collection": lambda: tt.MetricCollection(MAE=mae, MSE=functional.mse_loss),
    "worst": lambda: tt.Metric(worst, "Worst", aggregation="max"),
    "best": lambda: tt.Metric(best, "Best", aggregation="min"),
    "hits": lambda: tt.Metric(hits, "Hits", aggregation="sum"),
    "errors": Errors,
    "extremes": Extremes,
}


def reference(pairs: list[tuple[Tensor, Tensor]]) -> dict[str, dict[str, Tensor]]:
    """Every objective's value over the concatenated data, from whole-tensor float64 math."""
    diff = torch.cat([o for o, _ in pairs]) - torch.cat([t for _, t in pairs])
    wide = diff.double()
    return {
        "collection": {"MAE": wide.abs().mean(), "MSE": wide.pow(2).mean()},
        "worst": {"Worst": diff.abs().max()},
        "best": {"Best": diff.abs().min()},
        "hits": {"Hits": (diff.abs().mean(1) < 0.8).sum()},
        "errors": {"MSE": wide.pow(2).mean(), "Bias": wide.mean()},
        "extremes": {
            "low": diff.min(),
            "high": diff.max(),
            "pairs": diff[:, :2],
            "wide": wide.mean(),
        },
    }


def assert_matches(computed: dict[str, dict[str, Tensor]], expected: dict[str, Any]) -> None:
    assert set(computed) == set(expected)
    for key, values in expected.items():
        assert set(computed[key]) == set(values), key
        for name, value in values.items():
            got = computed[key][name]
            if name == "pairs":  # concatenation: the very values, in rank order
                assert torch.equal(got, value), (key, name)
            elif name == "wide":  # float64 all the way
                torch.testing.assert_close(got, value, rtol=1e-12, atol=1e-15)
            else:
                torch.testing.assert_close(
                    got.double(), value.double(), rtol=1e-5, atol=1e-6, msg=f"{key} {name}"
                )


def assert_identical(first: dict[str, dict[str, Tensor]], second: dict[str, dict[str, Tensor]]):
    """Bit for bit the same values (as ranks must report after a sync)."""
    assert set(first) == set(second)
    for key in first:
        assert set(first[key]) == set(second[key]), key
        for name, value in first[key].items():
            other = second[key][name]
            assert value.dtype == other.dtype and torch.equal(value, other), (key, name)


# -- what every rank runs (in spawned children) ----------------------------------------------


def _computes(objectives: dict[str, tt.Objective[Any, Any]]) -> dict[str, dict[str, Tensor]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ComputedBeforeUpdatedWarning)
        return {key: objective.compute() for key, objective in objectives.items()}


def _calls(action: Callable[[], object]) -> tuple[int, int]:
    """(torchtally's collective count, real torch.distributed calls) made by ``action``."""
    before = distributed.collective_count(), _dist.real_collectives()
    action()
    return distributed.collective_count() - before[0], _dist.real_collectives() - before[1]


def scenario(rank: int, world: int) -> dict[str, Any]:
    objectives = {key: make() for key, make in FACTORIES.items()}
    ordered = list(objectives.values())
    record: dict[str, Any] = {}

    def update(phase: int) -> None:
        for outputs, targets in batches(world, rank, phase):
            for objective in ordered:
                objective.update(outputs, targets)

    update(0)
    record["local"] = _computes(objectives)
    record["state_dicts"] = {key: obj.state_dict() for key, obj in objectives.items()}
    record["sync_calls"] = _calls(lambda: tt.sync_all(*ordered))
    record["synced"] = _computes(objectives)
    record["resync_calls"] = _calls(lambda: tt.sync_all(*ordered))
    record["synced_twice"] = _computes(objectives)
    record["single_calls"] = _calls(objectives["collection"].sync)
    record["single"] = objectives["collection"].compute()

    update(1)
    record["after_updates"] = _computes(objectives)
    record["after_calls"] = _calls(lambda: tt.sync_all(*ordered))
    record["synced_after"] = _computes(objectives)
    tt.sync_all(*ordered)
    record["synced_after_twice"] = _computes(objectives)

    for objective in ordered:
        objective.reset()
    update(2)
    tt.sync_all(*ordered)
    record["synced_reset"] = _computes(objectives)

    record["mismatches"] = _mismatches(rank, world)
    record["gathered"] = _raw_exchange(rank, world)
    record["loss"] = _loss(rank, world)
    record["traffic"] = _traffic()
    if world == 3:
        record["subgroup"] = _subgroup(rank)
    return record


def _mismatches(rank: int, world: int) -> dict[str, Any]:
    """Disagreements between ranks: each must raise the same SyncError on every rank."""
    last = rank == world - 1
    messages: dict[str, str | None] = {}
    values: dict[str, Any] = {}

    def attempt(key: str, action: Callable[[], object]) -> None:
        try:
            action()
        except SyncError as error:
            messages[key] = str(error)
        else:
            messages[key] = None

    ones, zeros = torch.full((2, 3), float(rank + 1)), torch.zeros(2, 3)
    kept = tt.MetricCollection(MAE=mae)
    kept.update(ones, zeros)
    values["kept_local"] = kept.compute()

    named = tt.Metric(mae, "A" if rank == 0 else "B")
    named.update(ones, zeros)
    attempt("names", named.sync)

    kind = tt.Metric(mae, "E", aggregation="max" if last else "mean")
    kind.update(ones, zeros)
    attempt("kinds", lambda: tt.sync_all(kept, kind))  # the second objective disagrees
    values["kept_after_kinds"] = kept.compute()

    rows = Rows()
    rows.update(torch.zeros(2, 3 if last else 2), zeros)
    attempt("trailing", rows.sync)

    attempt("objectives", lambda: tt.sync_all(named, kept) if rank == 0 else tt.sync_all(kept))
    values["kept_after_objectives"] = kept.compute()

    first, second = tt.Loss(mae, "L1"), tt.Loss(worst, "Worst")
    formula = first + (2 if last else 0.5) * second  # same components, another formula
    formula.update(ones, zeros)
    attempt("formulas", formula.sync)

    stranger: Any = object()
    attempt("export", lambda: tt.sync_all(kept, stranger if last else kind))

    complex_state = Rows()
    complex_state.update(ones, zeros)
    if last:  # a state of a dtype no rank may send (torchtally never makes one: forced here)
        complex_state._ledger.flush()
        complex_state._ledger.accumulators[Cat]._chunks[0] = [
            torch.zeros(2, 3, dtype=torch.complex64)
        ]
    attempt("pack", complex_state.sync)

    # The group is still healthy: a correct sync goes through afterwards.
    attempt("recovered", kept.sync)
    values["kept_synced"] = kept.compute()
    return {"messages": messages, "values": values}


def _raw_exchange(rank: int, world: int) -> list[tuple[Any, list[Tensor]]]:
    """Every rank's packed payload through the real gather, unpacked."""
    meta, tensors = payload(rank)
    packed = distributed.pack(meta, tensors, torch.device("cpu"))
    sizes = torch.zeros(world, dtype=torch.int64)
    sizes[rank] = packed.numel()
    dist.all_reduce(sizes)
    received = distributed.all_gather_payloads(packed, sizes.tolist(), None)
    assert received is not None
    return [distributed.unpack(part, source) for source, part in enumerate(received)]


def payload(rank: int) -> tuple[dict[str, Any], list[Tensor]]:
    """Awkward tensors for the raw exchange: every dtype, empty, 0-d, strided, odd lengths."""
    meta = {"rank": rank, "text": "naïve ✓", "nested": [1, [2.5, None]]}
    if rank == 1:
        return meta, []  # a rank with no tensors at all
    tensors = [
        torch.tensor([1 / 3, -0.0, float("inf"), float("nan"), 1e-300], dtype=torch.float64),
        torch.tensor([2**62 + 1, -7], dtype=torch.int64),
        torch.tensor([True, False, True]),
        torch.tensor([1.5, -2.25, 3.0e38], dtype=torch.bfloat16),
        torch.tensor([0.1, 65504.0, -0.0], dtype=torch.float16),
        torch.empty(0, 3),
        torch.tensor(7, dtype=torch.int32),
        torch.arange(12.0).reshape(3, 4).t(),  # not contiguous
        torch.arange(5, dtype=torch.uint8),  # an odd number of bytes
        torch.randn(4, 3, generator=torch.Generator().manual_seed(rank))[1:, 1],  # an offset view
    ]
    if rank == 2:
        tensors = tensors[::-1][:5]  # another number of tensors, other order
    return meta, tensors


def _loss(rank: int, world: int) -> dict[str, Any]:
    try:
        from torchtally.losses import Loss
    except ImportError as error:
        return {"error": repr(error)}
    mse = Loss(functional.mse_loss, "MSE")
    absolute = Loss(mae, "MAE")
    combined = mse**2 + 0.5 * absolute
    metrics = tt.MetricCollection(MAE=mae)
    for outputs, targets in batches(world, rank, 0):
        combined(outputs, targets)
        metrics.update(outputs, targets)
    calls = _calls(lambda: tt.sync_all(combined, metrics))
    return {"calls": calls, "values": combined.compute(), "metrics": metrics.compute()}


def _traffic() -> dict[str, int]:
    """Bytes one sync brings to this rank, for ``m`` means and ``x`` maxima ("m,x")."""
    received = {}
    for means, maxima in ((3, 0), (0, 2), (3, 2)):
        objectives = [tt.Metric(mae, f"M{index}") for index in range(means)]
        objectives += [tt.Metric(worst, f"X{index}", aggregation="max") for index in range(maxima)]
        for objective in objectives:
            objective.update(torch.ones(2, 3), torch.zeros(2, 3))
        before = distributed.bytes_received()
        tt.sync_all(*objectives)
        received[f"{means},{maxima}"] = distributed.bytes_received() - before
    return received


def _subgroup(rank: int) -> dict[str, Any]:
    group = dist.new_group([0, 1])
    metric = tt.Metric(mae, "MAE")
    metric.update(torch.full((rank + 2, 3), float(rank)), torch.zeros(rank + 2, 3))
    calls = _calls(lambda: tt.sync_all(metric, process_group=group))
    # a gather to the group's rank 1: the process outside the group (global rank 2) has no
    # rank 1 in it to check against, and returns at once like the others' no-op
    peak = tt.Metric(worst, "Worst", aggregation="max")
    peak.update(torch.full((2, 3), float(rank)), torch.zeros(2, 3))
    try:
        tt.sync_all(peak, process_group=group, destination=1)
        gathered: Any = peak.compute() if rank != 0 else None
    except Exception as error:  # recorded for the parent, which names it
        gathered = f"{type(error).__name__}: {error}"
    return {"calls": calls, "values": metric.compute(), "gathered": gathered}


# -- the parent: launch once per world size, check the records --------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Callable[[int], list[dict[str, Any]]]:
    cache: dict[int, list[dict[str, Any]]] = {}

    def get(world: int) -> list[dict[str, Any]]:
        if world not in cache:
            out = tmp_path_factory.mktemp(f"world{world}")
            cache[world] = _dist.launch(world, f"{MODULE}:scenario", out, LAUNCH_TIMEOUT)
        return cache[world]

    return get


Runs = Callable[[int], list[dict[str, Any]]]
pytestmark = pytest.mark.timeout(LAUNCH_TIMEOUT + 30)


@pytest.mark.parametrize("world", WORLDS)
def test_local_values_before_sync(world: int, runs: Runs) -> None:
    for rank, record in enumerate(runs(world)):
        own = data(world, [rank], [0])
        if own:
            assert_matches(record["local"], reference(own))


@pytest.mark.parametrize("world", WORLDS)
def test_sync_gives_the_union_on_every_rank(world: int, runs: Runs) -> None:
    records = runs(world)
    expected = reference(data(world, list(range(world)), [0]))
    for record in records:
        assert_matches(record["synced"], expected)
        assert_identical(record["synced"], records[0]["synced"])


def test_rank_without_updates_takes_part(runs: Runs) -> None:
    records = runs(3)
    assert not SIZES[3][2][0]  # rank 2 never updated before the first sync
    assert records[2]["local"]["errors"] == {}  # its custom objective knew no names
    assert records[2]["local"]["collection"]["MAE"].isnan()  # named ones knew theirs
    expected = reference(data(3, [0, 1], [0]))
    assert_matches(records[2]["synced"], expected)


@pytest.mark.parametrize("world", WORLDS)
def test_sync_twice_equals_once(world: int, runs: Runs) -> None:
    for record in runs(world):
        assert_identical(record["synced_twice"], record["synced"])
        assert_identical(record["synced_after_twice"], record["synced_after"])
        for name, value in record["single"].items():
            assert torch.equal(value, record["synced"]["collection"][name])


@pytest.mark.parametrize("world", WORLDS)
def test_updates_after_sync_are_counted_once(world: int, runs: Runs) -> None:
    records = runs(world)
    for rank, record in enumerate(records):
        if SIZES[world][rank][1]:  # updated since the sync: compute is local again
            assert_matches(record["after_updates"], reference(data(world, [rank], [0, 1])))
        else:  # nothing new here: the synced view stays
            assert_identical(record["after_updates"], record["synced"])
    expected = reference(data(world, list(range(world)), [0, 1]))
    for record in records:
        assert_matches(record["synced_after"], expected)
        assert_identical(record["synced_after"], records[0]["synced_after"])


@pytest.mark.parametrize("world", WORLDS)
def test_reset_after_sync_starts_a_clean_epoch(world: int, runs: Runs) -> None:
    expected = reference(data(world, list(range(world)), [2]))
    for record in runs(world):
        assert_matches(record["synced_reset"], expected)


@pytest.mark.parametrize("world", WORLDS)
def test_two_collectives_for_means_and_sums_three_with_others(world: int, runs: Runs) -> None:
    for record in runs(world):
        # (torchtally's own count, real torch.distributed calls): six objectives with minima,
        # maxima, concatenations and learnt names; then a collection of means alone
        for key in ("sync_calls", "resync_calls", "after_calls"):
            assert record[key] == (3, 3), key
        assert record["single_calls"] == (2, 2)


@pytest.mark.parametrize("world", WORLDS)
def test_sync_equals_merge_state_of_rank_copies(world: int, runs: Runs) -> None:
    records = runs(world)
    for key, make in FACTORIES.items():
        merged = make()
        for record in records:
            copy = make()
            copy.load_state_dict(record["state_dicts"][key])
            merged.merge_state(copy)
        expected = merged.compute()
        assert_identical({key: records[0]["synced"][key]}, {key: expected})


@pytest.mark.parametrize("world", WORLDS)
def test_disagreements_raise_the_same_sync_error_on_every_rank(world: int, runs: Runs) -> None:
    records = runs(world)
    messages = [record["mismatches"]["messages"] for record in records]
    for rank_messages in messages:
        assert rank_messages == messages[0]  # identical text on every rank
    found = messages[0]
    last = world - 1
    assert "objective 0 differs" in found["names"]
    assert "rank 0 syncs Metric 'A', rank 1 syncs Metric 'B'" in found["names"]
    assert 'names: ["A"] against ["B"]' in found["names"]
    assert "objective 1 differs" in found["kinds"]  # the first objective agrees
    assert f"rank {last} syncs Metric 'E'" in found["kinds"]
    assert 'aggregations: ["mean"] against ["max"]' in found["kinds"]
    assert "trailing shape (3,) with (2,)" in found["trailing"]
    assert 'formula: "[L1] + 0.5 x [Worst]" against "[L1] + 2 x [Worst]"' in found["formulas"]
    assert "different numbers of objectives: rank 0 syncs 2" in found["objectives"]
    assert "rank 1 1 (MetricCollection['MAE'])" in found["objectives"]
    assert f"rank {last}: InvalidArgumentError" in found["export"]
    assert "found object" in found["export"]
    assert "rank 0" not in found["export"]
    assert f"rank {last}: SyncError" in found["pack"] and "complex64" in found["pack"]
    assert "rank 0" not in found["pack"]
    assert found["recovered"] is None
    # A failed sync changes nothing; the next one works.
    for rank, record in enumerate(records):
        values = record["mismatches"]["values"]
        assert values["kept_local"]["MAE"].item() == rank + 1
        assert values["kept_after_kinds"] == values["kept_local"]
        assert values["kept_after_objectives"] == values["kept_local"]
        expected = sum(2 * (r + 1) for r in range(world)) / (2 * world)
        assert values["kept_synced"]["MAE"].item() == pytest.approx(expected)


def _bytes(tensor: Tensor) -> Tensor:
    return tensor.contiguous().reshape(-1).view(torch.uint8)


@pytest.mark.parametrize("world", WORLDS)
def test_raw_exchange_round_trips_every_dtype(world: int, runs: Runs) -> None:
    for record in runs(world):
        gathered = record["gathered"]
        assert len(gathered) == world
        for source, (meta, tensors) in enumerate(gathered):
            sent_meta, sent = payload(source)
            assert meta == sent_meta
            assert len(tensors) == len(sent)
            for got, want in zip(tensors, sent, strict=True):
                assert got.dtype == want.dtype and got.shape == want.shape
                assert torch.equal(_bytes(got), _bytes(want))  # bit for bit, NaN included


@pytest.mark.parametrize("world", WORLDS)
def test_composed_loss_syncs_with_metrics_in_two_collectives(world: int, runs: Runs) -> None:
    records = runs(world)
    losses = [record["loss"] for record in records]
    assert all("error" not in loss for loss in losses), losses[0].get("error")
    pairs = data(world, list(range(world)), [0])
    union = reference(pairs)["collection"]
    mse, absolute = union["MSE"], union["MAE"]
    # the combined value is the mean of what forward returned: [MSE]^2 squares each batch's MSE
    samples = sum(len(outputs) for outputs, _ in pairs)
    combined = (
        sum(
            len(o) * functional.mse_loss(o.double(), t.double()) ** 2
            + 0.5 * mae(o.double(), t.double()).sum()
            for o, t in pairs
        )
        / samples
    )
    for loss in losses:  # rank 2 of 3 never called the loss before the sync
        assert loss["calls"] == (2, 2)
        assert_identical({"MAE": loss["metrics"]}, {"MAE": losses[0]["metrics"]})
        values = loss["values"]
        assert list(values) == ["Combined Loss", "MSE", "MAE"]
        torch.testing.assert_close(values["MSE"].double(), mse, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(values["MAE"].double(), absolute, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(values["Combined Loss"].double(), combined, rtol=1e-5, atol=1e-6)
        assert torch.equal(values["Combined Loss"], losses[0]["values"]["Combined Loss"])


TRAFFIC = "72·W  +  144·m  +  104·x  +  24·x·W  +  (c + descriptions)·W   bytes"
"""The bytes per rank of one sync, as docs/distributed.md ("What it costs") gives them."""


@pytest.mark.parametrize("world", WORLDS)
def test_bytes_received_per_sync_are_the_documented_ones(world: int, runs: Runs) -> None:
    assert TRAFFIC in (ROOT / "docs" / "distributed.md").read_text(encoding="utf-8")
    for record in runs(world):
        for case, received in record["traffic"].items():
            means, maxima = map(int, case.split(","))
            # headers, the summed vector, every rank's fixed block; no concatenation here
            assert received == 72 * world + 144 * means + 104 * maxima + 24 * maxima * world, case


def test_sync_over_a_subgroup(runs: Runs) -> None:
    results = [record["subgroup"] for record in runs(3)]
    # ranks 0 and 1 fed 2 rows of 0.0 and 3 rows of 1.0; rank 2 (outside) keeps its own 2.0
    for rank in (0, 1):
        assert results[rank]["calls"] == (2, 2)
        assert results[rank]["values"]["MAE"].item() == pytest.approx(3 / 5)
    assert results[2]["calls"] == (0, 0)
    assert results[2]["values"]["MAE"].item() == 2.0
    assert results[1]["gathered"] == {"Worst": torch.tensor(1.0)}  # the group's destination
    assert results[2]["gathered"] == {"Worst": torch.tensor(2.0)}  # outside: its own value


# -- one process: sync is a silent no-op --------------------------------------------------------


@pytest.mark.timeout(30)
def test_sync_without_torch_distributed_is_a_silent_no_op() -> None:
    assert not dist.is_initialized()
    objectives = [make() for make in FACTORIES.values()]
    outputs, targets = batches(2, 0, 0)[0]
    for objective in objectives:
        objective.update(outputs, targets)
    before = [objective.compute() for objective in objectives]
    count = distributed.collective_count()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tt.sync_all(*objectives)
        for objective in objectives:
            objective.sync()
    assert distributed.collective_count() == count
    for objective, values in zip(objectives, before, strict=True):
        assert objective.compute().keys() == values.keys()
        for name, value in objective.compute().items():
            assert torch.equal(value, values[name])
    with pytest.raises(TypeError, match="sync_all takes torchtally objectives"):
        tt.sync_all(objectives[0], object())  # type: ignore[arg-type]


DTYPES = [
    torch.float64,
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.int64,
    torch.int32,
    torch.int8,
    torch.uint8,
    torch.bool,
]


@pytest.mark.timeout(60)
@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(DTYPES),
            st.lists(st.integers(0, 4), min_size=0, max_size=3),
            st.integers(0, 2**31),
        ),
        max_size=6,
    )
)
def test_pack_and_unpack_round_trip(specs: list[tuple[torch.dtype, list[int], int]]) -> None:
    tensors = []
    for dtype, shape, seed in specs:
        nbytes = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
        generator = torch.Generator().manual_seed(seed)
        raw = torch.randint(0, 256, (nbytes,), generator=generator).to(torch.uint8)
        if dtype == torch.bool:
            raw = raw % 2  # other bytes are not valid booleans
        tensors.append(raw.view(dtype).reshape(shape))  # random bits: NaNs, infs, subnormals
    meta = {"specs": len(specs)}
    buffer = distributed.pack(meta, tensors, torch.device("cpu"))
    assert buffer.dtype == torch.uint8 and buffer.ndim == 1
    decoded, unpacked = distributed.unpack(buffer, rank=0)
    assert decoded == meta
    assert len(unpacked) == len(tensors)
    for got, want in zip(unpacked, tensors, strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape
        assert torch.equal(_bytes(got), _bytes(want))


def test_buffer_device_depends_on_the_backend_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "gloo")
    assert distributed.buffer_device(None, [torch.zeros(1)]) == torch.device("cpu")
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "nccl")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    # a rank without state tensors uses the current CUDA device, as the others use theirs
    assert distributed.buffer_device(None, []) == torch.device("cuda", 1)
    assert distributed.buffer_device(None, [torch.zeros(1)]) == torch.device("cuda", 1)


# -- the example, under torchrun and alone -------------------------------------------------------


@pytest.mark.timeout(150)
@pytest.mark.parametrize("processes", [2, 1])
def test_ddp_example_agrees_with_the_full_data(processes: int) -> None:
    script = str(ROOT / "examples" / "ddp_metrics.py")
    if processes == 1:
        command = [sys.executable, script]
    else:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",  # a free port of its own
            "--nproc-per-node",
            str(processes),
            script,
        ]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=120, cwd=ROOT, env=_env()
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"world size {processes}" in done.stdout
    assert done.stdout.count("agree") >= 2, done.stdout  # one line per epoch
    assert "DIFFER" not in done.stdout


def _env() -> dict[str, str]:
    import os

    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    return env

"""Synced values that must be exact, on real gloo processes of 2 ranks.

One spawned run (``scenario``) goes through every case; the parent checks each
rank's record against values computed here independently (Python integers,
float64 over the concatenated data).
"""

from __future__ import annotations

import copy
import itertools
import os
import subprocess
import sys
import warnings
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

import _dist  # tests/_dist.py, importable through tests/conftest.py
import torchtally as tt
from _sync import simulate_sync  # tests/_sync.py
from torchtally.aggregation import Accumulator, Cat, Max, Mean, Min, Sum, dtypes_from_counts
from torchtally.aggregation._states import promote

MODULE = "test_sync_exact"
WORLD = 2
TIMEOUT = 90.0
pytestmark = pytest.mark.timeout(TIMEOUT + 30)


def identity(outputs: Tensor, targets: Tensor) -> Tensor:
    return outputs


# -- integer sums past 2**53 ------------------------------------------------------------------

BIG: list[list[list[int]]] = [  # BIG[case][rank]: one rank's integer values
    [[2**53], [1, 1, 1]],
    [[2**62], [-(2**61) - 7, 5]],
    [[-(2**53) - 1, -(2**40)], [2**60 + 3]],
    [[3, -5], []],
]


def integer_sums(rank: int, world: int) -> list[dict[str, Tensor]]:
    found = []
    for case in BIG:
        metric = tt.Metric(identity, "Total", aggregation="sum")
        mean = tt.Metric(identity, "Mean")
        if case[rank]:
            values = torch.tensor(case[rank], dtype=torch.int64)
            metric.update(values, values)
            mean.update(values, values)
        tt.sync_all(metric, mean)
        found.append({**metric.compute(), **mean.compute()})
    return found


def test_integer_sums_past_2_53_are_exact_across_ranks(records: list[dict[str, Any]]) -> None:
    for index, case in enumerate(BIG):
        values = [value for part in case for value in part]
        for record in records:
            found = record["integer_sums"][index]
            assert found["Total"].dtype == torch.int64
            assert int(found["Total"]) == sum(values), (case, found)
            mean = torch.tensor(float(sum(values)) / len(values), dtype=torch.float64)
            assert found["Mean"] == mean, (case, found)


WIDE: list[list[list[int]]] = [  # WIDE[case][rank]: sums at and past 2**62 on a rank
    [[2**62, 2**62], [2**62, 2**62]],  # each rank's sum, 2**63, is outside int64
    [[2**62, 2**62], [-(2**62), -(2**62) + 5]],  # back inside int64 over the ranks
    [[2**62], [2**62 - 1]],  # the largest int64
    [[-(2**62)], [-(2**62)]],  # the smallest int64
    [[2**62 - 1, 3], [2**62, -7]],
]


def wide_integer_sums(rank: int, world: int) -> list[dict[str, Tensor]]:
    found = []
    for case in WIDE:
        metric = tt.Metric(identity, "Total", aggregation="sum")
        metric.update(torch.tensor(case[rank]), torch.zeros(len(case[rank])))
        batches = tt.Metric(identity, "Batches", aggregation="sum")  # one value a batch
        for value in case[rank]:
            batches.update(torch.tensor([value]), torch.zeros(1))
        tt.sync_all(metric, batches)
        found.append({**metric.compute(), **batches.compute()})
    return found


def test_integer_sums_near_2_62_on_a_rank_sync_exactly(records: list[dict[str, Any]]) -> None:
    # The gloo counterpart of the simulated test further down; reference: Python integers.
    for index, case in enumerate(WIDE):
        exact = sum(value for values in case for value in values)
        inside = -(2**63) <= exact < 2**63
        for record in records:
            for found in record["wide_integer_sums"][index].values():
                assert found.dtype == (torch.int64 if inside else torch.float64), (case, found)
                assert found.item() == (exact if inside else float(exact)), (case, found)


# -- a gather to one rank: only that rank sees what does not combine ----------------------------


class Rows(tt.Objective[Tensor, Tensor]):
    """Every value kept (a 'cat' aggregation)."""

    aggregation = "cat"

    def calculate(self, outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
        return {"rows": outputs}


def _attempt(action: Callable[[], object]) -> str | None:
    try:
        action()
    except tt.errors.SyncError as error:
        return str(error)
    return None


def destination_mismatch(rank: int, world: int) -> dict[str, Any]:
    rows, mean = Rows(), tt.Metric(identity, "Mean")
    rows.update(torch.ones(2, 3 if rank == 0 else 2), None)  # another trailing shape on rank 1
    mean.update(torch.full((2,), float(rank)), None)
    record: dict[str, Any] = {"error": _attempt(lambda: tt.sync_all(rows, mean, destination=0))}
    record["mean"] = mean.compute()["Mean"]
    record["stamps"] = [rows.sync_stamp(), mean.sync_stamp()]
    rows.reset()
    mean.reset()
    rows.update(torch.ones(1, 2), None)
    record["after_reset"] = _attempt(lambda: tt.sync_all(rows, mean, destination=0))
    return record


def test_a_gather_to_one_rank_refuses_there_alone(records: list[dict[str, Any]]) -> None:
    found = [record["destination_mismatch"] for record in records]
    assert found[0]["error"] is not None and "trailing shape" in found[0]["error"]
    assert found[0]["mean"] == 0.0  # unchanged: its own values
    assert found[0]["stamps"] == [(0, 0), (0, 0)]
    assert found[1]["error"] is None  # it never sees the other rank's rows
    assert found[1]["mean"] == 0.5  # the global mean
    assert found[1]["stamps"] == [(0, 1), (0, 1)]
    assert [record["after_reset"] for record in found] == [None, None]


# -- learnt names: what this epoch saw, not what a past one left --------------------------------


class PerSign(tt.AverageObjective[Tensor, Tensor]):
    """Learns its names from the data: 'negative' only for batches holding a negative value."""

    def calculate(self, outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
        values = {"all": outputs}
        if bool((outputs < 0).any()):
            values["negative"] = (outputs < 0).float()
        return values


def stale_names(rank: int, world: int) -> dict[str, Tensor] | str:
    errors = PerSign()
    if rank == 0:  # an epoch that is not synced: rank 0 learns 'negative'
        errors.update(torch.tensor([-1.0, 2.0]), None)
    errors.reset()
    errors.update(torch.tensor([1.0, 2.0]) + 2 * rank, None)  # the same names on both ranks
    error = _attempt(lambda: tt.sync_all(errors))
    return errors.compute() if error is None else error


def test_names_learnt_in_an_earlier_epoch_do_not_refuse_a_sync(
    records: list[dict[str, Any]],
) -> None:
    for record in records:
        found = record["stale_names"]
        assert isinstance(found, dict), found
        assert found["all"] == torch.tensor([1.0, 2.0, 3.0, 4.0]).mean()
        assert found.get("negative", torch.tensor(float("nan"))).isnan()


# -- dataset_size and a loss whose combined value broadcasts a batch mean ---------------------

SAMPLES, BATCH = 5, 3  # a DistributedSampler over 5 samples and 2 ranks: rank 1 repeats one


def sampler_batches(rank: int, world: int) -> list[tuple[Tensor, Tensor]]:
    """This rank's batches from the stock DistributedSampler (no shuffling, drop_last=False)."""
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

    generator = torch.Generator().manual_seed(5)
    dataset = TensorDataset(
        torch.randn(SAMPLES, 2, generator=generator), torch.randn(SAMPLES, 2, generator=generator)
    )
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False)
    return [(inputs, targets) for inputs, targets in DataLoader(dataset, BATCH, sampler=sampler)]


def batch_mse(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).pow(2).mean()  # one scalar per batch: a repeat cannot be dropped


def sample_mae(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).abs().mean(1)  # per sample: the repeat is dropped


def both_errors(outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
    return {"mse": batch_mse(outputs, targets), "mae": sample_mae(outputs, targets)}


def repeated_batch_means(rank: int, world: int) -> dict[str, Any]:
    import warnings

    losses = {
        "composed": tt.Loss(batch_mse, "MSE") + tt.Loss(sample_mae, "MAE"),
        "summed": tt.DictLoss.summed(both_errors, "Sum"),
    }
    for inputs, targets in sampler_batches(rank, world):
        for loss in losses.values():
            loss(inputs, targets)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tt.sync_all(*losses.values(), dataset_size=SAMPLES)
    record: dict[str, Any] = {name: loss.compute() for name, loss in losses.items()}
    record["warnings"] = [str(warning.message) for warning in caught]
    return record


def test_a_combined_value_of_batch_means_keeps_the_repeat_and_says_so(
    records: list[dict[str, Any]],
) -> None:
    # The combined value per sample is a batch's MSE broadcast plus the sample's MAE: the
    # repeat's share of it cannot be told apart, so it must be kept (like the MSE's) and named in
    # the warning. It was "dropped" with the batch mean as the repeat's value instead, silently:
    # 1.8412, neither the 6 served samples' 1.8448 nor the 5 samples' 1.9092.
    batches = [batch for rank in range(WORLD) for batch in sampler_batches(rank, WORLD)]
    served = sum(len(targets) for _, targets in batches)
    assert served == SAMPLES + 1
    with_repeat = (
        sum(
            float((batch_mse(o.double(), t.double()) + sample_mae(o.double(), t.double())).sum())
            for o, t in batches
        )
        / served
    )
    mae = torch.cat([sample_mae(o.double(), t.double()) for o, t in batches])[:SAMPLES].mean()
    for record in records:
        found = record["repeated_batch_means"]
        for name, combined in (("composed", "Combined Loss"), ("summed", "Sum")):
            values = found[name]
            assert values[combined].item() == pytest.approx(with_repeat, rel=1e-6), name
            assert values["MAE" if name == "composed" else "mae"].item() == pytest.approx(
                float(mae), rel=1e-6
            )
        assert any("'Combined Loss'" in text for text in found["warnings"]), found["warnings"]
        assert any("'Sum'" in text for text in found["warnings"]), found["warnings"]


# -- the run ----------------------------------------------------------------------------------

CASES: dict[str, Callable[[int, int], Any]] = {
    "integer_sums": integer_sums,
    "wide_integer_sums": wide_integer_sums,
    "destination_mismatch": destination_mismatch,
    "stale_names": stale_names,
    "repeated_batch_means": repeated_batch_means,
}


def scenario(rank: int, world: int) -> dict[str, Any]:
    """Every case in turn on one process group (spawning is the slow part)."""
    return {name: case(rank, world) for name, case in CASES.items()}


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("exact")
    return _dist.launch(WORLD, f"{MODULE}:scenario", out, TIMEOUT)


def test_a_weight_callable_on_some_ranks_only_refuses_the_sync() -> None:
    # Built with weight= on rank 0 only, the weighted and the unweighted states were added up
    # into one mean without a word.
    def tokens(outputs: Tensor, targets: Tensor) -> Tensor:
        return torch.tensor(10.0)

    def mean_of(outputs: Tensor, targets: Tensor) -> Tensor:
        return outputs.mean()

    ranks = [tt.Metric(mean_of, "M", weight=tokens), tt.Metric(mean_of, "M")]
    for metric in ranks:
        metric.update(torch.ones(2), torch.zeros(2))
    with pytest.raises(tt.errors.SyncError, match=r"objective 0 differs.*tokens"):
        simulate_sync([[metric] for metric in ranks])
    alike = [tt.Metric(mean_of, "M", weight=tokens) for _ in range(2)]
    for rank, metric in enumerate(alike):
        metric.update(torch.full((2,), float(rank)), torch.zeros(2))
    simulate_sync([[metric] for metric in alike])
    assert alike[0].compute()["M"].item() == 0.5


def test_lambdas_on_one_line_are_told_apart_by_their_code() -> None:
    # Two lambdas on one line had one identity (module, name, line): a rank syncing a sum of
    # the values with a rank syncing a sum of their squares was merged without a word.
    plain, squared = tt.Metric(lambda o, t: o, "V"), tt.Metric(lambda o, t: o * o, "V")
    for metric in (plain, squared):
        metric.update(torch.full((2,), 3.0), torch.zeros(2))
    with pytest.raises(tt.errors.SyncError, match=r"objective 0 differs.*callables"):
        simulate_sync([[plain], [squared]])
    assert (plain.compute()["V"].item(), squared.compute()["V"].item()) == (3.0, 9.0)


IDENTITIES = """
from torchtally.sync import callable_identity
named = lambda o, t: [x for x in o if x in {"alpha", "beta", "gamma", 1.5}]
def nested(o, t):
    return sum(y for y in (o, frozenset({"p", "q", "r"})))
print(callable_identity(named), callable_identity(nested))
"""


def test_callable_identities_are_the_same_in_every_process() -> None:
    # What ranks compare must not depend on the process: string hashing (the order of a
    # frozenset constant) and addresses (a nested code object's repr) differ between processes.
    found = set()
    for seed in ("1", "2", "3"):
        done = subprocess.run(
            [sys.executable, "-c", IDENTITIES],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        found.add(done.stdout)
    assert len(found) == 1, found


class Sometimes(tt.AverageObjective[Tensor, Tensor]):
    """``'always'`` in every batch, ``'sometimes'`` only in batches of more than one sample."""

    def calculate(self, outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
        values = {"always": outputs}
        if len(outputs) > 1:
            values["sometimes"] = outputs
        return values


def test_dataset_size_with_a_value_left_out_of_some_batches_says_so() -> None:
    # The refusal said to pass dataset_size only for one pass over the dataset, once per
    # sample, which the run did: what happened is that 'sometimes' was left out of a batch.
    ranks = [Sometimes(), Sometimes()]  # 5 samples on 2 ranks: 3 each, rank 1's last repeats
    for metric, batches in zip(ranks, ([[1.0, 2.0], [3.0]], [[4.0, 5.0], [1.0]]), strict=True):
        for batch in batches:
            metric.update(torch.tensor(batch), torch.zeros(len(batch)))
    before = [metric.compute() for metric in ranks]
    with pytest.raises(tt.errors.SyncError) as caught:
        simulate_sync([[metric] for metric in ranks], dataset_size=5)
    message = str(caught.value)
    assert "'sometimes' saw 4 samples" in message and "6 in all" in message
    assert "'always' saw the whole pass, so 'sometimes' was left out of some batches" in message
    assert "once per sample" not in message
    assert [metric.compute() for metric in ranks] == before  # nothing changed


# -- a sync reports the dtype and value a merge does ---------------------------------------------

FLOATS = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
EXACT = [torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64]
SAMPLES_OF: dict[torch.dtype, list[Any]] = {  # what one rank adds, exactly held by its dtype
    torch.bool: [True, False],
    torch.uint8: [255, 1],
    torch.int8: [127, -128],
    torch.int16: [32767, -5],
    torch.int32: [2**24 + 1, 3],  # float32 rounds 2**24 + 1 to 2**24
    torch.int64: [2**24 + 1, -7],
    torch.float16: [0.5, -1.5],
    torch.bfloat16: [0.5, 2.0],
    torch.float32: [0.5, 0.1],
    torch.float64: [0.25, 0.1],
}


def expected_dtype(kind: str, first: torch.dtype, second: torch.dtype) -> torch.dtype:
    """docs/aggregation.md's precision table: ``first`` values on one rank, ``second`` on one."""
    floats = [dtype for dtype in (first, second) if dtype.is_floating_point]
    integers = [dtype for dtype in (first, second) if not dtype.is_floating_point]
    if torch.float64 in floats or (floats and {torch.int32, torch.int64} & set(integers)):
        return torch.float64  # int32 and int64 values joining floats need float64
    if kind == "cat":
        promoted = torch.promote_types(first, second)
        return (
            torch.promote_types(promoted, torch.float32)
            if torch.int16 in integers and floats
            else promoted
        )
    if floats:
        return torch.float32
    return torch.float64 if kind == "mean" else torch.int64


def expected_value(kind: str, values: list[Any], dtype: torch.dtype) -> Tensor:
    """The value over the concatenated data, computed exactly, then rounded once to ``dtype``."""
    if kind == "cat":
        return torch.tensor([float(value) for value in values], dtype=torch.float64).to(dtype)
    exact = [Fraction(value) for value in values]
    found = {
        "sum": sum(exact),
        "mean": sum(exact) / len(exact),
        "max": max(exact),
        "min": min(exact),
    }[kind]
    if not dtype.is_floating_point:
        assert found.denominator == 1
        return torch.tensor(int(found), dtype=dtype)
    return torch.tensor(float(found), dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("second", FLOATS + EXACT, ids=str)
@pytest.mark.parametrize("first", FLOATS + EXACT, ids=str)
@pytest.mark.parametrize("kind", ["mean", "sum", "min", "max", "cat"])
def test_a_sync_reports_what_a_merge_and_one_process_report(
    kind: str, first: torch.dtype, second: torch.dtype
) -> None:
    # Rank 0 adding int64 2**24 + 1 and rank 1 float32 0.5 synced to a float32 row (the dtype
    # counts said "floats and integers"), while merge_state promoted to float64: a sum of
    # 16777218. against 16777217.5, a max of 16777216. against 16777217.
    batches = [torch.tensor(SAMPLES_OF[dtype]).to(dtype) for dtype in (first, second)]

    def made() -> tt.Objective[Tensor, Tensor]:
        return Rows() if kind == "cat" else tt.Metric(identity, "rows", aggregation=kind)

    ranks = [made() for _ in batches]
    merged, alone = made(), made()
    for metric, batch in zip(ranks, batches, strict=True):
        metric.update(batch, batch)
        alone.update(batch, batch)
        merged.merge_state(copy.deepcopy(metric))  # type: ignore[arg-type]
    simulate_sync([[metric] for metric in ranks])
    dtype = expected_dtype(kind, first, second)
    expected = expected_value(kind, [value for batch in batches for value in batch.tolist()], dtype)
    for objective in (merged, alone, *ranks):
        found = objective.compute()["rows"]
        assert found.dtype == expected.dtype, (found, expected)
        assert found.tolist() == expected.tolist(), (found, expected)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(FLOATS + EXACT + [None]), min_size=1, max_size=5))
def test_synced_dtypes_are_a_fold_of_promote_over_the_ranks(
    dtypes: list[torch.dtype | None],
) -> None:
    # What the added-up dtype counts tell equals promote() folded over the ranks' dtypes in
    # some order (every order, for two ranks; all orders report alike).
    ranks = []
    for dtype in dtypes:
        accumulator = Mean()
        if dtype is not None:
            accumulator.add(torch.zeros(1, dtype=dtype))
        ranks.append(accumulator)
    (synced,) = dtypes_from_counts(sum(rank.dtype_counts() for rank in ranks))
    held = [dtype for dtype in dtypes if dtype is not None]
    folds = set()
    for order in itertools.permutations(held):
        folded: torch.dtype | None = None
        for dtype in order:
            folded = promote(folded, dtype)
        folds.add(folded)
    if not held:
        assert synced is None
        return
    assert synced in folds, (dtypes, synced, folds)
    if len(held) <= 2:
        assert folds == {synced}
    assert synced is not None
    for cls in (Mean, Sum, Min, Max):
        assert {cls().report_dtype(fold) for fold in folds if fold is not None} == {
            cls().report_dtype(synced)
        }


def test_integer_words_from_one_rank_do_not_round_another_ranks_floats() -> None:
    # An integer row's words went as (v - v mod 2**32, v mod 2**32) into the same columns as
    # another rank's float words: 1e-9 + (-(2**32)) rounds to a multiple of 2**-20.
    ranks = [tt.Metric(identity, "Total", aggregation="sum") for _ in range(2)]
    parts = [torch.tensor([1e-9, 2.5e-10], dtype=torch.float64), torch.tensor([-1, 0])]
    for metric, values in zip(ranks, parts, strict=True):
        metric.update(values, values)
    simulate_sync([[metric] for metric in ranks])
    exact = Fraction(1e-9) + Fraction(2.5e-10) - 1
    for metric in ranks:
        assert metric.compute()["Total"].item() == float(exact)


class Shifted(tt.Objective[Tensor, Tensor]):
    """Every sample's output shifted by its batch's mean, kept ('cat'), and that batch mean."""

    def accumulator_for(self, name: str) -> type[Accumulator]:
        return Cat if name == "shifted" else Mean

    def derived_values(self) -> dict[str, tuple[str, ...]]:
        return {"shifted": ("batch",)}

    def calculate(self, outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
        batch = outputs.mean()  # a scalar: the repeat's share of it cannot be dropped
        return {"batch": batch, "shifted": outputs + batch}


def test_a_derived_value_kept_by_cat_keeps_the_repeat_its_sources_keep() -> None:
    # Cat had no keeping_last: the shifted values dropped the repeated sample's entry (5
    # values) while the batch mean they were computed from kept it.
    batches = [[1.0, 2.0, 4.0], [8.0, 16.0, 1.0]]  # 5 samples on 2 ranks: rank 1's last repeats
    ranks = [Shifted(), Shifted()]
    for objective, batch in zip(ranks, batches, strict=True):
        values = torch.tensor(batch)
        objective.update(values, values)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the kept repeat is named in a warning
        simulate_sync([[objective] for objective in ranks], dataset_size=5)
    # every served sample's value, the repeat included (float32, as calculate computes it)
    shifted = torch.cat([torch.tensor(batch) + torch.tensor(batch).mean() for batch in batches])
    served = [value for batch in batches for value in batch]
    for objective in ranks:
        found = objective.compute()
        assert found["shifted"].tolist() == shifted.tolist() and len(shifted) == 6
        assert found["batch"].item() == pytest.approx(sum(served) / len(served), rel=1e-7)


@pytest.mark.parametrize(
    "parts",
    [
        [[2**62, 2**62], [2**62, 2**62]],  # each rank's sum, 2**63, is outside int64
        [[2**62, 2**62], [-(2**62), -(2**62) + 5]],  # back inside int64 over the ranks
    ],
    ids=["outside", "back inside"],
)
def test_integer_sums_outside_int64_on_a_rank_are_not_wrapped_by_the_sync(
    parts: list[list[int]],
) -> None:
    # A rank's integer words go through int64 only while they are below 2**62 in magnitude; a
    # rank's exact sum of 2**63 converted to int64 would wrap to -2**63. Reference: Python ints.
    ranks = [tt.Metric(identity, "Total", aggregation="sum") for _ in parts]
    for metric, values in zip(ranks, parts, strict=True):
        metric.update(torch.tensor(values), torch.zeros(len(values)))
    simulate_sync([[metric] for metric in ranks])
    exact = sum(value for values in parts for value in values)
    inside = -(2**63) <= exact < 2**63
    for metric in ranks:
        found = metric.compute()["Total"]
        assert found.dtype == (torch.int64 if inside else torch.float64)
        assert found.item() == (exact if inside else float(exact))

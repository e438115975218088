"""Tests of torchtally.aggregation: accumulators, their precision policy, merging and export.

References are computed independently: ``math.fsum`` over the values, float64 sums of the
concatenated data, Python integers.
"""

from __future__ import annotations

import copy
import io
import math
import pickle
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

import torchtally as tt
from torchtally.aggregation import (
    ACCUMULATORS,
    Accumulator,
    Cat,
    Max,
    Mean,
    Min,
    StateSpec,
    Sum,
    accumulator_class,
)
from torchtally.errors import (
    DeviceMismatchError,
    IncompatibleStateError,
    ResultShapeError,
    ResultTypeError,
    StateDictError,
    WeightError,
)

BANKED = [Mean, Sum, Min, Max]
ALL = [*BANKED, Cat]


def value_of(accumulator: Accumulator) -> Tensor:
    (value,) = accumulator.reduce()
    return value


# -- what each kind computes --------------------------------------------------------------------


def test_mean_weights_entries() -> None:
    acc = Mean()
    acc.add(torch.tensor([1.0, 2.0, 3.0]))  # three samples of weight 1
    acc.add(torch.tensor([10.0]), torch.tensor([2.0]), samples=2)  # a mean over two samples
    assert value_of(acc).item() == pytest.approx((1 + 2 + 3 + 20) / 5)
    assert acc.samples() == [5]


def test_sum_adds_weighted_entries_and_min_max_exclude_zero_weights() -> None:
    total = Sum()
    total.add(torch.tensor([1.0, 2.0]), torch.tensor([3.0, 0.5]))
    assert value_of(total).item() == 4.0
    highest, lowest = Max(), Min()
    for acc in (highest, lowest):
        acc.add(torch.tensor([1.0, 9.0, -4.0]), torch.tensor([1.0, 0.0, 0.0]))
    assert value_of(highest).item() == 1.0 and value_of(lowest).item() == 1.0


def test_rows_of_one_accumulator_are_independent() -> None:
    acc = Mean(rows=3)
    acc.add(torch.tensor([[1.0, 3.0], [10.0, 20.0]]), rows=[2, 0])
    acc.add(torch.tensor([[5.0]]), rows=[1])
    assert [value.item() for value in acc.reduce()] == [15.0, 5.0, 2.0]
    assert acc.samples() == [2, 1, 2]


@settings(max_examples=60, deadline=None)
@given(
    kind=st.sampled_from([Mean, Sum, Min, Max]),
    rows=st.lists(st.integers(0, 5), min_size=1, max_size=4, unique=True),
    seed=st.integers(0, 2**16),
)
def test_adding_to_some_rows_equals_adding_to_each_row_alone(
    kind: type[Accumulator], rows: list[int], seed: int
) -> None:
    # Evenly spaced ascending rows are changed through views, the others through copies.
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(len(rows), 5, generator=generator)
    together, alone = kind(rows=6), kind(rows=6)
    together.add(values, rows=rows)
    together.add(values * 2, rows=rows)
    for line, row in enumerate(rows):
        alone.add(values[line], rows=[row])
        alone.add(values[line] * 2, rows=[row])
    assert together.samples() == alone.samples()
    for mine, theirs in zip(together.reduce(), alone.reduce(), strict=True):
        torch.testing.assert_close(mine, theirs, equal_nan=True, rtol=0, atol=0)


class OutOfPlaceSum(Sum):
    """A user's accumulator whose ``_add`` rebinds its state entries instead of changing them."""

    def _add(
        self,
        state: dict[str, Tensor],
        values: Tensor,
        weights: Tensor | None,
        samples: Any,
        droppable: bool,
    ) -> None:
        sums = values.sum(tuple(range(1, values.ndim)), dtype=torch.float64)
        state["total"] = state["total"] + torch.stack([sums, torch.zeros_like(sums)], 1)
        state["samples"] = state["samples"] + samples


@pytest.mark.parametrize("rows", [None, [0, 2], [2, 0], [1]])
def test_an_add_that_rebinds_state_entries_changes_the_targeted_rows(
    rows: list[int] | None,
) -> None:
    # All rows, evenly spaced rows (views), other rows (copies): each keeps what _add rebinds.
    targets = [0, 1, 2] if rows is None else rows
    acc = OutOfPlaceSum(rows=3)
    acc.add(torch.arange(len(targets) * 2.0).reshape(len(targets), 2), rows=rows)
    expected = [math.nan] * 3
    for line, row in enumerate(targets):
        expected[row] = 4.0 * line + 1.0
    assert [value.item() for value in acc.reduce()] == pytest.approx(expected, nan_ok=True)
    assert acc.samples() == [2 if row in targets else 0 for row in range(3)]


def test_entries_may_have_several_dimensions() -> None:
    acc = Mean(rows=2)
    acc.add(torch.arange(12.0).reshape(2, 2, 3))  # (rows, batches, samples)
    assert [value.item() for value in acc.reduce()] == [2.5, 8.5]
    extremes = Max(rows=2)
    extremes.add(torch.arange(12).reshape(2, 2, 3))
    assert [value.item() for value in extremes.reduce()] == [5, 11]


def test_cat_keeps_rows_in_order_with_trailing_dimensions() -> None:
    acc = Cat()
    acc.add(torch.tensor([[[0.1, 0.9], [0.3, 0.7]]]))
    acc.add(torch.tensor([[[0.5, 0.5]]]))
    torch.testing.assert_close(
        value_of(acc), torch.tensor([[0.1, 0.9], [0.3, 0.7], [0.5, 0.5]]), rtol=0, atol=0
    )


def test_cat_refuses_another_trailing_shape_and_weights() -> None:
    acc = Cat()
    acc.add(torch.zeros(1, 2, 3))
    with pytest.raises(ResultShapeError, match=r"trailing shape.*\(3,\).*\(4,\)"):
        acc.add(torch.zeros(1, 2, 4))
    with pytest.raises(WeightError, match="cannot weight"):
        acc.add(torch.zeros(1, 2, 3), torch.ones(2))
    assert value_of(acc).shape == (2, 3)  # the refused values were not kept


@pytest.mark.parametrize("cls", BANKED)
def test_reduce_before_any_value_is_nan(cls: type[Accumulator]) -> None:
    acc = cls(rows=2)
    assert all(math.isnan(value.item()) for value in acc.reduce())
    acc.add(torch.tensor([1.0]), rows=[0])
    first, second = acc.reduce()
    assert first.item() == 1.0 and math.isnan(second.item())


def test_cat_before_any_value_is_empty() -> None:
    assert value_of(Cat()).shape == (0,)


def test_wrong_shapes_and_weights_are_refused() -> None:
    acc = Mean(rows=2)
    with pytest.raises(ResultShapeError, match=r"\(2, T\).*\(3, 4\)"):
        acc.add(torch.zeros(3, 4))
    with pytest.raises(WeightError, match=r"\(4,\).*\(3,\)"):
        acc.add(torch.zeros(2, 4), torch.ones(3))
    assert all(math.isnan(value.item()) for value in acc.reduce())


def test_add_keeps_no_reference_to_its_arguments() -> None:
    for cls in ALL:
        acc = cls()
        values = torch.tensor([1.0, 2.0])
        acc.add(values)
        before = value_of(acc).clone()
        values.mul_(100)
        torch.testing.assert_close(value_of(acc), before, rtol=0, atol=0)
        value_of(acc).mul_(7)  # nor does reduce return the state
        torch.testing.assert_close(value_of(acc), before, rtol=0, atol=0)


# -- the precision policy -----------------------------------------------------------------------

FLOATS = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
EXACT = [torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64]

# (kind, input dtype) -> reported dtype: the table of docs/aggregation.md.
POLICY: dict[tuple[type[Accumulator], torch.dtype], torch.dtype] = {}
for _dtype in FLOATS:
    _report = torch.float64 if _dtype == torch.float64 else torch.float32
    for _cls in BANKED:
        POLICY[(_cls, _dtype)] = _report
for _dtype in EXACT:
    POLICY[(Mean, _dtype)] = torch.float64
    for _cls in (Sum, Min, Max):
        POLICY[(_cls, _dtype)] = torch.int64


@pytest.mark.parametrize(
    ("cls", "dtype"), sorted(POLICY, key=str), ids=lambda item: getattr(item, "kind", str(item))
)
def test_reported_dtype_follows_the_policy(cls: type[Accumulator], dtype: torch.dtype) -> None:
    acc = cls()
    acc.add(torch.tensor([1, 0, 1]).to(dtype))
    assert value_of(acc).dtype == POLICY[(cls, dtype)]
    assert acc.report_dtype(dtype) == POLICY[(cls, dtype)]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.int64])
def test_cat_keeps_the_values_dtype(dtype: torch.dtype) -> None:
    acc = Cat()
    acc.add(torch.tensor([1, 2]).to(dtype))
    assert value_of(acc).dtype == dtype


def largest_exact(dtype: torch.dtype) -> int:
    """The largest integer of ``dtype`` that the accumulators must keep exactly."""
    return 1 if dtype == torch.bool else min(torch.iinfo(dtype).max, 2**53)


@pytest.mark.parametrize("integer", EXACT, ids=str)
@pytest.mark.parametrize("floating", FLOATS, ids=str)
@pytest.mark.parametrize("cls", ALL, ids=lambda cls: cls.kind)
def test_integers_joined_by_floats_keep_their_values(
    cls: type[Accumulator], floating: torch.dtype, integer: torch.dtype
) -> None:
    # torch promotes int64 with float16 to float16: a concatenation of 4097 and 1.5 reported
    # 4096 in float16, a max of 2**24 + 1 and 0.5 reported 2**24. The row's dtype holds both.
    big, small = largest_exact(integer), 0.5
    for first, second in ((integer, floating), (floating, integer)):
        acc = cls()
        for dtype in (first, second):
            acc.add(torch.tensor([big if dtype == integer else small]).to(dtype))
        reported = value_of(acc)
        if cls is Cat:
            expected = [big, small] if first == integer else [small, big]
            assert reported.tolist() == expected, (reported, reported.dtype)
        elif cls in (Max, Min):
            assert reported.item() == (big if cls is Max else small), (reported, reported.dtype)
        else:  # the exact result is representable in float64; in float32 when it fits
            exact = Fraction(big) + Fraction(small)
            if cls is Mean:
                exact /= 2
            held = reported.dtype
            rounded = torch.tensor(float(exact), dtype=torch.float64).to(held)
            assert reported.item() == rounded.item()
            assert held == torch.float64 or integer in EXACT[:4]  # bool to int16: in float32


def test_half_precision_sums_do_not_overflow() -> None:
    # float16 cannot hold 100,000 (its largest value is 65,504): the state is float64.
    acc = Sum()
    for _ in range(100):
        acc.add(torch.ones(1000, dtype=torch.float16))
    assert value_of(acc).item() == 100_000.0 and value_of(acc).dtype == torch.float32


def test_integer_sums_minima_and_maxima_are_exact() -> None:
    beyond_float32 = 16_777_217  # 2**24 + 1: float32 rounds it to 16,777,216
    total, highest, lowest = Sum(), Max(), Min()
    for acc in (total, highest, lowest):
        acc.add(torch.tensor([beyond_float32, 3]))
    assert value_of(total).item() == beyond_float32 + 3 and value_of(total).dtype == torch.int64
    assert value_of(highest).item() == beyond_float32
    assert value_of(lowest).item() == 3
    huge = Max()
    huge.add(torch.tensor([2**62 + 1, 5]))  # beyond float64's integers too
    assert value_of(huge).item() == 2**62 + 1
    many = Sum()
    for _ in range(1000):
        many.add(torch.full((1000,), 2**40 + 1, dtype=torch.int64))
    assert value_of(many).item() == 1000 * 1000 * (2**40 + 1)  # > 2**53: still exact


@pytest.mark.parametrize("dtype", EXACT)
@pytest.mark.parametrize("cls", [Min, Max])
def test_weighted_integer_minima_and_maxima_are_exact_in_every_integer_dtype(
    cls: type[Accumulator], dtype: torch.dtype
) -> None:
    # The excluded entries were replaced by int64's extreme in the values' own dtype: a raw
    # RuntimeError for 8- to 32-bit integers.
    values = [1, 0, 1, 0] if dtype == torch.bool else [3, 100, 7, 5]
    weights = [1.0, 0.0, 2.0, 0.5]
    acc = cls()
    acc.add(torch.tensor(values).to(dtype), torch.tensor(weights))
    acc.add(torch.tensor(values[:2]).to(dtype), torch.tensor(0.5).expand(2))
    kept = [value for value, weight in zip(values, weights, strict=True) if weight > 0]
    expected = (min if cls is Min else max)(kept + values[:2])
    assert value_of(acc).dtype == torch.int64 and value_of(acc).item() == expected


def test_a_weighted_integer_sum_is_reported_in_float64_and_an_unweighted_one_stays_exact() -> None:
    # Weighted integers are no longer integers: int64 truncated 0.3 + 0.3 to 0.
    values, weights = [True, False, True, True], [0.3, 1.0, 0.3, 0.125]
    weighted = Sum()
    weighted.add(torch.tensor(values[:3]), torch.tensor(weights[:3]))
    weighted.add(torch.tensor(values[3:]), torch.tensor(weights[3:]))
    given = torch.tensor(weights).tolist()  # the float32 weights, exactly
    expected = sum(Fraction(v) * Fraction(w) for v, w in zip(values, given, strict=True))
    assert value_of(weighted).dtype == torch.float64
    assert value_of(weighted).item() == pytest.approx(float(expected), rel=1e-15)
    # once weighted, always float64: later unweighted entries, merges and loads keep it
    weighted.add(torch.tensor([2**40 + 1]))
    mixed = Sum()
    mixed.add(torch.tensor([5], dtype=torch.int32))
    mixed.merge(weighted)
    reloaded = Sum()
    reloaded.load(*weighted.export())
    for acc in (weighted, mixed, reloaded):
        assert value_of(acc).dtype == torch.float64
    assert value_of(mixed).item() == pytest.approx(float(expected + 2**40 + 6), rel=1e-15)
    exact = Sum()
    for _ in range(3):
        exact.add(torch.tensor([2**52 + 1], dtype=torch.int64))  # beyond float64's integers
    assert value_of(exact).dtype == torch.int64 and value_of(exact).item() == 3 * 2**52 + 3


def test_bfloat16_mean_is_reported_from_its_exact_float64_mean() -> None:
    values = torch.rand(997, generator=torch.Generator().manual_seed(3)).bfloat16()
    acc = Mean()
    for chunk in values.split(100):
        acc.add(chunk)
    expected = math.fsum(values.double().tolist()) / len(values)
    assert value_of(acc).item() == torch.tensor(expected, dtype=torch.float32).item()


def test_infinities_propagate_as_in_torch() -> None:
    for cls in (Mean, Sum):
        positive = cls()
        positive.add(torch.tensor([1.0, 2.0]))
        positive.add(torch.tensor([math.inf]))
        positive.add(torch.tensor([3.0]))
        assert value_of(positive).item() == math.inf
        negative = cls()
        negative.add(torch.tensor([-math.inf, 1.0]))
        assert value_of(negative).item() == -math.inf
        both = cls()
        both.add(torch.tensor([math.inf]))
        both.add(torch.tensor([-math.inf]))
        assert math.isnan(value_of(both).item())
        assert math.isnan(torch.tensor([math.inf, -math.inf]).mean().item())  # as torch does
    highest = Max()
    highest.add(torch.tensor([math.inf, 1.0]))
    assert value_of(highest).item() == math.inf


@pytest.mark.parametrize("cls", [Mean, Sum])
def test_a_weight_of_zero_excludes_nan_and_infinities(cls: type[Accumulator]) -> None:
    # NaN x 0 and inf x 0 are NaN: a weight of 0 must leave the entry out, not multiply it.
    acc = cls()
    acc.add(torch.tensor([math.nan, 1.0, math.inf]), torch.tensor([0.0, 2.0, 0.0]))
    acc.add(torch.tensor([[-math.inf]]), torch.tensor([0.0]), samples=4)  # a batch mean
    acc.add(torch.tensor([3.0]))
    expected = (2 * 1.0 + 3.0) / (3.0 if cls is Mean else 1.0)
    assert value_of(acc).item() == torch.tensor(expected, dtype=torch.float32).item()
    # the dropped last entry (sync(dataset_size=)) was excluded too: nothing to take out
    dropped = cls()
    dropped.add(torch.tensor([4.0, math.nan]), torch.tensor([1.0, 0.0]), droppable=True)
    assert value_of(dropped.without_last()[0]).item() == 4.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.int32, torch.bool])
@pytest.mark.parametrize("cls", [Min, Max])
def test_minima_and_maxima_of_all_zero_weights_are_nan(
    cls: type[Accumulator], dtype: torch.dtype
) -> None:
    # Nothing included: NaN as for an empty row (it reported int64's extreme or -inf/inf).
    excluded = cls(rows=2)
    excluded.add(torch.tensor([[1, 0], [3, 1]]).to(dtype), torch.tensor([0.0, 0.0]))
    excluded.add(torch.tensor([[0, 1]]).to(dtype), torch.tensor([0.0, 2.0]), rows=[1])
    nothing, kept = excluded.reduce()
    assert math.isnan(nothing.item()) and kept.item() == 1
    again = cls(rows=2)
    again.load(*excluded.export())
    merged = cls(rows=2)
    merged.merge(excluded)
    merged.merge(cls(rows=2))  # an empty state changes nothing
    for acc in (again, merged):
        assert [value.item() for value in acc.reduce()] == pytest.approx([math.nan, 1], nan_ok=True)
    included = cls(rows=2)
    included.add(torch.tensor([[1], [0]]).to(dtype))  # unweighted: included
    merged.merge(included)
    assert [value.item() for value in merged.reduce()] == [1, 1 if cls is Max else 0]


def test_nan_propagates() -> None:
    acc = Mean()
    acc.add(torch.tensor([1.0, math.nan]))
    acc.add(torch.tensor([2.0]))
    assert math.isnan(value_of(acc).item())


def test_compensated_sum_recovers_what_plain_float64_loses() -> None:
    acc = Sum()
    plain = 0.0
    for value in (1e16, 1.0, -1e16, 1.0):
        acc.add(torch.tensor([value], dtype=torch.float64))
        plain += value
    assert plain == 1.0  # float64 lost the first 1
    assert value_of(acc).item() == 2.0


def test_mean_of_ten_million_float32_samples_matches_an_exact_reference() -> None:
    generator = torch.Generator().manual_seed(0)
    values = torch.rand(10_000_000, generator=generator) * 1000 + 1e4
    acc = Mean()
    for chunk in values.split(65_536):
        acc.add(chunk)
    reference = math.fsum(values.double().tolist()) / len(values)
    _, tensors = acc.export()
    state = dict(zip([spec.name for spec in Mean.states], tensors, strict=True))
    from_state = (state["total"][0, 0] + state["total"][0, 1]).item() / state["weight"][0, 0].item()
    assert abs(from_state - reference) / reference < 1e-12
    assert value_of(acc).item() == torch.tensor(reference, dtype=torch.float32).item()


@pytest.mark.parametrize("cls", BANKED)
def test_state_size_does_not_grow_with_updates(cls: type[Accumulator]) -> None:
    acc = cls()
    acc.add(torch.ones(10))
    first = sum(tensor.numel() for tensor in acc.export()[1])
    for _ in range(100):
        acc.add(torch.ones(10))
    assert sum(tensor.numel() for tensor in acc.export()[1]) == first


# -- merging ------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", ALL)
def test_merge_adds_the_other_state_and_leaves_it_unchanged(cls: type[Accumulator]) -> None:
    left, right, both = cls(), cls(), cls()
    left.add(torch.tensor([1.0, 5.0]))
    right.add(torch.tensor([3.0, -2.0, 8.0]))
    both.add(torch.tensor([1.0, 5.0]))
    both.add(torch.tensor([3.0, -2.0, 8.0]))
    before = value_of(right).clone()
    left.merge(right)
    torch.testing.assert_close(value_of(left), value_of(both), rtol=0, atol=0)
    torch.testing.assert_close(value_of(right), before, rtol=0, atol=0)
    assert left.samples() == [5]


@pytest.mark.parametrize("cls", ALL)
def test_merge_with_empty_states(cls: type[Accumulator]) -> None:
    full, empty = cls(), cls()
    full.add(torch.tensor([2.0, 4.0]))
    expected = value_of(full).clone()
    full.merge(empty)
    torch.testing.assert_close(value_of(full), expected, rtol=0, atol=0)
    empty.merge(full)
    torch.testing.assert_close(value_of(empty), expected, rtol=0, atol=0)


def test_merge_maps_rows() -> None:
    mine, theirs = Mean(rows=3), Mean(rows=2)
    mine.add(torch.tensor([[1.0], [2.0], [3.0]]))
    theirs.add(torch.tensor([[10.0], [20.0]]))
    mine.merge(theirs, rows=[2, 0])
    assert [value.item() for value in mine.reduce()] == [10.5, 2.0, 6.5]


def test_merge_refuses_another_kind_or_row_count() -> None:
    with pytest.raises(IncompatibleStateError, match=r"'max'.*'mean'"):
        Mean().merge(Max())
    with pytest.raises(IncompatibleStateError, match="2 rows"):
        Mean().merge(Mean(rows=2))


@pytest.mark.parametrize("cls", ALL)
def test_a_refused_merge_of_rows_changes_nothing(cls: type[Accumulator]) -> None:
    # Cat.merge checked no row map: rows=[0] for a 2-row state merged row 0 and silently left
    # row 1 out ([1, 10] and [2]: what neither state holds), an unknown row raised IndexError
    # after merging the rows before it. Every kind refuses both, as Mean does.
    mine, theirs = cls(rows=2), cls(rows=2)
    mine.add(torch.tensor([[1.0], [2.0]]))
    theirs.add(torch.tensor([[10.0], [20.0]]))
    before = [value.clone() for value in mine.reduce()]
    for rows in ([0], [0, 5], [0, 1, 1]):
        with pytest.raises(IncompatibleStateError, match=rf"2 rows into rows \[{rows[0]}"):
            mine.merge(theirs, rows=rows)
        assert all(map(torch.equal, mine.reduce(), before)), rows
        assert mine.samples() == [1, 1]


def test_a_cat_merge_refused_for_one_rows_shape_changes_no_row() -> None:
    # Row 0 was merged before row 1's trailing shape was refused: the refused merge left
    # row 0 with the other's values, and an objective's merge_state with them.
    mine, theirs = Cat(rows=2), Cat(rows=2)
    mine.add(torch.ones(2, 1, 3))
    theirs.add(torch.full((1, 1, 3), 5.0), rows=[0])
    theirs.add(torch.full((1, 1, 4), 5.0), rows=[1])
    with pytest.raises(IncompatibleStateError, match=r"Cat row 1.*\(4,\).*\(3,\)"):
        mine.merge(theirs)
    assert [value.tolist() for value in mine.reduce()] == [[[1.0] * 3], [[1.0] * 3]]
    assert mine.samples() == [1, 1]


def test_merge_moves_the_other_state_to_this_device() -> None:
    mine, theirs = Mean(), Mean()
    mine.add(torch.ones(2, device="meta"))
    theirs.add(torch.ones(3))
    mine.merge(theirs)
    assert value_of(mine).device.type == "meta"


finite = st.floats(-1e6, 1e6, allow_nan=False, width=32)
exact = st.integers(-(2**20), 2**20).map(float)  # exactly representable, sums too


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(exact, min_size=1, max_size=8), min_size=1, max_size=8))
def test_streamed_sums_and_means_equal_the_concatenation(batches: list[list[float]]) -> None:
    total, mean = Sum(), Mean()
    for batch in batches:
        total.add(torch.tensor(batch, dtype=torch.float64))
        mean.add(torch.tensor(batch, dtype=torch.float64))
    every = [value for batch in batches for value in batch]
    assert value_of(total).item() == sum(every)
    assert value_of(mean).item() == pytest.approx(sum(every) / len(every), rel=1e-15)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(finite, st.floats(0, 10, allow_nan=False)), min_size=1, max_size=40),
    st.lists(st.integers(1, 5), min_size=1, max_size=10),
)
def test_weighted_streaming_equals_the_weighted_mean_of_the_concatenation(
    pairs: list[tuple[float, float]], splits: list[int]
) -> None:
    values = torch.tensor([value for value, _ in pairs], dtype=torch.float64)
    weights = torch.tensor([weight for _, weight in pairs], dtype=torch.float64)
    acc = Mean()
    start = 0
    for size in splits * len(pairs):
        if start >= len(pairs):
            break
        acc.add(values[start : start + size], weights[start : start + size])
        start += size
    if start < len(pairs):
        acc.add(values[start:], weights[start:])
    total_weight = math.fsum(weights.tolist())
    if total_weight == 0:
        assert math.isnan(value_of(acc).item())  # 0 / 0: all samples excluded
    else:
        expected = math.fsum((values * weights).tolist()) / total_weight
        assert value_of(acc).item() == pytest.approx(expected, rel=1e-12, abs=1e-9)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(finite, min_size=1, max_size=5), min_size=2, max_size=6), st.data())
def test_merging_states_split_any_way_equals_one_stream(
    batches: list[list[float]], data: st.DataObject
) -> None:
    cut = data.draw(st.integers(1, len(batches) - 1))
    for cls in (Mean, Min, Max, Cat):
        stream, left, right = cls(), cls(), cls()
        for index, batch in enumerate(batches):
            values = torch.tensor(batch)
            stream.add(values)
            (left if index < cut else right).add(values)
        left.merge(right)
        torch.testing.assert_close(value_of(left), value_of(stream), rtol=1e-12, atol=1e-9)


# -- export, load, devices ----------------------------------------------------------------------


def filled(cls: type[Accumulator]) -> Accumulator:
    acc = cls(rows=2)
    if cls is Cat:
        acc.add(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    else:
        acc.add(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        acc.add(torch.tensor([[7, 1]]), rows=[1])
    return acc


@pytest.mark.parametrize("cls", ALL)
def test_export_and_load_round_trip(cls: type[Accumulator]) -> None:
    original = filled(cls)
    restored = cls()
    restored.load(*original.export())
    for mine, theirs in zip(restored.reduce(), original.reduce(), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=0)
    assert restored.samples() == original.samples()


@pytest.mark.parametrize("cls", ALL)
def test_copies_pickles_and_torch_save_round_trip(cls: type[Accumulator]) -> None:
    original = filled(cls)
    buffer = io.BytesIO()
    torch.save(original, buffer)
    buffer.seek(0)
    for duplicate in (
        original.copy(),
        copy.deepcopy(original),
        pickle.loads(pickle.dumps(original)),
        torch.load(buffer, weights_only=False),
    ):
        duplicate.add(torch.zeros(2, 1))  # the copy moves on alone
        for mine, theirs in zip(filled(cls).reduce(), original.reduce(), strict=True):
            torch.testing.assert_close(mine, theirs, rtol=0, atol=0)


@pytest.mark.parametrize("cls", ALL)
def test_empty_state_round_trips(cls: type[Accumulator]) -> None:
    restored = cls()
    restored.load(*cls(rows=3).export())
    assert restored.rows == 3 and restored.samples() == [0, 0, 0]


def damaged(change: Callable[[dict[str, Any], list[Tensor]], None]) -> tuple[Any, list[Any]]:
    meta, tensors = filled(Mean).export()
    tensors = list(tensors)
    change(meta, tensors)
    return meta, tensors


SAMPLES = [spec.name for spec in Mean.states].index("samples")
TOTAL = [spec.name for spec in Mean.states].index("total")


@pytest.mark.parametrize(
    ("meta_tensors", "message"),
    [
        (damaged(lambda m, t: m.update(kind="max")), "expected a 'mean' state, found 'max'"),
        (damaged(lambda m, t: m.update(rows=-1)), "row count >= 0"),
        (damaged(lambda m, t: m.update(dtypes=["float32", "Tensor"])), "unknown dtype names"),
        (damaged(lambda m, t: t.pop(TOTAL)), "expected 4 state tensors"),
        (damaged(lambda m, t: t.__setitem__(TOTAL, t[TOTAL][:, :1])), "'total' must be (2, 2)"),
        (
            damaged(lambda m, t: t.__setitem__(SAMPLES, torch.tensor([[2.7], [1.0]]))),
            "'samples' must be (2, 1) int64",
        ),
        (
            damaged(lambda m, t: t.__setitem__(SAMPLES, torch.tensor([[-2], [1]]))),
            "sample counts must be >= 0",
        ),
        (damaged(lambda m, t: t.__setitem__(TOTAL, "high and low")), "must be a tensor"),
    ],
)
def test_loading_a_damaged_state_raises_and_changes_nothing(
    meta_tensors: tuple[Any, list[Any]], message: str
) -> None:
    acc = filled(Mean)
    before = [value.clone() for value in acc.reduce()]
    with pytest.raises(StateDictError) as info:
        acc.load(*meta_tensors)
    assert message in str(info.value)
    for mine, theirs in zip(acc.reduce(), before, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=0)


def test_loading_cat_values_of_another_dtype_than_their_metadata_is_refused() -> None:
    # A checkpoint whose tensors were halved to save space: a mean refuses it; a
    # concatenation reported the halved values (0.1 became 0.0999755859375) as float16.
    original = Cat()
    original.add(torch.tensor([0.1, 0.5]))
    meta, tensors = original.export()
    acc = Cat()
    acc.add(torch.tensor([1.0]))
    for changed in (tensors[0].half(), tensors[0].double(), tensors[0].long()):
        with pytest.raises(StateDictError, match=r"row 0 holds .* values.*says float32"):
            acc.load(meta, [changed])
        assert value_of(acc).tolist() == [1.0] and value_of(acc).dtype == torch.float32
    acc.load(meta, tensors)
    torch.testing.assert_close(value_of(acc), torch.tensor([0.1, 0.5]), rtol=0, atol=0)


@pytest.mark.parametrize("cls", ALL, ids=lambda cls: cls.kind)
def test_a_dtype_no_state_holds_is_refused_where_a_row_would_record_it(
    cls: type[Accumulator],
) -> None:
    # Sum().add(uint16 values) was kept and exported as 'uint16', which load refuses.
    acc = cls(rows=2)
    with pytest.raises(ResultTypeError, match=r"uint16"):
        acc.add(torch.tensor([[1, 2], [3, 4]], dtype=torch.uint16))
    assert acc.dtypes == [None, None]
    acc.add(torch.tensor([[5, 6], [7, 8]]))
    restored = cls(rows=2)
    restored.load(*acc.export())  # everything recorded loads back
    expected = {Mean: [5.5, 7.5], Sum: [11, 15], Min: [5, 7], Max: [6, 8]}.get(cls)
    found = [value.tolist() for value in restored.reduce()]
    assert found == (expected if expected is not None else [[5, 6], [7, 8]])
    assert restored.dtypes == [torch.int64, torch.int64]


@pytest.mark.parametrize("cls", ALL)
def test_to_moves_the_state(cls: type[Accumulator]) -> None:
    acc = filled(cls)
    acc.to("meta")
    assert all(value.device.type == "meta" for value in acc.reduce())


def test_values_from_another_device_raise_device_mismatch() -> None:
    acc = Mean()
    acc.add(torch.ones(2))
    with pytest.raises(DeviceMismatchError, match=r"cpu.*meta.*\.to\('meta'\)"):
        acc.add(torch.ones(2, device="meta"))
    acc.reset()
    acc.add(torch.ones(2, device="meta"))  # after a reset the state may live anywhere
    assert value_of(acc).device.type == "meta"


@pytest.mark.parametrize("dtype", [torch.float32, torch.int64], ids=str)
@pytest.mark.parametrize("cls", BANKED, ids=lambda cls: cls.kind)
def test_a_negative_tensor_weight_does_what_the_docs_say(
    cls: type[Accumulator], dtype: torch.dtype
) -> None:
    # docs/aggregation.md said minima and maxima include an entry of negative weight; they
    # leave it out, as one of weight 0. Means and sums give NaN.
    acc = cls()
    acc.add(torch.tensor([5, 1, 3]).to(dtype), torch.tensor([-1.0, 1.0, 2.0]))
    found = value_of(acc).item()
    expected = {Min: 1, Max: 3}.get(cls)
    assert math.isnan(found) if expected is None else found == expected


def test_cat_values_from_another_device_raise_device_mismatch_and_change_nothing() -> None:
    # The first mismatch moved the device silently (and made an empty state), the next
    # add of the original device's values raised StopIteration.
    acc = Cat(rows=1)
    acc.add(torch.tensor([1.0, 2.0]))
    with pytest.raises(DeviceMismatchError, match=r"cpu.*meta.*\.to\('meta'\)"):
        acc.add(torch.ones(2, device="meta"))
    assert acc.device == torch.device("cpu")
    acc.add(torch.tensor([3.0]))
    assert value_of(acc).tolist() == [1.0, 2.0, 3.0] and acc.samples() == [3]
    acc.reset()
    acc.add(torch.ones(2, device="meta"))  # after a reset the values may live anywhere
    assert value_of(acc).device.type == "meta"


def test_grow_adds_empty_rows() -> None:
    acc = Mean()
    acc.add(torch.tensor([4.0]))
    assert acc.grow(["new"]) == 1
    first, second = acc.reduce()
    assert first.item() == 4.0 and math.isnan(second.item())
    assert acc.labels[-1] == "new"


@pytest.mark.parametrize("cls", ALL)
def test_entries_for_no_row_change_nothing(cls: type[Accumulator]) -> None:
    """Adding ``(0, T)`` entries to no row (an accumulator without rows yet) is a no-op."""
    empty = cls(rows=0)
    empty.add(torch.ones(0, 3))
    assert empty.state is None and empty.reduce() == [] and empty.samples() == []
    held = cls(rows=2)
    held.add(torch.tensor([[1, 2], [3, 4]]))
    held.add(torch.ones(0, 3, dtype=torch.int64), rows=[])
    assert held.samples() == [2, 2]
    assert [value.tolist() for value in held.reduce()] == [
        value.tolist() for value in _fed(cls, torch.tensor([[1, 2], [3, 4]])).reduce()
    ]


def _fed(cls: type[Accumulator], values: Tensor) -> Accumulator:
    accumulator = cls(rows=values.shape[0])
    accumulator.add(values)
    return accumulator


# -- declarations -------------------------------------------------------------------------------


def test_every_kind_is_registered_and_declares_samples() -> None:
    assert {"mean": Mean, "sum": Sum, "min": Min, "max": Max, "cat": Cat} == ACCUMULATORS
    for cls in BANKED:
        assert cls.states[0] == StateSpec("samples", 1, torch.int64, "sum")
        assert all(spec.rule in ("sum", "twosum", "min", "max", "latest") for spec in cls.states)


def test_accumulator_class_accepts_kinds_and_classes_only() -> None:
    assert accumulator_class("max", "x") is Max
    assert accumulator_class(Sum, "x") is Sum
    with pytest.raises(ValueError, match=r"Metric 'X'.*'median'"):
        accumulator_class("median", "Metric 'X'")


@settings(max_examples=60, deadline=None)
@given(
    batches=st.lists(
        st.lists(st.integers(-1000, 1000), min_size=1, max_size=6), min_size=1, max_size=4
    ),
    weighted=st.booleans(),
    rows=st.sampled_from([None, (0, 2), (1,), (2, 0)]),
)
def test_mean_without_last_drops_exactly_the_last_sample_of_the_last_batch(
    batches: list[list[int]], weighted: bool, rows: tuple[int, ...] | None
) -> None:
    """The last entry Mean keeps (value, weight, droppable) is the last sample's, on any rows.

    Reference: Python fractions of the data with the last sample left out.
    """
    acc = Mean(rows=3)
    lines = 3 if rows is None else len(rows)
    kept: list[tuple[int, int]] = []  # (value, weight) per sample; every line holds them
    for index, batch in enumerate(batches):
        values = torch.tensor(batch, dtype=torch.float32) / 8
        weights = torch.tensor(
            [1 + (index + at) % 3 for at in range(len(batch))], dtype=torch.float64
        )
        acc.add(
            values.expand(lines, -1),
            weights if weighted else None,
            rows=rows,
            droppable=True,
        )
        kept += [
            (value, int(weight) if weighted else 1)
            for value, weight in zip(batch, weights.tolist(), strict=True)
        ]
    copied, dropped = acc.without_last()
    touched = [0, 1, 2] if rows is None else sorted(rows)
    assert dropped.tolist() == [row in touched for row in range(3)]
    remaining = kept[:-1]
    for row, value in enumerate(copied.reduce()):
        if row not in touched or not remaining:
            assert value.isnan()
        else:
            expected = sum(Fraction(v, 8) * w for v, w in remaining) / sum(w for _, w in remaining)
            assert value.item() == pytest.approx(float(expected), rel=1e-6)
    assert [value.item() for value in acc.reduce()] == pytest.approx(
        [
            float(sum(Fraction(v, 8) * w for v, w in kept) / sum(w for _, w in kept))
            if row in touched
            else math.nan
            for row in range(3)
        ],
        nan_ok=True,
    )


def test_integer_sums_past_two_to_the_53_stay_exact() -> None:
    # Each batch was summed in float64 first: [2**53, 1, 1] gave 2**53 (truth 2**53 + 2), and a
    # single 2**53 + 1 gave 2**53.
    big = 2**53
    batches = [[big, 1, 1], [big + 1], [3 * big + 7, -big], [1] * 5]
    total = Sum()
    mean = Mean()
    for batch in batches:
        total.add(torch.tensor(batch, dtype=torch.int64))
        mean.add(torch.tensor(batch, dtype=torch.int64))
    expected = sum(sum(batch) for batch in batches)
    assert total.reduce()[0].dtype == torch.int64
    assert int(total.reduce()[0]) == expected
    count = sum(len(batch) for batch in batches)
    assert float(mean.reduce()[0]) == float(Fraction(expected, count))


def test_int64_entries_whose_sum_passes_int64_do_not_wrap_around() -> None:
    # Each fold summed int64 entries in int64, which wrapped: the mean of [2**62, 2**62, 5]
    # was -3.07e18 (truth 3.07e18), and through an objective's queue three batches of
    # [2**62, 2**62] gave a mean of -1.54e18 (truth 2**62).
    batches = [[2**62, 2**62, 5], [-(2**63), -(2**63) + 1], [2**63 - 1, 2**63 - 1, 2**63 - 1]]
    mean = Mean()
    for batch in batches:
        mean.add(torch.tensor(batch, dtype=torch.int64))
    every = [value for batch in batches for value in batch]
    assert float(mean.reduce()[0]) == float(Fraction(sum(every), len(every)))
    metric = tt.Metric(lambda o, t: o, "Mean")
    for _ in range(3):
        metric.update(torch.tensor([2**62, 2**62]), torch.zeros(2))
    assert metric.compute()["Mean"].item() == float(2**62)
    total = Sum()  # a first fold past int64 (it wrapped to -2**63), then back below
    total.add(torch.tensor([2**62, 2**62]))
    total.add(torch.tensor([-(2**62), -(2**62) + 5]))
    assert value_of(total).dtype == torch.int64 and value_of(total).item() == 5


def test_an_integer_sum_outside_int64_is_reported_in_float64_not_wrapped() -> None:
    # The two words held the exact sum, converted to int64 it wrapped around: three batches of
    # 2**62 summed to -4611686018427387904 (truth 13835058055282163712).
    total = tt.Metric(lambda o, t: o, "Total", aggregation="sum")
    for _ in range(3):
        total.update(torch.tensor([2**62]), torch.zeros(1))
    reported = total.compute()["Total"]
    assert reported.dtype == torch.float64 and reported.item() == float(3 * 2**62)
    below = Sum()  # as close to the edge as int64 goes: still exact int64
    below.add(torch.tensor([2**63 - 1, 2**63 - 1]))
    below.add(torch.tensor([-(2**63)]))
    assert value_of(below).dtype == torch.int64 and value_of(below).item() == 2**63 - 2
    merged = Sum()
    merged.add(torch.tensor([-(2**63)], dtype=torch.int64))
    merged.merge(below)
    merged.merge(below)
    assert value_of(merged).dtype == torch.int64 and value_of(merged).item() == 2**63 - 4
    merged.merge(below)  # past int64 now
    assert value_of(merged).dtype == torch.float64
    assert value_of(merged).item() == float(2 * 2**63 - 6)


def test_an_integer_sum_inside_int64_whose_high_word_is_outside_is_exact() -> None:
    # The float64 high word rounds past -2**63 while the low word brings the sum back inside:
    # converting the high word to int64 has no right answer (x86 gives -2**63), so
    # [-2**63], [-1025], [1000], [1000] in four folds summed to -2**63 + 3023 (truth
    # -2**63 + 975, off by 2048).
    batches = [[-(2**63)], [-1025], [1000], [1000]]
    total = Sum()
    metric = tt.Metric(lambda o, t: o, "Total", aggregation="sum")
    for batch in batches:
        total.add(torch.tensor(batch))
        metric.update(torch.tensor(batch), torch.zeros(1))
        metric.compute()  # a fold per batch
    expected = sum(value for batch in batches for value in batch)
    assert value_of(total).dtype == torch.int64 and value_of(total).item() == expected
    reported = metric.compute()["Total"]
    assert reported.dtype == torch.int64 and reported.item() == expected
    high, low = total.state["total"][0].tolist()  # the case: a high word outside int64
    assert high < -(2**63) and int(high) + int(low) == expected


# -- combining many states, and the last entry a merge keeps --------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.lists(st.integers(-(2**58), 2**58), min_size=1, max_size=4), min_size=1, max_size=7)
)
def test_combining_any_number_of_integer_sums_at_once_is_exact(parts: list[list[int]]) -> None:
    """``combined`` of n states (a sync of learnt names over n ranks) counts each once, exactly.

    Reference: Python integers of the concatenated data (a float64 sum rounds past 2**53).
    """
    held = []
    for values in parts:
        part = Sum()
        part.add(torch.tensor(values, dtype=torch.int64))
        held.append((part, [0]))
    combined = Sum.combined(held, 1, ["Total"])
    expected = sum(value for values in parts for value in values)
    assert value_of(combined).dtype == torch.int64 and value_of(combined).item() == expected
    assert combined.samples() == [sum(len(values) for values in parts)]


def test_a_merge_of_integer_sums_past_two_to_the_53_is_exact() -> None:
    # Adding the high words of two states rounds 2**53 + 1 to 2**53: the rounding error of that
    # addition goes into the low word, or the merged sum is off by one.
    left, right = Sum(), Sum()
    left.add(torch.tensor([2**53]))
    right.add(torch.tensor([1]))
    left.merge(right)
    assert value_of(left).dtype == torch.int64 and value_of(left).item() == 2**53 + 1


@pytest.mark.parametrize("cls", [Mean, Sum])
def test_a_merge_keeps_the_last_entry_of_the_later_state_that_saw_the_row(
    cls: type[Accumulator],
) -> None:
    """After a merge, ``without_last`` drops the last sample of the later state seen on each row.

    Row 0 is seen by the first state only (its own last sample goes), row 1 by both (the later
    state's last sample goes). References: the remaining samples, written out.
    """
    mine = cls(rows=2)
    mine.add(torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64), droppable=True)
    theirs = cls(rows=1)
    theirs.add(torch.tensor([10.0, 20.0], dtype=torch.float64), droppable=True)
    merged = mine.copy()
    merged.merge(theirs, rows=[1])
    combined = cls.combined([(mine, [0, 1]), (theirs, [1])], 2, ["A", "B"])
    remaining = [[1.0], [3.0, 4.0, 10.0]]
    for accumulator in (merged, combined):
        copied, dropped = accumulator.without_last()
        assert dropped.tolist() == [True, True]
        expected = [sum(row) / len(row) if cls is Mean else sum(row) for row in remaining]
        assert [value.item() for value in copied.reduce()] == expected


@pytest.mark.parametrize("cls", [Mean, Sum])
def test_an_infinite_repeat_leaves_the_value_infinite(cls: type[Accumulator]) -> None:
    # The repeated sample's original is still in the data: inf - inf would make the value NaN.
    acc = cls(rows=2)
    acc.add(torch.tensor([[1.0, math.inf], [2.0, -math.inf]]), droppable=True)
    copied, dropped = acc.without_last()
    assert dropped.tolist() == [True, True]
    assert [value.item() for value in copied.reduce()] == [math.inf, -math.inf]


def test_cat_without_last_drops_the_last_value_kept() -> None:
    acc = Cat(rows=2)
    acc.add(torch.tensor([[1.0, 2.0, 3.0], [5.0, 6.0, 7.0]]), droppable=True)
    acc.add(torch.tensor([[4.0], [8.0]]), droppable=True)
    copied, dropped = acc.without_last()
    assert dropped.tolist() == [True, True]
    assert [value.tolist() for value in copied.reduce()] == [[1.0, 2.0, 3.0], [5.0, 6.0, 7.0]]


def test_cat_merge_takes_whether_the_last_value_may_be_dropped_from_the_later_state() -> None:
    # The merged row's last value is the other state's: so is whether it is a per-sample value
    # (a DistributedSampler repeat may be dropped) or a scalar (kept).
    vector, scalar = Cat(), Cat()
    vector.add(torch.tensor([1.0, 2.0]), droppable=True)
    scalar.add(torch.tensor(5.0), droppable=False)
    first = vector.copy()
    first.merge(scalar)
    second = scalar.copy()
    second.merge(vector)
    assert [value.tolist() for value in first.without_last()[0].reduce()] == [[1.0, 2.0, 5.0]]
    assert [value.tolist() for value in second.without_last()[0].reduce()] == [[5.0, 1.0]]


def test_an_int32_sum_past_two_to_the_53_in_one_add_is_exact() -> None:
    # One add sums its integers in int64 and converts that sum to float64 once: 2**22 + 1 values
    # of 2**31 - 1 sum past 2**53, and what the conversion rounds away goes to the low word.
    count, value = 2**22 + 1, 2**31 - 1
    values = torch.full((count,), value, dtype=torch.int32)
    total, mean = Sum(), Mean()
    total.add(values)
    mean.add(values)
    assert value_of(total).dtype == torch.int64 and value_of(total).item() == count * value
    assert value_of(mean).item() == pytest.approx(value, rel=2**-52)  # the exact sum, divided

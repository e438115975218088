"""Tests of torchtally.aggregation: folding, merging, reducing and exporting accumulator state."""

from __future__ import annotations

import io
import itertools
import math
import pickle
from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from torchtally.aggregation import (
    ACCUMULATORS,
    Accumulator,
    Cat,
    Max,
    Mean,
    Min,
    Sum,
    accumulator_from_state,
    merge_exported,
)
from torchtally.errors import (
    DeviceMismatchError,
    IncompatibleStateError,
    ResultShapeError,
    StateDictError,
    SyncError,
)

BOUNDED = (Mean, Sum, Min, Max)
ALL = (Mean, Sum, Min, Max, Cat)

# Multiples of 1/16 in a small range: every sum of them is exact in float64 (and the
# means we compare are single roundings of exact values), so streamed and concatenated
# results can be compared bit for bit.
dyadic = st.integers(min_value=-4096, max_value=4096).map(lambda k: k / 16)
batches = st.lists(st.lists(dyadic, min_size=1, max_size=12), min_size=1, max_size=12)


def fed(cls: type[Accumulator], data: list[list[float]], dtype: torch.dtype) -> Accumulator:
    accumulator = cls()
    for batch in data:
        accumulator.add(torch.tensor(batch, dtype=dtype), len(batch))
    return accumulator


def state_bytes(accumulator: Accumulator) -> int:
    _, tensors = accumulator.export()
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


# -- folding and reducing ---------------------------------------------------------------------


def test_mean_weights_vectors_by_length_and_scalars_by_batch_size() -> None:
    mean = Mean()
    mean.add(torch.tensor([1.0, 2.0, 3.0]), 3)  # sum 6 over 3 samples
    mean.add(torch.tensor(10.0), 2)  # batch mean 10 over 2 samples: adds 20
    mean.add(torch.tensor([[4.0]]), 1)  # one-element tensor: a scalar batch mean
    assert mean.count == 6
    assert mean.reduce().item() == pytest.approx((6 + 20 + 4) / 6)


def test_sum_adds_vector_entries_and_scalars_as_they_are() -> None:
    total = Sum()
    total.add(torch.tensor([1.0, 2.0]), 2)
    total.add(torch.tensor(5.0), 100)  # a batch total: not multiplied by the batch size
    assert total.reduce().item() == 8.0
    assert total.count == 102


def test_min_and_max_look_at_every_sample_and_every_scalar() -> None:
    low, high = Min(), Max()
    for accumulator in (low, high):
        accumulator.add(torch.tensor([3.0, -2.0, 7.0]), 3)
        accumulator.add(torch.tensor(-5.0), 4)
        accumulator.add(torch.tensor([8.5]), 1)
    assert low.reduce().item() == -5.0
    assert high.reduce().item() == 8.5


def test_cat_keeps_rows_in_order_with_trailing_dimensions() -> None:
    cat = Cat()
    cat.add(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), 2)
    cat.add(torch.tensor([[5.0, 6.0]]), 1)
    torch.testing.assert_close(cat.reduce(), torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]))
    assert cat.count == 3


def test_cat_keeps_a_scalar_as_one_row() -> None:
    cat = Cat()
    cat.add(torch.tensor([0.5, 0.25]), 2)
    cat.add(torch.tensor(0.75), 10)
    torch.testing.assert_close(cat.reduce(), torch.tensor([0.5, 0.25, 0.75]))
    assert cat.count == 3


def test_cat_refuses_values_with_another_trailing_shape() -> None:
    cat = Cat()
    cat.label = "Scores"
    cat.add(torch.zeros(2, 3), 2)
    with pytest.raises(ResultShapeError, match=r"Scores.*trailing shape.*\(3,\).*\(4,\)"):
        cat.add(torch.zeros(2, 4), 2)


def test_cat_refuses_a_wrong_leading_dimension() -> None:
    cat = Cat()
    cat.label = "Scores"
    with pytest.raises(
        ResultShapeError, match=r"Scores.*leading dimension 4.*found shape \(3, 2\)"
    ):
        cat.add(torch.zeros(3, 2), 4)


def test_fold_takes_many_batches_at_once() -> None:
    mean = Mean()
    mean.fold([torch.tensor([1.0, 2.0]), torch.tensor(4.0), torch.tensor([7.0])], [2, 3, 1])
    assert mean.count == 6
    assert mean.reduce().item() == pytest.approx((1 + 2 + 12 + 7) / 6)
    mean.fold([], [])  # nothing to fold changes nothing
    assert mean.count == 6


@pytest.mark.parametrize("cls", BOUNDED)
def test_reduce_before_any_value_is_nan(cls: type[Accumulator]) -> None:
    value = cls().reduce()
    assert value.ndim == 0 and torch.isnan(value)
    assert value.dtype == torch.get_default_dtype()


def test_cat_before_any_value_is_empty() -> None:
    assert Cat().reduce().shape == (0,)


def test_prepare_detaches_and_accepts_scalars_and_vectors_only() -> None:
    mean = Mean()
    mean.label = "MSE"
    weight = torch.ones(3, requires_grad=True)
    prepared = mean.prepare(weight * 2, 3)
    assert not prepared.requires_grad and prepared.shape == (3,)
    assert mean.prepare(torch.ones(1, 1), 3).shape == ()
    assert mean.prepare(torch.tensor(2.0), 3).shape == ()
    with pytest.raises(ResultShapeError, match=r"MSE.*\(3,\).*batch of 3.*found shape \(2,\)"):
        mean.prepare(torch.ones(2), 3)
    with pytest.raises(ResultShapeError, match=r"MSE.*found shape \(3, 2\)"):
        mean.prepare(torch.ones(3, 2), 3)


def test_reset_forgets_values_and_keeps_the_label() -> None:
    mean = Mean()
    mean.label = "MAE"
    mean.add(torch.tensor([1.0, 2.0]), 2)
    mean.reset()
    assert mean.count == 0 and mean.label == "MAE"
    assert torch.isnan(mean.reduce())
    mean.add(torch.tensor([4.0]), 1)
    assert mean.reduce().item() == 4.0


def test_repr_names_kind_label_and_count() -> None:
    mean = Mean()
    mean.label = "MAE"
    mean.add(torch.ones(3), 3)
    assert repr(mean) == "Mean(label='MAE', count=3)"


# -- dtypes -----------------------------------------------------------------------------------

FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
NON_FLOATS = (torch.int32, torch.int64, torch.uint8, torch.bool)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("cls", BOUNDED)
def test_floating_inputs_reduce_in_their_own_dtype(
    cls: type[Accumulator], dtype: torch.dtype
) -> None:
    accumulator = cls()
    accumulator.add(torch.tensor([1.0, 0.0, 1.0], dtype=dtype), 3)
    accumulator.add(torch.tensor(1.0, dtype=dtype), 2)
    expected = {Mean: 4 / 5, Sum: 3.0, Min: 0.0, Max: 1.0}[cls]
    result = accumulator.reduce()
    assert result.dtype == dtype
    assert result.item() == torch.tensor(expected, dtype=dtype).item()


@pytest.mark.parametrize("dtype", NON_FLOATS)
@pytest.mark.parametrize("cls", BOUNDED)
def test_integer_and_bool_inputs_reduce_to_the_default_float(
    cls: type[Accumulator], dtype: torch.dtype
) -> None:
    accumulator = cls()
    accumulator.add(torch.tensor([1, 0, 1]).to(dtype), 3)
    accumulator.add(torch.tensor(1).to(dtype), 2)
    expected = {Mean: 4 / 5, Sum: 3.0, Min: 0.0, Max: 1.0}[cls]
    result = accumulator.reduce()
    assert result.dtype == torch.float32
    assert result.item() == pytest.approx(expected)


def test_integer_inputs_follow_the_default_dtype() -> None:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        mean = Mean()
        mean.add(torch.tensor([1, 2]), 2)
        assert mean.reduce().dtype == torch.float64
    finally:
        torch.set_default_dtype(previous)


@pytest.mark.parametrize("dtype", (*FLOATS, *NON_FLOATS))
def test_cat_keeps_the_values_dtype(dtype: torch.dtype) -> None:
    cat = Cat()
    cat.add(torch.tensor([1, 0]).to(dtype), 2)
    assert cat.reduce().dtype == dtype


def test_mixed_float_dtypes_promote() -> None:
    mean = Mean()
    mean.add(torch.tensor([1.0], dtype=torch.float16), 1)
    mean.add(torch.tensor([2.0], dtype=torch.float32), 1)
    result = mean.reduce()
    assert result.dtype == torch.float32 and result.item() == 1.5


def test_half_precision_values_are_summed_in_float64() -> None:
    # 4096 + 1 is not representable in float16: a float16 running sum would stall at 2048.
    mean = Sum()
    for _ in range(4):
        mean.add(torch.ones(1024, dtype=torch.float16), 1024)
    mean.add(torch.ones(1, dtype=torch.float16), 1)
    _, (pair,) = mean.export()
    assert pair.dtype == torch.float64
    assert (pair[0] + pair[1]).item() == 4097.0


# -- precision and memory ---------------------------------------------------------------------


def test_compensated_sum_recovers_what_plain_float64_loses() -> None:
    total = Sum()
    big = torch.tensor([1e16], dtype=torch.float64)
    total.add(big, 1)
    for _ in range(1000):  # each 1.0 is below half an ulp of 1e16 in float64
        total.add(torch.tensor([1.0], dtype=torch.float64), 1)
    total.add(-big, 1)
    assert total.reduce().item() == 1000.0


def test_mean_of_ten_million_float32_samples_matches_an_exact_reference() -> None:
    generator = torch.Generator().manual_seed(1234)
    # A large offset makes a float32 running sum lose about 7 digits.
    data = torch.rand(10**7, generator=generator) * 1000 + 10_000
    reference = math.fsum(data.double().tolist()) / data.numel()

    mean = Mean()
    chunks = list(data.split(4096))
    for start in range(0, len(chunks), 256):  # folded in bulk as objectives do
        block = chunks[start : start + 256]
        mean.fold(block, [len(chunk) for chunk in block])
    meta, (pair,) = mean.export()
    state = (pair[0] + pair[1]).item() / meta["count"]
    assert meta["count"] == 10**7
    assert abs(state - reference) <= 1e-12 * abs(reference)
    result = mean.reduce()
    assert result.dtype == torch.float32
    assert result.item() == torch.tensor(reference, dtype=torch.float32).item()

    # The data is hard enough: a float32 running sum misses the tolerance by far.
    naive = torch.zeros((), dtype=torch.float32)
    for chunk in chunks:
        naive += chunk.sum()
    assert abs(naive.item() / data.numel() - reference) > 1e-9 * reference


@pytest.mark.parametrize("cls", BOUNDED)
def test_state_size_does_not_grow_with_updates(cls: type[Accumulator]) -> None:
    few, many = cls(), cls()
    for accumulator, updates in ((few, 10), (many, 10_000)):
        for step in range(updates):
            accumulator.add(torch.full((4,), float(step)), 4)
    assert many.count == 1000 * few.count
    assert state_bytes(many) == state_bytes(few) > 0
    assert [t.shape for t in many.export()[1]] == [t.shape for t in few.export()[1]]


# -- merging ----------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", ALL)
def test_merge_adds_the_other_state_and_leaves_it_unchanged(cls: type[Accumulator]) -> None:
    first = fed(cls, [[1.0, 2.0], [3.0]], torch.float32)
    second = fed(cls, [[-4.0], [5.0, 6.0]], torch.float32)
    before = second.reduce().clone()
    first.merge(second)
    stream = fed(cls, [[1.0, 2.0], [3.0], [-4.0], [5.0, 6.0]], torch.float32)
    torch.testing.assert_close(first.reduce(), stream.reduce(), rtol=0, atol=0)
    assert first.count == stream.count == 6
    torch.testing.assert_close(second.reduce(), before, rtol=0, atol=0)


@pytest.mark.parametrize("cls", ALL)
def test_merge_with_empty_states(cls: type[Accumulator]) -> None:
    empty = cls()
    empty.merge(cls())
    assert empty.count == 0 and not empty.export()[1]
    filled = fed(cls, [[1.0, 2.0]], torch.float32)
    empty.merge(filled)
    torch.testing.assert_close(empty.reduce(), filled.reduce())
    filled.merge(cls())
    assert filled.count == 2


def test_merge_refuses_another_kind() -> None:
    mean = Mean()
    mean.label = "MAE"
    with pytest.raises(IncompatibleStateError, match=r"MAE.*'max'.*'mean'"):
        mean.merge(Max())


def test_merge_moves_the_other_state_to_this_device() -> None:
    here = fed(Mean, [[1.0]], torch.float32)
    merged = fed(Mean, [[1.0]], torch.float32)
    merged.to("meta")
    merged.merge(here)  # a CPU state merged into a meta state lands on meta
    assert merged.reduce().device.type == "meta"
    assert here.reduce().device.type == "cpu"


# -- hypothesis properties --------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(data=batches)
def test_streamed_mean_of_vectors_equals_the_mean_of_the_concatenation(
    data: list[list[float]],
) -> None:
    mean = fed(Mean, data, torch.float32)
    flat = torch.tensor([x for batch in data for x in batch], dtype=torch.float64)
    assert mean.reduce().item() == flat.mean().float().item()


@settings(max_examples=40, deadline=None)
@given(data=batches)
def test_streamed_mean_of_scalar_batch_means_equals_the_mean_of_the_concatenation(
    data: list[list[float]],
) -> None:
    mean = Mean()
    for batch in data:
        values = torch.tensor(batch, dtype=torch.float64)
        mean.add(values.mean(), len(batch))  # what a reduction='mean' callable returns
    flat = torch.tensor([x for batch in data for x in batch], dtype=torch.float64)
    assert mean.reduce().item() == pytest.approx(flat.mean().item(), rel=1e-12, abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(data=batches, cls=st.sampled_from(ALL), cuts=st.lists(st.integers(0, 12), max_size=4))
def test_merging_states_split_any_way_equals_one_stream(
    data: list[list[float]], cls: type[Accumulator], cuts: list[int]
) -> None:
    bounds = sorted({0, len(data), *(min(cut, len(data)) for cut in cuts)})
    parts = [fed(cls, data[a:b], torch.float32) for a, b in itertools.pairwise(bounds)]
    merged = cls()
    for part in parts:
        merged.merge(part)
    stream = fed(cls, data, torch.float32)
    torch.testing.assert_close(merged.reduce(), stream.reduce(), rtol=0, atol=0)
    assert merged.count == stream.count


@settings(max_examples=40, deadline=None)
@given(a=batches, b=batches, c=batches, cls=st.sampled_from(ALL))
def test_merge_is_associative(
    a: list[list[float]], b: list[list[float]], c: list[list[float]], cls: type[Accumulator]
) -> None:
    left = fed(cls, a, torch.float32)  # (a + b) + c
    left.merge(fed(cls, b, torch.float32))
    left.merge(fed(cls, c, torch.float32))
    inner = fed(cls, b, torch.float32)  # a + (b + c)
    inner.merge(fed(cls, c, torch.float32))
    right = fed(cls, a, torch.float32)
    right.merge(inner)
    torch.testing.assert_close(left.reduce(), right.reduce(), rtol=0, atol=0)


@settings(max_examples=40, deadline=None)
@given(a=batches, b=batches, cls=st.sampled_from(BOUNDED))
def test_merge_order_does_not_change_bounded_results(
    a: list[list[float]], b: list[list[float]], cls: type[Accumulator]
) -> None:
    ab = fed(cls, a, torch.float32)
    ab.merge(fed(cls, b, torch.float32))
    ba = fed(cls, b, torch.float32)
    ba.merge(fed(cls, a, torch.float32))
    torch.testing.assert_close(ab.reduce(), ba.reduce(), rtol=0, atol=0)


@settings(max_examples=40, deadline=None)
@given(data=batches)
def test_min_max_cat_over_any_split_match_the_concatenation(data: list[list[float]]) -> None:
    flat = torch.tensor([x for batch in data for x in batch])
    assert fed(Min, data, torch.float32).reduce().item() == flat.min().item()
    assert fed(Max, data, torch.float32).reduce().item() == flat.max().item()
    assert torch.equal(fed(Cat, data, torch.float32).reduce(), flat)
    assert fed(Sum, data, torch.float32).reduce().item() == flat.double().sum().float().item()


# -- export, state dicts, devices -------------------------------------------------------------


@pytest.mark.parametrize("cls", ALL)
def test_export_and_load_round_trip(cls: type[Accumulator]) -> None:
    original = fed(cls, [[1.5, -2.0], [4.0]], torch.float16)
    meta, tensors = original.export()
    assert meta["kind"] == cls.kind and meta["count"] == 3 and meta["dtype"] == "float16"
    rebuilt = accumulator_from_state(meta, tensors)
    assert type(rebuilt) is cls and rebuilt.count == 3
    torch.testing.assert_close(rebuilt.reduce(), original.reduce(), rtol=0, atol=0)
    assert rebuilt.reduce().dtype == torch.float16
    # The rebuilt state keeps accumulating like the original.
    for accumulator in (original, rebuilt):
        accumulator.add(torch.tensor([8.0], dtype=torch.float16), 1)
    torch.testing.assert_close(rebuilt.reduce(), original.reduce(), rtol=0, atol=0)


@pytest.mark.parametrize("cls", ALL)
def test_state_dict_round_trips_through_torch_save_and_pickle(cls: type[Accumulator]) -> None:
    original = fed(cls, [[1.0, 2.0, 3.0], [7.0]], torch.float32)
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    buffer.seek(0)
    restored = cls()
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    torch.testing.assert_close(restored.reduce(), original.reduce(), rtol=0, atol=0)
    assert restored.count == original.count
    pickled = pickle.loads(pickle.dumps(original))
    torch.testing.assert_close(pickled.reduce(), original.reduce(), rtol=0, atol=0)


@pytest.mark.parametrize("cls", ALL)
def test_empty_state_round_trips(cls: type[Accumulator]) -> None:
    restored = cls()
    restored.load_state_dict(cls().state_dict())
    assert restored.count == 0
    restored.add(torch.tensor([2.0]), 1)
    assert restored.reduce().reshape(-1)[0].item() == 2.0


def test_load_replaces_the_state() -> None:
    source = fed(Mean, [[10.0]], torch.float32)
    target = fed(Mean, [[1.0, 2.0, 3.0]], torch.float32)
    target.load_state_dict(source.state_dict())
    assert target.count == 1 and target.reduce().item() == 10.0


@pytest.mark.parametrize(
    ("state", "pattern"),
    [
        ({"meta": {"kind": "max", "count": 1, "dtype": "float32"}, "tensors": []}, "'mean'.*'max'"),
        ({"meta": {"kind": "mean"}, "tensors": []}, "'count' and 'dtype'"),
        ({"meta": {"kind": "mean", "count": 1, "dtype": "nonsense"}, "tensors": []}, "nonsense"),
        (
            {"meta": {"kind": "mean", "count": 1, "dtype": "float32"}, "tensors": [torch.ones(5)]},
            r"shapes \[\(5,\)\]",
        ),
        (
            {"meta": {"kind": "mean", "count": 1, "dtype": "float32"}, "tensors": ["x"]},
            "expected state tensors",
        ),
        ({"meta": {"kind": "mean", "count": 1, "dtype": "float32"}}, "'meta' and 'tensors'"),
        ("not a dict", "'meta' and 'tensors'"),
    ],
)
def test_loading_a_wrong_state_raises_state_dict_error(state: object, pattern: str) -> None:
    mean = fed(Mean, [[1.0]], torch.float32)
    mean.label = "MSE"
    with pytest.raises(StateDictError, match=f"MSE.*{pattern}"):
        mean.load_state_dict(state)  # type: ignore[arg-type]


@pytest.mark.parametrize("cls", (Min, Max, Cat))
def test_loading_tensors_of_the_wrong_layout_raises(cls: type[Accumulator]) -> None:
    meta, _ = fed(cls, [[1.0]], torch.float32).export()
    wrong = torch.zeros(()) if cls is Cat else torch.zeros(3)
    with pytest.raises(StateDictError, match="do not fit"):
        cls().load(meta, [wrong], None)


def test_accumulator_from_state_refuses_unknown_kinds() -> None:
    with pytest.raises(StateDictError, match=r"'median'.*\['cat', 'max', 'mean', 'min', 'sum'\]"):
        accumulator_from_state({"kind": "median", "count": 0, "dtype": None}, [])


def test_registry_lists_every_kind() -> None:
    assert {"mean": Mean, "sum": Sum, "min": Min, "max": Max, "cat": Cat} == ACCUMULATORS


@pytest.mark.parametrize("cls", ALL)
def test_to_moves_the_state_and_copy_to_leaves_it(cls: type[Accumulator]) -> None:
    accumulator = fed(cls, [[1.0, 2.0]], torch.float32)
    moved = accumulator.copy_to(torch.device("meta"))
    assert moved.reduce().device.type == "meta" and moved.count == 2
    assert accumulator.reduce().device.type == "cpu"
    accumulator.to("meta")
    assert accumulator.reduce().device.type == "meta"
    assert all(t.device.type == "meta" for t in accumulator.export()[1])


def test_to_without_state_is_a_no_op_and_state_follows_the_values() -> None:
    mean = Mean()
    mean.to("meta")  # nothing to move; the state is created where values arrive
    mean.add(torch.ones(2), 2)
    assert mean.reduce().device.type == "cpu"


def test_values_from_another_device_raise_device_mismatch() -> None:
    mean = Mean()
    mean.label = "Metric value 'MAE'"
    mean.add(torch.ones(2), 2)
    with pytest.raises(DeviceMismatchError, match=r"'MAE'.*state lives on cpu.*arrived on meta"):
        mean.add(torch.ones(2, device="meta"), 2)
    mean.reset()  # after a reset the next values may come from anywhere
    mean.add(torch.ones(2, device="meta"), 2)
    assert mean.reduce().device.type == "meta"


@pytest.mark.parametrize("cls", ALL)
def test_one_fold_with_values_on_two_devices_raises(cls: type[Accumulator]) -> None:
    accumulator = cls()
    accumulator.label = "Score"
    values = [torch.ones(2), torch.ones(2, device="meta")]
    with pytest.raises(DeviceMismatchError, match=r"Score.*several devices.*'cpu', 'meta'"):
        accumulator.fold(values, [2, 2])


def test_cpu_scalars_join_a_state_on_another_device() -> None:
    # Python numbers become 0-d CPU tensors; like torch scalars they join any device.
    mean = Mean()
    mean.add(torch.ones(2, device="meta"), 2)
    mean.add(torch.tensor(3.0), 2)
    mean.fold([torch.tensor(1.0), torch.ones(2, device="meta")], [1, 2])
    assert mean.reduce().device.type == "meta" and mean.count == 7


# -- merge_exported (the rank-ordered merge used by sync) -------------------------------------


def test_merge_exported_merges_in_rank_order() -> None:
    parts = [fed(Cat, [[1.0, 2.0]], torch.float32), fed(Cat, [[3.0]], torch.float32)]
    merged = merge_exported([part.export() for part in parts], None, "Scores")
    assert merged.label == "Scores"
    torch.testing.assert_close(merged.reduce(), torch.tensor([1.0, 2.0, 3.0]))
    empty = merge_exported([Mean().export(), fed(Mean, [[4.0]], torch.float32).export()], None, "M")
    assert empty.reduce().item() == 4.0 and empty.count == 1


def test_merge_exported_names_the_ranks_that_disagree() -> None:
    states = [Mean().export(), Max().export()]
    with pytest.raises(SyncError, match=r"MAE.*rank 0: 'mean', rank 1: 'max'"):
        merge_exported(states, None, "MAE")
    shapes = [fed_rows(torch.zeros(1, 2)).export(), fed_rows(torch.zeros(1, 3)).export()]
    with pytest.raises(SyncError, match=r"Scores.*rank 0: \[2\], rank 1: \[3\]"):
        merge_exported(shapes, None, "Scores")


def fed_rows(rows: Tensor) -> Cat:
    cat = Cat()
    cat.add(rows, rows.shape[0])
    return cat


@pytest.mark.parametrize("make", [Mean, Sum, Min, Max, Cat])
def test_every_accumulator_has_a_kind(make: Callable[[], Accumulator]) -> None:
    accumulator = make()
    assert ACCUMULATORS[accumulator.kind] is type(accumulator)

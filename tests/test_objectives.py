"""Tests of torchtally.objectives: Objective, AverageObjective, Metric, MetricCollection."""

from __future__ import annotations

import copy
import gc
import io
import math
import pickle
import warnings
import weakref
from typing import Any, ClassVar
from unittest import mock

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
import torchmetrics
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor
from typing_extensions import override

import torchtally as tt
from _held import queued_elements  # tests/_held.py
from _sync import simulate_sync  # tests/_sync.py
from torchtally._conventions import batch_size
from torchtally.aggregation import Cat, Mean
from torchtally.contrib.torchmetrics import from_torchmetrics
from torchtally.errors import (
    ComputedBeforeUpdatedWarning,
    IncompatibleStateError,
    InvalidArgumentError,
    NameConflictError,
    ResultShapeError,
    StateDictError,
    WeightError,
)
from torchtally.objectives import PENDING_BATCHES, PENDING_ELEMENTS


def mae(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).abs().flatten(1).mean(1)


def mse(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).pow(2).flatten(1).mean(1)


def bias(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).flatten(1).mean(1)


def hits(outputs: Tensor, targets: Tensor) -> Tensor:
    # a bool per sample: every entry of the sample rounds to its target
    return (outputs.round() == targets).reshape(len(outputs), -1).all(1)


class MyMetrics(tt.AverageObjective[Tensor, Tensor]):
    """MSE and MAE in one pass (the DRYTorch documentation's example)."""

    @override
    def calculate(self, outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
        diff = outputs - targets
        return {"MSE": diff.pow(2).flatten(1).mean(1), "MAE": diff.abs().flatten(1).mean(1)}


class ScoreSummary(tt.Objective[Tensor, Tensor]):
    """Worst error (Max), median error from every value (Cat) and a mean."""

    aggregation: ClassVar[dict[str, Any]] = {"worst": "max", "errors": Cat}  # type: ignore[misc]

    @override
    def calculate(self, outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
        errors = (outputs - targets).abs().reshape(len(outputs), -1).mean(1)
        return {"worst": errors, "errors": errors, "mean": errors}

    @override
    def finalize(self, values: dict[str, Tensor]) -> dict[str, Tensor]:
        errors = values.pop("errors")
        return {**values, "median": errors.median()}


def batches_of(sizes: list[int], seed: int = 0, width: int = 3) -> list[tuple[Tensor, Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(size, width, generator=generator),
            torch.randn(size, width, generator=generator),
        )
        for size in sizes
    ]


def concat(batches: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    return torch.cat([o for o, _ in batches]), torch.cat([t for _, t in batches])


def computed(objective: Any) -> dict[str, Tensor]:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no ComputedBeforeUpdatedWarning expected here
        result: dict[str, Tensor] = objective.compute()
    return result


def assert_same(a: dict[str, Tensor], b: dict[str, Tensor]) -> None:
    assert list(a) == list(b)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, equal_nan=True)


# -- batch size -------------------------------------------------------------------------------


def test_batch_size_comes_from_targets_then_outputs_through_containers() -> None:
    assert batch_size(torch.zeros(5, 2), torch.zeros(7)) == 5
    assert batch_size({"label": torch.zeros(4)}, torch.zeros(9)) == 4
    assert batch_size([None, ("text", torch.zeros(3, 8))], torch.zeros(9)) == 3
    assert batch_size(None, (torch.zeros(6),)) == 6
    assert batch_size({"meta": "x"}, {"logits": [torch.zeros(2, 5)]}) == 2
    assert batch_size([], torch.zeros(0, 4)) == 0


def test_update_uses_the_batch_size_from_containers() -> None:
    metric = tt.Metric(lambda o, t: o["pred"].sum(), "Total")  # a scalar batch mean
    metric.update({"pred": torch.ones(4)}, {"label": torch.zeros(4), "id": [1, 2, 3, 4]})
    metric.update({"pred": torch.ones(1)}, {"label": torch.zeros(1), "id": [5]})
    # The first batch adds 4 * 4 with weight 4, the second 1 * 1 with weight 1.
    assert computed(metric)["Total"].item() == pytest.approx((16 + 1) / 5)


# -- batch weighting --------------------------------------------------------------------------


def test_scalar_results_are_weighted_exactly_over_uneven_batches() -> None:
    data = batches_of([1, 7, 3, 64, 2])
    metric = tt.Metric(F.mse_loss, "MSE")  # reduction='mean': a scalar per batch
    for outputs, targets in data:
        metric.update(outputs, targets)
    expected = F.mse_loss(*[x.double() for x in concat(data)])
    assert computed(metric)["MSE"].item() == pytest.approx(expected.item(), rel=1e-6)
    # The unweighted mean of batch means is different: the weighting matters here.
    naive = torch.stack([F.mse_loss(o, t) for o, t in data]).mean()
    assert abs(naive.item() - expected.item()) > 1e-3


def test_vector_results_give_the_dataset_mean() -> None:
    data = batches_of([5, 1, 33])
    metrics = tt.MetricCollection(MSE=mse, MAE=mae)
    for outputs, targets in data:
        metrics.update(outputs, targets)
    outputs, targets = concat(data)
    result = computed(metrics)
    assert result["MSE"].item() == pytest.approx(mse(outputs, targets).mean().item(), rel=1e-6)
    assert result["MAE"].item() == pytest.approx(mae(outputs, targets).mean().item(), rel=1e-6)


split_sizes = st.lists(st.integers(min_value=0, max_value=9), min_size=1, max_size=8).filter(
    lambda sizes: sum(sizes) > 0
)


@settings(max_examples=30, deadline=None)
@given(sizes=split_sizes, seed=st.integers(0, 2**16))
def test_streamed_mean_equals_mean_of_concatenation_for_any_split(
    sizes: list[int], seed: int
) -> None:
    data = batches_of(sizes, seed)
    metrics = tt.MetricCollection(MSE=mse, Scalar=F.mse_loss, MAE=F.l1_loss)
    for outputs, targets in data:
        metrics.update(outputs, targets)
    outputs, targets = (x.double() for x in concat(data))
    result = computed(metrics)
    assert result["MSE"].item() == pytest.approx(mse(outputs, targets).mean().item(), rel=1e-5)
    assert result["Scalar"].item() == pytest.approx(F.mse_loss(outputs, targets).item(), rel=1e-5)
    assert result["MAE"].item() == pytest.approx(F.l1_loss(outputs, targets).item(), rel=1e-5)


@settings(max_examples=30, deadline=None)
@given(sizes=split_sizes, cut=st.integers(0, 8), seed=st.integers(0, 2**16))
def test_merged_states_split_any_way_equal_one_stream(
    sizes: list[int], cut: int, seed: int
) -> None:
    data = batches_of(sizes, seed)
    first, second, stream = (tt.MetricCollection(MSE=mse, Scalar=F.mse_loss) for _ in range(3))
    for index, (outputs, targets) in enumerate(data):
        (first if index < cut else second).update(outputs, targets)
        stream.update(outputs, targets)
    first.merge_state(second)
    expected = computed(stream)
    for name, value in computed(first).items():
        torch.testing.assert_close(value, expected[name], rtol=1e-6, atol=1e-7)


def test_wrong_length_vector_names_the_metric_and_both_sizes() -> None:
    metric = tt.Metric(lambda o, t: (o - t)[:3], "Truncated")
    with pytest.raises(
        ResultShapeError, match=r"Truncated.*\(5,\).*batch of 5.*found shape \(3,\)"
    ):
        metric.update(torch.zeros(5), torch.zeros(5))
    assert isinstance(ResultShapeError(), ValueError)


def test_matrix_result_is_refused() -> None:
    metric = tt.Metric(lambda o, t: o - t, "Elementwise")
    with pytest.raises(ResultShapeError, match=r"Elementwise.*found shape \(4, 2\)"):
        metric.update(torch.zeros(4, 2), torch.zeros(4, 2))


def test_empty_batch_changes_nothing() -> None:
    metric = tt.MetricCollection(MSE=F.mse_loss, MAE=mae)
    outputs, targets = batches_of([4])[0]
    metric.update(outputs, targets)
    before = computed(metric)
    values = metric.update(torch.zeros(0, 3), torch.zeros(0, 3))  # mse_loss of nothing is NaN
    assert set(values) == {"MSE", "MAE"}
    assert_same(computed(metric), before)
    assert metric._ledger.computed is not None  # not even the cache was dropped


def test_empty_batch_returns_tensors_for_python_numbers() -> None:
    metric = tt.Metric(lambda o, t: 0.5, "Half")
    values = metric.update(torch.zeros(0), torch.zeros(0))
    assert isinstance(values["Half"], Tensor) and values["Half"].item() == 0.5


def test_integer_and_bool_means_are_reported_in_float64() -> None:
    metrics = tt.MetricCollection(Hits=hits, Count=lambda o, t: 3)
    metrics.update(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 2.0, 0.0]))
    metrics.update(torch.tensor([0.2]), torch.tensor([0.0]))
    result = computed(metrics)
    assert result["Hits"].dtype == torch.float64 and result["Hits"].item() == 3 / 4
    assert result["Count"].dtype == torch.float64 and result["Count"].item() == 3.0


def test_python_number_results_are_weighted_and_returned_as_tensors() -> None:
    metric = tt.Metric(lambda o, t: float(o.shape[0]), "Size")
    values = metric.update(torch.zeros(2), torch.zeros(2))
    assert isinstance(values["Size"], Tensor) and values["Size"].item() == 2.0
    metric.update(torch.zeros(6), torch.zeros(6))
    assert computed(metric)["Size"].item() == pytest.approx((2 * 2 + 6 * 6) / 8)


def test_half_precision_results_are_reported_in_float32() -> None:
    metric = tt.Metric(mae, "MAE")
    for outputs, targets in batches_of([3, 5]):
        metric.update(outputs.half(), targets.half())
    assert computed(metric)["MAE"].dtype == torch.float32


# -- compute, caching, reset ------------------------------------------------------------------


def test_compute_before_update_warns_and_gives_nan_for_every_known_name() -> None:
    metrics = tt.MetricCollection(MSE=mse, MAE=mae)
    with pytest.warns(ComputedBeforeUpdatedWarning, match=r"MSE.*MAE.*before any update"):
        result = metrics.compute()
    assert list(result) == ["MSE", "MAE"]
    assert all(value.ndim == 0 and torch.isnan(value) for value in result.values())


def test_compute_before_update_of_an_objective_without_declared_names() -> None:
    with pytest.warns(ComputedBeforeUpdatedWarning):
        assert MyMetrics().compute() == {}


def test_compute_returns_zero_dim_tensors_in_a_fresh_dict_and_caches() -> None:
    metric = tt.Metric(mae, "MAE")
    metric.update(*batches_of([4])[0])
    first = computed(metric)
    assert type(first) is dict and first["MAE"].ndim == 0
    first["MAE"] = torch.tensor(123.0)
    first["other"] = torch.tensor(0.0)
    second = computed(metric)
    assert list(second) == ["MAE"] and second["MAE"].item() != 123.0
    cache = metric._ledger.computed
    assert cache is not None and computed(metric)["MAE"] is not cache["MAE"]  # a fresh copy
    assert metric._ledger.computed is cache  # reduced once, cached


def test_compute_cache_is_dropped_by_update_and_reset() -> None:
    metric = tt.Metric(mae, "MAE")
    metric.update(torch.ones(1, 1), torch.zeros(1, 1))
    assert computed(metric)["MAE"].item() == 1.0
    metric.update(torch.full((1, 1), 3.0), torch.zeros(1, 1))
    assert computed(metric)["MAE"].item() == 2.0
    metric.reset()
    with pytest.warns(ComputedBeforeUpdatedWarning):
        assert torch.isnan(metric.compute()["MAE"])


def test_sync_outside_a_distributed_run_keeps_the_local_values() -> None:
    metric = tt.Metric(mae, "MAE")
    metric.update(torch.ones(2, 1), torch.zeros(2, 1))
    metric.sync()
    assert computed(metric)["MAE"].item() == 1.0


def test_reset_clears_state_and_keeps_names() -> None:
    metrics = tt.MetricCollection(MSE=mse, MAE=mae)
    metrics.update(*batches_of([3])[0])
    metrics.reset()
    assert metrics.names == ("MSE", "MAE")
    metrics.update(torch.ones(2, 1), torch.zeros(2, 1))
    assert computed(metrics) == {"MSE": torch.tensor(1.0), "MAE": torch.tensor(1.0)}


# -- the values returned by update and their autograd graph ------------------------------------


def test_update_returns_the_batch_values_as_the_callables_gave_them() -> None:
    scalar = torch.tensor(0.25)
    metrics = tt.MetricCollection(MAE=mae, Scalar=lambda o, t: scalar)
    outputs, targets = batches_of([4])[0]
    values = metrics.update(outputs, targets)
    assert list(values) == ["MAE", "Scalar"]
    torch.testing.assert_close(values["MAE"], mae(outputs, targets))
    assert values["Scalar"] is scalar


def test_changing_the_returned_dict_does_not_change_the_state() -> None:
    metrics = tt.MetricCollection(MSE=mse, MAE=mae)
    reference = tt.MetricCollection(MSE=mse, MAE=mae)
    for outputs, targets in batches_of([3, 4, 5, 6]):
        logs = metrics.update(outputs, targets)
        reference.update(outputs, targets)
        del logs["MSE"]  # a training loop trimming or rewriting what it logs
        logs["MAE"] = 0.0
        logs["loss"] = torch.tensor(1.0)
    assert_same(computed(metrics), computed(reference))


def test_stored_values_are_detached_and_do_not_keep_the_graph() -> None:
    weight = torch.ones(3, requires_grad=True)
    metric = tt.Metric(lambda o, t: (o * weight).pow(2).sum(1), "Energy")
    outputs = torch.randn(5, 3, requires_grad=True)
    alive = weakref.ref(outputs)
    values = metric.update(outputs, torch.zeros(5))
    assert values["Energy"].requires_grad  # the caller gets the differentiable value
    del outputs, values
    gc.collect()
    assert alive() is None  # the queued value holds no graph that would keep the input alive
    assert not any(tensor.requires_grad for tensor in metric.state_dict()["tensors"])
    assert not computed(metric)["Energy"].requires_grad


def test_update_never_synchronises_with_the_host() -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("update synchronised with the host")

    metrics = tt.MetricCollection(MSE=mse, MAE=mae, Scalar=F.mse_loss, Hits=hits)
    data = batches_of([64, 64, 17])
    steps = 3 * PENDING_BATCHES  # several folds; every batch used equally often
    patched = ("item", "cpu", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__")
    with mock.patch.multiple(torch.Tensor, **dict.fromkeys(patched, refuse)):
        with pytest.raises(AssertionError):  # the patch is effective
            bool(torch.ones(()))
        for step in range(steps):
            metrics.update(*data[step % 3])
    assert len(metrics._ledger._sizes) < PENDING_BATCHES
    reference = tt.MetricCollection(MSE=mse, MAE=mae, Scalar=F.mse_loss, Hits=hits)
    for step in range(steps):
        reference.update(*data[step % 3])
    assert_same(computed(metrics), computed(reference))
    outputs, targets = concat(data)
    assert computed(metrics)["MSE"].item() == pytest.approx(mse(outputs, targets).mean().item())


def test_state_dict_size_does_not_grow_with_updates() -> None:
    def tensor_bytes(objective: tt.MetricCollection[Tensor, Tensor]) -> int:
        return sum(t.numel() * t.element_size() for t in objective.state_dict()["tensors"])

    few, many = tt.MetricCollection(MSE=mse, MAE=mae), tt.MetricCollection(MSE=mse, MAE=mae)
    batch = batches_of([8])[0]
    for objective, updates in ((few, 10), (many, 10_000)):
        for _ in range(updates):
            objective.update(*batch)
    per_name = sum(spec.width * spec.dtype.itemsize for spec in Mean.states)
    assert tensor_bytes(many) == tensor_bytes(few) == 2 * per_name
    assert many._ledger.accumulators[Mean].samples() == [80_000, 80_000]


def test_the_pending_queue_is_bounded_by_elements() -> None:
    metrics = tt.MetricCollection(MSE=mse, MAE=mae)
    big = PENDING_ELEMENTS // 2  # two names of this size fill the element budget alone
    for _ in range(3):
        metrics.update(torch.zeros(big, 1), torch.zeros(big, 1))
        assert queued_elements(metrics) <= PENDING_ELEMENTS
    small = tt.MetricCollection(MSE=mse, MAE=mae)
    for _ in range(3 * PENDING_BATCHES):
        small.update(torch.zeros(2, 1), torch.zeros(2, 1))
        assert len(small._ledger._sizes) < PENDING_BATCHES
    assert queued_elements(small) <= PENDING_ELEMENTS


# -- combining and copying --------------------------------------------------------------------


def test_merge_state_adds_the_other_updates() -> None:
    data = batches_of([3, 4, 5])
    first, second = tt.Metric(mae, "MAE"), tt.Metric(mae, "MAE")
    first.update(*data[0])
    second.update(*data[1])
    second.update(*data[2])
    before = computed(second)
    first.merge_state(second)
    outputs, targets = concat(data)
    assert computed(first)["MAE"].item() == pytest.approx(mae(outputs, targets).mean().item())
    assert_same(computed(second), before)


def test_merge_state_refuses_another_objective_type() -> None:
    with pytest.raises(IncompatibleStateError, match=r"Metric 'MAE'.*MetricCollection"):
        tt.Metric(mae, "MAE").merge_state(tt.MetricCollection(MAE=mae))  # type: ignore[arg-type]


def test_merge_state_refuses_a_different_aggregation() -> None:
    mean, maximum = tt.Metric(mae, "MAE"), tt.Metric(mae, "MAE", aggregation="max")
    maximum.update(*batches_of([2])[0])
    with pytest.raises(IncompatibleStateError, match=r'\'MAE\'.*"max".*"mean"'):
        mean.merge_state(maximum)


def test_merge_state_refuses_another_definition_and_changes_nothing() -> None:
    # One name over another callable was merged silently: an MAE of 10 merged with a squared
    # error of 9 under the same name reported 9.5, a value of neither metric.
    def squared(outputs: Tensor, targets: Tensor) -> Tensor:
        return (outputs - targets).pow(2).flatten(1).mean(1)

    data = [
        (torch.full((1, 1), 10.0), torch.zeros(1, 1)),
        (torch.full((1, 1), 3.0), torch.zeros(1, 1)),
    ]
    # Two lambdas on one line were one callable to merge_state and sync (module, name, line).
    one_line = tt.Metric(lambda o, t: o.sum(1), "E"), tt.Metric(lambda o, t: (o * o).sum(1), "E")
    cases = [
        (tt.MetricCollection(MAE=mae), tt.MetricCollection(MAE=squared), "callables"),
        (tt.Metric(mae, "MAE"), tt.Metric(squared, "MAE"), "callables"),
        (tt.MetricCollection(MAE=mae), tt.MetricCollection(MAE=mae, MSE=mse), "names"),
        (tt.Metric(mae, "MAE"), tt.Metric(mae, "MAE", weight=lambda o, t: len(t)), "weight"),
        (tt.Loss(mae, "MAE"), tt.Loss(squared, "MAE"), "callables"),
        (*one_line, "callables"),
    ]
    for mine, theirs, differing in cases:
        mine.update(*data[0])
        theirs.update(*data[1])
        before = computed(mine)
        with pytest.raises(IncompatibleStateError, match=differing):
            mine.merge_state(theirs)
        assert_same(computed(mine), before)


def test_a_merge_state_refused_for_a_concatenations_shape_changes_nothing() -> None:
    # The 'cat' rows were merged one by one: 'Row' took the other's value before 'Vector''s
    # trailing shape (4,) against (3,) was refused, so the refused merge left 'Row' as
    # [1, 1, 5] (what a fresh compute() and every copy reported).
    class Kept(tt.Objective[Tensor, Tensor]):
        aggregation = "cat"

        @override
        def calculate(self, outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
            return {"Row": outputs[:, 0], "Vector": outputs}

    mine, theirs = Kept(), Kept()
    mine.update(torch.ones(2, 3), torch.zeros(2))
    theirs.update(torch.full((1, 4), 5.0), torch.zeros(1))
    with pytest.raises(IncompatibleStateError, match=r"'Vector'.*\(4,\).*\(3,\)"):
        mine.merge_state(theirs)
    assert_same(computed(mine.copy()), {"Row": torch.ones(2), "Vector": torch.ones(2, 3)})


def roundtrips(objective: Any) -> list[Any]:
    buffer = io.BytesIO()
    torch.save(objective, buffer)
    buffer.seek(0)
    return [
        objective.copy(),
        copy.deepcopy(objective),
        pickle.loads(pickle.dumps(objective)),
        torch.load(buffer, weights_only=False),
    ]


@pytest.mark.parametrize(
    "make",
    [
        lambda: tt.Metric(mae, "MAE", higher_is_better=False),
        lambda: tt.MetricCollection(MSE=mse, Scalar=F.mse_loss, Bias=bias),
        lambda: tt.Metric(mae, "MAE") | tt.Metric(mse, "MSE"),
        MyMetrics,
        ScoreSummary,
    ],
    ids=["metric", "collection", "or", "average", "custom"],
)
def test_copies_are_independent_and_report_the_same(make: Any) -> None:
    data = batches_of([5, 2, 7])
    original = make()
    original.update(*data[0])
    for duplicate in roundtrips(original):
        assert type(duplicate) is type(original)
        assert_same(computed(duplicate), computed(original))
        duplicate.update(*data[1])  # the copy moves on, the original does not
        reference = make()
        reference.update(*data[0])
        reference.update(*data[1])
        assert_same(computed(duplicate), computed(reference))
    fresh = make()
    fresh.update(*data[0])
    assert_same(computed(original), computed(fresh))


class CountedErrors:
    """A metric object that keeps its own state (``tt.wrap`` wraps it as it is)."""

    def __init__(self) -> None:
        self.total = torch.zeros(())
        self.count = 0

    def update(self, outputs: Tensor, targets: Tensor) -> None:
        self.total += (outputs - targets).abs().sum()
        self.count += outputs.numel()

    def compute(self) -> Tensor:
        return self.total / self.count

    def reset(self) -> None:
        self.total, self.count = torch.zeros(()), 0


@pytest.mark.parametrize(
    "make",
    [
        lambda: tt.Metric(mae, "MAE"),
        lambda: tt.Loss(mae, "MAE") + 0.5 * tt.Loss(mse, "MSE"),
        lambda: tt.Metric(mae, "MAE") | tt.wrap(CountedErrors()),
        lambda: tt.wrap(CountedErrors()),
        lambda: tt.wrap(torchmetrics.MeanAbsoluteError()),
    ],
    ids=["metric", "loss", "joined-with-a-kept-part", "wrapped-object", "torchmetrics"],
)
def test_a_shallow_copy_is_independent_too(make: Any) -> None:
    # copy.copy shared the state: updating the copy moved the original's epoch value too (an
    # original MAE of 0.958 read 11.963 after the copy saw one sample with an error of 100).
    data = batches_of([4, 3])
    original, reference = make(), make()
    original.update(*data[0])
    reference.update(*data[0])
    shallow = copy.copy(original)
    assert type(shallow) is type(original)
    assert_same(computed(shallow), computed(reference))
    shallow.update(*data[1])  # the copy moves on, the original does not
    assert_same(computed(original), computed(reference))
    reference.update(*data[1])
    assert_same(computed(shallow), computed(reference))


@pytest.mark.parametrize(
    "make",
    [
        lambda: tt.MetricCollection(MSE=mse, Scalar=F.mse_loss, Hits=hits),
        MyMetrics,
        ScoreSummary,
        lambda: tt.Metric(mae, "Worst", aggregation="max"),
    ],
    ids=["collection", "average", "custom", "max"],
)
def test_mid_epoch_checkpoint_restores_exactly(make: Any) -> None:
    data = batches_of([8, 3, 8, 8, 1, 8, 5])
    uninterrupted = make()
    for batch in data:
        uninterrupted.update(*batch)

    before = make()
    for batch in data[:4]:
        before.update(*batch)
    buffer = io.BytesIO()
    torch.save(before.state_dict(), buffer)
    buffer.seek(0)
    after = make()  # a new process: a fresh objective, the state from disk
    after.load_state_dict(torch.load(buffer, weights_only=True))
    for batch in data[4:]:
        after.update(*batch)
    assert_same(computed(after), computed(uninterrupted))


def test_state_dict_includes_pending_values_and_load_replaces_state() -> None:
    metric = tt.Metric(mae, "MAE")
    metric.update(torch.ones(2, 1), torch.zeros(2, 1))
    state = metric.state_dict()
    assert state["version"] == 2 and state["state"]["names"] == ["MAE"]
    other = tt.Metric(mae, "MAE")
    other.update(torch.full((5, 1), 9.0), torch.zeros(5, 1))
    other.load_state_dict(state)
    assert computed(other)["MAE"].item() == 1.0


def test_load_state_dict_refuses_foreign_states() -> None:
    metric = tt.Metric(mae, "MAE")
    with pytest.raises(StateDictError, match=r"Metric 'MAE'.*found a list"):
        metric.load_state_dict([])  # type: ignore[arg-type]
    other = tt.Metric(mse, "MSE")
    other.update(*batches_of([2])[0])
    with pytest.raises(
        StateDictError, match=r"Metric 'MAE'.*missing \['MAE'\], unexpected \['MSE'\]"
    ):
        metric.load_state_dict(other.state_dict())
    worst = tt.Metric(mae, "MAE", aggregation="max")
    worst.update(*batches_of([2])[0])
    with pytest.raises(StateDictError, match=r"'MAE'.*aggregates \['MAE'\] as 'max'.*'mean'"):
        metric.load_state_dict(worst.state_dict())
    metric.update(*batches_of([2])[0])
    before = computed(metric)
    broken = metric.state_dict()
    broken["tensors"] = broken["tensors"][:-1]
    with pytest.raises(StateDictError):
        metric.load_state_dict(broken)
    assert_same(computed(metric), before)  # a failed load leaves the state as it was


def test_to_moves_state_and_returns_self() -> None:
    metrics = tt.MetricCollection(MSE=mse, MAE=mae)
    metrics.update(*batches_of([4])[0])
    expected = computed(metrics)
    assert metrics.to("cpu") is metrics
    assert_same(computed(metrics), expected)


@pytest.mark.parametrize("kind", ["metric", "loss", "joined"])
def test_a_refused_to_moves_nothing_and_says_why(kind: str) -> None:
    # to() takes a device: a dtype, a misspelt device or CUDA in a build without it was a raw
    # TypeError/RuntimeError/AssertionError, and the last left the state claiming to be on cuda;
    # 'meta' was accepted and lost every value (compute() gave tensors holding none).
    objective: Any = {
        "metric": lambda: tt.Metric(mae, "MAE"),
        "loss": lambda: tt.Loss(mae, "MAE") + 0.5 * tt.Loss(mse, "MSE"),
        "joined": lambda: tt.Metric(mae, "MAE") | tt.Metric(mse, "MSE"),
    }[kind]()
    data = batches_of([4, 3])
    objective.update(*data[0])
    refused: list[Any] = [torch.float64, "gpu0", 3.5, "meta", torch.device("meta")]
    if not torch.cuda.is_available():
        refused.append("cuda")
    for device in refused:
        with pytest.raises(InvalidArgumentError, match=r"to\(\) takes a device"):
            objective.to(device)
    objective.update(*data[1])  # still on the CPU
    outputs, targets = (torch.cat(parts) for parts in zip(*data, strict=True))
    torch.testing.assert_close(
        computed(objective)["MAE"].double(), mae(outputs.double(), targets.double()).mean()
    )


# -- the hooks' results ------------------------------------------------------------------------


class Finalized(tt.Objective[Tensor, Tensor]):
    """Reports whatever ``result`` makes of the aggregated values."""

    def __init__(self, result: Any) -> None:
        super().__init__()
        self.result = result

    def calculate(self, outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
        return {"errors": (outputs - targets).abs().flatten(1).mean(1)}

    def finalize(self, values: dict[str, Tensor]) -> Any:
        return self.result(values)


@pytest.mark.parametrize(
    ("result", "found"),
    [
        (lambda values: [values["errors"]], "list"),
        (lambda values: {"Median": float(values["errors"])}, "'Median'.*float"),
        (lambda values: {3: values["errors"]}, "int 3"),
    ],
    ids=["list", "float-value", "int-name"],
)
def test_a_finalize_result_that_is_not_named_tensors_raises_hook_error(
    result: Any, found: str
) -> None:
    # It was a raw AttributeError ('list' object has no attribute 'items', 'float' object has
    # no attribute 'clone') from inside compute(), or an int name reported as it was.
    objective = Finalized(result)
    objective.update(*batches_of([3])[0])
    for _ in range(2):  # nothing half-done is cached: the second call refuses the same way
        with pytest.raises(tt.errors.HookError, match=rf"Finalized: finalize\(\) .*{found}"):
            objective.compute()


def test_a_finalize_that_raises_is_a_metric_call_error_naming_it() -> None:
    # The documented median example, computed before any update, raised a bare KeyError.
    objective = Finalized(lambda values: {"Median": values["errors"].median()})
    with (
        pytest.warns(ComputedBeforeUpdatedWarning),
        pytest.raises(
            tt.errors.MetricCallError, match=r"Finalized: .*finalize.*KeyError"
        ) as caught,
    ):
        objective.compute()
    assert isinstance(caught.value.__cause__, KeyError)
    objective.update(*batches_of([3])[0])
    assert list(computed(objective)) == ["Median"]


def test_hooks_returning_what_torchtally_cannot_use_raise_hook_error() -> None:
    # accumulator_for returning int or an instance was a raw TypeError ("'rows' is an invalid
    # keyword argument for int()"); declared_names returning the string "xy" declared the
    # names 'x' and 'y'.
    class Counted(tt.Objective[Tensor, Tensor]):
        def calculate(self, outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
            return {"x": outputs[:, 0]}

    class IntAccumulator(Counted):
        def accumulator_for(self, name: str) -> Any:
            return int

    class InstanceAccumulator(Counted):
        def accumulator_for(self, name: str) -> Any:
            return Mean(rows=1)

    class StringNames(Counted):
        def declared_names(self) -> Any:
            return "xy"

    for cls, found in [
        (IntAccumulator, r"accumulator_for\('x'\).*int"),
        (InstanceAccumulator, r"accumulator_for\('x'\).*Mean"),
        (StringNames, r"declared_names\(\).*str 'xy'"),
    ]:
        objective = cls()
        with pytest.raises(tt.errors.HookError, match=rf"{cls.__name__}.*{found}"):
            objective.update(*batches_of([2])[0])


# -- Metric, MetricCollection and composition -------------------------------------------------


def test_metric_name_direction_and_defaults() -> None:
    positional = tt.Metric(mae, "Mean Abs")
    assert positional.name == "Mean Abs" and positional.fn is mae
    assert positional.higher_is_better is None
    assert tt.Metric(mae).name == "mae"  # default: the callable's __name__
    accuracy = tt.Metric(hits, name="Accuracy", higher_is_better=True)
    assert accuracy.higher_is_better is True
    assert accuracy.higher_is_better_for("Accuracy") is True
    assert accuracy.higher_is_better_for("other") is None
    assert accuracy.names == ("Accuracy",)
    assert repr(accuracy) == "Metric 'Accuracy'"


def test_metric_collection_from_keywords_and_from_dict() -> None:
    keywords = tt.MetricCollection(MSE=mse, MAE=mae)
    mapping = tt.MetricCollection.from_dict({"Mean Squared": mse, "MAE": mae})
    assert keywords.names == ("MSE", "MAE")
    assert mapping.names == ("Mean Squared", "MAE")
    assert isinstance(mapping, tt.MetricCollection)
    assert keywords.higher_is_better == {"MSE": None, "MAE": None}
    outputs, targets = batches_of([3])[0]
    keywords.update(outputs, targets)
    mapping.update(outputs, targets)
    assert computed(mapping)["Mean Squared"].item() == computed(keywords)["MSE"].item()


def test_or_builds_a_new_collection_without_state() -> None:
    mse_metric = tt.Metric(F.mse_loss, name="MSE", higher_is_better=False)
    mae_metric = tt.Metric(mae, "MAE", higher_is_better=False)
    hit_metric = tt.Metric(hits, "Hits", higher_is_better=True)
    mse_metric.update(torch.ones(1, 1), 3 * torch.ones(1, 1))
    both = mse_metric | mae_metric
    assert isinstance(both, tt.MetricCollection) and both is not mse_metric
    assert both.names == ("MSE", "MAE")
    with pytest.warns(ComputedBeforeUpdatedWarning):  # state is not carried over
        both.compute()
    three = both | hit_metric
    assert three.names == ("MSE", "MAE", "Hits")
    assert three.higher_is_better == {"MSE": False, "MAE": False, "Hits": True}
    assert both.names == ("MSE", "MAE")  # the operands are unchanged
    three.update(torch.ones(1, 1), 3 * torch.ones(1, 1))
    assert computed(three) == {
        "MSE": torch.tensor(4.0),
        "MAE": torch.tensor(2.0),
        "Hits": torch.tensor(0.0),
    }


def test_or_keeps_one_entry_for_the_same_callable_under_one_name() -> None:
    collection = tt.Metric(mae, "MAE") | tt.MetricCollection(MAE=mae, MSE=mse)
    assert collection.names == ("MAE", "MSE")


def test_one_name_for_two_callables_is_a_value_error() -> None:
    with pytest.raises(NameConflictError, match=r"'MAE'.*two different callables") as info:
        tt.Metric(mae, "MAE") | tt.Metric(mse, "MAE")
    assert isinstance(info.value, ValueError)


def test_or_with_something_else_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        tt.Metric(mae, "MAE") | 3  # type: ignore[operator]
    with pytest.raises(TypeError):
        3 | tt.Metric(mae, "MAE")  # type: ignore[operator]


def test_metric_aggregations() -> None:
    data = batches_of([4, 6])
    results = {}
    for aggregation in ("mean", "sum", "min", "max"):
        metric = tt.Metric(bias, "Bias", aggregation=aggregation)
        for batch in data:
            metric.update(*batch)
        results[aggregation] = computed(metric)["Bias"].item()
    per_sample = bias(*concat(data)).double()
    assert results["mean"] == pytest.approx(per_sample.mean().item(), rel=1e-6)
    assert results["sum"] == pytest.approx(per_sample.sum().item(), rel=1e-6)
    assert results["min"] == pytest.approx(per_sample.min().item())
    assert results["max"] == pytest.approx(per_sample.max().item())


def test_metric_refuses_unknown_aggregations_and_non_callables() -> None:
    with pytest.raises(ValueError, match=r"'MAE'.*'median'"):
        tt.Metric(mae, "MAE", aggregation="median")
    with pytest.raises(TypeError, match="callable"):
        tt.Metric(3, "Three")  # type: ignore[arg-type]


def _macro_f1() -> Any:
    return torchmetrics.classification.MulticlassF1Score(num_classes=4, average="macro")


STATEFUL_CALLABLES = {
    "torchmetrics metric": _macro_f1,
    "torchmetrics adapter": lambda: from_torchmetrics(_macro_f1(), "F1"),
    "torchtally metric": lambda: tt.Metric(mae, "MAE"),
}
TAKING_A_CALLABLE = {
    "Metric": lambda fn: tt.Metric(fn, "F1"),
    "MetricCollection keyword": lambda fn: tt.MetricCollection(F1=fn),
    "MetricCollection.from_dict": lambda fn: tt.MetricCollection.from_dict({"F1": fn}),
    "MetricCollection positional": lambda fn: tt.MetricCollection(fn),
    "Loss": lambda fn: tt.Loss(fn, "F1"),
    "DictLoss": lambda fn: tt.DictLoss(fn, "F1"),
    "DictLoss.summed": lambda fn: tt.DictLoss.summed(fn, "F1"),
}


# A Metric given by name to a collection gives it its callable (documented): no refusal there.
BY_NAME_IN_A_COLLECTION = {
    ("torchtally metric", "MetricCollection keyword"),
    ("torchtally metric", "MetricCollection.from_dict"),
}
STATEFUL_IN_PLACE_OF_A_CALLABLE = [
    pytest.param(make, build, id=f"{what}-{where}")
    for what, make in STATEFUL_CALLABLES.items()
    for where, build in TAKING_A_CALLABLE.items()
    if (what, where) not in BY_NAME_IN_A_COLLECTION
]


@pytest.mark.parametrize(("make", "build"), STATEFUL_IN_PLACE_OF_A_CALLABLE)
def test_an_object_keeping_its_own_state_is_no_callable_of_a_value(make: Any, build: Any) -> None:
    # Called per batch, a macro F1 gave batch F1s whose size-weighted mean (0.1643 over
    # batches of 8, 5, 13, 1, 7) is not the F1 of the data (0.1597), while its own state
    # grew unseen: refused, pointing at | and as_loss.
    with pytest.raises(InvalidArgumentError, match=r"keeps its own state.*join it with \|"):
        build(make())


# -- hand-written objectives ------------------------------------------------------------------


def test_average_objective_from_the_drytorch_documentation() -> None:
    my_metrics = MyMetrics()
    my_metrics.update(torch.ones(1, 1), 3 * torch.ones(1, 1))
    assert computed(my_metrics) == {"MSE": torch.tensor(4.0), "MAE": torch.tensor(2.0)}
    data = batches_of([2, 9, 4])
    reference = tt.MetricCollection(MSE=mse, MAE=mae)
    my_metrics.reset()
    for batch in data:
        my_metrics.update(*batch)
        reference.update(*batch)
    for name, value in computed(reference).items():
        torch.testing.assert_close(computed(my_metrics)[name], value)


def test_custom_objective_with_max_cat_and_compute() -> None:
    summary = ScoreSummary()
    summary.update(torch.tensor([1.0, 5.0, 2.0]), torch.zeros(3))
    summary.update(torch.tensor([-4.0]), torch.zeros(1))
    assert computed(summary) == {
        "worst": torch.tensor(5.0),
        "mean": torch.tensor(3.0),
        "median": torch.tensor(2.0),
    }


class Kept(tt.Objective[Tensor, Tensor]):
    """Every output value, concatenated (``'cat'``), in the dtype the batches had."""

    aggregation = "cat"

    @override
    def calculate(self, outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
        return {"values": outputs}


def test_a_concatenation_of_integers_and_halves_keeps_every_integer() -> None:
    # int64 ids with float16 scores: torch's promotion (float16) reported 4097 as 4096, and
    # 2**53 as inf. Every path that joins the two (queue, fold, merge, sync, load) keeps them.
    ids, scores = torch.tensor([4097, 2**53, -7]), torch.tensor([1.5, -0.25], dtype=torch.float16)
    expected = [4097.0, float(2**53), -7.0, 1.5, -0.25]
    together = Kept()
    together.update(ids, torch.zeros(3))
    together.update(scores, torch.zeros(2))
    first, second = Kept(), Kept()
    first.update(ids, torch.zeros(3))
    second.update(scores, torch.zeros(2))
    first.merge_state(second)
    rank0, rank1 = Kept(), Kept()
    rank0.update(ids, torch.zeros(3))
    rank1.update(scores, torch.zeros(2))
    simulate_sync([[rank0], [rank1]])
    loaded = Kept()
    loaded.load_state_dict(together.state_dict())
    for objective in (together, first, rank0, rank1, loaded):
        values = objective.compute()["values"]
        assert values.dtype == torch.float64 and values.tolist() == expected


def test_objective_whose_names_vary_between_batches() -> None:
    class Sometimes(tt.AverageObjective[Tensor, Tensor]):
        @override
        def calculate(self, outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
            values = {"always": outputs}
            if outputs.shape[0] > 1:
                values["big"] = outputs
            return values

    objective = Sometimes()
    objective.update(torch.tensor([1.0, 3.0]), torch.zeros(2))
    objective.update(torch.tensor([10.0]), torch.zeros(1))
    objective.update(torch.tensor([5.0, 7.0]), torch.zeros(2))
    assert computed(objective) == {"always": torch.tensor(26 / 5), "big": torch.tensor(4.0)}


def test_objective_reports_new_names_as_they_appear() -> None:
    objective = MyMetrics()
    assert objective.names == ()
    objective.update(torch.ones(1, 1), torch.zeros(1, 1))
    assert objective.names == ("MSE", "MAE")


# -- compute_metrics --------------------------------------------------------------------------


def test_compute_metrics_gives_plain_floats() -> None:
    metrics = tt.MetricCollection(MSE=mse, MAE=mae)
    metrics.update(torch.ones(2, 1), 3 * torch.ones(2, 1))
    assert tt.compute_metrics(metrics) == {"MSE": 4.0, "MAE": 2.0}
    assert all(type(value) is float for value in tt.compute_metrics(metrics).values())


def test_compute_metrics_accepts_foreign_objectives() -> None:
    import torchmetrics

    foreign = torchmetrics.MeanSquaredError()
    foreign.update(torch.ones(2), 3 * torch.ones(2))
    assert tt.compute_metrics(foreign) == {"MeanSquaredError": 4.0}

    class Named:
        name = "Score"

        def compute(self) -> float:
            return 0.5

    class Mapping:
        def compute(self) -> dict[str, Tensor]:
            return {"a": torch.tensor(1), "b": torch.tensor(2.5)}

    assert tt.compute_metrics(Named()) == {"Score": 0.5}
    assert tt.compute_metrics(Mapping()) == {"a": 1.0, "b": 2.5}


# -- values you can trust: nothing the user can reach is aliased (issue 9) ----------------------


def accuracy(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs.round() == targets).float()


def test_changing_the_returned_values_in_place_does_not_change_the_epoch() -> None:
    # torchtally 0.1 queued the callable's own tensor: x100 three times gave 50.25, not 0.75.
    metric = tt.Metric(accuracy, "Acc")
    for _ in range(3):
        values = metric.update(torch.tensor([1.0, 0.0, 1.0, 1.0]), torch.ones(4))
        values["Acc"].mul_(100)  # a percentage for a log line
    assert computed(metric)["Acc"].item() == 0.75


def test_changing_the_inputs_in_place_does_not_change_the_epoch() -> None:
    flat = tt.Metric(lambda o, t: o.flatten(), "Flat")
    sigmoid = tt.Metric(lambda o, t: o.sigmoid().mean(1), "Sigmoid")
    buffer = torch.zeros(4, 1)
    logits = torch.zeros(4, 3)
    for step in range(5):
        buffer.fill_(float(step))  # a reused output buffer
        flat.update(buffer, torch.zeros(4))
        buffer.zero_()
        sigmoid.update(logits, torch.zeros(4))
        logits.sigmoid_()  # changed in place after the update
        logits.zero_()
    assert computed(flat)["Flat"].item() == 2.0
    assert computed(sigmoid)["Sigmoid"].item() == 0.5


def test_compute_results_share_no_memory_with_the_state() -> None:
    maximum = tt.Metric(lambda o, t: o, "X", aggregation="max")
    total = tt.Metric(lambda o, t: o, "X", aggregation="sum")
    summary = ScoreSummary()
    for objective in (maximum, total, summary):
        objective.update(torch.tensor([5.0]), torch.zeros(1))
        first = objective.compute()
        for value in first.values():
            value.mul_(100)  # cached values must not change
        before = computed(objective)
        for value in objective.compute().values():
            value.add_(1)
        assert_same(computed(objective), before)
        objective.update(torch.tensor([1.0]), torch.zeros(1))
    assert computed(maximum)["X"].item() == 5.0
    assert computed(total)["X"].item() == 6.0
    assert computed(summary)["median"].item() == 1.0


class Mutation:
    """A way a user can change, in place, a tensor they got back from or gave to update."""

    def __init__(self, where: str, how: str) -> None:
        self.where, self.how = where, how

    def apply(self, tensor: Tensor) -> None:
        {"mul": lambda: tensor.mul_(-3), "zero": tensor.zero_, "fill": lambda: tensor.fill_(7)}[
            self.how
        ]()


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(1, 9), min_size=1, max_size=12),
    st.lists(
        st.builds(
            Mutation,
            st.sampled_from(["outputs", "MAE", "Scalar", "Big"]),
            st.sampled_from(["mul", "zero", "fill"]),
        ),
        max_size=12,
    ),
)
def test_no_in_place_change_after_update_changes_the_epoch(
    sizes: list[int], mutations: list[Mutation]
) -> None:
    make = lambda: tt.MetricCollection(  # noqa: E731
        MAE=mae, Scalar=F.mse_loss, Big=lambda o, t: o[:, 0], Max=lambda o, t: o.amax(1)
    )
    touched, untouched = make(), make()
    for index, (outputs, targets) in enumerate(batches_of(sizes, seed=len(sizes))):
        untouched.update(outputs.clone(), targets.clone())
        values = touched.update(outputs, targets)
        for mutation in mutations[index :: len(sizes)]:
            mutation.apply(outputs if mutation.where == "outputs" else values[mutation.where])
    assert_same(computed(touched), computed(untouched))


def test_values_that_view_big_tensors_do_not_keep_them_alive() -> None:
    metric = tt.Metric(lambda o, t: o[:, 0], "First")  # a view of the whole outputs
    for _ in range(8):
        outputs = torch.randn(64, 5_000)
        alive = weakref.ref(outputs)
        metric.update(outputs, torch.zeros(64))
        del outputs
        gc.collect()
        assert alive() is None  # only a copy of the 64 values is held
    assert queued_elements(metric) <= PENDING_ELEMENTS


def test_the_memory_bound_survives_reset() -> None:
    # torchtally 0.1 sized its queue from the last batch: after an epoch ending on a batch
    # of one, 63 big batches stayed queued (516 MB over a 65,536-element bound).
    metric = tt.Metric(lambda o, t: o, "X")
    metric.update(torch.zeros(1), torch.zeros(1))
    metric.reset()
    for _ in range(6):
        metric.update(torch.zeros(1 << 16), torch.zeros(1 << 16))
        assert queued_elements(metric) <= max(PENDING_ELEMENTS, 1 << 16)


# -- the precision policy through objectives ------------------------------------------------------


def test_half_precision_sums_integer_sums_and_bfloat16_means() -> None:
    ones = tt.Metric(lambda o, t: o, "Ones", aggregation="sum")
    for _ in range(100):
        ones.update(torch.ones(1000, dtype=torch.float16), torch.zeros(1000))
    assert computed(ones)["Ones"].item() == 100_000.0  # float16 would overflow to inf

    big = 16_777_217
    count = tt.Metric(lambda o, t: o, "Count", aggregation="sum")
    peak = tt.Metric(lambda o, t: o, "Peak", aggregation="max")
    for objective in (count, peak):
        objective.update(torch.tensor([big, 0]), torch.zeros(2))
    assert computed(count)["Count"].item() == big and computed(count)["Count"].dtype == torch.int64
    assert computed(peak)["Peak"].item() == big

    generator = torch.Generator().manual_seed(5)
    outputs = torch.rand(1000, generator=generator).round().bfloat16()
    targets = torch.rand(1000, generator=generator).round().bfloat16()
    bf16 = tt.Metric(lambda o, t: (o == t).to(torch.bfloat16), "Acc")
    for start in range(0, 1000, 64):
        bf16.update(outputs[start : start + 64], targets[start : start + 64])
    exact = (outputs == targets).double().mean()
    assert computed(bf16)["Acc"].dtype == torch.float32
    assert computed(bf16)["Acc"].item() == pytest.approx(exact.item(), abs=1e-7)


def test_one_infinite_value_makes_the_mean_infinite_not_nan() -> None:
    nll = tt.Metric(lambda p, t: -torch.log(p), "NLL")
    nll.update(torch.tensor([0.5, 0.25]), torch.zeros(2))
    nll.update(torch.tensor([0.0, 0.5]), torch.zeros(2))  # one probability of 0
    nll.update(torch.tensor([0.5]), torch.zeros(1))
    assert computed(nll)["NLL"].item() == math.inf


# -- weights --------------------------------------------------------------------------------------


def test_a_number_weight_is_the_batch_total_for_a_token_level_mean() -> None:
    def token_loss(outputs: Tensor, targets: Tensor) -> Tensor:
        mask = targets >= 0  # -1 marks padding
        return ((outputs - targets).abs() * mask).sum() / mask.sum()  # mean over real tokens

    metric = tt.Metric(token_loss, "Token MAE")
    targets = [torch.tensor([[1.0, 2.0, -1.0], [1.0, -1.0, -1.0]]), torch.tensor([[0.0, 0.0, 0.0]])]
    outputs = [torch.zeros(2, 3), torch.ones(1, 3)]
    for output, target in zip(outputs, targets, strict=True):
        metric.update(output, target, weight=(target >= 0).sum())  # a 0-d tensor: no host sync
    # every real token weighs the same: (1 + 2 + 1 + 1 + 1 + 1) / 6
    assert computed(metric)["Token MAE"].item() == pytest.approx(7 / 6)


def test_sequence_first_tensors_take_an_explicit_weight() -> None:
    def per_sequence(outputs: Tensor, targets: Tensor) -> Tensor:  # (T, B) in, (B,) out
        return (outputs - targets).abs().mean(0)

    # per-sample weights say how many samples there are: B, not the leading T
    weighted = tt.Metric(per_sequence, "MAE", weight=lambda o, t: torch.ones(t.shape[1]))
    for batch in (2, 5):
        outputs = torch.arange(7 * batch, dtype=torch.float32).reshape(7, batch)
        weighted.update(outputs, torch.zeros(7, batch))
    every = torch.cat(
        [torch.arange(7 * b, dtype=torch.float64).reshape(7, b).mean(0) for b in (2, 5)]
    )
    assert computed(weighted)["MAE"].item() == pytest.approx(every.mean().item())


def test_per_sample_weights_exclude_and_scale_samples() -> None:
    metrics = tt.MetricCollection(Error=lambda o, t: (o - t).abs(), Peak=lambda o, t: o)
    metrics = tt.MetricCollection.from_dict({"Error": lambda o, t: (o - t).abs()})
    peak = tt.Metric(lambda o, t: o, "Peak", aggregation="max")
    outputs, targets = torch.tensor([1.0, 9.0, 3.0]), torch.zeros(3)
    weight = torch.tensor([2.0, 0.0, 1.0])
    metrics.update(outputs, targets, weight=weight)
    peak.update(outputs, targets, weight=weight)
    assert computed(metrics)["Error"].item() == pytest.approx((2 * 1 + 3) / 3)
    assert computed(peak)["Peak"].item() == 3.0  # the excluded 9 is not the maximum


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32])
@pytest.mark.parametrize("weight", [2.0, torch.tensor([1.0, 3.0])], ids=["number", "per-sample"])
def test_weighted_integer_maxima_of_narrow_integer_dtypes(dtype: torch.dtype, weight: Any) -> None:
    # These raised a raw RuntimeError, and compute() then reported int64's minimum.
    hit = tt.Metric(lambda o, t: (o == t).to(dtype), "Hit", aggregation="max")
    hit.update(torch.tensor([1, 2]), torch.tensor([1, 0]), weight=weight)
    assert_same(computed(hit), {"Hit": torch.tensor(1)})


def outputs_of(outputs: Tensor, targets: Tensor) -> Tensor:
    return outputs


def test_weighted_sums_of_integers_and_booleans_are_reported_in_float64() -> None:
    def metric() -> tt.Metric:
        return tt.Metric(outputs_of, "S", aggregation="sum")

    # int64 truncated both to 0.
    flags = metric()
    weight = torch.tensor([0.3, 1, 0.3], dtype=torch.float64)
    flags.update(torch.tensor([True, False, True]), torch.zeros(3), weight=weight)
    assert computed(flags)["S"].dtype == torch.float64
    assert computed(flags)["S"].item() == pytest.approx(0.6, rel=1e-15)
    ones = metric()
    ones.update(torch.ones(6, dtype=torch.int64), torch.zeros(6), weight=1)  # each weighs 1/6
    assert computed(ones)["S"].dtype == torch.float64
    assert computed(ones)["S"].item() == pytest.approx(1.0, rel=1e-15)
    counts = metric()
    counts.update(torch.ones(6, dtype=torch.int64), torch.zeros(6))
    assert_same(computed(counts), {"S": torch.tensor(6)})  # unweighted: exact int64
    simulate_sync([[ones], [counts]])  # a weighted rank makes the synced row float64
    for synced in (ones, counts):
        assert computed(synced)["S"].dtype == torch.float64
        assert computed(synced)["S"].item() == pytest.approx(7.0, rel=1e-15)


def recall(outputs: Tensor, targets: Tensor) -> Tensor:
    return ((outputs > 0.5) & (targets > 0)).sum(1) / (targets > 0).sum(1)  # NaN: no positives


def has_positives(outputs: Tensor, targets: Tensor) -> Tensor:
    return ((targets > 0).sum(1) > 0).double()


def test_a_weight_of_zero_excludes_a_nan_or_infinite_value() -> None:
    # NaN x 0 is NaN: the epoch values were NaN although the docs say 0 excludes a sample.
    outputs = torch.tensor([[0.9, 0.1], [0.2, 0.3], [0.8, 0.7]])
    targets = torch.tensor([[1, 1], [0, 0], [1, 0]])
    mean = tt.Metric(recall, "Recall", weight=has_positives)
    total = tt.Metric(recall, "Recall", aggregation="sum", weight=has_positives)
    scalar = tt.Metric(lambda o, t: o.mean(), "Scalar")
    for objective in (mean, total, scalar):
        objective.running(2)
    for objective in (mean, total):
        objective.update(outputs, targets)
        objective.update(outputs[1:2], targets[1:2])  # only the excluded row
    scalar.update(torch.tensor([math.nan]), torch.zeros(1), weight=0)
    scalar.update(torch.tensor([math.inf, 1.0]), torch.zeros(2), weight=torch.tensor(0.0))
    scalar.update(torch.tensor([2.0, 4.0]), torch.zeros(2))
    # references on the included rows alone: recalls 1/2 and 1
    assert computed(mean)["Recall"].item() == pytest.approx(0.75, rel=1e-15)
    assert computed(total)["Recall"].item() == pytest.approx(1.5, rel=1e-15)
    assert computed(scalar)["Scalar"].item() == 3.0
    assert mean.running(2)["Recall"].item() == pytest.approx(0.75, rel=1e-15)
    assert scalar.running(2)["Scalar"].item() == 3.0


def test_a_negative_tensor_weight_makes_the_value_nan_not_a_wrong_number() -> None:
    # A tensor weight is never read on the host, so it cannot be refused: a weight of -1
    # made a mean of [1, 2, 3, 4] weighted [1, -1, 1, 1] report 6 / 2 = 3.0 (no true value).
    outputs, targets = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.zeros(4)
    negative = torch.tensor([1.0, -1.0, 1.0, 1.0])
    mean = tt.Metric(outputs_of, "M")
    total = tt.Metric(outputs_of, "M", aggregation="sum")
    batch_mean = tt.Metric(lambda o, t: o.mean(), "M")  # weighs w.sum() = 2 > 0
    loss = tt.Loss(outputs_of, "L")
    for objective in (mean, total, batch_mean):
        objective.running(2)
        objective.update(outputs, targets, weight=negative)
        objective.update(outputs, targets)
    loss(outputs, targets, weight=negative)
    for objective in (mean, total, batch_mean, loss):
        assert all(value.isnan() for value in computed(objective).values()), objective
    for objective in (mean, batch_mean):
        assert math.isnan(objective.running(2)["M"].item())
    later = tt.Metric(outputs_of, "M")  # a negative 0-d total weight too
    later.update(outputs, targets, weight=torch.tensor(-2.0))
    assert computed(later)["M"].isnan()
    # minima and maxima only ask whether a weight is 0: a negative one includes the value
    peak = tt.Metric(outputs_of, "M", aggregation="max")
    peak.update(outputs, targets, weight=negative)
    assert computed(peak)["M"].item() == 4.0
    compiled = tt.Metric(outputs_of, "M")  # under torch.compile each batch is folded at once
    compiled.update(outputs, targets)  # the name is known before the compiled region
    torch._dynamo.reset()
    torch.compile(compiled.update)(outputs, targets, weight=negative)
    assert computed(compiled)["M"].isnan()


@pytest.mark.parametrize("dtype", [torch.int64, torch.float32])
def test_a_maximum_of_values_that_all_weigh_zero_is_nan(dtype: torch.dtype) -> None:
    def peak(values: list[int], weight: Any) -> tt.Metric:
        metric = tt.Metric(outputs_of, "M", aggregation="max")
        metric.update(torch.tensor(values).to(dtype), torch.zeros(len(values)), weight=weight)
        return metric

    # It reported int64's minimum (or -inf): nothing was included, as in an empty row.
    nothing = peak([1, 2], torch.tensor([0.0, 0.0]))
    nothing.update(torch.tensor([5]).to(dtype), torch.zeros(1), weight=0.0)
    assert math.isnan(computed(nothing)["M"].item())
    restored = tt.Metric(outputs_of, "M", aggregation="max")
    restored.load_state_dict(nothing.state_dict())
    assert math.isnan(computed(restored)["M"].item())
    simulate_sync([[nothing], [restored]])  # every rank included nothing
    assert math.isnan(computed(nothing)["M"].item())
    ranks = [peak([7], 0), peak([-3, 2], torch.tensor([1.0, 0.0]))]
    simulate_sync([[ranks[0]], [ranks[1]]])
    expected = torch.tensor(-3).to(torch.int64 if dtype == torch.int64 else torch.float32)
    assert_same(computed(ranks[0]), {"M": expected})


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(1, 6),
            st.sampled_from(["none", "number", "zero-dim", "per-sample"]),
        ),
        min_size=1,
        max_size=10,
    )
)
def test_weighted_streaming_equals_the_weighted_mean_of_the_concatenation(
    plan: list[tuple[int, str]],
) -> None:
    generator = torch.Generator().manual_seed(len(plan))
    metrics = tt.MetricCollection(MAE=mae, Scalar=F.mse_loss)
    values: list[Tensor] = []
    scalars: list[tuple[float, float]] = []
    weights: list[Tensor] = []
    for size, kind in plan:
        outputs = torch.randn(size, 2, generator=generator, dtype=torch.float64)
        targets = torch.randn(size, 2, generator=generator, dtype=torch.float64)
        per_sample = torch.rand(size, generator=generator, dtype=torch.float64) + 0.1
        weight: Any = {
            "none": None,
            "number": float(per_sample.sum()),
            "zero-dim": per_sample.sum(),
            "per-sample": per_sample,
        }[kind]
        metrics.update(outputs, targets, weight=weight)
        share = (
            per_sample
            if kind == "per-sample"
            else torch.full((size,), float(per_sample.sum()) / size, dtype=torch.float64)
        )
        if kind == "none":
            share = torch.ones(size, dtype=torch.float64)
        values.append(mae(outputs, targets))
        weights.append(share)
        scalars.append((float(F.mse_loss(outputs, targets)), float(share.sum())))
    every, weight_of = torch.cat(values), torch.cat(weights)
    expected_mae = float((every * weight_of).sum() / weight_of.sum())
    expected_scalar = sum(v * w for v, w in scalars) / sum(w for _, w in scalars)
    result = computed(metrics)
    assert result["MAE"].item() == pytest.approx(expected_mae, rel=1e-12)
    assert result["Scalar"].item() == pytest.approx(expected_scalar, rel=1e-12)


def test_weights_never_synchronise_with_the_host() -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("update synchronised with the host")

    metrics = tt.MetricCollection(MSE=mse, Scalar=F.mse_loss)
    patched = ("item", "cpu", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__")
    data = batches_of([8, 8, 3])
    with mock.patch.multiple(torch.Tensor, **dict.fromkeys(patched, refuse)):
        for step in range(600):
            outputs, targets = data[step % 3]
            weight = torch.full((len(outputs),), 0.5) if step % 2 else torch.tensor(3.0)
            metrics.update(outputs, targets, weight=weight)
    assert computed(metrics)["MSE"].item() > 0


def test_sum_of_batch_totals_and_cat_refuse_weights_before_changing_anything() -> None:
    hits_total = tt.Metric(lambda o, t: (o == t).sum(), "Hits", aggregation="sum")
    hits_total.update(torch.ones(3), torch.ones(3))
    with pytest.raises(WeightError, match="batch total"):
        hits_total.update(torch.ones(3), torch.ones(3), weight=2.0)
    assert computed(hits_total)["Hits"].item() == 3
    summary = ScoreSummary()
    with pytest.raises(WeightError, match="'cat'"):
        summary.update(torch.ones(3), torch.zeros(3), weight=torch.ones(3))
    assert summary._ledger.updated is False


def test_a_weight_callable_given_at_construction() -> None:
    metric = tt.Metric(lambda o, t: o.mean(), "M", weight=lambda o, t: t.sum())
    metric.update(torch.ones(2), torch.tensor([1.0, 2.0]))  # mean 1, weight 3
    metric.update(torch.zeros(2), torch.tensor([0.5, 0.5]))  # mean 0, weight 1
    metric.update(torch.full((2,), 4.0), torch.ones(2), weight=4.0)  # an explicit weight wins
    assert computed(metric)["M"].item() == pytest.approx((3 + 0 + 16) / 8)
    with pytest.raises(TypeError, match="callable"):
        tt.Metric(lambda o, t: o, "M", weight=3)  # type: ignore[arg-type]
    broken = tt.Metric(lambda o, t: o, "M", weight=lambda o, t: 1 / 0)
    with pytest.raises(tt.errors.MetricCallError, match=r"'weight'.*ZeroDivisionError"):
        broken.update(torch.ones(2), torch.ones(2))


def tokens(outputs: Tensor, targets: Tensor) -> Tensor:
    return (targets >= 0).sum()


def token_mae(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).abs()[targets >= 0].mean()


def sequence_right(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs.round() == targets.clamp_min(0)).all(1).float()


def token_batches() -> list[tuple[Tensor, Tensor]]:
    # Two sequences right (6 tokens), then one wrong (1 token, padding -1 after it).
    return [
        (torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]), torch.tensor([[1.0, 0, 1], [0, 1, 1]])),
        (torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[0.0, -1, -1]])),
    ]


def test_a_metric_keeps_its_weight_callable_in_a_collection() -> None:
    # A Metric given to a collection lost its weight= callable: a token-weighted mean became a
    # batch-size-weighted one (1.2222 instead of 7/6... here 0.5 instead of 1/7).
    by_hand = (0.0 * 6 + 1.0 * 1) / 7  # 7 tokens: six exact, one off by 1
    makers = [
        lambda: tt.Metric(token_mae, "TokenMAE", weight=tokens),
        lambda: tt.MetricCollection(TokenMAE=tt.Metric(token_mae, weight=tokens)),
        lambda: tt.MetricCollection.from_dict({"TokenMAE": tt.Metric(token_mae, weight=tokens)}),
        lambda: tt.MetricCollection(TokenMAE=tt.Metric(token_mae), weight=tokens),
    ]
    for make in makers:
        objective = make()
        for outputs, targets in token_batches():
            objective.update(outputs, targets)
        assert objective.compute()["TokenMAE"].item() == pytest.approx(by_hand)


def test_values_weighted_otherwise_are_not_joined_into_one_objective() -> None:
    # Joining a token-weighted metric and a per-sample accuracy weighted the accuracy by tokens
    # too, silently (6/7 instead of 2/3).
    weighted = tt.Metric(token_mae, "Token MAE", weight=tokens)
    plain = tt.Metric(sequence_right, "Acc")
    attempts = [
        lambda: weighted | plain,
        lambda: plain | weighted,
        lambda: weighted | tt.MetricCollection(Acc=sequence_right),
        lambda: tt.objectives.Joined(weighted, plain),
        lambda: tt.MetricCollection(TokenMAE=weighted, Acc=sequence_right),
        lambda: tt.MetricCollection(TokenMAE=weighted, Acc=plain),
        lambda: tt.MetricCollection(TokenMAE=weighted, weight=lambda o, t: t.numel()),
        lambda: tt.MetricCollection(lambda o, t: {"Acc": sequence_right(o, t)}, TokenMAE=weighted),
    ]
    for attempt in attempts:
        with pytest.raises(WeightError, match="different weight= callables"):
            attempt()
    both = weighted | tt.Metric(token_mae, "Again", weight=tokens)  # one callable: joined
    for outputs, targets in token_batches():
        both.update(outputs, targets)
    assert both.compute()["Again"].item() == pytest.approx(1 / 7)
    separate = tt.Metric(sequence_right, "Acc")
    for outputs, targets in token_batches():
        separate.update(outputs, targets)
    assert separate.compute()["Acc"].item() == pytest.approx(2 / 3)


# -- smaller points -------------------------------------------------------------------------------


def test_a_refused_update_keeps_the_synced_view() -> None:
    metric = tt.Metric(lambda o, t: o, "X")
    metric.update(torch.ones(2), torch.zeros(2))
    simulate_sync([[metric]])  # a synced view
    assert metric._ledger.synced is not None
    with pytest.raises(ResultShapeError):
        metric.update(torch.ones(3, 2), torch.zeros(3))
    assert metric._ledger.synced is not None
    metric.update(torch.ones(2), torch.zeros(2))
    assert metric._ledger.synced is None  # an accepted update drops it


def test_the_label_is_built_once_not_per_value() -> None:
    calls = 0
    original = tt.MetricCollection._label

    def counting(self: Any) -> str:
        nonlocal calls
        calls += 1
        return original(self)

    many = tt.MetricCollection.from_dict({f"M{i}": mae for i in range(400)})
    many.update(*batches_of([2])[0])
    with mock.patch.object(tt.MetricCollection, "_label", counting):
        for outputs, targets in batches_of([4, 4, 2, 3, 1, 2.0 and 5]):
            many.update(outputs.double() if len(outputs) == 1 else outputs, targets)
        computed(many)
    assert calls == 0  # built once, when the objective was made: not per update or value


def test_load_state_dict_refuses_incomplete_or_damaged_counts_atomically() -> None:
    collection = tt.MetricCollection(MSE=mse, MAE=mae)
    collection.update(*batches_of([4])[0])
    before = computed(collection)
    state = collection.state_dict()
    samples = [spec.name for spec in Mean.states].index("samples")
    total = [spec.name for spec in Mean.states].index("total")

    def damaged(change: Any) -> dict[str, Any]:
        copy_ = {**state, "tensors": list(state["tensors"]), "state": copy.deepcopy(state["state"])}
        change(copy_)
        return copy_

    broken = [
        damaged(lambda s: s["tensors"].pop(total)),  # a count with no sum
        damaged(lambda s: s["tensors"].__setitem__(samples, -s["tensors"][samples])),
        damaged(lambda s: s["tensors"].__setitem__(samples, s["tensors"][samples] * 2.7)),
        damaged(lambda s: s["state"]["accumulators"][0]["names"].pop()),  # a name missing
    ]
    for state_ in broken:
        with pytest.raises(StateDictError):
            collection.load_state_dict(state_)
        assert_same(computed(collection), before)


# -- running values ------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 6), st.booleans()), min_size=1, max_size=40),
    st.integers(1, 7),
)
def test_running_values_are_the_weighted_mean_of_the_last_batches(
    plan: list[tuple[int, bool]], window: int
) -> None:
    metrics = tt.MetricCollection.from_dict({"MAE": mae, "Scalar": F.mse_loss})
    reference = tt.MetricCollection.from_dict({"MAE": mae, "Scalar": F.mse_loss})
    metrics.running(window)
    seen: list[tuple[Tensor, Tensor, Tensor]] = []
    generator = torch.Generator().manual_seed(len(plan))
    for size, weighted in plan:
        outputs = torch.randn(size, 2, generator=generator, dtype=torch.float64)
        targets = torch.randn(size, 2, generator=generator, dtype=torch.float64)
        weight = torch.rand(size, generator=generator, dtype=torch.float64) + 0.5
        metrics.update(outputs, targets, weight=weight if weighted else None)
        reference.update(outputs, targets, weight=weight if weighted else None)
        seen.append(
            (outputs, targets, weight if weighted else torch.ones(size, dtype=torch.float64))
        )
    last = seen[-window:]
    expected_mae = sum(float((mae(o, t) * w).sum()) for o, t, w in last) / sum(
        float(w.sum()) for _, _, w in last
    )
    expected_scalar = sum(float(F.mse_loss(o, t) * w.sum()) for o, t, w in last) / sum(
        float(w.sum()) for _, _, w in last
    )
    running = metrics.running(window)
    assert set(running) == {"MAE", "Scalar"}
    assert running["MAE"].item() == pytest.approx(expected_mae, rel=1e-12)
    assert running["Scalar"].item() == pytest.approx(expected_scalar, rel=1e-12)
    assert_same(computed(metrics), computed(reference))  # the epoch values are not disturbed


def test_running_values_span_folds_leave_out_other_aggregations_and_restart_at_reset() -> None:
    collection = tt.MetricCollection.from_dict({"Mean": lambda o, t: o.mean(1)})
    peak = tt.Metric(lambda o, t: o.mean(1), "Peak", aggregation="max")
    both = collection | peak
    both.running(3)
    for step in range(2 * PENDING_BATCHES + 5):  # several folds of the queue
        both.update(torch.full((2, 1), float(step)), torch.zeros(2, 1))
    last = [2 * PENDING_BATCHES + 2, 2 * PENDING_BATCHES + 3, 2 * PENDING_BATCHES + 4]
    assert both.running(3) == {"Mean": torch.tensor(sum(last) / 3, dtype=torch.float64)}
    both.reset()
    assert both.running(3) == {}
    for window in (0, 2.0, "3", True):  # a raw ValueError for 0; 2.0 was taken for 2
        with pytest.raises(InvalidArgumentError, match=r"MetricCollection.*window of at least 1"):
            both.running(window)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(0, 4),
    st.booleans(),
    st.lists(st.sampled_from(["batch", "compute", 1, 2, 3, 5]), max_size=25),
)
def test_running_values_of_several_windows_read_the_same_remembered_batches(
    before: int, computed_before: bool, steps: list[str | int]
) -> None:
    # A call with another window than the last one started over: a progress bar reading
    # running(2) and a log line reading running(3) got {} after every compute().
    metric = tt.Metric(lambda o, t: o, "V")
    queued: list[float] = []  # a model of the objective: batches not yet folded,
    ring: list[float] = []  # the folded batches it remembers,
    capacity = 0  # and how many it keeps (0: running() never called)
    for value in range(before):
        metric.update(torch.tensor([100.0 + value]), torch.zeros(1))
        queued.append(100.0 + value)
    if computed_before and before:
        metric.compute()
        queued = []  # folded before the first call: not remembered
    for step, action in enumerate(steps):
        if action == "batch":
            metric.update(torch.tensor([float(step)]), torch.zeros(1))
            queued.append(float(step))
        elif action == "compute":
            if before or ring or queued or capacity:
                metric.compute()
            ring = (ring + queued)[-capacity:] if capacity else []
            queued = []
        else:
            assert isinstance(action, int)
            capacity = max(capacity, action)
            last = (ring + queued)[-action:]
            mean = sum(last) / max(len(last), 1)
            expected = {"V": torch.tensor(mean, dtype=torch.float64)} if last else {}
            assert metric.running(action) == expected


def test_a_value_not_matching_a_per_sample_weight_says_where_the_batch_size_comes_from() -> None:
    # The (5,) weight sets the batch size; the message blamed the (6,) values alone.
    mae = tt.Metric(lambda o, t: (o - t).abs().mean(1), "MAE")
    with pytest.raises(ResultShapeError, match=r"found shape \(6,\) \(the batch size is the len"):
        mae.update(torch.ones(6, 2), torch.zeros(6, 2), weight=torch.ones(5))
    mae.update(torch.ones(6, 2), torch.zeros(6, 2), weight=torch.ones(6))
    assert mae.compute() == {"MAE": torch.tensor(1.0)}


def test_running_values_carry_the_prefix_and_postfix_compute_reports() -> None:
    mae = tt.Metric(lambda o, t: (o - t).abs().mean(1), "MAE")
    train = tt.MetricCollection(MAE=mae, prefix="val/", postfix="_ep")
    train.running(2)
    joined = train.renamed(prefix="val/", postfix="_ep") | tt.Metric(lambda o, t: o.mean(1), "Lvl")
    joined.running(2)
    for value in (1.0, 2.0, 4.0):
        train.update(torch.full((2, 1), value), torch.zeros(2, 1))
        joined.update(torch.full((2, 1), value), torch.zeros(2, 1))
    assert train.running(2) == {"val/MAE_ep": torch.tensor(3.0, dtype=torch.float64)}
    # joining a prefixed collection keeps its names (it used to merge them away)
    assert set(joined.compute()) == {"val/MAE_ep", "Lvl"}
    assert joined.running(2) == {
        "val/MAE_ep": torch.tensor(3.0, dtype=torch.float64),
        "Lvl": torch.tensor(3.0, dtype=torch.float64),
    }


def test_a_sparse_value_gets_a_library_error_and_changes_nothing() -> None:
    # A callable returning a sparse tensor got a raw RuntimeError from the copy into the queue.
    fresh = tt.Metric(lambda o, t: (o - t).abs().to_sparse(), "MAE")
    with pytest.raises(tt.errors.ResultTypeError, match=r"sparse_coo tensor.*to_dense"):
        fresh.update(torch.ones(3), torch.zeros(3))
    # One that has seen dense batches refuses a sparse one, and keeps its value.
    identity = tt.Metric(lambda o, t: o, "X")
    identity.update(torch.ones(2), torch.zeros(2))
    with pytest.raises(tt.errors.ResultTypeError, match="to_dense"):
        identity.update(torch.full((2,), 5.0).to_sparse(), torch.zeros(2))
    assert identity.compute() == {"X": torch.tensor(1.0)}


@pytest.mark.parametrize(
    "dtype", [torch.uint16, torch.uint32, torch.uint64, torch.float8_e4m3fn, torch.float8_e5m2]
)
@pytest.mark.parametrize("aggregation", ["mean", "sum", "max"])
def test_a_value_of_a_dtype_no_state_holds_is_refused_and_changes_nothing(
    dtype: torch.dtype, aggregation: str
) -> None:
    # These dtypes were accepted, then 'max' raised a raw NotImplementedError at compute()
    # and every state_dict() they made was refused by load_state_dict (unknown dtype name).
    metric = tt.Metric(lambda o, t: o, "X", aggregation=aggregation)
    metric.update(torch.tensor([1.0, 3.0]), torch.zeros(2))
    for value in (torch.tensor([5, 7]).to(dtype), torch.tensor(5).to(dtype)):
        with pytest.raises(tt.errors.ResultTypeError, match=rf"'X'.*{dtype}.*\.to\("):
            metric.update(value, torch.zeros(2))
    expected = {"mean": 2.0, "sum": 4.0, "max": 3.0}[aggregation]
    assert metric.compute() == {"X": torch.tensor(expected)}
    restored = tt.Metric(lambda o, t: o, "X", aggregation=aggregation)
    restored.load_state_dict(metric.state_dict())
    assert restored.compute() == {"X": torch.tensor(expected)}

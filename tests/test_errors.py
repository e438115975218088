"""Tests of torchtally.errors: each bad input gets the library's own error and a useful message."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from torch import Tensor
from typing_extensions import override

import torchtally as tt
from torchtally import errors
from torchtally.errors import (
    BatchSizeError,
    ComputedBeforeUpdatedWarning,
    DeviceMismatchError,
    InvalidNameError,
    MetricCallError,
    NameConflictError,
    ResultShapeError,
    ResultTypeError,
    StateDictError,
    TorchTallyError,
    TorchTallyWarning,
)


def mae(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).abs()


def failing(outputs: Tensor, targets: Tensor) -> Tensor:
    raise ZeroDivisionError("the denominator vanished")


EXPECTED_BASES = {
    "BatchSizeError": ValueError,
    "CompileError": RuntimeError,
    "DeviceMismatchError": RuntimeError,
    "FormulaError": ValueError,
    "HookError": TypeError,
    "IncompatibleStateError": ValueError,
    "InvalidArgumentError": ValueError,  # and a TypeError
    "InvalidNameError": TypeError,
    "MetricCallError": RuntimeError,
    "NameConflictError": ValueError,
    "ResultShapeError": ValueError,
    "ResultTypeError": TypeError,
    "StateDictError": ValueError,
    "SyncError": RuntimeError,
    "TrackerError": ValueError,
    "UnsupportedObjectError": TypeError,
    "WeightError": ValueError,
}


@pytest.mark.parametrize(("name", "builtin"), sorted(EXPECTED_BASES.items()))
def test_every_error_subclasses_the_library_base_and_the_matching_builtin(
    name: str, builtin: type[Exception]
) -> None:
    cls = getattr(errors, name)
    assert issubclass(cls, TorchTallyError) and issubclass(cls, builtin)
    assert name in errors.__all__


def test_arguments_of_the_wrong_type_or_value_raise_invalid_argument_error() -> None:
    from torchtally.aggregation import Mean, accumulator_class
    from torchtally.distributed import payload_limit, set_payload_limit

    class Counter:  # a stateful object: it aggregates itself, so wrap() takes no options
        def update(self, outputs: Any, targets: Any) -> None: ...
        def compute(self) -> float:
            return 0.0

        def reset(self) -> None: ...

    refused: list[Any] = [
        lambda: tt.Metric("mae", "MAE"),  # type: ignore[arg-type]
        lambda: tt.Loss(3.0, "L"),  # type: ignore[arg-type]
        lambda: tt.DictLoss(None, "L"),  # type: ignore[arg-type]
        lambda: tt.DictLoss.summed(None, "L"),  # type: ignore[arg-type]
        lambda: tt.MetricCollection(MAE=mae, Bad=1),  # type: ignore[arg-type]
        lambda: tt.MetricCollection(MAE=tt.Metric(mae, "MAE", aggregation="cat")),
        lambda: tt.Metric(mae, "MAE", aggregation="median"),
        lambda: accumulator_class("median", "MAE"),
        lambda: Mean(rows=-1),
        lambda: tt.wrap(Counter(), aggregation="max"),
        lambda: tt.wrap(tt.Metric(mae, "MAE"), name="Other"),
        lambda: tt.wrap(lambda o, t: {"a": o}, "Parts", aggregation={"a": "median"}),
        lambda: set_payload_limit(-1),
        # a header carries it as an int64: beyond, one rank raised and the others waited
        lambda: set_payload_limit(2**63),
        lambda: tt.sync_all(object()),  # type: ignore[arg-type]
    ]
    limit = payload_limit()
    for make in refused:
        with pytest.raises(errors.InvalidArgumentError):
            make()
    assert payload_limit() == limit
    # Both builtins Python would raise for a wrong type or value still catch it.
    assert issubclass(errors.InvalidArgumentError, TypeError)
    assert issubclass(errors.InvalidArgumentError, ValueError)


def test_warnings_share_a_base() -> None:
    assert issubclass(ComputedBeforeUpdatedWarning, TorchTallyWarning)
    assert issubclass(TorchTallyWarning, UserWarning)
    exported = {name for name in errors.__all__ if not name.endswith("Warning")}
    assert exported == {*EXPECTED_BASES, "TorchTallyError"}


# -- a callable that raises -------------------------------------------------------------------


def test_a_raising_callable_gives_metric_call_error_chaining_the_cause() -> None:
    metric = tt.Metric(failing, "Ratio")
    with pytest.raises(MetricCallError) as info:
        metric.update(torch.zeros(2), torch.zeros(2))
    message = str(info.value)
    assert "Metric 'Ratio'" in message
    assert "ZeroDivisionError" in message and "the denominator vanished" in message
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_the_raising_entry_of_a_collection_is_named() -> None:
    metrics = tt.MetricCollection(MAE=mae, Ratio=failing)
    with pytest.raises(MetricCallError, match=r"MetricCollection\['MAE', 'Ratio'\].*'Ratio'"):
        metrics.update(torch.zeros(2), torch.zeros(2))
    with pytest.warns(ComputedBeforeUpdatedWarning):  # nothing of the failed batch was kept
        assert torch.isnan(metrics.compute()["MAE"])


def test_shape_errors_inside_a_callable_are_metric_call_errors() -> None:
    metric = tt.Metric(mae, "MAE")
    with pytest.raises(MetricCallError, match=r"'MAE'.*RuntimeError") as info:
        metric.update(torch.zeros(4), torch.zeros(3))
    assert isinstance(info.value.__cause__, RuntimeError)


# -- names ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [3, None, b"MAE", ""])
def test_metric_names_must_be_non_empty_strings(name: Any) -> None:
    if name is None:  # None means "use the callable's name"
        assert tt.Metric(mae, name).name == "mae"
        return
    with pytest.raises(InvalidNameError, match=f"Metric.*non-empty strings.*{type(name).__name__}"):
        tt.Metric(mae, name)


@pytest.mark.parametrize("name", [1, ("a",), ""])
def test_collection_names_must_be_non_empty_strings(name: Any) -> None:
    with pytest.raises(InvalidNameError, match=f"MetricCollection.*found {type(name).__name__}"):
        tt.MetricCollection.from_dict({name: mae})
    if name == "":
        with pytest.raises(InvalidNameError):
            tt.MetricCollection(**{name: mae})


def test_a_lambda_needs_a_name() -> None:
    with pytest.raises(InvalidNameError, match=r"lambda.*name="):
        tt.Metric(lambda o, t: o)


def test_a_hand_written_objective_returning_a_bad_name() -> None:
    class Numbered(tt.AverageObjective[Tensor, Tensor]):
        @override
        def calculate(self, outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
            return {0: outputs}  # type: ignore[dict-item]

    with pytest.raises(InvalidNameError, match=r"Numbered.*found int 0"):
        Numbered().update(torch.zeros(2), torch.zeros(2))


def test_one_name_for_two_callables() -> None:
    with pytest.raises(NameConflictError, match=r"MetricCollection.*'MAE'.*two different") as info:
        tt.Metric(mae, "MAE") | tt.Metric(failing, "MAE")
    assert "mae" in str(info.value) and "failing" in str(info.value)


# -- results ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "result", ["0.5", None, [0.5], (0.5,), {"a": 0.5}, 1j], ids=lambda r: type(r).__name__
)
def test_results_of_a_wrong_type_raise_result_type_error(result: Any) -> None:
    metric = tt.Metric(lambda o, t: result, "Score")
    with pytest.raises(ResultTypeError) as info:
        metric.update(torch.zeros(2), torch.zeros(2))
    message = str(info.value)
    assert "Metric 'Score'" in message and "'Score'" in message
    assert "tensor or a real Python number" in message
    assert type(result).__name__ in message or "complex" in message


def test_wrong_shapes_name_the_objective_and_both_sizes() -> None:
    metric = tt.Metric(lambda o, t: o.sum(1), "RowSum")
    with pytest.raises(ResultShapeError) as info:
        metric.update(torch.zeros(3, 2), torch.zeros(4))  # 3 values for a batch of 4
    message = str(info.value)
    assert "'RowSum'" in message and "(4,)" in message and "(3,)" in message


def test_integer_valued_results_are_accepted_and_reported_as_floats() -> None:
    metric = tt.Metric(lambda o, t: (o > t).long(), "Above")
    metric.update(torch.tensor([1.0, 0.0, 2.0]), torch.zeros(3))
    metric.update(torch.tensor([5.0]), torch.zeros(1))
    value = metric.compute()["Above"]
    assert value.dtype.is_floating_point and value.item() == 0.75
    counted = tt.Metric(lambda o, t: 2, "Two")
    counted.update(torch.zeros(3), torch.zeros(3))
    assert counted.compute() == {"Two": torch.tensor(2.0)}


def test_nan_in_a_result_propagates_to_the_epoch_value() -> None:
    # Documented decision: NaN is a real signal (a diverging model) and checking for it
    # would need a host synchronisation on every update, so it is kept, never dropped.
    metric = tt.Metric(lambda o, t: o, "Loss")
    metric.update(torch.tensor([1.0, float("nan")]), torch.zeros(2))
    metric.update(torch.tensor([3.0]), torch.zeros(1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no warning either: it is the value
        assert torch.isnan(metric.compute()["Loss"])
    metric.reset()
    metric.update(torch.tensor([float("inf"), 1.0]), torch.zeros(2))
    assert metric.compute()["Loss"].item() == float("inf")


# -- batch size -------------------------------------------------------------------------------


def test_no_tensor_to_read_the_batch_size_from() -> None:
    metric = tt.Metric(lambda o, t: 1.0, "Constant")
    with pytest.raises(BatchSizeError) as info:
        metric.update([1.0, 2.0], {"label": "cat"})
    message = str(info.value)
    assert "Metric 'Constant'" in message and "no tensor" in message
    assert "dict" in message and "list" in message


@pytest.mark.parametrize("where", ["targets", "outputs"])
def test_zero_dim_tensors_have_no_batch_dimension(where: str) -> None:
    metric = tt.Metric(lambda o, t: 1.0, "Constant")
    scalar = torch.tensor(1.0)
    outputs, targets = (torch.zeros(3), scalar) if where == "targets" else (scalar, None)
    with pytest.raises(BatchSizeError) as info:
        metric.update(outputs, targets)
    message = str(info.value)
    assert "Metric 'Constant'" in message and f"from the {where}" in message
    assert "0-d" in message and "first dimension is the batch" in message


# -- devices ----------------------------------------------------------------------------------


def test_values_on_another_device_than_the_state() -> None:
    # Refused at the update that sends them, before anything changes (checked by the queue).
    metric = tt.Metric(lambda o, t: o, "Score")
    metric.update(torch.ones(2), torch.ones(2))
    with pytest.raises(DeviceMismatchError) as info:
        metric.update(torch.ones(2, device="meta"), torch.ones(2, device="meta"))
    message = str(info.value)
    assert "'Score'" in message and "cpu" in message and "meta" in message
    assert ".to(device)" in message
    assert metric.compute() == {"Score": torch.tensor(1.0)}  # the refused batch changed nothing


def test_cpu_values_after_a_state_on_another_device() -> None:
    metric = tt.MetricCollection(Score=lambda o, t: o)
    metric.update(torch.ones(2, device="meta"), torch.ones(2, device="meta"))
    with pytest.raises(DeviceMismatchError, match=r"Score.*(meta.*cpu|several devices)"):
        metric.update(torch.ones(3), torch.ones(3))


# -- state dicts ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "found"),
    [
        (None, "NoneType"),
        ({"version": 1}, "version 1"),
        ({"version": 2, "state": {"names": []}, "tensors": []}, "'accumulators' list"),
        (
            {
                "version": 2,
                "state": {"accumulators": [{"names": ["Score"], "size": 0}]},
                "tensors": [],
            },
            "'mean'",
        ),
        ({"version": 2, "state": {"accumulators": [7]}, "tensors": []}, "7"),
        ({"version": 2, "state": {"accumulators": []}, "tensors": []}, "missing ['Score']"),
    ],
)
def test_loading_a_wrong_state_raises_state_dict_error(state: Any, found: str) -> None:
    metric = tt.Metric(lambda o, t: o, "Score")
    with pytest.raises(StateDictError) as info:
        metric.load_state_dict(state)
    message = str(info.value)
    assert "'Score'" in message and found in message


def test_a_calculate_that_returns_no_dict_is_a_result_type_error() -> None:
    class Bare(tt.AverageObjective[torch.Tensor, torch.Tensor]):
        def calculate(self, outputs: torch.Tensor, targets: torch.Tensor) -> Any:
            return outputs - targets

    with pytest.raises(ResultTypeError, match=r"Bare: calculate\(\) must return a dict .* Tensor"):
        Bare().update(torch.ones(3), torch.zeros(3))

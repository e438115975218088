"""Collections, callable objectives, ``compute_metrics`` and the hooks DRYTorch users reach for.

One test per point of the issue "Every objective composes with every other"
(points 3 to 7; points 1 and 2 are in ``test_composition.py`` and
``test_loss_algebra_adapters.py``), each checked against values computed here.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import pytest
import torch
import torchmetrics
from torch import Tensor
from torcheval import metrics as eval_metrics

import torchtally as tt
from torchtally.contrib.torcheval import from_torcheval
from torchtally.contrib.torchmetrics import from_torchmetrics
from torchtally.errors import HookError, InvalidArgumentError, StateDictError

OUTPUTS = torch.tensor([[1.0, 3.0], [0.0, 2.0], [4.0, 4.0]])
TARGETS = torch.zeros(3, 2)


def absolute(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).abs().mean(1)


def squared(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).pow(2).mean(1)


def both(outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
    """Several metrics in one pass (DRYTorch's positional callables)."""
    diff = outputs - targets
    return {"Bias": diff.mean(1), "Peak": diff.amax(1)}


# -- 3. a dict-valued callable next to named ones -------------------------------------------------


def test_a_collection_takes_dict_valued_callables_and_named_ones() -> None:
    collection = tt.MetricCollection(both, MAE=absolute)
    collection.update(OUTPUTS[:2], TARGETS[:2])
    collection.update(OUTPUTS[2:], TARGETS[2:])
    diff = (OUTPUTS - TARGETS).double()
    expected = {
        "MAE": diff.abs().mean(1).mean(),
        "Bias": diff.mean(1).mean(),
        "Peak": diff.amax(1).mean(),
    }
    computed = collection.compute()
    assert set(computed) == set(expected)
    for name, value in expected.items():
        assert computed[name].item() == pytest.approx(value.item())


# -- 4. prefix is an option, metrics are values ---------------------------------------------------


def test_prefix_and_postfix_rename_the_reported_values_only() -> None:
    collection = tt.MetricCollection(MAE=absolute, prefix="val/", postfix="_epoch")
    assert "prefix" not in collection and list(collection) == ["MAE"]
    collection.update(OUTPUTS, TARGETS)
    assert list(collection.compute()) == ["val/MAE_epoch"]
    assert collection.compute()["val/MAE_epoch"].item() == pytest.approx(
        absolute(OUTPUTS, TARGETS).mean().item()
    )


def test_the_repr_of_a_renamed_collection_shows_its_prefix_and_postfix() -> None:
    train = tt.MetricCollection(MAE=absolute)
    validation = train.renamed(prefix="val/")
    assert repr(train) == "MetricCollection['MAE']"
    assert repr(validation) == "MetricCollection['MAE'], prefix='val/'"
    assert repr(tt.MetricCollection(MAE=absolute, postfix="_epoch")) == (
        "MetricCollection['MAE'], postfix='_epoch'"
    )
    both = tt.MetricCollection.from_dict({"MAE": absolute}, prefix="val/", postfix="_epoch")
    assert repr(both) == "MetricCollection['MAE'], prefix='val/', postfix='_epoch'"
    with pytest.raises(StateDictError, match="prefix='val/'"):  # and so do its errors
        validation.load_state_dict(tt.MetricCollection(Bias=absolute).state_dict())


def test_a_metric_given_as_a_value_is_used_under_its_key() -> None:
    collection = tt.MetricCollection(Acc=tt.Metric(absolute, "ignored", higher_is_better=False))
    collection.update(OUTPUTS, TARGETS)
    assert list(collection.compute()) == ["Acc"]
    assert collection.higher_is_better_for("Acc") is False


@pytest.mark.parametrize(
    "arguments",
    [
        {"MAE": 3},  # not a callable
        {"MAE": absolute, "prefix": 3},  # not a string
        {"MAE": absolute, "postfix": None},
    ],
)
def test_every_argument_is_checked_at_construction(arguments: dict[str, Any]) -> None:
    with pytest.raises((InvalidArgumentError, TypeError, ValueError)):
        tt.MetricCollection(**arguments)


# -- 5. mappings, callables, compute_metrics ------------------------------------------------------


def test_a_collection_is_a_mapping_of_its_entries() -> None:
    collection = tt.MetricCollection(MAE=absolute, MSE=squared)
    assert len(collection) == 2
    assert list(collection) == ["MAE", "MSE"]
    assert "MAE" in collection and "Acc" not in collection
    assert collection["MAE"].fn is absolute
    assert list(collection.keys()) == ["MAE", "MSE"]
    with pytest.raises(KeyError):
        collection["Acc"]


def test_objectives_are_callable_and_return_the_batch_values() -> None:
    metric = tt.Metric(absolute, "MAE")
    batch = metric(OUTPUTS, TARGETS)  # as torchmetrics users write
    assert torch.equal(batch["MAE"], absolute(OUTPUTS, TARGETS))
    assert metric.compute()["MAE"].item() == pytest.approx(absolute(OUTPUTS, TARGETS).mean().item())


def test_compute_metrics_flattens_several_objectives_with_a_prefix() -> None:
    metric = tt.Metric(absolute, "MAE")
    per_class = from_torchmetrics(
        torchmetrics.classification.MulticlassAccuracy(num_classes=3, average=None), "Acc"
    )
    metric.update(OUTPUTS, TARGETS)
    per_class.update(torch.tensor([0, 1, 2, 2]), torch.tensor([0, 1, 1, 2]))
    values = tt.compute_metrics(metric, per_class, prefix="val/")
    assert values == {
        "val/MAE": pytest.approx(absolute(OUTPUTS, TARGETS).mean().item()),
        "val/Acc_0": 1.0,  # a vector result: one indexed name per element
        "val/Acc_1": 0.5,
        "val/Acc_2": 1.0,
    }
    assert all(type(value) is float for value in values.values())


def test_compute_metrics_refuses_a_name_reported_twice() -> None:
    first, second = tt.Metric(absolute, "MAE"), tt.Metric(squared, "MAE")
    first.update(OUTPUTS, TARGETS)
    second.update(OUTPUTS, TARGETS)
    with pytest.raises(tt.errors.NameConflictError, match="MAE"):
        tt.compute_metrics(first, second)


def test_compute_metrics_logs_an_empty_value_as_nan_and_refuses_what_no_float_stands_for() -> None:
    class Scores(tt.Objective[Tensor, Tensor]):
        aggregation = "cat"

        def calculate(self, outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
            return {"Scores": outputs}

    scores = Scores()
    scores.update(OUTPUTS, TARGETS)
    scores.reset()  # an epoch that saw nothing: an empty concatenation
    with pytest.warns(tt.errors.ComputedBeforeUpdatedWarning):
        assert scores.compute()["Scores"].numel() == 0
    values = tt.compute_metrics(scores, prefix="val/")
    assert list(values) == ["val/Scores"] and math.isnan(values["val/Scores"])  # not dropped

    class Curves:  # a foreign object: compute() gives (fpr, tpr) under one name
        def compute(self) -> dict[str, Any]:
            return {"ROC": (torch.zeros(3), torch.ones(3))}

    with pytest.raises(tt.errors.ResultTypeError, match="'ROC' of Curves is a tuple"):
        tt.compute_metrics(Curves())


# -- 6. the hooks subclasses override -------------------------------------------------------------


def test_drytorch_hooks_get_an_error_saying_what_to_write() -> None:
    with pytest.raises(HookError, match="aggregation"):

        class Aggregated(tt.AverageObjective[Tensor, Tensor]):
            def _get_aggregator(self) -> Any:
                return None

    with pytest.raises(HookError, match="finalize"):

        class Computed(tt.AverageObjective[Tensor, Tensor]):
            def _compute(self) -> Any:
                return None


def test_public_hooks_choose_the_accumulator_and_post_process() -> None:
    class Spread(tt.Objective[Tensor, Tensor]):
        def accumulator_for(self, name: str) -> Any:
            return {"low": tt.aggregation.Min, "high": tt.aggregation.Max}[name]

        def calculate(self, outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
            errors = absolute(outputs, targets)
            return {"low": errors, "high": errors}

        def finalize(self, values: dict[str, Tensor]) -> dict[str, Tensor]:
            return {"range": values["high"] - values["low"]}

    spread = Spread()
    spread.update(OUTPUTS, TARGETS)
    errors = absolute(OUTPUTS, TARGETS)
    assert spread.compute()["range"].item() == pytest.approx((errors.max() - errors.min()).item())


# -- 7. partial names, adapter states -------------------------------------------------------------


def test_partials_are_named_after_their_function() -> None:
    scaled = functools.partial(torch.nn.functional.l1_loss, reduction="mean")
    assert tt.Metric(scaled).names == ("l1_loss",)
    assert tt.Metric(functools.partial(absolute)).names == ("absolute",)


@pytest.mark.parametrize("library", ["torchmetrics", "torcheval"])
def test_a_damaged_adapter_state_changes_nothing(library: str) -> None:
    def make() -> Any:
        if library == "torchmetrics":
            return from_torchmetrics(
                torchmetrics.MeanSquaredError() + torchmetrics.MeanAbsoluteError(), "Sum"
            )
        return from_torcheval(
            {"MSE": eval_metrics.MeanSquaredError(), "Other": eval_metrics.MeanSquaredError()}
        )

    adapter = make()
    adapter.update(torch.tensor([1.0, 2.0]), torch.zeros(2))
    before = adapter.compute()
    state = make()
    state.update(torch.tensor([5.0]), torch.zeros(1))
    damaged = state.state_dict()
    if library == "torchmetrics":
        damaged["leaves"][1]["states"] = {"sum_abs_error": torch.zeros(5)}  # wrong shape, missing
    else:
        damaged["metrics"]["Other"] = {"sum_squared_error": "nothing"}
    with pytest.raises(StateDictError):
        adapter.load_state_dict(damaged)
    after = adapter.compute()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[name], before[name]) for name in before)


def test_an_adapter_refuses_a_state_of_the_wrong_shape_alone() -> None:
    # torchtally 0.1 loaded a (5,) sum where a (1,) one belongs; compute() then gave [inf] * 5.
    def make() -> Any:
        return from_torchmetrics(
            torchmetrics.MeanSquaredError() + torchmetrics.MeanAbsoluteError(), "Sum"
        )

    adapter = make()
    adapter.update(torch.tensor([1.0, 2.0]), torch.zeros(2))
    before = adapter.compute()
    state = make()
    state.update(torch.tensor([5.0]), torch.zeros(1))
    damaged = state.state_dict()
    damaged["leaves"][1]["states"]["sum_abs_error"] = torch.zeros(5)  # every key, one wrong shape
    with pytest.raises(StateDictError, match=r"shape \(1,\), found \(5,\)"):
        adapter.load_state_dict(damaged)
    after = adapter.compute()
    assert all(torch.equal(after[name], before[name]) for name in before)


def test_one_name_for_one_callable_with_other_options_is_refused() -> None:
    # Joined as one entry, the second metric's aggregation and direction were dropped: a max
    # reported the mean, and monitor_mode said 'min'.
    def error(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return (outputs - targets).abs()

    mean = tt.Metric(error, "Err")
    for other in (
        tt.Metric(error, "Err", aggregation="max"),
        tt.Metric(error, "Err", higher_is_better=True),
    ):
        with pytest.raises(tt.errors.NameConflictError, match="other options"):
            mean | other
    same = mean | tt.Metric(error, "Err")  # the same entry twice is one entry
    same.update(torch.tensor([1.0, 3.0]), torch.zeros(2))
    assert same.compute() == {"Err": torch.tensor(2.0)}

"""from_torchmetrics: names, forward, state, and the sync built on torchmetrics' own reductions.

The sync's combination step (``sync_merge``) is pure, so it is checked here in one
process by feeding it the exported states of several adapters as if they were ranks;
tests/test_contrib_distributed.py runs it across real processes.
"""

from __future__ import annotations

import copy
import importlib
import pickle
import sys
import warnings
from typing import Any

import pytest
import torch
import torchmetrics
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor
from torcheval import metrics as eval_metrics
from torchmetrics.classification import BinaryAUROC, MulticlassAccuracy
from torchmetrics.utilities import dim_zero_cat

import torchtally as tt
from _sync import simulate_sync  # tests/_sync.py
from torchtally import errors
from torchtally import protocols as p
from torchtally.contrib.torchmetrics import TorchMetricsAdapter, from_torchmetrics
from torchtally.sync import SyncParticipant

tensor_a = torch.ones(1, 1, dtype=torch.float)
tensor_b = 3 * torch.ones(1, 1, dtype=torch.float)


# -- the DRYTorch reference examples ------------------------------------------------------------


def is_valid_objective(metric: p.ObjectiveProtocol[Tensor, Tensor]) -> bool:
    return isinstance(metric, p.ObjectiveProtocol)


def is_valid_loss(metric: p.LossProtocol[Tensor, Tensor]) -> bool:
    return isinstance(metric, p.LossProtocol)


def test_drytorch_protocol_examples() -> None:
    torch_metric = torchmetrics.MeanSquaredError()
    eval_metric = eval_metrics.MeanSquaredError()
    torch_metric.update(tensor_a, tensor_b)
    eval_metric.update(tensor_a, tensor_b)
    assert torch.isclose(torch_metric.compute(), eval_metric.compute())
    assert is_valid_objective(eval_metric) and is_valid_objective(torch_metric)
    assert is_valid_loss(torch_metric)
    assert not is_valid_loss(eval_metric)


def test_drytorch_from_torchmetrics_example() -> None:
    torch_metric = torchmetrics.MeanSquaredError()
    new_metric = 1 + torch_metric
    imported_metric = from_torchmetrics(new_metric)
    imported_metric.update(tensor_a, tensor_b)
    expected_metrics_from_torchmetrics = {
        "Combined Loss": torch.tensor(5.0),
        "MeanSquaredError": torch.tensor(4.0),
    }
    assert imported_metric.compute() == expected_metrics_from_torchmetrics
    assert is_valid_loss(imported_metric) and is_valid_objective(imported_metric)
    assert isinstance(imported_metric, SyncParticipant)


# -- names ----------------------------------------------------------------------------------------


def regression_batches(sizes: list[int], seed: int = 0) -> list[tuple[Tensor, Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(n, generator=generator), torch.randn(n, generator=generator)) for n in sizes
    ]


def cat(batches: list[Any]) -> tuple[Tensor, Tensor]:
    return torch.cat([o for o, _ in batches]), torch.cat([t for _, t in batches])


def test_plain_metric_names() -> None:
    metric = from_torchmetrics(torchmetrics.MeanAbsoluteError())
    named = from_torchmetrics(torchmetrics.MeanAbsoluteError(), "MAE")
    for adapter in (metric, named):
        adapter.update(torch.zeros(3), torch.tensor([1.0, 2.0, 3.0]))
    assert metric.compute() == {"MeanAbsoluteError": torch.tensor(2.0)}
    assert named.compute() == {"MAE": torch.tensor(2.0)}
    assert named.name == "MAE"
    assert named.higher_is_better_for("MAE") is False


def test_compositions_with_repeated_leaf_classes() -> None:
    squared = torchmetrics.MeanSquaredError()
    root = torchmetrics.MeanSquaredError(squared=False)
    absolute = torchmetrics.MeanAbsoluteError()
    third = torchmetrics.MeanSquaredError()
    composed = from_torchmetrics((squared + 2 * root) * absolute - third)
    assert composed.leaf_names == (
        "MeanSquaredError",
        "MeanSquaredError_2",
        "MeanAbsoluteError",
        "MeanSquaredError_3",
    )
    batches = regression_batches([5, 2, 6])
    for batch in batches:
        composed.update(*batch)
    outputs, targets = (x.double() for x in cat(batches))
    mse = ((outputs - targets) ** 2).mean()
    mae = (outputs - targets).abs().mean()
    expected = {
        "Combined Loss": (mse + 2 * mse.sqrt()) * mae - mse,
        "MeanSquaredError": mse,
        "MeanSquaredError_2": mse.sqrt(),
        "MeanAbsoluteError": mae,
        "MeanSquaredError_3": mse,
    }
    values = composed.compute()
    assert list(values) == list(expected)
    for name, value in expected.items():
        assert torch.allclose(values[name].double(), value, atol=1e-5), name
    assert composed.higher_is_better_for("MeanAbsoluteError") is False
    assert composed.higher_is_better_for("Combined Loss") is None


def test_a_leaf_used_twice_is_reported_once() -> None:
    mse = torchmetrics.MeanSquaredError()
    adapter = from_torchmetrics(mse * mse + abs(-mse))
    adapter.update(torch.zeros(2), torch.tensor([1.0, 3.0]))
    assert adapter.leaf_names == ("MeanSquaredError",)
    assert adapter.compute() == {
        "Combined Loss": torch.tensor(30.0),
        "MeanSquaredError": torch.tensor(5.0),
    }


def test_composition_name_and_conflicts() -> None:
    composed = from_torchmetrics(torchmetrics.MeanSquaredError() + 1, name="Total")
    composed.update(torch.zeros(1), torch.ones(1))
    assert composed.compute() == {"Total": torch.tensor(2.0), "MeanSquaredError": torch.tensor(1.0)}
    with pytest.raises(errors.NameConflictError, match="'MeanSquaredError'"):
        from_torchmetrics(torchmetrics.MeanSquaredError() + 1, name="MeanSquaredError")


def test_collection_results_keep_their_keys() -> None:
    collection = torchmetrics.MetricCollection(
        [torchmetrics.MeanSquaredError(), torchmetrics.MeanAbsoluteError()], prefix="val/"
    )
    adapter = from_torchmetrics(collection)
    adapter.update(torch.zeros(2), torch.tensor([1.0, 3.0]))
    assert adapter.compute() == {
        "val/MeanSquaredError": torch.tensor(5.0),
        "val/MeanAbsoluteError": torch.tensor(2.0),
    }
    assert adapter.higher_is_better_for("val/MeanSquaredError") is False


class PairMetric(torchmetrics.Metric):
    """A metric whose compute returns a tuple (sum of outputs, sum of targets)."""

    def __init__(self) -> None:
        super().__init__()
        self.add_state("outputs", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("targets", default=torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, outputs: Tensor, targets: Tensor) -> None:
        self.outputs += outputs.sum()
        self.targets += targets.sum()

    def compute(self) -> tuple[Tensor, Tensor]:
        return self.outputs, self.targets


def test_tuple_results_are_numbered() -> None:
    adapter = from_torchmetrics(PairMetric(), "sums")
    adapter.update(torch.ones(3), torch.zeros(3))
    assert adapter.compute() == {"sums_0": torch.tensor(3.0), "sums_1": torch.tensor(0.0)}


def test_implicit_sync_is_switched_off_everywhere() -> None:
    leaf = torchmetrics.MeanSquaredError(dist_sync_on_step=True)
    collection = torchmetrics.MetricCollection(
        {"a": leaf + 1, "b": torchmetrics.MeanAbsoluteError()}
    )
    from_torchmetrics(collection)
    nodes = [leaf, collection["a"], collection["b"]]
    assert all(not (n.sync_on_compute or n.dist_sync_on_step or n._to_sync) for n in nodes)


# -- forward -------------------------------------------------------------------------------------


def test_forward_returns_the_differentiable_batch_value_and_accumulates() -> None:
    loss = from_torchmetrics(torchmetrics.MeanSquaredError() + torchmetrics.MeanAbsoluteError())
    outputs = torch.tensor([0.0, 2.0], requires_grad=True)
    targets = torch.tensor([1.0, 1.0])
    value = loss(outputs, targets)
    assert value.item() == pytest.approx(2.0)
    value.backward()
    # d/do [mean((o-t)^2) + mean(|o-t|)] = (2(o-t) + sign(o-t)) / 2
    assert torch.allclose(outputs.grad, torch.tensor([-1.5, 1.5]))
    loss.forward(torch.tensor([4.0]), torch.tensor([1.0]))
    values = loss.compute()
    assert values["MeanSquaredError"].item() == pytest.approx((1 + 1 + 9) / 3)
    assert values["MeanAbsoluteError"].item() == pytest.approx(5 / 3)


def test_cco_example_2_multiclass_accuracy_subclass() -> None:
    class Accuracy(MulticlassAccuracy):
        def update(self, model_output: Tensor, target: Tensor) -> None:
            super().update(model_output, target)

        def compute(self) -> Tensor:
            result = super().compute()
            return result * 100

    generator = torch.Generator().manual_seed(5)
    batches = [
        (torch.randn(n, 4, generator=generator), torch.randint(0, 4, (n,), generator=generator))
        for n in (6, 1, 9)
    ]
    metric = tt.wrap(Accuracy(num_classes=4))
    assert isinstance(metric, TorchMetricsAdapter)
    for batch in batches:
        metric.update(*batch)
    reference = MulticlassAccuracy(num_classes=4)
    reference.update(*cat(batches))
    assert torch.allclose(metric.compute()["Accuracy"], 100 * reference.compute())


# -- state ---------------------------------------------------------------------------------------


def test_state_dict_round_trip_includes_non_persistent_and_list_states() -> None:
    batches = [(torch.rand(n), torch.randint(0, 2, (n,))) for n in (4, 3, 5)]
    metric = from_torchmetrics(BinaryAUROC() + torchmetrics.MeanSquaredError())
    metric.update(*batches[0])
    state = metric.state_dict()
    restored = from_torchmetrics(BinaryAUROC() + torchmetrics.MeanSquaredError())
    restored.load_state_dict(state)
    for adapter in (metric, restored):
        for batch in batches[1:]:
            adapter.update(*batch)
    assert restored.compute() == metric.compute()
    with pytest.raises(errors.StateDictError, match="BinaryAUROC"):
        from_torchmetrics(torchmetrics.MeanSquaredError()).load_state_dict(state)
    with pytest.raises(errors.StateDictError):
        metric.load_state_dict({"version": 1})


def test_copy_pickle_and_to() -> None:
    metric = from_torchmetrics(torchmetrics.MeanSquaredError() * 2)
    metric.update(torch.zeros(2), torch.ones(2))
    for other in (pickle.loads(pickle.dumps(metric)), copy.deepcopy(metric), metric.copy()):
        other.update(torch.zeros(1), 4 * torch.ones(1))
        assert other.compute()["MeanSquaredError"].item() == pytest.approx(6.0)
    assert metric.compute()["MeanSquaredError"].item() == pytest.approx(1.0)
    assert metric.to("cpu") is metric


def test_to_refuses_a_dtype_or_meta_and_changes_nothing() -> None:
    # torchmetrics' own to(float16) halved the states (an MSE of 1/3 became float16) and
    # to('meta') dropped every value; the adapter's to() takes a device that keeps values.
    metric = from_torchmetrics(torchmetrics.MeanSquaredError())
    metric.update(torch.zeros(3), torch.tensor([1.0, 0.0, 0.0]))
    for device in (torch.float16, "meta"):
        with pytest.raises(errors.InvalidArgumentError, match=r"MeanSquaredError.*to\(\) takes"):
            metric.to(device)
    value = metric.compute()["MeanSquaredError"]
    assert value.dtype == torch.float32 and value.item() == pytest.approx(1 / 3)


def test_reset() -> None:
    metric = from_torchmetrics(torchmetrics.MeanAbsoluteError())
    metric.update(torch.ones(3), torch.zeros(3))
    metric.reset()
    metric.update(torch.ones(2), 3 * torch.ones(2))
    assert metric.compute() == {"MeanAbsoluteError": torch.tensor(2.0)}


# -- keyword arguments: torchmetrics drops those a leaf does not take -----------------------------


class WeightedError(torchmetrics.Metric):
    """A weighted mean absolute error: its update takes ``weight=`` (and ``scale=``)."""

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("weights", default=torch.tensor(0.0), dist_reduce_fx="sum")

    def update(
        self, outputs: Tensor, targets: Tensor, weight: Tensor | None = None, scale: float = 1.0
    ) -> None:
        weight = torch.ones_like(outputs) if weight is None else weight
        self.total = self.total + scale * (weight * (outputs - targets).abs()).sum()
        self.weights = self.weights + weight.sum()

    def compute(self) -> Tensor:
        return self.total / self.weights


@pytest.mark.parametrize("form", ["composition", "collection"])
@pytest.mark.parametrize("how", ["update", "forward"])
def test_a_weight_some_leaf_would_not_get_is_refused_changing_nothing(form: str, how: str) -> None:
    # torchmetrics dropped weight= for MeanAbsoluteError: the adapter reported the unweighted
    # 2.0 instead of the weighted 1.0, without a word.
    outputs, targets = torch.zeros(3), torch.tensor([1.0, 2.0, 3.0])
    weight = torch.tensor([1.0, 0.0, 0.0])
    leaves = [WeightedError(), torchmetrics.MeanAbsoluteError()]
    if form == "composition":
        adapter = from_torchmetrics(leaves[0] + leaves[1])
    else:
        adapter = from_torchmetrics(torchmetrics.MetricCollection(leaves))
    adapter.update(outputs, targets)
    before = adapter.compute()
    with pytest.raises(errors.WeightError, match=r"\['MeanAbsoluteError'\].*'weight'"):
        getattr(adapter, how)(outputs, targets, weight=weight)
    assert adapter.compute() == before
    with pytest.raises(errors.InvalidArgumentError, match="'wieght'"):  # a keyword no leaf takes
        getattr(adapter, how)(outputs, targets, wieght=weight)
    assert adapter.compute() == before


def test_a_weight_every_leaf_takes_reaches_every_leaf() -> None:
    outputs, targets = torch.zeros(3), torch.tensor([1.0, 2.0, 3.0])
    weight = torch.tensor([1.0, 0.0, 0.0])
    adapter = from_torchmetrics(WeightedError() + 2 * WeightedError())
    adapter.update(outputs, targets, weight=weight)
    assert adapter.compute() == {
        "Combined Loss": torch.tensor(3.0),
        "WeightedError": torch.tensor(1.0),
        "WeightedError_2": torch.tensor(1.0),
    }
    # a keyword some leaves take is theirs (torchmetrics' own filtering), weight= aside
    collection = from_torchmetrics(
        torchmetrics.MetricCollection([WeightedError(), torchmetrics.MeanAbsoluteError()])
    )
    collection.update(outputs, targets, scale=10.0)
    assert collection.compute() == {
        "WeightedError": torch.tensor(20.0),
        "MeanAbsoluteError": torch.tensor(2.0),
    }


# -- nothing the user can reach shares storage with a state ----------------------------------------


class Total(torchmetrics.Metric):
    """``compute`` returns the state itself, as torchmetrics' SumMetric and MaxMetric do."""

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, outputs: Tensor, targets: Tensor) -> None:
        self.total = self.total + (outputs - targets).sum()

    def compute(self) -> Tensor:
        return self.total


class KeptOutputs(torchmetrics.Metric):
    """A list state holding the very tensors ``update`` is given."""

    def __init__(self) -> None:
        super().__init__()
        self.add_state("kept", default=[], dist_reduce_fx="cat")

    def update(self, outputs: Tensor, targets: Tensor) -> None:
        self.kept.append(outputs)

    def compute(self) -> Tensor:
        return dim_zero_cat(self.kept).sum()  # a list, or one tensor after a sync


@pytest.mark.parametrize("how", ["update", "forward"])
def test_changing_inputs_after_update_changes_no_value(how: str) -> None:
    batches = [(torch.rand(n), torch.randint(0, 2, (n,))) for n in (4, 3)]
    reference = BinaryAUROC()
    reference.update(*(part.clone() for part in cat(batches)))
    kept_reference = torch.cat([outputs for outputs, _ in batches]).sum()
    adapter = from_torchmetrics(
        torchmetrics.MetricCollection({"AUROC": BinaryAUROC(), "Kept": KeptOutputs()})
    )
    for outputs, targets in batches:
        getattr(adapter, how)(outputs, targets)
        outputs.copy_(1 - outputs)  # the user reuses the buffer (AUROC would become 1 - AUROC)
    values = adapter.compute()
    assert torch.equal(values["AUROC"], reference.compute())
    assert torch.allclose(values["Kept"], kept_reference)


def test_changing_a_computed_or_forward_value_changes_no_value() -> None:
    adapter = from_torchmetrics(Total())
    adapter.update(torch.tensor([3.0, 4.0]), torch.zeros(2))
    adapter.compute()["Total"].add_(100)  # the cached result, then a fresh compute
    adapter.update(torch.tensor([1.0]), torch.zeros(1))
    adapter.compute()["Total"].add_(100)
    assert adapter.compute() == {"Total": torch.tensor(8.0)}
    batch = adapter(torch.tensor([2.0]), torch.zeros(1))  # forward: the batch value
    batch.add_(100)
    assert adapter.compute() == {"Total": torch.tensor(10.0)}
    synced = [from_torchmetrics(Total()) for _ in range(2)]
    for adapter in synced:
        adapter.update(torch.tensor([1.0]), torch.zeros(1))
    simulated_sync(synced)
    synced[0].compute()["Total"].add_(100)
    assert synced[0].compute() == {"Total": torch.tensor(2.0)}


# -- options: one class built with other arguments holds states that must not mix -----------------


def test_a_state_saved_with_other_options_is_refused_changing_nothing() -> None:
    # MeanSquaredError's state loaded into MeanSquaredError(squared=False) reported an RMSE,
    # a macro accuracy's state went into a micro one: silently other numbers.
    saved = from_torchmetrics(torchmetrics.MeanSquaredError(), "E")
    saved.update(torch.zeros(2), torch.tensor([1.0, 3.0]))
    target = from_torchmetrics(torchmetrics.MeanSquaredError(squared=False), "E")
    target.update(torch.zeros(1), torch.ones(1))
    with pytest.raises(errors.StateDictError, match=r"squared: expected False, found True"):
        target.load_state_dict(saved.state_dict())
    assert target.compute() == {"E": torch.tensor(1.0)}
    macro = from_torchmetrics(MulticlassAccuracy(num_classes=3, average="macro"), "A")
    macro.update(torch.eye(3), torch.tensor([0, 1, 0]))
    with pytest.raises(errors.StateDictError, match=r"average: expected 'weighted'"):
        from_torchmetrics(
            MulticlassAccuracy(num_classes=3, average="weighted"), "A"
        ).load_state_dict(macro.state_dict())
    fresh = from_torchmetrics(torchmetrics.MeanSquaredError(), "E")
    fresh.load_state_dict(saved.state_dict())  # the same options: restored
    assert fresh.compute() == {"E": torch.tensor(5.0)}
    older = saved.state_dict()  # saved before options were saved: loaded as it was
    del older["leaves"][0]["options"]
    fresh.load_state_dict(older)
    assert fresh.compute() == {"E": torch.tensor(5.0)}


def test_ranks_with_other_options_are_refused_at_sync() -> None:
    # Rank 0 reported the MSE of both ranks' states, rank 1 the RMSE, as one synced value.
    ranks = [
        from_torchmetrics(torchmetrics.MeanSquaredError(), "E"),
        from_torchmetrics(torchmetrics.MeanSquaredError(squared=False), "E"),
    ]
    for adapter in ranks:
        adapter.update(torch.zeros(2), torch.tensor([1.0, 3.0]))
    with pytest.raises(errors.SyncError, match="squared"):
        simulated_sync(ranks)
    assert [adapter.compute()["E"].item() for adapter in ranks] == pytest.approx([5.0, 5**0.5])


def test_editing_the_options_of_a_returned_state_changes_not_the_adapter() -> None:
    # A saved leaf's "options" was the adapter's own dict: an edit to the returned state changed
    # the options it checks loads and other ranks against (a good state was then refused).
    adapter = from_torchmetrics(torchmetrics.MeanSquaredError(), "E")
    identity = copy.deepcopy(adapter.sync_identity())
    returned = adapter.state_dict()
    returned["leaves"][0]["options"]["squared"] = False
    assert adapter.sync_identity() == identity
    good = from_torchmetrics(torchmetrics.MeanSquaredError(), "E")
    good.update(torch.zeros(2), torch.tensor([1.0, 3.0]))
    adapter.load_state_dict(good.state_dict())
    assert adapter.compute() == {"E": torch.tensor((1.0 + 9.0) / 2)}


# -- merge_state -------------------------------------------------------------------------------


def test_merge_state_equals_the_metric_on_the_concatenated_data() -> None:
    # The adapters had no merge_state: AttributeError.
    batches = [(torch.rand(n), torch.randint(0, 2, (n,))) for n in (4, 3, 5)]

    def build() -> TorchMetricsAdapter:
        return from_torchmetrics(
            torchmetrics.MetricCollection({"AUROC": BinaryAUROC(), "Kept": KeptOutputs()})
        )

    mine, theirs = build(), build()
    mine.update(*batches[0])
    for batch in batches[1:]:
        theirs.update(*batch)
    theirs_before = theirs.compute()
    mine.merge_state(theirs)
    reference = BinaryAUROC()
    reference.update(*cat(batches))
    values = mine.compute()
    assert torch.equal(values["AUROC"], reference.compute())
    assert torch.allclose(values["Kept"], cat(batches)[0].sum())
    assert theirs.compute() == theirs_before
    theirs.metric["Kept"].kept[0].add_(100)  # nothing shared with the other adapter
    assert torch.allclose(mine.compute()["Kept"], cat(batches)[0].sum())
    mine.update(*batches[0])  # the merged state goes on accumulating
    reference.update(*batches[0])
    values = mine.compute()
    assert torch.equal(values["AUROC"], reference.compute())
    assert torch.allclose(values["Kept"], cat([*batches, batches[0]])[0].sum())


def test_merge_state_with_other_metrics_is_refused_changing_nothing() -> None:
    mse = from_torchmetrics(torchmetrics.MeanSquaredError(), "E")
    mse.update(torch.zeros(2), torch.tensor([1.0, 3.0]))
    for other in (
        from_torchmetrics(torchmetrics.MeanAbsoluteError(), "E"),
        from_torchmetrics(torchmetrics.MeanSquaredError(squared=False), "E"),
        from_torchmetrics(torchmetrics.MeanSquaredError(), "F"),
    ):
        other.update(torch.zeros(1), torch.ones(1))
        with pytest.raises(errors.IncompatibleStateError, match=r"E'\): cannot merge"):
            mse.merge_state(other)
    with pytest.raises(errors.IncompatibleStateError):
        mse.merge_state(tt.Metric(lambda o, t: o - t, "E"))  # type: ignore[arg-type]
    assert mse.compute() == {"E": torch.tensor(5.0)}


# -- the sync's combination step, ranks simulated in one process -----------------------------------


def simulated_sync(adapters: list[TorchMetricsAdapter]) -> None:
    """What sync_all does on every rank, with ``adapters[r]`` as rank r's adapter."""
    simulate_sync([[adapter] for adapter in adapters])


class ProductMetric(torchmetrics.Metric):
    """A state with a custom reduction callable (the product over ranks)."""

    def __init__(self) -> None:
        super().__init__()
        self.add_state("product", default=torch.tensor(1.0), dist_reduce_fx=lambda x: x.prod(0))

    def update(self, outputs: Tensor, targets: Tensor) -> None:
        self.product *= outputs.prod()

    def compute(self) -> Tensor:
        return self.product


class ListMetric(torchmetrics.Metric):
    """A list state without reduction (kept as a list of every rank's tensors)."""

    def __init__(self) -> None:
        super().__init__()
        self.add_state("values", default=[], dist_reduce_fx=None)

    def update(self, outputs: Tensor, targets: Tensor) -> None:
        self.values.append(outputs)

    def compute(self) -> Tensor:
        return torch.cat(self.values).sum() if self.values else torch.tensor(0.0)


FACTORIES = {
    "mse": lambda: torchmetrics.MeanSquaredError(),
    "auroc (cat lists)": lambda: BinaryAUROC(),
    "max": lambda: torchmetrics.MaxMetric(),
    "min": lambda: torchmetrics.MinMetric(),
    "mean (weighted)": lambda: torchmetrics.MeanMetric(),
    "product (custom callable)": lambda: ProductMetric(),
    "list without reduction": lambda: ListMetric(),
    "composition": lambda: (
        torchmetrics.MeanSquaredError() + torchmetrics.MeanSquaredError(squared=False)
    ),
    "collection": lambda: torchmetrics.MetricCollection(
        {
            "p": torchmetrics.classification.BinaryPrecision(),
            "r": torchmetrics.classification.BinaryRecall(),
        }
    ),
}


def update(metric: Any, outputs: Tensor, targets: Tensor) -> None:
    if isinstance(
        metric, (torchmetrics.MaxMetric, torchmetrics.MinMetric, torchmetrics.MeanMetric)
    ):
        metric.update(outputs)
    else:
        metric.update(outputs, targets)


@pytest.mark.parametrize("kind", list(FACTORIES))
def test_simulated_sync_equals_the_metric_on_the_concatenated_data(kind: str) -> None:
    factory = FACTORIES[kind]
    generator = torch.Generator().manual_seed(11)
    shards = [[5, 2], [3], []]  # uneven, and a rank without data
    data = [
        [
            (
                torch.rand(n, generator=generator) + 0.5,
                torch.randint(0, 2, (n,), generator=generator),
            )
            for n in sizes
        ]
        for sizes in shards
    ]
    adapters = [from_torchmetrics(factory()) for _ in shards]
    for adapter, batches in zip(adapters, data, strict=True):
        for batch in batches:
            update(adapter.metric, *batch)
    local = adapters[0].compute()

    simulated_sync(adapters)
    reference = factory()
    update(reference, *cat([batch for batches in data for batch in batches]))
    expected = from_torchmetrics(reference).compute()
    for adapter in adapters:
        synced = adapter.compute()
        assert list(synced) == list(expected)
        for name in expected:
            assert torch.allclose(synced[name].float(), expected[name].float(), atol=1e-6), (
                kind,
                name,
            )

    # twice == once, the local state untouched
    simulated_sync(adapters)
    assert adapters[1].compute() == synced
    # later updates drop the synced view and count once at the next sync
    extra = (
        torch.rand(4, generator=generator) + 0.5,
        torch.randint(0, 2, (4,), generator=generator),
    )
    update(adapters[2].metric, *extra)
    adapters[2]._synced = None  # what adapter.update does (the metric was updated directly)
    simulated_sync(adapters)
    update(reference, *extra)
    expected = from_torchmetrics(reference).compute()
    for name in expected:
        assert torch.allclose(
            adapters[0].compute()[name].float(), expected[name].float(), atol=1e-6
        )
    # reset drops the synced view: back to this rank's (empty) state
    adapters[0].reset()
    update(adapters[0].metric, *data[0][0])
    first = factory()
    update(first, *data[0][0])
    assert adapters[0].compute().keys() == local.keys()
    for name, value in from_torchmetrics(first).compute().items():
        assert torch.allclose(adapters[0].compute()[name].float(), value.float())


def test_sync_copy_does_not_copy_or_touch_the_local_state() -> None:
    adapters = [from_torchmetrics(BinaryAUROC()) for _ in range(2)]
    adapters[0].update(torch.tensor([0.2, 0.8]), torch.tensor([0, 1]))
    adapters[1].update(torch.tensor([0.9]), torch.tensor([0]))
    preds = adapters[0].metric.preds
    before = [t.clone() for t in preds]
    simulated_sync(adapters)
    assert adapters[0].metric.preds is preds
    assert all(torch.equal(a, b) for a, b in zip(preds, before, strict=True))
    view = adapters[0].view()
    assert view is not None
    assert view[0].preds.shape == (3,)


def test_sync_errors_name_every_rank() -> None:
    mse, mae = (
        from_torchmetrics(torchmetrics.MeanSquaredError()),
        from_torchmetrics(torchmetrics.MeanAbsoluteError()),
    )
    with pytest.raises(errors.SyncError, match=r"objective 0 differs") as raised:
        simulate_sync([[mse], [mae]])
    assert "rank 0 syncs from_torchmetrics(MeanSquaredError" in str(raised.value)
    assert "rank 1 syncs from_torchmetrics(MeanAbsoluteError" in str(raised.value)

    wide, narrow = from_torchmetrics(PairMetric()), from_torchmetrics(PairMetric())
    narrow.metric.outputs = torch.zeros(3)
    with pytest.raises(errors.SyncError, match=r"objective 0 differs") as raised:
        simulate_sync([[wide], [narrow]])  # a summed state of another shape
    assert '"outputs"' in str(raised.value) and "[3]" in str(raised.value)


def test_a_metric_with_its_own_sync_is_refused_at_export() -> None:
    class OwnSync(torchmetrics.MeanSquaredError):
        def _sync_dist(self, dist_sync_fn: Any = None, process_group: Any = None) -> None:
            pass

    with pytest.raises(errors.UnsupportedObjectError, match="OwnSync"):
        from_torchmetrics(OwnSync()).sync_export(drop_last=False)


def test_sync_outside_a_distributed_run_is_a_no_op() -> None:
    metric = from_torchmetrics(torchmetrics.MeanSquaredError())
    metric.update(tensor_a, tensor_b)
    metric.sync()
    tt.sync_all(metric)
    assert metric.compute() == {"MeanSquaredError": torch.tensor(4.0)}


def test_rejects_other_objects() -> None:
    with pytest.raises(errors.UnsupportedObjectError, match=r"torchtally\.wrap"):
        from_torchmetrics(eval_metrics.MeanSquaredError())  # type: ignore[arg-type]
    with pytest.raises(errors.InvalidNameError):
        from_torchmetrics(torchmetrics.MeanSquaredError(), "")


def test_missing_torchmetrics_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torchmetrics", None)
    monkeypatch.delitem(sys.modules, "torchtally.contrib.torchmetrics")
    with pytest.raises(ImportError, match=r'pip install "torchtally\[torchmetrics\]"'):
        importlib.import_module("torchtally.contrib.torchmetrics")


@settings(max_examples=25, deadline=None)
@given(
    shards=st.lists(st.lists(st.integers(0, 6), max_size=3), min_size=1, max_size=3).filter(
        lambda shards: sum(map(sum, shards)) > 0
    ),
    seed=st.integers(0, 10_000),
)
def test_any_sharding_syncs_to_the_value_on_the_concatenated_data(
    shards: list[list[int]], seed: int
) -> None:
    generator = torch.Generator().manual_seed(seed)
    data = [
        [
            (torch.rand(n, generator=generator), torch.randint(0, 2, (n,), generator=generator))
            for n in sizes
        ]
        for sizes in shards
    ]
    factory = FACTORIES["composition"]
    adapters = [from_torchmetrics(factory()) for _ in shards]
    for adapter, batches in zip(adapters, data, strict=True):
        for batch in batches:
            adapter.update(*batch)
    simulated_sync(adapters)
    reference = factory()
    reference.update(*cat([batch for batches in data for batch in batches]))
    expected = from_torchmetrics(reference).compute()
    for adapter in adapters:
        for name, value in adapter.compute().items():
            assert torch.allclose(value, expected[name], atol=1e-6)


class FailingCompute(torchmetrics.MeanSquaredError):
    def compute(self) -> Tensor:
        raise ValueError("no value")


def test_a_foreign_compute_error_is_the_librarys_own_naming_the_adapter() -> None:
    # A metric's compute() raising a bare ValueError came through the adapter as it was.
    failing = from_torchmetrics(FailingCompute())
    failing.update(torch.zeros(2), torch.ones(2))
    with pytest.raises(tt.errors.MetricCallError, match=r"FailingCompute\.compute.*ValueError"):
        failing.compute()


def test_a_foreign_update_error_is_the_librarys_own_and_keeps_the_synced_view() -> None:
    # update(..., weight=) on an adapter raised torchmetrics' bare TypeError, after the synced
    # view was dropped (so compute() fell back to this process's state).
    shards = [(torch.tensor([0.0, 1.0]), torch.zeros(2)), (torch.tensor([3.0]), torch.zeros(1))]
    adapters = [from_torchmetrics(torchmetrics.MeanSquaredError()) for _ in shards]
    for adapter, batch in zip(adapters, shards, strict=True):
        adapter.update(*batch)
    simulated_sync(adapters)
    for call in (adapters[0].update, adapters[0].forward):
        with pytest.raises(tt.errors.MetricCallError, match=r"MeanSquaredError\.\w+.*TypeError"):
            call(torch.ones(2), torch.zeros(2), weight=torch.ones(2))
    assert adapters[0].compute()["MeanSquaredError"].item() == pytest.approx(10 / 3)  # synced


def test_a_forward_that_raises_loses_the_state_and_refuses_to_report_until_reset_or_load() -> None:
    # torchmetrics' forward sets the accumulated state aside, resets and updates with the batch:
    # a batch its update refused lost the state, compute() reported NaN without a warning, and
    # 9.0 after one more batch where the two good batches make 5.0.
    first, second = (torch.zeros(2), torch.ones(2)), (torch.zeros(2), torch.full((2,), 3.0))
    adapter = from_torchmetrics(torchmetrics.MeanSquaredError(), "MSE")
    adapter.update(*first)
    with pytest.raises(tt.errors.MetricCallError, match=r"MeanSquaredError\.forward.*TypeError"):
        adapter.forward(*second, weight=torch.ones(2))  # its update takes no weight: refused before
    assert adapter.compute() == {"MSE": torch.tensor(1.0)}  # nothing was lost
    saved = adapter.state_dict()
    with pytest.raises(tt.errors.MetricCallError, match=r"forward.*RuntimeError.*be restored"):
        adapter.forward(torch.zeros(2), torch.ones(3))  # shapes torchmetrics refuses
    adapter.update(*second)
    other = from_torchmetrics(torchmetrics.MeanSquaredError(), "MSE")
    other.update(*second)
    for refused in (
        adapter.compute,
        adapter.state_dict,
        adapter.sync_identity,
        lambda: other.merge_state(adapter),
        lambda: adapter.merge_state(other),
    ):
        with pytest.raises(tt.errors.MetricCallError, match="forward raised"):
            refused()
    assert other.compute() == {"MSE": torch.tensor(9.0)}  # the refused merge changed nothing
    adapter.load_state_dict(saved)  # back in step, with the state from before the forward
    adapter.update(*second)
    expected = ((first[0] - first[1]) ** 2 + (second[0] - second[1]) ** 2).sum() / 4
    assert adapter.compute() == {"MSE": expected}
    with pytest.raises(tt.errors.MetricCallError):
        adapter.forward(torch.zeros(2), torch.ones(3))
    adapter.reset()  # back in step, empty
    assert adapter.forward(*second) == torch.tensor(9.0)
    assert adapter.compute() == {"MSE": torch.tensor(9.0)}


def test_a_leaf_refusing_a_batch_another_leaf_took_stops_the_collection_reporting() -> None:
    # The MSE took the batch of targets [0.5, 3.0], then BinaryAccuracy refused it: no error
    # but the refusal, both counts ended at 2, and compute() reported an MSE over both batches
    # beside an accuracy over one.
    outputs, targets = torch.tensor([0.2, 0.9]), torch.tensor([0.0, 1.0])
    members = {
        "a_mse": torchmetrics.MeanSquaredError(),
        "b_acc": torchmetrics.classification.BinaryAccuracy(),
    }
    adapter = from_torchmetrics(torchmetrics.MetricCollection(members))
    adapter.update(outputs, targets)
    with pytest.raises(tt.errors.MetricCallError, match=r"b_acc after a_mse took it.*out of step"):
        adapter.update(outputs, torch.tensor([0.5, 3.0]))
    assert members["b_acc"]._update_count == 1  # the refused batch is not counted
    for refused in (adapter.compute, adapter.state_dict, adapter.sync_identity):
        with pytest.raises(tt.errors.MetricCallError, match="out of step"):
            refused()
    adapter.reset()  # back in step
    adapter.update(outputs, targets)
    expected_mse = ((outputs - targets) ** 2).mean()
    assert adapter.compute() == {"a_mse": expected_mse, "b_acc": torch.tensor(1.0)}
    # The first leaf refusing: nothing took the batch, nothing is counted, nothing out of step.
    with pytest.raises(tt.errors.MetricCallError, match=r"MetricCollection\.update"):
        adapter.update(outputs, torch.ones(3))
    assert [m._update_count for m in members.values()] == [1, 1]
    assert adapter.compute() == {"a_mse": expected_mse, "b_acc": torch.tensor(1.0)}


def test_a_composition_of_one_leaf_refusing_its_first_batch_counts_none() -> None:
    # The refused batch stayed counted: compute() gave torchmetrics' nan without the warning.
    composition = from_torchmetrics(1 + torchmetrics.classification.BinaryAccuracy())
    with pytest.raises(tt.errors.MetricCallError):
        composition.update(torch.tensor([0.2, 0.9]), torch.tensor([0, 5]))
    nan_before_any_update(composition)
    composition.update(torch.tensor([0.2, 0.9]), torch.tensor([0, 1]))
    assert composition.compute() == {
        "Combined Loss": torch.tensor(2.0),
        "BinaryAccuracy": torch.tensor(1.0),
    }


# -- compute() before any update: the library's warning and NaN, as a native objective ------------


def nan_before_any_update(adapter: Any) -> dict[str, Tensor]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        values = adapter.compute()
    assert [type(w.message) for w in caught] == [tt.errors.ComputedBeforeUpdatedWarning]
    assert repr(adapter) in str(caught[0].message)
    assert all(torch.isnan(value).all() for value in values.values())
    return values


def test_compute_before_any_update_warns_and_is_nan_for_every_name() -> None:
    # BinaryAccuracy reported 0.0 with torchmetrics' own UserWarning, MulticlassAUROC raised
    # MetricCallError, and a first update torchmetrics refused (a target of 5) counted as one.
    accuracy = from_torchmetrics(torchmetrics.classification.BinaryAccuracy())
    assert list(nan_before_any_update(accuracy)) == ["BinaryAccuracy"]
    with pytest.raises(tt.errors.MetricCallError):
        accuracy.update(torch.tensor([0.2, 0.9]), torch.tensor([0, 5]))
    nan_before_any_update(accuracy)
    accuracy.update(torch.tensor([0.2, 0.9]), torch.tensor([0, 1]))
    assert accuracy.compute() == {"BinaryAccuracy": torch.tensor(1.0)}
    accuracy.reset()
    nan_before_any_update(accuracy)
    auroc = from_torchmetrics(torchmetrics.classification.MulticlassAUROC(3), "AUROC")
    assert list(nan_before_any_update(auroc)) == ["AUROC"]
    composition = from_torchmetrics(
        torchmetrics.MeanSquaredError() + torchmetrics.classification.BinaryAUROC()
    )
    assert list(nan_before_any_update(composition)) == [
        "Combined Loss",
        "MeanSquaredError",
        "BinaryAUROC",
    ]
    restored = from_torchmetrics(torchmetrics.classification.BinaryAccuracy())
    restored.load_state_dict(
        from_torchmetrics(torchmetrics.classification.BinaryAccuracy()).state_dict()
    )
    nan_before_any_update(restored)

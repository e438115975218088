"""torchtally.wrap: every metric form and return type of the CCO reference, checked against
the value computed on the concatenated data."""

from __future__ import annotations

import copy
import pickle
import subprocess
import sys
import warnings
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor
from torch.nn.functional import l1_loss, mse_loss

import torchtally as tt
from torchtally import errors
from torchtally import protocols as p
from torchtally.wrap import (
    ACCEPTED_FORMS,
    StatefulObjective,
    WrappedFunction,
    normalize_result,
)

# -- data ---------------------------------------------------------------------------------------


def classification_batches(sizes: list[int], classes: int = 4, seed: int = 0) -> list[Any]:
    generator = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(size, classes, generator=generator),
            torch.randint(0, classes, (size,), generator=generator),
        )
        for size in sizes
    ]


def concatenated(batches: list[Any]) -> tuple[Tensor, Tensor]:
    return torch.cat([o for o, _ in batches]), torch.cat([t for _, t in batches])


def accuracy_on(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs.argmax(1) == targets).double().mean()


UNEVEN = [7, 3, 1, 5]


# -- the CCO metric examples ---------------------------------------------------------------------


def test_cco_example_1_lambda_accuracy() -> None:
    # The reference's torch.mean(bool tensor) raises in torch; its evident fix is .float().
    metric_fn = lambda model_output, target: torch.mean(  # noqa: E731
        (torch.argmax(model_output, 1) == target).float()
    )
    with pytest.raises(errors.InvalidNameError, match="name="):
        tt.wrap(metric_fn)
    metric = tt.wrap(metric_fn, "accuracy", higher_is_better=True)
    assert isinstance(metric, WrappedFunction)
    assert isinstance(metric, p.ObjectiveProtocol)
    batches = classification_batches(UNEVEN)
    for outputs, targets in batches:
        returned = metric.update(outputs, targets)
        assert returned["accuracy"] == metric_fn(outputs, targets)
    expected = accuracy_on(*concatenated(batches))
    assert torch.allclose(metric.compute()["accuracy"].double(), expected, atol=1e-7)
    assert metric.higher_is_better_for("accuracy") is True


class CustomAccuracy:
    """CCO example #3, as written (averages the batch means)."""

    def __init__(self) -> None:
        self.avgs: list[float] = []

    def update(self, model_output: Tensor, target: Tensor) -> None:
        batch_mean = torch.mean((torch.argmax(model_output, 1) == target).float())
        self.avgs.append(batch_mean.item())

    def compute(self) -> float:
        return sum(self.avgs) / len(self.avgs)

    def reset(self) -> None:
        self.avgs = []


def test_cco_example_3_custom_class_equal_batches_is_exact() -> None:
    metric = tt.wrap(CustomAccuracy())
    assert isinstance(metric, StatefulObjective)
    assert isinstance(metric, p.ObjectiveProtocol)
    batches = classification_batches([4, 4, 4, 4])
    for outputs, targets in batches:
        assert metric.update(outputs, targets) is None
    value = metric.compute()
    assert list(value) == ["CustomAccuracy"]
    assert value["CustomAccuracy"].ndim == 0
    assert torch.allclose(value["CustomAccuracy"].double(), accuracy_on(*concatenated(batches)))


def test_cco_example_3_custom_class_uneven_batches_averages_batch_means() -> None:
    # What the class promises: the plain mean of its batch means (not the dataset accuracy).
    metric = tt.wrap(CustomAccuracy(), "acc")
    batches = classification_batches(UNEVEN, seed=3)
    for outputs, targets in batches:
        metric.update(outputs, targets)
    batch_means = [float(accuracy_on(o, t)) for o, t in batches]
    assert metric.compute()["acc"].item() == pytest.approx(sum(batch_means) / len(batch_means))
    metric.reset()  # before any update: NaN and the library's warning, not ZeroDivisionError
    with pytest.warns(errors.ComputedBeforeUpdatedWarning):
        assert torch.isnan(metric.compute()["acc"])
    metric.update(outputs, targets)
    metric.wrapped.avgs.clear()  # its compute raises after an update: the library's error
    with pytest.raises(errors.MetricCallError, match="ZeroDivisionError"):
        metric.compute()


def test_cco_example_4_nll_loss_module() -> None:
    # The reference's torch.nn.cNLLLoss is a typo for torch.nn.NLLLoss.
    metric = tt.wrap(torch.nn.NLLLoss())
    assert isinstance(metric, WrappedFunction)
    assert metric.name == "NLLLoss"
    batches = [(torch.log_softmax(o, 1), t) for o, t in classification_batches(UNEVEN, seed=1)]
    for outputs, targets in batches:
        metric.update(outputs, targets)
    expected = torch.nn.functional.nll_loss(
        *(x.double() if x.is_floating_point() else x for x in concatenated(batches))
    )
    assert torch.allclose(metric.compute()["NLLLoss"].double(), expected, atol=1e-6)


class StatelessAccuracy(torch.nn.Module):
    """CCO example #5, as written."""

    def forward(self, model_output: Tensor, target: Tensor) -> dict[str, Tensor]:
        num_correct_predictions = torch.sum(torch.argmax(model_output, 1) == target)
        accuracy = torch.mean((torch.argmax(model_output, 1) == target).float())
        return {"num_correct_predictions": num_correct_predictions, "accuracy": accuracy}


def test_cco_example_5_stateless_module_returning_a_dict() -> None:
    batches = classification_batches(UNEVEN, seed=2)
    outputs, targets = concatenated(batches)
    hits = (outputs.argmax(1) == targets).sum()

    counted = tt.wrap(StatelessAccuracy(), aggregation={"num_correct_predictions": "sum"})
    averaged = tt.wrap(StatelessAccuracy())  # a count is then a batch mean: weighted by B
    for batch in batches:
        counted.update(*batch)
        averaged.update(*batch)
    values = counted.compute()
    assert list(values) == ["num_correct_predictions", "accuracy"]
    assert values["num_correct_predictions"].item() == hits.item()
    assert torch.allclose(values["accuracy"].double(), accuracy_on(outputs, targets))
    weighted = sum(len(t) * int((o.argmax(1) == t).sum()) for o, t in batches) / len(targets)
    assert averaged.compute()["num_correct_predictions"].item() == pytest.approx(weighted)


class StatefulAccuracy(torch.nn.Module):
    """CCO example #6, as written."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("correct", torch.Tensor([0]))
        self.register_buffer("total", torch.Tensor([0]))

    def compute(self) -> Tensor:
        return self.correct / self.total

    def reset(self) -> None:
        self.correct.copy_(0)
        self.total.copy_(0)

    def update(self, preds: Tensor, targets: Tensor) -> dict[str, float]:
        correct = (preds.argmax(-1) == targets).sum().item()
        total = preds.shape[0]
        self.correct += correct
        self.total += total
        return {"batch_acc": correct / total}


def test_cco_example_6_stateful_module() -> None:
    metric = tt.wrap(StatefulAccuracy())
    assert isinstance(metric, StatefulObjective)
    batches = classification_batches(UNEVEN, seed=4)
    for outputs, targets in batches:
        returned = metric.update(outputs, targets)
        assert returned is not None
        assert returned["batch_acc"].item() == pytest.approx(float(accuracy_on(outputs, targets)))
    value = metric.compute()["StatefulAccuracy"]
    assert value.ndim == 0
    assert torch.allclose(value.double(), accuracy_on(*concatenated(batches)))

    # state_dict round trip through the module's own buffers
    restored = tt.wrap(StatefulAccuracy())
    restored.load_state_dict(metric.state_dict())
    assert torch.equal(restored.compute()["StatefulAccuracy"], value)
    assert metric.to("cpu") is metric
    for device in (torch.float16, "meta"):  # the module's buffers were halved, or lost
        with pytest.raises(errors.InvalidArgumentError, match=r"to\(\) takes a device"):
            metric.to(device)
    assert torch.equal(metric.compute()["StatefulAccuracy"], value)
    metric.reset()
    assert metric.wrapped.total.item() == 0


def test_stateful_forms_sync_is_a_quiet_no_op_outside_a_distributed_run() -> None:
    for obj in (CustomAccuracy(), StatefulAccuracy()):
        metric = tt.wrap(obj)
        metric.update(*classification_batches([3])[0])
        before = metric.compute()
        metric.sync()
        tt.sync_all(metric)
        assert metric.compute() == before
        assert metric.can_sync is False


def test_stateful_state_dict_of_a_plain_object_copies_its_attributes() -> None:
    metric = tt.wrap(CustomAccuracy())
    metric.update(*classification_batches([5])[0])
    state = metric.state_dict()
    metric.update(*classification_batches([5], seed=9)[0])
    restored = tt.wrap(CustomAccuracy())
    restored.load_state_dict(state)
    assert restored.wrapped.avgs == metric.wrapped.avgs[:1]
    copied = metric.copy()
    copied.reset()
    assert len(metric.wrapped.avgs) == 2
    with pytest.raises(errors.StateDictError):
        restored.load_state_dict({"nothing": 1})


def test_a_stateful_modules_state_dict_is_a_snapshot() -> None:
    # nn.Module.state_dict() hands out the module's own buffers: a state dict kept in memory (the
    # best epoch's, say) changed with later updates, and a reset made it restore NaN.
    metric = tt.wrap(StatefulAccuracy())
    first = classification_batches([6], seed=5)[0]
    metric.update(*first)
    state = metric.state_dict()
    metric.update(*classification_batches([4], seed=6)[0])
    metric.reset()
    restored = tt.wrap(StatefulAccuracy())
    restored.load_state_dict(state)
    expected = accuracy_on(*first)
    assert torch.allclose(restored.compute()["StatefulAccuracy"].double(), expected)


# -- loss return forms ----------------------------------------------------------------------------


def regression_batches(sizes: list[int], seed: int = 0) -> list[tuple[Tensor, Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(size, 3, generator=generator), torch.randn(size, 3, generator=generator))
        for size in sizes
    ]


def loss_tensor(model_output: Tensor, target: Tensor) -> Tensor:
    return mse_loss(model_output, target)


def loss_tuple(model_output: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return (
        mse_loss(model_output, target),
        l1_loss(model_output, target),
        (model_output - target).mean(),
    )


def loss_list(model_output: Tensor, target: Tensor) -> list[Tensor]:
    return list(loss_tuple(model_output, target))


def loss_dict(model_output: Tensor, target: Tensor) -> dict[str, Tensor]:
    first, second, third = loss_tuple(model_output, target)
    return {"cls_loss": first, "box_loss": second, "obj_loss": third}


def references(outputs: Tensor, targets: Tensor) -> list[Tensor]:
    outputs, targets = outputs.double(), targets.double()
    return [mse_loss(outputs, targets), l1_loss(outputs, targets), (outputs - targets).mean()]


@pytest.mark.parametrize(
    ("fn", "names"),
    [
        (loss_tensor, ["loss_tensor"]),
        (loss_tuple, ["loss_tuple_0", "loss_tuple_1", "loss_tuple_2"]),
        (loss_list, ["loss_list_0", "loss_list_1", "loss_list_2"]),
        (loss_dict, ["cls_loss", "box_loss", "obj_loss"]),
    ],
)
def test_cco_loss_return_forms(fn: Any, names: list[str]) -> None:
    metric = tt.wrap(fn)
    batches = regression_batches(UNEVEN)
    for batch in batches:
        returned = metric.update(*batch)
        assert list(returned) == names
    values = metric.compute()
    assert list(values) == names
    for name, expected in zip(names, references(*concatenated(batches)), strict=False):
        assert values[name].dtype == torch.float32
        assert torch.allclose(values[name].double(), expected, atol=1e-6), name


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        (3, {"m": 3.0}),
        (0.25, {"m": 0.25}),
        ((1, 0.5), {"m_0": 1.0, "m_1": 0.5}),
        ([torch.tensor(2.0)], {"m_0": 2.0}),
        ({"a": 1, "b": torch.tensor([4.0])}, {"a": 1.0, "b": 4.0}),
    ],
)
def test_python_numbers_and_one_element_tensors_are_batch_means(
    result: Any, expected: dict[str, float]
) -> None:
    metric = tt.wrap(lambda o, t: result, "m")
    metric.update(torch.zeros(2), torch.zeros(2))
    metric.update(torch.zeros(5), torch.zeros(5))
    assert {k: v.item() for k, v in metric.compute().items()} == pytest.approx(expected)


def test_per_sample_vectors_are_weighted_exactly() -> None:
    metric = tt.wrap(lambda o, t: {"abs": (o - t).abs(), "sq": ((o - t) ** 2).mean()}, "errors")
    data = torch.arange(10.0)
    metric.update(data[:9], torch.zeros(9))
    metric.update(data[9:], torch.zeros(1))
    values = metric.compute()
    assert values["abs"].item() == pytest.approx(4.5)
    assert values["sq"].item() == pytest.approx(float((data**2).mean()))


@settings(max_examples=30, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=0, max_value=9), min_size=1, max_size=6).filter(
        lambda s: sum(s) > 0
    ),
    seed=st.integers(0, 1000),
)
def test_any_split_gives_the_value_on_the_concatenated_data(sizes: list[int], seed: int) -> None:
    metric = tt.wrap(loss_tuple)
    batches = regression_batches(sizes, seed)
    for batch in batches:
        metric.update(*batch)
    values = list(metric.compute().values())
    for value, expected in zip(values, references(*concatenated(batches)), strict=True):
        assert torch.allclose(value.double(), expected, atol=1e-5)


# -- errors ---------------------------------------------------------------------------------------


def test_result_errors_name_the_metric_and_the_value() -> None:
    with pytest.raises(errors.InvalidNameError, match="non-empty strings"):
        tt.wrap(lambda o, t: {1: o.mean()}, "keys").update(torch.zeros(2), torch.zeros(2))
    with pytest.raises(errors.ResultShapeError, match=r"\(2, 3\)"):
        tt.wrap(lambda o, t: {"wide": o}, "shape").update(torch.zeros(2, 3), torch.zeros(2))
    with pytest.raises(errors.ResultTypeError, match="'nested_0'"):
        tt.wrap(lambda o, t: ((o, t),), "nested").update(torch.zeros(2), torch.zeros(2))
    with pytest.raises(errors.ResultTypeError, match="str"):
        tt.wrap(lambda o, t: "high", "text").update(torch.zeros(2), torch.zeros(2))
    with pytest.raises(errors.MetricCallError, match=r"'boom'.*ZeroDivisionError"):
        tt.wrap(lambda o, t: 1 / 0, "boom").update(torch.zeros(2), torch.zeros(2))


def test_stateful_compute_must_return_scalars() -> None:
    class Vector(CustomAccuracy):
        def compute(self) -> Any:  # type: ignore[override]
            return torch.ones(3)

    vector = tt.wrap(Vector())
    vector.update(*classification_batches([3])[0])
    with pytest.raises(errors.ResultShapeError, match=r"'Vector'.*\(3,\)"):
        vector.compute()


def test_normalize_result() -> None:
    assert normalize_result({"x": 2}, "n", "o") == {"x": torch.tensor(2)}
    assert normalize_result(torch.ones(1, 1), "n", "o", scalars=True)["n"].shape == ()
    with pytest.raises(errors.ResultTypeError):
        normalize_result(None, "n", "o")


class NoReset:
    def update(self, o: Tensor, t: Tensor) -> None: ...

    def compute(self) -> float:
        return 0.0


class OnlyUpdate:
    def update(self, o: Tensor, t: Tensor) -> None: ...


@pytest.mark.parametrize(
    ("obj", "why"),
    [
        (42, "neither callable"),
        ("accuracy", "neither callable"),
        (torch.nn.NLLLoss, "class; pass an instance"),
        (NoReset(), "no reset"),
        (OnlyUpdate(), "not both update and compute"),
        (torch.nn.Module(), "no forward"),
    ],
)
def test_unsupported_objects_list_the_accepted_forms(obj: Any, why: str) -> None:
    with pytest.raises(errors.UnsupportedObjectError, match=why) as caught:
        tt.wrap(obj, "x")
    assert isinstance(caught.value, TypeError)
    assert ACCEPTED_FORMS in str(caught.value)


def test_option_errors() -> None:
    with pytest.raises(ValueError, match="'cat'"):
        tt.wrap(loss_tensor, aggregation="cat")
    with pytest.raises(ValueError, match="stateless forms only"):
        tt.wrap(CustomAccuracy(), aggregation="sum")
    with pytest.raises(errors.InvalidNameError):
        tt.wrap(loss_tensor, "")


# -- objective behaviour of wrapped functions ---------------------------------------------------


def test_wrapped_function_checkpoints_copies_and_pickles() -> None:
    batches = regression_batches([4, 2, 5])
    metric = tt.wrap(loss_dict)
    metric.update(*batches[0])
    state = metric.state_dict()
    pickled = pickle.loads(pickle.dumps(metric))
    copied = copy.deepcopy(metric)
    restored = tt.wrap(loss_dict)
    restored.load_state_dict(state)
    for other in (metric, pickled, copied, restored):
        for batch in batches[1:]:
            other.update(*batch)
    expected = metric.compute()
    for other in (pickled, copied, restored):
        assert other.compute() == expected
    metric.reset()
    with pytest.warns(errors.ComputedBeforeUpdatedWarning):
        assert all(torch.isnan(v) for v in metric.compute().values())


def test_default_names() -> None:
    assert tt.wrap(loss_tensor).name == "loss_tensor"
    assert tt.wrap(torch.nn.MSELoss()).name == "MSELoss"
    assert tt.wrap(StatefulAccuracy()).name == "StatefulAccuracy"
    assert tt.wrap(torch.nn.MSELoss(), "mse").name == "mse"


def test_import_torchtally_imports_neither_torchmetrics_nor_torcheval() -> None:
    code = (
        "import sys, torchtally; print('torchmetrics' in sys.modules, 'torcheval' in sys.modules)"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert output.stdout.split() == ["False", "False"]


def test_torchmetrics_and_torcheval_objects_go_to_their_adapters() -> None:
    import torchmetrics
    from torcheval import metrics as eval_metrics

    from torchtally.contrib.torcheval import TorchEvalAdapter
    from torchtally.contrib.torchmetrics import TorchMetricsAdapter

    assert isinstance(tt.wrap(torchmetrics.MeanSquaredError()), TorchMetricsAdapter)
    assert isinstance(tt.wrap(eval_metrics.MeanSquaredError(), "mse"), TorchEvalAdapter)
    both = tt.wrap({"a": eval_metrics.MeanSquaredError(), "b": eval_metrics.BinaryAccuracy()})
    assert isinstance(both, TorchEvalAdapter)
    with pytest.raises(ValueError, match="stateless forms only"):
        tt.wrap(torchmetrics.MeanSquaredError(), aggregation="sum")


def test_torchtally_objectives_pass_through_unchanged() -> None:
    native = tt.Metric(loss_tensor, "MSE")
    assert tt.wrap(native) is native
    wrapped = tt.wrap(loss_tensor)
    assert tt.wrap(wrapped) is wrapped
    with pytest.raises(ValueError, match="already a torchtally objective"):
        tt.wrap(native, "other")


@pytest.mark.parametrize(
    ("direction", "refused"),
    [("yes", "'yes'"), (1, "1"), ({"Acc": "up"}, "'up'")],
)
def test_wrap_refuses_a_direction_that_is_not_a_bool_or_none(direction: Any, refused: str) -> None:
    with pytest.raises(errors.InvalidArgumentError) as caught:
        tt.wrap(lambda o, t: (o == t).float(), "Acc", higher_is_better=direction)
    message = str(caught.value)
    assert message.startswith("WrappedFunction 'Acc'") and "must be True, False or None" in message
    assert refused in message
    kept = tt.wrap(lambda o, t: (o == t).float(), "Acc", higher_is_better={"Acc": True})
    assert kept.higher_is_better_for("Acc") is True


def test_weight_on_a_stateful_object_is_a_library_error_and_changes_nothing() -> None:
    # update(..., weight=) raised a bare TypeError from the method's own signature.
    accuracy = tt.wrap(CustomAccuracy(), "Acc")
    outputs, targets = torch.eye(2), torch.tensor([0, 0])
    accuracy.update(outputs, targets)
    with pytest.raises(errors.WeightError, match=r"'Acc'.*cannot be weighted.*Tensor"):
        accuracy.update(outputs, targets, weight=torch.ones(2))
    assert accuracy.compute()["Acc"].item() == 0.5  # the refused batch was not counted


# -- nothing the user can reach shares storage with a wrapped object's state ----------------------


class KeptInputs:
    """Keeps the very tensors update is given, and returns its running total itself."""

    def __init__(self) -> None:
        self.outputs: list[Tensor] = []
        self.total = torch.zeros(())

    def update(self, outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
        self.outputs.append(outputs)
        self.total += (outputs - targets).abs().sum()
        return {"total": self.total}

    def compute(self) -> dict[str, Tensor]:
        return {"mean": torch.cat(self.outputs).mean(), "total": self.total}

    def reset(self) -> None:
        self.outputs, self.total = [], torch.zeros(())

    def state_dict(self) -> dict[str, Any]:
        return {"outputs": self.outputs, "total": self.total}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.outputs, self.total = state["outputs"], state["total"]  # keeps the given tensors


def test_a_wrapped_object_s_state_shares_no_storage_with_what_the_user_reaches() -> None:
    # Reusing an input buffer moved the kept mean (1.0 became 101.0), changing a returned or
    # computed total in place moved the next compute() (3.0 became 103.0), and updates after
    # load_state_dict changed the loaded dict's tensors.
    metric = tt.wrap(KeptInputs())
    outputs, targets = torch.tensor([1.0, 2.0]), torch.zeros(2)
    returned = metric.update(outputs, targets)
    outputs.add_(100)  # the user reuses the buffer
    returned["total"].add_(100)
    metric.compute()["total"].add_(100)
    assert metric.compute() == {"mean": torch.tensor(1.5), "total": torch.tensor(3.0)}
    state = {"outputs": [torch.tensor([4.0])], "total": torch.tensor(4.0)}
    metric.load_state_dict({"version": 1, "state_dict": state})
    metric.update(torch.tensor([6.0]), torch.zeros(1))
    assert state["total"] == torch.tensor(4.0)
    assert metric.compute() == {"mean": torch.tensor(5.0), "total": torch.tensor(10.0)}


class LaterList:
    """Makes the list it keeps its inputs in at the first update (none when wrapped)."""

    def __init__(self) -> None:
        self.kept: list[Tensor] | None = None

    def update(self, outputs: Tensor, targets: Tensor) -> None:
        self.kept = [*(self.kept or []), outputs]

    def compute(self) -> Tensor:
        assert self.kept is not None
        return torch.cat(self.kept).mean()

    def reset(self) -> None:
        self.kept = None


def test_an_object_that_makes_its_container_later_gets_copies_of_the_batch_too() -> None:
    # Inputs were copied only for objects holding a container when wrapped: reusing the
    # buffer moved this one's value from 1.0 to 101.0.
    metric = tt.wrap(LaterList(), "Mean")
    outputs = torch.ones(2)
    metric.update(outputs, torch.zeros(2))
    outputs.add_(100)
    assert metric.compute() == {"Mean": torch.tensor(1.0)}


class Counts:
    def __init__(self) -> None:
        self.hits = self.seen = 0

    def update(self, outputs: Tensor, targets: Tensor) -> None:
        self.hits += int((outputs.argmax(1) == targets).sum())
        self.seen += len(targets)

    def compute(self) -> dict[str, int]:
        return {"hits": self.hits, "seen": self.seen}

    def reset(self) -> None:
        self.hits = self.seen = 0


def test_compute_of_a_wrapped_object_before_any_update_warns_and_is_nan() -> None:
    # Counts reported 0 hits of 0, CustomAccuracy raised ZeroDivisionError (MetricCallError).
    # Names come from compute() where it answers, else the object's name.
    for obj, names, batch in (
        (Counts(), ["hits", "seen"], classification_batches([3])[0]),
        (KeptInputs(), ["KeptInputs"], (torch.ones(2), torch.zeros(2))),
        (CustomAccuracy(), ["CustomAccuracy"], classification_batches([3])[0]),
    ):
        metric = tt.wrap(obj)
        with pytest.warns(errors.ComputedBeforeUpdatedWarning, match="StatefulObjective"):
            values = metric.compute()
        assert list(values) == names and all(torch.isnan(v) for v in values.values())
        metric.update(*batch)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            metric.compute()
        metric.reset()
        with pytest.warns(errors.ComputedBeforeUpdatedWarning):
            metric.compute()


def test_sync_of_a_wrapped_stateful_object_takes_dataset_size_as_sync_all_does() -> None:
    # obj.sync(dataset_size=N) raised a plain TypeError, tt.sync_all(obj, dataset_size=N) the
    # library's SyncError: the object cannot count its samples
    metric = tt.wrap(StatefulAccuracy(), "Acc")
    metric.update(torch.tensor([[0.1, 0.9], [0.8, 0.2]]), torch.tensor([1, 1]))
    before = metric.compute()
    metric.sync()  # outside a distributed run: nothing to do
    for call in (lambda: metric.sync(dataset_size=2), lambda: tt.sync_all(metric, dataset_size=2)):
        with pytest.raises(tt.errors.SyncError, match="StatefulObjective 'Acc'"):
            call()
    assert metric.compute() == before

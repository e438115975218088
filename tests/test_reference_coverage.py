"""What DESIGN.md's table asks torchtally to cover from each reference system, checked.

One section per document of ``shared/reference/``: CLIKA CCO (every metric form and
return type, wrapped with ``tt.wrap``), Deeplite Neutrino (a loss returning a dict
that is summed, an evaluation dict with one value monitored, ``copy.deepcopy``),
t3w (``higher_better``, loss re-weighting, a dataset metric synced however often),
torchtraining (memory-bounded mean and sum, a concatenating accumulator) and DRYTorch
(what ``tests/test_drytorch_metrics.py`` leaves out). Every value is compared with one
computed independently in float64 on the concatenated data.
"""

from __future__ import annotations

import copy
import pickle
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torchmetrics
from torch import Tensor
from torch.nn import functional
from torcheval import metrics as eval_metrics
from typing_extensions import override

import _dist  # tests/_dist.py, importable through tests/conftest.py
import torchtally as tt
from test_wrap import StatefulAccuracy  # CCO example #6 as written (tests/test_wrap.py)
from torchtally import errors
from torchtally.contrib.torcheval import from_torcheval
from torchtally.contrib.torchmetrics import from_torchmetrics

Batch = tuple[Tensor, Tensor]

# -- data and checks shared by the sections -------------------------------------------------------


def classification(sizes: list[int], seed: int, classes: int = 4) -> list[Batch]:
    generator = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(size, classes, generator=generator),
            torch.randint(0, classes, (size,), generator=generator),
        )
        for size in sizes
    ]


def regression(sizes: list[int], seed: int) -> list[Batch]:
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(size, 3, generator=generator), torch.randn(size, 3, generator=generator))
        for size in sizes
    ]


def joined(batches: list[Batch]) -> Batch:
    return torch.cat([o for o, _ in batches]), torch.cat([t for _, t in batches])


def hits64(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs.argmax(1) == targets).double()


def assert_same(found: dict[str, Tensor], expected: dict[str, Tensor]) -> None:
    """Identical names, dtypes and values (NaN equal to NaN)."""
    assert list(found) == list(expected)
    for name, value in expected.items():
        assert found[name].dtype == value.dtype, name
        assert torch.equal(found[name], value) or (
            found[name].isnan().all() and value.isnan().all()
        ), (name, found[name], value)


def computed(objective: Any) -> dict[str, Tensor]:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning once updated
        return dict(objective.compute())


# -- CLIKA CCO: every metric form ----------------------------------------------------------------


class CustomAccuracy:
    """CCO example #3 as written: the plain mean of its batch means."""

    def __init__(self) -> None:
        self.avgs: list[float] = []

    def update(self, model_output: Tensor, target: Tensor) -> None:
        self.avgs.append(torch.mean((torch.argmax(model_output, 1) == target).float()).item())

    def compute(self) -> float:
        return sum(self.avgs) / len(self.avgs)

    def reset(self) -> None:
        self.avgs = []


def test_a_failing_reset_of_a_wrapped_object_is_the_library_s_error() -> None:
    # StatefulObjective.reset let the object's exception through as it was (a bare
    # RuntimeError), where update and compute raise MetricCallError naming the objective.
    class BrokenReset(CustomAccuracy):
        def reset(self) -> None:
            raise RuntimeError("state on another device")

    metric = tt.wrap(BrokenReset(), "Acc")
    batch = classification([3], seed=0)[0]
    metric.update(*batch)
    before = computed(metric)
    with pytest.raises(errors.MetricCallError) as caught:
        metric.reset()
    message = str(caught.value)
    assert "StatefulObjective 'Acc'" in message
    assert "BrokenReset.reset() raised RuntimeError: state on another device" in message
    assert_same(computed(metric), before)  # still updated: no NaN, no warning


class TorchMetricsAccuracy(torchmetrics.classification.MulticlassAccuracy):
    """CCO example #2: a torchmetrics subclass reporting percents."""

    def update(self, model_output: Tensor, target: Tensor) -> None:
        super().update(model_output, target)

    def compute(self) -> Tensor:
        return super().compute() * 100


class StatelessAccuracy(torch.nn.Module):
    """CCO example #5 as written."""

    def forward(self, model_output: Tensor, target: Tensor) -> dict[str, Tensor]:
        num_correct_predictions = torch.sum(torch.argmax(model_output, 1) == target)
        accuracy = torch.mean((torch.argmax(model_output, 1) == target).float())
        return {"num_correct_predictions": num_correct_predictions, "accuracy": accuracy}


class Tally:
    """A stateful object whose ``compute`` returns one of CCO's return types."""

    def __init__(self, form: str) -> None:
        self.form = form
        self.reset()

    def update(self, outputs: Tensor, targets: Tensor) -> None:
        self.hits += int((outputs.argmax(1) == targets).sum())
        self.seen += len(targets)

    def compute(self) -> Any:
        rate = self.hits / self.seen
        return {
            "int": self.hits,
            "float": rate,
            "tensor": torch.tensor(rate, dtype=torch.float32),
            "tuple": (self.hits, rate),
            "list": [torch.tensor([self.hits]), rate],
            "dict": {"hits": self.hits, "rate": torch.tensor(rate, dtype=torch.float64)},
        }[self.form]

    def reset(self) -> None:
        self.hits = self.seen = 0


def macro_recall_percent(outputs: Tensor, targets: Tensor) -> Tensor:
    predicted = outputs.argmax(1)
    classes = range(outputs.shape[1])
    recalls = [((predicted == c) & (targets == c)).sum() / (targets == c).sum() for c in classes]
    return 100 * torch.stack(recalls).double().mean()


def nll64(outputs: Tensor, targets: Tensor) -> Tensor:
    return functional.nll_loss(torch.log_softmax(outputs.double(), 1), targets)


def weighted_by_size(batches: list[Batch], per_batch: Callable[[Batch], Tensor]) -> Tensor:
    """The batch values' mean weighted by batch size, in float64 (DESIGN's rule for a scalar)."""
    total = sum(len(b[1]) * per_batch(b).double() for b in batches)
    return total / sum(len(b[1]) for b in batches)


def count_hits(outputs: Tensor, targets: Tensor) -> int:
    return int((outputs.argmax(1) == targets).sum())


def float_nll(outputs: Tensor, targets: Tensor) -> float:
    return float(nll64(outputs, targets))


def tuple_errors(outputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    return functional.mse_loss(outputs, targets), (outputs - targets).abs().mean().reshape(1)


def list_parts(outputs: Tensor, targets: Tensor) -> list[Any]:
    return [(outputs - targets).pow(2).mean(1), 0.5]


def dict_losses(outputs: Tensor, targets: Tensor) -> dict[str, Any]:
    return {"cls_loss": functional.mse_loss(outputs, targets), "box_loss": 2, "obj_loss": 0.25}


F32, F64, I64 = torch.float32, torch.float64, torch.int64
UNEVEN = [6, 1, 9, 4]

# id -> (make the objective, batches, {name: (dtype, float64 reference on the batches)})
CCO_FORMS: dict[str, tuple[Callable[[], Any], list[Batch], Callable[[list[Batch]], Any]]] = {
    # example #1: a lambda returning a scalar batch mean (with the evident .float() fix)
    "ex1 lambda": (
        lambda: tt.wrap(lambda o, t: torch.mean((torch.argmax(o, 1) == t).float()), "accuracy"),
        classification(UNEVEN, 11),
        lambda b: {"accuracy": (F32, hits64(*joined(b)).mean())},
    ),
    "ex2 torchmetrics subclass": (
        lambda: tt.wrap(TorchMetricsAccuracy(num_classes=4)),
        classification([6, 1, 9, 14], 12),
        lambda b: {"TorchMetricsAccuracy": (F32, macro_recall_percent(*joined(b)))},
    ),
    # example #3 averages batch means: exact for batches of one size
    "ex3 custom class": (
        lambda: tt.wrap(CustomAccuracy()),
        classification([5, 5, 5, 5], 13),
        lambda b: {"CustomAccuracy": (F64, hits64(*joined(b)).mean())},
    ),
    "ex4 nn.NLLLoss": (
        lambda: tt.wrap(torch.nn.NLLLoss()),
        [(torch.log_softmax(o, 1), t) for o, t in classification(UNEVEN, 14)],
        lambda b: {"NLLLoss": (F32, functional.nll_loss(joined(b)[0].double(), joined(b)[1]))},
    ),
    "ex5 stateless module": (
        lambda: tt.wrap(StatelessAccuracy(), aggregation={"num_correct_predictions": "sum"}),
        classification(UNEVEN, 15),
        lambda b: {
            "num_correct_predictions": (I64, hits64(*joined(b)).sum()),
            "accuracy": (F32, hits64(*joined(b)).mean()),
        },
    ),
    "ex6 stateful module": (
        lambda: tt.wrap(StatefulAccuracy()),
        classification(UNEVEN, 16),
        lambda b: {"StatefulAccuracy": (F32, hits64(*joined(b)).mean())},
    ),
    # return types of a function: int, float, 0-d and one-element tensors, tuple, list, dict
    "fn int (summed)": (
        lambda: tt.wrap(count_hits, "hits", aggregation="sum"),
        classification(UNEVEN, 17),
        lambda b: {"hits": (I64, hits64(*joined(b)).sum())},
    ),
    "fn float": (
        lambda: tt.wrap(float_nll, "nll"),
        classification(UNEVEN, 18),
        lambda b: {"nll": (F64, nll64(*joined(b)))},
    ),
    "fn tuple": (
        lambda: tt.wrap(tuple_errors, "errors"),
        regression(UNEVEN, 19),
        lambda b: {
            "errors_0": (F32, functional.mse_loss(*(x.double() for x in joined(b)))),
            "errors_1": (F32, functional.l1_loss(*(x.double() for x in joined(b)))),
        },
    ),
    "fn list": (
        lambda: tt.wrap(list_parts, "parts"),
        regression(UNEVEN, 20),
        lambda b: {
            "parts_0": (F32, functional.mse_loss(*(x.double() for x in joined(b)))),
            "parts_1": (F64, torch.tensor(0.5, dtype=F64)),
        },
    ),
    "fn dict": (
        lambda: tt.wrap(dict_losses, "det"),
        regression(UNEVEN, 21),
        lambda b: {
            "cls_loss": (F32, functional.mse_loss(*(x.double() for x in joined(b)))),
            "box_loss": (F64, torch.tensor(2.0, dtype=F64)),
            "obj_loss": (F64, torch.tensor(0.25, dtype=F64)),
        },
    ),
    # return types of a stateful compute
    **{
        f"stateful {form}": (
            (lambda form=form: tt.wrap(Tally(form), "T")),
            classification(UNEVEN, 22),
            (lambda b, form=form: _tally_reference(form, b)),
        )
        for form in ("int", "float", "tensor", "tuple", "list", "dict")
    },
}


def _tally_reference(form: str, batches: list[Batch]) -> dict[str, tuple[torch.dtype, Tensor]]:
    hits = hits64(*joined(batches))
    count, rate = hits.sum(), hits.mean()
    return {
        "int": {"T": (I64, count)},
        "float": {"T": (F64, rate)},
        "tensor": {"T": (F32, rate)},
        "tuple": {"T_0": (I64, count), "T_1": (F64, rate)},
        "list": {"T_0": (I64, count), "T_1": (F64, rate)},
        "dict": {"hits": (I64, count), "rate": (F64, rate)},
    }[form]


def _assert_reference(found: dict[str, Tensor], expected: dict[str, Any]) -> None:
    assert list(found) == list(expected)
    for name, (dtype, reference) in expected.items():
        assert found[name].shape == (), name
        assert found[name].dtype == dtype, (name, found[name].dtype)
        assert torch.allclose(found[name].double(), reference.double(), rtol=1e-6, atol=1e-6), (
            name,
            found[name],
            reference,
        )


@pytest.mark.parametrize("form", list(CCO_FORMS))
def test_every_cco_metric_form_value_name_dtype_reset_state_and_copies(form: str) -> None:
    make, batches, reference = CCO_FORMS[form]
    metric = make()
    for batch in batches[:2]:
        metric.update(*batch)
    state = metric.state_dict()
    copied = copy.deepcopy(metric)
    pickled = pickle.loads(pickle.dumps(copy.deepcopy(metric))) if "lambda" not in form else None
    for batch in batches[2:]:
        metric.update(*batch)
    values = computed(metric)
    _assert_reference(values, reference(batches))

    # a state saved mid-epoch and a deep copy made then report what the uninterrupted run does
    restored = make()
    restored.load_state_dict(state)
    others = [restored, copied] + ([pickled] if pickled is not None else [])
    for other in others:
        for batch in batches[2:]:
            other.update(*batch)
        assert_same(computed(other), values)
    copied.reset()  # the copy is independent
    assert_same(computed(metric), values)

    # reset: NaN and the library's warning, then a new epoch as the first
    metric.reset()
    with pytest.warns(errors.ComputedBeforeUpdatedWarning):
        nan = metric.compute()
    assert all(value.isnan().all() for value in nan.values())
    for batch in batches:
        metric.update(*batch)
    assert_same(computed(metric), values)


class Returns:
    """A stateful object whose ``update`` or ``compute`` returns ``result``."""

    def __init__(self, result: Any, on: str) -> None:
        self.result, self.on, self.seen = result, on, 0

    def update(self, outputs: Tensor, targets: Tensor) -> Any:
        if self.on == "update":
            return self.result
        self.seen += len(targets)
        return None

    def compute(self) -> Any:
        return self.result if self.on == "compute" else self.seen

    def reset(self) -> None:
        self.seen = 0


def _bad_function(result: Any) -> Any:
    def bad(outputs: Tensor, targets: Tensor) -> Any:
        return result(outputs) if callable(result) else result

    return tt.wrap(bad, "Bad")


BAD_RESULTS = [
    (None, errors.ResultTypeError, ["'Bad'", "NoneType"]),
    ("high", errors.ResultTypeError, ["'Bad'", "str"]),
    ({1: 2.0}, errors.InvalidNameError, ["'Bad'", "non-empty strings", "int 1"]),
    ({"a": None}, errors.ResultTypeError, ["'Bad'", "'a'", "NoneType"]),
    ((1.0, (2.0, 3.0)), errors.ResultTypeError, ["'Bad'", "'Bad_1'", "tuple"]),
    ({"nested": {"x": 1}}, errors.ResultTypeError, ["'Bad'", "'nested'", "dict"]),
    (1 + 2j, errors.ResultTypeError, ["'Bad'", "complex"]),
]


@pytest.mark.parametrize(("result", "error", "words"), BAD_RESULTS)
def test_bad_return_types_are_library_errors_naming_the_metric(
    result: Any, error: type[Exception], words: list[str]
) -> None:
    batch = classification([3], seed=1)[0]
    stateless = _bad_function(result)
    stateful_update = tt.wrap(Returns(result, "update"), "Bad")
    stateful_compute = tt.wrap(Returns(result, "compute"), "Bad")
    stateful_compute.update(*batch)
    calls = [lambda: stateless.update(*batch), stateful_compute.compute]
    if result is not None:  # an update may return nothing
        calls.append(lambda: stateful_update.update(*batch))
    for call in calls:
        with pytest.raises(error) as caught:
            call()
        assert all(word in str(caught.value) for word in words), str(caught.value)
    with pytest.warns(errors.ComputedBeforeUpdatedWarning):  # the refused batch counted nothing
        assert stateless.compute() == {}


@pytest.mark.parametrize("shape", [(3, 4), (3, 1), (2,)])
def test_a_value_of_the_wrong_shape_is_refused_and_changes_nothing(shape: tuple[int, ...]) -> None:
    good, bad = classification([3, 3], seed=2)
    calls = iter([torch.tensor(0.5), torch.ones(shape)])
    metric = tt.wrap(lambda o, t: {"v": next(calls)}, "Shaped")
    metric.update(*good)
    before = computed(metric)
    with pytest.raises(errors.ResultShapeError, match=rf"'Shaped'.*batch of 3.*{shape}"):
        metric.update(*bad)
    assert_same(computed(metric), before)
    vector = tt.wrap(Returns(torch.ones(3), "compute"), "Vector")
    vector.update(*good)
    with pytest.raises(errors.ResultShapeError, match=r"'Vector'.*one element.*\(3,\)"):
        vector.compute()


# -- Deeplite Neutrino: a dict of losses summed, one evaluation key monitored, deepcopy -----------


def detection_losses(outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
    """Neutrino's loss form: a dict of tensors (batch means and per-sample values) to sum."""
    return {
        "cls_loss": functional.cross_entropy(outputs, targets),
        "box_loss": outputs.pow(2).mean(1),  # per sample
        "obj_loss": outputs.abs().mean(),
    }


def detection_reference(outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
    outputs = outputs.double()
    parts = {
        "cls_loss": functional.cross_entropy(outputs, targets),
        "box_loss": outputs.pow(2).mean(1).mean(),
        "obj_loss": outputs.abs().mean(),
    }
    return {"Total": sum(parts.values()), **parts}  # type: ignore[dict-item]


def test_neutrino_loss_dict_is_summed_for_backprop_and_tracked_per_entry() -> None:
    loss = tt.DictLoss.summed(detection_losses, "Total")
    batches = classification([5, 3, 1, 4], seed=30, classes=3)
    for outputs, targets in batches:
        outputs = outputs.clone().requires_grad_(True)
        value = loss(outputs, targets)
        value.backward()
        outputs64 = outputs.detach().double().requires_grad_(True)
        expected = detection_reference(outputs64, targets)["Total"]
        expected.backward()
        assert torch.allclose(value.double(), expected, atol=1e-6)
        assert outputs.grad is not None and outputs64.grad is not None
        assert torch.allclose(outputs.grad.double(), outputs64.grad, atol=1e-6)
    values = computed(loss)
    # the epoch value of a batch mean is the batch-size-weighted mean of the batch means
    reference = {
        name: weighted_by_size(batches, lambda b, n=name: detection_reference(*b)[n])
        for name in ("Total", "cls_loss", "box_loss", "obj_loss")
    }
    assert list(values) == list(reference)
    for name, expected in reference.items():
        assert values[name].dtype == torch.float32
        assert torch.allclose(values[name].double(), expected, atol=1e-6), name
    all_outputs, all_targets = joined(batches)
    cls_all = functional.cross_entropy(all_outputs.double(), all_targets)
    assert torch.allclose(values["cls_loss"].double(), cls_all, atol=1e-6)  # exact, all data


@pytest.mark.parametrize(
    ("fn", "names"),
    [
        (lambda o, t: {"loss": functional.cross_entropy(o, t)}, ["Loss", "loss"]),  # Neutrino's
        (lambda o, t: functional.cross_entropy(o, t), ["Loss"]),  # "or a single tensor"
        (
            lambda o, t: (functional.cross_entropy(o, t), o.abs().mean()),
            ["Loss", "Loss_0", "Loss_1"],
        ),
    ],
)
def test_neutrino_single_tensor_and_sequence_forms(fn: Any, names: list[str]) -> None:
    loss = tt.DictLoss.summed(fn, "Loss")
    batches = classification([4, 2, 7], seed=31, classes=3)
    for batch in batches:
        loss(*batch)
    values = computed(loss)
    assert list(values) == names
    cross_entropy = weighted_by_size(
        batches, lambda b: functional.cross_entropy(b[0].double(), b[1])
    )
    extra = weighted_by_size(batches, lambda b: b[0].double().abs().mean())
    expected = cross_entropy + (extra if len(names) == 3 else 0)
    assert torch.allclose(values["Loss"].double(), expected, atol=1e-6)


def test_neutrino_evaluation_dict_with_one_key_monitored() -> None:
    # Neutrino's EvalAccuracy returns {'accuracy': ...} (and others); the engine follows one key.
    evaluation = tt.MetricCollection(
        accuracy=tt.Metric(lambda o, t: 100 * hits64(o, t), "accuracy", higher_is_better=True),
        loss=tt.Metric(lambda o, t: functional.cross_entropy(o, t), "loss"),
    )
    tracker = tt.MetricTracker(evaluation, "accuracy", patience=2)
    assert tt.monitor_mode(evaluation, "accuracy") == "max"
    epochs = [classification([5, 3, 2], seed=40 + epoch) for epoch in range(4)]
    expected = []
    for batches in epochs:
        evaluation.reset()
        for batch in batches:
            evaluation.update(*batch)
        tracker.update()
        expected.append(float(100 * hits64(*joined(batches)).mean()))
    assert tracker.history == pytest.approx(expected, abs=1e-9)
    best = max(range(len(expected)), key=expected.__getitem__)
    assert tracker.best_epoch == best and tracker.best_value == pytest.approx(expected[best])
    clone = copy.deepcopy(tracker)
    assert clone.history == tracker.history and clone.best_epoch == tracker.best_epoch


def mae_per_sample(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).abs().flatten(1).mean(1)


def mse_mean(outputs: Tensor, targets: Tensor) -> Tensor:
    return functional.mse_loss(outputs, targets)


def two_parts(outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
    return {"a": mse_mean(outputs, targets), "b": mae_per_sample(outputs, targets)}


DEEPCOPIED: dict[str, Callable[[], Any]] = {
    "Loss": lambda: tt.Loss(mse_mean, "MSE"),
    "composed": lambda: tt.Loss(mse_mean, "MSE") ** 2 + 0.5 * tt.Loss(mae_per_sample, "MAE"),
    "scheduled": lambda: (
        tt.Loss(mse_mean, "MSE") + tt.schedules.linear(0.0, 1.0, steps=3) * tt.Loss(mae_per_sample)
    ),
    "DictLoss.summed": lambda: tt.DictLoss.summed(two_parts, "S", weights={"a": 1, "b": 2}),
    "loss | metric": lambda: tt.Loss(mse_mean, "MSE") | tt.Metric(mae_per_sample, "MAE"),
    "collection": lambda: tt.MetricCollection(MAE=mae_per_sample, MSE=mse_mean),
    "torchmetrics": lambda: from_torchmetrics(torchmetrics.MeanSquaredError()),
    "torcheval": lambda: from_torcheval(eval_metrics.MeanSquaredError()),
    "loss + torchmetrics": lambda: (
        tt.Loss(mse_mean, "MSE") + from_torchmetrics(torchmetrics.MeanAbsoluteError())
    ),
}


@pytest.mark.parametrize("kind", list(DEEPCOPIED))
def test_neutrino_objects_survive_deepcopy_mid_epoch(kind: str) -> None:
    original = DEEPCOPIED[kind]()
    batches = regression([5, 3, 1, 4, 2], seed=50)
    step = original.__call__ if hasattr(original, "forward") else original.update
    for batch in batches[:2]:
        step(*batch)
    clone = copy.deepcopy(original)
    clone_step = clone.__call__ if hasattr(clone, "forward") else clone.update
    for batch in batches[2:]:
        step(*batch)
        clone_step(*batch)
    values = computed(original)
    assert_same(computed(clone), values)
    clone.reset()
    assert_same(computed(original), values)
    outputs, targets = (x.double() for x in joined(batches))
    mse = functional.mse_loss(outputs, targets)
    mae = (outputs - targets).abs().mean()
    for name, value in values.items():  # the components against float64 references
        if name in ("MSE", "MeanSquaredError", "a"):
            assert torch.allclose(value.double(), mse, atol=1e-6), name
        elif name in ("MAE", "MeanAbsoluteError", "b", "mae_per_sample"):
            assert torch.allclose(value.double(), mae, atol=1e-6), name
    if kind == "composed":  # per batch: MSE_b^2 + 0.5 MAE_i, weighted by samples
        combined = weighted_by_size(
            batches,
            lambda b: (
                functional.mse_loss(b[0].double(), b[1].double()) ** 2
                + 0.5 * mae_per_sample(b[0].double(), b[1].double()).mean()
            ),
        )
        assert torch.allclose(values["Combined Loss"].double(), combined, atol=1e-6)


# -- t3w: higher_better, loss re-weighting, a dataset metric synced however often ----------------


def test_t3w_higher_better_and_loss_default() -> None:
    accuracy = tt.Metric(lambda o, t: hits64(o, t), "Acc", higher_is_better=True)
    loss = tt.Loss(lambda o, t: functional.cross_entropy(o, t), "CE")
    assert accuracy.higher_is_better_for("Acc") is True
    assert loss.higher_is_better_for("CE") is False  # a loss: lower is better, unless told
    assert (tt.monitor_mode(accuracy, "Acc"), tt.monitor_mode(loss, "CE")) == ("max", "min")
    reward = tt.Loss(lambda o, t: hits64(o, t), "Hits", higher_is_better=True)
    assert (loss - 0.1 * reward).higher_is_better_for("Combined Loss") is False
    with pytest.raises(ValueError, match=r"\[CE\].*\[Hits\]|\[Hits\].*\[CE\]"):
        loss + reward  # opposite directions added: refused


def test_t3w_loss_reweighting_reports_raw_components_and_the_reweighted_sum() -> None:
    # t3w reports each loss as (loss_reweight, raw value) and optimises the reweighted sum.
    ce = tt.Loss(lambda o, t: functional.cross_entropy(o, t), "CE")
    l1 = tt.Loss(lambda o, t: o.abs().mean(1), "L1")
    loss = 0.3 * ce + 2 * l1
    assert loss.formula == "0.3 x [CE] + 2 x [L1]"
    batches = classification([4, 7, 1], seed=60, classes=3)
    for outputs, targets in batches:
        outputs = outputs.clone().requires_grad_(True)
        value = loss(outputs, targets)
        value.backward()
        outputs64 = outputs.detach().double().requires_grad_(True)
        expected = 0.3 * functional.cross_entropy(outputs64, targets) + 2 * outputs64.abs().mean()
        expected.backward()
        assert torch.allclose(value.double(), expected, atol=1e-6)
        assert outputs.grad is not None and outputs64.grad is not None
        assert torch.allclose(outputs.grad.double(), outputs64.grad, atol=1e-6)
    values = computed(loss)
    raw_ce = weighted_by_size(batches, lambda b: functional.cross_entropy(b[0].double(), b[1]))
    raw_l1 = joined(batches)[0].double().abs().mean()
    assert torch.allclose(values["CE"].double(), raw_ce, atol=1e-6)
    assert torch.allclose(values["L1"].double(), raw_l1, atol=1e-6)
    combined = 0.3 * raw_ce + 2 * raw_l1
    assert torch.allclose(values["Combined Loss"].double(), combined, atol=1e-6)
    assert torch.allclose(loss.formula_value().double(), combined, atol=1e-6)


# -- torchtraining: memory-bounded mean and sum, a concatenating accumulator -----------------------


def state_bytes(state: Any) -> int:
    if isinstance(state, Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(state_bytes(value) for value in state.values())
    if isinstance(state, (list, tuple)):
        return sum(state_bytes(value) for value in state)
    return 0


def batch_total(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).sum()  # a batch total, for the 'sum' aggregation


def test_torchtraining_mean_and_sum_are_memory_bounded_and_exact_at_every_step() -> None:
    # torchtraining's Mean and Sum return the value "up to this point" at each step.
    running = tt.MetricCollection(
        Mean=lambda o, t: (o - t).flatten(1).mean(1),
        Total=tt.Metric(batch_total, "Total", aggregation="sum"),
    )
    batches = regression([1 + step % 7 for step in range(600)], seed=70)
    sizes, seen = set(), []
    for step, batch in enumerate(batches):
        running.update(*batch)
        seen.append(batch)
        if step in (0, 1, 9, 255, 256, 257, 599):
            sizes.add(state_bytes(running.state_dict()))
            outputs, targets = (x.double() for x in joined(seen))
            values = computed(running)
            assert torch.allclose(values["Mean"].double(), (outputs - targets).mean(), atol=1e-6)
            assert torch.allclose(values["Total"].double(), (outputs - targets).sum(), atol=1e-4)
    assert len(sizes) == 1, sizes  # constant bytes whatever the number of updates


class MedianError(tt.Objective[Tensor, Tensor]):
    """torchtraining's List accumulator, for a metric that needs every value."""

    aggregation = "cat"

    @override
    def calculate(self, outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
        return {"errors": (outputs - targets).abs().flatten(1).mean(1)}

    @override
    def finalize(self, values: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"Median Error": values["errors"].median()}


def test_torchtraining_concatenating_accumulator_sees_every_value() -> None:
    batches = regression([5, 3, 1, 4, 6], seed=71)
    median = MedianError()
    for batch in batches[:2]:
        median.update(*batch)
    state, clone = median.state_dict(), copy.deepcopy(median)
    for batch in batches[2:]:
        median.update(*batch)
    outputs, targets = joined(batches)
    expected = (outputs - targets).abs().flatten(1).mean(1).median()
    assert_same(computed(median), {"Median Error": expected})
    restored = MedianError()
    restored.load_state_dict(state)
    for other in (restored, clone):
        for batch in batches[2:]:
            other.update(*batch)
        assert_same(computed(other), computed(median))
    with pytest.raises(errors.InvalidArgumentError, match="'cat'"):
        tt.Metric(mae_per_sample, "MAE", aggregation="cat")  # a vector is not an epoch value


# -- t3w: synchronize() stays correct however often it is called -----------------------------------

STEP_SIZES = {0: [3, 0, 5, 2], 1: [4, 2, 0, 6]}  # rank -> batch size per step (0: no update)
SYNCS_PER_STEP = [1, 3, 2, 1]


def _sync_batch(rank: int, step: int) -> Batch:
    generator = torch.Generator().manual_seed(1000 * rank + step)
    size = STEP_SIZES[rank][step]
    return torch.randn(size, 3, generator=generator), torch.randn(size, 3, generator=generator)


def _synced_objectives() -> dict[str, Any]:
    return {
        "mean": tt.Metric(mae_per_sample, "MAE"),
        "sum": tt.Metric(batch_total, "Total", aggregation="sum"),
        "max": tt.wrap(mae_per_sample, "Worst", aggregation="max"),
        "median": MedianError(),
        "loss": tt.Loss(mse_mean, "MSE") + 0.5 * tt.Loss(mae_per_sample, "MAE"),
    }


def repeated_sync_scenario(rank: int, world: int) -> dict[str, Any]:
    objectives = _synced_objectives()
    record: dict[str, Any] = {}
    for step, syncs in enumerate(SYNCS_PER_STEP):
        batch = _sync_batch(rank, step)
        if len(batch[1]):
            for name, objective in objectives.items():
                objective(*batch) if name == "loss" else objective.update(*batch)
        for _ in range(syncs):
            tt.sync_all(*objectives.values())
            record[(step, "synced")] = {k: o.compute() for k, o in objectives.items()}
        objectives["mean"].sync()  # one more, alone
        record[(step, "again")] = {k: o.compute() for k, o in objectives.items()}
    return record


def _synced_reference(step: int) -> dict[str, dict[str, Tensor]]:
    batches = [
        _sync_batch(rank, s) for s in range(step + 1) for rank in (0, 1) if STEP_SIZES[rank][s]
    ]
    outputs, targets = (x.double() for x in joined(batches))
    errors_ = (outputs - targets).abs().flatten(1).mean(1)
    mse = weighted_by_size(batches, lambda b: mse_mean(b[0].double(), b[1].double()))
    return {
        "mean": {"MAE": errors_.mean()},
        "sum": {"Total": (outputs - targets).sum()},
        "max": {"Worst": errors_.max()},
        "median": {"Median Error": errors_.median()},
        "loss": {"Combined Loss": mse + 0.5 * errors_.mean(), "MSE": mse, "MAE": errors_.mean()},
    }


@pytest.mark.timeout(120)
def test_t3w_dataset_metric_sync_stays_correct_however_often_it_is_called(
    tmp_path: Path,
) -> None:
    records = _dist.launch(2, "test_reference_coverage:repeated_sync_scenario", tmp_path, 90.0)
    for step in range(len(SYNCS_PER_STEP)):
        expected = _synced_reference(step)
        for rank, record in enumerate(records):
            for stage in ("synced", "again"):
                found = record[(step, stage)]
                for key, values in expected.items():
                    assert list(found[key]) == list(values), (step, rank, key)
                    for name, value in values.items():
                        assert torch.allclose(found[key][name].double(), value, atol=1e-5), (
                            step,
                            rank,
                            stage,
                            key,
                            name,
                        )
            assert_same(record[(step, "again")]["mean"], records[0][(step, "synced")]["mean"])

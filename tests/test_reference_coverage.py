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
from typing import Any

import pytest
import torch
import torchmetrics
from torch import Tensor
from torch.nn import functional

import torchtally as tt
from torchtally import errors

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


class StatefulAccuracy(torch.nn.Module):
    """CCO example #6 as written."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("correct", torch.Tensor([0]))
        self.register_buffer("total", torch.Tensor([0]))

    def compute(self) -> Tensor:
        return self.correct / self.total

    def reset(self) -> None:
        self.correct.copy_(0)
        self.total.copy_(0)

    def update(self, preds: Tensor, targets: Tensor) -> dict[str, float]:
        correct = (preds.argmax(-1) == targets).sum().item()
        self.correct += correct
        self.total += preds.shape[0]
        return {"batch_acc": correct / preds.shape[0]}


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

"""A feature-interaction matrix: every way of defining an objective, crossed with the rest.

The axes: the kind of objective (a metric of a per-sample callable or of a 0-d batch mean,
the sum/min/max/cat aggregations, a collection, a loss, a composed loss with constants,
powers and a division, a schedule in the formula, ``DictLoss``, ``DictLoss.summed`` with
``weights=``, ``loss | metric``, ``loss | torchmetrics metric``, ``tt.wrap`` of a torcheval
metric), the weights (none, a number, a ``(B,)`` tensor with zeros, a ``weight=`` callable
given at construction), the batches (uneven, empty, of one sample), what happens between
batches (``compute()`` mid-epoch, ``state_dict`` into a fresh object, ``copy()``, pickling,
``merge_state`` of two halves, ``reset()`` then reuse, ``.to('cpu')``), the dtype of the
inputs and the grad mode (eager, ``torch.no_grad``, ``torch.inference_mode``). A covering
design (each value of every axis with each value of every other, over the pairs that
apply) picks the cells; a few cells run under ``torch.compile`` and over two gloo processes.

For every cell each reported value (``compute()``, ``formula_value()``, what ``forward``
returned) is compared with a float64 reference computed from the concatenated data by
hand-written expressions.
"""

from __future__ import annotations

import functools
import itertools
import math
import pickle
import random
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import torch._dynamo
import torchmetrics
from torch import Tensor
from torcheval import metrics as eval_metrics

import _dist
import torchtally as tt
from _sync import simulate_sync  # tests/_sync.py
from torchtally.contrib.torcheval import from_torcheval
from torchtally.contrib.torchmetrics import from_torchmetrics
from torchtally.losses import as_loss

# -- the callables (module level: cells pickle them) --------------------------------------------


def mae(outputs: Tensor, targets: Tensor) -> Tensor:
    """Per-sample mean absolute error."""
    return (outputs - targets).abs().flatten(1).mean(1)


def mse(outputs: Tensor, targets: Tensor) -> Tensor:
    """A 0-d batch mean (as ``mse_loss`` returns)."""
    return (outputs - targets).pow(2).mean()


def bias(outputs: Tensor, targets: Tensor) -> Tensor:
    """Per-sample signed error (a value of either sign)."""
    return (outputs - targets).flatten(1).mean(1)


def closeness(outputs: Tensor, targets: Tensor) -> Tensor:
    """Per-sample, higher is better."""
    return 1 / (1 + mae(outputs, targets))


def total_error(outputs: Tensor, targets: Tensor) -> Tensor:
    """Per-sample absolute error summed over the features (integer for integer inputs)."""
    return (outputs - targets).abs().flatten(1).sum(1)


def hits(outputs: Tensor, targets: Tensor) -> Tensor:
    """Per-sample booleans: a row whose first output is at least its first target."""
    return outputs[:, 0] >= targets[:, 0]


def detection(outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
    error = (outputs - targets).abs()
    return {"Loss": error.mean(1), "Worst": error.amax(1)}


def parts(outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
    diff = outputs - targets
    return {"cls": diff.abs().mean(1), "box": diff.pow(2).mean(), "iou": diff.mean(1)}


def positive_rows(outputs: Tensor, targets: Tensor) -> Tensor:
    """A ``weight=`` callable: 0 for rows whose first target is negative, else 1.5."""
    return (targets[:, 0] >= 0).to(torch.float64) * 1.5


class Errors(tt.Objective[Tensor, Tensor]):
    """Every per-sample error, kept (the ``'cat'`` aggregation)."""

    aggregation = "cat"

    def calculate(self, outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
        return {"Errors": mae(outputs, targets)}


# -- what a cell is made of ---------------------------------------------------------------------

F64 = torch.float64


@dataclass(frozen=True)
class Value:
    """One reported name: how to compute its per-batch values by hand, and its aggregation."""

    fn: Callable[[Tensor, Tensor], Any]
    kind: str = "mean"
    entry: str | None = None  # the entry of a dict-valued fn


@dataclass(frozen=True)
class Kind:
    """An objective kind: how to build it and what it reports."""

    make: Callable[[Any], Any]  # weight= callable (or None) -> objective
    values: dict[str, Value]
    # The per-sample criterion of a loss, by hand, from the components' values (in their own
    # dtypes) and the schedules' position: its weighted epoch mean is the combined value.
    criterion: Callable[[dict[str, Tensor], int], Tensor] | None = None
    combined: str | None = None  # the name of the combined value
    formula: Callable[[dict[str, float], int], float] | None = None  # on epoch values
    weights: bool = True  # accepts weights
    integers: bool = False  # accepts integer inputs
    floats: tuple[torch.dtype, ...] = (torch.float16, torch.bfloat16, torch.float32, F64)
    picklable: bool = True
    mergeable: bool = True
    scheduled: bool = False
    own_code: bool = False  # a hand-written objective: its own errors propagate as they are
    epochs: bool = False  # a schedule counted in epochs: the cell calls advance_epoch()
    foreign: frozenset[str] = frozenset()  # names another library computes (in float32)


def cosine_weight(epoch: int, steps: int = 3) -> float:
    done = min(epoch, steps) / steps
    return 0.1 + (1.0 - 0.1) * (1 + math.cos(math.pi * done)) / 2


def _parts_sum(outputs: Tensor, targets: Tensor) -> Tensor:
    values = parts(outputs, targets)
    return values["cls"] + values["box"] + values["iou"]


def linear_weight(position: int, steps: int = 4) -> float:
    return min(position, steps) / steps


def _loss(weight: Any) -> Any:
    return tt.Loss(mae, "MAE", weight=weight)


def _composed(weight: Any) -> Any:
    a = tt.Loss(mae, "MAE", weight=weight)
    b = tt.Loss(mse, "MSE", weight=weight)
    c = tt.Loss(closeness, "Close", higher_is_better=True, weight=weight)
    return 2 * b**2 + 0.5 * a - 3 + a / (1 + c)


def _scheduled(weight: Any) -> Any:
    a = tt.Loss(mae, "MAE", weight=weight)
    b = tt.Loss(mse, "MSE", weight=weight)
    return a + tt.schedules.linear(0.0, 1.0, steps=4) * b


def _summed(weight: Any) -> Any:
    return tt.DictLoss.summed(parts, "Loss", weights={"cls": 1, "box": 0.5}, weight=weight)


def _loss_metric(weight: Any) -> Any:
    return tt.Loss(mae, "MAE", weight=weight) | tt.Metric(bias, "Bias", weight=weight)


def _loss_torchmetrics(weight: Any) -> Any:
    return tt.Loss(mae, "MAE") | from_torchmetrics(torchmetrics.MeanSquaredError(), "TM MSE")


def _torcheval(weight: Any) -> Any:
    return tt.wrap(eval_metrics.MeanSquaredError(), "TE MSE")


def _collection(weight: Any) -> Any:
    return tt.MetricCollection.from_dict(
        {
            "MAE": tt.Metric(mae, "MAE", weight=weight),
            "MSE": tt.Metric(mse, "MSE", weight=weight),
            "Worst": tt.Metric(mae, "Worst", aggregation="max", weight=weight),
        }
    )


def _mse_elements(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).pow(2).mean()


def _scheduled_joined(weight: Any) -> Any:
    scheduled = tt.Loss(mae, "MAE") + tt.schedules.piecewise({0: 0.5, 2: 2.0}) * tt.Loss(mse, "MSE")
    return scheduled | from_torchmetrics(torchmetrics.MeanSquaredError(), "TM MSE")


def piecewise_weight(position: int) -> float:
    return 0.5 if position < 2 else 2.0


def _scaled_join(weight: Any) -> Any:
    joined = tt.Loss(mae, "MAE", weight=weight) | tt.Metric(bias, "Bias", weight=weight)
    return 0.5 * joined + tt.Loss(mse, "MSE", weight=weight) ** 2


def _dict_composed(weight: Any) -> Any:
    summed = tt.DictLoss.summed(parts, "Parts", weight=weight)
    return 0.3 * summed - tt.Loss(closeness, "Close", higher_is_better=True, weight=weight)


def _criterion_sum(values: dict[str, Tensor]) -> Tensor:
    return torch.log1p(values["MAE"]) + torch.clamp(values["MSE"], max=1.0)


def _from_criterion(weight: Any) -> Any:
    return tt.CompositionalLoss(_criterion_sum, "crit", weight=weight, MAE=mae, MSE=mse)


def _prefixed(weight: Any) -> Any:
    return tt.MetricCollection(MAE=mae, prefix="val/", weight=weight) | tt.Metric(
        bias, "Bias", aggregation="min", weight=weight
    )


def _wrapped_fn(weight: Any) -> Any:
    return tt.wrap(bias, "Bias", weight=weight)


def _wrapped_module(weight: Any) -> Any:
    wrapped = tt.wrap(torch.nn.MSELoss(), weight=weight)
    return tt.Loss(mae, "MAE", weight=weight) + 0.5 * as_loss(wrapped)


def _torchmetrics_component(weight: Any) -> Any:
    return tt.Loss(mae, "MAE") + 0.1 * as_loss(from_torchmetrics(torchmetrics.MeanSquaredError()))


def _torcheval_joined(weight: Any) -> Any:
    return tt.Loss(mse, "MSE") | from_torcheval(eval_metrics.MeanSquaredError(), "TE MSE")


def _epochs(weight: Any) -> Any:
    decay = tt.schedules.cosine(1.0, 0.1, steps=3, unit="epoch")
    return tt.Loss(mae, "MAE", weight=weight) + decay * tt.Loss(mse, "MSE", weight=weight)


KINDS: dict[str, Kind] = {
    "metric per-sample": Kind(
        lambda w: tt.Metric(total_error, "Err", weight=w),
        {"Err": Value(total_error)},
        integers=True,
    ),
    "metric batch mean": Kind(lambda w: tt.Metric(mse, "MSE", weight=w), {"MSE": Value(mse)}),
    "metric sum": Kind(
        lambda w: tt.Metric(total_error, "Sum", aggregation="sum", weight=w),
        {"Sum": Value(total_error, "sum")},
        integers=True,
    ),
    "metric min": Kind(
        lambda w: tt.Metric(total_error, "Min", aggregation="min", weight=w),
        {"Min": Value(total_error, "min")},
        integers=True,
    ),
    "metric max": Kind(
        lambda w: tt.Metric(total_error, "Max", aggregation="max", weight=w),
        {"Max": Value(total_error, "max")},
        integers=True,
    ),
    "hits mean": Kind(
        lambda w: tt.Metric(hits, "Hits", weight=w), {"Hits": Value(hits)}, integers=True
    ),
    "hits sum": Kind(
        lambda w: tt.Metric(hits, "Hits", aggregation="sum", weight=w),
        {"Hits": Value(hits, "sum")},
        integers=True,
    ),
    "cat": Kind(lambda w: Errors(), {"Errors": Value(mae, "cat")}, weights=False, own_code=True),
    "collection": Kind(
        _collection,
        {"MAE": Value(mae), "MSE": Value(mse), "Worst": Value(mae, "max")},
    ),
    "loss": Kind(
        _loss,
        {"MAE": Value(mae)},
        criterion=lambda v, p: v["MAE"],
        combined="MAE",
        formula=lambda e, p: e["MAE"],
    ),
    "composed": Kind(
        _composed,
        {"MAE": Value(mae), "MSE": Value(mse), "Close": Value(closeness)},
        criterion=lambda v, p: 2 * v["MSE"] ** 2 + 0.5 * v["MAE"] - 3 + v["MAE"] / (1 + v["Close"]),
        combined="Combined Loss",
        formula=lambda e, p: 2 * e["MSE"] ** 2 + 0.5 * e["MAE"] - 3 + e["MAE"] / (1 + e["Close"]),
    ),
    "scheduled": Kind(
        _scheduled,
        {"MAE": Value(mae), "MSE": Value(mse)},
        criterion=lambda v, p: v["MAE"] + linear_weight(p) * v["MSE"],
        combined="Combined Loss",
        formula=lambda e, p: e["MAE"] + linear_weight(p) * e["MSE"],
        scheduled=True,
    ),
    "dict loss": Kind(
        lambda w: tt.DictLoss(detection, "Loss", weight=w),
        {"Loss": Value(detection, entry="Loss"), "Worst": Value(detection, entry="Worst")},
        criterion=lambda v, p: v["Loss"],
        combined="Loss",
    ),
    "summed weights": Kind(
        _summed,
        {
            "cls": Value(parts, entry="cls"),
            "box": Value(parts, entry="box"),
            "iou": Value(parts, entry="iou"),
        },
        criterion=lambda v, p: v["cls"] + 0.5 * v["box"],
        combined="Loss",
        formula=lambda e, p: e["cls"] + 0.5 * e["box"],
    ),
    "loss | metric": Kind(
        _loss_metric,
        {"MAE": Value(mae), "Bias": Value(bias)},
        criterion=lambda v, p: v["MAE"],
        combined="MAE",
    ),
    "loss | torchmetrics": Kind(
        _loss_torchmetrics,
        {"MAE": Value(mae), "TM MSE": Value(_mse_elements)},
        criterion=lambda v, p: v["MAE"],
        combined="MAE",
        weights=False,
        floats=(torch.float32, F64),
        foreign=frozenset({"TM MSE"}),
    ),
    "wrap torcheval": Kind(
        _torcheval,
        {"TE MSE": Value(_mse_elements)},
        weights=False,
        floats=(torch.float32, F64),
        mergeable=False,
        foreign=frozenset({"TE MSE"}),
    ),
    "scheduled | torchmetrics": Kind(
        _scheduled_joined,
        {"MAE": Value(mae), "MSE": Value(mse), "TM MSE": Value(_mse_elements)},
        criterion=lambda v, p: v["MAE"] + piecewise_weight(p) * v["MSE"],
        combined="Combined Loss",
        formula=lambda e, p: e["MAE"] + piecewise_weight(p) * e["MSE"],
        scheduled=True,
        weights=False,
        floats=(torch.float32, F64),
        foreign=frozenset({"TM MSE"}),
    ),
    "scaled join": Kind(
        _scaled_join,
        {"MAE": Value(mae), "MSE": Value(mse), "Bias": Value(bias)},
        criterion=lambda v, p: 0.5 * v["MAE"] + v["MSE"] ** 2,
        combined="Combined Loss",
        formula=lambda e, p: 0.5 * e["MAE"] + e["MSE"] ** 2,
    ),
    "dict composed": Kind(
        _dict_composed,
        {
            "Parts": Value(_parts_sum),
            "cls": Value(parts, entry="cls"),
            "box": Value(parts, entry="box"),
            "iou": Value(parts, entry="iou"),
            "Close": Value(closeness),
        },
        criterion=lambda v, p: 0.3 * v["Parts"] - v["Close"],
        combined="Combined Loss",
        formula=lambda e, p: 0.3 * e["Parts"] - e["Close"],
    ),
    "criterion": Kind(
        _from_criterion,
        {"MAE": Value(mae), "MSE": Value(mse)},
        criterion=lambda v, p: _criterion_sum(v),
        combined="Combined Loss",
        formula=lambda e, p: math.log1p(e["MAE"]) + min(e["MSE"], 1.0),
    ),
    "prefixed | min": Kind(
        _prefixed,
        {"val/MAE": Value(mae), "Bias": Value(bias, "min")},
    ),
    "wrap fn": Kind(_wrapped_fn, {"Bias": Value(bias)}),
    "wrap module": Kind(
        _wrapped_module,
        {"MAE": Value(mae), "MSELoss": Value(_mse_elements)},
        criterion=lambda v, p: v["MAE"] + 0.5 * v["MSELoss"],
        combined="Combined Loss",
        formula=lambda e, p: e["MAE"] + 0.5 * e["MSELoss"],
    ),
    "torchmetrics component": Kind(
        _torchmetrics_component,
        {"MAE": Value(mae), "MeanSquaredError": Value(_mse_elements)},
        criterion=lambda v, p: v["MAE"] + 0.1 * v["MeanSquaredError"],
        combined="Combined Loss",
        formula=lambda e, p: e["MAE"] + 0.1 * e["MeanSquaredError"],
        weights=False,
        floats=(torch.float32, F64),
        foreign=frozenset({"MeanSquaredError"}),
    ),
    "loss | torcheval": Kind(
        _torcheval_joined,
        {"MSE": Value(mse), "TE MSE": Value(_mse_elements)},
        criterion=lambda v, p: v["MSE"],
        combined="MSE",
        weights=False,
        floats=(torch.float32, F64),
        foreign=frozenset({"TE MSE"}),
    ),
    "epoch schedule": Kind(
        _epochs,
        {"MAE": Value(mae), "MSE": Value(mse)},
        criterion=lambda v, p: v["MAE"] + cosine_weight(p) * v["MSE"],
        combined="Combined Loss",
        formula=lambda e, p: e["MAE"] + cosine_weight(p) * e["MSE"],
        epochs=True,
    ),
}


# -- the data ----------------------------------------------------------------------------------

SIZES = {"uneven": (5, 2, 7, 3), "empty": (4, 0, 3, 2), "ones": (1, 4, 1, 1)}
WEIGHTS = ("none", "number", "tensor", "callable", "tensor0d", "zero", "int tensor")
OPS = (
    "none",
    "compute",
    "state_dict",
    "copy",
    "pickle",
    "merge",
    "reset",
    "to",
    "copy+merge",
    "pickle+state_dict",
    "refused",
    "sync",
)
MODES = ("eager", "no_grad", "inference")
DTYPES = (torch.float32, torch.float16, torch.bfloat16, F64, torch.int64, torch.int32, torch.uint8)
CALLS = ("forward", "update", "mixed")


@dataclass
class Batch:
    outputs: Tensor
    targets: Tensor
    weight: Any  # None, a number or a (B,) tensor

    @property
    def size(self) -> int:
        return int(self.targets.shape[0])

    def sample_weights(self, kind: Kind, weight_form: str) -> Tensor:
        """Each sample's weight, in float64, as the docs define it."""
        if weight_form == "callable":
            return positive_rows(self.outputs, self.targets)
        if self.weight is None:
            return torch.ones(self.size, dtype=F64)
        if isinstance(self.weight, Tensor) and self.weight.ndim == 1:
            return self.weight.to(F64)
        return torch.full((self.size,), float(self.weight) / max(self.size, 1), dtype=F64)


def make_batches(
    sizes: tuple[int, ...], dtype: torch.dtype, weight_form: str, seed: int
) -> list[Batch]:
    generator = torch.Generator().manual_seed(seed)
    result = []
    for index, size in enumerate(sizes):
        if dtype.is_floating_point:
            outputs = torch.randn(size, 3, generator=generator).to(dtype)
            targets = torch.randn(size, 3, generator=generator).to(dtype)
        else:
            outputs = torch.randint(-5, 6, (size, 3), generator=generator).to(dtype)
            targets = torch.randint(-5, 6, (size, 3), generator=generator).to(dtype)
        weight: Any = None
        if weight_form == "number":
            weight = 0.75 * size + index + 1
        elif weight_form == "tensor":
            weight = torch.rand(size, generator=generator) + 0.25
            if size > 1:
                weight[index % size] = 0.0  # a sample that weighs nothing
        elif weight_form == "tensor0d":
            weight = torch.tensor(0.5 * size + index, dtype=F64)
        elif weight_form == "zero":
            weight = 0 if index == 1 else 2 * size + 1  # a batch that weighs nothing
        elif weight_form == "int tensor":
            weight = torch.randint(0, 4, (size,), generator=generator)
        result.append(Batch(outputs, targets, weight))
    return result


# -- the reference -----------------------------------------------------------------------------


@dataclass
class Counted:
    """A batch the objective counts, with the schedule position it was evaluated at."""

    batch: Batch
    position: int


def raw(value: Value, batch: Batch) -> Tensor:
    result = value.fn(batch.outputs, batch.targets)
    if value.entry is not None:
        result = result[value.entry]
    return torch.as_tensor(result)


def per_sample(values: Tensor, size: int) -> Tensor:
    return values.to(F64).reshape(-1).expand(size) if values.numel() == 1 else values.to(F64)


def reference(kind: Kind, weight_form: str, counted: list[Counted]) -> dict[str, Tensor]:
    """Every value ``compute()`` should report, in float64 (or the exact integers)."""
    expected: dict[str, Tensor] = {}
    batches = [item.batch for item in counted if item.batch.size]
    for name, value in kind.values.items():
        if not batches:
            continue
        if value.kind == "cat":
            expected[name] = torch.cat([raw(value, batch).to(F64) for batch in batches])
            continue
        values = torch.cat([per_sample(raw(value, b), b.size) for b in batches])
        weights = torch.cat([b.sample_weights(kind, weight_form) for b in batches])
        kept = weights != 0
        if value.kind == "mean":
            expected[name] = (values[kept] * weights[kept]).sum() / weights[kept].sum()
        elif value.kind == "sum":
            expected[name] = (values[kept] * weights[kept]).sum()
        else:
            chosen = values[weights > 0]
            reduce = torch.amin if value.kind == "min" else torch.amax
            expected[name] = reduce(chosen) if chosen.numel() else torch.tensor(math.nan, dtype=F64)
    if kind.criterion is not None and kind.combined is not None and batches:
        criteria: list[Tensor] = []
        sample_weights: list[Tensor] = []
        for item in counted:
            if not item.batch.size:
                continue
            components = {n: raw(v, item.batch) for n, v in kind.values.items()}
            criteria.append(per_sample(kind.criterion(components, item.position), item.batch.size))
            sample_weights.append(item.batch.sample_weights(kind, weight_form))
        c, w = torch.cat(criteria), torch.cat(sample_weights)
        kept = w != 0
        expected[kind.combined] = (c[kept] * w[kept]).sum() / w[kept].sum()
    return expected


def forward_reference(kind: Kind, weight_form: str, batch: Batch, position: int) -> Tensor:
    assert kind.criterion is not None
    components = {n: raw(v, batch) for n, v in kind.values.items()}
    criterion = per_sample(kind.criterion(components, position), batch.size)
    weights = batch.sample_weights(kind, weight_form)
    kept = weights != 0
    return (criterion[kept] * weights[kept]).sum() / weights.sum()


def tolerance(dtype: torch.dtype) -> float:
    return {torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float32: 2e-6}.get(dtype, 1e-12)


def assert_close(found: Tensor, expected: Tensor, rtol: float, where: str) -> None:
    if not expected.dtype.is_floating_point and not found.dtype.is_floating_point:
        assert torch.equal(found, expected), f"{where}: {found} != {expected}"
        return
    torch.testing.assert_close(
        found.to(F64),
        expected.to(F64),
        rtol=rtol,
        atol=rtol * 1e-3,
        equal_nan=True,
        msg=lambda message: f"{where}: {message}",
    )


# -- one cell ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    kind: str
    weight: str = "none"
    sizes: str = "uneven"
    op: str = "none"
    dtype: torch.dtype = torch.float32
    mode: str = "eager"
    call: str = "forward"  # a loss's forward, update, or both in turn
    compiled: bool = False  # every call through torch.compile

    def __str__(self) -> str:
        dtype = str(self.dtype).removeprefix("torch.")
        return f"{self.kind}/{self.weight}/{self.sizes}/{self.op}/{dtype}/{self.mode}/{self.call}"


def applies(cell: Cell) -> bool:
    kind = KINDS[cell.kind]
    if cell.weight != "none" and not kind.weights:
        return False
    if cell.dtype.is_floating_point and cell.dtype not in kind.floats:
        return False
    if not cell.dtype.is_floating_point and not kind.integers:
        return False
    if cell.weight == "callable" and not cell.dtype.is_floating_point:
        return False
    if cell.call != "update" and kind.criterion is None:
        return False
    if "pickle" in cell.op and not kind.picklable:
        return False
    return kind.mergeable or "merge" not in cell.op


def grad_mode(mode: str) -> Any:
    if mode == "no_grad":
        return torch.no_grad()
    if mode == "inference":
        return torch.inference_mode()
    return torch.enable_grad()


class Runner:
    """Feeds a cell's batches, applies its operation half-way, checks every reported value."""

    def __init__(self, cell: Cell, seed: int = 0) -> None:
        self.cell = cell
        self.kind = KINDS[cell.kind]
        self.batches = make_batches(SIZES[cell.sizes], cell.dtype, cell.weight, seed)
        self.counted: list[Counted] = []
        self.position = 0  # the schedules' position of the objective being fed
        self.steps: dict[Any, Any] = {}

    def compiled(self, call: Any) -> Any:
        """``call`` compiled (once per objective and method)."""
        key = (id(getattr(call, "__self__", call)), getattr(call, "__name__", "call"))
        if key not in self.steps:

            def step(outputs: Tensor, targets: Tensor, **kwargs: Any) -> Any:
                return call(outputs, targets, **kwargs)

            self.steps[key] = (torch.compile(step), call)  # the call keeps its objective alive
        return self.steps[key][0]

    def build(self) -> Any:
        weight_fn = positive_rows if self.cell.weight == "callable" else None
        return self.kind.make(weight_fn)

    def feed(self, objective: Any, batch: Batch) -> None:
        cell, kind = self.cell, self.kind
        kwargs = {} if batch.weight is None else {"weight": batch.weight}
        outputs = batch.outputs
        training = cell.mode == "eager" and cell.call != "update"
        if training and outputs.dtype.is_floating_point:
            outputs = outputs.detach().requires_grad_(True)
        with grad_mode(cell.mode):
            turn = len(self.counted) % 2 == 0
            forward = cell.call == "forward" or (cell.call == "mixed" and turn)
            call = objective if forward else objective.update
            if cell.compiled:
                call = self.compiled(call)
            returned = call(outputs, batch.targets, **kwargs)
        if forward:
            expected = forward_reference(kind, cell.weight, batch, self.position)
            if batch.size == 0:
                expected = torch.tensor(math.nan, dtype=F64)
            assert isinstance(returned, Tensor), f"{cell}: forward returned {returned!r}"
            rtol = max(tolerance(cell.dtype), 2e-6 if kind.foreign else 0.0)
            assert_close(returned.detach(), expected, rtol, f"{cell}: forward")
            if training and batch.size and returned.requires_grad:
                returned.backward()  # type: ignore[no-untyped-call]
        self.counted.append(Counted(batch, self.position))
        if training and forward and batch.size and kind.scheduled:
            self.position += 1
        if kind.epochs:
            objective.advance_epoch()
            self.position += 1

    def check(self, objective: Any, where: str, formula: bool = True) -> None:
        kind, cell = self.kind, self.cell
        expected = reference(kind, cell.weight, self.counted)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", tt.errors.ComputedBeforeUpdatedWarning)
            computed = objective.compute()
        for name, value in expected.items():
            assert name in computed, f"{cell} {where}: {name!r} missing from {list(computed)}"
            rtol = tolerance(cell.dtype) if name == kind.combined else 2e-6
            if cell.dtype == F64 or not cell.dtype.is_floating_point:
                rtol = 1e-12
            if name in kind.foreign or (name == kind.combined and kind.foreign):
                rtol = max(rtol, 2e-6)  # another library's float32 value
            if kind.values.get(name, Value(mae)).kind == "cat":
                assert torch.equal(computed[name].to(F64), value), f"{cell} {where}: {name}"
                continue
            assert_close(computed[name], value, rtol, f"{cell} {where}: {name}")
        if formula and kind.formula is not None and any(c.batch.size for c in self.counted):
            epoch = {name: float(expected[name]) for name in kind.values}
            wanted = torch.tensor(kind.formula(epoch, self.position), dtype=F64)
            found = objective.formula_value()
            rtol = max(tolerance(cell.dtype), 1e-5) if cell.dtype != F64 else 1e-12
            rtol = max(rtol, 2e-6 if kind.foreign else 0.0)
            assert_close(found, wanted, rtol, f"{cell} {where}: formula_value")

    def run(self) -> None:
        objective = self.build()
        half = len(self.batches) // 2
        for batch in self.batches[:half]:
            self.feed(objective, batch)
        objective = self.operate(objective, half)
        if self.cell.op not in ("merge", "sync"):
            for batch in self.batches[half:]:
                self.feed(objective, batch)
        self.check(objective, "end")

    def operate(self, objective: Any, half: int) -> Any:
        op = self.cell.op
        if op == "compute":
            self.check(objective, "mid-epoch")
        elif op == "state_dict":
            fresh = self.build()
            fresh.load_state_dict(objective.state_dict())
            return fresh
        elif op == "copy":
            copied = objective.copy()
            self.check(copied, "copy")
            return copied
        elif op == "pickle":
            return pickle.loads(pickle.dumps(objective))
        elif op == "pickle+state_dict":
            fresh = self.build()
            fresh.load_state_dict(pickle.loads(pickle.dumps(objective)).state_dict())
            return fresh
        elif op == "refused":
            bad = next(batch for batch in self.batches if batch.size > 1)
            kwargs = {} if bad.weight is None else {"weight": bad.weight}
            outputs = torch.cat([bad.outputs, bad.outputs[:1]])  # one row too many
            call = objective.update if self.cell.call == "update" else objective
            before = self.position
            errors = (ValueError, TypeError, RuntimeError)
            with pytest.raises(errors) as caught, grad_mode(self.cell.mode):
                call(outputs, bad.targets, **kwargs)
            if not self.kind.own_code:
                assert type(caught.value).__module__.startswith("torchtally"), repr(caught.value)
            assert self.position == before
            self.check(objective, "refused")
        elif op == "sync":
            other = self.build()
            saved = self.position
            self.position = 0
            for batch in self.batches[half:]:
                self.feed(other, batch)
            self.position, other_position = saved, self.position
            simulate_sync([[objective], [other]])
            simulate_sync([[objective], [other]])  # idempotent
            self.position, saved = other_position, self.position
            self.check(other, "other rank")  # formula_value() at this rank's position
            self.position = saved
        elif op == "copy+merge":
            copied = objective.copy()
            objective.reset()
            objective.merge_state(copied)
        elif op == "reset":
            objective.reset()
            self.counted.clear()
            for batch in self.batches[:half]:
                self.feed(objective, batch)
        elif op == "to":
            objective.to("cpu")
        elif op == "merge":
            other = self.build()
            saved = self.position
            self.position = 0
            for batch in self.batches[half:]:
                self.feed(other, batch)
            self.position = saved
            objective.merge_state(other)
        return objective


# -- sync over two gloo processes --------------------------------------------------------------

SYNCED = (
    # (cell, which batches rank 1 takes: every other one, or none at all)
    (Cell("scheduled | torchmetrics", sizes="empty"), "interleaved"),
    (Cell("dict composed", weight="tensor", dtype=F64, call="mixed"), "interleaved"),
    (Cell("collection", weight="callable", sizes="ones", call="update"), "none"),
    (Cell("summed weights", weight="number", dtype=torch.bfloat16), "interleaved"),
    (Cell("metric sum", dtype=torch.int32, call="update"), "interleaved"),
)


def shard(cell: Cell, sharding: str, rank: int) -> list[int]:
    count = len(SIZES[cell.sizes])
    if sharding == "none":
        return list(range(count)) if rank == 0 else []
    return list(range(rank, count, 2))


def sync_cells(rank: int, world: int) -> list[dict[str, Any]]:
    records = []
    for cell, sharding in SYNCED:
        runner = Runner(cell)
        objective = runner.build()
        mine = shard(cell, sharding, rank)
        positions = []
        for index in mine[:-1] if rank == 0 else mine:
            positions.append(runner.position)
            runner.feed(objective, runner.batches[index])
        tt.sync_all(objective)
        tt.sync_all(objective)  # idempotent
        first = objective.compute()
        if rank == 0:  # a batch after the sync, counted once at the next one
            positions.append(runner.position)
            runner.feed(objective, runner.batches[mine[-1]])
        tt.sync_all(objective)
        formula = objective.formula_value() if KINDS[cell.kind].formula else None
        records.append(
            {
                "first": first,
                "second": objective.compute(),
                "positions": positions,
                "position": runner.position,
                "formula": formula,
            }
        )
    return records


@pytest.mark.timeout(300)
def test_cells_synced_over_two_processes_equal_the_reference(tmp_path: Path) -> None:
    results: list[Any] = _dist.launch(
        2, "test_composition_matrix:sync_cells", tmp_path, timeout=240.0
    )
    for number, (cell, sharding) in enumerate(SYNCED):
        runner = Runner(cell)
        counted: dict[str, list[Counted]] = {"first": [], "second": []}
        for rank in range(2):
            mine = shard(cell, sharding, rank)
            positions = results[rank][number]["positions"]
            for at, (index, position) in enumerate(zip(mine, positions, strict=True)):
                item = Counted(runner.batches[index], position)
                counted["second"].append(item)
                if not (rank == 0 and at == len(mine) - 1):
                    counted["first"].append(item)
        for rank in range(2):
            record = results[rank][number]
            for when in ("first", "second"):
                runner.counted = counted[when]
                runner.position = record["position"]
                reported = Reported(record[when], record["formula"])
                runner.check(reported, f"rank {rank} {when} sync", formula=when == "second")


@dataclass
class Reported:
    """What a process reported, checked as if it were the objective."""

    computed: dict[str, Tensor]
    formula: Tensor | None

    def compute(self) -> dict[str, Tensor]:
        return self.computed

    def formula_value(self) -> Tensor:
        assert self.formula is not None
        return self.formula


# -- the covering design -----------------------------------------------------------------------


def every_cell() -> list[Cell]:
    axes = itertools.product(KINDS, WEIGHTS, SIZES, OPS, DTYPES, MODES, CALLS)
    return [cell for cell in itertools.starmap(Cell, axes) if applies(cell)]


def covering(seed: int = 0) -> list[Cell]:
    """Cells covering every (kind, weight, op) triple and every pair of axis values that apply."""
    cells = every_cell()
    random.Random(seed).shuffle(cells)
    covered: set[tuple[Any, ...]] = set()
    chosen = []
    for cell in cells:
        values = (cell.kind, cell.weight, cell.sizes, cell.op, cell.dtype, cell.mode, cell.call)
        keys: set[tuple[Any, ...]] = {
            (i, values[i], j, values[j]) for i, j in itertools.combinations(range(7), 2)
        }
        keys.add(("weight", cell.kind, cell.weight, cell.op))
        keys.add(("dtype", cell.kind, cell.dtype, cell.op))
        keys.add(("mode", cell.kind, cell.mode, cell.call, cell.op))
        if not keys <= covered:
            covered |= keys
            chosen.append(cell)
    return chosen


@functools.cache
def chosen_cells() -> tuple[Cell, ...]:
    return tuple(covering())


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_cell_of_a_kind_equals_the_reference(kind: str) -> None:
    failures = []
    for cell in (cell for cell in chosen_cells() if cell.kind == kind):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", tt.errors.TorchTallyWarning)
                # batch means beside per-sample weights warn (tests/test_loss_weights.py); the
                # references here follow the documented rule: they count with the weights' sum
                warnings.simplefilter("ignore", tt.errors.ScalarWeightWarning)
                Runner(cell).run()
        except Exception as error:  # every failing cell is reported, not only the first
            failures.append(f"{cell}: {type(error).__name__}: {error}")
    assert not failures, "\n".join(failures)


# -- a few cells under torch.compile (slow: kept to two short ones) ------------------------------

COMPILED = (
    Cell("scheduled", weight="tensor", sizes="ones", op="state_dict", compiled=True),
    Cell("dict composed", weight="callable", sizes="empty", op="copy", call="mixed", compiled=True),
)


@pytest.mark.parametrize("cell", COMPILED, ids=str)
def test_a_compiled_cell_equals_the_reference(cell: Cell) -> None:
    torch._dynamo.reset()
    Runner(cell).run()

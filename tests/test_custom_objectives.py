"""Objectives written by users: subclasses of ``tt.Objective`` and ``tt.wrap`` of dict callables.

Every value is compared with a float64 reference computed here over the
concatenated batches.
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import pytest
import torch
from torch import Tensor

import torchtally as tt
from torchtally.errors import UnusedAggregationWarning

BATCHES = [
    (torch.tensor([1.0, 1.0, 0.0]), torch.tensor([1.0, 0.0, 0.0])),
    (torch.tensor([2.0]), torch.tensor([2.0])),
]


def hits(outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
    """A count of hits (a batch total) and the batch accuracy."""
    hit = outputs == targets
    return {"num_correct": hit.sum(), "accuracy": hit.double().mean()}


class MisspeltCounts(tt.Objective[Tensor, Tensor]):
    aggregation: ClassVar[Any] = {"num_corect": "sum"}  # misspelt: 'num_correct' is the mean

    def calculate(self, outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
        return hits(outputs, targets)


class Counts(tt.Objective[Tensor, Tensor]):
    aggregation: ClassVar[Any] = {"num_correct": "sum"}

    def calculate(self, outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
        return hits(outputs, targets)


def reference() -> dict[str, float]:
    outputs = torch.cat([o for o, _ in BATCHES]).double()
    targets = torch.cat([t for _, t in BATCHES]).double()
    hit = outputs == targets
    return {"num_correct": float(hit.sum()), "accuracy": float(hit.double().mean())}


@pytest.mark.parametrize(
    "make",
    [
        MisspeltCounts,
        lambda: tt.wrap(hits, aggregation={"num_corect": "sum"}),
        lambda: tt.Metric(lambda o, t: o, "Mean") | MisspeltCounts(),
    ],
    ids=["subclass", "wrap", "joined"],
)
def test_an_aggregation_naming_a_value_never_returned_warns_naming_it(make: Any) -> None:
    objective = make()
    for outputs, targets in BATCHES:
        objective.update(outputs, targets)
    with pytest.warns(UnusedAggregationWarning) as caught:
        computed = objective.compute()
    message = str(caught[0].message)
    assert "'num_corect'" in message and "'num_correct'" in message, message
    # the value itself is the default mean of the batch counts, (3 + 1) / 2 = 2 per sample...
    assert float(computed["num_correct"]) != reference()["num_correct"]
    with warnings.catch_warnings():  # ... and the warning is given once per objective
        warnings.simplefilter("error")
        objective.update(*BATCHES[0])
        objective.compute()


@pytest.mark.parametrize(
    "make",
    [Counts, lambda: tt.wrap(hits, aggregation={"num_correct": "sum"})],
    ids=["subclass", "wrap"],
)
def test_a_per_name_aggregation_of_returned_values_is_exact_and_quiet(make: Any) -> None:
    objective = make()
    for outputs, targets in BATCHES:
        objective.update(outputs, targets)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        computed = objective.compute()
    expected = reference()
    assert {name: float(value) for name, value in computed.items()} == pytest.approx(expected)


class Fragile(tt.Objective[Tensor, Tensor]):
    """Raises for a batch of 2 (a bug of the user's), after a value was computed."""

    aggregation: ClassVar[Any] = {"hits": "sum"}

    def calculate(self, outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
        values = {"hits": (outputs == targets).sum()}
        if len(outputs) == 2:
            raise ValueError("boom")
        return values


@pytest.mark.parametrize("joined", [False, True], ids=["alone", "joined"])
def test_a_calculate_that_raises_is_a_library_error_naming_the_objective(joined: bool) -> None:
    fragile = Fragile()
    objective: Any = fragile | tt.Metric(lambda o, t: o, "Mean") if joined else fragile
    objective.update(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 0.0, 3.0]))
    with pytest.raises(tt.errors.MetricCallError, match=r"Fragile.*calculate.*ValueError: boom"):
        objective.update(torch.ones(2), torch.ones(2))
    objective.update(torch.ones(1), torch.ones(1))
    assert objective.compute()["hits"] == 3  # the refused batch changed nothing


class NoSuperInit(tt.Objective[Tensor, Tensor]):
    def __init__(self, threshold: float) -> None:  # forgets super().__init__()
        self.threshold = threshold

    def calculate(self, outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
        return {"close": ((outputs - targets).abs() < self.threshold).double()}


def test_an_init_not_calling_super_is_a_clear_library_error() -> None:
    with pytest.raises(tt.errors.HookError, match=r"NoSuperInit.*super\(\).__init__\(\)"):
        NoSuperInit(0.5).update(torch.ones(2), torch.zeros(2))


class Declared(tt.Objective[Tensor, Tensor]):
    """Declares its names and says it learns none; a batch of 2 brings one more (a bug)."""

    aggregation: ClassVar[Any] = {"count": "sum"}

    def declared_names(self) -> tuple[str, ...]:
        return ("mean", "count")

    @property
    def learns_names(self) -> bool:
        return False

    def calculate(self, outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
        values = {"mean": outputs - targets, "count": torch.tensor(len(outputs))}
        if len(outputs) == 2:
            values["extra"] = outputs
        return values


def test_a_name_not_declared_by_an_objective_learning_none_is_refused_changing_nothing() -> None:
    declared = Declared()
    declared.update(torch.tensor([1.0, 2.0, 6.0]), torch.zeros(3))
    with pytest.raises(tt.errors.HookError, match=r"Declared.*'extra'.*learns_names"):
        declared.update(torch.tensor([5.0, 5.0]), torch.zeros(2))
    assert declared.names == ("mean", "count")
    declared.update(torch.tensor([3.0]), torch.zeros(1))
    computed = declared.compute()
    expected = torch.tensor([1.0, 2.0, 6.0, 3.0], dtype=torch.float64)
    assert float(computed["mean"]) == pytest.approx(float(expected.mean()))
    assert int(computed["count"]) == 4
    restored = Declared()  # its own checkpoint loads
    restored.load_state_dict(declared.state_dict())
    assert {n: float(v) for n, v in restored.compute().items()} == pytest.approx(
        {n: float(v) for n, v in computed.items()}
    )

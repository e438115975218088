"""An evaluation harness: several validation and test sets, each under its own prefix.

Every value is checked against a float64 reference computed here over the
concatenated data of its set.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor
from typing_extensions import override

import torchtally as tt
from torchtally.errors import InvalidArgumentError

# two evaluation sets, of uneven batches
SETS = {
    "val/": [
        (torch.tensor([1.0, 1.0, -1.0]), torch.tensor([1.0, -1.0, 1.0])),
        (torch.tensor([1.0]), torch.tensor([1.0])),
    ],
    "test/": [
        (torch.tensor([-1.0, 1.0]), torch.tensor([-1.0, 1.0])),
        (torch.tensor([1.0, 1.0, 1.0, -1.0]), torch.tensor([-1.0, 1.0, 1.0, 1.0])),
    ],
}


def confusion(outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
    predicted, actual = outputs > 0, targets > 0
    return {
        "TP": (predicted & actual).sum(),
        "FP": (predicted & ~actual).sum(),
        "FN": (~predicted & actual).sum(),
    }


def hits(outputs: Tensor, targets: Tensor) -> Tensor:
    return ((outputs > 0) == (targets > 0)).sum()


class F1(tt.MetricCollection):
    """F1 from counts summed over the set (docs/metrics.md)."""

    aggregation = "sum"

    @override
    def finalize(self, values: dict[str, Tensor]) -> dict[str, Tensor]:
        tp, fp, fn = (values[name].double() for name in ("TP", "FP", "FN"))
        return {"F1": 2 * tp / (2 * tp + fp + fn)}


class Counts(tt.MetricCollection):
    """Batch totals: every value of the class is summed."""

    aggregation = "sum"


def reference_f1(batches: list[tuple[Tensor, Tensor]]) -> float:
    outputs = torch.cat([o for o, _ in batches]) > 0
    targets = torch.cat([t for _, t in batches]) > 0
    tp = (outputs & targets).sum().double()
    fp = (outputs & ~targets).sum().double()
    fn = (~outputs & targets).sum().double()
    return float(2 * tp / (2 * tp + fp + fn))


def reference_hits(batches: list[tuple[Tensor, Tensor]]) -> int:
    return sum(int(((o > 0) == (t > 0)).sum()) for o, t in batches)


def run(objective: Any, batches: list[tuple[Tensor, Tensor]]) -> dict[str, float]:
    for outputs, targets in batches:
        objective.update(outputs, targets)
    return tt.compute_metrics(objective)


def test_a_renamed_subclass_keeps_its_finalize_for_every_set() -> None:
    f1 = F1(confusion)
    for prefix, batches in SETS.items():
        renamed = f1.renamed(prefix=prefix)
        assert type(renamed) is F1
        assert run(renamed, batches) == pytest.approx({f"{prefix}F1": reference_f1(batches)})
    assert run(f1, SETS["val/"]) == pytest.approx({"F1": reference_f1(SETS["val/"])})


def count(outputs: Tensor, targets: Tensor) -> int:
    return len(targets)


class Accuracy(tt.MetricCollection):
    """Hits over samples, both summed over the set."""

    @override
    def finalize(self, values: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"Accuracy": values["Hits"].double() / values["Count"]}


def test_from_dict_of_a_subclass_keeps_its_finalize_and_aggregation() -> None:
    entries = {
        "Hits": tt.Metric(hits, "Hits", aggregation="sum"),
        "Count": tt.Metric(count, "Count", aggregation="sum"),
    }
    for prefix, batches in SETS.items():
        accuracy = Accuracy.from_dict(entries, prefix=prefix)
        assert type(accuracy) is Accuracy
        expected = reference_hits(batches) / sum(len(t) for _, t in batches)
        assert run(accuracy, batches) == pytest.approx({f"{prefix}Accuracy": expected})
    # the class attribute's kind applies, and contradicts a plain callable's (as in Counts(...))
    with pytest.raises(InvalidArgumentError, match=r"Counts.*'sum'"):
        Counts(Hits=hits)
    with pytest.raises(InvalidArgumentError, match=r"Counts.*'sum'"):
        Counts.from_dict({"Hits": hits})
    summed = Counts.from_dict({"Hits": tt.Metric(hits, "Hits", aggregation="sum")})
    assert type(summed) is Counts
    assert run(summed, SETS["test/"]) == {"Hits": reference_hits(SETS["test/"])}


def test_a_subclass_with_its_own_init_is_renamed_as_a_copy_and_not_built_from_a_dict() -> None:
    class Thresholded(tt.MetricCollection):
        def __init__(self, threshold: float, **named_fns: Any) -> None:
            super().__init__(**named_fns)
            self.threshold = threshold

        @override
        def finalize(self, values: dict[str, Tensor]) -> dict[str, Tensor]:
            return {name: value * self.threshold for name, value in values.items()}

    scaled = Thresholded(2.0, Hits=hits)
    with pytest.raises(InvalidArgumentError, match=r"Thresholded.*__init__"):
        Thresholded.from_dict({"Hits": hits})
    scaled.update(torch.ones(3), torch.ones(3))  # state the renamed copy must not carry
    validation = scaled.renamed(prefix="val/")
    assert type(validation) is Thresholded and validation.threshold == 2.0
    validation.update(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0]))  # 1 hit of 2
    validation.update(torch.tensor([1.0]), torch.tensor([1.0]))  # 1 hit of 1
    # a batch's hit count is a scalar: it weighs its batch size, (1 x 2 + 1 x 1) / 3, times 2
    assert validation.compute() == {"val/Hits": pytest.approx(2.0)}
    assert scaled.compute() == {"Hits": pytest.approx(3 * 2.0)}  # its own batch, untouched


def absolute(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).abs()


def signed(outputs: Tensor, targets: Tensor) -> Tensor:
    return outputs - targets


def test_a_join_reporting_one_name_twice_is_refused_when_built() -> None:
    # the collection reports 'val/MAE', and so does the other metric: refused before an epoch
    validation = tt.MetricCollection(MAE=absolute, prefix="val/")
    for make in (
        lambda: validation | tt.Metric(signed, "val/MAE"),
        lambda: tt.Metric(signed, "val/MAE") | validation,
        lambda: tt.Loss(signed, "val/MAE") | validation,
        lambda: validation | (tt.Loss(signed, "val/MAE") + tt.Loss(absolute, "L1")),
    ):
        with pytest.raises(tt.errors.NameConflictError, match="'val/MAE'"):
            make()


def test_sets_under_other_prefixes_kept_apart_are_each_exact() -> None:
    base = tt.MetricCollection(MAE=tt.Metric(absolute, "MAE", higher_is_better=False))
    sets = {prefix: base.renamed(prefix=prefix) for prefix in SETS}
    for prefix, batches in SETS.items():
        for outputs, targets in batches:
            sets[prefix].update(outputs, targets)
    expected = {
        f"{prefix}MAE": float(torch.cat([absolute(o, t).double() for o, t in batches]).mean())
        for prefix, batches in SETS.items()
    }
    assert tt.compute_metrics(*sets.values()) == pytest.approx(expected)
    # one join cannot keep both (one value per bare name): said, naming the reported names
    with pytest.raises(tt.errors.NameConflictError, match="'val/MAE' and 'test/MAE'"):
        sets["val/"] | sets["test/"]

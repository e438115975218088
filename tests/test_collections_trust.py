"""Collections as a new user pushes them: subclasses' hooks, learnt names, what goes to loggers.

Every number is checked against a float64 (or exact integer) reference over
the concatenated data.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

import torchtally as tt
from torchtally.errors import InvalidArgumentError


def counts(outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
    """A confusion count per batch, as a dict-valued callable returns it (names learnt)."""
    predicted, actual = outputs > 0, targets > 0
    return {
        "TP": (predicted & actual).sum(),
        "FP": (predicted & ~actual).sum(),
        "FN": (~predicted & actual).sum(),
    }


class F1(tt.MetricCollection):  # type: ignore[type-arg]
    """F1 from summed counts: the collection subclass the docs' hooks invite."""

    aggregation = "sum"

    def finalize(self, values: dict[str, Tensor]) -> dict[str, Tensor]:
        tp, fp, fn = (values[name].double() for name in ("TP", "FP", "FN"))
        return {**values, "F1": 2 * tp / (2 * tp + fp + fn)}


def reference_counts(batches: list[tuple[Tensor, Tensor]]) -> dict[str, int]:
    outputs = torch.cat([o for o, _ in batches])
    targets = torch.cat([t for _, t in batches])
    return {name: int(value) for name, value in counts(outputs, targets).items()}


batch_sizes = st.lists(st.integers(1, 9), min_size=1, max_size=6)


@settings(max_examples=25, deadline=None)
@given(sizes=batch_sizes, seed=st.integers(0, 2**16))
def test_a_subclass_aggregation_applies_to_learnt_names(sizes: list[int], seed: int) -> None:
    # The class attribute was ignored for the names a dict-valued callable brings: each count
    # was averaged (times the batch size) and F1 read 0.6444 where the data give 0.6.
    generator = torch.Generator().manual_seed(seed)
    batches = [
        (torch.randn(n, generator=generator), torch.randn(n, generator=generator)) for n in sizes
    ]
    f1 = F1(counts)
    for outputs, targets in batches:
        f1.update(outputs, targets)
    computed = f1.compute()
    expected = reference_counts(batches)
    assert {name: computed[name].item() for name in expected} == expected
    assert computed["TP"].dtype == torch.int64
    tp, fp, fn = expected["TP"], expected["FP"], expected["FN"]
    truth = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
    assert computed["F1"].item() == pytest.approx(truth, rel=1e-15, nan_ok=True)


def test_a_subclass_aggregation_that_contradicts_an_entry_is_refused() -> None:
    # A keyword entry keeps its own aggregation; a class attribute saying otherwise for it
    # was ignored without a word (a mean reported where the class said 'sum').
    class Summed(tt.MetricCollection):  # type: ignore[type-arg]
        aggregation = "sum"

    with pytest.raises(InvalidArgumentError, match=r"'TP'.*'sum'.*'mean'"):
        Summed(TP=lambda o, t: (o > 0) & (t > 0))
    agreeing = Summed(TP=tt.Metric(lambda o, t: (o > 0) & (t > 0), "TP", aggregation="sum"))
    agreeing.update(torch.tensor([1.0, 1.0, -1.0]), torch.tensor([1.0, -1.0, 1.0]))
    assert agreeing.compute()["TP"].item() == 1


def test_a_subclass_finalize_keeps_the_prefix() -> None:
    # Overriding finalize() replaced the collection's own, which put the prefix on: F1(...,
    # prefix='val/') reported 'TP' and 'F1', while running() and reported_name said 'val/TP'.
    batches = [(torch.tensor([1.0, -1.0, 2.0]), torch.tensor([1.0, 1.0, -1.0]))]
    f1 = F1(counts, prefix="val/", postfix="@1")
    for outputs, targets in batches:
        f1.update(outputs, targets)
    computed = f1.compute()
    assert list(computed) == ["val/TP@1", "val/FP@1", "val/FN@1", "val/F1@1"]
    assert computed["val/F1@1"].item() == pytest.approx(0.5)
    joined = f1 | tt.Metric(lambda o, t: (o - t).abs(), "MAE")
    joined.update(*batches[0])
    assert list(joined.compute()) == [*computed, "MAE"]
    assert tt.compute_metrics(f1) == {name: value.item() for name, value in computed.items()}


def test_compute_metrics_logs_an_integer_beyond_float64_exactly() -> None:
    # An exact int64 sum of 2**53 + 1 was logged as float(2**53): a silent off-by-one.
    total = tt.Metric(lambda o, t: o, "Total", aggregation="sum")
    total.update(torch.tensor([2**53, 1]), torch.zeros(2))
    assert total.compute()["Total"].item() == 2**53 + 1
    logged = tt.compute_metrics(total)["Total"]
    assert logged == 2**53 + 1 and type(logged) is int
    small = tt.Metric(lambda o, t: o, "Small", aggregation="max")
    small.update(torch.tensor([3, -(2**53)]), torch.zeros(2))
    assert tt.compute_metrics(small) == {"Small": 3.0}
    assert type(tt.compute_metrics(small)["Small"]) is float  # exact as a float: stays one

"""Training loops as users write them: what they report must be exact or refused.

Each test runs a loop a user would write (several epochs, one process or a
gloo group of one, validation reusing its metrics) and checks the reported
values against float64 references computed here from the same data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

import _dist  # tests/_dist.py, importable through tests/conftest.py
import torchtally as tt
from torchtally.errors import SyncError, TrackerError

MODULE = "test_loops_trust"


def absolute(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).abs().flatten(1).mean(1)


def _validation_set() -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(10, 2, generator=generator), torch.randn(10, 2, generator=generator)


def _two_epochs_without_reset() -> tuple[tt.Loss, tt.MetricCollection, Tensor]:
    """A validation loop that forgot ``reset()``: 20 samples seen for a dataset of 10."""
    loss = tt.Loss(absolute, "MAE")
    metrics = tt.MetricCollection(
        Worst=tt.Metric(absolute, "Worst", aggregation="max"),
        Error=tt.Metric(absolute, "Error"),
    )
    outputs, targets = _validation_set()
    for _ in range(2):  # epochs; the reset() before each is missing
        for start in range(0, 10, 4):
            loss(outputs[start : start + 4], targets[start : start + 4])
            metrics.update(outputs[start : start + 4], targets[start : start + 4])
    return loss, metrics, absolute(outputs.double(), targets.double()).mean()


def _refused_as_under_torchrun() -> dict[str, Any]:
    loss, metrics, reference = _two_epochs_without_reset()
    before = tt.compute_metrics(loss, metrics)
    with pytest.raises(SyncError, match="'MAE' saw 20 samples in one process, but dataset_size=10"):
        tt.sync_all(loss, metrics, dataset_size=10)
    with pytest.raises(SyncError, match="'Error' saw 20 samples"):
        metrics.sync(dataset_size=10)
    assert tt.compute_metrics(loss, metrics) == before  # nothing changed
    # the same loop with its reset() passes, and reports the 10 samples
    loss.reset()
    metrics.reset()
    outputs, targets = _validation_set()
    loss(outputs, targets)
    metrics.update(outputs, targets)
    tt.sync_all(loss, metrics, dataset_size=10)
    return {"MAE": loss.compute()["MAE"].double(), "reference": reference}


def test_dataset_size_is_checked_in_one_process() -> None:
    """A forgotten ``reset()`` under ``dataset_size=N``: refused without torchrun as with it.

    With two processes the sync counts the samples and raises; in one process
    it returned at once, and the epoch value of two passes was reported as the
    value of one.
    """
    found = _refused_as_under_torchrun()
    torch.testing.assert_close(found["MAE"], found["reference"], rtol=1e-6, atol=0)


def _in_a_group_of_one(rank: int, world: int) -> dict[str, Any]:
    return _refused_as_under_torchrun()


def test_dataset_size_is_checked_in_a_gloo_group_of_one(tmp_path: Path) -> None:
    (found,) = _dist.launch(1, f"{MODULE}:_in_a_group_of_one", tmp_path)
    torch.testing.assert_close(found["MAE"], found["reference"], rtol=1e-6, atol=0)


# -- a tracker follows a name its objective reports -------------------------------------------


def accuracy(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs.argmax(1) == targets).float()


@pytest.mark.parametrize("given", [None, True])
def test_a_tracker_of_a_name_compute_does_not_report_is_refused_when_built(
    given: bool | None,
) -> None:
    """``MetricTracker(val_metrics, 'Accuracy')`` on a collection made with ``prefix='val/'``.

    ``compute()`` reports ``'val/Accuracy'``: the tracker was built, and the
    first ``update()``, after a whole epoch, raised.
    """
    metrics = tt.MetricCollection(
        Accuracy=tt.Metric(accuracy, "Accuracy", higher_is_better=True), prefix="val/"
    )
    with pytest.raises(TrackerError, match=r"it reports \['val/Accuracy'\], not 'Accuracy'"):
        tt.MetricTracker(metrics, "Accuracy", higher_is_better=given)
    tracker = tt.MetricTracker(metrics, "val/Accuracy", higher_is_better=given)
    metrics.update(torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([0, 1]))
    assert tracker.update() == 0.5
    assert tt.monitor_mode(metrics, "Accuracy") == "max"  # a direction, asked by its own name


def test_a_join_with_a_foreign_part_is_not_said_to_lack_that_part() -> None:
    """A collection joined with a torcheval metric (no direction) and a tracker of the latter.

    The advice was to ask for one of the names it reports, listing the
    collection's alone; the join does report the torcheval value, which needs a
    direction given (and then is tracked).
    """
    torcheval_metrics = pytest.importorskip("torcheval.metrics")
    from torchtally.contrib.torcheval import from_torcheval

    metrics = tt.MetricCollection(MAE=tt.Metric(absolute, "MAE", higher_is_better=False))
    joined = metrics | from_torcheval(torcheval_metrics.MeanSquaredError(), name="MSE")
    for ask in (lambda: tt.monitor_mode(joined, "MSE"), lambda: tt.MetricTracker(joined, "MSE")):
        advice = r"give the tool its mode yourself|pass higher_is_better= here"
        with pytest.raises(TrackerError, match=advice) as refused:
            ask()
        assert "it reports" not in str(refused.value)
    tracker = tt.MetricTracker(joined, "MSE", higher_is_better=False)
    joined.update(torch.full((3, 1), 2.0), torch.zeros(3, 1))
    assert tracker.update() == 4.0


class _PrecisionRecall(tt.MetricCollection):
    """A collection whose ``finalize`` (the documented hook) derives F1 from its entries."""

    def finalize(self, values: dict[str, Tensor]) -> dict[str, Tensor]:
        values = super().finalize(values)
        precision, recall = values["P"], values["R"]
        return {**values, "F1": 2 * precision * recall / (precision + recall)}


def test_a_tracker_follows_a_value_a_finalize_override_derives() -> None:
    """``MetricTracker(metrics, 'F1', higher_is_better=True)`` where ``finalize`` adds F1.

    The names of the entries are not all ``compute()`` reports once the hook is
    overridden: the tracker was refused when built ('never reports F1').
    """
    metrics = _PrecisionRecall(
        P=lambda o, t: (o * t).sum(1) / o.sum(1), R=lambda o, t: (o * t).sum(1) / t.sum(1)
    )
    tracker = tt.MetricTracker(metrics, "F1", higher_is_better=True)
    with pytest.raises(TrackerError, match=r"_PrecisionRecall.higher_is_better_for\(name\)"):
        tt.monitor_mode(metrics, "F1")  # no direction known: not "never reports"
    metrics.update(torch.ones(4, 3), torch.tensor([[1.0, 0.0, 0.0]]).repeat(4, 1))
    assert tracker.update() == pytest.approx(0.5)  # P = 1/3, R = 1

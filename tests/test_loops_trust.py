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
from torchtally.errors import SyncError

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

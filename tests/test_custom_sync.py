"""Participants written by users (``torchtally.sync.SyncParticipant``) on 2 real gloo processes.

A hand-written participant keeps per-class counts in a float64 vector and
sends them as metadata and tensors (``SyncState.meta``/``tensors``), which
torchtally does not interpret: when the ranks' vectors differ in length, its
own ``sync_merge`` raises. That error comes as a ``SyncError`` naming the
participant, on every rank, and nothing is installed (a native metric synced
in the same call keeps its local value). The parent compares every value with
float64 counts computed here from both ranks' labels.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor

import _dist  # tests/_dist.py, importable through tests/conftest.py
import torchtally as tt
from torchtally.sync import Gathered, Padding, SyncCounters, SyncState

MODULE = "test_custom_sync"
WORLD = 2
TIMEOUT = 60.0
pytestmark = pytest.mark.timeout(TIMEOUT + 30)

LABELS = {0: [0, 1, 1, 2], 1: [1]}
VALUES = {0: [1.0, 2.0], 1: [6.0]}


class ClassCounts(SyncCounters):
    """Counts per class; the number of classes is whatever the constructor was given."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.counts = torch.zeros(classes, dtype=torch.float64)
        self.synced: Tensor | None = None

    def update(self, labels: Tensor) -> None:
        self.counts += torch.bincount(labels, minlength=len(self.counts)).double()

    def compute(self) -> Tensor:
        return (self.counts if self.synced is None else self.synced).clone()

    def sync_identity(self) -> dict[str, Any]:
        return {"kind": "ClassCounts"}

    def sync_export(self, drop_last: bool) -> SyncState:
        return SyncState(meta={"classes": len(self.counts)}, tensors=[self.counts])

    def sync_merge(self, gathered: Gathered, padding: Padding | None) -> Tensor:
        assert gathered.states is not None
        return torch.stack([tensors[0] for _, tensors in gathered.states]).sum(0)

    def sync_install(self, prepared: Tensor) -> None:
        self.synced = prepared
        self._count_sync()


def attempt(rank: int, classes: int) -> dict[str, Any]:
    counts = ClassCounts(classes)
    counts.update(torch.tensor(LABELS[rank]))
    mean = tt.Metric(lambda o, t: o - t, "Mean")
    mean.update(torch.tensor(VALUES[rank]), torch.zeros(len(VALUES[rank])))
    try:
        tt.sync_all(mean, counts)
        error = None
    except Exception as caught:  # compared in the parent
        error = (type(caught).__name__, str(caught))
    return {"error": error, "counts": counts.compute(), "mean": mean.compute()["Mean"]}


class Peaks(ClassCounts):
    """Sends its float64 counts as the fixed block, which holds bytes (uint8) only."""

    def sync_identity(self) -> dict[str, Any]:
        return {"kind": "Peaks"}

    def sync_export(self, drop_last: bool) -> SyncState:
        return SyncState(fixed=self.counts.clone())

    def sync_merge(self, gathered: Gathered, padding: Padding | None) -> Tensor:
        assert gathered.fixed is not None
        return gathered.fixed.amax(0)


def misdeclared(rank: int) -> dict[str, Any]:
    peaks = Peaks(2)
    peaks.counts += torch.tensor([1.5, 300.0], dtype=torch.float64) * (rank + 1)
    worst = tt.Metric(lambda o, t: o - t, "Worst", aggregation="max")
    worst.update(torch.tensor(VALUES[rank]), torch.zeros(len(VALUES[rank])))
    try:
        tt.sync_all(worst, peaks)
        error = None
    except Exception as caught:  # compared in the parent
        error = (type(caught).__name__, str(caught))
    return {"error": error, "synced": peaks.synced, "worst": worst.compute()["Worst"]}


def scenario(rank: int, world: int) -> dict[str, Any]:
    return {
        "agreeing": attempt(rank, 3),
        "disagreeing": attempt(rank, 3 if rank == 0 else 2),
        "misdeclared": misdeclared(rank),
    }


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return _dist.launch(WORLD, f"{MODULE}:scenario", tmp_path_factory.mktemp("custom"), TIMEOUT)


def test_a_hand_written_participant_syncs_exactly(records: list[dict[str, Any]]) -> None:
    labels = torch.tensor(LABELS[0] + LABELS[1])
    values = torch.tensor(VALUES[0] + VALUES[1], dtype=torch.float64)
    for record in records:
        found = record["agreeing"]
        assert found["error"] is None
        assert torch.equal(found["counts"], torch.bincount(labels, minlength=3).double())
        assert float(found["mean"]) == pytest.approx(float(values.mean()), rel=1e-6)


def test_a_participant_whose_merge_raises_is_a_sync_error_naming_it_on_every_rank(
    records: list[dict[str, Any]],
) -> None:
    errors = [record["disagreeing"]["error"] for record in records]
    assert errors[0] == errors[1], errors  # the same message on every rank
    kind, message = errors[0]
    assert kind == "SyncError", errors[0]
    assert "ClassCounts" in message and "sync_merge" in message and "RuntimeError" in message
    assert "object at 0x" not in message, message  # no address, which differs between ranks
    for rank, record in enumerate(records):  # nothing installed: each rank's own values
        own = torch.bincount(torch.tensor(LABELS[rank]), minlength=3 if rank == 0 else 2)
        assert torch.equal(record["disagreeing"]["counts"], own.double())
        local = torch.tensor(VALUES[rank], dtype=torch.float64).mean()
        assert float(record["disagreeing"]["mean"]) == pytest.approx(float(local), rel=1e-6)


def test_a_participant_sending_a_fixed_block_of_another_dtype_is_refused_on_every_rank(
    records: list[dict[str, Any]],
) -> None:
    """Float64 values in the byte block came back cast to uint8: 600 as 88, 1.5 as 1."""
    errors = [record["misdeclared"]["error"] for record in records]
    assert errors[0] == errors[1], errors
    assert errors[0] is not None, records[0]["misdeclared"]  # it synced the cast bytes
    kind, message = errors[0]
    assert kind == "SyncError", errors[0]
    assert "Peaks" in message and "uint8" in message and "float64" in message, message
    for rank, record in enumerate(records):  # nothing installed
        assert record["misdeclared"]["synced"] is None
        assert float(record["misdeclared"]["worst"]) == max(VALUES[rank])

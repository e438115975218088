"""Synced values that must be exact, on real gloo processes of 2 ranks.

One spawned run (``scenario``) goes through every case; the parent checks each
rank's record against values computed here independently (Python integers,
float64 over the concatenated data).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor

import _dist  # tests/_dist.py, importable through tests/conftest.py
import torchtally as tt

MODULE = "test_sync_exact"
WORLD = 2
TIMEOUT = 90.0
pytestmark = pytest.mark.timeout(TIMEOUT + 30)


def identity(outputs: Tensor, targets: Tensor) -> Tensor:
    return outputs


# -- integer sums past 2**53 ------------------------------------------------------------------

BIG: list[list[list[int]]] = [  # BIG[case][rank]: one rank's integer values
    [[2**53], [1, 1, 1]],
    [[2**62], [-(2**61) - 7, 5]],
    [[-(2**53) - 1, -(2**40)], [2**60 + 3]],
    [[3, -5], []],
]


def integer_sums(rank: int, world: int) -> list[dict[str, Tensor]]:
    found = []
    for case in BIG:
        metric = tt.Metric(identity, "Total", aggregation="sum")
        mean = tt.Metric(identity, "Mean")
        if case[rank]:
            values = torch.tensor(case[rank], dtype=torch.int64)
            metric.update(values, values)
            mean.update(values, values)
        tt.sync_all(metric, mean)
        found.append({**metric.compute(), **mean.compute()})
    return found


def test_integer_sums_past_2_53_are_exact_across_ranks(records: list[dict[str, Any]]) -> None:
    for index, case in enumerate(BIG):
        values = [value for part in case for value in part]
        for record in records:
            found = record["integer_sums"][index]
            assert found["Total"].dtype == torch.int64
            assert int(found["Total"]) == sum(values), (case, found)
            mean = torch.tensor(float(sum(values)) / len(values), dtype=torch.float64)
            assert found["Mean"] == mean, (case, found)


# -- the run ----------------------------------------------------------------------------------

CASES: dict[str, Callable[[int, int], Any]] = {"integer_sums": integer_sums}


def scenario(rank: int, world: int) -> dict[str, Any]:
    """Every case in turn on one process group (spawning is the slow part)."""
    return {name: case(rank, world) for name, case in CASES.items()}


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("exact")
    return _dist.launch(WORLD, f"{MODULE}:scenario", out, TIMEOUT)

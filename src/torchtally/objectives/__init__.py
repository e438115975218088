"""Objectives: metrics defined from plain callables, aggregated exactly over batches.

An :class:`Objective` turns one batch of ``(outputs, targets)`` into named
values (:meth:`Objective.calculate`), accumulates them and reports the epoch
value (:meth:`Objective.compute`). :class:`Metric` and
:class:`MetricCollection` build objectives from callables;
:class:`AverageObjective` is the base for hand-written ones.

Batch weighting: the batch size ``B`` is the leading dimension of the first
tensor found in ``targets`` (then ``outputs``), or the length of a list of
per-sample records; ``weight=`` overrides it. A callable may return
per-sample values of shape ``(B,)`` or a scalar batch mean; both are
weighted, so the epoch value is exact over uneven batches.

Example:
    >>> import torch
    >>> import torchtally as tt
    >>> from torch.nn.functional import mse_loss
    >>> def mae(outputs, targets):
    ...     return (outputs - targets).abs().flatten(1).mean(1)
    >>> metrics = tt.Metric(mse_loss, 'MSE', higher_is_better=False) | tt.Metric(mae, 'MAE')
    >>> _ = metrics.update(torch.ones(1, 1), 3 * torch.ones(1, 1))
    >>> metrics.compute()
    {'MSE': tensor(4.), 'MAE': tensor(2.)}
"""

from __future__ import annotations

from torchtally.objectives._base import STATE_VERSION, AverageObjective, Objective
from torchtally.objectives._callables import (
    CallableObjective,
    Metric,
    MetricCollection,
    NamedCallable,
    merge_named_callables,
)

# The type variables the objectives and the losses are generic in, defined once (not API).
from torchtally.objectives._hooks import OutputT as OutputT
from torchtally.objectives._hooks import TargetT as TargetT
from torchtally.objectives._joined import Joined, is_objective_like, join
from torchtally.objectives._ledger import PENDING_BATCHES, PENDING_ELEMENTS
from torchtally.objectives._logged import compute_metrics

__all__ = [
    "PENDING_BATCHES",
    "PENDING_ELEMENTS",
    "STATE_VERSION",
    "AverageObjective",
    "CallableObjective",
    "Joined",
    "Metric",
    "MetricCollection",
    "NamedCallable",
    "Objective",
    "compute_metrics",
    "is_objective_like",
    "join",
    "merge_named_callables",
]

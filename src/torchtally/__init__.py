"""torchtally: typed metrics and losses for PyTorch training loops.

Define a metric once from a plain function, compose losses with ``+ - * / **``
and read the formula you built, get epoch values that are exact over uneven
batches, and sync everything across ``torch.distributed`` ranks in one call.

Example:
    >>> import torch
    >>> import torchtally as tt
    >>> mae = tt.Metric(lambda o, t: (o - t).abs().flatten(1).mean(1), 'MAE')
    >>> _ = mae.update(torch.zeros(2, 3), torch.ones(2, 3))
    >>> tt.compute_metrics(mae)
    {'MAE': 1.0}
"""

from torchtally import (
    aggregation,
    distributed,
    errors,
    protocols,
    schedules,
    sync,
    tracking,
)
from torchtally._version import __version__
from torchtally.losses import CompositionalLoss, DictLoss, Loss, LossBase
from torchtally.objectives import (
    AverageObjective,
    Metric,
    MetricCollection,
    Objective,
    compute_metrics,
)
from torchtally.sync import sync_all
from torchtally.tracking import MetricTracker, monitor_mode
from torchtally.wrap import wrap

__all__ = [
    "AverageObjective",
    "CompositionalLoss",
    "DictLoss",
    "Loss",
    "LossBase",
    "Metric",
    "MetricCollection",
    "MetricTracker",
    "Objective",
    "__version__",
    "aggregation",
    "compute_metrics",
    "distributed",
    "errors",
    "monitor_mode",
    "protocols",
    "schedules",
    "sync",
    "sync_all",
    "tracking",
    "wrap",
]

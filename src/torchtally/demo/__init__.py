"""A two-minute tour: train a small model with a composed loss and synced metrics.

Run ``python -m torchtally.demo`` (``--help`` lists the options). It trains a
small MLP on synthetic regression data with the composed loss
``[MSE] + 0.5 x [MAE]``, tracks the validation loss and validation metrics
(one of them a torchmetrics metric when torchmetrics is installed) and prints
one row per epoch, with the best epoch so far by validation loss (a
``tt.MetricTracker``). The progress bar shows the training loss over the last
batches (``loss.running(window)``).

``--processes N`` repeats the same training under N gloo processes on this
machine: each process sees an uneven shard of every batch, gradients are
summed across processes, and ``torchtally.sync_all`` makes every epoch value
the one over all shards. The demo then checks that those values equal the
single-process ones.

Example:
    >>> from torchtally.demo import main
    >>> main(['--epochs', '1', '--quiet'])
    0
"""

from __future__ import annotations

from torchtally.demo._cli import main, parse_args
from torchtally.demo._training import DemoConfig, EpochRow, train

__all__ = ["DemoConfig", "EpochRow", "main", "parse_args", "train"]

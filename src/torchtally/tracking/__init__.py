"""Training-loop companions: the best epoch of a value, and its direction for other tools.

Every torchtally objective knows which way each value it reports is better
(``higher_is_better_for(name)``), composed losses included: the combined value
of ``ce - accuracy`` is lower-is-better because the algebra says so. This
module puts that knowledge to work across epochs:

- :class:`MetricTracker` follows one value of one objective, epoch after
  epoch: the best value and its epoch, the history, early stopping with
  ``patience`` and ``min_delta``, a ``state_dict`` for checkpoints.
- :func:`monitor_mode` spells the direction the way Lightning's
  ``ModelCheckpoint``/``EarlyStopping``, keras, W&B and Optuna want it.

For a value over the last batches of an epoch (a progress bar), see
:meth:`Objective.running <torchtally.Objective.running>`; for recipes
(Lightning, W&B, Optuna, loggers), the "Training loop" page of the docs.

Example:
    >>> import torch
    >>> import torchtally as tt
    >>> error = tt.Metric(lambda o, t: (o - t).abs(), 'Error', higher_is_better=False)
    >>> tracker = tt.MetricTracker(error, 'Error')
    >>> for value in (3.0, 1.0, 2.0):  # one epoch each
    ...     _ = error.reset(), error.update(torch.tensor([value]), torch.zeros(1)), tracker.update()
    >>> tracker.best_epoch, tracker.best_value, tt.monitor_mode(error, 'Error')
    (1, 1.0, 'min')
"""

from torchtally.tracking._directions import monitor_mode
from torchtally.tracking._tracker import MetricTracker

__all__ = ["MetricTracker", "monitor_mode"]

# Documented, pickled and shown under the package's name.
for _public in (MetricTracker, monitor_mode):
    _public.__module__ = __name__

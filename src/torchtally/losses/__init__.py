"""Losses: objectives that are also training criteria, composed with arithmetic.

A loss is an objective (``update``, ``compute``, ``reset``, ``sync``,
``merge_state``, ``state_dict``, ``copy``, pickling all work as for metrics)
with a :meth:`LossBase.forward` that returns the differentiable value to
optimise. :class:`Loss` wraps one callable; ``+ - * / **``, unary ``-`` and ``+``,
numbers and schedules on either side and builtin ``sum`` compose losses into
a :class:`CompositionalLoss` whose :attr:`~LossBase.formula` reads like the
expression you wrote; ``CompositionalLoss(criterion, formula, **components)``
combines named components with a criterion of your own (``log``, ``clamp``,
``max``). :class:`DictLoss` wraps a callable that returns a dict of values
(the loss and the components it wants tracked).

``loss | objective`` keeps a loss: plain metrics are tracked by the loss
itself, any other objective (hand-written, ``tt.wrap()``, adapters) gives a
:class:`JoinedLoss`. :func:`as_loss` turns a ``tt.wrap()``ed callable or a
differentiable foreign loss (a torchmetrics adapter) into a component of the
algebra; :class:`LossOperand` gives such objects the arithmetic operators.

Each component is evaluated once per batch and accumulated like a metric;
``compute()`` reports the combined value first (the exact epoch mean of what
``forward`` returned), then every component.

Example:
    >>> import torch
    >>> import torchtally as tt
    >>> from torch.nn.functional import mse_loss
    >>> def mae(outputs, targets):
    ...     return (outputs - targets).abs().flatten(1).mean(1)
    >>> loss = tt.Loss(mse_loss, 'MSE')**2 + 0.5 * tt.Loss(mae, 'MAE')
    >>> loss.formula
    '[MSE]^2 + 0.5 x [MAE]'
    >>> loss(torch.ones(1, 1), 3 * torch.ones(1, 1))
    tensor(17.)
    >>> loss.compute()
    {'Combined Loss': tensor(17.), 'MSE': tensor(4.), 'MAE': tensor(2.)}
"""

from __future__ import annotations

import inspect

from torchtally.losses._algebra import (
    COMBINED_NAME,
    ComponentTable,
    check_direction,
    check_loss_name,
)
from torchtally.losses._base import LossBase
from torchtally.losses._compositional import CompositionalLoss
from torchtally.losses._criterion import Criterion, CriterionCall
from torchtally.losses._evaluation import MultiCall, Produced
from torchtally.losses._joined import JoinedLoss
from torchtally.losses._kinds import DictCall, DictLoss, Loss
from torchtally.losses._operands import BatchForward, LossOperand, as_loss

__all__ = [
    "COMBINED_NAME",
    "BatchForward",
    "ComponentTable",
    "CompositionalLoss",
    "Criterion",
    "CriterionCall",
    "DictCall",
    "DictLoss",
    "JoinedLoss",
    "Loss",
    "LossBase",
    "LossOperand",
    "MultiCall",
    "Produced",
    "as_loss",
    "check_direction",
    "check_loss_name",
]

# CompositionalLoss moved out of _base.py: it is pickled and shown under the package's name
# (its methods too, so that any example in them runs as this package's doctest). Pickles
# written before name torchtally.losses._base.CompositionalLoss, which _base still answers.
for _member in vars(CompositionalLoss).values():
    if inspect.isfunction(_member) and _member.__module__ == CompositionalLoss.__module__:
        _member.__module__ = __name__
CompositionalLoss.__module__ = __name__

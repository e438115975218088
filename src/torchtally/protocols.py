"""Structural protocols for objectives and losses.

They are ``runtime_checkable`` so that ``isinstance`` can tell whether an
object from any library can be used as a metric (``ObjectiveProtocol``) or as
a training criterion (``LossProtocol``). torchmetrics and torcheval metrics
satisfy ``ObjectiveProtocol`` without knowing about torchtally; a torchmetrics
metric, being an ``nn.Module`` with ``forward``, also satisfies
``LossProtocol``.

Example:
    >>> import torch
    >>> import torchtally as tt
    >>> from torchtally import protocols as p
    >>> mae = tt.Metric(lambda o, t: (o - t).abs(), 'MAE')
    >>> isinstance(mae, p.ObjectiveProtocol), isinstance(mae, p.LossProtocol)
    (True, False)
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from typing_extensions import TypeVar

__all__ = ["LossProtocol", "ObjectiveProtocol", "OutputT", "TargetT"]

OutputT = TypeVar("OutputT", contravariant=True, default=Any)
"""The type of the model outputs an objective takes (``tt.Objective[Tensor, Tensor]``: a tensor)."""
TargetT = TypeVar("TargetT", contravariant=True, default=Any)
"""The type of the targets an objective takes."""


@runtime_checkable
class ObjectiveProtocol(Protocol[OutputT, TargetT]):
    """Anything that accumulates a criterion over batches and reports it.

    Methods:
        update: add one batch of model outputs and targets.
        compute: the value (or values) over everything seen since ``reset``.
        reset: forget everything seen.

    Example:
        >>> import torch
        >>> import torchmetrics
        >>> from torchtally.protocols import ObjectiveProtocol
        >>> isinstance(torchmetrics.MeanSquaredError(), ObjectiveProtocol)
        True
    """

    def update(self, outputs: OutputT, targets: TargetT, /) -> Any:
        """Accumulate one batch."""

    def compute(self) -> Any:
        """Return the accumulated value(s)."""

    def reset(self) -> Any:
        """Clear the accumulated state."""


@runtime_checkable
class LossProtocol(ObjectiveProtocol[OutputT, TargetT], Protocol[OutputT, TargetT]):
    """An objective that can also be optimised: ``forward`` returns a differentiable value.

    Example:
        >>> import torchmetrics
        >>> import torchtally as tt
        >>> from torchtally.protocols import LossProtocol
        >>> isinstance(torchmetrics.MeanSquaredError(), LossProtocol)
        True
        >>> isinstance(tt.Loss(lambda o, t: (o - t).abs(), 'MAE'), LossProtocol)
        True
    """

    def forward(self, outputs: OutputT, targets: TargetT, /) -> Any:
        """Return the differentiable criterion for one batch and accumulate it."""

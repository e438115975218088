"""Criteria whose batch mean is not weighed by the batch size, told apart once, when built.

``nn.CrossEntropyLoss(weight=w)`` and ``nn.NLLLoss(weight=w)`` divide a batch
by its targets' summed class weights; an objective weighs each batch by its
size unless ``weight=`` says otherwise, so its epoch value would not be the
criterion on the whole data. Every objective built from a callable (metrics,
collections, losses, a composition's components, ``tt.wrap``) asks
:func:`warn_if_self_weighted` when no ``weight=`` is given. Nothing here
imports another torchtally module but :mod:`torchtally.errors` and
:mod:`torchtally._origin`.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

from torchtally._origin import user_stacklevel
from torchtally.errors import CriterionWeightWarning

__all__ = ["warn_if_self_weighted"]


def warn_if_self_weighted(fn: Any, label: str) -> None:
    """Warn if ``fn`` is a ``torch.nn`` criterion averaging a batch with its class weights.

    ``nn.CrossEntropyLoss`` and ``nn.NLLLoss`` with ``weight=`` and
    ``reduction='mean'`` divide a batch of class indices by its targets'
    summed class weights (targets equal to its ``ignore_index`` left out),
    not by the batch size the batch is weighed by; ``weight=`` makes the
    epoch value exact. The other criteria with a
    ``weight`` (``BCELoss``, ``BCEWithLogitsLoss``, ``MultiLabelSoftMarginLoss``,
    ``MultiMarginLoss``) rescale each element and still divide by the batch:
    they need no ``weight=`` and do not warn. The warning points at the first
    caller outside torchtally.
    """
    if not (
        isinstance(fn, (torch.nn.CrossEntropyLoss, torch.nn.NLLLoss))
        and isinstance(fn.weight, Tensor)
        and fn.reduction == "mean"
    ):
        return
    ignored = fn.ignore_index  # left out of the criterion's denominator too
    warnings.warn(
        f"{label}: {type(fn).__name__} averages each batch with its class weights, but "
        f"batches are weighed by their size, so the epoch value is not the criterion on the "
        f"whole data; pass weight=lambda o, t: w[t[t != {ignored}]].sum() with w its class "
        f"weights (targets equal to ignore_index={ignored} weigh nothing; see 'Losses and "
        f"formulas' in the docs)",
        CriterionWeightWarning,
        stacklevel=user_stacklevel(),
    )

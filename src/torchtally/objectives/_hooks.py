"""The hooks a subclass of ``Objective`` overrides, with their defaults.

:class:`Hooks` says *what* an objective computes and how it reports it:
:meth:`~Hooks.calculate` (required), :attr:`~Hooks.aggregation` or
:meth:`~Hooks.accumulator_for` (how a value aggregates),
:meth:`~Hooks.finalize` (post-process epoch values), :meth:`~Hooks.reported_name`
(the names it reports), :meth:`~Hooks.declared_names` (names known before any
data) and :meth:`~Hooks.higher_is_better_for` (directions). When each is
called is :class:`~torchtally.objectives.Objective`'s business; what
torchtally refuses of what they return is :mod:`torchtally.objectives._holder`'s.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar, Generic

from torch import Tensor
from typing_extensions import TypeVar

from torchtally.aggregation import Accumulator, accumulator_class
from torchtally.objectives._holder import guard_calculate, refuse_renamed_hooks

__all__ = ["Aggregation", "Hooks", "OutputT", "TargetT"]

OutputT = TypeVar("OutputT", default=Any)
TargetT = TypeVar("TargetT", default=Any)

Aggregation = str | type[Accumulator]
"""One aggregation: a kind (``'mean'``, ``'max'``, ...) or an accumulator class."""


class Hooks(ABC, Generic[OutputT, TargetT]):
    """The public hooks of :class:`~torchtally.objectives.Objective` (a mixin of it).

    Subclasses implement :meth:`calculate` and override the others where the
    defaults (a batch-weighted mean of every value, reported as calculated,
    with no direction) do not fit. Overriding a hook of DRYTorch or
    torchtally 0.1 that torchtally does not call is refused when the class
    is defined (:class:`~torchtally.errors.HookError`).
    """

    aggregation: ClassVar[Aggregation | Mapping[str, Aggregation]] = "mean"
    """How values aggregate: a kind (``'mean'``, ``'sum'``, ``'min'``, ``'max'``, ``'cat'``), an
    :class:`~torchtally.aggregation.Accumulator` subclass, or a mapping from names to those
    (unlisted names use the mean). Override :meth:`accumulator_for` for anything else."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        refuse_renamed_hooks(cls)
        guard_calculate(cls)

    @abstractmethod
    def calculate(self, outputs: OutputT, targets: TargetT) -> dict[str, Tensor]:
        """The named values of one batch: per-sample ``(B,)`` vectors or scalar batch means."""

    def accumulator_for(self, name: str) -> type[Accumulator]:
        """The accumulator class of the value called ``name`` (default: from :attr:`aggregation`).

        Example:
            >>> import torchtally as tt
            >>> tt.Metric(lambda o, t: o, 'Peak', aggregation='max').accumulator_for('Peak')
            <class 'torchtally.aggregation.Max'>
        """
        aggregation = self.aggregation
        if isinstance(aggregation, Mapping):
            aggregation = aggregation.get(name, "mean")
        return accumulator_class(aggregation, self._label)

    def _aggregated_names(self) -> tuple[str, ...]:
        """The names a per-name aggregation lists (checked against the names returned)."""
        aggregation = self.aggregation
        return tuple(aggregation) if isinstance(aggregation, Mapping) else ()

    def finalize(self, values: dict[str, Tensor]) -> dict[str, Tensor]:
        """Turn the aggregated values into the reported ones (default: unchanged).

        Called by :meth:`~torchtally.objectives.Objective.compute` with every
        name's aggregated value (after a sync, the value over all processes);
        override it to derive metrics from concatenated values, rename or drop
        entries.

        Example:
            >>> import torch
            >>> import torchtally as tt
            >>> class MedianError(tt.Objective[torch.Tensor, torch.Tensor]):
            ...     aggregation = 'cat'
            ...     def calculate(self, outputs, targets):
            ...         return {'errors': (outputs - targets).abs()}
            ...     def finalize(self, values):
            ...         return {'Median Error': values['errors'].median()}
            >>> median = MedianError()
            >>> _ = median.update(torch.tensor([1.0, 5.0, 2.0]), torch.zeros(3))
            >>> median.compute()
            {'Median Error': tensor(2.)}
        """
        return values

    def declared_names(self) -> tuple[str, ...]:
        """Names known before any data, so that a process without data can still sync."""
        return ()

    @property
    def learns_names(self) -> bool:
        """Whether batches may bring names besides :meth:`declared_names` (custom ``calculate``)."""
        return True

    def higher_is_better_for(self, name: str) -> bool | None:
        """Whether a higher value of ``name`` is better (``None``: no direction).

        Example:
            >>> import torchtally as tt
            >>> accuracy = tt.Metric(lambda o, t: o == t, 'Accuracy', higher_is_better=True)
            >>> accuracy.higher_is_better_for('Accuracy')
            True
        """
        return None

    def reported_name(self, name: str) -> str:
        """The name under which ``compute()`` and ``running()`` report the value ``name``.

        A hook: override it beside :meth:`finalize` when the reported names
        differ from the calculated ones (a collection's ``prefix``), so the
        running values carry the names of the epoch values. Default: ``name``.

        Example:
            >>> import torchtally as tt
            >>> metrics = tt.MetricCollection(MAE=lambda o, t: (o - t).abs(), prefix='val/')
            >>> metrics.reported_name('MAE')
            'val/MAE'
        """
        return name

    def _label(self) -> str:
        """How error messages name this objective: its class and the names it declares."""
        names = list(self.declared_names())
        text = f"{type(self).__name__}{names}" if names else type(self).__name__
        return text if len(text) <= 160 else text[:157] + "..."

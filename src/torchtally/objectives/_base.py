"""``Objective``: the public lifecycle of every torchtally metric and loss.

An objective turns one batch of ``(outputs, targets)`` into named values
(:meth:`Objective.calculate`), accumulates them exactly over batches and
reports epoch values (:meth:`Objective.compute`). Its state lives in a
:class:`~torchtally.objectives._ledger.Ledger`; this module only decides
*when* things happen: reading the batch size and weight, choosing the hot
path or the checked path, invalidating cached values. Merging and syncing
(:class:`~torchtally.objectives._syncing.SyncHooks`), state dicts, devices
and copies (:class:`~torchtally.objectives._persistence.Persistence`) and the
public hooks that subclasses override, with their defaults
(:class:`~torchtally.objectives._hooks.Hooks`), are mixins of their own.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Final

import torch
from torch import Tensor

from torchtally._conventions import (
    Weight,
    WeightFn,
    as_value_tensor,
    callable_error,
    is_objective_like,
    size_and_weight,
    values_dict,
)
from torchtally._lazy import lazy
from torchtally.errors import (
    ComputedBeforeUpdatedWarning,
    HookError,
    InvalidArgumentError,
    SyncError,
)
from torchtally.objectives._holder import (
    checked_accumulator,
    checked_declared_names,
    finalized,
    warn_unused_aggregations,
)
from torchtally.objectives._hooks import Aggregation, Hooks, OutputT, TargetT
from torchtally.objectives._ledger import Ledger
from torchtally.objectives._persistence import STATE_VERSION, Persistence
from torchtally.objectives._syncing import SyncHooks

__all__ = ["STATE_VERSION", "AverageObjective", "Objective"]


class Composites:
    """What ``a | b`` builds, filled in by the module that defines it.

    ``Joined`` subclasses :class:`Objective`, so it lives in the module above
    this one; that module sets :attr:`joined` when imported (and
    ``torchtally.objectives`` imports it), so that no module imports upward.

    Attributes:
        joined: ``Joined``, called with the two operands in order.
    """

    joined: Callable[..., Objective[Any, Any]]


composites: Final = Composites()


class Objective(SyncHooks, Persistence, Hooks[OutputT, TargetT]):
    """Base class: named values per batch, accumulated into exact epoch values.

    Subclasses implement :meth:`calculate`, returning a dict of per-sample
    ``(B,)`` vectors or scalar batch means by name. Every value aggregates as
    :attr:`aggregation` says (a batch-weighted mean by default). Objectives are
    plain Python objects, not ``nn.Module``: no module-call overhead, and they
    provide ``state_dict``, ``load_state_dict``, ``to`` and ``copy`` themselves.

    Args:
        weight: a callable of ``(outputs, targets)`` returning each batch's
            weight (see :meth:`update`), used when ``update`` gets none.

    Example:
        >>> import torch
        >>> import torchtally as tt
        >>> class WorstError(tt.Objective[torch.Tensor, torch.Tensor]):
        ...     aggregation = 'max'
        ...     def calculate(self, outputs, targets):
        ...         return {'worst': (outputs - targets).abs()}
        >>> worst = WorstError()
        >>> _ = worst.update(torch.tensor([1.0, 5.0]), torch.zeros(2))
        >>> worst.compute()
        {'worst': tensor(5.)}
    """

    _checked_aggregations = False  # UnusedAggregationWarning is given once per objective

    def __init__(self, *, weight: WeightFn | None = None) -> None:
        if weight is not None and not callable(weight):
            raise InvalidArgumentError(
                f"{type(self).__name__}: weight= at construction must be a callable of "
                f"(outputs, targets), found {type(weight).__name__}; pass a fixed weight to "
                f"update(..., weight=...) instead"
            )
        self._weight_fn = weight
        SyncHooks.__init__(self)

    if not TYPE_CHECKING:  # for the checker, a misspelt attribute stays an error

        def __getattr__(self, name: str) -> Any:
            # Only reached when an attribute is missing: nothing on the hot path.
            if name == "_weight_fn":  # set by Objective.__init__ alone
                raise HookError(
                    f"{type(self).__name__}: its __init__ must call super().__init__() (which "
                    f"sets up the objective: weight=, its place in a sync), before the "
                    f"objective is used"
                )
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @lazy
    def _ledger(self) -> Ledger:
        # Made on first use: a composition built term by term makes none for its intermediates.
        label = self._label()
        ledger = Ledger(label, functools.partial(checked_accumulator, label, self.accumulator_for))
        ledger.add_names(checked_declared_names(label, self.declared_names()))
        ledger.closed = not self.learns_names
        return ledger

    # -- description --------------------------------------------------------------------------

    @property
    def names(self) -> tuple[str, ...]:
        """Names of the values this objective accumulates (known so far)."""
        return self._ledger.names

    def __repr__(self) -> str:
        return self._label()

    # -- the hot path -------------------------------------------------------------------------

    def update(
        self, outputs: OutputT, targets: TargetT, *, weight: Any = None
    ) -> dict[str, Tensor]:
        """Accumulate one batch and return its values (as :meth:`calculate` gave them).

        The batch size ``B`` is read from the targets (see
        :func:`~torchtally._conventions.batch_size`). ``weight`` overrides it:
        a number or 0-d tensor is the batch's total weight (a token count: a
        scalar batch mean is weighted by it, a per-sample vector's samples
        share it evenly); a ``(B,)`` tensor holds per-sample weights (0
        excludes a sample). No host synchronisation happens here, the values
        are copied (never referenced), and a refused batch changes nothing;
        an empty batch (``B == 0``) changes nothing either.

        Example:
            >>> import torch
            >>> import torchtally as tt
            >>> loss = tt.Metric(lambda o, t: (o - t).abs().mean(), 'Token MAE')
            >>> _ = loss.update(torch.ones(2, 5), torch.zeros(2, 5), weight=10)  # 10 tokens
            >>> _ = loss.update(torch.zeros(1, 5), torch.zeros(1, 5), weight=30)
            >>> loss.compute()   # (1 x 10 + 0 x 30) / 40
            {'Token MAE': tensor(0.2500)}
        """
        values = self.calculate(outputs, targets)
        size, weight = self._batch(outputs, targets, weight)
        return self._accumulate(values, size, weight, False)

    def __or__(self, other: object) -> Objective[Any, Any]:
        """This objective and ``other`` (any objective) as one (see ``objectives.Joined``).

        Example:
            >>> import torch
            >>> import torchtally as tt
            >>> class Peak(tt.Objective[torch.Tensor, torch.Tensor]):
            ...     aggregation = 'max'
            ...     def calculate(self, outputs, targets):
            ...         return {'Peak': outputs}
            >>> both = Peak() | tt.Metric(lambda o, t: o, 'Mean')
            >>> _ = both.update(torch.tensor([1.0, 3.0]), torch.zeros(2))
            >>> both.compute()
            {'Peak': tensor(3.), 'Mean': tensor(2.)}
        """
        if not is_objective_like(other) or getattr(other, "is_loss", False) is True:
            return NotImplemented
        return composites.joined(self, other)

    def __ror__(self, other: object) -> Objective[Any, Any]:
        if not is_objective_like(other):
            return NotImplemented
        return composites.joined(other, self)

    def __call__(
        self, outputs: OutputT, targets: TargetT, *, weight: Any = None
    ) -> dict[str, Tensor] | Tensor:
        """Same as :meth:`update` (a loss returns its differentiable value, as ``forward``)."""
        return self.update(outputs, targets, weight=weight)

    def _batch(self, outputs: Any, targets: Any, weight: Any) -> tuple[int, Weight]:
        """The batch size and weight (:func:`size_and_weight`), or the constructor's weight."""
        if weight is None and self._weight_fn is None and type(targets) is Tensor and targets.ndim:
            return targets.shape[0], None  # the common case, inline: this runs every step
        weight = self._given_weight(outputs, targets, weight)
        return size_and_weight(targets, outputs, weight, self._ledger.label)

    def _given_weight(self, outputs: Any, targets: Any, weight: Any) -> Any:
        """``weight`` as given, or the constructor's weight callable's when it is ``None``."""
        if weight is None and self._weight_fn is not None:
            try:
                return self._weight_fn(outputs, targets)
            except Exception as error:
                raise callable_error(self._ledger.label, "weight", error) from error
        return weight

    def _accumulate(
        self, values: Any, size: int, weight: Weight, ordered: bool
    ) -> dict[str, Tensor]:
        """Queue one batch's values (see :meth:`update`); returns them.

        ``ordered`` promises that ``values`` holds this objective's names in the
        order of the batch before (objectives built from callables know it).
        """
        ledger = self._ledger
        if type(values) is not dict:
            values = values_dict(values, ledger.label)
        if not size:  # an empty batch changes nothing, not even a synced view
            label = ledger.label
            return {name: as_value_tensor(value, label, name) for name, value in values.items()}
        if torch.compiler.is_compiling():
            ledger.add_now(values, size, weight)
            return values  # type: ignore[no-any-return]
        if weight is None and ledger.queue(values, size, ordered):
            return values  # type: ignore[no-any-return]
        return ledger.queue_checked(values, size, weight)

    # -- epoch values -------------------------------------------------------------------------

    def compute(self) -> dict[str, Tensor]:
        """The epoch values as fresh 0-d tensors, cached until the next update, reset or sync.

        After :meth:`sync` (and before the next update) the values are over all
        processes; otherwise over this process's updates. Before any update it
        warns (:class:`~torchtally.errors.ComputedBeforeUpdatedWarning`) and
        returns NaN for every known name. The returned tensors share no
        memory with the state or with each other call's.
        """
        ledger = self._ledger
        if self._elsewhere is not None and ledger.synced is not None:
            raise SyncError(self._elsewhere)
        if ledger.computed is None:
            if ledger.synced is None and not ledger.updated:
                warnings.warn(
                    ComputedBeforeUpdatedWarning(
                        f"{ledger.label}: compute() called before any update; values are NaN"
                    ),
                    stacklevel=2,
                )
            elif not self._checked_aggregations:
                self._checked_aggregations = warn_unused_aggregations(
                    ledger.label, self._aggregated_names(), ledger.names
                )
            ledger.computed = self._finalized(ledger.label, ledger.reduced())
        return {name: value.clone() for name, value in ledger.computed.items()}

    def _finalized(self, label: str, values: dict[str, Tensor]) -> dict[str, Tensor]:
        """The reported values: :meth:`finalize`'s, checked (a collection then adds its affixes)."""
        return finalized(label, self.finalize, values)

    def running(self, window: int = 10) -> dict[str, Tensor]:
        """The mean of each mean-aggregated value over the last ``window`` batches.

        For a progress bar: the batches are weighted as for the epoch value
        (by their size, or their ``weight=``), the result stays on the
        values' device, in float64, and the epoch state is not touched. Batches count
        from the first call on (and each :meth:`reset`), with those still
        queued then: call it once before the loop. The largest window asked
        for is kept, and any window reads it; non-mean values are left out.
        The window counts each name's own batches (a value some batches lack:
        its last ``window`` batches that had it).

        Raises:
            InvalidArgumentError: ``window`` is not an int >= 1.
            CompileError: batches were updated inside ``torch.compile`` since the
                last reset (they are folded in the graph, not remembered); a
                ``RuntimeError``.

        Example:
            >>> import torch
            >>> import torchtally as tt
            >>> loss = tt.Loss(lambda o, t: (o - t).abs().mean(1), 'MAE')
            >>> _ = loss.running(window=2)   # remember batches from here on
            >>> for value in (1.0, 2.0, 3.0):
            ...     _ = loss(torch.full((2, 1), value), torch.zeros(2, 1))
            >>> loss.running(window=2)
            {'MAE': tensor(2.5000, dtype=torch.float64)}
            >>> loss.compute()
            {'MAE': tensor(2.)}
        """
        values = self._ledger.running(window)
        return {self.reported_name(name): value for name, value in values.items()}

    def reset(self) -> None:
        """Clear the state (the names stay known) and drop any synced view."""
        self._ledger.reset()
        self._count_reset()


class AverageObjective(Objective[OutputT, TargetT]):
    """An objective whose every value is a batch-weighted mean; implement :meth:`calculate`.

    Example:
        >>> import torch
        >>> import torchtally as tt
        >>> class Errors(tt.AverageObjective[torch.Tensor, torch.Tensor]):
        ...     def calculate(self, outputs, targets):
        ...         diff = outputs - targets
        ...         return {'MSE': diff.pow(2).flatten(1).mean(1),
        ...                 'MAE': diff.abs().flatten(1).mean(1)}
        >>> errors = Errors()
        >>> _ = errors.update(torch.ones(1, 1), 3 * torch.ones(1, 1))
        >>> errors.compute()
        {'MSE': tensor(4.), 'MAE': tensor(2.)}
    """

    aggregation: ClassVar[Aggregation | Mapping[str, Aggregation]] = "mean"

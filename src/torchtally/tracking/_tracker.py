"""The tracker: one value of an objective followed across epochs."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from torchtally._state_keys import check_state_keys
from torchtally.errors import InvalidArgumentError, StateDictError, TrackerError
from torchtally.tracking._directions import direction, known_direction, refuse_unreported

__all__ = ["MetricTracker"]

_STATE_VERSION = 1


class MetricTracker:
    """Follows one value of an objective across epochs: its best, its epoch, early stopping.

    Call :meth:`update` once per epoch, after the epoch's last ``update`` of
    the objective (and after ``tt.sync_all`` in a distributed run, so that
    every process records the same value and stops at the same epoch): it
    reads ``objective.compute()[name]``. Epochs are counted by the calls to
    :meth:`update`, from ``first_epoch``. For several values, use one
    tracker per name (``{name: MetricTracker(metrics, name) for name in ...}``).

    A value improves on the best so far when it is better by more than
    ``min_delta`` (the convention of Lightning's and keras' early stopping:
    exactly ``min_delta`` better is no improvement); a NaN never improves and
    counts towards ``patience`` like keras (Lightning's ``check_finite``
    stops at the first NaN or infinity: test ``math.isfinite(tracker.update())``).
    The best value is the latest improvement: with ``min_delta=0`` the best
    of the history (the earliest of equal ones), with ``min_delta > 0``
    possibly not (after 1.0 and 0.95 with ``min_delta=0.1`` it is 1.0).

    Args:
        objective: the objective whose value is followed (any torchtally
            objective, or anything whose ``compute()`` returns a dict).
        name: the value's name, as ``compute()`` reports it.
        higher_is_better: the direction; by default the objective's
            (``objective.higher_is_better_for(name)``). Given, it must agree
            with the objective's when the objective knows one.
        patience: epochs in a row without improvement after which
            :meth:`should_stop` says to stop (``None``: never asked).
        min_delta: how much better than the best a value must be to count
            as an improvement (``>= 0``).
        first_epoch: the number of the first epoch (0, like Lightning's
            ``current_epoch``; 1 for a table counting from 1).

    Raises:
        TrackerError: no direction is given and the objective knows none, or
            the given one contradicts the objective's; or the objective knows
            the names its ``compute()`` reports and ``name`` is not one of them.
        InvalidArgumentError: an argument has the wrong type or range.

    Example:
        >>> import torch
        >>> import torchtally as tt
        >>> loss = tt.Loss(torch.nn.functional.mse_loss, 'MSE')
        >>> tracker = tt.MetricTracker(loss, 'MSE', first_epoch=1)
        >>> for error in (3.0, 1.0, 2.0):
        ...     loss.reset()
        ...     _ = loss(torch.full((4, 1), error), torch.zeros(4, 1))
        ...     _ = tracker.update()
        >>> tracker.history, tracker.best_value, tracker.best_epoch, tracker.is_improving()
        ([9.0, 1.0, 4.0], 1.0, 2, False)
    """

    def __init__(
        self,
        objective: Any,
        name: str,
        *,
        higher_is_better: bool | None = None,
        patience: int | None = None,
        min_delta: float = 0.0,
        first_epoch: int = 0,
    ) -> None:
        if not callable(getattr(objective, "compute", None)):
            raise InvalidArgumentError(
                f"MetricTracker: expected an objective (with compute()), "
                f"found {type(objective).__name__}"
            )
        if not isinstance(name, str) or not name:
            raise InvalidArgumentError(
                f"MetricTracker: name must be a non-empty string, found {name!r}"
            )
        if higher_is_better is not None and not isinstance(higher_is_better, bool):
            raise InvalidArgumentError(
                f"MetricTracker: higher_is_better must be True, False or None, "
                f"found {higher_is_better!r}"
            )
        if patience is not None and (not _is_int(patience) or patience < 1):
            raise InvalidArgumentError(
                f"MetricTracker: patience must be a whole number >= 1 or None, found {patience!r}"
            )
        if not (_is_real(min_delta) and 0 <= min_delta < math.inf):
            raise InvalidArgumentError(
                f"MetricTracker: min_delta must be a finite number >= 0, found {min_delta!r}"
            )
        if not _is_int(first_epoch):
            raise InvalidArgumentError(
                f"MetricTracker: first_epoch must be a whole number, found {first_epoch!r}"
            )
        # now, not at the first update() an epoch later (a collection's prefix left out)
        refuse_unreported(objective, name, f"MetricTracker({name!r})")
        if higher_is_better is None:
            here = "pass higher_is_better= here"
            higher_is_better = direction(objective, name, f"MetricTracker({name!r})", here)
        else:
            known = known_direction(objective, name)
            if known is not None and known != higher_is_better:
                raise TrackerError(
                    f"MetricTracker({name!r}): higher_is_better={higher_is_better} contradicts "
                    f"{objective!r}, for which a {'higher' if known else 'lower'} {name!r} is "
                    f"better"
                )
        self.objective = objective
        self.name = name
        self.higher_is_better: bool = higher_is_better
        self.patience = patience
        self.min_delta = float(min_delta)
        self.first_epoch = int(first_epoch)
        self._history: list[float] = []
        self._best: int | None = None  # the index of the best value in the history
        self._wait = 0
        self._improved = False

    # -- recording ----------------------------------------------------------------------------

    def update(self) -> float:
        """Record the objective's current value of :attr:`name` as the next epoch's; return it.

        Raises:
            TrackerError: ``compute()`` does not report :attr:`name`, or
                reports something other than one number for it.
        """
        self._record(self._read())
        return self._history[-1]

    def _read(self) -> float:
        values = self.objective.compute()
        label = f"MetricTracker({self.name!r})"
        if not isinstance(values, Mapping) or self.name not in values:
            found = list(values) if isinstance(values, Mapping) else type(values).__name__
            raise TrackerError(
                f"{label}: {self.objective!r}.compute() does not report {self.name!r} "
                f"(found {found})"
            )
        value = values[self.name]
        if isinstance(value, Tensor) and value.numel() == 1:
            if value.is_complex() or value.dtype == torch.bool:  # no silent 1.0 or dropped part
                raise TrackerError(
                    f"{label}: expected one real number for {self.name!r}, found a tensor of "
                    f"{value.dtype}"
                )
            return float(value.detach().reshape(()).item())
        if not isinstance(value, bool) and isinstance(value, numbers.Real):  # numpy's too
            try:
                return float(value)
            except OverflowError:  # an int beyond float's range
                pass
        if isinstance(value, (bool, numbers.Complex)):
            raise TrackerError(
                f"{label}: expected one real number a float holds for {self.name!r}, found "
                f"{type(value).__name__} {value!r:.40}"
            )
        shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise TrackerError(
            f"{label}: expected one number for {self.name!r}, found {shape}; follow a single "
            f"number (compute_metrics names the entries of a vector name_0, name_1, ...)"
        )

    def _record(self, value: float) -> None:
        self._history.append(value)
        best = None if self._best is None else self._history[self._best]
        if math.isnan(value):
            improved = False
        elif best is None:
            improved = True
        elif self.higher_is_better:
            improved = value - self.min_delta > best
        else:
            improved = value + self.min_delta < best
        self._improved = improved
        if improved:
            self._best, self._wait = len(self._history) - 1, 0
        else:
            self._wait += 1

    # -- reading ------------------------------------------------------------------------------

    @property
    def history(self) -> list[float]:
        """Every recorded value, oldest first (a copy)."""
        return list(self._history)

    @property
    def epochs(self) -> list[int]:
        """The epoch numbers of :attr:`history`."""
        return list(range(self.first_epoch, self.first_epoch + len(self._history)))

    @property
    def best_value(self) -> float:
        """The best value so far.

        Raises:
            TrackerError: no value was recorded yet (or every one was NaN).
        """
        return self._history[self._best_index()]

    @property
    def best_epoch(self) -> int:
        """The epoch of :attr:`best_value` (counted from ``first_epoch``).

        Raises:
            TrackerError: no value was recorded yet (or every one was NaN).
        """
        return self.first_epoch + self._best_index()

    def _best_index(self) -> int:
        if self._best is None:
            why = "before any update()" if not self._history else "every value so far is NaN"
            raise TrackerError(f"MetricTracker({self.name!r}): no best value {why}")
        return self._best

    @property
    def epochs_without_improvement(self) -> int:
        """Epochs recorded since the last improvement (0 right after one)."""
        return self._wait

    def is_improving(self) -> bool:
        """Whether the latest value was an improvement (the first non-NaN one always is).

        That is, better than :attr:`best_value` before it by more than ``min_delta``.

        Raises:
            TrackerError: no value was recorded yet.
        """
        if not self._history:
            raise TrackerError(f"MetricTracker({self.name!r}): is_improving() before any update()")
        return self._improved

    def should_stop(self) -> bool:
        """Whether ``patience`` epochs in a row passed without improvement.

        Raises:
            TrackerError: the tracker was made without ``patience``.
        """
        if self.patience is None:
            raise TrackerError(
                f"MetricTracker({self.name!r}): should_stop() needs patience= at construction"
            )
        return self._wait >= self.patience

    # -- persistence --------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The recorded values, for a checkpoint (plain Python: loads with ``weights_only=True``).

        The objective's own state is not included: save ``objective.state_dict()`` next to it.
        """
        return {
            "version": _STATE_VERSION,
            "name": self.name,
            "higher_is_better": self.higher_is_better,
            "history": list(self._history),
        }

    def state_keys(self) -> frozenset[str]:
        """The top-level keys :meth:`state_dict` writes; :meth:`load_state_dict` refuses others."""
        return frozenset(("version", "name", "higher_is_better", "history"))

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Replace the recorded values with those of :meth:`state_dict`.

        The best value, its epoch and the count towards ``patience`` are
        replayed from the history with this tracker's ``min_delta``, so a
        resumed run stops at the same epoch as an uninterrupted one. The
        state holds no settings: ``patience``, ``min_delta`` and
        ``first_epoch`` are this tracker's (a resumed run built with others
        applies them to the whole history).

        Raises:
            StateDictError: the state is malformed, holds a key
                :meth:`state_keys` does not name, or follows another value or
                direction. Nothing changes then.
        """
        label = f"MetricTracker({self.name!r})"
        check_state_keys(state_dict, self.state_keys(), _STATE_VERSION, label)
        for key, mine in (("name", self.name), ("higher_is_better", self.higher_is_better)):
            if state_dict.get(key) != mine:
                raise StateDictError(
                    f"{label}: the state has {key}={state_dict.get(key)!r}, this tracker {mine!r}"
                )
        values = _floats(state_dict.get("history"))  # all converted before anything changes
        if values is None:
            raise StateDictError(f"{label}: expected a list of numbers under 'history'")
        self._history, self._best, self._wait, self._improved = [], None, 0, False
        for value in values:
            self._record(value)

    def __repr__(self) -> str:
        arrow = "↑" if self.higher_is_better else "↓"
        best = (
            f"best {self._history[self._best]:.6g} at epoch {self.first_epoch + self._best}"
            if self._best is not None
            else "no best yet"
        )
        return f"MetricTracker({self.name!r} {arrow}, {len(self._history)} epochs, {best})"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _floats(values: Any) -> list[float] | None:
    """``values`` as floats, if it is a list (or tuple) of numbers a float holds; else ``None``."""
    if not isinstance(values, (list, tuple)) or not all(map(_is_real, values)):
        return None
    try:
        return [float(value) for value in values]
    except OverflowError:  # an int beyond float's range
        return None

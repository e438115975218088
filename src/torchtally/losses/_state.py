"""The schedules' positions of a loss, and what a loss adds to its saved and synced state.

A formula with schedules (:mod:`torchtally.schedules`) keeps two positions,
``forward`` calls (steps) and ``advance_epoch`` calls (epochs), as ``(1,)``
int64 tensors. :class:`LossState` moves the step position after each
``forward``, saves both under ``'schedule_position'`` in ``state_dict``
(nothing is added without schedules), checks them before
``load_state_dict`` changes anything, and adds the formula and the
callables of dict-valued calls to what ranks must agree on before a sync.
:class:`~torchtally.losses.JoinedLoss` saves and restores its loss's
positions through the same methods.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import torch
from torch import Tensor
from typing_extensions import override

from torchtally._lazy import lazy
from torchtally.errors import StateDictError
from torchtally.losses._definition import LossDefinition
from torchtally.sync import callable_identity

__all__ = ["LossState"]

OutputT = TypeVar("OutputT")
TargetT = TypeVar("TargetT")


class LossState(LossDefinition[OutputT, TargetT]):
    """The schedules' positions and a loss's part of ``state_dict`` and sync identity.

    A layer of :class:`~torchtally.losses.LossBase` (never used on its own).
    """

    @lazy
    def _position(self) -> dict[str, Tensor]:
        """The schedules' positions: ``forward`` calls and ``advance_epoch`` calls (1-d tensors)."""
        return {unit: torch.zeros(1, dtype=torch.int64) for unit in ("step", "epoch")}

    def _step(self) -> None:
        """Move the schedules counted in steps one step on (after each ``forward``)."""
        if self._program.factors:
            self._position["step"].add_(1)

    @override
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(self._schedule_state())
        return state

    @override
    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        positions = self._checked_schedule_state(state_dict, self._label())
        super().load_state_dict(state_dict)
        self._install_schedule_state(positions)

    def _schedule_state(self) -> dict[str, Any]:
        """The schedules' positions as state-dict entries (none without schedules)."""
        if not self._program.factors:
            return {}
        return {
            "schedule_position": {
                unit: position.clone() for unit, position in self._position.items()
            }
        }

    def _checked_schedule_state(self, state_dict: Any, label: str) -> dict[str, Tensor]:
        """The positions stored in ``state_dict``, checked; nothing changes here.

        Raises:
            StateDictError: a position is missing or not a ``(1,)`` int64 tensor ``>= 0``.
        """
        positions: dict[str, Tensor] = {}
        if not self._program.factors:
            return positions
        stored = state_dict.get("schedule_position") if isinstance(state_dict, Mapping) else None
        for unit in ("step", "epoch"):
            value = stored.get(unit) if isinstance(stored, Mapping) else None
            if (
                not isinstance(value, Tensor)
                or value.shape != (1,)
                or value.dtype != torch.int64
                or int(value) < 0
            ):
                raise StateDictError(
                    f"{label}: expected the schedules' {unit} position (a (1,) int64 tensor "
                    f">= 0) under 'schedule_position', found {value!r:.60}"
                )
            positions[unit] = value.clone()
        return positions

    def _install_schedule_state(self, positions: Mapping[str, Tensor]) -> None:
        for unit, value in positions.items():
            self._position[unit].copy_(value)

    @override
    def sync_identity(self) -> dict[str, Any]:
        # Same components under another formula would sync into different combined values.
        identity = super().sync_identity()
        identity["formula"] = self._formula
        identity["produced"] = [
            [callable_identity(fn) for fn in call.callables()] for call in self._multi_calls
        ]
        return identity

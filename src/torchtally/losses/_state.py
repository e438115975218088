"""The schedules' positions of a loss, and what a loss adds to its saved and synced state.

A formula with schedules (:mod:`torchtally.schedules`) keeps two positions,
``forward`` calls (steps) and ``advance_epoch`` calls (epochs), as ``(1,)``
int64 tensors. :class:`LossState` moves the step position after each
``forward``; ``state_dict`` saves the rendered formula under ``'formula'``
and both positions under ``'schedule_position'`` (nothing without
schedules); ``load_state_dict`` checks both before anything changes. It
adds the formula and the callables of dict-valued calls to what ranks must
agree on before a sync. :class:`~torchtally.losses.JoinedLoss` saves and
restores its loss's formula and positions through the same methods.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from typing_extensions import override

from torchtally._inference import outside_inference_mode
from torchtally._lazy import lazy
from torchtally.aggregation import normal_state
from torchtally.errors import StateDictError
from torchtally.losses._definition import LossDefinition
from torchtally.objectives import STATE_VERSION, OutputT, TargetT
from torchtally.sync import callable_identity

__all__ = ["LossState"]


class LossState(LossDefinition[OutputT, TargetT]):
    """The schedules' positions and a loss's part of ``state_dict`` and sync identity.

    A layer of :class:`~torchtally.losses.LossBase` (never used on its own).
    """

    @lazy
    @outside_inference_mode  # moved in place at every training forward, also after validation
    def _position(self) -> dict[str, Tensor]:
        """The schedules' positions: ``forward`` calls and ``advance_epoch`` calls (1-d tensors)."""
        return {unit: torch.zeros(1, dtype=torch.int64) for unit in ("step", "epoch")}

    def _step(self, size: Any) -> None:
        """Move the schedules counted in steps one step on (after each training ``forward``).

        A forward with gradients disabled (``torch.no_grad()``, ``torch.inference_mode()``:
        a validation loop) is no training step, and leaves the position where it is; nor
        is a batch of ``size`` 0, which changes nothing.
        """
        if self._program.factors and torch.is_grad_enabled() and size != 0:
            self._advance("step")

    def _advance(self, unit: str) -> None:
        """Move the position counted in ``unit`` one on, in place."""
        self._writable_position()[unit].add_(1)

    def _writable_position(self) -> dict[str, Tensor]:
        """The positions, as tensors that may be changed in place here."""
        position = self._position
        if (
            not torch.compiler.is_compiling()
            and position["step"].is_inference()
            and not torch.is_inference_mode_enabled()
        ):
            # made inside a graph compiled under torch.inference_mode(): inference tensors,
            # which nothing outside inference mode may change in place
            self._position = position = normal_state(position)
        return position

    @override
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(self._loss_state())
        return state

    @override
    def state_keys(self) -> frozenset[str]:
        return super().state_keys() | self._loss_keys()

    @override
    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Replace the state with one from :meth:`state_dict` of a loss with the same formula.

        A loss's state holds its formula as rendered (:attr:`formula`, the
        one ``merge_state`` and ``sync_all`` compare: constants, schedules
        with their parameters and units, a criterion's formula text) under
        ``'formula'``, and its schedules' positions. A state saved under
        another formula is refused: its combined value is the mean of another
        criterion. A state of this format (version 2) without ``'formula'``
        is refused too: it was saved by an objective that is not a loss, or
        by a development version of torchtally before losses saved their
        formula; nothing tells which formula its combined value belongs to.
        A loss's state (its formula, its positions) is refused by an objective
        that is not a loss, whose state carries neither.

        Raises:
            StateDictError: the state holds another formula or none, a
                missing or malformed schedule position, or anything
                :meth:`Objective.load_state_dict
                <torchtally.objectives.Objective.load_state_dict>` refuses.
                Nothing changes then.
        """
        positions = self._checked_loss_state(state_dict, self._label())
        super().load_state_dict(state_dict)
        self._install_schedule_state(positions)

    def _loss_state(self) -> dict[str, Any]:
        """The formula and the schedules' positions as state-dict entries."""
        return {"formula": self._formula, **self._schedule_state()}

    def _loss_keys(self) -> frozenset[str]:
        """The keys of :meth:`_loss_state`, read from it (``state_keys`` runs once per load)."""
        return frozenset(self._loss_state())

    def _schedule_state(self) -> dict[str, Any]:
        """The schedules' positions as state-dict entries (none without schedules)."""
        if not self._program.factors:
            return {}
        return {
            "schedule_position": {
                unit: position.clone() for unit, position in self._position.items()
            }
        }

    def _checked_loss_state(self, state_dict: Any, label: str) -> dict[str, Tensor]:
        """The positions stored in ``state_dict`` after checking its formula; nothing changes.

        A state that is not a dict of this format version is left to
        ``Objective.load_state_dict``, which names what it found.

        Raises:
            StateDictError: another formula or none, or a malformed position.
        """
        if not isinstance(state_dict, Mapping) or state_dict.get("version") != STATE_VERSION:
            return {}
        stored = state_dict.get("formula")
        if not isinstance(stored, str):
            raise StateDictError(
                f"{label}: the state holds no 'formula' entry (found {stored!r:.60}): it was "
                f"saved by an objective that is not a loss, or by a development version of "
                f"torchtally before losses saved their formula; nothing was loaded"
            )
        if stored != self._formula:
            raise StateDictError(
                f"{label}: the state was saved from a loss with another formula, "
                f"{stored!r:.300}; this loss's formula is {self._formula!r:.300}, and its "
                f"combined value would report the other formula's; nothing was loaded"
            )
        return self._checked_schedule_state(state_dict, label)

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
        kept = self._writable_position()
        for unit, value in positions.items():
            kept[unit].copy_(value)

    @override
    def sync_identity(self) -> dict[str, Any]:
        # Same components under another formula would sync into different combined values.
        identity = super().sync_identity()
        identity["formula"] = self._formula
        identity["produced"] = [
            [callable_identity(fn) for fn in call.callables()] for call in self._multi_calls
        ]
        return identity

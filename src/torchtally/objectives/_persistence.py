"""An objective's state outside the process: state dicts, devices, copies and pickles.

:class:`Persistence` is the part of :class:`~torchtally.objectives.Objective`
that saves and restores its accumulated state (:meth:`Persistence.state_dict`,
checked in full by :meth:`Persistence.load_state_dict` before anything
changes), moves it between devices and copies it.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from typing_extensions import Self

from torchtally._conventions import usable_device
from torchtally._inference import KeptOutsideInferenceMode
from torchtally._state_keys import check_state_keys
from torchtally.errors import StateDictError
from torchtally.objectives._holder import LedgerHolder
from torchtally.objectives._state_io import Rebuilt
from torchtally.sync import SyncCounters, checked_saved_on

__all__ = ["STATE_VERSION", "Persistence"]

STATE_VERSION = 2
"""The format of ``state_dict()`` (version 1 was written by torchtally 0.1)."""


class Persistence(SyncCounters, LedgerHolder, KeptOutsideInferenceMode):
    """Saving, loading, moving and copying (a mixin of :class:`~torchtally.objectives.Objective`).

    It works on the objective's ledger, and reads its declared names and
    whether it learns names from the data.
    """

    def state_dict(self) -> dict[str, Any]:
        """This process's accumulated state (pending batches included), ``torch.save``-able.

        Plain metadata and tensors only: it loads with ``torch.load(weights_only=True)``.
        It records the rank it was saved on: a sync refuses updates loaded from
        another rank's state (see :meth:`load_state_dict`).

        Example:
            >>> import torch
            >>> import torchtally as tt
            >>> metric = tt.Metric(lambda o, t: (o - t).abs(), 'MAE')
            >>> _ = metric.update(torch.ones(2), torch.zeros(2))
            >>> restored = tt.Metric(metric.fn, 'MAE')
            >>> restored.load_state_dict(metric.state_dict())
            >>> restored.compute()
            {'MAE': tensor(1.)}
        """
        meta, tensors = self._ledger.export()
        meta["saved_on"] = self._saved_on()
        return {"version": STATE_VERSION, "state": meta, "tensors": tensors}

    def state_keys(self) -> frozenset[str]:
        """The top-level keys :meth:`state_dict` writes; :meth:`load_state_dict` refuses others.

        A subclass whose ``state_dict`` adds keys adds them here
        (``super().state_keys() | {'epoch'}``).

        Example:
            >>> import torchtally as tt
            >>> sorted(tt.Metric(lambda o, t: (o - t).abs(), 'MAE').state_keys())
            ['state', 'tensors', 'version']
        """
        return frozenset(("version", "state", "tensors"))

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Replace the state with one from :meth:`state_dict`, after checking all of it.

        The state must be this objective's own: a key :meth:`state_keys` does
        not name (another objective's parts, the user's metadata) is refused;
        keep other data beside it (``{'metrics': m.state_dict(), 'epoch': 3}``).

        Raises:
            StateDictError: the state holds a key this objective does not write,
                is malformed, misses a name this objective
                declares, holds one it does not, aggregates a value differently
                or holds tensors of the wrong shape, dtype or count. Nothing
                changes then.
        """
        label = self._ledger.label
        check_state_keys(state_dict, self.state_keys(), STATE_VERSION, label)
        rebuilt = self._imported(state_dict)
        origin = checked_saved_on(state_dict["state"].get("saved_on"), label)
        stored = {name for _, names in rebuilt.values() for name in names}
        declared = set(self.declared_names())
        missing = sorted(declared - stored)
        unexpected = [] if self.learns_names else sorted(stored - declared)
        if missing or unexpected:
            raise StateDictError(
                f"{label}: the state must hold every name this objective reports "
                f"{sorted(declared)}; missing {missing}, unexpected {unexpected}"
            )
        self._ledger.install(rebuilt)
        self._note_loaded(origin, holds_updates=self._ledger.updated)

    def _imported(self, state_dict: Mapping[str, Any]) -> Rebuilt:
        """The accumulators of ``state_dict``'s own state, checked; nothing changes here.

        Raises:
            StateDictError: the tensors are not a list, or the state does not rebuild.
        """
        tensors = state_dict.get("tensors")
        if not isinstance(tensors, (list, tuple)):
            raise StateDictError(
                f"{self._ledger.label}: expected a list of tensors under 'tensors'"
            )
        return self._ledger.imported(state_dict.get("state"), list(tensors))

    def to(self, device: torch.device | str) -> Self:
        """Move the accumulated state to ``device`` (in place) and return ``self``.

        Not needed to follow a model: the state is created on the device of the
        first values it receives. Needed to move a state that already exists.

        Raises:
            InvalidArgumentError: ``device`` is not a device this process can keep
                the state on (a dtype: the state keeps its dtypes; ``'meta'``, whose
                tensors hold no values; a misspelt device; CUDA in a build without
                it). Nothing moves then.
        """
        self._ledger.to(usable_device(device, self._ledger.label))
        return self

    def copy(self) -> Self:
        """An independent deep copy, state included."""
        return copy.deepcopy(self)

    def __getstate__(self) -> dict[str, Any]:
        # Pickles and deep copies carry folded state, never a queue of batches.
        self._ledger.prepare_pickle()
        return self.__dict__.copy()

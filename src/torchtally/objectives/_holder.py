"""What an objective's mixins read from it: its ledger, and the hooks that tell its names.

:class:`~torchtally.objectives._syncing.SyncHooks` and
:class:`~torchtally.objectives._persistence.Persistence` are written apart
from :class:`~torchtally.objectives.Objective` and work on what it provides;
this declares that once, for the type checker.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torchtally.aggregation import Accumulator
from torchtally.objectives._ledger import Ledger

__all__ = ["LedgerHolder"]


class LedgerHolder:
    """An object whose state lives in a ledger (declarations only: ``Objective`` provides them)."""

    if TYPE_CHECKING:

        @property
        def _ledger(self) -> Ledger: ...

        @property
        def learns_names(self) -> bool: ...

        def declared_names(self) -> tuple[str, ...]: ...

        def accumulator_for(self, name: str) -> type[Accumulator]: ...

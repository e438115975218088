"""The hooks of an objective: those its mixins read, and those a subclass may not override.

:class:`~torchtally.objectives._syncing.SyncHooks` and
:class:`~torchtally.objectives._persistence.Persistence` are written apart
from :class:`~torchtally.objectives.Objective` and work on what it provides;
this declares that once, for the type checker. :func:`refuse_renamed_hooks`
refuses the hooks of DRYTorch and torchtally 0.1 that torchtally does not call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torchtally.aggregation import Accumulator
from torchtally.errors import HookError
from torchtally.objectives._ledger import Ledger

__all__ = ["LedgerHolder", "refuse_renamed_hooks"]


class LedgerHolder:
    """An object whose state lives in a ledger (declarations only: ``Objective`` provides them)."""

    if TYPE_CHECKING:

        @property
        def _ledger(self) -> Ledger: ...

        @property
        def learns_names(self) -> bool: ...

        def declared_names(self) -> tuple[str, ...]: ...

        def accumulator_for(self, name: str) -> type[Accumulator]: ...


_RENAMED_HOOKS = {
    "_get_aggregator": (
        "set the class attribute aggregation ('max', an Accumulator class, or a dict of them by "
        "name), or override accumulator_for(self, name) to return an Accumulator class"
    ),
    "_compute": "override finalize(self, values), which turns aggregated values into reported ones",
    "_declared_names": "override declared_names(self)",
}
"""Hooks of DRYTorch and torchtally 0.1, and what to write instead."""


def refuse_renamed_hooks(cls: type) -> None:
    """Refuse a class that overrides a hook torchtally does not call (its values would be wrong).

    Raises:
        HookError: ``cls`` itself defines one of DRYTorch's or torchtally 0.1's hooks.
    """
    for hook, instead in _RENAMED_HOOKS.items():
        if hook in cls.__dict__:
            raise HookError(
                f"{cls.__name__} overrides {hook}(), a hook of DRYTorch and torchtally 0.1 "
                f"that torchtally does not call (its values would be aggregated as the default "
                f"mean, silently); {instead}"
            )

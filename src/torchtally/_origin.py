"""Whether code is torchtally's or the user's, told apart by the module it was defined in.

A warning about the user's code points at the user's line
(:func:`user_stacklevel`), and a hook the user wrote is told from torchtally's
own default (:func:`is_torchtally_module`). Nothing here imports another
torchtally module.

Example:
    >>> from torchtally._origin import is_torchtally_module
    >>> is_torchtally_module('torchtally.objectives'), is_torchtally_module('torchtally_extra')
    (True, False)
"""

from __future__ import annotations

import sys

__all__ = ["is_torchtally_module", "user_stacklevel"]


def is_torchtally_module(module: object) -> bool:
    """Whether ``module`` (a module's ``__name__``) is torchtally or one of its submodules."""
    return isinstance(module, str) and (module == "torchtally" or module.startswith("torchtally."))


def user_stacklevel() -> int:
    """``stacklevel`` for a ``warnings.warn`` in the caller: its first caller outside torchtally."""
    frame = sys._getframe(1)
    level = 1
    while frame.f_back is not None and is_torchtally_module(frame.f_globals.get("__name__")):
        frame = frame.f_back
        level += 1
    return level

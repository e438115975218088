"""Kept for compatibility: :func:`torchtally.wrap` lives in :mod:`torchtally.wrap`.

Example:
    >>> from torchtally.contrib.wrap import wrap
    >>> import torchtally
    >>> wrap is torchtally.wrap
    True
"""

from __future__ import annotations

from torchtally.wrap import ACCEPTED_FORMS, StatefulObjective, WrappedFunction, wrap

__all__ = ["ACCEPTED_FORMS", "StatefulObjective", "WrappedFunction", "wrap"]

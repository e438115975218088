"""What a saved state must be to load at all: a dict of one format version holding known keys.

Each kind of object declares the top-level keys its ``state_dict()`` writes
and the version of that format; loading a state of another version, or one
holding any other key, is refused before anything changes: that state is
not the object's own (another object's, whose other parts would be dropped
without a word; a format this version of torchtally does not know; or a dict
with the user's metadata beside the state, which belongs next to it:
``{'metrics': m.state_dict(), 'epoch': 3}``). Nothing here imports another
torchtally module but :mod:`torchtally.errors`.

Example:
    >>> from torchtally._state_keys import check_state_keys
    >>> from torchtally.errors import StateDictError
    >>> try:
    ...     check_state_keys({'version': 2, 'epoch': 3}, {'version'}, 2, 'Metric')
    ... except StateDictError as error:
    ...     print(str(error)[:70])
    Metric: the state holds keys this object's state_dict() does not write
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from torchtally.errors import StateDictError

__all__ = ["check_state_keys"]


def check_state_keys(
    state_dict: Any, expected: Iterable[str], version: int, label: str
) -> Mapping[str, Any]:
    """``state_dict`` if it is a mapping of format ``version`` holding only ``expected`` keys.

    Called before anything changes.

    Raises:
        StateDictError: naming ``label`` and what was found against what was
            expected (the type, the version, or the unexpected and expected keys).
    """
    if not isinstance(state_dict, Mapping) or not _is_version(state_dict.get("version"), version):
        found = (
            f"version {state_dict.get('version')!r}"
            if isinstance(state_dict, Mapping)
            else f"a {type(state_dict).__name__}"
        )
        raise StateDictError(
            f"{label}: expected a dict from state_dict() of format version {version}, "
            f"found {found}; nothing was loaded"
        )
    allowed = frozenset(expected)
    unexpected = [key for key in state_dict if key not in allowed]
    if unexpected:
        raise StateDictError(
            f"{label}: the state holds keys this object's state_dict() does not write: "
            f"unexpected {sorted(unexpected, key=repr)}, expected only {sorted(allowed)}; keep "
            f"other data beside the state ({{'metrics': m.state_dict(), 'epoch': 3}}); nothing "
            f"was loaded"
        )
    return state_dict


def _is_version(found: Any, version: int) -> bool:
    """Whether ``found`` is the int ``version`` (a tensor compares as a tensor, which may raise)."""
    return isinstance(found, int) and not isinstance(found, bool) and found == version

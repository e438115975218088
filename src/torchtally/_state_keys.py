"""Which top-level keys a saved state may hold, checked once for every ``load_state_dict``.

Each kind of object declares the keys its ``state_dict()`` writes; loading a
state holding any other key is refused before anything changes: that state
is not the object's own (another object's, whose other parts would be
dropped without a word, or a dict with the user's metadata beside the state,
which belongs next to it: ``{'metrics': m.state_dict(), 'epoch': 3}``).
Nothing here imports another torchtally module but :mod:`torchtally.errors`.

Example:
    >>> from torchtally._state_keys import check_state_keys
    >>> from torchtally.errors import StateDictError
    >>> try:
    ...     check_state_keys({'version': 2, 'epoch': 3}, {'version'}, 'Metric')
    ... except StateDictError as error:
    ...     print(str(error)[:70])
    Metric: the state holds keys this object's state_dict() does not write
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from torchtally.errors import StateDictError

__all__ = ["check_state_keys"]


def check_state_keys(state_dict: Any, expected: Iterable[str], label: str) -> None:
    """Refuse a state holding a top-level key outside ``expected`` (before anything changes).

    A ``state_dict`` that is not a mapping is left to the caller, whose own
    check names what it found.

    Raises:
        StateDictError: naming ``label``, the unexpected keys and the expected ones.
    """
    if not isinstance(state_dict, Mapping):
        return
    allowed = frozenset(expected)
    unexpected = [key for key in state_dict if key not in allowed]
    if unexpected:
        raise StateDictError(
            f"{label}: the state holds keys this object's state_dict() does not write: "
            f"unexpected {sorted(unexpected, key=repr)}, expected only {sorted(allowed)}; keep "
            f"other data beside the state ({{'metrics': m.state_dict(), 'epoch': 3}}); nothing "
            f"was loaded"
        )

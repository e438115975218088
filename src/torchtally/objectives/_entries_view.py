"""A collection read as a mapping of its entries: ``collection['MAE']``, ``len``, ``in``, ``keys``.

:class:`EntriesView` gives :class:`~torchtally.MetricCollection` the read-only
mapping protocol over its named callables, by name (the names before any
prefix or postfix), in the order they were given.
"""

from __future__ import annotations

from collections.abc import ItemsView, Iterator, KeysView, ValuesView
from typing import TYPE_CHECKING

from torchtally.objectives._named import NamedCallable

__all__ = ["EntriesView"]


class EntriesView:
    """The read-only mapping protocol over ``self._entries`` (a mixin of collections)."""

    _entries: dict[str, NamedCallable]

    if TYPE_CHECKING:  # given by the objective it is mixed into

        def _label(self) -> str: ...

    def __getitem__(self, name: str) -> NamedCallable:
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(
                f"{self._label()} has no entry {name!r}; its entries are {list(self._entries)}"
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def keys(self) -> KeysView[str]:
        """The entries' names."""
        return self._entries.keys()

    def values(self) -> ValuesView[NamedCallable]:
        """The entries."""
        return self._entries.values()

    def items(self) -> ItemsView[str, NamedCallable]:
        """``(name, entry)`` pairs."""
        return self._entries.items()

"""``lazy``: an attribute computed on first access, then stored on the instance.

Like ``functools.cached_property`` without its lock: Python 3.11's takes an
``RLock``, which ``torch.compile`` cannot trace, so an objective first used
inside a compiled step would fall back to eager. Once computed, the value
lives in the instance ``__dict__`` and the descriptor is not consulted again
(it defines no ``__set__``), so reading it costs a plain attribute lookup.

Example:
    >>> from torchtally._lazy import lazy
    >>> class Area:
    ...     def __init__(self, side):
    ...         self.side = side
    ...     @lazy
    ...     def value(self):
    ...         return self.side ** 2
    >>> Area(3).value
    9
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar, overload

__all__ = ["lazy"]

T = TypeVar("T")


class lazy(Generic[T]):  # noqa: N801 - named like the decorators it stands beside
    """Compute ``method(instance)`` on first access and store it as an instance attribute."""

    def __init__(self, method: Callable[[Any], T]) -> None:
        self.method = method
        self.name = method.__name__
        self.__doc__ = method.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, instance: None, owner: type) -> lazy[T]: ...

    @overload
    def __get__(self, instance: object, owner: type) -> T: ...

    def __get__(self, instance: object | None, owner: type) -> T | lazy[T]:
        if instance is None:
            return self
        value = self.method(instance)
        instance.__dict__[self.name] = value
        return value

"""Rules for objects that keep their own state (adapters, wrapped objects, joins of them).

torchtally cannot see inside such a state, so three rules are written once here:

- :func:`unshared`: what crosses between the user and the state is copied, so
  that no tensor the user can reach shares storage with it;
- :func:`nan_before_update`: ``compute()`` before any update warns
  (:class:`~torchtally.errors.ComputedBeforeUpdatedWarning`) and reports NaN,
  as a native objective does, whatever the foreign library would report;
- :class:`InStep`: an object of several parts whose later part refuses a batch
  after an earlier part took it cannot undo the earlier part (that would need
  a copy of every state at every step), so it refuses to report values until
  it is reset or loaded; so does one whose state a call that raised lost;
- :func:`restore_point`: how such an object is put back exactly as it was
  when a later part of a join refuses its state (a load is every part or none).

Example:
    >>> import torch
    >>> from torchtally._foreign import unshared
    >>> batch = {'outputs': torch.zeros(2)}
    >>> unshared(batch)['outputs'] is batch['outputs']
    False
"""

from __future__ import annotations

import copy
import inspect
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar, cast

import torch
from torch import Tensor

from torchtally.errors import ComputedBeforeUpdatedWarning, MetricCallError

__all__ = ["InStep", "bind_error", "binds", "nan_before_update", "restore_point", "unshared"]

ValueT = TypeVar("ValueT")


def unshared(value: ValueT, *, detach: bool = True) -> ValueT:
    """``value`` with every tensor in it (in tuples, lists and dicts too) copied.

    For a metric that keeps its inputs in a list state: an in-place change to
    a tensor after ``update`` must not reach the epoch value. ``detach=False``
    keeps the copies differentiable (``forward``).
    """
    copied: Any = value
    if isinstance(value, Tensor):
        copied = value.detach().clone() if detach else value.clone()
    elif isinstance(value, (tuple, list)):
        parts = [unshared(part, detach=detach) for part in value]
        copied = type(value)(*parts) if hasattr(value, "_fields") else type(value)(parts)
    elif isinstance(value, Mapping):
        copied = {key: unshared(part, detach=detach) for key, part in value.items()}
    return cast(ValueT, copied)


def binds(fn: Callable[..., Any], positional: int, keywords: Iterable[str] = ()) -> bool:
    """Whether ``fn`` takes ``positional`` arguments and these keywords (checked once, not called).

    ``True`` when its signature cannot be read (a builtin): the call will tell.

    Example:
        >>> from torchtally._foreign import binds
        >>> binds(lambda outputs, targets: None, 3)
        False
    """
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return True
    try:
        signature.bind(*[None] * positional, **dict.fromkeys(keywords))
    except TypeError:
        return False
    return True


def bind_error(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> TypeError | None:
    """The ``TypeError`` binding ``fn(*args, **kwargs)`` raises (not called); ``None`` if it binds.

    ``None`` also when its signature cannot be read (a builtin): the call will tell.
    """
    try:
        inspect.signature(fn).bind(*args, **kwargs)
    except TypeError as error:
        return error
    except ValueError:
        pass
    return None


def nan_before_update(
    owner: str,
    names_of: Callable[[], Iterable[str]],
    fallback: Iterable[str],
    *,
    stacklevel: int = 3,
) -> dict[str, Tensor]:
    """NaN for every name, with :class:`~torchtally.errors.ComputedBeforeUpdatedWarning`.

    Args:
        owner: the objective, as messages name it.
        names_of: the names the object would report (its ``compute()``'s keys);
            anything it raises or warns is dropped: the foreign library's value
            before any update (0, NaN or an error) is not reported.
        fallback: the names known without data, when ``names_of`` raises.
        stacklevel: the warning's, pointing at the user's ``compute()`` call.

    Example:
        >>> import warnings
        >>> from torchtally._foreign import nan_before_update
        >>> with warnings.catch_warnings(record=True):
        ...     nan_before_update('example', lambda: ['MSE'], ['MSE'])
        {'MSE': tensor(nan)}
    """
    warnings.warn(
        ComputedBeforeUpdatedWarning(
            f"{owner}: compute() called before any update; values are NaN"
        ),
        stacklevel=stacklevel,
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            names = list(names_of())
    except Exception:
        names = list(fallback)
    return {name: torch.tensor(float("nan")) for name in names}


def restore_point(part: Any) -> Callable[[], None]:
    """A callable putting ``part`` back as it is now: what a refused load of a join undoes.

    ``part.restore_point()`` when the part defines it (a duck-typed hook: a
    zero-argument method returning such a callable), else a copy of its
    ``state_dict()`` loaded back. Loading a saved state back is not enough for
    every part: the adapters' synced view, their marks (out of step, loaded
    from another rank) are not in their state, and an adapter out of step
    refuses ``state_dict()``; so they define the hook.

    Example:
        >>> from torchtally._foreign import restore_point
        >>> class Total:
        ...     def __init__(self): self.total = 0.0
        ...     def state_dict(self): return {'total': self.total}
        ...     def load_state_dict(self, state): self.total = state['total']
        >>> part = Total()
        >>> back = restore_point(part)
        >>> part.total = 5.0
        >>> back()
        >>> part.total
        0.0
    """
    own = getattr(part, "restore_point", None)
    if callable(own):
        restore: Callable[[], None] = own()
        return restore
    saved = copy.deepcopy(part.state_dict())
    return lambda: part.load_state_dict(saved)


class InStep:
    """An object of several parts that refuses to report them once they are out of step.

    :meth:`out_of_step` marks it (where a part refused a batch after another
    took it), as :meth:`lost` does (where a call that raised lost the state it
    had set aside); :meth:`check_in_step` raises then, and :meth:`back_in_step`
    (``reset``, ``load_state_dict``) clears the mark. The mark is a string
    (pickled and copied with the object, saved nowhere).
    """

    _out_of_step: str | None = None

    def out_of_step(
        self, owner: str, took: list[str], refused: str, error: Exception
    ) -> MetricCallError:
        """Mark the parts out of step; the error to raise (``from error``).

        Args:
            owner: the object, as messages name it.
            took: the parts that took the batch.
            refused: what refused it (the part that raised).
            error: what it raised.
        """
        return self._mark(
            f"{owner}: the batch was refused by {refused} after {', '.join(took)} took it "
            f"({type(error).__name__}: {error}); a part's update cannot be undone, so the "
            f"parts are out of step"
        )

    def lost(self, owner: str, what: str, error: Exception) -> MetricCallError:
        """Mark the state lost (a call that raised after setting it aside); the error to raise.

        Args:
            owner: the object, as messages name it.
            what: what raised and what it lost (``"forward raised after ..."``).
            error: what it raised.
        """
        return self._mark(
            f"{owner}: {what} ({type(error).__name__}: {error}); the state cannot be restored"
        )

    def _mark(self, why: str) -> MetricCallError:
        self._out_of_step = (
            f"{why}: compute(), state_dict(), merge_state() and sync refuse until reset() or "
            f"load_state_dict()"
        )
        return MetricCallError(self._out_of_step)

    def check_in_step(self) -> None:
        """Refuse to report parts out of step.

        Raises:
            MetricCallError: a part refused a batch another part took, or the
                state was lost, since the last ``reset()`` or ``load_state_dict()``.
        """
        if self._out_of_step is not None:
            raise MetricCallError(self._out_of_step)

    def back_in_step(self) -> None:
        """Clear the mark (the parts' states were all replaced)."""
        self._out_of_step = None

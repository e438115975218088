"""What ``sync_all`` needs from an object, and which objects take part in a sync.

:class:`SyncParticipant` is the five public hooks an object implements to
sync (every objective and adapter does); :class:`SyncCounters` keeps the
bookkeeping behind one of them, ``sync_stamp``. A composite takes part
through the parts it names (``sync_parts()``).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from torchtally import distributed
from torchtally.errors import InvalidArgumentError, StateDictError, SyncError
from torchtally.sync._agreement import Padding, serial
from torchtally.sync._rows import Gathered, SyncState

__all__ = ["SyncCounters", "SyncParticipant", "checked_saved_on"]


@runtime_checkable
class SyncParticipant(Protocol):
    """What :func:`sync_all` needs from an object to sync it in its shared exchange.

    Every objective implements it, and the torchmetrics and torcheval
    adapters do too, so that one ``sync_all`` moves everything in one
    exchange. Implement it to sync a state of your own.

    Example:
        >>> import torchtally as tt
        >>> from torchtally.sync import SyncParticipant
        >>> isinstance(tt.Metric(lambda o, t: o - t, 'Bias'), SyncParticipant)
        True
    """

    def sync_identity(self) -> dict[str, Any]:
        """What every rank's counterpart must equal (JSON-able).

        The same in every process running the same code: kinds, names,
        layouts; no addresses, no values.
        """

    def sync_stamp(self) -> tuple[int, int]:
        """Where it is in its sequence of syncs: ``(resets, syncs since the last reset)``."""

    def sync_export(self, drop_last: bool) -> SyncState:
        """This process's state, without its last sample when ``drop_last`` (a sampler's repeat)."""

    def sync_merge(self, gathered: Gathered, padding: Padding | None) -> Any:
        """Combine every rank's state without changing ``self``.

        Raise only :class:`~torchtally.errors.SyncError`, with messages built
        from ``gathered`` alone, so that every rank raises the same.
        """

    def sync_install(self, prepared: Any) -> None:
        """Make ``compute()`` report what :meth:`sync_merge` prepared."""


class SyncCounters:
    """The bookkeeping behind :meth:`SyncParticipant.sync_stamp`: resets, syncs, creation order.

    A mixin: call :meth:`_count_reset` from ``reset``, :meth:`_count_sync`
    from ``sync_install``, :meth:`_note_loaded` from ``load_state_dict``
    (with the :meth:`_saved_on` its ``state_dict`` recorded) and
    :meth:`_note_merged` from ``merge_state``.

    Example:
        >>> from torchtally.sync import SyncCounters
        >>> counters = SyncCounters()
        >>> counters._count_sync(); counters._count_reset(); counters._count_sync()
        >>> counters.sync_stamp()
        (1, 1)
    """

    _resets = 0
    _syncs = 0
    _serial = 0
    _loaded_from: int | None = None  # the rank whose saved updates this state holds, till reset

    def __init__(self) -> None:
        self._serial = serial()

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A copy or an unpickled object is a new participant, made now.
        restore = getattr(super(), "__setstate__", None)  # a mixin's, if any
        if restore is not None:
            restore(state)
        else:
            self.__dict__.update(state)
        self._serial = serial()

    def sync_stamp(self) -> tuple[int, int]:
        """``(resets, syncs since the last reset)``."""
        return self._resets, self._syncs

    def _count_reset(self) -> None:
        """Note a reset."""
        self._resets += 1
        self._syncs = 0
        self._loaded_from = None

    def _note_loaded(self, saved_on: int | None, holds_updates: bool) -> None:
        """Note a loaded state, saved on rank ``saved_on`` (``None``: the state does not say)."""
        self._loaded_from = saved_on if holds_updates else None

    def _note_merged(self, other: object, held_updates: bool) -> None:
        """Note a merged-in state: into one holding no updates, it takes ``other``'s origin.

        Merging into an object holding nothing is a load of ``other``'s
        updates, and keeps the rank they came from as :meth:`_note_loaded`
        does. Merged into updates held here, the state is this one's (a
        consolidation of several ranks' states) and keeps this one's origin.
        """
        if not held_updates:
            self._loaded_from = getattr(other, "_loaded_from", None)

    def _saved_on(self) -> int:
        """The rank whose updates a ``state_dict()`` written now holds, to be saved in it.

        This process's rank (0 outside a distributed run), unless the state
        holds updates loaded from another rank's state: saving it again keeps
        that rank, so a second save and load is refused at the sync as the first.
        """
        return distributed.rank() if self._loaded_from is None else self._loaded_from

    def _count_sync(self) -> None:
        """Note a completed sync."""
        self._syncs += 1


def checked_saved_on(value: Any, label: str) -> int | None:
    """The rank a loaded state says it was saved on; ``None`` for one that does not say (older).

    Raises:
        StateDictError: ``value`` is not a rank (an int >= 0).

    Example:
        >>> from torchtally.sync import checked_saved_on
        >>> checked_saved_on(3, 'Metric'), checked_saved_on(None, 'Metric')
        (3, None)
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise StateDictError(f"{label}: 'saved_on' must be a rank (an int >= 0), found {value!r}")
    return value


def _check_own_state(item: object, label: str, here: int) -> None:
    """Refuse to sync updates loaded from another rank's ``state_dict()``.

    A checkpoint written by rank 0 alone and loaded on every rank puts rank 0's
    updates on every rank: a sync would count them once per rank, and the other
    ranks' saved updates not at all.
    """
    loaded = getattr(item, "_loaded_from", None)
    if loaded is not None and loaded != here:
        raise SyncError(
            f"{label} holds updates from a state_dict() saved on rank {loaded}, loaded on rank "
            f"{here}: a sync would count rank {loaded}'s updates on every rank that loaded them; "
            f"load each rank's own state_dict() (a checkpoint written by one rank holds that "
            f"rank's updates alone), or reset() after loading"
        )


def _participants(item: object) -> tuple[Any, ...]:
    """What syncs for ``item``: itself, or the parts a composite names (``sync_parts()``)."""
    parts = getattr(item, "sync_parts", None)
    return tuple(parts()) if callable(parts) else (item,)


def _check_participant(item: object) -> None:
    if not isinstance(item, SyncParticipant):
        raise InvalidArgumentError(
            f"sync_all takes torchtally objectives and adapters, found "
            f"{type(item).__name__}; wrap foreign metrics with torchtally.wrap, "
            f"from_torchmetrics or from_torcheval"
        )

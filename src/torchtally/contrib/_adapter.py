"""What the torchmetrics and torcheval adapters share: the synced view and the sync hooks.

An adapter keeps the wrapped library's objects as they are (they hold this
process's state); a sync builds a copy holding the state over all processes
(the *synced view*) that ``compute`` reads until the next update or reset.

The wrapped libraries share tensors with their callers: a list state keeps
the very tensors ``update`` was given (AUROC, Cat), and ``compute`` may
return a state itself (a sum, a max). So an adapter gives a metric holding
list states copies of its inputs (:func:`unshared`) and returns copies of
what ``compute`` returns: nothing the user can reach shares storage with a state
(:func:`torchtally._foreign.unshared`, the rule for every object keeping its own state).
"""

from __future__ import annotations

import copy
import inspect
import warnings
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

import torch
from torch import Tensor
from typing_extensions import Self

from torchtally import distributed
from torchtally._conventions import callable_error, usable_device
from torchtally._foreign import InStep, bind_error, nan_before_update, unshared
from torchtally._inference import KeptOutsideInferenceMode
from torchtally.errors import (
    IncompatibleStateError,
    InvalidArgumentError,
    MetricCallError,
    RepeatedSampleWarning,
    SyncError,
    WeightError,
)
from torchtally.objectives import is_objective_like, join
from torchtally.sync import Gathered, Padding, SyncCounters, SyncState, check_mergeable, sync_all

__all__ = ["SyncedAdapter", "foreign_compute", "foreign_error", "unshared"]

ViewT = TypeVar("ViewT")


def foreign_compute(metric: Any, owner: str) -> Any:
    """``metric.compute()``, with what the foreign library raises as the library's own error.

    (torchmetrics' AUROC before any update raises a bare ``ValueError``.)

    Raises:
        MetricCallError: naming the adapter and the metric, the original chained.
    """
    try:
        return metric.compute()
    except Exception as error:
        raise foreign_error(metric, "compute", owner, error) from error


def foreign_error(metric: Any, method: str, owner: str, error: Exception) -> MetricCallError:
    """The library's error for a foreign ``metric.method()`` that raised (raise it ``from error``).

    An adapter's ``update`` passes extra arguments to the metric's own; one it
    does not take (``weight=``, for most) raised a bare ``TypeError``.
    """
    return callable_error(owner, f"{type(metric).__name__}.{method}", error)


class SyncedAdapter(InStep, SyncCounters, KeptOutsideInferenceMode, Generic[ViewT]):
    """Base of the adapters: a synced view of type ``ViewT``, and the hooks around it.

    It gives the shared lifecycle: :meth:`compute` (refusing while out of
    step, :class:`~torchtally._foreign.InStep`; NaN before any update),
    :meth:`sync`, :meth:`merge_state`, :meth:`to` and :meth:`copy`.
    Subclasses implement the hooks these call:

    - :meth:`sync_identity` (what other ranks and merged states must equal;
      it calls ``check_in_step``), :meth:`sync_export` (this process's state)
      and :meth:`combine` (every rank's states into a view);
    - :meth:`adopt` (a merged view's state made the adapter's own; override
      :meth:`adopt_merged` to take more of the other adapter than its states);
    - :meth:`values` (the metrics' or a view's values), :meth:`known_names`
      (the names known without data) and :meth:`has_data` (whether this
      process's metrics took a batch);
    - :meth:`held_metrics` (the wrapped objects, for :meth:`to`);
    - :meth:`members`, for an adapter calling :meth:`check_call`.

    They read the view with :meth:`view`.
    """

    _owner: str
    _synced: ViewT | None = None
    _elsewhere: str | None = None
    _warned_repeats = False
    _every_keyword = False
    """Whether every member must take every keyword (else its update raises halfway)."""
    _checked_keywords: frozenset[frozenset[str]] = frozenset()

    def __init__(self) -> None:
        SyncCounters.__init__(self)

    _checked_calls: frozenset[tuple[int, frozenset[str]]] = frozenset()
    _checked_bare_call = False  # update(outputs, targets) checked: the hot path skips the check

    def members(self) -> dict[str, Any]:
        """The metrics whose ``update`` the adapter calls, by name."""
        raise NotImplementedError

    def keyword_receivers(self, keywords: list[str]) -> tuple[list[str], dict[str, list[str]]]:
        """The members' names, and for each keyword the members whose ``update`` takes it."""
        members = self.members()
        found: dict[str, list[str]] = {keyword: [] for keyword in keywords}
        for key, member in members.items():
            parameters = inspect.signature(member.update).parameters.values()
            named = {
                p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            }
            anything = any(p.kind is p.VAR_KEYWORD for p in parameters)
            for keyword in keywords:
                if anything or keyword in named:
                    found[keyword].append(key)
        return list(members), found

    def check_call(
        self, positional: int, kwargs: Mapping[str, Any], method: str = "update"
    ) -> None:
        """Refuse, before any member updates, arguments one of them cannot take.

        ``positional`` counts the arguments after ``outputs`` and ``targets``;
        ``method`` is the adapter's method called. Each form of call is
        checked once. A single member refuses as its ``update`` would (its
        ``TypeError``, as the library's error); of several, every one that
        cannot take the call is named.

        Raises:
            MetricCallError: the single member's ``update`` cannot take the call.
            WeightError, InvalidArgumentError: of several members, one takes no
                such keyword (see :meth:`check_keywords`) or not that many
                positional arguments.
        """
        call = (positional, frozenset(kwargs))
        if call in self._checked_calls:
            return
        members = self.members()
        if kwargs and len(members) > 1:
            self.check_keywords(kwargs)
        placeholders = (None,) * (2 + positional)
        refusing = {
            key: error
            for key, member in members.items()
            if (error := bind_error(member.update, placeholders, kwargs)) is not None
        }
        if len(members) == 1 and refusing:
            ((key, error),) = refusing.items()
            raise foreign_error(members[key], method, self._owner, error) from error
        if refusing:
            keywords = f" and {sorted(kwargs)}" if kwargs else ""
            raise InvalidArgumentError(
                f"{self._owner}: the update of {list(refusing)} cannot take {2 + positional} "
                f"positional arguments{keywords}; nothing was updated"
            )
        self._checked_calls |= {call}
        self._checked_bare_call = self._checked_bare_call or call == (0, frozenset())

    def check_keywords(self, kwargs: Mapping[str, Any]) -> None:
        """Refuse, before any member updates, keywords some member would not get.

        ``weight=`` must reach every member (one that missed it would report an
        unweighted value); another keyword at least one, or every member
        where a member that does not take it raises (``_every_keyword``).
        Each set of keywords is checked once.

        Raises:
            WeightError: a member's ``update`` takes no ``weight``.
            InvalidArgumentError: a member's ``update`` takes no such keyword.
        """
        keywords = frozenset(kwargs)
        if keywords in self._checked_keywords:
            return
        members, receivers = self.keyword_receivers(sorted(keywords))
        for keyword, takers in receivers.items():
            missing = [name for name in members if name not in takers]
            if not missing or (takers and keyword != "weight" and not self._every_keyword):
                continue
            error = WeightError if keyword == "weight" else InvalidArgumentError
            raise error(
                f"{self._owner}: the update of {missing} takes no keyword argument "
                f"{keyword!r}; nothing was updated. Wrap the metrics that take it separately"
            )
        self._checked_keywords |= {keywords}

    def view(self) -> ViewT | None:
        """The synced view (``None``: report this process's state).

        Raises:
            SyncError: the last sync gathered the states to another rank.
        """
        if self._elsewhere is not None:
            raise SyncError(self._elsewhere)
        return self._synced

    def drop_view(self) -> None:
        """Forget the synced view (an update or reset changes the state)."""
        self._synced = None
        self._elsewhere = None

    def sync(
        self, process_group: distributed.ProcessGroup = None, *, dataset_size: int | None = None
    ) -> None:
        """Make ``compute`` report the value over all processes, on every rank.

        Idempotent; a no-op outside a distributed run. See
        :func:`torchtally.sync_all` (and its ``dataset_size``) to sync it
        together with other objectives in one exchange.
        """
        sync_all(self, process_group=process_group, dataset_size=dataset_size)

    def sync_identity(self) -> dict[str, Any]:
        """What the counterpart of this adapter on every other rank must equal."""
        raise NotImplementedError

    def sync_export(self, drop_last: bool) -> SyncState:
        """This process's state, as ``sync_all`` sends it."""
        raise NotImplementedError

    def combine(self, gathered: Gathered) -> ViewT | None:
        """Every rank's state as one view (``self`` unchanged).

        ``None`` when what it needs was gathered to another rank
        (``sync_all(destination=...)``).
        """
        raise NotImplementedError

    def sync_merge(self, gathered: Gathered, padding: Padding | None) -> ViewT | str:
        """The synced view, or why this rank has none (``sync_all(destination=...)``)."""
        view = self.combine(gathered)
        if view is None:
            return (
                f"{self._owner}: synced with sync_all(destination=...) to another rank; only "
                f"that rank has its values over all processes"
            )
        if padding is not None and padding.repeats and not self._warned_repeats:
            self._warned_repeats = True
            warnings.warn(
                RepeatedSampleWarning(
                    f"{self._owner}: the state of a foreign metric cannot drop the samples "
                    f"DistributedSampler repeated ({padding.repeats} over {padding.world} "
                    f"processes); they are counted twice. Use a torchtally Metric with per-sample "
                    f"values for an exact value"
                ),
                stacklevel=4,
            )
        return view

    def sync_install(self, prepared: ViewT | str) -> None:
        """Make ``compute`` read the synced view (or refuse, on a non-destination rank)."""
        if isinstance(prepared, str):
            self._synced, self._elsewhere = None, prepared
        else:
            self._synced, self._elsewhere = prepared, None
        self._count_sync()

    def restore_point(self) -> Callable[[], None]:
        """A callable putting the adapter back as it is now, synced view included.

        What a join undoes a loaded part with when a later part refuses its
        state (:func:`torchtally._foreign.restore_point`): reloading the
        part's saved state would drop the synced view (``compute`` would
        report this process's value after a refused call), and an adapter out
        of step cannot save one. Here, the adapter's attributes; a subclass
        whose ``load_state_dict`` writes into the wrapped objects, rather than
        replacing them, adds their states.
        """
        attributes = dict(vars(self))  # the view, the marks, the wrapped objects held

        def restore() -> None:
            vars(self).clear()  # an attribute the load added goes too
            vars(self).update(attributes)

        return restore

    def merge_state(self, other: Self) -> None:
        """Add another adapter's updates to this one's, as a sync of the two would combine them.

        The wrapped library's own reductions (torchmetrics) or ``merge_state``
        (torcheval) combine the states, as in :meth:`sync`; ``other`` is not
        changed and shares no tensor with this adapter afterwards.

        Raises:
            IncompatibleStateError: ``other`` is of another type or wraps other
                metrics (classes, options, names, states); nothing changes then.
        """
        self.adopt_merged(self.merged_with(other), other)

    def merged_with(self, other: Self) -> ViewT:
        """This adapter's state combined with ``other``'s, as a view (``self`` unchanged).

        Raises:
            IncompatibleStateError: as :meth:`merge_state`.
        """
        check_mergeable(self._owner, self, other)
        mine_sent, theirs_sent = self.sync_export(False), other.sync_export(False)
        sums = (mine_sent.sums, theirs_sent.sums)
        gathered = Gathered(
            sums=None if sums[0] is None or sums[1] is None else sums[0] + sums[1].to(sums[0]),
            states=[
                (mine_sent.meta, list(mine_sent.tensors or [])),
                # copied: a list state keeps these very tensors
                (theirs_sent.meta, unshared(list(theirs_sent.tensors or []))),
            ],
        )
        try:
            view = self.combine(gathered)
        except SyncError as error:
            raise IncompatibleStateError(f"{self._owner}: cannot merge: {error}") from error
        assert view is not None  # every state was gathered here
        return view

    def adopt(self, view: ViewT) -> None:
        """Make the state of a view (:meth:`merged_with`) this adapter's own."""
        raise NotImplementedError

    def adopt_merged(self, view: ViewT, other: Self) -> None:
        """Make ``self.merged_with(other)`` this adapter's state: the last step of a merge.

        What :meth:`merge_state` and a join's ``merge_state`` both call;
        an adapter keeping more than its metrics' states (whether they took a
        batch) takes ``other``'s part of it here, around this method.
        """
        held = self.has_data()
        self.adopt(view)
        self._note_merged(other, held)  # into an adapter holding nothing: other's origin too

    def compute(self) -> dict[str, Tensor]:
        """The values as ``dict[str, Tensor]``, over all processes after :meth:`sync`.

        Before any update, NaN for each name (see :meth:`before_update`).

        Raises:
            MetricCallError: the wrapped metrics are out of step or lost their
                state (:class:`~torchtally._foreign.InStep`), until ``reset()``
                or ``load_state_dict()``.
        """
        self.check_in_step()
        before = self.before_update()
        if before is not None:
            return before
        return unshared(self.values(self.view()))  # a result may be a state itself (a sum, a max)

    def before_update(self) -> dict[str, Tensor] | None:
        """NaN and the library's warning when ``compute`` would report no batch, else ``None``.

        As a native objective, whatever the wrapped library reports then (0,
        NaN, an error): this process's metrics took no batch and no synced
        view stands in for them.
        """
        if self._synced is not None or self._elsewhere is not None or self.has_data():
            return None
        names = self.known_names()
        return nan_before_update(self._owner, lambda: self.values(None), names, stacklevel=4)

    def has_data(self) -> bool:
        """Whether this process's metrics took a batch (what :meth:`before_update` asks)."""
        raise NotImplementedError

    def values(self, view: ViewT | None) -> dict[str, Tensor]:
        """The wrapped metrics' values (the view's, when given), normalised, not copied."""
        raise NotImplementedError

    def known_names(self) -> list[str]:
        """The names ``compute`` reports, as far as they are known without data."""
        raise NotImplementedError

    def held_metrics(self) -> list[Any]:
        """The wrapped library's objects this adapter holds (its own, a synced view's)."""
        raise NotImplementedError

    def to(self, device: torch.device | str) -> Self:
        """Move the wrapped metrics (and a synced view) to ``device``; returns ``self``.

        Raises:
            InvalidArgumentError: as :meth:`torchtally.Objective.to` (a dtype would
                lower the precision of the metrics' states). Nothing moves then.
        """
        device = usable_device(device, self._owner)
        for metric in self.held_metrics():
            metric.to(device)
        return self

    def copy(self) -> Self:
        """An independent deep copy, the wrapped objects and their state included."""
        return copy.deepcopy(self)

    def __or__(self, other: object) -> Any:
        """This adapter and ``other`` (any objective) as one (``torchtally.objectives.Joined``)."""
        return join(self, other) if is_objective_like(other) else NotImplemented

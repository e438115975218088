"""A join's saved state: what it writes, and the checks before it loads one.

A join's ``state_dict`` says which part owns each name (``owners``: the
part's index) and how that part reported it (``reported``: with its prefix).
A state saved by a join of other parts, or of the same parts in another
order, must be refused before anything changes: it would report learnt names
under another part's prefix for the rest of the run. :class:`JoinedState`
is the part of ``Joined`` that saves and loads (every part, or none).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping, Sequence, Set
from typing import Any

from typing_extensions import override

from torchtally._foreign import InStep, restore_point
from torchtally._state_keys import check_state_keys
from torchtally.errors import StateDictError
from torchtally.objectives._base import Objective
from torchtally.objectives._persistence import STATE_VERSION

__all__ = ["JoinedState", "checked_layout"]


class JoinedState(InStep, Objective[Any, Any]):
    """Saving and loading a join: its own state, each kept part's, and who owns each name.

    The base of ``Joined``, which sets the attributes declared here.
    """

    _templates: list[Objective[Any, Any]]
    """The torchtally parts, whose state the join keeps."""
    _kept: list[Any]
    """The parts keeping their own state (adapters, wrapped objects)."""
    _owners: dict[str, Objective[Any, Any]]
    """The template reporting each name."""

    @abstractmethod
    def _claim(self, name: str, template: Objective[Any, Any]) -> None:
        """Record that ``template`` reports ``name`` (refusing a name another part reports)."""

    @override
    def state_dict(self) -> dict[str, Any]:
        self.check_in_step()
        state = super().state_dict()
        state["parts"] = [part.state_dict() for part in self._kept]
        state["owners"] = {name: self._templates.index(part) for name, part in self._owners.items()}
        state["reported"] = {name: part.reported_name(name) for name, part in self._owners.items()}
        return state

    @override
    def state_keys(self) -> frozenset[str]:
        return super().state_keys() | {"parts", "owners", "reported"}

    @override
    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore every part, or none: a part that refuses its state undoes the others.

        The parts that loaded are put back exactly as they were (see
        :func:`torchtally._foreign.restore_point`): an adapter keeps its synced
        view, and one out of step stays so.
        """
        keys = self.state_keys()  # checked before any part loads
        parts, owners = checked_layout(
            state_dict, self._label(), keys, len(self._kept), self._templates, self._owners
        )
        previous = dict(self._owners)
        # Not a reload of the parts' state_dict(): that would drop an adapter's synced view,
        # and an adapter out of step refuses to save one (a load is how it gets back in step).
        before = [restore_point(part) for part in self._kept]
        loaded = 0
        try:
            for name, index in owners.items():
                self._claim(name, self._templates[index])
            # This object's own state is checked first (nothing changes), then the parts load.
            self._imported(state_dict)
            for part, state in zip(self._kept, parts, strict=True):
                part.load_state_dict(state)
                loaded += 1
            super().load_state_dict(state_dict)
            self.back_in_step()
        except Exception:
            self._owners = previous
            for restore in before[:loaded]:
                restore()
            raise


def checked_layout(
    state_dict: Any,
    label: str,
    keys: Set[str],
    kept: int,
    templates: Sequence[Any],
    current: Mapping[str, Any],
) -> tuple[list[Any], Mapping[str, int]]:
    """The kept parts' states and the names' owners of a join's state, checked.

    ``keys`` are the top-level keys the join's state may hold, ``kept`` the
    number of parts keeping their own state, ``templates`` the torchtally
    parts, ``current`` the owner of each name known here.

    Raises:
        StateDictError: the state holds another key, is malformed, or is of
            another join (a name it holds is owned here by another part).
            Nothing is changed here.
    """
    check_state_keys(state_dict, keys, STATE_VERSION, label)
    parts = state_dict.get("parts")
    if not isinstance(parts, list) or len(parts) != kept:
        raise StateDictError(
            f"{label}: expected the states of {kept} kept parts under "
            f"'parts', found {type(parts).__name__}"
        )
    owners = state_dict.get("owners")
    if not isinstance(owners, Mapping) or not all(
        isinstance(index, int) and 0 <= index < len(templates) for index in owners.values()
    ):
        raise StateDictError(
            f"{label}: expected the part of every name under 'owners', found {owners!r:.80}"
        )
    _check_owners(label, templates, current, owners, state_dict.get("reported"))
    return parts, owners


def _check_owners(
    label: str,
    templates: Sequence[Any],
    current_owners: Mapping[str, Any],
    owners: Mapping[str, int],
    reported: Any,
) -> None:
    """Refuse a state whose names belong to other parts than here (another join's).

    A declared name must belong to the same part; a name learnt from data to
    a part that learns names, reporting it as the state's join did (its prefix).
    """
    for name, index in owners.items():
        template, current = templates[index], current_owners.get(name)
        said = reported.get(name, name) if isinstance(reported, Mapping) else None
        if current is not None and current is not template:
            why = f"here {current!r} reports it"
        elif current is None and not template.learns_names:
            why = f"{template!r} does not report it"
        elif said is not None and said != template.reported_name(name):
            why = f"here it is reported as {template.reported_name(name)!r}, there as {said!r}"
        else:
            continue
        raise StateDictError(
            f"{label}: the state is of another join: it holds {name!r} from part "
            f"{index}, but {why}; load it into a join of the same parts in the same order"
        )

"""An object that keeps its own state, as a torchtally objective: :class:`StatefulObjective`.

What :func:`torchtally.wrap` makes of an object with ``update``, ``compute``
and ``reset`` that is neither a torchmetrics nor a torcheval metric. Its
values are normalised into ``dict[str, Tensor]``; its state stays inside the
object, where torchtally cannot combine it across processes, so every sync
hook refuses (in a distributed run; outside one there is nothing to do).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from typing_extensions import Self

from torchtally import distributed
from torchtally._conventions import check_name, normalize_result, usable_device
from torchtally._foreign import nan_before_update, unshared
from torchtally._inference import KeptOutsideInferenceMode, outside_inference_mode
from torchtally._state_keys import check_state_keys
from torchtally.errors import MetricCallError, StateDictError, SyncError, WeightError
from torchtally.losses import LossOperand
from torchtally.objectives import is_objective_like, join
from torchtally.sync import sync_all

__all__ = ["StatefulObjective"]

_STATE_VERSION = 1

_kept_copy = outside_inference_mode(copy.deepcopy)
"""A deep copy the object keeps and changes in place (normal tensors under inference mode)."""


def _was_updated(state: Mapping[str, Any]) -> bool:
    """Whether a saved state had seen a batch (a state saved before this flag: assume so)."""
    return state.get("updated", True) is not False


class StatefulObjective(LossOperand, KeptOutsideInferenceMode):
    """An object with ``update``/``compute``/``reset`` that keeps its own state.

    ``update`` and ``compute`` call the object's and normalise what they return
    into ``dict[str, Tensor]`` (``update`` returns ``None`` when the object's
    does), as copies: nothing the user reaches shares storage with the state
    (the object gets copies of the batch too, in case it keeps its inputs).
    The object's state is its own business: torchtally cannot combine it
    across processes, so :meth:`sync` raises :class:`~torchtally.errors.SyncError`
    in a distributed run (on every rank, also within :func:`torchtally.sync_all`);
    outside one it does nothing, but ``sync_all(..., dataset_size=N)`` refuses it
    there too (it cannot count its samples).
    Build it with :func:`wrap`.

    Example:
        >>> import torch
        >>> import torchtally as tt
        >>> class Hits:
        ...     def __init__(self):
        ...         self.hits = 0
        ...     def update(self, outputs, targets):
        ...         self.hits += int((outputs.argmax(1) == targets).sum())
        ...     def compute(self):
        ...         return self.hits
        ...     def reset(self):
        ...         self.hits = 0
        >>> hits = tt.wrap(Hits())
        >>> hits.update(torch.eye(2), torch.tensor([0, 0]))
        >>> hits.compute()
        {'Hits': tensor(1)}
    """

    can_sync = False
    """Whether :meth:`sync` can combine this objective's state across processes."""
    _updated = False  # whether the object took a batch since it was wrapped, reset or loaded

    def __init__(self, obj: Any, name: str) -> None:
        self._object = obj
        self._name = check_name(name, "wrap")
        self._owner = f"{type(self).__name__} {name!r}"

    @property
    def name(self) -> str:
        """The name of a single value (the prefix of a sequence's names)."""
        return self._name

    @property
    def wrapped(self) -> Any:
        """The wrapped object."""
        return self._object

    def _call_error(self, method: str, error: Exception) -> MetricCallError:
        return MetricCallError(
            f"{self._owner}: {type(self._object).__name__}.{method}() raised "
            f"{type(error).__name__}: {error}"
        )

    def update(self, outputs: Any, targets: Any, *, weight: Any = None) -> dict[str, Tensor] | None:
        """Call the object's ``update``; return what it returned, normalised (or ``None``).

        Raises:
            WeightError: ``weight`` was given: the object keeps its own state, unweighted.
            MetricCallError: the object's ``update`` raised.
        """
        if weight is not None:
            raise WeightError(
                f"{self._owner}: the wrapped object keeps its own state and cannot be weighted; "
                f"leave weight= out (found {type(weight).__name__})"
            )
        # The object may keep the tensors it is given (whether it does cannot be told from
        # its attributes: a list made later, one in a submodule): it gets copies.
        outputs, targets = unshared((outputs, targets))
        try:
            result = self._object.update(outputs, targets)
        except Exception as error:
            raise self._call_error("update", error) from error
        self._updated = True
        if result is None:
            return None
        return unshared(normalize_result(result, self._name, self._owner))  # it may be a state

    def compute(self) -> dict[str, Tensor]:
        """The object's ``compute()`` as ``dict[str, Tensor]`` of 0-d tensors.

        Before any update (since it was wrapped, reset or loaded from a state
        saved before any) it warns
        (:class:`~torchtally.errors.ComputedBeforeUpdatedWarning`) and reports
        NaN, as a native objective does, under the names the object's
        ``compute()`` gives (its name if that raises).

        Raises:
            MetricCallError: the object's ``compute`` raised.
            ResultTypeError: it returned something other than the accepted types.
            ResultShapeError: a value has more than one element.
        """
        if not self._updated:
            return nan_before_update(self._owner, self._computed, [self._name])
        return unshared(self._computed())

    def _computed(self) -> dict[str, Tensor]:
        try:
            result = self._object.compute()
        except Exception as error:
            raise self._call_error("compute", error) from error
        return normalize_result(result, self._name, self._owner, scalars=True)

    def reset(self) -> None:
        """Call the object's ``reset``.

        Raises:
            MetricCallError: the object's ``reset`` raised (this objective still
                counts the batches it saw).
        """
        try:
            self._object.reset()
        except Exception as error:
            raise self._call_error("reset", error) from error
        self._updated = False

    def higher_is_better_for(self, name: str) -> bool | None:
        """The object's ``higher_is_better`` attribute if it has one, else ``None``."""
        direction = getattr(self._object, "higher_is_better", None)
        return direction if isinstance(direction, bool) else None

    # -- sync: not reachable ------------------------------------------------------------------

    def _sync_refusal(self) -> SyncError:
        return SyncError(
            f"{self._owner}: the state of this {type(self._object).__name__} lives inside the "
            f"object, where torchtally cannot combine it across processes; wrap a function "
            f"of (outputs, targets) instead (torchtally then keeps and syncs the state), use a "
            f"torchmetrics or torcheval metric, or sync the object yourself"
        )

    def sync(
        self, process_group: distributed.ProcessGroup = None, *, dataset_size: int | None = None
    ) -> None:
        """Refuse to sync in a distributed run; do nothing outside one (as ``sync_all(self)``).

        Raises:
            SyncError: in a distributed run, on every rank; with ``dataset_size``
                in one process too (the object cannot count its samples).
        """
        sync_all(self, process_group=process_group, dataset_size=dataset_size)

    # Every hook refuses: sync_all sends the refusal to the other ranks, which raise it too.

    def sync_identity(self) -> dict[str, Any]:
        """Refuse (see :meth:`sync`)."""
        raise self._sync_refusal()

    def sync_stamp(self) -> tuple[int, int]:
        """Refuse (see :meth:`sync`)."""
        raise self._sync_refusal()

    def sync_export(self, drop_last: bool) -> Any:
        """Refuse (see :meth:`sync`)."""
        raise self._sync_refusal()

    def sync_merge(self, gathered: Any, padding: Any) -> Any:
        """Refuse (see :meth:`sync`)."""
        raise self._sync_refusal()

    def sync_install(self, prepared: Any) -> None:
        """Refuse (see :meth:`sync`)."""
        raise self._sync_refusal()

    # -- persistence and devices --------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """A copy of the object's state: its ``state_dict()`` if it has one, else its attributes.

        A copy (``nn.Module.state_dict`` hands out the module's own buffers): a
        state dict kept in memory does not change with later updates or resets.
        """
        if callable(getattr(self._object, "state_dict", None)):
            state = copy.deepcopy(self._object.state_dict())
            return {"version": _STATE_VERSION, "state_dict": state, "updated": self._updated}
        try:
            attributes = vars(self._object)
        except TypeError:
            raise StateDictError(
                f"{self._owner}: a {type(self._object).__name__} has neither state_dict() nor "
                f"attributes to save"
            ) from None
        return {
            "version": _STATE_VERSION,
            "attributes": copy.deepcopy(attributes),
            "updated": self._updated,
        }

    def state_keys(self) -> frozenset[str]:
        """The top-level keys :meth:`state_dict` writes; :meth:`load_state_dict` refuses others."""
        held = "state_dict" if callable(getattr(self._object, "state_dict", None)) else "attributes"
        return frozenset(("version", held, "updated"))

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a state from :meth:`state_dict`.

        Raises:
            StateDictError: the state is not one :meth:`state_dict` made for this kind of
                object (it holds a key :meth:`state_keys` does not name, say).
        """
        check_state_keys(state_dict, self.state_keys(), _STATE_VERSION, self._owner)
        if "state_dict" in state_dict:
            loader = getattr(self._object, "load_state_dict", None)
            if callable(loader):  # a copy: the object may keep the tensors it is given
                loader(_kept_copy(state_dict["state_dict"]))
                self._updated = _was_updated(state_dict)
                return
        elif "attributes" in state_dict and hasattr(self._object, "__dict__"):
            vars(self._object).update(_kept_copy(dict(state_dict["attributes"])))
            self._updated = _was_updated(state_dict)
            return
        raise StateDictError(
            f"{self._owner}: expected a dict from StatefulObjective.state_dict() for a "
            f"{type(self._object).__name__} (keys {sorted(self.state_keys())}), found keys "
            f"{sorted(state_dict, key=repr)}"
        )

    def to(self, device: torch.device | str) -> Self:
        """Move the object (if it has a ``to`` method, as modules do) and return ``self``.

        Raises:
            InvalidArgumentError: as :meth:`torchtally.Objective.to` (a dtype would
                lower the precision of a module's state). Nothing moves then.
        """
        mover = getattr(self._object, "to", None)
        if callable(mover):
            mover(usable_device(device, self._owner))
        return self

    def copy(self) -> Self:
        """An independent deep copy, the wrapped object included."""
        return copy.deepcopy(self)

    def __or__(self, other: object) -> Any:
        """This object and ``other`` (any objective) as one (``torchtally.objectives.Joined``)."""
        return join(self, other) if is_objective_like(other) else NotImplemented

    def __ror__(self, other: object) -> Any:
        return join(other, self) if is_objective_like(other) else NotImplemented

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self._object).__name__}, name={self._name!r})"

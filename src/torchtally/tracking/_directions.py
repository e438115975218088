"""The direction of a value (which way is better), as tools spell it.

Every torchtally objective knows which way each value it reports is better
(``higher_is_better_for(name)``); :func:`monitor_mode` reads it for
Lightning, keras, W&B and Optuna, and :func:`direction` for the tracker,
with the same refusal when the objective cannot tell.
"""

from __future__ import annotations

import inspect
from typing import Any, Literal

from torchtally._origin import is_torchtally_module
from torchtally.errors import TrackerError

__all__ = ["direction", "known_direction", "monitor_mode", "refuse_unreported"]

_MODES: dict[str, tuple[str, str]] = {
    "lightning": ("min", "max"),
    "keras": ("min", "max"),
    "wandb": ("min", "max"),
    "optuna": ("minimize", "maximize"),
}
"""For each tool: how it spells (lower is better, higher is better)."""


def monitor_mode(
    objective: Any,
    name: str,
    *,
    for_: Literal["lightning", "keras", "wandb", "optuna"] = "lightning",
) -> str:
    """The direction of the value ``name`` as a tool wants it: ``'min'`` or ``'max'``.

    Read from ``objective.higher_is_better_for(name)``: a composed loss gets
    the direction its algebra gives (``ce - accuracy``: ``'min'``).

    Args:
        objective: any torchtally objective (metrics, collections, losses,
            joins, wrapped and adapted metrics).
        name: the value's name, as ``compute()`` reports it.
        for_: ``'lightning'`` (``ModelCheckpoint``/``EarlyStopping(mode=...)``),
            ``'keras'`` and ``'wandb'`` (``define_metric(name, summary=...)``)
            get ``'min'``/``'max'``; ``'optuna'`` (``create_study(direction=...)``,
            a W&B sweep's ``goal``) gets ``'minimize'``/``'maximize'``.

    Raises:
        TrackerError: the objective knows no direction for ``name`` (or does
            not report it), or ``for_`` names no known tool.

    Example:
        >>> import torch
        >>> import torchtally as tt
        >>> ce = tt.Loss(torch.nn.functional.cross_entropy, 'CE')
        >>> accuracy = tt.Loss(lambda o, t: (o.argmax(1) == t).float(), 'Accuracy',
        ...                    higher_is_better=True)
        >>> tt.monitor_mode(ce - accuracy, 'Combined Loss')
        'min'
        >>> tt.monitor_mode(ce - accuracy, 'Accuracy', for_='optuna')
        'maximize'
    """
    modes = _MODES.get(for_) if isinstance(for_, str) else None
    if modes is None:
        raise TrackerError(f"monitor_mode: for_ must be one of {sorted(_MODES)}, found {for_!r}")
    return modes[direction(objective, name, "monitor_mode")]


def direction(objective: Any, name: str, caller: str, here: str = "") -> bool:
    """The objective's direction of ``name``, or a :class:`TrackerError` saying why not.

    ``here``: how the caller itself takes a direction (the tracker:
    ``"pass higher_is_better= here"``), offered beside the objective's way.
    """
    found = known_direction(objective, name)
    if found is not None:
        return found
    refuse_unreported(objective, name, caller)  # a typo, not a missing direction
    way = _way_to_a_direction(objective, name)
    if way and here:
        advice = f"{way} (or {here})"
    else:
        advice = way or here or "give the tool its mode yourself ('min' or 'max')"
    raise TrackerError(
        f"{caller}: {objective!r} cannot tell whether a higher {name!r} is better: it knows no "
        f"direction for {name!r}; {advice}"
    )


def _way_to_a_direction(objective: Any, name: str) -> str:
    """How ``objective`` could know the direction of ``name`` (``""``: it has no way).

    A value of a callable given to a torchtally class takes ``higher_is_better=``;
    a value the user's own class computes or derives (``calculate``,
    ``finalize``: a ``'PPL'`` from a mean loss) takes none, its class's
    ``higher_is_better_for(name)`` says it; adapters set none of their own.
    """
    cls = type(objective)
    given = set(_names_given(objective))
    users = not is_torchtally_module(cls.__module__) and callable(getattr(cls, "compute", None))
    if users and name not in given:
        return (
            f"a value {cls.__name__} computes or derives itself (calculate, finalize) takes "
            f"no higher_is_better=: return its direction from "
            f"{cls.__name__}.higher_is_better_for(name)"
        )
    if name in given or _directs_what_it_learns(objective):
        return "give the metric higher_is_better="
    return ""


def _directs_what_it_learns(objective: Any) -> bool:
    """Whether ``higher_is_better=`` at construction covers names learnt from data (``tt.wrap``).

    Not a loss's (it is the loss's own direction), nor a collection's (its
    entries take one each; a dict-returning callable's values take none).
    """
    if getattr(objective, "learns_names", False) is not True or getattr(
        objective, "is_loss", False
    ):
        return False
    try:
        return "higher_is_better" in inspect.signature(type(objective)).parameters
    except (TypeError, ValueError):
        return False


def _names_given(objective: Any) -> tuple[str, ...]:
    """The names of the values the objective's callables give (before ``finalize``), as reported."""
    found: list[str] = []
    for source in (getattr(objective, "reported_names", None), _declared(objective)):
        if isinstance(source, tuple):
            found.extend(name for name in source if isinstance(name, str))
    return tuple(found)


def _declared(objective: Any) -> Any:
    declared = getattr(objective, "declared_names", None)
    return declared() if callable(declared) else None


def known_direction(objective: Any, name: str) -> bool | None:
    """``objective.higher_is_better_for(name)`` where it is ``True`` or ``False``, else ``None``."""
    finder = getattr(objective, "higher_is_better_for", None)
    found = finder(name) if callable(finder) else None
    return found if isinstance(found, bool) else None


def refuse_unreported(objective: Any, name: str, caller: str) -> None:
    """Raise a :class:`TrackerError` if ``objective`` is known never to report ``name``."""
    known = _known_names(objective)
    if known and name not in known:
        raise TrackerError(
            f"{caller}: {objective!r} never reports {name!r}: it reports {list(known)}, not "
            f"{name!r}; ask for one of the names it reports"
        )


def _known_names(objective: Any) -> tuple[str, ...]:
    """Every name ``objective.compute()`` reports, when it can tell before any data (else ``()``).

    A join with a foreign part reports no ``reported_names`` (``()``): its
    ``names`` would leave that part's out. Nor does a class overriding
    ``finalize`` or ``compute`` (which may derive, rename or drop values).
    """
    if getattr(objective, "learns_names", False) is not False or _overrides_results(objective):
        return ()
    names = getattr(objective, "reported_names", None)
    if names is None:
        names = getattr(objective, "names", None)
    if isinstance(names, tuple) and all(isinstance(n, str) for n in names):
        return names
    return ()


def _overrides_results(objective: Any) -> bool:
    """Whether ``objective``'s class turns values into results with hooks of its own."""
    for hook in ("finalize", "compute"):
        found = getattr(type(objective), hook, None)
        if found is not None and not is_torchtally_module(getattr(found, "__module__", None)):
            return True
    return False

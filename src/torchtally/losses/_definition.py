"""What defines a loss, checked once, and what is derived from it on first use.

A loss is defined by an expression over named components, the callables of
those components (a :class:`~torchtally.losses.ComponentTable`), the metrics
it tracks beside them, its direction and its weight callable.
:class:`LossDefinition` checks a definition (every leaf has a callable with a
direction, no name is given twice, the directions agree), stores it, and
makes what is derived from it when first used: the formula, the compiled
program and the lists of calls a batch makes. Arithmetic builds losses from
definitions already checked (see :mod:`torchtally.losses._operators`), in
constant time per operator.

It is the lowest layer of :class:`~torchtally.losses.LossBase`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

from typing_extensions import override

from torchtally._conventions import WeightFn, check_name
from torchtally._lazy import lazy
from torchtally.errors import FormulaError, NameConflictError
from torchtally.formula import (
    Expression,
    Program,
    Sign,
    compile_expression,
    component_names,
    render,
    signed,
)
from torchtally.losses._algebra import COMBINED_NAME, ComponentTable, check_loss_name
from torchtally.losses._evaluation import MultiCall, Produced
from torchtally.objectives import (
    CallableObjective,
    NamedCallable,
    OutputT,
    TargetT,
    merge_named_callables,
)

__all__ = ["LossDefinition"]


class LossDefinition(CallableObjective[OutputT, TargetT]):
    """A loss's definition, its checks and what is made from it on first use.

    The base of :class:`~torchtally.losses.LossBase` (never used on its own).
    """

    _definition: ClassVar[tuple[str, ...]] = (
        "_expression",
        "_table",
        "_tracked_entries",
        "_higher_is_better",
        "_value_sign",
        "_weight_fn",
    )
    """The attributes that define a loss (copied by ``_derive``); the rest is state."""

    _value_sign: Sign = 1
    """The sign of the combined value, given positive components (``None``: either)."""

    def _checked_definition(
        self,
        expression: Expression,
        components: Iterable[NamedCallable],
        tracked: Iterable[NamedCallable],
    ) -> tuple[ComponentTable, tuple[NamedCallable, ...], bool, Sign]:
        """The component table, the tracked metrics, the direction and sign of a definition.

        Raises:
            FormulaError, NameConflictError: see :class:`~torchtally.losses.LossBase`.
        """
        owner = f"{type(self).__name__} {render(expression)}"
        components = tuple(components)
        for entry in components:
            check_loss_name(entry.name, owner)
            if not isinstance(entry.higher_is_better, bool):
                raise FormulaError(
                    f"{owner}: the component {entry.name!r} needs higher_is_better True or False "
                    f"to be part of a loss, found {entry.higher_is_better!r}"
                )
        table = ComponentTable.of(components, owner)
        names = component_names(expression)
        if not names:
            raise FormulaError(f"{owner}: a loss expression needs at least one component")
        held = [name for name, _ in table.items()]
        if sorted(names) != sorted(held):
            raise FormulaError(
                f"{owner}: the components must be the expression's leaves {list(names)}, "
                f"found callables for {held}; pass metrics to track as tracked"
            )
        checked = self._checked_tracked(table, tuple(tracked), owner)
        # the table holds exactly the leaves (checked above), each with a bool direction
        directions = {name: bool(entry.higher_is_better) for name, entry in table.items()}
        try:
            found, sign = signed(expression, directions)
        except FormulaError as error:
            raise FormulaError(f"{type(self).__name__} {error}") from None
        assert found is not None  # an expression with a component has a direction
        return table, checked, found, sign

    def _define(
        self,
        expression: Expression,
        table: ComponentTable,
        tracked: tuple[NamedCallable, ...],
        higher_is_better: bool,
        weight: WeightFn | None,
        sign: Sign = 1,
    ) -> None:
        super(CallableObjective, self).__init__(weight=weight)
        self._expression = expression
        self._table = table
        self._tracked_entries = tracked
        self._higher_is_better = higher_is_better
        self._value_sign = sign

    @staticmethod
    def _checked_tracked(
        table: ComponentTable, tracked: tuple[NamedCallable, ...], owner: str
    ) -> tuple[NamedCallable, ...]:
        for entry in tracked:
            check_name(entry.name, owner)
            if entry.name == COMBINED_NAME:
                raise NameConflictError(
                    f"{owner}: the name {COMBINED_NAME!r} is reserved for the combined value of "
                    f"compositions; give the tracked value another name"
                )
        by_name = merge_named_callables(tracked, (), owner)
        for name, entry in by_name.items():
            present = table.get(name)
            if present is not None and not present.same_callable(entry):
                raise NameConflictError(
                    f"{owner}: the name {name!r} is given to two different callables "
                    f"({present.fn!r:.60} and {entry.fn!r:.60}); give one of them another name"
                )
            if present is not None and (
                entry.aggregation != present.aggregation
                or entry.higher_is_better not in (None, present.higher_is_better)
            ):  # the component's options would win and the tracked value's be dropped
                raise NameConflictError(
                    f"{owner}: {name!r} is a component (aggregation {present.aggregation!r}, "
                    f"higher_is_better {present.higher_is_better}) and a tracked value with "
                    f"other options (aggregation {entry.aggregation!r}, higher_is_better "
                    f"{entry.higher_is_better}); give the tracked value another name"
                )
        return tuple(entry for name, entry in by_name.items() if table.get(name) is None)

    # -- what is made on first use ------------------------------------------------------------

    @lazy
    def _component_names(self) -> tuple[str, ...]:
        return component_names(self._expression)

    @lazy
    def _formula(self) -> str:
        return render(self._expression)

    @lazy
    def _program(self) -> Program:
        return compile_expression(self._expression)

    @lazy
    def _entries(self) -> dict[str, NamedCallable]:
        entries: dict[str, NamedCallable] = {}
        for name in self._component_names:
            entry = self._table.get(name)
            assert entry is not None
            entries[name] = entry
        for entry in self._tracked_entries:
            entries.setdefault(entry.name, entry)
        return entries

    @lazy
    def _calls(self) -> tuple[tuple[str, Any], ...]:
        return tuple(
            (name, entry.fn)
            for name, entry in self._entries.items()
            if not isinstance(entry.fn, (MultiCall, Produced))
        )

    @lazy
    def _names_ordered(self) -> bool:
        # Only a dict-valued call may return other names from one batch to the next.
        # len(), not `not`: first read inside torch.compile, dynamo cannot trace `not` on a
        # tuple of calls (fullgraph=True failed on a fresh DictLoss or criterion loss).
        return len(self._multi_calls) == 0

    @lazy
    def _multi_calls(self) -> tuple[MultiCall, ...]:
        calls: dict[int, MultiCall] = {}
        for entry in self._entries.values():
            call = entry.fn.call if isinstance(entry.fn, Produced) else entry.fn
            if isinstance(call, MultiCall):
                calls.setdefault(id(call), call)
        return tuple(calls.values())

    def _checked_declared(self, combined: str | None) -> list[str]:
        """The names the dict-valued calls declare, each checked to name no other value.

        ``combined`` is the name of the combined value, if it has a row of its own. Checked
        when the loss is first used (its declared names are read before any batch), not per
        operator, so that composing stays constant time.

        Raises:
            NameConflictError: a declared entry is also a component, a tracked value, the
                combined value or an entry another call declares.
        """
        claimed: dict[str, object] = {} if combined is None else {combined: "combined"}
        for name, entry in self._entries.items():
            claimed.setdefault(name, entry.fn.call if isinstance(entry.fn, Produced) else entry.fn)
        names: list[str] = []
        for call in self._multi_calls:
            for name in call.declared:
                other = claimed.setdefault(name, call)
                if other is not call:
                    what = (
                        "the combined value"
                        if other == "combined"
                        else f"declared by {other!r:.60}"
                        if isinstance(other, MultiCall)
                        else f"the value of {getattr(other, '__name__', type(other).__name__)}"
                    )
                    raise NameConflictError(
                        f"{self._label()}: {name!r} is declared (names=) by {call!r:.60} and is "
                        f"also {what}; give one of them another name"
                    )
                names.append(name)
        return names

    # -- how it is shown ----------------------------------------------------------------------

    @property
    @override
    def learns_names(self) -> bool:
        # a dict-valued callable may return entries not declared; a criterion's call may not
        return any(call.learns for call in self._multi_calls)

    @override
    def _label(self) -> str:
        formula = self._formula  # a long formula is cut: labels go into every error message
        return f"{type(self).__name__} {formula if len(formula) <= 160 else formula[:157] + '...'}"

    @override
    def __repr__(self) -> str:
        tracked = self._tracked_entries
        suffix = f", tracking {[entry.name for entry in tracked]}" if tracked else ""
        return f"{type(self).__name__}({self._formula}{suffix})"

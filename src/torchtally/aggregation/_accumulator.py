"""The accumulator base: declared state tensors, and everything derived from them.

What the state looks like on the wire (:class:`~torchtally.aggregation._layout.SyncLayout`),
as an export (:class:`~torchtally.aggregation._export.Exportable`) and how another
accumulator's state is merged in (:class:`~torchtally.aggregation._merging.Merging`) are
mixins of their own; how two states' tensors combine is :mod:`torchtally.aggregation._states`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor
from typing_extensions import Self

from torchtally._dtypes import refuse_unheld
from torchtally._inference import outside_inference_mode
from torchtally.aggregation._batch import Entries
from torchtally.aggregation._export import Exportable, ExportedState
from torchtally.aggregation._layout import SyncLayout, dtypes_from_counts
from torchtally.aggregation._merging import Merging
from torchtally.aggregation._states import (
    MERGE_RULES,
    StateSpec,
    change_rows,
    combine_stacked,
    combine_states,
    fresh_state,
    is_exact,
    normal_state,
    promote,
    two_sum_into,
)
from torchtally.errors import (
    DeviceMismatchError,
    InvalidArgumentError,
    ResultShapeError,
    WeightError,
)

__all__ = [
    "MERGE_RULES",
    "Accumulator",
    "ExportedState",
    "StateSpec",
    "combine_stacked",
    "combine_states",
    "dtypes_from_counts",
    "is_exact",
    "promote",
    "two_sum_into",
]

_F64 = torch.float64
_I64 = torch.int64
_CPU = torch.device("cpu")


class Accumulator(SyncLayout, Exportable, Merging, ABC):
    """Running state of ``rows`` named values that aggregate the same way.

    Subclasses declare their state tensors in :attr:`states` and implement
    :meth:`_add` (fold entries into state tensors, in place) and
    :meth:`_reduce` (the value of every row); creating, resetting, merging,
    exporting, loading and moving state follow from :attr:`states`. The
    number of samples each row has seen is always tracked (``samples``).

    The state lives on the device of the first values added; rows that have
    seen nothing reduce to NaN.

    Attributes:
        kind: the aggregation's name (``'mean'``, ``'sum'``, ...).
        states: the declared state tensors (:class:`StateSpec`).
        rows: the number of values held.
        labels: how error messages name each row (set by the owning objective).
        dtypes: each row's input dtype, promoted over everything it has seen
            (``None`` before any value): it decides the reported dtype.

    Example:
        >>> import torch
        >>> from torchtally.aggregation import Mean
        >>> left, right = Mean(rows=2), Mean(rows=2)
        >>> left.add(torch.tensor([[1.0, 2.0], [0.0, 0.0]]))
        >>> right.add(torch.tensor([[6.0], [3.0]]))
        >>> left.merge(right)
        >>> left.reduce()
        [tensor(3.), tensor(1.)]
    """

    kind: ClassVar[str]
    states: ClassVar[tuple[StateSpec, ...]] = (StateSpec("samples", 1, _I64, "sum"),)
    weighted: ClassVar[bool] = True
    """Whether per-entry weights mean something to this kind (``Cat`` refuses them)."""
    scalar_is_mean: ClassVar[bool] = False
    """Whether a scalar value stands for a mean over its batch (an entry weighing the batch
    size), rather than a total or a candidate (an entry weighing 1)."""

    def __init__(self, rows: int = 1) -> None:
        if not isinstance(rows, int) or isinstance(rows, bool) or rows < 0:
            raise InvalidArgumentError(f"{type(self).__name__}: rows must be >= 0, found {rows!r}")
        self.rows = rows
        self.labels = [f"{type(self).__name__} row {index}" for index in range(rows)]
        self.dtypes: list[torch.dtype | None] = [None] * rows
        self.device: torch.device | None = None
        self._state: dict[str, Tensor] | None = None

    # -- to implement -------------------------------------------------------------------------

    @abstractmethod
    def _add(
        self,
        state: dict[str, Tensor],
        values: Tensor,
        weights: Tensor | None,
        samples: Any,
        droppable: bool,
    ) -> None:
        """Fold entries into ``state`` (one tensor per declared spec, the targeted rows), in place.

        ``values`` is ``(m, T)``; ``weights`` is ``(T,)`` float64 or ``None`` (each
        entry weighs 1); ``samples`` the number of samples the entries stand for;
        ``droppable`` whether the last entry is the last sample of a per-sample
        batch (so that a sync can drop it, see ``sync(dataset_size=...)``).
        Tensor operations only: this runs inside ``torch.compile``.
        """

    @abstractmethod
    def _reduce(self, state: dict[str, Tensor]) -> list[Tensor]:
        """The value of every row (before the reported dtype is applied)."""

    def report_dtype(self, dtype: torch.dtype) -> torch.dtype:
        """The dtype a row whose inputs had ``dtype`` is reported in.

        Never less precise than float32 for floating inputs; float64 stays float64.

        Example:
            >>> import torch
            >>> from torchtally.aggregation import Mean, Sum
            >>> Mean().report_dtype(torch.bfloat16), Sum().report_dtype(torch.int32)
            (torch.float32, torch.int64)
        """
        if dtype == _F64:
            return _F64
        if dtype.is_floating_point:
            return torch.float32
        return _I64

    def entry_dtype(self, dtype: torch.dtype, weighted: bool) -> torch.dtype:
        """The dtype entries of ``dtype`` count as in a row (``Sum``: weighted ints, float64)."""
        return dtype

    # -- adding -------------------------------------------------------------------------------

    def add(
        self,
        values: Tensor,
        weights: Tensor | None = None,
        *,
        samples: Any = None,
        rows: Sequence[int] | None = None,
        droppable: bool = False,
    ) -> None:
        """Fold entries into the state (never keeping a reference to the arguments).

        Args:
            values: ``(m, T)`` entries for ``m`` rows (``(T,)`` when ``m`` is 1).
            weights: ``(T,)`` per-entry weights (``None``: each entry weighs 1).
            samples: how many samples the entries stand for (default ``T``).
            rows: which rows the ``m`` lines of ``values`` belong to (default: all, in order).
            droppable: whether the last entry is the last sample of a per-sample batch.

        Raises:
            DeviceMismatchError: ``values`` are on another device than the state.
            ResultShapeError: ``values`` do not have one line per targeted row.
            WeightError: weights of another length, or weights given to ``Cat``.

        Example:
            >>> import torch
            >>> from torchtally.aggregation import Sum
            >>> hits = Sum()
            >>> hits.add(torch.tensor([1, 0, 1]))
            >>> hits.add(torch.tensor([4]), samples=10)   # a batch total over 10 samples
            >>> hits.reduce(), hits.samples()
            ([tensor(6)], [13])
        """
        targets = list(range(self.rows)) if rows is None else list(rows)
        if values.ndim == 1 and len(targets) == 1:
            values = values.reshape(1, -1)
        if values.ndim < 2 or values.shape[0] != len(targets):
            raise ResultShapeError(
                f"{type(self).__name__}: expected entries of shape ({len(targets)}, T), found "
                f"{tuple(values.shape)}"
            )
        if weights is not None:
            if not self.weighted:
                raise WeightError(
                    f"{self.labels[targets[0]] if targets else type(self).__name__}: a "
                    f"{self.kind!r} aggregation keeps every value as it is and cannot weight "
                    f"them; leave weight= out for it"
                )
            if weights.shape != values.shape[1:]:
                raise WeightError(
                    f"{type(self).__name__}: expected weights of shape {tuple(values.shape[1:])}, "
                    f"found {tuple(weights.shape)}"
                )
        entries = values.shape[1:].numel()  # (values[0] does not exist when no row is targeted)
        if entries == 0 or not targets:
            return
        self._ensure_state(values.device)
        self._promote_rows(targets, self.entry_dtype(values.dtype, weights is not None))
        if samples is None:
            samples = entries
        values = values.detach()
        if weights is not None:
            weights = weights.detach().to(_F64)
        assert self._state is not None
        change_rows(
            self._state, rows, lambda state: self._add(state, values, weights, samples, droppable)
        )

    def add_entries(self, entries: Sequence[Entries], samples: Any) -> None:
        """Add one batch's entries for some rows, as :meth:`add` would part by part.

        What an objective folds inside ``torch.compile``: ``Mean`` and ``Sum``
        write each state tensor once when the floating entries cover every row
        (in a compiled graph a write into some rows copies the whole tensor);
        other kinds, and other batches, add part by part.

        Args:
            entries: the batch's parts, each ``(lines, weights, rows, droppable,
                scale)``: one ``(T,)`` tensor of at least one entry per row, their
                ``(T,)`` weights or ``None``, the rows (``None``: all, in order),
                whether the last entry is droppable, and (without weights) the
                positive number each entry weighs (``None``: 1).
            samples: how many samples the batch stands for (every row).

        Example:
            >>> import torch
            >>> from torchtally.aggregation import Mean
            >>> acc = Mean(rows=2)
            >>> vector = ((torch.tensor([1.0, 3.0]),), None, (0,), True, None)  # per sample
            >>> scalar = ((torch.tensor([5.0]),), None, (1,), False, 2)  # a mean of 2 samples
            >>> acc.add_entries([vector, scalar], samples=2)
            >>> acc.reduce(), acc.samples()
            ([tensor(2.), tensor(5.)], [2, 2])
        """
        for lines, weights, rows, droppable, scale in entries:
            values = lines[0].unsqueeze(0) if len(lines) == 1 else torch.stack(lines)
            if weights is None and scale is not None:
                count = values.shape[1]
                weights = torch.full((count,), scale, dtype=_F64, device=values.device)
            self.add(values, weights, samples=samples, rows=rows, droppable=droppable)

    def _promote_rows(self, rows: Sequence[int], dtype: torch.dtype) -> None:
        """Promote the recorded dtype of ``rows`` by ``dtype`` (values of it were added).

        Raises:
            ResultTypeError: a row would record a dtype no state holds (``uint16``,
                float8, complex), which its export could not load back.
        """
        dtypes = self.dtypes
        for row in rows:
            promoted = promote(dtypes[row], dtype)
            if promoted is not dtypes[row]:  # checked and stored only when it changes: no
                refuse_unheld(promoted, type(self).__name__, self.labels[row])  # store to replay
                dtypes[row] = promoted  # after each torch.compile graph (the dtype is guarded)

    def _ensure_state(self, device: torch.device) -> None:
        if self._state is None:
            self.device = device
            self._state = fresh_state(self.states, self.rows, device)
        elif (
            self._state  # a kind may declare no state tensors
            and not torch.compiler.is_compiling()
            and next(iter(self._state.values())).is_inference()
        ):
            # made inside a graph compiled under torch.inference_mode() (the graph's outputs
            # are inference tensors, which nothing outside it may change in place)
            self._state = normal_state(self._state)
        if device != self.device:
            raise self._device_mismatch(device)

    def _device_mismatch(self, device: torch.device) -> DeviceMismatchError:
        """The error for values that arrived on ``device`` while the state lives elsewhere."""
        return DeviceMismatchError(
            f"{self.labels[0] if self.labels else type(self).__name__}: state lives on "
            f"{self.device} but values arrived on {device}; call .to({str(device)!r}) on the "
            f"objective (or reset() it) before feeding values from another device"
        )

    # -- reading ------------------------------------------------------------------------------

    def reduce(self) -> list[Tensor]:
        """Every row's value as a fresh 0-d tensor in its reported dtype; NaN for empty rows.

        Example:
            >>> import torch
            >>> from torchtally.aggregation import Max
            >>> best = Max(rows=2)
            >>> best.add(torch.tensor([[3, 7, 5]]), rows=[0])
            >>> best.reduce()
            [tensor(7), tensor(nan)]
        """
        if self._state is None:
            return [self._nan() for _ in range(self.rows)]
        values = self._reduce(self._state)
        return [
            self._nan() if dtype is None else value.to(self.report_dtype(dtype), copy=True)
            for value, dtype in zip(values, self.dtypes, strict=True)
        ]

    def samples(self) -> list[int]:
        """How many samples each row has seen (reads the state on the host)."""
        if self._state is None:
            return [0] * self.rows
        return [int(count) for count in self._state["samples"][:, 0].tolist()]

    def _nan(self) -> Tensor:
        device = self.device if self.device is not None else _CPU
        return torch.full((), float("nan"), dtype=torch.get_default_dtype(), device=device)

    @property
    def state(self) -> dict[str, Tensor] | None:
        """The accumulator's own state tensors by name, ``(rows, width)``; ``None``: no value."""
        return self._state

    # -- rows ---------------------------------------------------------------------------------

    @outside_inference_mode
    def grow(self, labels: Sequence[str]) -> int:
        """Add one empty row per label; returns the index of the first new row.

        Example:
            >>> from torchtally.aggregation import Mean
            >>> acc = Mean(rows=0)
            >>> acc.grow(['MAE', 'MSE']), acc.rows
            (0, 2)
        """
        first = self.rows
        self.rows += len(labels)
        self.labels.extend(labels)
        self.dtypes.extend([None] * len(labels))
        if self._state is not None:
            assert self.device is not None
            fresh = fresh_state(self.states, len(labels), self.device)
            self._state = {
                name: torch.cat([tensor, fresh[name]]) for name, tensor in self._state.items()
            }
        return first

    # -- lifecycle ----------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget every value (rows and labels stay); the next value may come from any device."""
        self.dtypes = [None] * self.rows
        self.device = None
        self._state = None

    @outside_inference_mode
    def to(self, device: torch.device | str) -> None:
        """Move the state to ``device``, in place (a state not made yet follows the values)."""
        if self._state is not None:
            self.device = torch.device(device)
            self._state = {name: tensor.to(self.device) for name, tensor in self._state.items()}

    @outside_inference_mode
    def copy(self) -> Self:
        """An independent copy (state tensors cloned)."""
        other = type(self).__new__(type(self))
        other.__dict__.update(self.__dict__)
        other.labels = list(self.labels)
        other.dtypes = list(self.dtypes)
        if self._state is not None:
            other._state = {name: tensor.clone() for name, tensor in self._state.items()}
        return other

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rows={self.rows})"

"""The concatenating accumulator, :class:`Cat`: every value kept, for metrics that need them all."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor
from typing_extensions import Self, override

from torchtally._dtypes import dtype_from_name, dtype_name
from torchtally.aggregation._accumulator import Accumulator, ExportedState, StateSpec
from torchtally.errors import IncompatibleStateError, ResultShapeError, StateDictError, WeightError

__all__ = ["Cat"]

_CPU = torch.device("cpu")


class Cat(Accumulator):
    """Keeps every value, concatenated along the batch dimension.

    For metrics that need all values at once (AUROC, a median). Values may
    have trailing dimensions (``(B, C)`` scores); ``reduce`` returns each
    row's concatenation (a copy) in the values' promoted dtype. Memory grows
    with the data: use it only where a bounded accumulator cannot give the
    right answer. Weights are refused (excluding samples would need their
    values on the host). Not traced by ``torch.compile``: its state is a
    growing list.

    Example:
        >>> import torch
        >>> from torchtally.aggregation import Cat
        >>> acc = Cat()
        >>> acc.add(torch.tensor([0.1, 0.9]))
        >>> acc.add(torch.tensor([0.4]))
        >>> acc.reduce()
        [tensor([0.1000, 0.9000, 0.4000])]
    """

    kind: ClassVar[str] = "cat"
    states: ClassVar[tuple[StateSpec, ...]] = ()
    weighted: ClassVar[bool] = False

    def __init__(self, rows: int = 1) -> None:
        super().__init__(rows)
        self._chunks: list[list[Tensor]] = [[] for _ in range(rows)]
        self._counts = [0] * rows
        self._droppable = [False] * rows

    @override
    @torch.compiler.disable  # type: ignore[untyped-decorator]
    def add(
        self,
        values: Tensor,
        weights: Tensor | None = None,
        *,
        samples: Any = None,
        rows: Sequence[int] | None = None,
        droppable: bool = False,
    ) -> None:
        """Keep copies of ``values``: ``(m, T, *trailing)`` for ``m`` rows (``(T,)`` for one row).

        Raises:
            DeviceMismatchError: ``values`` are on another device than the values held
                (nothing is kept; ``reset()`` or ``to()`` first).
            ResultShapeError: the values' trailing shape differs from what a row holds.
            WeightError: weights were given.
        """
        targets = list(range(self.rows)) if rows is None else list(rows)
        if weights is not None:
            raise WeightError(
                f"{self.labels[targets[0]] if targets else 'Cat'}: a 'cat' aggregation keeps every "
                f"value as it is and cannot weight them; leave weight= out for it"
            )
        if len(targets) == 1 and values.ndim < 2:  # one row's values: (T,) or a scalar
            values = values.reshape(1, -1)
        if values.ndim < 2 or values.shape[0] != len(targets):
            raise ResultShapeError(
                f"Cat: expected entries of shape ({len(targets)}, T, ...), found "
                f"{tuple(values.shape)}"
            )
        for row in targets:
            held = self._chunks[row]
            if held and held[0].shape[1:] != values.shape[2:]:
                raise ResultShapeError(
                    f"{self.labels[row]}: values must share their trailing shape to be "
                    f"concatenated, found {tuple(held[0].shape[1:])} and {tuple(values.shape[2:])}"
                )
        if self.device is not None and values.device != self.device:
            raise self._device_mismatch(values.device)
        if values.shape[1] == 0:
            return
        self._promote_rows(targets, values.dtype)
        self.device = values.device
        for line, row in enumerate(targets):
            self._chunks[row].append(values[line].detach().clone())
            self._counts[row] += int(values.shape[1]) if samples is None else int(samples)
            self._droppable[row] = droppable

    @override
    def _add(
        self,
        state: dict[str, Tensor],
        values: Tensor,
        weights: Tensor | None,
        samples: Any,
        droppable: bool,
    ) -> None:  # pragma: no cover - add is overridden
        raise NotImplementedError

    def trailing(self, row: int) -> tuple[int, ...] | None:
        """The trailing shape the values of ``row`` have (``None`` before any value)."""
        held = self._chunks[row]
        return tuple(held[0].shape[1:]) if held else None

    def _joined(self, row: int) -> Tensor | None:
        chunks = self._chunks[row]
        if len(chunks) > 1:  # one concatenation for everything held: merging stays linear
            dtype = self.dtypes[row]  # promoted as every chunk came in (states.promote)
            self._chunks[row] = chunks = [torch.cat([chunk.to(dtype) for chunk in chunks])]
        return chunks[0] if chunks else None

    @override
    def reduce(self) -> list[Tensor]:
        results = []
        for row in range(self.rows):
            joined = self._joined(row)
            if joined is None:
                dtype = self.dtypes[row] or torch.get_default_dtype()
                results.append(torch.empty(0, dtype=dtype, device=self.device or _CPU))
            else:
                results.append(joined.clone())
        return results

    @override
    def _reduce(self, state: dict[str, Tensor]) -> list[Tensor]:  # pragma: no cover
        raise NotImplementedError

    @override
    def samples(self) -> list[int]:
        return list(self._counts)

    @override
    def grow(self, labels: Sequence[str]) -> int:
        first = super().grow(labels)
        self._chunks.extend([] for _ in labels)
        self._counts.extend(0 for _ in labels)
        self._droppable.extend(False for _ in labels)
        return first

    @override
    def merge(self, other: Self, rows: Sequence[int] | None = None) -> None:
        """Append ``other``'s values to the rows ``rows`` (see :meth:`Accumulator.merge`).

        Raises:
            IncompatibleStateError: ``other`` is of another kind or row count, or
                holds values of another trailing shape than a row they join;
                nothing changes then.
        """
        targets = self._merge_targets(other, rows)
        shapes = [self.trailing(row) for row in range(self.rows)]
        for part, source, target, joined in _placed([(other, targets)], shapes, self.labels):
            device = self.device if self.device is not None else joined.device
            self.device = device
            self._chunks[target].append(joined.to(device, copy=True))
            self._promote_rows((target,), joined.dtype)
            self._counts[target] += part._counts[source]
            self._droppable[target] = part._droppable[source]

    @override
    def without_last(self) -> tuple[Self, Tensor]:
        copied = self.copy()
        dropped = [False] * self.rows
        for row in range(self.rows):
            joined = copied._joined(row)
            if joined is not None and copied._droppable[row] and copied._counts[row] > 0:
                copied._chunks[row] = [joined[:-1]]
                copied._counts[row] -= 1
                copied._droppable[row] = False
                dropped[row] = True
        device = self.device if self.device is not None else _CPU
        return copied, torch.tensor(dropped, dtype=torch.bool, device=device)

    @override
    def keeping_last(self, rows: Tensor) -> Self:
        """A copy whose :meth:`without_last` keeps the last value of ``rows`` (read on the host)."""
        copied = self.copy()
        for row, keep in enumerate(rows.tolist()):
            if keep:
                copied._droppable[row] = False
        return copied

    @override
    @classmethod
    def combined(
        cls, parts: Sequence[tuple[Accumulator, Sequence[int]]], rows: int, labels: Sequence[str]
    ) -> Self:
        """Every part's values, row by row in the parts' order, with one concatenation per row."""
        result = cls(rows=rows)
        result.labels = list(labels)
        pieces: list[list[Tensor]] = [[] for _ in range(rows)]
        for part, source, target, joined in _placed(parts, [None] * rows, result.labels):
            pieces[target].append(joined)
            result._promote_rows((target,), joined.dtype)
            result._counts[target] += part._counts[source]
        for row, held in enumerate(pieces):
            if held:
                device = result.device if result.device is not None else held[0].device
                result.device = device
                dtype = result.dtypes[row]
                result._chunks[row] = [torch.cat([piece.to(device, dtype) for piece in held])]
        return result

    @override
    def reset(self) -> None:
        super().reset()
        self._chunks = [[] for _ in range(self.rows)]
        self._counts = [0] * self.rows
        self._droppable = [False] * self.rows

    @override
    def to(self, device: torch.device | str) -> None:
        if any(self._chunks):
            self.device = torch.device(device)
            self._chunks = [[chunk.to(self.device) for chunk in held] for held in self._chunks]

    @override
    def copy(self) -> Self:
        other = super().copy()
        other._chunks = [[chunk.clone() for chunk in held] for held in self._chunks]
        other._counts = list(self._counts)
        other._droppable = list(self._droppable)
        return other

    @override
    def export(self) -> ExportedState:
        meta: dict[str, Any] = {
            "kind": self.kind,
            "rows": self.rows,
            "dtypes": [None if dtype is None else dtype_name(dtype) for dtype in self.dtypes],
            "samples": list(self._counts),
            "droppable": list(self._droppable),
        }
        tensors = []
        for row in range(self.rows):
            joined = self._joined(row)
            if joined is not None:
                tensors.append(joined.clone())
        meta["held"] = [bool(held) for held in self._chunks]
        return meta, tensors

    @override
    def load(
        self, meta: Any, tensors: Sequence[Any], device: torch.device | str | None = None
    ) -> None:
        where = "Cat"
        if not isinstance(meta, dict) or meta.get("kind") != "cat":
            raise StateDictError(f"{where}: expected a 'cat' state, found {meta!r:.80}")
        rows = meta.get("rows")
        held = meta.get("held")
        counts = meta.get("samples")
        flags = meta.get("droppable")
        names = meta.get("dtypes")
        if (
            not isinstance(rows, int)
            or isinstance(rows, bool)
            or rows < 0
            or not all(
                isinstance(item, list) and len(item) == rows
                for item in (held, counts, flags, names)
            )
        ):
            raise StateDictError(f"{where}: malformed 'cat' state metadata {meta!r:.120}")
        assert isinstance(held, list) and isinstance(counts, list)
        assert isinstance(flags, list) and isinstance(names, list)
        if sum(bool(item) for item in held) != len(tensors):
            raise StateDictError(
                f"{where}: the metadata says {sum(map(bool, held))} rows hold values, found "
                f"{len(tensors)} tensors"
            )
        if any(
            not isinstance(count, int) or isinstance(count, bool) or count < 0 for count in counts
        ):
            raise StateDictError(f"{where}: sample counts must be ints >= 0, found {counts}")
        dtypes = [None if name is None else dtype_from_name(name) for name in names]
        if any(
            name is not None and dtype is None for name, dtype in zip(names, dtypes, strict=True)
        ):
            raise StateDictError(f"{where}: unknown dtype names in {names}")
        chunks: list[list[Tensor]] = []
        remaining = iter(tensors)
        target = None
        for row in range(rows):
            if not held[row]:
                chunks.append([])
                continue
            tensor = next(remaining)
            if not isinstance(tensor, Tensor) or tensor.ndim == 0:
                raise StateDictError(
                    f"{where}: row {row} must hold a tensor with a leading dimension, found "
                    f"{type(tensor).__name__}"
                )
            if tensor.dtype != dtypes[row]:  # what the row reports, and promotes with
                raise StateDictError(
                    f"{where}: row {row} holds {dtype_name(tensor.dtype)} values, its metadata "
                    f"says {names[row]}"
                )
            target = torch.device(device) if device is not None else tensor.device
            chunks.append([tensor.to(target, copy=True)])
        self.rows = rows
        if len(self.labels) != rows:
            self.labels = [f"Cat row {index}" for index in range(rows)]
        self.dtypes = dtypes
        self._chunks = chunks
        self._counts = list(counts)
        self._droppable = [bool(flag) for flag in flags]
        self.device = target
        self._state = None


def _placed(
    parts: Sequence[tuple[Accumulator, Sequence[int]]],
    shapes: list[tuple[int, ...] | None],
    labels: Sequence[str],
) -> list[tuple[Cat, int, int, Tensor]]:
    """Every row of ``parts`` that holds values, as ``(part, its row, target row, values)``.

    All of it is checked before the caller changes anything: ``shapes`` holds
    each target row's trailing shape (``None``: no value yet) and follows the
    rows placed, so values of two shapes never meet in one row.

    Raises:
        IncompatibleStateError: a part is not a :class:`Cat`, or values of
            another trailing shape than their target row's.
    """
    placed = []
    for part, targets in parts:
        if not isinstance(part, Cat):
            raise IncompatibleStateError(f"Cat: cannot combine a {part.kind!r} state")
        for source, target in enumerate(targets):
            joined = part._joined(source)
            if joined is None:
                continue
            found, held = tuple(joined.shape[1:]), shapes[target]
            if held is not None and found != held:
                raise IncompatibleStateError(
                    f"{labels[target]}: cannot combine values of trailing shape {found} with {held}"
                )
            shapes[target] = found
            placed.append((part, source, target, joined))
    return placed

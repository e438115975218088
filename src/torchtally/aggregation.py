"""Accumulators: the running state of one named value, and its arithmetic.

An accumulator folds batches of values (per-sample vectors of shape ``(B,)``
or scalars that are already batch means) into a bounded running state, merges
with another accumulator of its kind and reduces to a value. Accumulators do
no queueing themselves: objectives queue a bounded number of batches in their
hot path and hand them to :meth:`Accumulator.fold` in bulk, so the few tensor
operations a fold costs are paid once for many batches.

Mean and sum keep a compensated (two-term) float64 running sum, so a mean of
10**7 float32 values is exact to float64 rounding; on devices without float64
(Apple MPS) the same compensated arithmetic runs in float32. The sample count
is a host-side Python ``int``: batch sizes are known on the host, so counting
needs no device work at all.

The state lives on the device of the first values folded into it.

Example:
    >>> import torch
    >>> from torchtally.aggregation import Mean
    >>> acc = Mean()
    >>> acc.add(torch.tensor([1.0, 2.0, 3.0]), 3)   # per-sample values
    >>> acc.add(torch.tensor(10.0), 1)              # a batch mean of one sample
    >>> acc.reduce()
    tensor(4.)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from torch import Tensor
from typing_extensions import Self, override

from torchtally.errors import (
    DeviceMismatchError,
    IncompatibleStateError,
    ResultShapeError,
    StateDictError,
    SyncError,
)

__all__ = [
    "ACCUMULATORS",
    "Accumulator",
    "Cat",
    "ExportedState",
    "Max",
    "Mean",
    "Min",
    "Sum",
    "accumulator_from_state",
    "merge_exported",
]

ExportedState = tuple[dict[str, Any], list[Tensor]]
"""An accumulator's state as JSON-able metadata plus a list of tensors."""

_CPU = torch.device("cpu")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _dtype_from_name(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise StateDictError(f"unknown dtype {name!r} in an accumulator state")
    return dtype


def _promote(first: torch.dtype | None, second: torch.dtype | None) -> torch.dtype | None:
    """The common dtype of two (possibly unknown) dtypes."""
    if first is None or second is None:
        return second if first is None else first
    return torch.promote_types(first, second)


def _float_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a reduced value is reported in: floats keep theirs, the rest get the default."""
    return dtype if dtype.is_floating_point else torch.get_default_dtype()


def _wide_dtype(device: torch.device) -> torch.dtype:
    """Widest float dtype the device supports for running sums."""
    return torch.float32 if device.type == "mps" else torch.float64


class Accumulator(ABC):
    """Running state of one named value.

    Subclasses define how a batch of values is folded (``_fold``), how two
    states combine (``_merge_state``), how a state reduces to a value
    (``reduce``) and how it is exported as tensors (``export`` and
    ``_load_tensors``). Device handling, dtype tracking, counting and the
    state-dict format are shared here.

    Attributes:
        kind: short name of the aggregation (``'mean'``, ``'sum'``, ...).
        label: how error messages name the value (set by the owning objective).
        count: number of samples (rows) seen.

    Example:
        >>> import torch
        >>> from torchtally.aggregation import Mean
        >>> left, right = Mean(), Mean()
        >>> left.add(torch.tensor([1.0, 2.0]), 2)
        >>> right.add(torch.tensor(6.0), 1)
        >>> left.merge(right)
        >>> left.reduce(), left.count
        (tensor(3.), 3)
    """

    kind: ClassVar[str]

    def __init__(self) -> None:
        self.label = "value"
        self.count = 0
        self._dtype: torch.dtype | None = None
        self._device: torch.device | None = None

    def prepare(self, value: Tensor, batch_size: int) -> Tensor:
        """Validate one batch's value and bring it to the form :meth:`fold` takes.

        The result is detached, and either 0-d (a scalar batch mean) or a
        ``(B,)`` vector. One-element tensors of another shape become 0-d.

        Raises:
            ResultShapeError: the value is neither a scalar nor ``(B,)``.
        """
        value = value.detach()
        if value.ndim == 0 or (value.ndim == 1 and value.shape[0] == batch_size):
            return value
        if value.numel() == 1:
            return value.reshape(())
        raise ResultShapeError(
            f"{self.label}: expected a scalar or per-sample values of shape ({batch_size},) "
            f"for a batch of {batch_size}, found shape {tuple(value.shape)}"
        )

    def add(self, value: Tensor, batch_size: int) -> None:
        """Validate and fold one batch's value (see :meth:`fold` for many at once).

        Args:
            value: per-sample values of shape ``(B,)`` or a scalar batch mean
                (0-d or one element).
            batch_size: ``B``, the number of samples in the batch (> 0).
        """
        self.fold([self.prepare(value, batch_size)], [batch_size])

    def fold(self, values: list[Tensor], sizes: list[int]) -> None:
        """Fold prepared values of several batches into the state.

        Each value must be as :meth:`prepare` returns it: detached, 0-d or
        with leading dimension equal to its batch size. Objectives check that
        in their hot path, queue the values and fold them here in bulk, so
        the few tensor operations a fold costs are paid once for many
        batches. Per value, a fold reads nothing but ``ndim``.

        Raises:
            DeviceMismatchError: values on several devices, or on another
                device than the state's.
        """
        if values:
            self._fold(values, sizes)
            self.count += self._rows(values, sizes)

    def _rows(self, values: list[Tensor], sizes: list[int]) -> int:
        """How many samples the folded values stand for."""
        return sum(sizes)

    @abstractmethod
    def _fold(self, values: list[Tensor], sizes: list[int]) -> None:
        """Fold prepared values into the state (use :meth:`_join` to combine them)."""

    def _join(self, values: list[Tensor], *, stack: bool) -> Tensor:
        """``torch.stack`` (0-d values) or ``torch.cat`` on the state's device.

        Records the state's device (the first values' device) and the
        promoted dtype of everything seen.
        """
        try:
            joined = torch.stack(values) if stack else torch.cat(values)
        except RuntimeError:
            joined = self._join_across_devices(values, stack=stack)
        device = joined.device
        if self._device is None:
            self._device = device
        elif device != self._device:
            if not (stack and device.type == "cpu"):
                raise self._device_error(device)
            # Python numbers become 0-d CPU tensors; like torch's scalars, they join any device.
            joined = joined.to(self._device)
        self._dtype = _promote(self._dtype, joined.dtype)
        return joined

    def _join_across_devices(self, values: list[Tensor], *, stack: bool) -> Tensor:
        devices = {value.device for value in values if value.ndim or value.device.type != "cpu"}
        if len(devices) > 1 or (not devices and not values):
            raise DeviceMismatchError(
                f"{self.label}: values arrived on several devices ({sorted(map(str, devices))}); "
                f"keep the outputs and targets of an objective on one device"
            )
        if not devices:  # every value is a CPU scalar: the failure was not about devices
            return torch.stack(values) if stack else torch.cat(values)
        (device,) = devices
        moved = [value.to(device) for value in values]
        return torch.stack(moved) if stack else torch.cat(moved)

    def _device_error(self, device: torch.device) -> DeviceMismatchError:
        return DeviceMismatchError(
            f"{self.label}: state lives on {self._device} but values arrived on {device}; "
            f"call .to({str(device)!r}) on the objective (or reset() it) before feeding "
            f"values from another device"
        )

    # -- merging and reducing ---------------------------------------------------------------

    def merge(self, other: Accumulator) -> None:
        """Add ``other``'s state to this one (``other`` is not changed).

        Raises:
            IncompatibleStateError: ``other`` is of another kind.
        """
        if other.kind != self.kind:
            raise IncompatibleStateError(
                f"{self.label}: cannot merge a {other.kind!r} state into a {self.kind!r} state"
            )
        if other.count == 0 and not other._has_state():
            return
        if other._device is not None and self._device is not None and other._device != self._device:
            other = other.copy_to(self._device)
        if not self._has_state():
            self._device = other._device
        self._dtype = _promote(self._dtype, other._dtype)
        self._merge_state(other)
        self.count += other.count

    @abstractmethod
    def _merge_state(self, other: Self) -> None:
        """Combine ``other``'s flushed state into this state."""

    @abstractmethod
    def _has_state(self) -> bool:
        """Whether state tensors exist (they are created by the first fold)."""

    @abstractmethod
    def reduce(self) -> Tensor:
        """The aggregated value; NaN when nothing was added."""

    def reset(self) -> None:
        """Forget every value (the label stays); the next value may come from any device."""
        label = self.label
        self.__init__()  # type: ignore[misc]
        self.label = label

    def _result_dtype(self) -> torch.dtype:
        return _float_dtype(self._dtype) if self._dtype is not None else torch.get_default_dtype()

    def _nan(self) -> Tensor:
        device = self._device if self._device is not None else _CPU
        return torch.full((), float("nan"), dtype=self._result_dtype(), device=device)

    # -- export, import, devices --------------------------------------------------------------

    def export(self) -> ExportedState:
        """The state as JSON-able metadata plus tensors (for sync and state dicts)."""
        meta: dict[str, Any] = {
            "kind": self.kind,
            "count": self.count,
            "dtype": None if self._dtype is None else _dtype_name(self._dtype),
        }
        meta.update(self._export_meta())
        return meta, self._state_tensors() if self._has_state() else []

    def _export_meta(self) -> dict[str, Any]:
        return {}

    @abstractmethod
    def _state_tensors(self) -> list[Tensor]:
        """The state tensors (only called when state exists)."""

    @abstractmethod
    def _load_tensors(self, meta: dict[str, Any], tensors: list[Tensor]) -> None:
        """Install state tensors produced by ``_state_tensors``."""

    def load(
        self, meta: dict[str, Any], tensors: list[Tensor], device: torch.device | None
    ) -> None:
        """Replace the state with an exported one, on ``device`` (default: where it is)."""
        found_kind = meta.get("kind") if isinstance(meta, dict) else type(meta).__name__
        if found_kind != self.kind:
            raise StateDictError(
                f"{self.label}: expected a {self.kind!r} state, found {found_kind!r}"
            )
        try:
            count = int(meta["count"])
            dtype = None if meta["dtype"] is None else _dtype_from_name(meta["dtype"])
        except (KeyError, TypeError, ValueError) as error:
            raise StateDictError(
                f"{self.label}: expected 'count' and 'dtype' in the {self.kind!r} state's "
                f"metadata, found {meta!r} ({error})"
            ) from error
        if not all(isinstance(tensor, Tensor) for tensor in tensors):
            found = [type(tensor).__name__ for tensor in tensors]
            raise StateDictError(f"{self.label}: expected state tensors, found {found}")
        self.reset()
        self.count = count
        self._dtype = dtype
        if tensors:
            target = device if device is not None else tensors[0].device
            self._device = target
            try:
                self._load_tensors(meta, [t.to(target) for t in tensors])
            except (ValueError, RuntimeError) as error:
                # A state of the right kind but the wrong layout (edited or from another kind).
                self.reset()
                shapes = [tuple(tensor.shape) for tensor in tensors]
                raise StateDictError(
                    f"{self.label}: the tensors of a {self.kind!r} state do not fit it, "
                    f"found shapes {shapes}: {error}"
                ) from error

    def copy_to(self, device: torch.device) -> Self:
        """A copy of this accumulator with its state on ``device``."""
        meta, tensors = self.export()
        other = type(self)()
        other.label = self.label
        other.load(meta, tensors, device)
        return other

    def to(self, device: torch.device | str) -> None:
        """Move the state to ``device``, in place."""
        device = torch.device(device)
        # Without state there is nothing to move: the state is created where values arrive.
        if self._has_state():
            meta, tensors = self.export()
            self.load(meta, tensors, device)

    def state_dict(self) -> dict[str, Any]:
        """A ``torch.save``-able state: ``{'meta': ..., 'tensors': [...]}``."""
        meta, tensors = self.export()
        return {"meta": meta, "tensors": tensors}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state produced by :meth:`state_dict`."""
        try:
            meta, tensors = state["meta"], list(state["tensors"])
        except (KeyError, TypeError) as error:
            raise StateDictError(
                f"{self.label}: expected a dict with 'meta' and 'tensors', found {state!r}"
            ) from error
        self.load(meta, tensors, None)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(label={self.label!r}, count={self.count})"


class Sum(Accumulator):
    """Running sum with a compensated float64 state and O(1) memory.

    A per-sample vector adds its entries; a scalar is added as it is (a batch
    total, such as a count of correct predictions). ``reduce`` returns the
    sum in the input's floating dtype.

    Example:
        >>> import torch
        >>> from torchtally.aggregation import Sum
        >>> acc = Sum()
        >>> acc.add(torch.tensor([1, 0, 1]), 3)
        >>> acc.add(torch.tensor(5), 10)
        >>> acc.reduce()
        tensor(7.)
    """

    kind: ClassVar[str] = "sum"
    scale_scalars: ClassVar[bool] = False

    def __init__(self) -> None:
        super().__init__()
        # high and low words of a compensated sum: value == high + low, |low| << |high|
        self._high: Tensor | None = None
        self._low: Tensor | None = None

    @override
    def _fold(self, values: list[Tensor], sizes: list[int]) -> None:
        vectors = [value for value in values if value.ndim]
        total: Tensor | None = None
        if vectors:
            joined = self._join(vectors, stack=False)
            total = joined.sum(dtype=_wide_dtype(joined.device))
        if len(vectors) < len(values):
            stacked = self._join([value for value in values if not value.ndim], stack=True)
            wide = _wide_dtype(stacked.device)
            stacked = stacked.to(wide)
            if self.scale_scalars:
                weights = [
                    size for value, size in zip(values, sizes, strict=True) if not value.ndim
                ]
                stacked = stacked * torch.tensor(weights, dtype=wide, device=stacked.device)
            total = stacked.sum() if total is None else total + stacked.sum()
        assert total is not None
        self._add_compensated(total, torch.zeros_like(total))

    def _add_compensated(self, high: Tensor, low: Tensor) -> None:
        if self._high is None or self._low is None:
            self._high, self._low = high.clone(), low.clone()
            return
        # Knuth's TwoSum: the rounding error of high + self._high, recovered exactly.
        total = self._high + high
        virtual = total - self._high
        error = (self._high - (total - virtual)) + (high - virtual)
        self._low = self._low + low + error
        self._high = total

    @override
    def _merge_state(self, other: Self) -> None:
        if other._high is None or other._low is None:
            return
        self._add_compensated(other._high, other._low)

    @override
    def _has_state(self) -> bool:
        return self._high is not None

    def _total(self) -> Tensor:
        assert self._high is not None and self._low is not None
        return self._high + self._low

    @override
    def reduce(self) -> Tensor:
        if self._high is None:
            return self._nan()
        return self._total().to(self._result_dtype())

    @override
    def _state_tensors(self) -> list[Tensor]:
        assert self._high is not None and self._low is not None
        return [torch.stack([self._high, self._low])]

    @override
    def _load_tensors(self, meta: dict[str, Any], tensors: list[Tensor]) -> None:
        (pair,) = tensors
        if pair.shape != (2,):
            raise ValueError(f"expected one tensor of shape (2,), found {tuple(pair.shape)}")
        self._high, self._low = pair[0].clone(), pair[1].clone()


class Mean(Sum):
    """Batch-weighted mean with a compensated float64 state and O(1) memory.

    A per-sample vector adds ``sum(values)`` with weight ``B``; a scalar (a batch
    mean) adds ``value * B`` with weight ``B``. So the mean over any split into
    batches equals the mean over the concatenated data.

    Example:
        >>> import torch
        >>> from torchtally.aggregation import Mean
        >>> acc = Mean()
        >>> acc.add(torch.tensor(2.0), 4)      # mean 2 over 4 samples
        >>> acc.add(torch.tensor([5.0]), 1)    # one sample of value 5
        >>> acc.reduce()
        tensor(2.6000)
    """

    kind: ClassVar[str] = "mean"
    scale_scalars: ClassVar[bool] = True

    @override
    def reduce(self) -> Tensor:
        if self._high is None or self.count == 0:
            return self._nan()
        return (self._total() / self.count).to(self._result_dtype())


class _Extremum(Accumulator):
    """Shared machinery of :class:`Min` and :class:`Max`."""

    def __init__(self) -> None:
        super().__init__()
        self._value: Tensor | None = None

    @staticmethod
    @abstractmethod
    def _pick(a: Tensor, b: Tensor) -> Tensor:
        """The elementwise extremum of two tensors."""

    @staticmethod
    @abstractmethod
    def _reduce_all(values: Tensor) -> Tensor:
        """The extremum of a 1-d tensor."""

    @override
    def _fold(self, values: list[Tensor], sizes: list[int]) -> None:
        vectors = [value for value in values if value.ndim]
        candidates = [self._reduce_all(self._join(vectors, stack=False))] if vectors else []
        if len(vectors) < len(values):
            scalars = [value for value in values if not value.ndim]
            candidates.append(self._reduce_all(self._join(scalars, stack=True)))
        if self._value is not None:
            candidates.append(self._value)
        extremum = candidates[0]
        for candidate in candidates[1:]:
            dtype = torch.promote_types(extremum.dtype, candidate.dtype)
            extremum = self._pick(extremum.to(dtype), candidate.to(dtype))
        self._value = extremum

    @override
    def _merge_state(self, other: Self) -> None:
        if other._value is None:
            return
        if self._value is None:
            self._value = other._value.clone()
            return
        dtype = torch.promote_types(self._value.dtype, other._value.dtype)
        self._value = self._pick(self._value.to(dtype), other._value.to(dtype))

    @override
    def _has_state(self) -> bool:
        return self._value is not None

    @override
    def reduce(self) -> Tensor:
        if self._value is None:
            return self._nan()
        return self._value.to(self._result_dtype())

    @override
    def _state_tensors(self) -> list[Tensor]:
        assert self._value is not None
        return [self._value.reshape(1)]

    @override
    def _load_tensors(self, meta: dict[str, Any], tensors: list[Tensor]) -> None:
        (value,) = tensors
        self._value = value.reshape(()).clone()


class Min(_Extremum):
    """Smallest value seen (over every sample of per-sample vectors).

    Example:
        >>> import torch
        >>> from torchtally.aggregation import Min
        >>> acc = Min()
        >>> acc.add(torch.tensor([3.0, -1.0]), 2)
        >>> acc.add(torch.tensor(0.5), 8)
        >>> acc.reduce()
        tensor(-1.)
    """

    kind: ClassVar[str] = "min"

    @staticmethod
    @override
    def _pick(a: Tensor, b: Tensor) -> Tensor:
        return torch.minimum(a, b)

    @staticmethod
    @override
    def _reduce_all(values: Tensor) -> Tensor:
        return values.amin()


class Max(_Extremum):
    """Largest value seen (over every sample of per-sample vectors).

    Example:
        >>> import torch
        >>> from torchtally.aggregation import Max
        >>> acc = Max()
        >>> acc.add(torch.tensor([3.0, -1.0]), 2)
        >>> acc.reduce()
        tensor(3.)
    """

    kind: ClassVar[str] = "max"

    @staticmethod
    @override
    def _pick(a: Tensor, b: Tensor) -> Tensor:
        return torch.maximum(a, b)

    @staticmethod
    @override
    def _reduce_all(values: Tensor) -> Tensor:
        return values.amax()


class Cat(Accumulator):
    """Keeps every value, concatenated along the batch dimension.

    For metrics that need all predictions at once (AUROC, median, ...).
    Values may have trailing dimensions (``(B, C)`` scores); a scalar is kept
    as one row. Memory grows with the data: use it only where a bounded
    accumulator cannot give the right answer. ``reduce`` returns the
    concatenated tensor in the values' own dtype.

    Example:
        >>> import torch
        >>> from torchtally.aggregation import Cat
        >>> acc = Cat()
        >>> acc.add(torch.tensor([0.1, 0.9]), 2)
        >>> acc.add(torch.tensor([0.4]), 1)
        >>> acc.reduce()
        tensor([0.1000, 0.9000, 0.4000])
    """

    kind: ClassVar[str] = "cat"

    def __init__(self) -> None:
        super().__init__()
        self._values: Tensor | None = None

    @override
    def prepare(self, value: Tensor, batch_size: int) -> Tensor:
        value = value.detach()
        if value.ndim == 0 or value.shape[0] == batch_size:
            return value
        raise ResultShapeError(
            f"{self.label}: expected a scalar or values with leading dimension {batch_size} "
            f"for a batch of {batch_size}, found shape {tuple(value.shape)}"
        )

    @override
    def _rows(self, values: list[Tensor], sizes: list[int]) -> int:
        return sum(value.shape[0] if value.ndim else 1 for value in values)

    @override
    def _fold(self, values: list[Tensor], sizes: list[int]) -> None:
        rows = [value.reshape(1) if value.ndim == 0 else value for value in values]
        trailing = {tuple(row.shape[1:]) for row in rows}
        if self._values is not None:
            trailing.add(tuple(self._values.shape[1:]))
        if len(trailing) > 1:
            raise ResultShapeError(
                f"{self.label}: values must share their trailing shape to be concatenated, "
                f"found {sorted(trailing)}"
            )
        joined = self._join(rows, stack=False)
        if self._values is not None:
            dtype = torch.promote_types(self._values.dtype, joined.dtype)
            joined = torch.cat([self._values.to(dtype), joined.to(dtype)])
        self._values = joined

    @override
    def _merge_state(self, other: Self) -> None:
        if other._values is None:
            return
        if self._values is None:
            self._values = other._values.clone()
            return
        dtype = torch.promote_types(self._values.dtype, other._values.dtype)
        self._values = torch.cat([self._values.to(dtype), other._values.to(dtype)])

    @override
    def _has_state(self) -> bool:
        return self._values is not None

    @override
    def reduce(self) -> Tensor:
        if self._values is None:
            return torch.empty(0, dtype=self._dtype or torch.get_default_dtype())
        return self._values

    @override
    def _export_meta(self) -> dict[str, Any]:
        return {"trailing": None if self._values is None else list(self._values.shape[1:])}

    @override
    def _state_tensors(self) -> list[Tensor]:
        assert self._values is not None
        return [self._values]

    @override
    def _load_tensors(self, meta: dict[str, Any], tensors: list[Tensor]) -> None:
        (values,) = tensors
        if values.ndim == 0:
            raise ValueError("expected one tensor with a leading (row) dimension, found a 0-d one")
        self._values = values.clone()


ACCUMULATORS: dict[str, type[Accumulator]] = {cls.kind: cls for cls in (Mean, Sum, Min, Max, Cat)}
"""Accumulator classes by ``kind``."""


def accumulator_from_state(
    meta: dict[str, Any], tensors: list[Tensor], device: torch.device | None = None
) -> Accumulator:
    """Rebuild an accumulator from exported metadata and tensors.

    Raises:
        StateDictError: the metadata names no known kind.

    Example:
        >>> import torch
        >>> from torchtally.aggregation import Max, accumulator_from_state
        >>> original = Max()
        >>> original.add(torch.tensor([1.0, 7.0]), 2)
        >>> accumulator_from_state(*original.export()).reduce()
        tensor(7.)
    """
    cls = ACCUMULATORS.get(meta.get("kind", ""))
    if cls is None:
        raise StateDictError(
            f"unknown aggregation kind {meta.get('kind')!r}; expected one of {sorted(ACCUMULATORS)}"
        )
    accumulator = cls()
    accumulator.load(meta, tensors, device)
    return accumulator


def merge_exported(
    states: list[ExportedState], device: torch.device | None, label: str
) -> Accumulator:
    """Merge exported states, in order, into one new accumulator on ``device``.

    ``states`` holds one exported state per rank, in rank order, so every
    process that merges the same states gets bit-identical results. The
    inputs are not changed.

    Raises:
        SyncError: the states disagree on the aggregation kind or, for
            concatenation, on the trailing shape. The message is built from the
            states alone, so every rank raises the same one.

    Example:
        >>> import torch
        >>> from torchtally.aggregation import Mean, merge_exported
        >>> ranks = [Mean(), Mean()]
        >>> ranks[0].add(torch.tensor([1.0, 2.0]), 2)
        >>> ranks[1].add(torch.tensor([6.0]), 1)
        >>> merge_exported([acc.export() for acc in ranks], None, 'example').reduce()
        tensor(3.)
    """
    kinds = [meta.get("kind") for meta, _ in states]
    if len(set(kinds)) > 1:
        found = ", ".join(f"rank {index}: {kind!r}" for index, kind in enumerate(kinds))
        raise SyncError(f"{label}: processes aggregate this value differently ({found})")
    shapes = [meta.get("trailing") for meta, _ in states]
    if len({tuple(shape) for shape in shapes if shape is not None}) > 1:
        found = ", ".join(
            f"rank {index}: {shape}" for index, shape in enumerate(shapes) if shape is not None
        )
        raise SyncError(f"{label}: concatenated values have different trailing shapes ({found})")
    merged = accumulator_from_state(*states[0], device=device)
    merged.label = label
    for meta, tensors in states[1:]:
        merged.merge(accumulator_from_state(meta, tensors, device=device))
    return merged

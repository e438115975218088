"""A property sweep of the exactness promise (docs/aggregation.md).

For every aggregation kind, every input dtype of the precision table, every
weight form (none, a number, a 0-d tensor, a ``(B,)`` tensor with zeros) and
value form (per-sample ``(B,)``, or a 0-d batch mean or batch total), fed in
random batches (uneven, of size 1 and 0, of irregular sizes, many enough to
fold, with the queue's bounds made small to force folds), with ``reset()``,
``compute()``, checkpoints, ``copy()``, pickling and ``merge_state`` in
between: ``compute()`` equals an independent reference on the concatenated
data (exact integers and fractions, rounded once to the dtype the table
names, within the documented float64 rounding of a fold), infinities and
NaN propagating as torch propagates them. ``Metric``, ``MetricCollection``
(several names, kinds and dtypes in one objective), a concatenating
``Objective`` and losses (the combined value is the weighted mean of what
``forward`` returned) are swept.
"""

from __future__ import annotations

import functools
import math
import pickle
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from torch import Tensor
from typing_extensions import override

import torchtally as tt
from torchtally.errors import WeightError
from torchtally.objectives import _queue

FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
INTEGERS = (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
KINDS = ("mean", "sum", "min", "max", "cat")
WEIGHTS = ("none", "number", "tensor0d", "per-sample")
SWEEP = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BOUNDS = st.sampled_from([(256, 1 << 18), (3, 1 << 18), (256, 8), (2, 5)])
"""(PENDING_BATCHES, PENDING_ELEMENTS): the defaults, and bounds that force folds."""


@contextmanager
def queue_bounds(batches: int, elements: int) -> Iterator[None]:
    """Make the pending queue fold after ``batches`` batches or ``elements`` elements."""
    saved = _queue.PENDING_BATCHES, _queue.PENDING_ELEMENTS
    _queue.PENDING_BATCHES, _queue.PENDING_ELEMENTS = batches, elements
    try:
        yield
    finally:
        _queue.PENDING_BATCHES, _queue.PENDING_ELEMENTS = saved


# -- what is fed ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One named value: its aggregation, form (``'vector'`` or ``'scalar'``) and dtypes."""

    kind: str
    form: str
    dtypes: tuple[torch.dtype, ...]


@dataclass
class Batch:
    """One batch: a value per entry (``(B,)``, or 0-d for ``size`` samples) and its weight."""

    values: tuple[Any, ...]  # tensors, or Python numbers
    size: int
    weight: Any  # None, a number, a 0-d tensor or a (B,) tensor

    def call(self, objective: Any) -> Any:
        targets = torch.zeros(self.size)
        if self.weight is None:
            return objective.update(self.values, targets)
        return objective.update(self.values, targets, weight=self.weight)

    def entry_weights(self, scalar: bool) -> list[Fraction]:
        """Each entry's weight, exactly (a scalar batch mean is one entry of the batch's weight)."""
        size, weight = self.size, self.weight
        if scalar:
            if weight is None:
                return [Fraction(size)]
            if isinstance(weight, Tensor):
                return [sum(map(Fraction, weight.reshape(-1).tolist()), Fraction(0))]
            return [Fraction(weight)]
        if weight is None:
            return [Fraction(1)] * size
        if isinstance(weight, Tensor) and weight.ndim == 1:
            return [Fraction(w) for w in weight.tolist()]
        return [Fraction(float(weight)) / size] * size

    def negative(self) -> bool:
        """Whether some weight is negative (a tensor's: a negative number is refused)."""
        return isinstance(self.weight, Tensor) and bool((self.weight < 0).any())


@dataclass(frozen=True)
class Pick:
    """The callable of entry ``index``: its value, from the outputs."""

    index: int

    def __call__(self, outputs: Sequence[Tensor], targets: Tensor) -> Tensor:
        return outputs[self.index]


class Kept(tt.Objective[Any, Tensor]):
    """Concatenates every entry's values (the ``'cat'`` aggregation), reported as they are."""

    aggregation = "cat"

    @override
    def calculate(self, outputs: Any, targets: Tensor) -> dict[str, Tensor]:
        return {f"V{index}": value for index, value in enumerate(outputs)}


def values_strategy(dtype: torch.dtype, size: int, specials: bool) -> st.SearchStrategy[Tensor]:
    """``size`` values of ``dtype`` (infinities and NaN only where ``specials``)."""
    if dtype == torch.bool:
        element: st.SearchStrategy[Any] = st.booleans()
    elif not dtype.is_floating_point:
        info = torch.iinfo(dtype)
        extremes = st.sampled_from([info.min, info.max, info.min + 1, info.max - 1])
        small = st.integers(max(-3, info.min), 3)
        element = st.one_of(small, st.integers(info.min, info.max), extremes)
    else:
        small = st.integers(-8, 8).map(float)
        if dtype == torch.bfloat16:  # rounded to bfloat16 by torch
            finite = st.floats(-1e30, 1e30)
        else:
            width = {torch.float16: 16, torch.float32: 32}.get(dtype, 64)
            bound = 1e300 if width == 64 else None  # float64 sums overflow as float64's do
            low = None if bound is None else -bound
            finite = st.floats(low, bound, width=width, allow_nan=False, allow_infinity=False)  # type: ignore[arg-type]
        element = st.one_of(small, finite)
        if specials:
            element = st.one_of(element, st.sampled_from([math.inf, -math.inf, math.nan]))
    return st.lists(element, min_size=size, max_size=size).map(
        lambda items: torch.tensor(items, dtype=dtype)
    )


SCALAR_SHAPES = {"scalar": (), "one": (1,), "odd": (1, 1)}
"""The shapes of a one-element value, by form (``'number'``: a Python number)."""
WEIGHT_NUMBERS = st.sampled_from([0, 1, 2, 3, 0.5, 0.25, 1.5, 7])


@st.composite
def weight_strategy(draw: st.DrawFn, kind: str, size: int) -> Any:
    """A weight of the form ``kind`` for a batch of ``size`` samples.

    A tensor weight is now and then negative (it cannot be refused: it makes means and
    sums NaN, and leaves its value out of minima and maxima).
    """
    if kind == "none":
        return None
    if kind == "number":
        return draw(WEIGHT_NUMBERS)
    numbers = (
        st.one_of(WEIGHT_NUMBERS, st.just(-1)) if draw(st.integers(0, 7)) == 0 else WEIGHT_NUMBERS
    )
    dtype = draw(st.sampled_from([torch.float64, torch.float32, torch.float16, torch.int64]))
    if kind == "tensor0d":
        return torch.tensor(draw(numbers), dtype=torch.float64).to(dtype)
    found = draw(st.lists(numbers, min_size=size, max_size=size))
    return torch.tensor(found, dtype=torch.float64).to(dtype)


@st.composite
def batches(draw: st.DrawFn, entries: Sequence[Entry], weights: str, specials: bool) -> list[Batch]:
    """Random batches: uneven sizes, sizes 1 and 0 included."""
    size = st.one_of(st.integers(1, 6), st.just(1), st.just(0))
    found = []
    for count in draw(st.lists(size, min_size=1, max_size=14)):
        values = []
        for entry in entries:
            dtype = draw(st.sampled_from(entry.dtypes))
            drawn = draw(values_strategy(dtype, count if entry.form == "vector" else 1, specials))
            if entry.form == "number":  # a Python number (its tensor's dtype: its type)
                values.append(drawn.item())
            else:  # a one-element tensor of any shape is a scalar
                values.append(drawn.reshape(SCALAR_SHAPES.get(entry.form, (-1,))))
        found.append(Batch(tuple(values), count, draw(weight_strategy(weights, count))))
    return found


# -- the reference --------------------------------------------------------------------------

_HOLDING = {torch.int16: torch.float32, torch.int32: torch.float64, torch.int64: torch.float64}


def promoted(first: torch.dtype | None, second: torch.dtype) -> torch.dtype:
    """docs/aggregation.md#precision: torch's promotion, integers joining floats held exactly."""
    if first is None:
        return second
    found = torch.promote_types(first, second)
    if found.is_floating_point and first.is_floating_point != second.is_floating_point:
        integer = first if second.is_floating_point else second
        found = torch.promote_types(found, _HOLDING.get(integer, found))
    return found


def report_dtype(kind: str, dtype: torch.dtype) -> torch.dtype:
    """The table of docs/aggregation.md#precision (``dtype``: the inputs', promoted)."""
    if kind == "cat" or dtype == torch.float64:
        return dtype
    if dtype.is_floating_point:
        return torch.float32
    return torch.float64 if kind == "mean" else torch.int64


def dtype_of(value: Any) -> torch.dtype:
    """A value's dtype: Python floats count as float64, ints as int64 (docs/aggregation.md)."""
    if isinstance(value, Tensor):
        return value.dtype
    return {bool: torch.bool, int: torch.int64, float: torch.float64}[type(value)]


def exact(value: Any) -> Fraction | int | float:
    """A value exactly: an int, a Fraction, or a non-finite float."""
    if not dtype_of(value).is_floating_point:
        return int(value)
    number = float(value)
    return Fraction(number) if math.isfinite(number) else number


@dataclass
class Expected:
    """The reference value (an int, a Fraction, or NaN/inf), its dtype and a float64 slack."""

    value: Any
    dtype: torch.dtype | None  # None: NaN of no particular dtype (nothing was included)
    slack: Fraction = Fraction(0)


def reference(entry: Entry, index: int, fed: Sequence[Batch]) -> Expected:
    """What ``compute()`` reports for ``entry`` after ``fed``, from the concatenated data."""
    kind = entry.kind
    counted = [batch for batch in fed if batch.size]  # an empty batch changes nothing
    dtype: torch.dtype | None = None
    for batch in counted:
        found = dtype_of(batch.values[index])
        if kind == "sum" and batch.weight is not None and not found.is_floating_point:
            found = torch.float64  # a weighted integer is no longer an integer
        dtype = promoted(dtype, found)
    if dtype is None:  # nothing seen: NaN, or no values at all for a concatenation
        if kind == "cat":
            return Expected(torch.empty(0), torch.get_default_dtype())
        return Expected(math.nan, None)
    pairs: list[tuple[Any, Fraction]] = []
    for batch in counted:
        value, one = batch.values[index], scalar(entry, batch)
        items = [value] if one else list(value)
        weights = batch.entry_weights(one)
        if kind == "sum" and one:
            weights = [Fraction(1)]  # a batch total (a weighted one is refused)
        elif one and batch.negative():  # its weight (the sum) is NaN
            weights = [Fraction(-1)]
        pairs += [(exact(item), weight) for item, weight in zip(items, weights, strict=True)]
    if kind == "cat":
        joined = torch.cat([batch.values[index].reshape(-1).to(dtype) for batch in counted])
        return Expected(joined, dtype)
    kept = [(value, weight) for value, weight in pairs if weight > 0]
    reported = report_dtype(kind, dtype)
    if kind in ("min", "max"):
        if not kept:
            return Expected(math.nan, reported if dtype.is_floating_point else None)
        values = [value for value, _ in kept]
        if any(isinstance(value, float) and math.isnan(value) for value in values):
            return Expected(math.nan, reported)
        return Expected(min(values) if kind == "min" else max(values), reported)
    if any(weight < 0 for _, weight in pairs):  # a negative tensor weight: NaN, documented
        return Expected(math.nan, reported)
    if not kept and kind == "mean":  # all weights 0
        return Expected(math.nan, reported)
    infinite = [value for value, _ in kept if isinstance(value, float)]
    if infinite:  # as torch: inf stays inf; inf and -inf, or NaN, give NaN
        return Expected(sum(infinite, 0.0), reported)
    total = sum((value * weight for value, weight in kept), Fraction(0))
    # A fold adds its batches up in plain float64 (documented): allow that rounding.
    slack = sum((abs(value * weight) for value, weight in kept), Fraction(0))
    slack *= Fraction(len(kept) + 4, 2**52)
    if kind == "sum":
        if reported == torch.int64:
            assert total.denominator == 1
            number = int(total)
            if not -(2**63) <= number < 2**63:  # outside int64: float64, rounded once
                return Expected(total, torch.float64)
            return Expected(number, torch.int64)
        return Expected(total, reported, slack)
    mass = sum((weight for _, weight in kept), Fraction(0))
    return Expected(total / mass, reported, slack / mass)


_PRECISION = {torch.float16: 11, torch.bfloat16: 8, torch.float32: 24, torch.float64: 53}


def half_ulp(number: float, dtype: torch.dtype) -> Fraction:
    """Half a unit in the last place of ``number`` in ``dtype`` (subnormals included)."""
    lowest = math.frexp(torch.finfo(dtype).tiny)[1]
    exponent = math.frexp(number)[1] if number else lowest
    return Fraction(2) ** (max(exponent, lowest) - _PRECISION[dtype] - 1)


def check(expected: Expected, found: Tensor, where: str) -> None:
    """``found`` is the reference, in its dtype, rounded once (within the fold's slack)."""
    if expected.dtype is not None:
        assert found.dtype == expected.dtype, f"{where}: {found.dtype}, expected {expected.dtype}"
    value = expected.value
    if isinstance(value, Tensor):  # a concatenation: exactly the values
        assert found.shape == value.shape, f"{where}: {found} expected {value}"
        assert torch.equal(found.isnan(), value.isnan()), f"{where}: {found} expected {value}"
        assert torch.equal(found.nan_to_num(0.0), value.nan_to_num(0.0)), f"{where}: {found}"
        return
    assert found.ndim == 0, where
    if isinstance(value, float):  # NaN or an infinity
        if math.isnan(value):
            assert math.isnan(float(found)), f"{where}: {found}, expected NaN"
        else:
            assert float(found) == value, f"{where}: {found}, expected {value}"
        return
    if not found.dtype.is_floating_point:
        assert int(found) == value, f"{where}: {int(found)}, expected {value}"
        return
    number = float(found)
    target = Fraction(value)
    allowed = half_ulp(float(target), found.dtype) + 2 * expected.slack
    assert math.isfinite(number) and abs(Fraction(number) - target) <= allowed, (
        f"{where}: {number!r}, expected {float(target)!r} (exactly {target}), off by "
        f"{float(abs(Fraction(number) - target)) if math.isfinite(number) else number}, "
        f"allowed {float(allowed)}"
    )


# -- feeding --------------------------------------------------------------------------------


def scalar(entry: Entry, batch: Batch) -> bool:
    """Whether ``entry``'s value is a scalar in ``batch`` (``(1,)`` in a batch of 1 is not)."""
    return entry.form != "vector" and not (entry.form == "one" and batch.size == 1)


def refused(entries: Sequence[Entry], batch: Batch) -> bool:
    """A weight cannot apply: to a scalar batch total, or to values a concatenation keeps."""
    if batch.weight is None or not batch.size:
        return False
    return any(e.kind == "cat" or (e.kind == "sum" and scalar(e, batch)) for e in entries)


def reads(objective: Any) -> dict[str, Tensor]:
    """``compute()`` (an objective that saw only empty batches warns and reports NaN)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tt.errors.ComputedBeforeUpdatedWarning)
        return dict(objective.compute())


def same(first: dict[str, Tensor], second: dict[str, Tensor]) -> bool:
    return first.keys() == second.keys() and all(
        a.dtype == b.dtype
        and a.shape == b.shape
        and torch.equal(a.isnan(), b.isnan())
        and torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0))
        for a, b in zip(first.values(), second.values(), strict=True)
    )


OPERATIONS = st.sampled_from(
    ["none"] * 8 + ["reset", "compute", "copy", "pickle", "checkpoint", "merge-empty"]
)


def replay(
    make: Callable[[], Any],
    entries: Sequence[Entry],
    fed: Sequence[Batch],
    operations: Sequence[str],
) -> tuple[Any, list[Batch]]:
    """Feed ``fed`` with ``operations`` in between; the objective and what counts since a reset."""
    objective = make()
    counted: list[Batch] = []
    for batch, operation in zip(fed, operations, strict=True):
        if refused(entries, batch):
            before = reads(objective) if counted else None
            with pytest.raises(WeightError):
                batch.call(objective)
            if before is not None:  # a refused call changes nothing
                assert same(reads(objective), before)
        else:
            batch.call(objective)
            counted.append(batch)
        objective, counted = between(objective, operation, make, counted)
    return objective, counted


def between(
    objective: Any, operation: str, make: Callable[[], Any], counted: list[Batch]
) -> tuple[Any, list[Batch]]:
    """Do ``operation`` between two batches; the objective and what counts since a reset."""
    if operation == "reset":
        objective.reset()
        return objective, []
    if operation == "compute" and counted:
        reads(objective)
    elif operation == "copy":
        objective = objective.copy()
    elif operation == "pickle":
        objective = pickle.loads(pickle.dumps(objective))
    elif operation == "checkpoint":
        restored = make()
        restored.load_state_dict(objective.state_dict())
        objective = restored
    elif operation == "merge-empty":
        objective.merge_state(make())
    return objective, counted


def objective_for(entries: Sequence[Entry]) -> Callable[[], Any]:
    """A maker of the objective holding ``entries`` (``V0``, ``V1``, ...)."""
    if entries[0].kind == "cat":
        return Kept
    if len(entries) == 1:
        return lambda: tt.Metric(Pick(0), "V0", aggregation=entries[0].kind)
    return lambda: tt.MetricCollection.from_dict(
        {
            f"V{index}": tt.Metric(Pick(index), aggregation=entry.kind)
            for index, entry in enumerate(entries)
        }
    )


def verify(entries: Sequence[Entry], objective: Any, counted: Sequence[Batch]) -> None:
    if not counted:
        return
    found = reads(objective)
    if not any(batch.size for batch in counted) and not found:
        return  # names learnt from a batch: an empty one teaches none
    for index, entry in enumerate(entries):
        where = f"V{index} {entry}"
        check(reference(entry, index, counted), found[f"V{index}"], where)


# -- the sweep ------------------------------------------------------------------------------

DTYPES = FLOATS + INTEGERS


@st.composite
def entries_strategy(draw: st.DrawFn, most: int, mixed: bool) -> tuple[Entry, ...]:
    """Entries of one objective: a concatenation alone, or bounded kinds."""
    if draw(st.integers(0, 9)) == 0:
        kinds = ["cat"]
    else:
        kinds = draw(st.lists(st.sampled_from(KINDS[:-1]), min_size=1, max_size=most))
    found = []
    for kind in kinds:
        forms = ["vector", "scalar"] if kind == "cat" else ["vector", *SCALAR_SHAPES, "number"]
        form = draw(st.sampled_from(forms))
        count = 2 if mixed else 1
        dtypes = draw(st.lists(st.sampled_from(DTYPES), min_size=1, max_size=count, unique=True))
        found.append(Entry(kind, form, tuple(dtypes)))
    return tuple(found)


@st.composite
def scenarios(draw: st.DrawFn, most: int = 1, mixed: bool = False) -> tuple[Any, ...]:
    entries = draw(entries_strategy(most, mixed))
    weights = draw(st.sampled_from(WEIGHTS))
    specials = draw(st.booleans())
    fed = draw(batches(entries, weights, specials))
    operations = draw(st.lists(OPERATIONS, min_size=len(fed), max_size=len(fed)))
    return entries, fed, operations, draw(BOUNDS)


@SWEEP
@given(scenarios())
def test_a_metric_equals_the_reference(scenario: tuple[Any, ...]) -> None:
    entries, fed, operations, bounds = scenario
    with queue_bounds(*bounds):
        objective, counted = replay(objective_for(entries), entries, fed, operations)
        verify(entries, objective, counted)


@SWEEP
@given(scenarios(most=4, mixed=True))
def test_a_collection_of_kinds_and_dtypes_equals_the_reference(scenario: tuple[Any, ...]) -> None:
    entries, fed, operations, bounds = scenario
    with queue_bounds(*bounds):
        objective, counted = replay(objective_for(entries), entries, fed, operations)
        verify(entries, objective, counted)


@SWEEP
@given(scenarios(most=3, mixed=True), st.data())
def test_merged_halves_equal_the_reference(scenario: tuple[Any, ...], data: st.DataObject) -> None:
    entries, fed, operations, bounds = scenario
    cut = data.draw(st.integers(0, len(fed)))
    make = objective_for(entries)
    with queue_bounds(*bounds):
        left, counted_left = replay(make, entries, fed[:cut], operations[:cut])
        right, counted_right = replay(make, entries, fed[cut:], operations[cut:])
        left.merge_state(right)
        verify(entries, left, counted_left + counted_right)
        right.merge_state(left)  # right's values twice: merging never empties the other
        verify(entries, right, counted_right + counted_left + counted_right)


# -- losses ---------------------------------------------------------------------------------


@st.composite
def loss_scenarios(draw: st.DrawFn) -> tuple[Any, ...]:
    count = draw(st.integers(1, 3))
    entries = tuple(
        Entry(
            "mean",
            draw(st.sampled_from(["vector", "scalar", "number"])),
            (draw(st.sampled_from(FLOATS)),),
        )
        for _ in range(count)
    )
    factors = draw(st.lists(st.sampled_from([1, 0.5, 2, 3]), min_size=count, max_size=count))
    product = count > 1 and draw(st.booleans())  # [L0] x [L1] + ...: a nonlinear formula
    weights = draw(st.sampled_from(WEIGHTS))
    fed = draw(batches(entries, weights, draw(st.booleans())))
    calls = draw(
        st.lists(st.sampled_from(["forward", "update"]), min_size=len(fed), max_size=len(fed))
    )
    operations = draw(st.lists(OPERATIONS, min_size=len(fed), max_size=len(fed)))
    return entries, factors, product, fed, calls, operations, draw(BOUNDS)


def criterion(factors: Sequence[float], product: bool, values: Sequence[Any]) -> Any:
    """The formula written by hand: ``f0 [L0] (x [L1] when product) + f1 [L1] + ...``."""
    terms = [factor * value for factor, value in zip(factors, values, strict=True)]
    if product:
        terms[0] = terms[0] * values[1]
    return sum(terms[1:], terms[0])


def make_loss(entries: Sequence[Entry], factors: Sequence[float], product: bool) -> Any:
    leaves = [tt.Loss(Pick(index), f"L{index}") for index in range(len(entries))]
    return criterion(factors, product, leaves)


@SWEEP
@given(loss_scenarios())
def test_a_loss_combined_value_is_the_weighted_mean_of_its_criterion(
    scenario: tuple[Any, ...],
) -> None:
    entries, factors, product, fed, calls, operations, bounds = scenario
    make = lambda: make_loss(entries, factors, product)  # noqa: E731
    name = make().name
    counted: list[Batch] = []
    with queue_bounds(*bounds):
        loss = make()
        for batch, call, operation in zip(fed, calls, operations, strict=True):
            targets = torch.zeros(batch.size)
            if call == "forward":
                loss.forward(batch.values, targets, weight=batch.weight)
            else:
                loss.update(batch.values, targets, weight=batch.weight)
            counted.append(batch)
            loss, counted = between(loss, operation, make, counted)
        if not any(batch.size for batch in counted):
            return
        found = reads(loss)
    for index, entry in enumerate(entries):
        check(reference(entry, index, counted), found[f"L{index}"], f"L{index} {entry}")
    if name in {f"L{index}" for index in range(len(entries))}:
        return  # one leaf: the loss is its component
    # The combined value: the per-sample criterion (written by hand, in its dtype), averaged.
    pieces = []
    for batch in counted:
        # computed in the widest floating dtype of the components, a Python number counting
        # as the default float dtype (docs/losses.md#precision)
        dtypes = [v.dtype if isinstance(v, Tensor) else torch.float32 for v in batch.values]
        dtype = functools.reduce(torch.promote_types, dtypes)
        # Python numbers stay numbers (docs/losses.md#precision): the hand-written expression
        # multiplies them in Python before any tensor (inf x 1e-224 is inf, not float32's
        # inf x 0 = NaN)
        per_sample = torch.as_tensor(
            criterion(
                factors,
                product,
                [v.to(dtype) if isinstance(v, Tensor) else v for v in batch.values],
            ),
            dtype=dtype,
        )
        values = per_sample.expand(batch.size) if per_sample.ndim == 0 else per_sample
        pieces.append(Batch((values,), batch.size, batch.weight))
    combined = Entry("mean", "vector", tuple({piece.values[0].dtype for piece in pieces}))
    check(reference(combined, 0, pieces), found[name], f"{name} of {entries}")


# -- int64 at its edges ---------------------------------------------------------------------


@SWEEP
@given(
    st.sampled_from(["sum", "sum", "sum", "mean"]),
    st.sampled_from([-(2**63), 2**63 - 1, -(2**63) + 1000, 2**63 - 1000]),
    st.lists(st.sampled_from([-1500, -1025, -1000, -600, 600, 1000, 1025, 1500]), max_size=8),
    st.booleans(),
)
@example("sum", 2**63 - 1, [1500, -1000, -1000], False)  # was off by 2048
@example("sum", -(2**63), [-1025, 1000, 1000], True)  # was off by 2048
def test_int64_near_its_edges_folded_batch_by_batch_is_exact(
    kind: str, edge: int, steps: list[int], merged: bool
) -> None:
    # A fold per batch leaves the two words of a sum unnormalised: near +-2**63 (where a
    # float64 step is 2048) the high word may lie outside int64 while the sum does not.
    entries = (Entry(kind, "vector", (torch.int64,)),)
    fed = [Batch((torch.tensor([value]),), 1, None) for value in (edge, *steps)]
    make = objective_for(entries)
    objective, counted = replay(make, entries, fed, ["compute"] * len(fed))
    if merged:  # the same words, combined by merge_state
        other, _ = replay(make, entries, fed, ["compute"] * len(fed))
        objective.merge_state(other)
        counted = counted + counted
    verify(entries, objective, counted)


def test_a_concatenation_reset_then_given_an_empty_batch_reports_no_values() -> None:
    # Found by the sweep (its reference said NaN): a reset concatenation keeps its name and
    # reports the concatenation of nothing; an empty batch changes nothing.
    kept = Kept()
    kept.update([torch.tensor([1.0], dtype=torch.float16)], torch.zeros(1))
    kept.reset()
    kept.update([torch.zeros(0, dtype=torch.float16)], torch.zeros(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # computed before an update with values
        found = kept.compute()["V0"]
    assert found.shape == (0,) and found.dtype == torch.get_default_dtype()

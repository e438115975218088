"""How a loss evaluates a batch: calls producing several values, the criterion, its batch mean.

The criterion is the compiled expression (:class:`~torchtally.formula.Program`)
run on the batch's component values, per sample, in the widest floating
dtype among them, with the schedules' current values. Everything here runs
before anything is accumulated, and raises the library's errors (naming the
loss and the component) for values the formula cannot combine, so that a
refused batch changes nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from torchtally._conventions import Weight, as_value_tensor, real_number
from torchtally._dtypes import refuse_unheld
from torchtally.aggregation import nan_where_negative
from torchtally.errors import DeviceMismatchError, ResultShapeError, ResultTypeError
from torchtally.formula import Program

_is_compiling = torch.compiler.is_compiling  # looked up once: criterion runs every batch

__all__ = ["MultiCall", "Produced", "batch_value", "criterion", "differentiable_weight"]


class MultiCall:
    """A callable producing several values at once (a ``DictLoss``'s): called once per batch.

    Subclasses implement :meth:`evaluate`; :attr:`declared` lists the names
    known before any batch (so that a process that never sees one still syncs).

    Example:
        >>> from torchtally.losses import MultiCall
        >>> class Both(MultiCall):
        ...     declared = ('Sum', 'Difference')
        ...     def evaluate(self, outputs, targets, owner):
        ...         return {'Sum': outputs + targets, 'Difference': outputs - targets}
        >>> Both().evaluate(3.0, 1.0, 'example')
        {'Sum': 4.0, 'Difference': 2.0}
    """

    declared: tuple[str, ...] = ()

    learns: bool = True
    """Whether the call may produce names besides :attr:`declared` (a dict-valued callable may)."""

    def evaluate(self, outputs: Any, targets: Any, owner: str) -> dict[str, Any]:
        """Every value the call produces for the batch, by name (``owner`` names the loss)."""
        raise NotImplementedError

    def callables(self) -> tuple[Any, ...]:
        """The user callables it calls (what processes that sync must agree on)."""
        return (getattr(self, "fn", self),)

    def summed_name(self) -> str | None:
        """The name of the value it computes as the sum of the others it produces, if any."""
        return None

    def complete(self, values: dict[str, Any], owner: str) -> None:
        """Add the values it derives from others in ``values`` (default: none).

        :meth:`LossBase.criterion <torchtally.LossBase.criterion>` calls it, so
        that a value computed from components (a criterion's) follows theirs.
        """


class Produced:
    """The callable of a component that a :class:`MultiCall` produces under ``key``.

    A loss calls the multi-call once per batch for all its entries; called on
    its own, a ``Produced`` calls it and picks its entry.

    Example:
        >>> from torchtally.losses import MultiCall, Produced
        >>> class Both(MultiCall):
        ...     def evaluate(self, outputs, targets, owner):
        ...         return {'Sum': outputs + targets, 'Difference': outputs - targets}
        >>> Produced(Both(), 'Difference')(3.0, 1.0)
        2.0
    """

    def __init__(self, call: MultiCall, key: str) -> None:
        self.call = call
        self.key = key

    def __call__(self, outputs: Any, targets: Any) -> Any:
        """The value on its own."""
        return self.call.evaluate(outputs, targets, repr(self))[self.key]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Produced) and (self.call, self.key) == (other.call, other.key)

    def __hash__(self) -> int:
        return hash((self.key, id(self.call)))

    def __repr__(self) -> str:
        return f"{self.call!r}[{self.key!r}]"


def criterion(
    program: Program, values: Mapping[str, Any], factors: Sequence[Tensor], owner: str
) -> Tensor:
    """The expression on a batch's component values, in their widest floating dtype, a tensor.

    Tensor components are brought to the widest floating dtype among them, a
    Python number or an integer tensor of 16 bits or more counting as the
    default float dtype (a float16 component beside a count of 70000 does not
    overflow; integer and boolean tensors are brought there too), and so are
    the schedules' values; Python-number components are evaluated as numbers
    and the result made a tensor of the default float dtype (as
    :func:`batch_value` returns it from ``forward``, so the epoch value is the
    mean of what was returned), unless the arithmetic on them fails (``1 / 0.0``,
    an overflow, a complex power), in which case they are evaluated as tensors,
    which give inf or nan as they would for the same values returned as tensors.

    Args:
        program: the compiled expression.
        values: the batch's values by name (every component among them).
        factors: the schedules' current values, in the order of ``program.factors``.
        owner: how errors name the loss.

    Raises:
        ResultTypeError: a component is missing, complex, or neither a tensor nor a real number.
        ResultShapeError: the component values do not broadcast together.
        DeviceMismatchError: the component values are on several devices.

    Example:
        >>> import torch
        >>> from torchtally.formula import Component, Constant, Operation, compile_expression
        >>> program = compile_expression(Operation('*', Constant(2), Component('Hits')))
        >>> criterion(program, {'Hits': torch.tensor([1, 3])}, [], 'example')
        tensor([2., 6.])
    """
    try:
        components = list(map(values.__getitem__, program.names))  # no comprehension frame
    except KeyError as error:
        raise ResultTypeError(
            f"{owner}: no value for the component {error.args[0]!r}; the callables returned "
            f"{sorted(values)}"
        ) from None
    dtype = shared = _one_floating_dtype(components)  # the common case, checked cheaply
    if shared is None:
        components, dtype = in_common_dtype(components, program.names, owner)
    if dtype is not None and factors:
        factors = [factor.to(dtype) for factor in factors]
    if _is_compiling():
        # torch's broadcast error stops the compiler with its own error instead of reaching
        # the except below; checked on the shapes while tracing, it costs the graph nothing
        _check_broadcast(program.names, components, owner)
    try:
        result = program.run_list(components, factors)
    except (ZeroDivisionError, OverflowError):
        result = None  # Python numbers only: evaluated as tensors below
    except RuntimeError as error:
        raise _combine_error(program.names, components, error, owner) from error
    if shared is not None and result is not None:  # real floating tensors: the result is too
        return result  # type: ignore[no-any-return]
    complex_result = type(result) is complex or (type(result) is Tensor and result.is_complex())
    float_dtype = dtype or torch.get_default_dtype()
    if result is None or complex_result:
        components = [
            value if isinstance(value, Tensor) else torch.tensor(value, dtype=float_dtype)
            for value in components
        ]
        result = program.run_list(components, factors)
    return result if isinstance(result, Tensor) else torch.tensor(result, dtype=float_dtype)


def _one_floating_dtype(components: list[Any]) -> torch.dtype | None:
    """The dtype of the components if all are tensors of one floating dtype, else ``None``."""
    if not components or type(components[0]) is not Tensor:
        return None
    dtype = components[0].dtype
    if not dtype.is_floating_point:
        return None
    for value in components:
        if type(value) is not Tensor or value.dtype is not dtype:
            return None
    return dtype


def _check_broadcast(names: tuple[str, ...], components: list[Any], owner: str) -> None:
    """Raise the library's error for tensor components whose shapes do not broadcast.

    Written out on the shapes, not ``torch.broadcast_shapes``: dynamo runs a torch
    function as a graph node, whose error stops the compiler before this one is raised.
    """
    shapes = [value.shape for value in components if isinstance(value, Tensor)]
    width = 0
    for shape in shapes:
        width = max(width, len(shape))
    for axis in range(1, width + 1):
        size = 1
        for shape in shapes:
            if len(shape) >= axis and shape[-axis] != 1:
                if size != 1 and shape[-axis] != size:
                    error = RuntimeError(f"sizes {size} and {shape[-axis]} at dimension {-axis}")
                    raise _combine_error(names, components, error, owner)
                size = shape[-axis]


def _combine_error(
    names: tuple[str, ...], components: list[Any], error: RuntimeError, owner: str
) -> Exception:
    """The library's error for component values the formula could not combine."""
    for name, value in zip(names, components, strict=True):
        if isinstance(value, Tensor) and not value.is_complex():
            refuse_unheld(value.dtype, owner, name)  # float8 arithmetic is not implemented
    devices = {
        str(value.device)
        for value in components
        if isinstance(value, Tensor) and (value.ndim or value.device.type != "cpu")
    }
    if len(devices) > 1:
        return DeviceMismatchError(
            f"{owner}: the component values are on several devices ({sorted(devices)}); "
            f"return every component on one device"
        )
    shapes = {
        name: tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        for name, value in zip(names, components, strict=True)
    }
    reason = str(error).partition("\n")[0]  # torch.compile's errors add pages of advice
    return ResultShapeError(
        f"{owner}: the formula cannot combine the component values of shapes {shapes}; "
        f"components are per-sample values of shape (B,) or scalars ({reason})"
    )


def common_dtype(values: list[Any], names: tuple[str, ...], owner: str) -> torch.dtype | None:
    """The widest floating dtype among the components, integers counting as the default float.

    Python numbers and integer tensors of 16 bits or more count as the default
    float dtype (booleans and 8-bit integers fit every float dtype); the
    default float dtype too when only integer or boolean tensors are found.

    Numbers that are not Python's own (NumPy scalars, fractions, bools)
    become ``int`` or ``float`` in ``values``; anything else is refused.

    Raises:
        ResultTypeError: a value is complex, an integer outside int64, or
            neither a tensor nor a real number.

    Example:
        >>> import torch
        >>> from torchtally.losses._evaluation import common_dtype
        >>> values = [torch.ones(2, dtype=torch.bfloat16), torch.ones(2), True]
        >>> common_dtype(values, ('A', 'B', 'C'), 'example'), values[2]
        (torch.float32, 1)
    """
    found: torch.dtype | None = None
    integral = False
    for index, value in enumerate(values):
        if isinstance(value, Tensor):
            dtype = value.dtype
            if dtype.is_complex:
                as_value_tensor(value, owner, names[index])  # raises, naming the component
            refuse_unheld(dtype, owner, names[index])  # torch cannot promote float8 types
            if dtype.is_floating_point:
                found = dtype if found is None else torch.promote_types(found, dtype)
                continue
            integral = True
            if dtype.itemsize == 1:  # bool, int8, uint8: every float dtype holds them
                continue
            # int16 and wider count as the default float, as Python ints do: a float16
            # component beside a count of 70000 would overflow
        elif type(value) is not float:  # a Python number, bool and int included: as if
            values[index] = _python_number(value, owner, names[index])  # in the default float
        default = torch.get_default_dtype()
        found = default if found is None else torch.promote_types(found, default)
    if found is None and integral:
        return torch.get_default_dtype()
    return found


def in_common_dtype(
    values: list[Any], names: tuple[str, ...], owner: str
) -> tuple[list[Any], torch.dtype | None]:
    """``values`` with their tensors in :func:`common_dtype`, and that dtype.

    Raises:
        ResultTypeError: see :func:`common_dtype`.
    """
    dtype = common_dtype(values, names, owner)
    if dtype is not None:
        values = [
            value.to(dtype) if type(value) is Tensor and value.dtype != dtype else value
            for value in values
        ]
    return values, dtype


def _python_number(value: Any, owner: str, name: str) -> int | float:
    """A number a component returned, as a Python ``int`` or ``float`` (a boolean as 0 or 1)."""
    number = real_number(value, owner, name)  # the rule values follow, in one place
    return int(number) if isinstance(number, bool) else number


def batch_value(criterion: Any, weight: Weight) -> Tensor:
    """The batch mean of the criterion, weighted by per-sample weights if there are some.

    A criterion that is not floating (a loss made of one integer or boolean
    component, or a Python number) is brought to the default float dtype.
    The result has the criterion's floating dtype. Per-sample weights are
    normalised to sum to 1 in float32 (or the criterion's dtype, if wider)
    before they meet the values, and the weighted sum is taken in that dtype:
    float16 values with weights summing beyond 65504 (1000 per sample in a
    batch of 128) give their mean, not ``inf / inf``. All device work, no
    host sync; a value of weight 0 is left out (NaN or infinite too, as the epoch
    value leaves it out); weights that all are 0, a batch weight of 0 (a number or a 0-d
    tensor: the batch's total) and an empty batch give NaN, as the
    hand-written mean does, also for a criterion that is one number for the
    batch (otherwise that number, exactly, keeping the graph of weights that
    require grad: their gradient is 0). A tensor weight below 0 gives NaN, as
    it makes the epoch value NaN (it is never read on the host to be refused).

    Example:
        >>> import torch
        >>> batch_value(torch.tensor([1.0, 3.0]), torch.tensor([3.0, 1.0]))
        tensor(1.5000)
        >>> batch_value(torch.tensor([1, 2]), None)
        tensor(1.5000)
        >>> half = torch.ones(128, dtype=torch.float16)
        >>> batch_value(half, torch.full((128,), 1000))
        tensor(1., dtype=torch.float16)
    """
    value: Tensor = (
        criterion
        if type(criterion) is Tensor
        else torch.as_tensor(criterion, dtype=torch.get_default_dtype())
    )
    if not value.dtype.is_floating_point:
        value = value.to(torch.get_default_dtype())
    if not (isinstance(weight, Tensor) and weight.ndim == 1):
        mean = value if value.ndim == 0 else value.mean()
        if weight is None:
            return mean
        # A batch weight scales the batch, not its mean; one of 0 leaves nothing to average:
        # NaN, as (B,) weights summing to 0 give. A tensor's root r (NaN below 0, as the epoch
        # value is then) gives r / r, exactly 1 for any w > 0 (r is never subnormal).
        if isinstance(weight, Tensor):
            root = weight.sqrt()
            return mean * (root / root).to(mean.dtype)
        if _is_compiling():
            # No branch on the number, which would add a graph for 0: 0 x inf is NaN, w x inf
            # is inf for any w > 0, and min() keeps its first argument when it is NaN.
            return mean * min(weight * math.inf, 1.0)
        return mean if weight else mean * math.nan  # eager: a host number, no tensor op
    wide = torch.promote_types(value.dtype, torch.float32)
    weights = nan_where_negative(weight.to(wide))  # as the epoch value: see batch_weight
    if value.ndim == 0:
        # one number for the batch: its weighted mean is the number times total / total,
        # exactly 1 (so the value is exact), NaN for weights summing to 0 or for no sample, as
        # the hand-written mean; weights that require grad keep their graph (gradient 0)
        total = weights.sum()
        return value * (total / total).to(value.dtype)
    if not value.shape[0]:
        return value.mean()  # an empty batch: NaN, where the normalised empty sum would give 0
    # A value of weight 0 is left out, as the epoch value leaves it out: NaN x 0 would be NaN
    # (an image whose pixels are all ignored). Zeroed before the product, so that weights
    # summing to 0 (normalised to NaN) still give NaN. Weights that require grad keep a
    # finite value there: d/dw of the mean at w = 0 is (value - mean) / total, as by hand.
    wide_value = value.to(wide)
    if weights.requires_grad:
        finite = wide_value.nan_to_num(0.0, 0.0, 0.0)
        kept = torch.where(weights == 0, finite, wide_value)
    else:
        kept = wide_value.masked_fill(weights == 0, 0.0)
    return (kept * (weights / weights.sum())).sum().to(value.dtype)


def differentiable_weight(given: Any, checked: Weight) -> Weight:
    """The per-sample weights the returned batch value is taken with.

    ``checked`` is ``given`` after :func:`~torchtally._conventions.batch_weight`
    (detached: it goes into the state). A ``(B,)`` tensor that requires grad
    is used as given, so that the returned value keeps its graph (the
    gradient with respect to the weights is that of ``(v * w).sum() / w.sum()``);
    otherwise ``checked``, at the cost of one attribute read.

    Example:
        >>> import torch
        >>> given = torch.ones(2, requires_grad=True)
        >>> differentiable_weight(given, given.detach()) is given
        True
    """
    if isinstance(given, Tensor) and given.requires_grad and isinstance(checked, Tensor):
        return given if checked.ndim == 1 else checked
    return checked

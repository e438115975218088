"""How big a batch is and what it weighs: the rules of ``weight=``, written once.

:func:`batch_size` reads the number of samples from the targets (then the
outputs); :func:`batch_weight` checks a ``weight=`` and brings it to one of
the forms of :data:`Weight`; :func:`size_and_weight` does both, as every
``update`` does; :func:`shared_weight_fn` refuses values joined into one
objective with different weight callables. Named in
:mod:`torchtally._conventions` too, with the other input rules. Nothing here
imports another torchtally module but :mod:`torchtally.errors`.

Example:
    >>> import torch
    >>> from torchtally._batches import batch_size, batch_weight
    >>> batch_size([{'boxes': torch.zeros(3, 4)}, {'boxes': torch.zeros(1, 4)}], None)
    2
    >>> batch_weight(12, 2, 'Metric')
    12.0
"""

from __future__ import annotations

import math
import numbers
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from torchtally.errors import BatchSizeError, WeightError

__all__ = [
    "Weight",
    "WeightFn",
    "batch_size",
    "batch_weight",
    "shared_weight_fn",
    "size_and_weight",
]

Weight = float | Tensor | None
"""A batch's weight as :func:`batch_weight` returns it: ``None`` (the batch size), a
non-negative number or 0-d tensor (the batch's total weight) or a ``(B,)`` tensor
(per-sample weights)."""

WeightFn = Callable[[Any, Any], Any]
"""A callable of ``(outputs, targets)`` returning a batch's weight."""


_PER_SAMPLE_HINT = (
    "pass weight=, e.g. the construction argument weight=lambda outputs, targets: "
    "torch.ones(len(targets))"
)


def _refuse_ragged(items: tuple[Any, ...] | list[Any]) -> bool:
    """Refuse tensors of several first dimensions (one per sample): no batch dimension to read.

    Returns whether ``items`` are several tensors of one first dimension: a batch read from
    them may be one tensor per sample whose lengths agree by chance.
    """
    if len(items) > 1 and all(isinstance(element, Tensor) and element.ndim for element in items):
        lengths = [int(element.shape[0]) for element in items]
        if min(lengths) != max(lengths):
            shown = ", ".join(map(str, lengths[:5])) + (", ..." if len(lengths) > 5 else "")
            raise BatchSizeError(
                f"a list of tensors whose first dimensions differ ({shown}) has no batch "
                f"dimension (one tensor per sample?); {_PER_SAMPLE_HINT}"
            )
        return True
    return False


def _leading_dim(item: Any, lenient: bool = False) -> tuple[int | None, int | None]:
    """The batch size ``item`` gives, depth first (``None``: no clue), and if it is a guess.

    A guess is the common first dimension of a list or tuple of several tensors, which may be
    one tensor per sample whose lengths agree by chance (one box in each image); the second
    item is then the length of that list (``None``: not a guess). ``lenient`` (how
    :func:`_check_guess` reads the outputs) passes over a 0-d tensor instead of refusing it (a
    model's output dict often starts with its 0-d loss), and takes a list of tensors of
    several first dimensions for no clue.
    """
    if isinstance(item, Tensor):
        if item.ndim == 0:
            if lenient:
                return None, None
            raise BatchSizeError("a 0-d tensor has no batch dimension")
        return int(item.shape[0]), None
    guess: int | None = None
    if isinstance(item, Mapping):
        item = item.values()
    elif isinstance(item, (tuple, list)):
        # A list of per-sample records (detection targets: one dict per image) is as long
        # as the batch; the first tensor inside record 0 would count record 0's boxes.
        if item and all(isinstance(element, Mapping) for element in item):
            return len(item), None
        try:
            guess = len(item) if _refuse_ragged(item) else None
        except BatchSizeError:
            if lenient:
                return None, None
            raise
    else:
        return None, None
    for element in item:
        size, inner = _leading_dim(element, lenient)
        if size is not None:
            return size, inner if guess is None else guess
    return None, None


def batch_size(targets: Any, outputs: Any, owner: str = "objective") -> int:
    """The number of samples in a batch.

    The first clue found in ``targets``, then in ``outputs``, searching tuples,
    lists and dicts in order, depth first: a tensor gives its leading
    dimension; a list or tuple of per-sample records (dicts: one image's boxes
    and labels, say) gives its length; a list or tuple of tensors whose first
    dimensions differ (one per sample) gives none and is refused, and so is a
    list of ``n`` tensors in the targets whose common first dimension is not the
    outputs' batch when the outputs' batch is ``n`` (one box in each of four
    images, with the outputs of four images). Data whose batch
    is not the leading dimension (sequence-first ``(T, B)`` tensors) or that
    should weigh by something else (tokens) take an explicit ``weight=``.

    Args:
        targets: the batch's targets.
        outputs: the model's outputs for the batch.
        owner: how error messages name the objective.

    Returns:
        The number of samples in the batch.

    Raises:
        BatchSizeError: no clue was found, the first tensor is 0-d, or a list of
            tensors has no common first dimension, or one the outputs contradict.

    Example:
        >>> import torch
        >>> from torchtally._conventions import batch_size
        >>> batch_size({'label': torch.zeros(5)}, torch.zeros(5, 3))
        5
    """
    if type(targets) is Tensor and targets.ndim:  # the common case, without recursion
        return targets.shape[0]
    for where, item in (("targets", targets), ("outputs", outputs)):
        try:
            size, guess = _leading_dim(item)
        except BatchSizeError as error:
            raise BatchSizeError(
                f"{owner}: cannot read the batch size from the {where}: {error}; expected a "
                f"tensor whose first dimension is the batch (or pass weight=)"
            ) from None
        if size is not None:
            if guess is not None and where == "targets":
                _check_guess(size, guess, outputs, owner)
            return size
    raise BatchSizeError(
        f"{owner}: no tensor or list of records found in the targets ({type(targets).__name__}) "
        f"or the outputs ({type(outputs).__name__}) to read the batch size from; pass weight="
    )


def _check_guess(size: int, count: int, outputs: Any, owner: str) -> None:
    """Refuse a batch size read from ``count`` tensors when the outputs hold ``count`` samples.

    Outputs of another size leave the targets' size standing: sequence-first ``(T, B)``
    outputs beside batch-first targets (labels and a mask) are read as before.
    """
    told, _ = _leading_dim(outputs, lenient=True)
    if told == count != size:
        raise BatchSizeError(
            f"{owner}: the targets are a list of {count} tensors of first dimension {size}, "
            f"and the outputs' batch is {told}: one tensor per sample whose lengths agree by "
            f"chance (one box in each image)? {_PER_SAMPLE_HINT}; or, if they are several "
            f"fields of one batch of {size} beside sequence-first outputs whose first "
            f"dimension happens to be {count}, weight=lambda outputs, targets: "
            f"torch.ones(len(targets[0]))"
        )


def batch_weight(weight: Any, size: int, owner: str) -> Weight:
    """Check a ``weight=`` argument and bring it to one of the forms of :data:`Weight`.

    A Python number or a 0-d (or one-element) tensor is the batch's total
    weight (a token count, say); a ``(B,)`` tensor holds one weight per sample
    (0 excludes a sample). Tensors are detached, never read on the host, so
    a negative tensor weight cannot be refused here: means and sums (and the
    running values they give) become NaN, minima and maxima leave the entry
    out, as one of weight 0.

    Args:
        weight: what the user passed (or a weight callable returned).
        size: the batch size ``B``.
        owner: how error messages name the objective.

    Raises:
        WeightError: a bool, a negative or non-finite number, a complex tensor,
            or a tensor that is neither 0-d nor ``(B,)``.

    Example:
        >>> import torch
        >>> from torchtally._conventions import batch_weight
        >>> batch_weight(torch.tensor([1.0, 0.0]), 2, 'Metric')
        tensor([1., 0.])
    """
    if weight is None:
        return None
    if isinstance(weight, Tensor):
        if weight.is_complex() or weight.dtype == torch.bool:
            dtype = str(weight.dtype).removeprefix("torch.")
            mask = " (a mask: pass mask.float(), 1 keeps a sample)" if dtype == "bool" else ""
            raise WeightError(
                f"{owner}: a weight tensor must hold real numbers, found dtype {dtype}{mask}"
            )
        if weight.ndim == 0 or (weight.ndim == 1 and weight.shape[0] == size):
            return weight.detach()
        if weight.numel() == 1:
            return weight.detach().reshape(())
        raise WeightError(
            f"{owner}: expected a weight that is a number, a 0-d tensor or a ({size},) tensor of "
            f"per-sample weights for a batch of {size}, found shape {tuple(weight.shape)}"
        )
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real):
        raise WeightError(
            f"{owner}: expected a weight that is a number or a tensor, found "
            f"{type(weight).__name__} {weight!r:.60}"
        )
    try:
        number = float(weight)
    except OverflowError:  # an int (or Fraction) beyond float's range: not finite either
        number = math.inf
    # NaN compares false. Not math.isfinite, which breaks a compiled graph, nor ``< math.inf``,
    # which torch.compile takes for true of every symbolic float: an inf weight passed.
    if not 0 <= number <= sys.float_info.max:
        raise WeightError(f"{owner}: a batch weight must be finite and >= 0, found {weight!r:.60}")
    return number


def shared_weight_fn(fns: Iterable[WeightFn | None], owner: str) -> WeightFn | None:
    """The one ``weight=`` callable of values made one objective (``None``: none of them has one).

    Values joined into one objective are weighted alike, so they must share their
    weight callable: with some weighted and some not, the unweighted ones would
    silently be weighted by the others' callable.

    Raises:
        WeightError: two of ``fns`` differ (a callable and ``None`` included).

    Example:
        >>> from torchtally._conventions import shared_weight_fn
        >>> tokens = lambda o, t: (t >= 0).sum()
        >>> shared_weight_fn([tokens, tokens], 'MetricCollection') is tokens
        True
    """
    distinct = {id(fn): fn for fn in fns}
    if len(distinct) > 1:
        found = ", ".join(
            "none" if fn is None else getattr(fn, "__name__", type(fn).__name__)
            for fn in distinct.values()
        )
        raise WeightError(
            f"{owner}: the values joined have different weight= callables ({found}), and one "
            f"objective weighs all its values alike; give them the same weight=, or keep them "
            f"apart"
        )
    return next(iter(distinct.values()), None)


def size_and_weight(targets: Any, outputs: Any, weight: Any, owner: str) -> tuple[int, Weight]:
    """A batch's size and its weight, checked (see :func:`batch_size`, :func:`batch_weight`).

    Per-sample weights tell the batch size themselves (their length), which
    is how data whose batch is not the leading dimension is weighted.

    Example:
        >>> import torch
        >>> from torchtally._conventions import size_and_weight
        >>> size_and_weight(torch.zeros(7, 4), None, torch.ones(4), 'Metric')  # (T, B) targets
        (4, tensor([1., 1., 1., 1.]))
    """
    if type(weight) is Tensor and weight.ndim == 1:
        size = weight.shape[0]
    elif type(targets) is Tensor and targets.ndim:  # the common case, read inline
        size = targets.shape[0]
    else:
        size = batch_size(targets, outputs, owner)
    if weight is None:
        return size, None
    return size, batch_weight(weight, size, owner)

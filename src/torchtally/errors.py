"""Exception and warning classes raised by torchtally.

Every error subclasses both :class:`TorchTallyError` and the builtin that matches
its meaning (``ValueError``, ``TypeError``, ``RuntimeError``), so existing
``except ValueError`` code keeps working while ``except TorchTallyError``
catches everything the library raises on purpose.

Messages always name the objective, the value's name and what was expected
versus what was found.

Example:
    >>> import torch
    >>> import torchtally as tt
    >>> metric = tt.Metric(lambda o, t: (o - t).abs(), 'MAE')
    >>> try:
    ...     metric.update(torch.zeros(4), torch.zeros(3))
    ... except tt.errors.TorchTallyError as error:
    ...     print(type(error).__name__)
    MetricCallError
"""

from __future__ import annotations

__all__ = [
    "BatchSizeError",
    "CompileError",
    "ComputedBeforeUpdatedWarning",
    "CriterionWeightWarning",
    "DeviceMismatchError",
    "FormulaError",
    "HookError",
    "IncompatibleStateError",
    "InvalidArgumentError",
    "InvalidNameError",
    "MetricCallError",
    "NameConflictError",
    "RepeatedSampleWarning",
    "ResultShapeError",
    "ResultTypeError",
    "ScalarWeightWarning",
    "StateDictError",
    "SyncError",
    "TorchTallyError",
    "TorchTallyWarning",
    "TrackerError",
    "UnsupportedObjectError",
    "UnusedAggregationWarning",
    "WeightError",
]


class TorchTallyError(Exception):
    """Base class of every exception torchtally raises on purpose."""


class TorchTallyWarning(UserWarning):
    """Base class of every warning torchtally emits."""


class ComputedBeforeUpdatedWarning(TorchTallyWarning):
    """``compute()`` was called on an objective that has seen no data; values are NaN."""


class CriterionWeightWarning(TorchTallyWarning):
    """A callable averages each batch with weights of its own, and no ``weight=`` says so.

    ``torch.nn.CrossEntropyLoss(weight=w)`` and ``torch.nn.NLLLoss(weight=w)``
    with ``reduction='mean'`` divide a batch of class indices by its targets'
    summed class weights, while the batch is weighed by its size: the epoch
    value is then not the criterion on the whole data. Give
    ``weight=lambda o, t: w[t[t != ignore_index]].sum()``. Warned when the objective is built,
    pointing at the user's line.
    """


class ScalarWeightWarning(TorchTallyWarning):
    """Per-sample weights met a value that is one number for the batch (a batch mean).

    ``update(..., weight=w)`` with a ``(B,)`` tensor weighs per-sample values
    sample by sample, but a scalar (``mse_loss`` with its default
    ``reduction='mean'``) is already a mean over the whole batch: the weights
    cannot leave samples out of it, and it counts with their sum ``w.sum()``.
    Return per-sample values (``reduction='none'`` and a mean over the other
    dimensions) for the weights to apply; if the scalar already leaves out the
    samples of weight 0 (a mean over the valid ones), give their count as the
    batch's weight (``weight=w.sum()``), which says so and silences this.
    Raised once per objective.
    """


class UnusedAggregationWarning(TorchTallyWarning):
    """An objective's per-name ``aggregation`` names a value it never returned.

    The names it does return then aggregate as the default (a batch-weighted
    mean): a misspelt ``{'num_corect': 'sum'}`` reports the mean of the batch
    counts under ``'num_correct'``, not their sum. Warned once per objective,
    at the first ``compute()`` after an update that still finds such a name,
    with the names it returned.
    """


class RepeatedSampleWarning(TorchTallyWarning):
    """``sync(dataset_size=N)`` could not drop a sample ``DistributedSampler`` repeated.

    The objective saw only batch values (a scalar per batch) on a process
    holding a repeated sample, so that sample cannot be taken out: the synced
    value counts it twice. The message names the objective and its values.
    """


class MetricCallError(TorchTallyError, RuntimeError):
    """A user callable raised while an objective evaluated it.

    The original exception is chained as ``__cause__``.
    """


class ResultTypeError(TorchTallyError, TypeError):
    """A callable returned something that is neither a tensor nor a Python number."""


class ResultShapeError(TorchTallyError, ValueError):
    """A callable returned a tensor that is neither a scalar nor a ``(B,)`` vector."""


class BatchSizeError(TorchTallyError, ValueError):
    """The batch size could not be read from the targets or the outputs."""


class WeightError(TorchTallyError, ValueError):
    r"""A ``weight=`` that cannot weigh the batch, or values joined with different ``weight=``\ s.

    A weight must be a non-negative number, a 0-d tensor or a ``(B,)`` tensor;
    values joined into one objective must share one ``weight=`` callable.
    """


class CompileError(TorchTallyError, RuntimeError):
    """Asked for what batches updated inside ``torch.compile`` do not keep (running values)."""


class DeviceMismatchError(TorchTallyError, RuntimeError):
    """Values for one name arrived on a device other than the one holding its state."""


class NameConflictError(TorchTallyError, ValueError):
    """Two different callables were given the same name, or a name is not a string."""


class FormulaError(TorchTallyError, ValueError):
    """A loss expression was refused (opposite directions, unsupported operand)."""


class HookError(TorchTallyError, TypeError):
    """A subclass overrides a method torchtally does not call, or a hook returns what it cannot use.

    A DRYTorch or torchtally 0.1 hook is refused when the class is defined, with
    the name of the hook to write instead; ``finalize`` returning anything but a
    dict of tensors by name, ``accumulator_for`` anything but an ``Accumulator``
    class, or ``declared_names`` a string, when the hook is first called.
    """


class IncompatibleStateError(TorchTallyError, ValueError):
    """Two states cannot be merged (different aggregation kinds or objective types)."""


class InvalidNameError(TorchTallyError, TypeError):
    """A value name is not a non-empty string, is blank, or holds characters logs cannot show.

    Newlines, tabs and other control and format characters are refused (the
    spaces of every width and the zero-width joiners of written text are not,
    unless a name holds nothing else), and so are brackets in a loss name
    (formulas delimit names with them).
    """


class InvalidArgumentError(TorchTallyError, TypeError, ValueError):
    """An argument has the wrong type or value (``higher_is_better='yes'``, an unknown aggregation).

    Both a ``TypeError`` and a ``ValueError``, so that code catching the
    built-in error Python itself would raise for either keeps working.
    """


class StateDictError(TorchTallyError, ValueError):
    """A state dict does not match the objective it is loaded into."""


class SyncError(TorchTallyError, RuntimeError):
    """Processes disagree on the names or state layout of the objectives they sync.

    Raised on every rank, with the same message, so that no rank hangs.
    """


class TrackerError(TorchTallyError, ValueError):
    """A value's direction, or its best so far, is asked for and there is none.

    Raised by :class:`~torchtally.MetricTracker` and :func:`~torchtally.monitor_mode`
    for a value without a direction (none given, none known to the objective),
    a best value asked for before any update, or a value that is not one number.
    """


class UnsupportedObjectError(TorchTallyError, TypeError):
    """An object handed to :func:`torchtally.wrap` fits none of the accepted forms."""

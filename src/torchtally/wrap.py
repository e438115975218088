"""Turn the metric forms users already have into torchtally objectives.

:func:`wrap` accepts every metric form of a plain training script:

1. a function of ``(outputs, targets)``;
2. an object with ``update(outputs, targets)``, ``compute()`` and ``reset()``
   (``reset`` may be inherited);
3. a stateless ``torch.nn.Module`` whose ``forward(outputs, targets)`` returns
   the values (``torch.nn.NLLLoss()``, for example);
4. a stateful ``torch.nn.Module`` with ``update``, ``compute`` and ``reset``.

Results may be a Python number, a tensor, a tuple or list of them (named
``name_0``, ``name_1``, ...) or a dict with string keys; they are normalised
into ``dict[str, Tensor]``.

Stateless forms (1 and 3) become a :class:`WrappedFunction`: torchtally
accumulates their values itself, with exact batch weighting (a scalar is a
batch mean weighted by the batch size, a ``(B,)`` vector holds per-sample
values), and they sync across processes like any objective. Stateful forms
(2 and 4) keep their own state in the object: torchmetrics and torcheval
metrics go to :func:`~torchtally.contrib.torchmetrics.from_torchmetrics` and
:func:`~torchtally.contrib.torcheval.from_torcheval`, which know how to sync
them; any other object becomes a :class:`StatefulObjective`, whose state
torchtally cannot reach, so that its ``sync()`` raises
:class:`~torchtally.errors.SyncError` in a distributed run (outside one there
is nothing to combine and it does nothing).

Its code lives in :mod:`torchtally.contrib.wrap`, beside the adapters it hands foreign
metrics to. It imports no third-party library: torchmetrics and torcheval
objects are recognised only when their library is already imported.

Example:
    >>> import torch
    >>> import torchtally as tt
    >>> def errors(outputs, targets):
    ...     diff = outputs - targets
    ...     return {'MAE': diff.abs().mean(), 'Bias': diff.mean()}
    >>> metric = tt.wrap(errors)
    >>> _ = metric.update(torch.tensor([1.0, 3.0]), torch.zeros(2))
    >>> _ = metric.update(torch.tensor([-2.0]), torch.zeros(1))
    >>> metric.compute()   # over the 3 samples
    {'MAE': tensor(2.), 'Bias': tensor(0.6667)}
"""

from __future__ import annotations

import inspect

from torchtally.contrib.wrap import (
    ACCEPTED_FORMS,
    StatefulObjective,
    WrappedFunction,
    normalize_result,
    wrap,
)

__all__ = [
    "ACCEPTED_FORMS",
    "StatefulObjective",
    "WrappedFunction",
    "normalize_result",
    "wrap",
]

# Documented, pickled and shown under this module's name, where they were first defined (their
# methods too, so that an example in one runs as this module's doctest). Pickles name
# torchtally.wrap.WrappedFunction and torchtally.wrap.StatefulObjective, as before.
for _public in (StatefulObjective, WrappedFunction):
    for _member in vars(_public).values():
        if inspect.isfunction(_member) and _member.__module__ == _public.__module__:
            _member.__module__ = __name__
    _public.__module__ = __name__
wrap.__module__ = __name__

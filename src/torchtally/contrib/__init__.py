"""Adapters for metrics written without torchtally.

- :mod:`torchtally.contrib.wrap`: :func:`torchtally.wrap` turns a function, a
  stateless ``nn.Module`` or an object with ``update``/``compute``/``reset``
  into an objective. It imports no third-party library.
- :mod:`torchtally.contrib.torchmetrics`: :func:`~torchtally.contrib.torchmetrics.from_torchmetrics`
  (needs ``pip install "torchtally[torchmetrics]"``).
- :mod:`torchtally.contrib.torcheval`: :func:`~torchtally.contrib.torcheval.from_torcheval`
  (needs ``pip install "torchtally[torcheval]"``).

Each submodule imports its library only when it is imported itself, so
``import torchtally`` needs neither.

Example:
    >>> import torch
    >>> import torchtally as tt
    >>> accuracy = tt.wrap(lambda o, t: (o.argmax(1) == t).float().mean(), 'accuracy')
    >>> _ = accuracy.update(torch.eye(3), torch.tensor([0, 1, 0]))
    >>> accuracy.compute()
    {'accuracy': tensor(0.6667)}
"""

from __future__ import annotations

__all__: list[str] = []

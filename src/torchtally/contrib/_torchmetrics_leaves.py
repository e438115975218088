"""The metrics a torchmetrics object is made of, as the adapter names and calls them.

Its nodes and leaves (the metrics holding state), their constructor options,
which keyword arguments torchmetrics gives to which leaf, their directions,
whether a leaf keeps its inputs, and switching off torchmetrics' own sync:
for :class:`~torchtally.contrib.torchmetrics.TorchMetricsAdapter`, imported
after torchmetrics itself.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from typing import Any

import torchmetrics
from torch import Tensor
from torchmetrics.metric import CompositionalMetric

from torchtally._results import unique_names
from torchtally.contrib._options import options

__all__ = [
    "TorchMetricsObject",
    "direction_of",
    "keeps_inputs",
    "leaf_labels",
    "leaf_options",
    "leaves_of",
    "named_receivers",
    "nodes",
    "receivers",
    "switch_off_sync",
]

TorchMetricsObject = torchmetrics.Metric | torchmetrics.MetricCollection


def nodes(node: Any) -> Iterator[torchmetrics.Metric]:
    """Every metric in a metric, composition or collection (compositions included), depth first."""
    if isinstance(node, torchmetrics.MetricCollection):
        for member in node._modules.values():
            yield from nodes(member)
    elif isinstance(node, CompositionalMetric):
        yield node
        yield from nodes(node.metric_a)
        yield from nodes(node.metric_b)
    elif isinstance(node, torchmetrics.Metric):
        yield node


def leaves_of(root: TorchMetricsObject) -> tuple[torchmetrics.Metric, ...]:
    """The metrics holding state (not compositions), each once, in a fixed order."""
    seen: dict[int, torchmetrics.Metric] = {}
    for node in nodes(root):
        if not isinstance(node, CompositionalMetric):
            seen.setdefault(id(node), node)
    return tuple(seen.values())


def receivers(leaves: tuple[torchmetrics.Metric, ...], keywords: Iterable[str]) -> dict[str, Any]:
    """For each keyword argument, the leaves whose ``update`` a composition or collection gives it.

    torchmetrics filters the keywords by each leaf's ``update`` signature and
    drops the others without a word.
    """
    names = list(keywords)
    found: dict[str, Any] = {name: [] for name in names}
    for leaf in leaves:
        for name in leaf._filter_kwargs(**dict.fromkeys(names)):
            found[name].append(leaf)
    return found


class _Bare(torchmetrics.Metric):
    """A metric with no state and no option: what every torchmetrics metric has."""

    def update(self) -> None:
        """Nothing to update."""

    def compute(self) -> None:
        """Nothing to compute."""


@functools.cache
def _base_attributes() -> frozenset[str]:
    # torchmetrics' own bookkeeping, and validate_args, which checks inputs and changes no value
    return frozenset(vars(_Bare())) | {"validate_args"}


def leaf_options(leaf: torchmetrics.Metric) -> dict[str, Any]:
    """A leaf's constructor options (``squared``, ``num_classes``, ``average``, ...)."""
    return options(leaf, _base_attributes() | set(leaf._defaults))


def keeps_inputs(leaves: Iterable[torchmetrics.Metric]) -> bool:
    """Whether a leaf holds a list state, which keeps the very tensors ``update`` is given."""
    return any(
        not isinstance(default, Tensor) for leaf in leaves for default in leaf._defaults.values()
    )


def switch_off_sync(metric: TorchMetricsObject) -> None:
    """No sync inside torchmetrics' ``compute`` or ``forward``: the adapter syncs."""
    for node in nodes(metric):
        node.sync_on_compute = False
        node.dist_sync_on_step = False
        node._to_sync = False


def named_receivers(
    leaves: tuple[torchmetrics.Metric, ...], leaf_names: tuple[str, ...], keywords: list[str]
) -> tuple[list[str], dict[str, list[str]]]:
    """The leaves' names (their classes' where unnamed), and each keyword's receivers by name."""
    names = list(leaf_names) or unique_names([type(leaf).__name__ for leaf in leaves])
    by_leaf = {id(leaf): name for name, leaf in zip(names, leaves, strict=True)}
    found = receivers(leaves, keywords)
    return names, {key: [by_leaf[id(leaf)] for leaf in takers] for key, takers in found.items()}


def direction_of(
    metric: TorchMetricsObject,
    leaves: tuple[torchmetrics.Metric, ...],
    leaf_names: tuple[str, ...],
    own_name: str,
    name: str,
) -> bool | None:
    """The ``higher_is_better`` of the metric reported as ``name`` (``None``: unknown).

    A composition's leaves by their names (its combined value has none: its
    operator may flip it), a collection's members by key, a plain metric by
    ``own_name``.
    """
    if isinstance(metric, CompositionalMetric):
        candidates: dict[str, Any] = dict(zip(leaf_names, leaves, strict=True))
    elif isinstance(metric, torchmetrics.MetricCollection):
        candidates = dict(zip(map(str, metric.keys()), metric._modules.values(), strict=True))
    else:
        candidates = {own_name: metric}
    direction = getattr(candidates.get(name), "higher_is_better", None)
    return direction if isinstance(direction, bool) else None


def leaf_labels(
    root: TorchMetricsObject, leaves: tuple[torchmetrics.Metric, ...], leaf_names: tuple[str, ...]
) -> list[str]:
    """The leaves as messages name them: a composition's leaf names, a collection's keys."""
    if leaf_names:
        return list(leaf_names)
    keys: dict[int, str] = {}
    if isinstance(root, torchmetrics.MetricCollection):
        keys = {id(m): str(k) for k, m in root.items(keep_base=False, copy_state=False)}
    return [keys.get(id(leaf), type(leaf).__name__) for leaf in leaves]

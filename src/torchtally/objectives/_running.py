"""Running values: each mean-aggregated value over an objective's last batches.

:class:`Recent` keeps, per name, the ``(weighted sum, weight)`` of the last
``window`` batches (a bounded ring of float64 pairs); :func:`batch_means`
reads those pairs from the queued values (see :meth:`._queue.Queue.items`)
without folding them, so the epoch state is not touched.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

from torchtally.aggregation import scratch_float64, weigh_in_place, weighted_values
from torchtally.objectives._plan import VECTOR
from torchtally.objectives._queue import Queued, batch_weights

__all__ = ["Recent", "batch_means"]

_F64 = torch.float64


class Recent:
    """The last ``window`` batches' ``(weighted sum, weight)`` of each name (a ring each).

    ``window`` is the largest window asked for so far: smaller windows read the
    newest of its pairs, so a progress bar and a log line may ask for different ones.
    """

    def __init__(self, window: int) -> None:
        self.window = window  # checked by the ledger (an int >= 1)
        self.rings: dict[str, Tensor] = {}

    def widen(self, window: int) -> None:
        """Keep up to ``window`` batches from now on (the pairs held are kept)."""
        self.window = max(self.window, window)

    def push(self, batches: Mapping[str, Tensor]) -> None:
        """Remember batches just folded: ``(K, 2)`` pairs by name, oldest first."""
        for name, pairs in batches.items():
            held = self.rings.get(name)
            joined = pairs if held is None else torch.cat([held, pairs])
            self.rings[name] = joined[-self.window :].clone()  # bounded: window pairs

    def means(self, newest: Mapping[str, Tensor], window: int) -> dict[str, Tensor]:
        """Each name's mean over its last ``window`` batches, ``newest`` (still queued) last."""
        result: dict[str, Tensor] = {}
        for name in {**self.rings, **newest}:
            parts = [part for part in (self.rings.get(name), newest.get(name)) if part is not None]
            last = torch.cat(parts)[-window:]
            totals = last.sum(0)
            result[name] = totals[0] / totals[1]
        return result


def batch_means(
    queued: Sequence[Queued], names: Sequence[str], is_mean: Callable[[str], bool]
) -> dict[str, Tensor]:
    """Every mean-aggregated name's per-batch ``(weighted sum, weight)``, ``(K, 2)`` float64.

    ``names`` are the plan's names by position in the batch; ``is_mean`` says
    which names aggregate as a mean (the others have no running value).
    """
    found: dict[str, list[Tensor]] = {}
    for part, values, weights, sizes in queued:
        if part.kind == VECTOR:
            wide = scratch_float64(values)  # summed at once: see aggregation._widening
            sums = (wide if weights is None else weigh_in_place(wide, weights)).sum(2)  # (m, K)
            batch = (
                torch.tensor(sizes, dtype=_F64, device=values.device)
                if weights is None
                else weights.sum(1)
            )
        else:
            mean_weights = batch_weights(sizes, weights, values.device, True)
            assert mean_weights is not None
            batch = mean_weights
            # without weights, the batch sizes (never 0) weigh the batches: nothing to leave out
            sums = values.to(_F64) * batch if weights is None else weighted_values(values, batch)
        for line, position in enumerate(part.members):
            name = names[position]
            if is_mean(name):
                pairs = torch.stack([sums[line], batch.expand_as(sums[line])], 1)
                found.setdefault(name, []).append(pairs)
    return {name: torch.cat(parts) for name, parts in found.items()}

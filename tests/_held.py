"""What an objective holds between updates, read the same way by every test of the memory bound."""

from __future__ import annotations

from typing import Any


def queued_elements(objective: Any) -> int:
    """Elements the objective holds between updates, besides its accumulators' state."""
    ledger = objective._ledger
    held = sum(buffer.numel() for buffer in ledger._buffers)
    if ledger._sample_weights is not None:
        held += ledger._sample_weights.numel()
    return held

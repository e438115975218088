"""Float64 copies of values about to be summed, in a buffer reused from fold to fold.

An exact sum of float32 values is taken in float64, and on the CPU
``values.sum(dtype=torch.float64)`` first converts ``values`` into a fresh
float64 tensor. A fold of a full queue converts up to 2**18 values: 2 MiB,
which glibc serves with ``mmap`` or from the top of its heap, and gives back
to the kernel when freed. The next fold then page-faults those pages back:
about 512 minor faults every few folds, measured at 4096x10 in a fresh
process, costing more than the arithmetic. :func:`scratch_float64` copies
into one buffer per thread that is kept instead (one per thread, so that two
threads folding different objectives never share it).

On other devices (the CUDA caching allocator already reuses its blocks),
inside ``torch.compile`` (the graph owns its buffers) and for more values
than :data:`REUSED_ELEMENTS`, a fresh tensor is made.
"""

from __future__ import annotations

import threading

import torch
from torch import Tensor

from torchtally._inference import outside_inference_mode

__all__ = ["REUSED_ELEMENTS", "scratch_float64"]

REUSED_ELEMENTS = 1 << 18
"""At most this many float64 elements (2 MiB) are kept per thread; a larger block is
converted into a fresh tensor. The objectives' queue bound (``PENDING_ELEMENTS``) is this
number, so a fold of a full queue reuses the buffer."""

_F64 = torch.float64
_kept = threading.local()


def scratch_float64(values: Tensor) -> Tensor:
    """A float64 copy of ``values`` that the caller may change in place.

    On the CPU it is a view of this thread's reused buffer, valid until the
    next call in this thread: use it at once, never keep it.

    Example:
        >>> import torch
        >>> wide = scratch_float64(torch.tensor([1.0, 2.5]))
        >>> wide.dtype, wide.sum().item()
        (torch.float64, 3.5)
    """
    count = values.numel()
    # is_compiling first: the globals read after it would be guards of a compiled frame
    if torch.compiler.is_compiling() or values.device.type != "cpu" or count > REUSED_ELEMENTS:
        return values.to(_F64, copy=True)
    buffer: Tensor | None = getattr(_kept, "buffer", None)
    if buffer is None or buffer.numel() < count:
        buffer = _kept.buffer = _buffer(count)
    wide = buffer[:count].view(values.shape)
    wide.copy_(values)
    return wide


@outside_inference_mode
def _buffer(count: int) -> Tensor:
    """A buffer for ``count`` elements, rounded up to a power of 2 (it grows seldom)."""
    return torch.empty(min(REUSED_ELEMENTS, 1 << max(count - 1, 0).bit_length()), dtype=_F64)

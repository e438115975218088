"""The dtypes a state may hold, by name: what state dicts and peers may name.

States, exports and the wire format store a dtype by its short name
(``'float32'``); reading one back goes through :data:`DTYPES` only, so a
state dict or a peer's payload cannot make torchtally look up an arbitrary
attribute of ``torch``. Nothing here imports another torchtally module.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["DTYPES", "dtype_from_name", "dtype_name"]

DTYPES: dict[str, torch.dtype] = {
    str(dtype).removeprefix("torch."): dtype
    for dtype in (
        torch.bool,
        torch.uint8,
        torch.int8,
        torch.int16,
        torch.int32,
        torch.int64,
        torch.float16,
        torch.bfloat16,
        torch.float32,
        torch.float64,
    )
}
"""The dtypes a state may hold, by name: the only ones read back from a state dict or a peer."""


def dtype_name(dtype: torch.dtype) -> str:
    """The short name of a dtype (``'float32'``), as states and the wire format store it.

    Example:
        >>> import torch
        >>> from torchtally._dtypes import dtype_name
        >>> dtype_name(torch.bfloat16)
        'bfloat16'
    """
    return str(dtype).removeprefix("torch.")


def dtype_from_name(name: Any) -> torch.dtype | None:
    """The dtype called ``name`` if it is one of :data:`DTYPES`, else ``None``.

    Never looks a name up in ``torch`` itself: a state or a peer's header
    cannot make torchtally touch an arbitrary attribute.

    Example:
        >>> from torchtally._dtypes import dtype_from_name
        >>> dtype_from_name('float64'), dtype_from_name('Tensor')
        (torch.float64, None)
    """
    return DTYPES.get(name) if isinstance(name, str) else None

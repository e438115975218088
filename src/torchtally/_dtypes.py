"""The dtypes a state may hold, by name: what state dicts and peers may name.

States, exports and the wire format store a dtype by its short name
(``'float32'``); reading one back goes through :data:`DTYPES` only, so a
state dict or a peer's payload cannot make torchtally look up an arbitrary
attribute of ``torch``. Nothing here imports another torchtally module but
:mod:`torchtally.errors`.
"""

from __future__ import annotations

from typing import Any

import torch

from torchtally.errors import ResultTypeError

__all__ = ["DTYPES", "dtype_from_name", "dtype_name", "is_held", "refuse_unheld"]

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


def is_held(dtype: torch.dtype) -> bool:
    """Whether a state may hold ``dtype``: whether it is one of :data:`DTYPES`.

    Example:
        >>> import torch
        >>> from torchtally._dtypes import is_held
        >>> is_held(torch.bfloat16), is_held(torch.uint16)
        (True, False)
    """
    return dtype in _HELD


def refuse_unheld(dtype: torch.dtype, owner: str, name: str) -> None:
    """Refuse a value of a dtype no state holds (``uint16``, the float8 types, complex).

    Raises:
        ResultTypeError: naming the value, its dtype and the dtypes states hold.

    Example:
        >>> import torch
        >>> refuse_unheld(torch.float16, 'Metric', 'MAE')  # held: nothing happens
        >>> refuse_unheld(torch.uint16, 'Metric', 'MAE')  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        torchtally.errors.ResultTypeError: Metric: 'MAE' has dtype torch.uint16, which no ...
    """
    if not is_held(dtype):
        raise ResultTypeError(
            f"{owner}: {name!r} has dtype {dtype}, which no state holds (states, checkpoints "
            f"and syncs keep {', '.join(DTYPES)}); convert it, e.g. with .to(torch.int64) or "
            f".float()"
        )


_HELD = frozenset(DTYPES.values())

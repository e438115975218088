"""An accumulator's state as plain metadata and tensors: export, and a checked load.

:class:`Exportable` is the part of :class:`~torchtally.aggregation.Accumulator`
that state dicts and described syncs go through. A load checks everything
(kind, rows, dtype names against an allow-list, one tensor per declared state
with its shape and dtype, sample counts) before anything changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from torchtally._dtypes import dtype_from_name, dtype_name
from torchtally._inference import outside_inference_mode
from torchtally.aggregation._states import StateHolder, StateSpec
from torchtally.errors import StateDictError

__all__ = ["ExportedState", "Exportable"]


ExportedState = tuple[dict[str, Any], list[Tensor]]
"""A state as JSON-able metadata plus a list of tensors."""


class Exportable(StateHolder):
    """Export and load (a mixin of :class:`~torchtally.aggregation.Accumulator`).

    It reads and replaces the accumulator's rows, labels, dtypes, device and
    state tensors, as declared by :attr:`states`.
    """

    def export(self) -> ExportedState:
        """The state as JSON-able metadata plus tensors (copies), for sync and state dicts.

        Example:
            >>> import torch
            >>> from torchtally.aggregation import Max
            >>> acc = Max()
            >>> acc.add(torch.tensor([1.5, 4.0]))
            >>> meta, tensors = acc.export()
            >>> meta['kind'], meta['dtypes'], [tuple(t.shape) for t in tensors]
            ('max', ['float32'], [(1, 1), (1, 1), (1, 1), (1, 1)])
        """
        meta = {
            "kind": self.kind,
            "rows": self.rows,
            "dtypes": [None if dtype is None else dtype_name(dtype) for dtype in self.dtypes],
        }
        if self._state is None:
            return meta, []
        return meta, [self._state[spec.name].clone() for spec in self.states]

    @outside_inference_mode
    def load(
        self, meta: Any, tensors: Sequence[Any], device: torch.device | str | None = None
    ) -> None:
        """Replace the state with an exported one (on ``device``; default: where it was).

        Everything is checked before anything changes: the kind, the number of
        rows, the dtype names (an allow-list), one tensor per declared state
        with the declared shape and dtype, and non-negative sample counts.

        Raises:
            StateDictError: naming the first thing that does not fit.
        """
        rows, dtypes, state = self._check_export(meta, tensors)
        if state is not None:
            target = torch.device(device) if device is not None else state["samples"].device
            state = {name: tensor.to(target) for name, tensor in state.items()}
            self.device = target
        else:
            self.device = None
        self.rows = rows
        if len(self.labels) != rows:
            self.labels = [f"{type(self).__name__} row {index}" for index in range(rows)]
        self.dtypes = dtypes
        self._state = state

    def _check_export(
        self, meta: Any, tensors: Sequence[Any]
    ) -> tuple[int, list[torch.dtype | None], dict[str, Tensor] | None]:
        where = type(self).__name__
        if not isinstance(meta, dict) or meta.get("kind") != self.kind:
            found = meta.get("kind") if isinstance(meta, dict) else type(meta).__name__
            raise StateDictError(f"{where}: expected a {self.kind!r} state, found {found!r}")
        rows = meta.get("rows")
        if not isinstance(rows, int) or isinstance(rows, bool) or rows < 0:
            raise StateDictError(f"{where}: expected a row count >= 0, found {rows!r}")
        names = meta.get("dtypes")
        if not isinstance(names, list) or len(names) != rows:
            raise StateDictError(f"{where}: expected {rows} dtype names, found {names!r}")
        dtypes = [None if name is None else dtype_from_name(name) for name in names]
        unknown = [name for name, dtype in zip(names, dtypes, strict=True) if name and not dtype]
        if unknown:
            raise StateDictError(f"{where}: unknown dtype names {unknown} in the state")
        if not tensors:
            if any(dtype is not None for dtype in dtypes):
                raise StateDictError(
                    f"{where}: the state names dtypes of values seen but holds no tensors"
                )
            return rows, dtypes, None
        specs = self._specs_for(meta)
        if len(tensors) != len(specs):
            raise StateDictError(
                f"{where}: expected {len(specs)} state tensors ({[s.name for s in specs]}), "
                f"found {len(tensors)}"
            )
        state: dict[str, Tensor] = {}
        for spec, tensor in zip(specs, tensors, strict=True):
            if not isinstance(tensor, Tensor):
                raise StateDictError(
                    f"{where}: state {spec.name!r} must be a tensor, found {type(tensor).__name__}"
                )
            if tuple(tensor.shape) != (rows, spec.width) or tensor.dtype != spec.dtype:
                raise StateDictError(
                    f"{where}: state {spec.name!r} must be ({rows}, {spec.width}) "
                    f"{dtype_name(spec.dtype)}, found {tuple(tensor.shape)} "
                    f"{dtype_name(tensor.dtype)}"
                )
            state[spec.name] = tensor
        counts = state["samples"]
        if bool((counts < 0).any()):
            raise StateDictError(f"{where}: sample counts must be >= 0, found {counts.tolist()}")
        return rows, dtypes, {name: tensor.clone() for name, tensor in state.items()}

    def _specs_for(self, meta: dict[str, Any]) -> tuple[StateSpec, ...]:
        return self.states

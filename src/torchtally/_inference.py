"""Tensors an object keeps and changes in place, kept out of ``torch.inference_mode``.

A tensor made under ``torch.inference_mode()`` can never be changed in place
outside it. Every object that keeps such tensors (accumulator states,
objectives, losses' schedules, adapters' metrics, wrapped stateful objects)
makes them through :func:`outside_inference_mode` and is copied and unpickled
through :class:`KeptOutsideInferenceMode`. Nothing here imports another
torchtally module.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import torch

__all__ = ["KeptOutsideInferenceMode", "outside_inference_mode"]

_P = ParamSpec("_P")
_R = TypeVar("_R")


def outside_inference_mode(make: Callable[_P, _R]) -> Callable[_P, _R]:
    """``make`` run with ``torch.inference_mode`` turned off: what it makes is kept and changed.

    A tensor made under ``torch.inference_mode()`` can never be changed in place
    outside it, so a state or buffer first made there (a validation loop, a
    ``compute()`` in a logging hook) would make every later update fail. The
    functions that make tensors an objective keeps are wrapped in this; values
    made in inference mode may still be copied into them.
    """

    @functools.wraps(make)
    def made(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        # (dynamo cannot trace the test; inside a compiled graph it is not needed)
        if not torch.compiler.is_compiling() and torch.is_inference_mode_enabled():
            with torch.inference_mode(False):
                return make(*args, **kwargs)
        return make(*args, **kwargs)

    return made


class KeptOutsideInferenceMode:
    """A mixin: deep copies and unpickled objects hold normal tensors, whatever the mode.

    An object that keeps tensors it later changes in place (an objective, an
    adapter's metric, a wrapped stateful object) is copied in full also by
    ``copy.copy`` (a shallow copy would share that state), is deep-copied with inference
    mode off, and one unpickled under ``torch.inference_mode()`` (whose tensors
    the unpickler made as inference tensors) replaces its state with a copy
    made with inference mode off; see :func:`outside_inference_mode`.
    """

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__.copy()

    def __copy__(self) -> Any:
        # A shallow copy would share the state it changes in place: updating a copy (a
        # validation twin of a training metric) would move the original's values too.
        return copy.deepcopy(self)

    @outside_inference_mode
    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        cls = type(self)
        copied = cls.__new__(cls)
        memo[id(self)] = copied
        copied.__setstate__(copy.deepcopy(self.__getstate__(), memo))
        return copied

    def __setstate__(self, state: Any) -> None:
        if not torch.compiler.is_compiling() and torch.is_inference_mode_enabled():
            with torch.inference_mode(False):
                state = copy.deepcopy(state, {id(self): self})
        self.__dict__.update(state)

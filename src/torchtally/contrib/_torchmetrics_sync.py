"""The states of torchmetrics metrics in a sync: what ranks compare, send and rebuild.

For :class:`~torchtally.contrib.torchmetrics.TorchMetricsAdapter`, as a
participant of :func:`~torchtally.sync_all`: what every rank's leaves must
agree on (:func:`states_identity`), what this rank sends (:func:`exported`)
and a copy of the metric holding every rank's states (:func:`combined`).
States reduced by a sum travel in the summed vector; the others are gathered
and reduced as the metric's ``dist_reduce_fx`` says (list states concatenated
in rank order), as torchmetrics does after its own gather. Installing,
counting, saving and loading states is
:mod:`torchtally.contrib._torchmetrics_states`'s.

Imported by :mod:`torchtally.contrib.torchmetrics` alone, after torchmetrics
itself (whose absence that module reports with the extra to install).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torchmetrics
from torch import Tensor
from torchmetrics.utilities import dim_zero_cat, dim_zero_sum

from torchtally.contrib._torchmetrics_leaves import TorchMetricsObject, leaves_of
from torchtally.contrib._torchmetrics_states import install
from torchtally.errors import SyncError, UnsupportedObjectError
from torchtally.sync import Gathered, SyncState, callable_identity

__all__ = ["combined", "exported", "states_identity"]


def states_identity(
    leaves: tuple[torchmetrics.Metric, ...], leaves_options: list[dict[str, Any]]
) -> list[Any]:
    """Per leaf: class, options, each state's reduction and type (a summed state's shape too)."""
    return [
        [
            callable_identity(type(leaf)),
            leaf_opts,
            [
                [
                    state,
                    callable_identity(reduction),
                    type(leaf._defaults[state]).__name__,
                    # a summed state's shape fixes the numbers it adds up
                    list(getattr(leaf, state).shape)
                    if _summed(getattr(leaf, state), reduction)
                    else None,
                ]
                for state, reduction in leaf._reductions.items()
            ],
        ]
        for leaf, leaf_opts in zip(leaves, leaves_options, strict=True)
    ]


def exported(leaves: tuple[torchmetrics.Metric, ...], owner: str) -> SyncState:
    """Every leaf's states and update count, as a participant of ``sync_all`` sends them."""
    sums: list[Tensor] = []
    described: list[dict[str, Any]] = []
    tensors: list[Tensor] = []
    for leaf in leaves:
        if type(leaf)._sync_dist is not torchmetrics.Metric._sync_dist:
            raise UnsupportedObjectError(
                f"{owner}: {type(leaf).__name__} gathers its state with its own "
                f"_sync_dist, which from_torchmetrics cannot reproduce; sync it with "
                f"torchmetrics itself"
            )
        count = torch.tensor([float(leaf._update_count)], dtype=torch.float64)
        sums.append(count.to(leaf.device))
        states: list[list[Any]] = []
        for state_name, reduction in leaf._reductions.items():
            value = getattr(leaf, state_name)
            if _summed(value, reduction):
                sums.append(value.detach().to(leaf.device, torch.float64).reshape(-1))
                continue
            if isinstance(value, Tensor):
                states.append([state_name, "tensor", 1])
                tensors.append(value.detach())
                continue
            parts = [part.detach() for part in value]
            if reduction is dim_zero_cat and len(parts) > 1:
                parts = [dim_zero_cat(parts)]  # one tensor per rank instead of one per batch
            states.append([state_name, "list", len(parts)])
            tensors.extend(parts)
        described.append({"class": type(leaf).__name__, "states": states})
    return SyncState(
        sums=torch.cat(sums),
        meta={"leaves": described} if any(leaf["states"] for leaf in described) else None,
        tensors=tensors,
    )


def combined(
    root: TorchMetricsObject,
    leaves: tuple[torchmetrics.Metric, ...],
    gathered: Gathered,
    owner: str,
) -> tuple[TorchMetricsObject, tuple[Any, ...]] | None:
    """A copy of ``root`` holding every rank's states, and its leaves (``None``: not gathered here).

    ``root`` and its states are not touched.
    """
    assert gathered.sums is not None
    summed = _from_sums(leaves, gathered.sums)
    described: list[dict[str, Any]] = [{} for _ in leaves]
    if any(_described(leaf) for leaf in leaves):
        if gathered.states is None:
            return None  # gathered to another rank (sync_all(destination=...))
        described = _from_states(leaves, gathered.states, owner)
    # A copy of the metric holding the global states; the local tensors are not copied
    # (they are replaced in the copy right away) and not touched.
    memo: dict[int, Any] = {}
    for leaf in leaves:
        for state_name in leaf._reductions:
            value = getattr(leaf, state_name)
            memo[id(value)] = value
    copied = copy.deepcopy(root, memo)
    copies = leaves_of(copied)
    for leaf, (values, count), others in zip(copies, summed, described, strict=True):
        install(leaf, {**values, **others}, count)
    return copied, copies


def _from_sums(
    leaves: tuple[torchmetrics.Metric, ...], sums: Tensor
) -> list[tuple[dict[str, Tensor], int]]:
    """Every leaf's summed states and update count, from the added-up vector."""
    found = []
    offset = 0
    for leaf in leaves:
        count = int(sums[offset].round().item())
        offset += 1
        values: dict[str, Tensor] = {}
        for state_name, reduction in leaf._reductions.items():
            local = getattr(leaf, state_name)
            if not _summed(local, reduction):
                continue
            part = sums[offset : offset + local.numel()].reshape(local.shape)
            offset += local.numel()
            if not local.dtype.is_floating_point:
                part = part.round()
            values[state_name] = part.to(local.device, local.dtype)
        found.append((values, count))
    return found


def _from_states(
    leaves: tuple[torchmetrics.Metric, ...], states: list[tuple[Any, list[Any]]], label: str
) -> list[dict[str, Any]]:
    """Every leaf's gathered states (rank order), reduced as the metric's states say."""
    layouts = []
    for rank, (meta, tensors) in enumerate(states):
        try:
            layout = [
                (leaf["class"], [entry[:2] for entry in leaf["states"]]) for leaf in meta["leaves"]
            ]
            sizes = [entry[2] for leaf in meta["leaves"] for entry in leaf["states"]]
            if sum(sizes) != len(tensors) or any(
                not isinstance(size, int) or size < 0 for size in sizes
            ):
                raise ValueError("state sizes do not match the tensors")
        except (KeyError, TypeError, ValueError, IndexError) as error:
            raise SyncError(f"{label}: rank {rank}'s state is malformed: {error}") from None
        layouts.append(layout)
    if any(layout != layouts[0] for layout in layouts):
        found = "; ".join(f"rank {index}: {layout}" for index, layout in enumerate(layouts))
        raise SyncError(f"{label}: processes hold different states ({found})")
    # Split every rank's tensors by leaf and state.
    per_rank: list[list[dict[str, list[Tensor]]]] = []
    for meta, tensors in states:
        offset = 0
        rank_leaves: list[dict[str, list[Tensor]]] = []
        for leaf_meta in meta["leaves"]:
            split: dict[str, list[Tensor]] = {}
            for state_name, _, size in leaf_meta["states"]:
                split[state_name] = tensors[offset : offset + size]
                offset += size
            rank_leaves.append(split)
        per_rank.append(rank_leaves)
    reduced: list[dict[str, Any]] = []
    for index, (leaf, (cls, entries)) in enumerate(zip(leaves, layouts[0], strict=True)):
        values: dict[str, Any] = {}
        for state_name, kind in entries:
            where = f"{label}: state {state_name!r} of {cls} (leaf {index})"
            gathered = [rank_leaves[index][state_name] for rank_leaves in per_rank]
            reduction = leaf._reductions[state_name]
            if kind == "tensor":
                values[state_name] = _reduce_tensor_state(
                    [parts[0] for parts in gathered],
                    reduction,
                    getattr(leaf, state_name).device,
                    where,
                )
            else:
                local = getattr(leaf, state_name)
                device = local[0].device if local else leaf.device
                flat = [part.to(device) for parts in gathered for part in parts]
                values[state_name] = _reduce(flat, reduction, where) if flat else []
        reduced.append(values)
    return reduced


def _summed(value: Any, reduction: Any) -> bool:
    """A tensor state reduced by a sum: it travels in the all-reduced vector."""
    return (
        isinstance(value, Tensor)
        and reduction is dim_zero_sum
        and not value.dtype.is_complex
        and value.dtype != torch.bool
    )


def _described(leaf: Any) -> bool:
    """Whether a leaf has states that travel in the gathered payload."""
    return any(
        not _summed(getattr(leaf, name), reduction) for name, reduction in leaf._reductions.items()
    )


def _reduce(values: Any, reduction: Any, where: str) -> Any:
    if reduction is None:
        return values
    try:
        return reduction(values)
    except Exception as error:
        raise SyncError(
            f"{where}: the metric's reduction failed: {type(error).__name__}: {error}"
        ) from error


def _reduce_tensor_state(
    tensors: list[Tensor], reduction: Any, device: torch.device, where: str
) -> Any:
    """Stack the ranks' states of one tensor state and apply the metric's reduction."""
    layouts = [(tuple(tensor.shape), tensor.dtype) for tensor in tensors]
    if any(layout != layouts[0] for layout in layouts):
        found = "; ".join(
            f"rank {index}: shape {shape} {str(dtype).removeprefix('torch.')}"
            for index, (shape, dtype) in enumerate(layouts)
        )
        raise SyncError(f"{where} differs between processes ({found})")
    return _reduce(torch.stack([tensor.to(device) for tensor in tensors]), reduction, where)

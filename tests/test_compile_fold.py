"""What a compiled step's fold leaves in the graph, and that it keeps every state to the bit.

Inside ``torch.compile`` an objective folds each batch straight into its state tensors. A write
into some rows of a state tensor becomes a copy of the whole tensor in the compiled graph, and
a ``stack`` a buffer with a view per input: at 64x10 on one CPU thread, the graph of a composed
loss's call took 9 µs against 6 µs for the same call by hand. These tests read the graph AOT
autograd hands to its compiler (deterministic, no timing), and compare the states a compiled
step leaves with those of eager updates on integer-valued data, where every sum is exact in
float64 and the two must agree to the bit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch._dynamo
from torch import Tensor
from torch._dynamo.backends.common import aot_autograd
from torch.nn import functional

import torchtally as tt


def mae(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).abs().mean(1)


def mse(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).pow(2).mean(1)


def forward_graph_ops(step: Callable[..., Any], *inputs: Tensor) -> list[str]:
    """The ATen ops of the forward graph the last compilation of ``step`` gave its compiler."""
    graphs: list[torch.fx.GraphModule] = []

    def keep(graph: torch.fx.GraphModule, _: Any) -> Callable[..., Any]:
        graphs.append(graph)
        return graph.forward  # type: ignore[no-any-return]

    torch._dynamo.reset()
    compiled = torch.compile(step, backend=aot_autograd(fw_compiler=keep), fullgraph=True)
    for _ in range(3):  # state made on first use, then the steady graph
        compiled(*inputs)
    return [
        str(node.target).split(".")[1] if str(node.target).startswith("aten.") else str(node.target)
        for node in graphs[-1].graph.nodes
        if node.op == "call_function"
    ]


def partial_writes(ops: list[str]) -> list[str]:
    """Ops that write some rows of a tensor, or stack tensors into a new buffer."""
    return [op for op in ops if op.endswith("_scatter") or op in ("cat", "stack", "index_put")]


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "kind", ["composed loss", "collection of per-sample values and a batch mean"]
)
def test_a_compiled_fold_writes_each_state_tensor_once_whole(kind: str) -> None:
    # Before: the loss's per-sample rows 0 and 2 and its batch-mean row 1 were written apart,
    # each write a slice_scatter of the whole state tensor, and the values were stacked first.
    if kind == "composed loss":
        loss = tt.Loss(functional.mse_loss, "MSE") + 0.5 * tt.Loss(mae, "MAE")
        outputs = torch.randn(8, 3, requires_grad=True)

        def step(outputs: Tensor, targets: Tensor) -> Any:
            return loss(outputs, targets)

    else:
        metrics = tt.MetricCollection(MAE=mae, MSE=mse, Batch=functional.mse_loss)
        outputs = torch.randn(8, 3)

        def step(outputs: Tensor, targets: Tensor) -> Any:
            return metrics.update(outputs, targets)

    ops = forward_graph_ops(step, outputs, torch.randn(8, 3))
    assert partial_writes(ops) == []


def integer_batches(sizes: list[int], features: int = 3) -> list[tuple[Tensor, Tensor]]:
    """Small integers as float32: every sum below is exact in float64, whatever its order."""
    generator = torch.Generator().manual_seed(0)
    return [
        (
            torch.randint(-8, 9, (size, features), generator=generator).float(),
            torch.randint(-8, 9, (size, features), generator=generator).float(),
        )
        for size in sizes
    ]


def first(outputs: Tensor, targets: Tensor) -> Tensor:
    return outputs[:, 0] - targets[:, 0]  # per-sample, integers


def total(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs[:, 1] * targets[:, 1]).sum()  # a batch total, an integer


def hits(outputs: Tensor, targets: Tensor) -> Tensor:
    return outputs[:, 0] > targets[:, 0]  # per-sample booleans: summed exactly as integers


def batch_mean(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs[:, 2] + targets[:, 2]).mean()  # a batch mean (exact: x B is an integer)


def assert_same_states(compiled: dict[str, Any], eager: dict[str, Any]) -> None:
    assert compiled["state"] == eager["state"]  # names, kinds, rows, dtypes, sizes
    assert len(compiled["tensors"]) == len(eager["tensors"])
    for found, expected in zip(compiled["tensors"], eager["tensors"], strict=True):
        assert found.dtype == expected.dtype and found.shape == expected.shape
        assert torch.equal(found, expected), (found, expected)


def made() -> tuple[tt.MetricCollection[Tensor, Tensor], tt.CompositionalLoss[Tensor, Tensor]]:
    metrics = tt.MetricCollection(First=first, Batch=batch_mean, Hits=hits) | tt.Metric(
        total, "Total", aggregation="sum"
    )
    worst = tt.Metric(first, "Worst", aggregation="max")
    loss = tt.Loss(first, "First") + 2 * tt.Loss(batch_mean, "Batch")
    return metrics | worst, loss


@pytest.mark.timeout(300)
@pytest.mark.parametrize("weighted", ["none", "per-sample", "number"])
def test_a_compiled_fold_leaves_the_state_eager_updates_leave(weighted: str) -> None:
    # Means and sums of per-sample vectors and batch means or totals, with and without
    # weights, and beside them a maximum and booleans in a mean (both folded as before): the
    # same state tensors, to the bit, so that compute(), sync(dataset_size=...) and a saved
    # state cannot tell the two apart.
    sizes = [4, 4, 3, 4]
    data = integer_batches(sizes)
    generator = torch.Generator().manual_seed(1)
    per_sample = [torch.randint(0, 4, (size,), generator=generator).float() for size in sizes]
    weights: list[Any] = [None] * len(sizes)
    if weighted == "per-sample":
        weights = per_sample
    elif weighted == "number":
        weights = [2.0, 4.0, 0.0, 8.0]
    compiled_objectives, eager_objectives = made(), made()
    if weighted != "none":  # a batch total cannot be weighted: leave the sum out
        compiled_objectives = (tt.MetricCollection(First=first, Batch=batch_mean), made()[1])
        eager_objectives = (tt.MetricCollection(First=first, Batch=batch_mean), made()[1])

    def step(outputs: Tensor, targets: Tensor, weight: Any) -> Tensor:
        metrics, loss = compiled_objectives
        metrics.update(outputs, targets, weight=weight)
        return loss(outputs, targets, weight=weight)

    torch._dynamo.reset()
    compiled = torch.compile(step)
    for (outputs, targets), weight in zip(data, weights, strict=True):
        compiled(outputs, targets, weight)
        eager_objectives[0].update(outputs, targets, weight=weight)
        eager_objectives[1](outputs, targets, weight=weight)
    for compiled_objective, eager_objective in zip(
        compiled_objectives, eager_objectives, strict=True
    ):
        assert_same_states(compiled_objective.state_dict(), eager_objective.state_dict())
        expected = eager_objective.compute()
        found = compiled_objective.compute()
        assert list(found) == list(expected)
        for name, value in expected.items():
            assert torch.equal(found[name], value), name

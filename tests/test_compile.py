"""Objectives inside ``torch.compile``: no fall-back to eager, a handful of recompilations, and
the same values as eager objectives fed the same data.

torchtally 0.1 kept a Python list of queued batches, which dynamo guarded on: after 8 steps the
whole training step, model included, fell back to eager (101 steps: 5.8 s compiled vs 0.02 s
eager). Compilation is slow on a small CPU machine: the runs stay short.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch._dynamo
from torch import Tensor
from torch._dynamo.utils import counters
from torch.nn import functional

import torchtally as tt


def mae(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).abs().mean(1)


def mse(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).pow(2).mean(1)


def sizes(steps: int) -> list[int]:
    """A varying last batch: every tenth batch is smaller, and not always of the same size."""
    return [16 if step % 10 != 9 else 3 + step % 4 for step in range(steps)]


def batches(steps: int) -> list[tuple[Tensor, Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [
        (torch.randn(size, 4, generator=generator), torch.randn(size, 1, generator=generator))
        for size in sizes(steps)
    ]


def run_compiled(
    step: Callable[[Tensor, Tensor], Any], data: list[tuple[Tensor, Tensor]], fullgraph: bool
) -> dict[str, int]:
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(step, fullgraph=fullgraph)
    for inputs, targets in data:
        compiled(inputs, targets)
    frames = counters["frames"]
    return {
        "graph_breaks": sum(counters["graph_break"].values()),
        "unique_graphs": counters["stats"]["unique_graphs"],
        "frames": frames["total"],
        "frames_ok": frames["ok"],
    }


def assert_same(compiled: dict[str, Tensor], eager: dict[str, Tensor]) -> None:
    assert list(compiled) == list(eager)
    for name, value in eager.items():
        torch.testing.assert_close(compiled[name], value, rtol=1e-6, atol=1e-7)


@pytest.mark.timeout(300)
def test_a_training_step_with_a_collection_and_a_composed_loss_compiles_once_or_twice() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    loss = tt.Loss(functional.mse_loss, "MSE") + 0.5 * tt.Loss(mae, "MAE")
    metrics = tt.MetricCollection(MSE=mse, MAE=mae, Scalar=functional.mse_loss)
    eager_loss = tt.Loss(functional.mse_loss, "MSE") + 0.5 * tt.Loss(mae, "MAE")
    eager_metrics = tt.MetricCollection(MSE=mse, MAE=mae, Scalar=functional.mse_loss)

    def step(inputs: Tensor, targets: Tensor) -> Tensor:
        outputs = model(inputs)
        value = loss(outputs, targets)
        metrics.update(outputs.detach(), targets)
        return value

    data = batches(200)
    stats = run_compiled(step, data, fullgraph=False)
    returned = []
    with torch.no_grad():
        for inputs, targets in data:
            outputs = model(inputs)
            returned.append(eager_loss(outputs, targets))
            eager_metrics.update(outputs, targets)
    assert stats["graph_breaks"] == 0
    assert stats["frames"] == stats["frames_ok"]  # nothing fell back to eager
    assert stats["unique_graphs"] <= 4  # first use, then a dynamic batch size
    assert_same(loss.compute(), eager_loss.compute())
    assert_same(metrics.compute(), eager_metrics.compute())


@pytest.mark.timeout(300)
def test_a_loss_compiles_with_fullgraph_and_keeps_its_values_and_gradients() -> None:
    loss = tt.Loss(functional.mse_loss, "MSE") ** 2 + 0.5 * tt.Loss(mae, "MAE")
    eager = tt.Loss(functional.mse_loss, "MSE") ** 2 + 0.5 * tt.Loss(mae, "MAE")
    data = [(outputs, targets.expand(-1, 4)) for outputs, targets in batches(12)]
    stats = run_compiled(loss, data, fullgraph=True)
    for outputs, targets in data:
        eager(outputs, targets)
    assert stats["graph_breaks"] == 0 and stats["unique_graphs"] <= 4
    assert_same(loss.compute(), eager.compute())
    outputs, targets = data[0]
    outputs = outputs.clone().requires_grad_(True)
    reference = outputs.detach().clone().requires_grad_(True)
    compiled = torch.compile(loss, fullgraph=True)
    compiled(outputs, targets).backward()
    eager(reference, targets).backward()
    torch.testing.assert_close(outputs.grad, reference.grad)


@pytest.mark.timeout(300)
def test_weighted_updates_and_schedules_compile_without_breaks() -> None:
    kl = tt.Loss(mae, "KL")
    loss = tt.Loss(functional.mse_loss, "CE") + tt.schedules.linear(0.0, 1.0, steps=6) * kl
    eager = tt.Loss(functional.mse_loss, "CE") + tt.schedules.linear(0.0, 1.0, steps=6) * kl
    metric = tt.Metric(mae, "MAE")
    eager_metric = tt.Metric(mae, "MAE")

    def step(outputs: Tensor, targets: Tensor) -> Tensor:
        metric.update(outputs, targets, weight=torch.ones(outputs.shape[0]) * 2)
        return loss(outputs, targets)

    data = [(outputs[:, :1], targets) for outputs, targets in batches(12)]
    stats = run_compiled(step, data, fullgraph=True)
    values = []
    for outputs, targets in data:
        eager_metric.update(outputs, targets, weight=torch.ones(outputs.shape[0]) * 2)
        values.append(eager(outputs, targets))
    assert stats["graph_breaks"] == 0
    assert_same(metric.compute(), eager_metric.compute())
    assert_same(loss.compute(), eager.compute())
    assert loss.schedule_values() == eager.schedule_values() == {"linear(0→1, 6)": 1.0}


def first(outputs: Tensor, targets: Tensor) -> Tensor:
    return outputs[:, 0]


def hit(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs[:, 0] > 0).to(torch.int8)


@pytest.mark.timeout(300)
def test_weights_of_zero_leave_values_out_inside_a_compiled_step() -> None:
    # In the graph as eagerly: weight 0 leaves NaN out of a mean and a sum, narrow integer
    # maxima stay exact, weighted integer sums are float64, and nothing included gives NaN.
    metrics = (
        tt.Metric(first, "Mean")
        | tt.Metric(first, "Sum", aggregation="sum")
        | tt.Metric(hit, "Hit", aggregation="max")
        | tt.Metric(hit, "Hits", aggregation="sum")
    )
    nothing = tt.Metric(first, "Nothing", aggregation="max")

    def step(outputs: Tensor, targets: Tensor) -> None:
        weight = (targets[:, 0] > 0).double()
        metrics.update(outputs, targets, weight=weight)
        nothing.update(outputs, targets, weight=torch.zeros_like(weight))

    data = []
    for outputs, targets in batches(12):
        kept = targets[:, 0] > 0
        data.append((torch.where(kept, outputs[:, 0], torch.nan)[:, None], targets))
    stats = run_compiled(step, data, fullgraph=True)
    assert stats["graph_breaks"] == 0
    values = torch.cat([outputs[:, 0] for outputs, _ in data]).double()
    kept = values[~values.isnan()]
    result = metrics.compute()
    assert result["Mean"].item() == pytest.approx(float(kept.mean()), rel=1e-6)
    assert result["Sum"].item() == pytest.approx(float(kept.sum()), rel=1e-6)
    assert result["Hit"].item() == 1 and result["Hit"].dtype == torch.int64
    assert result["Hits"].item() == int((kept > 0).sum())
    assert result["Hits"].dtype == torch.float64
    assert nothing.compute()["Nothing"].isnan()


@pytest.mark.timeout(300)
def test_values_folded_into_some_rows_of_an_accumulator_compile_without_breaks() -> None:
    # Per-sample maxima on rows 0 and 2 and a batch maximum on row 1: each part of the batch
    # changes every other row of the Max accumulator (a strided view of its state).
    def build() -> tt.MetricCollection[Tensor, Tensor]:
        return (
            tt.Metric(mae, "A", aggregation="max")
            | tt.Metric(functional.l1_loss, "B", aggregation="max")
            | tt.Metric(mse, "C", aggregation="max")
            | tt.Metric(mse, "D")
        )

    metrics, eager = build(), build()

    def step(outputs: Tensor, targets: Tensor) -> None:
        metrics.update(outputs, targets)

    data = [(outputs[:, :1], targets) for outputs, targets in batches(12)]
    stats = run_compiled(step, data, fullgraph=True)
    for outputs, targets in data:
        eager.update(outputs, targets)
    assert stats["graph_breaks"] == 0
    assert_same(metrics.compute(), eager.compute())


@pytest.mark.timeout(300)
def test_compute_and_reset_between_compiled_steps_see_every_batch() -> None:
    # A compute() caches the values; the next compiled step must drop the cache, and a reset
    # must empty the state the graph folds into.
    metrics = tt.MetricCollection(MAE=mae, Scalar=functional.mse_loss)
    eager = tt.MetricCollection(MAE=mae, Scalar=functional.mse_loss)
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(metrics.update, fullgraph=True)
    data = [(outputs[:, :1], targets) for outputs, targets in batches(20)]
    for _epoch in range(2):
        for index, (outputs, targets) in enumerate(data):
            compiled(outputs, targets)
            eager.update(outputs, targets)
            if index % 7 == 6:  # a look at the running value mid-epoch
                assert_same(metrics.compute(), eager.compute())
        assert_same(metrics.compute(), eager.compute())
        metrics.reset()
        eager.reset()
    assert sum(counters["graph_break"].values()) == 0
    assert counters["stats"]["unique_graphs"] <= 8


@pytest.mark.timeout(300)
def test_a_step_compiled_without_guards_on_globals_keeps_every_value_exact() -> None:
    # torch.compiler.skip_guard_on_globals_unsafe drops dynamo's checks on module globals (the
    # docs' faster option): the values must still see every batch, across compute() and reset().
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    loss = tt.Loss(functional.mse_loss, "MSE") + 0.5 * tt.Loss(mae, "MAE")
    metrics = tt.MetricCollection(MAE=mae, Scalar=functional.mse_loss)
    eager_loss = tt.Loss(functional.mse_loss, "MSE") + 0.5 * tt.Loss(mae, "MAE")

    def step(inputs: Tensor, targets: Tensor) -> Tensor:
        outputs = model(inputs)
        value = loss(outputs, targets)
        metrics.update(outputs.detach(), targets)
        return value

    torch._dynamo.reset()
    counters.clear()
    options = {"guard_filter_fn": torch.compiler.skip_guard_on_globals_unsafe}
    compiled = torch.compile(step, options=options)
    data = batches(24)
    for _epoch in range(2):
        maes: list[Tensor] = []
        for index, (inputs, targets) in enumerate(data):
            compiled(inputs, targets).backward()
            with torch.no_grad():
                outputs = model(inputs)
            eager_loss(outputs, targets)
            maes.append(mae(outputs, targets).double())
            if index % 9 == 8:  # a look mid-epoch: the next step must drop the cached values
                expected = torch.cat(maes).mean()
                torch.testing.assert_close(
                    metrics.compute()["MAE"].double(), expected, rtol=1e-6, atol=0
                )
        assert_same(loss.compute(), eager_loss.compute())
        expected = torch.cat(maes).mean()
        torch.testing.assert_close(metrics.compute()["MAE"].double(), expected, rtol=1e-6, atol=0)
        for objective in (loss, metrics, eager_loss):
            objective.reset()
    assert sum(counters["graph_break"].values()) == 0
    assert counters["frames"]["total"] == counters["frames"]["ok"]
    assert counters["stats"]["unique_graphs"] <= 8


def criterion(values: dict[str, Tensor]) -> Tensor:
    return torch.log1p(values["MAE"]) + torch.clamp(values["MSE"], max=1.0)


def parts(outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
    return {"Loss": mae(outputs, targets), "MSE": mse(outputs, targets)}


FRESH_DICT_CALLS: dict[str, Callable[[], Any]] = {
    "criterion": lambda: tt.CompositionalLoss(criterion, "c", MAE=mae, MSE=mse),
    "dict loss": lambda: tt.DictLoss(parts, "Loss", names=["MSE"]),
    "summed": lambda: tt.DictLoss.summed(parts, "Sum", names=["Loss", "MSE"]),
    "weighted": lambda: tt.DictLoss.summed(parts, "Sum", weights={"Loss": 1, "MSE": 0.5}),
}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", list(FRESH_DICT_CALLS))
def test_a_fresh_loss_of_a_dict_valued_call_compiles_with_fullgraph(kind: str) -> None:
    # Nothing of the loss is made before the compiled call: every lazy attribute (the calls,
    # the multi-value calls, whether names keep their order) is first read inside the graph.
    # Names are declared: names learnt from a batch seen in the graph break it once (documented).
    loss, eager = FRESH_DICT_CALLS[kind](), FRESH_DICT_CALLS[kind]()
    data = [(outputs[:, :2], targets.expand(-1, 2)) for outputs, targets in batches(3)]
    torch._dynamo.reset()
    compiled = torch.compile(loss, fullgraph=True)
    for outputs, targets in data:
        torch.testing.assert_close(compiled(outputs, targets), eager(outputs, targets))
    assert_same(loss.compute(), eager.compute())


@pytest.mark.timeout(300)
def test_number_weights_that_change_every_step_compile_once_with_fullgraph() -> None:
    # A token count given as a Python int or float changes every step: dynamo makes it a
    # symbolic number after the first change. Checking it with math.isfinite broke the graph
    # (an error with fullgraph=True), and a float recompiled at every new value.
    loss = tt.Loss(functional.l1_loss, "L1")
    worst = tt.Metric(mae, "Worst", aggregation="max")

    def step(outputs: Tensor, targets: Tensor, tokens: float) -> Tensor:
        worst.update(outputs, targets, weight=tokens)
        return loss(outputs, targets, weight=tokens)

    data = [(outputs[:, :1], targets) for outputs, targets in batches(5)]
    values = torch.stack([mae(outputs, targets).double().mean() for outputs, targets in data])
    for kind in (int, float):
        torch._dynamo.reset()
        counters.clear()
        compiled = torch.compile(step, fullgraph=True)
        tokens = [kind(3 + index * 1.25) if index != 3 else kind(0) for index in range(5)]
        for (outputs, targets), count in zip(data, tokens, strict=True):
            compiled(outputs, targets, count)
        assert counters["stats"]["unique_graphs"] <= 2
        weights = torch.tensor(tokens, dtype=torch.float64)
        expected = (values * weights).sum() / weights.sum()
        assert loss.compute()["L1"].item() == pytest.approx(expected.item(), rel=1e-6)
        kept = torch.cat([mae(*batch) for batch, count in zip(data, tokens, strict=True) if count])
        assert worst.compute()["Worst"].item() == kept.max().item()
        loss.reset()
        worst.reset()


@pytest.mark.timeout(300)
def test_running_values_after_compiled_updates_raise_the_library_error() -> None:
    # Batches folded in the graph are not remembered for running(): the library's error (it
    # was a bare RuntimeError) names the objective; after a reset, eager batches give running
    # values again.
    loss = tt.Loss(mae, "MAE")
    loss.running(window=2)
    data = [(torch.full((2, 1), float(value)), torch.zeros(2, 1)) for value in (1, 2, 3, 4)]
    torch._dynamo.reset()
    torch.compile(loss, fullgraph=True)(*data[0])
    with pytest.raises(tt.errors.CompileError, match=r"Loss \[MAE\].*torch.compile"):
        loss.running(window=3)
    assert loss.compute()["MAE"].item() == 1.0
    loss.reset()
    for outputs, targets in data[1:]:
        loss(outputs, targets)
    assert loss.running(window=2)["MAE"].item() == 3.5


@pytest.mark.timeout(300)
def test_state_first_made_in_a_graph_under_inference_mode_takes_eager_batches() -> None:
    # A compiled validation step run under torch.inference_mode() (Lightning's) makes the
    # state inside the graph: its outputs are inference tensors. The next eager batch then
    # raised torch's RuntimeError at the fold, after counting part of it (2.5 read 1.67).
    metrics = tt.MetricCollection(MAE=mae) | tt.Metric(mae, "Worst", aggregation="max")
    other = tt.Metric(mae, "MAE") | tt.Metric(mae, "Worst", aggregation="max")
    data = [(torch.full((2, 1), float(value)), torch.zeros(2, 1)) for value in (1, 2, 3, 4)]
    torch._dynamo.reset()
    compiled = torch.compile(metrics.update, fullgraph=True)
    with torch.inference_mode():
        compiled(*data[0])
    metrics.update(*data[1])
    assert metrics.compute() == {"MAE": torch.tensor(1.5), "Worst": torch.tensor(2.0)}
    with torch.inference_mode():
        torch.compile(other.update, fullgraph=True)(*data[2])
    metrics.merge_state(other)
    compiled(*data[3])
    assert metrics.compute() == {"MAE": torch.tensor(2.5), "Worst": torch.tensor(4.0)}


@pytest.mark.timeout(300)
def test_a_schedule_first_moved_in_a_graph_under_inference_mode_moves_on_eagerly() -> None:
    # Its position was made inside the graph (an inference tensor): the next eager forward
    # raised torch's RuntimeError after counting the batch and moving the position anyway.
    loss = tt.Loss(mae, "A") + tt.schedules.linear(0.0, 1.0, steps=4) * tt.Loss(mae, "B")
    ones, zeros = torch.ones(2, 1), torch.zeros(2, 1)
    torch._dynamo.reset()
    with torch.inference_mode():  # no training step: the position stays at 0
        assert torch.compile(loss, fullgraph=True)(ones, zeros).item() == 1.0  # weight 0
    assert loss(ones, zeros).item() == 1.0  # weight 0
    loss.advance_epoch()
    loss.load_state_dict(loss.state_dict())
    assert loss(ones, zeros).item() == 1.25  # weight 1/4
    assert loss.schedule_values() == {"linear(0→1, 4)": 0.5}
    assert loss.compute()["Combined Loss"].item() == pytest.approx(3.25 / 3)

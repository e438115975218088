"""Every objective composes with every other: ``a | b`` for each pair of kinds.

For each ordered pair of kinds (a callable-built metric, a collection, a hand-written
objective, a ``tt.wrap`` result, a torchmetrics adapter, a torcheval adapter, and a loss on the
left), the joined object reports the union of what each part reports alone on the same data,
and copies, pickles, ``state_dict`` round trips and a two-process gloo sync all work.
"""

from __future__ import annotations

import copy
import io
import itertools
import pickle
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torchmetrics
from torch import Tensor
from torch.nn import functional
from torcheval import metrics as eval_metrics

import _dist
import torchtally as tt
from _sync import simulate_sync  # tests/_sync.py
from torchtally.contrib.torcheval import from_torcheval
from torchtally.contrib.torchmetrics import from_torchmetrics
from torchtally.errors import NameConflictError, WeightError
from torchtally.losses import JoinedLoss
from torchtally.objectives import Joined, join
from torchtally.protocols import LossProtocol


def mae(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).abs().mean(1)


def mse(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).pow(2).mean(1)


def bias(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).mean(1)


def spread(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).std()  # a scalar batch value


class Peak(tt.Objective[Tensor, Tensor]):
    """A hand-written objective: its names are learnt from the data."""

    aggregation = "max"

    def calculate(self, outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
        return {"Peak": (outputs - targets).abs().amax(1)}


KINDS: dict[str, Callable[[], Any]] = {
    "metric": lambda: tt.Metric(mae, "MAE", higher_is_better=False),
    "collection": lambda: tt.MetricCollection(MSE=mse, Bias=bias),
    "custom": Peak,
    "wrapped": lambda: tt.wrap(spread),
    "torchmetrics": lambda: from_torchmetrics(torchmetrics.MeanAbsoluteError(), "TM MAE"),
    "torcheval": lambda: from_torcheval(eval_metrics.MeanSquaredError(), "TE MSE"),
}
LOSS: Callable[[], Any] = lambda: tt.Loss(functional.mse_loss, "Loss")  # noqa: E731
PAIRS = [pair for pair in itertools.permutations([*KINDS, "loss"], 2) if pair[1] != "loss"]
MAKE = {**KINDS, "loss": LOSS}


def batches(seed: int = 0, sizes: tuple[int, ...] = (4, 7, 2)) -> list[tuple[Tensor, Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(size, 3, generator=generator), torch.randn(size, 3, generator=generator))
        for size in sizes
    ]


def alone(kind: str, data: list[tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
    objective = MAKE[kind]()
    for outputs, targets in data:
        objective.update(outputs, targets)
    return dict(objective.compute())


def assert_values(found: dict[str, Tensor], expected: dict[str, Tensor]) -> None:
    assert set(found) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(found[name].double(), value.double(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(("left", "right"), PAIRS, ids=lambda pair: str(pair))
def test_every_pair_joins_and_reports_the_union(left: str, right: str) -> None:
    joined = MAKE[left]() | MAKE[right]()
    data = batches()
    for outputs, targets in data:
        joined.update(outputs, targets)
    assert_values(joined.compute(), {**alone(left, data), **alone(right, data)})
    if left == "loss":  # a loss on the left stays a loss: forward is differentiable
        outputs, targets = data[0]
        outputs = outputs.clone().requires_grad_(True)
        value = joined(outputs, targets)
        value.backward()
        assert outputs.grad is not None
        torch.testing.assert_close(value, functional.mse_loss(outputs, targets))


def round_trips(objective: Any) -> list[Any]:
    buffer = io.BytesIO()
    torch.save(objective, buffer)
    buffer.seek(0)
    return [
        copy.deepcopy(objective),
        pickle.loads(pickle.dumps(objective)),
        torch.load(buffer, weights_only=False),
    ]


@pytest.mark.parametrize(("left", "right"), PAIRS, ids=lambda pair: str(pair))
def test_every_pair_copies_pickles_and_restores(left: str, right: str) -> None:
    data = batches()
    joined = MAKE[left]() | MAKE[right]()
    for outputs, targets in data[:2]:
        joined.update(outputs, targets)
    expected = {**alone(left, data), **alone(right, data)}
    for duplicate in round_trips(joined):
        duplicate.update(*data[2])
        assert_values(duplicate.compute(), expected)
    fresh = MAKE[left]() | MAKE[right]()
    fresh.load_state_dict(joined.state_dict())
    fresh.update(*data[2])
    assert_values(fresh.compute(), expected)


def test_a_joined_update_with_a_bad_value_changes_no_part() -> None:
    def sometimes_wrong(outputs: Tensor, targets: Tensor) -> Tensor:
        return outputs.sum(1) if len(outputs) < 3 else outputs  # (B, 3) is not per-sample

    joined = from_torchmetrics(torchmetrics.MeanAbsoluteError(), "TM") | tt.Metric(
        sometimes_wrong, "Sum"
    )
    data = batches()
    joined.update(*data[2])  # a batch of 2: fine
    before = joined.compute()
    with pytest.raises(tt.errors.ResultShapeError):
        joined.update(*data[0])  # refused before the torchmetrics part saw it
    assert_values(joined.compute(), before)


def test_a_part_refusing_a_batch_an_earlier_part_took_stops_the_join_reporting() -> None:
    # The torchmetrics MAE took the batch, then BinaryAccuracy refused its target 5: compute()
    # reported an MAE over two batches beside an accuracy and a native MSE over one.
    outputs, targets = torch.tensor([[0.2], [0.9]]), torch.tensor([[0.0], [1.0]])
    joined = (
        from_torchmetrics(torchmetrics.MeanAbsoluteError(), "TM")
        | from_torchmetrics(torchmetrics.classification.BinaryAccuracy(), "Acc")
        | tt.Metric(mse, "MSE")
    )
    joined.update(outputs, targets)
    with pytest.raises(tt.errors.MetricCallError, match=r"Acc.*after .*TM.* took it"):
        joined.update(outputs, 5 * targets)
    for refused in (
        joined.compute,
        joined.state_dict,
        joined.sync_identity,
        lambda: copy.deepcopy(joined).merge_state(joined),
    ):
        with pytest.raises(tt.errors.MetricCallError, match="out of step"):
            refused()
    joined.reset()  # back in step
    joined.update(outputs, targets)
    assert_values(
        joined.compute(),
        {"TM": torch.tensor(0.15), "Acc": torch.tensor(1.0), "MSE": torch.tensor(0.025)},
    )


def test_a_part_that_cannot_take_outputs_and_targets_is_refused_at_the_join() -> None:
    class Counter:
        def update(self, outputs: Tensor) -> None: ...
        def compute(self) -> int:
            return 0

        def reset(self) -> None: ...

    with pytest.raises(
        tt.errors.UnsupportedObjectError, match=r"Counter.*update\(outputs, targets\)"
    ):
        from_torchmetrics(torchmetrics.MeanAbsoluteError()) | Counter()


def test_names_reported_twice_are_refused() -> None:
    with pytest.raises(NameConflictError, match="'MAE'"):
        tt.Metric(mae, "MAE") | tt.MetricCollection(MAE=mse)
    joined = Peak() | tt.Metric(mae, "Peak")  # the custom objective's name is learnt from data
    with pytest.raises(NameConflictError, match="'Peak'"):
        joined.update(*batches()[0])


def test_weights_go_to_torchtally_parts_and_are_refused_by_foreign_ones() -> None:
    joined = Peak() | tt.Metric(mae, "MAE")
    outputs, targets = batches()[0]
    joined.update(outputs, targets, weight=torch.tensor([1.0, 0.0, 0.0, 0.0]))
    assert joined.compute()["MAE"] == mae(outputs[:1], targets[:1])[0]
    with_adapter = joined | from_torchmetrics(torchmetrics.MeanAbsoluteError())
    with pytest.raises(WeightError, match="cannot weight"):
        with_adapter.update(outputs, targets, weight=2.0)


# -- sync of every pair on two gloo processes ---------------------------------------------------


def sync_scenario(rank: int, world: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    data = batches(seed=rank, sizes=(3 + rank, 2))
    for left, right in PAIRS:
        joined = MAKE[left]() | MAKE[right]()
        for outputs, targets in data:
            joined.update(outputs, targets)
        tt.sync_all(joined)
        results[f"{left}|{right}"] = joined.compute()
    return results


@pytest.mark.timeout(300)
def test_every_pair_syncs_on_two_processes(tmp_path: Path) -> None:
    records = _dist.launch(2, "test_composition:sync_scenario", tmp_path, timeout=240.0)
    every = [pair for rank in range(2) for pair in batches(seed=rank, sizes=(3 + rank, 2))]
    for left, right in PAIRS:
        expected = {**alone(left, every), **alone(right, every)}
        for record in records:
            assert_values(record[f"{left}|{right}"], expected)


# -- a loss joined with any objective stays a loss ------------------------------------------------


def mse_grad(outputs: Tensor, targets: Tensor) -> Tensor:
    """The gradient of ``mse_loss`` with respect to the outputs, by hand."""
    return 2 * (outputs - targets).detach() / outputs.numel()


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_loss_on_either_side_of_the_pipe_stays_a_loss(kind: str) -> None:
    data = batches()
    for joined in (LOSS() | MAKE[kind](), MAKE[kind]() | LOSS()):
        assert isinstance(joined, LossProtocol) and joined.is_loss is True
        assert (joined.name, joined.formula, joined.higher_is_better) == ("Loss", "[Loss]", False)
        for outputs, targets in data:
            outputs = outputs.clone().requires_grad_(True)
            value = joined(outputs, targets)
            value.backward()
            torch.testing.assert_close(value, functional.mse_loss(outputs, targets))
            torch.testing.assert_close(outputs.grad, mse_grad(outputs, targets))
        computed = joined.compute()
        assert next(iter(computed)) == "Loss"  # the loss first, whatever the order written
        assert_values(computed, {**alone("loss", data), **alone(kind, data)})


def test_forward_and_update_evaluate_every_part_once_per_batch() -> None:
    counts = {"loss": 0, "custom": 0, "wrapped": 0}

    def counted_mse(outputs: Tensor, targets: Tensor) -> Tensor:
        counts["loss"] += 1
        return functional.mse_loss(outputs, targets)

    def counted_spread(outputs: Tensor, targets: Tensor) -> Tensor:
        counts["wrapped"] += 1
        return spread(outputs, targets)

    class CountedPeak(Peak):
        def calculate(self, outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
            counts["custom"] += 1
            return super().calculate(outputs, targets)

    adapter = from_torchmetrics(torchmetrics.MeanAbsoluteError(), "TM MAE")
    joined = tt.Loss(counted_mse, "Loss") | CountedPeak() | tt.wrap(counted_spread) | adapter
    assert isinstance(joined, JoinedLoss)
    assert joined.parts[1:] == joined.others and joined.others[-1] is adapter
    data = batches()
    for index, (outputs, targets) in enumerate(data):
        if index % 2:
            joined.update(outputs, targets)
        else:
            joined(outputs, targets)
    assert counts == {"loss": 3, "custom": 3, "wrapped": 3}
    assert adapter.metric._update_count == 3
    assert joined.sync_parts() == (joined, adapter)  # the kept part syncs as its own participant
    expected = {**alone("loss", data), **alone("custom", data), **alone("torchmetrics", data)}
    expected["counted_spread"] = alone("wrapped", data)["spread"]
    assert_values(joined.compute(), expected)


def test_a_refused_forward_changes_no_part() -> None:
    def sometimes_wrong(outputs: Tensor, targets: Tensor) -> Tensor:
        return outputs.sum(1) if len(outputs) < 3 else outputs  # (B, 3) is not per-sample

    adapter = from_torchmetrics(torchmetrics.MeanAbsoluteError(), "TM")
    joined = LOSS() | adapter | tt.Metric(sometimes_wrong, "Sum") | Peak()
    data = batches()
    joined(*data[2])  # a batch of 2: fine
    before = joined.compute()
    with pytest.raises(tt.errors.ResultShapeError):
        joined(*data[0])
    assert adapter.metric._update_count == 1
    assert_values(joined.compute(), before)


def test_objective_pipe_loss_goes_through_join() -> None:
    adapter = from_torchmetrics(torchmetrics.MeanAbsoluteError(), "TM MAE")
    for joined in (adapter | LOSS(), join(adapter, LOSS()), tt.wrap(spread) | LOSS()):
        assert isinstance(joined, JoinedLoss) and joined.parts[0].name == "Loss"
    assert type(join(adapter, Peak())) is Joined


def test_a_loss_tracks_collections_with_dict_valued_callables_and_prefixes() -> None:
    def errors(outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
        return {"MAE": mae(outputs, targets), "Bias": bias(outputs, targets)}

    data = batches()
    collection = tt.MetricCollection(errors, MSE=mse, prefix="val/")
    reference = tt.MetricCollection(errors, MSE=mse, prefix="val/")
    for outputs, targets in data:
        reference.update(outputs, targets)
    for joined in (LOSS() | collection, collection | LOSS()):
        for outputs, targets in data:
            joined(outputs, targets)
        assert list(joined.compute()) == ["Loss", "val/MSE", "val/MAE", "val/Bias"]
        assert_values(joined.compute(), {**alone("loss", data), **reference.compute()})
    plain = LOSS() | tt.MetricCollection(MSE=mse)  # plain callables: the loss tracks them itself
    assert type(plain) is tt.Loss and [entry.name for entry in plain.tracked] == ["MSE"]


def test_a_pipe_takes_one_loss() -> None:
    with pytest.raises(tt.errors.FormulaError, match="combine losses with arithmetic"):
        (LOSS() | Peak()) | tt.Loss(mae, "MAE")
    with pytest.raises(tt.errors.FormulaError, match="combine losses with arithmetic"):
        tt.Loss(mae, "MAE") | (LOSS() | Peak())
    with pytest.raises(tt.errors.InvalidArgumentError, match="expected a torchtally loss"):
        JoinedLoss(Peak(), tt.wrap(spread))


def scheduled_joined() -> Any:
    """A scheduled loss joined with a hand-written objective and a torchmetrics adapter."""
    loss = tt.schedules.linear(0.0, 1.0, steps=4) * tt.Loss(functional.mse_loss, "MSE")
    return loss | Peak() | from_torchmetrics(torchmetrics.MeanAbsoluteError(), "TM MAE")


def test_a_joined_loss_keeps_its_schedules_through_copies_and_state_dicts() -> None:
    data = batches(sizes=(4, 7, 2, 5))
    uninterrupted = scheduled_joined()
    for outputs, targets in data[:3]:
        uninterrupted(outputs, targets)
    joined = scheduled_joined()
    assert joined.formula == "linear(0→1, 4) x [MSE]"
    for outputs, targets in data[:2]:
        joined(outputs, targets)
    assert joined.schedule_values() == {"linear(0→1, 4)": 0.5}
    restored = scheduled_joined()
    restored.load_state_dict(joined.state_dict())
    for duplicate in [*round_trips(joined), restored]:
        assert duplicate.schedule_values() == {"linear(0→1, 4)": 0.5}
        outputs, targets = data[2]
        torch.testing.assert_close(
            duplicate(outputs, targets), 0.5 * functional.mse_loss(outputs, targets)
        )
        assert duplicate.schedule_values() == uninterrupted.schedule_values()
        assert_values(duplicate.compute(), uninterrupted.compute())
    damaged = joined.state_dict()
    damaged["schedule_position"] = {"step": torch.tensor([-1]), "epoch": torch.tensor([0])}
    before, position = restored.compute(), restored.schedule_values()
    with pytest.raises(tt.errors.StateDictError, match="'schedule_position'"):
        restored.load_state_dict(damaged)
    assert restored.schedule_values() == position
    assert_values(restored.compute(), before)


def test_arithmetic_on_a_joined_loss_applies_to_the_loss_and_keeps_the_parts() -> None:
    adapter = from_torchmetrics(torchmetrics.MeanAbsoluteError(), "TM MAE")
    first = tt.Loss(functional.mse_loss, "MSE") | Peak()
    second = tt.Loss(mae, "MAE") | adapter
    combined = 2 * first + second / 4
    assert isinstance(combined, JoinedLoss)
    assert combined.formula == "2 x [MSE] + [MAE] / 4"
    assert [type(part).__name__ for part in combined.parts] == [
        "CompositionalLoss",
        "Peak",
        "TorchMetricsAdapter",
    ]
    assert combined.parts[2] is adapter
    outputs, targets = batches()[0]
    expected = 2 * functional.mse_loss(outputs, targets) + mae(outputs, targets).mean() / 4
    torch.testing.assert_close(combined(outputs, targets), expected)
    assert list(combined.compute()) == ["Combined Loss", "MSE", "MAE", "Peak", "TM MAE"]
    assert (-first).higher_is_better is True
    hits = tt.Loss(lambda o, t: (o.round() == t).float().mean(1), "Hits", higher_is_better=True)
    assert (first**2).formula == "[MSE]^2" and (first - hits).formula == "[MSE] - [Hits]"
    assert (tt.Loss(mae, "MAE") + first).formula == "[MAE] + [MSE]"
    assert sum([first, second]).formula == "[MSE] + [MAE]"
    with pytest.raises(tt.errors.FormulaError, match="cannot combine a loss with str"):
        first + "1"


def test_a_join_refuses_the_state_of_a_join_of_other_parts_and_changes_nothing() -> None:
    # A join's state names each value's part by its position. Loading the state of `a | b` into
    # `b | a` raised NameConflictError (not StateDictError) for declared names, and for names
    # learnt from data gave them to the other part: {'a/x': 1.5, 'b/y': 15.0} came back as
    # {'b/x': 1.5, 'a/y': 15.0}, each value under the other collection's prefix.
    def xs(outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
        return {"x": outputs[:, 0]}

    def ys(outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
        return {"y": 10 * outputs[:, 0]}

    pairs = [
        (
            lambda: tt.MetricCollection(xs, prefix="a/"),
            lambda: tt.MetricCollection(ys, prefix="b/"),
        ),
        (Peak, KINDS["metric"]),
        (Peak, KINDS["collection"]),
    ]
    data = batches()
    for first, second in pairs:
        saved = join(first(), second())
        saved(*data[0])
        for fed in (False, True):  # a fresh join (resuming a run) and one that saw a batch
            swapped, reference = join(second(), first()), join(second(), first())
            for objective in (swapped, reference)[: 2 if fed else 0]:
                objective(*data[1])
            with pytest.raises(tt.errors.StateDictError, match="the state is of another join"):
                swapped.load_state_dict(saved.state_dict())
            swapped(*data[2])
            reference(*data[2])
            assert_values(swapped.compute(), reference.compute())
        restored = join(first(), second())  # the same parts in the same order: loads
        restored.load_state_dict(saved.state_dict())
        assert_values(restored.compute(), saved.compute())


def test_joined_losses_merge_states_of_the_same_formula() -> None:
    data = batches(sizes=(4, 7, 2, 5))
    left, right, whole = (tt.Loss(mae, "MAE") | Peak() for _ in range(3))
    for index, (outputs, targets) in enumerate(data):
        (left if index % 2 else right)(outputs, targets)
        whole(outputs, targets)
    left.merge_state(right)
    assert_values(left.compute(), whole.compute())
    with pytest.raises(tt.errors.IncompatibleStateError, match="another formula"):
        left.merge_state(2 * tt.Loss(mae, "MAE") | Peak())


def abs_error(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).abs()


def binary_batches() -> list[tuple[Tensor, Tensor]]:
    return [(outputs[:, 0], (targets[:, 0] > 0).float()) for outputs, targets in batches()]


def merging_join() -> Any:
    return (
        tt.Metric(abs_error, "MAE")
        | from_torchmetrics(torchmetrics.MeanSquaredError(), "TM MSE")
        | from_torcheval(eval_metrics.BinaryAUROC(), "TE AUROC")
    )


def test_a_join_of_adapters_merges_every_part_as_the_concatenated_data() -> None:
    # merge_state raised IncompatibleStateError as soon as a part kept its own state.
    data = binary_batches()
    left, right = merging_join(), merging_join()
    for outputs, targets in data[:2]:
        left.update(outputs, targets)
    right.update(*data[2])
    left.merge_state(right)
    alone = merging_join()
    for outputs, targets in data:
        alone.update(outputs, targets)
    assert_values(left.compute(), alone.compute())
    assert_values(right.compute(), alone_on(data[2:]))  # the other join is unchanged


def alone_on(data: list[tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
    joined = merging_join()
    for outputs, targets in data:
        joined.update(outputs, targets)
    return dict(joined.compute())


def test_a_join_merge_refused_by_a_later_part_changes_no_part() -> None:
    data = binary_batches()
    left = merging_join()
    left.update(*data[0])
    before = left.compute()
    other_options = (
        tt.Metric(abs_error, "MAE")
        | from_torchmetrics(torchmetrics.MeanSquaredError(), "TM MSE")
        | from_torcheval(eval_metrics.BinaryAUROC(num_tasks=2), "TE AUROC")
    )
    with pytest.raises(tt.errors.IncompatibleStateError, match="num_tasks"):
        left.merge_state(other_options)
    assert_values(left.compute(), before)  # neither the native MAE nor the torchmetrics MSE
    stateful = tt.wrap(Counted()) | tt.Metric(mae, "MAE")
    with pytest.raises(tt.errors.IncompatibleStateError, match=r"Counted.*nothing was merged"):
        stateful.merge_state(tt.wrap(Counted()) | tt.Metric(mae, "MAE"))


class TargetTotal(eval_metrics.Metric[Tensor]):
    """A torcheval metric whose state stays at its default after a batch of zero targets."""

    def __init__(self) -> None:
        super().__init__()
        self._add_state("total", torch.tensor(0.0))

    @torch.inference_mode()
    def update(self, outputs: Tensor, targets: Tensor) -> TargetTotal:
        self.total += targets.sum()
        return self

    @torch.inference_mode()
    def compute(self) -> Tensor:
        return self.total.clone()

    @torch.inference_mode()
    def merge_state(self, metrics: Any) -> TargetTotal:
        for metric in metrics:
            self.total += metric.total
        return self


def test_a_join_merging_a_state_only_the_other_updated_reports_it() -> None:
    # The join's merge took the merged torcheval state but not that the other adapter had been
    # updated: a state equal to its defaults then reported NaN, with ComputedBeforeUpdatedWarning.
    def joined() -> Any:
        return tt.Metric(mae, "MAE") | from_torcheval(TargetTotal(), "Total")

    left, right = joined(), joined()
    right.update(torch.ones(2, 1), torch.zeros(2, 1))
    left.merge_state(right)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        values = left.compute()
    assert values == {"MAE": torch.tensor(1.0), "Total": torch.tensor(0.0)}
    assert left.state_dict()["parts"][0]["updated"] is True


class Counted:
    def __init__(self) -> None:
        self.count = 0

    def update(self, outputs: Tensor, targets: Tensor) -> None:
        self.count += len(outputs)

    def compute(self) -> int:
        return self.count

    def reset(self) -> None:
        self.count = 0


def test_a_kept_part_whose_reset_raises_leaves_the_join_as_it_was() -> None:
    # the torchtally parts were reset before the wrapped object's reset raised: the join
    # reported a NaN MAE (after the library's warning) beside the old count
    class Counter:
        def __init__(self) -> None:
            self.count, self.broken = 0, False

        def update(self, outputs: Tensor, targets: Tensor) -> None:
            self.count += 1

        def compute(self) -> int:
            return self.count

        def reset(self) -> None:
            if self.broken:
                raise RuntimeError("broken")
            self.count = 0

    outputs, targets = torch.tensor([[1.0], [3.0]]), torch.zeros(2, 1)
    first, second = Counter(), Counter()
    joined = tt.Metric(mae, "MAE") | tt.wrap(first, "First") | tt.wrap(second, "Second")
    joined.update(outputs, targets)
    before = joined.compute()
    first.broken = True
    with pytest.raises(tt.errors.MetricCallError, match="broken"):
        joined.reset()
    assert_values(joined.compute(), before)  # nothing changed
    first.broken, second.broken = False, True
    with pytest.raises(tt.errors.MetricCallError, match="broken"):
        joined.reset()  # the first was reset, the second not: out of step, and said so
    with pytest.raises(tt.errors.MetricCallError, match="cannot be restored"):
        joined.compute()
    second.broken = False
    joined.reset()
    joined.update(outputs, targets)
    assert_values(
        joined.compute(),
        {"MAE": torch.tensor(2.0), "First": torch.tensor(1), "Second": torch.tensor(1)},
    )


def synced_pair(first: str, second: str) -> list[Any]:
    """``Metric | first | second`` (adapter kinds) for two simulated ranks, updated."""
    adapters = {
        "torchmetrics": lambda: from_torchmetrics(torchmetrics.MeanSquaredError(), "TM MSE"),
        "torcheval": lambda: from_torcheval(eval_metrics.MeanSquaredError(), "TE MSE"),
    }
    ranks = [tt.Metric(abs_error, "MAE") | adapters[first]() | adapters[second]() for _ in "01"]
    ranks[0].update(torch.tensor([1.0, 2.0]), torch.zeros(2))
    ranks[1].update(torch.tensor([5.0]), torch.zeros(1))
    return ranks


def damaged(state: dict[str, Any], part: int) -> dict[str, Any]:
    """A join's state whose kept part ``part`` holds a state of other metrics (refused)."""
    state = copy.deepcopy(state)
    key = "leaves" if "leaves" in state["parts"][part] else "metrics"
    state["parts"][part][key] = {"Other": {}} if key == "metrics" else []
    return state


@pytest.mark.parametrize("tensors", [5, None])
def test_a_join_refuses_its_own_tensors_not_a_list_as_a_state_error(tensors: Any) -> None:
    # The join checked its own state before the parts loaded with list(state['tensors']): a
    # TypeError ('int' object is not iterable), where a lone objective raises StateDictError.
    outputs, targets = torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])
    joined = tt.Metric(abs_error, "MAE") | from_torchmetrics(torchmetrics.MeanSquaredError())
    joined.update(outputs, targets)
    before = joined.compute()
    state = {**joined.state_dict(), "tensors": tensors}
    with pytest.raises(tt.errors.StateDictError, match="list of tensors"):
        joined.load_state_dict(state)
    assert_values(joined.compute(), before)


@pytest.mark.parametrize("order", [("torchmetrics", "torcheval"), ("torcheval", "torchmetrics")])
def test_a_refused_load_keeps_the_synced_view_of_the_parts_that_loaded(
    order: tuple[str, str],
) -> None:
    # The join put back the part that had loaded by loading its saved state, which dropped the
    # adapter's synced view: after sync_all and a refused load, 'TM MSE' reported rank 0's 2.5
    # where it had reported the global 10.0 (and rank 1's raised no SyncError under destination=).
    synced = {
        "MAE": torch.tensor(8 / 3),
        "TM MSE": torch.tensor(10.0),
        "TE MSE": torch.tensor(10.0),
    }
    ranks = synced_pair(*order)
    simulate_sync([[ranks[0]], [ranks[1]]])
    saved = ranks[0].state_dict()
    for joined in ranks:
        assert_values(joined.compute(), synced)
        with pytest.raises(tt.errors.StateDictError, match=r"Other|holds metrics"):
            joined.load_state_dict(damaged(joined.state_dict(), 1))
        assert_values(joined.compute(), synced)
    simulate_sync([[ranks[0]], [ranks[1]]])  # the ranks are still at the same sync
    assert_values(ranks[1].compute(), synced)
    ranks[1].load_state_dict(saved)  # a load that succeeds replaces the view: rank 0's values
    mine = {"MAE": torch.tensor(1.5), "TM MSE": torch.tensor(2.5), "TE MSE": torch.tensor(2.5)}
    assert_values(ranks[1].compute(), mine)

    gathered = synced_pair(*order)
    simulate_sync([[gathered[0]], [gathered[1]]], destination=0)
    with pytest.raises(tt.errors.SyncError, match="another rank"):
        gathered[1].compute()
    with pytest.raises(tt.errors.StateDictError):
        gathered[1].load_state_dict(damaged(gathered[1].state_dict(), 1))
    with pytest.raises(tt.errors.SyncError, match="another rank"):
        gathered[1].compute()  # not rank 1's own values


class Picky(eval_metrics.MeanSquaredError):
    """A torcheval mean squared error refusing targets above 10."""

    def update(self, input: Tensor, target: Tensor, **kwargs: Any) -> Picky:
        if bool((target > 10).any()):
            raise ValueError("a target above 10")
        super().update(input, target, **kwargs)
        return self


OUT_OF_STEP: dict[str, Callable[[], Any]] = {
    "torchmetrics": lambda: from_torchmetrics(
        torchmetrics.MetricCollection(
            [torchmetrics.MeanSquaredError(), torchmetrics.classification.BinaryAccuracy()]
        )
    ),
    "torcheval": lambda: from_torcheval(
        {"MeanSquaredError": eval_metrics.MeanSquaredError(), "BinaryAccuracy": Picky()}
    ),
}


@pytest.mark.parametrize("kind", list(OUT_OF_STEP))
@pytest.mark.filterwarnings("ignore::torchtally.errors.ComputedBeforeUpdatedWarning")
def test_a_join_whose_adapter_is_out_of_step_loads_a_state(kind: str) -> None:
    # The join read every kept part's state_dict() first (to undo a refused load), which an
    # adapter out of step refuses: the load said to get back in step raised MetricCallError.
    def joined() -> Any:
        return (
            tt.Metric(abs_error, "MAE")
            | OUT_OF_STEP[kind]()
            | from_torchmetrics(torchmetrics.MeanAbsoluteError(), "TM MAE")
        )

    outputs, targets = torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])
    saved = joined()
    saved.update(outputs, targets)
    stuck = joined()
    with pytest.raises(tt.errors.MetricCallError, match="out of step"):
        stuck.update(outputs, 20 * targets)  # the MSE takes it, the accuracy refuses it
    with pytest.raises(tt.errors.StateDictError):
        stuck.load_state_dict(damaged(saved.state_dict(), 1))  # after the first part loaded
    with pytest.raises(tt.errors.MetricCallError, match="out of step"):
        stuck.compute()  # a refused load changes nothing: the first part is out of step again
    stuck.load_state_dict(saved.state_dict())
    assert_values(stuck.compute(), saved.compute())
    half = torch.tensor(0.5)  # outputs [1, 0] on targets [1, 1]: each value is 0.5
    names = ["MAE", "MeanSquaredError", "BinaryAccuracy", "TM MAE"]
    assert_values(stuck.compute(), dict.fromkeys(names, half))

"""``load_state_dict`` takes only a state of the object's own: an unknown top-level key is refused.

A key the object does not write was ignored: a join's parts loaded into a plain
metric were dropped without a word, a loss's formula and schedule positions
loaded into a metric too. Every kind of objective now refuses such a state with
:class:`~torchtally.errors.StateDictError` naming it, the unexpected keys and
the expected ones, and changes nothing; its own ``state_dict()`` still loads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torchmetrics
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor
from torcheval import metrics as eval_metrics

import torchtally as tt
from test_loss_state import mae, mse, parts  # tests/test_loss_state.py
from torchtally import schedules
from torchtally.contrib.torcheval import from_torcheval
from torchtally.contrib.torchmetrics import from_torchmetrics
from torchtally.errors import StateDictError
from torchtally.losses import DictLoss, Loss


class Hits:
    """An object keeping its own state in attributes."""

    def __init__(self) -> None:
        self.total = 0.0

    def update(self, outputs: Tensor, targets: Tensor) -> None:
        self.total += float((outputs - targets).abs().sum())

    def compute(self) -> float:
        return self.total

    def reset(self) -> None:
        self.total = 0.0


class Buffered(torch.nn.Module):
    """A module keeping its own state in a buffer (it has a ``state_dict``)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("total", torch.zeros(()))

    def update(self, outputs: Tensor, targets: Tensor) -> None:
        self.total += (outputs - targets).abs().sum()

    def compute(self) -> Tensor:
        return self.total

    def reset(self) -> None:
        self.total.zero_()


BATCHES = [
    (torch.tensor([[1.0], [2.0], [4.0]]), torch.zeros(3, 1)),
    (torch.tensor([[0.5]]), torch.tensor([[2.0]])),
]


def feed(objective: Any) -> None:
    """Two uneven batches; a loss through ``forward`` (its schedules advance)."""
    for outputs, targets in BATCHES:
        if getattr(objective, "is_loss", False) is True:
            objective(outputs, targets)
        else:
            objective.update(outputs, targets)


class Tracked:
    """A MetricTracker over a metric, fed and recorded once per epoch."""

    def __init__(self) -> None:
        self.metric = tt.Metric(mae, "A")
        self.tracker = tt.MetricTracker(self.metric, "A", higher_is_better=False)

    def update(self, outputs: Tensor, targets: Tensor) -> None:
        self.metric.update(outputs, targets)
        self.tracker.update()


BUILDERS: dict[str, Callable[[], Any]] = {
    "Metric": lambda: tt.Metric(mae, "A"),
    "MetricCollection": lambda: tt.MetricCollection(A=mae, B=mse),
    "Loss": lambda: Loss(mae, "A"),
    "scheduled loss": lambda: Loss(mae, "A") + schedules.linear(0.0, 1.0, 10) * Loss(mse, "B"),
    "DictLoss": lambda: DictLoss(parts, "MAE", names=["MSE"]),
    "join": lambda: tt.Metric(mae, "A") | tt.wrap(Hits(), "H"),
    "join with an adapter": lambda: (
        tt.Metric(mae, "A") | from_torchmetrics(torchmetrics.MeanSquaredError())
    ),
    "joined loss": lambda: (
        (Loss(mae, "A") + schedules.linear(0.0, 1.0, 10) * Loss(mse, "B"))
        | from_torcheval(eval_metrics.MeanSquaredError())
    ),
    "wrapped function": lambda: tt.wrap(lambda o, t: (o - t).abs().mean(), "W"),
    "wrapped object": lambda: tt.wrap(Hits(), "H"),
    "wrapped module": lambda: tt.wrap(Buffered(), "B"),
    "torchmetrics": lambda: from_torchmetrics(torchmetrics.MeanSquaredError()),
    "torchmetrics composition": lambda: from_torchmetrics(
        torchmetrics.MeanSquaredError() + torchmetrics.MeanAbsoluteError()
    ),
    "torcheval": lambda: from_torcheval(eval_metrics.MeanSquaredError()),
    "MetricTracker": Tracked,
}


def target_of(built: Any) -> Any:
    """What holds the state: the tracker of a :class:`Tracked`, else the objective."""
    return built.tracker if isinstance(built, Tracked) else built


def report(built: Any) -> Any:
    """What the object reports: a tracker's history, else ``compute()``."""
    return built.tracker.history if isinstance(built, Tracked) else built.compute()


def same(found: Any, expected: Any) -> bool:
    """Whether two nested states or reports are equal (tensors by value, NaN equal to NaN)."""
    if isinstance(expected, Tensor):
        return (
            isinstance(found, Tensor)
            and found.dtype == expected.dtype
            and found.shape == expected.shape
            and torch.allclose(found, expected, rtol=0, atol=0, equal_nan=True)
        )
    if isinstance(expected, dict):
        return (
            isinstance(found, dict)
            and list(found) == list(expected)
            and all(same(found[key], expected[key]) for key in expected)
        )
    if isinstance(expected, (list, tuple)):
        return (
            type(found) is type(expected)
            and len(found) == len(expected)
            and all(same(f, e) for f, e in zip(found, expected, strict=True))
        )
    return bool(found == expected)


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_an_extra_key_is_refused_and_changes_nothing(kind: str) -> None:
    built = BUILDERS[kind]()
    feed(built)
    target = target_of(built)
    state = target.state_dict()
    before_state, before = target.state_dict(), report(built)
    with pytest.raises(StateDictError) as caught:
        target.load_state_dict({**state, "junk": 1})
    message = str(caught.value)
    assert "'junk'" in message and "unexpected" in message
    assert all(repr(key) in message for key in state)  # the keys it expected
    assert same(report(built), before)
    assert same(target.state_dict(), before_state)


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_every_objectives_own_state_round_trips(kind: str) -> None:
    built = BUILDERS[kind]()
    feed(built)
    restored = BUILDERS[kind]()
    target_of(restored).load_state_dict(target_of(built).state_dict())
    assert same(report(restored), report(built))
    assert same(target_of(restored).state_dict(), target_of(built).state_dict())
    if isinstance(built, Tracked):  # a tracker's state holds no objective's
        restored.metric.load_state_dict(built.metric.state_dict())
    feed(built)  # and it goes on as the original does
    feed(restored)
    assert same(report(restored), report(built))


def test_the_reported_junk_key_is_refused_naming_the_objective() -> None:
    metric = tt.Metric(mae, "A")
    metric.update(*BATCHES[0])
    state = metric.state_dict()
    state["junk"] = 1
    fresh = tt.Metric(mae, "A")
    with pytest.raises(StateDictError, match=r"Metric 'A'.*unexpected \['junk'\]"):
        fresh.load_state_dict(state)
    with pytest.warns(tt.errors.ComputedBeforeUpdatedWarning):
        assert torch.isnan(fresh.compute()["A"])


@pytest.mark.parametrize(
    "other",
    [
        lambda: from_torchmetrics(torchmetrics.MeanSquaredError()),
        lambda: tt.wrap(Hits(), "H"),
    ],
)
def test_a_joins_state_is_refused_by_a_plain_metric(other: Callable[[], Any]) -> None:
    # It was accepted, and the parts' states were dropped: the metric reported A alone.
    joined = tt.Metric(mae, "A") | other()
    feed(joined)
    plain = tt.Metric(mae, "A")
    plain.update(*BATCHES[1])
    before = plain.compute()
    with pytest.raises(StateDictError, match=r"Metric 'A'.*unexpected \['owners', 'parts'"):
        plain.load_state_dict(joined.state_dict())
    assert same(plain.compute(), before)


def test_a_plain_state_is_refused_by_a_join() -> None:
    # Already refused: the join finds no parts' states.
    plain = tt.Metric(mae, "A")
    feed(plain)
    joined = tt.Metric(mae, "A") | from_torchmetrics(torchmetrics.MeanSquaredError())
    joined.update(*BATCHES[1])
    before = joined.compute()
    with pytest.raises(StateDictError, match="'parts'"):
        joined.load_state_dict(plain.state_dict())
    assert same(joined.compute(), before)


def test_a_losss_state_is_refused_by_a_metric() -> None:
    # It was accepted: the formula and the schedules' positions were dropped.
    loss = Loss(mae, "A") + schedules.linear(0.0, 1.0, 10) * Loss(mae, "A")
    feed(loss)
    metric = tt.Metric(mae, "A")
    with pytest.raises(StateDictError, match=r"unexpected \['formula', 'schedule_position'\]"):
        metric.load_state_dict(loss.state_dict())


def test_schedule_positions_are_refused_by_a_loss_without_schedules() -> None:
    loss = Loss(mae, "A")
    feed(loss)
    state = loss.state_dict()
    state["schedule_position"] = {"step": torch.ones(1, dtype=torch.int64)}
    with pytest.raises(StateDictError, match=r"Loss \[A\].*unexpected \['schedule_position'\]"):
        Loss(mae, "A").load_state_dict(state)


def test_a_wrapped_modules_state_is_not_taken_as_attributes() -> None:
    # A module's state holds 'state_dict'; one holding 'attributes' is another object's.
    module = tt.wrap(Buffered(), "B")
    feed(module)
    before = module.compute()
    with pytest.raises(StateDictError, match=r"unexpected \['attributes'\]"):
        module.load_state_dict({"version": 1, "attributes": {"total": 5.0}, "updated": True})
    assert same(module.compute(), before)


def test_metadata_kept_beside_a_state_is_nested() -> None:
    metric = tt.Metric(mae, "A")
    feed(metric)
    checkpoint = {"metrics": metric.state_dict(), "epoch": 3}
    restored = tt.Metric(mae, "A")
    restored.load_state_dict(checkpoint["metrics"])
    assert same(restored.compute(), metric.compute())


@given(st.one_of(st.text(), st.integers()))
def test_any_key_a_metric_does_not_write_is_refused(key: Any) -> None:
    metric = tt.Metric(mae, "A")
    metric.update(*BATCHES[0])
    state = metric.state_dict()
    if key in state:
        return
    before = metric.state_dict()
    with pytest.raises(StateDictError, match="unexpected"):
        metric.load_state_dict({**state, key: None})
    assert same(metric.state_dict(), before)


class Epochs(tt.Objective[Tensor, Tensor]):
    """A subclass whose state carries one more key, declared in ``state_keys``."""

    def __init__(self) -> None:
        super().__init__()
        self.epoch = 0

    def calculate(self, outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
        return {"E": mae(outputs, targets)}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "epoch": self.epoch}

    def state_keys(self) -> frozenset[str]:
        return super().state_keys() | {"epoch"}

    def load_state_dict(self, state_dict: Any) -> None:
        super().load_state_dict(state_dict)
        self.epoch = state_dict["epoch"]


def test_a_subclass_adding_a_key_declares_it_in_state_keys() -> None:
    saved = Epochs()
    feed(saved)
    saved.epoch = 3
    restored = Epochs()
    restored.load_state_dict(saved.state_dict())
    assert restored.epoch == 3 and same(restored.compute(), saved.compute())
    with pytest.raises(StateDictError, match=r"unexpected \['junk'\]"):
        restored.load_state_dict({**saved.state_dict(), "junk": 1})


def test_a_state_of_another_format_version_is_refused_by_every_kind() -> None:
    # The adapters and wrap() objects read any 'version' (a future format would load as this one)
    outputs, targets = torch.tensor([1.0, 3.0]), torch.zeros(2)
    for make in (
        lambda: from_torchmetrics(torchmetrics.MeanSquaredError()),
        lambda: from_torcheval(eval_metrics.MeanSquaredError()),
        lambda: tt.wrap(Hits(), "Total"),
        lambda: tt.Metric(lambda o, t: (o - t).abs(), "MAE"),
    ):
        source, target = make(), make()
        source.update(outputs, targets)
        state = {**source.state_dict(), "version": 99}
        target.update(outputs, outputs)
        before = target.compute()
        with pytest.raises(StateDictError, match=r"format version .* found version 99"):
            target.load_state_dict(state)
        after = target.compute()
        assert list(after) == list(before)
        for name in before:
            assert torch.equal(torch.as_tensor(after[name]), torch.as_tensor(before[name]))


@pytest.mark.parametrize("version", [torch.tensor([2, 2]), torch.tensor(2), "2", 2.5, None])
def test_a_version_that_is_no_whole_number_is_a_state_dict_error(version: Any) -> None:
    # A tensor version raised torch's RuntimeError (its truth value is ambiguous).
    metric = tt.Metric(lambda o, t: (o - t).abs(), "MAE")
    metric.update(torch.ones(2), torch.zeros(2))
    with pytest.raises(StateDictError, match=r"format version 2, found version"):
        metric.load_state_dict({**metric.state_dict(), "version": version})
    assert metric.compute() == {"MAE": torch.tensor(1.0)}

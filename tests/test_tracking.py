"""Tests of torchtally.tracking: MetricTracker, monitor_mode, and running values in a loop."""

from __future__ import annotations

import copy
import io
import math
import pickle
import re
from pathlib import Path
from typing import Any

import pytest
import torch
import torchmetrics
from torch import Tensor
from torch.nn import functional
from torcheval import metrics as eval_metrics

import _dist  # tests/_dist.py, importable through tests/conftest.py
import torchtally as tt
from torchtally.contrib.torcheval import from_torcheval
from torchtally.contrib.torchmetrics import from_torchmetrics
from torchtally.errors import InvalidArgumentError, StateDictError, TrackerError


def mae(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).abs().flatten(1).mean(1)


def accuracy(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs.argmax(1) == targets).float()


def epoch_of(objective: Any, value: float, size: int = 4) -> None:
    """One epoch whose epoch value of ``mae`` (or of a value computed like it) is ``value``."""
    objective.reset()
    objective.update(torch.full((size, 1), value), torch.zeros(size, 1))


def classification_loss() -> Any:
    ce = tt.Loss(functional.cross_entropy, "CE")
    hits = tt.Loss(accuracy, "Accuracy", higher_is_better=True)
    return ce - hits


# -- monitor_mode: every kind of objective -----------------------------------------------------


class Ranked(tt.Objective[Tensor, Tensor]):
    """A hand-written objective that says which way its values are better."""

    def calculate(self, outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
        return {"Hits": (outputs == targets).float(), "Misses": (outputs != targets).float()}

    def higher_is_better_for(self, name: str) -> bool | None:
        return {"Hits": True, "Misses": False}.get(name)


class Silent(tt.Objective[Tensor, Tensor]):
    """A hand-written objective that knows no direction."""

    def calculate(self, outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
        return {"Value": outputs}


class Counter:
    """A stateful metric object (wrapped with tt.wrap) that declares higher_is_better."""

    higher_is_better = True

    def __init__(self) -> None:
        self.total = 0.0

    def update(self, outputs: Tensor, targets: Tensor) -> None:
        self.total += float(outputs.sum())

    def compute(self) -> float:
        return self.total

    def reset(self) -> None:
        self.total = 0.0


def summed_parts(outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
    return {"a": (outputs - targets).pow(2).mean(), "b": (outputs - targets).abs().mean()}


ce = tt.Loss(functional.cross_entropy, "CE")
hits = tt.Loss(accuracy, "Accuracy", higher_is_better=True)
metric_up = tt.Metric(accuracy, "Acc", higher_is_better=True)
metric_down = tt.Metric(mae, "MAE", higher_is_better=False)

DIRECTIONS: list[tuple[str, Any, str, str]] = [
    ("metric, higher", metric_up, "Acc", "max"),
    ("metric, lower", metric_down, "MAE", "min"),
    ("collection", tt.MetricCollection(Acc=metric_up, MAE=metric_down), "MAE", "min"),
    (
        "prefixed collection",
        tt.MetricCollection(Acc=metric_up, MAE=metric_down, prefix="val/"),
        "val/Acc",
        "max",
    ),
    ("join", metric_up | metric_down, "Acc", "max"),
    ("hand-written objective", Ranked(), "Hits", "max"),
    ("hand-written objective", Ranked(), "Misses", "min"),
    ("wrapped function", tt.wrap(mae, "W", higher_is_better=False), "W", "min"),
    ("wrapped stateful object", tt.wrap(Counter(), "Count"), "Count", "max"),
    ("loss", ce, "CE", "min"),
    ("higher-is-better loss", hits, "Accuracy", "max"),
    ("ce - accuracy, combined", ce - hits, "Combined Loss", "min"),
    ("ce - accuracy, component", ce - hits, "Accuracy", "max"),
    ("negated loss", -ce, "Combined Loss", "max"),
    ("loss in a denominator", 1 / ce, "Combined Loss", "max"),
    ("power of a loss", ce**2 + 0.5 * tt.Loss(mae, "MAE"), "Combined Loss", "min"),
    (
        "scheduled weight",
        ce + tt.schedules.linear(0.0, 1.0, steps=10) * tt.Loss(mae, "MAE"),
        "Combined Loss",
        "min",
    ),
    ("loss | metric", ce | metric_up, "Acc", "max"),
    ("DictLoss", tt.DictLoss(summed_parts, "a"), "a", "min"),
    ("DictLoss.summed", tt.DictLoss.summed(summed_parts, "Total"), "Total", "min"),
    (
        "torchmetrics adapter",
        from_torchmetrics(torchmetrics.MeanSquaredError()),
        "MeanSquaredError",
        "min",
    ),
    (
        "torchmetrics adapter, higher",
        from_torchmetrics(torchmetrics.classification.BinaryAccuracy(), name="Acc"),
        "Acc",
        "max",
    ),
    (
        "torchmetrics collection adapter",
        from_torchmetrics(
            torchmetrics.MetricCollection(
                {"R2": torchmetrics.R2Score(), "MSE": torchmetrics.MeanSquaredError()}
            )
        ),
        "R2",
        "max",
    ),
    (
        "collection | adapter",
        tt.MetricCollection(MAE=metric_down)
        | from_torchmetrics(torchmetrics.classification.BinaryAccuracy(), name="Binary"),
        "Binary",
        "max",
    ),
]


@pytest.mark.parametrize(
    ("objective", "name", "mode"),
    [case[1:] for case in DIRECTIONS],
    ids=[f"{case[0]}:{case[2]}" for case in DIRECTIONS],
)
def test_monitor_mode_reads_the_direction_of_every_kind_of_objective(
    objective: Any, name: str, mode: str
) -> None:
    assert tt.monitor_mode(objective, name) == mode
    assert tt.monitor_mode(objective, name, for_="keras") == mode
    assert tt.monitor_mode(objective, name, for_="wandb") == mode
    assert tt.monitor_mode(objective, name, for_="optuna") == f"{mode}imize"
    assert tt.MetricTracker(objective, name).higher_is_better is (mode == "max")


GIVE = "give the metric higher_is_better="
HOOK = "return its direction from Silent.higher_is_better_for(name)"
NONE = "give the tool its mode yourself"
NO_DIRECTION: list[tuple[str, Any, str, str]] = [
    ("metric without a direction", tt.Metric(mae, "MAE"), "MAE", GIVE),
    ("hand-written objective", Silent(), "Value", HOOK),
    ("wrapped function", tt.wrap(mae, "W"), "W", GIVE),
    ("DictLoss.summed entry", tt.DictLoss.summed(summed_parts, "Total"), "a", NONE),
    (
        "torcheval adapter",
        from_torcheval(eval_metrics.MeanSquaredError()),
        "MeanSquaredError",
        NONE,
    ),
    (
        "torchmetrics composition",
        from_torchmetrics(torchmetrics.MeanSquaredError() + torchmetrics.MeanAbsoluteError()),
        "Combined Loss",
        NONE,
    ),
    ("not an objective", object(), "Value", NONE),
]


@pytest.mark.parametrize(
    ("objective", "name", "advice"),
    [case[1:] for case in NO_DIRECTION],
    ids=[case[0] for case in NO_DIRECTION],
)
def test_a_value_without_a_direction_is_refused(objective: Any, name: str, advice: str) -> None:
    # Every refusal said "give the metric higher_is_better=", which a hand-written class's
    # value, an adapter's or a DictLoss entry cannot take: each now says what works for it.
    with pytest.raises(TrackerError, match=f"cannot tell whether a higher {name!r} is better"):
        tt.monitor_mode(objective, name)
    with pytest.raises(TrackerError, match=re.escape(advice)):
        tt.monitor_mode(objective, name)
    if callable(getattr(objective, "compute", None)):
        here = "pass higher_is_better= here"
        with pytest.raises(TrackerError) as refused:
            tt.MetricTracker(objective, name)
        message = str(refused.value)
        assert message.endswith(here if advice == NONE else f"{advice} (or {here})")
        tracker = tt.MetricTracker(objective, name, higher_is_better=False)  # given: accepted
        assert not tracker.higher_is_better


class WithPerplexity(tt.MetricCollection):
    """A collection deriving the perplexity from its mean loss in ``finalize``."""

    def finalize(self, values: dict[str, Tensor]) -> dict[str, Tensor]:
        return {**values, "PPL": values["Loss"].exp()}


class DirectedPerplexity(WithPerplexity):
    def higher_is_better_for(self, name: str) -> bool | None:
        return False if name == "PPL" else super().higher_is_better_for(name)


def test_a_derived_value_is_refused_with_advice_it_can_follow() -> None:
    # The refusal for 'PPL' said "give the metric higher_is_better=": no metric computes it.
    loss = tt.Metric(mae, "Loss", higher_is_better=False)
    derived = WithPerplexity(Loss=loss)
    with pytest.raises(TrackerError) as refused:
        tt.MetricTracker(derived, "PPL")
    message = str(refused.value)
    assert "give the metric" not in message
    assert "WithPerplexity.higher_is_better_for(name)" in message
    assert message.endswith("(or pass higher_is_better= here)")
    with pytest.raises(TrackerError, match=r"WithPerplexity\.higher_is_better_for") as refused:
        tt.monitor_mode(derived, "PPL")
    assert "here" not in str(refused.value)  # monitor_mode takes no direction
    # Following either piece of advice works.
    assert not tt.MetricTracker(derived, "PPL", higher_is_better=False).higher_is_better
    assert tt.monitor_mode(DirectedPerplexity(Loss=loss), "PPL") == "min"
    # The collection's own entry without a direction still takes one.
    plain = WithPerplexity(Loss=tt.Metric(mae, "Loss"))
    with pytest.raises(TrackerError, match=f"{GIVE} \\(or pass"):
        tt.MetricTracker(plain, "Loss")


def test_monitor_mode_names_the_values_an_objective_reports_when_the_name_is_unknown() -> None:
    collection = tt.MetricCollection(Acc=metric_up, MAE=metric_down, prefix="val/")
    with pytest.raises(TrackerError, match=r"it reports \['val/Acc', 'val/MAE'\], not 'val/R2'"):
        tt.monitor_mode(collection, "val/R2")


def test_the_advice_for_a_refused_value_is_one_the_caller_can_follow() -> None:
    plain = tt.Metric(mae, "Gap")  # no direction
    with pytest.raises(TrackerError) as refused:
        tt.monitor_mode(plain, "Gap")
    message = str(refused.value)
    assert "give the metric higher_is_better=" in message
    assert "here" not in message  # monitor_mode takes no higher_is_better=
    with pytest.raises(TypeError):
        tt.monitor_mode(plain, "Gap", higher_is_better=True)  # type: ignore[call-arg]
    with pytest.raises(TrackerError, match=r"give the metric higher_is_better= \(or pass"):
        tt.MetricTracker(plain, "Gap")  # the tracker does take it
    # A name the objective does not report is a typo, not a missing direction.
    for refuse in (
        lambda: tt.monitor_mode(metric_down, "Mae"),
        lambda: tt.MetricTracker(metric_down, "Mae"),
    ):
        with pytest.raises(TrackerError) as unknown:
            refuse()
        assert "it reports ['MAE'], not 'Mae'" in str(unknown.value)
        assert "higher_is_better" not in str(unknown.value)
        assert "ask for one of the names it reports" in str(unknown.value)


def test_monitor_mode_refuses_an_unknown_tool() -> None:
    with pytest.raises(TrackerError, match="for_ must be one of"):
        tt.monitor_mode(metric_up, "Acc", for_="tensorboard")  # type: ignore[arg-type]
    assert issubclass(TrackerError, ValueError)


# -- the tracker ---------------------------------------------------------------------------------


def test_best_value_epoch_history_and_improvement_follow_the_direction() -> None:
    loss = tt.Loss(mae, "MAE")
    tracker = tt.MetricTracker(loss, "MAE")
    improving = []
    for value in (3.0, 2.0, 2.5, 1.0, 1.0):
        epoch_of(loss, value)
        assert tracker.update() == value
        improving.append(tracker.is_improving())
    assert tracker.history == [3.0, 2.0, 2.5, 1.0, 1.0]
    assert tracker.epochs == [0, 1, 2, 3, 4]
    assert (tracker.best_value, tracker.best_epoch) == (1.0, 3)  # the earliest of equal ones
    assert improving == [True, True, False, True, False]
    assert tracker.epochs_without_improvement == 1

    higher = tt.Metric(mae, "Score", higher_is_better=True)
    up = tt.MetricTracker(higher, "Score", first_epoch=1)
    for value in (3.0, 2.0, 2.5, 4.0, 1.0):
        epoch_of(higher, value)
        up.update()
    assert (up.best_value, up.best_epoch, up.epochs_without_improvement) == (4.0, 4, 1)
    assert "best 4 at epoch 4" in repr(up) and "↑" in repr(up)


def test_the_direction_of_a_composed_loss_comes_from_the_algebra() -> None:
    loss = classification_loss()
    tracker = tt.MetricTracker(loss, "Combined Loss")
    accuracy_tracker = tt.MetricTracker(loss, "Accuracy")
    assert not tracker.higher_is_better and accuracy_tracker.higher_is_better
    logits = [torch.tensor([[2.0, 0.0], [0.0, 2.0]]), torch.tensor([[0.0, 2.0], [0.0, 2.0]])]
    targets = torch.tensor([0, 1])
    for outputs in (logits[1], logits[0], logits[1]):  # half right, all right, half right
        loss.reset()
        loss(outputs, targets)
        tracker.update()
        accuracy_tracker.update()
    assert accuracy_tracker.history == [0.5, 1.0, 0.5]
    assert (tracker.best_epoch, accuracy_tracker.best_epoch) == (1, 1)
    best = functional.cross_entropy(logits[0], targets).item() - 1.0
    assert tracker.best_value == pytest.approx(best)


def test_patience_and_min_delta_decide_when_to_stop() -> None:
    metric = tt.Metric(mae, "MAE", higher_is_better=False)
    tracker = tt.MetricTracker(metric, "MAE", patience=2, min_delta=0.1)
    stops = []
    for value in (1.0, 0.95, 0.85, 0.8, 0.76, 0.5):
        epoch_of(metric, value)
        tracker.update()
        stops.append(tracker.should_stop())
    # 0.95 is not better than 1.0 by more than 0.1; 0.85 is; 0.8 and 0.76 are not.
    assert stops == [False, False, False, False, True, False]
    assert (tracker.best_value, tracker.best_epoch) == (0.5, 5)
    with pytest.raises(TrackerError, match="needs patience="):
        tt.MetricTracker(metric, "MAE").should_stop()


def test_a_nan_never_improves_and_a_nan_only_history_has_no_best() -> None:
    metric = tt.Metric(mae, "MAE", higher_is_better=False)
    tracker = tt.MetricTracker(metric, "MAE", patience=2)
    epoch_of(metric, math.nan)
    tracker.update()
    assert not tracker.is_improving()
    with pytest.raises(TrackerError, match="every value so far is NaN"):
        _ = tracker.best_value
    epoch_of(metric, 1.0)
    tracker.update()
    epoch_of(metric, math.nan)
    tracker.update()
    assert (tracker.best_value, tracker.best_epoch, tracker.epochs_without_improvement) == (
        1.0,
        1,
        1,
    )


class Reports:
    """An objective-like whose ``compute()`` reports ``value`` under ``'Score'``."""

    def __init__(self) -> None:
        self.value: Any = None

    def compute(self) -> dict[str, Any]:
        return {"Score": self.value}


def test_a_complex_or_boolean_value_is_refused_and_numpy_numbers_are_read() -> None:
    import numpy as np

    reports = Reports()
    tracker = tt.MetricTracker(reports, "Score", higher_is_better=True)
    for value, found in (
        (torch.tensor(1 + 2j), "torch.complex64"),
        (torch.tensor(True), "torch.bool"),
        (np.bool_(True), "bool"),
        (True, "bool True"),
        (1 + 2j, "complex"),
        (10**400, "int 1000000"),
    ):
        reports.value = value
        refused = rf"one (real )?number (a float holds )?for 'Score', found .*{found}"
        with pytest.raises(TrackerError, match=refused):
            tracker.update()
    assert tracker.history == []
    for value in (np.float32(0.25), np.int64(3), np.float64(0.5), torch.tensor([[2]])):
        reports.value = value
        tracker.update()
    assert tracker.history == [0.25, 3.0, 0.5, 2.0]


def test_exactly_min_delta_better_is_no_improvement_in_either_direction() -> None:
    # Lightning's and keras' strict comparison: better by more than min_delta.
    for higher, values in ((False, (-1.0, -1.5, -1.5000001)), (True, (-1.5, -1.0, -0.9999999))):
        tracker = tt.MetricTracker(Reports(), "Score", higher_is_better=higher, min_delta=0.5)
        improved = []
        for value in values:
            tracker.objective.value = value
            tracker.update()
            improved.append(tracker.is_improving())
        assert improved == [True, False, True]
        # the best value is the last improvement, not the best recorded value
        assert tracker.best_epoch == 2


def test_with_min_delta_the_best_value_is_the_last_improvement() -> None:
    tracker = tt.MetricTracker(Reports(), "Score", higher_is_better=False, min_delta=0.1)
    for value in (1.0, 0.95):
        tracker.objective.value = value
        tracker.update()
    assert (tracker.best_value, tracker.best_epoch, tracker.is_improving()) == (1.0, 0, False)


def test_asking_before_any_value_is_a_library_error() -> None:
    tracker = tt.MetricTracker(metric_down, "MAE")
    for ask in (lambda: tracker.best_value, lambda: tracker.best_epoch, tracker.is_improving):
        with pytest.raises(TrackerError, match="before any update"):
            ask()
    assert tracker.history == [] and "no best yet" in repr(tracker)


def test_an_unknown_or_non_scalar_value_is_refused_when_read() -> None:
    class Kept(tt.Objective[Tensor, Tensor]):
        aggregation = "cat"  # reports every value: a vector

        def calculate(self, outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
            return {"Scores": outputs}

    kept = Kept()
    kept.update(torch.tensor([0.5, 0.25]), torch.zeros(2))
    with pytest.raises(TrackerError, match=r"expected one number for 'Scores', found \(2,\)"):
        tt.MetricTracker(kept, "Scores", higher_is_better=True).update()

    class Learning(tt.Objective[Tensor, Tensor]):
        def calculate(self, outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
            return {"Other": outputs}

    learning = Learning()
    learning.update(torch.ones(2), torch.ones(2))
    tracker = tt.MetricTracker(learning, "Later", higher_is_better=True)  # learnt names
    with pytest.raises(TrackerError, match=r"does not report 'Later' \(found \['Other'\]\)"):
        tracker.update()
    assert tracker.history == []


def test_a_given_direction_must_agree_with_the_objective() -> None:
    with pytest.raises(TrackerError, match="contradicts"):
        tt.MetricTracker(classification_loss(), "Combined Loss", higher_is_better=True)
    assert not tt.MetricTracker(metric_down, "MAE", higher_is_better=False).higher_is_better


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"higher_is_better": "yes"}, "higher_is_better must be"),
        ({"patience": 0}, "patience must be a whole number >= 1"),
        ({"patience": 2.5}, "patience must be"),
        ({"min_delta": -0.1}, "min_delta must be a finite number >= 0"),
        ({"min_delta": math.inf}, "min_delta must be"),
        ({"first_epoch": 1.0}, "first_epoch must be a whole number"),
    ],
)
def test_bad_arguments_get_the_library_error(arguments: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        tt.MetricTracker(metric_down, "MAE", **arguments)


def test_bad_objectives_and_names_get_the_library_error() -> None:
    with pytest.raises(InvalidArgumentError, match="expected an objective"):
        tt.MetricTracker(3, "MAE")
    with pytest.raises(InvalidArgumentError, match="non-empty string"):
        tt.MetricTracker(metric_down, "")


def test_several_values_one_tracker_each() -> None:
    metrics = tt.MetricCollection(
        MAE=tt.Metric(mae, "MAE", higher_is_better=False),
        Score=tt.Metric(lambda o, t: -mae(o, t), "Score", higher_is_better=True),
        prefix="val/",
    )
    trackers = {name: tt.MetricTracker(metrics, name) for name in ("val/MAE", "val/Score")}
    for value in (2.0, 1.0, 3.0):
        epoch_of(metrics, value)
        for tracker in trackers.values():
            tracker.update()
    assert {name: t.best_epoch for name, t in trackers.items()} == {"val/MAE": 1, "val/Score": 1}
    assert trackers["val/Score"].history == [-2.0, -1.0, -3.0]


# -- persistence: a resumed run stops where an uninterrupted one does --------------------------


VALUES = [1.0, 0.8, 0.85, 0.7, 0.75, 0.72, 0.71, 0.9, 0.6]


def run(
    epochs: list[float], loss: Any, tracker: tt.MetricTracker, stop_early: bool = True
) -> list[int]:
    """Epochs of a loop; returns the epochs run (stopping when the tracker says so)."""
    ran = []
    for value in epochs:
        epoch_of(loss, value, size=3)
        tracker.update()
        ran.append(tracker.epochs[-1])
        if stop_early and tracker.should_stop():
            break
    return ran


def fresh() -> tuple[Any, tt.MetricTracker]:
    loss = tt.Loss(mae, "MAE") + 0.5 * tt.Loss(mae, "MAE") ** 2
    return loss, tt.MetricTracker(loss, "Combined Loss", patience=3, min_delta=0.01)


@pytest.mark.parametrize("interrupted_after", [1, 2, 4, 5])
@pytest.mark.parametrize("how", ["state_dict", "pickle", "deepcopy"])
def test_a_resumed_run_stops_at_the_same_epoch_as_an_uninterrupted_one(
    interrupted_after: int, how: str
) -> None:
    loss, tracker = fresh()
    uninterrupted = run(VALUES, loss, tracker)
    assert uninterrupted == [0, 1, 2, 3, 4, 5, 6]  # 0.75, 0.72, 0.71: no gain of 0.01 on 0.7

    loss, tracker = fresh()
    first = run(VALUES[:interrupted_after], loss, tracker)
    if how == "state_dict":
        buffer = io.BytesIO()
        torch.save({"loss": loss.state_dict(), "tracker": tracker.state_dict()}, buffer)
        buffer.seek(0)
        saved = torch.load(buffer, weights_only=True)  # plain data: safe loading works
        loss, tracker = fresh()
        loss.load_state_dict(saved["loss"])
        tracker.load_state_dict(saved["tracker"])
    elif how == "pickle":
        tracker = pickle.loads(pickle.dumps(tracker))
        loss = tracker.objective  # the objective travels with its tracker
    else:
        tracker = copy.deepcopy(tracker)
        loss = tracker.objective
    assert tracker.objective is loss
    resumed = first + run(VALUES[interrupted_after:], loss, tracker)
    assert resumed == uninterrupted
    assert tracker.best_epoch == 3 and tracker.best_value == pytest.approx(0.7 + 0.5 * 0.49)
    assert tracker.epochs_without_improvement == 3


def test_a_state_holds_values_and_the_loading_tracker_its_settings() -> None:
    saved = tt.MetricTracker(Reports(), "Score", higher_is_better=False, patience=3)
    for value in (1.0, 0.95, 0.9, 0.96):
        saved.objective.value = value
        saved.update()
    assert (saved.best_epoch, saved.should_stop()) == (2, False)
    other = tt.MetricTracker(
        Reports(), "Score", higher_is_better=False, patience=2, min_delta=0.08, first_epoch=1
    )
    other.load_state_dict(saved.state_dict())
    # replayed with min_delta=0.08: only 0.9 beats 1.0 by more; epochs counted from 1
    assert (other.best_epoch, other.best_value, other.epochs_without_improvement) == (3, 0.9, 1)
    assert other.history == saved.history and other.epochs == [1, 2, 3, 4]
    assert not other.should_stop()


def test_load_state_dict_checks_everything_and_changes_nothing_on_failure() -> None:
    loss, tracker = fresh()
    run([1.0, 0.5], loss, tracker)
    other = tt.MetricTracker(loss, "MAE")
    same = tt.MetricTracker(loss, "Combined Loss", higher_is_better=False)
    same.load_state_dict(tracker.state_dict())  # same name and direction: fine
    assert same.history == tracker.history
    state = tracker.state_dict()
    bad_states: list[tuple[Any, str]] = [
        ({**state, "version": 99}, r"format version 1, found version 99"),
        ([1, 2], "expected a dict"),
        ({**state, "history": [1.0, "x"]}, "a list of numbers"),
        ({**state, "history": 3.0}, "a list of numbers"),
        ({**state, "history": [1.0, 10**400]}, "a list of numbers"),  # no float holds it
        ({**state, "higher_is_better": True}, "higher_is_better=True"),
    ]
    for bad, message in bad_states:
        with pytest.raises(StateDictError, match=message):
            same.load_state_dict(bad)
        assert same.history == [1.0 + 0.5, 0.5 + 0.125]
    with pytest.raises(StateDictError, match="name='Combined Loss'"):
        other.load_state_dict(state)


def test_update_reads_the_synced_value_on_every_rank(tmp_path: Path) -> None:
    results = _dist.launch(2, "test_tracking:synced_tracking", tmp_path, 90.0)
    assert results[0] == results[1]  # every rank saw the same values and stops together
    single = synced_tracking(0, 1)
    assert results[0]["history"] == pytest.approx(single["history"], rel=1e-6)
    assert results[0]["stopped"] == single["stopped"]


def synced_tracking(rank: int, world: int) -> dict[str, Any]:
    """A rank's share of uneven validation batches; the tracker reads the synced value."""
    metric = tt.Metric(mae, "MAE", higher_is_better=False)
    tracker = tt.MetricTracker(metric, "MAE", patience=2)
    stopped = None
    generator = torch.Generator().manual_seed(0)
    for epoch in range(6):
        metric.reset()
        outputs = torch.rand(11, 1, generator=generator) * (1 + abs(epoch - 2))
        mine = slice(0, 3) if world > 1 and rank == 0 else slice(3 if world > 1 else 0, 11)
        metric.update(outputs[mine], torch.zeros(11, 1)[mine])
        metric.sync()
        tracker.update()
        if tracker.should_stop():
            stopped = epoch
            break
    return {"history": tracker.history, "stopped": stopped, "best": tracker.best_epoch}


# -- running values in a training loop -----------------------------------------------------------


def test_running_loss_is_the_weighted_mean_of_the_last_batches_and_leaves_the_epoch_alone() -> None:
    loss = tt.Loss(functional.mse_loss, "MSE") + 0.5 * tt.Loss(mae, "MAE")
    reference = tt.Loss(functional.mse_loss, "MSE") + 0.5 * tt.Loss(mae, "MAE")
    window = 3
    loss.running(window)  # remember the last batches from here on
    generator = torch.Generator().manual_seed(0)
    returned: list[tuple[float, int]] = []
    shown = []
    for size in (5, 2, 7, 1, 4, 6, 3):  # uneven batches
        outputs = torch.randn(size, 2, generator=generator, dtype=torch.float64)
        targets = torch.randn(size, 2, generator=generator, dtype=torch.float64)
        returned.append((loss(outputs, targets).item(), size))
        reference(outputs, targets)
        shown.append(loss.running(window)["Combined Loss"])
    last = returned[-window:]
    by_hand = sum(value * size for value, size in last) / sum(size for _, size in last)
    assert shown[-1].item() == pytest.approx(by_hand, rel=1e-12)
    assert shown[-1].device == torch.device("cpu") and shown[-1].ndim == 0
    first = returned[:1]
    assert shown[0].item() == pytest.approx(first[0][0], rel=1e-12)
    assert loss.compute() == reference.compute()  # the epoch value is not disturbed
    loss.reset()  # a new epoch: the window starts again
    assert loss.running(window) == {}


def test_the_companions_are_exported_and_dir_shows_no_stray_names() -> None:
    assert tt.MetricTracker is tt.tracking.MetricTracker
    assert tt.monitor_mode is tt.tracking.monitor_mode
    assert {"MetricTracker", "monitor_mode", "tracking"} <= set(tt.__all__)
    assert all(hasattr(tt, name) for name in tt.__all__)
    assert "annotations" not in dir(tt)  # left by `from __future__ import annotations`


def test_a_joined_prefixed_collection_tells_the_direction_of_its_reported_names() -> None:
    # The join answered directions for the parts' bare names only: the tracker refused
    # 'val/Accuracy' with a false "it reports ['Accuracy', 'Other']", and accepted a contradicting
    # higher_is_better= silently, so the best epoch followed the worst accuracy.
    def hits(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return (outputs == targets).float()

    validation = tt.MetricCollection(
        Accuracy=tt.Metric(hits, "Accuracy", higher_is_better=True), prefix="val/"
    )
    joined = validation | tt.Metric(lambda o, t: (o - t).abs(), "Other", higher_is_better=False)
    assert joined.reported_names == ("val/Accuracy", "Other")
    assert joined.higher_is_better_for("val/Accuracy") is True
    assert tt.monitor_mode(joined, "val/Accuracy") == "max"
    with pytest.raises(TrackerError, match="higher_is_better"):
        tt.MetricTracker(joined, "val/Accuracy", higher_is_better=False)
    tracker = tt.MetricTracker(joined, "val/Accuracy")
    for right in (1, 3, 2):
        joined.reset()
        targets = torch.tensor([1.0] * right + [0.0] * (3 - right))
        joined.update(torch.ones(3), targets)
        tracker.update()
    assert tracker.best_epoch == 1 and tracker.best_value == pytest.approx(1.0)  # from epoch 0

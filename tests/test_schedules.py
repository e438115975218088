"""Loss-weight schedules: values, labels, refusals, how they advance, and resuming a run.

Expected weights come from the schedules' definitions written out here in plain
Python (a straight line, half a cosine, a step function), and expected loss values
from the same expression written by hand in torch with those weights.
"""

from __future__ import annotations

import copy
import io
import math
import pickle
from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

import torchtally as tt
from torchtally import schedules
from torchtally.errors import ComputedBeforeUpdatedWarning, FormulaError, StateDictError
from torchtally.losses import COMBINED_NAME, DictLoss, Loss, LossBase


def linear_reference(start: float, end: float, steps: int, position: int) -> float:
    return start + (end - start) * min(position, steps) / steps


def cosine_reference(start: float, end: float, steps: int, position: int) -> float:
    return end + (start - end) * (1 + math.cos(math.pi * min(position, steps) / steps)) / 2


def piecewise_reference(points: dict[int, float], position: int) -> float:
    return points[max(start for start in points if start <= position)]


def ce_fn(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).pow(2).mean(1)


def kl_fn(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).abs().mean(1) + 0.5


def reg_fn(outputs: Tensor, targets: Tensor) -> Tensor:
    return outputs.pow(2).mean()  # a scalar batch mean


def accuracy_fn(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs.round() == targets).double().mean(1)


class WorstError(tt.Objective[Tensor, Tensor]):
    """A part a loss is joined with (a JoinedLoss)."""

    aggregation = "max"

    def calculate(self, outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
        return {"Worst": (outputs - targets).abs().amax(1)}


def data(count: int, seed: int = 0, size: int = 3) -> list[tuple[Tensor, Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(size + index % 3, 4, generator=generator, dtype=torch.float64),
            torch.randn(size + index % 3, 4, generator=generator, dtype=torch.float64),
        )
        for index in range(count)
    ]


# -- values and labels -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "end", "steps"), [(0.0, 1.0, 4), (1.0, 0.0, 10), (0.5, 2.5, 1), (-1.0, -0.25, 7)]
)
def test_linear_and_cosine_values_follow_their_definitions(
    start: float, end: float, steps: int
) -> None:
    ramp = schedules.linear(start, end, steps)
    curve = schedules.cosine(start, end, steps)
    positions = list(range(steps + 5))
    as_tensor = torch.tensor(positions)
    for schedule, reference in ((ramp, linear_reference), (curve, cosine_reference)):
        expected = [reference(start, end, steps, position) for position in positions]
        assert [schedule.value(position) for position in positions] == pytest.approx(
            expected, rel=1e-15, abs=1e-15
        )
        found = schedule.values(as_tensor)
        assert found.dtype == torch.float64
        torch.testing.assert_close(
            found, torch.tensor(expected, dtype=torch.float64), rtol=1e-15, atol=1e-15
        )
        assert schedule.value(0) == start and schedule.value(steps) == pytest.approx(end)
        assert schedule.value(10 * steps) == pytest.approx(end)  # it holds its end value
        assert (schedule.low, schedule.high) == (min(start, end), max(start, end))
        assert schedule.unit == "step"


@pytest.mark.parametrize(
    ("start", "end"), [(0.7, 0.1), (0.1, 0.7), (0.001, 0.9), (0.3, 0.1), (1e-8, 3.3), (2.0, 2.0)]
)
def test_ramps_start_and_end_exactly_on_their_values(start: float, end: float) -> None:
    # "then end": linear(0.7, 0.1) held 0.09999999999999998 after its ramp, cosine(0.1, 0.7)
    # began at 0.09999999999999998 (start + (end - start) x 1 is not end in floating point).
    for make in (schedules.linear, schedules.cosine):
        schedule = make(start, end, steps=7)
        loss = schedule * tt.Loss(ce_fn, "CE")
        assert (schedule.value(0), schedule.value(7), schedule.value(100)) == (start, end, end)
        assert schedule.values(torch.tensor([0, 7, 100])).tolist() == [start, end, end]
        assert list(loss.schedule_values().values()) == [start]
        positions = list(range(9))
        on_host = [schedule.value(position) for position in positions]
        assert schedule.values(torch.tensor(positions)).tolist() == on_host  # the same numbers
        assert all(min(start, end) <= value <= max(start, end) for value in on_host)


def test_cosine_is_half_way_at_half_the_steps() -> None:
    curve = schedules.cosine(1.0, 0.0, steps=10)
    assert curve.value(5) == pytest.approx(0.5, abs=1e-15)
    assert curve.value(1) > schedules.linear(1.0, 0.0, steps=10).value(1)  # flat at the start


def test_piecewise_values_hold_from_each_key_to_the_next() -> None:
    points = {0: 0.0, 100: 0.5, 250: 1.0, 251: 2.0}
    schedule = schedules.piecewise({250: 1.0, 0: 0.0, 251: 2, 100: 0.5})  # any key order
    positions = [0, 1, 99, 100, 101, 249, 250, 251, 252, 10**6]
    expected = [piecewise_reference(points, position) for position in positions]
    assert [schedule.value(position) for position in positions] == expected
    assert schedule.values(torch.tensor(positions)).tolist() == expected
    assert (schedule.low, schedule.high) == (0.0, 2.0)
    assert schedules.piecewise({0: 3}).value(10) == 3.0


@pytest.mark.parametrize(
    ("schedule", "label"),
    [
        (schedules.linear(0.0, 1.0, steps=1000), "linear(0→1, 1000)"),
        (schedules.linear(0.001, 2.5, 10), "linear(0.001→2.5, 10)"),
        (schedules.cosine(1, 0, 10, unit="epoch"), "cosine(1→0, 10 epochs)"),
        (schedules.cosine(-0.5, 0.0, 3), "cosine(-0.5→0, 3)"),
        (schedules.piecewise({0: 0.0, 100: 0.5, 200: 1.0}), "piecewise(0: 0, 100: 0.5, 200: 1)"),
        (schedules.piecewise({0: 1e-8, 5: 3}, unit="epoch"), "piecewise(0: 1e-08, 5: 3 epochs)"),
    ],
)
def test_labels(schedule: schedules.Schedule, label: str) -> None:
    assert schedule.label == label


def test_schedules_are_frozen_data() -> None:
    schedule = schedules.linear(0.0, 1.0, 10)
    assert schedule == schedules.linear(0, 1, 10) and hash(schedule) == hash(
        schedules.linear(0, 1, 10)
    )
    assert schedule != schedules.linear(0.0, 1.0, 10, unit="epoch")
    assert schedule != schedules.cosine(0.0, 1.0, 10)
    for clone in (pickle.loads(pickle.dumps(schedule)), copy.deepcopy(schedule)):
        assert clone == schedule and clone.label == schedule.label
    with pytest.raises(AttributeError):
        schedule.start = 2.0  # type: ignore[misc]
    assert tt.schedules is schedules


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda: schedules.linear(-1.0, 1.0, 10), "linear(-1→1, 10): the values change sign"),
        (lambda: schedules.cosine(0.5, -0.5, 10), "the values change sign (-0.5 to 0.5)"),
        (lambda: schedules.piecewise({0: 1.0, 5: -1.0}), "the values change sign"),
        (lambda: schedules.linear(0, 1, 0), "steps must be an int >= 1, found 0"),
        (lambda: schedules.linear(0, 1, 2.5), "steps must be an int >= 1, found 2.5"),
        (lambda: schedules.cosine(0, 1, True), "steps must be an int >= 1, found True"),
        (lambda: schedules.linear(0, float("nan"), 3), "end must be finite, found nan"),
        (lambda: schedules.cosine(float("inf"), 1, 3), "start must be finite, found inf"),
        (lambda: schedules.linear("0", 1, 3), "start must be a number, found str"),
        (lambda: schedules.linear(False, 1, 3), "start must be a number, found bool"),
        (lambda: schedules.linear(0, 1, 3, unit="batch"), "unit must be one of ['step', 'epoch']"),
        (lambda: schedules.piecewise({1: 1.0}), "the weight at position 0, found [1]"),
        (lambda: schedules.piecewise({0: 1.0, -2: 1.0}), "positions must be ints >= 0, found -2"),
        (lambda: schedules.piecewise({0: 1.0, 1.5: 1.0}), "positions must be ints >= 0, found 1.5"),
        # a position no step count reaches (int64): a raw ValueError at the first forward
        (lambda: schedules.piecewise({0: 1.0, 2**63: 0.5}), f"below 2**63, found {2**63}"),
        (lambda: schedules.piecewise({}), "expected a non-empty dict"),
        (lambda: schedules.piecewise([(0, 1.0)]), "expected a non-empty dict"),
        (lambda: schedules.piecewise({0: float("inf")}), "the weight at 0 must be finite"),
        (lambda: schedules.piecewise({0: 1, 3: 2}, unit="step "), "unit must be one of"),
    ],
)
def test_refusals(make: Callable[[], Any], fragment: str) -> None:
    with pytest.raises(FormulaError) as caught:
        make()
    assert fragment in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_a_sign_changing_schedule_is_refused_with_the_reason() -> None:
    with pytest.raises(FormulaError) as caught:
        schedules.linear(1.0, -1.0, steps=100)
    message = str(caught.value)
    assert "direction of the loss would flip" in message and "subtract" in message
    # touching zero from either side is fine
    assert schedules.linear(0.0, -1.0, 5).low == -1.0
    assert schedules.piecewise({0: 0.0, 3: 2.0}).high == 2.0


# -- in the algebra ----------------------------------------------------------------------------


def test_schedules_in_formulas() -> None:
    ce, kl, reg = Loss(ce_fn, "CE"), Loss(kl_fn, "KL"), Loss(reg_fn, "Reg")
    warm_up = schedules.linear(0.0, 1.0, steps=1000)
    assert (ce + warm_up * kl).formula == "[CE] + linear(0→1, 1000) x [KL]"
    assert (ce + kl * warm_up).formula == "[CE] + [KL] x linear(0→1, 1000)"
    assert (warm_up * (ce + kl)).formula == "linear(0→1, 1000) x ([CE] + [KL])"
    decay = schedules.cosine(1.0, 0.1, steps=5, unit="epoch")
    assert (ce / decay).formula == "[CE] / cosine(1→0.1, 5 epochs)"
    steps = schedules.piecewise({0: 0.0, 10: 0.5})
    accuracy = Loss(accuracy_fn, "Acc", higher_is_better=True)
    assert (ce - steps * accuracy).formula == "[CE] - piecewise(0: 0, 10: 0.5) x [Acc]"
    assert (steps * reg + ce).formula == "piecewise(0: 0, 10: 0.5) x [Reg] + [CE]"
    assert (ce**warm_up).formula == "[CE]^linear(0→1, 1000)"
    loss = ce + warm_up * kl
    assert repr(loss) == "CompositionalLoss([CE] + linear(0→1, 1000) x [KL])"
    assert isinstance(loss, tt.CompositionalLoss) and loss.higher_is_better is False


def test_directions_with_schedules() -> None:
    ce, kl = Loss(ce_fn, "CE"), Loss(kl_fn, "KL")
    accuracy = Loss(accuracy_fn, "Acc", higher_is_better=True)
    positive = schedules.linear(0.0, 1.0, 10)
    non_positive = schedules.linear(0.0, -1.0, 10)
    assert (positive * ce).higher_is_better is False
    assert (non_positive * ce).higher_is_better is True  # a non-positive factor flips
    assert (ce * non_positive).higher_is_better is True
    assert (ce + non_positive * accuracy).higher_is_better is False
    assert (ce / schedules.linear(2.0, 1.0, 4)).higher_is_better is False
    assert (ce / schedules.linear(-2.0, -1.0, 4)).higher_is_better is True
    assert (ce ** schedules.piecewise({0: -1.0, 4: -2.0})).higher_is_better is True
    with pytest.raises(FormulaError, match="cannot add"):
        ce + non_positive * kl
    with pytest.raises(FormulaError, match="cannot add"):
        ce + positive * accuracy
    with pytest.raises(FormulaError, match=r"division by a schedule that may be 0"):
        ce / positive
    with pytest.raises(FormulaError, match=r"division by a schedule that may be 0"):
        ce / non_positive
    with pytest.raises(FormulaError, match="a schedule cannot be the base of a power"):
        schedules.linear(1.0, 2.0, 3) ** ce


def test_a_schedule_advances_once_per_forward_and_not_on_update() -> None:
    warm_up = schedules.linear(0.0, 1.0, steps=4)
    loss = Loss(ce_fn, "CE") + warm_up * Loss(kl_fn, "KL")
    assert loss.schedule_values() == {"linear(0→1, 4)": 0.0}
    batches = data(8)
    expected_weights = [linear_reference(0.0, 1.0, 4, step) for step in range(8)]
    criteria: list[tuple[int, Tensor]] = []
    for step, (outputs, targets) in enumerate(batches):
        weight = expected_weights[step]
        assert loss.schedule_values() == {"linear(0→1, 4)": pytest.approx(weight, abs=1e-15)}
        criterion = ce_fn(outputs, targets) + weight * kl_fn(outputs, targets)
        # update evaluates with the current weight and does not move the schedule
        with torch.no_grad():
            values = loss.update(outputs, targets)
        torch.testing.assert_close(values[COMBINED_NAME], criterion, rtol=1e-14, atol=0)
        assert loss.schedule_values() == {"linear(0→1, 4)": pytest.approx(weight, abs=1e-15)}
        value = loss(outputs, targets)
        torch.testing.assert_close(value, criterion.mean(), rtol=1e-14, atol=0)
        criteria += [(len(outputs), criterion), (len(outputs), criterion)]
    # the combined epoch value is the mean of every criterion, at the weight of its batch
    total = torch.cat([criterion for _, criterion in criteria])
    torch.testing.assert_close(loss.compute()[COMBINED_NAME], total.mean(), rtol=1e-12, atol=0)
    assert loss.schedule_values() == {"linear(0→1, 4)": 1.0}
    # formula_value uses the current weight on the components' epoch values
    computed = loss.compute()
    torch.testing.assert_close(
        loss.formula_value(), computed["CE"] + 1.0 * computed["KL"], rtol=1e-14, atol=0
    )


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
@pytest.mark.parametrize("joined", [False, True])
def test_a_validation_forward_without_gradients_does_not_move_the_warm_up(
    mode: str, joined: bool
) -> None:
    # Validation with the training criterion (Lightning's validation_step calling
    # self.loss, its sanity check included) moved the KL warm-up by one step per
    # validation batch: after 2 training steps and 3 validation batches the next training
    # batch was weighted 5/8 instead of 2/8.
    def build() -> Any:
        loss = Loss(ce_fn, "CE") + schedules.linear(0.0, 1.0, steps=8) * Loss(kl_fn, "KL")
        return loss | WorstError() if joined else loss

    loss = build()
    batches = data(6)
    disabled = torch.no_grad if mode == "no_grad" else torch.inference_mode
    for outputs, targets in batches[:2]:  # two training steps
        loss(outputs, targets)
    with disabled():
        for outputs, targets in batches[2:5]:  # evaluated at the current weight, 2/8
            expected = ce_fn(outputs, targets) + 2 / 8 * kl_fn(outputs, targets)
            torch.testing.assert_close(loss(outputs, targets), expected.mean())
    assert loss.schedule_values() == {"linear(0→1, 8)": 2 / 8}
    outputs, targets = batches[5]
    leaf = outputs.clone().requires_grad_(True)
    value = loss(leaf, targets)
    expected = (ce_fn(outputs, targets) + 2 / 8 * kl_fn(outputs, targets)).mean()
    torch.testing.assert_close(value, expected)
    assert loss.schedule_values() == {"linear(0→1, 8)": 3 / 8}


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("joined", [False, True])
def test_an_empty_batch_changes_nothing_and_does_not_move_the_warm_up(
    joined: bool, weighted: bool
) -> None:
    # A forward on an empty batch (B == 0) moved the step schedules: every later batch was
    # weighted one step further on (after 2 steps and an empty batch, 3/8 instead of 2/8), and
    # the combined epoch value was the mean of another criterion than the one optimised.
    def build() -> Any:
        loss = Loss(ce_fn, "CE") + schedules.linear(0.0, 1.0, steps=8) * Loss(kl_fn, "KL")
        return loss | WorstError() if joined else loss

    loss, untouched = build(), build()
    batches = data(4)
    for index, (outputs, targets) in enumerate(batches):
        if index == 2:
            empty = (outputs[:0], targets[:0])
            kept = loss.compute()
            value = loss(*empty, weight=torch.ones(0, dtype=torch.float64) if weighted else None)
            assert value.isnan()  # the mean of no values, as torch's
            assert loss.schedule_values() == {"linear(0→1, 8)": 2 / 8}
            assert loss.compute() == kept
        loss(outputs, targets)
        untouched(outputs, targets)
    assert loss.compute() == untouched.compute()
    criteria = [
        ce_fn(outputs, targets) + step / 8 * kl_fn(outputs, targets)
        for step, (outputs, targets) in enumerate(batches)
    ]
    combined = loss.compute()[COMBINED_NAME]
    torch.testing.assert_close(combined, torch.cat(criteria).mean().to(combined.dtype))


def test_arithmetic_on_a_schedule_alone_raises_the_librarys_error_with_the_way_to_write_it() -> (
    None
):
    # 0.1 * linear(...) * kl is evaluated left to right: Python's TypeError ("unsupported
    # operand type(s) for *: 'float' and '_Linear'") named no loss and no way out.
    warm_up, decay = schedules.linear(0.0, 1.0, steps=4), schedules.cosine(1.0, 0.0, steps=4)
    kl = Loss(kl_fn, "KL")
    attempts = {
        "0.1 * schedule": lambda: 0.1 * warm_up * kl,
        "schedule * schedule": lambda: warm_up * decay * kl,
        "schedule / 2": lambda: warm_up / 2,
        "1 + schedule": lambda: 1 + warm_up,
        "schedule - 1": lambda: warm_up - 1,
        "schedule ** 2": lambda: warm_up**2,
        "2 ** schedule": lambda: 2**warm_up,
        "-schedule": lambda: -warm_up,
    }
    for what, attempt in attempts.items():
        with pytest.raises(FormulaError, match=r"linear\(0→1, 4\)") as error:
            attempt()
        assert "0.1 * (schedule * kl)" in str(error.value), what
    # what the message proposes: the loss first, then the other factors
    loss = 0.1 * (warm_up * (decay * kl))
    assert loss.formula == "0.1 x linear(0→1, 4) x cosine(1→0, 4) x [KL]"
    outputs, targets = data(3)[0]
    for _ in range(2):
        loss(outputs, targets)
    expected = 0.1 * 0.5 * 0.5 * kl_fn(outputs, targets).mean()
    torch.testing.assert_close(loss(outputs, targets), expected)


def test_forward_gradient_carries_the_weight() -> None:
    loss = Loss(ce_fn, "CE") + schedules.piecewise({0: 0.0, 1: 3.0}) * Loss(kl_fn, "KL")
    outputs, targets = data(1)[0]
    for weight in (0.0, 3.0):
        leaf = outputs.clone().requires_grad_(True)
        loss(leaf, targets).backward()
        reference = outputs.clone().requires_grad_(True)
        (ce_fn(reference, targets) + weight * kl_fn(reference, targets)).mean().backward()
        torch.testing.assert_close(leaf.grad, reference.grad, rtol=1e-14, atol=0)


def test_one_schedule_used_twice_is_one_weight() -> None:
    warm_up = schedules.linear(0.0, 1.0, steps=2)
    loss = warm_up * Loss(ce_fn, "CE") + warm_up * Loss(kl_fn, "KL")
    assert loss.formula == "linear(0→1, 2) x [CE] + linear(0→1, 2) x [KL]"
    assert list(loss.schedule_values()) == ["linear(0→1, 2)"]
    for step, (outputs, targets) in enumerate(data(3)):
        weight = linear_reference(0.0, 1.0, 2, step)
        expected = (weight * (ce_fn(outputs, targets) + kl_fn(outputs, targets))).mean()
        torch.testing.assert_close(loss(outputs, targets), expected, rtol=1e-14, atol=1e-15)


def test_epoch_schedules_advance_at_advance_epoch_only() -> None:
    per_step = schedules.linear(0.0, 1.0, steps=3)
    per_epoch = schedules.cosine(1.0, 0.0, steps=2, unit="epoch")
    loss = Loss(ce_fn, "CE") + per_step * Loss(kl_fn, "KL") + per_epoch * Loss(reg_fn, "Reg")
    assert loss.formula == "[CE] + linear(0→1, 3) x [KL] + cosine(1→0, 2 epochs) x [Reg]"
    step = 0
    for epoch in range(4):
        for outputs, targets in data(2, seed=epoch):
            found = loss.schedule_values()
            assert found == {
                "linear(0→1, 3)": pytest.approx(linear_reference(0, 1, 3, step), abs=1e-15),
                "cosine(1→0, 2 epochs)": pytest.approx(cosine_reference(1, 0, 2, epoch), abs=1e-15),
            }
            expected = (
                ce_fn(outputs, targets)
                + linear_reference(0, 1, 3, step) * kl_fn(outputs, targets)
                + cosine_reference(1, 0, 2, epoch) * reg_fn(outputs, targets)
            ).mean()
            torch.testing.assert_close(loss(outputs, targets), expected, rtol=1e-14, atol=1e-15)
            step += 1
        loss.reset()  # a new epoch's values; the schedules keep their place
        loss.advance_epoch()
    state = loss.state_dict()["schedule_position"]
    assert int(state["step"]) == 8 and int(state["epoch"]) == 4


def test_reset_keeps_the_schedules_where_they_are() -> None:
    loss = schedules.linear(1.0, 0.0, steps=4) * Loss(ce_fn, "CE")
    for outputs, targets in data(2):
        loss(outputs, targets)
    loss.reset()
    assert loss.schedule_values() == {"linear(1→0, 4)": 0.5}
    with pytest.warns(ComputedBeforeUpdatedWarning):
        assert math.isnan(loss.compute()[COMBINED_NAME])


def test_losses_without_schedules_have_no_position() -> None:
    loss = Loss(ce_fn, "CE") + 0.5 * Loss(kl_fn, "KL")
    loss(*data(1)[0])
    loss.advance_epoch()  # harmless
    assert loss.schedule_values() == {}
    assert "schedule_position" not in loss.state_dict()


def test_schedules_as_dict_loss_weights() -> None:
    def parts(outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
        return {"cls_loss": ce_fn(outputs, targets), "box_loss": reg_fn(outputs, targets)}

    warm_up = schedules.linear(0.0, 2.0, steps=2)
    loss = DictLoss.summed(parts, "Loss", weights={"cls_loss": 0.5, "box_loss": warm_up})
    assert loss.formula == "0.5 x [cls_loss] + linear(0→2, 2) x [box_loss]"
    assert loss.schedule_values() == {"linear(0→2, 2)": 0.0}
    returned = []
    for step, (outputs, targets) in enumerate(data(4)):
        leaf = outputs.clone().requires_grad_(True)
        value = loss(leaf, targets)
        value.backward()
        weight = linear_reference(0.0, 2.0, 2, step)
        reference = outputs.clone().requires_grad_(True)
        expected = (0.5 * ce_fn(reference, targets) + weight * reg_fn(reference, targets)).mean()
        expected.backward()
        torch.testing.assert_close(value, expected, rtol=1e-14, atol=0)
        torch.testing.assert_close(leaf.grad, reference.grad, rtol=1e-14, atol=0)
        returned.append((len(outputs), float(value.detach())))
    computed = loss.compute()
    assert list(computed) == ["Loss", "cls_loss", "box_loss"]
    mean = sum(size * value for size, value in returned) / sum(size for size, _ in returned)
    assert float(computed["Loss"]) == pytest.approx(mean, rel=1e-12)
    assert int(loss.state_dict()["schedule_position"]["step"]) == 4


# -- persistence -------------------------------------------------------------------------------


def scheduled_loss() -> LossBase[Tensor, Tensor]:
    return (
        Loss(ce_fn, "CE")
        + schedules.linear(0.0, 1.0, steps=5) * Loss(kl_fn, "KL")
        + schedules.piecewise({0: 1.0, 2: 0.25}, unit="epoch") * Loss(reg_fn, "Reg")
    )


def via_state_dict(loss: LossBase[Tensor, Tensor]) -> LossBase[Tensor, Tensor]:
    buffer = io.BytesIO()
    torch.save(loss.state_dict(), buffer)
    buffer.seek(0)
    fresh = scheduled_loss()
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    return fresh


def via_torch_save(loss: LossBase[Tensor, Tensor]) -> LossBase[Tensor, Tensor]:
    buffer = io.BytesIO()
    torch.save(loss, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)  # type: ignore[no-any-return]


ROUND_TRIPS: dict[str, Callable[[LossBase[Tensor, Tensor]], LossBase[Tensor, Tensor]]] = {
    "state_dict": via_state_dict,
    "copy": lambda loss: loss.copy(),
    "deepcopy": copy.deepcopy,
    "pickle": lambda loss: pickle.loads(pickle.dumps(loss)),
    "torch.save": via_torch_save,
}


@pytest.mark.parametrize("how", list(ROUND_TRIPS))
def test_the_position_survives_every_round_trip(how: str) -> None:
    batches = data(9)
    uninterrupted = scheduled_loss()
    expected = []
    for index, (outputs, targets) in enumerate(batches):
        if index == 4:
            uninterrupted.advance_epoch()
        expected.append(uninterrupted(outputs, targets))
    interrupted = scheduled_loss()
    found = []
    for outputs, targets in batches[:3]:
        found.append(interrupted(outputs, targets))
    restored = ROUND_TRIPS[how](interrupted)
    assert restored.schedule_values() == interrupted.schedule_values()
    for index, (outputs, targets) in enumerate(batches[3:], start=3):
        if index == 4:
            restored.advance_epoch()
        found.append(restored(outputs, targets))
    assert all(torch.equal(a, b) for a, b in zip(found, expected, strict=True))
    assert restored.compute() == uninterrupted.compute()
    # the original did not move with its copy
    assert int(interrupted.state_dict()["schedule_position"]["step"]) == 3
    assert restored.schedule_values() == uninterrupted.schedule_values()


def test_the_saved_position_is_a_copy() -> None:
    loss = scheduled_loss()
    loss(*data(1)[0])
    state = loss.state_dict()
    loss(*data(1)[0])
    loss.advance_epoch()
    assert {unit: int(value) for unit, value in state["schedule_position"].items()} == {
        "step": 1,
        "epoch": 0,
    }
    position = state["schedule_position"]["step"]
    assert position.dtype == torch.int64 and position.shape == (1,)


@pytest.mark.parametrize(
    ("position", "fragment"),
    [
        (None, "found None"),
        ({"step": torch.tensor([1])}, "epoch position"),
        ({"step": torch.tensor([-1]), "epoch": torch.tensor([0])}, "step position"),
        ({"step": torch.tensor([1.0]), "epoch": torch.tensor([0])}, "step position"),
        ({"step": torch.tensor(1), "epoch": torch.tensor([0])}, "step position"),
        ({"step": 1, "epoch": torch.tensor([0])}, "step position"),
    ],
)
def test_a_missing_or_malformed_position_is_refused(position: Any, fragment: str) -> None:
    source = scheduled_loss()
    source(*data(1)[0])
    state = source.state_dict()
    if position is None:
        del state["schedule_position"]
    else:
        state["schedule_position"] = position
    target = scheduled_loss()
    target(*data(1)[0])
    before = target.compute()
    with pytest.raises(StateDictError) as caught:
        target.load_state_dict(state)
    assert fragment in str(caught.value)
    assert str(caught.value).startswith("CompositionalLoss [CE] + linear(0→1, 5) x [KL]")
    assert target.compute() == before  # nothing was loaded
    assert int(target.state_dict()["schedule_position"]["step"]) == 1


def test_a_refused_forward_does_not_advance_the_schedule() -> None:
    loss = Loss(ce_fn, "CE") + schedules.linear(0.0, 1.0, 4) * Loss(lambda o, t: o.sum(0), "Bad")
    outputs, targets = data(1)[0]
    with pytest.raises(tt.errors.ResultShapeError):
        loss(outputs, targets)
    assert loss.schedule_values() == {"linear(0→1, 4)": 0.0}


# -- the property: a run resumed from a checkpoint equals an uninterrupted one -----------------

schedule_strategy = st.one_of(
    st.builds(
        schedules.linear,
        st.sampled_from([0.0, 0.5, 2.0]),
        st.sampled_from([0.0, 1.0, 3.0]),
        st.integers(1, 6),
        unit=st.sampled_from(["step", "epoch"]),
    ),
    st.builds(
        schedules.cosine,
        st.sampled_from([1.0, 0.25]),
        st.sampled_from([0.0, 2.0]),
        st.integers(1, 6),
        unit=st.sampled_from(["step", "epoch"]),
    ),
    st.dictionaries(st.integers(1, 8), st.sampled_from([0.0, 0.5, 4.0]), max_size=3).map(
        lambda points: schedules.piecewise({0: 1.0, **points})
    ),
)


def build_scheduled(
    first: schedules.Schedule, second: schedules.Schedule
) -> LossBase[Tensor, Tensor]:
    return first * Loss(ce_fn, "CE") + Loss(kl_fn, "KL") * second + Loss(reg_fn, "Reg")


@settings(max_examples=30, deadline=None)
@given(
    schedule_strategy,
    schedule_strategy,
    st.lists(st.sampled_from(["forward", "update", "epoch"]), min_size=1, max_size=14),
    st.integers(0, 14),
)
def test_a_run_resumed_from_its_state_dict_matches_an_uninterrupted_run(
    first: schedules.Schedule, second: schedules.Schedule, events: list[str], split: int
) -> None:
    split = min(split, len(events))
    batches = data(len(events), seed=len(events))

    def run(loss: LossBase[Tensor, Tensor], start: int, stop: int, record: list[Any]) -> None:
        for index in range(start, stop):
            outputs, targets = batches[index]
            if events[index] == "forward":
                record.append(loss(outputs, targets))
            elif events[index] == "update":
                record.append(loss.update(outputs, targets)[COMBINED_NAME])
            else:
                loss.advance_epoch()
                record.append(loss.schedule_values())

    uninterrupted = build_scheduled(first, second)
    expected: list[Any] = []
    run(uninterrupted, 0, len(events), expected)

    interrupted = build_scheduled(first, second)
    found: list[Any] = []
    run(interrupted, 0, split, found)
    buffer = io.BytesIO()
    torch.save(interrupted.state_dict(), buffer)
    buffer.seek(0)
    resumed = build_scheduled(first, second)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    run(resumed, split, len(events), found)

    assert len(found) == len(expected)
    for a, b in zip(found, expected, strict=True):
        assert torch.equal(a, b) if isinstance(a, Tensor) else a == b
    assert resumed.schedule_values() == uninterrupted.schedule_values()
    if any(event != "epoch" for event in events):
        # Saving folds the queued batches, so the float64 sums are grouped differently:
        # equal up to their rounding, not bit for bit.
        found_values, expected_values = resumed.compute(), uninterrupted.compute()
        assert found_values.keys() == expected_values.keys()
        for name, value in found_values.items():
            torch.testing.assert_close(value, expected_values[name], rtol=1e-13, atol=0)


def test_the_repr_of_a_schedule_is_the_call_that_builds_it() -> None:
    built = [
        schedules.linear(0, 1, 10),
        schedules.cosine(1.0, 0.25, steps=5, unit="epoch"),
        schedules.piecewise({0: 0.0, 100: 0.5}),
    ]
    assert [repr(schedule) for schedule in built] == [
        "linear(0.0, 1.0, steps=10)",
        "cosine(1.0, 0.25, steps=5, unit='epoch')",
        "piecewise({0: 0.0, 100: 0.5})",
    ]
    # no private class name, and evaluating it gives the same schedule back
    assert [eval(repr(schedule), vars(schedules)) for schedule in built] == built

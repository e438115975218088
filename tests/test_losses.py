"""Losses: composition, formulas, forward, epoch values, refusals, DictLoss, persistence.

References are computed independently: the loss on the concatenated data, the
same expression written by hand in torch, and the formula string evaluated in
Python with the component values substituted.
"""

from __future__ import annotations

import copy
import io
import itertools
import math
import pickle
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import Tensor
from torch.nn.functional import l1_loss, mse_loss

import _dist  # tests/_dist.py, importable through tests/conftest.py
import torchtally as tt
from torchtally import protocols as p
from torchtally.errors import (
    ComputedBeforeUpdatedWarning,
    FormulaError,
    IncompatibleStateError,
    InvalidArgumentError,
    InvalidNameError,
    MetricCallError,
    NameConflictError,
    ResultShapeError,
    ResultTypeError,
)
from torchtally.formula import Constant
from torchtally.losses import COMBINED_NAME, CompositionalLoss, DictLoss, Loss, LossBase
from torchtally.sync import callable_identity


def mae_fn(outputs: Tensor, targets: Tensor) -> Tensor:
    """Per-sample mean absolute error (as in the DRYTorch reference)."""
    return torch.abs(outputs - targets).flatten(1).mean(1)


def accuracy_fn(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs.round() == targets).float().flatten(1).mean(1)


def batches(sizes: list[int], seed: int = 0, dtype: torch.dtype = torch.float32) -> list[Any]:
    generator = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(size, 3, generator=generator, dtype=dtype),
            torch.randn(size, 3, generator=generator, dtype=dtype),
        )
        for size in sizes
    ]


def concatenated(data: list[Any]) -> tuple[Tensor, Tensor]:
    return torch.cat([o for o, _ in data]), torch.cat([t for _, t in data])


class Counting:
    """A callable counting its calls (compared by identity, like a function)."""

    def __init__(self, fn: Callable[[Tensor, Tensor], Tensor]) -> None:
        self.fn = fn
        self.calls = 0

    def __call__(self, outputs: Tensor, targets: Tensor) -> Tensor:
        self.calls += 1
        return self.fn(outputs, targets)


# -- the DRYTorch reference example, with torchtally names --------------------------------------


def test_reference_loss_example() -> None:
    tensor_a = torch.ones(1, 1, dtype=torch.float)
    tensor_b = 3 * torch.ones(1, 1, dtype=torch.float)
    mse_loss_ = Loss(mse_loss, name="MSE")
    mae_loss = Loss(mae_fn, "MAE")
    composed_loss = mse_loss_**2 + 0.5 * mae_loss
    composed_loss.update(tensor_a, tensor_b)
    expected = {
        "Combined Loss": torch.tensor(17.0),
        "MSE": torch.tensor(4.0),
        "MAE": torch.tensor(2.0),
    }
    assert composed_loss.compute() == expected
    assert list(composed_loss.compute()) == list(expected)
    assert composed_loss.formula == "[MSE]^2 + 0.5 x [MAE]"
    assert repr(composed_loss) == "CompositionalLoss([MSE]^2 + 0.5 x [MAE])"
    assert isinstance(composed_loss, CompositionalLoss)
    assert isinstance(composed_loss, p.LossProtocol) and isinstance(mse_loss_, p.LossProtocol)
    assert isinstance(composed_loss, p.ObjectiveProtocol)
    assert not isinstance(tt.Metric(mae_fn, "MAE"), p.LossProtocol)


def test_loss_is_an_objective_and_a_metric() -> None:
    loss = Loss(mse_loss, "MSE")
    assert isinstance(loss, tt.Objective) and isinstance(loss, LossBase)
    assert loss.formula == "[MSE]" and loss.name == "MSE" and loss.fn is mse_loss
    assert loss.higher_is_better is False and loss.higher_is_better_for("MSE") is False
    data = batches([4, 1, 6])
    for outputs, targets in data:
        loss.update(outputs, targets)
    outputs, targets = concatenated(data)
    torch.testing.assert_close(loss.compute()["MSE"], mse_loss(outputs, targets))
    assert list(loss.compute()) == ["MSE"]
    assert Loss(mae_fn).name == "mae_fn"  # the callable's name by default
    with pytest.raises(TypeError):
        LossBase(None, ())  # type: ignore[abstract, arg-type]


def test_required_formulas_from_the_algebra() -> None:
    def make(name: str, higher: bool = False) -> Loss[Tensor, Tensor]:
        return Loss(mae_fn, name, higher_is_better=higher) if name != "B" else Loss(mse_loss, "B")

    a, b, c = make("A"), make("B"), make("C")
    high_a, high_c = make("A", True), make("C", True)
    assert (a + b).formula == "[A] + [B]"
    assert ((a + b) * c).formula == "([A] + [B]) x [C]"
    assert (high_a - (b - high_c)).formula == "[A] - ([B] - [C])"
    assert (-(a + b)).formula == "-([A] + [B])"
    assert (a + (b + c)).formula == "[A] + [B] + [C]"
    assert (a * (b * c)).formula == "[A] x [B] x [C]"
    assert ((-a) ** 2).formula == "(-[A])^2"
    assert (-(a**2)).formula == "-[A]^2"
    assert (a ** (b**c)).formula == "[A]^[B]^[C]"
    assert ((a**b) ** c).formula == "([A]^[B])^[C]"
    assert (0.5 * a).formula == "0.5 x [A]" and (a * 0.5).formula == "[A] x 0.5"
    assert (2 - high_a).formula == "2 - [A]" and (a - 2).formula == "[A] - 2"
    assert (1 / high_a).formula == "1 / [A]" and (a / 4).formula == "[A] / 4"
    assert (2**a).formula == "2^[A]" and (a**-1).formula == "[A]^-1"
    assert (-0.5 * high_a).formula == "-0.5 x [A]"
    assert (a - -2).formula == "[A] - -2"
    assert sum([a, b, c]).formula == "[A] + [B] + [C]"  # type: ignore[union-attr]
    assert (0 + a).formula == "[A]" and type(0 + a) is Loss
    assert (a + 0.0).formula == "[A]"
    assert (a / high_c * b).formula == "[A] / [C] x [B]"


# -- forward -----------------------------------------------------------------------------------


def test_forward_returns_the_batch_mean_of_the_criterion_with_its_gradient() -> None:
    loss = Loss(mse_loss, "MSE") ** 2 + 0.5 * Loss(mae_fn, "MAE")
    outputs, targets = batches([5])[0]
    outputs.requires_grad_(True)
    value = loss(outputs, targets)
    assert value.ndim == 0 and value.requires_grad
    value.backward()
    reference_outputs = outputs.detach().clone().requires_grad_(True)
    reference = (
        mse_loss(reference_outputs, targets) ** 2 + 0.5 * mae_fn(reference_outputs, targets)
    ).mean()
    reference.backward()
    torch.testing.assert_close(value, reference, rtol=0, atol=0)
    torch.testing.assert_close(outputs.grad, reference_outputs.grad, rtol=0, atol=0)


def test_per_sample_vectors_combine_elementwise() -> None:
    # product of two per-sample vectors: the mean of the products, not the product of the means
    loss = Loss(mae_fn, "MAE") * Loss(lambda o, t: (o - t).pow(2).flatten(1).mean(1), "SE")
    outputs, targets = batches([6])[0]
    expected = (mae_fn(outputs, targets) * (outputs - targets).pow(2).mean(1)).mean()
    torch.testing.assert_close(loss.forward(outputs, targets), expected)


def test_every_component_is_evaluated_once_per_call() -> None:
    first, second, tracked = Counting(mae_fn), Counting(mse_loss), Counting(accuracy_fn)
    a, b = Loss(first, "A"), Loss(second, "B")
    loss = (a + a * a + 2 * b * a**2) | tt.Metric(tracked, "Acc", higher_is_better=True)
    # the same callable under the same name again, as a tracked metric: still once
    loss = loss | tt.Metric(first, "A")
    assert [entry.name for entry in loss.components] == ["A", "B"]
    assert [entry.name for entry in loss.tracked] == ["Acc"]
    outputs, targets = batches([3])[0]
    loss(outputs, targets)
    assert (first.calls, second.calls, tracked.calls) == (1, 1, 1)
    loss.update(outputs, targets)
    assert (first.calls, second.calls, tracked.calls) == (2, 2, 2)
    loss.compute()
    assert (first.calls, second.calls, tracked.calls) == (2, 2, 2)


def test_state_holds_detached_values() -> None:
    loss = Loss(mse_loss, "MSE") + Loss(mae_fn, "MAE")
    values = []
    for outputs, targets in batches([4, 2, 3]):
        outputs.requires_grad_(True)
        value = loss(outputs, targets)
        assert value.requires_grad
        values.append((outputs, value))
    # queued copies and folded state alike: nothing holds on to the autograd graph
    held = list(loss._ledger._buffers)
    held += [
        t for accumulator in loss._ledger.accumulators.values() for t in accumulator.export()[1]
    ]
    assert held and all(not t.requires_grad and t.grad_fn is None for t in held)
    for outputs, value in values:
        value.backward()  # the graphs are intact after the updates
        assert outputs.grad is not None
    for tensor in loss.compute().values():
        assert not tensor.requires_grad
    assert all(not t.requires_grad for t in loss.state_dict()["tensors"])


def test_update_accumulates_without_grad_and_returns_the_batch_values() -> None:
    loss = Loss(mse_loss, "MSE") + Loss(mae_fn, "MAE")
    outputs, targets = batches([4])[0]
    with torch.no_grad():
        values = loss.update(outputs, targets)
    assert set(values) == {"Combined Loss", "MSE", "MAE"}  # the criterion comes back too
    torch.testing.assert_close(values["MAE"], mae_fn(outputs, targets))
    forward = Loss(mse_loss, "MSE") + Loss(mae_fn, "MAE")
    forward(outputs, targets)
    assert forward.compute() == loss.compute()


def test_python_number_results_are_accepted() -> None:
    loss = Loss(lambda o, t: 2.0, "Two") + Loss(mae_fn, "MAE")
    outputs, targets = batches([3])[0]
    value = loss(outputs, targets)
    torch.testing.assert_close(value, 2.0 + mae_fn(outputs, targets).mean())
    assert loss.compute()["Two"] == 2.0


# -- epoch values ------------------------------------------------------------------------------


def test_sum_of_mean_reduced_losses_is_the_loss_on_the_concatenated_data() -> None:
    loss = Loss(mse_loss, "MSE") + Loss(mae_fn, "MAE")
    data = batches([3, 7, 1, 5, 2], dtype=torch.float64)
    for outputs, targets in data:
        loss(outputs, targets)
    outputs, targets = concatenated(data)
    expected = mse_loss(outputs, targets) + mae_fn(outputs, targets).mean()
    computed = loss.compute()
    assert list(computed) == ["Combined Loss", "MSE", "MAE"]
    torch.testing.assert_close(computed["Combined Loss"], expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(computed["MSE"], mse_loss(outputs, targets), rtol=1e-12, atol=0)


def test_combined_value_is_the_mean_of_what_forward_returned() -> None:
    # Not the formula on the epoch values: [MSE]^2 squares each batch's mean squared error.
    loss = Loss(mse_loss, "MSE") ** 2 + 0.5 * Loss(mae_fn, "MAE")
    data = batches([2, 9, 4], dtype=torch.float64)
    returned = [(len(outputs), loss(outputs, targets)) for outputs, targets in data]
    values = loss.compute()
    expected = sum(size * value for size, value in returned) / sum(size for size, _ in returned)
    torch.testing.assert_close(values["Combined Loss"], expected, rtol=1e-12, atol=0)
    outputs, targets = concatenated(data)
    by_batch = sum(len(o) * mse_loss(o, t) ** 2 for o, t in data) / len(outputs)
    torch.testing.assert_close(
        values["Combined Loss"],
        by_batch + 0.5 * mae_fn(outputs, targets).mean(),
        rtol=1e-12,
        atol=0,
    )
    # the formula on the epoch values stays available, and differs for a non-linear formula
    assert loss.formula_value() == values["MSE"] ** 2 + 0.5 * values["MAE"]
    assert abs(float(loss.formula_value() - values["Combined Loss"])) > 1e-3
    assert loss.higher_is_better_for("Combined Loss") is False


def test_linear_formulas_give_the_same_value_both_ways() -> None:
    loss = 0.3 * Loss(mse_loss, "MSE") + Loss(mae_fn, "MAE") + -2 * -Loss(mae_fn, "MAE")
    for outputs, targets in batches([3, 8, 1, 5], dtype=torch.float64):
        loss(outputs, targets)
    torch.testing.assert_close(
        loss.formula_value(), loss.compute()["Combined Loss"], rtol=1e-12, atol=1e-15
    )


def test_compute_before_update_warns_and_gives_nan() -> None:
    loss = Loss(mse_loss, "MSE") - Loss(accuracy_fn, "Accuracy", higher_is_better=True)
    with pytest.warns(ComputedBeforeUpdatedWarning):
        values = loss.compute()
    assert list(values) == ["Combined Loss", "MSE", "Accuracy"]
    assert all(math.isnan(v) for v in values.values())


def test_reset_and_merge_state() -> None:
    loss = Loss(mse_loss, "MSE") + Loss(mae_fn, "MAE")
    other = loss.copy()
    data = batches([3, 5, 2], dtype=torch.float64)
    loss(*data[0])
    other(*data[1])
    other(*data[2])
    loss.merge_state(other)
    outputs, targets = concatenated(data)
    expected = mse_loss(outputs, targets) + mae_fn(outputs, targets).mean()
    torch.testing.assert_close(loss.compute()["Combined Loss"], expected, rtol=1e-12, atol=0)
    different = Loss(mse_loss, "MSE") + 2 * Loss(mae_fn, "MAE")
    with pytest.raises(IncompatibleStateError, match=r"another formula \(\[MSE\] \+ 2 x \[MAE\]\)"):
        loss.merge_state(different)
    loss.reset()
    with pytest.warns(ComputedBeforeUpdatedWarning):
        assert math.isnan(loss.compute()["Combined Loss"])


# -- the property: formula, compute and forward agree with independent references -------------

NAMES = ["A", "B", "C", "H"]
FUNCTIONS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "A": lambda o, t: (o - t).pow(2).mean(1) + 0.5,  # per-sample
    "B": lambda o, t: l1_loss(o, t) + 0.5,  # a scalar batch mean
    "C": lambda o, t: (o - t).abs().amax(1) + 0.25,  # per-sample
    "H": lambda o, t: torch.exp(-(o - t).abs()).mean(1) + 0.5,  # per-sample, higher is better
}
LOSSES = {name: Loss(fn, name, higher_is_better=name == "H") for name, fn in FUNCTIONS.items()}
OPERATIONS: dict[str, Callable[[Any, Any], Any]] = {
    "+": lambda x, y: x + y,
    "-": lambda x, y: x - y,
    "*": lambda x, y: x * y,
    "/": lambda x, y: x / y,
    "**": lambda x, y: x**y,
}
CONSTANTS = st.sampled_from([0.5, 2, 3, -1.5, 0.25, 1, -2, 1.5])

# A recipe is ('leaf', name) | ('neg', recipe) | (op, recipe|number, recipe|number).
recipes = st.recursive(
    st.tuples(st.just("leaf"), st.sampled_from(NAMES)),
    lambda inner: (
        st.tuples(st.just("neg"), inner)
        | st.tuples(st.sampled_from(list(OPERATIONS)), inner, inner)
        | st.tuples(st.sampled_from(list(OPERATIONS)), inner, CONSTANTS)
        | st.tuples(st.sampled_from(list(OPERATIONS)), CONSTANTS, inner)
    ),
    max_leaves=5,
)


def build(recipe: Any) -> tuple[Any, Callable[[dict[str, Tensor]], Any]]:
    """The loss built with the library's operators, and the same expression in plain torch."""
    if not isinstance(recipe, tuple):
        return recipe, lambda values: recipe
    if recipe[0] == "leaf":
        name = recipe[1]
        return 0 + LOSSES[name], lambda values: values[name]  # 0 + loss: the loss, fresh state
    if recipe[0] == "neg":
        loss, hand = build(recipe[1])
        return -loss, lambda values: -hand(values)
    operation = OPERATIONS[recipe[0]]
    left, left_hand = build(recipe[1])
    right, right_hand = build(recipe[2])
    return operation(left, right), lambda values: operation(left_hand(values), right_hand(values))


def substituted(formula: str, values: dict[str, Tensor]) -> str:
    for name, value in values.items():
        formula = formula.replace(f"[{name}]", f"({float(value)!r})")
    return formula.replace(" x ", " * ").replace("^", "**")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(recipes, st.lists(st.integers(1, 6), min_size=1, max_size=4))
def test_random_expressions_agree_with_formula_and_hand_written_torch(
    recipe: Any, sizes: list[int]
) -> None:
    try:
        loss, hand = build(recipe)
    except FormulaError:
        assume(False)  # refused for its directions (checked elsewhere)
        return
    assert isinstance(loss, LossBase)
    # (1) the combined epoch value is the batch-weighted mean of what forward returned
    data = batches(sizes, seed=7, dtype=torch.float64)
    returned = [(len(outputs), loss(outputs, targets)) for outputs, targets in data]
    computed = loss.compute()
    combined = float(computed[loss.name])
    expected = sum(size * float(value) for size, value in returned) / sum(sizes)
    assume(math.isfinite(combined) and math.isfinite(expected))
    assert combined == pytest.approx(expected, rel=1e-9, abs=1e-9)
    # (2) formula_value() is the formula evaluated with the component epoch values
    components = {entry.name: computed[entry.name] for entry in loss.components}
    try:
        from_formula = eval(substituted(loss.formula, components))
    except (ZeroDivisionError, OverflowError):
        assume(False)
        return
    assume(not isinstance(from_formula, complex) and math.isfinite(from_formula))
    assert float(loss.formula_value()) == pytest.approx(from_formula, rel=1e-9, abs=1e-9)
    # (3) forward's value and gradient equal those of the expression written by hand
    outputs, targets = data[-1]
    outputs = outputs.clone().requires_grad_(True)
    value = loss(outputs, targets)
    reference_outputs = outputs.detach().clone().requires_grad_(True)
    hand_written = hand({name: fn(reference_outputs, targets) for name, fn in FUNCTIONS.items()})
    if isinstance(hand_written, Tensor) and hand_written.ndim:
        hand_written = hand_written.mean()
    assume(bool(torch.isfinite(value)))
    value.backward()
    hand_written.backward()
    torch.testing.assert_close(value, hand_written, rtol=1e-12, atol=1e-12)
    assert outputs.grad is not None and reference_outputs.grad is not None
    torch.testing.assert_close(outputs.grad, reference_outputs.grad, rtol=1e-9, atol=1e-12)


# -- directions and refusals -------------------------------------------------------------------


def test_direction_rules_through_the_operators() -> None:
    ce = Loss(mse_loss, "CE")
    accuracy = Loss(accuracy_fn, "Accuracy", higher_is_better=True)
    assert (ce - accuracy).higher_is_better is False
    assert (accuracy - ce).higher_is_better is True
    assert (-ce).higher_is_better is True
    assert (ce / accuracy).higher_is_better is False
    assert (1 / ce).higher_is_better is True
    assert (ce**-2).higher_is_better is True
    assert (-3 * ce).higher_is_better is True  # a negative factor flips
    assert (ce / -3).higher_is_better is True
    assert (0.5**ce).higher_is_better is True and (2**ce).higher_is_better is False
    assert (ce + 5).higher_is_better is False  # constants have no direction
    assert (ce + -accuracy * 2).formula == "[CE] + -[Accuracy] x 2"


@pytest.mark.parametrize(
    ("build_it", "fragments"),
    [
        (
            lambda ce, acc: ce + acc,
            [
                "[CE] + [Accuracy]: cannot add [CE] (lower is better) and "
                "[Accuracy] (higher is better)",
                "write [CE] - [Accuracy]",
            ],
        ),
        (lambda ce, acc: acc + ce, ["cannot add [Accuracy] (higher is better) and [CE]"]),
        (lambda ce, acc: ce * acc, ["cannot multiply [CE] (lower is better) by [Accuracy]"]),
        (lambda ce, acc: ce - ce * 2, ["cannot subtract [CE] x 2 (lower is better) from [CE]"]),
        (lambda ce, acc: ce / ce, ["cannot divide [CE] (lower is better) by [CE]"]),
        (lambda ce, acc: ce**acc, ["cannot raise [CE] (lower is better) to the power [Accuracy]"]),
        (lambda ce, acc: ce + -1 * ce, ["-1 x [CE] (higher is better)"]),
        (lambda ce, acc: ce + ce**-1, ["[CE]^-1 (higher is better)"]),
        (lambda ce, acc: ce + 1 / ce, ["1 / [CE] (higher is better)"]),
        (lambda ce, acc: (-2) ** ce, ["must be a positive constant", "found -2"]),
        (lambda ce, acc: ce / 0, ["division by 0"]),
    ],
)
def test_refusals_name_both_operands(build_it: Any, fragments: list[str]) -> None:
    ce = Loss(mse_loss, "CE")
    accuracy = Loss(accuracy_fn, "Accuracy", higher_is_better=True)
    with pytest.raises(FormulaError) as caught:
        build_it(ce, accuracy)
    assert isinstance(caught.value, ValueError)
    message = str(caught.value)
    assert message.startswith("CompositionalLoss ")
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize(
    ("operand", "fragment"),
    [
        ("x", "str 'x'"),
        (torch.tensor(1.0), "Tensor tensor(1.)"),
        (True, "bool True"),
        (None, "NoneType None"),
        (1j, "complex 1j"),
        (float("inf"), "finite constants, found inf"),
        (float("nan"), "finite constants, found nan"),
    ],
)
def test_operands_other_than_numbers_and_losses_are_refused(operand: Any, fragment: str) -> None:
    loss = Loss(mse_loss, "MSE")
    for combine in (
        lambda: loss + operand,
        lambda: operand + loss,
        lambda: loss * operand,
        lambda: operand**loss,
        lambda: loss / operand,
        lambda: operand - loss,
    ):
        with pytest.raises(FormulaError) as caught:
            combine()
        assert str(caught.value).startswith("Loss [MSE]: ")
        assert fragment in str(caught.value)


def test_numpy_like_numbers_become_python_constants() -> None:
    class Half(float):
        pass

    loss = Half(0.5) * Loss(mse_loss, "MSE")
    assert loss.formula == "0.5 x [MSE]"
    assert type(loss.expression.left.value) is float  # type: ignore[union-attr]


def test_a_metric_in_arithmetic_points_to_the_pipe() -> None:
    with pytest.raises(FormulaError, match=r"use loss \| metric"):
        Loss(mse_loss, "MSE") + tt.Metric(mae_fn, "MAE")


def test_names_are_keyed_to_one_callable() -> None:
    with pytest.raises(NameConflictError, match="'MSE' is given to two different callables"):
        Loss(mse_loss, "MSE") + Loss(mae_fn, "MSE")
    with pytest.raises(NameConflictError, match="'MAE' is given to two different callables"):
        Loss(mse_loss, "MSE") | tt.Metric(accuracy_fn, "MAE") | tt.Metric(mae_fn, "MAE")
    with pytest.raises(NameConflictError, match="'MSE' is given"):
        Loss(mse_loss, "MSE") | tt.Metric(mae_fn, "MSE")
    a = Loss(mae_fn, "A")
    assert (a + a).components == a.components  # one callable under one name: fine
    with pytest.raises(NameConflictError, match="'A' is given both higher_is_better=False and"):
        a - Loss(mae_fn, "A", higher_is_better=True)


def test_combined_loss_is_reserved() -> None:
    with pytest.raises(NameConflictError, match="'Combined Loss' is reserved"):
        Loss(mse_loss, COMBINED_NAME)
    with pytest.raises(NameConflictError, match="'Combined Loss' is reserved"):
        Loss(mse_loss, "MSE") | tt.Metric(mae_fn, "Combined Loss")
    with pytest.raises(NameConflictError, match="'Combined Loss' is reserved"):
        DictLoss(lambda o, t: {"Combined Loss": mae_fn(o, t)}, "Combined Loss")
    bad = DictLoss(lambda o, t: {"Loss": mae_fn(o, t), COMBINED_NAME: mae_fn(o, t)}, "Loss")
    with pytest.raises(NameConflictError, match="'Combined Loss' is reserved"):
        bad(*batches([2])[0])


def test_construction_errors() -> None:
    with pytest.raises(TypeError, match="expected a callable"):
        Loss("mse", "MSE")  # type: ignore[arg-type]
    with pytest.raises(InvalidNameError, match="lambda"):
        Loss(lambda o, t: o)
    with pytest.raises(InvalidArgumentError, match="higher_is_better must be True or False"):
        Loss(mse_loss, "MSE", higher_is_better=None)  # type: ignore[arg-type]
    with pytest.raises(FormulaError, match="at least one component"):
        CompositionalLoss(lambda values: values["A"], "[A]")
    with pytest.raises(InvalidArgumentError, match="criterion must be a callable"):
        CompositionalLoss(Constant(2), "2")  # type: ignore[arg-type]


def test_loss_pipe_loss_is_refused_and_pipe_with_other_objects_is_a_type_error() -> None:
    mse, mae = Loss(mse_loss, "MSE"), Loss(mae_fn, "MAE")
    with pytest.raises(
        FormulaError, match=r"combine losses with arithmetic \(for example \[MSE\] \+ \[MAE\]\)"
    ):
        mse | mae
    with pytest.raises(TypeError):
        mse | 3  # type: ignore[operator]


# -- loss | metric -----------------------------------------------------------------------------


def test_pipe_tracks_metrics_outside_the_formula() -> None:
    loss = Loss(mse_loss, "MSE") + 0.5 * Loss(mae_fn, "MAE")
    accuracy = tt.Metric(accuracy_fn, "Accuracy", higher_is_better=True)
    worst = tt.Metric(lambda o, t: (o - t).abs().amax(1), "Worst", aggregation="max")
    for tracked in (loss | accuracy | worst, accuracy | (worst | loss), (accuracy | worst) | loss):
        assert isinstance(tracked, CompositionalLoss)
        assert tracked.formula == loss.formula
        assert (
            repr(tracked)
            == "CompositionalLoss([MSE] + 0.5 x [MAE], tracking ['Accuracy', 'Worst'])"
        )
        data = batches([3, 6])
        for outputs, targets in data:
            value = tracked(outputs, targets)
        computed = tracked.compute()
        assert list(computed) == ["Combined Loss", "MSE", "MAE", "Accuracy", "Worst"]
        outputs, targets = concatenated(data)
        torch.testing.assert_close(computed["Worst"], (outputs - targets).abs().max())
        torch.testing.assert_close(computed["Accuracy"], accuracy_fn(outputs, targets).mean())
        assert tracked.higher_is_better_for("Accuracy") is True
        # the tracked metric does not enter the value
        torch.testing.assert_close(value, loss.forward(*data[-1]))
    single = Loss(mse_loss, "MSE") | accuracy
    assert type(single) is Loss and single.name == "MSE"
    single(*batches([2])[0])
    assert list(single.compute()) == ["MSE", "Accuracy"]
    # tracked metrics survive further algebra
    assert (single * 2).tracked == single.tracked


# -- DictLoss ----------------------------------------------------------------------------------


def detection_dict(outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
    error = (outputs - targets).abs()
    return {"Loss": error.mean(1), "Worst": error.amax(1), "Bias": (outputs - targets).mean()}


def test_dict_loss_entry_is_the_loss_and_the_others_are_tracked() -> None:
    loss = DictLoss(detection_dict, "Loss")
    assert loss.formula == "[Loss]" and loss.fn is detection_dict
    data = batches([4, 2, 5], dtype=torch.float64)
    for outputs, targets in data:
        value = loss(outputs, targets)
    torch.testing.assert_close(value, detection_dict(*data[-1])["Loss"].mean())
    computed = loss.compute()
    assert list(computed) == ["Loss", "Worst", "Bias"]
    outputs, targets = concatenated(data)
    torch.testing.assert_close(
        computed["Loss"], (outputs - targets).abs().mean(), rtol=1e-12, atol=0
    )
    torch.testing.assert_close(
        computed["Worst"], (outputs - targets).abs().amax(1).mean(), rtol=1e-12, atol=0
    )


def test_dict_loss_in_compositions_keeps_its_entries() -> None:
    reweighted = 0.3 * DictLoss(detection_dict, "Loss") + Loss(mse_loss, "MSE")
    assert reweighted.formula == "0.3 x [Loss] + [MSE]"
    data = batches([4, 3], dtype=torch.float64)
    for outputs, targets in data:
        value = reweighted(outputs, targets)
    outputs, targets = data[-1]
    torch.testing.assert_close(
        value, 0.3 * (outputs - targets).abs().mean() + mse_loss(outputs, targets)
    )
    computed = reweighted.compute()
    assert list(computed) == ["Combined Loss", "Loss", "MSE", "Worst", "Bias"]
    torch.testing.assert_close(
        computed["Combined Loss"], 0.3 * computed["Loss"] + computed["MSE"], rtol=1e-12, atol=0
    )


def neutrino_style(outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
    return {"loss": mse_loss(outputs, targets)}


def cco_tuple(outputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    diff = outputs - targets
    return diff.pow(2).mean(), diff.abs().mean(), diff.abs().amax(1)


def cco_list(outputs: Tensor, targets: Tensor) -> list[Tensor]:
    return list(cco_tuple(outputs, targets))


def cco_dict(outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
    first, second, third = cco_tuple(outputs, targets)
    return {"cls_loss": first, "box_loss": second, "obj_loss": third}


def cco_tensor(outputs: Tensor, targets: Tensor) -> Tensor:
    return sum(cco_tuple(outputs, targets))  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("fn", "names"),
    [
        (neutrino_style, ["loss"]),
        (cco_tuple, ["Total_0", "Total_1", "Total_2"]),
        (cco_list, ["Total_0", "Total_1", "Total_2"]),
        (cco_dict, ["cls_loss", "box_loss", "obj_loss"]),
        (cco_tensor, []),
    ],
)
def test_summed_dict_loss(fn: Callable[[Tensor, Tensor], Any], names: list[str]) -> None:
    loss = DictLoss.summed(fn, "Total")
    data = batches([3, 5, 1], dtype=torch.float64)
    for outputs, targets in data:
        value = loss(outputs, targets)
    outputs, targets = data[-1]
    result = fn(outputs, targets)
    parts = list(result.values()) if isinstance(result, dict) else result
    expected = sum(parts) if isinstance(parts, (list, tuple)) else parts
    torch.testing.assert_close(value, expected.mean())
    computed = loss.compute()
    assert list(computed) == ["Total", *names]
    # every summand is tracked, and the sum's epoch value is the sum of theirs
    outputs, targets = concatenated(data)
    result = fn(outputs, targets)
    parts = list(result.values()) if isinstance(result, dict) else result
    if names:
        assert len(parts) == len(names)
    torch.testing.assert_close(
        computed["Total"], sum(computed[name] for name in names) if names else computed["Total"]
    )
    per_sample = cco_tuple(outputs, targets)[2].mean()  # the per-sample summand, over all data
    if fn in (cco_tuple, cco_list):
        torch.testing.assert_close(computed["Total_2"], per_sample, rtol=1e-12, atol=0)


def test_summed_default_name_and_errors() -> None:
    assert DictLoss.summed(cco_dict).name == "cco_dict"
    outputs, targets = batches([2])[0]
    with pytest.raises(ResultTypeError, match="has no entry 'Loss'"):
        DictLoss(lambda o, t: {"loss": o.sum()}, "Loss")(outputs, targets)
    with pytest.raises(ResultTypeError, match="must return a dict"):
        DictLoss(lambda o, t: o.sum(), "Loss")(outputs, targets)
    with pytest.raises(ResultTypeError, match="empty tuple"):
        DictLoss.summed(lambda o, t: (), "Loss")(outputs, targets)
    with pytest.raises(NameConflictError, match="entry named 'Loss'"):
        DictLoss.summed(lambda o, t: {"Loss": o.sum()}, "Loss")(outputs, targets)
    with pytest.raises(MetricCallError, match="ZeroDivisionError"):
        DictLoss(lambda o, t: {"Loss": 1 / 0}, "Loss")(outputs, targets)
    clash = DictLoss(detection_dict, "Loss") + Loss(mae_fn, "Worst")
    with pytest.raises(NameConflictError, match=r"\['Worst'\]"):
        clash(outputs, targets)
    with pytest.raises(InvalidNameError):
        DictLoss.summed(lambda o, t: {3: o.sum()}, "Loss")(outputs, targets)


def test_errors_name_the_loss_and_the_value() -> None:
    loss = Loss(mse_loss, "MSE") + Loss(lambda o, t: o.sum(0), "Bad")
    outputs, targets = batches([4])[0]
    with pytest.raises(ResultShapeError, match=r"'Bad'.*\(4,\).*\(3,\)"):
        loss(outputs, targets)
    failing = 2 * Loss(lambda o, t: 1 / 0, "Broken")
    with pytest.raises(MetricCallError) as caught:
        failing(outputs, targets)
    assert str(caught.value) == (
        "CompositionalLoss 2 x [Broken]: the callable for 'Broken' raised ZeroDivisionError: "
        "division by zero"
    )


# -- persistence -------------------------------------------------------------------------------


def composed() -> LossBase[Tensor, Tensor]:
    return (
        (
            Loss(mse_loss, "MSE") ** 2
            + 0.5 * Loss(mae_fn, "MAE")
            - 0.1 * Loss(accuracy_fn, "Acc", higher_is_better=True)
        )
        | tt.Metric(mae_fn, "MAE")
        | tt.Metric(l1_loss, "L1")
    )


def round_trips() -> dict[str, Callable[[LossBase[Tensor, Tensor]], LossBase[Tensor, Tensor]]]:
    def by_pickle(loss: LossBase[Tensor, Tensor]) -> LossBase[Tensor, Tensor]:
        return pickle.loads(pickle.dumps(loss))  # type: ignore[no-any-return]

    def by_torch_save(loss: LossBase[Tensor, Tensor]) -> LossBase[Tensor, Tensor]:
        buffer = io.BytesIO()
        torch.save(loss, buffer)
        buffer.seek(0)
        return torch.load(buffer, weights_only=False)  # type: ignore[no-any-return]

    def by_state_dict(loss: LossBase[Tensor, Tensor]) -> LossBase[Tensor, Tensor]:
        buffer = io.BytesIO()
        torch.save(loss.state_dict(), buffer)
        buffer.seek(0)
        fresh = composed()
        fresh.load_state_dict(torch.load(buffer, weights_only=True))
        return fresh

    return {
        "pickle": by_pickle,
        "deepcopy": copy.deepcopy,
        "copy": lambda loss: loss.copy(),
        "torch.save": by_torch_save,
        "state_dict": by_state_dict,
    }


@pytest.mark.parametrize("how", list(round_trips()))
def test_round_trip_mid_epoch_behaves_like_an_uninterrupted_run(how: str) -> None:
    data = batches([3, 5, 2, 4, 1], dtype=torch.float64)
    uninterrupted = composed()
    for outputs, targets in data:
        uninterrupted(outputs, targets)
    interrupted = composed()
    for outputs, targets in data[:2]:
        interrupted(outputs, targets)
    restored = round_trips()[how](interrupted)
    assert restored is not interrupted
    assert restored.formula == uninterrupted.formula and repr(restored) == repr(uninterrupted)
    assert restored.expression == uninterrupted.expression
    values = []
    for outputs, targets in data[2:]:
        grad_outputs = outputs.clone().requires_grad_(True)
        value = restored(grad_outputs, targets)
        value.backward()  # forward still works and is differentiable
        values.append(value)
    expected = uninterrupted.compute()
    found = restored.compute()
    assert list(found) == list(expected) == ["Combined Loss", "MSE", "MAE", "Acc", "L1"]
    for name in expected:
        torch.testing.assert_close(found[name], expected[name], rtol=1e-12, atol=0)
    # the original keeps its own state
    assert interrupted.compute()["MSE"] != expected["MSE"]


def test_dict_loss_round_trips_into_a_fresh_instance() -> None:
    loss = 0.3 * DictLoss(detection_dict, "Loss")
    data = batches([3, 4], dtype=torch.float64)
    loss(*data[0])
    fresh = 0.3 * DictLoss(detection_dict, "Loss")
    fresh.load_state_dict(loss.state_dict())
    loss(*data[1])
    fresh(*data[1])
    assert fresh.compute() == loss.compute()
    assert list(fresh.compute()) == ["Combined Loss", "Loss", "Worst", "Bias"]
    restored = pickle.loads(pickle.dumps(DictLoss.summed(cco_dict, "Total")))
    restored(*data[0])
    assert list(restored.compute()) == ["Total", "cls_loss", "box_loss", "obj_loss"]


def test_reweighting_is_multiplication() -> None:
    # t3w's loss_reweight: the weight is part of the formula and of the gradient
    loss = 0.3 * Loss(mse_loss, "MSE")
    outputs, targets = batches([4])[0]
    torch.testing.assert_close(loss(outputs, targets), 0.3 * mse_loss(outputs, targets))
    assert loss.compute() == {
        "Combined Loss": 0.3 * loss.compute()["MSE"],
        "MSE": loss.compute()["MSE"],
    }


# -- sync on real processes ------------------------------------------------------------------

SYNC_SIZES = {0: [4, 1, 3], 1: []}  # rank 1 sees no data at all


def sync_scenario(rank: int, world: int) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(rank)
    dict_loss = DictLoss(detection_dict, "Loss")
    loss = (Loss(mse_loss, "MSE") + 0.5 * Loss(mae_fn, "MAE")) | tt.Metric(accuracy_fn, "Acc")
    for size in SYNC_SIZES[rank] + ([2, 5] if rank == 1 else []):
        outputs = torch.randn(size, 3, generator=generator, dtype=torch.float64)
        targets = torch.randn(size, 3, generator=generator, dtype=torch.float64)
        loss(outputs, targets)
        if size in SYNC_SIZES[rank]:
            dict_loss(outputs, targets)
    tt.sync_all(loss, dict_loss)
    tt.sync_all(loss, dict_loss)  # idempotent
    return {"loss": loss.compute(), "dict": dict_loss.compute()}


@pytest.mark.timeout(120)
def test_sync_gives_the_formula_on_the_synced_components(tmp_path: Path) -> None:
    records = _dist.launch(2, "test_losses:sync_scenario", tmp_path, timeout=90.0)
    every: list[Any] = []
    dict_data: list[Any] = []
    for rank in range(2):
        generator = torch.Generator().manual_seed(rank)
        for size in SYNC_SIZES[rank] + ([2, 5] if rank == 1 else []):
            pair = (
                torch.randn(size, 3, generator=generator, dtype=torch.float64),
                torch.randn(size, 3, generator=generator, dtype=torch.float64),
            )
            every.append(pair)
            if size in SYNC_SIZES[rank]:
                dict_data.append(pair)
    outputs, targets = concatenated(every)
    expected_loss = {
        "MSE": mse_loss(outputs, targets),
        "MAE": mae_fn(outputs, targets).mean(),
        "Acc": accuracy_fn(outputs, targets).mean(),
    }
    dict_outputs, dict_targets = concatenated(dict_data)
    for record in records:
        found = record["loss"]
        assert list(found) == ["Combined Loss", "MSE", "MAE", "Acc"]
        for name, value in expected_loss.items():
            torch.testing.assert_close(found[name], value, rtol=1e-12, atol=0)
        torch.testing.assert_close(
            found["Combined Loss"], found["MSE"] + 0.5 * found["MAE"], rtol=1e-12, atol=0
        )
        found_dict = record["dict"]
        assert list(found_dict) == ["Loss", "Worst", "Bias"]
        torch.testing.assert_close(
            found_dict["Worst"],
            (dict_outputs - dict_targets).abs().amax(1).mean(),
            rtol=1e-12,
            atol=0,
        )
    assert torch.equal(records[0]["loss"]["Combined Loss"], records[1]["loss"]["Combined Loss"])


# == issue 10 ==================================================================================
# (1) the combined value is the mean of what was optimised ------------------------------------


def absolute_error(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).abs()


def test_the_combined_value_of_a_square_is_the_mean_of_the_squares() -> None:
    squared = Loss(absolute_error, "MAE") ** 2
    outputs, targets = torch.tensor([1.0, 3.0]), torch.zeros(2)
    assert squared(outputs, targets).item() == 5.0  # mean of 1 and 9: what backward() optimises
    computed = squared.compute()
    assert computed == {"Combined Loss": torch.tensor(5.0), "MAE": torch.tensor(2.0)}
    assert squared.formula_value() == torch.tensor(4.0)  # the formula on the epoch value


def test_the_combined_value_weighs_forward_and_update_batches_alike() -> None:
    loss = Loss(mse_loss, "MSE") ** 2 + 0.5 * Loss(mae_fn, "MAE") * Loss(
        lambda o, t: (o - t).pow(2).mean(1), "SE"
    )
    data = batches([3, 5, 2, 4, 1], seed=3, dtype=torch.float64)
    weights: list[Any] = [
        None,
        2.5,
        torch.rand(2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) + 0.1,
        None,
        7,
    ]
    total = torch.zeros((), dtype=torch.float64)
    mass = 0.0
    for index, ((outputs, targets), weight) in enumerate(zip(data, weights, strict=True)):
        criterion = mse_loss(outputs, targets) ** 2 + 0.5 * mae_fn(outputs, targets) * (
            outputs - targets
        ).pow(2).mean(1)
        if isinstance(weight, Tensor):
            total += (criterion * weight).sum()
            mass += float(weight.sum())
        else:
            share = (weight if weight is not None else len(outputs)) / len(outputs)
            total += criterion.sum() * share
            mass += share * len(outputs)
        if index % 2:
            loss.update(outputs, targets, weight=weight)
        else:
            value = loss(outputs, targets, weight=weight)
            expected = (
                (criterion * weight).sum() / weight.sum()
                if isinstance(weight, Tensor)
                else criterion.mean()
            )
            torch.testing.assert_close(value, expected, rtol=1e-14, atol=0)
    torch.testing.assert_close(loss.compute()["Combined Loss"], total / mass, rtol=1e-12, atol=0)


recipes_and_splits = st.tuples(
    recipes,
    st.lists(st.integers(1, 11), max_size=4, unique=True).map(sorted),
    st.lists(st.sampled_from(["forward", "update", "weighted"]), min_size=5, max_size=5),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(recipes_and_splits)
def test_random_trees_and_random_splits_give_the_weighted_mean_of_the_batches(
    case: tuple[Any, list[int], list[str]],
) -> None:
    recipe, cuts, modes = case
    try:
        loss, hand = build(recipe)
    except FormulaError:
        assume(False)
        return
    generator = torch.Generator().manual_seed(len(cuts))
    outputs = torch.randn(12, 3, generator=generator, dtype=torch.float64)
    targets = torch.randn(12, 3, generator=generator, dtype=torch.float64)
    bounds = [0, *cuts, 12]
    total, mass = 0.0, 0.0
    for index, (start, stop) in enumerate(itertools.pairwise(bounds)):
        part_outputs, part_targets = outputs[start:stop], targets[start:stop]
        size = stop - start
        criterion = hand({name: fn(part_outputs, part_targets) for name, fn in FUNCTIONS.items()})
        criterion = torch.as_tensor(criterion, dtype=torch.float64).expand(size)
        mode = modes[index]
        weight = 0.5 * size if mode == "weighted" else None
        if mode == "update":
            loss.update(part_outputs, part_targets)
        else:
            returned = loss(part_outputs, part_targets, weight=weight)
            assume(bool(torch.isfinite(returned)))
            assert float(returned) == pytest.approx(float(criterion.mean()), rel=1e-9, abs=1e-12)
        share = 0.5 if mode == "weighted" else 1.0
        total += float(criterion.sum()) * share
        mass += size * share
    combined = float(loss.compute()[loss.name])
    assume(math.isfinite(combined) and math.isfinite(total))
    assert combined == pytest.approx(total / mass, rel=1e-9, abs=1e-9)


# (2) precision: the widest floating dtype, also under autocast -------------------------------


def per_sample_reg(outputs: Tensor, targets: Tensor) -> Tensor:
    return outputs.pow(2).mean(1)


def cross_entropy_fn(outputs: Tensor, targets: Tensor) -> Tensor:
    return torch.nn.functional.cross_entropy(outputs, targets)


def test_autocast_keeps_the_float32_of_a_float32_component() -> None:
    generator = torch.Generator().manual_seed(0)
    layer = torch.nn.Linear(16, 10)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(10, 16, generator=generator) / 4)
        layer.bias.copy_(torch.randn(10, generator=generator) / 4)
    inputs = torch.randn(64, 16, generator=generator)
    labels = torch.randint(0, 10, (64,), generator=generator)
    loss = Loss(cross_entropy_fn, "CE") + 0.1 * Loss(per_sample_reg, "Reg")
    with torch.autocast("cpu", torch.bfloat16):
        logits = layer(inputs)
        ce, reg = cross_entropy_fn(logits, labels), per_sample_reg(logits, labels)
        assert (logits.dtype, ce.dtype, reg.dtype) == (
            torch.bfloat16,
            torch.float32,
            torch.bfloat16,
        )
        value = loss(logits, labels)
        hand_written = (ce + 0.1 * reg.float()).mean()
    assert value.dtype == torch.float32
    assert torch.equal(value, hand_written)
    # a float64 reference of the same values: float32 accuracy, not bfloat16's
    reference = (ce.double() + 0.1 * reg.double()).mean().detach()
    assert abs(float(value.detach()) - float(reference)) <= 1e-6 * abs(float(reference))
    in_bfloat16 = (ce.to(torch.bfloat16) + 0.1 * reg).mean().detach()  # what a bf16 criterion gives
    assert abs(float(in_bfloat16) - float(reference)) > 1e-4 * abs(float(reference))
    value.backward()
    assert layer.weight.grad is not None
    grad = layer.weight.grad.clone()
    layer.weight.grad = None
    with torch.autocast("cpu", torch.bfloat16):
        logits = layer(inputs)
        (
            cross_entropy_fn(logits, labels) + 0.1 * per_sample_reg(logits, labels).float()
        ).mean().backward()
    assert torch.equal(grad, layer.weight.grad)
    computed = loss.compute()["Combined Loss"]  # the epoch mean, summed in float64
    assert computed.dtype == torch.float32
    torch.testing.assert_close(computed, value.detach(), rtol=2e-7, atol=0)


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        (torch.float32, torch.float64, torch.float64),
        (torch.bfloat16, torch.float32, torch.float32),
        (torch.float16, torch.bfloat16, torch.float32),
        (torch.bfloat16, torch.bfloat16, torch.bfloat16),
        (torch.int64, torch.float64, torch.float64),
        (torch.bool, torch.float16, torch.float16),
        (torch.int32, torch.int64, torch.float32),  # the default float when none is floating
    ],
)
def test_the_criterion_is_computed_in_the_widest_floating_dtype(
    first: torch.dtype, second: torch.dtype, expected: torch.dtype
) -> None:
    values = torch.tensor([1.0, 0.0, 3.0, 2.0])
    loss = Loss(lambda o, t: values.to(first), "First") + 0.5 * Loss(
        lambda o, t: values.to(second), "Second"
    )
    result = loss(torch.zeros(4, 2), torch.zeros(4, 2))
    assert result.dtype == expected
    reference = (values.to(first).to(expected) + 0.5 * values.to(second).to(expected)).mean()
    assert torch.equal(result, reference)


# (3) integer and boolean components; atomic forward and update -------------------------------


def hits(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs > targets).sum(1)  # int64 counts per sample


def above(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs > targets).all(1)  # bool per sample


def test_integer_and_boolean_components_are_promoted() -> None:
    outputs, targets = batches([6])[0]
    counts, flags, error = hits(outputs, targets), above(outputs, targets), mae_fn(outputs, targets)
    assert (counts.dtype, flags.dtype) == (torch.int64, torch.bool)
    loss = Loss(hits, "Hits") + 2 * Loss(mae_fn, "MAE")
    value = loss(outputs, targets)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, (counts.float() + 2 * error).mean(), rtol=0, atol=0)
    gated = Loss(above, "Above") * Loss(mae_fn, "MAE")
    torch.testing.assert_close(gated(outputs, targets), (flags.float() * error).mean())
    inverse = Loss(hits, "Hits") ** -1  # an integer to a negative power: fine once promoted
    torch.testing.assert_close(inverse(outputs, targets), (counts.float() ** -1).mean())
    alone = 3 * Loss(hits, "Hits")
    assert alone(outputs, targets).dtype == torch.get_default_dtype()
    computed = loss.compute()
    torch.testing.assert_close(computed["Hits"], counts.double().mean().to(computed["Hits"].dtype))
    torch.testing.assert_close(computed["Combined Loss"], value.detach())


def test_a_loss_of_one_integer_or_boolean_component_returns_a_float() -> None:
    outputs, targets = batches([5], seed=2)[0]
    for fn in (hits, above):
        expected = fn(outputs, targets).double().mean()
        for loss, factor in (
            (Loss(fn, "Count"), 1),
            (DictLoss(lambda o, t, fn=fn: {"Count": fn(o, t)}, "Count"), 1),
            (DictLoss.summed(lambda o, t, fn=fn: {"a": fn(o, t), "b": fn(o, t)}, "Count"), 2),
        ):
            value = loss(outputs, targets)  # raised a raw RuntimeError after counting the batch
            assert value.dtype == torch.get_default_dtype()
            torch.testing.assert_close(value.double(), factor * expected)
            torch.testing.assert_close(loss.compute()["Count"].double(), factor * expected)
    assert Loss(lambda o, t: torch.tensor(3), "Three")(outputs, targets).dtype == torch.float32


def test_summed_dict_losses_add_in_the_widest_floating_dtype() -> None:
    def parts(outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
        return {
            "ce": torch.tensor(1.0 / 3.0),  # float32, 0-d: would not lift a bf16 vector
            "reg": (outputs - targets).abs().mean(1).to(torch.bfloat16),
        }

    outputs, targets = batches([8], seed=4)[0]
    loss = DictLoss.summed(parts, "Total")
    value = loss(outputs, targets)
    found = parts(outputs, targets)
    assert value.dtype == torch.float32
    assert torch.equal(value, (found["ce"] + found["reg"].float()).mean())
    with pytest.raises(ResultTypeError, match="'reg' must be a tensor or a real Python number"):
        DictLoss.summed(lambda o, t: {"ce": o.sum(1), "reg": "x"}, "Total")(outputs, targets)


def test_python_number_components_stay_numbers_and_divide_like_tensors() -> None:
    outputs, targets = batches([3])[0]
    loss = Loss(mae_fn, "MAE") + Loss(lambda o, t: 2, "Two") ** 2
    torch.testing.assert_close(loss(outputs, targets), mae_fn(outputs, targets).mean() + 4)
    zero = Loss(mae_fn, "MAE") * (1 / Loss(lambda o, t: 0.0, "Zero", higher_is_better=True))
    assert math.isinf(float(zero(outputs, targets)))  # as a 0-d tensor would give, not an error
    root = Loss(lambda o, t: -8.0, "Negative") ** (1 / 3)
    assert math.isnan(float(root(outputs, targets)))  # not a complex number
    assert Loss(lambda o, t: np.float32(0.5), "Half")(outputs, targets) == 0.5
    # NumPy booleans (np.all returns one) are values; in a formula they crashed on an assert
    hit = Loss(lambda o, t: np.True_, "Hit", higher_is_better=True)
    assert (2 * hit)(outputs, targets) == 2
    torch.testing.assert_close(
        (Loss(mae_fn, "MAE") - hit)(outputs, targets), mae_fn(outputs, targets).mean() - 1
    )


def test_a_criterion_of_python_numbers_only_is_averaged_as_forward_returns_it() -> None:
    # Every component a Python number: forward returned the criterion in the default float
    # dtype, as documented, but the epoch kept the Python float: 'Combined Loss' was
    # 0.30000000000000004 in float64, not the 0.30000001192092896 forward returned.
    loss = Loss(lambda o, t: 0.1, "A") + Loss(lambda o, t: 0.2, "B")
    returned = [loss(torch.ones(size), torch.zeros(size)) for size in (3, 1)]
    loss.update(torch.ones(2), torch.zeros(2), weight=torch.tensor([1.0, 0.0]))
    computed = loss.compute()
    assert returned[0].dtype == computed["Combined Loss"].dtype == torch.float32
    assert computed["Combined Loss"].item() == returned[0].item() == returned[1].item()
    assert computed["A"].dtype == torch.float64 and computed["A"].item() == 0.1  # its own: kept
    counts = Loss(lambda o, t: 3, "Three") * Loss(lambda o, t: True, "One")  # ints and bools
    value = counts(torch.ones(2), torch.zeros(2))
    assert value.dtype == counts.compute()["Combined Loss"].dtype == torch.float32
    assert counts.compute()["Combined Loss"].item() == value.item() == 3.0


def test_python_number_components_multiply_as_numbers_before_any_tensor() -> None:
    # Found by the exactness sweep: inf x 1e-224 is inf in Python; a reference that first
    # made float32 tensors of the numbers gave inf x 0 = NaN. The loss follows the
    # hand-written expression (documented: Python numbers stay numbers).
    big, tiny = Loss(lambda o, t: math.inf, "L0"), Loss(lambda o, t: 1.072e-224, "L1")
    small = Loss(lambda o, t: torch.zeros(len(o), dtype=torch.float16), "L2")
    loss = big * tiny + tiny + small
    value = loss(torch.ones(1), torch.zeros(1))
    by_hand = math.inf * 1.072e-224 + 1.072e-224 + torch.zeros(1, dtype=torch.float16)
    assert torch.equal(value, by_hand.float().mean()) and value.item() == math.inf
    assert loss.compute()["Combined Loss"].item() == math.inf


class Flaky:
    """A per-sample value whose shape or type goes wrong on demand."""

    def __init__(self) -> None:
        self.mode = "good"

    def __call__(self, outputs: Tensor, targets: Tensor) -> Any:
        good = (outputs - targets).abs().mean(1)
        if self.mode == "raises":
            raise ZeroDivisionError("division by zero")
        return {
            "good": good,
            "wide": (outputs - targets).abs(),  # (B, 3): does not broadcast with (B,)
            "short": good[:-1],
            "text": "0.5",
            "none": None,
            "complex": good.to(torch.complex64),
            "huge": 10**30,
        }[self.mode]


REFUSED_BATCHES: dict[str, tuple[type[Exception], str]] = {
    "wide": (ResultShapeError, "cannot combine the component values of shapes"),
    "short": (ResultShapeError, "cannot combine the component values of shapes"),
    "raises": (MetricCallError, "ZeroDivisionError"),
    "text": (ResultTypeError, "'Flaky' must be a tensor or a real Python number, found str"),
    "none": (ResultTypeError, "found NoneType"),
    "complex": (ResultTypeError, "'Flaky' is a complex tensor"),
    "huge": (ResultTypeError, "outside the int64 range"),
}


@pytest.mark.parametrize("mode", list(REFUSED_BATCHES))
def test_a_refused_batch_changes_nothing(mode: str) -> None:
    flaky = Flaky()
    loss = (Loss(hits, "Hits") + Loss(mae_fn, "MAE") * Loss(flaky, "Flaky")) | tt.Metric(
        mae_fn, "Tracked"
    )
    data = batches([3, 4, 2], seed=5)
    loss(*data[0])
    before = loss.compute()
    state = loss.state_dict()
    flaky.mode = mode
    error_class, fragment = REFUSED_BATCHES[mode]
    for _ in range(3):
        for attempt in (loss.forward, loss.update):
            with pytest.raises(error_class) as caught:
                attempt(*data[1])
            message = str(caught.value)
            assert message.startswith("CompositionalLoss [Hits] + [MAE] x [Flaky]: ")
            assert fragment in message
            assert not isinstance(caught.value, RuntimeError) or isinstance(
                caught.value, tt.errors.TorchTallyError
            )
    after = loss.state_dict()
    assert after["state"] == state["state"]
    assert all(torch.equal(a, b) for a, b in zip(after["tensors"], state["tensors"], strict=True))
    assert loss.compute() == before  # the three refused batches counted no sample
    flaky.mode = "good"
    loss(*data[2])
    outputs, targets = concatenated([data[0], data[2]])
    torch.testing.assert_close(loss.compute()["MAE"], mae_fn(outputs, targets).mean())


def test_a_refused_first_batch_leaves_the_loss_fresh() -> None:
    loss = Loss(hits, "Hits") + Loss(lambda o, t: (o - t).abs(), "Wide")
    for _ in range(3):
        with pytest.raises(ResultShapeError, match=r"\{'Hits': \(4,\), 'Wide': \(4, 3\)\}"):
            loss(*batches([4])[0])
    with pytest.warns(ComputedBeforeUpdatedWarning):
        assert all(math.isnan(value) for value in loss.compute().values())
    weighted = Loss(mae_fn, "MAE") + Loss(hits, "Hits")
    for bad in (-1.0, "heavy", torch.ones(2, 2)):
        with pytest.raises(tt.errors.WeightError):
            weighted(*batches([4])[0], weight=bad)
    with pytest.warns(ComputedBeforeUpdatedWarning):
        weighted.compute()


# (4) any depth ---------------------------------------------------------------------------------

TERMS = 10_000


class Term:
    """A module-level callable (so that deep losses pickle): ``factor`` times the MAE."""

    def __init__(self, factor: int) -> None:
        self.factor = factor

    def __call__(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return (outputs - targets).abs().mean(1) * self.factor

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Term) and other.factor == self.factor

    def __hash__(self) -> int:
        return self.factor


def terms(count: int = TERMS) -> list[Loss[Tensor, Tensor]]:
    return [Loss(Term(1 + index % 3), f"T{index}") for index in range(count)]


def total_factor(count: int = TERMS) -> int:
    return sum(1 + index % 3 for index in range(count))


def right_fold(losses: list[Loss[Tensor, Tensor]]) -> LossBase[Tensor, Tensor]:
    folded: LossBase[Tensor, Tensor] = losses[-1]
    for loss in reversed(losses[:-1]):
        folded = loss + folded
    return folded


def timed(build_it: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    built = build_it()
    return built, time.perf_counter() - start


@pytest.mark.timeout(300)
@pytest.mark.parametrize("how", ["sum", "right fold"])
def test_ten_thousand_terms_build_in_linear_time_and_work(how: str) -> None:
    losses = terms()
    loss, seconds = timed(lambda: sum(losses) if how == "sum" else right_fold(losses))
    assert seconds < 3.0, f"building {TERMS} terms took {seconds:.1f} s"
    assert isinstance(loss, CompositionalLoss)
    names = [f"T{index}" for index in range(TERMS)]
    assert loss.formula == " + ".join(f"[{name}]" for name in names)
    assert [entry.name for entry in loss.components] == names
    assert loss.higher_is_better is False
    assert len(str(_label_error(loss))) < 400  # error messages cut long formulas
    data = batches([3, 5, 2], seed=11, dtype=torch.float64)
    outputs, targets = data[0]
    value = loss(outputs, targets)
    torch.testing.assert_close(
        value, total_factor() * mae_fn(outputs, targets).mean(), rtol=1e-12, atol=0
    )
    checkpoint = loss.state_dict()
    copies = {
        "copy": loss.copy(),
        "deepcopy": copy.deepcopy(loss),
        "pickle": pickle.loads(pickle.dumps(loss)),
        "torch.save": _through_torch_save(loss),
    }
    fresh = sum(terms()) if how == "sum" else right_fold(terms())
    fresh.load_state_dict(_through_buffer(checkpoint))
    copies["state_dict"] = fresh
    loss(*data[1])
    expected = loss.compute()
    for name, clone in copies.items():
        assert clone.expression == loss.expression, name
        clone(*data[1])
        found = clone.compute()
        assert list(found) == list(expected), name
        assert all(torch.equal(found[key], expected[key]) for key in expected), name


def _label_error(loss: LossBase[Tensor, Tensor]) -> str:
    with pytest.raises(FormulaError) as caught:
        loss + "x"
    return str(caught.value)


def _through_buffer(state: dict[str, Any]) -> dict[str, Any]:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)  # type: ignore[no-any-return]


def _through_torch_save(loss: LossBase[Tensor, Tensor]) -> LossBase[Tensor, Tensor]:
    buffer = io.BytesIO()
    torch.save(loss, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)  # type: ignore[no-any-return]


@pytest.mark.timeout(300)
def test_ten_thousand_operations_with_constants_and_schedules_build_fast() -> None:
    base = Loss(mae_fn, "MAE")
    outputs, targets = batches([4], dtype=torch.float64)[0]
    error = mae_fn(outputs, targets).mean()

    def scaled() -> LossBase[Tensor, Tensor]:
        loss: LossBase[Tensor, Tensor] = base
        for _ in range(TERMS):
            loss = loss * 1.0001  # each step used to render the whole formula
        return loss

    def shifted() -> LossBase[Tensor, Tensor]:
        loss: LossBase[Tensor, Tensor] = base
        for index in range(TERMS):
            loss = 0.5 + loss if index % 2 else loss - 0.5
        return loss

    def weighted() -> LossBase[Tensor, Tensor]:
        return sum(
            tt.schedules.linear(0.0, 1.0, steps=index + 1) * loss
            for index, loss in enumerate(terms())
        )

    def negated() -> LossBase[Tensor, Tensor]:
        loss: LossBase[Tensor, Tensor] = base
        for _ in range(TERMS):
            loss = -loss
        return loss

    for build_it, expected in (
        (scaled, error * 1.0001**TERMS),
        (shifted, error),
        (negated, error),
    ):
        loss, seconds = timed(build_it)
        assert seconds < 3.0, f"{build_it.__name__}: {seconds:.1f} s"
        torch.testing.assert_close(loss(outputs, targets), expected, rtol=1e-9, atol=1e-12)
        clone = pickle.loads(pickle.dumps(loss))
        assert clone.formula == loss.formula
    loss, seconds = timed(weighted)
    assert seconds < 3.0, f"weighted: {seconds:.1f} s"
    (value, seconds) = timed(lambda: loss(outputs, targets))
    torch.testing.assert_close(value, torch.zeros((), dtype=torch.float64))  # every weight is 0
    assert seconds < 10.0, f"forward of {TERMS} schedules: {seconds:.1f} s"
    assert len(loss.schedule_values()) == TERMS


# (5) DictLoss: declared names, weighted sums --------------------------------------------------


def detection_without_bias(outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
    error = (outputs - targets).abs()
    return {"Loss": error.mean(1), "Worst": error.amax(1)}


def test_declared_names_are_known_before_any_batch() -> None:
    loss = DictLoss(detection_dict, "Loss", names=["Worst", "Bias", "Rare"])
    assert loss.declared_names() == ("Loss", "Worst", "Bias", "Rare")
    with pytest.warns(ComputedBeforeUpdatedWarning):
        values = loss.compute()
    assert list(values) == ["Loss", "Worst", "Bias", "Rare"]
    assert all(math.isnan(value) for value in values.values())
    fresh = DictLoss(detection_dict, "Loss", names=["Worst", "Bias", "Rare"])
    fresh.load_state_dict(_through_buffer(loss.state_dict()))  # a fresh state loads
    data = batches([3, 2], dtype=torch.float64)
    for outputs, targets in data:
        fresh(outputs, targets)
    computed = fresh.compute()
    assert list(computed) == ["Loss", "Worst", "Bias", "Rare"]
    assert math.isnan(computed["Rare"])  # declared, never returned
    outputs, targets = concatenated(data)
    torch.testing.assert_close(computed["Worst"], (outputs - targets).abs().amax(1).mean())
    # the loss's own name among names= is ignored; a string is refused
    assert DictLoss(detection_dict, "Loss", names=["Loss", "Bias"]).declared_names() == (
        "Loss",
        "Bias",
    )
    with pytest.raises(FormulaError, match="names= takes a list of entry names"):
        DictLoss(detection_dict, "Loss", names="Worst")
    with pytest.raises(InvalidNameError):
        DictLoss(detection_dict, "Loss", names=["Worst", 3])  # type: ignore[list-item]


def test_an_entry_missing_from_some_batches_is_averaged_where_present() -> None:
    def sometimes(outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
        values = {"Loss": mae_fn(outputs, targets)}
        if len(outputs) == 3:
            values["Aux"] = (outputs - targets).pow(2).mean(1)
        return values

    loss = DictLoss(sometimes, "Loss", names=["Aux"])
    data = batches([3, 2, 3, 5], dtype=torch.float64)
    for outputs, targets in data:
        loss(outputs, targets)
    with_aux = concatenated([pair for pair in data if len(pair[0]) == 3])
    torch.testing.assert_close(
        loss.compute()["Aux"], (with_aux[0] - with_aux[1]).pow(2).mean(), rtol=1e-12, atol=0
    )


def weighted_parts(outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
    diff = outputs - targets
    return {"cls_loss": diff.abs().mean(1), "box_loss": diff.pow(2).mean(), "iou": diff.mean(1)}


def test_summed_with_weights_puts_the_weights_in_the_formula() -> None:
    loss = DictLoss.summed(weighted_parts, "Total", weights={"cls_loss": 1, "box_loss": 2})
    assert loss.formula == "[cls_loss] + 2 x [box_loss]"
    assert repr(loss) == "DictLoss([cls_loss] + 2 x [box_loss])"
    assert loss.name == "Total" and loss.fn is weighted_parts
    assert [entry.name for entry in loss.components] == ["cls_loss", "box_loss"]
    data = batches([3, 6, 2], dtype=torch.float64)
    returned = []
    for outputs, targets in data:
        leaf = outputs.clone().requires_grad_(True)
        value = loss(leaf, targets)
        value.backward()
        reference = outputs.clone().requires_grad_(True)
        parts = weighted_parts(reference, targets)
        expected = (parts["cls_loss"] + 2 * parts["box_loss"]).mean()
        expected.backward()
        torch.testing.assert_close(value, expected, rtol=1e-14, atol=0)
        torch.testing.assert_close(leaf.grad, reference.grad, rtol=1e-14, atol=0)
        returned.append((len(outputs), value.detach()))
    computed = loss.compute()
    assert list(computed) == ["Total", "cls_loss", "box_loss", "iou"]  # iou: tracked, unweighted
    mean = sum(size * value for size, value in returned) / sum(size for size, _ in returned)
    torch.testing.assert_close(computed["Total"], mean, rtol=1e-12, atol=0)
    torch.testing.assert_close(
        computed["Total"], computed["cls_loss"] + 2 * computed["box_loss"], rtol=1e-12, atol=0
    )
    assert loss.higher_is_better_for("cls_loss") is False
    assert loss.higher_is_better_for("Total") is False
    composed = 0.5 * loss + Loss(mse_loss, "MSE")
    assert composed.formula == "0.5 x ([cls_loss] + 2 x [box_loss]) + [MSE]"
    with pytest.warns(ComputedBeforeUpdatedWarning):
        assert list(
            DictLoss.summed(weighted_parts, "Total", weights={"cls_loss": 0.5}).compute()
        ) == ["Total", "cls_loss"]


@pytest.mark.parametrize(
    ("weights", "error", "fragment"),
    [
        ({}, FormulaError, "weights must be a non-empty dict"),
        ([("cls_loss", 1)], FormulaError, "weights must be a non-empty dict"),
        ({"Total": 1}, NameConflictError, "an entry is named like the sum"),
        ({"cls]": 1}, InvalidNameError, "holds a bracket"),
        ({"cls_loss": "1"}, FormulaError, "cannot combine a loss with str"),
        ({"cls_loss": float("inf")}, FormulaError, "finite constants"),
        ({"cls_loss": 10**400}, FormulaError, "the constant 1.000e+400 does not fit"),
        ({"cls_loss": 1, "box_loss": -1}, FormulaError, "cannot add"),
    ],
)
def test_summed_weights_refusals(weights: Any, error: type[Exception], fragment: str) -> None:
    with pytest.raises(error) as caught:
        DictLoss.summed(weighted_parts, "Total", weights=weights)
    assert fragment in str(caught.value)
    assert "DictLoss" in str(caught.value)


def test_summed_weights_need_every_weighted_entry() -> None:
    loss = DictLoss.summed(weighted_parts, "Total", weights={"cls_loss": 1, "missing": 2})
    with pytest.raises(ResultTypeError, match="no value for the component 'missing'"):
        loss(*batches([2])[0])
    with pytest.warns(ComputedBeforeUpdatedWarning):
        loss.compute()


AUX_SIZES = {0: [4, 2], 1: [3, 5]}


def aux_on_rank_zero(outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
    values = {"Loss": mae_fn(outputs, targets)}
    if outputs[0, 0] > 100:  # rank 0 marks its batches
        values["Aux"] = (outputs - targets - 1000).pow(2).mean(1)
    return values


def declared_names_scenario(rank: int, world: int) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(rank)
    declared = DictLoss(aux_on_rank_zero, "Loss", names=["Aux"])
    learnt = DictLoss(aux_on_rank_zero, "Loss")
    for size in AUX_SIZES[rank]:
        outputs, targets = _aux_batch(rank, size, generator)
        declared(outputs, targets)
        learnt(outputs, targets)
    tt.sync_all(declared)
    record: dict[str, Any] = {"declared": declared.compute()}
    try:
        learnt.sync()
        record["learnt"] = "synced"
    except tt.errors.SyncError as error:
        record["learnt"] = str(error)
    return record


def _aux_batch(rank: int, size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    outputs = torch.randn(size, 3, generator=generator, dtype=torch.float64)
    targets = torch.randn(size, 3, generator=generator, dtype=torch.float64)
    if rank == 0:
        outputs[:, 0] += 1000
    return outputs, targets


@pytest.mark.timeout(120)
def test_declared_names_sync_when_one_rank_never_returns_an_entry(tmp_path: Path) -> None:
    records = _dist.launch(2, "test_losses:declared_names_scenario", tmp_path, timeout=90.0)
    every, aux = [], []
    for rank in range(2):
        generator = torch.Generator().manual_seed(rank)
        for size in AUX_SIZES[rank]:
            pair = _aux_batch(rank, size, generator)
            every.append(pair)
            if rank == 0:
                aux.append(pair)
    outputs, targets = concatenated(every)
    aux_outputs, aux_targets = concatenated(aux)
    for record in records:
        found = record["declared"]
        assert list(found) == ["Loss", "Aux"]
        torch.testing.assert_close(
            found["Loss"], mae_fn(outputs, targets).mean(), rtol=1e-12, atol=0
        )
        torch.testing.assert_close(
            found["Aux"],
            (aux_outputs - aux_targets - 1000).pow(2).mean(1).mean(),
            rtol=1e-12,
            atol=0,
        )
        # without names= the entry is learnt from the batches: the ranks' names differ, and a
        # sync that refuses says which name (one that merges learnt names is fine too)
        assert record["learnt"] == "synced" or "Aux" in record["learnt"]


# (6) names, directions and constants refused with the library's errors ------------------------


@pytest.mark.parametrize("name", ["a] + [b", "[MSE]", "x[0]", "]", "loss]"])
def test_names_with_brackets_are_refused(name: str) -> None:
    for make in (
        lambda: Loss(mse_loss, name),
        lambda: DictLoss(detection_dict, name),
        lambda: DictLoss.summed(cco_dict, name),
        lambda: DictLoss.summed(cco_dict, "Total", weights={name: 1}),
    ):
        with pytest.raises(InvalidNameError) as caught:
            make()
        message = str(caught.value)
        assert repr(name) in message and "'[' or ']'" in message
        assert message.startswith(("Loss: ", "DictLoss: ", "DictLoss 'Total': "))
    # two different losses can no longer read as the same formula
    a, b = Loss(mse_loss, "a"), Loss(mae_fn, "b")
    assert (a + b).formula == "[a] + [b]"


@pytest.mark.parametrize("value", ["yes", 1, 0, None, 1.0, torch.tensor(True)])
def test_higher_is_better_must_be_a_bool(value: Any) -> None:
    for make, prefix in (
        (lambda: Loss(mse_loss, "MSE", higher_is_better=value), "Loss 'MSE': "),
        (lambda: DictLoss(detection_dict, "Loss", higher_is_better=value), "DictLoss 'Loss': "),
        (
            lambda: DictLoss.summed(cco_dict, "Total", higher_is_better=value),
            "DictLoss 'Total': ",
        ),
    ):
        with pytest.raises(InvalidArgumentError) as caught:
            make()
        message = str(caught.value)
        assert message.startswith(prefix) and "higher_is_better must be True or False" in message
        assert isinstance(caught.value, TypeError)
    if value is not None:  # a metric may have no direction; anything else is refused
        with pytest.raises(InvalidArgumentError) as refused:
            tt.Metric(mae_fn, "MAE", higher_is_better=value)
        assert str(refused.value).startswith(
            "Metric value 'MAE': higher_is_better must be True, False or None, found "
            f"{type(value).__name__} "
        )


@pytest.mark.parametrize(
    "combine",
    [
        lambda loss: loss * 10**400,
        lambda loss: 10**400 * loss,
        lambda loss: loss + 10**400,
        lambda loss: loss - -(10**400),
        lambda loss: loss / 10**400,
        lambda loss: loss**10**400,
        lambda loss: loss * 2**63,
        lambda loss: loss * Fraction(10**400, 3),
        lambda loss: loss * (1e308 * 10),
    ],
)
def test_constants_that_do_not_fit_are_refused(combine: Callable[[Any], Any]) -> None:
    loss = Loss(mse_loss, "MSE")
    with pytest.raises(FormulaError) as caught:
        combine(loss)
    message = str(caught.value)
    assert message.startswith("Loss [MSE]: ")
    assert "does not fit a tensor operation (int64)" in message or "finite constants" in message
    assert (loss * (2**63 - 1)).formula == f"[MSE] x {2**63 - 1}"
    assert (loss * float(10**300)).formula == "[MSE] x 1e+300"


# -- a composition from a criterion of your own (DRYTorch's CompositionalLoss) -----------------


def mse_fn(outputs: Tensor, targets: Tensor) -> Tensor:
    """Per-sample mean squared error."""
    return (outputs - targets).pow(2).flatten(1).mean(1)


def smooth(values: dict[str, Tensor]) -> Tensor:
    """A criterion the operators cannot write: log, clamp and max of the components."""
    mae, mse = values["MAE"], values["MSE"]
    return torch.log1p(mae) + torch.clamp(mse, max=1.0) + torch.maximum(mae, mse)


SMOOTH_FORMULA = "log(1 + [MAE]) + clamp([MSE], max=1) + max([MAE], [MSE])"


def smooth_loss(**options: Any) -> CompositionalLoss[Tensor, Tensor]:
    return CompositionalLoss(
        criterion=smooth, formula=SMOOTH_FORMULA, MAE=mae_fn, MSE=mse_fn, **options
    )


def smooth_by_hand(outputs: Tensor, targets: Tensor) -> Tensor:
    """The same criterion written out, per sample."""
    mae = (outputs - targets).abs().mean(1)
    mse = (outputs - targets).pow(2).mean(1)
    return torch.log1p(mae) + mse.clamp(max=1.0) + torch.maximum(mae, mse)


def test_a_criterion_composition_optimises_and_reports_its_criterion() -> None:
    loss = smooth_loss()
    updated = smooth_loss()
    assert isinstance(loss, CompositionalLoss) and isinstance(loss, p.LossProtocol)
    assert loss.formula == SMOOTH_FORMULA and repr(loss) == f"CompositionalLoss({SMOOTH_FORMULA})"
    assert [entry.name for entry in loss.components] == ["MAE", "MSE"]
    assert loss.higher_is_better is False and loss.declared_names() == (
        "Combined Loss",
        "MAE",
        "MSE",
    )
    data = batches([4, 1, 6], dtype=torch.float64)
    total, count = torch.tensor(0.0, dtype=torch.float64), 0
    for outputs, targets in data:
        outputs = outputs.clone().requires_grad_(True)
        value = loss(outputs, targets)
        value.backward()
        by_hand = outputs.detach().clone().requires_grad_(True)
        expected = smooth_by_hand(by_hand, targets).mean()
        expected.backward()
        torch.testing.assert_close(value, expected, rtol=1e-12, atol=0)
        torch.testing.assert_close(outputs.grad, by_hand.grad, rtol=1e-12, atol=0)
        updated.update(outputs.detach(), targets)
        total, count = total + expected.detach() * len(targets), count + len(targets)
    outputs, targets = concatenated(data)
    expected_values = {
        "Combined Loss": total / count,  # the weighted epoch mean of what forward returned
        "MAE": mae_fn(outputs, targets).mean(),
        "MSE": mse_fn(outputs, targets).mean(),
    }
    for found in (loss.compute(), updated.compute()):
        assert list(found) == list(expected_values)
        for name, value in expected_values.items():
            torch.testing.assert_close(found[name], value, rtol=1e-12, atol=0)
    epoch = {name: expected_values[name] for name in ("MAE", "MSE")}
    torch.testing.assert_close(loss.formula_value(), smooth(epoch), rtol=1e-12, atol=0)
    # the criterion of component values, also per sample; other entries are ignored
    per_sample = {"MAE": mae_fn(outputs, targets), "MSE": mse_fn(outputs, targets), "X": 1}
    torch.testing.assert_close(loss.criterion(per_sample), smooth_by_hand(outputs, targets))


def test_the_criterion_of_operator_built_losses_follows_the_formula() -> None:
    a, b = Loss(mae_fn, "A"), Loss(mse_fn, "B")
    loss = a**2 + 0.5 * b - 3
    assert loss.criterion({"A": torch.tensor(2.0), "B": torch.tensor(4.0)}) == 2.0**2 + 0.5 * 4 - 3
    vectors = {"A": torch.tensor([1.0, 2.0]), "B": torch.tensor([2.0, 0.0])}
    torch.testing.assert_close(loss.criterion(vectors), torch.tensor([-1.0, 1.0]))
    assert isinstance(loss.criterion({"A": 1, "B": 2}), Tensor)
    scheduled = tt.schedules.piecewise({0: 1.0, 1: 10.0}) * a
    assert scheduled.criterion({"A": 2.0}) == 2.0
    scheduled(*batches([2])[0])  # one step on: the schedule's next value is 10
    assert scheduled.criterion({"A": 2.0}) == 20.0
    with pytest.raises(ResultTypeError, match="no value for the component 'B'"):
        loss.criterion({"A": 1.0})


def test_criterion_composition_arguments_are_checked() -> None:
    refusals: list[tuple[Callable[[], Any], type[Exception], str]] = [
        (lambda: CompositionalLoss(smooth, SMOOTH_FORMULA), FormulaError, "at least one component"),
        (lambda: CompositionalLoss("smooth", "f", MAE=mae_fn), InvalidArgumentError, "criterion"),
        (lambda: CompositionalLoss(smooth, "f", MAE="mae"), InvalidArgumentError, "'MAE' must be"),
        (
            lambda: CompositionalLoss(smooth, "f", MAE=tt.Metric(mae_fn, "MAE")),
            InvalidArgumentError,
            "'MAE' must be a callable of (outputs, targets), found Metric",
        ),
        (lambda: CompositionalLoss(smooth, 3, MAE=mae_fn), InvalidArgumentError, "formula must"),
        (lambda: CompositionalLoss(smooth, "", MAE=mae_fn), InvalidArgumentError, "formula must"),
        (
            lambda: CompositionalLoss(smooth, "f", higher_is_better="yes", MAE=mae_fn),
            InvalidArgumentError,
            "higher_is_better must be True or False",
        ),
        (lambda: CompositionalLoss(smooth, "f", **{"[MAE]": mae_fn}), InvalidNameError, "bracket"),
        (
            lambda: CompositionalLoss(smooth, "f", **{COMBINED_NAME: mae_fn}),
            NameConflictError,
            "reserved",
        ),
        (
            lambda: CompositionalLoss(smooth, "f", name="MAE", MAE=mae_fn),
            NameConflictError,
            "a component is named 'MAE'",
        ),
    ]
    for make, error, fragment in refusals:
        with pytest.raises(error) as caught:
            make()
        assert str(caught.value).startswith("CompositionalLoss") and fragment in str(caught.value)
    assert CompositionalLoss(smooth, MAE=mae_fn, MSE=mse_fn).formula == "smooth([MAE], [MSE])"
    assert CompositionalLoss(lambda v: v["A"], A=mae_fn).formula == "criterion([A])"


def test_a_failing_criterion_names_the_loss_and_changes_nothing() -> None:
    loss = CompositionalLoss(lambda values: values["Missing"], "[Missing]", MAE=mae_fn)
    with pytest.raises(MetricCallError, match="CompositionalLoss \\[Missing\\]: the callable for "):
        loss(*batches([2])[0])
    with pytest.warns(ComputedBeforeUpdatedWarning):
        assert loss.compute()["MAE"].isnan()


def test_a_criterion_composition_takes_part_in_arithmetic_under_its_name() -> None:
    with pytest.raises(FormulaError, match=r"build it with name='\.\.\.'"):
        smooth_loss() + Loss(mse_fn, "Reg")
    with pytest.raises(FormulaError, match=r"build it with name='\.\.\.'"):
        -smooth_loss()
    named = smooth_loss(name="Smooth")
    assert named.formula == SMOOTH_FORMULA and named.declared_names()[0] == "Smooth"
    loss = named + 0.1 * Loss(mse_fn, "Reg")
    assert loss.formula == "[Smooth] + 0.1 x [Reg]"
    outputs, targets = batches([5], dtype=torch.float64)[0]
    expected = (smooth_by_hand(outputs, targets) + 0.1 * mse_fn(outputs, targets)).mean()
    torch.testing.assert_close(loss(outputs, targets), expected, rtol=1e-12, atol=0)
    assert list(loss.compute()) == ["Combined Loss", "Smooth", "Reg", "MAE", "MSE"]
    values = {"MAE": torch.tensor(1.0), "MSE": torch.tensor(2.0), "Reg": torch.tensor(3.0)}
    torch.testing.assert_close(loss.criterion(values), smooth(values) + 0.3)
    higher = smooth_loss(name="Score", higher_is_better=True)
    assert higher.higher_is_better is True and higher.higher_is_better_for("Score") is True
    assert (Loss(mse_fn, "Reg") - higher).higher_is_better is False
    with pytest.raises(FormulaError, match="opposite directions"):
        Loss(mse_fn, "Reg") + higher
    joined = smooth_loss() | tt.wrap(lambda o, t: (o - t).amax(1), "Worst")
    torch.testing.assert_close(joined(outputs, targets), smooth_by_hand(outputs, targets).mean())
    assert list(joined.compute()) == ["Combined Loss", "MAE", "MSE", "Worst"]


@pytest.mark.parametrize("how", list(round_trips()))
def test_a_criterion_composition_round_trips_mid_epoch(how: str) -> None:
    data = batches([3, 5, 2, 4], dtype=torch.float64)
    uninterrupted = smooth_loss()
    for outputs, targets in data:
        uninterrupted(outputs, targets)
    interrupted = smooth_loss()
    for outputs, targets in data[:2]:
        interrupted(outputs, targets)
    if how == "state_dict":
        resumed = smooth_loss()
        resumed.load_state_dict(torch.load(_saved(interrupted.state_dict()), weights_only=True))
    else:
        resumed = round_trips()[how](interrupted)  # type: ignore[assignment]
    assert resumed.formula == SMOOTH_FORMULA
    for outputs, targets in data[2:]:
        resumed(outputs, targets)
    for name, value in uninterrupted.compute().items():
        torch.testing.assert_close(resumed.compute()[name], value, rtol=1e-12, atol=0)


def _saved(state: dict[str, Any]) -> io.BytesIO:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return buffer


def test_a_lambda_criterion_copies_but_does_not_pickle() -> None:
    loss = CompositionalLoss(lambda values: values["MAE"] ** 2, "[MAE]^2", MAE=mae_fn)
    loss(*batches([3])[0])
    assert copy.deepcopy(loss).compute() == loss.compute()
    with pytest.raises((pickle.PicklingError, AttributeError)):
        pickle.dumps(loss)


def test_the_formula_and_the_callables_define_what_syncs() -> None:
    identity = smooth_loss().sync_identity()
    assert identity["formula"] == SMOOTH_FORMULA
    assert identity["produced"] == [[callable_identity(fn) for fn in (smooth, mae_fn, mse_fn)]]
    other = CompositionalLoss(smooth, "another formula", MAE=mae_fn, MSE=mse_fn)
    assert other.sync_identity() != identity
    swapped = CompositionalLoss(smooth, SMOOTH_FORMULA, MAE=mse_fn, MSE=mae_fn)
    assert swapped.sync_identity() != identity


CRITERION_SIZES = {0: [4, 1, 3], 1: []}  # rank 1 sees no data at all


def criterion_sync_scenario(rank: int, world: int) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(rank)
    loss = smooth_loss()
    for size in CRITERION_SIZES[rank]:
        outputs = torch.randn(size, 3, generator=generator, dtype=torch.float64)
        targets = torch.randn(size, 3, generator=generator, dtype=torch.float64)
        loss(outputs, targets)
    loss.sync()
    loss.sync()  # idempotent
    record: dict[str, Any] = {"loss": loss.compute()}
    formula = SMOOTH_FORMULA if rank == 0 else "another formula"
    mismatched = CompositionalLoss(smooth, formula, MAE=mae_fn, MSE=mse_fn)
    try:
        mismatched.sync()
        record["mismatched"] = "synced"
    except tt.errors.SyncError as error:
        record["mismatched"] = str(error)
    return record


@pytest.mark.timeout(120)
def test_a_criterion_composition_syncs_and_ranks_must_agree_on_its_formula(
    tmp_path: Path,
) -> None:
    records = _dist.launch(2, "test_losses:criterion_sync_scenario", tmp_path, timeout=90.0)
    generator = torch.Generator().manual_seed(0)
    data = [
        (
            torch.randn(size, 3, generator=generator, dtype=torch.float64),
            torch.randn(size, 3, generator=generator, dtype=torch.float64),
        )
        for size in CRITERION_SIZES[0]
    ]
    outputs, targets = concatenated(data)
    combined = sum(smooth_by_hand(o, t).mean() * len(t) for o, t in data) / len(targets)
    for record in records:
        found = record["loss"]
        assert list(found) == ["Combined Loss", "MAE", "MSE"]
        torch.testing.assert_close(found["Combined Loss"], combined, rtol=1e-12, atol=0)
        torch.testing.assert_close(
            found["MAE"], mae_fn(outputs, targets).mean(), rtol=1e-12, atol=0
        )
        torch.testing.assert_close(
            found["MSE"], mse_fn(outputs, targets).mean(), rtol=1e-12, atol=0
        )
        assert "another formula" in record["mismatched"]


def test_the_criterion_fast_path_for_one_floating_dtype_never_returns_nothing() -> None:
    # Floating tensors of one dtype skip the promotion step; a step on Python constants
    # that fails (the algebra refuses 1 / 0, a hand-compiled program need not) must end
    # the same way on that path as on the general one, never as a None criterion.
    from torchtally.formula import Component, Operation, compile_expression
    from torchtally.losses._evaluation import criterion

    program = compile_expression(
        Operation("+", Component("A"), Operation("/", Constant(1), Constant(0)))
    )
    for value in (torch.ones(2), torch.ones(2, dtype=torch.int64)):  # fast path, general one
        with pytest.raises(ZeroDivisionError):
            criterion(program, {"A": value}, [], "example")


@pytest.mark.parametrize("weighted", [False, True])
def test_a_component_of_a_dtype_no_state_holds_is_refused_by_every_loss_and_changes_nothing(
    weighted: bool,
) -> None:
    narrow = {"now": False}  # float32 for the first batch, float8 for the refused one

    def tiny(outputs: Tensor, targets: Tensor) -> Tensor:
        error = (outputs - targets).abs()
        return error.to(torch.float8_e4m3fn) if narrow["now"] else error

    def plain(outputs: Tensor, targets: Tensor) -> Tensor:
        return (outputs - targets).abs()

    outputs, targets = torch.tensor([1.0, 3.0]), torch.zeros(2)
    weight = torch.tensor([1.0, 3.0]) if weighted else None
    for build in (
        lambda: tt.Loss(tiny, "A"),
        lambda: tt.Loss(tiny, "A") + tt.Loss(tiny, "B"),  # float8 arithmetic: not implemented
        lambda: tt.Loss(tiny, "A") + 0.5 * tt.Loss(plain, "B"),  # float8 promotion: neither
    ):
        loss, narrow["now"] = build(), False
        loss.update(torch.tensor([2.0, 2.0]), targets)  # what the refusal must not change
        before, narrow["now"] = loss.compute(), True
        with pytest.raises(tt.errors.ResultTypeError, match=r"'A' has dtype torch\.float8_e4m3fn"):
            loss(outputs, targets, weight=weight)
        after = loss.compute()
        assert after.keys() == before.keys()
        assert all(torch.equal(after[name], before[name]) for name in before)


def test_a_tracked_metric_naming_a_component_with_other_options_is_refused() -> None:
    # the component's options won without a word: a tracked max of 'A' reported its mean
    # (2.0 where the max is 3.0), a tracked higher-is-better 'A' was lower-is-better
    outputs, targets = torch.tensor([[1.0], [3.0]]), torch.zeros(2, 1)
    for metric in (
        tt.Metric(mae_fn, "A", aggregation="max"),
        tt.Metric(mae_fn, "A", higher_is_better=True),
    ):
        with pytest.raises(NameConflictError, match=r"'A' is a component .* tracked value"):
            Loss(mae_fn, "A") | metric
        with pytest.raises(NameConflictError, match=r"'A' is a component .* tracked value"):
            metric | Loss(mae_fn, "A")
    same = Loss(mae_fn, "A") | tt.Metric(mae_fn, "A", higher_is_better=False)
    plain = Loss(mae_fn, "A") | tt.Metric(mae_fn, "A")  # no direction given: nothing contradicts
    for loss in (same, plain):
        loss(outputs, targets)
        assert loss.compute() == {"A": torch.tensor(2.0)}
        assert loss.higher_is_better_for("A") is False


def test_a_python_float_component_counts_as_the_default_float_dtype() -> None:
    # a float16 component beside a batch mean of 70000.0 gave float16's inf, value and epoch
    half = Loss(lambda o, t: (o - t).abs().flatten(1).mean(1).half(), "H")
    big = Loss(lambda o, t: 70000.0, "Big")
    outputs, targets = torch.ones(4, 1), torch.zeros(4, 1)
    for loss, expected in (
        (big + half, 70001.0),
        (half + big, 70001.0),
        (0.5 * half + big, 70000.5),
    ):
        value = loss(outputs, targets)
        assert value.dtype == torch.float32
        assert value.item() == expected
        assert loss.compute()[COMBINED_NAME].item() == expected
    bare = Loss(lambda o, t: (o - t).abs().flatten(1).mean(1).double(), "D") + big
    assert bare(outputs, targets).dtype == torch.float64  # wider tensors stay wider


def test_a_python_int_component_counts_as_the_default_float_dtype_too() -> None:
    # a float16 component beside a count of 70000 still gave float16's inf, value and epoch,
    # where the same number returned as 70000.0 gave 70001.0
    half = Loss(lambda o, t: (o - t).abs().flatten(1).mean(1).half(), "H")
    outputs, targets = torch.ones(4, 1), torch.zeros(4, 1)
    for count in (70000, np.int64(70000)):
        loss = half + Loss(lambda o, t, count=count: count, "Count")
        value = loss(outputs, targets)
        assert value.dtype == torch.float32
        assert value.item() == 70001.0
        assert loss.compute()[COMBINED_NAME].item() == 70001.0
    hits = Loss(lambda o, t: True, "Hit") + half  # a bool is a number too
    assert hits(outputs, targets).dtype == torch.float32


def test_an_integer_tensor_component_counts_as_the_default_float_dtype() -> None:
    # an int64 count of 70000 beside a float16 component gave float16's inf, value and epoch,
    # where the same count as a Python int gave 70001.0; bools and 8-bit integers fit float16
    half = Loss(lambda o, t: (o - t).abs().flatten(1).mean(1).half(), "H")
    outputs, targets = torch.ones(4, 1), torch.zeros(4, 1)
    for dtype in (torch.int16, torch.int32, torch.int64):
        count = Loss(lambda o, t, dtype=dtype: torch.full((len(o),), 30000, dtype=dtype), "N")
        loss = half + 2 * count
        value = loss(outputs, targets)
        assert value.dtype == torch.float32
        assert value.item() == 60001.0
        assert loss.compute()[COMBINED_NAME].item() == 60001.0
    for dtype in (torch.bool, torch.int8, torch.uint8):
        small = Loss(lambda o, t, dtype=dtype: torch.ones(len(o), dtype=dtype), "S")
        assert (half + small)(outputs, targets).dtype == torch.float16

"""Small contracts at the edges of the input: unary plus, unshowable names, declared
entries that collide, the demo's limits, and a batch that weighs nothing."""

from __future__ import annotations

import math
import re
import unicodedata
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

import torchtally as tt
from torchtally.losses import JoinedLoss


def mae(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).abs()


def mse(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).pow(2).mean()


def parts(outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
    error = (outputs - targets).abs()
    return {"L": error, "Worst": error.amax().expand(len(error))}


class Peak(tt.Objective[Tensor, Tensor]):
    aggregation = "max"

    def calculate(self, outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
        return {"Peak": (outputs - targets).abs()}


OUTPUTS, TARGETS = torch.tensor([1.0, -2.0, 4.0]), torch.zeros(3)

# -- unary plus ---------------------------------------------------------------------------------

LOSSES: dict[str, Callable[[], Any]] = {
    "Loss": lambda: tt.Loss(mae, "MAE"),
    "composition": lambda: tt.Loss(mae, "MAE") + 0.5 * tt.Loss(mse, "MSE"),
    "negation": lambda: -tt.Loss(mae, "MAE"),
    "DictLoss": lambda: tt.DictLoss(parts, "L", names=["Worst"]),
    "joined": lambda: tt.Loss(mae, "MAE") | Peak(),
}


@pytest.mark.parametrize("kind", list(LOSSES))
def test_unary_plus_is_the_same_loss_with_fresh_state(kind: str) -> None:
    loss = LOSSES[kind]()
    loss(OUTPUTS, TARGETS)
    plus = +loss
    assert plus is not loss and type(plus) is type(loss)
    assert plus.formula == loss.formula and repr(plus) == repr(loss)
    assert plus.higher_is_better == loss.higher_is_better
    with pytest.warns(tt.errors.ComputedBeforeUpdatedWarning):
        plus.compute()  # fresh state, as for 0 + loss
    fresh = LOSSES[kind]()
    torch.testing.assert_close(plus(OUTPUTS, TARGETS), fresh(OUTPUTS, TARGETS))
    assert plus.compute().keys() == fresh.compute().keys()
    for name, value in fresh.compute().items():
        torch.testing.assert_close(plus.compute()[name], value)


def test_unary_plus_and_minus_compose_as_on_numbers() -> None:
    loss = tt.Loss(mae, "MAE")
    assert (+-loss).formula == (-+loss).formula == "-[MAE]"
    assert (+-loss).higher_is_better is True
    assert isinstance(+(loss | Peak()), JoinedLoss)
    expected = -mae(OUTPUTS, TARGETS).mean()
    torch.testing.assert_close((+-loss)(OUTPUTS, TARGETS), expected)


# -- names --------------------------------------------------------------------------------------

UNSHOWABLE = [" ", "   ", "\t", "a\nb", "a\tb", "a\rb", "\x00", "a\x1bb", "a\u2028b", "a\x7fb"]
# Joiners and spaces of any width show nothing by themselves: a name of only those is blank.
BLANK = ["\u200d", "\u200c\u200d", " \u200d ", "\u00a0", "\u3000\u200c"]

BUILDERS: dict[str, Callable[[str], Any]] = {
    "Metric": lambda name: tt.Metric(mae, name),
    "Loss": lambda name: tt.Loss(mae, name),
    "MetricCollection": lambda name: tt.MetricCollection(**{name: mae}),
    "from_dict": lambda name: tt.MetricCollection.from_dict({name: mae}),
    "DictLoss": lambda name: tt.DictLoss(parts, name),
    "DictLoss names=": lambda name: tt.DictLoss(parts, "L", names=[name]),
    "summed": lambda name: tt.DictLoss.summed(parts, name),
    "summed weights": lambda name: tt.DictLoss.summed(parts, "S", weights={"L": 1, name: 2}),
    "wrap": lambda name: tt.wrap(lambda o, t: (o - t).abs().mean(), name=name),
}


@pytest.mark.parametrize("build", list(BUILDERS))
@pytest.mark.parametrize("name", UNSHOWABLE + BLANK)
def test_blank_names_and_control_characters_are_refused_at_construction(
    build: str, name: str
) -> None:
    with pytest.raises(tt.errors.InvalidNameError) as raised:
        BUILDERS[build](name)
    assert (
        repr(name) in str(raised.value)
        or repr(name + "x") in str(raised.value)
        or (repr("x" + name) in str(raised.value))
    )


def shows_on_one_line(name: str) -> bool:
    """The rule, character by character: printable, a space of any width, or a joiner."""
    allowed = (
        c.isprintable() or unicodedata.category(c) == "Zs" or c in "\u200c\u200d" for c in name
    )
    return all(allowed) and not all(c.isspace() or c in "\u200c\u200d" for c in name)


@given(st.text(max_size=6) | st.text(st.sampled_from(" \u00a0\u3000\u200c\u200da\n"), max_size=4))
@settings(max_examples=200, deadline=None)
def test_a_name_is_accepted_exactly_when_it_shows_on_one_line_and_is_not_blank(name: str) -> None:
    usable = shows_on_one_line(name)
    if usable:
        metric = tt.Metric(mae, name)
        metric.update(OUTPUTS, TARGETS)
        assert list(metric.compute()) == [name]
    else:
        with pytest.raises(tt.errors.InvalidNameError):
            tt.Metric(mae, name)


def test_names_inside_are_kept() -> None:
    # spaces between words, leading or trailing ones and non-ASCII letters stay usable
    for name in ("Mean Error", " MAE", "MAE ", "erreur moyenne é", "平均"):
        assert tt.Metric(mae, name).names == (name,)


# Legitimate text that str.isprintable() refuses: emoji sequences joined by U+200D (ZWJ),
# Persian and Indic words written with U+200C (ZWNJ) or ZWJ, no-break and ideographic spaces.
WRITTEN_TEXT = [
    "\U0001f469\u200d\U0001f4bb score",  # woman technologist
    "\U0001f3f3\ufe0f\u200d\U0001f308",  # rainbow flag
    "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645",  # Persian, with a ZWNJ
    "\u0915\u094d\u200d\u0937",  # Devanagari, with a ZWJ
    "Pr\u00e9cision\u00a0%",  # French: a no-break space before %
    "10\u202f000 pas",  # a narrow no-break space
    "\u7cbe\u5ea6\u3000\u691c\u8a3c",  # an ideographic space
]


@pytest.mark.parametrize("build", list(BUILDERS))
@pytest.mark.parametrize("name", WRITTEN_TEXT)
def test_names_in_written_text_that_isprintable_refuses_are_accepted(build: str, name: str) -> None:
    objective = BUILDERS[build](name)
    if build not in ("DictLoss", "summed weights"):  # (whose callable returns other keys)
        objective.update(OUTPUTS, TARGETS)
        assert any(name in key for key in objective.compute())
    assert tt.MetricCollection(MAE=mae).renamed(prefix=name).reported_names == (f"{name}MAE",)


def _bad_dict(outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
    error = (outputs - targets).abs()
    return {"L": error, "bad\nname": error} if len(error) == 2 else {"L": error}


@pytest.mark.parametrize(
    "build",
    [
        lambda: tt.MetricCollection(_bad_dict),
        lambda: tt.MetricCollection(_bad_dict, MAE=mae),
        lambda: tt.DictLoss(_bad_dict, "L"),
        lambda: tt.DictLoss.summed(_bad_dict, "S"),
        lambda: tt.wrap(_bad_dict, name="W"),
    ],
)
def test_names_learnt_from_a_batch_are_refused_and_change_nothing(build: Any) -> None:
    objective = build()
    objective.update(OUTPUTS, TARGETS)
    before = objective.compute()
    with pytest.raises(tt.errors.InvalidNameError, match=r"'bad\\nname'"):
        objective.update(torch.ones(2), torch.zeros(2))
    assert objective.compute().keys() == before.keys()
    for name, value in before.items():
        torch.testing.assert_close(objective.compute()[name], value)


def test_adapters_refuse_unshowable_names() -> None:
    import torchmetrics
    from torcheval import metrics as eval_metrics

    from torchtally.contrib.torcheval import from_torcheval
    from torchtally.contrib.torchmetrics import from_torchmetrics

    for name in UNSHOWABLE:
        with pytest.raises(tt.errors.InvalidNameError, match=re.escape(repr(name))):
            from_torchmetrics(torchmetrics.MeanAbsoluteError(), name)
        with pytest.raises(tt.errors.InvalidNameError, match=re.escape(repr(name))):
            from_torcheval(eval_metrics.Mean(), name)
        with pytest.raises(tt.errors.InvalidNameError, match=re.escape(repr(name))):
            from_torcheval({name: eval_metrics.Mean()})


class _KeyedSum(__import__("torchmetrics").Metric):
    """A torchmetrics metric whose compute() returns a dict under a given key."""

    def __init__(self, key: str) -> None:
        super().__init__()
        self.key = key
        self.add_state("total", torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, outputs: Tensor, targets: Tensor) -> None:
        self.total += (outputs - targets).sum()

    def compute(self) -> dict[str, Tensor]:
        return {self.key: self.total}


@pytest.mark.parametrize("name", UNSHOWABLE)
def test_adapters_refuse_unshowable_names_their_metrics_return(name: str) -> None:
    # The names a foreign compute() returns reached compute() unchecked (checked at
    # construction and when learnt from a batch everywhere else).
    from torchtally.contrib.torchmetrics import from_torchmetrics

    adapter = from_torchmetrics(_KeyedSum(name))
    adapter.update(OUTPUTS, TARGETS)
    with pytest.raises(tt.errors.InvalidNameError, match=re.escape(repr(name))):
        adapter.compute()
    wrapped = tt.wrap(_KeyedSum(name), name="W")
    wrapped.update(OUTPUTS, TARGETS)
    with pytest.raises(tt.errors.InvalidNameError, match=re.escape(repr(name))):
        wrapped.compute()


def test_a_state_naming_a_value_unshowably_is_refused_and_changes_nothing() -> None:
    collection = tt.MetricCollection(_bad_dict)
    collection.update(OUTPUTS, TARGETS)
    state = collection.state_dict()
    state["state"]["names"] = ["a\nb"]
    state["state"]["accumulators"][0]["names"] = ["a\nb"]
    fresh = tt.MetricCollection(_bad_dict)
    with pytest.raises(tt.errors.StateDictError, match=re.escape(repr("a\nb"))):
        fresh.load_state_dict(state)
    assert fresh.names == ()


# -- declared entries of a DictLoss -------------------------------------------------------------


def test_a_declared_entry_named_combined_loss_is_refused_at_construction() -> None:
    for build in (
        lambda: tt.DictLoss(parts, "L", names=["Combined Loss"]),
        lambda: tt.DictLoss.summed(parts, "S", names=["Combined Loss"]),
    ):
        with pytest.raises(tt.errors.NameConflictError, match="'Combined Loss'"):
            build()


@pytest.mark.parametrize(
    "build",
    [
        lambda: tt.DictLoss(parts, "L", names=["Worst", "X"]) + tt.Loss(mae, "X"),
        lambda: tt.Loss(mae, "X") + tt.DictLoss(parts, "L", names=["X"]),
        lambda: tt.DictLoss(parts, "L", names=["X"]) | tt.Metric(mae, "X"),
        lambda: tt.DictLoss(parts, "L", names=["Worst"]) + tt.DictLoss(parts, "M", names=["Worst"]),
        lambda: tt.DictLoss(parts, "M", names=["L"]) + tt.Loss(mae, "L"),
    ],
)
def test_a_declared_entry_colliding_with_another_value_is_refused_before_any_batch(
    build: Any,
) -> None:
    loss = build()
    for first_use in (
        lambda: loss.names,
        lambda: loss(OUTPUTS, TARGETS),
        lambda: loss.update(OUTPUTS, TARGETS),
    ):
        with pytest.raises(tt.errors.NameConflictError, match="declared"):
            first_use()


def test_declared_entries_that_name_no_other_value_are_fine() -> None:
    # the loss's own entry, a repeat, and a summed dict's weighted entries declared again
    loss = tt.DictLoss(parts, "L", names=["L", "Worst", "Worst"]) + tt.Loss(mae, "MAE")
    loss(OUTPUTS, TARGETS)
    assert list(loss.compute()) == ["Combined Loss", "L", "MAE", "Worst"]
    summed = tt.DictLoss.summed(parts, "S", weights={"L": 1, "Worst": 2}, names=["Worst"])
    summed(OUTPUTS, TARGETS)
    assert list(summed.compute()) == ["S", "L", "Worst"]
    twice = tt.DictLoss(parts, "L", names=["Worst"])
    torch.testing.assert_close((twice + twice)(OUTPUTS, TARGETS), 2 * mae(OUTPUTS, TARGETS).mean())


# -- a batch that weighs nothing ----------------------------------------------------------------

ZERO_WEIGHTS: dict[str, Callable[[int], Any]] = {
    "int 0": lambda size: 0,
    "float 0.0": lambda size: 0.0,
    "0-d tensor": lambda size: torch.tensor(0.0),
    "0-d int tensor": lambda size: torch.tensor(0),
    "(B,) zeros": lambda size: torch.zeros(size),
}

LOSS_KINDS: dict[str, Callable[[], Any]] = {
    "per-sample": lambda: tt.Loss(mae, "MAE"),
    "batch mean": lambda: tt.Loss(mse, "MSE"),
    "composition": lambda: tt.Loss(mae, "MAE") + 0.5 * tt.Loss(mse, "MSE"),
    "DictLoss": lambda: tt.DictLoss(parts, "L", names=["Worst"]),
    "joined": lambda: tt.Loss(mae, "MAE") | Peak(),
}


@pytest.mark.parametrize("kind", list(LOSS_KINDS))
@pytest.mark.parametrize("zero", list(ZERO_WEIGHTS))
def test_a_batch_weighing_nothing_gives_nan_whatever_form_its_weight_takes(
    kind: str, zero: str
) -> None:
    # The weighted mean of a batch of total weight 0 is 0 / 0: NaN for every form of
    # weight=, as documented for (B,) weights; the epoch values leave the batch out.
    loss = LOSS_KINDS[kind]()
    first = loss(OUTPUTS, TARGETS)
    before = loss.compute()
    value = loss(torch.tensor([5.0, 7.0]), torch.zeros(2), weight=ZERO_WEIGHTS[zero](2))
    assert math.isnan(value.item()) and value.dtype == first.dtype
    after = loss.compute()
    assert after.keys() == before.keys()
    for name, expected in before.items():
        torch.testing.assert_close(after[name], expected, equal_nan=True)


@pytest.mark.parametrize("kind", [kind for kind in LOSS_KINDS if kind != "DictLoss"])  # amax of 0
def test_an_empty_batch_with_per_sample_weights_gives_nan_and_changes_nothing(kind: str) -> None:
    # The mean over no sample is NaN, as the unweighted forward and the hand-written
    # (v * w).sum() / w.sum() give; normalising the (0,) weights first gave 0.
    loss = LOSS_KINDS[kind]()
    loss(OUTPUTS, TARGETS)
    before = loss.compute()
    empty = torch.zeros(0)
    for weight in (None, torch.zeros(0)):
        assert math.isnan(loss(empty, empty, weight=weight).item())
    after = loss.compute()
    assert after.keys() == before.keys()
    for name, expected in before.items():
        torch.testing.assert_close(after[name], expected, equal_nan=True)


def test_a_positive_batch_weight_leaves_the_returned_mean_exact() -> None:
    loss = tt.Loss(mae, "MAE") + 0.5 * tt.Loss(mse, "MSE")
    expected = loss(OUTPUTS, TARGETS)
    for weight in (
        3,
        0.25,
        1e-300,
        5e-324,
        torch.tensor(7),
        torch.tensor(1e-30),
        torch.tensor(1e30),
    ):
        assert torch.equal(loss(OUTPUTS, TARGETS, weight=weight), expected)
    half = tt.Loss(lambda o, t: (o - t).abs().half(), "Half")
    value = half(OUTPUTS, TARGETS, weight=torch.tensor(70000.0))
    assert value.dtype == torch.float16 and value.item() == pytest.approx(7 / 3, rel=1e-3)


NEGATIVE_WEIGHTS: dict[str, Callable[[int], Tensor]] = {
    "0-d tensor": lambda size: torch.tensor(-2.0),
    "0-d int tensor": lambda size: torch.tensor(-3),
    "(B,) with one negative": lambda size: torch.tensor([1.0, -0.5]),
}


@pytest.mark.parametrize("kind", list(LOSS_KINDS))
@pytest.mark.parametrize("negative", list(NEGATIVE_WEIGHTS))
def test_a_negative_tensor_weight_gives_nan_from_forward_as_in_the_epoch_value(
    kind: str, negative: str
) -> None:
    # A tensor weight is never read on the host, so a negative one makes the epoch value
    # NaN (documented); forward returned a finite mean (2.5 for a 0-d -2, and -2.0 for
    # squared errors [1, 4] weighted [1, -0.5]), a number to optimise that means nothing.
    loss = LOSS_KINDS[kind]()
    value = loss(torch.tensor([1.0, 2.0]), torch.zeros(2), weight=NEGATIVE_WEIGHTS[negative](2))
    assert math.isnan(value.item())
    assert math.isnan(float(next(iter(loss.compute().values()))))  # the loss's own value


@pytest.mark.parametrize("aggregation", ["mean", "sum", "max", "min"])
@pytest.mark.parametrize("zero", list(ZERO_WEIGHTS))
def test_epoch_values_leave_out_a_batch_weighing_nothing_in_every_form(
    aggregation: str, zero: str
) -> None:
    # already right: a reference for the forward values above
    metric = tt.Metric(mae, "E", aggregation=aggregation)
    collection = tt.MetricCollection(E=tt.Metric(mae, "E", aggregation=aggregation))
    for objective in (metric, collection):
        objective.update(OUTPUTS, TARGETS)
        zero_weight = ZERO_WEIGHTS[zero](2)
        objective.update(torch.tensor([50.0, math.inf]), torch.zeros(2), weight=zero_weight)
        errors = mae(OUTPUTS, TARGETS).double()
        expected = {
            "mean": errors.mean(),
            "sum": errors.sum(),
            "max": errors.max(),
            "min": errors.min(),
        }[aggregation]
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            torch.testing.assert_close(objective.compute()["E"].double(), expected)


@pytest.mark.timeout(300)
def test_a_compiled_forward_gives_nan_for_a_number_weight_of_0_without_a_graph_more() -> None:
    from torch._dynamo.utils import counters

    loss = tt.Loss(mae, "MAE")
    compiled = torch.compile(lambda o, t, w: loss(o, t, weight=w), fullgraph=True)
    for kind in (int, float):
        torch._dynamo.reset()
        counters.clear()
        for index, weight in enumerate((3, 5, 0, 7, 0)):
            value = compiled(OUTPUTS + index, TARGETS, kind(weight))
            if weight:
                torch.testing.assert_close(value, mae(OUTPUTS + index, TARGETS).mean())
            else:
                assert math.isnan(value.item())
        assert counters["stats"]["unique_graphs"] <= 2
        loss.reset()

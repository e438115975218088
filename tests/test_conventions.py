"""Tests of torchtally._conventions: batch sizes, weights, value conversion and names."""

from __future__ import annotations

import functools
import math
from fractions import Fraction
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor
from torch.nn.functional import mse_loss

import torchtally as tt
from torchtally._conventions import (
    as_value_tensor,
    batch_size,
    batch_weight,
    default_name,
    normalize_result,
    unique_names,
)
from torchtally._dtypes import DTYPES, dtype_from_name, dtype_name
from torchtally.errors import (
    BatchSizeError,
    ComputedBeforeUpdatedWarning,
    InvalidNameError,
    ResultShapeError,
    ResultTypeError,
    WeightError,
)

# -- batch size ---------------------------------------------------------------------------------


def test_the_first_tensor_of_targets_then_outputs_gives_the_batch_size() -> None:
    assert batch_size(torch.zeros(5, 2), torch.zeros(7)) == 5
    assert batch_size({"label": torch.zeros(4)}, torch.zeros(7)) == 4
    assert batch_size((None, [torch.zeros(3, 2)]), torch.zeros(7)) == 3
    assert batch_size("no tensor here", torch.zeros(6, 1)) == 6


def test_a_list_of_per_sample_records_is_as_long_as_the_batch() -> None:
    # Detection targets: one dict per image, each with its own number of boxes.
    records = [
        {"boxes": torch.zeros(5, 4), "labels": torch.zeros(5)},
        {"boxes": torch.zeros(1, 4), "labels": torch.zeros(1)},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0)},
    ]
    assert batch_size(records, None) == 3
    assert batch_size(tuple(records), None) == 3
    # a list of tensors is not a list of records: the batch dimension they share gives the size
    assert batch_size([torch.zeros(5, 4), torch.zeros(5)], None) == 5


@pytest.mark.parametrize("kind", [list, tuple])
def test_tensors_of_several_lengths_have_no_batch_dimension(kind: Any) -> None:
    # One tensor per sample (ragged targets): the first one's length was taken as the batch
    # size, so a batch mean of 2 samples weighed 5 and the epoch mean came out wrong.
    ragged = kind([torch.zeros(5, 4), torch.zeros(1, 4)])
    with pytest.raises(BatchSizeError, match=r"Metric 'C'.*targets.*differ \(5, 1\).*weight="):
        batch_size(ragged, None, "Metric 'C'")
    metric = tt.Metric(lambda outputs, targets: outputs.mean(), "M")
    with pytest.raises(BatchSizeError, match="differ"):
        metric.update(torch.ones(2), ragged)
    with pytest.warns(ComputedBeforeUpdatedWarning):  # refused: nothing was counted
        assert metric.compute()["M"].isnan()
    per_sample = tt.Metric(
        lambda outputs, targets: outputs.mean(),
        "M",
        weight=lambda outputs, targets: torch.ones(len(targets)),
    )
    per_sample.update(torch.full((2,), 1.0), ragged)  # the hint in the message works
    per_sample.update(torch.full((1,), 4.0), kind([torch.zeros(3)]))
    assert per_sample.compute()["M"].item() == 2.0  # (1 + 1 + 4) / 3 samples


def test_detection_metric_is_weighted_per_image() -> None:
    # torchtally 0.1 weighted each batch by the boxes of its first image: 2.5 instead of 4.0.
    def boxes_found(outputs: Any, targets: list[dict[str, Tensor]]) -> Tensor:
        return torch.tensor([float(len(target["boxes"])) for target in targets])

    metric = tt.Metric(boxes_found, "Boxes")
    metric.update(None, [{"boxes": torch.zeros(1, 4)}, {"boxes": torch.zeros(7, 4)}])
    metric.update(None, [{"boxes": torch.zeros(4, 4)}, {"boxes": torch.zeros(4, 4)}])
    assert metric.compute()["Boxes"].item() == 4.0  # (1 + 7 + 4 + 4) / 4 images


@pytest.mark.parametrize("targets", [torch.tensor(1.0), {"a": torch.tensor(1.0)}])
def test_a_zero_dim_tensor_first_has_no_batch_dimension(targets: Any) -> None:
    with pytest.raises(BatchSizeError, match=r"Metric 'C'.*targets.*0-d"):
        batch_size(targets, None, "Metric 'C'")


def test_no_clue_at_all_is_refused_with_a_hint() -> None:
    with pytest.raises(BatchSizeError, match=r"no tensor or list of records.*weight="):
        batch_size({"label": "cat"}, [1.0, 2.0], "Metric 'C'")


# -- weights ------------------------------------------------------------------------------------


def test_weights_are_numbers_zero_dim_or_per_sample_tensors() -> None:
    assert batch_weight(None, 3, "x") is None
    assert batch_weight(7, 3, "x") == 7.0 and isinstance(batch_weight(7, 3, "x"), float)
    assert batch_weight(np.float32(2.5), 3, "x") == 2.5
    per_sample = torch.tensor([1.0, 0.0, 2.0], requires_grad=True)
    found = batch_weight(per_sample, 3, "x")
    assert isinstance(found, Tensor) and not found.requires_grad
    assert batch_weight(torch.tensor([4.0]), 3, "x").shape == ()  # type: ignore[union-attr]
    assert batch_weight(torch.tensor(2), 3, "x").shape == ()  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("weight", "message"),
    [
        (True, "number or a tensor, found bool"),
        ("3", "found str"),
        (-1, "finite and >= 0"),
        (math.inf, "finite and >= 0"),
        (math.nan, "finite and >= 0"),
        (10**400, r"finite and >= 0, found 1000+$"),  # float() overflows: a bare OverflowError
        (Fraction(10**400, 3), "finite and >= 0"),
        (torch.ones(2), r"\(3,\) tensor of per-sample weights.*shape \(2,\)"),
        (torch.ones(3, 1), r"found shape \(3, 1\)"),
        (torch.ones(3, dtype=torch.complex64), "real numbers"),
        (torch.ones(3, dtype=torch.bool), r"dtype bool \(a mask: pass mask.float\(\)"),
    ],
)
def test_bad_weights_are_refused(weight: Any, message: str) -> None:
    with pytest.raises(WeightError, match=message):
        batch_weight(weight, 3, "Metric 'M'")


# -- values -------------------------------------------------------------------------------------


def test_real_python_numbers_become_tensors_without_losing_digits() -> None:
    assert as_value_tensor(Fraction(1, 3), "o", "v").item() == 1 / 3
    assert as_value_tensor(Fraction(1, 3), "o", "v").dtype == torch.float64
    assert as_value_tensor(0.1, "o", "v").item() == 0.1  # float64: every digit kept
    assert as_value_tensor(2**62, "o", "v").item() == 2**62
    assert as_value_tensor(True, "o", "v").dtype == torch.bool
    assert as_value_tensor(np.float64(0.25), "o", "v").item() == 0.25


def test_numpy_booleans_count_as_booleans_and_arrays_are_named_with_their_module() -> None:
    # np.float64 and np.int64 were accepted and np.bool_ (what np.all returns) refused, with a
    # message saying "found bool", a type that is accepted.
    metric = tt.Metric(lambda o, t: np.all(o.numpy() > 0), "All", aggregation="sum")
    metric.update(torch.ones(3), torch.zeros(3))
    metric.update(-torch.ones(2), torch.zeros(2))
    assert metric.compute() == {"All": torch.tensor(1)}
    assert as_value_tensor(np.bool_(True), "o", "v").dtype == torch.bool
    with pytest.raises(ResultTypeError, match=r"found numpy\.ndarray .*torch\.as_tensor"):
        as_value_tensor(np.ones(3), "Metric 'Score'", "Score")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (1 + 2j, "complex number"),
        (torch.ones(2, dtype=torch.complex64), "complex tensor"),
        (2**70, "outside the int64 range"),
        ("0.5", "found str"),
        (None, "found NoneType"),
    ],
)
def test_other_values_are_refused_with_the_objective_and_the_name(value: Any, message: str) -> None:
    with pytest.raises(ResultTypeError, match=message) as info:
        as_value_tensor(value, "Metric 'Score'", "Score")
    assert "Metric 'Score'" in str(info.value)


@pytest.mark.parametrize("value", [Fraction(3, 4), 1 + 2j, 2**70])
def test_metrics_convert_or_refuse_unusual_numbers_before_changing_anything(value: Any) -> None:
    metric = tt.Metric(lambda o, t: value, "Score")
    if isinstance(value, Fraction):
        metric.update(torch.zeros(4), torch.zeros(4))
        assert metric.compute()["Score"].item() == 0.75
        return
    with pytest.raises(ResultTypeError):
        metric.update(torch.zeros(4), torch.zeros(4))
    assert metric._ledger.updated is False


def test_normalize_result_names_sequences_and_keeps_dict_keys() -> None:
    assert list(normalize_result((1, 2.0), "loss", "o")) == ["loss_0", "loss_1"]
    assert list(normalize_result({"a": 1}, "loss", "o")) == ["a"]
    assert list(normalize_result(torch.tensor(1.0), "loss", "o")) == ["loss"]
    with pytest.raises(InvalidNameError, match="non-empty strings"):
        normalize_result({1: 2.0}, "loss", "o")
    with pytest.raises(ResultShapeError, match="must be a scalar"):
        normalize_result(torch.ones(3), "loss", "o", scalars=True)


# -- names --------------------------------------------------------------------------------------


def test_default_names_see_through_partials() -> None:
    first = functools.partial(mse_loss, reduction="mean")
    second = functools.partial(functools.partial(torch.nn.functional.l1_loss))
    assert default_name(first, "Metric") == "mse_loss"
    assert default_name(second, "Metric") == "l1_loss"
    assert default_name(torch.nn.MSELoss(), "Metric") == "MSELoss"
    with pytest.raises(InvalidNameError, match="lambda"):
        default_name(lambda o, t: o, "Metric")
    # two partials of different functions no longer collide in a collection
    joined = tt.Metric(first) | tt.Metric(second)
    assert joined.names == ("mse_loss", "l1_loss")


def test_unique_names() -> None:
    assert unique_names(["A", "B", "A", "A"]) == ["A", "B", "A_2", "A_3"]


def test_dtype_names_come_from_an_allow_list() -> None:
    for name, dtype in DTYPES.items():
        assert dtype_name(dtype) == name and dtype_from_name(name) is dtype
    assert dtype_from_name("Tensor") is None
    assert dtype_from_name("float") is None  # torch.float exists, but is not a listed name
    assert dtype_from_name(3) is None
